//! The proxy's view of the cluster: Services joined with their EndpointSlices, reduced
//! to the plain data the rule computation needs.
//!
//! Everything the API objects leave optional is decided here, once, with Kubernetes'
//! defaults (an absent `ready` condition means ready, an absent protocol means TCP, ...),
//! so that [`desired`](crate::desired) never looks at an `Option` it has to guess about.

use std::collections::BTreeMap;
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

/// A transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => netlink::nft::proto::TCP,
            Protocol::Udp => netlink::nft::proto::UDP,
            Protocol::Sctp => netlink::nft::proto::SCTP,
        }
    }

    /// Lower-case name, as used in chain names.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    fn parse(s: Option<&str>) -> Option<Protocol> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

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
    /// The node the endpoint runs on.
    pub node_name: Option<String>,
    /// Port numbers by (EndpointSlice port name, protocol); shared by the endpoints of
    /// one slice.
    pub ports: Arc<BTreeMap<(String, Protocol), u16>>,
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
        let mut view = View::default();
        for svc in services {
            if let Some(s) = service(svc, &mut errors) {
                view.services.insert(s.key.clone(), s);
            }
        }
        for slice in slices {
            add_slice(&mut view, slice, &mut errors);
        }
        for s in view.services.values_mut() {
            s.endpoints.sort_by_key(|e| e.address);
        }
        (view, errors)
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
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
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

fn add_slice(view: &mut View, slice: &EndpointSlice, errors: &mut Vec<ViewError>) {
    let meta = &slice.metadata;
    let Some(service_name) = meta.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)) else {
        return;
    };
    let namespace = meta.namespace.clone().unwrap_or_else(|| "default".into());
    let Some(svc) = view
        .services
        .get_mut(&ServiceKey::new(namespace.clone(), service_name.clone()))
    else {
        return;
    };
    if slice.address_type == "FQDN" {
        return;
    }
    let object = format!("{namespace}/{}", meta.name.as_deref().unwrap_or(""));
    let mut ports = BTreeMap::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let Some(protocol) = Protocol::parse(p.protocol.as_deref()) else {
            continue; // a protocol no service port can have
        };
        let Some(port) = p.port.and_then(port_u16) else {
            errors.push(ViewError::Invalid {
                kind: "endpointslice",
                object: object.clone(),
                field: format!("ports[{i}].port"),
                value: format!("{:?}", p.port),
            });
            continue;
        };
        ports.insert((p.name.clone().unwrap_or_default(), protocol), port);
    }
    let ports = Arc::new(ports);
    for (i, ep) in slice.endpoints.iter().flatten().enumerate() {
        let cond = ep.conditions.clone().unwrap_or_default();
        let ready = cond.ready.unwrap_or(true) || svc.publish_not_ready;
        for (j, a) in ep.addresses.iter().enumerate() {
            let Ok(address) = a.parse::<IpAddr>() else {
                errors.push(ViewError::Invalid {
                    kind: "endpointslice",
                    object: object.clone(),
                    field: format!("endpoints[{i}].addresses[{j}]"),
                    value: format!("{a:?}"),
                });
                continue;
            };
            // One address may appear in two slices while a pod moves between them;
            // the first one seen wins, as in kube-proxy.
            if svc.endpoints.iter().any(|e| e.address == address) {
                continue;
            }
            svc.endpoints.push(Endpoint {
                address,
                ready,
                serving: cond.serving.unwrap_or(ready),
                terminating: cond.terminating.unwrap_or(false),
                node_name: ep.node_name.clone(),
                ports: Arc::clone(&ports),
            });
        }
    }
}
