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

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1 as client1, http2 as client2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tracing::debug;

use super::detect::Protocol;
use super::metrics::{self, Direction};
use super::{Counted, Proxy};
use crate::destination::Endpoint;

/// The bodies of the responses the proxy sends back.
type ResponseBody = Observed;

/// HTTP/1.1 connections kept per endpoint.
const CONNECTIONS_PER_ENDPOINT: usize = 64;

/// Kept-alive connections to endpoints: HTTP/1.1 ones, each taking one request at a
/// time, and one multiplexed HTTP/2 connection per endpoint.
#[derive(Default)]
pub(super) struct Pool {
    http1: Mutex<HashMap<SocketAddr, Vec<client1::SendRequest<Incoming>>>>,
    /// Each endpoint's connection behind an async lock, held while connecting: the
    /// requests that arrive meanwhile wait for that connection rather than open more.
    http2: Arc<Mutex<HashMap<SocketAddr, Http2Slot>>>,
}

type Http2Slot = Arc<tokio::sync::Mutex<Option<client2::SendRequest<Incoming>>>>;

/// Which side of the pod an HTTP connection is on.
#[derive(Debug, Clone, Copy)]
pub(super) enum Side {
    /// From the app, to `original` (where it connected).
    Outbound { original: SocketAddr },
    /// To the app at `app`: from another proxy (`tls`), or from a client outside
    /// the mesh.
    Inbound { app: SocketAddr, tls: bool },
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
    let service = hyper::service::service_fn(move |req| {
        let proxy = proxy.clone();
        async move { Ok::<_, Infallible>(forward(&proxy, side, protocol, req).await) }
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

/// The request's authority, as the metrics name it: its `:authority` or Host.
fn authority(req: &Request<Incoming>) -> Option<String> {
    req.uri().authority().map(|a| a.to_string()).or_else(|| {
        req.headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    })
}

/// Sends one request on to where `side` says, and its response back, counted.
async fn forward(
    proxy: &Arc<Proxy>,
    side: Side,
    protocol: Protocol,
    mut req: Request<Incoming>,
) -> Response<ResponseBody> {
    let (direction, pool, endpoint, why, tls) = match side {
        Side::Outbound { original } => {
            let dest = proxy.resolve(original).await;
            let endpoint = if dest.kind == "unknown" {
                Some(Endpoint {
                    addr: original,
                    pod: String::new(),
                    identity: None,
                })
            } else {
                proxy.loads.pick(&dest.endpoints, |e| e.addr).cloned()
            };
            let tls = endpoint
                .as_ref()
                .is_some_and(|e| e.identity.is_some() && proxy.tls().is_some());
            let why = if endpoint.is_none() {
                format!("{original} ({}) has no ready endpoint", dest.service)
            } else {
                String::new()
            };
            (Direction::Outbound, &proxy.pool, endpoint, why, tls)
        }
        Side::Inbound { app, tls } => {
            let endpoint = Endpoint {
                addr: app,
                pod: String::new(),
                identity: None,
            };
            (
                Direction::Inbound,
                &proxy.app_pool,
                Some(endpoint),
                String::new(),
                tls,
            )
        }
    };
    let authority = authority(&req).unwrap_or_else(|| match side {
        Side::Outbound { original } => original.to_string(),
        Side::Inbound { app, .. } => app.to_string(),
    });
    let series = proxy.metrics.request(direction, &authority, tls);
    let Some(endpoint) = endpoint else {
        return proxy_error(series, StatusCode::SERVICE_UNAVAILABLE, &why);
    };
    let upgrade = (protocol == Protocol::Http1
        && req.headers().contains_key(http::header::UPGRADE))
    .then(|| hyper::upgrade::on(&mut req));
    let pending = proxy.loads.start(endpoint.addr);
    let sent = match protocol {
        Protocol::Http2 => send2(proxy, pool, &endpoint, req).await,
        _ => send1(proxy, pool, &endpoint, req, upgrade.is_some()).await,
    };
    match sent {
        Ok(mut resp) => {
            pending.done();
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
            })
        }
        Err(e) => {
            if matches!(e, Error::Connect(_)) {
                pending.failed();
            }
            debug!(endpoint = %endpoint.addr, error = %e, "request failed");
            proxy_error(series, StatusCode::BAD_GATEWAY, &e.to_string())
        }
    }
}

/// Sends an HTTP/1.1 request on an idle connection to the endpoint, or a new one.
/// `own` (an upgrade) takes a new connection, never returned to the pool.
async fn send1(
    proxy: &Proxy,
    pool: &Pool,
    endpoint: &Endpoint,
    req: Request<Incoming>,
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
    req: Request<Incoming>,
) -> Result<Response<Incoming>, Error> {
    let mut sender = pool.sender2(proxy, endpoint).await?;
    sender.ready().await.map_err(Error::Http)?;
    sender.send_request(req).await.map_err(Error::Http)
}

async fn connect1(
    proxy: &Proxy,
    pool: &Pool,
    endpoint: &Endpoint,
) -> Result<client1::SendRequest<Incoming>, Error> {
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
    ) -> Result<client2::SendRequest<Incoming>, Error> {
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
    fn idle1(&self, addr: SocketAddr) -> Option<client1::SendRequest<Incoming>> {
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
    fn put1(&self, addr: SocketAddr, sender: client1::SendRequest<Incoming>) {
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
}

/// An answer from the proxy itself.
fn proxy_error(series: metrics::Request, status: StatusCode, why: &str) -> Response<ResponseBody> {
    let mut resp = Response::new(Observed {
        body: Either::Right(Full::new(Bytes::from(format!("{why}\n")))),
        series: Some(series),
        status: status.as_u16(),
        grpc_status: None,
        ended: false,
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
}

impl Observed {
    fn finish(&mut self) {
        if let Some(series) = self.series.take() {
            // A body that says it is over may not be polled to its end.
            let ended = self.ended || self.body.is_end_stream();
            series.respond(self.status, self.grpc_status.as_deref(), !ended);
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
