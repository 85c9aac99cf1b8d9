//! Once everything has settled, the controllers write nothing more, resyncs included:
//! a status or slice that differs from its stored form on every pass would rewrite
//! itself forever.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::json;

async fn versions(c: &kube::Client) -> Vec<(String, String)> {
    async fn of<K>(api: Api<K>, kind: &str) -> Vec<(String, String)>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(|o| {
                (
                    format!("{kind}/{}", o.name_any()),
                    o.resource_version().unwrap_or_default(),
                )
            })
            .collect()
    }
    let mut v = vec![];
    v.extend(of::<Deployment>(Api::all(c.clone()), "deployment").await);
    v.extend(of::<ReplicaSet>(Api::all(c.clone()), "replicaset").await);
    v.extend(of::<StatefulSet>(Api::all(c.clone()), "statefulset").await);
    v.extend(of::<DaemonSet>(Api::all(c.clone()), "daemonset").await);
    v.extend(of::<EndpointSlice>(Api::all(c.clone()), "endpointslice").await);
    v.extend(of::<Endpoints>(Api::all(c.clone()), "endpoints").await);
    v.extend(of::<Pod>(Api::all(c.clone()), "pod").await);
    v.extend(of::<Node>(Api::all(c.clone()), "node").await);
    v.sort();
    v
}

#[tokio::test]
async fn settled_objects_are_not_rewritten() {
    let h = start();
    let c = &h.client;
    ready_node(c, "node-1", json!({})).await;
    let _kubelet = fake_kubelet(c);
    let _: Service = create(
        c,
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let _: Deployment = create(
        c,
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}}),
    )
    .await;
    let _: StatefulSet = create(
        c,
        "default",
        json!({"metadata": {"name": "db"},
        "spec": {"replicas": 1, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "redis"}]}}}}),
    )
    .await;
    let _: DaemonSet = create(
        c,
        "default",
        json!({"metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "a", "image": "kubewire"}]}}}}),
    )
    .await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let stss: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let dss: Api<DaemonSet> = Api::namespaced(c.clone(), "default");
    eventually("everything ready", || async {
        let d = deploys.get("web").await.unwrap().status?;
        let s = stss.get("db").await.unwrap().status?;
        let ds = dss.get("agent").await.unwrap().status?;
        (d.available_replicas == Some(2) && s.ready_replicas == Some(1) && ds.number_ready == 1)
            .then_some(())
    })
    .await;
    // Let the last status writes land, then watch a full resync period (2 s in tests).
    let mut before = versions(c).await;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = versions(c).await;
        if now == before {
            break;
        }
        before = now;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(versions(c).await, before, "something keeps being rewritten");
}
