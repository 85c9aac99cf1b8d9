//! Unit tests: manifests in, ruleset and batches out. No root needed.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service as K8sService;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use netlink::nft::{Datum, Expr, Family, Verdict, proto};
use serde_json::{Value, json};

use crate::*;

fn svc(v: Value) -> K8sService {
    serde_json::from_value(v).unwrap()
}

fn slice(v: Value) -> EndpointSlice {
    serde_json::from_value(v).unwrap()
}

/// A ClusterIP service `default/web` on 10.96.0.10:80 → targetPort 8080, with `spec`
/// merged over that.
fn web(extra: Value) -> K8sService {
    let mut v = json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]
        }
    });
    merge(&mut v["spec"], extra);
    svc(v)
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// One endpoint: (address, node, ready, serving, terminating).
type Ep<'a> = (&'a str, &'a str, bool, bool, bool);

fn ready(addr: &str, node: &str) -> Ep<'static> {
    let addr: &'static str = Box::leak(addr.to_owned().into_boxed_str());
    let node: &'static str = Box::leak(node.to_owned().into_boxed_str());
    (addr, node, true, true, false)
}

fn web_slice(eps: &[Ep<'_>]) -> EndpointSlice {
    slice_for("web", "http", 8080, eps)
}

fn slice_for(service: &str, port_name: &str, port: u16, eps: &[Ep<'_>]) -> EndpointSlice {
    let endpoints: Vec<Value> = eps
        .iter()
        .map(|(a, n, r, s, t)| {
            json!({"addresses": [a], "nodeName": n,
                   "conditions": {"ready": r, "serving": s, "terminating": t}})
        })
        .collect();
    let v6 = eps.first().is_some_and(|e| e.0.contains(':'));
    slice(json!({
        "metadata": {"name": format!("{service}-abc"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": if v6 { "IPv6" } else { "IPv4" },
        "endpoints": endpoints,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}]
    }))
}

fn node() -> Node {
    Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    }
}

fn build(services: &[K8sService], slices: &[EndpointSlice]) -> Ruleset {
    let (view, errors) = View::build(services, slices);
    assert!(errors.is_empty(), "{errors:?}");
    desired(&view, &node())
}

fn v4(rs: &Ruleset) -> &FamilyRuleset {
    rs.family(Family::Ip).unwrap()
}

fn ip(s: &str) -> Datum {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => Datum::Ipv4(a),
        IpAddr::V6(a) => Datum::Ipv6(a),
    }
}

fn svc_key(addr: &str, proto: u8, port: u16) -> Vec<Datum> {
    vec![ip(addr), Datum::Proto(proto), Datum::Port(port)]
}

fn goto(chain: &str) -> Verdict {
    Verdict::Goto(chain.into())
}

const SP: &str = "default/web/tcp/80";

/// The endpoints a balancing chain picks from, in rule order, with the probability
/// each rule's pick has on its own (`1/(N-i)`, the last one certain), checked.
fn endpoints_of(f: &FamilyRuleset, chain: &str) -> Vec<(Datum, Datum)> {
    let mut out = Vec::new();
    let all = f.chain(chain).unwrap().rules();
    let rules: Vec<_> = all.iter().filter(|r| r.comment.is_none()).collect();
    let n = rules.len() as u32;
    for (i, r) in rules.iter().enumerate() {
        let imm = |reg| {
            r.exprs.iter().find_map(|e| match e {
                Expr::Immediate { dreg, data } if *dreg == reg => Some(data.clone()),
                _ => None,
            })
        };
        let a = imm(netlink::nft::Reg::R1).expect("dnat address");
        let p = imm(netlink::nft::Reg::R2).expect("dnat port");
        let addr = match a.len() {
            4 => Datum::Ipv4(<[u8; 4]>::try_from(&a[..]).unwrap().into()),
            _ => Datum::Ipv6(<[u8; 16]>::try_from(&a[..]).unwrap().into()),
        };
        out.push((addr, Datum::Port(u16::from_be_bytes([p[0], p[1]]))));
        let modulus = r.exprs.iter().find_map(|e| match e {
            Expr::Numgen { modulus, .. } => Some(*modulus),
            _ => None,
        });
        let expected = (i as u32 + 1 < n).then_some(n - i as u32);
        assert_eq!(modulus, expected, "rule {i} of {chain}");
    }
    out
}

fn numgen_modulus(f: &FamilyRuleset, chain: &str) -> u32 {
    f.chain(chain)
        .unwrap()
        .rules()
        .iter()
        .flat_map(|r| &r.exprs)
        .find_map(|e| match e {
            Expr::Numgen { modulus, .. } => Some(*modulus),
            _ => None,
        })
        .expect("a numgen rule")
}

fn service_ips(f: &FamilyRuleset) -> &SetSpec {
    f.set(names::SERVICE_IPS).unwrap()
}

// ---- view -------------------------------------------------------------------------

#[test]
fn headless_externalname_and_other_proxies_get_no_rules() {
    let headless = svc(json!({
        "metadata": {"name": "h", "namespace": "default"},
        "spec": {"clusterIP": "None", "ports": [{"port": 80}]}
    }));
    let external = svc(json!({
        "metadata": {"name": "x", "namespace": "default"},
        "spec": {"type": "ExternalName", "externalName": "example.com"}
    }));
    let other = svc(json!({
        "metadata": {"name": "o", "namespace": "default",
                     "labels": {"service.kubernetes.io/service-proxy-name": "other"}},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}
    }));
    let (view, errors) = View::build(&[headless, external, other, web(json!({}))], &[]);
    assert!(errors.is_empty());
    let keys: Vec<String> = view.services.keys().map(|k| k.to_string()).collect();
    assert_eq!(keys, ["default/web"]);
}

#[test]
fn named_target_ports_resolve_through_the_endpointslice() {
    let s = web(json!({"ports": [{"name": "http", "port": 80, "targetPort": "web"}]}));
    let (view, _) = View::build(
        &[s],
        &[slice_for("web", "http", 9376, &[ready("10.244.1.2", "n")])],
    );
    let s = &view.services[&ServiceKey::new("default", "web")];
    assert_eq!(s.ports[0].target_port, TargetPort::Name("web".into()));
    assert_eq!(s.endpoints[0].port_for(&s.ports[0]), Some(9376));
    let rs = desired(&view, &node());
    assert_eq!(
        endpoints_of(v4(&rs), &cluster_chain(SP)),
        [(ip("10.244.1.2"), Datum::Port(9376))]
    );
}

#[test]
fn absent_conditions_mean_ready_and_serving() {
    let sl = slice(json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.2"]}],
        "ports": [{"name": "http", "port": 8080}]
    }));
    let (view, _) = View::build(&[web(json!({}))], &[sl]);
    let ep = &view.services[&ServiceKey::new("default", "web")].endpoints[0];
    assert!(ep.ready && ep.serving && !ep.terminating);
}

#[test]
fn invalid_fields_are_reported_with_object_and_field() {
    let s = web(json!({"externalIPs": ["not-an-ip"], "ports": [{"port": 70000}]}));
    let (view, errors) = View::build(&[s], &[]);
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        text,
        [
            "service default/web: spec.externalIPs[0]: Invalid value: \"not-an-ip\"",
            "service default/web: spec.ports[0].port: Invalid value: 70000",
        ]
    );
    assert!(
        view.services[&ServiceKey::new("default", "web")]
            .ports
            .is_empty()
    );
}

#[test]
fn slices_of_unknown_services_are_ignored() {
    let (view, errors) = View::build(&[], &[web_slice(&[ready("10.244.1.2", "n")])]);
    assert!(view.services.is_empty() && errors.is_empty());
}

// ---- ruleset -------------------------------------------------------------------------

#[test]
fn cluster_ip_dispatches_through_one_map_to_a_balancing_chain() {
    let rs = build(
        &[web(json!({}))],
        &[web_slice(&[
            ready("10.244.1.2", "node-1"),
            ready("10.244.2.2", "node-2"),
        ])],
    );
    let f = v4(&rs);
    let chain = cluster_chain(SP);
    assert_eq!(
        service_ips(f).verdict(&svc_key("10.96.0.10", proto::TCP, 80)),
        Some(&goto(&chain))
    );
    assert_eq!(numgen_modulus(f, &chain), 2);
    assert_eq!(
        endpoints_of(f, &chain),
        [
            (ip("10.244.1.2"), Datum::Port(8080)),
            (ip("10.244.2.2"), Datum::Port(8080))
        ]
    );
    let cluster_ips = f.set(names::CLUSTER_IPS).unwrap();
    assert!(cluster_ips.contains(&[ip("10.96.0.10")]));
    // One dispatch rule for all services, whatever their number.
    let services = &f.chain("services").unwrap().rules();
    let vmaps = services
        .iter()
        .filter(|r| {
            r.exprs.iter().any(|e| {
                matches!(e, Expr::Lookup { dreg: Some(d), .. } if *d == netlink::nft::Reg::VERDICT)
            })
        })
        .count();
    assert_eq!(vmaps, 2, "service-ips and service-nodeports lookups");
    // No per-endpoint chains: the chains are the fixed ones plus one per service port.
    assert_eq!(f.chains.len(), 11);
    let web_chains: Vec<&String> = f.services.values().flat_map(|s| s.chains.keys()).collect();
    assert_eq!(web_chains, [&chain]);
    // The ip6 table exists but holds nothing of this IPv4-only service.
    let f6 = rs.family(Family::Ip6).unwrap();
    assert!(service_ips(f6).is_empty());
}

#[test]
fn multiple_ports_and_protocols_are_separate_keys() {
    let s = web(json!({"ports": [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
        {"name": "sctp", "port": 9999, "protocol": "SCTP"}
    ]}));
    let sl = slice(json!({
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.2"]}],
        "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"},
                  {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
                  {"name": "sctp", "port": 9998, "protocol": "SCTP"}]
    }));
    let rs = build(&[s], &[sl]);
    let f = v4(&rs);
    for (proto, port, target, name) in [
        (proto::UDP, 53, 5353, "default/web/udp/53"),
        (proto::TCP, 53, 5354, "default/web/tcp/53"),
        (proto::SCTP, 9999, 9998, "default/web/sctp/9999"),
    ] {
        let chain = cluster_chain(name);
        assert_eq!(
            service_ips(f).verdict(&svc_key("10.96.0.10", proto, port)),
            Some(&goto(&chain))
        );
        assert_eq!(
            endpoints_of(f, &chain),
            [(ip("10.244.1.2"), Datum::Port(target))]
        );
    }
}

#[test]
fn no_endpoints_reject_at_once() {
    let rs = build(&[web(json!({}))], &[]);
    let f = v4(&rs);
    let key = svc_key("10.96.0.10", proto::TCP, 80);
    assert_eq!(service_ips(f).verdict(&key), None);
    assert_eq!(
        f.set(names::NO_ENDPOINT_SERVICES).unwrap().verdict(&key),
        Some(&goto(names::REJECT_CHAIN))
    );
    assert!(f.chain(&cluster_chain(SP)).is_none());
    // The reject chain: TCP reset, else ICMP port unreachable.
    let reject_rules = f.chain(names::REJECT_CHAIN).unwrap().rules();
    let reject: Vec<&Expr> = reject_rules.iter().filter_map(|r| r.exprs.last()).collect();
    assert_eq!(
        reject,
        [
            &Expr::Reject(netlink::nft::Reject::TcpReset),
            &Expr::Reject(netlink::nft::Reject::Icmp(3))
        ]
    );
    // Checked on new connections before DNAT.
    let pre = f.chain("filter-prerouting").unwrap();
    assert_eq!(pre.chain.base.unwrap().priority, -110);
}

#[test]
fn endpoints_without_the_port_do_not_count() {
    let rs = build(
        &[web(json!({}))],
        &[slice_for("web", "other", 1, &[ready("10.244.1.2", "n")])],
    );
    let key = svc_key("10.96.0.10", proto::TCP, 80);
    assert!(
        v4(&rs)
            .set(names::NO_ENDPOINT_SERVICES)
            .unwrap()
            .verdict(&key)
            .is_some()
    );
}

#[test]
fn unknown_ports_on_a_cluster_ip_are_rejected_after_dnat() {
    let rs = build(&[web(json!({}))], &[web_slice(&[ready("10.244.1.2", "n")])]);
    let f = v4(&rs);
    let check = f.chain("cluster-ips-check").unwrap();
    assert_eq!(
        check.rules()[0].exprs.last(),
        Some(&Expr::Verdict(goto(names::REJECT_CHAIN)))
    );
    for base in ["filter-forward", "filter-output-post-dnat"] {
        let c = f.chain(base).unwrap();
        assert_eq!(
            c.rules()[0].exprs.last(),
            Some(&Expr::Verdict(Verdict::Jump("cluster-ips-check".into())))
        );
    }
    assert_eq!(
        f.chain("filter-output-post-dnat")
            .unwrap()
            .chain
            .base
            .unwrap()
            .priority,
        -90
    );
}

#[test]
fn terminating_endpoints_serve_only_when_none_is_ready() {
    let terminating = ("10.244.1.3", "node-1", false, true, true);
    let gone = ("10.244.1.4", "node-1", false, false, true);
    let rs = build(
        &[web(json!({}))],
        &[web_slice(&[
            ready("10.244.1.2", "node-1"),
            terminating,
            gone,
        ])],
    );
    assert_eq!(
        endpoints_of(v4(&rs), &cluster_chain(SP)),
        [(ip("10.244.1.2"), Datum::Port(8080))]
    );
    let rs = build(&[web(json!({}))], &[web_slice(&[terminating, gone])]);
    assert_eq!(
        endpoints_of(v4(&rs), &cluster_chain(SP)),
        [(ip("10.244.1.3"), Datum::Port(8080))]
    );
    let not_ready = ("10.244.1.5", "node-1", false, false, false);
    let rs = build(&[web(json!({}))], &[web_slice(&[not_ready])]);
    let key = svc_key("10.96.0.10", proto::TCP, 80);
    assert!(
        v4(&rs)
            .set(names::NO_ENDPOINT_SERVICES)
            .unwrap()
            .verdict(&key)
            .is_some()
    );
}

#[test]
fn node_ports_external_and_lb_ips_go_through_the_external_chain() {
    let mut s = web(json!({
        "type": "LoadBalancer",
        "externalIPs": ["192.0.2.7"],
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31100}]
    }));
    s.status =
        serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}}))
            .unwrap();
    let rs = build(&[s], &[web_slice(&[ready("10.244.1.2", "node-2")])]);
    let f = v4(&rs);
    let ext = external_chain(SP);
    for addr in ["192.0.2.7", "198.18.0.200"] {
        assert_eq!(
            service_ips(f).verdict(&svc_key(addr, proto::TCP, 80)),
            Some(&goto(&ext))
        );
    }
    assert_eq!(
        f.set(names::SERVICE_NODEPORTS)
            .unwrap()
            .verdict(&[Datum::Proto(proto::TCP), Datum::Port(31100)]),
        Some(&goto(&ext))
    );
    // eTP Cluster: masquerade, then any endpoint.
    let rules = &f.chain(&ext).unwrap().rules();
    assert_eq!(rules.len(), 1);
    assert!(
        rules[0]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::MetaSet { .. }))
    );
    assert_eq!(
        rules[0].exprs.last(),
        Some(&Expr::Verdict(goto(&cluster_chain(SP))))
    );
    // Node ports only on the node's own addresses, never loopback.
    let services = &f.chain("services").unwrap().rules();
    let np = services.last().unwrap();
    assert!(np.exprs.iter().any(|e| matches!(e, Expr::Fib { .. })));
    assert!(
        np.exprs
            .iter()
            .any(|e| matches!(e, Expr::Cmp { data, .. } if data == &[127, 0, 0, 0]))
    );
}

#[test]
fn node_port_without_endpoints_is_rejected() {
    let s = web(json!({"type": "NodePort",
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31100}]}));
    let rs = build(&[s], &[]);
    let f = v4(&rs);
    let key = [Datum::Proto(proto::TCP), Datum::Port(31100)];
    assert_eq!(
        f.set(names::NO_ENDPOINT_NODEPORTS).unwrap().verdict(&key),
        Some(&goto(names::REJECT_CHAIN))
    );
    assert_eq!(f.set(names::SERVICE_NODEPORTS).unwrap().verdict(&key), None);
}

fn local_np(extra: Value) -> K8sService {
    let mut spec = json!({"type": "NodePort", "externalTrafficPolicy": "Local",
        "healthCheckNodePort": 32000,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31100}]});
    merge(&mut spec, extra);
    web(spec)
}

#[test]
fn external_traffic_policy_local_keeps_the_source_and_uses_local_endpoints() {
    let rs = build(
        &[local_np(json!({}))],
        &[web_slice(&[
            ready("10.244.1.2", "node-1"),
            ready("10.244.2.2", "node-2"),
        ])],
    );
    let f = v4(&rs);
    let rules = &f.chain(&external_chain(SP)).unwrap().rules();
    let verdicts: Vec<&Expr> = rules.iter().filter_map(|r| r.exprs.last()).collect();
    assert_eq!(
        verdicts,
        [
            &Expr::Verdict(goto(&cluster_chain(SP))), // pods: short-circuit
            &Expr::Verdict(goto(&cluster_chain(SP))), // the node itself: masqueraded
            &Expr::Verdict(goto(&local_chain(SP))),   // everyone else: local, unmasqueraded
        ]
    );
    assert!(
        !rules[2]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::MetaSet { .. }))
    );
    assert!(
        rules[1]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::MetaSet { .. }))
    );
    assert_eq!(
        endpoints_of(f, &local_chain(SP)),
        [(ip("10.244.1.2"), Datum::Port(8080))]
    );
    assert_eq!(endpoints_of(f, &cluster_chain(SP)).len(), 2);
    let (view, _) = View::build(
        &[local_np(json!({}))],
        &[web_slice(&[
            ready("10.244.1.2", "node-1"),
            ready("10.244.2.2", "node-2"),
        ])],
    );
    let key = ServiceKey::new("default", "web");
    assert_eq!(
        health_checks(&view, &node()),
        [(32000, (key.clone(), 1))].into()
    );
    let elsewhere = Node {
        name: "node-3".into(),
        ..node()
    };
    assert_eq!(health_checks(&view, &elsewhere), [(32000, (key, 0))].into());
}

#[test]
fn external_traffic_policy_local_drops_on_nodes_without_endpoints() {
    let rs = build(
        &[local_np(json!({}))],
        &[web_slice(&[ready("10.244.2.2", "node-2")])],
    );
    let f = v4(&rs);
    let rules = &f.chain(&external_chain(SP)).unwrap().rules();
    assert_eq!(
        rules.last().unwrap().exprs.last(),
        Some(&Expr::Verdict(Verdict::Drop))
    );
    assert!(f.chain(&local_chain(SP)).is_none());
    // ClusterIP traffic is unaffected.
    assert_eq!(
        service_ips(f).verdict(&svc_key("10.96.0.10", proto::TCP, 80)),
        Some(&goto(&cluster_chain(SP)))
    );
}

#[test]
fn internal_traffic_policy_local() {
    let s = web(json!({"internalTrafficPolicy": "Local"}));
    let key = svc_key("10.96.0.10", proto::TCP, 80);
    let rs = build(
        std::slice::from_ref(&s),
        &[web_slice(&[
            ready("10.244.1.2", "node-1"),
            ready("10.244.2.2", "node-2"),
        ])],
    );
    let f = v4(&rs);
    assert_eq!(service_ips(f).verdict(&key), Some(&goto(&local_chain(SP))));
    assert_eq!(endpoints_of(f, &local_chain(SP)).len(), 1);
    assert!(f.chain(&cluster_chain(SP)).is_none());
    // Endpoints only elsewhere: dropped, not rejected.
    let rs = build(&[s], &[web_slice(&[ready("10.244.2.2", "node-2")])]);
    let f = v4(&rs);
    assert_eq!(service_ips(f).verdict(&key), None);
    assert_eq!(
        f.set(names::NO_ENDPOINT_SERVICES).unwrap().verdict(&key),
        Some(&Verdict::Drop)
    );
}

#[test]
fn hairpin_and_outside_traffic_are_masqueraded() {
    let rs = build(
        &[web(json!({}))],
        &[web_slice(&[ready("10.244.1.2", "node-1")])],
    );
    let f = v4(&rs);
    let hairpin = f.set(names::HAIRPIN).unwrap();
    assert!(hairpin.contains(&[ip("10.244.1.2"), ip("10.244.1.2")]));
    let post = &f.chain("nat-postrouting").unwrap().rules();
    assert_eq!(post.len(), 2);
    assert!(
        post.iter()
            .all(|r| matches!(r.exprs.last(), Some(Expr::Masquerade { .. })))
    );
    // ClusterIP traffic from outside 10.244.0.0/16 is marked; pod traffic keeps its source.
    let services = &f.chain("services").unwrap().rules();
    let masq = &services[0];
    assert!(masq.exprs.iter().any(|e| matches!(e, Expr::Cmp { op: netlink::nft::CmpOp::Neq, data, .. } if data == &[10, 244, 0, 0])));
    assert!(masq.exprs.iter().any(|e| matches!(e, Expr::MetaSet { .. })));
    // Without known cluster CIDRs, nothing is marked for being "outside".
    let (view, _) = View::build(&[web(json!({}))], &[]);
    let bare = desired(
        &view,
        &Node {
            name: "node-1".into(),
            cluster_cidrs: vec![],
            ..Default::default()
        },
    );
    assert_eq!(v4(&bare).chain("services").unwrap().rules().len(), 2);
}

#[test]
fn client_ip_affinity_gets_a_timeout_map_per_balancing_chain() {
    let s = web(json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
    let rs = build(
        &[s],
        &[web_slice(&[
            ready("10.244.1.2", "n"),
            ready("10.244.2.2", "n"),
        ])],
    );
    let f = v4(&rs);
    let chain = cluster_chain(SP);
    let rules = &f.chain(&chain).unwrap().rules();
    assert_eq!(
        rules.len(),
        3,
        "affinity lookup, then one rule per endpoint"
    );
    assert_eq!(
        rules[0].comment.as_deref(),
        Some("sessionAffinity: ClientIP, 60s")
    );
    assert!(
        rules[0]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Lookup { set, .. } if *set == names::AFFINITY.into()))
    );
    let aff = f.set(names::AFFINITY).unwrap();
    assert_eq!(
        aff.set.timeout,
        Some(None),
        "elements carry their own timeouts"
    );
    // Default timeout: three hours.
    let s = web(json!({"sessionAffinity": "ClientIP"}));
    let rs = build(&[s], &[web_slice(&[ready("10.244.1.2", "n")])]);
    let rules = &v4(&rs).chain(&chain).unwrap().rules();
    assert_eq!(
        rules[0].comment.as_deref(),
        Some("sessionAffinity: ClientIP, 10800s")
    );
}

#[test]
fn dual_stack_services_get_rules_in_both_tables() {
    let s =
        web(json!({"clusterIPs": ["10.96.0.10", "fd00:10:96::a"], "ipFamilies": ["IPv4", "IPv6"]}));
    let rs = build(
        &[s],
        &[
            web_slice(&[ready("10.244.1.2", "node-1")]),
            slice_for("web", "http", 8080, &[ready("fd00:10:244::2", "node-1")]),
        ],
    );
    let f6 = rs.family(Family::Ip6).unwrap();
    assert_eq!(
        service_ips(f6).verdict(&svc_key("fd00:10:96::a", proto::TCP, 80)),
        Some(&goto(&cluster_chain(SP)))
    );
    assert_eq!(
        endpoints_of(f6, &cluster_chain(SP)),
        [(ip("fd00:10:244::2"), Datum::Port(8080))]
    );
    assert_eq!(endpoints_of(v4(&rs), &cluster_chain(SP)).len(), 1);
    let reject = &f6.chain(names::REJECT_CHAIN).unwrap().rules()[1];
    assert_eq!(
        reject.exprs.last(),
        Some(&Expr::Reject(netlink::nft::Reject::Icmp(4)))
    );
}

#[test]
fn the_computation_is_pure() {
    let a = build(&[web(json!({}))], &[web_slice(&[ready("10.244.1.2", "n")])]);
    let b = build(&[web(json!({}))], &[web_slice(&[ready("10.244.1.2", "n")])]);
    assert_eq!(a, b);
    assert!(diff(&a, &b).is_empty());
}

// ---- diff ---------------------------------------------------------------------------

/// `n` ClusterIP services with `eps` endpoints each; `shift` moves the first
/// service's first endpoint to another address.
fn many(n: u32, eps: u32, first_endpoint: Ipv4Addr) -> Ruleset {
    let mut services = Vec::new();
    let mut slices = Vec::new();
    for i in 0..n {
        let name = format!("s{i}");
        let cip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
        services.push(svc(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": cip.to_string(), "ports": [{"name": "http", "port": 80}]}
        })));
        let addrs: Vec<String> = (0..eps)
            .map(|j| {
                if i == 0 && j == 0 {
                    first_endpoint.to_string()
                } else {
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + i * eps + j + 1)
                        .to_string()
                }
            })
            .collect();
        let eps: Vec<Ep<'_>> = addrs
            .iter()
            .map(|a| (a.as_str(), "n", true, true, false))
            .collect();
        slices.push(slice_for(&name, "http", 8080, &eps));
    }
    build(&services, &slices)
}

#[test]
fn a_full_sync_from_empty_creates_everything() {
    let rs = many(3, 2, Ipv4Addr::new(10, 250, 0, 1));
    let batch = diff(&Ruleset::default(), &rs);
    let f = v4(&rs);
    let all_chains = || {
        rs.families.iter().flat_map(|f| {
            f.chains
                .values()
                .chain(f.services.values().flat_map(|s| s.chains.values()))
        })
    };
    let rules: usize = all_chains().map(|c| c.rules().len()).sum();
    let chains = all_chains().count();
    let sets: usize = rs.families.iter().map(|f| f.sets.len()).sum();
    let nonempty: usize = rs
        .families
        .iter()
        .flat_map(|f| f.sets.values())
        .filter(|s| !s.is_empty())
        .count();
    assert_eq!(batch.len(), 2 + chains + sets + nonempty + rules);
    assert_eq!(f.sets.len(), 7, "shared sets only, none per service");
    let full = full_sync(&rs);
    assert_eq!(full.len(), batch.len() + 2, "destroy both tables first");
}

#[test]
fn replacing_one_endpoint_touches_only_elements() {
    let a = many(1000, 10, Ipv4Addr::new(10, 250, 0, 1));
    let b = many(1000, 10, Ipv4Addr::new(10, 250, 0, 2));
    let batch = diff(&a, &b);
    // hairpin: delete + add; the service's chain: flush + its 10 rules. Nothing else,
    // whatever the number of services.
    assert_eq!(batch.len(), 2 + 1 + 10, "{batch:?}");
    assert!(diff(&b, &b).is_empty());
}

#[test]
fn adding_an_endpoint_rewrites_one_short_chain() {
    let rs = |eps: &[Ep<'_>]| build(&[web(json!({}))], &[web_slice(eps)]);
    let a = rs(&[ready("10.244.1.2", "n")]);
    let b = rs(&[ready("10.244.1.2", "n"), ready("10.244.1.3", "n")]);
    let batch = diff(&a, &b);
    // hairpin add, flush chain, two rules.
    assert_eq!(batch.len(), 4);
    // And back: hairpin delete, flush, one rule.
    assert_eq!(diff(&b, &a).len(), 3);
}

#[test]
fn services_come_and_go_as_a_few_messages() {
    let a = build(&[], &[]);
    let b = build(&[web(json!({}))], &[web_slice(&[ready("10.244.1.2", "n")])]);
    // A chain; elements of service-ips, cluster-ips, hairpin; one rule.
    assert_eq!(diff(&a, &b).len(), 5);
    // Removal: the same elements out, flush, delete the chain.
    assert_eq!(diff(&b, &a).len(), 5);
    // From "no endpoints" to "endpoints": the key moves from no-endpoint-services to
    // service-ips; the hairpin element, the chain and its rule come.
    let c = build(&[web(json!({}))], &[]);
    assert_eq!(diff(&c, &b).len(), 5);
}

#[test]
fn emptying_a_family_deletes_its_table() {
    let a = build(&[], &[]);
    let b = Ruleset {
        families: vec![a.families[0].clone()],
    };
    assert_eq!(diff(&a, &b).len(), 1);
    assert_eq!(
        diff(&b, &a).len(),
        1 + a.families[1].chains.len()
            + a.families[1].sets.len()
            + a.families[1]
                .chains
                .values()
                .map(|c| c.rules().len())
                .sum::<usize>()
    );
}

// ---- incremental updates ------------------------------------------------------------

/// Views of `many`-like clusters, for `update`.
fn view_of(services: &[K8sService], slices: &[EndpointSlice]) -> View {
    View::build(services, slices).0
}

#[test]
fn an_update_of_the_changed_services_equals_a_full_recomputation() {
    let svcs: Vec<K8sService> = (0..50)
        .map(|i| {
            svc(json!({
                "metadata": {"name": format!("s{i}"), "namespace": "default"},
                "spec": {"clusterIP": format!("10.96.1.{i}"), "type": "NodePort",
                         "ports": [{"name": "http", "port": 80, "nodePort": 30000 + i}]}
            }))
        })
        .collect();
    let slices = |first: &str| -> Vec<EndpointSlice> {
        (0..50)
            .map(|i| {
                let a = if i == 7 {
                    first.to_owned()
                } else {
                    format!("10.244.2.{i}")
                };
                // Every service also shares one endpoint, 10.244.9.9.
                slice_for(
                    &format!("s{i}"),
                    "http",
                    8080,
                    &[ready(&a, "node-1"), ready("10.244.9.9", "node-2")],
                )
            })
            .collect()
    };
    let before = view_of(&svcs, &slices("10.244.3.1"));
    let after = view_of(&svcs, &slices("10.244.3.2"));
    let mut applied = desired(&before, &node());
    let full = desired(&after, &node());
    let mut batch = netlink::nft::Batch::new();
    let changed = [ServiceKey::new("default", "s7")].into_iter().collect();
    update(&mut batch, &mut applied, &after, &node(), &changed);
    assert_eq!(applied, full);
    assert_eq!(batch.len(), diff(&desired(&before, &node()), &full).len());
    // hairpin out and in; flush; two rules.
    assert_eq!(batch.len(), 5);

    // A service deleted: its chains and elements go, the shared hairpin pair stays.
    let gone: Vec<K8sService> = svcs[1..].to_vec();
    let after_delete = view_of(&gone, &slices("10.244.3.2"));
    let mut batch = netlink::nft::Batch::new();
    let changed = [ServiceKey::new("default", "s0")].into_iter().collect();
    update(&mut batch, &mut applied, &after_delete, &node(), &changed);
    assert_eq!(applied, desired(&after_delete, &node()));
    let hairpin = v4(&applied).set(names::HAIRPIN).unwrap();
    assert!(hairpin.contains(&[ip("10.244.9.9"), ip("10.244.9.9")]));
    assert!(!hairpin.contains(&[ip("10.244.2.0"), ip("10.244.2.0")]));
    // service-ips, cluster-ips, service-nodeports, hairpin: 4 deletes; flush and
    // delete the chains svc- and ext-: 4.
    assert_eq!(batch.len(), 8);

    // Nothing changed: nothing to send.
    let mut batch = netlink::nft::Batch::new();
    let changed = [ServiceKey::new("default", "s3")].into_iter().collect();
    update(&mut batch, &mut applied, &after_delete, &node(), &changed);
    assert!(batch.is_empty());
}

#[test]
fn endpoints_shared_by_two_services_keep_their_hairpin_pair() {
    let other = svc(json!({
        "metadata": {"name": "other", "namespace": "default"},
        "spec": {"clusterIP": "10.96.0.20", "ports": [{"name": "http", "port": 80}]}
    }));
    let both = build(
        &[web(json!({})), other.clone()],
        &[
            web_slice(&[ready("10.244.1.2", "n")]),
            slice_for("other", "http", 8080, &[ready("10.244.1.2", "n")]),
        ],
    );
    let one = build(
        &[other],
        &[slice_for(
            "other",
            "http",
            8080,
            &[ready("10.244.1.2", "n")],
        )],
    );
    let hairpin = v4(&one).set(names::HAIRPIN).unwrap();
    assert!(hairpin.contains(&[ip("10.244.1.2"), ip("10.244.1.2")]));
    // Removing web: service-ips and cluster-ips elements, flush and delete its chain;
    // the shared hairpin element stays.
    assert_eq!(diff(&both, &one).len(), 4);
}

// ---- added with the agent wiring ---------------------------------------------------

#[test]
fn affinity_rules_record_the_pick_with_the_services_timeout() {
    let s = web(json!({"sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}));
    let rs = build(
        &[s],
        &[web_slice(&[
            ready("10.244.1.2", "n"),
            ready("10.244.2.2", "n"),
        ])],
    );
    let rules = v4(&rs).chain(&cluster_chain(SP)).unwrap().rules();
    for r in &rules[1..] {
        let dynset = r.exprs.iter().find_map(|e| match e {
            Expr::Dynset {
                set,
                op,
                sreg_data,
                timeout,
                ..
            } => Some((set, op, sreg_data, timeout)),
            _ => None,
        });
        let (set, op, data, timeout) = dynset.expect("each endpoint rule records the client");
        assert_eq!(set, names::AFFINITY);
        assert_eq!(*op, netlink::nft::DynsetOp::Update);
        assert_eq!(*timeout, Some(std::time::Duration::from_secs(60)));
        // DNAT reads the same registers the element's data came from.
        let nat = r.exprs.iter().find_map(|e| match e {
            Expr::Nat { addr, .. } => Some(*addr),
            _ => None,
        });
        assert_eq!(nat, Some(*data));
    }
    assert!(v4(&rs).set(names::AFFINITY).unwrap().set.dynamic);
}

#[test]
fn node_ports_answer_on_the_nodes_addresses_when_known() {
    let mut n = node();
    n.node_ips = vec![
        "198.18.0.11".parse().unwrap(),
        "2001:2::11".parse().unwrap(),
    ];
    let (view, _) = View::build(&[web(json!({}))], &[]);
    let rs = desired(&view, &n);
    let ips = v4(&rs).set(names::NODEPORT_IPS).expect("nodeport-ips");
    assert!(ips.contains(&[ip("198.18.0.11")]));
    assert_eq!(ips.len(), 1, "only this family's addresses");
    let ip6 = rs
        .family(Family::Ip6)
        .unwrap()
        .set(names::NODEPORT_IPS)
        .unwrap();
    assert_eq!(ip6.len(), 1);
    let services = v4(&rs).chain("services").unwrap().rules();
    let nodeport_rule = services.last().unwrap();
    assert!(
        nodeport_rule
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Lookup { set, .. } if *set == names::NODEPORT_IPS.into()))
    );
    assert!(
        !nodeport_rule
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Fib { .. }))
    );
    // Unknown addresses: any local address, as before.
    let rs = desired(&view, &node());
    assert!(v4(&rs).set(names::NODEPORT_IPS).is_none());
}

#[test]
fn unallocated_cluster_ips_are_dropped() {
    let mut n = node();
    n.service_cidrs = vec![
        "10.96.0.0/12".parse().unwrap(),
        "fd00:10:96::/112".parse().unwrap(),
    ];
    let (view, _) = View::build(&[web(json!({}))], &[]);
    let rs = desired(&view, &n);
    let check = v4(&rs).chain("cluster-ips-check").unwrap().rules();
    assert_eq!(
        check.len(),
        2,
        "known ClusterIP, other port: reject; then the CIDR: drop"
    );
    assert_eq!(
        check[1].comment.as_deref(),
        Some("an unallocated ClusterIP")
    );
    assert!(matches!(
        check[1].exprs.last(),
        Some(Expr::Verdict(Verdict::Drop))
    ));
    let check6 = rs
        .family(Family::Ip6)
        .unwrap()
        .chain("cluster-ips-check")
        .unwrap();
    assert_eq!(check6.rules().len(), 2);
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_usable() {
    let not_ready = ("10.244.1.2", "n", false, false, false);
    let rs = build(&[web(json!({}))], &[web_slice(&[not_ready])]);
    assert!(v4(&rs).chain(&cluster_chain(SP)).is_none());
    let rs = build(
        &[web(json!({"publishNotReadyAddresses": true}))],
        &[web_slice(&[not_ready])],
    );
    assert_eq!(
        endpoints_of(v4(&rs), &cluster_chain(SP)),
        vec![(ip("10.244.1.2"), Datum::Port(8080))]
    );
}

#[test]
fn removed_udp_endpoints_get_their_conntrack_entries_deleted() {
    let dns = |eps: &[Ep<'_>]| {
        let s = svc(json!({
            "metadata": {"name": "dns", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "externalIPs": ["192.0.2.1"],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                               {"name": "tcp", "port": 53, "protocol": "TCP"}]}
        }));
        let mut sl = slice_for("dns", "dns", 5353, eps);
        if let Some(p) = sl.ports.as_mut().and_then(|p| p.first_mut()) {
            p.protocol = Some("UDP".into());
        }
        let (v, _) = View::build(&[s], &[sl]);
        v.services.into_values().next().unwrap()
    };
    let old = dns(&[ready("10.244.1.2", "n"), ready("10.244.2.2", "n")]);
    let new = dns(&[ready("10.244.2.2", "n")]);
    let filters = crate::stale::udp(&old, Some(&new));
    let gone: std::net::IpAddr = "10.244.1.2".parse().unwrap();
    assert_eq!(
        filters.len(),
        3,
        "ClusterIP, external IP, node port: {filters:?}"
    );
    assert!(
        filters
            .iter()
            .all(|f| f.reply_src == gone && f.proto == proto::UDP)
    );
    assert!(
        filters
            .iter()
            .any(|f| f.orig_dst.is_none() && f.orig_dport == Some(30053))
    );
    assert!(
        crate::stale::udp(&new, Some(&new)).is_empty(),
        "nothing removed"
    );
    assert_eq!(
        crate::stale::udp(&old, None).len(),
        6,
        "service deleted: both endpoints"
    );
}

#[test]
fn health_check_servers_answer_like_kube_proxy() {
    let key = ServiceKey::new("default", "web");
    let ok = crate::health::response(&key, 2);
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.ends_with(r#"{"service":{"namespace":"default","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#));
    assert!(crate::health::response(&key, 0).starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
}
