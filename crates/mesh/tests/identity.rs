//! The identity issuer, black box: the lab's API server over TLS reviews the tokens,
//! `openssl` makes the key and the CSR, `curl` asks for the certificate, and `openssl`
//! checks what came back (SPIFFE ID, chain, key, lifetime). Needs `openssl` and `curl`.
//! (Two worker threads: the test blocks on those tools while the issuer serves.)

#![allow(clippy::disallowed_methods)] // runs openssl and curl

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use mesh::identity::{self, Args, server};
use serde_json::{Value, json};

const SERVER_NAME: &str = "kubewire-identity.kube-system.svc";

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} must be installed for this test: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn create<K>(api: &Api<K>, v: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    api.create(&PostParams::default(), &serde_json::from_value(v).unwrap())
        .await
        .unwrap()
}

/// A token of demo/web bound to pod `pod`, for `audience`.
async fn token(client: &kube::Client, pod: &str, audience: &str) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "demo");
    let req: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": [audience],
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod}}}))
    .unwrap();
    sas.create_token_request("web", &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap_or_default()
}

/// `curl` posts `body` to the issuer, trusting `bundle`: the HTTP code and the JSON.
fn certify(dir: &Path, port: u16, bundle: &Path, body: &Value) -> (u16, Value) {
    let file = dir.join("body.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let out = run(
        "curl",
        &[
            "-sS",
            "--cacert",
            bundle.to_str().unwrap(),
            "--resolve",
            &format!("{SERVER_NAME}:{port}:127.0.0.1"),
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &format!("@{}", file.display()),
            "-w",
            "\n%{http_code}",
            &format!("https://{SERVER_NAME}:{port}/v1/certify"),
        ],
    );
    let (json, code) = out.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(json).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_token_and_a_csr_get_a_spiffe_certificate_for_its_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = apiserver::Config::new(dir.path().join("api"));
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let api_server = apiserver::start(cfg).await.unwrap();
    let client = k8s::client_from_kubeconfig(api_server.kubeconfig())
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    create(&namespaces, json!({"metadata": {"name": "demo"}})).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "demo");
    create(&sas, json!({"metadata": {"name": "web"}})).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "demo");
    create(
        &pods,
        json!({"metadata": {"name": "web-0"}, "spec": {"serviceAccountName": "web",
            "containers": [{"name": "web", "image": "nginx"}]}}),
    )
    .await;

    let args = Args {
        client: k8s::ClientArgs::default(),
        namespace: "kube-system".into(),
        secret: "kubewire-identity".into(),
        trust_domain: "cluster.local".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        server_name: SERVER_NAME.into(),
        certificate_lifetime: mesh::identity::CERTIFICATE_LIFETIME,
    };
    let authority = identity::load_or_create(&client, &args).await.unwrap();
    identity::publish_trust_bundle(&client, &args.namespace, authority.trust_bundle())
        .await
        .unwrap();
    // A second start keeps the anchor it stored.
    let again = identity::load_or_create(&client, &args).await.unwrap();
    assert_eq!(again.trust_bundle(), authority.trust_bundle());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let issuer = Arc::new(server::Issuer::new(authority, client.clone()));
    let serving = tokio::spawn(async move { server::serve(listener, issuer, SERVER_NAME).await });

    // The bundle as a proxy would read it, from the ConfigMap.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
    let bundle_pem = cms.get(identity::TRUST_ROOTS).await.unwrap().data.unwrap()
        [identity::TRUST_BUNDLE_KEY]
        .clone();
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&bundle, &bundle_pem).unwrap();

    // The proxy's key never leaves it: only the CSR is sent.
    let key = dir.path().join("key.pem");
    let csr = dir.path().join("csr.pem");
    let k = key.to_str().unwrap();
    run(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            k,
        ],
    );
    run(
        "openssl",
        &[
            "req",
            "-new",
            "-key",
            k,
            "-subj",
            "/CN=asks-for-admin",
            "-out",
            csr.to_str().unwrap(),
        ],
    );
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    let good = token(&client, "web-0", identity::AUDIENCE).await;
    let (code, answer) = certify(
        dir.path(),
        port,
        &bundle,
        &json!({"token": good, "csr": csr_pem}),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["identity"], "spiffe://cluster.local/ns/demo/sa/web");
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, answer["certificate"].as_str().unwrap()).unwrap();
    let c = chain.to_str().unwrap();
    let san = run(
        "openssl",
        &["x509", "-in", c, "-noout", "-ext", "subjectAltName"],
    );
    assert!(
        san.contains("URI:spiffe://cluster.local/ns/demo/sa/web"),
        "{san}"
    );
    assert!(!run("openssl", &["x509", "-in", c, "-noout", "-subject"]).contains("asks-for-admin"));
    run(
        "openssl",
        &["verify", "-CAfile", bundle.to_str().unwrap(), c],
    );
    assert_eq!(
        run("openssl", &["x509", "-in", c, "-noout", "-pubkey"]),
        run("openssl", &["pkey", "-in", k, "-pubout"]),
        "the certificate is for the CSR's key"
    );
    // 24 hours: still valid in 23 h 55 min, not in 24 h 5 min.
    run(
        "openssl",
        &["x509", "-in", c, "-noout", "-checkend", "86100"],
    );
    let expired = Command::new("openssl")
        .args(["x509", "-in", c, "-noout", "-checkend", "86700"])
        .status()
        .unwrap();
    assert!(!expired.success());

    // The proxy's client: its own key, the token from a file, renewal at 70%.
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &good).unwrap();
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let server = format!("{SERVER_NAME}:{port}");
    let certifier =
        identity::client::Certifier::new(&server, Some(local), &bundle_pem, token_file.clone())
            .unwrap();
    let (tx, mut rx) = tokio::sync::watch::channel(None);
    let renewing = tokio::spawn(certifier.run(tx));
    rx.wait_for(Option::is_some).await.unwrap();
    let creds = rx.borrow().clone().unwrap();
    assert_eq!(creds.identity, "spiffe://cluster.local/ns/demo/sa/web");
    assert_eq!(creds.chain.len(), 2, "the certificate, then the anchor");
    let life = creds.not_after.duration_since(creds.issued).unwrap();
    let renew = creds.renew_at().duration_since(creds.issued).unwrap();
    assert!(life > std::time::Duration::from_secs(86_000), "{life:?}");
    assert!(
        (renew.as_secs_f64() - life.as_secs_f64() * 0.7).abs() < 1.0,
        "renewal at {renew:?} of {life:?}"
    );
    drop(rx);
    renewing.await.unwrap();
    // An issuer it does not trust is not asked.
    let (other, _) =
        mesh::identity::Authority::create("cluster.local", std::time::SystemTime::now()).unwrap();
    let wrong =
        identity::client::Certifier::new(&server, Some(local), other.trust_bundle(), token_file)
            .unwrap();
    let e = wrong.certify().await.unwrap_err().to_string();
    assert!(e.contains("TLS"), "{e}");

    // Refusals: a token for the API server's audience, garbage, no CSR, a bad CSR.
    let api_token = token(
        &client,
        "web-0",
        "https://kubernetes.default.svc.cluster.local",
    )
    .await;
    let (code, answer) = certify(
        dir.path(),
        port,
        &bundle,
        &json!({"token": api_token, "csr": csr_pem}),
    );
    assert_eq!(code, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("audiences"),
        "{answer}"
    );
    let (code, _) = certify(
        dir.path(),
        port,
        &bundle,
        &json!({"token": "x.y.z", "csr": csr_pem}),
    );
    assert_eq!(code, 401);
    let (code, answer) = certify(dir.path(), port, &bundle, &json!({"token": good}));
    assert_eq!(
        (code, answer["error"].as_str()),
        (400, Some("csr is required"))
    );
    let (code, answer) = certify(
        dir.path(),
        port,
        &bundle,
        &json!({"token": good, "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}),
    );
    assert_eq!(code, 400, "{answer}");
    // The pod gone, its token proves nothing.
    pods.delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let (code, answer) = certify(
        dir.path(),
        port,
        &bundle,
        &json!({"token": good, "csr": csr_pem}),
    );
    assert_eq!(code, 401, "{answer}");
    serving.abort();
    api_server.shutdown();
}
