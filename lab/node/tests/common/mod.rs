//! A cluster for the node's end-to-end tests: a lab with two nodes, the API server on the
//! underlay, and in each node namespace `kubewire node` (which registers the Node) and
//! `kubewire agent` (which writes the CNI config once the test, playing node IPAM, gives
//! the Node its pod CIDRs) — the order `lab up` uses.

#![allow(clippy::disallowed_methods, dead_code)] // tests run kubectl and curl

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use e2e::{KillOnDrop, TestLab, kubewire_bin, spawn_in, wait_until};
use serde_json::{Value, json};

pub(crate) const NODES: u8 = 2;

pub(crate) struct NodeCluster {
    /// The node processes, node-1 first; `None` once a test stopped one.
    pub(crate) nodes: Vec<Option<KillOnDrop>>,
    pub(crate) agents: Vec<KillOnDrop>,
    pub(crate) apiserver: KillOnDrop,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) lab: TestLab,
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        // Stop the nodes first, then the containers they leave behind (as kubelet, a
        // stopped node leaves them running), then the pods' namespaces.
        for n in &mut self.nodes {
            n.take();
        }
        for n in 1..=NODES {
            node::kill_all(&self.data_dir(n));
        }
        let prefix = format!("{}-node-", self.lab.name());
        for ns in netlink::netns::list().unwrap_or_default() {
            if ns.starts_with(&prefix) && ns.contains("-p") {
                let _ = netlink::netns::delete(&ns);
            }
        }
    }
}

impl NodeCluster {
    pub(crate) fn up() -> Self {
        let lab = TestLab::up(NODES);
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("api");
        let underlay = format!("{}-underlay", lab.name());
        let apiserver = KillOnDrop(
            e2e::apiserver_command(&data, Some((&underlay, e2e::cluster::UNDERLAY_API)))
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("apiserver.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let mut c = NodeCluster {
            nodes: Vec::new(),
            agents: Vec::new(),
            apiserver,
            dir,
            lab,
        };
        assert!(
            wait_until(Duration::from_secs(20), || c.kubeconfig().exists()),
            "the API server did not start"
        );
        for n in 1..=NODES {
            let node = c.start_node(n);
            c.nodes.push(Some(node));
        }
        for n in 1..=NODES {
            assert!(
                wait_until(Duration::from_secs(20), || c
                    .kubectl(&["get", "node", &format!("node-{n}")])
                    .status
                    .success()),
                "node-{n} did not register:\n{}",
                c.log(&format!("node-{n}.log"))
            );
            // Without pod CIDRs there is no CNI config yet: registered but NotReady.
            let not_ready = wait_until(Duration::from_secs(10), || {
                c.node_ready_condition(n).is_some_and(|c| {
                    c["status"] == "False"
                        && c["message"]
                            .as_str()
                            .unwrap_or("")
                            .contains("NetworkReady=false")
                })
            });
            assert!(
                not_ready,
                "node-{n} must report NotReady before its network exists"
            );
            // Node IPAM's part.
            let patch = json!({"spec": {"podCIDR": format!("10.244.{n}.0/24"),
                "podCIDRs": [format!("10.244.{n}.0/24"), format!("fd00:10:244:{n}::/64")]}});
            c.kubectl_ok(&[
                "patch",
                "node",
                &format!("node-{n}"),
                "--type",
                "merge",
                "-p",
                &patch.to_string(),
            ]);
        }
        for n in 1..=NODES {
            let nd = c.dir.path().join(format!("node-{n}"));
            let agent_args = agent::Args {
                client: k8s::ClientArgs {
                    kubeconfig: Some(c.kubeconfig()),
                    server: Some("https://198.18.0.1:6443".into()),
                },
                cni_conf_dir: nd.join("net.d"),
                cni_bin_dir: Some(nd.join("bin")),
                cni_data_dir: nd.join("cni"),
                // One per test node: parallel tests never share an agent's socket.
                ..k8s::parse_flags(&[
                    "--node-name",
                    &format!("node-{n}"),
                    "--policy-socket",
                    nd.join("policy.sock").to_str().unwrap(),
                ])
            };
            let args: Vec<OsString> = std::iter::once("agent".into())
                .chain(agent_args.to_args())
                .collect();
            let agent = spawn_in(
                &c.node_ns(n),
                &kubewire_bin(),
                &args,
                &c.dir.path().join(format!("agent-{n}.log")),
            );
            c.agents.push(agent);
        }
        for n in 1..=NODES {
            assert!(
                wait_until(Duration::from_secs(30), || c.node_ready(n)),
                "node-{n} did not become Ready:\n{}\n{}",
                c.log(&format!("node-{n}.log")),
                c.log(&format!("agent-{n}.log"))
            );
        }
        c
    }

    /// Starts `kubewire node` for node `n` (as the lab does) and returns it.
    pub(crate) fn start_node(&self, n: u8) -> KillOnDrop {
        let nd = self.dir.path().join(format!("node-{n}"));
        let node = node::Args {
            node_name: format!("node-{n}"),
            client: k8s::ClientArgs {
                kubeconfig: Some(self.kubeconfig()),
                server: Some("https://198.18.0.1:6443".into()),
            },
            node_ip: vec![
                format!("198.18.0.{}", 10 + n).parse().unwrap(),
                format!("2001:2::{:x}", 10 + n).parse().unwrap(),
            ],
            data_dir: self.data_dir(n),
            cni_conf_dir: nd.join("net.d"),
            cni_bin_dir: vec![nd.join("bin")],
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            port: 10250,
            // Short, so the lease tests need not wait 10 s.
            lease_renew: Duration::from_secs(2),
            host_path_root: nd.join("root"),
        };
        let args: Vec<OsString> = std::iter::once("node".into())
            .chain(node.to_args())
            .collect();
        spawn_in(
            &self.node_ns(n),
            &kubewire_bin(),
            &args,
            &self.dir.path().join(format!("node-{n}.log")),
        )
    }

    pub(crate) fn data_dir(&self, n: u8) -> PathBuf {
        self.dir.path().join(format!("node-{n}/kubelet"))
    }

    pub(crate) fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("api/admin.kubeconfig")
    }

    pub(crate) fn node_ns(&self, n: u8) -> String {
        format!("{}-node-{n}", self.lab.name())
    }

    pub(crate) fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    /// All logs, for failure messages.
    pub(crate) fn logs(&self) -> String {
        let mut s = String::new();
        for n in 1..=NODES {
            s.push_str(&format!(
                "--- node-{n}.log\n{}",
                self.log(&format!("node-{n}.log"))
            ));
        }
        s
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> Output {
        e2e::cluster::kubectl(&self.kubeconfig(), args)
    }

    pub(crate) fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(crate) fn create(&self, manifest: &Value) {
        let file = self
            .dir
            .path()
            .join(format!("{}.json", e2e::unique_name("m")));
        std::fs::write(&file, manifest.to_string()).unwrap();
        self.kubectl_ok(&["create", "-f", file.to_str().unwrap()]);
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(&["get", kind, name, "-o", "json"]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// The `Ready` condition of node `n`, if it has one.
    pub(crate) fn node_ready_condition(&self, n: u8) -> Option<Value> {
        let node = self.get("node", &format!("node-{n}"))?;
        node["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")
            .cloned()
    }

    pub(crate) fn node_ready(&self, n: u8) -> bool {
        self.node_ready_condition(n)
            .is_some_and(|c| c["status"] == "True")
    }

    /// Waits until `pred` holds for pod `name` and returns it.
    pub(crate) fn wait_pod(&self, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let ok = wait_until(Duration::from_secs(30), || {
            last = self.get("pod", name).unwrap_or(Value::Null);
            pred(&last)
        });
        let get = self.kubectl(&["get", "pod", name, "-o", "json"]);
        assert!(
            ok,
            "pod {name}: {what}; last seen:\n{last:#}\n{}\n{}",
            String::from_utf8_lossy(&get.stderr),
            self.logs()
        );
        last
    }

    pub(crate) fn wait_ready(&self, name: &str) -> Value {
        self.wait_pod(name, "Running and Ready", |p| {
            p["status"]["phase"] == "Running" && condition(p, "Ready")
        })
    }

    /// The pod's network namespace name (`<node netns>-p<uid8>`).
    pub(crate) fn pod_ns(&self, pod: &Value) -> String {
        let node: u8 = pod["spec"]["nodeName"]
            .as_str()
            .unwrap()
            .trim_start_matches("node-")
            .parse()
            .unwrap();
        let uid: String = pod["metadata"]["uid"]
            .as_str()
            .unwrap()
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(8)
            .collect();
        format!("{}-p{uid}", self.node_ns(node))
    }
}

pub(crate) fn condition(pod: &Value, ty: &str) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == ty && c["status"] == "True")
}

/// A pod manifest bound to `node` with `containers`.
pub(crate) fn pod(name: &str, node: u8, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "spec": {"nodeName": format!("node-{node}"), "containers": containers,
            "terminationGracePeriodSeconds": 5}})
}

/// Runs a program inside a network namespace and returns its output.
pub(crate) fn run_in(netns: &str, program: &str, args: &[&str]) -> Output {
    let (program, args): (String, Vec<String>) = (
        program.to_owned(),
        args.iter().map(|s| (*s).to_owned()).collect(),
    );
    netlink::netns::run_in(netns, move || Command::new(&program).args(&args).output())
        .expect("entering namespace")
        .expect("running program")
}

/// `curl -s URL` from inside a namespace; the body, or "" on failure.
pub(crate) fn curl(netns: &str, url: &str) -> String {
    let out = run_in(netns, "curl", &["-s", "-m", "3", url]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Reads a file, or "".
pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
