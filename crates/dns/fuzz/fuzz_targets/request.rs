//! Any bytes through what a UDP or TCP request goes through: the hot-path parser and
//! answer cache, then the full handler (hickory-proto's parser, the answer from a view
//! with every kind of service, EDNS and truncation, encoding). It must never panic, and
//! every reply must be a response carrying the request's id.

#![no_main]

use std::cell::RefCell;
use std::sync::{Arc, OnceLock};

use dns::forward::Forwarder;
use dns::metrics::Metrics;
use dns::view::{EndpointInfo, Kind, Port, ServiceInfo, SliceInfo};
use dns::wire::{AnswerCache, Handled, Proto, handle};
use dns::{PodMode, Shared, Zone};
use libfuzzer_sys::fuzz_target;

fn shared() -> &'static Arc<Shared> {
    static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let zone = Zone::new("cluster.local", 30, PodMode::Insecure).unwrap();
        let s = Arc::new(Shared::new(
            zone,
            Forwarder::new(vec![], 10),
            Metrics::new("dns://:53"),
        ));
        s.update(|v| {
            let port = Port {
                name: "http".into(),
                protocol: "tcp".into(),
                port: 80,
            };
            let k = v.key("default", "web");
            v.upsert_service(
                k,
                ServiceInfo {
                    kind: Kind::ClusterIp(vec![
                        "10.96.0.20".parse().unwrap(),
                        "fd00::20".parse().unwrap(),
                    ]),
                    ports: vec![port.clone()],
                    publish_not_ready: false,
                },
            );
            let k = v.key("default", "h");
            v.upsert_service(
                k,
                ServiceInfo {
                    kind: Kind::Headless,
                    ports: vec![port.clone()],
                    publish_not_ready: false,
                },
            );
            let k = v.key("default", "h-1");
            v.upsert_slice(
                k,
                SliceInfo {
                    service: "h".into(),
                    endpoints: (0..40u8)
                        .map(|i| EndpointInfo {
                            addresses: vec![format!("10.244.0.{i}").parse().unwrap()],
                            hostname: (i % 2 == 0).then(|| format!("h-{i}")),
                            ready: i % 5 != 0,
                        })
                        .collect(),
                    ports: vec![port],
                },
            );
            let k = v.key("default", "ext");
            v.upsert_service(
                k,
                ServiceInfo {
                    kind: Kind::ExternalName("web.default.svc.cluster.local".into()),
                    ports: vec![],
                    publish_not_ready: false,
                },
            );
        });
        s.set_synced();
        s
    })
}

thread_local! {
    static CACHE: RefCell<AnswerCache> = RefCell::new(AnswerCache::default());
}

fuzz_target!(|data: &[u8]| {
    let shared = shared();
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        let mut out = Vec::new();
        if cache.lookup(data, shared.generation(), &mut out) {
            assert_eq!(&out[..2], &data[..2]);
        }
        for proto in [Proto::Udp, Proto::Tcp] {
            if let Handled::Reply { bytes, cacheable } = handle(shared, data, proto, false) {
                assert!(bytes.len() >= 12);
                assert_eq!(&bytes[..2], &data[..2]);
                assert_eq!(bytes[2] & 0x80, 0x80);
                if proto == Proto::Udp {
                    assert!(bytes.len() <= 4096);
                    if cacheable {
                        cache.insert(data, shared.generation(), &bytes);
                    }
                }
            }
        }
    });
});
