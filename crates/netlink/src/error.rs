use std::io;

/// What went wrong while talking to the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A namespace name that `ip netns` could not hold (empty, `/`, `.` or `..`, too long).
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidNetnsName { name: String, reason: &'static str },
    /// The namespace already exists; creating it again would share it by accident.
    #[error("network namespace {0:?} already exists")]
    NetnsExists(String),
    /// No namespace of that name under /run/netns.
    #[error("network namespace {0:?} does not exist")]
    NetnsNotFound(String),
    /// A system call failed; `op` names what we were doing.
    #[error("{op}")]
    Sys {
        op: String,
        #[source]
        cause: io::Error,
    },
    /// The kernel refused a netlink request; `op` names the request.
    #[error("{op}")]
    Netlink {
        op: String,
        #[source]
        cause: rtnetlink::Error,
    },
    /// A sysctl outside `net.*`: those are not per namespace, so setting one would
    /// change the host.
    #[error("sysctl {0}: only net.* sysctls are per namespace; refusing to change the host")]
    HostSysctl(String),
    /// A link we needed is not there.
    #[error("link {0:?} not found")]
    LinkNotFound(String),
    /// nf_tables refused a batch, so none of it was applied. `op` names the first
    /// message refused, in nft's words (`add rule ip kubewire nat-postrouting`); `errno`
    /// is the kernel's answer and `detail` its extended-ack text, if it gave one.
    #[error("{op}: {}", nft_reason(*errno, detail.as_deref()))]
    Nft {
        op: String,
        errno: i32,
        detail: Option<String>,
    },
    /// A batch that cannot be encoded (an element of the wrong type, an attribute over
    /// netlink's 64 KiB): a bug in the caller. Nothing was sent.
    #[error("{op}: {reason}")]
    NftInvalid { op: String, reason: String },
}

/// The errno's text without io::Error's "(os error N)" suffix, plus the kernel's detail.
fn nft_reason(errno: i32, detail: Option<&str>) -> String {
    let text = io::Error::from_raw_os_error(errno).to_string();
    let text = match text.rfind(" (os error") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    };
    match detail {
        Some(d) if !d.is_empty() => format!("{text} ({d})"),
        _ => text,
    }
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn sys(op: impl Into<String>, source: impl Into<io::Error>) -> Self {
        Error::Sys {
            op: op.into(),
            cause: source.into(),
        }
    }

    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            op: op.into(),
            cause: source,
        }
    }

    /// True when what was asked for is not there: a missing namespace or link, or the
    /// kernel's "no such file or directory" (ENOENT) or "no such device" (ENODEV). For
    /// a delete: the thing is already gone.
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::NetnsNotFound(_) | Error::LinkNotFound(_) => true,
            Error::Sys { cause, .. } => cause.kind() == io::ErrorKind::NotFound,
            Error::Nft { errno, .. } => {
                matches!(*errno, libc_enoent::ENOENT | libc_enoent::ENODEV)
            }
            Error::Netlink {
                cause: rtnetlink::Error::NetlinkError(e),
                ..
            } => {
                matches!(
                    e.raw_code().abs(),
                    libc_enoent::ENOENT | libc_enoent::ENODEV
                )
            }
            _ => false,
        }
    }

    /// True when the kernel answered EEXIST.
    pub fn is_exists(&self) -> bool {
        match self {
            Error::NetnsExists(_) => true,
            Error::Netlink {
                cause: rtnetlink::Error::NetlinkError(e),
                ..
            } => e.raw_code().abs() == libc_enoent::EEXIST,
            Error::Nft { errno, .. } => *errno == libc_enoent::EEXIST,
            _ => false,
        }
    }
}

/// The few errno values we branch on, without pulling in `libc` for three numbers.
mod libc_enoent {
    pub(super) const ENOENT: i32 = 2;
    pub(super) const EEXIST: i32 = 17;
    pub(super) const ENODEV: i32 = 19;
}
