//! The kernel side of a pod's network: a routed veth pair.
//!
//! ```text
//!  pod namespace                         node namespace
//!  eth0  10.244.1.5/32                   kw3f2a...  (no address)
//!   default via 169.254.1.1  ── veth ──  10.244.1.5/32 dev kw3f2a...
//!   169.254.1.1 lladdr <host side MAC>   10.244.1.5 lladdr <pod MAC>
//! ```
//!
//! No bridge: every packet of the pod is routed by the node, so it crosses the node's
//! netfilter hooks (this kernel has no br_netfilter). The pod's gateway is a fixed
//! link-local address that nobody owns; a permanent neighbour entry points it at the
//! host side's MAC, so the pod never ARPs for it (Calico's trick, without proxy ARP).
//! The node side gets a permanent neighbour entry for the pod too: no ARP or NDP in
//! either direction, and no wait for IPv6 duplicate address detection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;
use netlink::{LinkInfo, RouteSpec, Rtnl, format_mac, host_prefix};

use crate::spec::{CniError, Interface, code};

/// The pod's IPv4 gateway: link-local, owned by no one.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pod's IPv6 gateway.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The pod's gateway for an address of its family.
pub fn gateway_for(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        GATEWAY_V4.into()
    } else {
        GATEWAY_V6.into()
    }
}

/// The node-side veth name for an attachment: `kw` and 12 hex digits of a hash of the
/// container ID and interface name, so DEL and GC find it without any state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms (std's hasher is not).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in container_id.bytes().chain([0]).chain(ifname.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("kw{:012x}", hash >> 16)
}

/// What one attachment looks like in the kernel.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// The pod's namespace file.
    pub netns: &'a Path,
    /// The interface inside the pod.
    pub ifname: &'a str,
    /// The node-side veth.
    pub host_name: &'a str,
    /// MTU of both ends.
    pub mtu: u32,
    /// The pod's addresses.
    pub addresses: &'a [IpAddr],
    /// The node-side veth's alias, [`host_alias`]: which network it belongs to.
    pub alias: &'a str,
}

/// The alias of a node-side veth: `kubewire:<network>:<containerID>:<ifname>`, so GC
/// of one network never touches another network's devices, and `ip link` shows whose
/// veth it is.
pub fn host_alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("kubewire:{network}:{container_id}:{ifname}")
}

fn alias_network(alias: &str) -> Option<&str> {
    alias.strip_prefix("kubewire:")?.split(':').next()
}

fn interface(link: &LinkInfo, sandbox: Option<&Path>) -> Interface {
    Interface {
        name: link.name.clone(),
        mac: format_mac(&link.mac),
        mtu: Some(link.mtu),
        sandbox: sandbox.map(|p| p.display().to_string()),
    }
}

fn exists_error(ifname: &str, netns: &Path) -> CniError {
    CniError::new(
        code::INTERFACE_EXISTS,
        format!("interface {ifname} already exists in {}", netns.display()),
        "ADD never reuses an existing interface; DEL the attachment first",
    )
}

/// Fails if the pod already has `ifname` (checked before anything is allocated).
/// Returns the connection into the pod's namespace, for [`attach`] to reuse.
pub async fn ensure_absent(netns: &Path, ifname: &str) -> Result<Rtnl, CniError> {
    let pod = connect_pod(netns)?;
    if pod.link(ifname).await?.is_some() {
        return Err(exists_error(ifname, netns));
    }
    Ok(pod)
}

fn connect_pod(netns: &Path) -> Result<Rtnl, CniError> {
    Rtnl::connect_in_path(netns).map_err(|e| {
        if e.is_not_found() {
            CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("network namespace {} does not exist", netns.display()),
                "",
            )
        } else {
            e.into()
        }
    })
}

/// Creates the veth pair, addresses, neighbours and routes. On failure the caller
/// calls [`detach_now`], which removes whatever part of this was made.
/// `pod` is a connection into the pod's namespace, from [`ensure_absent`].
pub async fn attach(a: &Attachment<'_>, pod: &Rtnl) -> Result<[Interface; 2], CniError> {
    let node = Rtnl::connect_here()?;
    // A node-side veth of this name is the leftover of a killed ADD for this very
    // attachment (the name is derived from it): remove it and start clean.
    if let Some(stale) = node.link(a.host_name).await? {
        node.delete_link(stale.index).await?;
    }
    let netns_file = std::fs::File::open(a.netns).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("opening {}", a.netns.display()),
            e.to_string(),
        )
    })?;
    let host_index = node
        .add_veth_into(a.host_name, a.ifname, netns_file.as_fd(), a.mtu, a.alias)
        .await
        .map_err(|e| {
            // The pod's side appeared since ensure_absent looked: a concurrent ADD.
            if e.is_exists() {
                exists_error(a.ifname, a.netns)
            } else {
                e.into()
            }
        })?;
    let host_link = node
        .link_by_index(host_index)
        .await?
        .ok_or_else(|| netlink::Error::LinkNotFound(a.host_name.to_owned()))?;
    let pod_link = pod
        .link(a.ifname)
        .await?
        .ok_or_else(|| netlink::Error::LinkNotFound(a.ifname.to_owned()))?;

    for ip in a.addresses {
        pod.add_address(pod_link.index, host_prefix(*ip)).await?;
    }
    pod.set_up(pod_link.index).await?;
    let mut families_done = (false, false);
    for ip in a.addresses {
        let gw = gateway_for(*ip);
        let first_of_family = if ip.is_ipv4() {
            !std::mem::replace(&mut families_done.0, true)
        } else {
            !std::mem::replace(&mut families_done.1, true)
        };
        if !first_of_family {
            continue;
        }
        pod.add_neighbour(pod_link.index, gw, &host_link.mac)
            .await?;
        if gw.is_ipv4() {
            // IPv4 needs a route to the gateway itself; IPv6's fe80::/64 is on-link.
            pod.add_route_spec(&RouteSpec::direct(host_prefix(gw), pod_link.index))
                .await?;
        }
        pod.add_route_spec(&RouteSpec {
            destination: netlink::default_destination(*ip),
            gateway: Some(gw),
            dev: Some(pod_link.index),
            onlink: false,
            protocol: 0,
        })
        .await?;
    }

    node.set_up(host_index).await?;
    // The pod's side was up before its peer, so its carrier came on just now and its
    // queue works only once the kernel's link-watch work has run: a reply the pod sent
    // before that would be dropped. Wait for it (microseconds, or more on a busy node)
    // so the pod can talk when ADD returns; past the bound the link still comes up.
    pod.wait_running(pod_link.index, std::time::Duration::from_secs(2))
        .await?;
    for ip in a.addresses {
        node.add_neighbour(host_index, *ip, &pod_link.mac).await?;
        node.add_route_spec(&RouteSpec::direct(host_prefix(*ip), host_index))
            .await?;
    }
    Ok([
        interface(&host_link, None),
        interface(&pod_link, Some(a.netns)),
    ])
}

/// What [`detach`] left for the background: a node-side veth that is down (so its
/// routes are gone and the pod is cut off) but not yet unregistered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unregister {
    /// Its index: unlike the name, not reused by a new ADD of the same attachment.
    pub index: u32,
    /// Its name, checked again before deleting.
    pub name: String,
}

/// Detaches an attachment. With the node-side veth present, it goes down at once: the
/// kernel drops its routes and the pod loses its link, so the pod is off the network
/// when DEL returns. Unregistering the device costs 17-30 ms of RCU waits in the
/// kernel; that part is returned as [`Unregister`] for the caller to finish off DEL's
/// path. If only the pod side is left, that is deleted here. Nothing there, or no
/// namespace any more, is success: DEL is idempotent.
pub async fn detach(
    netns: Option<&Path>,
    ifname: &str,
    host_name: &str,
) -> Result<Option<Unregister>, CniError> {
    let node = Rtnl::connect_here()?;
    if let Some(link) = node.link(host_name).await? {
        node.set_down(link.index).await?;
        return Ok(Some(Unregister {
            index: link.index,
            name: link.name,
        }));
    }
    detach_pod_side(netns, ifname).await?;
    Ok(None)
}

/// Removes an attachment completely before returning (ADD's rollback).
pub async fn detach_now(
    netns: Option<&Path>,
    ifname: &str,
    host_name: &str,
) -> Result<(), CniError> {
    if delete_host_side(host_name).await? {
        return Ok(());
    }
    detach_pod_side(netns, ifname).await
}

async fn detach_pod_side(netns: Option<&Path>, ifname: &str) -> Result<(), CniError> {
    let Some(netns) = netns else { return Ok(()) };
    let pod = match Rtnl::connect_in_path(netns) {
        Ok(pod) => pod,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if let Some(link) = pod.link(ifname).await? {
        pod.delete_link(link.index).await?;
    }
    Ok(())
}

/// Unregisters a veth that [`detach`] took down, if it is still that veth and still
/// down (a new ADD of the same attachment makes a new device with a new index).
pub async fn unregister(u: &Unregister) -> Result<(), CniError> {
    let node = Rtnl::connect_here()?;
    match node.link_by_index(u.index).await? {
        Some(link) if link.name == u.name && !link.up => Ok(node.delete_link(u.index).await?),
        _ => Ok(()),
    }
}

/// Deletes every node-side veth of `network` whose name is not in `keep` (GC's sweep,
/// which also finds devices whose background unregister never ran). Returns the names
/// deleted.
pub async fn sweep_host_side(
    network: &str,
    keep: &std::collections::BTreeSet<String>,
) -> Result<Vec<String>, CniError> {
    let node = Rtnl::connect_here()?;
    let mut deleted = Vec::new();
    for link in node.links().await? {
        if alias_network(&link.alias) == Some(network) && !keep.contains(&link.name) {
            node.delete_link(link.index).await?;
            deleted.push(link.name);
        }
    }
    Ok(deleted)
}

/// Deletes the node-side veth of an attachment (its pod-side peer goes with it) if it
/// is there; returns whether it was ([`detach_now`]).
pub async fn delete_host_side(host_name: &str) -> Result<bool, CniError> {
    let node = Rtnl::connect_here()?;
    match node.link(host_name).await? {
        Some(link) => {
            node.delete_link(link.index).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// What CHECK finds: the differences between the kernel and the expected attachment.
pub async fn differences(
    a: &Attachment<'_>,
    expect_routes: &[(IpNet, Option<IpAddr>)],
) -> Result<Vec<String>, CniError> {
    let mut diffs = Vec::new();
    let node = Rtnl::connect_here()?;
    let pod = connect_pod(a.netns)?;
    let Some(pod_link) = pod.link(a.ifname).await? else {
        diffs.push(format!(
            "interface {} is missing in {}",
            a.ifname,
            a.netns.display()
        ));
        return Ok(diffs);
    };
    if !pod_link.up {
        diffs.push(format!("interface {} is down", a.ifname));
    }
    let have: Vec<IpAddr> = pod
        .addresses(pod_link.index)
        .await?
        .iter()
        .map(IpNet::addr)
        .collect();
    for ip in a.addresses {
        if !have.contains(ip) {
            diffs.push(format!("address {ip} is missing on {}", a.ifname));
        }
    }
    let routes = pod.routes().await?;
    for (dst, gw) in expect_routes {
        if !routes
            .iter()
            .any(|r| r.destination == *dst && (gw.is_none() || r.gateway == *gw))
        {
            diffs.push(format!(
                "route to {dst}{} is missing",
                gw.map(|g| format!(" via {g}")).unwrap_or_default()
            ));
        }
    }
    match node.link(a.host_name).await? {
        None => diffs.push(format!("node-side interface {} is missing", a.host_name)),
        Some(host) => {
            let node_routes = node.routes().await?;
            for ip in a.addresses {
                if !node_routes
                    .iter()
                    .any(|r| r.destination == host_prefix(*ip) && r.dev == Some(host.index))
                {
                    diffs.push(format!("node route to {ip} via {} is missing", a.host_name));
                }
            }
        }
    }
    Ok(diffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc123", "eth0");
        assert_eq!(a, host_veth_name("abc123", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("kw"), "{a}");
        assert_ne!(a, host_veth_name("abc123", "eth1"));
        assert_ne!(a, host_veth_name("abc12", "3eth0"));
    }

    #[test]
    fn aliases_name_the_network() {
        let alias = host_alias("kubewire", "abc", "eth0");
        assert_eq!(alias, "kubewire:kubewire:abc:eth0");
        assert_eq!(alias_network(&alias), Some("kubewire"));
        assert_eq!(alias_network("something else"), None);
    }

    #[test]
    fn gateways_by_family() {
        assert_eq!(
            gateway_for("10.0.0.1".parse().unwrap()).to_string(),
            "169.254.1.1"
        );
        assert_eq!(
            gateway_for("fd00::1".parse().unwrap()).to_string(),
            "fe80::1"
        );
    }
}
