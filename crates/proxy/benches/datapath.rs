//! The data path cost of the proxy's ruleset: connections per second and TCP
//! throughput from a client "pod" to a server "pod" through a routing "node", to a
//! ClusterIP versus to the server's pod address directly (the limit), with 10 and with
//! 10,000 services (× 10 endpoints) installed. Needs root; everything runs inside
//! throwaway namespaces. `cargo bench -p proxy --bench datapath`.
//!
//! A shared machine drifts by tens of percent within seconds, so the bench measures
//! many short rounds, direct and ClusterIP back to back in alternating order, and
//! reports the median of the per-round ratios with their spread. The client runs on
//! CPU 0 and the server on the last CPU (`PIN=0` to let the scheduler place them).
//! `ROUNDS` (default 21) and `SECONDS` per measurement (default 1) can be set.

#![allow(clippy::disallowed_methods)] // runs `ip` and iperf3 to set up and measure

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netlink::netns;
use netlink::nft::NftSocket;
use proxy::{
    Endpoint, Node, Protocol, Proxier, Service, ServiceKey, ServicePort, ServiceType, TargetPort,
    TrafficPolicy, View, desired,
};

/// Settings from the environment.
struct Settings {
    rounds: usize,
    seconds: f64,
    /// CPUs of the client and the server, when pinned.
    pin: Option<(usize, usize)>,
}

impl Settings {
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Settings {
            rounds: var("ROUNDS").and_then(|v| v.parse().ok()).unwrap_or(21),
            seconds: var("SECONDS").and_then(|v| v.parse().ok()).unwrap_or(1.0),
            pin: (var("PIN").as_deref() != Some("0") && cpus > 1).then_some((0, cpus - 1)),
        }
    }
}

/// Runs the calling thread on `cpu` only.
fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    }
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = (q * (v.len() - 1) as f64).round() as usize;
    v[i]
}

/// Medians of paired measurements (direct, via ClusterIP) and of their ratios.
struct Paired {
    direct: Vec<f64>,
    via: Vec<f64>,
}

impl Paired {
    fn ratios(&self) -> Vec<f64> {
        self.direct
            .iter()
            .zip(&self.via)
            .map(|(d, v)| 100.0 * v / d)
            .collect()
    }

    fn report(&self, what: &str, unit: &str, decimals: usize) -> String {
        let r = self.ratios();
        format!(
            "{what}: direct {:.decimals$} {unit} (rounds {:.decimals$}-{:.decimals$}), \
             via ClusterIP {:.decimals$} {unit} (rounds {:.decimals$}-{:.decimals$}); \
             ratio per round: median {:.1}%, middle half {:.1}-{:.1}%, all {:.1}-{:.1}%",
            quantile(&self.direct, 0.5),
            quantile(&self.direct, 0.0),
            quantile(&self.direct, 1.0),
            quantile(&self.via, 0.5),
            quantile(&self.via, 0.0),
            quantile(&self.via, 1.0),
            quantile(&r, 0.5),
            quantile(&r, 0.25),
            quantile(&r, 0.75),
            quantile(&r, 0.0),
            quantile(&r, 1.0),
        )
    }
}

/// Measures `f(direct)` and `f(via)` `rounds` times, back to back, the first of each
/// pair alternating, so that drift of the machine hits both alike.
fn paired(rounds: usize, mut f: impl FnMut(bool) -> f64) -> Paired {
    // One unrecorded pair to warm caches, conntrack and ARP.
    f(false);
    f(true);
    let mut p = Paired {
        direct: Vec::new(),
        via: Vec::new(),
    };
    for r in 0..rounds {
        let (d, v) = if r % 2 == 0 {
            let d = f(false);
            (d, f(true))
        } else {
            let v = f(true);
            (f(false), v)
        };
        p.direct.push(d);
        p.via.push(v);
    }
    p
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
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

/// Connections per second to `target` from one thread in `netns` (on `cpu`),
/// connecting, reading to the end (the server closes) and closing, for `seconds`.
fn connection_rate(netns: &str, target: &'static str, seconds: f64, cpu: Option<usize>) -> f64 {
    netns::run_in(netns, move || {
        pin(cpu);
        let addr: SocketAddr = target.parse().unwrap();
        let mut buf = [0u8; 64];
        let mut count = 0u64;
        let t = Instant::now();
        let end = Duration::from_secs_f64(seconds);
        while t.elapsed() < end {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
                continue;
            };
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            count += 1;
        }
        count as f64 / t.elapsed().as_secs_f64()
    })
    .unwrap()
}

/// iperf3 throughput, Gbit/s, one stream for `seconds` (client on `cpu`). A run the
/// server refuses (still closing the previous test) is retried.
fn throughput(netns: &str, addr: &str, seconds: f64, cpu: Option<usize>) -> f64 {
    for _ in 0..5 {
        let gbits = iperf(netns, addr, seconds, cpu);
        if gbits > 0.0 {
            return gbits;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("iperf3 to {addr} failed 5 times");
}

fn iperf(netns: &str, addr: &str, seconds: f64, cpu: Option<usize>) -> f64 {
    let (ns, addr) = (netns.to_owned(), addr.to_owned());
    let out = netns::run_in(&ns, move || {
        let mut c = Command::new("iperf3");
        c.args(["-c", &addr, "-p", "5201", "-t", &seconds.to_string(), "-J"])
            .args(["--connect-timeout", "2000"]);
        if let Some(cpu) = cpu {
            c.args(["-A", &cpu.to_string()]);
        }
        c.output()
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
    let settings = Settings::from_env();
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
        let l = listener.try_clone().unwrap();
        let cpu = settings.pin.map(|p| p.1);
        std::thread::spawn(move || {
            pin(cpu);
            for conn in l.incoming() {
                drop(conn);
            }
        });
    }
    let server_cpu = settings.pin.map(|p| p.1.to_string());
    let _iperf = Kill(
        netns::run_in(&server, move || {
            let mut c = Command::new("iperf3");
            if let Some(cpu) = &server_cpu {
                c.args(["-A", cpu]);
            }
            c.args(["-s", "-p", "5201"])
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
    let (rounds, seconds) = (settings.rounds, settings.seconds);
    let client_cpu = settings.pin.map(|p| p.0);
    println!(
        "data path, client pod -> node -> server pod (veths); {rounds} rounds of \
         {seconds} s per measurement, direct and via ClusterIP back to back in alternating \
         order; one connecting thread; client/server CPUs: {}; ratio = via ClusterIP / direct",
        settings
            .pin
            .map_or("not pinned".to_owned(), |(c, s)| format!("{c}/{s}")),
    );
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
        println!("  {}", rates.report("connections/s", "/s", 0));
        println!("  {}", tputs.report("throughput", "Gbit/s", 2));
    }
}
