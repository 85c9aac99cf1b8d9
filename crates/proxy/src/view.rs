//! The proxy's view of the cluster: Services joined with their EndpointSlices, reduced
//! to the plain data the rule computation needs.
//!
//! Everything the API objects leave optional is decided here, once, with Kubernetes'
//! defaults (an absent `ready` condition means ready, an absent protocol means TCP, ...),
//! so that [`desired`](crate::desired) never looks at an `Option` it has to guess about.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Services carrying this label belong to another proxy (KEP-2447 style opt-out).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// The label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ServiceKey {
    /// The key of `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceKey {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// `spec.type`, for the types that get rules (ExternalName gets none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// Reachable on its ClusterIPs only.
    ClusterIp,
    /// Also on every node's addresses at `nodePort`.
    NodePort,
    /// Also on `status.loadBalancer.ingress` IPs.
    LoadBalancer,
}

/// A transport protocol of a service port (the one type every component uses).
pub use k8s::Protocol;

/// `targetPort`: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A named container port; EndpointSlices carry the resolved number.
    Name(String),
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServicePort {
    /// Its name (empty for a single unnamed port); EndpointSlice ports use the same name.
    pub name: String,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The service's port.
    pub port: u16,
    /// The node port, for NodePort and LoadBalancer services that have one.
    pub node_port: Option<u16>,
    /// Where traffic goes on the endpoints (informational: the port numbers actually
    /// used come from the EndpointSlices, which resolve names).
    pub target_port: TargetPort,
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster (the default).
    Cluster,
    /// Only endpoints on this node.
    Local,
}

impl TrafficPolicy {
    fn parse(s: Option<&str>) -> TrafficPolicy {
        match s {
            Some("Local") => TrafficPolicy::Local,
            _ => TrafficPolicy::Cluster,
        }
    }
}

/// One endpoint address of a Service, with its conditions and ports.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The pod's address.
    pub address: IpAddr,
    /// `conditions.ready` (absent means ready).
    pub ready: bool,
    /// `conditions.serving` (absent means the value of `ready`).
    pub serving: bool,
    /// `conditions.terminating` (absent means not terminating).
    pub terminating: bool,
    /// The node the endpoint runs on (one shared string per node).
    pub node_name: Option<Arc<str>>,
    /// Port numbers by (EndpointSlice port name, protocol); shared by the endpoints of
    /// one slice.
    pub ports: Arc<BTreeMap<(String, Protocol), u16>>,
    /// Topology hints (`hints.forZones`, `hints.forNodes`), shared by the endpoints
    /// that have the same; `None` without any.
    pub hints: Option<Arc<Hints>>,
}

/// Where the EndpointSlice controller suggests an endpoint be used from: it sets these
/// for services with `spec.trafficDistribution` (`PreferClose`/`PreferSameZone`: zones,
/// `PreferSameNode`: nodes and zones) or the `service.kubernetes.io/topology-mode: Auto`
/// annotation. The proxy needs neither field of the Service: the hints are the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Hints {
    /// `hints.forZones[].name`.
    pub zones: Vec<String>,
    /// `hints.forNodes[].name`.
    pub nodes: Vec<String>,
}

/// Which hints a service port's endpoints are chosen by on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topology {
    /// Every endpoint may serve (no hints, or none for this node or zone).
    Any,
    /// Only endpoints hinted for this node.
    Node,
    /// Only endpoints hinted for this node's zone.
    Zone,
}

impl Endpoint {
    fn fits(&self, topology: Topology, node: &str, zone: Option<&str>) -> bool {
        let hints = self.hints.as_deref();
        match topology {
            Topology::Any => true,
            Topology::Node => hints.is_some_and(|h| h.nodes.iter().any(|n| n == node)),
            Topology::Zone => {
                hints.is_some_and(|h| h.zones.iter().any(|z| Some(z.as_str()) == zone))
            }
        }
    }
}

/// kube-proxy's choice of topology (`topologyModeFromHints`): node hints when every
/// ready endpoint has some and one names this node; else zone hints when every ready
/// endpoint has some and one names this node's zone; else none. A hint that leaves this
/// node with nothing is ignored rather than black-holing its clients.
fn topology<'a>(
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    node: &str,
    zone: Option<&str>,
) -> Topology {
    let (mut all_nodes, mut for_node) = (true, false);
    let (mut all_zones, mut for_zone) = (true, false);
    for e in endpoints.into_iter().filter(|e| e.ready) {
        let hints = e.hints.as_deref();
        match hints.map(|h| &h.nodes[..]).unwrap_or_default() {
            [] => all_nodes = false,
            nodes => for_node |= nodes.iter().any(|n| n == node),
        }
        match hints.map(|h| &h.zones[..]).unwrap_or_default() {
            [] => all_zones = false,
            zones => for_zone |= zone.is_some_and(|zone| zones.iter().any(|z| z == zone)),
        }
    }
    if all_nodes && for_node {
        Topology::Node
    } else if all_zones && for_zone {
        Topology::Zone
    } else {
        Topology::Any
    }
}

/// The endpoints that traffic to a service port with the cluster traffic policy goes
/// to from node `node` in zone `zone` (its `topology.kubernetes.io/zone` label), as
/// kube-proxy's `CategorizeEndpoints` chooses them: the ready ones, or when none is
/// ready the serving and terminating ones (KEP-1669), narrowed by topology hints
/// (KEP-2433, KEP-4444, KEP-3015). `endpoints` are the port's endpoints of one family.
/// Endpoints of `Local` policies (on this node) are not narrowed.
pub fn cluster_endpoints<'a, I>(endpoints: I, node: &str, zone: Option<&str>) -> Vec<&'a Endpoint>
where
    I: IntoIterator<Item = &'a Endpoint> + Clone,
{
    let topology = topology(endpoints.clone(), node, zone);
    let fits = |e: &&Endpoint| e.fits(topology, node, zone);
    let ready: Vec<_> = endpoints
        .clone()
        .into_iter()
        .filter(|e| e.ready)
        .filter(fits)
        .collect();
    if !ready.is_empty() {
        return ready;
    }
    // A topology was chosen only if a ready endpoint fits it: here there is none.
    endpoints
        .into_iter()
        .filter(|e| e.serving && e.terminating)
        .filter(fits)
        .collect()
}

impl Endpoint {
    /// The endpoint's port for a service port: the EndpointSlice port of the same name
    /// and protocol.
    pub fn port_for(&self, sp: &ServicePort) -> Option<u16> {
        self.ports.get(&(sp.name.clone(), sp.protocol)).copied()
    }
}

/// A Service the proxy implements, with its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Service {
    /// namespace/name.
    pub key: ServiceKey,
    /// Type.
    pub ty: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.ports`.
    pub ports: Vec<ServicePort>,
    /// `sessionAffinity: ClientIP` with its timeout in seconds.
    pub affinity_timeout: Option<u32>,
    /// `spec.externalTrafficPolicy`.
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.healthCheckNodePort`.
    pub health_check_node_port: Option<u16>,
    /// `spec.publishNotReadyAddresses`: every endpoint counts as ready (the
    /// EndpointSlice controller should already say so; honoured here too so that
    /// slices written by others behave alike).
    pub publish_not_ready: bool,
    /// Endpoints from all the Service's EndpointSlices, one per address.
    pub endpoints: Vec<Endpoint>,
}

/// What [`View::build`] left out, and why. None of these stop the rest of the view.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ViewError {
    /// A field had a value the proxy cannot use; the object (or the field's entry) is
    /// skipped until it is fixed. The user's fault, not retryable.
    #[error("{kind} {object}: {field}: Invalid value: {value}")]
    Invalid {
        /// `service` or `endpointslice`.
        kind: &'static str,
        /// namespace/name.
        object: String,
        /// The field path.
        field: String,
        /// The value found.
        value: String,
    },
}

/// Everything the proxy implements, keyed by Service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Services with rules, in key order.
    pub services: BTreeMap<ServiceKey, Service>,
}

/// Default `sessionAffinityConfig.clientIP.timeoutSeconds`: three hours.
pub const DEFAULT_AFFINITY_TIMEOUT: u32 = 10_800;

fn parse_ips<'a>(
    ips: impl IntoIterator<Item = &'a String>,
    object: &str,
    field: &str,
    errors: &mut Vec<ViewError>,
) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (i, s) in ips.into_iter().enumerate() {
        match s.parse::<IpAddr>() {
            Ok(ip) if !out.contains(&ip) => out.push(ip),
            Ok(_) => {}
            Err(_) => errors.push(ViewError::Invalid {
                kind: "service",
                object: object.to_owned(),
                field: format!("{field}[{i}]"),
                value: format!("{s:?}"),
            }),
        }
    }
    // Held for the service's life: no room for 4 where 1 is (a first push reserves 4).
    out.shrink_to_fit();
    out
}

fn port_u16(v: i32) -> Option<u16> {
    u16::try_from(v).ok().filter(|p| *p != 0)
}

impl View {
    /// Joins Services with their EndpointSlices. Headless, ExternalName and
    /// other-proxy services are skipped silently (they are meant to get no rules);
    /// invalid fields are reported and the entry they are in is skipped.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a K8sService>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> (View, Vec<ViewError>) {
        let mut errors = Vec::new();
        let mut interner = Interner::default();
        let mut of_service: BTreeMap<ServiceKey, Vec<Slice>> = BTreeMap::new();
        for slice in slices {
            if let Some(s) = Slice::from_k8s(slice, &mut interner, &mut errors) {
                of_service.entry((*s.service).clone()).or_default().push(s);
            }
        }
        let mut view = View::default();
        for svc in services {
            if let Some(s) = Service::from_k8s(svc, &mut errors) {
                let slices = of_service.get(&s.key).into_iter().flatten();
                let s = s.with_endpoints(slices);
                view.services.insert(s.key.clone(), s);
            }
        }
        (view, errors)
    }
}

/// Shares the strings many endpoints repeat (node names), so that 100,000 endpoints on
/// 100 nodes hold 100 names, not 100,000.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    names: HashSet<Arc<str>>,
    hints: HashSet<Arc<Hints>>,
    ports: HashSet<Arc<SlicePorts>>,
    places: HashSet<Arc<Place>>,
    /// The services slices belong to: one key for all of a service's slices and the
    /// controller's index of them.
    services: HashSet<Arc<ServiceKey>>,
}

/// Where an endpoint runs and where it is meant to serve: one shared value for all
/// the endpoints with the same node and hints, so that a slim endpoint holds one
/// pointer for both.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Place {
    node_name: Option<Arc<str>>,
    hints: Option<Arc<Hints>>,
}

/// Port numbers by (EndpointSlice port name, protocol).
type SlicePorts = BTreeMap<(String, Protocol), u16>;

impl Interner {
    pub(crate) fn name(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(Arc::clone(&a));
        a
    }

    pub(crate) fn hints(&mut self, h: Hints) -> Arc<Hints> {
        if let Some(a) = self.hints.get(&h) {
            return Arc::clone(a);
        }
        let a = Arc::new(h);
        self.hints.insert(Arc::clone(&a));
        a
    }

    /// Slices of services with the same ports share one map.
    pub(crate) fn ports(&mut self, p: SlicePorts) -> Arc<SlicePorts> {
        if let Some(a) = self.ports.get(&p) {
            return Arc::clone(a);
        }
        let a = Arc::new(p);
        self.ports.insert(Arc::clone(&a));
        a
    }

    fn service(&mut self, namespace: &str, name: &str) -> Arc<ServiceKey> {
        let key = ServiceKey::new(namespace, name);
        if let Some(a) = self.services.get(&key) {
            return Arc::clone(a);
        }
        let a = Arc::new(key);
        self.services.insert(Arc::clone(&a));
        a
    }

    fn place(&mut self, p: Place) -> Arc<Place> {
        if let Some(a) = self.places.get(&p) {
            return Arc::clone(a);
        }
        let a = Arc::new(p);
        self.places.insert(Arc::clone(&a));
        a
    }

    /// Forgets what nothing else holds any more (nodes that went away).
    pub(crate) fn prune(&mut self) {
        // Places first: they hold names and hints.
        self.places.retain(|a| Arc::strong_count(a) > 1);
        self.services.retain(|a| Arc::strong_count(a) > 1);
        self.ports.retain(|a| Arc::strong_count(a) > 1);
        self.names.retain(|a| Arc::strong_count(a) > 1);
        self.hints.retain(|a| Arc::strong_count(a) > 1);
    }
}

/// An EndpointSlice reduced to what the proxy reads: what the controller mirrors
/// instead of the API object (which carries managed fields, target references,
/// hostnames, ... for every endpoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slice {
    /// The Service it belongs to (its `kubernetes.io/service-name` label).
    pub(crate) service: Arc<ServiceKey>,
    /// Port numbers by (port name, protocol).
    ports: Arc<SlicePorts>,
    /// One per address.
    endpoints: Vec<SliceEndpoint>,
}

/// One address of a slice's endpoint, its conditions as written (the Service's
/// `publishNotReadyAddresses` is applied when joining).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SliceEndpoint {
    address: IpAddr,
    /// `conditions.ready`, absent meaning ready.
    ready: bool,
    /// `conditions.serving` as written.
    serving: Option<bool>,
    terminating: bool,
    /// Node and hints (`None`: neither).
    place: Option<Arc<Place>>,
}

impl Slice {
    /// The slim form of `slice`; `None` for slices the proxy ignores (no service
    /// label, FQDN addresses). Invalid entries are reported and left out.
    pub(crate) fn from_k8s(
        slice: &EndpointSlice,
        interner: &mut Interner,
        errors: &mut Vec<ViewError>,
    ) -> Option<Slice> {
        let meta = &slice.metadata;
        let service_name = meta.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        let namespace = meta.namespace.as_deref().unwrap_or("default");
        if slice.address_type == "FQDN" {
            return None;
        }
        let object = || format!("{namespace}/{}", meta.name.as_deref().unwrap_or(""));
        let mut ports = BTreeMap::new();
        for (i, p) in slice.ports.iter().flatten().enumerate() {
            let Some(protocol) = Protocol::parse_or_tcp(p.protocol.as_deref()) else {
                continue; // a protocol no service port can have
            };
            let Some(port) = p.port.and_then(port_u16) else {
                errors.push(ViewError::Invalid {
                    kind: "endpointslice",
                    object: object(),
                    field: format!("ports[{i}].port"),
                    value: format!("{:?}", p.port),
                });
                continue;
            };
            ports.insert((p.name.clone().unwrap_or_default(), protocol), port);
        }
        let mut endpoints = Vec::new();
        for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
            let cond = ep.conditions.as_ref();
            let node_name = ep.node_name.as_deref().map(|n| interner.name(n));
            let hints = ep.hints.as_ref().and_then(|h| {
                let hints = Hints {
                    zones: h
                        .for_zones
                        .iter()
                        .flatten()
                        .map(|z| z.name.clone())
                        .collect(),
                    nodes: h
                        .for_nodes
                        .iter()
                        .flatten()
                        .map(|n| n.name.clone())
                        .collect(),
                };
                (hints != Hints::default()).then(|| interner.hints(hints))
            });
            let place = (node_name.is_some() || hints.is_some())
                .then(|| interner.place(Place { node_name, hints }));
            for (j, a) in ep.addresses.iter().enumerate() {
                let Ok(address) = a.parse::<IpAddr>() else {
                    errors.push(ViewError::Invalid {
                        kind: "endpointslice",
                        object: object(),
                        field: format!("endpoints[{i}].addresses[{j}]"),
                        value: format!("{a:?}"),
                    });
                    continue;
                };
                endpoints.push(SliceEndpoint {
                    address,
                    ready: cond.and_then(|c| c.ready).unwrap_or(true),
                    serving: cond.and_then(|c| c.serving),
                    terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                    place: place.clone(),
                });
            }
        }
        endpoints.shrink_to_fit();
        Some(Slice {
            service: interner.service(namespace, service_name),
            ports: interner.ports(ports),
            endpoints,
        })
    }
}

impl Service {
    /// The Service part of `svc` (no endpoints yet); `None` for services that get no
    /// rules (headless, ExternalName, another proxy's, no spec). Invalid entries are
    /// reported and left out.
    pub(crate) fn from_k8s(svc: &K8sService, errors: &mut Vec<ViewError>) -> Option<Service> {
        service(svc, errors)
    }

    /// A copy without the endpoints.
    pub(crate) fn clone_spec(&self) -> Service {
        Service {
            key: self.key.clone(),
            cluster_ips: self.cluster_ips.clone(),
            external_ips: self.external_ips.clone(),
            load_balancer_ips: self.load_balancer_ips.clone(),
            ports: self.ports.clone(),
            endpoints: Vec::new(),
            ..*self
        }
    }

    /// This service with the endpoints of `slices` (those of its EndpointSlices), one
    /// per address, sorted by address.
    pub(crate) fn with_endpoints<'a>(
        mut self,
        slices: impl IntoIterator<Item = &'a Slice>,
    ) -> Self {
        let mut endpoints = Vec::new();
        for slice in slices {
            for e in &slice.endpoints {
                let ready = e.ready || self.publish_not_ready;
                endpoints.push(Endpoint {
                    address: e.address,
                    ready,
                    serving: e.serving.unwrap_or(ready),
                    terminating: e.terminating,
                    node_name: e.place.as_ref().and_then(|p| p.node_name.clone()),
                    ports: Arc::clone(&slice.ports),
                    hints: e.place.as_ref().and_then(|p| p.hints.clone()),
                });
            }
        }
        // One address may appear in two slices while a pod moves between them; the
        // first one seen wins, as in kube-proxy (the sort is stable).
        endpoints.sort_by_key(|e| e.address);
        endpoints.dedup_by_key(|e| e.address);
        endpoints.shrink_to_fit();
        self.endpoints = endpoints;
        self
    }
}

fn service(svc: &K8sService, errors: &mut Vec<ViewError>) -> Option<Service> {
    let meta = &svc.metadata;
    let key = ServiceKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone()?,
    );
    if meta
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL))
    {
        return None;
    }
    let spec = svc.spec.as_ref()?;
    let ty = match spec.type_.as_deref().unwrap_or("ClusterIP") {
        "ClusterIP" => ServiceType::ClusterIp,
        "NodePort" => ServiceType::NodePort,
        "LoadBalancer" => ServiceType::LoadBalancer,
        _ => return None, // ExternalName, or a type this proxy does not implement
    };
    let object = key.to_string();
    let cluster_ip_strings: Vec<String> = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => Vec::new(),
    };
    if cluster_ip_strings.iter().any(|ip| ip == "None") {
        return None; // headless: DNS only
    }
    let cluster_ips = parse_ips(&cluster_ip_strings, &object, "spec.clusterIPs", errors);
    let external_ips = parse_ips(
        spec.external_ips.iter().flatten(),
        &object,
        "spec.externalIPs",
        errors,
    );
    let lb_strings: Vec<String> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.ip.clone())
        .collect();
    let load_balancer_ips = if ty == ServiceType::LoadBalancer {
        parse_ips(
            &lb_strings,
            &object,
            "status.loadBalancer.ingress.ip",
            errors,
        )
    } else {
        Vec::new()
    };
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let invalid = |field: &str, value: String| ViewError::Invalid {
            kind: "service",
            object: object.clone(),
            field: format!("spec.ports[{i}].{field}"),
            value,
        };
        let Some(protocol) = Protocol::parse_or_tcp(p.protocol.as_deref()) else {
            errors.push(invalid("protocol", format!("{:?}", p.protocol)));
            continue;
        };
        let Some(port) = port_u16(p.port) else {
            errors.push(invalid("port", p.port.to_string()));
            continue;
        };
        let node_port = match p.node_port {
            Some(n) if ty != ServiceType::ClusterIp => match port_u16(n) {
                Some(n) => Some(n),
                None => {
                    errors.push(invalid("nodePort", n.to_string()));
                    None
                }
            },
            _ => None,
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => match port_u16(*n) {
                Some(n) => TargetPort::Number(n),
                None => {
                    errors.push(invalid("targetPort", n.to_string()));
                    continue;
                }
            },
            Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
        };
        ports.push(ServicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
            node_port,
            target_port,
        });
    }
    ports.shrink_to_fit();
    let affinity_timeout = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .filter(|t| *t > 0)
            .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
    });
    Some(Service {
        key,
        ty,
        cluster_ips,
        external_ips,
        load_balancer_ips,
        ports,
        affinity_timeout,
        external_traffic_policy: TrafficPolicy::parse(spec.external_traffic_policy.as_deref()),
        internal_traffic_policy: TrafficPolicy::parse(spec.internal_traffic_policy.as_deref()),
        health_check_node_port: spec.health_check_node_port.and_then(port_u16),
        publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        endpoints: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `(address, ready, terminating, zone hints, node hints)`.
    type Ep<'a> = (&'a str, bool, bool, &'a [&'a str], &'a [&'a str]);

    /// The endpoints of one slice.
    fn endpoints(eps: &[Ep<'_>]) -> Vec<Endpoint> {
        let eps: Vec<_> = eps
            .iter()
            .map(|(a, ready, terminating, zones, nodes)| {
                let zones: Vec<_> = zones.iter().map(|z| json!({"name": z})).collect();
                let nodes: Vec<_> = nodes.iter().map(|n| json!({"name": n})).collect();
                json!({"addresses": [a], "nodeName": "node-9",
                       "conditions": {"ready": ready, "serving": *ready || *terminating,
                                      "terminating": terminating},
                       "hints": {"forZones": zones, "forNodes": nodes}})
            })
            .collect();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080}]
        }))
        .unwrap();
        let svc: K8sService = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}
        }))
        .unwrap();
        let (mut view, errors) = View::build([&svc], [&slice]);
        assert!(errors.is_empty(), "{errors:?}");
        view.services.pop_first().unwrap().1.endpoints
    }

    fn chosen(eps: &[Endpoint], node: &str, zone: Option<&str>) -> Vec<String> {
        cluster_endpoints(eps, node, zone)
            .iter()
            .map(|e| e.address.to_string())
            .collect()
    }

    const A: &[&str] = &["zone-a"];
    const B: &[&str] = &["zone-b"];
    const NONE: &[&str] = &[];

    #[test]
    fn zone_hints_narrow_cluster_endpoints_to_this_zone() {
        let eps = endpoints(&[
            ("10.0.0.1", true, false, A, NONE),
            ("10.0.0.2", true, false, B, NONE),
            ("10.0.0.3", true, false, A, NONE),
        ]);
        assert_eq!(chosen(&eps, "n", Some("zone-a")), ["10.0.0.1", "10.0.0.3"]);
        assert_eq!(chosen(&eps, "n", Some("zone-b")), ["10.0.0.2"]);
        // No endpoint hinted for this zone, or the node has no zone label: all.
        assert_eq!(chosen(&eps, "n", Some("zone-c")).len(), 3);
        assert_eq!(chosen(&eps, "n", None).len(), 3);
    }

    #[test]
    fn zone_hints_count_only_when_every_ready_endpoint_has_some() {
        let eps = endpoints(&[
            ("10.0.0.1", true, false, A, NONE),
            ("10.0.0.2", true, false, NONE, NONE),
            // Not ready: its missing hint does not matter, and it is not used.
            ("10.0.0.3", false, false, NONE, NONE),
        ]);
        assert_eq!(chosen(&eps, "n", Some("zone-a")), ["10.0.0.1", "10.0.0.2"]);
        let eps = endpoints(&[
            ("10.0.0.1", true, false, A, NONE),
            ("10.0.0.2", true, false, B, NONE),
            ("10.0.0.3", false, false, NONE, NONE),
        ]);
        assert_eq!(chosen(&eps, "n", Some("zone-a")), ["10.0.0.1"]);
    }

    #[test]
    fn node_hints_come_before_zone_hints() {
        // PreferSameNode: the EndpointSlice controller sets both.
        let eps = endpoints(&[
            ("10.0.0.1", true, false, A, &["node-1"]),
            ("10.0.0.2", true, false, A, &["node-2"]),
            ("10.0.0.3", true, false, B, &["node-3"]),
        ]);
        assert_eq!(chosen(&eps, "node-2", Some("zone-a")), ["10.0.0.2"]);
        // No endpoint for this node: the zone hints decide.
        assert_eq!(
            chosen(&eps, "node-4", Some("zone-a")),
            ["10.0.0.1", "10.0.0.2"]
        );
        assert_eq!(chosen(&eps, "node-4", None).len(), 3);
    }

    #[test]
    fn topology_applies_to_the_terminating_fallback_too() {
        let eps = endpoints(&[
            ("10.0.0.1", false, true, A, NONE),
            ("10.0.0.2", false, true, B, NONE),
        ]);
        // No ready endpoint, so no topology is chosen: all serving+terminating ones.
        assert_eq!(chosen(&eps, "n", Some("zone-a")).len(), 2);
        let eps = endpoints(&[
            ("10.0.0.1", true, false, A, NONE),
            ("10.0.0.2", false, true, B, NONE),
        ]);
        // Only terminating endpoints are hinted for zone-b: the ready one serves it
        // (the hints of endpoints that are not ready do not count).
        assert_eq!(chosen(&eps, "n", Some("zone-b")), ["10.0.0.1"]);
        assert_eq!(chosen(&eps, "n", Some("zone-a")), ["10.0.0.1"]);
    }

    #[test]
    fn slim_endpoints_stay_small() {
        // 100,000 of them at 10,000 services × 10 endpoints: each byte is 100 kB.
        assert!(
            size_of::<SliceEndpoint>() <= 32,
            "{}",
            size_of::<SliceEndpoint>()
        );
        assert!(size_of::<Endpoint>() <= 56, "{}", size_of::<Endpoint>());
    }

    #[test]
    fn endpoints_without_hints_share_none_and_equal_hints_share_one() {
        let eps = endpoints(&[
            ("10.0.0.1", true, false, A, NONE),
            ("10.0.0.2", true, false, A, NONE),
            ("10.0.0.3", true, false, NONE, NONE),
        ]);
        let (a, b) = (
            eps[0].hints.as_ref().unwrap(),
            eps[1].hints.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(a.zones, ["zone-a"]);
        assert!(eps[2].hints.is_none(), "empty forZones is no hint");
    }
}
