//! EndpointSlices and Endpoints through the real embedded API server (in process).

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

fn web_pod(name: &str) -> serde_json::Value {
    json!({"metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]}})
}

async fn slices(client: &kube::Client, svc: &str) -> Vec<EndpointSlice> {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    api.list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .unwrap()
        .items
}

/// (ip, ready, serving, terminating) of every endpoint of a service's slices, sorted.
async fn endpoint_states(client: &kube::Client, svc: &str) -> Vec<(String, bool, bool, bool)> {
    let mut out: Vec<_> = slices(client, svc)
        .await
        .iter()
        .flat_map(|s| s.endpoints.clone().unwrap_or_default())
        .map(|e| {
            let c = e.conditions.unwrap_or_default();
            (
                e.addresses[0].clone(),
                c.ready.unwrap_or(false),
                c.serving.unwrap_or(false),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn slices_and_endpoints_follow_pods_and_leave_hand_written_endpoints_alone() {
    let h = start();
    let c = &h.client;
    let _: Service = create(c, "default", json!({"metadata": {"name": "web", "labels": {"team": "a"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})).await;
    // The talk's `website`: a Service without selector and Endpoints written by hand.
    let _: Service = create(
        c,
        "default",
        json!({"metadata": {"name": "website"},
        "spec": {"ports": [{"port": 80}]}}),
    )
    .await;
    let hand: Endpoints = create(
        c,
        "default",
        json!({"metadata": {"name": "website"},
        "subsets": [{"addresses": [{"ip": "10.10.10.10"}], "ports": [{"port": 80}]}]}),
    )
    .await;

    // Before any pod: one empty placeholder slice, empty Endpoints.
    let placeholder = eventually("a placeholder slice", || async {
        let s = slices(c, "web").await;
        (s.len() == 1).then(|| s[0].clone())
    })
    .await;
    assert!(placeholder.endpoints.clone().unwrap_or_default().is_empty());
    let labels = placeholder.labels();
    assert_eq!(
        labels["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(labels["team"], "a");
    assert_eq!(placeholder.owner_references()[0].name, "web");
    assert_eq!(placeholder.metadata.generate_name.as_deref(), Some("web-"));

    for n in ["web-1", "web-2", "web-3"] {
        let _: Pod = create(c, "default", web_pod(n)).await;
    }
    // Pods without IPs have no endpoints yet.
    kubelet_reports(c, "default", "web-1", &["10.244.1.2"], true).await;
    kubelet_reports(c, "default", "web-2", &["10.244.2.2"], true).await;
    kubelet_reports(c, "default", "web-3", &["10.244.3.2"], false).await;
    let want = vec![
        ("10.244.1.2".to_string(), true, true, false),
        ("10.244.2.2".to_string(), true, true, false),
        ("10.244.3.2".to_string(), false, false, false),
    ];
    eventually("three endpoints", || async {
        (endpoint_states(c, "web").await == want).then_some(())
    })
    .await;
    let s = slices(c, "web").await;
    assert_eq!(s.len(), 1, "the placeholder is reused");
    assert_eq!(
        s[0].ports.as_ref().unwrap()[0].port,
        Some(8080),
        "named targetPort resolved"
    );

    let eps: Api<Endpoints> = Api::namespaced(c.clone(), "default");
    let ep = eventually("Endpoints web", || async {
        let e = eps.get_opt("web").await.unwrap()?;
        let subsets = e.subsets.clone()?;
        (subsets.len() == 1
            && subsets[0].addresses.as_ref().map(Vec::len) == Some(2)
            && subsets[0].not_ready_addresses.as_ref().map(Vec::len) == Some(1))
        .then_some(e)
    })
    .await;
    let subset = &ep.subsets.unwrap()[0];
    assert_eq!(
        subset.not_ready_addresses.as_ref().unwrap()[0].ip,
        "10.244.3.2"
    );
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);

    // web-3 turns ready; web-1 goes (unbound pods are deleted at once).
    kubelet_reports(c, "default", "web-3", &["10.244.3.2"], true).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    let want = vec![
        ("10.244.2.2".to_string(), true, true, false),
        ("10.244.3.2".to_string(), true, true, false),
    ];
    eventually("two ready endpoints", || async {
        (endpoint_states(c, "web").await == want).then_some(())
    })
    .await;
    eventually("Endpoints follow", || async {
        let e = eps.get("web").await.unwrap();
        let s = e.subsets.unwrap_or_default();
        (s.len() == 1
            && s[0].addresses.as_ref().map(Vec::len) == Some(2)
            && s[0].not_ready_addresses.is_none())
        .then_some(())
    })
    .await;

    // The hand-written Endpoints stay as written, and are mirrored into a slice.
    let mirrored = eventually("a mirrored slice for website", || async {
        let s = slices(c, "website").await;
        (s.len() == 1).then(|| s[0].clone())
    })
    .await;
    assert_eq!(
        mirrored.labels()["endpointslice.kubernetes.io/managed-by"],
        "endpointslicemirroring-controller.k8s.io"
    );
    assert_eq!(
        mirrored.endpoints.as_ref().unwrap()[0].addresses,
        ["10.10.10.10"]
    );
    let now = eps.get("website").await.unwrap();
    assert_eq!(now.subsets, hand.subsets);
    assert_eq!(now.resource_version(), hand.resource_version());

    // The service goes: its slices and Endpoints go; website's stay.
    let svcs: Api<Service> = Api::namespaced(c.clone(), "default");
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    eventually("web's slices and Endpoints gone", || async {
        (slices(c, "web").await.is_empty() && eps.get_opt("web").await.unwrap().is_none())
            .then_some(())
    })
    .await;
    assert!(eps.get_opt("website").await.unwrap().is_some());
    h.controllers.unwrap().shutdown().await;
}

#[tokio::test]
async fn terminating_pods_publish_not_ready_hostnames_and_zones() {
    let h = start();
    let c = &h.client;
    ready_node(
        c,
        "node-1",
        json!({"metadata": {"labels": {"topology.kubernetes.io/zone": "zone-a"}}}),
    )
    .await;
    let _: Service = create(c, "default", json!({"metadata": {"name": "redis"},
        "spec": {"clusterIP": "None", "selector": {"app": "redis"}, "publishNotReadyAddresses": true,
                 "ports": [{"port": 6379}]}})).await;
    let _: Service = create(
        c,
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    let _: Pod = create(
        c,
        "default",
        json!({"metadata": {"name": "redis-0", "labels": {"app": "redis"}},
        "spec": {"hostname": "redis-0", "subdomain": "redis", "nodeName": "node-1",
                 "containers": [{"name": "r", "image": "redis"}]}}),
    )
    .await;
    kubelet_reports(c, "default", "redis-0", &["10.244.1.7"], false).await;
    let s = eventually("redis endpoint", || async {
        let s = slices(c, "redis").await;
        (s.len() == 1 && s[0].endpoints.as_ref().is_some_and(|e| e.len() == 1))
            .then(|| s[0].clone())
    })
    .await;
    let e = &s.endpoints.unwrap()[0];
    assert_eq!(e.hostname.as_deref(), Some("redis-0"));
    assert_eq!(e.node_name.as_deref(), Some("node-1"));
    assert_eq!(e.zone.as_deref(), Some("zone-a"));
    assert_eq!(
        e.conditions.as_ref().unwrap().ready,
        Some(true),
        "publishNotReadyAddresses"
    );
    assert!(
        s.metadata
            .labels
            .unwrap()
            .contains_key("service.kubernetes.io/headless")
    );

    // A bound pod being deleted stays (terminating) until its node lets it go: its
    // endpoint is serving and terminating, not ready, and leaves Endpoints.
    let mut p = web_pod("web-1");
    p["spec"]["nodeName"] = json!("node-1");
    let _: Pod = create(c, "default", p).await;
    kubelet_reports(c, "default", "web-1", &["10.244.1.8"], true).await;
    eventually("web-1 ready", || async {
        (endpoint_states(c, "web").await == vec![("10.244.1.8".to_string(), true, true, false)])
            .then_some(())
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    eventually("web-1 terminating", || async {
        (endpoint_states(c, "web").await == vec![("10.244.1.8".to_string(), false, true, true)])
            .then_some(())
    })
    .await;
    let eps: Api<Endpoints> = Api::namespaced(c.clone(), "default");
    eventually("web-1 out of Endpoints", || async {
        eps.get("web")
            .await
            .unwrap()
            .subsets
            .unwrap_or_default()
            .is_empty()
            .then_some(())
    })
    .await;
}
