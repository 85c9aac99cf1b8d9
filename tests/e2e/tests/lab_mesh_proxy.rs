//! Tier 4: the mesh's proxy in a running lab (`mesh: true`). The namespace `demo` is
//! annotated `kubewire.io/inject: enabled`; the injector (the install's webhook) gives
//! a server pod on node-1 and a client pod on node-2 `kubewire mesh proxy` as a native
//! sidecar, running as user 2102 with a projected token for the issuer; the CNI plugin
//! captures their TCP. Shown here:
//! - the injection, and a pod annotated `disabled` left alone;
//! - the app starts once its proxy has its certificate (the sidecar's startup probe),
//!   and a meshed pod that runs to completion completes (its proxy stopped after it);
//! - the capture table in the pod's namespace, as the distribution's `nft` lists it;
//! - the meshed client reaches the Service, and what crosses the nodes is TLS 1.3 to
//!   the server's proxy (sniffed in node-2's namespace: a ClientHello to port 4143, and
//!   the answer's text never in clear), with the SPIFFE identities in the metrics;
//! - a client outside the mesh still reaches the meshed server, in plaintext;
//! - a server that speaks first (a banner) is not stalled by the proxies;
//! - HTTP/1.1 and HTTP/2 at L7: per-request balancing, the proxy's own 503, the HTTP
//!   metrics read with the Prometheus client's parser.

#![allow(clippy::disallowed_methods)] // runs kubectl

use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

const WAIT: Duration = Duration::from_secs(120);

/// An HTTP server whose answers carry a marker to look for on the wire, and a banner
/// server on 2525 (it speaks first).
const SERVER_APP: &str = r#"
import http.server, socket, threading
def banner():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", 2525))
    s.listen()
    while True:
        c, _ = s.accept()
        c.sendall(b"220 kubewire banner\r\n")
        c.close()
threading.Thread(target=banner, daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("MESH-SECRET-ANSWER from %s\n" % self.client_address[0]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6  # both families: "::" takes IPv4 too
Server(("::", 8080), H).serve_forever()
"#;

fn pod(name: &str, node: &str, annotations: &str, restart: &str, command: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: demo
  labels: {{app: {name}}}
  annotations: {{{annotations}}}
spec:
  serviceAccountName: web
  nodeName: {node}
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: python
    command: [python3, -c, {command}]
"#,
        command = serde_json::to_string(command).unwrap(),
    )
}

/// What an app container first does in a meshed pod: say whether its proxy is ready.
const CLIENT_APP: &str = r#"
import sys, time, urllib.request
try:
    print(urllib.request.urlopen("http://127.0.0.1:4191/ready", timeout=5).read().decode().strip(), flush=True)
except Exception as e:
    print("proxy not ready:", e, flush=True)
time.sleep(100000)
"#;

/// Fetches `url` from inside a pod; the answer, or the error.
const FETCH: &str = r#"
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end="")
"#;

/// Reads a server-speaks-first banner from inside a pod.
const BANNER: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
print(c.recv(100).decode(), end="")
"#;

/// Sniffs TCP in node-2's namespace for a few seconds (an AF_PACKET socket sees every
/// interface there) and prints, for the packets to or from port 4143, the first payload
/// byte of each direction's first data, and whether the marker appeared anywhere.
const SNIFF: &str = r#"
import socket, struct, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(3))
s.settimeout(0.5)
print("sniffing", flush=True)
end = time.time() + float(sys.argv[1])
first, marker_4143, marker_any = {}, False, False
while time.time() < end:
    try:
        frame, addr = s.recvfrom(65535)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING:
        continue
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 6:
        continue
    tcp = ip[ihl:]
    sport, dport = struct.unpack("!HH", tcp[:4])
    payload = tcp[(tcp[12] >> 4) * 4:]
    if b"MESH-SECRET-ANSWER" in payload:
        marker_any = True
        if 4143 in (sport, dport):
            marker_4143 = True
    if payload and 4143 in (sport, dport):
        way = "to-4143" if dport == 4143 else "from-4143"
        first.setdefault(way, payload[:3].hex())
print("first", sorted(first.items()), "marker-on-4143", marker_4143, "marker-anywhere", marker_any, flush=True)
"#;

/// Waits for the issuer and the injector, and for the injector's certificate in its
/// webhook's configuration: pods created before that are admitted unmeshed.
fn mesh_ready(lab: &RunningLab) {
    for d in ["kubewire-identity", "kubewire-injector"] {
        lab.rollout("kube-system", d);
    }
    assert!(
        wait_until(WAIT, || !lab
            .kubectl(&[
                "get",
                "mutatingwebhookconfiguration",
                "kubewire-injector",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])
            .is_empty()),
        "the injector never wrote its caBundle: {}",
        lab.kubectl(&["-n", "kube-system", "logs", "deployment/kubewire-injector"])
    );
    // And until the API server reaches the injector through its Service, pods are
    // admitted unmeshed (the failure policy is Ignore): a server-side dry run (which
    // calls the webhook) shows when it does.
    let mut got = String::new();
    assert!(
        wait_until(WAIT, || {
            got = lab.kubectl(&[
                "run",
                "injection-probe",
                "--image=python",
                "--restart=Never",
                "--dry-run=server",
                "--annotations=kubewire.io/inject=enabled",
                "-o",
                "jsonpath={.spec.initContainers[0].name}",
            ]);
            got == "kubewire-proxy"
        }),
        "a dry-run pod was never injected: {got:?}"
    );
}

fn wait_ready(lab: &RunningLab, pod: &str) {
    let mut status = String::new();
    assert!(
        wait_until(WAIT, || {
            status = lab.kubectl(&[
                "-n",
                "demo",
                "get",
                "pod",
                pod,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
            ]);
            status == "True"
        }),
        "pod {pod} never became ready: {}\nthe proxy's log:\n{}",
        lab.kubectl(&["-n", "demo", "describe", "pod", pod]),
        lab.kubectl(&[
            "-n",
            "demo",
            "logs",
            pod,
            "-c",
            "kubewire-proxy",
            "--previous"
        ]),
    );
}

fn exec_python(lab: &RunningLab, pod: &str, script: &str, args: &[&str]) -> String {
    let mut argv = vec![
        "-n", "demo", "exec", pod, "-c", "app", "--", "python3", "-c", script,
    ];
    argv.extend_from_slice(args);
    lab.kubectl(&argv)
}

/// The namespace `demo`, annotated for the mesh, and its ServiceAccount `web`.
const MESHED_NAMESPACE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, annotations: {kubewire.io/inject: enabled}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: demo}
"#;

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// In the meshed namespace: the server pod on node-1 behind the Service `web` (80 and
/// the banner's 2525), a meshed client and an unmeshed outsider on node-2, all ready.
fn server_client_and_outsider(lab: &RunningLab) {
    lab.apply(MESHED_NAMESPACE);
    lab.apply(&pod("server", "node-1", "", "Always", SERVER_APP));
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    lab.apply(&pod(
        "outsider",
        "node-2",
        "kubewire.io/inject: disabled",
        "Always",
        CLIENT_APP,
    ));
    lab.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: server}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: banner, port: 2525, targetPort: 2525}
"#,
    );
    for p in ["server", "client", "outsider"] {
        wait_ready(lab, p);
    }
}

#[test]
fn meshed_pods_talk_mutual_tls_across_nodes_and_others_still_reach_them() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    server_client_and_outsider(&lab);
    // Injected: the proxy first among the init containers, as a native sidecar.
    for (p, meshed) in [("server", true), ("client", true), ("outsider", false)] {
        let got = lab.json(&["-n", "demo", "get", "pod", p]);
        let first = &got["spec"]["initContainers"][0];
        assert_eq!(first["name"] == "kubewire-proxy", meshed, "{p}: {first}");
        if meshed {
            assert_eq!(first["restartPolicy"], "Always");
            assert_eq!(first["securityContext"]["runAsUser"], 2102);
            assert_eq!(
                got["metadata"]["annotations"]["kubewire.io/proxy-injected"],
                "true"
            );
        }
    }

    // The app started after its proxy had a certificate for the pod's ServiceAccount.
    let logs = lab.kubectl(&["-n", "demo", "logs", "client", "-c", "app"]);
    assert!(
        logs.starts_with("ready spiffe://cluster.local/ns/demo/sa/web"),
        "{logs}"
    );

    // The capture table, listed by nft inside the client pod's namespace.
    let listing = lab.exec(
        "demo/client/app",
        &["nft", "list", "table", "inet", "kubewire-mesh"],
    );
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&listing.stderr)
    );
    for line in [
        "meta skuid 2102 return",
        "redirect to :4140",
        "redirect to :4143",
        "4191",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let outsider = lab.exec("demo/outsider/app", &["nft", "list", "ruleset"]);
    assert!(
        !String::from_utf8_lossy(&outsider.stdout).contains("kubewire-mesh"),
        "a pod outside the mesh is not captured"
    );

    // The meshed client, with a sniffer in node-2's namespace watching the wire.
    let name = lab.name.clone();
    let sniffer = std::thread::spawn(move || {
        e2e::kubewire(&[
            "lab", "exec", "--name", &name, "node-2", "--", "python3", "-c", SNIFF, "8",
        ])
    });
    std::thread::sleep(Duration::from_secs(2));
    let url = "http://web.demo.svc.cluster.local/";
    for _ in 0..3 {
        let answer = exec_python(&lab, "client", FETCH, &[url]);
        assert!(answer.starts_with("MESH-SECRET-ANSWER from "), "{answer}");
    }
    let sniffed = sniffer.join().unwrap();
    let sniffed = String::from_utf8_lossy(&sniffed.stdout).to_string();
    // A TLS handshake record (0x16 0x03) first each way, and the answer's text never
    // in clear between the nodes.
    assert!(sniffed.contains("('to-4143', '1603"), "{sniffed}");
    assert!(sniffed.contains("('from-4143', '1603"), "{sniffed}");
    assert!(sniffed.contains("marker-on-4143 False"), "{sniffed}");
    assert!(sniffed.contains("marker-anywhere False"), "{sniffed}");

    // Over IPv6 too: the pod's IPv6 address, straight (no Service).
    let server_v6 = lab.kubectl(&[
        "-n",
        "demo",
        "get",
        "pod",
        "server",
        "-o",
        "jsonpath={.status.podIPs[1].ip}",
    ]);
    assert!(server_v6.contains(':'), "{server_v6}");
    let answer = exec_python(
        &lab,
        "client",
        FETCH,
        &[&format!("http://[{server_v6}]:8080/")],
    );
    assert!(answer.starts_with("MESH-SECRET-ANSWER from "), "{answer}");

    // Both proxies counted mutual TLS.
    let client_metrics = exec_python(&lab, "client", FETCH, &["http://127.0.0.1:4191/metrics"]);
    assert!(
        metric(
            &client_metrics,
            r#"tcp_open_total{direction="outbound",peer="dst",tls="true"}"#
        ) >= 4,
        "{client_metrics}"
    );
    let server_ip = lab.kubectl(&[
        "-n",
        "demo",
        "get",
        "pod",
        "server",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let server_metrics = || {
        exec_python(
            &lab,
            "client",
            FETCH,
            &[&format!("http://{server_ip}:4191/metrics")],
        )
    };
    let text = server_metrics();
    assert!(
        metric(
            &text,
            r#"tcp_open_total{direction="inbound",peer="src",tls="true"}"#
        ) >= 3,
        "{text}"
    );

    // A client outside the mesh reaches the meshed server in plaintext, through its
    // inbound capture.
    let answer = exec_python(&lab, "outsider", FETCH, &[url]);
    assert!(answer.starts_with("MESH-SECRET-ANSWER from "), "{answer}");
    let text = server_metrics();
    assert!(
        metric(
            &text,
            r#"tcp_open_total{direction="inbound",peer="src",tls="no_identity"}"#
        ) >= 1,
        "{text}"
    );
    // Its HTTP was served at L7 on the server's side too, counted as plaintext.
    assert!(
        metric(
            &text,
            r#"request_total{direction="inbound",authority="web.demo.svc.cluster.local",tls="no_identity"}"#
        ) >= 1,
        "{text}"
    );

    // A server that speaks first: its banner arrives through both proxies.
    for client in ["client", "outsider"] {
        let banner = exec_python(
            &lab,
            client,
            BANNER,
            &["web.demo.svc.cluster.local", "2525"],
        );
        assert_eq!(banner, "220 kubewire banner\r\n", "through {client}");
    }

    // A meshed pod that runs to completion: the app talks through its proxy, exits,
    // the proxy is stopped after it, and the pod succeeds.
    let once = format!(
        "import urllib.request\nprint(urllib.request.urlopen({url:?}, timeout=10).read().decode(), end='')\n"
    );
    lab.apply(&pod("once", "node-2", "", "Never", &once));
    let mut phase = String::new();
    assert!(
        wait_until(WAIT, || {
            phase = lab.kubectl(&[
                "-n",
                "demo",
                "get",
                "pod",
                "once",
                "-o",
                "jsonpath={.status.phase}",
            ]);
            phase == "Succeeded" || phase == "Failed"
        }),
        "the meshed pod never completed: {}",
        lab.kubectl(&["-n", "demo", "describe", "pod", "once"])
    );
    let logs = lab.kubectl(&["-n", "demo", "logs", "once", "-c", "app"]);
    assert_eq!(phase, "Succeeded", "{logs}");
    assert!(logs.starts_with("MESH-SECRET-ANSWER from "), "{logs}");

    for p in ["server", "client", "outsider", "once"] {
        lab.kubectl(&["-n", "demo", "delete", "pod", p, "--timeout=60s"]);
    }
}

/// The talk's lab step 5 as a user does it with kubewire: the demo's Deployment runs
/// unmeshed; annotating its namespace and restarting it meshes it (as `linkerd inject`
/// and a restart do); a client in the namespace then talks to it over mutual TLS.
#[test]
fn the_talks_step_5_meshes_a_running_deployment_by_annotation_and_restart() {
    // The lab as `lab up` makes it: the mesh is installed by default.
    let lab = RunningLab::up_as_users_do(2);
    mesh_ready(&lab);
    lab.kubectl(&[
        "create",
        "deployment",
        "website",
        "--image=nginx",
        "--replicas=2",
    ]);
    lab.kubectl(&["expose", "deployment", "website", "--port=80"]);
    lab.kubectl(&["rollout", "status", "deployment/website", "--timeout=120s"]);
    let containers = |selector: &str| -> Vec<String> {
        let list = lab.json(&["get", "pods", "-l", selector]);
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                p["spec"]["initContainers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    };
    assert_eq!(containers("app=website"), ["", ""], "not meshed yet");

    lab.kubectl(&[
        "annotate",
        "namespace",
        "default",
        "kubewire.io/inject=enabled",
    ]);
    lab.kubectl(&["rollout", "restart", "deployment/website"]);
    lab.kubectl(&["rollout", "status", "deployment/website", "--timeout=120s"]);
    assert!(
        wait_until(WAIT, || containers("app=website")
            == ["kubewire-proxy", "kubewire-proxy"]),
        "the restarted pods are not meshed: {:?}",
        containers("app=website")
    );

    lab.kubectl(&[
        "run",
        "client",
        "--image=python",
        "--command",
        "--",
        "python3",
        "-c",
        "import time; time.sleep(100000)",
    ]);
    lab.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "--timeout=120s",
    ]);
    assert_eq!(containers("run=client"), ["kubewire-proxy"]);
    let mut argv = vec![
        "exec", "client", "-c", "client", "--", "python3", "-c", FETCH,
    ];
    argv.push("http://website/");
    let answer = lab.kubectl(&argv);
    assert!(answer.contains("website-"), "{answer}");
    let metrics = lab.kubectl(&[
        "exec",
        "client",
        "-c",
        "client",
        "--",
        "python3",
        "-c",
        FETCH,
        "http://127.0.0.1:4191/metrics",
    ]);
    assert!(
        metric(
            &metrics,
            r#"tcp_open_total{direction="outbound",peer="dst",tls="true"}"#
        ) >= 1,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            r#"request_total{direction="outbound",authority="website",tls="true"}"#
        ) >= 1,
        "{metrics}"
    );
}

/// Sums the HTTP series of the proxy at `argv[1]` (`IP:PORT`), parsed by the Prometheus
/// client's own text parser, as JSON: `{"SAMPLE|label=value,...": total}`.
const HTTP_METRICS: &str = r#"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen("http://%s/metrics" % sys.argv[1], timeout=10).read().decode()
out = {}
for family in text_string_to_metric_families(text):
    for s in family.samples:
        if s.name in ("request_total", "response_total", "response_latency_ms_count", "tcp_open_total"):
            key = s.name + "|" + ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
            out[key] = out.get(key, 0) + s.value
print(json.dumps(out))
"#;

/// A WebSocket client in a few lines: the upgrade to `/ws` on `argv[1]:argv[2]`, then
/// one masked text frame; prints the status line and the frame that comes back.
const WEBSOCKET: &str = r#"
import base64, os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((host, port), timeout=10)
key = base64.b64encode(os.urandom(16)).decode()
c.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, key)).encode())
got = b""
while b"\r\n\r\n" not in got:
    got += c.recv(4096)
head, data = got.split(b"\r\n\r\n", 1)
print(head.split(b"\r\n")[0].decode())
msg = b"hello through the mesh"
mask = os.urandom(4)
c.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(x ^ mask[i % 4] for i, x in enumerate(msg)))
while len(data) < 2 or len(data) < 2 + (data[1] & 0x7f):
    data += c.recv(4096)
print(data[2:2 + (data[1] & 0x7f)].decode())
"#;

/// HTTP through the mesh at L7: the client proxy detects HTTP/1.1 and HTTP/2, balances
/// each request on its own (so the requests of one multiplexed HTTP/2 connection reach
/// both endpoints), keeps its connections to them alive, answers for itself when there
/// is no endpoint, and counts requests and responses under linkerd2-proxy's names.
#[test]
fn http_is_balanced_request_by_request_and_counted() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    lab.apply(MESHED_NAMESPACE);
    lab.apply(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 80, targetPort: 3000}
  - {name: h2c, port: 81, targetPort: 3001}
  - {name: redis-port, port: 6379, targetPort: 3000}
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: demo}
spec:
  selector: {app: nobody}
  ports:
  - {port: 80}
"#,
    );
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    lab.rollout("demo", "echo");
    wait_ready(&lab, "client");
    let curl = |args: &[&str]| -> String {
        let mut argv = vec!["curl", "-sS", "--max-time", "30"];
        argv.extend_from_slice(args);
        let out = lab.exec("demo/client/app", &argv);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl {args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let pods_in = |answers: &str| -> std::collections::BTreeSet<String> {
        answers
            .split("\"pod\": \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };

    // HTTP/2 by prior knowledge: 40 requests multiplexed on one connection at once
    // (nghttp opens one connection; curl 7.88 cannot reuse an h2c one).
    // (Distinct URLs: nghttp asks once for each.)
    let urls: Vec<String> = (0..40)
        .map(|n| format!("http://echo.demo.svc.cluster.local:81/?n={n}"))
        .collect();
    let mut argv = vec!["nghttp"];
    argv.extend(urls.iter().map(String::as_str));
    let out = lab.exec("demo/client/app", &argv);
    let answers = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nghttp: {answers}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        answers.matches("\"proto\": \"HTTP/2.0\"").count(),
        40,
        "{answers}"
    );
    let pods = pods_in(&answers);
    assert_eq!(
        pods.len(),
        2,
        "both endpoints served the one connection: {pods:?}"
    );

    // HTTP/1.1: 20 requests on one kept-alive connection.
    let h1 = "http://echo.demo.svc.cluster.local/";
    let mut args = vec!["-w", "\nconnects=%{num_connects}\n"];
    args.extend(std::iter::repeat_n(h1, 20));
    let answers = curl(&args);
    assert_eq!(
        answers.matches("\"proto\": \"HTTP/1.1\"").count(),
        20,
        "{answers}"
    );
    let connects: u32 = answers
        .lines()
        .filter_map(|l| l.strip_prefix("connects="))
        .map(|n| n.parse::<u32>().unwrap())
        .sum();
    assert_eq!(connects, 1, "one client connection: {answers}");

    // A WebSocket: the upgrade crosses both proxies, then frames go both ways.
    let ws = exec_python(
        &lab,
        "client",
        WEBSOCKET,
        &["echo.demo.svc.cluster.local", "80"],
    );
    assert_eq!(
        ws, "HTTP/1.1 101 Switching Protocols\nhello through the mesh\n",
        "{ws}"
    );

    // An opaque port (Redis's, one of Linkerd's defaults): HTTP crosses both proxies as
    // bytes, so it answers but no proxy counts a request for it (asserted below).
    let answer = curl(&["http://echo.demo.svc.cluster.local:6379/"]);
    assert!(answer.contains("\"proto\": \"HTTP/1.1\""), "{answer}");

    // No endpoint: the proxy answers 503 itself, saying why.
    let answer = curl(&["-i", "http://nobody.demo.svc.cluster.local/"]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("l5d-proxy-error: "),
        "{answer}"
    );

    // The metrics, parsed by Prometheus' own parser.
    // (Debian's Python, where python3-prometheus-client is.)
    let scrape = |proxy: &str| -> serde_json::Value {
        serde_json::from_str(&lab.kubectl(&[
            "-n",
            "demo",
            "exec",
            "client",
            "-c",
            "app",
            "--",
            "/usr/bin/python3",
            "-c",
            HTTP_METRICS,
            proxy,
        ]))
        .unwrap()
    };
    // The servers' proxies first: each scrape is an HTTP request through the mesh too.
    let echo_ips = lab.kubectl(&[
        "-n",
        "demo",
        "get",
        "pods",
        "-l",
        "app=echo",
        "-o",
        "jsonpath={.items[*].status.podIP}",
    ]);
    let mut inbound: std::collections::BTreeMap<String, f64> = Default::default();
    for ip in echo_ips.split_whitespace() {
        let parsed = scrape(&format!("{ip}:4191"));
        for (k, v) in parsed.as_object().unwrap() {
            *inbound.entry(k.clone()).or_default() += v.as_f64().unwrap();
        }
    }
    let parsed = scrape("127.0.0.1:4191");
    let value = |key: &str| parsed[key].as_f64().unwrap_or(0.0);
    let h2_labels = "authority=echo.demo.svc.cluster.local:81,direction=outbound,tls=true";
    let h1_labels = "authority=echo.demo.svc.cluster.local,direction=outbound,tls=true";
    assert_eq!(
        value(&format!("request_total|{h2_labels}")),
        40.0,
        "{parsed:#}"
    );
    // 20 requests and the WebSocket's upgrade.
    assert_eq!(
        value(&format!("request_total|{h1_labels}")),
        21.0,
        "{parsed:#}"
    );
    // The key's labels are sorted (the script sorts them).
    let sorted = |labels: &str, status: &str, class: &str| {
        let mut l: Vec<String> = labels.split(',').map(str::to_owned).collect();
        l.push(format!("classification={class}"));
        l.push(format!("status_code={status}"));
        l.sort();
        l.join(",")
    };
    assert_eq!(
        value(&format!(
            "response_total|{}",
            sorted(h2_labels, "200", "success")
        )),
        40.0,
        "{parsed:#}"
    );
    assert_eq!(
        value(&format!(
            "response_total|{}",
            sorted(h1_labels, "200", "success")
        )),
        20.0,
        "{parsed:#}"
    );
    assert_eq!(
        value(&format!(
            "response_latency_ms_count|{}",
            sorted(h1_labels, "200", "success")
        )),
        20.0,
        "{parsed:#}"
    );
    assert_eq!(
        value(&format!(
            "response_total|{}",
            sorted(h1_labels, "101", "success")
        )),
        1.0,
        "{parsed:#}"
    );
    let nobody = "authority=nobody.demo.svc.cluster.local,direction=outbound,tls=no_identity";
    assert_eq!(
        value(&format!(
            "response_total|{}",
            sorted(nobody, "503", "failure")
        )),
        1.0,
        "{parsed:#}"
    );
    // The servers' proxies served the same requests at L7 (the client proxy's transport
    // header said HTTP), counted on their side.
    let inbound_of = |labels: &str| {
        inbound
            .get(&labels.replace("direction=outbound", "direction=inbound"))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(
        inbound_of(&format!("request_total|{h2_labels}")),
        40.0,
        "{inbound:#?}"
    );
    assert_eq!(
        inbound_of(&format!(
            "response_total|{}",
            sorted(h1_labels, "200", "success")
        )),
        20.0,
        "{inbound:#?}"
    );
    let opaque = "authority=echo.demo.svc.cluster.local:6379,direction=outbound,tls=true";
    assert_eq!(value(&format!("request_total|{opaque}")), 0.0, "{parsed:#}");
    assert_eq!(
        inbound_of(&format!("request_total|{opaque}")),
        0.0,
        "{inbound:#?}"
    );
    // Connections to the endpoints were kept alive and reused: far fewer than requests.
    let opened = value("tcp_open_total|direction=outbound,peer=dst,tls=true");
    assert!(
        (3.0..=10.0).contains(&opened),
        "{opened} connections for 61 requests and one opaque one: {parsed:#}"
    );
}

/// One GET from inside a pod: `status x-route l5d-proxy-error pod` (`-` when absent).
const GET: &str = r#"
import http.client, json, sys
host, path = sys.argv[1], sys.argv[2]
headers = dict(h.split(":", 1) for h in sys.argv[3:])
c = http.client.HTTPConnection(host, 80, timeout=20)
c.request("GET", path, headers=headers)
r = c.getresponse()
body = r.read().decode()
try:
    pod = json.loads(body)["pod"]
except Exception:
    pod = "-"
print(r.status, r.getheader("x-route") or "-", r.getheader("l5d-proxy-error") or "-", pod)
"#;

/// `n` GETs of `path` on one kept-alive connection; how many each Deployment's pods
/// answered (by the pod name's prefix), and any other status.
const COUNT: &str = r#"
import collections, http.client, json, sys
host, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = http.client.HTTPConnection(host, 80, timeout=20)
counts = collections.Counter()
for i in range(n):
    c.request("GET", "%s?n=%d" % (path, i))
    r = c.getresponse()
    body = r.read()
    if r.status != 200:
        counts["status-%d" % r.status] += 1
    else:
        counts[json.loads(body)["pod"].rsplit("-", 2)[0]] += 1
print(json.dumps(counts, sort_keys=True))
"#;

/// Version `v` of echo-basic, behind a Service `echo-{v}` with `annotations`.
fn version(v: &str, annotations: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-{v}, namespace: demo}}
spec:
  selector: {{matchLabels: {{app: echo-{v}}}}}
  template:
    metadata: {{labels: {{app: echo-{v}, tier: echo}}}}
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo-{v}, namespace: demo, annotations: {{{annotations}}}}}
spec:
  selector: {{app: echo-{v}}}
  ports: [{{name: http, port: 80, targetPort: 3000}}]
"#
    )
}

/// `echo`, in front of every version.
const ECHO: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec:
  selector: {tier: echo}
  ports: [{name: http, port: 80, targetPort: 3000}]
"#;

/// The canary (GAMMA): a header sends to v2, `/slow` times out at 500 ms, the rest is
/// split 80/20; and a route on `echo-v1` that serves `/health` alone.
fn canary(v1: u32, v2: u32) -> String {
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: demo}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches: [{{headers: [{{name: x-canary, value: "yes"}}]}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{set: [{{name: x-route, value: canary}}]}}
    backendRefs: [{{name: echo-v2, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /slow}}}}]
    timeouts: {{request: 500ms}}
    backendRefs: [{{name: echo-v1, port: 80}}]
  - backendRefs:
    - {{name: echo-v1, port: 80, weight: {v1}}}
    - {{name: echo-v2, port: 80, weight: {v2}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: health-only, namespace: demo}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo-v1}}]
  rules:
  - matches: [{{path: {{type: Exact, value: /health}}}}]
    backendRefs: [{{name: echo-v1, port: 80}}]
"#
    )
}

#[test]
fn gamma_routes_match_split_time_out_retry_and_inject_faults_in_the_client_proxy() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    lab.apply(MESHED_NAMESPACE);
    lab.apply(ECHO);
    lab.apply(&version("v1", ""));
    // Linkerd's retry annotations, on a Service no route names.
    lab.apply(&version(
        "v2",
        r#"retry.linkerd.io/http: "503", retry.linkerd.io/limit: "2""#,
    ));
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    for d in ["echo-v1", "echo-v2"] {
        lab.rollout("demo", d);
    }
    wait_ready(&lab, "client");
    let get = |host: &str, path: &str, headers: &[&str]| -> String {
        let mut args = vec![host, path];
        args.extend_from_slice(headers);
        exec_python(&lab, "client", GET, &args).trim().to_string()
    };
    let count = |path: &str, n: u32| -> serde_json::Value {
        let n = n.to_string();
        let out = exec_python(
            &lab,
            "client",
            COUNT,
            &["echo.demo.svc.cluster.local", path, &n],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let echo = "echo.demo.svc.cluster.local";

    // The routes, once the client's proxy has them (discovery answers are refreshed
    // within a second or two).
    lab.apply(&canary(80, 20));
    let mut answer = String::new();
    assert!(
        wait_until(WAIT, || {
            answer = get(echo, "/", &["x-canary:yes"]);
            answer.starts_with("200 canary - echo-v2-")
        }),
        "the header match never sent to v2: {answer}"
    );
    for _ in 0..10 {
        let a = get(echo, "/", &["x-canary:yes"]);
        assert!(a.starts_with("200 canary - echo-v2-"), "{a}");
    }

    // The split: 1,000 requests, 20% to v2 within 4.5 standard deviations (±57).
    let split = count("/", 1000);
    let v2 = split["echo-v2"].as_u64().unwrap_or(0);
    assert_eq!(
        split["echo-v1"].as_u64().unwrap_or(0) + v2,
        1000,
        "every request answered 200 by one of the two: {split}"
    );
    assert!((143..=257).contains(&v2), "80/20 split gave {split}");

    // The route's request timeout: a backend that takes 2 s is answered 504 by the
    // proxy; one that takes 100 ms gets through.
    let slow = get(echo, "/slow?delay=2s", &[]);
    assert!(slow.starts_with("504 - "), "{slow}");
    let fast = get(echo, "/slow?delay=100ms", &[]);
    assert!(fast.starts_with("200 - - echo-v1-"), "{fast}");

    // A Service whose routes match nothing of the request: 404 from the proxy.
    let missed = get("echo-v1.demo.svc.cluster.local", "/other", &[]);
    assert!(missed.starts_with("404 - no route"), "{missed}");
    let health = get("echo-v1.demo.svc.cluster.local", "/health", &[]);
    assert!(health.starts_with("200 "), "{health}");

    // Linkerd's retry annotations on echo-v2: two 503s are retried through to the
    // third attempt's 200; three are one too many for a limit of 2.
    for (failures, answered) in [(2, "200 "), (3, "503 ")] {
        let uuid = e2e::unique_name("r");
        let path = format!("/retry/?uuid={uuid}&succeedAfter={failures}&responseCode=503");
        let got = get("echo-v2.demo.svc.cluster.local", &path, &[]);
        assert!(got.starts_with(answered), "{failures} failures: {got}");
    }

    // A changed route is followed: everything to v1 now.
    lab.apply(&canary(100, 0));
    assert!(
        wait_until(WAIT, || count("/", 20)["echo-v1"] == 20),
        "the client's proxy never followed the changed route: {}",
        count("/", 20)
    );

    // Faults, through HTTPFault filters on echo-v1's routes: an abort on half the
    // requests (within 4.5 standard deviations over 400), a delay longer than the
    // rule's timeout (so 504), and a filter naming no HTTPFault (500).
    lab.apply(
        r#"
apiVersion: mesh.kubewire.io/v1alpha1
kind: HTTPFault
metadata: {name: half-503, namespace: demo}
spec:
  abort: {httpStatus: 503, percentage: 50}
---
apiVersion: mesh.kubewire.io/v1alpha1
kind: HTTPFault
metadata: {name: slow, namespace: demo}
spec:
  delay: {fixedDelay: 2s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: chaos, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /abort}}]
    filters: [{type: ExtensionRef, extensionRef: {group: mesh.kubewire.io, kind: HTTPFault, name: half-503}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    filters: [{type: ExtensionRef, extensionRef: {group: mesh.kubewire.io, kind: HTTPFault, name: slow}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /missing}}]
    filters: [{type: ExtensionRef, extensionRef: {group: mesh.kubewire.io, kind: HTTPFault, name: nothing}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirrored}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: echo-v2, port: 80}}}]
    backendRefs: [{name: echo-v1, port: 80}]
"#,
    );
    let v1 = "echo-v1.demo.svc.cluster.local";
    let mut missing = String::new();
    assert!(
        wait_until(WAIT, || {
            missing = get(v1, "/missing", &[]);
            missing.starts_with("500 ")
        }),
        "the chaos route never applied: {missing}"
    );
    let delayed = get(v1, "/delay", &[]);
    assert!(delayed.starts_with("504 "), "{delayed}");
    // A mirrored request is answered by v1, and v2 sees its copy.
    let id = e2e::unique_name("m");
    let mirrored = get(v1, &format!("/mirrored?id={id}"), &[]);
    assert!(mirrored.starts_with("200 - - echo-v1-"), "{mirrored}");
    let seen = format!("Echoing back request made to /mirrored?id={id}");
    let mut logs = String::new();
    assert!(
        wait_until(WAIT, || {
            logs = lab.kubectl(&["-n", "demo", "logs", "-l", "app=echo-v2", "--tail=-1"]);
            logs.contains(&seen)
        }),
        "v2 never saw the mirrored request: {logs}"
    );
    let out = exec_python(&lab, "client", COUNT, &[v1, "/abort", "400"]);
    let aborts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let aborted = aborts["status-503"].as_u64().unwrap_or(0);
    assert_eq!(
        aborted + aborts["echo-v1"].as_u64().unwrap_or(0),
        400,
        "{aborts}"
    );
    assert!((155..=245).contains(&aborted), "a 50% abort gave {aborts}");

    // Failure accrual (Linkerd's annotations): of a Service's two endpoints one
    // answers 500 to everything; after 3 failures in a row it is ejected, so of 200
    // requests only a handful fail. (Without it nearly all would: answering at once,
    // the broken endpoint looks the fastest to the balancer.)
    lab.apply(
        r#"
apiVersion: v1
kind: Service
metadata:
  name: flaky
  namespace: demo
  annotations:
    balancer.linkerd.io/failure-accrual: consecutive
    balancer.linkerd.io/failure-accrual-consecutive-max-failures: "3"
spec:
  selector: {flaky: "yes"}
  ports: [{name: http, port: 80, targetPort: 3000}]
"#,
    );
    lab.kubectl(&[
        "-n",
        "demo",
        "label",
        "pod",
        "-l",
        "app=echo-v1",
        "flaky=yes",
    ]);
    lab.apply(&pod("broken", "node-1", "", "Always", BROKEN_APP).replace(
        "labels: {app: broken}",
        "labels: {app: broken, flaky: \"yes\"}",
    ));
    wait_ready(&lab, "broken");
    let flaky = "flaky.demo.svc.cluster.local";
    let mut first = serde_json::Value::Null;
    assert!(
        wait_until(WAIT, || {
            let out = exec_python(&lab, "client", COUNT, &[flaky, "/", "40"]);
            first = serde_json::from_str(&out).unwrap_or_default();
            first["status-500"].as_u64().is_some()
        }),
        "the broken endpoint never answered: {first}"
    );
    let out = exec_python(&lab, "client", COUNT, &[flaky, "/", "200"]);
    let counts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let failed = counts["status-500"].as_u64().unwrap_or(0);
    assert_eq!(
        failed + counts["echo-v1"].as_u64().unwrap_or(0),
        200,
        "{counts}"
    );
    assert!(
        failed <= 20,
        "the failing endpoint was not ejected: {counts}"
    );
}

/// An HTTP server on 3000 that answers 500 to everything.
const BROKEN_APP: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 3000), H).serve_forever()
"#;

/// `api` (echo-basic, probed on `/health`) behind a Service with an HTTP port and an
/// opaque one, and `locked`, the same with the default policy `deny`.
const GUARDED: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: other, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: demo
  labels: {app: api}
spec:
  serviceAccountName: web
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
    ports: [{name: http, containerPort: 3000}]
    readinessProbe: {httpGet: {path: /health, port: http}, periodSeconds: 1}
---
apiVersion: v1
kind: Pod
metadata:
  name: locked
  namespace: demo
  labels: {app: locked}
  annotations: {config.linkerd.io/default-inbound-policy: deny}
spec:
  serviceAccountName: web
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: echo
    image: registry.k8s.io/gateway-api/echo-basic:v1.5.1
    readinessProbe: {httpGet: {path: /health, port: 3000}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  selector: {app: api}
  ports:
  - {name: http, port: 80, targetPort: 3000}
  - {name: redis-port, port: 6379, targetPort: 3000}
---
apiVersion: v1
kind: Service
metadata: {name: locked, namespace: demo}
spec:
  selector: {app: locked}
  ports: [{name: http, port: 80, targetPort: 3000}]
"#;

#[test]
fn linkerd_policy_allows_what_it_names_refuses_the_rest_and_lets_probes_through() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    lab.apply(MESHED_NAMESPACE);
    lab.apply(GUARDED);
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    lab.apply(
        &pod("intruder", "node-2", "", "Always", CLIENT_APP)
            .replace("serviceAccountName: web", "serviceAccountName: other"),
    );
    lab.apply(&pod(
        "outsider",
        "node-2",
        "kubewire.io/inject: disabled",
        "Always",
        CLIENT_APP,
    ));
    for p in ["api", "locked", "client", "intruder", "outsider"] {
        wait_ready(&lab, p);
    }
    // What a pod gets from a URL: the HTTP status, or curl's exit code.
    let status = |pod: &str, url: &str| -> String {
        let target = format!("demo/{pod}/app");
        let out = lab.exec(
            &target,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                url,
            ],
        );
        match out.status.code() {
            Some(0) => String::from_utf8_lossy(&out.stdout).into_owned(),
            code => format!("curl-exit-{}", code.unwrap_or(-1)),
        }
    };
    let api = "http://api.demo.svc.cluster.local/";
    let clients = ["client", "intruder", "outsider"];
    // Each client's status for `url`, once every one is as expected (the proxies
    // read a changed policy within a second or two).
    let expect = |url: &str, want: [&str; 3], what: &str| {
        let mut got = Vec::new();
        assert!(
            wait_until(WAIT, || {
                got = clients.iter().map(|c| status(c, url)).collect();
                got == want
            }),
            "{what}: {clients:?} got {got:?}, not {want:?}"
        );
    };

    // No Server: the default policy, all-unauthenticated.
    expect(api, ["200", "200", "200"], "the default policy");

    // A Server with no authorization: everything refused, 403 for HTTP, a closed
    // connection for the opaque port; the kubelet's probe path still answers, so the
    // pod stays ready.
    lab.apply(
        r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: api-http, namespace: demo}
spec:
  podSelector: {matchLabels: {app: api}}
  port: http
  proxyProtocol: HTTP/1
"#,
    );
    expect(
        api,
        ["403", "403", "403"],
        "a Server without authorizations",
    );
    let opaque = status("client", "http://api.demo.svc.cluster.local:6379/");
    assert!(opaque.starts_with("curl-exit-"), "opaque port: {opaque}");
    assert_eq!(status("outsider", &format!("{api}health")), "200");
    std::thread::sleep(Duration::from_secs(3));
    wait_ready(&lab, "api");

    // Mutual TLS from the ServiceAccount web only.
    lab.apply(
        r#"
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web, namespace: demo}
spec:
  identityRefs: [{kind: ServiceAccount, name: web}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: api-http}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: web}
"#,
    );
    expect(api, ["200", "403", "403"], "mutual TLS from web only");

    // And the outsider's address, unauthenticated.
    let outsider_ip = lab.kubectl(&[
        "-n",
        "demo",
        "get",
        "pod",
        "outsider",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    lab.apply(&format!(
        r#"
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {{name: outsider, namespace: demo}}
spec:
  networks: [{{cidr: {outsider_ip}/32}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: outsider, namespace: demo}}
spec:
  targetRef: {{group: policy.linkerd.io, kind: Server, name: api-http}}
  requiredAuthenticationRefs:
  - {{group: policy.linkerd.io, kind: NetworkAuthentication, name: outsider}}
"#
    ));
    expect(api, ["200", "403", "200"], "and the outsider's address");

    // Linkerd's older kind: a ServerAuthorization selecting the Server by its labels
    // lets the intruder's ServiceAccount in too, until it is deleted.
    lab.kubectl(&["-n", "demo", "label", "server", "api-http", "tier=api"]);
    lab.apply(
        r#"
apiVersion: policy.linkerd.io/v1beta1
kind: ServerAuthorization
metadata: {name: other-sa, namespace: demo}
spec:
  server: {selector: {matchLabels: {tier: api}}}
  client: {meshTLS: {serviceAccounts: [{name: other}]}}
"#,
    );
    expect(api, ["200", "200", "200"], "a ServerAuthorization of other");
    lab.kubectl(&["-n", "demo", "delete", "serverauthorization", "other-sa"]);
    expect(
        api,
        ["200", "403", "200"],
        "the ServerAuthorization deleted",
    );

    // A pod whose default policy is deny: ready (its probes are allowed), and
    // refusing everyone.
    expect(
        "http://locked.demo.svc.cluster.local/",
        ["403", "403", "403"],
        "the default policy deny",
    );

    // The api's proxy counted both answers, by Server and authorization.
    let api_ip = lab.kubectl(&[
        "-n",
        "demo",
        "get",
        "pod",
        "api",
        "-o",
        "jsonpath={.status.podIP}",
    ]);
    let metrics = exec_python(
        &lab,
        "client",
        FETCH,
        &[&format!("http://{api_ip}:4191/metrics")],
    );
    let allowed = r#"inbound_http_authz_allow_total{srv_kind="server",srv_name="api-http",authz_kind="authorizationpolicy",authz_name="web-only"} "#;
    let denied = r#"inbound_http_authz_deny_total{srv_kind="server",srv_name="api-http"} "#;
    assert!(metric(&metrics, allowed) >= 1, "{metrics}");
    assert!(metric(&metrics, denied) >= 5, "{metrics}");
    let tcp_denied = r#"inbound_tcp_authz_deny_total{srv_kind="server",srv_name="api-http"} "#;
    assert!(metric(&metrics, tcp_denied) >= 1, "{metrics}");

    // Routes on the Server, of both kinds: a request off them gets 404; Linkerd's
    // route `books` lets the intruder's ServiceAccount in by its own policy (web and
    // the outsider by the Server's); the probe path is no longer allowed by itself,
    // so a route of its own with a policy for anyone keeps the pod ready.
    lab.apply(
        r#"
apiVersion: policy.linkerd.io/v1beta3
kind: HTTPRoute
metadata: {name: books, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: api-http}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /books}, method: GET}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: probes, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: api-http}]
  rules:
  - matches: [{path: {type: Exact, value: /health}, method: GET}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: other, namespace: demo}
spec:
  identityRefs: [{kind: ServiceAccount, name: other}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: books-for-other, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: HTTPRoute, name: books}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: other}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: NetworkAuthentication
metadata: {name: anyone, namespace: demo}
spec:
  networks: [{cidr: 0.0.0.0/0}, {cidr: "::/0"}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: probes, namespace: demo}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: HTTPRoute, name: probes}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: NetworkAuthentication, name: anyone}
"#,
    );
    let books = format!("{api}books/1");
    expect(&books, ["200", "200", "200"], "the books route");
    expect(api, ["404", "404", "404"], "off the Server's routes");
    expect(
        &format!("{api}health"),
        ["200", "200", "200"],
        "the probes' route",
    );
    std::thread::sleep(Duration::from_secs(3));
    wait_ready(&lab, "api");
    // Without its route, the route's policy lets nobody in: `/books` is off the routes.
    lab.kubectl(&[
        "-n",
        "demo",
        "delete",
        "httproutes.policy.linkerd.io",
        "books",
    ]);
    expect(&books, ["404", "404", "404"], "the books route deleted");
    // The api's proxy counted the route's answers by the route too.
    let metrics = exec_python(
        &lab,
        "client",
        FETCH,
        &[&format!("http://{api_ip}:4191/metrics")],
    );
    let by_route = r#"inbound_http_authz_allow_total{srv_kind="server",srv_name="api-http",route_kind="httproute",route_name="books",authz_kind="authorizationpolicy",authz_name="books-for-other"} "#;
    assert!(metric(&metrics, by_route) >= 1, "{metrics}");
}

/// For `argv[1]` seconds: an HTTP request on a new connection, then a banner read, again
/// and again; prints how many of each worked and failed (and the first failures).
const LOAD: &str = r#"
import json, socket, sys, time, urllib.request
end = time.time() + float(sys.argv[1])
counts = {"http": 0, "banner": 0, "failed": 0, "errors": []}
while time.time() < end:
    try:
        body = urllib.request.urlopen("http://web.demo.svc.cluster.local/", timeout=5).read()
        assert body.startswith(b"MESH-SECRET-ANSWER"), body
        counts["http"] += 1
        c = socket.create_connection(("web.demo.svc.cluster.local", 2525), timeout=5)
        got = c.recv(100)
        c.close()
        assert got.startswith(b"220 "), got
        counts["banner"] += 1
    except Exception as e:
        counts["failed"] += 1
        if len(counts["errors"]) < 5:
            counts["errors"].append("%.1f: %s" % (time.time() - end, e))
    time.sleep(0.05)
print(json.dumps(counts))
"#;

#[test]
fn certificates_renew_under_load_and_an_issuer_restart_drops_nothing() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    // Certificates of 20 s, so that the proxies renew them (at 70%: 14 s) under load.
    lab.kubectl(&[
        "-n",
        "kube-system",
        "patch",
        "deployment",
        "kubewire-identity",
        "--type=json",
        "-p",
        r#"[{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "--certificate-lifetime=20s"}]"#,
    ]);
    lab.rollout("kube-system", "kubewire-identity");
    lab.apply(MESHED_NAMESPACE);
    lab.apply(&pod("server", "node-1", "", "Always", SERVER_APP));
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    lab.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  selector: {app: server}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: banner, port: 2525, targetPort: 2525}
"#,
    );
    for p in ["server", "client"] {
        wait_ready(&lab, p);
    }
    // 45 s of load; the issuer restarted 15 s in.
    let name = lab.name.clone();
    let load = std::thread::spawn(move || {
        e2e::kubewire(&[
            "lab",
            "exec",
            "--name",
            &name,
            "demo/client/app",
            "--",
            "python3",
            "-c",
            LOAD,
            "45",
        ])
    });
    std::thread::sleep(Duration::from_secs(15));
    lab.kubectl(&[
        "-n",
        "kube-system",
        "rollout",
        "restart",
        "deployment/kubewire-identity",
    ]);
    lab.rollout("kube-system", "kubewire-identity");
    let out = load.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let counts: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text}{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(counts["failed"], 0, "{counts}");
    assert!(counts["http"].as_u64().unwrap() > 50, "{counts}");
    assert!(counts["banner"].as_u64().unwrap() > 50, "{counts}");
    // Each proxy took new certificates along the way: its first and at least two more.
    for p in ["server", "client"] {
        let logs = lab.kubectl(&["-n", "demo", "logs", p, "-c", "kubewire-proxy"]);
        let taken = logs.matches("mutual TLS ready").count();
        assert!(taken >= 3, "{p}'s proxy took {taken} certificates:\n{logs}");
    }
}

/// An OTLP/HTTP collector: each export decoded with OpenTelemetry's own protobuf
/// messages (the opentelemetry-proto package) and its spans printed, a JSON line each.
const COLLECTOR: &str = r#"
import http.server, json
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
def value(v):
    return v.string_value if v.HasField("string_value") else v.int_value
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        export = ExportTraceServiceRequest()
        export.ParseFromString(self.rfile.read(int(self.headers["Content-Length"])))
        for rs in export.resource_spans:
            resource = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    print(json.dumps({
                        "request": [self.path, self.headers["Content-Type"]],
                        "resource": resource, "scope": ss.scope.name,
                        "trace": s.trace_id.hex(), "span": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(), "state": s.trace_state,
                        "kind": s.kind, "name": s.name, "status": s.status.code,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }), flush=True)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("", 4318), H).serve_forever()
"#;

/// GETs `http://HOST/PATH` with the headers given (`name:value`); prints the status
/// and the trace headers the app received, as JSON.
const TRACED_GET: &str = r#"
import http.client, json, sys
host, path = sys.argv[1], sys.argv[2]
c = http.client.HTTPConnection(host, 80, timeout=20)
c.request("GET", path, headers=dict(h.split(":", 1) for h in sys.argv[3:]))
r = c.getresponse()
body = r.read()
seen = json.loads(body).get("headers", {}) if r.status == 200 else {}
print(json.dumps({"status": r.status, "traceparent": seen.get("Traceparent"),
                  "tracestate": seen.get("Tracestate")}))
"#;

#[test]
fn sampled_traces_get_a_span_per_proxy_exported_over_otlp() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    lab.apply(MESHED_NAMESPACE);
    // Linkerd's annotations, on the namespace: every proxy injected there exports,
    // with its opaque ports; the client's own annotation wins over the namespace's.
    lab.kubectl(&[
        "annotate",
        "namespace",
        "demo",
        "config.linkerd.io/trace-collector=collector.demo.svc.cluster.local:4318",
        "config.linkerd.io/opaque-ports=5432,9000-9100",
    ]);
    // The collector, outside the mesh.
    let python = venv_python();
    lab.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: collector
  namespace: demo
  labels: {{app: collector}}
  annotations: {{kubewire.io/inject: disabled}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: app
    image: python
    command: [{python}, -c, {script}]
    readinessProbe:
      tcpSocket: {{port: 4318}}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: collector, namespace: demo}}
spec:
  selector: {{app: collector}}
  ports: [{{name: otlp-http, port: 4318}}]
"#,
        python = serde_json::to_string(&python).unwrap(),
        script = serde_json::to_string(COLLECTOR).unwrap(),
    ));
    lab.apply(&version("v1", ""));
    lab.apply(&pod(
        "client",
        "node-2",
        r#"config.linkerd.io/opaque-ports: "3306""#,
        "Always",
        CLIENT_APP,
    ));
    lab.rollout("demo", "echo-v1");
    for p in ["client", "collector"] {
        wait_ready(&lab, p);
    }
    let env = |var: &str| {
        lab.kubectl(&[
            "-n",
            "demo",
            "get",
            "pod",
            "client",
            "-o",
            &format!("jsonpath={{.spec.initContainers[0].env[?(@.name==\"{var}\")].value}}"),
        ])
    };
    assert_eq!(
        env("KUBEWIRE_TRACE_COLLECTOR"),
        "collector.demo.svc.cluster.local:4318"
    );
    assert_eq!(env("KUBEWIRE_OPAQUE_PORTS"), "3306");

    let get = |path: &str, headers: &[&str]| -> serde_json::Value {
        let mut args = vec!["echo-v1.demo.svc.cluster.local", path];
        args.extend_from_slice(headers);
        let out = exec_python(&lab, "client", TRACED_GET, &args);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let failing = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = "5a2c0fd57b1c4e6e9bd0b3d7f6a1c2e4";

    // Sampled: the app sees the same trace, under a span of the proxies'.
    let answer = get(
        "/traced",
        &[
            &format!("traceparent:00-{trace}-{parent}-01"),
            "tracestate:vendor=kept",
        ],
    );
    assert_eq!(answer["status"], 200, "{answer}");
    let seen = answer["traceparent"][0]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let fields: Vec<&str> = seen.split('-').collect();
    assert_eq!(fields.len(), 4, "{answer}");
    assert_eq!(
        (fields[0], fields[1], fields[3]),
        ("00", trace, "01"),
        "{answer}"
    );
    assert_ne!(
        fields[2], parent,
        "the app's parent is the server proxy's span"
    );
    assert_eq!(answer["tracestate"][0], "vendor=kept", "{answer}");
    // Sampled, failing: the spans say so.
    let answer = get(
        "/status/500",
        &[&format!("traceparent:00-{failing}-{parent}-01")],
    );
    assert_eq!(answer["status"], 500, "{answer}");
    // Not sampled, or no context: passed as they came, no span.
    let untraced = format!("00-{unsampled}-{parent}-00");
    let answer = get("/untraced", &[&format!("traceparent:{untraced}")]);
    assert_eq!(answer["traceparent"][0], untraced.as_str(), "{answer}");
    let answer = get("/untraced", &[]);
    assert_eq!(answer["traceparent"], serde_json::Value::Null, "{answer}");

    // The collector gets both proxies' spans (exported within a second or so).
    let mut spans: Vec<serde_json::Value> = Vec::new();
    let complete = wait_until(WAIT, || {
        spans = lab
            .kubectl(&["-n", "demo", "logs", "collector"])
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        [trace, failing]
            .iter()
            .all(|t| spans.iter().filter(|s| s["trace"] == *t).count() >= 2)
    });
    assert!(
        complete,
        "spans collected: {spans:#?}\nthe client's proxy:\n{}",
        lab.kubectl(&["-n", "demo", "logs", "client", "-c", "kubewire-proxy"])
    );
    assert!(
        spans.iter().all(|s| s["trace"] != unsampled),
        "an unsampled trace was exported: {spans:#?}"
    );
    let of = |t: &str, kind: u64| -> &serde_json::Value {
        let matching: Vec<_> = spans
            .iter()
            .filter(|s| s["trace"] == t && s["kind"] == kind)
            .collect();
        assert_eq!(matching.len(), 1, "kind {kind} of {t}: {spans:#?}");
        matching[0]
    };
    // OTLP's SpanKind: 2 SERVER (the server's proxy), 3 CLIENT (the client's).
    let (client, server) = (of(trace, 3), of(trace, 2));
    assert_eq!(client["parent"], parent, "{client:#}");
    assert_eq!(server["parent"], client["span"], "{server:#}");
    assert_eq!(server["span"], fields[2], "the app's parent: {server:#}");
    assert_eq!(client["resource"]["k8s.pod.name"], "client", "{client:#}");
    assert!(
        server["resource"]["k8s.pod.name"]
            .as_str()
            .is_some_and(|p| p.starts_with("echo-v1-")),
        "{server:#}"
    );
    for s in [client, server] {
        assert_eq!(s["request"][0], "/v1/traces", "{s:#}");
        assert_eq!(s["request"][1], "application/x-protobuf", "{s:#}");
        assert_eq!(s["resource"]["service.name"], "kubewire-proxy", "{s:#}");
        assert_eq!(s["resource"]["k8s.namespace.name"], "demo", "{s:#}");
        assert_eq!(s["state"], "vendor=kept", "{s:#}");
        assert_eq!(s["name"], "GET", "{s:#}");
        assert_eq!(s["attributes"]["http.request.method"], "GET", "{s:#}");
        assert_eq!(s["attributes"]["url.path"], "/traced", "{s:#}");
        assert_eq!(s["attributes"]["http.response.status_code"], 200, "{s:#}");
        assert_eq!(s["status"], 0, "unset: {s:#}");
        assert!(s["start"].as_u64() <= s["end"].as_u64(), "{s:#}");
    }
    // The server's span lies within the client's (one host, one clock).
    assert!(client["start"].as_u64() <= server["start"].as_u64());
    assert!(server["end"].as_u64() <= client["end"].as_u64());
    // OTLP's StatusCode 2: ERROR.
    for kind in [2, 3] {
        let s = of(failing, kind);
        assert_eq!(s["attributes"]["http.response.status_code"], 500, "{s:#}");
        assert_eq!(s["status"], 2, "{s:#}");
    }
}

/// `seconds` of GETs to `http://HOST/`, every fourth one to `/status/500`; prints how
/// many of each went.
const MIXED_LOAD: &str = r#"
import http.client, json, sys, time
host, end = sys.argv[1], time.time() + float(sys.argv[2])
c = http.client.HTTPConnection(host, 80, timeout=10)
counts, i = {}, 0
while time.time() < end:
    c.request("GET", "/status/500" if i % 4 == 3 else "/")
    r = c.getresponse()
    r.read()
    counts[r.status] = counts.get(r.status, 0) + 1
    i += 1
    time.sleep(0.02)
print(json.dumps(counts))
"#;

#[test]
fn mesh_top_shows_success_rate_rps_and_latency_per_deployment_and_route() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    lab.apply(MESHED_NAMESPACE);
    lab.apply(&version("v1", ""));
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    lab.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-route, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules:
  - backendRefs: [{name: echo-v1, port: 80}]
"#,
    );
    lab.rollout("demo", "echo-v1");
    wait_ready(&lab, "client");
    // The route reaches the client's proxy (its requests then carry the route's name).
    assert!(wait_until(WAIT, || exec_python(
        &lab,
        "client",
        GET,
        &["echo-v1.demo.svc.cluster.local", "/"]
    )
    .starts_with("200")));

    // 16 s of load; `mesh top` takes its two scrapes 6 s apart within it.
    let name = lab.name.clone();
    let load = std::thread::spawn(move || {
        let out = e2e::kubewire(&[
            "lab",
            "exec",
            "--name",
            &name,
            "demo/client/app",
            "--",
            "python3",
            "-c",
            MIXED_LOAD,
            "echo-v1.demo.svc.cluster.local",
            "16",
        ]);
        String::from_utf8_lossy(&out.stdout).to_string()
    });
    std::thread::sleep(Duration::from_secs(3));
    let kubeconfig = lab.kubeconfig.to_str().unwrap().to_string();
    let top = |by: &'static str, output: &'static str| {
        let kubeconfig = kubeconfig.clone();
        std::thread::spawn(move || {
            let out = e2e::kubewire(&[
                "mesh",
                "top",
                "--kubeconfig",
                &kubeconfig,
                "-n",
                "demo",
                "--by",
                by,
                "--interval",
                "6s",
                "--count",
                "1",
                "-o",
                output,
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            (String::from_utf8_lossy(&out.stdout).to_string(), stderr)
        })
    };
    let threads = [
        top("deployment", "json"),
        top("route", "json"),
        top("deployment", "table"),
    ];
    let [deployments, routes, table] = threads.map(|t| t.join().unwrap());
    let rows = |(text, stderr): (String, String)| -> Vec<serde_json::Value> {
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}{stderr}"))
    };
    let (deployments, routes) = (rows(deployments), rows(routes));
    let sent = load.join().unwrap();

    let find = |rows: &[serde_json::Value], name: &str| -> serde_json::Value {
        rows.iter()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no row {name}: {rows:#?}\nthe load: {sent}"))
    };
    // Three in four answered 200 (the echo app's /status/500 the fourth).
    let in_bounds = |row: &serde_json::Value| {
        let success = row["success"].as_f64().unwrap_or(-1.0);
        assert!(
            (0.65..=0.85).contains(&success),
            "{row:#}\nthe load: {sent}"
        );
        assert!(
            row["rps"].as_f64().unwrap() > 2.0,
            "{row:#}\nthe load: {sent}"
        );
        for p in ["latency_p50_ms", "latency_p95_ms", "latency_p99_ms"] {
            assert!(row[p].as_f64().is_some_and(|ms| ms > 0.0), "{p}: {row:#}");
        }
        assert!(row["latency_p50_ms"].as_f64() <= row["latency_p99_ms"].as_f64());
    };
    let echo = find(&deployments, "deploy/echo-v1");
    assert_eq!(echo["namespace"], "demo");
    assert_eq!(echo["meshed"], serde_json::json!([1, 1]), "{echo:#}");
    in_bounds(&echo);
    // The client serves nothing: meshed, no requests.
    let client = find(&deployments, "pod/client");
    assert_eq!(client["meshed"], serde_json::json!([1, 1]), "{client:#}");
    assert_eq!(client["success"], serde_json::Value::Null, "{client:#}");
    assert_eq!(client["rps"], 0.0, "{client:#}");
    let route = find(&routes, "httproute/echo-route");
    assert_eq!(route["namespace"], "demo");
    in_bounds(&route);

    // The table, as a person sees it.
    let (table, stderr) = table;
    eprintln!("{table}");
    assert!(
        table.starts_with("NAMESPACE   NAME             MESHED   SUCCESS   RPS"),
        "{table}{stderr}"
    );
    let echo = table.lines().find(|l| l.contains("deploy/echo-v1"));
    assert!(
        echo.is_some_and(|l| l.contains("1/1") && l.contains('%')),
        "{table}"
    );
}

/// The tests' virtualenv's Python (grpcio, opentelemetry-proto), its path kept as it is:
/// resolving the link would leave the virtualenv.
fn venv_python() -> String {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/python-clients/bin/python");
    assert!(python.exists(), "{python:?}: run `scripts/deps.sh test`");
    python.to_str().unwrap().to_string()
}

/// A gRPC server written with gRPC's own Python library, no generated code: the
/// methods take and give raw bytes. `demo.Echo/Say` answers `POD:request`,
/// `demo.Echo/Fail` fails with UNAVAILABLE.
const GRPC_SERVER: &str = r#"
import grpc, os
from concurrent import futures
def say(request, context):
    return ("%s:%s" % (os.environ["POD_NAME"], request.decode())).encode()
def fail(request, context):
    context.abort(grpc.StatusCode.UNAVAILABLE, "asked to fail")
server = grpc.server(futures.ThreadPoolExecutor(8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("demo.Echo", {
    "Say": grpc.unary_unary_rpc_method_handler(say),
    "Fail": grpc.unary_unary_rpc_method_handler(fail),
}),))
server.add_insecure_port("[::]:8080")
server.start()
server.wait_for_termination()
"#;

/// 40 concurrent calls of `Say` on one channel (one HTTP/2 connection to the Service's
/// address), then one of `Fail`; prints which pods answered and each call's status.
const GRPC_CLIENT: &str = r#"
import collections, grpc, json, sys
channel = grpc.insecure_channel(sys.argv[1])
def status(method):
    try:
        channel.unary_unary(method)(b"x", timeout=10)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name
pods, say = collections.Counter(), channel.unary_unary("/demo.Echo/Say")
calls = [say.future(b"%d" % i, timeout=10) for i in range(40)]
for call in calls:
    try:
        pods[call.result().decode().split(":")[0]] += 1
    except grpc.RpcError as e:
        pods[e.code().name] += 1
print(json.dumps({"pods": pods, "say": status("/demo.Echo/Say"), "fail": status("/demo.Echo/Fail")}))
"#;

#[test]
fn grpc_is_balanced_per_call_routed_by_method_and_refused_with_a_grpc_status() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    mesh_ready(&lab);
    lab.apply(MESHED_NAMESPACE);
    let python = venv_python();
    lab.apply(&format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: grpc, namespace: demo}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: grpc}}}}
  template:
    metadata: {{labels: {{app: grpc}}}}
    spec:
      serviceAccountName: web
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: python
        command: [{python}, -c, {script}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: grpc, namespace: demo}}
spec:
  selector: {{app: grpc}}
  ports: [{{name: grpc, port: 8080, appProtocol: kubernetes.io/h2c}}]
"#,
        python = serde_json::to_string(&python).unwrap(),
        script = serde_json::to_string(GRPC_SERVER).unwrap(),
    ));
    lab.apply(&pod("client", "node-2", "", "Always", CLIENT_APP));
    lab.rollout("demo", "grpc");
    wait_ready(&lab, "client");
    let call = || -> serde_json::Value {
        let out = lab.kubectl(&[
            "-n",
            "demo",
            "exec",
            "client",
            "-c",
            "app",
            "--",
            &python,
            "-c",
            GRPC_CLIENT,
            "grpc.demo.svc.cluster.local:8080",
        ]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };

    // One HTTP/2 connection from the client, its concurrent calls spread over both pods
    // by the client's proxy (calls one after another would all go to the pod that
    // answers fastest, as peak EWMA means them to); a failing call's status comes
    // through both proxies.
    let answer = call();
    let pods = answer["pods"].as_object().unwrap();
    assert_eq!(pods.len(), 2, "{answer}");
    assert!(
        pods.iter()
            .all(|(p, n)| p.starts_with("grpc-") && n.as_u64().unwrap() >= 3),
        "{answer}"
    );
    assert_eq!(answer["fail"], "UNAVAILABLE", "{answer}");
    // Counted as failures by their grpc-status, though HTTP said 200.
    // (Debian's Python: its Prometheus client parses the text.)
    let metrics = lab.kubectl(&[
        "-n",
        "demo",
        "exec",
        "client",
        "-c",
        "app",
        "--",
        "/usr/bin/python3",
        "-c",
        HTTP_METRICS,
        "127.0.0.1:4191",
    ]);
    let metrics: serde_json::Value = serde_json::from_str(metrics.trim()).unwrap();
    let failed = metrics.as_object().unwrap().iter().any(|(k, v)| {
        k.starts_with("response_total|")
            && k.contains("classification=failure")
            && k.contains("direction=outbound")
            && k.contains("status_code=200")
            && v.as_f64() >= Some(1.0)
    });
    assert!(failed, "{metrics:#}");

    // A GRPCRoute (GAMMA) that serves `Say` alone: `Fail` no longer reaches the
    // server, the proxy's 404 is gRPC's UNIMPLEMENTED.
    lab.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: say-only, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 8080}]
  rules:
  - matches: [{method: {service: demo.Echo, method: Say}}]
    backendRefs: [{name: grpc, port: 8080}]
"#,
    );
    let mut answer = serde_json::Value::Null;
    assert!(
        wait_until(WAIT, || {
            answer = call();
            answer["fail"] == "UNIMPLEMENTED"
        }),
        "the GRPCRoute was never followed: {answer}"
    );
    assert_eq!(answer["say"], "OK", "{answer}");
    assert_eq!(answer["pods"].as_object().unwrap().len(), 2, "{answer}");

    // A Server with no authorization: the server's proxy refuses each call with
    // PERMISSION_DENIED (grpc-status 7), as linkerd2-proxy does.
    lab.apply(
        r#"
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: grpc, namespace: demo}
spec:
  podSelector: {matchLabels: {app: grpc}}
  port: 8080
  proxyProtocol: gRPC
"#,
    );
    assert!(
        wait_until(WAIT, || {
            answer = call();
            answer["say"] == "PERMISSION_DENIED"
        }),
        "the Server never refused: {answer}"
    );

    // The client's route gone, a GRPCRoute on the Server serves `Say` to any meshed
    // client by its own AuthorizationPolicy; `Fail`, on no route of the Server, gets
    // the server proxy's 404: UNIMPLEMENTED.
    lab.kubectl(&["-n", "demo", "delete", "grpcroute", "say-only"]);
    lab.apply(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: say-inbound, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: Server, name: grpc}]
  rules:
  - matches: [{method: {service: demo.Echo, method: Say}}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: meshed, namespace: demo}
spec:
  identities: ["*"]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: say-for-meshed, namespace: demo}
spec:
  targetRef: {group: gateway.networking.k8s.io, kind: GRPCRoute, name: say-inbound}
  requiredAuthenticationRefs:
  - {group: policy.linkerd.io, kind: MeshTLSAuthentication, name: meshed}
"#,
    );
    assert!(
        wait_until(WAIT, || {
            answer = call();
            answer["say"] == "OK" && answer["fail"] == "UNIMPLEMENTED"
        }),
        "the Server's GRPCRoute was never followed: {answer}"
    );
}

#[test]
fn the_clusters_default_inbound_policy_applies_where_no_namespace_or_pod_names_one() {
    let lab = RunningLab::up_with(
        2,
        "mesh: true\nmeshDefaultInboundPolicy: all-authenticated\n",
    );
    mesh_ready(&lab);
    server_client_and_outsider(&lab);
    let status = |pod: &str| -> String {
        let out = lab.exec(
            &format!("demo/{pod}/app"),
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                "http://web.demo.svc.cluster.local/",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let expect = |want: [&str; 2], what: &str| {
        let mut got = Vec::new();
        assert!(
            wait_until(WAIT, || {
                got = ["client", "outsider"].iter().map(|p| status(p)).collect();
                got == want
            }),
            "{what}: client and outsider got {got:?}, not {want:?}"
        );
    };
    // The cluster's default: meshed clients only.
    expect(["200", "403"], "the cluster's all-authenticated");
    // The namespace's annotation wins over the cluster's default.
    lab.kubectl(&[
        "annotate",
        "namespace",
        "demo",
        "config.linkerd.io/default-inbound-policy=all-unauthenticated",
    ]);
    expect(["200", "200"], "the namespace's all-unauthenticated");
}
