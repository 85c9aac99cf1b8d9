//! What the kernel of one node should hold so that its pods reach every other node's
//! pods, computed from the cluster's Nodes as a pure function (no kernel, no API).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use cni::spec::RoutingMode;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;

/// The parts of a Node the agent cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// `metadata.name`.
    pub name: String,
    /// `spec.podCIDRs` (falling back to `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// `status.addresses` of type InternalIP.
    pub internal_ips: Vec<IpAddr>,
}

impl NodeView {
    /// Reads a Node; unparsable CIDRs and addresses are skipped (and reported).
    pub fn from_node(node: &Node) -> (Self, Vec<String>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let spec = node.spec.as_ref();
        let raw_cidrs: Vec<String> = spec
            .and_then(|s| s.pod_cidrs.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| spec.and_then(|s| s.pod_cidr.clone()).map(|c| vec![c]))
            .unwrap_or_default();
        let mut pod_cidrs = Vec::new();
        for raw in raw_cidrs {
            match raw.parse::<IpNet>() {
                Ok(net) => pod_cidrs.push(net.trunc()),
                Err(_) => problems.push(format!(
                    "node {name}: spec.podCIDRs: Invalid value: {raw:?}"
                )),
            }
        }
        let mut internal_ips = Vec::new();
        for addr in node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if addr.type_ == "InternalIP" {
                match addr.address.parse::<IpAddr>() {
                    Ok(ip) => internal_ips.push(ip),
                    Err(_) => problems.push(format!(
                        "node {name}: status.addresses: Invalid value: {:?}",
                        addr.address
                    )),
                }
            }
        }
        (
            NodeView {
                name,
                pod_cidrs,
                internal_ips,
            },
            problems,
        )
    }

    fn internal_ip(&self, v4: bool) -> Option<IpAddr> {
        self.internal_ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == v4)
    }
}

/// The first host address of a pod CIDR: kubewire's IPAM never gives it to a pod; the
/// node uses it as its own address in the pod network (the VXLAN device's address).
pub fn node_gateway(cidr: &IpNet) -> IpAddr {
    match cidr {
        IpNet::V4(net) => IpAddr::V4((u32::from(net.network()) + 1).into()),
        IpNet::V6(net) => IpAddr::V6((u128::from(net.network()) + 1).into()),
    }
}

/// The MAC of a node's VXLAN device, derived from its underlay address so that every
/// node computes every other node's without publishing it anywhere: `0a:58` and the
/// IPv4 address (locally administered, unicast), or a hash of an IPv6 one.
pub fn vtep_mac(underlay: IpAddr) -> [u8; 6] {
    let tail: [u8; 4] = match underlay {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(v6) => {
            let mut hash: u32 = 0x811c_9dc5;
            for b in v6.octets() {
                hash ^= u32::from(b);
                hash = hash.wrapping_mul(0x0100_0193);
            }
            hash.to_be_bytes()
        }
    };
    [0x0a, 0x58, tail[0], tail[1], tail[2], tail[3]]
}

/// One route to a remote node's pod CIDR.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    /// The remote pod CIDR.
    pub destination: IpNet,
    /// Native: the remote node's underlay address. VXLAN: its gateway address in the
    /// pod network, reached on-link through the VXLAN device.
    pub via: IpAddr,
    /// Whether the route goes out of the VXLAN device.
    pub vxlan: bool,
}

/// A remote VXLAN endpoint: frames for `mac` go to `underlay`; `gateways` (the remote
/// node's addresses in the pod network) resolve to `mac`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Vtep {
    /// The remote device's MAC.
    pub mac: [u8; 6],
    /// The remote node's underlay address.
    pub underlay: IpAddr,
    /// The remote node's gateway addresses.
    pub gateways: Vec<IpAddr>,
}

/// This node's own VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVxlan {
    /// Its MAC.
    pub mac: [u8; 6],
    /// The underlay address it sends from.
    pub underlay: IpAddr,
    /// Its addresses in the pod network (one per own pod CIDR).
    pub addresses: Vec<IpAddr>,
}

/// The whole desired state of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Routes to other nodes' pod CIDRs.
    pub routes: BTreeSet<PodRoute>,
    /// VXLAN mode: this node's device.
    pub local_vxlan: Option<LocalVxlan>,
    /// VXLAN mode: the other nodes' endpoints.
    pub vteps: BTreeSet<Vtep>,
    /// This node's pod CIDRs, for its CNI config (empty until the node has them).
    pub own_pod_cidrs: Vec<IpNet>,
    /// Every node's pod CIDRs, sorted: the pod network, whose traffic within itself is
    /// never masqueraded.
    pub all_pod_cidrs: Vec<IpNet>,
    /// Why some node could not be routed to.
    pub problems: Vec<String>,
}

/// Computes the plan of node `own` from every Node in the cluster.
pub fn plan(own: &str, nodes: &BTreeMap<String, NodeView>, mode: RoutingMode) -> Plan {
    let mut plan = Plan::default();
    let me = nodes.get(own);
    plan.own_pod_cidrs = me.map(|n| n.pod_cidrs.clone()).unwrap_or_default();
    let all: BTreeSet<IpNet> = nodes
        .values()
        .flat_map(|n| n.pod_cidrs.iter().copied())
        .collect();
    plan.all_pod_cidrs = all.into_iter().collect();
    if mode == RoutingMode::Vxlan {
        match me.and_then(|n| n.internal_ip(true).or_else(|| n.internal_ip(false))) {
            Some(underlay) => {
                plan.local_vxlan = Some(LocalVxlan {
                    mac: vtep_mac(underlay),
                    underlay,
                    addresses: plan.own_pod_cidrs.iter().map(node_gateway).collect(),
                })
            }
            None => plan
                .problems
                .push(format!("node {own}: no InternalIP yet; VXLAN waits for it")),
        }
    }
    for node in nodes.values().filter(|n| n.name != own) {
        match mode {
            RoutingMode::Native => {
                for cidr in &node.pod_cidrs {
                    match node.internal_ip(cidr.addr().is_ipv4()) {
                        Some(via) => {
                            plan.routes.insert(PodRoute { destination: *cidr, via, vxlan: false });
                        }
                        None => plan.problems.push(format!(
                            "node {}: no InternalIP of the family of {cidr}; its pods there are unreachable in native mode",
                            node.name
                        )),
                    }
                }
            }
            RoutingMode::Vxlan => {
                // The underlay carries IPv4 encapsulation when both ends have IPv4.
                let underlay = node.internal_ip(true).or_else(|| node.internal_ip(false));
                let Some(underlay) = underlay else {
                    plan.problems.push(format!(
                        "node {}: no InternalIP; no VXLAN endpoint",
                        node.name
                    ));
                    continue;
                };
                let gateways: Vec<IpAddr> = node.pod_cidrs.iter().map(node_gateway).collect();
                for (cidr, gw) in node.pod_cidrs.iter().zip(&gateways) {
                    plan.routes.insert(PodRoute {
                        destination: *cidr,
                        via: *gw,
                        vxlan: true,
                    });
                }
                if !gateways.is_empty() {
                    plan.vteps.insert(Vtep {
                        mac: vtep_mac(underlay),
                        underlay,
                        gateways,
                    });
                }
            }
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, cidrs: &[&str], ips: &[&str]) -> (String, NodeView) {
        (
            name.to_owned(),
            NodeView {
                name: name.to_owned(),
                pod_cidrs: cidrs.iter().map(|c| c.parse().unwrap()).collect(),
                internal_ips: ips.iter().map(|c| c.parse().unwrap()).collect(),
            },
        )
    }

    fn cluster() -> BTreeMap<String, NodeView> {
        [
            view(
                "node-1",
                &["10.244.1.0/24", "fd00:10:244:1::/64"],
                &["198.18.0.11", "2001:2::b"],
            ),
            view(
                "node-2",
                &["10.244.2.0/24", "fd00:10:244:2::/64"],
                &["198.18.0.12", "2001:2::c"],
            ),
            view("node-3", &["10.244.3.0/24"], &["198.18.0.13"]),
        ]
        .into()
    }

    #[test]
    fn native_routes_every_remote_cidr_via_its_node_of_the_same_family() {
        let p = plan("node-1", &cluster(), RoutingMode::Native);
        let routes: Vec<String> = p
            .routes
            .iter()
            .map(|r| format!("{} via {}", r.destination, r.via))
            .collect();
        assert_eq!(
            routes,
            [
                "10.244.2.0/24 via 198.18.0.12",
                "10.244.3.0/24 via 198.18.0.13",
                "fd00:10:244:2::/64 via 2001:2::c"
            ]
        );
        assert!(p.local_vxlan.is_none() && p.vteps.is_empty());
        assert_eq!(p.own_pod_cidrs.len(), 2);
    }

    #[test]
    fn a_remote_cidr_without_an_address_of_its_family_is_reported_not_routed() {
        let mut nodes = cluster();
        nodes.insert(
            "node-4".into(),
            view("node-4", &["fd00:10:244:4::/64"], &["198.18.0.14"]).1,
        );
        let p = plan("node-1", &nodes, RoutingMode::Native);
        assert!(
            !p.routes
                .iter()
                .any(|r| r.destination.to_string().starts_with("fd00:10:244:4"))
        );
        assert!(
            p.problems
                .iter()
                .any(|m| m.contains("node-4") && m.contains("fd00:10:244:4::/64")),
            "{:?}",
            p.problems
        );
    }

    #[test]
    fn vxlan_routes_through_remote_gateways_and_knows_every_vtep() {
        let p = plan("node-1", &cluster(), RoutingMode::Vxlan);
        let local = p.local_vxlan.clone().unwrap();
        assert_eq!(local.mac, [0x0a, 0x58, 198, 18, 0, 11]);
        assert_eq!(
            local.addresses,
            vec![
                "10.244.1.1".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::1".parse().unwrap()
            ]
        );
        let routes: Vec<String> = p
            .routes
            .iter()
            .map(|r| format!("{} via {} vxlan={}", r.destination, r.via, r.vxlan))
            .collect();
        assert_eq!(
            routes,
            [
                "10.244.2.0/24 via 10.244.2.1 vxlan=true",
                "10.244.3.0/24 via 10.244.3.1 vxlan=true",
                "fd00:10:244:2::/64 via fd00:10:244:2::1 vxlan=true",
            ]
        );
        let vteps: Vec<String> = p.vteps.iter().map(|v| format!("{}", v.underlay)).collect();
        assert_eq!(vteps, ["198.18.0.12", "198.18.0.13"]);
    }

    #[test]
    fn a_node_leaving_takes_its_routes_with_it() {
        let mut nodes = cluster();
        let before = plan("node-1", &nodes, RoutingMode::Vxlan);
        nodes.remove("node-2");
        let after = plan("node-1", &nodes, RoutingMode::Vxlan);
        assert_eq!(before.routes.len() - 2, after.routes.len());
        assert_eq!(after.vteps.len(), 1);
    }

    #[test]
    fn nodes_are_read_from_the_api_objects() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "node-9"},
            "spec": {"podCIDR": "10.244.9.0/24"},
            "status": {"addresses": [
                {"type": "Hostname", "address": "node-9"},
                {"type": "InternalIP", "address": "198.18.0.19"},
                {"type": "InternalIP", "address": "not-an-ip"}
            ]}
        }))
        .unwrap();
        let (v, problems) = NodeView::from_node(&node);
        assert_eq!(v.pod_cidrs, vec!["10.244.9.0/24".parse::<IpNet>().unwrap()]);
        assert_eq!(
            v.internal_ips,
            vec!["198.18.0.19".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            problems,
            ["node node-9: status.addresses: Invalid value: \"not-an-ip\""]
        );
    }
}
