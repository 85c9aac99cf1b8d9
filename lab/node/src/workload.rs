//! `kubewire workload ...`: the built-in programs containers without a `command` run
//! (chosen by image name, see docs/node.md): an HTTP "whoami" server like
//! traefik/whoami, TCP and UDP echo servers, and sleep.

use std::net::{Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `kubewire workload` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WorkloadArgs {
    /// HTTP whoami: answers every request with the pod, node, addresses and the request's
    /// headers; `/healthz` answers `ok`.
    Http {
        /// Ports to serve on (all addresses, IPv4 and IPv6).
        #[arg(long = "port", default_value = "80")]
        ports: Vec<u16>,
    },
    /// Echoes every TCP connection back.
    TcpEcho {
        #[arg(long = "port", default_value = "7")]
        ports: Vec<u16>,
    },
    /// Echoes every UDP datagram back.
    UdpEcho {
        #[arg(long = "port", default_value = "7")]
        ports: Vec<u16>,
    },
    /// Sleeps until killed.
    Sleep,
}

/// What the whoami page shows about where it runs (from `KUBEWIRE_*` variables the node
/// sets for built-in workloads).
#[derive(Debug, Clone, Default)]
struct Identity {
    hostname: String,
    pod: String,
    namespace: String,
    pod_ip: String,
    node: String,
}

impl Identity {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Identity {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pod: var("KUBEWIRE_POD_NAME"),
            namespace: var("KUBEWIRE_POD_NAMESPACE"),
            pod_ip: var("KUBEWIRE_POD_IP"),
            node: var("KUBEWIRE_NODE_NAME"),
        }
    }
}

/// Binds a dual-stack listener on `[::]:port` (falls back to IPv4 when IPv6 is off).
fn tcp_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match std::net::TcpListener::bind(v6) {
        Ok(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }
        Err(_) => {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }
    }
}

fn whoami(id: &Identity, req: &Request<Incoming>, peer: SocketAddr, local: SocketAddr) -> String {
    let mut s = String::new();
    let unmap = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::from((v4, v6.port()))),
        a => a,
    };
    s.push_str(&format!("Hostname: {}\n", id.hostname));
    s.push_str(&format!("Pod: {}\n", id.pod));
    s.push_str(&format!("Namespace: {}\n", id.namespace));
    s.push_str(&format!("PodIP: {}\n", id.pod_ip));
    s.push_str(&format!("Node: {}\n", id.node));
    s.push_str(&format!("IP: {}\n", unmap(local).ip()));
    s.push_str(&format!("RemoteAddr: {}\n", unmap(peer)));
    s.push_str(&format!(
        "{} {} {:?}\n",
        req.method(),
        req.uri(),
        req.version()
    ));
    for (k, v) in req.headers() {
        s.push_str(&format!(
            "{}: {}\n",
            title_case(k.as_str()),
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    s
}

fn title_case(h: &str) -> String {
    h.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn serve_http(port: u16, id: Identity) -> std::io::Result<()> {
    let listener = tcp_listener(port)?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let local = stream.local_addr()?;
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                // An access log line, so `kubectl logs` shows the traffic.
                println!("{peer} {} {}", req.method(), req.uri());
                let body = if req.uri().path() == "/healthz" {
                    "ok\n".to_owned()
                } else {
                    whoami(&id, &req, peer, local)
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn tcp_echo(port: u16) -> std::io::Result<()> {
    let listener = tcp_listener(port)?;
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

async fn udp_echo(port: u16) -> std::io::Result<()> {
    let sock = match tokio::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(s) => s,
        Err(_) => tokio::net::UdpSocket::bind(("0.0.0.0", port)).await?,
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}

/// Runs a workload until it fails or is killed.
pub async fn run(args: WorkloadArgs) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    match args {
        WorkloadArgs::Http { ports } => {
            let id = Identity::from_env();
            for p in ports {
                tasks.spawn(serve_http(p, id.clone()));
            }
        }
        WorkloadArgs::TcpEcho { ports } => {
            for p in ports {
                tasks.spawn(tcp_echo(p));
            }
        }
        WorkloadArgs::UdpEcho { ports } => {
            for p in ports {
                tasks.spawn(udp_echo(p));
            }
        }
        WorkloadArgs::Sleep => std::future::pending::<()>().await,
    }
    eprintln!("kubewire workload: serving");
    while let Some(r) = tasks.join_next().await {
        r.map_err(std::io::Error::other)??;
    }
    Ok(())
}
