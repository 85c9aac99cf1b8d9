//! What this node announces to which peer: a pure function of the announce store's
//! [`View`], where the unit tests live.
//!
//! MetalLB's rules: a node peers with every BGPPeer whose nodeSelectors select it; a
//! Service's addresses go to a peer when a BGPAdvertisement selects the Service's pool,
//! the Service, this node and the peer (`peers` empty: all). Every selected node
//! announces (the router spreads traffic over them, ECMP), except that for
//! `externalTrafficPolicy: Local` only nodes with a ready endpoint of the Service do.
//! The prefix is the address (/32, /128) or its aggregate (`aggregationLength`,
//! `aggregationLengthV6`); several advertisements of one prefix to one peer merge their
//! communities and take the highest LOCAL_PREF (sent on iBGP sessions only).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use k8s::labels::selects;

use super::codec::{Family, LargeCommunity};
use super::fsm::PeerAsn;
use crate::announce::{Service, View};
use crate::crd::{BGPAdvertisementSpec, BGPPeer};
use crate::select::Selection;

/// MetalLB's defaults.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(90);
pub const DEFAULT_PORT: u16 = 179;

/// The attributes a route carries besides its prefix and next hop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAttrs {
    /// Sent on iBGP sessions only.
    pub local_pref: Option<u32>,
    pub communities: BTreeSet<u32>,
    pub large_communities: BTreeSet<LargeCommunity>,
}

/// The routes for one peer.
pub type Routes = BTreeMap<IpNet, RouteAttrs>;

/// How to reach a peer and what to agree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub address: SocketAddr,
    pub source: Option<IpAddr>,
    pub local_asn: u32,
    pub peer_asn: PeerAsn,
    pub router_id: Ipv4Addr,
    pub hold_time: Duration,
    pub keepalive: Option<Duration>,
    /// The longest back-off between connection attempts (`connectTime`).
    pub connect_time: Duration,
    /// TTL 255 instead of 1 on eBGP sessions (iBGP always uses 255).
    pub ebgp_multihop: bool,
    /// The families offered and announced: the peer address's, or both with
    /// `dualStackAddressFamily`.
    pub families: Vec<Family>,
    /// This node's own addresses, next hops for a family the session's local address
    /// is not of.
    pub node_ips: Vec<IpAddr>,
    /// BFD with the peer (`bfdProfile`): its timers.
    pub bfd: Option<super::bfd::Timers>,
}

/// One peer of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub session: Session,
    pub routes: Routes,
}

/// The whole plan for this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// By BGPPeer name.
    pub peers: BTreeMap<String, Peer>,
    /// Service key (`namespace/name`) → the peers its addresses go to from this node.
    pub services: BTreeMap<String, BTreeSet<String>>,
    /// Configuration that cannot be used, by object: (`kind namespace/name`, message).
    pub problems: Vec<(String, String)>,
}

/// A community written as MetalLB takes it: `AA:NN`, `large:AA:BB:CC`, or a Community
/// alias resolved by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParsedCommunity {
    Standard(u32),
    Large(LargeCommunity),
}

/// Parses `AA:NN` or `large:AA:BB:CC`.
pub fn parse_community(s: &str) -> Result<ParsedCommunity, String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [a, n] => {
            let a: u16 = a
                .parse()
                .map_err(|_| format!("{s:?}: {a:?} is not a 16-bit number"))?;
            let n: u16 = n
                .parse()
                .map_err(|_| format!("{s:?}: {n:?} is not a 16-bit number"))?;
            Ok(ParsedCommunity::Standard(
                (u32::from(a) << 16) | u32::from(n),
            ))
        }
        ["large", a, b, c] => {
            let p = |x: &str| {
                x.parse::<u32>()
                    .map_err(|_| format!("{s:?}: {x:?} is not a 32-bit number"))
            };
            Ok(ParsedCommunity::Large([p(a)?, p(b)?, p(c)?]))
        }
        _ => Err(format!(
            "{s:?} is neither AA:NN, large:AA:BB:CC nor a Community alias"
        )),
    }
}

fn object(kind: &str, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{kind} {}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The session settings of a peer for `node`, or why it cannot be used.
fn session(peer: &BGPPeer, node_ips: &[IpAddr], view: &View) -> Result<Session, String> {
    let s = &peer.spec;
    let ip: IpAddr = s.peer_address.parse().map_err(|_| {
        format!(
            "spec.peerAddress: {:?} is not an IP address",
            s.peer_address
        )
    })?;
    if !s.password.is_empty() || s.password_secret.is_some() {
        // TCP MD5 (RFC 2385) is set per socket with setsockopt(TCP_MD5SIG), whose
        // argument struct no safe Rust API writes; the workspace forbids unsafe code.
        return Err(
            "spec.password: TCP MD5 signatures are not supported by this speaker \
                    (no safe interface to TCP_MD5SIG); the peer is not dialled"
                .into(),
        );
    }
    if !s.vrf_name.is_empty() {
        return Err(format!(
            "spec.vrf: {:?}: VRFs are not supported",
            s.vrf_name
        ));
    }
    if !s.interface.is_empty() {
        return Err("spec.interface: unnumbered BGP is not supported; set spec.peerAddress".into());
    }
    let local_asn = s.my_asn;
    if local_asn == 0 {
        return Err("spec.myASN: must be set".into());
    }
    let peer_asn = match (s.peer_asn, s.dynamic_asn.as_deref()) {
        (0, Some("internal")) => PeerAsn::Internal,
        (0, Some("external")) => PeerAsn::External,
        (0, Some(other)) => {
            return Err(format!(
                "spec.dynamicASN: {other:?} (must be internal or external)"
            ));
        }
        (0, None) => return Err("spec.peerASN or spec.dynamicASN: one must be set".into()),
        (a, None) => PeerAsn::Fixed(a),
        (_, Some(_)) => {
            return Err("spec.peerASN and spec.dynamicASN: only one may be set".into());
        }
    };
    let duration = |field: &str, v: &Option<String>| -> Result<Option<Duration>, String> {
        v.as_deref()
            .map(|d| k8s::parse_duration(d).map_err(|e| format!("spec.{field}: {e}")))
            .transpose()
    };
    let hold_time = duration("holdTime", &s.hold_time)?.unwrap_or(DEFAULT_HOLD);
    if !hold_time.is_zero() && hold_time < Duration::from_secs(3) {
        return Err(format!(
            "spec.holdTime: {hold_time:?} (must be 0 or at least 3s)"
        ));
    }
    let keepalive = duration("keepaliveTime", &s.keepalive_time)?;
    if let Some(k) = keepalive
        && !hold_time.is_zero()
        && k > hold_time
    {
        return Err(format!(
            "spec.keepaliveTime: {k:?} is longer than the hold time {hold_time:?}"
        ));
    }
    let connect_time = duration("connectTime", &s.connect_time)?.unwrap_or(Duration::from_secs(10));
    let router_id = if s.router_id.is_empty() {
        node_ips
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .ok_or("spec.routerID: must be set on a node without an IPv4 address")?
    } else {
        s.router_id
            .parse()
            .map_err(|_| format!("spec.routerID: {:?} is not an IPv4 address", s.router_id))?
    };
    let source = if s.source_address.is_empty() {
        None
    } else {
        Some(s.source_address.parse().map_err(|_| {
            format!(
                "spec.sourceAddress: {:?} is not an IP address",
                s.source_address
            )
        })?)
    };
    let bfd = if s.bfd_profile.is_empty() {
        None
    } else {
        let p = view
            .bfd_profiles
            .values()
            .find(|p| p.metadata.name.as_deref() == Some(s.bfd_profile.as_str()))
            .ok_or_else(|| format!("spec.bfdProfile: no BFDProfile named {:?}", s.bfd_profile))?;
        let d = super::bfd::Timers::default();
        let ms = |v: Option<u32>, d: Duration| v.map_or(d, |v| Duration::from_millis(v.into()));
        Some(super::bfd::Timers {
            transmit: ms(p.spec.transmit_interval, d.transmit),
            receive: ms(p.spec.receive_interval, d.receive),
            multiplier: p
                .spec
                .detect_multiplier
                .map_or(d.multiplier, |m| u8::try_from(m).unwrap_or(u8::MAX)),
            passive: p.spec.passive_mode.unwrap_or(false),
        })
    };
    let families = if s.dual_stack_address_family {
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
    } else if ip.is_ipv4() {
        vec![Family::Ipv4Unicast]
    } else {
        vec![Family::Ipv6Unicast]
    };
    Ok(Session {
        address: SocketAddr::new(ip, s.peer_port.unwrap_or(DEFAULT_PORT)),
        source,
        local_asn,
        peer_asn,
        router_id,
        hold_time,
        keepalive,
        connect_time,
        ebgp_multihop: s.ebgp_multi_hop,
        families,
        node_ips: node_ips.to_vec(),
        bfd,
    })
}

/// The prefix an address is announced as.
fn prefix(ip: IpAddr, ad: &BGPAdvertisementSpec) -> Result<IpNet, String> {
    Ok(match ip {
        IpAddr::V4(a) => {
            let len = ad.aggregation_length.unwrap_or(32);
            let len = u8::try_from(len)
                .ok()
                .filter(|l| *l <= 32)
                .ok_or(format!("spec.aggregationLength: {len} (must be 0 to 32)"))?;
            IpNet::V4(Ipv4Net::new(a, len).map_err(|e| e.to_string())?.trunc())
        }
        IpAddr::V6(a) => {
            let len = ad.aggregation_length_v6.unwrap_or(128);
            let len = u8::try_from(len).ok().filter(|l| *l <= 128).ok_or(format!(
                "spec.aggregationLengthV6: {len} (must be 0 to 128)"
            ))?;
            IpNet::V6(Ipv6Net::new(a, len).map_err(|e| e.to_string())?.trunc())
        }
    })
}

/// Whether `node` may announce `svc` at all.
fn eligible(svc: &Service, node: &str) -> bool {
    !svc.local || svc.has_endpoint_on(node)
}

/// The plan for `node`.
pub fn plan(view: &View, node: &str) -> Plan {
    let mut out = Plan::default();
    let Some(this) = view.nodes.get(node) else {
        return out;
    };
    if this.excluded() {
        return out;
    }
    // Peers that select this node.
    for peer in view.bgp_peers.values() {
        let name = peer.metadata.name.clone().unwrap_or_default();
        let s = &peer.spec;
        if !(s.node_selectors.is_empty()
            || s.node_selectors
                .iter()
                .any(|sel| selects(sel, &this.labels)))
        {
            continue;
        }
        match session(peer, &this.internal_ips, view) {
            Ok(session) => {
                out.peers.insert(
                    name,
                    Peer {
                        session,
                        routes: Routes::new(),
                    },
                );
            }
            Err(e) => out.problems.push((object("BGPPeer", &peer.metadata), e)),
        }
    }
    // Community aliases.
    let aliases: BTreeMap<&str, &str> = view
        .communities
        .values()
        .flat_map(|c| c.spec.communities.iter())
        .map(|a| (a.name.as_str(), a.value.as_str()))
        .collect();
    // Each advertisement, its attributes once.
    let mut ads = Vec::new();
    for ad in view.bgp_advertisements.values() {
        let mut attrs = RouteAttrs {
            local_pref: (ad.spec.local_pref != 0).then_some(ad.spec.local_pref),
            ..Default::default()
        };
        let mut bad = None;
        for c in &ad.spec.communities {
            let value = aliases.get(c.as_str()).copied().unwrap_or(c);
            match parse_community(value) {
                Ok(ParsedCommunity::Standard(v)) => {
                    attrs.communities.insert(v);
                }
                Ok(ParsedCommunity::Large(v)) => {
                    attrs.large_communities.insert(v);
                }
                Err(e) => bad = Some(format!("spec.communities: {e}")),
            }
        }
        if let Some(e) = bad {
            out.problems
                .push((object("BGPAdvertisement", &ad.metadata), e));
            continue;
        }
        if !Selection::from(&ad.spec).selects_node(&this.labels) {
            continue;
        }
        ads.push((ad, attrs));
    }
    for svc in view.services.values() {
        let Some(pool_name) = &svc.pool else { continue };
        let Some(pool) = view.pool(pool_name) else {
            continue;
        };
        if svc.ips.is_empty() || !eligible(svc, node) {
            continue;
        }
        for (ad, attrs) in &ads {
            let sel = Selection::from(&ad.spec);
            if !sel.selects_pool(pool)
                || !(sel.service_selectors.is_empty()
                    || sel
                        .service_selectors
                        .iter()
                        .any(|s| selects(s, &svc.labels)))
            {
                continue;
            }
            for ip in &svc.ips {
                let net = match prefix(*ip, &ad.spec) {
                    Ok(n) => n,
                    Err(e) => {
                        out.problems
                            .push((object("BGPAdvertisement", &ad.metadata), e));
                        continue;
                    }
                };
                for (peer_name, peer) in &mut out.peers {
                    if !(ad.spec.peers.is_empty() || ad.spec.peers.contains(peer_name))
                        || !peer.session.families.contains(&Family::of(&net))
                    {
                        continue;
                    }
                    let r = peer.routes.entry(net).or_default();
                    r.local_pref = r.local_pref.max(attrs.local_pref);
                    r.communities.extend(&attrs.communities);
                    r.large_communities.extend(&attrs.large_communities);
                    out.services
                        .entry(svc.key())
                        .or_default()
                        .insert(peer_name.clone());
                }
            }
        }
    }
    out.problems.sort();
    out.problems.dedup();
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

    use super::*;
    use crate::announce::Node;
    use crate::crd::{
        BGPAdvertisement, BGPPeerSpec, Community, CommunityAlias, CommunitySpec, IPAddressPool,
    };

    fn meta(name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("metallb-system".into()),
            ..Default::default()
        }
    }

    fn zone(z: &str) -> LabelSelector {
        LabelSelector {
            match_labels: Some([("zone".to_string(), z.to_string())].into()),
            ..Default::default()
        }
    }

    fn view() -> View {
        let mut v = View {
            synced: true,
            ..Default::default()
        };
        for (name, ip, z) in [
            ("node-1", "198.18.0.11", "a"),
            ("node-2", "198.18.0.12", "b"),
        ] {
            v.nodes.insert(
                name.into(),
                Node {
                    name: name.into(),
                    labels: [("zone".to_string(), z.to_string())].into(),
                    ready: true,
                    internal_ips: vec![ip.parse().unwrap(), "2001:2::11".parse().unwrap()],
                },
            );
        }
        v.pools.insert(
            "metallb-system/default".into(),
            IPAddressPool {
                metadata: meta("default"),
                ..Default::default()
            },
        );
        v.bgp_peers.insert(
            "metallb-system/router".into(),
            BGPPeer {
                metadata: meta("router"),
                spec: BGPPeerSpec {
                    my_asn: 64512,
                    peer_asn: 64513,
                    peer_address: "198.18.0.254".into(),
                    hold_time: Some("9s".into()),
                    ..Default::default()
                },
            },
        );
        v.bgp_advertisements.insert(
            "metallb-system/all".into(),
            BGPAdvertisement {
                metadata: meta("all"),
                spec: BGPAdvertisementSpec::default(),
            },
        );
        v.services.insert(
            "default/web".into(),
            std::sync::Arc::new(Service {
                namespace: "default".into(),
                name: "web".into(),
                ips: vec![
                    "198.18.0.200".parse().unwrap(),
                    "2001:2::c8".parse().unwrap(),
                ],
                pool: Some("default".into()),
                ..Default::default()
            }),
        );
        v
    }

    fn nets(p: &Plan, peer: &str) -> Vec<String> {
        p.peers[peer].routes.keys().map(|n| n.to_string()).collect()
    }

    #[test]
    fn every_node_announces_the_32_to_its_peer() {
        let v = view();
        for node in ["node-1", "node-2"] {
            let p = plan(&v, node);
            assert_eq!(nets(&p, "router"), ["198.18.0.200/32"], "{node}");
            let s = &p.peers["router"].session;
            assert_eq!(s.address, "198.18.0.254:179".parse().unwrap());
            assert_eq!(s.hold_time, Duration::from_secs(9));
            assert_eq!(s.peer_asn, PeerAsn::Fixed(64513));
            assert_eq!(
                p.services["default/web"],
                BTreeSet::from(["router".to_string()])
            );
            assert!(p.problems.is_empty(), "{:?}", p.problems);
        }
        assert_eq!(
            plan(&v, "node-1").peers["router"].session.router_id,
            Ipv4Addr::new(198, 18, 0, 11)
        );
    }

    #[test]
    fn dual_stack_peers_get_the_128_and_aggregation_applies() {
        let mut v = view();
        v.bgp_peers
            .get_mut("metallb-system/router")
            .unwrap()
            .spec
            .dual_stack_address_family = true;
        let ad = &mut v
            .bgp_advertisements
            .get_mut("metallb-system/all")
            .unwrap()
            .spec;
        ad.aggregation_length = Some(24);
        let p = plan(&v, "node-1");
        assert_eq!(nets(&p, "router"), ["198.18.0.0/24", "2001:2::c8/128"]);
    }

    #[test]
    fn communities_aliases_large_and_local_pref_merge() {
        let mut v = view();
        v.communities.insert(
            "metallb-system/c".into(),
            Community {
                metadata: meta("c"),
                spec: CommunitySpec {
                    communities: vec![CommunityAlias {
                        name: "no-export".into(),
                        value: "65535:65281".into(),
                    }],
                },
            },
        );
        v.bgp_advertisements.insert(
            "metallb-system/tagged".into(),
            BGPAdvertisement {
                metadata: meta("tagged"),
                spec: BGPAdvertisementSpec {
                    communities: vec![
                        "64512:100".into(),
                        "no-export".into(),
                        "large:64512:1:2".into(),
                    ],
                    local_pref: 150,
                    ..Default::default()
                },
            },
        );
        let p = plan(&v, "node-1");
        let r = &p.peers["router"].routes[&"198.18.0.200/32".parse().unwrap()];
        assert_eq!(r.local_pref, Some(150));
        assert_eq!(
            r.communities,
            BTreeSet::from([(64512 << 16) | 100, (65535 << 16) | 65281])
        );
        assert_eq!(r.large_communities, BTreeSet::from([[64512, 1, 2]]));
    }

    #[test]
    fn a_bad_community_is_a_problem_of_its_advertisement() {
        let mut v = view();
        v.bgp_advertisements
            .get_mut("metallb-system/all")
            .unwrap()
            .spec
            .communities = vec!["70000:1".into()];
        let p = plan(&v, "node-1");
        assert!(p.peers["router"].routes.is_empty());
        assert_eq!(p.problems.len(), 1);
        assert!(
            p.problems[0]
                .0
                .contains("BGPAdvertisement metallb-system/all")
        );
        assert!(p.problems[0].1.contains("\"70000\""), "{:?}", p.problems);
    }

    #[test]
    fn etp_local_announces_only_from_nodes_with_endpoints() {
        let mut v = view();
        let svc = std::sync::Arc::make_mut(v.services.get_mut("default/web").unwrap());
        svc.local = true;
        svc.endpoint_nodes = BTreeSet::from(["node-2".to_string()]);
        assert!(plan(&v, "node-1").peers["router"].routes.is_empty());
        assert!(!plan(&v, "node-1").services.contains_key("default/web"));
        assert_eq!(nets(&plan(&v, "node-2"), "router"), ["198.18.0.200/32"]);
        // Endpoints gone: withdrawn everywhere.
        std::sync::Arc::make_mut(v.services.get_mut("default/web").unwrap())
            .endpoint_nodes
            .clear();
        assert!(plan(&v, "node-2").peers["router"].routes.is_empty());
    }

    #[test]
    fn selectors_of_peers_advertisements_and_services() {
        let mut v = view();
        v.bgp_peers
            .get_mut("metallb-system/router")
            .unwrap()
            .spec
            .node_selectors = vec![zone("a")];
        assert!(plan(&v, "node-2").peers.is_empty());
        assert_eq!(plan(&v, "node-1").peers.len(), 1);

        fn ad(v: &mut View) -> &mut BGPAdvertisementSpec {
            &mut v
                .bgp_advertisements
                .get_mut("metallb-system/all")
                .unwrap()
                .spec
        }
        ad(&mut v).peers = vec!["other".into()];
        assert!(plan(&v, "node-1").peers["router"].routes.is_empty());
        ad(&mut v).peers = vec!["router".into()];
        ad(&mut v).ip_address_pools = vec!["gold".into()];
        assert!(plan(&v, "node-1").peers["router"].routes.is_empty());
        ad(&mut v).ip_address_pools.clear();
        ad(&mut v).service_selectors = vec![zone("a")];
        assert!(plan(&v, "node-1").peers["router"].routes.is_empty());
        std::sync::Arc::make_mut(v.services.get_mut("default/web").unwrap()).labels =
            [("zone".to_string(), "a".to_string())].into();
        assert_eq!(plan(&v, "node-1").peers["router"].routes.len(), 1);
    }

    #[test]
    fn services_without_a_pool_or_address_and_excluded_nodes_announce_nothing() {
        let mut v = view();
        std::sync::Arc::make_mut(v.services.get_mut("default/web").unwrap()).pool = None;
        assert!(plan(&v, "node-1").peers["router"].routes.is_empty());
        let mut v = view();
        v.nodes
            .get_mut("node-1")
            .unwrap()
            .labels
            .insert(crate::announce::EXCLUDE_LABEL.into(), String::new());
        assert!(plan(&v, "node-1").peers.is_empty());
        assert!(plan(&v, "node-9").peers.is_empty());
    }

    #[test]
    fn unusable_peers_are_problems_with_the_field() {
        let mut v = view();
        let spec = &mut v.bgp_peers.get_mut("metallb-system/router").unwrap().spec;
        spec.password = "secret".into();
        let p = plan(&v, "node-1");
        assert!(p.peers.is_empty());
        assert!(
            p.problems[0].1.starts_with("spec.password"),
            "{:?}",
            p.problems
        );

        let spec = &mut v.bgp_peers.get_mut("metallb-system/router").unwrap().spec;
        spec.password.clear();
        spec.peer_asn = 0;
        spec.dynamic_asn = Some("external".into());
        spec.hold_time = Some("2s".into());
        let p = plan(&v, "node-1");
        assert!(
            p.problems[0].1.starts_with("spec.holdTime"),
            "{:?}",
            p.problems
        );
        let spec = &mut v.bgp_peers.get_mut("metallb-system/router").unwrap().spec;
        spec.hold_time = None;
        spec.peer_port = Some(1179);
        let p = plan(&v, "node-1");
        assert_eq!(p.peers["router"].session.peer_asn, PeerAsn::External);
        assert_eq!(p.peers["router"].session.address.port(), 1179);
    }

    #[test]
    fn bfd_profiles_give_the_timers_and_a_missing_one_is_a_problem() {
        let mut v = view();
        v.bgp_peers
            .get_mut("metallb-system/router")
            .unwrap()
            .spec
            .bfd_profile = "fast".into();
        let p = plan(&v, "node-1");
        assert!(p.peers.is_empty());
        assert!(
            p.problems[0].1.starts_with("spec.bfdProfile"),
            "{:?}",
            p.problems
        );
        v.bfd_profiles.insert(
            "metallb-system/fast".into(),
            crate::crd::BFDProfile {
                metadata: meta("fast"),
                spec: crate::crd::BFDProfileSpec {
                    receive_interval: Some(100),
                    detect_multiplier: Some(5),
                    ..Default::default()
                },
            },
        );
        let p = plan(&v, "node-1");
        let t = p.peers["router"].session.bfd.unwrap();
        assert_eq!(t.receive, Duration::from_millis(100));
        assert_eq!(t.transmit, Duration::from_millis(300));
        assert_eq!(t.multiplier, 5);
    }

    #[test]
    fn community_syntax() {
        assert_eq!(
            parse_community("65535:65282"),
            Ok(ParsedCommunity::Standard(0xffff_ff02))
        );
        assert_eq!(
            parse_community("large:4200000000:1:2"),
            Ok(ParsedCommunity::Large([4_200_000_000, 1, 2]))
        );
        assert!(parse_community("1:2:3").is_err());
        assert!(parse_community("large:1:2").is_err());
    }
}
