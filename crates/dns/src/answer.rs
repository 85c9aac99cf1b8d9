//! Answers computed from the view: a pure function of (view, zone, question).
//!
//! Follows the Kubernetes DNS specification (schema 1.1.0) and what CoreDNS's
//! `kubernetes` plugin adds that users rely on (pod records, dashed endpoint names,
//! SOA in negative answers).

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::view::{Key, Kind, View, dashed, undashed};

/// The version of the Kubernetes DNS specification served (`dns-version` TXT).
pub const SCHEMA_VERSION: &str = "1.1.0";

/// How `a-b-c-d.<ns>.pod.<zone>` names are answered (CoreDNS's `pods` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodMode {
    /// Any well-formed name answers with the address in it (kubeadm's default).
    Insecure,
    /// Only when a pod in that namespace has that address (needs a watch on Pods).
    Verified,
    /// No pod records.
    Disabled,
}

/// The cluster zone's settings.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The cluster domain, lower case, fully qualified (`cluster.local.`).
    pub domain: Name,
    /// TTL of every record, and the SOA minimum (negative caching).
    pub ttl: u32,
    /// Pod records.
    pub pods: PodMode,
}

impl Zone {
    /// A zone for `domain` (`cluster.local`).
    pub fn new(domain: &str, ttl: u32, pods: PodMode) -> Result<Self, crate::Error> {
        let mut name = Name::from_ascii(domain).map_err(|source| crate::Error::ClusterDomain {
            domain: domain.to_owned(),
            source,
        })?;
        name.set_fqdn(true);
        Ok(Zone {
            domain: name.to_lowercase(),
            ttl,
            pods,
        })
    }

    /// `ns.dns.<zone>`, the SOA's primary server.
    fn mname(&self) -> Name {
        name_under(&["ns", "dns"], &self.domain)
    }

    /// The SOA record of the zone, with `serial`.
    pub fn soa(&self, serial: u32) -> Record {
        Record::from_rdata(
            self.domain.clone(),
            self.ttl,
            RData::SOA(SOA::new(
                self.mname(),
                name_under(&["hostmaster"], &self.domain),
                serial,
                7200,
                1800,
                86400,
                self.ttl,
            )),
        )
    }
}

/// `labels` + `domain`.
fn name_under(labels: &[&str], domain: &Name) -> Name {
    let mut name = Name::from_labels(labels.iter().map(|l| l.as_bytes()))
        .and_then(|n| n.append_domain(domain))
        .unwrap_or_else(|_| domain.clone());
    name.set_fqdn(true);
    name
}

/// What to do with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An authoritative answer from the view.
    Answer(Answer),
    /// Not a cluster name (or a reverse name the cluster does not know): forward it.
    Forward,
    /// An ExternalName CNAME whose target is outside the cluster: send `answers` (the
    /// CNAME) followed by whatever upstream answers for `target`.
    Chase {
        /// The CNAME record(s) so far.
        answers: Vec<Record>,
        /// The name to resolve upstream.
        target: Name,
    },
    /// A cluster name, but the view has not synced yet.
    NotReady,
}

/// An authoritative answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// NOERROR or NXDOMAIN.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section (the SOA for negative answers).
    pub authorities: Vec<Record>,
    /// Additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

/// Result of looking up the relative part of a cluster name.
enum Found {
    /// Records for the queried type (may be empty: the name exists, NODATA).
    Records(Vec<Record>, Vec<Record>),
    /// The name does not exist.
    NxDomain,
    /// A CNAME (ExternalName) to this target.
    Cname(Box<Record>, Name),
}

/// Answers `name`/`qtype` from `view`. `synced`: the view has completed its first sync.
pub fn answer(view: &View, zone: &Zone, name: &Name, qtype: RecordType, synced: bool) -> Outcome {
    let lower = name.to_lowercase();
    answer_depth(view, zone, name, &lower, qtype, synced, 0)
}

fn answer_depth(
    view: &View,
    zone: &Zone,
    owner: &Name,
    lower: &Name,
    qtype: RecordType,
    synced: bool,
    depth: u8,
) -> Outcome {
    if let Some(ip) = reverse_ip(lower) {
        // Reverse names the cluster does not know fall through to the upstreams, as with
        // kubeadm's `fallthrough in-addr.arpa ip6.arpa`.
        if !synced {
            return Outcome::Forward;
        }
        return match view.ptr(ip) {
            None => Outcome::Forward,
            Some(targets) => {
                let answers = if qtype == RecordType::PTR || qtype == RecordType::ANY {
                    targets
                        .iter()
                        .map(|t| {
                            let mut labels: Vec<&str> = Vec::new();
                            if let Some(e) = &t.endpoint {
                                labels.push(e);
                            }
                            labels.extend([&*t.service.name, &*t.service.ns, "svc"]);
                            rec(
                                owner,
                                zone,
                                RData::PTR(PTR(name_under(&labels, &zone.domain))),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                // The reverse zone's SOA is not ours to invent; NODATA has no SOA here.
                Outcome::Answer(Answer {
                    rcode: ResponseCode::NoError,
                    answers,
                    authorities: Vec::new(),
                    additionals: Vec::new(),
                })
            }
        };
    }
    if !zone.domain.zone_of(lower) {
        return Outcome::Forward;
    }
    if !synced {
        return Outcome::NotReady;
    }
    let rel = lower.num_labels() - zone.domain.num_labels();
    let labels: Vec<&[u8]> = lower.iter().take(usize::from(rel)).collect();
    let Some(labels) = labels
        .iter()
        .map(|l| std::str::from_utf8(l).ok())
        .collect::<Option<Vec<&str>>>()
    else {
        return negative(view, zone, ResponseCode::NXDomain);
    };
    match lookup(view, zone, owner, &labels, qtype) {
        Found::Records(answers, additionals) => {
            if answers.is_empty() {
                return negative(view, zone, ResponseCode::NoError);
            }
            Outcome::Answer(Answer {
                rcode: ResponseCode::NoError,
                answers,
                authorities: Vec::new(),
                additionals,
            })
        }
        Found::NxDomain => negative(view, zone, ResponseCode::NXDomain),
        Found::Cname(cname, target) => {
            let cname = *cname;
            if qtype == RecordType::CNAME {
                return Outcome::Answer(Answer {
                    rcode: ResponseCode::NoError,
                    answers: vec![cname],
                    authorities: Vec::new(),
                    additionals: Vec::new(),
                });
            }
            let target_lower = target.to_lowercase();
            if zone.domain.zone_of(&target_lower) && depth < 8 {
                // In the cluster: chase it here, in the same answer.
                match answer_depth(view, zone, &target, &target_lower, qtype, synced, depth + 1) {
                    Outcome::Answer(mut a) => {
                        a.answers.insert(0, cname);
                        Outcome::Answer(a)
                    }
                    Outcome::Chase {
                        mut answers,
                        target,
                    } => {
                        answers.insert(0, cname);
                        Outcome::Chase { answers, target }
                    }
                    other => other,
                }
            } else {
                Outcome::Chase {
                    answers: vec![cname],
                    target,
                }
            }
        }
    }
}

fn rec(owner: &Name, zone: &Zone, data: RData) -> Record {
    Record::from_rdata(owner.clone(), zone.ttl, data)
}

fn negative(view: &View, zone: &Zone, rcode: ResponseCode) -> Outcome {
    Outcome::Answer(Answer {
        rcode,
        answers: Vec::new(),
        authorities: vec![zone.soa(view.serial)],
        additionals: Vec::new(),
    })
}

fn addresses(owner: &Name, zone: &Zone, ips: &[IpAddr], qtype: RecordType) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                Some(rec(owner, zone, RData::A(A(*v4))))
            }
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                Some(rec(owner, zone, RData::AAAA(AAAA(*v6))))
            }
            _ => None,
        })
        .collect()
}

fn lookup(view: &View, zone: &Zone, owner: &Name, labels: &[&str], qtype: RecordType) -> Found {
    let records = |answers: Vec<Record>| Found::Records(answers, Vec::new());
    match labels {
        [] => records(match qtype {
            RecordType::SOA => vec![zone.soa(view.serial)],
            RecordType::NS => vec![rec(owner, zone, RData::NS(NS(zone.mname())))],
            _ => Vec::new(),
        }),
        ["dns-version"] => records(match qtype {
            RecordType::TXT | RecordType::ANY => vec![rec(
                owner,
                zone,
                RData::TXT(TXT::new(vec![SCHEMA_VERSION.into()])),
            )],
            _ => Vec::new(),
        }),
        ["svc"] | ["pod"] => records(Vec::new()),
        [ns, "svc"] => {
            if view.namespace_has_services(ns) {
                records(Vec::new())
            } else {
                Found::NxDomain
            }
        }
        [_, "pod"] => {
            // Any namespace may hold pods; only disabled mode has no pod names at all.
            if zone.pods == PodMode::Disabled {
                Found::NxDomain
            } else {
                records(Vec::new())
            }
        }
        [ip, ns, "pod"] => pod(view, zone, owner, ip, ns, qtype),
        [svc, ns, "svc"] => service(view, zone, owner, ns, svc, qtype),
        [first, svc, ns, "svc"] => {
            let Some((key, info)) = view.service(ns, svc) else {
                return Found::NxDomain;
            };
            if let Some(proto) = first.strip_prefix('_') {
                // `_tcp.<svc>...`: an empty non-terminal when a named port uses it.
                let ports = ports_for_srv(view, key, info);
                if ports
                    .iter()
                    .any(|p| p.protocol == proto && !p.name.is_empty())
                {
                    return records(Vec::new());
                }
                return Found::NxDomain;
            }
            if info.kind != Kind::Headless {
                return Found::NxDomain;
            }
            match view
                .published(key, info)
                .into_iter()
                .find(|p| p.label == *first)
            {
                Some(p) => records(addresses(owner, zone, &p.addresses, qtype)),
                None => Found::NxDomain,
            }
        }
        [port, proto, svc, ns, "svc"] => srv(view, zone, owner, port, proto, svc, ns, qtype),
        _ => Found::NxDomain,
    }
}

fn pod(view: &View, zone: &Zone, owner: &Name, ip: &str, ns: &str, qtype: RecordType) -> Found {
    let Some(addr) = undashed(ip) else {
        return Found::NxDomain;
    };
    let exists = match zone.pods {
        PodMode::Disabled => false,
        PodMode::Insecure => true,
        PodMode::Verified => view.pod_has_ip(ns, addr),
    };
    if !exists {
        return Found::NxDomain;
    }
    Found::Records(addresses(owner, zone, &[addr], qtype), Vec::new())
}

fn service(
    view: &View,
    zone: &Zone,
    owner: &Name,
    ns: &str,
    svc: &str,
    qtype: RecordType,
) -> Found {
    let Some((key, info)) = view.service(ns, svc) else {
        return Found::NxDomain;
    };
    match &info.kind {
        Kind::ClusterIp(ips) => Found::Records(addresses(owner, zone, ips, qtype), Vec::new()),
        Kind::Headless => {
            let published = view.published(key, info);
            if published.is_empty() {
                return Found::NxDomain;
            }
            let mut ips: Vec<IpAddr> = Vec::new();
            for p in published {
                for ip in p.addresses {
                    if !ips.contains(&ip) {
                        ips.push(ip);
                    }
                }
            }
            Found::Records(addresses(owner, zone, &ips, qtype), Vec::new())
        }
        Kind::ExternalName(target) => match Name::from_ascii(format!("{target}.")) {
            Ok(target) => Found::Cname(
                Box::new(rec(owner, zone, RData::CNAME(CNAME(target.clone())))),
                target,
            ),
            // The API server validates externalName; a bad one publishes nothing.
            Err(_) => Found::Records(Vec::new(), Vec::new()),
        },
    }
}

/// Ports SRV records are made from: the endpoints' for headless services (their
/// port numbers are what clients dial), the service's otherwise.
fn ports_for_srv(
    view: &View,
    key: &Key,
    info: &crate::view::ServiceInfo,
) -> Vec<crate::view::Port> {
    if info.kind == Kind::Headless {
        view.endpoint_ports(key)
    } else {
        info.ports.clone()
    }
}

#[allow(clippy::too_many_arguments)]
fn srv(
    view: &View,
    zone: &Zone,
    owner: &Name,
    port: &str,
    proto: &str,
    svc: &str,
    ns: &str,
    qtype: RecordType,
) -> Found {
    let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
        return Found::NxDomain;
    };
    let Some((key, info)) = view.service(ns, svc) else {
        return Found::NxDomain;
    };
    let Some(p) = ports_for_srv(view, key, info)
        .into_iter()
        .find(|p| !p.name.is_empty() && p.name == port && p.protocol == proto)
    else {
        return Found::NxDomain;
    };
    if !(qtype == RecordType::SRV || qtype == RecordType::ANY) {
        return Found::Records(Vec::new(), Vec::new());
    }
    let service_name = name_under(&[svc, ns, "svc"], &zone.domain);
    match &info.kind {
        Kind::ClusterIp(ips) => {
            let answer = rec(
                owner,
                zone,
                RData::SRV(SRV::new(0, 100, p.port, service_name.clone())),
            );
            let extra = addresses(&service_name, zone, ips, RecordType::ANY);
            Found::Records(vec![answer], extra)
        }
        Kind::Headless => {
            let published = view.published(key, info);
            if published.is_empty() {
                return Found::NxDomain;
            }
            // Weights add up to about 100, as CoreDNS makes them.
            let weight = u16::try_from(100 / published.len()).unwrap_or(1).max(1);
            let mut answers = Vec::new();
            let mut extra = Vec::new();
            for e in published {
                let target = name_under(&[&e.label, svc, ns, "svc"], &zone.domain);
                answers.push(rec(
                    owner,
                    zone,
                    RData::SRV(SRV::new(0, weight, p.port, target.clone())),
                ));
                extra.extend(addresses(&target, zone, &e.addresses, RecordType::ANY));
            }
            Found::Records(answers, extra)
        }
        Kind::ExternalName(_) => Found::NxDomain,
    }
}

/// The address a full reverse name stands for (`5.1.244.10.in-addr.arpa.`, 32 nibbles
/// under `ip6.arpa.`); `None` for other names, including partial reverse names.
pub fn reverse_ip(lower: &Name) -> Option<IpAddr> {
    let labels: Vec<&[u8]> = lower.iter().collect();
    match labels.as_slice() {
        [a, b, c, d, in_addr, arpa] if *in_addr == b"in-addr" && *arpa == b"arpa" => {
            let mut o = [0u8; 4];
            for (i, l) in [d, c, b, a].iter().enumerate() {
                let s = std::str::from_utf8(l).ok()?;
                if s.len() > 1 && s.starts_with('0') {
                    return None;
                }
                o[i] = s.parse().ok()?;
            }
            Some(IpAddr::from(o))
        }
        [nibbles @ .., ip6, arpa] if nibbles.len() == 32 && *ip6 == b"ip6" && *arpa == b"arpa" => {
            let mut v: u128 = 0;
            for l in nibbles.iter().rev() {
                let [c] = l else { return None };
                let d = char::from(*c).to_digit(16)?;
                v = (v << 4) | u128::from(d);
            }
            Some(IpAddr::from(v.to_be_bytes()))
        }
        _ => None,
    }
}

/// The endpoint label an address gets without a hostname (re-exported for tests).
pub fn endpoint_label(ip: IpAddr) -> String {
    dashed(ip)
}
