//! The one place kubewire talks to the kernel.
//!
//! Everything that touches the kernel's networking goes through here, over netlink and
//! namespace system calls, never by running `ip` or `nft`: network namespaces
//! ([`netns`]), links, addresses and routes ([`Rtnl`]), nftables ([`nft`]), conntrack entries ([`conntrack`]), the original destination of redirected
//! connections ([`original_destination`]), link-layer frames
//! ([`packet`]: `AF_PACKET` sockets, interfaces' hardware addresses), and
//! per-namespace sysctls ([`sysctl`]). Other crates compute *what* the kernel should hold; this crate only
//! knows *how* to put it there.

pub mod conntrack;
mod error;
pub mod netns;
pub mod nflog;
pub mod nft;
pub mod packet;
mod redirect;
mod rtnl;
pub mod sysctl;

pub use error::{Error, Result};
pub use redirect::original_destination;
pub use rtnl::{
    FdbEntry, LinkInfo, NeighbourInfo, ROUTE_PROTOCOL_KUBEWIRE, RouteInfo, RouteSpec, Rtnl,
    VxlanSpec, default_destination, format_mac, host_prefix,
};
