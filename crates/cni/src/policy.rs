//! The first-packet guarantee of network policy, the plugin's half: before ADD returns
//! (so before the runtime starts the pod's containers), the plugin tells the node's
//! agent which addresses the pod got and waits until the agent says the policies that
//! select the pod are in the kernel. A pod is never able to send, nor reachable, before
//! them.
//!
//! The agent listens on a Unix socket whose path it writes into the conflist
//! (`policySocket`); one request per connection, one JSON line each way: [`Ask`], then
//! [`Answer`]. Without `policySocket` (policy turned off), or for an invocation that
//! names no Kubernetes pod (`K8S_POD_NAMESPACE`, `K8S_POD_NAME` in `CNI_ARGS`), nothing
//! is asked.
//!
//! The answer also says whether the pod is meshed, and how its traffic is captured
//! ([`crate::capture`]): the agent knows the pod's spec, the plugin does not.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::spec::{CniError, code};

/// How long ADD waits for the agent: it answers once it has seen the pod in the API
/// and applied its policies, normally within milliseconds.
pub const WAIT: Duration = Duration::from_secs(30);

/// What the plugin tells the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ask {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The addresses ADD gave it.
    pub ips: Vec<IpAddr>,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the pod's policies are in force.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The pod is meshed: its traffic goes through its proxy so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::capture::Capture>,
}

/// Asks the agent at `socket` to put `ask`'s pod's policies in force, and waits (at
/// most [`WAIT`]); answers how the pod's traffic is captured if it is meshed. Any
/// failure is "try again later": the runtime retries the sandbox.
pub async fn wait_in_force(
    socket: &Path,
    ask: &Ask,
) -> Result<Option<crate::capture::Capture>, CniError> {
    let what = format!("network policy for pod {}/{}", ask.namespace, ask.name);
    let fail = |details: String| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("{what} is not in force"),
            details,
        )
    };
    let exchange = async {
        let mut stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connecting to the agent at {}: {e}", socket.display()))?;
        let mut line = serde_json::to_string(ask).map_err(|e| e.to_string())?;
        line.push('\n');
        stream
            .write_all(line.as_bytes())
            .await
            .map_err(|e| format!("asking the agent: {e}"))?;
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .await
            .map_err(|e| format!("reading the agent's answer: {e}"))?;
        let answer: Answer = serde_json::from_str(&answer)
            .map_err(|e| format!("the agent's answer {answer:?} is not an answer: {e}"))?;
        if answer.ok {
            Ok(answer.capture)
        } else {
            Err(answer.error)
        }
    };
    match tokio::time::timeout(WAIT, exchange).await {
        Ok(Ok(capture)) => Ok(capture),
        Ok(Err(e)) => Err(fail(e)),
        Err(_) => Err(fail(format!("the agent did not answer within {WAIT:?}"))),
    }
}
