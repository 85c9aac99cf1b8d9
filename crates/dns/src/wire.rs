//! From request bytes to response bytes: parsing, answering from the view, EDNS0 and
//! truncation, and the per-thread cache of encoded answers that serves the hot path.
//!
//! Nothing here panics on any input: malformed packets get FORMERR when their header
//! can be read, and are dropped otherwise (tests feed random and mutated bytes).

use std::collections::HashMap;
use std::time::Instant;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};

use crate::Shared;
use crate::answer::{self, Outcome};

/// Transport a request came over; decides the response size limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// UDP: 512 bytes, or the client's EDNS0 payload size (at most 4096).
    Udp,
    /// TCP: 65535 bytes.
    Tcp,
}

impl Proto {
    /// Label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }
}

/// The EDNS0 payload size this server advertises (DNS flag day 2020's value).
pub const ADVERTISED_PAYLOAD: u16 = 1232;

/// What to do with a request.
#[derive(Debug)]
pub enum Handled {
    /// Send these bytes. `cacheable`: an authoritative answer from the view, valid
    /// until the view changes.
    Reply {
        /// Encoded response.
        bytes: Vec<u8>,
        /// Whether the hot-path cache may keep it.
        cacheable: bool,
    },
    /// Send nothing (not a query, or too broken to answer).
    Drop,
    /// Needs the upstreams: finish with [`crate::forward::respond`].
    Forward(Box<ForwardJob>),
}

/// A request that goes upstream, with what is needed to answer it afterwards.
#[derive(Debug)]
pub struct ForwardJob {
    /// The parsed request.
    pub request: Message,
    /// Response size limit.
    pub limit: usize,
    /// For an ExternalName chase: the CNAME records and the target to resolve.
    pub chase: Option<(Vec<Record>, Name)>,
    /// Transport (for metrics).
    pub proto: Proto,
    /// Whether the client is IPv6 (for metrics).
    pub v6: bool,
    /// When the request arrived (for metrics).
    pub start: Instant,
}

/// The response size limit for a request.
fn limit(proto: Proto, edns: Option<&Edns>) -> usize {
    match (proto, edns) {
        (Proto::Tcp, _) => usize::from(u16::MAX),
        (Proto::Udp, None) => 512,
        (Proto::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, 4096)),
    }
}

/// A response shell for `request`: id, opcode, RD and CD echoed, the question, OPT when
/// the request had one.
pub fn response_for(request: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    m.metadata.recursion_desired = request.metadata.recursion_desired;
    m.metadata.checking_disabled = request.metadata.checking_disabled;
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.queries = request.queries.clone();
    if request.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(ADVERTISED_PAYLOAD);
        m.edns = Some(e);
    }
    m
}

/// Encodes `m`, truncating (TC, empty sections) when it exceeds `limit`.
pub fn encode(m: &Message, limit: usize) -> Option<Vec<u8>> {
    let bytes = m.to_vec().ok()?;
    if bytes.len() <= limit {
        return Some(bytes);
    }
    let t = m.truncate();
    t.to_vec().ok()
}

/// A FORMERR/NOTIMP/... answer built from the raw header alone (for requests that do
/// not parse).
fn header_error(bytes: &[u8], rcode: ResponseCode) -> Vec<u8> {
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&bytes[..2]);
    // QR=1, the request's opcode and RD, RA=1.
    out[2] = 0x80 | (bytes[2] & 0x79);
    out[3] = 0x80 | (rcode.low() & 0x0f);
    out
}

/// Handles one request from the slow path (anything the hot-path cache did not serve).
pub fn handle(shared: &Shared, bytes: &[u8], proto: Proto, v6: bool) -> Handled {
    let start = Instant::now();
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        // Too short for a header, or a response: answering could feed a loop.
        shared.metrics.dropped.inc();
        return Handled::Drop;
    }
    let request = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => {
            let reply = header_error(bytes, ResponseCode::FormErr);
            shared.metrics.observe(
                proto,
                v6,
                RecordType::Unknown(0),
                ResponseCode::FormErr,
                start,
            );
            return Handled::Reply {
                bytes: reply,
                cacheable: false,
            };
        }
    };
    let reply = |m: Message, rcode: ResponseCode, qtype: RecordType| {
        let lim = limit(proto, request.edns.as_ref());
        shared.metrics.observe(proto, v6, qtype, rcode, start);
        match encode(&m, lim) {
            Some(bytes) => Handled::Reply {
                bytes,
                cacheable: false,
            },
            None => Handled::Drop,
        }
    };
    if request.metadata.op_code != OpCode::Query {
        let m = response_for(&request, ResponseCode::NotImp);
        return reply(m, ResponseCode::NotImp, RecordType::Unknown(0));
    }
    if request.queries.len() != 1 {
        let m = response_for(&request, ResponseCode::FormErr);
        return reply(m, ResponseCode::FormErr, RecordType::Unknown(0));
    }
    if let Some(e) = &request.edns
        && e.version() > 0
    {
        let m = response_for(&request, ResponseCode::BADVERS);
        return reply(m, ResponseCode::BADVERS, RecordType::OPT);
    }
    let q = &request.queries[0];
    let qtype = q.query_type();
    if q.query_class() != DNSClass::IN {
        let m = response_for(&request, ResponseCode::Refused);
        return reply(m, ResponseCode::Refused, qtype);
    }
    let outcome = {
        let view = shared.view.read().unwrap_or_else(|p| p.into_inner());
        answer::answer(&view, &shared.zone, q.name(), qtype, shared.is_synced())
    };
    let lim = limit(proto, request.edns.as_ref());
    match outcome {
        Outcome::Answer(a) => {
            let mut m = response_for(&request, a.rcode);
            m.metadata.authoritative = true;
            m.answers = a.answers;
            m.authorities = a.authorities;
            m.additionals = a.additionals;
            shared.metrics.observe(proto, v6, qtype, a.rcode, start);
            match encode(&m, lim) {
                Some(bytes) => Handled::Reply {
                    bytes,
                    cacheable: true,
                },
                None => Handled::Drop,
            }
        }
        Outcome::NotReady => {
            let m = response_for(&request, ResponseCode::ServFail);
            reply(m, ResponseCode::ServFail, qtype)
        }
        Outcome::Forward => Handled::Forward(Box::new(ForwardJob {
            request,
            limit: lim,
            chase: None,
            proto,
            v6,
            start,
        })),
        Outcome::Chase { answers, target } => Handled::Forward(Box::new(ForwardJob {
            request,
            limit: lim,
            chase: Some((answers, target)),
            proto,
            v6,
            start,
        })),
    }
}

/// A request in the shape the hot path serves: one question, no answer/authority
/// records, at most an OPT record. Anything else goes to the slow path.
#[derive(Debug, Clone, Copy)]
pub struct Simple<'a> {
    /// The question as sent (name, type, class).
    pub question: &'a [u8],
    /// QTYPE.
    pub qtype: u16,
    /// EDNS0 payload size (clamped as the limit is) and DO bit, when there is an OPT.
    pub edns: Option<(u16, bool)>,
}

/// Parses `bytes` as a [`Simple`] request, or `None`.
pub fn parse_simple(bytes: &[u8]) -> Option<Simple<'_>> {
    if bytes.len() < 17 {
        return None;
    }
    // QR=0, opcode 0, TC=0; one question, no answers or authorities, 0 or 1 additional.
    if bytes[2] & 0xfa != 0 {
        return None;
    }
    if bytes[4..10] != [0, 1, 0, 0, 0, 0] || bytes[10] != 0 || bytes[11] > 1 {
        return None;
    }
    let mut pos = 12;
    loop {
        let l = usize::from(*bytes.get(pos)?);
        if l & 0xc0 != 0 {
            return None;
        }
        pos += 1 + l;
        if pos - 12 > 255 {
            return None;
        }
        if l == 0 {
            break;
        }
    }
    let end_q = pos + 4;
    let question = bytes.get(12..end_q)?;
    let qtype = u16::from_be_bytes([question[question.len() - 4], question[question.len() - 3]]);
    let edns = if bytes[11] == 1 {
        // OPT: root name, type 41, class = payload, ttl = ext-rcode/version/flags, rdata.
        let opt = bytes.get(end_q..end_q + 11)?;
        if opt[0] != 0 || opt[1..3] != [0, 41] || opt[5] != 0 || opt[6] != 0 {
            return None;
        }
        let payload = u16::from_be_bytes([opt[3], opt[4]]).clamp(512, 4096);
        let dnssec_ok = opt[7] & 0x80 != 0;
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if end_q + 11 + rdlen != bytes.len() {
            return None;
        }
        Some((payload, dnssec_ok))
    } else {
        if end_q != bytes.len() {
            return None;
        }
        None
    };
    Some(Simple {
        question,
        qtype,
        edns,
    })
}

/// Encoded answers by question, for one view generation. One per UDP thread, so the
/// hot path takes no lock.
#[derive(Debug, Default)]
pub struct AnswerCache {
    generation: u32,
    map: HashMap<Box<[u8]>, Box<[u8]>>,
    key: Vec<u8>,
}

/// Entries one thread keeps before starting over (bounds memory under random names).
const ANSWER_CACHE_ENTRIES: usize = 50_000;

impl AnswerCache {
    fn make_key(&mut self, s: &Simple<'_>) {
        self.key.clear();
        self.key
            .extend(s.question.iter().map(u8::to_ascii_lowercase));
        match s.edns {
            None => self.key.push(0),
            Some((p, d)) => {
                self.key.push(1 + u8::from(d));
                self.key.extend(p.to_be_bytes());
            }
        }
    }

    /// Writes the cached answer to `request` into `out`; false when there is none.
    pub fn lookup(&mut self, request: &[u8], generation: u32, out: &mut Vec<u8>) -> bool {
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
            return false;
        }
        let Some(s) = parse_simple(request) else {
            return false;
        };
        self.make_key(&s);
        let Some(cached) = self.map.get(self.key.as_slice()) else {
            return false;
        };
        out.clear();
        out.extend_from_slice(cached);
        // This request's id, RD and CD bits, and its question as spelled (case).
        out[..2].copy_from_slice(&request[..2]);
        out[2] = (out[2] & !0x01) | (request[2] & 0x01);
        out[3] = (out[3] & !0x10) | (request[3] & 0x10);
        out[12..12 + s.question.len()].copy_from_slice(s.question);
        true
    }

    /// Keeps `response` as the answer to requests like `request`.
    pub fn insert(&mut self, request: &[u8], generation: u32, response: &[u8]) {
        if generation != self.generation {
            self.map.clear();
            self.generation = generation;
        }
        let Some(s) = parse_simple(request) else {
            return;
        };
        if response.len() < 12 + s.question.len() {
            return;
        }
        if self.map.len() >= ANSWER_CACHE_ENTRIES {
            self.map.clear();
        }
        self.make_key(&s);
        self.map.insert(self.key.as_slice().into(), response.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(name).unwrap(),
            qtype,
        ));
        if let Some(p) = edns {
            let mut e = Edns::new();
            e.set_max_payload(p);
            m.edns = Some(e);
        }
        m.to_vec().unwrap()
    }

    #[test]
    fn simple_requests_parse_and_others_do_not() {
        let q = query("web.default.svc.cluster.local.", RecordType::A, None);
        let s = parse_simple(&q).unwrap();
        assert_eq!(s.qtype, 1);
        assert_eq!(s.edns, None);
        let q = query(
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            Some(9000),
        );
        let s = parse_simple(&q).unwrap();
        assert_eq!(s.qtype, 28);
        assert_eq!(s.edns, Some((4096, false)));
        // Trailing garbage, a response, and a truncated packet are not simple.
        let mut bad = q.clone();
        bad.push(0);
        assert!(parse_simple(&bad).is_none());
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(parse_simple(&resp).is_none());
        assert!(parse_simple(&q[..q.len() - 1]).is_none());
    }

    #[test]
    fn cache_patches_id_and_question_case_and_clears_on_new_generation() {
        let mut c = AnswerCache::default();
        let q1 = query("Web.default.svc.cluster.local.", RecordType::A, None);
        let mut resp = q1.clone();
        resp[2] |= 0x80;
        c.insert(&q1, 1, &resp);
        let mut q2 = query("wEB.default.svc.cluster.local.", RecordType::A, None);
        q2[0] = 0xab;
        q2[1] = 0xcd;
        let mut out = Vec::new();
        assert!(c.lookup(&q2, 1, &mut out));
        assert_eq!(&out[..2], &[0xab, 0xcd]);
        assert_eq!(&out[12..], &q2[12..]);
        assert_eq!(out[2] & 0x80, 0x80);
        // Another EDNS shape is another entry; a new view generation empties the cache.
        let q3 = query("web.default.svc.cluster.local.", RecordType::A, Some(1232));
        assert!(!c.lookup(&q3, 1, &mut out));
        assert!(!c.lookup(&q2, 2, &mut out));
    }
}
