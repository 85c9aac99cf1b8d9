//! What the data path benchmarks share (`cargo bench -p proxy --bench datapath`,
//! `cargo bench -p policy --bench datapath`), and with the namespaced tests of the
//! crates they measure: a client "pod" and a server "pod" routed
//! by a "node", each a throwaway network namespace wired with veths; connections per
//! second from one pinned thread and iperf3 throughput; and paired measurements.
//!
//! A shared machine drifts by tens of percent within seconds, so a benchmark measures
//! many short rounds, the baseline and the case back to back in alternating order, and
//! reports the median of the per-round ratios with their spread.

#![allow(clippy::disallowed_methods)] // runs `ip` and iperf3 to set up and measure

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::{Duration, Instant};

use netlink::netns;

/// Settings from the environment: `ROUNDS` (default 21), `SECONDS` per measurement
/// (default 1), `PIN=0` to let the scheduler place client and server.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Rounds per measurement.
    pub rounds: usize,
    /// Seconds per measurement.
    pub seconds: f64,
    /// CPUs of the client and the server, when pinned (the first and the last).
    pub pin: Option<(usize, usize)>,
}

impl Settings {
    /// From `ROUNDS`, `SECONDS` and `PIN`.
    pub fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Settings {
            rounds: var("ROUNDS").and_then(|v| v.parse().ok()).unwrap_or(21),
            seconds: var("SECONDS").and_then(|v| v.parse().ok()).unwrap_or(1.0),
            pin: (var("PIN").as_deref() != Some("0") && cpus > 1).then_some((0, cpus - 1)),
        }
    }

    /// The client's CPU, when pinned.
    pub fn client_cpu(&self) -> Option<usize> {
        self.pin.map(|p| p.0)
    }

    /// The server's CPU, when pinned.
    pub fn server_cpu(&self) -> Option<usize> {
        self.pin.map(|p| p.1)
    }

    /// `0/1`, or `not pinned`.
    pub fn cpus(&self) -> String {
        self.pin
            .map_or("not pinned".to_owned(), |(c, s)| format!("{c}/{s}"))
    }
}

/// Panics unless run as root.
pub fn require_root() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "this needs root (network namespaces, nf_tables); it does not skip"
    );
}

/// Runs the calling thread on `cpu` only.
pub fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).unwrap();
    }
}

/// The `q` quantile of `v` (nearest rank).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let i = (q * (v.len() - 1) as f64).round() as usize;
    v[i]
}

/// Paired measurements: a baseline and a case, one pair per round.
#[derive(Debug, Default)]
pub struct Paired {
    /// The baseline's, per round.
    pub base: Vec<f64>,
    /// The case's, per round.
    pub case: Vec<f64>,
}

impl Paired {
    /// Per round, the case as a percentage of the baseline.
    pub fn ratios(&self) -> Vec<f64> {
        self.base
            .iter()
            .zip(&self.case)
            .map(|(b, c)| 100.0 * c / b)
            .collect()
    }

    /// One line: medians and ranges of both, and of the ratios.
    pub fn report(
        &self,
        what: &str,
        (base, case): (&str, &str),
        unit: &str,
        decimals: usize,
    ) -> String {
        let r = self.ratios();
        format!(
            "{what}: {base} {:.decimals$} {unit} (rounds {:.decimals$}-{:.decimals$}), \
             {case} {:.decimals$} {unit} (rounds {:.decimals$}-{:.decimals$}); \
             ratio per round: median {:.1}%, middle half {:.1}-{:.1}%, all {:.1}-{:.1}%",
            quantile(&self.base, 0.5),
            quantile(&self.base, 0.0),
            quantile(&self.base, 1.0),
            quantile(&self.case, 0.5),
            quantile(&self.case, 0.0),
            quantile(&self.case, 1.0),
            quantile(&r, 0.5),
            quantile(&r, 0.25),
            quantile(&r, 0.75),
            quantile(&r, 0.0),
            quantile(&r, 1.0),
        )
    }
}

/// Measures `f(false)` (the baseline) and `f(true)` (the case) `rounds` times, back to
/// back, the first of each pair alternating, so that drift of the machine hits both
/// alike; one unrecorded pair first warms caches, conntrack and ARP.
pub fn paired(rounds: usize, mut f: impl FnMut(bool) -> f64) -> Paired {
    f(false);
    f(true);
    let mut p = Paired::default();
    for r in 0..rounds {
        let (b, c) = if r % 2 == 0 {
            let b = f(false);
            (b, f(true))
        } else {
            let c = f(true);
            (f(false), c)
        };
        p.base.push(b);
        p.case.push(c);
    }
    p
}

/// The load average (1, 5, 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Namespaces of a benchmark or test, deleted when dropped (also on panic).
#[derive(Debug, Default)]
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    /// Creates `kwt-<prefix>-<pid>-<n>-<role>` (unique per process and call, so that
    /// tests running in parallel threads never share one) and keeps it for deletion.
    pub fn make(&mut self, prefix: &str, role: &str) -> String {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("kwt-{prefix}-{}-{n}-{role}", std::process::id());
        netns::create(&name).unwrap();
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}

/// A child process killed when dropped.
#[derive(Debug)]
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ip -n NS ARGS`, which must succeed.
pub fn ip(ns: &str, args: &str) {
    let ok = Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .status()
        .unwrap()
        .success();
    assert!(ok, "ip -n {ns} {args}");
}

/// A veth from `node` (`node_if`, address `gw`/24) to `pod`'s `eth0` (address
/// `addr`/24, default route via `gw`).
pub fn wire(node: &str, pod: &str, node_if: &str, addr: &str, gw: &str) {
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

/// A client/server pair routed by a node, ready to measure: returns the namespaces
/// (node, client, server). The server keeps no TIME_WAIT sockets: at tens of thousands
/// of connections per second client ports come round again within seconds, and a SYN
/// meeting a TIME_WAIT socket can be dropped by its PAWS check.
pub fn topology(all: &mut Namespaces, bench: &str) -> (String, String, String) {
    let (node, client, server) = (
        all.make(bench, "node"),
        all.make(bench, "client"),
        all.make(bench, "server"),
    );
    ip(&node, "link set lo up");
    wire(&node, &client, "veth1", "10.244.1.2", "10.244.1.1");
    wire(&node, &server, "veth2", "10.244.2.2", "10.244.2.1");
    netlink::sysctl::set_in(&node, "net.ipv4.ip_forward", "1").unwrap();
    netlink::sysctl::set_in(&server, "net.ipv4.tcp_max_tw_buckets", "0").unwrap();
    (node, client, server)
}

/// Servers in `netns` that accept and close at once on each of `ports` (a thread each,
/// on `cpu`), for connection rates.
pub fn accept_and_close(netns: &str, ports: &[u16], cpu: Option<usize>) {
    for &port in ports {
        let listener = netns::run_in(netns, move || TcpListener::bind(("0.0.0.0", port)))
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            pin(cpu);
            for conn in listener.incoming() {
                drop(conn);
            }
        });
    }
}

/// An iperf3 server on port 5201 in `netns` (on `cpu`), killed when dropped.
pub fn iperf_server(netns: &str, cpu: Option<usize>) -> Kill {
    let cpu = cpu.map(|c| c.to_string());
    let child = netns::run_in(netns, move || {
        let mut c = Command::new("iperf3");
        if let Some(cpu) = &cpu {
            c.args(["-A", cpu]);
        }
        c.args(["-s", "-p", "5201"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
    })
    .unwrap()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    Kill(child)
}

/// Connections per second to `target` from one thread in `netns` (on `cpu`),
/// connecting, reading to the end (the server closes) and closing, for `seconds`.
pub fn connection_rate(netns: &str, target: &str, seconds: f64, cpu: Option<usize>) -> f64 {
    let addr: SocketAddr = target.parse().unwrap();
    netns::run_in(netns, move || {
        pin(cpu);
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

/// iperf3 throughput, Gbit/s, one stream for `seconds` (whole, at least 1; client on
/// `cpu`) to port 5201
/// of `addr`. A run the server refuses (still closing the previous test) is retried.
pub fn throughput(netns: &str, addr: &str, seconds: f64, cpu: Option<usize>) -> f64 {
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
        // iperf3 takes whole seconds (and `-t 0` runs for ever).
        let whole = seconds.ceil().max(1.0).to_string();
        c.args(["-c", &addr, "-p", "5201", "-t", &whole, "-J"])
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
