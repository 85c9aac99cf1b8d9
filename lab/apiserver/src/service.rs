//! Services as kube-apiserver stores them: defaults, ClusterIP allocation from the
//! service CIDRs and NodePort allocation. The allocators (`alloc.rs`) follow every
//! stored Service write and are rolled back with a failed transaction, so a refused
//! write leaks nothing and a delete or type change frees the Service's IPs and ports.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::RangeInclusive;

use ipnet::IpNet;
use serde_json::{Value, json};

use crate::alloc::Allocator;
use crate::error::{Cause, Error};
use crate::store::Txn;

/// Where services get their addresses and node ports.
#[derive(Debug, Clone)]
pub(crate) struct Ranges {
    pub(crate) cidrs: Vec<IpNet>,
    pub(crate) node_ports: RangeInclusive<u16>,
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

fn ty(svc: &Value) -> &str {
    svc["spec"]["type"].as_str().unwrap_or("ClusterIP")
}

fn needs_node_port(svc: &Value) -> bool {
    matches!(ty(svc), "NodePort" | "LoadBalancer")
}

/// `type: LoadBalancer` with `externalTrafficPolicy: Local`: the only case that gets a
/// `healthCheckNodePort`.
pub(crate) fn needs_health_check(svc: &Value) -> bool {
    ty(svc) == "LoadBalancer" && svc["spec"]["externalTrafficPolicy"] == "Local"
}

fn externally_accessible(svc: &Value) -> bool {
    needs_node_port(svc)
        || (ty(svc) == "ClusterIP"
            && svc["spec"]["externalIPs"]
                .as_array()
                .is_some_and(|a| !a.is_empty()))
}

/// kube-apiserver's `dropTypeDependentFields`: on an update that changes the type, the
/// fields the old type had (allocated or defaulted) and the new one cannot have go,
/// unless the request changed them, so that `{"spec":{"type":"ClusterIP"}}` turns a
/// NodePort Service into a ClusterIP one.
pub(crate) fn drop_type_dependent_fields(new: &mut Value, old: &Value) {
    let after = new.clone();
    let (o, n) = (&old["spec"], &after["spec"]);
    let new_svc = &after;
    let Some(spec) = new["spec"].as_object_mut() else {
        return;
    };
    if ty(old) != "ExternalName" && ty(new_svc) == "ExternalName" {
        if o["clusterIP"] == n["clusterIP"] && o["clusterIPs"] == n["clusterIPs"] {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if o["ipFamilies"] == n["ipFamilies"] {
            spec.remove("ipFamilies");
        }
        if o["ipFamilyPolicy"] == n["ipFamilyPolicy"] {
            spec.remove("ipFamilyPolicy");
        }
    }
    let node_ports = |v: &Value| -> Vec<Value> {
        v["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| p["nodePort"].clone())
            .collect()
    };
    if needs_node_port(old) && !needs_node_port(new_svc) && node_ports(o) == node_ports(n) {
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_object_mut() {
                p.remove("nodePort");
            }
        }
    }
    if needs_health_check(old)
        && !needs_health_check(new_svc)
        && o["healthCheckNodePort"] == n["healthCheckNodePort"]
    {
        spec.remove("healthCheckNodePort");
    }
    if ty(old) == "LoadBalancer" && ty(new_svc) != "LoadBalancer" {
        if o["allocateLoadBalancerNodePorts"] == n["allocateLoadBalancerNodePorts"] {
            spec.remove("allocateLoadBalancerNodePorts");
        }
        if o["loadBalancerClass"] == n["loadBalancerClass"] {
            spec.remove("loadBalancerClass");
        }
    }
    if externally_accessible(old)
        && !externally_accessible(new_svc)
        && o["externalTrafficPolicy"] == n["externalTrafficPolicy"]
    {
        spec.remove("externalTrafficPolicy");
    }
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
    let used = txn
        .allocator()
        .ok_or_else(|| Error::Internal("the service allocators are not set up".into()))?;
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
                allocate_cluster_ips(s, key, requested.as_deref(), used, ranges, &mut causes)
            }
        }
        if s["internalTrafficPolicy"].is_null() {
            s["internalTrafficPolicy"] = json!("Cluster");
        }
    }

    // Node ports.
    let mut taken = HashSet::new();
    if ty == "NodePort" || ty == "LoadBalancer" {
        if ty == "LoadBalancer" && s["allocateLoadBalancerNodePorts"].is_null() {
            s["allocateLoadBalancerNodePorts"] = json!(true);
        }
        let old_ports = old_spec
            .and_then(|o| o["ports"].as_array())
            .cloned()
            .unwrap_or_default();
        let allocate = ty == "NodePort" || s["allocateLoadBalancerNodePorts"] != json!(false);
        if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
            taken = node_ports(key, ports, &old_ports, allocate, used, ranges, &mut causes);
        }
    } else if let Some(ports) = s.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut() {
            if let Some(m) = p.as_object_mut() {
                m.remove("nodePort");
            }
        }
    }

    if externally_accessible(svc) && svc["spec"]["externalTrafficPolicy"].is_null() {
        svc["spec"]["externalTrafficPolicy"] = json!("Cluster");
    }
    if causes.is_empty() {
        health_check_node_port(key, svc, old, &taken, used, ranges)?;
    }

    // Status belongs to the status subresource.
    svc["status"] = old
        .map(|o| o["status"].clone())
        .filter(|s| !s.is_null())
        .unwrap_or_else(|| json!({"loadBalancer": {}}));
    Ok(causes)
}

/// `healthCheckNodePort`, only for `type: LoadBalancer` with `externalTrafficPolicy:
/// Local` (validation refuses it elsewhere): the requested one, else the one the Service
/// had, else a free one from the NodePort range. kube-apiserver answers a requested port
/// it cannot take with 500 InternalError, and so does this.
fn health_check_node_port(
    key: &str,
    svc: &mut Value,
    old: Option<&Value>,
    taken: &HashSet<u16>,
    used: &Allocator,
    ranges: &Ranges,
) -> Result<(), Error> {
    let spec = &mut svc["spec"];
    if spec["healthCheckNodePort"].as_i64() == Some(0)
        && let Some(m) = spec.as_object_mut()
    {
        m.remove("healthCheckNodePort");
    }
    if !needs_health_check(svc) {
        return Ok(());
    }
    let internal = |msg: String| -> Error {
        crate::error::Status::new(
            500,
            "InternalError",
            format!("Internal error occurred: {msg}"),
        )
        .into()
    };
    let kept = old
        .filter(|o| needs_health_check(o))
        .and_then(|o| o["spec"]["healthCheckNodePort"].as_i64());
    let port = match svc["spec"]["healthCheckNodePort"].as_i64().or(kept) {
        Some(n) => {
            let range = i64::from(*ranges.node_ports.start())..=i64::from(*ranges.node_ports.end());
            let why = if !range.contains(&n) {
                Some(format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    ranges.node_ports.start(),
                    ranges.node_ports.end()
                ))
            } else if taken.contains(&(n as u16)) || used.port_taken(n as u16, key) {
                Some("provided port is already allocated".to_string())
            } else {
                None
            };
            if let Some(why) = why {
                return Err(internal(format!(
                    "failed to allocate requested HealthCheck NodePort {n}: {why}"
                )));
            }
            n as u16
        }
        None => used.next_port(taken).ok_or_else(|| {
            internal("failed to allocate a HealthCheck NodePort 0: range is full".into())
        })?,
    };
    svc["spec"]["healthCheckNodePort"] = json!(port);
    Ok(())
}

/// NodePorts as kube-apiserver allocates them: a number is held by one Service
/// whatever the protocol; ports of one Service with the same `port` (53/TCP and
/// 53/UDP) share a node port; an omitted node port on update keeps the one the same
/// port and protocol had.
fn node_ports(
    key: &str,
    ports: &mut [Value],
    old_ports: &[Value],
    allocate: bool,
    used: &Allocator,
    ranges: &Ranges,
    causes: &mut Vec<Cause>,
) -> HashSet<u16> {
    let range = i64::from(*ranges.node_ports.start())..=i64::from(*ranges.node_ports.end());
    // Node ports this Service takes, and which (nodePort, protocol) pairs are used.
    let mut taken: HashSet<u16> = HashSet::new();
    let mut pairs: HashSet<(i64, String)> = HashSet::new();
    let mut by_port: HashMap<i64, u16> = HashMap::new();
    // Requested (or kept) node ports first, so that dynamic ones avoid them.
    for (i, p) in ports.iter_mut().enumerate() {
        let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
        let mut n = p["nodePort"].as_i64().filter(|n| *n != 0);
        if n.is_none() && allocate {
            n = old_ports
                .iter()
                .find(|o| {
                    o["port"] == p["port"] && o["protocol"].as_str().unwrap_or("TCP") == proto
                })
                .and_then(|o| o["nodePort"].as_i64())
                .filter(|n| range.contains(n));
            if let Some(n) = n {
                p["nodePort"] = json!(n);
            }
        }
        let Some(n) = n else { continue };
        let field = format!("spec.ports[{i}].nodePort");
        if !range.contains(&n) {
            causes.push(Cause::invalid(
                field,
                &json!(n),
                &format!(
                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                    ranges.node_ports.start(),
                    ranges.node_ports.end()
                ),
            ));
            continue;
        }
        if !pairs.insert((n, proto)) {
            causes.push(Cause::duplicate(field, &json!(n)));
            continue;
        }
        let port = n as u16;
        if used.port_taken(port, key) {
            causes.push(Cause::invalid(
                field,
                &json!(n),
                "provided port is already allocated",
            ));
            continue;
        }
        taken.insert(port);
        if let Some(sp) = p["port"].as_i64() {
            by_port.entry(sp).or_insert(port);
        }
    }
    if !allocate {
        return taken;
    }
    for (i, p) in ports.iter_mut().enumerate() {
        if p["nodePort"].as_i64().is_some_and(|n| n != 0) {
            continue;
        }
        let sp = p["port"].as_i64().unwrap_or(0);
        let port = match by_port.get(&sp) {
            Some(n) => Some(*n),
            None => used.next_port(&taken),
        };
        match port {
            Some(n) => {
                taken.insert(n);
                by_port.insert(sp, n);
                p["nodePort"] = json!(n);
            }
            None => causes.push(Cause::invalid(
                format!("spec.ports[{i}].nodePort"),
                &json!(0),
                "failed to allocate a nodePort: range is full",
            )),
        }
    }
    taken
}

fn allocate_cluster_ips(
    s: &mut Value,
    key: &str,
    requested: Option<&str>,
    used: &Allocator,
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
                if used.ip_taken(ip, key) {
                    causes.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!([r]),
                        &format!("failed to allocate IP {r}: provided IP is already allocated"),
                    ));
                    return;
                }
                ip
            }
            _ => match used.next_ip(net) {
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
        store.set_allocator(&ranges()).unwrap();
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
        // Dynamic node ports start above the static band (86 ports of 2768).
        assert_eq!(np["spec"]["ports"][1]["nodePort"], 30086);
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
        // 53/TCP and 53/UDP share one node port; a number is taken whatever the protocol.
        let dns = create(
            &store,
            "dns-np",
            json!({"type": "NodePort", "ports": [
                {"name": "tcp", "port": 53, "protocol": "TCP"},
                {"name": "udp", "port": 53, "protocol": "UDP"}]}),
        )
        .unwrap();
        let shared = dns["spec"]["ports"][0]["nodePort"].clone();
        assert_eq!(dns["spec"]["ports"][1]["nodePort"], shared);
        let clash = create(
            &store,
            "udp-np",
            json!({"type": "NodePort", "ports": [{"port": 53, "protocol": "UDP", "nodePort": shared}]}),
        )
        .unwrap_err();
        assert!(
            clash[0]
                .message
                .ends_with("provided port is already allocated"),
            "{clash:?}"
        );
        // The same number and protocol twice in one Service is a duplicate.
        let dup = create(
            &store,
            "dup-np",
            json!({"type": "NodePort", "ports": [
                {"name": "a", "port": 80, "nodePort": 32500},
                {"name": "b", "port": 81, "nodePort": 32500}]}),
        )
        .unwrap_err();
        assert_eq!(dup[0].field, "spec.ports[1].nodePort");
        assert_eq!(dup[0].message, "Duplicate value: 32500");
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
