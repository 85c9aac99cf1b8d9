use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde_json::json;

use crate::compile::{self, Desired};
use crate::eval::{self, Connection};
use crate::model::{
    Cluster, Labels, NamedPort, Peer, Pod, Policy, PortRef, PortRule, Protocol, Rule,
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
    c
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
    let outside: Vec<IpAddr> = ["198.51.100.7", "10.244.1.200", "8.8.8.8", "fd00::99"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    let mut checked = 0usize;
    let mut denied = 0usize;
    for round in 0..400 {
        let c = random_cluster(&mut rng);
        let nodes: BTreeMap<&str, Desired> = NODES
            .iter()
            .map(|n| (*n, compile::desired(&c, n)))
            .collect();
        // The kernel refuses overlapping range elements: each node's must be disjoint.
        for d in nodes.values() {
            for sets in [&d.ingress, &d.egress] {
                let ranges: Vec<_> = sets.ranges.iter().collect();
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
                            "round {round}: {conn:?}\npolicies: {:#?}\npods: {:#?}\nnodes: {nodes:#?}",
                            c.policies, c.pods
                        );
                        checked += 1;
                        denied += usize::from(!want);
                    }
                }
            }
        }
    }
    // The random clusters exercised both verdicts.
    assert!(checked > 100_000, "{checked}");
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
            match rng.below(5) {
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
                _ => {
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
}
