//! Tier 4: BGP announcement of LoadBalancer addresses in a running lab with
//! `loadBalancer: bgp`, against real routers nobody here wrote: BIRD 2 and FRR, each in
//! the lab's router namespace. The router's own view is read with its own client
//! (`birdc`, `vtysh`) and its kernel table with `ip`; clients run in `outside`.
//!
//! The allocation controller is not part of this test: each Service gets its address
//! and the pool annotation the controller would write (`metallb.io/ip-allocated-from-pool`)
//! by hand, as a cloud controller would write `status.loadBalancer`.

#![allow(clippy::disallowed_methods)] // runs ip, birdc, vtysh and curl

use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

const POOL: &str = r#"
apiVersion: metallb.io/v1beta1
kind: IPAddressPool
metadata: {name: default, namespace: metallb-system}
spec: {addresses: ["198.18.0.200-198.18.0.250", "2001:2::c8-2001:2::fa"]}
---
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: tagged, namespace: metallb-system}
spec:
  communities: ["64512:100", "large:64512:1:2", "no-advertise"]
---
apiVersion: metallb.io/v1beta1
kind: Community
metadata: {name: aliases, namespace: metallb-system}
spec:
  communities: [{name: no-advertise, value: "65535:65282"}]
"#;

/// A Deployment and its LoadBalancer Service, asking the allocation controller for
/// `ips` (MetalLB's `loadBalancerIPs` annotation).
fn service(name: &str, replicas: u8, local: bool, ips: &[&str]) -> String {
    // Dual-stack, so that the proxy forwards its IPv6 address too.
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: web, image: nginx}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  annotations: {{metallb.io/loadBalancerIPs: "{ips}"}}
spec:
  type: LoadBalancer
  ipFamilyPolicy: PreferDualStack
  externalTrafficPolicy: {policy}
  selector: {{app: {name}}}
  ports: [{{port: 80, targetPort: 80}}]
"#,
        policy = if local { "Local" } else { "Cluster" },
        ips = ips.join(","),
    )
}

struct Bgp {
    lab: RunningLab,
    frr: bool,
}

impl Bgp {
    fn up(router: &str, bfd: bool) -> Bgp {
        Self::up_with(router, &format!("bfd: {bfd}\n"))
    }

    fn up_with(router: &str, extra: &str) -> Bgp {
        let lab = RunningLab::up_with(
            2,
            &format!("loadBalancer: bgp\nrouter: {router}\nnodeGracePeriodSeconds: 8\n{extra}"),
        );
        Bgp {
            lab,
            frr: router == "frr",
        }
    }

    fn router_dir(&self) -> String {
        format!("/run/kubewire/{}/router", self.lab.name)
    }

    fn out(o: std::process::Output) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    /// A command of the router's own client, in its namespace.
    fn router(&self, command: &str) -> String {
        let dir = self.router_dir();
        if self.frr {
            Self::out(
                self.lab
                    .exec("router", &["vtysh", "--vty_socket", &dir, "-c", command]),
            )
        } else {
            let sock = format!("{dir}/bird.ctl");
            let mut argv = vec!["birdc", "-s", &sock];
            argv.extend(command.split_whitespace());
            Self::out(self.lab.exec("router", &argv))
        }
    }

    /// How many sessions the router sees Established.
    fn established(&self) -> usize {
        if self.frr {
            let v: serde_json::Value =
                serde_json::from_str(&self.router("show bgp neighbors json")).unwrap_or_default();
            v.as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n["bgpState"] == "Established")
                .count()
        } else {
            self.router("show protocols")
                .lines()
                .filter(|l| l.contains(" BGP ") && l.contains("Established"))
                .count()
        }
    }

    /// The router's BGP view of `prefix`.
    fn bgp_route(&self, prefix: &str) -> String {
        if self.frr {
            self.router(&format!("show bgp ipv4 unicast {prefix}"))
        } else {
            self.router(&format!("show route for {prefix} all"))
        }
    }

    /// The next hops of `ip` in the router's kernel table (what it forwards by).
    fn next_hops(&self, ip: &str) -> Vec<String> {
        let family = if ip.contains(':') { "-6" } else { "-4" };
        let text = Self::out(
            self.lab
                .exec("router", &["ip", family, "route", "show", ip]),
        );
        let mut hops: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect();
        hops.sort();
        hops
    }

    fn curl_from_outside(&self, ip: &str) -> String {
        Self::out(self.lab.exec(
            "outside",
            &["curl", "-s", "-m", "2", &format!("http://{ip}/")],
        ))
    }
}

/// With `bfd`, the lab's BGPPeers name a BFDProfile and the router runs BFD: a node
/// cut off is noticed by BFD (the router says so), otherwise by the hold timer.
fn announce_withdraw_ecmp_and_node_death(router: &str, bfd: bool) {
    let t = Bgp::up(router, bfd);
    let lab = &t.lab;
    // Two nodes, each over IPv4 and IPv6.
    assert!(
        wait_until(Duration::from_secs(30), || t.established() == 4),
        "{router}: sessions not Established:\n{}",
        t.router(if t.frr {
            "show bgp summary"
        } else {
            "show protocols"
        })
    );

    lab.apply(POOL);
    lab.apply(&service("web", 2, false, &["198.18.0.200", "2001:2::c8"]));
    lab.apply(&service("local", 1, true, &["198.18.0.201", "2001:2::c9"]));
    assert!(
        wait_until(Duration::from_secs(60), || {
            lab.running_pods("app=web").len() == 2 && lab.running_pods("app=local").len() == 1
        }),
        "pods did not run"
    );

    // ECMP: every node announces the Cluster-policy Service.
    let both = vec!["198.18.0.11".to_owned(), "198.18.0.12".to_owned()];
    assert!(
        wait_until(Duration::from_secs(20), || t.next_hops("198.18.0.200")
            == both),
        "{router}: 198.18.0.200 not over both nodes: {:?}\n{}",
        t.next_hops("198.18.0.200"),
        t.bgp_route("198.18.0.200/32")
    );
    // IPv6 over the IPv6 sessions (MP-BGP), ECMP too.
    let both6 = vec!["2001:2::b".to_owned(), "2001:2::c".to_owned()];
    assert!(
        wait_until(Duration::from_secs(20), || t.next_hops("2001:2::c8")
            == both6),
        "{router}: 2001:2::c8 not over both nodes: {:?}",
        t.next_hops("2001:2::c8")
    );
    // Communities of the advertisement, an alias resolved, a large community.
    let view = t.bgp_route("198.18.0.200/32");
    let (standard, alias, large) = if t.frr {
        ("64512:100", "no-advertise", "64512:1:2")
    } else {
        ("(64512,100)", "(65535,65282)", "(64512, 1, 2)")
    };
    for want in [standard, alias, large] {
        assert!(view.contains(want), "{router}: no {want} in:\n{view}");
    }
    // Outside reaches it through the router.
    assert!(
        wait_until(Duration::from_secs(10), || t
            .curl_from_outside("198.18.0.200")
            .contains("Hostname: web-")),
        "{router}: outside does not reach 198.18.0.200"
    );
    assert!(
        wait_until(Duration::from_secs(10), || t
            .curl_from_outside("[2001:2::c8]")
            .contains("Hostname: web-")),
        "{router}: outside does not reach 2001:2::c8"
    );

    // eTP Local: only the node with the endpoint announces.
    let local_node = lab.running_pods("app=local")[0].2.clone();
    let local_ip = if local_node == "node-1" {
        "198.18.0.11"
    } else {
        "198.18.0.12"
    };
    assert!(
        wait_until(Duration::from_secs(20), || t.next_hops("198.18.0.201")
            == [local_ip.to_owned()]),
        "{router}: 198.18.0.201 (eTP Local, endpoint on {local_node}) via {:?}",
        t.next_hops("198.18.0.201")
    );
    // ServiceBGPStatus: one per announcing node.
    let statuses = lab.json(&["get", "servicebgpstatuses", "-A"]);
    let nodes_of = |svc: &str| -> Vec<String> {
        let mut n: Vec<String> = statuses["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["status"]["serviceName"] == svc)
            .map(|s| s["status"]["node"].as_str().unwrap().to_owned())
            .collect();
        n.sort();
        n
    };
    assert_eq!(nodes_of("web"), ["node-1", "node-2"], "{statuses}");
    assert_eq!(nodes_of("local"), [local_node.as_str()], "{statuses}");

    // Withdrawn on delete.
    lab.kubectl(&["delete", "svc", "local"]);
    assert!(
        wait_until(Duration::from_secs(20), || t
            .next_hops("198.18.0.201")
            .is_empty()),
        "{router}: 198.18.0.201 not withdrawn after delete: {:?}",
        t.next_hops("198.18.0.201")
    );

    if bfd {
        let sessions = if t.frr {
            t.router("show bfd peers brief")
        } else {
            t.router("show bfd sessions")
        };
        assert!(
            wait_until(Duration::from_secs(20), || {
                let s = if t.frr {
                    t.router("show bfd peers brief")
                } else {
                    t.router("show bfd sessions")
                };
                s.lines()
                    .filter(|l| {
                        l.contains("198.18.0.1") && (l.contains(" Up ") || l.contains(" up "))
                    })
                    .count()
                    == 2
            }),
            "{router}: BFD sessions with the nodes not up:\n{sessions}"
        );
    }
    // Node death: node-2 cut off the underlay (no FIN, no NOTIFICATION reaches the
    // router): its path goes when BFD notices, or when the hold timer (9 s) expires;
    // outside still gets in.
    let underlay = format!("{}-underlay", lab.name);
    let cut = std::process::Command::new("ip")
        .args(["-n", &underlay, "link", "set", "to-node-2", "down"])
        .status()
        .unwrap();
    assert!(cut.success());
    assert!(
        wait_until(Duration::from_secs(30), || t.next_hops("198.18.0.200")
            == ["198.18.0.11".to_owned()]),
        "{router}: node-2's path stayed after it was cut off: {:?}",
        t.next_hops("198.18.0.200")
    );
    assert!(
        wait_until(Duration::from_secs(10), || t
            .curl_from_outside("198.18.0.200")
            .contains("Hostname: web-")),
        "{router}: outside lost 198.18.0.200 with node-1 still announcing"
    );
    let why = if t.frr {
        t.router("show bgp neighbors 198.18.0.12")
    } else {
        t.router("show protocols all node_2")
    };
    // Each router's own words for the reason.
    let want = match (t.frr, bfd) {
        (true, true) => "Cease/BFD Down",
        (true, false) => "Hold Timer Expired",
        (false, true) => "BFD session down",
        (false, false) => "Hold timer expired",
    };
    assert!(
        wait_until(Duration::from_secs(5), || {
            let why = if t.frr {
                t.router("show bgp neighbors 198.18.0.12")
            } else {
                t.router("show protocols all node_2")
            };
            why.contains(want)
        }),
        "{router}: node-2's session did not end by {want}:\n{why}"
    );
}

/// iBGP (the router in the nodes' AS): LOCAL_PREF from the advertisement reaches the
/// router (it is not sent on eBGP), and ECMP holds.
fn ibgp_local_pref(router: &str) {
    let t = Bgp::up_with(router, "routerAsn: 64512\n");
    let lab = &t.lab;
    assert!(
        wait_until(Duration::from_secs(30), || t.established() == 4),
        "{router}: iBGP sessions not Established"
    );
    lab.apply(POOL);
    lab.apply(
        r#"
apiVersion: metallb.io/v1beta1
kind: BGPAdvertisement
metadata: {name: preferred, namespace: metallb-system}
spec: {localPref: 150}
"#,
    );
    lab.apply(&service("web", 1, false, &["198.18.0.200", "2001:2::c8"]));
    let want = if t.frr {
        "localpref 150"
    } else {
        "BGP.local_pref: 150"
    };
    assert!(
        wait_until(Duration::from_secs(20), || t
            .bgp_route("198.18.0.200/32")
            .contains(want)),
        "{router}: no {want}:\n{}",
        t.bgp_route("198.18.0.200/32")
    );
    assert!(
        wait_until(Duration::from_secs(20), || t
            .next_hops("198.18.0.200")
            .len()
            == 2),
        "{router}: iBGP routes not over both nodes: {:?}",
        t.next_hops("198.18.0.200")
    );
    // Sessions are Events on their BGPPeer; a peer that cannot be used is refused with
    // an Event that names the field.
    lab.apply(
        r#"
apiVersion: metallb.io/v1beta2
kind: BGPPeer
metadata: {name: signed, namespace: metallb-system}
spec: {myASN: 64512, peerASN: 64999, peerAddress: 198.18.0.199, password: secret}
"#,
    );
    let events = || lab.kubectl(&["-n", "metallb-system", "get", "events"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let e = events();
            e.contains("bgppeer/signed") && e.contains("spec.password: TCP MD5")
        }),
        "{router}: no Event refusing the password peer:\n{}",
        events()
    );
    assert!(events().contains("SessionEstablished"), "{}", events());
}

#[test]
fn bird_ibgp_local_pref() {
    ibgp_local_pref("bird");
}

#[test]
fn frr_ibgp_local_pref() {
    ibgp_local_pref("frr");
}

#[test]
fn bird_sessions_routes_ecmp_local_withdraw_and_node_death() {
    announce_withdraw_ecmp_and_node_death("bird", false);
}

#[test]
fn frr_sessions_routes_ecmp_local_withdraw_and_node_death() {
    announce_withdraw_ecmp_and_node_death("frr", false);
}

#[test]
fn bird_with_bfd() {
    announce_withdraw_ecmp_and_node_death("bird", true);
}

#[test]
fn frr_with_bfd() {
    announce_withdraw_ecmp_and_node_death("frr", true);
}

/// `lab down` of a BGP lab with FRR and BFD (the most router processes) leaves the host
/// as it was: no router process, nothing under /var/tmp/frr of its daemons, the host's
/// own networking unchanged.
#[test]
fn a_bgp_lab_goes_down_without_a_trace() {
    e2e::require_root();
    let before = e2e::strip_test_namespaces(&e2e::host_snapshot());
    let t = Bgp::up("frr", true);
    assert!(
        wait_until(Duration::from_secs(30), || t.established() == 4),
        "sessions not Established"
    );
    let dir = t.router_dir();
    let procs =
        std::fs::read_to_string(format!("/run/kubewire/{}/processes.json", t.lab.name)).unwrap();
    let pids: Vec<u64> = serde_json::from_str::<serde_json::Value>(&procs)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"].as_str().unwrap_or("").starts_with("router/"))
        .map(|p| p["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "zebra, bfdd, bgpd: {procs}");
    drop(t);
    for pid in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "router process {pid} still runs"
        );
        for daemon in ["zebra", "bfdd", "bgpd"] {
            let left = format!("/var/tmp/frr/{daemon}.{pid}");
            assert!(!std::path::Path::new(&left).exists(), "{left} left behind");
        }
    }
    assert!(!std::path::Path::new(&dir).exists(), "{dir} left behind");
    let after = e2e::strip_test_namespaces(&e2e::host_snapshot());
    assert_eq!(before, after, "the host changed");
}
