//! `mesh`: the service mesh (docs/mesh.md). So far its identity: [`identity`], the
//! issuer that gives each meshed pod a short-lived certificate for its ServiceAccount
//! (`kubewire mesh identity`) and the proxy's client of it; and [`tls`], mutual TLS
//! between proxies with those certificates. The proxy and its injector come next.

pub mod identity;
pub mod tls;
