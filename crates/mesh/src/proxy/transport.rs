//! The transport header: what a client proxy sends first inside mutual TLS to a peer's
//! inbound port, naming the port the app connected to (Linkerd's opaque transport does
//! the same). Six bytes: the magic `KWM1`, then the port, big-endian.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAGIC: &[u8; 4] = b"KWM1";

/// Sends the header for `port`.
pub(super) async fn write(w: &mut (impl AsyncWrite + Unpin), port: u16) -> std::io::Result<()> {
    let mut h = [0u8; 6];
    h[..4].copy_from_slice(MAGIC);
    h[4..].copy_from_slice(&port.to_be_bytes());
    w.write_all(&h).await?;
    w.flush().await
}

/// Reads a header; its port, or an error naming what came instead.
pub(super) async fn read(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<u16> {
    let mut h = [0u8; 6];
    r.read_exact(&mut h).await?;
    if &h[..4] != MAGIC {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not a transport header: {:?}", &h[..4]),
        ));
    }
    let port = u16::from_be_bytes([h[4], h[5]]);
    if port == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "a transport header naming port 0",
        ));
    }
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_header_round_trips_and_garbage_is_refused() {
        let mut buf = Vec::new();
        write(&mut buf, 8080).await.unwrap();
        assert_eq!(buf, b"KWM1\x1f\x90");
        assert_eq!(read(&mut &buf[..]).await.unwrap(), 8080);
        let e = read(&mut &b"GET / "[..]).await.unwrap_err();
        assert!(e.to_string().contains("not a transport header"), "{e}");
        assert!(read(&mut &b"KWM1\0\0"[..]).await.is_err());
        assert!(read(&mut &b"KWM"[..]).await.is_err());
    }
}
