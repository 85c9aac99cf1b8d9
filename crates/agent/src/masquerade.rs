//! Masquerading pod traffic that leaves the pod network, never pod-to-pod traffic.
//!
//! One small table per family, `kubewire-pods`, rebuilt whole and atomically whenever
//! the cluster's pod CIDRs change (nodes join or leave):
//!
//! ```text
//! table ip kubewire-pods {
//!     set pod-cidrs { type ipv4_addr; flags interval; elements = { 10.244.1.0/24, ... } }
//!     chain postrouting { type nat hook postrouting priority srcnat;
//!         ip saddr @pod-cidrs ip daddr != @pod-cidrs masquerade }
//! }
//! ```
//!
//! Traffic between pods keeps its source address on every node; traffic from a pod to
//! a node address or to anything outside leaves with the node's address, so replies
//! find their way back without the outside knowing any pod route.

use ipnet::IpNet;
use netlink::nft::{
    Batch, Chain, ChainType, Family, Field, Hook, KeyType, Rule, Set, SetElement, Table, priority,
};

/// The table's name (in both the `ip` and `ip6` families).
pub const TABLE: &str = "kubewire-pods";
const SET: &str = "pod-cidrs";
const CHAIN: &str = "postrouting";

/// The batch that (re)creates both tables for these pod CIDRs. It adds, deletes and
/// adds each table again, so it applies the same whether the table exists or not, and
/// the kernel swaps old for new in one transaction.
pub fn batch(pod_cidrs: &[IpNet]) -> Batch {
    let mut batch = Batch::new();
    for (family, key, saddr, daddr) in [
        (
            Family::Ip,
            KeyType::Ipv4Addr,
            Field::IpSaddr,
            Field::IpDaddr,
        ),
        (
            Family::Ip6,
            KeyType::Ipv6Addr,
            Field::Ip6Saddr,
            Field::Ip6Daddr,
        ),
    ] {
        let table = Table::new(family, TABLE);
        batch
            .add_table(&table)
            .delete_table(&table)
            .add_table(&table);
        let set = Set::new(family, TABLE, SET, [key]).interval();
        batch.add_set(&set);
        let elements: Vec<SetElement> = pod_cidrs
            .iter()
            .filter(|c| c.addr().is_ipv4() == (family == Family::Ip))
            .map(|c| SetElement::prefix(*c))
            .collect();
        if !elements.is_empty() {
            batch.add_elements(&set, &elements);
        }
        batch.add_chain(&Chain::new(family, TABLE, CHAIN).hook(
            ChainType::Nat,
            Hook::Postrouting,
            priority::SRCNAT,
        ));
        batch.add_rule(
            &Rule::new(family, TABLE, CHAIN)
                .match_in_set(&[saddr], SET, false)
                .match_in_set(&[daddr], SET, true)
                .masquerade()
                .comment("pod traffic leaving the pod network"),
        );
    }
    batch
}

/// How many rules each chain of either table holds: what a listing of the kernel's
/// table must show for it to be intact (flushed by hand or by a firewall reload, the
/// rule is gone while the table and its handle stay).
pub fn rule_counts() -> std::collections::BTreeMap<String, usize> {
    [(CHAIN.to_owned(), 1)].into()
}

/// The batch that removes both tables (`kubewire agent --cleanup`). Adding first makes
/// it succeed when they are already gone.
pub fn cleanup_batch() -> Batch {
    let mut batch = Batch::new();
    for family in [Family::Ip, Family::Ip6] {
        let table = Table::new(family, TABLE);
        batch.add_table(&table).delete_table(&table);
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transaction_for_both_families() {
        let cidrs: Vec<IpNet> = vec![
            "10.244.1.0/24".parse().unwrap(),
            "fd00:10:244:1::/64".parse().unwrap(),
        ];
        let b = batch(&cidrs);
        // Per family: add/delete/add table, set, elements, chain, rule.
        assert_eq!(b.len(), 2 * 7);
        // Without IPv6 CIDRs the ip6 table has no elements message.
        assert_eq!(batch(&cidrs[..1]).len(), 7 + 6);
    }
}
