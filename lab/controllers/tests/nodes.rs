//! Node IPAM and node lifecycle through the real embedded API server (in process).

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

fn cidrs(n: &Node) -> Option<Vec<String>> {
    n.spec.as_ref()?.pod_cidrs.clone().filter(|c| !c.is_empty())
}

#[tokio::test]
async fn nodes_get_the_next_free_ranges_stable_across_restarts() {
    let mut h = start();
    let c = h.client.clone();
    let nodes: Api<Node> = Api::all(c.clone());
    let mk = |name: &str, spec: serde_json::Value| -> Node {
        obj(json!({"metadata": {"name": name}, "spec": spec}))
    };
    nodes
        .create(&PostParams::default(), &mk("node-1", json!({"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]})))
        .await
        .unwrap();
    for n in ["node-2", "node-3"] {
        nodes
            .create(&PostParams::default(), &mk(n, json!({})))
            .await
            .unwrap();
    }
    let get = |name: &'static str| {
        let nodes = nodes.clone();
        async move { cidrs(&nodes.get(name).await.unwrap()) }
    };
    assert_eq!(
        eventually("node-2 ranges", || get("node-2")).await,
        ["10.244.1.0/24", "fd00:10:244:1::/64"]
    );
    assert_eq!(
        eventually("node-3 ranges", || get("node-3")).await,
        ["10.244.2.0/24", "fd00:10:244:2::/64"]
    );
    let n2 = nodes.get("node-2").await.unwrap();
    assert_eq!(n2.spec.unwrap().pod_cidr.as_deref(), Some("10.244.1.0/24"));
    assert_eq!(
        get("node-1").await.unwrap()[0],
        "10.244.0.0/24",
        "preset ranges kept"
    );

    // A restart derives what is used from the Nodes: no range is handed out twice.
    h.controllers.take().unwrap().shutdown().await;
    nodes
        .create(&PostParams::default(), &mk("node-4", json!({})))
        .await
        .unwrap();
    let _h2 = {
        let dir_keeper = controllers::start(c.clone(), config());
        eventually("node-4 ranges", || get("node-4")).await;
        dir_keeper
    };
    assert_eq!(
        get("node-4").await.unwrap(),
        ["10.244.3.0/24", "fd00:10:244:3::/64"]
    );
}

#[tokio::test]
async fn a_node_whose_lease_goes_stale_turns_not_ready_with_its_pods() {
    let h = start_with(controllers::Config {
        node_monitor_grace_period: Duration::from_secs(2),
        ..config()
    });
    let c = h.client.clone();
    ready_node(&c, "node-1", json!({})).await;
    ready_node(&c, "node-2", json!({})).await;
    // node-2's kubelet keeps renewing its Lease; node-1's is gone.
    let renewer = {
        let c = c.clone();
        tokio::spawn(async move {
            loop {
                renew_lease(&c, "node-2").await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let _: Service = create(
        &c,
        "default",
        json!({"metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    for (pod, node, ip) in [
        ("web-1", "node-1", "10.244.1.2"),
        ("web-2", "node-2", "10.244.2.2"),
    ] {
        let _: Pod = create(
            &c,
            "default",
            json!({"metadata": {"name": pod, "labels": {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}}),
        )
        .await;
        kubelet_reports(&c, "default", pod, &[ip], true).await;
    }
    let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "default");
    let ready_ips = || {
        let slices = slices.clone();
        async move {
            let mut ips: Vec<String> = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .unwrap()
                .items
                .into_iter()
                .flat_map(|s| s.endpoints.unwrap_or_default())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .map(|e| e.addresses[0].clone())
                .collect();
            ips.sort();
            ips
        }
    };
    eventually("both endpoints ready", || async {
        (ready_ips().await == ["10.244.1.2", "10.244.2.2"]).then_some(())
    })
    .await;

    let nodes: Api<Node> = Api::all(c.clone());
    let ready_of = |name: &'static str| {
        let nodes = nodes.clone();
        async move {
            nodes
                .get(name)
                .await
                .unwrap()
                .status?
                .conditions?
                .into_iter()
                .find(|c| c.type_ == "Ready")
        }
    };
    let cond = eventually("node-1 Ready Unknown", || async {
        ready_of("node-1").await.filter(|c| c.status == "Unknown")
    })
    .await;
    eventually("node-1 tainted unreachable", || async {
        let taints = nodes.get("node-1").await.unwrap().spec?.taints?;
        taints
            .iter()
            .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule")
            .then_some(())
    })
    .await;
    assert_eq!(
        cond.message.as_deref(),
        Some("Kubelet stopped posting node status.")
    );
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let conds = eventually("web-1 not ready", || async {
        let p = pods.get("web-1").await.unwrap();
        let conds = p.status?.conditions?;
        let ready = conds.iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False").then_some(conds)
    })
    .await;
    assert!(
        conds.iter().any(|c| c.type_ == "ContainersReady"),
        "only Ready is written; the kubelet's other conditions stay: {conds:?}"
    );
    eventually("web-1's endpoint not ready", || async {
        (ready_ips().await == ["10.244.2.2"]).then_some(())
    })
    .await;
    assert_eq!(
        ready_of("node-2").await.unwrap().status,
        "True",
        "a renewed Lease keeps the node Ready"
    );
    renewer.abort();
}
