//! What the agent's announcers (L2 and BGP) read of the cluster, mirrored through
//! [`k8s::watch`] into one store and published as an immutable [`View`] snapshot.
//!
//! The planners are pure functions of a `View` (plus what they know of the world, such
//! as which nodes are alive), so they are unit-tested without an API server. The
//! store keeps only what they read: LoadBalancer Services with their addresses, pool
//! and traffic policy, and the nodes that hold a ready endpoint of each (from the
//! EndpointSlices, so that `externalTrafficPolicy: Local` elects among those); Nodes
//! with labels, addresses and readiness; and MetalLB's configuration objects
//! (IPAddressPool, L2Advertisement, BGPAdvertisement, BGPPeer, Community, BFDProfile),
//! kept whole but without their managed fields.
//!
//! [`run`] publishes a new snapshot after each burst of events (every event that was
//! ready at once), through a `tokio::sync::watch` channel: readers always see the
//! latest whole view and never wait for one another.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use k8s::{ErrorChain, Mirror, ObjectKey};
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::warn;

use crate::crd::{
    BFDProfile, BGPAdvertisement, BGPPeer, Community, IPAddressPool, L2Advertisement,
};

/// The label that keeps a node out of every LoadBalancer's announcers (Kubernetes'
/// well-known label, honoured by MetalLB too).
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";

/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What went wrong mirroring the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A watch stream ended (the watcher retries by itself, so this means shutdown).
    #[error("the watch of the announcers' objects ended")]
    WatchEnded,
}

/// A LoadBalancer Service, as the announcers read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// What Events about the Service refer to it by.
    pub uid: String,
    /// `status.loadBalancer.ingress[].ip`, in order.
    pub ips: Vec<IpAddr>,
    /// The pool the addresses were allocated from (the allocation controller's
    /// annotation, [`crate::crd::ALLOCATED_FROM_POOL`]); `None`: not announced.
    pub pool: Option<String>,
    /// `externalTrafficPolicy: Local`: only nodes with a ready endpoint may announce.
    pub local: bool,
    pub labels: BTreeMap<String, String>,
    /// The nodes holding at least one ready endpoint of the Service.
    pub endpoint_nodes: BTreeSet<String>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether `node` holds a ready endpoint of the Service.
    pub fn has_endpoint_on(&self, node: &str) -> bool {
        self.endpoint_nodes.contains(node)
    }

    /// The Service as the announcers read it, or `None` when it is not of type
    /// LoadBalancer.
    pub fn from_k8s(s: &K8sService) -> Option<Service> {
        let spec = s.spec.as_ref()?;
        if spec.type_.as_deref() != Some("LoadBalancer") {
            return None;
        }
        let ips = s
            .status
            .as_ref()
            .and_then(|st| st.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        Some(Service {
            namespace: s
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into()),
            name: s.metadata.name.clone().unwrap_or_default(),
            uid: s.metadata.uid.clone().unwrap_or_default(),
            ips,
            pool: crate::select::allocated_pool(s).map(str::to_owned),
            local: spec.external_traffic_policy.as_deref() == Some("Local"),
            labels: s.metadata.labels.clone().unwrap_or_default(),
            endpoint_nodes: BTreeSet::new(),
        })
    }
}

/// A Node, as the announcers read it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The Ready condition is not False or Unknown (a node that reports no conditions
    /// at all counts as ready: liveness is the announcers' own business).
    pub ready: bool,
    /// InternalIP addresses (the underlay), in the order the Node lists them.
    pub internal_ips: Vec<IpAddr>,
}

impl Node {
    pub fn from_k8s(n: &K8sNode) -> Node {
        let status = n.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .is_none_or(|c| c.status == "True");
        Node {
            name: n.metadata.name.clone().unwrap_or_default(),
            labels: n.metadata.labels.clone().unwrap_or_default(),
            ready,
            internal_ips: status
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect(),
        }
    }

    /// Whether the node carries the label that excludes it from load balancers.
    pub fn excluded(&self) -> bool {
        self.labels.contains_key(EXCLUDE_LABEL)
    }
}

/// One snapshot of everything the announcers read. Maps are keyed by
/// [`k8s::object_key`] (`namespace/name`; nodes by name), so iteration is sorted and
/// every agent computing from the same objects computes the same result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// LoadBalancer Services, shared between snapshots: each change sends a new view,
    /// and copying every Service into it cost more than the change.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    pub nodes: BTreeMap<ObjectKey, Node>,
    pub pools: BTreeMap<ObjectKey, IPAddressPool>,
    pub l2_advertisements: BTreeMap<ObjectKey, L2Advertisement>,
    pub bgp_advertisements: BTreeMap<ObjectKey, BGPAdvertisement>,
    pub bgp_peers: BTreeMap<ObjectKey, BGPPeer>,
    pub communities: BTreeMap<ObjectKey, Community>,
    pub bfd_profiles: BTreeMap<ObjectKey, BFDProfile>,
    /// Every kind has been listed once: the view is whole, and what it lacks does not
    /// exist (before that, a planner must not withdraw anything).
    pub synced: bool,
}

impl View {
    /// The pool named `name` (pools are referred to by name alone, as in MetalLB, which
    /// reads them from its one namespace).
    pub fn pool(&self, name: &str) -> Option<&IPAddressPool> {
        self.pools
            .values()
            .find(|p| p.metadata.name.as_deref() == Some(name))
    }
}

/// An EndpointSlice, reduced to its Service and the nodes of its ready endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    service: ObjectKey,
    nodes: BTreeSet<String>,
}

impl Slice {
    fn from_k8s(s: &EndpointSlice) -> Option<Slice> {
        let name = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let nodes = s
            .endpoints
            .iter()
            .flatten()
            // A missing ready condition means ready (the API's documented default).
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
            .filter_map(|e| e.node_name.clone())
            .collect();
        Some(Slice {
            service: format!("{ns}/{name}").into(),
            nodes,
        })
    }
}

/// The store the mirrors step: the view being built, and the slices beside it.
#[derive(Debug, Default)]
pub struct Store {
    view: View,
    slices: BTreeMap<ObjectKey, Slice>,
    /// Slice keys by Service key.
    slices_of: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,
    mirrors: Mirrors,
}

#[derive(Debug, Default)]
struct Mirrors {
    services: Mirror,
    slices: Mirror,
    nodes: Mirror,
    pools: Mirror,
    l2: Mirror,
    bgp: Mirror,
    peers: Mirror,
    communities: Mirror,
    bfd: Mirror,
}

impl Mirrors {
    fn synced(&self) -> bool {
        [
            &self.services,
            &self.slices,
            &self.nodes,
            &self.pools,
            &self.l2,
            &self.bgp,
            &self.peers,
            &self.communities,
            &self.bfd,
        ]
        .iter()
        .all(|m| m.synced())
    }
}

/// One watcher event of any kind the store mirrors.
// One event at a time passes through, moved once: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    Service(watcher::Event<K8sService>),
    Slice(watcher::Event<EndpointSlice>),
    Node(watcher::Event<K8sNode>),
    Pool(watcher::Event<IPAddressPool>),
    L2Advertisement(watcher::Event<L2Advertisement>),
    BGPAdvertisement(watcher::Event<BGPAdvertisement>),
    BGPPeer(watcher::Event<BGPPeer>),
    Community(watcher::Event<Community>),
    BFDProfile(watcher::Event<BFDProfile>),
}

impl Store {
    /// The view as it is now.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Applies one event; returns whether the view changed.
    pub fn step(&mut self, event: Event) -> bool {
        let m = &mut self.mirrors;
        let changed = match event {
            Event::Service(e) => {
                let mut mirror = std::mem::take(&mut m.services);
                let changed = mirror.step(&mut Services(self), e);
                self.mirrors.services = mirror;
                changed
            }
            Event::Slice(e) => {
                let mut mirror = std::mem::take(&mut m.slices);
                let changed = mirror.step(&mut Slices(self), e);
                self.mirrors.slices = mirror;
                changed
            }
            Event::Node(e) => m
                .nodes
                .step(&mut Slim(&mut self.view.nodes, Node::from_k8s), e),
            Event::Pool(e) => m.pools.step(&mut Whole(&mut self.view.pools), e),
            Event::L2Advertisement(e) => m.l2.step(&mut Whole(&mut self.view.l2_advertisements), e),
            Event::BGPAdvertisement(e) => {
                m.bgp.step(&mut Whole(&mut self.view.bgp_advertisements), e)
            }
            Event::BGPPeer(e) => m.peers.step(&mut Whole(&mut self.view.bgp_peers), e),
            Event::Community(e) => m
                .communities
                .step(&mut Whole(&mut self.view.communities), e),
            Event::BFDProfile(e) => m.bfd.step(&mut Whole(&mut self.view.bfd_profiles), e),
        };
        let synced = self.mirrors.synced();
        let became_synced = synced && !self.view.synced;
        self.view.synced = synced;
        changed || became_synced
    }

    fn endpoint_nodes(&self, service: &str) -> BTreeSet<String> {
        self.slices_of
            .get(service)
            .into_iter()
            .flatten()
            .filter_map(|k| self.slices.get(k))
            .flat_map(|s| s.nodes.iter().cloned())
            .collect()
    }

    /// Recomputes the endpoint nodes of `service`; returns whether they changed.
    fn rejoin(&mut self, service: &str) -> bool {
        let nodes = self.endpoint_nodes(service);
        match self.view.services.get_mut(service) {
            Some(s) if s.endpoint_nodes != nodes => {
                Arc::make_mut(s).endpoint_nodes = nodes;
                true
            }
            _ => false,
        }
    }

    fn set_slice(&mut self, key: ObjectKey, new: Option<Slice>) -> bool {
        let old = match &new {
            Some(n) if self.slices.get(&key) == Some(n) => return false,
            Some(n) => self.slices.insert(key.clone(), n.clone()),
            None => self.slices.remove(&key),
        };
        let mut changed = false;
        if let Some(old) = &old {
            if let Some(keys) = self.slices_of.get_mut(&old.service) {
                keys.remove(&key);
                if keys.is_empty() {
                    self.slices_of.remove(&old.service);
                }
            }
            changed |= self.rejoin(&old.service);
        }
        if let Some(new) = new {
            self.slices_of
                .entry(new.service.clone())
                .or_default()
                .insert(key);
            changed |= self.rejoin(&new.service);
        }
        changed
    }
}

/// The Services' store: slim Services joined with their endpoint nodes.
struct Services<'a>(&'a mut Store);

impl k8s::Store<K8sService> for Services<'_> {
    fn apply(&mut self, key: ObjectKey, obj: K8sService) -> bool {
        let Some(mut new) = Service::from_k8s(&obj) else {
            return self.delete(&key);
        };
        new.endpoint_nodes = self.0.endpoint_nodes(&key);
        if self.0.view.services.get(&key).map(|s| &**s) == Some(&new) {
            return false;
        }
        self.0.view.services.insert(key, Arc::new(new));
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        self.0.view.services.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.view.services.keys().cloned().collect()
    }
}

/// The EndpointSlices' store: the ready endpoints' nodes, indexed by Service.
struct Slices<'a>(&'a mut Store);

impl k8s::Store<EndpointSlice> for Slices<'_> {
    fn apply(&mut self, key: ObjectKey, obj: EndpointSlice) -> bool {
        self.0.set_slice(key, Slice::from_k8s(&obj))
    }

    fn delete(&mut self, key: &str) -> bool {
        self.0.set_slice(key.into(), None)
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.slices.keys().cloned().collect()
    }
}

/// A kind kept converted to a slim form.
struct Slim<'a, K, T>(&'a mut BTreeMap<ObjectKey, T>, fn(&K) -> T);

impl<K: Resource, T: PartialEq> k8s::Store<K> for Slim<'_, K, T> {
    fn apply(&mut self, key: ObjectKey, obj: K) -> bool {
        let new = (self.1)(&obj);
        if self.0.get(&key) == Some(&new) {
            return false;
        }
        self.0.insert(key, new);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

/// A kind kept whole, less the metadata that changes with every write.
struct Whole<'a, K>(&'a mut BTreeMap<ObjectKey, K>);

impl<K: Resource + PartialEq> k8s::Store<K> for Whole<'_, K> {
    fn apply(&mut self, key: ObjectKey, mut obj: K) -> bool {
        let meta = obj.meta_mut();
        meta.managed_fields = None;
        meta.resource_version = None;
        if self.0.get(&key) == Some(&obj) {
            return false;
        }
        self.0.insert(key, obj);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

/// The watches of every kind the store mirrors, as one stream.
pub fn events(
    client: kube::Client,
) -> futures::stream::BoxStream<'static, Result<Event, watcher::Error>> {
    fn all<K>(
        client: &kube::Client,
        wrap: fn(watcher::Event<K>) -> Event,
    ) -> futures::stream::BoxStream<'static, Result<Event, watcher::Error>>
    where
        K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        k8s::watch(
            kube::Api::<K>::all(client.clone()),
            watcher::Config::default(),
        )
        .map(move |e| e.map(wrap))
        .boxed()
    }
    futures::stream::select_all([
        all(&client, Event::Service),
        all(&client, Event::Slice),
        all(&client, Event::Node),
        all(&client, Event::Pool),
        all(&client, Event::L2Advertisement),
        all(&client, Event::BGPAdvertisement),
        all(&client, Event::BGPPeer),
        all(&client, Event::Community),
        all(&client, Event::BFDProfile),
    ])
    .boxed()
}

/// A channel carrying the latest [`View`]: subscribe to it before [`run`] starts.
pub fn channel() -> (watch::Sender<Arc<View>>, watch::Receiver<Arc<View>>) {
    watch::channel(Arc::new(View::default()))
}

/// Mirrors the cluster into `tx` until the watches end: after every burst of events
/// (all that were ready at once) that changed the view, one new snapshot.
pub async fn run(client: kube::Client, tx: watch::Sender<Arc<View>>) -> Result<(), Error> {
    let mut events = events(client);
    let mut store = Store::default();
    let mut missing_told = false;
    loop {
        let mut changed = false;
        let first = events.next().await;
        let mut next = Some(first);
        while let Some(event) = next {
            match event {
                Some(Ok(e)) => changed |= store.step(e),
                // MetalLB's CRDs are not installed (yet): said once, not at every
                // retry; nothing is announced until they are.
                Some(Err(e)) if not_found(&e) => {
                    if !missing_told {
                        warn!(error = %ErrorChain(&e), "the metallb.io CRDs are not installed; no LoadBalancer address is announced until they are");
                        missing_told = true;
                    }
                }
                Some(Err(e)) => {
                    // The watcher backs off and re-lists by itself.
                    warn!(error = %ErrorChain(&e), "watching the announcers' objects");
                }
                None => return Err(Error::WatchEnded),
            }
            next = events.next().now_or_never();
        }
        if changed {
            tx.send_replace(Arc::new(store.view.clone()));
        }
    }
}

/// Whether the watch failed because the kind is not served (its CRD is missing).
pub fn not_found(e: &watcher::Error) -> bool {
    matches!(
        e,
        watcher::Error::InitialListFailed(kube::Error::Api(s))
            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            | watcher::Error::WatchFailed(kube::Error::Api(s))
            if s.code == 404
    ) || matches!(e, watcher::Error::WatchError(s) if s.code == 404)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn svc(name: &str, extra: Value) -> K8sService {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"metallb.io/ip-allocated-from-pool": "pool-a"}},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}, {"ip": "2001:2::c8"}]}}
        });
        if let (Some(spec), Value::Object(extra)) = (v["spec"].as_object_mut(), extra) {
            spec.extend(extra);
        }
        serde_json::from_value(v).unwrap()
    }

    fn slice(name: &str, service: &str, eps: &[(&str, bool)]) -> EndpointSlice {
        let eps: Vec<Value> = eps
            .iter()
            .map(|(node, ready)| {
                json!({"addresses": ["10.244.1.2"], "nodeName": node,
                       "conditions": {"ready": ready}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "endpoints": eps,
        }))
        .unwrap()
    }

    fn node(name: &str, ready: &str) -> K8sNode {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"zone": "a"}},
            "status": {"conditions": [{"type": "Ready", "status": ready}],
                       "addresses": [{"type": "InternalIP", "address": "198.18.0.11"},
                                     {"type": "Hostname", "address": name}]}
        }))
        .unwrap()
    }

    fn list<K>(objects: Vec<K>, wrap: fn(watcher::Event<K>) -> Event) -> Vec<Event> {
        let mut events = vec![wrap(watcher::Event::Init)];
        events.extend(
            objects
                .into_iter()
                .map(|o| wrap(watcher::Event::InitApply(o))),
        );
        events.push(wrap(watcher::Event::InitDone));
        events
    }

    /// A store with every kind listed empty but the given events applied after.
    fn store(events: Vec<Event>) -> Store {
        let mut s = Store::default();
        let empty: Vec<Event> = [
            list(vec![], Event::Service),
            list(vec![], Event::Slice),
            list(vec![], Event::Node),
            list(vec![], Event::Pool),
            list(vec![], Event::L2Advertisement),
            list(vec![], Event::BGPAdvertisement),
            list(vec![], Event::BGPPeer),
            list(vec![], Event::Community),
            list(vec![], Event::BFDProfile),
        ]
        .into_iter()
        .flatten()
        .collect();
        for e in empty.into_iter().chain(events) {
            s.step(e);
        }
        s
    }

    #[test]
    fn the_view_is_synced_once_every_kind_listed() {
        let mut s = Store::default();
        for e in list(vec![], Event::Service) {
            s.step(e);
        }
        assert!(!s.view().synced);
        assert!(store(vec![]).view().synced);
    }

    #[test]
    fn services_keep_addresses_pool_policy_and_endpoint_nodes() {
        let mut s = store(vec![]);
        let apply = |o| Event::Slice(watcher::Event::Apply(o));
        s.step(apply(slice(
            "web-1",
            "web",
            &[("node-1", true), ("node-2", false)],
        )));
        assert!(s.step(Event::Service(watcher::Event::Apply(svc(
            "web",
            json!({"externalTrafficPolicy": "Local"})
        )))));
        let web = &s.view().services["default/web"];
        assert_eq!(
            web.ips,
            [
                "198.18.0.200".parse::<IpAddr>().unwrap(),
                "2001:2::c8".parse().unwrap()
            ]
        );
        assert_eq!(web.pool.as_deref(), Some("pool-a"));
        assert!(web.local);
        assert_eq!(web.endpoint_nodes, BTreeSet::from(["node-1".to_owned()]));
        // A second slice adds its node; removing the first drops node-1.
        assert!(s.step(apply(slice("web-2", "web", &[("node-3", true)]))));
        assert!(s.step(Event::Slice(watcher::Event::Delete(slice(
            "web-1",
            "web",
            &[]
        )))));
        assert!(s.view().services["default/web"].has_endpoint_on("node-3"));
        assert!(!s.view().services["default/web"].has_endpoint_on("node-1"));
        // Not a LoadBalancer any more: gone from the view.
        assert!(s.step(Event::Service(watcher::Event::Apply(svc(
            "web",
            json!({"type": "ClusterIP"})
        )))));
        assert!(s.view().services.is_empty());
    }

    #[test]
    fn node_heartbeats_and_resource_versions_change_nothing() {
        let mut s = store(vec![Event::Node(watcher::Event::Apply(node(
            "node-1", "True",
        )))]);
        let n = &s.view().nodes["node-1"];
        assert!(n.ready);
        assert_eq!(n.internal_ips, ["198.18.0.11".parse::<IpAddr>().unwrap()]);
        let mut again = node("node-1", "True");
        again.metadata.resource_version = Some("7".into());
        assert!(!s.step(Event::Node(watcher::Event::Apply(again))));
        assert!(s.step(Event::Node(watcher::Event::Apply(node(
            "node-1", "Unknown"
        )))));
        assert!(!s.view().nodes["node-1"].ready);

        let pool: IPAddressPool = serde_json::from_value(json!({
            "metadata": {"name": "pool-a", "namespace": "metallb-system", "resourceVersion": "1"},
            "spec": {"addresses": ["198.18.0.200-198.18.0.250"]}
        }))
        .unwrap();
        assert!(s.step(Event::Pool(watcher::Event::Apply(pool.clone()))));
        let mut later = pool;
        later.metadata.resource_version = Some("2".into());
        assert!(!s.step(Event::Pool(watcher::Event::Apply(later))));
        assert!(s.view().pool("pool-a").is_some());
    }

    #[test]
    fn a_relist_drops_what_went_away() {
        let mut s = store(vec![Event::Service(watcher::Event::Apply(svc(
            "a",
            json!({}),
        )))]);
        assert_eq!(s.view().services.len(), 1);
        for e in list(vec![svc("b", json!({}))], Event::Service) {
            s.step(e);
        }
        let keys: Vec<_> = s.view().services.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["default/b"]);
    }
}
