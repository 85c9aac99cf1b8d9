//! What every kubewire daemon needs to talk to Kubernetes, written once, so that the
//! agent, DNS, the lab's node and controllers (and each component still to come) start,
//! find their cluster, watch it and stop the same way:
//!
//! - [`ClientArgs`]: `--kubeconfig` / `--server` and the client built from them
//!   (a kubeconfig file, `KUBECONFIG`, `~/.kube/config`, or the pod's service account);
//! - [`Mirror`] and [`watch`]: a kind's objects kept in a component's own [`Store`],
//!   in the slim form it reads, through kube-rs's watcher with streaming lists (and
//!   paged lists where the API server refuses those), re-lists included;
//! - [`Shutdown`]: SIGINT and SIGTERM;
//! - [`duration`]: Go's duration syntax (`30s`, `1m30s`, `500ms`), as Kubernetes flags
//!   write it;
//! - [`http`]: the small HTTP endpoints that kubelet probes, Prometheus and load
//!   balancers ask (`/healthz`, `/metrics`, `healthCheckNodePort`).

pub mod client;
pub mod duration;
pub mod http;
pub mod mirror;
pub mod shutdown;

pub use client::{ClientArgs, client_from_kubeconfig};
pub use duration::parse_duration;
pub use mirror::{Mirror, ObjectKey, Store, object_key, watch};
pub use shutdown::Shutdown;

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
    /// Neither a kubeconfig (`KUBECONFIG`, `~/.kube/config`) nor a pod's service
    /// account was found.
    #[error("no cluster to talk to: pass --kubeconfig, set KUBECONFIG, or run in a pod")]
    Infer(#[source] kube::config::InferConfigError),
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
