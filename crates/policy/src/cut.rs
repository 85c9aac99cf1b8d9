//! Cutting connections a policy no longer allows.
//!
//! The table judges a connection's first packet only; later packets pass on conntrack
//! state. So when a change allows less than before (a new policy, a label that a
//! policy now selects, a peer gone from a rule), the conntrack entries of connections
//! the new verdicts deny are deleted: the connection's next packet has no entry, is
//! judged as a new connection, and dropped. TCP connections stall and time out as if
//! the peer had vanished (no reset is sent), UDP flows stop, as Calico and Cilium do.

use std::net::IpAddr;

use netlink::conntrack::Entry;

use crate::compile::{Desired, Sets};
use crate::eval::has_ports;

/// Whether `new` may allow less than `old` anywhere: a pod isolated that was not, an
/// allowing element gone, a denying one come (a range cut differently counts too: the
/// cut then finds nothing to delete).
pub fn narrower(old: &Desired, new: &Desired) -> bool {
    let less = |o: &Sets, n: &Sets| {
        n.isolated.difference(&o.isolated).next().is_some()
            || o.ports.difference(&n.ports).next().is_some()
            || o.peers.difference(&n.peers).next().is_some()
            || o.ranges.difference(&n.ranges).next().is_some()
            || o.admin_accept.difference(&n.admin_accept).next().is_some()
            || n.admin_deny.difference(&o.admin_deny).next().is_some()
            || n.baseline_deny
                .difference(&o.baseline_deny)
                .next()
                .is_some()
    };
    less(&old.ingress, &new.ingress) || less(&old.egress, &new.egress)
}

/// Whether `desired` allows the connection of conntrack entry `e`: from its original
/// source to where it went after DNAT (the reply's source and port), judged as the
/// table judges its first packet.
pub fn allows(desired: &Desired, e: &Entry) -> bool {
    let (Some(src), Some(dst)) = (e.orig.src, e.reply.src) else {
        return true;
    };
    allows_flow(desired, src, dst, e.orig.proto, e.reply.sport)
}

/// [`allows`] for a flow from `src` to `dst`, `port` being the destination port after
/// DNAT.
pub fn allows_flow(
    desired: &Desired,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    port: Option<u16>,
) -> bool {
    let port = port.filter(|_| has_ports(proto));
    desired.egress.admits(src, dst, proto, port) && desired.ingress.admits(dst, src, proto, port)
}

/// Deletes the conntrack entries (both families, the calling thread's namespace) of
/// connections `desired` does not allow; returns how many.
pub fn cut(desired: &Desired) -> netlink::Result<usize> {
    let mut deleted = 0;
    for ipv6 in [false, true] {
        deleted += netlink::conntrack::delete_where(ipv6, |e| !allows(desired, e))?;
    }
    Ok(deleted)
}
