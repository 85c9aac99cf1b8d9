//! The reference: whether network policy (the admin tiers and NetworkPolicy) allows a
//! connection, written straight from the APIs' documentation, with no regard for cost. The compiled sets
//! ([`crate::compile`]) must agree with it on every connection; a property test checks
//! that on random clusters.

use std::net::IpAddr;

use crate::admin::{Action, AdminPeer, AdminRule, Tier};
use crate::model::{Cluster, Peer, Pod, PortRef, PortRule, Protocol, Rule};

/// A connection's first packet, as policy judges it: after DNAT (the endpoint, not the
/// Service), before any SNAT of the node sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port (TCP, UDP and SCTP; `None` for protocols without ports).
    pub port: Option<u16>,
}

/// Whether the source's egress policies and the destination's ingress policies both
/// allow `c`.
pub fn allows(cluster: &Cluster, c: &Connection) -> bool {
    egress_allows(cluster, c) && ingress_allows(cluster, c)
}

/// Whether the source pod's policies allow `c` out (yes when the source is not a pod).
pub fn egress_allows(cluster: &Cluster, c: &Connection) -> bool {
    let Some(src) = cluster.pod_by_ip(c.src) else {
        return true;
    };
    let dst_pod = cluster.pod_by_ip(c.dst);
    tiers(
        cluster,
        src,
        false,
        c.dst,
        dst_pod,
        c,
        network_policy_egress(cluster, src, dst_pod, c),
    )
}

/// Whether the destination pod's policies allow `c` in.
pub fn ingress_allows(cluster: &Cluster, c: &Connection) -> bool {
    let Some(dst) = cluster.pod_by_ip(c.dst) else {
        return true;
    };
    tiers(
        cluster,
        dst,
        true,
        c.src,
        Some(dst),
        c,
        network_policy_ingress(cluster, dst, c),
    )
}

/// The tiers in their order, for `pod`'s side of `c` (`ingress`: `pod` is the
/// destination): the Admin tier's first matching rule, if it Accepts or Denies; else
/// NetworkPolicy's verdict (`np`), if NetworkPolicy isolates the pod; else the Baseline
/// tier's first matching rule, if it Denies; else allowed.
fn tiers(
    cluster: &Cluster,
    pod: &Pod,
    ingress: bool,
    peer_ip: IpAddr,
    dst_pod: Option<&Pod>,
    c: &Connection,
    np: Option<bool>,
) -> bool {
    let first = |tier| {
        cluster
            .admin_rules(pod, tier, ingress)
            .into_iter()
            .find(|r| admin_rule_matches(cluster, r, peer_ip, dst_pod, c))
            .map(|r| r.action)
    };
    match first(Tier::Admin) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
    if let Some(verdict) = np {
        return verdict;
    }
    first(Tier::Baseline) != Some(Action::Deny)
}

/// The first rule of tier `tier` for `pod`'s side of `c` (`ingress`: `pod` is the
/// destination) that matches, with its policy's name.
pub fn first_admin_rule<'a>(
    cluster: &'a Cluster,
    pod: &Pod,
    tier: Tier,
    ingress: bool,
    c: &Connection,
) -> Option<(&'a str, &'a AdminRule)> {
    let (peer_ip, dst_pod) = if ingress {
        (c.src, Some(pod))
    } else {
        (c.dst, cluster.pod_by_ip(c.dst))
    };
    cluster
        .admin_rules_named(pod, tier, ingress)
        .into_iter()
        .find(|(_, r)| admin_rule_matches(cluster, r, peer_ip, dst_pod, c))
}

fn admin_rule_matches(
    cluster: &Cluster,
    r: &AdminRule,
    peer_ip: IpAddr,
    dst_pod: Option<&Pod>,
    c: &Connection,
) -> bool {
    let peer_ok = r.peers.iter().any(|p| match p {
        AdminPeer::Pods(_) => cluster
            .pod_by_ip(peer_ip)
            .is_some_and(|pod| cluster.admin_peer_selects(p, pod)),
        AdminPeer::Networks(nets) => nets.iter().any(|n| n.contains(&peer_ip)),
        AdminPeer::Nodes(sel) => cluster
            .nodes
            .values()
            .any(|n| sel.selects(&n.labels) && n.ips.contains(&peer_ip)),
        AdminPeer::Everyone => true,
    });
    let port_ok = r
        .protocols
        .as_ref()
        .is_none_or(|ps| ps.iter().any(|p| port_matches(p, dst_pod, c)));
    peer_ok && port_ok
}

/// NetworkPolicy's verdict on `c` leaving `src`: `None` when no policy isolates it for
/// egress.
fn network_policy_egress(
    cluster: &Cluster,
    src: &Pod,
    dst_pod: Option<&Pod>,
    c: &Connection,
) -> Option<bool> {
    let mut isolated = false;
    for policy in cluster.policies_for(src) {
        let Some(rules) = &policy.egress else {
            continue;
        };
        isolated = true;
        if rules
            .iter()
            .any(|r| rule_allows(cluster, &policy.namespace, r, c.dst, dst_pod, c))
        {
            return Some(true);
        }
    }
    isolated.then_some(false)
}

/// NetworkPolicy's verdict on `c` entering `dst`: `None` when no policy isolates it for
/// ingress.
fn network_policy_ingress(cluster: &Cluster, dst: &Pod, c: &Connection) -> Option<bool> {
    let mut isolated = false;
    for policy in cluster.policies_for(dst) {
        let Some(rules) = &policy.ingress else {
            continue;
        };
        isolated = true;
        if rules
            .iter()
            .any(|r| rule_allows(cluster, &policy.namespace, r, c.src, Some(dst), c))
        {
            return Some(true);
        }
    }
    isolated.then_some(false)
}

/// Whether rule `r` of a policy in `policy_ns` allows `c` with the peer at `peer_ip`;
/// named ports are looked up in the destination pod.
fn rule_allows(
    cluster: &Cluster,
    policy_ns: &str,
    r: &Rule,
    peer_ip: IpAddr,
    dst_pod: Option<&Pod>,
    c: &Connection,
) -> bool {
    let peer_ok = r.peers.is_empty()
        || r.peers
            .iter()
            .any(|p| peer_matches(cluster, policy_ns, p, peer_ip));
    let port_ok = r.ports.is_empty() || r.ports.iter().any(|p| port_matches(p, dst_pod, c));
    peer_ok && port_ok
}

fn peer_matches(cluster: &Cluster, policy_ns: &str, peer: &Peer, ip: IpAddr) -> bool {
    match peer {
        Peer::Block { cidr, except } => {
            cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
        }
        Peer::Pods { .. } => cluster
            .pod_by_ip(ip)
            .is_some_and(|pod| cluster.peer_selects(policy_ns, peer, pod)),
    }
}

fn port_matches(p: &PortRule, dst_pod: Option<&Pod>, c: &Connection) -> bool {
    if c.proto != p.protocol.number() {
        return false;
    }
    let Some(port) = c.port else {
        return false;
    };
    match &p.port {
        PortRef::All => true,
        PortRef::Range(first, last) => (*first..=*last).contains(&port),
        PortRef::Named(name) => dst_pod.and_then(|d| d.named_port(name, p.protocol)) == Some(port),
    }
}

/// Whether the protocol carries ports policy can match.
pub fn has_ports(proto: u8) -> bool {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .iter()
        .any(|p| p.number() == proto)
}
