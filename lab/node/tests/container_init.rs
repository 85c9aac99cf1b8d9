//! `kubewire container-init` alone: the contract between it and the node that starts it.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::json;

/// Kills container-init's process group (it leads one) when the test ends.
struct Group(u32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// container-init's first byte on stdout says its attach socket is bound (and the
/// container's namespaces entered). The node
/// calls the container running only after it, and `kubectl run -it` attaches the moment
/// the pod runs: a client connecting right after the byte must be served.
#[test]
fn attach_and_namespaces_are_ready_once_container_init_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("c.json");
    let spec_json = json!({
        "netns": null,
        "mounts": [],
        "hostname": "kw-init-test",
        "argv": ["sleep", "30"],
        "env": [],
        "workdir": null,
        "log": dir.path().join("c.log"),
        "exit_file": dir.path().join("c.exit"),
    });
    std::fs::write(&spec, spec_json.to_string()).unwrap();
    let mut child = Command::new(e2e::kubewire_bin())
        .args([node::init::SUBCOMMAND, "run"])
        .arg(&spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _group = Group(child.id());
    let mut byte = [0u8; 1];
    let n = child.stdout.take().unwrap().read(&mut byte).unwrap();
    assert_eq!(
        n, 1,
        "container-init closed its stdout without saying it serves attaches"
    );
    let attached = UnixStream::connect_addr(&node::init::attach_address(child.id()).unwrap());
    assert!(
        attached.is_ok(),
        "no attach socket after container-init said it was bound: {attached:?}"
    );
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    let pid = child.id().to_string();
    for kind in ["mnt", "uts"] {
        assert_ne!(
            ns(&pid, kind),
            ns("self", kind),
            "container-init was not yet in its own {kind} namespace"
        );
    }
    // It keeps running after its stdout is gone (it points it at /dev/null).
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        child.try_wait().unwrap().is_none(),
        "container-init ended early"
    );
}
