//! BGP announcement: the agent's speaker peers with the routers of the BGPPeers that
//! select its node and announces the LoadBalancer addresses the BGPAdvertisements say.
//!
//! - [`codec`]: the messages on the wire.
//! - [`fsm`]: the session state machine, pure.

pub mod codec;
pub mod fsm;
