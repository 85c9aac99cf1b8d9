//! Layer 4: TCP and UDP listeners, TLS passthrough's TCP leg, PROXY protocol v2.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

use super::http::random;
use super::upstream::{BackendKey, CONNECT_TIMEOUT, Upstream, Upstreams};
use super::{ListenerRt, PortState, Shared};
use crate::config::WeightedBackend;

/// A UDP flow with no datagram either way for this long ends (Envoy's UDP default).
const UDP_IDLE: Duration = Duration::from_secs(60);
/// Endpoints tried before a TCP connection is given up.
const CONNECT_ATTEMPTS: usize = 3;

/// Weighted backends of an L4 route.
#[derive(Debug)]
pub(crate) struct Backends {
    /// `(cumulative weight, backend)`.
    list: Vec<(u64, Option<Arc<Upstream>>)>,
    total: u64,
}

impl Backends {
    pub(crate) fn new(
        list: &[WeightedBackend],
        upstreams: &Upstreams,
        used: &mut HashSet<BackendKey>,
    ) -> Self {
        let mut total = 0;
        let list = list
            .iter()
            .map(|wb| {
                total += u64::from(wb.weight);
                let b = wb.backend.as_ref().map(|b| {
                    let u = upstreams.get(b);
                    if !used.contains(&u.key) {
                        used.insert(u.key.clone());
                    }
                    u
                });
                (total, b)
            })
            .collect();
        Self { list, total }
    }

    /// A backend by weight; `None` when there is none (or the reference was invalid).
    pub(crate) fn choose(&self) -> Option<&Arc<Upstream>> {
        if self.total == 0 {
            return None;
        }
        let pick = random() % self.total;
        self.list
            .iter()
            .find(|(cum, _)| pick < *cum)
            .and_then(|(_, b)| b.as_ref())
    }
}

/// A TCP connection to one of `up`'s endpoints, trying others when one refuses.
async fn connect(up: &Upstream) -> Option<TcpStream> {
    let mut failed = Vec::new();
    for _ in 0..CONNECT_ATTEMPTS {
        let ep = up.pick(&failed)?;
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(ep)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Some(s);
            }
            _ => failed.push(ep),
        }
    }
    None
}

/// Proxies a TCP connection to the backends.
pub(crate) async fn tcp(
    stream: TcpStream,
    remote: SocketAddr,
    b: &Backends,
    shared: &Shared,
    _drain: &watch::Receiver<bool>,
) {
    tcp_with_prefix(stream, &[], remote, b, shared).await;
}

/// Proxies a TCP connection whose first bytes (`prefix`) were already read.
pub(crate) async fn tcp_with_prefix(
    mut stream: TcpStream,
    prefix: &[u8],
    remote: SocketAddr,
    b: &Backends,
    shared: &Shared,
) {
    let Some(up) = b.choose() else { return };
    // Envoy's TCP proxy counts connections against max_connections; here one slot each.
    let Some(_slot) = up.request_slot() else {
        up.series.overflow.inc();
        return;
    };
    let Some(mut backend) = connect(up).await else {
        tracing::debug!(backend = %up.name, "no endpoint accepted a TCP connection");
        return;
    };
    let mut head = Vec::new();
    if shared.options.proxy_protocol_out
        && let Ok(local) = stream.local_addr()
    {
        head = proxy_header(remote, local);
    }
    head.extend_from_slice(prefix);
    if !head.is_empty() && backend.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut backend).await;
}

/// The PROXY protocol v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY protocol v2 header: the client's address (`None` for LOCAL or an
/// unspecified family). Anything else is an error and the connection is closed.
pub(crate) async fn read_proxy_header<S: tokio::io::AsyncRead + Unpin>(
    s: &mut S,
) -> io::Result<Option<SocketAddr>> {
    let bad =
        |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("PROXY header: {what}"));
    let mut h = [0u8; 16];
    s.read_exact(&mut h).await?;
    if h[..12] != SIGNATURE {
        return Err(bad("no v2 signature"));
    }
    if h[12] >> 4 != 2 {
        return Err(bad("not version 2"));
    }
    let command = h[12] & 0x0f;
    let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
    // Addresses (at most 216 bytes for AF_UNIX) and TLVs; more is not a header we take.
    if len > 1024 {
        return Err(bad("too long"));
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    match command {
        0 => return Ok(None),
        1 => {}
        _ => return Err(bad("unknown command")),
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    match h[13] {
        0x11 | 0x12 => {
            if len < 12 {
                return Err(bad("short IPv4 addresses"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port(&body[8..10]))))
        }
        0x21 | 0x22 => {
            if len < 36 {
                return Err(bad("short IPv6 addresses"));
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                port(&body[32..34]),
            )))
        }
        _ => Ok(None),
    }
}

/// A PROXY protocol v2 header for a TCP connection from `src` to `dst`.
pub(crate) fn proxy_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (src_ip, dst_ip) = (src.ip().to_canonical(), dst.ip().to_canonical());
    let mut h = SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    match (src_ip, dst_ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            h.push(0x11);
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.octets());
            h.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            h.push(0x21);
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&v6(s).octets());
            h.extend_from_slice(&v6(d).octets());
        }
    }
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// One client's flow: a socket connected to the chosen endpoint.
struct Flow {
    socket: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
}

/// Serves a UDP listener until aborted: a flow per client address, idle ones dropped.
pub(crate) async fn serve_udp(
    sock: UdpSocket,
    state: Arc<PortState>,
    _drain: watch::Receiver<bool>,
) {
    let sock = Arc::new(sock);
    let flows: Arc<Mutex<HashMap<SocketAddr, Flow>>> = Arc::default();
    let epoch = Instant::now();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, client)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let now = epoch.elapsed().as_millis() as u64;
        let existing = flows.lock().unwrap().get(&client).map(|f| {
            f.last.store(now, Ordering::Relaxed);
            Arc::clone(&f.socket)
        });
        let socket = match existing {
            Some(s) => s,
            None => {
                let rt = state.current().0;
                let ListenerRt::Udp(backends) = &*rt else {
                    continue;
                };
                let Some(ep) = backends.choose().and_then(|u| u.pick(&[])) else {
                    continue;
                };
                let local: SocketAddr = if ep.is_ipv4() {
                    (Ipv4Addr::UNSPECIFIED, 0).into()
                } else {
                    (Ipv6Addr::UNSPECIFIED, 0).into()
                };
                let Ok(up) = UdpSocket::bind(local).await else {
                    continue;
                };
                if up.connect(ep).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                let last = Arc::new(AtomicU64::new(now));
                flows.lock().unwrap().insert(
                    client,
                    Flow {
                        socket: Arc::clone(&up),
                        last: Arc::clone(&last),
                    },
                );
                tokio::spawn(udp_replies(
                    Arc::clone(&up),
                    Arc::clone(&sock),
                    client,
                    last,
                    epoch,
                    Arc::clone(&flows),
                ));
                up
            }
        };
        let _ = socket.send(&buf[..n]).await;
    }
}

/// Relays an endpoint's datagrams back to the client until the flow idles out.
async fn udp_replies(
    up: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    client: SocketAddr,
    last: Arc<AtomicU64>,
    epoch: Instant,
    flows: Arc<Mutex<HashMap<SocketAddr, Flow>>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(UDP_IDLE, up.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                last.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                let _ = listener.send_to(&buf[..n], client).await;
            }
            Ok(Err(_)) => {}
            Err(_) => {
                let quiet = epoch.elapsed().as_millis() as u64 - last.load(Ordering::Relaxed);
                if Duration::from_millis(quiet) >= UDP_IDLE {
                    flows.lock().unwrap().remove(&client);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::tests::Rng;

    #[tokio::test]
    async fn proxy_headers_round_trip() {
        for (src, dst) in [
            ("192.0.2.1:1234", "198.51.100.2:80"),
            ("[2001:db8::1]:5", "[2001:db8::2]:443"),
        ] {
            let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
            let mut h = proxy_header(src, dst);
            h.extend_from_slice(b"GET /");
            let mut r = &h[..];
            assert_eq!(read_proxy_header(&mut r).await.unwrap(), Some(src));
            assert_eq!(r, b"GET /", "exactly the header is consumed");
        }
    }

    #[tokio::test]
    async fn mutated_proxy_headers_never_panic() {
        let base = proxy_header(
            "192.0.2.1:1".parse().unwrap(),
            "192.0.2.2:2".parse().unwrap(),
        );
        let mut rng = Rng(0x9e7);
        for _ in 0..5000 {
            let mut m = base.clone();
            let i = rng.below(m.len());
            m[i] = rng.next() as u8;
            m.truncate(rng.below(m.len() + 1).max(m.len() - rng.below(3)));
            let _ = read_proxy_header(&mut &m[..]).await;
        }
        let mut bad = base.clone();
        bad[0] = b'X';
        assert!(read_proxy_header(&mut &bad[..]).await.is_err());
    }
}
