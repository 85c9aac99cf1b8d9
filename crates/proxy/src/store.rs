//! What the proxy keeps of the cluster: Services, EndpointSlices and this node's Node,
//! each mirrored by a [`k8s::Mirror`] into a store of its own that holds only what the
//! proxy reads, converted on arrival. The [`View`] itself (services joined with their
//! endpoints) is the Services' store; slim slices are kept beside it, indexed by
//! service. Each change marks the services it touches dirty, remembering each one as
//! it was at the last sync, so that a sync sends only their difference.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use k8s::{Mirror, ObjectKey};
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use tracing::warn;

use crate::view::{Interner, Service, ServiceKey, Slice, View, ViewError};

/// The label with the node's zone (topology-aware routing).
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

fn service_key(s: &K8sService) -> ServiceKey {
    let m = &s.metadata;
    ServiceKey::new(
        m.namespace.as_deref().unwrap_or("default"),
        m.name.as_deref().unwrap_or_default(),
    )
}

/// Rebuilds `m` from its sorted entries, which fills its nodes: a map filled by
/// inserts in key order (as a list arrives) leaves every node about half empty.
fn compact<K: Ord, V>(m: &mut BTreeMap<K, V>) {
    *m = std::mem::take(m).into_iter().collect();
}

/// What the proxy reads of this node's Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub(crate) pod_cidrs: Vec<IpNet>,
    /// InternalIP and ExternalIP addresses.
    pub(crate) addresses: Vec<IpAddr>,
    /// The `topology.kubernetes.io/zone` label.
    pub(crate) zone: Option<String>,
}

impl NodeInfo {
    fn from_k8s(n: &K8sNode) -> NodeInfo {
        let spec = n.spec.as_ref();
        let cidrs = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        NodeInfo {
            pod_cidrs: cidrs
                .iter()
                .filter_map(|c| c.parse::<IpNet>().ok().map(|c| c.trunc()))
                .collect(),
            addresses: n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .into_iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse::<IpAddr>().ok())
                .collect(),
            zone: n
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(ZONE_LABEL))
                .filter(|z| !z.is_empty())
                .cloned(),
        }
    }
}

/// Whether two services have the same rules-relevant fields, endpoints aside.
fn same_spec(a: &Service, b: &Service) -> bool {
    // Destructured so that a new field of Service cannot be forgotten here.
    let Service {
        key,
        ty,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        affinity_timeout,
        external_traffic_policy,
        internal_traffic_policy,
        health_check_node_port,
        publish_not_ready,
        endpoints: _,
    } = a;
    *key == b.key
        && *ty == b.ty
        && *cluster_ips == b.cluster_ips
        && *external_ips == b.external_ips
        && *load_balancer_ips == b.load_balancer_ips
        && *ports == b.ports
        && *affinity_timeout == b.affinity_timeout
        && *external_traffic_policy == b.external_traffic_policy
        && *internal_traffic_policy == b.internal_traffic_policy
        && *health_check_node_port == b.health_check_node_port
        && *publish_not_ready == b.publish_not_ready
}

/// The watched objects, slim. The services live in the [`View`] the rules are
/// computed from (each joined with its endpoints as it changes), so they are held
/// once; EndpointSlices are kept apart, reduced to [`Slice`]s, because a service's
/// endpoints are rebuilt from all its slices when one changes. Each kind is mirrored
/// by a [`k8s::Mirror`] stepping one of the [`k8s::Store`]s below.
#[derive(Debug, Default)]
pub(crate) struct Store {
    /// The services with their endpoints, as they are now (ahead of what was synced
    /// for the dirty ones).
    pub(crate) view: View,
    services: Mirror,
    slices: BTreeMap<ObjectKey, Slice>,
    slices_mirror: Mirror,
    /// Slice keys by the service they belong to (most services have one slice).
    slices_of: BTreeMap<Arc<ServiceKey>, Vec<ObjectKey>>,
    /// This node (the watch selects it by name).
    pub(crate) node: Option<(ObjectKey, NodeInfo)>,
    node_mirror: Mirror,
    interner: Interner,
    /// Whether a sync has applied the view once (dirty services are tracked from then).
    pub(crate) applied_once: bool,
}

/// Services changed since the last sync, each as it was then (`None`: it had no rules;
/// boxed, as most entries are `None` and a `Service` is large).
pub(crate) type Dirty = BTreeMap<ServiceKey, Option<Box<Service>>>;

impl Store {
    pub(crate) fn synced(&self) -> bool {
        self.services.synced() && self.slices_mirror.synced() && self.node_mirror.synced()
    }

    fn slices_of<'a>(&'a self, key: &ServiceKey) -> impl Iterator<Item = &'a Slice> + 'a {
        let keys = self
            .slices_of
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default();
        keys.iter().filter_map(|k| self.slices.get(k))
    }

    /// Records `key` as dirty, as it is now, unless it already is. Before the first
    /// sync nothing is recorded: everything is synced in full then, and nothing was
    /// applied that could be stale.
    fn touch(&self, dirty: &mut Dirty, key: &ServiceKey) {
        if self.applied_once && !dirty.contains_key(key) {
            let now = self.view.services.get(key).cloned().map(Box::new);
            dirty.insert(key.clone(), now);
        }
    }

    /// Replaces (or removes, with `None`) service `key`: `new` has no endpoints yet.
    /// Returns whether its rules change.
    fn set_service(&mut self, dirty: &mut Dirty, key: &ServiceKey, new: Option<Service>) -> bool {
        let old = self.view.services.get(key);
        match (old, new) {
            (None, None) => false,
            (Some(old), Some(new)) if same_spec(old, &new) => false,
            (_, new) => {
                self.touch(dirty, key);
                match new {
                    Some(new) => {
                        let joined = new.with_endpoints(self.slices_of(key));
                        self.view.services.insert(key.clone(), joined);
                    }
                    None => {
                        self.view.services.remove(key);
                    }
                }
                true
            }
        }
    }

    /// Rebuilds the endpoints of service `key` from its slices.
    fn rejoin(&mut self, dirty: &mut Dirty, key: &ServiceKey) {
        let Some(svc) = self.view.services.get(key) else {
            return; // slices of a service without rules (or not seen yet)
        };
        let joined = svc.clone_spec().with_endpoints(self.slices_of(key));
        if joined.endpoints != svc.endpoints {
            self.touch(dirty, key);
            self.view.services.insert(key.clone(), joined);
        }
    }

    /// Puts (or, with `None`, removes) slice `key` and rejoins the services it left
    /// and joined. Returns whether the slice changed.
    fn set_slice(&mut self, dirty: &mut Dirty, key: ObjectKey, new: Option<Slice>) -> bool {
        let old = match &new {
            Some(n) if self.slices.get(&key) == Some(n) => return false,
            Some(n) => self.slices.insert(key.clone(), n.clone()),
            None => self.slices.remove(&key),
        };
        let mut touched = Vec::with_capacity(2);
        if let Some(old) = &old {
            if let Some(keys) = self.slices_of.get_mut(&old.service) {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.slices_of.remove(&old.service);
                }
            }
            touched.push(Arc::clone(&old.service));
        }
        if let Some(new) = &new {
            let keys = self.slices_of.entry(Arc::clone(&new.service)).or_default();
            if !keys.contains(&key) {
                keys.push(key);
                // Sorted, so that which of two slices holding one address wins
                // does not depend on the order they arrived in.
                keys.sort();
            }
            if !touched.contains(&new.service) {
                touched.push(Arc::clone(&new.service));
            }
        }
        for service in &touched {
            self.rejoin(dirty, service);
        }
        old.is_some() || new.is_some()
    }

    pub(crate) fn step_services(
        &mut self,
        dirty: &mut Dirty,
        event: watcher::Event<K8sService>,
    ) -> bool {
        let mut mirror = std::mem::take(&mut self.services);
        let changed = mirror.step(&mut Services { store: self, dirty }, event);
        self.services = mirror;
        changed
    }

    pub(crate) fn step_slices(
        &mut self,
        dirty: &mut Dirty,
        event: watcher::Event<EndpointSlice>,
    ) -> bool {
        let mut mirror = std::mem::take(&mut self.slices_mirror);
        let changed = mirror.step(&mut Slices { store: self, dirty }, event);
        self.slices_mirror = mirror;
        changed
    }

    pub(crate) fn step_node(&mut self, event: watcher::Event<K8sNode>) -> bool {
        let mut mirror = std::mem::take(&mut self.node_mirror);
        let changed = mirror.step(&mut ThisNode(&mut self.node), event);
        self.node_mirror = mirror;
        changed
    }
}

/// The Services' store: the view itself.
struct Services<'a> {
    store: &'a mut Store,
    dirty: &'a mut Dirty,
}

impl k8s::Store<K8sService> for Services<'_> {
    fn apply(&mut self, _key: ObjectKey, obj: K8sService) -> bool {
        let mut errors = Vec::new();
        let new = Service::from_k8s(&obj, &mut errors);
        warn_all(errors);
        self.store.set_service(self.dirty, &service_key(&obj), new)
    }

    fn delete(&mut self, key: &str) -> bool {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        self.store
            .set_service(self.dirty, &ServiceKey::new(ns, name), None)
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.store
            .view
            .services
            .keys()
            .map(|k| format!("{}/{}", k.namespace, k.name).into())
            .collect()
    }

    fn listed(&mut self) {
        compact(&mut self.store.view.services);
    }
}

/// The EndpointSlices' store: slim slices, indexed by service.
struct Slices<'a> {
    store: &'a mut Store,
    dirty: &'a mut Dirty,
}

impl k8s::Store<EndpointSlice> for Slices<'_> {
    fn apply(&mut self, key: ObjectKey, obj: EndpointSlice) -> bool {
        let mut errors = Vec::new();
        let new = Slice::from_k8s(&obj, &mut self.store.interner, &mut errors);
        warn_all(errors);
        self.store.set_slice(self.dirty, key, new)
    }

    fn delete(&mut self, key: &str) -> bool {
        self.store.set_slice(self.dirty, key.into(), None)
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.store.slices.keys().cloned().collect()
    }

    fn listed(&mut self) {
        // Node names and hints nothing holds any more.
        self.store.interner.prune();
        compact(&mut self.store.slices);
        compact(&mut self.store.slices_of);
    }
}

/// This node's store (its watch selects it by name).
struct ThisNode<'a>(&'a mut Option<(ObjectKey, NodeInfo)>);

impl k8s::Store<K8sNode> for ThisNode<'_> {
    fn apply(&mut self, key: ObjectKey, obj: K8sNode) -> bool {
        let new = (key, NodeInfo::from_k8s(&obj));
        let changed = self.0.as_ref() != Some(&new);
        *self.0 = Some(new);
        changed
    }

    fn delete(&mut self, key: &str) -> bool {
        let here = self.0.as_ref().is_some_and(|(k, _)| &**k == key);
        if here {
            *self.0 = None;
        }
        here
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.iter().map(|(k, _)| k.clone()).collect()
    }
}

fn warn_all(errors: Vec<ViewError>) {
    for e in errors {
        warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{Value, json};

    use super::*;

    fn svc(name: &str, ip: &str, extra: Value) -> K8sService {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1",
                         "annotations": {"a": "b"},
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"clusterIP": ip, "ports": [{"name": "u", "port": 53, "protocol": "UDP"}]}
        });
        if let (Some(spec), Value::Object(extra)) = (v["spec"].as_object_mut(), extra) {
            spec.extend(extra);
        }
        serde_json::from_value(v).unwrap()
    }

    fn slice(name: &str, service: &str, addrs: &[&str]) -> EndpointSlice {
        let eps: Vec<Value> = addrs
            .iter()
            .map(|a| {
                json!({"addresses": [a], "nodeName": "node-1", "conditions": {"ready": true},
                            "targetRef": {"kind": "Pod", "name": format!("pod-{a}")}})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default",
                         "labels": {"kubernetes.io/service-name": service},
                         "managedFields": [{"manager": "controller", "operation": "Update"}]},
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": [{"name": "u", "port": 5353, "protocol": "UDP"}]
        }))
        .unwrap()
    }

    fn list<K>(objects: Vec<K>) -> Vec<watcher::Event<K>> {
        let mut events = vec![watcher::Event::Init];
        events.extend(objects.into_iter().map(watcher::Event::InitApply));
        events.push(watcher::Event::InitDone);
        events
    }

    fn key(name: &str) -> ServiceKey {
        ServiceKey::new("default", name)
    }

    /// A store fed `services` and `slices` as initial lists; the sync took the dirty set.
    fn listed(services: Vec<K8sService>, slices: Vec<EndpointSlice>) -> Store {
        let mut store = Store::default();
        let mut dirty = Dirty::new();
        for e in list(services) {
            store.step_services(&mut dirty, e);
        }
        for e in list(slices) {
            store.step_slices(&mut dirty, e);
        }
        assert!(dirty.is_empty(), "before the first sync nothing is tracked");
        // As after the first sync.
        store.applied_once = true;
        store
    }

    fn addresses(store: &Store, name: &str) -> Vec<String> {
        store.view.services[&key(name)]
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    }

    #[test]
    fn the_store_view_equals_the_view_built_from_the_objects() {
        let services = vec![
            svc("a", "10.96.0.1", json!({})),
            svc("b", "10.96.0.2", json!({"publishNotReadyAddresses": true})),
            svc("headless", "None", json!({})),
        ];
        let slices = vec![
            slice("a-1", "a", &["10.244.1.2", "10.244.1.3"]),
            slice("a-2", "a", &["10.244.2.2"]),
            slice("b-1", "b", &["10.244.1.4"]),
            slice("headless-1", "headless", &["10.244.1.5"]),
            slice("orphan-1", "orphan", &["10.244.1.6"]),
        ];
        // Slices first: services are joined with whatever slices are there already.
        // (As after a first sync of an empty cluster, so that dirty services count.)
        let mut store = Store {
            applied_once: true,
            ..Store::default()
        };
        let mut dirty = Dirty::new();
        for e in list(slices.clone()) {
            store.step_slices(&mut dirty, e);
        }
        assert!(dirty.is_empty(), "slices alone make no service");
        for e in list(services.clone()) {
            store.step_services(&mut dirty, e);
        }
        let (built, errors) = View::build(&services, &slices);
        assert!(errors.is_empty());
        assert_eq!(store.view, built);
        assert_eq!(
            addresses(&store, "a"),
            ["10.244.1.2", "10.244.1.3", "10.244.2.2"]
        );
        assert_eq!(
            dirty.keys().cloned().collect::<Vec<_>>(),
            [key("a"), key("b")],
            "new services are dirty, the headless one gets no rules"
        );
        assert!(
            dirty.values().all(Option::is_none),
            "none was synced before"
        );
        // And services first.
        assert_eq!(listed(services, slices).view, built);
    }

    #[test]
    fn changes_the_proxy_does_not_read_mark_nothing_dirty() {
        let mut store = listed(
            vec![svc("a", "10.96.0.1", json!({}))],
            vec![slice("a-1", "a", &["10.244.1.2"])],
        );
        let mut dirty = Dirty::new();
        let mut s = svc("a", "10.96.0.1", json!({}));
        s.metadata.resource_version = Some("2".into());
        s.metadata.annotations = Some([("c".to_owned(), "d".to_owned())].into());
        store.step_services(&mut dirty, watcher::Event::Apply(s));
        let mut sl = slice("a-1", "a", &["10.244.1.2"]);
        sl.metadata.resource_version = Some("3".into());
        store.step_slices(&mut dirty, watcher::Event::Apply(sl));
        assert!(dirty.is_empty());
    }

    #[test]
    fn dirty_services_keep_their_state_of_the_last_sync() {
        let mut store = listed(
            vec![svc("a", "10.96.0.1", json!({}))],
            vec![slice("a-1", "a", &["10.244.1.2", "10.244.1.3"])],
        );
        let synced = store.view.services[&key("a")].clone();
        let mut dirty = Dirty::new();
        // Two changes before the next sync: the first state is the one remembered.
        for addrs in [&["10.244.1.2"][..], &["10.244.1.4"]] {
            store.step_slices(&mut dirty, watcher::Event::Apply(slice("a-1", "a", addrs)));
        }
        assert_eq!(dirty[&key("a")].as_deref(), Some(&synced));
        assert_eq!(addresses(&store, "a"), ["10.244.1.4"]);
        // The UDP flows to both old endpoints are stale (computed at sync from it).
        let stale = crate::stale::udp(&synced, store.view.services.get(&key("a")));
        let gone: BTreeSet<IpAddr> = stale.iter().map(|f| f.reply_src).collect();
        assert_eq!(
            gone,
            ["10.244.1.2", "10.244.1.3"]
                .map(|a| a.parse().unwrap())
                .into()
        );
        // A deleted service is remembered too, and leaves the view.
        let mut dirty = Dirty::new();
        store.step_services(
            &mut dirty,
            watcher::Event::Delete(svc("a", "10.96.0.1", json!({}))),
        );
        assert!(dirty[&key("a")].is_some());
        assert!(store.view.services.is_empty());
    }

    #[test]
    fn a_relist_marks_only_what_changed() {
        let mut store = listed(
            vec![
                svc("a", "10.96.0.1", json!({})),
                svc("b", "10.96.0.2", json!({})),
                svc("c", "10.96.0.3", json!({})),
            ],
            vec![
                slice("a-1", "a", &["10.244.1.2"]),
                slice("b-1", "b", &["10.244.1.3"]),
                slice("c-1", "c", &["10.244.1.4"]),
            ],
        );
        let mut dirty = Dirty::new();
        // The watch expired; meanwhile c went away, b's endpoint moved, a's port
        // changed, and d came.
        let services = vec![
            svc(
                "a",
                "10.96.0.1",
                json!({"ports": [{"name": "u", "port": 54, "protocol": "UDP"}]}),
            ),
            svc("b", "10.96.0.2", json!({})),
            svc("d", "10.96.0.4", json!({})),
        ];
        let slices = vec![
            slice("a-1", "a", &["10.244.1.2"]),
            slice("b-1", "b", &["10.244.1.9"]),
            slice("d-1", "d", &["10.244.1.5"]),
        ];
        for e in list(services) {
            store.step_services(&mut dirty, e);
        }
        for e in list(slices) {
            store.step_slices(&mut dirty, e);
        }
        let keys: Vec<_> = dirty.keys().map(|k| k.name.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c", "d"]);
        assert!(dirty[&key("d")].is_none());
        assert_eq!(addresses(&store, "b"), ["10.244.1.9"]);
        assert_eq!(store.view.services.len(), 3);
        assert_eq!(store.slices_of.len(), 3, "c's slice is gone from the index");
    }

    #[test]
    fn a_slice_moving_to_another_service_changes_both() {
        let mut store = listed(
            vec![
                svc("a", "10.96.0.1", json!({})),
                svc("b", "10.96.0.2", json!({})),
            ],
            vec![slice("s", "a", &["10.244.1.2"])],
        );
        let mut dirty = Dirty::new();
        store.step_slices(
            &mut dirty,
            watcher::Event::Apply(slice("s", "b", &["10.244.1.2"])),
        );
        assert_eq!(dirty.len(), 2);
        assert!(store.view.services[&key("a")].endpoints.is_empty());
        assert_eq!(addresses(&store, "b"), ["10.244.1.2"]);
        assert_eq!(store.slices_of.len(), 1);
    }

    #[test]
    fn a_service_that_stops_and_starts_getting_rules_keeps_its_slices() {
        let mut store = listed(
            vec![svc("a", "10.96.0.1", json!({}))],
            vec![slice("a-1", "a", &["10.244.1.2"])],
        );
        let mut dirty = Dirty::new();
        let mut other_proxy = svc("a", "10.96.0.1", json!({}));
        other_proxy.metadata.labels =
            Some([(crate::SERVICE_PROXY_NAME_LABEL.to_owned(), "x".to_owned())].into());
        store.step_services(&mut dirty, watcher::Event::Apply(other_proxy));
        assert!(
            store.view.services.is_empty(),
            "another proxy's service gets no rules"
        );
        assert!(dirty[&key("a")].is_some());
        // Back to us: its endpoints are there at once, from the slice kept meanwhile.
        store.step_services(
            &mut dirty,
            watcher::Event::Apply(svc("a", "10.96.0.1", json!({}))),
        );
        assert_eq!(addresses(&store, "a"), ["10.244.1.2"]);
    }

    #[test]
    fn publish_not_ready_changes_rejoin_the_endpoints() {
        let mut not_ready = slice("a-1", "a", &["10.244.1.2"]);
        not_ready.endpoints.as_mut().unwrap()[0]
            .conditions
            .as_mut()
            .unwrap()
            .ready = Some(false);
        let mut store = listed(vec![svc("a", "10.96.0.1", json!({}))], vec![not_ready]);
        assert!(!store.view.services[&key("a")].endpoints[0].ready);
        let mut dirty = Dirty::new();
        let publish = svc("a", "10.96.0.1", json!({"publishNotReadyAddresses": true}));
        store.step_services(&mut dirty, watcher::Event::Apply(publish));
        assert!(store.view.services[&key("a")].endpoints[0].ready);
        assert_eq!(dirty.len(), 1);
    }

    #[test]
    fn endpoints_share_node_names_and_ports() {
        let store = listed(
            vec![
                svc("a", "10.96.0.1", json!({})),
                svc("b", "10.96.0.2", json!({})),
            ],
            vec![
                slice("a-1", "a", &["10.244.1.2"]),
                slice("b-1", "b", &["10.244.1.3"]),
            ],
        );
        let (a, b) = (
            &store.view.services[&key("a")].endpoints[0],
            &store.view.services[&key("b")].endpoints[0],
        );
        assert!(Arc::ptr_eq(
            a.node_name.as_ref().unwrap(),
            b.node_name.as_ref().unwrap()
        ));
        assert!(Arc::ptr_eq(&a.ports, &b.ports));
    }

    #[test]
    fn the_node_zone_comes_from_its_label() {
        let node: K8sNode = serde_json::from_value(json!({
            "metadata": {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}},
            "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.11"},
                                     {"type": "Hostname", "address": "node-1"}]}
        }))
        .unwrap();
        let info = NodeInfo::from_k8s(&node);
        assert_eq!(info.zone.as_deref(), Some("zone-a"));
        assert_eq!(info.pod_cidrs, ["10.244.1.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(info.addresses, ["198.18.0.11".parse::<IpAddr>().unwrap()]);
    }
}
