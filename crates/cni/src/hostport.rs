//! The `portMappings` capability: hostPort, in nftables, in the node's namespace.
//!
//! The runtime passes `runtimeConfig.portMappings` (`hostPort`, `containerPort`,
//! `protocol`, optional `hostIP`) to ADD. The bindings of every pod of the network live
//! in the IPAM state, changed under the same lock, and each change rebuilds one small
//! table per family in one nf_tables transaction:
//!
//! ```text
//! table ip kubewire-hostports {
//!   chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//!   chain output      { type nat hook output priority dstnat; fib daddr type local jump hostports }
//!   chain hostports {
//!     ip saddr 10.244.1.5 meta l4proto tcp th dport 8080 meta mark set mark | 0x2000  # hairpin
//!     meta l4proto tcp th dport 8080 dnat to 10.244.1.5:80
//!   }
//!   chain postrouting { type nat hook postrouting priority srcnat; meta mark & 0x2000 == 0x2000 masquerade }
//! }
//! ```
//!
//! A pod reaching its own hostPort through the node (hairpin) is masqueraded so the
//! reply comes back through the node; everyone else keeps their source address.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netlink::nft::{Batch, Chain, ChainType, Family, Hook, Rule, Table, Verdict, priority, proto};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::spec::{Attachment, CniError, code};

/// The tables' name.
pub const TABLE: &str = "kubewire-hostports";
/// The packet mark bit for hairpin traffic (kube-proxy uses 0x4000; this is another).
pub const HAIRPIN_MARK: u32 = 0x2000;

/// One hostPort binding of one pod.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Binding {
    /// The pod.
    pub attachment: Attachment,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    /// The node's port.
    pub host_port: u16,
    /// Only this node address, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<IpAddr>,
    /// The pod's address of the binding's family.
    pub container_ip: IpAddr,
    /// The pod's port.
    pub container_port: u16,
}

fn invalid(msg: String) -> CniError {
    CniError::new(code::INVALID_NETWORK_CONFIG, msg, "")
}

fn port(v: &Value, field: &str, i: usize) -> Result<u16, CniError> {
    let n = v.get(field).and_then(Value::as_i64).ok_or_else(|| {
        invalid(format!(
            "runtimeConfig.portMappings[{i}].{field}: Required value"
        ))
    })?;
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| {
        invalid(format!("runtimeConfig.portMappings[{i}].{field}: Invalid value: {n}: must be between 1 and 65535"))
    })
}

/// Reads `runtimeConfig.portMappings` into bindings for a pod with `addresses`: one per
/// mapping and pod address family (or only the family of `hostIP`).
pub fn parse(
    runtime_config: Option<&Value>,
    attachment: &Attachment,
    addresses: &[IpAddr],
) -> Result<Vec<Binding>, CniError> {
    let Some(list) = runtime_config.and_then(|rc| rc.get("portMappings")) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| invalid("runtimeConfig.portMappings: must be a list".into()))?;
    let mut out = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let host_port = port(m, "hostPort", i)?;
        let container_port = port(m, "containerPort", i)?;
        let protocol = m
            .get("protocol")
            .and_then(Value::as_str)
            .unwrap_or("tcp")
            .to_ascii_lowercase();
        if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
            return Err(invalid(format!(
                "runtimeConfig.portMappings[{i}].protocol: Unsupported value: {protocol:?}: supported values: \"tcp\", \"udp\", \"sctp\""
            )));
        }
        let host_ip = match m.get("hostIP").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<IpAddr>().map_err(|_| {
                invalid(format!("runtimeConfig.portMappings[{i}].hostIP: Invalid value: {s:?}: must be an IP address"))
            })?),
        };
        for ip in addresses {
            if host_ip.is_some_and(|h| h.is_ipv4() != ip.is_ipv4()) {
                continue;
            }
            out.push(Binding {
                attachment: attachment.clone(),
                protocol: protocol.clone(),
                host_port,
                host_ip: host_ip.filter(|h| !h.is_unspecified()),
                container_ip: *ip,
                container_port,
            });
        }
    }
    Ok(out)
}

/// Fails if a new binding takes a (protocol, port, address) another pod holds.
pub fn check_conflicts(existing: &[Binding], new: &[Binding]) -> Result<(), CniError> {
    for n in new {
        for e in existing.iter().filter(|e| e.attachment != n.attachment) {
            let same_family = e.container_ip.is_ipv4() == n.container_ip.is_ipv4();
            let overlap = e.host_ip.is_none() || n.host_ip.is_none() || e.host_ip == n.host_ip;
            if same_family && overlap && e.protocol == n.protocol && e.host_port == n.host_port {
                return Err(CniError::new(
                    code::HOST_PORT_IN_USE,
                    format!(
                        "hostPort {}/{} is already used by container {}",
                        n.host_port, n.protocol, e.attachment.container_id
                    ),
                    "two pods on one node cannot share a hostPort; the scheduler normally keeps them apart",
                ));
            }
        }
    }
    Ok(())
}

fn proto_number(p: &str) -> u8 {
    match p {
        "udp" => proto::UDP,
        "sctp" => proto::SCTP,
        _ => proto::TCP,
    }
}

/// The batch that rebuilds both tables for `bindings` (add, delete, add each table, so
/// it applies whether or not they exist, in one transaction).
pub fn batch(bindings: &[Binding]) -> Batch {
    let mut batch = Batch::new();
    for family in [Family::Ip, Family::Ip6] {
        let table = Table::new(family, TABLE);
        batch
            .add_table(&table)
            .delete_table(&table)
            .add_table(&table);
        batch.add_chain(&Chain::new(family, TABLE, "hostports"));
        for (name, hook) in [("prerouting", Hook::Prerouting), ("output", Hook::Output)] {
            batch.add_chain(&Chain::new(family, TABLE, name).hook(
                ChainType::Nat,
                hook,
                priority::DSTNAT,
            ));
            batch.add_rule(
                &Rule::new(family, TABLE, name)
                    .match_fib_daddr_local()
                    .verdict(Verdict::Jump("hostports".into()))
                    .comment("to one of the node's addresses: the hostPort mappings"),
            );
        }
        batch.add_chain(&Chain::new(family, TABLE, "postrouting").hook(
            ChainType::Nat,
            Hook::Postrouting,
            priority::SRCNAT,
        ));
        batch.add_rule(
            &Rule::new(family, TABLE, "postrouting")
                .match_mark(HAIRPIN_MARK, HAIRPIN_MARK)
                .masquerade()
                .comment("a pod reaching its own hostPort"),
        );
        for b in bindings
            .iter()
            .filter(|b| b.container_ip.is_ipv4() == (family == Family::Ip))
        {
            let base = |rule: Rule| {
                let rule = rule
                    .match_l4proto(proto_number(&b.protocol))
                    .match_dport(b.host_port);
                match b.host_ip {
                    Some(ip) => rule.match_daddr(ipnet::IpNet::from(ip)),
                    None => rule,
                }
            };
            let comment = format!(
                "{} {}:{}",
                b.attachment.container_id, b.protocol, b.host_port
            );
            batch.add_rule(
                &base(
                    Rule::new(family, TABLE, "hostports")
                        .match_saddr(ipnet::IpNet::from(b.container_ip)),
                )
                .set_mark_bits(HAIRPIN_MARK)
                .comment(format!("{comment} hairpin")),
            );
            batch.add_rule(
                &base(Rule::new(family, TABLE, "hostports"))
                    .dnat(b.container_ip, Some(b.container_port))
                    .comment(comment),
            );
        }
    }
    batch
}

/// Applies [`batch`] in the caller's (the node's) namespace.
pub fn apply(bindings: &[Binding]) -> Result<(), CniError> {
    let mut socket = netlink::nft::NftSocket::new()?;
    socket.apply(&batch(bindings))?;
    Ok(())
}

/// How many rules each chain of the table of `family` holds for `bindings`, as
/// [`batch`] makes it: a jump in `prerouting` and `output`, the hairpin masquerade in
/// `postrouting`, and two rules per binding of the family in `hostports`.
pub fn rule_counts(bindings: &[Binding], family: Family) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = ["prerouting", "output", "postrouting"]
        .into_iter()
        .map(|c| (c.to_owned(), 1))
        .collect();
    let n = bindings
        .iter()
        .filter(|b| b.container_ip.is_ipv4() == (family == Family::Ip))
        .count();
    if n > 0 {
        counts.insert("hostports".to_owned(), 2 * n);
    }
    counts
}

/// Puts the tables back from the IPAM state when the kernel's lack rules of it (a
/// table deleted or flushed by hand, or by a firewall reload), under the network's
/// lock, so that no plugin changes the bindings meanwhile. Returns whether it did.
/// Nothing to do without bindings. Run by the agent at every resync: the plugin only
/// runs when a pod comes or goes.
pub fn repair(store: &crate::ipam::Store) -> Result<bool, CniError> {
    store.update(|st| {
        if st.hostports.is_empty() {
            return Ok(false);
        }
        let mut socket = netlink::nft::NftSocket::new()?;
        for family in [Family::Ip, Family::Ip6] {
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for r in socket.rules(family, TABLE)? {
                *counts.entry(r.chain).or_default() += 1;
            }
            if counts != rule_counts(&st.hostports, family) {
                socket.apply(&batch(&st.hostports))?;
                return Ok(true);
            }
        }
        Ok(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(id: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn mappings_become_one_binding_per_family() {
        let rc = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "TCP"}, {"hostPort": 53, "containerPort": 5353, "protocol": "udp", "hostIP": "198.18.0.11"}]});
        let ips: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        let b = parse(Some(&rc), &key("a"), &ips).unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].protocol, "tcp");
        assert_eq!(b[2].host_ip, Some("198.18.0.11".parse().unwrap()));
        assert!(parse(None, &key("a"), &ips).unwrap().is_empty());
    }

    #[test]
    fn bad_mappings_name_the_field() {
        let ips: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap()];
        for (rc, needle) in [
            (
                json!({"portMappings": [{"hostPort": 70000, "containerPort": 80}]}),
                "portMappings[0].hostPort: Invalid value: 70000",
            ),
            (
                json!({"portMappings": [{"hostPort": 80}]}),
                "portMappings[0].containerPort: Required value",
            ),
            (
                json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}),
                "protocol: Unsupported value",
            ),
            (
                json!({"portMappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "nope"}]}),
                "hostIP: Invalid value",
            ),
        ] {
            let err = parse(Some(&rc), &key("a"), &ips).unwrap_err();
            assert_eq!(err.code, code::INVALID_NETWORK_CONFIG);
            assert!(err.msg.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_taken_host_port_is_refused() {
        let ips: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap()];
        let rc = json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]});
        let a = parse(Some(&rc), &key("a"), &ips).unwrap();
        let b = parse(Some(&rc), &key("b"), &ips).unwrap();
        let err = check_conflicts(&a, &b).unwrap_err();
        assert_eq!(err.code, code::HOST_PORT_IN_USE);
        assert!(err.msg.contains("8080/tcp") && err.msg.contains("container a"));
        // The same pod again, or another protocol, is fine.
        check_conflicts(&a, &a).unwrap();
        let udp = parse(Some(&json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "udp"}]})), &key("b"), &ips).unwrap();
        check_conflicts(&a, &udp).unwrap();
    }

    #[test]
    fn the_batch_rebuilds_both_tables() {
        let ips: Vec<IpAddr> = vec!["10.244.1.5".parse().unwrap()];
        let b = parse(
            Some(&json!({"portMappings": [{"hostPort": 8080, "containerPort": 80}]})),
            &key("a"),
            &ips,
        )
        .unwrap();
        // Per family: 3 table messages, 4 chains, 2 jump rules, 1 masquerade rule; plus
        // two rules for the one IPv4 binding.
        assert_eq!(batch(&b).len(), 2 * 10 + 2);
        // What a listing of the rules must show.
        assert_eq!(rule_counts(&b, Family::Ip)["hostports"], 2);
        assert_eq!(rule_counts(&b, Family::Ip6).get("hostports"), None);
        let rules: usize = rule_counts(&b, Family::Ip).values().sum::<usize>()
            + rule_counts(&b, Family::Ip6).values().sum::<usize>();
        assert_eq!(rules, 2 * 3 + 2);
    }
}
