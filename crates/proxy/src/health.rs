//! `healthCheckNodePort` servers: for each `externalTrafficPolicy: Local` service, an
//! HTTP server on its health check port that tells load balancers whether this node
//! has a local endpoint, answering like kube-proxy's: `200` with the number of local
//! endpoints, `503` when there is none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::warn;

use crate::view::ServiceKey;

/// What one server answers: the service and its local endpoint count.
type Answer = Arc<Mutex<(ServiceKey, usize)>>;

/// The running servers, by port.
#[derive(Debug, Default)]
pub struct HealthServers {
    servers: BTreeMap<u16, (Answer, tokio::task::JoinHandle<()>)>,
}

impl Drop for HealthServers {
    fn drop(&mut self) {
        for (_, task) in self.servers.values() {
            task.abort();
        }
    }
}

impl HealthServers {
    /// Makes the servers match `wanted` ([`health_checks`](crate::health_checks)):
    /// starts missing ones, stops unwanted ones, updates the answers of the rest. A
    /// port that cannot be bound is reported and tried again at the next update.
    /// Needs a tokio runtime.
    pub fn update(&mut self, wanted: BTreeMap<u16, (ServiceKey, usize)>) {
        self.servers.retain(|port, (_, task)| {
            let keep = wanted.contains_key(port) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, answer) in wanted {
            if let Some((current, _)) = self.servers.get(&port) {
                *current.lock().unwrap_or_else(|e| e.into_inner()) = answer;
                continue;
            }
            let listener = match bind(port) {
                Ok(l) => l,
                Err(e) => {
                    warn!(port, service = %answer.0, error = %e, "binding the healthCheckNodePort server");
                    continue;
                }
            };
            let answer = Arc::new(Mutex::new(answer));
            let task = tokio::spawn(serve(listener, Arc::clone(&answer)));
            self.servers.insert(port, (answer, task));
        }
    }

    /// The ports served.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.keys().copied().collect()
    }
}

/// Binds every address (both families when the node has IPv6) on `port`.
fn bind(port: u16) -> std::io::Result<TcpListener> {
    let std = std::net::TcpListener::bind(("::", port))
        .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", port)))?;
    std.set_nonblocking(true)?;
    TcpListener::from_std(std)
}

async fn serve(listener: TcpListener, answer: Answer) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let answer = answer.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), respond(conn, answer)).await;
        });
    }
}

/// The response kube-proxy's health check server gives.
pub fn response(service: &ServiceKey, local_endpoints: usize) -> String {
    let body = format!(
        r#"{{"service":{{"namespace":"{}","name":"{}"}},"localEndpoints":{},"serviceProxyHealthy":true}}"#,
        service.namespace, service.name, local_endpoints
    );
    let status = if local_endpoints > 0 {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: nosniff\r\nX-Load-Balancing-Endpoint-Weight: {local_endpoints}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn respond(mut conn: TcpStream, (service, count): (ServiceKey, usize)) {
    // Whatever the request (kube-proxy answers every path alike), once its header
    // is in.
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match conn.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let _ = conn.write_all(response(&service, count).as_bytes()).await;
    let _ = conn.shutdown().await;
}
