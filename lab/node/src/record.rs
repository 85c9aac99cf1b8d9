//! `DATA/pods/<uid>/sandbox.json`: what a pod has on this node, written whenever it
//! changes, so `kubewire lab exec ns/pod` can enter a container and a restarted node
//! adopts the pod instead of wiring it twice.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::Error;

/// One container's running process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The process id of the container's `container-init` (leader of its process group;
    /// it is in the container's namespaces).
    pub pid: u32,
    /// The current log file (CRI format).
    pub log: String,
    /// Restarts so far.
    #[serde(default, rename = "restartCount")]
    pub restart_count: u32,
    /// When the current process started (RFC 3339).
    #[serde(default, rename = "startedAt")]
    pub started_at: String,
    /// `/proc/PID/stat` start time, so a reused pid is never mistaken for the container.
    #[serde(default, rename = "startTicks")]
    pub start_ticks: u64,
    /// container-init's spec (for `container-init enter`).
    #[serde(default)]
    pub spec: String,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxFile {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The pod's network namespace file (`/run/netns/...`); the node's for hostNetwork.
    pub netns: String,
    /// The named pod namespace, empty for hostNetwork pods.
    #[serde(default, rename = "netnsName")]
    pub netns_name: String,
    /// `CNI_CONTAINERID` of the attachment.
    #[serde(default, rename = "sandboxId")]
    pub sandbox_id: String,
    /// The network name the attachment was made on (for DEL).
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default, rename = "hostNetwork")]
    pub host_network: bool,
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
}

impl SandboxFile {
    /// The pod as `namespace/name`, for logs.
    pub(crate) fn pod_key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join("sandbox.json")
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<(), Error> {
        let path = Self::path(dir);
        let tmp = dir.join(".sandbox.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).unwrap_or_default())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))
    }

    pub(crate) fn read(dir: &Path) -> Option<Self> {
        let b = std::fs::read(Self::path(dir)).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

/// Every sandbox under `DATA/pods`, by pod uid.
pub(crate) fn load_all(data_dir: &Path) -> BTreeMap<String, SandboxFile> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(data_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some(s) = SandboxFile::read(&entry.path()) {
            out.insert(s.uid.clone(), s);
        } else if let Some(uid) = entry.file_name().to_str() {
            // A pod dir without a readable sandbox (crash mid-setup): still ours to clean.
            out.insert(
                uid.to_owned(),
                SandboxFile {
                    uid: uid.to_owned(),
                    ..Default::default()
                },
            );
        }
    }
    out
}

/// The start time (clock ticks after boot) of a live, non-zombie process.
pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The parent pid of a process.
pub(crate) fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether the recorded process is still the container's.
pub(crate) fn alive(rec: &ContainerRecord) -> bool {
    rec.pid != 0
        && start_ticks(rec.pid).is_some_and(|t| rec.start_ticks == 0 || t == rec.start_ticks)
}

/// Sends `sig` to a container's process group (container-init leads it).
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 0
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
    }
}

/// The container's main process (container-init's child, from the pid file next to
/// its spec), while container-init is still its parent.
pub(crate) fn main_pid(rec: &ContainerRecord) -> Option<u32> {
    let pid_file = Path::new(&rec.spec).with_extension("pid");
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|p| parent(*p) == Some(rec.pid))
}

/// Kills a container: container-init's process group, and the main process's own
/// group when it leads one (a TTY container's process is in a session of its own).
pub(crate) fn kill_container(rec: &ContainerRecord) {
    if let Some(main) = main_pid(rec).and_then(|p| i32::try_from(p).ok()) {
        let pid = nix::unistd::Pid::from_raw(main);
        if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
            let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        }
    }
    signal_group(rec.pid, Signal::SIGKILL);
}

/// Kills every live container of `sb`.
pub(crate) fn kill_containers(sb: &SandboxFile) {
    for c in sb.containers.values().filter(|c| alive(c)) {
        kill_container(c);
    }
}

/// Kills (SIGKILL, whole process group) every container recorded under `data_dir`:
/// for `lab down` and tests, which remove a node without letting it drain its pods.
/// Network namespaces are left to the caller (they carry the lab's name prefix).
pub fn kill_all(data_dir: &Path) {
    load_all(data_dir).values().for_each(kill_containers);
    remove_host_mount_points(data_dir);
}

/// Removes the mount points the node under `data_dir` made on the host for its pods'
/// volumes (those still empty), as when the pods are deleted: for `lab down`, which
/// stops the node without letting it drain its pods.
pub fn remove_host_mount_points(data_dir: &Path) {
    for entry in std::fs::read_dir(data_dir.join("pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        crate::volumes::remove_mount_points(&entry.path());
    }
}
