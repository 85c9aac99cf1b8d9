//! Tier 4: Service types beyond ClusterIP in a running lab, reached the way users reach
//! them: the talk's LoadBalancer Service (two ports, fixed node ports) from `outside`,
//! externalIPs, IPv6 ClusterIPs and node ports of a dual-stack Service, and UDP through a
//! ClusterIP. Clients are curl and python3 run inside pods and inside `outside`.
//!
//! The LoadBalancer address comes from the lab's allocation controller (the first of the
//! default pool) and `outside` reaches it on the underlay through the agents' ARP
//! answers, as a user's client would, with no route of its own (tests/e2e/tests/lb_alloc.rs
//! tests the allocation rules, lb_l2.rs the announcement and its failover).

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

/// The talk's LoadBalancer Service, from `examples/`.
const TALK: &[&str] = &["step4-outside-access/service-emissary-ingress.yaml"];

/// Pods the talk's LoadBalancer Service selects, answering HTTP on both its target
/// ports; a dual-stack Service with an external IP in front of them; and a UDP echo
/// Service.
const SERVICES: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: emissary
spec:
  replicas: 2
  selector:
    matchLabels:
      app.kubernetes.io/name: emissary-ingress
  template:
    metadata:
      labels:
        app.kubernetes.io/name: emissary-ingress
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 8080
        - containerPort: 8443
---
apiVersion: v1
kind: Service
metadata:
  name: dual
spec:
  type: NodePort
  ipFamilyPolicy: RequireDualStack
  externalIPs: ["198.51.100.7"]
  selector:
    app.kubernetes.io/name: emissary-ingress
  ports:
  - port: 80
    targetPort: 8080
    nodePort: 31212
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 2
  selector:
    matchLabels:
      app: echo
  template:
    metadata:
      labels:
        app: echo
    spec:
      containers:
      - name: echo
        image: udp-echo
        ports:
        - containerPort: 7
          protocol: UDP
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector:
    app: echo
  ports:
  - port: 5353
    targetPort: 7
    protocol: UDP
"#;

const LB_IP: &str = "198.18.0.200";

/// The pods that answered `url` from `target` over `tries` curls (whoami bodies name
/// the pod).
fn answering(
    lab: &RunningLab,
    target: &str,
    url: &str,
    pods: &[(String, String, String)],
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..40 {
        let out = lab.exec(target, &["curl", "-s", "-g", "--max-time", "5", url]);
        let body = String::from_utf8_lossy(&out.stdout);
        if let Some(p) = pods.iter().find(|p| body.contains(&p.0)) {
            seen.insert(p.0.clone());
        }
        if seen.len() == pods.len() {
            break;
        }
    }
    seen
}

#[test]
fn load_balancer_external_ip_ipv6_and_udp_services_answer() {
    let lab = RunningLab::up(2);
    lab.apply(SERVICES);
    lab.apply(&e2e::examples(TALK));
    assert!(
        wait_until(Duration::from_secs(60), || lab
            .running_pods("app.kubernetes.io/name=emissary-ingress")
            .len()
            == 2
            && lab.running_pods("app=echo").len() == 2),
        "pods did not run: {}",
        lab.kubectl(&["get", "pods", "-o", "wide"])
    );
    let pods = lab.running_pods("app.kubernetes.io/name=emissary-ingress");
    let all: BTreeSet<String> = pods.iter().map(|p| p.0.clone()).collect();
    let want_ips: BTreeSet<String> = pods.iter().map(|p| p.1.clone()).collect();
    assert!(
        wait_until(Duration::from_secs(20), || lab
            .endpoint_ips("emissary-ingress")
            == want_ips),
        "endpoints: {:?}",
        lab.endpoint_ips("emissary-ingress")
    );

    // The LoadBalancer address, as the allocation controller publishes it.
    assert!(
        wait_until(Duration::from_secs(20), || lab
            .kubectl(&["get", "service", "emissary-ingress"])
            .contains(LB_IP)),
        "{}",
        lab.kubectl(&["get", "service", "emissary-ingress"])
    );
    let svc = lab.kubectl(&["get", "service", "emissary-ingress"]);
    assert!(svc.contains("80:31211/TCP,443:31361/TCP"), "{svc}");
    let out = lab.exec(
        "outside",
        &[
            "ip",
            "route",
            "add",
            "198.51.100.7/32",
            "via",
            "198.18.0.12",
        ],
    );
    assert!(out.status.success(), "{out:?}");

    // Both ports of the LoadBalancer address balance over both pods (the pods sit on
    // both nodes, so one of them is reached across the underlay).
    for url in [format!("http://{LB_IP}/"), format!("http://{LB_IP}:443/")] {
        let seen = answering(&lab, "outside", &url, &pods);
        assert_eq!(seen, all, "{url} answered from {seen:?}");
    }
    // Its node ports, on both nodes.
    for node in ["198.18.0.11", "198.18.0.12"] {
        for port in [31211, 31361] {
            let url = format!("http://{node}:{port}/");
            let seen = answering(&lab, "outside", &url, &pods);
            assert!(!seen.is_empty(), "{url} did not answer");
        }
    }

    // The external IP, routed to the other node.
    let seen = answering(&lab, "outside", "http://198.51.100.7/", &pods);
    assert_eq!(seen, all, "the external IP answered from {seen:?}");

    // IPv6: the dual-stack Service's v6 ClusterIP from a pod, and its node port on a
    // node's v6 address from outside.
    let dual = lab.json(&["get", "service", "dual"]);
    let v6 = dual["spec"]["clusterIPs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|ip| ip.as_str())
        .find(|ip| ip.contains(':'))
        .unwrap_or_else(|| panic!("no IPv6 ClusterIP: {dual}"))
        .to_owned();
    let seen = answering(&lab, &pods[0].0, &format!("http://[{v6}]/"), &pods);
    assert_eq!(seen, all, "[{v6}]:80 answered from {seen:?}");
    let node = lab.json(&["get", "node", "node-1"]);
    let node_v6 = node["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["address"].as_str())
        .find(|ip| ip.contains(':'))
        .unwrap_or_else(|| panic!("node-1 has no IPv6 address: {node}"))
        .to_owned();
    let url = format!("http://[{node_v6}]:31212/");
    let seen = answering(&lab, "outside", &url, &pods);
    assert!(!seen.is_empty(), "the v6 node port {url} did not answer");

    // UDP through a ClusterIP: each datagram comes back from an echo pod.
    let echo = lab.json(&["get", "service", "echo"]);
    let ip = echo["spec"]["clusterIP"].as_str().unwrap();
    let probe = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.settimeout(3)\nok = 0\nfor i in range(5):\n    s.sendto(b'ping %d' % i, ('{ip}', 5353))\n\
         \x20   try:\n        ok += s.recvfrom(100)[0] == b'ping %d' % i\n\
         \x20   except OSError:\n        pass\nprint(ok)"
    );
    let out = lab.exec(&pods[0].0, &["python3", "-c", &probe]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5",
        "UDP echoes through {ip}:5353: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
