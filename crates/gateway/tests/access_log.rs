//! The access log: one JSON line per request through tracing-subscriber's JSON formatter.
//! A test binary of its own, so that the process-wide subscriber it installs sees every
//! event (tracing caches per call site whether anyone listens).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::config::*;
use gateway::proxy::{Options, serve};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

#[tokio::test]
async fn one_json_line_per_request() {
    let logs = Captured::default();
    let sink = logs.clone();
    tracing_subscriber::fmt()
        .json()
        .with_writer(move || sink.clone())
        .with_max_level(tracing::Level::INFO)
        .init();
    let port = free_port();
    let config = Config {
        listeners: vec![Listener {
            port,
            public_port: port,
            kind: ListenerKind::Http(HttpHosts {
                hosts: vec![VirtualHost {
                    scope: None,
                    hostnames: vec![HostMatch::Any],
                    routes: vec![Route {
                        name: RouteName {
                            kind: "Ingress",
                            namespace: "default".into(),
                            name: "web".into(),
                            rule: 0,
                        },
                        matches: RouteMatch {
                            path: PathMatch::Prefix("/teapot".into()),
                            method: None,
                            headers: vec![],
                            query: vec![],
                        },
                        action: Action::Respond(StatusCode::IM_A_TEAPOT),
                    }],
                }],
            }),
            proxy_protocol: false,
        }],
    };
    let options = Options {
        admin_listen: "off".into(),
        listen_address: "127.0.0.1".parse().unwrap(),
        drain_timeout: Duration::from_secs(5),
        ..Options::default()
    };
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(config));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(rx, options, async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while http_get(port, "/teapot/x").await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway never answered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    http_get(port, "/nowhere").await.unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let access: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "gateway::access")
        .map(|v| v["fields"].clone())
        .collect();
    assert_eq!(access.len(), 2, "{logs}");
    let (hit, miss) = (&access[0], &access[1]);
    assert_eq!(hit["method"], "GET");
    assert_eq!(hit["path"], "/teapot/x");
    assert_eq!(hit["protocol"], "HTTP/1.1");
    assert_eq!(hit["response_code"], 418);
    assert_eq!(hit["route"], "Ingress/default/web/0");
    assert_eq!(hit["listener_port"], port);
    assert!(
        hit["downstream_remote_address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(hit["start_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(miss["response_code"], 404);
    assert_eq!(miss["response_flags"], "NR");
    assert_eq!(miss["route"], "-");
}
