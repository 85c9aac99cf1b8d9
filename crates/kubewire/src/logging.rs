//! Logging setup: `RUST_LOG` picks the level, the flag picks human or JSON lines.
//! Logs go to stderr so that stdout stays for the command's own output (and for the
//! CNI protocol, which owns stdout when kubewire runs as a plugin).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// `default` is the level when `RUST_LOG` is unset.
pub(crate) fn init(json: bool, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only for a person at a terminal: the lab's components log to files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Logging for CNI mode: stderr only (stdout carries the protocol), no colours (the
/// runtime captures it), warnings and up unless `RUST_LOG` says otherwise.
pub(crate) fn init_cni() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
}
