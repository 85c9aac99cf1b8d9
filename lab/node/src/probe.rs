//! Startup, liveness and readiness probes, run from the node's network namespace to the
//! pod's address (httpGet, tcpSocket) or inside the container's namespaces (exec), with
//! kubelet's timing: `initialDelaySeconds`, `periodSeconds`, `timeoutSeconds`,
//! `successThreshold`, `failureThreshold`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Liveness,
    Readiness,
}

/// A probe's counters and result, stepped by [`ProbeState::record`].
#[derive(Debug, Clone)]
pub(crate) struct ProbeState {
    pub kind: Kind,
    pub probe: Probe,
    pub next: Instant,
    successes: i32,
    failures: i32,
    /// The probe's current verdict (kubelet's initial: readiness failure, others success).
    pub ok: bool,
    pub in_flight: bool,
}

impl ProbeState {
    pub(crate) fn new(kind: Kind, probe: Probe, started: Instant) -> Self {
        let delay = u64::try_from(probe.initial_delay_seconds.unwrap_or(0)).unwrap_or(0);
        ProbeState {
            kind,
            next: started + Duration::from_secs(delay),
            probe,
            successes: 0,
            failures: 0,
            ok: kind != Kind::Readiness && kind != Kind::Startup,
            in_flight: false,
        }
    }

    pub(crate) fn period(&self) -> Duration {
        Duration::from_secs(
            u64::try_from(self.probe.period_seconds.unwrap_or(10).max(1)).unwrap_or(10),
        )
    }

    /// Records one result; returns whether the verdict changed.
    pub(crate) fn record(&mut self, success: bool) -> bool {
        self.in_flight = false;
        self.next = Instant::now() + self.period();
        let before = self.ok;
        if success {
            self.failures = 0;
            self.successes += 1;
            if self.successes >= self.probe.success_threshold.unwrap_or(1).max(1) {
                self.ok = true;
            }
        } else {
            self.successes = 0;
            self.failures += 1;
            if self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1) {
                self.ok = false;
            }
        }
        before != self.ok
    }

    /// Whether this state has reached a failure verdict (for liveness/startup: kill).
    pub(crate) fn failed(&self) -> bool {
        !self.ok && self.failures >= self.probe.failure_threshold.unwrap_or(3).max(1)
    }
}

/// Where a probe goes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub ip: Option<IpAddr>,
    pub ports: Vec<ContainerPort>,
    /// This binary and the container's init spec and pid, for exec probes.
    pub exe: PathBuf,
    pub spec: PathBuf,
    pub pid: u32,
}

fn port(p: &IntOrString, ports: &[ContainerPort]) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => ports
            .iter()
            .find(|c| c.name.as_deref() == Some(name.as_str()))
            .and_then(|c| u16::try_from(c.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs the probe once; true on success.
pub(crate) async fn run(probe: &Probe, t: &Target) -> bool {
    let timeout =
        Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    tokio::time::timeout(timeout, once(probe, t))
        .await
        .unwrap_or(false)
}

async fn once(probe: &Probe, t: &Target) -> bool {
    if let Some(h) = &probe.http_get {
        let ip = h.host.as_deref().and_then(|h| h.parse().ok()).or(t.ip);
        let (Some(ip), Some(port)) = (ip, port(&h.port, &t.ports)) else {
            return false;
        };
        return http_get(
            SocketAddr::new(ip, port),
            h.path.as_deref().unwrap_or("/"),
            h.http_headers.as_deref().unwrap_or(&[]),
        )
        .await;
    }
    if let Some(s) = &probe.tcp_socket {
        let ip = s.host.as_deref().and_then(|h| h.parse().ok()).or(t.ip);
        let (Some(ip), Some(port)) = (ip, port(&s.port, &t.ports)) else {
            return false;
        };
        return tokio::net::TcpStream::connect((ip, port)).await.is_ok();
    }
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        if cmd.is_empty() {
            return false;
        }
        let child = tokio::process::Command::new(&t.exe)
            .arg(crate::init::SUBCOMMAND)
            .arg("enter")
            .arg(&t.spec)
            .arg(t.pid.to_string())
            .arg("--")
            .args(&cmd)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn();
        return match child {
            Ok(mut c) => c.wait().await.is_ok_and(|s| s.success()),
            Err(_) => false,
        };
    }
    false
}

/// kubelet's HTTP probe: success for a status in 200..400.
async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[k8s_openapi::api::core::v1::HTTPHeader],
) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    if !headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("user-agent"))
    {
        req.push_str("User-Agent: kube-probe/1.34\r\n");
    }
    for h in headers {
        req.push_str(&format!("{}: {}\r\n", h.name, h.value));
    }
    req.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(m) => n += m,
        }
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (200..400).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thresholds() {
        let probe: Probe = serde_json::from_value(
            json!({"failureThreshold": 2, "successThreshold": 2, "periodSeconds": 1}),
        )
        .unwrap();
        let mut s = ProbeState::new(Kind::Readiness, probe, Instant::now());
        assert!(!s.ok);
        assert!(!s.record(true));
        assert!(s.record(true) && s.ok);
        assert!(!s.record(false) && s.ok);
        assert!(s.record(false) && !s.ok && s.failed());
    }
}
