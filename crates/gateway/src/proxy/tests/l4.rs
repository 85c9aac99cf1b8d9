//! TLS (termination by SNI, ALPN, passthrough), TCP and UDP listeners, PROXY protocol.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::*;

/// A CA and leaf certificates it signs.
struct Pki {
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "kubewire test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_der: ca.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(c))
    }
}

fn certificate(leaf: &Leaf, hostnames: Vec<HostMatch>) -> Certificate {
    Certificate {
        hostnames,
        chain_pem: Arc::from(leaf.chain_pem.clone().into_bytes()),
        key_pem: Arc::from(leaf.key_pem.clone().into_bytes()),
    }
}

async fn tls_connect(
    pki: &Pki,
    port: u16,
    sni: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    pki.client(alpn)
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap()
}

/// A TLS server that says who it is and closes.
async fn tls_backend(pki: &Pki, name: &str) -> SocketAddr {
    let leaf = pki.leaf(&[name]);
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der.clone()],
        rustls::pki_types::PrivateKeyDer::try_from(
            rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes())
                .map(|k: rustls::pki_types::PrivatePkcs8KeyDer<'static>| {
                    k.secret_pkcs8_der().to_vec()
                })
                .unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.write_all(b"passthrough backend\n").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_terminates_by_sni_with_alpn_and_passes_through() {
    let pki = Pki::new();
    let a = backend("a").await;
    let default = pki.leaf(&["default.test"]);
    let wildcard = pki.leaf(&["*.example.com"]);
    let exact = pki.leaf(&["a.example.com"]);
    let pass = tls_backend(&pki, "pass.example.com").await;
    let port = free_port();
    let mut f = forward(vec![(1, Some(svc("a", vec![a.addr])))]);
    f.request_headers.set = vec![(
        HeaderName::from_static("x-proto"),
        Template(vec![Piece::Protocol]),
    )];
    let config = Config {
        listeners: vec![Listener {
            port,
            public_port: port,
            kind: ListenerKind::Tls {
                passthrough: vec![SniRoute {
                    name: RouteName {
                        kind: "TLSRoute",
                        namespace: "default".into(),
                        name: "pass".into(),
                        rule: 0,
                    },
                    hostnames: vec![HostMatch::Exact("pass.example.com".into())],
                    backends: vec![WeightedBackend {
                        weight: 1,
                        backend: Some(svc("pass", vec![pass]).into()),
                    }],
                }],
                certificates: vec![
                    certificate(&default, vec![]),
                    certificate(
                        &wildcard,
                        vec![HostMatch::Wildcard {
                            suffix: ".example.com".into(),
                            one_label: false,
                        }],
                    ),
                    certificate(&exact, vec![HostMatch::Exact("a.example.com".into())]),
                ],
                hosts: HttpHosts {
                    hosts: vec![any_host(vec![route(prefix("/"), to(f))])],
                },
            },
            proxy_protocol: false,
        }],
    };
    let gw = Gateway::start(config, |_| {}).await;

    // The exact name's certificate, HTTP/1.1 by ALPN.
    let tls = tls_connect(&pki, port, "a.example.com", &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], exact.der);
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let got = collect(send.send_request(req("a.example.com", "/x")).await.unwrap()).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.seen("x-forwarded-proto"), Some("https"));
    assert_eq!(got.seen("x-proto"), Some("HTTP/1.1"));

    // The wildcard's, HTTP/2 by ALPN.
    let tls = tls_connect(&pki, port, "b.example.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(
        tls.get_ref().1.peer_certificates().unwrap()[0],
        wildcard.der
    );
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let r = Request::builder()
        .uri("https://b.example.com/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let got = collect(send.send_request(r).await.unwrap()).await;
    assert_eq!(got.seen("x-proto"), Some("HTTP/2"));
    // On that connection, a host the same certificate serves is routed; one another
    // certificate serves is misdirected (421), as Gateway API's
    // GatewayHTTPSListenerDetectMisdirectedRequests asks.
    for (host, want) in [("c.example.com", 200), ("a.example.com", 421)] {
        let r = Request::builder()
            .uri(format!("https://{host}/h2"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let got = collect(send.send_request(r).await.unwrap()).await;
        assert_eq!(got.status, want, "{host}");
    }

    // Any other name gets the default certificate.
    let tls = tls_connect(&pki, port, "default.test", &[]).await;
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], default.der);

    // Passthrough: the backend's own certificate, end to end.
    let mut tls = tls_connect(&pki, port, "pass.example.com", &[]).await;
    let mut said = String::new();
    tls.read_to_string(&mut said).await.unwrap();
    assert_eq!(said, "passthrough backend\n");
    // A half-closed passthrough connection would hold the drain below.
    drop(tls);

    // curl, a client nobody here wrote, over HTTP/2 with the CA.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem_of(&pki.ca_der)).unwrap();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "-",
            "-w",
            "%{http_version}",
            "--cacert",
        ])
        .arg(&ca)
        .args(["--resolve", &format!("c.example.com:{port}:127.0.0.1")])
        .arg(format!("https://c.example.com:{port}/curl"))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("h:x-proto=HTTP/2"), "{stdout}");
    assert!(stdout.ends_with('2'), "{stdout}");

    // TLS 1.1 is refused.
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-tls1_1",
            "-servername",
            "a.example.com",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "TLS 1.1 handshake succeeded");
    gw.stop().await;
}

fn pem_of(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A TCP server that sends back what it gets, after the PROXY header when `proxied`
/// (whose source address it reports first).
async fn tcp_echo(proxied: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                if proxied {
                    let src = crate::proxy::l4::read_proxy_header(&mut s)
                        .await
                        .unwrap()
                        .unwrap();
                    s.write_all(format!("from {src}\n").as_bytes())
                        .await
                        .unwrap();
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_and_udp_listeners_with_proxy_protocol() {
    let echo = tcp_echo(false).await;
    let proxied_echo = tcp_echo(true).await;
    let udp_echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let udp_addr = udp_echo.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        loop {
            let (n, from) = udp_echo.recv_from(&mut buf).await.unwrap();
            udp_echo.send_to(&buf[..n], from).await.unwrap();
        }
    });
    let a = backend("a").await;
    let (tcp_port, udp_port, http_port) = (free_port(), free_port(), free_port());
    let wb = |b: Backend| {
        vec![WeightedBackend {
            weight: 1,
            backend: Some(b.into()),
        }]
    };
    let config = Config {
        listeners: vec![
            Listener {
                port: tcp_port,
                public_port: tcp_port,
                kind: ListenerKind::Tcp(wb(svc("echo", vec![echo]))),
                proxy_protocol: false,
            },
            Listener {
                port: udp_port,
                public_port: udp_port,
                kind: ListenerKind::Udp(wb(svc("udp", vec![udp_addr]))),
                proxy_protocol: false,
            },
            Listener {
                proxy_protocol: true,
                ..http_listener(
                    http_port,
                    vec![any_host(vec![route(
                        prefix("/"),
                        to(forward(vec![(1, Some(svc("a", vec![a.addr])))])),
                    )])],
                )
            },
        ],
    };
    let gw = Gateway::start(config, |_| {}).await;

    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    s.write_all(b"over tcp").await.unwrap();
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"over tcp");
    // An open TCP connection would hold the drain below for --drain-timeout.
    drop(s);

    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(("127.0.0.1", udp_port)).await.unwrap();
    let mut got = [0u8; 64];
    for payload in [&b"one"[..], b"two"] {
        c.send(payload).await.unwrap();
        let n = tokio::time::timeout(PATIENCE, c.recv(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got[..n], payload);
    }

    // PROXY protocol in: the client is who the header says.
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
    let client: SocketAddr = "192.0.2.55:1234".parse().unwrap();
    s.write_all(&crate::proxy::l4::proxy_header(
        client,
        "192.0.2.1:80".parse().unwrap(),
    ))
    .await
    .unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.contains("h:x-forwarded-for=192.0.2.55\n"), "{out}");
    // A connection without the header is closed unanswered.
    let mut s = TcpStream::connect(("127.0.0.1", http_port)).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    assert!(out.is_empty());
    gw.stop().await;

    // PROXY protocol out, to a TCP backend.
    let config = Config {
        listeners: vec![Listener {
            port: tcp_port,
            public_port: tcp_port,
            kind: ListenerKind::Tcp(wb(svc("echo", vec![proxied_echo]))),
            proxy_protocol: false,
        }],
    };
    let gw = Gateway::start(config, |o| o.proxy_protocol_out = true).await;
    let mut s = TcpStream::connect(("127.0.0.1", tcp_port)).await.unwrap();
    let me = s.local_addr().unwrap();
    s.write_all(b"x").await.unwrap();
    let expect = format!("from {me}\nx");
    let mut buf = vec![0u8; expect.len()];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(String::from_utf8(buf).unwrap(), expect);
    drop(s);
    gw.stop().await;
}

/// An HTTPS backend (HTTP/1.1) with a certificate for `name` from `pki`.
async fn https_backend(pki: &Pki, name: &str) -> SocketAddr {
    use rustls::pki_types::pem::PemObject as _;
    let leaf = pki.leaf(&[name]);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let svc = hyper::service::service_fn(|req| async {
                    let (tx, _) = tokio::sync::mpsc::unbounded_channel();
                    let r = super::answer(
                        "tls",
                        req,
                        Arc::new(tokio::sync::Semaphore::new(0)),
                        tx,
                        Arc::default(),
                    );
                    Ok::<_, std::convert::Infallible>(r.await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tls_to_backends_verified_against_the_policys_ca() {
    let pki = Pki::new();
    let addr = https_backend(&pki, "backend.example").await;
    let port = free_port();
    let with_tls = |hostname: &str, ca: &Pki| {
        let mut b = svc("secure", vec![addr]);
        b.tls = Some(BackendTls {
            hostname: hostname.into(),
            ca_pem: vec![Arc::from(pem_of(&ca.ca_der).into_bytes())],
        });
        single(port, forward(vec![(1, Some(b))]))
    };
    let gw = Gateway::start(with_tls("backend.example", &pki), |_| {}).await;
    let got = get(port, "web", "/over-tls").await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.field("backend"), Some("tls"));
    assert_eq!(got.field("path"), Some("/over-tls"));
    // The wrong name, or a CA that did not sign it: no connection, 503.
    gw.set(with_tls("other.example", &pki));
    wait_for(|| async { get(port, "web", "/").await.status == 503 }).await;
    gw.set(with_tls("backend.example", &Pki::new()));
    wait_for(|| async { get(port, "web", "/").await.status == 503 }).await;
    gw.stop().await;
}
