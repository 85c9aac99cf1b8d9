//! The service proxy lives next to other firewall software on a node: rules that
//! iptables-nft keeps in the `filter` and `nat` tables, another nft table with base
//! chains at the same priorities as kubewire's and at others, and a firewall that
//! drops forwarded traffic by default. kubewire never touches them (they are the
//! same, rule for rule, after a full sync and 100 incremental syncs) and they keep
//! matching packets all along; with the forwarding firewall's allowances that
//! docs/proxy.md lists, Services answer through it. A hand-built node routing for
//! pods, the proxy driven directly. Needs root; fails, never skips.

#![allow(clippy::disallowed_methods)] // plays the other software with iptables and nft

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use e2e::cluster::{PROBE, WHO_SERVER, python_in};
use e2e::{KillOnDrop, TestNetns};
use netlink::nft::NftSocket;
use proxy::{
    Endpoint, Node, Protocol, Proxier, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, desired,
};

/// Runs a program in `ns`; its stdout, or a panic with its stderr.
fn run_in(ns: &str, argv: &[&str]) -> String {
    let argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    let shown = argv.join(" ");
    let out = netlink::netns::run_in(ns, move || Command::new(&argv[0]).args(&argv[1..]).output())
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nft -f -` with `ruleset` in `ns`.
fn nft_f(ns: &str, ruleset: &str) {
    let ruleset = ruleset.to_owned();
    let out = netlink::netns::run_in(ns, move || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())?;
        child.wait_with_output()
    })
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "nft -f: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Joins `pod` to `node` with a veth: the pod gets `addr`/24 and a default route via
/// `gw`, the node's end.
fn wire(node: &str, pod: &str, node_if: &str, addr: &str, gw: &str) {
    run_in(
        node,
        &[
            "ip", "link", "add", node_if, "type", "veth", "peer", "name", "eth0", "netns", pod,
        ],
    );
    run_in(
        node,
        &["ip", "addr", "add", &format!("{gw}/24"), "dev", node_if],
    );
    run_in(node, &["ip", "link", "set", node_if, "up"]);
    run_in(
        pod,
        &["ip", "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    );
    run_in(pod, &["ip", "link", "set", "eth0", "up"]);
    run_in(pod, &["ip", "route", "add", "default", "via", gw]);
}

/// [`PROBE`] from `ns` to `addr`:`port`, one second at most.
fn probe(ns: &str, addr: &str, port: u16) -> String {
    python_in(ns, PROBE, &[addr, &port.to_string(), "1"])
}

/// The text of a listing without its counters and handles: what someone else's rules
/// say, whatever traffic they counted.
fn rules_only(listing: &str) -> String {
    listing
        .lines()
        .map(|l| {
            let mut words: Vec<&str> = Vec::new();
            let mut it = l.split_whitespace().peekable();
            while let Some(w) = it.next() {
                if matches!(w, "packets" | "bytes" | "-c") {
                    it.next();
                    continue;
                }
                words.push(w);
            }
            words.join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The packet count of the rule of `listing` with comment `tag`.
fn packets(listing: &str, tag: &str) -> u64 {
    let comment = format!("comment \"{tag}\"");
    let line = listing
        .lines()
        .find(|l| l.contains(&comment))
        .unwrap_or_else(|| panic!("no {tag} in {listing}"));
    let mut words = line.split_whitespace();
    while let Some(w) = words.next() {
        if w == "packets" {
            return words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    panic!("no counter on {line}");
}

/// Services `s0..n` on 10.96.1.x:80 → 8080, each with `endpoints`; `s0` is also a
/// NodePort (31000).
fn view(n: u32, endpoints: &[(&str, &str)]) -> View {
    let ports = Arc::new(BTreeMap::from([(("http".to_owned(), Protocol::Tcp), 8080)]));
    let mut view = View::default();
    for i in 0..n {
        let key = ServiceKey::new("default", format!("s{i}"));
        let eps = endpoints
            .iter()
            .map(|(ip, node)| Endpoint {
                address: ip.parse().unwrap(),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some((*node).into()),
                ports: Arc::clone(&ports),
                hints: None,
            })
            .collect();
        let svc = Service {
            key: key.clone(),
            ty: if i == 0 {
                ServiceType::NodePort
            } else {
                ServiceType::ClusterIp
            },
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 1, i as u8))],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: (i == 0).then_some(31000),
            }],
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            publish_not_ready: false,
            endpoints: eps,
        };
        view.services.insert(key, svc);
    }
    view
}

/// Someone else's nft table: base chains at kubewire's priorities (nat dstnat,
/// filter dstnat-10 and forward 0, nat srcnat) and at others (mangle, raw), each
/// counting the client's new connections; one also marks them (the packet mark,
/// which the proxy must leave alone).
const FOREIGN: &str = r#"table inet someone {
    chain raw-pre { type filter hook prerouting priority raw;
        ip saddr 10.244.3.2 tcp flags syn counter comment "raw-pre"; }
    chain mangle-pre { type filter hook prerouting priority mangle;
        ip saddr 10.244.3.2 ct state new meta mark set meta mark | 0x100 counter comment "mangle-pre"; }
    chain filter-dstnat { type filter hook prerouting priority dstnat - 10;
        ip saddr 10.244.3.2 ct state new counter comment "filter-dstnat"; }
    chain nat-pre { type nat hook prerouting priority dstnat;
        ip saddr 10.244.3.2 counter comment "nat-pre"; }
    chain forwarded { type filter hook forward priority filter;
        ip saddr 10.244.3.2 ct state new meta mark & 0x100 == 0x100 counter comment "fwd-marked"; }
    chain nat-post { type nat hook postrouting priority srcnat;
        ip saddr 10.244.3.2 counter comment "nat-post"; }
}
"#;

#[test]
fn other_firewall_software_keeps_working_through_syncs() {
    let node = TestNetns::new("coex-node");
    let pod1 = TestNetns::new("coex-pod1");
    let pod2 = TestNetns::new("coex-pod2");
    let client = TestNetns::new("coex-client");
    let outside = TestNetns::new("coex-out");
    let (n, p1, p2, c, o) = (
        node.name(),
        pod1.name(),
        pod2.name(),
        client.name(),
        outside.name(),
    );
    wire(n, p1, "veth1", "10.244.1.2", "10.244.1.1");
    wire(n, p2, "veth2", "10.244.2.2", "10.244.2.1");
    wire(n, c, "veth3", "10.244.3.2", "10.244.3.1");
    wire(n, o, "veth4", "198.18.0.2", "198.18.0.1");
    netlink::sysctl::set_in(n, "net.ipv4.ip_forward", "1").unwrap();
    let _servers: Vec<KillOnDrop> = [(&pod1, "pod1"), (&pod2, "pod2")]
        .into_iter()
        .flat_map(|(pod, name)| {
            [
                pod.spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", name]),
                pod.spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "9999", name]),
            ]
        })
        .collect();
    assert!(
        e2e::wait_until(Duration::from_secs(10), || probe(c, "10.244.1.2", 8080)
            .starts_with("ok pod1")
            && probe(c, "10.244.2.2", 9999).starts_with("ok pod2")),
        "the pods do not answer directly"
    );

    // The other software: iptables-nft rules in filter and nat (a DROP for one port,
    // a DNAT of the node's port 7777 to pod2), and its own nft table.
    run_in(
        n,
        &[
            "iptables-nft",
            "-A",
            "FORWARD",
            "-p",
            "tcp",
            "--dport",
            "9999",
            "-j",
            "DROP",
        ],
    );
    run_in(
        n,
        &[
            "iptables-nft",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "7777",
            "-j",
            "DNAT",
            "--to-destination",
            "10.244.2.2:8080",
        ],
    );
    nft_f(n, FOREIGN);
    let iptables = || {
        run_in(n, &["iptables-nft-save"])
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
            .map(|l| l.to_owned())
            .collect::<Vec<_>>()
    };
    let foreign = || run_in(n, &["nft", "list", "table", "inet", "someone"]);
    let (iptables_before, foreign_before) = (iptables(), rules_only(&foreign()));

    // kubewire: a full sync, then 100 incremental ones (endpoints moving between the
    // pods, services coming and going).
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let both = [("10.244.1.2", "node-1"), ("10.244.2.2", "node-1")];
    let mut proxier = Proxier::new(NftSocket::new_in(n).unwrap());
    proxier.sync(desired(&view(3, &both), &this_node)).unwrap();
    let traffic = |round: usize| {
        // A service through kubewire, from a pod and from outside (node port).
        let via_service = probe(c, "10.96.1.0", 80);
        assert!(
            via_service.starts_with("ok pod"),
            "round {round}: {via_service}"
        );
        let node_port = probe(o, "198.18.0.1", 31000);
        assert!(
            node_port.starts_with("ok pod"),
            "round {round}: {node_port}"
        );
        // The DROP still drops, the foreign DNAT still translates.
        assert_eq!(probe(c, "10.244.1.2", 9999), "timeout", "round {round}");
        let dnat = probe(c, "10.244.3.1", 7777);
        assert!(dnat.starts_with("ok pod2"), "round {round}: {dnat}");
    };
    traffic(0);
    for round in 1..=100usize {
        let eps: &[(&str, &str)] = match round % 3 {
            0 => &both,
            1 => &both[..1],
            _ => &both[1..],
        };
        let services = if round % 10 == 0 { 4 } else { 3 };
        let old: BTreeSet<ServiceKey> = (0..4)
            .map(|i| ServiceKey::new("default", format!("s{i}")))
            .collect();
        let report = proxier
            .update(&view(services, eps), &this_node, &old)
            .unwrap();
        assert!(!report.full);
        if round % 20 == 0 {
            traffic(round);
        }
    }
    assert_eq!(iptables(), iptables_before, "iptables-nft's rules changed");
    let after = foreign();
    assert_eq!(
        rules_only(&after),
        foreign_before,
        "the foreign table changed"
    );
    // And every one of its chains saw the client's connections (6 rounds of traffic,
    // 3 connections from the client each: service, port 9999, port 7777).
    for tag in [
        "raw-pre",
        "mangle-pre",
        "filter-dstnat",
        "nat-pre",
        "nat-post",
    ] {
        assert!(packets(&after, tag) >= 6 * 2, "{tag}: {after}");
    }
    // The mark it set before kubewire's chains is there after them.
    assert!(packets(&after, "fwd-marked") >= 6 * 2, "{after}");
    // iptables-nft counted its drops too.
    let listing = run_in(n, &["iptables-nft", "-L", "FORWARD", "-v", "-n", "-x"]);
    let dropped: u64 = listing
        .lines()
        .find(|l| l.contains("DROP") && l.contains("dpt:9999"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(dropped >= 6, "{listing}");
}

/// The forwarding firewall docs/proxy.md describes: policy drop, and what it must
/// allow for pods and Services.
const DROP_FORWARD: &str = r#"table inet firewall {
    chain forward { type filter hook forward priority filter; policy drop; }
}
"#;
const ALLOW_FORWARD: &str = r#"table inet firewall {
    chain forward {
        ct state established,related accept
        ct status dnat accept
        ip saddr 10.244.0.0/16 accept
        ip daddr 10.244.0.0/16 accept
    }
}
"#;

#[test]
fn services_answer_through_a_default_drop_forward_firewall_with_its_allowances() {
    let node = TestNetns::new("fw-node");
    let pod = TestNetns::new("fw-pod");
    let client = TestNetns::new("fw-client");
    let outside = TestNetns::new("fw-out");
    let (n, p, c, o) = (node.name(), pod.name(), client.name(), outside.name());
    wire(n, p, "veth1", "10.244.1.2", "10.244.1.1");
    wire(n, c, "veth2", "10.244.2.2", "10.244.2.1");
    wire(n, o, "veth3", "198.18.0.2", "198.18.0.1");
    netlink::sysctl::set_in(n, "net.ipv4.ip_forward", "1").unwrap();
    let _server = pod.spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", "pod"]);
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let mut proxier = Proxier::new(NftSocket::new_in(n).unwrap());
    proxier
        .sync(desired(&view(1, &[("10.244.1.2", "node-1")]), &this_node))
        .unwrap();
    assert!(
        e2e::wait_until(Duration::from_secs(10), || probe(c, "10.96.1.0", 80)
            .starts_with("ok pod")),
        "the service does not answer before the firewall"
    );

    // Forwarding dropped by default: the service is cut off, from pods and outside.
    nft_f(n, DROP_FORWARD);
    assert_eq!(probe(c, "10.96.1.0", 80), "timeout");
    assert_eq!(probe(o, "198.18.0.1", 31000), "timeout");
    // With the allowances: both answer, and kubewire's syncs leave the firewall alone.
    nft_f(n, ALLOW_FORWARD);
    let firewall = || run_in(n, &["nft", "list", "table", "inet", "firewall"]);
    let before = rules_only(&firewall());
    let seen = probe(c, "10.96.1.0", 80);
    assert_eq!(seen, "ok pod 10.244.2.2", "a pod keeps its address");
    let seen = probe(o, "198.18.0.1", 31000);
    assert!(seen.starts_with("ok pod "), "{seen}");
    proxier
        .sync(desired(&view(2, &[("10.244.1.2", "node-1")]), &this_node))
        .unwrap();
    assert_eq!(rules_only(&firewall()), before);
    assert!(probe(c, "10.96.1.1", 80).starts_with("ok pod"));
}
