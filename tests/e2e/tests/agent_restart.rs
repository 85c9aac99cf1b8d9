//! Upgrading the agent does not stop pods from being made: while node-1's agent is
//! restarted over and over, alternately from two different builds (each installs
//! itself as the CNI plugin, replacing the other), a runtime keeps creating pods on
//! node-1 through the plugin in `--cni-bin-dir`. Every ADD succeeds (the plugin file
//! is never missing nor half-written) and every pod is wired: it reaches a pod on the
//! other node and a Service. The installed plugin is a file of its own: when the
//! agent's file goes (an upgrade removing the old build), it still makes pods. Needs
//! root; fails, never skips.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::cluster::{Cluster, WHO_SERVER, probe_in};
use e2e::cni::{Params, env_for, exec_plugin};
use e2e::{TestNetns, kubewire_bin, wait_until};
use serde_json::{Value, json};

/// A pod made in a new namespace by the plugin `plugin` on node namespace `node`, as a
/// runtime would: the namespace and the pod's IPv4 address. Panics if ADD fails.
fn add(node: &str, plugin: &std::path::Path, cni_path: &str, conf: &Value) -> (TestNetns, String) {
    let pod = TestNetns::new("rpod");
    let netns = netlink::netns::path(pod.name()).display().to_string();
    let id = e2e::unique_name("rctr");
    let params = Params {
        container_id: &id,
        netns: Some(&netns),
        ifname: "eth0",
    };
    let result = exec_plugin(node, plugin, &env_for("ADD", &params, cni_path), conf).ok();
    let ip = result["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    (pod, ip)
}

#[test]
fn pods_created_while_the_agent_restarts_and_upgrades_are_all_wired() {
    let bins = tempfile::tempdir().unwrap();
    let bin_dir = bins.path().join("cni-bin");
    let plugin = bin_dir.join("kubewire-cni");
    // Another build of the agent: the same program, another file with other bytes.
    let v2 = bins.path().join("kubewire-v2");
    std::fs::copy(kubewire_bin(), &v2).unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&v2)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"\nv2"))
        .unwrap();
    let mut c = Cluster::up_with(&[
        "--mode",
        "native",
        "--resync",
        "2s",
        "--cni-bin-dir",
        bin_dir.to_str().unwrap(),
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || plugin.exists()),
        "the agent installed no plugin\n{}",
        c.log("agent-1.log")
    );
    // A server on node-2 behind a Service, which every new pod must reach.
    let server = c.add_pod(2);
    let server_ip = c.pods[server].1[0].clone();
    let _server = c.pods[server]
        .0
        .spawn("python3", &["-c", WHO_SERVER, "0.0.0.0", "8080", "b"]);
    c.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.50.10", "ports": [{"name": "p", "port": 80, "targetPort": 8080}]}}));
    c.apply(
        &json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [server_ip.clone()], "nodeName": "node-2",
                       "conditions": {"ready": true}}],
        "ports": [{"name": "p", "port": 8080, "protocol": "TCP"}]}),
    );

    // The runtime: ADDs on node-1 through the installed plugin, one after the other,
    // until told to stop.
    let list: Value =
        serde_json::from_str(&std::fs::read_to_string(c.conflist_path(1)).unwrap()).unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let node1 = c.node_ns(1);
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = {
        let (stop, plugin, conf) = (Arc::clone(&stop), plugin.clone(), conf.clone());
        std::thread::spawn(move || {
            let mut pods: Vec<(TestNetns, String)> = Vec::new();
            let cni_path = bin_dir.display().to_string();
            while !stop.load(Ordering::Relaxed) || pods.len() < 10 {
                pods.push(add(&node1, &plugin, &cni_path, &conf));
            }
            pods
        })
    };
    // Meanwhile, node-1's agent is killed and started again, six times, alternately
    // from the other build: each start installs its own binary as the plugin. The
    // last one runs v2.
    let builds = [kubewire_bin(), v2.clone()];
    for i in 0..6 {
        c.restart_agent_from(1, &builds[i % 2]);
        let expected = std::fs::read(&builds[i % 2]).unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || std::fs::read(&plugin)
                .is_ok_and(|b| b == expected)),
            "restart {i}: the plugin was not replaced\n{}",
            c.log("agent-1.log")
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut pods = runtime.join().expect("every ADD succeeded");
    // The upgrade removes v2's file (its image, say): the installed plugin is a file of
    // its own, not a link to the agent's, and still makes pods.
    std::fs::remove_file(&v2).unwrap();
    let cni_path = plugin.parent().unwrap().display().to_string();
    pods.push(add(&c.node_ns(1), &plugin, &cni_path, &conf));
    assert!(pods.len() >= 10, "{} pods", pods.len());
    // Nothing left under a temporary name in the plugin directory.
    let names: Vec<String> = std::fs::read_dir(plugin.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["kubewire-cni"]);

    // Every pod made during the restarts is wired: it reaches the pod on node-2 and
    // the Service in front of it.
    for (pod, ip) in &pods {
        assert!(
            pod.run("ping", &["-c1", "-W2", &server_ip])
                .status
                .success(),
            "pod {ip} made during the restarts cannot reach {server_ip}"
        );
        let mut seen = String::new();
        assert!(
            wait_until(Duration::from_secs(20), || {
                seen = probe_in(pod.name(), "10.96.50.10", 80);
                seen == format!("ok b {ip}")
            }),
            "pod {ip}: the service answers {seen}\n{}",
            c.log("agent-1.log")
        );
    }
}
