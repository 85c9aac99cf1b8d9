//! BGP announcement: the agent's speaker peers with the routers of the BGPPeers that
//! select its node and announces the LoadBalancer addresses the BGPAdvertisements say.
//!
//! - [`codec`]: the messages on the wire.
//! - [`bfd`]: BFD (RFC 5880/5881) for peers with a BFDProfile.
//! - [`fsm`]: the session state machine, pure.
//! - [`plan`]: which routes this node sends to which peer, pure.
//! - [`session`]: one peer's TCP session driving the state machine.
//! - [`speaker`]: the sessions of this node, brought to each new plan.
//! - [`run`]: the announcer the agent runs: view in, sessions, statuses and Events out.

pub use run::{BgpArgs, Error, run};

pub mod bfd;
pub mod codec;
pub mod fsm;
pub mod plan;
pub mod run;
pub mod session;
pub mod speaker;
