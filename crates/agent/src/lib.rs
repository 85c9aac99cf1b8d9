//! `kubewire agent`: the per-node data plane, run in each node's network namespace (in
//! the lab) or as a DaemonSet (in a cluster).
//!
//! It follows the one shape every kubewire component has: watch the API into a local
//! view (kube-rs `watcher`), compute the desired kernel state from the whole view as a
//! pure function ([`plan::plan`]), and apply only the difference ([`kernel`]). It does
//! pod networking across nodes (the CNI config with the node's pod CIDRs, and routes to
//! every other node's pod CIDRs, natively or over VXLAN) and, unless `--proxy=false`,
//! runs the service proxy ([`proxy::run`]) beside it on the same API connection.

pub mod cni_config;
pub mod kernel;
pub mod masquerade;
pub mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher;
use tracing::{info, warn};

pub use plan::Mode;

/// What went wrong in the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kernel refused something.
    #[error(transparent)]
    Kernel(#[from] netlink::Error),
    /// Some changes did not apply; the next sync retries them.
    #[error("{} change(s) failed: {}", .0.len(), .0.join("; "))]
    Apply(Vec<String>),
    /// No usable API connection.
    #[error("connecting to the API server: {0}")]
    Api(String),
    /// The service proxy stopped.
    #[error(transparent)]
    Proxy(#[from] proxy::Error),
    /// A file could not be written.
    #[error("{op}: {cause}")]
    Io {
        /// What we were doing.
        op: String,
        /// Why it failed.
        cause: std::io::Error,
    },
}

/// `kubewire agent` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// This node's name, as in its Node object.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Kubeconfig to reach the API server; in-cluster service account if not given.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// API server URL, overriding the kubeconfig's (the lab's nodes reach the control
    /// plane on the underlay, not on the host's loopback).
    #[arg(long)]
    pub server: Option<String>,
    /// How pod traffic crosses between nodes.
    #[arg(long, value_enum, default_value_t = Mode::Native)]
    pub mode: Mode,
    /// The underlay MTU; pods get 50 bytes less in VXLAN mode.
    #[arg(long, default_value_t = 1500)]
    pub mtu: u32,
    /// Where the container runtime reads CNI configurations.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where the container runtime finds CNI plugins; the agent links `kubewire-cni`
    /// there to this binary.
    #[arg(long)]
    pub cni_bin_dir: Option<PathBuf>,
    /// Where the plugin keeps its IPAM state.
    #[arg(long, default_value = "/var/lib/cni/kubewire")]
    pub cni_data_dir: PathBuf,
    /// Remove everything the agent put in the kernel (its routes, the VXLAN device, its
    /// nftables tables) and exit, instead of running.
    #[arg(long)]
    pub cleanup: bool,
    /// How often to re-apply the whole plan even without API changes, repairing any
    /// drift in the kernel.
    #[arg(long, default_value = "30s", value_parser = parse_seconds)]
    pub resync: Duration,
    /// The service proxy's flags.
    #[command(flatten)]
    pub proxy: proxy::ProxyArgs,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?} is not a number of seconds like 30s"))
}

async fn client(args: &Args) -> Result<kube::Client, Error> {
    let api = |e: &dyn std::fmt::Display| Error::Api(e.to_string());
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| api(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| api(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| api(&e))?,
    };
    if let Some(server) = &args.server {
        config.cluster_url = server.parse().map_err(|e| api(&e))?;
    }
    kube::Client::try_from(config).map_err(|e| api(&e))
}

/// The watch loop's view of the cluster's Nodes, stepped by watcher events.
#[derive(Debug, Default)]
struct NodeView {
    nodes: BTreeMap<String, plan::NodeView>,
    /// Nodes seen since the current (re-)list began; swapped in when it completes.
    relisting: Option<BTreeMap<String, plan::NodeView>>,
    /// Whether a complete list has been seen.
    synced: bool,
}

impl NodeView {
    /// Applies one event; true when the view changed in a way worth a sync.
    fn step(&mut self, event: watcher::Event<Node>) -> bool {
        let view = |n: &Node| {
            let (v, problems) = plan::NodeView::from_node(n);
            for p in problems {
                warn!("{p}");
            }
            v
        };
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(n) => {
                let v = view(&n);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(v.name.clone(), v);
                false
            }
            watcher::Event::InitDone => {
                self.nodes = self.relisting.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(n) => {
                let v = view(&n);
                // Status heartbeats change nothing the plan reads: skip those syncs.
                let unchanged = self.nodes.get(&v.name) == Some(&v);
                self.nodes.insert(v.name.clone(), v);
                !unchanged
            }
            watcher::Event::Delete(n) => self
                .nodes
                .remove(n.metadata.name.as_deref().unwrap_or_default())
                .is_some(),
        }
    }
}

/// Runs the agent until the process is stopped. Routes stay in place when it stops:
/// restarting the agent must not cut pods off.
pub async fn run(args: Args) -> Result<(), Error> {
    if args.cleanup {
        // Both, whatever the first one's outcome; then report.
        let routes = kernel::cleanup().await;
        let services = netlink::nft::NftSocket::new()
            .map_err(proxy::Error::Socket)
            .and_then(|mut socket| proxy::cleanup(&mut socket));
        routes?;
        services?;
        return Ok(());
    }
    let client = client(&args).await?;
    let services = if args.proxy.proxy {
        let proxy = proxy::run(client.clone(), args.node_name.clone(), args.proxy.clone());
        futures::future::Either::Left(proxy)
    } else {
        futures::future::Either::Right(std::future::pending())
    };
    tokio::select! {
        r = services => r.map_err(Error::from),
        r = routes(args, client) => r,
    }
}

/// The routing loop: Nodes in, routes and the CNI config out.
async fn routes(args: Args, client: kube::Client) -> Result<(), Error> {
    if let Some(dir) = &args.cni_bin_dir {
        cni_config::install_plugin(dir)?;
    }
    let mut kernel = kernel::Reconciler::new(args.mode, args.mtu).await?;
    let nodes: kube::Api<Node> = kube::Api::all(client);
    let mut events = watcher(nodes, watcher::Config::default()).boxed();
    let mut view = NodeView::default();
    let mut resync = tokio::time::interval(args.resync);
    info!(node = %args.node_name, mode = args.mode.as_str(), "agent started");
    loop {
        let changed = tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => view.step(event),
                Some(Err(e)) => {
                    // The watcher backs off and re-lists by itself.
                    warn!(error = %e, "watching nodes");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    false
                }
                None => return Err(Error::Api("the node watch ended".into())),
            },
            _ = resync.tick() => view.synced,
        };
        if !changed || !view.synced {
            continue;
        }
        let plan = plan::plan(&args.node_name, &view.nodes, args.mode);
        for p in &plan.problems {
            warn!("{p}");
        }
        if let Err(e) = kernel.apply(&plan).await {
            warn!(error = %e, "applying routes; retrying at the next change or resync");
        }
        if !plan.own_pod_cidrs.is_empty() {
            let text =
                cni_config::render(&plan.own_pod_cidrs, args.mode, args.mtu, &args.cni_data_dir);
            match cni_config::write_if_changed(&args.cni_conf_dir, &text) {
                Ok(true) => {
                    info!(dir = %args.cni_conf_dir.display(), cidrs = ?plan.own_pod_cidrs, "CNI config written")
                }
                Ok(false) => {}
                Err(e) => warn!(error = %e, "writing the CNI config"),
            }
        }
    }
}
