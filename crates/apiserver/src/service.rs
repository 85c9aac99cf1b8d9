//! Services as kube-apiserver stores them: defaults, ClusterIP allocation from the
//! service CIDRs and NodePort allocation. What is allocated is derived from the stored
//! services inside the same write transaction, so a refused write leaks nothing and a
//! delete frees the service's IPs and ports with it.

use std::collections::HashSet;
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::error::{Cause, Error};
use crate::store::Txn;

/// Where services get their addresses and node ports.
#[derive(Debug, Clone)]
pub(crate) struct Ranges {
    pub(crate) cidrs: Vec<IpNet>,
    pub(crate) node_ports: RangeInclusive<u16>,
}

struct Used {
    ips: HashSet<IpAddr>,
    node_ports: HashSet<(i64, String)>,
}

fn used_by_others(txn: &Txn, key: &str) -> Result<Used, Error> {
    let mut used = Used {
        ips: HashSet::new(),
        node_ports: HashSet::new(),
    };
    for (k, svc) in txn.scan("core/services/")? {
        if k == key {
            continue;
        }
        for ip in svc["spec"]["clusterIPs"].as_array().into_iter().flatten() {
            if let Some(ip) = ip.as_str().and_then(|s| s.parse().ok()) {
                used.ips.insert(ip);
            }
        }
        for p in svc["spec"]["ports"].as_array().into_iter().flatten() {
            if let Some(np) = p["nodePort"].as_i64() {
                used.node_ports
                    .insert((np, p["protocol"].as_str().unwrap_or("TCP").to_string()));
            }
        }
    }
    Ok(used)
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)),
        IpAddr::V6(v) => u128::from(v),
    }
}

fn from_u128(net: &IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(n as u32)),
        IpNet::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(n)),
    }
}

/// The first free address of `net`, skipping the network address (and, for IPv4, the
/// broadcast address). Dynamic allocations start above kube-apiserver's static band
/// (min(max(16, size/16), 256) addresses), which stays for requested IPs like DNS.
fn allocate_ip(net: &IpNet, used: &HashSet<IpAddr>) -> Option<IpAddr> {
    let base = to_u128(net.network());
    let bits = u32::from(net.max_prefix_len() - net.prefix_len());
    let size: u128 = if bits >= 127 {
        u128::MAX
    } else {
        1u128 << bits
    };
    let last = if matches!(net, IpNet::V4(_)) {
        size.saturating_sub(2)
    } else {
        size.saturating_sub(1)
    };
    let offset = (size / 16).clamp(16, 256).min(last);
    let candidates = (offset.max(1)..=last).chain(1..offset.max(1));
    candidates
        .map(|i| from_u128(net, base + i))
        .find(|ip| !used.contains(ip))
}

/// Fills a service's defaults and allocates its cluster IPs and node ports.
/// `old` is the stored service on update. Returns the field errors, if any.
pub(crate) fn prepare(
    txn: &Txn,
    key: &str,
    svc: &mut Value,
    old: Option<&Value>,
    ranges: &Ranges,
) -> Result<Vec<Cause>, Error> {
    let used = used_by_others(txn, key)?;
    let mut causes = Vec::new();
    let spec = svc["spec"].as_object_mut().map(|_| ()).is_some();
    if !spec {
        svc["spec"] = json!({});
    }
    let s = &mut svc["spec"];
    let ty = s["type"].as_str().unwrap_or("ClusterIP").to_string();
    s["type"] = json!(ty);
    if s["sessionAffinity"].is_null() {
        s["sessionAffinity"] = json!("None");
    }
    if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut() {
            if p["protocol"].is_null() {
                p["protocol"] = json!("TCP");
            }
            if p["targetPort"].is_null() || p["targetPort"] == json!(0) {
                p["targetPort"] = p["port"].clone();
            }
        }
    }
    let old_spec = old.map(|o| &o["spec"]);

    // Cluster IPs.
    if ty == "ExternalName" {
        if let Some(m) = s.as_object_mut() {
            for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                m.remove(f);
            }
        }
    } else {
        let requested = s["clusterIP"]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .or_else(|| {
                s["clusterIPs"]
                    .as_array()
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        let old_ip = old_spec
            .and_then(|o| o["clusterIP"].as_str())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        match (&requested, &old_ip) {
            (Some(r), Some(o)) if r != o => {
                causes.push(Cause::invalid(
                    "spec.clusterIPs[0]",
                    &json!([r]),
                    "may not change once set",
                ));
            }
            (_, Some(_)) => {
                // Unchanged (or omitted on update): keep what was allocated.
                if let Some(o) = old_spec {
                    for f in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
                        s[f] = o[f].clone();
                    }
                }
            }
            (Some(r), None) if r == "None" => {
                s["clusterIP"] = json!("None");
                s["clusterIPs"] = json!(["None"]);
                if s["ipFamilyPolicy"].is_null() {
                    s["ipFamilyPolicy"] = json!("SingleStack");
                }
                if s["ipFamilies"].is_null() {
                    s["ipFamilies"] = json!([ranges.cidrs.first().map(family).unwrap_or("IPv4")]);
                }
            }
            (requested, None) => {
                allocate_cluster_ips(s, requested.as_deref(), &used.ips, ranges, &mut causes)
            }
        }
        if s["internalTrafficPolicy"].is_null() {
            s["internalTrafficPolicy"] = json!("Cluster");
        }
    }

    // Node ports.
    if ty == "NodePort" || ty == "LoadBalancer" {
        if s["externalTrafficPolicy"].is_null() {
            s["externalTrafficPolicy"] = json!("Cluster");
        }
        if ty == "LoadBalancer" && s["allocateLoadBalancerNodePorts"].is_null() {
            s["allocateLoadBalancerNodePorts"] = json!(true);
        }
        let mut taken: HashSet<(i64, String)> = HashSet::new();
        let old_ports = old_spec
            .and_then(|o| o["ports"].as_array())
            .cloned()
            .unwrap_or_default();
        let allocate = ty == "NodePort" || s["allocateLoadBalancerNodePorts"] != json!(false);
        if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
            for (i, p) in ports.iter_mut().enumerate() {
                let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
                let requested = p["nodePort"].as_i64().filter(|n| *n != 0);
                let np = match requested {
                    Some(n) => {
                        if !(i64::from(*ranges.node_ports.start())
                            ..=i64::from(*ranges.node_ports.end()))
                            .contains(&n)
                        {
                            causes.push(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(n),
                                &format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    ranges.node_ports.start(),
                                    ranges.node_ports.end()
                                ),
                            ));
                            continue;
                        }
                        if used.node_ports.contains(&(n, proto.clone()))
                            || taken.contains(&(n, proto.clone()))
                        {
                            causes.push(Cause::invalid(
                                format!("spec.ports[{i}].nodePort"),
                                &json!(n),
                                "provided port is already allocated",
                            ));
                            continue;
                        }
                        Some(n)
                    }
                    None if !allocate => None,
                    None => {
                        let kept = old_ports
                            .iter()
                            .find(|o| {
                                o["port"] == p["port"]
                                    && o["protocol"].as_str().unwrap_or("TCP") == proto
                            })
                            .and_then(|o| o["nodePort"].as_i64());
                        let free = kept.or_else(|| {
                            ranges.node_ports.clone().map(i64::from).find(|n| {
                                !used.node_ports.contains(&(*n, proto.clone()))
                                    && !taken.contains(&(*n, proto.clone()))
                            })
                        });
                        match free {
                            Some(n) => Some(n),
                            None => {
                                causes.push(Cause::invalid(
                                    format!("spec.ports[{i}].nodePort"),
                                    &json!(0),
                                    "range is full",
                                ));
                                continue;
                            }
                        }
                    }
                };
                if let Some(n) = np {
                    taken.insert((n, proto));
                    p["nodePort"] = json!(n);
                }
            }
        }
    } else if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut() {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }

    // Status belongs to the status subresource.
    svc["status"] = old
        .map(|o| o["status"].clone())
        .filter(|s| !s.is_null())
        .unwrap_or_else(|| json!({"loadBalancer": {}}));
    Ok(causes)
}

fn allocate_cluster_ips(
    s: &mut Value,
    requested: Option<&str>,
    used: &HashSet<IpAddr>,
    ranges: &Ranges,
    causes: &mut Vec<Cause>,
) {
    let policy = s["ipFamilyPolicy"]
        .as_str()
        .unwrap_or("SingleStack")
        .to_string();
    let want_families: Vec<String> = s["ipFamilies"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut nets: Vec<&IpNet> = Vec::new();
    let first_family = requested
        .and_then(|r| r.parse::<IpAddr>().ok())
        .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_string())
        .or_else(|| want_families.first().cloned());
    let primary = match &first_family {
        Some(f) => ranges.cidrs.iter().find(|n| family(n) == f),
        None => ranges.cidrs.first(),
    };
    let Some(primary) = primary else {
        causes.push(Cause::invalid(
            "spec.ipFamilies",
            &json!(want_families),
            "not configured on this cluster",
        ));
        return;
    };
    nets.push(primary);
    if policy != "SingleStack" {
        match ranges.cidrs.iter().find(|n| family(n) != family(primary)) {
            Some(second) => nets.push(second),
            None if policy == "RequireDualStack" => {
                causes.push(Cause::invalid(
                    "spec.ipFamilyPolicy",
                    &json!(policy),
                    "this cluster is not configured for dual-stack services",
                ));
                return;
            }
            None => {}
        }
    }
    let mut ips = Vec::new();
    for (i, net) in nets.iter().enumerate() {
        let ip = match (i, requested) {
            (0, Some(r)) => {
                let Ok(ip) = r.parse::<IpAddr>() else { return };
                if !net.contains(&ip) || ip == net.network() {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([r]),
                        &format!("failed to allocate IP {r}: the provided IP ({r}) is not in the valid range. The range of valid IPs is {net}"),
                    ));
                    return;
                }
                if used.contains(&ip) {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([r]),
                        &format!("failed to allocate IP {r}: provided IP is already allocated"),
                    ));
                    return;
                }
                ip
            }
            _ => match allocate_ip(net, used) {
                Some(ip) => ip,
                None => {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([]),
                        &format!("failed to allocate a serviceIP: range is full ({net})"),
                    ));
                    return;
                }
            },
        };
        ips.push(ip);
    }
    s["clusterIP"] = json!(ips[0].to_string());
    s["clusterIPs"] = json!(ips.iter().map(ToString::to_string).collect::<Vec<_>>());
    s["ipFamilies"] = json!(nets.iter().map(|n| family(n)).collect::<Vec<_>>());
    s["ipFamilyPolicy"] = json!(policy);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventType, Store};

    fn ranges() -> Ranges {
        Ranges {
            cidrs: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00:10:96::/112".parse().unwrap(),
            ],
            node_ports: 30000..=32767,
        }
    }

    fn create(store: &Store, name: &str, spec: Value) -> Result<Value, Vec<Cause>> {
        let key = format!("core/services/default/{name}");
        store
            .write(|t| {
                let mut svc =
                    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec});
                let causes = prepare(t, &key, &mut svc, None, &ranges())?;
                if !causes.is_empty() {
                    return Ok(Err(causes));
                }
                Ok(Ok(t.put(&key, svc, EventType::Added)?))
            })
            .unwrap()
    }

    #[test]
    fn allocates_cluster_ips_and_node_ports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db"), 100).unwrap();
        let a = create(&store, "a", json!({"ports": [{"port": 80}]})).unwrap();
        assert_eq!(a["spec"]["clusterIP"], "10.96.1.0");
        assert_eq!(a["spec"]["ports"][0]["targetPort"], 80);
        assert_eq!(a["spec"]["ipFamilyPolicy"], "SingleStack");
        let b = create(&store, "b", json!({"ports": [{"port": 80}]})).unwrap();
        assert_eq!(b["spec"]["clusterIP"], "10.96.1.1");
        let dns = create(
            &store,
            "dns",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
        )
        .unwrap();
        assert_eq!(dns["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        let dup = create(
            &store,
            "dns2",
            json!({"clusterIP": "10.96.0.10", "ports": [{"port": 53}]}),
        )
        .unwrap_err();
        assert!(
            dup[0].message.ends_with("provided IP is already allocated"),
            "{dup:?}"
        );
        let out = create(
            &store,
            "out",
            json!({"clusterIP": "10.0.0.1", "ports": [{"port": 53}]}),
        )
        .unwrap_err();
        assert!(out[0].message.contains("is not in the valid range"));
        let headless = create(&store, "h", json!({"clusterIP": "None"})).unwrap();
        assert_eq!(headless["spec"]["clusterIPs"], json!(["None"]));
        let ext = create(
            &store,
            "e",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        )
        .unwrap();
        assert!(ext["spec"].get("clusterIP").is_none());
        let np = create(
            &store,
            "np",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31100}, {"port": 81}]}),
        )
        .unwrap();
        assert_eq!(np["spec"]["ports"][1]["nodePort"], 30000);
        let clash = create(
            &store,
            "np2",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31100}]}),
        )
        .unwrap_err();
        assert_eq!(clash[0].field, "spec.ports[0].nodePort");
        assert_eq!(
            clash[0].message,
            "Invalid value: 31100: provided port is already allocated"
        );
        let range = create(
            &store,
            "np3",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 80}]}),
        )
        .unwrap_err();
        assert!(range[0].message.contains("30000-32767"));
        let dual = create(
            &store,
            "d",
            json!({"ipFamilyPolicy": "PreferDualStack", "ports": [{"port": 80}]}),
        )
        .unwrap();
        assert_eq!(dual["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]));
        assert_eq!(dual["spec"]["clusterIPs"][1], "fd00:10:96::100");
        // Deleting frees the node port.
        store
            .write(|t| t.delete("core/services/default/np", np.clone()))
            .unwrap();
        create(
            &store,
            "np4",
            json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 31100}]}),
        )
        .unwrap();
    }
}
