//! Errors. Every refusal the client should see is a [`Status`] (the Kubernetes `Status`
//! object, with kube-apiserver's reason and message); the other variants are the
//! server's own failures and become 500s.

use std::path::PathBuf;

use serde_json::{Value, json};

/// What a boxed cause is (errors of several crates' types share a variant).
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failure of the API server. Each variant's message names what was being done; the
/// cause, where there is one, is its [`source`](std::error::Error::source) (printed
/// after it by `{:#}` in anyhow, or by [`k8s::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is refused; the client gets this `Status` with its HTTP code.
    /// Not retryable as is (except 409 Conflict after a fresh read, and 410 by re-listing).
    #[error("{}", .0.message)]
    Status(Box<Status>),
    /// The embedded database failed; the request may be retried, the data dir may need care.
    #[error("storage")]
    Storage(#[source] Box<redb::Error>),
    /// The database holds something this server did not write (a damaged data dir).
    #[error("corrupt {what}")]
    Corrupt {
        /// What does not decode: `object`, `event 42: type "X"`.
        what: String,
        /// Why, when JSON decoding said.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// An object could not be encoded for storage.
    #[error("encoding an object")]
    Encode(#[source] serde_json::Error),
    /// A write was committed but the flusher did not make it durable in time: it is
    /// visible, but may not survive a crash. Retrying the request is safe.
    #[error("resourceVersion {rv} was committed but not made durable")]
    NotDurable {
        /// The write's resourceVersion.
        rv: u64,
    },
    /// The thread running storage work for a request failed (panicked).
    #[error("storage task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The server's own bookkeeping is inconsistent (a bug); there is no cause to carry.
    #[error("{0}")]
    Internal(String),
    /// A file in the data dir could not be read or written.
    #[error("{}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Making or loading the CA, certificates or keys failed.
    #[error("{context}")]
    Tls {
        /// What was being made or loaded.
        context: &'static str,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// A key file in the data dir is too short to be one this server made.
    #[error("{}: key too short", path.display())]
    KeyTooShort {
        /// The file.
        path: PathBuf,
    },
    /// The system's random number generator failed (ring says no more than that).
    #[error("no randomness for {0}")]
    NoRandomness(&'static str),
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("handling SIGTERM")]
    Signals(#[source] std::io::Error),
    /// A listen address could not be bound.
    #[error("listen on {addr}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The `Status` a client sees for this error.
    pub fn to_status(&self) -> Status {
        match self {
            Error::Status(s) => (**s).clone(),
            other => Status::new(
                500,
                "InternalError",
                format!("Internal error occurred: {}", k8s::ErrorChain(other)),
            ),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`Error::Tls`] maker for `map_err`: `.map_err(Error::tls("making the CA key"))`.
    pub(crate) fn tls<E>(context: &'static str) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| Error::Tls {
            context,
            source: Box::new(e),
        }
    }
}

impl From<Status> for Error {
    fn from(s: Status) -> Error {
        Error::Status(Box::new(s))
    }
}

impl From<tokio::task::JoinError> for Error {
    fn from(e: tokio::task::JoinError) -> Error {
        Error::Task(e)
    }
}

pub(crate) fn storage<E: Into<redb::Error>>(e: E) -> Error {
    Error::Storage(Box::new(e.into()))
}

/// The Kubernetes `Status` object that carries a refusal.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason (`NotFound`, `AlreadyExists`, `Invalid`, ...).
    pub reason: String,
    /// Human-readable message, as kube-apiserver words it.
    pub message: String,
    /// `details` (name, group, kind, causes), when there are any.
    pub details: Option<Value>,
}

/// One field error of a 422 Invalid: `spec.ports[0].port: Invalid value: 70000: ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, `FieldValueDuplicate`, ...
    pub reason: &'static str,
    /// Path of the field: `spec.ports[0].port`.
    pub field: String,
    /// The message without the field: `Invalid value: 70000: must be between 1 and 65535, inclusive`.
    pub message: String,
}

impl Cause {
    pub(crate) fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Cause {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: {}: {detail}", go_value(value)),
        }
    }
    pub(crate) fn required(field: impl Into<String>, detail: &str) -> Cause {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message,
        }
    }
    pub(crate) fn not_supported(
        field: impl Into<String>,
        value: &Value,
        allowed: &[&str],
    ) -> Cause {
        let allowed: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                go_value(value),
                allowed.join(", ")
            ),
        }
    }
    pub(crate) fn too_long(field: impl Into<String>, max: u64) -> Cause {
        Cause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: may not be more than {max} bytes"),
        }
    }
    pub(crate) fn too_many(field: impl Into<String>, n: usize, max: u64) -> Cause {
        Cause {
            reason: "FieldValueTooMany",
            field: field.into(),
            message: format!("Too many: {n}: must have at most {max} items"),
        }
    }
    pub(crate) fn forbidden(field: impl Into<String>, detail: &str) -> Cause {
        let field = field.into();
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
            field,
        }
    }
    pub(crate) fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
        Cause {
            reason: "FieldValueDuplicate",
            field: field.into(),
            message: format!("Duplicate value: {}", go_value(value)),
        }
    }
}

/// How kube-apiserver prints a value in a field error: strings quoted, numbers bare,
/// string lists as Go's `%#v` prints them (`[]string{"10.96.0.10"}`).
fn go_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) if a.iter().all(Value::is_string) => {
            let items: Vec<String> = a.iter().map(go_value).collect();
            format!("[]string{{{}}}", items.join(", "))
        }
        other => other.to_string(),
    }
}

impl Status {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Status {
        Status {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Status {
        let mut d = json!({ "name": name, "kind": kind });
        if !group.is_empty() {
            d["group"] = json!(group);
        }
        self.details = Some(d);
        self
    }

    /// `pods "web" not found`.
    pub(crate) fn not_found(group: &str, resource: &str, name: &str) -> Status {
        Status::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    /// `pods "web" already exists`.
    pub(crate) fn already_exists(group: &str, resource: &str, name: &str) -> Status {
        Status::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", qualified(group, resource)),
        )
        .with_details(group, resource, name)
    }

    /// 409 Conflict with the reason kube-apiserver gives:
    /// `Operation cannot be fulfilled on pods/binding "web": pod web is already assigned ...`.
    pub(crate) fn conflict_because(resource: &str, name: &str, why: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} \"{name}\": {why}"),
        )
        .with_details("", resource, name)
    }

    /// Stale resourceVersion on update.
    pub(crate) fn conflict(group: &str, resource: &str, name: &str) -> Status {
        Status::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                qualified(group, resource)
            ),
        )
        .with_details(group, resource, name)
    }

    /// 422 Invalid: `Service "web" is invalid: spec.ports[0].port: Invalid value: ...`;
    /// kinds of a named group are qualified as kube-apiserver qualifies them
    /// (`NetworkPolicy.networking.k8s.io "np" is invalid: ...`).
    pub(crate) fn invalid(group: &str, kind: &str, name: &str, causes: &[Cause]) -> Status {
        let parts: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let joined = if parts.len() == 1 {
            parts[0].clone()
        } else {
            format!("[{}]", parts.join(", "))
        };
        let mut s = Status::new(
            422,
            "Invalid",
            if group.is_empty() {
                format!("{kind} \"{name}\" is invalid: {joined}")
            } else {
                format!("{kind}.{group} \"{name}\" is invalid: {joined}")
            },
        )
        .with_details(group, kind, name);
        if let Some(d) = s.details.as_mut() {
            d["causes"] = causes
                .iter()
                .map(|c| json!({ "reason": c.reason, "message": c.message, "field": c.field }))
                .collect();
        }
        s
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Status {
        Status::new(400, "BadRequest", message)
    }

    pub(crate) fn unauthorized() -> Status {
        Status::new(401, "Unauthorized", "Unauthorized")
    }

    pub(crate) fn not_found_path() -> Status {
        Status::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details("", "", "")
        .without_empty_details()
    }

    fn without_empty_details(mut self) -> Status {
        self.details = Some(json!({}));
        self
    }

    pub(crate) fn method_not_allowed(method: &str) -> Status {
        Status::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        )
    }

    pub(crate) fn unsupported_media_type(ct: &str) -> Status {
        Status::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {ct:?})"
            ),
        )
    }

    pub(crate) fn too_large() -> Status {
        Status::new(
            413,
            "RequestEntityTooLarge",
            "Request entity too large: limit is 3145728",
        )
    }

    /// A watch from a resourceVersion the event log no longer holds.
    pub(crate) fn expired(requested: u64, oldest: u64) -> Status {
        Status::new(
            410,
            "Expired",
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The JSON a client reads.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_sources_printed_once() {
        let e = Error::io(
            "/data/ca.key",
            std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied"),
        );
        assert_eq!(e.to_string(), "/data/ca.key");
        assert_eq!(
            k8s::ErrorChain(&e).to_string(),
            "/data/ca.key: permission denied"
        );
        assert_eq!(
            e.to_status().message,
            "Internal error occurred: /data/ca.key: permission denied"
        );
        let e = Error::Corrupt {
            what: "object".into(),
            source: serde_json::from_slice::<Value>(b"{").err(),
        };
        assert!(
            k8s::ErrorChain(&e)
                .to_string()
                .starts_with("corrupt object: EOF"),
            "{}",
            k8s::ErrorChain(&e)
        );
        // A refusal is the client's answer as is.
        let e = Error::from(Status::bad_request("no"));
        assert_eq!(e.to_status(), Status::bad_request("no"));
        assert!(std::error::Error::source(&e).is_none());
    }
}
