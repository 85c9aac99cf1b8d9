//! Benchmark of the embedded API server, run by `bench/apiserver.sh`, with peers side by
//! side in the same run: the disk's fsync rate (the floor under durable writes) and,
//! when given, an etcd server (the storage kube-apiserver uses) driven through its
//! JSON gateway with the same objects.
//!
//! Measures, in process through the router (no TLS, no sockets on the server side):
//! durable creates/s, listing 10,000 pods, watch delivery latency with 100 watchers at
//! 1,000 writes/s, and resident memory at 10,000 and 100,000 objects.
//!
//! `cargo run --release -p apiserver --example apiserver_bench -- --dir DIR
//!  [--etcd http://127.0.0.1:23790 --etcd-pid PID] [--objects 100000]`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const CONCURRENCY: usize = 64;
const WATCHERS: usize = 100;
const WATCH_RATE: u64 = 1000;
const WATCH_SECONDS: u64 = 5;

fn pod(i: usize, ts: Option<u128>) -> Value {
    let mut p = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("p-{i}"), "labels": {"app": "bench", "tier": "web"}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx:1.27",
            "ports": [{"containerPort": 80}], "env": [{"name": "MODE", "value": "bench"}]}]}});
    if let Some(ts) = ts {
        p["metadata"]["annotations"] = json!({"ts": ts.to_string()});
    }
    p
}

fn rss_mib(pid: &str) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// fsyncs per second on the data directory's disk: each one a small append + fdatasync,
/// as a commit does at least once; and the single fsyncs' p50 / p99 / max in ms (the
/// disk's tail bounds the tail of every durable write).
fn fsync_rate(dir: &std::path::Path) -> (f64, f64, f64, f64) {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    let mut lat = Vec::new();
    while start.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        f.write_all(&[0u8; 512]).unwrap();
        f.sync_data().unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_file(&path);
    let rate = lat.len() as f64 / start.elapsed().as_secs_f64();
    (
        rate,
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut lat, 1.0),
    )
}

async fn call(r: &apiserver::Router, method: &str, uri: &str, body: Vec<u8>) -> (u16, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = r.handle(req).await;
    let code = resp.status().as_u16();
    (code, resp.into_body().collect().await.unwrap().to_bytes())
}

/// A client that writes the bench's objects, one of CONCURRENCY.
trait Writer: Send + 'static {
    /// Writes object `i`; returns once it is acknowledged.
    fn write(&mut self, i: usize) -> impl Future<Output = ()> + Send;
}

/// How writes are paced: write i is due at i / WATCH_RATE s, and `acks[i]` notes when it
/// was acknowledged (ns since `epoch`).
struct Paced<'a> {
    epoch: Instant,
    acks: &'a Arc<Vec<AtomicU64>>,
}

/// Writes objects `from..to`, one task per writer, each taking the next index; at once,
/// or paced. Returns the writes/s achieved.
async fn write_all<W: Writer>(
    writers: Vec<W>,
    from: usize,
    to: usize,
    paced: Option<Paced<'_>>,
) -> f64 {
    let next = Arc::new(AtomicU64::new(from as u64));
    let start = tokio::time::Instant::now();
    let paced = paced.map(|p| (p.epoch, p.acks.clone()));
    let tasks: Vec<_> = writers
        .into_iter()
        .map(|mut w| {
            let next = next.clone();
            let paced = paced.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i as usize >= to {
                        return;
                    }
                    if paced.is_some() {
                        let due = Duration::from_micros(i * 1_000_000 / WATCH_RATE);
                        tokio::time::sleep_until(start + due).await;
                    }
                    w.write(i as usize).await;
                    if let Some((epoch, acks)) = &paced {
                        acks[i as usize].store(now_ns(*epoch) as u64, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (to - from) as f64 / start.elapsed().as_secs_f64()
}

/// Creates `object(i)` at `uri` through the router.
struct RouterCreate<F> {
    r: apiserver::Router,
    uri: String,
    object: F,
}

impl<F: Fn(usize) -> Value + Send + 'static> Writer for RouterCreate<F> {
    async fn write(&mut self, i: usize) {
        let body = (self.object)(i).to_string().into_bytes();
        let (code, body) = call(&self.r, "POST", &self.uri, body).await;
        assert_eq!(code, 201, "{}", String::from_utf8_lossy(&body));
    }
}

/// Creates objects `from..to` (`object(i)`) at `uri` with CONCURRENCY clients; returns
/// objects/s.
async fn create_all(
    r: &apiserver::Router,
    uri: &str,
    from: usize,
    to: usize,
    object: impl Fn(usize) -> Value + Clone + Send + 'static,
) -> f64 {
    let writers = (0..CONCURRENCY)
        .map(|_| RouterCreate {
            r: r.clone(),
            uri: uri.to_string(),
            object: object.clone(),
        })
        .collect();
    write_all(writers, from, to, None).await
}

/// Creates pods `from..to` in `ns`; returns objects/s.
async fn create_pods(r: &apiserver::Router, ns: &str, from: usize, to: usize) -> f64 {
    let uri = format!("/api/v1/namespaces/{ns}/pods");
    create_all(r, &uri, from, to, |i| pod(i, None)).await
}

fn service(i: usize, node_port: bool) -> Value {
    let mut spec =
        json!({"selector": {"app": format!("s-{i}")}, "ports": [{"port": 80, "targetPort": 8080}]});
    if node_port {
        spec["type"] = json!("NodePort");
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("s-{i}")}, "spec": spec})
}

/// Creates Services `from..to` in `ns` (NodePort ones when asked); returns objects/s.
async fn create_services(
    r: &apiserver::Router,
    ns: &str,
    from: usize,
    to: usize,
    node_port: bool,
) -> f64 {
    let uri = format!("/api/v1/namespaces/{ns}/services");
    create_all(r, &uri, from, to, move |i| service(i, node_port)).await
}

/// The number right after `key` in a serialized event, found without parsing the whole
/// JSON (the bench's 100 watchers must not be slower than the server they measure).
fn number_after<T: std::str::FromStr>(line: &[u8], key: &[u8]) -> Option<T> {
    let at = line.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = line[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The `ts` annotation in a serialized event.
fn find_ts(line: &[u8]) -> Option<u128> {
    number_after(line, b"\"ts\":\"")
}

/// The index `i` of pod `p-i` in a serialized event.
fn find_idx(line: &[u8]) -> Option<usize> {
    number_after(line, b"\"name\":\"p-")
}

/// Delivery latencies, ms: from the write's start (durability included) and from its
/// acknowledgement (the response reaching the writer; 0 when the event came first).
struct WatchFigures {
    from_write: (f64, f64),
    from_ack: (f64, f64),
    /// The write itself: its start to its acknowledgement (durable commit included).
    ack: (f64, f64),
    rate: f64,
}

fn figures(samples: Vec<(usize, u128, u128)>, acks: &[AtomicU64], rate: f64) -> WatchFigures {
    let mut w: Vec<f64> = samples
        .iter()
        .map(|(_, ts, t)| (t - ts) as f64 / 1e6)
        .collect();
    let mut a: Vec<f64> = samples
        .iter()
        .map(|(i, _, t)| {
            let ack = acks[*i].load(Ordering::Relaxed) as u128;
            t.saturating_sub(ack) as f64 / 1e6
        })
        .collect();
    let mut k: Vec<f64> = samples
        .iter()
        .map(|(i, ts, _)| {
            let ack = acks[*i].load(Ordering::Relaxed) as u128;
            ack.saturating_sub(*ts) as f64 / 1e6
        })
        .collect();
    WatchFigures {
        from_write: (pct(&mut w, 0.5), pct(&mut w, 0.99)),
        from_ack: (pct(&mut a, 0.5), pct(&mut a, 0.99)),
        ack: (pct(&mut k, 0.5), pct(&mut k, 0.99)),
        rate,
    }
}

fn now_ns(epoch: Instant) -> u128 {
    epoch.elapsed().as_nanos()
}

/// The (pod index, write start) of a serialized pod event, if it is one of the bench's.
fn sample(event: &[u8]) -> Option<(usize, u128)> {
    Some((find_idx(event)?, find_ts(event)?))
}

/// Reads a watch until it has seen `total` pods: the (pod index, write start) pairs
/// that `samples_in` finds in each line, with the time the line arrived.
async fn read_watch<B>(
    mut body: B,
    total: usize,
    epoch: Instant,
    mut samples_in: impl FnMut(&[u8]) -> Vec<(usize, u128)>,
) -> Vec<(usize, u128, u128)>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buf = Vec::new();
    let mut mine = Vec::with_capacity(total);
    while mine.len() < total {
        let Some(Ok(frame)) = body.frame().await else {
            break;
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let t = now_ns(epoch);
        buf.extend_from_slice(&data);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            mine.extend(samples_in(&line).into_iter().map(|(i, ts)| (i, ts, t)));
        }
    }
    mine
}

/// 100 watchers, writes paced at WATCH_RATE/s for WATCH_SECONDS: (p50 ms, p99 ms, writes/s).
async fn watch_latency(r: &apiserver::Router) -> WatchFigures {
    let (_, ns) = call(
        r,
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": "watch"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    let rv = serde_json::from_slice::<Value>(&ns).unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let epoch = Instant::now();
    let samples = Arc::new(std::sync::Mutex::new(Vec::<(usize, u128, u128)>::new()));
    let total = (WATCH_RATE * WATCH_SECONDS) as usize;
    let acks: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let req = http::Request::builder()
            .uri(format!(
                "/api/v1/namespaces/watch/pods?watch=true&resourceVersion={rv}&timeoutSeconds=60"
            ))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = r.handle(req).await.into_body();
        let samples = samples.clone();
        watchers.push(tokio::spawn(async move {
            let mine = read_watch(body, total, epoch, |line| {
                sample(line).into_iter().collect()
            })
            .await;
            samples.lock().unwrap().extend(mine);
        }));
    }
    let writers = (0..CONCURRENCY)
        .map(|_| RouterCreate {
            r: r.clone(),
            uri: "/api/v1/namespaces/watch/pods".to_string(),
            object: move |i| pod(i, Some(now_ns(epoch))),
        })
        .collect();
    let paced = Paced { epoch, acks: &acks };
    let rate = write_all(writers, 0, total, Some(paced)).await;
    for w in watchers {
        let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
    }
    let s = std::mem::take(&mut *samples.lock().unwrap());
    // Where the tail is: each second's p99 from write start to delivery.
    let mut per_second = vec![Vec::new(); WATCH_SECONDS as usize + 1];
    for (i, ts, t) in &s {
        let sec = (*i as u64 / WATCH_RATE) as usize;
        per_second[sec.min(WATCH_SECONDS as usize)].push((t - ts) as f64 / 1e6);
    }
    let p99s: Vec<String> = per_second
        .iter_mut()
        .filter(|v| !v.is_empty())
        .map(|v| format!("{:.1}", pct(v, 0.99)))
        .collect();
    let mut steady: Vec<f64> = per_second.iter().skip(1).flatten().copied().collect();
    println!(
        "p99 ms per second of writes: {}; p99 after the first second: {:.2}",
        p99s.join(" "),
        pct(&mut steady, 0.99)
    );
    figures(s, &acks, rate)
}

/// etcd through its JSON gateway (`/v3/kv/put`, `/v3/kv/range`, `/v3/watch`).
mod etcd {
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hyper_util::rt::TokioIo;

    pub(super) struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

    pub(super) async fn connect(addr: &str) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(send)
    }

    pub(super) fn b64(data: &[u8]) -> String {
        STANDARD.encode(data)
    }

    pub(super) fn unb64(s: &str) -> Vec<u8> {
        STANDARD.decode(s).unwrap_or_default()
    }

    impl Conn {
        pub(super) async fn post(
            &mut self,
            addr: &str,
            path: &str,
            body: &Value,
        ) -> hyper::body::Incoming {
            let req = http::Request::post(path)
                .header("host", addr)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
            self.0.send_request(req).await.unwrap().into_body()
        }
    }

    /// Puts `value(i)` at `PREFIXp-i` with `/v3/kv/put`.
    struct EtcdPut<F> {
        conn: Conn,
        addr: String,
        prefix: String,
        value: F,
    }

    impl<F: Fn(usize) -> Value + Send + 'static> Writer for EtcdPut<F> {
        async fn write(&mut self, i: usize) {
            let key = format!("{}p-{i}", self.prefix);
            let val = (self.value)(i).to_string();
            let body = json!({"key": b64(key.as_bytes()), "value": b64(val.as_bytes())});
            let _ = self
                .conn
                .post(&self.addr, "/v3/kv/put", &body)
                .await
                .collect()
                .await
                .unwrap();
        }
    }

    /// CONCURRENCY connections putting `value(i)` under `prefix`.
    async fn writers<F>(addr: &str, prefix: &str, value: F) -> Vec<EtcdPut<F>>
    where
        F: Fn(usize) -> Value + Clone + Send + 'static,
    {
        let mut writers = Vec::new();
        for _ in 0..CONCURRENCY {
            writers.push(EtcdPut {
                conn: connect(addr).await,
                addr: addr.to_string(),
                prefix: prefix.to_string(),
                value: value.clone(),
            });
        }
        writers
    }

    pub(super) async fn put_all(addr: &str, from: usize, to: usize, prefix: &str) -> f64 {
        let writers = writers(addr, prefix, |i| pod(i, None)).await;
        write_all(writers, from, to, None).await
    }

    pub(super) async fn range(addr: &str, prefix: &str) -> (usize, f64) {
        let mut c = connect(addr).await;
        let mut end = prefix.trim_end_matches('/').as_bytes().to_vec();
        end.push(b'0');
        let body = json!({"key": b64(prefix.as_bytes()), "range_end": b64(&end)});
        let start = Instant::now();
        let bytes = c
            .post(addr, "/v3/kv/range", &body)
            .await
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        (v["kvs"].as_array().map_or(0, Vec::len), ms)
    }

    pub(super) async fn watch_latency(addr: &str) -> WatchFigures {
        let epoch = Instant::now();
        let prefix = "/registry/pods/watch/";
        let mut end = prefix.trim_end_matches('/').as_bytes().to_vec();
        end.push(b'0');
        let total = (WATCH_RATE * WATCH_SECONDS) as usize;
        let samples = Arc::new(std::sync::Mutex::new(Vec::<(usize, u128, u128)>::new()));
        let acks: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
        let mut watchers = Vec::new();
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(WATCHERS);
        for _ in 0..WATCHERS {
            let addr = addr.to_string();
            let samples = samples.clone();
            let end = end.clone();
            let ready = ready_tx.clone();
            watchers.push(tokio::spawn(async move {
                let mut c = connect(&addr).await;
                let body = json!({"create_request": {"key": b64(prefix.as_bytes()), "range_end": b64(&end)}});
                let body = c.post(&addr, "/v3/watch", &body).await;
                let mut created = false;
                let mine = read_watch(body, total, epoch, |line| {
                    if !created && line.windows(9).any(|w| w == b"\"created\"") {
                        created = true;
                        // One message per watcher: the channel has room for all.
                        let _ = ready.try_send(());
                    }
                    // Each event's value is base64: decode only that, then find ts.
                    let key = b"\"value\":\"";
                    let mut found = Vec::new();
                    let mut rest = line;
                    while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
                        rest = &rest[at + key.len()..];
                        let end = rest.iter().position(|b| *b == b'"').unwrap_or(rest.len());
                        let val = unb64(std::str::from_utf8(&rest[..end]).unwrap_or(""));
                        found.extend(sample(&val));
                        rest = &rest[end..];
                    }
                    found
                })
                .await;
                samples.lock().unwrap().extend(mine);
            }));
        }
        for _ in 0..WATCHERS {
            ready_rx.recv().await;
        }
        let writers = writers(addr, prefix, move |i| pod(i, Some(now_ns(epoch)))).await;
        let paced = Paced { epoch, acks: &acks };
        let rate = write_all(writers, 0, total, Some(paced)).await;
        for w in watchers {
            let _ = tokio::time::timeout(Duration::from_secs(60), w).await;
        }
        let s = std::mem::take(&mut *samples.lock().unwrap());
        figures(s, &acks, rate)
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dir = PathBuf::from(arg("--dir").expect("--dir DIR"));
    let objects: usize = arg("--objects").map_or(100_000, |v| v.parse().unwrap());
    let etcd = arg("--etcd").map(|u| u.trim_start_matches("http://").to_string());
    let etcd_pid = arg("--etcd-pid");
    std::fs::create_dir_all(&dir).unwrap();
    let me = std::process::id().to_string();

    println!("# fsync floor");
    let (fsyncs, f50, f99, fmax) = fsync_rate(&dir);
    println!(
        "fsync/s (512 B append + fdatasync, same disk): {fsyncs:.0}; one fsync ms: p50 {f50:.2} p99 {f99:.2} max {fmax:.2}"
    );

    let cfg = apiserver::Config::new(dir.join("api"));
    let r = apiserver::router(&cfg).unwrap();
    call(
        &r,
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": "bench"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    let base_rss = rss_mib(&me);
    let show = |who: &str, f: WatchFigures| {
        println!(
            "{who} watch latency ms from write start: p50 {:.2} p99 {:.2}; from ack: p50 {:.2} p99 {:.2}; write start to ack: p50 {:.2} p99 {:.2} (writes/s achieved {:.0})",
            f.from_write.0, f.from_write.1, f.from_ack.0, f.from_ack.1, f.ack.0, f.ack.1, f.rate
        );
    };

    if args.iter().any(|a| a == "--watch-only") {
        println!(
            "# watch delivery ({WATCHERS} watchers, {WATCH_RATE} writes/s for {WATCH_SECONDS} s)"
        );
        show("kubewire", watch_latency(&r).await);
        return;
    }

    // Services: allocation must not grow with the Services stored (it once scanned
    // them all, and 10,000 creates took 32 minutes).
    call(
        &r,
        "POST",
        "/api/v1/namespaces",
        json!({"metadata": {"name": "svc"}})
            .to_string()
            .into_bytes(),
    )
    .await;
    println!("# Service creates ({CONCURRENCY} concurrent clients)");
    let first = create_services(&r, "svc", 0, 10_000, false).await;
    println!("kubewire Service creates/s, first 10,000 (ClusterIP): {first:.0}");
    let more = create_services(&r, "svc", 10_000, 12_000, false).await;
    println!("kubewire Service creates/s with 10,000 existing (ClusterIP): {more:.0}");
    let np = create_services(&r, "svc", 12_000, 14_000, true).await;
    println!("kubewire Service creates/s with 12,000 existing (NodePort): {np:.0}");
    if args.iter().any(|a| a == "--services-only") {
        return;
    }

    println!("# durable creates ({CONCURRENCY} concurrent clients, pods)");
    let creates = create_pods(&r, "bench", 0, 10_000).await;
    println!("kubewire creates/s: {creates:.0}");
    if let Some(e) = &etcd {
        let puts = etcd::put_all(e, 0, 10_000, "/registry/pods/bench/").await;
        println!("etcd puts/s: {puts:.0}");
    }

    println!("# list of 10,000 pods (whole response)");
    let mut lat = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let (code, body) = call(&r, "GET", "/api/v1/namespaces/bench/pods", Vec::new()).await;
        assert_eq!(code, 200);
        lat.push(start.elapsed().as_secs_f64() * 1e3);
        assert!(body.len() > 1_000_000);
    }
    println!(
        "kubewire list 10k ms: p50 {:.1} max {:.1}",
        pct(&mut lat.clone(), 0.5),
        pct(&mut lat, 1.0)
    );
    let mut lat = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let (code, _) = call(
            &r,
            "GET",
            "/api/v1/namespaces/bench/pods?labelSelector=app%3Dbench",
            Vec::new(),
        )
        .await;
        assert_eq!(code, 200);
        lat.push(start.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "kubewire list 10k with a label selector ms: p50 {:.1}",
        pct(&mut lat, 0.5)
    );
    if let Some(e) = &etcd {
        let mut lat = Vec::new();
        for _ in 0..20 {
            let (n, ms) = etcd::range(e, "/registry/pods/bench/").await;
            assert_eq!(n, 10_000);
            lat.push(ms);
        }
        println!(
            "etcd range 10k ms: p50 {:.1} max {:.1}",
            pct(&mut lat.clone(), 0.5),
            pct(&mut lat, 1.0)
        );
    }
    let rss_10k = rss_mib(&me);
    println!("# memory at 10,000 pods");
    println!("kubewire RSS MiB (whole bench process; {base_rss:.0} before the pods): {rss_10k:.0}");
    if let Some(p) = &etcd_pid {
        println!("etcd RSS MiB: {:.0}", rss_mib(p));
    }

    println!("# watch delivery ({WATCHERS} watchers, {WATCH_RATE} writes/s for {WATCH_SECONDS} s)");
    show("kubewire", watch_latency(&r).await);
    if let Some(e) = &etcd {
        show("etcd", etcd::watch_latency(e).await);
    }

    println!("# memory at {objects} objects");
    let have = 10_000 + (WATCH_RATE * WATCH_SECONDS) as usize;
    if objects > have {
        let rate = create_pods(&r, "bench", 10_000, 10_000 + objects - have).await;
        println!("kubewire creates/s while growing: {rate:.0}");
        if let Some(e) = &etcd {
            etcd::put_all(e, 10_000, 10_000 + objects - have, "/registry/pods/bench/").await;
        }
    }
    println!("kubewire RSS MiB: {:.0}", rss_mib(&me));
    if let Some(p) = &etcd_pid {
        println!("etcd RSS MiB: {:.0}", rss_mib(p));
    }
    let db = std::fs::metadata(dir.join("api/state.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("kubewire database MiB: {:.0}", db as f64 / 1048576.0);
}
