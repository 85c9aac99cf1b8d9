//! Shared harness: the embedded API server's router as an in-process tower service (no
//! sockets, no root), the controllers running on it, and a fake kubelet that reports pod
//! status through the API.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub struct Harness {
    _dir: tempfile::TempDir,
    pub client: Client,
    pub controllers: Option<controllers::Controllers>,
}

pub fn config() -> controllers::Config {
    controllers::Config {
        // Nodes in most tests have no kubelet renewing their Lease.
        node_monitor_grace_period: Duration::from_secs(3600),
        resync: Duration::from_secs(2),
        ..controllers::Config::default()
    }
}

pub fn start() -> Harness {
    start_with(config())
}

pub fn start_with(cfg: controllers::Config) -> Harness {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let acfg = apiserver::Config::new(dir.path());
    let r = apiserver::router(&acfg).unwrap();
    let client = Client::new(r, "default");
    let controllers = Some(controllers::start(client.clone(), cfg));
    Harness {
        _dir: dir,
        client,
        controllers,
    }
}

/// Polls `f` until it returns Some, for at most 20 s (generous: CI machines are slow;
/// the test fails if the behaviour never happens, it does not measure time).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn obj<T: DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).unwrap()
}

pub async fn create<K>(client: &Client, ns: &str, v: Value) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &obj(v)).await.unwrap()
}

/// What a kubelet reports for a running pod.
pub async fn kubelet_reports(client: &Client, ns: &str, name: &str, ips: &[&str], ready: bool) {
    report(client, ns, name, ips, ready).await.unwrap();
}

async fn report(
    client: &Client,
    ns: &str,
    name: &str,
    ips: &[&str],
    ready: bool,
) -> kube::Result<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let status = if ready { "True" } else { "False" };
    let patch = json!({"status": {
        "phase": "Running",
        "podIP": ips.first(),
        "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
        "conditions": [{"type": "Ready", "status": status}, {"type": "ContainersReady", "status": status}],
    }});
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
}

/// A Ready node with a fresh Lease.
pub async fn ready_node(client: &Client, name: &str, extra: Value) {
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let mut node =
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}, "spec": {}});
    merge(&mut node, extra);
    nodes
        .create(&PostParams::default(), &obj(node))
        .await
        .unwrap();
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
        "lastHeartbeatTime": now, "lastTransitionTime": now}]}});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    renew_lease(client, name).await;
}

pub async fn renew_lease(client: &Client, name: &str) {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-node-lease");
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
    leases
        .patch(
            name,
            &PatchParams::apply("test-kubelet").force(),
            &Patch::Apply(lease),
        )
        .await
        .unwrap();
}

pub fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// A kubelet for every node at once, as a background task: bound pods become Running
/// and Ready with an IP; pods being deleted are let go (grace period 0).
pub fn fake_kubelet(client: &Client) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client.clone());
        let mut next_ip = 2u32;
        loop {
            let Ok(list) = pods.list(&Default::default()).await else {
                continue;
            };
            for p in list.items {
                let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                    continue;
                };
                let ns = p.metadata.namespace.clone().unwrap();
                let name = p.metadata.name.clone().unwrap();
                if p.metadata.deletion_timestamp.is_some() {
                    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                    let _ = api
                        .delete(
                            &name,
                            &kube::api::DeleteParams {
                                grace_period_seconds: Some(0),
                                ..Default::default()
                            },
                        )
                        .await;
                    continue;
                }
                if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
                    continue;
                }
                let n: u32 = node.trim_start_matches("node-").parse().unwrap_or(9);
                let ip = format!("10.244.{n}.{}", next_ip % 250 + 2);
                next_ip += 1;
                let _ = tokio::time::timeout(Duration::from_secs(5), async {
                    report(&client, &ns, &name, &[&ip], true).await
                })
                .await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
}
