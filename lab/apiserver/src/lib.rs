//! `apiserver`: the lab's control plane, a Kubernetes-API-compatible server that
//! kubectl and kube-rs talk to (`kubewire apiserver`).
//!
//! - [`serve`] / [`start`]: HTTPS (rustls) on every listen address, with a CA made on
//!   first start, client-certificate and bearer-token authentication, and
//!   `DIR/admin.kubeconfig` written once the server is ready.
//! - [`router`]: the same API as a tower service without sockets or TLS, for in-process
//!   clients (`kube::Client::new(router, "default")`).
//!
//! See `docs/apiserver.md` for what is served so far.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

mod alloc;
mod api;
mod apply;
mod bootstrap;
mod defaults;
mod discovery;
mod error;
mod formats;
mod gc;
mod kubelet;
mod patch;
mod protobuf;
mod resources;
mod schema;
mod selector;
mod service;
mod store;
mod strict;
mod table;
mod tls;
mod token;
mod util;
mod validate;

pub use api::ResponseBody;
pub use error::{Cause, Error, Status};

/// The Kubernetes version this server presents (`/version`, OpenAPI info).
pub const KUBERNETES_VERSION: &str = "v1.32.0";

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database, CA, certificates, token and `admin.kubeconfig` live here.
    pub data_dir: PathBuf,
    /// Addresses to serve HTTPS on; port 0 picks a free port (see [`Server::addresses`]).
    pub listen: Vec<SocketAddr>,
    /// Service ranges, at most one per IP family; the first is the primary family.
    pub service_cidrs: Vec<IpNet>,
    /// Range of NodePorts.
    pub node_port_range: RangeInclusive<u16>,
    /// Events the watch log keeps; watches from further back get 410 Expired.
    pub watch_log_capacity: usize,
    /// Addresses to serve on inside other network namespaces (the lab's underlay), each
    /// with the path of the namespace file (`/run/netns/NAME` or `/proc/PID/ns/net`).
    pub listen_in_netns: Vec<NetnsListen>,
    /// The address the `default/kubernetes` service points pods at; `None`: the IP of
    /// the first `listen_in_netns` address, else of the first `listen` address.
    pub advertise_address: Option<IpAddr>,
}

/// A listen address inside another network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsListen {
    /// The namespace file.
    pub netns: PathBuf,
    /// The address, as seen inside that namespace.
    pub addr: SocketAddr,
}

impl std::str::FromStr for NetnsListen {
    type Err = String;

    /// `NETNS=ADDR`, where NETNS is a name under /run/netns or a path.
    fn from_str(s: &str) -> Result<NetnsListen, String> {
        let (ns, addr) = s.rsplit_once('=').ok_or_else(|| {
            format!("{s:?}: expected NETNS=ADDR, e.g. kubewire-underlay=198.18.0.1:6443")
        })?;
        let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        let netns = if ns.contains('/') {
            PathBuf::from(ns)
        } else {
            Path::new("/run/netns").join(ns)
        };
        Ok(NetnsListen { netns, addr })
    }
}

impl Config {
    /// The lab's defaults, storing in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 6443))],
            service_cidrs: default_service_cidrs(),
            node_port_range: 30000..=32767,
            watch_log_capacity: store::DEFAULT_LOG_CAPACITY,
            listen_in_netns: Vec::new(),
            advertise_address: None,
        }
    }
}

fn default_service_cidrs() -> Vec<IpNet> {
    ["10.96.0.0/12", "fd00:10:96::/112"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 30000-32767"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?}: the range must be non-empty and start above 0"
        ));
    }
    Ok(a..=b)
}

/// Command-line flags of `kubewire apiserver`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Directory for the database, the CA and certificates and `admin.kubeconfig`
    /// (written once the server is ready to serve).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve HTTPS on; repeat for several. Port 0 picks a free port.
    #[arg(long = "listen", default_value = "127.0.0.1:6443")]
    pub listen: Vec<SocketAddr>,
    /// Service IP range(s), comma-separated, at most one per IP family.
    #[arg(
        long = "service-cidr",
        value_delimiter = ',',
        default_value = "10.96.0.0/12,fd00:10:96::/112"
    )]
    pub service_cidrs: Vec<IpNet>,
    /// NodePort range.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub node_port_range: RangeInclusive<u16>,
    /// Also serve inside a network namespace: `NETNS=ADDR`, NETNS a name under /run/netns
    /// or a namespace file path (the lab's underlay: `kubewire-underlay=198.18.0.1:6443`).
    #[arg(long = "listen-netns")]
    pub listen_in_netns: Vec<NetnsListen>,
    /// IP the `default/kubernetes` service's endpoints point at (kube-apiserver's
    /// `--advertise-address`). Default: the first --listen-netns address's IP, else the
    /// first --listen IP.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
}

impl From<Args> for Config {
    fn from(a: Args) -> Config {
        Config {
            data_dir: a.data_dir,
            listen: a.listen,
            service_cidrs: a.service_cidrs,
            node_port_range: a.node_port_range,
            watch_log_capacity: store::DEFAULT_LOG_CAPACITY,
            listen_in_netns: a.listen_in_netns,
            advertise_address: a.advertise_address,
        }
    }
}

/// The API as a tower service, every request treated as the cluster admin (there is no
/// connection to authenticate). Cheap to clone.
#[derive(Clone)]
pub struct Router {
    state: Arc<api::State>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").finish_non_exhaustive()
    }
}

impl Router {
    /// Handles one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        api::handle(self.state.clone(), req).await
    }
}

impl Router {
    /// The ServiceAccount (`system:serviceaccount:NS:NAME`) a bearer token authenticates
    /// as, if it is one of this server's valid ServiceAccount tokens.
    pub fn service_account(&self, token: &str) -> Option<String> {
        self.state
            .signer
            .authenticate(&self.state.store, token, util::now_secs())
            .map(|u| u.username())
    }
}

impl<B> tower_service::Service<Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let state = self.state.clone();
        Box::pin(async move { Ok(api::handle(state, req).await) })
    }
}

/// Opens (or creates) the store in `config.data_dir` and returns the API as a tower
/// service, without listening anywhere.
pub fn router(config: &Config) -> Result<Router, Error> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
    let store = store::Store::open(
        &config.data_dir.join("state.redb"),
        config.watch_log_capacity,
    )?;
    let ranges = service::Ranges {
        cidrs: config.service_cidrs.clone(),
        node_ports: config.node_port_range.clone(),
    };
    store.set_allocator(&ranges)?;
    let state = api::State {
        store,
        ranges,
        server_address: std::sync::Mutex::new(String::new()),
        catalog: resources::Catalog::default(),
        signer: token::Signer::load_or_create(&config.data_dir)?,
        kubelet: kubelet::KubeletClient::new(
            &config.data_dir,
            config.listen_in_netns.first().map(|l| l.netns.clone()),
        )?,
        pending: gc::Pending::default(),
    };
    bootstrap::bootstrap(&state)?;
    state.reload_crds()?;
    gc::recover(&state)?;
    let state = Arc::new(state);
    gc::spawn_worker(&state);
    gc::spawn_flusher(&state);
    Ok(Router { state })
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    addresses: Vec<SocketAddr>,
    kubeconfig: PathBuf,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// The bound addresses (with the real ports when port 0 was asked for).
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Path of the admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs until the listeners stop (they do not, unless the runtime shuts down).
    pub async fn wait(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops accepting connections and drops the open ones.
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts serving: opens the store, binds every listen address, issues certificates and
/// then writes `admin.kubeconfig` (scripts wait for that file) and prints its path.
pub async fn start(config: Config) -> Result<Server, Error> {
    // Opening the store first fails if another server holds this data dir; then a
    // kubeconfig left by an earlier run must not tell scripts that this one is ready.
    let router = router(&config)?;
    let kubeconfig = tls::kubeconfig_path(&config.data_dir);
    match std::fs::remove_file(&kubeconfig) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(&kubeconfig, e)),
    }
    let mut listeners = Vec::new();
    for addr in &config.listen {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen {
                addr: *addr,
                source,
            })?;
        let local = l.local_addr().map_err(|source| Error::Listen {
            addr: *addr,
            source,
        })?;
        listeners.push((l, local));
    }
    for l in &config.listen_in_netns {
        let std_listener = bind_in_netns(&l.netns, l.addr)?;
        let listener = TcpListener::from_std(std_listener).map_err(|source| Error::Listen {
            addr: l.addr,
            source,
        })?;
        let local = listener.local_addr().map_err(|source| Error::Listen {
            addr: l.addr,
            source,
        })?;
        listeners.push((listener, local));
    }
    let addresses: Vec<SocketAddr> = listeners.iter().map(|(_, a)| *a).collect();
    let mut extra_ips: Vec<IpAddr> = config
        .service_cidrs
        .iter()
        .map(bootstrap::first_ip)
        .collect();
    extra_ips.extend(config.advertise_address);
    let pki = tls::Pki::ensure(&config.data_dir, &addresses, &extra_ips)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
    let server_url = addresses
        .first()
        .map(|a| tls::server_url(*a))
        .unwrap_or_default();
    if let Ok(mut a) = router.state.server_address.lock() {
        *a = server_url.trim_start_matches("https://").to_string();
    }
    // Pods reach the API through the `kubernetes` service: its endpoint is the advertise
    // address (by default the one opened in the lab's underlay).
    let (host, in_netns) = addresses.split_at(config.listen.len());
    if let Some(addr) = bootstrap::advertise_addr(config.advertise_address, host, in_netns) {
        bootstrap::publish_endpoints(&router.state, addr)?;
    }
    let token: Arc<str> = Arc::from(pki.admin_token.as_str());
    let mut tasks = Vec::new();
    for (listener, addr) in listeners {
        let acceptor = acceptor.clone();
        let router = router.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            tracing::info!(%addr, "serving the Kubernetes API");
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                tokio::spawn(connection(
                    tcp,
                    peer,
                    acceptor.clone(),
                    router.clone(),
                    token.clone(),
                ));
            }
        }));
    }
    tls::write_atomic(&kubeconfig, pki.kubeconfig(&server_url).as_bytes(), true)?;
    println!("kubeconfig: {}", kubeconfig.display());
    Ok(Server {
        addresses,
        kubeconfig,
        tasks,
    })
}

/// Mints a client certificate for `user` in `groups` (for a node: `system:node:NAME` in
/// `system:nodes`), signed by the CA in `data_dir`, and returns a kubeconfig for
/// `server` (`https://IP:PORT`) that uses it. Every authenticated user may do
/// everything for now (no authorization yet).
pub fn client_kubeconfig(
    data_dir: &Path,
    server: &str,
    user: &str,
    groups: &[&str],
) -> Result<String, Error> {
    std::fs::create_dir_all(data_dir).map_err(|e| Error::io(data_dir, e))?;
    tls::client_kubeconfig(data_dir, server, user, groups)
}

/// Opens a listening socket inside the network namespace at `netns`: a socket keeps the
/// namespace it was created in, so one short-lived thread enters the namespace, binds
/// and returns the socket. (`netlink::netns::run_in_path` does the same; the API server
/// does not depend on the kernel crate for this one call.)
fn bind_in_netns(netns: &Path, addr: SocketAddr) -> Result<std::net::TcpListener, Error> {
    let file = std::fs::File::open(netns).map_err(|e| Error::io(netns, e))?;
    let listen_err = move |source| Error::Listen { addr, source };
    std::thread::spawn(move || -> Result<std::net::TcpListener, Error> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| listen_err(std::io::Error::from(e)))?;
        let l = std::net::TcpListener::bind(addr).map_err(listen_err)?;
        l.set_nonblocking(true).map_err(listen_err)?;
        Ok(l)
    })
    .join()
    .map_err(|_| listen_err(std::io::Error::other("namespace thread panicked")))?
}

/// Runs the server until the process ends.
pub async fn serve(config: Config) -> Result<(), Error> {
    start(config).await?.wait().await;
    Ok(())
}

/// Paths anyone may read, as kube-apiserver's `system:public-info-viewer` allows.
fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
        || ["/healthz/", "/livez/", "/readyz/"]
            .iter()
            .any(|p| path.starts_with(p))
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    token: Arc<str>,
) {
    let tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
    };
    // The verifier only lets through certificates signed by our CA: a client
    // certificate names the user (CN) and groups (O), as kube-apiserver reads it.
    let cert_user = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| api::User::from_certificate(c.as_ref()));
    let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        let router = router.clone();
        let token = token.clone();
        let cert_user = cert_user.clone();
        async move {
            let bearer = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim)
                .map(str::to_string);
            let user = cert_user.or_else(|| {
                let t = bearer.as_deref()?;
                if t == &*token {
                    return Some(api::User::admin());
                }
                let sa =
                    router
                        .state
                        .signer
                        .authenticate(&router.state.store, t, util::now_secs())?;
                Some(api::User::service_account(&sa.namespace, &sa.name))
            });
            match user {
                Some(u) => {
                    req.extensions_mut().insert(u);
                }
                None if !is_public(req.uri().path()) => {
                    return Ok::<_, Infallible>(api::status_response(&Status::unauthorized()));
                }
                None => {}
            }
            Ok(router.handle(req).await)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .await
    {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
}
