//! Link-layer frames: an `AF_PACKET` socket bound to one interface that receives the
//! frames a classic BPF filter lets through and sends whole Ethernet frames, and the
//! interfaces' hardware addresses (from `getifaddrs`).
//!
//! What answers ARP and NDP in user space (the LoadBalancer L2 announcer) needs both:
//! the frames reach the socket before the kernel's own neighbour code sees them, and
//! the replies carry the interface's MAC. The filter runs in the kernel, so the socket
//! is woken only for the frames it wants, not for every frame on the wire.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sys::socket::{
    AddressFamily, LinkAddr, MsgFlags, SockFlag, SockProtocol, SockType, bind, recvfrom, send,
    socket,
};
use tokio::io::unix::AsyncFd;

/// One instruction of a classic BPF program (`struct sock_filter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BpfInsn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

/// A network interface as the link layer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    /// The hardware address (all zero on links without one, such as loopback).
    pub mac: [u8; 6],
    /// Up and running (carrier).
    pub up: bool,
    /// The addresses it holds.
    pub addrs: Vec<IpAddr>,
    /// The `sockaddr_ll` the kernel describes it with: what a packet socket binds to.
    sockaddr: LinkAddr,
}

/// Every interface of the current network namespace that has a link-layer address,
/// by name.
pub fn links() -> io::Result<BTreeMap<String, Link>> {
    let entries: Vec<_> = getifaddrs().map_err(io::Error::from)?.collect();
    let mut links = BTreeMap::new();
    for e in &entries {
        if let Some(ll) = e.address.as_ref().and_then(|a| a.as_link_addr()) {
            let up = e.flags.contains(InterfaceFlags::IFF_UP)
                && e.flags.contains(InterfaceFlags::IFF_RUNNING);
            links.insert(
                e.interface_name.clone(),
                Link {
                    name: e.interface_name.clone(),
                    index: ll.ifindex() as u32,
                    mac: ll.addr().unwrap_or_default(),
                    up,
                    addrs: Vec::new(),
                    sockaddr: *ll,
                },
            );
        }
    }
    for e in &entries {
        let Some(link) = links.get_mut(&e.interface_name) else {
            continue;
        };
        let Some(a) = e.address.as_ref() else {
            continue;
        };
        if let Some(v4) = a.as_sockaddr_in() {
            link.addrs.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = a.as_sockaddr_in6() {
            link.addrs.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(links)
}

/// An `AF_PACKET` raw socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    fd: AsyncFd<socket2::Socket>,
    link: String,
}

impl PacketSocket {
    /// Opens a socket on `link` that receives the frames `filter` accepts (incoming
    /// ones: the filter should drop `PACKET_OUTGOING`, see [`SKF_AD_PKTTYPE`]).
    /// Needs `CAP_NET_RAW`. Must be called within a tokio runtime.
    pub fn bind(link: &Link, filter: &[BpfInsn]) -> io::Result<PacketSocket> {
        let fd: OwnedFd = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .map_err(io::Error::from)?;
        let sock = socket2::Socket::from(fd);
        let program: Vec<socket2::SockFilter> = filter
            .iter()
            .map(|i| socket2::SockFilter::new(i.code, i.jt, i.jf, i.k))
            .collect();
        sock.attach_filter(&program)?;
        // The address's protocol is 0, which keeps the socket's own (all of them):
        // the filter chooses.
        bind(sock.as_raw_fd(), &link.sockaddr).map_err(io::Error::from)?;
        // Frames of other interfaces queued before the bind.
        let mut buf = [0u8; 64];
        while recvfrom::<LinkAddr>(sock.as_raw_fd(), &mut buf).is_ok() {}
        // Deprecated as unsound for an inner type whose descriptor can be closed while
        // registered; a socket2::Socket owns its descriptor and closes it only when
        // dropped, which the AsyncFd does after deregistering it. (The replacement,
        // `register`, is `unsafe`, which this workspace forbids.)
        #[allow(deprecated)]
        let fd = AsyncFd::new(sock)?;
        Ok(PacketSocket {
            fd,
            link: link.name.clone(),
        })
    }

    /// The interface it is bound to.
    pub fn link(&self) -> &str {
        &self.link
    }

    /// Waits for the next frame; returns its length in `buf` (truncated to it).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|s| {
                recvfrom::<LinkAddr>(s.get_ref().as_raw_fd(), buf)
                    .map(|(n, _)| n)
                    .map_err(io::Error::from)
            }) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends one whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        send(self.fd.get_ref().as_raw_fd(), frame, MsgFlags::empty())
            .map(drop)
            .map_err(io::Error::from)
    }
}

/// The `k` of a BPF load of the packet type (`SKF_AD_OFF + SKF_AD_PKTTYPE`): 4 is
/// `PACKET_OUTGOING`.
pub const SKF_AD_PKTTYPE: u32 = 0xffff_f004;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_addresses() {
        let links = links().unwrap();
        let lo = &links["lo"];
        assert_eq!(lo.mac, [0; 6]);
        assert!(lo.addrs.contains(&IpAddr::from([127, 0, 0, 1])));
    }
}
