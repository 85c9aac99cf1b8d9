//! The kubewire plugin at the head of a chain with the reference meta plugins from
//! Debian's `containernetworking-plugins` (tuning, bandwidth, portmap): each accepts our
//! result as `prevResult` and does its job, end to end. The Debian plugins speak up to
//! CNI 1.0.0, so the list is 1.0.0.

use e2e::TestNetns;
use e2e::cni::{Params, PluginDir, add_list, run_list};
use serde_json::json;

#[test]
fn tuning_bandwidth_and_portmap_chain_after_kubewire() {
    let node = TestNetns::new("cnode");
    let client = TestNetns::new("client");
    let pod = TestNetns::new("cpod");
    netlink::sysctl::set_in(node.name(), "net.ipv4.ip_forward", "1").unwrap();
    // A client outside the node, on its own link: 198.19.0.2 -> node 198.19.0.1.
    node.sh(&format!(
        "ip link add up0 type veth peer name up1 netns {}",
        client.name()
    ));
    node.sh("ip addr add 198.19.0.1/24 dev up0 && ip link set up0 up");
    client.sh("ip addr add 198.19.0.2/24 dev up1 && ip link set up1 up");

    let data = tempfile::tempdir().unwrap();
    let plugins = PluginDir::new();
    let list = json!({
        "cniVersion": "1.0.0",
        "name": e2e::unique_name("chain"),
        "plugins": [
            {"type": "kubewire-cni", "mtu": 1500, "podCIDRs": ["10.244.20.0/24", "fd00:10:244:20::/64"], "dataDir": data.path()},
            {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
        ]
    });
    let runtime_config = json!({
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "bandwidth": {"ingressRate": 100_000_000u64, "ingressBurst": 1_000_000u64}
    });
    let netns_path = netlink::netns::path(pod.name()).display().to_string();
    let id = e2e::unique_name("chainctr");
    let params = Params {
        container_id: &id,
        netns: Some(&netns_path),
        ifname: "eth0",
    };

    let result = add_list(node.name(), &plugins, &list, &params, &runtime_config);
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["address"], "10.244.20.2/32", "{result}");
    let host_veth = result["interfaces"][0]["name"].as_str().unwrap().to_owned();

    // tuning wrote its sysctl inside the pod.
    assert_eq!(pod.sh("cat /proc/sys/net/core/somaxconn").trim(), "512");
    // bandwidth found our node-side veth in the result and shaped it.
    let qdisc = node.sh(&format!("tc qdisc show dev {host_veth}"));
    assert!(qdisc.contains("tbf"), "{qdisc}");
    // portmap: the client reaches the pod's port 80 through the node's port 8080.
    let _server = pod.spawn(
        "python3",
        &["-m", "http.server", "80", "--bind", "10.244.20.2"],
    );
    let mut answered = String::new();
    for _ in 0..50 {
        let out = client.run(
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "2",
                "http://198.19.0.1:8080/",
            ],
        );
        answered = String::from_utf8_lossy(&out.stdout).into_owned();
        if answered == "200" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(answered, "200", "hostPort 8080 did not reach the pod");

    // CHECK through the chain with the final result, then DEL in reverse order. Debian's
    // portmap 1.1.1 has a CHECK bug (it looks for its IPv4 rules in the IPv6 table, fixed
    // upstream later), so CHECK skips it; every other plugin checks our result.
    let mut check_list = list.clone();
    check_list["plugins"]
        .as_array_mut()
        .unwrap()
        .retain(|p| p["type"] != "portmap");
    run_list(
        node.name(),
        &plugins,
        "CHECK",
        &check_list,
        &params,
        &runtime_config,
        &result,
    );
    run_list(
        node.name(),
        &plugins,
        "DEL",
        &list,
        &params,
        &runtime_config,
        &result,
    );
    // DEL takes the veth down at once and unregisters it in the background.
    let gone = e2e::wait_until(std::time::Duration::from_secs(5), || {
        !node.sh("ip -o link").contains(&host_veth)
    });
    assert!(gone, "{}", node.sh("ip -o link"));
    let rules = node.sh("iptables-save");
    assert!(
        !rules.contains("10.244.20.2"),
        "portmap left rules: {rules}"
    );
}
