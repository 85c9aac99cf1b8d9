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
//!   always allowed, on a Server without routes.
//! - **HTTPRoutes** (Linkerd's `policy.linkerd.io` ones, or Gateway API's) whose parent
//!   is a Server split its HTTP traffic: a request must match one of them (else 404),
//!   and is let in by the AuthorizationPolicies that target its route, besides those of
//!   the Server. The probe paths are then no longer allowed by themselves (as in
//!   Linkerd: a route has to name them).
//!
//! - **ServerAuthorizations** (the older kind) let clients in to the Servers they name
//!   or select by label: meshed ServiceAccounts or identities, any meshed client, or
//!   anyone, from their networks (the cluster's when unset).
//!
//! An HTTP request that is not allowed gets 403 (a gRPC one `grpc-status: 7`); any
//! other connection that is not allowed is closed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use gateway::config::{
    Action, HeaderMatch, HostMatch, HttpHosts, PathMatch, QueryMatch, Route, RouteMatch, RouteName,
    StringMatch, VirtualHost,
};
use gateway::proxy::route::{RequestView, Router};

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
    /// The HTTPRoutes whose parent is the Server, in precedence order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<InboundRoute>,
    /// The routes compiled, once, where the proxy first needs them.
    #[serde(skip)]
    compiled: CompiledRoutes,
}

/// An HTTPRoute on a Server: what it matches, and who its AuthorizationPolicies let in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundRoute {
    /// `HTTPRoute` or `GRPCRoute`.
    pub kind: String,
    pub name: String,
    /// Any of these (Gateway API's `HTTPRouteMatch`).
    pub matches: Vec<HttpMatch>,
    pub authorizations: Vec<Authorization>,
}

/// Gateway API's `HTTPRouteMatch`, as both HTTPRoute kinds write it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpMatch {
    pub path: Option<ValueMatch>,
    pub method: Option<String>,
    pub headers: Vec<ValueMatch>,
    pub query_params: Vec<ValueMatch>,
}

/// A path (`PathPrefix` unless `type` says `Exact` or `RegularExpression`; `/` unless a
/// `value`), a header or a query parameter (`Exact` unless `RegularExpression`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ValueMatch {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    pub value: Option<String>,
}

impl HttpMatch {
    /// As the gateway's router matches it; `None` for a method or header name that is not
    /// one (it can match nothing).
    fn compile(&self) -> Option<RouteMatch> {
        let value = |m: &ValueMatch| match m.kind.as_deref() {
            Some("RegularExpression") => StringMatch::Regex(m.value.clone().unwrap_or_default()),
            _ => StringMatch::Exact(m.value.clone().unwrap_or_default()),
        };
        let path = self
            .path
            .as_ref()
            .map_or(PathMatch::Prefix("/".into()), |p| {
                let v = p.value.clone().unwrap_or_else(|| "/".into());
                match p.kind.as_deref() {
                    Some("Exact") => PathMatch::Exact(v),
                    Some("RegularExpression") => PathMatch::Regex(v),
                    _ => PathMatch::Prefix(v),
                }
            });
        Some(RouteMatch {
            path,
            method: match &self.method {
                Some(m) => Some(m.parse().ok()?),
                None => None,
            },
            headers: self
                .headers
                .iter()
                .map(|h| {
                    Some(HeaderMatch {
                        name: h.name.parse().ok()?,
                        value: value(h),
                    })
                })
                .collect::<Option<_>>()?,
            query: self
                .query_params
                .iter()
                .map(|q| QueryMatch {
                    name: q.name.clone(),
                    value: value(q),
                })
                .collect(),
        })
    }

    /// Gateway API's precedence among matches: an exact path, then the longest prefix,
    /// then a method, then the most headers, then the most query parameters.
    fn precedence(&self) -> impl Ord {
        let (kind, len) = match &self.path {
            Some(p) => match p.kind.as_deref() {
                Some("Exact") => (0, p.value.as_deref().unwrap_or("/").len()),
                Some("RegularExpression") => (2, 0),
                _ => (1, p.value.as_deref().unwrap_or("/").len()),
            },
            None => (1, 1),
        };
        (
            kind,
            std::cmp::Reverse(len),
            self.method.is_none(),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.query_params.len()),
        )
    }
}

/// A port's routes as the gateway's router matches them.
#[derive(Debug)]
pub struct InboundRoutes {
    router: Router,
    hosts: HttpHosts,
    routes: Vec<InboundRoute>,
}

impl InboundRoutes {
    fn new(routes: &[InboundRoute]) -> InboundRoutes {
        // Every match of every route, most specific first; a match remembers its route.
        let mut matches: Vec<(usize, &HttpMatch)> = routes
            .iter()
            .enumerate()
            .flat_map(|(i, r)| r.matches.iter().map(move |m| (i, m)))
            .collect();
        matches.sort_by_key(|(i, m)| (m.precedence(), *i));
        let compiled = matches
            .into_iter()
            .filter_map(|(i, m)| {
                Some(Route {
                    name: RouteName {
                        kind: "HTTPRoute",
                        namespace: String::new(),
                        name: routes[i].name.clone(),
                        rule: i,
                    },
                    matches: m.compile()?,
                    action: Action::Respond(http::StatusCode::OK),
                })
            })
            .collect();
        let hosts = HttpHosts {
            hosts: vec![VirtualHost {
                hostnames: vec![HostMatch::Any],
                scope: None,
                routes: compiled,
            }],
        };
        InboundRoutes {
            router: Router::new(&hosts),
            hosts,
            routes: routes.to_vec(),
        }
    }

    /// The route `req` matches.
    fn find<B>(&self, req: &http::Request<B>) -> Option<&InboundRoute> {
        let view = RequestView {
            host: "",
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let (v, r) = self.router.find(&view)?;
        let i = self.hosts.hosts[v].routes[r].name.rule;
        self.routes.get(i)
    }
}

/// [`InboundRoutes`] made once: not part of the policy's value (compared equal, cloned
/// empty).
#[derive(Debug, Default)]
struct CompiledRoutes(OnceLock<Option<Arc<InboundRoutes>>>);

impl Clone for CompiledRoutes {
    fn clone(&self) -> Self {
        CompiledRoutes::default()
    }
}

impl PartialEq for CompiledRoutes {
    fn eq(&self, _: &Self) -> bool {
        true
    }
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

/// A default policy's name, as a flag takes it: refused, naming the choices, when it
/// is not one.
pub fn parse_default_policy(name: &str) -> Result<String, String> {
    match default_policy(name) {
        Some(_) => Ok(name.to_string()),
        None => Err(format!(
            "{name:?} is not a default inbound policy (all-unauthenticated, \
             all-authenticated, cluster-unauthenticated, cluster-authenticated, audit, deny)"
        )),
    }
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
            routes: Vec::new(),
            compiled: CompiledRoutes::default(),
        }
    }

    fn compiled(&self) -> Option<Arc<InboundRoutes>> {
        self.compiled
            .0
            .get_or_init(|| {
                (!self.routes.is_empty()).then(|| Arc::new(InboundRoutes::new(&self.routes)))
            })
            .clone()
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
#[derive(Debug, Clone)]
pub struct Verdict {
    pub server_kind: String,
    pub server_name: String,
    /// The authorization that lets the client in: `(kind, name)`. Its routes' are not
    /// asked: they let in HTTP requests ([`Verdict::request`]), never a connection.
    pub allowed: Option<(String, String)>,
    /// The port's probe paths: allowed to anyone.
    pub probes: Vec<String>,
    /// The Server's routes, when it has some.
    routes: Option<Arc<InboundRoutes>>,
    client: (IpAddr, Option<String>),
}

/// What lets a client in: `(authz_kind, authz_name)`.
pub type Grant = (String, String);

/// A route of a Server: `(kind, name)`.
pub type RouteRef<'a> = (&'a str, &'a str);

/// Why an HTTP request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No authorization lets the client in (403).
    Unauthorized,
    /// The Server has routes and none matches the request (404).
    NoRoute,
}

impl Verdict {
    /// The authorization that lets an HTTP request in: the client's (on a Server with
    /// routes, its route's or the Server's), or the probes' for a probe path.
    pub fn request<B>(&self, req: &http::Request<B>) -> Result<(String, String), Refusal> {
        self.request_on_route(req).1
    }

    /// [`Verdict::request`], and the route (`kind`, `name`) the request matched, when
    /// the Server has routes.
    pub fn request_on_route<B>(
        &self,
        req: &http::Request<B>,
    ) -> (Option<RouteRef<'_>>, Result<Grant, Refusal>) {
        let Some(routes) = &self.routes else {
            let probe = matches!(*req.method(), http::Method::GET | http::Method::HEAD)
                && self.probes.iter().any(|p| p == req.uri().path());
            let allowed = match &self.allowed {
                Some(a) => Ok(a.clone()),
                None if probe => Ok(("probe".to_string(), "probe".to_string())),
                None => Err(Refusal::Unauthorized),
            };
            return (None, allowed);
        };
        let Some(route) = routes.find(req) else {
            return (None, Err(Refusal::NoRoute));
        };
        let (ip, identity) = (self.client.0, self.client.1.as_deref());
        let allowed = route
            .authorizations
            .iter()
            .find(|a| a.allows(ip, identity))
            .map(|a| (a.kind.clone(), a.name.clone()))
            .or_else(|| self.allowed.clone())
            .ok_or(Refusal::Unauthorized);
        (Some((route.kind.as_str(), route.name.as_str())), allowed)
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
            // A Server's routes must name the probes' paths.
            probes: if p.routes.is_empty() {
                self.probes.get(&port).cloned().unwrap_or_default()
            } else {
                Vec::new()
            },
            routes: p.compiled(),
            client: (ip, identity.map(str::to_owned)),
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
    /// The Server's own labels (its metadata's): what a ServerAuthorization's
    /// `server.selector` selects.
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
}

/// Linkerd's older kind, ServerAuthorization (`policy.linkerd.io/v1beta1`): clients let
/// in to the Servers it names or selects.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerAuthorizationSpec {
    pub server: ServerTarget,
    pub client: ClientSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ServerTarget {
    pub name: Option<String>,
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientSpec {
    /// Unset: Linkerd's cluster networks.
    pub networks: Option<Vec<NetworkSpec>>,
    /// Any client, meshed or not.
    pub unauthenticated: bool,
    #[serde(rename = "meshTLS")]
    pub mesh_tls: Option<MeshTlsClient>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct MeshTlsClient {
    /// Any TLS client: here, any meshed one.
    #[serde(rename = "unauthenticatedTLS")]
    pub unauthenticated_tls: bool,
    pub identities: Vec<String>,
    pub service_accounts: Vec<Ref>,
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

/// An HTTPRoute as the inbound policy reads it: its parents and its matches.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteSpec {
    pub parent_refs: Vec<Ref>,
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpRouteRule {
    pub matches: Vec<HttpMatch>,
}

/// A GRPCRoute as the inbound policy reads it: its parents and its matches.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteSpec {
    pub parent_refs: Vec<Ref>,
    pub rules: Vec<GrpcRouteRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcRouteRule {
    pub matches: Vec<GrpcMatch>,
}

/// Gateway API's `GRPCRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GrpcMatch {
    pub method: Option<gateway::gatewayapi::types::GrpcMethodMatch>,
    pub headers: Vec<ValueMatch>,
}

impl GrpcMatch {
    /// The same match on the request's path, `/SERVICE/METHOD`, as the gateway matches a
    /// GRPCRoute ([`gateway::gatewayapi::grpc_method_path`]).
    fn to_http(&self) -> HttpMatch {
        let path = |kind: &str, value: String| ValueMatch {
            kind: Some(kind.into()),
            name: String::new(),
            value: Some(value),
        };
        let path = match gateway::gatewayapi::grpc_method_path(self.method.as_ref()).0 {
            PathMatch::Exact(p) => path("Exact", p),
            // Element-wise here: `/SERVICE/` matches what `/SERVICE/` as a string does.
            PathMatch::Prefix(p) | PathMatch::StringPrefix(p) => path("PathPrefix", p),
            PathMatch::Regex(r) => path("RegularExpression", r),
        };
        HttpMatch {
            path: Some(path),
            method: None,
            headers: self.headers.clone(),
            query_params: Vec::new(),
        }
    }
}

impl GrpcRouteSpec {
    /// As an HTTPRoute on the request's path.
    pub fn to_http(&self) -> HttpRouteSpec {
        HttpRouteSpec {
            parent_refs: self.parent_refs.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| HttpRouteRule {
                    matches: r.matches.iter().map(GrpcMatch::to_http).collect(),
                })
                .collect(),
        }
    }
}

impl HttpRouteSpec {
    /// Whether a parent is the Server `namespace/server` (the route being in
    /// `namespace`).
    fn attached_to(&self, namespace: &str, server: &str) -> bool {
        self.parent_refs.iter().any(|p| {
            p.group.as_deref() == Some(GROUP)
                && p.kind == "Server"
                && p.name == server
                && p.namespace.as_deref().is_none_or(|n| n == namespace)
        })
    }

    /// Whether any parent is a Server: the route is the inbound policy's.
    pub fn has_server_parent(&self) -> bool {
        self.parent_refs
            .iter()
            .any(|p| p.group.as_deref() == Some(GROUP) && p.kind == "Server")
    }
}

/// Linkerd's policy objects, by `namespace/name`, their specs parsed.
#[derive(Debug, Clone, Default)]
pub struct Objects {
    pub servers: BTreeMap<String, ServerSpec>,
    pub authorization_policies: BTreeMap<String, AuthorizationPolicySpec>,
    pub mesh_tls: BTreeMap<String, MeshTlsAuthenticationSpec>,
    pub networks: BTreeMap<String, NetworkAuthenticationSpec>,
    /// `policy.linkerd.io` HTTPRoutes.
    pub http_routes: BTreeMap<String, HttpRouteSpec>,
    /// `gateway.networking.k8s.io` HTTPRoutes whose parent is a Server.
    pub gateway_http_routes: BTreeMap<String, HttpRouteSpec>,
    /// `gateway.networking.k8s.io` GRPCRoutes whose parent is a Server, as HTTPRoutes
    /// on the request's path ([`GrpcRouteSpec::to_http`]).
    pub gateway_grpc_routes: BTreeMap<String, HttpRouteSpec>,
    pub server_authorizations: BTreeMap<String, ServerAuthorizationSpec>,
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
    /// namespace), and the ServerAuthorizations that name or select it, as
    /// authorizations.
    fn authorizations_of(&self, namespace: &str, server: &str) -> Vec<Authorization> {
        let mut list =
            self.authorizations_targeting(namespace, |t| match (t.kind.as_str(), is_core(t)) {
                ("Server", false) => t.name == server,
                ("Namespace", true) => t.name == namespace,
                _ => false,
            });
        let labels = self
            .servers
            .get(&format!("{namespace}/{server}"))
            .map(|s| &s.labels);
        for (k, sa) in &self.server_authorizations {
            let Some((ns, name)) = k.split_once('/') else {
                continue;
            };
            let names_it = match (&sa.server.name, &sa.server.selector) {
                (Some(n), _) => n == server,
                (None, Some(selector)) => labels.is_some_and(|l| k8s::labels::selects(selector, l)),
                (None, None) => false,
            };
            if ns == namespace && names_it {
                list.extend(server_authorization(ns, name, &sa.client));
            }
        }
        list
    }

    /// The AuthorizationPolicies that target the route `namespace/route` of `kind`
    /// (`HTTPRoute` of either group, `GRPCRoute`), as authorizations.
    fn route_authorizations(&self, namespace: &str, kind: &str, route: &str) -> Vec<Authorization> {
        self.authorizations_targeting(namespace, |t| {
            t.kind == kind
                && matches!(
                    t.group.as_deref(),
                    Some(GROUP | "gateway.networking.k8s.io")
                )
                && t.name == route
        })
    }

    fn authorizations_targeting(
        &self,
        namespace: &str,
        targets: impl Fn(&Ref) -> bool,
    ) -> Vec<Authorization> {
        self.authorization_policies
            .iter()
            .filter_map(|(k, ap)| {
                let (ns, name) = k.split_once('/')?;
                let hit = ns == namespace && targets(&ap.target_ref);
                hit.then(|| self.authorization(ns, name, ap)).flatten()
            })
            .collect()
    }

    /// The HTTPRoutes (both kinds) and GRPCRoutes whose parent is the Server
    /// `namespace/server`.
    fn routes_of(&self, namespace: &str, server: &str) -> Vec<InboundRoute> {
        let http = self.http_routes.iter().chain(&self.gateway_http_routes);
        let http = http.map(|r| ("HTTPRoute", r));
        let grpc = self.gateway_grpc_routes.iter().map(|r| ("GRPCRoute", r));
        http.chain(grpc)
            .filter_map(|(kind, (k, spec))| {
                let (ns, name) = k.split_once('/')?;
                (ns == namespace && spec.attached_to(ns, server)).then(|| InboundRoute {
                    kind: kind.into(),
                    name: name.into(),
                    // A rule without matches matches everything.
                    matches: spec
                        .rules
                        .iter()
                        .flat_map(|r| {
                            if r.matches.is_empty() {
                                vec![HttpMatch::default()]
                            } else {
                                r.matches.clone()
                            }
                        })
                        .collect(),
                    authorizations: self.route_authorizations(ns, kind, name),
                })
            })
            .collect()
    }
}

/// A ServerAuthorization's client as an authorization; `None` when it lets nobody in (no
/// client kind, or a network that is not one).
fn server_authorization(namespace: &str, name: &str, c: &ClientSpec) -> Option<Authorization> {
    let networks = match &c.networks {
        None => Network::cluster(),
        Some(list) => list
            .iter()
            .map(|n| {
                Some(Network {
                    cidr: n.cidr.parse().ok()?,
                    except: n.except.iter().filter_map(|e| e.parse().ok()).collect(),
                })
            })
            .collect::<Option<_>>()?,
    };
    let identities = match (&c.mesh_tls, c.unauthenticated) {
        (_, true) => None,
        (Some(m), false) if m.unauthenticated_tls => Some(vec!["*".to_string()]),
        (Some(m), false) => Some(
            m.identities
                .iter()
                .filter_map(|i| identity_pattern(i))
                .chain(m.service_accounts.iter().map(|sa| {
                    let ns = sa.namespace.as_deref().unwrap_or(namespace);
                    format!("ns/{ns}/sa/{}", sa.name)
                }))
                .collect(),
        ),
        (None, false) => return None,
    };
    Some(Authorization {
        kind: "serverauthorization".into(),
        name: name.into(),
        networks,
        identities,
    })
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
                routes: objects.routes_of(ns, name),
                compiled: CompiledRoutes::default(),
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
            denied.request(&req("GET", "/ready")),
            Ok(("probe".into(), "probe".into()))
        );
        assert_eq!(
            denied.request(&req("POST", "/ready")),
            Err(Refusal::Unauthorized)
        );
        assert_eq!(
            denied.request(&req("GET", "/data")),
            Err(Refusal::Unauthorized)
        );
        // A port no Server selects: the default policy.
        let admin = p.authorize(9000, ip("192.0.2.1"), None);
        assert_eq!(
            (admin.server_kind.as_str(), admin.server_name.as_str()),
            ("default", "all-unauthenticated")
        );
        assert!(admin.allowed.is_some());
        assert_eq!(admin.probes, ["/live"]);
    }

    fn req(method: &str, uri: &str) -> http::Request<()> {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    }

    /// HTTPRoutes on a Server: a request must match one; its route's policies let
    /// clients in besides the Server's; probes are no longer let in by themselves.
    #[test]
    fn routes_on_a_server_split_its_requests_and_authorize_their_own_clients() {
        let mut o = objects();
        o.authorization_policies.remove("demo/office");
        let server = json!([{"group": "policy.linkerd.io", "kind": "Server", "name": "api-http"}]);
        o.http_routes.insert(
            "demo/reads".into(),
            parse(json!({"parentRefs": server, "rules": [{"matches": [
                {"path": {"type": "PathPrefix", "value": "/books"}, "method": "GET"},
                {"path": {"type": "Exact", "value": "/search"},
                 "headers": [{"name": "x-team", "value": "books"}]},
            ]}]})),
        );
        o.gateway_http_routes.insert(
            "demo/health".into(),
            parse(json!({"parentRefs": server, "rules": [{"matches": [
                {"path": {"type": "Exact", "value": "/ready"}},
            ]}]})),
        );
        // Another Server's route, and a route on a Service: not this Server's.
        o.http_routes.insert(
            "demo/elsewhere".into(),
            parse(json!({"parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": "elsewhere"}],
                "rules": [{}]})),
        );
        o.authorization_policies.insert(
            "demo/office-reads".into(),
            parse(json!({"targetRef": {"group": "policy.linkerd.io", "kind": "HTTPRoute", "name": "reads"},
                "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "office"}]})),
        );
        let p = resolve(&pod(), None, &o);
        let names: Vec<&str> = p.ports[&8080]
            .routes
            .iter()
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(names, ["reads", "health"]);

        // `web` is let in by the Server's policy, on any route; off the routes, 404.
        let web = p.authorize(8080, ip("10.2.0.5"), Some(WEB));
        let by_web = Ok(("authorizationpolicy".to_string(), "web".to_string()));
        assert_eq!(web.request(&req("GET", "/books/1")), by_web);
        assert_eq!(web.request(&req("GET", "/ready")), by_web);
        assert_eq!(web.request(&req("GET", "/other")), Err(Refusal::NoRoute));
        assert_eq!(
            web.request(&req("DELETE", "/books/1")),
            Err(Refusal::NoRoute)
        );
        assert_eq!(
            web.request(&req("GET", "/booksellers")),
            Err(Refusal::NoRoute)
        );

        // The office's clients by the route's policy, on that route alone; never a
        // connection by itself.
        let office = p.authorize(8080, ip("10.1.2.3"), None);
        assert_eq!(office.allowed, None);
        let by_route = Ok((
            "authorizationpolicy".to_string(),
            "office-reads".to_string(),
        ));
        assert_eq!(office.request(&req("GET", "/books?page=2")), by_route);
        let mut search = req("GET", "/search");
        assert_eq!(office.request(&search), Err(Refusal::NoRoute));
        search
            .headers_mut()
            .insert("x-team", http::HeaderValue::from_static("books"));
        assert_eq!(office.request(&search), by_route);
        // The probe path: on a route with no policy, refused; no longer a probe.
        assert!(office.probes.is_empty());
        assert_eq!(
            office.request(&req("GET", "/ready")),
            Err(Refusal::Unauthorized)
        );
        // Elsewhere: refused.
        let stranger = p.authorize(8080, ip("192.0.2.7"), None);
        assert_eq!(
            stranger.request(&req("GET", "/books")),
            Err(Refusal::Unauthorized)
        );
        // Through JSON and back, as discovery sends it.
        let again: InboundPolicy =
            serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
        let office = again.authorize(8080, ip("10.1.2.3"), None);
        assert_eq!(office.request(&req("GET", "/books")), by_route);
    }

    /// ServerAuthorizations, by the Server's name or a selector of its labels; their
    /// clients by ServiceAccount, identity, unauthenticated TLS, network, or anyone.
    #[test]
    fn server_authorizations_name_or_select_servers() {
        let mut o = objects();
        o.authorization_policies.clear();
        o.servers.get_mut("demo/api-http").unwrap().labels =
            BTreeMap::from([("tier".to_string(), "api".to_string())]);
        let sa = |v: serde_json::Value| -> ServerAuthorizationSpec { parse(v) };
        o.server_authorizations.insert(
            "demo/by-name".into(),
            sa(json!({"server": {"name": "api-http"},
                "client": {"meshTLS": {"serviceAccounts": [{"name": "other"}]}}})),
        );
        o.server_authorizations.insert(
            "demo/by-label".into(),
            sa(
                json!({"server": {"selector": {"matchLabels": {"tier": "api"}}},
                "client": {"networks": [{"cidr": "192.0.2.0/24"}], "unauthenticated": true}}),
            ),
        );
        o.server_authorizations.insert(
            "demo/elsewhere".into(),
            sa(json!({"server": {"name": "other-server"}, "client": {"unauthenticated": true}})),
        );
        o.server_authorizations.insert(
            "demo/nobody".into(),
            sa(json!({"server": {"name": "api-http"}, "client": {}})),
        );
        let p = resolve(&pod(), None, &o);
        let by = |n: &str| Some(("serverauthorization".to_string(), n.to_string()));
        assert_eq!(
            p.authorize(8080, ip("10.2.0.5"), Some(OTHER)).allowed,
            by("by-name")
        );
        assert_eq!(p.authorize(8080, ip("10.2.0.5"), Some(WEB)).allowed, None);
        assert_eq!(
            p.authorize(8080, ip("192.0.2.9"), None).allowed,
            by("by-label")
        );
        assert_eq!(p.authorize(8080, ip("10.2.0.5"), None).allowed, None);
        // Any meshed client over TLS; networks unset: the cluster's.
        o.server_authorizations.insert(
            "demo/by-name".into(),
            sa(json!({"server": {"name": "api-http"},
                "client": {"meshTLS": {"unauthenticatedTLS": true}}})),
        );
        let p = resolve(&pod(), None, &o);
        assert_eq!(
            p.authorize(8080, ip("10.2.0.5"), Some(WEB)).allowed,
            by("by-name")
        );
        assert_eq!(
            p.authorize(8080, ip("203.0.113.1"), Some(WEB)).allowed,
            None
        );
    }

    /// GRPCRoutes on a Server, matched on the request's path; their own policies.
    #[test]
    fn grpc_routes_on_a_server_match_services_and_methods() {
        let mut o = objects();
        o.authorization_policies.clear();
        let grpc: GrpcRouteSpec = parse(json!({
        "parentRefs": [{"group": "policy.linkerd.io", "kind": "Server", "name": "api-http"}],
        "rules": [{"matches": [
            {"method": {"service": "demo.Echo", "method": "Say"}},
            {"method": {"service": "grpc.health.v1.Health"}},
            {"method": {"method": "Peek.Now"}},
            {"method": {"type": "RegularExpression", "service": "demo\\.Adm.*"}},
        ]}]}));
        o.gateway_grpc_routes
            .insert("demo/echo".into(), grpc.to_http());
        o.authorization_policies.insert(
            "demo/office-echo".into(),
            parse(json!({"targetRef": {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute", "name": "echo"},
                "requiredAuthenticationRefs": [{"group": "policy.linkerd.io", "kind": "NetworkAuthentication", "name": "office"}]})),
        );
        let p = resolve(&pod(), None, &o);
        assert_eq!(p.ports[&8080].routes[0].kind, "GRPCRoute");
        let office = p.authorize(8080, ip("10.1.2.3"), None);
        let by_route = Ok(("authorizationpolicy".to_string(), "office-echo".to_string()));
        for path in [
            "/demo.Echo/Say",
            "/grpc.health.v1.Health/Check",
            "/any.Service/Peek.Now",
            "/demo.Admin/Reset",
        ] {
            assert_eq!(office.request(&req("POST", path)), by_route, "{path}");
        }
        for path in [
            "/demo.Echo/Fail",
            "/any.Service/PeekxNow",
            "/demo.Echo/Say/more",
        ] {
            assert_eq!(
                office.request(&req("POST", path)),
                Err(Refusal::NoRoute),
                "{path}"
            );
        }
        let stranger = p.authorize(8080, ip("192.0.2.7"), None);
        assert_eq!(
            stranger.request(&req("POST", "/demo.Echo/Say")),
            Err(Refusal::Unauthorized)
        );
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
