//! CronJobs → Jobs, as kube-controller-manager's `cronjob` controller (v2): at each
//! time the schedule names (UTC; `@hourly` and the other descriptors too) a Job
//! `<cronjob>-<minutes since the epoch>` is made from `jobTemplate`, unless the
//! CronJob is suspended, the time is older than `startingDeadlineSeconds`, or
//! `concurrencyPolicy: Forbid` finds a Job still running (`Replace` deletes it first).
//! Only the most recent missed time runs after a pause. Finished Jobs beyond
//! `successfulJobsHistoryLimit`/`failedJobsHistoryLimit` are deleted, oldest first.
//! Status: `active` (references to running Jobs, those `kubectl create job
//! --from=cronjob/...` made included), `lastScheduleTime`, `lastSuccessfulTime`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::batch::v1::{CronJob, CronJobStatus, Job};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Outcome};
use crate::util::{self, controller_ref, owned_by};
use crate::{Ctx, Error};

const COMPONENT: &str = "cronjob-controller";
/// The annotation with the time a Job was scheduled for.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// What one CronJob needs (pure).
#[derive(Debug, Default, PartialEq)]
pub struct CronPlan {
    /// The Job to create.
    pub create: Option<Job>,
    /// Jobs to delete (replaced, or beyond the history limits), by name.
    pub delete: Vec<String>,
    /// The status to write, when it differs.
    pub status: Option<CronJobStatus>,
    /// When the schedule next fires.
    pub requeue: Option<Duration>,
}

/// Whether the Job finished, and how: `Some(true)` complete, `Some(false)` failed.
fn finished(job: &Job) -> Option<bool> {
    let cond = |t: &str| {
        job.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == t && c.status == "True"))
    };
    if cond("Complete") {
        Some(true)
    } else if cond("Failed") {
        Some(false)
    } else {
        None
    }
}

fn parse(schedule: &str) -> Option<croner::Cron> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .build()
        .parse(schedule)
        .ok()
}

fn to_chrono(t: Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp(t.as_second(), 0)
}

fn from_chrono(t: chrono::DateTime<chrono::Utc>) -> Option<Timestamp> {
    Timestamp::from_second(t.timestamp()).ok()
}

fn reference(job: &Job) -> ObjectReference {
    ObjectReference {
        api_version: Some("batch/v1".into()),
        kind: Some("Job".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        resource_version: job.metadata.resource_version.clone(),
        ..Default::default()
    }
}

/// The Job for `scheduled` (kube's `getJobFromTemplate2`).
pub fn job_for(cj: &CronJob, scheduled: Timestamp) -> Job {
    let template = cj.spec.job_template.clone();
    let meta = template.metadata.unwrap_or_default();
    let mut annotations = meta.annotations.unwrap_or_default();
    annotations.insert(SCHEDULED_ANNOTATION.into(), scheduled.to_string());
    Job {
        metadata: ObjectMeta {
            name: Some(format!("{}-{}", cj.name_any(), scheduled.as_second() / 60)),
            namespace: cj.metadata.namespace.clone(),
            labels: meta.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![controller_ref(cj)]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The Jobs, deletions, status and next wake-up for `cj`, from the Jobs it controls.
pub fn plan(cj: &CronJob, jobs: &[&Job], now: Timestamp) -> CronPlan {
    let spec = cj.spec.clone();
    let old = cj.status.clone().unwrap_or_default();
    let mut out = CronPlan::default();
    let mut status = CronJobStatus {
        last_schedule_time: old.last_schedule_time.clone(),
        last_successful_time: old.last_successful_time.clone(),
        ..Default::default()
    };
    let running: Vec<&Job> = jobs
        .iter()
        .copied()
        .filter(|j| finished(j).is_none())
        .collect();
    let mut active: Vec<&Job> = running.clone();
    // The most recent successful completion.
    let last_success = jobs
        .iter()
        .filter(|j| finished(j) == Some(true))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max_by_key(|t| t.0);
    if let Some(t) = last_success
        && status
            .last_successful_time
            .as_ref()
            .is_none_or(|o| o.0 < t.0)
    {
        status.last_successful_time = Some(t);
    }
    let sched = parse(&spec.schedule);
    let deleting = cj.metadata.deletion_timestamp.is_some();
    if let (Some(sched), false) = (&sched, deleting) {
        let since = old
            .last_schedule_time
            .as_ref()
            .or(cj.metadata.creation_timestamp.as_ref())
            .map_or(now, |t| t.0);
        let due = to_chrono(now)
            .and_then(|n| sched.find_previous_occurrence(&n, true).ok())
            .and_then(from_chrono)
            .filter(|t| *t > since);
        let next = to_chrono(now)
            .and_then(|n| sched.find_next_occurrence(&n, false).ok())
            .and_then(from_chrono);
        if let Some(next) = next {
            // A little after the minute, so the time has come when the pass runs.
            let wait = Duration::try_from(next.duration_since(now)).unwrap_or(Duration::ZERO);
            out.requeue = Some(wait + Duration::from_millis(100));
        }
        let too_late = |t: Timestamp| {
            spec.starting_deadline_seconds
                .is_some_and(|d| now.duration_since(t).as_secs() > d)
        };
        if let Some(t) = due
            && spec.suspend != Some(true)
            && !too_late(t)
        {
            let name = format!("{}-{}", cj.name_any(), t.as_second() / 60);
            let exists = jobs.iter().any(|j| j.name_any() == name);
            let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
            let blocked = policy == "Forbid" && !running.is_empty();
            if !blocked {
                if policy == "Replace" {
                    out.delete.extend(running.iter().map(|j| j.name_any()));
                    active.clear();
                }
                if !exists {
                    out.create = Some(job_for(cj, t));
                }
                status.last_schedule_time = Some(Time(t));
            }
        }
    }
    // History: the oldest finished Jobs beyond each limit.
    for (success, limit) in [
        (true, spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let mut done: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| finished(j) == Some(success))
            .collect();
        done.sort_by_key(|j| {
            j.status
                .as_ref()
                .and_then(|s| s.start_time.clone().or(s.completion_time.clone()))
                .map(|t| t.0)
                .or(j.metadata.creation_timestamp.as_ref().map(|t| t.0))
        });
        let keep = usize::try_from(limit).unwrap_or(0);
        if done.len() > keep {
            out.delete
                .extend(done[..done.len() - keep].iter().map(|j| j.name_any()));
        }
    }
    let refs: Vec<ObjectReference> = active.iter().map(|j| reference(j)).collect();
    status.active = (!refs.is_empty()).then_some(refs);
    if cj.status.as_ref() != Some(&status) {
        out.status = Some(status);
    }
    out
}

/// Runs the CronJob controller.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![cache::ready(&c.cronjobs), cache::ready(&c.jobs)];
    let triggers = vec![c.cronjobs.subscribe(), c.jobs.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop("cronjob", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        async move { pass(&ctx).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    let c = &ctx.caches;
    let jobs = c.jobs.all();
    let now = Timestamp::now();
    let out = Arc::new(Mutex::new(Outcome::default()));
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    for cj in c.cronjobs.all() {
        let ns = cj.namespace().unwrap_or_default();
        let owned: Vec<&Job> = jobs
            .iter()
            .map(|j| &**j)
            .filter(|j| j.metadata.namespace.as_deref() == Some(ns.as_str()) && owned_by(*j, &*cj))
            .collect();
        let p = plan(&cj, &owned, now);
        if let Some(r) = p.requeue {
            let mut o = out.lock().unwrap();
            o.requeue = Some(o.requeue.map_or(r, |x| x.min(r)));
        }
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
        for name in &p.delete {
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                ..Default::default()
            };
            match api.delete(name, &dp).await {
                Ok(_) => {
                    let msg = format!("Deleted job {name}");
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(&*cj, COMPONENT, "Normal", "SuccessfulDelete", msg),
                    );
                    out.lock()
                        .unwrap()
                        .expect
                        .push(cache::gone(&c.jobs, &ns, name));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => errors
                    .lock()
                    .unwrap()
                    .push(Error::api(format!("deleting job {ns}/{name}"))(e)),
            }
        }
        let mut status = p.status.clone();
        if let Some(job) = &p.create {
            match api.create(&PostParams::default(), job).await {
                Ok(w) => {
                    let msg = format!("Created job {}", w.name_any());
                    k8s::events::record(
                        &ctx.client,
                        k8s::events::about(&*cj, COMPONENT, "Normal", "SuccessfulCreate", msg),
                    );
                    out.lock()
                        .unwrap()
                        .expect
                        .push(cache::seen(&c.jobs, &ns, &w.name_any(), None));
                    if let Some(st) = status.as_mut() {
                        st.active.get_or_insert_with(Vec::new).push(reference(&w));
                    }
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => {
                    errors.lock().unwrap().push(Error::api(format!(
                        "creating a job for cronjob {}",
                        util::key(&*cj)
                    ))(e));
                    continue;
                }
            }
        }
        if let Some(status) = status {
            let cjs: Api<CronJob> = Api::namespaced(ctx.client.clone(), &ns);
            match util::update(
                &cjs,
                &*cj,
                &json!({"status": {
                    "active": status.active,
                    "lastScheduleTime": status.last_schedule_time,
                    "lastSuccessfulTime": status.last_successful_time,
                }}),
                true,
            )
            .await
            {
                Ok(w) => out.lock().unwrap().expect.push(cache::seen(
                    &c.cronjobs,
                    &ns,
                    &cj.name_any(),
                    w.meta().resource_version.clone(),
                )),
                Err(e) => errors.lock().unwrap().push(Error::api(format!(
                    "updating status of cronjob {}",
                    util::key(&*cj)
                ))(e)),
            }
        }
    }
    let mut out = std::mem::take(&mut *out.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "cronjob");
    }
    out.failed = !errors.is_empty();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cj(spec: serde_json::Value) -> CronJob {
        let mut s = json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "OnFailure", "containers": [{"name": "c", "image": "busybox"}]}}}}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(
            json!({"metadata": {"name": "tick", "namespace": "default", "uid": "cj-uid",
            "creationTimestamp": "2026-01-01T00:00:30Z"}, "spec": s}),
        )
        .unwrap()
    }

    fn job(name: &str, state: Option<bool>, start: &str) -> Job {
        let cond =
            state.map(|ok| json!([{"type": if ok {"Complete"} else {"Failed"}, "status": "True"}]));
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"},
            "status": {"conditions": cond, "startTime": start, "completionTime": if state == Some(true) { Some(start) } else { None }}}))
        .unwrap()
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn fires_at_the_scheduled_minute_once() {
        let c = cj(json!({}));
        // Before the first time: nothing, wake up at 00:05.
        let p = plan(&c, &[], at("2026-01-01T00:04:00Z"));
        assert_eq!(p.create, None);
        assert_eq!(p.requeue, Some(Duration::from_millis(60_100)));
        // At 00:05:10: the Job of 00:05.
        let p = plan(&c, &[], at("2026-01-01T00:05:10Z"));
        let j = p.create.unwrap();
        let minutes = at("2026-01-01T00:05:00Z").as_second() / 60;
        assert_eq!(j.metadata.name.unwrap(), format!("tick-{minutes}"));
        assert_eq!(
            j.metadata.annotations.unwrap()[SCHEDULED_ANNOTATION],
            "2026-01-01T00:05:00Z"
        );
        assert_eq!(j.metadata.owner_references.unwrap()[0].kind, "CronJob");
        let st = p.status.unwrap();
        assert_eq!(st.last_schedule_time.unwrap().0, at("2026-01-01T00:05:00Z"));
        // Once recorded, the same time does not fire again.
        let mut done = c.clone();
        done.status = Some(CronJobStatus {
            last_schedule_time: Some(Time(at("2026-01-01T00:05:00Z"))),
            ..Default::default()
        });
        assert_eq!(plan(&done, &[], at("2026-01-01T00:06:00Z")).create, None);
    }

    #[test]
    fn concurrency_policies_and_history() {
        let running = job("tick-1", None, "2026-01-01T00:00:00Z");
        let now = at("2026-01-01T00:05:01Z");
        let forbid = cj(json!({"concurrencyPolicy": "Forbid"}));
        assert_eq!(plan(&forbid, &[&running], now).create, None);
        let replace = cj(json!({"concurrencyPolicy": "Replace"}));
        let p = plan(&replace, &[&running], now);
        assert!(p.create.is_some());
        assert_eq!(p.delete, ["tick-1"]);
        let suspended = cj(json!({"suspend": true}));
        assert_eq!(plan(&suspended, &[], now).create, None);
        let late = cj(json!({"startingDeadlineSeconds": 0}));
        assert_eq!(plan(&late, &[], now).create, None);
        // Two successes kept of three, one failure of two.
        let h = cj(json!({"successfulJobsHistoryLimit": 2}));
        let s1 = job("s1", Some(true), "2026-01-01T00:00:01Z");
        let s2 = job("s2", Some(true), "2026-01-01T00:00:02Z");
        let s3 = job("s3", Some(true), "2026-01-01T00:00:03Z");
        let f1 = job("f1", Some(false), "2026-01-01T00:00:01Z");
        let f2 = job("f2", Some(false), "2026-01-01T00:00:02Z");
        let p = plan(&h, &[&s2, &s1, &s3, &f1, &f2], at("2026-01-01T00:01:00Z"));
        assert_eq!(p.delete, ["s1", "f1"]);
        let st = p.status.unwrap();
        assert_eq!(
            st.last_successful_time.unwrap().0,
            at("2026-01-01T00:00:03Z")
        );
    }
}
