//! Every kubewire daemon finds its cluster the same way and stops the same way: here
//! each one gets nothing but `KUBECONFIG` in its environment (no `--kubeconfig`), shows
//! that it reached the API server by doing its job, and exits with status 0 on SIGTERM
//! (what kubelet sends a pod's containers). The API server, then the controllers, the
//! DNS server, the lab's node runner and the agent, all in one throwaway network
//! namespace; their command lines come from each daemon's own `Args`.

#![allow(clippy::disallowed_methods)] // runs dig and kubectl

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{TestNetns, kubewire_bin, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A daemon of this test: killed on drop if it is still running.
struct Daemon {
    name: &'static str,
    child: Option<Child>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Daemon {
    /// Starts `kubewire SUBCOMMAND FLAGS...` in `netns` (or the host's namespace) with
    /// `KUBECONFIG` set to `kubeconfig` (when given), logging to `dir/NAME.log`.
    fn start(
        name: &'static str,
        netns: Option<&str>,
        flags: Vec<OsString>,
        kubeconfig: Option<&Path>,
        dir: &Path,
    ) -> Daemon {
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(kubewire_bin());
        cmd.arg(name)
            .args(flags)
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(kc) = kubeconfig {
            cmd.env("KUBECONFIG", kc);
        }
        let child = match netns {
            Some(netns) => netlink::netns::run_in(netns, move || cmd.spawn()).unwrap(),
            None => cmd.spawn(),
        }
        .unwrap_or_else(|e| panic!("starting kubewire {name}: {e}"));
        Daemon {
            name,
            child: Some(child),
        }
    }

    /// Sends SIGTERM and waits for the exit; panics unless it exits with status 0.
    fn terminate(&mut self, dir: &Path) {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
        kill(pid, Signal::SIGTERM).unwrap();
        let mut status = None;
        let exited = wait_until(Duration::from_secs(20), || {
            status = child.try_wait().unwrap();
            status.is_some()
        });
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log =
            std::fs::read_to_string(dir.join(format!("{}.log", self.name))).unwrap_or_default();
        assert!(
            exited,
            "kubewire {} did not stop on SIGTERM:\n{log}",
            self.name
        );
        assert!(
            status.is_some_and(|s| s.success()),
            "kubewire {} stopped on SIGTERM with {status:?}:\n{log}",
            self.name
        );
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_daemon_finds_its_cluster_from_kubeconfig_and_stops_on_sigterm() {
    let ns = TestNetns::new("dmn");
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();

    // The API server: on the host's loopback for kubectl, and inside the namespace
    // for the daemons there.
    let api = k8s::parse_flags::<apiserver::Args>(&[
        "--data-dir",
        &path("api"),
        "--listen",
        "127.0.0.1:0",
        "--listen-netns",
        &format!("{}=127.0.0.1:6443", ns.name()),
    ]);
    let mut apiserver = Daemon::start("apiserver", None, api.to_args(), None, dir.path());
    let admin = dir.path().join("api/admin.kubeconfig");
    assert!(
        wait_until(Duration::from_secs(30), || admin.exists()),
        "the API server did not start"
    );
    // The daemons' kubeconfig: the admin's, pointing at the listener in the namespace.
    let text = std::fs::read_to_string(&admin).unwrap();
    let server = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .expect("a server line")
        .to_owned();
    let inside = dir.path().join("inside.kubeconfig");
    std::fs::write(&inside, text.replace(&server, "https://127.0.0.1:6443")).unwrap();

    let controllers = k8s::parse_flags::<controllers::Args>(&["--cluster-cidr", "10.244.0.0/16"]);
    let mut controllers = Daemon::start(
        "controllers",
        Some(ns.name()),
        controllers.to_args(),
        Some(&inside),
        dir.path(),
    );
    let dns = k8s::parse_flags::<dns::Args>(&[
        "--listen",
        "127.0.0.1:53",
        "--health-listen",
        "127.0.0.1:8080",
        "--metrics-listen",
        "off",
        "--upstream",
        "127.0.0.1:5353",
    ]);
    let mut dns = Daemon::start(
        "dns",
        Some(ns.name()),
        dns.to_args(),
        Some(&inside),
        dir.path(),
    );
    let node = k8s::parse_flags::<node::Args>(&[
        "--node-name",
        "dmn-node",
        "--node-ip",
        "127.0.0.1",
        "--data-dir",
        &path("node"),
        "--cni-conf-dir",
        &path("net.d"),
        "--port",
        "10250",
    ]);
    let mut runner = Daemon::start(
        "node",
        Some(ns.name()),
        node.to_args(),
        Some(&inside),
        dir.path(),
    );
    let agent = k8s::parse_flags::<agent::Args>(&[
        "--node-name",
        "dmn-node",
        "--cni-conf-dir",
        &path("net.d"),
        "--cni-data-dir",
        &path("cni"),
        "--policy-socket",
        &path("policy.sock"),
    ]);
    let mut agent = Daemon::start(
        "agent",
        Some(ns.name()),
        agent.to_args(),
        Some(&inside),
        dir.path(),
    );

    // The LoadBalancer controller as a cluster's Deployment runs it (the controllers
    // above run one too; two computing the same plan write the same).
    let lb_args = k8s::parse_flags::<lb::controller::Args>(&[]);
    let mut lb_controller = Daemon::start(
        "lb-controller",
        Some(ns.name()),
        lb_args.to_args(),
        Some(&inside),
        dir.path(),
    );

    // The gateway's controller, as its Deployment runs it (its proxy is not joined yet).
    let gateway_args = k8s::parse_flags::<gateway::Args>(&[]);
    let mut gateway = Daemon::start(
        "gateway",
        Some(ns.name()),
        gateway_args.to_args(),
        Some(&inside),
        dir.path(),
    );

    // Each one reached the API server: the node runner registered its Node, the
    // controllers gave it a pod range, the agent wrote the CNI config with that range,
    // and DNS answers for the `kubernetes` Service.
    let cidr = || {
        kubectl(
            &admin,
            &["get", "node", "dmn-node", "-o", "jsonpath={.spec.podCIDR}"],
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || cidr().starts_with("10.244.")),
        "the Node got no pod range: {:?}",
        kubectl(&admin, &["get", "nodes", "-o", "wide"])
    );
    let conflist = dir.path().join("net.d/10-kubewire.conflist");
    assert!(
        wait_until(Duration::from_secs(30), || std::fs::read_to_string(
            &conflist
        )
        .is_ok_and(|c| c.contains(&cidr()))),
        "the agent wrote no CNI config with the node's range"
    );
    let answer = || {
        let out = ns.run(
            "dig",
            &[
                "+short",
                "+time=1",
                "+tries=1",
                "@127.0.0.1",
                "kubernetes.default.svc.cluster.local",
            ],
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(
        wait_until(Duration::from_secs(30), || answer() == "10.96.0.1"),
        "DNS does not answer for kubernetes.default: {:?}",
        answer()
    );

    // The gateway holds its replicas' Lease.
    let holder = || {
        kubectl(
            &admin,
            &[
                "-n",
                "kube-system",
                "get",
                "lease",
                "kubewire-gateway",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
        )
    };
    assert!(
        wait_until(Duration::from_secs(30), || !holder().is_empty()),
        "the gateway holds no Lease"
    );

    // SIGTERM stops each one cleanly, the API server last.
    for daemon in [
        &mut gateway,
        &mut lb_controller,
        &mut agent,
        &mut runner,
        &mut dns,
        &mut controllers,
        &mut apiserver,
    ] {
        daemon.terminate(dir.path());
    }
}
