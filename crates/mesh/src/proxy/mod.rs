//! `kubewire mesh proxy`: the proxy beside each meshed pod, in the pod's network
//! namespace, running as its own user (the CNI plugin's capture exempts it).
//!
//! - **Outbound** (`127.0.0.1:4140`): the pod's TCP, redirected here, is sent where the
//!   app asked. The node's destination service ([`crate::destination`]) says whether the
//!   address is a Service (its endpoints, balanced here: power of two choices on open
//!   connections) or a pod, and which endpoints are meshed. To a meshed endpoint the
//!   proxy opens mutual TLS to the endpoint's proxy (its inbound port), checks that the
//!   peer has the identity the destination named, and sends a transport header naming
//!   the port the app wanted; to anything else it connects in plaintext.
//! - **Inbound** (`:4143`): a connection to the inbound port itself is another proxy's
//!   mutual TLS: after the handshake and the header, it is sent on to the app's port on
//!   the pod's address. Any other connection was redirected here from a client outside
//!   the mesh: it is sent on in plaintext to where it was going. Which of the two a
//!   connection is follows from its original destination, never from waiting for bytes,
//!   so a protocol whose server speaks first never stalls. Either way the pod's inbound
//!   policy ([`crate::authz`], from discovery) is asked first, and for HTTP again for
//!   each request: a refused request gets 403, any other refused connection is closed.
//! - **Admin** (`:4191`): `/ready` (200 once the proxy has its certificate: the
//!   injector's startup probe, so the app starts only then), `/live`, `/metrics`.
//!
//! The proxy tells HTTP from the rest ([`detect`]) on outbound connections and on
//! plaintext inbound ones; another proxy's transport header says which it sends.
//! HTTP/1.1 and HTTP/2 are served at L7 ([`http`]: per-request balancing outbound,
//! request metrics on both sides); the rest, and every port in `--opaque-ports`, is
//! proxied as opaque TCP. A Service port named by HTTPRoutes or GRPCRoutes (GAMMA) has
//! its requests routed as those say ([`routes`]): matches, weighted backends, header
//! and URL filters, redirects, mirrors, faults, timeouts and retries (within
//! [`budget`]); failing endpoints are ejected by failure accrual ([`balance`]).
//! Discovery's answers are kept up to date by long polls ([`keep_fresh`]).

mod admin;
mod balance;
mod budget;
mod detect;
mod http;
mod metrics;
mod routes;
mod trace;
mod transport;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cni::capture::{ADMIN_PORT, INBOUND_PORT, OUTBOUND_PORT};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::routes::Resolved;
use crate::authz::{InboundPolicy, Verdict};
use crate::destination::{self, Destination, Endpoint};
use crate::identity::client::{Certifier, Credentials};

pub use metrics::Metrics;
pub use trace::Collector;

/// Flags of `kubewire mesh proxy`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The identity issuer, `NAME:PORT`.
    #[arg(long, default_value = "kubewire-identity.kube-system.svc:8080")]
    pub identity_server: String,
    /// The pod's ServiceAccount token for the issuer's audience (a projected volume).
    #[arg(long, default_value = "/var/run/kubewire/identity/token")]
    pub token: PathBuf,
    /// A certificate chain (PEM) to use instead of asking the issuer, with `--key`: one
    /// another issuer mounts, or a test's. Read once at start, never renewed.
    #[arg(long, requires = "key")]
    pub certificate: Option<PathBuf>,
    /// The key of `--certificate` (PEM).
    #[arg(long, requires = "certificate")]
    pub key: Option<PathBuf>,
    /// The mesh's trust bundle, PEM (the injector copies it from the ConfigMap
    /// `kube-system/kubewire-identity-trust-roots`, as Linkerd's injector does).
    #[arg(long, env = "KUBEWIRE_TRUST_BUNDLE", hide_env_values = true)]
    pub trust_bundle: String,
    /// The node's address, where its agent serves discovery (the downward API's
    /// `status.hostIP`).
    #[arg(long, env = "KUBEWIRE_NODE_IP")]
    pub node_ip: IpAddr,
    /// The port of the node's destination service.
    #[arg(long, default_value_t = destination::PORT)]
    pub destination_port: u16,
    /// Where other proxies and redirected inbound connections arrive.
    #[arg(long, default_value_t = INBOUND_PORT)]
    pub inbound_port: u16,
    /// Where the pod's redirected outbound connections arrive (loopback).
    #[arg(long, default_value_t = OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Readiness, liveness and metrics.
    #[arg(long, default_value_t = ADMIN_PORT)]
    pub admin_port: u16,
    /// Destination ports never inspected for HTTP: their connections are opaque TCP
    /// from the first byte (Linkerd's defaults: SMTP, MySQL, Galera, PostgreSQL, Redis,
    /// Elasticsearch, memcached). Ports or ranges, `3306,4000-4100`; the injector sets
    /// them from the pod's or namespace's `config.linkerd.io/opaque-ports`.
    #[arg(
        long,
        env = "KUBEWIRE_OPAQUE_PORTS",
        value_delimiter = ',',
        default_value = "25,587,3306,4444,5432,6379,9300,11211"
    )]
    pub opaque_ports: Vec<PortRange>,
    /// The pod's namespace (the downward API's `metadata.namespace`): the routes of
    /// this namespace that name another namespace's Service apply to this pod alone.
    #[arg(long, env = "KUBEWIRE_POD_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// The pod's name (the downward API's `metadata.name`): with `--namespace`, whose
    /// inbound policy applies. Without it everything inbound is allowed.
    #[arg(long, env = "KUBEWIRE_POD_NAME", default_value = "")]
    pub pod_name: String,
    /// Where spans go, over OTLP/HTTP: `HOST:PORT` or `http://HOST:PORT/PATH` (the
    /// injector sets it from the pod's or namespace's `config.linkerd.io/trace-collector`).
    /// Without it the proxy neither makes spans nor touches `traceparent`.
    #[arg(long, env = "KUBEWIRE_TRACE_COLLECTOR")]
    pub trace_collector: Option<Collector>,
}

/// A port, or an inclusive range of them (`4000-4100`), as Linkerd's opaque-ports
/// annotation writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<PortRange, String> {
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535)"))
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(format!("{s:?}: the range ends before it starts"));
        }
        Ok(PortRange { first, last })
    }
}

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] crate::identity::client::Error),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The TLS of the current credentials, remade when they are renewed.
struct Tls {
    identity: String,
    trust_domain: String,
    server: tokio_rustls::TlsAcceptor,
    client: tokio_rustls::TlsConnector,
}

impl Tls {
    fn new(creds: &Credentials) -> Result<Tls, crate::tls::Error> {
        let trust_domain = creds
            .identity
            .strip_prefix("spiffe://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        Ok(Tls {
            identity: creds.identity.clone(),
            server: crate::tls::server_config(creds)?.into(),
            client: crate::tls::client_config(creds, &trust_domain)?.into(),
            trust_domain,
        })
    }
}

/// How long a destination nobody asked about is kept (and watched) still.
const DESTINATION_IDLE: Duration = Duration::from_secs(30);
/// How long to wait before asking again after discovery could not be asked.
const DISCOVERY_RETRY: Duration = Duration::from_secs(1);

/// An answer of discovery, kept up to date by a long poll ([`keep_fresh`]) while it is
/// used.
struct Watched<T> {
    current: Mutex<(Arc<T>, String)>,
    used: Mutex<Instant>,
}

impl<T> Watched<T> {
    fn new(value: Arc<T>, version: String) -> Arc<Watched<T>> {
        Arc::new(Watched {
            current: Mutex::new((value, version)),
            used: Mutex::new(Instant::now()),
        })
    }

    /// The answer, noted as used.
    fn value(&self) -> Arc<T> {
        *self.used.lock().expect("poisoned") = Instant::now();
        self.current.lock().expect("poisoned").0.clone()
    }
}

/// Asks `ask` (given the version held, and the answer) for each new answer to `entry`
/// as soon as discovery has it, until `entry` has not been used for `idle` (if set).
/// When discovery cannot be asked, the answer held stays.
async fn keep_fresh<T, F, Fut>(entry: Arc<Watched<T>>, idle: Option<Duration>, ask: F)
where
    F: Fn(String, Arc<T>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(T, String)>>,
{
    loop {
        let used = *entry.used.lock().expect("poisoned");
        if idle.is_some_and(|i| used.elapsed() > i) {
            return;
        }
        let (held, version) = entry.current.lock().expect("poisoned").clone();
        match ask(version, held).await {
            Ok((value, version)) => {
                // A server without versions answers at once: ask it once a second.
                let unversioned = version.is_empty();
                *entry.current.lock().expect("poisoned") = (Arc::new(value), version);
                if unversioned {
                    tokio::time::sleep(DISCOVERY_RETRY).await;
                }
            }
            Err(e) => {
                debug!(error = %e, "asking discovery again");
                tokio::time::sleep(DISCOVERY_RETRY).await;
            }
        }
    }
}

/// How long a TLS handshake and its transport header may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client the policy refuses may take to show it speaks HTTP (it then
/// gets 403s rather than a closed connection).
const REFUSED_DETECT: Duration = Duration::from_secs(1);
/// How long connecting onward may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every connection reads.
struct Proxy {
    tls: watch::Receiver<Option<Arc<Tls>>>,
    destination: SocketAddr,
    inbound_port: u16,
    cache: Mutex<HashMap<SocketAddr, Arc<Watched<Resolved>>>>,
    /// The pod, `namespace/name`, whose inbound policy applies (none: everything is
    /// allowed, as with no policy at all).
    pod: String,
    /// Its inbound policy, as discovery last answered it.
    policy: tokio::sync::OnceCell<Arc<Watched<InboundPolicy>>>,
    /// Open connections per endpoint, for balancing opaque TCP.
    open: Mutex<HashMap<SocketAddr, usize>>,
    /// Requests in flight and latencies per endpoint, for balancing HTTP.
    loads: balance::Loads,
    /// Connections to endpoints, for outbound HTTP.
    pool: http::Pool,
    /// Connections to the app, for inbound HTTP (never the same ones: the app's own
    /// address can be one of its Service's endpoints too).
    app_pool: http::Pool,
    opaque_ports: Vec<PortRange>,
    /// The pod's namespace: which consumer routes (GAMMA) apply to it.
    namespace: String,
    retry_budget: budget::RetryBudget,
    metrics: Metrics,
    /// Spans for the requests in sampled traces, when a collector is configured.
    tracer: Option<Arc<trace::Tracer>>,
}

/// Runs the proxy until SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown = k8s::Shutdown::new().map_err(io("handling SIGTERM"))?;
    let (creds_tx, mut creds_rx) = watch::channel(None);
    match (&args.certificate, &args.key) {
        (Some(cert), Some(key)) => {
            let creds = static_credentials(cert, key, &args.trust_bundle)?;
            let _ = creds_tx.send(Some(Arc::new(creds)));
            // Kept open: the credentials never change.
            std::mem::forget(creds_tx);
        }
        _ => {
            let certifier = Certifier::new(
                &args.identity_server,
                None,
                &args.trust_bundle,
                args.token.clone(),
            )?;
            tokio::spawn(certifier.run(creds_tx));
        }
    }
    let (tls_tx, tls_rx) = watch::channel(None);
    tokio::spawn(async move {
        while creds_rx.changed().await.is_ok() {
            let Some(creds) = creds_rx.borrow_and_update().clone() else {
                continue;
            };
            match Tls::new(&creds) {
                Ok(tls) => {
                    info!(identity = %tls.identity, "mutual TLS ready");
                    let _ = tls_tx.send(Some(Arc::new(tls)));
                }
                Err(e) => warn!(error = %e, "the new credentials do not make a TLS configuration"),
            }
        }
    });

    let bind = |addr: SocketAddr| listen(addr).map_err(io(format!("listening on {addr}")));
    let inbound = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.inbound_port)))?;
    let outbound = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.outbound_port)))?;
    // IPv6 too where the pod has it.
    let inbound6 = listen(SocketAddr::from((Ipv6Addr::UNSPECIFIED, args.inbound_port))).ok();
    let outbound6 = listen(SocketAddr::from((Ipv6Addr::LOCALHOST, args.outbound_port))).ok();
    let admin = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.admin_port)))?;

    let proxy = Arc::new(Proxy {
        tls: tls_rx,
        destination: SocketAddr::new(args.node_ip, args.destination_port),
        inbound_port: args.inbound_port,
        cache: Mutex::default(),
        open: Mutex::default(),
        loads: balance::Loads::default(),
        pool: http::Pool::default(),
        app_pool: http::Pool::default(),
        opaque_ports: args.opaque_ports.clone(),
        namespace: args.namespace.clone(),
        pod: if args.namespace.is_empty() || args.pod_name.is_empty() {
            String::new()
        } else {
            format!("{}/{}", args.namespace, args.pod_name)
        },
        policy: tokio::sync::OnceCell::new(),
        retry_budget: budget::RetryBudget::default(),
        metrics: Metrics::new(),
        tracer: args.trace_collector.clone().map(|collector| {
            info!(collector = %collector.authority, "exporting spans");
            trace::Tracer::start(
                collector,
                vec![
                    ("service.name", "kubewire-proxy".into()),
                    ("k8s.namespace.name", args.namespace.clone()),
                    ("k8s.pod.name", args.pod_name.clone()),
                ],
            )
        }),
    });
    info!(
        inbound = args.inbound_port,
        outbound = args.outbound_port,
        admin = args.admin_port,
        destination = %proxy.destination,
        "mesh proxy listening"
    );
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, outbound) in [
        (Some(inbound), false),
        (inbound6, false),
        (Some(outbound), true),
        (outbound6, true),
    ] {
        if let Some(l) = listener {
            tasks.spawn(accept(l, proxy.clone(), outbound));
        }
    }
    tasks.spawn(admin::serve(admin, proxy.clone()));
    shutdown.recv().await;
    info!("mesh proxy stopping");
    tasks.abort_all();
    Ok(())
}

/// Credentials from files (`--certificate`, `--key`), with the trust bundle.
fn static_credentials(
    cert: &std::path::Path,
    key: &std::path::Path,
    trust_pem: &str,
) -> Result<Credentials, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read =
        |p: &std::path::Path| std::fs::read(p).map_err(io(format!("reading {}", p.display())));
    let bad = |what: String| Error::Io {
        what,
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(format!("{}: {e}", cert.display())))?;
    let identity = chain
        .first()
        .and_then(crate::tls::spiffe_id)
        .ok_or_else(|| bad(format!("{} names no SPIFFE ID", cert.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| bad(format!("{}: {e}", key.display())))?;
    let trust = CertificateDer::pem_slice_iter(trust_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    let now = std::time::SystemTime::now();
    Ok(Credentials {
        identity,
        chain,
        key,
        trust,
        issued: now,
        not_after: now + Duration::from_secs(365 * 24 * 3600),
    })
}

/// A listener on `addr`; an IPv6 one takes IPv6 only, beside the IPv4 one on the same
/// port (a dual-stack socket would see IPv4 connections as mapped IPv6 addresses,
/// whose original destination is IPv4 conntrack's).
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn accept(listener: TcpListener, proxy: Arc<Proxy>, outbound: bool) {
    let mut acceptor = k8s::http::Acceptor::new(listener, "mesh proxy");
    loop {
        let (conn, peer) = acceptor.accept().await;
        let _ = conn.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let result = if outbound {
                proxy.outbound(conn).await
            } else {
                proxy.inbound(conn).await
            };
            if let Err(e) = result {
                debug!(%peer, outbound, error = %e, "connection ended");
            }
        });
    }
}

impl Proxy {
    fn is_opaque(&self, port: u16) -> bool {
        self.opaque_ports.iter().any(|r| r.contains(port))
    }

    fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.borrow().clone()
    }

    async fn inbound(self: &Arc<Self>, conn: TcpStream) -> std::io::Result<()> {
        let original = netlink::original_destination(&conn)?;
        let local = conn.local_addr()?;
        let peer = conn.peer_addr()?;
        if original.port() != self.inbound_port {
            // A client outside the mesh: on to where it was going if the policy allows
            // it, HTTP served (and counted) request by request, anything else as it came.
            let direction = metrics::Direction::Inbound;
            let verdict = self
                .policy()
                .await
                .authorize(original.port(), peer.ip(), None);
            let verdict = Arc::new(verdict);
            if verdict.allowed.is_none() {
                return self.refuse_plaintext(conn, original, verdict).await;
            }
            if self.is_opaque(original.port()) {
                self.authorized_tcp(&verdict);
                let onward = connect(original).await?;
                return self.splice(conn, onward, direction, None, 0).await;
            }
            return match first_speaker(&conn, connect(original)).await? {
                Speaker::Client(detect::Protocol::Opaque, onward) => {
                    self.authorized_tcp(&verdict);
                    let onward = match onward {
                        Some(o) => o,
                        None => connect(original).await?,
                    };
                    self.splice(conn, onward, direction, None, 0).await
                }
                Speaker::Client(http, onward) => {
                    drop(onward);
                    let conn =
                        Counted::accepted(Box::new(conn), self.metrics.open(direction, false));
                    let side = http::Side::Inbound {
                        app: original,
                        tls: false,
                        client: Arc::new(http::Client {
                            ip: peer.ip(),
                            identity: None,
                        }),
                    };
                    http::serve(self.clone(), conn, side, http).await
                }
                Speaker::Server(onward, first) => {
                    self.authorized_tcp(&verdict);
                    let mut conn = conn;
                    conn.write_all(&first).await?;
                    self.splice(conn, onward, direction, None, first.len() as u64)
                        .await
                }
            };
        }
        let tls = self
            .tls()
            .ok_or_else(|| std::io::Error::other("no certificate yet"))?;
        let (mut stream, (port, protocol)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut stream = tls.server.accept(conn).await?;
            let header = transport::read(&mut stream).await?;
            Ok::<_, std::io::Error>((stream, header))
        })
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let client = crate::tls::peer_identity(stream.get_ref().1);
        if port == self.inbound_port {
            stream.shutdown().await.ok();
            return Err(std::io::Error::other("a transport header naming the proxy"));
        }
        let app = SocketAddr::new(local.ip(), port);
        if protocol != detect::Protocol::Opaque {
            // The client proxy speaks HTTP on it: served here too, request by request.
            let series = self
                .metrics
                .open(metrics::Direction::Inbound, client.is_some());
            let conn = Counted::accepted(Box::new(stream), series);
            let side = http::Side::Inbound {
                app,
                tls: client.is_some(),
                client: Arc::new(http::Client {
                    ip: peer.ip(),
                    identity: client,
                }),
            };
            return http::serve(self.clone(), conn, side, protocol).await;
        }
        let verdict = self
            .policy()
            .await
            .authorize(port, peer.ip(), client.as_deref());
        self.authorized_tcp(&verdict);
        if verdict.allowed.is_none() {
            stream.shutdown().await.ok();
            return Ok(());
        }
        let onward = connect(app).await?;
        self.splice(stream, onward, metrics::Direction::Inbound, client, 0)
            .await
    }

    /// Counts what the policy said of a connection not served as HTTP.
    fn authorized_tcp(&self, v: &Verdict) {
        let authz = v.allowed.as_ref().map(|(k, n)| (k.as_str(), n.as_str()));
        let server = (v.server_kind.as_str(), v.server_name.as_str());
        self.metrics
            .authorized(metrics::Authorized::Tcp, server, None, authz);
    }

    /// A plaintext client the policy refuses: an HTTP one gets 403 for each request (the
    /// kubelet's probes excepted), anything else is closed. A client that says nothing
    /// within [`REFUSED_DETECT`] is not HTTP.
    async fn refuse_plaintext(
        self: &Arc<Self>,
        conn: TcpStream,
        original: SocketAddr,
        verdict: Arc<Verdict>,
    ) -> std::io::Result<()> {
        let conn_peer = conn.peer_addr()?.ip();
        let protocol = tokio::time::timeout(REFUSED_DETECT, detect::client_protocol(&conn))
            .await
            .unwrap_or(Ok(detect::Protocol::Opaque))?;
        if protocol == detect::Protocol::Opaque {
            self.authorized_tcp(&verdict);
            return Ok(());
        }
        let direction = metrics::Direction::Inbound;
        let conn = Counted::accepted(Box::new(conn), self.metrics.open(direction, false));
        let side = http::Side::Inbound {
            app: original,
            tls: false,
            client: Arc::new(http::Client {
                ip: conn_peer,
                identity: None,
            }),
        };
        http::serve(self.clone(), conn, side, protocol).await
    }

    async fn outbound(self: &Arc<Self>, conn: TcpStream) -> std::io::Result<()> {
        let original = netlink::original_destination(&conn)?;
        if original == conn.local_addr()? {
            return Err(std::io::Error::other("a connection to the proxy itself"));
        }
        let dest = self.resolve(original).await;
        if self.is_opaque(original.port()) {
            return self.opaque(conn, original, &dest, None).await;
        }
        match first_speaker(&conn, self.connect_onward(original, &dest)).await? {
            Speaker::Client(protocol, onward) => {
                self.detected(conn, original, &dest, protocol, onward).await
            }
            Speaker::Server(onward, first) => {
                let mut conn = conn;
                conn.write_all(&first).await?;
                let peer = onward.peer.clone();
                self.splice(
                    conn,
                    onward.io,
                    metrics::Direction::Outbound,
                    peer,
                    first.len() as u64,
                )
                .await
            }
        }
    }

    /// Goes on with a connection whose protocol is known, on `onward` if it was
    /// opened already.
    async fn detected(
        self: &Arc<Self>,
        conn: TcpStream,
        original: SocketAddr,
        dest: &Destination,
        protocol: detect::Protocol,
        onward: Option<Onward<'_>>,
    ) -> std::io::Result<()> {
        match protocol {
            detect::Protocol::Opaque => self.opaque(conn, original, dest, onward).await,
            http => {
                drop(onward);
                http::serve(self.clone(), conn, http::Side::Outbound { original }, http).await
            }
        }
    }

    /// Proxies an outbound connection as opaque TCP.
    async fn opaque(
        &self,
        conn: TcpStream,
        original: SocketAddr,
        dest: &Destination,
        onward: Option<Onward<'_>>,
    ) -> std::io::Result<()> {
        let onward = match onward {
            Some(o) => o,
            None => self.connect_onward(original, dest).await?,
        };
        self.splice(
            conn,
            onward.io,
            metrics::Direction::Outbound,
            onward.peer,
            0,
        )
        .await
    }

    /// A connection to where `original` leads: one of its endpoints (P2C on open
    /// connections), or `original` itself for an address discovery does not know.
    async fn connect_onward(
        &self,
        original: SocketAddr,
        dest: &Destination,
    ) -> std::io::Result<Onward<'_>> {
        if dest.kind == "unknown" {
            let io: Box<dyn Io> = Box::new(connect(original).await?);
            return Ok(Onward {
                io,
                peer: None,
                _open: None,
            });
        }
        let Some(endpoint) = self.pick(&dest.endpoints) else {
            return Err(std::io::Error::other(format!(
                "{original} ({}) has no ready endpoint",
                dest.service
            )));
        };
        let open = OpenGuard::new(&self.open, endpoint.addr);
        let (io, peer) = self.open(endpoint, detect::Protocol::Opaque).await?;
        Ok(Onward {
            io,
            peer,
            _open: Some(open),
        })
    }

    /// A connection to `endpoint`: to a meshed one, mutual TLS to its proxy, checked
    /// to present the identity discovery named, with the transport header naming the
    /// port and what goes on it; to any other, plaintext. Returns the peer's identity,
    /// if TLS.
    async fn open(
        &self,
        endpoint: &Endpoint,
        protocol: detect::Protocol,
    ) -> std::io::Result<(Box<dyn Io>, Option<String>)> {
        let (Some(path), Some(tls)) = (&endpoint.identity, self.tls()) else {
            return Ok((Box::new(connect(endpoint.addr).await?), None));
        };
        let expected = format!("spiffe://{}/{path}", tls.trust_domain);
        let peer = SocketAddr::new(endpoint.addr.ip(), self.inbound_port);
        let tcp = connect(peer).await?;
        let name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
        let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut s = tls.client.connect(name, tcp).await?;
            transport::write(&mut s, endpoint.addr.port(), protocol).await?;
            Ok::<_, std::io::Error>(s)
        })
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
        let seen = crate::tls::peer_identity(stream.get_ref().1);
        if seen.as_deref() != Some(expected.as_str()) {
            stream.shutdown().await.ok();
            return Err(std::io::Error::other(format!(
                "{peer} presented {seen:?}, not {expected}"
            )));
        }
        Ok((Box::new(stream), seen))
    }

    /// The destination of `addr`: asked once, then kept up to date by a long poll
    /// while connections ask for it (and for [`DESTINATION_IDLE`] after), so no request
    /// waits for discovery once its address is known and a change reaches the proxy
    /// as soon as discovery has it. `unknown` when the destination service cannot be
    /// asked (the connection then goes where it was going).
    async fn resolve(self: &Arc<Self>, addr: SocketAddr) -> Arc<Resolved> {
        let cached = self.cache.lock().expect("poisoned").get(&addr).cloned();
        if let Some(entry) = cached {
            return entry.value();
        }
        let answer = match destination::ask(self.destination, addr, None).await {
            Ok(a) => a,
            Err(e) => {
                warn!(%addr, error = %e, "asking the destination service");
                return Arc::new(Resolved {
                    destination: Destination {
                        kind: "unknown".into(),
                        ..Destination::default()
                    },
                    routing: None,
                });
            }
        };
        let resolved = Resolved::new(answer.value, addr.port(), &self.namespace, None);
        let entry = Watched::new(Arc::new(resolved), answer.version);
        {
            let mut cache = self.cache.lock().expect("poisoned");
            if let Some(other) = cache.get(&addr) {
                // Asked at once by another connection: one watch is enough.
                return other.value();
            }
            cache.insert(addr, entry.clone());
        }
        let proxy = self.clone();
        let value = entry.value();
        tokio::spawn(async move {
            let ask = |since: String, held: Arc<Resolved>| {
                let proxy = proxy.clone();
                async move {
                    let a = destination::ask(proxy.destination, addr, Some(&since)).await?;
                    let r = Resolved::new(a.value, addr.port(), &proxy.namespace, Some(&held));
                    Ok((r, a.version))
                }
            };
            keep_fresh(entry.clone(), Some(DESTINATION_IDLE), ask).await;
            let mut cache = proxy.cache.lock().expect("poisoned");
            if cache.get(&addr).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                cache.remove(&addr);
            }
        });
        value
    }

    /// The pod's inbound policy: asked once, then kept up to date by a long poll. When
    /// discovery cannot be asked, the last answer holds; with none yet, everything is
    /// refused (the policy fails closed).
    async fn policy(self: &Arc<Self>) -> Arc<InboundPolicy> {
        if self.pod.is_empty() {
            return Arc::new(InboundPolicy::default());
        }
        // Asked once (the connections that arrive meanwhile wait for that answer); a
        // failed first ask is asked again by the next connection.
        let first = self.policy.get_or_try_init(|| async {
            let answer = destination::ask_inbound(self.destination, &self.pod, None).await?;
            let entry = Watched::new(Arc::new(answer.value), answer.version);
            self.clone().keep_policy_fresh(entry.clone());
            Ok::<_, std::io::Error>(entry)
        });
        match first.await {
            Ok(entry) => entry.value(),
            Err(e) => {
                warn!(pod = %self.pod, error = %e, "asking for the inbound policy");
                Arc::new(InboundPolicy::deny_all())
            }
        }
    }

    /// Keeps the inbound policy up to date, for as long as the proxy runs.
    fn keep_policy_fresh(self: Arc<Self>, entry: Arc<Watched<InboundPolicy>>) {
        let proxy = self;
        tokio::spawn(async move {
            let ask = |since: String, _held| {
                let proxy = proxy.clone();
                async move {
                    let a = destination::ask_inbound(proxy.destination, &proxy.pod, Some(&since))
                        .await?;
                    Ok((a.value, a.version))
                }
            };
            keep_fresh(entry, None, ask).await;
        });
    }

    /// Power of two choices: of two endpoints picked at random, the one with fewer open
    /// connections from this proxy.
    fn pick<'a>(&self, endpoints: &'a [Endpoint]) -> Option<&'a Endpoint> {
        let open = self.open.lock().expect("poisoned");
        balance::p2c(endpoints, |e| open.get(&e.addr).copied().unwrap_or(0))
    }

    async fn splice<A, B>(
        &self,
        mut from: A,
        mut to: B,
        direction: metrics::Direction,
        peer: Option<String>,
        already_to_client: u64,
    ) -> std::io::Result<()>
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let series = self.metrics.open(direction, peer.is_some());
        let result = tokio::io::copy_bidirectional(&mut from, &mut to).await;
        let (read, written) = *result.as_ref().unwrap_or(&(0, 0));
        series.close(read, written + already_to_client);
        result.map(|_| ())
    }
}

async fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let conn = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::other(format!("connecting to {addr} timed out")))??;
    let _ = conn.set_nodelay(true);
    Ok(conn)
}

/// Who spoke first on a connection whose protocol was not known.
enum Speaker<T> {
    /// The client, in this protocol; the other end, if it was opened meanwhile.
    Client(detect::Protocol, Option<T>),
    /// The server (opened by `connect`), with what it said.
    Server(T, Vec<u8>),
}

/// Waits for whoever speaks first on `conn`: the client (its protocol detected), or,
/// once the client has been quiet for [`detect::QUIET`], the server `connect` opens.
/// A protocol whose server speaks first is never stalled waiting for the client.
async fn first_speaker<T: AsyncRead + Unpin>(
    conn: &TcpStream,
    connect: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<Speaker<T>> {
    tokio::select! {
        p = detect::client_protocol(conn) => return Ok(Speaker::Client(p?, None)),
        _ = tokio::time::sleep(detect::QUIET) => {}
    }
    let mut onward = tokio::select! {
        p = detect::client_protocol(conn) => return Ok(Speaker::Client(p?, None)),
        o = connect => o?,
    };
    let mut first = vec![0u8; 16 * 1024];
    let server_first = tokio::select! {
        p = detect::client_protocol(conn) => Err(p?),
        n = onward.read(&mut first) => Ok(n?),
    };
    Ok(match server_first {
        Err(protocol) => Speaker::Client(protocol, Some(onward)),
        Ok(n) => {
            first.truncate(n);
            Speaker::Server(onward, first)
        }
    })
}

/// A byte stream in either direction: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An outbound connection's other end, opened.
struct Onward<'a> {
    io: Box<dyn Io>,
    /// The peer proxy's identity, if mutual TLS.
    peer: Option<String>,
    _open: Option<OpenGuard<'a>>,
}

impl AsyncRead for Onward<'_> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

/// A connection whose bytes are counted in its series until it is dropped.
struct Counted {
    io: Box<dyn Io>,
    read: u64,
    written: u64,
    series: Option<metrics::Open>,
    /// Accepted from a client (else opened to a server).
    accepted: bool,
}

impl Counted {
    /// A connection the proxy opened; `None` counts nothing.
    fn opened(io: Box<dyn Io>, series: Option<metrics::Open>) -> Counted {
        Counted {
            io,
            read: 0,
            written: 0,
            series,
            accepted: false,
        }
    }

    /// A connection the proxy accepted.
    fn accepted(io: Box<dyn Io>, series: metrics::Open) -> Counted {
        let mut c = Counted::opened(io, Some(series));
        c.accepted = true;
        c
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(series) = self.series.take() {
            // What came from the client: read from an accepted connection, written to
            // an opened one.
            if self.accepted {
                series.close(self.read, self.written);
            } else {
                series.close(self.written, self.read);
            }
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut this.io).poll_read(cx, buf);
        this.read += (buf.filled().len() - before) as u64;
        polled
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
        }
        polled
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let std::task::Poll::Ready(Ok(n)) = polled {
            this.written += n as u64;
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Counts a connection to an endpoint as open while it lives.
struct OpenGuard<'a> {
    open: &'a Mutex<HashMap<SocketAddr, usize>>,
    addr: SocketAddr,
}

impl<'a> OpenGuard<'a> {
    fn new(open: &'a Mutex<HashMap<SocketAddr, usize>>, addr: SocketAddr) -> Self {
        *open.lock().expect("poisoned").entry(addr).or_default() += 1;
        OpenGuard { open, addr }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("poisoned");
        if let Some(n) = open.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.addr);
            }
        }
    }
}

/// A number below `n` (> 0), from the std hasher's random keys: balancing needs no
/// more than that.
fn random_below(n: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default(),
    );
    (h.finish() % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::PortRange;

    #[test]
    fn port_ranges() {
        let r: PortRange = "4000-4100".parse().unwrap();
        assert!(r.contains(4000) && r.contains(4100) && !r.contains(4101));
        let one: PortRange = " 3306".parse().unwrap();
        assert_eq!((one.first, one.last), (3306, 3306));
        for bad in ["", "0", "65536", "a", "10-5", "1-2-3", "-5"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?}");
        }
    }
}
