//! kubewire's service proxy: what kube-proxy does, in nftables.
//!
//! Reconcile, don't replay: [`View::build`] joins Services and EndpointSlices into a
//! plain-data [`View`]; [`desired`] computes the whole [`Ruleset`] for one node as a
//! pure function of it; [`diff`] turns the ruleset applied last and the new one into
//! one atomic nftables batch holding only the changes; [`Proxier`] keeps the last one
//! and applies the batches, the first one in full. The whole table is never listed
//! (at 50,000 services that would cost more than the change) and `nft` is never run;
//! instead, at every resync, [`Proxier::intact`] asks the kernel whether the tables are
//! still the ones it made (the ruleset generation, then each table's handle, the
//! number of rules in each chain and the map of classes) and a table someone deleted
//! or flushed is put back in full, with the session-affinity entries it held.
//!
//! # Ruleset layout
//!
//! One table `kubewire-proxy` in each of the `ip` and `ip6` families, same shape.
//! Nothing in it is per service: services are elements of shared sets and maps, and
//! the only chains besides the fixed ones are two per *class* ([`Class`]): one per
//! number of endpoints in use (cluster-wide or on this node, for service addresses or
//! node ports, with or without session affinity). Every rule has a comment saying
//! what it is for, and the whole table lists with nft 1.0.6 (Debian 12, the oldest
//! supported), as text and as JSON.
//!
//! A *destination* is a service address and port (`daddr . l4proto . dport`: a
//! ClusterIP, external IP or load-balancer IP) or a node port (`l4proto . dport`).
//! Its class says how to pick an endpoint for a new connection: one of `N`, each with
//! probability `1/N`. Services with the same number of endpoints share a class,
//! whatever their endpoints are. What else happens to a connection is decided before
//! the class, by sets of destinations: masquerading (`externalTrafficPolicy:
//! Cluster` on external destinations) and `externalTrafficPolicy: Local`.
//!
//! | name | key → value | holds |
//! |---|---|---|
//! | `service-ips` | `daddr . l4proto . dport` → class id (`mark`) | every service address with a usable endpoint |
//! | `service-nodeports` | `l4proto . dport` → class id | node ports |
//! | `classes` | class id → `goto enter-<class>` (0 → `drop`) | one element per class in use (a handful) |
//! | `balance-N`, `balance-local-N`, `nodeport-balance-N`, ...`-affinity` | destination `. bucket` → `addr . port` | one map per class, named as its chain: bucket `i` of `0..N` holds the destination's `i`-th endpoint |
//! | `masquerade-ips`, `masquerade-nodeports` | destination | external destinations of `externalTrafficPolicy: Cluster` services |
//! | `external-local-ips`, `external-local-nodeports` | destination → class id | external destinations of `externalTrafficPolicy: Local` services: the class of their endpoints on this node (0: none) |
//! | `no-endpoint-services` | `daddr . l4proto . dport` → verdict | no usable endpoint: `goto reject-chain`; iTP Local with endpoints only elsewhere: `drop` |
//! | `no-endpoint-nodeports` | `l4proto . dport` → verdict | the same for node ports |
//! | `cluster-ips` | `daddr` | every ClusterIP |
//! | `hairpin` | `saddr . daddr` | `E . E` for every endpoint address `E` on this node (at most its pods) |
//! | `affinity` | `daddr . l4proto . dport . saddr` → `addr . port` | client affinity, with timeouts (dynamic) |
//! | `affinity-ips-T`, `affinity-nodeports-T` | destination | destinations with `sessionAffinity: ClientIP` and timeout `T` |
//! | `nodeport-ips` | `daddr` | the node's addresses, when known |
//!
//! Chains:
//!
//! - `nat-prerouting`, `nat-output` (nat, dstnat): `jump services`.
//! - `services`: marks for masquerade traffic to `@cluster-ips` from outside the pod
//!   network (when the node's cluster CIDRs are known), and traffic to
//!   `@masquerade-ips`; `externalTrafficPolicy: Local` destinations: from the node
//!   itself, marked; from outside (not a pod, not the node), `goto external-local`;
//!   then the dispatch, one rule whatever the number of services (two hash lookups):
//!   `ct mark 0 ct mark set ip daddr . meta l4proto . th dport map @service-ips ct
//!   mark vmap @classes`. The class id goes from the data map to the verdict map
//!   through the connection mark, within that one rule, and the class's enter chain
//!   (`enter-balance-N`: `ct mark set 0 goto balance-N`) sets it back to 0 at once:
//!   nobody else ever sees it. A connection that already has a mark (someone else's
//!   connmark, set before DNAT) is not touched: it goes to `services-by-class`, which
//!   tries the classes in turn (`jump balance-N`: a class whose map does not hold the
//!   destination does nothing and returns). Then node ports: `fib daddr type local`,
//!   not loopback (or `daddr @nodeport-ips`): `goto nodeports`, the same keyed by
//!   `l4proto . dport`.
//! - `external-local`, `nodeport-external-local`: the same dispatch through
//!   `@external-local-ips` (class 0: `drop`), or `external-local-by-class`, which
//!   ends with `drop`.
//! - `balance-N` (`balance-local-N` for local endpoints, `nodeport-` in front for node
//!   ports): one rule, `dnat to daddr . l4proto . dport . numgen random mod N map
//!   @balance-N`, all in registers of that one rule. Each bucket holds exactly one
//!   endpoint, so each is picked with probability `1/N`. With affinity (`-affinity`),
//!   first `jump affinity-lookup`: `dnat to daddr . l4proto . dport . saddr map
//!   @affinity`.
//! - `nat-postrouting` (nat, srcnat): masquerade (fully random) marked packets,
//!   clearing the mark bit, and hairpin: DNATed packets whose `saddr . daddr` is in
//!   `@hairpin`. (A two-register XOR, `saddr ^ daddr == 0`, needs no set and works on
//!   Linux ≥ 6.13, but nft 1.0.6 aborts printing it; only local endpoints can
//!   hairpin, so the set stays small.)
//! - `filter-prerouting`, `filter-output` (filter, dstnat-10): new connections `jump
//!   endpoints-check`, which looks up `@no-endpoint-services` and, for local
//!   destinations, `@no-endpoint-nodeports`.
//! - `filter-prerouting-post-dnat`, `filter-output-post-dnat` (filter, dstnat+10):
//!   new DNATed connections `jump affinity-record`, which remembers the endpoint of
//!   each one to an affinity destination: `ct original ip daddr . meta l4proto . ct
//!   original proto-dst @affinity-ips-T update @affinity { ... timeout T : ip daddr
//!   . th dport }` (after DNAT the packet's destination is the endpoint). Recording
//!   there rather than next to the pick keeps the rule printable (nft 1.0.6 aborts on
//!   a set update whose data comes from a map lookup), and also refreshes the
//!   timeout of a client that came back, as kube-proxy does.
//! - `filter-forward` (filter, 0) and `filter-output-post-dnat`: new connections
//!   `jump cluster-ips-check`: still addressed to a ClusterIP after DNAT means a port
//!   the service does not define, `goto reject-chain`; an address of the service
//!   CIDRs that no service has is dropped.
//! - `reject-chain`: TCP reset, else ICMP(v6) port unreachable.
//!
//! Why the connection mark: a class id must go from the lookup of the destination to
//! the chain of its class. In one rule as a register (`... map @service-ips vmap
//! @classes`) it is what nft 1.0.6 cannot print (it aborts, and with it `nft list
//! ruleset`, `nft list tables` and every tool that lists the ruleset); from one rule to
//! the next in a register the kernel refuses (a register must be written by the rule
//! that reads it); `service-ips` as a verdict map of `goto` would be printable but
//! makes the kernel revalidate every element at each change (15-37 ms at 50,000
//! services). The packet mark would do, but other software keeps state in it between
//! hooks (policy routing, Calico's policy bits) and it could not be restored; the
//! connection mark of a connection still being set up is 0 unless someone set it
//! before DNAT, and is 0 again before anyone else looks.
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
//!   class brings the class's map, its two chains and their rules (binding an empty
//!   map: cheap), and the by-class chains are refilled with one jump more.
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
//! loads what it uses); by-class chains that looked the class maps up themselves
//! (115 ms at 50,000 services for the first service of a class: refilling the chain
//! binds every class map again, and binding walks a map's elements; here they jump to
//! the class chains, whose rules are made once, with their map).
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
//! or the node (cluster-wide endpoints) or outside (local ones), never both. It is
//! looked up by one rule (`affinity-lookup`) made with the table, and written by the
//! rules of `affinity-record` (one per timeout in use): a rule that reads or writes a
//! map binds it, and binding walks the elements, here the clients.
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
    ChainSpec, Class, ClassMap, EndpointGroup, Endpoints, FamilyRuleset, MASQ_MARK, MAX_ENDPOINTS,
    NO_LOCAL_ENDPOINT, Node, Ruleset, ServiceRules, SetName, SetSpec, TABLE, desired,
    health_checks, names, port_id, service_rules, usable,
};
pub use view::{
    DEFAULT_AFFINITY_TIMEOUT, Endpoint, Hints, Protocol, SERVICE_NAME_LABEL,
    SERVICE_PROXY_NAME_LABEL, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, ViewError, cluster_endpoints,
};

#[cfg(test)]
mod tests;
