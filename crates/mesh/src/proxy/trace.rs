//! Distributed traces, as linkerd2-proxy takes part in them: the proxy joins a trace
//! that a client started and sampled (a W3C `traceparent` with its sampled flag), and
//! never starts one itself. For each such request it forwards, it adds one span (the
//! client's proxy a CLIENT span, the server's proxy a SERVER span), a child of the
//! span the request came with, and sends the request on with `traceparent` naming its
//! own span as the parent: so the server's proxy nests under the client's, and the
//! app's spans under the server's proxy. `tracestate` goes on untouched. Requests with
//! no context, an invalid one or an unsampled one pass as they came.
//!
//! Spans are exported in batches over OTLP/HTTP (protobuf, `POST /v1/traces`) to the
//! collector `--trace-collector` names; with none, the proxy changes nothing. A span
//! that finds the export queue full is dropped, never waited for.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::metrics::Direction;

/// The trace context header (W3C Trace Context).
const TRACEPARENT: &str = "traceparent";
/// Spans waiting to be exported; more are dropped.
const QUEUE: usize = 4096;
/// The most spans in one export.
const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
const BATCH_DELAY: Duration = Duration::from_secs(1);
/// How long an export may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The OTLP/HTTP path of traces.
const TRACES_PATH: &str = "/v1/traces";

/// A trace context (`traceparent`, version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Context {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl Context {
    /// The request's trace context: `None` when it has none, more than one, or one
    /// that is not valid (W3C Trace Context level 1, §3.2: lowercase hex, IDs not all
    /// zeros, version `ff` invalid, a later version read by its first four fields).
    pub(super) fn from_headers(headers: &HeaderMap) -> Option<Context> {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let value = values.next()?;
        if values.next().is_some() {
            return None;
        }
        Context::parse(value.as_bytes())
    }

    fn parse(v: &[u8]) -> Option<Context> {
        if v.len() < 55 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
            return None;
        }
        let version = hex::<1>(&v[..2])?[0];
        // Version 00 is exactly 55 characters; a later one may carry more, after a dash.
        if version == 0xff || (version == 0 && v.len() != 55) || (v.len() > 55 && v[55] != b'-') {
            return None;
        }
        let trace_id = hex::<16>(&v[3..35])?;
        let parent_id = hex::<8>(&v[36..52])?;
        let flags = hex::<1>(&v[53..55])?[0];
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Context {
            trace_id,
            parent_id,
            flags,
        })
    }

    pub(super) fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The header naming `span` as the parent, in this trace.
    fn header(&self, span: [u8; 8]) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &span);
        s.push('-');
        push_hex(&mut s, &[self.flags]);
        HeaderValue::from_str(&s).expect("hex is a valid header value")
    }
}

/// `N` bytes from `2N` lowercase hex digits.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 0xf)] as char);
    }
}

/// Where spans go: an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    /// `host:port`, resolved at each export (a Service's name follows its changes).
    pub authority: String,
    /// The path spans are posted to.
    pub path: String,
}

impl std::str::FromStr for Collector {
    type Err = String;

    /// `HOST:PORT` (Linkerd's `config.linkerd.io/trace-collector`), or an
    /// `http://HOST:PORT[/PATH]` URL (OTLP's endpoint); the path defaults to
    /// `/v1/traces`.
    fn from_str(s: &str) -> Result<Collector, String> {
        let bad = |why: &str| format!("trace collector {s:?}: {why}");
        let uri: Uri = if s.contains("://") {
            s.parse()
        } else {
            format!("http://{s}").parse()
        }
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad("only http:// is supported (OTLP/HTTP without TLS)"));
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| bad("no host"))?;
        if authority.port_u16().is_none() {
            return Err(bad("no port (OTLP/HTTP's is 4318)"));
        }
        let path = match uri.path() {
            "" | "/" => TRACES_PATH.to_string(),
            p => p.to_string(),
        };
        Ok(Collector {
            authority: authority.to_string(),
            path,
        })
    }
}

/// The proxy's side of tracing: a queue to the exporter, and span IDs.
pub(super) struct Tracer {
    queue: mpsc::Sender<otlp::Span>,
    random: SystemRandom,
    dropped: AtomicU64,
}

impl Tracer {
    /// A tracer whose spans go to `collector`, described by `resource` (the pod's
    /// attributes); its exporter runs on the current runtime.
    pub(super) fn start(collector: Collector, resource: Vec<(&str, String)>) -> Arc<Tracer> {
        let (queue, spans) = mpsc::channel(QUEUE);
        let resource = otlp::Resource {
            attributes: resource
                .into_iter()
                .map(|(k, v)| otlp::KeyValue::string(k, v))
                .collect(),
        };
        tokio::spawn(export(spans, collector, resource));
        Arc::new(Tracer {
            queue,
            random: SystemRandom::new(),
            dropped: AtomicU64::new(0),
        })
    }

    /// A span for `req` when it comes in a sampled trace: its `traceparent` is
    /// rewritten to name the new span. `peer` is the other side's address (the client
    /// inbound, where the app connected outbound); `to` is where the request goes.
    pub(super) fn span<B>(
        self: &Arc<Self>,
        req: &mut Request<B>,
        direction: Direction,
        peer: IpAddr,
        to: SocketAddr,
    ) -> Option<Span> {
        let context = Context::from_headers(req.headers()).filter(Context::sampled)?;
        let mut span_id = [0u8; 8];
        // All zeros is not a valid ID; a failing random source gives no span at all.
        while span_id == [0; 8] {
            self.random.fill(&mut span_id).ok()?;
        }
        req.headers_mut()
            .insert(TRACEPARENT, context.header(span_id));
        let (kind, peer_key) = match direction {
            Direction::Inbound => (otlp::SpanKind::Server, "client.address"),
            Direction::Outbound => (otlp::SpanKind::Client, "server.socket.address"),
        };
        let version = match req.version() {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        let attributes = vec![
            otlp::KeyValue::string("http.request.method", req.method().as_str()),
            otlp::KeyValue::string("url.path", req.uri().path()),
            otlp::KeyValue::string("server.address", super::http::authority(req, to)),
            otlp::KeyValue::string("network.protocol.version", version),
            otlp::KeyValue::string(peer_key, peer.to_string()),
            otlp::KeyValue::string("kubewire.direction", direction.label()),
        ];
        Some(Span {
            tracer: self.clone(),
            proto: otlp::Span {
                trace_id: context.trace_id.to_vec(),
                span_id: span_id.to_vec(),
                trace_state: req
                    .headers()
                    .get("tracestate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                parent_span_id: context.parent_id.to_vec(),
                // The trace flags, and that the parent is remote (OTLP's SpanFlags).
                flags: u32::from(context.flags) | 0x300,
                name: req.method().as_str().to_string(),
                kind: kind as i32,
                start_time_unix_nano: unix_nanos(SystemTime::now()),
                end_time_unix_nano: 0,
                attributes,
                status: None,
            },
        })
    }
}

/// One request's span, sent to the exporter when it ends.
pub(super) struct Span {
    tracer: Arc<Tracer>,
    proto: otlp::Span,
}

impl Span {
    /// Ends the span with the response's status (`grpc_status` from its trailers;
    /// `cut` when the body did not reach its end) and queues it.
    pub(super) fn end(mut self, status: u16, grpc_status: Option<&str>, cut: bool) {
        self.proto.end_time_unix_nano = unix_nanos(SystemTime::now());
        self.proto.attributes.push(otlp::KeyValue::int(
            "http.response.status_code",
            i64::from(status),
        ));
        if let Some(g) = grpc_status {
            let code = g.parse().unwrap_or(-1);
            self.proto
                .attributes
                .push(otlp::KeyValue::int("rpc.grpc.status_code", code));
        }
        // OpenTelemetry's HTTP conventions: a server's span fails on 5xx, a client's
        // on 4xx too.
        let client = self.proto.kind == otlp::SpanKind::Client as i32;
        let failed = status >= 500
            || (client && status >= 400)
            || grpc_status.is_some_and(|g| g != "0")
            || cut;
        if failed {
            self.proto.status = Some(otlp::Status {
                message: if cut {
                    "the response was cut off".into()
                } else {
                    String::new()
                },
                code: otlp::StatusCode::Error as i32,
            });
        }
        if self.tracer.queue.try_send(self.proto).is_err() {
            let n = self.tracer.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                warn!(
                    dropped = n + 1,
                    "the trace export queue is full: spans dropped"
                );
            }
        }
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// Exports the queued spans in batches, until the tracer is gone.
async fn export(
    mut spans: mpsc::Receiver<otlp::Span>,
    collector: Collector,
    resource: otlp::Resource,
) {
    let mut failing = false;
    while let Some(first) = spans.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                _ => break,
            }
        }
        let n = batch.len();
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "kubewire-proxy".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans: batch,
                }],
            }],
        };
        let body = Bytes::from(request.encode_to_vec());
        match tokio::time::timeout(EXPORT_TIMEOUT, post(&collector, body)).await {
            Ok(Ok(())) => {
                debug!(spans = n, "spans exported");
                if failing {
                    warn!(collector = %collector.authority, "spans are exported again");
                }
                failing = false;
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e,
                    _ => format!("no answer within {EXPORT_TIMEOUT:?}"),
                };
                // Said once per outage, not once per batch.
                if !failing {
                    warn!(collector = %collector.authority, error = %why, spans = n, "exporting spans failed: they are dropped");
                }
                failing = true;
            }
        }
    }
}

/// One OTLP/HTTP export.
async fn post(collector: &Collector, body: Bytes) -> Result<(), String> {
    let addr = tokio::net::lookup_host(&collector.authority)
        .await
        .map_err(|e| format!("resolving {}: {e}", collector.authority))?
        .next()
        .ok_or_else(|| format!("{} has no address", collector.authority))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::post(&collector.path)
        .header(http::header::HOST, &collector.authority)
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // Read whole, so the collector's answer (a partial success says why) can be shown.
    let answer = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!(
            "the collector answered {status}: {}",
            String::from_utf8_lossy(&answer[..answer.len().min(200)])
        ))
    }
}

/// The OTLP messages the proxy sends (opentelemetry-proto's `trace/v1`, `common/v1`,
/// `resource/v1` and `collector/trace/v1`), only the fields it fills.
mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub(super) resource_spans: Vec<ResourceSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub(super) resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub(super) scope_spans: Vec<ScopeSpans>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub(super) attributes: Vec<KeyValue>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub(super) scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub(super) spans: Vec<Span>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub(super) name: String,
        #[prost(string, tag = "2")]
        pub(super) version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub(super) trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(super) span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub(super) trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub(super) parent_span_id: Vec<u8>,
        #[prost(fixed32, tag = "16")]
        pub(super) flags: u32,
        #[prost(string, tag = "5")]
        pub(super) name: String,
        #[prost(enumeration = "SpanKind", tag = "6")]
        pub(super) kind: i32,
        #[prost(fixed64, tag = "7")]
        pub(super) start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub(super) end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub(super) attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub(super) status: Option<Status>,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub(super) enum SpanKind {
        Unspecified = 0,
        Internal = 1,
        Server = 2,
        Client = 3,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Status {
        #[prost(string, tag = "2")]
        pub(super) message: String,
        #[prost(enumeration = "StatusCode", tag = "3")]
        pub(super) code: i32,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
    #[repr(i32)]
    pub(super) enum StatusCode {
        Unset = 0,
        Ok = 1,
        Error = 2,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct KeyValue {
        #[prost(string, tag = "1")]
        pub(super) key: String,
        #[prost(message, optional, tag = "2")]
        pub(super) value: Option<AnyValue>,
    }

    impl KeyValue {
        pub(super) fn string(key: &str, value: impl Into<String>) -> KeyValue {
            KeyValue {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(Value::String(value.into())),
                }),
            }
        }

        pub(super) fn int(key: &str, value: i64) -> KeyValue {
            KeyValue {
                key: key.into(),
                value: Some(AnyValue {
                    value: Some(Value::Int(value)),
                }),
            }
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 3")]
        pub(super) value: Option<Value>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Value {
        #[prost(string, tag = "1")]
        String(String),
        #[prost(int64, tag = "3")]
        Int(i64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(TRACEPARENT, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn reads_a_valid_traceparent() {
        let c = Context::from_headers(&headers(&[VALID])).unwrap();
        assert_eq!(c.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(
            c.parent_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert!(c.sampled());
        let c = Context::from_headers(&headers(&[&VALID.replace("-01", "-00")])).unwrap();
        assert!(!c.sampled());
        // A later version is read by its first four fields.
        let later = format!("{}-what-comes-next", VALID.replacen("00", "01", 1));
        assert!(Context::from_headers(&headers(&[&later])).is_some());
    }

    #[test]
    fn refuses_invalid_traceparents() {
        for bad in [
            "",
            "00",
            &VALID.to_uppercase(),
            &VALID.replacen("00", "ff", 1),
            &format!("{VALID}-"),
            &format!("{VALID}0"),
            &VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            &VALID.replace("00f067aa0ba902b7", &"0".repeat(16)),
            &VALID.replace('-', "_"),
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
        ] {
            assert_eq!(Context::parse(bad.as_bytes()), None, "{bad:?}");
        }
        // Two of them: neither is trusted.
        assert_eq!(Context::from_headers(&headers(&[VALID, VALID])), None);
        assert_eq!(Context::from_headers(&HeaderMap::new()), None);
    }

    /// Every truncation and every one-byte change of a valid header is either refused
    /// or read as what it says, and never panics.
    #[test]
    fn mangled_traceparents_never_panic() {
        for n in 0..=VALID.len() {
            let _ = Context::parse(&VALID.as_bytes()[..n]);
        }
        for i in 0..VALID.len() {
            for b in 0..=255u8 {
                let mut v = VALID.as_bytes().to_vec();
                v[i] = b;
                if let Some(c) = Context::parse(&v) {
                    let back = c.header(c.parent_id);
                    assert_eq!(Context::parse(back.as_bytes()), Some(c));
                }
            }
        }
    }

    #[test]
    fn the_header_names_the_new_span() {
        let c = Context::parse(VALID.as_bytes()).unwrap();
        let h = c.header([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(h, "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01");
    }

    #[test]
    fn collectors() {
        let c: Collector = "collector.tracing:4318".parse().unwrap();
        assert_eq!(c.authority, "collector.tracing:4318");
        assert_eq!(c.path, "/v1/traces");
        let c: Collector = "http://10.0.0.1:9411/otlp/v1/traces".parse().unwrap();
        assert_eq!(c.path, "/otlp/v1/traces");
        for bad in ["collector", "https://c:4318", "http://:4318", "c:notaport"] {
            let e = bad.parse::<Collector>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[tokio::test]
    async fn a_sampled_request_gets_a_child_span_and_the_rest_pass() {
        let tracer = Tracer::start(
            "127.0.0.1:9".parse().unwrap(),
            vec![("service.name", "t".into())],
        );
        let peer: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let mut req = Request::get("/x")
            .header(TRACEPARENT, VALID)
            .header("tracestate", "a=b")
            .body(())
            .unwrap();
        let span = tracer
            .span(&mut req, Direction::Outbound, peer.ip(), peer)
            .unwrap();
        let sent = Context::from_headers(req.headers()).unwrap();
        assert_eq!(
            sent.trace_id,
            Context::parse(VALID.as_bytes()).unwrap().trace_id
        );
        assert_eq!(sent.parent_id.to_vec(), span.proto.span_id);
        assert_eq!(
            span.proto.parent_span_id,
            b"\x00\xf0\x67\xaa\x0b\xa9\x02\xb7"
        );
        assert_eq!(span.proto.trace_state, "a=b");
        assert_eq!(req.headers()["tracestate"], "a=b");

        for untraced in [VALID.replace("-01", "-00"), "garbage".into()] {
            let mut req = Request::get("/x")
                .header(TRACEPARENT, &untraced)
                .body(())
                .unwrap();
            assert!(
                tracer
                    .span(&mut req, Direction::Inbound, peer.ip(), peer)
                    .is_none()
            );
            assert_eq!(req.headers()[TRACEPARENT], untraced.as_str());
        }
    }

    /// The encoding matches OTLP's field numbers, checked on the wire bytes of one
    /// attribute (`KeyValue{key=1, value=2{string_value=1}}`).
    #[test]
    fn encodes_otlp_fields() {
        let kv = otlp::KeyValue::string("k", "v");
        assert_eq!(kv.encode_to_vec(), [0x0a, 1, b'k', 0x12, 3, 0x0a, 1, b'v']);
        let kv = otlp::KeyValue::int("k", 5);
        assert_eq!(kv.encode_to_vec(), [0x0a, 1, b'k', 0x12, 2, 0x18, 5]);
    }
}
