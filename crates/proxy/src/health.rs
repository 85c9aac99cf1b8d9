//! `healthCheckNodePort` servers: for each `externalTrafficPolicy: Local` service, an
//! HTTP server on its health check port that tells load balancers whether this node
//! has a local endpoint, answering like kube-proxy's: `200` with the number of local
//! endpoints, `503` when there is none.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tracing::warn;

use crate::view::ServiceKey;

/// What one server answers: the service and its local endpoint count, changed in place
/// as the count changes.
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

/// Answers every request alike, whatever its path, as kube-proxy does.
async fn serve(listener: TcpListener, answer: Answer) {
    k8s::http::serve(listener, move |_| {
        let answer = answer.lock().unwrap_or_else(|e| e.into_inner());
        response(&answer.0, answer.1)
    })
    .await;
}

/// The response kube-proxy's health check server gives.
fn response(service: &ServiceKey, local_endpoints: usize) -> k8s::http::Response {
    let body = format!(
        r#"{{"service":{{"namespace":"{}","name":"{}"}},"localEndpoints":{},"serviceProxyHealthy":true}}"#,
        service.namespace, service.name, local_endpoints
    );
    let status = if local_endpoints > 0 { 200 } else { 503 };
    let mut r = k8s::http::response(status, "application/json", body);
    let headers = r.headers_mut();
    headers.insert(
        "x-content-type-options",
        "nosniff".parse().expect("a header value"),
    );
    headers.insert("x-load-balancing-endpoint-weight", local_endpoints.into());
    r
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// `GET path` on `port` with hyper's client: status, the headers that matter and
    /// the body.
    async fn get(port: u16, path: &str) -> (u16, Vec<String>, String) {
        let stream = tokio::net::TcpStream::connect(("localhost", port))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, format!("localhost:{port}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let headers = [
            "content-type",
            "x-content-type-options",
            "x-load-balancing-endpoint-weight",
        ]
        .iter()
        .map(|h| {
            let v = response.headers().get(*h).map(|v| v.to_str().unwrap());
            format!("{h}: {}", v.unwrap_or("(none)"))
        })
        .collect();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind(("::", 0))
            .or_else(|_| std::net::TcpListener::bind(("0.0.0.0", 0)))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn health_check_servers_answer_like_kube_proxy() {
        let port = free_port();
        let web = ServiceKey::new("default", "web");
        let mut servers = HealthServers::default();
        servers.update(BTreeMap::from([(port, (web.clone(), 2))]));
        assert_eq!(servers.ports(), [port]);
        let body = |n: usize| {
            format!(
                r#"{{"service":{{"namespace":"default","name":"web"}},"localEndpoints":{n},"serviceProxyHealthy":true}}"#
            )
        };
        let headers = |n: usize| {
            vec![
                "content-type: application/json".to_owned(),
                "x-content-type-options: nosniff".to_owned(),
                format!("x-load-balancing-endpoint-weight: {n}"),
            ]
        };
        for path in ["/", "/healthz", "/anything?at=all"] {
            assert_eq!(get(port, path).await, (200, headers(2), body(2)), "{path}");
        }
        // The same server, its answer changed in place.
        servers.update(BTreeMap::from([(port, (web, 0))]));
        assert_eq!(get(port, "/").await, (503, headers(0), body(0)));
        servers.update(BTreeMap::new());
        assert!(servers.ports().is_empty());
    }
}
