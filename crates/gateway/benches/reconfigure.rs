//! Reconfiguration: the time from a new configuration being published to a request on
//! an open connection being answered by it, at 10 and 10,000 routes:
//! `cargo bench -p gateway --bench reconfigure`. The data plane side of the goal
//! (< 100 ms at 10,000 routes); the controller's compile time comes on top.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway::config::*;
use gateway::proxy::{Options, serve};
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

fn config(port: u16, n: usize, last: StatusCode) -> Config {
    let route = |i: usize, status| Route {
        name: RouteName {
            kind: "HTTPRoute",
            namespace: "bench".into(),
            name: format!("r{i}"),
            rule: 0,
        },
        matches: RouteMatch {
            path: PathMatch::Prefix(format!("/svc{i}/")),
            method: None,
            headers: vec![],
            query: vec![],
        },
        action: Action::Respond(status),
    };
    let routes = (0..n)
        .map(|i| route(i, if i + 1 == n { last } else { StatusCode::OK }))
        .collect();
    Config {
        listeners: vec![Listener {
            port,
            public_port: port,
            kind: ListenerKind::Http(HttpHosts {
                hosts: vec![VirtualHost {
                    scope: None,
                    hostnames: vec![HostMatch::Any],
                    routes,
                }],
            }),
            proxy_protocol: false,
        }],
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    for n in [10, 10_000] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = Options {
            admin_listen: "off".into(),
            listen_address: "127.0.0.1".parse().unwrap(),
            access_log: false,
            ..Options::default()
        };
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(config(port, n, StatusCode::OK)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(rx, options, async {
            let _ = stopped.await;
        }));
        let stream = loop {
            if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let path = format!("/svc{}/x", n - 1);
        let mut times = Vec::new();
        for round in 0..10 {
            let want = if round % 2 == 0 {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let next = Arc::new(config(port, n, want));
            let started = Instant::now();
            tx.send_replace(next);
            loop {
                send.ready().await.unwrap();
                let req = http::Request::get(&path)
                    .header("host", "bench")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = send.send_request(req).await.unwrap();
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                if status == want {
                    break;
                }
            }
            times.push(started.elapsed());
        }
        times.sort();
        println!(
            "routes={n:>6}  config to traffic: median {:>9.2?}  max {:>9.2?}  (10 changes)",
            times[times.len() / 2],
            times[times.len() - 1]
        );
        drop(send);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
