//! The kubelet's streaming API: `exec`, `attach` and `portForward`, the endpoints the
//! API server proxies `pods/exec`, `pods/attach` and `pods/portforward` to.
//!
//! A request is upgraded to one of the two stream protocols Kubernetes clients speak:
//!
//! - WebSocket ([`ws`]): the channel protocols `v5.channel.k8s.io` (kubectl >= 1.30;
//!   adds the CLOSE signal, so stdin can end), `v4.channel.k8s.io`, `channel.k8s.io`
//!   and their base64 variants for exec and attach; for port-forward the
//!   `v4.channel.k8s.io` channels (a data and an error channel per port, as the Python
//!   client uses them) and `SPDY/3.1+portforward.k8s.io`, SPDY carried in WebSocket
//!   messages (kubectl >= 1.31).
//! - SPDY/3.1 ([`spdy`]) with `X-Stream-Protocol-Version` `v4.channel.k8s.io` (also
//!   v3 and v2) for exec and attach, `portforward.k8s.io` for port-forward: one SPDY
//!   stream per channel, opened by the client (older kubectl, client-go).
//!
//! Both end in the same place: a remote command is a [`Session`] (stdin, resize events
//! and output channels) handed to exec or attach ([`crate::exec`]), and its
//! [`Outcome`] goes back as kubelet writes it, a `Status` on the error channel
//! ([`remote`]); a forwarded port is a byte stream to the pod's port ([`forward`]).

pub(crate) mod forward;
pub(crate) mod remote;
pub(crate) mod spdy;
pub(crate) mod ws;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::Ctx;
use crate::server::{Body, text};

/// A terminal size, as clients send it on the resize channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Which of a remote command's standard streams the client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Opts {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Opts {
    /// From kubelet's query parameters (`input`, `output`, `error`, `tty`, each `1`),
    /// with its rules: a TTY has no separate stderr, and one stream at least.
    pub(crate) fn from_query(q: &[(String, String)]) -> Result<Opts, String> {
        let on = |k: &str| q.iter().any(|(n, v)| n == k && v == "1");
        let tty = on("tty");
        let o = Opts {
            stdin: on("input"),
            stdout: on("output"),
            stderr: on("error") && !tty,
            tty,
        };
        if !o.stdin && !o.stdout && !o.stderr {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        Ok(o)
    }
}

/// An output stream of a remote command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    Stdout,
    Stderr,
}

/// A remote command's streams, as exec and attach use them whatever the protocol.
#[derive(Debug)]
pub(crate) struct Session {
    pub opts: Opts,
    /// What the client types; ends when it closes stdin. `None` without stdin.
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    /// Terminal sizes; `None` without a TTY.
    pub resize: Option<mpsc::Receiver<TermSize>>,
    /// Output for the client. Dropping the sender ends the output.
    pub out: mpsc::Sender<(Channel, Bytes)>,
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exited 0, or an attach that ended.
    Success,
    /// Exited with a non-zero code.
    Exit { code: i32, command: Vec<String> },
    /// Could not run (kubelet's internal error).
    Failed(String),
}

impl Outcome {
    /// The `Status` kubelet writes on the error channel (protocol v4 and later): what
    /// kubectl turns into its exit code and "command terminated with exit code N".
    pub(crate) fn status(&self) -> Value {
        match self {
            Outcome::Success => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exit { code, command } => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!(
                    "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                    command.join(" ")
                ),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(why) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("Internal error occurred: {why}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": why}]},
                "code": 500,
            }),
        }
    }

    /// What protocols before v4 write on the error channel: the message of a failure,
    /// nothing on success.
    pub(crate) fn text(&self) -> Option<String> {
        self.status()["message"].as_str().map(str::to_owned)
    }
}

/// How a request asks to be upgraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upgrade {
    /// `Upgrade: websocket` with its key and offered subprotocols.
    WebSocket { key: String, protocols: Vec<String> },
    /// `Upgrade: SPDY/3.1` with the offered `X-Stream-Protocol-Version`s.
    Spdy { protocols: Vec<String> },
}

impl Upgrade {
    /// What `headers` ask for; `None` for a request that is not an upgrade.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Upgrade> {
        let all = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect()
        };
        let connection_upgrade = all("connection")
            .iter()
            .any(|c| c.eq_ignore_ascii_case("upgrade"));
        let upgrade = all("upgrade");
        if !connection_upgrade {
            return None;
        }
        if upgrade.iter().any(|u| u.eq_ignore_ascii_case("websocket")) {
            return Some(Upgrade::WebSocket {
                key: headers
                    .get("sec-websocket-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
                protocols: all("sec-websocket-protocol"),
            });
        }
        if upgrade
            .iter()
            .any(|u| u.to_ascii_lowercase().starts_with("spdy/3.1"))
        {
            return Some(Upgrade::Spdy {
                protocols: all("x-stream-protocol-version"),
            });
        }
        None
    }
}

/// The first of the client's `offered` protocols that the server `supports` (the
/// client lists them by preference).
pub(crate) fn negotiate<'a>(offered: &[String], supports: &[&'a str]) -> Option<&'a str> {
    offered
        .iter()
        .find_map(|o| supports.iter().find(|s| **s == o.as_str()).copied())
}

/// 101 Switching Protocols to a WebSocket with subprotocol `protocol` ("" for none).
fn websocket_switch(key: &str, protocol: &str) -> Response<Body> {
    let mut r = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        );
    if !protocol.is_empty() {
        r = r.header("sec-websocket-protocol", protocol);
    }
    r.body(Empty::new().boxed()).unwrap_or_default()
}

/// 101 Switching Protocols to SPDY/3.1 with the stream protocol `protocol`.
fn spdy_switch(protocol: &str) -> Response<Body> {
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "Upgrade")
        .header("upgrade", "SPDY/3.1")
        .header("x-stream-protocol-version", protocol)
        .body(Empty::new().boxed())
        .unwrap_or_default()
}

/// kubelet's answer when no protocol both sides speak is found.
fn no_protocol(offered: &[String], supported: &[&str]) -> Response<Body> {
    text(
        StatusCode::FORBIDDEN,
        format!(
            "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
        ),
    )
}

/// Runs `f` on the connection once the request is upgraded.
fn on_upgrade<F, Fut>(req: &mut Request<Incoming>, f: F)
where
    F: FnOnce(TokioIo<hyper::upgrade::Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on.await {
            Ok(up) => f(TokioIo::new(up)).await,
            Err(e) => tracing::debug!(error = %k8s::ErrorChain(&e), "upgrade failed"),
        }
    });
}

/// The pod `ns/name` on this node.
fn find_pod(ctx: &Ctx, ns: &str, name: &str) -> Option<crate::PodEntry> {
    ctx.pods
        .lock()
        .ok()
        .and_then(|p| p.get(&(ns.to_owned(), name.to_owned())).cloned())
}

/// kubelet's answer for a pod it does not run.
fn no_pod() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "pod does not exist")
}

/// `/exec/...` and `/attach/...`.
pub(crate) fn remote_command(
    ctx: &Arc<Ctx>,
    mut req: Request<Incoming>,
    attach: bool,
    ns: &str,
    pod: &str,
    container: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let opts = match Opts::from_query(query) {
        Ok(o) => o,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let command: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    if !attach && command.is_empty() {
        return text(
            StatusCode::BAD_REQUEST,
            "you must specify at least 1 command",
        );
    }
    let Some(entry) = find_pod(ctx, ns, pod) else {
        return no_pod();
    };
    // kubelet looks among running containers only.
    let Some(target) = entry
        .containers
        .get(container)
        .and_then(|c| c.running.clone())
    else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("container not found ({container:?})"),
        );
    };
    let exe = ctx.exe.clone();
    let handler: remote::Handler = if attach {
        Box::new(move |s| Box::pin(crate::exec::attach(target.pid, s)))
    } else {
        tracing::info!(pod = %format!("{ns}/{pod}"), container, ?command, "exec");
        Box::new(move |s| Box::pin(crate::exec::exec(exe, target, command, s)))
    };
    match Upgrade::from_headers(req.headers()) {
        Some(Upgrade::WebSocket { key, protocols }) => {
            let name = if protocols.is_empty() {
                Some("")
            } else {
                negotiate(&protocols, ws::REMOTE_PROTOCOLS)
            };
            let Some(protocol) = name.and_then(ws::ChannelProtocol::parse) else {
                return no_protocol(&protocols, ws::REMOTE_PROTOCOLS);
            };
            on_upgrade(&mut req, move |io| async move {
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                remote::serve_ws(ws, protocol, opts, handler).await;
            });
            websocket_switch(&key, name.unwrap_or(""))
        }
        Some(Upgrade::Spdy { protocols }) => {
            let Some(name) = negotiate(&protocols, remote::SPDY_PROTOCOLS) else {
                return no_protocol(&protocols, remote::SPDY_PROTOCOLS);
            };
            let version = remote::spdy_version(name);
            on_upgrade(&mut req, move |io| async move {
                remote::serve_spdy(io, version, opts, handler).await;
            });
            spdy_switch(name)
        }
        None => text(StatusCode::BAD_REQUEST, "Upgrade request required"),
    }
}

/// `/portForward/...`.
pub(crate) fn port_forward(
    ctx: &Arc<Ctx>,
    mut req: Request<Incoming>,
    ns: &str,
    pod: &str,
    query: &[(String, String)],
) -> Response<Body> {
    let Some(entry) = find_pod(ctx, ns, pod) else {
        return no_pod();
    };
    let target = Arc::new(forward::Target {
        pod: pod.to_owned(),
        uid: entry.uid.clone(),
        netns: entry.netns.clone(),
    });
    match Upgrade::from_headers(req.headers()) {
        Some(Upgrade::WebSocket { key, protocols }) => {
            let name = if protocols.is_empty() {
                Some("")
            } else {
                negotiate(&protocols, ws::FORWARD_PROTOCOLS)
            };
            let Some(name) = name else {
                return no_protocol(&protocols, ws::FORWARD_PROTOCOLS);
            };
            if name == ws::TUNNEL_PROTOCOL {
                on_upgrade(&mut req, move |io| async move {
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    forward::serve_spdy(ws::tunnel(ws), target).await;
                });
                return websocket_switch(&key, name);
            }
            let mut ports = Vec::new();
            for (_, v) in query.iter().filter(|(k, _)| k == "port") {
                for p in v.split(',') {
                    match p.parse::<u16>() {
                        Ok(n) if n > 0 => ports.push(n),
                        _ => {
                            return text(
                                StatusCode::BAD_REQUEST,
                                format!("unable to parse {v:?} as a port"),
                            );
                        }
                    }
                }
            }
            if ports.is_empty() {
                return text(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"port\" is required",
                );
            }
            let Some(protocol) = ws::ChannelProtocol::parse(name) else {
                return no_protocol(&protocols, ws::FORWARD_PROTOCOLS);
            };
            on_upgrade(&mut req, move |io| async move {
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                forward::serve_ws(ws, protocol, ports, target).await;
            });
            websocket_switch(&key, name)
        }
        Some(Upgrade::Spdy { protocols }) => {
            let Some(name) = negotiate(&protocols, &[forward::SPDY_PROTOCOL]) else {
                return no_protocol(&protocols, &[forward::SPDY_PROTOCOL]);
            };
            on_upgrade(&mut req, move |io| async move {
                forward::serve_spdy(io, target).await;
            });
            spdy_switch(name)
        }
        None => text(StatusCode::BAD_REQUEST, "Upgrade request required"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn options_follow_kubelet() {
        let o = Opts::from_query(&q(&[("input", "1"), ("tty", "1"), ("error", "1")])).unwrap();
        assert_eq!(
            o,
            Opts {
                stdin: true,
                stdout: false,
                stderr: false,
                tty: true
            }
        );
        let e = Opts::from_query(&q(&[("command", "ls")])).unwrap_err();
        assert_eq!(e, "you must specify at least 1 of stdin, stdout, stderr");
    }

    #[test]
    fn statuses_as_kubelet_writes_them() {
        assert_eq!(Outcome::Success.status()["status"], "Success");
        assert_eq!(Outcome::Success.text(), None);
        let e = Outcome::Exit {
            code: 3,
            command: vec!["sh".into(), "-c".into(), "exit 3".into()],
        };
        let s = e.status();
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(
            s["message"],
            "command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3"
        );
        let f = Outcome::Failed("boom".into()).status();
        assert_eq!(f["reason"], "InternalError");
        assert_eq!(f["code"], 500);
    }

    #[test]
    fn upgrades_and_negotiation() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "SPDY/3.1".parse().unwrap());
        h.append(
            "x-stream-protocol-version",
            "v4.channel.k8s.io".parse().unwrap(),
        );
        h.append(
            "x-stream-protocol-version",
            "v3.channel.k8s.io".parse().unwrap(),
        );
        let Some(Upgrade::Spdy { protocols }) = Upgrade::from_headers(&h) else {
            panic!()
        };
        assert_eq!(
            negotiate(&protocols, &["v3.channel.k8s.io", "v4.channel.k8s.io"]),
            Some("v4.channel.k8s.io")
        );
        let mut w = HeaderMap::new();
        w.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        w.insert("upgrade", "websocket".parse().unwrap());
        w.insert("sec-websocket-key", "k".parse().unwrap());
        w.insert(
            "sec-websocket-protocol",
            "v5.channel.k8s.io, v4.channel.k8s.io".parse().unwrap(),
        );
        assert_eq!(
            Upgrade::from_headers(&w),
            Some(Upgrade::WebSocket {
                key: "k".into(),
                protocols: vec!["v5.channel.k8s.io".into(), "v4.channel.k8s.io".into()]
            })
        );
        assert_eq!(Upgrade::from_headers(&HeaderMap::new()), None);
    }
}
