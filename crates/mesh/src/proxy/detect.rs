//! Protocol detection on an outbound connection: HTTP/1.x, HTTP/2 (prior knowledge), or
//! anything else (opaque TCP).
//!
//! Detection peeks at what the client sends first, so nothing is consumed. A client
//! that says nothing is not waited for (the complaint about Linkerd's 10 s detection
//! timeout with MySQL or NATS): after [`QUIET`] the proxy connects onward anyway, and
//! from then on whoever speaks first decides. A server that speaks first makes the
//! connection opaque; a client that speaks HTTP first gets HTTP, and the connection
//! opened meanwhile is dropped.

use std::time::Duration;

use tokio::net::TcpStream;

/// What a connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
    Opaque,
}

/// How long a silent client is waited for before connecting onward.
pub(crate) const QUIET: Duration = Duration::from_millis(5);
/// How long a client may take to finish the first line of what it sends.
const DETECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of a request's first line that is looked at.
const PEEK_MAX: usize = 8192;
/// What an HTTP/2 client with prior knowledge sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method token counted as HTTP (PROPPATCH, MKCALENDAR, ...).
const METHOD_MAX: usize = 16;

/// The protocol `first` starts, or `None` when more bytes are needed to say.
pub(crate) fn detect(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] == H2_PREFACE[..n] {
        return (first.len() >= H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    // HTTP/1: `METHOD SP request-target SP HTTP/1.x CRLF`.
    let line_end = first.windows(2).position(|w| w == b"\r\n");
    let line = &first[..line_end.unwrap_or(first.len())];
    let method_end = line.iter().position(|&c| c == b' ');
    let method = &line[..method_end.unwrap_or(line.len())];
    let method_ok = !method.is_empty()
        && method.len() <= METHOD_MAX
        && method.iter().all(|c| c.is_ascii_uppercase() || *c == b'-');
    if !method_ok {
        return Some(Protocol::Opaque);
    }
    let Some(method_end) = method_end else {
        return if line_end.is_none() {
            None
        } else {
            Some(Protocol::Opaque)
        };
    };
    // CONNECT asks for a tunnel: its bytes are the tunnel's business.
    if method == b"CONNECT" {
        return Some(Protocol::Opaque);
    }
    line_end?;
    let rest = &line[method_end + 1..];
    let http1 = rest.ends_with(b" HTTP/1.1") || rest.ends_with(b" HTTP/1.0");
    Some(if http1 && rest.len() > 9 {
        Protocol::Http1
    } else {
        Protocol::Opaque
    })
}

/// Waits until the client has sent enough to tell its protocol (or closed: opaque).
/// Only peeks, so it can be cancelled and started again.
pub(crate) async fn client_protocol(conn: &TcpStream) -> std::io::Result<Protocol> {
    let mut buf = vec![0u8; PEEK_MAX];
    let detected = tokio::time::timeout(DETECT_TIMEOUT, async {
        let mut seen = 0;
        loop {
            let n = conn.peek(&mut buf).await?;
            if n == 0 {
                return Ok(Protocol::Opaque);
            }
            if let Some(p) = detect(&buf[..n]) {
                return Ok(p);
            }
            if n == PEEK_MAX {
                return Ok(Protocol::Opaque);
            }
            // Peeking again returns the same bytes at once: wait for more to arrive.
            if n == seen {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            seen = n;
        }
    })
    .await;
    detected.unwrap_or(Ok(Protocol::Opaque))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_request_lines_are_http1() {
        for line in [
            "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "POST /x?y=1 HTTP/1.0\r\n",
            "PROPFIND /dav HTTP/1.1\r\n",
            "GET http://web/ HTTP/1.1\r\n",
        ] {
            assert_eq!(detect(line.as_bytes()), Some(Protocol::Http1), "{line:?}");
        }
    }

    #[test]
    fn the_h2_preface_is_http2_once_whole() {
        assert_eq!(detect(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(
            detect(&[H2_PREFACE, b"\0\0\x12\x04"].concat()),
            Some(Protocol::Http2)
        );
        assert_eq!(detect(&H2_PREFACE[..10]), None);
    }

    #[test]
    fn a_partial_first_line_needs_more() {
        for part in ["G", "GET", "GET ", "GET /index.html", "GET / HTTP/1.1"] {
            assert_eq!(detect(part.as_bytes()), None, "{part:?}");
        }
    }

    #[test]
    fn everything_else_is_opaque_at_once() {
        for first in [
            &b"\x16\x03\x01\x02\x00"[..],        // a TLS ClientHello
            b"\x00\x00\x00\x08\x04\xd2\x16\x2f", // PostgreSQL's SSLRequest
            b"*1\r\n$4\r\nPING\r\n",             // Redis
            b"hello\r\n",
            b"GET / HTTP/2.0\r\n",
            b"CONNECT web:443 HTTP/1.1\r\n",
            b"GET\r\n",
            b"AVERYLONGMETHODNAMEINDEED / HTTP/1.1\r\n",
        ] {
            assert_eq!(detect(first), Some(Protocol::Opaque), "{first:?}");
        }
    }
}
