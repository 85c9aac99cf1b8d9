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
//! | ReplicationControllers → Pods | [`replicationcontroller`] |
//! | Jobs → Pods, and Jobs deleted after `ttlSecondsAfterFinished` | [`job`] |
//! | CronJobs → Jobs | [`cronjob`] |
//! | StatefulSets | [`statefulset`] |
//! | DaemonSets | [`daemonset`] |
//! | scheduler | [`scheduler`] |
//! | node IPAM (podCIDRs) | [`ipam`] |
//! | node lifecycle (Lease → NotReady → pods not ready) | [`lifecycle`] |
//! | LoadBalancer addresses (MetalLB's controller; `kubewire lb-controller` in a cluster) | [`lb::controller`] |
//!
//! Who each one is: [`credentials`]. The LoadBalancer controller is no part of
//! kube-controller-manager: its ServiceAccount (`kube-system/kubewire-lb-controller`)
//! gets its rights from kubewire's install manifests, as it would in a cluster.

pub mod cache;
pub mod credentials;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod ipam;
pub mod job;
pub mod lifecycle;
pub mod replicaset;
pub mod replicationcontroller;
pub mod scheduler;
pub mod statefulset;
pub mod util;

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
    #[error(transparent)]
    Client(#[from] k8s::Error),
    /// A request failed; the next pass retries it.
    #[error("{what}")]
    Api {
        /// The object and the operation, e.g. `creating pod default/web-abc`.
        what: String,
        /// The API's answer.
        #[source]
        source: kube::Error,
    },
    /// A flag or configuration value is unusable.
    #[error("{0}")]
    Config(String),
    /// A controller task ended, which only a panic makes happen.
    #[error("a controller stopped unexpectedly")]
    Stopped,
    /// The signal handlers could not be installed.
    #[error("handling SIGTERM")]
    Signals(#[source] std::io::Error),
}

impl Error {
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Api { what, source }
    }
}

/// `kubewire controllers` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
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
    #[arg(long, default_value = "40s", value_parser = k8s::parse_duration)]
    pub node_monitor_grace_period: Duration,
    /// Each controller writes with a token of its own ServiceAccount in kube-system
    /// (made if missing), bound to its `system:controller:*` role, as
    /// kube-controller-manager's flag of that name; the shared watches, the
    /// ServiceAccounts and the tokens use the kubeconfig's identity (in a cluster,
    /// `system:kube-controller-manager`).
    #[arg(long)]
    pub use_service_account_credentials: bool,
    /// Kubeconfig of the scheduler (in a cluster, `system:kube-scheduler`); without it
    /// the scheduler uses the controllers' client.
    #[arg(long)]
    pub scheduler_kubeconfig: Option<std::path::PathBuf>,
}

impl Args {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let cidrs: Vec<String> = self.cluster_cidr.iter().map(IpNet::to_string).collect();
        let mut args = self.client.to_args();
        args.extend([
            format!("--cluster-cidr={}", cidrs.join(",")).into(),
            format!(
                "--node-cidr-mask-size-ipv4={}",
                self.node_cidr_mask_size_ipv4
            )
            .into(),
            format!(
                "--node-cidr-mask-size-ipv6={}",
                self.node_cidr_mask_size_ipv6
            )
            .into(),
            format!(
                "--node-monitor-grace-period={}",
                k8s::duration::format_duration(self.node_monitor_grace_period)
            )
            .into(),
        ]);
        if self.use_service_account_credentials {
            args.push("--use-service-account-credentials".into());
        }
        if let Some(path) = &self.scheduler_kubeconfig {
            args.push("--scheduler-kubeconfig".into());
            args.push(path.into());
        }
        args
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

/// Starts every controller; returns at once. Given a client, every controller uses
/// it; given [`credentials::Clients`], each its own (see [`credentials`]).
pub fn start(clients: impl Into<credentials::Clients>, config: Config) -> Controllers {
    let clients: credentials::Clients = clients.into();
    let mut tasks = JoinSet::new();
    let caches = Arc::new(cache::Caches::start(&clients.root, &mut tasks));
    let ctx = Ctx {
        client: clients.root.clone(),
        caches,
        config: Arc::new(config),
    };
    // Each controller as its ServiceAccount (kube's names), its token kept fresh for
    // as long as the controller runs.
    let spawn = |tasks: &mut JoinSet<()>, name: &'static str, run: fn(Ctx) -> BoxFuture| {
        let (clients, ctx) = (clients.clone(), ctx.clone());
        tasks.spawn(async move {
            let (client, renewal) = clients.controller(name).await;
            tokio::select! {
                () = run(Ctx { client, ..ctx }) => {}
                () = renewal => {}
            }
        });
    };
    spawn(&mut tasks, "deployment-controller", |c| {
        Box::pin(deployment::run(c))
    });
    spawn(&mut tasks, "replicaset-controller", |c| {
        Box::pin(replicaset::run(c))
    });
    spawn(&mut tasks, "replication-controller", |c| {
        Box::pin(replicationcontroller::run(c))
    });
    spawn(&mut tasks, "cronjob-controller", |c| {
        Box::pin(cronjob::run(c))
    });
    spawn(&mut tasks, "statefulset-controller", |c| {
        Box::pin(statefulset::run(c))
    });
    spawn(&mut tasks, "daemon-set-controller", |c| {
        Box::pin(daemonset::run(c))
    });
    // Node IPAM and node lifecycle are kube's node-controller.
    spawn(&mut tasks, "node-controller", |c| {
        Box::pin(async move {
            tokio::join!(ipam::run(c.clone()), lifecycle::run(c));
        })
    });
    // Two identities each: EndpointSlices and Endpoints; Jobs and their TTL.
    let (c, x) = (clients.clone(), ctx.clone());
    tasks.spawn(async move {
        let (slices, r1) = c.controller("endpointslice-controller").await;
        let (endpoints, r2) = c.controller("endpoint-controller").await;
        tokio::select! {
            () = endpoints::run(Ctx { client: slices, ..x }, endpoints) => {}
            () = r1 => {}
            () = r2 => {}
        }
    });
    let (c, x) = (clients.clone(), ctx.clone());
    tasks.spawn(async move {
        let (jobs, r1) = c.controller("job-controller").await;
        let (ttl, r2) = c.controller("ttl-after-finished-controller").await;
        tokio::select! {
            () = job::run(Ctx { client: jobs, ..x }, ttl) => {}
            () = r1 => {}
            () = r2 => {}
        }
    });
    // Not kube's: the install's ServiceAccount and ClusterRole for it.
    spawn(&mut tasks, lb::controller::COMPONENT, |c| {
        Box::pin(lb::controller::control(
            c.client,
            lb::controller::Config::default(),
        ))
    });
    // The scheduler is its own component (kube-scheduler), with its own credentials.
    let client = clients.scheduler.clone().unwrap_or(clients.root);
    tasks.spawn(scheduler::run(Ctx { client, ..ctx }));
    Controllers { tasks }
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// `kubewire controllers`: runs every controller until SIGTERM or SIGINT.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown = k8s::Shutdown::new().map_err(Error::Signals)?;
    let config = Config::try_from(&args)?;
    let root_config = args.client.config().await?;
    let root = kube::Client::try_from(root_config.clone()).map_err(k8s::Error::Client)?;
    let anonymous = if args.use_service_account_credentials {
        // The same server and CA, none of the kubeconfig's credentials: each
        // controller adds its token.
        let mut config = root_config;
        config.auth_info = Default::default();
        Some(kube::Client::try_from(config).map_err(k8s::Error::Client)?)
    } else {
        None
    };
    let scheduler = match &args.scheduler_kubeconfig {
        Some(path) => Some(k8s::client_from_kubeconfig(path).await?),
        None => None,
    };
    info!(cluster_cidrs = ?config.cluster_cidrs, service_account_credentials = args.use_service_account_credentials, "controllers started");
    let clients = credentials::Clients {
        root,
        anonymous,
        scheduler,
    };
    let mut controllers = start(clients, config);
    tokio::select! {
        _ = controllers.wait() => Err(Error::Stopped),
        () = shutdown.recv() => {
            info!("controllers stopping");
            controllers.shutdown().await;
            Ok(())
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
        controllers: Args,
    }

    #[test]
    fn flags_round_trip() {
        let parse = |argv: Vec<std::ffi::OsString>| {
            Cli::parse_from(std::iter::once("x".into()).chain(argv)).controllers
        };
        let args = Args {
            client: k8s::ClientArgs {
                kubeconfig: Some("/lab/admin.kubeconfig".into()),
                server: None,
            },
            cluster_cidr: vec!["10.200.0.0/16".parse().unwrap()],
            node_cidr_mask_size_ipv4: 26,
            node_cidr_mask_size_ipv6: 80,
            node_monitor_grace_period: Duration::from_secs(90),
            use_service_account_credentials: true,
            scheduler_kubeconfig: Some("/lab/scheduler.kubeconfig".into()),
        };
        assert_eq!(parse(args.to_args()), args);
        let defaults = parse(vec![]);
        assert_eq!(parse(defaults.to_args()), defaults);
    }
}
