//! The HTTPS server: binds every listen address (also inside other network
//! namespaces), issues the serving certificate, accepts TLS connections and
//! authenticates each request before handing it to the [`Router`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::{Error, Status};
use crate::{Config, Router, api, bootstrap, router, tls};

/// The first pause after a failed accept (out of file descriptors, say), doubling up
/// to [`MAX_ACCEPT_BACKOFF`], as Go's `net/http` (and `k8s::http`) does; reset by a good
/// accept. Retrying at once would spin while the cause lasts.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A running server.
#[derive(Debug)]
pub struct Server {
    addresses: Vec<SocketAddr>,
    kubeconfig: PathBuf,
    router: Router,
    /// One accept loop per listener; each owns its connections.
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

    /// Stops accepting connections and drops the open ones, without waiting for
    /// either (see [`Server::stop`]).
    pub fn shutdown(self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    /// Stops cleanly: no new connections, the open ones dropped (watches end, and
    /// clients watch again elsewhere or later), then every commit made durable.
    pub async fn stop(self) -> Result<(), Error> {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks {
            // Cancelled, as asked; a listener that panicked has nothing more to stop.
            let _ = t.await;
        }
        let state = self.router.state.clone();
        tokio::task::spawn_blocking(move || state.store.flush_all(Duration::ZERO))
            .await
            .map_err(Error::Task)?
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
    let tasks = listeners
        .into_iter()
        .map(|(listener, addr)| {
            tokio::spawn(accept_loop(
                listener,
                addr,
                acceptor.clone(),
                router.clone(),
                token.clone(),
            ))
        })
        .collect();
    tls::write_atomic(&kubeconfig, pki.kubeconfig(&server_url).as_bytes(), true)?;
    println!("kubeconfig: {}", kubeconfig.display());
    Ok(Server {
        addresses,
        kubeconfig,
        router,
        tasks,
    })
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

/// Runs the server until SIGTERM or SIGINT, then stops it cleanly ([`Server::stop`]).
pub async fn serve(config: Config) -> Result<(), Error> {
    // Taken over before anything starts: a signal during the start is kept, not fatal.
    let mut shutdown = k8s::Shutdown::new().map_err(Error::Signals)?;
    let server = start(config).await?;
    shutdown.recv().await;
    tracing::info!("stopping the API server");
    server.stop().await
}

/// Accepts connections on `listener` until the task is aborted, which also drops the
/// connections it accepted (a [`JoinSet`] aborts its tasks when dropped).
async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    token: Arc<str>,
) {
    tracing::info!(%addr, "serving the Kubernetes API");
    let mut connections = JoinSet::new();
    let mut backoff = FIRST_ACCEPT_BACKOFF;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    backoff = FIRST_ACCEPT_BACKOFF;
                    connections.spawn(connection(
                        tcp,
                        peer,
                        acceptor.clone(),
                        router.clone(),
                        token.clone(),
                    ));
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, pause = ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            },
            // Reap finished connections (disabled while there are none).
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: Router,
    token: Arc<str>,
) {
    let handshake = std::time::Instant::now();
    let tls = match acceptor.accept(tcp).await {
        Ok(t) => {
            tracing::debug!(target: "apiserver::requests", %peer, took = ?handshake.elapsed(), "TLS connection");
            t
        }
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
            let bearer = api::bearer_token(req.headers());
            let user = api::authenticate(&router.state, cert_user.as_ref(), bearer, &token);
            match user {
                Some(u) => {
                    req.extensions_mut().insert(u);
                }
                None if !api::is_public(req.uri().path()) => {
                    return Ok::<_, Infallible>(api::status_response(&Status::unauthorized()));
                }
                // Authorized as kube-apiserver authorizes anonymous requests.
                None => {
                    req.extensions_mut().insert(api::User::anonymous());
                }
            }
            // kube-apiserver's httplog at -v=3: each request, its status and its time to
            // the response head (for a watch: until it started).
            if !tracing::enabled!(target: "apiserver::requests", tracing::Level::DEBUG) {
                return Ok(router.handle(req).await);
            }
            let (started, method, path) = (
                std::time::Instant::now(),
                req.method().clone(),
                req.uri().path().to_owned(),
            );
            let response = router.handle(req).await;
            tracing::debug!(
                target: "apiserver::requests",
                %peer,
                %method,
                path,
                status = response.status().as_u16(),
                took = ?started.elapsed(),
            );
            Ok(response)
        }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), svc)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, error = %k8s::ErrorChain(&e), "connection ended");
    }
}
