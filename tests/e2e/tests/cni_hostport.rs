//! hostPort through kubewire's own `portMappings` capability (nftables in the node's
//! namespace): reachable from outside the node with the client's address preserved,
//! from another pod, and from the pod itself (hairpin); a taken hostPort is refused;
//! DEL removes the mapping. IPv4 and IPv6.

use std::time::Duration;

use e2e::TestNetns;
use e2e::cluster::SERVER;
use e2e::cni::{Params, PluginDir, env_for, exec_plugin};
use serde_json::{Value, json};

/// Connects from `ns` to addr:port; returns the address the server saw ("" on failure).
fn fetch(ns: &TestNetns, addr: &str, port: u16) -> String {
    e2e::cluster::fetch_in(ns.name(), addr, port).0
}

#[test]
fn host_ports_reach_the_pod_from_everywhere_and_go_away_on_del() {
    let node = TestNetns::new("hnode");
    let client = TestNetns::new("hclient");
    netlink::sysctl::set_in(node.name(), "net.ipv4.ip_forward", "1").unwrap();
    netlink::sysctl::set_in(node.name(), "net.ipv6.conf.all.forwarding", "1").unwrap();
    node.sh(&format!(
        "ip link add up0 type veth peer name up1 netns {}",
        client.name()
    ));
    node.sh("ip addr add 198.19.0.1/24 dev up0 && ip addr add fd00:19::1/64 dev up0 nodad && ip link set up0 up",
    );
    client.sh("ip addr add 198.19.0.2/24 dev up1 && ip addr add fd00:19::2/64 dev up1 nodad && ip link set up1 up",
    );

    let plugins = PluginDir::new();
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.1.0", "name": e2e::unique_name("hp"), "type": "kubewire-cni",
        "capabilities": {"portMappings": true},
        "podCIDRs": ["10.244.30.0/24", "fd00:10:244:30::/64"], "dataDir": data.path(),
    });
    let cni_path = plugins.cni_path();
    let add = |pod: &TestNetns, id: &str, mappings: Value| {
        let mut c = conf.clone();
        c["runtimeConfig"] = json!({"portMappings": mappings});
        let netns = netlink::netns::path(pod.name()).display().to_string();
        let params = Params {
            container_id: id,
            netns: Some(&netns),
            ifname: "eth0",
        };
        exec_plugin(
            node.name(),
            &plugins.plugin("kubewire-cni"),
            &env_for("ADD", &params, &cni_path),
            &c,
        )
    };
    let (a, b) = (TestNetns::new("hpa"), TestNetns::new("hpb"));
    let ra = add(
        &a,
        "hp-a",
        json!([{"hostPort": 9090, "containerPort": 8080, "protocol": "tcp"}]),
    )
    .ok();
    let rb = add(&b, "hp-b", json!([])).ok();
    let a4 = ra["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let a6 = ra["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let b4 = rb["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let _s4 = a.spawn("python3", &["-c", SERVER, "0.0.0.0", "8080"]);
    let _s6 = a.spawn("python3", &["-c", SERVER, &a6, "8080"]);

    let eventually = |ns: &TestNetns, addr: &str| {
        let mut seen = String::new();
        e2e::wait_until(Duration::from_secs(10), || {
            seen = fetch(ns, addr, 9090);
            !seen.is_empty()
        });
        seen
    };
    // From outside the node: the client's own address reaches the pod.
    assert_eq!(eventually(&client, "198.19.0.1"), "198.19.0.2");
    assert_eq!(eventually(&client, "fd00:19::1"), "fd00:19::2");
    // From another pod on the node, through the node's address: its own address.
    assert_eq!(eventually(&b, "198.19.0.1"), b4);
    // From the pod itself (hairpin): masqueraded, so the reply comes back.
    let hairpin = eventually(&a, "198.19.0.1");
    assert!(
        !hairpin.is_empty() && hairpin != a4,
        "hairpin saw {hairpin:?}"
    );
    assert!(!a6.is_empty());

    // A second pod asking for the same hostPort is refused, and keeps nothing.
    let c = TestNetns::new("hpc");
    let inv = add(&c, "hp-c", json!([{"hostPort": 9090, "containerPort": 80}]));
    assert_eq!(inv.err_code(), 104, "{}", inv.raw_stdout);
    let state: Value = serde_json::from_slice(
        &std::fs::read(
            data.path()
                .join(conf["name"].as_str().unwrap())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        !state["allocations"]
            .as_object()
            .unwrap()
            .values()
            .any(|v| v["containerID"] == "hp-c"),
        "{state}"
    );

    // DEL takes the mapping away.
    let netns = netlink::netns::path(a.name()).display().to_string();
    let params = Params {
        container_id: "hp-a",
        netns: Some(&netns),
        ifname: "eth0",
    };
    exec_plugin(
        node.name(),
        &plugins.plugin("kubewire-cni"),
        &env_for("DEL", &params, &cni_path),
        &conf,
    )
    .ok();
    let rules = node.sh("nft list table ip kubewire-hostports");
    assert!(!rules.contains("dnat"), "{rules}");
    assert_eq!(fetch(&client, "198.19.0.1", 9090), "");
}
