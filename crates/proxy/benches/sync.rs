//! Sync times of the service proxy into a fresh network namespace: a full sync of N
//! services × 10 endpoints from empty, then one endpoint replaced and one added.
//! Needs root. `cargo bench -p proxy`; sizes from `PROXY_BENCH_SIZES` (default
//! `1000,10000`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink::netns;
use netlink::nft::NftSocket;
use proxy::{
    Endpoint, Node, Protocol, Proxier, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, desired,
};

const ENDPOINTS: u32 = 10;

/// A namespace of this benchmark, deleted when dropped (also on panic).
struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn addr(base: Ipv4Addr, n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(base) + n))
}

fn view(services: u32) -> View {
    let mut view = View::default();
    for i in 0..services {
        let svc = service(i);
        view.services.insert(svc.key.clone(), svc);
    }
    view
}

/// ClusterIP service number `i`, with its endpoints.
fn service(i: u32) -> Service {
    {
        let key = ServiceKey::new("bench", format!("svc-{i}"));
        let ports = Arc::new(BTreeMap::from([(("http".to_owned(), Protocol::Tcp), 8080)]));
        let endpoints = (0..ENDPOINTS)
            .map(|j| Endpoint {
                address: addr(Ipv4Addr::new(10, 128, 0, 0), i * ENDPOINTS + j),
                ready: true,
                serving: true,
                terminating: false,
                // Spread over 1,000 nodes (100 endpoints each at 10,000 services): a
                // node hosts only some, as in a cluster (hairpin pairs are local).
                node_name: Some(format!("node-{}", (i * ENDPOINTS + j) % 1000).into()),
                ports: Arc::clone(&ports),
                hints: None,
            })
            .collect();
        Service {
            key: key.clone(),
            ty: ServiceType::ClusterIp,
            cluster_ips: vec![addr(Ipv4Addr::new(10, 96, 0, 0), i)],
            external_ips: vec![],
            load_balancer_ips: vec![],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: None,
                target_port: TargetPort::Number(8080),
            }],
            affinity_timeout: None,
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            health_check_node_port: None,
            publish_not_ready: false,
            endpoints,
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A line of /proc/self/status (VmRSS, VmHWM: one process holds every size in turn,
/// so the peak is the largest so far).
fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l[field.len() + 1..].trim().to_owned())
        })
        .unwrap_or_default()
}

fn main() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "this benchmark needs root (network namespaces, nf_tables)"
    );
    let sizes: Vec<u32> = std::env::var("PROXY_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("PROXY_BENCH_SIZES: numbers"))
        .collect();
    let node = Node {
        name: "node-0".into(),
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        ..Default::default()
    };
    println!("service proxy sync, {ENDPOINTS} endpoints per service, fresh namespace each size");
    for n in sizes {
        let ns = Ns(format!("kwt-px-bench-{}-{n}", std::process::id()));
        netns::create(&ns.0).unwrap();
        let mut proxier = Proxier::new(NftSocket::new_in(&ns.0).unwrap());

        let mut v = view(n);
        let t = Instant::now();
        let rules = desired(&v, &node);
        let compute = t.elapsed();
        let t = Instant::now();
        let report = proxier.sync(rules).unwrap();
        let full = t.elapsed();
        assert!(report.full);
        println!(
            "{n:>6} services: full sync {} ({} messages, {:.1} MiB; compute {}, \
             diff+encode+apply {})",
            ms(compute + full),
            report.messages,
            report.bytes as f64 / (1024.0 * 1024.0),
            ms(compute),
            ms(full),
        );
        println!(
            "{n:>6} services: resident memory after the full sync {} (view and applied \
             ruleset), peak so far {}",
            status("VmRSS"),
            status("VmHWM")
        );

        // One endpoint replaced by a new address, then one added: incremental
        // updates of the one service, as the agent does them.
        let key = ServiceKey::new("bench", format!("svc-{}", n / 2));
        let changed = BTreeSet::from([key.clone()]);
        v.services.get_mut(&key).unwrap().endpoints[3].address =
            addr(Ipv4Addr::new(10, 200, 0, 0), 1);
        let t = Instant::now();
        let report = proxier.update(&v, &node, &changed).unwrap();
        println!(
            "{n:>6} services: one endpoint replaced: {} ({} messages, compute+diff+apply)",
            ms(t.elapsed()),
            report.messages,
        );
        let svc = v.services.get_mut(&key).unwrap();
        let mut extra = svc.endpoints[0].clone();
        extra.address = addr(Ipv4Addr::new(10, 200, 0, 0), 2);
        svc.endpoints.push(extra);
        let t = Instant::now();
        let report = proxier.update(&v, &node, &changed).unwrap();
        println!(
            "{n:>6} services: one endpoint added:    {} ({} messages, compute+diff+apply; \
             the first service with 11: a new class map, chain and rule)",
            ms(t.elapsed()),
            report.messages,
        );
        // The same on another service: its class (11 endpoints) exists now.
        let other = ServiceKey::new("bench", format!("svc-{}", n / 2 + 1));
        let svc = v.services.get_mut(&other).unwrap();
        let mut extra = svc.endpoints[0].clone();
        extra.address = addr(Ipv4Addr::new(10, 200, 0, 0), 3);
        svc.endpoints.push(extra);
        let t = Instant::now();
        let report = proxier
            .update(&v, &node, &BTreeSet::from([other.clone()]))
            .unwrap();
        println!(
            "{n:>6} services: one endpoint added:    {} ({} messages, compute+diff+apply; \
             its class exists)",
            ms(t.elapsed()),
            report.messages,
        );
        // A new service with 10 endpoints.
        let added = service(n);
        let added_key = added.key.clone();
        v.services.insert(added_key.clone(), added);
        let t = Instant::now();
        let report = proxier
            .update(&v, &node, &BTreeSet::from([added_key]))
            .unwrap();
        println!(
            "{n:>6} services: one service added:     {} ({} messages, compute+diff+apply)",
            ms(t.elapsed()),
            report.messages,
        );
        v.services.get_mut(&other).unwrap().endpoints.pop();
        proxier.update(&v, &node, &BTreeSet::from([other])).unwrap();

        // The same change through a full recomputation and whole-ruleset diff, for
        // comparison (what a proxy without change tracking pays).
        v.services.get_mut(&key).unwrap().endpoints.pop();
        let t = Instant::now();
        let report = proxier.sync(desired(&v, &node)).unwrap();
        println!(
            "{n:>6} services: one endpoint removed, full recompute and diff: {} ({} messages)",
            ms(t.elapsed()),
            report.messages,
        );
        println!(
            "{n:>6} services: resident memory {} (view and applied ruleset), peak so far {}",
            status("VmRSS"),
            status("VmHWM")
        );
    }
}
