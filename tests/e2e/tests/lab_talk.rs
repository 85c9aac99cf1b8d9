//! Tier 4: the talk's manifests and lab steps 3 and 4 in a running lab, with clients
//! nobody here wrote: dig and glibc's resolver (getent) inside pods, curl from the
//! outside world. (Steps 1 and 2 are in lab_cluster.rs.)

use std::collections::BTreeSet;
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

/// The talk's manifests of lab steps 3 and 4 that kubewire serves, from `examples/`:
/// the headless Service, the Pod with dnsConfig, the Pod with hostPort, the NodePort
/// Service. The talk's Ingress is applied on its own (stored as written; gateway_talk.rs
/// routes through it).
const TALK: &[&str] = &[
    "step3-dns/service-headlesswebsite.yaml",
    "step3-dns/pod-dns-example.yaml",
    "step4-outside-access/pod-hostportpod.yaml",
    "step4-outside-access/service-website.yaml",
];

/// What the talk's manifests select and what the test reaches them from: a `website`
/// Deployment, a `redis` StatefulSet behind a headless Service in `datans` (the talk's
/// example of names by ordinal), and a client pod.
const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: website
spec:
  replicas: 2
  selector:
    matchLabels: {app: website}
  template:
    metadata:
      labels: {app: website}
    spec:
      containers:
      - name: nginx
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
  - name: sh
    image: busybox
---
apiVersion: v1
kind: Namespace
metadata:
  name: datans
---
apiVersion: v1
kind: Service
metadata:
  name: redis
  namespace: datans
spec:
  clusterIP: None
  selector: {app: redis}
  ports:
  - port: 6379
    name: redis
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: redis
  namespace: datans
spec:
  serviceName: redis
  replicas: 3
  selector:
    matchLabels: {app: redis}
  template:
    metadata:
      labels: {app: redis}
    spec:
      containers:
      - name: redis
        image: redis
        ports:
        - containerPort: 6379
"#;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn talk_lab_steps_three_and_four() {
    // Pods get service-account files at /var/run/secrets/...: on their own /run, never
    // as directories left on the host's.
    let host_secrets = std::path::Path::new("/run/secrets/kubernetes.io").exists();
    let lab = RunningLab::up(2);
    lab.apply(WORKLOADS);
    lab.apply(&e2e::examples(TALK));
    let running = |sel: &str, n: usize| {
        wait_until(Duration::from_secs(90), || lab.running_pods(sel).len() >= n)
    };
    assert!(
        running("app=website", 2),
        "{}",
        lab.kubectl(&["get", "pods", "-A", "-o", "wide"])
    );
    let all_running = wait_until(Duration::from_secs(90), || {
        let pods = lab.json(&["get", "pods", "-A"]);
        let items = pods["items"].as_array().unwrap();
        items.len() >= 2 + 3 + 3 + 2 && items.iter().all(|p| p["status"]["phase"] == "Running")
    });
    assert!(
        all_running,
        "{}",
        lab.kubectl(&["get", "pods", "-A", "-o", "wide"])
    );

    let token = lab.exec(
        "client",
        &[
            "cat",
            "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
        ],
    );
    assert_eq!(stdout(&token), "default");
    assert_eq!(
        std::path::Path::new("/run/secrets/kubernetes.io").exists(),
        host_secrets
    );

    // The DNS add-on looks like the talk's slide.
    let system = lab.kubectl(&["get", "all", "-n", "kube-system"]);
    let svc = system
        .lines()
        .find(|l| l.starts_with("service/kube-dns"))
        .unwrap_or_default();
    for want in ["ClusterIP", "10.96.0.10", "53/UDP,53/TCP,9153/TCP"] {
        assert!(svc.contains(want), "{system}");
    }

    // Step 3: a headless Service resolves to its pods; StatefulSet pods by ordinal.
    let website: BTreeSet<String> = lab
        .running_pods("app=website")
        .into_iter()
        .map(|p| p.1)
        .collect();
    let dig = |name: &str| {
        let out = lab.exec("client", &["dig", "+short", "+time=2", "+tries=2", name]);
        lines(&stdout(&out))
    };
    assert!(
        wait_until(Duration::from_secs(20), || dig(
            "headlesswebsite.default.svc.cluster.local"
        ) == website),
        "headlesswebsite: {:?} != {website:?}",
        dig("headlesswebsite.default.svc.cluster.local")
    );
    let redis = lab.json(&["get", "pods", "-n", "datans"]);
    for p in redis["items"].as_array().unwrap() {
        let (name, ip) = (
            p["metadata"]["name"].as_str().unwrap(),
            p["status"]["podIP"].as_str().unwrap(),
        );
        let fqdn = format!("{name}.redis.datans.svc.cluster.local");
        assert_eq!(dig(&fqdn), BTreeSet::from([ip.to_owned()]), "{fqdn}");
    }
    // glibc's resolver through the pod's search path: a short name and a partial one.
    let cluster_ip = lab.json(&["get", "svc", "website"])["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let getent = stdout(&lab.exec("client", &["getent", "hosts", "website"]));
    assert!(
        getent.starts_with(&format!("{cluster_ip} ")),
        "getent hosts website: {getent:?}"
    );
    assert!(
        getent.contains("website.default.svc.cluster.local"),
        "{getent}"
    );
    let redis0 = redis["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_owned();
    let getent = stdout(&lab.exec("client", &["getent", "hosts", "redis-0.redis.datans"]));
    assert!(
        getent.starts_with(&format!("{redis0} ")),
        "getent hosts redis-0.redis.datans: {getent:?}"
    );

    // The pod with dnsPolicy None gets exactly its dnsConfig.
    let resolv = stdout(&lab.exec("dns-example", &["cat", "/etc/resolv.conf"]));
    for want in [
        "nameserver 1.2.3.4",
        "search ns1.svc.cluster-domain.example my.dns.search.suffix",
        "ndots:2",
        "edns0",
    ] {
        assert!(resolv.contains(want), "{resolv}");
    }
    assert!(!resolv.contains("10.96.0.10"), "{resolv}");

    // Step 4: NodePort 31100 on every node, from outside the cluster.
    for node_ip in ["198.18.0.11", "198.18.0.12"] {
        let out = lab.exec(
            "outside",
            &[
                "curl",
                "-s",
                "--max-time",
                "5",
                &format!("http://{node_ip}:31100/"),
            ],
        );
        let body = stdout(&out);
        assert!(body.contains("website-"), "NodePort on {node_ip}: {body:?}");
    }
    // The hostPort answers on the node the pod runs on.
    let hp = lab.json(&["get", "pod", "hostportpod"]);
    let host_ip = hp["status"]["hostIP"].as_str().unwrap().to_owned();
    let out = lab.exec(
        "outside",
        &[
            "curl",
            "-s",
            "--max-time",
            "5",
            &format!("http://{host_ip}:8080/"),
        ],
    );
    assert!(
        stdout(&out).contains("hostportpod"),
        "hostPort on {host_ip}: {:?}",
        stdout(&out)
    );

    // The talk's Ingress is accepted and stored as kube-apiserver would (the gateway
    // serving it is gateway_talk.rs).
    lab.apply(&e2e::examples(&[
        "step4-outside-access/ingress-web-ingress.yaml",
    ]));
    let ingress = lab.json(&["get", "ingress", "web-ingress"]);
    assert_eq!(
        ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "engine",
        "{ingress}"
    );
}
