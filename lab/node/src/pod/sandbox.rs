//! A pod's sandbox: its network namespace wired by CNI ADD (torn down by CNI DEL), or
//! the node's own namespace for `hostNetwork` pods; the sandbox of an earlier node
//! process, adopted from its `sandbox.json` together with the containers still running
//! in it; and the sandboxes of pods that went away while no node process ran.

use std::time::Duration;

use k8s::ErrorChain;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::container::{Ctr, container_id};
use crate::cni::{self, RuntimeConf};
use crate::record::{self, SandboxFile};
use crate::{Ctx, Error};

/// How long a failed sandbox waits before it is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// One pod's sandbox.
#[derive(Debug)]
pub(super) struct Sandbox {
    /// What sandbox.json records.
    pub file: SandboxFile,
    /// The network is wired (and the pod's files written).
    pub ready: bool,
    /// Why the last attempt failed, shown in the containers' waiting message.
    pub error: Option<String>,
    next_try: Instant,
}

impl Sandbox {
    /// The sandbox of `pod`, not made yet.
    pub(super) fn new(pod: &Pod, uid: &str, now: Instant) -> Sandbox {
        let spec = pod.spec.as_ref();
        Sandbox {
            file: SandboxFile {
                namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                uid: uid.to_owned(),
                host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                ..Default::default()
            },
            ready: false,
            error: None,
            next_try: now,
        }
    }

    /// Whether it is time to (try to) make the sandbox.
    pub(super) fn due(&self, now: Instant) -> bool {
        !self.ready && now >= self.next_try
    }

    /// Records the outcome of an attempt to make the sandbox.
    pub(super) fn made(&mut self, result: Result<(), Error>, now: Instant) {
        match result {
            Ok(()) => {
                self.ready = true;
                self.error = None;
            }
            Err(e) => {
                self.error = Some(ErrorChain(&e).to_string());
                self.next_try = now + RETRY;
            }
        }
    }

    /// Takes over the sandbox an earlier node process made, if its network is still
    /// there, and with it the containers still running in it: they run on as they
    /// were, and the init containers they ran after count as completed. Returns whether
    /// it was taken over; if not, the sandbox is made again (its containers started).
    pub(super) fn adopt(&mut self, a: SandboxFile, ctrs: &mut [Ctr], now: Instant) -> bool {
        let netns_ok =
            a.host_network || (!a.netns_name.is_empty() && netlink::netns::exists(&a.netns_name));
        let adopted = netns_ok && !a.ips.is_empty();
        if adopted {
            self.ready = true;
            let apps_ran = ctrs
                .iter()
                .any(|c| !c.init && a.containers.contains_key(&c.spec.name));
            for c in ctrs {
                if c.init && apps_ran && !a.containers.contains_key(&c.spec.name) {
                    c.adopt_completed();
                } else if let Some(rec) = a.containers.get(&c.spec.name) {
                    let id = container_id(&a.sandbox_id, &c.spec.name, rec.restart_count);
                    c.adopt_running(now, rec, id);
                }
            }
            tracing::info!(pod = %a.pod_key(), "adopted the existing sandbox");
        }
        self.file = a;
        adopted
    }

    /// Wires the pod's network: the node's namespace for hostNetwork pods, else a
    /// namespace of its own attached by CNI ADD (unless an adopted one is still there).
    pub(super) async fn wire(&mut self, ctx: &Ctx, pod: &Pod) -> Result<(), Error> {
        let sb = &mut self.file;
        if sb.host_network {
            let named = netlink::netns::path(&ctx.netns_name);
            sb.netns = if named.exists() {
                named.display().to_string()
            } else {
                format!("/proc/{}/ns/net", std::process::id())
            };
            sb.ips = ctx.args.node_ip.iter().map(ToString::to_string).collect();
            return Ok(());
        }
        if !sb.ips.is_empty() && netlink::netns::exists(&sb.netns_name) {
            return Ok(());
        }
        let net = cni::load(&ctx.args.cni_conf_dir).map_err(|_| {
            Error::Cni(format!(
                "network not ready: no network config in {} (cni plugin not initialized)",
                ctx.args.cni_conf_dir.display()
            ))
        })?;
        let hex = uid_hex(&sb.uid);
        let name = format!("{}-p{}", ctx.netns_name, &hex[..8.min(hex.len())]);
        sb.sandbox_id = hex;
        sb.netns_name = name.clone();
        sb.netns = netlink::netns::path(&name).display().to_string();
        sb.network = net.name.clone();
        if netlink::netns::exists(&name) {
            // Left by a crash mid-setup: release what may be attached, start over.
            release(ctx, sb).await;
        }
        let n = name.clone();
        tokio::task::spawn_blocking(move || netlink::netns::create(&n))
            .await
            .map_err(|e| {
                Error::io(
                    format!("creating network namespace {name}"),
                    std::io::Error::other(e),
                )
            })??;
        let rt = runtime_conf(sb, port_mappings(pod));
        match ctx.cni.add(&net, &rt).await {
            Ok(result) => sb.ips = cni::result_ips(&result),
            Err(e) => {
                // libcni's caller tears a failed ADD down before retrying.
                let _ = ctx.cni.del(Some(&net), &net.name, &rt).await;
                let n = name.clone();
                let _ = tokio::task::spawn_blocking(move || netlink::netns::delete(&n)).await;
                sb.ips.clear();
                return Err(e);
            }
        }
        tracing::info!(pod = %sb.pod_key(), ips = ?sb.ips, netns = %name, "sandbox ready");
        Ok(())
    }
}

/// The pod's hostPorts as libcni's `portMappings` capability argument.
fn port_mappings(pod: &Pod) -> Value {
    let mut maps = Vec::new();
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        for p in c.ports.iter().flatten() {
            if let Some(hp) = p.host_port.filter(|h| *h > 0) {
                let mut m = json!({"hostPort": hp, "containerPort": p.container_port,
                    "protocol": p.protocol.as_deref().unwrap_or("TCP").to_lowercase()});
                if let Some(ip) = p.host_ip.as_deref().filter(|i| !i.is_empty()) {
                    m["hostIP"] = json!(ip);
                }
                maps.push(m);
            }
        }
    }
    json!({"portMappings": maps})
}

/// The sandbox id: the pod uid's hex digits.
fn uid_hex(uid: &str) -> String {
    uid.chars()
        .filter(char::is_ascii_hexdigit)
        .collect::<String>()
        .to_lowercase()
}

/// Removes the sandbox (and kills the containers) of a pod that no longer exists.
pub(super) async fn teardown_orphan(ctx: &Ctx, sb: SandboxFile) {
    tracing::info!(pod = %sb.pod_key(), uid = %sb.uid, "removing the sandbox of a pod that is gone");
    record::kill_containers(&sb);
    let dir = ctx.args.data_dir.join("pods").join(&sb.uid);
    release(ctx, &sb).await;
    crate::volumes::remove_mount_points(&dir);
    let _ = std::fs::remove_dir_all(dir);
}

/// CNI DEL (with the cached result) and removal of the pod's network namespace.
pub(super) async fn release(ctx: &Ctx, sb: &SandboxFile) {
    if sb.host_network || sb.netns_name.is_empty() {
        return;
    }
    if !sb.sandbox_id.is_empty() {
        let rt = runtime_conf(sb, Value::Null);
        let net = cni::load(&ctx.args.cni_conf_dir).ok();
        let network = if sb.network.is_empty() {
            net.as_ref().map(|n| n.name.clone()).unwrap_or_default()
        } else {
            sb.network.clone()
        };
        for attempt in 0..3 {
            match ctx.cni.del(net.as_ref(), &network, &rt).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(pod = %sb.pod_key(), attempt, error = %ErrorChain(&e), "CNI DEL");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
    let name = sb.netns_name.clone();
    let res = tokio::task::spawn_blocking(move || netlink::netns::delete(&name)).await;
    if let Ok(Err(e)) = res {
        tracing::warn!(error = %ErrorChain(&e), "removing network namespace {}", sb.netns_name);
    }
}

/// The CNI parameters of the pod's attachment, as containerd passes them.
fn runtime_conf(sb: &SandboxFile, capability_args: Value) -> RuntimeConf {
    RuntimeConf {
        container_id: sb.sandbox_id.clone(),
        netns: sb.netns.clone(),
        ifname: "eth0".into(),
        args: vec![
            ("IgnoreUnknown".into(), "1".into()),
            ("K8S_POD_NAMESPACE".into(), sb.namespace.clone()),
            ("K8S_POD_NAME".into(), sb.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), sb.sandbox_id.clone()),
            ("K8S_POD_UID".into(), sb.uid.clone()),
        ],
        capability_args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ports_become_port_mappings() {
        let pod: Pod = serde_json::from_value(json!({"spec": {"containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "198.18.0.11"},
                {"containerPort": 9090}]}]}}))
        .unwrap();
        assert_eq!(
            port_mappings(&pod),
            json!({"portMappings": [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "198.18.0.11"}]})
        );
    }

    #[test]
    fn cni_args_name_the_pod() {
        let sb = SandboxFile {
            namespace: "default".into(),
            name: "web".into(),
            uid: "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0".into(),
            sandbox_id: uid_hex("0F1E2D3C-4b5a-6978-8796-a5b4c3d2e1f0"),
            netns: "/run/netns/x".into(),
            ..Default::default()
        };
        assert_eq!(sb.sandbox_id, "0f1e2d3c4b5a69788796a5b4c3d2e1f0");
        let rt = runtime_conf(&sb, Value::Null);
        assert_eq!(rt.container_id, sb.sandbox_id);
        assert_eq!(rt.ifname, "eth0");
        assert!(rt.args.contains(&("K8S_POD_UID".into(), sb.uid.clone())));
        assert!(rt.args.contains(&("K8S_POD_NAME".into(), "web".into())));
    }
}
