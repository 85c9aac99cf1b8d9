//! End to end with real clients, all inside one test network namespace: the embedded
//! API server (`kubewire apiserver`), objects made with kubectl (the talk's headless
//! service with hostnames; EndpointSlices by hand), `kubewire dns` with a fake upstream
//! (python3), and `dig` and glibc's resolver (`getent`, with a resolv.conf bind-mounted
//! in a private mount namespace) asking every record kind. Needs root.

#![allow(clippy::disallowed_methods)] // runs real clients and reads their output

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::{KillOnDrop, TestNetns, kubewire_bin, spawn_in, wait_until};
use serde_json::{Value, json};

/// A fake upstream: `*.example.org` A → 192.0.2.80, other example.org types NODATA,
/// anything else NXDOMAIN. Logs each question as `name type` to argv[2].
const UPSTREAM: &str = r#"
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
while True:
    data, peer = s.recvfrom(4096)
    try:
        qid = struct.unpack('>H', data[:2])[0]
        i, labels = 12, []
        while data[i]:
            labels.append(data[i+1:i+1+data[i]].decode().lower())
            i += 1 + data[i]
        qtype = struct.unpack('>H', data[i+1:i+3])[0]
        q = data[12:i+5]
    except Exception:
        continue
    name = '.'.join(labels)
    with open(sys.argv[2], 'a') as f:
        f.write(f'{name} {qtype}\n')
    if name.endswith('example.org') and qtype == 1:
        ans = b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + bytes([192, 0, 2, 80])
        resp = struct.pack('>HHHHHH', qid, 0x8180, 1, 1, 0, 0) + q + ans
    elif name.endswith('example.org') or name == '':
        resp = struct.pack('>HHHHHH', qid, 0x8180, 1, 0, 0, 0) + q
    else:
        resp = struct.pack('>HHHHHH', qid, 0x8183, 1, 0, 0, 0) + q
    s.sendto(resp, peer)
"#;

struct Env {
    // Dropped in order: dns, upstream, API server, then the namespace.
    dns: KillOnDrop,
    _upstream: KillOnDrop,
    _apiserver: KillOnDrop,
    netns: TestNetns,
    dir: tempfile::TempDir,
}

impl Env {
    fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("api/admin.kubeconfig")
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let kc = self.kubeconfig();
        let mut all = vec!["--kubeconfig", kc.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = self.netns.run("kubectl", &all);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn apply(&self, objects: &[Value]) {
        let file = self.dir.path().join("objects.json");
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        std::fs::write(&file, list.to_string()).unwrap();
        self.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    }

    /// `dig @127.0.0.1 ARGS +short`, lines sorted.
    fn dig_short(&self, args: &[&str]) -> Vec<String> {
        let mut lines: Vec<String> = self
            .dig(&[args, &["+short"]].concat())
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        lines
    }

    /// `dig @127.0.0.1 ARGS` (another `@server` in ARGS replaces it), the whole output.
    fn dig(&self, args: &[&str]) -> String {
        let mut all = vec!["+time=2", "+tries=2"];
        if !args.iter().any(|a| a.starts_with('@')) {
            all.push("@127.0.0.1");
        }
        all.extend_from_slice(args);
        let out = self.netns.run("dig", &all);
        assert!(
            out.status.success(),
            "dig {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `getent ahosts NAME` through glibc with `resolv` as /etc/resolv.conf.
    fn getent(&self, resolv: &str, name: &str) -> (bool, String) {
        let file = self.dir.path().join("resolv.conf");
        std::fs::write(&file, resolv).unwrap();
        let script = format!(
            "mount --bind {} /etc/resolv.conf && exec getent ahosts {name}",
            file.display()
        );
        // A private mount namespace: the bind mount is seen by getent only.
        let out = self.netns.run(
            "unshare",
            &["-m", "--propagation", "private", "sh", "-c", &script],
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn upstream_log(&self) -> String {
        self.log("upstream.queries")
    }
}

fn metadata(ns: &str, name: &str) -> Value {
    json!({"namespace": ns, "name": name})
}

fn slice(ns: &str, name: &str, service: &str, endpoints: Value, ports: Value) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports
    })
}

fn start() -> Env {
    let netns = TestNetns::new("dns");
    let dir = tempfile::tempdir().unwrap();
    let bin = kubewire_bin();
    let data = dir.path().join("api");
    let api = apiserver::Args {
        data_dir: data.clone(),
        listen: vec!["127.0.0.1:6443".parse().unwrap()],
        ..k8s::parse_flags::<apiserver::Args>(&["--data-dir", "-"])
    };
    let argv: Vec<std::ffi::OsString> = std::iter::once("apiserver".into())
        .chain(api.to_args())
        .collect();
    let apiserver = spawn_in(netns.name(), &bin, &argv, &dir.path().join("apiserver.log"));
    let kubeconfig = data.join("admin.kubeconfig");
    assert!(
        wait_until(Duration::from_secs(30), || kubeconfig.exists()),
        "the API server did not start:\n{}",
        std::fs::read_to_string(dir.path().join("apiserver.log")).unwrap_or_default()
    );
    let script = dir.path().join("upstream.py");
    std::fs::write(&script, UPSTREAM).unwrap();
    let qlog = dir.path().join("upstream.queries");
    let upstream = spawn_in(
        netns.name(),
        Path::new("/usr/bin/python3"),
        &[
            script.to_str().unwrap(),
            "127.0.0.53",
            qlog.to_str().unwrap(),
        ],
        &dir.path().join("upstream.log"),
    );
    let dns_args = dns::Args {
        listen: vec!["127.0.0.1:53".into(), "[::1]:53".into()],
        upstream: vec!["127.0.0.53".into()],
        health_listen: "127.0.0.1:8080".into(),
        metrics_listen: "127.0.0.1:9153".into(),
        // No --kubeconfig: the cluster from $KUBECONFIG, as kubectl finds it.
        ..k8s::parse_flags(&[])
    };
    let mut kc = std::ffi::OsString::from("KUBECONFIG=");
    kc.push(&kubeconfig);
    let argv: Vec<std::ffi::OsString> = [kc, bin.clone().into(), "dns".into()]
        .into_iter()
        .chain(dns_args.to_args())
        .collect();
    let dns = spawn_in(
        netns.name(),
        Path::new("/usr/bin/env"),
        &argv,
        &dir.path().join("dns.log"),
    );
    Env {
        dns,
        _upstream: upstream,
        _apiserver: apiserver,
        netns,
        dir,
    }
}

#[test]
fn dig_and_glibc_resolve_every_record_kind() {
    let mut env = start();
    env.kubectl(&["create", "namespace", "datans"]);
    env.apply(&[
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata("default", "web"),
               "spec": {"ipFamilyPolicy": "PreferDualStack", "selector": {"app": "web"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
        // The talk's headless service.
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata("default", "headlesswebsite"),
               "spec": {"clusterIP": "None", "selector": {"app": "website"},
                        "ports": [{"name": "http", "port": 80}]}}),
        slice("default", "headlesswebsite-abc", "headlesswebsite", json!([
            {"addresses": ["10.244.1.5"], "hostname": "website-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.6"], "hostname": "website-1", "conditions": {"ready": true}}
        ]), json!([{"name": "http", "port": 80, "protocol": "TCP"}])),
        // The StatefulSet example: redis-N.redis.datans.
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata("datans", "redis"),
               "spec": {"clusterIP": "None", "ports": [{"name": "redis", "port": 6379}]}}),
        slice("datans", "redis-1", "redis", json!([
            {"addresses": ["10.244.1.10"], "hostname": "redis-0", "conditions": {"ready": true}},
            {"addresses": ["10.244.2.11"], "hostname": "redis-1", "conditions": {"ready": true}},
            {"addresses": ["10.244.1.12"], "hostname": "redis-2", "conditions": {"ready": false}}
        ]), json!([{"name": "redis", "port": 6379, "protocol": "TCP"}])),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": metadata("default", "search"),
               "spec": {"type": "ExternalName", "externalName": "www.example.org"}}),
    ]);
    let ips = env.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIPs[*]}"]);
    let ips: Vec<&str> = ips.split_whitespace().collect();
    let (v4, v6) = (ips[0], ips.get(1).copied());

    // Synced: /ready turns 200 and the service answers.
    assert!(
        wait_until(Duration::from_secs(30), || {
            env.netns
                .run("curl", &["-sf", "http://127.0.0.1:8080/ready"])
                .status
                .success()
                && env.dig_short(&["web.default.svc.cluster.local", "A"]) == [v4]
        }),
        "kubewire dns did not answer:\n{}",
        env.log("dns.log")
    );

    // dns-version, case-insensitively.
    assert_eq!(
        env.dig_short(&["DNS-VERSION.Cluster.Local", "TXT"]),
        ["\"1.1.0\""]
    );
    // ClusterIP A/AAAA, over UDP and TCP.
    assert_eq!(
        env.dig_short(&["+tcp", "WEB.default.svc.cluster.local", "A"]),
        [v4]
    );
    if let Some(v6) = v6 {
        assert_eq!(
            env.dig_short(&["web.default.svc.cluster.local", "AAAA"]),
            [v6]
        );
        // PTR for the IPv6 ClusterIP (nibble form).
        assert_eq!(
            env.dig_short(&["-x", v6]),
            ["web.default.svc.cluster.local."]
        );
    }
    // SRV for the named port, PTR for the ClusterIP.
    assert_eq!(
        env.dig_short(&["_http._tcp.web.default.svc.cluster.local", "SRV"]),
        ["0 100 80 web.default.svc.cluster.local."]
    );
    assert_eq!(
        env.dig_short(&["-x", v4]),
        ["web.default.svc.cluster.local."]
    );
    // Headless: every ready endpoint, names per endpoint, SRV per endpoint, PTR.
    assert_eq!(
        env.dig_short(&["headlesswebsite.default.svc.cluster.local", "A"]),
        ["10.244.1.5", "10.244.2.6"]
    );
    assert_eq!(
        env.dig_short(&["redis.datans.svc.cluster.local", "A"]),
        ["10.244.1.10", "10.244.2.11"]
    );
    assert_eq!(
        env.dig_short(&["redis-0.redis.datans.svc.cluster.local"]),
        ["10.244.1.10"]
    );
    assert_eq!(
        env.dig_short(&["_redis._tcp.redis.datans.svc.cluster.local", "SRV"]),
        [
            "0 50 6379 redis-0.redis.datans.svc.cluster.local.",
            "0 50 6379 redis-1.redis.datans.svc.cluster.local."
        ]
    );
    assert_eq!(
        env.dig_short(&["-x", "10.244.2.11"]),
        ["redis-1.redis.datans.svc.cluster.local."]
    );
    // Not ready: NXDOMAIN, with the SOA in authority.
    let out = env.dig(&["redis-2.redis.datans.svc.cluster.local"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    assert!(
        out.contains("SOA\tns.dns.cluster.local. hostmaster.cluster.local."),
        "{out}"
    );
    // NODATA: the name exists, not the type.
    let out = env.dig(&["redis-0.redis.datans.svc.cluster.local", "MX"]);
    assert!(
        out.contains("status: NOERROR") && out.contains("ANSWER: 0"),
        "{out}"
    );
    assert!(out.contains("ns.dns.cluster.local."), "{out}");
    // ExternalName: the CNAME and the target's address from upstream.
    assert_eq!(
        env.dig_short(&["search.default.svc.cluster.local", "A"]),
        ["192.0.2.80", "www.example.org."]
    );
    // Pod records (insecure mode, kubeadm's default).
    assert_eq!(
        env.dig_short(&["10-244-1-5.default.pod.cluster.local"]),
        ["10.244.1.5"]
    );
    // Forwarding, and the cache: the upstream sees the name once.
    assert_eq!(env.dig_short(&["api.example.org"]), ["192.0.2.80"]);
    assert_eq!(env.dig_short(&["api.example.org"]), ["192.0.2.80"]);
    assert_eq!(
        env.upstream_log()
            .lines()
            .filter(|l| *l == "api.example.org 1")
            .count(),
        1,
        "{}",
        env.upstream_log()
    );
    let out = env.dig(&["nothing.invalid"]);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    // Over IPv6 too.
    assert_eq!(
        env.dig_short(&["@::1", "redis-1.redis.datans.svc.cluster.local"]),
        ["10.244.2.11"]
    );

    // glibc: short names through the search path, as a pod's resolv.conf has them.
    let pod_resolv = "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n";
    let (ok, out) = env.getent(pod_resolv, "headlesswebsite");
    assert!(
        ok && out.contains("10.244.1.5") && out.contains("10.244.2.6"),
        "{out}"
    );
    let (ok, out) = env.getent(pod_resolv, "redis-0.redis.datans");
    assert!(ok && out.contains("10.244.1.10"), "{out}");
    let (ok, out) = env.getent(pod_resolv, "web");
    assert!(ok && out.contains(v4), "{out}");
    let (ok, out) = env.getent(pod_resolv, "www.example.org");
    assert!(ok && out.contains("192.0.2.80"), "{out}");
    // ndots: with ndots:5, `web.default` (one dot) goes through the search list first and
    // never reaches the upstream as is; with ndots:1 it is tried as an absolute name
    // first, which is forwarded (the upstream says NXDOMAIN), then through the search list.
    assert!(
        !env.upstream_log().contains("web.default 1"),
        "{}",
        env.upstream_log()
    );
    let ndots1 = "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:1\n";
    let (ok, out) = env.getent(ndots1, "web.default");
    assert!(ok && out.contains(v4), "{out}");
    assert!(
        env.upstream_log().contains("web.default 1"),
        "{}",
        env.upstream_log()
    );
    // The talk's dns-example pod: dnsPolicy None, its own search list, ndots:2.
    let example = "nameserver 127.0.0.1\nsearch datans.svc.cluster.local my.dns.search.suffix\noptions ndots:2 edns0\n";
    let (ok, out) = env.getent(example, "redis-1.redis");
    assert!(ok && out.contains("10.244.2.11"), "{out}");

    // A new service answers once created, and is gone once deleted.
    env.kubectl(&["create", "service", "clusterip", "late", "--tcp=80:80"]);
    let late = env.kubectl(&["get", "svc", "late", "-o", "jsonpath={.spec.clusterIP}"]);
    assert!(
        wait_until(Duration::from_secs(10), || env
            .dig_short(&["late.default.svc.cluster.local"])
            == [late.clone()]),
        "late did not appear"
    );
    env.kubectl(&["delete", "service", "late"]);
    assert!(
        wait_until(Duration::from_secs(10), || env
            .dig(&["late.default.svc.cluster.local"])
            .contains("status: NXDOMAIN")),
        "late did not go"
    );

    // Metrics under CoreDNS's names.
    let out = env
        .netns
        .run("curl", &["-sf", "http://127.0.0.1:9153/metrics"]);
    let metrics = String::from_utf8_lossy(&out.stdout);
    for name in [
        "coredns_dns_requests_total{",
        "coredns_dns_responses_total{",
        "coredns_dns_request_duration_seconds_bucket{",
        "coredns_forward_requests_total{",
        "coredns_cache_hits_total{",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
    // SIGTERM, what kubelet stops a container with: a clean exit.
    let pid = env.dns.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            status = env.dns.0.try_wait().unwrap();
            status.is_some()
        }),
        "kubewire dns did not stop on SIGTERM"
    );
    assert!(
        status.unwrap().success(),
        "{status:?}\n{}",
        env.log("dns.log")
    );
}
