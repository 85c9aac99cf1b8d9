//! Random and mutated packets through the request path (the same code the fuzz target
//! in `fuzz/` drives, here with a fixed-seed generator so it runs in every test run):
//! no panic, and every reply is a well-formed response to the request's id.

use std::sync::Arc;

use dns::forward::Forwarder;
use dns::metrics::Metrics;
use dns::view::{Kind, ServiceInfo};
use dns::wire::{AnswerCache, Handled, Proto, handle};
use dns::{PodMode, Shared, Zone};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

fn shared() -> Arc<Shared> {
    let zone = Zone::new("cluster.local", 30, PodMode::Insecure).unwrap();
    let s = Arc::new(Shared::new(
        zone,
        Forwarder::new(vec![], 10),
        Metrics::new("dns://:53"),
    ));
    s.update(|v| {
        let k = v.key("default", "web");
        v.upsert_service(
            k,
            ServiceInfo {
                kind: Kind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
                ports: vec![],
                publish_not_ready: false,
            },
        );
    });
    s.set_synced();
    s
}

fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "web.default.svc.cluster.local.",
        "_http._tcp.web.default.svc.cluster.local.",
        "20.0.96.10.in-addr.arpa.",
        "10-244-1-1.default.pod.cluster.local.",
        "example.com.",
    ];
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut m = Message::new(7, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(Name::from_ascii(n).unwrap(), RecordType::A));
        if i % 2 == 0 {
            let mut e = Edns::new();
            e.set_max_payload(1232);
            m.edns = Some(e);
        }
        out.push(m.to_vec().unwrap());
    }
    out
}

fn check(shared: &Shared, cache: &mut AnswerCache, bytes: &[u8]) {
    let mut out = Vec::new();
    if cache.lookup(bytes, shared.generation(), &mut out) {
        assert_eq!(&out[..2], &bytes[..2]);
        return;
    }
    for proto in [Proto::Udp, Proto::Tcp] {
        match handle(shared, bytes, proto, false) {
            Handled::Reply {
                bytes: reply,
                cacheable,
            } => {
                assert!(reply.len() >= 12);
                assert_eq!(&reply[..2], &bytes[..2], "reply carries the request's id");
                assert_eq!(reply[2] & 0x80, 0x80, "reply is a response");
                if proto == Proto::Udp {
                    assert!(reply.len() <= 4096);
                    if cacheable {
                        cache.insert(bytes, shared.generation(), &reply);
                    }
                }
            }
            Handled::Drop | Handled::Forward(_) => {}
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    let shared = shared();
    let mut cache = AnswerCache::default();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = rng.below(600);
        let bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        check(&shared, &mut cache, &bytes);
    }
}

#[test]
fn mutated_queries_never_panic() {
    let shared = shared();
    let mut cache = AnswerCache::default();
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let seeds = seeds();
    for _ in 0..50_000 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(4) {
            if bytes.is_empty() {
                bytes.push(rng.byte());
            }
            match rng.below(4) {
                0 => {
                    let i = rng.below(bytes.len());
                    bytes[i] = rng.byte();
                }
                1 => bytes.truncate(rng.below(bytes.len() + 1)),
                2 => {
                    let i = rng.below(bytes.len() + 1);
                    bytes.insert(i, rng.byte());
                }
                _ => {
                    // Compression pointers and big lengths, the classic parser traps.
                    let i = rng.below(bytes.len());
                    bytes[i] = 0xc0 | (rng.byte() & 0x3f);
                }
            }
        }
        check(&shared, &mut cache, &bytes);
    }
}
