//! The server over real sockets on loopback, with a hand-made view (no API server):
//! SERVFAIL until synced, EDNS0 and truncation, TCP, bad packets, forwarding with its
//! cache, max_concurrent, failover, ExternalName chasing upstream, health and metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dns::view::{EndpointInfo, Kind, Port, ServiceInfo, SliceInfo};
use dns::{Args, PodMode, Shared};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

fn args(upstreams: &[SocketAddr], max_concurrent: usize) -> Args {
    Args {
        client: Default::default(),
        listen: vec!["127.0.0.1:0".into()],
        cluster_domain: "cluster.local".into(),
        ttl: 30,
        pods: PodMode::Insecure,
        upstream: upstreams.iter().map(ToString::to_string).collect(),
        // No nameserver lines: with no --upstream, nothing to forward to.
        resolv_conf: empty_resolv_conf(),
        max_concurrent,
        health_listen: "127.0.0.1:0".into(),
        metrics_listen: "127.0.0.1:0".into(),
        udp_threads: Some(2),
    }
}

fn empty_resolv_conf() -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("kwt-dns-resolv-{}.conf", std::process::id()));
    std::fs::write(&p, "search example\n").unwrap();
    p
}

struct Server {
    shared: Arc<Shared>,
    dns: SocketAddr,
    http: SocketAddr,
}

/// A server with `web` (ClusterIP) and `big` (headless, 100 endpoints) in `default`.
async fn server(upstreams: &[SocketAddr], max_concurrent: usize) -> Server {
    let a = args(upstreams, max_concurrent);
    let shared = dns::shared(&a).unwrap();
    let running = dns::start(shared.clone(), &a).unwrap();
    shared.update(|v| {
        let k = v.key("default", "web");
        v.upsert_service(
            k,
            ServiceInfo {
                kind: Kind::ClusterIp(vec!["10.96.0.20".parse().unwrap()]),
                ports: vec![],
                publish_not_ready: false,
            },
        );
        let k = v.key("default", "big");
        v.upsert_service(
            k,
            ServiceInfo {
                kind: Kind::Headless,
                ports: vec![],
                publish_not_ready: false,
            },
        );
        let k = v.key("default", "big-1");
        v.upsert_slice(
            k,
            SliceInfo {
                service: "big".into(),
                endpoints: (0..100u8)
                    .map(|i| EndpointInfo {
                        addresses: vec![format!("10.244.7.{i}").parse().unwrap()],
                        hostname: None,
                        ready: true,
                    })
                    .collect(),
                ports: vec![Port {
                    name: "http".into(),
                    protocol: "tcp".into(),
                    port: 80,
                }],
            },
        );
        let k = v.key("default", "ext");
        v.upsert_service(
            k,
            ServiceInfo {
                kind: Kind::ExternalName("www.example.com".into()),
                ports: vec![],
                publish_not_ready: false,
            },
        );
    });
    Server {
        shared,
        dns: running.dns[0],
        http: running.http[0],
    }
}

fn query_bytes(name: &str, t: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    if let Some(p) = edns {
        let mut e = Edns::new();
        e.set_max_payload(p);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

/// Sends raw bytes over UDP; the answer, or `None` after 2 s.
fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(bytes, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let n = s.recv(&mut buf).ok()?;
    Some(buf[..n].to_vec())
}

fn udp(server: SocketAddr, name: &str, t: RecordType, edns: Option<u16>) -> Message {
    let bytes = udp_raw(server, &query_bytes(name, t, edns)).expect("an answer over UDP");
    Message::from_vec(&bytes).unwrap()
}

fn tcp(server: SocketAddr, name: &str, t: RecordType) -> Message {
    let mut s = TcpStream::connect(server).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let q = query_bytes(name, t, None);
    // Two queries on one connection: the server keeps it open between them.
    for _ in 0..2 {
        s.write_all(&u16::try_from(q.len()).unwrap().to_be_bytes())
            .unwrap();
        s.write_all(&q).unwrap();
    }
    let mut last = Vec::new();
    for _ in 0..2 {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf).unwrap();
        last = buf;
    }
    Message::from_vec(&last).unwrap()
}

/// `GET path` with hyper's client: the status, the Content-Type and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let content_type = response
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// A fake upstream: answers `A` with 192.0.2.1 (TTL 60), NXDOMAIN for names starting
/// with `nx` (SOA minimum 60), never answers names starting with `slow`. Counts queries.
async fn upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let q = req.queries[0].clone();
            let label = q.name().to_ascii();
            if label.starts_with("slow") {
                continue;
            }
            let mut m = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
            m.add_query(q.clone());
            if label.starts_with("nx") {
                m.metadata.response_code = ResponseCode::NXDomain;
                let soa = SOA::new(Name::root(), Name::root(), 1, 1, 1, 1, 60);
                m.authorities
                    .push(Record::from_rdata(Name::root(), 60, RData::SOA(soa)));
            } else if q.query_type() == RecordType::A {
                m.answers.push(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::A(A::new(192, 0, 2, 1)),
                ));
            }
            let _ = sock.send_to(&m.to_vec().unwrap(), peer).await;
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servfail_until_synced_then_answers_and_ready() {
    let s = server(&[], 10).await;
    assert_eq!(
        http_get(s.http, "/ready").await,
        (503, "text/plain".into(), "not synced".into())
    );
    assert_eq!(
        http_get(s.http, "/health").await,
        (200, "text/plain".into(), "OK".into())
    );
    assert_eq!(
        http_get(s.http, "/nothing").await,
        (404, "text/plain".into(), "not found".into())
    );
    let d = s.dns;
    let m = tokio::task::spawn_blocking(move || {
        udp(d, "web.default.svc.cluster.local.", RecordType::A, None)
    })
    .await
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    s.shared.set_synced();
    let m = tokio::task::spawn_blocking(move || {
        udp(d, "Web.Default.svc.cluster.local.", RecordType::A, None)
    })
    .await
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(m.answers[0].data.to_string(), "10.96.0.20");
    // The question comes back as the client spelled it.
    assert_eq!(
        m.queries[0].name().to_ascii(),
        "Web.Default.svc.cluster.local."
    );
    assert_eq!(
        http_get(s.http, "/ready?verbose").await,
        (200, "text/plain".into(), "OK".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edns_truncation_and_tcp() {
    let s = server(&[], 10).await;
    s.shared.set_synced();
    let d = s.dns;
    tokio::task::spawn_blocking(move || {
        let name = "big.default.svc.cluster.local.";
        // 100 A records do not fit 512 bytes: TC over UDP without EDNS.
        let m = udp(d, name, RecordType::A, None);
        assert!(m.metadata.truncation);
        assert!(m.answers.is_empty());
        assert!(m.edns.is_none());
        // With EDNS0 and 4096 bytes they fit; the OPT carries our payload size.
        let m = udp(d, name, RecordType::A, Some(4096));
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
        assert_eq!(
            m.edns.as_ref().unwrap().max_payload(),
            dns::wire::ADVERTISED_PAYLOAD
        );
        // Again from the hot-path cache: same answer, this request's id.
        let mut q = query_bytes(name, RecordType::A, Some(4096));
        q[0] = 0x77;
        let m = Message::from_vec(&udp_raw(d, &q).unwrap()).unwrap();
        assert_eq!(m.metadata.id >> 8, 0x77);
        assert_eq!(m.answers.len(), 100);
        // TCP has room for everything, without EDNS.
        let m = tcp(d, name, RecordType::A);
        assert!(!m.metadata.truncation);
        assert_eq!(m.answers.len(), 100);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_get_formerr_or_nothing_and_the_server_keeps_answering() {
    let s = server(&[], 10).await;
    s.shared.set_synced();
    let d = s.dns;
    tokio::task::spawn_blocking(move || {
        let good = query_bytes("web.default.svc.cluster.local.", RecordType::A, None);
        // Truncated inside the question: FORMERR with the request's id.
        let m = udp_raw(d, &good[..good.len() - 3]).expect("FORMERR");
        assert_eq!(&m[..2], &good[..2]);
        assert_eq!(m[3] & 0x0f, 1, "rcode FORMERR");
        // Shorter than a header, and a response: no answer.
        assert!(udp_raw(d, &[1, 2, 3]).is_none());
        let mut resp = good.clone();
        resp[2] |= 0x80;
        assert!(udp_raw(d, &resp).is_none());
        // Two questions: FORMERR. An unknown opcode: NOTIMP.
        let mut two = Message::from_vec(&good).unwrap();
        two.add_query(two.queries[0].clone());
        let m = Message::from_vec(&udp_raw(d, &two.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let mut notify = good.clone();
        notify[2] = (notify[2] & 0x87) | (4 << 3);
        let m = udp_raw(d, &notify).unwrap();
        assert_eq!(m[3] & 0x0f, 4, "rcode NOTIMP");
        // Oversized garbage over TCP: the connection is closed, not hung.
        let mut t = TcpStream::connect(d).unwrap();
        t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        t.write_all(&[0xff, 0xff]).unwrap();
        t.write_all(&[0u8; 65535]).unwrap();
        let mut len = [0u8; 2];
        assert!(t.read_exact(&mut len).is_err() || len != [0, 0]);
        // Still answering.
        let m = udp(d, "web.default.svc.cluster.local.", RecordType::A, None);
        assert_eq!(m.answers.len(), 1);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_caches_positive_and_negative_answers() {
    let (up, count) = upstream().await;
    let s = server(&[up], 10).await;
    s.shared.set_synced();
    let (d, http) = (s.dns, s.http);
    let c = count.clone();
    tokio::task::spawn_blocking(move || {
        let m = udp(d, "www.example.com.", RecordType::A, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative);
        assert_eq!(m.answers[0].data.to_string(), "192.0.2.1");
        let m = udp(d, "WWW.example.com.", RecordType::A, None);
        assert_eq!(m.answers[0].data.to_string(), "192.0.2.1");
        assert_eq!(m.answers[0].name.to_ascii(), "WWW.example.com.");
        assert!(m.answers[0].ttl <= 60);
        assert_eq!(
            c.load(Ordering::SeqCst),
            1,
            "the second query came from the cache"
        );
        let m = udp(d, "nx.example.com.", RecordType::A, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        let m = udp(d, "nx.example.com.", RecordType::A, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(c.load(Ordering::SeqCst), 2, "NXDOMAIN was cached too");
        // An ExternalName outside the cluster: the CNAME, then the upstream's answer.
        let m = udp(d, "ext.default.svc.cluster.local.", RecordType::A, None);
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert_eq!(m.answers.len(), 2);
        assert_eq!(m.answers[0].data.to_string(), "www.example.com.");
        assert_eq!(m.answers[1].data.to_string(), "192.0.2.1");
        // Over TCP the same way.
        let m = tcp(d, "www.example.com.", RecordType::A);
        assert_eq!(m.answers[0].data.to_string(), "192.0.2.1");
    })
    .await
    .unwrap();
    let (status, content_type, metrics) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    for family in [
        "coredns_dns_requests_total{",
        "coredns_dns_responses_total{",
        "rcode=\"NXDOMAIN\"",
        "coredns_dns_request_duration_seconds_bucket{",
        "coredns_cache_hits_total{",
        "coredns_cache_misses_total",
        "coredns_cache_entries{",
        "coredns_forward_requests_total{",
        "coredns_forward_responses_total{",
        "coredns_forward_request_duration_seconds_bucket{",
    ] {
        assert!(
            metrics.contains(family),
            "{family} missing from:\n{metrics}"
        );
    }
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("coredns_dns_requests_total{")
                && l.contains("proto=\"udp\"")
                && l.contains("type=\"A\"")
                && l.contains("family=\"1\"")
        })
        .unwrap();
    let n: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 5.0, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_refuses_and_failover_to_a_working_upstream() {
    let (up, _) = upstream().await;
    // Nothing listens on this one: queries to it fail and it gets marked down.
    let dead = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = server(&[dead, up], 1).await;
    s.shared.set_synced();
    let d = s.dns;
    tokio::task::spawn_blocking(move || {
        // Every query eventually gets its answer from the working upstream.
        for i in 0..4 {
            let m = udp(d, &format!("host{i}.example.com."), RecordType::A, None);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "query {i}");
            assert_eq!(m.answers[0].data.to_string(), "192.0.2.1");
        }
        // One query in flight (never answered) fills max_concurrent=1: the next is REFUSED.
        let slow = UdpSocket::bind("127.0.0.1:0").unwrap();
        slow.send_to(&query_bytes("slow.example.com.", RecordType::A, None), d)
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let m = udp(d, "other.example.com.", RecordType::A, None);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    })
    .await
    .unwrap();
    let metrics = s.shared.metrics.render();
    assert!(
        metrics.contains("coredns_forward_max_concurrent_rejects_total 1"),
        "{metrics}"
    );
}
