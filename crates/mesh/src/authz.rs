//! Inbound authorization, as Linkerd's policy (`policy.linkerd.io`) defines it: the
//! node's discovery resolves it for one pod ([`resolve`]) and the pod's proxy enforces
//! it ([`InboundPolicy::authorize`]) on each connection, and on each request of an
//! HTTP one.
//!
//! - A **Server** in the pod's namespace selects the pod (`podSelector`) and a port
//!   (a number, or the name of one of its containers' ports). Traffic to that port is
//!   allowed only by the AuthorizationPolicies that target the Server (or the
//!   Server's namespace), else by the Server's `accessPolicy` (`deny` unless it says
//!   otherwise).
//! - An **AuthorizationPolicy** requires every one of its `requiredAuthenticationRefs`:
//!   a **MeshTLSAuthentication** (mutual TLS from one of its `identities` or
//!   `identityRefs`: ServiceAccounts, or every ServiceAccount of a Namespace; `*` is any
//!   meshed client), a **NetworkAuthentication** (a client address in its `networks`,
//!   minus their `except`), or a ServiceAccount.
//! - A port no Server selects has the **default policy**: the pod's annotation
//!   `config.linkerd.io/default-inbound-policy`, else its namespace's, else
//!   `all-unauthenticated`; the others are `all-authenticated`,
//!   `cluster-unauthenticated`, `cluster-authenticated` (Linkerd's cluster networks),
//!   `audit` (allows all, as Linkerd's does) and `deny`.
//! - The kubelet's probes (the `httpGet` paths of the pod's probes, on their ports) are
//!   always allowed.
//!
//! An HTTP request that is not allowed gets 403 (a gRPC one `grpc-status: 7`); any
//! other connection that is not allowed is closed. Not served: AuthorizationPolicies
//! that target routes (`policy.linkerd.io` HTTPRoutes), and ServerAuthorizations.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};

/// Linkerd's policy API group.
pub const GROUP: &str = "policy.linkerd.io";
/// The annotation naming a pod's (or its namespace's) default policy.
pub const DEFAULT_POLICY_ANNOTATION: &str = "config.linkerd.io/default-inbound-policy";
/// The default policy where nothing names one (Linkerd's).
pub const DEFAULT_POLICY: &str = "all-unauthenticated";
/// Linkerd's default `clusterNetworks`: what the `cluster-*` policies allow.
pub const CLUSTER_NETWORKS: [&str; 5] = [
    "10.0.0.0/8",
    "100.64.0.0/10",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fd00::/8",
];

/// What discovery answers a pod's proxy: how each of its ports is authorized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundPolicy {
    /// The ports a Server selects.
    #[serde(default)]
    pub ports: BTreeMap<u16, PortPolicy>,
    /// Every other port: the default policy.
    pub default: PortPolicy,
    /// The HTTP paths the kubelet probes, by port: always allowed.
    #[serde(default)]
    pub probes: BTreeMap<u16, Vec<String>>,
}

/// A port's policy: the Server (or default policy) and what it allows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortPolicy {
    /// `server`, or `default` for a default policy.
    pub server_kind: String,
    /// The Server's name, or the default policy's.
    pub server_name: String,
    pub authorizations: Vec<Authorization>,
}

/// One way in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    /// `authorizationpolicy`, `default` or `probe` (linkerd2-proxy's `authz_kind`).
    pub kind: String,
    pub name: String,
    /// Clients from these networks.
    pub networks: Vec<Network>,
    /// `None`: any client, meshed or not; else mutual TLS from one of these identities
    /// (`ns/NS/sa/SA`, where `*` stands for any namespace or ServiceAccount, and `*`
    /// alone for any identity).
    pub identities: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    pub cidr: IpNet,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

impl Network {
    fn all() -> Vec<Network> {
        ["0.0.0.0/0", "::/0"]
            .iter()
            .map(|c| Network {
                cidr: c.parse().expect("a network"),
                except: vec![],
            })
            .collect()
    }

    fn cluster() -> Vec<Network> {
        CLUSTER_NETWORKS
            .iter()
            .map(|c| Network {
                cidr: c.parse().expect("a network"),
                except: vec![],
            })
            .collect()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// `spiffe://<trust domain>/ns/NS/sa/SA` as the identity path `ns/NS/sa/SA`.
fn identity_path(identity: &str) -> &str {
    identity
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .map_or(identity, |(_, path)| path)
}

fn identity_matches(pattern: &str, path: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (p, i): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    p.len() == i.len() && p.iter().zip(&i).all(|(p, i)| *p == "*" || p == i)
}

impl Authorization {
    /// Whether a client at `ip`, with the mutual TLS `identity` if it has one, is let in.
    pub fn allows(&self, ip: IpAddr, identity: Option<&str>) -> bool {
        self.networks.iter().any(|n| n.contains(ip))
            && match (&self.identities, identity) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(patterns), Some(id)) => {
                    let path = identity_path(id);
                    patterns.iter().any(|p| identity_matches(p, path))
                }
            }
    }
}

/// A default policy's authorizations; `None` for a name that is not one.
pub fn default_policy(name: &str) -> Option<Vec<Authorization>> {
    let authz = |networks, identities| {
        vec![Authorization {
            kind: "default".into(),
            name: name.into(),
            networks,
            identities,
        }]
    };
    let any = Some(vec!["*".to_string()]);
    Some(match name {
        "all-unauthenticated" | "audit" => authz(Network::all(), None),
        "all-authenticated" => authz(Network::all(), any),
        "cluster-unauthenticated" => authz(Network::cluster(), None),
        "cluster-authenticated" => authz(Network::cluster(), any),
        "deny" => vec![],
        _ => return None,
    })
}

impl PortPolicy {
    /// The default policy `name` (`all-unauthenticated` for a name that is not one).
    pub fn default_named(name: &str) -> PortPolicy {
        let (name, authorizations) = match default_policy(name) {
            Some(a) => (name, a),
            None => (
                DEFAULT_POLICY,
                default_policy(DEFAULT_POLICY).unwrap_or_default(),
            ),
        };
        PortPolicy {
            server_kind: "default".into(),
            server_name: name.into(),
            authorizations,
        }
    }
}

impl Default for InboundPolicy {
    /// Everything allowed: what a proxy uses before discovery answered it.
    fn default() -> Self {
        InboundPolicy {
            ports: BTreeMap::new(),
            default: PortPolicy::default_named(DEFAULT_POLICY),
            probes: BTreeMap::new(),
        }
    }
}

impl InboundPolicy {
    /// Nothing allowed: what a proxy uses when discovery has never answered it.
    pub fn deny_all() -> InboundPolicy {
        InboundPolicy {
            ports: BTreeMap::new(),
            default: PortPolicy::default_named("deny"),
            probes: BTreeMap::new(),
        }
    }
}

/// What the policy says of a client of one port.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub server_kind: String,
    pub server_name: String,
    /// The authorization that lets the client in: `(kind, name)`.
    pub allowed: Option<(String, String)>,
    /// The port's probe paths: allowed to anyone.
    pub probes: Vec<String>,
}

impl Verdict {
    /// The authorization for an HTTP request for `path` with `method`: the client's,
    /// or the probes' for a probe path.
    pub fn request(&self, method: &http::Method, path: &str) -> Option<(String, String)> {
        self.allowed.clone().or_else(|| {
            let probe = matches!(*method, http::Method::GET | http::Method::HEAD)
                && self.probes.iter().any(|p| p == path);
            probe.then(|| ("probe".to_string(), "probe".to_string()))
        })
    }
}

impl InboundPolicy {
    /// What the policy says of a client at `ip` (with its mutual TLS `identity`) of the
    /// app's `port`.
    pub fn authorize(&self, port: u16, ip: IpAddr, identity: Option<&str>) -> Verdict {
        let p = self.ports.get(&port).unwrap_or(&self.default);
        Verdict {
            server_kind: p.server_kind.clone(),
            server_name: p.server_name.clone(),
            allowed: p
                .authorizations
                .iter()
                .find(|a| a.allows(ip, identity))
                .map(|a| (a.kind.clone(), a.name.clone())),
            probes: self.probes.get(&port).cloned().unwrap_or_default(),
        }
    }
}

// ---- resolution, in the node's discovery ----

/// A pod as the policy reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    /// Its containers' named ports.
    pub named_ports: BTreeMap<String, u16>,
    /// `(port, path)` of its probes' `httpGet`.
    pub probes: Vec<(u16, String)>,
    /// Its `config.linkerd.io/default-inbound-policy`.
    pub default_policy: Option<String>,
}

impl PodFacts {
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> PodFacts {
        let spec = pod.spec.clone().unwrap_or_default();
        let containers = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        let mut named_ports = BTreeMap::new();
        let mut probes = Vec::new();
        for c in containers.clone() {
            for p in c.ports.iter().flatten() {
                if let (Some(name), Ok(port)) = (&p.name, u16::try_from(p.container_port)) {
                    named_ports.insert(name.clone(), port);
                }
            }
        }
        for c in containers {
            let all = [&c.liveness_probe, &c.readiness_probe, &c.startup_probe];
            for get in all
                .into_iter()
                .flatten()
                .filter_map(|p| p.http_get.as_ref())
            {
                let port = match &get.port {
                    IntOrString::Int(n) => u16::try_from(*n).ok(),
                    IntOrString::String(name) => named_ports.get(name).copied(),
                };
                if let Some(port) = port {
                    probes.push((port, get.path.clone().unwrap_or_else(|| "/".into())));
                }
            }
        }
        PodFacts {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            named_ports,
            probes,
            default_policy: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_POLICY_ANNOTATION))
                .cloned(),
        }
    }
}

/// A reference in a policy object.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Ref {
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerSpec {
    pub pod_selector: Option<LabelSelector>,
    pub port: Option<IntOrString>,
    pub access_policy: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: Ref,
    pub required_authentication_refs: Vec<Ref>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    pub identities: Vec<String>,
    pub identity_refs: Vec<Ref>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<NetworkSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct NetworkSpec {
    pub cidr: String,
    pub except: Vec<String>,
}

/// Linkerd's policy objects, by `namespace/name`, their specs parsed.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub servers: BTreeMap<String, ServerSpec>,
    pub authorization_policies: BTreeMap<String, AuthorizationPolicySpec>,
    pub mesh_tls: BTreeMap<String, MeshTlsAuthenticationSpec>,
    pub networks: BTreeMap<String, NetworkAuthenticationSpec>,
}

/// A Linkerd identity name (`SA.NS.serviceaccount.identity.linkerd.<domain>`), a SPIFFE
/// ID or `*` as an identity pattern.
fn identity_pattern(name: &str) -> Option<String> {
    if name == "*" {
        return Some("*".into());
    }
    if name.starts_with("spiffe://") {
        return Some(identity_path(name).to_string());
    }
    let mut parts = name.split('.');
    let (sa, ns, kind) = (parts.next()?, parts.next()?, parts.next()?);
    (kind == "serviceaccount").then(|| format!("ns/{ns}/sa/{sa}"))
}

/// `namespace/name` of a reference made from `namespace`.
fn key(r: &Ref, namespace: &str) -> String {
    format!("{}/{}", r.namespace.as_deref().unwrap_or(namespace), r.name)
}

fn is_core(r: &Ref) -> bool {
    matches!(r.group.as_deref(), None | Some("" | "core"))
}

impl Objects {
    /// An AuthorizationPolicy as an authorization; `None` when a reference it requires
    /// does not resolve (it then allows nothing, as in Linkerd).
    fn authorization(
        &self,
        namespace: &str,
        name: &str,
        ap: &AuthorizationPolicySpec,
    ) -> Option<Authorization> {
        let mut networks: Option<Vec<Network>> = None;
        let mut identities: Option<Vec<String>> = None;
        for r in &ap.required_authentication_refs {
            match (r.kind.as_str(), is_core(r)) {
                ("MeshTLSAuthentication", false) => {
                    let m = self.mesh_tls.get(&key(r, namespace))?;
                    let ns = r.namespace.as_deref().unwrap_or(namespace);
                    let list = identities.get_or_insert_with(Vec::new);
                    list.extend(m.identities.iter().filter_map(|i| identity_pattern(i)));
                    for ir in &m.identity_refs {
                        let ref_ns = ir.namespace.as_deref().unwrap_or(ns);
                        match ir.kind.as_str() {
                            "ServiceAccount" => list.push(format!("ns/{ref_ns}/sa/{}", ir.name)),
                            "Namespace" => list.push(format!("ns/{}/sa/*", ir.name)),
                            _ => {}
                        }
                    }
                }
                ("NetworkAuthentication", false) => {
                    let n = self.networks.get(&key(r, namespace))?;
                    let list = networks.get_or_insert_with(Vec::new);
                    for spec in &n.networks {
                        list.push(Network {
                            cidr: spec.cidr.parse().ok()?,
                            except: spec.except.iter().filter_map(|e| e.parse().ok()).collect(),
                        });
                    }
                }
                ("ServiceAccount", true) => {
                    let ns = r.namespace.as_deref().unwrap_or(namespace);
                    identities
                        .get_or_insert_with(Vec::new)
                        .push(format!("ns/{ns}/sa/{}", r.name));
                }
                _ => return None,
            }
        }
        Some(Authorization {
            kind: "authorizationpolicy".into(),
            name: name.into(),
            networks: networks.unwrap_or_else(Network::all),
            identities,
        })
    }

    /// The AuthorizationPolicies that target the Server `namespace/server` (or its
    /// namespace), as authorizations.
    fn authorizations_of(&self, namespace: &str, server: &str) -> Vec<Authorization> {
        self.authorization_policies
            .iter()
            .filter_map(|(k, ap)| {
                let (ns, name) = k.split_once('/')?;
                let t = &ap.target_ref;
                let targets = ns == namespace
                    && match (t.kind.as_str(), is_core(t)) {
                        ("Server", false) => t.name == server,
                        ("Namespace", true) => t.name == namespace,
                        _ => false,
                    };
                targets.then(|| self.authorization(ns, name, ap)).flatten()
            })
            .collect()
    }
}

/// The inbound policy of a pod, given its namespace's default policy annotation.
pub fn resolve(
    pod: &PodFacts,
    namespace_default: Option<&str>,
    objects: &Objects,
) -> InboundPolicy {
    let default_name = pod
        .default_policy
        .as_deref()
        .or(namespace_default)
        .unwrap_or(DEFAULT_POLICY);
    let mut ports = BTreeMap::new();
    // Servers in name order: the first one of a port wins.
    for (k, server) in &objects.servers {
        let Some((ns, name)) = k.split_once('/') else {
            continue;
        };
        let selected = ns == pod.namespace
            && server
                .pod_selector
                .as_ref()
                .is_some_and(|s| k8s::labels::selects(s, &pod.labels));
        let port = match &server.port {
            Some(IntOrString::Int(n)) => u16::try_from(*n).ok(),
            Some(IntOrString::String(n)) => pod.named_ports.get(n).copied(),
            None => None,
        };
        let (true, Some(port)) = (selected, port) else {
            continue;
        };
        ports.entry(port).or_insert_with(|| {
            let mut authorizations = objects.authorizations_of(ns, name);
            let access = server.access_policy.as_deref().unwrap_or("deny");
            authorizations.extend(default_policy(access).unwrap_or_default());
            PortPolicy {
                server_kind: "server".into(),
                server_name: name.into(),
                authorizations,
            }
        });
    }
    let mut probes: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for (port, path) in &pod.probes {
        probes.entry(*port).or_default().push(path.clone());
    }
    InboundPolicy {
        ports,
        default: PortPolicy::default_named(default_name),
        probes,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const WEB: &str = "spiffe://cluster.local/ns/demo/sa/web";
    const OTHER: &str = "spiffe://cluster.local/ns/demo/sa/other";

    fn pod() -> PodFacts {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": "api-1", "namespace": "demo", "labels": {"app": "api"}},
            "spec": {"containers": [{
                "name": "app",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 9000}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
                "livenessProbe": {"httpGet": {"path": "/live", "port": 9000}},
            }]},
        }))
        .unwrap();
        PodFacts::of(&pod)
    }

    fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    fn objects() -> Objects {
        let mut o = Objects::default();
        o.servers.insert(
            "demo/api-http".into(),
            parse(json!({"podSelector": {"matchLabels": {"app": "api"}}, "port": "http"})),
        );
        o.servers.insert(
            "demo/elsewhere".into(),
            parse(json!({"podSelector": {"matchLabels": {"app": "db"}}, "port": 5432})),
        );
        o.mesh_tls.insert(
            "demo/web-only".into(),
            parse(json!({"identityRefs": [{"kind": "ServiceAccount", "name": "web"}]})),
        );
        o.networks.insert(
            "demo/office".into(),
            parse(json!({"networks": [{"cidr": "10.1.0.0/16", "except": ["10.1.9.0/24"]}]})),
        );
        o.authorization_policies.insert(
            "demo/web".into(),
            parse(json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "api-http"},
                "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "MeshTLSAuthentication", "name": "web-only"}]})),
        );
        o.authorization_policies.insert(
            "demo/office".into(),
            parse(json!({"targetRef": {"group": "policy.linkerd.io", "kind": "Server", "name": "api-http"},
                "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "office"}]})),
        );
        o
    }

    #[test]
    fn a_server_allows_only_what_its_authorization_policies_require() {
        let p = resolve(&pod(), None, &objects());
        assert_eq!(p.ports.keys().collect::<Vec<_>>(), [&8080]);
        let v = p.authorize(8080, ip("10.2.0.5"), Some(WEB));
        assert_eq!(v.server_name, "api-http");
        assert_eq!(
            v.allowed,
            Some(("authorizationpolicy".into(), "web".into()))
        );
        // Another identity, or none, from outside the office: denied.
        assert_eq!(p.authorize(8080, ip("10.2.0.5"), Some(OTHER)).allowed, None);
        assert_eq!(p.authorize(8080, ip("10.2.0.5"), None).allowed, None);
        // From the office, unauthenticated, but not from the excepted subnet.
        let office = p.authorize(8080, ip("10.1.2.3"), None);
        assert_eq!(
            office.allowed,
            Some(("authorizationpolicy".into(), "office".into()))
        );
        assert_eq!(p.authorize(8080, ip("10.1.9.3"), None).allowed, None);
        // The probe on that port is allowed to anyone; other paths are not.
        let denied = p.authorize(8080, ip("10.2.0.5"), None);
        assert_eq!(
            denied.request(&http::Method::GET, "/ready"),
            Some(("probe".into(), "probe".into()))
        );
        assert_eq!(denied.request(&http::Method::POST, "/ready"), None);
        assert_eq!(denied.request(&http::Method::GET, "/data"), None);
        // A port no Server selects: the default policy.
        let admin = p.authorize(9000, ip("192.0.2.1"), None);
        assert_eq!(
            (admin.server_kind.as_str(), admin.server_name.as_str()),
            ("default", "all-unauthenticated")
        );
        assert!(admin.allowed.is_some());
        assert_eq!(admin.probes, ["/live"]);
    }

    #[test]
    fn a_server_without_authorizations_denies_unless_its_access_policy_allows() {
        let mut o = objects();
        o.authorization_policies.clear();
        let p = resolve(&pod(), None, &o);
        assert_eq!(p.authorize(8080, ip("10.1.2.3"), Some(WEB)).allowed, None);
        o.servers.get_mut("demo/api-http").unwrap().access_policy =
            Some("all-authenticated".into());
        let p = resolve(&pod(), None, &o);
        assert!(
            p.authorize(8080, ip("192.0.2.1"), Some(OTHER))
                .allowed
                .is_some()
        );
        assert_eq!(p.authorize(8080, ip("192.0.2.1"), None).allowed, None);
        // A required reference that does not exist: the policy allows nothing.
        let mut o = objects();
        o.mesh_tls.clear();
        let p = resolve(&pod(), None, &o);
        assert_eq!(p.authorize(8080, ip("10.2.0.5"), Some(WEB)).allowed, None);
    }

    #[test]
    fn the_default_policy_comes_from_the_pod_then_its_namespace() {
        let o = Objects::default();
        let mut facts = pod();
        let p = resolve(&facts, Some("deny"), &o);
        assert_eq!(p.default.server_name, "deny");
        assert_eq!(p.authorize(8080, ip("10.1.2.3"), Some(WEB)).allowed, None);
        facts.default_policy = Some("cluster-authenticated".into());
        let p = resolve(&facts, Some("deny"), &o);
        assert!(
            p.authorize(8080, ip("10.1.2.3"), Some(WEB))
                .allowed
                .is_some()
        );
        assert_eq!(p.authorize(8080, ip("10.1.2.3"), None).allowed, None);
        assert_eq!(
            p.authorize(8080, ip("192.0.2.1"), Some(WEB)).allowed,
            None,
            "outside the cluster"
        );
        // A name that is no policy: Linkerd's default.
        facts.default_policy = Some("nonsense".into());
        assert_eq!(
            resolve(&facts, None, &o).default.server_name,
            "all-unauthenticated"
        );
    }

    #[test]
    fn identities_are_linkerd_names_spiffe_ids_or_wildcards() {
        assert_eq!(
            identity_pattern("web.demo.serviceaccount.identity.linkerd.cluster.local").as_deref(),
            Some("ns/demo/sa/web")
        );
        assert_eq!(
            identity_pattern("*.demo.serviceaccount.identity.linkerd.cluster.local").as_deref(),
            Some("ns/demo/sa/*")
        );
        assert_eq!(
            identity_pattern("spiffe://cluster.local/ns/a/sa/b").as_deref(),
            Some("ns/a/sa/b")
        );
        assert_eq!(identity_pattern("nonsense"), None);
        assert!(identity_matches("ns/demo/sa/*", identity_path(WEB)));
        assert!(!identity_matches("ns/other/sa/*", identity_path(WEB)));
        assert!(identity_matches("*", identity_path(WEB)));
        // The answer goes to the proxy as JSON and comes back the same.
        let p = resolve(&pod(), None, &objects());
        let again: InboundPolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }
}
