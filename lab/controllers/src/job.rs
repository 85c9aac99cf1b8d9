//! Jobs → Pods, as kube-controller-manager's `job` and `ttl-after-finished`
//! controllers: up to `parallelism` pods at a time until `completions` succeeded (or,
//! without `completions`, one succeeded and none is left running); pod failures
//! (failed pods, and container restarts with `restartPolicy: OnFailure`) beyond
//! `backoffLimit` fail the Job (`BackoffLimitExceeded`), so does
//! `activeDeadlineSeconds` (`DeadlineExceeded`); after a failure the next pod waits,
//! 1 s doubling per failure up to 64 s (kube: 10 s up to 6 min); `suspend` deletes the
//! running pods. A finished Job's leftover pods are deleted and, with
//! `ttlSecondsAfterFinished`, the Job itself once that time has passed. Pod counts come
//! from the pods themselves (kube tracks them with finalizers instead). The
//! `Indexed` completion mode is not implemented.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Outcome};
use crate::replicaset::{deletion_order, sync_pods};
use crate::util::{self, phase, pod_active, pod_ready};
use crate::{Ctx, Error};

const COMPONENT: &str = "job-controller";
/// The first wait after a failure; doubles per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// At most this many doublings (64 s).
const MAX_DOUBLINGS: u32 = 6;

/// What one Job needs (pure).
#[derive(Debug, Default, PartialEq)]
pub struct JobPlan {
    /// Pods to create.
    pub create: usize,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    /// The status to write, when it differs.
    pub status: Option<JobStatus>,
    /// Delete the Job (its TTL after finishing has passed).
    pub delete_job: bool,
    /// Look again after this long.
    pub requeue: Option<Duration>,
}

fn condition_true(status: &JobStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == type_ && c.status == "True")
}

fn condition(type_: &str, reason: &str, message: &str, now: &Time) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// Adds `c` unless a condition of its type is already there with its status.
fn set_condition(conditions: &mut Vec<JobCondition>, c: JobCondition) {
    match conditions.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status => {}
        Some(x) => *x = c,
        None => conditions.push(c),
    }
}

/// When a finished pod stopped (its Ready condition's last change, else its creation).
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .and_then(|c| c.last_transition_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// Until when the next pod waits after `failures` failures, the last at `last`.
fn backoff_until(failures: i32, last: Option<Timestamp>) -> Option<Timestamp> {
    let n = u32::try_from(failures).ok().filter(|n| *n > 0)?;
    let wait = FIRST_BACKOFF * 2u32.pow((n - 1).min(MAX_DOUBLINGS));
    let wait = k8s_openapi::jiff::SignedDuration::try_from(wait).ok()?;
    last?.checked_add(wait).ok()
}

fn to_std(d: k8s_openapi::jiff::SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Pods, status, deletion and requeue for `job`, from the pods it controls.
pub fn plan(job: &Job, pods: &[&Pod], now: Timestamp) -> JobPlan {
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let now_t = Time(now);
    let mut out = JobPlan::default();
    let mut active: Vec<&Pod> = pods.iter().copied().filter(|p| pod_active(p)).collect();
    let succeeded = count(pods.iter().filter(|p| phase(p) == "Succeeded").count());
    let failed_pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| phase(p) == "Failed")
        .collect();
    let failed = count(failed_pods.len());
    // With OnFailure the kubelet restarts containers instead of failing pods; kube
    // counts those restarts against the backoff limit.
    let restarts: i32 = active
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum();
    let mut status = JobStatus {
        conditions: old.conditions.clone(),
        start_time: old.start_time.clone(),
        completion_time: old.completion_time.clone(),
        ..Default::default()
    };
    let mut conditions = status.conditions.take().unwrap_or_default();
    let finished = condition_true(&old, "Complete") || condition_true(&old, "Failed");
    let mut want = 0usize;
    if finished || job.metadata.deletion_timestamp.is_some() {
        // Leftovers of a finished Job go; its TTL counts from when it finished.
        if let Some(ttl) = spec.ttl_seconds_after_finished.filter(|_| finished) {
            let done = old.completion_time.as_ref().map(|t| t.0).or_else(|| {
                old.conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Failed")
                    .and_then(|c| c.last_transition_time.as_ref())
                    .map(|t| t.0)
            });
            if let Some(done) = done {
                let end = done + k8s_openapi::jiff::SignedDuration::from_secs(i64::from(ttl));
                if now >= end {
                    out.delete_job = true;
                } else {
                    out.requeue = Some(to_std(end.duration_since(now)));
                }
            }
        }
    } else if spec.suspend == Some(true) {
        set_condition(
            &mut conditions,
            condition("Suspended", "JobSuspended", "Job suspended", &now_t),
        );
    } else {
        if let Some(c) = conditions.iter_mut().find(|c| c.type_ == "Suspended") {
            c.status = "False".into();
            c.reason = Some("JobResumed".into());
            c.message = Some("Job resumed".into());
            c.last_transition_time = Some(now_t.clone());
        }
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let deadline = spec
            .active_deadline_seconds
            .zip(status.start_time.as_ref())
            .map(|(d, s)| s.0 + k8s_openapi::jiff::SignedDuration::from_secs(d));
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if complete {
            for (t, r, m) in [
                (
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                (
                    "Complete",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
            ] {
                set_condition(&mut conditions, condition(t, r, m, &now_t));
            }
            status.completion_time = Some(now_t.clone());
        } else if failed + restarts > backoff_limit {
            for t in ["FailureTarget", "Failed"] {
                set_condition(
                    &mut conditions,
                    condition(
                        t,
                        "BackoffLimitExceeded",
                        "Job has reached the specified backoff limit",
                        &now_t,
                    ),
                );
            }
        } else if deadline.is_some_and(|d| now >= d) {
            for t in ["FailureTarget", "Failed"] {
                set_condition(
                    &mut conditions,
                    condition(
                        t,
                        "DeadlineExceeded",
                        "Job was active longer than specified deadline",
                        &now_t,
                    ),
                );
            }
        } else {
            let parallelism = usize::try_from(spec.parallelism.unwrap_or(1)).unwrap_or(0);
            want = match spec.completions {
                Some(c) => parallelism.min(usize::try_from(c - succeeded).unwrap_or(0)),
                None => parallelism,
            };
            if let Some(d) = deadline {
                out.requeue = Some(to_std(d.duration_since(now)));
            }
        }
    }
    if active.len() < want {
        let last_failure = failed_pods.iter().filter_map(|p| finished_at(p)).max();
        match backoff_until(failed, last_failure) {
            Some(until) if now < until => {
                let wait = to_std(until.duration_since(now));
                out.requeue = Some(out.requeue.map_or(wait, |r| r.min(wait)));
            }
            _ => {
                out.create = want - active.len();
                if status.start_time.is_none() {
                    status.start_time = Some(now_t.clone());
                }
            }
        }
    } else if active.len() > want {
        deletion_order(&mut active);
        out.delete = active[..active.len() - want]
            .iter()
            .map(|p| p.name_any())
            .collect();
    }
    let nonzero = |n: i32| (n > 0).then_some(n);
    let left = count(active.len().saturating_sub(out.delete.len()));
    status.active = nonzero(left + count(out.create));
    status.succeeded = nonzero(succeeded);
    status.failed = nonzero(failed);
    status.ready = Some(count(
        active
            .iter()
            .filter(|p| pod_ready(p) && !out.delete.contains(&p.name_any()))
            .count(),
    ));
    status.terminating = Some(count(pods.iter().filter(|p| util::terminating(p)).count()));
    status.uncounted_terminated_pods = Some(Default::default());
    status.conditions = (!conditions.is_empty()).then_some(conditions);
    if job.status.as_ref() != Some(&status) {
        out.status = Some(status);
    }
    out
}

/// Runs the Job controller; finished Jobs past their TTL are deleted with
/// `ttl_after_finished` (the ttl-after-finished controller's client).
pub async fn run(ctx: Ctx, ttl_after_finished: kube::Client) {
    let c = &ctx.caches;
    let ready = vec![cache::ready(&c.jobs), cache::ready(&c.pods)];
    let triggers = vec![c.jobs.subscribe(), c.pods.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop("job", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        let ttl = ttl_after_finished.clone();
        async move { pass(&ctx, &ttl).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx, ttl_after_finished: &kube::Client) -> Outcome {
    let c = &ctx.caches;
    let pods = c.pods.all();
    let now = Timestamp::now();
    let out = Arc::new(Mutex::new(Outcome::default()));
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    for job in c.jobs.all() {
        let ns = job.namespace().unwrap_or_default();
        let owned = util::owned_pods(&pods, &ns, &*job);
        let p = plan(&job, &owned, now);
        if let Some(r) = p.requeue {
            let mut o = out.lock().unwrap();
            o.requeue = Some(o.requeue.map_or(r, |x| x.min(r)));
        }
        let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        if p.delete_job {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Foreground),
                ..Default::default()
            };
            let ttl_api: Api<Job> = Api::namespaced(ttl_after_finished.clone(), &ns);
            match ttl_api.delete(&job.name_any(), &dp).await {
                Ok(_) | Err(kube::Error::Api(_)) => {}
                Err(e) => errors
                    .lock()
                    .unwrap()
                    .push(Error::api(format!("deleting job {}", util::key(&*job)))(e)),
            }
            continue;
        }
        // The status first: a pod created before its start time is written would be
        // counted by a pass that still sees the old status.
        if let Some(status) = &p.status {
            let became = |t: &str| {
                status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == t && c.status == "True")
                    && !job.status.as_ref().is_some_and(|s| condition_true(s, t))
            };
            if became("Complete") {
                k8s::events::record(
                    &ctx.client,
                    k8s::events::about(&*job, COMPONENT, "Normal", "Completed", "Job completed"),
                );
            }
            if became("Failed") {
                let msg = status
                    .conditions
                    .iter()
                    .flatten()
                    .find(|c| c.type_ == "Failed")
                    .and_then(|c| c.message.clone())
                    .unwrap_or_default();
                k8s::events::record(
                    &ctx.client,
                    k8s::events::about(&*job, COMPONENT, "Warning", "BackoffLimitExceeded", msg),
                );
            }
            // Every field, so that what is gone is removed (null in a merge).
            let patch = json!({"status": {
                "active": status.active,
                "succeeded": status.succeeded,
                "failed": status.failed,
                "ready": status.ready,
                "terminating": status.terminating,
                "startTime": status.start_time,
                "completionTime": status.completion_time,
                "conditions": status.conditions,
                "uncountedTerminatedPods": status.uncounted_terminated_pods,
            }});
            match util::update(&jobs_api, &*job, &patch, true).await {
                Ok(w) => out.lock().unwrap().expect.push(cache::seen(
                    &c.jobs,
                    &ns,
                    &job.name_any(),
                    w.meta().resource_version.clone(),
                )),
                Err(e) => {
                    errors.lock().unwrap().push(Error::api(format!(
                        "updating status of job {}",
                        util::key(&*job)
                    ))(e));
                    continue;
                }
            }
        }
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        sync_pods(
            ctx, &*job, &template, p.create, p.delete, COMPONENT, &out, &errors,
        )
        .await;
    }
    let mut out = std::mem::take(&mut *out.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "job");
    }
    out.failed = !errors.is_empty();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(spec: serde_json::Value) -> Job {
        let mut s = json!({"template": {"metadata": {"labels": {"job-name": "pi"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(
            json!({"metadata": {"name": "pi", "namespace": "default", "uid": "job-uid"},
            "spec": s}),
        )
        .unwrap()
    }

    fn pod(name: &str, phase: &str, at: &str) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name, "creationTimestamp": at},
            "spec": {"containers": []},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": at}]}}))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn runs_parallel_pods_until_completions() {
        let j = job(json!({"completions": 3, "parallelism": 2}));
        let now = at("2026-01-01T00:00:10Z");
        let p = plan(&j, &[], now);
        assert_eq!(p.create, 2);
        let st = p.status.unwrap();
        assert_eq!((st.active, st.start_time.is_some()), (Some(2), true));
        // One succeeded: one more runs beside the running one, then none is wanted.
        let a = pod("a", "Succeeded", "2026-01-01T00:00:00Z");
        let b = pod("b", "Running", "2026-01-01T00:00:00Z");
        assert_eq!(plan(&j, &[&a, &b], now).create, 1);
        let c = pod("c", "Succeeded", "2026-01-01T00:00:00Z");
        let d = pod("d", "Succeeded", "2026-01-01T00:00:00Z");
        let p = plan(&j, &[&a, &c, &d], now);
        assert_eq!(p.create, 0);
        let st = p.status.unwrap();
        assert!(condition_true(&st, "Complete") && condition_true(&st, "SuccessCriteriaMet"));
        assert_eq!(
            (st.succeeded, st.completion_time.is_some()),
            (Some(3), true)
        );
    }

    #[test]
    fn failures_back_off_then_exceed_the_limit() {
        let j = job(json!({"backoffLimit": 1}));
        let f1 = pod("f1", "Failed", "2026-01-01T00:00:00Z");
        // 1 s after the first failure the next pod may start.
        let p = plan(&j, &[&f1], at("2026-01-01T00:00:00.5Z"));
        assert_eq!((p.create, p.requeue), (0, Some(Duration::from_millis(500))));
        assert_eq!(plan(&j, &[&f1], at("2026-01-01T00:00:01Z")).create, 1);
        let f2 = pod("f2", "Failed", "2026-01-01T00:00:02Z");
        let p = plan(&j, &[&f1, &f2], at("2026-01-01T00:00:09Z"));
        let st = p.status.unwrap();
        assert!(condition_true(&st, "Failed"), "{st:?}");
        let c = st.conditions.unwrap();
        assert_eq!(c[1].reason.as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(st.failed, Some(2));
    }

    #[test]
    fn a_finished_job_goes_after_its_ttl_and_suspension_stops_pods() {
        let mut j = job(json!({"ttlSecondsAfterFinished": 10}));
        j.status = Some(JobStatus {
            completion_time: Some(Time(at("2026-01-01T00:00:00Z"))),
            conditions: Some(vec![condition(
                "Complete",
                "CompletionsReached",
                "",
                &Time(at("2026-01-01T00:00:00Z")),
            )]),
            ..Default::default()
        });
        let p = plan(&j, &[], at("2026-01-01T00:00:04Z"));
        assert_eq!(
            (p.delete_job, p.requeue),
            (false, Some(Duration::from_secs(6)))
        );
        assert!(plan(&j, &[], at("2026-01-01T00:00:10Z")).delete_job);
        let s = job(json!({"suspend": true}));
        let r = pod("r", "Running", "2026-01-01T00:00:00Z");
        let p = plan(&s, &[&r], at("2026-01-01T00:00:04Z"));
        assert_eq!(p.delete, ["r"]);
        assert!(condition_true(&p.status.unwrap(), "Suspended"));
    }
}
