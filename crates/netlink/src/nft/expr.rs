//! The low-level expression list a rule is made of, one variant per kernel expression.
//!
//! Expressions work on registers: loads (payload, meta, ct, numgen, fib) fill a
//! register, matches (cmp, lookup) read one, actions (nat, meta set) take their
//! arguments from registers. [`Rule`](super::Rule)'s builder methods produce these;
//! [`Rule::expr`](super::Rule::expr) appends any of them directly.

use super::objects::{Family, Verdict};
use super::wire::{Writer, attr};

/// A data register. The four 128-bit registers of old kernels (1-4) overlap the sixteen
/// 32-bit ones (8-23): register 1 is 32-bit registers 8-11. Concatenations are loaded
/// into consecutive 32-bit registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reg(pub u32);

impl Reg {
    /// The verdict register, destination of verdict-map lookups.
    pub const VERDICT: Reg = Reg(0);
    /// Register 1 (16 bytes), which is also 32-bit register 0.
    pub const R1: Reg = Reg(1);
    /// Register 2 (16 bytes).
    pub const R2: Reg = Reg(2);

    /// The `n`th 32-bit register (0-15).
    pub fn r32(n: u32) -> Reg {
        Reg(8 + n)
    }
}

/// Where a payload offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadBase {
    /// Link-layer header.
    LinkLayer,
    /// IPv4/IPv6 header.
    Network,
    /// TCP/UDP/SCTP header.
    Transport,
}

/// Packet metadata keys (`enum nft_meta_keys`) kubewire uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaKey {
    /// Packet mark, 4 bytes host order.
    Mark,
    /// Input interface name, 16 bytes NUL padded.
    IifName,
    /// Output interface name, 16 bytes NUL padded.
    OifName,
    /// Netfilter protocol (2 ipv4, 10 ipv6), 1 byte.
    NfProto,
    /// Layer-4 protocol, 1 byte.
    L4Proto,
    /// Input interface index, 4 bytes.
    Iif,
    /// Output interface index, 4 bytes.
    Oif,
    /// The UID owning the packet's local socket, 4 bytes host order (output path only).
    SkUid,
}

impl MetaKey {
    fn number(self) -> u32 {
        match self {
            MetaKey::Mark => 3,
            MetaKey::Iif => 4,
            MetaKey::Oif => 5,
            MetaKey::IifName => 6,
            MetaKey::OifName => 7,
            MetaKey::SkUid => 10,
            MetaKey::NfProto => 15,
            MetaKey::L4Proto => 16,
        }
    }
}

/// Conntrack keys (`enum nft_ct_keys`) kubewire uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtKey {
    /// State bits (see [`ct_state`]), 4 bytes host order.
    State,
    /// Status bits (e.g. DNAT done = 0x20), 4 bytes host order.
    Status,
    /// Conntrack mark, 4 bytes host order. Also settable ([`Expr::CtSet`]).
    Mark,
    /// `ct original ip daddr`: the IPv4 destination the connection was opened to,
    /// before any DNAT, 4 bytes.
    OriginalDstIp,
    /// `ct original ip6 daddr`, 16 bytes.
    OriginalDstIp6,
    /// `ct original proto-dst`: the destination port the connection was opened to,
    /// before any DNAT, 2 bytes network order.
    OriginalProtoDst,
}

impl CtKey {
    fn number(self) -> u32 {
        match self {
            CtKey::State => 0,
            CtKey::Status => 2,
            CtKey::Mark => 3,
            CtKey::OriginalProtoDst => 12,
            CtKey::OriginalDstIp => 20,
            CtKey::OriginalDstIp6 => 22,
        }
    }

    /// The direction the key is read in, for keys of one direction's tuple
    /// (`IP_CT_DIR_ORIGINAL` is 0).
    fn direction(self) -> Option<u8> {
        match self {
            CtKey::OriginalDstIp | CtKey::OriginalDstIp6 | CtKey::OriginalProtoDst => Some(0),
            CtKey::State | CtKey::Status | CtKey::Mark => None,
        }
    }
}

/// Bits of `ct state`.
pub mod ct_state {
    /// `invalid`.
    pub const INVALID: u32 = 1;
    /// `established`.
    pub const ESTABLISHED: u32 = 2;
    /// `related`.
    pub const RELATED: u32 = 4;
    /// `new`.
    pub const NEW: u32 = 8;
    /// `untracked`.
    pub const UNTRACKED: u32 = 64;
}

/// Comparison operators of `cmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `==`.
    Eq,
    /// `!=`.
    Neq,
    /// `<`.
    Lt,
    /// `<=`.
    Lte,
    /// `>`.
    Gt,
    /// `>=`.
    Gte,
}

/// Source or destination NAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// Rewrite the source (postrouting/input).
    Snat,
    /// Rewrite the destination (prerouting/output).
    Dnat,
}

/// What `fib` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FibResult {
    /// Output interface index.
    Oif,
    /// Address type (`RTN_*`: 2 = local).
    AddrType,
}

/// The address type `fib ... type local` compares against (RTN_LOCAL).
pub const RTN_LOCAL: u32 = 2;

/// Flags of `fib` (`enum nft_fib_flags`).
pub mod fib_flags {
    /// Look up the source address.
    pub const SADDR: u32 = 1;
    /// Look up the destination address.
    pub const DADDR: u32 = 2;
    /// Use the packet mark.
    pub const MARK: u32 = 4;
    /// Restrict to the input interface.
    pub const IIF: u32 = 8;
    /// Restrict to the output interface.
    pub const OIF: u32 = 16;
}

/// How to reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// An ICMP (ip) or ICMPv6 (ip6) unreachable with this code.
    Icmp(u8),
    /// A TCP reset (the rule must match TCP first).
    TcpReset,
    /// A family-independent unreachable (inet tables): 0 no route, 1 port unreachable,
    /// 2 host unreachable, 3 administratively prohibited.
    IcmpX(u8),
}

/// NAT range flags (`NF_NAT_RANGE_*`).
pub mod nat_flags {
    /// Pick a random source port.
    pub const PROTO_RANDOM: u32 = 0x4;
    /// Same address for all connections of one client.
    pub const PERSISTENT: u32 = 0x8;
    /// Fully random port choice (`fully-random`).
    pub const PROTO_RANDOM_FULLY: u32 = 0x10;
}

/// One kernel expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Expr {
    /// Load `len` bytes at `offset` from a header into `dreg`.
    Payload {
        /// Header the offset counts from.
        base: PayloadBase,
        /// Byte offset.
        offset: u32,
        /// Byte count.
        len: u32,
        /// Destination.
        dreg: Reg,
    },
    /// Load packet metadata.
    Meta {
        /// What to load.
        key: MetaKey,
        /// Destination.
        dreg: Reg,
    },
    /// Set packet metadata (e.g. the mark) from a register.
    MetaSet {
        /// What to set.
        key: MetaKey,
        /// Source.
        sreg: Reg,
    },
    /// Load conntrack data.
    Ct {
        /// What to load.
        key: CtKey,
        /// Destination.
        dreg: Reg,
    },
    /// Set conntrack data (`ct mark set ...`) from a register.
    CtSet {
        /// What to set (the mark).
        key: CtKey,
        /// Source.
        sreg: Reg,
    },
    /// Compare a register with a constant; a false comparison ends the rule.
    Cmp {
        /// Register to compare.
        sreg: Reg,
        /// Operator.
        op: CmpOp,
        /// Constant, as many bytes as are compared.
        data: Vec<u8>,
    },
    /// `dreg = (sreg & mask) ^ xor`, over `mask.len()` bytes.
    Bitwise {
        /// Source.
        sreg: Reg,
        /// Destination.
        dreg: Reg,
        /// AND mask.
        mask: Vec<u8>,
        /// XOR value, same length as `mask`.
        xor: Vec<u8>,
    },
    /// `dreg = sreg ^ sreg2` over `len` bytes: two registers combined (the kernel's
    /// `NFT_BITWISE_XOR` with `NFTA_BITWISE_SREG2`, Linux 6.13 and later). Comparing
    /// the result with zero compares two packet fields, e.g. `ip saddr == ip daddr`.
    Xor {
        /// First source.
        sreg: Reg,
        /// Second source.
        sreg2: Reg,
        /// Destination.
        dreg: Reg,
        /// Bytes combined.
        len: u32,
    },
    /// Load a constant into a register.
    Immediate {
        /// Destination.
        dreg: Reg,
        /// The constant.
        data: Vec<u8>,
    },
    /// End the rule with a verdict.
    Verdict(Verdict),
    /// Look a register up in a set; with `dreg`, load the mapped value (a map), or
    /// with [`Reg::VERDICT`] apply the mapped verdict (a verdict map).
    Lookup {
        /// Which set.
        set: SetRef,
        /// Key register.
        sreg: Reg,
        /// Destination for maps.
        dreg: Option<Reg>,
        /// Match when *not* found.
        invert: bool,
    },
    /// Rewrite addresses and ports from registers.
    Nat {
        /// Source or destination.
        kind: NatKind,
        /// Address family of the registers (ip or ip6).
        family: Family,
        /// Register holding the address.
        addr: Option<Reg>,
        /// Register holding the port.
        port: Option<Reg>,
        /// `nat_flags`.
        flags: u32,
    },
    /// Destination NAT to the local host (`redirect to :port`): the packet goes to a
    /// local socket on the port in `port`'s register (2 bytes, network order), its
    /// original destination kept for `SO_ORIGINAL_DST`.
    Redirect {
        /// Register holding the port.
        port: Reg,
    },
    /// Source NAT to the output interface's address.
    Masquerade {
        /// `nat_flags` (e.g. fully random).
        flags: u32,
    },
    /// Count packets and bytes.
    Counter,
    /// Send the packet to nfnetlink_log group `group` with `prefix` (`log prefix ..
    /// group ..`): read by whoever bound the group in the namespace.
    Log {
        /// The NFLOG group.
        group: u16,
        /// The prefix, at most 127 bytes.
        prefix: String,
    },
    /// Match at most `rate` packets per second, `burst` more at once (`limit rate
    /// RATE/second burst BURST packets`).
    Limit {
        /// Packets per second.
        rate: u64,
        /// Packets allowed above the rate at once.
        burst: u32,
    },
    /// A number generator: `numgen random mod modulus` (+ offset).
    Numgen {
        /// Range of results.
        modulus: u32,
        /// Added to each result.
        offset: u32,
        /// Destination (4 bytes).
        dreg: Reg,
    },
    /// A route lookup (`fib daddr type`).
    Fib {
        /// What to report.
        result: FibResult,
        /// `fib_flags`.
        flags: u32,
        /// Destination (4 bytes).
        dreg: Reg,
    },
    /// Reject the packet with an error to its sender.
    Reject(Reject),
    /// Skip connection tracking for the packet.
    Notrack,
    /// Adds or refreshes an element of a named set from the packet path (`update @set
    /// { key : data }`), e.g. to remember which endpoint a client was sent to. The set
    /// needs [`Set::dynamic`](super::Set::dynamic), and
    /// [`Set::timeout`](super::Set::timeout) for `timeout`.
    Dynset {
        /// The set or map (of the rule's table).
        set: String,
        /// Add only if absent, or add and refresh the timeout.
        op: DynsetOp,
        /// Key register.
        sreg_key: Reg,
        /// Data register, for maps.
        sreg_data: Option<Reg>,
        /// The element's timeout; `None`: the set's default.
        timeout: Option<std::time::Duration>,
    },
}

/// What [`Expr::Dynset`] does with the element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DynsetOp {
    /// `add`: insert if absent, leave an existing one as it is.
    Add,
    /// `update`: insert if absent, else refresh its timeout.
    Update,
}

/// The set a lookup reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SetRef {
    /// A named set or map of the rule's table.
    Named(String),
    /// The rule's own anonymous set number `n` (see [`Rule::inline_sets`]), created in
    /// the same batch as the rule and deleted with it, like nft's `{ ... }` literals.
    ///
    /// [`Rule::inline_sets`]: super::Rule::inline_sets
    Inline(usize),
}

impl From<&str> for SetRef {
    fn from(name: &str) -> Self {
        SetRef::Named(name.to_owned())
    }
}

impl From<String> for SetRef {
    fn from(name: String) -> Self {
        SetRef::Named(name)
    }
}

fn put_reg(w: &mut Writer, ty: u16, reg: Reg) {
    w.put_u32(ty, reg.0);
}

/// An `nft_data` value: nested NFTA_DATA_VALUE.
pub(crate) fn put_value(w: &mut Writer, ty: u16, data: &[u8]) {
    let n = w.nest_start(ty);
    w.put(attr::DATA_VALUE, data);
    w.nest_end(n);
}

/// An `nft_data` verdict: nested NFTA_DATA_VERDICT { code, chain }.
pub(crate) fn put_verdict(w: &mut Writer, ty: u16, verdict: &Verdict) {
    let n = w.nest_start(ty);
    let v = w.nest_start(attr::DATA_VERDICT);
    w.put_u32(attr::VERDICT_CODE, verdict.code() as u32);
    if let Some(chain) = verdict.chain() {
        w.put_str(attr::VERDICT_CHAIN, chain);
    }
    w.nest_end(v);
    w.nest_end(n);
}

impl Expr {
    fn name(&self) -> &'static str {
        match self {
            Expr::Payload { .. } => "payload",
            Expr::Meta { .. } | Expr::MetaSet { .. } => "meta",
            Expr::Ct { .. } | Expr::CtSet { .. } => "ct",
            Expr::Cmp { .. } => "cmp",
            Expr::Bitwise { .. } | Expr::Xor { .. } => "bitwise",
            Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
            Expr::Lookup { .. } => "lookup",
            Expr::Nat { .. } => "nat",
            Expr::Redirect { .. } => "redir",
            Expr::Masquerade { .. } => "masq",
            Expr::Counter => "counter",
            Expr::Log { .. } => "log",
            Expr::Limit { .. } => "limit",
            Expr::Numgen { .. } => "numgen",
            Expr::Fib { .. } => "fib",
            Expr::Reject(_) => "reject",
            Expr::Notrack => "notrack",
            Expr::Dynset { .. } => "dynset",
        }
    }

    /// Writes the expression as one NFTA_LIST_ELEM of a rule's expression list.
    /// `inline` holds (kernel-side name, transaction id) of the rule's anonymous sets.
    pub(crate) fn encode(&self, w: &mut Writer, inline: &[(&str, u32)]) {
        let elem = w.nest_start(attr::LIST_ELEM);
        w.put_str(attr::EXPR_NAME, self.name());
        let data = w.nest_start(attr::EXPR_DATA);
        match self {
            Expr::Payload {
                base,
                offset,
                len,
                dreg,
            } => {
                put_reg(w, 1, *dreg);
                let base = match base {
                    PayloadBase::LinkLayer => 0,
                    PayloadBase::Network => 1,
                    PayloadBase::Transport => 2,
                };
                w.put_u32(2, base);
                w.put_u32(3, *offset);
                w.put_u32(4, *len);
            }
            Expr::Meta { key, dreg } => {
                put_reg(w, 1, *dreg);
                w.put_u32(2, key.number());
            }
            Expr::MetaSet { key, sreg } => {
                w.put_u32(2, key.number());
                put_reg(w, 3, *sreg);
            }
            Expr::Ct { key, dreg } => {
                // NFTA_CT_DREG, _KEY, _DIRECTION (a u8).
                put_reg(w, 1, *dreg);
                w.put_u32(2, key.number());
                if let Some(dir) = key.direction() {
                    w.put(3, &[dir]);
                }
            }
            Expr::CtSet { key, sreg } => {
                // NFTA_CT_KEY, NFTA_CT_SREG.
                w.put_u32(2, key.number());
                put_reg(w, 4, *sreg);
            }
            Expr::Cmp { sreg, op, data } => {
                put_reg(w, 1, *sreg);
                let op = match op {
                    CmpOp::Eq => 0,
                    CmpOp::Neq => 1,
                    CmpOp::Lt => 2,
                    CmpOp::Lte => 3,
                    CmpOp::Gt => 4,
                    CmpOp::Gte => 5,
                };
                w.put_u32(2, op);
                put_value(w, 3, data);
            }
            Expr::Bitwise {
                sreg,
                dreg,
                mask,
                xor,
            } => {
                put_reg(w, 1, *sreg);
                put_reg(w, 2, *dreg);
                w.put_u32(3, mask.len() as u32);
                put_value(w, 4, mask);
                put_value(w, 5, xor);
            }
            Expr::Xor {
                sreg,
                sreg2,
                dreg,
                len,
            } => {
                // NFTA_BITWISE_SREG, _DREG, _LEN, _OP = NFT_BITWISE_XOR (5), _SREG2.
                put_reg(w, 1, *sreg);
                put_reg(w, 2, *dreg);
                w.put_u32(3, *len);
                w.put_u32(6, 5);
                put_reg(w, 8, *sreg2);
            }
            Expr::Immediate { dreg, data } => {
                put_reg(w, 1, *dreg);
                put_value(w, 2, data);
            }
            Expr::Verdict(v) => {
                put_reg(w, 1, Reg::VERDICT);
                put_verdict(w, 2, v);
            }
            Expr::Lookup {
                set,
                sreg,
                dreg,
                invert,
            } => {
                match set {
                    SetRef::Named(name) => w.put_str(1, name),
                    SetRef::Inline(n) => {
                        // Out-of-range indexes are caught by Batch::add_rule.
                        let (name, id) = inline.get(*n).copied().unwrap_or(("", 0));
                        w.put_str(1, name);
                        w.put_u32(4, id);
                    }
                }
                put_reg(w, 2, *sreg);
                if let Some(dreg) = dreg {
                    put_reg(w, 3, *dreg);
                }
                if *invert {
                    w.put_u32(5, 1);
                }
            }
            Expr::Nat {
                kind,
                family,
                addr,
                port,
                flags,
            } => {
                w.put_u32(
                    1,
                    match kind {
                        NatKind::Snat => 0,
                        NatKind::Dnat => 1,
                    },
                );
                w.put_u32(2, u32::from(family.number()));
                if let Some(addr) = addr {
                    put_reg(w, 3, *addr);
                }
                if let Some(port) = port {
                    put_reg(w, 5, *port);
                }
                if *flags != 0 {
                    w.put_u32(7, *flags);
                }
            }
            Expr::Redirect { port } => {
                // NFTA_REDIR_REG_PROTO_MIN.
                put_reg(w, 1, *port);
            }
            Expr::Masquerade { flags } => {
                if *flags != 0 {
                    w.put_u32(1, *flags);
                }
            }
            Expr::Counter => {
                w.put_u64(1, 0);
                w.put_u64(2, 0);
            }
            Expr::Log { group, prefix } => {
                // NFTA_LOG_GROUP (be16), NFTA_LOG_PREFIX.
                w.put(1, &group.to_be_bytes());
                w.put_str(2, prefix);
            }
            Expr::Limit { rate, burst } => {
                // NFTA_LIMIT_RATE, _UNIT (seconds), _BURST, _TYPE (packets), _FLAGS.
                w.put_u64(1, *rate);
                w.put_u64(2, 1);
                w.put_u32(3, *burst);
                w.put_u32(4, 0);
                w.put_u32(5, 0);
            }
            Expr::Numgen {
                modulus,
                offset,
                dreg,
            } => {
                put_reg(w, 1, *dreg);
                w.put_u32(2, *modulus);
                w.put_u32(3, 1); // NFT_NG_RANDOM
                if *offset != 0 {
                    w.put_u32(4, *offset);
                }
            }
            Expr::Fib {
                result,
                flags,
                dreg,
            } => {
                put_reg(w, 1, *dreg);
                w.put_u32(
                    2,
                    match result {
                        FibResult::Oif => 1,
                        FibResult::AddrType => 3,
                    },
                );
                w.put_u32(3, *flags);
            }
            Expr::Reject(r) => {
                let (ty, code) = match r {
                    Reject::Icmp(code) => (0, Some(*code)),
                    Reject::TcpReset => (1, None),
                    Reject::IcmpX(code) => (2, Some(*code)),
                };
                w.put_u32(1, ty);
                if let Some(code) = code {
                    w.put(2, &[code]);
                }
            }
            Expr::Notrack => {}
            Expr::Dynset {
                set,
                op,
                sreg_key,
                sreg_data,
                timeout,
            } => {
                // enum nft_dynset_attributes; the timeout is in milliseconds.
                w.put_str(1, set);
                w.put_u32(
                    3,
                    match op {
                        DynsetOp::Add => 0,
                        DynsetOp::Update => 1,
                    },
                );
                put_reg(w, 4, *sreg_key);
                if let Some(data) = sreg_data {
                    put_reg(w, 5, *data);
                }
                if let Some(t) = timeout {
                    w.put_u64(6, u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
                }
            }
        }
        w.nest_end(data);
        w.nest_end(elem);
    }
}
