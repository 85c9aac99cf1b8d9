//! The node's policy table, and keeping the kernel equal to the desired verdicts.
//!
//! One table `kubewire-policy` per family (`ip`, `ip6`); its rules never change, only
//! the elements of its sets (see [`crate::compile`] for what each set holds):
//!
//! ```text
//! chain forward { type filter hook forward priority filter; policy accept;
//!     ct state established,related accept
//!     ip saddr @egress-judged jump egress
//!     ip daddr @ingress-judged jump ingress }
//! chain input { type filter hook input priority filter; policy accept;
//!     ct state established,related accept
//!     ip saddr @egress-judged jump egress }
//! chain egress {                       # the tiers, in order
//!     ip saddr . ip daddr . meta l4proto . th dport @egress-admin-accept return
//!     ip saddr . ip daddr . meta l4proto . th dport @egress-admin-deny counter drop
//!     ip saddr @egress-isolated goto egress-networkpolicy
//!     ip saddr . ip daddr . meta l4proto . th dport @egress-baseline-deny counter drop }
//! chain egress-networkpolicy {
//!     ip saddr . ip daddr . meta l4proto . th dport @egress-ports return
//!     ip saddr . ip daddr @egress-peers return
//!     ip saddr . ip daddr . meta l4proto . th dport @egress-ranges return
//!     counter drop }
//! chain ingress, ingress-networkpolicy { the same with ip daddr . ip saddr }
//! ```
//!
//! (`goto`: NetworkPolicy's `return` leaves the direction, skipping the Baseline tier.
//! Each `drop` is a `goto` to a chain of its own, `egress-denied-admin` and so on: a
//! rate-limited `log group` rule when logging ([`Log`], [`crate::denied`]), then
//! `counter drop`.)
//!
//! Filter priority, after the service proxy's DNAT (priority dstnat): a connection to a
//! Service is judged on the endpoint it goes to. Traffic the node itself sends (kubelet
//! probes, host-network pods) leaves through `output` and is not judged; its replies
//! are established.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netlink::nft::{
    Batch, Chain, ChainType, Datum, Family, Field, Hook, KeyType, NftSocket, Rule, Set, SetElement,
    Table, Verdict, ct_state, priority,
};

use crate::compile::{Desired, Direction, Range, Sets};

/// The table, in both families.
pub const TABLE: &str = "kubewire-policy";

/// Logging denied packets: to NFLOG group `group`, at most `rate` per second for each
/// kind of denial (a `log` rule in each `*-denied` chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Log {
    /// The NFLOG group.
    pub group: u16,
    /// Packets per second, per chain.
    pub rate: u32,
}

/// What denied a packet, as its log prefix says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeniedBy {
    /// A Deny rule of the Admin tier.
    Admin,
    /// NetworkPolicy: the pod is isolated and no rule allows it.
    NetworkPolicy,
    /// A Deny rule of the Baseline tier.
    Baseline,
}

impl DeniedBy {
    fn name(self) -> &'static str {
        match self {
            DeniedBy::Admin => "admin",
            DeniedBy::NetworkPolicy => "networkpolicy",
            DeniedBy::Baseline => "baseline",
        }
    }

    /// The log prefix of denials of direction `d` by `self`.
    pub fn prefix(self, d: Direction) -> String {
        format!("{TABLE} {} {}", direction_name(d), self.name())
    }

    /// The direction and denial a log prefix names.
    pub fn parse(prefix: &str) -> Option<(Direction, DeniedBy)> {
        let mut words = prefix.split_whitespace();
        if words.next()? != TABLE {
            return None;
        }
        let d = match words.next()? {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            _ => return None,
        };
        let by = words.next()?;
        let by = [DeniedBy::Admin, DeniedBy::NetworkPolicy, DeniedBy::Baseline]
            .into_iter()
            .find(|b| b.name() == by)?;
        Some((d, by))
    }
}

fn direction_name(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

/// What can go wrong applying the policy table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused the batch, or it could not be sent; being atomic, it changed
    /// nothing. The next sync sends everything again.
    #[error("applying network policy's nftables changes ({messages} messages)")]
    Apply {
        /// Messages in the refused batch.
        messages: usize,
        /// The kernel's answer.
        #[source]
        source: netlink::Error,
    },
    /// Removing the tables failed.
    #[error("removing network policy's tables")]
    Cleanup(#[source] netlink::Error),
    /// No nf_tables socket could be opened.
    #[error("opening network policy's nf_tables socket")]
    Socket(#[source] netlink::Error),
    /// The watches of pods, namespaces or network policies ended.
    #[error("the watches of pods, namespaces and network policies ended")]
    WatchEnded,
}

/// What one sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    /// Whether the whole table was sent.
    pub full: bool,
    /// Netlink messages sent (0: nothing changed).
    pub messages: usize,
}

fn addr(ip: IpAddr) -> Datum {
    match ip {
        IpAddr::V4(a) => Datum::Ipv4(a),
        IpAddr::V6(a) => Datum::Ipv6(a),
    }
}

fn name(d: Direction, set: &str) -> String {
    let d = match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    };
    format!("{d}-{set}")
}

/// The sets of one direction and family: isolated, ports, peers, ranges (NetworkPolicy),
/// admin-accept, admin-deny, baseline-deny (the admin tiers), judged.
fn sets(family: Family, d: Direction) -> [Set; 8] {
    let a = if family == Family::Ip {
        KeyType::Ipv4Addr
    } else {
        KeyType::Ipv6Addr
    };
    let (p, s) = (KeyType::InetProto, KeyType::InetService);
    let ranges = |set: &str| Set::new(family, TABLE, name(d, set), [a, a, p, s]).interval();
    [
        Set::new(family, TABLE, name(d, "isolated"), [a]),
        Set::new(family, TABLE, name(d, "ports"), [a, a, p, s]),
        Set::new(family, TABLE, name(d, "peers"), [a, a]),
        ranges("ranges"),
        ranges("admin-accept"),
        ranges("admin-deny"),
        ranges("baseline-deny"),
        Set::new(family, TABLE, name(d, "judged"), [a]),
    ]
}

/// The elements of `sets` of one family, in the order of [`sets`].
fn elements(s: &Sets, v4: bool) -> [Vec<SetElement>; 8] {
    let fam = |ip: &IpAddr| ip.is_ipv4() == v4;
    let addrs = |set: &BTreeSet<IpAddr>| -> Vec<SetElement> {
        set.iter()
            .filter(|a| fam(a))
            .map(|a| SetElement::new([addr(*a)]))
            .collect()
    };
    let ranges = |set: &BTreeSet<Range>| -> Vec<SetElement> {
        set.iter()
            .filter(|r| fam(&r.local))
            .map(range_element)
            .collect()
    };
    [
        addrs(&s.isolated),
        s.ports
            .iter()
            .filter(|e| fam(&e.0))
            .map(|(l, p, proto, port)| {
                SetElement::new([addr(*l), addr(*p), Datum::Proto(*proto), Datum::Port(*port)])
            })
            .collect(),
        s.peers
            .iter()
            .filter(|e| fam(&e.0))
            .map(|(l, p)| SetElement::new([addr(*l), addr(*p)]))
            .collect(),
        ranges(&s.ranges),
        ranges(&s.admin_accept),
        ranges(&s.admin_deny),
        ranges(&s.baseline_deny),
        addrs(&s.judged()),
    ]
}

fn range_element(r: &Range) -> SetElement {
    SetElement::ranges(
        [
            addr(r.local),
            addr(r.peer.0),
            Datum::Proto(r.proto.0),
            Datum::Port(r.port.0),
        ],
        [
            addr(r.local),
            addr(r.peer.1),
            Datum::Proto(r.proto.1),
            Datum::Port(r.port.1),
        ],
    )
}

/// The chains of one family, with their rules.
fn chains(family: Family, log: Option<Log>) -> Vec<(Chain, Vec<Rule>)> {
    let (saddr, daddr) = if family == Family::Ip {
        (Field::IpSaddr, Field::IpDaddr)
    } else {
        (Field::Ip6Saddr, Field::Ip6Daddr)
    };
    let rule = |chain: &str| Rule::new(family, TABLE, chain);
    let established = |chain: &str| {
        rule(chain)
            .match_ct_state(ct_state::ESTABLISHED | ct_state::RELATED)
            .accept()
            .comment("replies, and packets of connections already allowed")
    };
    let to_egress = |chain: &str| {
        rule(chain)
            .match_in_set(&[saddr], name(Direction::Egress, "judged"), false)
            .verdict(Verdict::Jump("egress".into()))
            .comment("from a pod of this node that policies judge")
    };
    let to_ingress = rule("forward")
        .match_in_set(&[daddr], name(Direction::Ingress, "judged"), false)
        .verdict(Verdict::Jump("ingress".into()))
        .comment("to a pod of this node that policies judge");
    let tuple = |local: Field, peer: Field| [local, peer, Field::L4Proto, Field::Dport];
    let deny = |d: Direction, by: DeniedBy| Verdict::Goto(denied_chain(d, by));
    // The tiers in order; `return` allows this direction (the other is judged next).
    let tiers = |d: Direction, local: Field, peer: Field| {
        let chain = chain_name(d, false);
        vec![
            rule(&chain)
                .match_in_set(&tuple(local, peer), name(d, "admin-accept"), false)
                .verdict(Verdict::Return)
                .comment("accepted by the Admin tier (ClusterNetworkPolicy)"),
            rule(&chain)
                .match_in_set(&tuple(local, peer), name(d, "admin-deny"), false)
                .verdict(deny(d, DeniedBy::Admin))
                .comment("denied by the Admin tier (ClusterNetworkPolicy)"),
            rule(&chain)
                .match_in_set(&[local], name(d, "isolated"), false)
                .verdict(Verdict::Goto(chain_name(d, true)))
                .comment("NetworkPolicy decides for the pods it isolates"),
            rule(&chain)
                .match_in_set(&tuple(local, peer), name(d, "baseline-deny"), false)
                .verdict(deny(d, DeniedBy::Baseline))
                .comment("denied by the Baseline tier (ClusterNetworkPolicy)"),
        ]
    };
    let network_policy = |d: Direction, local: Field, peer: Field| {
        let chain = chain_name(d, true);
        vec![
            rule(&chain)
                .match_in_set(&tuple(local, peer), name(d, "ports"), false)
                .verdict(Verdict::Return)
                .comment("a pod peer on an allowed port"),
            rule(&chain)
                .match_in_set(&[local, peer], name(d, "peers"), false)
                .verdict(Verdict::Return)
                .comment("a pod peer on every port"),
            rule(&chain)
                .match_in_set(&tuple(local, peer), name(d, "ranges"), false)
                .verdict(Verdict::Return)
                .comment("address blocks, every peer, port ranges"),
            rule(&chain)
                .verdict(deny(d, DeniedBy::NetworkPolicy))
                .comment(match d {
                    Direction::Ingress => "not allowed by the destination pod's ingress policies",
                    Direction::Egress => "not allowed by the source pod's egress policies",
                }),
        ]
    };
    // Where denied packets end: counted, logged (rate-limited) when asked, dropped.
    let denied = |d: Direction, by: DeniedBy| {
        let chain = denied_chain(d, by);
        let mut rules = Vec::new();
        if let Some(log) = log {
            rules.push(
                rule(&chain)
                    .limit(u64::from(log.rate), 5)
                    .log_group(log.group, &by.prefix(d))
                    .comment("to the agent's log, at most the rate asked"),
            );
        }
        rules.push(
            rule(&chain)
                .counter()
                .verdict(Verdict::Drop)
                .comment("what this kind of denial dropped"),
        );
        (Chain::new(family, TABLE, chain), rules)
    };
    let mut out = Vec::new();
    for d in [Direction::Ingress, Direction::Egress] {
        for by in [DeniedBy::Admin, DeniedBy::NetworkPolicy, DeniedBy::Baseline] {
            out.push(denied(d, by));
        }
    }
    out.extend([
        (
            Chain::new(family, TABLE, chain_name(Direction::Ingress, true)),
            network_policy(Direction::Ingress, daddr, saddr),
        ),
        (
            Chain::new(family, TABLE, chain_name(Direction::Egress, true)),
            network_policy(Direction::Egress, saddr, daddr),
        ),
        (
            Chain::new(family, TABLE, chain_name(Direction::Ingress, false)),
            tiers(Direction::Ingress, daddr, saddr),
        ),
        (
            Chain::new(family, TABLE, chain_name(Direction::Egress, false)),
            tiers(Direction::Egress, saddr, daddr),
        ),
        (
            Chain::new(family, TABLE, "forward").hook(
                ChainType::Filter,
                Hook::Forward,
                priority::FILTER,
            ),
            vec![established("forward"), to_egress("forward"), to_ingress],
        ),
        (
            Chain::new(family, TABLE, "input").hook(
                ChainType::Filter,
                Hook::Input,
                priority::FILTER,
            ),
            vec![established("input"), to_egress("input")],
        ),
    ]);
    out
}

/// The chain denials of direction `d` by `by` end in (`ingress-denied-admin`, ...).
fn denied_chain(d: Direction, by: DeniedBy) -> String {
    format!("{}-denied-{}", direction_name(d), by.name())
}

/// The chain of direction `d`: the tiers (`ingress`, `egress`), or NetworkPolicy's
/// part (`ingress-networkpolicy`, ...).
fn chain_name(d: Direction, network_policy: bool) -> String {
    let d = direction_name(d);
    if network_policy {
        format!("{d}-networkpolicy")
    } else {
        d.to_owned()
    }
}

/// The whole table of `family` filled with `desired`, replacing any table of that name
/// in the same transaction (no moment without rules).
fn full(batch: &mut Batch, family: Family, desired: &Desired, log: Option<Log>) {
    let table = Table::new(family, TABLE);
    batch.destroy_table(&table).add_table(&table);
    let v4 = family == Family::Ip;
    for d in [Direction::Ingress, Direction::Egress] {
        let elems = elements(desired.sets(d), v4);
        for (set, elems) in sets(family, d).iter().zip(elems) {
            batch.add_set(set);
            if !elems.is_empty() {
                batch.add_elements(set, &elems);
            }
        }
    }
    for (chain, rules) in chains(family, log) {
        batch.add_chain(&chain);
        for r in &rules {
            batch.add_rule(r);
        }
    }
}

/// Past this many elements deleted from interval sets in one batch, the whole table is
/// replaced instead: the kernel's concatenated interval sets (pipapo) take time in
/// proportion to the set's size for each element deleted (3,334 deletions from a set of
/// 3,334 took 1.6 s here), while a table replaced destroys its sets whole (the whole
/// table at 10,000 policies: 60 ms).
const MAX_RANGE_DELETIONS: usize = 64;

/// The changes from `old` to `new` in `family`: removed elements, then added ones.
/// Returns how many elements of interval sets it deletes.
fn changes(batch: &mut Batch, family: Family, old: &Desired, new: &Desired) -> usize {
    let v4 = family == Family::Ip;
    let mut range_deletions = 0;
    for d in [Direction::Ingress, Direction::Egress] {
        let before = elements(old.sets(d), v4);
        let after = elements(new.sets(d), v4);
        for ((set, before), after) in sets(family, d).iter().zip(before).zip(after) {
            let gone = minus(&before, &after);
            let added = minus(&after, &before);
            if !gone.is_empty() {
                if set.interval {
                    range_deletions += gone.len();
                }
                batch.delete_elements(set, &gone);
            }
            if !added.is_empty() {
                batch.add_elements(set, &added);
            }
        }
    }
    range_deletions
}

fn minus(a: &[SetElement], b: &[SetElement]) -> Vec<SetElement> {
    let b: std::collections::HashSet<&SetElement> = b.iter().collect();
    a.iter().filter(|e| !b.contains(e)).cloned().collect()
}

/// Keeps the kernel's policy tables equal to the desired verdicts: the whole table at
/// first (and after a failure or drift), then only the elements that changed.
#[derive(Debug)]
pub struct Enforcer {
    socket: NftSocket,
    /// Whether the kernel holds what the last batch sent (false before the first
    /// sync, after a failed one, and when the tables were found changed).
    in_sync: bool,
    /// Each family's table handle after the last full sync.
    tables: Vec<(Family, u64)>,
    /// The ruleset generation after this enforcer's last commit.
    generation: Option<u32>,
    /// Whether and how denied packets are logged.
    log: Option<Log>,
}

impl Enforcer {
    /// An enforcer applying through `socket` (opened in the node's namespace).
    pub fn new(socket: NftSocket) -> Self {
        Enforcer {
            socket,
            in_sync: false,
            tables: Vec::new(),
            generation: None,
            log: None,
        }
    }

    /// The same enforcer, its tables logging denied packets as `log` says.
    pub fn with_log(mut self, log: Option<Log>) -> Self {
        self.log = log;
        self
    }

    /// Whether the kernel holds what was last sent; when not, the next sync must be
    /// [`Enforcer::replace`].
    pub fn in_sync(&self) -> bool {
        self.in_sync
    }

    /// Replaces the tables with `desired`, whole, in one transaction (no moment without
    /// rules).
    pub fn replace(&mut self, desired: &Desired) -> Result<SyncReport, Error> {
        let mut batch = Batch::new();
        for family in [Family::Ip, Family::Ip6] {
            full(&mut batch, family, desired, self.log);
        }
        self.send(&batch, true)
    }

    /// Sends the change from `old` to `new`: the elements of the addresses that
    /// changed, before and after (the rest of the tables is left as it is). A change
    /// deleting many range elements replaces the tables with `whole` (all the verdicts,
    /// `new` among them) instead, which the kernel does faster.
    pub fn update(
        &mut self,
        old: &Desired,
        new: &Desired,
        whole: &Desired,
    ) -> Result<SyncReport, Error> {
        let mut batch = Batch::new();
        let mut range_deletions = 0;
        for family in [Family::Ip, Family::Ip6] {
            range_deletions += changes(&mut batch, family, old, new);
        }
        if range_deletions > MAX_RANGE_DELETIONS {
            return self.replace(whole);
        }
        self.send(&batch, false)
    }

    fn send(&mut self, batch: &Batch, full: bool) -> Result<SyncReport, Error> {
        let messages = batch.len();
        if messages == 0 {
            return Ok(SyncReport {
                full: false,
                messages,
            });
        }
        self.in_sync = false;
        self.socket
            .apply(batch)
            .map_err(|source| Error::Apply { messages, source })?;
        self.in_sync = true;
        self.generation = self.socket.generation().ok();
        if full {
            self.tables.clear();
            for family in [Family::Ip, Family::Ip6] {
                if let Ok(Some(h)) = self.socket.table_handle(family, TABLE) {
                    self.tables.push((family, h));
                }
            }
        }
        Ok(SyncReport { full, messages })
    }

    /// Whether the kernel still holds the tables as this enforcer made them: nobody
    /// committed anything since its last batch, or its tables have the same handles and
    /// every rule in each chain. When not, the next sync must replace everything.
    pub fn intact(&mut self) -> bool {
        if !self.in_sync {
            return false;
        }
        let Ok(generation) = self.socket.generation() else {
            return false;
        };
        if self.generation == Some(generation) {
            return true;
        }
        let want: BTreeMap<String, usize> = chains(Family::Ip, self.log)
            .into_iter()
            .map(|(c, r)| (c.name, r.len()))
            .collect();
        let intact = self.tables.iter().all(|(family, handle)| {
            let same =
                matches!(self.socket.table_handle(*family, TABLE), Ok(Some(h)) if h == *handle);
            same && self.socket.rules(*family, TABLE).is_ok_and(|rules| {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for r in rules {
                    *counts.entry(r.chain).or_default() += 1;
                }
                counts == want
            })
        }) && self.tables.len() == 2;
        if intact {
            self.generation = Some(generation);
        } else {
            self.in_sync = false;
        }
        intact
    }
}

/// Removes the policy tables (both families); absent ones are fine.
pub fn cleanup(socket: &mut NftSocket) -> Result<(), Error> {
    let mut batch = Batch::new();
    for family in [Family::Ip, Family::Ip6] {
        batch.destroy_table(&Table::new(family, TABLE));
    }
    socket.apply(&batch).map_err(Error::Cleanup)
}
