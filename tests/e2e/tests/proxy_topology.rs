//! Topology-aware routing in a cluster: with EndpointSlice hints (as the EndpointSlice
//! controller writes them for `trafficDistribution: PreferClose` / `PreferSameNode`),
//! each node sends ClusterIP traffic only to the endpoints hinted for its zone, or for
//! itself; hints for no zone of ours fall back to every endpoint. The nodes get their
//! `topology.kubernetes.io/zone` labels after the agents started, so the agents must
//! also pick up the label change. Real pods; Services and EndpointSlices made through
//! the API by the test. Needs root; fails, never skips.

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::cluster::{Cluster, WHO_SERVER, kubectl, probe_in};
use e2e::wait_until;
use serde_json::{Value, json};

fn service(name: &str, ip: &str, distribution: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"},
           "spec": {"clusterIP": ip, "trafficDistribution": distribution,
                    "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}})
}

/// A slice of `(address, node, zone hints, node hints)`.
fn slice(service: &str, endpoints: &[(&str, &str, &[&str], &[&str])]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node, zones, nodes)| {
            let zones: Vec<Value> = zones.iter().map(|z| json!({"name": z})).collect();
            let nodes: Vec<Value> = nodes.iter().map(|n| json!({"name": n})).collect();
            let mut hints = json!({"forZones": zones});
            if !nodes.is_empty() {
                hints["forNodes"] = json!(nodes);
            }
            json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true},
                   "hints": hints})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-test"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]
    })
}

/// The server names that answer `probes` connections to `ip`:80 from `netns`.
fn answers(netns: &str, ip: &str, probes: usize) -> BTreeSet<String> {
    (0..probes)
        .map(|_| {
            let got = probe_in(netns, ip, 80);
            got.split_whitespace().nth(1).unwrap_or(&got).to_owned()
        })
        .collect()
}

#[test]
fn zone_and_node_hints_keep_traffic_close_and_fall_back_to_every_endpoint() {
    let mut c = Cluster::up("native");
    for (n, zone) in [(1, "zone-a"), (2, "zone-b")] {
        let out = kubectl(
            &c.kubeconfig(),
            &[
                "label",
                "node",
                &format!("node-{n}"),
                &format!("topology.kubernetes.io/zone={zone}"),
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let client1 = c.add_pod(1);
    let client2 = c.add_pod(2);
    let (a_ip, b_ip) = (c.pods[a].1[0].clone(), c.pods[b].1[0].clone());
    let _servers = [(a, "a"), (b, "b")].map(|(i, name)| {
        c.pods[i]
            .0
            .spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", name])
    });
    let (ns1, ns2) = (
        c.pods[client1].0.name().to_owned(),
        c.pods[client2].0.name().to_owned(),
    );
    // Zone hints: a for zone-a (node-1), b for zone-b (node-2).
    c.apply(&service("close", "10.96.40.10", "PreferClose"));
    c.apply(&slice(
        "close",
        &[
            (&a_ip, "node-1", &["zone-a"], &[]),
            (&b_ip, "node-2", &["zone-b"], &[]),
        ],
    ));
    // Hints for a zone neither node is in: ignored, every endpoint serves.
    c.apply(&service("far", "10.96.40.11", "PreferClose"));
    c.apply(&slice(
        "far",
        &[
            (&a_ip, "node-1", &["zone-c"], &[]),
            (&b_ip, "node-2", &["zone-c"], &[]),
        ],
    ));
    // Node hints win over zone hints: crossed on purpose, so that following the zone
    // hints would give the other answer.
    c.apply(&service("same-node", "10.96.40.12", "PreferSameNode"));
    c.apply(&slice(
        "same-node",
        &[
            (&a_ip, "node-1", &["zone-a"], &["node-2"]),
            (&b_ip, "node-2", &["zone-b"], &["node-1"]),
        ],
    ));
    let logs = |c: &Cluster| format!("{}\n{}", c.log("agent-1.log"), c.log("agent-2.log"));

    // Once node-2's agent has the zone label and the hints, its clients get b only.
    let mut got = BTreeSet::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            got = answers(&ns2, "10.96.40.10", 4);
            got == BTreeSet::from(["b".to_owned()])
        }),
        "zone-b client to the PreferClose service: {got:?}\n{}",
        logs(&c)
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            got = answers(&ns1, "10.96.40.10", 4);
            got == BTreeSet::from(["a".to_owned()])
        }),
        "zone-a client to the PreferClose service: {got:?}\n{}",
        logs(&c)
    );
    // And it stays so.
    assert_eq!(
        answers(&ns1, "10.96.40.10", 10),
        BTreeSet::from(["a".to_owned()])
    );
    assert_eq!(
        answers(&ns2, "10.96.40.10", 10),
        BTreeSet::from(["b".to_owned()])
    );

    assert_eq!(
        answers(&ns1, "10.96.40.12", 10),
        BTreeSet::from(["b".to_owned()]),
        "node-1's client to the PreferSameNode service follows the node hints\n{}",
        logs(&c)
    );
    assert_eq!(
        answers(&ns2, "10.96.40.12", 10),
        BTreeSet::from(["a".to_owned()])
    );

    // Hints for another zone: both endpoints answer (each probe picks at random, so
    // keep probing until both were seen; missing one for 30 s means it is not used).
    let mut seen = BTreeSet::new();
    let both = BTreeSet::from(["a".to_owned(), "b".to_owned()]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            seen.extend(answers(&ns1, "10.96.40.11", 4));
            seen == both
        }),
        "zone-a client to a service hinted for zone-c only: {seen:?}\n{}",
        logs(&c)
    );
}
