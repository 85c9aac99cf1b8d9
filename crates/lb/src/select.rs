//! Which advertisement applies to which address, node and Service: MetalLB's matching
//! rules, written once for the L2 and the BGP announcers.
//!
//! An advertisement (L2Advertisement or BGPAdvertisement) names pools by name and by
//! label selector; both empty means every pool. Node and Service selectors: empty means
//! every node (Service), otherwise any one selector matching is enough.

use std::collections::BTreeMap;

use k8s::labels::selects;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::crd::{ALLOCATED_FROM_POOL, BGPAdvertisementSpec, IPAddressPool, L2AdvertisementSpec};

/// What an object without labels is matched against.
static NO_LABELS: BTreeMap<String, String> = BTreeMap::new();

/// The selection part that L2 and BGP advertisements share.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub pools: &'a [String],
    pub pool_selectors: &'a [LabelSelector],
    pub node_selectors: &'a [LabelSelector],
    pub service_selectors: &'a [LabelSelector],
}

impl<'a> From<&'a L2AdvertisementSpec> for Selection<'a> {
    fn from(s: &'a L2AdvertisementSpec) -> Self {
        Selection {
            pools: &s.ip_address_pools,
            pool_selectors: &s.ip_address_pool_selectors,
            node_selectors: &s.node_selectors,
            service_selectors: &s.service_selectors,
        }
    }
}

impl<'a> From<&'a BGPAdvertisementSpec> for Selection<'a> {
    fn from(s: &'a BGPAdvertisementSpec) -> Self {
        Selection {
            pools: &s.ip_address_pools,
            pool_selectors: &s.ip_address_pool_selectors,
            node_selectors: &s.node_selectors,
            service_selectors: &s.service_selectors,
        }
    }
}

impl Selection<'_> {
    /// Whether the advertisement covers `pool` (by name, or by its labels).
    pub fn selects_pool(&self, pool: &IPAddressPool) -> bool {
        if self.pools.is_empty() && self.pool_selectors.is_empty() {
            return true;
        }
        let name = pool.metadata.name.as_deref().unwrap_or_default();
        self.pools.iter().any(|p| p == name)
            || self
                .pool_selectors
                .iter()
                .any(|s| selects(s, pool.metadata.labels.as_ref().unwrap_or(&NO_LABELS)))
    }

    /// Whether a node with these labels may announce.
    pub fn selects_node(&self, node_labels: &BTreeMap<String, String>) -> bool {
        any_or_empty(self.node_selectors, node_labels)
    }

    /// Whether the Service's addresses are announced by this advertisement.
    pub fn selects_service(&self, svc: &Service) -> bool {
        let labels = svc.metadata.labels.as_ref().unwrap_or(&NO_LABELS);
        any_or_empty(self.service_selectors, labels)
    }
}

fn any_or_empty(selectors: &[LabelSelector], labels: &BTreeMap<String, String>) -> bool {
    selectors.is_empty() || selectors.iter().any(|s| selects(s, labels))
}

/// The pool a Service's addresses were allocated from, as the allocation controller
/// recorded it. A Service without it (an address written by hand, or by another
/// implementation) is not announced, as MetalLB's speakers do with an address in no pool.
pub fn allocated_pool(svc: &Service) -> Option<&str> {
    svc.metadata
        .annotations
        .as_ref()?
        .get(ALLOCATED_FROM_POOL)
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pool(name: &str, labels: &[(&str, &str)]) -> IPAddressPool {
        IPAddressPool {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn empty_selection_takes_every_pool_node_and_service() {
        let ad = L2AdvertisementSpec::default();
        let sel = Selection::from(&ad);
        assert!(sel.selects_pool(&pool("any", &[])));
        assert!(sel.selects_node(&BTreeMap::new()));
        assert!(sel.selects_service(&Service::default()));
    }

    #[test]
    fn pools_by_name_or_by_label() {
        let ad = BGPAdvertisementSpec {
            ip_address_pools: vec!["gold".into()],
            ip_address_pool_selectors: vec![LabelSelector {
                match_labels: Some([("tier".to_string(), "silver".to_string())].into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let sel = Selection::from(&ad);
        assert!(sel.selects_pool(&pool("gold", &[])));
        assert!(sel.selects_pool(&pool("other", &[("tier", "silver")])));
        assert!(!sel.selects_pool(&pool("bronze", &[("tier", "bronze")])));
    }

    #[test]
    fn node_selectors_any_one_matches() {
        let zone = |z: &str| LabelSelector {
            match_labels: Some([("zone".to_string(), z.to_string())].into()),
            ..Default::default()
        };
        let ad = L2AdvertisementSpec {
            node_selectors: vec![zone("a"), zone("b")],
            ..Default::default()
        };
        let sel = Selection::from(&ad);
        assert!(sel.selects_node(&[("zone".to_string(), "b".to_string())].into()));
        assert!(!sel.selects_node(&[("zone".to_string(), "c".to_string())].into()));
    }
}
