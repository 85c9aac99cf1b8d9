//! DaemonSets: one pod per eligible node (nodeSelector matches, NoSchedule/NoExecute
//! taints tolerated, with the tolerations kube adds to every daemon pod), placed by
//! setting `spec.nodeName` directly; pods on nodes no longer eligible are removed; a
//! changed template replaces pods node by node within `maxUnavailable`.

use std::collections::{BTreeMap, HashMap};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Outcome};
use crate::deployment::scaled;
use crate::replicaset::{pod_available, pod_from_template};
use crate::scheduler::untolerated;
use crate::util::{self, CONTROLLER_REVISION_HASH, controller_ref, pod_ready};
use crate::{Ctx, Error};

/// The tolerations kube's DaemonSet controller adds to its pods: they run on nodes that
/// are not ready, unreachable, under pressure or cordoned.
pub fn daemon_tolerations(ds: &DaemonSet) -> Vec<Toleration> {
    let mut t = ds
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let add = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    for (k, e) in [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ] {
        if !t.iter().any(|x| x.key.as_deref() == Some(k)) {
            t.push(add(k, e));
        }
    }
    if ds.spec.template.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        t.push(add("node.kubernetes.io/network-unavailable", "NoSchedule"));
    }
    t
}

/// Whether a daemon pod belongs on `node`.
pub fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    fit(ds, node).0
}

/// (should run, should continue running) on `node` (kube's `NodeShouldRunDaemonPod`):
/// a NoSchedule taint not tolerated keeps new pods off but lets a running one stay;
/// a NoExecute one, a nodeSelector or affinity mismatch removes it.
pub fn fit(ds: &DaemonSet, node: &Node) -> (bool, bool) {
    let spec = ds.spec.template.spec.clone().unwrap_or_default();
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| node.labels().get(k) == Some(v));
    if !selector_ok || !crate::scheduler::affinity_matches(&spec, node) {
        return (false, false);
    }
    match untolerated(node, &daemon_tolerations(ds)) {
        None => (true, true),
        Some(t) => (false, t.effect != "NoExecute"),
    }
}

/// The revision label value of the DaemonSet's current template.
pub fn revision(ds: &DaemonSet) -> String {
    util::template_hash(
        &ds.spec.template,
        ds.status.as_ref().and_then(|s| s.collision_count),
    )
}

/// The daemon pod for `node`.
pub fn pod_for(ds: &DaemonSet, node: &str) -> Pod {
    let mut pod = pod_from_template(
        &ds.spec.template,
        &ds.namespace().unwrap_or_default(),
        controller_ref(ds),
        Some(format!("{}-", ds.name_any())),
        None,
    );
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(CONTROLLER_REVISION_HASH.into(), revision(ds));
    labels.insert(
        "pod-template-generation".into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(node.into());
        spec.tolerations = Some(daemon_tolerations(ds));
    }
    pod
}

/// What one pass does to a DaemonSet (pure).
#[derive(Debug, Default, PartialEq)]
pub struct DsPlan {
    /// Nodes to create a pod on.
    pub create: Vec<String>,
    /// Pods to delete.
    pub delete: Vec<String>,
    /// The status, when it differs.
    pub status: Option<DaemonSetStatus>,
}

/// The next step for `ds` given the nodes and the pods it owns.
pub fn plan(ds: &DaemonSet, nodes: &[&Node], pods: &[&Pod], now: Timestamp) -> DsPlan {
    let rev = revision(ds);
    let min_ready = ds.spec.min_ready_seconds.unwrap_or(0);
    let mut by_node: HashMap<String, Vec<&Pod>> = HashMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            by_node.entry(n).or_default().push(p);
        }
    }
    let mut out = DsPlan::default();
    let deleting = ds.metadata.deletion_timestamp.is_some();
    let mut desired = 0;
    let mut scheduled = 0;
    let mut ready = 0;
    let mut available = 0;
    let mut updated = 0;
    let mut misscheduled = 0;
    let mut old_ready: Vec<&Pod> = vec![];
    let mut unavailable = 0;
    let mut names: Vec<String> = nodes.iter().map(|n| n.name_any()).collect();
    names.sort();
    let node_by_name: HashMap<String, &Node> = nodes.iter().map(|n| (n.name_any(), *n)).collect();
    for name in &names {
        let node = node_by_name[name];
        let mut here: Vec<&Pod> = by_node.get(name).cloned().unwrap_or_default();
        here.sort_by(|a, b| {
            a.metadata
                .creation_timestamp
                .cmp(&b.metadata.creation_timestamp)
        });
        let live: Vec<&Pod> = here
            .iter()
            .copied()
            .filter(|p| !util::terminating(p))
            .collect();
        let (should_run, should_continue) = fit(ds, node);
        if !should_run {
            if !live.is_empty() {
                misscheduled += 1;
                if !should_continue {
                    out.delete.extend(live.iter().map(|p| p.name_any()));
                }
            }
            continue;
        }
        desired += 1;
        let active: Vec<&Pod> = live
            .iter()
            .copied()
            .filter(|p| !matches!(util::phase(p), "Failed" | "Succeeded"))
            .collect();
        // Finished pods are replaced; extra pods go (the oldest stays).
        out.delete.extend(
            live.iter()
                .filter(|p| matches!(util::phase(p), "Failed" | "Succeeded"))
                .map(|p| p.name_any()),
        );
        out.delete
            .extend(active.iter().skip(1).map(|p| p.name_any()));
        match active.first() {
            None => {
                unavailable += 1;
                if here.iter().all(|p| !util::terminating(p)) && !deleting {
                    out.create.push(name.clone());
                }
            }
            Some(p) => {
                scheduled += 1;
                let is_new = p.labels().get(CONTROLLER_REVISION_HASH) == Some(&rev);
                if pod_ready(p) {
                    ready += 1;
                }
                if pod_available(p, min_ready, now) {
                    available += 1;
                    if !is_new {
                        old_ready.push(p);
                    }
                } else {
                    unavailable += 1;
                }
                if is_new {
                    updated += 1;
                } else if !pod_available(p, min_ready, now) {
                    // An old pod that is not available anyway is replaced at once.
                    out.delete.push(p.name_any());
                }
            }
        }
    }
    // Rolling update: replace available old pods while the unavailable budget allows.
    let strategy = ds.spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") && !deleting {
        let max_unavailable = scaled(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref()),
            desired,
            true,
            "1",
        )
        .max(1);
        let budget = usize::try_from(max_unavailable - unavailable).unwrap_or(0);
        out.delete
            .extend(old_ready.iter().take(budget).map(|p| p.name_any()));
    }
    out.delete.sort();
    out.delete.dedup();
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled,
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        updated_number_scheduled: Some(updated),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: ds.status.as_ref().and_then(|s| s.conditions.clone()),
    };
    if ds.status.as_ref() != Some(&status) {
        out.status = Some(status);
    }
    out
}

/// Runs the DaemonSet controller.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![
        cache::ready(&c.daemonsets),
        cache::ready(&c.pods),
        cache::ready(&c.nodes),
    ];
    let triggers = vec![
        c.daemonsets.subscribe(),
        c.pods.subscribe(),
        c.nodes.subscribe(),
    ];
    let resync = ctx.config.resync;
    cache::run_loop("daemonset", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    let c = &ctx.caches;
    let pods = c.pods.all();
    let nodes = c.nodes.all();
    let node_refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    let now = Timestamp::now();
    let mut out = Outcome::default();
    let mut errors: Vec<Error> = vec![];
    for ds in c.daemonsets.all() {
        let ns = ds.namespace().unwrap_or_default();
        let owned = util::owned_pods(&pods, &ns, &*ds);
        // Orphans matching the selector are adopted first (kube's ControllerRefManager).
        if let Some(adopted) =
            util::adopt_orphan_pods(&ctx.client, &c.pods, &pods, &ds.spec.selector, &*ds).await
        {
            for r in adopted {
                match r {
                    Ok(check) => out.expect.push(check),
                    Err(e) => errors.push(e),
                }
            }
            continue;
        }
        let p = plan(&ds, &node_refs, &owned, now);
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for node in p.create {
            match api
                .create(&PostParams::default(), &pod_for(&ds, &node))
                .await
            {
                Ok(w) => {
                    let msg = format!("Created pod: {}", w.name_any());
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(
                            &*ds,
                            "daemonset-controller",
                            "Normal",
                            "SuccessfulCreate",
                            msg,
                        ),
                    );
                    out.expect
                        .push(cache::seen(&c.pods, &ns, &w.name_any(), None));
                }
                Err(e) => errors.push(Error::api(format!(
                    "creating a pod of daemonset {} on node {node}",
                    util::key(&*ds)
                ))(e)),
            }
        }
        for name in p.delete {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => out.expect.push(cache::gone(&c.pods, &ns, &name)),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => errors.push(Error::api(format!("deleting pod {ns}/{name}"))(e)),
            }
        }
        if let Some(status) = p.status {
            let dapi: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &ns);
            match util::update(&dapi, &*ds, &json!({"status": status}), true).await {
                Ok(w) => out.expect.push(cache::seen(
                    &c.daemonsets,
                    &ns,
                    &ds.name_any(),
                    w.meta().resource_version.clone(),
                )),
                Err(e) => errors.push(Error::api(format!(
                    "updating status of daemonset {}",
                    util::key(&*ds)
                ))(e)),
            }
        }
    }
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "daemonset");
    }
    out.failed = !errors.is_empty();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> DaemonSet {
        serde_json::from_value(json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "u", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}},
                    "spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "containers": [{"name": "a", "image": "kubewire"}]}}}}))
        .unwrap()
    }

    fn node(name: &str, extra: serde_json::Value) -> Node {
        let mut v = json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}}, "spec": {}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let d = ds();
        let a = node("a", json!({}));
        // Not ready and cordoned nodes still get daemon pods (tolerated taints).
        let b = node(
            "b",
            json!({"spec": {"unschedulable": true, "taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
        );
        let other = node(
            "c",
            json!({"metadata": {"name": "c", "labels": {"kubernetes.io/os": "windows"}}}),
        );
        let tainted = node(
            "d",
            json!({"spec": {"taints": [{"key": "gpu", "effect": "NoSchedule"}]}}),
        );
        let p = plan(&d, &[&a, &b, &other, &tainted], &[], Timestamp::now());
        assert_eq!(p.create, ["a", "b"]);
        assert_eq!(p.status.unwrap().desired_number_scheduled, 2);
        let pod = pod_for(&d, "a");
        assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("a"));
        assert_eq!(pod.metadata.generate_name.as_deref(), Some("agent-"));
    }

    #[test]
    fn misscheduled_and_old_pods_are_replaced() {
        let d = ds();
        let a = node("a", json!({}));
        let gone = node("c", json!({"metadata": {"name": "c", "labels": {}}}));
        let mut on_c = pod_for(&d, "c");
        on_c.metadata.name = Some("agent-c".into());
        let mut old = pod_for(&d, "a");
        old.metadata.name = Some("agent-a".into());
        old.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(CONTROLLER_REVISION_HASH.into(), "old".into());
        old.status = serde_json::from_value(
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}),
        )
        .unwrap();
        let p = plan(&d, &[&a, &gone], &[&on_c, &old], Timestamp::now());
        assert_eq!(p.delete, ["agent-a", "agent-c"]);
        let st = p.status.unwrap();
        assert_eq!(
            (
                st.number_misscheduled,
                st.current_number_scheduled,
                st.updated_number_scheduled
            ),
            (1, 1, Some(0))
        );
    }
}
