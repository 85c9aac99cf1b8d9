//! The data plane: serves a [`Config`] on its listeners and takes each new one atomically.
//!
//! - [`serve`] binds a socket per configured port and keeps, per port, the compiled
//!   listener behind a lock that a new configuration swaps; connections read it per
//!   request, so a new configuration applies to the next request of an open connection, and
//!   a removed port stops accepting while its open connections finish.
//! - [`route`]: host and route lookup (indexed, equal to a first-match walk).
//! - `http`: one HTTP request (filters, forwarding, retries, timeouts); its request and
//!   response edits are public for the mesh's proxies, which serve the same routes.
//! - `upstream`: backends, pools, balancing, circuit breakers.
//! - `tls`: termination with certificates by SNI, passthrough by the ClientHello's SNI.
//! - `l4`: TCP and UDP listeners, PROXY protocol v2.
//! - `metrics`: Prometheus series under Envoy's names.

mod http;
mod l4;
mod metrics;
pub mod route;
mod tls;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use self::http::HttpTable;
pub use self::http::{
    Facts, edit_headers, protocol_name, redirect_location, rewrite_path, with_path,
};
use self::metrics::Metrics;
use self::upstream::{BackendKey, Upstreams};
use crate::config::{Config, ListenerKind};

/// The data plane's settings (`kubewire gateway` flags). The defaults are for production.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Options {
    /// Where `/healthz`, `/ready` and `/metrics` are served (`off` to disable).
    #[arg(long, default_value = "0.0.0.0:8877")]
    pub admin_listen: String,
    /// The address listeners bind (every address of the pod by default: `::` with IPv4
    /// mapped, or `0.0.0.0` where IPv6 is off).
    #[arg(long, default_value = "::")]
    pub listen_address: IpAddr,
    /// On shutdown, how long in-flight requests may take to finish (Go syntax).
    #[arg(long, default_value = "30s", value_parser = k8s::parse_duration)]
    pub drain_timeout: Duration,
    /// How long a client may take to send a request's header, TLS ClientHello or PROXY
    /// header (slowloris).
    #[arg(long, default_value = "10s", value_parser = k8s::parse_duration)]
    pub header_read_timeout: Duration,
    /// A request body that pauses longer than this between two pieces answers 408 (nginx's
    /// `client_body_timeout`).
    #[arg(long, default_value = "60s", value_parser = k8s::parse_duration)]
    pub body_read_timeout: Duration,
    /// A client connection with no request in flight and no bytes moving for this long is
    /// closed.
    #[arg(long, default_value = "60s", value_parser = k8s::parse_duration)]
    pub idle_timeout: Duration,
    /// A request's header, in bytes at most (HTTP/1 buffer, HTTP/2 header list); more
    /// answers 431. Envoy's default is 60 KiB.
    #[arg(long, default_value_t = 60 * 1024)]
    pub max_header_bytes: usize,
    /// Header fields in a request at most (Envoy's default 100).
    #[arg(long, default_value_t = 100)]
    pub max_headers: usize,
    /// A request body in bytes at most (413 beyond); unlimited when not given.
    #[arg(long)]
    pub max_body_bytes: Option<u64>,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, default_value_t = 100)]
    pub h2_max_concurrent_streams: u32,
    /// Write a JSON-able access log line per request (target `gateway::access`).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub access_log: bool,
    /// Send a PROXY protocol v2 header to backends of TCP and TLS-passthrough routes.
    #[arg(long)]
    pub proxy_protocol_out: bool,
}

impl Default for Options {
    fn default() -> Self {
        k8s::parse_flags::<Options>(&[])
    }
}

impl Options {
    /// These options as command-line flags (parse back into `self`).
    pub fn to_args(&self) -> Vec<OsString> {
        let d = k8s::duration::format_duration;
        let mut a: Vec<OsString> = vec![
            "--admin-listen".into(),
            self.admin_listen.clone().into(),
            "--listen-address".into(),
            self.listen_address.to_string().into(),
            "--drain-timeout".into(),
            d(self.drain_timeout).into(),
            "--header-read-timeout".into(),
            d(self.header_read_timeout).into(),
            "--body-read-timeout".into(),
            d(self.body_read_timeout).into(),
            "--idle-timeout".into(),
            d(self.idle_timeout).into(),
            "--max-header-bytes".into(),
            self.max_header_bytes.to_string().into(),
            "--max-headers".into(),
            self.max_headers.to_string().into(),
            "--h2-max-concurrent-streams".into(),
            self.h2_max_concurrent_streams.to_string().into(),
            "--access-log".into(),
            self.access_log.to_string().into(),
        ];
        if let Some(b) = self.max_body_bytes {
            a.extend(["--max-body-bytes".into(), b.to_string().into()]);
        }
        if self.proxy_protocol_out {
            a.push("--proxy-protocol-out".into());
        }
        a
    }
}

/// Why the data plane stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The admin address does not parse.
    #[error("--admin-listen {0:?}: not an address")]
    AdminAddress(String),
    /// The admin endpoint's socket could not be bound.
    #[error("binding the admin endpoint {addr}")]
    BindAdmin {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

type HttpBuilder = hyper_util::server::conn::auto::Builder<TokioExecutor>;

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub options: Options,
    http_builder: HttpBuilder,
    h2_builder: HttpBuilder,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    ready: AtomicBool,
}

/// A listener as the current configuration has it, compiled.
#[derive(Debug)]
pub(crate) enum ListenerRt {
    Http(Arc<HttpTable>),
    Tls(Arc<tls::TlsRt>),
    Tcp(Arc<l4::Backends>),
    Udp(Arc<l4::Backends>),
}

/// One port: its compiled listener, swapped by each new configuration.
#[derive(Debug)]
pub(crate) struct PortState {
    pub port: u16,
    /// The port clients connect to ([`crate::config::Listener::public_port`]), which a
    /// new configuration may change: what redirects keep.
    public_port: std::sync::atomic::AtomicU16,
    pub series: metrics::Series,
    connections: prometheus_client::metrics::gauge::Gauge,
    rt: RwLock<(Arc<ListenerRt>, bool)>,
}

impl PortState {
    pub(crate) fn public_port(&self) -> u16 {
        self.public_port.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The listener and whether it expects PROXY protocol headers.
    pub(crate) fn current(&self) -> (Arc<ListenerRt>, bool) {
        let g = self.rt.read().unwrap();
        (Arc::clone(&g.0), g.1)
    }

    /// The HTTP routes served here now (TLS-terminated ones too).
    pub(crate) fn http_table(&self) -> Option<Arc<HttpTable>> {
        match &*self.current().0 {
            ListenerRt::Http(t) => Some(Arc::clone(t)),
            ListenerRt::Tls(t) => Some(Arc::clone(&t.hosts)),
            _ => None,
        }
    }
}

/// One client connection.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub shared: Arc<Shared>,
    pub port: Arc<PortState>,
    /// The client (from the PROXY header where the listener expects one).
    pub remote: SocketAddr,
    pub tls: bool,
    /// On a TLS connection whose ClientHello named a server: the listener's certificates
    /// and the one that name chose, to answer 421 to HTTP/2 requests for a host another
    /// certificate serves (a misdirected request, RFC 9110 15.5.20).
    pub sni_cert: std::sync::OnceLock<tls::SniCert>,
    /// Requests being answered.
    pub inflight: AtomicUsize,
    /// Held by everything that should delay the end of a drain.
    pub track: Track,
}

/// Dropped when a connection (or an upgraded stream) ends; drain waits for all of them.
pub(crate) type Track = mpsc::Sender<()>;

/// A listening socket and its accept task.
struct Bound {
    udp: bool,
    state: Arc<PortState>,
    task: JoinHandle<()>,
}

/// Serves `config` (and every later value) until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish for up to `--drain-timeout`, and returns.
///
/// The value in `config` when called is served at once; `/ready` answers 200 from then
/// on (so create the channel with the first real configuration).
pub async fn serve(
    mut config: watch::Receiver<Arc<Config>>,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let metrics = Arc::new(Metrics::new());
    let shared = Arc::new(Shared {
        http_builder: http_builder(&options, false),
        h2_builder: http_builder(&options, true),
        options,
        upstreams: Upstreams::new(Arc::clone(&metrics)),
        metrics,
        ready: AtomicBool::new(false),
    });
    let admin = match shared.options.admin_listen.as_str() {
        "off" => None,
        a => {
            let addr: SocketAddr = a.parse().map_err(|_| Error::AdminAddress(a.to_owned()))?;
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::BindAdmin { addr, source })?;
            Some(tokio::spawn(admin(l, Arc::clone(&shared))))
        }
    };
    let (drain_tx, drain_rx) = watch::channel(false);
    let (track_tx, mut track_rx) = mpsc::channel::<()>(1);
    let mut bound: HashMap<u16, Bound> = HashMap::new();
    tokio::pin!(shutdown);
    let first = Arc::clone(&config.borrow_and_update());
    apply(&first, &shared, &mut bound, &drain_rx, &track_tx).await;
    shared.ready.store(true, Ordering::Release);
    let mut sender_alive = true;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            changed = config.changed(), if sender_alive => {
                if changed.is_err() {
                    // The controller is gone; keep serving what we have until told to stop.
                    sender_alive = false;
                    continue;
                }
                let next = Arc::clone(&config.borrow_and_update());
                apply(&next, &shared, &mut bound, &drain_rx, &track_tx).await;
            }
        }
    }
    // Drain: not ready, no new connections, open ones told to finish, then wait.
    shared.ready.store(false, Ordering::Release);
    for (_, b) in bound.drain() {
        b.task.abort();
    }
    let _ = drain_tx.send(true);
    drop(track_tx);
    let drained = tokio::time::timeout(shared.options.drain_timeout, track_rx.recv()).await;
    if drained.is_err() {
        tracing::warn!(timeout = ?shared.options.drain_timeout, "drain timed out with requests in flight");
    }
    if let Some(a) = admin {
        a.abort();
    }
    Ok(())
}

/// Compiles `config` and swaps it in: ports bound and unbound, listeners replaced.
async fn apply(
    config: &Config,
    shared: &Arc<Shared>,
    bound: &mut HashMap<u16, Bound>,
    drain: &watch::Receiver<bool>,
    track: &Track,
) {
    let started = Instant::now();
    let mut used: HashSet<BackendKey> = HashSet::new();
    let mut wanted: HashMap<u16, (ListenerRt, bool, u16)> = HashMap::new();
    for l in &config.listeners {
        let rt = match &l.kind {
            ListenerKind::Http(hosts) => ListenerRt::Http(Arc::new(HttpTable::new(
                hosts,
                &shared.upstreams,
                &mut used,
            ))),
            ListenerKind::Tls {
                passthrough,
                certificates,
                hosts,
            } => ListenerRt::Tls(Arc::new(tls::TlsRt::new(
                passthrough,
                certificates,
                HttpTable::new(hosts, &shared.upstreams, &mut used),
                &shared.upstreams,
                &mut used,
            ))),
            ListenerKind::Tcp(b) => {
                ListenerRt::Tcp(Arc::new(l4::Backends::new(b, &shared.upstreams, &mut used)))
            }
            ListenerKind::Udp(b) => {
                ListenerRt::Udp(Arc::new(l4::Backends::new(b, &shared.upstreams, &mut used)))
            }
        };
        if wanted
            .insert(l.port, (rt, l.proxy_protocol, l.public_port))
            .is_some()
        {
            tracing::warn!(
                port = l.port,
                "two listeners on one port; the last one is served"
            );
        }
    }
    shared.upstreams.retain(&used);
    bound.retain(|port, b| {
        let keep = wanted
            .get(port)
            .is_some_and(|(rt, _, _)| matches!(rt, ListenerRt::Udp(_)) == b.udp);
        if !keep {
            b.task.abort();
            tracing::info!(port, "listener removed");
        }
        keep
    });
    for (port, (rt, proxy_protocol, public_port)) in wanted {
        let rt = Arc::new(rt);
        if let Some(b) = bound.get(&port) {
            *b.state.rt.write().unwrap() = (rt, proxy_protocol);
            b.state
                .public_port
                .store(public_port, std::sync::atomic::Ordering::Relaxed);
            continue;
        }
        let udp = matches!(*rt, ListenerRt::Udp(_));
        let state = Arc::new(PortState {
            port,
            public_port: public_port.into(),
            series: shared.metrics.listener(port),
            connections: shared.metrics.downstream_connections(port),
            rt: RwLock::new((rt, proxy_protocol)),
        });
        let addr = SocketAddr::new(shared.options.listen_address, port);
        let task = if udp {
            match bind_udp(addr) {
                Ok(sock) => tokio::spawn(l4::serve_udp(sock, Arc::clone(&state), drain.clone())),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "binding a UDP listener");
                    continue;
                }
            }
        } else {
            match bind_tcp(addr) {
                Ok(l) => tokio::spawn(accept(
                    l,
                    Arc::clone(shared),
                    Arc::clone(&state),
                    drain.clone(),
                    track.clone(),
                )),
                Err(e) => {
                    tracing::error!(%addr, error = %e, "binding a listener");
                    continue;
                }
            }
        };
        tracing::info!(port, udp, "listener added");
        bound.insert(port, Bound { udp, state, task });
    }
    tracing::info!(listeners = config.listeners.len(), took = ?started.elapsed(), "configuration applied");
}

/// A socket for `addr`; `::` takes IPv4 too, and falls back to `0.0.0.0` without IPv6.
fn socket_for(addr: SocketAddr, ty: socket2::Type) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Socket};
    let try_bind = |addr: SocketAddr| -> io::Result<Socket> {
        let s = Socket::new(Domain::for_address(addr), ty, None)?;
        if addr.is_ipv6() {
            s.set_only_v6(false)?;
        }
        s.set_reuse_address(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(s)
    };
    match try_bind(addr) {
        Err(e) if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) => {
            tracing::debug!(error = %e, "no IPv6; binding 0.0.0.0");
            try_bind(SocketAddr::new([0, 0, 0, 0].into(), addr.port()))
        }
        r => r,
    }
}

fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = socket_for(addr, socket2::Type::STREAM)?;
    s.listen(4096)?;
    TcpListener::from_std(s.into())
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::from_std(socket_for(addr, socket2::Type::DGRAM)?.into())
}

/// Accepts connections on one port until aborted.
async fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    state: Arc<PortState>,
    drain: watch::Receiver<bool>,
    track: Track,
) {
    let mut acceptor = k8s::http::Acceptor::new(listener, "gateway");
    loop {
        let (stream, remote) = acceptor.accept().await;
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let state = Arc::clone(&state);
        let drain = drain.clone();
        let track = track.clone();
        tokio::spawn(async move {
            let gauge = state.connections.clone();
            gauge.inc();
            connection(stream, remote, shared, state, drain, track).await;
            gauge.dec();
        });
    }
}

/// One accepted connection, by what the port serves now.
async fn connection(
    mut stream: tokio::net::TcpStream,
    mut remote: SocketAddr,
    shared: Arc<Shared>,
    state: Arc<PortState>,
    drain: watch::Receiver<bool>,
    track: Track,
) {
    // The listener is dual-stack (`::`): an IPv4 client comes as ::ffff:a.b.c.d, and
    // headers and logs carry it as a.b.c.d, as Envoy does.
    remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    let (rt, proxy_protocol) = state.current();
    let header_timeout = shared.options.header_read_timeout;
    if proxy_protocol {
        match tokio::time::timeout(header_timeout, l4::read_proxy_header(&mut stream)).await {
            Ok(Ok(Some(client))) => remote = client,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "refused a PROXY protocol header");
                return;
            }
            Err(_) => return,
        }
    }
    let ctx = |tls| {
        Arc::new(ConnCtx {
            shared: Arc::clone(&shared),
            port: Arc::clone(&state),
            remote,
            tls,
            sni_cert: std::sync::OnceLock::new(),
            inflight: AtomicUsize::new(0),
            track: track.clone(),
        })
    };
    match &*rt {
        ListenerRt::Http(_) => serve_http(stream, ctx(false), drain, false).await,
        ListenerRt::Tls(t) => {
            let t = Arc::clone(t);
            tls::connection(stream, t, ctx(true), drain).await
        }
        ListenerRt::Tcp(b) => {
            let b = Arc::clone(b);
            l4::tcp(stream, remote, &b, &shared, &drain).await
        }
        ListenerRt::Udp(_) => {}
    }
}

/// Counts activity on a connection's bytes, for the idle timeout.
struct Activity<IO> {
    io: IO,
    last: Arc<AtomicU64>,
    epoch: Instant,
}

impl<IO> Activity<IO> {
    fn touch(&self) {
        self.last
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Activity<IO> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        if r.is_ready() {
            this.touch();
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Activity<IO> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        if r.is_ready() {
            this.touch();
        }
        r
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The HTTP server settings, made once (HTTP/1.1 and HTTP/2 by prior knowledge, or
/// HTTP/2 only where TLS chose `h2`).
fn http_builder(o: &Options, h2_only: bool) -> HttpBuilder {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(o.header_read_timeout)
        .max_buf_size(o.max_header_bytes.max(8192))
        .max_headers(o.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(o.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(o.max_header_bytes).unwrap_or(u32::MAX))
        // Rapid reset (CVE-2023-44487): streams the client opens and resets at once count
        // against this; over it the connection is closed with GOAWAY.
        .max_pending_accept_reset_streams(20)
        // Streams this side had to reset for the client's errors, likewise bounded.
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    if h2_only {
        builder = builder.http2_only();
    }
    builder
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, or only HTTP/2 when TLS chose `h2`) on
/// `io` until the client leaves, the connection idles out or a drain closes it.
pub(crate) async fn serve_http<IO>(
    io: IO,
    ctx: Arc<ConnCtx>,
    mut drain: watch::Receiver<bool>,
    h2_only: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let o = &ctx.shared.options;
    let builder = if h2_only {
        &ctx.shared.h2_builder
    } else {
        &ctx.shared.http_builder
    };
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Activity {
        io,
        last: Arc::clone(&last),
        epoch,
    };
    let service_ctx = Arc::clone(&ctx);
    let service =
        // Boxed: the request's future is ~3.8 KiB, and hyper would move it by value.
        hyper::service::service_fn(move |req| Box::pin(http::handle(Arc::clone(&service_ctx), req)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let idle = o.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(50)));
    let mut closing = false;
    if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(remote = %ctx.remote, error = %e, "client connection");
                }
                return;
            }
            _ = drain.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                let quiet = epoch.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                if ctx.inflight.load(Ordering::Acquire) == 0 && quiet >= idle {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// `/healthz`, `/ready` and `/metrics`.
async fn admin(listener: TcpListener, shared: Arc<Shared>) {
    k8s::http::serve(listener, move |req| match req.uri.path() {
        "/healthz" => k8s::http::response(200, "text/plain", "ok\n"),
        "/ready" | "/readyz" => {
            if shared.ready.load(Ordering::Acquire) {
                k8s::http::response(200, "text/plain", "ready\n")
            } else {
                k8s::http::response(503, "text/plain", "not ready\n")
            }
        }
        "/metrics" => {
            let backends: Vec<_> = shared
                .upstreams
                .all()
                .iter()
                .map(|u| (u.name.clone(), u.connections()))
                .collect();
            k8s::http::response(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.encode(&backends),
            )
        }
        _ => k8s::http::response(404, "text/plain", "not found\n"),
    })
    .await;
}

#[cfg(test)]
mod tests;
