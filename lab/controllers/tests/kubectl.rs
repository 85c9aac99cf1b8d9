//! Tier 4, black box: the real `kubectl` (its `rollout status`, `get endpoints`,
//! `rollout undo`) against the embedded API server over TLS with the controllers
//! running and a fake kubelet.
//!
//! KUBECTL TEST: needs `kubectl` on PATH and FAILS, never skips, without it.

mod common;

use std::path::Path;

use common::*;
use serde_json::json;

async fn kubectl(dir: &Path, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(dir.join("kube-cache"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env("HOME", dir)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("kubectl must be installed for this test (it fails, not skips, without it)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "$ kubectl {}\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), stdout)
}

#[tokio::test]
async fn kubectl_rollout_status_endpoints_scale_and_undo() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = apiserver::Config::new(dir.path());
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    let server = apiserver::start(cfg).await.unwrap();
    let kc = server.kubeconfig().to_path_buf();
    let kubeconfig = kube::config::Kubeconfig::read_from(&kc).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let controllers = controllers::start(client.clone(), common::config());
    ready_node(&client, "node-1", json!({})).await;
    ready_node(&client, "node-2", json!({})).await;
    let _kubelet = fake_kubelet(&client);
    let k = |args: &'static [&'static str]| {
        let (d, kc) = (dir.path().to_path_buf(), kc.clone());
        async move { kubectl(&d, &kc, args).await }
    };

    assert!(
        k(&[
            "create",
            "deployment",
            "web",
            "--image=nginx",
            "--replicas=3",
            "--port=80"
        ])
        .await
        .0
    );
    let (ok, out) = k(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    let (_, out) = k(&["get", "deployment", "web", "--no-headers"]).await;
    assert!(out.split_whitespace().nth(1) == Some("3/3"), "{out}");

    assert!(k(&["expose", "deployment", "web", "--port=80"]).await.0);
    let ips = eventually("three endpoints", || async {
        let (_, out) = k(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .await;
        (out.split_whitespace().count() == 3).then_some(out)
    })
    .await;
    assert!(
        ips.split_whitespace().all(|ip| ip.starts_with("10.244.")),
        "{ips}"
    );

    assert!(k(&["scale", "deployment", "web", "--replicas=1"]).await.0);
    eventually("one endpoint", || async {
        let (_, out) = k(&[
            "get",
            "endpoints",
            "web",
            "-o",
            "jsonpath={.subsets[*].addresses[*].ip}",
        ])
        .await;
        (out.split_whitespace().count() == 1).then_some(())
    })
    .await;

    // Paused, a template change waits; resumed, it rolls out.
    assert!(k(&["rollout", "pause", "deployment/web"]).await.0);
    assert!(
        k(&["set", "image", "deployment/web", "nginx=busybox"])
            .await
            .0
    );
    let (ok, out) = k(&["rollout", "status", "deployment/web", "--timeout=2s"]).await;
    assert!(!ok, "a paused rollout does not finish: {out}");
    let (_, out) = k(&[
        "get",
        "rs",
        "-o",
        "jsonpath={.items[*].spec.template.spec.containers[0].image}",
    ])
    .await;
    assert!(
        !out.contains("busybox"),
        "no ReplicaSet for a paused template: {out}"
    );
    assert!(k(&["rollout", "resume", "deployment/web"]).await.0);
    let (ok, out) = k(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}");

    // A new image rolls out; undo brings the old one back.
    assert!(
        k(&["set", "image", "deployment/web", "nginx=httpd"])
            .await
            .0
    );
    let (ok, out) = k(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    let (_, out) = k(&["rollout", "history", "deployment/web"]).await;
    assert!(out.contains('2') && out.contains('3'), "{out}");
    assert!(k(&["rollout", "undo", "deployment/web"]).await.0);
    let (ok, out) = k(&["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(ok, "{out}");
    let image = eventually("busybox back", || async {
        let (_, out) = k(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].spec.containers[0].image}",
        ])
        .await;
        (out.trim() == "busybox").then_some(out)
    })
    .await;
    assert_eq!(image.trim(), "busybox");
    // StatefulSet and DaemonSet rollouts, as kubectl reads them. updateStrategy is
    // spelled out: kubectl refuses without it, and the lab's API server does not yet
    // default it (kube-apiserver does).
    let sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "redis"},
        "spec": {"replicas": 2, "serviceName": "redis", "selector": {"matchLabels": {"app": "redis"}},
            "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"app": "redis"}},
                "spec": {"containers": [{"name": "redis", "image": "redis"}]}}}});
    let ds = json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}}, "updateStrategy": {"type": "RollingUpdate"},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "a", "image": "kubewire"}]}}}});
    let file = dir.path().join("sets.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": [sts, ds]}).to_string(),
    )
    .unwrap();
    let (ok, _) = kubectl(dir.path(), &kc, &["apply", "-f", file.to_str().unwrap()]).await;
    assert!(ok);
    let (ok, out) = k(&["rollout", "status", "statefulset/redis", "--timeout=60s"]).await;
    assert!(
        ok && out.contains("rolling update complete 2 pods"),
        "{out}"
    );
    let (ok, out) = k(&["rollout", "status", "daemonset/agent", "--timeout=60s"]).await;
    assert!(ok && out.contains("successfully rolled out"), "{out}");
    let (_, out) = k(&["get", "pods", "-l", "app=redis", "-o", "name"]).await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["pod/redis-0", "pod/redis-1"]
    );

    controllers.shutdown().await;
    server.shutdown();
}
