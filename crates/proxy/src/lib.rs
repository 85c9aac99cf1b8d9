//! kubewire's service proxy: what kube-proxy does, in nftables.
//!
//! Reconcile, don't replay: [`View::build`] joins Services and EndpointSlices into a
//! plain-data [`View`]; [`desired`] computes the whole [`Ruleset`] for one node as a
//! pure function of it; [`diff`] turns the ruleset applied last and the new one into
//! one atomic nftables batch holding only the changes; [`Proxier`] keeps the last one
//! and applies the batches, the first one in full. The whole table is never listed
//! (at 50,000 services that would cost more than the change) and `nft` is never run;
//! instead, at every resync, [`Proxier::intact`] asks the kernel whether the tables are
//! still the ones it made (the ruleset generation, then each table's handle) and a
//! table someone deleted is put back in full.
//!
//! # Ruleset layout
//!
//! One table `kubewire-proxy` in each of the `ip` and `ip6` families, same shape.
//! Nothing in it is per service: services are elements of shared maps, and the only
//! chains besides the fixed ones are a handful of *class* chains ([`Class`]), one per
//! kind of destination and number of endpoints in use.
//!
//! A *destination* is a service address and port (`daddr . l4proto . dport`: a
//! ClusterIP, external IP or load-balancer IP) or a node port (`l4proto . dport`). Its
//! *class* says what to do with a new connection: balance over `N` endpoints
//! (cluster-wide, or on this node), mark for masquerade then balance
//! (`externalTrafficPolicy: Cluster` on external destinations), or the
//! `externalTrafficPolicy: Local` dance; with or without `sessionAffinity: ClientIP`
//! (and its timeout). Services with the same shape share a class, whatever their
//! endpoints are.
//!
//! | name | key → value | holds |
//! |---|---|---|
//! | `service-ips` | `daddr . l4proto . dport` → class id (`mark . mark`) | every service address with a usable endpoint |
//! | `service-nodeports` | `l4proto . dport` → class id | node ports |
//! | `classes` | class id → `goto` the class chain | one element per class in use (a handful) |
//! | `balance-N`, `balance-local-N`, `nodeport-balance-N`, ...`-affinity-T` | destination `. bucket` → `addr . port` | one map per balancing class, named as its chain: bucket `i` of `0..N` holds the destination's `i`-th endpoint |
//! | `no-endpoint-services` | `daddr . l4proto . dport` → verdict | no usable endpoint: `goto reject-chain`; iTP Local with endpoints only elsewhere: `drop` |
//! | `no-endpoint-nodeports` | `l4proto . dport` → verdict | the same for node ports |
//! | `cluster-ips` | `daddr` | every ClusterIP |
//! | `hairpin` | `saddr . daddr` | `E . E` for every endpoint address `E` on this node (at most its pods) |
//! | `affinity` | `daddr . l4proto . dport . saddr` → `addr . port` | client affinity, with timeouts (dynamic) |
//! | `nodeport-ips` | `daddr` | the node's addresses, when known |
//!
//! Class chains (names are those of [`Class::chain`]):
//!
//! - `balance-N` (`balance-local-N` for local endpoints, `nodeport-` in front for
//!   node ports): one rule, `dnat to daddr . l4proto . dport . numgen random mod N
//!   map @balance-N`, all in registers of that one rule. Each bucket holds exactly
//!   one endpoint, so each is picked with probability `1/N`. With affinity
//!   (`-affinity-T`), a first rule DNATs a client found in `affinity`, and the
//!   balancing rule also records its pick there (`update @affinity { ... timeout T }`)
//!   from the same registers.
//! - `masquerade-N`: `mark 0x4000`, `goto balance-N`.
//! - `external-local-N-L`: pod sources `goto balance-N`, node-local sources (`fib
//!   saddr type local`) mark and `goto balance-N`, the rest `goto balance-local-L`, or
//!   `drop` when `L` is 0.
//!
//! Base chains and the fixed chains:
//!
//! - `nat-prerouting`, `nat-output` (nat, dstnat): `jump services`.
//! - `services`: marks traffic to `@cluster-ips` from outside the pod network (when the
//!   node's cluster CIDRs are known); `ip daddr . meta l4proto . th dport map
//!   @service-ips vmap @classes` (the one dispatch rule, O(1) whatever the number of
//!   services: two hash lookups); `fib daddr type local`, not loopback (or `daddr
//!   @nodeport-ips`): `meta l4proto . th dport map @service-nodeports vmap @classes`.
//! - `nat-postrouting` (nat, srcnat): masquerade (fully random) marked packets, and
//!   hairpin: DNATed packets whose `saddr . daddr` is in `@hairpin`. (A two-register
//!   XOR, `saddr ^ daddr == 0`, needs no set and works on Linux ≥ 6.13, but nft 1.0.6
//!   aborts printing it; only local endpoints can hairpin, so the set stays small.)
//! - `filter-prerouting`, `filter-output` (filter, dstnat-10): new connections `jump
//!   endpoints-check`, which looks up `@no-endpoint-services` and, for local
//!   destinations, `@no-endpoint-nodeports`.
//! - `filter-forward` (filter, 0) and `filter-output-post-dnat` (filter, dstnat+10):
//!   new connections `jump cluster-ips-check`: still addressed to a ClusterIP after DNAT
//!   means a port the service does not define, `goto reject-chain`; an address of the
//!   service CIDRs that no service has is dropped.
//! - `reject-chain`: TCP reset, else ICMP(v6) port unreachable.
//!
//! nft 1.0.6 (Debian 12) cannot print two kinds of rule, and so aborts on `nft list
//! table`/`ruleset`: the dispatch rule (a data-map lookup feeding a verdict-map
//! lookup; a one-word class id does not help) and the balancing rule of affinity
//! classes (a dynset whose data comes from a map lookup). Every set and map and every
//! other chain can be listed (`nft list map ip kubewire-proxy service-ips`, `nft list
//! chain ip kubewire-proxy balance-2`; checked by the namespaced tests). The printable
//! alternative, `service-ips` as a verdict map of `goto balance-N`, would cost a
//! revalidation of every element at each class change (15 ms at 50,000 services).
//!
//! # What a change costs, and why this shape
//!
//! [`Proxier::update`] recomputes only the services that changed ([`update`]). Measured
//! on Linux 6.18 (`cargo bench -p proxy --bench sync`, figures in BENCHMARKS.md):
//!
//! - An endpoint replaced: one element out of the class map and one in. No rule, no
//!   chain: constant cost, whatever the number of services.
//! - An endpoint added or removed: the destination changes class, so its elements move
//!   from one class map to the other and its `service-ips` element changes value.
//!   Still elements only, as long as the new class exists; the first service of a
//!   class brings the class's map, chain and rule (an empty map: cheap).
//! - A service added or removed: its elements, plus a class if it is the first (last).
//!
//! Why: at commit, the kernel revalidates the table's whole chain graph (every base
//! chain, every chain reachable, through every element of every verdict map) when the
//! transaction added a rule with an expression that has a validate op (`nat` among
//! them) or a `jump`/`goto` element of a verdict map (`nf_tables_api.c`). Elements of
//! *data* maps do not trigger it. Measured in a namespace holding 50,000 services
//! (kernel time of the batch, `nft -f` under `strace -T`, loaded machine): a data-map
//! element replaced 0.03 ms, a plain set element 0.03 ms, a `drop` element of a
//! verdict map 0.02 ms, a `goto` element of a 50,000-element verdict map 15 ms, a NAT
//! rule 6-10 ms. The shape before this one (a chain per service port, a NAT rule per
//! endpoint, flushed and refilled on a change) paid 200-350 ms per endpoint change at
//! 50,000 services; `service-ips` as a verdict map of `goto balance-N` would pay the
//! 15 ms for every added service and class change. Here the big maps are data maps,
//! and the one verdict map, `classes`, holds a handful of elements.
//!
//! The traps measured by the shapes before this one, which this one avoids: a data
//! map per *service* (8.6 s at 10,000: the kernel finds named sets by a linear search
//! of the table's set list, once per message naming one; here a few dozen maps at
//! most); one map shared by 10,000 rules (67 s: binding a map walks its elements, and
//! adding an element walks its bindings; here each class map is bound by one rule,
//! which is created while the map is empty); passing a key to a shared rule in
//! registers (refused: registers do not carry over between rules; here each rule
//! loads what it uses).
//!
//! Memory: the applied ruleset holds each element of the fixed sets once (key → data
//! and a count of the services contributing it); a class map ([`ClassMap`]) holds
//! destinations, each with its endpoint list, shared with the service that contributes
//! it ([`EndpointGroup`]); map elements exist only while a batch is encoded. The sync
//! bench's process (view + applied ruleset) holds 46.5 MB at 10,000 services × 10
//! endpoints (BENCHMARKS.md).
//!
//! Session affinity: the `affinity` map is keyed by the destination and the client (a
//! ClusterIP and an external IP of one service keep separate affinities). It needs no
//! cluster/local field: under `externalTrafficPolicy: Local` a client is either a pod
//! or the node (cluster-wide endpoints) or outside (local ones), never both.
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
mod store;
mod view;

pub use apply::{Error, Proxier, SyncReport, cleanup, full_sync};
pub use controller::{ProxyArgs, run};
pub use diff::{diff, diff_into, update};
pub use ruleset::{
    ChainSpec, Class, ClassKind, ClassMap, EndpointGroup, Endpoints, FamilyRuleset, MASQ_MARK,
    MAX_ENDPOINTS, Node, Ruleset, ServiceRules, SetName, SetSpec, TABLE, desired, health_checks,
    names, port_id, service_rules, usable,
};
pub use view::{
    DEFAULT_AFFINITY_TIMEOUT, Endpoint, Hints, Protocol, SERVICE_NAME_LABEL,
    SERVICE_PROXY_NAME_LABEL, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, ViewError, cluster_endpoints,
};

#[cfg(test)]
mod tests;
