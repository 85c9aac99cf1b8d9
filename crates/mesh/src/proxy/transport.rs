//! The transport header: what a client proxy sends first inside mutual TLS to a peer's
//! inbound port, naming the port the app connected to (Linkerd's opaque transport does
//! the same) and what the client proxy sends on it. Six bytes: a magic naming the
//! protocol (`KWM1` opaque TCP, `KWH1` HTTP/1.1, `KWH2` HTTP/2), then the port,
//! big-endian.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::detect::Protocol;

const MAGICS: [(&[u8; 4], Protocol); 3] = [
    (b"KWM1", Protocol::Opaque),
    (b"KWH1", Protocol::Http1),
    (b"KWH2", Protocol::Http2),
];

/// Sends the header for `port` and `protocol`.
pub(super) async fn write(
    w: &mut (impl AsyncWrite + Unpin),
    port: u16,
    protocol: Protocol,
) -> std::io::Result<()> {
    let magic = MAGICS
        .iter()
        .find(|(_, p)| *p == protocol)
        .map_or(b"KWM1", |(m, _)| *m);
    let mut h = [0u8; 6];
    h[..4].copy_from_slice(magic);
    h[4..].copy_from_slice(&port.to_be_bytes());
    w.write_all(&h).await?;
    w.flush().await
}

/// Reads a header: its port and protocol, or an error naming what came instead.
pub(super) async fn read(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u16, Protocol)> {
    let mut h = [0u8; 6];
    r.read_exact(&mut h).await?;
    let Some((_, protocol)) = MAGICS.iter().find(|(m, _)| &h[..4] == *m) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a transport header: {:?}", &h[..4]),
        ));
    };
    let port = u16::from_be_bytes([h[4], h[5]]);
    if port == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a transport header naming port 0",
        ));
    }
    Ok((port, *protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_header_round_trips_and_garbage_is_refused() {
        let mut buf = Vec::new();
        write(&mut buf, 8080, Protocol::Opaque).await.unwrap();
        assert_eq!(buf, b"KWM1\x1f\x90");
        assert_eq!(read(&mut &buf[..]).await.unwrap(), (8080, Protocol::Opaque));
        for p in [Protocol::Http1, Protocol::Http2] {
            let mut buf = Vec::new();
            write(&mut buf, 81, p).await.unwrap();
            assert_eq!(read(&mut &buf[..]).await.unwrap(), (81, p));
        }
        let e = read(&mut &b"GET / "[..]).await.unwrap_err();
        assert!(e.to_string().contains("not a transport header"), "{e}");
        assert!(read(&mut &b"KWM1\0\0"[..]).await.is_err());
        assert!(read(&mut &b"KWM"[..]).await.is_err());
    }
}
