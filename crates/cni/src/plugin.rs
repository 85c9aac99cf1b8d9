//! The CNI commands: one function each, from parsed input to printed output.

use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;
use tracing::{debug, warn};

use crate::ipam::Store;
use crate::spec::{
    Attachment, CniError, CniResult, Command, Env, IpConfig, NetConf, Route, SUPPORTED_VERSIONS,
    Version, code,
};
use crate::wiring::{self, gateway_for, host_veth_name};

/// What a command prints on success (nothing for DEL, GC and STATUS).
pub(crate) type Output = Option<Value>;

/// Runs one CNI invocation. `stdin` is the network configuration.
pub(crate) async fn run(env: &Env, stdin: &[u8]) -> Result<Output, CniError> {
    if env.command == Command::Version {
        return Ok(Some(version(stdin)));
    }
    let (conf, version) = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => add(env, &conf, version).await.map(Some),
        Command::Del => del(env, &conf).await.map(|()| None),
        Command::Check => check(env, &conf).await.map(|()| None),
        Command::Status => {
            require_1_1(version, "STATUS")?;
            status(&conf).map(|()| None)
        }
        Command::Gc => {
            require_1_1(version, "GC")?;
            gc(&conf).await.map(|()| None)
        }
        Command::Version => unreachable!("handled above"),
    }
}

fn require_1_1(version: Version, command: &str) -> Result<(), CniError> {
    if version < Version::V1_1_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{command} needs cniVersion 1.1.0, the configuration says {version}"),
            "",
        ));
    }
    Ok(())
}

/// VERSION: the versions we speak; `cniVersion` echoes the caller's when we speak it.
fn version(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| Version::V1_1_0.as_str().to_owned());
    serde_json::json!({ "cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS })
}

fn key(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id().to_owned(),
        ifname: env.ifname().to_owned(),
    }
}

fn ranges(conf: &NetConf) -> Result<&[IpNet], CniError> {
    if conf.pod_cidrs.is_empty() {
        return Err(CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "podCIDRs: Required value: the node has no pod CIDR",
            "the kubewire agent writes podCIDRs from the Node's spec.podCIDRs",
        ));
    }
    Ok(&conf.pod_cidrs)
}

fn routes_for(addresses: &[IpAddr]) -> Vec<Route> {
    let mut routes = Vec::new();
    for v4 in [true, false] {
        if let Some(ip) = addresses.iter().find(|ip| ip.is_ipv4() == v4) {
            routes.push(Route {
                dst: netlink::default_destination(*ip),
                gw: Some(gateway_for(*ip)),
            });
        }
    }
    routes
}

/// The steps of ADD, in order; each one that succeeded is undone if a later one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum AddStep {
    /// Nothing made yet.
    Start,
    /// Addresses recorded in IPAM.
    Allocated,
    /// Interfaces, addresses and routes in the kernel.
    Wired,
}

async fn add(env: &Env, conf: &NetConf, version: Version) -> Result<Value, CniError> {
    let netns = env.netns.as_deref().expect("checked by Env");
    let ranges = ranges(conf)?;
    let store = Store::new(&conf.data_dir(), &conf.name);
    let key = key(env);
    let host_name = host_veth_name(env.container_id(), env.ifname());
    let alias = wiring::host_alias(&conf.name, env.container_id(), env.ifname());
    // Malformed port mappings are refused before anything is made.
    crate::hostport::parse(conf.runtime_config.as_ref(), &key, &[])?;
    // Refuse before allocating anything: an existing interface is the caller's mistake.
    let pod = wiring::ensure_absent(netns, env.ifname()).await?;

    let mut step = AddStep::Start;
    let outcome: Result<(Vec<IpAddr>, [crate::spec::Interface; 2]), CniError> = async {
        let addresses = store.update(|st| st.allocate(ranges, &key))?;
        step = AddStep::Allocated;
        let attachment = wiring::Attachment {
            netns,
            ifname: env.ifname(),
            host_name: &host_name,
            mtu: conf.pod_mtu(),
            addresses: &addresses,
            alias: &alias,
        };
        let interfaces = wiring::attach(&attachment, &pod).await?;
        step = AddStep::Wired;
        // The pod's policies in force before its containers start (and before its
        // host ports, so that a refusal has nothing more to undo).
        if let (Some(socket), Some(namespace), Some(name)) = (
            conf.policy_socket.as_deref(),
            env.args.get("K8S_POD_NAMESPACE"),
            env.args.get("K8S_POD_NAME"),
        ) {
            let ask = crate::policy::Ask {
                namespace: namespace.clone(),
                name: name.clone(),
                ips: addresses.clone(),
            };
            if let Some(capture) = crate::policy::wait_in_force(socket, &ask).await? {
                crate::capture::apply(netns, &capture)?;
                debug!(?capture, "meshed: traffic captured for the proxy");
            }
        }
        let bindings = crate::hostport::parse(conf.runtime_config.as_ref(), &key, &addresses)?;
        if !bindings.is_empty() {
            store.update(|st| {
                crate::hostport::check_conflicts(&st.hostports, &bindings)?;
                st.hostports.retain(|b| b.attachment != key);
                st.hostports.extend(bindings.iter().cloned());
                crate::hostport::apply(&st.hostports)
            })?;
        }
        Ok((addresses, interfaces))
    }
    .await;

    let (addresses, interfaces) = match outcome {
        Ok(done) => done,
        Err(err) => {
            warn!(error = %err, ?step, "ADD failed; rolling back");
            // Whatever step failed, the kernel part may be half made: `attach` stops at
            // its first error. Removing it is a no-op when nothing was made.
            if let Err(e) = wiring::detach_now(Some(netns), env.ifname(), &host_name).await {
                warn!(error = %e, "rollback: removing interfaces");
            }
            if step >= AddStep::Allocated
                && let Err(e) = store.update(|st| Ok(st.release(&key)))
            {
                warn!(error = %e, "rollback: releasing addresses");
            }
            return Err(err);
        }
    };
    debug!(?addresses, host = %host_name, "attached");

    // Interface-creating plugins append to a previous result, if a chain gave one.
    let mut result = match &conf.prev_result {
        Some(prev) => CniResult::from_prev(prev)?,
        None => CniResult::default(),
    };
    let pod_index = result.interfaces.len() + 1;
    result.interfaces.extend(interfaces);
    result.ips.extend(addresses.iter().map(|ip| IpConfig {
        address: netlink::host_prefix(*ip),
        gateway: Some(gateway_for(*ip)),
        interface: Some(pod_index),
    }));
    result.routes.extend(routes_for(&addresses));
    Ok(result.to_json(version))
}

async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_name = host_veth_name(env.container_id(), env.ifname());
    // Kernel first: an address must not be handed out while routes to it remain.
    let pending = wiring::detach(env.netns.as_deref(), env.ifname(), &host_name).await?;
    let store = Store::new(&conf.data_dir(), &conf.name);
    let freed = store.update(|st| {
        let bindings = st.hostports.len();
        let freed = st.release(&key(env));
        if st.hostports.len() != bindings {
            crate::hostport::apply(&st.hostports)?;
        }
        Ok(freed)
    })?;
    debug!(?freed, "detached");
    if let Some(unregister) = pending {
        crate::reaper::spawn(&unregister).await;
    }
    Ok(())
}

async fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_NETWORK_CONFIG,
            "prevResult: Required value: CHECK needs the result of ADD",
            "",
        )
    })?;
    let prev = CniResult::from_prev(prev)?;
    let store = Store::new(&conf.data_dir(), &conf.name);
    let held = store.read()?.addresses_of(&key(env));
    let expected: Vec<IpAddr> = prev.ips.iter().map(|c| c.address.addr()).collect();
    let mut diffs = Vec::new();
    for ip in &expected {
        if !held.contains(ip) {
            diffs.push(format!("IPAM does not record {ip} for this attachment"));
        }
    }
    let host_name = host_veth_name(env.container_id(), env.ifname());
    let attachment = wiring::Attachment {
        netns: env.netns.as_deref().expect("checked by Env"),
        ifname: env.ifname(),
        host_name: &host_name,
        mtu: conf.pod_mtu(),
        addresses: &expected,
        alias: "",
    };
    let routes: Vec<(IpNet, Option<IpAddr>)> = prev.routes.iter().map(|r| (r.dst, r.gw)).collect();
    diffs.extend(wiring::differences(&attachment, &routes).await?);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::CHECK_MISMATCH,
            "the container's network differs from what ADD made",
            diffs.join("; "),
        ))
    }
}

fn status(conf: &NetConf) -> Result<(), CniError> {
    let ranges =
        ranges(conf).map_err(|e| CniError::new(code::PLUGIN_NOT_AVAILABLE, e.msg, e.details))?;
    let store = Store::new(&conf.data_dir(), &conf.name);
    store.read()?.has_free(ranges).map_err(|full| {
        CniError::new(
            code::PLUGIN_NOT_AVAILABLE,
            format!("no free address left in {full}"),
            "ADD would fail until pods are deleted",
        )
    })
}

async fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid: BTreeSet<Attachment> = conf
        .gc_valid_attachments()
        .unwrap_or_default()
        .iter()
        .cloned()
        .collect();
    let store = Store::new(&conf.data_dir(), &conf.name);
    let freed = store.update(|st| {
        let bindings = st.hostports.len();
        let freed = st.gc(&valid);
        if st.hostports.len() != bindings {
            crate::hostport::apply(&st.hostports)?;
        }
        Ok(freed)
    })?;
    for (ip, attachment) in &freed {
        debug!(%ip, container = %attachment.container_id, "gc: freed");
    }
    // Every node-side veth that no valid attachment owns goes: those of the attachments
    // just freed, and any whose background unregister never ran.
    let keep: BTreeSet<String> = valid
        .iter()
        .map(|a| host_veth_name(&a.container_id, &a.ifname))
        .collect();
    let mut problems = Vec::new();
    match wiring::sweep_host_side(&conf.name, &keep).await {
        Ok(deleted) => debug!(?deleted, "gc: removed node-side veths"),
        Err(e) => problems.push(e.to_string()),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::IO_FAILURE,
            "GC freed the addresses but could not remove some interfaces",
            problems.join("; "),
        ))
    }
}
