//! State that must survive changes, in a cluster: session affinity sticks, a UDP
//! client is moved to the new endpoint when its old one is replaced (the stale
//! conntrack entry is deleted), and a rolling restart of the agents keeps an
//! established TCP connection through a ClusterIP (no reset) and a sticky client's
//! endpoint. Real pods; Services and EndpointSlices made through the API by the
//! test. Needs root; fails, never skips.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use e2e::cluster::{
    Cluster, ECHO_CLIENT, ECHO_SERVER, UDP_CLIENT, UDP_SERVER, WHO_SERVER, probe_in, python_in,
};
use e2e::{KillOnDrop, wait_until};
use serde_json::{Value, json};

fn service(name: &str, ip: &str, port: u16, target: u16, proto: &str, extra: Value) -> Value {
    let mut spec = json!({"clusterIP": ip,
        "ports": [{"name": "p", "port": port, "targetPort": target, "protocol": proto}]});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn slice(service: &str, port: u16, proto: &str, endpoints: &[(&str, &str)]) -> Value {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(ip, node)| json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("{service}-test"), "namespace": "default",
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "endpoints": eps,
        "ports": [{"name": "p", "port": port, "protocol": proto}]
    })
}

/// An interactive [`ECHO_CLIENT`] in a namespace, one connection for its lifetime.
struct LongConnection {
    child: Child,
    lines: BufReader<std::process::ChildStdout>,
}

impl LongConnection {
    fn open(netns: &str, addr: &str, port: u16) -> Self {
        let args = [addr.to_owned(), port.to_string()];
        let mut child = netlink::netns::run_in(netns, move || {
            std::process::Command::new("python3")
                .arg("-c")
                .arg(ECHO_CLIENT)
                .args(&args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
        })
        .unwrap()
        .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap());
        LongConnection { child, lines }
    }

    /// Sends a line, returns the answer.
    fn ask(&mut self, line: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
        let mut answer = String::new();
        self.lines.read_line(&mut answer).unwrap();
        answer.trim().to_owned()
    }
}

impl Drop for LongConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn affinity_sticks_udp_follows_a_replaced_endpoint_and_restarts_keep_connections() {
    let mut c = Cluster::up("native");
    let a = c.add_pod(1);
    let b = c.add_pod(2);
    let client = c.add_pod(1);
    let (a_ip, b_ip) = (c.pods[a].1[0].clone(), c.pods[b].1[0].clone());
    let mut servers: Vec<KillOnDrop> = Vec::new();
    for (i, name) in [(a, "a"), (b, "b")] {
        let pod = &c.pods[i].0;
        servers.push(pod.spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", name]));
        servers.push(pod.spawn("python3", &["-c", UDP_SERVER, "0.0.0.0", "5353", name]));
        servers.push(pod.spawn("python3", &["-c", ECHO_SERVER, "0.0.0.0", "9000", name]));
    }
    c.apply(&service(
        "sticky",
        "10.96.30.10",
        80,
        8080,
        "TCP",
        json!({"sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}),
    ));
    c.apply(&slice(
        "sticky",
        8080,
        "TCP",
        &[(&a_ip, "node-1"), (&b_ip, "node-2")],
    ));
    c.apply(&service("dns", "10.96.30.53", 53, 5353, "UDP", json!({})));
    c.apply(&slice("dns", 5353, "UDP", &[(&a_ip, "node-1")]));
    c.apply(&service("long", "10.96.30.90", 90, 9000, "TCP", json!({})));
    c.apply(&slice("long", 9000, "TCP", &[(&a_ip, "node-1")]));
    let client_ns = c.pods[client].0.name().to_owned();
    let logs = |c: &Cluster| format!("{}\n{}", c.log("agent-1.log"), c.log("agent-2.log"));

    // Affinity: once a client got an endpoint, it keeps getting that one.
    let mut first = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            first = probe_in(&client_ns, "10.96.30.10", 80);
            first.starts_with("ok ")
        }),
        "sticky service: {first}\n{}",
        logs(&c)
    );
    for _ in 0..12 {
        assert_eq!(
            probe_in(&client_ns, "10.96.30.10", 80),
            first,
            "affinity must stick"
        );
    }

    // UDP from one client port: a answers; after a is replaced by b in the slice the
    // same client port must reach b, not keep going to a through its old entry.
    let udp = || {
        python_in(&client_ns, UDP_CLIENT, &["10.96.30.53", "53", "40053"])
            .lines()
            .last()
            .unwrap_or_default()
            .to_owned()
    };
    let mut got = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            got = udp();
            got == "a"
        }),
        "UDP to a: {got}\n{}",
        logs(&c)
    );
    c.apply(&slice("dns", 5353, "UDP", &[(&b_ip, "node-2")]));
    assert!(
        wait_until(Duration::from_secs(20), || {
            got = udp();
            got == "b"
        }),
        "UDP after replacing a by b, same client port: {got}\n{}",
        logs(&c)
    );

    // A long TCP connection through a ClusterIP survives a rolling restart of the
    // agents (killed, as an upgrade or a crash would), and the sticky client keeps
    // its endpoint: the new agent carries the affinity entries into its new table.
    let mut conn = LongConnection::open(&client_ns, "10.96.30.90", 90);
    assert_eq!(conn.ask("1"), "a 1");
    c.restart_agent(1);
    // Once the new agent has synced, a service created after the restart works.
    c.apply(&service("after", "10.96.30.91", 80, 8080, "TCP", json!({})));
    c.apply(&slice("after", 8080, "TCP", &[(&a_ip, "node-1")]));
    let mut after = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            after = probe_in(&client_ns, "10.96.30.91", 80);
            after.starts_with("ok a ")
        }),
        "a service made after the restart: {after}\n{}",
        logs(&c)
    );
    assert_eq!(
        conn.ask("2"),
        "a 2",
        "the connection must survive the restart"
    );
    // The new agent replaced the table in full (the service made after the restart
    // answers): the client still gets its endpoint, every time.
    for _ in 0..12 {
        assert_eq!(
            probe_in(&client_ns, "10.96.30.10", 80),
            first,
            "affinity must survive the restart\n{}",
            logs(&c)
        );
    }
    assert!(
        c.log("agent-1.log")
            .contains("session affinity entries kept from the tables replaced"),
        "{}",
        c.log("agent-1.log")
    );
    // The other node's agent next; then both again.
    c.restart_agent(2);
    c.restart_agent(1);
    let mut again = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            again = conn.ask("3");
            again == "a 3"
        }),
        "the connection after the rolling restart: {again}\n{}",
        logs(&c)
    );
    c.apply(&service("later", "10.96.30.92", 80, 8080, "TCP", json!({})));
    c.apply(&slice("later", 8080, "TCP", &[(&b_ip, "node-2")]));
    assert!(
        wait_until(Duration::from_secs(20), || probe_in(
            &client_ns,
            "10.96.30.92",
            80
        )
        .starts_with("ok b ")),
        "a service made after the second restart\n{}",
        logs(&c)
    );
    for _ in 0..12 {
        assert_eq!(probe_in(&client_ns, "10.96.30.10", 80), first);
    }
}
