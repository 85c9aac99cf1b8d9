//! LoadBalancer addresses, MetalLB's job: its API (`metallb.io`, served unchanged so a
//! user's MetalLB configuration applies as it is) as Rust types, shared by the allocation
//! controller and the agent's announcers.

pub mod alloc;
pub mod announce;
pub mod bgp;
pub mod controller;
pub mod crd;
pub mod l2;
pub mod pool;
pub mod select;
