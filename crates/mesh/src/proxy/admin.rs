//! The admin port: `/ready` (200 once the proxy has its certificate, else 503), `/live`,
//! `/metrics` (Prometheus text).

use std::sync::Arc;

use tokio::net::TcpListener;

use super::Proxy;

pub(super) async fn serve(listener: TcpListener, proxy: Arc<Proxy>) {
    k8s::http::serve(listener, move |parts| match parts.uri.path() {
        "/ready" => match proxy.tls() {
            Some(tls) => {
                k8s::http::response(200, "text/plain", format!("ready {}\n", tls.identity))
            }
            None => k8s::http::response(503, "text/plain", "no certificate yet\n"),
        },
        "/live" => k8s::http::response(200, "text/plain", "live\n"),
        "/metrics" => k8s::http::response(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            proxy.metrics.text(),
        ),
        _ => k8s::http::response(404, "text/plain", "not found\n"),
    })
    .await;
}
