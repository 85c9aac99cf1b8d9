//! The small HTTP endpoints that Kubernetes and load balancers probe a daemon on
//! (`/healthz`, `/readyz`, `/metrics`, a `healthCheckNodePort`), served by hyper.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

/// A response with a whole body.
pub type Response = hyper::Response<Full<Bytes>>;

/// A request's query string as pairs, in order, decoded as Go's `url.ParseQuery` reads
/// it (`+` is a space, `%XX` a byte; a key without `=` has an empty value); empty pairs
/// (kube-rs starts its queries with `&`) are skipped. Repeated keys stay repeated
/// (`command=sh&command=-c`).
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A response: `status`, a `Content-Type` and a body.
pub fn response(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
    let mut r = hyper::Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// How long a client may take to send its request's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The first pause after a failed accept (out of file descriptors, say), doubling up
/// to [`MAX_ACCEPT_BACKOFF`], as Go's `net/http` does; reset by a good accept.
const FIRST_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// A listener whose accept never fails and never spins: after a failed accept (out of
/// file descriptors, say) it logs and pauses, 5 ms doubling up to 1 s, as Go's
/// `net/http` does, until one succeeds. Every server of ours accepts through it.
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    backoff: Duration,
    what: &'static str,
}

impl Acceptor {
    /// Accepts on `listener`; `what` names the server in log lines.
    pub fn new(listener: TcpListener, what: &'static str) -> Acceptor {
        Acceptor {
            listener,
            backoff: FIRST_ACCEPT_BACKOFF,
            what,
        }
    }

    /// The next connection.
    pub async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok(conn) => {
                    self.backoff = FIRST_ACCEPT_BACKOFF;
                    return conn;
                }
                Err(e) => {
                    warn!(server = self.what, error = %e, pause = ?self.backoff, "accepting a connection");
                    tokio::time::sleep(self.backoff).await;
                    self.backoff = (self.backoff * 2).min(MAX_ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// The listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Serves HTTP/1.1 on `listener` until the task is dropped: `respond` answers each
/// request from its method, path and headers (these endpoints take no body).
pub async fn serve<F>(listener: TcpListener, respond: F)
where
    F: Fn(&hyper::http::request::Parts) -> Response + Send + Sync + 'static,
{
    serve_async(listener, move |parts| std::future::ready(respond(&parts))).await;
}

/// As [`serve`], for answers that may wait (a long poll).
pub async fn serve_async<F, Fut>(listener: TcpListener, respond: F)
where
    F: Fn(hyper::http::request::Parts) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    let respond = Arc::new(respond);
    let mut acceptor = Acceptor::new(listener, "HTTP");
    loop {
        let (stream, _) = acceptor.accept().await;
        let respond = Arc::clone(&respond);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let (parts, _body) = req.into_parts();
                let r = respond(parts);
                async move { Ok::<_, Infallible>(r.await) }
            });
            // A client that goes away mid-request is its own business.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn queries_decode_as_go_does() {
        let pairs = |q: &str| query_pairs(q);
        assert_eq!(
            pairs("command=sh&command=-c&command=echo+a%20b%2B&input=1&x"),
            [
                ("command", "sh"),
                ("command", "-c"),
                ("command", "echo a b+"),
                ("input", "1"),
                ("x", ""),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        let q = pairs("&limit=500&labelSelector=app%3Dweb%2Ctier+in+(a)");
        assert_eq!(q[0], ("limit".into(), "500".into()));
        assert_eq!(q[1].1, "app=web,tier in (a)");
        // A stray `%` stays as it is.
        assert_eq!(pairs("a=50%&b=%zz")[1].1, "%zz");
        assert_eq!(pairs("a=50%")[0].1, "50%");
    }

    #[tokio::test]
    async fn answers_by_path() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, |req| match req.uri.path() {
            "/healthz" => response(200, "text/plain", "ok"),
            _ => response(404, "text/plain", "not found"),
        }));
        for (path, want) in [
            ("/healthz", "HTTP/1.1 200 OK"),
            ("/x", "HTTP/1.1 404 Not Found"),
        ] {
            let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            conn.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            conn.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(want), "{out}");
            assert!(out.contains("content-type: text/plain"), "{out}");
        }
        server.abort();
    }
}
