//! Names outside the cluster: sent to the upstreams (the node's resolv.conf, or
//! `--upstream`), with a positive and negative cache, health checks and a cap on
//! queries in flight, as CoreDNS's `forward` and `cache` plugins do.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::Shared;
use crate::wire::{ForwardJob, encode, response_for};

/// Entries the cache holds at most (CoreDNS's default capacity).
pub const CACHE_CAPACITY: usize = 9984;
/// Longest time a positive answer is kept (CoreDNS: 3600 s).
const MAX_TTL: u32 = 3600;
/// Longest time a negative answer is kept (CoreDNS: 1800 s).
const MAX_NEGATIVE_TTL: u32 = 1800;
/// An upstream is marked down after this many failures in a row (CoreDNS `max_fails`).
const MAX_FAILS: u32 = 2;
/// How long one upstream gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a down upstream is probed (CoreDNS `health_check`).
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// One upstream server.
#[derive(Debug)]
pub struct Upstream {
    /// Its address.
    pub addr: SocketAddr,
    /// `to` label in metrics (`1.2.3.4:53`).
    label: String,
    /// Failures in a row; down at [`MAX_FAILS`].
    fails: AtomicU32,
}

impl Upstream {
    /// Whether it is considered up.
    pub fn healthy(&self) -> bool {
        self.fails.load(Ordering::Relaxed) < MAX_FAILS
    }
}

/// The upstream answer (or a cached copy with TTLs counted down).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Its rcode.
    pub rcode: ResponseCode,
    /// Answer section.
    pub answers: Vec<Record>,
    /// Authority section.
    pub authorities: Vec<Record>,
}

#[derive(Debug)]
struct Entry {
    stored: Instant,
    ttl: u32,
    resolved: Resolved,
}

type CacheKey = (Name, RecordType, DNSClass);

/// Why a forward failed; decides the rcode sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardError {
    /// `--max-concurrent` queries are in flight: REFUSED, as CoreDNS.
    TooMany,
    /// No upstream answered: SERVFAIL.
    NoAnswer,
}

/// The forwarder with its cache.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    cache: Mutex<HashMap<CacheKey, Entry>>,
    inflight: AtomicUsize,
    max_concurrent: usize,
    rng: AtomicU64,
}

/// Decrements the in-flight count when a forward ends, however it ends.
struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Forwarder {
    /// A forwarder to `upstreams`, with at most `max_concurrent` queries in flight.
    pub fn new(upstreams: Vec<SocketAddr>, max_concurrent: usize) -> Self {
        let seed = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(u64::from(std::process::id()));
            h.finish() | 1
        };
        Forwarder {
            upstreams: upstreams
                .into_iter()
                .map(|addr| Upstream {
                    addr,
                    label: addr.to_string(),
                    fails: AtomicU32::new(0),
                })
                .collect(),
            cache: Mutex::new(HashMap::new()),
            inflight: AtomicUsize::new(0),
            max_concurrent,
            rng: AtomicU64::new(seed),
        }
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &[Upstream] {
        &self.upstreams
    }

    fn random(&self) -> u64 {
        // xorshift64*: query ids and upstream choice need unpredictability, not crypto.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn cached(&self, key: &CacheKey, shared: &Shared) -> Option<Resolved> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let e = cache.get(key)?;
        let age = u32::try_from(e.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= e.ttl {
            return None;
        }
        let mut r = e.resolved.clone();
        for rec in r.answers.iter_mut().chain(r.authorities.iter_mut()) {
            let ttl = rec.ttl.saturating_sub(age);
            rec.ttl = ttl;
        }
        shared
            .metrics
            .cache_hit(r.answers.is_empty() || r.rcode != ResponseCode::NoError);
        Some(r)
    }

    fn store(&self, key: CacheKey, r: &Resolved, shared: &Shared) {
        let ttl = match r.rcode {
            ResponseCode::NoError if !r.answers.is_empty() => r
                .answers
                .iter()
                .map(|a| a.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_TTL),
            ResponseCode::NoError | ResponseCode::NXDomain => r
                .authorities
                .iter()
                .find_map(|a| match &a.data {
                    RData::SOA(soa) => Some(soa.minimum.min(a.ttl)),
                    _ => None,
                })
                .unwrap_or(0)
                .min(MAX_NEGATIVE_TTL),
            _ => 0,
        };
        if ttl == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            // Drop the expired first; if that frees nothing, an arbitrary entry.
            cache.retain(|_, e| u64::from(e.ttl) > e.stored.elapsed().as_secs());
            if cache.len() >= CACHE_CAPACITY
                && let Some(k) = cache.keys().next().cloned()
            {
                cache.remove(&k);
            }
        }
        cache.insert(
            key,
            Entry {
                stored: Instant::now(),
                ttl,
                resolved: r.clone(),
            },
        );
        let denial = cache
            .values()
            .filter(|e| e.resolved.answers.is_empty() || e.resolved.rcode != ResponseCode::NoError)
            .count();
        shared.metrics.cache_size(cache.len() - denial, denial);
    }

    /// Resolves `name`/`qtype` through the cache and the upstreams.
    pub async fn resolve(
        &self,
        shared: &Shared,
        name: &Name,
        qtype: RecordType,
        qclass: DNSClass,
    ) -> Result<Resolved, ForwardError> {
        let key = (name.to_lowercase(), qtype, qclass);
        if let Some(r) = self.cached(&key, shared) {
            return Ok(r);
        }
        shared.metrics.cache_miss();
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoAnswer);
        }
        if self.inflight.fetch_add(1, Ordering::Relaxed) >= self.max_concurrent {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            shared.metrics.forward_max_concurrent_rejects.inc();
            return Err(ForwardError::TooMany);
        }
        let _guard = InFlight(&self.inflight);
        // Healthy upstreams in a random order first; the down ones after, so a query
        // still goes somewhere when every upstream is marked down.
        let n = self.upstreams.len();
        let offset = usize::try_from(self.random() % n as u64).unwrap_or(0);
        let mut order: Vec<&Upstream> = (0..n).map(|i| &self.upstreams[(i + offset) % n]).collect();
        order.sort_by_key(|u| !u.healthy());
        for u in order.into_iter().take(3) {
            let start = Instant::now();
            let id = u16::try_from(self.random() & 0xffff).unwrap_or(0);
            match exchange(u.addr, name, qtype, qclass, id).await {
                Ok(m) => {
                    u.fails.store(0, Ordering::Relaxed);
                    let rcode = m.metadata.response_code;
                    shared.metrics.forwarded(&u.label, Some(rcode), start);
                    if rcode == ResponseCode::ServFail || rcode == ResponseCode::Refused {
                        continue;
                    }
                    let r = Resolved {
                        rcode,
                        answers: m.answers,
                        authorities: m.authorities,
                    };
                    self.store(key, &r, shared);
                    return Ok(r);
                }
                Err(e) => {
                    tracing::debug!(upstream = %u.addr, error = %k8s::ErrorChain(&e), "upstream query failed");
                    u.fails.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.forwarded(&u.label, None, start);
                }
            }
        }
        Err(ForwardError::NoAnswer)
    }

    /// Probes down upstreams every 500 ms with `. IN NS`; any answer brings one back.
    pub async fn health_loop(&self, shared: &Shared) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        loop {
            tick.tick().await;
            for u in self.upstreams.iter().filter(|u| !u.healthy()) {
                let id = u16::try_from(self.random() & 0xffff).unwrap_or(0);
                match exchange(u.addr, &Name::root(), RecordType::NS, DNSClass::IN, id).await {
                    Ok(_) => {
                        tracing::info!(upstream = %u.addr, "upstream is answering again");
                        u.fails.store(0, Ordering::Relaxed);
                    }
                    Err(_) => shared.metrics.health_failure(&u.label),
                }
            }
        }
    }
}

/// Errors talking to one upstream (logged; they make it fail over).
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The query could not be encoded.
    #[error("encoding the query")]
    Encode(#[source] hickory_proto::ProtoError),
    /// The query does not fit a TCP frame.
    #[error("query too long for TCP")]
    TooLong,
    /// The answer over TCP does not parse.
    #[error("malformed answer")]
    Malformed(#[source] hickory_proto::serialize::binary::DecodeError),
    /// The answer over TCP has another query's id.
    #[error("answer to another query")]
    OtherQuery,
}

/// One query to one upstream over UDP, retried over TCP when truncated.
async fn exchange(
    addr: SocketAddr,
    name: &Name,
    qtype: RecordType,
    qclass: DNSClass,
    id: u16,
) -> Result<Message, ExchangeError> {
    let mut q = Message::new(id, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    let mut query = Query::query(name.clone(), qtype);
    query.set_query_class(qclass);
    q.add_query(query);
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(crate::wire::ADVERTISED_PAYLOAD);
    q.edns = Some(edns);
    let bytes = q.to_vec().map_err(ExchangeError::Encode)?;
    let bind: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = tokio::net::UdpSocket::bind(bind).await?;
    sock.connect(addr).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    let m = loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| ExchangeError::Timeout(UPSTREAM_TIMEOUT))??;
        // Ignore stray datagrams that do not answer this query (spoofing, late replies).
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if m.metadata.id == id
            && m.metadata.message_type == MessageType::Response
            && m.queries
                .first()
                .is_some_and(|a| a.name().eq_ignore_root(name) && a.query_type() == qtype)
        {
            break m;
        }
    };
    if !m.metadata.truncation {
        return Ok(m);
    }
    let mut stream = tokio::time::timeout(UPSTREAM_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ExchangeError::Timeout(UPSTREAM_TIMEOUT))??;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::TooLong)?;
    let work = async {
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&bytes).await?;
        let n = usize::from(stream.read_u16().await?);
        let mut buf = vec![0u8; n];
        stream.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(UPSTREAM_TIMEOUT, work)
        .await
        .map_err(|_| ExchangeError::Timeout(UPSTREAM_TIMEOUT))??;
    let m = Message::from_vec(&buf).map_err(ExchangeError::Malformed)?;
    if m.metadata.id != id {
        return Err(ExchangeError::OtherQuery);
    }
    Ok(m)
}

/// Finishes a forwarded request: resolves upstream and encodes the response.
pub async fn respond(shared: &Shared, job: ForwardJob) -> Option<Vec<u8>> {
    let q = job.request.queries.first()?.clone();
    let (prefix, name) = match &job.chase {
        Some((answers, target)) => (answers.clone(), target.clone()),
        None => (Vec::new(), q.name().clone()),
    };
    let result = shared
        .forwarder
        .resolve(shared, &name, q.query_type(), q.query_class())
        .await;
    let (rcode, mut m) = match result {
        Ok(r) => {
            // With a CNAME prefix the answer is ours (NOERROR even if the target is NX:
            // the CNAME exists); the target's records follow it.
            let rcode = if prefix.is_empty() {
                r.rcode
            } else {
                ResponseCode::NoError
            };
            let mut m = response_for(&job.request, rcode);
            m.answers = prefix;
            m.answers.extend(r.answers.into_iter().map(|mut rec| {
                // The client's spelling of its own name (0x20 case randomisation).
                if job.chase.is_none() && rec.name.eq_ignore_root(q.name()) {
                    rec.name = q.name().clone();
                }
                rec
            }));
            m.authorities = r.authorities;
            (rcode, m)
        }
        Err(ForwardError::TooMany) => (
            ResponseCode::Refused,
            response_for(&job.request, ResponseCode::Refused),
        ),
        Err(ForwardError::NoAnswer) => {
            if prefix.is_empty() {
                (
                    ResponseCode::ServFail,
                    response_for(&job.request, ResponseCode::ServFail),
                )
            } else {
                // The CNAME is still a valid answer without its target's addresses.
                let mut m = response_for(&job.request, ResponseCode::NoError);
                m.answers = prefix;
                (ResponseCode::NoError, m)
            }
        }
    };
    m.metadata.authoritative = job.chase.is_some();
    shared
        .metrics
        .observe(job.proto, job.v6, q.query_type(), rcode, job.start);
    encode(&m, job.limit)
}
