//! Emissary's `Mapping` (`getambassador.io/v3alpha1`), with Emissary's semantics, served
//! on the gateway's HTTP port (80) beside the Ingresses.
//!
//! - Match: `prefix` is a plain string prefix (`prefix_exact`: the whole path;
//!   `prefix_regex`: an RE2 expression over the whole path); `hostname` (a glob, `*` for
//!   any) or `host` (exact); `method`; `headers` (exact, or `true` for present) and
//!   `regex_headers`; `query_parameters` and `regex_query_parameters`.
//! - `service`: `[scheme://]name[.namespace][:port]` (a `.svc.cluster.local` tail is
//!   dropped; the port defaults to 80, or 443 for `https://`, which also originates TLS
//!   verified for the Service's name) is a Service port of the cluster, balanced over its
//!   ready endpoints. A Service that does not exist answers 503.
//! - `rewrite`: the matched `prefix` is replaced by it, `/` when unset (Emissary's
//!   default); `rewrite: ""` keeps the path. `host_rewrite` sets `Host`.
//! - `timeout_ms` (default 3000, 0 for none), `weight` (Mappings with the same match
//!   share its traffic: the weighted ones take their percent, the others the rest evenly;
//!   filters come from the group's first unweighted Mapping), `circuit_breakers` (the
//!   `default` priority's), `add_request_headers` / `add_response_headers` (a string,
//!   `{value}`, or `{value, append}`; `append` defaults to true; Envoy's `%...%` operators
//!   parsed by [`crate::template`]), `remove_request_headers`,
//!   `remove_response_headers`, `retry_policy`, `cors`, `precedence`.
//! - Every Mapping route sets `X-Envoy-External-Address` to the client's address.
//! - Order: `precedence` (higher first), then longer `prefix`, then more header and query
//!   matches, then a method before none, then namespace/name.
//! - Status (Emissary's `state` and `reason`): `Running`, with `reason` naming every
//!   field that is not supported and was ignored; `Inactive` when the Mapping cannot be
//!   served as written (no `prefix`, a field that would change what it matches and is not
//!   supported, a header template that does not parse), and then it routes nothing.
//!   Mappings of another `ambassador_id` are left alone.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::build::{Builder, PortKind};
use crate::config::{
    Action, BackendTls, Cors, Forward, HeaderEdits, HeaderMatch, HostMatch, Limits, PathMatch,
    PathRewrite, QueryMatch, Retry, Rewrite, Route, RouteMatch, RouteName, StringMatch,
    WeightedBackend,
};
use crate::status::{Kind, Update};
use crate::world::{Obj, PortRef, World, host_match};

pub const GROUP: &str = "getambassador.io";
pub const VERSION: &str = "v3alpha1";
/// Emissary's default `timeout_ms`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(3000);

/// One string or a list of them (Emissary accepts both for these fields).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            OneOrMany::None => vec![],
            OneOrMany::One(s) => s
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A header to add: `name: value`, `name: {value}` or `name: {value, append}`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum AddedHeader {
    Plain(String),
    Bool(bool),
    Object {
        #[serde(default)]
        value: String,
        #[serde(default)]
        append: Option<bool>,
    },
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CircuitBreaker {
    pub priority: Option<String>,
    pub max_connections: Option<u32>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_retries: Option<u32>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct RetryPolicy {
    pub retry_on: Option<String>,
    pub num_retries: Option<u32>,
    pub per_try_timeout: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct CorsSpec {
    pub origins: OneOrMany,
    pub methods: OneOrMany,
    pub headers: OneOrMany,
    pub exposed_headers: OneOrMany,
    pub credentials: Option<bool>,
    pub max_age: Option<String>,
}

/// The fields of a Mapping's spec the gateway reads; every other field lands in `other`
/// and is reported.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct MappingSpec {
    pub prefix: Option<String>,
    pub prefix_regex: Option<bool>,
    pub prefix_exact: Option<bool>,
    pub case_sensitive: Option<bool>,
    pub host: Option<String>,
    pub hostname: Option<String>,
    pub host_regex: Option<bool>,
    pub method: Option<String>,
    pub method_regex: Option<bool>,
    pub headers: BTreeMap<String, Value>,
    pub regex_headers: BTreeMap<String, String>,
    pub query_parameters: BTreeMap<String, Value>,
    pub regex_query_parameters: BTreeMap<String, String>,
    pub service: String,
    pub rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub timeout_ms: Option<u64>,
    pub weight: Option<u32>,
    pub precedence: Option<i64>,
    pub circuit_breakers: Vec<CircuitBreaker>,
    pub add_request_headers: BTreeMap<String, AddedHeader>,
    pub add_response_headers: BTreeMap<String, AddedHeader>,
    pub remove_request_headers: OneOrMany,
    pub remove_response_headers: OneOrMany,
    pub retry_policy: Option<RetryPolicy>,
    pub cors: Option<CorsSpec>,
    pub ambassador_id: OneOrMany,
    /// Developer-portal documentation: not routing, accepted as it is.
    pub docs: Option<Value>,
    #[serde(flatten)]
    pub other: BTreeMap<String, Value>,
}

/// A Mapping made ready to route, with what orders it and what groups it.
struct Compiled<'a> {
    obj: &'a Obj<MappingSpec>,
    host: HostMatch,
    matches: RouteMatch,
    precedence: i64,
    prefix_len: usize,
    forward: Forward,
    backend: WeightedBackend,
    weight: Option<u32>,
}

/// Whether the Mapping is for this gateway's `ambassador_id`.
fn ours(world: &World, spec: &MappingSpec) -> bool {
    let ids = spec.ambassador_id.list();
    ids.is_empty() || ids.contains(&world.settings.ambassador_id)
}

/// Adds the Mappings' routes on port 80 and their statuses.
pub(crate) fn compile(world: &World, b: &mut Builder, statuses: &mut Vec<Update>) {
    let mut ready = Vec::new();
    for obj in &world.mappings {
        let spec = match &obj.spec {
            Ok(s) if !ours(world, s) => continue,
            Ok(s) => s,
            Err(e) => {
                statuses.push(status(obj, "Inactive", format!("spec: {e}")));
                continue;
            }
        };
        match translate(world, obj, spec) {
            Ok((c, ignored)) => {
                let reason = if ignored.is_empty() {
                    String::new()
                } else {
                    format!("not supported, ignored: {}", ignored.join(", "))
                };
                statuses.push(status(obj, "Running", reason));
                ready.push(c);
            }
            Err(reason) => statuses.push(status(obj, "Inactive", reason)),
        }
    }
    // Sorted as indices: an entry holds a whole Forward, too big to move about in a sort.
    let mut order: Vec<usize> = (0..ready.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&ready[a], &ready[b]);
        b.precedence
            .cmp(&a.precedence)
            .then(b.prefix_len.cmp(&a.prefix_len))
            .then(
                (b.matches.headers.len() + b.matches.query.len())
                    .cmp(&(a.matches.headers.len() + a.matches.query.len())),
            )
            .then(b.matches.method.is_some().cmp(&a.matches.method.is_some()))
            .then(a.obj.namespace().cmp(b.obj.namespace()))
            .then(a.obj.name().cmp(b.obj.name()))
    });
    // Mappings with the same match share one route, split by weight.
    // (The match types are not `Hash`: their debug text is the key.)
    let mut groups: Vec<Vec<Compiled<'_>>> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut ready: Vec<Option<Compiled<'_>>> = ready.into_iter().map(Some).collect();
    for c in order.into_iter().filter_map(|i| ready[i].take()) {
        let key = format!("{:?}|{:?}|{}", c.host, c.matches, c.precedence);
        match index.get(&key) {
            Some(&g) => groups[g].push(c),
            None => {
                index.insert(key, groups.len());
                groups.push(vec![c]);
            }
        }
    }
    for group in groups {
        let explicit: u32 = group.iter().filter_map(|c| c.weight).sum();
        let rest = group.iter().filter(|c| c.weight.is_none()).count() as u32;
        let share = (100u32.saturating_sub(explicit) * 10_000)
            .checked_div(rest)
            .unwrap_or(0);
        let lead = group
            .iter()
            .find(|c| c.weight.is_none())
            .unwrap_or(&group[0]);
        let mut forward = lead.forward.clone();
        forward.backends = group
            .iter()
            .map(|c| WeightedBackend {
                weight: c.weight.map_or(share, |w| w.min(100) * 10_000),
                backend: c.backend.backend.clone(),
            })
            .collect();
        let route = Route {
            name: RouteName {
                kind: "Mapping",
                namespace: lead.obj.namespace().into(),
                name: lead.obj.name().into(),
                rule: 0,
            },
            matches: lead.matches.clone(),
            // A Service that does not exist answers 503, as Envoy does for a cluster
            // with no hosts.
            action: if forward.backends.iter().all(|b| b.backend.is_none()) {
                Action::Respond(StatusCode::SERVICE_UNAVAILABLE)
            } else {
                Action::Forward(Box::new(forward))
            },
        };
        b.routes(
            crate::ingress::HTTP_PORT,
            PortKind::Http,
            None,
            lead.host.clone(),
            [route],
        );
    }
}

fn status(obj: &Obj<MappingSpec>, state: &str, reason: String) -> Update {
    Update {
        kind: Kind::Mapping,
        namespace: obj.namespace().into(),
        name: obj.name().into(),
        status: json!({"state": state, "reason": reason}),
    }
}

/// The fields this gateway reads or accepts knowingly; the rest of `other` is reported.
fn translate<'a>(
    world: &World,
    obj: &'a Obj<MappingSpec>,
    spec: &MappingSpec,
) -> Result<(Compiled<'a>, Vec<String>), String> {
    let mut ignored: Vec<String> = spec.other.keys().map(|k| format!("spec.{k}")).collect();
    let prefix = spec
        .prefix
        .clone()
        .filter(|p| !p.is_empty())
        .ok_or("spec.prefix: required")?;
    if spec.host_regex == Some(true) {
        return Err("spec.host_regex: not supported".into());
    }
    if spec.method_regex == Some(true) {
        return Err("spec.method_regex: not supported".into());
    }
    if spec.case_sensitive == Some(false) {
        return Err("spec.case_sensitive: false is not supported".into());
    }
    let regex = spec.prefix_regex == Some(true);
    let path = if regex {
        PathMatch::Regex(prefix.clone())
    } else if spec.prefix_exact == Some(true) {
        PathMatch::Exact(prefix.clone())
    } else {
        PathMatch::StringPrefix(prefix.clone())
    };
    let host = match (&spec.hostname, &spec.host) {
        (Some(h), _) => host_match(h, false),
        (None, Some(h)) => host_match(h.split(':').next().unwrap_or(""), false),
        (None, None) => HostMatch::Any,
    };
    let method = match &spec.method {
        Some(m) => Some(
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| format!("spec.method: {m:?} is not a method"))?,
        ),
        None => None,
    };
    let header = |name: &str, field: &str| {
        HeaderName::try_from(name)
            .map_err(|_| format!("spec.{field}: {name:?} is not a header name"))
    };
    let mut headers = Vec::new();
    for (name, v) in &spec.headers {
        let value = match v {
            Value::Bool(true) => StringMatch::Present,
            Value::String(s) => StringMatch::Exact(s.clone()),
            v => return Err(format!("spec.headers.{name}: {v} is not a string")),
        };
        headers.push(HeaderMatch {
            name: header(name, "headers")?,
            value,
        });
    }
    for (name, re) in &spec.regex_headers {
        headers.push(HeaderMatch {
            name: header(name, "regex_headers")?,
            value: StringMatch::Regex(re.clone()),
        });
    }
    let mut query = Vec::new();
    for (name, v) in &spec.query_parameters {
        let value = match v {
            Value::Bool(true) => StringMatch::Present,
            Value::String(s) => StringMatch::Exact(s.clone()),
            v => return Err(format!("spec.query_parameters.{name}: {v} is not a string")),
        };
        query.push(QueryMatch {
            name: name.clone(),
            value,
        });
    }
    for (name, re) in &spec.regex_query_parameters {
        query.push(QueryMatch {
            name: name.clone(),
            value: StringMatch::Regex(re.clone()),
        });
    }

    let (target, tls) = parse_service(&spec.service, obj.namespace())?;
    let mut backend = world
        .backend(
            &target.namespace,
            &target.name,
            PortRef::Number(target.port.into()),
        )
        .ok();
    if let Some(b) = &mut backend {
        if tls {
            Arc::make_mut(b).tls = Some(BackendTls {
                hostname: format!("{}.{}.svc", target.name, target.namespace),
                ca_pem: vec![],
            });
        }
        // Copied only when they differ, so that most routes share the Service port's.
        let limits = limits(&spec.circuit_breakers);
        if b.limits != limits {
            Arc::make_mut(b).limits = limits;
        }
    }

    let rewrite = match spec.rewrite.as_deref() {
        Some("") => None,
        _ if regex => {
            if spec.rewrite.is_some() {
                ignored.push("spec.rewrite (with prefix_regex)".into());
            }
            None
        }
        r => Some(PathRewrite::ReplacePrefix {
            prefix: prefix.clone(),
            replacement: r.unwrap_or("/").to_string(),
        }),
    };
    let forward = Forward {
        request_headers: edits(
            &spec.add_request_headers,
            &spec.remove_request_headers,
            "add_request_headers",
        )?,
        response_headers: edits(
            &spec.add_response_headers,
            &spec.remove_response_headers,
            "add_response_headers",
        )?,
        rewrite: Rewrite {
            hostname: spec.host_rewrite.clone(),
            path: rewrite,
        },
        mirrors: vec![],
        fault: None,
        cors: spec.cors.as_ref().map(cors),
        backends: vec![],
        request_timeout: match spec.timeout_ms {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
            None => Some(DEFAULT_TIMEOUT),
        },
        backend_timeout: spec
            .retry_policy
            .as_ref()
            .and_then(|r| r.per_try_timeout.as_deref())
            .map(|t| {
                k8s::parse_duration(t)
                    .map_err(|e| format!("spec.retry_policy.per_try_timeout: {e}"))
            })
            .transpose()?,
        retry: spec.retry_policy.as_ref().map(retry).transpose()?,
        external_address_header: true,
    };
    let backend = WeightedBackend { weight: 1, backend };
    Ok((
        Compiled {
            obj,
            host,
            prefix_len: prefix.len(),
            precedence: spec.precedence.unwrap_or(0),
            matches: RouteMatch {
                path,
                method,
                headers,
                query,
            },
            forward,
            backend,
            weight: spec.weight,
        },
        ignored,
    ))
}

/// `service` as a Service port.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    name: String,
    namespace: String,
    port: u16,
}

/// `[scheme://]name[.namespace[.svc[.cluster.local]]][:port]`; true for `https://`.
fn parse_service(service: &str, default_ns: &str) -> Result<(Target, bool), String> {
    let (scheme, rest) = match service.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), service),
    };
    let tls = match scheme.as_str() {
        "http" => false,
        "https" => true,
        s => return Err(format!("spec.service: scheme {s:?} is not supported")),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("spec.service: {p:?} is not a port"))?,
        ),
        None => (rest, if tls { 443 } else { 80 }),
    };
    let host = host
        .trim_end_matches('.')
        .trim_end_matches(".cluster.local")
        .trim_end_matches(".svc");
    let (name, namespace) = match host.split_once('.') {
        Some((n, ns)) => (n, ns),
        None => (host, default_ns),
    };
    if name.is_empty() || namespace.contains('.') {
        return Err(format!(
            "spec.service: {service:?} is not a Service of the cluster (name[.namespace][:port])"
        ));
    }
    Ok((
        Target {
            name: name.into(),
            namespace: namespace.into(),
            port,
        },
        tls,
    ))
}

fn limits(breakers: &[CircuitBreaker]) -> Limits {
    let d = Limits::default();
    let Some(cb) = breakers
        .iter()
        .find(|c| c.priority.as_deref().unwrap_or("default") == "default")
    else {
        return d;
    };
    Limits {
        max_connections: cb.max_connections.unwrap_or(d.max_connections),
        max_pending_requests: cb.max_pending_requests.unwrap_or(d.max_pending_requests),
        max_requests: cb.max_requests.unwrap_or(d.max_requests),
        max_retries: cb.max_retries.unwrap_or(d.max_retries),
    }
}

fn edits(
    add: &BTreeMap<String, AddedHeader>,
    remove: &OneOrMany,
    field: &str,
) -> Result<HeaderEdits, String> {
    let mut e = HeaderEdits::default();
    for name in remove.list() {
        e.remove.push(
            HeaderName::try_from(name.as_str())
                .map_err(|_| format!("{name:?} is not a header name"))?,
        );
    }
    for (name, h) in add {
        let header = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("spec.{field}: {name:?} is not a header name"))?;
        let (value, append) = match h {
            AddedHeader::Plain(v) => (v.clone(), true),
            AddedHeader::Bool(b) => (b.to_string(), true),
            AddedHeader::Object { value, append } => (value.clone(), append.unwrap_or(true)),
        };
        let template =
            crate::template::parse(&value).map_err(|err| format!("spec.{field}.{name}: {err}"))?;
        if append {
            e.add.push((header, template));
        } else {
            e.set.push((header, template));
        }
    }
    Ok(e)
}

fn cors(c: &CorsSpec) -> Cors {
    Cors {
        allow_origins: c.origins.list(),
        allow_methods: c.methods.list(),
        allow_headers: c.headers.list(),
        expose_headers: c.exposed_headers.list(),
        allow_credentials: c.credentials.unwrap_or(false),
        max_age: c
            .max_age
            .as_deref()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
    }
}

/// Envoy's `retry_on` conditions as statuses (connection failures are always retried).
fn retry(r: &RetryPolicy) -> Result<Retry, String> {
    let statuses: Vec<u16> = match r.retry_on.as_deref().unwrap_or("5xx") {
        "5xx" => (500..600).collect(),
        "gateway-error" => vec![502, 503, 504],
        "retriable-4xx" => vec![409],
        "connect-failure" | "reset" | "refused-stream" => vec![],
        other => {
            return Err(format!(
                "spec.retry_policy.retry_on: {other:?} is not supported"
            ));
        }
    };
    Ok(Retry {
        attempts: r.num_retries.unwrap_or(1),
        statuses: statuses
            .into_iter()
            .filter_map(|s| StatusCode::from_u16(s).ok())
            .collect(),
        backoff: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ListenerKind, Piece, Template};
    use crate::world::fixtures::*;

    fn world() -> World {
        let mut w = World::default();
        service(
            &mut w,
            "default",
            "quote",
            &[("http", 80, None)],
            &["10.0.0.7"],
        );
        service(
            &mut w,
            "other",
            "quote",
            &[("http", 8080, None)],
            &["10.0.1.7"],
        );
        w
    }

    fn mapping(name: &str, spec: &str) -> Obj<MappingSpec> {
        obj(&format!(
            "metadata: {{name: {name}, namespace: default}}\nspec:\n{spec}"
        ))
    }

    fn run(w: &World) -> (Config, Vec<Update>) {
        let mut b = Builder::default();
        let mut s = Vec::new();
        compile(w, &mut b, &mut s);
        (b.finish(), s)
    }

    fn routes(c: &Config) -> Vec<Route> {
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        assert_eq!(c.listeners[0].port, 80);
        h.hosts[0].routes.clone()
    }

    fn forward(r: &Route) -> &Forward {
        let Action::Forward(f) = &r.action else {
            panic!("{r:?}")
        };
        f
    }

    #[test]
    fn the_talks_mapping() {
        let mut w = world();
        let mut m: Obj<MappingSpec> = obj(include_str!(
            "../../../examples/step4-outside-access/mapping-quote-backend.yaml"
        ));
        m.meta.namespace = Some("default".into());
        w.mappings.push(m);
        let (c, s) = run(&w);
        assert_eq!(s[0].status, json!({"state": "Running", "reason": ""}));
        let r = routes(&c);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r[0].matches.path,
            PathMatch::StringPrefix("/backend/".into())
        );
        let f = forward(&r[0]);
        assert!(f.external_address_header);
        assert_eq!(
            f.rewrite.path,
            Some(PathRewrite::ReplacePrefix {
                prefix: "/backend/".into(),
                replacement: "/".into()
            })
        );
        assert_eq!(f.request_timeout, Some(DEFAULT_TIMEOUT));
        let b = f.backends[0].backend.as_ref().unwrap();
        assert_eq!((b.service.as_str(), b.port), ("quote", 80));
        assert_eq!(&*b.endpoints, &["10.0.0.7:8080".parse().unwrap()]);
        assert_eq!(
            b.limits,
            Limits {
                max_connections: 2048,
                max_pending_requests: 2048,
                ..Limits::default()
            }
        );
        let h = |n: &str| HeaderName::try_from(n).unwrap();
        assert_eq!(
            f.request_headers.add,
            [
                (
                    h("x-test-ip"),
                    Template(vec![Piece::RemoteAddressWithoutPort])
                ),
                (h("x-test-proto"), Template(vec![Piece::Protocol])),
                (
                    h("x-test-static"),
                    Template::literal("This is a test header")
                ),
                (h("x-test-static-2"), Template::literal("The test header")),
            ]
        );
        assert_eq!(
            f.request_headers.set,
            [(h("x-test-object"), Template::literal("This the value"))]
        );
    }

    #[test]
    fn service_names_namespaces_ports_and_schemes() {
        let t = |s: &str| parse_service(s, "default");
        let target = |n: &str, ns: &str, port| Target {
            name: n.into(),
            namespace: ns.into(),
            port,
        };
        assert_eq!(t("quote").unwrap(), (target("quote", "default", 80), false));
        assert_eq!(
            t("quote.other:8080").unwrap(),
            (target("quote", "other", 8080), false)
        );
        assert_eq!(
            t("https://quote.other.svc.cluster.local").unwrap(),
            (target("quote", "other", 443), true)
        );
        assert!(t("quote:http").is_err());
        assert!(t("grpc://quote").is_err());
        assert!(t("httpbin.example.org").is_err());
    }

    #[test]
    fn matches_rewrites_timeouts_retries_and_cors() {
        let mut w = world();
        w.mappings.push(mapping(
            "m",
            "  prefix: /api/
  hostname: '*.example.com'
  method: get
  headers: {x-canary: 'yes', x-present: true}
  regex_headers: {x-re: 'a.*'}
  query_parameters: {debug: '1'}
  service: quote.other:8080
  rewrite: /v2/
  host_rewrite: backend.local
  timeout_ms: 0
  remove_request_headers: [x-drop]
  remove_response_headers: server
  add_response_headers: {x-served-by: {value: '%REQ(x-user)%', append: false}}
  retry_policy: {retry_on: gateway-error, num_retries: 3, per_try_timeout: 500ms}
  cors: {origins: 'https://a.com, https://b.com', methods: [GET, POST], credentials: true, max_age: '86400'}
",
        ));
        let (c, s) = run(&w);
        assert_eq!(s[0].status["state"], "Running");
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        assert_eq!(
            h.hosts[0].hostnames,
            [HostMatch::Wildcard {
                suffix: ".example.com".into(),
                one_label: false
            }]
        );
        let r = &h.hosts[0].routes[0];
        assert_eq!(r.matches.method, Some(Method::GET));
        assert_eq!(r.matches.headers.len(), 3);
        assert_eq!(r.matches.headers[1].value, StringMatch::Present);
        assert_eq!(r.matches.headers[2].value, StringMatch::Regex("a.*".into()));
        assert_eq!(r.matches.query[0].value, StringMatch::Exact("1".into()));
        let f = forward(r);
        assert_eq!(f.backends[0].backend.as_ref().unwrap().namespace, "other");
        assert_eq!(f.request_timeout, None);
        assert_eq!(f.backend_timeout, Some(Duration::from_millis(500)));
        let retry = f.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, 3);
        assert_eq!(retry.statuses.len(), 3);
        assert_eq!(f.rewrite.hostname.as_deref(), Some("backend.local"));
        assert_eq!(
            f.rewrite.path,
            Some(PathRewrite::ReplacePrefix {
                prefix: "/api/".into(),
                replacement: "/v2/".into()
            })
        );
        assert_eq!(
            f.request_headers.remove,
            [HeaderName::from_static("x-drop")]
        );
        assert_eq!(
            f.response_headers.remove,
            [HeaderName::from_static("server")]
        );
        assert_eq!(f.response_headers.set.len(), 1);
        let cors = f.cors.as_ref().unwrap();
        assert_eq!(cors.allow_origins, ["https://a.com", "https://b.com"]);
        assert_eq!(cors.allow_methods, ["GET", "POST"]);
        assert!(cors.allow_credentials);
        assert_eq!(cors.max_age, Some(Duration::from_secs(86400)));
    }

    #[test]
    fn unknown_fields_are_reported_and_unservable_mappings_are_inactive() {
        let mut w = world();
        w.mappings.push(mapping(
            "a",
            "  prefix: /a/\n  service: quote\n  shadow: true\n  load_balancer: {policy: round_robin}",
        ));
        w.mappings.push(mapping(
            "b",
            "  prefix: /b/\n  service: quote\n  host_regex: true\n  host: '.*'",
        ));
        w.mappings.push(mapping(
            "c",
            "  prefix: /c/\n  service: quote\n  add_request_headers: {x: {value: '%UPSTREAM_HOST%'}}",
        ));
        w.mappings.push(mapping("d", "  service: quote"));
        w.mappings.push(mapping(
            "e",
            "  prefix: /e/\n  service: quote\n  ambassador_id: [other]",
        ));
        let (c, s) = run(&w);
        let by = |n: &str| s.iter().find(|u| u.name == n).map(|u| u.status.clone());
        assert_eq!(
            by("a").unwrap(),
            json!({"state": "Running", "reason": "not supported, ignored: spec.load_balancer, spec.shadow"})
        );
        assert_eq!(by("b").unwrap()["state"], "Inactive");
        assert_eq!(
            by("c").unwrap()["reason"],
            "spec.add_request_headers.x: command operator %UPSTREAM_HOST% is not supported"
        );
        assert_eq!(by("d").unwrap()["reason"], "spec.prefix: required");
        assert_eq!(
            by("e"),
            None,
            "another ambassador_id's Mapping is left alone"
        );
        assert_eq!(routes(&c).len(), 1);
    }

    #[test]
    fn order_is_precedence_then_longest_prefix_and_regexes_and_exact_paths() {
        let mut w = world();
        w.mappings
            .push(mapping("short", "  prefix: /a/\n  service: quote"));
        w.mappings
            .push(mapping("long", "  prefix: /a/b/\n  service: quote"));
        w.mappings.push(mapping(
            "high",
            "  prefix: /\n  service: quote\n  precedence: 10",
        ));
        w.mappings.push(mapping(
            "re",
            "  prefix: '/r/[0-9]+'\n  prefix_regex: true\n  service: quote",
        ));
        w.mappings.push(mapping(
            "exact",
            "  prefix: /x\n  prefix_exact: true\n  service: quote",
        ));
        let (c, _) = run(&w);
        let r = routes(&c);
        let names: Vec<&str> = r.iter().map(|r| r.name.name.as_str()).collect();
        assert_eq!(names, ["high", "re", "long", "short", "exact"]);
        assert_eq!(r[1].matches.path, PathMatch::Regex("/r/[0-9]+".into()));
        assert_eq!(forward(&r[1]).rewrite.path, None);
        assert_eq!(r[4].matches.path, PathMatch::Exact("/x".into()));
    }

    #[test]
    fn mappings_with_the_same_match_split_traffic_by_weight() {
        let mut w = world();
        w.mappings
            .push(mapping("main", "  prefix: /q/\n  service: quote"));
        w.mappings.push(mapping(
            "canary",
            "  prefix: /q/\n  service: quote.other:8080\n  weight: 10",
        ));
        w.mappings
            .push(mapping("missing", "  prefix: /m/\n  service: nothere"));
        let (c, s) = run(&w);
        assert!(s.iter().all(|u| u.status["state"] == "Running"));
        let r = routes(&c);
        assert_eq!(r.len(), 2);
        let f = forward(&r[0]);
        assert_eq!(r[0].name.name, "main");
        let weights: Vec<(u32, String)> = f
            .backends
            .iter()
            .map(|b| (b.weight, b.backend.as_ref().unwrap().namespace.clone()))
            .collect();
        assert!(weights.contains(&(900_000, "default".into())));
        assert!(weights.contains(&(100_000, "other".into())));
        assert_eq!(
            r[1].action,
            Action::Respond(StatusCode::SERVICE_UNAVAILABLE),
            "no Service: 503"
        );
    }
}
