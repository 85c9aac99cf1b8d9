//! `kubewire agent`: the per-node data plane, run in each node's network namespace (in
//! the lab) or as a DaemonSet (in a cluster).
//!
//! It follows the one shape every kubewire component has: mirror the API into a local
//! view ([`k8s::Mirror`]), compute the desired kernel state from the whole view as a
//! pure function ([`plan::plan`]), diff it against what the kernel holds and apply only
//! the difference ([`kernel`]), again at every `--resync` so that drift is repaired. It does
//! pod networking across nodes (the CNI config with the node's pod CIDRs, and routes to
//! every other node's pod CIDRs, natively or over VXLAN) and, unless `--proxy=false`,
//! runs the service proxy ([`proxy::run`]) beside it on the same API connection, unless
//! `--policy=false` enforces NetworkPolicy for the node's pods ([`policy::run`]), and,
//! unless `--l2-announce=false` and `--bgp-announce=false`, the announcers of
//! LoadBalancer addresses over ARP/NDP ([`lb::l2::run`]) and BGP ([`lb::bgp::run`]); the
//! BGP announcer withdraws its routes and closes its sessions when the agent stops.
//! With `--mesh-destination` it serves the mesh proxies' discovery
//! ([`mesh::destination`]).

pub mod cni_config;
pub mod kernel;
pub mod masquerade;
pub mod plan;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use cni::spec::RoutingMode;
use futures::StreamExt;
use k8s::{ErrorChain, Mirror, ObjectKey};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use tracing::{info, warn};

/// What went wrong in the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused something.
    #[error(transparent)]
    Kernel(#[from] netlink::Error),
    /// Some changes did not apply; the next reconcile retries them.
    #[error("{} kernel change(s) failed: {}", .0.len(), .0.iter().map(|e| ErrorChain(e).to_string()).collect::<Vec<_>>().join("; "))]
    Apply(Vec<netlink::Error>),
    /// No usable API connection.
    #[error(transparent)]
    Client(#[from] k8s::Error),
    /// The watch of Nodes ended.
    #[error("the watch of nodes ended")]
    WatchEnded,
    /// The service proxy stopped.
    #[error("the service proxy stopped")]
    Proxy(#[from] proxy::Error),
    /// Network policy stopped.
    #[error("network policy stopped")]
    Policy(#[from] policy::Error),
    /// The view of the cluster the LoadBalancer announcers read stopped.
    #[error("the LoadBalancer announcers' view stopped")]
    Announce(#[from] lb::announce::Error),
    /// The BGP announcer stopped.
    #[error("the BGP announcer stopped")]
    Bgp(#[from] lb::bgp::Error),
    /// The L2 (ARP/NDP) announcer stopped.
    #[error("the L2 announcer stopped")]
    L2(#[from] lb::l2::Error),
    /// The signal handlers could not be installed.
    #[error("handling SIGTERM")]
    Signals(#[source] std::io::Error),
    /// The CNI plugin could not be installed.
    #[error("installing the CNI plugin")]
    InstallPlugin(#[source] cni::install::InstallError),
    /// A file could not be written.
    #[error("{op}")]
    Io {
        /// What we were doing.
        op: String,
        /// Why it failed.
        #[source]
        cause: std::io::Error,
    },
}

/// `kubewire agent` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// This node's name, as in its Node object.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// How pod traffic crosses between nodes.
    #[arg(long, value_enum, default_value_t = RoutingMode::Native)]
    pub mode: RoutingMode,
    /// The underlay MTU; pods get 50 bytes less in VXLAN mode.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Where the container runtime reads CNI configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where the container runtime finds CNI plugins; the agent installs this binary
    /// there as `kubewire-cni` (replacing an older one atomically).
    #[arg(long)]
    pub cni_bin_dir: Option<PathBuf>,
    /// Where the plugin keeps its IPAM state.
    #[arg(long, default_value = "/var/lib/cni/kubewire")]
    pub cni_data_dir: PathBuf,
    /// Remove everything the agent put in the kernel (its routes, the VXLAN device, its
    /// nftables tables: the proxy's and network policy's) and exit, instead of running.
    #[arg(long)]
    pub cleanup: bool,
    /// How often to compare the kernel with the desired state even without API
    /// changes, and repair what differs (a route or table someone deleted).
    #[arg(long, default_value = "30s", value_parser = k8s::parse_duration)]
    pub resync: Duration,
    /// The service proxy's flags.
    #[command(flatten)]
    pub proxy: proxy::ProxyArgs,
    /// Network policy's flags.
    #[command(flatten)]
    pub policy: policy::PolicyArgs,
    /// The BGP announcer's flags.
    #[command(flatten)]
    pub bgp: lb::bgp::BgpArgs,
    /// The L2 (ARP/NDP) announcer's flags.
    #[command(flatten)]
    pub l2: lb::l2::L2Args,
    /// Serve the service mesh's discovery for the node's proxies on this address
    /// (`kubewire install --mesh` sets `0.0.0.0:4196`); unset: not served.
    #[arg(long)]
    pub mesh_destination: Option<std::net::SocketAddr>,
    /// The mesh's default inbound policy, for pods whose own annotation and whose
    /// namespace's (`config.linkerd.io/default-inbound-policy`) name none (Linkerd's
    /// `proxy.defaultInboundPolicy`).
    #[arg(long, default_value = mesh::authz::DEFAULT_POLICY, value_parser = mesh::authz::parse_default_policy)]
    pub mesh_default_inbound_policy: String,
}

impl Args {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--node-name".into(), self.node_name.clone().into()];
        args.extend(self.client.to_args());
        args.extend([
            format!("--mode={}", self.mode.as_str()).into(),
            format!("--mtu={}", self.mtu).into(),
            "--cni-conf-dir".into(),
            self.cni_conf_dir.clone().into(),
        ]);
        if let Some(dir) = &self.cni_bin_dir {
            args.extend(["--cni-bin-dir".into(), dir.clone().into()]);
        }
        args.extend(["--cni-data-dir".into(), self.cni_data_dir.clone().into()]);
        if self.cleanup {
            args.push("--cleanup".into());
        }
        args.push(format!("--resync={}", k8s::duration::format_duration(self.resync)).into());
        args.extend(self.proxy.to_args());
        args.extend(self.policy.to_args());
        args.extend(self.bgp.to_args());
        args.extend(self.l2.to_args());
        if let Some(addr) = self.mesh_destination {
            args.push(format!("--mesh-destination={addr}").into());
        }
        args.push(
            format!(
                "--mesh-default-inbound-policy={}",
                self.mesh_default_inbound_policy
            )
            .into(),
        );
        args
    }
}

/// The cluster's Nodes, each reduced to what the plan reads.
#[derive(Debug, Default)]
struct Nodes(BTreeMap<String, plan::NodeView>);

impl k8s::Store<Node> for Nodes {
    fn apply(&mut self, _key: ObjectKey, node: Node) -> bool {
        let (view, problems) = plan::NodeView::from_node(&node);
        for p in problems {
            warn!("{p}");
        }
        // Status heartbeats change nothing the plan reads: no reconcile for those.
        if self.0.get(&view.name) == Some(&view) {
            return false;
        }
        self.0.insert(view.name.clone(), view);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().map(|k| k.as_str().into()).collect()
    }
}

/// Runs the agent until SIGTERM or SIGINT. Routes and rules stay in place when it
/// stops: restarting the agent must not cut pods off.
pub async fn run(args: Args) -> Result<(), Error> {
    if args.cleanup {
        // Both, whatever the first one's outcome; then report.
        let routes = kernel::cleanup().await;
        let services = netlink::nft::NftSocket::new()
            .map_err(proxy::Error::Socket)
            .and_then(|mut socket| proxy::cleanup(&mut socket));
        let policies = netlink::nft::NftSocket::new()
            .map_err(policy::Error::Socket)
            .and_then(|mut socket| policy::cleanup(&mut socket));
        routes?;
        services?;
        policies?;
        return Ok(());
    }
    let mut shutdown = k8s::Shutdown::new().map_err(Error::Signals)?;
    let client = args.client.client().await?;
    let services = async {
        if args.proxy.proxy {
            proxy::run(
                client.clone(),
                args.node_name.clone(),
                args.proxy.clone(),
                args.resync,
            )
            .await
        } else {
            std::future::pending().await
        }
    };
    // The CNI plugin's socket is bound before the CNI config that names it is written.
    let requests = match args.policy.socket() {
        Some(path) => {
            let listener = policy::server::listen(path).map_err(|cause| Error::Io {
                op: format!("listening on {}", path.display()),
                cause,
            })?;
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tokio::spawn(policy::server::serve(listener, tx));
            Some(rx)
        }
        None => None,
    };
    let policies = async {
        if args.policy.policy {
            policy::run(
                client.clone(),
                args.node_name.clone(),
                args.resync,
                requests,
                args.policy.log(),
            )
            .await
        } else {
            std::future::pending().await
        }
    };
    let destination = async {
        match args.mesh_destination {
            Some(addr) => {
                mesh::destination::serve(client.clone(), addr, &args.mesh_default_inbound_policy)
                    .await
                    .map_err(|cause| Error::Io {
                        op: format!("serving the mesh's discovery on {addr}"),
                        cause,
                    })
            }
            None => std::future::pending().await,
        }
    };
    let (stop_announcers, stopping) = tokio::sync::oneshot::channel();
    let announcers = announcers(&args, client.clone(), stopping);
    tokio::pin!(announcers);
    let stopped = tokio::select! {
        r = services => Some(r.map_err(Error::from)),
        r = policies => Some(r.map_err(Error::from)),
        r = &mut announcers => Some(r),
        r = routes(&args, client.clone()) => Some(r),
        r = destination => Some(r),
        () = shutdown.recv() => None,
    };
    if let Some(result) = stopped {
        return result;
    }
    info!(
        "agent stopping; routes and rules stay in place, BGP routes are withdrawn, ARP/NDP answers stop"
    );
    let _ = stop_announcers.send(());
    // The BGP sessions withdraw and close with a Cease; bounded, a stuck peer must
    // not hold the agent.
    let _ = tokio::time::timeout(Duration::from_secs(5), announcers).await;
    Ok(())
}

/// The LoadBalancer announcers (L2 and BGP, each unless turned off), fed one view of the
/// cluster ([`lb::announce`]), until `stop` fires (the L2 announcer just stops answering;
/// the BGP announcer withdraws first).
async fn announcers(
    args: &Args,
    client: kube::Client,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<(), Error> {
    if !args.bgp.bgp_announce && !args.l2.l2_announce {
        return std::future::pending().await;
    }
    let (tx, view) = lb::announce::channel();
    let l2 = async {
        if !args.l2.l2_announce {
            return std::future::pending().await;
        }
        lb::l2::run(
            client.clone(),
            args.node_name.clone(),
            args.l2.clone(),
            view.clone(),
        )
        .await
        .map_err(Error::from)
    };
    let bgp = async {
        if !args.bgp.bgp_announce {
            return std::future::pending().await;
        }
        lb::bgp::run(
            client.clone(),
            args.node_name.clone(),
            args.bgp.clone(),
            view.clone(),
            stop,
        )
        .await
        .map_err(Error::from)
    };
    tokio::select! {
        r = lb::announce::run(client.clone(), tx) => r.map_err(Error::from),
        r = l2 => r,
        r = bgp => r,
    }
}

/// The routing loop: Nodes in, the kernel's routes and the CNI config out.
async fn routes(args: &Args, client: kube::Client) -> Result<(), Error> {
    if let Some(dir) = &args.cni_bin_dir {
        cni_config::install_plugin(dir)?;
    }
    let mut kernel = kernel::Reconciler::new(args.mode, args.mtu)?;
    let mut events = k8s::watch(kube::Api::<Node>::all(client), watcher::Config::default());
    let (mut nodes, mut mirror) = (Nodes::default(), Mirror::new());
    let mut resync = tokio::time::interval(args.resync);
    info!(node = %args.node_name, mode = args.mode.as_str(), "agent started");
    loop {
        let changed = tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => mirror.step(&mut nodes, event),
                Some(Err(e)) => {
                    // The watcher backs off and re-lists by itself.
                    warn!(error = %ErrorChain(&e), "watching nodes");
                    false
                }
                None => return Err(Error::WatchEnded),
            },
            _ = resync.tick() => true,
        };
        if !changed || !mirror.synced() {
            continue;
        }
        let plan = plan::plan(&args.node_name, &nodes.0, args.mode);
        for p in &plan.problems {
            warn!("{p}");
        }
        match kernel.reconcile(&plan).await {
            Ok(0) => {}
            Ok(n) => info!(changes = n, "kernel brought to the plan"),
            Err(e) => {
                warn!(error = %ErrorChain(&e), "reconciling the kernel; retrying at the next change or resync");
            }
        }
        // The hostPort tables are the plugin's, made from its IPAM state when a pod
        // comes or goes; between pods, a table someone flushed or deleted is put back
        // from that state here.
        let store = cni::ipam::Store::new(&args.cni_data_dir, cni_config::NETWORK);
        match tokio::task::spawn_blocking(move || cni::hostport::repair(&store)).await {
            Ok(Ok(true)) => warn!("the hostPort tables were changed by someone else; restored"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "checking the hostPort tables"),
            Err(e) => warn!(error = %e, "checking the hostPort tables"),
        }
        if !plan.own_pod_cidrs.is_empty() {
            let list = cni_config::conflist(
                &plan.own_pod_cidrs,
                args.mode,
                args.mtu,
                &args.cni_data_dir,
                args.policy.socket(),
            );
            match cni_config::write_if_changed(&args.cni_conf_dir, &list.to_json()) {
                Ok(true) => {
                    info!(dir = %args.cni_conf_dir.display(), cidrs = ?plan.own_pod_cidrs, "CNI config written");
                }
                Ok(false) => {}
                Err(e) => warn!(error = %ErrorChain(&e), "writing the CNI config"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        agent: Args,
    }

    fn parse(argv: Vec<OsString>) -> Args {
        Cli::parse_from(std::iter::once("kubewire-agent".into()).chain(argv)).agent
    }

    #[test]
    fn flags_round_trip() {
        let args = Args {
            node_name: "node-2".into(),
            client: k8s::ClientArgs {
                kubeconfig: Some("/data/node-2/kubeconfig".into()),
                server: Some("https://198.18.0.1:6443".into()),
            },
            mode: RoutingMode::Vxlan,
            mtu: 9000,
            cni_conf_dir: "/data/node-2/net.d".into(),
            cni_bin_dir: Some("/data/node-2/bin".into()),
            cni_data_dir: "/data/node-2/cni".into(),
            cleanup: true,
            resync: Duration::from_millis(1500),
            proxy: proxy::ProxyArgs {
                proxy: false,
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
                sync_delay_ms: 5,
            },
            policy: policy::PolicyArgs {
                policy: false,
                policy_socket: "/data/node-2/policy.sock".into(),
                policy_log_rate: 0,
                policy_log_group: 7,
            },
            bgp: lb::bgp::BgpArgs {
                bgp_announce: false,
                bgp_status_namespace: "kubewire".into(),
            },
            l2: lb::l2::L2Args {
                l2_announce: false,
                l2_heartbeat_port: 7947,
                l2_heartbeat_interval: Duration::from_millis(50),
                l2_dead_after: Duration::from_millis(300),
                l2_status_namespace: "kubewire".into(),
            },
            mesh_destination: Some("0.0.0.0:4196".parse().unwrap()),
            mesh_default_inbound_policy: "deny".into(),
        };
        assert_eq!(parse(args.to_args()), args);
        let defaults = parse(vec!["--node-name".into(), "n".into()]);
        assert_eq!(parse(defaults.to_args()), defaults);
    }
}
