//! Tables, chains and the small vocabulary they are described in.

use std::fmt;
use std::str::FromStr;

/// An nf_tables address family (`enum nfproto` values, as nft names them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 only (`ip`).
    Ip,
    /// IPv6 only (`ip6`).
    Ip6,
    /// IPv4 and IPv6 in one table (`inet`).
    Inet,
}

impl Family {
    /// The kernel's NFPROTO_* number.
    pub fn number(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
            Family::Inet => 1,
        }
    }

    /// The name nft uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Inet => "inet",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Family {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ip" => Ok(Family::Ip),
            "ip6" => Ok(Family::Ip6),
            "inet" => Ok(Family::Inet),
            other => Err(format!(
                "unknown nftables family {other:?} (expected ip, ip6 or inet)"
            )),
        }
    }
}

/// A table: the unit kubewire owns and replaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Table {
    /// Its family.
    pub family: Family,
    /// Its name.
    pub name: String,
}

impl Table {
    /// A table `name` in `family`.
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        Table {
            family,
            name: name.into(),
        }
    }
}

/// A netfilter hook of the IP families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hook {
    /// NF_INET_PRE_ROUTING.
    Prerouting,
    /// NF_INET_LOCAL_IN.
    Input,
    /// NF_INET_FORWARD.
    Forward,
    /// NF_INET_LOCAL_OUT.
    Output,
    /// NF_INET_POST_ROUTING.
    Postrouting,
}

impl Hook {
    pub(crate) fn number(self) -> u32 {
        match self {
            Hook::Prerouting => 0,
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Output => 3,
            Hook::Postrouting => 4,
        }
    }
}

/// The type of a base chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChainType {
    /// Plain filtering.
    Filter,
    /// Sees the first packet of each connection; NAT expressions live here.
    Nat,
    /// Like filter on output, but re-routes when marks or addresses change.
    Route,
}

impl ChainType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ChainType::Filter => "filter",
            ChainType::Nat => "nat",
            ChainType::Route => "route",
        }
    }
}

/// What a base chain does with a packet no rule decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// NF_ACCEPT.
    Accept,
    /// NF_DROP.
    Drop,
}

/// Standard hook priorities, as nft names them (`priority dstnat` and so on).
pub mod priority {
    /// `raw`: before conntrack.
    pub const RAW: i32 = -300;
    /// `mangle`.
    pub const MANGLE: i32 = -150;
    /// `dstnat`: destination NAT in prerouting/output.
    pub const DSTNAT: i32 = -100;
    /// `filter`.
    pub const FILTER: i32 = 0;
    /// `security`.
    pub const SECURITY: i32 = 50;
    /// `srcnat`: source NAT in postrouting/input.
    pub const SRCNAT: i32 = 100;
}

/// Where a base chain is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BaseHook {
    /// Chain type.
    pub ty: ChainType,
    /// Hook.
    pub hook: Hook,
    /// Priority; lower runs first.
    pub priority: i32,
    /// Policy; `None` leaves the kernel's default (accept).
    pub policy: Option<Policy>,
}

/// A chain: regular (a jump target) or base (attached to a hook).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Chain {
    /// Family of its table.
    pub family: Family,
    /// Its table's name.
    pub table: String,
    /// Its name.
    pub name: String,
    /// Hook attachment; `None` for a regular chain.
    pub base: Option<BaseHook>,
}

impl Chain {
    /// A regular chain, entered only by `jump`/`goto`.
    pub fn new(family: Family, table: impl Into<String>, name: impl Into<String>) -> Self {
        Chain {
            family,
            table: table.into(),
            name: name.into(),
            base: None,
        }
    }

    /// Makes it a base chain of type `ty` on `hook` at `priority`.
    pub fn hook(mut self, ty: ChainType, hook: Hook, priority: i32) -> Self {
        self.base = Some(BaseHook {
            ty,
            hook,
            priority,
            policy: None,
        });
        self
    }

    /// Sets the policy of a base chain (ignored on regular chains, which have none).
    pub fn policy(mut self, policy: Policy) -> Self {
        if let Some(base) = &mut self.base {
            base.policy = Some(policy);
        }
        self
    }
}

/// A verdict: how a rule or a verdict-map element ends evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let the packet through (this hook).
    Accept,
    /// Discard the packet.
    Drop,
    /// Return to the calling chain.
    Return,
    /// Go on with the next rule (the kernel's NFT_CONTINUE).
    Continue,
    /// Evaluate another chain, then come back.
    Jump(String),
    /// Evaluate another chain instead; do not come back.
    Goto(String),
}

impl Verdict {
    pub(crate) fn code(&self) -> i32 {
        match self {
            Verdict::Drop => 0,
            Verdict::Accept => 1,
            Verdict::Continue => -1,
            Verdict::Jump(_) => -3,
            Verdict::Goto(_) => -4,
            Verdict::Return => -5,
        }
    }

    pub(crate) fn chain(&self) -> Option<&str> {
        match self {
            Verdict::Jump(c) | Verdict::Goto(c) => Some(c),
            _ => None,
        }
    }
}
