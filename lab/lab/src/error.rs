/// What went wrong with the lab, in words that tell the user what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `lab up` when that lab is already up (or half up after a crash).
    #[error("lab {name:?} is already up ({what}); run `kubewire lab down --name {name}` first")]
    AlreadyUp { name: String, what: String },
    /// A command that needs a running lab found none.
    #[error("lab {0:?} is not up; start it with `kubewire lab up`")]
    NotUp(String),
    /// The configuration cannot describe a lab.
    #[error("invalid lab configuration: {0}")]
    InvalidConfig(String),
    /// `lab exec` was given a target that is not in this lab.
    #[error("no target {target:?} in lab {lab:?}; targets are: {known}")]
    UnknownTarget {
        lab: String,
        target: String,
        known: String,
    },
    /// A component of the lab (API server, controllers, a node) failed to start or answer.
    #[error("{0}")]
    Component(String),
    /// The kernel refused something.
    #[error(transparent)]
    Kernel(#[from] netlink::Error),
    /// The lab's API server could not be reached with its kubeconfig.
    #[error(transparent)]
    Client(#[from] k8s::Error),
    /// Reading or writing the lab's state failed.
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        cause: std::io::Error,
    },
    /// Teardown keeps going past failures and reports them all at the end.
    #[error("lab teardown left {} problem(s): {}", .0.len(), .0.iter().map(|e| k8s::ErrorChain(e).to_string()).collect::<Vec<_>>().join("; "))]
    Teardown(Vec<Error>),
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            op: op.into(),
            cause: source,
        }
    }
}
