//! Keeping the node's kernel equal to the [`Plan`], in the shape every kubewire
//! component has: list what the kernel holds of the agent's own state ([`observe`]),
//! compute the difference from the plan as a pure function ([`diff`], where the unit
//! tests live), apply it ([`Reconciler::reconcile`]). The comparison is with the kernel,
//! not with what the agent applied last, so a route, FDB entry, neighbour, address or
//! table that someone else removed comes back at the next resync. What the agent owns
//! is easy to list: routes tagged with protocol 75, and everything on its own VXLAN
//! device.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use cni::spec::{RoutingMode, VXLAN_OVERHEAD};
use ipnet::IpNet;
use netlink::nft::{Family, NftSocket};
use netlink::{ROUTE_PROTOCOL_KUBEWIRE, RouteInfo, RouteSpec, Rtnl, VxlanSpec, host_prefix};
use tracing::{debug, info};

use crate::Error;
use crate::plan::{LocalVxlan, Plan, PodRoute};

/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "kubewire.vxlan";
/// The VXLAN UDP port: Linux's historical default, as flannel and Cilium use.
pub const VXLAN_PORT: u16 = 8472;
/// The VXLAN network identifier.
pub const VXLAN_VNI: u32 = 1;

/// What the kernel holds of the agent's state, as listed from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Routes tagged with kubewire's protocol, by destination.
    pub routes: BTreeMap<IpNet, RouteInfo>,
    /// The VXLAN device, if there is one.
    pub vxlan: Option<ObservedVxlan>,
    /// The pod CIDRs in the masquerade tables, when both tables are still the ones
    /// this agent made, with their rule; `None` when they are missing, were remade or
    /// flushed by someone else, or this agent has not made them yet.
    pub masquerade: Option<Vec<IpNet>>,
}

/// What is on the VXLAN device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedVxlan {
    /// Its interface index.
    pub index: u32,
    /// Its addresses, link-local ones aside.
    pub addresses: BTreeSet<IpNet>,
    /// Its forwarding entries to remote VTEPs: (MAC, remote underlay address).
    pub fdb: BTreeSet<(Vec<u8>, IpAddr)>,
    /// Its permanent neighbour entries: address → MAC.
    pub neighbours: BTreeMap<IpAddr, Vec<u8>>,
}

/// One change to the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create the VXLAN device (of the plan's `local_vxlan`).
    CreateVxlan,
    /// Remove the VXLAN device (native mode); the kernel drops all that was on it.
    DeleteVxlan,
    /// Add an address to the VXLAN device.
    AddAddress(IpNet),
    /// Remove an address from the VXLAN device.
    DeleteAddress(IpNet),
    /// Send frames for a MAC to a remote VTEP.
    ReplaceFdb(Vec<u8>, IpAddr),
    /// Stop doing so.
    DeleteFdb(Vec<u8>, IpAddr),
    /// A remote gateway's address is at a MAC, on the VXLAN device.
    ReplaceNeighbour(IpAddr, Vec<u8>),
    /// Forget a neighbour of the VXLAN device.
    DeleteNeighbour(IpAddr),
    /// Route a remote pod CIDR.
    ReplaceRoute(PodRoute),
    /// Remove a route of ours nobody needs.
    DeleteRoute(RouteInfo),
    /// Rebuild the masquerade tables for these pod CIDRs.
    Masquerade(Vec<IpNet>),
}

fn is_link_local(net: &IpNet) -> bool {
    match net.addr() {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// The changes that bring the `kernel` to the `plan` in `mode`.
pub fn diff(plan: &Plan, mode: RoutingMode, kernel: &Observed) -> Vec<Change> {
    let mut changes = Vec::new();
    let want_vxlan = mode == RoutingMode::Vxlan && plan.local_vxlan.is_some();
    // What is on the device, as far as it exists and stays.
    let empty = ObservedVxlan::default();
    let device = match (&kernel.vxlan, want_vxlan) {
        (Some(v), true) => Some(v),
        (None, true) => {
            changes.push(Change::CreateVxlan);
            Some(&empty)
        }
        (Some(_), false) if mode == RoutingMode::Native => {
            changes.push(Change::DeleteVxlan);
            None
        }
        // VXLAN mode waiting for this node's address: leave the device as it is.
        (Some(_), false) | (None, false) => None,
    };
    if let (Some(device), Some(local)) = (device, plan.local_vxlan.as_ref().filter(|_| want_vxlan))
    {
        let addresses: BTreeSet<IpNet> = local.addresses.iter().map(|a| host_prefix(*a)).collect();
        for a in addresses.difference(&device.addresses) {
            changes.push(Change::AddAddress(*a));
        }
        for a in device.addresses.difference(&addresses) {
            changes.push(Change::DeleteAddress(*a));
        }
        let fdb: BTreeSet<(Vec<u8>, IpAddr)> = plan
            .vteps
            .iter()
            .map(|v| (v.mac.to_vec(), v.underlay))
            .collect();
        for (mac, remote) in fdb.difference(&device.fdb) {
            changes.push(Change::ReplaceFdb(mac.clone(), *remote));
        }
        for (mac, remote) in device.fdb.difference(&fdb) {
            changes.push(Change::DeleteFdb(mac.clone(), *remote));
        }
        let neighbours: BTreeMap<IpAddr, Vec<u8>> = plan
            .vteps
            .iter()
            .flat_map(|v| v.gateways.iter().map(|gw| (*gw, v.mac.to_vec())))
            .collect();
        for (ip, mac) in &neighbours {
            if device.neighbours.get(ip) != Some(mac) {
                changes.push(Change::ReplaceNeighbour(*ip, mac.clone()));
            }
        }
        for ip in device.neighbours.keys() {
            if !neighbours.contains_key(ip) {
                changes.push(Change::DeleteNeighbour(*ip));
            }
        }
    }
    // Routes: a VXLAN route can be made only with the device.
    let vxlan_index = device.map(|d| d.index).filter(|_| want_vxlan);
    let mut wanted = BTreeSet::new();
    for r in &plan.routes {
        if r.vxlan && device.is_none() {
            continue;
        }
        wanted.insert(r.destination);
        let in_kernel = kernel.routes.get(&r.destination).is_some_and(|k| {
            k.gateway == Some(r.via)
                && (!r.vxlan || (vxlan_index.is_some() && k.dev == vxlan_index))
        });
        if !in_kernel {
            changes.push(Change::ReplaceRoute(r.clone()));
        }
    }
    for (dst, route) in &kernel.routes {
        if !wanted.contains(dst) {
            changes.push(Change::DeleteRoute(route.clone()));
        }
    }
    if kernel.masquerade.as_ref() != Some(&plan.all_pod_cidrs) {
        changes.push(Change::Masquerade(plan.all_pod_cidrs.clone()));
    }
    changes
}

/// The routes in the kernel tagged with kubewire's protocol: the agent's own.
async fn owned_routes(rtnl: &Rtnl) -> Result<Vec<RouteInfo>, netlink::Error> {
    Ok(rtnl
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL_KUBEWIRE)
        .collect())
}

fn route_spec(r: &RouteInfo) -> RouteSpec {
    RouteSpec {
        destination: r.destination,
        gateway: r.gateway,
        dev: r.dev,
        onlink: false,
        protocol: r.protocol,
    }
}

/// Keeps the kernel of this node equal to the latest plan.
#[derive(Debug)]
pub struct Reconciler {
    rtnl: Rtnl,
    nft: NftSocket,
    mode: RoutingMode,
    underlay_mtu: u32,
    /// The pod CIDRs the masquerade tables were last made for, with the tables'
    /// handles then (a table remade by someone else has another).
    masquerade: Option<(Vec<IpNet>, Vec<Option<u64>>)>,
}

impl Reconciler {
    /// A reconciler for this namespace (the node's).
    pub fn new(mode: RoutingMode, underlay_mtu: u32) -> Result<Self, Error> {
        Ok(Reconciler {
            rtnl: Rtnl::connect_here()?,
            nft: NftSocket::new()?,
            mode,
            underlay_mtu,
            masquerade: None,
        })
    }

    fn masquerade_handles(&mut self) -> Result<Vec<Option<u64>>, netlink::Error> {
        [Family::Ip, Family::Ip6]
            .into_iter()
            .map(|f| self.nft.table_handle(f, crate::masquerade::TABLE))
            .collect()
    }

    /// Whether both masquerade tables still hold their rule.
    fn masquerade_rules(&mut self) -> Result<bool, netlink::Error> {
        for f in [Family::Ip, Family::Ip6] {
            let mut counts = BTreeMap::new();
            for r in self.nft.rules(f, crate::masquerade::TABLE)? {
                *counts.entry(r.chain).or_insert(0) += 1;
            }
            if counts != crate::masquerade::rule_counts() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Lists what the kernel holds of the agent's state.
    pub async fn observe(&mut self) -> Result<Observed, Error> {
        let routes = owned_routes(&self.rtnl)
            .await?
            .into_iter()
            .map(|r| (r.destination, r))
            .collect();
        let vxlan = match self.rtnl.link(VXLAN_DEVICE).await? {
            None => None,
            Some(link) => {
                let index = link.index;
                Some(ObservedVxlan {
                    index,
                    addresses: self
                        .rtnl
                        .addresses(index)
                        .await?
                        .into_iter()
                        .filter(|a| !is_link_local(a))
                        .collect(),
                    fdb: self
                        .rtnl
                        .fdb(index)
                        .await?
                        .into_iter()
                        .map(|e| (e.mac, e.destination))
                        .collect(),
                    neighbours: self
                        .rtnl
                        .neighbours(index)
                        .await?
                        .into_iter()
                        .filter(|n| n.permanent)
                        .filter_map(|n| Some((n.ip, n.mac?)))
                        .collect(),
                })
            }
        };
        let masquerade = match self.masquerade.clone() {
            Some((cidrs, handles))
                if self.masquerade_handles()? == handles && self.masquerade_rules()? =>
            {
                Some(cidrs)
            }
            _ => None,
        };
        Ok(Observed {
            routes,
            vxlan,
            masquerade,
        })
    }

    /// Brings the kernel to `plan`: observes, diffs, applies. Keeps going past
    /// failures and returns them all (what failed is retried by the next reconcile);
    /// on success, how many changes were made.
    pub async fn reconcile(&mut self, plan: &Plan) -> Result<usize, Error> {
        let observed = self.observe().await?;
        let changes = diff(plan, self.mode, &observed);
        let n = changes.len();
        let mut failed = Vec::new();
        let mut vxlan_index = observed.vxlan.as_ref().map(|v| v.index);
        for change in changes {
            debug!(?change, "kernel change");
            if let Err(e) = self.apply(&change, plan, &observed, &mut vxlan_index).await {
                failed.push(e);
            }
        }
        if failed.is_empty() {
            Ok(n)
        } else {
            Err(Error::Apply(failed))
        }
    }

    async fn apply(
        &mut self,
        change: &Change,
        plan: &Plan,
        observed: &Observed,
        vxlan_index: &mut Option<u32>,
    ) -> Result<(), netlink::Error> {
        // Changes on the device wait for it: when making it failed, that error is
        // already reported and the next reconcile tries again.
        let on_device = !matches!(
            change,
            Change::CreateVxlan
                | Change::DeleteVxlan
                | Change::DeleteRoute(_)
                | Change::Masquerade(_)
                | Change::ReplaceRoute(PodRoute { vxlan: false, .. })
        );
        if on_device && vxlan_index.is_none() {
            return Ok(());
        }
        let device = vxlan_index.unwrap_or_default();
        match change {
            Change::CreateVxlan => {
                if let Some(local) = &plan.local_vxlan {
                    *vxlan_index = Some(self.create_vxlan(local).await?);
                }
            }
            Change::DeleteVxlan => {
                if let Some(index) = vxlan_index.take() {
                    info!("native mode: removing {VXLAN_DEVICE} left from VXLAN mode");
                    self.rtnl.delete_link(index).await?;
                }
            }
            Change::AddAddress(a) => self.rtnl.add_address(device, *a).await?,
            Change::DeleteAddress(a) => self.rtnl.delete_address(device, *a).await?,
            Change::ReplaceFdb(mac, remote) => {
                self.rtnl.replace_fdb(device, mac, *remote).await?;
            }
            Change::DeleteFdb(mac, remote) => {
                self.rtnl.delete_fdb(device, mac, *remote).await?;
            }
            Change::ReplaceNeighbour(ip, mac) => {
                self.rtnl.add_neighbour(device, *ip, mac).await?;
            }
            Change::DeleteNeighbour(ip) => self.rtnl.delete_neighbour(device, *ip).await?,
            Change::ReplaceRoute(r) => {
                let spec = RouteSpec {
                    destination: r.destination,
                    gateway: Some(r.via),
                    dev: if r.vxlan { Some(device) } else { None },
                    onlink: r.vxlan,
                    protocol: ROUTE_PROTOCOL_KUBEWIRE,
                };
                let mut result = self.rtnl.replace_route(&spec).await;
                // The kernel refuses an IPv6 on-link next hop that the route being
                // replaced already covers through another device (VXLAN <-> native
                // switch): remove the old route first, then add.
                if result.is_err()
                    && let Some(old) = observed.routes.get(&r.destination)
                {
                    let _ = self.rtnl.delete_route(&route_spec(old)).await;
                    result = self.rtnl.replace_route(&spec).await;
                }
                result?;
            }
            Change::DeleteRoute(r) => self.rtnl.delete_route(&route_spec(r)).await?,
            Change::Masquerade(cidrs) => {
                self.masquerade = None;
                self.nft.apply(&crate::masquerade::batch(cidrs))?;
                let handles = self.masquerade_handles()?;
                self.masquerade = Some((cidrs.clone(), handles));
            }
        }
        Ok(())
    }

    async fn create_vxlan(&mut self, local: &LocalVxlan) -> Result<u32, netlink::Error> {
        let spec = VxlanSpec {
            name: VXLAN_DEVICE,
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: local.underlay,
            mtu: self.underlay_mtu - VXLAN_OVERHEAD,
            mac: local.mac,
        };
        let index = self.rtnl.ensure_vxlan(&spec).await?;
        self.rtnl.set_up(index).await?;
        Ok(index)
    }
}

/// Removes everything the agent owns in this namespace: routes tagged with kubewire's
/// protocol, the VXLAN device and the masquerade tables. Keeps going past failures.
pub async fn cleanup() -> Result<(), Error> {
    let rtnl = Rtnl::connect_here()?;
    let mut problems = Vec::new();
    for route in owned_routes(&rtnl).await? {
        if let Err(e) = rtnl.delete_route(&route_spec(&route)).await {
            problems.push(e);
        }
    }
    match rtnl.link(VXLAN_DEVICE).await {
        Ok(Some(link)) => {
            if let Err(e) = rtnl.delete_link(link.index).await {
                problems.push(e);
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(e),
    }
    let tables =
        NftSocket::new().and_then(|mut socket| socket.apply(&crate::masquerade::cleanup_batch()));
    if let Err(e) = tables {
        problems.push(e);
    }
    if problems.is_empty() {
        info!("removed the agent's routes, VXLAN device and tables");
        Ok(())
    } else {
        Err(Error::Apply(problems))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::{NodeView, plan};

    fn cluster() -> BTreeMap<String, NodeView> {
        let node = |name: &str, cidr: &str, ip: &str| {
            (
                name.to_owned(),
                NodeView {
                    name: name.to_owned(),
                    pod_cidrs: vec![cidr.parse().unwrap()],
                    internal_ips: vec![ip.parse().unwrap()],
                },
            )
        };
        [
            node("node-1", "10.244.1.0/24", "198.18.0.11"),
            node("node-2", "10.244.2.0/24", "198.18.0.12"),
            node("node-3", "10.244.3.0/24", "198.18.0.13"),
        ]
        .into()
    }

    fn route(dst: &str, via: &str, dev: Option<u32>) -> (IpNet, RouteInfo) {
        let destination: IpNet = dst.parse().unwrap();
        (
            destination,
            RouteInfo {
                destination,
                gateway: Some(via.parse().unwrap()),
                dev,
                protocol: ROUTE_PROTOCOL_KUBEWIRE,
            },
        )
    }

    /// The kernel as the plan wants it, listed.
    fn converged(plan: &Plan, mode: RoutingMode) -> Observed {
        let index = 7;
        let vxlan = plan.local_vxlan.as_ref().map(|local| ObservedVxlan {
            index,
            addresses: local.addresses.iter().map(|a| host_prefix(*a)).collect(),
            fdb: plan
                .vteps
                .iter()
                .map(|v| (v.mac.to_vec(), v.underlay))
                .collect(),
            neighbours: plan
                .vteps
                .iter()
                .flat_map(|v| v.gateways.iter().map(|g| (*g, v.mac.to_vec())))
                .collect(),
        });
        let routes = plan
            .routes
            .iter()
            .map(|r| {
                let dev = (mode == RoutingMode::Vxlan).then_some(index);
                route(&r.destination.to_string(), &r.via.to_string(), dev)
            })
            .collect();
        Observed {
            routes,
            vxlan,
            masquerade: Some(plan.all_pod_cidrs.clone()),
        }
    }

    #[test]
    fn a_kernel_that_holds_the_plan_needs_nothing() {
        for mode in [RoutingMode::Native, RoutingMode::Vxlan] {
            let p = plan("node-1", &cluster(), mode);
            assert_eq!(diff(&p, mode, &converged(&p, mode)), [], "{mode:?}");
        }
    }

    #[test]
    fn what_someone_removed_comes_back() {
        let mode = RoutingMode::Vxlan;
        let p = plan("node-1", &cluster(), mode);
        let mut kernel = converged(&p, mode);
        let gone_route = kernel.routes.pop_first().unwrap().1;
        let vx = kernel.vxlan.as_mut().unwrap();
        let gone_fdb = vx.fdb.pop_first().unwrap();
        let gone_neighbour = vx.neighbours.pop_first().unwrap();
        kernel.masquerade = None;
        let changes = diff(&p, mode, &kernel);
        let route = p
            .routes
            .iter()
            .find(|r| r.destination == gone_route.destination)
            .unwrap();
        assert_eq!(
            changes,
            [
                Change::ReplaceFdb(gone_fdb.0, gone_fdb.1),
                Change::ReplaceNeighbour(gone_neighbour.0, gone_neighbour.1),
                Change::ReplaceRoute(route.clone()),
                Change::Masquerade(p.all_pod_cidrs.clone()),
            ]
        );
    }

    #[test]
    fn what_is_not_in_the_plan_goes() {
        let mode = RoutingMode::Vxlan;
        let p = plan("node-1", &cluster(), mode);
        let mut kernel = converged(&p, mode);
        let (dst, stale) = route("10.244.9.0/24", "10.244.9.1", Some(7));
        kernel.routes.insert(dst, stale.clone());
        let vx = kernel.vxlan.as_mut().unwrap();
        let mac = vec![0x0a, 0x58, 198, 18, 0, 19];
        let remote: IpAddr = "198.18.0.19".parse().unwrap();
        vx.fdb.insert((mac.clone(), remote));
        vx.neighbours
            .insert("10.244.9.1".parse().unwrap(), mac.clone());
        let extra: IpNet = "10.244.1.9/32".parse().unwrap();
        vx.addresses.insert(extra);
        assert_eq!(
            diff(&p, mode, &kernel),
            [
                Change::DeleteAddress(extra),
                Change::DeleteFdb(mac, remote),
                Change::DeleteNeighbour("10.244.9.1".parse().unwrap()),
                Change::DeleteRoute(stale),
            ]
        );
    }

    #[test]
    fn a_missing_device_is_made_with_everything_on_it() {
        let mode = RoutingMode::Vxlan;
        let p = plan("node-1", &cluster(), mode);
        let mut kernel = converged(&p, mode);
        kernel.vxlan = None;
        let changes = diff(&p, mode, &kernel);
        assert_eq!(changes[0], Change::CreateVxlan);
        let routes = changes
            .iter()
            .filter(|c| matches!(c, Change::ReplaceRoute(_)))
            .count();
        assert_eq!(
            routes,
            p.routes.len(),
            "the old routes went with the device"
        );
        assert!(changes.contains(&Change::AddAddress("10.244.1.1/32".parse().unwrap())));
    }

    #[test]
    fn native_mode_removes_a_vxlan_device_and_reroutes() {
        let p = plan("node-1", &cluster(), RoutingMode::Native);
        let vxlan_plan = plan("node-1", &cluster(), RoutingMode::Vxlan);
        let kernel = converged(&vxlan_plan, RoutingMode::Vxlan);
        let changes = diff(&p, RoutingMode::Native, &kernel);
        assert_eq!(changes[0], Change::DeleteVxlan);
        let routes: Vec<String> = changes
            .iter()
            .filter_map(|c| match c {
                Change::ReplaceRoute(r) => Some(format!("{} via {}", r.destination, r.via)),
                _ => None,
            })
            .collect();
        assert_eq!(
            routes,
            [
                "10.244.2.0/24 via 198.18.0.12",
                "10.244.3.0/24 via 198.18.0.13"
            ]
        );
    }

    #[test]
    fn a_route_through_the_wrong_next_hop_is_replaced() {
        let mode = RoutingMode::Native;
        let p = plan("node-1", &cluster(), mode);
        let mut kernel = converged(&p, mode);
        let (dst, moved) = route("10.244.2.0/24", "198.18.0.99", None);
        kernel.routes.insert(dst, moved);
        let changes = diff(&p, mode, &kernel);
        assert_eq!(changes.len(), 1);
        assert!(matches!(&changes[0], Change::ReplaceRoute(r) if r.destination == dst));
    }
}
