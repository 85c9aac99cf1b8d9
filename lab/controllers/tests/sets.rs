//! StatefulSets and DaemonSets through the real embedded API server (in process).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{DaemonSet, StatefulSet};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

async fn names(c: &kube::Client, ns: &str, labels: &str) -> BTreeSet<String> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), ns);
    pods.list(&ListParams::default().labels(labels))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.name_any())
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn statefulset_starts_in_order_with_stable_names_and_scales_down_from_the_top() {
    let h = start();
    let c = &h.client;
    ready_node(c, "node-1", json!({})).await;
    let _: Service = create(
        c,
        "default",
        json!({"metadata": {"name": "redis"},
        "spec": {"clusterIP": "None", "selector": {"app": "redis"}, "ports": [{"port": 6379}]}}),
    )
    .await;
    let _: StatefulSet = create(c, "default", json!({"metadata": {"name": "redis"},
        "spec": {"replicas": 3, "serviceName": "redis", "selector": {"matchLabels": {"app": "redis"}},
            "template": {"metadata": {"labels": {"app": "redis"}},
                "spec": {"containers": [{"name": "redis", "image": "redis", "ports": [{"containerPort": 6379}]}]}}}})).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let p0 = eventually("redis-0 scheduled", || async {
        let p = pods.get_opt("redis-0").await.unwrap()?;
        p.spec.as_ref()?.node_name.as_ref()?;
        Some(p)
    })
    .await;
    let spec = p0.spec.clone().unwrap();
    assert_eq!(
        (spec.hostname.as_deref(), spec.subdomain.as_deref()),
        (Some("redis-0"), Some("redis"))
    );
    assert_eq!(p0.owner_references()[0].kind, "StatefulSet");
    // redis-0 exists but is not ready: redis-1 must not exist yet.
    assert_eq!(names(c, "default", "app=redis").await, set(&["redis-0"]));
    kubelet_reports(c, "default", "redis-0", &["10.244.1.10"], false).await;
    // Give the controller a pass that sees redis-0 not ready, then check again.
    eventually("status sees redis-0", || async {
        let s: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
        let st = s.get("redis").await.unwrap().status?;
        (st.replicas == 1).then_some(())
    })
    .await;
    assert_eq!(names(c, "default", "app=redis").await, set(&["redis-0"]));
    kubelet_reports(c, "default", "redis-0", &["10.244.1.10"], true).await;
    eventually("redis-1 created", || async {
        (names(c, "default", "app=redis").await == set(&["redis-0", "redis-1"])).then_some(())
    })
    .await;

    // From here a kubelet runs everything.
    let _kubelet = fake_kubelet(c);
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    eventually("3 ready", || async {
        let s = sts.get("redis").await.unwrap();
        let st = s.status?;
        (st.ready_replicas == Some(3)
            && st.observed_generation == s.metadata.generation
            && st.current_revision == st.update_revision)
            .then_some(())
    })
    .await;
    // The headless service lists each pod with its hostname.
    let eps: Api<Endpoints> = Api::namespaced(c.clone(), "default");
    let hostnames = eventually("hostnames in Endpoints", || async {
        let e = eps.get_opt("redis").await.unwrap()?;
        let mut h: Vec<String> = e
            .subsets?
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .filter_map(|a| a.hostname)
            .collect();
        h.sort();
        (h.len() == 3).then_some(h)
    })
    .await;
    assert_eq!(hostnames, ["redis-0", "redis-1", "redis-2"]);

    // A new template rolls from the highest ordinal down.
    let old_rev = sts
        .get("redis")
        .await
        .unwrap()
        .status
        .unwrap()
        .update_revision
        .unwrap();
    sts.patch(
        "redis",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "redis", "image": "redis:8", "ports": [{"containerPort": 6379}]}]}}}})),
    )
    .await
    .unwrap();
    let mut order: Vec<String> = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let l = pods
            .list(&ListParams::default().labels("app=redis"))
            .await
            .unwrap()
            .items;
        for p in &l {
            let rev = p
                .labels()
                .get("controller-revision-hash")
                .cloned()
                .unwrap_or_default();
            if rev != old_rev && !order.contains(&p.name_any()) {
                order.push(p.name_any());
            }
        }
        let st = sts.get("redis").await.unwrap().status.unwrap();
        if order.len() == 3
            && st.ready_replicas == Some(3)
            && st.current_revision == st.update_revision
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rolling update stuck: {order:?} {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(order, ["redis-2", "redis-1", "redis-0"]);

    // Scale down to 1: redis-2 goes before redis-1.
    sts.patch(
        "redis",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = names(c, "default", "app=redis").await;
        assert!(
            !now.contains("redis-2") || now.contains("redis-1"),
            "redis-1 went before redis-2"
        );
        if now == set(&["redis-0"]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not scale down: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn daemonset_runs_one_pod_per_eligible_node() {
    let h = start();
    let c = &h.client;
    ready_node(
        c,
        "node-1",
        json!({"metadata": {"labels": {"role": "worker"}}}),
    )
    .await;
    ready_node(
        c,
        "node-2",
        json!({"metadata": {"labels": {"role": "worker"}}}),
    )
    .await;
    ready_node(
        c,
        "node-3",
        json!({"metadata": {"labels": {"role": "edge"}}}),
    )
    .await;
    let _kubelet = fake_kubelet(c);
    let _: DaemonSet = create(c, "kube-system", json!({"metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"nodeSelector": {"role": "worker"}, "containers": [{"name": "a", "image": "kubewire"}]}}}})).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "kube-system");
    let placement = || {
        let pods = pods.clone();
        async move {
            let mut v: Vec<String> = pods
                .list(&ListParams::default().labels("app=agent"))
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.spec?.node_name)
                .collect();
            v.sort();
            v
        }
    };
    eventually("a pod on each worker", || async {
        (placement().await == ["node-1", "node-2"]).then_some(())
    })
    .await;
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "kube-system");
    eventually("status", || async {
        let st = dss.get("agent").await.unwrap().status?;
        (st.desired_number_scheduled == 2
            && st.number_ready == 2
            && st.current_number_scheduled == 2)
            .then_some(())
    })
    .await;

    // A new worker gets one; a node that stops matching loses its pod.
    ready_node(
        c,
        "node-4",
        json!({"metadata": {"labels": {"role": "worker"}}}),
    )
    .await;
    let nodes: Api<Node> = Api::all(c.clone());
    nodes
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"role": "edge"}}})),
        )
        .await
        .unwrap();
    eventually("pods follow the nodes", || async {
        (placement().await == ["node-2", "node-4"]).then_some(())
    })
    .await;
}
