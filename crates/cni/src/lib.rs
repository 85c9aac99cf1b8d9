//! The kubewire CNI plugin (CNI specification 1.1.0).
//!
//! The same `kubewire` binary speaks the CNI protocol when it is invoked through a link
//! named `kubewire-cni` or with `CNI_COMMAND` set: configuration on stdin, parameters in
//! `CNI_*` variables, a result or an error as JSON on stdout, logs on stderr only.
//!
//! - [`spec`]: the protocol as data (versions, environment, config, results, errors);
//! - [`ipam`]: which pod has which address, safe across concurrent plugin processes;
//! - [`wiring`]: the routed veth pair in the kernel;
//! - [`hostport`]: `hostPort` mappings in the node's nftables;
//! - [`install`]: `kubewire install-cni`, which puts the plugin on a node from a container;
//! - [`policy`]: ADD waits until the agent has the new pod's network policy in force;
//! - commands in `plugin`, and the background unregister of DEL in `reaper`.

pub mod capture;
pub mod hostport;
pub mod install;
pub mod ipam;
mod plugin;
pub mod policy;
mod reaper;
pub mod spec;
pub mod wiring;

use std::io::{Read, Write};

pub use spec::{CniError, Version};

/// The name the binary answers to as a CNI plugin (the `type` in configurations).
pub const PLUGIN_NAME: &str = "kubewire-cni";

/// Runs one CNI invocation from the process's environment and stdin, prints the result
/// or error on stdout, and returns the exit code.
pub fn main() -> i32 {
    if let Some(code) = reaper::run_if_asked() {
        return code;
    }
    let mut stdin = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut stdin) {
        let err = CniError::new(spec::code::IO_FAILURE, "reading stdin", e.to_string());
        return print_error(&err, &stdin);
    }
    let env = match spec::Env::from_vars(std::env::vars()) {
        Ok(env) => env,
        Err(err) => return print_error(&err, &stdin),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return print_error(
                &CniError::new(spec::code::IO_FAILURE, "starting runtime", e.to_string()),
                &stdin,
            );
        }
    };
    match runtime.block_on(plugin::run(&env, &stdin)) {
        Ok(output) => {
            if let Some(value) = output {
                let mut out = std::io::stdout().lock();
                let _ = serde_json::to_writer(&mut out, &value);
                let _ = out.write_all(b"\n");
            }
            0
        }
        Err(err) => print_error(&err, &stdin),
    }
}

/// Prints an error in the caller's `cniVersion` (when it is one we speak) and returns
/// the process exit code.
fn print_error(err: &CniError, stdin: &[u8]) -> i32 {
    let version = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(str::to_owned)
        })
        .filter(|v| spec::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| Version::V1_1_0.as_str().to_owned());
    tracing::error!(code = err.code, "{err}");
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &err.to_json(&version));
    let _ = out.write_all(b"\n");
    1
}
