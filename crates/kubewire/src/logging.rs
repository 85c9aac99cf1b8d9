//! Logging setup: `RUST_LOG` picks the level, the flag picks human or JSON lines.
//! Logs go to stderr so that stdout stays for the command's own output (and for the
//! CNI protocol, which owns stdout when kubewire runs as a plugin).

use tracing_subscriber::EnvFilter;

pub(crate) fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
