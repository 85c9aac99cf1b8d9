//! From the cluster to one node's verdict sets: for each of the node's pods and each
//! direction, whether it is isolated and which (peer address, protocol, port) it
//! allows, as elements of three sets per direction. The packet path is a few set
//! lookups whatever the number of policies or peers:
//!
//! - `ports`: `local . peer . protocol . port`, exact (a hash lookup): pod peers on
//!   numbered or named ports;
//! - `peers`: `local . peer`, exact: pod peers on every port and protocol;
//! - `ranges`: `local . peer range . protocol range . port range` (the kernel's
//!   concatenated interval sets): everything else (ipBlocks, every source, `endPort`
//!   ranges, a protocol's every port). The kernel refuses overlapping elements there,
//!   so each local address's boxes are cut into disjoint ones ([`disjoint`]).
//!
//! The admin tiers (ClusterNetworkPolicy) add three interval sets of the `ranges` key:
//! `admin_accept`, `admin_deny` and `baseline_deny`. Their rules are first-match, so a
//! pod's rules are painted in order into disjoint rectangles, each decided by the first
//! rule covering it ([`paint`]).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::admin::{Action, AdminPeer, AdminRule, Tier};
use crate::model::{Cluster, Peer, Pod, PortRef, Protocol, Rule};

/// Which way traffic goes, seen from the node's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the pod: its ingress policies, the peer is the source.
    Ingress,
    /// Out of the pod: its egress policies, the peer is the destination.
    Egress,
}

/// One element of `ranges`: every field a range, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// The node's pod address.
    pub local: IpAddr,
    /// Peer addresses, first and last.
    pub peer: (IpAddr, IpAddr),
    /// IP protocol numbers, first and last.
    pub proto: (u8, u8),
    /// Ports, first and last.
    pub port: (u16, u16),
}

/// One direction's verdicts for the node's pods.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sets {
    /// Addresses of the node's pods that policies isolate in this direction; traffic of
    /// the others is not judged.
    pub isolated: BTreeSet<IpAddr>,
    /// `local . peer . protocol . port` allowed.
    pub ports: BTreeSet<(IpAddr, IpAddr, u8, u16)>,
    /// `local . peer` allowed on every port and protocol.
    pub peers: BTreeSet<(IpAddr, IpAddr)>,
    /// Disjoint ranges allowed.
    pub ranges: BTreeSet<Range>,
    /// Ranges the Admin tier accepts (judged before everything).
    pub admin_accept: BTreeSet<Range>,
    /// Ranges the Admin tier denies (disjoint from `admin_accept`).
    pub admin_deny: BTreeSet<Range>,
    /// Ranges the Baseline tier denies, for pods NetworkPolicy does not isolate.
    pub baseline_deny: BTreeSet<Range>,
}

impl Sets {
    /// What the packet path decides for traffic of `local` with `peer` (the emulation
    /// the property test compares with the reference).
    pub fn admits(&self, local: IpAddr, peer: IpAddr, proto: u8, port: Option<u16>) -> bool {
        // Only the ranges of `local` (the cut asks this for every conntrack entry).
        let hit = |set: &BTreeSet<Range>| {
            set.range(range_low(local)..=range_high(local)).any(|r| {
                (r.peer.0..=r.peer.1).contains(&peer)
                    && (r.proto.0..=r.proto.1).contains(&proto)
                    && match port {
                        Some(p) => (r.port.0..=r.port.1).contains(&p),
                        // A packet without ports matches only ranges of every port.
                        None => r.port == (0, u16::MAX),
                    }
            })
        };
        if hit(&self.admin_accept) {
            return true;
        }
        if hit(&self.admin_deny) {
            return false;
        }
        if !self.isolated.contains(&local) {
            return !hit(&self.baseline_deny);
        }
        if self.peers.contains(&(local, peer)) {
            return true;
        }
        if let Some(port) = port
            && self.ports.contains(&(local, peer, proto, port))
        {
            return true;
        }
        hit(&self.ranges)
    }

    /// The local addresses whose traffic the table judges: isolated ones, and those with
    /// an element in an admin tier's sets.
    pub fn judged(&self) -> BTreeSet<IpAddr> {
        let mut out = self.isolated.clone();
        for set in [&self.admin_accept, &self.admin_deny, &self.baseline_deny] {
            out.extend(set.iter().map(|r| r.local));
        }
        out
    }

    /// Takes out every element of local address `a`.
    fn clear(&mut self, a: IpAddr) {
        self.isolated.remove(&a);
        for e in local_range(
            &self.ports,
            a,
            |ip| (ip, MIN_IP, 0, 0),
            |ip| (ip, MAX_IP, u8::MAX, u16::MAX),
        ) {
            self.ports.remove(&e);
        }
        for e in local_range(&self.peers, a, |ip| (ip, MIN_IP), |ip| (ip, MAX_IP)) {
            self.peers.remove(&e);
        }
        for set in [
            &mut self.ranges,
            &mut self.admin_accept,
            &mut self.admin_deny,
            &mut self.baseline_deny,
        ] {
            for e in local_range(set, a, range_low, range_high) {
                set.remove(&e);
            }
        }
    }

    /// The elements of the local addresses `addrs` only.
    fn of(&self, addrs: &BTreeSet<IpAddr>) -> Sets {
        let mut out = Sets::default();
        for &a in addrs {
            if self.isolated.contains(&a) {
                out.isolated.insert(a);
            }
            out.ports.extend(local_range(
                &self.ports,
                a,
                |ip| (ip, MIN_IP, 0, 0),
                |ip| (ip, MAX_IP, u8::MAX, u16::MAX),
            ));
            out.peers.extend(local_range(
                &self.peers,
                a,
                |ip| (ip, MIN_IP),
                |ip| (ip, MAX_IP),
            ));
            out.ranges
                .extend(local_range(&self.ranges, a, range_low, range_high));
            out.admin_accept
                .extend(local_range(&self.admin_accept, a, range_low, range_high));
            out.admin_deny
                .extend(local_range(&self.admin_deny, a, range_low, range_high));
            out.baseline_deny
                .extend(local_range(&self.baseline_deny, a, range_low, range_high));
        }
        out
    }

    /// Elements in all sets.
    pub fn len(&self) -> usize {
        self.isolated.len()
            + self.ports.len()
            + self.peers.len()
            + self.ranges.len()
            + self.admin_accept.len()
            + self.admin_deny.len()
            + self.baseline_deny.len()
    }

    /// Whether no set has an element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The lowest and highest addresses in `IpAddr`'s order (IPv4 before IPv6).
const MIN_IP: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
const MAX_IP: IpAddr = IpAddr::V6(Ipv6Addr::new(
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff,
));

fn range_low(local: IpAddr) -> Range {
    Range {
        local,
        peer: (MIN_IP, MIN_IP),
        proto: (0, 0),
        port: (0, 0),
    }
}

fn range_high(local: IpAddr) -> Range {
    Range {
        local,
        peer: (MAX_IP, MAX_IP),
        proto: (u8::MAX, u8::MAX),
        port: (u16::MAX, u16::MAX),
    }
}

/// The elements of `set` whose first field is `a`: those from `low(a)` to `high(a)`.
fn local_range<T: Ord + Clone>(
    set: &BTreeSet<T>,
    a: IpAddr,
    low: impl Fn(IpAddr) -> T,
    high: impl Fn(IpAddr) -> T,
) -> Vec<T> {
    set.range(low(a)..=high(a)).cloned().collect()
}

/// A node's verdicts, both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    /// Traffic into the node's pods.
    pub ingress: Sets,
    /// Traffic out of the node's pods.
    pub egress: Sets,
}

impl Desired {
    /// Takes out every element of local address `a`.
    pub fn clear(&mut self, a: IpAddr) {
        for sets in [&mut self.ingress, &mut self.egress] {
            sets.clear(a);
        }
    }

    /// The elements of the local addresses `addrs` only.
    pub fn of(&self, addrs: &BTreeSet<IpAddr>) -> Desired {
        Desired {
            ingress: self.ingress.of(addrs),
            egress: self.egress.of(addrs),
        }
    }

    /// The sets of direction `d`.
    pub fn sets(&self, d: Direction) -> &Sets {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// The verdicts of the pods of `node`.
pub fn desired(cluster: &Cluster, node: &str) -> Desired {
    let mut out = Desired::default();
    let mut cache = PeerCache::new();
    for pod in cluster.pods.values().filter(|p| p.node == node) {
        add_pod(cluster, pod, &mut out, &mut cache);
    }
    out
}

/// Brings `desired` (the verdicts of `node`'s pods) up to date after a change that
/// touched only the pods `pods` (keys, any node) and the addresses `addrs` (those the
/// pods had before): every element of those addresses and of the pods' present ones is
/// taken out and the node's pods among them computed again. Returns the local
/// addresses whose elements may have changed.
pub fn update(
    cluster: &Cluster,
    node: &str,
    desired: &mut Desired,
    pods: &BTreeSet<String>,
    addrs: &BTreeSet<IpAddr>,
) -> BTreeSet<IpAddr> {
    let mut touched = addrs.clone();
    for key in pods {
        if let Some(p) = cluster.pods.get(key).filter(|p| p.node == node) {
            touched.extend(p.ips.iter().copied());
        }
    }
    for a in &touched {
        desired.clear(*a);
    }
    // The node's pods with a touched address: the changed ones, and any other that
    // shares one (an address taken over before the old pod's deletion arrived).
    let mut again: BTreeSet<&str> = pods
        .iter()
        .filter(|k| cluster.pods.get(*k).is_some_and(|p| p.node == node))
        .map(String::as_str)
        .collect();
    for a in &touched {
        if let Some(key) = cluster.pod_key_by_ip(*a)
            && cluster.pods[key].node == node
        {
            again.insert(key);
        }
    }
    let mut cache = PeerCache::new();
    for key in again {
        add_pod(cluster, &cluster.pods[key], desired, &mut cache);
    }
    touched
}

/// Adds the verdicts of `pod` (a pod of the node) to `out`.
fn add_pod(cluster: &Cluster, pod: &Pod, out: &mut Desired, cache: &mut PeerCache) {
    add_admin(cluster, pod, out, cache);
    for d in [Direction::Ingress, Direction::Egress] {
        let rules: Vec<(&str, &Rule)> = cluster
            .policies_for(pod)
            .filter_map(|p| {
                let rules = match d {
                    Direction::Ingress => p.ingress.as_ref(),
                    Direction::Egress => p.egress.as_ref(),
                }?;
                Some((p.namespace.as_str(), rules))
            })
            .flat_map(|(ns, rules)| rules.iter().map(move |r| (ns, r)))
            .collect();
        let isolated = cluster.policies_for(pod).any(|p| match d {
            Direction::Ingress => p.ingress.is_some(),
            Direction::Egress => p.egress.is_some(),
        });
        if !isolated {
            continue;
        }
        let sets = match d {
            Direction::Ingress => &mut out.ingress,
            Direction::Egress => &mut out.egress,
        };
        for &local in &pod.ips {
            sets.isolated.insert(local);
            let mut boxes = Vec::new();
            for (ns, rule) in &rules {
                compile_rule(cluster, ns, rule, pod, local, d, sets, &mut boxes);
            }
            sets.ranges.extend(disjoint(local, &boxes));
        }
    }
}

/// The peer addresses of admin rules, by rule (its address: the cluster does not change
/// during one computation) and family: computed once per computation, not once per pod.
type PeerCache = HashMap<(usize, bool), Vec<PeerSpec>>;

/// Adds the admin tiers' verdicts for `pod`: per direction and tier, its rules'
/// rectangles painted in the order they are judged ([`paint`]).
fn add_admin(cluster: &Cluster, pod: &Pod, out: &mut Desired, cache: &mut PeerCache) {
    for d in [Direction::Ingress, Direction::Egress] {
        let ingress = d == Direction::Ingress;
        let admin = cluster.admin_rules(pod, Tier::Admin, ingress);
        let baseline = cluster.admin_rules(pod, Tier::Baseline, ingress);
        if admin.is_empty() && baseline.is_empty() {
            continue;
        }
        let sets = match d {
            Direction::Ingress => &mut out.ingress,
            Direction::Egress => &mut out.egress,
        };
        for &local in &pod.ips {
            if !admin.is_empty() {
                let boxes = admin_boxes(cluster, &admin, pod, local, d, cache);
                let (accept, deny) = paint(local, &boxes);
                sets.admin_accept.extend(accept);
                sets.admin_deny.extend(deny);
            }
            if !baseline.is_empty() {
                let boxes = admin_boxes(cluster, &baseline, pod, local, d, cache);
                // Accept in the Baseline tier allows what is allowed anyway; it only
                // keeps later Deny rules off.
                let (_, deny) = paint(local, &boxes);
                sets.baseline_deny.extend(deny);
            }
        }
    }
}

/// The rectangles of `rules` (one tier's, in order) for local address `local` of `pod`,
/// each with its rule's action, in the rules' order.
fn admin_boxes(
    cluster: &Cluster,
    rules: &[&AdminRule],
    pod: &Pod,
    local: IpAddr,
    d: Direction,
    cache: &mut PeerCache,
) -> Vec<(Box2, Action)> {
    let v4 = local.is_ipv4();
    let mut out = Vec::new();
    for rule in rules {
        let key = (std::ptr::from_ref::<AdminRule>(rule) as usize, v4);
        let peers = cache.entry(key).or_insert_with(|| {
            rule.peers
                .iter()
                .flat_map(|p| admin_peer_specs(cluster, p, v4))
                .collect()
        });
        let peers: &[PeerSpec] = peers;
        let Some(protocols) = &rule.protocols else {
            for p in peers {
                out.push((p.as_box(ALL_PP), rule.action));
            }
            continue;
        };
        for port in protocols {
            let proto = port.protocol.number();
            let range = match &port.port {
                PortRef::All => Some((0, u16::MAX)),
                PortRef::Range(first, last) => Some((*first, *last)),
                PortRef::Named(name) if d == Direction::Ingress => {
                    pod.named_port(name, port.protocol).map(|n| (n, n))
                }
                // Egress: the port of each destination pod.
                PortRef::Named(name) => {
                    for (ip, n) in named_targets(cluster, peers, name, port.protocol, v4) {
                        let n128 = to_u128(ip);
                        let pp = (pp(proto, n), pp(proto, n));
                        out.push((
                            Box2 {
                                peer: (n128, n128),
                                pp,
                            },
                            rule.action,
                        ));
                    }
                    None
                }
            };
            if let Some((first, last)) = range {
                for p in peers {
                    out.push((p.as_box((pp(proto, first), pp(proto, last))), rule.action));
                }
            }
        }
    }
    out
}

fn admin_peer_specs(cluster: &Cluster, peer: &AdminPeer, v4: bool) -> Vec<PeerSpec> {
    match peer {
        AdminPeer::Pods(set) => cluster
            .pods_of(set)
            .flat_map(|pod| pod.ips.iter())
            .filter(|ip| ip.is_ipv4() == v4)
            .map(|ip| PeerSpec::Exact(*ip))
            .collect(),
        AdminPeer::Networks(nets) => nets
            .iter()
            .filter(|n| matches!(n, IpNet::V4(_)) == v4)
            .map(|n| {
                let (lo, hi) = net_span(n);
                PeerSpec::Span(lo, hi)
            })
            .collect(),
        AdminPeer::Nodes(sel) => cluster
            .nodes
            .values()
            .filter(|n| sel.selects(&n.labels))
            .flat_map(|n| n.ips.iter())
            .filter(|ip| ip.is_ipv4() == v4)
            .map(|ip| PeerSpec::Exact(*ip))
            .collect(),
        AdminPeer::Everyone => vec![PeerSpec::Span(0, family_max(v4))],
    }
}

/// Rectangles judged in order, the first covering a point deciding it, painted into
/// disjoint ranges: those Accept decides and those Deny decides (Pass decides points
/// too, but adds nothing). The (protocol, port) axis is cut where any rectangle starts
/// or ends; along each piece, the peer axis is swept keeping the rectangles that cover
/// it, the first in order winning; neighbouring pieces painted alike are joined.
fn paint(local: IpAddr, boxes: &[(Box2, Action)]) -> (Vec<Range>, Vec<Range>) {
    if boxes.is_empty() {
        return (Vec::new(), Vec::new());
    }
    let v4 = local.is_ipv4();
    let mut cuts: Vec<u32> = boxes
        .iter()
        .flat_map(|(b, _)| [b.pp.0, b.pp.1 + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    // (pp first, pp last, the peer axis painted: (lo, hi, action))
    type Painted = Vec<(u128, u128, Action)>;
    let mut pieces: Vec<(u32, u32, Painted)> = Vec::new();
    for w in cuts.windows(2) {
        let (first, last) = (w[0], w[1] - 1);
        let covering: Vec<(usize, &Box2)> = boxes
            .iter()
            .enumerate()
            .filter(|(_, (b, _))| b.pp.0 <= first && last <= b.pp.1)
            .map(|(i, (b, _))| (i, b))
            .collect();
        if covering.is_empty() {
            continue;
        }
        let painted = sweep(&covering, |i| boxes[i].1);
        match pieces.last_mut() {
            Some(p) if p.1 + 1 == first && p.2 == painted => p.1 = last,
            _ => pieces.push((first, last, painted)),
        }
    }
    let (mut accept, mut deny) = (Vec::new(), Vec::new());
    for (first, last, painted) in pieces {
        for (proto, port) in rectangles(first, last) {
            for &(lo, hi, action) in &painted {
                let range = Range {
                    local,
                    peer: (from_u128(lo, v4), from_u128(hi, v4)),
                    proto,
                    port,
                };
                match action {
                    Action::Accept => accept.push(range),
                    Action::Deny => deny.push(range),
                    Action::Pass => {}
                }
            }
        }
    }
    (accept, deny)
}

/// The peer axis under `covering` (rectangles with their rank), each stretch decided by
/// the lowest rank covering it; neighbouring stretches decided alike are joined.
fn sweep(
    covering: &[(usize, &Box2)],
    action: impl Fn(usize) -> Action,
) -> Vec<(u128, u128, Action)> {
    // Where the set of covering rectangles changes: starts, and one past ends.
    let mut starts: Vec<(u128, usize)> = covering.iter().map(|(i, b)| (b.peer.0, *i)).collect();
    let mut ends: Vec<(u128, usize)> = covering
        .iter()
        .filter_map(|(i, b)| b.peer.1.checked_add(1).map(|e| (e, *i)))
        .collect();
    starts.sort_unstable();
    ends.sort_unstable();
    let mut bounds: Vec<u128> = starts.iter().chain(ends.iter()).map(|(p, _)| *p).collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut active: BTreeSet<usize> = BTreeSet::new();
    let (mut s, mut e) = (0, 0);
    let mut out: Vec<(u128, u128, Action)> = Vec::new();
    for (k, &at) in bounds.iter().enumerate() {
        while e < ends.len() && ends[e].0 == at {
            active.remove(&ends[e].1);
            e += 1;
        }
        while s < starts.len() && starts[s].0 == at {
            active.insert(starts[s].1);
            s += 1;
        }
        let Some(&winner) = active.first() else {
            continue;
        };
        let hi = match bounds.get(k + 1) {
            Some(next) => next - 1,
            None => u128::MAX,
        };
        let a = action(winner);
        match out.last_mut() {
            Some(last) if last.2 == a && last.1.checked_add(1) == Some(at) => last.1 = hi,
            _ => out.push((at, hi, a)),
        }
    }
    out
}

/// Peer addresses of one `from`/`to` entry, of one family.
#[derive(Debug, Clone)]
enum PeerSpec {
    /// One pod's address.
    Exact(IpAddr),
    /// Addresses from the first to the last.
    Span(u128, u128),
}

impl PeerSpec {
    fn as_box(&self, pp: (u32, u32)) -> Box2 {
        let peer = match self {
            PeerSpec::Exact(ip) => {
                let n = to_u128(*ip);
                (n, n)
            }
            PeerSpec::Span(lo, hi) => (*lo, *hi),
        };
        Box2 { peer, pp }
    }
}

/// A rectangle of `ranges` before it is cut: peer addresses × (protocol, port) pairs,
/// both as numbers (`protocol << 16 | port`), ends included.
#[derive(Debug, Clone, Copy)]
struct Box2 {
    peer: (u128, u128),
    pp: (u32, u32),
}

const ALL_PP: (u32, u32) = (0, 0x00ff_ffff);

fn pp(proto: u8, port: u16) -> u32 {
    (u32::from(proto) << 16) | u32::from(port)
}

#[allow(clippy::too_many_arguments)]
fn compile_rule(
    cluster: &Cluster,
    policy_ns: &str,
    rule: &Rule,
    pod: &Pod,
    local: IpAddr,
    d: Direction,
    sets: &mut Sets,
    boxes: &mut Vec<Box2>,
) {
    let v4 = local.is_ipv4();
    let peers: Vec<PeerSpec> = if rule.peers.is_empty() {
        vec![PeerSpec::Span(0, family_max(v4))]
    } else {
        rule.peers
            .iter()
            .flat_map(|p| peer_specs(cluster, policy_ns, p, v4))
            .collect()
    };
    // Every port of every protocol.
    if rule.ports.is_empty() {
        for p in &peers {
            match p {
                PeerSpec::Exact(ip) => {
                    sets.peers.insert((local, *ip));
                }
                PeerSpec::Span(lo, hi) => boxes.push(Box2 {
                    peer: (*lo, *hi),
                    pp: ALL_PP,
                }),
            }
        }
        return;
    }
    for port in &rule.ports {
        let proto = port.protocol.number();
        let range = match &port.port {
            PortRef::All => Some((0, u16::MAX)),
            PortRef::Range(first, last) => Some((*first, *last)),
            // Ingress: the port of this pod, the destination.
            PortRef::Named(name) if d == Direction::Ingress => {
                pod.named_port(name, port.protocol).map(|n| (n, n))
            }
            // Egress: the port of each destination pod, so one element per pod.
            PortRef::Named(name) => {
                for (ip, n) in named_targets(cluster, &peers, name, port.protocol, v4) {
                    sets.ports.insert((local, ip, proto, n));
                }
                None
            }
        };
        let Some((first, last)) = range else {
            continue;
        };
        for p in &peers {
            match p {
                PeerSpec::Exact(ip) if first == last => {
                    sets.ports.insert((local, *ip, proto, first));
                }
                PeerSpec::Exact(ip) => {
                    let n = to_u128(*ip);
                    boxes.push(Box2 {
                        peer: (n, n),
                        pp: (pp(proto, first), pp(proto, last)),
                    });
                }
                PeerSpec::Span(lo, hi) => boxes.push(Box2 {
                    peer: (*lo, *hi),
                    pp: (pp(proto, first), pp(proto, last)),
                }),
            }
        }
    }
}

/// For an egress rule's named port: each destination pod's address (of the family) among
/// `peers`, with its port of that name and protocol.
fn named_targets(
    cluster: &Cluster,
    peers: &[PeerSpec],
    name: &str,
    protocol: Protocol,
    v4: bool,
) -> Vec<(IpAddr, u16)> {
    let mut out = Vec::new();
    for p in peers {
        for dst in pods_in(cluster, p, v4) {
            if let Some(n) = dst.named_port(name, protocol) {
                out.extend(
                    dst.ips
                        .iter()
                        .filter(|ip| ip.is_ipv4() == v4)
                        .map(|ip| (*ip, n)),
                );
            }
        }
    }
    out
}

/// The pods with an address of the family (`v4`) that `p` covers.
fn pods_in<'a>(cluster: &'a Cluster, p: &PeerSpec, v4: bool) -> Vec<&'a Pod> {
    match p {
        PeerSpec::Exact(ip) => cluster.pod_by_ip(*ip).into_iter().collect(),
        PeerSpec::Span(lo, hi) => cluster
            .pods
            .values()
            .filter(|pod| {
                pod.ips
                    .iter()
                    .any(|ip| ip.is_ipv4() == v4 && (*lo..=*hi).contains(&to_u128(*ip)))
            })
            .collect(),
    }
}

fn peer_specs(cluster: &Cluster, policy_ns: &str, peer: &Peer, v4: bool) -> Vec<PeerSpec> {
    match peer {
        Peer::Pods { .. } => cluster
            .peer_pods(policy_ns, peer)
            .flat_map(|pod| pod.ips.iter())
            .filter(|ip| ip.is_ipv4() == v4)
            .map(|ip| PeerSpec::Exact(*ip))
            .collect(),
        Peer::Block { cidr, except } => {
            if matches!(cidr, IpNet::V4(_)) != v4 {
                return Vec::new();
            }
            let mut spans = vec![net_span(cidr)];
            for e in except.iter().filter(|e| matches!(e, IpNet::V4(_)) == v4) {
                spans = subtract(&spans, net_span(e));
            }
            spans
                .into_iter()
                .map(|(lo, hi)| PeerSpec::Span(lo, hi))
                .collect()
        }
    }
}

fn net_span(net: &IpNet) -> (u128, u128) {
    let net = net.trunc();
    (to_u128(net.network()), to_u128(net.broadcast()))
}

/// `spans` without `(lo, hi)`.
fn subtract(spans: &[(u128, u128)], (lo, hi): (u128, u128)) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    for &(a, b) in spans {
        if hi < a || lo > b {
            out.push((a, b));
            continue;
        }
        if a < lo {
            out.push((a, lo - 1));
        }
        if hi < b {
            out.push((hi + 1, b));
        }
    }
    out
}

fn family_max(v4: bool) -> u128 {
    if v4 { u128::from(u32::MAX) } else { u128::MAX }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n))
    }
}

/// Address ranges as numbers, ends included.
type Spans = Vec<(u128, u128)>;

/// `boxes` of one local address, cut into disjoint [`Range`]s covering the same
/// (peer, protocol, port) points: the (protocol, port) axis is cut where any box starts
/// or ends; in each piece, the peer ranges of the boxes covering it are merged; pieces
/// with the same peers are joined again; each piece becomes at most three
/// protocol × port rectangles.
fn disjoint(local: IpAddr, boxes: &[Box2]) -> Vec<Range> {
    if boxes.is_empty() {
        return Vec::new();
    }
    let v4 = local.is_ipv4();
    let mut cuts: Vec<u32> = boxes.iter().flat_map(|b| [b.pp.0, b.pp.1 + 1]).collect();
    cuts.sort_unstable();
    cuts.dedup();
    // (pp first, pp last, merged peer ranges)
    let mut pieces: Vec<(u32, u32, Spans)> = Vec::new();
    for w in cuts.windows(2) {
        let (first, last) = (w[0], w[1] - 1);
        let mut peers: Vec<(u128, u128)> = boxes
            .iter()
            .filter(|b| b.pp.0 <= first && last <= b.pp.1)
            .map(|b| b.peer)
            .collect();
        if peers.is_empty() {
            continue;
        }
        peers.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::new();
        for (lo, hi) in peers {
            match merged.last_mut() {
                Some(m) if lo <= m.1.saturating_add(1) => m.1 = m.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        match pieces.last_mut() {
            Some(p) if p.1 + 1 == first && p.2 == merged => p.1 = last,
            _ => pieces.push((first, last, merged)),
        }
    }
    let mut out = Vec::new();
    for (first, last, peers) in pieces {
        for (proto, port) in rectangles(first, last) {
            for &(lo, hi) in &peers {
                out.push(Range {
                    local,
                    peer: (from_u128(lo, v4), from_u128(hi, v4)),
                    proto,
                    port,
                });
            }
        }
    }
    out
}

/// The (protocol, port) pairs from `first` to `last` as at most three rectangles of a
/// protocol range × a port range.
fn rectangles(first: u32, last: u32) -> Vec<((u8, u8), (u16, u16))> {
    let split = |v: u32| ((v >> 16) as u8, (v & 0xffff) as u16);
    let ((p1, port1), (p2, port2)) = (split(first), split(last));
    if p1 == p2 {
        return vec![((p1, p1), (port1, port2))];
    }
    let mut out = Vec::new();
    let mut full_first = p1;
    if port1 != 0 {
        out.push(((p1, p1), (port1, u16::MAX)));
        full_first = p1 + 1;
    }
    let mut full_last = p2;
    let mut tail = None;
    if port2 != u16::MAX {
        tail = Some(((p2, p2), (0, port2)));
        full_last = p2 - 1;
    }
    if full_first <= full_last {
        out.push(((full_first, full_last), (0, u16::MAX)));
    }
    out.extend(tail);
    out
}
