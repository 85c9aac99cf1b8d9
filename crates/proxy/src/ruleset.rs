//! The pure rule computation: a [`View`] and the node it runs on in, a [`Ruleset`] out.
//!
//! The layout is described in the crate documentation ([`crate`]); this module is the
//! one place that knows it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use netlink::nft::{
    Chain, ChainType, CmpOp, CtKey, Datum, DynsetOp, ElementData, Expr, Family, FibResult, Field,
    Hook, KeyType, NatKind, Reg, Reject, Rule, Set, SetElement, Verdict, ct_state, fib_flags,
    priority,
};

use crate::view::{Endpoint, Service, ServiceKey, ServicePort, TrafficPolicy, View};

/// The name of the proxy's table, in both the `ip` and the `ip6` family.
pub const TABLE: &str = "kubewire-proxy";
/// The packet mark bit that asks `nat-postrouting` to masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;
/// `IPS_DST_NAT`: the conntrack status bit of a connection whose destination was NATed.
const IPS_DST_NAT: u32 = 0x20;

/// Shared sets and maps, and the chains rules refer to, by name.
pub mod names {
    /// `daddr . l4proto . dport` → the destination's [`Class`](super::Class) id.
    pub const SERVICE_IPS: &str = "service-ips";
    /// `l4proto . dport` → the node port's class id, for destinations local to the node.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// Class id → `goto` the class's chain (and 0 → `drop`): a verdict map of a
    /// handful of elements.
    pub const CLASSES: &str = "classes";
    /// External destinations (external and load-balancer IPs) of `externalTrafficPolicy:
    /// Cluster` services: their traffic is masqueraded.
    pub const MASQUERADE_IPS: &str = "masquerade-ips";
    /// Node ports of `externalTrafficPolicy: Cluster` services.
    pub const MASQUERADE_NODEPORTS: &str = "masquerade-nodeports";
    /// External destinations of `externalTrafficPolicy: Local` services → the class id
    /// of their endpoints on this node, or 0 (`drop`) when there is none. Traffic from
    /// outside the node and the pod network goes there, keeping its source address.
    pub const EXTERNAL_LOCAL_IPS: &str = "external-local-ips";
    /// The same for node ports.
    pub const EXTERNAL_LOCAL_NODEPORTS: &str = "external-local-nodeports";
    /// `daddr . l4proto . dport` → `goto reject-chain` (no endpoints) or `drop`.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// `l4proto . dport` → `goto reject-chain` or `drop`, for node ports.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// Every ClusterIP: unknown ports on them are rejected; traffic to them from outside
    /// the pod network is masqueraded.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// `daddr . l4proto . dport . saddr` → `addr . port`, with timeouts: the endpoint
    /// each client was sent to, per destination (for a node port, `daddr` is the node
    /// address the client used). Cluster-wide and local balancing share it: a client
    /// is balanced by one of them only, so the key needs no field telling them apart.
    pub const AFFINITY: &str = "affinity";
    /// `saddr . daddr` pairs `E . E` for every endpoint address `E` on this node: after
    /// DNAT, a packet whose source is its own destination is a pod reaching itself
    /// through its service (hairpin). Only local endpoints can do that, so the set
    /// holds at most the node's pods.
    pub const HAIRPIN: &str = "hairpin";
    /// The node's addresses that node ports answer on (when they are known).
    pub const NODEPORT_IPS: &str = "nodeport-ips";
    /// The chain that rejects: TCP reset, else ICMP port unreachable.
    pub const REJECT_CHAIN: &str = "reject-chain";
    /// The chain that records affinity picks after DNAT.
    pub const AFFINITY_RECORD: &str = "affinity-record";
    /// The chain that sends a client with a recorded affinity back to its endpoint.
    pub const AFFINITY_LOOKUP: &str = "affinity-lookup";

    /// The set of the destinations (`daddr . l4proto . dport`, or for node ports
    /// `l4proto . dport`) of services with `sessionAffinity: ClientIP` and this
    /// timeout: `affinity-ips-10800`, `affinity-nodeports-60`.
    pub fn affinity_set(node_port: bool, timeout: u32) -> String {
        let kind = if node_port { "nodeports" } else { "ips" };
        format!("affinity-{kind}-{timeout}")
    }
}

/// The node the rules are computed for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// Its name, as in endpoints' `nodeName` (decides which endpoints are local).
    pub name: String,
    /// The pod network(s): traffic to a ClusterIP from outside them is masqueraded,
    /// and pod traffic to external destinations of `externalTrafficPolicy: Local`
    /// services is short-circuited to all endpoints. Empty: neither happens.
    pub cluster_cidrs: Vec<IpNet>,
    /// The node's own addresses (the Node's InternalIPs): node ports answer on these.
    /// Empty: on any local address but loopback (`fib daddr type local`).
    pub node_ips: Vec<IpAddr>,
    /// The service CIDRs: traffic to an address in them that no Service has is
    /// dropped, as kube-proxy does. Empty: not checked.
    pub service_cidrs: Vec<IpNet>,
    /// Its `topology.kubernetes.io/zone` label: topology hints for this zone narrow
    /// the cluster-wide endpoints ([`crate::cluster_endpoints`]).
    pub zone: Option<String>,
}

/// A chain with the rules it should hold, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// The chain (base or regular).
    pub chain: Chain,
    /// Its rules.
    pub rules: Vec<Rule>,
}

impl ChainSpec {
    /// Whether the chain has no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The chain's rules, in order (a copy).
    pub fn rules(&self) -> Vec<Rule> {
        self.rules.clone()
    }
}

/// At most this many endpoints per service port and list are used (a class holds the
/// count in 16 bits).
pub const MAX_ENDPOINTS: usize = u16::MAX as usize;

/// A class of destinations that are balanced alike: the shared chain they are sent to.
///
/// Every destination (service address and port, or node port) with endpoints maps to
/// its class's id in [`names::SERVICE_IPS`] / [`names::SERVICE_NODEPORTS`] (and, for
/// the local endpoints of an `externalTrafficPolicy: Local` destination, in
/// [`names::EXTERNAL_LOCAL_IPS`] / [`names::EXTERNAL_LOCAL_NODEPORTS`]), and each class
/// in use to its chain in [`names::CLASSES`]. A class's chain looks its destination's
/// endpoints up in the class's own map (named as the chain, [`Class::map`]), keyed by
/// the destination and a random bucket `0..N`: so a class is fixed by the number of
/// endpoints, not by which they are, and a handful of chains serve every service.
/// Masquerading and `externalTrafficPolicy: Local` are decided before the class, by
/// sets of destinations ([`names::MASQUERADE_IPS`], ...), so they add no classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Class {
    /// Keyed by `l4proto . dport` (node ports) rather than `daddr . l4proto . dport`.
    pub node_port: bool,
    /// Balances over the node's own endpoints of the destination (internal or
    /// external traffic policy `Local`), rather than all of them.
    pub local: bool,
    /// `sessionAffinity: ClientIP`: a client the [`names::AFFINITY`] map knows goes
    /// back to its endpoint.
    pub affinity: bool,
    /// Number of endpoints picked from, each with probability `1/endpoints`.
    pub endpoints: u16,
}

impl Class {
    /// A balancing class.
    pub fn balance(node_port: bool, local: bool, endpoints: usize, affinity: bool) -> Self {
        Class {
            node_port,
            local,
            affinity,
            endpoints: endpoints.min(MAX_ENDPOINTS) as u16,
        }
    }

    /// The class's id: the value of its destinations in the dispatch maps, the key of
    /// its chain in [`names::CLASSES`], and what the dispatch rule puts in the
    /// connection mark for one rule. Readable in hex: the endpoint count in the low 16
    /// bits, then a bit each for affinity (`0x10000`), node ports (`0x20000`) and local
    /// endpoints (`0x40000`). Never 0, which is "no class" ([`NO_LOCAL_ENDPOINT`]).
    pub fn id(&self) -> u32 {
        u32::from(self.endpoints)
            | u32::from(self.affinity) << 16
            | u32::from(self.node_port) << 17
            | u32::from(self.local) << 18
    }

    /// The class id as a map value or key.
    pub fn key(&self) -> [Datum; 1] {
        [Datum::Mark(self.id())]
    }

    /// The class whose chain is named `name` ([`Class::chain`]).
    pub fn from_chain(name: &str) -> Option<Self> {
        let (node_port, rest) = match name.strip_prefix("nodeport-") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let (rest, affinity) = match rest.strip_suffix("-affinity") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (local, n) = match rest.strip_prefix("balance-local-") {
            Some(n) => (true, n),
            None => (false, rest.strip_prefix("balance-")?),
        };
        let endpoints: u16 = n.parse().ok().filter(|n| *n > 0)?;
        Some(Class {
            node_port,
            local,
            affinity,
            endpoints,
        })
    }

    /// The name of the class's chain and map, e.g. `balance-10`,
    /// `nodeport-balance-local-3`, `balance-2-affinity`.
    pub fn chain(&self) -> String {
        format!(
            "{}balance-{}{}{}",
            if self.node_port { "nodeport-" } else { "" },
            if self.local { "local-" } else { "" },
            self.endpoints,
            if self.affinity { "-affinity" } else { "" }
        )
    }

    /// The endpoint map, named as the chain: `daddr . l4proto . dport . bucket` (node
    /// ports: `l4proto . dport . bucket`) → `addr . port`. One map per class, bound by
    /// the balancing rules of its chain and of the by-class chains, which are made
    /// while it is empty (binding walks the map's elements, and adding an element walks
    /// the map's bindings).
    pub fn map(&self, family: Family) -> Set {
        let addr = addr_type(family);
        let mut key = vec![KeyType::InetProto, KeyType::InetService, KeyType::Mark];
        if !self.node_port {
            key.insert(0, addr);
        }
        Set::new(family, TABLE, self.chain(), key).map(vec![addr, KeyType::InetService])
    }

    /// What the chain's balancing rule says.
    fn what(&self) -> String {
        let n = self.endpoints;
        let s = if n == 1 { "" } else { "s" };
        let whose = if self.local { " on this node" } else { "" };
        format!("one of {n} endpoint{s}{whose}, each 1/{n} of new connections")
    }

    /// The chain the verdict map of classes sends a destination to: it sets the
    /// connection mark, which carried the class id from the dispatch map, back to 0
    /// (as it was: the dispatch rule only takes connections without a mark), then goes
    /// to the class's chain.
    pub fn enter_chain(&self) -> String {
        format!("enter-{}", self.chain())
    }

    /// The rules of the class's chain in a table of `family`: a client with a recorded
    /// endpoint goes back to it (affinity), else the balancing rule picks one. Reached
    /// from the class's enter chain, or tried from a by-class chain: for a destination
    /// of another class, nothing matches and the chain returns.
    pub fn rules(&self, family: Family) -> Vec<Rule> {
        let name = self.chain();
        let mut rules = Vec::new();
        if self.affinity {
            rules.push(
                Rule::new(family, TABLE, name.clone())
                    .jump(names::AFFINITY_LOOKUP)
                    .comment(
                        "sessionAffinity: ClientIP: back to the client's endpoint, if it has one",
                    ),
            );
        }
        rules.push(
            self.balance_rule(Rule::new(family, TABLE, name))
                .comment(self.what()),
        );
        rules
    }

    /// The rule of the class's enter chain.
    fn enter_rules(&self, family: Family) -> Vec<Rule> {
        vec![
            Rule::new(family, TABLE, self.enter_chain())
                .set_ct_mark(0)
                .goto(self.chain())
                .comment("the class id has served: the connection mark is 0 again, as it was"),
        ]
    }

    /// The rule that tries this class in a by-class chain `chain` (for connections that
    /// came with a connection mark, which the dispatch rule leaves alone). A jump, not
    /// a lookup of the class's map: re-adding a rule that looks a map up makes the
    /// kernel walk the map's elements (hundreds of thousands for a common class), and
    /// the by-class chains are refilled whenever a class comes or goes.
    fn trial_rules(&self, family: Family, chain: &str) -> Vec<Rule> {
        vec![
            Rule::new(family, TABLE, chain)
                .jump(self.chain())
                .comment(format!("{}: {}", self.chain(), self.what())),
        ]
    }

    /// Loads the destination fields of this class's keys from 32-bit register 0:
    /// `daddr` (not for node ports), `l4proto`, `dport`. Returns the register after
    /// them.
    fn load_destination(&self, rule: Rule) -> (Rule, u32) {
        let (aw, daddr) = addr_words(rule.family);
        let mut rule = rule;
        let mut at = 0;
        if !self.node_port {
            rule = rule.expr(daddr.load(Reg::r32(0)));
            at = aw;
        }
        rule = rule
            .expr(Field::L4Proto.load(Reg::r32(at)))
            .expr(Field::Dport.load(Reg::r32(at + 1)));
        (rule, at + 2)
    }

    /// `dnat to DESTINATION . numgen random mod N map @map`: the destination and a
    /// random bucket looked up in the class's map, DNAT to the endpoint found, in one
    /// rule (registers do not carry over from one rule to the next).
    fn balance_rule(&self, rule: Rule) -> Rule {
        let family = rule.family;
        let (rule, at) = self.load_destination(rule);
        let found = found_reg(family);
        let rule = rule.expr(Expr::Numgen {
            modulus: u32::from(self.endpoints),
            offset: 0,
            dreg: Reg::r32(at),
        });
        dnat_from(
            rule.expr(Expr::Lookup {
                set: self.chain().as_str().into(),
                sreg: Reg::r32(0),
                dreg: Some(Reg::r32(found)),
                invert: false,
            }),
            family,
        )
    }
}

/// `dnat to daddr . l4proto . dport . saddr map @affinity`: the endpoint recorded for
/// this client and destination (the key has the daddr for node ports too: the node
/// address the client used). One rule for the table, in its own chain that the
/// affinity classes jump to: a rule looking a map up is made while the map is empty,
/// not with each class.
fn affinity_lookup(family: Family) -> Rule {
    let (aw, daddr) = addr_words(family);
    let found = found_reg(family);
    let rule = Rule::new(family, TABLE, names::AFFINITY_LOOKUP)
        .expr(daddr.load(Reg::r32(0)))
        .expr(Field::L4Proto.load(Reg::r32(aw)))
        .expr(Field::Dport.load(Reg::r32(aw + 1)))
        .expr(saddr_field(family).load(Reg::r32(aw + 2)))
        .expr(Expr::Lookup {
            set: names::AFFINITY.into(),
            sreg: Reg::r32(0),
            dreg: Some(Reg::r32(found)),
            invert: false,
        });
    dnat_from(rule, family).comment(
        "sessionAffinity: ClientIP: the endpoint this client was sent to, while it is recorded",
    )
}

/// The id that sends an `externalTrafficPolicy: Local` destination with no endpoint
/// on this node to `drop` (in [`names::EXTERNAL_LOCAL_IPS`] and
/// [`names::EXTERNAL_LOCAL_NODEPORTS`], and [`names::CLASSES`]).
pub const NO_LOCAL_ENDPOINT: u32 = 0;

/// 32-bit words of an address of `family`, and its destination field.
fn addr_words(family: Family) -> (u32, Field) {
    if family == Family::Ip6 {
        (4, Field::Ip6Daddr)
    } else {
        (1, Field::IpDaddr)
    }
}

fn saddr_field(family: Family) -> Field {
    if family == Family::Ip6 {
        Field::Ip6Saddr
    } else {
        Field::IpSaddr
    }
}

/// Where a rule loads an endpoint (`addr . port`) it looked up: after the longest key
/// (the affinity key, `daddr . l4proto . dport . saddr`), so that a key and a value
/// fit side by side in the sixteen 32-bit registers.
fn found_reg(family: Family) -> u32 {
    if family == Family::Ip6 { 11 } else { 5 }
}

/// DNAT to the `addr . port` at [`found_reg`].
fn dnat_from(rule: Rule, family: Family) -> Rule {
    let (aw, _) = addr_words(family);
    let found = found_reg(family);
    rule.expr(Expr::Nat {
        kind: NatKind::Dnat,
        family,
        addr: Some(Reg::r32(found)),
        port: Some(Reg::r32(found + aw)),
        flags: 0,
    })
}

/// The rule that remembers, after DNAT, which endpoint a new connection of an
/// affinity destination went to, for `timeout` seconds: `update @affinity {
/// ct original daddr . l4proto . ct original proto-dst . saddr timeout T : daddr .
/// dport }`, for destinations in `affinity-ips-T`, or for node ports in
/// `affinity-nodeports-T` (opened to one of the node's addresses, when they are known:
/// a service address with the same port is not a node port).
fn affinity_record(family: Family, node_port: bool, timeout: u32, node_ips: bool) -> Rule {
    let (aw, daddr) = addr_words(family);
    let orig_daddr = if family == Family::Ip6 {
        Field::CtOriginalIp6Daddr
    } else {
        Field::CtOriginalIpDaddr
    };
    let mut rule = Rule::new(family, TABLE, names::AFFINITY_RECORD)
        .expr(orig_daddr.load(Reg::r32(0)))
        .expr(Field::L4Proto.load(Reg::r32(aw)))
        .expr(Field::CtOriginalDport.load(Reg::r32(aw + 1)));
    let lookup = |set: String, sreg: u32| Expr::Lookup {
        set: set.into(),
        sreg: Reg::r32(sreg),
        dreg: None,
        invert: false,
    };
    let set = names::affinity_set(node_port, timeout);
    if node_port {
        if node_ips {
            rule = rule.expr(lookup(names::NODEPORT_IPS.into(), 0));
        }
        rule = rule.expr(lookup(set, aw));
    } else {
        rule = rule.expr(lookup(set, 0));
    }
    let found = found_reg(family);
    let what = if node_port { "node port" } else { "service" };
    rule.expr(saddr_field(family).load(Reg::r32(aw + 2)))
        .expr(daddr.load(Reg::r32(found)))
        .expr(Field::Dport.load(Reg::r32(found + aw)))
        .expr(Expr::Dynset {
            set: names::AFFINITY.into(),
            op: DynsetOp::Update,
            sreg_key: Reg::r32(0),
            sreg_data: Some(Reg::r32(found)),
            timeout: Some(Duration::from_secs(u64::from(timeout))),
        })
        .comment(format!(
            "sessionAffinity: ClientIP, {timeout}s: remember the {what}'s endpoint for this client"
        ))
}

/// `fib saddr type local`: traffic from this node's own addresses.
fn fib_saddr_local(rule: Rule, local: bool) -> Rule {
    rule.expr(Expr::Fib {
        result: FibResult::AddrType,
        flags: fib_flags::SADDR,
        dreg: Reg::R1,
    })
    .expr(Expr::Cmp {
        sreg: Reg::R1,
        op: if local { CmpOp::Eq } else { CmpOp::Neq },
        data: netlink::nft::RTN_LOCAL.to_ne_bytes().to_vec(),
    })
}
/// What an element of a shared set maps to, with the number of services that
/// contribute it. Its key is the map's key: an element is held once, in this compact
/// form (service elements have no range end, timeout or comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counted {
    pub(crate) data: Option<ElementData>,
    pub(crate) refs: u32,
}

impl Counted {
    /// The element with this key.
    pub(crate) fn element(&self, key: &[Datum]) -> SetElement {
        SetElement {
            data: self.data.clone(),
            ..SetElement::new(key.to_vec())
        }
    }
}

/// A named set or map with the elements it should hold, by key.
///
/// Sets are shared by all services; each element counts the services contributing it
/// (two services may share an external address and port, or a class), so that one
/// service going away removes only what no other service still needs. When two
/// services contribute different data under one key (two services claiming one
/// external IP and port), the first one keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// The set.
    pub set: Set,
    pub(crate) elements: HashMap<Box<[Datum]>, Counted>,
}

/// What adding or removing one contribution did to a set.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing the kernel needs to know.
    None,
    /// The element appeared.
    Added,
    /// The element, as it was, disappeared.
    Removed(SetElement),
}

impl SetSpec {
    fn new(set: Set) -> Self {
        SetSpec {
            set,
            elements: HashMap::new(),
        }
    }

    /// Adds one contribution of `e`.
    pub(crate) fn add_ref(&mut self, e: &SetElement) -> Change {
        debug_assert!(e.end.is_none() && e.timeout.is_none() && e.comment.is_none());
        match self.elements.get_mut(&e.key[..]) {
            Some(c) if c.data == e.data => {
                c.refs += 1;
                Change::None
            }
            Some(_) => Change::None, // a conflicting claim: the first one keeps the key
            None => {
                self.elements.insert(
                    e.key.clone().into_boxed_slice(),
                    Counted {
                        data: e.data.clone(),
                        refs: 1,
                    },
                );
                Change::Added
            }
        }
    }

    /// Removes one contribution of `e`.
    pub(crate) fn remove_ref(&mut self, e: &SetElement) -> Change {
        match self.elements.get_mut(&e.key[..]) {
            Some(c) if c.data == e.data => {
                c.refs -= 1;
                if c.refs == 0 {
                    self.elements.remove(&e.key[..]);
                    return Change::Removed(e.clone());
                }
                Change::None
            }
            _ => Change::None,
        }
    }

    /// The element with this key.
    pub fn get(&self, key: &[Datum]) -> Option<SetElement> {
        Some(self.elements.get(key)?.element(key))
    }

    /// Whether an element has this key.
    pub fn contains(&self, key: &[Datum]) -> bool {
        self.elements.contains_key(key)
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.elements.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }

    /// The elements, in no particular order (built from the compact form).
    pub fn elements(&self) -> impl Iterator<Item = SetElement> + '_ {
        self.elements.iter().map(|(k, c)| c.element(k))
    }

    /// Whether the element with `e`'s key maps to what `e` does.
    pub fn holds(&self, e: &SetElement) -> bool {
        self.elements
            .get(&e.key[..])
            .is_some_and(|c| c.data == e.data)
    }

    /// The verdict an element of a verdict map maps `key` to.
    pub fn verdict(&self, key: &[Datum]) -> Option<&Verdict> {
        match self.elements.get(key)?.data.as_ref()? {
            ElementData::Verdict(v) => Some(v),
            ElementData::Value(_) => None,
        }
    }

    /// The value an element of a data map maps `key` to.
    pub fn value(&self, key: &[Datum]) -> Option<&[Datum]> {
        match self.elements.get(key)?.data.as_ref()? {
            ElementData::Value(v) => Some(v),
            ElementData::Verdict(_) => None,
        }
    }
}

/// The set an element of a service goes to: a fixed one, the endpoint map of a
/// balancing class, or the set of affinity destinations with one timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    /// A set of the skeleton, by name ([`names`]).
    Fixed(&'static str),
    /// [`Class::map`].
    Class(Class),
    /// [`names::affinity_set`]: made with its first element, gone with its last.
    Affinity {
        /// Of node ports (`l4proto . dport`) rather than service addresses.
        node_port: bool,
        /// The timeout, in seconds.
        timeout: u32,
    },
}

impl std::fmt::Display for SetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetName::Fixed(n) => f.write_str(n),
            SetName::Class(c) => f.write_str(&c.chain()),
            SetName::Affinity { node_port, timeout } => {
                f.write_str(&names::affinity_set(*node_port, *timeout))
            }
        }
    }
}

/// The endpoints of one destination in the map of a balancing class, kept compact
/// (20 bytes an endpoint) and turned into elements `destination . bucket` → `addr .
/// port` only when counted or sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointGroup {
    /// The balancing class whose map holds them.
    pub class: Class,
    /// The destination: `daddr . l4proto . dport`, or `l4proto . dport` for node ports.
    pub destination: Box<[Datum]>,
    /// The endpoints, bucket `i` for the `i`-th (shared with the class map).
    pub endpoints: Endpoints,
}

impl EndpointGroup {
    /// The group's map elements.
    pub fn elements(&self) -> impl Iterator<Item = (SetName, SetElement)> + '_ {
        group_elements(&self.destination, &self.endpoints).map(|e| (SetName::Class(self.class), e))
    }
}

/// The elements `destination . i` → `addr . port` of the `i`-th of `endpoints`.
fn group_elements<'a>(
    destination: &'a [Datum],
    endpoints: &'a [(IpAddr, u16)],
) -> impl Iterator<Item = SetElement> + 'a {
    endpoints.iter().enumerate().map(move |(i, (ip, port))| {
        let mut key = Vec::with_capacity(destination.len() + 1);
        key.extend_from_slice(destination);
        key.push(Datum::Mark(i as u32));
        SetElement::new(key).value([addr_datum(*ip), Datum::Port(*port)])
    })
}

/// A destination's endpoints, by bucket.
pub type Endpoints = Arc<[(IpAddr, u16)]>;

/// A destination with session affinity and one of its endpoints: what an element of
/// the [`names::AFFINITY`] map may send a client to.
pub(crate) type AffinityPair = (Box<[Datum]>, (IpAddr, u16));

/// The endpoint map of a balancing class ([`Class::map`]), as destinations: each with
/// its endpoints (bucket `i` → the `i`-th; the list is shared with the service that
/// contributes it) and the number of services contributing it (two services may
/// claim one external address and port: the first keeps it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassMap {
    /// The map.
    pub set: Set,
    pub(crate) destinations: HashMap<Box<[Datum]>, (Endpoints, u32)>,
}

impl ClassMap {
    fn new(set: Set) -> Self {
        ClassMap {
            set,
            destinations: HashMap::new(),
        }
    }

    /// The endpoints of a destination, by bucket.
    pub fn endpoints(&self, destination: &[Datum]) -> Option<&[(IpAddr, u16)]> {
        self.destinations.get(destination).map(|(e, _)| &e[..])
    }

    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.destinations.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.destinations.is_empty()
    }

    /// The map's elements, in no particular order.
    pub fn elements(&self) -> impl Iterator<Item = SetElement> + '_ {
        self.destinations
            .iter()
            .flat_map(|(d, (eps, _))| group_elements(d, eps))
    }
}

/// What one service contributes to a family's table: elements of the shared sets and
/// maps (its chains are the shared class chains, see [`Class`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// (shared set name, element) of the fixed sets, each at most once.
    pub elements: Vec<(SetName, SetElement)>,
    /// Its destinations' endpoints, in the class maps.
    pub endpoints: Vec<EndpointGroup>,
}

impl ServiceRules {
    /// Whether the service has nothing in this family.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty() && self.endpoints.is_empty()
    }

    /// Every element the service contributes: fixed sets first, then class maps.
    pub fn all_elements(&self) -> impl Iterator<Item = (SetName, SetElement)> + '_ {
        self.elements
            .iter()
            .cloned()
            .chain(self.endpoints.iter().flat_map(EndpointGroup::elements))
    }
}

/// The table of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyRuleset {
    /// `ip` or `ip6`.
    pub family: Family,
    /// The fixed chains (base chains, dispatch, checks), by name.
    pub chains: BTreeMap<String, ChainSpec>,
    /// The shared sets and maps, by name, with every service's elements.
    pub sets: BTreeMap<String, SetSpec>,
    /// The endpoint maps of the balancing classes in use ([`Class::map`]).
    pub class_maps: BTreeMap<Class, ClassMap>,
    /// The sets of affinity destinations by (node ports, timeout) in use
    /// ([`names::affinity_set`]).
    pub affinity_sets: BTreeMap<(bool, u32), SetSpec>,
    /// Each service's elements.
    pub services: BTreeMap<ServiceKey, ServiceRules>,
}

/// The chains whose rules follow the classes in use: for each balancing class the
/// chains that try the classes one by one, in this order (the cluster-wide ones
/// before the local ones, so that an `externalTrafficPolicy: Local` destination, in
/// both, is balanced cluster-wide for pods), and whether they end by dropping.
const BY_CLASS: [(&str, bool, Option<bool>, bool); 4] = [
    // (chain, node ports, only local classes, drop at the end)
    ("services-by-class", false, None, false),
    ("nodeports-by-class", true, None, false),
    ("external-local-by-class", false, Some(true), true),
    ("nodeport-external-local-by-class", true, Some(true), true),
];

impl FamilyRuleset {
    /// The fixed set or map `name`.
    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.get(name)
    }

    /// Every set that holds service elements: the fixed ones and the affinity
    /// destinations' (not the class maps).
    pub fn all_sets(&self) -> impl Iterator<Item = &SetSpec> {
        self.sets.values().chain(self.affinity_sets.values())
    }

    /// The definition of the set or map `name`: fixed, of a class or of affinity
    /// destinations.
    pub fn set_def(&self, name: &str) -> Option<&Set> {
        self.all_sets()
            .map(|s| &s.set)
            .chain(self.class_maps.values().map(|m| &m.set))
            .find(|s| s.name == name)
    }

    /// The chain `name`, fixed or following the classes (a copy, for tests and
    /// debugging).
    pub fn chain(&self, name: &str) -> Option<ChainSpec> {
        self.chains
            .get(name)
            .cloned()
            .or_else(|| self.class_chains().remove(name))
    }

    /// The classes in use: those with a map.
    pub fn classes(&self) -> Vec<Class> {
        self.class_maps.keys().copied().collect()
    }

    /// The chains whose rules follow the classes and the affinity timeouts in use: a
    /// chain per class, the by-class chains, and `affinity-record`.
    pub fn class_chains(&self) -> BTreeMap<String, ChainSpec> {
        let family = self.family;
        let mut out = BTreeMap::new();
        let spec = |name: &str, rules| ChainSpec {
            chain: Chain::new(family, TABLE, name),
            rules,
        };
        for c in self.class_maps.keys() {
            out.insert(c.chain(), spec(&c.chain(), c.rules(family)));
            out.insert(
                c.enter_chain(),
                spec(&c.enter_chain(), c.enter_rules(family)),
            );
        }
        for (name, node_port, local, drop) in BY_CLASS {
            let mut classes: Vec<&Class> = self
                .class_maps
                .keys()
                .filter(|c| c.node_port == node_port && local.is_none_or(|l| c.local == l))
                .collect();
            classes.sort_by_key(|c| (c.local, c.endpoints, c.affinity));
            let mut rules: Vec<Rule> = classes
                .into_iter()
                .flat_map(|c| c.trial_rules(family, name))
                .collect();
            if drop {
                rules.push(
                    Rule::new(family, TABLE, name)
                        .drop()
                        .comment("externalTrafficPolicy: Local, no endpoint on this node"),
                );
            }
            out.insert(name.to_owned(), spec(name, rules));
        }
        let node_ips = self.sets.contains_key(names::NODEPORT_IPS);
        let record = self
            .affinity_sets
            .keys()
            .map(|(node_port, timeout)| affinity_record(family, *node_port, *timeout, node_ips))
            .collect();
        out.insert(
            names::AFFINITY_RECORD.to_owned(),
            spec(names::AFFINITY_RECORD, record),
        );
        out
    }

    /// How many rules each chain holds, fixed or following the classes (chains without
    /// rules left out): what a listing of the kernel's table must show.
    pub fn rule_counts(&self) -> BTreeMap<String, usize> {
        self.chains
            .values()
            .cloned()
            .chain(self.class_chains().into_values())
            .filter(|c| !c.rules.is_empty())
            .map(|c| (c.chain.name, c.rules.len()))
            .collect()
    }

    /// The timeout of `destination` (`daddr . l4proto . dport`, or `l4proto . dport`
    /// for a node port) if it has session affinity.
    fn affinity_timeout(&self, node_port: bool, destination: &[Datum]) -> Option<u32> {
        self.affinity_sets
            .iter()
            .find(|((np, _), s)| *np == node_port && s.contains(destination))
            .map(|((_, t), _)| *t)
    }

    /// Whether an element of the [`names::AFFINITY`] map (`daddr . l4proto . dport .
    /// saddr` → `addr . port`) sends a client where this ruleset could: to an endpoint
    /// of a destination that has session affinity. Returns that destination's timeout.
    pub fn affinity_entry_timeout(&self, e: &SetElement) -> Option<u32> {
        let (Some(ElementData::Value(value)), [daddr, proto, port, _client]) =
            (&e.data, &e.key[..])
        else {
            return None;
        };
        let [Datum::Ipv4(_) | Datum::Ipv6(_), Datum::Port(ep_port)] = value[..] else {
            return None;
        };
        let ep_addr = match value[0] {
            Datum::Ipv4(a) => IpAddr::V4(a),
            Datum::Ipv6(a) => IpAddr::V6(a),
            _ => return None,
        };
        let endpoint = (ep_addr, ep_port);
        let has = |destination: &[Datum]| {
            self.class_maps
                .values()
                .filter_map(|m| m.endpoints(destination))
                .any(|eps| eps.contains(&endpoint))
        };
        let address = [*daddr, *proto, *port];
        let node_port = [*proto, *port];
        self.affinity_timeout(false, &address)
            .filter(|_| has(&address))
            .or_else(|| {
                self.affinity_timeout(true, &node_port)
                    .filter(|_| has(&node_port))
            })
    }

    /// The (destination, endpoint) pairs of `service` that session affinity may have
    /// recorded: for each of its destinations with affinity, each endpoint of any of
    /// its classes. An entry of the [`names::AFFINITY`] map outside them is stale.
    pub(crate) fn affinity_pairs(&self, service: &ServiceKey) -> BTreeSet<AffinityPair> {
        let Some(rules) = self.services.get(service) else {
            return BTreeSet::new();
        };
        let destinations: Vec<&[Datum]> = rules
            .elements
            .iter()
            .filter(|(s, _)| matches!(s, SetName::Affinity { .. }))
            .map(|(_, e)| &e.key[..])
            .collect();
        rules
            .endpoints
            .iter()
            .filter(|g| destinations.contains(&&g.destination[..]))
            .flat_map(|g| g.endpoints.iter().map(|ep| (g.destination.clone(), *ep)))
            .collect()
    }

    /// The set a service element goes to, made if it is an affinity set not there yet.
    fn set_mut(&mut self, name: SetName) -> Option<&mut SetSpec> {
        match name {
            SetName::Fixed(n) => self.sets.get_mut(n),
            SetName::Class(_) => None,
            SetName::Affinity { node_port, timeout } => {
                let family = self.family;
                Some(
                    self.affinity_sets
                        .entry((node_port, timeout))
                        .or_insert_with(|| {
                            SetSpec::new(affinity_set_def(family, node_port, timeout))
                        }),
                )
            }
        }
    }

    /// Counts one more contribution of each of `rules`' elements; with `appeared`,
    /// collects the elements the kernel does not have yet.
    pub(crate) fn add_refs(
        &mut self,
        rules: &ServiceRules,
        mut appeared: Option<&mut Vec<(SetName, SetElement)>>,
    ) {
        for (set, e) in &rules.elements {
            if let Some(spec) = self.set_mut(*set)
                && spec.add_ref(e) == Change::Added
                && let Some(out) = appeared.as_deref_mut()
            {
                out.push((*set, e.clone()));
            }
        }
        let family = self.family;
        for g in &rules.endpoints {
            let map = self
                .class_maps
                .entry(g.class)
                .or_insert_with(|| ClassMap::new(g.class.map(family)));
            match map.destinations.get_mut(&g.destination) {
                Some((eps, refs)) if *eps == g.endpoints => *refs += 1,
                Some(_) => {} // a conflicting claim: the first one keeps the destination
                None => {
                    map.destinations
                        .insert(g.destination.clone(), (Arc::clone(&g.endpoints), 1));
                    if let Some(out) = appeared.as_deref_mut() {
                        out.extend(g.elements());
                    }
                }
            }
        }
    }

    /// Counts one less contribution of each of `rules`' elements; collects the
    /// elements no service contributes any more. A class map or affinity set left
    /// empty is removed.
    pub(crate) fn remove_refs(
        &mut self,
        rules: &ServiceRules,
        gone: &mut Vec<(SetName, SetElement)>,
    ) {
        for (set, e) in &rules.elements {
            if let SetName::Affinity { node_port, timeout } = set
                && !self.affinity_sets.contains_key(&(*node_port, *timeout))
            {
                continue;
            }
            if let Some(spec) = self.set_mut(*set)
                && let Change::Removed(e) = spec.remove_ref(e)
            {
                gone.push((*set, e));
            }
            if let SetName::Affinity { node_port, timeout } = set
                && self
                    .affinity_sets
                    .get(&(*node_port, *timeout))
                    .is_some_and(SetSpec::is_empty)
            {
                self.affinity_sets.remove(&(*node_port, *timeout));
            }
        }
        for g in &rules.endpoints {
            let Some(map) = self.class_maps.get_mut(&g.class) else {
                continue;
            };
            if let Some((eps, refs)) = map.destinations.get_mut(&g.destination)
                && *eps == g.endpoints
            {
                *refs -= 1;
                if *refs == 0 {
                    map.destinations.remove(&g.destination);
                    gone.extend(g.elements());
                }
            }
            if map.is_empty() {
                self.class_maps.remove(&g.class);
            }
        }
    }
}

/// The set of affinity destinations of `family` with this timeout.
fn affinity_set_def(family: Family, node_port: bool, timeout: u32) -> Set {
    let mut key = vec![KeyType::InetProto, KeyType::InetService];
    if !node_port {
        key.insert(0, addr_type(family));
    }
    Set::new(family, TABLE, names::affinity_set(node_port, timeout), key)
}

/// The whole desired state: one table per family. The empty ruleset (the default) is
/// "no tables", the state before the first sync.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// The tables, `ip` first.
    pub families: Vec<FamilyRuleset>,
}

impl Ruleset {
    /// The table of `family`.
    pub fn family(&self, family: Family) -> Option<&FamilyRuleset> {
        self.families.iter().find(|f| f.family == family)
    }
}

/// A service port as `ns/name/proto/port`, for messages. No chain or map is named
/// after one: services are elements of shared maps.
pub fn port_id(svc: &Service, sp: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        svc.key.namespace,
        svc.key.name,
        sp.protocol.as_str(),
        sp.port
    )
}

fn family_of(ip: &IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ip,
        IpAddr::V6(_) => Family::Ip6,
    }
}

fn addr_datum(ip: IpAddr) -> Datum {
    match ip {
        IpAddr::V4(a) => Datum::Ipv4(a),
        IpAddr::V6(a) => Datum::Ipv6(a),
    }
}

fn addr_type(family: Family) -> KeyType {
    if family == Family::Ip6 {
        KeyType::Ipv6Addr
    } else {
        KeyType::Ipv4Addr
    }
}

/// The endpoints traffic may go to (KEP-1669): the ready ones; when none is ready, the
/// serving and terminating ones.
pub fn usable<'a>(endpoints: impl IntoIterator<Item = &'a Endpoint> + Clone) -> Vec<&'a Endpoint> {
    let ready: Vec<_> = endpoints.clone().into_iter().filter(|e| e.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    endpoints
        .into_iter()
        .filter(|e| e.serving && e.terminating)
        .collect()
}

/// Builds one family's table.
struct Builder<'a> {
    family: Family,
    node: &'a Node,
    /// The pod network's ranges of this family.
    cidrs: Vec<IpNet>,
    out: FamilyRuleset,
    /// The service being built, when one is: its elements and endpoint groups go here.
    cur: Option<ServiceRules>,
}

/// What a destination's dispatch chain is made of: `services` for service addresses,
/// `nodeports` for node ports.
struct Dispatch {
    chain: &'static str,
    /// The destination's fields: `daddr . l4proto . dport` or `l4proto . dport`.
    key: Vec<Field>,
    masquerade: &'static str,
    external_local: &'static str,
    external_local_chain: &'static str,
    classes: &'static str,
    by_class: &'static str,
    local_by_class: &'static str,
    /// "address" or "node port", for comments.
    what: &'static str,
}

impl<'a> Builder<'a> {
    fn new(family: Family, node: &'a Node) -> Self {
        let cidrs: Vec<IpNet> = node
            .cluster_cidrs
            .iter()
            .filter(|c| family_of(&c.addr()) == family)
            .copied()
            .collect();
        Builder {
            family,
            node,
            cidrs,
            out: FamilyRuleset {
                family,
                chains: BTreeMap::new(),
                sets: BTreeMap::new(),
                class_maps: BTreeMap::new(),
                affinity_sets: BTreeMap::new(),
                services: BTreeMap::new(),
            },
            cur: None,
        }
    }

    fn rule(&self, chain: &str) -> Rule {
        Rule::new(self.family, TABLE, chain)
    }

    fn add_chain(&mut self, chain: Chain, rules: Vec<Rule>) {
        self.out
            .chains
            .insert(chain.name.clone(), ChainSpec { chain, rules });
    }

    fn regular(&mut self, name: &str, rules: Vec<Rule>) {
        let chain = Chain::new(self.family, TABLE, name);
        self.add_chain(chain, rules);
    }

    fn base(&mut self, name: &str, ty: ChainType, hook: Hook, prio: i32, rules: Vec<Rule>) {
        let chain = Chain::new(self.family, TABLE, name).hook(ty, hook, prio);
        self.add_chain(chain, rules);
    }

    fn add_set(&mut self, set: Set) {
        self.out
            .sets
            .insert(set.name.clone(), SetSpec::new(set.clone()));
    }

    /// An element of the skeleton (not of a service): counted once.
    fn skeleton_element(&mut self, set: &str, e: SetElement) {
        if let Some(s) = self.out.sets.get_mut(set) {
            s.add_ref(&e);
        }
    }

    fn element(&mut self, set: &'static str, e: SetElement) {
        self.element_in(SetName::Fixed(set), e);
    }

    fn element_in(&mut self, set: SetName, e: SetElement) {
        if let Some(cur) = &mut self.cur
            && !cur.elements.iter().any(|(s, x)| *s == set && *x == e)
        {
            cur.elements.push((set, e));
        }
    }

    /// The elements of `eps` in the endpoint map of `class`: `prefix . bucket` →
    /// `addr . port`, buckets `0..N`, as one [`EndpointGroup`].
    fn endpoint_elements(&mut self, class: Class, prefix: &[Datum], eps: &[(IpAddr, u16)]) {
        let Some(cur) = &mut self.cur else { return };
        cur.endpoints.push(EndpointGroup {
            class,
            destination: prefix.into(),
            endpoints: eps
                .iter()
                .take(MAX_ENDPOINTS)
                .copied()
                .collect::<Vec<_>>()
                .into(),
        });
    }

    /// Registers `class`'s chain in [`names::CLASSES`].
    fn register(&mut self, class: Class) {
        self.element(
            names::CLASSES,
            SetElement::new(class.key()).verdict(Verdict::Goto(class.enter_chain())),
        );
    }

    /// Balances the destination `key` of dispatch map `map` over `eps` with `class`.
    fn dispatch(&mut self, map: &'static str, key: &[Datum], class: Class, eps: &[(IpAddr, u16)]) {
        self.endpoint_elements(class, key, eps);
        self.register(class);
        self.element(map, SetElement::new(key.to_vec()).value(class.key()));
    }

    /// The elements and endpoint groups of one service (services have no chains of
    /// their own: they use the shared class chains).
    fn service(&mut self, svc: &Service) -> ServiceRules {
        self.cur = Some(ServiceRules::default());
        for sp in &svc.ports {
            self.service_port(svc, sp);
        }
        let mut rules = self.cur.take().unwrap_or_default();
        // Kept for as long as the Service is (per family): without the spare capacity
        // pushing left (room for 4 elements where most Services have 1 or 2), 1,000
        // Services hold about 600 KB less.
        rules.elements.shrink_to_fit();
        rules.endpoints.shrink_to_fit();
        rules
    }

    fn addr(&self) -> KeyType {
        addr_type(self.family)
    }

    /// `ct status dnat`.
    fn ct_dnat(rule: Rule) -> Rule {
        rule.expr(Expr::Ct {
            key: CtKey::Status,
            dreg: Reg::R1,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: IPS_DST_NAT.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        })
        .expr(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        })
    }

    fn loopback(&self) -> IpNet {
        if self.family == Family::Ip6 {
            IpNet::from(IpAddr::V6(Ipv6Addr::LOCALHOST))
        } else {
            IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_default()
        }
    }

    /// `ip saddr != CIDR ...` for each of the pod network's ranges.
    fn not_from_pods(&self, mut rule: Rule) -> Rule {
        for c in &self.cidrs {
            rule = rule.match_saddr_not(*c);
        }
        rule
    }

    /// The rules of a dispatch chain (`services` or `nodeports`): masquerading and
    /// `externalTrafficPolicy: Local` first, decided by sets of destinations, then the
    /// destination's class. The class id is carried from the dispatch map to the
    /// verdict map of classes in the connection mark, within one rule, and the class's
    /// chain sets the mark back to 0: nobody else sees it. A connection that already
    /// has a mark (someone else's, set before DNAT) is left alone and finds its class
    /// by trying them in turn (the by-class chain).
    fn dispatch_rules(&self, d: &Dispatch) -> Vec<Rule> {
        let r = || self.rule(d.chain);
        let what = d.what;
        vec![
            r().match_in_set(&d.key, d.masquerade, false)
                .set_mark_bits(MASQ_MARK)
                .comment(format!(
                    "external {what} of an externalTrafficPolicy: Cluster service: masquerade"
                )),
            fib_saddr_local(r().match_in_set(&d.key, d.external_local, false), true)
                .set_mark_bits(MASQ_MARK)
                .comment(format!(
                    "external {what} of an externalTrafficPolicy: Local service, from this node: masquerade, any endpoint"
                )),
            fib_saddr_local(
                self.not_from_pods(r()).match_in_set(&d.key, d.external_local, false),
                false,
            )
            .goto(d.external_local_chain)
            .comment(format!(
                "external {what} of an externalTrafficPolicy: Local service, from outside: this node's endpoints"
            )),
            r().match_ct_mark(0)
                .set_ct_mark_from_map(&d.key, d.classes)
                .vmap(&[Field::CtMark], names::CLASSES)
                .comment("to the class of the destination: its id in the connection mark, for this rule only"),
            r().match_in_set(&d.key, d.classes, false)
                .goto(d.by_class)
                .comment("a connection that has a mark already: find its class without touching the mark"),
        ]
    }

    /// The chains, sets and rules every table has, whatever the services.
    fn skeleton(&mut self) {
        use names::*;
        let fam = self.family;
        let (_, daddr) = addr_words(fam);
        let saddr = saddr_field(fam);
        let dest = vec![daddr, Field::L4Proto, Field::Dport];
        let ports = vec![Field::L4Proto, Field::Dport];
        let addr = self.addr();
        let svc_key = vec![addr, KeyType::InetProto, KeyType::InetService];
        let port_key = vec![KeyType::InetProto, KeyType::InetService];
        let class = [KeyType::Mark];
        self.add_set(Set::new(fam, TABLE, SERVICE_IPS, svc_key.clone()).map(class));
        self.add_set(Set::new(fam, TABLE, SERVICE_NODEPORTS, port_key.clone()).map(class));
        self.add_set(Set::new(fam, TABLE, CLASSES, class).vmap());
        self.add_set(Set::new(fam, TABLE, MASQUERADE_IPS, svc_key.clone()));
        self.add_set(Set::new(fam, TABLE, MASQUERADE_NODEPORTS, port_key.clone()));
        self.add_set(Set::new(fam, TABLE, EXTERNAL_LOCAL_IPS, svc_key.clone()).map(class));
        self.add_set(Set::new(fam, TABLE, EXTERNAL_LOCAL_NODEPORTS, port_key.clone()).map(class));
        self.add_set(Set::new(fam, TABLE, NO_ENDPOINT_SERVICES, svc_key).vmap());
        self.add_set(Set::new(fam, TABLE, NO_ENDPOINT_NODEPORTS, port_key).vmap());
        self.add_set(Set::new(fam, TABLE, CLUSTER_IPS, vec![addr]));
        self.add_set(Set::new(fam, TABLE, HAIRPIN, vec![addr, addr]));
        // The client's pick per destination: a client comes either from a pod or the
        // node (cluster-wide endpoints) or from outside (local ones, under eTP Local),
        // never both, so the key needs no cluster/local field.
        let aff_key = [addr, KeyType::InetProto, KeyType::InetService, addr];
        self.add_set(
            Set::new(fam, TABLE, AFFINITY, aff_key)
                .map(vec![addr, KeyType::InetService])
                .timeout(None)
                .dynamic(),
        );

        // nat: the dispatch.
        let ips = Dispatch {
            chain: "services",
            key: dest.clone(),
            masquerade: MASQUERADE_IPS,
            external_local: EXTERNAL_LOCAL_IPS,
            external_local_chain: "external-local",
            classes: SERVICE_IPS,
            by_class: "services-by-class",
            local_by_class: "external-local-by-class",
            what: "address",
        };
        let nodeports = Dispatch {
            chain: "nodeports",
            key: ports,
            masquerade: MASQUERADE_NODEPORTS,
            external_local: EXTERNAL_LOCAL_NODEPORTS,
            external_local_chain: "nodeport-external-local",
            classes: SERVICE_NODEPORTS,
            by_class: "nodeports-by-class",
            local_by_class: "nodeport-external-local-by-class",
            what: "node port",
        };
        let mut services = Vec::new();
        if !self.cidrs.is_empty() {
            services.push(
                self.not_from_pods(self.rule("services"))
                    .match_in_set(&dest[..1], CLUSTER_IPS, false)
                    .set_mark_bits(MASQ_MARK)
                    .comment("ClusterIP traffic from outside the pod network: masquerade"),
            );
        }
        services.extend(self.dispatch_rules(&ips));
        let node_ips: Vec<IpAddr> = self
            .node
            .node_ips
            .iter()
            .filter(|ip| family_of(ip) == fam)
            .copied()
            .collect();
        if node_ips.is_empty() {
            services.push(
                self.rule("services")
                    .match_fib_daddr_local()
                    .match_daddr_not(self.loopback())
                    .goto("nodeports")
                    .comment("node ports, on the node's own addresses but not loopback"),
            );
        } else {
            self.add_set(Set::new(fam, TABLE, NODEPORT_IPS, vec![addr]));
            for ip in &node_ips {
                self.skeleton_element(NODEPORT_IPS, SetElement::new([addr_datum(*ip)]));
            }
            services.push(
                self.rule("services")
                    .match_in_set(&dest[..1], NODEPORT_IPS, false)
                    .goto("nodeports")
                    .comment("node ports, on the Node's addresses"),
            );
        }
        let nodeport_daddr = |r: Rule| {
            if node_ips.is_empty() {
                r.match_fib_daddr_local()
            } else {
                r.match_in_set(&dest[..1], NODEPORT_IPS, false)
            }
        };
        self.regular("services", services);
        let np_rules = self.dispatch_rules(&nodeports);
        self.regular("nodeports", np_rules);
        for d in [&ips, &nodeports] {
            let r = || self.rule(d.external_local_chain);
            let rules = vec![
                r().match_ct_mark(0)
                    .set_ct_mark_from_map(&d.key, d.external_local)
                    .vmap(&[Field::CtMark], CLASSES)
                    .comment("to the class of this node's endpoints (none: drop), its id in the connection mark for this rule only"),
                r().goto(d.local_by_class)
                    .comment("a connection that has a mark already: find the class without touching the mark"),
            ];
            self.regular(d.external_local_chain, rules);
        }
        self.regular(AFFINITY_LOOKUP, vec![affinity_lookup(fam)]);
        let jump_services = vec![
            self.rule("nat-prerouting")
                .jump("services")
                .comment("connections to Services, from pods and from outside"),
        ];
        self.base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            priority::DSTNAT,
            jump_services,
        );
        let jump_services = vec![
            self.rule("nat-output")
                .jump("services")
                .comment("connections to Services from the node itself"),
        ];
        self.base(
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            priority::DSTNAT,
            jump_services,
        );
        // Hairpin: after DNAT, a packet whose source is its own destination is an
        // endpoint reaching itself through its service. (A register XOR of saddr and
        // daddr would need no set, but nft 1.0.6 cannot print it.)
        let hairpin = Self::ct_dnat(self.rule("nat-postrouting")).match_in_set(
            &[saddr, daddr],
            HAIRPIN,
            false,
        );
        let post = vec![
            self.rule("nat-postrouting")
                .match_mark(MASQ_MARK, MASQ_MARK)
                .clear_mark_bits(MASQ_MARK)
                .masquerade_fully_random()
                .comment("marked for masquerade: clear the mark bit, masquerade"),
            hairpin
                .masquerade_fully_random()
                .comment("hairpin: an endpoint reaching itself through its service"),
        ];
        self.base(
            "nat-postrouting",
            ChainType::Nat,
            Hook::Postrouting,
            priority::SRCNAT,
            post,
        );

        // filter: rejects and drops, before DNAT (no endpoints) and after (bad ports);
        // after DNAT, the affinity picks are recorded.
        let port_unreachable = if fam == Family::Ip6 { 4 } else { 3 };
        let reject = vec![
            self.rule(REJECT_CHAIN)
                .match_l4proto(netlink::nft::proto::TCP)
                .reject(Reject::TcpReset)
                .comment("TCP: reset"),
            self.rule(REJECT_CHAIN)
                .reject(Reject::Icmp(port_unreachable))
                .comment("others: port unreachable"),
        ];
        self.regular(REJECT_CHAIN, reject);
        let check = vec![
            self.rule("endpoints-check")
                .vmap(&dest, NO_ENDPOINT_SERVICES)
                .comment("a service address without endpoints: reject (or drop)"),
            nodeport_daddr(self.rule("endpoints-check"))
                .vmap(&nodeports.key, NO_ENDPOINT_NODEPORTS)
                .comment("a node port without endpoints: reject (or drop)"),
        ];
        self.regular("endpoints-check", check);
        let mut check = vec![
            self.rule("cluster-ips-check")
                .match_in_set(&dest[..1], CLUSTER_IPS, false)
                .goto(REJECT_CHAIN)
                .comment("a port the ClusterIP's service does not define"),
        ];
        for c in self
            .node
            .service_cidrs
            .iter()
            .filter(|c| family_of(&c.addr()) == fam)
        {
            check.push(
                self.rule("cluster-ips-check")
                    .match_daddr(*c)
                    .drop()
                    .comment("an unallocated ClusterIP"),
            );
        }
        self.regular("cluster-ips-check", check);
        let new = ct_state::NEW;
        let family = self.family;
        let record = || {
            Self::ct_dnat(Rule::new(family, TABLE, "x").match_ct_state(new))
                .jump(AFFINITY_RECORD)
                .comment("new connections sent to an endpoint: record sessionAffinity picks")
        };
        for (name, hook, prio, targets) in [
            (
                "filter-prerouting",
                Hook::Prerouting,
                priority::DSTNAT - 10,
                &["endpoints-check"][..],
            ),
            (
                "filter-output",
                Hook::Output,
                priority::DSTNAT - 10,
                &["endpoints-check"][..],
            ),
            (
                "filter-prerouting-post-dnat",
                Hook::Prerouting,
                priority::DSTNAT + 10,
                &[AFFINITY_RECORD][..],
            ),
            (
                "filter-forward",
                Hook::Forward,
                priority::FILTER,
                &["cluster-ips-check"][..],
            ),
            (
                "filter-output-post-dnat",
                Hook::Output,
                priority::DSTNAT + 10,
                &[AFFINITY_RECORD, "cluster-ips-check"][..],
            ),
        ] {
            let rules = targets
                .iter()
                .map(|target| {
                    let mut r = match *target {
                        AFFINITY_RECORD => record(),
                        "endpoints-check" => Rule::new(family, TABLE, "x")
                            .match_ct_state(new)
                            .jump(*target)
                            .comment("new connections to Services without endpoints: reject (before DNAT)"),
                        _ => Rule::new(family, TABLE, "x")
                            .match_ct_state(new)
                            .jump(*target)
                            .comment("new connections still to a ClusterIP after DNAT: a port it lacks, or no Service"),
                    };
                    r.chain = name.to_owned();
                    r
                })
                .collect();
            self.base(name, ChainType::Filter, hook, prio, rules);
        }
    }

    fn service_port(&mut self, svc: &Service, sp: &ServicePort) {
        use names::*;
        let fam = self.family;
        let cluster_ips: Vec<IpAddr> = svc
            .cluster_ips
            .iter()
            .filter(|ip| family_of(ip) == fam)
            .copied()
            .collect();
        if cluster_ips.is_empty() {
            return; // the service is not of this family
        }
        let external_ips: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .chain(&svc.load_balancer_ips)
            .filter(|ip| family_of(ip) == fam && !cluster_ips.contains(ip))
            .copied()
            .collect();
        let eps: Vec<&Endpoint> = svc
            .endpoints
            .iter()
            .filter(|e| family_of(&e.address) == fam && e.port_for(sp).is_some())
            .collect();
        let pick = |list: Vec<&Endpoint>| -> Vec<(IpAddr, u16)> {
            list.into_iter()
                .filter_map(|e| Some((e.address, e.port_for(sp)?)))
                .collect()
        };
        let cluster = pick(crate::view::cluster_endpoints(
            eps.iter().copied(),
            &self.node.name,
            self.node.zone.as_deref(),
        ));
        let local =
            pick(usable(eps.iter().copied().filter(|e| {
                e.node_name.as_deref() == Some(self.node.name.as_str())
            })));
        let proto = Datum::Proto(sp.protocol.number());
        let reject = Verdict::Goto(REJECT_CHAIN.into());
        let timeout = svc.affinity_timeout.map(|t| t.clamp(1, 0x07ff_ffff));
        let affinity = timeout.is_some();
        // Hairpin pairs for the endpoints on this node (or of unknown node).
        for e in &eps {
            if e.node_name.as_deref().is_none_or(|n| n == self.node.name) {
                self.element(
                    HAIRPIN,
                    SetElement::new([addr_datum(e.address), addr_datum(e.address)]),
                );
            }
        }
        let remember = |b: &mut Self, node_port: bool, key: &[Datum]| {
            if let Some(timeout) = timeout {
                b.element_in(
                    SetName::Affinity { node_port, timeout },
                    SetElement::new(key.to_vec()),
                );
            }
        };

        let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
        let has_external = sp.node_port.is_some() || !external_ips.is_empty();

        // Internal destinations: the ClusterIPs.
        let internal = if internal_local {
            (!local.is_empty()).then_some((true, &local))
        } else {
            (!cluster.is_empty()).then_some((false, &cluster))
        };
        for ip in &cluster_ips {
            self.element(CLUSTER_IPS, SetElement::new([addr_datum(*ip)]));
            let key = vec![addr_datum(*ip), proto, Datum::Port(sp.port)];
            match internal {
                Some((is_local, list)) => {
                    let class = Class::balance(false, is_local, list.len(), affinity);
                    self.dispatch(SERVICE_IPS, &key, class, list);
                    remember(self, false, &key);
                }
                // iTP Local with endpoints elsewhere only: drop; none at all: reject.
                None if !cluster.is_empty() => self.element(
                    NO_ENDPOINT_SERVICES,
                    SetElement::new(key).verdict(Verdict::Drop),
                ),
                None => self.element(
                    NO_ENDPOINT_SERVICES,
                    SetElement::new(key).verdict(reject.clone()),
                ),
            }
        }
        if !has_external {
            return;
        }

        // External destinations: node ports, external IPs, load-balancer IPs.
        if cluster.is_empty() {
            for ip in &external_ips {
                let key = vec![addr_datum(*ip), proto, Datum::Port(sp.port)];
                self.element(
                    NO_ENDPOINT_SERVICES,
                    SetElement::new(key).verdict(reject.clone()),
                );
            }
            if let Some(np) = sp.node_port {
                let key = vec![proto, Datum::Port(np)];
                self.element(
                    NO_ENDPOINT_NODEPORTS,
                    SetElement::new(key).verdict(reject.clone()),
                );
            }
            return;
        }
        let mut destinations: Vec<(Vec<Datum>, bool)> = external_ips
            .iter()
            .map(|ip| (vec![addr_datum(*ip), proto, Datum::Port(sp.port)], false))
            .collect();
        if let Some(np) = sp.node_port {
            destinations.push((vec![proto, Datum::Port(np)], true));
        }
        for (key, node_port) in destinations {
            let (map, masquerade, local_map) = if node_port {
                (
                    SERVICE_NODEPORTS,
                    MASQUERADE_NODEPORTS,
                    EXTERNAL_LOCAL_NODEPORTS,
                )
            } else {
                (SERVICE_IPS, MASQUERADE_IPS, EXTERNAL_LOCAL_IPS)
            };
            // Pods (and, masqueraded, the node itself) reach every endpoint.
            let all = Class::balance(node_port, false, cluster.len(), affinity);
            self.dispatch(map, &key, all, &cluster);
            remember(self, node_port, &key);
            if !external_local {
                self.element(masquerade, SetElement::new(key));
                continue;
            }
            let id = if local.is_empty() {
                self.element(
                    CLASSES,
                    SetElement::new([Datum::Mark(NO_LOCAL_ENDPOINT)]).verdict(Verdict::Drop),
                );
                NO_LOCAL_ENDPOINT
            } else {
                let here = Class::balance(node_port, true, local.len(), affinity);
                self.endpoint_elements(here, &key, &local);
                self.register(here);
                here.id()
            };
            self.element(local_map, SetElement::new(key).value([Datum::Mark(id)]));
        }
    }
}

/// The ruleset the node should have for `view`: a pure function, the same inputs always
/// give the same output.
pub fn desired(view: &View, node: &Node) -> Ruleset {
    let mut families = Vec::new();
    for family in [Family::Ip, Family::Ip6] {
        let mut b = Builder::new(family, node);
        b.skeleton();
        for svc in view.services.values() {
            let rules = b.service(svc);
            if !rules.is_empty() {
                b.out.add_refs(&rules, None);
                b.out.services.insert(svc.key.clone(), rules);
            }
        }
        families.push(b.out);
    }
    Ruleset { families }
}

/// The rules of one service in `family`, as [`desired`] computes them (empty when the
/// service has none there).
pub fn service_rules(svc: &Service, node: &Node, family: Family) -> ServiceRules {
    Builder::new(family, node).service(svc)
}

/// What the `healthCheckNodePort` servers of `externalTrafficPolicy: Local` services
/// should answer on this node: for each such port, the service and its number of
/// usable local endpoints (kube-proxy answers 200 when it is above zero, else 503).
pub fn health_checks(view: &View, node: &Node) -> BTreeMap<u16, (ServiceKey, usize)> {
    view.services
        .values()
        .filter(|s| s.external_traffic_policy == TrafficPolicy::Local)
        .filter_map(|s| {
            let port = s.health_check_node_port?;
            let local = usable(
                s.endpoints
                    .iter()
                    .filter(|e| e.node_name.as_deref() == Some(node.name.as_str())),
            )
            .len();
            Some((port, (s.key.clone(), local)))
        })
        .collect()
}
