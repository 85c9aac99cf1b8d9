//! HTTP: the client's connection is served by HTTP/1.1 or HTTP/2 (what it spoke).
//! Outbound, each request is balanced on its own (P2C on peak EWMA,
//! [`super::balance`]) over kept-alive connections to the endpoints, so one long-lived
//! client connection, gRPC's above all, spreads over every endpoint. Inbound (another
//! proxy's mutual TLS whose header says HTTP), each request goes on to the app over
//! kept-alive connections of its own, and is counted on the server's side.
//!
//! The request goes on as the client sent it (its Host or `:authority`, its headers),
//! over the same protocol; to a meshed endpoint inside mutual TLS to its proxy, as opaque
//! connections go. Failures the proxy itself meets are answered as linkerd2-proxy does,
//! with an `l5d-proxy-error` header: 503 with no endpoint, 502 when the endpoint cannot
//! be reached. A WebSocket (or any HTTP/1.1 upgrade) gets a connection of its own, and
//! once both sides switched protocols, the bytes are copied as they come.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use gateway::config::{Action, Forward, HeaderEdits, Mirror};
use gateway::proxy::route::normalize_host;
use gateway::proxy::{
    Facts, edit_headers, protocol_name, redirect_location, rewrite_path, with_path,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

use super::detect::Protocol;
use super::metrics::{self, Direction};
use super::routes::Routing;
use super::trace::Span;
use super::{Counted, Proxy};
use crate::authz::{Refusal, Verdict};
use crate::destination::Accrual;
use crate::destination::Endpoint;

/// The bodies of the responses the proxy sends back.
type ResponseBody = Observed;

/// What requests are sent with: the client's body as it streams, or one read whole to
/// be sent again (a request that may be retried).
type RequestBody = Either<Incoming, Full<Bytes>>;

/// A request with a larger body is not retried (Linkerd's limit): its body streams
/// through once.
const MAX_RETRY_BODY: u64 = 64 * 1024;

/// HTTP/1.1 connections kept per endpoint.
const CONNECTIONS_PER_ENDPOINT: usize = 64;

/// Kept-alive connections to endpoints: HTTP/1.1 ones, each taking one request at a
/// time, and one multiplexed HTTP/2 connection per endpoint.
#[derive(Default)]
pub(super) struct Pool {
    http1: Mutex<HashMap<SocketAddr, Vec<client1::SendRequest<RequestBody>>>>,
    /// Each endpoint's connection behind an async lock, held while connecting: the
    /// requests that arrive meanwhile wait for that connection rather than open more.
    http2: Arc<Mutex<HashMap<SocketAddr, Http2Slot>>>,
}

type Http2Slot = Arc<tokio::sync::Mutex<Option<client2::SendRequest<RequestBody>>>>;

/// Which side of the pod an HTTP connection is on.
#[derive(Debug, Clone)]
pub(super) enum Side {
    /// From the app, to `original` (where it connected).
    Outbound { original: SocketAddr },
    /// To the app at `app`: from another proxy (`tls`), or from a client outside
    /// the mesh; each request as the inbound policy says of `client` at the time.
    Inbound {
        app: SocketAddr,
        tls: bool,
        client: Arc<Client>,
    },
}

/// Who sent an inbound connection: its address, and its mutual TLS identity.
#[derive(Debug)]
pub(super) struct Client {
    pub ip: std::net::IpAddr,
    pub identity: Option<String>,
}

/// Serves a connection whose client speaks HTTP (`protocol`).
pub(super) async fn serve<I>(
    proxy: Arc<Proxy>,
    conn: I,
    side: Side,
    protocol: Protocol,
) -> std::io::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |mut req| {
        let proxy = proxy.clone();
        let side = side.clone();
        async move {
            let span = proxy.tracer.as_ref().and_then(|tracer| {
                let (direction, peer, to) = match &side {
                    Side::Outbound { original } => (Direction::Outbound, original.ip(), *original),
                    Side::Inbound { app, client, .. } => (Direction::Inbound, client.ip, *app),
                };
                tracer.span(&mut req, direction, peer, to)
            });
            let mut resp = forward(&proxy, side, protocol, req).await;
            resp.body_mut().span = span;
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(conn);
    let served = match protocol {
        Protocol::Http2 => {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
        _ => {
            hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
    };
    served.map_err(std::io::Error::other)
}

/// The request's authority, as the metrics name it: its `:authority` or Host, else
/// the address it went to.
pub(super) fn authority<B>(req: &Request<B>, or: SocketAddr) -> String {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| or.to_string())
}

/// Sends one request on to where `side` says, and its response back, counted.
async fn forward(
    proxy: &Arc<Proxy>,
    side: Side,
    protocol: Protocol,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let original = match side {
        Side::Outbound { original } => original,
        Side::Inbound { app, tls, client } => {
            let series = proxy
                .metrics
                .request(Direction::Inbound, &authority(&req, app), tls);
            // Asked afresh for each request: a kept-alive connection follows a
            // changed policy.
            let verdict =
                proxy
                    .policy()
                    .await
                    .authorize(app.port(), client.ip, client.identity.as_deref());
            let (route, allowed) = verdict.request_on_route(&req);
            proxy.metrics.authorized(
                metrics::Authorized::Http,
                (&verdict.server_kind, &verdict.server_name),
                route,
                allowed.as_ref().ok().map(|(k, n)| (k.as_str(), n.as_str())),
            );
            match allowed {
                Ok(_) => {}
                Err(Refusal::Unauthorized) => return forbidden(series, &req, &verdict),
                // As linkerd2-proxy: the Server's routes do not know the request.
                Err(Refusal::NoRoute) => {
                    let why = format!("no route of server {} matches", verdict.server_name);
                    return proxy_error(series, StatusCode::NOT_FOUND, &why);
                }
            }
            let endpoint = Endpoint {
                addr: app,
                pod: String::new(),
                identity: None,
            };
            let sent = send(
                proxy,
                &proxy.app_pool,
                protocol,
                &endpoint,
                req.map(Either::Left),
                None,
            );
            return answer(sent.await, series, &endpoint);
        }
    };
    let dest = proxy.resolve(original).await;
    if let Some(routing) = dest.routing.clone() {
        return routed(proxy, original, protocol, req, &routing).await;
    }
    let endpoint = if dest.kind == "unknown" {
        Some(Endpoint {
            addr: original,
            pod: String::new(),
            identity: None,
        })
    } else {
        proxy.loads.pick(&dest.endpoints, |e| e.addr).cloned()
    };
    let tls = endpoint.as_ref().is_some_and(|e| meshed(proxy, e));
    let series = proxy
        .metrics
        .request(Direction::Outbound, &authority(&req, original), tls);
    let Some(endpoint) = endpoint else {
        let why = format!("{original} ({}) has no ready endpoint", dest.service);
        return proxy_error(series, StatusCode::SERVICE_UNAVAILABLE, &why);
    };
    let accrual = dest.failure_accrual.as_ref();
    let sent = send(
        proxy,
        &proxy.pool,
        protocol,
        &endpoint,
        req.map(Either::Left),
        accrual,
    );
    answer(sent.await, series, &endpoint)
}

/// Whether a request to `endpoint` goes in mutual TLS.
fn meshed(proxy: &Proxy, endpoint: &Endpoint) -> bool {
    endpoint.identity.is_some() && proxy.tls().is_some()
}

/// The response to send back for what an attempt at `endpoint` got, counted.
fn answer(
    sent: Result<Response<Incoming>, Error>,
    series: metrics::Request,
    endpoint: &Endpoint,
) -> Response<ResponseBody> {
    match sent {
        Ok(resp) => observed(resp, series),
        Err(e) => {
            debug!(endpoint = %endpoint.addr, error = %e, "request failed");
            let status = match e {
                Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                Error::Ejected => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::BAD_GATEWAY,
            };
            proxy_error(series, status, &e.to_string())
        }
    }
}

/// A response from an endpoint, its body observed for the metrics.
fn observed(resp: Response<Incoming>, series: metrics::Request) -> Response<ResponseBody> {
    let status = resp.status().as_u16();
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    resp.map(|body| Observed {
        body: Either::Left(body),
        series: Some(series),
        status,
        grpc_status,
        ended: false,
        span: None,
    })
}

/// One attempt at `endpoint`, the load it puts there accounted for (and its outcome
/// accrued by `accrual`). An HTTP/1.1 upgrade that the endpoint accepts is spliced
/// through once both sides switched.
async fn send(
    proxy: &Proxy,
    pool: &Pool,
    protocol: Protocol,
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
    accrual: Option<&Accrual>,
) -> Result<Response<Incoming>, Error> {
    let upgrade = (protocol == Protocol::Http1
        && req.headers().contains_key(http::header::UPGRADE))
    .then(|| hyper::upgrade::on(&mut req));
    let pending = proxy.loads.start(endpoint.addr, accrual);
    let sent = match protocol {
        Protocol::Http2 => send2(proxy, pool, endpoint, req).await,
        _ => send1(proxy, pool, endpoint, req, upgrade.is_some()).await,
    };
    match sent {
        Ok(mut resp) => {
            pending.done(resp.status().is_server_error());
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_side) = upgrade
            {
                let server_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    if let (Ok(c), Ok(s)) = (client_side.await, server_side.await) {
                        let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                        let _ = tokio::io::copy_bidirectional(&mut c, &mut s).await;
                    }
                });
            }
            Ok(resp)
        }
        Err(e) => {
            if matches!(e, Error::Connect(_)) {
                pending.failed();
            }
            Err(e)
        }
    }
}

/// A request to a Service port that routes name (GAMMA): the first matching route
/// says what happens to it, as at the gateway. No matching route answers 404.
async fn routed(
    proxy: &Arc<Proxy>,
    original: SocketAddr,
    protocol: Protocol,
    mut req: Request<Incoming>,
    routing: &Routing,
) -> Response<ResponseBody> {
    let authority = authority(&req, original);
    let Some(route) = routing.find(&req) else {
        let why = format!("no route of {original} matches the request");
        let series = proxy
            .metrics
            .request(Direction::Outbound, &authority, false);
        return proxy_error(series, StatusCode::NOT_FOUND, &why);
    };
    let name = &route.name;
    let series = |tls| {
        proxy
            .metrics
            .routed_request(Direction::Outbound, &authority, tls, Some(name))
    };
    let fw = match &route.action {
        Action::Forward(fw) => fw,
        Action::Respond(status) => {
            let why = format!(
                "{} {}/{} answers {status}",
                name.kind, name.namespace, name.name
            );
            return proxy_error(series(false), *status, &why);
        }
        Action::Redirect(rd) => {
            let host = normalize_host(&authority);
            let location = redirect_location(rd, req.uri(), &host, false, original.port(), false);
            let mut resp = proxy_error(series(false), rd.status, "redirected");
            resp.headers_mut().remove("l5d-proxy-error");
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(http::header::LOCATION, v);
            }
            return resp;
        }
    };
    let deadline = fw
        .request_timeout
        .map(|t| (tokio::time::Instant::now() + t, t));
    // Faults (an HTTPFault filter): the delay, within the request's timeout, then the
    // abort.
    if let Some(fault) = &fw.fault {
        if let Some((delay, _)) = fault.delay.filter(|(_, p)| share(*p)) {
            let delayed = tokio::time::sleep(delay);
            if let Some((at, t)) = deadline {
                if tokio::time::timeout_at(at, delayed).await.is_err() {
                    let why = Error::Timeout(t).to_string();
                    return proxy_error(series(false), StatusCode::GATEWAY_TIMEOUT, &why);
                }
            } else {
                delayed.await;
            }
        }
        if let Some((status, _)) = fault.abort.filter(|(_, p)| share(*p)) {
            let why = format!(
                "fault injected by {} {}/{}",
                name.kind, name.namespace, name.name
            );
            return proxy_error(series(false), status, &why);
        }
    }
    // The backend, by weight; a reference that did not resolve answers 500 for its share.
    let total: u64 = fw.backends.iter().map(|b| u64::from(b.weight)).sum();
    let backend = (total > 0)
        .then(|| {
            let mut pick = super::random_below(total as usize) as u64;
            fw.backends.iter().find(|b| {
                let hit = pick < u64::from(b.weight);
                pick = pick.saturating_sub(u64::from(b.weight));
                hit
            })
        })
        .flatten()
        .and_then(|b| b.backend.clone());
    let Some(backend) = backend else {
        let why = format!("{} {}/{}: no backend", name.kind, name.namespace, name.name);
        return proxy_error(series(false), StatusCode::INTERNAL_SERVER_ERROR, &why);
    };
    let endpoints: Vec<Endpoint> = backend
        .endpoints
        .iter()
        .map(|a| routing.endpoint(*a))
        .collect();
    if endpoints.is_empty() {
        let why = format!(
            "{}/{} has no ready endpoint",
            backend.namespace, backend.service
        );
        return proxy_error(series(false), StatusCode::SERVICE_UNAVAILABLE, &why);
    }
    rewrite(&mut req, fw);
    let accrual = routing.accrual(&backend);
    // A body that may be sent more than once (retried, mirrored) is read whole first,
    // if it is small enough; a larger one streams through once, unmirrored.
    let mirrors: Vec<&Mirror> = fw.mirrors.iter().filter(|m| share(m.percent)).collect();
    let retry = fw.retry.as_ref().filter(|r| r.attempts > 0);
    // (An upgrade keeps its request: the connection it switches is in it.)
    let small = !req.headers().contains_key(http::header::UPGRADE)
        && req
            .body()
            .size_hint()
            .upper()
            .is_some_and(|n| n <= MAX_RETRY_BODY);
    let outgoing = if small && (retry.is_some() || !mirrors.is_empty()) {
        let (parts, body) = req.into_parts();
        match body.collect().await {
            Ok(b) => Outgoing::Buffered(parts, b.to_bytes()),
            Err(e) => {
                let why = format!("reading the request's body: {e}");
                return proxy_error(series(false), StatusCode::BAD_REQUEST, &why);
            }
        }
    } else {
        Outgoing::Streaming(req.map(Either::Left))
    };
    for m in mirrors {
        mirror(proxy, protocol, &outgoing, m, routing);
    }
    let attempts = attempts(proxy, protocol, outgoing, retry, fw, &endpoints, accrual);
    let (sent, endpoint) = match deadline {
        Some((at, t)) => match tokio::time::timeout_at(at, attempts).await {
            Ok(done) => done,
            Err(_) => (Err(Error::Timeout(t)), endpoints[0].clone()),
        },
        None => attempts.await,
    };
    let mut resp = answer(sent, series(meshed(proxy, &endpoint)), &endpoint);
    let facts = Facts {
        remote: original,
        protocol: protocol_name(resp.version()),
        start: SystemTime::now(),
        headers: &HeaderMap::new(),
    };
    edit_headers(resp.headers_mut(), &fw.response_headers, &facts);
    resp
}

/// A route's URL rewrite and request header edits, applied to `req`.
fn rewrite(req: &mut Request<Incoming>, fw: &Forward) {
    if let Some(host) = &fw.rewrite.hostname
        && let Ok(v) = HeaderValue::from_str(host)
    {
        req.headers_mut().insert(http::header::HOST, v);
        let mut parts = req.uri().clone().into_parts();
        if parts.authority.is_some() {
            parts.authority = host.parse().ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    }
    if let Some(p) = &fw.rewrite.path {
        let path = with_path(req.uri(), &rewrite_path(req.uri().path(), p, false));
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = path.parse().ok();
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    if fw.request_headers != HeaderEdits::default() {
        let headers = req.headers().clone();
        let facts = Facts {
            remote: SocketAddr::from(([0, 0, 0, 0], 0)),
            protocol: protocol_name(req.version()),
            start: SystemTime::now(),
            headers: &headers,
        };
        edit_headers(req.headers_mut(), &fw.request_headers, &facts);
    }
}

/// Whether a request falls in a share of `percent` (0-100) of them.
fn share(percent: f64) -> bool {
    (super::random_below(1_000_000) as f64) < percent * 10_000.0
}

/// A request on its way: streaming its body, or with its body read whole (it may be
/// sent more than once).
enum Outgoing {
    Streaming(Request<RequestBody>),
    Buffered(http::request::Parts, Bytes),
}

impl Outgoing {
    /// A copy of a buffered request.
    fn copy(&self) -> Option<Request<RequestBody>> {
        let Outgoing::Buffered(parts, body) = self else {
            return None;
        };
        let mut r = Request::new(Either::Right(Full::new(body.clone())));
        *r.method_mut() = parts.method.clone();
        *r.uri_mut() = parts.uri.clone();
        *r.version_mut() = parts.version;
        *r.headers_mut() = parts.headers.clone();
        Some(r)
    }
}

/// Sends a copy of the request to the mirror's backend (Gateway API's RequestMirror),
/// in the background; its answer is thrown away. A request whose body streams is not
/// mirrored.
fn mirror(proxy: &Arc<Proxy>, protocol: Protocol, out: &Outgoing, m: &Mirror, routing: &Routing) {
    let Some(req) = out.copy() else { return };
    let endpoints: Vec<Endpoint> = m
        .backend
        .endpoints
        .iter()
        .map(|a| routing.endpoint(*a))
        .collect();
    let Some(endpoint) = proxy.loads.pick(&endpoints, |e| e.addr).cloned() else {
        return;
    };
    let proxy = proxy.clone();
    tokio::spawn(async move {
        match send(&proxy, &proxy.pool, protocol, &endpoint, req, None).await {
            Ok(resp) => drop(resp.into_body().collect().await),
            Err(e) => debug!(endpoint = %endpoint.addr, error = %e, "mirrored request failed"),
        }
    });
}

/// The attempts at a request: the first, and with a `retry` policy the retries of a
/// failure it names (the statuses it lists, a connection that failed or an attempt
/// that timed out), each at an endpoint balanced afresh, after its backoff, while the
/// retry budget allows. Only a buffered request (a body of at most
/// [`MAX_RETRY_BODY`] bytes) is sent again; a streaming one is sent once.
async fn attempts(
    proxy: &Proxy,
    protocol: Protocol,
    out: Outgoing,
    retry: Option<&gateway::config::Retry>,
    fw: &Forward,
    endpoints: &[Endpoint],
    accrual: Option<&Accrual>,
) -> (Result<Response<Incoming>, Error>, Endpoint) {
    let attempt = |req| async {
        let Some(endpoint) = proxy.loads.pick(endpoints, |e| e.addr).cloned() else {
            return (Err(Error::Ejected), endpoints[0].clone());
        };
        let sent = send(proxy, &proxy.pool, protocol, &endpoint, req, accrual);
        let sent = match fw.backend_timeout {
            Some(t) => tokio::time::timeout(t, sent)
                .await
                .unwrap_or(Err(Error::Timeout(t))),
            None => sent.await,
        };
        (sent, endpoint)
    };
    let out = match out {
        Outgoing::Streaming(req) => return attempt(req).await,
        buffered => buffered,
    };
    let Some(retry) = retry else {
        return attempt(out.copy().expect("buffered")).await;
    };
    proxy.retry_budget.request();
    let mut left = retry.attempts;
    loop {
        let (sent, endpoint) = attempt(out.copy().expect("buffered")).await;
        let failed = match &sent {
            Ok(resp) => retry.statuses.contains(&resp.status()),
            // Not a request that failed midway: it may have been served.
            Err(Error::Connect(_) | Error::Timeout(_)) => true,
            Err(Error::Http(_) | Error::Ejected) => false,
        };
        if !failed || left == 0 || !proxy.retry_budget.retry() {
            return (sent, endpoint);
        }
        left -= 1;
        debug!(endpoint = %endpoint.addr, "retrying");
        if let Some(b) = retry.backoff {
            tokio::time::sleep(b).await;
        }
    }
}

/// Sends an HTTP/1.1 request on an idle connection to the endpoint, or a new one.
/// `own` (an upgrade) takes a new connection, never returned to the pool.
async fn send1(
    proxy: &Proxy,
    pool: &Pool,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
    own: bool,
) -> Result<Response<Incoming>, Error> {
    let mut req = req;
    // An idle connection the server closed meanwhile hands the request back untouched:
    // it goes on a new connection then.
    loop {
        let idle = (!own).then(|| pool.idle1(endpoint.addr)).flatten();
        let reused = idle.is_some();
        let mut sender = match idle {
            Some(s) => s,
            None => connect1(proxy, pool, endpoint).await?,
        };
        match sender.try_send_request(req).await {
            Ok(resp) => {
                if !own {
                    pool.put1(endpoint.addr, sender);
                }
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(back) if reused => req = back,
                _ => return Err(Error::Http(e.into_error())),
            },
        }
    }
}

/// Sends an HTTP/2 request on the endpoint's connection, opened if there is none.
async fn send2(
    proxy: &Proxy,
    pool: &Pool,
    endpoint: &Endpoint,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, Error> {
    let mut sender = pool.sender2(proxy, endpoint).await?;
    sender.ready().await.map_err(Error::Http)?;
    sender.send_request(req).await.map_err(Error::Http)
}

async fn connect1(
    proxy: &Proxy,
    pool: &Pool,
    endpoint: &Endpoint,
) -> Result<client1::SendRequest<RequestBody>, Error> {
    let io = open(proxy, pool, endpoint, Protocol::Http1).await?;
    let (sender, conn) = client1::handshake(TokioIo::new(io))
        .await
        .map_err(Error::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream HTTP/1.1 connection");
        }
    });
    Ok(sender)
}

/// A connection for `pool` to `endpoint`: to the app, plaintext; to an endpoint, mutual
/// TLS to its proxy when it is meshed, counted in the outbound TCP series.
async fn open(
    proxy: &Proxy,
    pool: &Pool,
    endpoint: &Endpoint,
    protocol: Protocol,
) -> Result<Counted, Error> {
    if std::ptr::eq(pool, &proxy.app_pool) {
        let io = super::connect(endpoint.addr)
            .await
            .map_err(Error::Connect)?;
        return Ok(Counted::opened(Box::new(io), None));
    }
    let (io, tls) = proxy
        .open(endpoint, protocol)
        .await
        .map_err(Error::Connect)?;
    let series = proxy.metrics.open(Direction::Outbound, tls.is_some());
    Ok(Counted::opened(io, Some(series)))
}

impl Pool {
    /// The endpoint's HTTP/2 connection, opened if it has none (or a closed one).
    async fn sender2(
        &self,
        proxy: &Proxy,
        endpoint: &Endpoint,
    ) -> Result<client2::SendRequest<RequestBody>, Error> {
        let addr = endpoint.addr;
        let slot = self
            .http2
            .lock()
            .expect("poisoned")
            .entry(addr)
            .or_default()
            .clone();
        let mut current = slot.lock().await;
        if let Some(s) = current.as_ref().filter(|s| !s.is_closed()) {
            return Ok(s.clone());
        }
        let io = open(proxy, self, endpoint, Protocol::Http2).await?;
        let (sender, conn) = client2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(Error::Http)?;
        *current = Some(sender.clone());
        drop(current);
        let pool = self.http2.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(%addr, error = %e, "upstream HTTP/2 connection");
            }
            // Forget the endpoint, unless a new connection is in its slot (or being
            // made there) meanwhile.
            let mut pool = pool.lock().expect("poisoned");
            let idle = |s: &Http2Slot| {
                s.try_lock()
                    .is_ok_and(|c| c.as_ref().is_none_or(|c| c.is_closed()))
            };
            if pool.get(&addr).is_some_and(idle) {
                pool.remove(&addr);
            }
        });
        Ok(sender)
    }

    /// An HTTP/1.1 connection to `addr` that can take a request now (its last
    /// response read through), taken out of the pool while it is used.
    fn idle1(&self, addr: SocketAddr) -> Option<client1::SendRequest<RequestBody>> {
        let mut pool = self.http1.lock().expect("poisoned");
        let conns = pool.get_mut(&addr)?;
        conns.retain(|s| !s.is_closed());
        let found = conns
            .iter()
            .position(|s| s.is_ready())
            .map(|at| conns.swap_remove(at));
        if conns.is_empty() {
            pool.remove(&addr);
        }
        found
    }

    /// Puts a connection back as soon as its request is answered: it takes the next
    /// request once its response has been read through (the pool asks it then), with
    /// no task of its own to wait for that.
    fn put1(&self, addr: SocketAddr, sender: client1::SendRequest<RequestBody>) {
        let mut pool = self.http1.lock().expect("poisoned");
        let conns = pool.entry(addr).or_default();
        if conns.len() < CONNECTIONS_PER_ENDPOINT {
            conns.push(sender);
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("connecting to the endpoint: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Http(hyper::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("every endpoint is ejected after consecutive failures")]
    Ejected,
}

/// The answer to a request the inbound policy refuses, as linkerd2-proxy's: 403, or
/// for gRPC `grpc-status: 7` (PERMISSION_DENIED).
fn forbidden<B>(series: metrics::Request, req: &Request<B>, v: &Verdict) -> Response<ResponseBody> {
    let why = format!(
        "unauthorized connection on {} {}",
        v.server_kind, v.server_name
    );
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return proxy_error(series, StatusCode::FORBIDDEN, &why);
    }
    // Trailers-only: the status in the headers, no body.
    let mut resp = proxy_answer(series, StatusCode::OK, &why, Bytes::new());
    resp.body_mut().grpc_status = Some("7".into());
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("7"));
    if let Ok(v) = HeaderValue::from_str(&why) {
        headers.insert("grpc-message", v);
    }
    resp
}

/// An answer from the proxy itself.
fn proxy_error(series: metrics::Request, status: StatusCode, why: &str) -> Response<ResponseBody> {
    proxy_answer(series, status, why, Bytes::from(format!("{why}\n")))
}

/// An answer from the proxy itself, with `body`.
fn proxy_answer(
    series: metrics::Request,
    status: StatusCode,
    why: &str,
    body: Bytes,
) -> Response<ResponseBody> {
    let mut resp = Response::new(Observed {
        body: Either::Right(Full::new(body)),
        series: Some(series),
        status: status.as_u16(),
        grpc_status: None,
        ended: false,
        span: None,
    });
    *resp.status_mut() = status;
    let header = HeaderValue::from_str(why).unwrap_or(HeaderValue::from_static("proxy error"));
    resp.headers_mut().insert("l5d-proxy-error", header);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

/// A response body that records its response in the metrics when it ends (or is
/// dropped before), with the `grpc-status` of its trailers if it has one.
pub(super) struct Observed {
    body: Either<Incoming, Full<Bytes>>,
    series: Option<metrics::Request>,
    status: u16,
    grpc_status: Option<String>,
    /// Whether the body reached its end (or failed: then it did not).
    ended: bool,
    /// The request's span, in a sampled trace: it ends with the body.
    pub(super) span: Option<Span>,
}

impl Observed {
    fn finish(&mut self) {
        if let Some(series) = self.series.take() {
            // A body that says it is over may not be polled to its end.
            let ended = self.ended || self.body.is_end_stream();
            series.respond(self.status, self.grpc_status.as_deref(), !ended);
            if let Some(span) = self.span.take() {
                span.end(self.status, self.grpc_status.as_deref(), !ended);
            }
        }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for Observed {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(g) = frame
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                {
                    self.grpc_status = Some(g.to_owned());
                }
            }
            Poll::Ready(None) => {
                self.ended = true;
                self.finish();
            }
            // Cut off mid-body: a failure whatever the status said.
            Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
