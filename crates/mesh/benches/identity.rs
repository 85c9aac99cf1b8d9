//! Certificate issuance, from the signature up: what one ECDSA P-256 signature and
//! verification cost (the floor: an issue signs once and checks the CSR's signature
//! once), what `Authority::certify` costs (CSR parsed and checked, certificate built and
//! signed), a bare TLS 1.3 handshake with the issuer (`GET /healthz` on a new
//! connection), and whole issues as a proxy asks (new connection, TLS, the TokenReview
//! against the lab's API server over TLS, the signature), one at a time (latency) and
//! from 16 clients at once (throughput). No root. `cargo bench -p mesh`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mesh::identity::client::Certifier;
use mesh::identity::{self, Authority, Identity, server};
use rcgen::{CertificateParams, KeyPair};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use serde_json::json;

const SERVER_NAME: &str = "kubewire-identity.kube-system.svc";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn per_op(n: u32, mut f: impl FnMut()) -> Duration {
    // Warm up, then the median of 5 runs of n.
    for _ in 0..n / 10 {
        f();
    }
    let mut runs: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / n
        })
        .collect();
    runs.sort();
    runs[2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    println!("== the floor: one ECDSA P-256 (SHA-256) signature and one verification (ring)");
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("key");
    let msg = [7u8; 512];
    let sig = kp.sign(&rng, &msg).expect("sign");
    let sign = per_op(2000, || {
        kp.sign(&rng, &msg).expect("sign");
    });
    let public = ring::signature::UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        ring::signature::KeyPair::public_key(&kp).as_ref().to_vec(),
    );
    let verify = per_op(2000, || {
        public.verify(&msg, sig.as_ref()).expect("verify");
    });
    println!(
        "sign {}   verify {}   together {}",
        us(sign),
        us(verify),
        us(sign + verify)
    );

    println!("\n== Authority::certify: CSR parsed and its signature checked, certificate signed");
    let (ca, _) = Authority::create("cluster.local", SystemTime::now()).expect("anchor");
    let key = KeyPair::generate().expect("key");
    let csr = CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .expect("csr");
    let id = Identity {
        namespace: "demo".into(),
        service_account: "web".into(),
    };
    let certify = per_op(2000, || {
        ca.certify(&csr, &id, SystemTime::now()).expect("certify");
    });
    println!(
        "certify {}   ({:.1}x the floor)",
        us(certify),
        certify.as_secs_f64() / (sign + verify).as_secs_f64()
    );

    rt.block_on(end_to_end());
}

async fn end_to_end() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut cfg = apiserver::Config::new(dir.path().join("api"));
    cfg.listen = vec!["127.0.0.1:0".parse().expect("an address")];
    let api = apiserver::start(cfg).await.expect("the API server");
    let client = k8s::client_from_kubeconfig(api.kubeconfig())
        .await
        .expect("a client");
    let post = |path: &str, body: serde_json::Value| {
        let client = client.clone();
        let path = path.to_string();
        async move {
            let req = http::Request::post(path)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).expect("json"))
                .expect("a request");
            client
                .request::<serde_json::Value>(req)
                .await
                .expect("the API server answers")
        }
    };
    post("/api/v1/namespaces", json!({"metadata": {"name": "demo"}})).await;
    post(
        "/api/v1/namespaces/demo/serviceaccounts",
        json!({"metadata": {"name": "web"}}),
    )
    .await;
    post(
        "/api/v1/namespaces/demo/pods",
        json!({"metadata": {"name": "web-0"}, "spec": {"serviceAccountName": "web",
            "containers": [{"name": "web", "image": "nginx"}]}}),
    )
    .await;
    let answer = post(
        "/api/v1/namespaces/demo/serviceaccounts/web/token",
        json!({"spec": {"audiences": [identity::AUDIENCE],
            "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-0"}}}),
    )
    .await;
    let token = answer["status"]["token"]
        .as_str()
        .expect("a token")
        .to_string();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("the token file");

    let args = identity::Args {
        client: k8s::ClientArgs::default(),
        namespace: "kube-system".into(),
        secret: "kubewire-identity".into(),
        trust_domain: "cluster.local".into(),
        listen: "127.0.0.1:0".parse().expect("an address"),
        server_name: SERVER_NAME.into(),
        certificate_lifetime: identity::CERTIFICATE_LIFETIME,
    };
    let authority = identity::load_or_create(&client, &args)
        .await
        .expect("the anchor");
    let bundle = authority.trust_bundle().to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("an address");
    let issuer = Arc::new(server::Issuer::new(authority, client.clone()));
    tokio::spawn(async move { server::serve(listener, issuer, SERVER_NAME).await });
    let server = format!("{SERVER_NAME}:{}", addr.port());

    println!("\n== one TLS 1.3 handshake with the issuer and GET /healthz, new connection each");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(bundle.as_bytes()) {
        roots.add(c.expect("a certificate")).expect("a root");
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    ));
    let mut handshakes = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("a name");
        let stream = tls.connect(name, tcp).await.expect("handshake");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("http");
        tokio::spawn(conn);
        let req = http::Request::get("/healthz")
            .header("host", SERVER_NAME)
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("a request");
        sender.send_request(req).await.expect("an answer");
        handshakes.push(t.elapsed());
    }
    handshakes.sort();
    println!(
        "p50 {}   p99 {}",
        us(percentile(&handshakes, 0.5)),
        us(percentile(&handshakes, 0.99))
    );

    println!("\n== whole issues (new connection, TLS, TokenReview over TLS, signature)");
    let certifier =
        Certifier::new(&server, Some(addr), &bundle, token_file.clone()).expect("certifier");
    let mut lat = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        certifier.certify().await.expect("certified");
        lat.push(t.elapsed());
    }
    lat.sort();
    println!(
        "one at a time: p50 {}   p99 {}",
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99))
    );
    let clients = 16;
    let window = Duration::from_secs(3);
    let deadline = Instant::now() + window;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let c =
            Certifier::new(&server, Some(addr), &bundle, token_file.clone()).expect("certifier");
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            while Instant::now() < deadline {
                c.certify().await.expect("certified");
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("a client");
    }
    println!(
        "{clients} clients for {}s: {total} certificates, {:.0} per second",
        window.as_secs(),
        f64::from(total) / window.as_secs_f64()
    );
    api.shutdown();
}
