//! One call of an admission webhook: the AdmissionReview v1 request sent over HTTPS
//! (the server's certificate checked against the webhook's `caBundle`), the answer
//! checked as kube-apiserver checks it, and a mutating webhook's JSON patch applied.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};

use super::config::{Target, Webhook};
use super::rules::Request as Admission;
use crate::error::{Error, Status};
use crate::store::Store;

/// The largest answer read from a webhook.
const MAX_ANSWER_BYTES: usize = 16 << 20;
const REVIEW_API_VERSION: &str = "admission.k8s.io/v1";

/// Why a webhook could not be consulted (its failure policy decides what follows).
#[derive(Debug)]
pub(crate) enum CallError {
    /// The request did not complete: `url` and why, as Go's HTTP client words it.
    Call { url: String, why: String },
    /// The answer is not an AdmissionReview this server can use.
    Answer(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Call { url, why } => {
                write!(f, "failed to call webhook: Post {url:?}: {why}")
            }
            CallError::Answer(why) => write!(f, "received invalid webhook response: {why}"),
        }
    }
}

/// A webhook's answer.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) allowed: bool,
    /// `response.status` of a refusal.
    pub(crate) status: Value,
    /// The decoded JSON patch of a mutating webhook.
    pub(crate) patch: Option<Value>,
    pub(crate) warnings: Vec<String>,
}

impl Answer {
    /// A refusal as the client sees it (kube-apiserver's `ToStatusErr`): the webhook's
    /// code if it is an error code, else 400; its message or reason after the
    /// webhook's name.
    pub(crate) fn verdict(&self, w: &Webhook) -> Result<(), Error> {
        if self.allowed {
            return Ok(());
        }
        let denied = format!("admission webhook {:?} denied the request", w.name);
        let code = self.status["code"]
            .as_u64()
            .and_then(|c| u16::try_from(c).ok())
            .filter(|c| *c >= 400)
            .unwrap_or(400);
        let reason = self.status["reason"].as_str().unwrap_or("");
        let message = match self.status["message"].as_str().filter(|m| !m.is_empty()) {
            Some(m) => format!("{denied}: {m}"),
            None if !reason.is_empty() => format!("{denied}: {reason}"),
            None => format!("{denied} without explanation"),
        };
        let mut st = Status::new(code, reason, message);
        if self.status["details"].is_object() {
            st.details = Some(self.status["details"].clone());
        }
        Err(st.into())
    }
}

/// Reaches webhooks: Services at their cluster IP from `service_netns`, URLs from the
/// server's own namespace.
pub(crate) struct Client {
    service_netns: Option<PathBuf>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Client {
    pub(crate) fn new(service_netns: Option<PathBuf>) -> Client {
        Client {
            service_netns,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// Sends `req` (with `object` and `old`) to the webhook and reads its answer,
    /// all within the webhook's timeout.
    pub(crate) async fn review(
        &self,
        store: &Store,
        w: &Webhook,
        req: &Admission<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<Answer, CallError> {
        let endpoint = self.endpoint(store, w)?;
        let uid = uuid::Uuid::new_v4().to_string();
        let review = review_request(&uid, req, object, old);
        let body = serde_json::to_vec(&review).map_err(|e| CallError::Call {
            url: endpoint.url.clone(),
            why: e.to_string(),
        })?;
        let url = endpoint.url.clone();
        let fail = |why: String| CallError::Call {
            url: url.clone(),
            why,
        };
        let answer = tokio::time::timeout(w.timeout, self.post(w, &endpoint, body))
            .await
            .map_err(|_| {
                fail(format!(
                    "context deadline exceeded (the webhook's timeout is {}s)",
                    w.timeout.as_secs()
                ))
            })?
            .map_err(fail)?;
        parse_answer(&answer, &uid, w)
    }

    /// Where the webhook is: the address to dial, the name its certificate must hold,
    /// the path and query to post to, and the URL as errors show it.
    fn endpoint(&self, store: &Store, w: &Webhook) -> Result<Endpoint, CallError> {
        let query = format!("timeout={}s", w.timeout.as_secs());
        match &w.target {
            Target::Url(url) => {
                let bad = |why: &str| CallError::Call {
                    url: url.clone(),
                    why: why.to_string(),
                };
                let rest = url
                    .strip_prefix("https://")
                    .ok_or_else(|| bad("only https URLs are called"))?;
                let (authority, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                let (host, port) = split_host_port(authority).ok_or_else(|| bad("bad host"))?;
                let ip: IpAddr = match host.parse() {
                    Ok(ip) => ip,
                    Err(_) if host == "localhost" => IpAddr::from([127, 0, 0, 1]),
                    // A name: resolved by the system's resolver, from the server's own
                    // namespace (as kube-apiserver resolves webhook URLs).
                    Err(_) => std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
                        .ok()
                        .and_then(|mut a| a.next())
                        .map(|a| a.ip())
                        .ok_or_else(|| bad(&format!("dial tcp: lookup {host}: no such host")))?,
                };
                let server_name = ServerName::try_from(host.to_string())
                    .map_err(|_| bad("the host is not a valid server name"))?;
                Ok(Endpoint {
                    addr: SocketAddr::new(ip, port),
                    netns: None,
                    server_name,
                    path_and_query: format!("{path}?{query}"),
                    url: format!("{url}?{query}"),
                })
            }
            Target::Service {
                namespace,
                name,
                path,
                port,
            } => {
                let path = if path.is_empty() { "/" } else { path.as_str() };
                let host = format!("{name}.{namespace}.svc");
                let url = format!("https://{host}:{port}{path}?{query}");
                let bad = |why: String| CallError::Call {
                    url: url.clone(),
                    why,
                };
                // kube-apiserver's default resolver: the Service's cluster IP and port.
                // (One redb read: short enough for an async thread.)
                let key = crate::resources::services().key(namespace, name);
                let svc = store
                    .get(&key)
                    .map_err(|e| bad(e.to_string()))?
                    .ok_or_else(|| bad(format!("service \"{name}\" not found")))?;
                let ip = svc["spec"]["clusterIP"]
                    .as_str()
                    .and_then(|ip| ip.parse::<IpAddr>().ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "service \"{namespace}/{name}\" has no cluster IP to call"
                        ))
                    })?;
                let declared = svc["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["port"].as_u64() == Some(u64::from(*port)));
                if !declared {
                    return Err(bad(format!(
                        "service \"{namespace}/{name}\" has no port {port}"
                    )));
                }
                let server_name = ServerName::try_from(host)
                    .map_err(|_| bad("the Service's name is not a valid server name".into()))?;
                Ok(Endpoint {
                    addr: SocketAddr::new(ip, *port),
                    netns: self.service_netns.clone(),
                    server_name,
                    path_and_query: format!("{path}?{query}"),
                    url,
                })
            }
        }
    }

    /// One HTTPS POST of `body`; the answer's bytes.
    async fn post(&self, w: &Webhook, ep: &Endpoint, body: Vec<u8>) -> Result<Bytes, String> {
        let tls = self.tls(w)?;
        let tcp = crate::dial::tcp(ep.netns.as_deref(), ep.addr, w.timeout)
            .await
            .map_err(|e| format!("dial tcp {}: {}", ep.addr, go_dial_error(&e)))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(ep.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %k8s::ErrorChain(&e), "webhook connection ended");
            }
        });
        let host = match &ep.server_name {
            ServerName::DnsName(n) => format!("{}:{}", n.as_ref(), ep.addr.port()),
            _ => ep.addr.to_string(),
        };
        let req = Request::post(&ep.path_and_query)
            .header(header::HOST, host)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "the webhook answered {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            ));
        }
        Ok(bytes)
    }

    /// The TLS client for a webhook: its `caBundle` is the only trust.
    fn tls(&self, w: &Webhook) -> Result<Arc<rustls::ClientConfig>, String> {
        w.tls
            .get_or_init(|| {
                if w.ca_bundle.is_empty() {
                    return Err("x509: no clientConfig.caBundle to verify the webhook's certificate with (this server trusts only the bundle)".into());
                }
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&w.ca_bundle) {
                    let cert = cert.map_err(|e| format!("clientConfig.caBundle: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("clientConfig.caBundle: {e}"))?;
                }
                let cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Ok(Arc::new(cfg))
            })
            .clone()
    }
}

/// A dial error as Go's net package words it (what kube-apiserver's messages show).
fn go_dial_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect: connection refused".into(),
        std::io::ErrorKind::TimedOut => "i/o timeout".into(),
        std::io::ErrorKind::HostUnreachable => "connect: no route to host".into(),
        std::io::ErrorKind::NetworkUnreachable => "connect: network is unreachable".into(),
        _ => e.to_string(),
    }
}

/// Where one call goes.
struct Endpoint {
    addr: SocketAddr,
    netns: Option<PathBuf>,
    server_name: ServerName<'static>,
    path_and_query: String,
    url: String,
}

/// `host:port`, `[v6]:port` or a bare host (port 443).
fn split_host_port(authority: &str) -> Option<(&str, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 443,
            None => return None,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, port.parse().ok()?)),
        None => Some((authority, 443)),
    }
}

/// The AdmissionReview a webhook is sent.
pub(crate) fn review_request(
    uid: &str,
    req: &Admission<'_>,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Value {
    let kind = json!({"group": req.group, "version": req.version, "kind": req.kind});
    let resource = json!({"group": req.group, "version": req.version, "resource": req.resource});
    let mut r = json!({
        "uid": uid,
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "operation": req.operation,
        "userInfo": {"username": req.user.name, "groups": req.user.groups},
        "object": object,
        "oldObject": old,
        "dryRun": req.dry_run,
        "options": req.options,
    });
    for (field, v) in [
        ("subResource", req.subresource),
        ("requestSubResource", req.subresource),
        ("name", req.name),
        ("namespace", req.namespace),
    ] {
        if !v.is_empty() {
            r[field] = json!(v);
        }
    }
    json!({"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "request": r})
}

/// Reads a webhook's answer, checking it as kube-apiserver does: an AdmissionReview
/// v1 whose `response.uid` is the request's; a patch only from a mutating webhook,
/// only as a JSONPatch.
pub(crate) fn parse_answer(bytes: &[u8], uid: &str, w: &Webhook) -> Result<Answer, CallError> {
    let bad = |why: String| CallError::Answer(why);
    let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let (api_version, kind) = (
        v["apiVersion"].as_str().unwrap_or(""),
        v["kind"].as_str().unwrap_or(""),
    );
    if api_version != REVIEW_API_VERSION || kind != "AdmissionReview" {
        return Err(bad(format!(
            "expected webhook response of {REVIEW_API_VERSION}, Kind=AdmissionReview, got {api_version}, Kind={kind}"
        )));
    }
    let r = &v["response"];
    if !r.is_object() {
        return Err(bad("webhook response was absent".into()));
    }
    let got = r["uid"].as_str().unwrap_or("");
    if got != uid {
        return Err(bad(format!("expected response.uid={uid:?}, got {got:?}")));
    }
    let patch = match r["patch"].as_str().filter(|p| !p.is_empty()) {
        None => None,
        Some(_) if !w.mutating => {
            return Err(bad(
                "a validating webhook may not return response.patch".into()
            ));
        }
        Some(p) => {
            match r["patchType"].as_str() {
                Some("JSONPatch") => {}
                None => {
                    return Err(bad(
                        "webhook returned response.patch but not response.patchType".into(),
                    ));
                }
                Some(t) => {
                    return Err(bad(format!(
                        "webhook returned invalid response.patchType of {t:?}"
                    )));
                }
            }
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| bad(format!("response.patch is not base64: {e}")))?;
            let patch: Value = serde_json::from_slice(&raw)
                .map_err(|e| bad(format!("response.patch is not a JSON patch: {e}")))?;
            Some(patch)
        }
    };
    Ok(Answer {
        allowed: r["allowed"].as_bool().unwrap_or(false),
        status: r["status"].clone(),
        patch,
        warnings: r["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect(),
    })
}

/// Applies a mutating webhook's JSON patch to `obj`; all of it or none.
pub(crate) fn apply_patch(w: &Webhook, obj: &mut Value, patch: &Value) -> Result<(), Error> {
    let internal = |why: String| -> Error {
        Status::new(
            500,
            "InternalError",
            format!(
                "Internal error occurred: admission webhook {:?} returned a patch that does not apply: {why}",
                w.name
            ),
        )
        .into()
    };
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| internal(e.to_string()))?;
    let mut out = obj.clone();
    json_patch::patch(&mut out, &ops).map_err(|e| internal(e.to_string()))?;
    if out.get("apiVersion") != obj.get("apiVersion") || out.get("kind") != obj.get("kind") {
        return Err(internal("it changes apiVersion or kind".into()));
    }
    *obj = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::config::webhooks;

    fn hook(mutating: bool) -> Webhook {
        let c = json!({
            "metadata": {"name": "c"},
            "webhooks": [{
                "name": "deny.kubewire.io",
                "clientConfig": {"url": "https://127.0.0.1:8443/x"},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }],
        });
        webhooks(&c, mutating).pop().unwrap()
    }

    fn answer(response: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})).unwrap()
    }

    #[test]
    fn a_refusal_reads_as_kube_apiservers() {
        let w = hook(false);
        let a = parse_answer(
            &answer(json!({"uid": "u", "allowed": false, "status": {"code": 403, "message": "no latest tags"}})),
            "u",
            &w,
        )
        .unwrap();
        let st = a.verdict(&w).unwrap_err().to_status();
        assert_eq!(st.code, 403);
        assert_eq!(
            st.message,
            "admission webhook \"deny.kubewire.io\" denied the request: no latest tags"
        );
        let a = parse_answer(&answer(json!({"uid": "u", "allowed": false})), "u", &w).unwrap();
        let st = a.verdict(&w).unwrap_err().to_status();
        assert_eq!(st.code, 400);
        assert_eq!(
            st.message,
            "admission webhook \"deny.kubewire.io\" denied the request without explanation"
        );
    }

    #[test]
    fn answers_that_do_not_fit_are_refused() {
        let v = hook(false);
        let m = hook(true);
        let patch = base64::engine::general_purpose::STANDARD.encode(b"[]");
        for (bytes, w, want) in [
            (
                answer(json!({"uid": "other", "allowed": true})),
                &v,
                "expected response.uid=\"u\", got \"other\"",
            ),
            (
                b"{\"kind\":\"Status\"}".to_vec(),
                &v,
                "expected webhook response of admission.k8s.io/v1",
            ),
            (
                answer(
                    json!({"uid": "u", "allowed": true, "patch": patch, "patchType": "JSONPatch"}),
                ),
                &v,
                "validating webhook may not return response.patch",
            ),
            (
                answer(json!({"uid": "u", "allowed": true, "patch": patch})),
                &m,
                "but not response.patchType",
            ),
            (
                answer(json!({"uid": "u", "allowed": true, "patch": "%%"})),
                &m,
                "but not response.patchType",
            ),
            (
                answer(
                    json!({"uid": "u", "allowed": true, "patch": "%%", "patchType": "JSONPatch"}),
                ),
                &m,
                "not base64",
            ),
        ] {
            let e = parse_answer(&bytes, "u", w).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }

    #[test]
    fn patches_apply_whole_or_not_at_all() {
        let w = hook(true);
        let mut obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}});
        let good = json!([{"op": "add", "path": "/metadata/labels", "value": {"injected": "yes"}}]);
        apply_patch(&w, &mut obj, &good).unwrap();
        assert_eq!(obj["metadata"]["labels"]["injected"], "yes");
        let before = obj.clone();
        let bad = json!([
            {"op": "add", "path": "/metadata/annotations", "value": {}},
            {"op": "remove", "path": "/spec/missing"}
        ]);
        assert!(apply_patch(&w, &mut obj, &bad).is_err());
        assert_eq!(obj, before);
        let kind = json!([{"op": "replace", "path": "/kind", "value": "Service"}]);
        assert!(apply_patch(&w, &mut obj, &kind).is_err());
    }

    #[test]
    fn review_request_fields() {
        let user = crate::api::User::admin();
        let req = Admission {
            operation: "UPDATE",
            group: "apps",
            version: "v1",
            kind: "Deployment",
            resource: "deployments",
            subresource: "status",
            namespace: "demo",
            namespaced: true,
            name: "web",
            user: &user,
            dry_run: true,
            options: json!({"kind": "UpdateOptions", "apiVersion": "meta.k8s.io/v1"}),
        };
        let old = json!({"metadata": {"name": "web"}});
        let r = review_request("u1", &req, Some(&old), Some(&old));
        assert_eq!(r["kind"], "AdmissionReview");
        let q = &r["request"];
        assert_eq!(q["uid"], "u1");
        assert_eq!(
            q["kind"],
            json!({"group": "apps", "version": "v1", "kind": "Deployment"})
        );
        assert_eq!(q["resource"]["resource"], "deployments");
        assert_eq!(q["subResource"], "status");
        assert_eq!(q["namespace"], "demo");
        assert_eq!(q["dryRun"], true);
        assert_eq!(q["userInfo"]["username"], "kubewire-admin");
        assert_eq!(q["options"]["kind"], "UpdateOptions");
    }

    #[test]
    fn hosts_and_ports() {
        assert_eq!(split_host_port("a.b:8443"), Some(("a.b", 8443)));
        assert_eq!(split_host_port("a.b"), Some(("a.b", 443)));
        assert_eq!(split_host_port("[::1]:9443"), Some(("::1", 9443)));
        assert_eq!(split_host_port("[::1]"), Some(("::1", 443)));
        assert_eq!(split_host_port("a:b"), None);
    }
}
