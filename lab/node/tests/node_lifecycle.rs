//! End to end: graceful deletion (SIGTERM, grace period, SIGKILL, CNI DEL, namespace
//! removed, pod deleted only then), probes driving Ready and restarts, restart policies
//! and crash loops. Needs root.

mod common;

use std::time::Duration;

use common::{NodeCluster, condition, pod};
use e2e::wait_until;
use serde_json::{Value, json};

fn restarts(p: &Value) -> i64 {
    p["status"]["containerStatuses"][0]["restartCount"]
        .as_i64()
        .unwrap_or(0)
}

#[test]
fn graceful_deletion_probes_and_restarts() {
    let c = NodeCluster::up();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().display().to_string();

    // A container that records SIGTERM, one that ignores it (needs SIGKILL).
    c.create(&pod(
        "term",
        1,
        json!([{"name": "c", "image": "busybox", "command": ["sh", "-c",
        format!("trap 'echo TERM > {t}/term; exit 0' TERM; while :; do sleep 0.1; done")]}]),
    ));
    let mut stubborn = pod(
        "stubborn",
        2,
        json!([{"name": "c", "image": "busybox", "command": ["sh", "-c",
        "trap '' TERM; while :; do sleep 0.1; done"]}]),
    );
    stubborn["spec"]["terminationGracePeriodSeconds"] = json!(1);
    c.create(&stubborn);
    // Readiness from an exec probe run inside the container; liveness that fails.
    c.create(&pod("probed", 1, json!([{"name": "web", "image": "nginx",
        "readinessProbe": {"exec": {"command": ["test", "-f", format!("{t}/ready")]}, "periodSeconds": 1, "failureThreshold": 1}}])));
    c.create(&pod("unlive", 2, json!([{"name": "c", "image": "busybox",
        "livenessProbe": {"exec": {"command": ["test", "-f", format!("{t}/live")]}, "periodSeconds": 1, "failureThreshold": 1}}])));
    // Restart policies.
    let mut never = pod(
        "never",
        1,
        json!([{"name": "c", "image": "busybox", "command": ["sh", "-c", "exit 3"]}]),
    );
    never["spec"]["restartPolicy"] = json!("Never");
    c.create(&never);
    let mut once = pod(
        "once",
        1,
        json!([{"name": "c", "image": "busybox", "command": ["true"]}]),
    );
    once["spec"]["restartPolicy"] = json!("OnFailure");
    c.create(&once);
    c.create(&pod(
        "crash",
        2,
        json!([{"name": "c", "image": "busybox", "command": ["sh", "-c", "echo crashed; exit 1"]}]),
    ));

    // A plain process (default SIGTERM disposition) with a long grace period: SIGTERM
    // alone must end it, long before the grace period would.
    let mut plain = pod(
        "plain",
        2,
        json!([{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]),
    );
    plain["spec"]["terminationGracePeriodSeconds"] = json!(600);
    c.create(&plain);

    // Init containers run in order, to completion, before the app container.
    let mut inits = pod(
        "inits",
        1,
        json!([{"name": "app", "image": "busybox",
        "command": ["sh", "-c", format!("cat {t}/init; exec sleep 3600")]}]),
    );
    inits["spec"]["initContainers"] = json!([
        {"name": "one", "image": "busybox", "command": ["sh", "-c", format!("echo one > {t}/init")]},
        {"name": "two", "image": "busybox", "command": ["sh", "-c", format!("echo two >> {t}/init")]}]);
    c.create(&inits);
    let mut bad_init = pod("bad-init", 2, json!([{"name": "app", "image": "busybox"}]));
    bad_init["spec"]["initContainers"] =
        json!([{"name": "fail", "image": "busybox", "command": ["false"]}]);
    bad_init["spec"]["restartPolicy"] = json!("Never");
    c.create(&bad_init);

    let term = c.wait_ready("term");
    let ip = term["status"]["podIP"].as_str().unwrap().to_owned();
    let netns = c.pod_ns(&term);
    assert!(netlink::netns::exists(&netns));
    c.wait_ready("stubborn");

    c.kubectl_ok(&["delete", "pod", "term", "--wait=false"]);
    // Terminating until the node is done, then gone.
    let gone = wait_until(Duration::from_secs(20), || c.get("pod", "term").is_none());
    assert!(gone, "pod term was not deleted\n{}", c.logs());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("term")).unwrap_or_default(),
        "TERM\n",
        "no SIGTERM seen"
    );
    assert!(!netlink::netns::exists(&netns), "{netns} left behind");
    let ipam = std::fs::read_to_string(c.dir.path().join("node-1/cni/kubewire/state.json"))
        .unwrap_or_default();
    assert!(
        !ipam.contains(&format!("\"{ip}")),
        "{ip} still allocated: {ipam}"
    );
    assert!(
        !c.data_dir(1)
            .join("pods")
            .join(term["metadata"]["uid"].as_str().unwrap())
            .exists()
    );

    c.wait_ready("plain");
    c.kubectl_ok(&["delete", "pod", "plain", "--wait=false"]);
    assert!(
        wait_until(Duration::from_secs(20), || c.get("pod", "plain").is_none()),
        "SIGTERM did not end `sleep`\n{}",
        c.logs()
    );

    c.kubectl_ok(&["delete", "pod", "stubborn", "--wait=false"]);
    let p = c.get("pod", "stubborn");
    assert!(
        p.is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string()),
        "a pod ignoring SIGTERM must stay Terminating during its grace period"
    );
    assert!(
        wait_until(Duration::from_secs(20), || c
            .get("pod", "stubborn")
            .is_none()),
        "stubborn not killed\n{}",
        c.logs()
    );

    // Readiness follows the probe both ways.
    let p = c.wait_pod("probed", "running, not ready", |p| {
        p["status"]["phase"] == "Running"
    });
    assert!(
        !condition(&p, "Ready"),
        "ready without a passing probe: {:#}",
        p["status"]
    );
    std::fs::write(tmp.path().join("ready"), "").unwrap();
    c.wait_pod("probed", "Ready after the probe passes", |p| {
        condition(p, "Ready")
    });
    std::fs::remove_file(tmp.path().join("ready")).unwrap();
    let p = c.wait_pod("probed", "not Ready after the probe fails", |p| {
        !condition(p, "Ready")
    });
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(restarts(&p), 0, "readiness failures must not restart");

    // Liveness failures restart the container.
    let p = c.wait_pod("unlive", "restarted by its liveness probe", |p| {
        restarts(p) >= 1
    });
    assert!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"].is_object(),
        "{:#}",
        p["status"]
    );

    let p = c.wait_pod("never", "Failed", |p| p["status"]["phase"] == "Failed");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        3
    );
    assert_eq!(restarts(&p), 0);
    let p = c.wait_pod("once", "Succeeded", |p| p["status"]["phase"] == "Succeeded");
    assert_eq!(
        p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let p = c.wait_pod("crash", "crash looping", |p| restarts(p) >= 2);
    assert_eq!(p["status"]["phase"], "Running");
    let p = c.wait_ready("inits");
    assert!(condition(&p, "Initialized"));
    for i in 0..2 {
        let st = &p["status"]["initContainerStatuses"][i];
        assert_eq!(st["state"]["terminated"]["reason"], "Completed", "{st:#}");
    }
    assert!(wait_until(Duration::from_secs(10), || c
        .kubectl_ok(&["logs", "inits", "-c", "app"])
        == "one\ntwo\n"));
    let p = c.wait_pod("bad-init", "Failed by its init container", |p| {
        p["status"]["phase"] == "Failed"
    });
    assert!(!condition(&p, "Initialized"));
    assert!(
        p["status"]["containerStatuses"][0]["state"]["waiting"].is_object(),
        "the app container never started: {:#}",
        p["status"]
    );
    // `kubectl logs --previous`, through the API server's proxy to the kubelet API.
    assert_eq!(c.kubectl_ok(&["logs", "crash", "--previous"]), "crashed\n");
}
