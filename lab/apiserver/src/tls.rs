//! The cluster's PKI: a CA made on first start and kept in the data dir, a serving
//! certificate re-issued on every start (so it names every listen address), an admin
//! client certificate, an admin bearer token, and the admin kubeconfig.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::Error;

/// Files of the PKI inside the data dir.
pub(crate) struct Pki {
    pub(crate) ca_pem: String,
    ca_der: CertificateDer<'static>,
    serving_der: CertificateDer<'static>,
    serving_key: Vec<u8>,
    admin_cert_pem: String,
    admin_key_pem: String,
    pub(crate) admin_token: String,
}

fn read(path: &Path) -> Result<Option<String>, Error> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Writes `data` to `path` via a temporary file and a rename, so readers never see half
/// a file; `private` files are readable by the owner only.
pub(crate) fn write_atomic(path: &Path, data: &[u8], private: bool) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The CA from the data dir, made on first use.
fn load_or_create_ca(dir: &Path) -> Result<(String, KeyPair), Error> {
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");
    Ok(match (read(&ca_cert_path)?, read(&ca_key_path)?) {
        (Some(cert), Some(key)) => (
            cert,
            KeyPair::from_pem(&key).map_err(Error::tls("reading ca.key"))?,
        ),
        _ => {
            let key = KeyPair::generate().map_err(Error::tls("making the CA key"))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(Error::tls("making the CA certificate"))?;
            write_atomic(&ca_key_path, key.serialize_pem().as_bytes(), true)?;
            write_atomic(&ca_cert_path, cert.pem().as_bytes(), false)?;
            (cert.pem(), key)
        }
    })
}

/// A client certificate (PEM) and key (PEM) signed by the CA: common name `user`,
/// organisations `groups`, as kube-apiserver maps them to user and groups.
fn client_cert(
    issuer: &Issuer<'_, KeyPair>,
    user: &str,
    groups: &[&str],
) -> Result<(String, String), Error> {
    let key = KeyPair::generate().map_err(Error::tls("making a client key"))?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, user);
    for g in groups {
        p.distinguished_name.push(DnType::OrganizationName, *g);
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let cert = p
        .signed_by(&key, issuer)
        .map_err(Error::tls("signing a client certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A kubeconfig for `server` with the given CA and client credentials embedded.
fn kubeconfig_yaml(
    server: &str,
    user: &str,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kubewire\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: kubewire\n  context:\n    cluster: kubewire\n    user: {user}\n    namespace: default\ncurrent-context: kubewire\n",
        STANDARD.encode(ca_pem.as_bytes()),
        STANDARD.encode(cert_pem.as_bytes()),
        STANDARD.encode(key_pem.as_bytes()),
    )
}

/// Mints credentials for `user` (e.g. `system:node:node-1` in group `system:nodes`)
/// and returns a kubeconfig for `server` that uses them.
pub(crate) fn client_kubeconfig(
    dir: &Path,
    server: &str,
    user: &str,
    groups: &[&str],
) -> Result<String, Error> {
    let (ca_pem, ca_key) = load_or_create_ca(dir)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let (cert, key) = client_cert(&issuer, user, groups)?;
    Ok(kubeconfig_yaml(server, user, &ca_pem, &cert, &key))
}

/// The client certificate the server presents to kubelets (`pods/log`): CN
/// `kube-apiserver-kubelet-client`, O `system:masters`, signed by the CA, made once and
/// kept in `DIR/kubelet-client.{crt,key}`. Returns (certificate PEM, key PEM).
pub(crate) fn kubelet_client_cert(dir: &Path) -> Result<(String, String), Error> {
    let cert_path = dir.join("kubelet-client.crt");
    let key_path = dir.join("kubelet-client.key");
    if let (Some(c), Some(k)) = (read(&cert_path)?, read(&key_path)?) {
        return Ok((c, k));
    }
    let (_, ca_key) = load_or_create_ca(dir)?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let (cert, key) = client_cert(
        &issuer,
        "kube-apiserver-kubelet-client",
        &["system:masters"],
    )?;
    write_atomic(&key_path, key.as_bytes(), true)?;
    write_atomic(&cert_path, cert.as_bytes(), false)?;
    Ok((cert, key))
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kubewire-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Pki {
    /// Loads or creates the CA, admin credentials and token; issues a serving certificate
    /// for `localhost`, loopback and every address in `listen`.
    pub(crate) fn ensure(
        dir: &Path,
        listen: &[SocketAddr],
        extra_ips: &[IpAddr],
    ) -> Result<Pki, Error> {
        let (ca_pem, ca_key) = load_or_create_ca(dir)?;
        let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(Error::tls("reading ca.crt"))?;
        let issuer = Issuer::new(ca_params(), ca_key);

        // Serving certificate: always fresh.
        let mut sans = Vec::new();
        for name in [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ] {
            let name = name
                .try_into()
                .map_err(Error::tls("a DNS name of the serving certificate"))?;
            sans.push(SanType::DnsName(name));
        }
        sans.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
        sans.push(SanType::IpAddress(IpAddr::from(
            std::net::Ipv6Addr::LOCALHOST,
        )));
        for ip in listen
            .iter()
            .map(SocketAddr::ip)
            .chain(extra_ips.iter().copied())
        {
            if !ip.is_unspecified() && !sans.contains(&SanType::IpAddress(ip)) {
                sans.push(SanType::IpAddress(ip));
            }
        }
        let mut sp = CertificateParams::default();
        sp.distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        sp.subject_alt_names = sans;
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sp.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let serving_key = KeyPair::generate().map_err(Error::tls("making the serving key"))?;
        let serving = sp
            .signed_by(&serving_key, &issuer)
            .map_err(Error::tls("signing the serving certificate"))?;
        write_atomic(&dir.join("apiserver.crt"), serving.pem().as_bytes(), false)?;

        // Admin client certificate: made once.
        let admin_cert_path = dir.join("admin.crt");
        let admin_key_path = dir.join("admin.key");
        let (admin_cert_pem, admin_key_pem) =
            match (read(&admin_cert_path)?, read(&admin_key_path)?) {
                (Some(c), Some(k)) => (c, k),
                _ => {
                    let (cert, key) = client_cert(&issuer, "kubewire-admin", &["system:masters"])?;
                    write_atomic(&admin_key_path, key.as_bytes(), true)?;
                    write_atomic(&admin_cert_path, cert.as_bytes(), false)?;
                    (cert, key)
                }
            };

        let token_path = dir.join("admin.token");
        let admin_token = match read(&token_path)? {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = format!(
                    "{}{}",
                    uuid::Uuid::new_v4().simple(),
                    uuid::Uuid::new_v4().simple()
                );
                write_atomic(&token_path, t.as_bytes(), true)?;
                t
            }
        };
        Ok(Pki {
            ca_pem,
            ca_der,
            serving_der: serving.der().clone(),
            serving_key: serving_key.serialize_der(),
            admin_cert_pem,
            admin_key_pem,
            admin_token,
        })
    }

    /// rustls server config: the serving certificate; client certificates signed by the
    /// CA are accepted but not required (bearer tokens authenticate the others).
    pub(crate) fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone())
            .map_err(Error::tls("trusting the CA"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(Error::tls("the client certificate verifier"))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.serving_key.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(Error::tls("the server's TLS versions"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.serving_der.clone(), self.ca_der.clone()], key)
            .map_err(Error::tls("the serving certificate"))?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The admin kubeconfig (YAML), credentials embedded so it works when copied.
    pub(crate) fn kubeconfig(&self, server: &str) -> String {
        kubeconfig_yaml(
            server,
            "kubewire-admin",
            &self.ca_pem,
            &self.admin_cert_pem,
            &self.admin_key_pem,
        )
    }
}

/// `https://ADDR` for a kubeconfig: an unspecified address becomes loopback.
pub(crate) fn server_url(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("https://{}", SocketAddr::new(ip, addr.port()))
}

/// Where the admin kubeconfig goes.
pub(crate) fn kubeconfig_path(dir: &Path) -> PathBuf {
    dir.join("admin.kubeconfig")
}
