//! The kubelet API, the part the API server's `pods/log`, `pods/exec`, `pods/attach`
//! and `pods/portforward` proxies and health checks use, over HTTPS on each node
//! address:
//!
//! - `GET /containerLogs/{namespace}/{pod}/{container}` with kubelet's query parameters
//!   (`follow`, `tailLines`, `timestamps`, `limitBytes`, `sinceSeconds`, `sinceTime`,
//!   `previous`);
//! - `/exec/{namespace}/{pod}/{container}?command=...&input=1&output=1&error=1&tty=1`,
//!   `/attach/{namespace}/{pod}/{container}` and `/portForward/{namespace}/{pod}`
//!   (each also with the pod's uid before the container), upgraded to WebSocket or
//!   SPDY ([`crate::stream`]);
//! - `GET /stats/summary`: CPU and memory of the node and its containers
//!   ([`crate::stats`]);
//! - `GET /healthz`.
//!
//! The serving certificate is self-signed at start; clients must present a
//! certificate signed by the cluster CA (the API server's
//! `kube-apiserver-kubelet-client`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::task::JoinHandle;

use crate::{Ctx, Error};

pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.into())).boxed())
        .unwrap_or_default()
}

fn tls_config(ctx: &Ctx, config: &kube::Config) -> Result<Arc<rustls::ServerConfig>, Error> {
    fn err<E: std::error::Error + Send + Sync + 'static>(what: &str) -> impl FnOnce(E) -> Error {
        move |e| Error::Server {
            what: what.to_owned(),
            source: Box::new(e),
        }
    }
    let mut names: Vec<String> = ctx.args.node_ip.iter().map(ToString::to_string).collect();
    names.push(ctx.args.node_name.clone());
    let ck =
        rcgen::generate_simple_self_signed(names).map_err(err("making the serving certificate"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for der in config.root_cert.iter().flatten() {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(err("reading the cluster CA"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(err("verifying clients by the cluster CA"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(err("choosing the TLS versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .map_err(err("using the serving certificate"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Binds every node address and serves until aborted.
pub(crate) async fn start(ctx: Arc<Ctx>, config: &kube::Config) -> Result<JoinHandle<()>, Error> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(&ctx, config)?);
    let mut listeners = Vec::new();
    for ip in &ctx.args.node_ip {
        let addr = SocketAddr::new(*ip, ctx.args.port);
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::Server {
                what: format!("listening on {addr}"),
                source: Box::new(e),
            })?;
        listeners.push(l);
    }
    Ok(tokio::spawn(async move {
        let mut set = tokio::task::JoinSet::new();
        for l in listeners {
            let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
            set.spawn(async move {
                let mut incoming = k8s::http::Acceptor::new(l, "kubelet API");
                loop {
                    let (stream, _) = incoming.accept().await;
                    let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                            let ctx = ctx.clone();
                            async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .with_upgrades()
                            .await;
                    });
                }
            });
        }
        while set.join_next().await.is_some() {}
    }))
}

async fn handle(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return text(StatusCode::OK, "ok");
    }
    let pairs = k8s::http::query_pairs(req.uri().query().unwrap_or(""));
    let query: HashMap<String, String> = pairs.iter().cloned().collect();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["containerLogs", ns, pod, container] => logs(ctx, ns, pod, container, &query),
        ["exec" | "attach", ns, pod, container] | ["exec" | "attach", ns, pod, _, container] => {
            let attach = parts[0] == "attach";
            crate::stream::remote_command(ctx, req, attach, ns, pod, container, &pairs)
        }
        ["stats", "summary"] => {
            let body = serde_json::to_vec(&ctx.stats.summary(ctx)).unwrap_or_default();
            Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)).boxed())
                .unwrap_or_default()
        }
        ["portForward", ns, pod] | ["portForward", ns, pod, _] => {
            crate::stream::port_forward(ctx, req, ns, pod, &pairs)
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

/// kubelet's log options.
#[derive(Debug, Clone, Default)]
struct LogOpts {
    follow: bool,
    timestamps: bool,
    tail: Option<usize>,
    limit: Option<usize>,
    since: Option<SystemTime>,
}

fn logs(
    ctx: &Arc<Ctx>,
    ns: &str,
    pod: &str,
    container: &str,
    q: &HashMap<String, String>,
) -> Response<Body> {
    let flag = |k: &str| {
        q.get(k)
            .is_some_and(|v| v == "true" || v == "1" || v.is_empty())
    };
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let since = num("sinceSeconds")
        .map(|s| SystemTime::now() - Duration::from_secs(u64::try_from(s).unwrap_or(0)))
        .or_else(|| {
            q.get("sinceTime")
                .and_then(|t| crate::time::parse(&t.replace("%3A", ":")))
        });
    let opts = LogOpts {
        follow: flag("follow"),
        timestamps: flag("timestamps"),
        tail: num("tailLines").and_then(|n| usize::try_from(n).ok()),
        limit: num("limitBytes").and_then(|n| usize::try_from(n).ok()),
        since,
    };
    let previous = flag("previous");
    let Some(entry) = ctx
        .pods
        .lock()
        .ok()
        .and_then(|l| l.get(&(ns.to_owned(), pod.to_owned())).cloned())
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod {ns}/{pod} not found on this node\n"),
        );
    };
    let Some((restarts, running)) = entry
        .containers
        .get(container)
        .map(|c| (c.restarts, c.running.is_some()))
    else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "container {container:?} in pod {pod:?} is waiting to start or does not exist\n"
            ),
        );
    };
    let n = if previous {
        if restarts == 0 {
            return text(
                StatusCode::BAD_REQUEST,
                format!("previous terminated container {container:?} in pod {pod:?} not found\n"),
            );
        }
        restarts - 1
    } else {
        restarts
    };
    let file = entry
        .dir
        .join("logs")
        .join(container)
        .join(format!("{n}.log"));
    let data = std::fs::read(&file).unwrap_or_default();
    let (out, offset) = render(&data, &opts);
    let follow = opts.follow && !previous && running;
    let mut remaining = opts.limit.map(|l| l.saturating_sub(out.len()));
    if !follow || remaining == Some(0) {
        return Response::new(Full::new(Bytes::from(out)).boxed());
    }
    // Follow: the lines so far, then new lines until the container stops.
    let (ctx, ns, pod, container) = (
        ctx.clone(),
        ns.to_owned(),
        pod.to_owned(),
        container.to_owned(),
    );
    let stream = futures::stream::unfold(
        (Some(out), offset, file, false),
        move |(first, mut offset, file, done): (Option<Vec<u8>>, u64, PathBuf, bool)| {
            let (ctx, ns, pod, container) =
                (ctx.clone(), ns.clone(), pod.clone(), container.clone());
            let opts = LogOpts {
                tail: None,
                since: None,
                ..opts.clone()
            };
            async move {
                if let Some(first) = first {
                    return Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(first))),
                        (None, offset, file, done),
                    ));
                }
                if done {
                    return None;
                }
                loop {
                    let still = ctx.pods.lock().ok().and_then(|l| {
                        l.get(&(ns.clone(), pod.clone()))
                            .and_then(|e| e.containers.get(&container))
                            .map(|c| (c.restarts, c.running.is_some()))
                    });
                    let chunk = read_from(&file, offset);
                    if let Some(end) = chunk.iter().rposition(|b| *b == b'\n') {
                        let (out, _) = render(&chunk[..=end], &opts);
                        offset += u64::try_from(end + 1).unwrap_or(0);
                        let mut out = out;
                        let mut finished = false;
                        if let Some(r) = remaining.as_mut() {
                            out.truncate(*r);
                            *r -= out.len();
                            finished = *r == 0;
                        }
                        return Some((
                            Ok(Frame::data(Bytes::from(out))),
                            (None, offset, file, finished),
                        ));
                    }
                    // The container stopped or restarted (a new file): this stream ends.
                    if still.is_none_or(|(r, running)| !running || r != n) {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        },
    );
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn read_from(file: &PathBuf, offset: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Ok(mut f) = std::fs::File::open(file)
        && f.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}

/// Renders CRI-format log bytes as kubectl shows them; returns the output and the byte
/// offset just after the last complete line read.
fn render(data: &[u8], o: &LogOpts) -> (Vec<u8>, u64) {
    let complete = data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let text = String::from_utf8_lossy(&data[..complete]);
    let mut lines: Vec<String> = Vec::new();
    let mut partial = String::new();
    for line in text.lines() {
        let mut f = line.splitn(4, ' ');
        let (Some(ts), Some(_stream), Some(tag), content) =
            (f.next(), f.next(), f.next(), f.next().unwrap_or(""))
        else {
            continue;
        };
        if let Some(since) = o.since
            && crate::time::parse(ts).is_some_and(|t| t < since)
        {
            continue;
        }
        partial.push_str(content);
        if tag == "P" {
            continue;
        }
        let content = std::mem::take(&mut partial);
        lines.push(if o.timestamps {
            format!("{ts} {content}\n")
        } else {
            format!("{content}\n")
        });
    }
    if let Some(t) = o.tail {
        let skip = lines.len().saturating_sub(t);
        lines.drain(..skip);
    }
    let mut out: Vec<u8> = lines.concat().into_bytes();
    if let Some(l) = o.limit {
        out.truncate(l);
    }
    (out, u64::try_from(complete).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cri_lines() {
        let data = b"2026-01-01T00:00:00.000000001Z stdout F one\n2026-01-01T00:00:01.5Z stderr F two\n2026-01-01T00:00:02Z stdout P thr\n2026-01-01T00:00:02Z stdout F ee\n2026-01-01T00:00:03Z stdout F half";
        let (out, off) = render(data, &LogOpts::default());
        assert_eq!(String::from_utf8(out).unwrap(), "one\ntwo\nthree\n");
        assert_eq!(
            off as usize,
            data.len() - "2026-01-01T00:00:03Z stdout F half".len()
        );
        let (out, _) = render(
            data,
            &LogOpts {
                tail: Some(1),
                timestamps: true,
                ..Default::default()
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "2026-01-01T00:00:02Z three\n"
        );
        let since = crate::time::parse("2026-01-01T00:00:01Z");
        let (out, _) = render(
            data,
            &LogOpts {
                since,
                limit: Some(4),
                ..Default::default()
            },
        );
        assert_eq!(String::from_utf8(out).unwrap(), "two\n");
    }
}
