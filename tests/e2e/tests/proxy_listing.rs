//! The distribution's nft lists a node's whole ruleset: with every table kubewire
//! loads (the service proxy's, the agent's masquerade table, the CNI plugin's hostPort
//! table) holding 10,000 Services × 10 endpoints, with and without session affinity,
//! `nft list ruleset` and `nft --json list ruleset` exit 0 and name every kubewire
//! table, every rule with a comment saying what it is for. nft 1.0.6 (Debian 12) is
//! the oldest supported. Needs root; fails, never skips.

#![allow(clippy::disallowed_methods)] // runs nft inside the node, as an operator would

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;

use cni::hostport::Binding;
use cni::spec::Attachment;
use e2e::TestNetns;
use netlink::nft::NftSocket;
use proxy::{
    Endpoint, Node, Protocol, Proxier, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, desired,
};

const SERVICES: u32 = 10_000;
const ENDPOINTS: u32 = 10;

/// The one warning nft 1.0.6 gives on stderr for `--json`: it has no JSON form for
/// `update @map { key : value }` (the proxy's affinity record), which it prints as a
/// string instead.
const JSON_WARNING: &str = "warning: stmt ops map have no json callback";

/// `SERVICES` ClusterIP services with `ENDPOINTS` endpoints each, spread over 1,000
/// nodes; every `affinity_every`-th service (if any) with `sessionAffinity: ClientIP`
/// and one of three timeouts; every 100th a LoadBalancer (node port and
/// load-balancer address) with `externalTrafficPolicy: Local`.
fn view(affinity_every: Option<u32>) -> View {
    let addr = |base: Ipv4Addr, n: u32| IpAddr::V4(Ipv4Addr::from(u32::from(base) + n));
    let ports = Arc::new(BTreeMap::from([(("http".to_owned(), Protocol::Tcp), 8080)]));
    let mut view = View::default();
    for i in 0..SERVICES {
        let key = ServiceKey::new("default", format!("s{i}"));
        let endpoints = (0..ENDPOINTS)
            .map(|j| Endpoint {
                address: addr(Ipv4Addr::new(10, 244, 0, 0), i * ENDPOINTS + j),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some(format!("node-{}", (i * ENDPOINTS + j) % 1000).into()),
                ports: Arc::clone(&ports),
                hints: None,
            })
            .collect();
        let special = i % 100 == 0;
        let affinity_timeout =
            affinity_every.and_then(|k| (i % k == 0).then_some(60 * (1 + i % 3)));
        let svc = Service {
            key: key.clone(),
            ty: if special {
                ServiceType::LoadBalancer
            } else {
                ServiceType::ClusterIp
            },
            cluster_ips: vec![addr(Ipv4Addr::new(10, 96, 0, 0), i)],
            external_ips: vec![],
            load_balancer_ips: if special {
                vec![addr(Ipv4Addr::new(198, 18, 1, 0), i / 100)]
            } else {
                vec![]
            },
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: special.then_some(30000 + (i / 100) as u16),
            }],
            affinity_timeout,
            external_traffic_policy: if special {
                TrafficPolicy::Local
            } else {
                TrafficPolicy::Cluster
            },
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            publish_not_ready: false,
            endpoints,
        };
        view.services.insert(key, svc);
    }
    view
}

/// `nft ARGS` in `ns`: stdout and stderr; fails on a non-zero exit.
fn nft(ns: &str, args: &[&str]) -> (String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = args.join(" ");
    let out = netlink::netns::run_in(ns, move || Command::new("nft").args(&args).output())
        .unwrap()
        .expect("nft runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "nft {shown} failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

fn listed_with_every_table(affinity_every: Option<u32>) {
    let node = TestNetns::new("listing");
    let this_node = Node {
        name: "node-0".into(),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
        ],
        node_ips: vec!["198.18.0.10".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        zone: None,
    };
    let view = view(affinity_every);
    let rules = desired(&view, &this_node);
    if affinity_every.is_some() {
        let f = &rules.families[0];
        assert_eq!(
            f.affinity_sets.len(),
            6,
            "three timeouts, addresses and node ports"
        );
    }
    let mut proxier = Proxier::new(NftSocket::new_in(node.name()).unwrap());
    proxier.sync(rules).unwrap();
    // The agent's masquerade table and the plugin's hostPort table, as they make them.
    let mut socket = NftSocket::new_in(node.name()).unwrap();
    socket
        .apply(&agent::masquerade::batch(&this_node.cluster_cidrs))
        .unwrap();
    let binding = Binding {
        attachment: Attachment {
            container_id: "c0".into(),
            ifname: "eth0".into(),
        },
        protocol: "tcp".into(),
        host_port: 8080,
        host_ip: None,
        container_ip: "10.244.0.5".parse().unwrap(),
        container_port: 80,
    };
    socket.apply(&cni::hostport::batch(&[binding])).unwrap();

    let tables = [
        ("ip", proxy::TABLE),
        ("ip6", proxy::TABLE),
        ("ip", agent::masquerade::TABLE),
        ("ip6", agent::masquerade::TABLE),
        ("ip", cni::hostport::TABLE),
        ("ip6", cni::hostport::TABLE),
    ];
    let (text, stderr) = nft(node.name(), &["list", "ruleset"]);
    assert!(stderr.is_empty(), "nft list ruleset: {stderr}");
    for (family, table) in tables {
        assert!(
            text.contains(&format!("table {family} {table} {{")),
            "table {family} {table} not in `nft list ruleset`"
        );
    }
    assert!(
        text.contains("10.96.39.15 . tcp . 80 : 0x"),
        "a service in service-ips"
    );
    // Every rule of every table has a comment saying what it is for.
    let mut in_chain = false;
    for line in text.lines().map(str::trim) {
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
    let (json, stderr) = nft(node.name(), &["--json", "list", "ruleset"]);
    assert!(
        stderr.lines().all(|l| l == JSON_WARNING),
        "nft --json list ruleset: {stderr}"
    );
    let json: serde_json::Value = serde_json::from_str(&json).expect("nft prints JSON");
    let objects = json["nftables"].as_array().unwrap();
    for (family, table) in tables {
        assert!(
            objects
                .iter()
                .any(|o| o["table"]["family"] == family && o["table"]["name"] == table),
            "table {family} {table} not in `nft --json list ruleset`"
        );
    }
    let service_ips = objects
        .iter()
        .find(|o| o["map"]["family"] == "ip" && o["map"]["name"] == "service-ips")
        .expect("the map of service addresses");
    assert_eq!(
        service_ips["map"]["elem"].as_array().unwrap().len(),
        SERVICES as usize + (SERVICES / 100) as usize,
        "every ClusterIP and load-balancer address"
    );
    // Each table alone too, as `nft list table` (what knftables-style tools run).
    for (family, table) in tables {
        nft(node.name(), &["list", "table", family, table]);
    }
}

#[test]
fn the_whole_ruleset_lists_with_10000_services() {
    listed_with_every_table(None);
}

#[test]
fn the_whole_ruleset_lists_with_10000_services_some_with_affinity() {
    listed_with_every_table(Some(10));
}
