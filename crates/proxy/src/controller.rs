//! The proxy's control loop, run by `kubewire agent` in the node's network namespace.
//!
//! [`k8s::watch`] feeds Services, EndpointSlices and this node's Node into the proxy's
//! stores (`store.rs`), which hold only what the proxy reads. Each event marks the
//! services it touches dirty, remembering each one as it was at the last sync; a
//! short while after the first
//! pending change (so that a burst of events makes one sync) [`Proxier::update`] sends
//! only the dirty services' difference. A change of the node (its pod CIDRs, addresses
//! or zone) or a failed apply recomputes everything; a (re)start replaces whatever an
//! earlier run left in one transaction, so established connections keep their NAT
//! state.
//!
//! After each sync the `healthCheckNodePort` servers are brought up to date and the
//! conntrack entries of UDP flows to endpoints that went away are deleted. At every
//! resync the proxier checks its tables are still in the kernel ([`Proxier::intact`]).

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s::ErrorChain;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use netlink::nft::NftSocket;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::apply::{Error, Proxier};
use crate::health::HealthServers;
use crate::ruleset::{Node, desired, health_checks};
use crate::store::{Dirty, Store};
use crate::view::ServiceKey;

/// The proxy's flags (part of `kubewire agent`'s).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct ProxyArgs {
    /// Run the service proxy (`--proxy=false` leaves Services to another proxy).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub proxy: bool,
    /// The pod network(s), comma-separated: traffic from outside them to a ClusterIP
    /// is masqueraded. Default: this node's `spec.podCIDRs`.
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    /// The service CIDRs, comma-separated: traffic to an address in them that no
    /// Service has is dropped.
    #[arg(
        long = "service-cidr",
        value_delimiter = ',',
        default_value = "10.96.0.0/12,fd00:10:96::/112"
    )]
    pub service_cidrs: Vec<IpNet>,
    /// How long to collect changes after the first one before syncing, in ms.
    #[arg(long = "proxy-sync-delay-ms", default_value_t = 50)]
    pub sync_delay_ms: u64,
}

impl ProxyArgs {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let csv = |nets: &[IpNet]| {
            nets.iter()
                .map(IpNet::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut args = vec![format!("--proxy={}", self.proxy).into()];
        if !self.cluster_cidrs.is_empty() {
            args.push(format!("--cluster-cidr={}", csv(&self.cluster_cidrs)).into());
        }
        args.push(format!("--service-cidr={}", csv(&self.service_cidrs)).into());
        args.push(format!("--proxy-sync-delay-ms={}", self.sync_delay_ms).into());
        args
    }
}

/// Runs the proxy for node `node_name` until the watches end or the kernel cannot be
/// reached. Every `resync` it checks that its tables are still the ones it filled
/// (someone may have deleted or flushed them) and puts everything back if not. Rules
/// stay in place when it stops: a restart must not cut connections.
pub async fn run(
    client: kube::Client,
    node_name: String,
    args: ProxyArgs,
    resync: Duration,
) -> Result<(), Error> {
    let socket = NftSocket::new().map_err(Error::Socket)?;
    let mut state = State::new(Proxier::new(socket), node_name.clone(), args.clone());
    let services = kube::Api::<K8sService>::all(client.clone());
    let slices = kube::Api::<EndpointSlice>::all(client.clone());
    let nodes = kube::Api::<K8sNode>::all(client);
    let this_node = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut events = futures::stream::select_all([
        k8s::watch(services, watcher::Config::default())
            .map(|e| e.map(Event::Service))
            .boxed(),
        k8s::watch(slices, watcher::Config::default())
            .map(|e| e.map(Event::Slice))
            .boxed(),
        k8s::watch(nodes, this_node)
            .map(|e| e.map(Event::Node))
            .boxed(),
    ]);
    info!(node = %node_name, "service proxy started");
    let delay = Duration::from_millis(args.sync_delay_ms);
    let mut resync = tokio::time::interval(resync);
    loop {
        let due = state.pending_since.map(|t| t + delay);
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => state.step(event),
                Some(Err(e)) => {
                    // The watcher backs off and re-lists by itself.
                    warn!(error = %ErrorChain(&e), "watching services, endpoint slices or nodes");
                }
                None => return Err(Error::WatchEnded),
            },
            _ = sleep_until(due), if due.is_some() => {
                if state.store.synced() {
                    state.sync();
                } else {
                    state.pending_since = None;
                }
            }
            _ = resync.tick() => state.check_tables(),
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}

// One event at a time passes through, moved once: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
enum Event {
    Service(watcher::Event<K8sService>),
    Slice(watcher::Event<EndpointSlice>),
    Node(watcher::Event<K8sNode>),
}

/// The loop's state: the store (with the view), what is pending.
struct State {
    proxier: Proxier,
    store: Store,
    node_name: String,
    args: ProxyArgs,
    /// The node the applied rules were computed for.
    applied_node: Option<Node>,
    /// Services to recompute at the next sync, as they were at the last one.
    dirty: Dirty,
    /// Recompute everything at the next sync (first sync, failure, node change).
    all_dirty: bool,
    /// When the oldest unsynced change came in.
    pending_since: Option<Instant>,
    health: HealthServers,
}

impl State {
    fn new(proxier: Proxier, node_name: String, args: ProxyArgs) -> State {
        State {
            proxier,
            store: Store::default(),
            node_name,
            args,
            applied_node: None,
            dirty: Dirty::new(),
            all_dirty: true,
            pending_since: None,
            health: HealthServers::default(),
        }
    }

    fn step(&mut self, event: Event) {
        match event {
            Event::Service(e) => {
                self.store.step_services(&mut self.dirty, e);
            }
            Event::Slice(e) => {
                self.store.step_slices(&mut self.dirty, e);
            }
            Event::Node(e) => {
                if self.store.step_node(e) && self.applied_node.as_ref() != Some(&self.node()) {
                    self.all_dirty = true;
                }
            }
        }
        self.mark_pending();
    }

    fn mark_pending(&mut self) {
        let pending = self.all_dirty || !self.dirty.is_empty();
        if pending && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// The node the rules are for, from its Node object (if there is one) and flags.
    fn node(&self) -> Node {
        let info = self.store.node.as_ref().map(|(_, n)| n);
        let mut node = Node {
            name: self.node_name.clone(),
            cluster_cidrs: self.args.cluster_cidrs.clone(),
            service_cidrs: self.args.service_cidrs.clone(),
            ..Node::default()
        };
        if let Some(n) = info {
            if node.cluster_cidrs.is_empty() {
                node.cluster_cidrs = n.pod_cidrs.clone();
            }
            node.node_ips = n.addresses.clone();
            node.zone = n.zone.clone();
        }
        node
    }

    /// Compares the kernel with what was applied: when the proxy's tables are no
    /// longer the ones it filled (deleted, or deleted and made again by someone), the
    /// next sync puts the whole ruleset back.
    fn check_tables(&mut self) {
        if self.proxier.applied().is_none() || self.proxier.intact() {
            return;
        }
        warn!("the service proxy's nftables tables were changed by someone else; restoring them");
        self.all_dirty = true;
        self.mark_pending();
    }

    /// Applies the dirty services (or everything) to the kernel.
    fn sync(&mut self) {
        let started = Instant::now();
        self.pending_since = None;
        let node = self.node();
        let full = self.all_dirty
            || self.proxier.applied().is_none()
            || self.applied_node.as_ref() != Some(&node);
        let dirty = std::mem::take(&mut self.dirty);
        let view = &self.store.view;
        let mut stale = Vec::new();
        for (key, old) in &dirty {
            if let Some(old) = old {
                stale.extend(crate::stale::udp(old, view.services.get(key)));
            }
        }
        let changed: BTreeSet<ServiceKey> = dirty.into_keys().collect();
        let result = if full {
            let ruleset = desired(view, &node);
            blocking(|| self.proxier.sync(ruleset))
        } else {
            let proxier = &mut self.proxier;
            blocking(|| proxier.update(view, &node, &changed))
        };
        match result {
            Ok(report) => {
                self.all_dirty = false;
                self.store.applied_once = true;
                self.applied_node = Some(node.clone());
                if full {
                    // Rare (start, node change, failure) and worth seeing.
                    info!(
                        services = view.services.len(),
                        messages = report.messages,
                        ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "service proxy synced in full"
                    );
                } else {
                    tracing::debug!(
                        services = changed.len(),
                        messages = report.messages,
                        "services synced"
                    );
                }
            }
            Err(e) => {
                warn!(error = %ErrorChain(&e), "syncing services; retrying in full");
                self.all_dirty = true;
                self.applied_node = None;
                // Retry after a second, not in a tight loop.
                self.pending_since = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        }
        self.health.update(health_checks(view, &node));
        if !stale.is_empty() {
            match blocking(|| netlink::conntrack::delete(&stale)) {
                Ok(n) if n > 0 => info!(
                    entries = n,
                    "deleted conntrack entries of UDP flows to removed endpoints"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %ErrorChain(&e), "deleting stale UDP conntrack entries"),
            }
        }
    }
}

/// Runs kernel work that may take a while (a full sync of a large table) without
/// stalling the runtime's other tasks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_round_trip() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            proxy: ProxyArgs,
        }
        let args = ProxyArgs {
            proxy: false,
            cluster_cidrs: vec![
                "10.244.0.0/16".parse().unwrap(),
                "fd00::/56".parse().unwrap(),
            ],
            service_cidrs: vec!["10.100.0.0/16".parse().unwrap()],
            sync_delay_ms: 7,
        };
        let argv = std::iter::once("x".into()).chain(args.to_args());
        assert_eq!(Cli::parse_from(argv).proxy, args);
        let defaults = Cli::parse_from(["x"]).proxy;
        let argv = std::iter::once("x".into()).chain(defaults.to_args());
        assert_eq!(Cli::parse_from(argv).proxy, defaults);
    }
}
