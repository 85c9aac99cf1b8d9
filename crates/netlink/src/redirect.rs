//! Where a redirected connection was going: a connection an nftables `redirect` (or
//! iptables `REDIRECT`) sent to a local listener still knows its original destination
//! in conntrack, which `SO_ORIGINAL_DST` reads back.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

/// The destination `conn` had before it was redirected to this host, or its own local
/// address when it was not redirected (no NAT entry: the kernel answers `ENOENT`).
pub fn original_destination(conn: &impl AsFd) -> io::Result<SocketAddr> {
    let sock = socket2::SockRef::from(conn);
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("not an IP socket"))?;
    let original = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    match original {
        Ok(addr) => addr
            .as_socket()
            .ok_or_else(|| io::Error::other("SO_ORIGINAL_DST is not an IP address")),
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ENOENT as i32) => Ok(local),
        Err(e) => Err(e),
    }
}
