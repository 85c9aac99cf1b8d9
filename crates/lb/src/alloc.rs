//! Which LoadBalancer Service gets which addresses: a pure function of the pools and the
//! Services ([`plan`]), with MetalLB's semantics (its controller's `convergeBalancer`
//! and `internal/allocator`, v0.16.1) so that a cluster moving from MetalLB keeps its
//! addresses and its annotations mean the same:
//!
//! - `spec.loadBalancerIP`, or `metallb.io/loadBalancerIPs` (one address, or one per
//!   family), asks for addresses; they must be in a pool (any pool: `autoAssign: false`
//!   pools are for exactly this) the Service may use.
//! - `metallb.io/address-pool` names the pool to take from.
//! - Otherwise the pools whose `serviceAllocation` selects the Service are tried by
//!   priority, then the `autoAssign` pools without one (by name: MetalLB takes them in
//!   Go's random map order).
//! - `metallb.io/allow-shared-ip`: Services with the same key may share an address if
//!   their ports differ and, with `externalTrafficPolicy: Local`, their selectors are
//!   the same (their traffic must reach the same pods). Otherwise no address ever has
//!   two Services.
//! - Dual stack per the Service's ClusterIPs and `ipFamilyPolicy`: RequireDualStack gets
//!   one address of each family or none, PreferDualStack both when a pool has both.
//! - `metallb.universe.tf/...`, the older names of the annotations, still count.
//! - `spec.loadBalancerClass`: Services without one, or with ours.
//!
//! Level-triggered: every pass recomputes all assignments from the whole view. Addresses
//! Services already hold (their `status.loadBalancer.ingress`) are taken in first, the
//! oldest Service first, and kept while the configuration still allows them; only then
//! are new addresses handed out, to the Services that name theirs first. So a controller that restarts, or whose view lags, never
//! gives an address twice, and a pool change moves exactly the Services it affects.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServiceSpec};

use crate::pool::{self, Pool};

/// MetalLB's annotation prefix, and the older one it still reads.
const PREFIXES: [&str; 2] = ["metallb.io/", "metallb.universe.tf/"];
/// The `loadBalancerClass` this controller serves besides Services that set none.
pub const LOAD_BALANCER_CLASS: &str = "kubewire.io/lb";

/// Event reasons, MetalLB's.
pub mod reason {
    /// An address was assigned (Normal).
    pub const IP_ALLOCATED: &str = "IPAllocated";
    /// No address could be assigned (Warning); the Service stays pending.
    pub const ALLOCATION_FAILED: &str = "AllocationFailed";
    /// The address the Service held is no longer allowed and was taken back (Normal).
    pub const CLEAR_ASSIGNMENT: &str = "ClearAssignment";
    /// The requested addresses cannot be read (Warning).
    pub const LOAD_BALANCER_FAILED: &str = "LoadBalancerFailed";
    /// PreferDualStack got only one family (Normal).
    pub const ADDITIONAL_ASSIGN_FAILED: &str = "AdditionalAssignFailed";
}

/// The value of annotation `name` under MetalLB's prefix, else under its older one.
fn annotation<'a>(a: &'a BTreeMap<String, String>, name: &str) -> Option<&'a str> {
    PREFIXES
        .iter()
        .find_map(|p| a.get(&format!("{p}{name}")).map(String::as_str))
}

/// A Service's address family, from its ClusterIPs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 only.
    V4,
    /// IPv6 only.
    V6,
    /// Both.
    Dual,
}

impl Family {
    fn of(ips: &[IpAddr]) -> Option<Family> {
        match ips {
            [a] if a.is_ipv4() => Some(Family::V4),
            [_] => Some(Family::V6),
            [a, b] if a.is_ipv4() != b.is_ipv4() => Some(Family::Dual),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
            Family::Dual => "dual",
        }
    }
}

/// `spec.ipFamilyPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// One family (the default).
    SingleStack,
    /// Both families where the pools have them.
    PreferDualStack,
    /// Both families or nothing.
    RequireDualStack,
}

/// A port as sharing sees it: protocol and number.
pub type Port = (String, i32);

/// What the allocator reads of a Service (kept by the controller instead of the whole
/// object).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// `namespace/name`.
    pub key: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (for `serviceAllocation.serviceSelectors`).
    pub labels: BTreeMap<String, String>,
    /// `type: LoadBalancer`.
    pub load_balancer: bool,
    /// `spec.loadBalancerClass`.
    pub class: Option<String>,
    /// `spec.clusterIPs` (or `clusterIP`), parsed; their families are the Service's.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies[0]` is IPv6.
    pub ipv6_first: bool,
    /// `spec.ipFamilyPolicy`.
    pub policy: Policy,
    /// `spec.ports`.
    pub ports: Vec<Port>,
    /// The sharing key (`allow-shared-ip`), if any.
    pub sharing: Option<String>,
    /// With `externalTrafficPolicy: Local`, the selector as text: Services sharing an
    /// address must select the same pods. Empty otherwise.
    pub backend: String,
    /// The requested addresses (`loadBalancerIPs` annotation or `spec.loadBalancerIP`),
    /// or why they cannot be read.
    pub requested: Result<Vec<IpAddr>, String>,
    /// `address-pool`.
    pub pool: Option<String>,
    /// The addresses in `status.loadBalancer.ingress`.
    pub current: Vec<IpAddr>,
    /// The pool annotation currently on it (`ip-allocated-from-pool`).
    pub current_pool: Option<String>,
    /// When it was made (Unix seconds; 0 unknown): older Services win conflicts.
    pub created: i64,
}

impl ServiceView {
    /// Reads `svc`.
    pub fn new(svc: &Service) -> ServiceView {
        let meta = &svc.metadata;
        let namespace = meta.namespace.clone().unwrap_or_default();
        let key = format!("{namespace}/{}", meta.name.as_deref().unwrap_or_default());
        // Read in place: a copy of the annotations would copy kubectl's
        // last-applied-configuration, the largest field of most Services.
        let no_annotations = BTreeMap::new();
        let annotations = meta.annotations.as_ref().unwrap_or(&no_annotations);
        let no_spec = ServiceSpec::default();
        let spec = svc.spec.as_ref().unwrap_or(&no_spec);
        let mut cluster_ips: Vec<IpAddr> = spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|s| s.parse().ok())
            .collect();
        if cluster_ips.is_empty() {
            cluster_ips.extend(
                spec.cluster_ip
                    .as_deref()
                    .and_then(|s| s.parse::<IpAddr>().ok()),
            );
        }
        let policy = match spec.ip_family_policy.as_deref() {
            Some("PreferDualStack") => Policy::PreferDualStack,
            Some("RequireDualStack") => Policy::RequireDualStack,
            _ => Policy::SingleStack,
        };
        let ports = spec
            .ports
            .iter()
            .flatten()
            .map(|p| (p.protocol.clone().unwrap_or_else(|| "TCP".into()), p.port))
            .collect();
        let backend = if spec.external_traffic_policy.as_deref() == Some("Local") {
            // labels.Set.String(): sorted `k=v` joined with commas.
            let mut s = String::new();
            for (i, (k, v)) in spec.selector.iter().flatten().enumerate() {
                let _ = write!(s, "{}{k}={v}", if i > 0 { "," } else { "" });
            }
            s
        } else {
            String::new()
        };
        let current = svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()?.parse().ok())
            .collect();
        ServiceView {
            key,
            namespace,
            labels: meta.labels.clone().unwrap_or_default(),
            load_balancer: spec.type_.as_deref() == Some("LoadBalancer"),
            class: spec.load_balancer_class.clone(),
            cluster_ips,
            ipv6_first: spec
                .ip_families
                .as_ref()
                .and_then(|f| f.first())
                .is_some_and(|f| f == "IPv6"),
            policy,
            ports,
            sharing: annotation(annotations, "allow-shared-ip")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            backend,
            requested: requested(annotations, spec.load_balancer_ip.as_deref()),
            pool: annotation(annotations, "address-pool")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            current,
            current_pool: annotation(annotations, "ip-allocated-from-pool").map(str::to_owned),
            created: meta
                .creation_timestamp
                .as_ref()
                .map_or(0, |t| t.0.as_second()),
        }
    }

    /// Whether this controller serves it: no class, or `ours`.
    pub fn is_ours(&self, ours: &str) -> bool {
        self.class.as_deref().is_none_or(|c| c == ours)
    }
}

/// The requested addresses: the annotation (comma-separated) or `spec.loadBalancerIP`,
/// not both (MetalLB's `getDesiredLbIPs`).
fn requested(
    annotations: &BTreeMap<String, String>,
    spec_ip: Option<&str>,
) -> Result<Vec<IpAddr>, String> {
    let ann = annotation(annotations, "loadBalancerIPs").filter(|s| !s.is_empty());
    let spec_ip = spec_ip.filter(|s| !s.is_empty());
    match (ann, spec_ip) {
        (None, None) => Ok(Vec::new()),
        (Some(_), Some(_)) => Err(
            "service can not have both metallb.io/loadBalancerIPs and svc.Spec.LoadBalancerIP"
                .into(),
        ),
        (Some(list), None) => {
            let ips = list
                .split(',')
                .map(|s| s.trim().parse::<IpAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("invalid metallb.io/loadBalancerIPs: {list:?}"))?;
            if Family::of(&ips).is_none() {
                return Err(format!(
                    "invalid metallb.io/loadBalancerIPs: {list:?}: one address, or one of each family"
                ));
            }
            Ok(ips)
        }
        (None, Some(ip)) => ip
            .parse()
            .map(|ip| vec![ip])
            .map_err(|_| format!("invalid spec.loadBalancerIP {ip:?}")),
    }
}

/// Whether an event is routine or a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// `Normal`.
    Normal,
    /// `Warning`.
    Warning,
}

impl EventType {
    /// As the Event's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An Event to record about a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Normal or Warning.
    pub type_: EventType,
    /// One of [`reason`].
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

/// What a Service should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not this controller's Service (another `loadBalancerClass`): left alone.
    NotOurs,
    /// These addresses, from this pool.
    Assigned {
        /// One, or one per family (IPv4 first unless the Service prefers IPv6).
        ips: Vec<IpAddr>,
        /// The pool they came from (the `ip-allocated-from-pool` annotation).
        pool: String,
    },
    /// No address (pending, or not a LoadBalancer): empty `status.loadBalancer`, no pool
    /// annotation. The events say why.
    None,
}

/// The decision for one Service and the events it brings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What to write.
    pub decision: Decision,
    /// What to tell.
    pub events: Vec<Event>,
}

/// Addresses given out by one pool, per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// IPv4 addresses in use (an address shared by several Services counts once).
    pub v4: u64,
    /// IPv6 addresses in use.
    pub v6: u64,
}

/// The result of a pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Per Service key.
    pub services: BTreeMap<String, Outcome>,
    /// Per pool name, also those with nothing in use.
    pub usage: BTreeMap<String, Usage>,
}

/// The sharing identity of a use of an address.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key<'a> {
    sharing: Option<&'a str>,
    backend: &'a str,
}

/// Who uses one address.
#[derive(Debug)]
struct IpUse<'a> {
    key: Key<'a>,
    pool: &'a str,
    /// Service key → its ports.
    users: Vec<(&'a str, &'a [Port])>,
}

/// The assignments of a pass, as they are made.
struct State<'a> {
    pools: &'a BTreeMap<String, Pool>,
    by_ip: HashMap<IpAddr, IpUse<'a>>,
    /// Per pool and range, an address before which every one is in use: where the
    /// search for a Service that shares nothing starts (an address in use is never
    /// free for it), so that handing out N addresses is not N² steps. Only valid while
    /// addresses are only taken; cleared when one is given back.
    unshared_from: HashMap<(&'a str, usize), IpAddr>,
}

/// Why an address cannot go to a Service.
fn sharing_refused(existing: &Key<'_>, new: &Key<'_>) -> Option<String> {
    match (existing.sharing, new.sharing) {
        (None, _) => Some("existing service does not allow sharing".into()),
        (_, None) => Some("new service does not allow sharing".into()),
        (Some(a), Some(b)) if a != b => Some(format!(
            "sharing key {b:?} does not match existing sharing key {a:?}"
        )),
        _ if existing.backend != new.backend => Some(format!(
            "backend key {:?} does not match existing backend key {:?} (externalTrafficPolicy Local needs the same selector)",
            new.backend, existing.backend
        )),
        _ => None,
    }
}

fn quoted(ips: &[IpAddr]) -> String {
    let inner: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    format!("[{}]", inner.join(" "))
}

impl<'a> State<'a> {
    /// Whether `svc` may use `ip` besides its current users (MetalLB's `checkSharing`).
    fn check(&self, svc: &ServiceView, key: &Key<'_>, ip: IpAddr) -> Result<(), String> {
        let Some(used) = self.by_ip.get(&ip) else {
            return Ok(());
        };
        // Most addresses are checked again by the Service that holds them alone.
        if used.users.iter().all(|(k, _)| *k == svc.key) {
            return Ok(());
        }
        if let Some(why) = sharing_refused(&used.key, key) {
            let others: Vec<&str> = used
                .users
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| *k != svc.key)
                .collect();
            return Err(format!(
                "address \"{ip}\" is in use by {} and cannot be shared: {why}",
                others.join(",")
            ));
        }
        for port in &svc.ports {
            if used
                .users
                .iter()
                .any(|(k, ports)| *k != svc.key && ports.contains(port))
            {
                return Err(format!(
                    "port {}/{} is already in use on \"{ip}\"",
                    port.0, port.1
                ));
            }
        }
        Ok(())
    }

    /// The pool that holds every one of `ips`.
    fn pool_for(&self, ips: &[IpAddr]) -> Option<&'a Pool> {
        self.pools
            .values()
            .find(|p| ips.iter().all(|ip| p.contains(*ip)))
    }

    /// Gives `ips` to `svc` if the configuration and the other Services allow it
    /// (MetalLB's `Assign`). Returns the pool.
    fn assign(&mut self, svc: &'a ServiceView, ips: &[IpAddr]) -> Result<&'a Pool, String> {
        let pool = self
            .pool_for(ips)
            .ok_or_else(|| format!("{} is not allowed in config: no pool holds it", quoted(ips)))?;
        if !pool.serves(&svc.namespace, &svc.labels) {
            return Err(format!(
                "pool {} not compatible for ip assignment (its serviceAllocation does not select this Service)",
                pool.name
            ));
        }
        if Family::of(ips).is_none() {
            return Err(format!(
                "{} is not one address, or one of each family",
                quoted(ips)
            ));
        }
        let key = key_of(svc);
        for ip in ips {
            self.check(svc, &key, *ip)?;
        }
        for ip in ips {
            let used = self.by_ip.entry(*ip).or_insert_with(|| IpUse {
                key: key.clone(),
                pool: &pool.name,
                users: Vec::new(),
            });
            used.users.push((&svc.key, &svc.ports));
        }
        Ok(pool)
    }

    /// The first address of each family in `pool` that `svc` may have.
    fn free_in(&mut self, pool: &'a Pool, svc: &ServiceView) -> (Option<IpAddr>, Option<IpAddr>) {
        let key = key_of(svc);
        let (mut v4, mut v6) = (None, None);
        for (i, r) in pool.ranges.iter().enumerate() {
            let slot = if r.is_ipv6() { &mut v6 } else { &mut v4 };
            if slot.is_some() {
                continue;
            }
            let unshared = svc.sharing.is_none();
            let start = if unshared {
                self.unshared_from.get(&(pool.name.as_str(), i)).copied()
            } else {
                None
            };
            let mut ip = Some(start.unwrap_or(r.first));
            while let Some(cur) = ip.filter(|i| r.contains(*i)) {
                let usable = !(pool.avoid_buggy_ips && pool::confuses_buggy_firmware(cur));
                let free = if unshared {
                    !self.by_ip.contains_key(&cur)
                } else {
                    self.check(svc, &key, cur).is_ok()
                };
                if usable && free {
                    *slot = Some(cur);
                    break;
                }
                ip = pool::next(cur);
            }
            if unshared {
                // Everything before the address found (or the whole range) is in use.
                let upto = slot.or(ip).unwrap_or(r.last);
                self.unshared_from.insert((pool.name.as_str(), i), upto);
            }
        }
        (v4, v6)
    }

    /// The addresses `svc` would get from `pool` for its family and policy (MetalLB's
    /// `selectIPsForFamilyAndPolicy`), or why none.
    fn pick(
        &mut self,
        pool: &'a Pool,
        svc: &ServiceView,
        family: Family,
    ) -> Result<Vec<IpAddr>, String> {
        let (v4, v6) = self.free_in(pool, svc);
        let ordered = |a: IpAddr, b: IpAddr| {
            if svc.ipv6_first {
                vec![b, a]
            } else {
                vec![a, b]
            }
        };
        let got = match (family, svc.policy) {
            (Family::V4, _) => v4.map(|a| vec![a]),
            (Family::V6, _) => v6.map(|a| vec![a]),
            (Family::Dual, Policy::PreferDualStack) => match (v4, v6) {
                (Some(a), Some(b)) => Some(ordered(a, b)),
                (a, b) => a.or(b).map(|x| vec![x]),
            },
            (Family::Dual, _) => v4.zip(v6).map(|(a, b)| ordered(a, b)),
        };
        got.ok_or_else(|| {
            format!(
                "no available IPs in pool {:?} for {} IPFamily",
                pool.name,
                family.name()
            )
        })
    }

    /// The pools tried for a Service that names none: those whose serviceAllocation
    /// selects it, by priority, then every other autoAssign pool.
    fn candidates(&self, svc: &ServiceView) -> Vec<&'a Pool> {
        let mut pinned: Vec<&Pool> = self
            .pools
            .values()
            .filter(|p| p.auto_assign && p.allocation.is_some())
            .filter(|p| p.serves(&svc.namespace, &svc.labels))
            .collect();
        // Set priorities ascending, then unset (0), each by name (stable sort).
        pinned.sort_by_key(|p| match p.allocation.as_ref().map_or(0, |a| a.priority) {
            0 => (1, 0),
            n => (0, n),
        });
        pinned.extend(
            self.pools
                .values()
                .filter(|p| p.auto_assign && p.allocation.is_none()),
        );
        pinned
    }

    /// A new assignment for `svc` (MetalLB's `allocateIPs`).
    fn allocate(
        &mut self,
        svc: &'a ServiceView,
        family: Family,
    ) -> Result<(Vec<IpAddr>, String), String> {
        let requested = svc.requested.as_ref().map_err(Clone::clone)?;
        if !requested.is_empty() {
            if Family::of(requested) != Some(family) {
                return Err(format!(
                    "requested loadBalancer IP(s) {} does not match the ipFamily of the service ({})",
                    quoted(requested),
                    family.name()
                ));
            }
            if let Some(name) = &svc.pool
                && self.pool_for(requested).is_some_and(|p| &p.name != name)
            {
                return Err(format!(
                    "requested loadBalancer IP(s) {} is not compatible with requested address pool {name}",
                    quoted(requested)
                ));
            }
            let pool = self.assign(svc, requested)?;
            return Ok((requested.clone(), pool.name.clone()));
        }
        if let Some(name) = &svc.pool {
            let pool = self
                .pools
                .get(name)
                .ok_or_else(|| format!("unknown pool {name:?}"))?;
            if !pool.serves(&svc.namespace, &svc.labels) {
                return Err(format!(
                    "pool {name} not compatible for ip assignment (its serviceAllocation does not select this Service)"
                ));
            }
            let ips = self.pick(pool, svc, family)?;
            self.assign(svc, &ips)?;
            return Ok((ips, name.clone()));
        }
        // MetalLB's findBestPoolForService: the first pool that gives every family the
        // Service wants; for PreferDualStack, else the first that gives its first family,
        // else the first that gives the other.
        let pools = self.candidates(svc);
        let mut partial: [Option<(Vec<IpAddr>, &Pool)>; 2] = [None, None];
        for pool in pools {
            let Ok(ips) = self.pick(pool, svc, family) else {
                continue;
            };
            if family != Family::Dual || ips.len() == 2 {
                self.assign(svc, &ips)?;
                return Ok((ips, pool.name.clone()));
            }
            let first_family = ips[0].is_ipv6() == svc.ipv6_first;
            let slot = &mut partial[usize::from(!first_family)];
            if slot.is_none() {
                *slot = Some((ips, pool));
            }
        }
        if let Some((ips, pool)) = partial.into_iter().flatten().next() {
            self.assign(svc, &ips)?;
            return Ok((ips, pool.name.clone()));
        }
        Err("no available IPs".into())
    }

    /// Takes back whatever `svc` holds.
    fn unassign(&mut self, svc: &ServiceView) {
        self.unshared_from.clear();
        self.by_ip.retain(|_, used| {
            used.users.retain(|(k, _)| *k != svc.key);
            !used.users.is_empty()
        });
    }
}

fn key_of(svc: &ServiceView) -> Key<'_> {
    Key {
        sharing: svc.sharing.as_deref(),
        backend: &svc.backend,
    }
}

fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a == b
}

/// Computes every Service's addresses. `class` is the `loadBalancerClass` served
/// besides none.
pub fn plan<S: std::borrow::Borrow<ServiceView>>(
    pools: &BTreeMap<String, Pool>,
    services: &[S],
    class: &str,
) -> Plan {
    let mut state = State {
        pools,
        by_ip: HashMap::with_capacity(services.len()),
        unshared_from: HashMap::new(),
    };
    let mut out: BTreeMap<String, Outcome> = BTreeMap::new();
    let mut order: Vec<&ServiceView> = services.iter().map(S::borrow).collect();
    order.sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));

    // What each Service that is ours and a LoadBalancer still needs after its current
    // addresses are taken in: a new assignment, or a second family.
    let mut pending: Vec<(&ServiceView, Family)> = Vec::new();
    let mut kept: Vec<(&ServiceView, Family, String)> = Vec::new();
    for svc in order {
        let mut events = Vec::new();
        let decision = 'decide: {
            if !svc.is_ours(class) {
                break 'decide Decision::NotOurs;
            }
            if !svc.load_balancer || pools.is_empty() {
                break 'decide Decision::None;
            }
            let Some(family) = Family::of(&svc.cluster_ips) else {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: reason::ALLOCATION_FAILED,
                    message: format!(
                        "Failed to allocate IP for {:?}: no usable ClusterIPs, can't determine the IP family",
                        svc.key
                    ),
                });
                break 'decide Decision::None;
            };
            if svc.policy == Policy::RequireDualStack && family != Family::Dual {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: reason::ALLOCATION_FAILED,
                    message: "Service requires dual stack but its ClusterIPs are not dual stack"
                        .into(),
                });
                break 'decide Decision::None;
            }
            if let Err(e) = &svc.requested {
                events.push(Event {
                    type_: EventType::Warning,
                    reason: reason::LOAD_BALANCER_FAILED,
                    message: format!("invalid requested loadbalancer IPs: {e}"),
                });
                break 'decide Decision::None;
            }
            if !svc.current.is_empty() {
                match keep(&mut state, svc, family) {
                    Ok(pool) => {
                        kept.push((svc, family, pool.clone()));
                        break 'decide Decision::Assigned {
                            ips: svc.current.clone(),
                            pool,
                        };
                    }
                    Err(Some(why)) => events.push(Event {
                        type_: EventType::Normal,
                        reason: reason::CLEAR_ASSIGNMENT,
                        message: format!(
                            "current IP for {:?} not allowed by config, will attempt for new IP assignment: {why}",
                            svc.key
                        ),
                    }),
                    Err(None) => {}
                }
            }
            pending.push((svc, family));
            Decision::None
        };
        out.insert(svc.key.clone(), Outcome { decision, events });
    }

    // PreferDualStack Services that hold one family: the other from the same pool.
    for (svc, family, pool_name) in kept {
        if family != Family::Dual || svc.policy != Policy::PreferDualStack || svc.current.len() != 1
        {
            continue;
        }
        let outcome = out.get_mut(&svc.key).expect("every service has an outcome");
        let pool = &pools[&pool_name];
        let (v4, v6) = state.free_in(pool, svc);
        let extra = if svc.current[0].is_ipv4() { v6 } else { v4 };
        let Some(extra) = extra else {
            outcome.events.push(Event {
                type_: EventType::Normal,
                reason: reason::ADDITIONAL_ASSIGN_FAILED,
                message: format!(
                    "cannot assign additional IP in PreferDualStack: no available IPs in pool {pool_name:?}"
                ),
            });
            continue;
        };
        state.unassign(svc);
        let mut ips = vec![svc.current[0], extra];
        if ips[0].is_ipv6() != svc.ipv6_first {
            ips.swap(0, 1);
        }
        match state.assign(svc, &ips) {
            Ok(_) => {
                outcome.events.push(Event {
                    type_: EventType::Normal,
                    reason: reason::IP_ALLOCATED,
                    message: format!("Assigned additional IP \"{extra}\""),
                });
                outcome.decision = Decision::Assigned {
                    ips,
                    pool: pool_name,
                };
            }
            Err(_) => {
                state
                    .assign(svc, &svc.current)
                    .expect("the address it held a moment ago");
            }
        }
    }

    // Services asking for given addresses first (oldest first), then the rest: an
    // address a Service names is never handed to one that named none in the same pass.
    pending.sort_by_key(|(s, _)| s.requested.as_ref().map_or(true, Vec::is_empty));
    for (svc, family) in pending {
        let outcome = out.get_mut(&svc.key).expect("every service has an outcome");
        match state.allocate(svc, family) {
            Ok((ips, pool)) => {
                outcome.events.push(Event {
                    type_: EventType::Normal,
                    reason: reason::IP_ALLOCATED,
                    message: format!("Assigned IP {}", quoted(&ips)),
                });
                outcome.decision = Decision::Assigned { ips, pool };
            }
            Err(why) => outcome.events.push(Event {
                type_: EventType::Warning,
                reason: reason::ALLOCATION_FAILED,
                message: format!("Failed to allocate IP for {:?}: {why}", svc.key),
            }),
        }
    }

    let mut usage: BTreeMap<String, Usage> = pools
        .keys()
        .map(|k| (k.clone(), Usage::default()))
        .collect();
    for (ip, used) in &state.by_ip {
        if let Some(u) = usage.get_mut(used.pool) {
            if ip.is_ipv4() {
                u.v4 += 1;
            } else {
                u.v6 += 1;
            }
        }
    }
    Plan {
        services: out,
        usage,
    }
}

/// Takes in the addresses `svc` holds if they are still allowed (MetalLB's checks before
/// it re-`Assign`s them): Ok(pool), or Err(why they go; None: the Service asked for
/// others, which is no news).
fn keep<'a>(
    state: &mut State<'a>,
    svc: &'a ServiceView,
    family: Family,
) -> Result<String, Option<String>> {
    let held = Family::of(&svc.current);
    let family_ok = held == Some(family)
        || (family == Family::Dual && svc.policy == Policy::PreferDualStack && held.is_some());
    if !family_ok {
        return Err(Some(format!(
            "{} are not of the Service's IP family ({})",
            quoted(&svc.current),
            family.name()
        )));
    }
    let requested = svc.requested.as_ref().map_err(|e| Some(e.clone()))?;
    if !requested.is_empty() && !same_set(requested, &svc.current) {
        return Err(None);
    }
    if let Some(want) = &svc.pool
        && state
            .pool_for(&svc.current)
            .is_some_and(|p| &p.name != want)
    {
        return Err(None);
    }
    state
        .assign(svc, &svc.current)
        .map(|p| p.name.clone())
        .map_err(Some)
}

#[cfg(test)]
mod tests;
