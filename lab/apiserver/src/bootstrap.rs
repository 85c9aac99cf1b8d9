//! What a fresh kube-apiserver (with its built-in controllers) keeps in place: the system
//! namespaces, a `default` ServiceAccount in every namespace, the two system priority
//! classes, and the `default/kubernetes` Service with its Endpoints and EndpointSlice
//! pointing at the advertise address.

use std::net::{IpAddr, SocketAddr};

use serde_json::{Value, json};

use crate::api::{State, prepare_create};
use crate::error::{Error, Status};
use crate::resources;
use crate::store::{EventType, Txn};

/// Namespaces every cluster has.
const SYSTEM_NAMESPACES: [&str; 4] = ["default", "kube-system", "kube-public", "kube-node-lease"];

/// The first address of a service range: the `kubernetes` service's ClusterIP.
pub(crate) fn first_ip(net: &ipnet::IpNet) -> IpAddr {
    match net.network() {
        IpAddr::V4(v) => IpAddr::V4((u32::from(v) + 1).into()),
        IpAddr::V6(v) => IpAddr::V6((u128::from(v) + 1).into()),
    }
}

/// The priority classes kube-apiserver creates at start (`SystemPriorityClasses`):
/// name, value, description.
pub(crate) const SYSTEM_PRIORITY_CLASSES: [(&str, i64, &str); 2] = [
    (
        "system-node-critical",
        2_000_001_000,
        "Used for system critical pods that must not be moved from their current node.",
    ),
    (
        "system-cluster-critical",
        2_000_000_000,
        "Used for system critical pods that must run in the cluster, but can be moved to another node if necessary.",
    ),
];

/// Creates the system namespaces (each with its `default` ServiceAccount), the system
/// priority classes and the `kubernetes` service when missing.
pub(crate) fn bootstrap(state: &State) -> Result<(), Error> {
    let ns_rt = resources::namespaces();
    let pc_rt = resources::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(Status::not_found_path)?;
    state.store.write(|txn| {
        for (name, value, description) in SYSTEM_PRIORITY_CLASSES {
            let key = pc_rt.key("", name);
            if txn.get(&key)?.is_none() {
                let mut pc = json!({
                    "kind": "PriorityClass", "apiVersion": "scheduling.k8s.io/v1",
                    "metadata": {"name": name}, "value": value, "description": description,
                    "preemptionPolicy": "PreemptLowerPriority",
                });
                prepare_create(pc_rt, &mut pc);
                txn.put(&key, pc, EventType::Added)?;
            }
        }
        for ns in SYSTEM_NAMESPACES {
            let key = ns_rt.key("", ns);
            if txn.get(&key)?.is_none() {
                let mut obj = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns}, "spec": {}});
                prepare_create(ns_rt, &mut obj);
                txn.put(&key, obj, EventType::Added)?;
            }
        }
        // Namespaces made by an older server (or before the SA existed) get theirs too.
        let names: Vec<String> = txn
            .scan(&format!("{}/", ns_rt.storage_prefix()))?
            .into_iter()
            .filter(|(_, o)| o["metadata"]["deletionTimestamp"].is_null())
            .filter_map(|(_, o)| o["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        for ns in names {
            ensure_default_service_account(txn, &ns)?;
        }
        reconcile_service(txn, state, None)
    })
}

/// Creates `NS/default` ServiceAccount unless it exists, as kube-controller-manager's
/// serviceaccount controller does for every namespace.
pub(crate) fn ensure_default_service_account(txn: &mut Txn, ns: &str) -> Result<(), Error> {
    let rt = resources::lookup("", "v1", "serviceaccounts").ok_or_else(Status::not_found_path)?;
    let key = rt.key(ns, "default");
    if txn.get(&key)?.is_none() {
        let mut sa = json!({
            "kind": "ServiceAccount", "apiVersion": "v1",
            "metadata": {"name": "default", "namespace": ns},
        });
        prepare_create(rt, &mut sa);
        txn.put(&key, sa, EventType::Added)?;
    }
    Ok(())
}

/// The `kubernetes` service as kube-apiserver keeps it: ClusterIP the first address of
/// each service range, port `https` 443 to the advertise port. Writes only when the
/// stored one differs in these fields.
fn reconcile_service(txn: &mut Txn, state: &State, port: Option<u16>) -> Result<(), Error> {
    let svc_rt = resources::services();
    let key = svc_rt.key("default", "kubernetes");
    let cidrs = &state.ranges.cidrs;
    if cidrs.is_empty() {
        return Ok(());
    }
    let ips: Vec<String> = cidrs.iter().map(|n| first_ip(n).to_string()).collect();
    let families: Vec<&str> = cidrs
        .iter()
        .map(|n| if n.addr().is_ipv4() { "IPv4" } else { "IPv6" })
        .collect();
    let policy = if ips.len() > 1 {
        "RequireDualStack"
    } else {
        "SingleStack"
    };
    let old = txn.get(&key)?;
    let target_port = port
        .map(|p| json!(p))
        .or_else(|| {
            old.as_ref()
                .map(|o| o["spec"]["ports"][0]["targetPort"].clone())
        })
        .filter(|p| !p.is_null())
        .unwrap_or(json!(6443));
    let wanted = json!({
        "clusterIP": ips[0],
        "clusterIPs": ips,
        "ipFamilies": families,
        "ipFamilyPolicy": policy,
        "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}],
    });
    match old {
        None => {
            let mut spec = wanted;
            spec["type"] = json!("ClusterIP");
            spec["sessionAffinity"] = json!("None");
            spec["internalTrafficPolicy"] = json!("Cluster");
            let mut obj = json!({
                "kind": "Service", "apiVersion": "v1",
                "metadata": {"name": "kubernetes", "namespace": "default",
                    "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": spec,
                "status": {"loadBalancer": {}},
            });
            prepare_create(svc_rt, &mut obj);
            txn.put(&key, obj, EventType::Added)?;
        }
        Some(old) => {
            let mut new = old.clone();
            for (f, v) in wanted.as_object().into_iter().flatten() {
                new["spec"][f] = v.clone();
            }
            if new != old {
                txn.put(&key, new, EventType::Modified)?;
            }
        }
    }
    Ok(())
}

/// Points the `default/kubernetes` service at `addr` (the advertise address and the
/// port served there), as kube-apiserver's endpoint reconciler does: the service's
/// targetPort, its Endpoints and its EndpointSlice. Pods reach the API through the
/// service IP, so `addr` must be reachable from them (the lab's underlay). Writes only
/// what differs.
pub(crate) fn publish_endpoints(state: &State, addr: SocketAddr) -> Result<(), Error> {
    let ip = addr.ip().to_string();
    let port = addr.port();
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    let ep_rt = resources::lookup("", "v1", "endpoints").ok_or_else(Status::not_found_path)?;
    let slice_rt = resources::lookup("discovery.k8s.io", "v1", "endpointslices")
        .ok_or_else(Status::not_found_path)?;
    state.store.write(|txn| {
        reconcile_service(txn, state, Some(port))?;
        let labels = json!({"endpointslice.kubernetes.io/skip-mirror": "true"});
        let mut ep = json!({
            "kind": "Endpoints", "apiVersion": "v1",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": labels},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
        });
        let mut slice = json!({
            "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": family,
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        for (rt, obj) in [(ep_rt, &mut ep), (slice_rt, &mut slice)] {
            let key = rt.key("default", "kubernetes");
            match txn.get(&key)? {
                None => {
                    prepare_create(rt, obj);
                    txn.put(&key, obj.clone(), EventType::Added)?;
                }
                Some(old) => {
                    let fields = ["subsets", "endpoints", "ports", "addressType"];
                    let mut new: Value = old.clone();
                    for f in fields {
                        if let Some(v) = obj.get(f) {
                            new[f] = v.clone();
                        }
                    }
                    if new != old {
                        txn.put(&key, new, EventType::Modified)?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// The address the `kubernetes` service points at: `advertise` (else the IP of the
/// first `--listen-netns` listener, else of the first `--listen` one) with the port of
/// the listener on that IP (or on a wildcard address; else the port of the first
/// listener in another namespace, else of the first one).
pub(crate) fn advertise_addr(
    advertise: Option<IpAddr>,
    listen: &[SocketAddr],
    in_netns: &[SocketAddr],
) -> Option<SocketAddr> {
    let fallback = in_netns.first().or(listen.first()).copied()?;
    let ip = advertise.unwrap_or(fallback.ip());
    let port = in_netns
        .iter()
        .chain(listen)
        .find(|a| a.ip() == ip)
        .or_else(|| {
            in_netns
                .iter()
                .chain(listen)
                .find(|a| a.ip().is_unspecified() && a.is_ipv4() == ip.is_ipv4())
        })
        .map_or(fallback.port(), SocketAddr::port);
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_address_defaults_and_ports() {
        let l: Vec<SocketAddr> = vec!["127.0.0.1:6443".parse().unwrap()];
        let n: Vec<SocketAddr> = vec!["198.18.0.1:6443".parse().unwrap()];
        assert_eq!(
            advertise_addr(None, &l, &n),
            Some("198.18.0.1:6443".parse().unwrap())
        );
        assert_eq!(
            advertise_addr(None, &l, &[]),
            Some("127.0.0.1:6443".parse().unwrap())
        );
        let l2: Vec<SocketAddr> = vec!["0.0.0.0:7443".parse().unwrap()];
        assert_eq!(
            advertise_addr(Some("10.1.2.3".parse().unwrap()), &l2, &[]),
            Some("10.1.2.3:7443".parse().unwrap())
        );
        assert_eq!(advertise_addr(None, &[], &[]), None);
    }
}
