//! The upstream NetworkPolicy e2e suite's setting (`test/e2e/network/netpol` in
//! Kubernetes), in a running lab: namespaces x, y and z, pods a, b and c in each
//! (spread over the nodes), every pod serving TCP and UDP on ports 80 and 81 with
//! upstream's container and port names (`cont-80-tcp`, `serve-80-tcp`, ...), and a
//! truth table ([`Reachability`]) of which pod may reach which, on each port and
//! protocol, compared with what real clients in the pods get.
//!
//! Each pod is probed from every pod (python3's sockets, run in the source pod with
//! `kubewire lab exec`): TCP connects and expects its bytes echoed, UDP expects its
//! datagram echoed, each within a second. Loopback (a pod to itself) is left out, as
//! upstream leaves it out (its semantics differ between implementations). A table that
//! does not match is probed again until it does or 20 s pass (policies apply
//! asynchronously), then the test fails with both tables.

#![allow(clippy::disallowed_methods)] // runs kubectl and kubewire lab exec

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::running::RunningLab;

/// The namespaces, as upstream names them.
pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
/// The pods of each namespace.
pub const PODS: [&str; 3] = ["a", "b", "c"];
/// The ports every pod serves.
pub const PORTS: [u16; 2] = [80, 81];
/// The protocols probed.
pub const PROTOCOLS: [&str; 2] = ["TCP", "UDP"];

/// A probe: source pod, destination pod, port, protocol.
pub type Probe = (String, String, u16, &'static str);

/// Which pod may reach which, on each port and protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability(BTreeMap<Probe, bool>);

/// Whether `pod` (`ns/name`) is one `sel` names: `""` every pod, `"x"` the pods of
/// namespace x, `"x/a"` one pod.
fn names(sel: &str, pod: &str) -> bool {
    sel.is_empty() || sel == pod || pod.split('/').next() == Some(sel)
}

impl Reachability {
    /// Every probe expected `allowed`.
    pub fn all(allowed: bool) -> Reachability {
        let mut m = BTreeMap::new();
        for from in all_pods() {
            for to in all_pods() {
                for port in PORTS {
                    for proto in PROTOCOLS {
                        m.insert((from.clone(), to.clone(), port, proto), allowed);
                    }
                }
            }
        }
        Reachability(m)
    }

    /// From the pods `from` names to those `to` names, on every port and protocol.
    pub fn expect(self, from: &str, to: &str, allowed: bool) -> Reachability {
        self.expect_on(from, to, None, None, allowed)
    }

    /// The same, on `port` (every port when `None`) and `proto` (every protocol when
    /// `None`) only.
    pub fn expect_on(
        mut self,
        from: &str,
        to: &str,
        port: Option<u16>,
        proto: Option<&str>,
        allowed: bool,
    ) -> Reachability {
        for ((f, t, p, pr), v) in self.0.iter_mut() {
            if names(from, f)
                && names(to, t)
                && port.is_none_or(|x| x == *p)
                && proto.is_none_or(|x| x == *pr)
            {
                *v = allowed;
            }
        }
        self
    }

    /// The probes whose outcomes differ from `other`'s, loopback left out.
    fn differences(&self, other: &Reachability) -> Vec<(&Probe, bool)> {
        self.0
            .iter()
            .filter(|((f, t, _, _), _)| f != t)
            .filter(|(k, v)| other.0.get(*k) != Some(v))
            .map(|(k, v)| (k, *v))
            .collect()
    }

    /// The table of one port and protocol, as upstream prints it (`.` allowed, `X`
    /// denied).
    fn table(&self, port: u16, proto: &str) -> String {
        let pods = all_pods();
        let mut out = format!("{proto}/{port}\n     ");
        for to in &pods {
            let _ = write!(out, "{to:>5}");
        }
        out.push('\n');
        for from in &pods {
            let _ = write!(out, "{from:>5}");
            for to in &pods {
                let v = self.0[&(from.clone(), to.clone(), port, proto_static(proto))];
                let _ = write!(out, "{:>5}", if v { "." } else { "X" });
            }
            out.push('\n');
        }
        out
    }

    fn tables(&self) -> String {
        let mut out = String::new();
        for port in PORTS {
            for proto in PROTOCOLS {
                out.push_str(&self.table(port, proto));
            }
        }
        out
    }
}

fn proto_static(p: &str) -> &'static str {
    if p == "TCP" { "TCP" } else { "UDP" }
}

/// `x/a`, `x/b`, ... `z/c`.
pub fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

/// Probes the targets given as `ip,port,proto` arguments at once (a thread each) and
/// prints `ip,port,proto,ok|fail` lines.
const PROBE: &str = r#"
import socket, sys, threading
out = {}
def probe(t):
    ip, port, proto = t.split(",")
    ok = False
    try:
        if proto == "TCP":
            s = socket.create_connection((ip, int(port)), timeout=1)
            s.settimeout(1)
            s.sendall(b"kubewire")
            ok = s.recv(16) == b"kubewire"
        else:
            s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1)
            s.sendto(b"kubewire", (ip, int(port)))
            ok = s.recv(16) == b"kubewire"
        s.close()
    except OSError:
        pass
    out[t] = ok
threads = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
for t in threads: t.start()
for t in threads: t.join()
for t, ok in out.items(): print(t + "," + ("ok" if ok else "fail"))
"#;

/// The upstream suite's pods in a running lab.
#[derive(Debug)]
pub struct Netpol {
    /// The lab.
    pub lab: RunningLab,
    /// Pod addresses by `ns/name`.
    pub ips: BTreeMap<String, String>,
}

/// The pod `ns/name` with upstream's four server containers, pinned to `node`.
fn pod_manifest(ns: &str, name: &str, node: &str) -> String {
    let mut containers = String::new();
    for port in PORTS {
        for proto in ["tcp", "udp"] {
            let upper = proto.to_uppercase();
            let _ = write!(
                containers,
                "  - name: cont-{port}-{proto}\n    image: {proto}-echo\n    ports:\n    - containerPort: {port}\n      name: serve-{port}-{proto}\n      protocol: {upper}\n"
            );
        }
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"{name}\"\n  namespace: \"{ns}\"\n  labels:\n    pod: \"{name}\"\nspec:\n  nodeName: {node}\n  containers:\n{containers}---\n"
    )
}

impl Netpol {
    /// A two-node lab with the nine pods running (x/a on node-1, x/b on node-2, ...).
    pub fn up() -> Netpol {
        let lab = RunningLab::up(2);
        let mut manifest = String::new();
        for ns in NAMESPACES {
            let _ = write!(
                manifest,
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: \"{ns}\"\n---\n"
            );
        }
        for (i, pod) in all_pods().iter().enumerate() {
            let (ns, name) = pod.split_once('/').unwrap();
            manifest.push_str(&pod_manifest(ns, name, &format!("node-{}", i % 2 + 1)));
        }
        lab.apply(&manifest);
        let mut ips = BTreeMap::new();
        let ready = crate::wait_until(Duration::from_secs(120), || {
            let list = lab.json(&["get", "pods", "-A", "-l", "pod"]);
            ips.clear();
            for p in list["items"].as_array().into_iter().flatten() {
                let running = p["status"]["phase"] == "Running"
                    && p["status"]["containerStatuses"]
                        .as_array()
                        .is_some_and(|c| c.len() == 4 && c.iter().all(|c| c["ready"] == true));
                if let (true, Some(ip)) = (running, p["status"]["podIP"].as_str()) {
                    ips.insert(
                        format!(
                            "{}/{}",
                            p["metadata"]["namespace"].as_str().unwrap(),
                            p["metadata"]["name"].as_str().unwrap()
                        ),
                        ip.to_owned(),
                    );
                }
            }
            ips.len() == 9
        });
        assert!(
            ready,
            "the nine pods did not all run: {}",
            lab.kubectl(&["get", "pods", "-A", "-o", "wide"])
        );
        Netpol { lab, ips }
    }

    /// `kubectl apply` of a manifest (policies, label changes).
    pub fn apply(&self, manifest: &str) {
        self.lab.apply(manifest);
    }

    /// What every pod gets from every other, on each port and protocol.
    pub fn probe(&self) -> Reachability {
        let pods = all_pods();
        let results: Vec<(String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .map(|from| {
                    s.spawn(move || {
                        let mut args = vec!["python3".to_owned(), "-c".into(), PROBE.into()];
                        for to in all_pods() {
                            for port in PORTS {
                                for proto in PROTOCOLS {
                                    args.push(format!("{},{port},{proto}", self.ips[&to]));
                                }
                            }
                        }
                        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                        let out = self.lab.exec(from, &argv);
                        (
                            from.clone(),
                            String::from_utf8_lossy(&out.stdout).into_owned(),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let by_ip: BTreeMap<&str, &str> = self
            .ips
            .iter()
            .map(|(pod, ip)| (ip.as_str(), pod.as_str()))
            .collect();
        let mut got = Reachability::all(false);
        for (from, out) in results {
            for line in out.lines() {
                let f: Vec<&str> = line.split(',').collect();
                let [ip, port, proto, verdict] = f[..] else {
                    continue;
                };
                let to = by_ip[ip].to_owned();
                let key = (from.clone(), to, port.parse().unwrap(), proto_static(proto));
                got.0.insert(key, verdict == "ok");
            }
        }
        got
    }

    /// Starts `script` (python3) in pod `from` with `args`, its stdin and stdout piped:
    /// for clients that hold connections open across a change.
    pub fn spawn_python(&self, from: &str, script: &str, args: &[&str]) -> std::process::Child {
        std::process::Command::new(crate::kubewire_bin())
            .args([
                "lab",
                "exec",
                "--name",
                &self.lab.name,
                from,
                "--",
                "python3",
                "-c",
                script,
            ])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubewire lab exec")
    }

    /// Probes until the pods' reachability is `want` (20 s at most); fails with both
    /// tables otherwise.
    pub fn expect(&self, want: &Reachability) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.probe();
            let diff = want.differences(&got);
            if diff.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let mut text = String::new();
                for ((f, t, p, pr), v) in &diff {
                    let _ = writeln!(
                        text,
                        "{f} -> {t} {pr}/{p}: want {}",
                        if *v { "allowed" } else { "denied" }
                    );
                }
                panic!(
                    "reachability differs in {} probes:\n{text}\nwanted:\n{}\ngot:\n{}\n{}",
                    diff.len(),
                    want.tables(),
                    got.tables(),
                    self.lab
                        .kubectl(&["get", "networkpolicies", "-A", "-o", "yaml"])
                );
            }
        }
    }
}
