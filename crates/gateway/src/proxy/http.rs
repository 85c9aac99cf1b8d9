//! One HTTP request: route it, apply the route's filters, forward it (with retries and
//! timeouts) or answer it, and pass the response back.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::ConnCtx;
use super::metrics::Series;
use super::route::{RequestView, Router, normalize_host, trim_prefix};
use std::collections::{HashMap, HashSet};

use super::upstream::{BackendKey, Body, BoxError, Overflow, Upstream, Upstreams, caused_by};
use crate::config::{
    Action, Cors, Forward, HeaderEdits, HttpHosts, PathMatch, PathRewrite, Piece, Redirect,
    Template,
};

/// Request bodies up to this size are kept so that a failed attempt can be retried.
const RETRY_BODY_LIMIT: u64 = 64 * 1024;
/// Attempts when endpoints drop idempotent requests, with or without a retry policy.
const CONNECT_ATTEMPTS: u32 = 3;
/// Endpoints tried at most when each refuses the connection (the request never left).
const CONNECT_TRIES: usize = 8;

/// The routes of one HTTP (or TLS-terminating) listener, ready to serve.
#[derive(Debug, Default)]
pub(crate) struct HttpTable {
    router: Router,
    /// Per virtual host, per route.
    routes: Vec<Vec<RouteRt>>,
}

#[derive(Debug)]
pub(crate) struct RouteRt {
    /// `kind/namespace/name/rule`, for metrics and logs.
    pub label: String,
    /// Made at the route's first request: a route's series are ~1 KiB, and most of
    /// 10,000 routes may never be asked for.
    series: std::sync::OnceLock<Series>,
    /// The route matched a string prefix (Envoy's `prefix`): prefix rewrites replace
    /// strings, not path elements.
    string_prefix: bool,
    action: ActionRt,
}

#[derive(Debug)]
enum ActionRt {
    Forward(Box<ForwardRt>),
    Redirect(Box<Redirect>),
    Respond(StatusCode),
}

#[derive(Debug)]
struct ForwardRt {
    /// Shared by routes with the same settings (most have the defaults).
    config: Arc<Forward>,
    /// `(cumulative weight, backend)`; `None` is an invalid reference.
    backends: Vec<(u64, Option<Arc<Upstream>>)>,
    total_weight: u64,
    mirrors: Vec<(Arc<Upstream>, f64)>,
    /// Whether a template reads the client's headers (`%REQ(...)%`): only then are they
    /// copied before the edits.
    reads_request_headers: bool,
}

impl HttpTable {
    /// Compiles `hosts`, taking backend state from `upstreams`; records the backends used.
    pub(crate) fn new(
        hosts: &HttpHosts,
        upstreams: &Upstreams,
        used: &mut HashSet<BackendKey>,
    ) -> Self {
        // Routes to one Service port share one `Arc<Backend>` (the compile's), so each is
        // looked up once: at 10,000 routes to a few Services, the lookups were most of a
        // reconfiguration.
        let mut seen: HashMap<*const crate::config::Backend, Arc<Upstream>> = HashMap::new();
        let mut get = |b: &crate::config::Backend| {
            if let Some(u) = seen.get(&std::ptr::from_ref(b)) {
                return Arc::clone(u);
            }
            let u = upstreams.get(b);
            if !used.contains(&u.key) {
                used.insert(u.key.clone());
            }
            seen.insert(std::ptr::from_ref(b), Arc::clone(&u));
            u
        };
        let default = Arc::new(Forward::default());
        let mut last = Arc::clone(&default);
        let routes = hosts
            .hosts
            .iter()
            .map(|vh| {
                vh.routes
                    .iter()
                    .map(|r| {
                        let label = format!(
                            "{}/{}/{}/{}",
                            r.name.kind, r.name.namespace, r.name.name, r.name.rule
                        );
                        (r, label)
                    })
                    .map(|(r, label)| RouteRt {
                        series: std::sync::OnceLock::new(),
                        label,
                        string_prefix: matches!(r.matches.path, PathMatch::StringPrefix(_)),
                        action: match &r.action {
                            Action::Respond(s) => ActionRt::Respond(*s),
                            Action::Redirect(rd) => ActionRt::Redirect(Box::new(rd.clone())),
                            Action::Forward(f) => {
                                let mut total = 0u64;
                                let backends = f
                                    .backends
                                    .iter()
                                    .map(|wb| {
                                        total += u64::from(wb.weight);
                                        (total, wb.backend.as_deref().map(&mut get))
                                    })
                                    .collect();
                                let mirrors = f
                                    .mirrors
                                    .iter()
                                    .map(|m| (get(&m.backend), m.percent))
                                    .collect();
                                let config = Forward {
                                    backends: Vec::new(),
                                    mirrors: Vec::new(),
                                    ..(**f).clone()
                                };
                                let config = if config == *last {
                                    Arc::clone(&last)
                                } else if config == *default {
                                    Arc::clone(&default)
                                } else {
                                    Arc::new(config)
                                };
                                last = Arc::clone(&config);
                                let reads_request_headers =
                                    [&f.request_headers, &f.response_headers]
                                        .iter()
                                        .flat_map(|e| e.set.iter().chain(&e.add))
                                        .flat_map(|(_, t)| &t.0)
                                        .any(|p| matches!(p, Piece::RequestHeader(_)));
                                ActionRt::Forward(Box::new(ForwardRt {
                                    reads_request_headers,
                                    config,
                                    backends,
                                    total_weight: total,
                                    mirrors,
                                }))
                            }
                        },
                    })
                    .collect()
            })
            .collect();
        Self {
            router: Router::new(hosts),
            routes,
        }
    }
}

/// A random number (xorshift per thread, seeded from the OS through `RandomState`).
pub(crate) fn random() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(1);
            h.finish() | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

fn empty() -> Body {
    Empty::new()
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(full(format!("{}\n", code.canonical_reason().unwrap_or(""))));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// What templates and logs need to know about the request.
pub struct Facts<'a> {
    pub remote: SocketAddr,
    pub protocol: &'static str,
    pub start: SystemTime,
    pub headers: &'a HeaderMap,
}

fn render(t: &Template, f: &Facts<'_>) -> String {
    let mut out = String::new();
    for piece in &t.0 {
        match piece {
            Piece::Literal(s) => out.push_str(s),
            Piece::Protocol => out.push_str(f.protocol),
            Piece::RemoteAddress => {
                let _ = write!(out, "{}", f.remote);
            }
            Piece::RemoteAddressWithoutPort => {
                let _ = write!(out, "{}", f.remote.ip());
            }
            Piece::RequestHeader(name) => {
                if let Some(v) = f.headers.get(name).and_then(|v| v.to_str().ok()) {
                    out.push_str(v);
                }
            }
            Piece::StartTime(format) => {
                let since = f
                    .start
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let t =
                    chrono::DateTime::from_timestamp(since.as_secs() as i64, since.subsec_nanos())
                        .unwrap_or_default();
                let len = out.len();
                // Envoy's default format; a format chrono cannot write falls back to it.
                let default = "%Y-%m-%dT%H:%M:%S%.3fZ";
                if write!(out, "{}", t.format(format.as_deref().unwrap_or(default))).is_err() {
                    out.truncate(len);
                    let _ = write!(out, "{}", t.format(default));
                }
            }
        }
    }
    out
}

/// Applies `edits` (remove, set, add) to `headers`.
pub fn edit_headers(headers: &mut HeaderMap, edits: &HeaderEdits, f: &Facts<'_>) {
    for name in &edits.remove {
        headers.remove(name);
    }
    for (name, t) in &edits.set {
        if let Ok(v) = HeaderValue::from_str(&render(t, f)) {
            headers.insert(name.clone(), v);
        }
    }
    for (name, t) in &edits.add {
        if let Ok(v) = HeaderValue::from_str(&render(t, f)) {
            headers.append(name.clone(), v);
        }
    }
}

/// Headers that belong to one hop (RFC 9110 7.6.1), plus those `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        HeaderName::from_static("http2-settings"),
    ] {
        headers.remove(n);
    }
}

/// The `Upgrade` protocol of an HTTP/1.1 upgrade request (WebSocket...), not `h2c`: this
/// proxy ignores `Upgrade: h2c` and answers in HTTP/1.1, which RFC 9110 allows.
fn upgrade_of(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let up = req.headers().get(header::UPGRADE)?;
    (connection_upgrade && !up.as_bytes().eq_ignore_ascii_case(b"h2c")).then(|| up.clone())
}

pub fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The request's path with `rewrite` applied (the query stays).
pub fn rewrite_path(path: &str, rewrite: &PathRewrite, string_prefix: bool) -> String {
    match rewrite {
        PathRewrite::Full(p) => p.clone(),
        PathRewrite::ReplacePrefix {
            prefix,
            replacement,
        } => {
            if string_prefix {
                // Envoy's `prefix_rewrite`: a plain string replacement.
                return match path.strip_prefix(prefix.as_str()) {
                    Some(rest) => format!("{replacement}{rest}"),
                    None => path.to_owned(),
                };
            }
            // Gateway API: element-wise; `/foo` → `/bar` takes `/foo/x` to `/bar/x`.
            let p = trim_prefix(prefix);
            if !super::route::prefix_matches(p, path) {
                return path.to_owned();
            }
            let rest = &path[p.len()..];
            let r = trim_prefix(replacement);
            match (r.is_empty(), rest.is_empty()) {
                (true, true) => "/".to_owned(),
                (true, false) => rest.to_owned(),
                (false, _) => format!("{r}{rest}"),
            }
        }
    }
}

/// `path` with `uri`'s query.
pub fn with_path(uri: &Uri, path: &str) -> String {
    match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

fn redirect(
    rd: &Redirect,
    req: &Request<Incoming>,
    host: &str,
    tls: bool,
    port: u16,
    string_prefix: bool,
) -> Response<Body> {
    let location = redirect_location(rd, req.uri(), host, tls, port, string_prefix);
    let mut r = Response::new(empty());
    *r.status_mut() = rd.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Where `rd` sends a request for `uri` that came for `host` on `port` (over TLS or not).
pub fn redirect_location(
    rd: &Redirect,
    uri: &Uri,
    host: &str,
    tls: bool,
    port: u16,
    string_prefix: bool,
) -> String {
    let scheme_in = if tls { "https" } else { "http" };
    let scheme = rd.scheme.as_deref().unwrap_or(scheme_in);
    let host = rd.hostname.as_deref().unwrap_or(host);
    let port = match rd.port {
        Some(p) => Some(p),
        None if rd.scheme.as_deref().is_some_and(|s| s != scheme_in) => None,
        None => Some(port),
    };
    let default_port = match scheme {
        "https" => 443,
        _ => 80,
    };
    let path = match &rd.path {
        Some(rw) => rewrite_path(uri.path(), rw, string_prefix),
        None => uri.path().to_owned(),
    };
    let mut location = format!("{scheme}://");
    if host.contains(':') {
        let _ = write!(location, "[{host}]");
    } else {
        location.push_str(host);
    }
    if let Some(p) = port.filter(|&p| p != default_port) {
        let _ = write!(location, ":{p}");
    }
    location.push_str(&with_path(uri, &path));
    location
}

/// `origin` against a pattern with `*` wildcards.
fn origin_matches(pattern: &str, origin: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern.eq_ignore_ascii_case(origin);
    }
    let origin = origin.to_ascii_lowercase();
    let mut rest = origin.as_str();
    for (i, part) in parts.iter().enumerate() {
        let part = part.to_ascii_lowercase();
        if i == 0 {
            let Some(r) = rest.strip_prefix(part.as_str()) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part.as_str());
        } else {
            let Some(at) = rest.find(part.as_str()) else {
                return false;
            };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

fn cors_allowed<'a>(cors: &Cors, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let o = origin.to_str().ok()?;
    cors.allow_origins
        .iter()
        .any(|p| origin_matches(p, o))
        .then_some(origin)
}

fn cors_headers(cors: &Cors, origin: &HeaderValue, out: &mut HeaderMap) {
    let wildcard = cors.allow_origins.iter().any(|o| o == "*") && !cors.allow_credentials;
    out.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        if wildcard {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        },
    );
    if cors.allow_credentials {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers.join(", "))
    {
        out.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    if !wildcard {
        out.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

/// The answer to a CORS preflight from an allowed origin. With credentials, `*` is not a
/// wildcard to browsers (Fetch), so a `*` in `allowMethods` / `allowHeaders` answers with
/// what the preflight asks for (`Access-Control-Request-Method` / `-Headers`), as Gateway
/// API requires.
fn cors_preflight(cors: &Cors, origin: &HeaderValue, req: &HeaderMap) -> Response<Body> {
    let mut r = Response::new(empty());
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    cors_headers(cors, origin, h);
    for (name, list, asked) in [
        (
            header::ACCESS_CONTROL_ALLOW_METHODS,
            &cors.allow_methods,
            header::ACCESS_CONTROL_REQUEST_METHOD,
        ),
        (
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            &cors.allow_headers,
            header::ACCESS_CONTROL_REQUEST_HEADERS,
        ),
    ] {
        if cors.allow_credentials && list.iter().any(|m| m == "*") {
            if let Some(v) = req.get(&asked) {
                h.insert(name, v.clone());
            }
            continue;
        }
        if !list.is_empty()
            && let Ok(v) = HeaderValue::from_str(&list.join(", "))
        {
            h.insert(name, v);
        }
    }
    if let Some(age) = cors.max_age
        && let Ok(v) = HeaderValue::from_str(&age.as_secs().to_string())
    {
        h.insert(header::ACCESS_CONTROL_MAX_AGE, v);
    }
    r
}

/// What happened to a request, for metrics and the access log.
struct Outcome<'a> {
    route: Option<&'a RouteRt>,
    upstream: Option<&'a Upstream>,
    endpoint: Option<SocketAddr>,
    /// Why the proxy answered itself (Envoy's response flags, in words).
    flag: &'static str,
}

/// Serves one request on a connection.
pub(crate) async fn handle(
    conn: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let start = SystemTime::now();
    conn.inflight.fetch_add(1, Ordering::AcqRel);
    let table = conn.port.http_table();
    let method = req.method().clone();
    let path_log = conn
        .shared
        .options
        .access_log
        .then(|| req.uri().path().to_owned());
    let version = req.version();
    let mut outcome = Outcome {
        route: None,
        upstream: None,
        endpoint: None,
        flag: "-",
    };
    let response = respond(&conn, &table, req, start, &mut outcome).await;
    let code = response.status();
    conn.inflight.fetch_sub(1, Ordering::AcqRel);
    let elapsed = started.elapsed();
    let shared = &conn.shared;
    conn.port.series.observe(code, elapsed);
    if let Some(r) = outcome.route {
        r.series
            .get_or_init(|| shared.metrics.route(&r.label))
            .observe(code, elapsed);
    }
    if let Some(u) = outcome.upstream {
        u.series.requests.observe(code, elapsed);
    }
    if shared.options.access_log {
        tracing::info!(
            target: "gateway::access",
            start_time = %chrono::DateTime::<chrono::Utc>::from(start).format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            method = %method,
            path = path_log.as_deref().unwrap_or("-"),
            protocol = protocol_name(version),
            response_code = code.as_u16(),
            response_flags = outcome.flag,
            duration_ms = elapsed.as_millis() as u64,
            downstream_remote_address = %conn.remote,
            listener_port = conn.port.port,
            route = outcome.route.map_or("-", |r| r.label.as_str()),
            upstream_cluster = outcome.upstream.map_or("-", |u| u.name.as_str()),
            upstream_host = %outcome.endpoint.map_or_else(|| "-".to_owned(), |e| e.to_string()),
        );
    }
    Ok(response)
}

async fn respond<'t>(
    conn: &Arc<ConnCtx>,
    table: &'t Option<Arc<HttpTable>>,
    req: Request<Incoming>,
    start: SystemTime,
    outcome: &mut Outcome<'t>,
) -> Response<Body> {
    let Some(table) = table.as_deref() else {
        outcome.flag = "NR";
        return status(StatusCode::NOT_FOUND);
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let host = normalize_host(&authority);
    // HTTP/2 connections are reused for every host their certificate covers (RFC 9113
    // 9.1.1): a request for a host another listener's certificate serves came on the
    // wrong connection, and the client should open one for that host (Gateway API's
    // GatewayHTTPSListenerDetectMisdirectedRequests).
    if req.version() == Version::HTTP_2 && conn.sni_cert.get().is_some_and(|c| c.misdirected(&host))
    {
        outcome.flag = "MR";
        return status(StatusCode::MISDIRECTED_REQUEST);
    }
    let view = RequestView {
        host: &host,
        method: req.method(),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let Some((v, r)) = table.router.find(&view) else {
        outcome.flag = "NR";
        return status(StatusCode::NOT_FOUND);
    };
    let route = &table.routes[v][r];
    outcome.route = Some(route);
    match &route.action {
        ActionRt::Respond(code) => {
            outcome.flag = "DC";
            status(*code)
        }
        ActionRt::Redirect(rd) => {
            outcome.flag = "RD";
            redirect(
                rd,
                &req,
                &host,
                conn.tls,
                conn.port.public_port(),
                route.string_prefix,
            )
        }
        ActionRt::Forward(fw) => forward(conn, route, fw, req, start, outcome).await,
    }
}

/// An error reading the client's request body (bad chunking, a connection lost): 400.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body")]
struct ClientBody(#[source] hyper::Error);

/// A request body that paused longer than `--body-read-timeout`: 408.
#[derive(Debug, thiserror::Error)]
#[error("the client paused its request body longer than the body read timeout")]
struct BodyTimeout;

/// A body whose every pause is bounded (nginx's `client_body_timeout`: between two
/// reads, not for the whole body), so a client that trickles a body cannot hold a
/// connection and a backend connection for ever.
struct PauseLimited<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<B> http_body::Body for PauseLimited<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = self.get_mut();
        match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A request body as attempts need it.
enum ReqBody {
    /// Whole, so it can be sent again.
    Buffered(Bytes),
    /// Streamed once; no retry after it was taken.
    Stream(Option<Body>),
}

impl ReqBody {
    fn take(&mut self) -> Option<Body> {
        match self {
            ReqBody::Buffered(b) => Some(full(b.clone())),
            ReqBody::Stream(s) => s.take(),
        }
    }
    fn replayable(&self) -> bool {
        matches!(self, ReqBody::Buffered(_))
    }
}

async fn forward<'t>(
    conn: &Arc<ConnCtx>,
    route: &'t RouteRt,
    fw: &'t ForwardRt,
    mut req: Request<Incoming>,
    start: SystemTime,
    outcome: &mut Outcome<'t>,
) -> Response<Body> {
    let cfg = &fw.config;
    let cors_origin = cfg
        .cors
        .as_ref()
        .and_then(|c| cors_allowed(c, req.headers()).cloned());
    if let (Some(cors), Some(origin)) = (&cfg.cors, &cors_origin)
        && req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        outcome.flag = "CORS";
        return cors_preflight(cors, origin, req.headers());
    }
    // The backend, by weight.
    if fw.total_weight == 0 {
        outcome.flag = "NC";
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let pick = random() % fw.total_weight;
    let chosen = fw
        .backends
        .iter()
        .find(|(cum, _)| pick < *cum)
        .and_then(|(_, b)| b.as_ref());
    let Some(up) = chosen else {
        outcome.flag = "NC";
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    };
    outcome.upstream = Some(up);
    if up.endpoints().is_empty() {
        outcome.flag = "UH";
        return status(StatusCode::SERVICE_UNAVAILABLE);
    }
    let Some(request_slot) = up.request_slot() else {
        outcome.flag = "UO";
        up.series.overflow.inc();
        return overflow();
    };
    let options = &conn.shared.options;
    if let Some(max) = options.max_body_bytes
        && req.body().size_hint().lower() > max
    {
        outcome.flag = "BL";
        return status(StatusCode::PAYLOAD_TOO_LARGE);
    }

    let downstream_upgrade = upgrade_of(&req).map(|proto| (proto, hyper::upgrade::on(&mut req)));
    let protocol = protocol_name(req.version());
    let te_trailers = req
        .headers()
        .get(header::TE)
        .is_some_and(|v| v == "trailers");
    let original_headers = if fw.reads_request_headers {
        req.headers().clone()
    } else {
        HeaderMap::new()
    };
    let facts = Facts {
        remote: conn.remote,
        protocol,
        start,
        headers: &original_headers,
    };

    // The request as the backend sees it.
    let mut headers = std::mem::take(req.headers_mut());
    if !headers.contains_key(header::HOST)
        && let Some(a) = req.uri().authority()
        && let Ok(v) = HeaderValue::from_str(a.as_str())
    {
        headers.insert(header::HOST, v);
    }
    strip_hop_by_hop(&mut headers);
    // gRPC's `te: trailers` survives: the one TE value HTTP/2 allows, and it is end to end.
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let client_ip = conn.remote.ip().to_string();
    // Envoy with `use_remote_address`: the client's address appended.
    // Several `X-Forwarded-For` lines are one list (RFC 9110 5.3).
    let mut xff = String::new();
    for v in headers.get_all("x-forwarded-for") {
        if let Ok(v) = v.to_str() {
            xff.push_str(v);
            xff.push_str(", ");
        }
    }
    xff.push_str(&client_ip);
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", v);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    // Envoy at the edge (preserve_external_request_id off) always makes a new one.
    headers.insert("x-request-id", request_id());
    if cfg.external_address_header
        && let Ok(v) = HeaderValue::from_str(&client_ip)
    {
        headers.insert("x-envoy-external-address", v);
    }
    edit_headers(&mut headers, &cfg.request_headers, &facts);
    if let Some(h) = &cfg.rewrite.hostname
        && let Ok(v) = HeaderValue::from_str(h)
    {
        headers.insert(header::HOST, v);
    }
    let path = match &cfg.rewrite.path {
        Some(rw) => rewrite_path(req.uri().path(), rw, route.string_prefix),
        None => req.uri().path().to_owned(),
    };
    let path_and_query = with_path(req.uri(), &path);
    if let Some((proto, _)) = &downstream_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }

    // The body: kept whole when small, so that a failed attempt can be retried.
    let (parts, incoming) = req.into_parts();
    let req = Request::from_parts(parts, ());
    let incoming = PauseLimited {
        inner: incoming.map_err(|e| BoxError::from(ClientBody(e))),
        timeout: options.body_read_timeout,
        sleep: None,
    };
    let limited: Body = match options.max_body_bytes {
        Some(max) => Limited::new(incoming, max as usize).boxed_unsync(),
        None => incoming.boxed_unsync(),
    };
    let hint = limited.size_hint();
    let mut body = if limited.is_end_stream() {
        ReqBody::Buffered(Bytes::new())
    } else if hint.exact().is_some_and(|n| n <= RETRY_BODY_LIMIT) && downstream_upgrade.is_none() {
        match limited.collect().await {
            Ok(c) => ReqBody::Buffered(c.to_bytes()),
            Err(e) => {
                let (code, flag) = client_body_error(&*e);
                outcome.flag = flag;
                return status(code);
            }
        }
    } else {
        ReqBody::Stream(Some(limited))
    };

    for (mirror, percent) in &fw.mirrors {
        if let ReqBody::Buffered(b) = &body
            && (random() % 10_000) as f64 / 100.0 < *percent
        {
            mirror_request(mirror, req.method(), &path_and_query, &headers, b.clone());
        }
    }

    let method = req.method().clone();
    let Ok(target) = http::uri::PathAndQuery::try_from(path_and_query.as_str()) else {
        outcome.flag = "DPE";
        return status(StatusCode::BAD_REQUEST);
    };
    let attempts = async {
        let max_attempts = 1 + cfg.retry.as_ref().map_or(0, |r| r.attempts);
        // Endpoints that failed this request, not picked again while there are others.
        let mut failed: Vec<SocketAddr> = Vec::new();
        let mut attempt = 0u32;
        // One of the backend's `max_retries`, held while a retry is in flight.
        let mut retrying = None;
        loop {
            attempt += 1;
            let Some(endpoint) = up.pick(&failed) else {
                return Err((StatusCode::SERVICE_UNAVAILABLE, "UH", None));
            };
            let Some(b) = body.take() else {
                return Err((StatusCode::SERVICE_UNAVAILABLE, "URX", Some(endpoint)));
            };
            let mut r = Request::new(b);
            *r.method_mut() = method.clone();
            *r.uri_mut() = match Uri::builder()
                .scheme("http")
                .authority(endpoint.to_string())
                .path_and_query(target.clone())
                .build()
            {
                Ok(u) => u,
                Err(_) => return Err((StatusCode::BAD_REQUEST, "DPE", None)),
            };
            *r.headers_mut() = headers.clone();
            let sent = up.client.request(r);
            let result = match cfg.backend_timeout {
                Some(t) => match tokio::time::timeout(t, sent).await {
                    Ok(r) => r,
                    Err(_) => return Err((StatusCode::GATEWAY_TIMEOUT, "UT", Some(endpoint))),
                },
                None => sent.await,
            };
            match result {
                Ok(resp) => {
                    let retry_status = cfg
                        .retry
                        .as_ref()
                        .is_some_and(|r| r.statuses.contains(&resp.status()));
                    if retry_status
                        && attempt < max_attempts
                        && body.replayable()
                        && let Some(slot) = up.retry_slot()
                    {
                        drop(retrying.replace(slot));
                        up.series.retry.inc();
                        drop(resp);
                        backoff(cfg, attempt).await;
                        continue;
                    }
                    return Ok((resp, endpoint));
                }
                Err(e) if caused_by::<Overflow>(&e) => {
                    return Err((StatusCode::SERVICE_UNAVAILABLE, "UO", Some(endpoint)));
                }
                // The client's fault, not the backend's: no retry.
                Err(e)
                    if caused_by::<LengthLimitError>(&e)
                        || caused_by::<ClientBody>(&e)
                        || caused_by::<BodyTimeout>(&e) =>
                {
                    let (code, flag) = client_body_error(&e);
                    return Err((code, flag, Some(endpoint)));
                }
                Err(e) => {
                    // Connect failures (the request never left) and, for idempotent
                    // methods, connections lost before a response (as nginx's default
                    // `proxy_next_upstream error`) are retried even without a retry
                    // policy: this is what keeps a request alive through a removed endpoint.
                    let connect = e.is_connect();
                    failed.push(endpoint);
                    // A refused connection cost the backend nothing: every other endpoint
                    // is tried (a new pod listed before it listens, one just gone), as
                    // nginx's `proxy_next_upstream error` does, outside the retry budget.
                    if connect
                        && failed.len() < up.endpoint_count().min(CONNECT_TRIES)
                        && body.replayable()
                    {
                        tracing::debug!(backend = %up.name, %endpoint, error = %k8s::ErrorChain(&e), "connect failed; next endpoint");
                        up.series.retry.inc();
                        continue;
                    }
                    let safe = connect || idempotent(&method);
                    let limit = if safe {
                        max_attempts.max(CONNECT_ATTEMPTS)
                    } else {
                        max_attempts
                    };
                    let may = (safe || cfg.retry.is_some()) && attempt < limit && body.replayable();
                    if may && let Some(slot) = up.retry_slot() {
                        drop(retrying.replace(slot));
                        tracing::debug!(backend = %up.name, %endpoint, error = %k8s::ErrorChain(&e), "retrying");
                        up.series.retry.inc();
                        if !connect {
                            backoff(cfg, attempt).await;
                        }
                        continue;
                    }
                    tracing::debug!(backend = %up.name, %endpoint, error = %k8s::ErrorChain(&e), "backend failed");
                    let code = if connect {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::BAD_GATEWAY
                    };
                    return Err((code, if connect { "UF" } else { "UC" }, Some(endpoint)));
                }
            }
        }
    };
    let result = match cfg.request_timeout {
        Some(t) => tokio::time::timeout(t, attempts).await.unwrap_or(Err((
            StatusCode::GATEWAY_TIMEOUT,
            "UT",
            None,
        ))),
        None => attempts.await,
    };
    let (resp, endpoint) = match result {
        Ok(r) => r,
        Err((code, flag, endpoint)) => {
            outcome.flag = flag;
            outcome.endpoint = endpoint;
            if flag == "UO" {
                up.series.overflow.inc();
                return overflow();
            }
            return status(code);
        }
    };
    outcome.endpoint = Some(endpoint);

    let (mut parts, resp_body) = resp.into_parts();
    let upgraded = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    if upgraded && let Some((proto, down)) = downstream_upgrade {
        let mut resp_for_upgrade = Response::from_parts(parts.clone(), ());
        let up_upgrade = hyper::upgrade::on(&mut resp_for_upgrade);
        let _ = resp_body;
        let track = conn.track.clone();
        tokio::spawn(async move {
            let _track = track;
            // An upgraded stream is a request in flight until it closes, as in Envoy.
            let _slot = request_slot;
            let (Ok(down), Ok(upstream)) = (down.await, up_upgrade.await) else {
                return;
            };
            let _ =
                tokio::io::copy_bidirectional(&mut TokioIo::new(down), &mut TokioIo::new(upstream))
                    .await;
        });
        let mut r = Response::from_parts(parts, empty());
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        r.headers_mut().insert(header::UPGRADE, proto);
        return r;
    }
    strip_hop_by_hop(&mut parts.headers);
    edit_headers(&mut parts.headers, &cfg.response_headers, &facts);
    if let (Some(cors), Some(origin)) = (&cfg.cors, &cors_origin) {
        cors_headers(cors, origin, &mut parts.headers);
    }
    let body = Holding {
        inner: resp_body.map_err(BoxError::from),
        _slot: request_slot,
    };
    Response::from_parts(parts, body.boxed_unsync())
}

/// A response body that holds its request's `max_requests` slot until it is passed on.
struct Holding<B> {
    inner: B,
    _slot: super::upstream::RequestSlot,
}

impl<B> http_body::Body for Holding<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A version 4 UUID from the per-thread generator: unique is what a request ID needs,
/// and this saves a `getrandom` call per request.
fn request_id() -> HeaderValue {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&random().to_le_bytes());
    bytes[8..].copy_from_slice(&random().to_le_bytes());
    let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
        .expect("a UUID is a valid header value")
}

/// The answer to a request whose body failed on the client's side.
fn client_body_error(e: &(dyn std::error::Error + 'static)) -> (StatusCode, &'static str) {
    if caused_by::<LengthLimitError>(e) {
        (StatusCode::PAYLOAD_TOO_LARGE, "BL")
    } else if caused_by::<BodyTimeout>(e) {
        (StatusCode::REQUEST_TIMEOUT, "DPE")
    } else {
        (StatusCode::BAD_REQUEST, "DPE")
    }
}

/// RFC 9110 9.2.2.
fn idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// 503 for a circuit breaker over its limit, marked as Envoy marks it.
fn overflow() -> Response<Body> {
    let mut r = status(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut()
        .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
    r
}

async fn backoff(cfg: &Forward, attempt: u32) {
    let base = cfg
        .retry
        .as_ref()
        .and_then(|r| r.backoff)
        .unwrap_or(Duration::from_millis(25));
    // Envoy: a random time up to base × 2^(attempt-1), capped at 10 × base.
    let cap = (base * 2u32.saturating_pow(attempt.saturating_sub(1))).min(base * 10);
    let ms = cap.as_millis().max(1) as u64;
    tokio::time::sleep(Duration::from_millis(random() % ms)).await;
}

/// Sends a copy of the request to `mirror`, fire and forget; the answer is dropped.
fn mirror_request(
    mirror: &Arc<Upstream>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) {
    let Some(endpoint) = mirror.pick(&[]) else {
        return;
    };
    let mut r = Request::new(full(body));
    *r.method_mut() = method.clone();
    let Ok(uri) = format!("http://{endpoint}{path_and_query}").parse() else {
        return;
    };
    *r.uri_mut() = uri;
    *r.headers_mut() = headers.clone();
    // Envoy appends `-shadow` to the host of a mirrored request.
    if let Some(h) = headers.get(header::HOST).and_then(|h| h.to_str().ok())
        && let Ok(v) = HeaderValue::from_str(&format!("{h}-shadow"))
    {
        r.headers_mut().insert(header::HOST, v);
    }
    let mirror = Arc::clone(mirror);
    tokio::spawn(async move {
        if let Ok(resp) = mirror.client.request(r).await {
            let _ = resp.into_body().collect().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_rewrites_as_gateway_api_and_envoy_do() {
        let rp = |prefix: &str, replacement: &str| PathRewrite::ReplacePrefix {
            prefix: prefix.into(),
            replacement: replacement.into(),
        };
        let element = false;
        assert_eq!(
            rewrite_path("/foo/bar", &rp("/foo", "/xyz"), element),
            "/xyz/bar"
        );
        assert_eq!(rewrite_path("/foo", &rp("/foo", "/xyz"), element), "/xyz");
        assert_eq!(
            rewrite_path("/foo/", &rp("/foo/", "/xyz"), element),
            "/xyz/"
        );
        assert_eq!(rewrite_path("/foo/bar", &rp("/foo", "/"), element), "/bar");
        assert_eq!(rewrite_path("/foo", &rp("/foo", "/"), element), "/");
        assert_eq!(
            rewrite_path("/foo/bar", &rp("/foo", "/xyz/"), element),
            "/xyz/bar"
        );
        let string = true;
        assert_eq!(
            rewrite_path("/backend/x", &rp("/backend/", "/"), string),
            "/x"
        );
        assert_eq!(
            rewrite_path("/p", &PathRewrite::Full("/full".into()), element),
            "/full"
        );
    }

    #[test]
    fn templates_render_envoy_operators() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("va"));
        let f = Facts {
            remote: "192.0.2.7:4321".parse().unwrap(),
            protocol: "HTTP/2",
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            headers: &headers,
        };
        let t = Template(vec![
            Piece::Protocol,
            Piece::Literal(" ".into()),
            Piece::RemoteAddress,
            Piece::Literal(" ".into()),
            Piece::RemoteAddressWithoutPort,
            Piece::Literal(" ".into()),
            Piece::RequestHeader(HeaderName::from_static("x-a")),
            Piece::RequestHeader(HeaderName::from_static("x-missing")),
            Piece::Literal(" ".into()),
            Piece::StartTime(None),
            Piece::Literal(" ".into()),
            Piece::StartTime(Some("%s".into())),
            Piece::Literal(" ".into()),
            Piece::StartTime(Some("%Q bad".into())),
        ]);
        assert_eq!(
            render(&t, &f),
            "HTTP/2 192.0.2.7:4321 192.0.2.7 va 2023-11-14T22:13:20.123Z 1700000000 2023-11-14T22:13:20.123Z"
        );
    }

    #[test]
    fn cors_origins_with_wildcards() {
        assert!(origin_matches(
            "https://*.example.com",
            "https://a.example.com"
        ));
        assert!(!origin_matches(
            "https://*.example.com",
            "http://a.example.com"
        ));
        assert!(origin_matches("*", "https://x"));
        assert!(origin_matches("https://EXAMPLE.com", "https://example.com"));
        assert!(!origin_matches(
            "https://example.com",
            "https://example.com.evil"
        ));
    }
}
