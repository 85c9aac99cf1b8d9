//! The proxy's control loop, run by `kubewire agent` in the node's network namespace.
//!
//! kube-rs watchers mirror Services, EndpointSlices and this node's Node into a local
//! store. Each event marks the services it touches dirty; a short while after the
//! first pending change (so that a burst of events makes one sync) the dirty services
//! are rebuilt from the store, level-triggered, and [`Proxier::update`] sends only
//! their difference. A change of the node (its pod CIDRs or addresses) or a failed
//! apply recomputes everything; a (re)start replaces whatever an earlier run left in
//! one transaction, so established connections keep their NAT state.
//!
//! After each sync the `healthCheckNodePort` servers are brought up to date and the
//! conntrack entries of UDP flows to endpoints that went away are deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::watcher;
use netlink::nft::NftSocket;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::apply::{Error, Proxier};
use crate::health::HealthServers;
use crate::ruleset::{Node, desired, health_checks};
use crate::view::{SERVICE_NAME_LABEL, Service, ServiceKey, View};

/// The proxy's flags (part of `kubewire agent`'s).
#[derive(Debug, Clone, clap::Args)]
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

/// Runs the proxy for node `node_name` until the watches end or the kernel cannot be
/// reached. Rules stay in place when it stops: a restart must not cut connections.
pub async fn run(client: kube::Client, node_name: String, args: ProxyArgs) -> Result<(), Error> {
    let socket = NftSocket::new().map_err(Error::Socket)?;
    let mut state = State {
        proxier: Proxier::new(socket),
        store: Store::default(),
        view: View::default(),
        node_name: node_name.clone(),
        args: args.clone(),
        applied_node: None,
        dirty: BTreeSet::new(),
        all_dirty: true,
        pending_since: None,
        health: HealthServers::default(),
    };
    let services = kube::Api::<K8sService>::all(client.clone());
    let slices = kube::Api::<EndpointSlice>::all(client.clone());
    let nodes = kube::Api::<K8sNode>::all(client);
    let node_filter = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let mut events = futures::stream::select_all([
        watcher(services, watcher::Config::default())
            .map(|e| e.map(Event::Service))
            .boxed(),
        watcher(slices, watcher::Config::default())
            .map(|e| e.map(Event::Slice))
            .boxed(),
        watcher(nodes, node_filter)
            .map(|e| e.map(Event::Node))
            .boxed(),
    ]);
    info!(node = %node_name, "service proxy started");
    let delay = Duration::from_millis(args.sync_delay_ms);
    loop {
        let due = state.pending_since.map(|t| t + delay);
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => state.step(event),
                Some(Err(e)) => {
                    // The watcher backs off and re-lists by itself.
                    warn!(error = %e, "watching services, endpoint slices or nodes");
                }
                None => return Err(Error::Watch("the watch ended".into())),
            },
            _ = sleep_until(due), if due.is_some() => {
                if state.store.synced() {
                    state.sync();
                } else {
                    state.pending_since = None;
                }
            }
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

/// A mirror of one kind of object, stepped by watcher events.
#[derive(Debug)]
struct Mirror<K> {
    objects: BTreeMap<(String, String), K>,
    /// Objects of a (re-)list in progress; swapped in when it completes.
    relisting: Option<BTreeMap<(String, String), K>>,
    synced: bool,
}

impl<K> Default for Mirror<K> {
    fn default() -> Self {
        Mirror {
            objects: BTreeMap::new(),
            relisting: None,
            synced: false,
        }
    }
}

fn object_key<K: Resource>(o: &K) -> (String, String) {
    let m = o.meta();
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

/// Drops what the proxy never reads, to keep the mirror small.
fn slim<K: Resource>(mut o: K) -> K {
    let m = o.meta_mut();
    m.managed_fields = None;
    m.annotations = None;
    o
}

impl<K: Resource + Clone + PartialEq> Mirror<K> {
    /// Applies one event; returns the objects that changed, as (before, after).
    fn step(&mut self, event: watcher::Event<K>) -> Vec<(Option<K>, Option<K>)> {
        match event {
            watcher::Event::Init => {
                self.relisting = Some(BTreeMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                let o = slim(o);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(object_key(&o), o);
                Vec::new()
            }
            watcher::Event::InitDone => {
                self.synced = true;
                let new = self.relisting.take().unwrap_or_default();
                let old = std::mem::replace(&mut self.objects, new);
                let mut changes = Vec::new();
                for (k, o) in &old {
                    match self.objects.get(k) {
                        Some(n) if n == o => {}
                        n => changes.push((Some(o.clone()), n.cloned())),
                    }
                }
                for (k, n) in &self.objects {
                    if !old.contains_key(k) {
                        changes.push((None, Some(n.clone())));
                    }
                }
                changes
            }
            watcher::Event::Apply(o) => {
                let o = slim(o);
                let old = self.objects.insert(object_key(&o), o.clone());
                if old.as_ref() == Some(&o) {
                    return Vec::new();
                }
                vec![(old, Some(o))]
            }
            watcher::Event::Delete(o) => match self.objects.remove(&object_key(&o)) {
                Some(old) => vec![(Some(old), None)],
                None => Vec::new(),
            },
        }
    }
}

/// The watched objects.
#[derive(Debug, Default)]
struct Store {
    services: Mirror<K8sService>,
    slices: Mirror<EndpointSlice>,
    /// Slice keys by the service they belong to.
    slices_of: BTreeMap<ServiceKey, BTreeSet<(String, String)>>,
    nodes: Mirror<K8sNode>,
}

impl Store {
    fn synced(&self) -> bool {
        self.services.synced && self.slices.synced && self.nodes.synced
    }

    fn service(&self, key: &ServiceKey) -> Option<&K8sService> {
        self.services
            .objects
            .get(&(key.namespace.clone(), key.name.clone()))
    }

    fn slices(&self, key: &ServiceKey) -> impl Iterator<Item = &EndpointSlice> {
        self.slices_of
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.objects.get(k))
    }
}

fn slice_service(s: &EndpointSlice) -> Option<ServiceKey> {
    let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some(ServiceKey::new(
        s.metadata.namespace.clone().unwrap_or_default(),
        name.clone(),
    ))
}

fn service_key(s: &K8sService) -> ServiceKey {
    ServiceKey::new(
        s.metadata.namespace.clone().unwrap_or_default(),
        s.metadata.name.clone().unwrap_or_default(),
    )
}

/// The loop's state: the store, the view built from it, what is pending.
struct State {
    proxier: Proxier,
    store: Store,
    view: View,
    node_name: String,
    args: ProxyArgs,
    /// The node the applied rules were computed for.
    applied_node: Option<Node>,
    /// Services to recompute at the next sync.
    dirty: BTreeSet<ServiceKey>,
    /// Recompute everything at the next sync (first sync, failure, node change).
    all_dirty: bool,
    /// When the oldest unsynced change came in.
    pending_since: Option<Instant>,
    health: HealthServers,
}

impl State {
    fn step(&mut self, event: Event) {
        match event {
            Event::Service(e) => {
                for (old, new) in self.store.services.step(e) {
                    for s in old.iter().chain(&new) {
                        self.dirty.insert(service_key(s));
                    }
                }
            }
            Event::Slice(e) => {
                for (old, new) in self.store.slices.step(e) {
                    if let Some(o) = &old
                        && let Some(svc) = slice_service(o)
                    {
                        if let Some(set) = self.store.slices_of.get_mut(&svc) {
                            set.remove(&object_key(o));
                            if set.is_empty() {
                                self.store.slices_of.remove(&svc);
                            }
                        }
                        self.dirty.insert(svc);
                    }
                    if let Some(n) = &new
                        && let Some(svc) = slice_service(n)
                    {
                        self.store
                            .slices_of
                            .entry(svc.clone())
                            .or_default()
                            .insert(object_key(n));
                        self.dirty.insert(svc);
                    }
                }
            }
            Event::Node(e) => {
                if !self.store.nodes.step(e).is_empty()
                    && self.applied_node.as_ref() != Some(&self.node())
                {
                    self.all_dirty = true;
                }
            }
        }
        let pending = self.all_dirty || !self.dirty.is_empty();
        if pending && self.pending_since.is_none() {
            self.pending_since = Some(Instant::now());
        }
    }

    /// The node the rules are for, from its Node object (if there is one) and flags.
    fn node(&self) -> Node {
        let k8s = self
            .store
            .nodes
            .objects
            .values()
            .find(|n| n.metadata.name.as_deref() == Some(self.node_name.as_str()));
        let mut node = Node {
            name: self.node_name.clone(),
            cluster_cidrs: self.args.cluster_cidrs.clone(),
            node_ips: Vec::new(),
            service_cidrs: self.args.service_cidrs.clone(),
        };
        if let Some(n) = k8s {
            if node.cluster_cidrs.is_empty() {
                let spec = n.spec.as_ref();
                let cidrs = spec
                    .and_then(|s| s.pod_cidrs.clone())
                    .filter(|c| !c.is_empty())
                    .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
                    .unwrap_or_default();
                node.cluster_cidrs = cidrs
                    .iter()
                    .filter_map(|c| c.parse::<IpNet>().ok().map(|c| c.trunc()))
                    .collect();
            }
            node.node_ips = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .collect();
        }
        node
    }

    /// Rebuilds the dirty services (or everything) and applies the difference.
    fn sync(&mut self) {
        self.pending_since = None;
        let node = self.node();
        let full = self.all_dirty
            || self.proxier.applied().is_none()
            || self.applied_node.as_ref() != Some(&node);
        let dirty = std::mem::take(&mut self.dirty);
        let mut stale = Vec::new();
        let result = if full {
            let (view, errors) = View::build(
                self.store.services.objects.values(),
                self.store.slices.objects.values(),
            );
            for e in errors {
                warn!("{e}");
            }
            for (key, old) in &self.view.services {
                stale.extend(crate::stale::udp(old, view.services.get(key)));
            }
            self.view = view;
            let ruleset = desired(&self.view, &node);
            blocking(|| self.proxier.sync(ruleset))
        } else {
            for key in &dirty {
                let (mut one, errors) =
                    View::build(self.store.service(key), self.store.slices(key));
                for e in errors {
                    warn!("{e}");
                }
                let new: Option<Service> = one.services.remove(key);
                let old = self.view.services.remove(key);
                if let Some(old) = &old {
                    stale.extend(crate::stale::udp(old, new.as_ref()));
                }
                if let Some(new) = new {
                    self.view.services.insert(key.clone(), new);
                }
            }
            let (proxier, view) = (&mut self.proxier, &self.view);
            blocking(|| proxier.update(view, &node, &dirty))
        };
        match result {
            Ok(report) => {
                self.all_dirty = false;
                self.applied_node = Some(node.clone());
                tracing::debug!(
                    full = report.full,
                    services = dirty.len(),
                    messages = report.messages,
                    "services synced"
                );
            }
            Err(e) => {
                warn!(error = %e, "syncing services; retrying in full");
                self.all_dirty = true;
                self.applied_node = None;
                // Retry after a second, not in a tight loop.
                self.pending_since = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        }
        self.health.update(health_checks(&self.view, &node));
        if !stale.is_empty() {
            match blocking(|| netlink::conntrack::delete(&stale)) {
                Ok(n) if n > 0 => info!(
                    entries = n,
                    "deleted conntrack entries of UDP flows to removed endpoints"
                ),
                Ok(_) => {}
                Err(e) => warn!(error = %e, "deleting stale UDP conntrack entries"),
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
