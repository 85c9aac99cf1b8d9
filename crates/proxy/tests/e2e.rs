//! The proxy's rules applied in throwaway network namespaces: a "node" routing for two
//! "pods", real TCP connections through a ClusterIP. Needs root; fails, never skips,
//! without it. Traffic stays between the namespaces this test creates.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlink::netns;
use netlink::nft::NftSocket;
use proxy::{Node, Proxier, ServiceKey, View, desired};
use serde_json::json;

fn assert_root() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "this test needs root (network namespaces, nf_tables)"
    );
}

use benchkit::{Namespaces, ip, wire};

/// A TCP server in `pod` on :8080 answering every connection with `name`.
fn serve(pod: &str, name: &'static str) {
    let listener = netns::run_in(pod, || TcpListener::bind("0.0.0.0:8080"))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = conn.write_all(name.as_bytes());
            let _ = conn.shutdown(Shutdown::Write);
        }
    });
}

/// Connects from `pod` to `addr` `n` times; the answers (or the first error).
fn connect(pod: &str, addr: &'static str, n: usize) -> std::io::Result<Vec<String>> {
    netns::run_in(pod, move || {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut answers = Vec::new();
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            answers.push(text);
        }
        Ok(answers)
    })
    .unwrap()
}

/// `nft ARGS` in `ns` (a test reading the table as a user would): its output; fails on
/// a non-zero exit or anything on stderr but
/// the one warning nft 1.0.6 gives for JSON: it has no JSON form for `update @map {
/// key : value }` (the affinity record), which it prints as a string instead.
#[allow(clippy::disallowed_methods)]
fn nft(ns: &str, args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = args.join(" ");
    let out = netns::run_in(ns, move || Command::new("nft").args(&args).output())
        .unwrap()
        .expect("nft runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nft {shown}: {stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l == "warning: stmt ops map have no json callback"),
        "nft {shown}: {stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn service(name: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn slice(service: &str, addrs: &[&str]) -> EndpointSlice {
    let endpoints: Vec<_> = addrs
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("{service}-1"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }))
    .unwrap()
}

#[test]
fn cluster_ip_balances_rejects_and_follows_endpoint_changes() {
    assert_root();
    let mut ns = Namespaces::default();
    let node = ns.make("px", "node");
    let pod1 = ns.make("px", "pod1");
    let pod2 = ns.make("px", "pod2");
    ip(&node, "link set lo up");
    wire(&node, &pod1, "veth1", "10.244.1.2", "10.244.1.1");
    wire(&node, &pod2, "veth2", "10.244.2.2", "10.244.2.1");
    // "outside": a client beyond the node, reaching it at its address 198.18.0.1.
    let outside = ns.make("px", "outside");
    wire(&node, &outside, "veth3", "198.18.0.2", "198.18.0.1");
    // A default route (towards pod2, which owns no ClusterIP and drops what it gets),
    // so that traffic to a ClusterIP that is not DNATed is forwarded, and meets the
    // filter-forward check, instead of failing routing as it would with no route.
    ip(&node, "route add default via 10.244.2.2");
    netlink::sysctl::set_in(&node, "net.ipv4.ip_forward", "1").unwrap();
    serve(&pod1, "pod1");
    serve(&pod2, "pod2");

    let mut nodeport = service("np", "10.96.0.12");
    if let Some(spec) = &mut nodeport.spec {
        spec.type_ = Some("NodePort".into());
        if let Some(p) = spec.ports.as_mut().and_then(|p| p.first_mut()) {
            p.node_port = Some(31100);
        }
    }
    let services = [
        service("web", "10.96.0.10"),
        service("empty", "10.96.0.11"),
        nodeport,
    ];
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let rules = |addrs: &[&str]| {
        let slices = [
            slice("web", addrs),
            slice("np", &["10.244.1.2", "10.244.2.2"]),
        ];
        let (view, errors) = View::build(&services, &slices);
        assert!(errors.is_empty(), "{errors:?}");
        desired(&view, &this_node)
    };
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    let report = proxier.sync(rules(&["10.244.1.2", "10.244.2.2"])).unwrap();
    assert!(report.full);

    // Both endpoints, from pod1: one of them is pod1 itself (hairpin). Each gets
    // about half of the connections (1/N per endpoint; 200 connections put each
    // outside 60..140 with a probability below 1e-8 when the pick is uniform).
    let answers = connect(&pod1, "10.96.0.10:80", 200).unwrap();
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen, BTreeSet::from(["pod1", "pod2"]), "{answers:?}");
    let pod1_share = answers.iter().filter(|a| *a == "pod1").count();
    assert!(
        (60..=140).contains(&pod1_share),
        "pod1 got {pod1_share} of 200 connections"
    );

    // The NodePort, from outside, on the node's address: both endpoints, the client
    // masqueraded (the pods route to the node only).
    let answers = connect(&outside, "198.18.0.1:31100", 24).unwrap();
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen, BTreeSet::from(["pod1", "pod2"]), "{answers:?}");

    // No endpoints: refused at once, not a timeout.
    let t = Instant::now();
    let err = connect(&pod2, "10.96.0.11:80", 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A port the service does not define: refused too.
    let t = Instant::now();
    let err = connect(&pod2, "10.96.0.10:81", 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // One endpoint gone, as the agent reports it (only that service recomputed): a
    // small incremental batch, and only pod2 answers.
    let slices = [
        slice("web", &["10.244.2.2"]),
        slice("np", &["10.244.1.2", "10.244.2.2"]),
    ];
    let (view, _) = View::build(&services, &slices);
    let changed = BTreeSet::from([ServiceKey::new("default", "web")]);
    let report = proxier.update(&view, &this_node, &changed).unwrap();
    assert!(!report.full);
    // The first service with one endpoint: its class map, chain and rules come, and
    // the by-class chain is refilled; the ClusterIP's class changes, its endpoints
    // move between the class maps.
    assert!(report.messages <= 14, "{report:?}");
    let answers = connect(&pod1, "10.96.0.10:80", 8).unwrap();
    assert!(answers.iter().all(|a| a == "pod2"), "{answers:?}");
    // Endpoint replaced by pod1, through a whole recomputation this time.
    let report = proxier.sync(rules(&["10.244.1.2"])).unwrap();
    assert_eq!(
        report.messages, 2,
        "one endpoint element out, one in; no rule: {report:?}"
    );
    let answers = connect(&pod2, "10.96.0.10:80", 8).unwrap();
    assert!(answers.iter().all(|a| a == "pod1"), "{answers:?}");
    // Nothing changed: nothing sent.
    assert_eq!(proxier.sync(rules(&["10.244.1.2"])).unwrap().messages, 0);

    // A restarted proxier replaces the tables atomically (no duplicate rules).
    let mut restarted = Proxier::new(NftSocket::new_in(&node).unwrap());
    assert!(
        restarted
            .sync(rules(&["10.244.1.2", "10.244.2.2"]))
            .unwrap()
            .full
    );
    let answers = connect(&pod2, "10.96.0.10:80", 24).unwrap();
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen.len(), 2, "{answers:?}");

    // The proxier sees its tables are still there, also after others' commits...
    assert!(restarted.intact());
    let mut other = NftSocket::new_in(&node).unwrap();
    let other_table = netlink::nft::Table::new(netlink::nft::Family::Ip, "someone-else");
    other
        .apply(netlink::nft::Batch::new().add_table(&other_table))
        .unwrap();
    assert!(restarted.intact(), "another table changes nothing of ours");
    // ... and that they are gone when someone deletes one; the next sync puts
    // everything back.
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node,
            "nft",
            "delete",
            "table",
            "ip",
            proxy::TABLE,
        ])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        connect(&pod2, "10.96.0.10:80", 1).is_err(),
        "no rules, no service"
    );
    assert!(!restarted.intact());
    let report = restarted
        .sync(rules(&["10.244.1.2", "10.244.2.2"]))
        .unwrap();
    assert!(report.full, "{report:?}");
    assert!(restarted.intact());
    let answers = connect(&pod2, "10.96.0.10:80", 24).unwrap();
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen.len(), 2, "{answers:?}");

    // Flushed by hand (the table and its handle stay, its rules go; or one chain):
    // seen, and put back.
    for flush in [
        &["flush", "table", "ip", proxy::TABLE][..],
        &["flush", "chain", "ip", proxy::TABLE, "services"][..],
    ] {
        nft(&node, flush);
        assert!(
            connect(&pod2, "10.96.0.10:80", 1).is_err(),
            "no rules, no service"
        );
        assert!(!restarted.intact(), "nft {flush:?} went unnoticed");
        let report = restarted
            .sync(rules(&["10.244.1.2", "10.244.2.2"]))
            .unwrap();
        assert!(report.full, "{report:?}");
        assert!(restarted.intact());
        assert_eq!(connect(&pod2, "10.96.0.10:80", 4).unwrap().len(), 4);
    }

    // Cleanup removes the tables, and is repeatable.
    restarted.cleanup().unwrap();
    restarted.cleanup().unwrap();
    let err = connect(&pod2, "10.96.0.11:80", 1).unwrap_err();
    assert_ne!(
        err.kind(),
        ErrorKind::ConnectionRefused,
        "rules still there: {err}"
    );
}

/// Every kind of rule the proxy writes, loaded into a kernel: NodePort, LoadBalancer
/// and external IPs, both traffic policies Local, affinity, SCTP and UDP, IPv6, and
/// services without endpoints. Then all of it removed again, one service at a time.
#[test]
fn the_kernel_accepts_every_rule_shape() {
    assert_root();
    let mut ns = Namespaces::default();
    let node = ns.make("px", "node");
    let mut lb: Service = serde_json::from_value(json!({
        "metadata": {"name": "lb", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
                 "externalIPs": ["192.0.2.10"], "externalTrafficPolicy": "Local",
                 "sessionAffinity": "ClientIP",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31100},
                           {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 31101},
                           {"name": "sctp", "port": 9, "protocol": "SCTP"}]}
    }))
    .unwrap();
    lb.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}}))
            .unwrap();
    let itp: Service = serde_json::from_value(json!({
        "metadata": {"name": "itp", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.21", "internalTrafficPolicy": "Local",
                 "ports": [{"name": "http", "port": 80}]}
    }))
    .unwrap();
    let empty: Service = serde_json::from_value(json!({
        "metadata": {"name": "empty", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.0.22",
                 "ports": [{"name": "http", "port": 80, "nodePort": 31102}]}
    }))
    .unwrap();
    let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"},
                       {"name": "dns", "port": 5353, "protocol": "UDP"},
                       {"name": "sctp", "port": 9, "protocol": "SCTP"}]);
    let slices: Vec<EndpointSlice> = [
        ("lb", "IPv4", json!(["10.244.1.2"]), "node-1"),
        ("lb", "IPv4", json!(["10.244.2.2"]), "node-2"),
        ("lb", "IPv6", json!(["fd00:10:244::2"]), "node-1"),
        ("itp", "IPv4", json!(["10.244.2.3"]), "node-2"),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (svc, family, addrs, node))| {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-{i}"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": family,
            "endpoints": [{"addresses": addrs, "nodeName": node}],
            "ports": ports.clone()
        }))
        .unwrap()
    })
    .collect();
    let services = [lb, itp, empty];
    let (view, errors) = View::build(&services, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        node_ips: vec![
            "198.18.0.11".parse().unwrap(),
            "2001:2::11".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:10:96::/112".parse().unwrap(),
        ],
        zone: None,
    };
    let rules = desired(&view, &this_node);
    let ip6 = rules.family(netlink::nft::Family::Ip6).unwrap();
    assert!(!ip6.services.is_empty());
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    proxier.sync(rules).unwrap();
    // Operators read the table with nft: the whole ruleset lists, as text and as
    // JSON, and names every set, map and chain of both tables.
    let applied = proxier.applied().unwrap().clone();
    let text = nft(&node, &["list", "ruleset"]);
    let json: serde_json::Value = serde_json::from_str(&nft(&node, &["--json", "list", "ruleset"]))
        .expect("nft --json prints JSON");
    let listed = json["nftables"].as_array().unwrap();
    for f in &applied.families {
        let family = if f.family == netlink::nft::Family::Ip6 {
            "ip6"
        } else {
            "ip"
        };
        assert!(text.contains(&format!("table {family} kubewire-proxy {{")));
        let sets = f.all_sets().map(|s| &s.set);
        let mut objects: Vec<(&str, String)> = sets
            .chain(f.class_maps.values().map(|m| &m.set))
            .map(|s| (if s.data.is_some() { "map" } else { "set" }, s.name.clone()))
            .collect();
        let derived = f.class_chains();
        let chains = f.chains.keys().chain(derived.keys()).cloned();
        objects.extend(chains.map(|c| ("chain", c)));
        assert!(objects.len() > 30, "{objects:?}");
        for (kind, name) in objects {
            assert!(
                text.contains(&format!("\t{kind} {name} {{")),
                "{kind} {family} {name} not in the listing:\n{text}"
            );
            assert!(
                listed.iter().any(|o| o[kind]["family"] == family
                    && o[kind]["table"] == "kubewire-proxy"
                    && o[kind]["name"] == name.as_str()),
                "{kind} {family} {name} not in the JSON listing"
            );
        }
    }
    // Every rule nft lists has a comment saying what it is for.
    let mut in_chain = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with("chain ") {
            in_chain = true;
        } else if line == "}" {
            in_chain = false;
        } else if in_chain && !line.starts_with("type ") && !line.is_empty() {
            assert!(
                line.contains(" comment \""),
                "a rule without a comment: {line}"
            );
        }
    }

    // Remove the services one by one through incremental updates, down to nothing.
    let mut left: Vec<Service> = services.to_vec();
    while let Some(gone) = left.pop() {
        let (view, _) = View::build(&left, &slices);
        let key = ServiceKey::new("default", gone.metadata.name.clone().unwrap());
        let report = proxier
            .update(&view, &this_node, &BTreeSet::from([key]))
            .unwrap();
        assert!(report.messages > 0);
    }
    let applied = proxier.applied().unwrap();
    assert!(applied.families.iter().all(|f| f.services.is_empty()));
    assert!(
        applied
            .families
            .iter()
            .flat_map(|f| f.sets.values())
            .filter(|s| s.set.name != proxy::names::NODEPORT_IPS)
            .all(|s| s.is_empty()),
        "every shared element gone with its services (the node's addresses stay)"
    );
    assert!(
        applied
            .families
            .iter()
            .all(|f| f.class_maps.is_empty()
                && f.class_chains().keys().all(|c| !c.contains("balance"))),
        "class maps and chains gone with the last service of their class"
    );
    proxier.cleanup().unwrap();
}

/// A TCP server in `pod` on :`port` answering every connection with the client's
/// address as it sees it.
fn serve_peer(pod: &str, port: u16) {
    let listener = netns::run_in(pod, move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let peer = conn
                .peer_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
            let _ = conn.shutdown(Shutdown::Write);
        }
    });
}

fn node_port(name: &str, cluster_ip: &str, node_port: i32, local: bool) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": cluster_ip,
                 "externalTrafficPolicy": if local { "Local" } else { "Cluster" },
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                            "nodePort": node_port}]}
    }))
    .unwrap()
}

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_drops_without_endpoints() {
    assert_root();
    let mut ns = Namespaces::default();
    let node = ns.make("px", "node");
    let pod = ns.make("px", "pod");
    let client = ns.make("px", "client");
    let outside = ns.make("px", "outside");
    ip(&node, "link set lo up");
    wire(&node, &pod, "veth1", "10.244.1.2", "10.244.1.1");
    wire(&node, &client, "veth2", "10.244.2.2", "10.244.2.1");
    wire(&node, &outside, "veth3", "198.18.0.2", "198.18.0.1");
    netlink::sysctl::set_in(&node, "net.ipv4.ip_forward", "1").unwrap();
    serve_peer(&pod, 8080);

    let services = [
        node_port("local", "10.96.0.30", 31100, true),
        node_port("cluster", "10.96.0.31", 31101, false),
        node_port("elsewhere", "10.96.0.32", 31102, true),
    ];
    let slice_on = |svc: &str, addr: &str, node: &str| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-1"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [addr], "nodeName": node}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    };
    let slices = [
        slice_on("local", "10.244.1.2", "node-1"),
        slice_on("cluster", "10.244.1.2", "node-1"),
        // An endpoint on another node (its address is never reached: dropped first).
        slice_on("elsewhere", "10.244.9.9", "node-2"),
    ];
    let (view, errors) = View::build(&services, &slices);
    assert!(errors.is_empty(), "{errors:?}");
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    proxier.sync(desired(&view, &this_node)).unwrap();

    // eTP Local: the endpoint sees the outside client's own address.
    let seen = connect(&outside, "198.18.0.1:31100", 3).unwrap();
    assert!(seen.iter().all(|a| a == "198.18.0.2"), "{seen:?}");
    // eTP Cluster: masqueraded to the node's address towards the pod.
    let seen = connect(&outside, "198.18.0.1:31101", 3).unwrap();
    assert!(seen.iter().all(|a| a == "10.244.1.1"), "{seen:?}");
    // Pod to service: the endpoint sees the client pod's own address.
    let seen = connect(&client, "10.96.0.31:80", 3).unwrap();
    assert!(seen.iter().all(|a| a == "10.244.2.2"), "{seen:?}");
    // The pod reaching itself through its service (hairpin): masqueraded to the
    // node's address, or its own reply would never come back through the node.
    let seen = connect(&pod, "10.96.0.30:80", 1).unwrap();
    assert_eq!(seen, ["10.244.1.1"], "hairpin is masqueraded");
    // eTP Local on a node without a local endpoint: dropped, not answered.
    let err = connect(&outside, "198.18.0.1:31102", 1).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
}

/// A pseudo-random walk of changes (endpoints added, removed, replaced, moved between
/// nodes; traffic policies, affinity, node ports and external IPs toggled; services
/// removed and re-added), each applied as an incremental update to a real kernel: the
/// kernel accepts every batch (no element deleted twice, none added over a different
/// one, no chain or map deleted while in use), and what the proxier keeps equals a full
/// recomputation after every step.
#[test]
fn random_incremental_updates_are_accepted_and_equal_a_full_recomputation() {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    use proxy::{
        Endpoint, Protocol, Service as ProxyService, ServicePort, ServiceType, TargetPort,
        TrafficPolicy,
    };

    assert_root();
    let mut ns = Namespaces::default();
    let node = ns.make("px", "node");
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    // A small linear congruential generator: the same walk every run.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % n
    };
    let ports = Arc::new(BTreeMap::from([
        (("http".to_owned(), Protocol::Tcp), 8080),
        (("dns".to_owned(), Protocol::Udp), 5353),
    ]));
    let endpoint = |a: u64, node: u64| Endpoint {
        address: if a.is_multiple_of(7) {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, a as u16 + 1))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 244, (a / 200) as u8, (a % 200) as u8 + 1))
        },
        ready: !a.is_multiple_of(11),
        serving: true,
        terminating: a.is_multiple_of(11),
        node_name: Some(format!("node-{node}").into()),
        ports: Arc::clone(&ports),
        hints: None,
    };
    let service = |i: u64, next: &mut dyn FnMut(u64) -> u64| {
        let n = next(6);
        let endpoints = (0..n).map(|_| endpoint(next(400), next(3))).collect();
        let node_port = (next(2) == 0).then_some(30000 + i as u16);
        ProxyService {
            key: ServiceKey::new("default", format!("s{i}")),
            ty: if node_port.is_some() {
                ServiceType::NodePort
            } else {
                ServiceType::ClusterIp
            },
            cluster_ips: vec![
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, i as u8 + 1)),
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, i as u16 + 1)),
            ],
            // Conflicting claims (two services, one external IP and port) are resolved
            // by order ("the first keeps it"), which a full recomputation cannot
            // reproduce: each service has its own here, conflicts come at the end.
            external_ips: if next(3) == 0 {
                vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8 + 1))]
            } else {
                vec![]
            },
            load_balancer_ips: vec![],
            ports: vec![
                ServicePort {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 80,
                    node_port,
                    target_port: TargetPort::Number(8080),
                },
                ServicePort {
                    name: "dns".into(),
                    protocol: Protocol::Udp,
                    port: 53,
                    node_port: None,
                    target_port: TargetPort::Number(5353),
                },
            ],
            affinity_timeout: [None, None, Some(60), Some(10800)][next(4) as usize],
            external_traffic_policy: if next(2) == 0 {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            internal_traffic_policy: if next(4) == 0 {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            health_check_node_port: None,
            publish_not_ready: false,
            endpoints,
        }
    };
    let mut view = View::default();
    for i in 0..20 {
        let s = service(i, &mut next);
        view.services.insert(s.key.clone(), s);
    }
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    proxier.sync(desired(&view, &this_node)).unwrap();
    for step in 0..300 {
        let i = next(20);
        let key = ServiceKey::new("default", format!("s{i}"));
        match next(6) {
            // Replace one endpoint, or add one, or remove one.
            0..=2 => {
                if let Some(s) = view.services.get_mut(&key) {
                    match next(3) {
                        0 if !s.endpoints.is_empty() => {
                            let at = next(s.endpoints.len() as u64) as usize;
                            s.endpoints[at] = endpoint(next(400), next(3));
                        }
                        1 => s.endpoints.push(endpoint(next(400), next(3))),
                        _ if !s.endpoints.is_empty() => {
                            let at = next(s.endpoints.len() as u64) as usize;
                            s.endpoints.remove(at);
                        }
                        _ => {}
                    }
                }
            }
            // A new version of the service (policies, affinity, ports, addresses).
            3 | 4 => {
                let s = service(i, &mut next);
                view.services.insert(key.clone(), s);
            }
            // Gone.
            _ => {
                view.services.remove(&key);
            }
        }
        let report = proxier
            .update(&view, &this_node, &BTreeSet::from([key.clone()]))
            .unwrap_or_else(|e| panic!("step {step}, {key:?}: {e}"));
        assert!(!report.full);
        assert_eq!(
            proxier.applied().unwrap(),
            &desired(&view, &this_node),
            "step {step}, {key:?}"
        );
    }
    // Conflicting claims: the kernel still accepts every batch.
    for i in 0..6 {
        let key = ServiceKey::new("default", format!("s{i}"));
        let mut s = service(i, &mut next);
        s.external_ips = vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100))];
        view.services.insert(key.clone(), s);
        proxier
            .update(&view, &this_node, &BTreeSet::from([key]))
            .unwrap();
    }
    for i in 0..6 {
        let key = ServiceKey::new("default", format!("s{i}"));
        view.services.remove(&key);
        proxier
            .update(&view, &this_node, &BTreeSet::from([key]))
            .unwrap();
    }
    assert_eq!(proxier.applied().unwrap(), &desired(&view, &this_node));
    // And a full diff from there to nothing and back is accepted too.
    proxier.sync(desired(&View::default(), &this_node)).unwrap();
    proxier.sync(desired(&view, &this_node)).unwrap();
}

/// A ClusterIP service with `sessionAffinity: ClientIP` (10.96.0.40:80 → 8080).
fn sticky(name: &str, cluster_ip: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": cluster_ip, "sessionAffinity": "ClientIP",
                 "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

/// The elements of the proxy's `affinity` map in `ns`, read over netlink.
fn affinity_entries(ns: &str) -> Vec<netlink::nft::SetElement> {
    let view = View::build(&[sticky("x", "10.96.0.1")], &[]).0;
    let rules = desired(&view, &Node::default());
    let set = rules.families[0]
        .set(proxy::names::AFFINITY)
        .unwrap()
        .set
        .clone();
    NftSocket::new_in(ns)
        .unwrap()
        .elements(&set)
        .unwrap()
        .unwrap_or_default()
}

#[test]
fn affinity_survives_a_restart_and_follows_its_endpoints() {
    assert_root();
    let mut ns = Namespaces::default();
    let node = ns.make("px", "node");
    let pod1 = ns.make("px", "pod1");
    let pod2 = ns.make("px", "pod2");
    let client = ns.make("px", "client");
    ip(&node, "link set lo up");
    wire(&node, &pod1, "veth1", "10.244.1.2", "10.244.1.1");
    wire(&node, &pod2, "veth2", "10.244.2.2", "10.244.2.1");
    wire(&node, &client, "veth3", "10.244.3.2", "10.244.3.1");
    netlink::sysctl::set_in(&node, "net.ipv4.ip_forward", "1").unwrap();
    serve(&pod1, "pod1");
    serve(&pod2, "pod2");
    let services = [sticky("web", "10.96.0.40")];
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let view = |addrs: &[&str]| View::build(&services, &[slice("web", addrs)]).0;
    let both = view(&["10.244.1.2", "10.244.2.2"]);
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    proxier.sync(desired(&both, &this_node)).unwrap();

    // The client sticks to one endpoint; the pick is recorded once, with the timeout.
    let answers = connect(&client, "10.96.0.40:80", 10).unwrap();
    let first = answers[0].clone();
    assert!(answers.iter().all(|a| *a == first), "{answers:?}");
    let entries = affinity_entries(&node);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].timeout, Some(Duration::from_secs(600)));
    assert!(entries[0].expires.unwrap() > Duration::from_secs(590));

    // A new proxier (an agent restarted) replaces the tables and keeps the entry,
    // with the time it had left: the client still goes where it went.
    let mut restarted = Proxier::new(NftSocket::new_in(&node).unwrap());
    assert!(restarted.sync(desired(&both, &this_node)).unwrap().full);
    let kept = affinity_entries(&node);
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].key, entries[0].key);
    assert_eq!(kept[0].data, entries[0].data);
    assert!(kept[0].expires <= entries[0].expires);
    let answers = connect(&client, "10.96.0.40:80", 10).unwrap();
    assert!(answers.iter().all(|a| *a == first), "{answers:?}");

    // Its endpoint goes: the entry goes with it, the client moves to the other one
    // and sticks there.
    let other = if first == "pod1" { "pod2" } else { "pod1" };
    let left = if other == "pod1" {
        "10.244.1.2"
    } else {
        "10.244.2.2"
    };
    let changed = BTreeSet::from([ServiceKey::new("default", "web")]);
    restarted
        .update(&view(&[left]), &this_node, &changed)
        .unwrap();
    let answers = connect(&client, "10.96.0.40:80", 10).unwrap();
    assert!(answers.iter().all(|a| a == other), "{answers:?}");
    // Both endpoints again: the client stays with the one it has now.
    restarted.update(&both, &this_node, &changed).unwrap();
    let answers = connect(&client, "10.96.0.40:80", 10).unwrap();
    assert!(answers.iter().all(|a| a == other), "{answers:?}");

    // Affinity turned off: the entries go, connections are balanced again.
    let plain = [service("web", "10.96.0.40")];
    let (unsticky, _) = View::build(&plain, &[slice("web", &["10.244.1.2", "10.244.2.2"])]);
    restarted.update(&unsticky, &this_node, &changed).unwrap();
    assert!(affinity_entries(&node).is_empty());
    let answers = connect(&client, "10.96.0.40:80", 40).unwrap();
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen.len(), 2, "{answers:?}");
}

#[test]
fn a_connection_mark_set_by_someone_else_is_kept_and_services_still_answer() {
    assert_root();
    let mut ns = Namespaces::default();
    let node = ns.make("px", "node");
    let pod1 = ns.make("px", "pod1");
    let pod2 = ns.make("px", "pod2");
    let client = ns.make("px", "client");
    ip(&node, "link set lo up");
    wire(&node, &pod1, "veth1", "10.244.1.2", "10.244.1.1");
    wire(&node, &pod2, "veth2", "10.244.2.2", "10.244.2.1");
    wire(&node, &client, "veth3", "10.244.3.2", "10.244.3.1");
    netlink::sysctl::set_in(&node, "net.ipv4.ip_forward", "1").unwrap();
    serve(&pod1, "pod1");
    serve(&pod2, "pod2");
    let services = [service("web", "10.96.0.50"), sticky("sticky", "10.96.0.51")];
    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let slices = [
        slice("web", &["10.244.1.2", "10.244.2.2"]),
        slice("sticky", &["10.244.1.2", "10.244.2.2"]),
    ];
    let (view, _) = View::build(&services, &slices);
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    proxier.sync(desired(&view, &this_node)).unwrap();
    // Someone else's table marks the client's new connections before DNAT (connmark
    // for policy routing, say), and counts, after DNAT, the connections by mark.
    let foreign = r#"table ip someone {
        chain tag { type filter hook prerouting priority mangle;
            ip saddr 10.244.3.2 ct state new ct mark set 0x7; }
        chain marked { type filter hook forward priority 10; ct state new ct mark 0x7 counter; }
        chain unmarked { type filter hook forward priority 11; ct state new ct mark 0x0 counter; }
    }"#;
    nft_f(&node, foreign);
    // Marked: still balanced over both endpoints (the class found by trying each)...
    let answers = connect(&client, "10.96.0.50:80", 40).unwrap();
    let seen: BTreeSet<&str> = answers.iter().map(String::as_str).collect();
    assert_eq!(seen.len(), 2, "{answers:?}");
    // ... sticky where it should be ...
    let answers = connect(&client, "10.96.0.51:80", 10).unwrap();
    assert!(answers.iter().all(|a| *a == answers[0]), "{answers:?}");
    // ... and the mark is still the one it was given.
    let count = nft(&node, &["list", "chain", "ip", "someone", "marked"]);
    assert!(count.contains("packets 50 "), "{count}");
    // Unmarked connections (another client) go through the connection mark and
    // leave it at 0, as they found it.
    let answers = connect(&pod1, "10.96.0.50:80", 20).unwrap();
    assert_eq!(answers.len(), 20);
    let zero = nft(&node, &["list", "chain", "ip", "someone", "unmarked"]);
    assert!(zero.contains("packets 20 "), "{zero}");
    let count = nft(&node, &["list", "chain", "ip", "someone", "marked"]);
    assert!(count.contains("packets 50 "), "{count}");
}

/// `nft -f -` with `ruleset` in `ns`.
#[allow(clippy::disallowed_methods)] // a test playing someone else's firewall
fn nft_f(ns: &str, ruleset: &str) {
    let ruleset = ruleset.to_owned();
    let out = netns::run_in(ns, move || {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
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
