//! The allocator at size: one pass of `alloc::plan` over N LoadBalancer Services, from
//! nothing held (every Service gets its address: the controller's first pass over an
//! existing cluster, or N created at once), and at steady state with one change (all
//! hold their addresses, one new Service): what every pass after a change costs, since a
//! pass recomputes everything. No root, no API. `cargo bench -p lb`; sizes from
//! `LB_BENCH_SIZES` (default `1000,10000`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Service;
use lb::alloc::{Decision, LOAD_BALANCER_CLASS, ServiceView, plan};
use lb::crd::IPAddressPool;
use lb::pool;
use serde_json::json;

fn service(i: usize) -> ServiceView {
    let s: Service = serde_json::from_value(json!({
        "metadata": { "name": format!("svc-{i}"), "namespace": "bench" },
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": format!("10.96.{}.{}", i / 250, i % 250 + 1),
            "clusterIPs": [format!("10.96.{}.{}", i / 250, i % 250 + 1)],
            "ports": [{ "port": 80, "protocol": "TCP" }, { "port": 443, "protocol": "TCP" }],
        },
    }))
    .expect("a Service");
    let mut v = ServiceView::new(&s);
    v.created = i64::try_from(i).unwrap_or(0);
    v
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

fn main() {
    let sizes: Vec<usize> = std::env::var("LB_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect();
    println!(
        "{:>7} {:>22} {:>28}",
        "SERVICES", "all allocated (1 pass)", "one new at steady state"
    );
    for n in sizes {
        // A /16: room for every size here.
        let cr: IPAddressPool = serde_json::from_value(json!({
            "metadata": { "name": "bench", "namespace": "metallb-system" },
            "spec": { "addresses": ["10.250.0.0/16"] },
        }))
        .expect("a pool");
        let pools = pool::parse_all([&cr], &BTreeMap::new()).expect("valid");
        let mut services: Vec<ServiceView> = (0..n).map(service).collect();
        let runs = if n > 5000 { 3 } else { 10 };
        let (fresh, first) = best(runs, || plan(&pools, &services, LOAD_BALANCER_CLASS));
        for s in &mut services {
            if let Decision::Assigned { ips, pool } = &first.services[&s.key].decision {
                s.current = ips.clone();
                s.current_pool = Some(pool.clone());
            }
        }
        services.push(service(n));
        let (change, next) = best(runs, || plan(&pools, &services, LOAD_BALANCER_CLASS));
        let new = &next.services[&format!("bench/svc-{n}")].decision;
        assert!(matches!(new, Decision::Assigned { .. }), "{new:?}");
        println!(
            "{n:>8} {:>19.2} ms {:>25.2} ms",
            fresh.as_secs_f64() * 1e3,
            change.as_secs_f64() * 1e3
        );
    }
}
