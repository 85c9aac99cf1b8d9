//! Which agents are alive: UDP heartbeats between the nodes' underlay addresses.
//!
//! Every agent sends a small datagram to every other Node's first InternalIP each
//! `interval` (100 ms by default) and counts a node alive while it heard a heartbeat
//! from it within `dead_after` (500 ms). The heartbeat carries a `ready` flag: an agent
//! says it is ready to answer only once its view of the cluster is whole and it has
//! been up for `dead_after` (long enough to have heard every live peer), so that a
//! node that comes back is counted by the others at the moment it starts answering,
//! not before (nobody answers in between) and not after (two would answer).
//!
//! A heartbeat is accepted only from an address of the Node it names. There is no
//! authentication: like MetalLB's memberlist without a secret, anyone on the underlay
//! who can forge a node's source address can keep it alive.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::announce::View;

const MAGIC: &[u8; 4] = b"KWL2";
const VERSION: u8 = 1;

/// A heartbeat datagram: magic, version, flags (bit 0: ready), name length, name.
pub fn encode(node: &str, ready: bool) -> Vec<u8> {
    let name = node.as_bytes();
    let len = name.len().min(255);
    let mut b = Vec::with_capacity(7 + len);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&[VERSION, u8::from(ready), len as u8]);
    b.extend_from_slice(&name[..len]);
    b
}

/// The node name and ready flag of a heartbeat, if `b` is one.
pub fn decode(b: &[u8]) -> Option<(&str, bool)> {
    if b.get(..4)? != MAGIC || *b.get(4)? != VERSION {
        return None;
    }
    let ready = b.get(5)? & 1 == 1;
    let len = usize::from(*b.get(6)?);
    let name = std::str::from_utf8(b.get(7..7 + len)?).ok()?;
    Some((name, ready))
}

/// What this agent has heard.
#[derive(Debug)]
pub struct Members {
    me: String,
    started: Instant,
    dead_after: Duration,
    /// The last ready heartbeat from each node.
    heard: BTreeMap<String, Instant>,
}

impl Members {
    pub fn new(me: &str, now: Instant, dead_after: Duration) -> Members {
        Members {
            me: me.to_owned(),
            started: now,
            dead_after,
            heard: BTreeMap::new(),
        }
    }

    /// Whether this agent may answer: its view is whole and it has been up long
    /// enough to have heard every live peer.
    pub fn ready(&self, view: &View, now: Instant) -> bool {
        view.synced && now.duration_since(self.started) >= self.dead_after
    }

    /// Takes in a heartbeat from `from`; returns whether it changed whether `node` is
    /// alive, so that the caller re-elects at once.
    pub fn heard(
        &mut self,
        view: &View,
        from: IpAddr,
        node: &str,
        ready: bool,
        now: Instant,
    ) -> bool {
        let from = canonical(from);
        let known = view
            .nodes
            .get(node)
            .is_some_and(|n| n.internal_ips.contains(&from));
        if !known || node == self.me {
            return false;
        }
        if !ready {
            return self.heard.remove(node).is_some_and(|t| self.fresh(t, now));
        }
        let was = self.heard.insert(node.to_owned(), now);
        !was.is_some_and(|t| self.fresh(t, now))
    }

    fn fresh(&self, t: Instant, now: Instant) -> bool {
        now.duration_since(t) < self.dead_after
    }

    /// The nodes alive now: this one (once ready) and those heard from lately.
    pub fn alive(&self, view: &View, now: Instant) -> BTreeSet<String> {
        let mut alive: BTreeSet<String> = self
            .heard
            .iter()
            .filter(|(_, t)| self.fresh(**t, now))
            .map(|(n, _)| n.clone())
            .collect();
        if self.ready(view, now) {
            alive.insert(self.me.clone());
        }
        alive
    }

    /// Where to send heartbeats: the first InternalIP of every other node.
    pub fn peers(&self, view: &View) -> Vec<IpAddr> {
        view.nodes
            .values()
            .filter(|n| n.name != self.me)
            .filter_map(|n| n.internal_ips.first().copied())
            .collect()
    }
}

/// An IPv4 address as itself, not IPv4-mapped (as a dual-stack socket reports it).
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::announce::Node;

    fn view() -> View {
        let mut v = View {
            synced: true,
            ..Default::default()
        };
        for (name, ip) in [("node-1", "198.18.0.11"), ("node-2", "198.18.0.12")] {
            v.nodes.insert(
                name.into(),
                Node {
                    name: name.into(),
                    ready: true,
                    internal_ips: vec![ip.parse().unwrap()],
                    ..Default::default()
                },
            );
        }
        v
    }

    #[test]
    fn heartbeats_round_trip_and_garbage_is_refused() {
        assert_eq!(decode(&encode("node-1", true)), Some(("node-1", true)));
        assert_eq!(decode(&encode("node-2", false)), Some(("node-2", false)));
        assert_eq!(decode(b"KWL2"), None);
        assert_eq!(decode(b"XXXX\x01\x01\x01a"), None);
        assert_eq!(decode(b"KWL2\x01\x01\x05ab"), None, "short name");
    }

    #[test]
    fn alive_while_heard_dead_after_silence() {
        let v = view();
        let t0 = Instant::now();
        let dead = Duration::from_millis(500);
        let mut m = Members::new("node-1", t0, dead);
        assert!(m.alive(&v, t0).is_empty(), "not ready before dead_after");
        let from = "::ffff:198.18.0.12".parse().unwrap();
        assert!(m.heard(&v, from, "node-2", true, t0));
        assert!(
            !m.heard(&v, from, "node-2", true, t0 + dead / 2),
            "already alive"
        );
        let later = t0 + dead;
        assert_eq!(
            m.alive(&v, later),
            BTreeSet::from(["node-1".to_owned(), "node-2".to_owned()])
        );
        assert_eq!(
            m.alive(&v, later + dead),
            BTreeSet::from(["node-1".to_owned()]),
            "silent for dead_after: dead"
        );
        // A node that restarts says it is not ready yet: dead at once.
        assert!(m.heard(&v, from, "node-2", true, later + dead));
        assert!(m.heard(&v, from, "node-2", false, later + dead));
        assert!(!m.alive(&v, later + dead).contains("node-2"));
    }

    #[test]
    fn heartbeats_count_only_from_the_nodes_own_address() {
        let v = view();
        let t0 = Instant::now();
        let mut m = Members::new("node-1", t0, Duration::from_millis(500));
        assert!(!m.heard(&v, "198.18.0.99".parse().unwrap(), "node-2", true, t0));
        assert!(!m.heard(&v, "198.18.0.12".parse().unwrap(), "node-9", true, t0));
        assert!(m.alive(&v, t0).is_empty());
        assert_eq!(m.peers(&v), ["198.18.0.12".parse::<IpAddr>().unwrap()]);
    }
}
