//! The pure rule computation: a [`View`] and the node it runs on in, a [`Ruleset`] out.
//!
//! The layout is described in the crate documentation ([`crate`]); this module is the
//! one place that knows it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::IpNet;
use netlink::nft::{
    Chain, ChainType, CmpOp, CtKey, Datum, DynsetOp, Expr, Family, FibResult, Hook, KeyType,
    NatKind, Reg, Reject, Rule, Set, SetElement, Verdict, ct_state, fib_flags, priority,
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
    /// `daddr . l4proto . dport` → `goto` a service-port chain (or `drop`).
    pub const SERVICE_IPS: &str = "service-ips";
    /// `l4proto . dport` → `goto` an external chain, for destinations local to the node.
    pub const SERVICE_NODEPORTS: &str = "service-nodeports";
    /// `daddr . l4proto . dport` → `goto reject-chain` (no endpoints) or `drop`.
    pub const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
    /// `l4proto . dport` → `goto reject-chain` or `drop`, for node ports.
    pub const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
    /// Every ClusterIP: unknown ports on them are rejected; traffic to them from outside
    /// the pod network is masqueraded.
    pub const CLUSTER_IPS: &str = "cluster-ips";
    /// `saddr . daddr` pairs `E . E` for every endpoint address `E`: after DNAT, a
    /// packet whose source is its own destination is a pod reaching itself (hairpin).
    pub const HAIRPIN: &str = "hairpin";
    /// `svc-addr . l4proto . port . chain . saddr` → `addr . port`, with timeouts:
    /// client affinity (`chain` 0 for cluster, 1 for local balancing chains).
    pub const AFFINITY: &str = "affinity";
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
}

/// A chain with the rules it should hold, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// The chain (base or regular).
    pub chain: Chain,
    /// What it holds.
    pub body: Body,
}

/// The contents of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// These rules.
    Rules(Vec<Rule>),
    /// A balancing chain, stored as the few bytes it is made from rather than as
    /// rules: 110,000 endpoint rules would otherwise take most of the proxy's memory.
    Balance(Balance),
}

/// A balancing chain: an optional affinity lookup, then one rule per endpoint,
/// endpoint `i` of `N` taken with probability `1/(N-i)` so that each is picked with
/// probability `1/N`. No set per chain and no shared map read from every chain: see
/// the crate documentation for why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Balance {
    /// Session affinity, if the service has it.
    pub affinity: Option<Affinity>,
    /// The endpoints, address and port, in order.
    pub endpoints: Vec<(IpAddr, u16)>,
}

/// Session affinity of a balancing chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Affinity {
    /// `svc-addr . l4proto . port` of the service port, as `affinity` keys start.
    pub service: [Datum; 3],
    /// A local (rather than cluster) balancing chain.
    pub local: bool,
    /// `timeoutSeconds`.
    pub timeout: u32,
}

/// Loads constants into consecutive 32-bit registers from the first, each padded to 4
/// bytes, as a concatenated key; returns the next free register slot.
fn immediates(rule: Rule, fields: &[Datum]) -> (Rule, u32) {
    immediates_at(rule, fields, 0)
}

/// [`immediates`] from 32-bit register `slot` on.
fn immediates_at(mut rule: Rule, fields: &[Datum], mut slot: u32) -> (Rule, u32) {
    for d in fields {
        let mut data = match d {
            Datum::Ipv4(a) => a.octets().to_vec(),
            Datum::Ipv6(a) => a.octets().to_vec(),
            Datum::Proto(p) => vec![*p],
            Datum::Port(p) => p.to_be_bytes().to_vec(),
            Datum::Int(i) | Datum::Mark(i) => i.to_ne_bytes().to_vec(),
            Datum::Ether(m) => m.to_vec(),
        };
        data.resize(data.len().div_ceil(4) * 4, 0);
        let words = (data.len() / 4) as u32;
        rule = rule.expr(Expr::Immediate {
            dreg: Reg::r32(slot),
            data,
        });
        slot += words;
    }
    (rule, slot)
}

impl ChainSpec {
    /// Whether the chain has no rules.
    pub fn is_empty(&self) -> bool {
        match &self.body {
            Body::Rules(r) => r.is_empty(),
            Body::Balance(_) => false,
        }
    }

    /// The chain's rules, in order.
    pub fn rules(&self) -> Vec<Rule> {
        let b = match &self.body {
            Body::Rules(r) => return r.clone(),
            Body::Balance(b) => b,
        };
        let c = &self.chain;
        let rule = || Rule::new(c.family, c.table.clone(), c.name.clone());
        let (port_reg, src) = if c.family == Family::Ip6 {
            (Reg::r32(4), netlink::nft::Field::Ip6Saddr)
        } else {
            (Reg::r32(1), netlink::nft::Field::IpSaddr)
        };
        let mut rules = Vec::with_capacity(b.endpoints.len() + 1);
        if let Some(a) = &b.affinity {
            let mut key = a.service.to_vec();
            key.push(Datum::Int(u32::from(a.local)));
            let (r, slot) = immediates(rule(), &key);
            rules.push(
                r.expr(src.load(Reg::r32(slot)))
                    .expr(Expr::Lookup {
                        set: names::AFFINITY.into(),
                        sreg: Reg::r32(0),
                        dreg: Some(Reg::R1),
                        invert: false,
                    })
                    .expr(Expr::Nat {
                        kind: NatKind::Dnat,
                        family: c.family,
                        addr: Some(Reg::R1),
                        port: Some(port_reg),
                        flags: 0,
                    })
                    .comment(format!("sessionAffinity: ClientIP, {}s", a.timeout)),
            );
        }
        let n = b.endpoints.len();
        for (i, (ip, port)) in b.endpoints.iter().enumerate() {
            let mut r = rule();
            if i + 1 < n {
                r = r
                    .expr(Expr::Numgen {
                        modulus: (n - i) as u32,
                        offset: 0,
                        dreg: Reg::R1,
                    })
                    .expr(Expr::Cmp {
                        sreg: Reg::R1,
                        op: CmpOp::Eq,
                        data: 0u32.to_ne_bytes().to_vec(),
                    });
            }
            let Some(a) = &b.affinity else {
                rules.push(r.dnat(*ip, Some(*port)));
                continue;
            };
            // Remember the pick: `update @affinity { svc . chain . saddr : ep . port
            // timeout T }`, then DNAT from the same registers. Key and data sit side
            // by side in the sixteen 32-bit registers (IPv6: 11 + 5 of them).
            let mut key = a.service.to_vec();
            key.push(Datum::Int(u32::from(a.local)));
            let (r, slot) = immediates_at(r, &key, 0);
            let r = r.expr(src.load(Reg::r32(slot)));
            let data_slot = slot + if c.family == Family::Ip6 { 4 } else { 1 };
            let (r, _) = immediates_at(r, &[addr_datum(*ip), Datum::Port(*port)], data_slot);
            let addr_words = if c.family == Family::Ip6 { 4 } else { 1 };
            rules.push(
                r.expr(Expr::Dynset {
                    set: names::AFFINITY.into(),
                    op: DynsetOp::Update,
                    sreg_key: Reg::r32(0),
                    sreg_data: Some(Reg::r32(data_slot)),
                    timeout: Some(Duration::from_secs(u64::from(a.timeout))),
                })
                .expr(Expr::Nat {
                    kind: NatKind::Dnat,
                    family: c.family,
                    addr: Some(Reg::r32(data_slot)),
                    port: Some(Reg::r32(data_slot + addr_words)),
                    flags: 0,
                }),
            );
        }
        rules
    }
}

/// An element of a shared set with the number of services that contribute it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Counted {
    pub(crate) element: SetElement,
    pub(crate) refs: u32,
}

/// A named set or map with the elements it should hold, by key.
///
/// Sets are shared by all services; each element counts the services contributing it
/// (two services may share an endpoint address, hence a hairpin element), so that one
/// service going away removes only what no other service still needs. When two
/// services contribute different data under one key (two services claiming one
/// external IP and port), the first one keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetSpec {
    /// The set.
    pub set: Set,
    pub(crate) elements: HashMap<Vec<Datum>, Counted>,
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
        match self.elements.get_mut(&e.key) {
            Some(c) if c.element == *e => {
                c.refs += 1;
                Change::None
            }
            Some(_) => Change::None, // a conflicting claim: the first one keeps the key
            None => {
                self.elements.insert(
                    e.key.clone(),
                    Counted {
                        element: e.clone(),
                        refs: 1,
                    },
                );
                Change::Added
            }
        }
    }

    /// Removes one contribution of `e`.
    pub(crate) fn remove_ref(&mut self, e: &SetElement) -> Change {
        match self.elements.get_mut(&e.key) {
            Some(c) if c.element == *e => {
                c.refs -= 1;
                if c.refs == 0 {
                    let gone = self.elements.remove(&e.key).map(|c| c.element);
                    return gone.map_or(Change::None, Change::Removed);
                }
                Change::None
            }
            _ => Change::None,
        }
    }

    /// The element with this key.
    pub fn get(&self, key: &[Datum]) -> Option<&SetElement> {
        self.elements.get(key).map(|c| &c.element)
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

    /// The elements, in no particular order.
    pub fn elements(&self) -> impl Iterator<Item = &SetElement> {
        self.elements.values().map(|c| &c.element)
    }

    /// The verdict an element of a verdict map maps `key` to.
    pub fn verdict(&self, key: &[Datum]) -> Option<&Verdict> {
        match self.get(key)?.data.as_ref()? {
            netlink::nft::ElementData::Verdict(v) => Some(v),
            netlink::nft::ElementData::Value(_) => None,
        }
    }

    /// The value an element of a data map maps `key` to.
    pub fn value(&self, key: &[Datum]) -> Option<&[Datum]> {
        match self.get(key)?.data.as_ref()? {
            netlink::nft::ElementData::Value(v) => Some(v),
            netlink::nft::ElementData::Verdict(_) => None,
        }
    }
}

/// What one service contributes to a family's table: its own chains, and elements of
/// the shared sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// Chains of the service's ports, by name.
    pub chains: BTreeMap<String, ChainSpec>,
    /// (shared set name, element), each at most once.
    pub elements: Vec<(&'static str, SetElement)>,
}

impl ServiceRules {
    /// Whether the service has nothing in this family.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.elements.is_empty()
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
    /// Each service's chains and elements.
    pub services: BTreeMap<ServiceKey, ServiceRules>,
}

impl FamilyRuleset {
    /// The set or map `name`.
    pub fn set(&self, name: &str) -> Option<&SetSpec> {
        self.sets.get(name)
    }

    /// The chain `name`, fixed or of a service (searched, for tests and debugging).
    pub fn chain(&self, name: &str) -> Option<&ChainSpec> {
        self.chains
            .get(name)
            .or_else(|| self.services.values().find_map(|s| s.chains.get(name)))
    }

    /// Counts one more contribution of each of `rules`' elements; the changes.
    pub(crate) fn add_refs(&mut self, rules: &ServiceRules) -> Vec<(&'static str, Change)> {
        rules
            .elements
            .iter()
            .filter_map(|(set, e)| Some((*set, self.sets.get_mut(*set)?.add_ref(e))))
            .collect()
    }

    /// Counts one less contribution of each of `rules`' elements; the changes.
    pub(crate) fn remove_refs(&mut self, rules: &ServiceRules) -> Vec<(&'static str, Change)> {
        rules
            .elements
            .iter()
            .filter_map(|(set, e)| Some((*set, self.sets.get_mut(*set)?.remove_ref(e))))
            .collect()
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

/// The id of a service port in chain and map names: `ns/name/proto/port`.
pub fn port_id(svc: &Service, sp: &ServicePort) -> String {
    format!(
        "{}/{}/{}/{}",
        svc.key.namespace,
        svc.key.name,
        sp.protocol.as_str(),
        sp.port
    )
}

/// Chain that balances over all usable endpoints of a service port.
pub fn cluster_chain(id: &str) -> String {
    format!("svc-{id}")
}
/// Chain that balances over the usable endpoints on this node.
pub fn local_chain(id: &str) -> String {
    format!("local-{id}")
}
/// Chain for external destinations (node ports, external and load-balancer IPs).
pub fn external_chain(id: &str) -> String {
    format!("ext-{id}")
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
    /// The service being built, when one is: its chains and elements go here.
    cur: Option<ServiceRules>,
}

impl<'a> Builder<'a> {
    fn new(family: Family, node: &'a Node) -> Self {
        let cidrs = node
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
                services: BTreeMap::new(),
            },
            cur: None,
        }
    }

    fn rule(&self, chain: &str) -> Rule {
        Rule::new(self.family, TABLE, chain)
    }

    fn add_chain(&mut self, chain: Chain, rules: Vec<Rule>) {
        let chains = match &mut self.cur {
            Some(cur) => &mut cur.chains,
            None => &mut self.out.chains,
        };
        chains.insert(
            chain.name.clone(),
            ChainSpec {
                chain,
                body: Body::Rules(rules),
            },
        );
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
        if let Some(cur) = &mut self.cur
            && !cur.elements.iter().any(|(s, x)| *s == set && *x == e)
        {
            cur.elements.push((set, e));
        }
    }

    /// The chains and elements of one service.
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
        self.add_set(Set::new(fam, TABLE, SERVICE_IPS, svc_key.clone()).vmap());
        self.add_set(Set::new(fam, TABLE, SERVICE_NODEPORTS, port_key.clone()).vmap());
        self.add_set(Set::new(fam, TABLE, NO_ENDPOINT_SERVICES, svc_key).vmap());
        self.add_set(Set::new(fam, TABLE, NO_ENDPOINT_NODEPORTS, port_key).vmap());
        self.add_set(Set::new(fam, TABLE, CLUSTER_IPS, vec![addr]));
        self.add_set(Set::new(fam, TABLE, HAIRPIN, vec![addr, addr]));
        let sp_key = [
            addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Integer,
        ];
        let mut aff_key = sp_key.to_vec();
        aff_key.push(addr);
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
        services.push(self.rule("services").vmap(&dispatch, SERVICE_IPS));
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
                    .vmap(&ports, SERVICE_NODEPORTS)
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
                    .vmap(&ports, SERVICE_NODEPORTS)
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
        let post = vec![
            self.rule("nat-postrouting")
                .match_mark(MASQ_MARK, MASQ_MARK)
                .masquerade_fully_random(),
            Self::ct_dnat(self.rule("nat-postrouting"))
                .match_in_set(&[src, dispatch[0]], HAIRPIN, false)
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

    /// A balancing chain over `eps` (non-empty), kept as its endpoints and turned
    /// into rules only when sent (see [`Balance`]).
    fn balancing_chain(
        &mut self,
        chain: &str,
        sp_key: &[Datum; 3],
        local: bool,
        eps: &[(IpAddr, u16)],
        affinity: Option<u32>,
    ) {
        for (ip, _) in eps {
            self.element(
                names::HAIRPIN,
                SetElement::new([addr_datum(*ip), addr_datum(*ip)]),
            );
        }
        let body = Body::Balance(Balance {
            affinity: affinity.map(|timeout| Affinity {
                service: *sp_key,
                local,
                timeout,
            }),
            endpoints: eps.to_vec(),
        });
        let chain = Chain::new(self.family, TABLE, chain);
        if let Some(cur) = &mut self.cur {
            cur.chains
                .insert(chain.name.clone(), ChainSpec { chain, body });
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
        let cluster = pick(usable(eps.iter().copied()));
        let local =
            pick(usable(eps.iter().copied().filter(|e| {
                e.node_name.as_deref() == Some(self.node.name.as_str())
            })));
        let id = port_id(svc, sp);
        let (svc_chain, local_chain_name, ext_chain) =
            (cluster_chain(&id), local_chain(&id), external_chain(&id));
        let proto = Datum::Proto(sp.protocol.number());
        let reject = Verdict::Goto(REJECT_CHAIN.into());

        let internal_local = svc.internal_traffic_policy == TrafficPolicy::Local;
        let external_local = svc.external_traffic_policy == TrafficPolicy::Local;
        let has_external = sp.node_port.is_some() || !external_ips.is_empty();
        // External chains enter the cluster chain too (eTP Cluster, and pod or node
        // traffic under eTP Local).
        let needs_cluster = !cluster.is_empty() && (!internal_local || has_external);
        let needs_local = !local.is_empty() && (internal_local || (has_external && external_local));
        let sp_key = [addr_datum(cluster_ips[0]), proto, Datum::Port(sp.port)];
        if needs_cluster {
            self.balancing_chain(&svc_chain, &sp_key, false, &cluster, svc.affinity_timeout);
        }
        if needs_local {
            self.balancing_chain(
                &local_chain_name,
                &sp_key,
                true,
                &local,
                svc.affinity_timeout,
            );
        }

        // Internal destinations: the ClusterIPs.
        let internal = if internal_local {
            (!local.is_empty()).then(|| Verdict::Goto(local_chain_name.clone()))
        } else {
            (!cluster.is_empty()).then(|| Verdict::Goto(svc_chain.clone()))
        };
        for ip in &cluster_ips {
            self.element(CLUSTER_IPS, SetElement::new([addr_datum(*ip)]));
            let key = vec![addr_datum(*ip), proto, Datum::Port(sp.port)];
            match &internal {
                Some(v) => self.element(SERVICE_IPS, SetElement::new(key).verdict(v.clone())),
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
        let external = if cluster.is_empty() {
            None
        } else {
            let mut rules = Vec::new();
            if external_local {
                for c in &self.cidrs {
                    rules.push(
                        self.rule(&ext_chain)
                            .match_saddr(*c)
                            .goto(svc_chain.clone())
                            .comment("pod traffic: short-circuit to all endpoints"),
                    );
                }
                rules.push(
                    Self::fib_saddr_local(self.rule(&ext_chain))
                        .set_mark_bits(MASQ_MARK)
                        .goto(svc_chain.clone())
                        .comment("traffic from the node itself: masquerade"),
                );
                rules.push(if local.is_empty() {
                    self.rule(&ext_chain)
                        .drop()
                        .comment("externalTrafficPolicy: Local, no endpoint on this node")
                } else {
                    self.rule(&ext_chain).goto(local_chain_name.clone())
                });
            } else {
                rules.push(
                    self.rule(&ext_chain)
                        .set_mark_bits(MASQ_MARK)
                        .goto(svc_chain.clone()),
                );
            }
            self.regular(&ext_chain, rules);
            Some(Verdict::Goto(ext_chain.clone()))
        };
        let verdict = external.unwrap_or(reject);
        let (map, nodeport_map) = if matches!(verdict, Verdict::Goto(ref c) if c == REJECT_CHAIN) {
            (NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS)
        } else {
            (SERVICE_IPS, SERVICE_NODEPORTS)
        };
        for ip in &external_ips {
            let key = vec![addr_datum(*ip), proto, Datum::Port(sp.port)];
            self.element(map, SetElement::new(key).verdict(verdict.clone()));
        }
        if let Some(np) = sp.node_port {
            let key = vec![proto, Datum::Port(np)];
            self.element(nodeport_map, SetElement::new(key).verdict(verdict.clone()));
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
                b.out.add_refs(&rules);
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
