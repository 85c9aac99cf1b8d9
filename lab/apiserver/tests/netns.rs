//! Tier 3, needs root: serving inside another network namespace, as the lab's control
//! plane does on the underlay. Fails, never skips, when not root. The namespace is held
//! by a parked thread (no bind mount), so it disappears with the test, also on panic.

use std::path::Path;
use std::time::Duration;

use apiserver::{Config, NetnsListen};
use nix::sched::CloneFlags;

/// Holds an anonymous network namespace until dropped.
struct Netns {
    path: String,
    _release: std::sync::mpsc::Sender<()>,
}

fn new_netns() -> Netns {
    let (path_tx, path_rx) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let path = format!(
            "/proc/{}/task/{}/ns/net",
            std::process::id(),
            nix::unistd::gettid()
        );
        path_tx.send(path).unwrap();
        // Returns (and the namespace goes) when the sender is dropped.
        let _ = released.recv();
    });
    Netns {
        path: path_rx.recv().unwrap(),
        _release: release,
    }
}

async fn in_netns(ns: &Netns, cmd: &[&str]) -> std::process::Output {
    tokio::process::Command::new("nsenter")
        .arg(format!("--net={}", ns.path))
        .args(cmd)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("nsenter")
}

/// A new network namespace with its loopback up, and a server on the host's loopback
/// and on the namespace's (its second address). Needs root: fails, not skips, without.
async fn server_in_new_netns(data: &Path) -> (Netns, apiserver::Server) {
    assert!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0,
        "this test makes a network namespace and needs root; it fails rather than skips"
    );
    let ns = new_netns();
    let up = in_netns(&ns, &["ip", "link", "set", "lo", "up"]).await;
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let mut cfg = Config::new(data);
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.listen_in_netns = vec![NetnsListen {
        netns: ns.path.clone().into(),
        addr: "127.0.0.1:0".parse().unwrap(),
    }];
    let server = apiserver::start(cfg).await.unwrap();
    (ns, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_inside_another_network_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (ns, server) = server_in_new_netns(&dir.path().join("data")).await;
    let inside = server.addresses()[1];

    let kc = apiserver::client_kubeconfig(
        &dir.path().join("data"),
        &format!("https://{inside}"),
        "system:node:node-1",
        &["system:nodes"],
    )
    .unwrap();
    let kc_path = dir.path().join("node.kubeconfig");
    std::fs::write(&kc_path, kc).unwrap();
    let cache = dir.path().join("cache");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        in_netns(
            &ns,
            &[
                "kubectl",
                "--kubeconfig",
                kc_path.to_str().unwrap(),
                "--cache-dir",
                cache.to_str().unwrap(),
                "get",
                "svc",
                "kubernetes",
            ],
        ),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10.96.0.1"), "{stdout}");
    // The `kubernetes` service's endpoint is the address inside the namespace.
    let kubectl = [
        "kubectl",
        "--kubeconfig",
        kc_path.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    // (A node may read Endpoints by name, not EndpointSlices: the Node authorizer's rules.)
    let jsonpath = "jsonpath={.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}";
    let args: Vec<&str> = kubectl
        .iter()
        .copied()
        .chain(["get", "endpoints", "kubernetes", "-o", jsonpath])
        .collect();
    let out = in_netns(&ns, &args).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), inside.to_string());
    let args: Vec<&str> = kubectl
        .iter()
        .copied()
        .chain(["get", "endpointslice", "kubernetes"])
        .collect();
    let out = in_netns(&ns, &args).await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            r#"endpointslices.discovery.k8s.io "kubernetes" is forbidden: User "system:node:node-1" cannot get resource "endpointslices" in API group "discovery.k8s.io" in the namespace "default""#
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown();
}

/// Binds a listener inside `ns` (a socket keeps the namespace it was made in).
fn listen_in(ns: &Netns) -> std::net::TcpListener {
    let path = ns.path.clone();
    std::thread::spawn(move || {
        let f = std::fs::File::open(path).unwrap();
        nix::sched::setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    })
    .join()
    .unwrap()
}

/// A fake kubelet API: HTTPS with a self-signed certificate, requiring a client
/// certificate signed by `ca_pem`. `GET /containerLogs/...` answers with the path and
/// query it got; with `follow=true` it streams three lines, 200 ms apart, then ends.
/// Sends the subject of every client certificate it saw on `seen`.
async fn fake_kubelet(
    listener: std::net::TcpListener,
    ca_pem: String,
    seen: tokio::sync::mpsc::UnboundedSender<(String, bool)>,
) {
    use http_body_util::StreamBody;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["node-1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg));
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let (tcp, _) = listener.accept().await.unwrap();
        let acceptor = acceptor.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            // The client certificate's DER holds its common name as plain bytes.
            let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
            let cn = String::from_utf8_lossy(&der).to_string();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let path = req.uri().to_string();
                    let follow = req.uri().query().unwrap_or("").contains("follow=true");
                    let _ = seen.send((cn.clone(), follow));
                    async move {
                        let (tx, rx) = tokio::sync::mpsc::channel::<
                            Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
                        >(4);
                        tokio::spawn(async move {
                            if follow {
                                for i in 1..=3 {
                                    let line = format!("line {i} of {path}\n");
                                    if tx
                                        .send(Ok(http_body::Frame::data(line.into())))
                                        .await
                                        .is_err()
                                    {
                                        return;
                                    }
                                    tokio::time::sleep(Duration::from_millis(200)).await;
                                }
                            } else {
                                let line = format!("hello from {path}\n");
                                let _ = tx.send(Ok(http_body::Frame::data(line.into()))).await;
                            }
                        });
                        let body = StreamBody::new(tokio_stream_from(rx));
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "text/plain")
                                .body(body)
                                .unwrap(),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// An mpsc receiver as a `Stream` (without pulling in tokio-stream).
fn tokio_stream_from<T>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_are_proxied_to_the_kubelet_inside_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ns, server) = server_in_new_netns(&data).await;
    let inside = server.addresses()[1];

    // The kubelet listens inside the namespace only: the API server must dial from there.
    let kubelet_listener = listen_in(&ns);
    let kubelet_port = kubelet_listener.local_addr().unwrap().port();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let ca = std::fs::read_to_string(data.join("ca.crt")).unwrap();
    let kubelet = tokio::spawn(fake_kubelet(kubelet_listener, ca, seen_tx));

    let kc = apiserver::client_kubeconfig(
        &data,
        &format!("https://{inside}"),
        "kubewire-admin",
        &["system:masters"],
    )
    .unwrap();
    let kc_path = dir.path().join("admin-inside.kubeconfig");
    std::fs::write(&kc_path, kc).unwrap();
    let cache = dir.path().join("cache");
    let kubectl = |args: &[&str]| {
        let mut v = vec![
            "kubectl".to_string(),
            "--kubeconfig".into(),
            kc_path.to_str().unwrap().into(),
            "--cache-dir".into(),
            cache.to_str().unwrap().into(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let ns = &ns;
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = tokio::time::timeout(Duration::from_secs(60), in_netns(ns, &a))
                .await
                .unwrap();
            let o = (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
                String::from_utf8_lossy(&out.stderr).to_string(),
            );
            eprintln!("$ {}\n{}{}", a.join(" "), o.1, o.2);
            o
        }
    };
    let manifest = dir.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: v1
kind: Node
metadata:
  name: node-1
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: default
spec:
  nodeName: node-1
  containers:
  - name: app
    image: nginx
"#,
    )
    .unwrap();
    let (ok, _, err) = run(kubectl(&["apply", "-f", manifest.to_str().unwrap()])).await;
    assert!(ok, "{err}");
    // The node reports its address and kubelet port in its status, as a kubelet does.
    let status = format!(
        r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"127.0.0.1"}}],"daemonEndpoints":{{"kubeletEndpoint":{{"Port":{kubelet_port}}}}}}}}}"#
    );
    let (ok, _, err) = run(kubectl(&[
        "patch",
        "node",
        "node-1",
        "--subresource=status",
        "--type=merge",
        "-p",
        &status,
    ]))
    .await;
    assert!(ok, "{err}");

    let (ok, out, err) = run(kubectl(&["logs", "web", "--tail=5", "--timestamps"])).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("hello from /containerLogs/default/web/app?")
            && out.contains("tailLines=5")
            && out.contains("timestamps=true"),
        "{out}"
    );
    let (cn, follow) = seen.recv().await.unwrap();
    assert!(cn.contains("kube-apiserver-kubelet-client"), "{cn}");
    assert!(!follow);

    // -f streams until the kubelet ends the stream.
    let (ok, out, err) = run(kubectl(&["logs", "-f", "web"])).await;
    assert!(ok, "{err}");
    for i in 1..=3 {
        assert!(
            out.contains(&format!(
                "line {i} of /containerLogs/default/web/app?follow=true"
            )),
            "{out}"
        );
    }
    assert!(seen.recv().await.unwrap().1);

    // A container the pod does not have: kube-apiserver's 400.
    let (ok, _, err) = run(kubectl(&["logs", "web", "-c", "nope"])).await;
    assert!(!ok);
    assert!(
        err.contains("container nope is not valid for pod web"),
        "{err}"
    );
    kubelet.abort();
    server.shutdown();
}
