//! `kubewire workload ...`: the built-in programs containers without a `command` run
//! (chosen by image name, see docs/node.md): an HTTP "whoami" server like
//! traefik/whoami, the Gateway API conformance suite's echo server (echo-basic), TCP and
//! UDP echo servers, and sleep.

use std::net::{Ipv6Addr, SocketAddr};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Container;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `kubewire workload` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum WorkloadArgs {
    /// HTTP whoami: answers every request with the pod, node, addresses and the request's
    /// headers; `/healthz` answers `ok`.
    Http {
        /// Ports to serve on (all addresses, IPv4 and IPv6).
        #[arg(long = "port", default_value = "80")]
        ports: Vec<u16>,
    },
    /// The Gateway API conformance suite's `echo-basic`: answers every request with JSON
    /// naming the request (path, host, method, proto, headers) and the pod (`POD_NAME`,
    /// `NAMESPACE`, `SERVICE_NAME`, `INGRESS_NAME`), on `HTTP_PORT` (3000) and `H2C_PORT`
    /// (3001, HTTP/2 by prior knowledge).
    EchoBasic,
    /// Echoes every TCP connection back.
    TcpEcho {
        #[arg(long = "port", default_value = "7")]
        ports: Vec<u16>,
    },
    /// Echoes every UDP datagram back.
    UdpEcho {
        #[arg(long = "port", default_value = "7")]
        ports: Vec<u16>,
    },
    /// Sleeps until killed.
    Sleep,
}

/// What the whoami page shows about where it runs (from `KUBEWIRE_*` variables the node
/// sets for built-in workloads).
#[derive(Debug, Clone, Default)]
struct Identity {
    hostname: String,
    pod: String,
    namespace: String,
    pod_ip: String,
    node: String,
}

impl Identity {
    fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        Identity {
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pod: var("KUBEWIRE_POD_NAME"),
            namespace: var("KUBEWIRE_POD_NAMESPACE"),
            pod_ip: var("KUBEWIRE_POD_IP"),
            node: var("KUBEWIRE_NODE_NAME"),
        }
    }
}

/// Binds a dual-stack listener on `[::]:port` (falls back to IPv4 when IPv6 is off).
fn tcp_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match std::net::TcpListener::bind(v6) {
        Ok(l) => {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }
        Err(_) => {
            let l = std::net::TcpListener::bind(("0.0.0.0", port))?;
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        }
    }
}

fn whoami(id: &Identity, req: &Request<Incoming>, peer: SocketAddr, local: SocketAddr) -> String {
    let mut s = String::new();
    let unmap = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => v6
            .ip()
            .to_ipv4_mapped()
            .map_or(a, |v4| SocketAddr::from((v4, v6.port()))),
        a => a,
    };
    s.push_str(&format!("Hostname: {}\n", id.hostname));
    s.push_str(&format!("Pod: {}\n", id.pod));
    s.push_str(&format!("Namespace: {}\n", id.namespace));
    s.push_str(&format!("PodIP: {}\n", id.pod_ip));
    s.push_str(&format!("Node: {}\n", id.node));
    s.push_str(&format!("IP: {}\n", unmap(local).ip()));
    s.push_str(&format!("RemoteAddr: {}\n", unmap(peer)));
    s.push_str(&format!(
        "{} {} {:?}\n",
        req.method(),
        req.uri(),
        req.version()
    ));
    for (k, v) in req.headers() {
        s.push_str(&format!(
            "{}: {}\n",
            title_case(k.as_str()),
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    s
}

fn title_case(h: &str) -> String {
    h.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map_or(String::new(), |f| f.to_uppercase().chain(c).collect())
        })
        .collect::<Vec<_>>()
        .join("-")
}

async fn serve_http(port: u16, id: Identity) -> std::io::Result<()> {
    let listener = tcp_listener(port)?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let local = stream.local_addr()?;
        let id = id.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                // An access log line, so `kubectl logs` shows the traffic.
                println!("{peer} {} {}", req.method(), req.uri());
                let body = if req.uri().path() == "/healthz" {
                    "ok\n".to_owned()
                } else {
                    whoami(&id, &req, peer, local)
                };
                async move {
                    Ok::<_, std::convert::Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Where echo-basic runs, from the variables the conformance manifests set.
#[derive(Debug, Clone, Default, serde::Serialize)]
struct EchoContext {
    namespace: String,
    ingress: String,
    service: String,
    pod: String,
    #[serde(rename = "httpPort")]
    http_port: String,
}

impl EchoContext {
    fn from_env(http_port: &str) -> Self {
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        EchoContext {
            namespace: var("NAMESPACE"),
            ingress: var("INGRESS_NAME"),
            service: var("SERVICE_NAME"),
            pod: var("POD_NAME"),
            http_port: http_port.to_owned(),
        }
    }
}

/// A header name as Go's `net/http` writes it (`x-echo-set-header` → `X-Echo-Set-Header`).
fn go_canonical(h: &str) -> String {
    h.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next().map_or(String::new(), |f| {
                f.to_uppercase()
                    .chain(c.flat_map(char::to_lowercase))
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// echo-basic's answer to `req`: `/health` → `OK`; `/status/NNN` → that status;
/// otherwise 200 with the JSON echo (`path` is the request target with its query,
/// `headers` maps each Go-canonical name to its values, `Host` not among them), and the
/// response headers the request's `X-Echo-Set-Header: name:value[,name:value]` ask for.
fn echo_basic<B>(ctx: &EchoContext, req: &Request<B>) -> Response<Full<Bytes>> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path().replace("//", "/");
    if path == "/health" {
        return Response::new(Full::new(Bytes::from_static(b"OK")));
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = (code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
            .then(|| code.parse::<u16>().ok())
            .flatten()
            .and_then(|c| hyper::StatusCode::from_u16(c).ok())
            .unwrap_or(hyper::StatusCode::BAD_REQUEST);
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = status;
        return r;
    }
    let mut headers: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (k, v) in req.headers() {
        if k == hyper::header::HOST {
            continue;
        }
        headers
            .entry(go_canonical(k.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()))
        .unwrap_or_default();
    let proto = match req.version() {
        hyper::Version::HTTP_10 => "HTTP/1.0",
        hyper::Version::HTTP_2 => "HTTP/2.0",
        _ => "HTTP/1.1",
    };
    let mut body = serde_json::json!({
        "path": target,
        "host": host,
        "method": req.method().as_str(),
        "proto": proto,
        "headers": headers,
    });
    if let (Some(obj), Ok(serde_json::Value::Object(c))) =
        (body.as_object_mut(), serde_json::to_value(ctx))
    {
        obj.extend(c);
    }
    let mut builder = Response::builder();
    // `X-Echo-Set-Header: a:1, b:2` sets `a: 1` and `b: 2`; a name given twice gets its
    // values joined with `,`.
    let mut set: Vec<(String, String)> = Vec::new();
    for list in req.headers().get_all("x-echo-set-header") {
        for kv in String::from_utf8_lossy(list.as_bytes()).split(',') {
            let (name, value) = kv.trim().split_once(':').unwrap_or((kv.trim(), ""));
            if hyper::header::HeaderName::from_bytes(name.as_bytes()).is_err()
                || hyper::header::HeaderValue::from_str(value.trim()).is_err()
            {
                // The suite always sends the header, empty when it wants nothing set.
                continue;
            }
            match set.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
                Some((_, v)) => {
                    v.push(',');
                    v.push_str(value.trim());
                }
                None => set.push((name.to_owned(), value.trim().to_owned())),
            }
        }
    }
    for (name, value) in set {
        builder = builder.header(name, value);
    }
    builder
        .header("content-type", "application/json")
        .header("x-content-type-options", "nosniff")
        .body(Full::new(Bytes::from(
            serde_json::to_vec_pretty(&body).unwrap_or_default(),
        )))
        .unwrap_or_default()
}

/// The first query parameter `name` of `uri`, `+` and `%XX` decoded.
fn query_param(uri: &hyper::Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A Go duration (`time.ParseDuration`): `1s`, `500ms`, `1m30s`, `1.5h`.
fn go_duration(s: &str) -> Option<std::time::Duration> {
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(std::time::Duration::ZERO);
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&n| n > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[u..];
    }
    std::time::Duration::try_from_secs_f64(total).ok()
}

/// echo-basic's `/retry/` attempts so far, by the request's `uuid`.
type Attempts = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>;

/// What echo-basic does with a request that needs more than [`echo_basic`]: `?delay=D`
/// waits D first; `/retry/?uuid=U&succeedAfter=N[&responseCode=C][&delayRetry=D]` fails
/// the first N requests of U (answering C, or closing the connection without one) and
/// echoes from then on.
async fn echo_basic_serve(
    ctx: &EchoContext,
    attempts: &Attempts,
    mut req: Request<Incoming>,
) -> std::io::Result<Response<Full<Bytes>>> {
    let uri = req.uri().clone();
    // `/ws`: a WebSocket that echoes every message back.
    if uri.path() == "/ws"
        && req
            .headers()
            .get(hyper::header::UPGRADE)
            .is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && let Some(key) = req.headers().get("sec-websocket-key").cloned()
    {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use futures::{SinkExt, StreamExt};
            let Ok(io) = upgrade.await else { return };
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    break;
                }
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()));
        *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("Upgrade"),
        );
        h.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        if let Ok(v) = hyper::header::HeaderValue::from_str(
            &tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        ) {
            h.insert("sec-websocket-accept", v);
        }
        return Ok(r);
    }
    let status = |code: u16, msg: &str| {
        let mut r = Response::new(Full::new(Bytes::from(msg.to_owned())));
        *r.status_mut() =
            hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::BAD_REQUEST);
        r
    };
    if uri.path().replace("//", "/").starts_with("/retry/") {
        let Some(uuid) = query_param(&uri, "uuid").filter(|u| !u.is_empty()) else {
            return Ok(status(400, "uuid is required"));
        };
        let Some(succeed_after) =
            query_param(&uri, "succeedAfter").and_then(|n| n.parse::<u32>().ok())
        else {
            return Ok(status(400, "succeedAfter is required"));
        };
        let fail = {
            let mut a = attempts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = a.entry(uuid).or_default();
            let fail = *n < succeed_after;
            if fail {
                *n += 1;
            }
            fail
        };
        if fail {
            if let Some(d) = query_param(&uri, "delayRetry").and_then(|d| go_duration(&d)) {
                tokio::time::sleep(d).await;
            }
            return match query_param(&uri, "responseCode").and_then(|c| c.parse::<u16>().ok()) {
                Some(code) => Ok(status(code, "")),
                None => Err(std::io::Error::other(
                    "retry simulation: connection dropped",
                )),
            };
        }
    }
    if let Some(d) = query_param(&uri, "delay") {
        match go_duration(&d) {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                return Ok(status(
                    500,
                    &format!("{{\"message\":\"invalid duration {d}\"}}"),
                ));
            }
        }
    }
    Ok(echo_basic(ctx, &req))
}

/// echo-basic on `port`: HTTP/1.1, or on its h2c port HTTP/1.1 and HTTP/2 by prior
/// knowledge, where (as upstream) only HTTP/2 requests are echoed and others answered 400.
async fn serve_echo_basic(
    port: u16,
    ctx: EchoContext,
    attempts: Attempts,
    h2c: bool,
) -> std::io::Result<()> {
    let listener = tcp_listener(port)?;
    loop {
        let (stream, peer) = listener.accept().await?;
        let ctx = ctx.clone();
        let attempts = attempts.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                // Upstream's log line, which its mirror tests look for.
                println!(
                    "Echoing back request made to {} to client ({peer})",
                    req.uri()
                );
                let (ctx, attempts) = (ctx.clone(), attempts.clone());
                async move {
                    if h2c && req.version() != hyper::Version::HTTP_2 {
                        let mut r = Response::new(Full::new(Bytes::from("Expected h2c request")));
                        *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                        return Ok(r);
                    }
                    echo_basic_serve(&ctx, &attempts, req).await
                }
            });
            if h2c {
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            }
        });
    }
}

async fn tcp_echo(port: u16) -> std::io::Result<()> {
    let listener = tcp_listener(port)?;
    loop {
        let (mut s, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });
    }
}

async fn udp_echo(port: u16) -> std::io::Result<()> {
    let sock = match tokio::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).await {
        Ok(s) => s,
        Err(_) => tokio::net::UdpSocket::bind(("0.0.0.0", port)).await?,
    };
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = sock.recv_from(&mut buf).await?;
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}

/// Runs a workload until it fails or is killed.
pub async fn run(args: WorkloadArgs) -> std::io::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    match args {
        WorkloadArgs::Http { ports } => {
            let id = Identity::from_env();
            for p in ports {
                tasks.spawn(serve_http(p, id.clone()));
            }
        }
        WorkloadArgs::EchoBasic => {
            let port = |k: &str, default: u16| {
                std::env::var(k)
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(default)
            };
            let http = port("HTTP_PORT", 3000);
            let ctx = EchoContext::from_env(&http.to_string());
            let attempts = Attempts::default();
            tasks.spawn(serve_echo_basic(http, ctx.clone(), attempts.clone(), false));
            tasks.spawn(serve_echo_basic(
                port("H2C_PORT", 3001),
                ctx,
                attempts,
                true,
            ));
        }
        WorkloadArgs::TcpEcho { ports } => {
            for p in ports {
                tasks.spawn(tcp_echo(p));
            }
        }
        WorkloadArgs::UdpEcho { ports } => {
            for p in ports {
                tasks.spawn(udp_echo(p));
            }
        }
        WorkloadArgs::Sleep => std::future::pending::<()>().await,
    }
    eprintln!("kubewire workload: serving");
    while let Some(r) = tasks.join_next().await {
        r.map_err(std::io::Error::other)??;
    }
    Ok(())
}

/// The image's base name: `docker.io/library/nginx:1.27` → `nginx`.
fn image_base(image: &str) -> String {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last).to_lowercase()
}

/// The program a container runs: its `command` and `args`, or, without a `command`, the
/// built-in workload its image names (see docs/node.md, "Images"), `exe` being this
/// binary.
pub(crate) fn container_argv(exe: &str, c: &Container) -> Vec<String> {
    if let Some(cmd) = c.command.as_ref().filter(|c| !c.is_empty()) {
        let args = c.args.iter().flatten();
        return cmd.iter().chain(args).cloned().collect();
    }
    image_argv(exe, c)
}

/// The built-in workload for a container without `command`.
fn image_argv(exe: &str, c: &Container) -> Vec<String> {
    let image = c.image.clone().unwrap_or_default().to_lowercase();
    let base = image_base(&image);
    let args = c.args.clone().unwrap_or_default();
    if image.contains("kubewire") {
        return std::iter::once(exe.to_owned()).chain(args).collect();
    }
    let ports = |proto: &str, default: i32| -> Vec<String> {
        let mut p: Vec<String> = c
            .ports
            .iter()
            .flatten()
            .filter(|p| {
                p.protocol
                    .as_deref()
                    .unwrap_or("TCP")
                    .eq_ignore_ascii_case(proto)
            })
            .map(|p| p.container_port.to_string())
            .collect();
        if p.is_empty() {
            p.push(default.to_string());
        }
        p.into_iter()
            .flat_map(|p| ["--port".to_owned(), p])
            .collect()
    };
    let workload = |kind: &str, ports: Vec<String>| -> Vec<String> {
        [exe.to_owned(), "workload".into(), kind.into()]
            .into_iter()
            .chain(ports)
            .collect()
    };
    const HTTP: &[&str] = &[
        "nginx",
        "httpd",
        "whoami",
        "apache",
        "caddy",
        "traefik",
        "echoserver",
        "http-echo",
        "hello-app",
        "podinfo",
    ];
    if base == "echo-basic" {
        return workload("echo-basic", Vec::new());
    }
    if base.contains("udp-echo") {
        return workload("udp-echo", ports("UDP", 7));
    }
    if base.contains("tcp-echo") || base.contains("echo-server") {
        return workload("tcp-echo", ports("TCP", 7));
    }
    if HTTP.iter().any(|h| base.contains(h)) {
        return workload("http", ports("TCP", 80));
    }
    // busybox/alpine/ubuntu/...: the image's shell or command is replaced by `args`
    // when given (run from the host), else the container sleeps.
    if !args.is_empty() {
        return args;
    }
    workload("sleep", Vec::new())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn images_pick_workloads() {
        for (container, want) in [
            // A command runs as given, whatever the image.
            (
                json!({"image": "nginx", "command": ["sh", "-c"], "args": ["exit 3"]}),
                &["sh", "-c", "exit 3"][..],
            ),
            (
                json!({"image": "docker.io/library/nginx:1.27", "ports": [{"containerPort": 8080}]}),
                &["/kw", "workload", "http", "--port", "8080"],
            ),
            (
                json!({"image": "httpd"}),
                &["/kw", "workload", "http", "--port", "80"],
            ),
            (json!({"image": "busybox"}), &["/kw", "workload", "sleep"]),
            (
                json!({"image": "busybox", "args": ["sleep", "5"]}),
                &["sleep", "5"],
            ),
            (
                json!({"image": "ghcr.io/x/kubewire:dev", "args": ["dns"]}),
                &["/kw", "dns"],
            ),
            (
                json!({"image": "udp-echo", "ports": [{"containerPort": 53, "protocol": "UDP"}]}),
                &["/kw", "workload", "udp-echo", "--port", "53"],
            ),
            (
                json!({"image": "registry.k8s.io/gateway-api/echo-basic:v1.5.1"}),
                &["/kw", "workload", "echo-basic"],
            ),
        ] {
            let mut c: Container = serde_json::from_value(container.clone()).unwrap();
            c.name = "c".into();
            assert_eq!(container_argv("/kw", &c), want, "{container}");
        }
    }

    #[test]
    fn echo_basic_answers_as_upstream() {
        let ctx = EchoContext {
            namespace: "gateway-conformance-infra".into(),
            pod: "infra-backend-v1-abc".into(),
            http_port: "3000".into(),
            ..Default::default()
        };
        let req = Request::builder()
            .method("POST")
            .uri("/a//b?x=1")
            .header("host", "example.com")
            .header("x-forwarded-for", "198.18.0.254")
            .header("x-multi", "1")
            .header("x-multi", "2")
            .header("X-Echo-Set-Header", "X-Foo: bar, x-foo:baz,Other:1")
            .header("X-Echo-Set-Header", "")
            .body(())
            .unwrap();
        let resp = echo_basic(&ctx, &req);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-foo"], "bar,baz");
        assert_eq!(resp.headers()["other"], "1");
        assert_eq!(resp.headers()["content-type"], "application/json");
        let body = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(http_body_util::BodyExt::collect(resp.into_body()))
            .unwrap()
            .to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            json!({
                "path": "/a//b?x=1",
                "host": "example.com",
                "method": "POST",
                "proto": "HTTP/1.1",
                "headers": {
                    "X-Forwarded-For": ["198.18.0.254"],
                    "X-Multi": ["1", "2"],
                    "X-Echo-Set-Header": ["X-Foo: bar, x-foo:baz,Other:1", ""],
                },
                "namespace": "gateway-conformance-infra",
                "ingress": "",
                "service": "",
                "pod": "infra-backend-v1-abc",
                "httpPort": "3000",
            })
        );
        let get = |path: &str| {
            echo_basic(&ctx, &Request::get(path).body(()).unwrap())
                .status()
                .as_u16()
        };
        assert_eq!(get("/status/503"), 503);
        assert_eq!(get("/status/5033"), 400);
        assert_eq!(get("/health"), 200);
    }

    #[test]
    fn echo_basic_parses_durations_and_queries() {
        use std::time::Duration;
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("1"), None);
        assert_eq!(go_duration("x"), None);
        let uri: hyper::Uri = "/retry/a?uuid=a%2Db&succeedAfter=2&x".parse().unwrap();
        assert_eq!(query_param(&uri, "uuid").as_deref(), Some("a-b"));
        assert_eq!(query_param(&uri, "succeedAfter").as_deref(), Some("2"));
        assert_eq!(query_param(&uri, "x").as_deref(), Some(""));
        assert_eq!(query_param(&uri, "y"), None);
    }
}
