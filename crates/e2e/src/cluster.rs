//! A small cluster for end-to-end tests and benchmarks: a lab with two nodes, the real
//! API server listening on the underlay, Nodes created with kubectl (as a kubelet and
//! the node IPAM controller would), `kubewire agent` in each node namespace, and pods
//! wired by the CNI plugin from the config each agent wrote.

#![allow(clippy::disallowed_methods)] // runs kubectl and reads its output

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cni::{Params, PluginDir, env_for, exec_plugin};
use crate::{KillOnDrop, TestLab, TestNetns, kubewire_bin, spawn_in, wait_until};

/// A TCP server (python3) on port 8080 (or argv[2]) that sends the peer address, a newline and a
/// megabyte, then closes.
pub const SERVER: &str = r#"
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, int(sys.argv[2]) if len(sys.argv) > 2 else 8080))
s.listen()
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode() + b'\n' + b'x' * 1000000)
    c.close()
"#;

/// Its client: prints the first line it got and the number of bytes.
pub const CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8080), timeout=5)
data = b''
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
print(data.split(b'\n')[0].decode(), len(data))
"#;

/// The cluster; everything in it is removed on drop.
#[derive(Debug)]
pub struct Cluster {
    // Dropped in reverse order: pods, agents, API server, then the lab.
    /// Pods: their namespace and addresses (IPv4 first).
    pub pods: Vec<(TestNetns, Vec<String>)>,
    /// The agents, node-1 first; remove one to stop it.
    pub agents: Vec<KillOnDrop>,
    _apiserver: KillOnDrop,
    /// Logs, configs and the API server data.
    pub dir: tempfile::TempDir,
    plugins: PluginDir,
    /// The lab underneath.
    pub lab: TestLab,
}

/// Runs kubectl against `kubeconfig`.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("kubectl is installed")
}

/// A Node with pod CIDRs 10.244.N.0/24 and fd00:10:244:N::/64 and the lab addresses.
pub fn node_manifest(n: u8) -> Value {
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
    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("api/admin.kubeconfig")
    }

    /// Starts it with the agents in `mode` (`native` or `vxlan`).
    pub fn up(mode: &str) -> Self {
        let lab = TestLab::up(2);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("api");
        let underlay = format!("{}-underlay=198.18.0.1:6443", lab.name());
        let apiserver = KillOnDrop(
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
            agents,
            _apiserver: apiserver,
            plugins: PluginDir::new(),
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

    /// The CNI config agent `node` wrote.
    pub fn conflist_path(&self, node: u8) -> PathBuf {
        self.dir
            .path()
            .join(format!("node-{node}/net.d/10-kubewire.conflist"))
    }

    /// A log file of the cluster (`apiserver.log`, `agent-N.log`).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// The namespace of node `node`.
    pub fn node_ns(&self, node: u8) -> String {
        format!("{}-node-{node}", self.lab.name())
    }

    /// Wires a pod on `node` with the plugin config the agent wrote, as a runtime would;
    /// returns the pod's index in `self.pods`.
    pub fn add_pod(&mut self, node: u8) -> usize {
        self.add_pod_with(node, &[])
    }

    /// Like [`Cluster::add_pod`], with hostPort mappings passed as a runtime passes them
    /// (`runtimeConfig.portMappings`, for a plugin that declares the capability).
    pub fn add_pod_with(&mut self, node: u8, port_mappings: &[Value]) -> usize {
        let list: Value =
            serde_json::from_str(&std::fs::read_to_string(self.conflist_path(node)).unwrap())
                .unwrap();
        let mut conf = list["plugins"][0].clone();
        conf["name"] = list["name"].clone();
        conf["cniVersion"] = list["cniVersion"].clone();
        if conf["capabilities"]["portMappings"] == json!(true) && !port_mappings.is_empty() {
            conf["runtimeConfig"] = json!({ "portMappings": port_mappings });
        }
        let pod = TestNetns::new("xpod");
        let netns = netlink::netns::path(pod.name()).display().to_string();
        let id = crate::unique_name("xctr");
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

    /// Pings `to` once from pod `from`, with extra ping arguments.
    pub fn ping(&self, from: usize, to: &str, extra: &[&str]) -> bool {
        let mut args = vec!["-c1", "-W2"];
        args.extend_from_slice(extra);
        args.push(to);
        self.pods[from].0.run("ping", &args).status.success()
    }

    /// Connects from pod `from` to `addr`:8080; returns (the source address the server
    /// saw, bytes received).
    pub fn fetch(&self, from: usize, addr: &str) -> (String, usize) {
        fetch_in(self.pods[from].0.name(), addr, 8080)
    }
}

/// Runs [`CLIENT`] inside the named namespace against `addr`:`port`; returns (the source
/// address the server saw, bytes received), or ("", 0) when nothing answered.
pub fn fetch_in(netns: &str, addr: &str, port: u16) -> (String, usize) {
    let args = [addr.to_owned(), port.to_string()];
    let out = netlink::netns::run_in(netns, move || {
        Command::new("python3")
            .arg("-c")
            .arg(CLIENT)
            .args(&args)
            .output()
    })
    .expect("entering namespace")
    .expect("running python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = text.split_whitespace();
    let seen = parts.next().unwrap_or_default().to_owned();
    let len = parts.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (seen, len)
}
