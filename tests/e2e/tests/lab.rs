//! Tier 3 and 4: the lab's network, driven through the real `kubewire` binary, with
//! `ping` (iputils) as the client.

use e2e::{TestLab, kubewire, require_root};

fn ok(out: &std::process::Output) -> bool {
    out.status.success()
}

#[test]
fn nodes_and_outside_reach_each_other_over_the_underlay() {
    let lab = TestLab::up(2);
    for (from, to) in [
        ("outside", "198.18.0.11"),
        ("node-1", "198.18.0.12"),
        ("node-2", "2001:2::fe"),
    ] {
        let out = lab.exec(from, &["ping", "-c1", "-W2", to]);
        assert!(
            ok(&out),
            "{from} -> {to}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let status = e2e::kubewire_ok(&["lab", "status", "--name", lab.name()]);
    assert!(
        status.contains("node-2") && status.contains("198.18.0.12") && status.contains(" up"),
        "{status}"
    );
}

#[test]
fn nodes_forward_but_the_host_is_untouched() {
    let lab = TestLab::up(1);
    let ns = format!("{}-node-1", lab.name());
    assert_eq!(
        netlink::sysctl::get_in(&ns, "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    // The lab has no route out: the outside reaches only the underlay.
    let out = lab.exec("outside", &["ip", "route", "get", "1.1.1.1"]);
    assert!(
        !ok(&out),
        "outside has a route off the lab: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn second_lab_up_with_the_same_name_is_refused_clearly() {
    let lab = TestLab::up(1);
    let out = kubewire(&["lab", "up", "--name", lab.name(), "--nodes", "1"]);
    assert!(!ok(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is already up") && err.contains("lab down"),
        "{err}"
    );
}

#[test]
fn lab_down_twice_succeeds() {
    require_root();
    let lab = TestLab::up(1);
    let name = lab.name().to_owned();
    e2e::kubewire_ok(&["lab", "down", "--name", &name]);
    e2e::kubewire_ok(&["lab", "down", "--name", &name]);
    assert!(
        !netlink::netns::list()
            .unwrap()
            .iter()
            .any(|n| n.starts_with(&format!("{name}-")))
    );
}

#[test]
fn killed_lab_up_is_cleaned_by_lab_down() {
    require_root();
    let name = e2e::unique_name("t");
    let mut child = std::process::Command::new(e2e::kubewire_bin())
        .args(["lab", "up", "--name", &name, "--nodes", "60"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it part-way through building its namespaces.
    let prefix = format!("{name}-node-");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !netlink::netns::list()
        .unwrap()
        .iter()
        .any(|n| n.starts_with(&prefix))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "lab up made no node namespace"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    e2e::kubewire_ok(&["lab", "down", "--name", &name]);
    let left: Vec<String> = netlink::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{name}-")))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn lab_exec_rejects_an_unknown_target_naming_the_known_ones() {
    let lab = TestLab::up(1);
    let out = lab.exec("node-9", &["true"]);
    assert!(!ok(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no target \"node-9\"") && err.contains("node-1") && err.contains("outside"),
        "{err}"
    );
    // The command's exit code passes through.
    assert_eq!(
        lab.exec("node-1", &["sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
}

#[test]
fn lab_up_then_down_leaves_the_host_as_it_was() {
    require_root();
    let before = e2e::strip_test_namespaces(&e2e::host_snapshot());
    let lab = TestLab::up(2);
    let name = lab.name().to_owned();
    drop(lab);
    let after_raw = e2e::host_snapshot();
    assert!(
        !after_raw
            .lines()
            .any(|l| l.starts_with(&format!("{name}-"))),
        "namespaces left:\n{after_raw}"
    );
    assert_eq!(
        before,
        e2e::strip_test_namespaces(&after_raw),
        "the host changed"
    );
}
