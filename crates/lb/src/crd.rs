//! MetalLB's API, `metallb.io` (v0.16.1), as Rust types: the objects a user writes
//! (IPAddressPool, L2Advertisement, BGPAdvertisement, BGPPeer, BFDProfile, Community) and
//! the per-Service status objects the announcers write (ServiceL2Status, ServiceBGPStatus).
//! Field names and defaults follow MetalLB's Go types (`api/v1beta1`, `api/v1beta2`); the
//! CRDs themselves are vendored unchanged under `deploy/crds/metallb/`.
//!
//! Every type implements `kube::Resource` by hand (the `derive` feature would pull a
//! proc-macro and a schema generator for six structs).

use std::borrow::Cow;

use k8s_openapi::api::core::v1::SecretReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// The API group of every type here.
pub const GROUP: &str = "metallb.io";

/// The annotation MetalLB's controller writes on a Service: the pool its addresses came
/// from. The announcers read it to match advertisements to the Service.
pub const ALLOCATED_FROM_POOL: &str = "metallb.io/ip-allocated-from-pool";

/// Implements `kube::Resource` for a namespaced `metallb.io` type.
macro_rules! metallb_resource {
    ($ty:ident, $version:literal, $plural:literal) => {
        impl kube::Resource for $ty {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(stringify!($ty))
            }
            fn group(_: &()) -> Cow<'_, str> {
                Cow::Borrowed(GROUP)
            }
            fn version(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($version)
            }
            fn plural(_: &()) -> Cow<'_, str> {
                Cow::Borrowed($plural)
            }
            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A range of addresses Services may get (`addresses`: CIDRs `10.0.0.0/24` or ranges
/// `10.0.0.10-10.0.0.20`, IPv4 or IPv6).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPool {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: IPAddressPoolSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<IPAddressPoolStatus>,
}
metallb_resource!(IPAddressPool, "v1beta1", "ipaddresspools");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolSpec {
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Whether Services that name no pool may get addresses from this one (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_assign: Option<bool>,
    /// Never hand out a `.0` or `.255` address (old consumer routers drop them).
    #[serde(
        default,
        rename = "avoidBuggyIPs",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub avoid_buggy_ips: bool,
    /// Which Services the pool is for, and its priority among the pools that fit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_allocation: Option<ServiceAllocation>,
}

impl IPAddressPoolSpec {
    /// `autoAssign` with MetalLB's default.
    pub fn auto_assign(&self) -> bool {
        self.auto_assign.unwrap_or(true)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAllocation {
    /// Lower numbers are tried first; 0 (unset) comes after every set priority.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespace_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IPAddressPoolStatus {
    #[serde(default, rename = "assignedIPv4")]
    pub assigned_ipv4: i64,
    #[serde(default, rename = "assignedIPv6")]
    pub assigned_ipv6: i64,
    #[serde(default, rename = "availableIPv4")]
    pub available_ipv4: i64,
    #[serde(default, rename = "availableIPv6")]
    pub available_ipv6: i64,
}

/// Announce the addresses of the selected pools over ARP (IPv4) and NDP (IPv6) from one
/// node per address.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct L2Advertisement {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: L2AdvertisementSpec,
}
metallb_resource!(L2Advertisement, "v1beta1", "l2advertisements");

/// Empty pool names and selectors mean every pool; empty node selectors every node.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct L2AdvertisementSpec {
    #[serde(
        default,
        rename = "ipAddressPools",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pools: Vec<String>,
    #[serde(
        default,
        rename = "ipAddressPoolSelectors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// The node interfaces to answer on; empty means every interface.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// Announce the addresses of the selected pools over BGP.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BGPAdvertisement {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BGPAdvertisementSpec,
}
metallb_resource!(BGPAdvertisement, "v1beta1", "bgpadvertisements");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPAdvertisementSpec {
    /// Prefix length of the announced IPv4 route (default 32).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_length: Option<i32>,
    /// Prefix length of the announced IPv6 route (default 128).
    #[serde(
        default,
        rename = "aggregationLengthV6",
        skip_serializing_if = "Option::is_none"
    )]
    pub aggregation_length_v6: Option<i32>,
    /// LOCAL_PREF, for iBGP sessions only; 0 means not sent.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub local_pref: u32,
    /// `AA:NN` standard, `large:AA:BB:CC` large communities, or a Community alias name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<String>,
    #[serde(
        default,
        rename = "ipAddressPools",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pools: Vec<String>,
    #[serde(
        default,
        rename = "ipAddressPoolSelectors",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ip_address_pool_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    /// BGPPeer names to announce to; empty means every peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_selectors: Vec<LabelSelector>,
}

/// A BGP router the nodes peer with (the storage version, v1beta2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BGPPeer {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BGPPeerSpec,
}
metallb_resource!(BGPPeer, "v1beta2", "bgppeers");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BGPPeerSpec {
    #[serde(default, rename = "myASN")]
    pub my_asn: u32,
    #[serde(default, rename = "peerASN", skip_serializing_if = "is_zero_u32")]
    pub peer_asn: u32,
    #[serde(default, rename = "localASN", skip_serializing_if = "is_zero_u32")]
    pub local_asn: u32,
    /// `internal` or `external`: accept the peer's ASN as long as it is (not) ours.
    #[serde(
        default,
        rename = "dynamicASN",
        skip_serializing_if = "Option::is_none"
    )]
    pub dynamic_asn: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_address: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub interface: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_address: String,
    /// Default 179.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    /// Go durations (`90s`); MetalLB's defaults are 90 s hold, a third of it keepalive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_time: Option<String>,
    #[serde(default, rename = "routerID", skip_serializing_if = "String::is_empty")]
    pub router_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_selectors: Vec<LabelSelector>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<SecretReference>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bfd_profile: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enable_graceful_restart: bool,
    #[serde(
        default,
        rename = "ebgpMultiHop",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub ebgp_multi_hop: bool,
    #[serde(default, rename = "vrf", skip_serializing_if = "String::is_empty")]
    pub vrf_name: String,
    #[serde(
        default,
        rename = "disableMP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub disable_mp: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dual_stack_address_family: bool,
}

/// BFD timers for the peers that name this profile (milliseconds; MetalLB's defaults:
/// 300 ms intervals, multiplier 3).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BFDProfile {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: BFDProfileSpec,
}
metallb_resource!(BFDProfile, "v1beta1", "bfdprofiles");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BFDProfileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transmit_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_multiplier: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub echo_mode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive_mode: Option<bool>,
    #[serde(
        default,
        rename = "minimumTtl",
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_ttl: Option<u32>,
}

/// Names for BGP communities, usable in a BGPAdvertisement's `communities`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Community {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: CommunitySpec,
}
metallb_resource!(Community, "v1beta1", "communities");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommunitySpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub communities: Vec<CommunityAlias>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommunityAlias {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Which node announces a Service over ARP/NDP (written by the announcing node's agent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceL2Status {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: ServiceL2StatusStatus,
}
metallb_resource!(ServiceL2Status, "v1beta1", "servicel2statuses");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceL2StatusStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    #[serde(default)]
    pub name: String,
}

/// Which node announces a Service over BGP, and to which peers (written by that node's
/// agent).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceBGPStatus {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub status: ServiceBGPStatusStatus,
}
metallb_resource!(ServiceBGPStatus, "v1beta1", "servicebgpstatuses");

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBGPStatusStatus {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service_namespace: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MetalLB's own sample (`configsamples/`) reads into the types and writes back the
    /// same fields.
    #[test]
    fn pools_and_advertisements_read_as_metallb_writes_them() {
        let pool: IPAddressPool = serde_json::from_value(serde_json::json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": {"name": "first-pool", "namespace": "metallb-system"},
            "spec": {
                "addresses": ["192.168.10.0/24", "fc00:f853:0ccd:e799::/124"],
                "autoAssign": false,
                "avoidBuggyIPs": true,
                "serviceAllocation": {"priority": 50, "namespaces": ["a"]}
            }
        }))
        .unwrap();
        assert_eq!(pool.spec.addresses.len(), 2);
        assert!(!pool.spec.auto_assign());
        assert!(pool.spec.avoid_buggy_ips);
        assert_eq!(pool.spec.service_allocation.as_ref().unwrap().priority, 50);
        let back = serde_json::to_value(&pool.spec).unwrap();
        assert_eq!(back["avoidBuggyIPs"], true);
        assert_eq!(back["serviceAllocation"]["namespaces"][0], "a");

        let peer: BGPPeer = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "bird"},
            "spec": {"myASN": 64500, "peerASN": 64501, "peerAddress": "198.18.0.254",
                     "holdTime": "9s", "ebgpMultiHop": true, "routerID": "10.0.0.1"}
        }))
        .unwrap();
        assert_eq!((peer.spec.my_asn, peer.spec.peer_asn), (64500, 64501));
        assert_eq!(peer.spec.hold_time.as_deref(), Some("9s"));
        assert!(peer.spec.ebgp_multi_hop);
        assert_eq!(peer.spec.router_id, "10.0.0.1");
        assert_eq!(
            <BGPPeer as kube::Resource>::url_path(&(), Some("metallb-system")),
            "/apis/metallb.io/v1beta2/namespaces/metallb-system/bgppeers"
        );
    }
}
