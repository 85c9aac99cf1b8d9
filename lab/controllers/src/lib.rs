//! `kubewire controllers`: every controller the lab needs, in one process, against any
//! Kubernetes API (the lab's embedded one or a real kube-apiserver).
//!
//! Each controller has the one shape every kubewire component has: kube-rs watchers
//! fill local stores ([`cache`]); a pass reads the whole view, computes the desired
//! objects with a pure function (unit-tested next to it) and writes only the
//! difference. After writing, a pass waits until its own writes show up in the stores
//! before the next one (kube-controller-manager's "expectations"), so a slow watch never
//! makes it create the same pod twice. Level-triggered: a restart or a missed event is
//! repaired by the next pass.
//!
//! | controller | module |
//! |---|---|
//! | EndpointSlices, Endpoints, EndpointSlice mirroring | [`endpoints`] |
//! | Deployments → ReplicaSets | [`deployment`] |
//! | ReplicaSets → Pods | [`replicaset`] |
//! | StatefulSets | [`statefulset`] |
//! | DaemonSets | [`daemonset`] |
//! | scheduler | [`scheduler`] |
//! | node IPAM (podCIDRs) | [`ipam`] |
//! | node lifecycle (Lease → NotReady → pods not ready) | [`lifecycle`] |

pub mod cache;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod ipam;
pub mod lifecycle;
pub mod replicaset;
pub mod scheduler;
pub mod statefulset;
pub mod util;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::task::JoinSet;
use tracing::info;

/// What went wrong in a controller.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable API connection; not retried (fix the kubeconfig).
    #[error("connecting to the API server: {0}")]
    Connect(String),
    /// A request failed; the next pass retries it.
    #[error("{what}: {source}")]
    Api {
        /// The object and the operation, e.g. `creating pod default/web-abc`.
        what: String,
        /// The API's answer.
        source: kube::Error,
    },
    /// A flag or configuration value is unusable.
    #[error("{0}")]
    Config(String),
}

impl Error {
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Api { what, source }
    }
}

/// `kubewire controllers` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Kubeconfig to reach the API server; in-cluster service account if not given.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster's pod ranges, one per address family; nodes get their podCIDRs from
    /// them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.244.0.0/16,fd00:10:244::/56"
    )]
    pub cluster_cidr: Vec<IpNet>,
    /// Prefix length of each node's IPv4 pod range.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size_ipv4: u8,
    /// Prefix length of each node's IPv6 pod range.
    #[arg(long, default_value_t = 64)]
    pub node_cidr_mask_size_ipv6: u8,
    /// How long a node's Lease may go unrenewed before the node is marked NotReady
    /// (its Ready condition Unknown) and its pods not ready.
    #[arg(long, default_value = "40s", value_parser = parse_duration)]
    pub node_monitor_grace_period: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 40s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?}: unit must be ms, s or m")),
    }
}

/// What the controllers need besides the API connection.
#[derive(Debug, Clone)]
pub struct Config {
    /// Pod ranges to give nodes podCIDRs from (at most one per family).
    pub cluster_cidrs: Vec<IpNet>,
    /// Prefix length of a node's IPv4 range.
    pub node_mask_v4: u8,
    /// Prefix length of a node's IPv6 range.
    pub node_mask_v6: u8,
    /// Lease age after which a node is NotReady.
    pub node_monitor_grace_period: Duration,
    /// How often every controller recomputes everything even without changes.
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00:10:244::/56".parse().unwrap(),
            ],
            node_mask_v4: 24,
            node_mask_v6: 64,
            node_monitor_grace_period: Duration::from_secs(40),
            resync: Duration::from_secs(30),
        }
    }
}

impl TryFrom<&Args> for Config {
    type Error = Error;
    fn try_from(a: &Args) -> Result<Self, Error> {
        let cfg = Config {
            cluster_cidrs: a.cluster_cidr.clone(),
            node_mask_v4: a.node_cidr_mask_size_ipv4,
            node_mask_v6: a.node_cidr_mask_size_ipv6,
            node_monitor_grace_period: a.node_monitor_grace_period,
            ..Config::default()
        };
        ipam::check_config(&cfg)?;
        Ok(cfg)
    }
}

/// Shared by every controller: the API client, the stores and the configuration.
#[derive(Clone)]
pub struct Ctx {
    /// The API connection.
    pub client: kube::Client,
    /// The local view of the cluster.
    pub caches: Arc<cache::Caches>,
    /// Flags.
    pub config: Arc<Config>,
}

/// The running controllers; dropping it (or [`Controllers::shutdown`]) stops them.
pub struct Controllers {
    tasks: JoinSet<()>,
}

impl Controllers {
    /// Stops every controller and watch.
    pub async fn shutdown(mut self) {
        self.tasks.shutdown().await;
    }

    /// Waits until a controller task ends (they end only on a panic).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }
}

/// Starts every controller on `client`; returns at once.
pub fn start(client: kube::Client, config: Config) -> Controllers {
    let mut tasks = JoinSet::new();
    let caches = Arc::new(cache::Caches::start(&client, &mut tasks));
    let ctx = Ctx {
        client,
        caches,
        config: Arc::new(config),
    };
    tasks.spawn(endpoints::run(ctx.clone()));
    tasks.spawn(deployment::run(ctx.clone()));
    tasks.spawn(replicaset::run(ctx.clone()));
    tasks.spawn(statefulset::run(ctx.clone()));
    tasks.spawn(daemonset::run(ctx.clone()));
    tasks.spawn(scheduler::run(ctx.clone()));
    tasks.spawn(ipam::run(ctx.clone()));
    tasks.spawn(lifecycle::run(ctx));
    Controllers { tasks }
}

async fn client(args: &Args) -> Result<kube::Client, Error> {
    let err = |e: &dyn std::fmt::Display| Error::Connect(e.to_string());
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| err(&e))?,
    };
    kube::Client::try_from(config).map_err(|e| err(&e))
}

/// `kubewire controllers`: runs every controller until the process is stopped.
pub async fn run(args: Args) -> Result<(), Error> {
    let config = Config::try_from(&args)?;
    let client = client(&args).await?;
    info!(cluster_cidrs = ?config.cluster_cidrs, "controllers started");
    let mut controllers = start(client, config);
    tokio::select! {
        _ = controllers.wait() => Err(Error::Config("a controller stopped unexpectedly".into())),
        _ = tokio::signal::ctrl_c() => {
            controllers.shutdown().await;
            Ok(())
        }
    }
}
