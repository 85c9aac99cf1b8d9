//! Resource usage, as kubelet's Summary API (`GET /stats/summary`) reports it: CPU and
//! memory of the node and of each running container, for the API server's
//! `metrics.k8s.io` (`kubectl top`).
//!
//! Lab containers have no cgroups of their own, so the node does its own accounting of
//! processes: every [`INTERVAL`] it reads `/proc` once; a container is the processes
//! descended from its container-init (not container-init itself, as conmon is outside
//! a container's cgroup; not `kubectl exec` sessions, which the node starts), its CPU
//! time their user + system time (with their waited-for children's), its memory
//! their resident set (`workingSetBytes` is the RSS). The node is its pods plus the
//! processes in its own network namespace (the node and agent daemons, hostNetwork
//! pods). CPU usage in nanocores is the CPU time between the last two samples over
//! their interval; a container that started after the sample before is measured from
//! its start (no CPU time then), as metrics-server measures a container restarted
//! between two scrapes. A request finds a sample at most [`FRESH`] old: an older one is
//! followed by a new sample first, so `kubectl top` answers for pods just started.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::Ctx;

/// How often the node samples its processes (metrics-server's default resolution is
/// 15 s, cadvisor's housekeeping 10 s).
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
/// How old the newest sample may be when the Summary API answers.
const FRESH: Duration = Duration::from_secs(1);
/// Linux reports process CPU times in USER_HZ ticks, 100 a second on every ABI.
const TICKS_PER_SECOND: u64 = 100;

/// CPU time and memory of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Usage {
    pub cpu_ns: u64,
    pub rss_bytes: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.cpu_ns += o.cpu_ns;
        self.rss_bytes += o.rss_bytes;
    }
}

/// One reading of every container and of the node.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sample {
    pub time: Option<SystemTime>,
    /// (namespace, pod, container) → usage.
    pub containers: HashMap<(String, String, String), Usage>,
    /// (namespace, pod, container) → when its current run started.
    pub starts: HashMap<(String, String, String), SystemTime>,
    pub node: Usage,
}

/// The last two samples.
#[derive(Debug, Default)]
pub(crate) struct Stats(Mutex<VecDeque<Sample>>);

/// One process as `/proc` shows it.
#[derive(Debug, Clone, Copy)]
struct Proc {
    parent: u32,
    usage: Usage,
    netns: u64,
    /// When it started, in clock ticks after boot.
    start_ticks: u64,
}

fn read_proc(pid: u32, page: u64) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // state is field 3 of stat; here index 0. utime 14 → 11, stime 12, cutime 13, cstime 14.
    let ticks = num(11) + num(12) + num(13) + num(14);
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let resident = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| m.ino())
        .unwrap_or(0);
    Some(Proc {
        parent: u32::try_from(num(1)).unwrap_or(0),
        usage: Usage {
            cpu_ns: ticks * (1_000_000_000 / TICKS_PER_SECOND),
            rss_bytes: resident * page,
        },
        netns,
        // starttime is field 22.
        start_ticks: num(19),
    })
}

/// When the host booted (`btime` of `/proc/stat`).
fn boot_time() -> Option<SystemTime> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let secs = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// Every process of the host.
fn processes() -> HashMap<u32, Proc> {
    let page = rustix::param::page_size() as u64;
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, read_proc(pid, page)?)))
        .collect()
}

/// The processes descended from `root` (not `root` itself).
fn descendants(root: u32, children: &HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).into_iter().flatten() {
            out.push(c);
            stack.push(c);
        }
    }
    out
}

/// Reads `/proc` for the containers `ctx` runs now.
fn sample(ctx: &Ctx) -> Sample {
    let procs = processes();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, p) in &procs {
        children.entry(p.parent).or_default().push(pid);
    }
    let own_netns = std::fs::metadata("/proc/self/ns/net")
        .map(|m| m.ino())
        .unwrap_or(0);
    let pods = ctx.pods.lock().map(|p| p.clone()).unwrap_or_default();
    let boot = boot_time();
    let mut out = Sample {
        time: Some(SystemTime::now()),
        ..Default::default()
    };
    let mut node_pids: HashSet<u32> = procs
        .iter()
        .filter(|(_, p)| p.netns == own_netns)
        .map(|(&pid, _)| pid)
        .collect();
    for ((ns, pod), entry) in &pods {
        for (name, c) in &entry.containers {
            let Some(r) = &c.running else { continue };
            let mut u = Usage::default();
            for pid in descendants(r.pid, &children) {
                if let Some(p) = procs.get(&pid) {
                    u += p.usage;
                }
                node_pids.insert(pid);
            }
            let key = (ns.clone(), pod.clone(), name.clone());
            if let (Some(boot), Some(p)) = (boot, procs.get(&r.pid)) {
                let since_boot = Duration::from_millis(p.start_ticks * 1000 / TICKS_PER_SECOND);
                out.starts.insert(key.clone(), boot + since_boot);
            }
            out.containers.insert(key, u);
        }
    }
    for pid in node_pids {
        if let Some(p) = procs.get(&pid) {
            out.node += p.usage;
        }
    }
    out
}

impl Stats {
    fn push(&self, s: Sample) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(s);
            while q.len() > 2 {
                q.pop_front();
            }
        }
    }

    /// Samples every [`INTERVAL`] until aborted.
    pub(crate) async fn run(ctx: Arc<Ctx>) {
        loop {
            let c = ctx.clone();
            if let Ok(s) = tokio::task::spawn_blocking(move || sample(&c)).await {
                ctx.stats.push(s);
            }
            tokio::time::sleep(INTERVAL).await;
        }
    }

    /// The Summary API's answer from the last two samples, after a new one if the
    /// newest is more than [`FRESH`] old.
    pub(crate) fn summary(&self, ctx: &Ctx) -> Value {
        let newest = self
            .0
            .lock()
            .ok()
            .and_then(|q| q.back().and_then(|s| s.time));
        if newest.is_none_or(|t| t.elapsed().is_ok_and(|age| age > FRESH)) {
            self.push(sample(ctx));
        }
        let (prev, last) = match self.0.lock() {
            Ok(q) if q.len() == 2 => (Some(q[0].clone()), q[1].clone()),
            Ok(q) => (None, q.back().cloned().unwrap_or_default()),
            Err(_) => (None, Sample::default()),
        };
        let time = last.time.map(crate::time::rfc3339).unwrap_or_default();
        let elapsed = match (&prev, last.time) {
            (Some(p), Some(t)) => p.time.and_then(|pt| t.duration_since(pt).ok()),
            _ => None,
        };
        // Nanocores over `window` of the CPU time `used` in it.
        let per_window = |used: u64, window: Duration| -> Option<u64> {
            let ns = window.as_nanos();
            (ns > 0).then(|| {
                let cores = u128::from(used) * 1_000_000_000 / ns;
                u64::try_from(cores).unwrap_or(u64::MAX)
            })
        };
        let rate = |now: Usage, before: Option<Usage>| -> Option<u64> {
            per_window(now.cpu_ns.saturating_sub(before?.cpu_ns), elapsed?)
        };
        // A container's rate: since the sample before, or since its start when it was
        // not running then.
        let container_rate = |key: &(String, String, String), u: Usage, before: Option<Usage>| {
            let since_start = || {
                let start = last.starts.get(key)?;
                let started_after_prev = prev
                    .as_ref()
                    .and_then(|p| p.time)
                    .is_none_or(|pt| *start >= pt);
                let window = last.time?.duration_since(*start).ok()?;
                started_after_prev
                    .then(|| per_window(u.cpu_ns, window))
                    .flatten()
            };
            match before {
                Some(_) => rate(u, before),
                None => since_start(),
            }
        };
        let cpu_at = |u: Usage, rate: Option<u64>| {
            let mut c = json!({"time": time, "usageCoreNanoSeconds": u.cpu_ns});
            if let Some(r) = rate {
                c["usageNanoCores"] = json!(r);
            }
            c
        };
        let cpu = |u: Usage, before: Option<Usage>| cpu_at(u, rate(u, before));
        let memory = |u: Usage| {
            json!({"time": time, "workingSetBytes": u.rss_bytes, "rssBytes": u.rss_bytes,
                "usageBytes": u.rss_bytes})
        };
        // Per pod: its containers' (name, usage, CPU rate).
        type Ctrs = Vec<(String, Usage, Option<u64>)>;
        let mut by_pod: HashMap<(String, String), Ctrs> = HashMap::new();
        for (key, u) in &last.containers {
            let before = prev.as_ref().and_then(|p| p.containers.get(key).copied());
            let (ns, pod, name) = key;
            by_pod.entry((ns.clone(), pod.clone())).or_default().push((
                name.clone(),
                *u,
                container_rate(key, *u, before),
            ));
        }
        let entries = ctx.pods.lock().map(|p| p.clone()).unwrap_or_default();
        let pods: Vec<Value> = by_pod
            .into_iter()
            .map(|((ns, name), mut ctrs)| {
                ctrs.sort_by(|a, b| a.0.cmp(&b.0));
                let mut total = Usage::default();
                let mut total_rate = Some(0u64);
                for (_, u, rate) in &ctrs {
                    total += *u;
                    total_rate = total_rate.zip(*rate).map(|(a, b)| a.saturating_add(b));
                }
                let containers: Vec<Value> = ctrs
                    .iter()
                    .map(|(n, u, rate)| {
                        json!({"name": n, "cpu": cpu_at(*u, *rate), "memory": memory(*u)})
                    })
                    .collect();
                let uid = entries
                    .get(&(ns.clone(), name.clone()))
                    .map(|e| e.uid.clone())
                    .unwrap_or_default();
                json!({
                    "podRef": {"name": name, "namespace": ns, "uid": uid},
                    "cpu": cpu_at(total, total_rate),
                    "memory": memory(total),
                    "containers": containers,
                })
            })
            .collect();
        json!({
            "node": {
                "nodeName": ctx.args.node_name,
                "cpu": cpu(last.node, prev.as_ref().map(|p| p.node)),
                "memory": memory(last.node),
            },
            "pods": pods,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_from_proc() {
        let procs = processes();
        let me = procs[&std::process::id()];
        assert!(me.usage.rss_bytes > 0);
        assert_eq!(me.parent, std::os::unix::process::parent_id());
        // Its start, from boot time and its start ticks: before now, after boot.
        let boot = boot_time().unwrap();
        let start = boot + Duration::from_millis(me.start_ticks * 1000 / TICKS_PER_SECOND);
        assert!(me.start_ticks > 0 && start <= SystemTime::now() + Duration::from_secs(1));
        let mut children = HashMap::new();
        children.insert(1, vec![2, 3]);
        children.insert(3, vec![4]);
        let mut d = descendants(1, &children);
        d.sort_unstable();
        assert_eq!(d, [2, 3, 4]);
    }
}
