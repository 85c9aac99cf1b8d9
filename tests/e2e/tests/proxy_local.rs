//! `externalTrafficPolicy: Local` in a cluster: the client's address reaches the
//! endpoint, a node without a local endpoint drops external traffic, and the
//! `healthCheckNodePort` servers say which node has endpoints. Real pods, Services and
//! EndpointSlices made through the API by the test, clients in the lab's `outside`.
//! Needs root; fails, never skips.

use std::time::Duration;

use e2e::cluster::{Cluster, PROBE, WHO_SERVER, probe_in, python_in};
use e2e::wait_until;
use serde_json::json;

/// GET http://argv[1]:argv[2]/healthz: prints the status and the body.
const HTTP_GET: &str = r#"
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=2)
try:
    c.request('GET', '/healthz')
    r = c.getresponse()
    print(r.status, r.read().decode())
except Exception as e:
    print('error', e)
"#;

#[test]
fn external_traffic_policy_local_keeps_the_client_address_and_health_checks_answer() {
    let mut c = Cluster::up("native");
    let a = c.add_pod(1);
    let _a = c.pods[a]
        .0
        .spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", "a"]);
    let a_ip = c.pods[a].1[0].clone();
    c.apply(&json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "local", "namespace": "default"},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.20.10",
                 "externalTrafficPolicy": "Local", "healthCheckNodePort": 32101,
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 31101}]}
    }));
    c.apply(&json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "local-test", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "local"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a_ip], "nodeName": "node-1", "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    }));
    let outside = c.outside_ns();
    let logs = || format!("{}\n{}", c.log("agent-1.log"), c.log("agent-2.log"));

    // The node with the endpoint: the endpoint sees the outside's own address.
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = probe_in(&outside, "198.18.0.11", 31101);
            last.starts_with("ok a ")
        }),
        "node port on node-1: {last}\n{}",
        logs()
    );
    assert_eq!(
        last, "ok a 198.18.0.254",
        "externalTrafficPolicy: Local must keep the client's address"
    );

    // Health checks: 200 with one local endpoint on node-1, 503 on node-2.
    let mut health = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            health = python_in(&outside, HTTP_GET, &["198.18.0.11", "32101"]);
            health.starts_with("200 ")
        }),
        "health check on node-1: {health}\n{}",
        logs()
    );
    assert!(health.contains(r#""localEndpoints":1"#), "{health}");
    assert!(health.contains(r#""name":"local""#), "{health}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            health = python_in(&outside, HTTP_GET, &["198.18.0.12", "32101"]);
            health.starts_with("503 ")
        }),
        "health check on node-2: {health}\n{}",
        logs()
    );
    assert!(health.contains(r#""localEndpoints":0"#), "{health}");

    // The node without one drops external traffic (no reset, no forwarding).
    let other = python_in(&outside, PROBE, &["198.18.0.12", "31101", "1"]);
    assert_eq!(other, "timeout", "node-2 must drop: {other}");

    // From a pod on node-2 the service still works (pods short-circuit to every
    // endpoint), through the node port and the ClusterIP.
    let p = c.add_pod(2);
    let pod_ns = c.pods[p].0.name().to_owned();
    assert!(
        probe_in(&pod_ns, "10.96.20.10", 80).starts_with("ok a "),
        "ClusterIP from node-2's pod"
    );
}
