//! Finishing DEL off its critical path.
//!
//! Unregistering a veth makes the kernel wait for RCU grace periods: 17-30 ms on these
//! machines, during which a runtime (and the pod deletion behind it) would sit waiting.
//! DEL takes the device down (routes gone, pod cut off) and frees the address at once,
//! then hands the unregister to a detached copy of this binary: the plugin process that
//! the runtime waits for exits right away. If that copy never runs, the device stays
//! down and harmless until GC sweeps it or a new ADD of the same attachment replaces it.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use tracing::warn;

use crate::wiring::{self, Unregister};

/// The variable that turns a plugin process into the reaper of one device.
const ENV: &str = "KUBEWIRE_CNI_UNREGISTER";

/// Starts the detached reaper for `u`. Nothing here fails DEL, which has done its
/// part: if this binary cannot be found the device is left (down) for GC; if the reaper
/// cannot be started, the device is unregistered here, on DEL's path.
pub(crate) async fn spawn(u: &Unregister) {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return warn!(error = %e, "cannot find own binary; leaving {} to GC", u.name),
    };
    let spawned = Command::new(exe)
        .arg0(crate::PLUGIN_NAME)
        .env_clear()
        .env(ENV, format!("{}:{}", u.index, u.name))
        // No inherited pipes: the runtime reads stdout until EOF.
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a runtime that kills the plugin's group spares it.
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        warn!(error = %e, "starting the background unregister; unregistering {} now", u.name);
        if let Err(e) = wiring::unregister(u).await {
            warn!(error = %e, "unregistering {}", u.name);
        }
    }
}

/// In the reaper process: unregisters the device named in the environment and returns
/// the exit code; `None` in a normal plugin process.
pub(crate) fn run_if_asked() -> Option<i32> {
    let value = std::env::var(ENV).ok()?;
    let (index, name) = value.split_once(':')?;
    let u = Unregister {
        index: index.parse().ok()?,
        name: name.to_owned(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    Some(match runtime.block_on(wiring::unregister(&u)) {
        Ok(()) => 0,
        Err(_) => 1,
    })
}
