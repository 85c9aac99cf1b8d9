//! TLS listeners: passthrough by the ClientHello's SNI (read here, with strict bounds,
//! without terminating), otherwise termination with the certificate chosen by SNI and
//! HTTP/1.1 or HTTP/2 by ALPN. rustls with the ring provider and its safe defaults (TLS
//! 1.2 and 1.3, forward-secret AEAD suites only).

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http::HttpTable;
use super::l4::Backends;
use super::upstream::{BackendKey, Upstreams};
use super::{ConnCtx, serve_http};
use crate::config::{Certificate, HostMatch, SniRoute};

/// A ClientHello longer than this (over several records) is refused.
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// A TLS listener, compiled.
#[derive(Debug)]
pub(crate) struct TlsRt {
    passthrough: Vec<(Vec<HostMatch>, Arc<Backends>)>,
    /// `None` when no certificate loads: only passthrough is served.
    server: Option<Arc<rustls::ServerConfig>>,
    /// The certificates the server config resolves from.
    certs: Option<Arc<Certs>>,
    pub hosts: Arc<HttpTable>,
}

impl TlsRt {
    pub(crate) fn new(
        passthrough: &[SniRoute],
        certificates: &[Certificate],
        hosts: HttpTable,
        upstreams: &Upstreams,
        used: &mut HashSet<BackendKey>,
    ) -> Self {
        let passthrough = passthrough
            .iter()
            .map(|r| {
                (
                    r.hostnames.clone(),
                    Arc::new(Backends::new(&r.backends, upstreams, used)),
                )
            })
            .collect();
        let certs = (!certificates.is_empty()).then(|| Arc::new(Certs::new(certificates)));
        let server = if let Some(certs) = &certs {
            let certs = Arc::clone(certs);
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map(|b| {
                let mut c = b.with_no_client_auth().with_cert_resolver(certs);
                c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                Arc::new(c)
            })
            .map_err(|e| tracing::error!(error = %e, "TLS configuration"))
            .ok()
        } else {
            None
        };
        Self {
            passthrough,
            server,
            certs,
            hosts: Arc::new(hosts),
        }
    }

    /// The passthrough route for `sni`, by host specificity.
    fn passthrough_for(&self, sni: &str) -> Option<&Arc<Backends>> {
        self.passthrough
            .iter()
            .enumerate()
            .filter_map(|(i, (hosts, b))| {
                hosts
                    .iter()
                    .filter_map(|h| host_rank(h, sni))
                    .min()
                    .map(|r| (r, i, b))
            })
            .min_by_key(|(r, i, _)| (*r, *i))
            .map(|(_, _, b)| b)
    }
}

/// How well `pattern` matches `host` (lower is better), `None` when it does not.
fn host_rank(pattern: &HostMatch, host: &str) -> Option<(u8, usize)> {
    match pattern {
        HostMatch::Exact(h) => h.eq_ignore_ascii_case(host).then_some((0, 0)),
        HostMatch::Wildcard { suffix, one_label } => {
            let suffix = suffix.to_ascii_lowercase();
            (host.len() > suffix.len()
                && host.ends_with(suffix.as_str())
                && (!*one_label || !host[..host.len() - suffix.len()].contains('.')))
            .then_some((1, usize::MAX - suffix.len()))
        }
        HostMatch::Any => Some((2, 0)),
    }
}

/// The certificates of a TLS listener and the one its connection's SNI chose.
#[derive(Debug)]
pub(crate) struct SniCert {
    certs: Arc<Certs>,
    chosen: Arc<CertifiedKey>,
}

impl SniCert {
    /// Whether `host` would be served another certificate than the connection's: a
    /// request for it on this connection is misdirected.
    pub(crate) fn misdirected(&self, host: &str) -> bool {
        self.certs
            .for_name(Some(host))
            .is_some_and(|k| !Arc::ptr_eq(&k, &self.chosen))
    }
}

/// Certificates by SNI: exact name, then longest wildcard, then the default.
#[derive(Debug)]
pub(crate) struct Certs {
    entries: Vec<(Vec<HostMatch>, Arc<CertifiedKey>)>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certs {
    fn new(certificates: &[Certificate]) -> Self {
        let provider = rustls::crypto::ring::default_provider();
        let mut certs = Certs {
            entries: Vec::new(),
            exact: HashMap::new(),
            default: None,
        };
        for c in certificates {
            let key = match load(c, &provider) {
                Ok(k) => Arc::new(k),
                Err(e) => {
                    tracing::warn!(hostnames = ?c.hostnames, error = %e, "a certificate does not load; skipped");
                    continue;
                }
            };
            if c.hostnames.is_empty() {
                certs.default.get_or_insert_with(|| Arc::clone(&key));
            }
            for h in &c.hostnames {
                if let HostMatch::Exact(name) = h {
                    certs
                        .exact
                        .entry(name.to_ascii_lowercase())
                        .or_insert_with(|| Arc::clone(&key));
                }
            }
            certs.entries.push((c.hostnames.clone(), key));
        }
        certs
    }

    fn for_name(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&sni) {
            return Some(Arc::clone(k));
        }
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, (hosts, k))| {
                hosts
                    .iter()
                    .filter_map(|h| host_rank(h, &sni))
                    .min()
                    .map(|r| (r, i, k))
            })
            .filter(|(r, _, _)| r.0 == 1)
            .min_by_key(|(r, i, _)| (*r, *i))
            .map(|(_, _, k)| Arc::clone(k))
            .or_else(|| self.default.clone())
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.for_name(hello.server_name())
    }
}

fn load(
    c: &Certificate,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, Box<dyn std::error::Error>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(&c.chain_pem).collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err("no certificate in the chain".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&c.key_pem)?;
    Ok(CertifiedKey::from_der(chain, key, provider)?)
}

/// What the start of a TLS connection said.
#[derive(Debug, PartialEq)]
pub(crate) enum Hello {
    /// A ClientHello, with its SNI host name if it has one.
    Tls(Option<String>),
    /// Not a TLS handshake.
    NotTls,
}

/// Reads the ClientHello (all records of it) from `s`; returns the bytes read, to be
/// replayed to rustls or the passthrough backend.
async fn read_client_hello(s: &mut TcpStream) -> io::Result<(Vec<u8>, Hello)> {
    let mut raw = Vec::new();
    let mut handshake = Vec::new();
    loop {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await?;
        raw.extend_from_slice(&header);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        // Content type 22 (handshake); a record holds at most 2^14 bytes.
        if header[0] != 22 || len == 0 || len > 16384 {
            return Ok((raw, Hello::NotTls));
        }
        let start = raw.len();
        raw.resize(start + len, 0);
        s.read_exact(&mut raw[start..]).await?;
        handshake.extend_from_slice(&raw[start..]);
        if handshake.len() >= 4 {
            let need = 4
                + (usize::from(handshake[1]) << 16
                    | usize::from(handshake[2]) << 8
                    | usize::from(handshake[3]));
            if need > MAX_CLIENT_HELLO {
                return Ok((raw, Hello::NotTls));
            }
            if handshake.len() >= need {
                let hello =
                    parse_client_hello(&handshake[..need]).map_or(Hello::NotTls, Hello::Tls);
                return Ok((raw, hello));
            }
        }
        if raw.len() > MAX_CLIENT_HELLO {
            return Ok((raw, Hello::NotTls));
        }
    }
}

/// A bounds-checked reader over a byte slice.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
    /// A vector with an 8- or 16-bit length.
    fn vec8(&mut self) -> Option<Cursor<'a>> {
        let n = self.u8()?;
        self.take(n).map(Cursor)
    }
    fn vec16(&mut self) -> Option<Cursor<'a>> {
        let n = self.u16()?;
        self.take(n).map(Cursor)
    }
}

/// The SNI host name of a ClientHello handshake message (RFC 8446 4.1.2, RFC 6066 3);
/// `None` when it is not a well-formed ClientHello.
pub(crate) fn parse_client_hello(msg: &[u8]) -> Option<Option<String>> {
    let mut c = Cursor(msg);
    if c.u8()? != 1 {
        return None;
    }
    let len = c.take(3)?;
    let len = usize::from(len[0]) << 16 | usize::from(len[1]) << 8 | usize::from(len[2]);
    let mut body = Cursor(c.take(len)?);
    body.take(2 + 32)?; // legacy_version, random
    body.vec8()?; // legacy_session_id
    body.vec16()?; // cipher_suites
    body.vec8()?; // legacy_compression_methods
    if body.0.is_empty() {
        return Some(None);
    }
    let mut exts = body.vec16()?;
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = exts.vec16()?;
        if ty != 0 {
            continue;
        }
        let mut list = data.vec16()?;
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let name = list.vec16()?;
            if kind == 0 {
                let name = std::str::from_utf8(name.0).ok()?;
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
                {
                    return None;
                }
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// Bytes already read, then the stream.
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// One connection on a TLS listener.
pub(crate) async fn connection(
    mut stream: TcpStream,
    t: Arc<TlsRt>,
    ctx: Arc<ConnCtx>,
    drain: watch::Receiver<bool>,
) {
    let timeout = ctx.shared.options.header_read_timeout;
    let (raw, hello) = match tokio::time::timeout(timeout, read_client_hello(&mut stream)).await {
        Ok(Ok(r)) => r,
        _ => return,
    };
    let Hello::Tls(sni) = hello else {
        tracing::debug!(remote = %ctx.remote, "not a TLS ClientHello; closed");
        return;
    };
    if let Some(backends) = sni.as_deref().and_then(|s| t.passthrough_for(s)) {
        super::l4::tcp_with_prefix(stream, &raw, ctx.remote, backends, &ctx.shared).await;
        return;
    }
    let Some(server) = &t.server else {
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(server));
    let tls = match tokio::time::timeout(timeout, acceptor.accept(Rewind::new(raw, stream))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(remote = %ctx.remote, error = %e, "TLS handshake");
            return;
        }
        Err(_) => return,
    };
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if let (Some(certs), Some(name)) = (&t.certs, sni.as_deref())
        && let Some(chosen) = certs.for_name(Some(name))
    {
        let _ = ctx.sni_cert.set(SniCert {
            certs: Arc::clone(certs),
            chosen,
        });
    }
    serve_http(tls, ctx, drain, h2).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::route::tests::Rng;

    /// A ClientHello as rustls writes it, captured through a pipe.
    fn hello_from_rustls(sni: &str) -> Vec<u8> {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn sni_from_a_real_client_hello() {
        let rec = hello_from_rustls("Passthrough.Example.com");
        assert_eq!(rec[0], 22);
        assert_eq!(
            parse_client_hello(&rec[5..]),
            Some(Some("passthrough.example.com".into()))
        );
    }

    #[test]
    fn mutated_client_hellos_never_panic() {
        let base = hello_from_rustls("a.example.com")[5..].to_vec();
        let mut rng = Rng(0x00c1_1e47);
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(3) {
                    0 => {
                        let i = rng.below(m.len());
                        m[i] = rng.next() as u8;
                    }
                    1 => m.truncate(rng.below(m.len() + 1)),
                    _ => {
                        let i = rng.below(m.len() + 1);
                        m.insert(i, rng.next() as u8);
                    }
                }
                if m.is_empty() {
                    break;
                }
            }
            let _ = parse_client_hello(&m);
        }
    }

    #[test]
    fn certificates_by_sni() {
        let cert = |names: &[&str]| {
            let k = rcgen::generate_simple_self_signed(
                names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
            .unwrap();
            k.cert.pem()
        };
        let make = |hosts: Vec<HostMatch>, name: &str| {
            let k = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
            Certificate {
                hostnames: hosts,
                chain_pem: Arc::from(k.cert.pem().into_bytes()),
                key_pem: Arc::from(k.signing_key.serialize_pem().into_bytes()),
            }
        };
        let _ = cert(&["x"]);
        let certs = Certs::new(&[
            make(vec![], "default"),
            make(
                vec![HostMatch::Wildcard {
                    suffix: ".example.com".into(),
                    one_label: false,
                }],
                "wild",
            ),
            make(vec![HostMatch::Exact("a.example.com".into())], "exact"),
        ]);
        let pick = |sni: Option<&str>| {
            let k = certs.for_name(sni).unwrap();
            if Arc::ptr_eq(&k, &certs.entries[0].1) {
                "default"
            } else if Arc::ptr_eq(&k, &certs.entries[1].1) {
                "wild"
            } else {
                "exact"
            }
        };
        assert_eq!(pick(Some("a.example.com")), "exact");
        assert_eq!(pick(Some("b.example.com")), "wild");
        assert_eq!(pick(Some("other.org")), "default");
        assert_eq!(pick(None), "default");
    }
}
