//! The cluster on top of the lab's network: the control plane (API server and
//! controllers) in the host's namespace, the pod runner (`kubewire node`) in each node's
//! namespace, and kubewire installed from its own manifests (the `install` crate): the
//! agent DaemonSet's pod runs in each node's namespace as hostNetwork pods do, cluster
//! DNS as ordinary pods.

use std::ffi::OsString;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::config::Kubeconfig;
use kube::{Api, Client};
use serde::Serialize;
use tracing::{debug, warn};

use crate::processes::{self, Process, Registry};
use crate::progress::Progress;
use crate::{Error, LabConfig, Result, Role};

/// How long `lab up` waits for the API server and then for every node to be Ready.
const API_TIMEOUT: Duration = Duration::from_secs(30);
const NODES_TIMEOUT: Duration = Duration::from_secs(90);
const ADDON_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each process gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What `lab up` started.
#[derive(Debug, Clone)]
pub struct Started {
    /// The configuration it runs with.
    pub config: LabConfig,
    /// The admin kubeconfig for kubectl.
    pub kubeconfig: PathBuf,
    /// From the start of `lab up` until every node was Ready.
    pub nodes_ready_after: Duration,
    /// From the start of `lab up` until the add-ons were ready too.
    pub ready_after: Duration,
}

/// Applies install manifests as the lab's field manager.
async fn apply(client: &Client, objects: &[serde_json::Value]) -> Result<()> {
    install::apply(client, objects, "kubewire-lab")
        .await
        .map_err(|e| Error::Component(format!("installing kubewire: {}", k8s::ErrorChain(&e))))
}

/// [`apply`], retried for a few seconds: a CustomResourceDefinition just applied is
/// served a moment later.
async fn apply_with_retry(client: &Client, objects: &[serde_json::Value]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match apply(client, objects).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(e) => {
                debug!(error = %e, "applying; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The install's choices for this lab: its routing and ranges, the API server on the
/// underlay (the agent implements the `kubernetes` Service itself, so it cannot reach
/// the API through it), and IPAM state in each node's own directory.
pub fn install_config(cfg: &LabConfig) -> install::Config {
    let api = cfg.api_underlay_addr();
    install::Config {
        routing: cfg.routing,
        api_server: Some(install::ApiServer {
            host: api.ip().to_string(),
            port: api.port(),
        }),
        service_cidrs: cfg.service_cidrs.clone(),
        cluster_cidrs: cfg.pod_cidrs.clone(),
        cluster_domain: cfg.cluster_domain.clone(),
        cni_data_dir: Some(node_root(cfg, "$(NODE_NAME)").join("var/lib/cni/kubewire")),
        // A path the lab's CNI plugin, run on the host, reaches as it is.
        policy_socket: Some(node_root(cfg, "$(NODE_NAME)").join("run/kubewire/policy.sock")),
        // The lab's controllers run the LoadBalancer controller.
        lb_controller_deployment: false,
        lb_pool: cfg.lb_pool(),
        gateway_address: gateway_address(&cfg.lb_pool()),
        mesh: cfg.mesh,
        mesh_default_inbound_policy: cfg.mesh_default_inbound_policy.clone(),
        ..install::Config::default()
    }
}

/// The gateway's LoadBalancer address: the last IPv4 address of the lab's pool, so that
/// the Services a user creates get the pool's addresses from its first on (the talk's
/// `emissary-ingress` gets 198.18.0.200). None without an IPv4 range.
fn gateway_address(pool: &[String]) -> Option<std::net::IpAddr> {
    pool.iter()
        .filter_map(|r| lb::pool::parse_addresses(r).ok())
        .find(|r| r.first.is_ipv4())
        .map(|r| r.last)
}

/// The directory the lab keeps as node `node`'s file system for hostPath volumes.
pub fn node_root(cfg: &LabConfig, node: &str) -> PathBuf {
    cfg.data_dir().join(node).join("root")
}

/// Path of the lab's admin kubeconfig.
pub fn kubeconfig_path(cfg: &LabConfig) -> PathBuf {
    cfg.data_dir().join("api").join("admin.kubeconfig")
}

/// Starts the whole lab: network, control plane, nodes, and waits until every node is
/// Ready. On failure everything made so far is removed again.
pub async fn start(cfg: &LabConfig, binary: &Path, progress: &Progress) -> Result<Started> {
    let began = Instant::now();
    let step = progress.step(format!(
        "network: underlay {}, {} node(s), outside",
        cfg.underlay_v4, cfg.nodes
    ));
    crate::up(cfg).await?;
    step.done("");
    let kept_data = cfg.data_dir().join("api").exists();
    match start_processes(cfg, binary, progress, began).await {
        Ok((kubeconfig, nodes_ready_after)) => Ok(Started {
            config: cfg.clone(),
            kubeconfig,
            nodes_ready_after,
            ready_after: began.elapsed(),
        }),
        Err(err) => {
            debug!(error = %err, "lab up failed; removing what was made");
            // The logs stay, to show what failed; `lab down` removes them. Data kept by
            // an earlier `lab down --keep-data` is the user's and stays whole.
            if let Err(cleanup) = crate::down_with(cfg, true).await {
                warn!(error = %cleanup, "cleanup after failed lab up");
            }
            let what = if kept_data {
                "its data directory, kept from before, is left as it was"
            } else {
                remove_all_but_logs(&cfg.data_dir());
                "its logs are kept"
            };
            Err(Error::Component(format!(
                "{err}\n(everything else the lab made is removed; {what} in {} until `kubewire lab down --name {}`)",
                cfg.data_dir().display(),
                cfg.name
            )))
        }
    }
}

/// `kubewire SUBCOMMAND FLAGS...`.
fn command(subcommand: &str, flags: Vec<OsString>) -> Vec<OsString> {
    std::iter::once(subcommand.into()).chain(flags).collect()
}

fn csv(items: impl IntoIterator<Item = impl ToString>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Returns the admin kubeconfig and when (since `began`) every node was Ready.
async fn start_processes(
    cfg: &LabConfig,
    binary: &Path,
    progress: &Progress,
    began: Instant,
) -> Result<(PathBuf, Duration)> {
    let data = cfg.data_dir();
    let logs = data.join("logs");
    let api_dir = data.join("api");
    for dir in [&logs, &api_dir] {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let registry = Registry::new(&cfg.state_dir());
    let start = |name: &str, netns: Option<&str>, args: Vec<OsString>| -> Result<Process> {
        let log = logs.join(format!("{}.log", name.replace('/', "-")));
        let p = processes::spawn(name, netns, binary, &args, &log)?;
        registry.add(p.clone())?;
        Ok(p)
    };

    // Control plane.
    let step = progress.step("control plane: API server");
    let kubeconfig = kubeconfig_path(cfg);
    // A kubeconfig left by a kept data dir must not be taken for the new server's.
    let _ = fs::remove_file(&kubeconfig);
    let underlay_ns = cfg.netns_name(Role::Underlay);
    let api_args = apiserver::Args {
        data_dir: api_dir.clone(),
        listen: vec![cfg.api_listen],
        listen_in_netns: vec![apiserver::NetnsListen {
            netns: netlink::netns::path(&underlay_ns),
            addr: cfg.api_underlay_addr(),
        }],
        service_cidrs: cfg.service_cidrs.clone(),
        // Webhooks behind a Service are called at its cluster IP from the first node,
        // as kube-apiserver on a control-plane node calls them.
        service_netns: Some(netlink::netns::path(&cfg.netns_name(Role::Node(1)))),
        ..k8s::parse_flags::<apiserver::Args>(&["--data-dir", "-"])
    };
    let api = start("apiserver", None, command("apiserver", api_args.to_args()))?;
    wait_for(
        API_TIMEOUT,
        &[&api],
        "the API server to write its kubeconfig",
        || kubeconfig.exists(),
    )
    .await?;
    let client = client(&kubeconfig).await?;
    step.done(&format!(
        "https://{} (and {} on the underlay)",
        server_of(&kubeconfig),
        cfg.api_underlay_addr()
    ));

    // kubewire itself, as a cluster installs it: first the agent DaemonSet (on each
    // node as soon as it registers: it is what makes a node Ready), the rest once the
    // nodes are Ready, so that the scheduler spreads the DNS pods over all of them.
    let step = progress.step("install: the agent DaemonSet");
    let install = install_config(cfg);
    let agent = install::manifests(&install::Config {
        dns: false,
        ..install.clone()
    });
    apply(&client, &agent).await?;
    step.done(&format!(
        "{} objects in {}",
        agent.len(),
        install::NAMESPACE
    ));

    let step = progress.step("control plane: controllers");
    // As a cluster runs kube-controller-manager (with --use-service-account-credentials:
    // each controller as its ServiceAccount in kube-system) and kube-scheduler: each
    // with a client certificate of its own user, not the admin's.
    let api_server = format!("https://{}", server_of(&kubeconfig));
    let identity = |user: &str, file: &str| -> Result<PathBuf> {
        let text = apiserver::client_kubeconfig(&api_dir, &api_server, user, &[])
            .map_err(|e| Error::Component(format!("minting credentials for {user}: {e}")))?;
        let path = api_dir.join(file);
        write_private(&path, text.as_bytes())?;
        Ok(path)
    };
    let controllers_args = controllers::Args {
        client: k8s::ClientArgs {
            kubeconfig: Some(identity(
                "system:kube-controller-manager",
                "controller-manager.kubeconfig",
            )?),
            server: None,
        },
        cluster_cidr: cfg.pod_cidrs.clone(),
        node_monitor_grace_period: Duration::from_secs(cfg.node_grace_period_seconds.into()),
        use_service_account_credentials: true,
        scheduler_kubeconfig: Some(identity("system:kube-scheduler", "scheduler.kubeconfig")?),
        ..k8s::parse_flags::<controllers::Args>(&[])
    };
    let controllers = start(
        "controllers",
        None,
        command("controllers", controllers_args.to_args()),
    )?;
    step.done(
        "a ServiceAccount per controller (system:kube-controller-manager), the scheduler as system:kube-scheduler",
    );

    // Nodes: each gets its own credentials, as a kubelet would after TLS bootstrap. The
    // agent comes as the DaemonSet's pod, which the node runs in its own namespace.
    let step = progress.step(format!("nodes: pod runners on {} node(s)", cfg.nodes));
    let server = format!("https://{}", cfg.api_underlay_addr());
    let mut watched = vec![api.clone(), controllers];
    for n in 1..=cfg.nodes {
        let node = format!("node-{n}");
        let dir = data.join(&node);
        let root = node_root(cfg, &node);
        fs::create_dir_all(&root)
            .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
        let node_kubeconfig = dir.join("kubeconfig");
        let text = apiserver::client_kubeconfig(
            &api_dir,
            &server,
            &format!("system:node:{node}"),
            &["system:nodes"],
        )
        .map_err(|e| Error::Component(format!("minting credentials for {node}: {e}")))?;
        write_private(&node_kubeconfig, text.as_bytes())?;
        let netns = cfg.netns_name(Role::Node(n));
        let node_args = node::Args {
            node_name: node.clone(),
            client: k8s::ClientArgs {
                kubeconfig: Some(node_kubeconfig.clone()),
                server: None,
            },
            node_ip: cfg.node_ips(n),
            data_dir: dir.clone(),
            // Where the DaemonSet's hostPath volumes put the CNI config and plugin.
            cni_conf_dir: root.join("etc/cni/net.d"),
            cni_bin_dir: vec![root.join("opt/cni/bin")],
            cluster_dns: vec![cfg.dns_ip()],
            cluster_domain: cfg.cluster_domain.clone(),
            lease_renew: Duration::from_secs(cfg.node_grace_period_seconds.into()) / 4,
            host_path_root: root,
            ..k8s::parse_flags::<node::Args>(&[
                "--node-name",
                &node,
                "--node-ip",
                "0.0.0.0",
                "--data-dir",
                "/",
            ])
        };
        let runner = start(
            &format!("{node}/node"),
            Some(&netns),
            command("node", node_args.to_args()),
        )?;
        watched.push(runner);
    }
    step.done("");

    let step = progress.step("nodes Ready");
    // A kept data dir holds the Nodes of the last run, Ready as they were: only a
    // heartbeat from this run counts (the API's times have whole seconds).
    let since = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(1))
        .expect("now minus a second");
    let nodes: Api<Node> = Api::all(client.clone());
    let want = usize::from(cfg.nodes);
    let deadline = Instant::now() + NODES_TIMEOUT;
    loop {
        check_alive(&watched.iter().collect::<Vec<_>>())?;
        if let Ok(list) = nodes.list(&ListParams::default()).await {
            let ready = list
                .items
                .iter()
                .filter(|n| node_ready(n) && heartbeat(n).is_some_and(|t| t >= since))
                .count();
            if ready >= want {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Component(format!(
                "not every node was Ready after {}s (a node is Ready once its agent wrote the CNI config); see `kubectl -n {} get pods -o wide`, `kubectl -n {} logs daemonset/{}` and the logs in {}",
                NODES_TIMEOUT.as_secs(),
                install::NAMESPACE,
                install::NAMESPACE,
                install::AGENT,
                logs.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step.done(&format!("{want} node(s)"));
    let nodes_ready_after = began.elapsed();

    if cfg.load_balancer == crate::LoadBalancerMode::Bgp {
        let router = crate::router::Router::for_lab(cfg);
        let step = progress.step(format!(
            "router: {} (AS {}) peering with {} node(s)",
            cfg.router.as_str(),
            router.asn,
            cfg.nodes
        ));
        for p in router.start()? {
            registry.add(p.clone())?;
            watched.push(p);
        }
        // The BGP objects need MetalLB's CRDs before the install below applies them.
        apply_with_retry(&client, &install::lb::crds()).await?;
        apply_with_retry(&client, &crate::router::manifests(cfg)).await?;
        step.done(&format!(
            "{} at {}; BGPPeers {}/{} and {}",
            cfg.netns_name(Role::Router),
            cfg.addresses(Role::Router)[0].addr(),
            crate::router::METALLB_NAMESPACE,
            crate::router::PEER_V4,
            crate::router::PEER_V6
        ));
    }

    let step = progress.step(format!("install: cluster DNS at {}", cfg.dns_ip()));
    apply(&client, &install::manifests(&install)).await?;
    let dns_pods: Api<Pod> = Api::namespaced(client, "kube-system");
    let deadline = Instant::now() + ADDON_TIMEOUT;
    loop {
        check_alive(&watched.iter().collect::<Vec<_>>())?;
        let ready = dns_pods
            .list(&ListParams::default().labels("k8s-app=kube-dns"))
            .await
            .map(|l| l.items.iter().filter(|p| pod_ready_since(p, since)).count())
            .unwrap_or(0);
        if ready > 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Component(format!(
                "no cluster DNS pod was ready after {}s; see `kubectl -n kube-system get pods` and the logs in {}",
                ADDON_TIMEOUT.as_secs(),
                logs.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    step.done("kube-system/kube-dns");
    Ok((kubeconfig, nodes_ready_after))
}

/// Empties a failed lab's data directory but for its logs: the next `lab up` must not
/// find a half-made database.
fn remove_all_but_logs(data: &Path) {
    let Ok(entries) = fs::read_dir(data) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name() != "logs" {
            let path = e.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            if let Err(err) = removed {
                warn!(path = %path.display(), error = %err, "removing after a failed lab up");
            }
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// The `host:port` a kubeconfig points at.
fn server_of(kubeconfig: &Path) -> String {
    Kubeconfig::read_from(kubeconfig)
        .ok()
        .and_then(|k| k.clusters.first()?.cluster.as_ref()?.server.clone())
        .map(|s| s.trim_start_matches("https://").to_owned())
        .unwrap_or_default()
}

/// A client for the lab's API server from its kubeconfig.
pub async fn client(kubeconfig: &Path) -> Result<Client> {
    Ok(k8s::client_from_kubeconfig(kubeconfig).await?)
}

/// Whether the pod is Ready by a probe of this run (a kept data dir holds old statuses).
fn pod_ready_since(pod: &Pod, since: k8s_openapi::jiff::Timestamp) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.last_transition_time
                        .as_ref()
                        .is_some_and(|t| t.0 >= since)
            })
        })
}

/// When the node's pod runner last reported its Ready condition.
fn heartbeat(node: &Node) -> Option<k8s_openapi::jiff::Timestamp> {
    let conditions = node.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|c| c.type_ == "Ready")?;
    ready.last_heartbeat_time.as_ref().map(|t| t.0)
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until `done()`, failing early (with the end of its log) when one of `procs` exits.
async fn wait_for(
    timeout: Duration,
    procs: &[&Process],
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        check_alive(procs)?;
        if Instant::now() > deadline {
            return Err(Error::Component(format!(
                "timed out after {}s waiting for {what}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn check_alive(procs: &[&Process]) -> Result<()> {
    processes::reap();
    if let Some(dead) = procs.iter().find(|p| !p.alive()) {
        return Err(Error::Component(format!(
            "{} exited; the end of its log ({}):\n{}",
            dead.name,
            dead.log.display(),
            log_tail(&dead.log, 15)
        )));
    }
    Ok(())
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Processes of the lab that have exited since `lab up` started them.
pub fn exited(cfg: &LabConfig) -> Vec<Process> {
    processes::reap();
    Registry::new(&cfg.state_dir())
        .load()
        .into_iter()
        .filter(|p| !p.alive())
        .collect()
}

/// Stops every process the lab recorded, then every process left in its namespaces.
pub(crate) fn stop(cfg: &LabConfig, namespaces: &[String]) {
    let procs = Registry::new(&cfg.state_dir()).load();
    processes::stop_all(&procs, STOP_GRACE);
    crate::router::forget(&procs);
    let killed = processes::kill_in_netns(namespaces);
    if killed > 0 {
        debug!(killed, "stopped processes left in the lab's namespaces");
    }
}

/// One component's state for `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentStatus {
    /// `apiserver`, `controllers`, `node-1/node`, ...
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Whether it still runs.
    pub running: bool,
    /// Its log file.
    pub log: PathBuf,
}

/// One Node for `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    /// The Node's name.
    pub name: String,
    /// Whether its Ready condition is True.
    pub ready: bool,
    /// Its InternalIP addresses.
    pub addresses: Vec<String>,
    /// Its pod ranges.
    pub pod_cidrs: Vec<String>,
    /// Pods bound to it.
    pub pods: usize,
}

/// One pod of kubewire's own (the agent's on each node, DNS) for `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct SystemPod {
    /// `namespace/name`.
    pub name: String,
    /// The node it runs on.
    pub node: String,
    /// Its phase.
    pub phase: String,
    /// Whether it is Ready.
    pub ready: bool,
}

/// One IPAddressPool (of `metallb-system`) for `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Its name.
    pub name: String,
    /// Its `spec.addresses`.
    pub addresses: Vec<String>,
    /// Its status as the allocation controller writes it (assigned and available per
    /// family); `None` before the controller's first pass.
    pub usage: Option<lb::crd::IPAddressPoolStatus>,
}

/// One Service with a LoadBalancer address for `lab status`.
#[derive(Debug, Clone, Serialize)]
pub struct LoadBalancerStatus {
    /// `namespace/name`.
    pub service: String,
    /// Its `status.loadBalancer.ingress` addresses.
    pub addresses: Vec<String>,
    /// The pool they came from (`metallb.io/ip-allocated-from-pool`).
    pub pool: Option<String>,
    /// Who announces them, from the ServiceL2Status and ServiceBGPStatus objects the
    /// agents write: `node-1 (L2)`, `node-2 (BGP)`.
    pub announced_by: Vec<String>,
}

/// What `lab status` shows beyond the network.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The lab's processes.
    pub components: Vec<ComponentStatus>,
    /// Nodes as the API server sees them; empty when it does not answer.
    pub nodes: Vec<NodeStatus>,
    /// The pods of kubewire's install (the agent's, DNS), as the API server sees them.
    pub system_pods: Vec<SystemPod>,
    /// The LoadBalancer pools and their usage.
    pub pools: Vec<PoolStatus>,
    /// Services holding LoadBalancer addresses, and who announces them.
    pub load_balancers: Vec<LoadBalancerStatus>,
    /// Why `nodes` is empty, when the API server did not answer.
    pub api_error: Option<String>,
}

/// The processes' health and the Nodes from the API.
pub async fn cluster_status(cfg: &LabConfig) -> Result<ClusterStatus> {
    let state = crate::status(cfg)?;
    let cfg = state.config;
    processes::reap();
    let components = Registry::new(&cfg.state_dir())
        .load()
        .into_iter()
        .map(|p| ComponentStatus {
            running: p.alive(),
            name: p.name,
            pid: p.pid,
            log: p.log,
        })
        .collect();
    let kubeconfig = kubeconfig_path(&cfg);
    let (nodes, system_pods, api_error) = match api_nodes(&kubeconfig).await {
        Ok((n, p)) => (n, p, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    let (pools, load_balancers) = if api_error.is_none() {
        load_balancers(&kubeconfig).await
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(ClusterStatus {
        kubeconfig,
        components,
        nodes,
        system_pods,
        pools,
        load_balancers,
        api_error,
    })
}

/// The pools of `metallb-system` and the Services holding LoadBalancer addresses, with
/// the nodes that announce them. Best effort: what cannot be listed (no CRDs installed)
/// is left out.
async fn load_balancers(kubeconfig: &Path) -> (Vec<PoolStatus>, Vec<LoadBalancerStatus>) {
    use k8s_openapi::api::core::v1::Service;
    use lb::crd::{IPAddressPool, ServiceBGPStatus, ServiceL2Status};
    let Ok(client) = client(kubeconfig).await else {
        return (Vec::new(), Vec::new());
    };
    let ns = lb::controller::DEFAULT_NAMESPACE;
    let pools = Api::<IPAddressPool>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .map(|p| PoolStatus {
            name: p.metadata.name.unwrap_or_default(),
            addresses: p.spec.addresses,
            usage: p.status,
        })
        .collect();
    let mut announcers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for s in Api::<ServiceL2Status>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let st = s.status;
        announcers
            .entry(format!("{}/{}", st.service_namespace, st.service_name))
            .or_default()
            .push(format!("{} (L2)", st.node));
    }
    for s in Api::<ServiceBGPStatus>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        let st = s.status;
        announcers
            .entry(format!("{}/{}", st.service_namespace, st.service_name))
            .or_default()
            .push(format!("{} (BGP)", st.node));
    }
    let services = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let load_balancers = services
        .into_iter()
        .filter_map(|s| {
            let addresses: Vec<String> = s
                .status?
                .load_balancer?
                .ingress?
                .into_iter()
                .filter_map(|i| i.ip.or(i.hostname))
                .collect();
            if addresses.is_empty() {
                return None;
            }
            let service = format!(
                "{}/{}",
                s.metadata.namespace.unwrap_or_default(),
                s.metadata.name.unwrap_or_default()
            );
            let mut announced_by = announcers.remove(&service).unwrap_or_default();
            announced_by.sort();
            Some(LoadBalancerStatus {
                pool: s
                    .metadata
                    .annotations
                    .and_then(|a| a.get(lb::crd::ALLOCATED_FROM_POOL).cloned()),
                service,
                addresses,
                announced_by,
            })
        })
        .collect();
    (pools, load_balancers)
}

async fn api_nodes(kubeconfig: &Path) -> Result<(Vec<NodeStatus>, Vec<SystemPod>)> {
    let client = client(kubeconfig).await?;
    let list = tokio::time::timeout(
        Duration::from_secs(5),
        Api::<Node>::all(client.clone()).list(&ListParams::default()),
    )
    .await
    .map_err(|_| Error::Component("the API server did not answer within 5s".into()))?
    .map_err(|e| Error::Component(format!("listing nodes: {e}")))?;
    let pods = Api::<Pod>::all(client)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let system_pods = pods
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(install::NAMESPACE)
                && p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/part-of"))
                    .is_some_and(|v| v == "kubewire")
        })
        .map(|p| SystemPod {
            name: format!(
                "{}/{}",
                install::NAMESPACE,
                p.metadata.name.clone().unwrap_or_default()
            ),
            node: p
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            phase: p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            ready: p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
        })
        .collect();
    let nodes = list
        .items
        .iter()
        .map(|n| {
            let name = n.metadata.name.clone().unwrap_or_default();
            NodeStatus {
                ready: node_ready(n),
                addresses: n
                    .status
                    .as_ref()
                    .and_then(|s| s.addresses.as_ref())
                    .map(|a| {
                        a.iter()
                            .filter(|a| a.type_ == "InternalIP")
                            .map(|a| a.address.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
                pod_cidrs: n
                    .spec
                    .as_ref()
                    .and_then(|s| s.pod_cidrs.clone())
                    .unwrap_or_default(),
                pods: pods
                    .iter()
                    .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&name))
                    .count(),
                name,
            }
        })
        .collect();
    Ok((nodes, system_pods))
}

/// Where `lab exec` enters a pod: a process of the pod's container (its network and
/// mount namespaces are the pod's).
#[derive(Debug, Clone)]
pub struct PodTarget {
    /// `namespace/name` of the pod.
    pub pod: String,
    /// The container entered.
    pub container: String,
    /// A process of that container.
    pub pid: u32,
}

/// Finds the pod `[namespace/]name[/container]` and a process of its container, from the
/// pod runner's sandbox record (`<node dir>/pods/<uid>/sandbox.json`).
pub async fn find_pod(cfg: &LabConfig, target: &str) -> Result<PodTarget> {
    let cfg = crate::status(cfg)?.config;
    let parts: Vec<&str> = target.split('/').collect();
    let (ns, name, container) = match parts.as_slice() {
        [name] => ("default", *name, None),
        [ns, name] => (*ns, *name, None),
        [ns, name, c] => (*ns, *name, Some(*c)),
        _ => {
            return Err(Error::InvalidConfig(format!(
                "exec: {target:?} is not [namespace/]pod[/container]"
            )));
        }
    };
    let client = client(&kubeconfig_path(&cfg)).await?;
    let pod = Api::<Pod>::namespaced(client, ns)
        .get_opt(name)
        .await
        .map_err(|e| Error::Component(format!("getting pod {ns}/{name}: {e}")))?
        .ok_or_else(|| Error::Component(format!("pod {ns}/{name} not found")))?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .ok_or_else(|| {
            Error::Component(format!("pod {ns}/{name} is not scheduled to a node yet"))
        })?;
    let first_container = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .map(|c| c.name.clone())
        .unwrap_or_default();
    let container = container.map_or(first_container, str::to_owned);
    let record = cfg
        .data_dir()
        .join(&node)
        .join("pods")
        .join(&uid)
        .join("sandbox.json");
    let sandbox: serde_json::Value = fs::read(&record)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            Error::Component(format!(
                "pod {ns}/{name} has no running sandbox on {node} yet ({} missing)",
                record.display()
            ))
        })?;
    let pid = sandbox["containers"][&container]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .filter(|p| Path::new(&format!("/proc/{p}")).exists())
        .ok_or_else(|| {
            Error::Component(format!(
                "container {container:?} of pod {ns}/{name} is not running"
            ))
        })?;
    Ok(PodTarget {
        pod: format!("{ns}/{name}"),
        container,
        pid,
    })
}

/// The addresses a summary prints for the pod and Service ranges.
pub fn ranges(cfg: &LabConfig) -> (String, String, IpAddr) {
    (csv(&cfg.pod_cidrs), csv(&cfg.service_cidrs), cfg.dns_ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `deploy/overlays/lab` stands for what `lab up` installs in a default lab.
    #[test]
    fn a_default_lab_installs_the_lab_overlay() {
        let lab = install::kustomize::overlays()
            .into_iter()
            .find(|o| o.name == "lab")
            .expect("a lab overlay");
        let cfg = LabConfig::default();
        assert_eq!(
            install::manifests(&install_config(&cfg)),
            install::manifests(&lab.config)
        );
        assert_eq!(
            node_root(&cfg, "$(NODE_NAME)").join("var/lib/cni/kubewire"),
            Path::new(install::kustomize::LAB_CNI_DATA_DIR)
        );
        assert_eq!(
            node_root(&cfg, "$(NODE_NAME)").join("run/kubewire/policy.sock"),
            Path::new(install::kustomize::LAB_POLICY_SOCKET)
        );
    }
}
