//! Denied packets, logged with their reason: the `*-denied-*` chains send a copy of
//! each denied packet (rate-limited) to an NFLOG group of the node ([`ruleset::Log`]);
//! a thread of the agent reads the group, and each packet is logged with the pods it
//! was between and the policy that denied it, so an operator can answer "why is this
//! blocked" from the agent's log.

use std::net::IpAddr;
use std::time::Duration;

use netlink::nflog::{Flow, Logged, NflogSocket};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::admin::{Action, Tier};
use crate::compile::Direction;
use crate::eval::{self, Connection};
use crate::model::Cluster;
use crate::ruleset::{DeniedBy, Log};

/// Bytes of each packet copied: the IP and transport headers.
const COPY: u32 = 96;

/// Reads the NFLOG group of `log` on a thread of its own (in the calling thread's
/// namespace) and sends what it reads; `None` (and a warning) when the group cannot be
/// bound, e.g. another program holds it: packets are still counted.
pub fn read(log: Log) -> Option<mpsc::Receiver<Logged>> {
    let mut socket = match NflogSocket::bind(log.group, COPY) {
        Ok(s) => s,
        Err(e) => {
            warn!(group = log.group, error = %k8s::ErrorChain(&e), "denied packets are counted but not logged");
            return None;
        }
    };
    if let Err(e) = socket.set_timeout(Some(Duration::from_secs(1))) {
        warn!(error = %k8s::ErrorChain(&e), "denied packets are counted but not logged");
        return None;
    }
    let (tx, rx) = mpsc::channel(256);
    let spawned = std::thread::Builder::new()
        .name("policy-nflog".into())
        .spawn(move || {
            while !tx.is_closed() {
                match socket.recv() {
                    // A full channel drops the packet: logging never holds the reader.
                    Ok(packets) => packets.into_iter().for_each(|p| {
                        let _ = tx.try_send(p);
                    }),
                    Err(e) => {
                        warn!(error = %k8s::ErrorChain(&e), "reading denied packets; no more are logged");
                        return;
                    }
                }
            }
        });
    match spawned {
        Ok(_) => Some(rx),
        Err(e) => {
            warn!(error = %e, "denied packets are counted but not logged");
            None
        }
    }
}

/// Logs `packet` with the reason the cluster gives for its denial.
pub fn report(cluster: &Cluster, packet: &Logged) {
    let (Some((d, by)), Some(flow)) = (DeniedBy::parse(&packet.prefix), packet.flow()) else {
        return;
    };
    let name = |ip: IpAddr| match cluster.pod_by_ip(ip) {
        Some(p) => format!("{}/{} ({ip})", p.namespace, p.name),
        None => ip.to_string(),
    };
    info!(
        from = %name(flow.src),
        to = %name(flow.dst),
        protocol = %protocol_name(flow.proto),
        port = %flow.dport.map_or_else(String::new, |p| p.to_string()),
        reason = %reason(cluster, &flow, d, by),
        "network policy denied a connection"
    );
}

/// Why `flow` was denied on its `d` side by `by`, in words.
pub fn reason(cluster: &Cluster, flow: &Flow, d: Direction, by: DeniedBy) -> String {
    let ingress = d == Direction::Ingress;
    let local_ip = if ingress { flow.dst } else { flow.src };
    let Some(pod) = cluster.pod_by_ip(local_ip) else {
        return format!("{} of {local_ip}, a pod no longer known", side(d));
    };
    let who = format!("{} of {}/{}", side(d), pod.namespace, pod.name);
    let c = Connection {
        src: flow.src,
        dst: flow.dst,
        proto: flow.proto,
        port: flow.dport.filter(|_| eval::has_ports(flow.proto)),
    };
    match by {
        DeniedBy::Admin | DeniedBy::Baseline => {
            let tier = if by == DeniedBy::Admin {
                Tier::Admin
            } else {
                Tier::Baseline
            };
            match eval::first_admin_rule(cluster, pod, tier, ingress, &c) {
                Some((policy, rule)) if rule.action == Action::Deny => format!(
                    "{who}: ClusterNetworkPolicy {policy} ({tier:?} tier), rule {}",
                    rule.name
                ),
                // The cluster changed since the packet.
                _ => format!("{who}: the {tier:?} tier"),
            }
        }
        DeniedBy::NetworkPolicy => {
            let names: Vec<String> = cluster
                .policies_for(pod)
                .filter(|p| {
                    if ingress {
                        p.ingress.is_some()
                    } else {
                        p.egress.is_some()
                    }
                })
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            format!(
                "{who}: isolated by NetworkPolicy {}, and no rule of them allows it",
                names.join(", ")
            )
        }
    }
}

fn side(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}
