//! IPAM under pressure, the way leaks happen in real clusters: many plugin processes at
//! once, some killed in the middle of ADD. Afterwards GC must leave exactly the live
//! attachments, and no address may ever be handed to two live pods.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::TestNetns;
use e2e::cni::{Params, PluginDir, env_for, exec_plugin};
use serde_json::{Value, json};

const WORKERS: usize = 8;
const CYCLES: usize = 500;

/// A tiny deterministic generator: the test's randomness must be reproducible.
fn next(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *seed >> 33
}

#[test]
fn parallel_add_del_with_killed_plugins_leaks_nothing_after_gc() {
    let node = TestNetns::new("inode");
    let plugins = Arc::new(PluginDir::new());
    let data = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": e2e::unique_name("stress"),
        "type": "kubewire-cni",
        "podCIDRs": ["10.245.0.0/22", "fd00:10:245::/64"],
        "dataDir": data.path(),
    });
    // Live address -> container: checked on every successful ADD.
    let live: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let kept: Arc<Mutex<Vec<(String, TestNetns)>>> = Arc::default();
    let killed = Arc::new(Mutex::new(0usize));

    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (node_name, plugins, conf, live, kept, killed) = (
                node.name().to_owned(),
                plugins.clone(),
                conf.clone(),
                live.clone(),
                kept.clone(),
                killed.clone(),
            );
            std::thread::spawn(move || {
                let mut seed = 0x5eed_u64 + w as u64;
                let cni_path = plugins.cni_path();
                let bin = plugins.plugin("kubewire-cni");
                for cycle in (w..CYCLES).step_by(WORKERS) {
                    let pod = TestNetns::new("ipod");
                    let netns = netlink::netns::path(pod.name()).display().to_string();
                    let id = format!("c{w}x{cycle}");
                    let params = Params {
                        container_id: &id,
                        netns: Some(&netns),
                        ifname: "eth0",
                    };
                    let env = env_for("ADD", &params, &cni_path);
                    if next(&mut seed).is_multiple_of(8) {
                        // Kill the plugin somewhere inside ADD and never DEL: a leak that
                        // only GC can find. The namespace goes away with its guard.
                        let delay = Duration::from_micros(next(&mut seed) % 4000);
                        let env: Vec<(String, String)> = env
                            .iter()
                            .map(|(k, v)| ((*k).into(), (*v).into()))
                            .collect();
                        let (bin, input) = (bin.clone(), serde_json::to_vec(&conf).unwrap());
                        netlink::netns::run_in(&node_name, move || {
                            let mut child = Command::new(&bin)
                                .env_clear()
                                .envs(env)
                                .stdin(Stdio::piped())
                                .stdout(Stdio::null())
                                .stderr(Stdio::null())
                                .spawn()
                                .unwrap();
                            let _ = child.stdin.take().unwrap().write_all(&input);
                            std::thread::sleep(delay);
                            let _ = child.kill();
                            child.wait().unwrap();
                        })
                        .unwrap();
                        *killed.lock().unwrap() += 1;
                        continue;
                    }
                    let result = exec_plugin(&node_name, &bin, &env, &conf).ok();
                    let ips: Vec<String> = result["ips"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i["address"].as_str().unwrap().to_owned())
                        .collect();
                    {
                        let mut live = live.lock().unwrap();
                        for ip in &ips {
                            if let Some(other) = live.insert(ip.clone(), id.clone()) {
                                panic!("{ip} handed to {id} while {other} holds it");
                            }
                        }
                    }
                    if cycle.is_multiple_of(50) {
                        // Keep a few pods: GC must not touch them.
                        kept.lock().unwrap().push((id, pod));
                        continue;
                    }
                    {
                        let mut live = live.lock().unwrap();
                        for ip in &ips {
                            live.remove(ip);
                        }
                    }
                    exec_plugin(&node_name, &bin, &env_for("DEL", &params, &cni_path), &conf).ok();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    assert!(
        *killed.lock().unwrap() > 20,
        "the test killed too few plugins to mean anything"
    );

    let kept = kept.lock().unwrap();
    let valid: Vec<Value> = kept
        .iter()
        .map(|(id, _)| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = Value::Array(valid);
    exec_plugin(
        node.name(),
        &plugins.plugin("kubewire-cni"),
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", &plugins.cni_path())],
        &gc,
    )
    .ok();

    let state: Value = serde_json::from_slice(
        &std::fs::read(
            data.path()
                .join(conf["name"].as_str().unwrap())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let allocations = state["allocations"].as_object().unwrap();
    let holders: BTreeSet<String> = allocations
        .values()
        .map(|a| a["containerID"].as_str().unwrap().to_owned())
        .collect();
    let expected: BTreeSet<String> = kept.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(
        holders, expected,
        "after GC only the live pods may hold addresses"
    );
    assert_eq!(
        allocations.len(),
        2 * expected.len(),
        "each live pod holds one IPv4 and one IPv6 address"
    );
    // And no node-side veth is left but the live pods'.
    let links = String::from_utf8_lossy(&node.run("ip", &["-o", "link"]).stdout).into_owned();
    assert_eq!(links.matches(": kw").count(), expected.len(), "{links}");
}
