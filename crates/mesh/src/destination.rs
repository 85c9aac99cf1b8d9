//! Discovery for the proxies (Linkerd's destination service, kept on the node): the
//! agent mirrors Services, EndpointSlices and Pods and answers, for an address a pod
//! connected to, where that connection may go and which of those endpoints are meshed
//! with which identity. A proxy then holds no watch of its own.
//!
//! `GET /v1/destination?addr=IP:PORT` answers a [`Destination`]:
//! - a Service's cluster IP and port: its ready endpoints, at the port the Service's
//!   port names in the EndpointSlices;
//! - a pod's address: that pod;
//! - anything else: no endpoints, and the proxy connects where the app asked.
//!
//! Each answer carries its version (a hash of its body) in the `kubewire-version`
//! header; a request with `&since=VERSION` is answered once its answer is another (or
//! after 20 s the same): a long poll, so a proxy learns of a change as soon as the
//! agent has it, and asks nothing while nothing changes.
//!
//! `GET /v1/inbound?pod=NAMESPACE/NAME` answers the pod's inbound authorization
//! ([`authz::InboundPolicy`]), from Linkerd's policy objects, its namespace's and its
//! own annotations.
//!
//! A Service port that HTTPRoutes or GRPCRoutes name as their parent (Gateway API for
//! mesh, GAMMA), or a Service with Linkerd's retry or timeout annotations, is answered
//! with [`Routes`] too: those routes and what they refer to
//! (their backends' Services, EndpointSlices and identities, the ReferenceGrants of
//! those namespaces). The proxy compiles them for its own namespace with the gateway's
//! compiler ([`gateway::gatewayapi::mesh`]), so a route means the same in both.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use gateway::controller::{Custom, CustomKind, GrpcRouteKind, HttpRouteKind, ReferenceGrantKind};
use gateway::gatewayapi::mesh as gamma;
use gateway::gatewayapi::types::ParentReference;
use k8s::{Mirror, ObjectKey, Store};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::authz;

/// The port the agent serves discovery on, at the node's address.
pub const PORT: u16 = 4196;

/// What a destination resolves to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// `service` (a Service's cluster IP), `pod`, or `unknown`.
    pub kind: String,
    /// The Service, `namespace/name`, for `service`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Where connections may go.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// The routes that name this Service port, if any: its HTTP requests are routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Routes>,
    /// The Service's failure accrual, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_accrual: Option<Accrual>,
}

/// Linkerd's `consecutive` failure accrual, from a Service's annotations
/// (`balancer.linkerd.io/failure-accrual: consecutive`, and
/// `balancer.linkerd.io/failure-accrual-consecutive-{max-failures,min-penalty,max-penalty}`,
/// 7, 1s and 1m by default; the jitter ratio is not applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Accrual {
    pub max_failures: u32,
    #[serde(with = "millis")]
    pub min_penalty: std::time::Duration,
    #[serde(with = "millis")]
    pub max_penalty: std::time::Duration,
}

impl Accrual {
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Option<Accrual> {
        const PREFIX: &str = "balancer.linkerd.io/failure-accrual";
        if a.get(PREFIX).map(String::as_str) != Some("consecutive") {
            return None;
        }
        let get = |k: &str| a.get(&format!("{PREFIX}-consecutive-{k}"));
        let duration = |k: &str, default: u64| {
            get(k)
                .and_then(|v| k8s::parse_duration(v).ok())
                .unwrap_or(std::time::Duration::from_secs(default))
        };
        Some(Accrual {
            max_failures: get("max-failures")
                .and_then(|v| v.parse().ok())
                .filter(|n| *n > 0)
                .unwrap_or(7),
            min_penalty: duration("min-penalty", 1),
            max_penalty: duration("max-penalty", 60),
        })
    }
}

/// A duration as whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        u64::deserialize(d).map(std::time::Duration::from_millis)
    }
}

/// The routes naming a Service port as their parent, and everything they refer to, as
/// the API holds them: the proxy compiles them for its own namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Routes {
    /// HTTPRoutes, `{metadata, spec}`.
    pub http_routes: Vec<Value>,
    /// GRPCRoutes, `{metadata, spec}`.
    pub grpc_routes: Vec<Value>,
    /// ReferenceGrants in the backends' namespaces, `{metadata, spec}`.
    pub reference_grants: Vec<Value>,
    /// HTTPFaults in the routes' namespaces, `{metadata, spec}`.
    #[serde(default)]
    pub http_faults: Vec<Value>,
    /// The Services the routes send to or mirror to.
    pub services: Vec<Service>,
    /// Their EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// The identities of the meshed pods among those endpoints.
    pub identities: BTreeMap<IpAddr, String>,
}

/// One endpoint of a destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The pod's address and the port it serves on.
    pub addr: SocketAddr,
    /// The pod's `namespace/name`, if a pod.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pod: String,
    /// For a meshed pod, its identity's path in the trust domain (`ns/NS/sa/SA`): its
    /// proxy speaks mutual TLS with that identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// A meshed pod's identity path.
fn identity_path(namespace: &str, service_account: &str) -> String {
    format!("ns/{namespace}/sa/{service_account}")
}

/// A Service as discovery reads it: its cluster IPs and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Svc {
    ips: Vec<IpAddr>,
    /// port → the port's name.
    ports: BTreeMap<u16, String>,
    accrual: Option<Accrual>,
}

/// An EndpointSlice's ready addresses and named ports.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slice {
    service: String,
    ports: BTreeMap<String, u16>,
    /// (address, the pod's `namespace/name`)
    addresses: Vec<(IpAddr, String)>,
}

/// A pod as discovery reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodView {
    key: String,
    ips: Vec<IpAddr>,
    /// Set for a meshed pod.
    identity: Option<String>,
    /// What its inbound policy reads.
    facts: authz::PodFacts,
}

/// The whole view, behind one lock.
#[derive(Debug, Default)]
pub struct View {
    services: HashMap<ObjectKey, Svc>,
    by_cluster_ip: HashMap<IpAddr, ObjectKey>,
    slices: HashMap<ObjectKey, Slice>,
    pods: HashMap<ObjectKey, PodView>,
    pod_by_ip: HashMap<IpAddr, ObjectKey>,
    /// Services and EndpointSlices as the API holds them, for [`Routes`].
    raw_services: HashMap<ObjectKey, Service>,
    raw_slices: HashMap<ObjectKey, EndpointSlice>,
    /// `{metadata, spec}` of each; the routes with their parents parsed.
    http_routes: BTreeMap<ObjectKey, KeptRoute>,
    grpc_routes: BTreeMap<ObjectKey, KeptRoute>,
    reference_grants: BTreeMap<ObjectKey, Value>,
    http_faults: BTreeMap<ObjectKey, Value>,
    /// Each namespace's `config.linkerd.io/default-inbound-policy`.
    namespace_policies: HashMap<ObjectKey, String>,
    /// Linkerd's policy objects.
    policy: authz::Objects,
    /// The cluster's default inbound policy, where neither a pod nor its namespace
    /// names one (empty: Linkerd's, `all-unauthenticated`).
    cluster_default_policy: String,
}

impl View {
    /// Where a connection to `addr` may go.
    pub fn resolve(&self, addr: SocketAddr) -> Destination {
        if let Some(key) = self.by_cluster_ip.get(&addr.ip())
            && let Some(svc) = self.services.get(key)
        {
            let Some(port_name) = svc.ports.get(&addr.port()) else {
                return Destination {
                    kind: "service".into(),
                    service: key.to_string(),
                    endpoints: vec![],
                    routes: None,
                    failure_accrual: None,
                };
            };
            let mut endpoints: Vec<Endpoint> = self
                .slices
                .values()
                .filter(|s| *s.service == **key)
                .filter_map(|s| Some((s, *s.ports.get(port_name)?)))
                .flat_map(|(s, port)| {
                    s.addresses
                        .iter()
                        .filter(|(ip, _)| ip.is_ipv4() == addr.is_ipv4())
                        .map(move |(ip, pod)| (SocketAddr::new(*ip, port), pod))
                })
                .map(|(a, pod)| Endpoint {
                    addr: a,
                    pod: pod.clone(),
                    identity: self.identity_of(a.ip()),
                })
                .collect();
            endpoints.sort_by_key(|e| e.addr);
            endpoints.dedup_by_key(|e| e.addr);
            return Destination {
                kind: "service".into(),
                service: key.to_string(),
                endpoints,
                routes: self.routes(key, addr.port()),
                failure_accrual: svc.accrual.clone(),
            };
        }
        if let Some(key) = self.pod_by_ip.get(&addr.ip()) {
            return Destination {
                kind: "pod".into(),
                service: String::new(),
                endpoints: vec![Endpoint {
                    addr,
                    pod: key.to_string(),
                    identity: self.identity_of(addr.ip()),
                }],
                routes: None,
                failure_accrual: None,
            };
        }
        Destination {
            kind: "unknown".into(),
            ..Destination::default()
        }
    }

    /// The routes naming the Service `key` at `port`, with what they refer to.
    fn routes(&self, key: &str, port: u16) -> Option<Routes> {
        let (namespace, name) = key.split_once('/')?;
        let naming = |routes: &BTreeMap<ObjectKey, KeptRoute>| -> Vec<Value> {
            routes
                .values()
                .filter(|r| {
                    r.parents
                        .iter()
                        .any(|p| gamma::names_service(p, &r.namespace, namespace, name, port))
                })
                .map(|r| r.value.clone())
                .collect()
        };
        let http_routes = naming(&self.http_routes);
        let grpc_routes = naming(&self.grpc_routes);
        let annotated = self
            .raw_services
            .get(key)
            .and_then(|s| s.metadata.annotations.as_ref())
            .and_then(gamma::LinkerdPolicy::from_annotations)
            .is_some();
        if http_routes.is_empty() && grpc_routes.is_empty() && !annotated {
            return None;
        }
        // The Service itself (its annotations), and those the rules send to and mirror to.
        let mut backends: BTreeSet<(String, String)> =
            [(namespace.to_string(), name.to_string())].into();
        for route in http_routes.iter().chain(&grpc_routes) {
            let route_ns = route["metadata"]["namespace"].as_str().unwrap_or_default();
            for rule in route["spec"]["rules"].as_array().into_iter().flatten() {
                let refs = rule["backendRefs"].as_array().into_iter().flatten();
                let mirrors = rule["filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|f| &f["requestMirror"]["backendRef"]);
                for r in refs.chain(mirrors) {
                    if let Some(service) = r["name"].as_str() {
                        let ns = r["namespace"].as_str().unwrap_or(route_ns);
                        backends.insert((ns.to_string(), service.to_string()));
                    }
                }
            }
        }
        let namespaces: BTreeSet<&str> = backends.iter().map(|(ns, _)| ns.as_str()).collect();
        let services = backends
            .iter()
            .filter_map(|(ns, n)| self.raw_services.get(format!("{ns}/{n}").as_str()).cloned())
            .collect();
        let endpoint_slices: Vec<EndpointSlice> = self
            .raw_slices
            .values()
            .filter(|s| {
                let service = s
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"));
                let ns = s.metadata.namespace.clone().unwrap_or_default();
                service.is_some_and(|svc| backends.contains(&(ns, svc.clone())))
            })
            .cloned()
            .collect();
        let identities = endpoint_slices
            .iter()
            .flat_map(|s| s.endpoints.iter().flatten().flat_map(|e| &e.addresses))
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .filter_map(|ip| Some((ip, self.identity_of(ip)?)))
            .collect();
        let route_namespaces: BTreeSet<&str> = http_routes
            .iter()
            .chain(&grpc_routes)
            .filter_map(|r| r["metadata"]["namespace"].as_str())
            .collect();
        let http_faults = self
            .http_faults
            .values()
            .filter(|f| {
                route_namespaces.contains(f["metadata"]["namespace"].as_str().unwrap_or_default())
            })
            .cloned()
            .collect();
        let reference_grants = self
            .reference_grants
            .values()
            .filter(|g| {
                namespaces.contains(g["metadata"]["namespace"].as_str().unwrap_or_default())
            })
            .cloned()
            .collect();
        Some(Routes {
            http_routes,
            grpc_routes,
            reference_grants,
            http_faults,
            services,
            endpoint_slices,
            identities,
        })
    }

    /// The inbound policy of the pod `namespace/name` (the default policy's of its
    /// namespace if the pod is not known yet).
    pub fn inbound(&self, pod: &str) -> authz::InboundPolicy {
        let namespace = pod.split_once('/').map_or("", |(ns, _)| ns);
        let facts = self
            .pods
            .get(pod)
            .map(|p| p.facts.clone())
            .unwrap_or_else(|| authz::PodFacts {
                namespace: namespace.into(),
                ..authz::PodFacts::default()
            });
        let ns_default = self
            .namespace_policies
            .get(namespace)
            .map(String::as_str)
            .or((!self.cluster_default_policy.is_empty())
                .then_some(self.cluster_default_policy.as_str()));
        authz::resolve(&facts, ns_default, &self.policy)
    }

    fn identity_of(&self, ip: IpAddr) -> Option<String> {
        let key = self.pod_by_ip.get(&ip)?;
        self.pods.get(key)?.identity.clone()
    }
}

impl Store<Service> for View {
    fn apply(&mut self, key: ObjectKey, mut s: Service) -> bool {
        s.metadata.managed_fields = None;
        let raw_changed = self.raw_services.get(&key) != Some(&s);
        let raw = s.clone();
        let spec = s.spec.unwrap_or_default();
        let ips: Vec<IpAddr> = spec
            .cluster_ips
            .unwrap_or_default()
            .iter()
            .chain(spec.cluster_ip.as_ref())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((u16::try_from(p.port).ok()?, p.name.unwrap_or_default())))
            .collect();
        let accrual = raw
            .metadata
            .annotations
            .as_ref()
            .and_then(Accrual::from_annotations);
        let svc = Svc {
            ips,
            ports,
            accrual,
        };
        if self.services.get(&key) == Some(&svc) {
            self.raw_services.insert(key, raw);
            return raw_changed;
        }
        Store::<Service>::delete(self, &key);
        self.raw_services.insert(key.clone(), raw);
        for ip in &svc.ips {
            self.by_cluster_ip.insert(*ip, key.clone());
        }
        self.services.insert(key, svc);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        let raw = self.raw_services.remove(key).is_some();
        let Some(old) = self.services.remove(key) else {
            return raw;
        };
        for ip in old.ips {
            if self.by_cluster_ip.get(&ip).is_some_and(|k| &**k == key) {
                self.by_cluster_ip.remove(&ip);
            }
        }
        true
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.services.keys().cloned().collect()
    }
}

impl Store<EndpointSlice> for View {
    fn apply(&mut self, key: ObjectKey, mut s: EndpointSlice) -> bool {
        s.metadata.managed_fields = None;
        self.raw_slices.insert(key.clone(), s.clone());
        let namespace = s.metadata.namespace.clone().unwrap_or_default();
        let Some(service) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
        else {
            return Store::<EndpointSlice>::delete(self, &key);
        };
        let ports = s
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| Some((p.name.unwrap_or_default(), u16::try_from(p.port?).ok()?)))
            .collect();
        let addresses = s
            .endpoints
            .iter()
            .flatten()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| {
                let pod = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .map(|r| {
                        format!(
                            "{}/{}",
                            r.namespace.as_deref().unwrap_or(&namespace),
                            r.name.as_deref().unwrap_or_default()
                        )
                    })
                    .unwrap_or_default();
                e.addresses
                    .iter()
                    .filter_map(move |a| Some((a.parse().ok()?, pod.clone())))
            })
            .collect();
        let slice = Slice {
            service: format!("{namespace}/{service}"),
            ports,
            addresses,
        };
        self.slices.insert(key, slice.clone()) != Some(slice)
    }

    fn delete(&mut self, key: &str) -> bool {
        self.raw_slices.remove(key);
        self.slices.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.slices.keys().cloned().collect()
    }
}

impl Store<Pod> for View {
    fn apply(&mut self, key: ObjectKey, p: Pod) -> bool {
        let facts = authz::PodFacts::of(&p);
        let spec = p.spec.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        if spec.host_network == Some(true)
            || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            return Store::<Pod>::delete(self, &key);
        }
        let ips: Vec<IpAddr> = status
            .pod_ips
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        let meshed = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .any(|c| c.name == cni::capture::PROXY_CONTAINER);
        let namespace = p.metadata.namespace.unwrap_or_default();
        let identity = meshed.then(|| {
            let sa = spec
                .service_account_name
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            identity_path(&namespace, &sa)
        });
        let view = PodView {
            key: key.to_string(),
            ips,
            identity,
            facts,
        };
        if self.pods.get(&key) == Some(&view) {
            return false;
        }
        Store::<Pod>::delete(self, &key);
        for ip in &view.ips {
            self.pod_by_ip.insert(*ip, key.clone());
        }
        self.pods.insert(key, view);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        let Some(old) = self.pods.remove(key) else {
            return false;
        };
        for ip in old.ips {
            if self.pod_by_ip.get(&ip).is_some_and(|k| &**k == key) {
                self.pod_by_ip.remove(&ip);
            }
        }
        true
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.pods.keys().cloned().collect()
    }
}

/// A route as kept: `{metadata, spec}` for the proxies, and what picks it (its
/// namespace and parents), parsed once here rather than at every answer.
#[derive(Debug, Clone, PartialEq)]
struct KeptRoute {
    value: Value,
    namespace: String,
    parents: Vec<ParentReference>,
}

impl KeptRoute {
    fn new(value: Value) -> KeptRoute {
        KeptRoute {
            namespace: value["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            parents: serde_json::from_value(value["spec"]["parentRefs"].clone())
                .unwrap_or_default(),
            value,
        }
    }
}

/// Routes, grants and faults are kept as `{metadata, spec}` (made into what the field
/// holds by `$kept`): the proxies parse them.
macro_rules! custom_store {
    ($kind:ty, $field:ident, $kept:expr) => {
        impl Store<Custom<$kind>> for View {
            fn apply(&mut self, key: ObjectKey, c: Custom<$kind>) -> bool {
                let mut metadata = c.metadata;
                metadata.managed_fields = None;
                metadata.resource_version = None;
                let kept = $kept(serde_json::json!({ "metadata": metadata, "spec": c.spec }));
                self.$field.insert(key, kept.clone()) != Some(kept)
            }
            fn delete(&mut self, key: &str) -> bool {
                self.$field.remove(key).is_some()
            }
            fn keys(&self) -> Vec<ObjectKey> {
                self.$field.keys().cloned().collect()
            }
        }
    };
}

/// Gateway API's routes: kept for the proxies' outbound routes (GAMMA) in `$field`, and
/// those whose parent is a Server also for the inbound policy in `$inbound` (their spec
/// read by `$read`).
macro_rules! route_store {
    ($kind:ty, $field:ident, $inbound:ident, $read:expr) => {
        impl Store<Custom<$kind>> for View {
            fn apply(&mut self, key: ObjectKey, c: Custom<$kind>) -> bool {
                let inbound: authz::HttpRouteSpec = $read(&c.spec);
                let policy_changed = if inbound.has_server_parent() {
                    self.policy.$inbound.insert(key.to_string(), inbound.clone())
                        != Some(inbound)
                } else {
                    self.policy.$inbound.remove(&*key).is_some()
                };
                let mut metadata = c.metadata;
                metadata.managed_fields = None;
                metadata.resource_version = None;
                let kept =
                    KeptRoute::new(serde_json::json!({ "metadata": metadata, "spec": c.spec }));
                (self.$field.insert(key, kept.clone()) != Some(kept)) | policy_changed
            }
            fn delete(&mut self, key: &str) -> bool {
                let policy_changed = self.policy.$inbound.remove(key).is_some();
                self.$field.remove(key).is_some() | policy_changed
            }
            fn keys(&self) -> Vec<ObjectKey> {
                self.$field.keys().cloned().collect()
            }
        }
    };
}

route_store!(
    HttpRouteKind,
    http_routes,
    gateway_http_routes,
    |spec: &Value| {
        serde_json::from_value::<authz::HttpRouteSpec>(spec.clone()).unwrap_or_default()
    }
);
route_store!(
    GrpcRouteKind,
    grpc_routes,
    gateway_grpc_routes,
    |spec: &Value| {
        serde_json::from_value::<authz::GrpcRouteSpec>(spec.clone())
            .unwrap_or_default()
            .to_http()
    }
);
custom_store!(ReferenceGrantKind, reference_grants, std::convert::identity);
custom_store!(HttpFaultKind, http_faults, std::convert::identity);

/// kubewire's `HTTPFault`.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpFaultKind;

impl CustomKind for HttpFaultKind {
    const API: (&'static str, &'static str, &'static str, &'static str) = (
        gamma::FAULT_GROUP,
        "v1alpha1",
        gamma::FAULT_KIND,
        "httpfaults",
    );
}

impl Store<Namespace> for View {
    fn apply(&mut self, key: ObjectKey, n: Namespace) -> bool {
        let policy = n
            .metadata
            .annotations
            .and_then(|mut a| a.remove(authz::DEFAULT_POLICY_ANNOTATION));
        match policy {
            Some(p) => self.namespace_policies.insert(key, p.clone()) != Some(p),
            None => self.namespace_policies.remove(&key).is_some(),
        }
    }
    fn delete(&mut self, key: &str) -> bool {
        self.namespace_policies.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.namespace_policies.keys().cloned().collect()
    }
}

/// How a policy object is kept: its spec parsed (a spec that does not parse allows
/// nothing: its defaults).
trait Kept: serde::de::DeserializeOwned + Default {
    fn kept(
        _metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        spec: Value,
    ) -> Self {
        serde_json::from_value(spec).unwrap_or_default()
    }
}

impl Kept for authz::AuthorizationPolicySpec {}
impl Kept for authz::MeshTlsAuthenticationSpec {}
impl Kept for authz::NetworkAuthenticationSpec {}
impl Kept for authz::HttpRouteSpec {}
impl Kept for authz::ServerAuthorizationSpec {}

/// A Server with its labels: ServerAuthorizations select Servers by them.
impl Kept for authz::ServerSpec {
    fn kept(
        metadata: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        spec: Value,
    ) -> Self {
        let mut s: Self = serde_json::from_value(spec).unwrap_or_default();
        s.labels = metadata.labels.clone().unwrap_or_default();
        s
    }
}

/// Linkerd's policy kinds, at the versions read.
macro_rules! policy_kinds {
    ($($marker:ident => ($version:expr, $kind:expr, $plural:expr, $field:ident, $spec:ty)),* $(,)?) => {$(
        #[derive(Debug, Clone, PartialEq)]
        pub struct $marker;
        impl CustomKind for $marker {
            const API: (&'static str, &'static str, &'static str, &'static str) =
                (authz::GROUP, $version, $kind, $plural);
        }
        impl Store<Custom<$marker>> for View {
            fn apply(&mut self, key: ObjectKey, c: Custom<$marker>) -> bool {
                let spec = <$spec as Kept>::kept(&c.metadata, c.spec);
                self.policy.$field.insert(key.to_string(), spec.clone()) != Some(spec)
            }
            fn delete(&mut self, key: &str) -> bool {
                self.policy.$field.remove(key).is_some()
            }
            fn keys(&self) -> Vec<ObjectKey> {
                self.policy.$field.keys().map(|k| k.as_str().into()).collect()
            }
        }
    )*};
}

policy_kinds! {
    ServerKind => ("v1beta3", "Server", "servers", servers, authz::ServerSpec),
    AuthorizationPolicyKind => (
        "v1alpha1", "AuthorizationPolicy", "authorizationpolicies",
        authorization_policies, authz::AuthorizationPolicySpec
    ),
    MeshTlsAuthenticationKind => (
        "v1alpha1", "MeshTLSAuthentication", "meshtlsauthentications",
        mesh_tls, authz::MeshTlsAuthenticationSpec
    ),
    NetworkAuthenticationKind => (
        "v1alpha1", "NetworkAuthentication", "networkauthentications",
        networks, authz::NetworkAuthenticationSpec
    ),
    PolicyHttpRouteKind => (
        "v1beta3", "HTTPRoute", "httproutes", http_routes, authz::HttpRouteSpec
    ),
    ServerAuthorizationKind => (
        "v1beta1", "ServerAuthorization", "serverauthorizations",
        server_authorizations, authz::ServerAuthorizationSpec
    ),
}

/// Mirrors the cluster into `view` until the watches end, and says on `changed` (a
/// count) each time what it holds changed.
pub async fn mirror(
    client: kube::Client,
    view: Arc<RwLock<View>>,
    changed: tokio::sync::watch::Sender<u64>,
) {
    let mut services = k8s::mirror::watch(
        kube::Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut slices = k8s::mirror::watch(
        kube::Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut pods = k8s::mirror::watch(
        kube::Api::<Pod>::all(client.clone()),
        watcher::Config::default(),
    );
    // Gateway API's CRDs may not be installed: these watches then retry, backing off.
    let mut http_routes = k8s::mirror::watch(
        kube::Api::<Custom<HttpRouteKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut grpc_routes = k8s::mirror::watch(
        kube::Api::<Custom<GrpcRouteKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut grants = k8s::mirror::watch(
        kube::Api::<Custom<ReferenceGrantKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut faults = k8s::mirror::watch(
        kube::Api::<Custom<HttpFaultKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut namespaces = k8s::mirror::watch(
        kube::Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    );
    // Linkerd's policy CRDs, installed with the mesh.
    let mut servers = k8s::mirror::watch(
        kube::Api::<Custom<ServerKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut policies = k8s::mirror::watch(
        kube::Api::<Custom<AuthorizationPolicyKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut mesh_tls = k8s::mirror::watch(
        kube::Api::<Custom<MeshTlsAuthenticationKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut networks = k8s::mirror::watch(
        kube::Api::<Custom<NetworkAuthenticationKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut policy_routes = k8s::mirror::watch(
        kube::Api::<Custom<PolicyHttpRouteKind>>::all(client.clone()),
        watcher::Config::default(),
    );
    let mut server_authorizations = k8s::mirror::watch(
        kube::Api::<Custom<ServerAuthorizationKind>>::all(client),
        watcher::Config::default(),
    );
    let (mut m_svc, mut m_slice, mut m_pod) = (Mirror::new(), Mirror::new(), Mirror::new());
    let (mut m_http, mut m_grpc, mut m_grant) = (Mirror::new(), Mirror::new(), Mirror::new());
    let (mut m_ns, mut m_server, mut m_policy) = (Mirror::new(), Mirror::new(), Mirror::new());
    let (mut m_mtls, mut m_net, mut m_fault) = (Mirror::new(), Mirror::new(), Mirror::new());
    let (mut m_policy_route, mut m_server_authz) = (Mirror::new(), Mirror::new());
    loop {
        let write = || {
            view.write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        };
        tokio::select! {
            Some(e) = services.next() => match e {
                Ok(e) => if m_svc.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching Services"),
            },
            Some(e) = slices.next() => match e {
                Ok(e) => if m_slice.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching EndpointSlices"),
            },
            Some(e) = pods.next() => match e {
                Ok(e) => if m_pod.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching Pods"),
            },
            Some(e) = http_routes.next() => match e {
                Ok(e) => if m_http.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => debug!(error = %e, "destination: watching HTTPRoutes"),
            },
            Some(e) = grpc_routes.next() => match e {
                Ok(e) => if m_grpc.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => debug!(error = %e, "destination: watching GRPCRoutes"),
            },
            Some(e) = grants.next() => match e {
                Ok(e) => if m_grant.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => debug!(error = %e, "destination: watching ReferenceGrants"),
            },
            Some(e) = faults.next() => match e {
                Ok(e) => if m_fault.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => debug!(error = %e, "destination: watching HTTPFaults"),
            },
            Some(e) = namespaces.next() => match e {
                Ok(e) => if m_ns.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching Namespaces"),
            },
            Some(e) = servers.next() => match e {
                Ok(e) => if m_server.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching Servers"),
            },
            Some(e) = policies.next() => match e {
                Ok(e) => if m_policy.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching AuthorizationPolicies"),
            },
            Some(e) = mesh_tls.next() => match e {
                Ok(e) => if m_mtls.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching MeshTLSAuthentications"),
            },
            Some(e) = networks.next() => match e {
                Ok(e) => if m_net.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching NetworkAuthentications"),
            },
            Some(e) = policy_routes.next() => match e {
                Ok(e) => if m_policy_route.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching policy.linkerd.io HTTPRoutes"),
            },
            Some(e) = server_authorizations.next() => match e {
                Ok(e) => if m_server_authz.step(&mut *write(), e) { changed.send_modify(|n| *n += 1) },
                Err(e) => warn!(error = %e, "destination: watching ServerAuthorizations"),
            },
            else => return,
        }
    }
}

/// How long a long poll waits for its answer to change before it is answered the same.
pub const LONG_POLL: std::time::Duration = std::time::Duration::from_secs(20);
/// The response header naming an answer's version; a request's `since=VERSION` waits
/// (up to [`LONG_POLL`]) until its answer is another.
pub const VERSION_HEADER: &str = "kubewire-version";

/// Serves discovery on `listen` from a view mirrored with `client`, until the task is
/// dropped; `default_policy` is the cluster's default inbound policy.
pub async fn serve(
    client: kube::Client,
    listen: SocketAddr,
    default_policy: &str,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(addr = %listen, default_policy, "mesh destination serving");
    let view = Arc::new(RwLock::new(View {
        cluster_default_policy: default_policy.to_string(),
        ..View::default()
    }));
    let (changed_tx, changed) = tokio::sync::watch::channel(0);
    let mirrored = tokio::spawn(mirror(client, view.clone(), changed_tx));
    k8s::http::serve_async(listener, move |parts| {
        let (view, changed) = (view.clone(), changed.clone());
        async move { long_poll(&view, changed, &parts).await }
    })
    .await;
    mirrored.abort();
    Ok(())
}

/// The answer to a request; with `since` (the version of the answer the client has),
/// once it is another, or after [`LONG_POLL`].
async fn long_poll(
    view: &RwLock<View>,
    mut changed: tokio::sync::watch::Receiver<u64>,
    parts: &http::request::Parts,
) -> k8s::http::Response {
    let query = parts.uri.query().unwrap_or_default();
    let since = k8s::http::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "since")
        .map(|(_, v)| v);
    let deadline = tokio::time::Instant::now() + LONG_POLL;
    loop {
        changed.borrow_and_update();
        let a = answer(view, parts);
        let version = a.version();
        let fresh = since.as_deref() != Some(version.as_str()) || a.status != 200;
        // Unchanged: wait for a change (and look again), up to the deadline.
        if fresh
            || !matches!(
                tokio::time::timeout_at(deadline, changed.changed()).await,
                Ok(Ok(()))
            )
        {
            let mut resp = k8s::http::response(a.status, a.content_type, a.body);
            if let Ok(v) = version.parse() {
                resp.headers_mut().insert(VERSION_HEADER, v);
            }
            return resp;
        }
    }
}

/// An answer before it is sent.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: bytes::Bytes,
}

impl Answer {
    fn new(status: u16, content_type: &'static str, body: impl Into<bytes::Bytes>) -> Answer {
        Answer {
            status,
            content_type,
            body: body.into(),
        }
    }

    /// Its version: a hash of its body.
    fn version(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.body.hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

fn answer(view: &RwLock<View>, parts: &http::request::Parts) -> Answer {
    let query = parts.uri.query().unwrap_or_default();
    if parts.method == http::Method::GET && parts.uri.path() == "/v1/inbound" {
        let pod = k8s::http::query_pairs(query)
            .into_iter()
            .find(|(k, _)| k == "pod")
            .map(|(_, v)| v)
            .filter(|p| {
                p.split_once('/')
                    .is_some_and(|(ns, n)| !ns.is_empty() && !n.is_empty())
            });
        let Some(pod) = pod else {
            return Answer::new(
                400,
                "text/plain",
                "pod: Required value: the pod as NAMESPACE/NAME\n",
            );
        };
        let policy = view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .inbound(&pod);
        return Answer::new(
            200,
            "application/json",
            serde_json::to_vec(&policy).unwrap_or_default(),
        );
    }
    if parts.method != http::Method::GET || parts.uri.path() != "/v1/destination" {
        return Answer::new(404, "text/plain", "not found\n");
    }
    let addr = k8s::http::query_pairs(query)
        .into_iter()
        .find(|(k, _)| k == "addr")
        .map(|(_, v)| v);
    let Some(addr) = addr.and_then(|a| a.parse::<SocketAddr>().ok()) else {
        return Answer::new(
            400,
            "text/plain",
            "addr: Required value: the address as IP:PORT\n",
        );
    };
    let d = view
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .resolve(addr);
    Answer::new(
        200,
        "application/json",
        serde_json::to_vec(&d).unwrap_or_default(),
    )
}

/// An answer of the destination service, and its version.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub version: String,
}

/// Asks the destination service at `server` about `addr` (plain HTTP/1.1, one request
/// per connection); with `since`, the version the proxy has, once the answer is
/// another (or after [`LONG_POLL`]).
pub async fn ask(
    server: SocketAddr,
    addr: SocketAddr,
    since: Option<&str>,
) -> std::io::Result<Versioned<Destination>> {
    get(server, &format!("/v1/destination?addr={addr}"), since).await
}

/// Asks the destination service at `server` for the inbound policy of the pod
/// `namespace/name`, as [`ask`] does.
pub async fn ask_inbound(
    server: SocketAddr,
    pod: &str,
    since: Option<&str>,
) -> std::io::Result<Versioned<authz::InboundPolicy>> {
    get(server, &format!("/v1/inbound?pod={pod}"), since).await
}

async fn get<T: serde::de::DeserializeOwned>(
    server: SocketAddr,
    target: &str,
    since: Option<&str>,
) -> std::io::Result<Versioned<T>> {
    let target = match since {
        Some(v) => format!("{target}&since={v}"),
        None => target.to_string(),
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(server).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    (&mut conn).take(1 << 20).read_to_end(&mut reply).await?;
    let text = String::from_utf8_lossy(&reply);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("the destination service's answer has no body"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "the destination service answered {}",
            head.lines().next().unwrap_or_default()
        )));
    }
    let version = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(VERSION_HEADER))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let value = serde_json::from_str(body).map_err(std::io::Error::other)?;
    Ok(Versioned { value, version })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn apply<K>(view: &mut View, obj: serde_json::Value)
    where
        View: Store<K>,
        K: kube::Resource + serde::de::DeserializeOwned,
    {
        let o: K = serde_json::from_value(obj).unwrap();
        let key = k8s::mirror::object_key(&o);
        Store::<K>::apply(view, key, o);
    }

    fn view() -> View {
        let mut v = View::default();
        apply::<Service>(
            &mut v,
            json!({"metadata": {"name": "web", "namespace": "demo"},
                   "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        );
        apply::<EndpointSlice>(
            &mut v,
            json!({"metadata": {"name": "web-x", "namespace": "demo",
                                "labels": {"kubernetes.io/service-name": "web"}},
                   "addressType": "IPv4",
                   "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                   "endpoints": [
                     {"addresses": ["10.244.1.5"], "conditions": {"ready": true},
                      "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "demo"}},
                     {"addresses": ["10.244.2.6"], "conditions": {"ready": true},
                      "targetRef": {"kind": "Pod", "name": "web-2", "namespace": "demo"}},
                     {"addresses": ["10.244.2.7"], "conditions": {"ready": false}}]}),
        );
        apply::<Pod>(
            &mut v,
            json!({"metadata": {"name": "web-1", "namespace": "demo"},
                   "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}],
                            "initContainers": [{"name": "kubewire-proxy", "restartPolicy": "Always"}]},
                   "status": {"podIPs": [{"ip": "10.244.1.5"}]}}),
        );
        apply::<Pod>(
            &mut v,
            json!({"metadata": {"name": "web-2", "namespace": "demo"},
                   "spec": {"containers": [{"name": "app"}]},
                   "status": {"podIPs": [{"ip": "10.244.2.6"}]}}),
        );
        v
    }

    #[test]
    fn a_services_ready_endpoints_at_the_target_port_with_meshed_identities() {
        let d = view().resolve("10.96.0.20:80".parse().unwrap());
        assert_eq!(d.kind, "service");
        assert_eq!(d.service, "demo/web");
        assert_eq!(
            d.endpoints,
            [
                Endpoint {
                    addr: "10.244.1.5:8080".parse().unwrap(),
                    pod: "demo/web-1".into(),
                    identity: Some("ns/demo/sa/web".into()),
                },
                Endpoint {
                    addr: "10.244.2.6:8080".parse().unwrap(),
                    pod: "demo/web-2".into(),
                    identity: None,
                },
            ]
        );
        // A port the Service does not have: nowhere to go.
        assert!(
            view()
                .resolve("10.96.0.20:81".parse().unwrap())
                .endpoints
                .is_empty()
        );
    }

    #[test]
    fn a_pods_address_is_that_pod_and_the_rest_is_unknown() {
        let v = view();
        let d = v.resolve("10.244.1.5:9000".parse().unwrap());
        assert_eq!(d.kind, "pod");
        assert_eq!(d.endpoints[0].identity.as_deref(), Some("ns/demo/sa/web"));
        assert_eq!(v.resolve("192.0.2.1:443".parse().unwrap()).kind, "unknown");
        // A deleted Service's address is forgotten.
        let mut v = view();
        assert!(Store::<Service>::delete(&mut v, "demo/web"));
        assert_eq!(v.resolve("10.96.0.20:80".parse().unwrap()).kind, "unknown");
    }

    #[tokio::test]
    async fn a_long_poll_is_answered_when_its_answer_changes() {
        let view = RwLock::new(view());
        let (tx, rx) = tokio::sync::watch::channel(0);
        let parts = |q: &str| {
            let (parts, ()) = http::Request::get(format!("/v1/destination?addr=10.96.0.20:80{q}"))
                .body(())
                .unwrap()
                .into_parts();
            parts
        };
        let first = long_poll(&view, rx.clone(), &parts("")).await;
        let version = first.headers()[VERSION_HEADER]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(version.len(), 16);
        // With that version, the answer waits for a change; an unrelated change does
        // not end the wait, an endpoint going away does.
        let since = parts(&format!("&since={version}"));
        let waiting = long_poll(&view, rx.clone(), &since);
        let change = async {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            apply::<Service>(
                &mut view.write().unwrap(),
                json!({"metadata": {"name": "other", "namespace": "demo"}, "spec": {"clusterIP": "10.96.0.99"}}),
            );
            tx.send_modify(|n| *n += 1);
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(Store::<EndpointSlice>::delete(
                &mut *view.write().unwrap(),
                "demo/web-x"
            ));
            tx.send_modify(|n| *n += 1);
            std::time::Instant::now()
        };
        let (answered, changed_at) = tokio::join!(waiting, change);
        assert!(
            changed_at.elapsed() < std::time::Duration::from_secs(5),
            "answered on the change"
        );
        let again = answered.headers()[VERSION_HEADER].to_str().unwrap();
        assert_ne!(again, version);
        use http_body_util::BodyExt;
        let body = answered.into_body().collect().await.unwrap().to_bytes();
        let d: Destination = serde_json::from_slice(&body).unwrap();
        assert!(d.endpoints.is_empty(), "{d:?}");
    }

    #[test]
    fn failure_accrual_is_linkerds_annotations_on_the_service() {
        let annotations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(Accrual::from_annotations(&annotations(&[])), None);
        let defaults = Accrual::from_annotations(&annotations(&[(
            "balancer.linkerd.io/failure-accrual",
            "consecutive",
        )]));
        let secs = std::time::Duration::from_secs;
        assert_eq!(
            defaults,
            Some(Accrual {
                max_failures: 7,
                min_penalty: secs(1),
                max_penalty: secs(60)
            })
        );
        let mut v = view();
        apply::<Service>(
            &mut v,
            json!({"metadata": {"name": "web", "namespace": "demo", "annotations": {
                       "balancer.linkerd.io/failure-accrual": "consecutive",
                       "balancer.linkerd.io/failure-accrual-consecutive-max-failures": "3",
                       "balancer.linkerd.io/failure-accrual-consecutive-max-penalty": "10s"}},
                   "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        );
        let d = v.resolve("10.96.0.20:80".parse().unwrap());
        assert_eq!(
            d.failure_accrual,
            Some(Accrual {
                max_failures: 3,
                min_penalty: secs(1),
                max_penalty: secs(10)
            })
        );
        let again: Destination = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn a_pods_inbound_policy_reads_servers_policies_and_its_namespaces_default() {
        let mut v = view();
        let web1 = "demo/web-1";
        assert_eq!(v.inbound(web1).default.server_name, "all-unauthenticated");
        // The cluster's default, then the namespace's over it.
        v.cluster_default_policy = "cluster-authenticated".into();
        assert_eq!(v.inbound(web1).default.server_name, "cluster-authenticated");
        apply::<Namespace>(
            &mut v,
            json!({"metadata": {"name": "demo",
                "annotations": {"config.linkerd.io/default-inbound-policy": "all-authenticated"}}}),
        );
        assert_eq!(v.inbound(web1).default.server_name, "all-authenticated");
        // A pod not known yet: its namespace's default.
        assert_eq!(
            v.inbound("demo/later").default.server_name,
            "all-authenticated"
        );
        apply::<Pod>(
            &mut v,
            json!({"metadata": {"name": "web-1", "namespace": "demo", "labels": {"app": "web"}},
                   "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}],
                            "initContainers": [{"name": "kubewire-proxy", "restartPolicy": "Always"}]},
                   "status": {"podIPs": [{"ip": "10.244.1.5"}]}}),
        );
        apply::<Custom<ServerKind>>(
            &mut v,
            json!({"metadata": {"name": "web-http", "namespace": "demo", "labels": {"tier": "front"}},
                   "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "port": 8080}}),
        );
        apply::<Custom<MeshTlsAuthenticationKind>>(
            &mut v,
            json!({"metadata": {"name": "all", "namespace": "demo"}, "spec": {"identities": ["*"]}}),
        );
        apply::<Custom<AuthorizationPolicyKind>>(
            &mut v,
            json!({"metadata": {"name": "meshed", "namespace": "demo"},
                   "spec": {"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "web-http"},
                            "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "all"}]}}),
        );
        let p = v.inbound(web1);
        let ip = "10.244.2.6".parse().unwrap();
        let verdict = p.authorize(8080, ip, Some("spiffe://cluster.local/ns/x/sa/y"));
        assert_eq!(verdict.server_name, "web-http");
        assert_eq!(
            verdict.allowed,
            Some(("authorizationpolicy".into(), "meshed".into()))
        );
        assert_eq!(p.authorize(8080, ip, None).allowed, None);
        // A ServerAuthorization selecting the Server by its labels (kept with it).
        apply::<Custom<ServerAuthorizationKind>>(
            &mut v,
            json!({"metadata": {"name": "front", "namespace": "demo"},
                   "spec": {"server": {"selector": {"matchLabels": {"tier": "front"}}},
                            "client": {"unauthenticated": true}}}),
        );
        assert_eq!(
            v.inbound(web1).authorize(8080, ip, None).allowed,
            Some(("serverauthorization".into(), "front".into()))
        );
        // Deleted, the Server no longer holds the port.
        assert!(Store::<Custom<ServerKind>>::delete(&mut v, "demo/web-http"));
        assert_eq!(
            v.inbound(web1).authorize(8080, ip, None).server_kind,
            "default"
        );
    }

    #[test]
    fn a_service_port_named_by_routes_is_answered_with_them_and_what_they_send_to() {
        let mut v = view();
        let at = "10.96.0.20:80".parse().unwrap();
        assert_eq!(v.resolve(at).routes, None, "no route names it yet");
        let route = |name: &str, parent: serde_json::Value| {
            json!({"metadata": {"name": name, "namespace": "demo"},
                   "spec": {"parentRefs": [parent],
                            "rules": [{"backendRefs": [{"name": "web", "port": 80}],
                                       "filters": [{"type": "RequestMirror", "requestMirror":
                                           {"backendRef": {"name": "audit", "namespace": "ops", "port": 80}}}]}]}})
        };
        apply::<Custom<HttpRouteKind>>(
            &mut v,
            route(
                "canary",
                json!({"group": "", "kind": "Service", "name": "web"}),
            ),
        );
        // Routes of a Gateway, of another port, and a grant elsewhere: not sent.
        apply::<Custom<HttpRouteKind>>(&mut v, route("north", json!({"name": "gw"})));
        apply::<Custom<HttpRouteKind>>(
            &mut v,
            route(
                "other-port",
                json!({"group": "", "kind": "Service", "name": "web", "port": 81}),
            ),
        );
        for ns in ["ops", "elsewhere"] {
            apply::<Custom<ReferenceGrantKind>>(
                &mut v,
                json!({"metadata": {"name": "g", "namespace": ns}, "spec": {"from": [], "to": []}}),
            );
        }
        let routes = v.resolve(at).routes.expect("routed");
        let names = |rs: &[Value]| -> Vec<String> {
            rs.iter()
                .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&routes.http_routes), ["canary"]);
        assert_eq!(names(&routes.reference_grants), ["g"]);
        assert_eq!(routes.reference_grants[0]["metadata"]["namespace"], "ops");
        // The backend's Service and slice are there (the mirrored one is not in the
        // cluster), with the identity of its meshed endpoint.
        assert_eq!(routes.services.len(), 1);
        assert_eq!(routes.services[0].metadata.name.as_deref(), Some("web"));
        assert_eq!(routes.endpoint_slices.len(), 1);
        assert_eq!(
            routes.identities,
            [("10.244.1.5".parse().unwrap(), "ns/demo/sa/web".to_string())].into()
        );
        // The answer goes to the proxy as JSON and comes back the same.
        let d = v.resolve(at);
        let again: Destination = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(again, d);
        // Deleted, the route is gone from the answers.
        assert!(Store::<Custom<HttpRouteKind>>::delete(
            &mut v,
            "demo/canary"
        ));
        assert_eq!(v.resolve(at).routes, None);
    }
}
