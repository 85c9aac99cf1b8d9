//! `mesh`: the service mesh (docs/mesh.md). So far its identity: [`identity`], the
//! issuer that gives each meshed pod a short-lived certificate for its ServiceAccount
//! (`kubewire mesh identity`). The proxy and its injector come next.

pub mod identity;
