//! Authentication: who a request comes from. On a TLS connection a client certificate
//! signed by the cluster CA names the user, else a bearer token does (the admin token
//! or a ServiceAccount token); in-process requests (the [`crate::Router`]) are the admin.

use http::HeaderMap;

use super::State;

/// Who a request comes from (set by the TLS listener; in-process requests are the admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) groups: Vec<String>,
}

impl User {
    pub(crate) fn admin() -> User {
        User {
            name: "kubewire-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    /// A request without credentials (served only on the public paths).
    pub(crate) fn anonymous() -> User {
        User {
            name: "system:anonymous".into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    pub(crate) fn service_account(ns: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// The subject's common name and organizations of an X.509 certificate (DER). The
    /// issuer's names come first in the certificate, so the last common name is the
    /// subject's; this CA has no organization.
    pub(crate) fn from_certificate(der: &[u8]) -> User {
        let strings = |oid_last: u8| -> Vec<String> {
            let oid = [0x06, 0x03, 0x55, 0x04, oid_last];
            let mut out = Vec::new();
            let mut i = 0;
            while i + oid.len() + 2 <= der.len() {
                if der[i..i + oid.len()] == oid {
                    let at = i + oid.len();
                    let len = usize::from(der[at + 1]);
                    if len < 0x80
                        && let Some(v) = der.get(at + 2..at + 2 + len)
                    {
                        out.push(String::from_utf8_lossy(v).into_owned());
                    }
                    i = at;
                }
                i += 1;
            }
            out
        };
        let mut groups = strings(0x0a);
        groups.push("system:authenticated".into());
        User {
            name: strings(0x03).pop().unwrap_or_default(),
            groups,
        }
    }
}

/// The user a request was authenticated as by the listener; in-process requests carry
/// none and are the admin.
pub(super) fn request_user(extensions: &http::Extensions) -> User {
    extensions
        .get::<User>()
        .cloned()
        .unwrap_or_else(User::admin)
}

/// The token of an `Authorization: Bearer TOKEN` header.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Who a request on a TLS connection is: the client certificate's user if the
/// connection presented one, else the bearer token's (the admin token, or a valid
/// ServiceAccount token), else nobody.
pub(crate) fn authenticate(
    state: &State,
    cert_user: Option<&User>,
    bearer: Option<&str>,
    admin_token: &str,
) -> Option<User> {
    if let Some(u) = cert_user {
        return Some(u.clone());
    }
    let t = bearer?;
    if t == admin_token {
        return Some(User::admin());
    }
    let sa = state
        .signer
        .authenticate(&state.store, t, crate::util::now_secs())?;
    Some(User::service_account(&sa.namespace, &sa.name))
}

/// Paths served without credentials (and then authorized for `system:anonymous`, as
/// kube-apiserver's `system:public-info-viewer` allows).
pub(crate) fn is_public(path: &str) -> bool {
    matches!(path, "/version" | "/healthz" | "/livez" | "/readyz")
        || ["/healthz/", "/livez/", "/readyz/"]
            .iter()
            .any(|p| path.starts_with(p))
}
