//! What every kubewire daemon needs to talk to Kubernetes, written once, so that the
//! agent, DNS, the lab's node and controllers (and each component still to come) start,
//! find their cluster, watch it and stop the same way:
//!
//! - [`ClientArgs`]: `--kubeconfig` / `--server` and the client built from them
//!   (a kubeconfig file, `KUBECONFIG`, the pod's service account, or `~/.kube/config`);
//! - [`Mirror`] and [`watch`]: a kind's objects kept in a component's own [`Store`],
//!   in the slim form it reads, through kube-rs's watcher with streaming lists (and
//!   paged lists where the API server refuses those), re-lists included;
//! - [`Shutdown`]: SIGINT and SIGTERM;
//! - [`duration`]: Go's duration syntax (`30s`, `1m30s`, `500ms`), as Kubernetes flags
//!   write it;
//! - [`events`]: Events (core/v1) built and recorded one way;
//! - [`labels`]: label selectors matched as the API server matches them;
//! - [`protocol`]: the transport protocols ports name;
//! - [`http`]: the small HTTP endpoints that kubelet probes, Prometheus and load
//!   balancers ask (`/healthz`, `/metrics`, `healthCheckNodePort`).

pub mod client;
pub mod duration;
pub mod events;
pub mod http;
pub mod labels;
pub mod mirror;
pub mod protocol;
pub mod shutdown;

pub use client::{ClientArgs, client_from_kubeconfig};
pub use duration::parse_duration;
pub use mirror::{Mirror, ObjectKey, Store, object_key, watch};
pub use protocol::Protocol;
pub use shutdown::Shutdown;

/// A daemon's flags parsed from `argv` (flags only, no program name), the rest at
/// clap's defaults: for code that starts a daemon and sets a few of its flags, then
/// passes the whole `Args` on with its `to_args()`. Panics on flags the daemon does
/// not take (a bug in the caller).
pub fn parse_flags<A: clap::Args>(argv: &[&str]) -> A {
    #[derive(clap::Parser)]
    struct Cli<A: clap::Args> {
        #[command(flatten)]
        args: A,
    }
    <Cli<A> as clap::Parser>::parse_from(std::iter::once("kubewire").chain(argv.iter().copied()))
        .args
}

/// An error with its causes, for logs: `a: b: c`, each cause once (what anyhow's
/// `{:#}` prints at the binary's edge). Our errors keep their causes as `source` and do
/// not repeat them in their own message, so a plain `%e` in a log line would drop
/// them; a cause whose text the message already holds (some crates' errors repeat
/// their source) is not printed again.
#[derive(Debug, Clone, Copy)]
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(e) = cause {
            let next = e.to_string();
            if !text.contains(&next) {
                text.push_str(": ");
                text.push_str(&next);
            }
            cause = e.source();
        }
        f.write_str(&text)
    }
}

/// Why a daemon could not reach its cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The kubeconfig file given could not be read or used.
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// `KUBECONFIG` names a kubeconfig that could not be read or used.
    #[error("reading the kubeconfig KUBECONFIG names")]
    KubeconfigEnv(#[source] kube::config::KubeconfigError),
    /// Neither a kubeconfig (`KUBECONFIG`, `~/.kube/config`) nor a pod's service
    /// account was found; the source says why `~/.kube/config` could not be used.
    #[error("no cluster to talk to: pass --kubeconfig, set KUBECONFIG, or run in a pod")]
    NoCluster(#[source] kube::config::KubeconfigError),
    /// `--server` is not a URL.
    #[error("--server {url:?} is not a URL")]
    Server {
        /// What was given.
        url: String,
        /// Why it does not parse.
        #[source]
        source: ::http::uri::InvalidUri,
    },
    /// The client could not be built from the configuration (TLS material, proxy).
    #[error("building the API client")]
    Client(#[source] kube::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_prints_every_cause_once() {
        let io = std::io::Error::other("no such file");
        let e = Error::Kubeconfig {
            path: "/x".into(),
            source: kube::config::KubeconfigError::ReadConfig(io, "/x".into()),
        };
        let text = ErrorChain(&e).to_string();
        assert!(text.starts_with("reading kubeconfig /x: "), "{text}");
        assert_eq!(text.matches("no such file").count(), 1, "{text}");
    }
}
