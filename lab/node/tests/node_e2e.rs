//! End to end: `kubewire node` in a two-node lab runs pods created with kubectl (bound
//! with `nodeName`; no scheduler here), wires them with the agent's CNI config, and
//! reports them; the pods reach each other across nodes. Needs root.

mod common;

use std::time::Duration;

use common::{NodeCluster, condition, curl, pod, read, run_in};
use e2e::wait_until;
use serde_json::{Value, json};

#[test]
fn pods_get_addresses_files_and_reach_each_other() {
    let c = NodeCluster::up();
    c.create(&pod(
        "web-1",
        1,
        json!([{"name": "web", "image": "nginx",
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 80}, "periodSeconds": 1}}]),
    ));
    c.create(&pod(
        "web-2",
        2,
        json!([{"name": "whoami", "image": "traefik/whoami",
        "ports": [{"containerPort": 8080, "hostPort": 8080}]}]),
    ));
    c.kubectl_ok(&[
        "create",
        "configmap",
        "cfg",
        "--from-literal=greeting=hello",
    ]);
    c.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "sec",
        "--from-literal=pass=s3cret",
    ]);
    let mut files = pod(
        "files",
        1,
        json!([{"name": "c", "image": "busybox",
        "command": ["sh", "-c", "cat /etc/resolv.conf /etc/hosts; echo HOSTNAME_FILE=$(cat /etc/hostname); echo UTS=$(hostname); echo MY_IP=$MY_IP; echo NODE=$MY_NODE; echo GREETING=$GREETING SECRET=$SEC_pass; env | grep KUBERNETES_SERVICE; ls /var/run/secrets/kubernetes.io/serviceaccount; echo done; exec sleep 3600"],
        "env": [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}}],
            "envFrom": [{"secretRef": {"name": "sec"}, "prefix": "SEC_"}]}]),
    );
    files["spec"]["hostAliases"] = json!([{"ip": "10.1.2.3", "hostnames": ["foo.example"]}]);
    files["spec"]["dnsConfig"] = json!({"options": [{"name": "edns0"}]});
    c.create(&files);

    c.create(&pod(
        "echo",
        2,
        json!([{"name": "echo", "image": "tcp-echo", "ports": [{"containerPort": 7007}],
        "readinessProbe": {"tcpSocket": {"port": 7007}, "periodSeconds": 1}}]),
    ));
    // A hostPath volume at a mount point the host lacks (under /etc), and `$(VAR)` in
    // the command, expanded by the node before the shell sees it.
    let mut hostnet = pod(
        "hostnet",
        1,
        json!([{"name": "c", "image": "busybox",
        "command": ["sh", "-c", "cat /etc/resolv.conf /etc/hosts; echo $(MY_NODE) > /etc/kwtest/state/written; test -s /etc/passwd && echo etc-intact; echo done; exec sleep 3600"],
        "env": [{"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "volumeMounts": [{"name": "state", "mountPath": "/etc/kwtest/state"}]}]),
    );
    hostnet["spec"]["hostNetwork"] = json!(true);
    hostnet["spec"]["volumes"] = json!([{"name": "state",
        "hostPath": {"path": "/var/lib/kwtest", "type": "DirectoryOrCreate"}}]);
    hostnet["spec"]["hostAliases"] = json!([{"ip": "10.9.9.9", "hostnames": ["alias.example"]}]);
    c.create(&hostnet);
    c.create(&pod(
        "udp",
        2,
        json!([{"name": "u", "image": "udp-echo",
        "ports": [{"containerPort": 5353, "protocol": "UDP"}],
        "startupProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1}}]),
    ));
    c.create(&pod(
        "ticker",
        2,
        json!([{"name": "c", "image": "busybox",
        "command": ["sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"]}]),
    ));
    let web1 = c.wait_ready("web-1");
    let web2 = c.wait_ready("web-2");
    let files = c.wait_ready("files");
    let ip1 = web1["status"]["podIP"].as_str().unwrap().to_owned();
    let ip2 = web2["status"]["podIP"].as_str().unwrap().to_owned();
    assert!(ip1.starts_with("10.244.1."), "{ip1}");
    assert!(ip2.starts_with("10.244.2."), "{ip2}");
    assert_eq!(
        web2["status"]["podIPs"].as_array().unwrap().len(),
        2,
        "dual-stack: {:#}",
        web2["status"]
    );
    let ip2v6 = web2["status"]["podIPs"][1]["ip"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(web1["status"]["hostIP"], "198.18.0.11");
    let cs = &web1["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true);
    assert_eq!(cs["started"], true);
    assert_eq!(cs["restartCount"], 0);
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs:#}");
    for cond in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
        assert!(condition(&web1, cond), "{cond}: {:#}", web1["status"]);
    }

    // Pod to pod across nodes, v4 and v6: the whoami answers with its own identity and
    // sees the client's pod address.
    let ns1 = c.pod_ns(&web1);
    let body = curl(&ns1, &format!("http://{ip2}:8080/"));
    assert!(
        body.contains("Pod: web-2") && body.contains("Node: node-2"),
        "{body}\n{}",
        c.logs()
    );
    assert!(body.contains(&format!("RemoteAddr: {ip1}:")), "{body}");
    let body = curl(&ns1, &format!("http://[{ip2v6}]:8080/"));
    assert!(body.contains("Pod: web-2"), "over IPv6: {body}");
    let body = curl(&c.pod_ns(&web2), &format!("http://{ip1}/"));
    assert!(
        body.contains("Pod: web-1") && body.contains(&format!("PodIP: {ip1}")),
        "{body}"
    );
    let udp = c.wait_ready("udp");
    assert_eq!(udp["status"]["containerStatuses"][0]["started"], true);
    assert_echoes(&ns1, Echo::Udp, &udp, 5353, "hi");
    // hostNetwork: the node's addresses, the node's DNS (ClusterFirst falls back to Default).
    let h = c.wait_ready("hostnet");
    assert_eq!(h["status"]["podIP"], "198.18.0.11");
    assert!(
        !netlink::netns::list()
            .unwrap()
            .iter()
            .any(|n| n.ends_with(&format!(
                "-p{}",
                &h["metadata"]["uid"].as_str().unwrap().replace('-', "")[..8]
            )))
    );
    let mut hlog = String::new();
    assert!(wait_until(Duration::from_secs(10), || {
        hlog = c.kubectl_ok(&["logs", "hostnet"]);
        hlog.contains("done")
    }));
    assert!(!hlog.contains("10.96.0.10"), "{hlog}");
    assert!(
        hlog.contains("10.9.9.9\talias.example\n"),
        "hostAliases on a hostNetwork pod: {hlog}"
    );
    assert!(!read(std::path::Path::new("/etc/hosts")).contains("alias.example"));
    // The volume is node-1's own directory; the host's /etc got nothing and still shows.
    let written = c
        .data_dir(1)
        .parent()
        .unwrap()
        .join("root/var/lib/kwtest/written");
    assert_eq!(read(&written), "node-1\n", "{hlog}");
    assert!(hlog.contains("etc-intact"), "{hlog}");
    assert!(!std::path::Path::new("/etc/kwtest").exists());
    let echo = c.wait_ready("echo");
    assert_echoes(&ns1, Echo::Tcp, &echo, 7007, "ping");
    // hostPort 8080 on node-2's address, reached from a pod on node-1.
    let body = curl(&ns1, "http://198.18.0.12:8080/");
    assert!(body.contains("Pod: web-2"), "hostPort: {body}");

    // The container's view: the pod's own resolv.conf, hosts, hostname, env, token.
    let ipf = files["status"]["podIP"].as_str().unwrap().to_owned();
    let api = c.dir.path().join("api");
    let logs_url = "https://198.18.0.11:10250/containerLogs/default/files/c";
    let kubelet = |url: &str| {
        let out = run_in(
            &c.node_ns(2),
            "curl",
            &[
                "-sk",
                "-m",
                "3",
                "--cert",
                api.join("admin.crt").to_str().unwrap(),
                "--key",
                api.join("admin.key").to_str().unwrap(),
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut log = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            log = kubelet(logs_url);
            log.contains("done")
        }),
        "kubelet API logs: {log:?}\n{}",
        c.logs()
    );
    assert!(log.contains("nameserver 10.96.0.10\n"), "{log}");
    assert!(
        log.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{log}"
    );
    assert!(log.contains("options ndots:5 edns0\n"), "{log}");
    assert!(log.contains(&format!("{ipf}\tfiles\n")), "{log}");
    assert!(log.contains("10.1.2.3\tfoo.example\n"), "{log}");
    assert!(
        log.contains("HOSTNAME_FILE=files\n") && log.contains("UTS=files\n"),
        "{log}"
    );
    assert!(
        log.contains(&format!("MY_IP={ipf}\n")) && log.contains("NODE=node-1\n"),
        "{log}"
    );
    assert!(log.contains("KUBERNETES_SERVICE_HOST=10.96.0.1"), "{log}");
    assert!(log.contains("GREETING=hello SECRET=s3cret\n"), "{log}");
    assert!(log.contains("ca.crt\nnamespace\ntoken\n"), "{log}");
    // The host's own files are untouched.
    assert!(!read(std::path::Path::new("/etc/hosts")).contains("foo.example"));
    // tailLines and timestamps, as kubectl asks for them.
    let tail = kubelet(&format!("{logs_url}?tailLines=1"));
    assert_eq!(tail, "done\n");
    // kubectl logs: the API server proxies pods/log to this API.
    assert_eq!(c.kubectl_ok(&["logs", "files", "--tail=1"]), "done\n");
    let web_log = c.kubectl_ok(&["logs", "web-2"]);
    assert!(
        web_log.contains("GET /"),
        "whoami logs its requests: {web_log:?}"
    );
    let ts = kubelet(&format!("{logs_url}?tailLines=1&timestamps=true"));
    assert!(ts.ends_with("Z done\n") && ts.starts_with("20"), "{ts:?}");
    assert_eq!(kubelet("https://198.18.0.11:10250/healthz"), "ok");
    // Without a client certificate signed by the cluster CA: refused.
    let out = run_in(&c.node_ns(2), "curl", &["-sk", "-m", "3", logs_url]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("nameserver"),
        "served without a client certificate"
    );

    // kubectl logs -f: the last line, then new lines as they are written.
    c.wait_ready("ticker");
    let mut follow = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig())
        .args(["logs", "-f", "--tail=1", "ticker"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ticks: Vec<u64> = (0..4)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(5)).ok())
        .map(|l| {
            l.strip_prefix("tick ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let _ = follow.kill();
    let _ = follow.wait();
    assert_eq!(ticks.len(), 4, "followed lines: {ticks:?}");
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1) && ticks[0] > 0,
        "{ticks:?}"
    );

    // One netns per pod, named after the node's.
    let ours: Vec<String> = netlink::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{}-p", c.node_ns(1))))
        .collect();
    assert_eq!(ours.len(), 2, "{ours:?}");
}

#[derive(Debug, Clone, Copy)]
enum Echo {
    Tcp,
    Udp,
}

/// Sends `msg` from `netns` to the echo server of `pod` on `port` and asserts that it
/// comes back.
fn assert_echoes(netns: &str, proto: Echo, pod: &Value, port: u16, msg: &str) {
    let send = match proto {
        Echo::Tcp => "s=socket.create_connection((ip, port), timeout=3); s.sendall(msg)",
        Echo::Udp => {
            "s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); s.sendto(msg, (ip, port))"
        }
    };
    let script = format!(
        "import socket,sys; ip, port, msg = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(); {send}; print(s.recv(16).decode())"
    );
    let ip = pod["status"]["podIP"].as_str().unwrap();
    let out = run_in(
        netns,
        "python3",
        &["-c", &script, ip, &port.to_string(), msg],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{msg}\n"),
        "{proto:?} echo: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
