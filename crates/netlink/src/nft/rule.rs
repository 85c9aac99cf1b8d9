//! Rules: an expression list with a readable builder on top.

use std::net::IpAddr;

use ipnet::IpNet;

use super::expr::{
    CmpOp, CtKey, Expr, FibResult, MetaKey, NatKind, PayloadBase, RTN_LOCAL, Reg, Reject, SetRef,
    fib_flags, nat_flags,
};
use super::objects::{Family, Verdict};
use super::set::{Datum, KeyType, Set, SetElement};

/// A packet field that can be matched or used as (part of) a set key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `ip saddr`.
    IpSaddr,
    /// `ip daddr`.
    IpDaddr,
    /// `ip6 saddr`.
    Ip6Saddr,
    /// `ip6 daddr`.
    Ip6Daddr,
    /// `meta l4proto`.
    L4Proto,
    /// `th sport` (TCP/UDP/SCTP source port).
    Sport,
    /// `th dport`.
    Dport,
    /// `meta mark`.
    Mark,
    /// `meta iifname`.
    IifName,
    /// `meta oifname`.
    OifName,
    /// `ct mark`.
    CtMark,
    /// `ct original ip daddr`: the destination before DNAT.
    CtOriginalIpDaddr,
    /// `ct original ip6 daddr`.
    CtOriginalIp6Daddr,
    /// `ct original proto-dst`: the destination port before DNAT.
    CtOriginalDport,
    /// `meta skuid`: the UID owning the local socket that sent the packet.
    SkUid,
}

impl Field {
    /// Bytes loaded into registers.
    pub fn size(self) -> u32 {
        match self {
            Field::IpSaddr
            | Field::IpDaddr
            | Field::Mark
            | Field::CtMark
            | Field::SkUid
            | Field::CtOriginalIpDaddr => 4,
            Field::Ip6Saddr
            | Field::Ip6Daddr
            | Field::IifName
            | Field::OifName
            | Field::CtOriginalIp6Daddr => 16,
            Field::L4Proto => 1,
            Field::Sport | Field::Dport | Field::CtOriginalDport => 2,
        }
    }

    /// The set key type of the field; interface names cannot be set keys here.
    pub fn key_type(self) -> Option<KeyType> {
        match self {
            Field::IpSaddr | Field::IpDaddr | Field::CtOriginalIpDaddr => Some(KeyType::Ipv4Addr),
            Field::Ip6Saddr | Field::Ip6Daddr | Field::CtOriginalIp6Daddr => {
                Some(KeyType::Ipv6Addr)
            }
            Field::L4Proto => Some(KeyType::InetProto),
            Field::Sport | Field::Dport | Field::CtOriginalDport => Some(KeyType::InetService),
            Field::Mark | Field::CtMark => Some(KeyType::Mark),
            Field::IifName | Field::OifName | Field::SkUid => None,
        }
    }

    /// The IP version the field belongs to, if any.
    fn ip_version(self) -> Option<u8> {
        match self {
            Field::IpSaddr | Field::IpDaddr | Field::CtOriginalIpDaddr => Some(4),
            Field::Ip6Saddr | Field::Ip6Daddr | Field::CtOriginalIp6Daddr => Some(6),
            _ => None,
        }
    }

    /// The expression that loads the field into `dreg`.
    pub fn load(self, dreg: Reg) -> Expr {
        let payload = |base, offset, len| Expr::Payload {
            base,
            offset,
            len,
            dreg,
        };
        let meta = |key| Expr::Meta { key, dreg };
        match self {
            Field::IpSaddr => payload(PayloadBase::Network, 12, 4),
            Field::IpDaddr => payload(PayloadBase::Network, 16, 4),
            Field::Ip6Saddr => payload(PayloadBase::Network, 8, 16),
            Field::Ip6Daddr => payload(PayloadBase::Network, 24, 16),
            Field::Sport => payload(PayloadBase::Transport, 0, 2),
            Field::Dport => payload(PayloadBase::Transport, 2, 2),
            Field::L4Proto => meta(MetaKey::L4Proto),
            Field::Mark => meta(MetaKey::Mark),
            Field::SkUid => meta(MetaKey::SkUid),
            Field::CtMark => Expr::Ct {
                key: CtKey::Mark,
                dreg,
            },
            Field::CtOriginalIpDaddr => Expr::Ct {
                key: CtKey::OriginalDstIp,
                dreg,
            },
            Field::CtOriginalIp6Daddr => Expr::Ct {
                key: CtKey::OriginalDstIp6,
                dreg,
            },
            Field::CtOriginalDport => Expr::Ct {
                key: CtKey::OriginalProtoDst,
                dreg,
            },
            Field::IifName => meta(MetaKey::IifName),
            Field::OifName => meta(MetaKey::OifName),
        }
    }
}

/// A rule: where it goes, its expressions, and an optional comment.
///
/// Builder methods append expressions in order, so a rule reads like nft's syntax:
///
/// ```
/// use netlink::nft::{Family, Rule};
/// let rule = Rule::new(Family::Ip, "kubewire", "nat-postrouting")
///     .match_saddr("10.244.0.0/16".parse().unwrap())
///     .counter()
///     .masquerade()
///     .comment("pod traffic leaving the node");
/// // payload load, bitwise (the /16 mask), cmp, counter, masq
/// assert_eq!(rule.exprs.len(), 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Family of its table.
    pub family: Family,
    /// Its table's name.
    pub table: String,
    /// Its chain's name.
    pub chain: String,
    /// The expressions, evaluated in order.
    pub exprs: Vec<Expr>,
    /// A comment shown by `nft list` (stored as nft-compatible user data).
    pub comment: Option<String>,
    /// The rule's handle, for deleting an existing rule.
    pub handle: Option<u64>,
    /// Anonymous sets and maps of this rule (nft's `{ ... }` literals), with their
    /// elements, referred to by [`SetRef::Inline`]: created in the same batch as the
    /// rule, and freed by the kernel with it.
    pub inline_sets: Vec<(Set, Vec<SetElement>)>,
    /// Which IP version an `inet` rule has already been restricted to.
    l3: Option<u8>,
}

/// Bytes of a prefix mask of `prefix` bits over `len` bytes.
fn prefix_mask(prefix: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let bits = usize::from(prefix).saturating_sub(i * 8).min(8);
            if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
        })
        .collect()
}

/// An interface name as the kernel stores it: 16 bytes, NUL padded. A trailing `*`
/// matches by prefix, as in nft.
fn ifname_bytes(name: &str) -> Vec<u8> {
    if let Some(prefix) = name.strip_suffix('*') {
        return prefix.as_bytes().to_vec();
    }
    let mut b = name.as_bytes().to_vec();
    b.resize(16, 0);
    b
}

impl Rule {
    /// An empty rule for `chain` of `table`.
    pub fn new(family: Family, table: impl Into<String>, chain: impl Into<String>) -> Self {
        Rule {
            family,
            table: table.into(),
            chain: chain.into(),
            exprs: Vec::new(),
            comment: None,
            handle: None,
            inline_sets: Vec::new(),
            l3: None,
        }
    }

    /// Refers to the existing rule with this handle (for [`Batch::delete_rule`]).
    ///
    /// [`Batch::delete_rule`]: super::Batch::delete_rule
    pub fn with_handle(mut self, handle: u64) -> Self {
        self.handle = Some(handle);
        self
    }

    /// Appends any expression.
    pub fn expr(mut self, expr: Expr) -> Self {
        self.exprs.push(expr);
        self
    }

    /// Sets the comment.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }

    /// In `inet` tables, IP header fields need the packet's IP version checked first
    /// (nft adds the same dependency).
    fn need_ip_version(mut self, version: u8) -> Self {
        if self.family == Family::Inet && self.l3 != Some(version) {
            self.l3 = Some(version);
            let nfproto = if version == 4 { 2 } else { 10 };
            self = self
                .expr(Expr::Meta {
                    key: MetaKey::NfProto,
                    dreg: Reg::R1,
                })
                .expr(Expr::Cmp {
                    sreg: Reg::R1,
                    op: CmpOp::Eq,
                    data: vec![nfproto],
                });
        }
        self
    }

    /// Loads `fields` into consecutive 32-bit registers from register 1, as a
    /// concatenated key; returns the first register.
    fn load_fields(mut self, fields: &[Field]) -> (Self, Reg) {
        let mut slot = 0;
        for f in fields {
            if let Some(v) = f.ip_version() {
                self = self.need_ip_version(v);
            }
            self.exprs.push(f.load(Reg::r32(slot)));
            slot += f.size().div_ceil(4);
        }
        (self, Reg::R1)
    }

    /// `FIELD OP DATA`: loads a field and compares it.
    pub fn match_field(self, field: Field, op: CmpOp, data: impl Into<Vec<u8>>) -> Self {
        let (rule, reg) = self.load_fields(&[field]);
        rule.expr(Expr::Cmp {
            sreg: reg,
            op,
            data: data.into(),
        })
    }

    fn match_net(self, net: IpNet, v4: Field, v6: Field, op: CmpOp) -> Self {
        let net = net.trunc();
        let (field, addr, len) = match net {
            IpNet::V4(n) => (v4, n.network().octets().to_vec(), 4),
            IpNet::V6(n) => (v6, n.network().octets().to_vec(), 16),
        };
        if net.prefix_len() == net.max_prefix_len() {
            return self.match_field(field, op, addr);
        }
        let (rule, reg) = self.load_fields(&[field]);
        rule.expr(Expr::Bitwise {
            sreg: reg,
            dreg: reg,
            mask: prefix_mask(net.prefix_len(), len),
            xor: vec![0; len],
        })
        .expr(Expr::Cmp {
            sreg: reg,
            op,
            data: addr,
        })
    }

    /// `ip saddr NET` (or `ip6 saddr`, by the network's version).
    pub fn match_saddr(self, net: IpNet) -> Self {
        self.match_net(net, Field::IpSaddr, Field::Ip6Saddr, CmpOp::Eq)
    }

    /// `ip saddr != NET`.
    pub fn match_saddr_not(self, net: IpNet) -> Self {
        self.match_net(net, Field::IpSaddr, Field::Ip6Saddr, CmpOp::Neq)
    }

    /// `ip daddr NET` (or `ip6 daddr`).
    pub fn match_daddr(self, net: IpNet) -> Self {
        self.match_net(net, Field::IpDaddr, Field::Ip6Daddr, CmpOp::Eq)
    }

    /// `ip daddr != NET`.
    pub fn match_daddr_not(self, net: IpNet) -> Self {
        self.match_net(net, Field::IpDaddr, Field::Ip6Daddr, CmpOp::Neq)
    }

    /// `meta l4proto PROTO` (6 tcp, 17 udp, 132 sctp).
    pub fn match_l4proto(self, proto: u8) -> Self {
        self.match_field(Field::L4Proto, CmpOp::Eq, [proto])
    }

    /// `th dport PORT`.
    pub fn match_dport(self, port: u16) -> Self {
        self.match_field(Field::Dport, CmpOp::Eq, port.to_be_bytes())
    }

    /// `th sport PORT`.
    pub fn match_sport(self, port: u16) -> Self {
        self.match_field(Field::Sport, CmpOp::Eq, port.to_be_bytes())
    }

    /// `meta iifname NAME` (`NAME*` matches by prefix).
    pub fn match_iifname(self, name: &str) -> Self {
        self.match_field(Field::IifName, CmpOp::Eq, ifname_bytes(name))
    }

    /// `meta oifname NAME` (`NAME*` matches by prefix).
    pub fn match_oifname(self, name: &str) -> Self {
        self.match_field(Field::OifName, CmpOp::Eq, ifname_bytes(name))
    }

    /// `meta oifname != NAME`.
    pub fn match_oifname_not(self, name: &str) -> Self {
        self.match_field(Field::OifName, CmpOp::Neq, ifname_bytes(name))
    }

    /// `meta mark & MASK == VALUE`.
    pub fn match_mark(self, mask: u32, value: u32) -> Self {
        let (rule, reg) = self.load_fields(&[Field::Mark]);
        let rule = if mask == u32::MAX {
            rule
        } else {
            rule.expr(Expr::Bitwise {
                sreg: reg,
                dreg: reg,
                mask: mask.to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            })
        };
        rule.expr(Expr::Cmp {
            sreg: reg,
            op: CmpOp::Eq,
            data: value.to_ne_bytes().to_vec(),
        })
    }

    /// `ct state STATES`: any of the [`ct_state`](super::ct_state) bits.
    pub fn match_ct_state(self, states: u32) -> Self {
        self.expr(Expr::Ct {
            key: CtKey::State,
            dreg: Reg::R1,
        })
        .expr(Expr::Bitwise {
            sreg: Reg::R1,
            dreg: Reg::R1,
            mask: states.to_ne_bytes().to_vec(),
            xor: vec![0; 4],
        })
        .expr(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Neq,
            data: vec![0; 4],
        })
    }

    /// `fib daddr type local`: the destination is an address of this host.
    pub fn match_fib_daddr_local(self) -> Self {
        self.expr(Expr::Fib {
            result: FibResult::AddrType,
            flags: fib_flags::DADDR,
            dreg: Reg::R1,
        })
        .expr(Expr::Cmp {
            sreg: Reg::R1,
            op: CmpOp::Eq,
            data: RTN_LOCAL.to_ne_bytes().to_vec(),
        })
    }

    /// `FIELD . FIELD ... @set` (or `!= @set` with `invert`).
    pub fn match_in_set(self, fields: &[Field], set: impl Into<String>, invert: bool) -> Self {
        let (rule, reg) = self.load_fields(fields);
        rule.expr(Expr::Lookup {
            set: SetRef::Named(set.into()),
            sreg: reg,
            dreg: None,
            invert,
        })
    }

    /// `FIELD . FIELD ... vmap @map`: jumps, goes to, accepts or drops as the map says.
    pub fn vmap(self, fields: &[Field], map: impl Into<String>) -> Self {
        let (rule, reg) = self.load_fields(fields);
        rule.expr(Expr::Lookup {
            set: SetRef::Named(map.into()),
            sreg: reg,
            dreg: Some(Reg::VERDICT),
            invert: false,
        })
    }

    /// `FIELD . FIELD ... map @map vmap @vmap`: looks the fields up in a data map, then
    /// the value found in a verdict map, in one rule (registers do not carry over from
    /// one rule to the next). Elements of a data map do not make the kernel revalidate
    /// the table's chain graph at commit, as `jump`/`goto` elements of a verdict map
    /// do, so a large data map in front of a small verdict map keeps changes cheap.
    /// The map's values must fit in 32 bytes (they land in 32-bit registers 8-15).
    pub fn map_vmap(
        self,
        fields: &[Field],
        map: impl Into<String>,
        vmap: impl Into<String>,
    ) -> Self {
        let (rule, reg) = self.load_fields(fields);
        rule.expr(Expr::Lookup {
            set: SetRef::Named(map.into()),
            sreg: reg,
            dreg: Some(Reg::r32(8)),
            invert: false,
        })
        .expr(Expr::Lookup {
            set: SetRef::Named(vmap.into()),
            sreg: Reg::r32(8),
            dreg: Some(Reg::VERDICT),
            invert: false,
        })
    }

    /// `numgen random mod N vmap @map`: picks one of N entries at random (load
    /// balancing); the map is keyed by `integer` 0..N.
    pub fn numgen_vmap(self, modulus: u32, map: impl Into<String>) -> Self {
        self.expr(Expr::Numgen {
            modulus,
            offset: 0,
            dreg: Reg::R1,
        })
        .expr(Expr::Lookup {
            set: SetRef::Named(map.into()),
            sreg: Reg::R1,
            dreg: Some(Reg::VERDICT),
            invert: false,
        })
    }

    /// Adds an anonymous set to the rule; returns its reference.
    fn inline_set(&mut self, key: Vec<KeyType>, elements: Vec<SetElement>) -> SetRef {
        let mut set = Set::new(self.family, self.table.clone(), "", key).constant();
        set.anonymous = true;
        self.inline_sets.push((set, elements));
        SetRef::Inline(self.inline_sets.len() - 1)
    }

    fn key_of(fields: &[Field]) -> Vec<KeyType> {
        // Interface names have no key type here; Batch::add_rule reports the mismatch.
        fields.iter().filter_map(|f| f.key_type()).collect()
    }

    /// `FIELD . FIELD ... { KEY, KEY, ... }`: matches any of the keys, held in an
    /// anonymous set.
    pub fn match_any(mut self, fields: &[Field], keys: Vec<Vec<Datum>>) -> Self {
        let elements = keys.into_iter().map(SetElement::new).collect();
        let set = self.inline_set(Self::key_of(fields), elements);
        let (rule, reg) = self.load_fields(fields);
        rule.expr(Expr::Lookup {
            set,
            sreg: reg,
            dreg: None,
            invert: false,
        })
    }

    /// `FIELD . FIELD ... vmap { KEY : VERDICT, ... }` with an anonymous verdict map.
    pub fn vmap_inline(mut self, fields: &[Field], entries: Vec<(Vec<Datum>, Verdict)>) -> Self {
        let elements = entries
            .into_iter()
            .map(|(k, v)| SetElement::new(k).verdict(v))
            .collect();
        let set = self.inline_set(Self::key_of(fields), elements);
        if let Some((map, _)) = self.inline_sets.last_mut() {
            *map = map.clone().vmap();
        }
        let (rule, reg) = self.load_fields(fields);
        rule.expr(Expr::Lookup {
            set,
            sreg: reg,
            dreg: Some(Reg::VERDICT),
            invert: false,
        })
    }

    /// `numgen random mod N vmap { 0 : V0, 1 : V1, ... }`, N = `targets.len()`: kube-proxy's
    /// endpoint choice, with an anonymous map.
    pub fn numgen_vmap_inline(mut self, targets: Vec<Verdict>) -> Self {
        let modulus = targets.len() as u32;
        let elements = targets
            .into_iter()
            .enumerate()
            .map(|(i, v)| SetElement::new([Datum::Int(i as u32)]).verdict(v))
            .collect();
        let set = self.inline_set(vec![KeyType::Integer], elements);
        if let Some((map, _)) = self.inline_sets.last_mut() {
            *map = map.clone().vmap();
        }
        self.expr(Expr::Numgen {
            modulus,
            offset: 0,
            dreg: Reg::R1,
        })
        .expr(Expr::Lookup {
            set,
            sreg: Reg::R1,
            dreg: Some(Reg::VERDICT),
            invert: false,
        })
    }

    /// `counter`.
    pub fn counter(self) -> Self {
        self.expr(Expr::Counter)
    }

    /// `limit rate RATE/second burst BURST packets`: the rule goes on only for packets
    /// within the rate.
    pub fn limit(self, rate: u64, burst: u32) -> Self {
        self.expr(Expr::Limit { rate, burst })
    }

    /// `log prefix PREFIX group GROUP`: a copy of the packet to nfnetlink_log
    /// ([`crate::nflog`]); the prefix is cut to the kernel's 127 bytes.
    pub fn log_group(self, group: u16, prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        while prefix.len() > 127 {
            prefix.pop();
        }
        self.expr(Expr::Log { group, prefix })
    }

    /// `meta mark set meta mark | BITS`.
    pub fn set_mark_bits(self, bits: u32) -> Self {
        self.expr(Field::Mark.load(Reg::R1))
            .expr(Expr::Bitwise {
                sreg: Reg::R1,
                dreg: Reg::R1,
                mask: (!bits).to_ne_bytes().to_vec(),
                xor: bits.to_ne_bytes().to_vec(),
            })
            .expr(Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: Reg::R1,
            })
    }

    /// `meta mark set meta mark & ~BITS`: clears bits of the packet mark.
    pub fn clear_mark_bits(self, bits: u32) -> Self {
        self.expr(Field::Mark.load(Reg::R1))
            .expr(Expr::Bitwise {
                sreg: Reg::R1,
                dreg: Reg::R1,
                mask: (!bits).to_ne_bytes().to_vec(),
                xor: vec![0; 4],
            })
            .expr(Expr::MetaSet {
                key: MetaKey::Mark,
                sreg: Reg::R1,
            })
    }

    /// `ct mark VALUE`: the connection's mark equals `value`.
    pub fn match_ct_mark(self, value: u32) -> Self {
        self.match_field(Field::CtMark, CmpOp::Eq, value.to_ne_bytes())
    }

    /// `ct mark set VALUE`.
    pub fn set_ct_mark(self, value: u32) -> Self {
        self.expr(Expr::Immediate {
            dreg: Reg::R1,
            data: value.to_ne_bytes().to_vec(),
        })
        .expr(Expr::CtSet {
            key: CtKey::Mark,
            sreg: Reg::R1,
        })
    }

    /// `ct mark set FIELD . FIELD ... map @map`: the connection's mark becomes what the
    /// fields map to (a map to `mark`). Where the fields are not in the map, the rule
    /// stops there and the mark is left alone.
    pub fn set_ct_mark_from_map(self, fields: &[Field], map: impl Into<String>) -> Self {
        let (rule, reg) = self.load_fields(fields);
        rule.expr(Expr::Lookup {
            set: SetRef::Named(map.into()),
            sreg: reg,
            dreg: Some(Reg::R1),
            invert: false,
        })
        .expr(Expr::CtSet {
            key: CtKey::Mark,
            sreg: Reg::R1,
        })
    }

    /// `meta mark set VALUE`.
    pub fn set_mark(self, value: u32) -> Self {
        self.expr(Expr::Immediate {
            dreg: Reg::R1,
            data: value.to_ne_bytes().to_vec(),
        })
        .expr(Expr::MetaSet {
            key: MetaKey::Mark,
            sreg: Reg::R1,
        })
    }

    /// `redirect to :PORT`: to a local socket on `port`, which reads the original
    /// destination with `SO_ORIGINAL_DST`.
    pub fn redirect(self, port: u16) -> Self {
        self.expr(Expr::Immediate {
            dreg: Reg::R1,
            data: port.to_be_bytes().to_vec(),
        })
        .expr(Expr::Redirect { port: Reg::R1 })
    }

    /// `meta skuid UID`: sent by a socket of `uid`.
    pub fn match_skuid(self, uid: u32) -> Self {
        self.match_field(Field::SkUid, CmpOp::Eq, uid.to_ne_bytes())
    }

    /// `masquerade`.
    pub fn masquerade(self) -> Self {
        self.expr(Expr::Masquerade { flags: 0 })
    }

    /// `masquerade fully-random`.
    pub fn masquerade_fully_random(self) -> Self {
        self.expr(Expr::Masquerade {
            flags: nat_flags::PROTO_RANDOM_FULLY,
        })
    }

    fn nat_to(self, kind: NatKind, addr: IpAddr, port: Option<u16>) -> Self {
        let (family, bytes) = match addr {
            IpAddr::V4(a) => (Family::Ip, a.octets().to_vec()),
            IpAddr::V6(a) => (Family::Ip6, a.octets().to_vec()),
        };
        let mut rule = self.expr(Expr::Immediate {
            dreg: Reg::R1,
            data: bytes,
        });
        if let Some(port) = port {
            rule = rule.expr(Expr::Immediate {
                dreg: Reg::R2,
                data: port.to_be_bytes().to_vec(),
            });
        }
        rule.expr(Expr::Nat {
            kind,
            family,
            addr: Some(Reg::R1),
            port: port.map(|_| Reg::R2),
            flags: 0,
        })
    }

    /// `dnat to ADDR[:PORT]`.
    pub fn dnat(self, addr: IpAddr, port: Option<u16>) -> Self {
        self.nat_to(NatKind::Dnat, addr, port)
    }

    /// `snat to ADDR[:PORT]`.
    pub fn snat(self, addr: IpAddr, port: Option<u16>) -> Self {
        self.nat_to(NatKind::Snat, addr, port)
    }

    /// `dnat ip to FIELD . FIELD ... map @map`, where the map's values are `ipv4_addr .
    /// inet_service` (or `ipv6_addr . inet_service`, by `family`).
    pub fn dnat_map(self, family: Family, fields: &[Field], map: impl Into<String>) -> Self {
        let (rule, reg) = self.load_fields(fields);
        let port = if family == Family::Ip6 {
            Reg::r32(4)
        } else {
            Reg::r32(1)
        };
        rule.expr(Expr::Lookup {
            set: SetRef::Named(map.into()),
            sreg: reg,
            dreg: Some(Reg::R1),
            invert: false,
        })
        .expr(Expr::Nat {
            kind: NatKind::Dnat,
            family,
            addr: Some(Reg::R1),
            port: Some(port),
            flags: 0,
        })
    }

    /// `reject with ...`.
    pub fn reject(self, how: Reject) -> Self {
        self.expr(Expr::Reject(how))
    }

    /// `notrack`.
    pub fn notrack(self) -> Self {
        self.expr(Expr::Notrack)
    }

    /// Ends with a verdict.
    pub fn verdict(self, verdict: Verdict) -> Self {
        self.expr(Expr::Verdict(verdict))
    }

    /// `accept`.
    pub fn accept(self) -> Self {
        self.verdict(Verdict::Accept)
    }

    /// `drop`.
    pub fn drop(self) -> Self {
        self.verdict(Verdict::Drop)
    }

    /// `return`.
    pub fn ret(self) -> Self {
        self.verdict(Verdict::Return)
    }

    /// `jump CHAIN`.
    pub fn jump(self, chain: impl Into<String>) -> Self {
        self.verdict(Verdict::Jump(chain.into()))
    }

    /// `goto CHAIN`.
    pub fn goto(self, chain: impl Into<String>) -> Self {
        self.verdict(Verdict::Goto(chain.into()))
    }
}

/// nft's user-data TLV for a comment: type 0 (comment), length, NUL-terminated text.
/// The kernel caps user data at 256 bytes; longer comments are cut at a character
/// boundary.
pub(crate) fn comment_udata(comment: &str) -> Vec<u8> {
    let mut end = comment.len().min(254);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    let text = &comment.as_bytes()[..end];
    let mut out = Vec::with_capacity(text.len() + 3);
    out.push(0);
    out.push((text.len() + 1) as u8);
    out.extend_from_slice(text);
    out.push(0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask(16, 4), [255, 255, 0, 0]);
        assert_eq!(prefix_mask(12, 4), [255, 240, 0, 0]);
        assert_eq!(prefix_mask(0, 4), [0, 0, 0, 0]);
    }

    #[test]
    fn inet_rules_check_the_ip_version_once() {
        let r = Rule::new(Family::Inet, "t", "c")
            .match_saddr("10.0.0.1/32".parse().unwrap())
            .match_daddr("10.0.0.2/32".parse().unwrap());
        // nfproto load + cmp, then two load + cmp pairs.
        assert_eq!(r.exprs.len(), 6);
        let ip = Rule::new(Family::Ip, "t", "c").match_saddr("10.0.0.1/32".parse().unwrap());
        assert_eq!(ip.exprs.len(), 2);
    }

    #[test]
    fn concatenated_keys_use_consecutive_32_bit_registers() {
        let r = Rule::new(Family::Ip, "t", "c").vmap(
            &[Field::IpDaddr, Field::L4Proto, Field::Dport],
            "service-ips",
        );
        let regs: Vec<Reg> = r
            .exprs
            .iter()
            .filter_map(|e| match e {
                Expr::Payload { dreg, .. } | Expr::Meta { dreg, .. } => Some(*dreg),
                _ => None,
            })
            .collect();
        assert_eq!(regs, [Reg(8), Reg(9), Reg(10)]);
    }

    #[test]
    fn comments_are_nft_user_data() {
        assert_eq!(comment_udata("hi"), [0, 3, b'h', b'i', 0]);
        assert_eq!(comment_udata(&"é".repeat(200)).len(), 254 + 3);
    }
}
