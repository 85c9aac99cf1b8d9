//! A whole lab for end-to-end tests, started as a user starts it: `kubewire lab up
//! --detach` with a config file, then kubectl with `kubewire lab kubeconfig` and
//! `kubewire lab exec`; `kubewire lab down` when dropped.

#![allow(clippy::disallowed_methods)] // runs kubectl and reads its output

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

use crate::cluster::kubectl;
use crate::{kubewire, kubewire_ok, require_root, unique_name};

/// A lab started with `lab up --detach`; `lab down` on drop.
#[derive(Debug)]
pub struct RunningLab {
    /// The lab's name (`--name`).
    pub name: String,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
    dir: tempfile::TempDir,
}

impl RunningLab {
    /// Starts a uniquely named lab of `nodes` nodes.
    pub fn up(nodes: u8) -> RunningLab {
        Self::up_with(nodes, "")
    }

    /// With more lines for the lab's config file. Without the mesh unless they ask for
    /// it (`mesh: true`): most tests need neither its Deployments nor its webhook.
    pub fn up_with(nodes: u8, extra_config: &str) -> RunningLab {
        let mesh = if extra_config.contains("mesh:") {
            ""
        } else {
            "mesh: false\n"
        };
        Self::up_config(nodes, &format!("{mesh}{extra_config}"))
    }

    /// With the lab's defaults, as a user's `lab up` has them (the mesh among them).
    pub fn up_as_users_do(nodes: u8) -> RunningLab {
        Self::up_config(nodes, "")
    }

    fn up_config(nodes: u8, config_lines: &str) -> RunningLab {
        require_root();
        let name = unique_name("t");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("lab.yaml");
        // Port 0: labs of parallel tests each get their own loopback port.
        std::fs::write(
            &config,
            format!("nodes: {nodes}\napiListen: 127.0.0.1:0\n{config_lines}"),
        )
        .unwrap();
        let mut lab = RunningLab {
            name,
            kubeconfig: PathBuf::new(),
            dir,
        };
        lab.start();
        lab
    }

    /// `lab up --detach` with the lab's config file; reads the kubeconfig's path.
    fn start(&mut self) {
        let config = self.dir.path().join("lab.yaml");
        let out = kubewire(&[
            "lab",
            "up",
            "--name",
            &self.name,
            "--config",
            config.to_str().unwrap(),
            "--detach",
        ]);
        assert!(
            out.status.success(),
            "lab up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let summary = String::from_utf8_lossy(&out.stdout);
        assert!(
            summary.contains("export KUBECONFIG=") && summary.contains("is up"),
            "{summary}"
        );
        self.kubeconfig =
            PathBuf::from(kubewire_ok(&["lab", "kubeconfig", "--name", &self.name]).trim());
    }

    /// `lab down --keep-data`, then `lab up` again on the kept data.
    pub fn restart_keeping_data(&mut self) {
        kubewire_ok(&["lab", "down", "--name", &self.name, "--keep-data"]);
        self.start();
    }

    /// `lab down --keep-data`, then a `lab up` whose API server cannot listen (its port is
    /// taken): returns that `lab up`'s output. The lab is down afterwards.
    pub fn failed_restart_keeping_data(&mut self) -> std::process::Output {
        kubewire_ok(&["lab", "down", "--name", &self.name, "--keep-data"]);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let config = self.dir.path().join("taken.yaml");
        let base = std::fs::read_to_string(self.dir.path().join("lab.yaml")).unwrap();
        let text = base.replace(
            "apiListen: 127.0.0.1:0",
            &format!("apiListen: 127.0.0.1:{port}"),
        );
        std::fs::write(&config, text).unwrap();
        kubewire(&[
            "lab",
            "up",
            "--name",
            &self.name,
            "--config",
            config.to_str().unwrap(),
            "--detach",
        ])
    }

    /// `lab up --detach` again with the lab's own config file.
    pub fn start_again(&mut self) {
        self.start();
    }

    /// Runs kubectl against the lab; panics with its stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = kubectl(&self.kubeconfig, args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply` of a YAML manifest.
    pub fn apply(&self, manifest: &str) {
        let file = self.dir.path().join(format!("{}.yaml", unique_name("m")));
        std::fs::write(&file, manifest).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// `kubectl apply` of a YAML manifest that may be refused: kubectl's output, whatever
    /// its exit status.
    pub fn try_apply(&self, manifest: &str) -> std::process::Output {
        let file = self.dir.path().join(format!("{}.yaml", unique_name("m")));
        std::fs::write(&file, manifest).unwrap();
        kubectl(&self.kubeconfig, &["apply", "-f", file.to_str().unwrap()])
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&args)).unwrap()
    }

    /// Waits (up to 120 s) for the Deployment `namespace/name` to finish rolling out.
    pub fn rollout(&self, namespace: &str, name: &str) {
        let deployment = format!("deployment/{name}");
        self.kubectl(&[
            "-n",
            namespace,
            "rollout",
            "status",
            &deployment,
            "--timeout=120s",
        ]);
    }

    /// `kubewire lab exec TARGET -- argv`.
    pub fn exec(&self, target: &str, argv: &[&str]) -> std::process::Output {
        let mut args = vec!["lab", "exec", "--name", &self.name, target, "--"];
        args.extend_from_slice(argv);
        kubewire(&args)
    }

    /// Running pods with `selector`: (name, IP, node).
    pub fn running_pods(&self, selector: &str) -> Vec<(String, String, String)> {
        let list = self.json(&["get", "pods", "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| {
                Some((
                    p["metadata"]["name"].as_str()?.to_owned(),
                    p["status"]["podIP"].as_str()?.to_owned(),
                    p["spec"]["nodeName"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// The first address in the status of the Gateway `name` (default namespace), once
    /// the gateway has written one (60 s at most).
    pub fn gateway_address(&self, name: &str) -> String {
        let address = || {
            self.json(&["get", "gateway", name])["status"]["addresses"][0]["value"]
                .as_str()
                .map(str::to_owned)
        };
        assert!(
            crate::wait_until(std::time::Duration::from_secs(60), || address().is_some()),
            "no address in the status of Gateway {name}: {}",
            self.kubectl(&["get", "gateway", name, "-o", "yaml"])
        );
        address().unwrap()
    }

    /// The ready addresses of the Endpoints `name`; none while the controller has not
    /// written the object yet, so that a wait on it waits instead of failing.
    pub fn endpoint_ips(&self, name: &str) -> BTreeSet<String> {
        let out = kubectl(&self.kubeconfig, &["get", "endpoints", name, "-o", "json"]);
        if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound") {
            return BTreeSet::new();
        }
        assert!(
            out.status.success(),
            "kubectl get endpoints {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ep: Value = serde_json::from_slice(&out.stdout).unwrap();
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(str::to_owned))
            .collect()
    }
}

impl Drop for RunningLab {
    fn drop(&mut self) {
        let out = kubewire(&["lab", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: lab down {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
