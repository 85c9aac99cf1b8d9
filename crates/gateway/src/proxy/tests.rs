//! The data plane on loopback with real backends (small hyper servers started here) and
//! real clients: hyper's, raw sockets, and curl where it helps.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};

use super::{Error, Options, serve};
use crate::config::*;

/// Long enough for anything here to happen on a loaded machine; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(20);

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A backend that tells what it received.
pub(crate) struct TestBackend {
    pub addr: SocketAddr,
    /// Requests to `/slow` wait for a permit.
    pub release: Arc<Semaphore>,
    /// One message per request that arrived at `/slow`.
    pub arrived: mpsc::UnboundedReceiver<()>,
    pub hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Resp =
    http::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>>;

fn text(status: u16, body: String) -> Resp {
    let mut r = http::Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

pub(crate) async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
    release: Arc<Semaphore>,
    arrived: mpsc::UnboundedSender<()>,
    hits: Arc<AtomicUsize>,
) -> Resp {
    let n = hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = text(101, String::new());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return r;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        return text(code.parse().unwrap_or(500), String::new());
    }
    if path == "/slow" {
        let _ = arrived.send(());
        release.acquire().await.unwrap().forget();
    }
    if path == "/flaky" && n == 0 {
        return text(503, "flaky".into());
    }
    if path == "/stream" {
        // The header at once, the end of the body when released.
        let body = futures::stream::unfold(0, move |step| {
            let release = Arc::clone(&release);
            async move {
                match step {
                    0 => Some((Bytes::from_static(b"first "), 1)),
                    1 => {
                        release.acquire().await.unwrap().forget();
                        Some((Bytes::from_static(b"last"), 2))
                    }
                    _ => None,
                }
            }
        });
        use futures::StreamExt as _;
        let body = http_body_util::StreamBody::new(
            body.map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b))),
        );
        return http::Response::new(body.boxed_unsync());
    }
    if path == "/trailers" {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let body = http_body_util::StreamBody::new(futures::stream::iter(vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"data"))),
            Ok(http_body::Frame::trailers(trailers)),
        ]));
        return http::Response::new(body.boxed_unsync());
    }
    let mut out = format!(
        "backend={name}\nmethod={}\npath={}\nversion={:?}\n",
        req.method(),
        req.uri().path_and_query().map_or("", |p| p.as_str()),
        req.version()
    );
    for (k, v) in req.headers() {
        out.push_str(&format!("h:{k}={}\n", v.to_str().unwrap_or("?")));
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    out.push_str(&format!("body={}\n", String::from_utf8_lossy(&body)));
    text(200, out)
}

/// A backend serving HTTP/1.1 and h2c on a port of its own.
pub(crate) async fn backend(name: &'static str) -> TestBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(Semaphore::new(0));
    let (tx, arrived) = mpsc::unbounded_channel();
    let hits = Arc::new(AtomicUsize::new(0));
    let (r, h) = (Arc::clone(&release), Arc::clone(&hits));
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let (r, tx, h) = (Arc::clone(&r), tx.clone(), Arc::clone(&h));
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (r, tx, h) = (Arc::clone(&r), tx.clone(), Arc::clone(&h));
                    async move { Ok::<_, std::convert::Infallible>(answer(name, req, r, tx, h).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    TestBackend {
        addr,
        release,
        arrived,
        hits,
        task,
    }
}

pub(crate) fn svc(name: &str, endpoints: Vec<SocketAddr>) -> Backend {
    Backend {
        namespace: "default".into(),
        service: name.into(),
        port: 80,
        endpoints: endpoints.into(),
        protocol: BackendProtocol::Http1,
        tls: None,
        limits: Limits::default(),
    }
}

pub(crate) fn forward(backends: Vec<(u32, Option<Backend>)>) -> Forward {
    Forward {
        backends: backends
            .into_iter()
            .map(|(weight, backend)| WeightedBackend {
                weight,
                backend: backend.map(Arc::new),
            })
            .collect(),
        ..Forward::default()
    }
}

pub(crate) fn route(path: PathMatch, action: Action) -> Route {
    Route {
        name: RouteName {
            kind: "HTTPRoute",
            namespace: "default".into(),
            name: "test".into(),
            rule: 0,
        },
        matches: RouteMatch {
            path,
            method: None,
            headers: vec![],
            query: vec![],
        },
        action,
    }
}

pub(crate) fn to(f: Forward) -> Action {
    Action::Forward(Box::new(f))
}

pub(crate) fn prefix(p: &str) -> PathMatch {
    PathMatch::Prefix(p.into())
}

pub(crate) fn http_listener(port: u16, hosts: Vec<VirtualHost>) -> Listener {
    Listener {
        port,
        public_port: port,
        kind: ListenerKind::Http(HttpHosts { hosts }),
        proxy_protocol: false,
    }
}

pub(crate) fn any_host(routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        scope: None,
        hostnames: vec![HostMatch::Any],
        routes,
    }
}

/// A running data plane.
pub(crate) struct Gateway {
    pub config: watch::Sender<Arc<Config>>,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<Result<(), Error>>>,
}

impl Gateway {
    pub(crate) async fn start(config: Config, tune: impl FnOnce(&mut Options)) -> Gateway {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut options = Options {
            admin_listen: admin.to_string(),
            listen_address: "127.0.0.1".parse().unwrap(),
            ..Options::default()
        };
        tune(&mut options);
        let (tx, rx) = watch::channel(Arc::new(config));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(rx, options, async {
            let _ = stopped.await;
        }));
        let gw = Gateway {
            config: tx,
            admin,
            stop: Some(stop),
            task: Some(task),
        };
        wait_for(|| async { get_status(admin, "/ready").await == Some(200) }).await;
        gw
    }

    /// Replaces the configuration and waits until `port` answers by it (`check`).
    pub(crate) fn set(&self, config: Config) {
        self.config.send_replace(Arc::new(config));
    }

    /// Starts the drain and waits for `serve` to return.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let r = tokio::time::timeout(PATIENCE, self.task.take().unwrap()).await;
        r.expect("serve returns after shutdown").unwrap().unwrap();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Polls `cond` until it holds; panics after [`PATIENCE`].
pub(crate) async fn wait_for<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// What a client got.
#[derive(Debug)]
pub(crate) struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Got {
    /// The value the backend reported for its request header `name`.
    pub(crate) fn seen(&self, name: &str) -> Option<&str> {
        let key = format!("h:{name}=");
        self.body.lines().find_map(|l| l.strip_prefix(key.as_str()))
    }
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        let key = format!("{name}=");
        self.body.lines().find_map(|l| l.strip_prefix(key.as_str()))
    }
}

/// An HTTP/1.1 client connection (keep-alive).
pub(crate) struct H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl H1 {
    pub(crate) async fn connect(port: u16) -> H1 {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        H1(send)
    }

    pub(crate) async fn send(&mut self, req: Request<Full<Bytes>>) -> Got {
        self.0.ready().await.unwrap();
        let r = tokio::time::timeout(PATIENCE, self.0.send_request(req))
            .await
            .unwrap()
            .unwrap();
        collect(r).await
    }

    pub(crate) async fn get(&mut self, host: &str, path: &str) -> Got {
        self.send(req(host, path)).await
    }
}

pub(crate) fn req(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub(crate) async fn collect(r: http::Response<Incoming>) -> Got {
    let (parts, body) = r.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One request on a new connection.
pub(crate) async fn get(port: u16, host: &str, path: &str) -> Got {
    H1::connect(port).await.get(host, path).await
}

fn header_edit(name: &'static str, pieces: Vec<Piece>) -> (HeaderName, Template) {
    (HeaderName::from_static(name), Template(pieces))
}

#[tokio::test]
async fn routes_forwards_and_answers_as_configured() {
    let a = backend("a").await;
    let b = backend("b").await;
    let port = free_port();
    let mut edits = forward(vec![(1, Some(svc("b", vec![b.addr])))]);
    edits.request_headers = HeaderEdits {
        remove: vec![HeaderName::from_static("x-drop")],
        set: vec![header_edit("x-proto", vec![Piece::Protocol])],
        add: vec![
            header_edit("x-test-ip", vec![Piece::RemoteAddressWithoutPort]),
            header_edit(
                "x-copy",
                vec![
                    Piece::Literal("v=".into()),
                    Piece::RequestHeader(HeaderName::from_static("x-in")),
                ],
            ),
        ],
    };
    edits.response_headers.add = vec![header_edit("x-resp", vec![Piece::Literal("yes".into())])];
    edits.rewrite.path = Some(PathRewrite::ReplacePrefix {
        prefix: "/backend/".into(),
        replacement: "/".into(),
    });
    edits.external_address_header = true;
    let mut redirect_route = route(
        PathMatch::Exact("/old".into()),
        Action::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: Some(PathRewrite::Full("/new".into())),
            status: StatusCode::MOVED_PERMANENTLY,
        }),
    );
    redirect_route.matches.method = Some(Method::GET);
    let config = Config {
        listeners: vec![http_listener(
            port,
            vec![
                VirtualHost {
                    scope: None,
                    hostnames: vec![HostMatch::Exact("web.example.com".into())],
                    routes: vec![
                        route(PathMatch::StringPrefix("/backend/".into()), to(edits)),
                        redirect_route,
                        route(prefix("/invalid"), to(forward(vec![(1, None)]))),
                        route(
                            prefix("/zero"),
                            to(forward(vec![(0, Some(svc("a", vec![a.addr])))])),
                        ),
                        route(
                            prefix("/empty"),
                            to(forward(vec![(1, Some(svc("e", vec![])))])),
                        ),
                        route(prefix("/teapot"), Action::Respond(StatusCode::IM_A_TEAPOT)),
                        route(
                            prefix("/engine"),
                            to(forward(vec![(1, Some(svc("a", vec![a.addr])))])),
                        ),
                    ],
                },
                VirtualHost {
                    scope: None,
                    hostnames: vec![HostMatch::Wildcard {
                        suffix: ".example.com".into(),
                        one_label: true,
                    }],
                    routes: vec![route(
                        prefix("/"),
                        to(forward(vec![(1, Some(svc("b", vec![b.addr])))])),
                    )],
                },
            ],
        )],
    };
    let gw = Gateway::start(config, |_| {}).await;
    let mut c = H1::connect(port).await;

    let got = c.get("web.example.com", "/engine/x?q=1").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.field("backend"), Some("a"));
    assert_eq!(got.field("path"), Some("/engine/x?q=1"));
    assert_eq!(got.seen("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(got.seen("x-forwarded-proto"), Some("http"));
    assert_eq!(got.seen("host"), Some("web.example.com"));
    assert_eq!(got.seen("x-request-id").map(str::len), Some(36));
    assert_eq!(got.seen("x-envoy-external-address"), None);
    // Prefix is element-wise: `/enginex` is no route of the exact host, so it falls
    // through to the wildcard's.
    let got = c.get("web.example.com", "/enginex").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.field("backend"), Some("b"));

    let mut r = req("WEB.example.com:8080", "/backend/quote?x=y");
    r.headers_mut().insert("x-drop", "1".parse().unwrap());
    r.headers_mut().insert("x-in", "in".parse().unwrap());
    r.headers_mut()
        .insert("x-forwarded-for", "192.0.2.9".parse().unwrap());
    r.headers_mut()
        .append("x-forwarded-for", "198.51.100.1".parse().unwrap());
    let got = c.send(r).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.field("backend"), Some("b"));
    assert_eq!(got.field("path"), Some("/quote?x=y"));
    assert_eq!(got.seen("x-drop"), None);
    assert_eq!(got.seen("x-proto"), Some("HTTP/1.1"));
    assert_eq!(got.seen("x-test-ip"), Some("127.0.0.1"));
    assert_eq!(got.seen("x-copy"), Some("v=in"));
    assert_eq!(
        got.seen("x-forwarded-for"),
        Some("192.0.2.9, 198.51.100.1, 127.0.0.1")
    );
    assert_eq!(got.seen("x-envoy-external-address"), Some("127.0.0.1"));
    assert_eq!(got.headers["x-resp"], "yes");

    let got = c.get("web.example.com", "/old?k=v").await;
    assert_eq!(got.status, 301);
    assert_eq!(got.headers["location"], "https://web.example.com/new?k=v");
    assert_eq!(c.get("web.example.com", "/invalid").await.status, 500);
    assert_eq!(c.get("web.example.com", "/zero").await.status, 500);
    assert_eq!(c.get("web.example.com", "/empty").await.status, 503);
    assert_eq!(c.get("web.example.com", "/teapot").await.status, 418);
    // The one-label wildcard, and no host at all.
    assert_eq!(
        c.get("x.example.com", "/engine").await.field("backend"),
        Some("b")
    );
    assert_eq!(c.get("x.y.example.com", "/engine").await.status, 404);
    assert_eq!(c.get("other.org", "/").await.status, 404);
    gw.stop().await;
}

pub(crate) fn single(port: u16, f: Forward) -> Config {
    Config {
        listeners: vec![http_listener(
            port,
            vec![any_host(vec![route(prefix("/"), to(f))])],
        )],
    }
}

/// An HTTP/2 (prior knowledge) client connection.
async fn h2_connect(port: u16) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn h2c_clients_and_h2c_backends_with_trailers() {
    let a = backend("a").await;
    let port = free_port();
    let mut h2 = svc("grpc", vec![a.addr]);
    h2.protocol = BackendProtocol::H2c;
    let mut f = forward(vec![(1, Some(h2))]);
    f.request_headers.set = vec![header_edit("x-proto", vec![Piece::Protocol])];
    let gw = Gateway::start(single(port, f), |_| {}).await;
    let mut c = h2_connect(port).await;
    let r = Request::builder()
        .uri(format!("http://grpc.example:{port}/svc/Method"))
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let got = collect(c.send_request(r).await.unwrap()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.field("version"), Some("HTTP/2.0"), "h2c to the backend");
    assert_eq!(got.seen("x-proto"), Some("HTTP/2"));
    assert_eq!(got.seen("te"), Some("trailers"));
    assert_eq!(
        got.seen("host"),
        Some(format!("grpc.example:{port}").as_str())
    );
    assert_eq!(got.field("body"), Some("hello"));
    // Trailers come through (gRPC's status is in them).
    let r = Request::builder()
        .uri(format!("http://grpc.example:{port}/trailers"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(r).await.unwrap();
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    // An HTTP/1.1 client on the same port, to the same h2c backend.
    let got = get(port, "h", "/x").await;
    assert_eq!(got.field("version"), Some("HTTP/2.0"));
    assert_eq!(got.seen("x-proto"), Some("HTTP/1.1"));
    gw.stop().await;
}

#[tokio::test]
async fn weights_pick_backends_and_endpoints_round_robin() {
    let a = backend("a").await;
    let b = backend("b").await;
    let b2 = backend("b").await;
    let port = free_port();
    let f = forward(vec![
        (0, Some(svc("a", vec![a.addr]))),
        (3, Some(svc("b", vec![b.addr, b2.addr]))),
    ]);
    let gw = Gateway::start(single(port, f), |_| {}).await;
    let mut c = H1::connect(port).await;
    for _ in 0..20 {
        assert_eq!(c.get("h", "/").await.field("backend"), Some("b"));
    }
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "weight 0 gets nothing");
    assert_eq!(b.hits.load(Ordering::SeqCst), 10);
    assert_eq!(b2.hits.load(Ordering::SeqCst), 10);
    // Half of the requests to an invalid reference answer 500, the rest go through.
    gw.set(single(
        port,
        forward(vec![(1, None), (1, Some(svc("a", vec![a.addr])))]),
    ));
    let seen = std::sync::Mutex::new(std::collections::HashSet::new());
    wait_for(|| async {
        let code = get(port, "h", "/").await.status.as_u16();
        let mut seen = seen.lock().unwrap();
        seen.insert(code);
        seen.contains(&500) && seen.contains(&200)
    })
    .await;
    gw.stop().await;
}

/// An address nothing listens on.
fn dead_endpoint() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

#[tokio::test]
async fn retries_connect_failures_and_listed_statuses() {
    let a = backend("a").await;
    let port = free_port();
    // Without a retry policy, a refused connection goes to the next endpoint.
    let gw = Gateway::start(
        single(
            port,
            forward(vec![(1, Some(svc("a", vec![dead_endpoint(), a.addr])))]),
        ),
        |_| {},
    )
    .await;
    let mut c = H1::connect(port).await;
    for _ in 0..6 {
        let mut r = req("h", "/");
        *r.method_mut() = Method::POST;
        *r.body_mut() = Full::new(Bytes::from_static(b"payload"));
        let got = c.send(r).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.field("body"), Some("payload"), "the body is sent again");
    }
    // Many refusing at once (new pods listed before they listen): each is tried once,
    // outside the retry budget, with eight clients at a time.
    let mut eps: Vec<SocketAddr> = (0..5).map(|_| dead_endpoint()).collect();
    eps.push(a.addr);
    gw.set(single(port, forward(vec![(1, Some(svc("a", eps)))])));
    wait_for(|| async { get(port, "h", "/").await.status == 200 }).await;
    let statuses = futures::future::join_all((0..48).map(|_| get(port, "h", "/"))).await;
    assert!(
        statuses.iter().all(|g| g.status == 200),
        "a refused endpoint failed a request"
    );
    // A listed status is retried; an unlisted one is not.
    let mut f = forward(vec![(1, Some(svc("a", vec![a.addr])))]);
    f.retry = Some(Retry {
        attempts: 2,
        statuses: vec![StatusCode::SERVICE_UNAVAILABLE],
        backoff: Some(Duration::from_millis(1)),
    });
    gw.set(single(port, f));
    a.hits.store(0, Ordering::SeqCst);
    wait_for(|| async { get(port, "h", "/flaky").await.status == 200 }).await;
    assert_eq!(a.hits.load(Ordering::SeqCst), 2, "one 503, then the retry");
    assert_eq!(get(port, "h", "/status/502").await.status, 502);
    // Every endpoint refusing answers 503.
    gw.set(single(
        port,
        forward(vec![(1, Some(svc("d", vec![dead_endpoint()])))]),
    ));
    wait_for(|| async { get(port, "h", "/").await.status == 503 }).await;
    gw.stop().await;
}

#[tokio::test]
async fn an_endpoint_removed_mid_request_fails_no_retryable_request() {
    let new = backend("new").await;
    // The old endpoint takes connections and requests, never answers, then goes away.
    let old = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_addr = old.local_addr().unwrap();
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    let old_task = tokio::spawn(async move {
        loop {
            let (mut s, _) = old.accept().await.unwrap();
            let tx = accepted_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = tx.send(s);
            });
        }
    });
    let port = free_port();
    let gw = Gateway::start(
        single(port, forward(vec![(1, Some(svc("s", vec![old_addr])))])),
        |_| {},
    )
    .await;
    let in_flight = tokio::spawn(get(port, "h", "/in-flight"));
    let held = accepted.recv().await.unwrap();
    // The endpoint is replaced; then the old one closes the connection, unanswered.
    gw.set(single(
        port,
        forward(vec![(1, Some(svc("s", vec![new.addr])))]),
    ));
    wait_for(|| async { get(port, "h", "/").await.field("backend") == Some("new") }).await;
    old_task.abort();
    drop(held);
    let got = tokio::time::timeout(PATIENCE, in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(got.field("backend"), Some("new"));
    assert_eq!(got.field("path"), Some("/in-flight"));
    gw.stop().await;
}

#[tokio::test]
async fn circuit_breakers_and_timeouts() {
    let mut a = backend("a").await;
    let port = free_port();
    let mut limited = svc("a", vec![a.addr]);
    limited.limits.max_requests = 1;
    let gw = Gateway::start(single(port, forward(vec![(1, Some(limited))])), |_| {}).await;
    let slow = tokio::spawn(get(port, "h", "/slow"));
    a.arrived.recv().await.unwrap();
    let got = get(port, "h", "/").await;
    assert_eq!(got.status, 503, "over max_requests");
    assert_eq!(got.headers["x-envoy-overloaded"], "true");
    a.release.add_permits(1);
    assert_eq!(slow.await.unwrap().status, 200);
    assert_eq!(get(port, "h", "/").await.status, 200);
    // A response whose body is still coming holds its slot (Envoy counts to the end).
    let mut streaming = H1::connect(port).await;
    streaming.0.ready().await.unwrap();
    let head = streaming.0.send_request(req("h", "/stream")).await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(get(port, "h", "/").await.status, 503);
    a.release.add_permits(1);
    let body = head.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"first last");
    wait_for(|| async { get(port, "h", "/").await.status == 200 }).await;

    // max_connections 1 and max_pending_requests 0: a second connection is refused.
    let mut one_conn = svc("a", vec![a.addr]);
    one_conn.limits.max_connections = 1;
    one_conn.limits.max_pending_requests = 0;
    gw.set(single(port, forward(vec![(1, Some(one_conn))])));
    let slow = tokio::spawn(async move {
        // Until the new config is served, requests may still go by the old one.
        loop {
            let got = get(port, "h", "/slow").await;
            if got.status == 200 {
                return got;
            }
        }
    });
    a.arrived.recv().await.unwrap();
    wait_for(|| async { get(port, "h", "/").await.status == 503 }).await;
    a.release.add_permits(100);
    slow.await.unwrap();

    // A backend slower than the backend timeout answers 504.
    let mut f = forward(vec![(1, Some(svc("a", vec![a.addr])))]);
    f.backend_timeout = Some(Duration::from_millis(100));
    gw.set(single(port, f.clone()));
    wait_for(|| async { get(port, "h", "/slow").await.status == 504 }).await;
    f.backend_timeout = None;
    f.request_timeout = Some(Duration::from_millis(100));
    gw.set(single(port, f));
    wait_for(|| async { get(port, "h", "/slow").await.status == 504 }).await;
    gw.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let a = backend("a").await;
    let port = free_port();
    let gw = Gateway::start(
        single(port, forward(vec![(1, Some(svc("a", vec![a.addr])))])),
        |_| {},
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    s.write_all(b"ping frames").await.unwrap();
    let mut echo = [0u8; 11];
    tokio::time::timeout(PATIENCE, s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"ping frames");
    // An open upgraded stream delays the drain (up to --drain-timeout); this one ends.
    drop(s);
    gw.stop().await;
}

#[tokio::test]
async fn new_configs_apply_to_open_connections_and_ports_come_and_go() {
    let a = backend("a").await;
    let b = backend("b").await;
    let port = free_port();
    let second = free_port();
    let gw = Gateway::start(
        single(port, forward(vec![(1, Some(svc("a", vec![a.addr])))])),
        |_| {},
    )
    .await;
    let mut c = H1::connect(port).await;
    assert_eq!(c.get("h", "/").await.field("backend"), Some("a"));
    // The same connection follows the new routes; a new port opens.
    let mut config = single(port, forward(vec![(1, Some(svc("b", vec![b.addr])))]));
    config.listeners.push(http_listener(
        second,
        vec![any_host(vec![route(
            prefix("/"),
            Action::Respond(StatusCode::ACCEPTED),
        )])],
    ));
    gw.set(config);
    wait_for(|| async { TcpStream::connect(("127.0.0.1", second)).await.is_ok() }).await;
    assert_eq!(c.get("h", "/").await.field("backend"), Some("b"));
    let mut on_second = H1::connect(second).await;
    assert_eq!(on_second.get("h", "/").await.status, 202);
    // The second port goes: no new connections, but the open one is still answered.
    gw.set(single(
        port,
        forward(vec![(1, Some(svc("b", vec![b.addr])))]),
    ));
    wait_for(|| async { TcpStream::connect(("127.0.0.1", second)).await.is_err() }).await;
    assert_eq!(on_second.get("h", "/").await.status, 202);
    assert_eq!(c.get("h", "/").await.field("backend"), Some("b"));
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_drains_requests_in_flight() {
    let mut a = backend("a").await;
    let port = free_port();
    let gw = Gateway::start(
        single(port, forward(vec![(1, Some(svc("a", vec![a.addr])))])),
        |_| {},
    )
    .await;
    let admin = gw.admin;
    let in_flight = tokio::spawn(get(port, "h", "/slow"));
    a.arrived.recv().await.unwrap();
    let stopped = tokio::spawn(gw.stop());
    // Draining: no new connections.
    wait_for(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_err() }).await;
    assert!(!stopped.is_finished());
    a.release.add_permits(1);
    assert_eq!(in_flight.await.unwrap().status, 200);
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(get_status(admin, "/ready").await, None);
}
mod l4;
mod security;

#[tokio::test]
async fn mirrors_and_cors() {
    let mut a = backend("a").await;
    let mut shadow = backend("shadow").await;
    let port = free_port();
    let mut f = forward(vec![(1, Some(svc("a", vec![a.addr])))]);
    f.mirrors = vec![Mirror {
        backend: svc("shadow", vec![shadow.addr]).into(),
        percent: 100.0,
    }];
    f.cors = Some(Cors {
        allow_origins: vec!["https://*.example.com".into()],
        allow_methods: vec!["GET".into(), "PUT".into()],
        allow_headers: vec!["x-custom".into()],
        expose_headers: vec!["x-exposed".into()],
        allow_credentials: true,
        max_age: Some(Duration::from_secs(600)),
    });
    let gw = Gateway::start(single(port, f), |_| {}).await;
    // The mirror gets a copy (host marked `-shadow`); the client gets the primary's answer
    // without waiting for the mirror's.
    let got = get(port, "web", "/mirrored").await;
    assert_eq!(got.field("backend"), Some("a"));
    wait_for(|| async { shadow.hits.load(Ordering::SeqCst) == 1 }).await;
    shadow.release.add_permits(1);
    let slow = tokio::spawn(get(port, "web", "/slow"));
    a.arrived.recv().await.unwrap();
    shadow.arrived.recv().await.unwrap();
    a.release.add_permits(1);
    assert_eq!(
        slow.await.unwrap().status,
        200,
        "the mirror still holds its copy"
    );
    shadow.release.add_permits(1);

    let mut preflight = req("web", "/api");
    *preflight.method_mut() = Method::OPTIONS;
    let h = preflight.headers_mut();
    h.insert("origin", "https://app.example.com".parse().unwrap());
    h.insert("access-control-request-method", "PUT".parse().unwrap());
    let got = H1::connect(port).await.send(preflight).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(got.headers["access-control-allow-methods"], "GET, PUT");
    assert_eq!(got.headers["access-control-allow-headers"], "x-custom");
    assert_eq!(got.headers["access-control-allow-credentials"], "true");
    assert_eq!(got.headers["access-control-max-age"], "600");
    assert!(got.body.is_empty(), "answered by the gateway");
    let mut simple = req("web", "/api");
    simple
        .headers_mut()
        .insert("origin", "https://app.example.com".parse().unwrap());
    let got = H1::connect(port).await.send(simple).await;
    assert_eq!(got.field("backend"), Some("a"));
    assert_eq!(
        got.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(got.headers["access-control-expose-headers"], "x-exposed");
    let mut other = req("web", "/api");
    other
        .headers_mut()
        .insert("origin", "https://evil.org".parse().unwrap());
    let got = H1::connect(port).await.send(other).await;
    assert!(!got.headers.contains_key("access-control-allow-origin"));
    gw.stop().await;
}

/// With credentials, `*` in allowMethods / allowHeaders is no wildcard to browsers: the
/// preflight is answered with the method and headers it asks for (Gateway API's CORS,
/// conformance HTTPRouteCORS); without credentials `*` is answered as is.
#[tokio::test]
async fn cors_wildcards_with_credentials_echo_the_request() {
    let a = backend("a").await;
    for (credentials, methods, headers) in
        [(true, "PUT", "x-header-1, x-header-2"), (false, "*", "*")]
    {
        let port = free_port();
        let mut f = forward(vec![(1, Some(svc("a", vec![a.addr])))]);
        f.cors = Some(Cors {
            allow_origins: vec!["*".into()],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            allow_credentials: credentials,
            ..Default::default()
        });
        let gw = Gateway::start(single(port, f), |_| {}).await;
        let mut preflight = req("web", "/api");
        *preflight.method_mut() = Method::OPTIONS;
        let h = preflight.headers_mut();
        h.insert("origin", "https://other.foo.com".parse().unwrap());
        h.insert("access-control-request-method", "PUT".parse().unwrap());
        h.insert(
            "access-control-request-headers",
            "x-header-1, x-header-2".parse().unwrap(),
        );
        let got = H1::connect(port).await.send(preflight).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.headers["access-control-allow-methods"], methods);
        assert_eq!(got.headers["access-control-allow-headers"], headers);
        let origin = if credentials {
            "https://other.foo.com"
        } else {
            "*"
        };
        assert_eq!(got.headers["access-control-allow-origin"], origin);
        gw.stop().await;
    }
}

#[tokio::test]
async fn metrics_under_envoys_names() {
    let a = backend("a").await;
    let port = free_port();
    let gw = Gateway::start(
        single(port, forward(vec![(1, Some(svc("a", vec![a.addr])))])),
        |_| {},
    )
    .await;
    let mut c = H1::connect(port).await;
    for path in ["/one", "/two", "/status/503"] {
        c.get("web", path).await;
    }
    let metrics = {
        let mut s = TcpStream::connect(gw.admin).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    for line in [
        r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="default/a:80",envoy_response_code_class="2"} 2"#,
        r#"envoy_cluster_upstream_rq_total{envoy_cluster_name="default/a:80",envoy_response_code_class="5"} 1"#,
        r#"envoy_cluster_upstream_rq_time_count{envoy_cluster_name="default/a:80"} 3"#,
        r#"envoy_cluster_upstream_cx_active{envoy_cluster_name="default/a:80"} 1"#,
        r#"gateway_route_rq_total{route="HTTPRoute/default/test/0",envoy_response_code_class="2"} 2"#,
        r#"envoy_http_downstream_cx_active{envoy_http_conn_manager_prefix="port_"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains(&format!(
        r#"envoy_http_downstream_rq_total{{envoy_http_conn_manager_prefix="port_{port}",envoy_response_code_class="2"}} 2"#
    )));
    gw.stop().await;
}

#[test]
fn options_parse_back_from_their_flags() {
    let defaults = Options::default();
    assert_eq!(defaults.drain_timeout, Duration::from_secs(30));
    assert_eq!(k8s::parse_flags::<Options>(&[]), defaults);
    let every = Options {
        admin_listen: "127.0.0.1:9000".into(),
        listen_address: "10.0.0.1".parse().unwrap(),
        drain_timeout: Duration::from_millis(1500),
        header_read_timeout: Duration::from_secs(3),
        body_read_timeout: Duration::from_secs(4),
        idle_timeout: Duration::from_secs(7),
        max_header_bytes: 9000,
        max_headers: 50,
        max_body_bytes: Some(1 << 20),
        h2_max_concurrent_streams: 10,
        access_log: false,
        proxy_protocol_out: true,
    };
    for o in [defaults, every] {
        let args: Vec<String> = o
            .to_args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(k8s::parse_flags::<Options>(&args), o);
    }
}

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    let a = backend("a").await;
    let port = free_port();
    let gw = Gateway::start(
        single(port, forward(vec![(1, Some(svc("a", vec![a.addr])))])),
        |_| {},
    )
    .await;
    // Over the retry buffer: streamed to the backend, from HTTP/1.1 and HTTP/2 clients.
    let big = "x".repeat(1_000_000);
    let mut r = req("h", "/upload");
    *r.method_mut() = Method::POST;
    *r.body_mut() = Full::new(Bytes::from(big.clone()));
    let got = H1::connect(port).await.send(r).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.field("body").map(str::len), Some(big.len()));
    let mut h2 = h2_connect(port).await;
    let r = Request::builder()
        .method(Method::PUT)
        .uri(format!("http://h:{port}/upload"))
        .body(Full::new(Bytes::from(big.clone())))
        .unwrap();
    let got = collect(h2.send_request(r).await.unwrap()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.field("body").map(str::len), Some(big.len()));
    assert_eq!(got.field("method"), Some("PUT"));
    gw.stop().await;
}

#[tokio::test]
async fn the_default_address_takes_ipv4_too() {
    // `::` with IPv4 mapped, or `0.0.0.0` where IPv6 is off: 127.0.0.1 reaches it either way.
    let any = SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), 0);
    let listener = super::bind_tcp(any).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, connected) =
        tokio::join!(listener.accept(), TcpStream::connect(("127.0.0.1", port)));
    accepted.unwrap();
    connected.unwrap();
}

#[tokio::test]
async fn ipv4_clients_of_the_dual_stack_address_are_named_as_ipv4() {
    // On `::` an IPv4 client is accepted as ::ffff:127.0.0.1; the backend must see 127.0.0.1.
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
    let gw = Gateway::start(config, |o| {
        o.listen_address = std::net::Ipv6Addr::UNSPECIFIED.into();
    })
    .await;
    let got = get(port, "web.example.com", "/").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen("x-forwarded-for"), Some("127.0.0.1"));
    gw.stop().await;
}
