//! Deployments → ReplicaSets, as kube-controller-manager's `deployment` controller: the
//! ReplicaSet whose template equals the Deployment's (named `<deployment>-<pod-template-
//! hash>`) is the new one; a rolling update grows it and shrinks the old ones within
//! `maxSurge`/`maxUnavailable` (kube's `rolling.go`), Recreate empties the old ones
//! first; the status (replicas, updated, ready, available, conditions) is what
//! `kubectl rollout status` and `kubectl get deploy` read.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Outcome};
use crate::util::{
    self, POD_TEMPLATE_HASH, controller_ref, owned_by, template_hash, templates_equal,
};
use crate::{Ctx, Error};

const COMPONENT: &str = "deployment-controller";

/// Annotation with a ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// kube's `intstr.GetScaledValueFromIntOrPercent`.
pub fn scaled(v: Option<&IntOrString>, total: i32, round_up: bool, default: &str) -> i32 {
    let v = v.cloned().unwrap_or(IntOrString::String(default.into()));
    match v {
        IntOrString::Int(n) => n,
        IntOrString::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let x = pct * i64::from(total);
            let r = if round_up { (x + 99) / 100 } else { x / 100 };
            i32::try_from(r).unwrap_or(0)
        }
    }
}

/// (maxSurge, maxUnavailable) for `replicas` (kube's `ResolveFenceposts`: both zero
/// would never progress, so maxUnavailable becomes 1).
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let spec = d.spec.clone();
    let replicas = spec.replicas.unwrap_or(1);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.clone())
        .unwrap_or_default();
    if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        return (0, 0);
    }
    let surge = scaled(ru.max_surge.as_ref(), replicas, true, "25%");
    let unavailable = scaled(ru.max_unavailable.as_ref(), replicas, false, "25%");
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// A ReplicaSet as the rollout arithmetic sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct RsState {
    /// spec.replicas
    pub replicas: i32,
    /// status.availableReplicas
    pub available: i32,
}

/// One rolling-update step (kube's `rolloutRolling`): the new ReplicaSet's replicas and
/// each old one's (oldest first in `olds`), given the Deployment's replicas and
/// fenceposts.
pub fn rolling_step(
    replicas: i32,
    (max_surge, max_unavailable): (i32, i32),
    new: &RsState,
    olds: &[RsState],
) -> (i32, Vec<i32>) {
    let sum = |v: &[RsState]| v.iter().map(|r| r.replicas).sum::<i32>();
    // reconcileNewReplicaSet
    let new_replicas = if new.replicas >= replicas {
        replicas
    } else {
        let current = new.replicas + sum(olds);
        let max_total = replicas + max_surge;
        if current >= max_total {
            new.replicas
        } else {
            new.replicas + (max_total - current).min(replicas - new.replicas)
        }
    };
    let mut old_replicas: Vec<i32> = olds.iter().map(|r| r.replicas).collect();
    // reconcileOldReplicaSets
    let old_count: i32 = old_replicas.iter().sum();
    if old_count == 0 {
        return (new_replicas, old_replicas);
    }
    let all = new_replicas + old_count;
    let min_available = replicas - max_unavailable;
    let new_unavailable = new_replicas - new.available;
    let mut max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return (new_replicas, old_replicas);
    }
    // Unhealthy old replicas go first: they do not count towards availability.
    for (i, o) in olds.iter().enumerate() {
        if max_scaled_down <= 0 {
            break;
        }
        let unhealthy = (old_replicas[i] - o.available).max(0);
        let down = unhealthy.min(max_scaled_down);
        old_replicas[i] -= down;
        max_scaled_down -= down;
    }
    // Then healthy ones, as long as enough stay available.
    let available: i32 = new.available + olds.iter().map(|o| o.available).sum::<i32>();
    if available > min_available {
        let mut total = (available - min_available).min(max_scaled_down);
        for r in old_replicas.iter_mut() {
            if total <= 0 {
                break;
            }
            let down = (*r).min(total);
            *r -= down;
            total -= down;
        }
    }
    (new_replicas, old_replicas)
}

/// The ReplicaSet a Deployment's current template needs (not yet created).
pub fn new_replicaset(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone();
    let mut template = spec.template.clone();
    let meta = template.metadata.get_or_insert_with(Default::default);
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(BTreeMap::new)
        .insert(POD_TEMPLATE_HASH.into(), hash.into());
    let mut annotations: BTreeMap<String, String> = d.annotations().clone();
    annotations.remove(REVISION);
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    let (surge, _) = fenceposts(d);
    annotations.insert(REVISION.into(), revision.to_string());
    annotations.insert(
        DESIRED_REPLICAS.into(),
        spec.replicas.unwrap_or(1).to_string(),
    );
    annotations.insert(
        MAX_REPLICAS.into(),
        (spec.replicas.unwrap_or(1) + surge).to_string(),
    );
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{}-{hash}", d.name_any())),
            namespace: d.namespace(),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(d)]),
            ..Default::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        },
        status: None,
    }
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn rs_state(rs: &ReplicaSet) -> RsState {
    RsState {
        replicas: rs.spec.replicas.unwrap_or(1),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

fn condition(
    old: Option<&Vec<DeploymentCondition>>,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
) -> DeploymentCondition {
    let prev = old.and_then(|cs| cs.iter().find(|c| c.type_.as_deref() == Some(type_)));
    let now = util::now();
    let same = prev.is_some_and(|p| p.status.as_deref() == Some(status));
    let unchanged = prev.is_some_and(|p| {
        p.status.as_deref() == Some(status)
            && p.reason.as_deref() == Some(reason)
            && p.message.as_deref() == Some(&message)
    });
    DeploymentCondition {
        type_: Some(type_.into()),
        status: Some(status.into()),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: if same {
            prev.and_then(|p| p.last_transition_time.clone())
        } else {
            Some(now.clone())
        },
        last_update_time: if unchanged {
            prev.and_then(|p| p.last_update_time.clone())
        } else {
            Some(now)
        },
    }
}

/// The Deployment's status from its ReplicaSets (kube's `calculateStatus` and the
/// Available/Progressing conditions).
pub fn status(d: &Deployment, new: Option<&ReplicaSet>, all: &[&ReplicaSet]) -> DeploymentStatus {
    let st = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let replicas: i32 = all.iter().map(|r| st(r).replicas).sum();
    let ready: i32 = all.iter().map(|r| st(r).ready_replicas.unwrap_or(0)).sum();
    let available: i32 = all
        .iter()
        .map(|r| st(r).available_replicas.unwrap_or(0))
        .sum();
    let updated = new.map_or(0, |r| st(r).replicas);
    let want = d.spec.replicas.unwrap_or(1);
    let (_, max_unavailable) = fenceposts(d);
    let old = d.status.as_ref().and_then(|s| s.conditions.as_ref());
    let mut conditions = vec![if available >= want - max_unavailable {
        condition(
            old,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        condition(
            old,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    }];
    if d.spec.paused == Some(true) {
        conditions.push(condition(
            old,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
        ));
    } else if let Some(n) = new {
        let complete = updated == want && replicas == want && available == want;
        let prev = old.and_then(|cs| {
            cs.iter()
                .find(|c| c.type_.as_deref() == Some("Progressing"))
        });
        let os = d.status.clone().unwrap_or_default();
        // kube's DeploymentProgressing: more updated, ready or available pods, or
        // fewer old ones.
        let progressed = updated > os.updated_replicas.unwrap_or(0)
            || replicas - updated < os.replicas.unwrap_or(0) - os.updated_replicas.unwrap_or(0)
            || ready > os.ready_replicas.unwrap_or(0)
            || available > os.available_replicas.unwrap_or(0);
        let progressing = format!("ReplicaSet \"{}\" is progressing.", n.name_any());
        let timed_out = format!("ReplicaSet \"{}\" has timed out progressing.", n.name_any());
        let prev_is = |reason: &str, msg: &str| {
            prev.is_some_and(|p| {
                p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(msg)
            })
        };
        let deadline = i64::from(d.spec.progress_deadline_seconds.unwrap_or(600));
        let stale = prev
            .and_then(|p| p.last_update_time.as_ref())
            .is_some_and(|t| {
                k8s_openapi::jiff::Timestamp::now()
                    .duration_since(t.0)
                    .as_secs()
                    >= deadline
            });
        conditions.push(if complete {
            condition(
                old,
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!(
                    "ReplicaSet \"{}\" has successfully progressed.",
                    n.name_any()
                ),
            )
        } else if progressed {
            let mut c = condition(old, "Progressing", "True", "ReplicaSetUpdated", progressing);
            c.last_update_time = Some(util::now());
            c
        } else if prev_is("ProgressDeadlineExceeded", &timed_out)
            || (prev_is("ReplicaSetUpdated", &progressing) && stale)
        {
            condition(
                old,
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                timed_out,
            )
        } else {
            condition(old, "Progressing", "True", "ReplicaSetUpdated", progressing)
        });
    }
    DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((want - available).max(0)),
        collision_count: d.status.as_ref().and_then(|s| s.collision_count),
        conditions: Some(conditions),
        terminating_replicas: None,
    }
}

/// Status equal apart from condition timestamps.
fn same_status(a: Option<&DeploymentStatus>, b: &DeploymentStatus) -> bool {
    let strip = |s: &DeploymentStatus| {
        let mut s = s.clone();
        for c in s.conditions.iter_mut().flatten() {
            c.last_transition_time = None;
            c.last_update_time = None;
        }
        s
    };
    a.is_some_and(|a| strip(a) == strip(b))
}

/// Runs the Deployment controller.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![
        cache::ready(&c.deployments),
        cache::ready(&c.replicasets),
        cache::ready(&c.pods),
    ];
    let triggers = vec![c.deployments.subscribe(), c.replicasets.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop("deployment", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    let mut out = Outcome::default();
    let all_rs = ctx.caches.replicasets.all();
    let pods = ctx.caches.pods.all();
    for d in ctx.caches.deployments.all() {
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Err(e) = sync(ctx, &d, &all_rs, &pods, &mut out).await {
            warn!(error = %k8s::ErrorChain(&e), "deployment");
            out.failed = true;
        }
    }
    out
}

async fn sync(
    ctx: &Ctx,
    d: &Deployment,
    all_rs: &[Arc<ReplicaSet>],
    pods: &[Arc<k8s_openapi::api::core::v1::Pod>],
    out: &mut Outcome,
) -> Result<(), Error> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let spec = d.spec.clone();
    let replicas = spec.replicas.unwrap_or(1);
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let cache_rs = &ctx.caches.replicasets;
    // Orphan ReplicaSets matching the selector are adopted (say, after a delete with
    // `--cascade=orphan` and a new apply); the next pass sees them as ours.
    let orphans = util::orphans(all_rs, &ns, &spec.selector);
    if !orphans.is_empty() {
        for rs in orphans {
            out.expect
                .push(util::adopt(&ctx.client, cache_rs, rs, d).await?);
        }
        return Ok(());
    }
    let mut owned: Vec<&ReplicaSet> = all_rs
        .iter()
        .map(|r| &**r)
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()) && owned_by(*r, d))
        .collect();
    owned.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then(a.name_any().cmp(&b.name_any()))
    });
    let new = owned.iter().copied().find(|r| {
        r.spec
            .template
            .as_ref()
            .is_some_and(|t| templates_equal(t, &spec.template))
    });
    let olds: Vec<&ReplicaSet> = owned
        .iter()
        .copied()
        .filter(|r| Some(r.name_any()) != new.map(|n| n.name_any()))
        .collect();
    let max_old_revision = olds.iter().map(|r| revision(r)).max().unwrap_or(0);
    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    let fence = fenceposts(d);

    // Paused (`kubectl rollout pause`): no rollout and no scaling, only the status.
    if spec.paused == Some(true) {
        let st = status(d, new, &owned);
        if !same_status(d.status.as_ref(), &st) {
            let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
            let w = util::update(&api, d, &json!({"status": st}), true)
                .await
                .map_err(Error::api(format!(
                    "updating status of deployment {ns}/{name}"
                )))?;
            out.expect.push(cache::seen(
                &ctx.caches.deployments,
                &ns,
                &name,
                w.meta().resource_version.clone(),
            ));
        }
        return Ok(());
    }

    let Some(new) = new else {
        // The new ReplicaSet does not exist: make it, sized by the rollout arithmetic.
        let start = if recreate {
            if olds.iter().any(|o| rs_state(o).replicas > 0) {
                0
            } else {
                replicas
            }
        } else {
            let states: Vec<RsState> = olds.iter().map(|o| rs_state(o)).collect();
            rolling_step(
                replicas,
                fence,
                &RsState {
                    replicas: 0,
                    available: 0,
                },
                &states,
            )
            .0
        };
        let collisions = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collisions);
        let rs = new_replicaset(d, &hash, start, max_old_revision + 1);
        match rs_api.create(&PostParams::default(), &rs).await {
            Ok(w) => {
                let msg = format!("Scaled up replica set {} from 0 to {start}", w.name_any());
                k8s::events::record(
                    &ctx.client,
                    k8s::events::about(d, COMPONENT, "Normal", "ScalingReplicaSet", msg),
                );
                out.expect.push(cache::seen(
                    cache_rs,
                    &ns,
                    &w.name_any(),
                    w.metadata.resource_version,
                ));
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                let patch = json!({"metadata": {"annotations": {REVISION: (max_old_revision + 1).to_string()}}});
                let w = util::update(&api, d, &patch, false)
                    .await
                    .map_err(Error::api(format!("annotating deployment {ns}/{name}")))?;
                out.expect.push(cache::seen(
                    &ctx.caches.deployments,
                    &ns,
                    &name,
                    w.metadata.resource_version,
                ));
            }
            // A ReplicaSet of that name with another template: count the collision
            // so the next hash differs (kube's collisionCount).
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
                let patch = json!({"status": {"collisionCount": collisions.unwrap_or(0) + 1}});
                util::update(&api, d, &patch, true)
                    .await
                    .map_err(Error::api(format!(
                        "counting a hash collision of deployment {ns}/{name}"
                    )))?;
                out.failed = true;
            }
            Err(e) => {
                return Err(Error::api(format!(
                    "creating replicaset for deployment {ns}/{name}"
                ))(e));
            }
        }
        return Ok(());
    };

    // Targets for every ReplicaSet.
    let mut targets: Vec<(&ReplicaSet, i32)> = vec![];
    if recreate {
        let olds_running = olds.iter().any(|o| {
            rs_state(o).replicas > 0
                || pods.iter().any(|p| {
                    owned_by(&**p, *o) && !matches!(util::phase(p), "Succeeded" | "Failed")
                })
        });
        for o in &olds {
            targets.push((o, 0));
        }
        targets.push((
            new,
            if olds_running {
                rs_state(new).replicas.min(replicas)
            } else {
                replicas
            },
        ));
    } else {
        let states: Vec<RsState> = olds.iter().map(|o| rs_state(o)).collect();
        let (n, os) = rolling_step(replicas, fence, &rs_state(new), &states);
        targets.push((new, n));
        targets.extend(olds.iter().copied().zip(os));
    }
    let surge = fence.0;
    for (rs, target) in targets {
        let is_new = std::ptr::eq(rs, new);
        let mut annotations = serde_json::Map::new();
        if rs_state(rs).replicas != target {
            annotations.insert(DESIRED_REPLICAS.into(), json!(replicas.to_string()));
            annotations.insert(MAX_REPLICAS.into(), json!((replicas + surge).to_string()));
        }
        // A template rolled back to becomes the newest revision again.
        if is_new && revision(rs) <= max_old_revision {
            annotations.insert(REVISION.into(), json!((max_old_revision + 1).to_string()));
        }
        if annotations.is_empty() {
            continue;
        }
        let from = rs_state(rs).replicas;
        if from != target {
            let dir = if target > from { "up" } else { "down" };
            let msg = format!(
                "Scaled {dir} replica set {} from {from} to {target}",
                rs.name_any()
            );
            k8s::events::record(
                &ctx.client,
                k8s::events::about(d, COMPONENT, "Normal", "ScalingReplicaSet", msg),
            );
        }
        let patch = json!({"metadata": {"annotations": annotations}, "spec": {"replicas": target}});
        let w = rs_api
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
            .map_err(Error::api(format!("scaling replicaset {}", util::key(rs))))?;
        out.expect.push(cache::seen(
            cache_rs,
            &ns,
            &rs.name_any(),
            w.metadata.resource_version,
        ));
    }
    if !out.expect.is_empty() {
        // Status after the ReplicaSets have moved.
        return Ok(());
    }

    // Old, empty ReplicaSets beyond revisionHistoryLimit go, oldest first.
    let limit = usize::try_from(spec.revision_history_limit.unwrap_or(10)).unwrap_or(0);
    let empty: Vec<&&ReplicaSet> = olds
        .iter()
        .filter(|o| rs_state(o).replicas == 0 && o.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    if empty.len() > limit {
        for o in &empty[..empty.len() - limit] {
            match rs_api.delete(&o.name_any(), &DeleteParams::default()).await {
                Ok(_) => out.expect.push(cache::gone(cache_rs, &ns, &o.name_any())),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    return Err(Error::api(format!(
                        "deleting old replicaset {}",
                        util::key(**o)
                    ))(e));
                }
            }
        }
    }

    let st = status(d, Some(new), &owned);
    let d_revision = d.annotations().get(REVISION).cloned();
    let mut current = d.clone();
    let rev = revision(new).max(max_old_revision + 1).to_string();
    if d_revision.as_deref() != Some(rev.as_str()) {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = json!({"metadata": {"annotations": {REVISION: rev}}});
        let w = util::update(&api, &current, &patch, false)
            .await
            .map_err(Error::api(format!("annotating deployment {ns}/{name}")))?;
        out.expect.push(cache::seen(
            &ctx.caches.deployments,
            &ns,
            &name,
            w.metadata.resource_version.clone(),
        ));
        // The status is written next, onto what this update made.
        current = w;
    }
    // Look again when the progress deadline would pass.
    let progressing = st.conditions.iter().flatten().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ReplicaSetUpdated")
    });
    if let Some(t) = progressing.and_then(|c| c.last_update_time.as_ref()) {
        let deadline = i64::from(spec.progress_deadline_seconds.unwrap_or(600));
        let left = deadline
            - k8s_openapi::jiff::Timestamp::now()
                .duration_since(t.0)
                .as_secs();
        let left = std::time::Duration::from_secs(u64::try_from(left.max(0)).unwrap_or(0) + 1);
        out.requeue = Some(out.requeue.map_or(left, |r| r.min(left)));
    }
    if !same_status(d.status.as_ref(), &st) {
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        let w = util::update(&api, &current, &json!({"status": st}), true)
            .await
            .map_err(Error::api(format!(
                "updating status of deployment {ns}/{name}"
            )))?;
        out.expect.push(cache::seen(
            &ctx.caches.deployments,
            &ns,
            &name,
            w.meta().resource_version.clone(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(replicas: i32, available: i32) -> RsState {
        RsState {
            replicas,
            available,
        }
    }

    #[test]
    fn percentages_round_like_kube() {
        let p = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&p), 3, true, "25%"), 1);
        assert_eq!(scaled(Some(&p), 3, false, "25%"), 0);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 3, false, "25%"), 2);
    }

    #[test]
    fn rolling_update_of_three_with_default_fenceposts() {
        // replicas 3, surge 1, unavailable 0 (25% of 3 rounded down).
        let f = (1, 0);
        // Start: old has 3 available; new is created with 1 (surge).
        let (n, o) = rolling_step(3, f, &st(0, 0), &[st(3, 3)]);
        assert_eq!((n, o), (1, vec![3]));
        // New pod not yet available: nothing else moves.
        let (n, o) = rolling_step(3, f, &st(1, 0), &[st(3, 3)]);
        assert_eq!((n, o), (1, vec![3]));
        // New pod available: one old goes.
        let (n, o) = rolling_step(3, f, &st(1, 1), &[st(3, 3)]);
        assert_eq!((n, o), (1, vec![2]));
        // Then the new one grows again.
        let (n, o) = rolling_step(3, f, &st(1, 1), &[st(2, 2)]);
        assert_eq!((n, o), (2, vec![2]));
        // At the end the old one is empty.
        let (n, o) = rolling_step(3, f, &st(3, 3), &[st(1, 1)]);
        assert_eq!((n, o), (3, vec![0]));
    }

    #[test]
    fn unhealthy_old_pods_go_first_and_scaling_is_direct() {
        // Old replicas that are not available can go at once, within the budget.
        let (n, o) = rolling_step(4, (1, 1), &st(1, 0), &[st(4, 2)]);
        // Budget: 5 pods - 3 must stay available - 1 new not yet available = 1.
        assert_eq!(n, 1);
        assert_eq!(o, vec![3]);
        // Plain scale up and down with no old ReplicaSets.
        assert_eq!(rolling_step(5, (2, 1), &st(3, 3), &[]), (5, vec![]));
        assert_eq!(rolling_step(1, (1, 0), &st(3, 3), &[]), (1, vec![]));
    }

    #[test]
    fn status_and_conditions() {
        let d: Deployment =
            serde_json::from_value(json!({"metadata": {"name": "web", "generation": 3},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}}))
            .unwrap();
        let rs = |name: &str, r: i32, ready: i32, avail: i32| -> ReplicaSet {
            serde_json::from_value(json!({"metadata": {"name": name},
                "status": {"replicas": r, "readyReplicas": ready, "availableReplicas": avail}}))
            .unwrap()
        };
        let new = rs("web-new", 3, 3, 3);
        let old = rs("web-old", 1, 1, 1);
        let s = status(&d, Some(&new), &[&new, &old]);
        assert_eq!(
            (s.replicas, s.updated_replicas, s.available_replicas),
            (Some(4), Some(3), Some(4))
        );
        assert_eq!(s.observed_generation, Some(3));
        let progressing = &s.conditions.as_ref().unwrap()[1];
        assert_eq!(progressing.reason.as_deref(), Some("ReplicaSetUpdated"));
        let done = status(&d, Some(&new), &[&new]);
        assert_eq!(
            done.conditions.as_ref().unwrap()[1].reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        assert_eq!(
            done.conditions.as_ref().unwrap()[0].status.as_deref(),
            Some("True")
        );
        let rs_obj = new_replicaset(&d, "abc", 3, 1);
        assert_eq!(rs_obj.name_any(), "web-abc");
        assert_eq!(rs_obj.labels()[POD_TEMPLATE_HASH], "abc");
        assert_eq!(
            rs_obj.spec.selector.match_labels.unwrap()[POD_TEMPLATE_HASH],
            "abc"
        );
    }
}
