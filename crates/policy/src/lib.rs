//! kubewire's network policy: NetworkPolicy (`networking.k8s.io/v1`) and the admin tiers
//! of network-policy-api's ClusterNetworkPolicy ([`admin`]) enforced by `kubewire agent`
//! in each node's nftables, for the node's own pods.
//!
//! The shape is the service proxy's: mirror what policy reads (pods, namespaces,
//! policies: [`model`]), compute the node's verdicts from the whole of it as a pure
//! function ([`compile::desired`]), send only the difference from what the kernel holds
//! in one atomic batch ([`ruleset::Enforcer`]). [`eval`] is the reference the compiled
//! sets are tested against: the API's rules written out plainly.
//!
//! Each node judges its own pods: the egress policies of a pod on the node where the
//! connection starts, the ingress policies on the node where it ends, both on the
//! connection's first packet after DNAT; replies and later packets pass on conntrack
//! state, and a change that allows less cuts the connections it no longer allows
//! ([`cut`]). The packet path is a few set lookups keyed by address, protocol and port,
//! whatever the number of policies or peers ([`compile`], [`ruleset`]).

pub mod admin;
pub mod compile;
pub mod controller;
pub mod cut;
pub mod denied;
pub mod eval;
pub mod model;
pub mod node;
pub mod ruleset;
pub mod server;

#[cfg(test)]
mod tests;

pub use controller::run;
pub use ruleset::{Error, cleanup};

/// Network policy's flags (part of `kubewire agent`'s).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct PolicyArgs {
    /// Enforce NetworkPolicy (`--policy=false` leaves it to another enforcer, or to none).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub policy: bool,
    /// The socket where the CNI plugin waits, during ADD, until a new pod's policies are
    /// in force (its path goes into the CNI config). Empty: no waiting, a new pod may
    /// send before its policies apply.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub policy_socket: std::path::PathBuf,
    /// Log packets policies deny, at most this many per second per node and kind of
    /// denial (the Admin tier, NetworkPolicy, the Baseline tier; each direction), with
    /// the policy and rule that denied them. 0: counted only, not logged.
    #[arg(long, default_value_t = 10)]
    pub policy_log_rate: u32,
    /// The node's NFLOG group the denied packets go to (the agent reads it).
    #[arg(long, default_value_t = 4242)]
    pub policy_log_group: u16,
}

/// Where the agent listens for the CNI plugin, by default (a hostPath in a cluster).
pub const DEFAULT_SOCKET: &str = "/run/kubewire/policy.sock";

impl PolicyArgs {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut socket = std::ffi::OsString::from("--policy-socket=");
        socket.push(&self.policy_socket);
        vec![
            format!("--policy={}", self.policy).into(),
            socket,
            format!("--policy-log-rate={}", self.policy_log_rate).into(),
            format!("--policy-log-group={}", self.policy_log_group).into(),
        ]
    }

    /// Where and how much denied packets are logged, if at all.
    pub fn log(&self) -> Option<ruleset::Log> {
        (self.policy_log_rate > 0).then_some(ruleset::Log {
            group: self.policy_log_group,
            rate: self.policy_log_rate,
        })
    }

    /// The socket the CNI plugin is to wait on, if any.
    pub fn socket(&self) -> Option<&std::path::Path> {
        (self.policy && !self.policy_socket.as_os_str().is_empty())
            .then_some(self.policy_socket.as_path())
    }
}
