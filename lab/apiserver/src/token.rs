//! ServiceAccount tokens (TokenRequest, `authentication.k8s.io/v1`): JWTs signed with
//! HMAC-SHA256 under a key kept in the data dir (`sa.key`, made on first start), so
//! tokens stay valid across restarts. kube-apiserver signs with RS256 and a key pair
//! because others verify its tokens (OIDC discovery); here only this server verifies
//! them, and a symmetric key is enough. A token authenticates as
//! `system:serviceaccount:NS:NAME` while it is unexpired, names this server's audience
//! and its ServiceAccount (and bound pod, if any) still exists with the same uid.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use serde_json::{Value, json};

use crate::error::{Cause, Error, Status};
use crate::resources;
use crate::store::Store;
use crate::util::{rfc3339, str_at};

/// kube-apiserver's default issuer and API audience.
pub(crate) const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// TokenRequest's default lifetime (`expirationSeconds`).
const DEFAULT_EXPIRATION: i64 = 3600;
/// The shortest lifetime kube-apiserver accepts.
const MIN_EXPIRATION: i64 = 600;

/// Signs and verifies service-account tokens.
pub(crate) struct Signer {
    key: hmac::Key,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer")
    }
}

/// Who a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceAccountUser {
    pub(crate) namespace: String,
    pub(crate) name: String,
}

/// What a verified token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    pub(crate) user: ServiceAccountUser,
    /// The ServiceAccount's uid.
    pub(crate) uid: String,
    /// The pod it is bound to: name and uid.
    pub(crate) pod: Option<(String, String)>,
    /// Those of the asked audiences the token names.
    pub(crate) audiences: Vec<String>,
    /// The token's `jti`, if it has one.
    pub(crate) id: Option<String>,
}

impl ServiceAccountUser {
    /// `system:serviceaccount:NS:NAME`.
    pub(crate) fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

impl Signer {
    /// The key from `DIR/sa.key`, made (32 random bytes, hex) on first use.
    pub(crate) fn load_or_create(dir: &Path) -> Result<Signer, Error> {
        let path = dir.join("sa.key");
        let secret = match std::fs::read_to_string(&path) {
            Ok(s) if s.trim().len() >= 64 => s.trim().to_string(),
            Ok(_) => return Err(Error::KeyTooShort { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
                    .map_err(|_| Error::NoRandomness("sa.key"))?;
                let s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                crate::tls::write_atomic(&path, s.as_bytes(), true)?;
                s
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok(Signer {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
        })
    }

    fn sign(&self, claims: &Value) -> String {
        let header = b64url(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = b64url(&serde_json::to_vec(claims).unwrap_or_default());
        let input = format!("{header}.{payload}");
        let tag = hmac::sign(&self.key, input.as_bytes());
        format!("{input}.{}", b64url(tag.as_ref()))
    }

    /// The claims of a token this key signed, or `None` (bad shape or signature).
    fn claims(&self, token: &str) -> Option<Value> {
        let (input, sig) = token.rsplit_once('.')?;
        let (_, payload) = input.split_once('.')?;
        hmac::verify(&self.key, input.as_bytes(), &b64url_decode(sig)?).ok()?;
        serde_json::from_slice(&b64url_decode(payload)?).ok()
    }

    /// Authenticates a bearer token to this server (its own audience) at time `now`.
    pub(crate) fn authenticate(
        &self,
        store: &Store,
        token: &str,
        now: i64,
    ) -> Option<ServiceAccountUser> {
        self.verify(store, token, &[ISSUER.to_string()], now)
            .ok()
            .map(|v| v.user)
    }

    /// Checks a token for one of `audiences` at time `now`: signed here, unexpired,
    /// naming one of them, its ServiceAccount (and bound pod) still there with the same
    /// uid. Why not, in kube-apiserver's words, when it fails.
    pub(crate) fn verify(
        &self,
        store: &Store,
        token: &str,
        audiences: &[String],
        now: i64,
    ) -> Result<Verified, &'static str> {
        const INVALID: &str = "invalid bearer token";
        let c = self.claims(token).ok_or(INVALID)?;
        let exp = c["exp"].as_i64().ok_or(INVALID)?;
        if now >= exp || c["nbf"].as_i64().is_some_and(|nbf| now < nbf) {
            return Err("invalid bearer token, token has expired");
        }
        if c["iss"].as_str() != Some(ISSUER) {
            return Err(INVALID);
        }
        let matched: Vec<String> = c["aud"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|a| audiences.iter().any(|w| w == a))
            .map(str::to_string)
            .collect();
        if matched.is_empty() {
            return Err("invalid bearer token, token audiences don't match");
        }
        let invalidated = "invalid bearer token, token has been invalidated";
        let k = &c["kubernetes.io"];
        let ns = k["namespace"].as_str().ok_or(INVALID)?;
        let name = k["serviceaccount"]["name"].as_str().ok_or(INVALID)?;
        let uid = k["serviceaccount"]["uid"].as_str().ok_or(INVALID)?;
        let sa_rt = resources::lookup("", "v1", "serviceaccounts").ok_or(INVALID)?;
        let sa = store
            .get(&sa_rt.key(ns, name))
            .ok()
            .flatten()
            .ok_or(invalidated)?;
        if str_at(&sa, "metadata.uid") != Some(uid)
            || sa["metadata"]["deletionTimestamp"].is_string()
        {
            return Err(invalidated);
        }
        let mut pod = None;
        if let Some(pod_uid) = k["pod"]["uid"].as_str() {
            let pod_name = k["pod"]["name"].as_str().ok_or(INVALID)?;
            let pod_rt = resources::lookup("", "v1", "pods").ok_or(INVALID)?;
            let stored = store
                .get(&pod_rt.key(ns, pod_name))
                .ok()
                .flatten()
                .ok_or(invalidated)?;
            if str_at(&stored, "metadata.uid") != Some(pod_uid) {
                return Err(invalidated);
            }
            pod = Some((pod_name.to_string(), pod_uid.to_string()));
        }
        Ok(Verified {
            user: ServiceAccountUser {
                namespace: ns.to_string(),
                name: name.to_string(),
            },
            uid: uid.to_string(),
            pod,
            audiences: matched,
            id: c["jti"].as_str().map(str::to_string),
        })
    }

    /// Answers a TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`):
    /// whether `spec.token` is valid for `spec.audiences` (default: this server's), and
    /// for whom, as kube-apiserver answers it: the ServiceAccount user, its groups, and
    /// in `extra` the bound pod and the token's id.
    pub(crate) fn token_review(
        &self,
        store: &Store,
        review: &Value,
        now: i64,
    ) -> Result<Value, Error> {
        if let Some(kind) = review["kind"]
            .as_str()
            .filter(|k| !k.is_empty() && *k != "TokenReview")
        {
            return Err(Status::bad_request(format!(
                "the kind in the request body ({kind}) does not match TokenReview"
            ))
            .into());
        }
        let spec = &review["spec"];
        let token = spec["token"].as_str().unwrap_or("");
        if token.is_empty() {
            return Err(
                Status::bad_request("token is required for TokenReview in authentication").into(),
            );
        }
        let asked: Vec<String> = spec["audiences"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        let audiences = if asked.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            asked
        };
        let status = match self.verify(store, token, &audiences, now) {
            Ok(v) => {
                let ns = &v.user.namespace;
                let mut extra = serde_json::Map::new();
                if let Some((name, uid)) = &v.pod {
                    extra.insert(
                        "authentication.kubernetes.io/pod-name".into(),
                        json!([name]),
                    );
                    extra.insert("authentication.kubernetes.io/pod-uid".into(), json!([uid]));
                }
                if let Some(id) = &v.id {
                    extra.insert(
                        "authentication.kubernetes.io/credential-id".into(),
                        json!([format!("JTI={id}")]),
                    );
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": v.user.username(),
                        "uid": v.uid,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}"), "system:authenticated"],
                        "extra": extra,
                    },
                    "audiences": v.audiences,
                })
            }
            Err(why) => json!({"user": {}, "error": format!("[{why}]")}),
        };
        let mut out_spec = spec.clone();
        if let Some(o) = out_spec.as_object_mut() {
            // The token is not echoed back.
            o.remove("token");
        }
        Ok(json!({
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": null},
            "spec": out_spec,
            "status": status,
        }))
    }

    /// Serves `POST .../serviceaccounts/NAME/token`: `request` is the TokenRequest body,
    /// `sa` the ServiceAccount, `pod` the bound pod when `boundObjectRef` names one.
    /// Returns the TokenRequest with `status.token`.
    pub(crate) fn token_request(
        &self,
        request: &Value,
        sa: &Value,
        pod: Option<&Value>,
        now: i64,
    ) -> Result<Value, Error> {
        let ns = str_at(sa, "metadata.namespace").unwrap_or("");
        let name = str_at(sa, "metadata.name").unwrap_or("");
        let spec = &request["spec"];
        let expiration = match &spec["expirationSeconds"] {
            Value::Null => DEFAULT_EXPIRATION,
            v => v.as_i64().unwrap_or(-1),
        };
        let mut causes = Vec::new();
        if expiration < MIN_EXPIRATION {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                &spec["expirationSeconds"],
                "may not specify a duration less than 10 minutes",
            ));
        } else if expiration > 1 << 32 {
            causes.push(Cause::invalid(
                "spec.expirationSeconds",
                &spec["expirationSeconds"],
                "may not specify a duration larger than 2^32 seconds",
            ));
        }
        let bound = &spec["boundObjectRef"];
        if !bound.is_null() && !matches!(bound["kind"].as_str(), Some("Pod" | "Secret" | "Node")) {
            causes.push(Cause::not_supported(
                "spec.boundObjectRef.kind",
                &bound["kind"],
                &["Pod", "Node", "Secret"],
            ));
        }
        if !causes.is_empty() {
            return Err(
                Status::invalid("authentication.k8s.io", "TokenRequest", name, &causes).into(),
            );
        }
        let audiences = match spec["audiences"].as_array() {
            Some(a) if !a.is_empty() => Value::Array(a.clone()),
            _ => json!([ISSUER]),
        };
        let exp = now + expiration;
        let mut k8s = json!({
            "namespace": ns,
            "serviceaccount": {"name": name, "uid": sa["metadata"]["uid"]},
        });
        if let Some(pod) = pod {
            k8s["pod"] = json!({"name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]});
        }
        let claims = json!({
            "aud": audiences,
            "exp": exp,
            "iat": now,
            "nbf": now,
            "iss": ISSUER,
            "jti": uuid::Uuid::new_v4().to_string(),
            "kubernetes.io": k8s,
            "sub": format!("system:serviceaccount:{ns}:{name}"),
        });
        let mut out_spec = spec.clone();
        if !out_spec.is_object() {
            out_spec = json!({});
        }
        out_spec["audiences"] = audiences;
        out_spec["expirationSeconds"] = json!(expiration);
        Ok(json!({
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": rfc3339(now)},
            "spec": out_spec,
            "status": {"token": self.sign(&claims), "expirationTimestamp": rfc3339(exp)},
        }))
    }
}

/// base64url without padding (JWT's encoding).
fn b64url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes base64url without padding. Only canonical encodings: the unused low bits of
/// the last character must be 0 (the engine's default), or two spellings of one
/// signature would both be accepted.
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trip() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\xfe\x00"] {
            assert_eq!(b64url_decode(&b64url(data)).as_deref(), Some(data));
        }
        assert_eq!(b64url(b"\xfb\xff"), "-_8");
        assert_eq!(b64url(b"hi!"), "aGkh");
        // Padding, the standard alphabet's `+`/`/` and a dangling character are refused.
        assert_eq!(b64url_decode("aGk="), None);
        assert_eq!(b64url_decode("+/8"), None);
        assert_eq!(b64url_decode("aGkhA"), None);
    }

    #[test]
    fn tokens_are_signed_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::load_or_create(dir.path()).unwrap();
        let store = Store::open(&dir.path().join("db"), 10).unwrap();
        let sa_rt = resources::lookup("", "v1", "serviceaccounts").unwrap();
        let sa = json!({"metadata": {"name": "robot", "namespace": "ns1", "uid": "u-1"}});
        store
            .write(|t| {
                t.put(
                    &sa_rt.key("ns1", "robot"),
                    sa.clone(),
                    crate::store::EventType::Added,
                )
            })
            .unwrap();
        let tr = signer
            .token_request(&json!({"spec": {}}), &sa, None, 1000)
            .unwrap();
        let token = tr["status"]["token"].as_str().unwrap();
        assert_eq!(tr["spec"]["expirationSeconds"], json!(3600));
        let user = signer.authenticate(&store, token, 1001).unwrap();
        assert_eq!(user.username(), "system:serviceaccount:ns1:robot");
        // Expired, tampered, or signed by another key: refused.
        assert!(signer.authenticate(&store, token, 1000 + 3600).is_none());
        let mut bad = token.to_string();
        bad.insert(bad.len() - 3, 'A');
        assert!(signer.authenticate(&store, &bad, 1001).is_none());
        // A different spelling of the same signature bytes (unused low bits set).
        let sig = token.rsplit('.').next().unwrap();
        let last = sig.chars().last().unwrap();
        const B64URL: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = B64URL.iter().position(|&c| c as char == last).unwrap();
        let mut respelled = token[..token.len() - 1].to_string();
        respelled.push(B64URL[pos ^ 1] as char);
        assert!(signer.authenticate(&store, &respelled, 1001).is_none());
        let other = Signer::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(other.authenticate(&store, token, 1001).is_none());
        // The same key is read back after a restart.
        let again = Signer::load_or_create(dir.path()).unwrap();
        assert!(again.authenticate(&store, token, 1001).is_some());
        // Too short a lifetime is refused as kube-apiserver words it.
        let e = signer
            .token_request(&json!({"spec": {"expirationSeconds": 60}}), &sa, None, 1000)
            .unwrap_err();
        assert!(
            e.to_status().message.contains("less than 10 minutes"),
            "{e}"
        );
        // Another audience does not authenticate to this server.
        let tr = signer
            .token_request(&json!({"spec": {"audiences": ["vault"]}}), &sa, None, 1000)
            .unwrap();
        let t = tr["status"]["token"].as_str().unwrap();
        assert!(signer.authenticate(&store, t, 1001).is_none());
    }
}
