//! The compile at size: `gateway::compile` over N HTTPRoutes on one Gateway listener
//! (each its own Service with 3 endpoints, a path, a header match), N Ingress paths and
//! N Mappings: what every burst of changes costs the controller, since it recompiles
//! everything; then the data plane's route lookup built over the result (`Router::new` per
//! HTTP listener), its share of a change reaching traffic. No root, no API.
//! `cargo bench -p gateway --bench compile`; sizes from `GATEWAY_BENCH_SIZES` (default
//! `1000,10000`).

use std::time::{Duration, Instant};

use gateway::config::{Config, HttpHosts, ListenerKind};
use gateway::proxy::route::Router;
use gateway::world::{Obj, World, slices_by_service};
use serde_json::{Value, json};

fn world(n: usize) -> World {
    let mut w = World::default();
    w.settings.addresses = vec!["198.18.0.200".into()];
    let mut slices = Vec::new();
    for i in 0..n {
        let name = format!("svc-{i}");
        w.services.insert(
            ("bench".into(), name.clone()),
            std::sync::Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"namespace": "bench", "name": name},
                    "spec": {"ports": [{"name": "http", "port": 80}]},
                }))
                .unwrap(),
            ),
        );
        slices.push(
            serde_json::from_value(json!({
                "metadata": {"namespace": "bench", "name": format!("{name}-a"),
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080}],
                "endpoints": (1..=3).map(|e| json!({
                    "addresses": [format!("10.{}.{}.{e}", i / 250, i % 250)],
                    "conditions": {"ready": true}})).collect::<Vec<_>>(),
            }))
            .unwrap(),
        );
        let route: Value = json!({
            "metadata": {"namespace": "bench", "name": format!("r-{i}"),
                "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [format!("h{}.example.com", i % 100)],
                "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": format!("/p/{i}")},
                    "headers": [{"name": "x-user", "value": "a"}]}],
                    "backendRefs": [{"name": name, "port": 80}]}]},
        });
        w.http_routes.push(Obj::from_json(&route));
        w.ingresses.push(
            serde_json::from_value(json!({
                "metadata": {"namespace": "bench", "name": format!("i-{i}")},
                "spec": {"ingressClassName": "kubewire", "rules": [{"host": format!("h{}.example.org", i % 100),
                    "http": {"paths": [{"path": format!("/i/{i}"), "pathType": "Prefix",
                        "backend": {"service": {"name": name, "port": {"number": 80}}}}]}}]},
            }))
            .unwrap(),
        );
        w.mappings.push(Obj::from_json(&json!({
            "metadata": {"namespace": "bench", "name": format!("m-{i}")},
            "spec": {"prefix": format!("/m/{i}/"), "service": format!("{name}.bench"),
                "add_request_headers": {"x-ip": {"value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}}},
        })));
    }
    w.endpoint_slices = slices_by_service(slices);
    w.gateway_classes.push(Obj::from_json(
        &json!({"metadata": {"name": "kubewire"}, "spec": {"controllerName": "kubewire.io/gateway"}}),
    ));
    w.gateways.push(Obj::from_json(&json!({
        "metadata": {"namespace": "bench", "name": "gw"},
        "spec": {"gatewayClassName": "kubewire", "listeners": [{"name": "http", "port": 8000, "protocol": "HTTP"}]},
    })));
    w
}

/// The best of `runs` timings of `f`.
fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

/// The HTTP virtual hosts of every listener.
fn http_hosts(c: &Config) -> impl Iterator<Item = &HttpHosts> {
    c.listeners.iter().filter_map(|l| match &l.kind {
        ListenerKind::Http(h) | ListenerKind::Tls { hosts: h, .. } => Some(h),
        _ => None,
    })
}

fn main() {
    let sizes: Vec<usize> = std::env::var("GATEWAY_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect();
    println!(
        "{:>8} {:>14} {:>14} {:>10} {:>10}",
        "EACH OF", "compile (best)", "router (best)", "routes", "statuses"
    );
    for n in sizes {
        let w = world(n);
        let (t, c) = best(5, || gateway::compile(&w));
        let (router, _) = best(5, || {
            http_hosts(&c.config).map(Router::new).collect::<Vec<_>>()
        });
        let routes: usize = http_hosts(&c.config)
            .flat_map(|h| &h.hosts)
            .map(|v| v.routes.len())
            .sum();
        println!(
            "{n:>8} {:>14?} {:>14?} {routes:>10} {:>10}",
            t,
            router,
            c.statuses.len()
        );
    }
}
