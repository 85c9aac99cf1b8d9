//! Tier 3, needs root: serving inside another network namespace, as the lab's control
//! plane does on the underlay. Fails, never skips, when not root. The namespace is held
//! by a parked thread (no bind mount), so it disappears with the test, also on panic.

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_inside_another_network_namespace() {
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

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    cfg.listen_in_netns = vec![NetnsListen {
        netns: ns.path.clone().into(),
        addr: "127.0.0.1:0".parse().unwrap(),
    }];
    let server = apiserver::start(cfg).await.unwrap();
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
    let jsonpath = "jsonpath={.endpoints[0].addresses[0]}:{.ports[0].port}";
    let args: Vec<&str> = kubectl
        .iter()
        .copied()
        .chain(["get", "endpointslice", "kubernetes", "-o", jsonpath])
        .collect();
    let out = in_netns(&ns, &args).await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), inside.to_string());
    server.shutdown();
}
