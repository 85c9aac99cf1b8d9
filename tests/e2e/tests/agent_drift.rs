//! The agent repairs drift: what someone deletes by hand on a node (a route, a VXLAN
//! forwarding entry, a neighbour, the masquerade table, the service proxy's table)
//! comes back at the next resync, with no change in the API to trigger it. A real lab
//! (underlay, two node namespaces), the real API server, `kubewire agent` in each
//! node with `--resync 2s`; the deletions are made with iproute2 and nft, as an
//! operator would.

#![allow(clippy::disallowed_methods)] // runs ip, bridge and nft inside the node

use std::process::Command;
use std::time::Duration;

use e2e::cluster::Cluster;
use e2e::wait_until;
use netlink::nft::{Family, NftSocket};

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

/// Whether table `name` of `family` is in `netns`'s kernel (asked over netlink: the
/// proxy's table is one nft 1.0.6 cannot print).
fn has_table(netns: &str, family: Family, name: &str) -> bool {
    NftSocket::new_in(netns)
        .unwrap()
        .table_handle(family, name)
        .unwrap()
        .is_some()
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
    let masquerade_in = || has_table(&node1, Family::Ip, "kubewire-pods");
    let proxy_in = || has_table(&node1, Family::Ip, proxy::TABLE);
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
    assert!(!route_in() && !fdb_in() && !masquerade_in() && !proxy_in());

    // Nothing changes in the API; the resync puts every one back.
    assert!(
        wait_until(Duration::from_secs(20), all_in),
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
    let mut c = c;
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let to = c.pods[b].1[0].clone();
    assert!(
        wait_until(Duration::from_secs(10), || c.ping(a, &to, &[])),
        "pod on node-1 cannot reach {to} after the repair"
    );
}
