//! Prometheus metrics under Envoy's names (the family Emissary's and Envoy Gateway's
//! dashboards query), plus per-route series under `gateway_route_*`.
//!
//! | series | labels |
//! |---|---|
//! | `envoy_cluster_upstream_rq_total` | `envoy_cluster_name`, `envoy_response_code_class` |
//! | `envoy_cluster_upstream_rq_time` (ms histogram) | `envoy_cluster_name` |
//! | `envoy_cluster_upstream_cx_active` | `envoy_cluster_name` |
//! | `envoy_cluster_upstream_rq_pending_overflow_total` | `envoy_cluster_name` |
//! | `envoy_cluster_upstream_rq_retry_total` | `envoy_cluster_name` |
//! | `envoy_http_downstream_rq_total` | `envoy_http_conn_manager_prefix`, `envoy_response_code_class` |
//! | `envoy_http_downstream_rq_time` (ms histogram) | `envoy_http_conn_manager_prefix` |
//! | `envoy_http_downstream_cx_active` | `envoy_http_conn_manager_prefix` |
//! | `gateway_route_rq_total` | `route`, `envoy_response_code_class` |
//! | `gateway_route_rq_time` (ms histogram) | `route` |
//!
//! `envoy_cluster_name` is `namespace/service:port`; `envoy_http_conn_manager_prefix` is
//! `port_<port>`; `route` is `kind/namespace/name/rule`. prometheus-client writes counters
//! with the OpenMetrics `_total` suffix, so Envoy's `upstream_rq_total` keeps its name,
//! and the 1xx..5xx class is a label of it (Envoy's `upstream_rq_xx` series folded in).

use std::time::Duration;

use http::StatusCode;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Envoy's default histogram buckets, in milliseconds.
fn buckets() -> Histogram {
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

/// Every metric the data plane keeps.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    cluster_rq: Family<Labels, Counter>,
    cluster_rq_time: Family<Labels, Histogram>,
    cluster_cx_active: Family<Labels, Gauge>,
    cluster_overflow: Family<Labels, Counter>,
    cluster_retry: Family<Labels, Counter>,
    downstream_rq: Family<Labels, Counter>,
    downstream_rq_time: Family<Labels, Histogram>,
    downstream_cx_active: Family<Labels, Gauge>,
    route_rq: Family<Labels, Counter>,
    route_rq_time: Family<Labels, Histogram>,
}

/// Handles to the series of one route, backend or listener, made once when the
/// configuration is compiled, so that a request only increments (no label hashing).
#[derive(Clone, Debug)]
pub(crate) struct Series {
    /// By status class, 1xx to 5xx.
    requests: [Counter; 5],
    time: Histogram,
}

impl Series {
    fn new(
        requests: &Family<Labels, Counter>,
        time: &Family<Labels, Histogram>,
        labels: Labels,
    ) -> Self {
        Series {
            time: time.get_or_create(&labels).clone(),
            requests: std::array::from_fn(|i| {
                let mut l = labels.clone();
                l.push(("envoy_response_code_class", (i + 1).to_string()));
                requests.get_or_create(&l).clone()
            }),
        }
    }

    /// One answered request.
    pub(crate) fn observe(&self, code: StatusCode, took: Duration) {
        let class = usize::from(code.as_u16() / 100).clamp(1, 5);
        self.requests[class - 1].inc();
        self.time.observe(took.as_secs_f64() * 1000.0);
    }
}

/// A backend's series.
#[derive(Clone, Debug)]
pub(crate) struct BackendSeries {
    pub requests: Series,
    pub overflow: Counter,
    pub retry: Counter,
}

fn cluster(name: &str) -> Labels {
    vec![("envoy_cluster_name", name.to_owned())]
}

fn listener(port: u16) -> Labels {
    vec![("envoy_http_conn_manager_prefix", format!("port_{port}"))]
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let histogram =
            || Family::<Labels, Histogram>::new_with_constructor(buckets as fn() -> Histogram);
        let m = Self {
            cluster_rq: Family::default(),
            cluster_rq_time: histogram(),
            cluster_cx_active: Family::default(),
            cluster_overflow: Family::default(),
            cluster_retry: Family::default(),
            downstream_rq: Family::default(),
            downstream_rq_time: histogram(),
            downstream_cx_active: Family::default(),
            route_rq: Family::default(),
            route_rq_time: histogram(),
            registry: Registry::default(),
        };
        registry.register(
            "envoy_cluster_upstream_rq",
            "Requests to a backend, by status class",
            m.cluster_rq.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_time",
            "Request time at a backend, ms",
            m.cluster_rq_time.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_cx_active",
            "Open connections to a backend",
            m.cluster_cx_active.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_pending_overflow",
            "Requests refused by a backend's circuit breakers",
            m.cluster_overflow.clone(),
        );
        registry.register(
            "envoy_cluster_upstream_rq_retry",
            "Retries to a backend",
            m.cluster_retry.clone(),
        );
        registry.register(
            "envoy_http_downstream_rq",
            "Requests on a listener, by status class",
            m.downstream_rq.clone(),
        );
        registry.register(
            "envoy_http_downstream_rq_time",
            "Request time on a listener, ms",
            m.downstream_rq_time.clone(),
        );
        registry.register(
            "envoy_http_downstream_cx_active",
            "Open client connections on a listener",
            m.downstream_cx_active.clone(),
        );
        registry.register(
            "gateway_route_rq",
            "Requests a route answered, by status class",
            m.route_rq.clone(),
        );
        registry.register(
            "gateway_route_rq_time",
            "Request time of a route, ms",
            m.route_rq_time.clone(),
        );
        Self { registry, ..m }
    }

    /// The series of a route (`kind/namespace/name/rule`).
    pub(crate) fn route(&self, route: &str) -> Series {
        Series::new(
            &self.route_rq,
            &self.route_rq_time,
            vec![("route", route.to_owned())],
        )
    }

    /// The series of a backend (`namespace/service:port`).
    pub(crate) fn backend(&self, backend: &str) -> BackendSeries {
        BackendSeries {
            requests: Series::new(&self.cluster_rq, &self.cluster_rq_time, cluster(backend)),
            overflow: self
                .cluster_overflow
                .get_or_create(&cluster(backend))
                .clone(),
            retry: self.cluster_retry.get_or_create(&cluster(backend)).clone(),
        }
    }

    /// The series of a listener.
    pub(crate) fn listener(&self, port: u16) -> Series {
        Series::new(
            &self.downstream_rq,
            &self.downstream_rq_time,
            listener(port),
        )
    }

    /// The gauge of client connections open on `port`.
    pub(crate) fn downstream_connections(&self, port: u16) -> Gauge {
        self.downstream_cx_active
            .get_or_create(&listener(port))
            .clone()
    }

    /// The text exposition, with backend connection gauges as they are now.
    pub(crate) fn encode(&self, backends: &[(String, usize)]) -> String {
        self.cluster_cx_active.clear();
        for (name, n) in backends {
            self.cluster_cx_active
                .get_or_create(&cluster(name))
                .set(*n as i64);
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
