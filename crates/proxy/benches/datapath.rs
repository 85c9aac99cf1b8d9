//! The data path cost of the proxy's ruleset: connections per second and TCP
//! throughput from a client "pod" to a server "pod" through a routing "node", to a
//! ClusterIP versus to the server's pod address directly (the limit), with 10 and with
//! 10,000 services (× 10 endpoints) installed. Needs root; everything runs inside
//! throwaway namespaces. `cargo bench -p proxy --bench datapath`.
//!
//! Many short rounds, direct and ClusterIP back to back in alternating order, and the
//! median of the per-round ratios with their spread ([`benchkit`]). The client runs on
//! CPU 0 and the server on the last CPU (`PIN=0` to let the scheduler place them).
//! `ROUNDS` (default 21) and `SECONDS` per measurement (default 1) can be set.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use benchkit::{Settings, connection_rate, loadavg, paired, throughput};
use netlink::nft::NftSocket;
use proxy::{
    Endpoint, Node, Protocol, Proxier, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, desired,
};

fn service(name: String, cluster_ip: IpAddr, port: u16, endpoints: Vec<(IpAddr, u16)>) -> Service {
    let mut eps = Vec::new();
    for (address, target) in endpoints {
        eps.push(Endpoint {
            address,
            ready: true,
            serving: true,
            terminating: false,
            node_name: Some("node-2".into()),
            ports: Arc::new(BTreeMap::from([(("p".to_owned(), Protocol::Tcp), target)])),
            hints: None,
        });
    }
    Service {
        key: ServiceKey::new("bench", name),
        ty: ServiceType::ClusterIp,
        cluster_ips: vec![cluster_ip],
        external_ips: vec![],
        load_balancer_ips: vec![],
        ports: vec![ServicePort {
            name: "p".into(),
            protocol: Protocol::Tcp,
            port,
            node_port: None,
            target_port: TargetPort::Name("p".into()),
        }],
        affinity_timeout: None,
        external_traffic_policy: TrafficPolicy::Cluster,
        internal_traffic_policy: TrafficPolicy::Cluster,
        health_check_node_port: None,
        publish_not_ready: false,
        endpoints: eps,
    }
}

/// `n` filler services of 10 endpoints each (addresses nobody has), plus the two
/// measured ones in front of the server.
fn view(n: u32) -> View {
    let mut view = View::default();
    let mut add = |s: Service| {
        view.services.insert(s.key.clone(), s);
    };
    for i in 0..n {
        let eps = (0..10)
            .map(|j| {
                let a = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * 10 + j;
                (IpAddr::V4(Ipv4Addr::from(a)), 8080)
            })
            .collect();
        let cip = IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i));
        add(service(format!("filler-{i}"), cip, 80, eps));
    }
    let server: IpAddr = "10.244.2.2".parse().unwrap();
    add(service(
        "conn".into(),
        "10.111.0.1".parse().unwrap(),
        80,
        vec![(server, 8081)],
    ));
    add(service(
        "iperf".into(),
        "10.111.0.2".parse().unwrap(),
        5201,
        vec![(server, 5201)],
    ));
    view
}

fn main() {
    let settings = Settings::from_env();
    benchkit::require_root();
    let mut all = benchkit::Namespaces::default();
    let (node, client, server) = benchkit::topology(&mut all, "pxdp");
    // Direct runs use :8080 and ClusterIP runs :8081, so that their TIME_WAIT sockets
    // never collide: a SYN reusing a direct run's 4-tuple through the ClusterIP carries
    // other TCP timestamps (their offset hashes the addresses the client used) and
    // the server's PAWS check would drop it.
    benchkit::accept_and_close(&server, &[8080, 8081], settings.server_cpu());
    let _iperf = benchkit::iperf_server(&server, settings.server_cpu());

    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    let (rounds, seconds) = (settings.rounds, settings.seconds);
    let client_cpu = settings.client_cpu();
    println!(
        "data path, client pod -> node -> server pod (veths); {rounds} rounds of \
         {seconds} s per measurement, direct and via ClusterIP back to back in alternating \
         order; one connecting thread; client/server CPUs: {}; ratio = via ClusterIP / direct",
        settings.cpus(),
    );
    let labels = ("direct", "via ClusterIP");
    for n in [10, 10_000] {
        proxier.sync(desired(&view(n), &this_node)).unwrap();
        let load = loadavg();
        let rates = paired(rounds, |via| {
            let target = if via {
                "10.111.0.1:80"
            } else {
                "10.244.2.2:8080"
            };
            connection_rate(&client, target, seconds, client_cpu)
        });
        let tputs = paired(rounds, |via| {
            let target = if via { "10.111.0.2" } else { "10.244.2.2" };
            throughput(&client, target, seconds, client_cpu)
        });
        println!("{n:>6} services, load average {load} -> {}", loadavg());
        println!("  {}", rates.report("connections/s", labels, "/s", 0));
        println!("  {}", tputs.report("throughput", labels, "Gbit/s", 2));
    }
}
