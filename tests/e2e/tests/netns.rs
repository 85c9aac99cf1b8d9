//! Tier 3: the namespace helpers every namespaced test relies on.

use e2e::{TestNetns, require_root};

#[test]
fn namespace_exists_while_guarded_and_is_removed_on_drop() {
    require_root();
    let ns = TestNetns::new("life");
    let name = ns.name().to_owned();
    assert!(netlink::netns::exists(&name));
    assert!(netlink::netns::list().unwrap().contains(&name));
    drop(ns);
    assert!(!netlink::netns::exists(&name), "{name} left behind");
}

#[test]
fn namespace_is_removed_when_the_test_panics() {
    require_root();
    let mut name = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = TestNetns::new("panic");
        name = ns.name().to_owned();
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(
        !netlink::netns::exists(&name),
        "{name} survived a panicking test"
    );
}

#[test]
fn creating_an_existing_namespace_is_refused() {
    require_root();
    let ns = TestNetns::new("dup");
    let err = netlink::netns::create(ns.name()).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(err.to_string().contains("already exists"), "{err}");
}

#[test]
fn new_namespace_has_only_loopback_and_it_is_up() {
    require_root();
    let ns = TestNetns::new("lo");
    let out = ns.run("ip", &["-o", "link", "show"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.contains("lo:") && text.contains("UP"), "{text}");
}

#[test]
fn sysctls_change_only_inside_the_namespace() {
    require_root();
    let host_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let ns = TestNetns::new("sysctl");
    netlink::sysctl::set_in(ns.name(), "net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(
        netlink::sysctl::get_in(ns.name(), "net.ipv4.ip_forward").unwrap(),
        "1"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_before
    );
    let err = netlink::sysctl::set_in(ns.name(), "kernel.hostname", "x").unwrap_err();
    assert!(
        err.to_string().contains("refusing to change the host"),
        "{err}"
    );
}

#[test]
fn names_of_test_namespaces_are_recognised() {
    assert!(e2e::is_test_namespace("kwt-life-12-0"));
    assert!(e2e::is_test_namespace("t123-4-node-1"));
    assert!(!e2e::is_test_namespace("kubewire-node-1"));
    assert!(!e2e::is_test_namespace("t123-underlay"));
}
