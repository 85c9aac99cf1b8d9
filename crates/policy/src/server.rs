//! The first-packet guarantee, the agent's half ([`cni::policy`] is the plugin's): a
//! Unix socket where the CNI plugin, during ADD, says which addresses a new pod got and
//! waits until the pod's policies are in the kernel. The controller answers once the
//! pod is known from the API (with those addresses, before its status says them) and a
//! sync including it has been applied.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use cni::capture::Capture;
use cni::policy::{Answer, Ask};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

/// One plugin's question, handed to the controller.
#[derive(Debug)]
pub struct Request {
    /// The pod, `namespace/name`.
    pub key: String,
    /// The addresses ADD gave it.
    pub ips: Vec<IpAddr>,
    /// Where the controller answers: `Ok` once the policies are in force, with how
    /// the pod's traffic is captured if it is meshed.
    pub reply: oneshot::Sender<Result<Option<Capture>, String>>,
}

/// The longest question read; a plugin's is a few hundred bytes.
const MAX_ASK: u64 = 4096;

/// Binds the socket at `path` (its directory made, a socket left by an earlier agent
/// replaced), readable and writable by root only.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts plugins' questions until the controller goes away.
pub async fn serve(listener: UnixListener, requests: mpsc::Sender<Request>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let requests = requests.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, requests).await {
                        debug!(error = %e, "a CNI plugin's question");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting on the network policy socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        if requests.is_closed() {
            return;
        }
    }
}

async fn answer(stream: UnixStream, requests: mpsc::Sender<Request>) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        BufReader::new(read.take(MAX_ASK)).read_line(&mut line),
    )
    .await;
    let result = match read {
        Err(_) => Err("no question within 5s".to_owned()),
        Ok(Err(e)) => Err(format!("reading the question: {e}")),
        Ok(Ok(_)) => match serde_json::from_str::<Ask>(&line) {
            Err(e) => Err(format!("{line:?} is not a question: {e}")),
            Ok(ask) => ask_controller(ask, &requests).await,
        },
    };
    let answer = match result {
        Ok(capture) => Answer {
            ok: true,
            error: String::new(),
            capture,
        },
        Err(error) => Answer {
            ok: false,
            error,
            capture: None,
        },
    };
    let mut text = serde_json::to_string(&answer).map_err(io::Error::other)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

async fn ask_controller(
    ask: Ask,
    requests: &mpsc::Sender<Request>,
) -> Result<Option<Capture>, String> {
    let (reply, answer) = oneshot::channel();
    let request = Request {
        key: format!("{}/{}", ask.namespace, ask.name),
        ips: ask.ips,
        reply,
    };
    requests
        .send(request)
        .await
        .map_err(|_| "the agent's network policy is stopping".to_owned())?;
    answer
        .await
        .map_err(|_| "the agent's network policy is stopping".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plugin's client against this server, with a controller that answers from a
    /// script: a good question is handed over and its answer returned; a malformed
    /// one is refused with a message naming it.
    #[tokio::test]
    async fn plugin_and_agent_speak_the_same_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/policy.sock");
        let listener = listen(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        tokio::spawn(serve(listener, tx));
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                let answer = if r.key == "x/a" && r.ips == ["10.244.0.7".parse::<IpAddr>().unwrap()]
                {
                    Ok(None)
                } else {
                    Err(format!("no pod {}", r.key))
                };
                let _ = r.reply.send(answer);
            }
        });
        let ask = |name: &str| Ask {
            namespace: "x".into(),
            name: name.into(),
            ips: vec!["10.244.0.7".parse().unwrap()],
        };
        cni::policy::wait_in_force(&path, &ask("a")).await.unwrap();
        let e = cni::policy::wait_in_force(&path, &ask("b"))
            .await
            .unwrap_err();
        assert_eq!(e.code, cni::spec::code::TRY_AGAIN_LATER);
        assert_eq!(e.msg, "network policy for pod x/b is not in force");
        assert_eq!(e.details, "no pod x/b");

        let mut raw = UnixStream::connect(&path).await.unwrap();
        raw.write_all(b"{\"namespace\": 7}\n").await.unwrap();
        let mut line = String::new();
        BufReader::new(raw).read_line(&mut line).await.unwrap();
        let answer: Answer = serde_json::from_str(&line).unwrap();
        assert!(!answer.ok);
        assert!(
            answer.error.contains("is not a question"),
            "{}",
            answer.error
        );

        // A stale socket of an earlier agent is replaced.
        drop(listen(&path).unwrap());
        assert!(listen(&path).is_ok());
    }
}
