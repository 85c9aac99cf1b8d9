//! kubewire's service proxy: what kube-proxy does, in nftables.
//!
//! Reconcile, don't replay: [`View::build`] joins Services and EndpointSlices into a
//! plain-data [`View`]; [`desired`] computes the whole [`Ruleset`] for one node as a
//! pure function of it; [`diff`] turns the ruleset applied last and the new one into
//! one atomic nftables batch holding only the changes; [`Proxier`] keeps the last one
//! and applies the batches, the first one in full. The kernel's table is never listed
//! and `nft` is never run.
//!
//! # Ruleset layout
//!
//! One table `kubewire-proxy` in each of the `ip` and `ip6` families, same shape.
//! Service ports are named `ns/name/proto/port` (`SP` below).
//!
//! Shared sets and maps (their elements are what most changes touch):
//!
//! | name | key → value | holds |
//! |---|---|---|
//! | `service-ips` | `daddr . l4proto . dport` → verdict | ClusterIPs: `goto svc-SP` (or `local-SP` for `internalTrafficPolicy: Local`); external and LB IPs: `goto ext-SP` |
//! | `service-nodeports` | `l4proto . dport` → verdict | node ports: `goto ext-SP` |
//! | `no-endpoint-services` | `daddr . l4proto . dport` → verdict | no usable endpoint: `goto reject-chain`; iTP Local with endpoints only elsewhere: `drop` |
//! | `no-endpoint-nodeports` | `l4proto . dport` → verdict | the same for node ports |
//! | `cluster-ips` | `daddr` | every ClusterIP |
//! | `hairpin` | `saddr . daddr` | `E . E` for every endpoint address `E` |
//!
//! Per service port, only what it needs:
//!
//! - `svc-SP` (all usable endpoints) and `local-SP` (usable endpoints on this node),
//!   each one or two rules: `dnat to ip saddr map @aff-T-CHAIN` (session affinity, see
//!   below), then `dnat to numgen random mod N map @eps-CHAIN`.
//! - `eps-CHAIN`: map `integer → addr . port`, endpoint `i` at key `i`. Endpoints are
//!   the ready ones, or when none is ready the serving and terminating ones (KEP-1669).
//! - `ext-SP`, for node ports and external/LB IPs: `externalTrafficPolicy: Cluster`:
//!   `mark 0x4000, goto svc-SP`. `Local`: pod sources `goto svc-SP`, node-local
//!   sources (`fib saddr type local`) mark and `goto svc-SP`, then `goto local-SP`, or
//!   `drop` when this node has no endpoint.
//!
//! Base chains and the fixed chains:
//!
//! - `nat-prerouting`, `nat-output` (nat, dstnat): `jump services`.
//! - `services`: marks traffic to `@cluster-ips` from outside the pod network (when the
//!   node's cluster CIDRs are known); `ip daddr . meta l4proto . th dport vmap
//!   @service-ips`; `fib daddr type local`, not loopback: `meta l4proto . th dport vmap
//!   @service-nodeports`.
//! - `nat-postrouting` (nat, srcnat): masquerade (fully random) marked packets, and
//!   DNATed packets whose `saddr . daddr` is in `@hairpin`.
//! - `filter-prerouting`, `filter-output` (filter, dstnat-10): new connections `jump
//!   endpoints-check`, which looks up `@no-endpoint-services` and, for local
//!   destinations, `@no-endpoint-nodeports`.
//! - `filter-forward` (filter, 0) and `filter-output-post-dnat` (filter, dstnat+10):
//!   new connections `jump cluster-ips-check`: still addressed to a ClusterIP after DNAT
//!   means a port the service does not define, `goto reject-chain`.
//! - `reject-chain`: TCP reset, else ICMP(v6) port unreachable.
//!
//! What a change costs: an endpoint replaced, or a service address added or removed,
//! is element messages only. An endpoint added or removed also rewrites its balancing
//! chain (the rule holds the modulus `N`): a flush and one or two rules. A new service
//! port adds a chain, a map and its elements; nothing is ever rebuilt.
//!
//! Session affinity: `sessionAffinity: ClientIP` gives each balancing chain a timeout
//! map `aff-T-CHAIN` (`saddr → addr . port`, T = `timeoutSeconds`) consulted before
//! the random pick. Filling it per connection needs the kernel's `dynset` expression
//! (`update @aff { ip saddr : ... }`), which `netlink::nft` does not offer yet, so
//! today the map stays empty and affinity does not stick.

mod apply;
mod diff;
mod ruleset;
mod view;

pub use apply::{Error, Proxier, SyncReport, cleanup, full_sync};
pub use diff::{diff, diff_into, update};
pub use ruleset::{
    ChainSpec, FamilyRuleset, MASQ_MARK, Node, Ruleset, ServiceRules, SetSpec, TABLE,
    cluster_chain, desired, external_chain, local_chain, names, port_id, service_rules, usable,
};
pub use view::{
    DEFAULT_AFFINITY_TIMEOUT, Endpoint, Protocol, SERVICE_NAME_LABEL, SERVICE_PROXY_NAME_LABEL,
    Service, ServiceKey, ServicePort, ServiceType, TargetPort, TrafficPolicy, View, ViewError,
};

#[cfg(test)]
mod tests;
