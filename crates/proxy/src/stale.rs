//! Which UDP conntrack entries a change leaves pointing at endpoints that are gone.
//!
//! UDP has no connection to reset: a client that keeps sending from the same port
//! keeps matching its conntrack entry, whose NAT still names the old endpoint, and is
//! black-holed until the entry times out (kube-proxy's long-lived bug family, k/k
//! #19029 and after). So for every endpoint a UDP service port no longer uses, the
//! entries from its front ends (ClusterIPs, external and load-balancer IPs, node
//! port) to it are deleted after the sync.

use std::net::IpAddr;

use netlink::conntrack::Filter;

use crate::ruleset::usable;
use crate::view::{Protocol, Service, ServicePort};

fn endpoints(svc: &Service, sp: &ServicePort) -> Vec<(IpAddr, u16)> {
    usable(svc.endpoints.iter())
        .into_iter()
        .filter_map(|e| Some((e.address, e.port_for(sp)?)))
        .collect()
}

/// The conntrack filters for the UDP flows of `old` whose endpoint `new` (the same
/// service after the change, `None` when deleted) no longer balances to.
pub(crate) fn udp(old: &Service, new: Option<&Service>) -> Vec<Filter> {
    let mut out = Vec::new();
    for sp in old.ports.iter().filter(|p| p.protocol == Protocol::Udp) {
        let now: Vec<(IpAddr, u16)> = new
            .and_then(|n| {
                n.ports
                    .iter()
                    .find(|p| p.name == sp.name && p.protocol == sp.protocol && p.port == sp.port)
                    .map(|p| endpoints(n, p))
            })
            .unwrap_or_default();
        for (ep, ep_port) in endpoints(old, sp) {
            if now.contains(&(ep, ep_port)) {
                continue;
            }
            let front_ends = old
                .cluster_ips
                .iter()
                .chain(&old.external_ips)
                .chain(&old.load_balancer_ips)
                .filter(|ip| ip.is_ipv4() == ep.is_ipv4());
            for ip in front_ends {
                out.push(Filter {
                    proto: Protocol::Udp.number(),
                    orig_dst: Some(*ip),
                    orig_dport: Some(sp.port),
                    reply_src: ep,
                    reply_sport: Some(ep_port),
                });
            }
            if let Some(np) = sp.node_port {
                out.push(Filter {
                    proto: Protocol::Udp.number(),
                    orig_dst: None,
                    orig_dport: Some(np),
                    reply_src: ep,
                    reply_sport: Some(ep_port),
                });
            }
        }
    }
    out
}
