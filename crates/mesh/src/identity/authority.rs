//! The mesh's certificate authority: a trust anchor (an ECDSA P-256 key and its
//! self-signed CA certificate) that signs each proxy's certificate for the identity
//! its ServiceAccount token proves. A pure part: no I/O, the time passed in.
//!
//! A proxy's certificate names its workload by a SPIFFE ID in the URI SAN,
//! `spiffe://<trust domain>/ns/<namespace>/sa/<serviceaccount>`, whatever its CSR asked
//! for: the CSR only carries the public key (and proves its owner holds the private
//! key, which never leaves the pod).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// How long a proxy's certificate is valid (Linkerd's default; proxies renew at 70%).
pub const CERTIFICATE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How far back a certificate's validity starts, for clocks slightly behind ours.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
/// The trust anchor's lifetime.
const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Why a certificate was not issued.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CSR does not parse or its signature is wrong (the requester does not hold
    /// the key).
    #[error("the certificate signing request is not valid: {0}")]
    Csr(#[source] rcgen::Error),
    /// The namespace or ServiceAccount cannot be part of a SPIFFE ID.
    #[error("{0:?} cannot be part of a SPIFFE ID")]
    Name(String),
    /// Making, reading or signing with the anchor failed.
    #[error("{what}")]
    Anchor {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

/// A workload's identity: its ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service_account: String,
}

impl Identity {
    /// From a TokenReview's username, `system:serviceaccount:NS:NAME`.
    pub fn from_username(username: &str) -> Option<Identity> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, service_account) = rest.split_once(':')?;
        (!namespace.is_empty() && !service_account.is_empty()).then(|| Identity {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// `spiffe://<trust domain>/ns/<namespace>/sa/<serviceaccount>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A certificate issued to a proxy.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The proxy's certificate, then the anchor's (PEM).
    pub chain_pem: String,
    pub not_after: SystemTime,
}

/// The trust anchor and what it signs with.
pub struct Authority {
    trust_domain: String,
    anchor_pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// How long the certificates it issues are valid.
    lifetime: Duration,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// An anchor's certificate and key, PEM, as kept in the issuer's Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorPem {
    pub cert: String,
    pub key: String,
}

fn anchor_params(trust_domain: &str, now: SystemTime) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("root.{trust_domain}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = (now - BACKDATE).into();
    p.not_after = (now + ANCHOR_LIFETIME).into();
    p
}

impl Authority {
    /// A new trust anchor for `trust_domain`, valid from `now`.
    pub fn create(trust_domain: &str, now: SystemTime) -> Result<(Authority, AnchorPem), Error> {
        let anchor = |what| move |source| Error::Anchor { what, source };
        let key = KeyPair::generate().map_err(anchor("making the anchor's key"))?;
        let cert = anchor_params(trust_domain, now)
            .self_signed(&key)
            .map_err(anchor("making the anchor's certificate"))?;
        let pem = AnchorPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        };
        Ok((Authority::load(trust_domain, &pem)?, pem))
    }

    /// The anchor kept as `pem`.
    pub fn load(trust_domain: &str, pem: &AnchorPem) -> Result<Authority, Error> {
        let anchor = |what| move |source| Error::Anchor { what, source };
        let key = KeyPair::from_pem(&pem.key).map_err(anchor("reading the anchor's key"))?;
        let issuer = Issuer::from_ca_cert_pem(&pem.cert, key)
            .map_err(anchor("reading the anchor's certificate"))?;
        Ok(Authority {
            trust_domain: trust_domain.to_string(),
            anchor_pem: pem.cert.clone(),
            issuer,
            lifetime: CERTIFICATE_LIFETIME,
        })
    }

    /// The same anchor, issuing certificates valid for `lifetime` (instead of
    /// [`CERTIFICATE_LIFETIME`]).
    pub fn with_lifetime(self, lifetime: Duration) -> Authority {
        Authority { lifetime, ..self }
    }

    /// The trust bundle proxies verify their peers with (PEM).
    pub fn trust_bundle(&self) -> &str {
        &self.anchor_pem
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// A serving certificate for the issuer itself (DNS name `name`), and its key, PEM:
    /// proxies reach the issuer by that name and trust it through the bundle.
    pub fn serving_certificate(
        &self,
        name: &str,
        now: SystemTime,
    ) -> Result<(String, String), Error> {
        let anchor = |what| move |source| Error::Anchor { what, source };
        let key = KeyPair::generate().map_err(anchor("making the serving key"))?;
        let mut p = CertificateParams::new(vec![name.to_string()])
            .map_err(anchor("the serving certificate's name"))?;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_before = (now - BACKDATE).into();
        p.not_after = (now + ANCHOR_LIFETIME).into();
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(anchor("signing the serving certificate"))?;
        Ok((
            format!("{}{}", cert.pem(), self.anchor_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs the key of `csr_pem` for `identity`, valid from `now` for the authority's
    /// lifetime. The CSR's subject and extensions are ignored.
    pub fn certify(
        &self,
        csr_pem: &str,
        identity: &Identity,
        now: SystemTime,
    ) -> Result<Issued, Error> {
        for part in [&identity.namespace, &identity.service_account] {
            if part.is_empty()
                || !part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
            {
                return Err(Error::Name(part.clone()));
            }
        }
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(Error::Csr)?;
        let id = identity.spiffe_id(&self.trust_domain);
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        let uri = id.clone().try_into().map_err(|source| Error::Anchor {
            what: "a SPIFFE ID as a URI",
            source,
        })?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let not_after = now + self.lifetime;
        p.not_before = (now - BACKDATE).into();
        p.not_after = not_after.into();
        p.serial_number = Some(SerialNumber::from_slice(&serial(now, &id)));
        csr.params = p;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|source| Error::Anchor {
                what: "signing a certificate",
                source,
            })?;
        Ok(Issued {
            chain_pem: format!("{}{}", cert.pem(), self.anchor_pem),
            not_after,
        })
    }
}

/// A positive 16-byte serial, distinct per issue: the time in nanoseconds and a hash
/// of the identity (RFC 5280 asks for uniqueness per issuer, not secrecy).
fn serial(now: SystemTime, id: &str) -> [u8; 16] {
    use std::hash::{Hash, Hasher};
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    nanos.hash(&mut h);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&nanos.to_be_bytes());
    out[8..].copy_from_slice(&h.finish().to_be_bytes());
    out[0] &= 0x7f;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams as Params, KeyPair};

    fn csr(key: &KeyPair, sans: Vec<String>) -> String {
        Params::new(sans)
            .unwrap()
            .serialize_request(key)
            .unwrap()
            .pem()
            .unwrap()
    }

    fn web() -> Identity {
        Identity {
            namespace: "demo".into(),
            service_account: "web".into(),
        }
    }

    #[test]
    fn identities_come_from_service_account_usernames() {
        assert_eq!(
            Identity::from_username("system:serviceaccount:demo:web"),
            Some(web())
        );
        assert_eq!(Identity::from_username("kubewire-admin"), None);
        assert_eq!(Identity::from_username("system:serviceaccount:demo:"), None);
        assert_eq!(
            web().spiffe_id("cluster.local"),
            "spiffe://cluster.local/ns/demo/sa/web"
        );
    }

    #[test]
    fn a_certificate_names_the_identity_not_what_the_csr_asked() {
        let now = SystemTime::now();
        let (ca, pem) = Authority::create("cluster.local", now).unwrap();
        // The anchor reloads from what is kept.
        let ca2 = Authority::load("cluster.local", &pem).unwrap();
        assert_eq!(ca2.trust_bundle(), ca.trust_bundle());
        let key = KeyPair::generate().unwrap();
        let issued = ca
            .certify(&csr(&key, vec!["admin.example".into()]), &web(), now)
            .unwrap();
        assert_eq!(issued.not_after, now + CERTIFICATE_LIFETIME);
        let short = Authority::load("cluster.local", &pem)
            .unwrap()
            .with_lifetime(Duration::from_secs(20))
            .certify(&csr(&key, vec![]), &web(), now)
            .unwrap();
        assert_eq!(short.not_after, now + Duration::from_secs(20));
        assert!(issued.chain_pem.ends_with(ca.trust_bundle()));
        let leaf = issued
            .chain_pem
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap();
        let der = rustls_pemfile_like(leaf);
        let text = String::from_utf8_lossy(&der);
        assert!(text.contains("spiffe://cluster.local/ns/demo/sa/web"));
        assert!(
            !text.contains("admin.example"),
            "the CSR's names are not signed"
        );
        // The certificate carries the CSR's key.
        let spki = rcgen::PublicKeyData::der_bytes(&key);
        assert!(der.windows(spki.len()).any(|w| w == spki));
    }

    #[test]
    fn bad_requests_are_refused() {
        let now = SystemTime::now();
        let (ca, _) = Authority::create("cluster.local", now).unwrap();
        assert!(matches!(
            ca.certify("not a csr", &web(), now),
            Err(Error::Csr(_))
        ));
        let key = KeyPair::generate().unwrap();
        let odd = Identity {
            namespace: "demo/../x".into(),
            service_account: "web".into(),
        };
        assert!(matches!(
            ca.certify(&csr(&key, vec![]), &odd, now),
            Err(Error::Name(_))
        ));
        // A CSR whose signature does not match its key.
        let good = csr(&key, vec![]);
        let mut lines: Vec<String> = good.lines().map(str::to_string).collect();
        let mid = lines.len() / 2;
        let flipped: String = lines[mid]
            .chars()
            .map(|c| {
                if c == 'A' {
                    'B'
                } else if c == 'B' {
                    'A'
                } else {
                    c
                }
            })
            .collect();
        lines[mid] = flipped;
        assert!(ca.certify(&lines.join("\n"), &web(), now).is_err());
    }

    /// The DER of the first PEM block in `pem`.
    fn rustls_pemfile_like(pem: &str) -> Vec<u8> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let block = format!("{pem}-----END CERTIFICATE-----\n");
        CertificateDer::from_pem_slice(block.as_bytes())
            .unwrap()
            .to_vec()
    }
}
