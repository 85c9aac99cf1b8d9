//! Tier 4: the whole lab through the real binary, as a user drives it: `kubewire lab up
//! --detach`, kubectl with `kubewire lab kubeconfig`, `kubewire lab exec` into pods and
//! `kubewire lab down` — and the talk's lab steps 1 and 2.

#![allow(clippy::disallowed_methods)] // runs kubectl and reads its output

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::{kubewire, kubewire_ok, require_root, unique_name, wait_until};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::Value;

/// Sends `sig` to process `pid` (no `kill` binary needed).
fn signal(pid: u64, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

/// `lab down` when dropped, for tests that run `lab up` themselves: a failed assertion
/// must not leave the lab behind.
struct DownOnDrop(String);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = kubewire(&["lab", "down", "--name", &self.0]);
    }
}

/// Three `web` pods (the Deployment of the talk's lab step 2, which its slides do not
/// show) and the talk's Service `web` in front of them.
fn web() -> String {
    format!(
        "{WEB_DEPLOYMENT}---\n{}",
        e2e::examples(&["step2-services/service-web.yaml"])
    )
}

const WEB_DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
"#;

#[test]
fn talk_lab_steps_one_and_two() {
    let lab = RunningLab::up(2);
    let nodes = lab.kubectl(&["get", "nodes"]);
    assert_eq!(nodes.matches(" Ready ").count(), 2, "{nodes}");

    lab.apply(&web());
    assert!(
        wait_until(Duration::from_secs(60), || lab
            .running_pods("app=web")
            .len()
            == 3),
        "3 web pods did not run: {}",
        lab.kubectl(&["get", "pods", "-o", "wide"])
    );
    let pods = lab.running_pods("app=web");

    // Step 1: pods on different nodes reach each other by pod IP.
    let (a, b) = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a, b)))
        .find(|(a, b)| a.2 != b.2)
        .expect("the scheduler spreads 3 pods over 2 nodes");
    let out = lab.exec(
        &a.0,
        &["curl", "-s", "--max-time", "5", &format!("http://{}/", b.1)],
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && body.contains(&b.0),
        "{} -> {}: {body}",
        a.0,
        b.1
    );

    // `kubectl get endpoints web` lists the three pod IPs.
    let want: BTreeSet<String> = pods.iter().map(|p| p.1.clone()).collect();
    assert!(
        wait_until(Duration::from_secs(20), || lab.endpoint_ips("web") == want),
        "endpoints {:?} != pods {want:?}",
        lab.endpoint_ips("web")
    );
    // The talk's hand-written Endpoints, for no Service: kept as written, and `kubectl
    // get endpoints website` shows what the talk's slide shows.
    lab.apply(&e2e::examples(&["step2-services/endpoints-website.yaml"]));
    let website = lab.kubectl(&["get", "endpoints", "website"]);
    assert!(website.contains("10.10.10.10:80"), "{website}");

    // Step 2: the ClusterIP balances over all three, curled from a pod.
    let svc = lab.json(&["get", "svc", "web"]);
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        let out = lab.exec(
            &a.0,
            &["curl", "-s", "--max-time", "5", &format!("http://{ip}/")],
        );
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if let Some(p) = pods.iter().find(|p| body.contains(&p.0)) {
            seen.insert(p.0.clone());
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        3,
        "the ClusterIP {ip} answered only from {seen:?}"
    );
    // A port the Service does not define is refused at once (a TCP reset from the
    // proxy's reject, reached because nodes route to the underlay like real ones).
    let probe = format!(
        "import socket\ntry:\n    socket.create_connection(('{ip}', 81), 5)\n    print('connected')\n\
         except ConnectionRefusedError:\n    print('refused')\nexcept OSError as e:\n    print(e)"
    );
    let out = lab.exec(&a.0, &["python3", "-c", &probe]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "refused",
        "{ip}:81 from a pod: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Scaling and deleting pods updates the endpoints.
    lab.kubectl(&["scale", "deployment", "web", "--replicas", "2"]);
    assert!(
        wait_until(Duration::from_secs(30), || lab.endpoint_ips("web").len()
            == 2),
        "endpoints after scaling to 2: {:?}",
        lab.endpoint_ips("web")
    );
    let victim = lab.running_pods("app=web")[0].clone();
    lab.kubectl(&["delete", "pod", &victim.0, "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(60), || {
            let ips = lab.endpoint_ips("web");
            ips.len() == 2 && !ips.contains(&victim.1)
        }),
        "endpoints after deleting {}: {:?}",
        victim.0,
        lab.endpoint_ips("web")
    );
}

#[test]
fn a_killed_node_goes_not_ready_and_its_pods_leave_the_endpoints() {
    // Nodes renew their Lease every two seconds; eight without one is NotReady (short for
    // the test, long enough that a busy machine does not fail the live node too).
    let lab = RunningLab::up_with(2, "nodeGracePeriodSeconds: 8\n");
    lab.apply(&web());
    assert!(
        wait_until(Duration::from_secs(60), || {
            lab.running_pods("app=web").len() == 3 && lab.endpoint_ips("web").len() == 3
        }),
        "3 web pods did not run and become endpoints"
    );
    let on_node_2: BTreeSet<String> = lab
        .running_pods("app=web")
        .into_iter()
        .filter(|p| p.2 == "node-2")
        .map(|p| p.1)
        .collect();
    assert!(
        !on_node_2.is_empty(),
        "the scheduler put no web pod on node-2"
    );

    let procs = recorded_processes(&lab.name);
    let pid = procs
        .iter()
        .find(|p| p["name"] == "node-2/node")
        .and_then(|p| p["pid"].as_u64())
        .expect("node-2's pod runner is recorded");
    signal(pid, Signal::SIGKILL);

    let ready = |node: &str| {
        let n = lab.json(&["get", "node", node]);
        n["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    };
    assert!(
        wait_until(Duration::from_secs(30), || !ready("node-2")),
        "node-2 stayed Ready after its pod runner died"
    );
    assert!(ready("node-1"), "node-1 went NotReady too");
    assert!(
        wait_until(Duration::from_secs(30), || lab
            .endpoint_ips("web")
            .is_disjoint(&on_node_2)),
        "node-2's pods {on_node_2:?} are still ready endpoints: {:?}",
        lab.endpoint_ips("web")
    );
    let ep = lab.json(&["get", "endpoints", "web"]);
    let not_ready: BTreeSet<String> = ep["subsets"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| {
            s["notReadyAddresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a["ip"].as_str().map(str::to_owned))
        .collect();
    assert!(on_node_2.is_subset(&not_ready), "{ep}");
}

#[test]
fn lab_up_detach_status_and_down_leave_the_host_as_it_was() {
    require_root();
    let before = e2e::strip_test_namespaces(&e2e::host_snapshot());
    let lab = RunningLab::up(1);
    let name = lab.name.clone();

    let status = kubewire_ok(&["lab", "status", "--name", &name]);
    for want in [
        "apiserver",
        "controllers",
        "node-1/node",
        "running",
        "Ready",
        "kube-system/kubewire-agent-",
        "kube-system/kubewire-dns-",
    ] {
        assert!(status.contains(want), "no {want:?} in:\n{status}");
    }
    let again = kubewire(&["lab", "up", "--name", &name, "--detach"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("is already up"));

    let data = PathBuf::from("/var/lib/kubewire").join(&name);
    assert!(data.join("api/admin.kubeconfig").exists());
    let printed = kubewire_ok(&["lab", "kubeconfig", "--name", &name, "--print"]);
    assert_eq!(
        printed,
        std::fs::read_to_string(data.join("api/admin.kubeconfig")).unwrap()
    );
    drop(lab);
    assert!(!data.exists(), "lab down left {}", data.display());
    let after = e2e::host_snapshot();
    assert!(
        !after.lines().any(|l| l.starts_with(&format!("{name}-"))),
        "namespaces left:\n{after}"
    );
    assert_eq!(
        before,
        e2e::strip_test_namespaces(&after),
        "the host changed"
    );
}

/// Starts `kubewire lab up` (foreground, one node) for a lab named `name`, its config
/// file in `dir`.
fn foreground_lab_up(name: &str, dir: &std::path::Path, stdout: Stdio) -> Child {
    let config = dir.join("lab.yaml");
    std::fs::write(&config, "nodes: 1\napiListen: 127.0.0.1:0\n").unwrap();
    Command::new(e2e::kubewire_bin())
        .args([
            "lab",
            "up",
            "--name",
            name,
            "--config",
            config.to_str().unwrap(),
        ])
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Where a lab records its processes.
fn process_record(name: &str) -> PathBuf {
    PathBuf::from("/run/kubewire")
        .join(name)
        .join("processes.json")
}

/// The processes the lab `name` recorded.
fn recorded_processes(name: &str) -> Vec<Value> {
    serde_json::from_str(&std::fs::read_to_string(process_record(name)).unwrap()).unwrap()
}

/// Nothing of the lab is left: none of `procs` runs, no namespace, no data, no state.
fn assert_lab_gone(name: &str, procs: &[Value], after: &str) {
    for p in procs {
        let pid = p["pid"].as_u64().unwrap();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, a zombie, or a pid already reused by something else.
        assert!(
            stat.is_empty() || stat.contains(") Z ") || !stat.contains("kubewire"),
            "{} (pid {pid}) still runs after {after}",
            p["name"]
        );
    }
    let left: Vec<String> = netlink::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "left behind after {after}: {left:?}");
    assert!(!PathBuf::from("/var/lib/kubewire").join(name).exists());
    assert!(!PathBuf::from("/run/kubewire").join(name).exists());
}

#[test]
fn a_killed_lab_up_is_cleaned_by_lab_down() {
    require_root();
    let name = unique_name("t");
    let _down = DownOnDrop(name.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut up = foreground_lab_up(&name, dir.path(), Stdio::null());
    // Kill it (no chance to clean up) once it has started the node's processes.
    let started = wait_until(Duration::from_secs(60), || {
        std::fs::read_to_string(process_record(&name)).is_ok_and(|s| s.contains("node-1/node"))
    });
    up.kill().unwrap();
    up.wait().unwrap();
    assert!(started, "lab up started no node process");
    let procs = recorded_processes(&name);
    kubewire_ok(&["lab", "down", "--name", &name]);
    assert_lab_gone(&name, &procs, "lab down");
}

#[test]
fn ctrl_c_on_a_foreground_lab_up_tears_everything_down() {
    require_root();
    let name = unique_name("t");
    let _down = DownOnDrop(name.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut up = foreground_lab_up(&name, dir.path(), Stdio::piped());
    // It prints its summary once the cluster is ready, then waits in the foreground.
    let mut summary = String::new();
    {
        use std::io::BufRead;
        let stdout = std::io::BufReader::new(up.stdout.take().unwrap());
        for line in stdout.lines() {
            let line = line.unwrap();
            summary.push_str(&line);
            summary.push('\n');
            if line.starts_with("Stop:") {
                break;
            }
        }
    }
    assert!(
        summary.contains("is up"),
        "lab up did not come up:\n{summary}"
    );
    assert!(summary.contains("Ctrl-C"), "{summary}");
    let procs = recorded_processes(&name);
    // What a terminal's Ctrl-C sends.
    signal(u64::from(up.id()), Signal::SIGINT);
    let status = up.wait().unwrap();
    assert!(status.success(), "lab up exited with {status}");
    assert_lab_gone(&name, &procs, "Ctrl-C");
}

#[test]
fn a_config_file_sets_ranges_routing_and_the_cluster_domain() {
    // IPv4 only, VXLAN between the nodes, another cluster domain.
    let lab = RunningLab::up_with(
        2,
        "routing: vxlan\npodCidrs: [10.200.0.0/16]\nserviceCidrs: [10.100.0.0/16]\nclusterDomain: lab.example\n",
    );
    let dns = lab.json(&["get", "svc", "-n", "kube-system", "kube-dns"]);
    assert_eq!(dns["spec"]["clusterIP"], "10.100.0.10");
    assert_eq!(dns["spec"]["ipFamilies"], serde_json::json!(["IPv4"]));
    lab.apply(&web());
    assert!(
        wait_until(Duration::from_secs(60), || lab
            .running_pods("app=web")
            .len()
            == 3),
        "3 web pods did not run"
    );
    let pods = lab.running_pods("app=web");
    for p in &pods {
        assert!(
            p.1.starts_with("10.200."),
            "pod IP {} outside podCidrs",
            p.1
        );
    }
    let (a, b) = pods
        .iter()
        .flat_map(|a| pods.iter().map(move |b| (a, b)))
        .find(|(a, b)| a.2 != b.2)
        .expect("pods on both nodes");
    // Across nodes through the VXLAN overlay, by the name in the configured domain.
    let out = lab.exec(&a.0, &["getent", "hosts", "web.default.svc.lab.example"]);
    let svc_ip = lab.json(&["get", "svc", "web"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(svc_ip.starts_with("10.100."), "{svc_ip}");
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&svc_ip),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = lab.exec(
        &a.0,
        &["curl", "-s", "--max-time", "5", &format!("http://{}/", b.1)],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&b.0));
    let resolv = lab.exec(&a.0, &["cat", "/etc/resolv.conf"]);
    assert!(
        String::from_utf8_lossy(&resolv.stdout)
            .contains("search default.svc.lab.example svc.lab.example lab.example"),
        "{}",
        String::from_utf8_lossy(&resolv.stdout)
    );
}

#[test]
fn lab_down_keep_data_keeps_the_cluster_for_the_next_lab_up() {
    let mut lab = RunningLab::up(2);
    lab.kubectl(&["create", "configmap", "kept", "--from-literal=k=v"]);
    lab.apply(&web());
    assert!(
        wait_until(Duration::from_secs(60), || lab.endpoint_ips("web").len()
            == 3),
        "web did not get 3 endpoints"
    );
    // A lab up that fails (its API server cannot listen) leaves kept data as it was.
    let failed = lab.failed_restart_keeping_data();
    let err = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(
        err.contains("apiserver exited") && err.contains("kept from before"),
        "{err}"
    );
    lab.start_again();
    assert_eq!(lab.json(&["get", "configmap", "kept"])["data"]["k"], "v");
    lab.restart_keeping_data();
    let cm = lab.json(&["get", "configmap", "kept"]);
    assert_eq!(cm["data"]["k"], "v");
    // The pods come back on their nodes, and the Service answers from them.
    let svc = lab.json(&["get", "svc", "web"]);
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_owned();
    let pod = lab.running_pods("app=web")[0].0.clone();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let out = lab.exec(
                &pod,
                &["curl", "-s", "--max-time", "3", &format!("http://{ip}/")],
            );
            String::from_utf8_lossy(&out.stdout).contains("web-")
        }),
        "the ClusterIP {ip} does not answer after the restart"
    );
}

/// The rights docs/install.md documents for each ServiceAccount: the lines of its
/// `kubectl auth can-i --list --as=system:serviceaccount:kube-system:NAME` block (header
/// first), whitespace collapsed.
fn documented_rights() -> Vec<(String, Vec<String>)> {
    let doc = std::fs::read_to_string(e2e::workspace_root().join("docs/install.md")).unwrap();
    let prefix = "$ kubectl auth can-i --list --as=system:serviceaccount:kube-system:";
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    let mut current = None;
    for line in doc.lines() {
        if let Some(sa) = line.strip_prefix(prefix) {
            out.push((sa.to_owned(), Vec::new()));
            current = Some(out.len() - 1);
        } else if line.starts_with("```") || line.starts_with('$') {
            current = None;
        } else if let Some(i) = current {
            out[i].1.push(collapse(line));
        }
    }
    out
}

fn collapse(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `kubectl auth can-i --list` as `user`, one collapsed line each.
fn can_i_list(lab: &RunningLab, user: &str) -> Vec<String> {
    lab.kubectl(&["auth", "can-i", "--list", &format!("--as={user}")])
        .lines()
        .map(collapse)
        .collect()
}

/// `kubectl auth can-i ARGS` as `user`: yes or no.
fn can_i(lab: &RunningLab, user: &str, args: &[&str]) -> bool {
    let mut argv = vec!["auth", "can-i"];
    argv.extend_from_slice(args);
    let user = format!("--as={user}");
    argv.push(&user);
    let out = e2e::cluster::kubectl(&lab.kubeconfig, &argv);
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {argv:?}: {other} {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[test]
fn kubewire_runs_as_its_service_accounts_with_exactly_the_documented_rights() {
    let lab = RunningLab::up(2);
    let lab_dir = tempfile::tempdir().unwrap();
    // What every authenticated user may do (discovery, self reviews), the same for all.
    let everyone = can_i_list(&lab, "system:serviceaccount:kube-system:nobody");
    let documented = documented_rights();
    assert_eq!(
        documented
            .iter()
            .map(|(sa, _)| sa.as_str())
            .collect::<Vec<_>>(),
        ["kubewire-agent", "kubewire-dns", "kubewire-lb-controller"],
        "docs/install.md documents a can-i block per ServiceAccount"
    );
    for (sa, rights) in &documented {
        let user = format!("system:serviceaccount:kube-system:{sa}");
        let listed: Vec<String> = can_i_list(&lab, &user)
            .into_iter()
            .enumerate()
            .filter(|(i, l)| *i == 0 || !everyone.contains(l))
            .map(|(_, l)| l)
            .collect();
        assert_eq!(&listed, rights, "kubectl auth can-i --list --as={user}");
        // No Secrets, anywhere, by any verb; no write to any Node or its status.
        for verb in ["get", "list", "watch"] {
            assert!(
                !can_i(&lab, &user, &[verb, "secrets", "-A"]),
                "{sa} {verb} secrets"
            );
        }
        for node in ["node-1", "node-2"] {
            for verb in ["update", "patch", "delete"] {
                assert!(!can_i(&lab, &user, &[verb, &format!("nodes/{node}")]));
                assert!(!can_i(
                    &lab,
                    &user,
                    &[verb, &format!("nodes/{node}"), "--subresource=status"]
                ));
            }
        }
        assert!(!can_i(&lab, &user, &["create", "nodes"]));
    }

    // The running pods hold their own ServiceAccount's token, and the API server knows
    // them by it: the agent on every node, and DNS.
    let server = lab.kubectl(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let node_file = lab_dir.path().join("node-2.json");
    std::fs::write(
        &node_file,
        lab.kubectl(&["get", "node", "node-2", "-o", "json"]),
    )
    .unwrap();
    for (selector, sa, allowed) in [
        (
            "app.kubernetes.io/name=kubewire-agent",
            "kubewire-agent",
            "nodes",
        ),
        ("k8s-app=kube-dns", "kubewire-dns", "pods"),
    ] {
        let pods = lab.json(&["-n", "kube-system", "get", "pods", "-l", selector]);
        let pods = pods["items"].as_array().unwrap();
        assert!(!pods.is_empty(), "no pod {selector}");
        for pod in pods {
            let name = pod["metadata"]["name"].as_str().unwrap();
            assert_eq!(pod["spec"]["serviceAccountName"], sa, "{name}");
            let out = lab.exec(
                &format!("kube-system/{name}"),
                &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
            );
            assert!(out.status.success(), "{name}: {out:?}");
            let token = String::from_utf8(out.stdout).unwrap();
            let as_pod = |args: &[&str]| {
                Command::new("kubectl")
                    .args(["--kubeconfig=/dev/null", "--insecure-skip-tls-verify"])
                    .arg(format!("--server={server}"))
                    .arg(format!("--token={}", token.trim()))
                    .args(args)
                    .output()
                    .unwrap()
            };
            let read = as_pod(&["get", allowed, "-A", "-o", "name"]);
            assert!(read.status.success(), "{name} list {allowed}: {read:?}");
            let secrets = as_pod(&["get", "secrets", "-A"]);
            let err = String::from_utf8_lossy(&secrets.stderr);
            assert!(
                !secrets.status.success()
                    && err.contains(&format!(
                        "User \"system:serviceaccount:kube-system:{sa}\" cannot list resource \"secrets\" in API group \"\" at the cluster scope"
                    )),
                "{name} list secrets: {secrets:?}"
            );
            // A PUT of node-2 and of its status, as kubectl sends it (no read first).
            for (path, resource) in [
                ("/api/v1/nodes/node-2", "nodes"),
                ("/api/v1/nodes/node-2/status", "nodes/status"),
            ] {
                let put = as_pod(&["replace", "--raw", path, "-f", node_file.to_str().unwrap()]);
                assert!(
                    !put.status.success()
                        && String::from_utf8_lossy(&put.stderr).contains(&format!(
                            "User \"system:serviceaccount:kube-system:{sa}\" cannot update resource \"{resource}\""
                        )),
                    "{name} writes {path}: {put:?}"
                );
            }
        }
    }
}

#[test]
fn the_controllers_run_as_kube_controller_manager_with_a_service_account_each() {
    let lab = RunningLab::up(2);
    // The controllers' and the scheduler's credentials are their own users, not the
    // admin's: `lab up` got to DNS ready (a Deployment scaled, pods scheduled, the
    // kube-dns Service's endpoints written) under those identities.
    let api_dir = lab.kubeconfig.parent().unwrap();
    for (file, user) in [
        (
            "controller-manager.kubeconfig",
            "system:kube-controller-manager",
        ),
        ("scheduler.kubeconfig", "system:kube-scheduler"),
    ] {
        let kubeconfig = api_dir.join(file);
        let out = e2e::cluster::kubectl(&kubeconfig, &["auth", "whoami", "-o", "json"]);
        assert!(out.status.success(), "{file}: {out:?}");
        let who: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(who["status"]["userInfo"]["username"], user, "{file}");
    }
    // No controller was refused anything on the way up.
    let log =
        std::fs::read_to_string(api_dir.parent().unwrap().join("logs/controllers.log")).unwrap();
    assert!(
        !log.contains("forbidden") && !log.contains("Unauthorized"),
        "{log}"
    );
    // Each controller's ServiceAccount, made by the controller manager.
    let sas: BTreeSet<String> = lab
        .kubectl(&["-n", "kube-system", "get", "serviceaccounts", "-o", "name"])
        .lines()
        .map(|l| l.trim_start_matches("serviceaccount/").to_string())
        .collect();
    for sa in [
        "deployment-controller",
        "replicaset-controller",
        "endpointslice-controller",
        "endpoint-controller",
        "daemon-set-controller",
        "node-controller",
        "job-controller",
    ] {
        assert!(sas.contains(sa), "{sa} in {sas:?}");
    }
    // Neither the controller manager nor the scheduler may write workloads themselves.
    assert!(!can_i(
        &lab,
        "system:kube-controller-manager",
        &["create", "pods"]
    ));
    assert!(can_i(
        &lab,
        "system:kube-scheduler",
        &["create", "pods", "--subresource=binding"]
    ));
    assert!(!can_i(&lab, "system:kube-scheduler", &["create", "pods"]));
    // A controller's token is refused what its role does not give, as kube-apiserver
    // words it.
    let token = lab.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "replicaset-controller",
    ]);
    let server = lab.kubectl(&[
        "config",
        "view",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let as_rs = |args: &[&str]| {
        Command::new("kubectl")
            .args(["--kubeconfig=/dev/null", "--insecure-skip-tls-verify"])
            .arg(format!("--server={server}"))
            .arg(format!("--token={}", token.trim()))
            .args(args)
            .output()
            .unwrap()
    };
    let pods = as_rs(&["get", "pods", "-A", "-o", "name"]);
    assert!(pods.status.success(), "{pods:?}");
    let secrets = as_rs(&["get", "secrets", "-n", "default"]);
    assert!(
        !secrets.status.success()
            && String::from_utf8_lossy(&secrets.stderr).contains(
                "secrets is forbidden: User \"system:serviceaccount:kube-system:replicaset-controller\" cannot list resource \"secrets\" in API group \"\" in the namespace \"default\""
            ),
        "{secrets:?}"
    );
}
