//! Applying 10,000 rules, and 10,000 verdict-map elements, in one atomic batch: our
//! netlink encoder against the same content as text piped to `nft -f -` (what
//! knftables-based kube-proxy does). Runs as root, inside a throwaway namespace.
//!
//! `cargo bench -p netlink --bench nft_batch`

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netlink::netns;
use netlink::nft::{
    Batch, Chain, ChainType, Datum, Family, Field, Hook, KeyType, NftSocket, Rule, Set, SetElement,
    Table, Verdict, priority, proto,
};

const N: u32 = 10_000;
const RUNS: usize = 5;
const T: &str = "kubewire";

struct Ns(String);

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = netns::delete(&self.0);
    }
}

fn addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

fn skeleton(b: &mut Batch) {
    b.add_table(&Table::new(Family::Ip, T))
        .add_chain(&Chain::new(Family::Ip, T, "nat-prerouting").hook(
            ChainType::Nat,
            Hook::Prerouting,
            priority::DSTNAT,
        ))
        .add_chain(&Chain::new(Family::Ip, T, "services"))
        .add_chain(&Chain::new(Family::Ip, T, "svc"));
}

const SKELETON_TEXT: &str = "add table ip kubewire
add chain ip kubewire nat-prerouting { type nat hook prerouting priority dstnat; }
add chain ip kubewire services
add chain ip kubewire svc
";

fn rules_batch() -> Batch {
    let mut b = Batch::new();
    skeleton(&mut b);
    for i in 0..N {
        b.add_rule(
            &Rule::new(Family::Ip, T, "services")
                .match_daddr(std::net::IpAddr::from(addr(i)).into())
                .match_l4proto(proto::TCP)
                .match_dport(80)
                .counter()
                .goto("svc"),
        );
    }
    b
}

fn rules_text() -> String {
    let mut t = SKELETON_TEXT.to_owned();
    for i in 0..N {
        t += &format!(
            "add rule ip kubewire services ip daddr {} meta l4proto tcp th dport 80 counter goto svc\n",
            addr(i)
        );
    }
    t
}

fn map() -> Set {
    Set::new(
        Family::Ip,
        T,
        "service-ips",
        [KeyType::Ipv4Addr, KeyType::InetProto, KeyType::InetService],
    )
    .vmap()
}

fn elements_batch() -> Batch {
    let mut b = Batch::new();
    skeleton(&mut b);
    let map = map();
    b.add_set(&map);
    let elems: Vec<_> = (0..N)
        .map(|i| {
            SetElement::new([
                Datum::Ipv4(addr(i)),
                Datum::Proto(proto::TCP),
                Datum::Port(80),
            ])
            .verdict(Verdict::Goto("svc".into()))
        })
        .collect();
    b.add_elements(&map, &elems);
    b.add_rule(&Rule::new(Family::Ip, T, "services").vmap(
        &[Field::IpDaddr, Field::L4Proto, Field::Dport],
        "service-ips",
    ));
    b
}

fn elements_text() -> String {
    let mut t = SKELETON_TEXT.to_owned();
    t += "add map ip kubewire service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }\n";
    t += "add element ip kubewire service-ips {";
    for i in 0..N {
        t += &format!(" {} . tcp . 80 : goto svc,", addr(i));
    }
    t.pop();
    t += " }\n";
    t += "add rule ip kubewire services ip daddr . meta l4proto . th dport vmap @service-ips\n";
    t
}

// The comparison is with the nft binary itself; product code never runs it.
#[allow(clippy::disallowed_methods)]
fn nft(ns: &str, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running nft (apt-get install nftables)");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        pipe.write_all(text.as_bytes()).unwrap();
    }
    drop(pipe);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn reset(ns: &str) {
    nft(ns, &["flush", "ruleset"], None);
}

/// Lines of `nft list ruleset`, to check both paths produced the same ruleset.
fn listing(ns: &str) -> String {
    nft(ns, &["list", "ruleset"], None)
}

/// The listing's words, sorted: hash maps list their elements in any order.
fn sorted_words(listing: &str) -> Vec<&str> {
    let mut words: Vec<&str> = listing
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words.sort_unstable();
    words
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn compare(ns: &str, what: &str, build: fn() -> Batch, text: fn() -> String) {
    let mut ours = Vec::new();
    let mut encode = Vec::new();
    let mut sock = NftSocket::new_in(ns).unwrap();
    let mut our_listing = String::new();
    for _ in 0..RUNS {
        reset(ns);
        let start = Instant::now();
        let batch = build();
        let built = start.elapsed();
        sock.apply(&batch).unwrap();
        ours.push(start.elapsed());
        encode.push(built);
        our_listing = listing(ns);
    }
    let text = text();
    let mut theirs = Vec::new();
    let mut their_listing = String::new();
    for _ in 0..RUNS {
        reset(ns);
        let start = Instant::now();
        nft(ns, &["-f", "-"], Some(&text));
        theirs.push(start.elapsed());
        their_listing = listing(ns);
    }
    reset(ns);
    assert_eq!(
        sorted_words(&our_listing),
        sorted_words(&their_listing),
        "{what}: both paths must produce the same ruleset"
    );
    let (ours, encode, theirs) = (median(ours), median(encode), median(theirs));
    println!(
        "{what:<34} netlink {:>9.2} ms (encode {:>6.2} ms)   nft -f - {:>9.2} ms   nft/netlink {:>6.1}x",
        ours.as_secs_f64() * 1e3,
        encode.as_secs_f64() * 1e3,
        theirs.as_secs_f64() * 1e3,
        theirs.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing else useful.
    let uid = std::fs::metadata("/proc/self").map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.uid()
    });
    assert_eq!(uid.ok(), Some(0), "the nft benchmark needs root");
    let ns = Ns(format!("kwb-nft-{}", std::process::id()));
    netns::create(&ns.0).unwrap();
    println!(
        "median of {RUNS} runs, one atomic batch each, in namespace {}",
        ns.0
    );
    compare(&ns.0, "10,000 rules", rules_batch, rules_text);
    compare(
        &ns.0,
        "10,000 verdict-map elements",
        elements_batch,
        elements_text,
    );
}
