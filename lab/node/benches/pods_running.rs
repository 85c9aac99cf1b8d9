//! How long `kubewire node` takes to bring pods to Running and Ready: a two-node lab
//! (the test harness's cluster), N whoami pods created at once with kubectl (bound to
//! alternating nodes), timed until every pod is Ready, then until all are deleted.
//! Needs root. `cargo bench -p node --bench pods_running -- [N]` (default 100).

#![allow(clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100);
    let c = common::NodeCluster::up();
    let items: Vec<Value> = (0..n)
        .map(|i| {
            common::pod(
                &format!("p{i}"),
                u8::try_from(1 + i % 2).unwrap(),
                json!([{"name": "web", "image": "nginx"}]),
            )
        })
        .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    let file = c.dir.path().join("pods.json");
    std::fs::write(&file, list.to_string()).unwrap();
    let ready = |c: &common::NodeCluster| -> usize {
        let out = c.kubectl_ok(&["get", "pods", "-o", "json"]);
        let v: Value = serde_json::from_str(&out).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| common::condition(p, "Ready"))
            .count()
    };
    let start = Instant::now();
    c.kubectl_ok(&["create", "-f", file.to_str().unwrap()]);
    let created = start.elapsed();
    assert!(
        e2e::wait_until(Duration::from_secs(120), || ready(&c) == n),
        "not all {n} pods became Ready"
    );
    let all_ready = start.elapsed();
    let start = Instant::now();
    c.kubectl_ok(&["delete", "pods", "--all", "--wait=false"]);
    assert!(
        e2e::wait_until(Duration::from_secs(120), || c
            .kubectl_ok(&["get", "pods", "-o", "name"])
            .trim()
            .is_empty()),
        "not all pods were deleted"
    );
    let deleted = start.elapsed();
    println!(
        "{n} pods on 2 nodes: created in {:.2}s, all Ready after {:.2}s; all deleted after {:.2}s",
        created.as_secs_f64(),
        all_ready.as_secs_f64(),
        deleted.as_secs_f64()
    );
}
