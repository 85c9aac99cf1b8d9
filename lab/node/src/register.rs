//! Node registration and heartbeat: the Node object with this node's addresses,
//! capacity and conditions, `Ready` only once the CNI config directory holds a valid
//! network config (kubelet's NetworkReady), and the Lease in `kube-node-lease` renewed
//! every `--lease-renew` (10 s), which the node lifecycle controller watches.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s::ErrorChain;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use serde_json::{Value, json};

use crate::{Ctx, Error, time};

/// This machine's architecture as Go names it (`GOARCH`), which Kubernetes uses in
/// `kubernetes.io/arch` and `nodeInfo.architecture`.
fn go_arch() -> String {
    std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64")
}

/// The node's status as kubelet reports it, with `Ready` from `network_ready`.
fn status(ctx: &Ctx, network: &Result<(), String>, transition: &str) -> Value {
    let now = time::rfc3339(SystemTime::now());
    let mut addresses: Vec<Value> = ctx
        .args
        .node_ip
        .iter()
        .map(|ip| json!({"type": "InternalIP", "address": ip.to_string()}))
        .collect();
    addresses.push(json!({"type": "Hostname", "address": ctx.args.node_name}));
    let resources =
        json!({"pods": "110", "cpu": "2", "memory": "4Gi", "ephemeral-storage": "20Gi"});
    let ready = match network {
        Ok(()) => json!({"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status"}),
        Err(why) => json!({"type": "Ready", "status": "False", "reason": "KubeletNotReady",
            "message": format!("container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: {why}")}),
    };
    let mut conditions: Vec<Value> = [
        (
            "MemoryPressure",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        (
            "DiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        (
            "PIDPressure",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
    ]
    .iter()
    .map(|(t, r, m)| json!({"type": t, "status": "False", "reason": r, "message": m}))
    .collect();
    conditions.push(ready);
    for c in &mut conditions {
        c["lastHeartbeatTime"] = json!(now);
        c["lastTransitionTime"] = json!(if c["type"] == "Ready" {
            transition
        } else {
            &now
        });
    }
    json!({
        "addresses": addresses,
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": ctx.args.port}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default(),
            "osImage": "kubewire lab node",
            "containerRuntimeVersion": concat!("kubewire://", env!("CARGO_PKG_VERSION")),
            "kubeletVersion": "v1.34.0-kubewire",
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": go_arch(),
        },
    })
}

/// Creates the Node if it does not exist (labels as kubelet sets them).
async fn ensure_node(ctx: &Ctx, nodes: &Api<Node>) -> Result<Node, Error> {
    let name = &ctx.args.node_name;
    if let Some(n) = nodes
        .get_opt(name)
        .await
        .map_err(|e| Error::api(format!("getting node {name}"), e))?
    {
        return Ok(n);
    }
    let labels = [
        ("kubernetes.io/hostname", name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", &go_arch()),
        ("beta.kubernetes.io/os", "linux"),
    ];
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        ..Default::default()
    };
    match nodes.create(&PostParams::default(), &node).await {
        Ok(n) => Ok(n),
        // Someone (IPAM, a test) made it meanwhile.
        Err(kube::Error::Api(s)) if s.code == 409 => nodes
            .get(name)
            .await
            .map_err(|e| Error::api(format!("getting node {name}"), e)),
        Err(e) => Err(Error::api(format!("creating node {name}"), e)),
    }
}

async fn renew_lease(ctx: &Ctx, node: &Node) -> Result<(), Error> {
    let name = &ctx.args.node_name;
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), "kube-node-lease");
    let now = time::rfc3339_nanos(SystemTime::now());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease",
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": name,
                "uid": node.meta().uid.clone().unwrap_or_default()}]},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now},
    });
    leases
        .patch(
            name,
            &PatchParams::apply("kubewire-node").force(),
            &Patch::Apply(&lease),
        )
        .await
        .map_err(|e| Error::api(format!("renewing lease kube-node-lease/{name}"), e))?;
    Ok(())
}

/// Whether the CNI config directory holds a network config the node can use.
pub(crate) fn network_ready(ctx: &Ctx) -> Result<(), String> {
    crate::cni::load(&ctx.args.cni_conf_dir)
        .map(|_| ())
        .map_err(|_| "cni plugin not initialized".to_owned())
}

/// The registration loop: keeps the Node, its status and the Lease current.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let mut node: Option<Node> = None;
    let mut last_ready: Option<bool> = None;
    let mut transition = time::rfc3339(SystemTime::now());
    let mut last_status = SystemTime::UNIX_EPOCH;
    let mut last_lease = SystemTime::UNIX_EPOCH;
    loop {
        let result: Result<(), Error> = async {
            if node.is_none() {
                node = Some(ensure_node(&ctx, &nodes).await?);
            }
            let network = network_ready(&ctx);
            let ready = network.is_ok();
            let changed = last_ready != Some(ready);
            if changed {
                transition = time::rfc3339(SystemTime::now());
            }
            let since = |t: SystemTime| SystemTime::now().duration_since(t).unwrap_or_default();
            if changed || since(last_status) >= ctx.args.lease_renew {
                let st = status(&ctx, &network, &transition);
                nodes
                    .patch_status(
                        &ctx.args.node_name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"status": st})),
                    )
                    .await
                    .map_err(|e| {
                        Error::api(
                            format!("updating the status of node {}", ctx.args.node_name),
                            e,
                        )
                    })?;
                if changed {
                    tracing::info!(ready, "node status");
                }
                last_ready = Some(ready);
                last_status = SystemTime::now();
            }
            if since(last_lease) >= ctx.args.lease_renew
                && let Some(n) = &node
            {
                renew_lease(&ctx, n).await?;
                last_lease = SystemTime::now();
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %ErrorChain(&e), "registration");
            // A deleted Node is made again on the next round.
            if e.is_not_found() {
                node = None;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
