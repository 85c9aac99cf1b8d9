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
//! their interval: a container needs two samples before it has one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::Ctx;

/// How often the node samples its processes (metrics-server's default resolution is
/// 15 s, cadvisor's housekeeping 10 s).
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);
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
    })
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
            out.containers
                .insert((ns.clone(), pod.clone(), name.clone()), u);
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

    /// The Summary API's answer from the last two samples.
    pub(crate) fn summary(&self, ctx: &Ctx) -> Value {
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
        let rate = |now: Usage, before: Option<Usage>| -> Option<u64> {
            let (before, el) = (before?, elapsed?);
            let ns = el.as_nanos();
            (ns > 0).then(|| {
                let cores =
                    u128::from(now.cpu_ns.saturating_sub(before.cpu_ns)) * 1_000_000_000 / ns;
                u64::try_from(cores).unwrap_or(u64::MAX)
            })
        };
        let cpu = |u: Usage, before: Option<Usage>| {
            let mut c = json!({"time": time, "usageCoreNanoSeconds": u.cpu_ns});
            if let Some(r) = rate(u, before) {
                c["usageNanoCores"] = json!(r);
            }
            c
        };
        let memory = |u: Usage| {
            json!({"time": time, "workingSetBytes": u.rss_bytes, "rssBytes": u.rss_bytes,
                "usageBytes": u.rss_bytes})
        };
        // Per pod: its containers' (name, usage, usage in the sample before).
        type Ctrs = Vec<(String, Usage, Option<Usage>)>;
        let mut by_pod: HashMap<(String, String), Ctrs> = HashMap::new();
        for ((ns, pod, name), u) in &last.containers {
            let before = prev.as_ref().and_then(|p| {
                p.containers
                    .get(&(ns.clone(), pod.clone(), name.clone()))
                    .copied()
            });
            by_pod
                .entry((ns.clone(), pod.clone()))
                .or_default()
                .push((name.clone(), *u, before));
        }
        let entries = ctx.pods.lock().map(|p| p.clone()).unwrap_or_default();
        let pods: Vec<Value> = by_pod
            .into_iter()
            .map(|((ns, name), mut ctrs)| {
                ctrs.sort_by(|a, b| a.0.cmp(&b.0));
                let mut total = Usage::default();
                let mut total_before = Some(Usage::default());
                for (_, u, before) in &ctrs {
                    total += *u;
                    total_before = total_before.zip(*before).map(|(mut a, b)| {
                        a += b;
                        a
                    });
                }
                let containers: Vec<Value> = ctrs
                    .iter()
                    .map(|(n, u, before)| {
                        json!({"name": n, "cpu": cpu(*u, *before), "memory": memory(*u)})
                    })
                    .collect();
                let uid = entries
                    .get(&(ns.clone(), name.clone()))
                    .map(|e| e.uid.clone())
                    .unwrap_or_default();
                json!({
                    "podRef": {"name": name, "namespace": ns, "uid": uid},
                    "cpu": cpu(total, total_before),
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
        let mut children = HashMap::new();
        children.insert(1, vec![2, 3]);
        children.insert(3, vec![4]);
        let mut d = descendants(1, &children);
        d.sort_unstable();
        assert_eq!(d, [2, 3, 4]);
    }
}
