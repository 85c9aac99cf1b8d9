//! Smuggling, limits, slow clients and HTTP/2 floods, with raw sockets; and a fuzz-style
//! run of mutated HTTP/1 requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::proxy::route::tests::Rng;

/// Sends `bytes` on a new connection, half-closes it, and reads until the gateway closes
/// (a half-closed HTTP/1 connection is closed at once by hyper's default, so only what
/// is answered before the end of the request is read).
async fn raw(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends `bytes` and reads until the gateway closes, without half-closing first.
async fn raw_open(port: u16, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection");
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Every response in `out` (status codes in order).
fn statuses(out: &str) -> Vec<u16> {
    out.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| out[i + 9..].get(..3)?.parse().ok())
        .collect()
}

async fn gateway_with(tune: impl FnOnce(&mut Options)) -> (Gateway, u16, TestBackend) {
    let a = backend("a").await;
    let port = free_port();
    let config = Config {
        listeners: vec![http_listener(
            port,
            vec![any_host(vec![route(
                prefix("/"),
                to(forward(vec![(1, Some(svc("a", vec![a.addr])))])),
            )])],
        )],
    };
    (Gateway::start(config, tune).await, port, a)
}

#[tokio::test]
async fn smuggling_is_refused_and_the_connection_closed() {
    let (gw, port, mut a) = gateway_with(|_| {}).await;
    let smuggled = "GET /slow HTTP/1.1\r\nhost: h\r\n\r\n";
    // CL.TE and TE.CL: hyper frames the request by Transfer-Encoding, drops the
    // Content-Length, answers and closes the connection (RFC 9112 6.3), so what follows is
    // never read as a request.
    let both = [
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
    ];
    for case in &both {
        let out = raw_open(port, case.as_bytes()).await;
        assert_eq!(
            statuses(&out).len(),
            1,
            "{case:?}: one answer, then closed: {out:?}"
        );
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{out:?}"
        );
    }
    let cases: Vec<String> = vec![
        // Two different lengths, in two fields and in one.
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 1\r\ncontent-length: 30\r\n\r\nx{smuggled}"
        ),
        format!("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 1, 30\r\n\r\nx{smuggled}"),
        // Chunked not last, or obfuscated.
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Bad chunk sizes and framing.
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc\r\n0\r\n\r\n{smuggled}"
        ),
        // A bare LF inside the chunk line, and obsolete line folding.
        format!(
            "POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n3;x\nabc\r\n0\r\n\r\n{smuggled}"
        ),
        format!("GET / HTTP/1.1\r\nhost: h\r\nx-folded: a\r\n b\r\n\r\n{smuggled}"),
    ];
    for case in &cases {
        let out = raw_open(port, case.as_bytes()).await;
        let codes = statuses(&out);
        assert_eq!(codes.first(), Some(&400), "{case:?} answered {out:?}");
        assert_eq!(
            codes.len(),
            1,
            "{case:?}: the connection must close after the 400: {out:?}"
        );
    }
    assert!(
        a.arrived.try_recv().is_err(),
        "a smuggled request reached the backend"
    );
    gw.stop().await;
}

#[tokio::test]
async fn header_and_body_limits() {
    let (gw, port, _a) = gateway_with(|o| {
        o.max_header_bytes = 8192;
        o.max_headers = 20;
        o.max_body_bytes = Some(10);
    })
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: h\r\nx-big: {}\r\n\r\n",
        "a".repeat(9000)
    );
    assert_eq!(status_of(&raw_open(port, big.as_bytes()).await), 431);
    let many: String = (0..30).map(|i| format!("x-h{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nhost: h\r\n{many}\r\n");
    assert_eq!(status_of(&raw_open(port, many.as_bytes()).await), 431);
    let body =
        "POST / HTTP/1.1\r\nhost: h\r\nconnection: close\r\ncontent-length: 11\r\n\r\nhello world";
    assert_eq!(status_of(&raw_open(port, body.as_bytes()).await), 413);
    let chunked = "POST / HTTP/1.1\r\nhost: h\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";
    let out = raw_open(port, chunked.as_bytes()).await;
    assert_eq!(status_of(&out), 413, "{out:?}");
    let small = "POST / HTTP/1.1\r\nhost: h\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello";
    assert_eq!(status_of(&raw_open(port, small.as_bytes()).await), 200);
    gw.stop().await;
}

#[tokio::test]
async fn slow_and_idle_clients_are_closed() {
    let (gw, port, _a) = gateway_with(|o| {
        o.header_read_timeout = Duration::from_millis(200);
        o.body_read_timeout = Duration::from_millis(200);
        o.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // A header that never ends.
    let out = raw_open(port, b"GET / HTTP/1.1\r\nhost: h\r\nx-slow: ").await;
    assert!(statuses(&out).iter().all(|&c| c == 408), "{out:?}");
    // Nothing at all.
    raw_open(port, b"").await;
    // A body that stops coming, large (streamed) and small (kept for retries).
    for len in [1_000_000, 10] {
        let out = raw_open(
            port,
            format!("POST / HTTP/1.1\r\nhost: h\r\ncontent-length: {len}\r\n\r\nabc").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&out), [408], "{out:?}");
    }
    // A keep-alive connection left idle after its request.
    let out = raw_open(port, b"GET / HTTP/1.1\r\nhost: h\r\n\r\n").await;
    assert_eq!(statuses(&out), [200]);
    gw.stop().await;
}

/// An HTTP/2 frame.
fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads frames until the connection ends; the GOAWAY error code if one came.
async fn goaway(s: &mut TcpStream) -> Option<u32> {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut buf))
        .await
        .expect("the gateway closes the connection");
    let mut at = 0;
    while at + 9 <= buf.len() {
        let len =
            usize::from(buf[at]) << 16 | usize::from(buf[at + 1]) << 8 | usize::from(buf[at + 2]);
        if buf[at + 3] == 7 && at + 9 + 8 <= buf.len() {
            let p = &buf[at + 9..];
            return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        at += 9 + len;
    }
    None
}

#[tokio::test]
async fn http2_rapid_reset_and_continuation_floods_are_bounded() {
    let (gw, port, _a) = gateway_with(|_| {}).await;
    // Rapid reset: HEADERS then RST_STREAM, a thousand times, in one write.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    for i in 0..1000u32 {
        let id = 1 + 2 * i;
        // :method GET, :scheme http, :path / (HPACK static table).
        out.extend(frame(1, 0x5, id, &[0x82, 0x86, 0x84]));
        out.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out).await;
    // ENHANCE_YOUR_CALM.
    assert_eq!(goaway(&mut s).await, Some(0xb));

    // CONTINUATION flood: a header block that never ends.
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    out.extend(frame(1, 0x1, 1, &[0x82, 0x86, 0x84]));
    s.write_all(&out).await.unwrap();
    // Literal header fields without indexing, `x-a: aaaa…`.
    // The value's length, 16000, as an HPACK integer: 127, then 15873 in 7-bit groups.
    let mut field = vec![0x00, 3, b'x', b'-', b'a', 0x7f, 0x81, 0x7c];
    field.extend(std::iter::repeat_n(b'a', 16000));
    let continuation = frame(9, 0, 1, &field);
    let writer = async {
        for _ in 0..2000 {
            if s.write_all(&continuation).await.is_err() {
                return true;
            }
        }
        false
    };
    let refused = tokio::time::timeout(PATIENCE, writer)
        .await
        .expect("the flood is cut short");
    assert!(refused, "32 MB of CONTINUATION frames were all taken");
    gw.stop().await;
}

static PANICKED: AtomicBool = AtomicBool::new(false);

#[tokio::test]
async fn fuzzed_http1_requests_get_an_answer_or_a_close() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Failing assertions in other tests (same process) are not the gateway's panics.
        if !info
            .location()
            .is_some_and(|l| l.file().contains("proxy/tests"))
        {
            PANICKED.store(true, Ordering::SeqCst);
        }
        previous(info);
    }));
    let (gw, port, _a) = gateway_with(|o| o.header_read_timeout = Duration::from_secs(2)).await;
    let seeds: [&[u8]; 4] = [
        b"GET /a/b?c=d HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    ];
    let tokens: [&[u8]; 10] = [
        b"\r\n",
        b"\n",
        b":",
        b" ",
        b"\0",
        b"chunked",
        b"Content-Length: 3\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"\xff",
        b"HTTP/1.0",
    ];
    let mut rng = Rng(0x0f22_2026);
    for _ in 0..400 {
        let mut m = rng.pick(&seeds).to_vec();
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(m.len() + 1);
            match rng.below(4) {
                0 if at < m.len() => m[at] = rng.next() as u8,
                1 => {
                    let t = rng.pick(&tokens);
                    m.splice(at..at, t.iter().copied());
                }
                2 if at < m.len() => {
                    m.remove(at);
                }
                _ => m.truncate(at),
            }
        }
        let out = raw(port, &m).await;
        if !out.is_empty() {
            assert!(out.starts_with("HTTP/1."), "{m:?} answered {out:?}");
        }
    }
    let mut c = H1::connect(port).await;
    assert_eq!(c.get("h", "/after").await.status, 200);
    assert!(!PANICKED.load(Ordering::SeqCst), "a task panicked");
    gw.stop().await;
}
