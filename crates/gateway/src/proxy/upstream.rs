//! Backends: their endpoints, balanced round robin; pooled keep-alive connections (hyper's
//! pooled client, HTTP/1.1 or h2c, over TLS where a BackendTLSPolicy asks); Envoy's circuit
//! breakers.
//!
//! A backend's state (pool, counters) outlives configurations: two configurations naming
//! the same Service port with the same settings share it, and a new configuration only
//! swaps its endpoint list. A retry therefore picks from the newest endpoints, so an
//! endpoint removed by a new configuration fails no request that can be retried.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::{BackendSeries, Metrics};
use crate::config::{Backend, BackendProtocol, BackendTls, Limits};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every request and response body the proxy passes on.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long connecting to an endpoint may take (Emissary's default `connect_timeout_ms`).
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Idle pooled connections are closed after this long.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What identifies a backend's pool and limits: everything but its endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BackendKey {
    pub namespace: String,
    pub service: String,
    pub port: u16,
    pub protocol: BackendProtocol,
    pub tls: Option<BackendTls>,
    pub limits: Limits,
}

impl BackendKey {
    pub(crate) fn of(b: &Backend) -> Self {
        Self {
            namespace: b.namespace.clone(),
            service: b.service.clone(),
            port: b.port,
            protocol: b.protocol,
            tls: b.tls.clone(),
            limits: b.limits,
        }
    }
}

/// Why a backend could not take a request: each answers 503, as Envoy does.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Overflow {
    /// `max_connections` open and `max_pending_requests` already waiting for one.
    #[error("too many requests waiting for a connection (max_pending_requests)")]
    Pending,
    /// Waited [`CONNECT_TIMEOUT`] for a connection under `max_connections`.
    #[error("no connection came free under max_connections")]
    Connections,
}

/// Connection counting shared by a backend's connector and its connections.
#[derive(Debug)]
struct ConnLimits {
    connections: Arc<Semaphore>,
    pending: AtomicU32,
    max_pending: u32,
}

/// One backend (a Service port with its settings).
pub(crate) struct Upstream {
    pub key: BackendKey,
    /// `namespace/service:port`, as metrics and logs name it.
    pub name: String,
    endpoints: RwLock<Arc<[SocketAddr]>>,
    next: AtomicUsize,
    pub client: Client<Connector, Body>,
    active_requests: AtomicU32,
    active_retries: AtomicU32,
    conns: Arc<ConnLimits>,
    pub series: BackendSeries,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .finish()
    }
}

/// Holds one of `max_requests` (or `max_retries`) while it lives.
#[derive(Debug)]
pub(crate) struct Slot<'a>(&'a AtomicU32);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One of a backend's `max_requests`, owned (it travels with the response body).
#[derive(Debug)]
pub(crate) struct RequestSlot(Arc<Upstream>);

impl Drop for RequestSlot {
    fn drop(&mut self) {
        self.0.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

fn take_slot(counter: &AtomicU32, max: u32) -> Option<Slot<'_>> {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Slot(counter))
}

impl Upstream {
    fn new(
        series: BackendSeries,
        key: BackendKey,
        endpoints: Arc<[SocketAddr]>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        let conns = Arc::new(ConnLimits {
            connections: Arc::new(Semaphore::new(key.limits.max_connections as usize)),
            pending: AtomicU32::new(0),
            max_pending: key.limits.max_pending_requests,
        });
        let connector = Connector {
            tls_required: key.tls.is_some(),
            conns: Arc::clone(&conns),
            tls: tls.zip(key.tls.as_ref().map(|t| t.hostname.clone())),
            h2: key.protocol == BackendProtocol::H2c,
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .http2_only(key.protocol == BackendProtocol::H2c)
            .set_host(false)
            .build(connector);
        Self {
            name: format!("{}/{}:{}", key.namespace, key.service, key.port),
            key,
            endpoints: RwLock::new(endpoints),
            next: AtomicUsize::new(0),
            client,
            active_requests: AtomicU32::new(0),
            active_retries: AtomicU32::new(0),
            conns,
            series,
        }
    }

    pub(crate) fn endpoints(&self) -> Arc<[SocketAddr]> {
        Arc::clone(&self.endpoints.read().unwrap())
    }

    /// The next endpoint, round robin over the newest endpoints, the first from there not
    /// in `avoid` (the round robin's own when all are).
    pub(crate) fn pick(&self, avoid: &[SocketAddr]) -> Option<SocketAddr> {
        let eps = self.endpoints();
        if eps.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let at = |i: usize| eps[(start + i) % eps.len()];
        Some(
            (0..eps.len())
                .map(at)
                .find(|e| !avoid.contains(e))
                .unwrap_or_else(|| at(0)),
        )
    }

    /// How many endpoints it has now.
    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints().len()
    }

    /// One of `max_requests`, held until the request is over (its response body passed
    /// on, or its upgraded stream closed); `None` over the limit.
    pub(crate) fn request_slot(self: &Arc<Self>) -> Option<RequestSlot> {
        let slot = take_slot(&self.active_requests, self.key.limits.max_requests)?;
        std::mem::forget(slot);
        Some(RequestSlot(Arc::clone(self)))
    }

    /// One of `max_retries` (retries in flight at once); `None` over the limit.
    pub(crate) fn retry_slot(&self) -> Option<Slot<'_>> {
        take_slot(&self.active_retries, self.key.limits.max_retries)
    }

    /// Connections open now.
    pub(crate) fn connections(&self) -> usize {
        self.key.limits.max_connections as usize - self.conns.connections.available_permits()
    }
}

/// Every backend the current configuration names, by [`BackendKey`].
#[derive(Debug)]
pub(crate) struct Upstreams {
    map: Mutex<HashMap<BackendKey, Arc<Upstream>>>,
    pub metrics: Arc<Metrics>,
}

impl Upstreams {
    pub(crate) fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            map: Mutex::default(),
            metrics,
        }
    }

    /// The backend's state, its endpoints set to `b`'s.
    pub(crate) fn get(&self, b: &Backend) -> Arc<Upstream> {
        let key = BackendKey::of(b);
        let mut map = self.map.lock().unwrap();
        if let Some(u) = map.get(&key) {
            let mut eps = u.endpoints.write().unwrap();
            if **eps != *b.endpoints {
                *eps = Arc::clone(&b.endpoints);
            }
            return Arc::clone(u);
        }
        let tls = key.tls.as_ref().and_then(|t| match client_tls(t) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(backend = %format!("{}/{}", b.namespace, b.service), error = %e, "backend TLS CAs unusable; connections will fail");
                None
            }
        });
        let series = self
            .metrics
            .backend(&format!("{}/{}:{}", b.namespace, b.service, b.port));
        let u = Arc::new(Upstream::new(
            series,
            key.clone(),
            Arc::clone(&b.endpoints),
            tls,
        ));
        map.insert(key, Arc::clone(&u));
        u
    }

    /// Forgets backends no longer configured (requests in flight keep theirs).
    pub(crate) fn retain(&self, keep: &HashSet<BackendKey>) {
        self.map.lock().unwrap().retain(|k, _| keep.contains(k));
    }

    pub(crate) fn all(&self) -> Vec<Arc<Upstream>> {
        self.map.lock().unwrap().values().cloned().collect()
    }
}

/// A rustls client configuration that trusts `tls`'s CAs (or the system's).
fn client_tls(tls: &BackendTls) -> Result<Arc<rustls::ClientConfig>, BoxError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let system;
    let bundles: Vec<&[u8]> = if tls.ca_pem.is_empty() {
        system = std::fs::read("/etc/ssl/certs/ca-certificates.crt")?;
        vec![&system]
    } else {
        tls.ca_pem.iter().map(|p| &**p).collect()
    };
    for pem in bundles {
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.add(cert?)?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Opens connections to endpoints (the URI's authority), within `max_connections`.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    conns: Arc<ConnLimits>,
    /// A BackendTLSPolicy asked for TLS: without a usable TLS configuration, connecting
    /// fails rather than falling back to clear text.
    tls_required: bool,
    tls: Option<(Arc<rustls::ClientConfig>, String)>,
    h2: bool,
}

impl tower_service::Service<Uri> for Connector {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if this.tls_required && this.tls.is_none() {
                return Err(
                    "the backend's TLS settings are unusable (see the warning logged)".into(),
                );
            }
            let permit = match Arc::clone(&this.conns.connections).try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    let limits = &this.conns;
                    if take_slot(&limits.pending, limits.max_pending).is_none() {
                        return Err(Overflow::Pending.into());
                    }
                    let _waiting = Slot(&limits.pending);
                    let acquire = Arc::clone(&limits.connections).acquire_owned();
                    match tokio::time::timeout(CONNECT_TIMEOUT, acquire).await {
                        Ok(Ok(p)) => p,
                        _ => return Err(Overflow::Connections.into()),
                    }
                }
            };
            let authority = uri.authority().ok_or("no endpoint in the URI")?.as_str();
            let addr: SocketAddr = authority.parse()?;
            let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            let _ = tcp.set_nodelay(true);
            let (stream, h2) = match &this.tls {
                None => (Stream::Tcp(tcp), this.h2),
                Some((config, name)) => {
                    let name = rustls::pki_types::ServerName::try_from(name.clone())?;
                    let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                        .connect(name, tcp)
                        .await?;
                    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                    (Stream::Tls(Box::new(tls)), h2)
                }
            };
            Ok(UpstreamIo {
                io: TokioIo::new(stream),
                h2,
                _permit: permit,
            })
        })
    }
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A connection to an endpoint; holds one of `max_connections` while open.
#[derive(Debug)]
pub(crate) struct UpstreamIo {
    io: TokioIo<Stream>,
    h2: bool,
    _permit: OwnedSemaphorePermit,
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        let c = Connected::new();
        if self.h2 { c.negotiated_h2() } else { c }
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Whether `e` or one of its causes is a `T`.
pub(crate) fn caused_by<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.is::<T>() {
            return true;
        }
        cur = err.source();
    }
    false
}
