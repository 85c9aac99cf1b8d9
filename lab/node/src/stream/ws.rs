//! Kubernetes' WebSocket channel protocols: every message carries one channel's bytes,
//! the channel number first (a byte in the binary protocols, an ASCII digit before
//! base64 text in the `base64.` ones). `v5.channel.k8s.io` adds channel 255, the CLOSE
//! signal: `[255, n]` says the sender is done with channel `n` (stdin's end of file).
//!
//! Also the tunnel kubectl's port-forward uses since 1.31
//! (`SPDY/3.1+portforward.k8s.io`): a byte stream, here a SPDY connection, carried in
//! binary messages.

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The CLOSE signal's channel (v5).
pub(crate) const CLOSE: u8 = 255;

/// The channel protocols exec and attach accept, in the server's order of preference
/// (the client's order decides).
pub(crate) const REMOTE_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// The protocols port-forward accepts over WebSocket.
pub(crate) const FORWARD_PROTOCOLS: &[&str] = &[
    TUNNEL_PROTOCOL,
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];

/// SPDY port-forwarding tunneled through WebSocket.
pub(crate) const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// One of the channel protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelProtocol {
    /// 1 (`channel.k8s.io`: errors as text), 4 (a `Status` on the error channel) or 5
    /// (and the CLOSE signal).
    pub version: u8,
    /// Text messages with base64 payloads.
    pub base64: bool,
}

impl ChannelProtocol {
    /// The protocol a negotiated subprotocol names; no subprotocol is binary v1.
    pub(crate) fn parse(name: &str) -> Option<ChannelProtocol> {
        let (version, base64) = match name {
            "" | "channel.k8s.io" => (1, false),
            "base64.channel.k8s.io" => (1, true),
            "v4.channel.k8s.io" => (4, false),
            "v4.base64.channel.k8s.io" => (4, true),
            "v5.channel.k8s.io" => (5, false),
            _ => return None,
        };
        Some(ChannelProtocol { version, base64 })
    }

    /// `data` on `channel` as one message.
    pub(crate) fn encode(&self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel % 10));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut b = Vec::with_capacity(1 + data.len());
            b.push(channel);
            b.extend_from_slice(data);
            Message::Binary(Bytes::from(b))
        }
    }

    /// A data message's channel and bytes; `None` for control messages and malformed
    /// ones. Text and binary messages are read alike, as Kubernetes' wsstream reads
    /// them (the Python client sends text for `str` input).
    pub(crate) fn decode(&self, msg: Message) -> Option<(u8, Bytes)> {
        let b = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => Bytes::from(t),
            _ => return None,
        };
        let (&first, rest) = b.split_first()?;
        if self.base64 {
            let data = base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?;
            Some((first.checked_sub(b'0')?, Bytes::from(data)))
        } else {
            Some((first, b.slice(1..)))
        }
    }
}

/// A normal close, as the server ends a session.
pub(crate) fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Carries the bytes written to and read from the returned end in binary messages of
/// `ws`, until either side closes.
pub(crate) fn tunnel<T>(ws: WebSocketStream<T>) -> DuplexStream
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (local, remote) = tokio::io::duplex(64 * 1024);
    let (mut from_local, mut to_local) = tokio::io::split(remote);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let up = async {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from_local.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let msg = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(msg).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = sink.send(close_message()).await;
        };
        let down = async {
            while let Some(Ok(msg)) = stream.next().await {
                match msg {
                    Message::Binary(b) if to_local.write_all(&b).await.is_err() => break,
                    Message::Close(_) => break,
                    _ => {}
                }
            }
            let _ = to_local.shutdown().await;
        };
        // The tunnel lasts while the local side writes; the remote's end of input
        // only ends the way in.
        tokio::join!(up, down);
    });
    local
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_both_encodings() {
        let bin = ChannelProtocol::parse("v5.channel.k8s.io").unwrap();
        assert_eq!(bin.version, 5);
        let m = bin.encode(1, b"hi");
        assert_eq!(m, Message::Binary(Bytes::from_static(b"\x01hi")));
        assert_eq!(bin.decode(m), Some((1, Bytes::from_static(b"hi"))));
        let b64 = ChannelProtocol::parse("v4.base64.channel.k8s.io").unwrap();
        let m = b64.encode(2, b"hi");
        assert_eq!(m, Message::text("2aGk="));
        assert_eq!(b64.decode(m), Some((2, Bytes::from_static(b"hi"))));
        assert_eq!(ChannelProtocol::parse("").unwrap().version, 1);
        assert_eq!(ChannelProtocol::parse("v3.channel.k8s.io"), None);
        assert_eq!(bin.decode(Message::Ping(Bytes::new())), None);
        assert_eq!(
            bin.decode(Message::text("\u{0}abc")),
            Some((0, Bytes::from_static(b"abc")))
        );
    }
}
