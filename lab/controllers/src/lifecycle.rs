//! Node lifecycle (kube-controller-manager's `nodelifecycle` monitor): a node whose
//! Lease in `kube-node-lease` has not been renewed for the grace period gets every
//! condition set to Unknown ("Kubelet stopped posting node status."), and the Ready
//! condition of its pods set to False, so their endpoints leave the EndpointSlices as
//! not ready. As in kube, staleness is measured on this process's clock from when the
//! renew time last changed, so clock skew between nodes does not matter; a restart of
//! the controllers gives every node a full grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::cache::{self, Outcome};
use crate::util::{self, now};
use crate::{Ctx, Error};

/// The message kube-controller-manager writes into the conditions.
pub const STOPPED_POSTING: &str = "Kubelet stopped posting node status.";

/// The node's conditions once it is considered lost: every one Unknown with reason
/// `NodeStatusUnknown` (a Ready condition is added if the node never had one).
pub fn unknown_conditions(node: &Node) -> Vec<NodeCondition> {
    let mut conds = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if !conds.iter().any(|c| c.type_ == "Ready") {
        conds.push(NodeCondition {
            type_: "Ready".into(),
            ..Default::default()
        });
    }
    let t = now();
    for c in &mut conds {
        if c.status != "Unknown" {
            c.last_transition_time = Some(t.clone());
        }
        c.status = "Unknown".into();
        c.reason = Some("NodeStatusUnknown".into());
        c.message = Some(STOPPED_POSTING.into());
    }
    conds
}

/// Taint on a node whose Ready condition is Unknown.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint on a node whose Ready condition is False.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

/// The node's taints with kube's condition taints (`TaintNodesByCondition`, NoSchedule
/// only: there is no taint-based eviction here) matching its Ready condition; None when
/// they already match (or the node has no Ready condition yet).
pub fn condition_taints(node: &Node) -> Option<Vec<k8s_openapi::api::core::v1::Taint>> {
    let ready = ready_status(node)?;
    let want = match ready.as_str() {
        "Unknown" => Some(UNREACHABLE),
        "False" => Some(NOT_READY),
        _ => None,
    };
    let have = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let mut taints: Vec<_> = have
        .iter()
        .filter(|t| {
            !(t.effect == "NoSchedule"
                && (t.key == UNREACHABLE || t.key == NOT_READY)
                && Some(t.key.as_str()) != want)
        })
        .cloned()
        .collect();
    if let Some(key) = want
        && !taints
            .iter()
            .any(|t| t.key == key && t.effect == "NoSchedule")
    {
        taints.push(k8s_openapi::api::core::v1::Taint {
            key: key.into(),
            effect: "NoSchedule".into(),
            time_added: Some(now()),
            value: None,
        });
    }
    (taints != have).then_some(taints)
}

/// The pod's conditions with Ready set to False (kube's `MarkPodsNotReady`), or None
/// when it is not Ready=True now.
pub fn not_ready_conditions(pod: &Pod) -> Option<Vec<PodCondition>> {
    let mut conds = pod.status.as_ref()?.conditions.clone()?;
    let ready = conds.iter_mut().find(|c| c.type_ == "Ready")?;
    if ready.status == "False" {
        return None;
    }
    ready.status = "False".into();
    ready.reason = Some("NodeNotReady".into());
    ready.message = Some("Node is not ready".into());
    ready.last_transition_time = Some(now());
    Some(conds)
}

fn ready_status(node: &Node) -> Option<String> {
    node.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.clone())
}

/// When each node's renew time was last seen to change, on our clock.
#[derive(Default)]
struct Probes {
    seen: HashMap<String, (String, Instant)>,
}

/// Runs the node lifecycle monitor.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![
        cache::ready(&c.nodes),
        cache::ready(&c.leases),
        cache::ready(&c.pods),
    ];
    let triggers = vec![
        c.nodes.subscribe(),
        c.leases.subscribe(),
        c.pods.subscribe(),
    ];
    let resync = ctx.config.resync;
    let probes = Arc::new(Mutex::new(Probes::default()));
    cache::run_loop("nodelifecycle", ready, triggers, resync, move || {
        let (ctx, probes) = (ctx.clone(), probes.clone());
        async move { pass(&ctx, &probes).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx, probes: &Mutex<Probes>) -> Outcome {
    let c = &ctx.caches;
    let grace = ctx.config.node_monitor_grace_period;
    let nodes = c.nodes.all();
    let pods = c.pods.all();
    let now_i = Instant::now();
    let mut lost: Vec<Arc<Node>> = vec![];
    let mut next: Option<Duration> = None;
    {
        let mut p = probes.lock().unwrap();
        p.seen
            .retain(|n, _| nodes.iter().any(|x| x.name_any() == *n));
        for node in &nodes {
            let name = node.name_any();
            // The Lease's renewTime; without a Lease, the Ready heartbeat.
            let lease = c.leases.get("kube-node-lease", &name);
            let renew = lease
                .and_then(|l| {
                    l.spec
                        .as_ref()?
                        .renew_time
                        .as_ref()
                        .map(|t| t.0.to_string())
                })
                .or_else(|| {
                    node.status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_ == "Ready")?
                        .last_heartbeat_time
                        .as_ref()
                        .map(|t| t.0.to_string())
                })
                .unwrap_or_default();
            let entry = p.seen.entry(name).or_insert_with(|| (renew.clone(), now_i));
            if entry.0 != renew {
                *entry = (renew, now_i);
            }
            let age = now_i.duration_since(entry.1);
            if age >= grace {
                lost.push(node.clone());
            } else {
                let left = grace - age;
                next = Some(next.map_or(left, |n: Duration| n.min(left)));
            }
        }
    }
    let mut out = Outcome {
        requeue: Some(next.unwrap_or(grace).max(Duration::from_millis(100))),
        ..Outcome::default()
    };
    let node_api: Api<Node> = Api::all(ctx.client.clone());
    for node in &nodes {
        let Some(taints) = condition_taints(node) else {
            continue;
        };
        let name = node.name_any();
        // The resourceVersion makes it a compare-and-swap with the kubelet's writes.
        let patch = json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}});
        match node_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(w) => out.expect.push(cache::seen(
                &c.nodes,
                "",
                &name,
                w.metadata.resource_version,
            )),
            // The kubelet wrote the node meanwhile: expected now and then; retried.
            Err(kube::Error::Api(s)) if s.code == 409 => out.failed = true,
            Err(e) => {
                warn!(error = %k8s::ErrorChain(&Error::api(format!("updating the taints of node {name}"))(e)), "nodelifecycle");
                out.failed = true;
            }
        }
    }
    for node in lost {
        let name = node.name_any();
        if ready_status(&node).as_deref() != Some("Unknown") {
            // Strategic merge: conditions merge by type.
            let patch = json!({"status": {"conditions": unknown_conditions(&node)}});
            match node_api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(w) => {
                    info!(node = %name, "lease not renewed within the grace period: node NotReady");
                    out.expect.push(cache::seen(
                        &c.nodes,
                        "",
                        &name,
                        w.metadata.resource_version,
                    ));
                }
                Err(e) => {
                    warn!(error = %k8s::ErrorChain(&Error::api(format!("marking node {name} NotReady"))(e)), "nodelifecycle");
                    out.failed = true;
                    continue;
                }
            }
        }
        // Its pods are not ready (again, if a kubelet elsewhere claimed otherwise).
        for pod in pods.iter().filter(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str())
                && !matches!(util::phase(p), "Succeeded" | "Failed")
        }) {
            let Some(conds) = not_ready_conditions(pod) else {
                continue;
            };
            let (ns, pname) = (pod.namespace().unwrap_or_default(), pod.name_any());
            let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            // Only the Ready condition, merged by type: the others are the kubelet's.
            let ready: Vec<&PodCondition> = conds.iter().filter(|c| c.type_ == "Ready").collect();
            let patch = json!({"status": {"conditions": ready}});
            match api
                .patch_status(&pname, &PatchParams::default(), &Patch::Strategic(patch))
                .await
            {
                Ok(w) => out.expect.push(cache::seen(
                    &c.pods,
                    &ns,
                    &pname,
                    w.metadata.resource_version,
                )),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(error = %k8s::ErrorChain(&Error::api(format!("marking pod {ns}/{pname} not ready"))(e)), "nodelifecycle");
                    out.failed = true;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_node_conditions_and_pods() {
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "n"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]}})).unwrap();
        let conds = unknown_conditions(&node);
        assert!(
            conds
                .iter()
                .all(|c| c.status == "Unknown" && c.message.as_deref() == Some(STOPPED_POSTING))
        );
        assert_eq!(conds.len(), 2);
        let bare: Node = serde_json::from_value(json!({"metadata": {"name": "n"}})).unwrap();
        assert_eq!(unknown_conditions(&bare)[0].type_, "Ready");

        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}})).unwrap();
        let c = not_ready_conditions(&pod).unwrap();
        assert_eq!(c[0].status, "False");
        assert_eq!(c[1].status, "True");
        // Taints follow the Ready condition.
        let mut lost = node.clone();
        lost.status.as_mut().unwrap().conditions = Some(conds);
        let t = condition_taints(&lost).unwrap();
        assert_eq!(
            (t[0].key.as_str(), t[0].effect.as_str()),
            (UNREACHABLE, "NoSchedule")
        );
        lost.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
            taints: Some(t),
            ..Default::default()
        });
        assert!(condition_taints(&lost).is_none());
        assert_eq!(condition_taints(&node), None);
        let mut back = lost.clone();
        back.status = node.status.clone();
        assert_eq!(condition_taints(&back), Some(vec![]));

        let mut done = pod.clone();
        done.status.as_mut().unwrap().conditions = Some(c);
        assert!(not_ready_conditions(&done).is_none());
    }
}
