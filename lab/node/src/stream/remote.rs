//! A remote command (exec or attach) over either protocol: the client's stdin and
//! resize events into a [`Session`], the session's output back, then the [`Outcome`]
//! on the error channel, and the connection closed. When the client goes away first,
//! the command's task is aborted (which kills what it started).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::spdy::{self, Connection};
use super::ws::{self, ChannelProtocol};
use super::{Channel, Opts, Outcome, Session, TermSize};

/// What runs a remote command on a session: exec or attach.
pub(crate) type Handler = Box<dyn FnOnce(Session) -> BoxFuture<'static, Outcome> + Send>;

/// How long the client has to open its streams (kubelet's `streamCreationTimeout`).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a finished session waits for the client to close.
const LINGER: Duration = Duration::from_secs(5);

/// The SPDY protocols exec and attach accept (`X-Stream-Protocol-Version`).
pub(crate) const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
];

/// The version a SPDY protocol name stands for.
pub(crate) fn spdy_version(name: &str) -> u8 {
    match name {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        _ => 2,
    }
}

/// The channels and the session a transport builds for a command.
struct Plumbing {
    stdin: Option<mpsc::Sender<Bytes>>,
    resize: Option<mpsc::Sender<TermSize>>,
    out: mpsc::Receiver<(Channel, Bytes)>,
    session: Session,
}

fn plumbing(opts: Opts, stdin: Option<mpsc::Receiver<Bytes>>) -> Plumbing {
    let (stdin_tx, stdin_rx) = match stdin {
        Some(rx) => (None, Some(rx)),
        None if opts.stdin => {
            let (tx, rx) = mpsc::channel(16);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let (resize_tx, resize_rx) = if opts.tty {
        let (tx, rx) = mpsc::channel(4);
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let (out_tx, out_rx) = mpsc::channel(16);
    Plumbing {
        stdin: stdin_tx,
        resize: resize_tx,
        out: out_rx,
        session: Session {
            opts,
            stdin: stdin_rx,
            resize: resize_rx,
            out: out_tx,
        },
    }
}

/// Terminal sizes from a resize channel's bytes: JSON objects, one after another.
#[derive(Default)]
struct SizeDecoder(BytesMut);

impl SizeDecoder {
    fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.0.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut it = serde_json::Deserializer::from_slice(&self.0).into_iter::<TermSize>();
        let mut used = 0;
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    sizes.push(s);
                    used = it.byte_offset();
                }
                // Incomplete: wait for more bytes.
                Some(Err(e)) if e.is_eof() => break,
                // Garbage: drop what was buffered.
                Some(Err(_)) => {
                    used = self.0.len();
                    break;
                }
                None => {
                    used = it.byte_offset();
                    break;
                }
            }
        }
        let _ = self.0.split_to(used);
        sizes
    }
}

/// Where a transport writes a command's output.
trait Output {
    /// Writes `data` on `channel`; false once the client is gone.
    fn write(&mut self, channel: Channel, data: Bytes) -> impl Future<Output = bool> + Send;
}

/// Output as WebSocket messages.
struct WsOutput<'a, S> {
    sink: &'a mut S,
    protocol: ChannelProtocol,
}

impl<S> Output for WsOutput<'_, S>
where
    S: futures::Sink<Message> + Unpin + Send,
{
    async fn write(&mut self, channel: Channel, data: Bytes) -> bool {
        let n = if channel == Channel::Stdout { 1 } else { 2 };
        self.sink.send(self.protocol.encode(n, &data)).await.is_ok()
    }
}

/// Output on the SPDY streams the client opened for it.
struct SpdyOutput {
    stdout: Option<spdy::StreamWriter>,
    stderr: Option<spdy::StreamWriter>,
}

impl Output for SpdyOutput {
    async fn write(&mut self, channel: Channel, data: Bytes) -> bool {
        let w = if channel == Channel::Stdout {
            &self.stdout
        } else {
            &self.stderr
        };
        match w {
            Some(w) => w.write(data).await,
            None => true,
        }
    }
}

/// Waits for the command's output to end (or the command itself) and returns its
/// outcome, writing every output chunk to `write` (`None`: the client is gone).
async fn pump(
    work: &mut JoinHandle<Outcome>,
    out: &mut mpsc::Receiver<(Channel, Bytes)>,
    write: &mut impl Output,
) -> Option<Outcome> {
    enum Step {
        Out(Option<(Channel, Bytes)>),
        Done(Result<Outcome, tokio::task::JoinError>),
    }
    let outcome = loop {
        let step = tokio::select! {
            biased;
            o = out.recv() => Step::Out(o),
            r = &mut *work => Step::Done(r),
        };
        match step {
            Step::Out(Some((ch, data))) => {
                if !write.write(ch, data).await {
                    work.abort();
                    return None;
                }
            }
            Step::Out(None) => break (&mut *work).await,
            Step::Done(r) => break r,
        }
    };
    // What the command wrote before it ended.
    while let Ok((ch, data)) = out.try_recv() {
        if !write.write(ch, data).await {
            return None;
        }
    }
    Some(outcome.unwrap_or_else(|e| Outcome::Failed(format!("the command's task failed: {e}"))))
}

/// Serves a remote command over a WebSocket with the channel `protocol`.
pub(crate) async fn serve_ws<T>(
    ws: WebSocketStream<T>,
    protocol: ChannelProtocol,
    opts: Opts,
    handler: Handler,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let Plumbing {
        stdin,
        resize,
        mut out,
        session,
    } = plumbing(opts, None);
    let mut work = tokio::spawn(handler(session));
    // kubelet's sign that the session is set up: an empty message on the first
    // channel it writes.
    let first = if opts.stdout {
        1
    } else if opts.stderr {
        2
    } else {
        3
    };
    if sink.send(protocol.encode(first, &[])).await.is_err() {
        work.abort();
        return;
    }
    let mut reader = tokio::spawn(async move {
        let mut stdin = stdin;
        let mut sizes = SizeDecoder::default();
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = protocol.decode(msg) else {
                continue;
            };
            match channel {
                0 => {
                    if let Some(tx) = &stdin
                        && !data.is_empty()
                        && tx.send(data).await.is_err()
                    {
                        stdin = None;
                    }
                }
                4 => {
                    if let Some(tx) = &resize {
                        for s in sizes.push(&data) {
                            let _ = tx.send(s).await;
                        }
                    }
                }
                ws::CLOSE if protocol.version >= 5 && data.first() == Some(&0) => stdin = None,
                _ => {}
            }
        }
    });
    let mut output = WsOutput {
        sink: &mut sink,
        protocol,
    };
    let outcome = tokio::select! {
        o = pump(&mut work, &mut out, &mut output) => o,
        _ = &mut reader => None,
    };
    let Some(outcome) = outcome else {
        // The client went away: stop the command.
        work.abort();
        return;
    };
    let status = if protocol.version >= 4 {
        Some(serde_json::to_vec(&outcome.status()).unwrap_or_default())
    } else {
        outcome.text().map(String::into_bytes)
    };
    if let Some(s) = status {
        let _ = sink.send(protocol.encode(3, &s)).await;
    }
    let _ = sink.send(ws::close_message()).await;
    let _ = tokio::time::timeout(LINGER, reader).await;
}

/// The streams a SPDY client opens for a remote command.
#[derive(Default)]
struct SpdyStreams {
    error: Option<spdy::Stream>,
    stdin: Option<spdy::Stream>,
    stdout: Option<spdy::Stream>,
    stderr: Option<spdy::Stream>,
    resize: Option<spdy::Stream>,
}

/// Serves a remote command over SPDY with the channel protocol `version` (2 to 4).
pub(crate) async fn serve_spdy<T>(io: T, version: u8, opts: Opts, handler: Handler)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (conn, mut incoming) = Connection::serve(io);
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version >= 3);
    let mut s = SpdyStreams::default();
    let mut got = 0;
    let collect = async {
        while got < expected {
            let Some(stream) = incoming.recv().await else {
                return false;
            };
            let slot = match stream.headers.get("streamtype").unwrap_or("") {
                "error" => &mut s.error,
                "stdin" => &mut s.stdin,
                "stdout" => &mut s.stdout,
                "stderr" => &mut s.stderr,
                "resize" => &mut s.resize,
                other => {
                    tracing::debug!(stream = other, "unexpected stream type");
                    stream.writer.reset(spdy::PROTOCOL_ERROR).await;
                    continue;
                }
            };
            if slot.is_none() {
                got += 1;
            }
            *slot = Some(stream);
        }
        true
    };
    match tokio::time::timeout(STREAM_CREATION_TIMEOUT, collect).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(_) => {
            tracing::debug!("timed out waiting for client to create streams");
            conn.close().await;
            return;
        }
    }
    let Some(error) = s.error.take() else {
        conn.close().await;
        return;
    };
    let stdin_rx = s
        .stdin
        .as_mut()
        .map(|st| std::mem::replace(&mut st.data, mpsc::channel(1).1));
    let Plumbing {
        resize,
        mut out,
        session,
        ..
    } = plumbing(opts, stdin_rx);
    if let (Some(tx), Some(mut r)) = (resize, s.resize.take()) {
        tokio::spawn(async move {
            let mut sizes = SizeDecoder::default();
            while let Some(data) = r.data.recv().await {
                for size in sizes.push(&data) {
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let mut work = tokio::spawn(handler(session));
    let mut output = SpdyOutput {
        stdout: s.stdout.as_ref().map(|st| st.writer.clone()),
        stderr: s.stderr.as_ref().map(|st| st.writer.clone()),
    };
    let outcome = tokio::select! {
        o = pump(&mut work, &mut out, &mut output) => o,
        () = conn.closed() => None,
    };
    let Some(outcome) = outcome else {
        work.abort();
        return;
    };
    for st in [&s.stdout, &s.stderr, &s.stdin].into_iter().flatten() {
        st.writer.close().await;
    }
    let status = if version >= 4 {
        Some(serde_json::to_vec(&outcome.status()).unwrap_or_default())
    } else {
        outcome.text().map(String::into_bytes)
    };
    if let Some(st) = status {
        error.writer.write(Bytes::from(st)).await;
    }
    error.writer.close().await;
    conn.close().await;
    let _ = tokio::time::timeout(LINGER, conn.closed()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_split_anywhere() {
        let mut d = SizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"He"#), vec![]);
        assert_eq!(
            d.push(br#"ight":24}{"Width":100,"Height":30}"#),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 30
                }
            ]
        );
        assert_eq!(d.push(b"not json"), vec![]);
        assert_eq!(
            d.push(br#"{"Width":1,"Height":2}"#),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
    }
}
