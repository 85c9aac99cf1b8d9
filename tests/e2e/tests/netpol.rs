//! NetworkPolicy, case by case as the upstream e2e suite (`test/e2e/network/netpol` in
//! Kubernetes) tests it: namespaces x/y/z, pods a/b/c spread over two nodes, every pod
//! probed from every pod on TCP and UDP ports 80 and 81 by real clients, and the whole
//! table compared with the case's truth table ([`e2e::netpol`]). Each case is its own
//! test and lab; a case's name says which upstream test it ports.

use std::io::{BufRead, BufReader, Write};

use e2e::netpol::{Netpol, Reachability};

/// A NetworkPolicy `name` in namespace `ns` with `spec` (YAML, indented as under
/// `spec:`).
fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: \"{ns}\"\nspec:\n{spec}\n---\n"
    )
}

fn all() -> Reachability {
    Reachability::all(true)
}

/// "should support a 'default-deny-ingress' policy"
#[test]
fn default_deny_ingress() {
    let s = Netpol::up();
    s.expect(&all());
    s.apply(&policy(
        "x",
        "deny-ingress",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ));
    s.expect(&all().expect("", "x", false));
}

/// "should support a 'default-deny-all' policy"
#[test]
fn default_deny_all() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    ));
    s.expect(&all().expect("", "x", false).expect("x", "", false));
}

/// "should enforce policy to allow traffic from pods within server namespace based on
/// PodSelector"
#[test]
fn allow_from_pods_in_the_server_namespace() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "x-a-allows-x-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]",
    ));
    s.expect(&all().expect("", "x/a", false).expect("x/b", "x/a", true));
}

/// "should enforce policy to allow ingress traffic for a target"
#[test]
fn allow_ingress_for_a_target() {
    let s = Netpol::up();
    s.apply(&policy("x", "deny-all", "  podSelector: {}\n  ingress: []"));
    s.apply(&policy(
        "x",
        "allow-all-to-a",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {}, namespaceSelector: {}}]",
    ));
    s.expect(&all().expect("", "x", false).expect("", "x/a", true));
}

/// "should enforce policy to allow traffic only from a different namespace, based on
/// NamespaceSelector"
#[test]
fn allow_only_from_another_namespace() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-client-a-via-ns-selector",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]",
    ));
    s.expect(&all().expect("x", "x/a", false).expect("z", "x/a", false));
}

/// "should enforce policy based on PodSelector with MatchExpressions" and "...
/// NamespaceSelector with MatchExpressions", in one table: x/a admits x/b, and y/a
/// admits namespace z.
#[test]
fn selectors_with_match_expressions() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "x-a-allows-x-b",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]",
    ));
    s.apply(&policy(
        "y",
        "y-a-allows-z",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: In, values: [z]}]}}]",
    ));
    s.expect(
        &all()
            .expect("", "x/a", false)
            .expect("x/b", "x/a", true)
            .expect("", "y/a", false)
            .expect("z", "y/a", true),
    );
}

/// "should enforce policy based on PodSelector or NamespaceSelector"
#[test]
fn pod_selector_or_namespace_selector() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-ns-y-match-selector",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}\n    - podSelector: {matchLabels: {pod: b}}",
    ));
    s.expect(&all().expect("x/c", "x/a", false));
}

/// "should enforce policy based on PodSelector and NamespaceSelector"
#[test]
fn pod_selector_and_namespace_selector() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-ns-y-podselector",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [x]}]}\n      podSelector: {matchLabels: {pod: b}}",
    ));
    s.expect(
        &all()
            .expect("", "x/a", false)
            .expect("y/b", "x/a", true)
            .expect("z/b", "x/a", true),
    );
}

/// "should enforce policy based on Ports" then "should enforce multiple, stacked
/// policies with overlapping podSelectors": namespace y may reach x/a on TCP 81, then
/// a second policy adds TCP 80.
#[test]
fn ports_and_stacked_policies() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-port-81",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n    ports: [{port: 81}]",
    ));
    let base = all().expect("", "x/a", false);
    s.expect(
        &base
            .clone()
            .expect_on("y", "x/a", Some(81), Some("TCP"), true),
    );
    s.apply(&policy(
        "x",
        "allow-port-80",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n    ports: [{port: 80, protocol: TCP}]",
    ));
    s.expect(&base.expect_on("y", "x/a", None, Some("TCP"), true));
}

/// "should allow ingress access on one named port" and "should allow ingress access
/// from namespace on one named port"
#[test]
fn named_ports_ingress() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-all-on-serve-81-tcp",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-81-tcp}]",
    ));
    s.apply(&policy(
        "x",
        "allow-y-on-serve-80-udp",
        "  podSelector: {matchLabels: {pod: b}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n    ports: [{port: serve-80-udp, protocol: UDP}]",
    ));
    s.expect(
        &all()
            .expect("", "x/a", false)
            .expect_on("", "x/a", Some(81), Some("TCP"), true)
            .expect("", "x/b", false)
            .expect_on("y", "x/b", Some(80), Some("UDP"), true),
    );
}

/// "should allow egress access on one named port"
#[test]
fn named_port_egress() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-egress-serve-80-tcp",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: serve-80-tcp}]",
    ));
    s.expect(
        &all()
            .expect("x/a", "", false)
            .expect_on("x/a", "", Some(80), Some("TCP"), true),
    );
}

/// "should enforce updated policy": the same policy, changed.
#[test]
fn updated_policy() {
    let s = Netpol::up();
    let allow = |pod: &str| {
        policy(
            "x",
            "allow-one",
            &format!(
                "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]"
            ),
        )
    };
    s.apply(&allow("b"));
    s.expect(&all().expect("", "x/a", false).expect("x/b", "x/a", true));
    s.apply(&allow("c"));
    s.expect(&all().expect("", "x/a", false).expect("x/c", "x/a", true));
}

/// "should allow ingress access from updated namespace" and "... from updated pod":
/// labels that appear after the policy.
#[test]
fn updated_namespace_and_pod_labels() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-labelled",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns2: updated}}\n    - podSelector: {matchLabels: {pod2: updated}}",
    ));
    let denied = all().expect("", "x/a", false);
    s.expect(&denied);
    s.lab.kubectl(&["label", "namespace", "y", "ns2=updated"]);
    s.expect(&denied.clone().expect("y", "x/a", true));
    s.lab
        .kubectl(&["label", "pod", "-n", "x", "c", "pod2=updated"]);
    s.expect(
        &denied
            .clone()
            .expect("y", "x/a", true)
            .expect("x/c", "x/a", true),
    );
    s.lab.kubectl(&["label", "namespace", "y", "ns2-"]);
    s.expect(&denied.expect("x/c", "x/a", true));
}

/// "should deny ingress access to updated pod": a pod becomes selected by a label.
#[test]
fn deny_ingress_to_updated_pod() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "deny-isolated",
        "  podSelector: {matchLabels: {target: isolated}}\n  policyTypes: [Ingress]",
    ));
    s.expect(&all());
    s.lab
        .kubectl(&["label", "pod", "-n", "x", "a", "target=isolated"]);
    s.expect(&all().expect("", "x/a", false));
}

/// "should deny egress from pods based on PodSelector" and "should deny egress from all
/// pods in a namespace"
#[test]
fn deny_egress() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "deny-egress-a",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]",
    ));
    s.apply(&policy(
        "y",
        "deny-egress-all",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress: []",
    ));
    s.expect(&all().expect("x/a", "", false).expect("y", "", false));
}

/// "should work with Ingress, Egress specified together" and "should support denying of
/// egress traffic on the client side (even if the server explicitly allows this
/// traffic)": x/a admits only x/b and sends only to namespace y; namespace z admits
/// everyone, which does not let x/a reach it.
#[test]
fn ingress_and_egress_together_and_client_side_deny() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "a-in-and-out",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]",
    ));
    s.apply(&policy(
        "z",
        "allow-all",
        "  podSelector: {}\n  ingress:\n  - {}",
    ));
    s.expect(
        &all()
            .expect("", "x/a", false)
            .expect("x/b", "x/a", true)
            .expect("x/a", "", false)
            .expect("x/a", "y", true),
    );
}

/// "should enforce except clause while egress access to server in CIDR block" and
/// "should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"
#[test]
fn ip_block_with_except() {
    let s = Netpol::up();
    let yb = &s.ips["y/b"];
    let zc = &s.ips["z/c"];
    s.apply(&policy(
        "x",
        "egress-cidr-except",
        &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [{yb}/32, {zc}/32]}}}}]\n  - to: [{{ipBlock: {{cidr: {zc}/32}}}}]\n    ports: [{{port: 81, protocol: UDP}}]"),
    ));
    s.expect(
        &all()
            .expect("x/a", "y/b", false)
            .expect("x/a", "z/c", false)
            .expect_on("x/a", "z/c", Some(81), Some("UDP"), true),
    );
    // The node's whole ruleset lists with the distribution's nft, in text and JSON, the
    // policy table's range elements included (x/a runs on node-1).
    let xa = &s.ips["x/a"];
    let listing = listed_set(&s, "node-1", "egress-ranges");
    // z/c on UDP 81 is within a range element; the except cut y/b out of every one.
    assert!(listing.contains(&format!("{xa} . ")), "{listing}");
    assert!(listing.contains(" . udp . 81,"), "{listing}");
    assert!(!listing.contains(&format!(" {yb} ")), "{listing}");
}

/// Checks that `node`'s whole ruleset lists with the distribution's nft, in text and
/// JSON, naming `set` of the policy table; returns that set's listing on one line.
fn listed_set(s: &Netpol, node: &str, set: &str) -> String {
    for args in [
        &["nft", "list", "ruleset"][..],
        &["nft", "-j", "list", "ruleset"],
    ] {
        let out = s.lab.exec(node, args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("kubewire-policy") && text.contains(set),
            "{text}"
        );
    }
    let out = s
        .lab
        .exec(node, &["nft", "list", "set", "ip", "kubewire-policy", set]);
    String::from_utf8_lossy(&out.stdout).replace(['\t', '\n'], " ")
}

/// "should support egress policy with port range (endPort)" and the ingress one: x/a
/// admits TCP 80-81 from everyone, x/b sends only UDP 81-90.
#[test]
fn end_port_ranges() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "ingress-range",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80, endPort: 81, protocol: TCP}]",
    ));
    s.apply(&policy(
        "x",
        "egress-range",
        "  podSelector: {matchLabels: {pod: b}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 81, endPort: 90, protocol: UDP}]",
    ));
    s.expect(
        &all()
            .expect_on("", "x/a", None, Some("UDP"), false)
            .expect("x/b", "", false)
            .expect_on("x/b", "", Some(81), Some("UDP"), true)
            .expect("x/b", "x/a", false),
    );
}

/// "should not allow access by TCP when a policy specifies only UDP" and "should
/// enforce ingress policy allowing any port traffic to a server on a specific protocol"
#[test]
fn protocols_are_told_apart() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "udp-81-only",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81, protocol: UDP}]",
    ));
    s.apply(&policy(
        "y",
        "any-udp",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: UDP}]",
    ));
    s.expect(
        &all()
            .expect("", "x/a", false)
            .expect_on("", "x/a", Some(81), Some("UDP"), true)
            .expect_on("", "y/a", None, Some("TCP"), false),
    );
}

/// "should enforce multiple ingress policies with ingress allow-all policy taking
/// precedence" and "should stop enforcing policies after they are deleted"
#[test]
fn allow_all_takes_precedence_and_deleted_policies_stop() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-b-on-80",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n    ports: [{port: 80}]",
    ));
    s.apply(&policy(
        "y",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    ));
    s.expect(
        &all()
            .expect("", "x/a", false)
            .expect_on("x/b", "x/a", Some(80), Some("TCP"), true)
            .expect("", "y", false)
            .expect("y", "", false),
    );
    s.apply(&policy(
        "x",
        "allow-all",
        "  podSelector: {}\n  ingress:\n  - {}",
    ));
    s.expect(&all().expect("", "y", false).expect("y", "", false));
    s.lab
        .kubectl(&["delete", "networkpolicy", "-n", "y", "deny-all"]);
    s.expect(&all());
}

/// Holds a TCP connection and a connected UDP socket to each address given, checks each
/// echoes, waits for a line on stdin, then checks again: `before|after` and one
/// True/False per socket.
const HOLD: &str = r#"
import socket, sys
socks = []
for ip in sys.argv[1:]:
    t = socket.create_connection((ip, 80), timeout=2)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect((ip, 80))
    socks += [t, u]
def echo(s):
    try:
        s.settimeout(2)
        s.send(b"kubewire")
        return s.recv(16) == b"kubewire"
    except OSError:
        return False
print("before", *[echo(s) for s in socks], flush=True)
sys.stdin.readline()
print("after", *[echo(s) for s in socks], flush=True)
"#;

/// Not upstream's: established connections that a new policy denies are cut (their
/// conntrack entries deleted, so their next packet is judged again), TCP and UDP; those
/// it still allows are kept.
#[test]
fn established_connections_a_policy_denies_are_cut() {
    let s = Netpol::up();
    let mut client = s.spawn_python("y/a", HOLD, &[&s.ips["x/a"], &s.ips["x/b"]]);
    let mut out = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "before True True True True", "{line}");
    s.apply(&policy(
        "x",
        "a-only-from-x",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {}}]",
    ));
    s.expect(&all().expect("", "x/a", false).expect("x", "x/a", true));
    writeln!(client.stdin.as_mut().unwrap()).unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    // y/a to x/a: cut, TCP and UDP; y/a to x/b: still allowed, kept.
    assert_eq!(line.trim(), "after False False True True", "{line}");
    let _ = client.wait();
}

/// The usual allow rules under default deny: "egress to DNS only" keeps name
/// resolution working (the upstream suite's DNS egress rule), and kubelet probes, sent
/// from the node, still reach a pod every policy isolates.
#[test]
fn dns_and_probes_under_default_deny() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]",
    ));
    s.apply(&policy(
        "x",
        "allow-dns",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]",
    ));
    s.expect(&all().expect("", "x", false).expect("x", "", false));
    // dig, in x/a, through the kube-dns ClusterIP: UDP, then TCP.
    for transport in ["+notcp", "+tcp"] {
        let out = s.lab.exec(
            "x/a",
            &[
                "dig",
                "+short",
                "+time=2",
                "+tries=3",
                transport,
                "kubernetes.default.svc.cluster.local",
            ],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "10.96.0.1",
            "dig {transport}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // A pod isolated from its first moment becomes and stays ready on its probes.
    s.apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probed\n  namespace: \"x\"\nspec:\n  containers:\n  - name: web\n    image: nginx\n    readinessProbe:\n      httpGet: {path: /, port: 80}\n      periodSeconds: 1\n    livenessProbe:\n      tcpSocket: {port: 80}\n      periodSeconds: 1\n",
    );
    s.lab.kubectl(&[
        "wait",
        "-n",
        "x",
        "--for=condition=Ready",
        "pod/probed",
        "--timeout=60s",
    ]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pod = s.lab.json(&["get", "pod", "-n", "x", "probed"]);
    let status = &pod["status"]["containerStatuses"][0];
    assert_eq!(status["ready"], true, "{pod}");
    assert_eq!(status["restartCount"], 0, "{pod}");
}

/// Connects, first thing at its start, to each `ip:port` given (TCP, echo checked, 2 s
/// each) and prints `ip:port ok|blocked` for each, then sleeps.
const FIRST_PACKET: &str = r#"
import socket, sys, time
for target in sys.argv[1:]:
    ip, port = target.rsplit(":", 1)
    try:
        s = socket.create_connection((ip, int(port)), timeout=2)
        s.settimeout(2)
        s.send(b"kubewire")
        ok = s.recv(16) == b"kubewire"
    except OSError:
        ok = False
    print(target, "ok" if ok else "blocked", flush=True)
time.sleep(100000)
"#;

/// "A new pod's first packet", in the lab through its kubelet: the connections a new
/// pod's container makes first thing are judged by its policies. (Here the kubelet's
/// status write races the container's start; the next test takes that race away.)
#[test]
fn a_new_pods_first_packets_meet_its_policies() {
    let s = Netpol::up();
    // Egress of x/c and of the pod to come only to y/a on TCP 80; x/c shows when the
    // agents have the policy.
    s.apply(&policy(
        "x",
        "egress-to-y-a",
        "  podSelector: {matchExpressions: [{key: pod, operator: In, values: [c, new]}]}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}, podSelector: {matchLabels: {pod: a}}}]\n    ports: [{port: 80}]",
    ));
    s.expect(
        &all()
            .expect("x/c", "", false)
            .expect_on("x/c", "y/a", Some(80), Some("TCP"), true),
    );
    let (ya, yb) = (&s.ips["y/a"], &s.ips["y/b"]);
    let script = serde_json::to_string(FIRST_PACKET).unwrap();
    s.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: new\n  namespace: \"x\"\n  labels: {{pod: new}}\nspec:\n  nodeName: node-1\n  containers:\n  - name: client\n    image: busybox\n    command: [python3, -c, {script}, \"{ya}:80\", \"{ya}:81\", \"{yb}:80\"]\n"
    ));
    let mut logs = String::new();
    let done = e2e::wait_until(std::time::Duration::from_secs(60), || {
        let out = e2e::cluster::kubectl(&s.lab.kubeconfig, &["logs", "-n", "x", "new"]);
        logs = String::from_utf8_lossy(&out.stdout).into_owned();
        logs.lines().count() >= 3
    });
    assert!(done, "the new pod printed no verdicts: {logs:?}");
    assert_eq!(
        logs.lines().collect::<Vec<_>>(),
        [
            format!("{ya}:80 ok"),
            format!("{ya}:81 blocked"),
            format!("{yb}:80 blocked")
        ],
    );
}

/// The first-packet guarantee itself, with no status to race it: in a cluster of bare
/// agents with no kubelet, pods that exist in the API are wired by the plugin as
/// kubelet would call it (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`). No status ever carries
/// their addresses, so only ADD's wait (the plugin tells the agent the addresses and
/// returns once the agent has them in the table) can isolate them: the first ping after
/// ADD must already be dropped, and a pod no policy selects is not held.
#[test]
fn add_returns_only_once_the_pods_policies_are_in_force() {
    let mut c = e2e::cluster::Cluster::up("native");
    let server = c.add_pod(2);
    let target = c.pods[server].1[0].clone();
    let pod = |ns: &str, name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "client"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "busybox"}]}})
    };
    c.apply(
        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "free"}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "deny-egress", "namespace": "x"},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"]}},
            pod("x", "first"), pod("x", "second"), pod("free", "third"),
        ]}),
    );
    // The agent has the policy once it isolates a first pod.
    let first = c.add_api_pod(1, "x", "first");
    assert!(
        e2e::wait_until(std::time::Duration::from_secs(20), || !c.ping(
            first,
            &target,
            &[]
        )),
        "x/first was never isolated:\n{}",
        c.log("agent-1.log")
    );
    let second = c.add_api_pod(1, "x", "second");
    assert!(
        !c.ping(second, &target, &[]),
        "x/second's first ping went through:\n{}",
        c.log("agent-1.log")
    );
    let third = c.add_api_pod(1, "free", "third");
    assert!(c.ping(third, &target, &[]), "{}", c.log("agent-1.log"));
}

// The admin tiers: network-policy-api's ClusterNetworkPolicy (v1alpha2), judged before
// (Admin) and after (Baseline) NetworkPolicy, in the same setting.

/// A ClusterNetworkPolicy `name` of `tier` at `priority` with `rest` (YAML, indented as
/// under `spec:`: subject and rules).
fn cluster_policy(name: &str, tier: &str, priority: u32, rest: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: {name}\nspec:\n  tier: {tier}\n  priority: {priority}\n{rest}\n---\n"
    )
}

/// A peer or subject: the pods of namespace `ns`.
fn namespace(ns: &str) -> String {
    format!("{{namespaces: {{matchLabels: {{kubernetes.io/metadata.name: \"{ns}\"}}}}}}")
}

/// An Admin tier Deny beats a NetworkPolicy's allow; what it does not match is left to
/// the NetworkPolicy. The node's ruleset lists with the tiers' sets in it.
#[test]
fn admin_deny_over_a_network_policy_allow() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "allow-from-y",
        "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]",
    ));
    s.expect(&all().expect("", "x", false).expect("y", "x", true));
    s.apply(&cluster_policy(
        "deny-y-to-x-on-tcp-80",
        "Admin",
        10,
        &format!(
            "  subject: {}\n  ingress:\n  - name: deny-y\n    action: Deny\n    from: [{}]\n    protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]",
            namespace("x"),
            namespace("y")
        ),
    ));
    s.expect(
        &all()
            .expect("", "x", false)
            .expect("y", "x", true)
            .expect_on("y", "x", Some(80), Some("TCP"), false),
    );
    let listing = listed_set(&s, "node-1", "ingress-admin-deny");
    assert!(listing.contains(" . tcp . 80"), "{listing}");
    // Deleted, the NetworkPolicy alone decides again.
    s.lab
        .kubectl(&["delete", "clusternetworkpolicy", "deny-y-to-x-on-tcp-80"]);
    s.expect(&all().expect("", "x", false).expect("y", "x", true));
}

/// Pass hands a connection to NetworkPolicy where one isolates the pod, else to the
/// Baseline tier; what the Admin tier denies stays denied.
#[test]
fn pass_hands_the_decision_to_the_next_tier() {
    let s = Netpol::up();
    s.apply(&cluster_policy(
        "x-from-y-only",
        "Admin",
        5,
        &format!(
            "  subject: {}\n  ingress:\n  - name: y-to-the-next-tier\n    action: Pass\n    from: [{}]\n  - name: nobody-else\n    action: Deny\n    from: [{{namespaces: {{}}}}]",
            namespace("x"),
            namespace("y")
        ),
    ));
    s.apply(&policy(
        "x",
        "only-y-a",
        "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}, podSelector: {matchLabels: {pod: a}}}]",
    ));
    s.apply(&cluster_policy(
        "baseline-no-y-b",
        "Baseline",
        10,
        &format!(
            "  subject: {}\n  ingress:\n  - name: not-y-b\n    action: Deny\n    from: [{{pods: {{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: \"y\"}}}}, podSelector: {{matchLabels: {{pod: b}}}}}}}}]",
            namespace("x"),
        ),
    ));
    // Passed to the NetworkPolicy: y/a only.
    s.expect(&all().expect("", "x", false).expect("y/a", "x", true));
    // No NetworkPolicy: passed on to the Baseline tier, which denies y/b only.
    s.lab
        .kubectl(&["delete", "networkpolicy", "-n", "x", "only-y-a"]);
    s.expect(
        &all()
            .expect("", "x", false)
            .expect("y", "x", true)
            .expect("y/b", "x", false),
    );
}

/// The Baseline tier decides only for pods no NetworkPolicy isolates: an isolated pod
/// gets its NetworkPolicy's verdict, whichever way the Baseline tier would go.
#[test]
fn baseline_applies_only_where_no_network_policy_selects() {
    let s = Netpol::up();
    s.apply(&cluster_policy(
        "nothing-from-z",
        "Baseline",
        10,
        &format!(
            "  subject: {{namespaces: {{}}}}\n  ingress:\n  - name: deny-z\n    action: Deny\n    from: [{}]",
            namespace("z")
        ),
    ));
    s.expect(&all().expect("z", "", false));
    s.apply(&policy(
        "y",
        "y-a-from-z",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"z\"}}}]",
    ));
    s.expect(
        &all()
            .expect("z", "", false)
            .expect("", "y/a", false)
            .expect("z", "y/a", true),
    );
}

/// Lower priorities are judged first, and a change of priority reorders them; an egress
/// Deny to a network matches pod addresses in it.
#[test]
fn priorities_order_the_admin_tier() {
    let s = Netpol::up();
    let rule = |action: &str| {
        format!(
            "  subject: {}\n  ingress:\n  - name: from-y\n    action: {action}\n    from: [{}]",
            namespace("x"),
            namespace("y")
        )
    };
    s.apply(&policy(
        "x",
        "deny-all",
        "  podSelector: {}\n  policyTypes: [Ingress]",
    ));
    s.apply(&cluster_policy("accept-y", "Admin", 30, &rule("Accept")));
    s.apply(&cluster_policy("deny-y", "Admin", 20, &rule("Deny")));
    s.expect(&all().expect("", "x", false));
    s.apply(&cluster_policy("accept-y", "Admin", 10, &rule("Accept")));
    s.expect(&all().expect("", "x", false).expect("y", "x", true));
    let za = &s.ips["z/a"];
    s.apply(&cluster_policy(
        "y-not-to-z-a",
        "Admin",
        1,
        &format!(
            "  subject: {}\n  egress:\n  - name: z-a\n    action: Deny\n    to: [{{networks: [\"{za}/32\"]}}]",
            namespace("y")
        ),
    ));
    s.expect(
        &all()
            .expect("", "x", false)
            .expect("y", "x", true)
            .expect("y", "z/a", false),
    );
}

/// Denied packets are logged by the agent of the node that denied them, with the pods
/// and the policy that denied them: a NetworkPolicy's isolation and an Admin tier rule.
#[test]
fn denied_packets_are_logged_with_the_policy_that_denied_them() {
    let s = Netpol::up();
    s.apply(&policy(
        "x",
        "deny-ingress",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]",
    ));
    s.apply(&cluster_policy(
        "no-z-to-y",
        "Admin",
        3,
        &format!(
            "  subject: {}\n  ingress:\n  - name: not-from-z\n    action: Deny\n    from: [{}]",
            namespace("y"),
            namespace("z")
        ),
    ));
    s.expect(&all().expect("", "x/a", false).expect("z", "y", false));
    // x/a and y/b run on node-1: its agent denied and logged their ingress.
    let (xa, yb) = (&s.ips["x/a"], &s.ips["y/b"]);
    let wants = [
        format!("to=x/a ({xa})"),
        "reason=ingress of x/a: isolated by NetworkPolicy x/deny-ingress, and no rule of them allows it".to_owned(),
        format!("to=y/b ({yb})"),
        "reason=ingress of y/b: ClusterNetworkPolicy no-z-to-y (Admin tier), rule not-from-z".to_owned(),
    ];
    let mut logs = String::new();
    let found = e2e::wait_until(std::time::Duration::from_secs(20), || {
        let pods = s.lab.kubectl(&[
            "get",
            "pods",
            "-n",
            "kube-system",
            "-l",
            "app.kubernetes.io/name=kubewire-agent",
            "--field-selector",
            "spec.nodeName=node-1",
            "-o",
            "name",
        ]);
        let pod = pods.trim();
        logs = s.lab.kubectl(&["logs", "-n", "kube-system", pod]);
        let denied: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("network policy denied a connection"))
            .collect();
        wants
            .iter()
            .all(|w| denied.iter().any(|l| l.contains(w.as_str())))
    });
    assert!(found, "wanted {wants:#?} in the agent's log:\n{logs}");
}

/// An egress `nodes` peer (the experimental channel's, which kubewire installs) matches
/// the addresses of the nodes it selects by label: here the kubelet's port on node-2,
/// from x/a through node-1's forward path and from x/b, on node-2, through node-2's input
/// path; node-1's address and other namespaces' pods are not affected.
#[test]
fn egress_to_nodes_selected_by_label() {
    let s = Netpol::up();
    let nodes = s.lab.json(&["get", "nodes"]);
    let ip_of = |name: &str| -> String {
        let node = nodes["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["metadata"]["name"] == name)
            .unwrap();
        node["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["type"] == "InternalIP")
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (one, two) = (ip_of("node-1"), ip_of("node-2"));
    // Whether `from` connects to the kubelet on each of `ips` within a second.
    let connects = |from: &str, ips: &[&str]| -> Vec<bool> {
        let script = "import socket, sys\nfor ip in sys.argv[1:]:\n    try:\n        socket.create_connection((ip, 10250), timeout=1).close(); print('ok')\n    except OSError:\n        print('fail')\n";
        let mut argv = vec!["python3", "-c", script];
        argv.extend_from_slice(ips);
        let out = s.lab.exec(from, &argv);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l == "ok")
            .collect()
    };
    assert_eq!(connects("x/a", &[&one, &two]), [true, true]);
    s.apply(&cluster_policy(
        "x-not-to-node-2",
        "Admin",
        5,
        &format!(
            "  subject: {}\n  egress:\n  - name: kubelet-of-node-2\n    action: Deny\n    to: [{{nodes: {{matchLabels: {{kubernetes.io/hostname: node-2}}}}}}]\n    protocols: [{{tcp: {{destinationPort: {{number: 10250}}}}}}]",
            namespace("x")
        ),
    ));
    let denied = e2e::wait_until(std::time::Duration::from_secs(20), || {
        connects("x/a", &[&one, &two]) == [true, false]
    });
    assert!(denied, "{:?}", connects("x/a", &[&one, &two]));
    // x/b runs on node-2: its own node's address, judged in node-2's input path.
    assert_eq!(connects("x/b", &[&one, &two]), [true, false]);
    assert_eq!(connects("y/a", &[&one, &two]), [true, true]);
}
