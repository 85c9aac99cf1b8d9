//! The long-running commands cap glibc's malloc arenas themselves (a re-exec with
//! `MALLOC_ARENA_MAX=2`, same pid and arguments), so their memory figures in
//! BENCHMARKS.md hold however they are started, not only under `kubewire lab up`.

use std::process::Stdio;
use std::time::Duration;

use e2e::wait_until;

#[test]
fn the_api_server_runs_with_capped_malloc_arenas_when_started_without() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = e2e::apiserver_command(dir.path(), None)
        .env_remove("MALLOC_ARENA_MAX")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_until(Duration::from_secs(30), || {
        dir.path().join("admin.kubeconfig").exists()
    });
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(ready, "the API server did not get ready");
    assert!(
        environ
            .split(|b| *b == 0)
            .any(|v| v == b"MALLOC_ARENA_MAX=2"),
        "environment: {}",
        String::from_utf8_lossy(&environ)
    );
    // The same process (pid) with the same arguments.
    assert!(
        String::from_utf8_lossy(&cmdline).contains("apiserver\0--data-dir"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
}
