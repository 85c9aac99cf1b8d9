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
//! Shared sets and maps (service addresses, node ports and hairpin pairs are elements):
//!
//! | name | key → value | holds |
//! |---|---|---|
//! | `service-ips` | `daddr . l4proto . dport` → verdict | ClusterIPs: `goto svc-SP` (or `local-SP` for `internalTrafficPolicy: Local`); external and LB IPs: `goto ext-SP` |
//! | `service-nodeports` | `l4proto . dport` → verdict | node ports: `goto ext-SP` |
//! | `no-endpoint-services` | `daddr . l4proto . dport` → verdict | no usable endpoint: `goto reject-chain`; iTP Local with endpoints only elsewhere: `drop` |
//! | `no-endpoint-nodeports` | `l4proto . dport` → verdict | the same for node ports |
//! | `cluster-ips` | `daddr` | every ClusterIP |
//! | `hairpin` | `saddr . daddr` | `E . E` for every endpoint address `E` |
//! | `affinity` | `svc-addr . l4proto . port . chain . saddr` → `addr . port` | client affinity, with timeouts (see below) |
//!
//! Per service port, only what it needs, and no sets:
//!
//! - `svc-SP` (all usable endpoints) and `local-SP` (usable endpoints on this node):
//!   one rule per endpoint, `numgen random mod (N-i) == 0 dnat to E_i:port` (the last
//!   one unconditional), so each of `N` endpoints is picked with probability `1/N`.
//!   Usable endpoints are the ready ones, or when none is ready the serving and
//!   terminating ones (KEP-1669). With `sessionAffinity: ClientIP` an `affinity`
//!   lookup comes first.
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
//!   @service-ips` (the one dispatch rule, O(1) whatever the number of services);
//!   `fib daddr type local`, not loopback: `meta l4proto . th dport vmap
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
//! # What a change costs, and why endpoints are rules
//!
//! [`Proxier::update`] recomputes only the services that changed ([`update`]): a new
//! or removed service is its chains plus a few elements of the shared maps; an endpoint
//! change is one `hairpin` element and its balancing chain flushed and refilled (one
//! rule per endpoint). Shared elements are counted per contributing service, so a
//! hairpin pair two services share stays while either needs it.
//!
//! Endpoints would ideally be map elements too. Two shapes were built and measured
//! with `cargo bench -p proxy` (10,000 services × 10 endpoints, full sync from empty):
//!
//! - a data map per service port (`numgen random mod N map @eps-SP`): 8.6 s, because
//!   the kernel finds named sets by a linear search of the table's set list, once per
//!   message that names one;
//! - one shared map keyed by service and bucket: 67 s, because the kernel re-walks a
//!   map's elements each time one more chain binds it, and walks the bindings for each
//!   element added; passing the key to one shared lookup rule through registers is
//!   refused since Linux 6.x checks registers are written in the same rule (ENODATA).
//!
//! Rules per endpoint load in about 1.1 s (1.25 s with the computation). The price:
//! the kernel revalidates the whole table at commit whenever a rule with NAT is added,
//! so an incremental change costs a time that grows with the table (about 20-30 ms at
//! 10,000 services, about 1 ms at 1,000), not a constant.
//!
//! Memory: balancing chains are kept as their endpoints and turned into rules only
//! when sent. At 10,000 services × 10 endpoints the view takes about 20 MB and the
//! applied ruleset about 90 MB, most of it shared-set elements held both per service
//! and aggregated; a compact element form is the next step towards the 64 MB goal.
//!
//! Session affinity: `sessionAffinity: ClientIP` makes each balancing chain look the
//! client up in `affinity` before the random pick, and each endpoint rule record its
//! pick there (`update @affinity { svc . chain . saddr : endpoint . port timeout T }`,
//! a `dynset` expression) before DNATing from the same registers.
//!
//! # Running
//!
//! [`run`] is the control loop `kubewire agent` runs (watchers, debounced incremental
//! syncs, health check servers, UDP conntrack cleanup); see `docs/proxy.md`.

mod apply;
pub mod controller;
mod diff;
pub mod health;
mod ruleset;
mod stale;
mod view;

pub use apply::{Error, Proxier, SyncReport, cleanup, full_sync};
pub use controller::{ProxyArgs, run};
pub use diff::{diff, diff_into, update};
pub use ruleset::{
    ChainSpec, Class, ClassKind, EndpointGroup, FamilyRuleset, MASQ_MARK, MAX_ENDPOINTS, Node,
    Ruleset, ServiceRules, SetName, SetSpec, TABLE, desired, health_checks, names, port_id,
    service_rules, usable,
};
pub use view::{
    DEFAULT_AFFINITY_TIMEOUT, Endpoint, Hints, Protocol, SERVICE_NAME_LABEL,
    SERVICE_PROXY_NAME_LABEL, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, ViewError, cluster_endpoints,
};

#[cfg(test)]
mod tests;
