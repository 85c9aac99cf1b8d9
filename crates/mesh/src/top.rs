//! `kubewire mesh top`: the meshed workloads' golden metrics, live, as `linkerd viz
//! stat` shows them: success rate, requests per second and latency percentiles per
//! Deployment (or pod), from what their proxies served inbound; or per route (GAMMA),
//! from what the client proxies sent through it.
//!
//! There is no Prometheus in between: each meshed pod's proxy is scraped on its admin
//! port through the API server's port-forward (as `linkerd diagnostics proxy-metrics`
//! does), twice an interval apart, and the rows are the differences, so it works the
//! same in the lab and in a cluster where its user may forward to pods.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;

/// Flags of `kubewire mesh top`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// The namespace to show.
    #[arg(
        short = 'n',
        long,
        default_value = "default",
        conflicts_with = "all_namespaces"
    )]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// What a row is: `deployment` (a pod's owner: Deployment, StatefulSet, DaemonSet,
    /// Job, else the pod), `pod`, or `route` (HTTPRoutes and GRPCRoutes with a Service
    /// parent, seen from the clients' proxies).
    #[arg(long, value_enum, default_value_t = By::Deployment)]
    pub by: By,
    /// The time between the two scrapes a table's rates come from (Go duration).
    #[arg(long, default_value = "2s", value_parser = k8s::parse_duration)]
    pub interval: Duration,
    /// Print this many tables, then exit (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u32,
    /// `table`, or `json` (one array of rows per table, a line each).
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Deployment,
    Pod,
    Route,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Why `mesh top` could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] k8s::Error),
    #[error("listing pods")]
    List(#[source] kube::Error),
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub namespace: String,
    /// `deploy/NAME`, `sts/NAME`, `ds/NAME`, `job/NAME`, `pod/NAME`, or a route's
    /// `httproute/NAME`, `grpcroute/NAME`.
    pub name: String,
    /// Meshed pods of all the running ones (not for routes).
    pub meshed: Option<(usize, usize)>,
    /// Successful responses of all (none without requests).
    pub success: Option<f64>,
    pub rps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Open inbound connections (not for routes).
    pub tcp_conn: Option<u64>,
}

/// Runs `mesh top` until its count of tables, or until interrupted.
pub async fn run(args: Args) -> Result<(), Error> {
    let client = args.client.client().await?;
    let pods: Api<Pod> = if args.all_namespaces {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), &args.namespace)
    };
    let mut before: HashMap<(String, String), (Instant, Counts)> = HashMap::new();
    let mut printed = 0;
    let mut first = true;
    loop {
        let listed = pods
            .list(&ListParams::default())
            .await
            .map_err(Error::List)?;
        let running: Vec<Pod> = listed
            .items
            .into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
            .collect();
        let scrapes = join_all(running.iter().filter(|p| meshed(p)).map(|p| {
            let client = client.clone();
            async move {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let name = p.metadata.name.clone().unwrap_or_default();
                let text =
                    tokio::time::timeout(Duration::from_secs(10), scrape(client, &ns, &name))
                        .await
                        .unwrap_or_else(|_| Err("no answer within 10s".into()));
                ((ns, name), text)
            }
        }))
        .await;
        let now = Instant::now();
        let mut rates: HashMap<(String, String), (Duration, Counts)> = HashMap::new();
        for (pod, text) in scrapes {
            let counts = match text.and_then(|t| Counts::read(&t)) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(namespace = %pod.0, pod = %pod.1, error = %e, "not scraped");
                    continue;
                }
            };
            if let Some((then, old)) = before.get(&pod) {
                rates.insert(pod.clone(), (now - *then, counts.since(old)));
            }
            before.insert(pod, (now, counts));
        }
        before.retain(|_, (at, _)| *at == now);
        if !first {
            let rows = match args.by {
                By::Route => route_rows(&rates),
                by => workload_rows(&running, &rates, by == By::Pod),
            };
            show(&rows, &args);
            printed += 1;
            if args.count > 0 && printed >= args.count {
                return Ok(());
            }
        }
        first = false;
        tokio::time::sleep(args.interval).await;
    }
}

/// Whether the pod has the proxy.
fn meshed(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    let named = |cs: Option<&Vec<k8s_openapi::api::core::v1::Container>>| {
        cs.is_some_and(|cs| cs.iter().any(|c| c.name == cni::capture::PROXY_CONTAINER))
    };
    named(spec.and_then(|s| s.init_containers.as_ref())) || named(spec.map(|s| &s.containers))
}

/// The proxy's metrics, through the API server's port-forward to its admin port.
async fn scrape(client: kube::Client, namespace: &str, pod: &str) -> Result<String, String> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let port = cni::capture::ADMIN_PORT;
    let mut forward = api
        .portforward(pod, &[port])
        .await
        .map_err(|e| format!("port-forward: {e}"))?;
    let stream = forward
        .take_stream(port)
        .ok_or("port-forward gave no stream")?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let req = Request::get("/metrics")
        .header(http::header::HOST, "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let answer = async {
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("/metrics answered {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        String::from_utf8(body.to_bytes().to_vec()).map_err(|e| e.to_string())
    }
    .await;
    conn.abort();
    forward.abort();
    answer
}

/// What one proxy counted since it started.
#[derive(Debug, Clone, Default, PartialEq)]
struct Counts {
    /// Inbound: what the pod served.
    inbound: Http,
    /// Outbound, by route (kind, namespace, name).
    routes: BTreeMap<(String, String, String), Http>,
    /// Inbound connections open now (a gauge).
    tcp_open: u64,
}

/// HTTP responses: how many, how many succeeded, and the latency histogram.
#[derive(Debug, Clone, Default, PartialEq)]
struct Http {
    total: f64,
    success: f64,
    /// Cumulative counts by upper bound, in milliseconds (the bound's bits: positive
    /// floats order as their bits do, +Inf last).
    buckets: BTreeMap<u64, f64>,
}

impl Http {
    fn since(&self, old: &Http) -> Http {
        // A smaller count: the proxy restarted, all it has is new.
        if self.total < old.total {
            return self.clone();
        }
        Http {
            total: self.total - old.total,
            success: self.success - old.success,
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| (*le, n - old.buckets.get(le).copied().unwrap_or(0.0)))
                .collect(),
        }
    }

    /// The `q` quantile (0-1) of the latency, interpolated within its bucket as
    /// Prometheus' `histogram_quantile` does; the highest finite bound when it falls in
    /// the last.
    fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.buckets.values().copied().fold(0.0, f64::max);
        if count <= 0.0 {
            return None;
        }
        let rank = q * count;
        let mut lower = (0.0, 0.0);
        for (bits, n) in &self.buckets {
            let le = f64::from_bits(*bits);
            if *n >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let width = n - lower.1;
                let within = if width > 0.0 {
                    (rank - lower.1) / width
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * within);
            }
            lower = (le, *n);
        }
        Some(lower.0)
    }
}

impl Counts {
    /// The counts in a proxy's Prometheus text.
    fn read(text: &str) -> Result<Counts, String> {
        let mut counts = Counts::default();
        for sample in parse(text)? {
            let label = |k: &str| {
                sample
                    .labels
                    .iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.as_str())
            };
            let http = match label("direction") {
                Some("inbound") if label("route_name").is_none() => &mut counts.inbound,
                Some("outbound") => match (
                    label("route_kind"),
                    label("route_namespace"),
                    label("route_name"),
                ) {
                    (Some(k), Some(ns), Some(n)) => counts
                        .routes
                        .entry((k.to_string(), ns.to_string(), n.to_string()))
                        .or_default(),
                    _ => continue,
                },
                _ => continue,
            };
            match sample.name.as_str() {
                "response_total" => {
                    http.total += sample.value;
                    if label("classification") == Some("success") {
                        http.success += sample.value;
                    }
                }
                "response_latency_ms_bucket" => {
                    let le = label("le").ok_or("a bucket without `le`")?;
                    let le = if le == "+Inf" {
                        f64::INFINITY
                    } else {
                        le.parse::<f64>()
                            .map_err(|_| format!("a bucket's bound {le:?}"))?
                    };
                    *http.buckets.entry(le.to_bits()).or_default() += sample.value;
                }
                "tcp_open_connections" if label("direction") == Some("inbound") => {
                    counts.tcp_open += sample.value as u64;
                }
                _ => {}
            }
        }
        Ok(counts)
    }

    fn since(&self, old: &Counts) -> Counts {
        Counts {
            inbound: self.inbound.since(&old.inbound),
            routes: self
                .routes
                .iter()
                .map(|(k, h)| {
                    (
                        k.clone(),
                        old.routes.get(k).map_or(h.clone(), |o| h.since(o)),
                    )
                })
                .collect(),
            tcp_open: self.tcp_open,
        }
    }
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The samples of a Prometheus (or OpenMetrics) text exposition; comments skipped.
fn parse(text: &str) -> Result<Vec<Sample>, String> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| format!("metrics line {}: {why}: {line:?}", n + 1);
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .ok_or_else(|| bad("no value"))?;
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices().peekable();
            let mut end = None;
            loop {
                while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                    chars.next();
                }
                match chars.peek() {
                    Some((i, '}')) => {
                        end = Some(*i);
                        break;
                    }
                    None => break,
                    _ => {}
                }
                let key: String = chars
                    .by_ref()
                    .take_while(|(_, c)| *c != '=')
                    .map(|(_, c)| c)
                    .collect();
                if chars.next().map(|(_, c)| c) != Some('"') {
                    return Err(bad("a label value without quotes"));
                }
                let mut value = String::new();
                let mut closed = false;
                while let Some((_, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed = true;
                            break;
                        }
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some(c) => value.push(c),
                            None => break,
                        },
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(bad("an unterminated label value"));
                }
                labels.push((key.trim().to_string(), value));
            }
            let end = end.ok_or_else(|| bad("unterminated labels"))?;
            rest = &inner[end + 1..];
        }
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| bad("no value"))?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("a value that is not a number"))?,
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

/// The workload a pod belongs to: its owner, a ReplicaSet's Deployment.
fn workload(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(owner) = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
    else {
        return format!("pod/{name}");
    };
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match owner.kind.as_str() {
        "ReplicaSet" => match hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            Some(deployment) => format!("deploy/{deployment}"),
            None => format!("rs/{}", owner.name),
        },
        "StatefulSet" => format!("sts/{}", owner.name),
        "DaemonSet" => format!("ds/{}", owner.name),
        "Job" => format!("job/{}", owner.name),
        kind => format!("{}/{}", kind.to_lowercase(), owner.name),
    }
}

/// Rows by workload (or pod): the pods' inbound requests summed.
fn workload_rows(
    running: &[Pod],
    rates: &HashMap<(String, String), (Duration, Counts)>,
    by_pod: bool,
) -> Vec<Row> {
    struct Acc {
        meshed: usize,
        pods: usize,
        http: Http,
        seconds: f64,
        tcp: u64,
        scraped: bool,
    }
    let mut rows: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for pod in running {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let key = if by_pod {
            format!("pod/{name}")
        } else {
            workload(pod)
        };
        let acc = rows.entry((ns.clone(), key)).or_insert(Acc {
            meshed: 0,
            pods: 0,
            http: Http::default(),
            seconds: 0.0,
            tcp: 0,
            scraped: false,
        });
        acc.pods += 1;
        if meshed(pod) {
            acc.meshed += 1;
        }
        if let Some((elapsed, counts)) = rates.get(&(ns, name)) {
            add(&mut acc.http, &counts.inbound);
            // Rates over the longest of the pods' intervals (their scrapes are
            // concurrent: all about the same).
            acc.seconds = acc.seconds.max(elapsed.as_secs_f64());
            acc.tcp += counts.tcp_open;
            acc.scraped = true;
        }
    }
    rows.into_iter()
        .filter(|(_, acc)| acc.meshed > 0)
        .map(|((namespace, name), acc)| {
            let mut row = row(namespace, name, &acc.http, acc.seconds);
            row.meshed = Some((acc.meshed, acc.pods));
            row.tcp_conn = acc.scraped.then_some(acc.tcp);
            row
        })
        .collect()
}

/// Rows by route: every client proxy's requests through it summed.
fn route_rows(rates: &HashMap<(String, String), (Duration, Counts)>) -> Vec<Row> {
    let mut routes: BTreeMap<(String, String, String), (Http, f64)> = BTreeMap::new();
    for (elapsed, counts) in rates.values() {
        for (key, http) in &counts.routes {
            let acc = routes.entry(key.clone()).or_default();
            add(&mut acc.0, http);
            acc.1 = acc.1.max(elapsed.as_secs_f64());
        }
    }
    routes
        .into_iter()
        .map(|((kind, namespace, name), (http, seconds))| {
            row(
                namespace,
                format!("{}/{name}", kind.to_lowercase()),
                &http,
                seconds,
            )
        })
        .collect()
}

fn add(into: &mut Http, http: &Http) {
    into.total += http.total;
    into.success += http.success;
    for (le, n) in &http.buckets {
        *into.buckets.entry(*le).or_default() += n;
    }
}

fn row(namespace: String, name: String, http: &Http, seconds: f64) -> Row {
    Row {
        namespace,
        name,
        meshed: None,
        success: (http.total > 0.0).then(|| http.success / http.total),
        rps: if seconds > 0.0 {
            http.total / seconds
        } else {
            0.0
        },
        latency_p50_ms: http.quantile(0.5),
        latency_p95_ms: http.quantile(0.95),
        latency_p99_ms: http.quantile(0.99),
        tcp_conn: None,
    }
}

fn show(rows: &[Row], args: &Args) {
    if args.output == Output::Json {
        println!("{}", serde_json::to_string(rows).unwrap_or_default());
        return;
    }
    // On a terminal each table replaces the last, as top does.
    if std::io::stdout().is_terminal() && args.count != 1 {
        print!("\x1b[H\x1b[2J");
    }
    print!("{}", table(rows, args.by));
}

/// The rows as `linkerd viz stat` prints them.
fn table(rows: &[Row], by: By) -> String {
    let ms = |v: Option<f64>| match v {
        Some(v) if v >= 10.0 => format!("{v:.0}ms"),
        Some(v) => format!("{v:.1}ms"),
        None => "-".into(),
    };
    let name = if by == By::Route { "ROUTE" } else { "NAME" };
    let mut lines = vec![[
        "NAMESPACE".to_string(),
        name.into(),
        "MESHED".into(),
        "SUCCESS".into(),
        "RPS".into(),
        "LATENCY_P50".into(),
        "LATENCY_P95".into(),
        "LATENCY_P99".into(),
        "TCP_CONN".into(),
    ]];
    for r in rows {
        lines.push([
            r.namespace.clone(),
            r.name.clone(),
            r.meshed.map_or("-".into(), |(m, of)| format!("{m}/{of}")),
            r.success
                .map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
            format!("{:.1}", r.rps),
            ms(r.latency_p50_ms),
            ms(r.latency_p95_ms),
            ms(r.latency_p99_ms),
            r.tcp_conn.map_or("-".into(), |c| c.to_string()),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP response Total HTTP responses.
# TYPE response counter
response_total{direction="inbound",authority="web.demo:80",tls="true",status_code="200",classification="success"} 90
response_total{direction="inbound",authority="web.demo:80",tls="true",status_code="500",classification="failure"} 10
response_total{direction="outbound",authority="echo:80",tls="true",route_kind="HTTPRoute",route_namespace="demo",route_name="echo",status_code="200",classification="success"} 4
response_total{direction="outbound",authority="other:80",tls="true",status_code="200",classification="success"} 7
response_latency_ms_bucket{le="1.0",direction="inbound",authority="web.demo:80",tls="true",status_code="200",classification="success"} 50
response_latency_ms_bucket{le="2.0",direction="inbound",authority="web.demo:80",tls="true",status_code="200",classification="success"} 90
response_latency_ms_bucket{le="+Inf",direction="inbound",authority="web.demo:80",tls="true",status_code="200",classification="success"} 90
response_latency_ms_bucket{le="1.0",direction="inbound",authority="web.demo:80",tls="true",status_code="500",classification="failure"} 0
response_latency_ms_bucket{le="2.0",direction="inbound",authority="web.demo:80",tls="true",status_code="500",classification="failure"} 0
response_latency_ms_bucket{le="+Inf",direction="inbound",authority="web.demo:80",tls="true",status_code="500",classification="failure"} 10
tcp_open_connections{direction="inbound",peer="src",tls="true"} 2
tcp_open_connections{direction="outbound",peer="dst",tls="true"} 5
# EOF
"#;

    #[test]
    fn reads_a_proxys_counts() {
        let c = Counts::read(TEXT).unwrap();
        assert_eq!((c.inbound.total, c.inbound.success), (100.0, 90.0));
        assert_eq!(c.tcp_open, 2);
        let route = &c.routes[&("HTTPRoute".into(), "demo".into(), "echo".into())];
        assert_eq!(route.total, 4.0);
        assert_eq!(c.routes.len(), 1, "unrouted requests have no route row");
        // 50 under 1 ms, 40 more under 2 ms, 10 beyond the last bound.
        assert_eq!(c.inbound.quantile(0.5), Some(1.0));
        assert_eq!(c.inbound.quantile(0.7), Some(1.5));
        assert_eq!(c.inbound.quantile(0.99), Some(2.0));
    }

    #[test]
    fn rates_are_differences_and_a_restart_starts_over() {
        let old = Counts::read(TEXT).unwrap();
        let newer = TEXT.replace("} 90\n", "} 190\n");
        let new = Counts::read(&newer).unwrap();
        let d = new.since(&old);
        assert_eq!((d.inbound.total, d.inbound.success), (100.0, 100.0));
        let restarted = Counts::read(&TEXT.replace("} 90\n", "} 1\n")).unwrap();
        assert_eq!(restarted.since(&old).inbound.total, restarted.inbound.total);
        let r = row("demo".into(), "deploy/web".into(), &d.inbound, 2.0);
        assert_eq!((r.rps, r.success), (50.0, Some(1.0)));
    }

    #[test]
    fn parses_labels_with_escapes_and_refuses_garbage() {
        let s = parse("a{x=\"q\\\"uo,te\",y=\"b\\\\\"} 1.5\nb 2 1700000000\n").unwrap();
        assert_eq!(
            s[0].labels,
            [("x".into(), "q\"uo,te".into()), ("y".into(), "b\\".into())]
        );
        assert_eq!((s[0].value, s[1].value), (1.5, 2.0));
        for bad in [
            "a{x=\"1\" 2",
            "a{x=1} 2",
            "a{x=\"1\"}",
            "a{x=\"1\"} z",
            "novalue",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("line 1"), "{bad}: {e}");
        }
    }

    #[test]
    fn pods_belong_to_their_owners() {
        let pod = |owner: serde_json::Value, hash: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "p", "labels": {"pod-template-hash": hash},
                             "ownerReferences": owner}
            }))
            .unwrap()
        };
        let rs = serde_json::json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "web-5d9c8", "uid": "u", "controller": true}]);
        assert_eq!(workload(&pod(rs.clone(), "5d9c8")), "deploy/web");
        assert_eq!(workload(&pod(rs, "other")), "rs/web-5d9c8");
        let sts = serde_json::json!([{"apiVersion": "apps/v1", "kind": "StatefulSet",
            "name": "db", "uid": "u", "controller": true}]);
        assert_eq!(workload(&pod(sts, "")), "sts/db");
        assert_eq!(workload(&pod(serde_json::json!([]), "")), "pod/p");
    }

    #[test]
    fn the_table_lines_up() {
        let rows = [Row {
            namespace: "demo".into(),
            name: "deploy/web".into(),
            meshed: Some((2, 2)),
            success: Some(0.9),
            rps: 12.34,
            latency_p50_ms: Some(0.8),
            latency_p95_ms: Some(12.0),
            latency_p99_ms: None,
            tcp_conn: Some(3),
        }];
        let t = table(&rows, By::Deployment);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("NAMESPACE   NAME         MESHED   SUCCESS"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("demo        deploy/web   2/2      90.00%    12.3"),
            "{t}"
        );
        assert!(
            lines[1].ends_with("0.8ms         12ms          -             3"),
            "{t}"
        );
    }
}
