//! Traffic capture for a meshed pod: one nftables table inside the pod's network
//! namespace that sends its TCP through the pod's mesh proxy, loaded by the plugin at
//! ADD (as linkerd-cni does), so the app's containers need no capability.
//!
//! The agent says whether a pod is meshed, and how, in its answer on the policy socket
//! ([`crate::policy::Answer::capture`]): it reads that from the pod's spec, which the
//! mesh's injector wrote.
//!
//! - Inbound: TCP arriving for the pod goes to the proxy's inbound port, except to the
//!   ports in `skipInboundPorts` and to the inbound port itself (where other proxies
//!   connect with mutual TLS).
//! - Outbound: TCP the pod sends goes to the proxy's outbound port, except what the
//!   proxy's own user sends (the proxy's connections onward), what stays on loopback
//!   (including the pod's own addresses), and the ports in `skipOutboundPorts`.
//!
//! The proxy reads each connection's original destination with `SO_ORIGINAL_DST`. The
//! table dies with the namespace, so DEL has nothing to remove.

use std::path::Path;

use netlink::nft::{
    Batch, Chain, ChainType, Datum, Family, Field, Hook, NftSocket, Rule, Table, priority, proto,
};
use serde::{Deserialize, Serialize};

use crate::spec::CniError;

/// The table's name in the pod's namespace.
pub const TABLE: &str = "kubewire-mesh";

/// The name of the proxy's container: a pod that has one is meshed.
pub const PROXY_CONTAINER: &str = "kubewire-proxy";
/// The proxy's user when its container says none (Linkerd's).
pub const DEFAULT_PROXY_UID: u32 = 2102;
/// Where the proxy accepts inbound connections, and other proxies' mutual TLS.
pub const INBOUND_PORT: u16 = 4143;
/// Where the proxy accepts the pod's outbound connections.
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port (readiness, metrics): never captured.
pub const ADMIN_PORT: u16 = 4191;
/// Annotations naming inbound ports left alone: ours, and Linkerd's so that existing
/// manifests keep working. Comma-separated ports and ranges (`25,8000-8010`).
pub const SKIP_INBOUND_ANNOTATIONS: [&str; 2] = [
    "config.kubewire.io/skip-inbound-ports",
    "config.linkerd.io/skip-inbound-ports",
];
/// Annotations naming outbound ports left alone.
pub const SKIP_OUTBOUND_ANNOTATIONS: [&str; 2] = [
    "config.kubewire.io/skip-outbound-ports",
    "config.linkerd.io/skip-outbound-ports",
];

/// How a meshed pod's traffic is captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capture {
    /// The user the proxy runs as: its own connections are not captured.
    pub proxy_uid: u32,
    /// Where the proxy accepts the pod's inbound connections.
    pub inbound_port: u16,
    /// Where the proxy accepts the pod's outbound connections.
    pub outbound_port: u16,
    /// Inbound ports left alone (the proxy's admin port, for probes and scrapes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound ports left alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skip_outbound_ports: Vec<u16>,
}

impl Capture {
    /// The capture of a meshed pod whose proxy runs as `proxy_uid`, with the ports its
    /// annotations skip (malformed entries are ignored, as linkerd-cni does).
    pub fn for_pod<'a>(proxy_uid: u32, annotation: impl Fn(&str) -> Option<&'a str>) -> Capture {
        let ports = |names: [&str; 2]| -> Vec<u16> {
            let mut out: Vec<u16> = names
                .iter()
                .filter_map(|n| annotation(n))
                .flat_map(parse_ports)
                .collect();
            out.sort_unstable();
            out.dedup();
            out
        };
        let mut skip_inbound_ports = ports(SKIP_INBOUND_ANNOTATIONS);
        skip_inbound_ports.push(ADMIN_PORT);
        skip_inbound_ports.sort_unstable();
        skip_inbound_ports.dedup();
        Capture {
            proxy_uid,
            inbound_port: INBOUND_PORT,
            outbound_port: OUTBOUND_PORT,
            skip_inbound_ports,
            skip_outbound_ports: ports(SKIP_OUTBOUND_ANNOTATIONS),
        }
    }

    /// The batch that (re)makes the table: it is destroyed first, so a retried ADD
    /// loads exactly one.
    pub fn batch(&self) -> Batch {
        let table = Table::new(Family::Inet, TABLE);
        let rule = |chain: &str| Rule::new(Family::Inet, TABLE, chain);
        let ports = |ports: &[u16]| -> Vec<Vec<Datum>> {
            ports.iter().map(|p| vec![Datum::Port(*p)]).collect()
        };
        let mut skip_in = self.skip_inbound_ports.clone();
        skip_in.push(self.inbound_port);
        skip_in.sort_unstable();
        skip_in.dedup();
        let mut b = Batch::new();
        b.destroy_table(&table)
            .add_table(&table)
            .add_chain(&Chain::new(Family::Inet, TABLE, "inbound").hook(
                ChainType::Nat,
                Hook::Prerouting,
                priority::DSTNAT,
            ))
            .add_chain(&Chain::new(Family::Inet, TABLE, "outbound").hook(
                ChainType::Nat,
                Hook::Output,
                priority::DSTNAT,
            ))
            .add_rule(
                &rule("inbound")
                    .match_l4proto(proto::TCP)
                    .match_any(&[Field::Dport], ports(&skip_in))
                    .ret(),
            )
            .add_rule(
                &rule("inbound")
                    .match_l4proto(proto::TCP)
                    .redirect(self.inbound_port),
            )
            .add_rule(&rule("outbound").match_skuid(self.proxy_uid).ret())
            .add_rule(&rule("outbound").match_oifname("lo").ret());
        if !self.skip_outbound_ports.is_empty() {
            b.add_rule(
                &rule("outbound")
                    .match_l4proto(proto::TCP)
                    .match_any(&[Field::Dport], ports(&self.skip_outbound_ports))
                    .ret(),
            );
        }
        b.add_rule(
            &rule("outbound")
                .match_l4proto(proto::TCP)
                .redirect(self.outbound_port),
        );
        b
    }
}

/// Loads `capture`'s table into the namespace at `netns`.
pub fn apply(netns: &Path, capture: &Capture) -> Result<(), CniError> {
    NftSocket::new_in_path(netns)
        .and_then(|mut socket| socket.apply(&capture.batch()))
        .map_err(|e| {
            let mut err = CniError::from(e);
            err.msg = format!("loading the mesh's traffic capture: {}", err.msg);
            err
        })
}

/// The ports of a list such as `25,587,8000-8010`; entries that are not ports or
/// ranges of them are skipped, and a range holds at most 4096 ports.
pub fn parse_ports(list: &str) -> Vec<u16> {
    let mut out = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('-') {
            None => out.extend(entry.parse::<u16>().ok().filter(|p| *p != 0)),
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<u16>(), b.trim().parse::<u16>())
                    && a != 0
                    && a <= b
                    && b - a < 4096
                {
                    out.extend(a..=b);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges_parse_and_garbage_is_skipped() {
        assert_eq!(parse_ports("25, 587,3306"), [25, 587, 3306]);
        assert_eq!(parse_ports("8000-8003"), [8000, 8001, 8002, 8003]);
        assert_eq!(parse_ports("x,0,70000,9-3,1-65535,22"), [22]);
        assert!(parse_ports("").is_empty());
    }

    #[test]
    fn a_pods_annotations_skip_ports_and_the_admin_port_is_always_skipped() {
        let annotations = std::collections::BTreeMap::from([
            ("config.linkerd.io/skip-inbound-ports", "8080"),
            ("config.kubewire.io/skip-outbound-ports", "5432,6379"),
        ]);
        let c = Capture::for_pod(2102, |k| annotations.get(k).copied());
        assert_eq!(c.skip_inbound_ports, [ADMIN_PORT, 8080]);
        assert_eq!(c.skip_outbound_ports, [5432, 6379]);
        assert_eq!((c.inbound_port, c.outbound_port), (4143, 4140));
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["proxyUid"], 2102);
        assert_eq!(serde_json::from_value::<Capture>(json).unwrap(), c);
    }
}
