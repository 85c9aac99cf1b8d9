//! Which node answers for each LoadBalancer address: a pure function of the
//! [`View`] and of which nodes are alive, so that every agent, computing from the same
//! objects and the same liveness, elects the same owner without talking to the others.
//!
//! An address is announced when its Service names its pool (the allocation
//! controller's annotation), that pool exists, and an L2Advertisement selects the pool
//! and the Service. The eligible nodes are those alive, Ready, not labelled
//! `node.kubernetes.io/exclude-from-external-load-balancers`, selected by one of those
//! advertisements' node selectors, and, for `externalTrafficPolicy: Local`, holding a
//! ready endpoint of the Service. Services sharing an address (`allow-shared-ip`) share
//! its owner: a node must be eligible for all of them. The owner is the first eligible
//! node ordered by a hash of (node, address), as MetalLB does, which spreads the
//! addresses over the nodes and moves only the addresses of a node that comes or goes.
//! The address hashed is the Service's first (of the first Service, by name, holding
//! the address), so that the IPv4 and IPv6 addresses of a dual-stack Service have one
//! owner, as with MetalLB.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use k8s::ObjectKey;

use crate::announce::{Service, View};
use crate::select::Selection;

/// The owner of one address, and what it announces it for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub owner: String,
    /// The Services (`namespace/name`) the address belongs to, in key order. A vector,
    /// not a set: one is kept per address, and a set's node holds room for 11.
    pub services: Vec<String>,
    /// The interfaces the advertisements name for the owner; empty: its underlay
    /// interface (the one holding its InternalIP).
    pub interfaces: BTreeSet<String>,
}

/// The owner of every announced address, given the nodes that are alive.
pub fn assign(view: &View, alive: &BTreeSet<String>) -> BTreeMap<IpAddr, Assignment> {
    by_address(view)
        .chunk_by(|a, b| a.0 == b.0)
        .filter_map(|held| Some((held[0].0, assign_one(view, alive, held)?)))
        .collect()
}

/// [`assign`] with memory, for an announcer that elects again at every change: an
/// address whose Services are the same objects as last time (the view shares
/// unchanged Services between snapshots) keeps its answer while the nodes, pools,
/// advertisements and liveness are unchanged too. One change among 1,000 addresses
/// then elects one address, not 1,000.
#[derive(Debug, Default)]
pub struct Elector {
    /// What every answer depends on besides the address's own Services.
    context: Option<Context>,
    /// The Services each address was elected from; holding them also keeps them
    /// shared, so the view can only replace them, never change them in place.
    inputs: BTreeMap<IpAddr, Vec<Arc<Service>>>,
    out: BTreeMap<IpAddr, Assignment>,
    /// Counts the addresses elected again (their Services changed, or everything
    /// changed) and those gone, so the caller can tell an election that changed nothing.
    changes: u64,
}

#[derive(Debug, PartialEq)]
struct Context {
    nodes: BTreeMap<ObjectKey, crate::announce::Node>,
    /// The pools as the election reads them (name and labels): their status changes
    /// with every address given out, and must not make every address elected again.
    pools: Vec<PoolIdentity>,
    advertisements: BTreeMap<ObjectKey, crate::crd::L2Advertisement>,
    alive: BTreeSet<String>,
}

type PoolIdentity = (Option<String>, Option<BTreeMap<String, String>>);

fn pool_identities(view: &View) -> Vec<PoolIdentity> {
    view.pools
        .values()
        .map(|p| (p.metadata.name.clone(), p.metadata.labels.clone()))
        .collect()
}

impl Elector {
    /// The same answer as [`assign`].
    pub fn assign(
        &mut self,
        view: &View,
        alive: &BTreeSet<String>,
    ) -> &BTreeMap<IpAddr, Assignment> {
        let pools = pool_identities(view);
        let same_context = self.context.as_ref().is_some_and(|c| {
            c.nodes == view.nodes
                && c.pools == pools
                && c.advertisements == view.l2_advertisements
                && c.alive == *alive
        });
        if !same_context {
            self.context = Some(Context {
                nodes: view.nodes.clone(),
                pools,
                advertisements: view.l2_advertisements.clone(),
                alive: alive.clone(),
            });
            self.inputs.clear();
            self.out.clear();
            self.changes += 1;
        }
        let held = by_address(view);
        // How many of the addresses elected before are still held: when all are, none
        // is to be dropped, and the maps are not walked for it (most changes add or
        // change one address).
        let elected_before = self.inputs.len();
        let mut still_held = 0;
        for services in held.chunk_by(|a, b| a.0 == b.0) {
            let ip = services[0].0;
            let before = self.inputs.get(&ip);
            still_held += usize::from(before.is_some());
            let unchanged = before.is_some_and(|before| {
                before.len() == services.len()
                    && before
                        .iter()
                        .zip(services)
                        .all(|(a, (_, b))| Arc::ptr_eq(a, b))
            });
            if unchanged {
                continue;
            }
            // Counted even when the answer is the same: the caller also reads the
            // Services themselves (a Service made again under its name has a new uid).
            self.changes += 1;
            match assign_one(view, alive, services) {
                Some(a) => self.out.insert(ip, a),
                None => self.out.remove(&ip),
            };
            self.inputs
                .insert(ip, services.iter().map(|(_, s)| Arc::clone(s)).collect());
        }
        if still_held < elected_before {
            let announced = |ip: &IpAddr| held.binary_search_by_key(ip, |h| h.0).is_ok();
            self.inputs.retain(|ip, _| announced(ip));
            let before = self.out.len();
            self.out.retain(|ip, _| announced(ip));
            if self.out.len() != before {
                self.changes += 1;
            }
        }
        &self.out
    }

    /// The answers of the last [`Elector::assign`].
    pub fn answers(&self) -> &BTreeMap<IpAddr, Assignment> {
        &self.out
    }

    /// How many times an address was elected again or dropped: equal before and after
    /// [`Elector::assign`] when that election had nothing new to look at.
    pub fn changes(&self) -> u64 {
        self.changes
    }
}

/// Every announced address with each Service holding it, by address and then in key
/// order: one allocation, not one per address (this runs at every change).
fn by_address(view: &View) -> Vec<(IpAddr, &Arc<Service>)> {
    let mut held: Vec<(IpAddr, &Arc<Service>)> = view
        .services
        .values()
        .flat_map(|svc| svc.ips.iter().map(move |ip| (*ip, svc)))
        .collect();
    // Stable: the Services of one address stay in key order.
    held.sort_by_key(|h| h.0);
    held
}

/// The owner of one address held by `services` (none if no node is eligible).
fn assign_one(
    view: &View,
    alive: &BTreeSet<String>,
    services: &[(IpAddr, &Arc<Service>)],
) -> Option<Assignment> {
    let mut eligible: Option<BTreeSet<&str>> = None;
    for (_, svc) in services {
        let nodes = eligible_nodes(view, svc, alive);
        eligible = Some(match eligible {
            None => nodes,
            Some(e) => e.intersection(&nodes).copied().collect(),
        });
    }
    // `services` is in key order; every Service holds the address, so has a first one.
    let key = services[0].1.ips[0];
    let owner = eligible
        .unwrap_or_default()
        .into_iter()
        .min_by_key(|n| (rank(n, &key), *n))?;
    let mut interfaces = BTreeSet::new();
    for (_, svc) in services {
        for ad in advertisements(view, svc) {
            let node = &view.nodes[owner];
            if Selection::from(&ad.spec).selects_node(&node.labels) {
                interfaces.extend(ad.spec.interfaces.iter().cloned());
            }
        }
    }
    Some(Assignment {
        owner: owner.to_owned(),
        services: services.iter().map(|(_, s)| s.key()).collect(),
        interfaces,
    })
}

/// The L2Advertisements that announce `svc`'s addresses.
fn advertisements<'a>(
    view: &'a View,
    svc: &'a Service,
) -> impl Iterator<Item = &'a crate::crd::L2Advertisement> + 'a {
    let pool = svc.pool.as_deref().and_then(|p| view.pool(p));
    view.l2_advertisements.values().filter(move |ad| {
        let sel = Selection::from(&ad.spec);
        pool.is_some_and(|p| sel.selects_pool(p))
            && (sel.service_selectors.is_empty()
                || sel
                    .service_selectors
                    .iter()
                    .any(|s| k8s::labels::selects(s, &svc.labels)))
    })
}

fn eligible_nodes<'a>(
    view: &'a View,
    svc: &Service,
    alive: &BTreeSet<String>,
) -> BTreeSet<&'a str> {
    let ads: Vec<_> = advertisements(view, svc).collect();
    view.nodes
        .values()
        .filter(|n| alive.contains(&n.name) && n.ready && !n.excluded())
        .filter(|n| !svc.local || svc.has_endpoint_on(&n.name))
        .filter(|n| {
            ads.iter()
                .any(|ad| Selection::from(&ad.spec).selects_node(&n.labels))
        })
        .map(|n| n.name.as_str())
        .collect()
}

/// The order nodes are preferred in for `ip`: FNV-1a (64 bits) of `node#ip`, then
/// MurmurHash3's 64-bit finalizer (FNV alone barely mixes the last bytes into the high
/// ones, and names differing in their last character would always sort alike). Any
/// stable hash does; this one is fixed here so that agents of different versions
/// agree.
fn rank(node: &str, ip: &IpAddr) -> u64 {
    use std::fmt::Write as _;
    // The text is hashed as it is written: every address of every change is ranked
    // for every node, and a String each showed in the agent's profile.
    struct Fnv(u64);
    impl std::fmt::Write for Fnv {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            for b in s.bytes() {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
            Ok(())
        }
    }
    let mut fnv = Fnv(0xcbf2_9ce4_8422_2325);
    let _ = write!(fnv, "{node}#{ip}");
    let mut h = fnv.0;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;
    use crate::announce::Node;
    use crate::crd::{IPAddressPool, L2Advertisement, L2AdvertisementSpec};

    fn node(name: &str, zone: &str) -> Node {
        Node {
            name: name.into(),
            labels: [("zone".to_owned(), zone.to_owned())].into(),
            ready: true,
            internal_ips: vec![],
        }
    }

    fn service(name: &str, ips: &[&str]) -> Service {
        Service {
            namespace: "default".into(),
            name: name.into(),
            ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            pool: Some("pool".into()),
            ..Default::default()
        }
    }

    fn view(services: Vec<Service>, ads: Vec<L2AdvertisementSpec>) -> View {
        let mut v = View {
            synced: true,
            ..Default::default()
        };
        for (i, z) in ["a", "a", "b", "b"].iter().enumerate() {
            let n = node(&format!("node-{i}"), z);
            v.nodes.insert(n.name.clone().into(), n);
        }
        for s in services {
            v.services.insert(s.key().into(), std::sync::Arc::new(s));
        }
        let pool = IPAddressPool {
            metadata: ObjectMeta {
                name: Some("pool".into()),
                namespace: Some("metallb-system".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        v.pools.insert("metallb-system/pool".into(), pool);
        for (i, spec) in ads.into_iter().enumerate() {
            let ad = L2Advertisement {
                metadata: ObjectMeta::default(),
                spec,
            };
            v.l2_advertisements
                .insert(format!("metallb-system/l2-{i}").into(), ad);
        }
        v
    }

    fn all(v: &View) -> BTreeSet<String> {
        v.nodes.keys().map(|k| k.to_string()).collect()
    }

    fn owner(v: &View, alive: &BTreeSet<String>, ip: &str) -> Option<String> {
        assign(v, alive)
            .get(&ip.parse::<IpAddr>().unwrap())
            .map(|a| a.owner.clone())
    }

    #[test]
    fn rank_is_fixed_across_versions() {
        // Agents of different versions must elect the same owner: these values are
        // FNV-1a of "node#ip" with MurmurHash3's finalizer, computed independently.
        assert_eq!(
            rank("node-1", &"10.0.0.1".parse().unwrap()),
            0x6841_af92_0f7e_1009
        );
        assert_eq!(
            rank("kw-node-2", &"2001:db8::c8".parse().unwrap()),
            0xe411_690c_8dd6_af86
        );
    }

    #[test]
    fn one_owner_per_address_spread_over_the_nodes() {
        let ips: Vec<String> = (200..250).map(|i| format!("198.18.0.{i}")).collect();
        let services = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| service(&format!("s{i}"), &[ip]))
            .collect();
        let v = view(services, vec![L2AdvertisementSpec::default()]);
        let a = assign(&v, &all(&v));
        assert_eq!(a.len(), 50);
        let owners: BTreeSet<_> = a.values().map(|a| a.owner.as_str()).collect();
        assert_eq!(owners.len(), 4, "every node owns some: {a:?}");
        assert_eq!(a, assign(&v, &all(&v)), "deterministic");
    }

    #[test]
    fn only_the_dead_nodes_addresses_move() {
        let services = (200..240)
            .map(|i| service(&format!("s{i}"), &[&format!("198.18.0.{i}")]))
            .collect();
        let v = view(services, vec![L2AdvertisementSpec::default()]);
        let before = assign(&v, &all(&v));
        let mut alive = all(&v);
        alive.remove("node-1");
        let after = assign(&v, &alive);
        for (ip, a) in &before {
            if a.owner == "node-1" {
                assert_ne!(after[ip].owner, "node-1");
            } else {
                assert_eq!(after[ip].owner, a.owner, "{ip} stays");
            }
        }
        // Back: everything as before (no split brain: the same single owner).
        assert_eq!(assign(&v, &all(&v)), before);
    }

    #[test]
    fn the_elector_answers_as_assign_does_through_changes() {
        use std::sync::Arc;
        let services = (0..20)
            .map(|i| service(&format!("s{i}"), &[&format!("198.18.0.{}", 100 + i)]))
            .collect();
        let mut v = view(services, vec![L2AdvertisementSpec::default()]);
        let mut e = Elector::default();
        let mut alive = all(&v);
        let check = |e: &mut Elector, v: &View, alive: &BTreeSet<String>| {
            assert_eq!(*e.assign(v, alive), assign(v, alive));
        };
        check(&mut e, &v, &alive);
        let first = e.changes();
        check(&mut e, &v, &alive);
        assert_eq!(
            e.changes(),
            first,
            "nothing changed, so nothing was elected again"
        );
        // Changed through the view as the announcers' store does it: the elector holds
        // the old object, so the view gets a new one.
        let s3 = Arc::make_mut(v.services.get_mut("default/s3").unwrap());
        s3.local = true;
        s3.endpoint_nodes = BTreeSet::from(["node-2".to_owned()]);
        check(&mut e, &v, &alive);
        assert_ne!(e.changes(), first, "s3 changed");
        assert_eq!(
            e.assign(&v, &alive)[&"198.18.0.103".parse::<IpAddr>().unwrap()].owner,
            "node-2"
        );
        Arc::make_mut(v.services.get_mut("default/s3").unwrap())
            .endpoint_nodes
            .clear();
        check(&mut e, &v, &alive);
        assert!(
            !e.assign(&v, &alive)
                .contains_key(&"198.18.0.103".parse::<IpAddr>().unwrap())
        );
        // Added, removed, and an address shared by two Services.
        let new = service("new", &["198.18.0.150"]);
        v.services.insert(new.key().into(), Arc::new(new));
        v.services.remove("default/s0");
        let twin = service("twin", &["198.18.0.105"]);
        v.services.insert(twin.key().into(), Arc::new(twin));
        check(&mut e, &v, &alive);
        // Only removed: the address goes, and that counts as a change.
        let before = e.changes();
        v.services.remove("default/s1");
        check(&mut e, &v, &alive);
        assert!(e.changes() > before, "s1's address went");
        assert!(
            !e.answers()
                .contains_key(&"198.18.0.101".parse::<IpAddr>().unwrap())
        );
        // A node dies, another stops being ready, the advertisement narrows.
        alive.remove("node-1");
        check(&mut e, &v, &alive);
        v.nodes.get_mut("node-0").unwrap().ready = false;
        check(&mut e, &v, &alive);
        v.l2_advertisements
            .values_mut()
            .for_each(|ad| ad.spec.interfaces = vec!["eth9".into()]);
        check(&mut e, &v, &alive);
        // The pool's labels are read (by pool selectors); its status is not.
        let pool = v.pools.get_mut("metallb-system/pool").unwrap();
        pool.status = Some(crate::crd::IPAddressPoolStatus {
            assigned_ipv4: 21,
            ..Default::default()
        });
        let before = e.changes();
        check(&mut e, &v, &alive);
        assert_eq!(e.changes(), before, "a pool's status elects nothing again");
        v.l2_advertisements.values_mut().for_each(|ad| {
            ad.spec.ip_address_pools.clear();
            ad.spec.ip_address_pool_selectors = vec![LabelSelector {
                match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
                ..Default::default()
            }];
        });
        check(&mut e, &v, &alive);
        assert!(e.assign(&v, &alive).is_empty());
        v.pools
            .get_mut("metallb-system/pool")
            .unwrap()
            .metadata
            .labels = Some([("tier".to_owned(), "web".to_owned())].into());
        check(&mut e, &v, &alive);
        assert!(!e.assign(&v, &alive).is_empty());
    }

    #[test]
    fn node_selectors_not_ready_and_excluded_nodes() {
        let zone_b = L2AdvertisementSpec {
            node_selectors: vec![LabelSelector {
                match_labels: Some([("zone".to_owned(), "b".to_owned())].into()),
                ..Default::default()
            }],
            interfaces: vec!["eth1".into()],
            ..Default::default()
        };
        let mut v = view(vec![service("web", &["198.18.0.200"])], vec![zone_b]);
        let o = owner(&v, &all(&v), "198.18.0.200").unwrap();
        assert!(o == "node-2" || o == "node-3");
        let a = &assign(&v, &all(&v))[&"198.18.0.200".parse::<IpAddr>().unwrap()];
        assert_eq!(a.interfaces, BTreeSet::from(["eth1".to_owned()]));
        v.nodes.get_mut("node-2").unwrap().ready = false;
        v.nodes
            .get_mut("node-3")
            .unwrap()
            .labels
            .insert(crate::announce::EXCLUDE_LABEL.into(), String::new());
        assert_eq!(owner(&v, &all(&v), "198.18.0.200"), None);
    }

    #[test]
    fn both_families_of_a_dual_stack_service_have_one_owner() {
        let services = (0..20)
            .map(|i| {
                service(
                    &format!("s{i}"),
                    &[
                        &format!("198.18.0.{}", 200 + i),
                        &format!("2001:2::{:x}", 200 + i),
                    ],
                )
            })
            .collect();
        let v = view(services, vec![L2AdvertisementSpec::default()]);
        let a = assign(&v, &all(&v));
        for i in 0..20 {
            let v4 = &a[&format!("198.18.0.{}", 200 + i).parse::<IpAddr>().unwrap()];
            let v6 = &a[&format!("2001:2::{:x}", 200 + i).parse::<IpAddr>().unwrap()];
            assert_eq!(v4.owner, v6.owner);
        }
    }

    #[test]
    fn local_policy_elects_among_nodes_with_endpoints() {
        let mut web = service("web", &["198.18.0.200", "2001:2::c8"]);
        web.local = true;
        web.endpoint_nodes = ["node-3".to_owned()].into();
        let mut v = view(vec![web], vec![L2AdvertisementSpec::default()]);
        assert_eq!(
            owner(&v, &all(&v), "198.18.0.200").as_deref(),
            Some("node-3")
        );
        assert_eq!(owner(&v, &all(&v), "2001:2::c8").as_deref(), Some("node-3"));
        std::sync::Arc::make_mut(v.services.get_mut("default/web").unwrap())
            .endpoint_nodes
            .clear();
        assert!(
            assign(&v, &all(&v)).is_empty(),
            "no endpoint, no announcement"
        );
    }

    #[test]
    fn unannounced_without_pool_advertisement_or_selected_service() {
        let mut no_pool = service("a", &["198.18.0.200"]);
        no_pool.pool = None;
        let mut other_pool = service("b", &["198.18.0.201"]);
        other_pool.pool = Some("gone".into());
        let v = view(
            vec![no_pool, other_pool],
            vec![L2AdvertisementSpec::default()],
        );
        assert!(assign(&v, &all(&v)).is_empty());
        let v = view(vec![service("c", &["198.18.0.202"])], vec![]);
        assert!(assign(&v, &all(&v)).is_empty(), "no L2Advertisement");
        let only_tier = L2AdvertisementSpec {
            service_selectors: vec![LabelSelector {
                match_labels: Some([("tier".to_owned(), "web".to_owned())].into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = view(vec![service("d", &["198.18.0.203"])], vec![only_tier]);
        assert!(assign(&v, &all(&v)).is_empty(), "service not selected");
    }

    #[test]
    fn shared_addresses_have_one_owner_eligible_for_all() {
        let a = service("a", &["198.18.0.200"]);
        let mut b = service("b", &["198.18.0.200"]);
        b.local = true;
        b.endpoint_nodes = ["node-0".to_owned()].into();
        let v = view(vec![a, b], vec![L2AdvertisementSpec::default()]);
        let got = assign(&v, &all(&v));
        let one = &got[&"198.18.0.200".parse::<IpAddr>().unwrap()];
        assert_eq!(one.owner, "node-0");
        assert_eq!(one.services, ["default/a", "default/b"]);
    }
}
