//! nf_tables batches applied in throwaway network namespaces and read back with the
//! real `nft -j list ruleset`. Needs root (and the `nft` binary); fails, never skips,
//! without them.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use netlink::netns;
use netlink::nft::{
    Batch, Chain, ChainType, Datum, Family, Field, Hook, KeyType, NftSocket, Policy, Reject, Rule,
    Set, SetElement, Table, Verdict, ct_state, priority, proto,
};
use serde_json::{Value, json};

fn assert_root() {
    let uid = std::fs::metadata("/proc/self").unwrap().uid();
    assert_eq!(
        uid, 0,
        "these tests need root (network namespaces, nf_tables)"
    );
}

/// A network namespace of this test, deleted when dropped (also on panic).
struct Ns(String);

impl Ns {
    fn new() -> Ns {
        assert_root();
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kwt-nft-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        netns::create(&name).unwrap();
        Ns(name)
    }

    fn apply(&self, batch: &Batch) -> netlink::Result<()> {
        NftSocket::new_in(&self.0)?.apply(batch)
    }

    // Reading back with the real nft, run inside the namespace, is the point of these
    // tests: it checks our encoding against an independent decoder.
    #[allow(clippy::disallowed_methods)]
    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `nft -j list ruleset`, as the `nftables` array.
    fn ruleset(&self) -> Vec<Value> {
        let text = self.sh(&["nft", "-j", "list", "ruleset"]);
        let v: Value = serde_json::from_str(&text).unwrap();
        v["nftables"].as_array().unwrap().clone()
    }

    /// Text listing, for failure messages.
    fn listing(&self) -> String {
        self.sh(&["nft", "list", "ruleset"])
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn objects<'a>(ruleset: &'a [Value], kind: &str) -> Vec<&'a Value> {
    ruleset.iter().filter_map(|o| o.get(kind)).collect()
}

/// Expression lists of the rules of `chain`, in order.
fn rules_of(ruleset: &[Value], chain: &str) -> Vec<Value> {
    objects(ruleset, "rule")
        .into_iter()
        .filter(|r| r["chain"] == chain)
        .cloned()
        .collect()
}

const T: &str = "kubewire";

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

#[test]
fn tables_chains_and_rules_round_trip() {
    let ns = Ns::new();
    let table = Table::new(Family::Ip, T);
    let post = Chain::new(Family::Ip, T, "nat-postrouting").hook(
        ChainType::Nat,
        Hook::Postrouting,
        priority::SRCNAT,
    );
    let pre = Chain::new(Family::Ip, T, "nat-prerouting").hook(
        ChainType::Nat,
        Hook::Prerouting,
        priority::DSTNAT,
    );
    let input = Chain::new(Family::Ip, T, "filter-input")
        .hook(ChainType::Filter, Hook::Input, priority::FILTER)
        .policy(Policy::Drop);
    let services = Chain::new(Family::Ip, T, "services");
    let rule = |chain: &str| Rule::new(Family::Ip, T, chain);
    let mut b = Batch::new();
    b.add_table(&table)
        .add_chain(&post)
        .add_chain(&pre)
        .add_chain(&input)
        .add_chain(&services)
        .add_rule(
            &rule("nat-postrouting")
                .match_saddr(net("10.244.0.0/16"))
                .match_daddr_not(net("10.244.0.0/16"))
                .counter()
                .masquerade()
                .comment("pods leaving the cluster"),
        )
        .add_rule(
            &rule("nat-postrouting")
                .match_mark(0x4000, 0x4000)
                .masquerade_fully_random(),
        )
        .add_rule(
            &rule("nat-prerouting")
                .match_fib_daddr_local()
                .jump("services"),
        )
        .add_rule(
            &rule("services")
                .match_daddr(net("10.96.0.1/32"))
                .match_l4proto(proto::TCP)
                .match_dport(443)
                .set_mark_bits(0x4000)
                .dnat(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)), Some(6443)),
        )
        .add_rule(
            &rule("filter-input")
                .match_ct_state(ct_state::ESTABLISHED | ct_state::RELATED)
                .accept(),
        )
        .add_rule(&rule("filter-input").match_iifname("lo").accept())
        .add_rule(
            &rule("filter-input")
                .match_l4proto(proto::TCP)
                .match_dport(22)
                .reject(Reject::TcpReset),
        )
        .add_rule(
            &rule("filter-input")
                .match_l4proto(proto::UDP)
                .reject(Reject::Icmp(3)),
        );
    ns.apply(&b).unwrap();

    let rs = ns.ruleset();
    let listing = ns.listing();
    let tables = objects(&rs, "table");
    assert_eq!(tables.len(), 1, "{listing}");
    assert_eq!(tables[0]["family"], "ip");
    assert_eq!(tables[0]["name"], T);

    let chains = objects(&rs, "chain");
    let chain = |name: &str| {
        *chains
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no chain {name}: {listing}"))
    };
    assert_eq!(chain("nat-postrouting")["type"], "nat");
    assert_eq!(chain("nat-postrouting")["hook"], "postrouting");
    assert_eq!(chain("nat-postrouting")["prio"], 100);
    assert_eq!(chain("nat-prerouting")["hook"], "prerouting");
    assert_eq!(chain("nat-prerouting")["prio"], -100);
    assert_eq!(chain("filter-input")["type"], "filter");
    assert_eq!(chain("filter-input")["policy"], "drop");
    assert!(chain("services").get("hook").is_none());

    let post_rules = rules_of(&rs, "nat-postrouting");
    assert_eq!(post_rules.len(), 2, "{listing}");
    assert_eq!(post_rules[0]["comment"], "pods leaving the cluster");
    assert_eq!(
        post_rules[0]["expr"],
        json!([
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}},
                       "right": {"prefix": {"addr": "10.244.0.0", "len": 16}}}},
            {"counter": {"packets": 0, "bytes": 0}},
            {"masquerade": null}
        ]),
        "{listing}"
    );
    let text = listing.replace('\t', "");
    for line in [
        "meta mark & 0x00004000 == 0x00004000 masquerade fully-random",
        "fib daddr type local jump services",
        "ip daddr 10.96.0.1 tcp dport 443 meta mark set meta mark | 0x00004000 dnat to 198.18.0.2:6443",
        "ct state established,related accept",
        "iifname \"lo\" accept",
        "tcp dport 22 reject with tcp reset",
        // icmp port-unreachable is nft's default, so it prints no "with".
        "meta l4proto udp reject\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{listing}");
    }
}

/// A table with one NAT base chain and one regular chain, as a starting point.
fn base_batch() -> Batch {
    let mut b = Batch::new();
    b.add_table(&Table::new(Family::Ip, T))
        .add_chain(&Chain::new(Family::Ip, T, "nat-prerouting").hook(
            ChainType::Nat,
            Hook::Prerouting,
            priority::DSTNAT,
        ))
        .add_chain(&Chain::new(Family::Ip, T, "services"))
        .add_rule(&Rule::new(Family::Ip, T, "nat-prerouting").jump("services"));
    b
}

#[test]
fn a_failing_batch_changes_nothing_and_names_the_object() {
    let ns = Ns::new();
    ns.apply(&base_batch()).unwrap();
    let before = ns.ruleset();

    let mut b = Batch::new();
    b.add_chain(&Chain::new(Family::Ip, T, "extra"))
        .add_rule(&Rule::new(Family::Ip, T, "extra").counter().accept())
        .add_rule(&Rule::new(Family::Ip, T, "services").drop())
        .add_rule(&Rule::new(Family::Ip, T, "nat-postrouting").masquerade())
        .add_table(&Table::new(Family::Ip6, T));
    let err = ns.apply(&b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "add rule ip kubewire nat-postrouting: No such file or directory"
    );
    assert!(err.is_not_found());
    let after = ns.ruleset();
    // Only the metainfo (generation) may differ: no chain, rule or table was added.
    assert_eq!(&before[1..], &after[1..], "{}", ns.listing());
    assert!(
        objects(&after, "chain")
            .iter()
            .all(|c| c["name"] != "extra")
    );

    // The socket is still usable, and the valid part applies on its own.
    let mut sock = NftSocket::new_in(&ns.0).unwrap();
    let mut ok = Batch::new();
    ok.add_chain(&Chain::new(Family::Ip, T, "extra"));
    sock.apply(&ok).unwrap();
    let dup = sock.apply(&{
        let mut b = Batch::new();
        b.delete_chain(&Chain::new(Family::Ip, T, "no-such-chain"));
        b
    });
    assert_eq!(
        dup.unwrap_err().to_string(),
        "delete chain ip kubewire no-such-chain: No such file or directory"
    );
}

#[test]
fn invalid_elements_are_refused_before_sending() {
    let ns = Ns::new();
    let set = Set::new(Family::Ip, T, "addrs", [KeyType::Ipv4Addr]);
    let mut b = base_batch();
    b.add_set(&set)
        .add_elements(&set, &[SetElement::new([Datum::Port(80)])]);
    let err = ns.apply(&b).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("add element ip kubewire addrs: key [Port(80)] does not fit"),
        "{err}"
    );
    assert!(objects(&ns.ruleset(), "table").is_empty());
}

#[test]
fn rules_are_deleted_by_handle_and_chains_flushed() {
    let ns = Ns::new();
    let mut b = base_batch();
    for port in [80, 443, 8080] {
        b.add_rule(
            &Rule::new(Family::Ip, T, "services")
                .match_l4proto(proto::TCP)
                .match_dport(port)
                .accept(),
        );
    }
    ns.apply(&b).unwrap();
    let rules = rules_of(&ns.ruleset(), "services");
    assert_eq!(rules.len(), 3);
    let handle = rules[1]["handle"].as_u64().unwrap();

    let mut del = Batch::new();
    del.delete_rule(&Rule::new(Family::Ip, T, "services").with_handle(handle));
    ns.apply(&del).unwrap();
    let rules = rules_of(&ns.ruleset(), "services");
    assert_eq!(rules.len(), 2);
    assert!(rules.iter().all(|r| r["handle"] != handle));

    let mut flush = Batch::new();
    flush.flush_chain(&Chain::new(Family::Ip, T, "services"));
    ns.apply(&flush).unwrap();
    assert!(rules_of(&ns.ruleset(), "services").is_empty());
    assert_eq!(rules_of(&ns.ruleset(), "nat-prerouting").len(), 1);

    let mut flush = Batch::new();
    flush.flush_table(&Table::new(Family::Ip, T));
    ns.apply(&flush).unwrap();
    assert!(objects(&ns.ruleset(), "rule").is_empty());
    assert_eq!(objects(&ns.ruleset(), "chain").len(), 2);

    let mut del = Batch::new();
    del.delete_table(&Table::new(Family::Ip, T));
    ns.apply(&del).unwrap();
    assert!(objects(&ns.ruleset(), "table").is_empty());
}

/// Elements of `set` as nft prints them.
fn elements_of(ruleset: &[Value], set: &str) -> Vec<Value> {
    let sets = objects(ruleset, "set")
        .into_iter()
        .chain(objects(ruleset, "map"));
    sets.filter(|s| s["name"] == set)
        .flat_map(|s| s["elem"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> Datum {
    Datum::Ipv4(Ipv4Addr::new(a, b, c, d))
}

#[test]
fn set_elements_are_added_and_deleted_in_later_batches() {
    let ns = Ns::new();
    let addrs = Set::new(Family::Ip, T, "addrs", [KeyType::Ipv4Addr]).timeout(None);
    let ports = Set::new(Family::Ip, T, "ports", [KeyType::InetService]);
    let nets = Set::new(Family::Ip, T, "nets", [KeyType::Ipv4Addr]).interval();
    let mut b = base_batch();
    b.add_set(&addrs)
        .add_set(&ports)
        .add_set(&nets)
        .add_elements(
            &addrs,
            &[
                SetElement::new([v4(10, 0, 0, 1)]),
                SetElement::new([v4(10, 0, 0, 2)]).timeout(Duration::from_secs(3600)),
                SetElement::new([v4(10, 0, 0, 3)]).comment("third"),
            ],
        )
        .add_elements(
            &ports,
            &[
                SetElement::new([Datum::Port(80)]),
                SetElement::new([Datum::Port(443)]),
            ],
        )
        .add_elements(
            &nets,
            &[
                SetElement::prefix(net("10.244.0.0/16")),
                SetElement::prefix(net("192.168.1.0/24")),
            ],
        )
        .add_rule(
            &Rule::new(Family::Ip, T, "services")
                .match_in_set(&[Field::IpSaddr], "nets", false)
                .match_in_set(&[Field::IpDaddr], "addrs", true)
                .match_in_set(&[Field::Dport], "ports", false)
                .drop(),
        );
    ns.apply(&b).unwrap();
    let rs = ns.ruleset();
    let listing = ns.listing();
    let elems = elements_of(&rs, "addrs");
    assert_eq!(elems.len(), 3, "{listing}");
    assert_eq!(elems[0], json!("10.0.0.1"));
    let timed = &elems[1]["elem"];
    assert_eq!(timed["val"], "10.0.0.2");
    assert_eq!(timed["timeout"], 3600);
    assert_eq!(elems[2]["elem"]["comment"], "third");
    assert_eq!(elements_of(&rs, "ports"), [json!(80), json!(443)]);
    assert_eq!(
        elements_of(&rs, "nets"),
        [
            json!({"prefix": {"addr": "10.244.0.0", "len": 16}}),
            json!({"prefix": {"addr": "192.168.1.0", "len": 24}})
        ],
        "{listing}"
    );
    assert!(
        listing
            .replace('\t', "")
            .contains("ip saddr @nets ip daddr != @addrs th dport @ports drop"),
        "{listing}"
    );

    let mut b = Batch::new();
    b.delete_elements(&addrs, &[SetElement::new([v4(10, 0, 0, 1)])])
        .add_elements(&addrs, &[SetElement::new([v4(10, 0, 0, 4)])])
        .delete_elements(&nets, &[SetElement::prefix(net("10.244.0.0/16"))])
        .delete_elements(&ports, &[SetElement::new([Datum::Port(80)])]);
    ns.apply(&b).unwrap();
    let rs = ns.ruleset();
    let addrs_now: Vec<String> = elements_of(&rs, "addrs")
        .iter()
        .map(|e| {
            e.as_str()
                .unwrap_or_else(|| e["elem"]["val"].as_str().unwrap())
                .to_owned()
        })
        .collect();
    assert_eq!(addrs_now, ["10.0.0.2", "10.0.0.3", "10.0.0.4"]);
    assert_eq!(elements_of(&rs, "ports"), [json!(443)]);
    assert_eq!(
        elements_of(&rs, "nets"),
        [json!({"prefix": {"addr": "192.168.1.0", "len": 24}})]
    );

    // Deleting an absent element fails the whole batch, naming the set.
    let mut b = Batch::new();
    b.add_elements(&ports, &[SetElement::new([Datum::Port(22)])])
        .delete_elements(&ports, &[SetElement::new([Datum::Port(80)])]);
    let err = ns.apply(&b).unwrap_err();
    assert_eq!(
        err.to_string(),
        "delete element ip kubewire ports: No such file or directory"
    );
    assert_eq!(elements_of(&ns.ruleset(), "ports"), [json!(443)]);

    let mut b = Batch::new();
    b.flush_set(&addrs);
    ns.apply(&b).unwrap();
    assert!(elements_of(&ns.ruleset(), "addrs").is_empty());
}

#[test]
fn concatenated_verdict_map_dispatches_to_chains() {
    let ns = Ns::new();
    let service_ips = Set::new(
        Family::Ip,
        T,
        "service-ips",
        [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
    )
    .vmap();
    let endpoints = Set::new(Family::Ip, T, "lb-web", [KeyType::Integer])
        .vmap()
        .constant();
    let dnat_targets = Set::new(
        Family::Ip,
        T,
        "dnat-targets",
        [KeyType::Ipv4Addr, KeyType::InetService],
    )
    .map([KeyType::Ipv4Addr, KeyType::InetService]);
    let mut b = base_batch();
    for chain in ["svc-web", "svc-dns", "ep-web-1", "ep-web-2"] {
        b.add_chain(&Chain::new(Family::Ip, T, chain));
    }
    b.add_set(&service_ips)
        .add_set(&endpoints)
        .add_set(&dnat_targets)
        .add_elements(
            &service_ips,
            &[
                SetElement::new([v4(10, 96, 0, 1), Datum::Proto(proto::TCP), Datum::Port(80)])
                    .verdict(Verdict::Goto("svc-web".into())),
                SetElement::new([v4(10, 96, 0, 10), Datum::Proto(proto::UDP), Datum::Port(53)])
                    .verdict(Verdict::Jump("svc-dns".into())),
            ],
        )
        .add_elements(
            &endpoints,
            &[
                SetElement::new([Datum::Int(0)]).verdict(Verdict::Goto("ep-web-1".into())),
                SetElement::new([Datum::Int(1)]).verdict(Verdict::Goto("ep-web-2".into())),
            ],
        )
        .add_elements(
            &dnat_targets,
            &[SetElement::new([v4(10, 96, 0, 10), Datum::Port(53)])
                .value([v4(10, 244, 1, 5), Datum::Port(5353)])],
        )
        .add_rule(&Rule::new(Family::Ip, T, "services").vmap(
            &[Field::IpDaddr, Field::L4Proto, Field::Dport],
            "service-ips",
        ))
        .add_rule(&Rule::new(Family::Ip, T, "svc-web").numgen_vmap(2, "lb-web"))
        .add_rule(
            &Rule::new(Family::Ip, T, "ep-web-1")
                .dnat(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 2)), Some(8080)),
        )
        .add_rule(
            &Rule::new(Family::Ip, T, "ep-web-2")
                .dnat(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 2)), Some(8080)),
        )
        .add_rule(&Rule::new(Family::Ip, T, "svc-dns").dnat_map(
            Family::Ip,
            &[Field::IpDaddr, Field::Dport],
            "dnat-targets",
        ));
    ns.apply(&b).unwrap();
    let rs = ns.ruleset();
    let listing = ns.listing();

    let map = objects(&rs, "map")
        .into_iter()
        .find(|m| m["name"] == "service-ips")
        .unwrap_or_else(|| panic!("no map: {listing}"));
    assert_eq!(
        map["type"],
        json!(["ipv4_addr", "inet_proto", "inet_service"])
    );
    assert_eq!(map["map"], "verdict");
    // Hash sets list in hash order.
    let mut elems = elements_of(&rs, "service-ips");
    elems.sort_by_key(|e| e.to_string());
    assert_eq!(
        elems,
        [
            json!([{"concat": ["10.96.0.1", "tcp", 80]}, {"goto": {"target": "svc-web"}}]),
            json!([{"concat": ["10.96.0.10", "udp", 53]}, {"jump": {"target": "svc-dns"}}]),
        ],
        "{listing}"
    );
    assert_eq!(
        rules_of(&rs, "services")[0]["expr"],
        json!([{"vmap": {
            "key": {"concat": [
                {"payload": {"protocol": "ip", "field": "daddr"}},
                {"meta": {"key": "l4proto"}},
                {"payload": {"protocol": "th", "field": "dport"}}
            ]},
            "data": "@service-ips"
        }}]),
        "{listing}"
    );
    let text = listing.replace('\t', "");
    for line in [
        "numgen random mod 2 vmap @lb-web",
        "0 : goto ep-web-1, 1 : goto ep-web-2",
        "dnat to 10.244.1.2:8080",
        "dnat ip to ip daddr . th dport map @dnat-targets",
        "10.96.0.10 . 53 : 10.244.1.5 . 5353",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{listing}");
    }
}

/// `ip -n NS ...` from the host: configures namespaces of this test only.
#[allow(clippy::disallowed_methods)]
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dnat_and_masquerade_rewrite_real_traffic() {
    // client (10.200.0.1 on the veth, 10.201.0.1 on lo) <-veth-> server (10.200.0.2).
    // The client connects to a "service" 10.96.0.10:80 from 10.201.0.1: DNAT sends it to
    // the server's 10.200.0.2:8080, and masquerade rewrites the source to 10.200.0.1,
    // the only client address the server has a route back to.
    let client = Ns::new();
    let server = Ns::new();
    let (c, s) = (client.0.as_str(), server.0.as_str());
    // Link names are capped at 15 bytes: "kc"/"ks" + the namespace's "PID-N".
    let id = c.trim_start_matches("kwt-nft-");
    let (veth_c, veth_s) = (format!("kc{id}"), format!("ks{id}"));
    ip(&[
        "link", "add", &veth_c, "netns", c, "type", "veth", "peer", "name", &veth_s, "netns", s,
    ]);
    ip(&["-n", c, "addr", "add", "10.200.0.1/24", "dev", &veth_c]);
    ip(&["-n", c, "addr", "add", "10.201.0.1/32", "dev", "lo"]);
    ip(&["-n", c, "link", "set", &veth_c, "up"]);
    ip(&[
        "-n",
        c,
        "route",
        "add",
        "10.96.0.0/12",
        "dev",
        &veth_c,
        "src",
        "10.201.0.1",
    ]);
    ip(&["-n", s, "addr", "add", "10.200.0.2/24", "dev", &veth_s]);
    ip(&["-n", s, "link", "set", &veth_s, "up"]);

    let rule = |chain: &str| Rule::new(Family::Ip, T, chain);
    let mut b = Batch::new();
    b.add_table(&Table::new(Family::Ip, T))
        .add_chain(&Chain::new(Family::Ip, T, "nat-output").hook(
            ChainType::Nat,
            Hook::Output,
            priority::DSTNAT,
        ))
        .add_chain(&Chain::new(Family::Ip, T, "nat-postrouting").hook(
            ChainType::Nat,
            Hook::Postrouting,
            priority::SRCNAT,
        ))
        .add_rule(
            &rule("nat-output")
                .match_daddr(net("10.96.0.10/32"))
                .match_l4proto(proto::TCP)
                .match_dport(80)
                .counter()
                .dnat(IpAddr::V4(Ipv4Addr::new(10, 200, 0, 2)), Some(8080)),
        )
        .add_rule(
            &rule("nat-postrouting")
                .match_saddr(net("10.201.0.0/24"))
                .counter()
                .masquerade(),
        );
    client.apply(&b).unwrap();

    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_name = server.0.clone();
    let listener = std::thread::spawn(move || {
        netns::run_in(&server_name, move || -> std::io::Result<SocketAddr> {
            let l = TcpListener::bind("10.200.0.2:8080")?;
            ready_tx.send(()).unwrap();
            let (mut conn, peer) = l.accept()?;
            conn.write_all(peer.to_string().as_bytes())?;
            Ok(peer)
        })
        .unwrap()
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let (seen_by_server, seen_by_client) = netns::run_in(&client.0, || {
        let target: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        (reply, conn.peer_addr().unwrap())
    })
    .unwrap();
    let peer = listener.join().unwrap().unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(10, 200, 0, 1)));
    assert_eq!(seen_by_server, peer.to_string());
    // Conntrack undoes the DNAT on the way back: the client still talks to the service.
    assert_eq!(seen_by_client, "10.96.0.10:80".parse().unwrap());

    let rs = client.ruleset();
    for chain in ["nat-output", "nat-postrouting"] {
        let exprs = rules_of(&rs, chain)[0]["expr"].clone();
        let counter = exprs
            .as_array()
            .unwrap()
            .iter()
            .find_map(|e| e.get("counter"))
            .unwrap();
        assert_eq!(counter["packets"], 1, "{chain}: {}", client.listing());
    }
}

#[test]
fn inet_and_ip6_tables_sets_of_macs_and_marks_notrack_and_destroy() {
    let ns = Ns::new();
    let inet = Table::new(Family::Inet, T);
    let ip6 = Table::new(Family::Ip6, T);
    let macs = Set::new(Family::Inet, T, "macs", [KeyType::EtherAddr]);
    let marks = Set::new(Family::Inet, T, "marks", [KeyType::Mark]);
    let v6nets = Set::new(Family::Inet, T, "v6nets", [KeyType::Ipv6Addr]).interval();
    let rule = |chain: &str| Rule::new(Family::Inet, T, chain);
    let mut b = Batch::new();
    b.add_table(&inet)
        .add_table(&ip6)
        .add_chain(
            &Chain::new(Family::Inet, T, "filter-forward")
                .hook(ChainType::Filter, Hook::Forward, priority::FILTER)
                .policy(Policy::Accept),
        )
        .add_chain(&Chain::new(Family::Inet, T, "raw-prerouting").hook(
            ChainType::Filter,
            Hook::Prerouting,
            priority::RAW,
        ))
        .add_chain(&Chain::new(Family::Ip6, T, "nat-output").hook(
            ChainType::Nat,
            Hook::Output,
            priority::DSTNAT,
        ))
        .add_set(&macs)
        .add_set(&marks)
        .add_set(&v6nets)
        .add_elements(
            &macs,
            &[SetElement::new([Datum::Ether([0x02, 0, 0, 0, 0, 0x01])])],
        )
        .add_elements(&marks, &[SetElement::new([Datum::Mark(0x4000)])])
        .add_elements(&v6nets, &[SetElement::prefix(net("fd00:10:244::/56"))])
        .add_rule(
            &rule("filter-forward")
                .match_saddr(net("10.244.0.0/16"))
                .match_daddr(net("10.96.0.0/12"))
                .accept(),
        )
        .add_rule(
            &rule("filter-forward")
                .match_saddr(net("fd00:10:244::/56"))
                .match_oifname("veth*")
                .reject(Reject::IcmpX(1)),
        )
        .add_rule(
            &rule("filter-forward")
                .match_in_set(&[Field::Mark], "marks", false)
                .drop(),
        )
        .add_rule(
            &rule("filter-forward")
                .match_in_set(&[Field::Ip6Daddr], "v6nets", false)
                .accept(),
        )
        .add_rule(&rule("raw-prerouting").match_iifname("lo").notrack())
        .add_rule(
            &Rule::new(Family::Ip6, T, "nat-output")
                .match_daddr(net("fd00:10:96::1/128"))
                .match_l4proto(proto::TCP)
                .match_dport(443)
                .dnat("fd00:10:244::5".parse().unwrap(), Some(6443)),
        );
    ns.apply(&b).unwrap();
    let listing = ns.listing();
    let text = listing.replace('\t', "");
    for line in [
        "table inet kubewire",
        "ip saddr 10.244.0.0/16 ip daddr 10.96.0.0/12 accept",
        // icmpx port-unreachable is the inet default, printed as a bare "reject".
        "ip6 saddr fd00:10:244::/56 oifname \"veth*\" reject\n",
        "meta mark @marks drop",
        "ip6 daddr @v6nets accept",
        "iifname \"lo\" notrack",
        "elements = { 02:00:00:00:00:01 }",
        "elements = { 0x00004000 }",
        "elements = { fd00:10:244::/56 }",
        "table ip6 kubewire",
        "ip6 daddr fd00:10:96::1 tcp dport 443 dnat to [fd00:10:244::5]:6443",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{listing}");
    }

    let mut b = Batch::new();
    b.destroy_table(&ip6)
        .destroy_table(&Table::new(Family::Ip, "never-created"));
    ns.apply(&b).unwrap();
    let tables = objects(&ns.ruleset(), "table")
        .iter()
        .map(|t| {
            format!(
                "{} {}",
                t["family"].as_str().unwrap(),
                t["name"].as_str().unwrap()
            )
        })
        .collect::<Vec<_>>();
    assert_eq!(tables, ["inet kubewire"]);
}

#[test]
fn anonymous_sets_and_maps_live_and_die_with_their_rule() {
    let ns = Ns::new();
    let nets = Set::new(Family::Ip, T, "nets", [KeyType::Ipv4Addr]).interval();
    let mut b = base_batch();
    for chain in ["ep-1", "ep-2", "ep-3"] {
        b.add_chain(&Chain::new(Family::Ip, T, chain));
    }
    b.add_set(&nets)
        .add_elements(
            &nets,
            &[
                SetElement::new([v4(192, 168, 2, 7)]),
                SetElement::prefix(net("10.0.0.0/8")),
            ],
        )
        .add_rule(
            &Rule::new(Family::Ip, T, "services")
                .match_l4proto(proto::TCP)
                .match_any(
                    &[Field::Dport],
                    vec![vec![Datum::Port(80)], vec![Datum::Port(443)]],
                )
                .numgen_vmap_inline(vec![
                    Verdict::Goto("ep-1".into()),
                    Verdict::Goto("ep-2".into()),
                    Verdict::Goto("ep-3".into()),
                ]),
        )
        .add_rule(&Rule::new(Family::Ip, T, "services").vmap_inline(
            &[Field::IpDaddr, Field::L4Proto, Field::Dport],
            vec![(
                vec![v4(10, 96, 0, 1), Datum::Proto(proto::UDP), Datum::Port(53)],
                Verdict::Jump("ep-1".into()),
            )],
        ));
    ns.apply(&b).unwrap();
    let listing = ns.listing();
    let text = listing.replace('\t', "");
    for line in [
        "tcp dport { 80, 443 } numgen random mod 3 vmap { 0 : goto ep-1, 1 : goto ep-2, 2 : goto ep-3 }",
        "ip daddr . meta l4proto . th dport vmap { 10.96.0.1 . udp . 53 : jump ep-1 }",
        "elements = { 10.0.0.0/8, 192.168.2.7 }",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{listing}");
    }

    // Deleting a rule takes its anonymous sets along; the other rule's map stays.
    let handle = rules_of(&ns.ruleset(), "services")[0]["handle"]
        .as_u64()
        .unwrap();
    let mut b = Batch::new();
    b.delete_rule(&Rule::new(Family::Ip, T, "services").with_handle(handle));
    ns.apply(&b).unwrap();
    let listing = ns.listing();
    assert!(!listing.contains("numgen"), "{listing}");
    assert!(
        listing.contains("10.96.0.1 . udp . 53 : jump ep-1"),
        "{listing}"
    );
}

#[test]
fn a_batch_of_30000_messages_is_acknowledged_in_full() {
    // Every message asks for an acknowledgement; they all arrive at once after the
    // commit, so the socket's receive buffer must hold them all.
    let ns = Ns::new();
    let mut b = base_batch();
    for i in 0..30_000u32 {
        let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i);
        b.add_rule(
            &Rule::new(Family::Ip, T, "services")
                .match_daddr(IpAddr::V4(addr).into())
                .accept(),
        );
    }
    assert_eq!(b.len(), 30_004);
    ns.apply(&b).unwrap();
    let count = ns.sh(&["nft", "list", "chain", "ip", T, "services"]);
    assert_eq!(count.matches("accept").count(), 30_000);
}

#[test]
fn a_jump_loop_is_refused_as_a_whole() {
    let ns = Ns::new();
    let mut b = base_batch();
    b.add_chain(&Chain::new(Family::Ip, T, "a"))
        .add_rule(&Rule::new(Family::Ip, T, "services").jump("a"))
        .add_rule(&Rule::new(Family::Ip, T, "a").jump("services"));
    let err = ns.apply(&b).unwrap_err();
    // The kernel finds the loop when the closing rule is added (EMLINK).
    assert_eq!(err.to_string(), "add rule ip kubewire a: Too many links");
    assert!(objects(&ns.ruleset(), "table").is_empty());
}

#[test]
fn a_table_is_found_by_its_handle_and_a_remade_one_has_a_new_handle() {
    let ns = Ns::new();
    let mut socket = NftSocket::new_in(&ns.0).unwrap();
    assert_eq!(socket.table_handle(Family::Ip, "kwt").unwrap(), None);
    let gen0 = socket.generation().unwrap();
    let table = Table::new(Family::Ip, "kwt");
    socket.apply(Batch::new().add_table(&table)).unwrap();
    let first = socket.table_handle(Family::Ip, "kwt").unwrap();
    assert!(first.is_some());
    assert_eq!(
        socket.table_handle(Family::Ip6, "kwt").unwrap(),
        None,
        "tables are per family"
    );
    let gen1 = socket.generation().unwrap();
    assert_ne!(gen0, gen1, "a commit changes the generation");
    assert_eq!(socket.generation().unwrap(), gen1, "a read does not");
    // Someone deletes it and makes one of the same name.
    ns.sh(&["nft", "delete", "table", "ip", "kwt"]);
    assert_eq!(socket.table_handle(Family::Ip, "kwt").unwrap(), None);
    ns.sh(&["nft", "add", "table", "ip", "kwt"]);
    let second = socket.table_handle(Family::Ip, "kwt").unwrap();
    assert!(second.is_some() && second != first, "{first:?} {second:?}");
    assert_ne!(socket.generation().unwrap(), gen1);
}

#[test]
fn rules_and_elements_are_listed_back_and_expiring_elements_keep_their_time() {
    let ns = Ns::new();
    let mut socket = NftSocket::new_in(&ns.0).unwrap();
    let f = Family::Ip;
    let table = Table::new(f, "kwt");
    let aff = Set::new(
        f,
        "kwt",
        "affinity",
        [
            KeyType::Ipv4Addr,
            KeyType::InetProto,
            KeyType::InetService,
            KeyType::Ipv4Addr,
        ],
    )
    .map([KeyType::Ipv4Addr, KeyType::InetService])
    .timeout(None)
    .dynamic();
    let classes = Set::new(f, "kwt", "classes", [KeyType::Mark]).vmap();
    let key = |client: u8| {
        vec![
            v4(10, 96, 0, 1),
            Datum::Proto(proto::TCP),
            Datum::Port(80),
            v4(10, 0, 0, client),
        ]
    };
    let value = [v4(10, 244, 1, 5), Datum::Port(8080)];
    let mut b = Batch::new();
    b.add_table(&table).add_set(&aff).add_set(&classes);
    b.add_chain(&Chain::new(f, "kwt", "a"))
        .add_chain(&Chain::new(f, "kwt", "b"));
    b.add_rule(&Rule::new(f, "kwt", "a").accept())
        .add_rule(&Rule::new(f, "kwt", "a").drop())
        .add_rule(&Rule::new(f, "kwt", "b").set_ct_mark(0));
    b.add_elements(
        &aff,
        &[
            SetElement::new(key(1))
                .value(value)
                .timeout(Duration::from_secs(3600)),
            SetElement::new(key(2))
                .value(value)
                .timeout(Duration::from_secs(3600))
                .expires(Duration::from_secs(60)),
        ],
    );
    b.add_elements(
        &classes,
        &[SetElement::new([Datum::Mark(7)]).verdict(Verdict::Goto("b".into()))],
    );
    socket.apply(&b).unwrap();

    let rules = socket.rules(f, "kwt").unwrap();
    let chains: Vec<&str> = rules.iter().map(|r| r.chain.as_str()).collect();
    assert_eq!(chains, ["a", "a", "b"]);
    let handles: std::collections::BTreeSet<u64> = rules.iter().map(|r| r.handle).collect();
    assert_eq!(handles.len(), 3, "handles are unique: {rules:?}");
    assert!(socket.rules(f, "nope").unwrap().is_empty());
    assert!(socket.rules(Family::Ip6, "kwt").unwrap().is_empty());
    // Flushed by hand: the rules are gone, the table's handle is the same.
    ns.sh(&["nft", "flush", "chain", "ip", "kwt", "a"]);
    assert_eq!(socket.rules(f, "kwt").unwrap().len(), 1);

    let mut listed = socket.elements(&aff).unwrap().unwrap();
    listed.sort_by_key(|e| e.key.clone());
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].key, key(1));
    assert_eq!(
        listed[0].data,
        Some(netlink::nft::ElementData::Value(value.to_vec()))
    );
    assert_eq!(listed[0].timeout, Some(Duration::from_secs(3600)));
    let left = |e: &SetElement| e.expires.unwrap();
    assert!(left(&listed[0]) > Duration::from_secs(3500), "{listed:?}");
    assert!(
        left(&listed[1]) <= Duration::from_secs(60) && left(&listed[1]) > Duration::from_secs(50),
        "the time left is the one given: {listed:?}"
    );
    let vmap = socket.elements(&classes).unwrap().unwrap();
    assert_eq!(
        vmap,
        [SetElement::new([Datum::Mark(7)]).verdict(Verdict::Goto("b".into()))]
    );
    let gone = Set::new(f, "kwt", "gone", [KeyType::Mark]);
    assert_eq!(socket.elements(&gone).unwrap(), None);
    // What nft shows for the element added with its time left.
    let text = ns.listing();
    assert!(text.contains("10.0.0.2 timeout 1h expires"), "{text}");
    // Destroying an element that is there and one that is not (it timed out, say) is
    // no error.
    let mut b = Batch::new();
    b.destroy_elements(&aff, &[SetElement::new(key(1)), SetElement::new(key(9))]);
    socket.apply(&b).unwrap();
    let left: Vec<_> = socket
        .elements(&aff)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(left, [key(2)]);
}

#[test]
fn the_connection_mark_carries_a_value_from_a_map_to_a_verdict_map() {
    // `ct mark set KEY map @m ct mark vmap @v`: what nft prints, and that it runs.
    let ns = Ns::new();
    let f = Family::Ip;
    let m = Set::new(f, T, "m", [KeyType::InetProto, KeyType::InetService]).map([KeyType::Mark]);
    let v = Set::new(f, T, "v", [KeyType::Mark]).vmap();
    let mut b = Batch::new();
    b.add_table(&Table::new(f, T)).add_set(&m).add_set(&v);
    b.add_chain(&Chain::new(f, T, "seven"));
    b.add_chain(&Chain::new(f, T, "out").hook(ChainType::Filter, Hook::Output, 0));
    b.add_rule(
        &Rule::new(f, T, "out")
            .match_ct_mark(0)
            .set_ct_mark_from_map(&[Field::L4Proto, Field::Dport], "m")
            .vmap(&[Field::CtMark], "v"),
    );
    b.add_rule(&Rule::new(f, T, "seven").set_ct_mark(0).counter().drop());
    b.add_elements(
        &m,
        &[SetElement::new([Datum::Proto(proto::UDP), Datum::Port(9)]).value([Datum::Mark(7)])],
    );
    b.add_elements(
        &v,
        &[SetElement::new([Datum::Mark(7)]).verdict(Verdict::Goto("seven".into()))],
    );
    ns.apply(&b).unwrap();
    let text = ns.listing();
    assert!(
        text.contains(
            "ct mark 0x00000000 ct mark set meta l4proto . th dport map @m ct mark vmap @v"
        ),
        "{text}"
    );
    ns.sh(&["ip", "link", "set", "lo", "up"]);
    // A datagram to port 9 is dropped by `seven`; port 10 is not in the map.
    let send = |port: u16| {
        netns::run_in(&ns.0, move || {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.send_to(b"x", ("127.0.0.1", port)).is_ok()
        })
        .unwrap()
    };
    assert!(!send(9), "dropped on output: the send fails");
    assert!(send(10));
    let counted = ns.sh(&["nft", "list", "chain", "ip", T, "seven"]);
    assert!(counted.contains("packets 1"), "{counted}");
}

#[test]
fn concatenated_ranges_are_added_listed_and_deleted() {
    let ns = Ns::new();
    let key = [
        KeyType::Ipv4Addr,
        KeyType::Ipv4Addr,
        KeyType::InetProto,
        KeyType::InetService,
    ];
    let allowed = Set::new(Family::Ip, T, "allowed", key).interval();
    let range = |peer: (Datum, Datum), proto: (u8, u8), port: (u16, u16)| {
        SetElement::ranges(
            [
                v4(10, 0, 0, 1),
                peer.0,
                Datum::Proto(proto.0),
                Datum::Port(port.0),
            ],
            [
                v4(10, 0, 0, 1),
                peer.1,
                Datum::Proto(proto.1),
                Datum::Port(port.1),
            ],
        )
    };
    let blocks = range(
        (v4(10, 244, 0, 0), v4(10, 244, 1, 255)),
        (proto::TCP, proto::TCP),
        (81, 90),
    );
    let everyone = range(
        (v4(0, 0, 0, 0), v4(255, 255, 255, 255)),
        (proto::UDP, proto::UDP),
        (0, u16::MAX),
    );
    let mut b = base_batch();
    b.add_set(&allowed)
        .add_elements(&allowed, &[blocks.clone(), everyone.clone()])
        .add_rule(
            &Rule::new(Family::Ip, T, "services")
                .match_in_set(
                    &[Field::IpDaddr, Field::IpSaddr, Field::L4Proto, Field::Dport],
                    "allowed",
                    false,
                )
                .accept(),
        );
    ns.apply(&b).unwrap();
    // nft 1.0.6 prints each field as a prefix or a range.
    let listing = ns.listing().replace(['\t', '\n'], " ");
    assert!(
        listing.contains("10.0.0.1 . 10.244.0.0/23 . tcp . 81-90"),
        "{listing}"
    );
    assert!(
        listing.contains("10.0.0.1 . 0.0.0.0/0 . udp . 0-65535"),
        "{listing}"
    );
    assert_eq!(elements_of(&ns.ruleset(), "allowed").len(), 2);

    // An element overlapping one already there is refused by the kernel, and names
    // the set.
    let mut b = Batch::new();
    b.add_elements(
        &allowed,
        &[range(
            (v4(10, 244, 1, 0), v4(10, 244, 1, 0)),
            (proto::TCP, proto::TCP),
            (85, 85),
        )],
    );
    let err = ns.apply(&b).unwrap_err().to_string();
    assert!(err.contains("allowed"), "{err}");

    let mut b = Batch::new();
    b.delete_elements(&allowed, &[blocks]);
    ns.apply(&b).unwrap();
    let listing = ns.listing().replace(['\t', '\n'], " ");
    assert!(!listing.contains("10.244.0.0/23"), "{listing}");
    assert_eq!(elements_of(&ns.ruleset(), "allowed").len(), 1);
}

/// A `limit` and `log group` rule sends a copy of each packet within the rate to the
/// socket bound to the group in that namespace, with the rule's prefix; nft lists both
/// statements back.
#[test]
fn logged_packets_reach_the_nflog_group_within_the_rate() {
    use netlink::nflog::NflogSocket;
    use std::net::UdpSocket;

    let ns = Ns::new();
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    let mut batch = Batch::new();
    let table = Table::new(Family::Ip, "log");
    batch
        .add_table(&table)
        .add_chain(&Chain::new(Family::Ip, "log", "out").hook(
            ChainType::Filter,
            Hook::Output,
            priority::FILTER,
        ));
    batch.add_rule(
        &Rule::new(Family::Ip, "log", "out")
            .match_daddr(net("127.0.0.2/32"))
            .limit(2, 1)
            .log_group(4242, "kubewire-policy egress networkpolicy")
            .counter(),
    );
    ns.apply(&batch).unwrap();
    let listed = ns.sh(&["nft", "list", "ruleset"]);
    assert!(
        listed.contains("limit rate 2/second burst 1 packets")
            && listed.contains("log prefix \"kubewire-policy egress networkpolicy\" group 4242"),
        "{listed}"
    );
    let mut socket = NflogSocket::bind_in(&ns.0, 4242, 96).unwrap();
    socket
        .set_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    // A second socket cannot take the group.
    assert!(NflogSocket::bind_in(&ns.0, 4242, 96).is_err());
    // Ten datagrams at once: the rate lets the burst through, not all ten.
    netns::run_in(&ns.0, || {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        for _ in 0..10 {
            udp.send_to(b"kubewire", "127.0.0.2:5353").unwrap();
        }
    })
    .unwrap();
    let mut logged = Vec::new();
    for _ in 0..4 {
        logged.extend(socket.recv().unwrap());
    }
    assert!(!logged.is_empty() && logged.len() < 10, "{}", logged.len());
    let first = &logged[0];
    assert_eq!(first.prefix, "kubewire-policy egress networkpolicy");
    let flow = first.flow().unwrap();
    assert_eq!(
        (flow.dst, flow.proto, flow.dport),
        ("127.0.0.2".parse().unwrap(), 17, Some(5353))
    );
}

/// `redirect to :PORT` in the output hook sends a connection to a local listener that
/// reads where it was going with `SO_ORIGINAL_DST`, and `meta skuid` exempts one user's
/// sockets; nft lists both as it writes them.
#[test]
fn redirected_connections_keep_their_original_destination() {
    let ns = Ns::new();
    let id = ns.0.trim_start_matches("kwt-nft-");
    // A route for the "service" range: a veth pair within the namespace (no dummy
    // module on these machines).
    let (a, b) = (format!("ka{id}"), format!("kb{id}"));
    ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
    ip(&[
        "-n", &ns.0, "link", "add", &a, "type", "veth", "peer", "name", &b,
    ]);
    ip(&["-n", &ns.0, "link", "set", &a, "up"]);
    ip(&["-n", &ns.0, "link", "set", &b, "up"]);
    ip(&["-n", &ns.0, "addr", "add", "10.200.0.1/24", "dev", &a]);
    ip(&["-n", &ns.0, "route", "add", "10.96.0.0/12", "dev", &a]);

    let rule = || Rule::new(Family::Inet, T, "output");
    let mut b = Batch::new();
    b.add_table(&Table::new(Family::Inet, T))
        .add_chain(&Chain::new(Family::Inet, T, "output").hook(
            ChainType::Nat,
            Hook::Output,
            priority::DSTNAT,
        ))
        .add_rule(&rule().match_skuid(2102).ret())
        .add_rule(&rule().match_l4proto(proto::TCP).counter().redirect(4140));
    ns.apply(&b).unwrap();

    let text = ns.listing();
    assert!(text.contains("meta skuid 2102 return"), "{text}");
    assert!(text.contains("redirect to :4140"), "{text}");

    let (seen, reply) = netns::run_in(&ns.0, || {
        let l = TcpListener::bind("0.0.0.0:4140").unwrap();
        let client = std::thread::spawn(|| {
            let target: SocketAddr = "10.96.0.10:80".parse().unwrap();
            let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
            let mut reply = String::new();
            conn.read_to_string(&mut reply).unwrap();
            reply
        });
        // Bounded: a client that failed must fail the test, not hang it.
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut conn = loop {
            match l.accept() {
                Ok((c, _)) => break c,
                Err(_) if std::time::Instant::now() < deadline && !client.is_finished() => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("no redirected connection: {e}"),
            }
        };
        conn.set_nonblocking(false).unwrap();
        let original = netlink::original_destination(&conn).unwrap();
        conn.write_all(b"hello").unwrap();
        drop(conn);
        (original, client.join().unwrap())
    })
    .unwrap();
    assert_eq!(seen, "10.96.0.10:80".parse().unwrap());
    assert_eq!(reply, "hello");
}
