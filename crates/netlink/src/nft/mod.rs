//! nf_tables over netlink: tables, chains, rules, sets and maps, applied in atomic
//! batches.
//!
//! kubewire speaks the kernel's nf_tables protocol directly (no `nft` process, no
//! libnftnl): a [`Batch`] encodes messages, an [`NftSocket`] sends them between
//! NFNL_MSG_BATCH_BEGIN and NFNL_MSG_BATCH_END so the kernel commits all of them or none,
//! with an acknowledgement requested for each message so the first failure is reported
//! with the object it concerns.
//!
//! ```no_run
//! use netlink::nft::{Batch, Chain, ChainType, Family, Hook, NftSocket, Rule, Table, priority};
//! # fn main() -> netlink::Result<()> {
//! let table = Table::new(Family::Ip, "kubewire");
//! let post = Chain::new(Family::Ip, "kubewire", "nat-postrouting")
//!     .hook(ChainType::Nat, Hook::Postrouting, priority::SRCNAT);
//! let mut batch = Batch::new();
//! batch.add_table(&table).add_chain(&post).add_rule(
//!     &Rule::new(Family::Ip, "kubewire", "nat-postrouting")
//!         .match_saddr("10.244.0.0/16".parse().unwrap())
//!         .masquerade(),
//! );
//! NftSocket::new_in("node-1")?.apply(&batch)?;
//! # Ok(())
//! # }
//! ```
//!
//! Reads are few and small, for checking the kernel against what was applied: a
//! table's handle and the ruleset generation ([`NftSocket::table_handle`],
//! [`NftSocket::generation`]), a table's rules by chain and handle
//! ([`NftSocket::rules`]), and a set's elements with the time each has left
//! ([`NftSocket::elements`]), so that elements a rule added from the packet path can be
//! carried into a table that replaces their own.
//!
//! Rules are lists of [`Expr`]; [`Rule`]'s builder methods cover what kube-proxy-style
//! service rules, masquerading and host ports need, and [`Rule::expr`] adds anything else.

mod batch;
mod expr;
mod objects;
mod rule;
mod set;
mod socket;
pub(crate) mod wire;

pub use batch::Batch;
pub use expr::{
    CmpOp, CtKey, DynsetOp, Expr, FibResult, MetaKey, NatKind, PayloadBase, RTN_LOCAL, Reg, Reject,
    ct_state, fib_flags, nat_flags,
};
pub use objects::{BaseHook, Chain, ChainType, Family, Hook, Policy, Table, Verdict, priority};
pub use rule::{Field, Rule};
pub use set::{Datum, ElementData, KeyType, MapData, Set, SetElement};
pub use socket::{ListedRule, NftSocket};

/// IP protocol numbers for [`Rule::match_l4proto`] and [`Datum::Proto`].
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}
