//! `mesh`: the service mesh (docs/mesh.md). So far its identity: [`identity`], the
//! issuer that gives each meshed pod a short-lived certificate for its ServiceAccount
//! (`kubewire mesh identity`) and the proxy's client of it; and [`tls`], mutual TLS
//! between proxies with those certificates; [`destination`], the node's discovery for
//! proxies; and [`proxy`], `kubewire mesh proxy`. The injector comes next.

pub mod destination;
pub mod identity;
pub mod proxy;
pub mod tls;
