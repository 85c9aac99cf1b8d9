//! The data path cost of network policy: connections per second and TCP throughput from
//! a client "pod" to a server "pod" through a routing "node" whose policy table isolates
//! the server, with 0, 100 and 10,000 NetworkPolicies selecting it (each admitting a
//! peer of its own; one admits the client), against the same server's second address,
//! which no policy isolates (the no-policy path), back to back in each round. Needs root;
//! everything runs inside throwaway namespaces. `cargo bench -p policy --bench datapath`.
//!
//! The table is the agent's: the cluster is compiled by `compile::desired` and loaded by
//! the `Enforcer`. `ROUNDS`, `SECONDS` and `PIN` as in [`benchkit::Settings`].

use std::net::{IpAddr, Ipv4Addr};

use benchkit::{Settings, connection_rate, loadavg, paired, throughput};
use netlink::nft::NftSocket;
use policy::compile;
use policy::model::{Cluster, Peer, Pod, Policy, PortRef, PortRule, Protocol, Rule, Selector};
use policy::ruleset::Enforcer;

fn pod(name: &str, ip: IpAddr, app: &str) -> Pod {
    Pod {
        namespace: "bench".into(),
        name: name.into(),
        labels: [("app".to_owned(), app.to_owned())].into(),
        ips: vec![ip],
        node: if app == "server" { "node-1" } else { "node-2" }.into(),
        ports: vec![],
        capture: None,
    }
}

fn selector(app: &str) -> Selector {
    Selector::label("app", app)
}

/// The server, the client and `n` policies selecting the server, policy `i` admitting
/// peer pod `i` (and the last one the client too) on the two measured ports.
fn cluster(n: usize) -> Cluster {
    let mut c = Cluster::default();
    c.set_pod(
        "bench/server",
        Some(pod("server", "10.244.2.2".parse().unwrap(), "server")),
    );
    c.set_pod(
        "bench/client",
        Some(pod("client", "10.244.1.2".parse().unwrap(), "client")),
    );
    let ports = vec![
        PortRule {
            protocol: Protocol::Tcp,
            port: PortRef::Range(8081, 8081),
        },
        PortRule {
            protocol: Protocol::Tcp,
            port: PortRef::Range(5201, 5201),
        },
    ];
    for i in 0..n {
        let peer = format!("peer-{i}");
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 250, 0, 0)) + i as u32);
        c.set_pod(
            &format!("bench/{peer}"),
            Some(pod(&peer, IpAddr::V4(ip), &peer)),
        );
        let mut peers = vec![Peer::Pods {
            namespaces: None,
            pods: Some(selector(&peer)),
        }];
        if i + 1 == n {
            peers.push(Peer::Pods {
                namespaces: None,
                pods: Some(selector("client")),
            });
        }
        c.policies.insert(
            format!("bench/np-{i}"),
            Policy {
                namespace: "bench".into(),
                name: format!("np-{i}"),
                selector: selector("server"),
                ingress: Some(vec![Rule {
                    peers,
                    ports: ports.clone(),
                }]),
                egress: None,
            },
        );
    }
    c
}

fn main() {
    let settings = Settings::from_env();
    benchkit::require_root();
    let mut all = benchkit::Namespaces::default();
    let (node, client, server) = benchkit::topology(&mut all, "npdp");
    // The server's second address, which no policy isolates: the no-policy path.
    benchkit::ip(&server, "addr add 10.244.2.3/24 dev eth0");
    benchkit::accept_and_close(&server, &[8080, 8081], settings.server_cpu());
    let _iperf = benchkit::iperf_server(&server, settings.server_cpu());

    let mut enforcer = Enforcer::new(NftSocket::new_in(&node).unwrap());
    let (rounds, seconds) = (settings.rounds, settings.seconds);
    let client_cpu = settings.client_cpu();
    println!(
        "data path, client pod -> node -> server pod (veths); {rounds} rounds of {seconds} s \
         per measurement, the server's isolated and unisolated addresses back to back in \
         alternating order; one connecting thread; client/server CPUs: {}; \
         ratio = isolated / no policy",
        settings.cpus(),
    );
    let labels = ("no policy", "isolated");
    for n in [0, 100, 10_000] {
        let desired = compile::desired(&cluster(n), "node-1");
        enforcer.replace(&desired).unwrap();
        let load = loadavg();
        let rates = paired(rounds, |isolated| {
            let target = if isolated {
                "10.244.2.2:8081"
            } else {
                "10.244.2.3:8080"
            };
            connection_rate(&client, target, seconds, client_cpu)
        });
        let tputs = paired(rounds, |isolated| {
            let target = if isolated { "10.244.2.2" } else { "10.244.2.3" };
            throughput(&client, target, seconds, client_cpu)
        });
        println!(
            "{n:>6} policies selecting the server ({} elements in its ingress sets), \
             load average {load} -> {}",
            desired.ingress.len(),
            loadavg()
        );
        println!("  {}", rates.report("connections/s", labels, "/s", 0));
        println!("  {}", tputs.report("throughput", labels, "Gbit/s", 2));
    }
}
