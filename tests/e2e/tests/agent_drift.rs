//! The agent repairs drift: what someone deletes or flushes by hand on a node (a
//! route, a VXLAN forwarding entry, a neighbour, the masquerade table, the service
//! proxy's table, the hostPort table), or a firewall reload flushes, comes back at
//! the next resync, with no change in the API to trigger it, and Services answer
//! again. A real lab (underlay, two node namespaces), the real API server,
//! `kubewire agent` in each node with `--resync 2s`; the deletions are made with
//! iproute2 and nft, as an operator would.

#![allow(clippy::disallowed_methods)] // runs ip, bridge and nft inside the node

use std::process::Command;
use std::time::Duration;

use e2e::cluster::{Cluster, WHO_SERVER, probe_in};
use e2e::{KillOnDrop, wait_until};
use netlink::nft::{Family, NftSocket};
use serde_json::json;

/// Runs a command in `netns`; its stdout, or a panic with its stderr.
fn run_in(netns: &str, argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    let shown = argv.join(" ");
    let out = netlink::netns::run_in(netns, move || {
        Command::new(&argv[0]).args(&argv[1..]).output()
    })
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether table `name` of `family` is in `netns`'s kernel with `rules` rules at
/// least (asked over netlink; `nft list ruleset` shows the same, below).
fn has_table(netns: &str, family: Family, name: &str, rules: usize) -> bool {
    let mut socket = NftSocket::new_in(netns).unwrap();
    socket.table_handle(family, name).unwrap().is_some()
        && socket.rules(family, name).unwrap().len() >= rules
}

#[test]
fn what_is_deleted_by_hand_comes_back_at_the_next_resync() {
    let c = Cluster::up_with(&["--mode", "vxlan", "--resync", "2s"]);
    let node1 = c.node_ns(1);
    // node-2's VTEP: its MAC is derived from its underlay address 198.18.0.12.
    let mac = "0a:58:c6:12:00:0c";
    let route = || {
        run_in(
            &node1,
            &["ip", "route", "show", "10.244.2.0/24", "proto", "75"],
        )
    };
    let fdb = || run_in(&node1, &["bridge", "fdb", "show", "dev", "kubewire.vxlan"]);
    let neighbour = || run_in(&node1, &["ip", "neigh", "show", "dev", "kubewire.vxlan"]);
    let route_in = || route().contains("via 10.244.2.1");
    let fdb_in = || fdb().contains(&format!("{mac} dst 198.18.0.12"));
    let neighbour_in = || neighbour().contains(&format!("10.244.2.1 lladdr {mac} PERMANENT"));
    let masquerade_in = || has_table(&node1, Family::Ip, "kubewire-pods", 1);
    let proxy_in = || has_table(&node1, Family::Ip, proxy::TABLE, 20);
    let all_in = || route_in() && fdb_in() && neighbour_in() && masquerade_in() && proxy_in();
    assert!(
        wait_until(Duration::from_secs(20), all_in),
        "the agent never set node-1 up: route {:?}, fdb {:?}, neighbour {:?}, tables {} {}\n{}",
        route(),
        fdb(),
        neighbour(),
        masquerade_in(),
        proxy_in(),
        c.log("agent-1.log")
    );
    // A Service with endpoints on both nodes, and a pod on node-1 with a hostPort.
    let mut c = c;
    let a = c.add_pod_with(
        1,
        &[json!({"hostPort": 8081, "containerPort": 8080, "protocol": "tcp"})],
    );
    let b = c.add_pod(2);
    let client = c.add_pod(1);
    let _servers: Vec<KillOnDrop> = [(a, "a"), (b, "b")]
        .into_iter()
        .map(|(i, name)| {
            c.pods[i]
                .0
                .spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", name])
        })
        .collect();
    let (a_ip, b_ip) = (c.pods[a].1[0].clone(), c.pods[b].1[0].clone());
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.40.10", "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}}));
    c.apply(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a_ip], "nodeName": "node-1", "conditions": {"ready": true}},
                      {"addresses": [b_ip], "nodeName": "node-2", "conditions": {"ready": true}}],
        "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}),
    );
    let client_ns = c.pods[client].0.name().to_owned();
    let outside = c.outside_ns();
    let service_answers = || probe_in(&client_ns, "10.96.40.10", 80).starts_with("ok ");
    let host_port_answers = || probe_in(&outside, "198.18.0.11", 8081).starts_with("ok a ");
    let hostports_in = || has_table(&node1, Family::Ip, "kubewire-hostports", 5);
    assert!(
        wait_until(Duration::from_secs(20), || service_answers()
            && host_port_answers()
            && hostports_in()),
        "service {} hostPort {}\n{}",
        probe_in(&client_ns, "10.96.40.10", 80),
        probe_in(&outside, "198.18.0.11", 8081),
        c.log("agent-1.log")
    );
    // The whole ruleset lists, with every table of ours.
    let ruleset = run_in(&node1, &["nft", "list", "ruleset"]);
    for table in [proxy::TABLE, "kubewire-pods", "kubewire-hostports"] {
        for family in ["ip", "ip6"] {
            assert!(
                ruleset.contains(&format!("table {family} {table} {{")),
                "{family} {table} not listed"
            );
        }
    }

    // A firewall reload (or an operator) flushes every table: the rules go, the
    // tables stay. The resync puts them back; the Service and the hostPort answer.
    run_in(&node1, &["nft", "flush", "ruleset"]);
    for (table, rules) in [
        (proxy::TABLE, 20),
        ("kubewire-pods", 1),
        ("kubewire-hostports", 5),
    ] {
        assert!(
            wait_until(Duration::from_secs(20), || has_table(
                &node1,
                Family::Ip,
                table,
                rules
            )),
            "{table} not restored after a flush\n{}",
            c.log("agent-1.log")
        );
    }
    for table in [proxy::TABLE, "kubewire-pods", "kubewire-hostports"] {
        run_in(&node1, &["nft", "flush", "table", "ip", table]);
    }
    assert!(
        wait_until(Duration::from_secs(20), || service_answers()
            && host_port_answers()
            && masquerade_in()),
        "not restored after the tables were flushed: service {}, hostPort {}, masquerade {}\n{}",
        probe_in(&client_ns, "10.96.40.10", 80),
        probe_in(&outside, "198.18.0.11", 8081),
        masquerade_in(),
        c.log("agent-1.log")
    );

    // An operator deletes each of them.
    run_in(&node1, &["ip", "route", "del", "10.244.2.0/24"]);
    run_in(
        &node1,
        &[
            "bridge",
            "fdb",
            "del",
            mac,
            "dev",
            "kubewire.vxlan",
            "dst",
            "198.18.0.12",
        ],
    );
    run_in(
        &node1,
        &["ip", "neigh", "del", "10.244.2.1", "dev", "kubewire.vxlan"],
    );
    run_in(&node1, &["nft", "delete", "table", "ip", "kubewire-pods"]);
    run_in(&node1, &["nft", "delete", "table", "ip", proxy::TABLE]);
    run_in(
        &node1,
        &["nft", "delete", "table", "ip", "kubewire-hostports"],
    );
    assert!(!route_in() && !fdb_in() && !masquerade_in() && !proxy_in() && !hostports_in());

    // Nothing changes in the API; the resync puts every one back, and the Service and
    // the hostPort answer again.
    assert!(
        wait_until(Duration::from_secs(20), || all_in()
            && hostports_in()
            && service_answers()
            && host_port_answers()),
        "not restored: route {:?}, fdb {:?}, neighbour {:?}, masquerade table {}, proxy table {}\n{}",
        route(),
        fdb(),
        neighbour(),
        masquerade_in(),
        proxy_in(),
        c.log("agent-1.log")
    );
    let masquerade = run_in(&node1, &["nft", "list", "table", "ip", "kubewire-pods"]);
    assert!(
        masquerade.contains("10.244.1.0/24") && masquerade.contains("10.244.2.0/24"),
        "{masquerade}"
    );
    // And pods on the two nodes reach each other again across the restored path.
    let to = c.pods[b].1[0].clone();
    assert!(
        wait_until(Duration::from_secs(10), || c.ping(client, &to, &[])),
        "pod on node-1 cannot reach {to} after the repair"
    );
}
