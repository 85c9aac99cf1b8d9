//! LoadBalancer addresses, MetalLB's job, configured with MetalLB's own API
//! (`metallb.io`, served unchanged so a user's MetalLB configuration applies as it is):
//!
//! - [`crd`]: that API as Rust types; [`select`]: which advertisement covers which pool,
//!   node and Service;
//! - allocation: pools parsed ([`pool`]), the allocator as a pure function of pools and
//!   Services ([`alloc`]), and the controller that writes the result ([`controller`],
//!   `kubewire lb-controller`);
//! - announcement, run by the agent on every node from one view of the cluster
//!   ([`announce`]): over ARP/NDP from one node per address ([`l2`]) and over BGP to
//!   the configured routers ([`bgp`]).

pub mod alloc;
pub mod announce;
pub mod bgp;
pub mod controller;
pub mod crd;
pub mod l2;
pub mod pool;
pub mod select;
