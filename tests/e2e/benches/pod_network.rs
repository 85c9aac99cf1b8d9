//! Pod-to-pod TCP throughput (iperf3, one stream) and round-trip time (ping), same node
//! and across nodes, in native and VXLAN mode, against node-to-node on the underlay —
//! the limit pod traffic can reach on these veths — measured in one run.
//!
//! Run as root: `cargo bench -p e2e --bench pod_network` (or `bench/pod-network.sh`).

#![allow(clippy::disallowed_methods)] // runs iperf3 and ping and reads their output

use std::process::Command;
use std::time::Duration;

use e2e::cluster::Cluster;
use e2e::{spawn_in, wait_until};

const SECONDS: &str = "4";

fn run_in(netns: &str, program: &str, args: &[&str]) -> String {
    let (program, args): (String, Vec<String>) = (
        program.into(),
        args.iter().map(|s| (*s).to_owned()).collect(),
    );
    let out = netlink::netns::run_in(netns, move || Command::new(&program).args(&args).output())
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Gbit/s of one iperf3 stream from `client_ns` to `server`.
fn throughput(client_ns: &str, server: &str) -> f64 {
    let mut json = serde_json::Value::Null;
    wait_until(Duration::from_secs(10), || {
        let out = run_in(client_ns, "iperf3", &["-c", server, "-t", SECONDS, "-J"]);
        json = serde_json::from_str(&out).unwrap_or_default();
        json["end"]["sum_received"]["bits_per_second"].is_number()
    });
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0)
        / 1e9
}

/// Mean round-trip time in microseconds over 500 pings.
fn rtt(client_ns: &str, target: &str) -> f64 {
    let out = run_in(
        client_ns,
        "ping",
        &["-q", "-c", "500", "-i", "0.002", target],
    );
    // "rtt min/avg/max/mdev = 0.031/0.045/0.120/0.010 ms"
    out.lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|avg| avg.parse::<f64>().ok())
        .map_or(0.0, |ms| ms * 1000.0)
}

fn main() {
    e2e::require_root();
    println!("Pod network, one TCP stream ({SECONDS} s, iperf3) and mean RTT (500 pings)");
    println!(
        "{:<8} {:<22} {:>10} {:>9} {:>10} {:>9}",
        "mode", "path", "Gbit/s", "of limit", "RTT µs", "vs limit"
    );
    for mode in ["native", "vxlan"] {
        let mut c = Cluster::up(mode);
        let a = c.add_pod(1);
        let same = c.add_pod(1);
        let far = c.add_pod(2);
        let logs = c.dir.path().to_owned();
        let iperf = |ns: &str, bind: &str, log: &str| {
            spawn_in(
                ns,
                std::path::Path::new("/usr/bin/iperf3"),
                &["-s", "-B", bind],
                &logs.join(log),
            )
        };
        let _s1 = iperf(c.pods[same].0.name(), &c.pods[same].1[0], "iperf-same.log");
        let _s2 = iperf(c.pods[far].0.name(), &c.pods[far].1[0], "iperf-far.log");
        let _s3 = iperf(&c.node_ns(2), "198.18.0.12", "iperf-node.log");
        let client = c.pods[a].0.name().to_owned();
        let limit_tp = throughput(&c.node_ns(1), "198.18.0.12");
        let limit_rtt = rtt(&c.node_ns(1), "198.18.0.12");
        let row = |path: &str, tp: f64, rt: f64| {
            println!(
                "{mode:<8} {path:<22} {tp:>10.2} {:>8.0}% {rt:>10.1} {:>8.2}x",
                100.0 * tp / limit_tp,
                rt / limit_rtt
            );
        };
        row("node -> node (limit)", limit_tp, limit_rtt);
        let (same_ip, far_ip) = (c.pods[same].1[0].clone(), c.pods[far].1[0].clone());
        row(
            "pod -> pod, same node",
            throughput(&client, &same_ip),
            rtt(&client, &same_ip),
        );
        row(
            "pod -> pod, cross node",
            throughput(&client, &far_ip),
            rtt(&client, &far_ip),
        );
        c.pods.clear();
    }
}
