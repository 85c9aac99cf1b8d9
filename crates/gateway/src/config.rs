//! The routing configuration the data plane serves: pure data, compiled by the controller
//! from Ingresses, Gateway API objects and Emissary Mappings.
//!
//! The controller resolves everything the data plane should not have to think about: route
//! precedence (routes are listed in the order they are tried), Service names to endpoint
//! addresses, Secrets to certificates, and invalid references to fixed responses. The data
//! plane may index the configuration for speed but must answer exactly as a first-match walk
//! over it would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

/// Everything the gateway serves. One listener per port.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
}

/// A port the gateway listens on (on every address of the pod) and what it serves there.
#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    /// Where the proxy listens in the pod.
    pub port: u16,
    /// The port clients connect to, on the Service in front: what redirects keep, logs and
    /// metrics name. A Gateway's listeners are bound to ports of their own in the pod
    /// (each Gateway has its own Service and address), so this may differ from `port`.
    pub public_port: u16,
    pub kind: ListenerKind,
    /// Expect a PROXY protocol v2 header on each accepted connection and take the client's
    /// address from it.
    pub proxy_protocol: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ListenerKind {
    /// Clear-text HTTP: HTTP/1.1, and HTTP/2 by prior knowledge or `Upgrade: h2c`.
    Http(HttpHosts),
    /// TLS. A ClientHello whose SNI matches a passthrough route is forwarded as raw TCP;
    /// otherwise TLS ends here with the certificate chosen by SNI, and HTTP/1.1 or HTTP/2
    /// (by ALPN) is routed over `hosts`.
    Tls {
        passthrough: Vec<SniRoute>,
        certificates: Vec<Certificate>,
        hosts: HttpHosts,
    },
    /// Raw TCP to the backends (TCPRoute).
    Tcp(Vec<WeightedBackend>),
    /// UDP datagrams to the backends (UDPRoute), a flow per client address and port.
    Udp(Vec<WeightedBackend>),
}

/// HTTP virtual hosts. The hosts that match a request's `Host` (or `:authority`, without
/// port) are tried most specific first: those with the exact name, then wildcards by
/// longest suffix, then [`HostMatch::Any`]; hosts equally specific in the order listed.
/// The first route that matches, in the first host that has one, answers: a request no
/// route of `a.example.com` takes falls through to `*.example.com`, then to any host. No
/// matching route in any of them answers 404.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpHosts {
    pub hosts: Vec<VirtualHost>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VirtualHost {
    pub hostnames: Vec<HostMatch>,
    /// The hostname of the Gateway API listener these routes attached to (`Any` for a
    /// listener without one); `None` for Ingress and Mapping routes. A request is served
    /// only by the listener whose hostname matches it most specifically, so a host with a
    /// scope is tried only when its scope is the most specific one of this port that
    /// matches the request (listener isolation); hosts without a scope always are.
    pub scope: Option<HostMatch>,
    /// This host's own routes, tried in order; the routes of less specific hosts that also
    /// match come after them by the fall-through, not by copies here.
    pub routes: Vec<Route>,
}

/// A host pattern, compared case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Exact(String),
    /// `*.example.com` is `Wildcard { suffix: ".example.com", one_label }`. Ingress lets the
    /// `*` stand for exactly one label (`one_label: true`); Gateway API for one or more.
    Wildcard {
        suffix: String,
        one_label: bool,
    },
    Any,
}

/// Where a route came from: named in metrics, access logs and errors.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteName {
    /// `Ingress`, `HTTPRoute`, `GRPCRoute`, `Mapping`, ...
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The rule's index within the object (Ingress: the path's index across rules).
    pub rule: usize,
}

/// One match of a rule and what to do with what it matches. A rule with several matches
/// becomes several routes, each at its own place in the precedence order.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub name: RouteName,
    pub matches: RouteMatch,
    pub action: Action,
}

/// Every condition must hold.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// The whole path, case-sensitive.
    Exact(String),
    /// Element-wise on `/` (Ingress `Prefix`, Gateway API `PathPrefix`): `/foo` matches
    /// `/foo` and `/foo/bar` but not `/foobar`; a trailing `/` on the prefix is ignored.
    Prefix(String),
    /// A plain string prefix (Envoy's `prefix`, Emissary's Mapping `prefix`).
    StringPrefix(String),
    /// A regular expression that must match the whole path (RE2 syntax).
    Regex(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    pub name: HeaderName,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq)]
pub struct QueryMatch {
    pub name: String,
    pub value: StringMatch,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StringMatch {
    Exact(String),
    /// Must match the whole value.
    Regex(String),
    Present,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Forward(Box<Forward>),
    /// Gateway API `RequestRedirect`: answer with a redirect, never forward.
    Redirect(Redirect),
    /// A fixed answer, e.g. 500 when every backend reference of a rule is invalid.
    Respond(StatusCode),
}

/// Forward to backends, after the filters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forward {
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub rewrite: Rewrite,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<Cors>,
    /// Chosen per request by weight. All weights zero, or no backend, answers 500.
    pub backends: Vec<WeightedBackend>,
    /// Whole request, first byte in to last byte out.
    pub request_timeout: Option<Duration>,
    /// Each attempt at a backend.
    pub backend_timeout: Option<Duration>,
    pub retry: Option<Retry>,
    /// Emissary: set `X-Envoy-External-Address` to the client's address.
    pub external_address_header: bool,
    /// Faults to inject (an `HTTPFault` filter): served by the mesh's proxies only.
    pub fault: Option<Fault>,
}

/// Injected faults, each on a share of the requests: a delay before forwarding, then
/// an answer instead of forwarding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// `(status, percent)`.
    pub abort: Option<(StatusCode, f64)>,
    /// `(delay, percent)`.
    pub delay: Option<(Duration, f64)>,
}

/// Header changes, applied in this order: remove, set, add.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderEdits {
    pub remove: Vec<HeaderName>,
    /// Replaces every value of the header.
    pub set: Vec<(HeaderName, Template)>,
    /// Appends a value.
    pub add: Vec<(HeaderName, Template)>,
}

/// A header value with Envoy's `%...%` command operators already parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(pub Vec<Piece>);

#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Literal(String),
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`.
    Protocol,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client's address and port.
    RemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`.
    RemoteAddressWithoutPort,
    /// `%REQ(name)%`: the request header's value, empty when it is absent.
    RequestHeader(HeaderName),
    /// `%START_TIME%` or `%START_TIME(format)%`, strftime-like.
    StartTime(Option<String>),
}

impl Template {
    /// A template with no operators.
    pub fn literal(value: impl Into<String>) -> Self {
        Self(vec![Piece::Literal(value.into())])
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    /// Replaces the `Host` header (`:authority`).
    pub hostname: Option<String>,
    pub path: Option<PathRewrite>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PathRewrite {
    /// The whole path becomes this; the query string stays.
    Full(String),
    /// The route's matched prefix is replaced (Gateway API `ReplacePrefixMatch`, Emissary
    /// `rewrite` on a `prefix`).
    ReplacePrefix { prefix: String, replacement: String },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    /// None keeps the request's port, unless the scheme changes (then the scheme's default).
    pub port: Option<u16>,
    pub path: Option<PathRewrite>,
    /// 301 or 302 (Gateway API allows these two in core).
    pub status: StatusCode,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    pub backend: Arc<Backend>,
    /// Share of requests mirrored, 0..=100.
    pub percent: f64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cors {
    /// Origins, with `*` wildcards as Gateway API allows.
    pub allow_origins: Vec<String>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    pub allow_credentials: bool,
    pub max_age: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Retry {
    /// Attempts after the first.
    pub attempts: u32,
    /// Retry on these statuses; connection failures and resets are always retried.
    pub statuses: Vec<StatusCode>,
    pub backoff: Option<Duration>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct WeightedBackend {
    /// 0..=1_000_000.
    pub weight: u32,
    /// `None` is a reference the controller could not resolve: its share answers 500.
    pub backend: Option<Arc<Backend>>,
}

/// A Service port with its ready endpoints. Routes naming the same Service port share one
/// `Arc<Backend>` (unless a route changes its settings: TLS, protocol, limits); the data
/// plane shares a connection pool and limits between equal `Backend` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    /// Ready endpoints (EndpointSlices), balanced by the gateway itself. Empty answers 503.
    pub endpoints: Arc<[SocketAddr]>,
    pub protocol: BackendProtocol,
    pub tls: Option<BackendTls>,
    /// Envoy's circuit breakers; over a limit answers 503.
    pub limits: Limits,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendProtocol {
    /// HTTP/1.1, or raw bytes on TCP/TLS-passthrough/UDP listeners.
    #[default]
    Http1,
    /// HTTP/2 in clear text (`appProtocol: kubernetes.io/h2c`, gRPC).
    H2c,
    /// WebSocket-capable HTTP/1.1 (`appProtocol: kubernetes.io/ws`).
    WebSocket,
}

/// BackendTLSPolicy: TLS to the backend, verified against these CAs for this name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BackendTls {
    pub hostname: String,
    /// PEM bundles; empty means the system's roots.
    pub ca_pem: Vec<Arc<[u8]>>,
}

/// Envoy's defaults are 1024 connections, pending and requests, and 3 retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_retries: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// A certificate chain and key (a `kubernetes.io/tls` Secret), served to clients whose SNI
/// matches. The first certificate with no hostnames is the default.
#[derive(Clone, Debug, PartialEq)]
pub struct Certificate {
    pub hostnames: Vec<HostMatch>,
    pub chain_pem: Arc<[u8]>,
    pub key_pem: Arc<[u8]>,
}

/// TLS passthrough: connections whose SNI matches go, still encrypted, to the backends.
#[derive(Clone, Debug, PartialEq)]
pub struct SniRoute {
    pub name: RouteName,
    pub hostnames: Vec<HostMatch>,
    pub backends: Vec<WeightedBackend>,
}
