//! Mutual TLS between proxies: TLS 1.3 only, each side presenting its workload's
//! certificate and checking the other's chain against the mesh's trust bundle. A
//! certificate names its workload by a SPIFFE URI, not a DNS name, so the client's check
//! is the chain and the trust domain (webpki, without a name check); which identity the
//! peer must have is the caller's to compare ([`peer_identity`]), as the destination
//! decides it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::identity::client::Credentials;

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the trust bundle: {0}")]
    Trust(String),
    #[error("the workload's certificate or key: {0}")]
    Credentials(#[source] rustls::Error),
}

/// The SPIFFE ID (URI SAN starting `spiffe://`) of a certificate.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (_, c) = X509Certificate::from_der(cert.as_ref()).ok()?;
    let san = c.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_string()),
        _ => None,
    })
}

/// The SPIFFE ID the peer of a finished handshake presented.
pub fn peer_identity(conn: &rustls::CommonState) -> Option<String> {
    conn.peer_certificates()?.first().and_then(spiffe_id)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(creds: &Credentials) -> Result<rustls::RootCertStore, Error> {
    let mut roots = rustls::RootCertStore::empty();
    for c in &creds.trust {
        roots
            .add(c.clone())
            .map_err(|e| Error::Trust(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(Error::Trust("no certificate".into()));
    }
    Ok(roots)
}

/// The inbound side: a meshed client must present a certificate of the trust bundle.
pub fn server_config(creds: &Credentials) -> Result<Arc<rustls::ServerConfig>, Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(creds)?), provider())
        .build()
        .map_err(|e| Error::Trust(e.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Credentials)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(Error::Credentials)?;
    Ok(Arc::new(cfg))
}

/// The outbound side: presents the workload's certificate and accepts a server whose
/// chain leads to the trust bundle and whose certificate names a SPIFFE ID in
/// `trust_domain`.
pub fn client_config(
    creds: &Credentials,
    trust_domain: &str,
) -> Result<Arc<rustls::ClientConfig>, Error> {
    let anchors = creds
        .trust
        .iter()
        .map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .map(|a| a.to_owned())
                .map_err(|e| Error::Trust(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let verifier = SpiffeServerVerifier {
        anchors,
        prefix: format!("spiffe://{trust_domain}/"),
        provider: provider(),
    };
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(Error::Credentials)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(Error::Credentials)?;
    Ok(Arc::new(cfg))
}

/// Checks a server's chain against the bundle (webpki, for server authentication) and
/// that it names a SPIFFE ID of the trust domain; the server name the connection was
/// opened with is not looked at.
#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    prefix: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("the server's certificate: {e}")))?;
        cert.verify_for_usage(
            self.provider.signature_verification_algorithms.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        match spiffe_id(end_entity) {
            Some(id) if id.starts_with(&self.prefix) => Ok(ServerCertVerified::assertion()),
            other => Err(rustls::Error::General(format!(
                "the server's certificate names {other:?}, not an identity of {}",
                self.prefix
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 only: a 1.2 handshake never gets here.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use rcgen::{CertificateParams, KeyPair};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::identity::{Authority, Identity};

    /// Credentials for `sa` in `demo`, signed by `ca`.
    fn creds(ca: &Authority, sa: &str) -> Credentials {
        let key = KeyPair::generate().unwrap();
        let csr = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap();
        let id = Identity {
            namespace: "demo".into(),
            service_account: sa.into(),
        };
        let now = SystemTime::now();
        let issued = ca.certify(&csr, &id, now).unwrap();
        Credentials {
            identity: id.spiffe_id(ca.trust_domain()),
            chain: CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            trust: CertificateDer::pem_slice_iter(ca.trust_bundle().as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            issued: now,
            not_after: issued.not_after,
        }
    }

    /// A handshake between `client` and `server` over an in-memory pipe, then one
    /// message each way: each side's view of the other's identity, or the error.
    async fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<(Option<String>, Option<String>), String> {
        let (a, b) = tokio::io::duplex(64 << 10);
        let accept = tokio::spawn(async move {
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(b)
                .await
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            s.write_all(b"pong").await.map_err(|e| e.to_string())?;
            s.flush().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(peer_identity(s.get_ref().1))
        });
        let name = ServerName::try_from("db.demo.svc.cluster.local").unwrap();
        let connect = async {
            let mut c = tokio_rustls::TlsConnector::from(client)
                .connect(name, a)
                .await
                .map_err(|e| e.to_string())?;
            c.write_all(b"ping").await.map_err(|e| e.to_string())?;
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            assert_eq!(&buf, b"pong");
            Ok::<_, String>(peer_identity(c.get_ref().1))
        };
        let client_saw = connect.await;
        let server_saw = accept.await.unwrap();
        Ok((client_saw?, server_saw?))
    }

    #[tokio::test]
    async fn meshed_peers_see_each_others_spiffe_ids() {
        let (ca, _) = Authority::create("cluster.local", SystemTime::now()).unwrap();
        let web = creds(&ca, "web");
        let db = creds(&ca, "db");
        let (client_saw, server_saw) = handshake(
            client_config(&web, "cluster.local").unwrap(),
            server_config(&db).unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(
            client_saw.as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/db")
        );
        assert_eq!(
            server_saw.as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/web")
        );
    }

    #[tokio::test]
    async fn strangers_are_refused_both_ways() {
        let (ca, _) = Authority::create("cluster.local", SystemTime::now()).unwrap();
        let (other, _) = Authority::create("cluster.local", SystemTime::now()).unwrap();
        let web = creds(&ca, "web");
        let db = creds(&ca, "db");
        let stranger = creds(&other, "web");
        // A client of another anchor is refused by the server.
        assert!(
            handshake(
                client_config(&stranger, "cluster.local").unwrap(),
                server_config(&db).unwrap()
            )
            .await
            .is_err()
        );
        // A server of another anchor is refused by the client.
        assert!(
            handshake(
                client_config(&web, "cluster.local").unwrap(),
                server_config(&stranger).unwrap()
            )
            .await
            .is_err()
        );
        // A server of the right anchor but another trust domain is refused too.
        assert!(
            handshake(
                client_config(&web, "other.domain").unwrap(),
                server_config(&db).unwrap()
            )
            .await
            .is_err()
        );
        // A client without a certificate: mTLS is required.
        let anchors_only = {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(db.trust[0].clone()).unwrap();
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                        anchors: vec![
                            webpki::anchor_from_trusted_cert(&db.trust[0])
                                .unwrap()
                                .to_owned(),
                        ],
                        prefix: "spiffe://cluster.local/".into(),
                        provider: provider(),
                    }))
                    .with_no_client_auth(),
            )
        };
        assert!(
            handshake(anchors_only, server_config(&db).unwrap())
                .await
                .is_err()
        );
    }

    #[test]
    fn spiffe_ids_come_from_the_uri_san() {
        let (ca, _) = Authority::create("cluster.local", SystemTime::now()).unwrap();
        let web = creds(&ca, "web");
        assert_eq!(
            spiffe_id(&web.chain[0]).as_deref(),
            Some("spiffe://cluster.local/ns/demo/sa/web")
        );
        // The anchor names none.
        assert_eq!(spiffe_id(&web.trust[0]), None);
    }
}
