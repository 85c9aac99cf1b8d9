//! The service proxy in a cluster: `kubewire agent` on two nodes, real pods wired by
//! the CNI plugin serving TCP, Services and EndpointSlices created through the API (by
//! the test, standing in for the EndpointSlice controller). Clients run inside pods
//! and inside the lab's `outside` namespace. Needs root; fails, never skips.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::cluster::{Cluster, WHO_SERVER, probe_in};
use e2e::{KillOnDrop, wait_until};
use serde_json::{Value, json};

/// Serves [`WHO_SERVER`] as `name` on :8080 in pod `i`, and waits until it listens.
fn serve(c: &Cluster, i: usize, name: &str) -> KillOnDrop {
    let server = c.pods[i]
        .0
        .spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", name]);
    let (ns, ip) = (c.pods[i].0.name().to_owned(), c.pods[i].1[0].clone());
    assert!(
        wait_until(Duration::from_secs(10), || probe_in(&ns, &ip, 8080)
            .starts_with("ok")),
        "server {name} did not start"
    );
    server
}

fn slice(service: &str, endpoints: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-test"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// Probes `addr:port` from `netns` until every name in `want` answered (or 20 s
/// passed); returns the answers' (name, peer) pairs.
fn answers_until(netns: &str, addr: &str, port: u16, want: &[&str]) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    wait_until(Duration::from_secs(20), || {
        let out = probe_in(netns, addr, port);
        let mut parts = out.split_whitespace();
        if parts.next() == Some("ok")
            && let (Some(name), Some(peer)) = (parts.next(), parts.next())
        {
            seen.insert((name.to_owned(), peer.to_owned()));
        }
        want.iter().all(|w| seen.iter().any(|(name, _)| name == w))
    });
    seen
}

#[test]
fn cluster_ip_and_node_port_balance_reject_and_hairpin() {
    let mut c = Cluster::up("native");
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let client = c.add_pod(1);
    let _a = serve(&c, a, "a");
    let _b = serve(&c, b, "b");
    let (a_ip, b_ip, client_ip) = (
        c.pods[a].1[0].clone(),
        c.pods[b].1[0].clone(),
        c.pods[client].1[0].clone(),
    );
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.10.10",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31100}]}
    }));
    c.apply(&slice("web", &[(&a_ip, "node-1"), (&b_ip, "node-2")]));
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "empty", "namespace": "default"},
        "spec": {"clusterIP": "10.96.10.11", "ports": [{"name": "http", "port": 80}]}
    }));
    let logs = || format!("{}\n{}", c.log("agent-1.log"), c.log("agent-2.log"));

    // ClusterIP from a pod: both endpoints, each seeing the pod's own address.
    let client_ns = c.pods[client].0.name().to_owned();
    let seen = answers_until(&client_ns, "10.96.10.10", 80, &["a", "b"]);
    let names: BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["a", "b"]), "{seen:?}\n{}", logs());
    assert!(
        seen.iter().all(|(_, peer)| *peer == client_ip),
        "pod-to-service traffic must keep the pod's address: {seen:?}"
    );

    // NodePort 31100 on every node's address, from outside the cluster.
    let outside = c.outside_ns();
    for node_ip in ["198.18.0.11", "198.18.0.12"] {
        let seen = answers_until(&outside, node_ip, 31100, &["a", "b"]);
        let names: BTreeSet<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            BTreeSet::from(["a", "b"]),
            "node port on {node_ip}: {seen:?}\n{}",
            logs()
        );
    }

    // No endpoints: refused at once (a reset), not a timeout.
    assert!(
        wait_until(Duration::from_secs(10), || probe_in(
            &client_ns,
            "10.96.10.11",
            80
        ) == "refused"),
        "no-endpoint service: {}",
        probe_in(&client_ns, "10.96.10.11", 80)
    );
    // A port the service does not define: an immediate error too (refused by the
    // proxy's check, or unreachable where the node has no route for the service
    // range, as lab nodes have none; crates/proxy/tests/e2e.rs checks the reject).
    let other_port = probe_in(&client_ns, "10.96.10.10", 81);
    assert!(
        other_port == "refused" || other_port.contains("unreachable"),
        "{other_port}"
    );

    // Hairpin: endpoint a reaching itself through the ClusterIP.
    let a_ns = c.pods[a].0.name().to_owned();
    let seen = answers_until(&a_ns, "10.96.10.10", 80, &["a"]);
    assert!(
        seen.iter().any(|(n, _)| n == "a"),
        "a pod must reach itself through its service: {seen:?}"
    );

    // An endpoint change moves traffic: only b left.
    c.apply(&slice("web", &[(&b_ip, "node-2")]));
    assert!(
        wait_until(Duration::from_secs(20), || {
            (0..8).all(|_| probe_in(&client_ns, "10.96.10.10", 80).starts_with("ok b "))
        }),
        "after removing a, only b answers\n{}",
        logs()
    );

    // `kubewire agent --cleanup` removes the proxy's tables with the rest.
    let _ = c.agents[0].0.kill();
    let _ = c.agents[0].0.wait();
    let node_ns = c.node_ns(1);
    // The whole ruleset, as an operator lists it.
    #[allow(clippy::disallowed_methods)] // a test reading the table as a user would
    let has_table = |ns: &str| {
        let out = netlink::netns::run_in(ns, || {
            std::process::Command::new("nft")
                .args(["list", "ruleset"])
                .output()
        })
        .unwrap()
        .unwrap();
        assert!(
            out.status.success(),
            "nft list ruleset: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).contains("table ip kubewire-proxy {")
    };
    assert!(has_table(&node_ns), "the proxy's table is there before");
    let cleanup = c.agent_cleanup(1);
    assert!(
        cleanup.status.success(),
        "agent --cleanup failed: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    assert!(
        !has_table(&node_ns),
        "--cleanup must remove the proxy's table"
    );
}
