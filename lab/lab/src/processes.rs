//! The lab's processes: started detached from the terminal, each with a log file, and
//! recorded in the run directory so that `lab down` can stop them even after the `lab up`
//! that started them was killed.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{Error, Result};

const PROCESS_FILE: &str = "processes.json";

/// A process the lab started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// What it is: `apiserver`, `controllers`, `node-1/node`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22): together
    /// with the pid it names the process even after the pid has been reused.
    pub start_time: u64,
    /// Where its output goes.
    pub log: PathBuf,
}

impl Process {
    /// Whether this very process is still running (not a zombie, not a reused pid).
    pub fn alive(&self) -> bool {
        proc_start_time(self.pid).is_some_and(|t| t == self.start_time)
    }
}

/// Starts `binary args` in the network namespace `netns` (the host's when `None`), in its
/// own process group so a Ctrl-C on the terminal reaches only `lab up`, which then stops
/// everything in order. Output goes to `log`.
pub(crate) fn spawn(
    name: &str,
    netns: Option<&str>,
    binary: &Path,
    args: &[std::ffi::OsString],
    log: &Path,
) -> Result<Process> {
    let out =
        fs::File::create(log).map_err(|e| Error::io(format!("creating {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
    let mut cmd = Command::new(binary);
    cmd.args(args)
        // Two malloc arenas, not eight per core: the components are small async
        // services, and glibc's per-thread arenas were most of the API server's memory.
        .env("MALLOC_ARENA_MAX", "2")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = match netns {
        // A child starts in the namespace of the thread that forks it.
        Some(ns) => netlink::netns::run_in(ns, move || cmd.spawn())?,
        None => cmd.spawn(),
    }
    .map_err(|e| Error::io(format!("starting {name} ({})", binary.display()), e))?;
    let pid = child.id();
    // Dropping a `Child` neither kills nor waits: `lab up` in the foreground reaps it
    // (`reap`); after `--detach` it is re-parented to init, which does.
    drop(child);
    let start_time = proc_start_time(pid).unwrap_or(0);
    debug!(name, pid, "started");
    Ok(Process {
        name: name.to_owned(),
        pid,
        start_time,
        log: log.to_owned(),
    })
}

/// The start time of `pid` (field 22 of `/proc/PID/stat`), `None` if it is gone or a zombie.
fn proc_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // `rest` starts at field 3 (state).
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(22 - 3)?.parse().ok()
}

/// The record of the lab's processes in its run directory.
pub(crate) struct Registry {
    path: PathBuf,
}

impl Registry {
    pub(crate) fn new(state_dir: &Path) -> Registry {
        Registry {
            path: state_dir.join(PROCESS_FILE),
        }
    }

    pub(crate) fn load(&self) -> Vec<Process> {
        fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Adds `p`, writing the file atomically: a crash leaves the old or the new list.
    pub(crate) fn add(&self, p: Process) -> Result<()> {
        let mut all = self.load();
        all.retain(|q| q.name != p.name);
        all.push(p);
        let tmp = self.path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&all).expect("process list serializes");
        fs::write(&tmp, json).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, &self.path)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }
}

/// Stops `procs`: SIGTERM to each process group, up to `grace` for them to exit, then
/// SIGKILL. Only processes that are still the ones recorded are signalled.
pub(crate) fn stop_all(procs: &[Process], grace: Duration) {
    let running: Vec<&Process> = procs.iter().filter(|p| p.alive()).collect();
    for p in &running {
        signal_group(p, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && running.iter().any(|p| p.alive()) {
        reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in running.iter().filter(|p| p.alive()) {
        warn!(name = %p.name, pid = p.pid, "did not stop in time; killing it");
        signal_group(p, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && running.iter().any(|p| p.alive()) {
        reap();
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Signals the process and its group (a pod runner's containers, a CNI plugin it runs).
fn signal_group(p: &Process, sig: Signal) {
    let Ok(pid) = i32::try_from(p.pid) else {
        return;
    };
    let _ = kill(Pid::from_raw(-pid), sig);
    let _ = kill(Pid::from_raw(pid), sig);
}

/// Collects exited children of this process (those `lab up` started), so they do not
/// linger as zombies while it runs.
pub(crate) fn reap() {
    use nix::sys::wait::{WaitPidFlag, waitpid};
    while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// Kills every process inside the network namespaces `names`: pods' containers outlive
/// a killed pod runner, and a namespace with processes in it stays alive (with its links)
/// after its name is removed. SIGTERM to all of them at once, up to 1.5 s, then SIGKILL.
/// Returns how many there were.
pub(crate) fn kill_in_netns(names: &[String]) -> usize {
    use std::collections::HashSet;
    use std::os::unix::fs::MetadataExt;
    let keys: HashSet<(u64, u64)> = names
        .iter()
        .filter_map(|n| fs::metadata(netlink::netns::path(n)).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    if keys.is_empty() {
        return 0;
    }
    let members = || -> Vec<i32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| keys.contains(&(m.dev(), m.ino())))
            })
            .collect()
    };
    let first = members().len();
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        let pids = members();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), sig);
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline && !members().is_empty() {
            reap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_names_this_process() {
        let me = std::process::id();
        let t = proc_start_time(me).expect("own stat");
        assert!(t > 0);
        let p = Process {
            name: "me".into(),
            pid: me,
            start_time: t,
            log: PathBuf::new(),
        };
        assert!(p.alive());
        let reused = Process {
            start_time: t + 1,
            ..p
        };
        assert!(
            !reused.alive(),
            "a different start time is a different process"
        );
    }
}
