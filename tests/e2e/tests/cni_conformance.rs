//! CNI specification 1.1.0 conformance of the kubewire plugin, driven through the CNI
//! protocol against the built binary: environment in, config on stdin, JSON out. No
//! third-party conformance suite exists; this one follows the spec section by section.
//! Every plugin run happens inside a test "node" namespace, never in the host's.

use e2e::TestNetns;
use e2e::cni::{Invocation, Params, PluginDir, env_for, exec_plugin};
use serde_json::{Value, json};

/// A node namespace with a plugin directory and its own IPAM data dir and network name.
struct Node {
    ns: TestNetns,
    plugins: PluginDir,
    data: tempfile::TempDir,
    network: String,
    cidrs: Vec<String>,
}

struct Pod {
    ns: TestNetns,
    id: String,
}

impl Pod {
    fn path(&self) -> String {
        netlink::netns::path(self.ns.name()).display().to_string()
    }

    fn params(&self) -> Params<'_> {
        // The path is leaked into a &str for the Params' lifetime: tests are short.
        Params {
            container_id: &self.id,
            netns: Some(Box::leak(self.path().into_boxed_str())),
            ifname: "eth0",
        }
    }

    fn ip(&self, args: &[&str]) -> String {
        let out = self.ns.run("ip", args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Node {
    fn new(cidrs: &[&str]) -> Self {
        let ns = TestNetns::new("node");
        netlink::sysctl::set_in(ns.name(), "net.ipv4.ip_forward", "1").unwrap();
        netlink::sysctl::set_in(ns.name(), "net.ipv6.conf.all.forwarding", "1").unwrap();
        Node {
            network: e2e::unique_name("net"),
            ns,
            plugins: PluginDir::new(),
            data: tempfile::tempdir().unwrap(),
            cidrs: cidrs.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": self.network,
            "type": "kubewire-cni",
            "mtu": 1500,
            "podCIDRs": self.cidrs,
            "dataDir": self.data.path(),
        })
    }

    fn pod(&self) -> Pod {
        Pod {
            ns: TestNetns::new("pod"),
            id: e2e::unique_name("ctr"),
        }
    }

    fn call(&self, command: &str, params: &Params<'_>, conf: &Value) -> Invocation {
        let cni_path = self.plugins.cni_path();
        exec_plugin(
            self.ns.name(),
            &self.plugins.plugin("kubewire-cni"),
            &env_for(command, params, &cni_path),
            conf,
        )
    }

    fn call_env(&self, env: &[(&str, &str)], conf: &Value) -> Invocation {
        exec_plugin(
            self.ns.name(),
            &self.plugins.plugin("kubewire-cni"),
            env,
            conf,
        )
    }

    fn add(&self, pod: &Pod) -> Value {
        self.call("ADD", &pod.params(), &self.conf("1.1.0")).ok()
    }

    fn allocations(&self) -> Value {
        let path = self.data.path().join(&self.network).join("state.json");
        std::fs::read(&path)
            .map(|b| serde_json::from_slice::<Value>(&b).unwrap()["allocations"].clone())
            .unwrap_or(json!({}))
    }

    fn links(&self) -> String {
        String::from_utf8_lossy(&self.ns.run("ip", &["-o", "link"]).stdout).into_owned()
    }

    /// Waits (up to 5 s) until no node-side veth is left: DEL unregisters devices in the
    /// background, after taking them down.
    fn wait_no_veths(&self) -> bool {
        e2e::wait_until(std::time::Duration::from_secs(5), || {
            !self.links().contains(": kw")
        })
    }
}

fn ping(from: &Pod, to: &str) -> bool {
    from.ns.run("ping", &["-c1", "-W2", to]).status.success()
}

// --- VERSION ---------------------------------------------------------------------

#[test]
fn version_lists_supported_versions_and_echoes_the_callers() {
    let node = Node::new(&[]);
    let out = node
        .call_env(
            &[("CNI_COMMAND", "VERSION")],
            &json!({"cniVersion": "1.0.0"}),
        )
        .ok();
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(out["supportedVersions"], json!(["0.4.0", "1.0.0", "1.1.0"]));
}

// --- ADD -------------------------------------------------------------------------

#[test]
fn add_returns_a_1_1_result_and_wires_a_routed_veth() {
    let node = Node::new(&["10.244.1.0/24"]);
    let pod = node.pod();
    let result = node.add(&pod);
    assert_eq!(result["cniVersion"], "1.1.0");
    let ifaces = result["interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 2, "{result}");
    assert!(
        ifaces[0]["name"].as_str().unwrap().starts_with("kw") && ifaces[0].get("sandbox").is_none()
    );
    assert_eq!(ifaces[1]["name"], "eth0");
    assert_eq!(ifaces[1]["sandbox"], pod.path());
    assert_eq!(ifaces[1]["mtu"], 1500);
    assert_eq!(
        result["ips"],
        json!([{"address": "10.244.1.2/32", "gateway": "169.254.1.1", "interface": 1}])
    );
    assert_eq!(
        result["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}])
    );
    // Both ends are operationally up when ADD returns: a link whose carrier came on but
    // whose link-watch work has not run yet drops what it sends.
    assert!(
        pod.ip(&["-o", "link", "show", "eth0"]).contains("state UP"),
        "{}",
        pod.ip(&["-o", "link", "show", "eth0"])
    );
    // The kernel agrees: address, default route via the link-local gateway, host route.
    assert!(
        pod.ip(&["-4", "addr", "show", "eth0"])
            .contains("10.244.1.2/32")
    );
    assert!(
        pod.ip(&["-4", "route"])
            .contains("default via 169.254.1.1 dev eth0")
    );
    let host = ifaces[0]["name"].as_str().unwrap();
    let node_routes =
        String::from_utf8_lossy(&node.ns.run("ip", &["-4", "route"]).stdout).into_owned();
    assert!(
        node_routes.contains(&format!("10.244.1.2 dev {host}")),
        "{node_routes}"
    );
    // No address on the node side: it is a routed port, not a gateway.
    let host_addrs =
        String::from_utf8_lossy(&node.ns.run("ip", &["-4", "addr", "show", host]).stdout)
            .into_owned();
    assert!(!host_addrs.contains("inet "), "{host_addrs}");
}

#[test]
fn two_pods_on_a_node_reach_each_other_over_ipv4_and_ipv6() {
    let node = Node::new(&["10.244.2.0/24", "fd00:10:244:2::/64"]);
    let (a, b) = (node.pod(), node.pod());
    let ra = node.add(&a);
    let rb = node.add(&b);
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2, "{ra}");
    let b4 = rb["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let b6 = rb["ips"][1]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    assert!(b6.starts_with("fd00:10:244:2::"), "{rb}");
    assert!(ping(&a, &b4), "a -> {b4}");
    assert!(ping(&a, &b6), "a -> {b6}");
    assert_eq!(rb["routes"][1], json!({"dst": "::/0", "gw": "fe80::1"}));
}

#[test]
fn results_follow_the_configs_version() {
    let node = Node::new(&["10.244.3.0/24"]);
    let p10 = node.pod();
    let r10 = node.call("ADD", &p10.params(), &node.conf("1.0.0")).ok();
    assert_eq!(r10["cniVersion"], "1.0.0");
    assert!(
        r10["interfaces"][1].get("mtu").is_none(),
        "1.0.0 has no interfaces[].mtu: {r10}"
    );
    let p04 = node.pod();
    let r04 = node.call("ADD", &p04.params(), &node.conf("0.4.0")).ok();
    assert_eq!(r04["cniVersion"], "0.4.0");
    assert_eq!(r04["ips"][0]["version"], "4");
}

#[test]
fn add_refuses_an_existing_interface_and_allocates_nothing() {
    let node = Node::new(&["10.244.4.0/24"]);
    let pod = node.pod();
    let made = pod.ns.run(
        "ip",
        &[
            "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
        ],
    );
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let before = node.allocations();
    let inv = node.call("ADD", &pod.params(), &node.conf("1.1.0"));
    assert_eq!(inv.err_code(), 100);
    assert!(
        inv.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("eth0 already exists")
    );
    assert_eq!(node.allocations(), before);
    assert!(
        !node.links().contains("kw"),
        "a node-side veth was left: {}",
        node.links()
    );
}

#[test]
fn mtu_comes_from_the_config_less_vxlan_overhead() {
    let node = Node::new(&["10.244.5.0/24"]);
    let pod = node.pod();
    let mut conf = node.conf("1.1.0");
    conf["mtu"] = json!(9000);
    conf["mode"] = json!("vxlan");
    let result = node.call("ADD", &pod.params(), &conf).ok();
    assert_eq!(result["interfaces"][1]["mtu"], 8950);
    assert!(pod.ip(&["link", "show", "eth0"]).contains("mtu 8950"));
}

#[test]
fn add_into_a_missing_namespace_is_code_3_and_leaks_nothing() {
    let node = Node::new(&["10.244.6.0/24"]);
    let params = Params {
        container_id: "gone",
        netns: Some("/run/netns/kwt-does-not-exist"),
        ifname: "eth0",
    };
    let inv = node.call("ADD", &params, &node.conf("1.1.0"));
    assert_eq!(inv.err_code(), 3);
    assert_eq!(node.allocations(), json!({}));
}

// --- DEL -------------------------------------------------------------------------

#[test]
fn del_frees_the_address_removes_the_links_and_is_idempotent() {
    let node = Node::new(&["10.244.7.0/24"]);
    let pod = node.pod();
    node.add(&pod);
    assert_eq!(node.allocations().as_object().unwrap().len(), 1);
    for _ in 0..2 {
        assert_eq!(
            node.call("DEL", &pod.params(), &node.conf("1.1.0")).ok(),
            Value::Null
        );
    }
    assert_eq!(node.allocations(), json!({}));
    assert!(node.wait_no_veths(), "{}", node.links());
    assert!(!pod.ip(&["link"]).contains("eth0"));
}

#[test]
fn del_cuts_the_pod_off_before_it_returns() {
    let node = Node::new(&["10.244.14.0/24", "fd00:10:244:14::/64"]);
    let pod = node.pod();
    node.add(&pod);
    node.call("DEL", &pod.params(), &node.conf("1.1.0")).ok();
    // Whatever the background unregister has done by now, no route leads to the pod
    // and its link is down or gone.
    let routes =
        String::from_utf8_lossy(&node.ns.run("ip", &["route", "show", "10.244.14.2"]).stdout)
            .into_owned()
            + &String::from_utf8_lossy(
                &node
                    .ns
                    .run("ip", &["-6", "route", "show", "fd00:10:244:14::2"])
                    .stdout,
            );
    assert!(
        routes.trim().is_empty(),
        "routes to a deleted pod: {routes}"
    );
    let eth0 = pod.ip(&["-o", "link", "show", "eth0"]);
    assert!(
        eth0.is_empty() || !eth0.contains("LOWER_UP"),
        "pod still has a live link: {eth0}"
    );
    assert!(node.wait_no_veths(), "{}", node.links());
}

#[test]
fn del_succeeds_without_a_namespace_and_for_what_was_never_added() {
    let node = Node::new(&["10.244.8.0/24"]);
    let pod = node.pod();
    node.add(&pod);
    let id = pod.id.clone();
    drop(pod); // the namespace is gone, as after a container crash
    let params = Params {
        container_id: &id,
        netns: None,
        ifname: "eth0",
    };
    node.call("DEL", &params, &node.conf("1.1.0")).ok();
    assert_eq!(node.allocations(), json!({}));
    assert!(node.wait_no_veths(), "{}", node.links());
    let never = Params {
        container_id: "never-added",
        netns: Some("/run/netns/kwt-nope"),
        ifname: "eth0",
    };
    node.call("DEL", &never, &node.conf("1.1.0")).ok();
}

// --- CHECK -----------------------------------------------------------------------

#[test]
fn check_passes_after_add_and_names_what_drifted() {
    let node = Node::new(&["10.244.9.0/24", "fd00:10:244:9::/64"]);
    let pod = node.pod();
    let result = node.add(&pod);
    let mut conf = node.conf("1.1.0");
    conf["prevResult"] = result;
    node.call("CHECK", &pod.params(), &conf).ok();
    pod.ns.run("ip", &["route", "del", "default"]);
    let inv = node.call("CHECK", &pod.params(), &conf);
    assert_eq!(inv.err_code(), 102);
    assert!(
        inv.stdout["details"]
            .as_str()
            .unwrap()
            .contains("route to 0.0.0.0/0 via 169.254.1.1 is missing"),
        "{}",
        inv.raw_stdout
    );
}

#[test]
fn check_without_prev_result_is_an_invalid_config() {
    let node = Node::new(&["10.244.10.0/24"]);
    let pod = node.pod();
    node.add(&pod);
    let inv = node.call("CHECK", &pod.params(), &node.conf("1.1.0"));
    assert_eq!(inv.err_code(), 7);
    assert!(inv.stdout["msg"].as_str().unwrap().contains("prevResult"));
}

// --- STATUS ----------------------------------------------------------------------

#[test]
fn status_reports_whether_add_can_allocate() {
    let node = Node::new(&["10.244.11.0/30"]); // one usable address
    let env = [("CNI_COMMAND", "STATUS")];
    node.call_env(&env, &node.conf("1.1.0")).ok();
    let pod = node.pod();
    node.add(&pod);
    let inv = node.call_env(&env, &node.conf("1.1.0"));
    assert_eq!(inv.err_code(), 50);
    assert!(
        inv.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("no free address left in 10.244.11.0/30")
    );
    // And ADD then fails with the exhaustion error, allocating nothing.
    let other = node.pod();
    assert_eq!(
        node.call("ADD", &other.params(), &node.conf("1.1.0"))
            .err_code(),
        101
    );
    // Without pod CIDRs the plugin cannot serve ADDs either.
    let empty = Node::new(&[]);
    assert_eq!(empty.call_env(&env, &empty.conf("1.1.0")).err_code(), 50);
    // STATUS is a 1.1 command.
    assert_eq!(node.call_env(&env, &node.conf("1.0.0")).err_code(), 1);
}

// --- GC --------------------------------------------------------------------------

#[test]
fn gc_frees_every_attachment_not_listed_as_valid() {
    let node = Node::new(&["10.244.12.0/24"]);
    let pods: Vec<Pod> = (0..3).map(|_| node.pod()).collect();
    for p in &pods {
        node.add(p);
    }
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let mut conf = node.conf("1.1.0");
        conf[key] = json!([{"containerID": pods[0].id, "ifname": "eth0"}]);
        node.call_env(&[("CNI_COMMAND", "GC")], &conf).ok();
        let alloc = node.allocations();
        assert_eq!(alloc.as_object().unwrap().len(), 1, "{alloc}");
        assert_eq!(
            alloc.as_object().unwrap().values().next().unwrap()["containerID"],
            pods[0].id.as_str()
        );
    }
    // The freed pods' node-side veths are gone too; the valid one stays.
    assert_eq!(node.links().matches(": kw").count(), 1, "{}", node.links());
    assert!(eth0_is_up(&pods[0]));
}

#[test]
fn gc_of_one_network_leaves_another_networks_pods_alone() {
    let node = Node::new(&["10.244.15.0/24"]);
    let other_network = Node {
        ns: TestNetns::new("unused"),
        plugins: PluginDir::new(),
        data: tempfile::tempdir().unwrap(),
        network: e2e::unique_name("other"),
        cidrs: vec!["10.244.16.0/24".into()],
    };
    let (mine, theirs) = (node.pod(), node.pod());
    node.add(&mine);
    // The other network's pod, attached by the same node.
    let mut other_conf = other_network.conf("1.1.0");
    other_conf["name"] = json!(other_network.network);
    node.call("ADD", &theirs.params(), &other_conf).ok();
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([]);
    node.call_env(&[("CNI_COMMAND", "GC")], &gc).ok();
    assert_eq!(node.allocations(), json!({}));
    assert_eq!(
        node.links().matches(": kw").count(),
        1,
        "GC took another network's veth: {}",
        node.links()
    );
    assert!(eth0_is_up(&theirs));
}

fn eth0_is_up(pod: &Pod) -> bool {
    pod.ip(&["link", "show", "eth0"]).contains("UP")
}

// --- errors ----------------------------------------------------------------------

#[test]
fn errors_carry_the_spec_codes_on_stdout_and_logs_stay_on_stderr() {
    let node = Node::new(&["10.244.13.0/24"]);
    let pod = node.pod();
    let path = pod.path();
    let conf = node.conf("1.1.0");
    // 4: a necessary variable is missing.
    let inv = node.call_env(
        &[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "x"),
            ("CNI_NETNS", &path),
        ],
        &conf,
    );
    assert_eq!(inv.err_code(), 4);
    assert!(inv.stdout["msg"].as_str().unwrap().contains("CNI_IFNAME"));
    assert_eq!(inv.stdout["cniVersion"], "1.1.0");
    // 6: stdin is not JSON.
    let inv = node.call("ADD", &pod.params(), &json!("not an object"));
    assert_eq!(inv.err_code(), 6);
    // 1: a version we do not speak.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(node.call("ADD", &pod.params(), &old).err_code(), 1);
    // 7: an invalid config, naming the field.
    let mut bad = conf.clone();
    bad["podCIDRs"] = json!(["10.244.13.7/24"]);
    let inv = node.call("ADD", &pod.params(), &bad);
    assert_eq!(inv.err_code(), 7);
    assert!(inv.stdout["msg"].as_str().unwrap().contains("podCIDRs"));
    // stdout held exactly one JSON document each time; the failures left nothing.
    assert_eq!(inv.raw_stdout.trim().lines().count(), 1);
    assert_eq!(node.allocations(), json!({}));
}

#[test]
fn invoked_as_kubewire_cni_without_a_command_it_speaks_cni_not_the_cli() {
    let node = Node::new(&[]);
    let inv = node.call_env(&[], &json!({}));
    assert_eq!(inv.err_code(), 4);
    assert!(
        inv.stdout["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_COMMAND is not set")
    );
}
