//! Pods on different nodes reach each other without NAT, in both routing modes: a real
//! lab (underlay, two node namespaces), the real API server, `kubewire agent` in each
//! node, pods wired by the CNI plugin from the config the agent wrote, and Nodes
//! created with kubectl as a kubelet and the node IPAM controller would.

#![allow(clippy::disallowed_methods)] // tests run kubectl and read its output

use std::process::Command;
use std::time::Duration;

use e2e::cluster::{Cluster, SERVER, kubectl};
use e2e::wait_until;
use serde_json::json;

fn cross_node(mode: &str) {
    let mut c = Cluster::up(mode);
    let a = c.add_pod(1);
    let b = c.add_pod_with(
        2,
        &[json!({"hostPort": 9090, "containerPort": 8080, "protocol": "tcp"})],
    );
    let (a_ips, b_ips) = (c.pods[a].1.clone(), c.pods[b].1.clone());
    assert!(
        a_ips[0].starts_with("10.244.1.") && b_ips[0].starts_with("10.244.2."),
        "{a_ips:?} {b_ips:?}"
    );
    // Both families, both directions, as soon as the routes are in.
    for (from, to) in [
        (a, &b_ips[0]),
        (a, &b_ips[1]),
        (b, &a_ips[0]),
        (b, &a_ips[1]),
    ] {
        assert!(
            wait_until(Duration::from_secs(10), || c.ping(from, to, &[])),
            "pod {from} cannot reach {to} in {mode} mode\nagent-1:\n{}",
            c.log("agent-1.log")
        );
    }
    // TCP across nodes keeps the pod's source address (no NAT between pods), for a
    // megabyte of data (larger than any MTU, so segmentation works end to end).
    // Both families, both directions.
    let _servers: Vec<_> = [(a, &a_ips), (b, &b_ips)]
        .iter()
        .flat_map(|(pod, ips)| {
            ips.iter()
                .map(|ip| c.pods[*pod].0.spawn("python3", &["-c", SERVER, ip]))
                .collect::<Vec<_>>()
        })
        .collect();
    for (from, from_ips, to_ips) in [(a, &a_ips, &b_ips), (b, &b_ips, &a_ips)] {
        for family in 0..2 {
            let mut got = (String::new(), 0);
            wait_until(Duration::from_secs(10), || {
                got = c.fetch(from, &to_ips[family]);
                got.1 > 0
            });
            assert_eq!(
                got.0, from_ips[family],
                "the server at {} saw another source address",
                to_ips[family]
            );
            assert!(
                got.1 > 1_000_000,
                "received {} bytes from {}",
                got.1,
                to_ips[family]
            );
        }
    }

    // A hostPort of the pod on node-2, from the lab's outside namespace through the
    // underlay: the outside client's own address reaches the pod.
    let outside_ns = format!("{}-outside", c.lab.name());
    let from_outside = || e2e::cluster::fetch_in(&outside_ns, "198.18.0.12", 9090).0;
    let mut seen_outside = String::new();
    wait_until(Duration::from_secs(10), || {
        seen_outside = from_outside();
        !seen_outside.is_empty()
    });
    assert_eq!(seen_outside, "198.18.0.254", "hostPort from the outside");
    // Traffic leaving the pod network is masqueraded: a server outside the cluster
    // sees node-1's underlay address, and its replies come back.
    let outside = format!("{}-outside", c.lab.name());
    let _outside_server = e2e::spawn_in(
        &outside,
        std::path::Path::new("python3"),
        &["-c", SERVER, "198.18.0.254"],
        &c.dir.path().join("outside.log"),
    );
    let mut seen = (String::new(), 0);
    wait_until(Duration::from_secs(10), || {
        seen = c.fetch(a, "198.18.0.254");
        seen.1 > 0
    });
    assert_eq!(
        seen.0, "198.18.0.11",
        "traffic to the outside was not masqueraded"
    );

    // The MTU the pod has is the MTU that passes: full-size packets with DF set go
    // through, no black hole.
    let mtu = if mode == "vxlan" { 1450 } else { 1500 };
    let eth0 = c.pods[a].0.run("ip", &["link", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&eth0.stdout).contains(&format!("mtu {mtu}")));
    let payload = (mtu - 28).to_string();
    assert!(
        c.ping(a, &b_ips[0], &["-M", "do", "-s", &payload]),
        "a full-size packet did not pass in {mode} mode"
    );

    // A node that leaves takes its routes with it.
    let kubeconfig = c.kubeconfig();
    let out = kubectl(&kubeconfig, &["delete", "node", "node-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node1 = c.node_ns(1);
    let routes_to_node2 = || {
        let out = netlink::netns::run_in(&node1, || {
            Command::new("ip")
                .args(["route", "show", "10.244.2.0/24"])
                .output()
        })
        .unwrap()
        .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || routes_to_node2().is_empty()),
        "route left: {}",
        routes_to_node2()
    );

    // A node joining gets its routes back.
    let node2 = c.dir.path().join("node-2.json");
    let out = kubectl(&kubeconfig, &["create", "-f", node2.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(10), || !routes_to_node2().is_empty()),
        "no route to node-2's pods after it joined again"
    );

    let show = |args: &[&str]| {
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        let out = netlink::netns::run_in(&node1, move || {
            Command::new(&args[0]).args(&args[1..]).output()
        })
        .unwrap()
        .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Before the cleanup, the agent's state is there, so its absence afterwards means
    // something.
    // The whole ruleset, as an operator lists it: the masquerade table and the
    // proxy's, both families.
    let ruleset = show(&["nft", "list", "ruleset"]);
    assert!(ruleset.contains("masquerade comment \"pod traffic leaving the pod network\""));
    for table in ["kubewire-pods", "kubewire-proxy"] {
        for family in ["ip", "ip6"] {
            assert!(
                ruleset.contains(&format!("table {family} {table} {{")),
                "{family} {table} not listed:\n{ruleset}"
            );
        }
    }
    assert!(show(&["ip", "route", "show", "proto", "75"]).contains("via"));
    if mode == "vxlan" {
        assert!(show(&["ip", "link"]).contains("kubewire.vxlan"));
    }

    // `agent --cleanup` (with the agent stopped) removes everything it made.
    drop(c.agents.remove(0));
    let out = c.agent_cleanup(1);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !show(&["ip", "route", "show", "proto", "75"]).contains("via"),
        "routes left"
    );
    assert!(
        !show(&["ip", "-6", "route", "show", "proto", "75"]).contains("via"),
        "IPv6 routes left"
    );
    assert!(
        !show(&["ip", "link"]).contains("kubewire.vxlan"),
        "VXLAN device left"
    );
    // The proxy's table is gone too: the whole list succeeds and names none of ours.
    let tables = netlink::netns::run_in(&node1, || {
        Command::new("nft").args(["list", "tables"]).output()
    })
    .unwrap()
    .unwrap();
    let listed = String::from_utf8_lossy(&tables.stdout);
    assert!(
        tables.status.success() && !listed.contains("kubewire"),
        "tables left: {listed} {}",
        String::from_utf8_lossy(&tables.stderr)
    );
}

#[test]
fn pods_on_different_nodes_reach_each_other_natively() {
    cross_node("native");
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_vxlan() {
    cross_node("vxlan");
}
