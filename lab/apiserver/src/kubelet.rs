//! `pods/log`: proxied to the kubelet API of the pod's node, as kube-apiserver does.
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

    /// Opens a TCP connection to `addr` from the configured namespace: a socket keeps
    /// the namespace it was made in, so a short-lived thread enters it to connect.
    async fn dial(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let Some(netns) = self.netns.clone() else {
            return tokio::time::timeout(DIAL_TIMEOUT, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?;
        };
        let std = tokio::task::spawn_blocking(move || -> std::io::Result<std::net::TcpStream> {
            let file = std::fs::File::open(&netns)?;
            // The blocking pool reuses threads: do the work on a fresh one that dies
            // with the namespace it entered.
            std::thread::spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                let s = std::net::TcpStream::connect_timeout(&addr, DIAL_TIMEOUT)?;
                s.set_nonblocking(true)?;
                Ok(s)
            })
            .join()
            .map_err(|_| std::io::Error::other("dial thread panicked"))?
        })
        .await
        .map_err(std::io::Error::other)??;
        tokio::net::TcpStream::from_std(std)
    }

    /// GETs `path_and_query` from the kubelet at `addr` and returns its response, the
    /// body streamed as it arrives (`follow=true` streams until either side ends).
    pub(crate) async fn get(
        &self,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> Result<Response<crate::ResponseBody>, Error> {
        let url = format!("https://{addr}{path_and_query}");
        let fail = |what: String| -> Error {
            Status::new(500, "InternalError", format!("Get \"{url}\": {what}")).into()
        };
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
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %k8s::ErrorChain(&e), "kubelet connection ended");
            }
        });
        let req = Request::get(path_and_query)
            .header(header::HOST, addr.to_string())
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| fail(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(e.to_string()))?;
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
    let param = |k: &str| {
        query
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    };
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    let container = match param("container").filter(|c| !c.is_empty()) {
        Some(c) => {
            if !containers.contains(&c) && !init.contains(&c) {
                return Err(Status::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                ))
                .into());
            }
            c.to_string()
        }
        None => {
            let default = pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
                .as_str()
                .filter(|d| containers.contains(d));
            match (default, containers.as_slice()) {
                (Some(d), _) => d.to_string(),
                (None, [one]) => one.to_string(),
                _ => {
                    return Err(Status::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        containers.join(" ")
                    ))
                    .into());
                }
            }
        }
    };
    let node_name = str_at(pod, "spec.nodeName").unwrap_or("");
    if node_name.is_empty() {
        return Err(
            Status::bad_request(format!("pod {name} does not have a host assigned")).into(),
        );
    }
    let node = node.ok_or_else(|| Status::not_found("", "nodes", node_name))?;
    let addresses = node["status"]["addresses"].as_array();
    let ip: IpAddr = ["InternalIP", "ExternalIP"]
        .iter()
        .find_map(|ty| {
            addresses
                .into_iter()
                .flatten()
                .filter(|a| a["type"].as_str() == Some(ty))
                .find_map(|a| a["address"].as_str()?.parse().ok())
        })
        .ok_or_else(|| {
            Status::bad_request(format!("node {node_name} has no InternalIP address"))
        })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    let mut sep = '?';
    for p in PASSED_PARAMS {
        if let Some(v) = param(p) {
            path.push(sep);
            path.push_str(p);
            path.push('=');
            path.push_str(&crate::util::percent_encode(v));
            sep = '&';
        }
    }
    Ok((SocketAddr::new(ip, port), path))
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
