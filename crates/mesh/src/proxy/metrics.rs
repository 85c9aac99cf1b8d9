//! The proxy's Prometheus metrics, under linkerd2-proxy's names and labels so that
//! Linkerd's dashboards read them:
//!
//! | series | kind |
//! |---|---|
//! | `tcp_open_total` | counter |
//! | `tcp_close_total` | counter |
//! | `tcp_open_connections` | gauge |
//! | `tcp_read_bytes_total` | counter: bytes read from the peer |
//! | `tcp_write_bytes_total` | counter: bytes written to the peer |
//!
//! Labels: `direction` (`inbound`, `outbound`), `peer` (`src` inbound, `dst`
//! outbound), `tls` (`true` for mutual TLS between proxies, else `no_identity`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Which side of the pod a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Inbound,
    Outbound,
}

/// Every series the proxy keeps.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    open_total: Family<Labels, Counter>,
    close_total: Family<Labels, Counter>,
    open: Family<Labels, Gauge>,
    read: Family<Labels, Counter>,
    write: Family<Labels, Counter>,
}

/// One open connection's series.
pub(crate) struct Open {
    direction: Direction,
    close_total: Counter,
    open: Gauge,
    read: Counter,
    write: Counter,
}

impl Open {
    /// The connection closed after `from_client` bytes went from the side that opened
    /// it to the other, and `to_client` back.
    pub(crate) fn close(self, from_client: u64, to_client: u64) {
        let (read, written) = match self.direction {
            Direction::Inbound => (from_client, to_client),
            Direction::Outbound => (to_client, from_client),
        };
        self.read.inc_by(read);
        self.write.inc_by(written);
        self.close_total.inc();
        self.open.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty series, registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            open_total: Family::default(),
            close_total: Family::default(),
            open: Family::default(),
            read: Family::default(),
            write: Family::default(),
            registry: Registry::default(),
        };
        registry.register("tcp_open", "TCP connections opened", m.open_total.clone());
        registry.register("tcp_close", "TCP connections closed", m.close_total.clone());
        registry.register(
            "tcp_open_connections",
            "TCP connections open now",
            m.open.clone(),
        );
        registry.register("tcp_read_bytes", "Bytes read from peers", m.read.clone());
        registry.register("tcp_write_bytes", "Bytes written to peers", m.write.clone());
        Metrics { registry, ..m }
    }

    /// Counts a connection opened.
    pub(crate) fn open(&self, direction: Direction, tls: bool) -> Open {
        let labels: Labels = vec![
            (
                "direction",
                match direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                },
            ),
            (
                "peer",
                match direction {
                    Direction::Inbound => "src",
                    Direction::Outbound => "dst",
                },
            ),
            ("tls", if tls { "true" } else { "no_identity" }),
        ];
        self.open_total.get_or_create(&labels).inc();
        let open = self.open.get_or_create(&labels).clone();
        open.inc();
        Open {
            direction,
            close_total: self.close_total.get_or_create(&labels).clone(),
            open,
            read: self.read.get_or_create(&labels).clone(),
            write: self.write.get_or_create(&labels).clone(),
        }
    }

    /// The Prometheus text exposition.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_connection_counts_its_bytes_from_the_peers_side() {
        let m = Metrics::new();
        let c = m.open(Direction::Outbound, true);
        let text = m.text();
        assert!(
            text.contains(r#"tcp_open_connections{direction="outbound",peer="dst",tls="true"} 1"#),
            "{text}"
        );
        c.close(10, 300);
        m.open(Direction::Inbound, false).close(7, 9);
        let text = m.text();
        for line in [
            r#"tcp_open_total{direction="outbound",peer="dst",tls="true"} 1"#,
            r#"tcp_close_total{direction="outbound",peer="dst",tls="true"} 1"#,
            r#"tcp_open_connections{direction="outbound",peer="dst",tls="true"} 0"#,
            r#"tcp_read_bytes_total{direction="outbound",peer="dst",tls="true"} 300"#,
            r#"tcp_write_bytes_total{direction="outbound",peer="dst",tls="true"} 10"#,
            r#"tcp_read_bytes_total{direction="inbound",peer="src",tls="no_identity"} 7"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }
}
