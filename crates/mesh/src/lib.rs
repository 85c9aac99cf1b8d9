//! `mesh`: the service mesh (docs/mesh.md). So far its identity: [`identity`], the
//! issuer that gives each meshed pod a short-lived certificate for its ServiceAccount
//! (`kubewire mesh identity`) and the proxy's client of it; and [`tls`], mutual TLS
//! between proxies with those certificates; [`destination`], the node's discovery for
//! proxies; [`proxy`], `kubewire mesh proxy`; and [`injector`], the admission webhook
//! that adds the proxy to the pods that ask for the mesh; [`authz`], Linkerd's inbound
//! authorization policy, resolved by discovery and enforced by the proxy; [`top`],
//! `kubewire mesh top`, the meshed workloads' golden metrics, live.

pub mod authz;
pub mod destination;
mod https;
pub mod identity;
pub mod injector;
pub mod proxy;
pub mod tls;
pub mod top;
