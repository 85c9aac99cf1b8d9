//! The gateway (`kubewire gateway`): a controller and an L7/L4 proxy in one process.
//!
//! - [`config`]: the routing configuration, pure data. The controller compiles it from
//!   Ingresses, Gateway API objects and Emissary Mappings; the data plane serves it, and a
//!   new one replaces the old atomically.
//! - [`compile`]: the controller's pure function, everything watched ([`world::World`]) in,
//!   the [`config::Config`] and every status to write out; one module per API:
//!   [`ingress`], [`gatewayapi`], [`mapping`] (with [`template`], Envoy's `%...%` header
//!   operators), assembled by `build`.
//! - [`controller`]: the watches that keep a [`world::World`], the compile, the Config sent
//!   on a `watch` channel, and the statuses written (by the leader of the replicas).
//! - [`proxy`]: the data plane that serves it: HTTP/1.1, HTTP/2, TLS (terminated or passed
//!   through by SNI), TCP and UDP.

pub mod config;
pub mod controller;
pub mod gatewayapi;
pub mod ingress;
pub mod mapping;
pub mod proxy;
pub mod status;
pub mod template;
pub mod world;

mod build;

pub use controller::Args;

/// What the compile decides.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    pub config: config::Config,
    pub statuses: Vec<status::Update>,
    /// The Service each Gateway of ours should have (the controller makes them so).
    pub services: Vec<gatewayapi::services::GatewayService>,
}

/// Everything watched in, the routing configuration and the statuses out. Gateway API
/// listeners are bound to ports of their own (a Service per Gateway); Ingresses are
/// served on 80 and 443 and Mappings on 80 of the gateway's own Service, where on a
/// host both have, Ingress routes are tried first.
pub fn compile(world: &world::World) -> Compiled {
    let mut b = build::Builder::default();
    let mut statuses = Vec::new();
    world.backends.clear();
    world.services_read.take();
    let services = gatewayapi::compile(world, &mut b, &mut statuses);
    ingress::compile(world, &mut b, &mut statuses);
    mapping::compile(world, &mut b, &mut statuses);
    world.backends.clear();
    statuses.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));
    Compiled {
        config: b.finish(),
        statuses,
        services,
    }
}
