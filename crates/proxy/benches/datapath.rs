//! The data path cost of the proxy's ruleset: connections per second and TCP
//! throughput from a client "pod" to a server "pod" through a routing "node", to a
//! ClusterIP versus to the server's pod address directly (the limit), with 10 and with
//! 10,000 services (× 10 endpoints) installed. Needs root; everything runs inside
//! throwaway namespaces. `cargo bench -p proxy --bench datapath`.

#![allow(clippy::disallowed_methods)] // runs `ip` and iperf3 to set up and measure

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use netlink::netns;
use netlink::nft::NftSocket;
use proxy::{
    Endpoint, Node, Protocol, Proxier, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, desired,
};

const SECONDS: u64 = 2;
const CLIENT_THREADS: usize = 2;
const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Namespaces of this benchmark, deleted when dropped (also on panic).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ip(ns: &str, args: &str) {
    let ok = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip -n {ns} {args}");
}

fn wire(node: &str, pod: &str, node_if: &str, addr: &str, gw: &str) {
    ip(
        node,
        &format!("link add {node_if} type veth peer name eth0 netns {pod}"),
    );
    ip(node, &format!("addr add {gw}/24 dev {node_if}"));
    ip(node, &format!("link set {node_if} up"));
    ip(pod, &format!("addr add {addr}/24 dev eth0"));
    ip(pod, "link set eth0 up");
    ip(pod, "link set lo up");
    ip(pod, &format!("route add default via {gw}"));
}

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
        vec![(server, 8080)],
    ));
    add(service(
        "iperf".into(),
        "10.111.0.2".parse().unwrap(),
        5201,
        vec![(server, 5201)],
    ));
    view
}

/// Connections per second to `target` from `CLIENT_THREADS` threads in `netns`, each
/// connecting, reading to the end (the server closes) and closing, for `SECONDS`.
fn connection_rate(netns: &str, target: &'static str) -> f64 {
    netns::run_in(netns, move || {
        let addr: SocketAddr = target.parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..CLIENT_THREADS)
            .map(|_| {
                let (stop, count) = (Arc::clone(&stop), Arc::clone(&count));
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        else {
                            continue;
                        };
                        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(SECONDS));
        stop.store(true, Ordering::Relaxed);
        for th in threads {
            let _ = th.join();
        }
        count.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
    })
    .unwrap()
}

/// iperf3 throughput, Gbit/s, one stream for `SECONDS`.
fn throughput(netns: &str, addr: &str) -> f64 {
    let (ns, addr) = (netns.to_owned(), addr.to_owned());
    let out = netns::run_in(&ns, move || {
        Command::new("iperf3")
            .args(["-c", &addr, "-p", "5201", "-t", &SECONDS.to_string(), "-J"])
            .args(["--connect-timeout", "2000"])
            .output()
    })
    .unwrap()
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

fn main() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(uid, 0, "this benchmark needs root (namespaces, nf_tables)");
    let id = std::process::id();
    let mut all = Namespaces(Vec::new());
    let mut make = |role: &str| {
        let name = format!("kwt-pxdp-{id}-{role}");
        netns::create(&name).unwrap();
        all.0.push(name.clone());
        name
    };
    let (node, client, server) = (make("node"), make("client"), make("server"));
    ip(&node, "link set lo up");
    wire(&node, &client, "veth1", "10.244.1.2", "10.244.1.1");
    wire(&node, &server, "veth2", "10.244.2.2", "10.244.2.1");
    netlink::sysctl::set_in(&node, "net.ipv4.ip_forward", "1").unwrap();
    // The server keeps no TIME_WAIT sockets: at tens of thousands of connections per
    // second client ports come round again within seconds, and a SYN meeting a
    // TIME_WAIT socket can be dropped by its PAWS check (1 s retransmit stalls that
    // would measure TCP, not the proxy).
    netlink::sysctl::set_in(&server, "net.ipv4.tcp_max_tw_buckets", "0").unwrap();

    // Server: accept and close at once (connection rate), and iperf3. Direct runs
    // use :8080 and ClusterIP runs :8081, so that their TIME_WAIT sockets never
    // collide: a SYN reusing a direct run's 4-tuple through the ClusterIP carries
    // other TCP timestamps (their offset hashes the addresses the client used) and
    // the server's PAWS check would drop it.
    for port in [8080, 8081] {
        let listener = netns::run_in(&server, move || TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap();
        for _ in 0..2 {
            let l = listener.try_clone().unwrap();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    drop(conn);
                }
            });
        }
    }
    let _iperf = Kill(
        netns::run_in(&server, || {
            Command::new("iperf3")
                .args(["-s", "-p", "5201"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .unwrap()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));

    let this_node = Node {
        name: "node-1".into(),
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let mut proxier = Proxier::new(NftSocket::new_in(&node).unwrap());
    println!(
        "data path, client pod -> node -> server pod (veths), {SECONDS} s each, \
         {CLIENT_THREADS} connecting threads, median of {ROUNDS} alternating runs; \
         ratio = via ClusterIP / direct"
    );
    for n in [10, 10_000] {
        proxier.sync(desired(&view(n), &this_node)).unwrap();
        // Alternate direct and ClusterIP runs, median of ROUNDS each, so that drift
        // from other load on the machine hits both alike.
        let mut rates = (Vec::new(), Vec::new());
        let mut tputs = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            rates.0.push(connection_rate(&client, "10.244.2.2:8080"));
            rates.1.push(connection_rate(&client, "10.111.0.1:80"));
            tputs.0.push(throughput(&client, "10.244.2.2"));
            tputs.1.push(throughput(&client, "10.111.0.2"));
        }
        let (direct, via) = (median(rates.0), median(rates.1));
        println!(
            "{n:>6} services: connections/s direct {direct:.0}, via ClusterIP {via:.0} ({:.1}%)",
            100.0 * via / direct
        );
        let (direct, via) = (median(tputs.0), median(tputs.1));
        println!(
            "{n:>6} services: throughput Gbit/s direct {direct:.2}, via ClusterIP {via:.2} ({:.1}%)",
            100.0 * via / direct
        );
    }
}
