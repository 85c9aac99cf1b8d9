//! ADD and DEL latency per pod: kubewire vs the reference `bridge` + `host-local`
//! plugins, under the same conditions, interleaved pod by pod in one run. Each figure is
//! the wall time of one plugin process, from spawn to exit, as a runtime sees it.
//!
//! Run as root: `cargo bench -p e2e --bench cni_add_del` (or `bench/cni.sh`).

use std::time::{Duration, Instant};

use e2e::TestNetns;
use e2e::cni::{Params, PluginDir, env_for, exec_plugin};
use serde_json::json;

const PODS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn report(what: &str, mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
    println!(
        "{what:<28} p50 {:>8.2} ms   p99 {:>8.2} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
    e2e::require_root();
    // `cargo bench` passes --bench; nothing to parse.
    let node = TestNetns::new("bnode");
    netlink::sysctl::set_in(node.name(), "net.ipv4.ip_forward", "1").unwrap();
    let plugins = PluginDir::new();
    let cni_path = plugins.cni_path();
    let data = tempfile::tempdir().unwrap();
    let kubewire = json!({
        "cniVersion": "1.0.0", "name": "bench-kubewire", "type": "kubewire-cni",
        "podCIDRs": ["10.246.0.0/16"], "dataDir": data.path().join("kw"),
    });
    let reference = json!({
        "cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge",
        "bridge": "cni0", "isGateway": true, "ipMasq": false,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.247.0.0/16"}]], "dataDir": data.path().join("hl")},
    });
    let pods: Vec<(TestNetns, TestNetns)> = (0..PODS)
        .map(|_| (TestNetns::new("bkw"), TestNetns::new("bref")))
        .collect();
    let paths: Vec<(String, String)> = pods
        .iter()
        .map(|(a, b)| {
            (
                netlink::netns::path(a.name()).display().to_string(),
                netlink::netns::path(b.name()).display().to_string(),
            )
        })
        .collect();
    let (mut kw_add, mut kw_del, mut ref_add, mut ref_del) = (vec![], vec![], vec![], vec![]);
    let time = |conf: &serde_json::Value, cmd: &str, id: &str, ns: &str| {
        let params = Params {
            container_id: id,
            netns: Some(ns),
            ifname: "eth0",
        };
        let plugin = plugins.plugin(conf["type"].as_str().unwrap());
        let start = Instant::now();
        exec_plugin(
            node.name(),
            &plugin,
            &env_for(cmd, &params, &cni_path),
            conf,
        )
        .ok();
        start.elapsed()
    };
    for (i, (kw_ns, ref_ns)) in paths.iter().enumerate() {
        kw_add.push(time(&kubewire, "ADD", &format!("kw{i}"), kw_ns));
        ref_add.push(time(&reference, "ADD", &format!("ref{i}"), ref_ns));
    }
    for (i, (kw_ns, ref_ns)) in paths.iter().enumerate() {
        kw_del.push(time(&kubewire, "DEL", &format!("kw{i}"), kw_ns));
        ref_del.push(time(&reference, "DEL", &format!("ref{i}"), ref_ns));
    }
    println!("CNI ADD/DEL latency, {PODS} pods, one plugin process per call (spawn to exit)");
    let (ka, kap) = report("kubewire ADD", kw_add);
    let (ra, rap) = report("bridge+host-local ADD", ref_add);
    let (kd, kdp) = report("kubewire DEL", kw_del);
    let (rd, rdp) = report("bridge+host-local DEL", ref_del);
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
    println!(
        "speed-up over the reference: ADD p50 {:.1}x p99 {:.1}x, DEL p50 {:.1}x p99 {:.1}x",
        ratio(ka, ra),
        ratio(kap, rap),
        ratio(kd, rd),
        ratio(kdp, rdp)
    );
}
