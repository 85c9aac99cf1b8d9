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

/// A probe (python3): connects to argv[1]:argv[2] with a timeout of argv[3] seconds
/// (default 2) and prints `ok <first line>`, `refused` or `timeout` (else `error <why>`).
pub const PROBE: &str = r#"
import socket, sys
t = float(sys.argv[3]) if len(sys.argv) > 3 else 2
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=t)
    f = s.makefile('rb')
    print('ok', f.readline().decode().strip())
except ConnectionRefusedError:
    print('refused')
except socket.timeout:
    print('timeout')
except Exception as e:
    print('error', e)
"#;

/// A TCP server (python3) on argv[1]:argv[2] that answers each connection with one
/// line, `argv[3] <peer address>`, then closes: which endpoint answered, and whom it saw.
pub const WHO_SERVER: &str = r#"
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, int(sys.argv[2])))
s.listen(64)
while True:
    c, peer = s.accept()
    try:
        c.sendall(sys.argv[3].encode() + b' ' + peer[0].encode() + b'\n')
    except OSError:
        pass
    c.close()
"#;

/// A UDP server (python3) on argv[1]:argv[2] answering each datagram with argv[3].
pub const UDP_SERVER: &str = r#"
import socket, sys
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((addr, int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(sys.argv[3].encode(), peer)
"#;

/// A UDP client (python3): from local port argv[3], sends one datagram to
/// argv[1]:argv[2] and prints the answer, or `timeout` after a second.
pub const UDP_CLIENT: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', int(sys.argv[3])))
s.settimeout(1)
s.sendto(b'ping', (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(2048)[0].decode())
except socket.timeout:
    print('timeout')
"#;

/// A TCP echo server (python3) on argv[1]:argv[2], one thread per connection, each
/// line answered with argv[3] and the line.
pub const ECHO_SERVER: &str = r#"
import socket, sys, threading
addr = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, int(sys.argv[2])))
s.listen()
def serve(c):
    f = c.makefile('rwb', buffering=0)
    for line in f:
        f.write(sys.argv[3].encode() + b' ' + line)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// Its client: connects once to argv[1]:argv[2], then for each line on stdin sends
/// it and prints the answer (`closed` when the connection is gone).
pub const ECHO_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
f = s.makefile('rwb', buffering=0)
for line in sys.stdin:
    try:
        f.write(line.encode())
        answer = f.readline().decode()
    except Exception:
        answer = ''
    print(answer.strip() or 'closed', flush=True)
"#;

/// Where the API server listens on the lab's underlay, for the agents.
pub const UNDERLAY_API: std::net::SocketAddr = std::net::SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 18, 0, 1)),
    6443,
);

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
    /// The agents' flags, node-1's (the others differ in their names and directories).
    agent: agent::Args,
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
        Cluster::up_with(&["--mode", mode])
    }

    /// Starts it with the agents given these flags (beside the node's name, kubeconfig,
    /// server and directories, which the cluster sets).
    pub fn up_with(agent_flags: &[&str]) -> Self {
        let lab = TestLab::up(2);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("api");
        let underlay = format!("{}-underlay", lab.name());
        let apiserver = KillOnDrop(
            crate::apiserver_command(&data, Some((&underlay, UNDERLAY_API)))
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
        let mut cluster = Cluster {
            pods: Vec::new(),
            agents: Vec::new(),
            _apiserver: apiserver,
            plugins: PluginDir::new(),
            agent: k8s::parse_flags(&[&["--node-name", "node-1"], agent_flags].concat()),
            dir,
            lab,
        };
        cluster.agents = (1..=2u8)
            .map(|n| cluster.spawn_agent(n, &kubewire_bin()))
            .collect();
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

    /// Starts `kubewire agent` for node `n` in its namespace from the binary `bin`,
    /// logging to `agent-N.log`.
    fn spawn_agent(&self, n: u8, bin: &Path) -> KillOnDrop {
        let node_dir = self.dir.path().join(format!("node-{n}"));
        let mut args = agent::Args {
            node_name: format!("node-{n}"),
            client: k8s::ClientArgs {
                kubeconfig: Some(self.kubeconfig()),
                server: Some("https://198.18.0.1:6443".into()),
            },
            cni_conf_dir: node_dir.join("net.d"),
            cni_data_dir: node_dir.join("data"),
            ..self.agent.clone()
        };
        // The tests' runtime names no pods to the plugin, so nothing waits here; a
        // socket per test node keeps parallel tests apart.
        args.policy.policy_socket = node_dir.join("policy.sock");
        let argv: Vec<std::ffi::OsString> = std::iter::once("agent".into())
            .chain(args.to_args())
            .collect();
        spawn_in(
            &self.node_ns(n),
            bin,
            &argv,
            &self.dir.path().join(format!("agent-{n}.log")),
        )
    }

    /// Runs `kubewire agent --cleanup` for node `n` in its namespace (with the node's
    /// agent stopped first by the caller) and returns its output.
    pub fn agent_cleanup(&self, n: u8) -> std::process::Output {
        let args = agent::Args {
            node_name: format!("node-{n}"),
            cleanup: true,
            ..self.agent.clone()
        };
        let argv: Vec<std::ffi::OsString> = std::iter::once("agent".into())
            .chain(args.to_args())
            .collect();
        let bin = kubewire_bin();
        netlink::netns::run_in(&self.node_ns(n), move || {
            Command::new(bin).args(argv).output()
        })
        .expect("entering the node's namespace")
        .expect("running kubewire agent --cleanup")
    }

    /// Stops node `n`'s agent (killed, as a crash or an upgrade would) and starts it
    /// again with the same flags.
    pub fn restart_agent(&mut self, n: u8) {
        self.restart_agent_from(n, &kubewire_bin());
    }

    /// Like [`Cluster::restart_agent`], starting it from the binary `bin` (an upgrade).
    pub fn restart_agent_from(&mut self, n: u8, bin: &Path) {
        let i = usize::from(n - 1);
        let _ = self.agents[i].0.kill();
        let _ = self.agents[i].0.wait();
        self.agents[i] = self.spawn_agent(n, bin);
    }

    /// Creates or updates objects with `kubectl apply` (a JSON manifest, or a List).
    pub fn apply(&self, manifest: &Value) {
        let file = self
            .dir
            .path()
            .join(format!("{}.json", crate::unique_name("m")));
        std::fs::write(&file, manifest.to_string()).unwrap();
        let out = kubectl(&self.kubeconfig(), &["apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "kubectl apply {manifest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The lab's `outside` namespace (198.18.0.254 on the underlay).
    pub fn outside_ns(&self) -> String {
        format!("{}-outside", self.lab.name())
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
        self.add_pod_as(node, port_mappings, None)
    }

    /// Like [`Cluster::add_pod`], for the API's pod `namespace/name` (`K8S_POD_NAMESPACE`
    /// and `K8S_POD_NAME` in `CNI_ARGS`, as kubelet passes them): the plugin's ADD waits
    /// for the agent to have the pod's network policies in force.
    pub fn add_api_pod(&mut self, node: u8, namespace: &str, name: &str) -> usize {
        self.add_pod_as(node, &[], Some((namespace, name)))
    }

    fn add_pod_as(
        &mut self,
        node: u8,
        port_mappings: &[Value],
        identity: Option<(&str, &str)>,
    ) -> usize {
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
        let args = identity
            .map(|(ns, name)| format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name}"))
            .unwrap_or_default();
        let mut env = env_for("ADD", &params, &cni_path);
        if identity.is_some() {
            env.push(("CNI_ARGS", &args));
        }
        let result = exec_plugin(
            &self.node_ns(node),
            &self.plugins.plugin("kubewire-cni"),
            &env,
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

/// Runs a python3 script with arguments inside the named namespace; its stdout.
pub fn python_in(netns: &str, script: &str, args: &[&str]) -> String {
    let script = script.to_owned();
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    let out = netlink::netns::run_in(netns, move || {
        Command::new("python3")
            .arg("-c")
            .arg(&script)
            .args(&args)
            .output()
    })
    .expect("entering namespace")
    .expect("running python3");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs [`PROBE`] inside the named namespace against `addr`:`port`.
pub fn probe_in(netns: &str, addr: &str, port: u16) -> String {
    python_in(netns, PROBE, &[addr, &port.to_string()])
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
