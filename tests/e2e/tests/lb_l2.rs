//! Tier 4: L2 announcement of LoadBalancer addresses in a running lab of three nodes,
//! seen from `outside` with its own kernel and tools nobody here wrote (curl, `ip
//! neigh`, arping, ndisc6):
//!
//! - `outside` resolves a dual-stack Service's addresses (ARP and NDP) to the MAC of
//!   the node its ServiceL2Status names, and curl reaches the Service on both; the
//!   Service has a `nodeAssigned` Event;
//! - an `externalTrafficPolicy: Local` Service is announced from the node with its
//!   endpoint;
//! - the owner node is killed (its agent and pod runner, then its underlay link):
//!   `outside` reaches the Service again through another node (the time is printed);
//! - the node comes back (link up, pod runner restarted, its agent with it): after
//!   convergence exactly one MAC answers ARP and NDP for each address.
//!
//! The Services ask the lab's allocation controller for their addresses
//! (`metallb.io/loadBalancerIPs`), from the lab's default pool and L2Advertisement.

#![allow(clippy::disallowed_methods)] // runs kubectl and reads its output

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::running::RunningLab;
use e2e::wait_until;
use serde_json::Value;

const WEB_V4: &str = "198.18.0.200";
const WEB_V6: &str = "2001:2::c8";
const LOCAL_V4: &str = "198.18.0.201";

/// Three web pods behind a dual-stack LoadBalancer Service, and one pod on node-3
/// behind an `externalTrafficPolicy: Local` one.
const SERVICES: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  annotations: {metallb.io/loadBalancerIPs: "198.18.0.200,2001:2::c8"}
spec:
  type: LoadBalancer
  ipFamilyPolicy: RequireDualStack
  ipFamilies: [IPv4, IPv6]
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: local}
spec:
  replicas: 1
  selector: {matchLabels: {app: local}}
  template:
    metadata: {labels: {app: local}}
    spec:
      nodeName: node-3
      containers: [{name: web, image: nginx, ports: [{containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata:
  name: local
  annotations: {metallb.io/loadBalancerIPs: "198.18.0.201"}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: local}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// Waits until the allocation controller has given `svc` all of `ips`.
fn wait_for_addresses(lab: &RunningLab, svc: &str, ips: &[&str]) {
    let has = || {
        let s = lab.json(&["get", "service", svc]);
        let got: BTreeSet<&str> = s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["ip"].as_str())
            .collect();
        ips.iter().all(|ip| got.contains(ip))
    };
    assert!(
        wait_until(Duration::from_secs(20), has),
        "{svc} did not get {ips:?}: {}",
        lab.kubectl(&["get", "service", svc, "-o", "yaml"])
    );
}

/// The node the ServiceL2Statuses name for Service `svc`, if exactly one does.
fn announcer(lab: &RunningLab, svc: &str) -> Option<String> {
    let list = lab.json(&["get", "servicel2statuses", "-A"]);
    let nodes: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["status"]["serviceName"] == svc)
        .filter_map(|s| s["status"]["node"].as_str().map(str::to_owned))
        .collect();
    match &nodes[..] {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// The MAC of `node`'s underlay interface.
fn mac_of(lab: &RunningLab, node: &str) -> String {
    // `ip`, not /sys: sysfs shows the namespace it was mounted in.
    let out = lab.exec(node, &["ip", "-br", "link", "show", "eth0"]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    text.split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_owned()
}

/// The MAC `outside`'s kernel holds for `ip`.
fn neighbour(lab: &RunningLab, ip: &str) -> Option<String> {
    let out = lab.exec("outside", &["ip", "neigh", "show", ip]);
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let words: Vec<&str> = text.split_whitespace().collect();
    words
        .iter()
        .position(|w| *w == "lladdr")
        .and_then(|i| words.get(i + 1))
        .map(|m| m.to_string())
}

/// Whether `outside` gets an answer from `url` (curl, a short timeout).
fn reaches(lab: &RunningLab, url: &str) -> bool {
    let out = lab.exec(
        "outside",
        &[
            "curl",
            "-s",
            "-g",
            "-o",
            "/dev/null",
            "--max-time",
            "2",
            url,
        ],
    );
    out.status.success()
}

/// Every MAC that answers ARP requests for `ip` from `outside` (arping, 5 requests).
fn arp_answers(lab: &RunningLab, ip: &str) -> BTreeSet<String> {
    let out = lab.exec(
        "outside",
        &["arping", "-c", "5", "-W", "0.2", "-i", "eth0", ip],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_lowercase))
        .collect()
}

/// Every MAC that answers Neighbor Solicitations for `ip` from `outside` (ndisc6,
/// waiting for all answers).
fn ndp_answers(lab: &RunningLab, ip: &str) -> BTreeSet<String> {
    let out = lab.exec(
        "outside",
        &["ndisc6", "-m", "-n", "-r", "3", "-w", "300", ip, "eth0"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Target link-layer address: "))
        .map(|m| m.trim().to_lowercase())
        .collect()
}

/// The recorded process `name` (`node-2/node`) of the lab.
fn recorded_pid(lab: &RunningLab, name: &str) -> i32 {
    let path = format!("/run/kubewire/{}/processes.json", lab.name);
    let procs: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let pid = procs
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["pid"].as_u64())
        .unwrap_or_else(|| panic!("{name} is not recorded"));
    i32::try_from(pid).unwrap()
}

/// Kills node `node` the hard way: every process in its namespace (its pod runner and
/// its agent) with SIGKILL, then its underlay link down. Returns the pod runner's
/// command line, to start it again.
fn kill_node(lab: &RunningLab, node: &str) -> Vec<String> {
    let pid = recorded_pid(lab, &format!("{node}/node"));
    let cmdline: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let ns = format!("{}-{node}", lab.name);
    let out = Command::new("ip")
        .args(["netns", "pids", &ns])
        .output()
        .unwrap();
    for p in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let p: i32 = p.parse().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = Command::new("ip")
        .args(["-n", &ns, "link", "set", "eth0", "down"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    cmdline
}

/// A process the test started, killed and reaped when dropped.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Brings node `node` back: its link up with its IPv6 address (which link-down
/// removed), and its pod runner, which starts its agent again (and which `lab down`
/// would stop with the rest, as it runs in the node's namespace).
fn revive_node(lab: &RunningLab, node: &str, cmdline: &[String], v6: &str) -> Reaped {
    let ns = format!("{}-{node}", lab.name);
    for args in [
        vec!["-n", &ns, "link", "set", "eth0", "up"],
        vec!["-n", &ns, "addr", "replace", v6, "dev", "eth0", "nodad"],
    ] {
        let out = Command::new("ip").args(&args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {out:?}");
    }
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns])
        .args(cmdline)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Reaped(cmd.spawn().unwrap())
}

#[test]
fn l2_announcement_answers_fails_over_and_converges_to_one_owner() {
    let lab = RunningLab::up(3);
    lab.apply(SERVICES);
    assert!(
        wait_until(Duration::from_secs(60), || lab
            .running_pods("app=web")
            .len()
            == 3
            && lab.running_pods("app=local").len() == 1),
        "the pods did not run"
    );
    wait_for_addresses(&lab, "web", &[WEB_V4, WEB_V6]);
    wait_for_addresses(&lab, "local", &[LOCAL_V4]);
    let v4_url = format!("http://{WEB_V4}/");
    let v6_url = format!("http://[{WEB_V6}]/");

    // Reached on both families, through the node the status names, whose MAC outside's
    // kernel resolved both addresses to.
    assert!(
        wait_until(Duration::from_secs(30), || reaches(&lab, &v4_url)
            && reaches(&lab, &v6_url)),
        "outside does not reach {v4_url} and {v6_url}"
    );
    let owner = announcer(&lab, "web").expect("one ServiceL2Status for web");
    let owner_mac = mac_of(&lab, &owner);
    assert_eq!(neighbour(&lab, WEB_V4).as_deref(), Some(&*owner_mac));
    assert_eq!(neighbour(&lab, WEB_V6).as_deref(), Some(&*owner_mac));
    assert_eq!(
        arp_answers(&lab, WEB_V4),
        BTreeSet::from([owner_mac.clone()])
    );
    assert_eq!(
        ndp_answers(&lab, WEB_V6),
        BTreeSet::from([owner_mac.clone()])
    );
    let events = lab.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "reason=nodeAssigned,involvedObject.name=web",
    ]);
    assert!(
        events.contains(&format!(
            "announcing from node \"{owner}\" with protocol \"layer2\""
        )),
        "{events}"
    );
    let status = lab.kubectl(&["get", "servicel2statuses", "-A"]);
    println!("{status}");

    // externalTrafficPolicy Local: only node-3 has an endpoint, so only it answers.
    assert!(
        wait_until(Duration::from_secs(20), || announcer(&lab, "local")
            .as_deref()
            == Some("node-3")),
        "the Local Service is not announced from node-3: {}",
        lab.kubectl(&["get", "servicel2statuses", "-A"])
    );
    assert!(wait_until(Duration::from_secs(20), || reaches(
        &lab,
        &format!("http://{LOCAL_V4}/")
    )));
    assert_eq!(
        arp_answers(&lab, LOCAL_V4),
        BTreeSet::from([mac_of(&lab, "node-3")])
    );

    // The owner dies; outside's cache still points at it.
    let v6_of = |node: &str| {
        let n = lab.json(&["get", "node", node]);
        n["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["address"].as_str())
            .find(|a| a.contains(':'))
            .map(|a| format!("{a}/64"))
            .unwrap()
    };
    let owner_v6 = v6_of(&owner);
    let start = Instant::now();
    let cmdline = kill_node(&lab, &owner);
    let script = format!(
        "end=$(($(date +%s)+30)); while [ $(date +%s) -lt $end ]; do \
         curl -s -o /dev/null --connect-timeout 0.2 --max-time 1 {v4_url} && exit 0; done; exit 1"
    );
    let out = lab.exec("outside", &["sh", "-c", &script]);
    let took = start.elapsed();
    assert!(out.status.success(), "outside never reached {v4_url} again");
    println!("L2 failover: {owner} killed, {v4_url} answers again from outside after {took:?}");
    assert!(
        wait_until(Duration::from_secs(30), || announcer(&lab, "web")
            .is_some_and(|n| n != owner)),
        "no other node took web over"
    );
    let second = announcer(&lab, "web").unwrap();
    let second_mac = mac_of(&lab, &second);
    assert_eq!(neighbour(&lab, WEB_V4).as_deref(), Some(&*second_mac));
    assert!(wait_until(Duration::from_secs(20), || reaches(
        &lab, &v6_url
    )));
    assert_eq!(neighbour(&lab, WEB_V6).as_deref(), Some(&*second_mac));

    // It comes back: after convergence exactly one node answers for each address,
    // the same one for both (and the status names it).
    let _runner = revive_node(&lab, &owner, &cmdline, &owner_v6);
    let one_answer = || {
        let macs_v4 = arp_answers(&lab, WEB_V4);
        let macs_v6 = ndp_answers(&lab, WEB_V6);
        let status = announcer(&lab, "web");
        macs_v4.len() == 1
            && macs_v4 == macs_v6
            && status.is_some_and(|n| macs_v4.contains(&mac_of(&lab, &n)))
    };
    assert!(
        wait_until(Duration::from_secs(60), || lab.json(&[
            "get",
            "pods",
            "-n",
            "kube-system",
            "-o",
            "wide"
        ])["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["spec"]["nodeName"] == owner.as_str()
                && p["status"]["containerStatuses"][0]["restartCount"]
                    .as_u64()
                    > Some(0)
                && p["status"]["containerStatuses"][0]["ready"] == true)),
        "{owner}'s agent did not start again"
    );
    assert!(
        wait_until(Duration::from_secs(30), one_answer),
        "more than one node answers after {owner} came back: ARP {:?}, NDP {:?}",
        arp_answers(&lab, WEB_V4),
        ndp_answers(&lab, WEB_V6)
    );
    // And it stays so.
    for _ in 0..3 {
        assert!(one_answer(), "two owners after convergence");
    }
    assert!(reaches(&lab, &v4_url) && reaches(&lab, &v6_url));
}
