//! The data plane on its own, for `bench/gateway.sh`: N routes to one backend on an HTTP
//! port and (with a certificate) an HTTPS port, until SIGTERM or SIGINT.
//!
//! `bench_serve --http 18081 [--https 18443 --cert c.pem --key k.pem] --backend 127.0.0.1:18080
//!  [--routes 10] [--threads 1]`
//!
//! Routes: `/svc<i>/` (element-wise prefix) for i in 0..N, then `/` as a catch-all, all to
//! the backend, on every host.

use std::net::SocketAddr;
use std::sync::Arc;

use gateway::config::*;
use gateway::proxy::{Options, serve};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let http: u16 = arg(&args, "--http").map_or(18081, |p| p.parse().unwrap());
    let https: Option<u16> = arg(&args, "--https").map(|p| p.parse().unwrap());
    let backend: SocketAddr = arg(&args, "--backend")
        .expect("--backend ADDR")
        .parse()
        .unwrap();
    let n: usize = arg(&args, "--routes").map_or(10, |p| p.parse().unwrap());
    let threads: usize = arg(&args, "--threads").map_or(1, |p| p.parse().unwrap());
    let admin = arg(&args, "--admin").unwrap_or_else(|| "127.0.0.1:18877".into());

    // One Service port for every route: one `Arc`, as the controller's compile shares it.
    let b = Arc::new(Backend {
        namespace: "bench".into(),
        service: "backend".into(),
        port: 80,
        endpoints: Arc::from(vec![backend]),
        protocol: BackendProtocol::Http1,
        tls: None,
        limits: Limits {
            max_connections: 100_000,
            max_pending_requests: 100_000,
            max_requests: 100_000,
            max_retries: 3,
        },
    });
    let route = |i: usize, path: PathMatch| Route {
        name: RouteName {
            kind: "HTTPRoute",
            namespace: "bench".into(),
            name: format!("r{i}"),
            rule: 0,
        },
        matches: RouteMatch {
            path,
            method: None,
            headers: vec![],
            query: vec![],
        },
        action: Action::Forward(Box::new(Forward {
            backends: vec![WeightedBackend {
                weight: 1,
                backend: Some(Arc::clone(&b)),
            }],
            ..Forward::default()
        })),
    };
    let mut routes: Vec<Route> = (0..n)
        .map(|i| route(i, PathMatch::Prefix(format!("/svc{i}/"))))
        .collect();
    routes.push(route(n, PathMatch::Prefix("/".into())));
    let hosts = HttpHosts {
        hosts: vec![VirtualHost {
            scope: None,
            hostnames: vec![HostMatch::Any],
            routes,
        }],
    };
    // The HTTP listener takes `hosts` itself unless HTTPS needs it too: the process holds
    // the configurations the data plane serves, no spare copy.
    let mut listeners = Vec::new();
    if let Some(port) = https {
        let read = |flag: &str| {
            Arc::from(std::fs::read(arg(&args, flag).expect("--cert and --key")).unwrap())
        };
        listeners.push(Listener {
            port,
            public_port: port,
            kind: ListenerKind::Tls {
                passthrough: vec![],
                certificates: vec![Certificate {
                    hostnames: vec![],
                    chain_pem: read("--cert"),
                    key_pem: read("--key"),
                }],
                hosts: hosts.clone(),
            },
            proxy_protocol: false,
        });
    }
    listeners.insert(
        0,
        Listener {
            port: http,
            public_port: http,
            kind: ListenerKind::Http(hosts),
            proxy_protocol: false,
        },
    );
    let options = Options {
        admin_listen: admin,
        listen_address: "127.0.0.1".parse().unwrap(),
        access_log: false,
        ..Options::default()
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .unwrap();
    runtime.block_on(async {
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(Config { listeners }));
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        serve(rx, options, shutdown).await.unwrap();
    });
}
