//! The pure rule computation: a [`View`] and the node it runs on in, a [`Ruleset`] out.
//!
//! The layout is described in the crate documentation ([`crate`]); this module is the
//! one place that knows it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use netlink::nft::{
    Chain, ChainType, CmpOp, CtKey, Datum, DynsetOp, ElementData, Expr, Family, FibResult, Hook,
    KeyType, NatKind, Reg, Reject, Rule, Set, SetElement, Verdict, ct_state, fib_flags, priority,
};

use crate::view::{Endpoint, Service, ServiceKey, ServicePort, TrafficPolicy, View};

/// The name of the proxy's table, in both the `ip` and the `ip6` family.
pub const TABLE: &str = "kubewire-proxy";
/// The packet mark bit that asks `nat-postrouting` to masquerade (kube-proxy's 0x4000).
pub const MASQ_MARK: u32 = 0x4000;
/// `IPS_DST_NAT`: the conntrack status bit of a connection whose destination was NATed.
const IPS_DST_NAT: u32 = 0x20;

/// Shared sets and maps, by name.
pub mod names {
    /// `daddr . l4proto . dport` → the destination's [`Class`](super::Class) id.
    pub const SERVICE_IPS: &str = "service-ips";
    /// `l4proto . dport` → the node port's class id, for destinations local to the node.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// Class id → `goto` the class's chain: a verdict map of a handful of elements.
    pub const CLASSES: &str = "classes";
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

/// What a class chain does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClassKind {
    /// DNAT to one of the destination's `endpoints` cluster-wide endpoints, each with
    /// probability `1/endpoints`.
    Cluster,
    /// The same over its local endpoints.
    Local,
    /// Mark for masquerade, then [`ClassKind::Cluster`] (`externalTrafficPolicy:
    /// Cluster` on external destinations).
    Masquerade,
    /// `externalTrafficPolicy: Local` on external destinations: pod sources to all
    /// endpoints, node-local sources marked and to all endpoints, the rest to the
    /// local ones (`local_endpoints`), or dropped when there is none.
    ExternalLocal,
}

/// A class of destinations that are handled alike: the shared chain they are sent to.
///
/// Every destination (service address and port, or node port) maps to its class in
/// [`names::SERVICE_IPS`] / [`names::SERVICE_NODEPORTS`], and each class in use to
/// its chain in [`names::CLASSES`]. A balancing class's chain looks its destination's
/// endpoints up in the class's own map (named as the chain, [`Class::map`]), keyed by
/// the destination and a random bucket `0..N`: so a class is fixed by the number of
/// endpoints, not by which they are, and a handful of chains serve every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Class {
    /// What the chain does.
    pub kind: ClassKind,
    /// Keyed by `l4proto . dport` (node ports) rather than `daddr . l4proto . dport`.
    pub node_port: bool,
    /// Number of endpoints picked from (for [`ClassKind::Local`] the local ones;
    /// otherwise the cluster-wide ones).
    pub endpoints: u16,
    /// [`ClassKind::ExternalLocal`]: the number of local endpoints (0 for the others).
    pub local_endpoints: u16,
    /// `sessionAffinity: ClientIP` with this timeout, in seconds.
    pub affinity: Option<u32>,
}

impl Class {
    /// A balancing class (cluster-wide or local endpoints).
    pub fn balance(node_port: bool, local: bool, endpoints: usize, affinity: Option<u32>) -> Self {
        Class {
            kind: if local {
                ClassKind::Local
            } else {
                ClassKind::Cluster
            },
            node_port,
            endpoints: endpoints.min(MAX_ENDPOINTS) as u16,
            local_endpoints: 0,
            affinity: affinity.map(|t| t.clamp(1, 0x07ff_ffff)),
        }
    }

    /// The class's id, the value of its destinations in the dispatch maps and the key
    /// of its chain in [`names::CLASSES`]: `kind . node_port . timeout`, `N . local N`
    /// (two words: every class has its own).
    pub fn key(&self) -> [Datum; 2] {
        let kind = match self.kind {
            ClassKind::Cluster => 0,
            ClassKind::Local => 1,
            ClassKind::Masquerade => 2,
            ClassKind::ExternalLocal => 3,
        };
        [
            Datum::Mark(kind << 28 | u32::from(self.node_port) << 27 | self.affinity.unwrap_or(0)),
            Datum::Mark(u32::from(self.endpoints) << 16 | u32::from(self.local_endpoints)),
        ]
    }

    /// The class whose chain is named `name` ([`Class::chain`]).
    pub fn from_chain(name: &str) -> Option<Self> {
        let (node_port, rest) = match name.strip_prefix("nodeport-") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        let (rest, affinity) = match rest.split_once("-affinity-") {
            Some((rest, t)) => (rest, Some(t.parse().ok()?)),
            None => (rest, None),
        };
        let (kind, counts) = [
            ("balance-local-", ClassKind::Local),
            ("balance-", ClassKind::Cluster),
            ("masquerade-", ClassKind::Masquerade),
            ("external-local-", ClassKind::ExternalLocal),
        ]
        .into_iter()
        .find_map(|(p, k)| Some((k, rest.strip_prefix(p)?)))?;
        let (n, local) = match kind {
            ClassKind::ExternalLocal => {
                let (n, l) = counts.split_once('-')?;
                (n.parse().ok()?, l.parse().ok()?)
            }
            _ => (counts.parse().ok()?, 0),
        };
        Some(Class {
            kind,
            node_port,
            endpoints: n,
            local_endpoints: local,
            affinity,
        })
    }

    /// The name of the class's chain, e.g. `balance-10`, `nodeport-masquerade-3`,
    /// `external-local-5-2-affinity-10800`.
    pub fn chain(&self) -> String {
        let mut name = String::new();
        if self.node_port {
            name.push_str("nodeport-");
        }
        match self.kind {
            ClassKind::Cluster => name.push_str(&format!("balance-{}", self.endpoints)),
            ClassKind::Local => name.push_str(&format!("balance-local-{}", self.endpoints)),
            ClassKind::Masquerade => name.push_str(&format!("masquerade-{}", self.endpoints)),
            ClassKind::ExternalLocal => name.push_str(&format!(
                "external-local-{}-{}",
                self.endpoints, self.local_endpoints
            )),
        }
        if let Some(t) = self.affinity {
            name.push_str(&format!("-affinity-{t}"));
        }
        name
    }

    /// Whether the class balances (has an endpoint map) rather than forwards.
    pub fn balances(&self) -> bool {
        matches!(self.kind, ClassKind::Cluster | ClassKind::Local)
    }

    /// The endpoint map of a balancing class, named as its chain: `daddr . l4proto .
    /// dport . bucket` (node ports: `l4proto . dport . bucket`) → `addr . port`. One
    /// map per class, bound by one rule, the balancing rule of its chain: a new class
    /// binds an empty map (binding walks the map's elements, and adding an element
    /// walks the map's bindings).
    pub fn map(&self, family: Family) -> Set {
        let addr = addr_type(family);
        let mut key = vec![KeyType::InetProto, KeyType::InetService, KeyType::Mark];
        if !self.node_port {
            key.insert(0, addr);
        }
        Set::new(family, TABLE, self.chain(), key).map(vec![addr, KeyType::InetService])
    }

    /// The balancing classes this one's chain goes to.
    fn targets(&self) -> Vec<Class> {
        let bal = |local, n| Class::balance(self.node_port, local, n, self.affinity);
        match self.kind {
            ClassKind::Cluster | ClassKind::Local => vec![],
            ClassKind::Masquerade => vec![bal(false, usize::from(self.endpoints))],
            ClassKind::ExternalLocal => {
                let mut t = vec![bal(false, usize::from(self.endpoints))];
                if self.local_endpoints > 0 {
                    t.push(bal(true, usize::from(self.local_endpoints)));
                }
                t
            }
        }
    }

    /// The rules of the class's chain in a table of `family`; `cidrs` are the pod
    /// network's ranges of that family.
    pub fn rules(&self, family: Family, cidrs: &[IpNet]) -> Vec<Rule> {
        let name = self.chain();
        let rule = || Rule::new(family, TABLE, name.clone());
        let targets = self.targets();
        match self.kind {
            ClassKind::Cluster | ClassKind::Local => self.balance_rules(family, rule),
            ClassKind::Masquerade => vec![rule().set_mark_bits(MASQ_MARK).goto(targets[0].chain())],
            ClassKind::ExternalLocal => {
                let all = targets[0].chain();
                let mut rules: Vec<Rule> = cidrs
                    .iter()
                    .map(|c| {
                        rule()
                            .match_saddr(*c)
                            .goto(all.clone())
                            .comment("pod traffic: short-circuit to all endpoints")
                    })
                    .collect();
                rules.push(
                    fib_saddr_local(rule())
                        .set_mark_bits(MASQ_MARK)
                        .goto(all)
                        .comment("traffic from the node itself: masquerade"),
                );
                rules.push(match targets.get(1) {
                    Some(local) => rule().goto(local.chain()),
                    None => rule()
                        .drop()
                        .comment("externalTrafficPolicy: Local, no endpoint on this node"),
                });
                rules
            }
        }
    }

    /// The balancing rule: the destination and a random bucket looked up in the
    /// endpoint map, DNAT to the value found, all in one rule (registers do not carry
    /// over between rules). With affinity, a first rule DNATs a known client to its
    /// recorded endpoint, and the balancing rule records its pick (`update @affinity`)
    /// from the same registers.
    ///
    /// Registers (32-bit slots; `A` = address words, 1 or 4): daddr at 0, l4proto at
    /// `A`, dport at `A+1`, the bucket (then saddr, for the affinity key) at `A+2`, the
    /// endpoint found at 5 (IPv4) or 11 (IPv6): the affinity key and its value side by
    /// side fit in the sixteen registers.
    fn balance_rules(&self, family: Family, rule: impl Fn() -> Rule) -> Vec<Rule> {
        use netlink::nft::Field;
        let v6 = family == Family::Ip6;
        let (aw, found) = if v6 { (4, 11) } else { (1, 5) };
        let (daddr, saddr) = if v6 {
            (Field::Ip6Daddr, Field::Ip6Saddr)
        } else {
            (Field::IpDaddr, Field::IpSaddr)
        };
        let destination = |r: Rule, with_daddr: bool| {
            let r = if with_daddr {
                r.expr(daddr.load(Reg::r32(0)))
            } else {
                r
            };
            r.expr(Field::L4Proto.load(Reg::r32(aw)))
                .expr(Field::Dport.load(Reg::r32(aw + 1)))
        };
        let dnat = |r: Rule| {
            r.expr(Expr::Nat {
                kind: NatKind::Dnat,
                family,
                addr: Some(Reg::r32(found)),
                port: Some(Reg::r32(found + aw)),
                flags: 0,
            })
        };
        let mut rules = Vec::new();
        if let Some(timeout) = self.affinity {
            let r = destination(rule(), true)
                .expr(saddr.load(Reg::r32(aw + 2)))
                .expr(Expr::Lookup {
                    set: names::AFFINITY.into(),
                    sreg: Reg::r32(0),
                    dreg: Some(Reg::r32(found)),
                    invert: false,
                });
            rules.push(dnat(r).comment(format!("sessionAffinity: ClientIP, {timeout}s")));
        }
        let key = if self.node_port {
            Reg::r32(aw)
        } else {
            Reg::r32(0)
        };
        let mut r = destination(rule(), self.affinity.is_some() || !self.node_port)
            .expr(Expr::Numgen {
                modulus: u32::from(self.endpoints),
                offset: 0,
                dreg: Reg::r32(aw + 2),
            })
            .expr(Expr::Lookup {
                set: self.chain().as_str().into(),
                sreg: key,
                dreg: Some(Reg::r32(found)),
                invert: false,
            });
        if let Some(timeout) = self.affinity {
            r = r.expr(saddr.load(Reg::r32(aw + 2))).expr(Expr::Dynset {
                set: names::AFFINITY.into(),
                op: DynsetOp::Update,
                sreg_key: Reg::r32(0),
                sreg_data: Some(Reg::r32(found)),
                timeout: Some(Duration::from_secs(u64::from(timeout))),
            });
        }
        rules.push(dnat(r));
        rules
    }
}

/// `fib saddr type local`: traffic from this node's own addresses.
fn fib_saddr_local(rule: Rule) -> Rule {
    rule.expr(Expr::Fib {
        result: FibResult::AddrType,
        flags: fib_flags::SADDR,
        dreg: Reg::R1,
    })
    .expr(Expr::Cmp {
        sreg: Reg::R1,
        op: CmpOp::Eq,
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

/// The set an element of a service goes to: a fixed one, or the endpoint map of a
/// balancing class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetName {
    /// A set of the skeleton, by name ([`names`]).
    Fixed(&'static str),
    /// [`Class::map`].
    Class(Class),
}

impl std::fmt::Display for SetName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetName::Fixed(n) => f.write_str(n),
            SetName::Class(c) => f.write_str(&c.chain()),
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
    /// Each service's elements.
    pub services: BTreeMap<ServiceKey, ServiceRules>,
    /// The pod network's ranges of this family (the external-local class chains'
    /// rules need them).
    pub cidrs: Vec<IpNet>,
}

impl FamilyRuleset {
    /// The fixed set or map `name`.
    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.get(name)
    }

    /// The definition of the set or map `name`, fixed or of a class.
    pub fn set_def(&self, name: &str) -> Option<&Set> {
        self.sets.get(name).map(|s| &s.set).or_else(|| {
            self.class_maps
                .values()
                .find(|m| m.set.name == name)
                .map(|m| &m.set)
        })
    }

    /// The chain `name`, fixed or of a class (a copy, for tests and debugging).
    pub fn chain(&self, name: &str) -> Option<ChainSpec> {
        self.chains
            .get(name)
            .cloned()
            .or_else(|| self.class_chains().remove(name))
    }

    /// The classes in use: those of the elements of [`names::CLASSES`].
    pub fn classes(&self) -> Vec<Class> {
        let Some(set) = self.sets.get(names::CLASSES) else {
            return vec![];
        };
        let mut classes: Vec<Class> = set
            .elements()
            .filter_map(|e| match e.data? {
                ElementData::Verdict(Verdict::Goto(chain)) => Class::from_chain(&chain),
                _ => None,
            })
            .collect();
        classes.sort();
        classes
    }

    /// The chains of the classes in use, and of the balancing classes they go to.
    pub fn class_chains(&self) -> BTreeMap<String, ChainSpec> {
        let mut out = BTreeMap::new();
        let mut todo = self.classes();
        while let Some(c) = todo.pop() {
            let name = c.chain();
            if out.contains_key(&name) {
                continue;
            }
            todo.extend(c.targets());
            let chain = Chain::new(self.family, TABLE, name.clone());
            let rules = c.rules(self.family, &self.cidrs);
            out.insert(name, ChainSpec { chain, rules });
        }
        out
    }

    /// Counts one more contribution of each of `rules`' elements; with `appeared`,
    /// collects the elements the kernel does not have yet.
    pub(crate) fn add_refs(
        &mut self,
        rules: &ServiceRules,
        mut appeared: Option<&mut Vec<(SetName, SetElement)>>,
    ) {
        for (set, e) in &rules.elements {
            let SetName::Fixed(n) = set else { continue };
            if let Some(spec) = self.sets.get_mut(*n)
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
    /// elements no service contributes any more. A class map left empty is removed.
    pub(crate) fn remove_refs(
        &mut self,
        rules: &ServiceRules,
        gone: &mut Vec<(SetName, SetElement)>,
    ) {
        for (set, e) in &rules.elements {
            let SetName::Fixed(n) = set else { continue };
            if let Some(spec) = self.sets.get_mut(*n)
                && let Change::Removed(e) = spec.remove_ref(e)
            {
                gone.push((*set, e));
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
    cidrs: Vec<IpNet>,
    out: FamilyRuleset,
    /// The service being built, when one is: its elements and endpoint groups go here.
    cur: Option<ServiceRules>,
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
            cidrs: cidrs.clone(),
            out: FamilyRuleset {
                family,
                chains: BTreeMap::new(),
                sets: BTreeMap::new(),
                class_maps: BTreeMap::new(),
                services: BTreeMap::new(),
                cidrs,
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
        let set = SetName::Fixed(set);
        if let Some(cur) = &mut self.cur
            && !cur.elements.iter().any(|(s, x)| *s == set && *x == e)
        {
            cur.elements.push((set, e));
        }
    }

    /// The elements of `eps` in the endpoint map of `class` (a balancing class):
    /// `prefix . bucket` → `addr . port`, buckets `0..N`, as one [`EndpointGroup`].
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

    /// Sends the destination `key` of `map` to `class`, whose chain it registers.
    fn dispatch(&mut self, map: &'static str, key: Vec<Datum>, class: Class) {
        self.element(
            names::CLASSES,
            SetElement::new(class.key()).verdict(Verdict::Goto(class.chain())),
        );
        self.element(map, SetElement::new(key).value(class.key()));
    }

    /// The elements and endpoint groups of one service (services have no chains of
    /// their own: they use the shared class chains).
    fn service(&mut self, svc: &Service) -> ServiceRules {
        self.cur = Some(ServiceRules::default());
        for sp in &svc.ports {
            self.service_port(svc, sp);
        }
        self.cur.take().unwrap_or_default()
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

    /// The chains, sets and rules every table has, whatever the services.
    fn skeleton(&mut self) {
        use names::*;
        let dispatch = [
            netlink::nft::Field::IpDaddr,
            netlink::nft::Field::L4Proto,
            netlink::nft::Field::Dport,
        ];
        let dispatch = if self.family == Family::Ip6 {
            [
                netlink::nft::Field::Ip6Daddr,
                dispatch[1],
                netlink::nft::Field::Dport,
            ]
        } else {
            dispatch
        };
        let ports = [netlink::nft::Field::L4Proto, netlink::nft::Field::Dport];
        let fam = self.family;
        let addr = self.addr();
        let svc_key = vec![addr, KeyType::InetProto, KeyType::InetService];
        let port_key = vec![KeyType::InetProto, KeyType::InetService];
        let class = [KeyType::Mark, KeyType::Mark];
        self.add_set(Set::new(fam, TABLE, SERVICE_IPS, svc_key.clone()).map(class));
        self.add_set(Set::new(fam, TABLE, SERVICE_NODEPORTS, port_key.clone()).map(class));
        self.add_set(Set::new(fam, TABLE, CLASSES, class).vmap());

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
        let mut services = Vec::new();
        if !self.cidrs.is_empty() {
            let mut r = self.rule("services");
            for c in &self.cidrs {
                r = r.match_saddr_not(*c);
            }
            services.push(
                r.match_in_set(&dispatch[..1], CLUSTER_IPS, false)
                    .set_mark_bits(MASQ_MARK)
                    .comment("ClusterIP traffic from outside the pod network: masquerade"),
            );
        }
        services.push(
            self.rule("services")
                .map_vmap(&dispatch, SERVICE_IPS, CLASSES),
        );
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
                    .map_vmap(&ports, SERVICE_NODEPORTS, CLASSES)
                    .comment("node ports, on the node's own addresses but not loopback"),
            );
        } else {
            self.add_set(Set::new(fam, TABLE, NODEPORT_IPS, vec![addr]));
            for ip in &node_ips {
                self.skeleton_element(NODEPORT_IPS, SetElement::new([addr_datum(*ip)]));
            }
            services.push(
                self.rule("services")
                    .match_in_set(&dispatch[..1], NODEPORT_IPS, false)
                    .map_vmap(&ports, SERVICE_NODEPORTS, CLASSES)
                    .comment("node ports, on the Node's addresses"),
            );
        }
        let nodeport_daddr = |r: Rule| {
            if node_ips.is_empty() {
                r.match_fib_daddr_local()
            } else {
                r.match_in_set(&dispatch[..1], NODEPORT_IPS, false)
            }
        };
        self.regular("services", services);
        let jump_services = vec![self.rule("nat-prerouting").jump("services")];
        self.base(
            "nat-prerouting",
            ChainType::Nat,
            Hook::Prerouting,
            priority::DSTNAT,
            jump_services,
        );
        let jump_services = vec![self.rule("nat-output").jump("services")];
        self.base(
            "nat-output",
            ChainType::Nat,
            Hook::Output,
            priority::DSTNAT,
            jump_services,
        );
        let src = if fam == Family::Ip6 {
            netlink::nft::Field::Ip6Saddr
        } else {
            netlink::nft::Field::IpSaddr
        };
        // Hairpin: after DNAT, a packet whose source is its own destination is an
        // endpoint reaching itself through its service. (A register XOR of saddr and
        // daddr would need no set, but nft 1.0.6 cannot print it.)
        let hairpin = Self::ct_dnat(self.rule("nat-postrouting")).match_in_set(
            &[src, dispatch[0]],
            HAIRPIN,
            false,
        );
        let post = vec![
            self.rule("nat-postrouting")
                .match_mark(MASQ_MARK, MASQ_MARK)
                .masquerade_fully_random(),
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

        // filter: rejects and drops, before DNAT (no endpoints) and after (bad ports).
        let port_unreachable = if fam == Family::Ip6 { 4 } else { 3 };
        let reject = vec![
            self.rule(REJECT_CHAIN)
                .match_l4proto(netlink::nft::proto::TCP)
                .reject(Reject::TcpReset),
            self.rule(REJECT_CHAIN)
                .reject(Reject::Icmp(port_unreachable)),
        ];
        self.regular(REJECT_CHAIN, reject);
        let check = vec![
            self.rule("endpoints-check")
                .vmap(&dispatch, NO_ENDPOINT_SERVICES),
            nodeport_daddr(self.rule("endpoints-check")).vmap(&ports, NO_ENDPOINT_NODEPORTS),
        ];
        self.regular("endpoints-check", check);
        let mut check = vec![
            self.rule("cluster-ips-check")
                .match_in_set(&dispatch[..1], CLUSTER_IPS, false)
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
        for (name, hook, prio, target) in [
            (
                "filter-prerouting",
                Hook::Prerouting,
                priority::DSTNAT - 10,
                "endpoints-check",
            ),
            (
                "filter-output",
                Hook::Output,
                priority::DSTNAT - 10,
                "endpoints-check",
            ),
            (
                "filter-forward",
                Hook::Forward,
                priority::FILTER,
                "cluster-ips-check",
            ),
            (
                "filter-output-post-dnat",
                Hook::Output,
                priority::DSTNAT + 10,
                "cluster-ips-check",
            ),
        ] {
            let rules = vec![self.rule(name).match_ct_state(new).jump(target)];
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
        let affinity = svc.affinity_timeout;
        // Hairpin pairs for the endpoints on this node (or of unknown node).
        for e in &eps {
            if e.node_name.as_deref().is_none_or(|n| n == self.node.name) {
                self.element(
                    HAIRPIN,
                    SetElement::new([addr_datum(e.address), addr_datum(e.address)]),
                );
            }
        }

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
                    self.endpoint_elements(class, &key, list);
                    self.dispatch(SERVICE_IPS, key, class);
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
        let class = |node_port| {
            if external_local {
                Class {
                    kind: ClassKind::ExternalLocal,
                    local_endpoints: local.len().min(MAX_ENDPOINTS) as u16,
                    ..Class::balance(node_port, false, cluster.len(), affinity)
                }
            } else {
                Class {
                    kind: ClassKind::Masquerade,
                    ..Class::balance(node_port, false, cluster.len(), affinity)
                }
            }
        };
        let mut destinations: Vec<(Vec<Datum>, bool)> = external_ips
            .iter()
            .map(|ip| (vec![addr_datum(*ip), proto, Datum::Port(sp.port)], false))
            .collect();
        if let Some(np) = sp.node_port {
            destinations.push((vec![proto, Datum::Port(np)], true));
        }
        for (key, node_port) in destinations {
            let all = Class::balance(node_port, false, cluster.len(), affinity);
            self.endpoint_elements(all, &key, &cluster);
            if external_local && !local.is_empty() {
                let here = Class::balance(node_port, true, local.len(), affinity);
                self.endpoint_elements(here, &key, &local);
            }
            let map = if node_port {
                SERVICE_NODEPORTS
            } else {
                SERVICE_IPS
            };
            self.dispatch(map, key, class(node_port));
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
