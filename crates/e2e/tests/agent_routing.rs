//! Pods on different nodes reach each other without NAT, in both routing modes: a real
//! lab (underlay, two node namespaces), the real API server, `kubewire agent` in each
//! node, pods wired by the CNI plugin from the config the agent wrote, and Nodes
//! created with kubectl as a kubelet and the node IPAM controller would.

#![allow(clippy::disallowed_methods)] // tests run kubectl and read its output

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use e2e::cni::{Params, env_for, exec_plugin};
use e2e::{KillOnDrop, TestLab, TestNetns, kubewire_bin, spawn_in, wait_until};
use serde_json::{Value, json};

const SERVER: &str = r#"
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, 8080))
s.listen()
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b'\n' + b'x' * 1000000)
    c.close()
"#;

const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=5)
data = b''
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
print(data.split(b'\n')[0].decode(), len(data))
"#;

struct Cluster {
    // Dropped in reverse order: pods, agents, API server, then the lab.
    pods: Vec<(TestNetns, Vec<String>)>,
    _agents: Vec<KillOnDrop>,
    _apiserver: KillOnDrop,
    dir: tempfile::TempDir,
    plugins: e2e::cni::PluginDir,
    lab: TestLab,
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is installed")
}

fn node_manifest(n: u8) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": format!("node-{n}")},
        "spec": {"podCIDR": format!("10.244.{n}.0/24"), "podCIDRs": [format!("10.244.{n}.0/24"), format!("fd00:10:244:{n}::/64")]},
        "status": {"addresses": [
            {"type": "InternalIP", "address": format!("198.18.0.{}", 10 + n)},
            {"type": "InternalIP", "address": format!("2001:2::{:x}", 10 + n)}
        ]}
    })
}

impl Cluster {
    fn up(mode: &str) -> Self {
        let lab = TestLab::up(2);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("api");
        let underlay = format!("{}-underlay=198.18.0.1:6443", lab.name());
        let apiserver = e2e::KillOnDrop(
            Command::new(kubewire_bin())
                .args(["apiserver", "--data-dir"])
                .arg(&data)
                .args(["--listen", "127.0.0.1:0", "--listen-netns", &underlay])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("apiserver.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let kubeconfig = data.join("admin.kubeconfig");
        assert!(
            wait_until(Duration::from_secs(20), || kubeconfig.exists()),
            "the API server did not start"
        );
        for n in 1..=2u8 {
            let file = dir.path().join(format!("node-{n}.json"));
            std::fs::write(&file, node_manifest(n).to_string()).unwrap();
            let out = kubectl(&kubeconfig, &["create", "-f", file.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let agents = (1..=2u8)
            .map(|n| {
                let node_dir = dir.path().join(format!("node-{n}"));
                let args = [
                    "agent",
                    "--node-name",
                    &format!("node-{n}"),
                    "--kubeconfig",
                    kubeconfig.to_str().unwrap(),
                    "--server",
                    "https://198.18.0.1:6443",
                    "--mode",
                    mode,
                    "--cni-conf-dir",
                    node_dir.join("net.d").to_str().unwrap(),
                    "--cni-data-dir",
                    node_dir.join("data").to_str().unwrap(),
                ]
                .map(str::to_owned);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                spawn_in(
                    &format!("{}-node-{n}", lab.name()),
                    &kubewire_bin(),
                    &args,
                    &dir.path().join(format!("agent-{n}.log")),
                )
            })
            .collect();
        let cluster = Cluster {
            pods: Vec::new(),
            _agents: agents,
            _apiserver: apiserver,
            plugins: e2e::cni::PluginDir::new(),
            dir,
            lab,
        };
        for n in 1..=2u8 {
            let conf = cluster.conflist_path(n);
            assert!(
                wait_until(Duration::from_secs(20), || conf.exists()),
                "agent {n} wrote no CNI config:\n{}",
                cluster.log(&format!("agent-{n}.log"))
            );
        }
        cluster
    }

    fn conflist_path(&self, node: u8) -> PathBuf {
        self.dir
            .path()
            .join(format!("node-{node}/net.d/10-kubewire.conflist"))
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn node_ns(&self, node: u8) -> String {
        format!("{}-node-{node}", self.lab.name())
    }

    /// Wires a pod on `node` with the plugin config the agent wrote, as a runtime would;
    /// returns the pod's index in `self.pods`.
    fn add_pod(&mut self, node: u8) -> usize {
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(self.conflist_path(node)).unwrap())
                .unwrap();
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        let pod = TestNetns::new("xpod");
        let netns = netlink::netns::path(pod.name()).display().to_string();
        let id = e2e::unique_name("xctr");
        let cni_path = self.plugins.cni_path();
        let params = Params {
            container_id: &id,
            netns: Some(&netns),
            ifname: "eth0",
        };
        let result = exec_plugin(
            &self.node_ns(node),
            &self.plugins.plugin("kubewire-cni"),
            &env_for("ADD", &params, &cni_path),
            &conf,
        )
        .ok();
        let ips = result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                i["address"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        self.pods.push((pod, ips));
        self.pods.len() - 1
    }

    fn ping(&self, from: usize, to: &str, extra: &[&str]) -> bool {
        let mut args = vec!["-c1", "-W2"];
        args.extend_from_slice(extra);
        args.push(to);
        self.pods[from].0.run("ping", &args).status.success()
    }

    /// Connects from pod `from` to `addr`:8080; returns (the source address the server
    /// saw, bytes received).
    fn fetch(&self, from: usize, addr: &str) -> (String, usize) {
        let out = self.pods[from].0.run("python3", &["-c", CLIENT, addr]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut parts = text.split_whitespace();
        let seen = parts.next().unwrap_or_default().to_owned();
        let len = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (seen, len)
    }
}

fn cross_node(mode: &str) {
    let mut c = Cluster::up(mode);
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let (a_ips, b_ips) = (c.pods[a].1.clone(), c.pods[b].1.clone());
    assert!(
        a_ips[0].starts_with("10.244.1.") && b_ips[0].starts_with("10.244.2."),
        "{a_ips:?} {b_ips:?}"
    );
    // Both families, both directions, as soon as the routes are in.
    for (from, to) in [
        (a, &b_ips[0]),
        (a, &b_ips[1]),
        (b, &a_ips[0]),
        (b, &a_ips[1]),
    ] {
        assert!(
            wait_until(Duration::from_secs(10), || c.ping(from, to, &[])),
            "pod {from} cannot reach {to} in {mode} mode\nagent-1:\n{}",
            c.log("agent-1.log")
        );
    }
    // TCP across nodes keeps the pod's source address (no NAT between pods), for a
    // megabyte of data (larger than any MTU, so segmentation works end to end).
    let _server = c.pods[b].0.spawn("python3", &["-c", SERVER, &b_ips[0]]);
    let mut got = (String::new(), 0);
    wait_until(Duration::from_secs(10), || {
        got = c.fetch(a, &b_ips[0]);
        got.1 > 0
    });
    assert_eq!(got.0, a_ips[0], "the server saw another source address");
    assert!(got.1 > 1_000_000, "received {} bytes", got.1);
    // The MTU the pod has is the MTU that passes: full-size packets with DF set go
    // through, no black hole.
    let mtu = if mode == "vxlan" { 1450 } else { 1500 };
    let eth0 = c.pods[a].0.run("ip", &["link", "show", "eth0"]);
    assert!(String::from_utf8_lossy(&eth0.stdout).contains(&format!("mtu {mtu}")));
    let payload = (mtu - 28).to_string();
    assert!(
        c.ping(a, &b_ips[0], &["-M", "do", "-s", &payload]),
        "a full-size packet did not pass in {mode} mode"
    );

    // A node that leaves takes its routes with it.
    let kubeconfig = c.dir.path().join("api/admin.kubeconfig");
    let out = kubectl(&kubeconfig, &["delete", "node", "node-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node1 = c.node_ns(1);
    let routes_to_node2 = || {
        let out = netlink::netns::run_in(&node1, || {
            Command::new("ip")
                .args(["route", "show", "10.244.2.0/24"])
                .output()
        })
        .unwrap()
        .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        wait_until(Duration::from_secs(10), || routes_to_node2().is_empty()),
        "route left: {}",
        routes_to_node2()
    );
}

#[test]
fn pods_on_different_nodes_reach_each_other_natively() {
    cross_node("native");
}

#[test]
fn pods_on_different_nodes_reach_each_other_over_vxlan() {
    cross_node("vxlan");
}
