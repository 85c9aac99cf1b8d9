//! The proxy's side of identity: a key made once, in memory (it never leaves the
//! process), a CSR for it, and the certificate asked of the issuer with the pod's
//! projected token (read anew each time: the node renews the file). [`Certifier::run`]
//! keeps the credentials fresh, renewing at 70% of their lifetime and retrying failures
//! with a growing pause, so that a restarting issuer drops no connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

/// When credentials are renewed: at this share of their lifetime (Linkerd's).
pub const RENEW_AT: f64 = 0.7;
/// How long one request to the issuer may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read.
const MAX_ANSWER: usize = 256 << 10;

/// Why credentials could not be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the token {path}")]
    Token {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the trust bundle has no certificate")]
    NoTrust,
    #[error("making the key or the CSR")]
    Key(#[source] rcgen::Error),
    #[error("reaching the issuer at {url}: {why}")]
    Call { url: String, why: String },
    #[error("the issuer refused: {0}")]
    Refused(String),
    #[error("the issuer's answer is not usable: {0}")]
    Answer(String),
}

/// A workload's credentials: its key, its certificate chain, the trust bundle.
#[derive(Debug)]
pub struct Credentials {
    /// The SPIFFE ID the certificate names.
    pub identity: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub trust: Vec<CertificateDer<'static>>,
    pub issued: SystemTime,
    pub not_after: SystemTime,
}

impl Credentials {
    /// When to renew: 70% of the way from issue to expiry.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.issued)
            .unwrap_or_default();
        self.issued + life.mul_f64(RENEW_AT)
    }
}

/// How to get credentials.
pub struct Certifier {
    /// `https://NAME:PORT/v1/certify`.
    url: String,
    server_name: ServerName<'static>,
    /// Where to connect: `None` resolves the URL's name.
    connect_to: Option<SocketAddr>,
    host_port: String,
    path: String,
    token_path: PathBuf,
    tls: tokio_rustls::TlsConnector,
    trust: Vec<CertificateDer<'static>>,
    key: KeyPair,
    csr_pem: String,
}

impl std::fmt::Debug for Certifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certifier")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Certifier {
    /// A certifier asking the issuer at `https://{server}/v1/certify` (`server` is
    /// `NAME:PORT`), trusting `trust_pem`, with the token in `token_path`; it connects to
    /// `connect_to` when given, else to what the name resolves to.
    pub fn new(
        server: &str,
        connect_to: Option<SocketAddr>,
        trust_pem: &str,
        token_path: PathBuf,
    ) -> Result<Certifier, Error> {
        let trust: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(trust_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
        if trust.is_empty() {
            return Err(Error::NoTrust);
        }
        let mut roots = rustls::RootCertStore::empty();
        for c in &trust {
            roots.add(c.clone()).map_err(|_| Error::NoTrust)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Answer(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = server.rsplit_once(':').map_or(server, |(n, _)| n);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| Error::Call {
            url: server.to_string(),
            why: "not a server name".into(),
        })?;
        let key = KeyPair::generate().map_err(Error::Key)?;
        let csr_pem = CertificateParams::new(Vec::<String>::new())
            .and_then(|p| p.serialize_request(&key))
            .and_then(|r| r.pem())
            .map_err(Error::Key)?;
        Ok(Certifier {
            url: format!("https://{server}/v1/certify"),
            server_name,
            connect_to,
            host_port: server.to_string(),
            path: "/v1/certify".into(),
            token_path,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            trust,
            key,
            csr_pem,
        })
    }

    /// Asks the issuer once.
    pub async fn certify(&self) -> Result<Credentials, Error> {
        let token = std::fs::read_to_string(&self.token_path).map_err(|source| Error::Token {
            path: self.token_path.clone(),
            source,
        })?;
        let body = json!({"token": token.trim(), "csr": self.csr_pem}).to_string();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.post(body))
            .await
            .map_err(|_| self.call_error("timed out".into()))??;
        self.credentials(&answer)
    }

    fn call_error(&self, why: String) -> Error {
        Error::Call {
            url: self.url.clone(),
            why,
        }
    }

    async fn post(&self, body: String) -> Result<Value, Error> {
        let addr = match self.connect_to {
            Some(a) => a,
            None => tokio::net::lookup_host(&self.host_port)
                .await
                .map_err(|e| self.call_error(e.to_string()))?
                .next()
                .ok_or_else(|| self.call_error("the name has no address".into()))?,
        };
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| self.call_error(format!("connecting to {addr}: {e}")))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| self.call_error(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| self.call_error(e.to_string()))?;
        tokio::spawn(conn);
        let req = Request::post(&self.path)
            .header(header::HOST, &self.host_port)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.call_error(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.call_error(e.to_string()))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| self.call_error(format!("reading the answer: {e}")))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Answer(format!("not JSON ({status}): {e}")))?;
        if !status.is_success() {
            return Err(Error::Refused(format!(
                "{status}: {}",
                v["error"].as_str().unwrap_or("")
            )));
        }
        Ok(v)
    }

    /// The credentials an answer gives, checked: a chain whose first certificate is for
    /// our key.
    fn credentials(&self, v: &Value) -> Result<Credentials, Error> {
        let bad = |why: &str| Error::Answer(why.to_string());
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(v["certificate"].as_str().unwrap_or("").as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| bad("certificate is not PEM"))?;
        let leaf = chain.first().ok_or_else(|| bad("no certificate"))?;
        let spki = rcgen::PublicKeyData::der_bytes(&self.key);
        if !leaf.windows(spki.len()).any(|w| w == spki) {
            return Err(bad("the certificate is not for this key"));
        }
        let identity = v["identity"]
            .as_str()
            .filter(|i| i.starts_with("spiffe://"))
            .ok_or_else(|| bad("no SPIFFE identity"))?
            .to_string();
        let not_after = v["notAfter"]
            .as_u64()
            .map(|s| UNIX_EPOCH + Duration::from_secs(s))
            .ok_or_else(|| bad("no notAfter"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        Ok(Credentials {
            identity,
            chain,
            key,
            trust: self.trust.clone(),
            issued: SystemTime::now(),
            not_after,
        })
    }

    /// Gets credentials, publishes them on `tx`, and renews them at 70% of their
    /// lifetime until every receiver is gone; failures are retried after 1 s, doubling
    /// to a minute.
    pub async fn run(self, tx: watch::Sender<Option<Arc<Credentials>>>) {
        let mut pause = Duration::from_secs(1);
        loop {
            let wait = match self.certify().await {
                Ok(c) => {
                    info!(identity = %c.identity, "certified");
                    pause = Duration::from_secs(1);
                    let wait = c
                        .renew_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    if tx.send(Some(Arc::new(c))).is_err() {
                        return;
                    }
                    wait
                }
                Err(e) => {
                    warn!(error = %e, retry_in = ?pause, "could not get a certificate");
                    let p = pause;
                    pause = (pause * 2).min(Duration::from_secs(60));
                    p
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = tx.closed() => return,
            }
        }
    }
}
