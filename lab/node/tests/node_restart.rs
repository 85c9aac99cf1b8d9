//! End to end: the node process is killed and started again. While it is down its
//! Lease is not renewed (the node lifecycle controller then marks it NotReady) and its
//! containers keep running; the new process adopts the pods from sandbox.json instead
//! of wiring them again, and can still tear them down. Needs root.

mod common;

use std::time::Duration;

use common::{NodeCluster, curl, pod};
use e2e::wait_until;
use serde_json::{Value, json};

fn renew_time(c: &NodeCluster) -> String {
    c.get("lease", "node-1")
        .or_else(|| {
            let out = c.kubectl(&[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                "node-1",
                "-o",
                "json",
            ]);
            out.status
                .success()
                .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
        })
        .map(|l| {
            l["spec"]["renewTime"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Whether `pid` runs (a zombie left for whoever adopted the orphan does not count).
fn running(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

fn sandbox(c: &NodeCluster, uid: &str) -> Value {
    let path = c.data_dir(1).join("pods").join(uid).join("sandbox.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn killed_node_stops_its_lease_and_adopts_its_pods_on_restart() {
    let mut c = NodeCluster::up();
    c.create(&pod("web", 1, json!([{"name": "web", "image": "nginx"}])));
    c.create(&pod(
        "client",
        2,
        json!([{"name": "c", "image": "busybox"}]),
    ));
    let web = c.wait_ready("web");
    let client = c.wait_ready("client");
    let uid = web["metadata"]["uid"].as_str().unwrap().to_owned();
    let ip = web["status"]["podIP"].as_str().unwrap().to_owned();
    let before = sandbox(&c, &uid);
    assert_eq!(before["namespace"], "default");
    assert_eq!(before["netns"], format!("/run/netns/{}", c.pod_ns(&web)));
    let pid = before["containers"]["web"]["pid"].as_u64().unwrap();
    assert!(
        before["containers"]["web"]["log"]
            .as_str()
            .unwrap()
            .ends_with("/0.log")
    );

    let token_path = c
        .data_dir(1)
        .join("pods")
        .join(&uid)
        .join("serviceaccount/token");
    let token = std::fs::read_to_string(&token_path).unwrap();
    assert!(token.len() > 20, "no service account token: {token:?}");
    // The lease is renewed while the node runs.
    let lease = renew_time(&c);
    assert!(!lease.is_empty(), "no lease for node-1");
    assert!(
        wait_until(Duration::from_secs(10), || renew_time(&c) != lease),
        "lease not renewed"
    );

    // Killed: no more renewals; the containers live on.
    c.nodes[0].take();
    let last = renew_time(&c);
    std::thread::sleep(Duration::from_secs(5)); // two and a half renewal periods
    assert_eq!(renew_time(&c), last, "the lease was renewed by a dead node");
    assert!(running(pid), "the container died with the node");
    assert!(curl(&c.pod_ns(&client), &format!("http://{ip}/")).contains("Pod: web"));

    // Restarted: the same sandbox and process, not a second one.
    c.nodes[0] = Some(c.start_node(1));
    assert!(
        wait_until(Duration::from_secs(10), || renew_time(&c) != last),
        "lease not renewed after restart"
    );
    let ours = || {
        netlink::netns::list()
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-p", c.node_ns(1))))
            .count()
    };
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ours(), 1, "{}", c.logs());
    let after = sandbox(&c, &uid);
    assert_eq!(
        after["containers"]["web"]["pid"].as_u64(),
        Some(pid),
        "{}",
        c.logs()
    );
    let web = c.wait_ready("web");
    assert_eq!(web["status"]["podIP"], ip.as_str());
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &token_path
        )
        .is_ok_and(|t| t.len() > 20 && t != token)),
        "the adopted pod's token was not renewed"
    );
    assert_eq!(web["status"]["containerStatuses"][0]["restartCount"], 0);

    // The adopted pod still terminates cleanly.
    c.kubectl_ok(&["delete", "pod", "web", "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(20), || c.get("pod", "web").is_none()),
        "{}",
        c.logs()
    );
    assert!(!running(pid), "adopted container not killed");
    assert_eq!(ours(), 0);
}

/// A pod with an init container survives two restarts of its node process: the second
/// process adopts it as the first did. (An init container adopted as completed once
/// wrote empty times into the pod's status, which no client could read back, so the
/// second process's watch of its pods failed and it removed the sandbox as gone.)
#[test]
fn a_pod_with_an_init_container_survives_two_node_restarts() {
    let mut c = NodeCluster::up();
    let mut manifest = pod("app", 1, json!([{"name": "web", "image": "nginx"}]));
    manifest["spec"]["initContainers"] =
        json!([{"name": "setup", "image": "busybox", "command": ["true"]}]);
    c.create(&manifest);
    let app = c.wait_ready("app");
    let uid = app["metadata"]["uid"].as_str().unwrap().to_owned();
    let pid = sandbox(&c, &uid)["containers"]["web"]["pid"]
        .as_u64()
        .unwrap();
    for restart in 1..=2 {
        c.nodes[0].take();
        c.nodes[0] = Some(c.start_node(1));
        // The restarted process has written the pod's status: the init container's
        // state as it saw it (no times: it did not see that run).
        let app = c.wait_pod("app", "adopted", |p| {
            p["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
                && p["status"]["initContainerStatuses"][0]["state"]["terminated"]
                    .get("containerID")
                    .is_none()
        });
        let terminated = &app["status"]["initContainerStatuses"][0]["state"]["terminated"];
        assert!(
            terminated.get("startedAt").is_none(),
            "restart {restart}: {terminated}"
        );
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            running(pid),
            "restart {restart}: the adopted container was killed\n{}",
            c.logs()
        );
        assert_eq!(
            sandbox(&c, &uid)["containers"]["web"]["pid"].as_u64(),
            Some(pid),
            "restart {restart}\n{}",
            c.logs()
        );
        c.wait_ready("app");
    }
    c.kubectl_ok(&["delete", "pod", "app", "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(20), || c.get("pod", "app").is_none()),
        "{}",
        c.logs()
    );
    assert!(!running(pid), "adopted container not killed");
}
