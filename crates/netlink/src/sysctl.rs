//! Per-namespace sysctls under `/proc/sys/net`.
//!
//! `/proc/sys/net` shows the network namespace of the thread that opens it, so writes
//! happen on a thread inside the target namespace ([`crate::netns::run_in`]).

use std::path::PathBuf;

use crate::{Error, Result, netns};

fn key_path(key: &str) -> PathBuf {
    PathBuf::from("/proc/sys").join(key.replace('.', "/"))
}

/// Writes `value` to sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) in namespace
/// `netns_name`. Only `net.*` keys are namespaced, so only those are accepted: writing
/// anything else would change the host.
pub fn set_in(netns_name: &str, key: &str, value: &str) -> Result<()> {
    if !key.starts_with("net.") {
        return Err(Error::HostSysctl(key.to_owned()));
    }
    let path = key_path(key);
    let value = value.to_owned();
    let key = key.to_owned();
    netns::run_in(netns_name, move || {
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| Error::sys(format!("setting sysctl {key}"), e))
    })?
}

/// Reads sysctl `key` in namespace `netns_name`.
pub fn get_in(netns_name: &str, key: &str) -> Result<String> {
    let path = key_path(key);
    let key = key.to_owned();
    netns::run_in(netns_name, move || {
        std::fs::read_to_string(&path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| Error::sys(format!("reading sysctl {key}"), e))
    })?
}
