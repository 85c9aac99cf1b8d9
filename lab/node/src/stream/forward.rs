//! Port-forwarding: every forwarded connection is a TCP connection to the pod's port
//! on its loopback, dialed from inside the pod's network namespace (as containerd does
//! it: `localhost:PORT`, IPv4 then IPv6), carried over
//!
//! - SPDY (`portforward.k8s.io`, directly or tunneled in WebSocket): the client opens
//!   a pair of streams per connection, `error` and `data`, with the `port` and
//!   `requestID` headers;
//! - WebSocket channels (`v4.channel.k8s.io`): the ports are the `port` query
//!   parameters, port N's data on channel 2N and its errors on 2N+1, each channel's
//!   first message the port number (16 bits, little-endian); one connection per port
//!   for the life of the WebSocket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{self, Connection};
use super::ws::{self, ChannelProtocol};

/// How long dialing the pod's port may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The SPDY protocol of port-forwarding.
pub(crate) const SPDY_PROTOCOL: &str = "portforward.k8s.io";

/// The pod whose ports are forwarded.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// `namespace/name`, for messages.
    pub pod: String,
    pub uid: String,
    /// The pod's network namespace; `None` for hostNetwork pods (the node's own).
    pub netns: Option<PathBuf>,
}

/// Go's words for an errno ("connection refused"), as containerd's messages use them.
fn go_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => {
            let d = nix::errno::Errno::from_raw(n).desc();
            let mut c = d.chars();
            c.next()
                .map(|f| f.to_lowercase().chain(c).collect())
                .unwrap_or_default()
        }
        None => e.to_string(),
    }
}

impl Target {
    /// Connects to `port` on the pod's loopback, IPv4 first.
    pub(crate) async fn dial(&self, port: u16) -> Result<TcpStream, String> {
        let netns = self.netns.clone();
        let attempt = move |ip: IpAddr| -> Result<std::net::TcpStream, std::io::Error> {
            let addr = SocketAddr::new(ip, port);
            let s = std::net::TcpStream::connect_timeout(&addr, DIAL_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        let both = move || {
            let v4 = attempt(IpAddr::V4(Ipv4Addr::LOCALHOST));
            match v4 {
                Ok(s) => Ok(s),
                Err(e4) => attempt(IpAddr::V6(Ipv6Addr::LOCALHOST)).map_err(|e6| (e4, e6)),
            }
        };
        let ns_name = netns
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // A socket keeps the namespace it was made in: a new thread enters the pod's.
        let joined = tokio::task::spawn_blocking(move || {
            std::thread::spawn(move || {
                if let Some(ns) = &netns {
                    let f = std::fs::File::open(ns).map_err(|e| Err(e.to_string()))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| Err(e.to_string()))?;
                }
                both().map_err(Ok)
            })
            .join()
        })
        .await;
        let result = match joined {
            Ok(Ok(r)) => r,
            _ => return Err("the dialing thread failed".into()),
        };
        match result {
            Ok(s) => TcpStream::from_std(s).map_err(|e| e.to_string()),
            Err(Err(why)) => Err(format!(
                "failed to enter the network namespace {ns_name:?}: {why}"
            )),
            Err(Ok((e4, e6))) => Err(format!(
                "failed to connect to localhost:{port} inside namespace {ns_name:?}, IPv4: dial tcp4 127.0.0.1:{port}: connect: {} IPv6 dial tcp6 [::1]:{port}: connect: {} ",
                go_error(&e4),
                go_error(&e6)
            )),
        }
    }

    /// kubelet's message for a failed forward.
    fn error(&self, port: u16, why: &str) -> String {
        format!(
            "error forwarding port {port} to pod {}, uid {}: {why}",
            self.pod, self.uid
        )
    }
}

/// Copies both ways until one direction ends, then gives the other a second to finish
/// (containerd's rule, after socat's).
async fn both_ways(up: impl Future<Output = ()>, down: impl Future<Output = ()>) {
    tokio::pin!(up, down);
    tokio::select! {
        () = &mut up => {
            let _ = tokio::time::timeout(Duration::from_secs(1), down).await;
        }
        () = &mut down => {
            let _ = tokio::time::timeout(Duration::from_secs(1), up).await;
        }
    }
}

/// A connection's pair of streams, as they arrive.
#[derive(Default)]
struct Pair {
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
}

/// Serves port-forwarding over SPDY (directly, or the tunnel's end).
pub(crate) async fn serve_spdy<T>(io: T, target: Arc<Target>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, mut incoming) = Connection::serve(io);
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    loop {
        let stream = tokio::select! {
            s = incoming.recv() => s,
            () = conn.closed() => None,
        };
        let Some(stream) = stream else { break };
        let port = stream
            .headers
            .get("port")
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p > 0);
        let kind = stream.headers.get("streamtype").unwrap_or("").to_owned();
        if port.is_none() || (kind != "data" && kind != "error") {
            tracing::debug!(headers = ?stream.headers, "port-forward stream refused");
            stream.writer.reset(spdy::PROTOCOL_ERROR).await;
            continue;
        }
        // Clients before request ids: the error stream's id, the data stream's id - 2.
        let request = match stream.headers.get("requestid") {
            Some(r) if !r.is_empty() => r.to_owned(),
            _ if kind == "error" => stream.id.to_string(),
            _ => stream.id.saturating_sub(2).to_string(),
        };
        let pair = pairs.entry(request.clone()).or_default();
        let slot = if kind == "data" {
            &mut pair.data
        } else {
            &mut pair.error
        };
        if slot.is_some() {
            let msg = format!(
                "error processing stream for request {request}: {kind} stream already assigned"
            );
            if let Some(e) = &pair.error {
                e.writer.write(Bytes::from(msg)).await;
            }
            stream.writer.reset(spdy::PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if pair.data.is_some()
            && pair.error.is_some()
            && let Some(Pair {
                data: Some(data),
                error: Some(error),
            }) = pairs.remove(&request)
        {
            tokio::spawn(forward_pair(target.clone(), data, error));
        }
    }
    conn.close().await;
}

async fn forward_pair(target: Arc<Target>, mut data: spdy::Stream, error: spdy::Stream) {
    let port = data
        .headers
        .get("port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(0);
    match target.dial(port).await {
        Err(why) => {
            let msg = target.error(port, &why);
            tracing::info!(pod = %target.pod, port, error = %why, "port-forward failed");
            error.writer.write(Bytes::from(msg)).await;
        }
        Ok(tcp) => {
            let (mut rd, mut wr) = tcp.into_split();
            let up = async {
                while let Some(chunk) = data.data.recv().await {
                    if wr.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let writer = data.writer.clone();
            let down = async move {
                let mut buf = vec![0u8; spdy::MAX_DATA];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if !writer.write(Bytes::copy_from_slice(&buf[..n])).await {
                                break;
                            }
                        }
                    }
                }
            };
            both_ways(up, down).await;
        }
    }
    data.writer.close().await;
    error.writer.close().await;
}

/// Serves port-forwarding over WebSocket channels, one connection per port in `ports`.
pub(crate) async fn serve_ws<T>(
    ws: WebSocketStream<T>,
    protocol: ChannelProtocol,
    ports: Vec<u16>,
    target: Arc<Target>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(16);
    let mut inputs: Vec<mpsc::Sender<Bytes>> = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, err_ch) = (
            u8::try_from(2 * i).unwrap_or(u8::MAX),
            u8::try_from(2 * i + 1).unwrap_or(u8::MAX),
        );
        for ch in [data_ch, err_ch] {
            if sink
                .send(protocol.encode(ch, &port.to_le_bytes()))
                .await
                .is_err()
            {
                return;
            }
        }
        let (in_tx, mut in_rx) = mpsc::channel::<Bytes>(16);
        inputs.push(in_tx);
        let (target, out) = (target.clone(), out_tx.clone());
        tasks.spawn(async move {
            let tcp = match target.dial(port).await {
                Ok(t) => t,
                Err(why) => {
                    let msg = target.error(port, &why);
                    let _ = out.send((err_ch, Bytes::from(msg))).await;
                    return;
                }
            };
            let (mut rd, mut wr) = tcp.into_split();
            let up = async move {
                while let Some(chunk) = in_rx.recv().await {
                    if wr.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = wr.shutdown().await;
            };
            let down = async {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let chunk = Bytes::copy_from_slice(&buf[..n]);
                            if out.send((data_ch, chunk)).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            };
            both_ways(up, down).await;
        });
    }
    drop(out_tx);
    let reader = async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((ch, data)) = protocol.decode(msg) else {
                continue;
            };
            // Data channels are even; the first message may repeat the port.
            if ch % 2 == 0
                && let Some(tx) = inputs.get(usize::from(ch / 2))
                && !data.is_empty()
                && tx.send(data).await.is_err()
            {
                continue;
            }
        }
    };
    let writer = async {
        while let Some((ch, data)) = out_rx.recv().await {
            if sink.send(protocol.encode(ch, &data)).await.is_err() {
                return;
            }
        }
        let _ = sink.send(ws::close_message()).await;
    };
    // Over when the client leaves or every port's connection has ended.
    tokio::select! {
        () = reader => {}
        () = writer => {}
    }
    tasks.abort_all();
}
