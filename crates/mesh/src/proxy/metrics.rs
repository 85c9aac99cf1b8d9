//! The proxy's Prometheus metrics, under linkerd2-proxy's names and labels so that
//! Linkerd's dashboards read them:
//!
//! | series | kind |
//! |---|---|
//! | `tcp_open_total` | counter |
//! | `tcp_close_total` | counter |
//! | `tcp_open_connections` | gauge |
//! | `tcp_read_bytes_total` | counter: bytes read from the peer |
//! | `tcp_write_bytes_total` | counter: bytes written to the peer |
//!
//! | `request_total` | counter: HTTP requests |
//! | `response_total` | counter: HTTP responses, by `status_code` and `classification` |
//! | `response_latency_ms` | histogram: from a request's headers to its response's end |
//!
//! | `inbound_http_authz_allow_total`, `inbound_tcp_authz_allow_total` | counter: requests and connections the policy allowed, by `srv_kind`, `srv_name`, `authz_kind`, `authz_name` (and HTTP on a Server with routes `route_kind`, `route_name`) |
//! | `inbound_http_authz_deny_total`, `inbound_tcp_authz_deny_total` | counter: refused, by `srv_kind`, `srv_name` (and `route_kind`, `route_name`) |
//!
//! Labels: `direction` (`inbound`, `outbound`), `peer` (`src` inbound, `dst`
//! outbound), `tls` (`true` for mutual TLS between proxies, else `no_identity`); the
//! HTTP series have `authority` (the request's host) instead of `peer`, and an outbound
//! request that a route (GAMMA) matched has `route_kind`, `route_namespace` and
//! `route_name` (`kubewire mesh top --by route` reads them). A response is
//! a `failure` when its status is 5xx or its `grpc-status` is not 0.

use gateway::config::RouteName;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;
type HttpLabels = Vec<(&'static str, String)>;

/// linkerd2-proxy's buckets for `response_latency_ms`.
const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// Which side of the pod a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub(super) fn label(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Every series the proxy keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    open_total: Family<Labels, Counter>,
    close_total: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    read: Family<Labels, Counter>,
    write: Family<Labels, Counter>,
    requests: Family<HttpLabels, Counter>,
    responses: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram, fn() -> Histogram>,
    http_allow: Family<HttpLabels, Counter>,
    http_deny: Family<HttpLabels, Counter>,
    tcp_allow: Family<HttpLabels, Counter>,
    tcp_deny: Family<HttpLabels, Counter>,
}

/// What the inbound policy was asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authorized {
    Http,
    Tcp,
}

/// One HTTP request's series, for its response.
pub(crate) struct Request {
    responses: Family<HttpLabels, Counter>,
    latency: Family<HttpLabels, Histogram, fn() -> Histogram>,
    labels: HttpLabels,
    started: std::time::Instant,
}

impl Request {
    /// The response ended with `status`, and `grpc_status` if it had one; `cut_off`
    /// if its body failed before its end.
    pub(crate) fn respond(self, status: u16, grpc_status: Option<&str>, cut_off: bool) {
        let failure = cut_off || status >= 500 || grpc_status.is_some_and(|g| g.trim() != "0");
        let mut labels = self.labels;
        labels.push(("status_code", status.to_string()));
        labels.push((
            "classification",
            if failure { "failure" } else { "success" }.to_string(),
        ));
        self.responses.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64() * 1000.0);
    }
}

/// One open connection's series.
pub(crate) struct Open {
    direction: Direction,
    close_total: Counter,
    open: Gauge,
    read: Counter,
    write: Counter,
}

impl Open {
    /// The connection closed after `from_client` bytes went from the side that opened
    /// it to the other, and `to_client` back.
    pub(crate) fn close(self, from_client: u64, to_client: u64) {
        let (read, written) = match self.direction {
            Direction::Inbound => (from_client, to_client),
            Direction::Outbound => (to_client, from_client),
        };
        self.read.inc_by(read);
        self.write.inc_by(written);
        self.close_total.inc();
        self.open.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty series, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            open_total: Family::default(),
            close_total: Family::default(),
            open: Family::default(),
            read: Family::default(),
            write: Family::default(),
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            http_allow: Family::default(),
            http_deny: Family::default(),
            tcp_allow: Family::default(),
            tcp_deny: Family::default(),
            registry: Registry::default(),
        };
        registry.register("tcp_open", "TCP connections opened", m.open_total.clone());
        registry.register("tcp_close", "TCP connections closed", m.close_total.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections open now",
            m.open.clone(),
        );
        registry.register("tcp_read_bytes", "Bytes read from peers", m.read.clone());
        registry.register("tcp_write_bytes", "Bytes written to peers", m.write.clone());
        registry.register("request", "HTTP requests", m.requests.clone());
        registry.register("response", "HTTP responses", m.responses.clone());
        registry.register(
            "response_latency_ms",
            "From a request's headers to its response's end, in milliseconds",
            m.latency.clone(),
        );
        for (name, help, family) in [
            (
                "inbound_http_authz_allow",
                "HTTP requests the policy allowed",
                &m.http_allow,
            ),
            (
                "inbound_http_authz_deny",
                "HTTP requests the policy refused",
                &m.http_deny,
            ),
            (
                "inbound_tcp_authz_allow",
                "Connections the policy allowed",
                &m.tcp_allow,
            ),
            (
                "inbound_tcp_authz_deny",
                "Connections the policy refused",
                &m.tcp_deny,
            ),
        ] {
            registry.register(name, help, family.clone());
        }
        Metrics { registry, ..m }
    }

    /// Counts what the policy said of a request or connection to the server
    /// `(srv_kind, srv_name)`, on its `route` (`(route_kind, route_name)`) when it has
    /// routes: allowed by `authz` (`(authz_kind, authz_name)`), or not.
    pub(crate) fn authorized(
        &self,
        what: Authorized,
        server: (&str, &str),
        route: Option<(&str, &str)>,
        authz: Option<(&str, &str)>,
    ) {
        let mut labels: HttpLabels = vec![
            ("srv_kind", server.0.to_string()),
            ("srv_name", server.1.to_string()),
        ];
        if let Some((kind, name)) = route {
            labels.push(("route_kind", kind.to_lowercase()));
            labels.push(("route_name", name.to_string()));
        }
        let family = match (what, authz) {
            (Authorized::Http, Some(_)) => &self.http_allow,
            (Authorized::Http, None) => &self.http_deny,
            (Authorized::Tcp, Some(_)) => &self.tcp_allow,
            (Authorized::Tcp, None) => &self.tcp_deny,
        };
        if let Some((kind, name)) = authz {
            labels.push(("authz_kind", kind.to_string()));
            labels.push(("authz_name", name.to_string()));
        }
        family.get_or_create(&labels).inc();
    }

    /// Counts a connection opened.
    pub(crate) fn open(&self, direction: Direction, tls: bool) -> Open {
        let labels: Labels = vec![
            ("direction", direction.label()),
            (
                "peer",
                match direction {
                    Direction::Inbound => "src",
                    Direction::Outbound => "dst",
                },
            ),
            ("tls", if tls { "true" } else { "no_identity" }),
        ];
        self.open_total.get_or_create(&labels).inc();
        let open = self.open.get_or_create(&labels).clone();
        open.inc();
        Open {
            direction,
            close_total: self.close_total.get_or_create(&labels).clone(),
            open,
            read: self.read.get_or_create(&labels).clone(),
            write: self.write.get_or_create(&labels).clone(),
        }
    }

    /// Counts an HTTP request to `authority`.
    pub(crate) fn request(&self, direction: Direction, authority: &str, tls: bool) -> Request {
        self.routed_request(direction, authority, tls, None)
    }

    /// Counts an HTTP request to `authority`, matched by `route` when it was.
    pub(crate) fn routed_request(
        &self,
        direction: Direction,
        authority: &str,
        tls: bool,
        route: Option<&RouteName>,
    ) -> Request {
        let mut labels: HttpLabels = vec![
            ("direction", direction.label().to_string()),
            ("authority", authority.to_string()),
            ("tls", if tls { "true" } else { "no_identity" }.to_string()),
        ];
        if let Some(r) = route {
            labels.push(("route_kind", r.kind.to_string()));
            labels.push(("route_namespace", r.namespace.clone()));
            labels.push(("route_name", r.name.clone()));
        }
        self.requests.get_or_create(&labels).inc();
        Request {
            responses: self.responses.clone(),
            latency: self.latency.clone(),
            labels,
            started: std::time::Instant::now(),
        }
    }

    /// The Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_counts_its_bytes_from_the_peers_side() {
        let m = Metrics::new();
        let c = m.open(Direction::Outbound, true);
        let text = m.text();
        assert!(
            text.contains(r#"tcp_open_connections{direction="outbound",peer="dst",tls="true"} 1"#),
            "{text}"
        );
        c.close(10, 300);
        m.open(Direction::Inbound, false).close(7, 9);
        let text = m.text();
        for line in [
            r#"tcp_open_total{direction="outbound",peer="dst",tls="true"} 1"#,
            r#"tcp_close_total{direction="outbound",peer="dst",tls="true"} 1"#,
            r#"tcp_open_connections{direction="outbound",peer="dst",tls="true"} 0"#,
            r#"tcp_read_bytes_total{direction="outbound",peer="dst",tls="true"} 300"#,
            r#"tcp_write_bytes_total{direction="outbound",peer="dst",tls="true"} 10"#,
            r#"tcp_read_bytes_total{direction="inbound",peer="src",tls="no_identity"} 7"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn the_policys_answers_are_counted_by_server_and_authorization() {
        let m = Metrics::new();
        let server = ("server", "api-http");
        m.authorized(
            Authorized::Http,
            server,
            None,
            Some(("authorizationpolicy", "web")),
        );
        m.authorized(Authorized::Http, server, None, None);
        m.authorized(Authorized::Tcp, ("default", "deny"), None, None);
        m.authorized(
            Authorized::Http,
            server,
            Some(("HTTPRoute", "books")),
            Some(("authorizationpolicy", "readers")),
        );
        let text = m.text();
        for line in [
            r#"inbound_http_authz_allow_total{srv_kind="server",srv_name="api-http",authz_kind="authorizationpolicy",authz_name="web"} 1"#,
            r#"inbound_http_authz_deny_total{srv_kind="server",srv_name="api-http"} 1"#,
            r#"inbound_tcp_authz_deny_total{srv_kind="default",srv_name="deny"} 1"#,
            r#"inbound_http_authz_allow_total{srv_kind="server",srv_name="api-http",route_kind="httproute",route_name="books",authz_kind="authorizationpolicy",authz_name="readers"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn responses_are_classified_by_status_and_grpc_status() {
        let m = Metrics::new();
        m.request(Direction::Outbound, "web.demo:80", true)
            .respond(200, None, false);
        m.request(Direction::Outbound, "web.demo:80", true)
            .respond(503, None, false);
        m.request(Direction::Outbound, "web.demo:80", true)
            .respond(200, Some("14"), false);
        let route = RouteName {
            kind: "HTTPRoute",
            namespace: "demo".into(),
            name: "canary".into(),
            rule: 0,
        };
        m.routed_request(Direction::Outbound, "web.demo:80", true, Some(&route))
            .respond(200, None, false);
        let text = m.text();
        for line in [
            r#"request_total{direction="outbound",authority="web.demo:80",tls="true"} 3"#,
            r#"response_total{direction="outbound",authority="web.demo:80",tls="true",status_code="200",classification="success"} 1"#,
            r#"response_total{direction="outbound",authority="web.demo:80",tls="true",status_code="503",classification="failure"} 1"#,
            r#"response_total{direction="outbound",authority="web.demo:80",tls="true",status_code="200",classification="failure"} 1"#,
            r#"response_latency_ms_bucket{le="1.0",direction="outbound",authority="web.demo:80",tls="true",status_code="200",classification="success"} 1"#,
            r#"response_total{direction="outbound",authority="web.demo:80",tls="true",route_kind="HTTPRoute",route_namespace="demo",route_name="canary",status_code="200",classification="success"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
