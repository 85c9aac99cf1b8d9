//! ReplicaSets → Pods, as kube-controller-manager's `replicaset` controller: as many
//! active pods (not terminating, not finished) as `spec.replicas`, created from the
//! template with a controller owner reference, surplus ones deleted least useful first;
//! status counts replicas, fully labeled, ready and available pods.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Check, Outcome};
use crate::util::{self, controller_ref, pod_active, pod_ready};
use crate::{Ctx, Error};

const COMPONENT: &str = "replicaset-controller";

/// A pod for `template`, owned by `owner`, named `generate_name` + random suffix (or
/// `name` when given).
pub fn pod_from_template(
    template: &PodTemplateSpec,
    ns: &str,
    owner: OwnerReference,
    generate_name: Option<String>,
    name: Option<String>,
) -> Pod {
    let meta = template.metadata.clone().unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            name,
            generate_name,
            namespace: Some(ns.into()),
            labels: meta.labels,
            annotations: meta.annotations,
            finalizers: meta.finalizers,
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    }
}

/// Ready for at least `min_ready_seconds` (kube's `IsPodAvailable`).
pub fn pod_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    if !pod_ready(pod) {
        return false;
    }
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref());
    since.is_some_and(|t| now.duration_since(t.0).as_secs() >= i64::from(min_ready_seconds))
}

/// The order in which surplus pods are deleted (kube's `ActivePods` ranking): unbound
/// before bound, Pending before Unknown before Running, not ready before ready, newer
/// before older.
pub fn deletion_order(pods: &mut [&Pod]) {
    let phase_rank = |p: &Pod| match util::phase(p) {
        "Pending" => 0,
        "Unknown" => 1,
        _ => 2,
    };
    pods.sort_by(|a, b| {
        let bound = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        bound(a)
            .cmp(&bound(b))
            .then(phase_rank(a).cmp(&phase_rank(b)))
            .then(pod_ready(a).cmp(&pod_ready(b)))
            .then(
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp),
            )
            .then(a.name_any().cmp(&b.name_any()))
    });
}

/// What one ReplicaSet needs (pure).
#[derive(Debug, Default, PartialEq)]
pub struct RsPlan {
    /// Pods to create.
    pub create: usize,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status to write, when it differs.
    pub status: Option<ReplicaSetStatus>,
    /// Look again after this long (a pod becomes available after minReadySeconds).
    pub requeue: Option<Duration>,
}

/// Pods, status and requeue for `rs`, from the pods it controls.
pub fn plan(rs: &ReplicaSet, pods: &[&Pod], now: Timestamp) -> RsPlan {
    let spec = rs.spec.clone();
    let want = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut active: Vec<&Pod> = pods.iter().copied().filter(|p| pod_active(p)).collect();
    let mut out = RsPlan::default();
    if rs.metadata.deletion_timestamp.is_none() {
        if active.len() < want {
            out.create = want - active.len();
        } else if active.len() > want {
            deletion_order(&mut active);
            out.delete = active[..active.len() - want]
                .iter()
                .map(|p| p.name_any())
                .collect();
        }
    }
    let template_labels = spec
        .template
        .as_ref()
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(active.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let status = ReplicaSetStatus {
        replicas: count(&|_| true),
        fully_labeled_replicas: Some(count(&|p| {
            template_labels
                .iter()
                .all(|(k, v)| p.labels().get(k) == Some(v))
        })),
        ready_replicas: Some(count(&|p| pod_ready(p))),
        available_replicas: Some(count(&|p| pod_available(p, min_ready, now))),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    if min_ready > 0 && status.ready_replicas != status.available_replicas {
        out.requeue = Some(Duration::from_secs(1));
    }
    if rs.status.as_ref() != Some(&status) {
        out.status = Some(status);
    }
    out
}

/// Creates `create` pods from `template` for `owner` (named after it) and deletes the
/// pods named in `delete`, 16 at a time, recording an event for each, noting what the
/// stores must show before the next pass in `out` and failures in `errors`: the pod
/// step of every controller that owns pods directly (ReplicaSet, ReplicationController,
/// Job).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn sync_pods<O: Resource<DynamicType = ()>>(
    ctx: &Ctx,
    owner: &O,
    template: &PodTemplateSpec,
    create: usize,
    delete: Vec<String>,
    component: &str,
    out: &Mutex<Outcome>,
    errors: &Mutex<Vec<Error>>,
) {
    let c = &ctx.caches;
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let kind = O::kind(&()).to_lowercase();
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let pod = pod_from_template(
        template,
        &ns,
        controller_ref(owner),
        Some(format!("{}-", owner.name_any())),
        None,
    );
    cache::for_each_concurrent((0..create).collect(), 16, |_| {
        let (api, pod, ns, kind) = (&pods_api, &pod, &ns, &kind);
        async move {
            match api.create(&PostParams::default(), pod).await {
                Ok(w) => {
                    let msg = format!("Created pod: {}", w.name_any());
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(owner, component, "Normal", "SuccessfulCreate", msg),
                    );
                    out.lock()
                        .unwrap()
                        .expect
                        .push(cache::seen(&c.pods, ns, &w.name_any(), None));
                }
                Err(e) => errors.lock().unwrap().push(Error::api(format!(
                    "creating a pod for {kind} {}",
                    util::key(owner)
                ))(e)),
            }
        }
    })
    .await;
    cache::for_each_concurrent(delete, 16, |name| {
        let (api, ns) = (&pods_api, &ns);
        async move {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    let msg = format!("Deleted pod: {name}");
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(owner, component, "Normal", "SuccessfulDelete", msg),
                    );
                    out.lock()
                        .unwrap()
                        .expect
                        .push(cache::gone(&c.pods, ns, &name));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => errors
                    .lock()
                    .unwrap()
                    .push(Error::api(format!("deleting pod {ns}/{name}"))(e)),
            }
        }
    })
    .await;
}

/// Runs the ReplicaSet controller.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![cache::ready(&c.replicasets), cache::ready(&c.pods)];
    let triggers = vec![c.replicasets.subscribe(), c.pods.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop("replicaset", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    let c = &ctx.caches;
    let pods = c.pods.all();
    let now = Timestamp::now();
    let out = Arc::new(Mutex::new(Outcome::default()));
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    for rs in c.replicasets.all() {
        let ns = rs.namespace().unwrap_or_default();
        let owned = util::owned_pods(&pods, &ns, &*rs);
        // Orphans matching the selector are adopted first (kube's ControllerRefManager).
        if let Some(adopted) =
            util::adopt_orphan_pods(&ctx.client, &c.pods, &pods, &rs.spec.selector, &*rs).await
        {
            for r in adopted {
                match r {
                    Ok(check) => out.lock().unwrap().expect.push(check),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
            continue;
        }
        let p = plan(&rs, &owned, now);
        if p.requeue.is_some() {
            out.lock().unwrap().requeue = p.requeue;
        }
        let template = rs.spec.template.clone().unwrap_or_default();
        sync_pods(
            ctx, &*rs, &template, p.create, p.delete, COMPONENT, &out, &errors,
        )
        .await;
        if let Some(status) = p.status {
            match write_status(ctx, &rs, status).await {
                Ok(check) => out.lock().unwrap().expect.push(check),
                Err(e) => errors.lock().unwrap().push(e),
            }
        }
    }
    let mut out = std::mem::take(&mut *out.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "replicaset");
    }
    out.failed = !errors.is_empty();
    out
}

async fn write_status(
    ctx: &Ctx,
    rs: &ReplicaSet,
    status: ReplicaSetStatus,
) -> Result<Check, Error> {
    let ns = rs.namespace().unwrap_or_default();
    let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let w = util::update(&api, rs, &json!({"status": status}), true)
        .await
        .map_err(Error::api(format!(
            "updating status of replicaset {}",
            util::key(rs)
        )))?;
    Ok(cache::seen(
        &ctx.caches.replicasets,
        &ns,
        &rs.name_any(),
        w.meta().resource_version.clone(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32) -> ReplicaSet {
        serde_json::from_value(json!({"metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": 2},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}))
        .unwrap()
    }

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": {"app": "web"}, "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}}))
        .unwrap()
    }

    #[test]
    fn creates_missing_and_deletes_least_useful_first() {
        let now = Timestamp::now();
        let p = plan(&rs(3), &[], now);
        assert_eq!(p.create, 3);
        let a = pod("a", Some("n1"), "Running", true, "2026-01-01T00:00:00Z");
        let b = pod("b", Some("n1"), "Running", true, "2026-01-01T00:00:05Z");
        let c = pod("c", None, "Pending", false, "2026-01-01T00:00:01Z");
        let d = pod("d", Some("n2"), "Running", false, "2026-01-01T00:00:02Z");
        let p = plan(&rs(1), &[&a, &b, &c, &d], now);
        assert_eq!(p.delete, ["c", "d", "b"]);
        let st = p.status.unwrap();
        assert_eq!(
            (st.replicas, st.ready_replicas, st.available_replicas),
            (4, Some(2), Some(2))
        );
        assert_eq!(st.observed_generation, Some(2));
    }

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        let mut t = pod("t", Some("n1"), "Running", true, "2026-01-01T00:00:00Z");
        t.metadata.deletion_timestamp = Some(util::now());
        let f = pod("f", Some("n1"), "Failed", false, "2026-01-01T00:00:00Z");
        let p = plan(&rs(2), &[&t, &f], Timestamp::now());
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn template_becomes_the_pod() {
        let r = rs(1);
        let p = pod_from_template(
            r.spec.template.as_ref().unwrap(),
            "default",
            controller_ref(&r),
            Some("web-abc-".into()),
            None,
        );
        let o = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (
                o.kind.as_str(),
                o.name.as_str(),
                o.controller,
                o.block_owner_deletion
            ),
            ("ReplicaSet", "web-abc", Some(true), Some(true))
        );
        assert_eq!(p.labels()["app"], "web");
    }
}
