//! Applying a [`Plan`] to the node's kernel: only the difference with what was applied
//! last, so a steady cluster costs nothing and one node joining costs a few requests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netlink::{ROUTE_PROTOCOL_KUBEWIRE, RouteSpec, Rtnl, VxlanSpec};
use tracing::{debug, info};

use crate::Error;
use crate::plan::{Mode, Plan, Vtep};

/// The VXLAN device's name.
pub const VXLAN_DEVICE: &str = "kubewire.vxlan";
/// The VXLAN UDP port: Linux's historical default, as flannel and Cilium use.
pub const VXLAN_PORT: u16 = 8472;
/// The VXLAN network identifier.
pub const VXLAN_VNI: u32 = 1;
/// What VXLAN adds to every packet: outer Ethernet, IPv4, UDP and VXLAN headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// Keeps the kernel of this node equal to the latest plan.
#[derive(Debug)]
pub struct Reconciler {
    rtnl: Rtnl,
    mode: Mode,
    underlay_mtu: u32,
    routes: BTreeMap<IpNet, RouteSpec>,
    vteps: BTreeSet<Vtep>,
    vxlan_addresses: BTreeSet<IpAddr>,
    /// The pod CIDRs the masquerade tables were last built for.
    masquerade_cidrs: Option<Vec<IpNet>>,
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix")
}

impl Reconciler {
    /// Starts from what the kernel holds: every route tagged with kubewire's protocol
    /// counts as applied, so routes of nodes that left while the agent was down are
    /// removed by the first apply. In native mode a VXLAN device from an earlier run in
    /// VXLAN mode is removed.
    pub async fn new(mode: Mode, underlay_mtu: u32) -> Result<Self, Error> {
        let rtnl = Rtnl::connect_here()?;
        let routes: BTreeMap<IpNet, RouteSpec> = owned_routes(&rtnl)
            .await?
            .into_iter()
            .map(|spec| (spec.destination, spec))
            .collect();
        if mode == Mode::Native
            && let Some(link) = rtnl.link(VXLAN_DEVICE).await?
        {
            info!("native mode: removing {VXLAN_DEVICE} left from VXLAN mode");
            rtnl.delete_link(link.index).await?;
        }
        Ok(Reconciler {
            rtnl,
            mode,
            underlay_mtu,
            routes,
            vteps: BTreeSet::new(),
            vxlan_addresses: BTreeSet::new(),
            masquerade_cidrs: None,
        })
    }

    /// Brings the kernel to `plan`. Keeps going past failures and returns them all;
    /// what failed is retried by the next apply.
    pub async fn apply(&mut self, plan: &Plan) -> Result<(), Error> {
        let mut problems = Vec::new();
        let vxlan_index = match (&plan.local_vxlan, self.mode) {
            (Some(local), Mode::Vxlan) => match self.ensure_vxlan(local).await {
                Ok(index) => Some(index),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            _ => None,
        };

        if let Some(index) = vxlan_index {
            for vtep in plan.vteps.difference(&self.vteps.clone()) {
                let programmed = async {
                    self.rtnl
                        .replace_fdb(index, &vtep.mac, vtep.underlay)
                        .await?;
                    for gw in &vtep.gateways {
                        self.rtnl.add_neighbour(index, *gw, &vtep.mac).await?;
                    }
                    Ok::<(), netlink::Error>(())
                }
                .await;
                match programmed {
                    Ok(()) => {
                        self.vteps.insert(vtep.clone());
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
            for vtep in self
                .vteps
                .difference(&plan.vteps)
                .cloned()
                .collect::<Vec<_>>()
            {
                match self.rtnl.delete_fdb(index, &vtep.mac, vtep.underlay).await {
                    Ok(()) => {
                        self.vteps.remove(&vtep);
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }

        let mut desired = BTreeMap::new();
        for r in &plan.routes {
            let spec = if r.vxlan {
                let Some(index) = vxlan_index else { continue };
                RouteSpec {
                    destination: r.destination,
                    gateway: Some(r.via),
                    dev: Some(index),
                    onlink: true,
                    protocol: ROUTE_PROTOCOL_KUBEWIRE,
                }
            } else {
                RouteSpec {
                    destination: r.destination,
                    gateway: Some(r.via),
                    dev: None,
                    onlink: false,
                    protocol: ROUTE_PROTOCOL_KUBEWIRE,
                }
            };
            desired.insert(r.destination, spec);
        }
        for (dst, spec) in &desired {
            if self.routes.get(dst) != Some(spec) {
                let mut result = self.rtnl.replace_route(spec).await;
                // The kernel refuses an IPv6 on-link next hop that the route being
                // replaced already covers through another device (VXLAN <-> native
                // switch): remove the old route first, then add.
                if result.is_err()
                    && let Some(old) = self.routes.get(dst)
                {
                    let _ = self.rtnl.delete_route(old).await;
                    result = self.rtnl.replace_route(spec).await;
                }
                match result {
                    Ok(()) => {
                        debug!(%dst, via = ?spec.gateway, "route");
                        self.routes.insert(*dst, spec.clone());
                    }
                    Err(e) => problems.push(e.to_string()),
                }
            }
        }
        let stale: Vec<RouteSpec> = self
            .routes
            .iter()
            .filter(|(dst, _)| !desired.contains_key(dst))
            .map(|(_, s)| s.clone())
            .collect();
        for spec in stale {
            match self.rtnl.delete_route(&spec).await {
                Ok(()) => {
                    debug!(dst = %spec.destination, "route removed");
                    self.routes.remove(&spec.destination);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        if self.masquerade_cidrs.as_ref() != Some(&plan.all_pod_cidrs) {
            let applied = netlink::nft::NftSocket::new().and_then(|mut socket| {
                socket.apply(&crate::masquerade::batch(&plan.all_pod_cidrs))
            });
            match applied {
                Ok(()) => self.masquerade_cidrs = Some(plan.all_pod_cidrs.clone()),
                Err(e) => problems.push(e.to_string()),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Apply(problems))
        }
    }

    async fn ensure_vxlan(
        &mut self,
        local: &crate::plan::LocalVxlan,
    ) -> Result<u32, netlink::Error> {
        let spec = VxlanSpec {
            name: VXLAN_DEVICE,
            vni: VXLAN_VNI,
            port: VXLAN_PORT,
            local: local.underlay,
            mtu: self.underlay_mtu - VXLAN_OVERHEAD,
            mac: local.mac,
        };
        let index = self.rtnl.ensure_vxlan(&spec).await?;
        for addr in &local.addresses {
            if !self.vxlan_addresses.contains(addr) {
                match self.rtnl.add_address(index, host_prefix(*addr)).await {
                    Ok(()) => {}
                    Err(e) if e.is_exists() => {}
                    Err(e) => return Err(e),
                }
                self.vxlan_addresses.insert(*addr);
            }
        }
        self.rtnl.set_up(index).await?;
        Ok(index)
    }
}

/// The routes in the kernel tagged with kubewire's protocol: the agent's own.
async fn owned_routes(rtnl: &Rtnl) -> Result<Vec<RouteSpec>, Error> {
    Ok(rtnl
        .routes()
        .await?
        .into_iter()
        .filter(|r| r.protocol == ROUTE_PROTOCOL_KUBEWIRE)
        .map(|r| RouteSpec {
            destination: r.destination,
            gateway: r.gateway,
            dev: r.dev,
            onlink: false,
            protocol: r.protocol,
        })
        .collect())
}

/// Removes everything the agent owns in this namespace: routes tagged with kubewire's
/// protocol, the VXLAN device and the masquerade tables. Keeps going past failures.
pub async fn cleanup() -> Result<(), Error> {
    let rtnl = Rtnl::connect_here()?;
    let mut problems = Vec::new();
    for spec in owned_routes(&rtnl).await? {
        if let Err(e) = rtnl.delete_route(&spec).await {
            problems.push(e.to_string());
        }
    }
    match rtnl.link(VXLAN_DEVICE).await {
        Ok(Some(link)) => {
            if let Err(e) = rtnl.delete_link(link.index).await {
                problems.push(e.to_string());
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(e.to_string()),
    }
    let tables = netlink::nft::NftSocket::new()
        .and_then(|mut socket| socket.apply(&crate::masquerade::cleanup_batch()));
    if let Err(e) = tables {
        problems.push(e.to_string());
    }
    if problems.is_empty() {
        info!("removed the agent's routes, VXLAN device and tables");
        Ok(())
    } else {
        Err(Error::Apply(problems))
    }
}
