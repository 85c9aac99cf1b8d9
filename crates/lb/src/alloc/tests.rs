//! One test per allocation rule, on Services written as a user writes them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::*;
use crate::crd::IPAddressPool;

fn pools(specs: &[serde_json::Value]) -> BTreeMap<String, Pool> {
    let crs: Vec<IPAddressPool> = specs
        .iter()
        .map(|s| serde_json::from_value(s.clone()).unwrap())
        .collect();
    pool::parse_all(&crs, &namespaces()).unwrap()
}

fn namespaces() -> BTreeMap<String, BTreeMap<String, String>> {
    let mut n = BTreeMap::new();
    n.insert(
        "prod".to_string(),
        [("env".to_string(), "prod".to_string())].into(),
    );
    n.insert("default".to_string(), BTreeMap::new());
    n
}

fn pool(name: &str, addresses: &[&str]) -> serde_json::Value {
    json!({ "metadata": { "name": name, "namespace": "metallb-system" }, "spec": { "addresses": addresses } })
}

/// A LoadBalancer Service `name` in `default`, IPv4, port 80/TCP, made at `created`;
/// `extra` is merged into it.
fn svc(name: &str, created: i64, extra: serde_json::Value) -> ServiceView {
    let mut v = json!({
        "metadata": { "name": name, "namespace": "default" },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"],
            "ports": [{ "port": 80, "protocol": "TCP" }],
        },
    });
    merge(&mut v, extra);
    let s: Service = serde_json::from_value(v).unwrap();
    let mut view = ServiceView::new(&s);
    view.created = created;
    view
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn ips(plan: &Plan, key: &str) -> Vec<String> {
    match &plan.services[key].decision {
        Decision::Assigned { ips, .. } => ips.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    }
}

fn pool_of<'a>(plan: &'a Plan, key: &str) -> Option<&'a str> {
    match &plan.services[key].decision {
        Decision::Assigned { pool, .. } => Some(pool),
        _ => None,
    }
}

fn events(plan: &Plan, key: &str) -> Vec<(&'static str, String)> {
    plan.services[key]
        .events
        .iter()
        .map(|e| (e.reason, e.message.clone()))
        .collect()
}

/// The plan of `services`, then the same again with each Service holding what it got
/// (the next pass, after the statuses were written): it must not change.
fn stable(pools: &BTreeMap<String, Pool>, services: &[ServiceView]) -> Plan {
    let first = plan(pools, services, LOAD_BALANCER_CLASS);
    let next: Vec<ServiceView> = services
        .iter()
        .map(|s| {
            let mut s = s.clone();
            if let Decision::Assigned { ips, pool } = &first.services[&s.key].decision {
                s.current = ips.clone();
                s.current_pool = Some(pool.clone());
            } else {
                s.current.clear();
            }
            s
        })
        .collect();
    let second = plan(pools, &next, LOAD_BALANCER_CLASS);
    for (k, o) in &first.services {
        assert_eq!(
            o.decision, second.services[k].decision,
            "{k} moved on the next pass"
        );
    }
    first
}

#[test]
fn a_service_gets_the_first_free_address_and_an_event() {
    let p = pools(&[pool("default", &["198.18.0.200-198.18.0.250"])]);
    let plan = stable(&p, &[svc("a", 1, json!({})), svc("b", 2, json!({}))]);
    assert_eq!(ips(&plan, "default/a"), ["198.18.0.200"]);
    assert_eq!(ips(&plan, "default/b"), ["198.18.0.201"]);
    assert_eq!(pool_of(&plan, "default/a"), Some("default"));
    assert_eq!(
        events(&plan, "default/a"),
        [("IPAllocated", r#"Assigned IP ["198.18.0.200"]"#.to_string())]
    );
    assert_eq!(plan.usage["default"], Usage { v4: 2, v6: 0 });
}

#[test]
fn exhaustion_leaves_the_newest_pending_with_a_warning() {
    let p = pools(&[pool("small", &["10.0.0.1-10.0.0.2"])]);
    let services = [
        svc("a", 1, json!({})),
        svc("b", 2, json!({})),
        svc("c", 3, json!({})),
    ];
    let plan = stable(&p, &services);
    assert_eq!(ips(&plan, "default/c"), Vec::<String>::new());
    assert_eq!(plan.services["default/c"].decision, Decision::None);
    let e = &plan.services["default/c"].events[0];
    assert_eq!(
        (e.type_, e.reason),
        (EventType::Warning, "AllocationFailed")
    );
    assert_eq!(
        e.message,
        r#"Failed to allocate IP for "default/c": no available IPs"#
    );
}

#[test]
fn held_addresses_are_kept_first_so_a_restart_gives_nothing_twice() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.3"])]);
    // b is older but holds nothing; a holds .1 from before the restart.
    let a = svc(
        "a",
        5,
        json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.1" }] } } }),
    );
    let b = svc("b", 1, json!({}));
    let plan = stable(&p, &[a, b]);
    assert_eq!(ips(&plan, "default/a"), ["10.0.0.1"]);
    assert!(events(&plan, "default/a").is_empty());
    assert_eq!(ips(&plan, "default/b"), ["10.0.0.2"]);
}

#[test]
fn two_services_holding_one_address_the_older_keeps_it() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.3"])]);
    let held = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.1" }] } } });
    let plan = plan(
        &p,
        &[svc("new", 9, held.clone()), svc("old", 1, held)],
        LOAD_BALANCER_CLASS,
    );
    assert_eq!(ips(&plan, "default/old"), ["10.0.0.1"]);
    assert_eq!(ips(&plan, "default/new"), ["10.0.0.2"]);
    assert_eq!(events(&plan, "default/new")[0].0, "ClearAssignment");
}

#[test]
fn a_requested_address_is_given_if_a_pool_has_it_and_it_is_free() {
    let p = pools(&[pool("p", &["10.0.0.0/24"])]);
    let want = |ip: &str| json!({ "spec": { "loadBalancerIP": ip } });
    let ann =
        |ips: &str| json!({ "metadata": { "annotations": { "metallb.io/loadBalancerIPs": ips } } });
    let plan = stable(
        &p,
        &[
            svc("spec", 1, want("10.0.0.7")),
            svc("annotated", 2, ann("10.0.0.9")),
            svc("taken", 3, want("10.0.0.7")),
            svc("outside", 4, want("192.168.1.1")),
            svc("garbage", 5, ann("10.0.0.x")),
        ],
    );
    assert_eq!(ips(&plan, "default/spec"), ["10.0.0.7"]);
    assert_eq!(ips(&plan, "default/annotated"), ["10.0.0.9"]);
    assert_eq!(
        events(&plan, "default/taken")[0].1,
        r#"Failed to allocate IP for "default/taken": address "10.0.0.7" is in use by default/spec and cannot be shared: existing service does not allow sharing"#
    );
    assert_eq!(
        events(&plan, "default/outside")[0].1,
        r#"Failed to allocate IP for "default/outside": ["192.168.1.1"] is not allowed in config: no pool holds it"#
    );
    assert_eq!(events(&plan, "default/garbage")[0].0, "LoadBalancerFailed");
}

#[test]
fn the_older_annotations_count_and_both_ways_of_asking_is_refused() {
    let p = pools(&[pool("a", &["10.0.0.0/24"]), pool("b", &["10.0.1.0/24"])]);
    let plan = stable(
        &p,
        &[
            svc(
                "old",
                1,
                json!({ "metadata": { "annotations": { "metallb.universe.tf/address-pool": "b" } } }),
            ),
            svc(
                "both",
                2,
                json!({
                    "metadata": { "annotations": { "metallb.io/loadBalancerIPs": "10.0.0.5" } },
                    "spec": { "loadBalancerIP": "10.0.0.5" },
                }),
            ),
        ],
    );
    assert_eq!(ips(&plan, "default/old"), ["10.0.1.0"]);
    assert!(
        events(&plan, "default/both")[0]
            .1
            .contains("can not have both")
    );
}

#[test]
fn a_changed_request_moves_the_service() {
    let p = pools(&[pool("p", &["10.0.0.0/24"])]);
    let s = svc(
        "a",
        1,
        json!({
            "spec": { "loadBalancerIP": "10.0.0.50" },
            "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.0" }] } },
        }),
    );
    let plan = stable(&p, &[s]);
    assert_eq!(ips(&plan, "default/a"), ["10.0.0.50"]);
}

#[test]
fn address_pool_annotation_picks_the_pool_and_unknown_pools_are_refused() {
    let p = pools(&[pool("a", &["10.0.0.0/24"]), pool("b", &["10.0.1.0/24"])]);
    let ann = |v: &str| json!({ "metadata": { "annotations": { "metallb.io/address-pool": v } } });
    let plan = stable(
        &p,
        &[
            svc("x", 1, ann("b")),
            svc("y", 2, ann("nope")),
            svc("z", 3, json!({})),
        ],
    );
    assert_eq!(ips(&plan, "default/x"), ["10.0.1.0"]);
    assert_eq!(pool_of(&plan, "default/x"), Some("b"));
    assert!(
        events(&plan, "default/y")[0]
            .1
            .ends_with(r#"unknown pool "nope""#)
    );
    assert_eq!(ips(&plan, "default/z"), ["10.0.0.0"]);
    // A requested address in another pool than the one named.
    let s = svc(
        "w",
        1,
        json!({
            "metadata": { "annotations": { "metallb.io/address-pool": "a" } },
            "spec": { "loadBalancerIP": "10.0.1.9" },
        }),
    );
    let plan = stable(&p, &[s]);
    assert!(
        events(&plan, "default/w")[0]
            .1
            .contains("not compatible with requested address pool a")
    );
    // The pool annotation changed: the Service moves to the named pool.
    let s = svc(
        "v",
        1,
        json!({
            "metadata": { "annotations": { "metallb.io/address-pool": "b" } },
            "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.3" }] } },
        }),
    );
    let plan = stable(&p, &[s]);
    assert_eq!(ips(&plan, "default/v"), ["10.0.1.0"]);
}

#[test]
fn auto_assign_false_pools_give_only_what_is_asked_for() {
    let mut manual = pool("manual", &["10.0.9.0/24"]);
    manual["spec"]["autoAssign"] = json!(false);
    let p = pools(&[manual]);
    let plan = stable(
        &p,
        &[
            svc("auto", 1, json!({})),
            svc(
                "asked",
                2,
                json!({ "spec": { "loadBalancerIP": "10.0.9.9" } }),
            ),
        ],
    );
    assert_eq!(events(&plan, "default/auto")[0].0, "AllocationFailed");
    assert_eq!(ips(&plan, "default/asked"), ["10.0.9.9"]);
}

#[test]
fn avoid_buggy_ips_never_gives_dot_zero_or_dot_255() {
    let mut p = pool("p", &["10.0.0.255-10.0.1.1"]);
    p["spec"]["avoidBuggyIPs"] = json!(true);
    let p = pools(&[p]);
    let plan = stable(
        &p,
        &[
            svc("a", 1, json!({})),
            svc("b", 2, json!({})),
            svc("c", 3, json!({ "spec": { "loadBalancerIP": "10.0.1.0" } })),
        ],
    );
    assert_eq!(ips(&plan, "default/a"), ["10.0.1.1"]);
    assert_eq!(events(&plan, "default/b")[0].0, "AllocationFailed");
    assert!(
        events(&plan, "default/c")[0]
            .1
            .contains("is not allowed in config")
    );
}

#[test]
fn sharing_needs_the_same_key_and_different_ports() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.4"])]);
    let shared = |key: &str, port: i32| {
        json!({
            "metadata": { "annotations": { "metallb.io/allow-shared-ip": key } },
            "spec": { "ports": [{ "port": port, "protocol": "TCP" }] },
        })
    };
    let plan = stable(
        &p,
        &[
            svc("dns-tcp", 1, shared("dns", 53)),
            svc("dns-udp", 2, {
                let mut v = shared("dns", 53);
                v["spec"]["ports"][0]["protocol"] = json!("UDP");
                v
            }),
            svc("same-port", 3, shared("dns", 53)),
            svc("other-key", 4, shared("web", 80)),
        ],
    );
    assert_eq!(ips(&plan, "default/dns-tcp"), ["10.0.0.1"]);
    assert_eq!(ips(&plan, "default/dns-udp"), ["10.0.0.1"]);
    // The same key but 53/TCP is taken on .1: the next address.
    assert_eq!(ips(&plan, "default/same-port"), ["10.0.0.2"]);
    assert_eq!(ips(&plan, "default/other-key"), ["10.0.0.3"]);
    // An address shared by two counts once.
    assert_eq!(plan.usage["p"].v4, 3);

    // Asking for a shared address: refused for a port clash, for a different key, for
    // no key, and for Local traffic policy with another selector.
    let ask = |mut v: serde_json::Value| {
        v["spec"]["loadBalancerIP"] = json!("10.0.0.1");
        v
    };
    let mut local = ask(shared("dns", 5353));
    local["spec"]["externalTrafficPolicy"] = json!("Local");
    local["spec"]["selector"] = json!({ "app": "other" });
    let plan = stable(
        &p,
        &[
            svc("dns-tcp", 1, ask(shared("dns", 53))),
            svc("clash", 2, ask(shared("dns", 53))),
            svc("wrong-key", 3, ask(shared("web", 8080))),
            svc(
                "no-key",
                4,
                ask(json!({ "spec": { "ports": [{ "port": 9, "protocol": "TCP" }] } })),
            ),
            svc("local", 5, local),
            svc("fits", 6, ask(shared("dns", 853))),
        ],
    );
    let why = |k: &str| events(&plan, &format!("default/{k}"))[0].1.clone();
    assert!(
        why("clash").ends_with(r#"port TCP/53 is already in use on "10.0.0.1""#),
        "{}",
        why("clash")
    );
    assert!(
        why("wrong-key").contains(r#"sharing key "web" does not match existing sharing key "dns""#)
    );
    assert!(why("no-key").contains("new service does not allow sharing"));
    assert!(why("local").contains("backend key"));
    assert_eq!(ips(&plan, "default/fits"), ["10.0.0.1"]);
}

#[test]
fn dual_stack_gets_both_families_or_nothing() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.2", "fd00::1-fd00::1"])]);
    let dual = |policy: &str| {
        json!({ "spec": {
            "clusterIPs": ["10.96.0.10", "fd00:96::10"],
            "ipFamilies": ["IPv4", "IPv6"],
            "ipFamilyPolicy": policy,
        } })
    };
    let plan = stable(
        &p,
        &[
            svc("a", 1, dual("RequireDualStack")),
            svc("b", 2, dual("RequireDualStack")),
            svc("c", 3, dual("PreferDualStack")),
        ],
    );
    assert_eq!(ips(&plan, "default/a"), ["10.0.0.1", "fd00::1"]);
    // No IPv6 left: never half-assigned.
    assert_eq!(plan.services["default/b"].decision, Decision::None);
    assert_eq!(events(&plan, "default/b")[0].0, "AllocationFailed");
    // PreferDualStack settles for one.
    assert_eq!(ips(&plan, "default/c"), ["10.0.0.2"]);
    assert_eq!(plan.usage["p"], Usage { v4: 2, v6: 1 });

    // IPv6 first when the Service's first family is IPv6; IPv6-only Services get IPv6.
    let mut v6first = dual("RequireDualStack");
    v6first["spec"]["ipFamilies"] = json!(["IPv6", "IPv4"]);
    v6first["spec"]["clusterIPs"] = json!(["fd00:96::10", "10.96.0.10"]);
    let v6only = json!({ "spec": { "clusterIPs": ["fd00:96::11"], "clusterIP": "fd00:96::11" } });
    let p2 = pools(&[pool("p", &["10.0.0.0/24", "fd00::/120"])]);
    let plan = stable(&p2, &[svc("x", 1, v6first), svc("y", 2, v6only)]);
    assert_eq!(ips(&plan, "default/x"), ["fd00::", "10.0.0.0"]);
    assert_eq!(ips(&plan, "default/y"), ["fd00::1"]);

    // A requested address of the wrong family.
    let plan = stable(
        &p2,
        &[svc(
            "w",
            1,
            json!({ "spec": { "loadBalancerIP": "fd00::9" } }),
        )],
    );
    assert!(
        events(&plan, "default/w")[0]
            .1
            .contains("does not match the ipFamily")
    );
}

#[test]
fn prefer_dual_stack_holding_one_family_gets_the_other_when_it_frees_up() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.2", "fd00::1-fd00::2"])]);
    let s = svc(
        "c",
        1,
        json!({
            "spec": { "clusterIPs": ["10.96.0.10", "fd00:96::10"], "ipFamilyPolicy": "PreferDualStack" },
            "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.2" }] } },
        }),
    );
    let plan = stable(&p, &[s]);
    assert_eq!(ips(&plan, "default/c"), ["10.0.0.2", "fd00::1"]);
    assert_eq!(
        events(&plan, "default/c")[0].1,
        r#"Assigned additional IP "fd00::1""#
    );
}

#[test]
fn service_allocation_orders_pools_by_priority_and_selects_services() {
    let with = |name: &str, addr: &str, alloc: serde_json::Value| {
        let mut p = pool(name, &[addr]);
        p["spec"]["serviceAllocation"] = alloc;
        p
    };
    let p = pools(&[
        pool("general", &["10.0.0.0/24"]),
        with(
            "prod-low",
            "10.1.0.0/24",
            json!({ "priority": 20, "namespaceSelectors": [{ "matchLabels": { "env": "prod" } }] }),
        ),
        with(
            "prod-high",
            "10.2.0.0/24",
            json!({ "priority": 10, "namespaces": ["prod"] }),
        ),
        with(
            "web",
            "10.3.0.0/24",
            json!({ "serviceSelectors": [{ "matchLabels": { "app": "web" } }] }),
        ),
    ]);
    let in_prod = |name: &str| {
        let mut s = svc(name, 1, json!({}));
        s.namespace = "prod".into();
        s.key = format!("prod/{name}");
        s
    };
    let web = svc(
        "web",
        1,
        json!({ "metadata": { "labels": { "app": "web" } } }),
    );
    let plan = stable(&p, &[in_prod("api"), web, svc("other", 1, json!({}))]);
    assert_eq!(ips(&plan, "prod/api"), ["10.2.0.0"]);
    assert_eq!(ips(&plan, "default/web"), ["10.3.0.0"]);
    assert_eq!(ips(&plan, "default/other"), ["10.0.0.0"]);
    // A pool whose serviceAllocation leaves a Service out refuses it by name too.
    let s = svc(
        "x",
        1,
        json!({ "metadata": { "annotations": { "metallb.io/address-pool": "prod-high" } } }),
    );
    let plan = stable(&p, &[s]);
    assert!(events(&plan, "default/x")[0].1.contains("not compatible"));
}

#[test]
fn a_changed_pool_moves_exactly_the_services_it_no_longer_holds() {
    let held = |ip: &str| json!({ "status": { "loadBalancer": { "ingress": [{ "ip": ip }] } } });
    let services = [
        svc("a", 1, held("10.0.0.1")),
        svc("b", 2, held("10.0.0.2")),
        svc("c", 3, held("10.0.1.5")),
    ];
    // The pool shrinks to .1-.1 and gains .9: b moves, a stays, c (other pool) stays.
    let p = pools(&[
        pool("p", &["10.0.0.1-10.0.0.1", "10.0.0.9/32"]),
        pool("q", &["10.0.1.0/24"]),
    ]);
    let plan = stable(&p, &services);
    assert_eq!(ips(&plan, "default/a"), ["10.0.0.1"]);
    assert_eq!(ips(&plan, "default/b"), ["10.0.0.9"]);
    assert_eq!(ips(&plan, "default/c"), ["10.0.1.5"]);
    assert_eq!(events(&plan, "default/b")[0].0, "ClearAssignment");
    assert_eq!(events(&plan, "default/b")[1].0, "IPAllocated");
    assert!(events(&plan, "default/a").is_empty());
    // Pool q is deleted: c has nowhere to go.
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.2"])]);
    let plan = stable(&p, &services);
    assert_eq!(plan.services["default/c"].decision, Decision::None);
    assert_eq!(ips(&plan, "default/a"), ["10.0.0.1"]);
    assert_eq!(ips(&plan, "default/b"), ["10.0.0.2"]);
    // No pool at all: every address is withdrawn, quietly.
    let plan = stable(&BTreeMap::new(), &services);
    assert!(
        plan.services
            .values()
            .all(|o| o.decision == Decision::None && o.events.is_empty())
    );
}

#[test]
fn other_classes_are_left_alone_and_ours_is_served() {
    let p = pools(&[pool("p", &["10.0.0.0/24"])]);
    let class = |c: &str| json!({ "spec": { "loadBalancerClass": c } });
    let plan = stable(
        &p,
        &[
            svc("theirs", 1, class("example.com/other")),
            svc("ours", 2, class(LOAD_BALANCER_CLASS)),
        ],
    );
    assert_eq!(plan.services["default/theirs"].decision, Decision::NotOurs);
    assert_eq!(ips(&plan, "default/ours"), ["10.0.0.0"]);
}

#[test]
fn services_that_are_not_load_balancers_hold_nothing() {
    let p = pools(&[pool("p", &["10.0.0.0/24"])]);
    let s = svc(
        "was-lb",
        1,
        json!({
            "spec": { "type": "ClusterIP" },
            "status": { "loadBalancer": { "ingress": [{ "ip": "10.0.0.0" }] } },
        }),
    );
    let plan = stable(&p, &[s, svc("lb", 2, json!({}))]);
    assert_eq!(plan.services["default/was-lb"].decision, Decision::None);
    // Its address is free again.
    assert_eq!(ips(&plan, "default/lb"), ["10.0.0.0"]);
}

#[test]
fn the_search_shortcut_for_unshared_services_never_skips_a_free_address() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.5"])]);
    let shared = |port: i32| {
        json!({
            "metadata": { "annotations": { "metallb.io/allow-shared-ip": "k" } },
            "spec": { "ports": [{ "port": port, "protocol": "TCP" }] },
        })
    };
    let plan = stable(
        &p,
        &[
            svc("a", 1, json!({})),
            svc("s1", 2, shared(80)),
            svc("s2", 3, shared(81)),
            svc("b", 4, json!({})),
            svc("c", 5, json!({ "spec": { "loadBalancerIP": "10.0.0.4" } })),
            svc("d", 6, json!({})),
            svc("e", 7, json!({})),
        ],
    );
    assert_eq!(ips(&plan, "default/a"), ["10.0.0.1"]);
    assert_eq!(ips(&plan, "default/s1"), ["10.0.0.2"]);
    assert_eq!(ips(&plan, "default/s2"), ["10.0.0.2"]);
    assert_eq!(ips(&plan, "default/b"), ["10.0.0.3"]);
    assert_eq!(ips(&plan, "default/c"), ["10.0.0.4"]);
    assert_eq!(ips(&plan, "default/d"), ["10.0.0.5"]);
    assert_eq!(events(&plan, "default/e")[0].0, "AllocationFailed");
    assert_eq!(plan.usage["p"].v4, 5);
}

#[test]
fn a_named_address_goes_to_the_service_that_names_it_not_an_older_one_that_does_not() {
    let p = pools(&[pool("p", &["10.0.0.1-10.0.0.5"])]);
    let plan = stable(
        &p,
        &[
            svc("auto", 1, json!({})),
            svc(
                "named",
                2,
                json!({ "spec": { "loadBalancerIP": "10.0.0.1" } }),
            ),
        ],
    );
    assert_eq!(ips(&plan, "default/named"), ["10.0.0.1"]);
    assert_eq!(ips(&plan, "default/auto"), ["10.0.0.2"]);
}
