//! `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward`: proxied to the
//! kubelet API of the pod's node, as kube-apiserver does (the streaming ones as an
//! upgrade: the kubelet's 101 goes back to the client and the two connections are
//! joined byte for byte, whichever protocol they speak).
//! The connection is dialed from inside the network namespace of the first
//! `--listen-netns` address (the lab's underlay, where node addresses are reachable),
//! the node's serving certificate is not verified (kube-apiserver's default without
//! `--kubelet-certificate-authority`), and the server presents the client certificate
//! `kube-apiserver-kubelet-client` (O `system:masters`) signed by the cluster CA.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::{Error, Status};
use crate::util::str_at;

/// kubelet's default port, when the Node does not report one.
const DEFAULT_KUBELET_PORT: u16 = 10250;
/// How long dialing the kubelet may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Query parameters of `pods/log` that the kubelet's `containerLogs` takes as they are.
const PASSED_PARAMS: [&str; 8] = [
    "follow",
    "previous",
    "sinceSeconds",
    "sinceTime",
    "timestamps",
    "tailLines",
    "limitBytes",
    "stream",
];

/// How to reach kubelets.
pub(crate) struct KubeletClient {
    tls: tokio_rustls::TlsConnector,
    /// Network namespace to dial from; `None`: this process's own.
    netns: Option<PathBuf>,
}

impl std::fmt::Debug for KubeletClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletClient")
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

/// Accepts any serving certificate (kubelets' are self-signed), but still checks that
/// the peer holds its key.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl KubeletClient {
    /// Loads (or mints, signed by the CA in `dir`) the kubelet client certificate.
    pub(crate) fn new(dir: &Path, netns: Option<PathBuf>) -> Result<KubeletClient, Error> {
        let (cert_pem, key_pem) = crate::tls::kubelet_client_cert(dir)?;
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::tls("reading the kubelet client certificate"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(Error::tls("reading the kubelet client key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(Error::tls("the kubelet client's TLS versions"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_client_auth_cert(certs, key)
            .map_err(Error::tls("the kubelet client certificate"))?;
        Ok(KubeletClient {
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            netns,
        })
    }

    /// Opens a TCP connection to `addr` from the configured namespace.
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        crate::dial::tcp(self.netns.as_deref(), addr, DIAL_TIMEOUT).await
    }

    /// An HTTP/1.1 connection to the kubelet at `addr` (TLS, our client certificate);
    /// `fail` words a failure as kube-apiserver does.
    async fn connect(
        &self,
        addr: SocketAddr,
        fail: &(dyn Fn(String) -> Error + Sync),
    ) -> Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>, Error> {
        let tcp = self
            .dial(addr)
            .await
            .map_err(|e| fail(format!("dial tcp {addr}: {e}")))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| fail(format!("tls: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %k8s::ErrorChain(&e), "kubelet connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends a GET of `path_and_query` to the kubelet at `addr`; its response, and how
    /// a later failure of that request is worded (as kube-apiserver words it).
    async fn send_get(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<
        (
            Response<hyper::body::Incoming>,
            impl Fn(String) -> Error + use<>,
        ),
        Error,
    > {
        let url = format!("https://{addr}{path_and_query}");
        let fail = move |what: String| -> Error {
            Status::new(500, "InternalError", format!("Get \"{url}\": {what}")).into()
        };
        let mut sender = self.connect(addr, &fail).await?;
        let req = Request::get(path_and_query)
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        Ok((resp, fail))
    }

    /// GETs `path_and_query` from the kubelet at `addr` and returns its response, the
    /// body streamed as it arrives (`follow=true` streams until either side ends).
    pub(crate) async fn get(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<Response<crate::ResponseBody>, Error> {
        let (resp, fail) = self.send_get(addr, path_and_query).await?;
        let (parts, mut body) = resp.into_parts();
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else { return };
                if let Ok(data) = frame.into_data()
                    && tx.send(data).await.is_err()
                {
                    return; // the client went away; dropping `body` closes the kubelet's side
                }
            }
        });
        let mut out = Response::builder().status(parts.status);
        if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
            out = out.header(header::CONTENT_TYPE, ct);
        }
        out.body(crate::api::stream_body(rx))
            .map_err(|e| fail(e.to_string()))
    }

    /// GETs `path` from the kubelet at `addr` as JSON (the Summary API).
    pub(crate) async fn get_json(&self, addr: SocketAddr, path: &str) -> Result<Value, Error> {
        let (resp, fail) = self.send_get(addr, path).await?;
        if !resp.status().is_success() {
            return Err(fail(format!("status {}", resp.status())));
        }
        let body = http_body_util::Limited::new(resp.into_body(), 16 * 1024 * 1024)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))
    }

    /// Proxies a streaming request (`exec`, `attach`, `portForward`) to the kubelet at
    /// `addr`: the client's headers go along (its credentials do not: the kubelet
    /// trusts this server's certificate), and when the kubelet switches protocols, so
    /// does the client, and the two upgraded connections are joined until either
    /// closes. Any other answer (the kubelet's errors) goes back as it is.
    pub(crate) async fn upgrade(
        &self,
        addr: SocketAddr,
        method: &http::Method,
        path_and_query: &str,
        headers: &http::HeaderMap,
        client: Option<hyper::upgrade::OnUpgrade>,
    ) -> Result<Response<crate::ResponseBody>, Error> {
        let url = format!("https://{addr}{path_and_query}");
        let fail = |what: String| -> Error {
            Status::new(
                500,
                "InternalError",
                format!("error dialing backend: {method} \"{url}\": {what}"),
            )
            .into()
        };
        let mut sender = self.connect(addr, &fail).await?;
        let mut req = Request::builder().method(method).uri(path_and_query);
        for (k, v) in headers {
            if k != header::HOST && k != header::AUTHORIZATION && k != header::CONTENT_LENGTH {
                req = req.header(k, v);
            }
        }
        let req = req
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let mut resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut out = Response::builder().status(resp.status());
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let Some(client) = client else {
                return Err(Status::bad_request("Upgrade request required").into());
            };
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let kubelet = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                let (Ok(kubelet), Ok(client)) = (kubelet.await, client.await) else {
                    tracing::debug!("a streaming upgrade did not complete");
                    return;
                };
                let (mut a, mut b) = (TokioIo::new(client), TokioIo::new(kubelet));
                if let Err(e) = tokio::io::copy_bidirectional(&mut a, &mut b).await {
                    tracing::debug!(error = %e, "streaming connection ended");
                }
            });
            return out
                .body(crate::api::full_body(Bytes::new()))
                .map_err(|e| fail(e.to_string()));
        }
        if let Some(ct) = resp.headers().get(header::CONTENT_TYPE) {
            out = out.header(header::CONTENT_TYPE, ct);
        }
        let body = http_body_util::Limited::new(resp.into_body(), 1024 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        out.body(crate::api::full_body(body))
            .map_err(|e| fail(e.to_string()))
    }
}

/// The container a pod subresource names (`container`), or the pod's default one: the
/// `kubectl.kubernetes.io/default-container` annotation, else its only container.
/// Errors as kube-apiserver words them.
pub(crate) fn pod_container(pod: &Value, asked: Option<&str>) -> Result<String, Error> {
    let name = str_at(pod, "metadata.name").unwrap_or("");
    let names = |field: &str| -> Vec<&str> {
        pod["spec"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    match asked.filter(|c| !c.is_empty()) {
        Some(c) => {
            if !containers.contains(&c) && !init.contains(&c) {
                return Err(Status::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                ))
                .into());
            }
            Ok(c.to_string())
        }
        None => {
            let default = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
                .as_str()
                .filter(|d| containers.contains(d));
            match (default, containers.as_slice()) {
                (Some(d), _) => Ok(d.to_string()),
                (None, [one]) => Ok(one.to_string()),
                _ => Err(Status::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ))
                .into()),
            }
        }
    }
}

/// The kubelet API address of the pod's node: its InternalIP (else ExternalIP) and
/// the port it reports.
pub(crate) fn node_address(pod: &Value, node: Option<&Value>) -> Result<SocketAddr, Error> {
    let name = str_at(pod, "metadata.name").unwrap_or("");
    let node_name = str_at(pod, "spec.nodeName").unwrap_or("");
    if node_name.is_empty() {
        return Err(
            Status::bad_request(format!("pod {name} does not have a host assigned")).into(),
        );
    }
    let node = node.ok_or_else(|| Status::not_found("", "nodes", node_name))?;
    kubelet_endpoint(node).ok_or_else(|| {
        Status::bad_request(format!("node {node_name} has no InternalIP address")).into()
    })
}

/// A Node's kubelet API address: its InternalIP (else ExternalIP) and the port it
/// reports (default 10250).
pub(crate) fn kubelet_endpoint(node: &Value) -> Option<SocketAddr> {
    let addresses = node["status"]["addresses"].as_array();
    let ip: IpAddr = ["InternalIP", "ExternalIP"].iter().find_map(|ty| {
        addresses
            .into_iter()
            .flatten()
            .filter(|a| a["type"].as_str() == Some(ty))
            .find_map(|a| a["address"].as_str()?.parse().ok())
    })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some(SocketAddr::new(ip, port))
}

/// The last value of query parameter `k`.
fn param<'a>(query: &'a [(String, String)], k: &str) -> Option<&'a str> {
    query
        .iter()
        .rev()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

/// Where a pod's logs are: the kubelet address of its node and the `containerLogs` path
/// with the pass-through query. Errors as kube-apiserver words them.
pub(crate) fn log_location(
    pod: &Value,
    node: Option<&Value>,
    query: &[(String, String)],
) -> Result<(SocketAddr, String), Error> {
    let ns = str_at(pod, "metadata.namespace").unwrap_or("");
    let name = str_at(pod, "metadata.name").unwrap_or("");
    let container = pod_container(pod, param(query, "container"))?;
    let addr = node_address(pod, node)?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let mut sep = '?';
    for p in PASSED_PARAMS {
        if let Some(v) = param(query, p) {
            path.push(sep);
            path.push_str(p);
            path.push('=');
            path.push_str(&crate::util::percent_encode(v));
            sep = '&';
        }
    }
    Ok((addr, path))
}

/// Which streaming subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Exec,
    Attach,
    PortForward,
}

/// Where a pod's `exec`, `attach` or `portforward` goes: the kubelet address and path,
/// the options translated as kube-apiserver does (`stdin=true` → `input=1`,
/// `stdout` → `output`, `stderr` → `error`, `ports` → `port`).
pub(crate) fn stream_location(
    kind: Stream,
    pod: &Value,
    node: Option<&Value>,
    query: &[(String, String)],
) -> Result<(SocketAddr, String), Error> {
    let ns = str_at(pod, "metadata.namespace").unwrap_or("");
    let name = str_at(pod, "metadata.name").unwrap_or("");
    let flag = |k: &str| {
        param(query, k).is_some_and(|v| matches!(v, "1" | "t" | "T" | "true" | "TRUE" | "True"))
    };
    let mut params: Vec<(&str, String)> = Vec::new();
    let path = match kind {
        Stream::Exec | Stream::Attach => {
            let container = pod_container(pod, param(query, "container"))?;
            if kind == Stream::Exec {
                for (_, c) in query.iter().filter(|(k, _)| k == "command") {
                    params.push(("command", c.clone()));
                }
            }
            for (from, to) in [
                ("stdin", "input"),
                ("stdout", "output"),
                ("stderr", "error"),
                ("tty", "tty"),
            ] {
                if flag(from) {
                    params.push((to, "1".into()));
                }
            }
            let verb = if kind == Stream::Exec {
                "exec"
            } else {
                "attach"
            };
            format!("/{verb}/{ns}/{name}/{container}")
        }
        Stream::PortForward => {
            for (_, p) in query.iter().filter(|(k, _)| k == "ports") {
                for port in p.split(',').filter(|p| !p.is_empty()) {
                    params.push(("port", port.to_owned()));
                }
            }
            format!("/portForward/{ns}/{name}")
        }
    };
    let addr = node_address(pod, node)?;
    let query: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{k}={}", crate::util::percent_encode(v)))
        .collect();
    if query.is_empty() {
        Ok((addr, path))
    } else {
        Ok((addr, format!("{path}?{}", query.join("&"))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn log_location_picks_container_node_and_params() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "a"}, {"name": "b"}]}});
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "node-1"},
            {"type": "InternalIP", "address": "198.18.0.11"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        let (addr, path) = log_location(
            &pod,
            Some(&node),
            &q(&[
                ("container", "b"),
                ("follow", "true"),
                ("tailLines", "5"),
                ("pretty", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(addr, "198.18.0.11:10250".parse().unwrap());
        assert_eq!(path, "/containerLogs/ns/p/b?follow=true&tailLines=5");
        let e = log_location(&pod, Some(&node), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("a container name must be specified for pod p, choose one of: [a b]"),
            "{e}"
        );
        let e = log_location(&pod, Some(&node), &q(&[("container", "z")])).unwrap_err();
        assert_eq!(e.to_status().code, 400);
        let e = log_location(&pod, None, &q(&[("container", "a")])).unwrap_err();
        assert_eq!(e.to_status().code, 404);
    }
}
