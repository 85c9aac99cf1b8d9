//! The lab: a whole cluster on one Linux machine, built from network namespaces.
//!
//! The lab's network is a small datacenter: an *underlay* namespace holding a bridge
//! (the switch), one namespace per *node* plugged into it, and an *outside* namespace
//! that plays the world beyond the cluster. Nothing is added to the host's own
//! namespace, and [`down`] removes everything [`up`] made, even after a crash.

pub mod cluster;
mod config;
mod error;
mod processes;
mod progress;
pub mod router;
mod topology;

pub use cni::spec::RoutingMode;
pub use config::{LabConfig, LoadBalancerMode, MAX_NODES, Role};
pub use error::{Error, Result};
pub use processes::Process;
pub use progress::{Progress, Step};
pub use topology::{LabState, NodeState, down, down_with, exec, status, up};
