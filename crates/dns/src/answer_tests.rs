//! View in, answers out: every record kind of the DNS specification, from real API objects (JSON as
//! the API server sends them) through the view's conversions to the records.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::{Value, json};

use crate::answer::{Answer, Outcome, PodMode, Zone, answer};
use crate::view::{View, pod_info, service_info, slice_info};

fn zone() -> Zone {
    Zone::new("cluster.local", 30, PodMode::Insecure).unwrap()
}

fn add_service(v: &mut View, obj: Value) {
    let svc = serde_json::from_value(obj).unwrap();
    let (ns, name, info) = service_info(&svc).unwrap();
    let key = v.key(&ns, &name);
    v.upsert_service(key, info);
}

fn add_slice(v: &mut View, obj: Value) {
    let s = serde_json::from_value(obj).unwrap();
    let (ns, name, info) = slice_info(&s).unwrap();
    let key = v.key(&ns, &name);
    v.upsert_slice(key, info);
}

fn svc(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name}, "spec": spec})
}

fn slice(
    ns: &str,
    name: &str,
    service: &str,
    family: &str,
    endpoints: Value,
    ports: Value,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": family, "endpoints": endpoints, "ports": ports
    })
}

/// The talk's cluster: a ClusterIP service (dual stack, named and unnamed ports), the
/// headless `redis` StatefulSet service with hostnames, a headless service without
/// hostnames, an ExternalName pair.
fn cluster() -> View {
    let mut v = View::new();
    add_service(
        &mut v,
        svc(
            "default",
            "web",
            json!({
                "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
                "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]
            }),
        ),
    );
    add_service(
        &mut v,
        svc(
            "default",
            "plain",
            json!({"clusterIP": "10.96.0.21", "ports": [{"port": 8080}]}),
        ),
    );
    add_service(
        &mut v,
        svc(
            "datans",
            "redis",
            json!({"clusterIP": "None", "ports": [{"name": "redis", "port": 6379}]}),
        ),
    );
    add_slice(
        &mut v,
        slice(
            "datans",
            "redis-abc",
            "redis",
            "IPv4",
            json!([
                {"addresses": ["10.244.1.10"], "hostname": "redis-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.11"], "hostname": "redis-1"},
                {"addresses": ["10.244.1.12"], "hostname": "redis-2", "conditions": {"ready": false}}
            ]),
            json!([{"name": "redis", "port": 6379, "protocol": "TCP"}]),
        ),
    );
    add_slice(
        &mut v,
        slice(
            "datans",
            "redis-v6",
            "redis",
            "IPv6",
            json!([
                {"addresses": ["fd00:10:244:1::10"], "hostname": "redis-0"}
            ]),
            json!([{"name": "redis", "port": 6379, "protocol": "TCP"}]),
        ),
    );
    add_service(
        &mut v,
        svc(
            "default",
            "headlesswebsite",
            json!({"clusterIP": "None", "ports": [{"name": "http", "port": 80}]}),
        ),
    );
    add_slice(
        &mut v,
        slice(
            "default",
            "headlesswebsite-1",
            "headlesswebsite",
            "IPv4",
            json!([
                {"addresses": ["10.244.1.5"]}, {"addresses": ["10.244.2.6"]}
            ]),
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
        ),
    );
    add_service(
        &mut v,
        svc(
            "default",
            "alias",
            json!({"type": "ExternalName", "externalName": "web.default.svc.cluster.local"}),
        ),
    );
    add_service(
        &mut v,
        svc(
            "default",
            "search",
            json!({"type": "ExternalName", "externalName": "www.example.com."}),
        ),
    );
    v
}

fn ask(v: &View, z: &Zone, name: &str, t: RecordType) -> Outcome {
    answer(v, z, &Name::from_ascii(name).unwrap(), t, true)
}

fn ok(v: &View, z: &Zone, name: &str, t: RecordType) -> Answer {
    match ask(v, z, name, t) {
        Outcome::Answer(a) => a,
        other => panic!("{name} {t}: expected an answer, got {other:?}"),
    }
}

fn datas(a: &Answer) -> Vec<String> {
    let mut out: Vec<String> = a.answers.iter().map(|r| r.data.to_string()).collect();
    out.sort();
    out
}

fn ips(a: &Answer) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = a
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(x) => Some(IpAddr::V4(x.0)),
            RData::AAAA(x) => Some(IpAddr::V6(x.0)),
            _ => None,
        })
        .collect();
    out.sort();
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Asserts a negative answer with the zone's SOA in authority.
fn assert_negative(a: &Answer, rcode: ResponseCode) {
    assert_eq!(a.rcode, rcode);
    assert!(a.answers.is_empty(), "{:?}", a.answers);
    assert_eq!(a.authorities.len(), 1);
    let soa: &Record = &a.authorities[0];
    assert_eq!(soa.name.to_ascii(), "cluster.local.");
    let RData::SOA(s) = &soa.data else {
        panic!("not an SOA: {soa:?}")
    };
    assert_eq!(s.mname.to_ascii(), "ns.dns.cluster.local.");
    assert_eq!(s.rname.to_ascii(), "hostmaster.cluster.local.");
    assert_eq!(s.minimum, 30);
}

#[test]
fn dns_version_txt_any_case() {
    let (v, z) = (cluster(), zone());
    let a = ok(&v, &z, "DNS-Version.Cluster.LOCAL.", RecordType::TXT);
    assert_eq!(datas(&a), ["1.1.0"]);
    // The owner keeps the client's spelling.
    assert_eq!(a.answers[0].name.to_ascii(), "DNS-Version.Cluster.LOCAL.");
    assert_negative(
        &ok(&v, &z, "dns-version.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
}

#[test]
fn cluster_ip_a_aaaa_with_ttl() {
    let (v, z) = (cluster(), zone());
    let a = ok(&v, &z, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(ips(&a), [ip("10.96.0.20")]);
    assert_eq!(a.answers[0].ttl, 30);
    assert_eq!(
        ips(&ok(
            &v,
            &z,
            "WEB.Default.SVC.cluster.local.",
            RecordType::AAAA
        )),
        [ip("fd00:10:96::20")]
    );
    // Single-stack: AAAA is NODATA (the name exists), not NXDOMAIN.
    assert_negative(
        &ok(&v, &z, "plain.default.svc.cluster.local.", RecordType::AAAA),
        ResponseCode::NoError,
    );
    // TTL and domain are configurable.
    let z2 = Zone::new("k8s54.rx-m.com", 5, PodMode::Insecure).unwrap();
    let a = ok(&v, &z2, "web.default.svc.k8s54.rx-m.com.", RecordType::A);
    assert_eq!(a.answers[0].ttl, 5);
    assert!(matches!(
        ask(&v, &z2, "web.default.svc.cluster.local.", RecordType::A),
        Outcome::Forward
    ));
}

#[test]
fn srv_for_named_ports_only() {
    let (v, z) = (cluster(), zone());
    let a = ok(
        &v,
        &z,
        "_http._tcp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(datas(&a), ["0 100 80 web.default.svc.cluster.local."]);
    // The target's addresses come along.
    let mut extra: Vec<String> = a.additionals.iter().map(|r| r.data.to_string()).collect();
    extra.sort();
    assert_eq!(extra, ["10.96.0.20", "fd00:10:96::20"]);
    let a = ok(
        &v,
        &z,
        "_dns._udp.web.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(datas(&a), ["0 100 53 web.default.svc.cluster.local."]);
    // Wrong protocol, unknown port, unnamed port: no such name.
    assert_negative(
        &ok(
            &v,
            &z,
            "_http._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ok(
            &v,
            &z,
            "_x._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ok(
            &v,
            &z,
            "_8080._tcp.plain.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ResponseCode::NXDomain,
    );
    // The SRV name exists: other types are NODATA; `_tcp.<svc>` is an empty non-terminal.
    assert_negative(
        &ok(
            &v,
            &z,
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NoError,
    );
    assert_negative(
        &ok(
            &v,
            &z,
            "_tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
        ),
        ResponseCode::NoError,
    );
}

#[test]
fn ptr_for_cluster_ips_v4_and_v6_nibbles() {
    let (v, z) = (cluster(), zone());
    let a = ok(&v, &z, "20.0.96.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(datas(&a), ["web.default.svc.cluster.local."]);
    let nibbles = "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.6.9.0.0.0.1.0.0.0.0.d.f.ip6.arpa.";
    let a = ok(&v, &z, nibbles, RecordType::PTR);
    assert_eq!(datas(&a), ["web.default.svc.cluster.local."]);
    // An address the cluster does not know goes upstream (kubeadm's fallthrough).
    assert!(matches!(
        ask(&v, &z, "9.9.9.9.in-addr.arpa.", RecordType::PTR),
        Outcome::Forward
    ));
    assert!(matches!(
        ask(&v, &z, "96.10.in-addr.arpa.", RecordType::PTR),
        Outcome::Forward
    ));
}

#[test]
fn headless_per_endpoint_records_hostnames_srv_ptr() {
    let (v, z) = (cluster(), zone());
    // Ready endpoints only (unset `ready` counts as ready), both families.
    let a = ok(&v, &z, "redis.datans.svc.cluster.local.", RecordType::A);
    assert_eq!(ips(&a), [ip("10.244.1.10"), ip("10.244.2.11")]);
    let a = ok(&v, &z, "redis.datans.svc.cluster.local.", RecordType::AAAA);
    assert_eq!(ips(&a), [ip("fd00:10:244:1::10")]);
    // The talk's per-pod names.
    let a = ok(
        &v,
        &z,
        "redis-0.redis.datans.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(ips(&a), [ip("10.244.1.10")]);
    assert_eq!(
        ips(&ok(
            &v,
            &z,
            "redis-0.redis.datans.svc.cluster.local.",
            RecordType::AAAA
        )),
        [ip("fd00:10:244:1::10")]
    );
    assert_eq!(
        ips(&ok(
            &v,
            &z,
            "redis-1.redis.datans.svc.cluster.local.",
            RecordType::A
        )),
        [ip("10.244.2.11")]
    );
    // Not ready: not published.
    assert_negative(
        &ok(
            &v,
            &z,
            "redis-2.redis.datans.svc.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
    // SRV: one per endpoint, hostname targets, endpoint port; addresses in additional.
    let a = ok(
        &v,
        &z,
        "_redis._tcp.redis.datans.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        datas(&a),
        [
            "0 50 6379 redis-0.redis.datans.svc.cluster.local.",
            "0 50 6379 redis-1.redis.datans.svc.cluster.local."
        ]
    );
    assert_eq!(a.additionals.len(), 3);
    // PTR per endpoint, to its name.
    let a = ok(&v, &z, "10.1.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(datas(&a), ["redis-0.redis.datans.svc.cluster.local."]);
    // Endpoints without a hostname are named by their dashed address.
    let a = ok(
        &v,
        &z,
        "headlesswebsite.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(ips(&a), [ip("10.244.1.5"), ip("10.244.2.6")]);
    let a = ok(
        &v,
        &z,
        "10-244-1-5.headlesswebsite.default.svc.cluster.local.",
        RecordType::A,
    );
    assert_eq!(ips(&a), [ip("10.244.1.5")]);
    let a = ok(
        &v,
        &z,
        "_http._tcp.headlesswebsite.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        datas(&a),
        [
            "0 50 8080 10-244-1-5.headlesswebsite.default.svc.cluster.local.",
            "0 50 8080 10-244-2-6.headlesswebsite.default.svc.cluster.local."
        ]
    );
    let a = ok(&v, &z, "6.2.244.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        datas(&a),
        ["10-244-2-6.headlesswebsite.default.svc.cluster.local."]
    );
    // A ClusterIP service has no per-endpoint names.
    assert_negative(
        &ok(&v, &z, "x.web.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
}

#[test]
fn headless_without_ready_endpoints_is_nxdomain_unless_publish_not_ready() {
    let mut v = View::new();
    let z = zone();
    add_service(&mut v, svc("ns1", "db", json!({"clusterIP": "None"})));
    let a = ok(&v, &z, "db.ns1.svc.cluster.local.", RecordType::A);
    assert_negative(&a, ResponseCode::NXDomain);
    add_slice(
        &mut v,
        slice(
            "ns1",
            "db-1",
            "db",
            "IPv4",
            json!([{"addresses": ["10.244.3.3"], "hostname": "db-0", "conditions": {"ready": false}}]),
            json!([]),
        ),
    );
    assert_negative(
        &ok(&v, &z, "db.ns1.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert!(matches!(
        ask(&v, &z, "3.3.244.10.in-addr.arpa.", RecordType::PTR),
        Outcome::Forward
    ));
    add_service(
        &mut v,
        svc(
            "ns1",
            "db",
            json!({"clusterIP": "None", "publishNotReadyAddresses": true}),
        ),
    );
    assert_eq!(
        ips(&ok(&v, &z, "db.ns1.svc.cluster.local.", RecordType::A)),
        [ip("10.244.3.3")]
    );
    assert_eq!(
        ips(&ok(&v, &z, "db-0.db.ns1.svc.cluster.local.", RecordType::A)),
        [ip("10.244.3.3")]
    );
    // Changing the service refreshed the reverse index.
    assert_eq!(
        datas(&ok(&v, &z, "3.3.244.10.in-addr.arpa.", RecordType::PTR)),
        ["db-0.db.ns1.svc.cluster.local."]
    );
}

#[test]
fn external_name_cname_chased_in_cluster_or_upstream() {
    let (v, z) = (cluster(), zone());
    // In the cluster: CNAME then the target's records, in one answer.
    let a = ok(&v, &z, "alias.default.svc.cluster.local.", RecordType::A);
    assert_eq!(a.answers.len(), 2);
    assert_eq!(
        a.answers[0].data.to_string(),
        "web.default.svc.cluster.local."
    );
    assert_eq!(a.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(a.answers[1].data.to_string(), "10.96.0.20");
    // A CNAME query gets just the CNAME.
    let a = ok(
        &v,
        &z,
        "search.default.svc.cluster.local.",
        RecordType::CNAME,
    );
    assert_eq!(datas(&a), ["www.example.com."]);
    // Outside: the CNAME, and the target goes upstream.
    match ask(&v, &z, "search.default.svc.cluster.local.", RecordType::A) {
        Outcome::Chase { answers, target } => {
            assert_eq!(answers.len(), 1);
            assert_eq!(target.to_ascii(), "www.example.com.");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pod_records_by_mode() {
    let mut v = cluster();
    let insecure = zone();
    let a = ok(
        &v,
        &insecure,
        "10-244-1-7.default.pod.cluster.local.",
        RecordType::A,
    );
    assert_eq!(ips(&a), [ip("10.244.1.7")]);
    let a = ok(
        &v,
        &insecure,
        "fd00-10-244-1--7.default.pod.cluster.local.",
        RecordType::AAAA,
    );
    assert_eq!(ips(&a), [ip("fd00:10:244:1::7")]);
    assert_negative(
        &ok(
            &v,
            &insecure,
            "not-an-ip.default.pod.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
    let verified = Zone::new("cluster.local", 30, PodMode::Verified).unwrap();
    assert_negative(
        &ok(
            &v,
            &verified,
            "10-244-1-7.default.pod.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
    let pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "default", "name": "p"},
        "status": {"podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}]}
    }))
    .unwrap();
    let (ns, name, addrs) = pod_info(&pod).unwrap();
    let key = v.key(&ns, &name);
    v.upsert_pod(key.clone(), addrs);
    assert_eq!(
        ips(&ok(
            &v,
            &verified,
            "10-244-1-7.default.pod.cluster.local.",
            RecordType::A
        )),
        [ip("10.244.1.7")]
    );
    // Right address, wrong namespace.
    assert_negative(
        &ok(
            &v,
            &verified,
            "10-244-1-7.other.pod.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
    v.delete_pod(&key);
    assert_negative(
        &ok(
            &v,
            &verified,
            "10-244-1-7.default.pod.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
    let disabled = Zone::new("cluster.local", 30, PodMode::Disabled).unwrap();
    assert_negative(
        &ok(
            &v,
            &disabled,
            "10-244-1-7.default.pod.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
}

#[test]
fn nxdomain_versus_nodata() {
    let (v, z) = (cluster(), zone());
    assert_negative(
        &ok(&v, &z, "nope.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ok(&v, &z, "web.nons.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert_negative(
        &ok(&v, &z, "a.b.c.d.e.f.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    // Names that exist without records of the type: NODATA.
    assert_negative(
        &ok(&v, &z, "default.svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &ok(&v, &z, "svc.cluster.local.", RecordType::A),
        ResponseCode::NoError,
    );
    assert_negative(
        &ok(&v, &z, "web.default.svc.cluster.local.", RecordType::MX),
        ResponseCode::NoError,
    );
    // The apex answers SOA and NS.
    let a = ok(&v, &z, "cluster.local.", RecordType::SOA);
    assert_eq!(a.answers[0].record_type(), RecordType::SOA);
    assert_eq!(
        datas(&ok(&v, &z, "cluster.local.", RecordType::NS)),
        ["ns.dns.cluster.local."]
    );
}

#[test]
fn not_synced_and_outside_names() {
    let (v, z) = (cluster(), zone());
    let q = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    assert_eq!(answer(&v, &z, &q, RecordType::A, false), Outcome::NotReady);
    let q = Name::from_ascii("example.com.").unwrap();
    assert_eq!(answer(&v, &z, &q, RecordType::A, true), Outcome::Forward);
    // A zone's look-alike is not the zone.
    let q = Name::from_ascii("web.default.svc.notcluster.local.").unwrap();
    assert_eq!(answer(&v, &z, &q, RecordType::A, true), Outcome::Forward);
}

#[test]
fn deletes_remove_names_and_reverse_entries() {
    let mut v = cluster();
    let z = zone();
    let key = v.key("default", "web");
    v.delete_service(&key);
    assert_negative(
        &ok(&v, &z, "web.default.svc.cluster.local.", RecordType::A),
        ResponseCode::NXDomain,
    );
    assert!(matches!(
        ask(&v, &z, "20.0.96.10.in-addr.arpa.", RecordType::PTR),
        Outcome::Forward
    ));
    let key = v.key("datans", "redis-abc");
    v.delete_slice(&key);
    assert_eq!(
        ips(&ok(
            &v,
            &z,
            "redis.datans.svc.cluster.local.",
            RecordType::A
        )),
        Vec::<IpAddr>::new()
    );
    assert_negative(
        &ok(
            &v,
            &z,
            "redis-1.redis.datans.svc.cluster.local.",
            RecordType::A,
        ),
        ResponseCode::NXDomain,
    );
    assert!(matches!(
        ask(&v, &z, "11.2.244.10.in-addr.arpa.", RecordType::PTR),
        Outcome::Forward
    ));
    // The IPv6 slice still publishes redis-0.
    assert_eq!(
        ips(&ok(
            &v,
            &z,
            "redis-0.redis.datans.svc.cluster.local.",
            RecordType::AAAA
        )),
        [ip("fd00:10:244:1::10")]
    );
}
