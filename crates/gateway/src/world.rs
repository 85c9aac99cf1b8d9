//! What the controller watches, in the form [`crate::compile`] reads: the objects of every
//! watched kind, and the resolution every API shares (a Service port to a [`Backend`] with
//! its ready endpoints, a Secret to a [`Certificate`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;

use crate::config::{Backend, BackendProtocol, Certificate, HostMatch, Limits};
use crate::gatewayapi::types as gw;
use crate::mapping::MappingSpec;

/// A custom resource as read: its metadata and its parsed spec. A spec that does not
/// parse is kept as `Err` so its object can be told why in its status.
#[derive(Clone, Debug)]
pub struct Obj<S> {
    pub meta: ObjectMeta,
    pub spec: Result<S, String>,
}

impl<S: DeserializeOwned> Obj<S> {
    /// From an object's JSON (`metadata` and `spec`).
    pub fn from_json(value: &serde_json::Value) -> Self {
        let meta = serde_json::from_value(value["metadata"].clone()).unwrap_or_default();
        let spec = serde_json::from_value(if value["spec"].is_null() {
            serde_json::json!({})
        } else {
            value["spec"].clone()
        })
        .map_err(|e| e.to_string());
        Obj { meta, spec }
    }
}

impl<S> Obj<S> {
    pub fn namespace(&self) -> &str {
        self.meta.namespace.as_deref().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.meta.name.as_deref().unwrap_or("")
    }
    pub fn generation(&self) -> i64 {
        self.meta.generation.unwrap_or(0)
    }
}

/// How this gateway is set up: what it serves and the addresses it reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// GatewayClasses with this `spec.controllerName` are ours.
    pub controller_name: String,
    /// IngressClass names served (by `spec.ingressClassName` or the older annotation).
    /// An IngressClass whose `spec.controller` is [`INGRESS_CONTROLLER`] is served too.
    pub ingress_classes: Vec<String>,
    /// The gateway's own addresses (its LoadBalancer Service's), written into Ingress
    /// `status.loadBalancer` and Gateway `status.addresses`: IPs or hostnames.
    pub addresses: Vec<String>,
    /// The gateway's own Service (`--service`): each Gateway's Service goes beside it.
    pub service: Key,
    /// The `ambassador_id` of the Mappings served (Emissary's `default` when unset).
    pub ambassador_id: String,
}

/// `spec.controller` of the IngressClasses this gateway serves.
pub const INGRESS_CONTROLLER: &str = "kubewire.io/gateway";

impl Default for Settings {
    fn default() -> Self {
        Settings {
            controller_name: crate::gatewayapi::CONTROLLER_NAME.into(),
            ingress_classes: vec!["kubewire".into(), "ambassador".into()],
            addresses: Vec::new(),
            service: crate::controller::DEFAULT_SERVICE
                .split_once('/')
                .map(|(ns, name)| (ns.into(), name.into()))
                .unwrap_or_default(),
            ambassador_id: "default".into(),
        }
    }
}

/// `namespace/name`.
pub type Key = (String, String);

/// Everything watched. The compile reads only this.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub settings: Settings,
    /// Labels by namespace name (for `allowedRoutes` selectors).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Hashed: every route's backend looks its Service up here. Shared with the
    /// controller's store: a cluster's Services are copied into each compile's World by
    /// reference, not whole.
    pub services: HashMap<Key, Arc<Service>>,
    /// By the Service they belong to (`kubernetes.io/service-name`): see
    /// [`slices_by_service`].
    pub endpoint_slices: HashMap<Key, Vec<EndpointSlice>>,
    pub secrets: BTreeMap<Key, Secret>,
    pub config_maps: BTreeMap<Key, ConfigMap>,
    pub ingress_classes: Vec<IngressClass>,
    pub ingresses: Vec<Ingress>,
    pub gateway_classes: Vec<Obj<gw::GatewayClassSpec>>,
    pub gateways: Vec<Obj<gw::GatewaySpec>>,
    pub http_routes: Vec<Obj<gw::HttpRouteSpec>>,
    pub grpc_routes: Vec<Obj<gw::GrpcRouteSpec>>,
    pub tls_routes: Vec<Obj<gw::TlsRouteSpec>>,
    pub tcp_routes: Vec<Obj<gw::L4RouteSpec>>,
    pub udp_routes: Vec<Obj<gw::L4RouteSpec>>,
    pub reference_grants: Vec<Obj<gw::ReferenceGrantSpec>>,
    pub backend_tls_policies: Vec<Obj<gw::BackendTlsPolicySpec>>,
    pub mappings: Vec<Obj<MappingSpec>>,
    /// The mesh's `HTTPFault`s (the gateway does not read them).
    pub http_faults: Vec<Obj<crate::gatewayapi::mesh::HttpFaultSpec>>,
    /// What [`World::backend`] answered during the current compile.
    pub backends: BackendCache,
    /// The Services the current compile looked up (see [`World::service`]).
    pub services_read: ServicesRead,
}

/// The Services a compile looked up, found or not: only a change to one of them (or to
/// its EndpointSlices) can change what the compile makes of this World, so the
/// controller compiles again for those alone.
#[derive(Debug, Default)]
pub struct ServicesRead(Mutex<HashSet<Key>>);

/// A copy of a World starts with nothing read.
impl Clone for ServicesRead {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl ServicesRead {
    /// What was read since the last call.
    pub fn take(&self) -> HashSet<Key> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Service ports resolved during one compile, so that every route to a Service port
/// shares one `Arc<Backend>` (and one resolution). [`crate::compile`] empties it before and
/// after, so a World changed between compiles is read afresh.
#[derive(Debug, Default)]
pub struct BackendCache(Mutex<HashMap<(Key, PortKey), Resolved>>);

type Resolved = Result<Arc<Backend>, BackendError>;

/// A [`PortRef`] that owns its name.
#[derive(Debug, PartialEq, Eq, Hash)]
enum PortKey {
    Number(i32),
    Name(String),
}

impl BackendCache {
    pub(crate) fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A copy of a World starts with nothing cached.
impl Clone for BackendCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

/// A Service port named by number or by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRef<'a> {
    Number(i32),
    Name(&'a str),
}

/// Why a backend reference does not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendError {
    ServiceNotFound,
    PortNotFound,
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendError::ServiceNotFound => "service not found",
            BackendError::PortNotFound => "service has no such port",
        })
    }
}

/// Why a certificate reference does not resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretError {
    NotFound,
    /// Not a `kubernetes.io/tls` Secret with `tls.crt` and `tls.key`.
    Invalid,
}

/// EndpointSlices keyed by their Service.
pub fn slices_by_service(
    slices: impl IntoIterator<Item = EndpointSlice>,
) -> HashMap<Key, Vec<EndpointSlice>> {
    let mut out: HashMap<Key, Vec<EndpointSlice>> = HashMap::new();
    for slice in slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned();
        if let (Some(ns), Some(service)) = (slice.metadata.namespace.clone(), service) {
            out.entry((ns, service)).or_default().push(slice);
        }
    }
    out
}

impl World {
    /// The Service `namespace/name`, noted as read (found or not: a route waiting for
    /// its Service must see it appear).
    pub(crate) fn service(&self, namespace: &str, name: &str) -> Option<&Arc<Service>> {
        let key = (namespace.to_owned(), name.to_owned());
        let found = self.services.get(&key);
        self.services_read
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        found
    }

    /// The Service port `port` of `namespace/name` with its ready endpoints: one `Arc` for
    /// every route to it within a compile.
    pub fn backend(
        &self,
        namespace: &str,
        name: &str,
        port: PortRef<'_>,
    ) -> Result<Arc<Backend>, BackendError> {
        let key = (
            (namespace.to_string(), name.to_string()),
            match port {
                PortRef::Number(n) => PortKey::Number(n),
                PortRef::Name(n) => PortKey::Name(n.to_string()),
            },
        );
        let mut cache = self.backends.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.get(&key) {
            return b.clone();
        }
        let b = self.resolve_backend(namespace, name, port).map(Arc::new);
        cache.insert(key, b.clone());
        b
    }

    fn resolve_backend(
        &self,
        namespace: &str,
        name: &str,
        port: PortRef<'_>,
    ) -> Result<Backend, BackendError> {
        let svc = self
            .service(namespace, name)
            .ok_or(BackendError::ServiceNotFound)?;
        let spec = svc.spec.as_ref().ok_or(BackendError::PortNotFound)?;
        let sp = spec
            .ports
            .iter()
            .flatten()
            .find(|p| match port {
                PortRef::Number(n) => p.port == n,
                PortRef::Name(n) => p.name.as_deref() == Some(n),
            })
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") != "SCTP")
            .ok_or(BackendError::PortNotFound)?;
        let protocol = match sp.app_protocol.as_deref() {
            Some("kubernetes.io/h2c") => BackendProtocol::H2c,
            Some("kubernetes.io/ws" | "kubernetes.io/wss") => BackendProtocol::WebSocket,
            _ => BackendProtocol::Http1,
        };
        let port_name = sp.name.as_deref().unwrap_or("");
        let mut endpoints = BTreeSet::new();
        let slices = self
            .endpoint_slices
            .get(&(namespace.to_string(), name.to_string()));
        for slice in slices.into_iter().flatten() {
            let Some(number) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == port_name)
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                if !ready {
                    continue;
                }
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse::<IpAddr>() {
                        endpoints.insert(SocketAddr::new(ip, number));
                    }
                }
            }
        }
        Ok(Backend {
            namespace: namespace.to_string(),
            service: name.to_string(),
            port: u16::try_from(sp.port).map_err(|_| BackendError::PortNotFound)?,
            endpoints: endpoints.into_iter().collect::<Vec<_>>().into(),
            protocol,
            tls: None,
            limits: Limits::default(),
        })
    }

    /// The chain and key of the `kubernetes.io/tls` Secret `namespace/name`.
    pub fn certificate(
        &self,
        namespace: &str,
        name: &str,
        hostnames: Vec<HostMatch>,
    ) -> Result<Certificate, SecretError> {
        let secret = self
            .secrets
            .get(&(namespace.to_string(), name.to_string()))
            .ok_or(SecretError::NotFound)?;
        let data = secret.data.as_ref().ok_or(SecretError::Invalid)?;
        let (Some(crt), Some(key)) = (data.get("tls.crt"), data.get("tls.key")) else {
            return Err(SecretError::Invalid);
        };
        if secret.type_.as_deref() != Some("kubernetes.io/tls")
            || crt.0.is_empty()
            || key.0.is_empty()
        {
            return Err(SecretError::Invalid);
        }
        // PEM that does not parse (Gateway API's malformed Secret: InvalidCertificateRef)
        // would only be skipped by the data plane; say so in the status instead.
        {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::{CertificateDer, PrivateKeyDer};
            let chain = CertificateDer::pem_slice_iter(&crt.0).collect::<Result<Vec<_>, _>>();
            if !chain.is_ok_and(|c| !c.is_empty()) || PrivateKeyDer::from_pem_slice(&key.0).is_err()
            {
                return Err(SecretError::Invalid);
            }
        }
        Ok(Certificate {
            hostnames,
            chain_pem: Arc::from(crt.0.as_slice()),
            key_pem: Arc::from(key.0.as_slice()),
        })
    }
}

/// A hostname as a [`HostMatch`]: `*.example.com` is a wildcard, `*` or empty any host.
pub fn host_match(host: &str, one_label: bool) -> HostMatch {
    let host = host.to_ascii_lowercase();
    if host.is_empty() || host == "*" {
        HostMatch::Any
    } else if let Some(suffix) = host.strip_prefix('*') {
        HostMatch::Wildcard {
            suffix: suffix.to_string(),
            one_label,
        }
    } else {
        HostMatch::Exact(host)
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Objects for the unit tests, written as their manifests are.

    use super::*;

    pub(crate) fn yaml<T: DeserializeOwned>(text: &str) -> T {
        serde_yaml_ng::from_str(text).expect("test manifest parses")
    }

    pub(crate) fn obj<S: DeserializeOwned>(text: &str) -> Obj<S> {
        let v: serde_json::Value = yaml(text);
        Obj::from_json(&v)
    }

    /// A Service `ns/name` with `ports` (name, port, appProtocol) and one EndpointSlice
    /// holding `ips` (ready), targetPort = port + 8000.
    pub(crate) fn service(
        world: &mut World,
        ns: &str,
        name: &str,
        ports: &[(&str, i32, Option<&str>)],
        ips: &[&str],
    ) {
        let svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"ports": ports.iter().map(|(n, p, a)| serde_json::json!({
                "name": n, "port": p, "appProtocol": a,
            })).collect::<Vec<_>>()},
        }))
        .unwrap();
        world
            .services
            .insert((ns.into(), name.into()), Arc::new(svc));
        let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": format!("{name}-x"),
                "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": ports.iter().map(|(n, p, _)| serde_json::json!({"name": n, "port": p + 8000}))
                .collect::<Vec<_>>(),
            "endpoints": ips.iter().map(|ip| serde_json::json!({
                "addresses": [ip], "conditions": {"ready": true}}))
                .chain(std::iter::once(serde_json::json!({
                    "addresses": ["10.9.9.9"], "conditions": {"ready": false}})))
                .collect::<Vec<_>>(),
        }))
        .unwrap();
        world
            .endpoint_slices
            .entry((ns.into(), name.into()))
            .or_default()
            .push(slice);
    }

    /// `bytes` as a PEM block labelled `label` (what is inside is not checked here).
    pub(crate) fn pem(label: &str, bytes: &str) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }

    /// A `kubernetes.io/tls` Secret whose chain and key are PEM blocks holding
    /// `crt-<name>` and `key-<name>`.
    pub(crate) fn tls_secret(world: &mut World, ns: &str, name: &str) {
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name},
            "type": "kubernetes.io/tls",
            "data": {
                "tls.crt": k8s_openapi::ByteString(pem("CERTIFICATE", &format!("crt-{name}")).into_bytes()),
                "tls.key": k8s_openapi::ByteString(pem("PRIVATE KEY", &format!("key-{name}")).into_bytes()),
            },
        }))
        .unwrap();
        world.secrets.insert((ns.into(), name.into()), secret);
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn a_backend_has_the_ready_endpoints_of_its_port_by_number_or_name() {
        let mut w = World::default();
        service(
            &mut w,
            "default",
            "web",
            &[
                ("http", 80, None),
                ("grpc", 9000, Some("kubernetes.io/h2c")),
            ],
            &["10.0.0.2", "10.0.0.1"],
        );
        let b = w.backend("default", "web", PortRef::Number(80)).unwrap();
        assert_eq!(b.port, 80);
        assert_eq!(
            &*b.endpoints,
            &[
                "10.0.0.1:8080".parse().unwrap(),
                "10.0.0.2:8080".parse().unwrap()
            ]
        );
        assert_eq!(b.protocol, BackendProtocol::Http1);
        let g = w.backend("default", "web", PortRef::Name("grpc")).unwrap();
        assert_eq!(g.port, 9000);
        assert_eq!(g.protocol, BackendProtocol::H2c);
        assert_eq!(g.endpoints[0].port(), 17000);
        assert_eq!(
            w.backend("default", "web", PortRef::Number(81)),
            Err(BackendError::PortNotFound)
        );
        assert_eq!(
            w.backend("other", "web", PortRef::Number(80)),
            Err(BackendError::ServiceNotFound)
        );
    }

    #[test]
    fn hosts_become_exact_wildcard_or_any() {
        assert_eq!(
            host_match("Foo.COM", true),
            HostMatch::Exact("foo.com".into())
        );
        assert_eq!(
            host_match("*.foo.com", true),
            HostMatch::Wildcard {
                suffix: ".foo.com".into(),
                one_label: true
            }
        );
        assert_eq!(host_match("", false), HostMatch::Any);
    }

    #[test]
    fn a_certificate_needs_a_tls_secret() {
        let mut w = World::default();
        tls_secret(&mut w, "default", "cert");
        let c = w.certificate("default", "cert", vec![]).unwrap();
        assert_eq!(&*c.chain_pem, pem("CERTIFICATE", "crt-cert").as_bytes());
        assert_eq!(
            w.certificate("default", "nope", vec![]),
            Err(SecretError::NotFound)
        );
        // Conformance GatewayInvalidTLSConfiguration's malformed Secret: no PEM in it.
        let hello = k8s_openapi::ByteString(b"Hello world\n".to_vec());
        let mut malformed = w.secrets[&("default".to_string(), "cert".to_string())].clone();
        malformed.data = Some(
            [
                ("tls.crt".to_string(), hello.clone()),
                ("tls.key".to_string(), hello),
            ]
            .into(),
        );
        w.secrets
            .insert(("default".into(), "malformed".into()), malformed);
        assert_eq!(
            w.certificate("default", "malformed", vec![]),
            Err(SecretError::Invalid)
        );
    }
}
