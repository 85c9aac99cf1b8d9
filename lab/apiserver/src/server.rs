//! The HTTPS server: binds every listen address (also inside other network
//! namespaces), issues the serving certificate, accepts TLS connections and
//! authenticates each request before handing it to the [`Router`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{Chain, Error, Status};
use crate::{Config, Router, api, bootstrap, router, tls};

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
            let bearer = api::bearer_token(req.headers());
            let user = api::authenticate(&router.state, cert_user.as_ref(), bearer, &token);
            match user {
                Some(u) => {
                    req.extensions_mut().insert(u);
                }
                None if !api::is_public(req.uri().path()) => {
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
        tracing::debug!(%peer, error = %Chain(&e), "connection ended");
    }
}
