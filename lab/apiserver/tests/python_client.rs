//! Tier 4, black box: the official Python `kubernetes` client (from PyPI, installed by
//! `scripts/deps.sh test` into target/python-clients) lists, creates, watches and gets
//! errors from the server over TLS, with the admin kubeconfig as it is written.
//!
//! These tests FAIL, never skip, when the client is missing.

use std::path::{Path, PathBuf};

mod common;

const SCRIPT: &str = r#"
import sys, threading
from kubernetes import client, config, watch

config.load_kube_config(sys.argv[1])
v1 = client.CoreV1Api()
ns = "py-client"

v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
assert ns in [n.metadata.name for n in v1.list_namespace().items]

svc = client.V1Service(
    metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
    spec=client.V1ServiceSpec(selector={"app": "web"}, ports=[client.V1ServicePort(port=80, target_port=8080)]),
)
created = v1.create_namespaced_service(ns, svc)
assert created.spec.cluster_ip.startswith("10."), created.spec.cluster_ip
print("clusterIP", created.spec.cluster_ip)

listed = v1.list_namespaced_service(ns, label_selector="app=web")
assert [s.metadata.name for s in listed.items] == ["web"]

try:
    v1.create_namespaced_service(ns, svc)
    raise SystemExit("duplicate create succeeded")
except client.exceptions.ApiException as e:
    assert e.status == 409, e.status
    print("duplicate", e.status, e.reason)

try:
    v1.read_namespaced_service("nope", ns)
    raise SystemExit("read of a missing service succeeded")
except client.exceptions.ApiException as e:
    assert e.status == 404, e.status

# Watch from the list's resourceVersion; an object created meanwhile arrives as ADDED.
start = v1.list_namespaced_config_map(ns).metadata.resource_version
def create():
    v1.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm1"), data={"a": "b"}))
threading.Timer(0.5, create).start()
seen = None
w = watch.Watch()
for event in w.stream(v1.list_namespaced_config_map, ns, resource_version=start, timeout_seconds=20):
    if event["object"].metadata.name == "cm1":
        seen = event["type"]
        w.stop()
assert seen == "ADDED", seen
print("watched", seen)

apps = client.AppsV1Api()
dep = client.V1Deployment(
    metadata=client.V1ObjectMeta(name="web"),
    spec=client.V1DeploymentSpec(
        replicas=3,
        selector=client.V1LabelSelector(match_labels={"app": "web"}),
        template=client.V1PodTemplateSpec(
            metadata=client.V1ObjectMeta(labels={"app": "web"}),
            spec=client.V1PodSpec(containers=[client.V1Container(name="nginx", image="nginx")]),
        ),
    ),
)
apps.create_namespaced_deployment(ns, dep)
assert apps.read_namespaced_deployment("web", ns).spec.replicas == 3
v1.delete_namespaced_service("web", ns)
assert v1.list_namespaced_service(ns).items == []
print("OK")
"#;

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/python-clients/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run `scripts/deps.sh test` (make test does) to install the Python kubernetes client",
        venv.display()
    );
    venv
}

#[tokio::test]
async fn python_client_lists_creates_watches_and_gets_errors() {
    let python = python();
    let server = common::start().await;
    let (dir, kubeconfig) = (&server.dir, &server.kubeconfig);
    let out = tokio::process::Command::new(&python)
        .arg("-c")
        .arg(SCRIPT)
        .arg(kubeconfig)
        .env("HOME", dir.path())
        .output()
        .await
        .unwrap();
    drop(server);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("duplicate 409")
            && stdout.contains("watched ADDED")
            && stdout.ends_with("OK\n"),
        "{stdout}"
    );
}
