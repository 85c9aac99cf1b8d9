use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde_json::json;

use crate::admin::{Action, AdminPeer, AdminPolicy, AdminRule, PodSet, Tier};
use crate::compile::{self, Desired};
use crate::eval::{self, Connection};
use crate::model::{
    Cluster, Labels, NamedPort, NodeInfo, Peer, Pod, Policy, PortRef, PortRule, Protocol, Rule,
    Selector,
};

/// xorshift64*: random but repeatable clusters, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn random_selector(rng: &mut Rng, key: &str, values: &[&str]) -> LabelSelector {
    match rng.below(5) {
        0 => LabelSelector::default(),
        1 | 2 => LabelSelector {
            match_labels: Some(map(&[(key, *rng.pick(values))])),
            match_expressions: None,
        },
        _ => {
            let operator = *rng.pick(&["In", "NotIn", "Exists", "DoesNotExist"]);
            let values = matches!(operator, "In" | "NotIn")
                .then(|| vec![rng.pick(values).to_string(), rng.pick(values).to_string()]);
            LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: key.into(),
                    operator: operator.into(),
                    values,
                }]),
            }
        }
    }
}

const NAMESPACES: &[&str] = &["x", "y", "z"];
const APPS: &[&str] = &["a", "b", "c"];
const TEAMS: &[&str] = &["red", "blue"];
const NODES: &[&str] = &["node-1", "node-2"];
const PORTS: &[u16] = &[80, 81, 82, 443, 8080];

fn random_cluster(rng: &mut Rng) -> Cluster {
    let mut c = Cluster::default();
    for ns in NAMESPACES {
        let mut l = labels(&[("kubernetes.io/metadata.name", ns)]);
        if rng.chance(70) {
            l.insert("team".into(), rng.pick(TEAMS).to_string());
        }
        c.namespaces.insert(ns.to_string(), l);
    }
    let pods = 4 + rng.below(8);
    for i in 0..pods {
        let ns = *rng.pick(NAMESPACES);
        let mut ips: Vec<IpAddr> = vec![format!("10.244.{}.{}", i % 2, 10 + i).parse().unwrap()];
        if rng.chance(30) {
            ips.push(format!("fd00::{:x}", 10 + i).parse().unwrap());
        }
        let mut ports = vec![NamedPort {
            name: "serve".into(),
            protocol: *rng.pick(&[Protocol::Tcp, Protocol::Udp]),
            port: *rng.pick(PORTS),
        }];
        if rng.chance(50) {
            ports.push(NamedPort {
                name: "other".into(),
                protocol: Protocol::Tcp,
                port: *rng.pick(PORTS),
            });
        }
        let pod = Pod {
            namespace: ns.into(),
            name: format!("p{i}"),
            labels: labels(&[("app", *rng.pick(APPS))]),
            ips,
            node: rng.pick(NODES).to_string(),
            ports,
            capture: None,
        };
        c.set_pod(&format!("{ns}/p{i}"), Some(pod));
    }
    for i in 0..1 + rng.below(5) {
        let ns = *rng.pick(NAMESPACES);
        let rules = |rng: &mut Rng| -> Vec<Rule> {
            (0..rng.below(3))
                .map(|_| Rule {
                    peers: (0..rng.below(3)).map(|_| random_peer(rng)).collect(),
                    ports: (0..rng.below(3)).map(|_| random_port(rng)).collect(),
                })
                .collect()
        };
        let ingress = rng.chance(70).then(|| rules(rng));
        let egress = rng.chance(50).then(|| rules(rng));
        c.policies.insert(
            format!("{ns}/np{i}"),
            Policy {
                namespace: ns.into(),
                name: format!("np{i}"),
                selector: random_selector(rng, "app", APPS).into(),
                ingress,
                egress,
            },
        );
    }
    // Nodes (ClusterNetworkPolicy's `nodes` peers), one address each.
    for (i, node) in NODES.iter().enumerate() {
        c.nodes.insert(
            node.to_string(),
            NodeInfo {
                labels: labels(&[("role", if i == 0 { "a" } else { "b" })]),
                ips: vec![format!("192.168.0.{}", i + 1).parse().unwrap()],
            },
        );
    }
    // The admin tiers, in half the clusters.
    if rng.chance(50) {
        for i in 0..1 + rng.below(3) {
            let p = random_admin_policy(rng, &format!("cnp{i}"));
            c.admin.insert(p.name.clone(), p);
        }
    }
    c
}

fn random_pod_set(rng: &mut Rng) -> PodSet {
    PodSet {
        namespaces: random_selector(rng, "team", TEAMS).into(),
        pods: if rng.chance(50) {
            random_selector(rng, "app", APPS).into()
        } else {
            Selector::default()
        },
    }
}

fn random_admin_policy(rng: &mut Rng, name: &str) -> AdminPolicy {
    let rules = |rng: &mut Rng| -> Vec<AdminRule> {
        (0..rng.below(5))
            .map(|i| AdminRule {
                name: format!("r{i}"),
                action: *rng.pick(&[Action::Accept, Action::Deny, Action::Pass]),
                peers: (0..1 + rng.below(2))
                    .map(|_| match rng.below(7) {
                        0..=2 => AdminPeer::Pods(random_pod_set(rng)),
                        6 => AdminPeer::Nodes(random_selector(rng, "role", &["a", "b"]).into()),
                        3 | 4 => AdminPeer::Networks(
                            rng.pick(&[
                                &["0.0.0.0/0", "::/0"][..],
                                &["10.244.0.0/24"][..],
                                &["10.244.1.0/25", "198.51.100.0/24"][..],
                                &["10.244.0.12/32", "fd00::/64"][..],
                            ])
                            .iter()
                            .map(|n| n.parse().unwrap())
                            .collect(),
                        ),
                        _ => AdminPeer::Everyone,
                    })
                    .collect(),
                protocols: rng
                    .chance(60)
                    .then(|| (0..1 + rng.below(3)).map(|_| random_port(rng)).collect()),
            })
            .collect()
    };
    AdminPolicy {
        name: name.into(),
        tier: *rng.pick(&[Tier::Admin, Tier::Baseline]),
        priority: *rng.pick(&[1, 5, 5, 10]),
        subject: random_pod_set(rng),
        ingress: rules(rng),
        egress: rules(rng),
    }
}

fn random_peer(rng: &mut Rng) -> Peer {
    match rng.below(4) {
        0 => Peer::Pods {
            namespaces: None,
            pods: Some(random_selector(rng, "app", APPS).into()),
        },
        1 => Peer::Pods {
            namespaces: Some(random_selector(rng, "team", TEAMS).into()),
            pods: None,
        },
        2 => Peer::Pods {
            namespaces: Some(random_selector(rng, "team", TEAMS).into()),
            pods: Some(random_selector(rng, "app", APPS).into()),
        },
        _ => {
            let (cidr, except): (&str, &[&str]) = *rng.pick(&[
                ("10.244.0.0/16", &["10.244.1.0/24"][..]),
                ("10.244.0.0/24", &[][..]),
                ("10.244.0.0/28", &["10.244.0.12/30", "10.244.0.14/32"][..]),
                ("0.0.0.0/0", &["10.244.0.0/24"][..]),
                ("fd00::/64", &["fd00::10/126"][..]),
                ("198.51.100.0/24", &[][..]),
            ]);
            Peer::Block {
                cidr: cidr.parse().unwrap(),
                except: except.iter().map(|e| e.parse::<IpNet>().unwrap()).collect(),
            }
        }
    }
}

fn random_port(rng: &mut Rng) -> PortRule {
    let protocol = *rng.pick(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp]);
    let port = match rng.below(5) {
        0 => PortRef::All,
        1 | 2 => {
            let p = *rng.pick(PORTS);
            PortRef::Range(p, p)
        }
        3 => {
            let p = *rng.pick(PORTS);
            PortRef::Range(p, p + rng.below(400) as u16)
        }
        _ => PortRef::Named(rng.pick(&["serve", "other", "missing"]).to_string()),
    };
    PortRule { protocol, port }
}

/// The verdict of the compiled sets: the egress part on the source's node, the
/// ingress part on the destination's.
fn compiled(c: &Cluster, nodes: &BTreeMap<&str, Desired>, conn: &Connection) -> bool {
    let egress = c.pod_by_ip(conn.src).is_none_or(|p| {
        nodes[p.node.as_str()]
            .egress
            .admits(conn.src, conn.dst, conn.proto, conn.port)
    });
    let ingress = c.pod_by_ip(conn.dst).is_none_or(|p| {
        nodes[p.node.as_str()]
            .ingress
            .admits(conn.dst, conn.src, conn.proto, conn.port)
    });
    egress && ingress
}

#[test]
fn compiled_sets_agree_with_the_reference_on_random_clusters() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let outside: Vec<IpAddr> = [
        "198.51.100.7",
        "10.244.1.200",
        "8.8.8.8",
        "fd00::99",
        "192.168.0.1",
        "192.168.0.2",
    ]
    .iter()
    .map(|a| a.parse().unwrap())
    .collect();
    let mut checked = 0usize;
    let mut denied = 0usize;
    // Nodes whose Admin tier accepts, denies, and whose Baseline tier denies somewhere.
    let mut tiers = [0usize; 3];
    for round in 0..400 {
        let c = random_cluster(&mut rng);
        let nodes: BTreeMap<&str, Desired> = NODES
            .iter()
            .map(|n| (*n, compile::desired(&c, n)))
            .collect();
        for d in nodes.values() {
            for sets in [&d.ingress, &d.egress] {
                tiers[0] += usize::from(!sets.admin_accept.is_empty());
                tiers[1] += usize::from(!sets.admin_deny.is_empty());
                tiers[2] += usize::from(!sets.baseline_deny.is_empty());
            }
        }
        // The kernel refuses overlapping range elements: each set's must be disjoint
        // (and the Admin tier's two sets together, as the table's order between them
        // must not matter).
        for d in nodes.values() {
            for sets in [&d.ingress, &d.egress] {
                let admin: BTreeSet<_> = sets.admin_accept.union(&sets.admin_deny).collect();
                for ranges in [
                    sets.ranges.iter().collect::<Vec<_>>(),
                    admin.into_iter().collect(),
                    sets.baseline_deny.iter().collect(),
                ] {
                    for (i, a) in ranges.iter().enumerate() {
                        for b in &ranges[i + 1..] {
                            let overlap = a.local == b.local
                                && a.peer.0 <= b.peer.1
                                && b.peer.0 <= a.peer.1
                                && a.proto.0 <= b.proto.1
                                && b.proto.0 <= a.proto.1
                                && a.port.0 <= b.port.1
                                && b.port.0 <= a.port.1;
                            assert!(!overlap, "round {round}: {a:?} overlaps {b:?}");
                        }
                    }
                }
            }
        }
        let addrs: Vec<IpAddr> = c
            .pods
            .values()
            .flat_map(|p| p.ips.clone())
            .chain(outside.iter().copied())
            .collect();
        for &src in &addrs {
            for &dst in &addrs {
                if src.is_ipv4() != dst.is_ipv4() || src == dst && c.pod_by_ip(src).is_none() {
                    continue;
                }
                for (proto, ports) in [
                    (6u8, PORTS),
                    (17, PORTS),
                    (132, &PORTS[..2]),
                    (1, &[0u16][..]),
                ] {
                    for &port in ports {
                        let conn = Connection {
                            src,
                            dst,
                            proto,
                            port: eval::has_ports(proto).then_some(port),
                        };
                        let want = eval::allows(&c, &conn);
                        let got = compiled(&c, &nodes, &conn);
                        assert_eq!(
                            got, want,
                            "round {round}: {conn:?}\npolicies: {:#?}\nadmin: {:#?}\npods: {:#?}\nnodes: {nodes:#?}",
                            c.policies, c.admin, c.pods
                        );
                        checked += 1;
                        denied += usize::from(!want);
                    }
                }
            }
        }
    }
    // The random clusters exercised both verdicts, and every tier.
    assert!(checked > 100_000, "{checked}");
    assert!(tiers.iter().all(|n| *n > 50), "{tiers:?}");
    assert!(
        denied > checked / 20 && denied < checked * 19 / 20,
        "{denied} of {checked}"
    );
}

fn pod(ns: &str, name: &str, app: &str, ip: &str, node: &str) -> Pod {
    Pod {
        namespace: ns.into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ips: vec![ip.parse().unwrap()],
        node: node.into(),
        ports: vec![NamedPort {
            name: "serve-80-tcp".into(),
            protocol: Protocol::Tcp,
            port: 80,
        }],
        capture: None,
    }
}

fn policy(json: serde_json::Value) -> (Policy, Vec<String>) {
    Policy::from_api(&serde_json::from_value(json).unwrap())
}

#[test]
fn policy_types_default_as_the_api_server_defaults_them() {
    let (p, problems) = policy(json!({
        "metadata": {"namespace": "x", "name": "deny"},
        "spec": {"podSelector": {}}
    }));
    assert!(problems.is_empty());
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, None);
    let (p, _) = policy(json!({
        "metadata": {"namespace": "x", "name": "e"},
        "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}
    }));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(
        p.egress,
        Some(vec![Rule {
            peers: vec![],
            ports: vec![PortRule {
                protocol: Protocol::Udp,
                port: PortRef::Range(53, 53)
            }],
        }])
    );
}

#[test]
fn unreadable_peers_and_ports_allow_less_never_more() {
    // The only peer is unreadable: the rule must not become "from everyone".
    let (p, problems) = policy(json!({
        "metadata": {"namespace": "x", "name": "bad"},
        "spec": {"podSelector": {}, "ingress": [
            {"from": [{"ipBlock": {"cidr": "not-a-cidr"}}]},
            {"ports": [{"port": 99999}]},
            {"from": [{"podSelector": {}}, {"ipBlock": {"cidr": "10.0.0.0/33"}}]}
        ]}
    }));
    assert_eq!(problems.len(), 3, "{problems:?}");
    let rules = p.ingress.unwrap();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].peers.len(), 1);
}

#[test]
fn a_named_port_no_pod_has_allows_nothing() {
    let mut c = Cluster::default();
    c.set_pod("x/a", Some(pod("x", "a", "a", "10.244.0.10", "node-1")));
    c.set_pod("x/b", Some(pod("x", "b", "b", "10.244.0.11", "node-1")));
    let (p, _) = policy(json!({
        "metadata": {"namespace": "x", "name": "named"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [
            {"ports": [{"port": "nope"}]}
        ]}
    }));
    c.policies.insert("x/named".into(), p);
    let d = compile::desired(&c, "node-1");
    let a: IpAddr = "10.244.0.10".parse().unwrap();
    assert!(d.ingress.isolated.contains(&a));
    assert_eq!(d.ingress.len(), 1, "{d:?}");
    let conn = Connection {
        src: "10.244.0.11".parse().unwrap(),
        dst: a,
        proto: 6,
        port: Some(80),
    };
    assert!(!eval::allows(&c, &conn));
}

#[test]
fn pod_peers_on_numbered_ports_are_exact_elements() {
    let mut c = Cluster::default();
    c.set_pod("x/a", Some(pod("x", "a", "a", "10.244.0.10", "node-1")));
    c.set_pod("x/b", Some(pod("x", "b", "b", "10.244.1.10", "node-2")));
    let (p, _) = policy(json!({
        "metadata": {"namespace": "x", "name": "np"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}}, "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "b"}}}],
             "ports": [{"port": 80}, {"port": "serve-80-tcp"}, {"port": 81, "endPort": 90}]}
        ]}
    }));
    c.policies.insert("x/np".into(), p);
    let d = compile::desired(&c, "node-1");
    let (a, b): (IpAddr, IpAddr) = (
        "10.244.0.10".parse().unwrap(),
        "10.244.1.10".parse().unwrap(),
    );
    assert_eq!(
        d.ingress.ports.iter().copied().collect::<Vec<_>>(),
        vec![(a, b, 6, 80)]
    );
    assert_eq!(d.ingress.ranges.len(), 1, "{:?}", d.ingress.ranges);
    // Node 2 has nothing isolated.
    assert!(compile::desired(&c, "node-2").ingress.is_empty());
}

#[test]
fn updating_a_pod_keeps_the_address_index() {
    let mut c = Cluster::default();
    let a: IpAddr = "10.244.0.10".parse().unwrap();
    c.set_pod("x/a", Some(pod("x", "a", "a", "10.244.0.10", "node-1")));
    assert!(!c.set_pod("x/a", Some(pod("x", "a", "a", "10.244.0.10", "node-1"))));
    assert!(c.set_pod("x/a", Some(pod("x", "a", "b", "10.244.0.10", "node-1"))));
    assert_eq!(c.pod_by_ip(a).unwrap().labels["app"], "b");
    // The address moved to another pod before the old one's delete arrived.
    c.set_pod("x/n", Some(pod("x", "n", "c", "10.244.0.10", "node-1")));
    c.set_pod("x/a", None);
    assert_eq!(c.pod_by_ip(a).unwrap().name, "n");
}

#[test]
fn narrower_sees_new_isolation_and_lost_elements_only() {
    let a: IpAddr = "10.244.0.10".parse().unwrap();
    let b: IpAddr = "10.244.1.10".parse().unwrap();
    let mut old = Desired::default();
    old.ingress.isolated.insert(a);
    old.ingress.ports.insert((a, b, 6, 80));
    let mut wider = old.clone();
    wider.ingress.peers.insert((a, b));
    assert!(!crate::cut::narrower(&old, &wider));
    assert!(crate::cut::narrower(&wider, &old));
    let mut isolated = old.clone();
    isolated.egress.isolated.insert(a);
    assert!(crate::cut::narrower(&old, &isolated));
    // A connection through a Service is judged on its endpoint's port.
    assert!(crate::cut::allows_flow(&old, b, a, 6, Some(80)));
    assert!(!crate::cut::allows_flow(&old, b, a, 6, Some(81)));
    assert!(!crate::cut::allows_flow(&old, b, a, 1, None));
    assert!(crate::cut::allows_flow(&old, a, b, 1, None));
}

#[test]
fn the_plugins_addresses_stand_until_the_status_says_them() {
    let mut c = Cluster::default();
    let new: IpAddr = "10.244.0.20".parse().unwrap();
    let mut p = pod("x", "a", "a", "10.244.0.10", "node-1");
    // A new sandbox: the status still has the old sandbox's address.
    c.set_pod("x/a", Some(p.clone()));
    assert!(!c.has_pod_with("x/a", &[new]));
    assert!(c.hint("x/a", vec![new]));
    assert!(c.has_pod_with("x/a", &[new]));
    assert_eq!(c.pod_by_ip(new).unwrap().name, "a");
    assert!(c.pod_by_ip("10.244.0.10".parse().unwrap()).is_none());
    // A status update that does not say it yet changes nothing.
    c.set_pod("x/a", Some(p.clone()));
    assert!(c.has_pod_with("x/a", &[new]));
    // Once it does, the hint is gone: a later status is taken as it is.
    p.ips = vec![new];
    c.set_pod("x/a", Some(p.clone()));
    p.ips = vec!["10.244.0.30".parse().unwrap()];
    c.set_pod("x/a", Some(p));
    assert!(!c.has_pod_with("x/a", &[new]));
    // A pod the API has not shown yet keeps its hint for when it comes, or drops it.
    assert!(!c.hint("x/b", vec![new]));
    assert!(!c.unhint("x/b"));
    c.set_pod(
        "x/b",
        Some(Pod {
            ips: vec![],
            ..pod("x", "b", "b", "10.0.0.1", "node-1")
        }),
    );
    assert!(!c.has_pod_with("x/b", &[new]));
}

/// The marks a change leaves and `compile::update` bring the verdicts to what a full
/// computation gives, change after change (the agent's incremental path, without the
/// kernel: `NodePolicy` does the same bookkeeping around an enforcer).
#[test]
fn incremental_updates_equal_a_full_computation() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for round in 0..60 {
        let mut c = random_cluster(&mut rng);
        let node = *rng.pick(NODES);
        let mut desired = compile::desired(&c, node);
        for step in 0..25 {
            let mut pods = std::collections::BTreeSet::new();
            let mut addrs = std::collections::BTreeSet::new();
            let old_of =
                |c: &Cluster, key: &str, addrs: &mut std::collections::BTreeSet<IpAddr>| {
                    let old = c.pods.get(key).cloned();
                    if let Some(o) = old.as_ref().filter(|o| o.node == node) {
                        addrs.extend(o.ips.iter().copied());
                    }
                    old
                };
            match rng.below(6) {
                // A ClusterNetworkPolicy is added, replaced or removed: its subjects,
                // before and after.
                5 => {
                    let name = format!("cnp{}", rng.below(3));
                    let new = (!rng.chance(25)).then(|| random_admin_policy(&mut rng, &name));
                    let old = match &new {
                        Some(p) => c.admin.insert(name.clone(), p.clone()),
                        None => c.admin.remove(&name),
                    };
                    for p in old.iter().chain(new.iter()) {
                        pods.extend(c.admin_subjects(p));
                    }
                }
                // A pod's labels change.
                0 | 1 => {
                    let keys: Vec<String> = c.pods.keys().cloned().collect();
                    let key = rng.pick(&keys).clone();
                    let old = old_of(&c, &key, &mut addrs);
                    let mut p = c.pods[&key].clone();
                    p.labels.insert("app".into(), rng.pick(APPS).to_string());
                    c.set_pod(&key, Some(p));
                    let new = c.pods.get(&key).cloned();
                    pods.extend(c.affected_by_pod(&key, old.as_ref(), new.as_ref()));
                }
                // A pod goes away.
                2 => {
                    let keys: Vec<String> = c.pods.keys().cloned().collect();
                    let key = rng.pick(&keys).clone();
                    let old = old_of(&c, &key, &mut addrs);
                    c.set_pod(&key, None);
                    pods.extend(c.affected_by_pod(&key, old.as_ref(), None));
                }
                // A policy is replaced by another random one, or removed.
                3 | 4 => {
                    let other = random_cluster(&mut rng);
                    let key = rng
                        .pick(&c.policies.keys().cloned().collect::<Vec<_>>())
                        .clone();
                    let new = other.policies.values().next().cloned().map(|mut p| {
                        p.namespace = c.policies[&key].namespace.clone();
                        p
                    });
                    let new = if rng.chance(20) { None } else { new };
                    let old = match &new {
                        Some(p) => c.policies.insert(key.clone(), p.clone()),
                        None => c.policies.remove(&key),
                    };
                    for p in old.iter().chain(new.iter()) {
                        pods.extend(c.selected_by(p));
                    }
                }
                _ => unreachable!(),
            }
            compile::update(&c, node, &mut desired, &pods, &addrs);
            assert_eq!(
                desired,
                compile::desired(&c, node),
                "round {round} step {step}: incremental and full differ"
            );
            if c.pods.is_empty() || c.policies.is_empty() {
                break;
            }
        }
    }
}

/// In the kernel (a throwaway namespace; needs root): the first sync replaces the table,
/// a namespace's new labels are computed whole but sent as a difference, and a pod's
/// change as its own elements only.
#[test]
fn node_policy_sends_the_table_once_then_differences() {
    use netlink::nft::{Datum, Family, KeyType, NftSocket, Set};

    use crate::node::NodePolicy;
    use crate::ruleset::{Enforcer, TABLE};

    benchkit::require_root();
    let mut namespaces = benchkit::Namespaces::default();
    let ns = namespaces.make("npnode", "node");
    let mut np = NodePolicy::new("node-1", Enforcer::new(NftSocket::new_in(&ns).unwrap()));
    for name in ["x", "y"] {
        np.set_namespace(name, Some(labels(&[("kubernetes.io/metadata.name", name)])));
    }
    np.set_pod("x/a", Some(pod("x", "a", "a", "10.244.0.10", "node-1")));
    np.set_pod("y/b", Some(pod("y", "b", "b", "10.244.1.10", "node-2")));
    let (p, _) = policy(json!({
        "metadata": {"namespace": "x", "name": "from-blue"},
        "spec": {"podSelector": {}, "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}
        ]}
    }));
    np.set_policy("x/from-blue", Some(p));
    assert!(np.sync().unwrap().sync.full);

    let (a, b): (IpAddr, IpAddr) = (
        "10.244.0.10".parse().unwrap(),
        "10.244.1.10".parse().unwrap(),
    );
    let peers = Set::new(
        Family::Ip,
        TABLE,
        "ingress-peers",
        [KeyType::Ipv4Addr, KeyType::Ipv4Addr],
    );
    let listed = |ns: &str| -> Vec<Vec<Datum>> {
        NftSocket::new_in(ns)
            .unwrap()
            .elements(&peers)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| e.key)
            .collect()
    };
    assert!(listed(&ns).is_empty());

    np.set_namespace(
        "y",
        Some(labels(&[
            ("kubernetes.io/metadata.name", "y"),
            ("team", "blue"),
        ])),
    );
    let r = np.sync().unwrap();
    assert!(!r.sync.full, "{r:?}");
    let want = |a: IpAddr, b: IpAddr| match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => vec![Datum::Ipv4(a), Datum::Ipv4(b)],
        _ => unreachable!(),
    };
    assert_eq!(listed(&ns), [want(a, b)]);

    // y/b moves: one pod's elements, a difference.
    np.set_pod("y/b", Some(pod("y", "b", "b", "10.244.1.11", "node-2")));
    let r = np.sync().unwrap();
    assert!(!r.sync.full && r.narrower, "{r:?}");
    assert_eq!(listed(&ns), [want(a, "10.244.1.11".parse().unwrap())]);

    // A Baseline ClusterNetworkPolicy over 100 pods of the node: added as a difference;
    // changed, its 100 range elements would be deleted one by one (slow in the kernel's
    // interval sets), so the table is replaced whole.
    for i in 0..100 {
        let name = format!("p{i}");
        let ip = format!("10.244.0.{}", 100 + i);
        np.set_pod(
            &format!("x/{name}"),
            Some(pod("x", &name, "a", &ip, "node-1")),
        );
    }
    np.sync().unwrap();
    let baseline = |port: u16| {
        let api: crate::admin::ClusterNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "b"}, "spec": {"tier": "Baseline", "priority": 1,
            "subject": {"namespaces": {}},
            "ingress": [{"action": "Deny",
                "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}],
                "protocols": [{"tcp": {"destinationPort": {"number": port}}}]}]}
        }))
        .unwrap();
        AdminPolicy::from_api(&api).0
    };
    let deny = Set::new(
        Family::Ip,
        TABLE,
        "ingress-baseline-deny",
        [
            KeyType::Ipv4Addr,
            KeyType::Ipv4Addr,
            KeyType::InetProto,
            KeyType::InetService,
        ],
    )
    .interval();
    let ports = |ns: &str| -> Vec<Datum> {
        NftSocket::new_in(ns)
            .unwrap()
            .elements(&deny)
            .unwrap()
            .unwrap()
            .into_iter()
            .map(|e| e.key[3])
            .collect()
    };
    np.set_admin_policy("b", baseline(80));
    let r = np.sync().unwrap();
    assert!(!r.sync.full, "{r:?}");
    assert_eq!(ports(&ns), vec![Datum::Port(80); 101]);
    np.set_admin_policy("b", baseline(81));
    let r = np.sync().unwrap();
    assert!(r.sync.full, "{r:?}");
    assert_eq!(ports(&ns), vec![Datum::Port(81); 101]);
}

/// The admin tiers' conformance scenarios (network-policy-api v0.2.0's suite, its
/// topology and steps retold): four houses, two pods each serving TCP 80 (`web`) and
/// 8080, UDP 53 (`dns`) and 5353, SCTP 9003 and 9005; every verdict is asked of the
/// reference and of the compiled sets, which must agree.
mod admin_conformance {
    use super::*;

    const HOUSES: &[&str] = &["gryffindor", "slytherin", "hufflepuff", "ravenclaw"];
    const PODS: &[&str] = &[
        "harry-potter",
        "draco-malfoy",
        "cedric-diggory",
        "luna-lovegood",
    ];

    fn ns(house: &str) -> String {
        format!("network-policy-conformance-{house}")
    }

    fn houses() -> Cluster {
        let mut c = Cluster::default();
        for (h, (house, name)) in HOUSES.iter().zip(PODS).enumerate() {
            let namespace = ns(house);
            c.namespaces.insert(
                namespace.clone(),
                labels(&[
                    ("conformance-house", house),
                    ("kubernetes.io/metadata.name", &namespace),
                ]),
            );
            for (i, node) in NODES.iter().enumerate() {
                let pod = Pod {
                    namespace: namespace.clone(),
                    name: format!("{name}-{i}"),
                    labels: labels(&[("conformance-house", house)]),
                    ips: vec![format!("10.244.{h}.{}", 10 + i).parse().unwrap()],
                    node: node.to_string(),
                    ports: vec![
                        NamedPort {
                            name: "web".into(),
                            protocol: Protocol::Tcp,
                            port: 80,
                        },
                        NamedPort {
                            name: "dns".into(),
                            protocol: Protocol::Udp,
                            port: 53,
                        },
                    ],
                    capture: None,
                };
                c.set_pod(&format!("{namespace}/{name}-{i}"), Some(pod));
            }
        }
        c
    }

    fn ip(c: &Cluster, pod: &str) -> IpAddr {
        let p = c.pods.values().find(|p| p.name == pod).expect(pod);
        p.ips[0]
    }

    /// Whether `from` reaches `to` on `proto` `port`, by the reference and the compiled
    /// sets alike.
    fn reaches(c: &Cluster, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
        let conn = Connection {
            src: ip(c, from),
            dst: ip(c, to),
            proto: proto.number(),
            port: Some(port),
        };
        let nodes: BTreeMap<&str, Desired> =
            NODES.iter().map(|n| (*n, compile::desired(c, n))).collect();
        let want = eval::allows(c, &conn);
        assert_eq!(
            compiled(c, &nodes, &conn),
            want,
            "{from} -> {to} {proto:?} {port}"
        );
        want
    }

    fn apply(c: &mut Cluster, cnp: serde_json::Value) {
        let api: crate::admin::ClusterNetworkPolicy = serde_json::from_value(cnp).unwrap();
        let (policy, problems) = AdminPolicy::from_api(&api);
        assert!(problems.is_empty(), "{problems:?}");
        let policy = policy.unwrap();
        c.admin.insert(policy.name.clone(), policy);
    }

    fn house(h: &str) -> serde_json::Value {
        json!({"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": ns(h)}}})
    }

    /// The seven-rule Admin layout (Accept X, Deny X, Pass X, Deny Y@p, Pass Y@p, Accept
    /// Z@pz, Deny Z) for `direction` ("ingress" or "egress"), `xyz` the houses.
    fn seven_rules(
        direction: &str,
        [x, y, z]: [&str; 3],
        proto: &str,
        p: u16,
        pz: u16,
    ) -> serde_json::Value {
        let peers = if direction == "ingress" { "from" } else { "to" };
        let port = |n: u16| json!([{ proto: {"destinationPort": {"number": n}} }]);
        json!([
            {"name": "accept-x", "action": "Accept", peers: [house(x)]},
            {"name": "deny-x", "action": "Deny", peers: [house(x)]},
            {"name": "pass-x", "action": "Pass", peers: [house(x)]},
            {"name": "deny-y", "action": "Deny", peers: [house(y)], "protocols": port(p)},
            {"name": "pass-y", "action": "Pass", peers: [house(y)], "protocols": port(p)},
            {"name": "accept-z", "action": "Accept", peers: [house(z)], "protocols": port(pz)},
            {"name": "deny-z", "action": "Deny", peers: [house(z)]},
        ])
    }

    fn swap(c: &mut Cluster, name: &str, ingress: bool, a: usize, b: usize) {
        let p = c.admin.get_mut(name).unwrap();
        let rules = if ingress {
            &mut p.ingress
        } else {
            &mut p.egress
        };
        rules.swap(a, b);
    }

    #[test]
    fn admin_tier_ingress_rules_in_order() {
        use Protocol::Tcp;
        let mut c = houses();
        apply(
            &mut c,
            json!({"metadata": {"name": "ingress-tcp"}, "spec": {"tier": "Admin", "priority": 3,
                "subject": house("gryffindor"), "ingress": seven_rules("ingress", ["ravenclaw", "slytherin", "hufflepuff"], "tcp", 80, 80)}}),
        );
        // Accept X wins over the Deny after it.
        assert!(reaches(&c, "luna-lovegood-0", "harry-potter-0", Tcp, 80));
        assert!(reaches(&c, "luna-lovegood-1", "harry-potter-1", Tcp, 8080));
        // Z: accepted on its port, denied on the others.
        assert!(reaches(&c, "cedric-diggory-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(
            &c,
            "cedric-diggory-1",
            "harry-potter-1",
            Tcp,
            8080
        ));
        // Deny X first: denied on every port.
        swap(&mut c, "ingress-tcp", true, 0, 1);
        assert!(!reaches(&c, "luna-lovegood-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "luna-lovegood-1", "harry-potter-1", Tcp, 8080));
        // Y: denied on its port; no rule for the others: allowed.
        assert!(!reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        assert!(reaches(&c, "draco-malfoy-1", "harry-potter-1", Tcp, 8080));
        // Pass X first: no NetworkPolicy, no Baseline: allowed.
        swap(&mut c, "ingress-tcp", true, 0, 2);
        assert!(reaches(&c, "luna-lovegood-0", "harry-potter-0", Tcp, 80));
        assert!(reaches(&c, "luna-lovegood-1", "harry-potter-1", Tcp, 8080));
        // Pass Y before Deny Y.
        swap(&mut c, "ingress-tcp", true, 3, 4);
        assert!(reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        // Traffic the subject sends is not its ingress.
        assert!(reaches(&c, "harry-potter-0", "luna-lovegood-0", Tcp, 80));
    }

    #[test]
    fn admin_tier_egress_rules_in_order_udp_and_sctp() {
        use Protocol::{Sctp, Udp};
        let mut c = houses();
        apply(
            &mut c,
            json!({"metadata": {"name": "egress-udp"}, "spec": {"tier": "Admin", "priority": 7,
                "subject": house("hufflepuff"), "egress": seven_rules("egress", ["ravenclaw", "slytherin", "gryffindor"], "udp", 5353, 53)}}),
        );
        assert!(reaches(&c, "cedric-diggory-0", "luna-lovegood-0", Udp, 53));
        assert!(reaches(&c, "cedric-diggory-0", "harry-potter-1", Udp, 53));
        assert!(!reaches(
            &c,
            "cedric-diggory-1",
            "harry-potter-1",
            Udp,
            5353
        ));
        assert!(!reaches(
            &c,
            "cedric-diggory-1",
            "harry-potter-1",
            Sctp,
            9003
        ));
        swap(&mut c, "egress-udp", false, 0, 1);
        assert!(!reaches(&c, "cedric-diggory-0", "luna-lovegood-0", Udp, 53));
        assert!(!reaches(
            &c,
            "cedric-diggory-0",
            "draco-malfoy-0",
            Udp,
            5353
        ));
        assert!(reaches(&c, "cedric-diggory-1", "draco-malfoy-1", Udp, 53));
        // The destination's own ingress is not the source's egress.
        assert!(reaches(&c, "luna-lovegood-0", "cedric-diggory-0", Udp, 53));

        let mut c = houses();
        apply(
            &mut c,
            json!({"metadata": {"name": "ingress-sctp"}, "spec": {"tier": "Admin", "priority": 5,
            "subject": house("ravenclaw"), "ingress": [
                {"action": "Accept", "from": [house("hufflepuff")],
                 "protocols": [{"sctp": {"destinationPort": {"number": 9005}}}]},
                {"action": "Deny", "from": [house("hufflepuff")]},
            ]}}),
        );
        assert!(reaches(
            &c,
            "cedric-diggory-0",
            "luna-lovegood-0",
            Sctp,
            9005
        ));
        assert!(!reaches(
            &c,
            "cedric-diggory-1",
            "luna-lovegood-1",
            Sctp,
            9003
        ));
    }

    #[test]
    fn baseline_tier_decides_only_where_no_network_policy_isolates() {
        use Protocol::Tcp;
        let mut c = houses();
        apply(
            &mut c,
            json!({"metadata": {"name": "default"}, "spec": {"tier": "Baseline", "priority": 10,
            "subject": house("gryffindor"), "ingress": [
                {"action": "Accept", "from": [house("ravenclaw")]},
                {"action": "Deny", "from": [house("ravenclaw")]},
                {"action": "Deny", "from": [house("slytherin")],
                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                {"action": "Accept", "from": [house("hufflepuff")],
                 "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                {"action": "Deny", "from": [house("hufflepuff")]},
            ]}}),
        );
        assert!(reaches(&c, "luna-lovegood-0", "harry-potter-0", Tcp, 80));
        assert!(reaches(&c, "cedric-diggory-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(
            &c,
            "cedric-diggory-1",
            "harry-potter-1",
            Tcp,
            8080
        ));
        assert!(!reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        assert!(reaches(&c, "draco-malfoy-1", "harry-potter-1", Tcp, 8080));
        swap(&mut c, "default", true, 0, 1);
        assert!(!reaches(&c, "luna-lovegood-0", "harry-potter-0", Tcp, 80));
        // A NetworkPolicy isolating harry-potter-* decides for them: Baseline is not
        // looked at, whichever way it would go.
        c.policies.insert(
            format!("{}/allow-slytherin", ns("gryffindor")),
            Policy {
                namespace: ns("gryffindor"),
                name: "allow-slytherin".into(),
                selector: Selector::default(),
                ingress: Some(vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(Selector::label("conformance-house", "slytherin")),
                        pods: None,
                    }],
                    ports: Vec::new(),
                }]),
                egress: None,
            },
        );
        assert!(reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "cedric-diggory-0", "harry-potter-0", Tcp, 80));
    }

    /// Admin Deny over a NetworkPolicy's allow; Pass handing the decision to it; without
    /// it, the Baseline tier's Deny.
    #[test]
    fn tiers_in_order_admin_network_policy_baseline() {
        use Protocol::Tcp;
        let mut c = houses();
        let slytherin = json!({"namespaces": {"matchLabels": {"conformance-house": "slytherin"}}});
        let gryffindor =
            json!({"namespaces": {"matchLabels": {"conformance-house": "gryffindor"}}});
        apply(
            &mut c,
            json!({"metadata": {"name": "pass-example"}, "spec": {"tier": "Admin", "priority": 10,
                "subject": gryffindor,
                "ingress": [{"action": "Deny", "from": [slytherin]}],
                "egress": [{"action": "Deny", "to": [slytherin]}]}}),
        );
        c.policies.insert(
            format!("{}/allow", ns("gryffindor")),
            Policy {
                namespace: ns("gryffindor"),
                name: "allow".into(),
                selector: Selector::default(),
                ingress: Some(vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(Selector::label("conformance-house", "slytherin")),
                        pods: None,
                    }],
                    ports: Vec::new(),
                }]),
                egress: Some(vec![Rule {
                    peers: vec![Peer::Pods {
                        namespaces: Some(Selector::label("conformance-house", "slytherin")),
                        pods: None,
                    }],
                    ports: Vec::new(),
                }]),
            },
        );
        apply(
            &mut c,
            json!({"metadata": {"name": "default"}, "spec": {"tier": "Baseline", "priority": 10,
                "subject": gryffindor,
                "ingress": [{"action": "Deny", "from": [slytherin]}],
                "egress": [{"action": "Deny", "to": [slytherin]}]}}),
        );
        for port in [80, 8080] {
            assert!(!reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, port));
            assert!(!reaches(&c, "harry-potter-1", "draco-malfoy-0", Tcp, port));
        }
        c.admin.get_mut("pass-example").unwrap().ingress[0].action = Action::Pass;
        assert!(reaches(&c, "draco-malfoy-1", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "harry-potter-1", "draco-malfoy-0", Tcp, 80));
        c.admin.get_mut("pass-example").unwrap().egress[0].action = Action::Pass;
        assert!(reaches(&c, "harry-potter-1", "draco-malfoy-0", Tcp, 80));
        c.policies.clear();
        assert!(!reaches(&c, "draco-malfoy-1", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "harry-potter-1", "draco-malfoy-0", Tcp, 8080));
    }

    #[test]
    fn lower_priority_values_are_judged_first() {
        use Protocol::Tcp;
        let mut c = houses();
        let pods = |h: &str| {
            json!({"pods": {"namespaceSelector": {"matchLabels": {"conformance-house": h}},
                            "podSelector": {"matchLabels": {"conformance-house": h}}}})
        };
        for (name, tier, priority, action) in [
            ("priority-50", "Admin", 50, "Deny"),
            ("priority-60", "Admin", 60, "Pass"),
            ("default", "Baseline", 10, "Accept"),
        ] {
            apply(
                &mut c,
                json!({"metadata": {"name": name}, "spec": {"tier": tier, "priority": priority,
                    "subject": pods("gryffindor"),
                    "ingress": [{"action": action, "from": [pods("slytherin")]}],
                    "egress": [{"action": action, "to": [pods("slytherin")]}]}}),
            );
        }
        assert!(!reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "harry-potter-0", "draco-malfoy-1", Tcp, 8080));
        c.admin.get_mut("priority-60").unwrap().priority = 40;
        assert!(reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        assert!(reaches(&c, "harry-potter-0", "draco-malfoy-1", Tcp, 8080));
        // Equal priorities: by name, the same on every node.
        c.admin.get_mut("priority-60").unwrap().priority = 50;
        assert!(!reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
    }

    #[test]
    fn networks_match_pod_addresses_too() {
        use Protocol::{Sctp, Tcp, Udp};
        let mut c = houses();
        let luna0 = ip(&c, "luna-lovegood-0");
        let cedric0 = ip(&c, "cedric-diggory-0");
        apply(
            &mut c,
            json!({"metadata": {"name": "inline-cidr"}, "spec": {"tier": "Admin", "priority": 85,
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"conformance-house": "gryffindor"}},
                                 "podSelector": {}}},
            "egress": [
                {"action": "Accept", "to": [{"pods": {
                    "namespaceSelector": {"matchLabels": {"conformance-house": "slytherin"}},
                    "podSelector": {}}}]},
                {"action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]},
            ]}}),
        );
        for (proto, port) in [(Tcp, 80), (Udp, 53), (Sctp, 9003)] {
            assert!(!reaches(
                &c,
                "harry-potter-1",
                "luna-lovegood-0",
                proto,
                port
            ));
            assert!(!reaches(
                &c,
                "harry-potter-1",
                "cedric-diggory-0",
                proto,
                port
            ));
            assert!(reaches(&c, "harry-potter-1", "draco-malfoy-0", proto, port));
        }
        // The namespace's label gone, its pods are "the internet" too.
        c.namespaces
            .get_mut(&ns("slytherin"))
            .unwrap()
            .insert("conformance-house".into(), "denied".into());
        assert!(!reaches(&c, "harry-potter-1", "draco-malfoy-0", Tcp, 80));
        c.namespaces
            .get_mut(&ns("slytherin"))
            .unwrap()
            .insert("conformance-house".into(), "slytherin".into());
        let p = c.admin.get_mut("inline-cidr").unwrap();
        p.egress.insert(
            0,
            AdminRule {
                name: "accept-two".into(),
                action: Action::Accept,
                peers: vec![AdminPeer::Networks(vec![
                    IpNet::from(luna0),
                    IpNet::from(cedric0),
                ])],
                protocols: None,
            },
        );
        for (proto, port) in [(Tcp, 80), (Udp, 53), (Sctp, 9003)] {
            assert!(reaches(
                &c,
                "harry-potter-1",
                "luna-lovegood-0",
                proto,
                port
            ));
            assert!(reaches(
                &c,
                "harry-potter-1",
                "cedric-diggory-0",
                proto,
                port
            ));
            assert!(!reaches(
                &c,
                "harry-potter-1",
                "luna-lovegood-1",
                proto,
                port
            ));
            assert!(!reaches(
                &c,
                "harry-potter-1",
                "cedric-diggory-1",
                proto,
                port
            ));
        }
    }

    #[test]
    fn named_ports_resolve_on_the_destination_pod() {
        use Protocol::{Tcp, Udp};
        let mut c = houses();
        apply(
            &mut c,
            json!({"metadata": {"name": "named"}, "spec": {"tier": "Admin", "priority": 1,
            "subject": house("hufflepuff"),
            "ingress": [
                {"action": "Accept", "from": [house("gryffindor")],
                 "protocols": [{"destinationNamedPort": "dns"}]},
                {"action": "Deny", "from": [house("gryffindor")]},
            ],
            "egress": [
                {"action": "Accept", "to": [house("gryffindor")],
                 "protocols": [{"destinationNamedPort": "web"}]},
                {"action": "Deny", "to": [house("gryffindor")]},
            ]}}),
        );
        assert!(reaches(&c, "harry-potter-0", "cedric-diggory-1", Udp, 53));
        assert!(!reaches(
            &c,
            "harry-potter-1",
            "cedric-diggory-1",
            Udp,
            5353
        ));
        // A name is its port's protocol too: `dns` is UDP.
        assert!(!reaches(&c, "harry-potter-1", "cedric-diggory-1", Tcp, 53));
        assert!(reaches(&c, "cedric-diggory-0", "harry-potter-1", Tcp, 80));
        assert!(!reaches(
            &c,
            "cedric-diggory-1",
            "harry-potter-1",
            Tcp,
            8080
        ));
    }

    /// Egress to nodes: a host-network server's address is its node's.
    #[test]
    fn node_peers_match_the_nodes_addresses() {
        use Protocol::{Sctp, Tcp, Udp};
        let mut c = houses();
        let node_ip: IpAddr = "172.18.0.3".parse().unwrap();
        c.nodes.insert(
            "node-2".into(),
            NodeInfo {
                labels: labels(&[("kubernetes.io/os", "linux")]),
                ips: vec![node_ip],
            },
        );
        apply(
            &mut c,
            json!({"metadata": {"name": "node-and-cidr"}, "spec": {"tier": "Admin", "priority": 75,
            "subject": {"pods": {"namespaceSelector": {"matchLabels": {"conformance-house": "gryffindor"}},
                                 "podSelector": {}}},
            "egress": [
                {"action": "Accept", "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 34345}}}]},
                {"action": "Pass", "to": [{"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}}],
                 "protocols": [{"udp": {"destinationPort": {"number": 34347}}}]},
                {"action": "Deny", "to": [
                    {"pods": {"namespaceSelector": {"matchLabels": {"conformance-house": "slytherin"}},
                              "podSelector": {}}},
                    {"nodes": {"matchLabels": {"kubernetes.io/os": "linux"}}},
                    {"networks": ["0.0.0.0/0", "::/0"]}]},
            ]}}),
        );
        let to_node = |c: &Cluster, proto: Protocol, port: u16| {
            let conn = Connection {
                src: ip(c, "harry-potter-1"),
                dst: node_ip,
                proto: proto.number(),
                port: Some(port),
            };
            let nodes: BTreeMap<&str, Desired> =
                NODES.iter().map(|n| (*n, compile::desired(c, n))).collect();
            let want = eval::allows(c, &conn);
            assert_eq!(compiled(c, &nodes, &conn), want, "{proto:?} {port}");
            want
        };
        assert!(to_node(&c, Tcp, 34345));
        assert!(to_node(&c, Udp, 34347));
        assert!(!to_node(&c, Tcp, 34346));
        assert!(!to_node(&c, Udp, 34349));
        assert!(!to_node(&c, Sctp, 34351));
        // Relabelled, the node is no longer a `nodes` peer, but still in 0.0.0.0/0.
        c.nodes.get_mut("node-2").unwrap().labels = labels(&[("kubernetes.io/os", "plan9")]);
        assert!(!to_node(&c, Tcp, 34345));
    }

    #[test]
    fn unreadable_parts_fail_closed() {
        use Protocol::Tcp;
        let mut c = houses();
        let api: crate::admin::ClusterNetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "odd"}, "spec": {"tier": "Admin", "priority": 1,
            "subject": house("gryffindor"),
            "ingress": [
                // An Accept with a peer of a newer API: matches less (here nothing).
                {"action": "Accept", "from": [{"domainNames": ["example.com"]}]},
                {"action": "Accept", "from": [house("slytherin"), {"domainNames": ["x.example"]}]},
                // A Pass with one: denies everything.
                {"action": "Pass", "from": [house("ravenclaw")],
                 "protocols": [{"tcp": {"destinationPort": {"range": {"start": 90, "end": 80}}}}]},
            ]}
        }))
        .unwrap();
        let (policy, problems) = AdminPolicy::from_api(&api);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[2].contains("start must be below end"),
            "{problems:?}"
        );
        let policy = policy.unwrap();
        assert_eq!(
            policy.ingress.len(),
            2,
            "the Accept left with no peer is dropped"
        );
        c.admin.insert("odd".into(), policy);
        assert!(reaches(&c, "draco-malfoy-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "luna-lovegood-0", "harry-potter-0", Tcp, 80));
        assert!(!reaches(&c, "cedric-diggory-0", "harry-potter-0", Tcp, 80));
    }
}

/// A pod with the mesh's proxy is captured, its proxy's user exempt and the ports its
/// annotations name skipped; a pod without it is not.
#[test]
fn a_pod_with_the_mesh_proxy_carries_its_capture() {
    let api: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "demo",
                     "annotations": {"config.linkerd.io/skip-outbound-ports": "5432"}},
        "spec": {
            "initContainers": [{"name": "kubewire-proxy", "restartPolicy": "Always",
                                "securityContext": {"runAsUser": 2200}}],
            "containers": [{"name": "app"}],
        },
        "status": {"podIPs": [{"ip": "10.244.0.9"}]},
    }))
    .unwrap();
    let capture = Pod::from_api(&api).unwrap().capture.unwrap();
    assert_eq!(capture.proxy_uid, 2200);
    assert_eq!(capture.skip_outbound_ports, [5432]);
    assert_eq!(capture.skip_inbound_ports, [cni::capture::ADMIN_PORT]);
    let mut plain = api.clone();
    plain.spec.as_mut().unwrap().init_containers = None;
    assert_eq!(Pod::from_api(&plain).unwrap().capture, None);
}
