//! The gateway (`kubewire gateway`): a controller and an L7/L4 proxy in one process.
//!
//! - [`config`]: the routing configuration, pure data. The controller compiles it from
//!   Ingresses, Gateway API objects and Emissary Mappings; the data plane serves it, and a
//!   new one replaces the old atomically.
//! - [`proxy`]: the data plane that serves it: HTTP/1.1, HTTP/2, TLS (terminated or passed
//!   through by SNI), TCP and UDP.

pub mod config;
pub mod proxy;
