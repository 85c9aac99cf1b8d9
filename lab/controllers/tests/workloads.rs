//! Deployments, ReplicaSets and the scheduler through the real embedded API server (in
//! process), with a fake kubelet reporting pods Running and Ready.

mod common;

use common::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

fn deployment(replicas: i32, image: &str) -> serde_json::Value {
    json!({"metadata": {"name": "web"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 80}]}]}}}})
}

fn complete(d: &Deployment, n: i32) -> bool {
    let Some(s) = &d.status else { return false };
    s.observed_generation >= d.metadata.generation
        && s.replicas == Some(n)
        && s.updated_replicas == Some(n)
        && s.ready_replicas == Some(n)
        && s.available_replicas == Some(n)
}

async fn active_pods(c: &kube::Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.list(&ListParams::default().labels("app=web"))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

#[tokio::test]
async fn deployment_scales_and_rolls_within_surge_and_unavailability() {
    let h = start();
    let c = &h.client;
    ready_node(c, "node-1", json!({})).await;
    ready_node(c, "node-2", json!({})).await;
    let _kubelet = fake_kubelet(c);
    let _: Deployment = create(c, "default", deployment(3, "nginx")).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    eventually("3 replicas available", || async {
        complete(&deploys.get("web").await.unwrap(), 3).then_some(())
    })
    .await;

    // The ReplicaSet and its pods: pod-template-hash, names, controller references.
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let rs = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rs.len(), 1);
    let rs1 = rs[0].clone();
    let hash = rs1.labels()["pod-template-hash"].clone();
    assert_eq!(rs1.name_any(), format!("web-{hash}"));
    assert_eq!(rs1.owner_references()[0].kind, "Deployment");
    assert_eq!(rs1.annotations()["deployment.kubernetes.io/revision"], "1");
    let pods = active_pods(c).await;
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert!(p.name_any().starts_with(&format!("web-{hash}-")));
        assert_eq!(p.labels()["pod-template-hash"], hash);
        let o = &p.owner_references()[0];
        assert_eq!(
            (
                o.kind.as_str(),
                o.name.as_str(),
                o.controller,
                o.block_owner_deletion
            ),
            (
                "ReplicaSet",
                rs1.name_any().as_str(),
                Some(true),
                Some(true)
            )
        );
    }
    // Bound by the scheduler (spreading is checked in the scheduler test: here node-2
    // may not yet be Ready in the controllers' view when the first pods come).
    assert!(
        pods.iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.is_some())
    );
    let d = deploys.get("web").await.unwrap();
    let conds = d.status.unwrap().conditions.unwrap();
    let cond = |t: &str| {
        conds
            .iter()
            .find(|c| c.type_.as_deref() == Some(t))
            .unwrap()
            .clone()
    };
    assert_eq!(cond("Available").status.as_deref(), Some("True"));
    assert_eq!(
        cond("Progressing").reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );

    // Events as kubectl describe shows them.
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    eventually("events", || async {
        let l = events.list(&ListParams::default()).await.unwrap().items;
        let has = |kind: &str, reason: &str| {
            l.iter().any(|e| {
                e.involved_object.kind.as_deref() == Some(kind)
                    && e.reason.as_deref() == Some(reason)
            })
        };
        (has("Deployment", "ScalingReplicaSet")
            && has("ReplicaSet", "SuccessfulCreate")
            && has("Pod", "Scheduled"))
        .then_some(())
    })
    .await;

    // Scale to 5.
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    eventually("5 replicas available", || async {
        complete(&deploys.get("web").await.unwrap(), 5).then_some(())
    })
    .await;

    // Roll to a new image: maxSurge 25% of 5 → 2, maxUnavailable 25% of 5 → 1. Watch the
    // bounds while it rolls.
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "httpd", "ports": [{"containerPort": 80}]}]}}}})),
        )
        .await
        .unwrap();
    let mut max_pods = 0;
    let mut min_ready = usize::MAX;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pods = active_pods(c).await;
        let ready = pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        // The controller's bound is on the ReplicaSets' replicas (as kube's): pods of a
        // shrunk ReplicaSet may linger for a moment while its controller deletes them.
        let total: i32 = rss
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|r| r.spec.replicas.unwrap_or(0))
            .sum();
        max_pods = max_pods.max(total);
        min_ready = min_ready.min(ready);
        let d = deploys.get("web").await.unwrap();
        if complete(&d, 5)
            && pods.len() == 5
            && pods
                .iter()
                .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("httpd"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rollout did not complete: {d:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        max_pods <= 7,
        "ReplicaSets sized beyond replicas + maxSurge: {max_pods}"
    );
    assert!(
        min_ready >= 4,
        "fewer than replicas - maxUnavailable ready: {min_ready}"
    );
    let rs = rss.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(rs.len(), 2);
    let old = rs.iter().find(|r| r.name_any() == rs1.name_any()).unwrap();
    assert_eq!(old.spec.replicas, Some(0));
    let new = rs.iter().find(|r| r.name_any() != rs1.name_any()).unwrap();
    assert_eq!(new.annotations()["deployment.kubernetes.io/revision"], "2");
    assert_eq!(
        deploys.get("web").await.unwrap().annotations()["deployment.kubernetes.io/revision"],
        "2"
    );

    // Scale down to 1: surplus pods go.
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually("1 replica", || async {
        (complete(&deploys.get("web").await.unwrap(), 1) && active_pods(c).await.len() == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn recreate_strategy_empties_the_old_replicaset_first() {
    let h = start();
    let c = &h.client;
    ready_node(c, "node-1", json!({})).await;
    let _kubelet = fake_kubelet(c);
    let mut d = deployment(2, "nginx");
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    let _: Deployment = create(c, "default", d).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    eventually("2 available", || async {
        complete(&deploys.get("web").await.unwrap(), 2).then_some(())
    })
    .await;
    deploys
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"labels": {"app": "web", "v": "2"}}}}}),
            ),
        )
        .await
        .unwrap();
    let mut mixed = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pods = active_pods(c).await;
        let v2 = pods
            .iter()
            .filter(|p| p.labels().get("v").is_some())
            .count();
        mixed |= v2 > 0 && v2 < pods.len();
        if complete(&deploys.get("web").await.unwrap(), 2) && v2 == 2 && pods.len() == 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not recreated");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!mixed, "old and new pods ran together under Recreate");
}

#[tokio::test]
async fn scheduler_places_by_selector_spread_and_host_ports_and_reports_failures() {
    let h = start();
    let c = &h.client;
    ready_node(c, "node-1", json!({})).await;
    ready_node(
        c,
        "node-2",
        json!({"metadata": {"labels": {"disk": "ssd"}}}),
    )
    .await;
    ready_node(
        c,
        "node-3",
        json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let node_of = |name: &'static str| {
        let pods = pods.clone();
        async move { pods.get(name).await.unwrap().spec.unwrap().node_name }
    };

    let _: Pod = create(c, "default", json!({"metadata": {"name": "ssd"},
        "spec": {"nodeSelector": {"disk": "ssd"}, "containers": [{"name": "c", "image": "busybox"}]}})).await;
    assert_eq!(
        eventually("ssd placed", || async { node_of("ssd").await }).await,
        "node-2"
    );

    let _: Pod = create(c, "default", json!({"metadata": {"name": "db"},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-3"},
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
                 "containers": [{"name": "c", "image": "busybox"}]}})).await;
    assert_eq!(
        eventually("db placed", || async { node_of("db").await }).await,
        "node-3"
    );

    // Spread: four more pods without constraints avoid the tainted node and even out.
    for i in 0..4 {
        let _: Pod = create(
            c,
            "default",
            json!({"metadata": {"name": format!("s{i}"), "labels": {"spread": "y"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
        )
        .await;
    }
    let placed = eventually("spread pods placed", || async {
        let l = pods
            .list(&ListParams::default().labels("spread=y"))
            .await
            .unwrap()
            .items;
        let nodes: Vec<String> = l.iter().filter_map(|p| p.spec.clone()?.node_name).collect();
        (nodes.len() == 4).then_some(nodes)
    })
    .await;
    let on = |n: &str| placed.iter().filter(|x| *x == n).count();
    assert_eq!(on("node-3"), 0);
    // node-2 already had one pod: 1+n2 and n1 differ by at most one.
    assert!(
        (on("node-1") as i64 - (on("node-2") as i64 + 1)).abs() <= 1,
        "{placed:?}"
    );

    // A host port taken on the only fitting node: the second pod stays Pending.
    let hp = |name: &str| {
        json!({"metadata": {"name": name},
        "spec": {"nodeSelector": {"disk": "ssd"},
                 "containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}})
    };
    let _: Pod = create(c, "default", hp("hp1")).await;
    assert_eq!(
        eventually("hp1 placed", || async { node_of("hp1").await }).await,
        "node-2"
    );
    let _: Pod = create(c, "default", hp("hp2")).await;
    let cond = eventually("hp2 unschedulable", || async {
        let p = pods.get("hp2").await.unwrap();
        p.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert!(
        cond.message
            .as_deref()
            .unwrap()
            .contains("didn't have free ports"),
        "{cond:?}"
    );
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let ev = eventually("FailedScheduling event", || async {
        let l = events.list(&ListParams::default()).await.unwrap().items;
        l.into_iter().find(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.involved_object.name.as_deref() == Some("hp2")
        })
    })
    .await;
    assert_eq!(ev.type_.as_deref(), Some("Warning"));
    assert_eq!(pods.get("hp2").await.unwrap().spec.unwrap().node_name, None);

    // Freeing the port lets it in.
    pods.delete(
        "hp1",
        &kube::api::DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        eventually("hp2 placed", || async { node_of("hp2").await }).await,
        "node-2"
    );
}

#[tokio::test]
async fn replicaset_adopts_matching_orphans() {
    let h = start();
    let c = &h.client;
    let _: Pod = create(
        c,
        "default",
        json!({"metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}}),
    )
    .await;
    let _: ReplicaSet = create(
        c,
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    )
    .await;
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    eventually("2 replicas counted", || async {
        let st = rss.get("web").await.unwrap().status?;
        (st.replicas == 2).then_some(())
    })
    .await;
    let pods = active_pods(c).await;
    assert_eq!(pods.len(), 2, "the orphan counts as one of the two");
    let orphan = pods.iter().find(|p| p.name_any() == "orphan").unwrap();
    assert_eq!(orphan.owner_references()[0].name, "web");
    assert_eq!(orphan.owner_references()[0].controller, Some(true));
}

#[tokio::test]
async fn a_rollout_without_progress_exceeds_its_deadline() {
    let h = start();
    let c = &h.client;
    // No node: the pods stay Pending, nothing becomes available.
    let mut d = deployment(2, "nginx");
    d["spec"]["progressDeadlineSeconds"] = json!(1);
    let _: Deployment = create(c, "default", d).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let cond = eventually("ProgressDeadlineExceeded", || async {
        let d = deploys.get("web").await.unwrap();
        d.status?.conditions?.into_iter().find(|c| {
            c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("False")
        })
    })
    .await;
    assert_eq!(cond.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    assert!(
        cond.message
            .unwrap()
            .ends_with("has timed out progressing.")
    );

    // Progress (a node and a kubelet) brings it back.
    ready_node(c, "node-1", json!({})).await;
    let _kubelet = fake_kubelet(c);
    eventually("complete", || async {
        complete(&deploys.get("web").await.unwrap(), 2).then_some(())
    })
    .await;
    let d = deploys.get("web").await.unwrap();
    let p = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .unwrap();
    assert_eq!(p.reason.as_deref(), Some("NewReplicaSetAvailable"));
}

#[tokio::test]
async fn a_deployment_deleted_with_orphan_cascade_is_adopted_back_without_new_pods() {
    let h = start();
    let c = &h.client;
    ready_node(c, "node-1", json!({})).await;
    let _kubelet = fake_kubelet(c);
    let _: Deployment = create(c, "default", deployment(2, "nginx")).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    eventually("2 available", || async {
        complete(&deploys.get("web").await.unwrap(), 2).then_some(())
    })
    .await;
    let pods_before: Vec<String> = active_pods(c).await.iter().map(|p| p.name_any()).collect();
    deploys
        .delete(
            "web",
            &kube::api::DeleteParams {
                propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    eventually("the ReplicaSet orphaned", || async {
        let l = rss.list(&ListParams::default()).await.unwrap().items;
        (l.len() == 1 && l[0].owner_references().is_empty()).then_some(())
    })
    .await;
    let _: Deployment = create(c, "default", deployment(2, "nginx")).await;
    eventually("adopted and complete", || async {
        let l = rss.list(&ListParams::default()).await.unwrap().items;
        let adopted = l.len() == 1
            && l[0]
                .owner_references()
                .first()
                .is_some_and(|o| o.kind == "Deployment");
        (adopted && complete(&deploys.get("web").await.unwrap(), 2)).then_some(())
    })
    .await;
    let mut pods_after: Vec<String> = active_pods(c).await.iter().map(|p| p.name_any()).collect();
    let mut before = pods_before;
    before.sort();
    pods_after.sort();
    assert_eq!(pods_after, before, "the same pods, none replaced");
}
