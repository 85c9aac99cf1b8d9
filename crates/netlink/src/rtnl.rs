//! Links, addresses, routes, neighbours and VXLAN forwarding entries over rtnetlink,
//! bound to one network namespace.

use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Error, Result, netns};

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware (MAC) address; empty for links without one (loopback).
    pub mac: Vec<u8>,
    /// Whether the link is administratively up.
    pub up: bool,
    /// Whether its operational state is up (`IFF_RUNNING`). The kernel sets it, and
    /// gives the link a working queue, from its link-watch work some time after the
    /// carrier came on; until then what the link sends is dropped.
    pub running: bool,
    /// The link's alias (`ip link set X alias ...`), empty if none.
    pub alias: String,
}

/// A route in the main table, as far as kubewire cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    /// Destination prefix (`0.0.0.0/0` / `::/0` for default routes).
    pub destination: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output link index, if any.
    pub dev: Option<u32>,
    /// Who installed it (`rtm_protocol`): the agent tags its routes with
    /// [`ROUTE_PROTOCOL_KUBEWIRE`] so it can find exactly its own after a restart.
    pub protocol: u8,
}

/// The `rtm_protocol` of routes kubewire's agent installs (`ip route` shows `proto 75`;
/// 75 is unassigned in iproute2's rt_protos).
pub const ROUTE_PROTOCOL_KUBEWIRE: u8 = 75;

/// A route to add: where to, via which next hop, out of which link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Destination prefix.
    pub destination: IpNet,
    /// Next hop, if any.
    pub gateway: Option<IpAddr>,
    /// Output link, if any.
    pub dev: Option<u32>,
    /// Treat the gateway as directly reachable on `dev` even with no route to it (the
    /// pod's link-local gateway is such a next hop).
    pub onlink: bool,
    /// `rtm_protocol` to tag the route with; 0 leaves rtnetlink's default, `static`
    /// (`ip route` shows `proto static`).
    pub protocol: u8,
}

impl RouteSpec {
    /// A route to `destination` straight out of link `dev` (scope link).
    pub fn direct(destination: IpNet, dev: u32) -> Self {
        RouteSpec {
            destination,
            gateway: None,
            dev: Some(dev),
            onlink: false,
            protocol: 0,
        }
    }
}

/// The destination of a default route in `ip`'s family: `0.0.0.0/0` or `::/0`.
pub fn default_destination(ip: IpAddr) -> IpNet {
    let any: IpAddr = match ip {
        IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
    };
    IpNet::new(any, 0).expect("prefix 0 is valid")
}

/// The host prefix of an address: `/32` or `/128`.
pub fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix")
}

/// A forwarding entry of a device that has a remote destination (a VXLAN device's
/// `bridge fdb` entry: frames for `mac` go to the VTEP `destination`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FdbEntry {
    /// The MAC the frames are for.
    pub mac: Vec<u8>,
    /// The remote endpoint they are sent to.
    pub destination: IpAddr,
}

/// A neighbour (ARP / NDP) entry of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighbourInfo {
    /// The neighbour's address.
    pub ip: IpAddr,
    /// Its link-layer address, if resolved.
    pub mac: Option<Vec<u8>>,
    /// Whether the entry is permanent (set by hand or by an agent, never expires).
    pub permanent: bool,
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl LinkInfo {
    fn from_message(msg: &LinkMessage) -> Self {
        let up = msg
            .header
            .flags
            .contains(netlink_packet_route::link::LinkFlags::Up);
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            mtu: 0,
            mac: Vec::new(),
            up,
            running: false,
            alias: String::new(),
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => info.name.clone_from(name),
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Address(mac) => info.mac.clone_from(mac),
                LinkAttribute::IfAlias(alias) => info.alias.clone_from(alias),
                LinkAttribute::OperState(state) => {
                    info.running = *state == netlink_packet_route::link::State::Up;
                }
                _ => {}
            }
        }
        info
    }
}

/// An rtnetlink socket bound to one network namespace.
///
/// The socket belongs to the namespace it was opened in for its whole life, so a
/// handle made with [`Rtnl::connect_in`] configures that namespace from any thread.
#[derive(Debug)]
pub struct Rtnl {
    handle: rtnetlink::Handle,
    connection: tokio::task::JoinHandle<()>,
}

impl Drop for Rtnl {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl Rtnl {
    /// Opens a socket in the calling thread's namespace. Needs a current tokio runtime.
    pub fn connect_here() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::sys("opening rtnetlink socket", e))?;
        Ok(Rtnl {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// Opens a socket inside the named namespace. Needs a current tokio runtime.
    pub fn connect_in(netns_name: &str) -> Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = netns::run_in(netns_name, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(|e| Error::sys(format!("opening rtnetlink socket in {netns_name}"), e))?;
        Ok(Rtnl {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// Opens a socket inside the namespace whose file is at `path` (for example a
    /// container runtime's `CNI_NETNS`). Needs a current tokio runtime.
    pub fn connect_in_path(path: &std::path::Path) -> Result<Self> {
        let runtime = tokio::runtime::Handle::current();
        let (connection, handle, _) = netns::run_in_path(path, move || {
            let _entered = runtime.enter();
            rtnetlink::new_connection()
        })?
        .map_err(|e| Error::sys(format!("opening rtnetlink socket in {}", path.display()), e))?;
        Ok(Rtnl {
            handle,
            connection: tokio::spawn(connection),
        })
    }

    /// All links in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink("listing links", e))?;
        Ok(msgs.iter().map(LinkInfo::from_message).collect())
    }

    /// The link called `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        let result: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute()
            .try_collect()
            .await;
        match result {
            Ok(msgs) => Ok(msgs.first().map(LinkInfo::from_message)),
            Err(e) => {
                let err = Error::netlink(format!("looking up link {name}"), e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// The link with index `index`, if there is one.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkInfo>> {
        let result: Result<Vec<LinkMessage>, _> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await;
        match result {
            Ok(msgs) => Ok(msgs.first().map(LinkInfo::from_message)),
            Err(e) => {
                let err = Error::netlink(format!("looking up link {index}"), e);
                if err.is_not_found() {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Index of the link called `name`.
    pub async fn link_index(&self, name: &str) -> Result<u32> {
        self.link(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| Error::LinkNotFound(name.to_owned()))
    }

    /// Creates a bridge and returns its index.
    pub async fn add_bridge(&self, name: &str) -> Result<u32> {
        self.handle
            .link()
            .add(LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("creating bridge {name}"), e))?;
        self.link_index(name).await
    }

    /// Creates a veth pair `name` <-> `peer`, both in this namespace; returns the
    /// index of `name`.
    pub async fn add_veth(&self, name: &str, peer: &str) -> Result<u32> {
        self.handle
            .link()
            .add(LinkVeth::new(name, peer).build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("creating veth pair {name}/{peer}"), e))?;
        self.link_index(name).await
    }

    /// Creates a veth pair in one request: `name` here, its peer `peer` directly inside
    /// the namespace `peer_netns` (like `ip link add NAME mtu M type veth peer name PEER
    /// netns NS`), both with `mtu`. The peer never exists in this namespace, so its name
    /// cannot collide here. Returns the index of `name`.
    pub async fn add_veth_into(
        &self,
        name: &str,
        peer: &str,
        peer_netns: BorrowedFd<'_>,
        mtu: u32,
        alias: &str,
    ) -> Result<u32> {
        use netlink_packet_route::link::{InfoData, InfoVeth};
        let peer_msg = LinkUnspec::new_with_name(peer)
            .mtu(mtu)
            .setns_by_fd(peer_netns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .mtu(mtu)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("creating veth pair {name}/{peer}"), e))?;
        let index = self.link_index(name).await?;
        // The kernel ignores IFLA_IFALIAS when creating a link; it takes it on a set.
        if !alias.is_empty() {
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).alias(alias).build())
                .execute()
                .await
                .map_err(|e| Error::netlink(format!("setting alias of {name}"), e))?;
        }
        Ok(index)
    }

    /// Moves a link into another namespace, renaming it there if `new_name` is given.
    pub async fn move_to_netns(
        &self,
        index: u32,
        netns_fd: BorrowedFd<'_>,
        new_name: Option<&str>,
    ) -> Result<()> {
        let mut builder = LinkUnspec::new_with_index(index).setns_by_fd(netns_fd.as_raw_fd());
        if let Some(name) = new_name {
            builder = builder.name(name.to_owned());
        }
        self.handle
            .link()
            .set(builder.build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("moving link {index} to another namespace"), e))
    }

    /// Brings a link up.
    pub async fn set_up(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting link {index} up"), e))
    }

    /// Waits, up to `limit`, until link `index` is operationally up ([`LinkInfo::running`]).
    /// Returns whether it got there; a link that is gone is an error.
    pub async fn wait_running(&self, index: u32, limit: std::time::Duration) -> Result<bool> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let link = self
                .link_by_index(index)
                .await?
                .ok_or_else(|| Error::LinkNotFound(format!("index {index}")))?;
            if link.running {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Takes a link down. The kernel drops every route through it at once.
    pub async fn set_down(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .set(LinkUnspec::new_with_index(index).down().build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("setting link {index} down"), e))
    }

    /// Attaches a link to a bridge.
    pub async fn set_controller(&self, index: u32, bridge_index: u32) -> Result<()> {
        self.handle
            .link()
            .set(
                LinkUnspec::new_with_index(index)
                    .controller(bridge_index)
                    .build(),
            )
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(
                    format!("attaching link {index} to bridge {bridge_index}"),
                    e,
                )
            })
    }

    /// Deletes a link. Deleting a link that is already gone is not an error.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::netlink(format!("deleting link {index}"), e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Adds an address to a link. IPv6 addresses skip duplicate address detection: the
    /// lab assigns them uniquely, and DAD would hold them unusable for a second or two.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut request = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        if addr.addr().is_ipv6() {
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding address {addr} to link {index}"), e))
    }

    /// Adds a permanent neighbour (ARP / NDP) entry, or replaces the one for `ip`: `ip`
    /// is at `mac` on link `index`.
    pub async fn add_neighbour(&self, index: u32, ip: IpAddr, mac: &[u8]) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(mac)
            .state(netlink_packet_route::neighbour::NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding neighbour {ip} on link {index}"), e))
    }

    /// The addresses on link `index` (link-local IPv6 addresses included).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>> {
        let msgs: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink(format!("listing addresses of link {index}"), e))?;
        let mut out = Vec::new();
        for msg in msgs {
            for attr in &msg.attributes {
                if let AddressAttribute::Address(ip) = attr
                    && let Ok(net) = IpNet::new(*ip, msg.header.prefix_len)
                {
                    out.push(net);
                }
            }
        }
        Ok(out)
    }

    /// The routes of the main table, IPv4 and IPv6.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>> {
        use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
        let mut out = Vec::new();
        let requests = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for request in requests {
            let msgs: Vec<_> = self
                .handle
                .route()
                .get(request)
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink("listing routes", e))?;
            for msg in msgs {
                if msg.header.table != RouteHeader::RT_TABLE_MAIN {
                    continue;
                }
                let v6 = msg.header.address_family == netlink_packet_route::AddressFamily::Inet6;
                let unspecified: IpAddr = if v6 {
                    std::net::Ipv6Addr::UNSPECIFIED.into()
                } else {
                    std::net::Ipv4Addr::UNSPECIFIED.into()
                };
                let mut info = RouteInfo {
                    destination: IpNet::new(unspecified, 0).expect("prefix 0"),
                    gateway: None,
                    dev: None,
                    protocol: u8::from(msg.header.protocol),
                };
                let addr = |a: &RouteAddress| match a {
                    RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
                    RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
                    _ => None,
                };
                for attr in &msg.attributes {
                    match attr {
                        RouteAttribute::Destination(a) => {
                            if let Some(ip) = addr(a)
                                && let Ok(net) =
                                    IpNet::new(ip, msg.header.destination_prefix_length)
                            {
                                info.destination = net;
                            }
                        }
                        RouteAttribute::Gateway(a) => info.gateway = addr(a),
                        RouteAttribute::Oif(i) => info.dev = Some(*i),
                        _ => {}
                    }
                }
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Adds a route.
    pub async fn add_route_spec(&self, spec: &RouteSpec) -> Result<()> {
        self.handle
            .route()
            .add(route_message(spec)?)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("adding route to {}", spec.destination), e))
    }

    /// Adds a route, or replaces the one to the same destination (so a changed next hop
    /// is one request, and re-applying is harmless).
    pub async fn replace_route(&self, spec: &RouteSpec) -> Result<()> {
        self.handle
            .route()
            .add(route_message(spec)?)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("replacing route to {}", spec.destination), e))
    }

    /// Deletes a route. Deleting a route that is already gone is not an error.
    pub async fn delete_route(&self, spec: &RouteSpec) -> Result<()> {
        match self
            .handle
            .route()
            .del(route_message(spec)?)
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::netlink(format!("deleting route to {}", spec.destination), e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Adds a route to `destination`, through `gateway` and/or out of link `dev`.
    pub async fn add_route(
        &self,
        destination: IpNet,
        gateway: Option<IpAddr>,
        dev: Option<u32>,
    ) -> Result<()> {
        self.add_route_spec(&RouteSpec {
            destination,
            gateway,
            dev,
            onlink: false,
            protocol: 0,
        })
        .await
    }

    /// Creates a VXLAN device without learning (the agent programs every remote VTEP),
    /// sending from the underlay address `local`, and returns its index. An existing
    /// device of that name is kept.
    pub async fn ensure_vxlan(&self, vxlan: &VxlanSpec<'_>) -> Result<u32> {
        if let Some(link) = self.link(vxlan.name).await? {
            return Ok(link.index);
        }
        let mut builder = rtnetlink::LinkVxlan::new(vxlan.name, vxlan.vni)
            .port(vxlan.port)
            .learning(false);
        builder = match vxlan.local {
            IpAddr::V4(v4) => builder.local(v4),
            IpAddr::V6(v6) => builder.local6(v6),
        };
        let msg = builder.mtu(vxlan.mtu).address(vxlan.mac.to_vec()).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("creating VXLAN device {}", vxlan.name), e))?;
        self.link_index(vxlan.name).await
    }

    /// Adds (or replaces) a forwarding entry of a VXLAN device: frames for `mac` go to
    /// the remote VTEP `remote` (`bridge fdb replace MAC dev DEV dst REMOTE`).
    pub async fn replace_fdb(&self, index: u32, mac: &[u8], remote: IpAddr) -> Result<()> {
        let mut request = self
            .handle
            .neighbours()
            .add_bridge(index, mac)
            .destination(remote)
            .replace();
        request.message_mut().header.flags = netlink_packet_route::neighbour::NeighbourFlags::Own;
        request.execute().await.map_err(|e| {
            Error::netlink(
                format!("adding FDB entry for {} on link {index}", format_mac(mac)),
                e,
            )
        })
    }

    /// The forwarding entries of link `index` that send to a remote destination
    /// (`bridge fdb show dev DEV` lines with `dst`); the device's own local entries are
    /// left out.
    pub async fn fdb(&self, index: u32) -> Result<Vec<FdbEntry>> {
        use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
        let msgs: Vec<_> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(netlink_packet_route::AddressFamily::Bridge)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::netlink(format!("listing FDB entries of link {index}"), e))?;
        let mut out = Vec::new();
        for msg in msgs.iter().filter(|m| m.header.ifindex == index) {
            let (mut mac, mut destination) = (None, None);
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(a) => mac = Some(a.clone()),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                        destination = Some(IpAddr::V4(*ip));
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                        destination = Some(IpAddr::V6(*ip));
                    }
                    _ => {}
                }
            }
            if let (Some(mac), Some(destination)) = (mac, destination) {
                out.push(FdbEntry { mac, destination });
            }
        }
        Ok(out)
    }

    /// The neighbour entries (IPv4 and IPv6) of link `index`.
    pub async fn neighbours(&self, index: u32) -> Result<Vec<NeighbourInfo>> {
        use netlink_packet_route::neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourState,
        };
        let mut out = Vec::new();
        for family in [
            netlink_packet_route::AddressFamily::Inet,
            netlink_packet_route::AddressFamily::Inet6,
        ] {
            let msgs: Vec<_> = self
                .handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute()
                .try_collect()
                .await
                .map_err(|e| Error::netlink(format!("listing neighbours of link {index}"), e))?;
            for msg in msgs.iter().filter(|m| m.header.ifindex == index) {
                let (mut ip, mut mac) = (None, None);
                for attr in &msg.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            ip = Some(IpAddr::V4(*a));
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            ip = Some(IpAddr::V6(*a));
                        }
                        NeighbourAttribute::LinkLayerAddress(a) => mac = Some(a.clone()),
                        _ => {}
                    }
                }
                if let Some(ip) = ip {
                    out.push(NeighbourInfo {
                        ip,
                        mac,
                        permanent: msg.header.state == NeighbourState::Permanent,
                    });
                }
            }
        }
        Ok(out)
    }

    /// Deletes the neighbour entry of `ip` on link `index`; a missing one is not an
    /// error.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        let mut request = self.handle.neighbours().add(index, ip);
        let message = request.message_mut().clone();
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::netlink(format!("deleting neighbour {ip} on link {index}"), e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Removes an address from a link; a missing one is not an error.
    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut request = self
            .handle
            .address()
            .add(index, addr.addr(), addr.prefix_len());
        let message = request.message_mut().clone();
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::netlink(format!("deleting address {addr} from link {index}"), e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }

    /// Deletes a forwarding entry of a VXLAN device; a missing one is not an error.
    pub async fn delete_fdb(&self, index: u32, mac: &[u8], remote: IpAddr) -> Result<()> {
        let mut request = self
            .handle
            .neighbours()
            .add_bridge(index, mac)
            .destination(remote);
        request.message_mut().header.flags = netlink_packet_route::neighbour::NeighbourFlags::Own;
        let message = request.message_mut().clone();
        match self.handle.neighbours().del(message).execute().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = Error::netlink(format!("deleting FDB entry for {}", format_mac(mac)), e);
                if err.is_not_found() { Ok(()) } else { Err(err) }
            }
        }
    }
}

/// A VXLAN device to create.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    /// Device name.
    pub name: &'a str,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP port (IANA's is 4789; the Linux kernel's own default, which Flannel also
    /// uses, is 8472).
    pub port: u16,
    /// Underlay source address.
    pub local: IpAddr,
    /// MTU.
    pub mtu: u32,
    /// The device's MAC: remote nodes' FDB and neighbour entries point at it.
    pub mac: [u8; 6],
}

fn route_message(spec: &RouteSpec) -> Result<netlink_packet_route::route::RouteMessage> {
    let RouteSpec {
        destination,
        gateway,
        dev,
        onlink,
        protocol,
    } = spec.clone();
    let bad = |e| Error::sys(format!("route to {destination}"), std::io::Error::other(e));
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(destination.addr(), destination.prefix_len())
        .map_err(bad)?;
    if let Some(gw) = gateway {
        builder = builder.gateway(gw).map_err(bad)?;
    }
    if let Some(dev) = dev {
        builder = builder.output_interface(dev);
    }
    if onlink {
        builder = builder.onlink();
    }
    if gateway.is_none() && dev.is_some() {
        builder = builder.scope(netlink_packet_route::route::RouteScope::Link);
    }
    if protocol != 0 {
        builder = builder.protocol(netlink_packet_route::route::RouteProtocol::from(protocol));
    }
    Ok(builder.build())
}
