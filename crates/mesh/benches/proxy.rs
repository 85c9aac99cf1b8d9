//! What the mesh adds to a request, and what a proxy weighs. Needs root; run through
//! `bench/mesh.sh`, which builds the release binary and passes it in `KUBEWIRE_BIN`.
//!
//! A client pod and a server pod (network namespaces routed by a node namespace, as
//! benchkit wires them), each with the CNI plugin's capture table and `kubewire mesh
//! proxy` as user 2102 with certificates of one anchor; nginx (Debian's) serves
//! `200 ok` on 8080-8082 (HTTP/1.1) and 8083-8084 (HTTP/2, cleartext by prior
//! knowledge) in the server pod. Ports 8081 and 8084 are skipped by both pods'
//! capture, so the same pods and server give the baselines (straight to nginx) and the
//! cases, each through the client's proxy, mutual TLS across the node and the
//! server's proxy: 8080 served as HTTP/1.1 and 8083 as HTTP/2 (detected, balanced per
//! request, counted on both sides), and 8082 as opaque TCP (`--opaque-ports 8082`).
//! The five are measured in rotating rounds.
//!
//! The load is open-loop at a fixed rate (1,000 requests/s by default): request `i`
//! is due at `start + i / rate` and its latency counts from then, so a slow answer
//! delays the requests behind it and their latency shows it (no coordinated omission).
//! One keep-alive connection per case (HTTP/2: one connection, one stream at a time),
//! from a thread pinned to the last CPU; nginx and the proxies on the first.
//!
//! Reported: p50/p99/p99.9 of each and what the mesh adds; each proxy's resident memory
//! idle and under the load; their CPU per 1,000 requests/s, for HTTP and opaque TCP.
//!
//! `RATE` (requests/s, 1000), `SECONDS` per round (5), `ROUNDS` (6).

#![allow(clippy::disallowed_methods)] // runs nginx and the proxies

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use benchkit::{Kill, Namespaces, pin, quantile, topology};
use cni::capture::Capture;
use mesh::destination::{Destination, Endpoint};
use mesh::identity::{Authority, Identity};
use netlink::netns;

const TRUST_DOMAIN: &str = "cluster.local";
const SERVER: &str = "10.244.2.2";

fn env(k: &str, default: f64) -> f64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An anchor's key and certificate for `sa`, written to `dir/sa.{crt,key}`.
fn credentials(authority: &Authority, dir: &Path, sa: &str) {
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let identity = Identity::from_username(&format!("system:serviceaccount:bench:{sa}")).unwrap();
    let issued = authority
        .certify(&csr, &identity, SystemTime::now())
        .unwrap();
    std::fs::write(dir.join(format!("{sa}.crt")), issued.chain_pem).unwrap();
    std::fs::write(dir.join(format!("{sa}.key")), key.serialize_pem()).unwrap();
}

/// The node's destination service, answering every question with the server pod,
/// meshed as `bench/server`.
fn destination(node: &str) {
    let listener = netns::run_in(node, || TcpListener::bind("0.0.0.0:4196"))
        .unwrap()
        .unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let addr: SocketAddr = request
                .split("addr=")
                .nth(1)
                .and_then(|r| r.split([' ', '&']).next())
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| "0.0.0.0:0".parse().unwrap());
            let d = Destination {
                kind: "pod".into(),
                service: String::new(),
                endpoints: vec![Endpoint {
                    addr,
                    pod: "bench/server".into(),
                    identity: Some("ns/bench/sa/server".into()),
                }],
                routes: None,
                failure_accrual: None,
            };
            let body = serde_json::to_string(&d).unwrap();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// `kubewire mesh proxy` in `pod`, as user 2102, on CPU 0.
fn proxy(bin: &str, pod: &str, node_ip: &str, dir: &Path, sa: &str, trust: &str) -> Kill {
    let child = Command::new("ip")
        .args(["netns", "exec", pod, "taskset", "-c", "0"])
        .args(["setpriv", "--reuid=2102", "--regid=2102", "--clear-groups"])
        .arg(bin)
        .args([
            "mesh",
            "proxy",
            "--node-ip",
            node_ip,
            "--opaque-ports",
            "8082",
        ])
        .arg("--certificate")
        .arg(dir.join(format!("{sa}.crt")))
        .arg("--key")
        .arg(dir.join(format!("{sa}.key")))
        .env("KUBEWIRE_TRUST_BUNDLE", trust)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the proxy");
    Kill(child)
}

/// nginx in `pod` on 8080-8082 (HTTP/1.1) and 8083-8084 (HTTP/2), one process on CPU 0.
fn nginx(pod: &str, dir: &Path) -> Kill {
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "master_process off; worker_processes 1; daemon off; pid {d}/nginx.pid; \
             error_log {d}/nginx.err;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; keepalive_requests 100000000; keepalive_timeout 300s;\n\
               server {{ listen 8080; listen 8081; listen 8082; listen 8083 http2; listen 8084 http2;\n\
                 location / {{ return 200 \"ok\\n\"; }} }} }}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    // One process (no master), so that killing it leaves nothing in the namespace.
    let child = Command::new("ip")
        .args(["netns", "exec", pod, "taskset", "-c", "0", "nginx", "-e"])
        .arg(dir.join("nginx.err"))
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting nginx (Debian's package)");
    Kill(child)
}

/// Resident memory of `pid`, in MiB: (all, anonymous, file-backed). The file-backed
/// part is the binary's pages, shared by every proxy of a node; the anonymous part is
/// each proxy's own.
fn rss_mib(pid: u32) -> [f64; 3] {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    [field("VmRSS:"), field("RssAnon:"), field("RssFile:")]
}

/// CPU time `pid` has used (user + system), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis: utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    f.get(11)
        .zip(f.get(12))
        .map_or(0.0, |(u, s)| (u + s) / ticks)
}

/// One open-loop run of `seconds` at `rate` on `conn` (to `port`); latencies in µs.
fn run(conn: &mut TcpStream, rate: f64, seconds: f64) -> Vec<f64> {
    let n = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
    let mut buf = [0u8; 4096];
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now() + Duration::from_millis(10);
    for i in 0..n {
        let due = start + interval * i as u32;
        // Sleep to just before the due time, then spin: sleeps overshoot by tens of µs.
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            if due - now > Duration::from_micros(200) {
                std::thread::sleep(due - now - Duration::from_micros(150));
            } else {
                std::hint::spin_loop();
            }
        }
        conn.write_all(request).unwrap();
        // nginx's answer to this request: headers and "ok\n".
        let mut got = 0;
        loop {
            let r = conn.read(&mut buf[got..]).unwrap();
            assert!(r > 0, "the server closed the connection");
            got += r;
            if buf[..got].ends_with(b"\r\n\r\nok\n") {
                break;
            }
        }
        latencies.push(due.elapsed().as_secs_f64() * 1e6);
    }
    latencies
}

/// As [`run`], over HTTP/2 (one stream at a time on one connection), in `rt`.
fn run_h2(
    rt: &tokio::runtime::Runtime,
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    rate: f64,
    seconds: f64,
) -> Vec<f64> {
    use http_body_util::BodyExt;
    let n = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now() + Duration::from_millis(10);
    rt.block_on(async {
        let mut latencies = Vec::with_capacity(n);
        for i in 0..n {
            let due = start + interval * i as u32;
            // The timer's ticks are a millisecond: sleep to 2 ms before, then spin.
            if let Some(early) = due.checked_sub(Duration::from_millis(2)) {
                tokio::time::sleep_until(early.into()).await;
            }
            while Instant::now() < due {
                std::hint::spin_loop();
            }
            let req = hyper::Request::get("http://bench/")
                .body(http_body_util::Empty::new())
                .unwrap();
            let resp = sender.send_request(req).await.expect("an HTTP/2 answer");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"ok\n");
            latencies.push(due.elapsed().as_secs_f64() * 1e6);
        }
        latencies
    })
}

/// An HTTP/2 connection (prior knowledge) to `port`, driven by `rt`.
fn connect_h2(
    rt: &tokio::runtime::Runtime,
    port: u16,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect((SERVER, port))
            .await
            .expect("connecting");
        tcp.set_nodelay(true).unwrap();
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .expect("an HTTP/2 handshake");
        tokio::spawn(conn);
        sender
    })
}

fn main() {
    benchkit::require_root();
    let bin = std::env::var("KUBEWIRE_BIN")
        .expect("KUBEWIRE_BIN: the kubewire binary (bench/mesh.sh sets it)");
    let rate = env("RATE", 1000.0);
    let seconds = env("SECONDS", 5.0);
    let rounds = env("ROUNDS", 6.0) as usize;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load_cpu = Some(cpus - 1);

    let mut all = Namespaces::default();
    let (node, client, server) = topology(&mut all, "mesh");
    let dir = tempfile::tempdir().unwrap();
    // The proxies (user 2102) read their files.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (authority, anchor) = Authority::create(TRUST_DOMAIN, SystemTime::now()).unwrap();
    for sa in ["client", "server"] {
        credentials(&authority, dir.path(), sa);
        std::fs::set_permissions(
            dir.path().join(format!("{sa}.key")),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
    }
    let capture = Capture {
        skip_inbound_ports: vec![cni::capture::ADMIN_PORT, 8081, 8084],
        skip_outbound_ports: vec![8081, 8084],
        ..Capture::for_pod(cni::capture::DEFAULT_PROXY_UID, |_| None)
    };
    for pod in [&client, &server] {
        netlink::nft::NftSocket::new_in(pod)
            .unwrap()
            .apply(&capture.batch())
            .unwrap();
    }
    destination(&node);
    let _nginx = nginx(&server, dir.path());
    let client_proxy = proxy(
        &bin,
        &client,
        "10.244.1.1",
        dir.path(),
        "client",
        &anchor.cert,
    );
    let server_proxy = proxy(
        &bin,
        &server,
        "10.244.2.1",
        dir.path(),
        "server",
        &anchor.cert,
    );
    std::thread::sleep(Duration::from_millis(500));
    let pids = [client_proxy.0.id(), server_proxy.0.id()];
    let idle: Vec<[f64; 3]> = pids.iter().map(|p| rss_mib(*p)).collect();

    // Measured from one pinned thread in the client pod, each mode on its own
    // keep-alive connection made once. HTTP/1.1 modes first, then HTTP/2 ones.
    const MODES: [(&str, u16); 5] = [
        ("no mesh", 8081),
        ("HTTP", 8080),
        ("opaque", 8082),
        ("no mesh h2", 8084),
        ("HTTP/2", 8083),
    ];
    const H1: usize = 3;
    let result = netns::run_in(&client, move || {
        pin(load_cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut conns: Vec<TcpStream> = MODES[..H1]
            .iter()
            .map(|(_, port)| {
                let c = TcpStream::connect((SERVER, *port)).expect("connecting");
                c.set_nodelay(true).unwrap();
                c
            })
            .collect();
        let mut h2: Vec<_> = MODES[H1..]
            .iter()
            .map(|(_, port)| connect_h2(&rt, *port))
            .collect();
        let mut run_mode = |mode: usize, seconds: f64| {
            if mode < H1 {
                run(&mut conns[mode], rate, seconds)
            } else {
                run_h2(&rt, &mut h2[mode - H1], rate, seconds)
            }
        };
        // Warm up every path.
        for mode in 0..MODES.len() {
            run_mode(mode, 1.0);
        }
        let mut latencies = vec![Vec::new(); MODES.len()];
        let mut cpu = vec![0.0; MODES.len()];
        let mut loaded_rss = [[0.0f64; 3]; 2];
        for r in 0..rounds {
            for k in 0..MODES.len() {
                let mode = (r + k) % MODES.len();
                let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
                latencies[mode].extend(run_mode(mode, seconds));
                cpu[mode] += pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>() - before;
                if mode != 0 && mode != 3 {
                    for (i, p) in pids.iter().enumerate() {
                        let now = rss_mib(*p);
                        if now[0] > loaded_rss[i][0] {
                            loaded_rss[i] = now;
                        }
                    }
                }
            }
        }
        (latencies, cpu, loaded_rss)
    })
    .unwrap();
    let (latencies, cpu, loaded_rss) = result;
    let mesh_seconds = seconds * rounds as f64;
    println!(
        "== the mesh's added latency: HTTP/1.1 keep-alive, open loop at {rate} requests/s, \
         {rounds} rounds of {seconds} s each, {} requests each",
        latencies[0].len()
    );
    println!(
        "{:>8} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "", "no mesh", "mesh HTTP", "added", "mesh opaque", "added"
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        let [b, h, o] = [0, 1, 2].map(|m| quantile(&latencies[m], q));
        println!(
            "{name:>8} {b:>9.1} µs {h:>9.1} µs {:>9.1} µs {o:>9.1} µs {:>9.1} µs",
            h - b,
            o - b
        );
    }
    println!("== and HTTP/2 (cleartext, one stream at a time on one connection)");
    println!(
        "{:>8} {:>12} {:>12} {:>12}",
        "", "no mesh", "mesh HTTP/2", "added"
    );
    for (name, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999)] {
        let [b, h] = [3, 4].map(|m| quantile(&latencies[m], q));
        println!("{name:>8} {b:>9.1} µs {h:>9.1} µs {:>9.1} µs", h - b);
    }
    let mem = |m: [f64; 3]| {
        format!(
            "{:.1} MiB ({:.1} MiB its own, {:.1} MiB the binary's shared pages)",
            m[0], m[1], m[2]
        )
    };
    for (i, who) in ["client", "server"].iter().enumerate() {
        println!(
            "== the {who}'s proxy's memory (RSS): idle {}, under load {}",
            mem(idle[i]),
            mem(loaded_rss[i])
        );
    }
    for (m, (name, _)) in MODES.iter().enumerate().filter(|(m, _)| *m != 0 && *m != 3) {
        println!(
            "== CPU of the two proxies, {name}: {:.3} vCPU at {rate} requests/s, i.e. {:.3} vCPU per proxy per 1,000 requests/s",
            cpu[m] / mesh_seconds,
            cpu[m] / mesh_seconds / 2.0 / (rate / 1000.0)
        );
    }
    // What the proxies counted: connections opened and requests, per side.
    for (who, ns, addr) in [
        ("client", &client, "127.0.0.1:4191"),
        ("server", &server, "10.244.2.2:4191"),
    ] {
        let text = netns::run_in(ns, move || {
            let mut c = TcpStream::connect(addr).expect("the proxy's admin port");
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
            let mut text = String::new();
            c.read_to_string(&mut text).unwrap();
            text
        })
        .unwrap();
        for line in text
            .lines()
            .filter(|l| l.starts_with("tcp_open_total{") || l.starts_with("request_total{"))
        {
            println!("== the {who}'s proxy counted: {line}");
        }
    }
    println!("load average: {}", benchkit::loadavg());
}
