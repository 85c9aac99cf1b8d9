//! ReplicationControllers → Pods, as kube-controller-manager's `replicationcontroller`
//! controller, which upstream is the ReplicaSet controller run on ReplicationControllers
//! seen as ReplicaSets (its selector a map instead of a label selector). So here: each
//! ReplicationController is converted, planned by [`crate::replicaset::plan`], and its
//! pods and status written back as its own.

use std::sync::{Arc, Mutex};

use futures::FutureExt;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::{ReplicationController, ReplicationControllerStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::cache::{self, Outcome};
use crate::replicaset::{plan, sync_pods};
use crate::util;
use crate::{Ctx, Error};

const COMPONENT: &str = "replication-controller";

/// The ReplicaSet a ReplicationController is, for planning.
pub fn as_replicaset(rc: &ReplicationController) -> ReplicaSet {
    let spec = rc.spec.clone().unwrap_or_default();
    ReplicaSet {
        metadata: rc.metadata.clone(),
        spec: ReplicaSetSpec {
            replicas: spec.replicas,
            min_ready_seconds: spec.min_ready_seconds,
            selector: LabelSelector {
                match_labels: spec.selector,
                match_expressions: None,
            },
            template: spec.template,
        },
        // The two status types have the same fields.
        status: rc
            .status
            .as_ref()
            .and_then(|s| serde_json::from_value(json!(s)).ok()),
    }
}

/// Runs the ReplicationController controller.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![
        cache::ready(&c.replicationcontrollers),
        cache::ready(&c.pods),
    ];
    let triggers = vec![c.replicationcontrollers.subscribe(), c.pods.subscribe()];
    let resync = ctx.config.resync;
    cache::run_loop(
        "replicationcontroller",
        ready,
        triggers,
        resync,
        move || {
            let ctx = ctx.clone();
            async move { pass(&ctx).await }.boxed()
        },
    )
    .await;
}

async fn pass(ctx: &Ctx) -> Outcome {
    let c = &ctx.caches;
    let pods = c.pods.all();
    let now = Timestamp::now();
    let out = Arc::new(Mutex::new(Outcome::default()));
    let errors: Arc<Mutex<Vec<Error>>> = Arc::default();
    for rc in c.replicationcontrollers.all() {
        let ns = rc.namespace().unwrap_or_default();
        let rs = as_replicaset(&rc);
        let owned = util::owned_pods(&pods, &ns, &*rc);
        // Orphans matching the selector are adopted first (kube's ControllerRefManager).
        if let Some(adopted) =
            util::adopt_orphan_pods(&ctx.client, &c.pods, &pods, &rs.spec.selector, &*rc).await
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
        let template = rc
            .spec
            .as_ref()
            .and_then(|s| s.template.clone())
            .unwrap_or_default();
        sync_pods(
            ctx, &*rc, &template, p.create, p.delete, COMPONENT, &out, &errors,
        )
        .await;
        let Some(status) = p.status else { continue };
        let status: ReplicationControllerStatus =
            serde_json::from_value(json!(status)).unwrap_or_default();
        if rc.status.as_ref() == Some(&status) {
            continue;
        }
        let api: Api<ReplicationController> = Api::namespaced(ctx.client.clone(), &ns);
        match util::update(&api, &*rc, &json!({"status": status}), true).await {
            Ok(w) => out.lock().unwrap().expect.push(cache::seen(
                &c.replicationcontrollers,
                &ns,
                &rc.name_any(),
                w.meta().resource_version.clone(),
            )),
            Err(e) => errors.lock().unwrap().push(Error::api(format!(
                "updating status of replicationcontroller {}",
                util::key(&*rc)
            ))(e)),
        }
    }
    let mut out = std::mem::take(&mut *out.lock().unwrap());
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "replicationcontroller");
    }
    out.failed = !errors.is_empty();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replication_controller_plans_as_a_replicaset() {
        let rc: ReplicationController = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "rc-uid", "generation": 1},
            "spec": {"replicas": 2, "selector": {"app": "web"},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}},
            "status": {"replicas": 0}}))
        .unwrap();
        let rs = as_replicaset(&rc);
        assert_eq!(
            rs.spec.selector.match_labels.as_ref().unwrap()["app"],
            "web"
        );
        let p = plan(&rs, &[], Timestamp::now());
        assert_eq!(p.create, 2);
        let st: ReplicationControllerStatus =
            serde_json::from_value(json!(p.status.unwrap())).unwrap();
        assert_eq!((st.replicas, st.observed_generation), (0, Some(1)));
    }
}
