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

/// The ClusterIP destination of `web`'s port 80.
fn web_key() -> Vec<Datum> {
    svc_key("10.96.0.10", proto::TCP, 80)
}

/// The class a destination of `map` (service-ips or service-nodeports) is sent to; its
/// chain must be registered in `classes`.
fn class_of(f: &FamilyRuleset, map: &str, key: &[Datum]) -> Option<Class> {
    let id = f.set(map).unwrap().value(key)?.to_vec();
    let Some(Verdict::Goto(chain)) = f.set(names::CLASSES).unwrap().verdict(&id) else {
        panic!("class {id:?} not registered");
    };
    let class = chain
        .strip_prefix("enter-")
        .and_then(Class::from_chain)
        .expect("a class's enter chain");
    assert_eq!(class.key().to_vec(), id);
    assert_eq!(class.enter_chain(), *chain);
    Some(class)
}

/// The endpoints of a destination (`key` without the bucket) in the map of a
/// balancing class, in bucket order.
fn bucket_list(f: &FamilyRuleset, class: Class, key: &[Datum]) -> Vec<(Datum, Datum)> {
    let Some(map) = f.class_maps.get(&class) else {
        return vec![];
    };
    assert_eq!(map.set.name, class.chain(), "the map is named as its chain");
    let eps: Vec<(Datum, Datum)> = map
        .endpoints(key)
        .unwrap_or_default()
        .iter()
        .map(|(a, p)| (ip(&a.to_string()), Datum::Port(*p)))
        .collect();
    // The same as elements: bucket i → the i-th endpoint.
    let elements: Vec<_> = map
        .elements()
        .filter(|e| e.key[..key.len()] == *key)
        .collect();
    assert_eq!(elements.len(), eps.len());
    for e in elements {
        let Some(Datum::Mark(i)) = e.key.last() else {
            panic!("bucket of {e:?}")
        };
        let (a, p) = eps[*i as usize];
        assert_eq!(e.data, Some(netlink::nft::ElementData::Value(vec![a, p])));
    }
    eps
}

/// The endpoints a service address's connections are balanced over, checked against
/// its class (which must exist and balance over exactly that many).
fn endpoints_of(f: &FamilyRuleset, key: &[Datum]) -> Vec<(Datum, Datum)> {
    let class = class_of(f, names::SERVICE_IPS, key).expect("a class");
    let eps = bucket_list(f, class, key);
    assert_eq!(eps.len(), usize::from(class.endpoints), "{class:?}");
    assert_eq!(numgen_modulus(f, &class.chain()), eps.len() as u32);
    eps
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
        endpoints_of(v4(&rs), &web_key()),
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
    let class = class_of(f, names::SERVICE_IPS, &web_key()).unwrap();
    assert_eq!(class, Class::balance(false, false, 2, false));
    assert_eq!(class.chain(), "balance-2");
    assert_eq!(
        endpoints_of(f, &web_key()),
        [
            (ip("10.244.1.2"), Datum::Port(8080)),
            (ip("10.244.2.2"), Datum::Port(8080))
        ]
    );
    // The class's enter chain: the connection mark back to 0, on to its chain.
    let enter = f.chain("enter-balance-2").unwrap().rules();
    assert_eq!(enter.len(), 1);
    assert!(enter[0].exprs.iter().any(|e| matches!(
        e,
        Expr::CtSet {
            key: netlink::nft::CtKey::Mark,
            ..
        }
    )));
    assert_eq!(
        enter[0].exprs.last(),
        Some(&Expr::Verdict(goto("balance-2")))
    );
    // The class's chain, the balancing rule: destination and bucket looked up in the
    // class's map, DNAT to the value, in one rule.
    let rules = f.chain("balance-2").unwrap().rules();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].exprs.iter().any(
        |e| matches!(e, Expr::Lookup { set, dreg: Some(_), .. } if *set == "balance-2".into())
    ));
    assert!(matches!(rules[0].exprs.last(), Some(Expr::Nat { .. })));
    let cluster_ips = f.set(names::CLUSTER_IPS).unwrap();
    assert!(cluster_ips.contains(&[ip("10.96.0.10")]));
    // One dispatch rule for all services, whatever their number: a data map to the
    // class id, carried in the connection mark to the small verdict map of classes.
    for chain in ["services", "nodeports"] {
        let rules = &f.chain(chain).unwrap().rules();
        let vmaps: Vec<_> = rules
            .iter()
            .filter(|r| {
                r.exprs.iter().any(|e| {
                    matches!(e, Expr::Lookup { set, dreg: Some(d), .. }
                        if *d == netlink::nft::Reg::VERDICT && *set == names::CLASSES.into())
                })
            })
            .collect();
        assert_eq!(vmaps.len(), 1, "{chain}");
        // Only when the connection has no mark yet (it is set back to 0 at once).
        assert!(matches!(
            vmaps[0].exprs[0],
            Expr::Ct {
                key: netlink::nft::CtKey::Mark,
                ..
            }
        ));
    }
    // No chain per service: the fixed ones, plus two per class (enter and pick) and
    // those that follow the classes (the four by-class chains and affinity-record).
    assert_eq!(f.chains.len(), 16);
    assert_eq!(f.class_chains().len(), 2 + 5);
    assert_eq!(f.classes(), [class]);
    // The by-class chain tries the class (for connections with a mark already).
    let by_class = f.chain("services-by-class").unwrap().rules();
    assert_eq!(by_class.len(), 1);
    assert_eq!(
        by_class[0].exprs.last(),
        Some(&Expr::Verdict(Verdict::Jump("balance-2".into())))
    );
    // Only elements per service.
    let elements = f
        .services
        .values()
        .map(|s| s.all_elements().count())
        .sum::<usize>();
    assert_eq!(
        elements,
        2 + 1 + 1 + 1 + 1,
        "endpoints, service-ips, classes, cluster-ips, hairpin (the node-1 endpoint)"
    );
    // The ip6 table exists but holds nothing of this IPv4-only service.
    let f6 = rs.family(Family::Ip6).unwrap();
    assert!(f6.set(names::SERVICE_IPS).unwrap().is_empty());
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
        let _ = name;
        assert_eq!(
            endpoints_of(f, &svc_key("10.96.0.10", proto, port)),
            [(ip("10.244.1.2"), Datum::Port(target))]
        );
    }
}

#[test]
fn no_endpoints_reject_at_once() {
    let rs = build(&[web(json!({}))], &[]);
    let f = v4(&rs);
    let key = web_key();
    assert_eq!(class_of(f, names::SERVICE_IPS, &key), None);
    assert_eq!(
        f.set(names::NO_ENDPOINT_SERVICES).unwrap().verdict(&key),
        Some(&goto(names::REJECT_CHAIN))
    );
    assert!(f.classes().is_empty());
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
            c.rules().last().unwrap().exprs.last(),
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
        endpoints_of(v4(&rs), &web_key()),
        [(ip("10.244.1.2"), Datum::Port(8080))]
    );
    let rs = build(&[web(json!({}))], &[web_slice(&[terminating, gone])]);
    assert_eq!(
        endpoints_of(v4(&rs), &web_key()),
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
    let ep = [(ip("10.244.1.2"), Datum::Port(8080))];
    for addr in ["192.0.2.7", "198.18.0.200"] {
        let key = svc_key(addr, proto::TCP, 80);
        let class = class_of(f, names::SERVICE_IPS, &key).unwrap();
        assert_eq!(class, Class::balance(false, false, 1, false));
        assert_eq!(bucket_list(f, class, &key), ep);
        // eTP Cluster: masqueraded, whoever the client.
        assert!(f.set(names::MASQUERADE_IPS).unwrap().contains(&key));
    }
    assert!(
        !f.set(names::MASQUERADE_IPS).unwrap().contains(&web_key()),
        "the ClusterIP is not an external destination"
    );
    let np_key = [Datum::Proto(proto::TCP), Datum::Port(31100)];
    let class = class_of(f, names::SERVICE_NODEPORTS, &np_key).unwrap();
    assert_eq!(class.chain(), "nodeport-balance-1");
    assert_eq!(bucket_list(f, class, &np_key), ep);
    assert!(
        f.set(names::MASQUERADE_NODEPORTS)
            .unwrap()
            .contains(&np_key)
    );
    // The masquerade mark is set before the dispatch, by set membership.
    let nodeports = &f.chain("nodeports").unwrap().rules();
    assert!(nodeports[0].exprs.iter().any(
        |e| matches!(e, Expr::Lookup { set, .. } if *set == names::MASQUERADE_NODEPORTS.into())
    ));
    assert!(
        nodeports[0]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::MetaSet { .. }))
    );
    // The node-port balancing chain reads its own map.
    let bal = f.chain("nodeport-balance-1").unwrap().rules();
    assert!(
        bal[0]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Lookup { set, .. } if *set == "nodeport-balance-1".into()))
    );
    // Node ports only on the node's own addresses, never loopback.
    let services = &f.chain("services").unwrap().rules();
    let np = services.last().unwrap();
    assert_eq!(np.exprs.last(), Some(&Expr::Verdict(goto("nodeports"))));
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
    assert_eq!(class_of(f, names::SERVICE_NODEPORTS, &key), None);
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
    let np_key = [Datum::Proto(proto::TCP), Datum::Port(31100)];
    // Pods and the node itself: every endpoint.
    let all = class_of(f, names::SERVICE_NODEPORTS, &np_key).unwrap();
    assert_eq!(all, Class::balance(true, false, 2, false));
    assert_eq!(bucket_list(f, all, &np_key).len(), 2);
    // Everyone else: the local one, without masquerading.
    let here = Class::balance(true, true, 1, false);
    assert_eq!(
        f.set(names::EXTERNAL_LOCAL_NODEPORTS)
            .unwrap()
            .value(&np_key),
        Some(&here.key()[..])
    );
    assert_eq!(here.chain(), "nodeport-balance-local-1");
    assert_eq!(
        bucket_list(f, here, &np_key),
        [(ip("10.244.1.2"), Datum::Port(8080))]
    );
    assert!(
        !f.set(names::MASQUERADE_NODEPORTS)
            .unwrap()
            .contains(&np_key)
    );
    let rules = &f.chain("nodeports").unwrap().rules();
    // From the node itself: marked for masquerade, then to all endpoints.
    assert!(rules[1].exprs.iter().any(|e| matches!(e, Expr::Fib { .. })));
    assert!(
        rules[1]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::MetaSet { .. }))
    );
    // From outside the pod network and the node: to the local endpoints' dispatch.
    assert!(rules[2].exprs.iter().any(|e| matches!(e, Expr::Cmp { op: netlink::nft::CmpOp::Neq, data, .. } if data == &[10, 244, 0, 0])));
    assert_eq!(
        rules[2].exprs.last(),
        Some(&Expr::Verdict(goto("nodeport-external-local")))
    );
    assert!(
        !rules[2]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::MetaSet { .. }))
    );
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
    let np_key = [Datum::Proto(proto::TCP), Datum::Port(31100)];
    let none = [Datum::Mark(NO_LOCAL_ENDPOINT)];
    assert_eq!(
        f.set(names::EXTERNAL_LOCAL_NODEPORTS)
            .unwrap()
            .value(&np_key),
        Some(&none[..])
    );
    assert_eq!(
        f.set(names::CLASSES).unwrap().verdict(&none),
        Some(&Verdict::Drop)
    );
    assert!(
        !f.class_maps
            .contains_key(&Class::balance(true, true, 1, false))
    );
    assert!(f.chain("nodeport-balance-local-1").is_none());
    // Connections that came with a mark: no local class to try, dropped.
    let rules = f.chain("nodeport-external-local-by-class").unwrap().rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].exprs.last(), Some(&Expr::Verdict(Verdict::Drop)));
    // ClusterIP traffic is unaffected.
    assert_eq!(endpoints_of(f, &web_key()).len(), 1);
}

#[test]
fn internal_traffic_policy_local() {
    let s = web(json!({"internalTrafficPolicy": "Local"}));
    let key = web_key();
    let rs = build(
        std::slice::from_ref(&s),
        &[web_slice(&[
            ready("10.244.1.2", "node-1"),
            ready("10.244.2.2", "node-2"),
        ])],
    );
    let f = v4(&rs);
    let class = class_of(f, names::SERVICE_IPS, &key).unwrap();
    assert_eq!(class, Class::balance(false, true, 1, false));
    assert_eq!(
        endpoints_of(f, &key),
        [(ip("10.244.1.2"), Datum::Port(8080))]
    );
    assert!(bucket_list(f, Class::balance(false, false, 2, false), &key).is_empty());
    // Endpoints only elsewhere: dropped, not rejected.
    let rs = build(&[s], &[web_slice(&[ready("10.244.2.2", "node-2")])]);
    let f = v4(&rs);
    assert_eq!(class_of(f, names::SERVICE_IPS, &key), None);
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
    let post = &f.chain("nat-postrouting").unwrap().rules();
    assert_eq!(post.len(), 2);
    assert!(
        post.iter()
            .all(|r| matches!(r.exprs.last(), Some(Expr::Masquerade { .. })))
    );
    // Hairpin: DNATed, and `saddr . daddr` in the set of this node's endpoints.
    assert!(
        post[1]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Lookup { set, .. } if *set == names::HAIRPIN.into()))
    );
    let hairpin = f.set(names::HAIRPIN).unwrap();
    assert_eq!(hairpin.len(), 1);
    assert!(hairpin.contains(&[ip("10.244.1.2"), ip("10.244.1.2")]));
    // Endpoints on other nodes cannot reach themselves through this node.
    let rs = build(
        &[web(json!({}))],
        &[web_slice(&[ready("10.244.2.2", "node-2")])],
    );
    assert!(v4(&rs).set(names::HAIRPIN).unwrap().is_empty());
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
    assert_eq!(v4(&bare).chain("services").unwrap().rules().len(), 6);
}

#[test]
fn client_ip_affinity_gets_its_own_classes_and_remembers_the_timeout() {
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
    let class = class_of(f, names::SERVICE_IPS, &web_key()).unwrap();
    assert_eq!(class, Class::balance(false, false, 2, true));
    assert_eq!(class.chain(), "balance-2-affinity");
    let rules = &f.chain(&class.chain()).unwrap().rules();
    assert_eq!(
        rules.len(),
        2,
        "the affinity lookup, then the balancing rule"
    );
    assert_eq!(
        rules[0].exprs.last(),
        Some(&Expr::Verdict(Verdict::Jump(names::AFFINITY_LOOKUP.into())))
    );
    let lookup = f.chain(names::AFFINITY_LOOKUP).unwrap().rules();
    assert!(
        lookup[0]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Lookup { set, .. } if *set == names::AFFINITY.into()))
    );
    assert!(matches!(lookup[0].exprs.last(), Some(Expr::Nat { .. })));
    let aff = f.set(names::AFFINITY).unwrap();
    assert_eq!(
        aff.set.timeout,
        Some(None),
        "elements carry their own timeouts"
    );
    // The destination is in the set of its timeout, which the record rule reads.
    let timeouts: Vec<_> = f.affinity_sets.keys().copied().collect();
    assert_eq!(timeouts, [(false, 60)]);
    assert!(f.affinity_sets[&(false, 60)].contains(&web_key()));
    assert_eq!(f.affinity_sets[&(false, 60)].set.name, "affinity-ips-60");
    // Default timeout: three hours.
    let s = web(json!({"sessionAffinity": "ClientIP"}));
    let rs = build(&[s], &[web_slice(&[ready("10.244.1.2", "n")])]);
    let timeouts: Vec<_> = v4(&rs).affinity_sets.keys().copied().collect();
    assert_eq!(timeouts, [(false, 10800)]);
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
        endpoints_of(f6, &svc_key("fd00:10:96::a", proto::TCP, 80)),
        [(ip("fd00:10:244::2"), Datum::Port(8080))]
    );
    assert_eq!(endpoints_of(v4(&rs), &web_key()).len(), 1);
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
    let classes: Vec<_> = rs.families.iter().map(|f| f.class_chains()).collect();
    let all_chains = || {
        rs.families
            .iter()
            .zip(&classes)
            .flat_map(|(f, c)| f.chains.values().chain(c.values()))
    };
    let rules: usize = all_chains().map(|c| c.rules().len()).sum();
    let chains = all_chains().count();
    let sets: usize = rs
        .families
        .iter()
        .map(|f| f.sets.len() + f.affinity_sets.len() + f.class_maps.len())
        .sum();
    let nonempty: usize = rs
        .families
        .iter()
        .map(|f| f.sets.values().filter(|s| !s.is_empty()).count() + f.class_maps.len())
        .sum();
    assert_eq!(batch.len(), 2 + chains + sets + nonempty + rules);
    assert_eq!(f.sets.len(), 12, "fixed shared sets only, none per service");
    assert_eq!(
        classes[0].len(),
        2 + 5,
        "balance-2 and enter-balance-2, and those that follow the classes"
    );
    assert_eq!(f.class_maps.len(), 1, "and its map");
    let full = full_sync(&rs);
    assert_eq!(full.len(), batch.len() + 2, "destroy both tables first");
}

#[test]
fn replacing_one_endpoint_touches_only_elements() {
    let a = many(1000, 10, Ipv4Addr::new(10, 250, 0, 1));
    let b = many(1000, 10, Ipv4Addr::new(10, 250, 0, 2));
    let batch = diff(&a, &b);
    // The endpoint map of balance-10: one element out, one in. No rule, no chain,
    // whatever the number of services.
    assert_eq!(batch.len(), 2, "{batch:?}");
    assert!(diff(&b, &b).is_empty());
}

#[test]
fn adding_an_endpoint_changes_elements_only() {
    let other = |name: &str, ip: &str, eps: &[Ep<'_>]| {
        (
            svc(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80}]}
            })),
            slice_for(name, "http", 8080, eps),
        )
    };
    let (a, a_slice) = other("a", "10.96.0.20", &[ready("10.244.3.1", "n")]);
    let (b, b_slice) = other(
        "b",
        "10.96.0.21",
        &[ready("10.244.4.1", "n"), ready("10.244.4.2", "n")],
    );
    let rs = |eps: &[Ep<'_>]| {
        build(
            &[web(json!({})), a.clone(), b.clone()],
            &[web_slice(eps), a_slice.clone(), b_slice.clone()],
        )
    };
    let one = rs(&[ready("10.244.1.2", "n")]);
    let two = rs(&[ready("10.244.1.2", "n"), ready("10.244.1.3", "n")]);
    let batch = diff(&one, &two);
    // The classes (balance-1, balance-2) exist: the ClusterIP moves to the class of
    // two (service-ips: a delete and an add), its endpoints from the map of balance-1
    // to that of balance-2. Elements only.
    assert_eq!(batch.len(), 4, "{batch:?}");
    assert_eq!(diff(&two, &one).len(), 4);
    // Alone, the service's class change brings a chain and its rule, and takes the old.
    let alone = |eps: &[Ep<'_>]| build(&[web(json!({}))], &[web_slice(eps)]);
    let one = alone(&[ready("10.244.1.2", "n")]);
    let two = alone(&[ready("10.244.1.2", "n"), ready("10.244.1.3", "n")]);
    // New map, its two chains and their rules; classes and service-ips elements out;
    // classes, balance-2, service-ips elements in; the by-class chain refilled (flush,
    // one rule); the old chains flushed, they and their map deleted (with its
    // elements).
    assert_eq!(diff(&one, &two).len(), 17);
}

#[test]
fn services_come_and_go_as_a_few_messages() {
    let a = build(&[], &[]);
    let b = build(&[web(json!({}))], &[web_slice(&[ready("10.244.1.2", "n")])]);
    // Its class's map, its two chains (enter and pick) with a rule each (the first
    // service of its class), the by-class chain refilled (flush, one rule); elements
    // of classes, balance-1, service-ips, cluster-ips.
    assert_eq!(diff(&a, &b).len(), 11);
    // Removal: the elements of the fixed sets out, the by-class chain flushed, the
    // class's two chains flushed and deleted, its map deleted (with its elements).
    assert_eq!(diff(&b, &a).len(), 9);
    // From "no endpoints" to "endpoints": the key moves from no-endpoint-services to
    // service-ips; the endpoint and class elements and the class come.
    let c = build(&[web(json!({}))], &[]);
    assert_eq!(diff(&c, &b).len(), 11);
}

#[test]
fn emptying_a_family_deletes_its_table() {
    let a = build(&[], &[]);
    let b = Ruleset {
        families: vec![a.families[0].clone()],
    };
    assert_eq!(diff(&a, &b).len(), 1);
    let f = &a.families[1];
    let chains = || {
        f.chains
            .values()
            .cloned()
            .chain(f.class_chains().into_values())
    };
    assert_eq!(
        diff(&b, &a).len(),
        1 + chains().count() + f.sets.len() + chains().map(|c| c.rules().len()).sum::<usize>()
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
    // The maps of balance-2 and nodeport-balance-2, and hairpin (the endpoint is on
    // this node): one element out and one in, each.
    assert_eq!(batch.len(), 6);

    // A service deleted: its elements go, the classes it shares stay.
    let gone: Vec<K8sService> = svcs[1..].to_vec();
    let after_delete = view_of(&gone, &slices("10.244.3.2"));
    let mut batch = netlink::nft::Batch::new();
    let changed = [ServiceKey::new("default", "s0")].into_iter().collect();
    update(&mut batch, &mut applied, &after_delete, &node(), &changed);
    assert_eq!(applied, desired(&after_delete, &node()));
    assert_eq!(
        v4(&applied).classes(),
        [
            Class::balance(false, false, 2, false),
            Class::balance(true, false, 2, false)
        ]
    );
    // service-ips, cluster-ips, service-nodeports, masquerade-nodeports, balance-2,
    // nodeport-balance-2, hairpin (its node-1 endpoint): 7 delete messages; the
    // classes and the shared node-2 endpoint stay.
    assert_eq!(batch.len(), 7);

    // Nothing changed: nothing to send.
    let mut batch = netlink::nft::Batch::new();
    let changed = [ServiceKey::new("default", "s3")].into_iter().collect();
    update(&mut batch, &mut applied, &after_delete, &node(), &changed);
    assert!(batch.is_empty());
}

#[test]
fn a_class_shared_by_two_services_stays_while_either_uses_it() {
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
    let class = Class::balance(false, false, 1, false);
    assert_eq!(v4(&one).classes(), [class]);
    assert_eq!(v4(&both).classes(), [class]);
    // Removing web: service-ips, cluster-ips and endpoints elements; the class
    // (other has one endpoint too) stays.
    assert_eq!(diff(&both, &one).len(), 3);
}

// ---- added with the agent wiring ---------------------------------------------------

#[test]
fn affinity_picks_are_recorded_after_dnat_with_the_services_timeout() {
    let s = web(json!({"type": "NodePort", "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31100}]}));
    let rs = build(
        &[s],
        &[web_slice(&[
            ready("10.244.1.2", "n"),
            ready("10.244.2.2", "n"),
        ])],
    );
    let f = v4(&rs);
    let rules = f.chain(names::AFFINITY_RECORD).unwrap().rules();
    assert_eq!(rules.len(), 2, "service addresses, node ports");
    for (r, set) in rules
        .iter()
        .zip(["affinity-ips-60", "affinity-nodeports-60"])
    {
        assert!(
            r.exprs.iter().any(
                |e| matches!(e, Expr::Lookup { set: s, invert: false, .. } if *s == set.into())
            ),
            "{set}"
        );
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
        let (set, op, data, timeout) = dynset.expect("the rule records the client");
        assert_eq!(set, names::AFFINITY);
        assert_eq!(*op, netlink::nft::DynsetOp::Update);
        assert_eq!(*timeout, Some(std::time::Duration::from_secs(60)));
        // The key is the destination the client asked for (before DNAT), the data the
        // endpoint it was sent to (the packet's destination after DNAT).
        assert!(r.exprs.iter().any(|e| matches!(
            e,
            Expr::Ct {
                key: netlink::nft::CtKey::OriginalDstIp,
                ..
            }
        )));
        assert!(r.exprs.iter().any(|e| matches!(
            e,
            Expr::Payload { offset: 16, dreg, .. } if Some(*dreg) == *data
        )));
    }
    // Node ports: when the node's addresses are known, only to one of them (here they
    // are not: the key has the node port and the address, whatever it was).
    assert!(
        !rules[1]
            .exprs
            .iter()
            .any(|e| matches!(e, Expr::Lookup { set, .. } if *set == names::NODEPORT_IPS.into()))
    );
    // Reached after DNAT, on both paths.
    for chain in ["filter-prerouting-post-dnat", "filter-output-post-dnat"] {
        let c = f.chain(chain).unwrap();
        assert_eq!(c.chain.base.unwrap().priority, -90);
        assert_eq!(
            c.rules()[0].exprs.last(),
            Some(&Expr::Verdict(Verdict::Jump(names::AFFINITY_RECORD.into())))
        );
    }
    assert!(f.set(names::AFFINITY).unwrap().set.dynamic);
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
    assert_eq!(class_of(v4(&rs), names::SERVICE_IPS, &web_key()), None);
    let rs = build(
        &[web(json!({"publishNotReadyAddresses": true}))],
        &[web_slice(&[not_ready])],
    );
    assert_eq!(
        endpoints_of(v4(&rs), &web_key()),
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
