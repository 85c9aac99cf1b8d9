//! Address pools as the allocator reads them: an IPAddressPool's `addresses` parsed
//! (CIDRs `10.0.0.0/24` and ranges `10.0.0.10-10.0.0.20`, IPv4 and IPv6), its
//! `avoidBuggyIPs`, `autoAssign` and `serviceAllocation`, with MetalLB's rules and its
//! error messages (`internal/config` of v0.16.1), so that a configuration MetalLB refuses
//! is refused here in the same words.
//!
//! A range is kept as it is written (first and last address) for allocation and
//! counting, and also summarized into the CIDRs that cover it exactly, as MetalLB
//! does: overlap between pools is checked, and reported, on those CIDRs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::IPAddressPool;

/// An IPAddressPool (or a set of them) MetalLB would refuse; the message is MetalLB's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPool(pub String);

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// The first address.
    pub first: IpAddr,
    /// The last address (same family, not before `first`).
    pub last: IpAddr,
}

impl Range {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.first, self.last, ip) {
            (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(x)) => a <= x && x <= b,
            (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(x)) => a <= x && x <= b,
            _ => false,
        }
    }

    /// Whether it holds IPv6 addresses.
    pub fn is_ipv6(&self) -> bool {
        self.first.is_ipv6()
    }

    /// How many addresses it holds (without `avoidBuggyIPs`), saturated.
    pub fn len(&self) -> u128 {
        (as_u128(self.last) - as_u128(self.first)).saturating_add(1)
    }

    /// Never true: a range holds at least its first address.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// How many of its addresses may be given out: without `.0` and `.255` when `avoid`.
    pub fn usable(&self, avoid_buggy: bool) -> u128 {
        let (IpAddr::V4(a), IpAddr::V4(b)) = (self.first, self.last) else {
            return self.len();
        };
        if !avoid_buggy {
            return self.len();
        }
        let (a, b) = (u32::from(a), u32::from(b));
        // Addresses ending in 0 in [a, b], and those ending in 255.
        let ending = |octet: u32| -> u128 {
            let up_to = |x: u32| -> i64 {
                // How many n <= x with n % 256 == octet.
                if x < octet {
                    0
                } else {
                    i64::from((x - octet) / 256) + 1
                }
            };
            let below = if a == 0 { 0 } else { up_to(a - 1) };
            u128::try_from(up_to(b) - below).unwrap_or(0)
        };
        self.len() - ending(0) - ending(255)
    }

    /// The CIDRs that cover exactly this range, in order (MetalLB's summary).
    pub fn cidrs(&self) -> Vec<IpNet> {
        match (self.first, self.last) {
            (IpAddr::V4(a), IpAddr::V4(b)) => Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect(),
            (IpAddr::V6(a), IpAddr::V6(b)) => Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect(),
            _ => Vec::new(),
        }
    }
}

/// An address as a number, to count and step.
pub(crate) fn as_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address after `ip` in its family, if any.
pub(crate) fn next(ip: IpAddr) -> Option<IpAddr> {
    match ip {
        IpAddr::V4(v4) => u32::from(v4)
            .checked_add(1)
            .map(|n| Ipv4Addr::from(n).into()),
        IpAddr::V6(v6) => u128::from(v6)
            .checked_add(1)
            .map(|n| Ipv6Addr::from(n).into()),
    }
}

/// Whether `ip` is an IPv4 address ending in 0 or 255: such addresses confuse the smurf
/// protection of some consumer routers, which drop their packets.
pub fn confuses_buggy_firmware(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

/// Parses one entry of `spec.addresses`: a CIDR (host bits ignored, as Go's
/// `net.ParseCIDR` does) or a range `FIRST-LAST`, with MetalLB's messages.
pub fn parse_addresses(s: &str) -> Result<Range, String> {
    let Some((a, b)) = s.split_once('-') else {
        let net: IpNet = parse_cidr(s).ok_or_else(|| format!("invalid CIDR {s:?}"))?;
        let net = net.trunc();
        return Ok(Range {
            first: net.network(),
            last: net.broadcast(),
        });
    };
    let first: IpAddr = a
        .trim()
        .parse()
        .map_err(|_| format!("invalid IP range {s:?}: invalid start IP {a:?}"))?;
    let last: IpAddr = b
        .trim()
        .parse()
        .map_err(|_| format!("invalid IP range {s:?}: invalid end IP {b:?}"))?;
    // Go compares the 16-byte forms, so an IPv4 start sorts before any IPv6 end; a
    // range across families is refused here all the same (it has no CIDR summary).
    if first.is_ipv6() != last.is_ipv6() {
        return Err(format!(
            "invalid IP range {s:?}: start IP {first:?} and end IP {last:?} are not of the same family"
        ));
    }
    if as_u128(first) > as_u128(last) {
        return Err(format!(
            "invalid IP range {s:?}: start IP \"{first}\" is after the end IP \"{last}\""
        ));
    }
    Ok(Range { first, last })
}

/// A CIDR as Go parses it: `ADDR/LEN`, nothing else (no bare address, no spaces).
fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, len) = s.split_once('/')?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let addr: IpAddr = addr.parse().ok()?;
    IpNet::new(addr, len.parse().ok()?).ok()
}

/// Which Services a pool is for (`spec.serviceAllocation`), namespace selectors already
/// resolved against the cluster's Namespaces, as MetalLB resolves them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Allocation {
    /// Lower is tried first; 0 (unset) after every pool that has one.
    pub priority: i32,
    /// Namespaces named, and those the namespace selectors match.
    pub namespaces: BTreeSet<String>,
    /// Services whose labels any of these match (none: every Service, if no namespace
    /// was named or selected either).
    pub service_selectors: Vec<LabelSelector>,
    /// Neither namespaces nor selectors were given: the pool is for every Service.
    pub everything: bool,
}

/// One pool, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// The IPAddressPool's name.
    pub name: String,
    /// Its addresses, in the order written.
    pub ranges: Vec<Range>,
    /// Never give out `.0` and `.255`.
    pub avoid_buggy_ips: bool,
    /// Services that name no pool and no address may get addresses from it.
    pub auto_assign: bool,
    /// `serviceAllocation`, if set.
    pub allocation: Option<Allocation>,
}

/// A pool's size per family, as IPAddressPool's status counts it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capacity {
    /// Usable IPv4 addresses.
    pub v4: u128,
    /// Usable IPv6 addresses.
    pub v6: u128,
}

impl Pool {
    /// Parses `p`; `namespaces` (name → labels) resolves its namespace selectors.
    pub fn parse(
        p: &IPAddressPool,
        namespaces: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<Pool, InvalidPool> {
        let name = p.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(InvalidPool("missing pool name".into()));
        }
        let fail = |m: String| InvalidPool(format!("parsing address pool {name}: {m}"));
        if p.spec.addresses.is_empty() {
            return Err(fail("pool has no prefixes defined".into()));
        }
        let mut ranges = Vec::new();
        for a in &p.spec.addresses {
            let r = parse_addresses(a)
                .map_err(|e| fail(format!("invalid CIDR {a:?} in pool {name:?}: {e}")))?;
            ranges.push(r);
        }
        let allocation = match &p.spec.service_allocation {
            None => None,
            Some(sa) => {
                let mut set = BTreeSet::new();
                for ns in &sa.namespaces {
                    if !set.insert(ns.clone()) {
                        return Err(fail("duplicate definition in namespaces field".into()));
                    }
                }
                check_duplicates(&sa.namespace_selectors, "namespaceSelectors").map_err(fail)?;
                check_duplicates(&sa.service_selectors, "serviceSelectors").map_err(fail)?;
                let everything = sa.namespaces.is_empty()
                    && sa.namespace_selectors.is_empty()
                    && sa.service_selectors.is_empty();
                for sel in &sa.namespace_selectors {
                    for (ns, labels) in namespaces {
                        if k8s::labels::selects(sel, labels) {
                            set.insert(ns.clone());
                        }
                    }
                }
                Some(Allocation {
                    priority: sa.priority,
                    namespaces: set,
                    service_selectors: sa.service_selectors.clone(),
                    everything,
                })
            }
        };
        Ok(Pool {
            name,
            ranges,
            avoid_buggy_ips: p.spec.avoid_buggy_ips,
            auto_assign: p.spec.auto_assign(),
            allocation,
        })
    }

    /// Whether `ip` is one this pool gives out.
    pub fn contains(&self, ip: IpAddr) -> bool {
        !(self.avoid_buggy_ips && confuses_buggy_firmware(ip))
            && self.ranges.iter().any(|r| r.contains(ip))
    }

    /// How many addresses it can give out, per family.
    pub fn capacity(&self) -> Capacity {
        let mut c = Capacity::default();
        for r in &self.ranges {
            let n = r.usable(self.avoid_buggy_ips);
            if r.is_ipv6() {
                c.v6 = c.v6.saturating_add(n);
            } else {
                c.v4 = c.v4.saturating_add(n);
            }
        }
        c
    }

    /// The summary CIDRs of all its addresses.
    pub fn cidrs(&self) -> Vec<IpNet> {
        self.ranges.iter().flat_map(Range::cidrs).collect()
    }

    /// Whether the pool is for a Service in `namespace` with `labels`
    /// (`serviceAllocation`'s namespaces and service selectors; MetalLB's
    /// `isPoolCompatibleWithService`).
    pub fn serves(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let Some(a) = &self.allocation else {
            return true;
        };
        if a.everything {
            return true;
        }
        if !a.namespaces.is_empty() && !a.namespaces.contains(namespace) {
            return false;
        }
        if !a.service_selectors.is_empty() {
            return a
                .service_selectors
                .iter()
                .any(|s| k8s::labels::selects(s, labels));
        }
        // Namespace selectors that matched no namespace leave the pool for no one.
        !a.namespaces.is_empty()
    }
}

fn check_duplicates(selectors: &[LabelSelector], what: &str) -> Result<(), String> {
    for (i, a) in selectors.iter().enumerate() {
        if selectors[i + 1..].contains(a) {
            return Err(format!("duplicate definition of {what} {a:?}"));
        }
    }
    Ok(())
}

/// Every pool, parsed and checked together: names unique, no CIDR overlapping
/// another's (in the same pool or another), as MetalLB's `poolsFor`.
pub fn parse_all<'a>(
    pools: impl IntoIterator<Item = &'a IPAddressPool>,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<BTreeMap<String, Pool>, InvalidPool> {
    let mut out = BTreeMap::new();
    let mut all: Vec<IpNet> = Vec::new();
    for p in pools {
        let pool = Pool::parse(p, namespaces)?;
        if out.contains_key(&pool.name) {
            return Err(InvalidPool(format!(
                "duplicate definition of pool {:?}",
                pool.name
            )));
        }
        for cidr in pool.cidrs() {
            if let Some(m) = all.iter().find(|m| overlap(&cidr, m)) {
                return Err(InvalidPool(format!(
                    "CIDR \"{cidr}\" in pool {:?} overlaps with already defined CIDR \"{m}\"",
                    pool.name
                )));
            }
            all.push(cidr);
        }
        out.insert(pool.name.clone(), pool);
    }
    Ok(out)
}

fn overlap(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{IPAddressPoolSpec, ServiceAllocation};

    fn pool(name: &str, addresses: &[&str]) -> IPAddressPool {
        IPAddressPool {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("metallb-system".into()),
                ..Default::default()
            },
            spec: IPAddressPoolSpec {
                addresses: addresses.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            },
            status: None,
        }
    }

    fn no_ns() -> BTreeMap<String, BTreeMap<String, String>> {
        BTreeMap::new()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_and_ranges_parse_in_both_families() {
        let r = parse_addresses("10.0.0.0/30").unwrap();
        assert_eq!(
            (r.first, r.last, r.len()),
            (ip("10.0.0.0"), ip("10.0.0.3"), 4)
        );
        // Host bits are ignored, as Go's net.ParseCIDR does.
        let r = parse_addresses("10.0.0.77/24").unwrap();
        assert_eq!((r.first, r.last), (ip("10.0.0.0"), ip("10.0.0.255")));
        let r = parse_addresses("198.18.0.200-198.18.0.250").unwrap();
        assert_eq!(r.len(), 51);
        let r = parse_addresses("2001:2::c8 - 2001:2::fa").unwrap();
        assert_eq!((r.first, r.len()), (ip("2001:2::c8"), 51));
        let r = parse_addresses("fd00::/64").unwrap();
        assert_eq!(r.len(), 1 << 64);
        let r = parse_addresses("10.0.0.5-10.0.0.5").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(parse_addresses("::/0").unwrap().len(), u128::MAX);
    }

    #[test]
    fn bad_addresses_get_metallbs_messages() {
        assert_eq!(
            parse_addresses("10.0.0.0/33").unwrap_err(),
            r#"invalid CIDR "10.0.0.0/33""#
        );
        assert_eq!(
            parse_addresses("10.0.0.1").unwrap_err(),
            r#"invalid CIDR "10.0.0.1""#
        );
        assert_eq!(
            parse_addresses("10.0.0.x-10.0.0.2").unwrap_err(),
            r#"invalid IP range "10.0.0.x-10.0.0.2": invalid start IP "10.0.0.x""#
        );
        assert_eq!(
            parse_addresses("10.0.0.1-nope").unwrap_err(),
            r#"invalid IP range "10.0.0.1-nope": invalid end IP "nope""#
        );
        assert_eq!(
            parse_addresses("10.0.0.9-10.0.0.2").unwrap_err(),
            r#"invalid IP range "10.0.0.9-10.0.0.2": start IP "10.0.0.9" is after the end IP "10.0.0.2""#
        );
        assert!(parse_addresses("10.0.0.1-::2").is_err());
        let err = Pool::parse(&pool("p", &["10.0.0.0/33"]), &no_ns()).unwrap_err();
        assert_eq!(
            err.0,
            r#"parsing address pool p: invalid CIDR "10.0.0.0/33" in pool "p": invalid CIDR "10.0.0.0/33""#
        );
        let err = Pool::parse(&pool("p", &[]), &no_ns()).unwrap_err();
        assert_eq!(
            err.0,
            "parsing address pool p: pool has no prefixes defined"
        );
    }

    #[test]
    fn ranges_summarize_into_cidrs() {
        let r = parse_addresses("10.0.0.1-10.0.0.6").unwrap();
        let got: Vec<String> = r.cidrs().iter().map(ToString::to_string).collect();
        assert_eq!(
            got,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
    }

    #[test]
    fn avoid_buggy_ips_skips_dot_zero_and_dot_255_and_counts_them_out() {
        let mut p = pool("p", &["10.0.0.0/23", "10.0.2.250-10.0.3.5", "fd00::/126"]);
        p.spec.avoid_buggy_ips = true;
        let p = Pool::parse(&p, &no_ns()).unwrap();
        // /23: 512 - 4; .250-.5 across a boundary: 12 - 2; IPv6 untouched.
        assert_eq!(
            p.capacity(),
            Capacity {
                v4: 508 + 10,
                v6: 4
            }
        );
        assert!(!p.contains(ip("10.0.0.0")));
        assert!(!p.contains(ip("10.0.1.255")));
        assert!(!p.contains(ip("10.0.1.0")));
        assert!(p.contains(ip("10.0.0.1")));
        let plain = Pool::parse(&pool("q", &["10.0.0.0/24"]), &no_ns()).unwrap();
        assert_eq!(plain.capacity().v4, 256);
        assert!(plain.contains(ip("10.0.0.0")));
        // A range that touches neither end of a /24 loses nothing.
        assert_eq!(
            parse_addresses("10.0.0.1-10.0.0.254").unwrap().usable(true),
            254
        );
        assert_eq!(parse_addresses("0.0.0.0-0.0.0.0").unwrap().usable(true), 0);
    }

    #[test]
    fn overlapping_pools_are_refused_with_metallbs_message() {
        let a = pool("a", &["10.0.0.0/24"]);
        let b = pool("b", &["10.0.0.128-10.0.0.130"]);
        let err = parse_all([&a, &b], &no_ns()).unwrap_err();
        assert_eq!(
            err.0,
            r#"CIDR "10.0.0.128/31" in pool "b" overlaps with already defined CIDR "10.0.0.0/24""#
        );
        // Within one pool too.
        let c = pool("c", &["10.1.0.0/24", "10.1.0.7/32"]);
        assert!(parse_all([&c], &no_ns()).is_err());
        // Adjacent is fine; so are the two families.
        let d = pool("d", &["10.0.1.0/24", "fd00::/120"]);
        assert_eq!(parse_all([&a, &d], &no_ns()).unwrap().len(), 2);
        let err = parse_all([&a, &a], &no_ns()).unwrap_err();
        assert_eq!(err.0, r#"duplicate definition of pool "a""#);
    }

    #[test]
    fn service_allocation_namespaces_and_selectors() {
        let sel = |k: &str, v: &str| LabelSelector {
            match_labels: Some([(k.to_string(), v.to_string())].into()),
            ..Default::default()
        };
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "team-a".to_string(),
            [("team".to_string(), "a".to_string())].into(),
        );
        namespaces.insert("other".to_string(), BTreeMap::new());
        let labels = |k: &str, v: &str| -> BTreeMap<String, String> {
            [(k.to_string(), v.to_string())].into()
        };

        let mut p = pool("p", &["10.0.0.0/24"]);
        p.spec.service_allocation = Some(ServiceAllocation {
            namespace_selectors: vec![sel("team", "a")],
            ..Default::default()
        });
        let parsed = Pool::parse(&p, &namespaces).unwrap();
        assert!(parsed.serves("team-a", &BTreeMap::new()));
        assert!(!parsed.serves("other", &BTreeMap::new()));

        p.spec.service_allocation = Some(ServiceAllocation {
            namespaces: vec!["other".into()],
            service_selectors: vec![sel("app", "web")],
            ..Default::default()
        });
        let parsed = Pool::parse(&p, &namespaces).unwrap();
        assert!(parsed.serves("other", &labels("app", "web")));
        assert!(!parsed.serves("other", &labels("app", "db")));
        assert!(!parsed.serves("team-a", &labels("app", "web")));

        // Only a priority: every Service.
        p.spec.service_allocation = Some(ServiceAllocation {
            priority: 5,
            ..Default::default()
        });
        let parsed = Pool::parse(&p, &namespaces).unwrap();
        assert!(parsed.serves("anything", &BTreeMap::new()));

        p.spec.service_allocation = Some(ServiceAllocation {
            namespaces: vec!["x".into(), "x".into()],
            ..Default::default()
        });
        assert_eq!(
            Pool::parse(&p, &namespaces).unwrap_err().0,
            "parsing address pool p: duplicate definition in namespaces field"
        );
    }
}
