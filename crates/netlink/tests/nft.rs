//! nf_tables batches applied in throwaway network namespaces and read back with the
//! real `nft -j list ruleset`. Needs root (and the `nft` binary); fails, never skips,
//! without them.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use netlink::netns;
use netlink::nft::{
    Batch, Chain, ChainType, Family, Hook, NftSocket, Policy, Reject, Rule, Table, ct_state,
    priority, proto,
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
