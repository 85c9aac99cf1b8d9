//! Prometheus metrics under CoreDNS's names, so its dashboards and alerts work.
//!
//! The hot path must not hash label sets per request: every (proto, family, type) and
//! rcode series is created once at start and kept as a handle in an array.

use std::time::Instant;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::wire::Proto;

type Labels = Vec<(&'static str, String)>;

/// Query types with their own series; the rest count as `other`, as in CoreDNS.
const TYPES: [RecordType; 12] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::PTR,
    RecordType::TXT,
    RecordType::CNAME,
    RecordType::SOA,
    RecordType::NS,
    RecordType::MX,
    RecordType::ANY,
    RecordType::HTTPS,
    RecordType::OPT, // stands for "other"
];

const RCODES: [ResponseCode; 8] = [
    ResponseCode::NoError,
    ResponseCode::FormErr,
    ResponseCode::ServFail,
    ResponseCode::NXDomain,
    ResponseCode::NotImp,
    ResponseCode::Refused,
    ResponseCode::BADVERS,
    ResponseCode::Unknown(4095), // stands for "other"
];

fn type_index(t: RecordType) -> usize {
    TYPES
        .iter()
        .position(|x| *x == t)
        .unwrap_or(TYPES.len() - 1)
}

fn type_name(i: usize) -> String {
    if i == TYPES.len() - 1 {
        "other".into()
    } else {
        TYPES[i].to_string()
    }
}

fn rcode_index(r: ResponseCode) -> usize {
    RCODES
        .iter()
        .position(|x| *x == r)
        .unwrap_or(RCODES.len() - 1)
}

fn rcode_name(r: ResponseCode) -> String {
    match r {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        ResponseCode::BADVERS => "BADVERS".into(),
        _ => "other".into(),
    }
}

/// Every metric the server keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Vec<Counter>,
    responses: Vec<Counter>,
    durations: Vec<Histogram>,
    /// Packets dropped unanswered (responses, shorter than a header).
    pub dropped: Counter,
    cache_entries: Family<Labels, Gauge>,
    cache_hits: Family<Labels, Counter>,
    cache_misses: Counter,
    forward_requests: Family<Labels, Counter>,
    forward_responses: Family<Labels, Counter>,
    forward_durations: Family<Labels, Histogram>,
    forward_health_failures: Family<Labels, Counter>,
    /// Forwards refused because `--max-concurrent` were in flight.
    pub forward_max_concurrent_rejects: Counter,
}

/// CoreDNS's buckets: 0.25 ms doubling to about 8 s.
fn buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

impl Metrics {
    /// Registers every family; `server` is CoreDNS's `server` label (`dns://:53`).
    pub fn new(server: &str) -> Self {
        let mut registry = Registry::with_prefix("coredns");
        let base = || -> Labels {
            vec![
                ("server", server.to_owned()),
                ("zone", ".".to_owned()),
                ("view", String::new()),
            ]
        };
        let requests_f = Family::<Labels, Counter>::default();
        let responses_f = Family::<Labels, Counter>::default();
        let durations_f =
            Family::<Labels, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        let mut requests = Vec::new();
        for proto in ["udp", "tcp"] {
            for family in ["1", "2"] {
                for t in 0..TYPES.len() {
                    let mut l = base();
                    l.push(("proto", proto.into()));
                    l.push(("family", family.into()));
                    l.push(("type", type_name(t)));
                    requests.push(requests_f.get_or_create(&l).clone());
                }
            }
        }
        let responses = RCODES
            .iter()
            .map(|r| {
                let mut l = base();
                l.push(("rcode", rcode_name(*r)));
                l.push(("plugin", String::new()));
                responses_f.get_or_create(&l).clone()
            })
            .collect();
        let durations = (0..TYPES.len())
            .map(|t| {
                let mut l = base();
                l.push(("type", type_name(t)));
                durations_f.get_or_create(&l).clone()
            })
            .collect();
        registry.register(
            "dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            requests_f,
        );
        registry.register(
            "dns_responses",
            "Counter of response status codes.",
            responses_f,
        );
        registry.register(
            "dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            durations_f,
        );
        let dropped = Counter::default();
        registry.register(
            "dns_dropped_packets",
            "Packets dropped without an answer.",
            dropped.clone(),
        );
        let cache_entries = Family::<Labels, Gauge>::default();
        let cache_hits = Family::<Labels, Counter>::default();
        let cache_misses = Counter::default();
        registry.register(
            "cache_entries",
            "The number of elements in the cache.",
            cache_entries.clone(),
        );
        registry.register("cache_hits", "The count of cache hits.", cache_hits.clone());
        registry.register(
            "cache_misses",
            "The count of cache misses.",
            cache_misses.clone(),
        );
        let forward_requests = Family::<Labels, Counter>::default();
        let forward_responses = Family::<Labels, Counter>::default();
        let forward_durations =
            Family::<Labels, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        let forward_health_failures = Family::<Labels, Counter>::default();
        let forward_max_concurrent_rejects = Counter::default();
        registry.register(
            "forward_requests",
            "Counter of requests made per upstream.",
            forward_requests.clone(),
        );
        registry.register(
            "forward_responses",
            "Counter of responses received per upstream.",
            forward_responses.clone(),
        );
        registry.register(
            "forward_request_duration_seconds",
            "Histogram of the time each request took.",
            forward_durations.clone(),
        );
        registry.register(
            "forward_healthcheck_failures",
            "Counter of the number of failed healthchecks.",
            forward_health_failures.clone(),
        );
        registry.register(
            "forward_max_concurrent_rejects",
            "Counter of the number of queries rejected because the concurrent queries were at maximum.",
            forward_max_concurrent_rejects.clone(),
        );
        Metrics {
            registry,
            requests,
            responses,
            durations,
            dropped,
            cache_entries,
            cache_hits,
            cache_misses,
            forward_requests,
            forward_responses,
            forward_durations,
            forward_health_failures,
            forward_max_concurrent_rejects,
        }
    }

    /// Counts one answered request.
    pub fn observe(
        &self,
        proto: Proto,
        v6: bool,
        qtype: RecordType,
        rcode: ResponseCode,
        start: Instant,
    ) {
        let t = type_index(qtype);
        let p = usize::from(proto == Proto::Tcp);
        let f = usize::from(v6);
        self.requests[(p * 2 + f) * TYPES.len() + t].inc();
        self.responses[rcode_index(rcode)].inc();
        self.durations[t].observe(start.elapsed().as_secs_f64());
    }

    /// Counts a request answered from raw bytes (the hot path): type and rcode read
    /// from the wire.
    pub fn observe_raw(&self, proto: Proto, v6: bool, qtype: u16, response: &[u8], start: Instant) {
        let rcode = ResponseCode::from_low(response.get(3).map_or(2, |b| b & 0x0f));
        self.observe(proto, v6, RecordType::from(qtype), rcode, start);
    }

    /// Sets the forward cache size (`type` success or denial).
    pub fn cache_size(&self, success: usize, denial: usize) {
        for (t, n) in [("success", success), ("denial", denial)] {
            self.cache_entries
                .get_or_create(&vec![
                    ("server", "dns://:53".to_owned()),
                    ("type", t.to_owned()),
                ])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Counts a forward cache hit (`success` or `denial`).
    pub fn cache_hit(&self, denial: bool) {
        let t = if denial { "denial" } else { "success" };
        self.cache_hits
            .get_or_create(&vec![
                ("server", "dns://:53".to_owned()),
                ("type", t.to_owned()),
            ])
            .inc();
    }

    /// Counts a forward cache miss.
    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    /// Counts a query sent to upstream `to` and, when one came, its response.
    pub fn forwarded(&self, to: &str, rcode: Option<ResponseCode>, start: Instant) {
        let l = vec![("to", to.to_owned())];
        self.forward_requests.get_or_create(&l).inc();
        if let Some(rcode) = rcode {
            let l = vec![("to", to.to_owned()), ("rcode", rcode_name(rcode))];
            self.forward_responses.get_or_create(&l).inc();
            self.forward_durations
                .get_or_create(&l)
                .observe(start.elapsed().as_secs_f64());
        }
    }

    /// Counts a failed health check of upstream `to`.
    pub fn health_failure(&self, to: &str) {
        self.forward_health_failures
            .get_or_create(&vec![("to", to.to_owned())])
            .inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
