//! StatefulSets, as kube-controller-manager's `statefulset` controller: pods named
//! `<set>-<ordinal>` with hostname = pod name and subdomain = `serviceName` (so the
//! headless service gives each a stable DNS name); with `OrderedReady` (the default)
//! ordinal N+1 is created only once 0..N are Running and Ready, and scale-down removes
//! the highest ordinal first, one at a time; `Parallel` does both at once. A changed
//! template rolls out from the highest ordinal down, one pod at a time.

use std::collections::BTreeMap;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Outcome};
use crate::replicaset::{pod_available, pod_from_template};
use crate::util::{self, CONTROLLER_REVISION_HASH, controller_ref, running_and_ready};
use crate::{Ctx, Error};

const COMPONENT: &str = "statefulset-controller";

/// Label with the pod's name (for per-pod Services).
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// Label with the pod's ordinal.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

/// The revision name of the set's current template (`<set>-<hash>`).
pub fn revision(sts: &StatefulSet) -> String {
    let collisions = sts.status.as_ref().and_then(|s| s.collision_count);
    format!(
        "{}-{}",
        sts.name_any(),
        util::template_hash(&sts.spec.template, collisions)
    )
}

/// The pod for `ordinal`.
pub fn pod_for(sts: &StatefulSet, ordinal: i32) -> Pod {
    let name = format!("{}-{ordinal}", sts.name_any());
    let mut pod = pod_from_template(
        &sts.spec.template,
        &sts.namespace().unwrap_or_default(),
        controller_ref(sts),
        None,
        Some(name.clone()),
    );
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.insert(CONTROLLER_REVISION_HASH.into(), revision(sts));
    labels.insert(POD_NAME.into(), name.clone());
    labels.insert(POD_INDEX.into(), ordinal.to_string());
    if let Some(spec) = pod.spec.as_mut() {
        spec.hostname = Some(name);
        spec.subdomain = sts.spec.service_name.clone().filter(|s| !s.is_empty());
    }
    pod
}

fn ordinal(sts: &StatefulSet, pod: &Pod) -> Option<i32> {
    pod.name_any()
        .strip_prefix(&format!("{}-", sts.name_any()))?
        .parse()
        .ok()
}

/// What one pass does to a StatefulSet (pure).
#[derive(Debug, Default, PartialEq)]
pub struct StsPlan {
    /// Ordinals to create.
    pub create: Vec<i32>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status to write, when it differs.
    pub status: Option<StatefulSetStatus>,
}

/// The next step for `sts` given the pods it owns.
pub fn plan(sts: &StatefulSet, pods: &[&Pod], now: Timestamp) -> StsPlan {
    let replicas = sts.spec.replicas.unwrap_or(1).max(0);
    let parallel = sts.spec.pod_management_policy.as_deref() == Some("Parallel");
    let update = revision(sts);
    let on_delete = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.type_.as_deref())
        == Some("OnDelete");
    let partition = sts
        .spec
        .update_strategy
        .as_ref()
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let by_ordinal: BTreeMap<i32, &Pod> = pods
        .iter()
        .filter_map(|p| Some((ordinal(sts, p)?, *p)))
        .collect();
    let rev_of = |p: &Pod| p.labels().get(CONTROLLER_REVISION_HASH).cloned();
    let mut out = StsPlan::default();

    if sts.metadata.deletion_timestamp.is_none() {
        // Replicas 0..replicas, in order.
        let mut blocked = false;
        for i in 0..replicas {
            match by_ordinal.get(&i) {
                None => {
                    if !blocked || parallel {
                        out.create.push(i);
                    }
                    blocked = true;
                }
                Some(p)
                    if matches!(util::phase(p), "Failed" | "Succeeded")
                        && !util::terminating(p) =>
                {
                    // A finished pod is replaced under the same name.
                    out.delete.push(p.name_any());
                    blocked = true;
                }
                Some(p) => {
                    if !running_and_ready(p) || util::terminating(p) {
                        blocked = true;
                    }
                }
            }
        }
        // Condemned: ordinals at or above replicas, highest first.
        let condemned: Vec<&Pod> = by_ordinal
            .range(replicas..)
            .rev()
            .map(|(_, p)| *p)
            .collect();
        if parallel {
            out.delete.extend(
                condemned
                    .iter()
                    .filter(|p| !util::terminating(p))
                    .map(|p| p.name_any()),
            );
        } else if !blocked && let Some(p) = condemned.first() {
            if !util::terminating(p) {
                out.delete.push(p.name_any());
            }
            blocked = true;
        }
        // Rolling update: the highest ordinal on an old revision goes when all is well.
        if !blocked
            && !on_delete
            && out.delete.is_empty()
            && out.create.is_empty()
            && condemned.is_empty()
            && let Some((_, p)) = by_ordinal
                .range(partition.max(0)..replicas)
                .rev()
                .find(|(_, p)| rev_of(p).as_deref() != Some(update.as_str()))
        {
            out.delete.push(p.name_any());
        }
    }

    let live: Vec<&Pod> = by_ordinal.values().copied().collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let min_ready = sts.spec.min_ready_seconds.unwrap_or(0);
    let updated = count(&|p| rev_of(p).as_deref() == Some(update.as_str()));
    let prev = sts.status.clone().unwrap_or_default();
    let ready = count(&|p| running_and_ready(p));
    // The rollout is complete once every replica runs the update revision and is ready.
    let current_revision = if updated == replicas
        && ready == replicas
        && live.len() == usize::try_from(replicas).unwrap_or(0)
    {
        update.clone()
    } else {
        prev.current_revision
            .clone()
            .unwrap_or_else(|| update.clone())
    };
    let status = StatefulSetStatus {
        observed_generation: sts.metadata.generation,
        replicas: i32::try_from(live.len()).unwrap_or(i32::MAX),
        ready_replicas: Some(ready),
        available_replicas: Some(count(&|p| {
            running_and_ready(p) && pod_available(p, min_ready, now)
        })),
        current_replicas: Some(count(&|p| {
            rev_of(p).as_deref() == Some(current_revision.as_str())
        })),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision),
        update_revision: Some(update),
        collision_count: prev.collision_count,
        conditions: prev.conditions.clone(),
    };
    if sts.status.as_ref() != Some(&status) {
        out.status = Some(status);
    }
    out
}

/// Runs the StatefulSet controller.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![cache::ready(&c.statefulsets), cache::ready(&c.pods)];
    let triggers = vec![c.statefulsets.subscribe(), c.pods.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop("statefulset", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    let c = &ctx.caches;
    let pods = c.pods.all();
    let now = Timestamp::now();
    let mut out = Outcome::default();
    let mut errors: Vec<Error> = vec![];
    for sts in c.statefulsets.all() {
        let ns = sts.namespace().unwrap_or_default();
        let owned = util::owned_pods(&pods, &ns, &*sts);
        // Orphans matching the selector are adopted first (kube's ControllerRefManager).
        if let Some(adopted) =
            util::adopt_orphan_pods(&ctx.client, &c.pods, &pods, &sts.spec.selector, &*sts).await
        {
            for r in adopted {
                match r {
                    Ok(check) => out.expect.push(check),
                    Err(e) => errors.push(e),
                }
            }
            continue;
        }
        let p = plan(&sts, &owned, now);
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        for i in p.create {
            let pod = pod_for(&sts, i);
            match api.create(&PostParams::default(), &pod).await {
                Ok(w) => {
                    let msg = format!(
                        "create Pod {} in StatefulSet {} successful",
                        w.name_any(),
                        sts.name_any()
                    );
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(&*sts, COMPONENT, "Normal", "SuccessfulCreate", msg),
                    );
                    out.expect
                        .push(cache::seen(&c.pods, &ns, &w.name_any(), None));
                }
                // Still there from before (being deleted): wait for it to go.
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => errors.push(Error::api(format!("creating pod {ns}/{}", pod.name_any()))(
                    e,
                )),
            }
        }
        for name in p.delete {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    let msg = format!(
                        "delete Pod {name} in StatefulSet {} successful",
                        sts.name_any()
                    );
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(&*sts, COMPONENT, "Normal", "SuccessfulDelete", msg),
                    );
                    out.expect.push(cache::gone(&c.pods, &ns, &name));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => errors.push(Error::api(format!("deleting pod {ns}/{name}"))(e)),
            }
        }
        if let Some(status) = p.status {
            let sapi: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &ns);
            match util::update(&sapi, &*sts, &json!({"status": status}), true).await {
                Ok(w) => out.expect.push(cache::seen(
                    &c.statefulsets,
                    &ns,
                    &sts.name_any(),
                    w.meta().resource_version.clone(),
                )),
                Err(e) => errors.push(Error::api(format!(
                    "updating status of statefulset {}",
                    util::key(&*sts)
                ))(e)),
            }
        }
    }
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "statefulset");
    }
    out.failed = !errors.is_empty();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i32, policy: &str) -> StatefulSet {
        serde_json::from_value(json!({"metadata": {"name": "redis", "namespace": "default", "uid": "u", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "redis", "podManagementPolicy": policy,
                "selector": {"matchLabels": {"app": "redis"}},
                "template": {"metadata": {"labels": {"app": "redis"}}, "spec": {"containers": [{"name": "r", "image": "redis"}]}}}}))
        .unwrap()
    }

    fn running(s: &StatefulSet, i: i32, ready: bool) -> Pod {
        let mut p = pod_for(s, i);
        p.status = serde_json::from_value(json!({"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}))
        .unwrap();
        p
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time() {
        let s = sts(3, "OrderedReady");
        let now = Timestamp::now();
        assert_eq!(plan(&s, &[], now).create, [0]);
        let p0 = running(&s, 0, false);
        assert!(
            plan(&s, &[&p0], now).create.is_empty(),
            "waits for redis-0 to be ready"
        );
        let p0 = running(&s, 0, true);
        assert_eq!(plan(&s, &[&p0], now).create, [1]);
        let pod = pod_for(&s, 0);
        assert_eq!(pod.name_any(), "redis-0");
        let spec = pod.spec.unwrap();
        assert_eq!(
            (spec.hostname.as_deref(), spec.subdomain.as_deref()),
            (Some("redis-0"), Some("redis"))
        );
        assert_eq!(pod.metadata.labels.unwrap()[POD_NAME], "redis-0");
    }

    #[test]
    fn parallel_creates_all_and_scale_down_goes_highest_first() {
        let s = sts(3, "Parallel");
        assert_eq!(plan(&s, &[], Timestamp::now()).create, [0, 1, 2]);
        let s1 = sts(1, "OrderedReady");
        let pods: Vec<Pod> = (0..3).map(|i| running(&s1, i, true)).collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&s1, &refs, Timestamp::now());
        assert_eq!(p.delete, ["redis-2"]);
        let st = p.status.unwrap();
        assert_eq!((st.replicas, st.ready_replicas), (3, Some(3)));
    }

    #[test]
    fn template_change_rolls_from_the_top() {
        let s = sts(2, "OrderedReady");
        let pods: Vec<Pod> = (0..2).map(|i| running(&s, i, true)).collect();
        let mut s2 = s.clone();
        s2.spec.template.spec.as_mut().unwrap().containers[0].image = Some("redis:8".into());
        let refs: Vec<&Pod> = pods.iter().collect();
        let p = plan(&s2, &refs, Timestamp::now());
        assert_eq!(p.delete, ["redis-1"]);
        let st = p.status.unwrap();
        assert_eq!(st.update_revision, Some(revision(&s2)));
        assert_eq!(st.updated_replicas, Some(0));
    }
}
