//! The sockets: UDP on plain threads (one `SO_REUSEPORT` socket per thread, blocking
//! receive, answers from the thread's own cache of encoded answers), TCP on tokio, and
//! the HTTP endpoints `/health`, `/ready` and `/metrics`.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s::http::response;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::wire::{self, AnswerCache, Handled, Proto};
use crate::{Error, Shared};

/// TCP connections served at once; more are closed at accept.
const MAX_TCP_CONNECTIONS: usize = 1024;
/// An idle TCP connection is closed after this long (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

fn bind_err(what: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Bind { what, addr, source }
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> Result<Socket, std::io::Error> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // [::]:53 next to 0.0.0.0:53: each family has its own socket.
        s.set_only_v6(true)?;
    }
    Ok(s)
}

/// Binds `threads` UDP sockets on `addr` (SO_REUSEPORT spreads clients over them).
pub fn bind_udp(addr: SocketAddr, threads: usize) -> Result<(Vec<UdpSocket>, SocketAddr), Error> {
    let mut out = Vec::new();
    let mut bound = addr;
    for _ in 0..threads.max(1) {
        let s =
            socket(bound, Type::DGRAM, Protocol::UDP).map_err(bind_err("DNS over UDP", addr))?;
        // A bigger receive buffer rides out bursts; the kernel caps it at rmem_max.
        let _ = s.set_recv_buffer_size(4 << 20);
        s.bind(&bound.into())
            .map_err(bind_err("DNS over UDP", addr))?;
        let u: UdpSocket = s.into();
        // Port 0: the other threads' sockets join the port the first one got.
        bound = u.local_addr().map_err(bind_err("DNS over UDP", addr))?;
        out.push(u);
    }
    Ok((out, bound))
}

/// Serves UDP on `sock` on a new thread.
pub fn spawn_udp(
    shared: Arc<Shared>,
    sock: UdpSocket,
    rt: tokio::runtime::Handle,
) -> Result<(), Error> {
    let addr = sock
        .local_addr()
        .map_err(bind_err("DNS over UDP", ([0, 0, 0, 0], 0).into()))?;
    std::thread::Builder::new()
        .name(format!("dns-udp-{}", addr.port()))
        .spawn(move || udp_loop(&shared, Arc::new(sock), &rt))
        .map_err(bind_err("a UDP thread", addr))?;
    Ok(())
}

fn udp_loop(shared: &Arc<Shared>, sock: Arc<UdpSocket>, rt: &tokio::runtime::Handle) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    let mut cache = AnswerCache::default();
    loop {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive");
                continue;
            }
        };
        let start = Instant::now();
        let request = &buf[..n];
        let v6 = peer.is_ipv6();
        let generation = shared.generation();
        if cache.lookup(request, generation, &mut out) {
            let _ = sock.send_to(&out, peer);
            let qtype = wire::parse_simple(request).map_or(0, |s| s.qtype);
            shared
                .metrics
                .observe_raw(Proto::Udp, v6, qtype, &out, start);
            continue;
        }
        match wire::handle(shared, request, Proto::Udp, v6) {
            Handled::Reply { bytes, cacheable } => {
                let _ = sock.send_to(&bytes, peer);
                if cacheable {
                    cache.insert(request, generation, &bytes);
                }
            }
            Handled::Drop => {}
            Handled::Forward(job) => {
                let (shared, sock) = (shared.clone(), sock.clone());
                rt.spawn(async move {
                    if let Some(bytes) = crate::forward::respond(&shared, *job).await {
                        let _ = sock.send_to(&bytes, peer);
                    }
                });
            }
        }
    }
}

/// Binds a TCP listener on `addr`.
pub fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, Error> {
    let s = socket(addr, Type::STREAM, Protocol::TCP).map_err(bind_err("DNS over TCP", addr))?;
    s.bind(&addr.into())
        .map_err(bind_err("DNS over TCP", addr))?;
    s.listen(1024).map_err(bind_err("DNS over TCP", addr))?;
    s.set_nonblocking(true)
        .map_err(bind_err("DNS over TCP", addr))?;
    TcpListener::from_std(s.into()).map_err(bind_err("DNS over TCP", addr))
}

/// Serves DNS over TCP (length-prefixed messages, several per connection).
pub async fn serve_tcp(shared: Arc<Shared>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_TCP_CONNECTIONS));
    // A failed accept (out of file descriptors) pauses instead of spinning.
    let mut acceptor = k8s::http::Acceptor::new(listener, "DNS over TCP");
    loop {
        let (stream, peer) = acceptor.accept().await;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp_conn(&shared, stream, peer.is_ipv6()).await;
        });
    }
}

async fn tcp_conn(shared: &Shared, mut stream: TcpStream, v6: bool) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let len = usize::from(len?);
        // A client that stops mid-message does not hold the connection forever.
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let reply = match wire::handle(shared, &buf[..len], Proto::Tcp, v6) {
            Handled::Reply { bytes, .. } => Some(bytes),
            Handled::Drop => None,
            Handled::Forward(job) => crate::forward::respond(shared, *job).await,
        };
        let Some(reply) = reply else {
            // Nothing sensible to say: close, so the client does not wait.
            return Ok(());
        };
        let n = u16::try_from(reply.len()).unwrap_or(u16::MAX);
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&reply[..usize::from(n)]);
        stream.write_all(&framed).await?;
    }
}

/// Binds an HTTP listener: `:PORT` means every address (IPv6 and IPv4).
pub fn bind_http(spec: &str) -> Result<TcpListener, Error> {
    let addrs = crate::parse_listen(spec, "--health-listen/--metrics-listen")?;
    let addr = addrs[0];
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_err("HTTP", addr))?;
    let _ = s.set_reuse_address(true);
    if addr.is_ipv6() && addrs.len() > 1 {
        // `:PORT`: one dual-stack socket for both families.
        let _ = s.set_only_v6(false);
    }
    s.bind(&addr.into()).map_err(bind_err("HTTP", addr))?;
    s.listen(128).map_err(bind_err("HTTP", addr))?;
    s.set_nonblocking(true).map_err(bind_err("HTTP", addr))?;
    TcpListener::from_std(s.into()).map_err(bind_err("HTTP", addr))
}

/// Serves `/health` (200 while the process runs), `/ready` (200 once the view has
/// synced, 503 before) and `/metrics`.
pub async fn serve_http(shared: Arc<Shared>, listener: TcpListener) {
    k8s::http::serve(listener, move |req| http_response(&shared, req.uri.path())).await;
}

fn http_response(shared: &Shared, path: &str) -> k8s::http::Response {
    const TEXT: &str = "text/plain";
    match path {
        "/health" => response(200, TEXT, "OK"),
        "/ready" if shared.is_synced() => response(200, TEXT, "OK"),
        "/ready" => response(503, TEXT, "not synced"),
        "/metrics" => response(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.metrics.render(),
        ),
        _ => response(404, TEXT, "not found"),
    }
}
