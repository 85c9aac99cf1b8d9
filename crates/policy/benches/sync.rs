//! Network policy's sync at scale, against the way iptables-based enforcers load the same
//! policies. Needs root; the tables go into throwaway namespaces.
//! `cargo bench -p policy --bench sync`.
//!
//! The cluster: 1,000 namespaces of 10 pods (`app: p0`..`p9`) over 3 nodes, 10 policies
//! per namespace (10,000): policy `j` selects `app: pj` and admits `app: p(j+1)` of its
//! namespace on TCP 8080 and the block 10.0.0.0/8 except 10.128.0.0/9 on TCP 9090.
//! Measured for node-1 (3,334 of the pods), as its agent holds the cluster (the slim
//! records of `policy::model`):
//!
//! - full sync: compile the node's verdicts and load the whole table (the first sync of
//!   an agent), and the agent's memory growth for it (VmRSS);
//! - one policy changed (a port), one pod's label changed: compile, diff, apply;
//! - a ClusterNetworkPolicy of one namespace, and one of every namespace, added and
//!   changed: compile, diff, apply;
//! - the peer: the same node's policies as one iptables chain per policy and one rule
//!   per peer (how iptables-based enforcers render them), loaded whole with
//!   `iptables-restore`, and one policy's chain replaced with `iptables-restore
//!   --noflush`.

#![allow(clippy::disallowed_methods)] // runs iptables-restore, the peer

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlink::netns;
use netlink::nft::NftSocket;
use policy::admin::{Action, AdminPeer, AdminPolicy, AdminRule, PodSet, Tier};
use policy::model::{
    Cluster, NAMESPACE_NAME_LABEL, Peer, Pod, Policy, PortRef, PortRule, Protocol, Rule, Selector,
};
use policy::node::NodePolicy;
use policy::ruleset::Enforcer;

const NAMESPACES: usize = 1_000;
const PODS_PER_NAMESPACE: usize = 10;
const NODES: usize = 3;

fn selector(app: &str) -> Selector {
    Selector::label("app", app)
}

fn pod_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32,
    ))
}

fn policy(ns: &str, j: usize, port: u16) -> Policy {
    Policy {
        namespace: ns.into(),
        name: format!("np-{j}"),
        selector: selector(&format!("p{j}")),
        ingress: Some(vec![
            Rule {
                peers: vec![Peer::Pods {
                    namespaces: None,
                    pods: Some(selector(&format!("p{}", (j + 1) % PODS_PER_NAMESPACE))),
                }],
                ports: vec![PortRule {
                    protocol: Protocol::Tcp,
                    port: PortRef::Range(port, port),
                }],
            },
            Rule {
                peers: vec![Peer::Block {
                    cidr: "10.0.0.0/8".parse().unwrap(),
                    except: vec!["10.128.0.0/9".parse().unwrap()],
                }],
                ports: vec![PortRule {
                    protocol: Protocol::Tcp,
                    port: PortRef::Range(9090, 9090),
                }],
            },
        ]),
        egress: None,
    }
}

/// Fills `state` as the agent's watches do.
fn fill(state: &mut NodePolicy) {
    for k in 0..NAMESPACES {
        let ns = format!("ns-{k}");
        state.set_namespace(
            &ns,
            Some([("kubernetes.io/metadata.name".to_owned(), ns.clone())].into()),
        );
        for j in 0..PODS_PER_NAMESPACE {
            let i = k * PODS_PER_NAMESPACE + j;
            let pod = Pod {
                namespace: ns.clone(),
                name: format!("pod-{j}"),
                labels: [("app".to_owned(), format!("p{j}"))].into(),
                ips: vec![pod_ip(i)],
                node: format!("node-{}", i % NODES + 1),
                ports: vec![],
                capture: None,
            };
            state.set_pod(&format!("{ns}/pod-{j}"), Some(pod));
            state.set_policy(&format!("{ns}/np-{j}"), Some(policy(&ns, j, 8080)));
        }
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// `iptables-restore ARGS` in `ns` with `input`; how long it took.
fn iptables_restore(ns: &str, args: &[&str], input: String) -> Duration {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    netns::run_in(ns, move || {
        let t = Instant::now();
        let mut child = Command::new("iptables-restore")
            .args(&args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "iptables-restore failed");
        t.elapsed()
    })
    .unwrap()
}

/// The chain of policy `ns/np-j` for node-1's pods, as iptables-based enforcers render
/// it: one rule per peer address.
fn chain_rules(c: &Cluster, ns: &str, j: usize, port: u16, out: &mut String) {
    let chain = format!("KW-{ns}-np-{j}");
    let _ = writeln!(out, "-F {chain}");
    let peer = &c.pods[&format!("{ns}/pod-{}", (j + 1) % PODS_PER_NAMESPACE)];
    for ip in &peer.ips {
        let _ = writeln!(out, "-A {chain} -s {ip}/32 -p tcp --dport {port} -j ACCEPT");
    }
    let _ = writeln!(
        out,
        "-A {chain} -s 10.0.0.0/9 -p tcp --dport 9090 -j ACCEPT"
    );
}

/// node-1's whole ruleset, iptables style: a jump per (isolated pod, policy), a chain
/// per policy, a drop per isolated pod.
fn iptables_ruleset(c: &Cluster) -> String {
    let mut out = String::from("*filter\n:FORWARD ACCEPT [0:0]\n:KW-INGRESS - [0:0]\n");
    let mut chains = String::new();
    let mut jumps = String::new();
    let mut drops = String::new();
    for p in c.pods.values().filter(|p| p.node == "node-1") {
        let j: usize = p.name.trim_start_matches("pod-").parse().unwrap();
        let ip = p.ips[0];
        let _ = writeln!(out, ":KW-{}-np-{j} - [0:0]", p.namespace);
        let _ = writeln!(
            jumps,
            "-A KW-INGRESS -d {ip}/32 -j KW-{}-np-{j}",
            p.namespace
        );
        let _ = writeln!(drops, "-A KW-INGRESS -d {ip}/32 -j DROP");
        chain_rules(c, &p.namespace, j, 8080, &mut chains);
    }
    out.push_str("-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT\n");
    out.push_str("-A FORWARD -j KW-INGRESS\n");
    out.push_str(&chains);
    out.push_str(&jumps);
    out.push_str(&drops);
    out.push_str("COMMIT\n");
    out
}

fn main() {
    benchkit::require_root();
    let mut all = benchkit::Namespaces::default();
    let ours = all.make("npsync", "kubewire");
    let peer = all.make("npsync", "iptables");

    let before = rss_kib();
    let mut state = NodePolicy::new("node-1", Enforcer::new(NftSocket::new_in(&ours).unwrap()));
    let t = Instant::now();
    fill(&mut state);
    let built = t.elapsed();
    let held = rss_kib().saturating_sub(before);
    let t = Instant::now();
    let report = state.sync().unwrap();
    let total = t.elapsed();
    let grown = rss_kib().saturating_sub(before);
    let d = state.desired();
    println!(
        "cluster: {NAMESPACES} namespaces x {PODS_PER_NAMESPACE} pods over {NODES} nodes, \
         {} policies; node-1: {} isolated pods, {} elements (taken in from the watches \
         in {})",
        state.cluster().policies.len(),
        d.ingress.isolated.len(),
        d.ingress.len() + d.egress.len(),
        ms(built)
    );
    println!(
        "kubewire full sync: {} (compile {} + apply, {} messages); memory growth: {:.1} MiB \
         (the cluster held: {:.1} MiB; with the node's verdicts, after the sync: {:.1} MiB)",
        ms(total),
        ms(report.compute),
        report.sync.messages,
        grown as f64 / 1024.0,
        held as f64 / 1024.0,
        grown as f64 / 1024.0
    );

    // One policy changed: its admitted port (the old one is no longer allowed: the
    // connections on it are looked for and cut, apart from the sync).
    let mut changes = Vec::new();
    let mut cuts = Vec::new();
    for round in 0..5u16 {
        let t = Instant::now();
        state.set_policy("ns-0/np-0", Some(policy("ns-0", 0, 8081 + round)));
        let r = state.sync().unwrap();
        changes.push((t.elapsed(), r.sync.messages));
        cut(&state, &mut cuts);
    }
    println!("kubewire one policy changed: {}", rounds(&changes));

    // One pod's label changed: node-1's pod-0 of ns-0 takes p5's label and back.
    let mut label = Vec::new();
    for round in 0..6 {
        let pod_key = "ns-0/pod-0";
        let mut p = state.cluster().pods[pod_key].clone();
        p.labels.insert(
            "app".into(),
            if round % 2 == 0 { "p5" } else { "p0" }.into(),
        );
        let t = Instant::now();
        state.set_pod(pod_key, Some(p));
        let r = state.sync().unwrap();
        label.push((t.elapsed(), r.sync.messages));
        if r.narrower {
            cut(&state, &mut cuts);
        }
    }
    println!("kubewire one pod label changed: {}", rounds(&label));

    // The admin tiers: a ClusterNetworkPolicy of one namespace (Admin: Deny from ns-1
    // on a port), then one of every namespace (Baseline: Deny from ns-999's pods on a
    // port; every pod of the node is its subject), each added and then changed.
    for (name, tier, subject, peer) in [
        ("one namespace's (Admin)", Tier::Admin, Some("ns-0"), "ns-1"),
        (
            "every namespace's (Baseline)",
            Tier::Baseline,
            None,
            "ns-999",
        ),
    ] {
        let mut admin = Vec::new();
        for round in 0..5u16 {
            let t = Instant::now();
            state.set_admin_policy("cnp", Some(admin_policy(tier, subject, peer, 7000 + round)));
            let r = state.sync().unwrap();
            admin.push((t.elapsed(), r.sync.messages));
            if r.narrower {
                cut(&state, &mut cuts);
            }
        }
        state.set_admin_policy("cnp", None);
        state.sync().unwrap();
        println!(
            "kubewire a ClusterNetworkPolicy {name} added, then changed: {}",
            rounds(&admin)
        );
    }
    println!(
        "kubewire the cut after a narrowing change (a conntrack walk): {} (rounds: {})",
        ms(*cuts.iter().min().unwrap()),
        cuts.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );

    // The peer.
    let text = iptables_ruleset(state.cluster());
    let rules = text.lines().filter(|l| l.starts_with("-A")).count();
    let full = iptables_restore(&peer, &[], text);
    println!("iptables-restore full load: {} ({rules} rules)", ms(full));
    let mut one = Vec::new();
    for round in 0..5u16 {
        let mut text = String::from("*filter\n");
        chain_rules(state.cluster(), "ns-0", 0, 8081 + round, &mut text);
        text.push_str("COMMIT\n");
        one.push(iptables_restore(&peer, &["--noflush"], text));
    }
    println!(
        "iptables-restore one policy's chain replaced: {} (rounds: {})",
        ms(*one.iter().min().unwrap()),
        one.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(", ")
    );
}

/// A ClusterNetworkPolicy of `tier` whose subject is namespace `subject` (every
/// namespace when `None`), denying ingress from the pods of namespace `peer` on TCP
/// `port`.
fn admin_policy(tier: Tier, subject: Option<&str>, peer: &str, port: u16) -> AdminPolicy {
    let namespace = |ns: &str| Selector::label(NAMESPACE_NAME_LABEL, ns);
    AdminPolicy {
        name: "cnp".into(),
        tier,
        priority: 10,
        subject: PodSet {
            namespaces: subject.map(namespace).unwrap_or_default(),
            pods: Selector::default(),
        },
        ingress: vec![AdminRule {
            name: "deny".into(),
            action: Action::Deny,
            peers: vec![AdminPeer::Pods(PodSet {
                namespaces: namespace(peer),
                pods: Selector::default(),
            })],
            protocols: Some(vec![PortRule {
                protocol: Protocol::Tcp,
                port: PortRef::Range(port, port),
            }]),
        }],
        egress: Vec::new(),
    }
}

/// Times [`NodePolicy::cut`].
fn cut(state: &NodePolicy, cuts: &mut Vec<Duration>) {
    let t = Instant::now();
    state.cut().unwrap();
    cuts.push(t.elapsed());
}

/// The fastest of the rounds, then each (time / netlink messages).
fn rounds(r: &[(Duration, usize)]) -> String {
    format!(
        "{} (rounds: {})",
        ms(r.iter().map(|c| c.0).min().unwrap()),
        r.iter()
            .map(|(d, m)| format!("{} / {m} messages", ms(*d)))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
