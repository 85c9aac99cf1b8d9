//! Helpers for kubewire's root-only, namespaced end-to-end tests.
//!
//! Every test that touches the kernel calls [`require_root`] first: such tests fail,
//! never skip, when not run as root (a skipped root test once hid a broken feature in
//! ztunnel for months). Every namespace or lab a test makes is owned by a guard that
//! removes it on drop, so a panicking test still cleans up, and every name is unique
//! per process and call, so tests run in parallel without colliding.

#![allow(clippy::disallowed_methods)] // tests run real programs and read their output

pub mod cluster;
pub mod cni;
pub mod gateway_conformance;
pub mod netpol;
pub mod running;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Polls `done` every 20 ms until it returns true or `timeout` passes; returns whether
/// it did. For state that the system reaches asynchronously; never a timing assertion.
pub fn wait_until(timeout: std::time::Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Panics unless the process runs as root. Call it first in every namespaced test.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "this test needs root (it creates network namespaces); run it as root, it does not skip"
    );
}

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid>-<n>`. Short enough for lab
/// names (and the interface names derived from them).
pub fn unique_name(prefix: &str) -> String {
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{}-{n}", std::process::id())
}

/// A network namespace that exists for the guard's lifetime.
#[derive(Debug)]
pub struct TestNetns {
    name: String,
}

impl TestNetns {
    /// Creates a uniquely named, empty namespace (loopback up).
    pub fn new(label: &str) -> Self {
        require_root();
        let name = unique_name(&format!("kwt-{label}-"));
        netlink::netns::create(&name)
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        TestNetns { name }
    }

    /// The namespace's name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Starts a program inside the namespace and returns it running; the caller kills it
    /// (see [`KillOnDrop`]).
    pub fn spawn(&self, program: &str, args: &[&str]) -> KillOnDrop {
        let (program, args): (String, Vec<String>) = (
            program.to_owned(),
            args.iter().map(|s| (*s).to_owned()).collect(),
        );
        let child = netlink::netns::run_in(&self.name, move || {
            Command::new(&program)
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .expect("entering test namespace")
        .expect("starting program in test namespace");
        KillOnDrop(child)
    }

    /// Runs `sh -c CMD` inside the namespace and returns its stdout; panics, showing
    /// stderr, if it fails (for setting up links in tests, where `ip` is fine).
    pub fn sh(&self, cmd: &str) -> String {
        let out = self.run("sh", &["-c", cmd]);
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a program inside the namespace and returns its output.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let (program, args): (String, Vec<String>) = (
            program.to_owned(),
            args.iter().map(|s| (*s).to_owned()).collect(),
        );
        netlink::netns::run_in(&self.name, move || {
            Command::new(&program).args(&args).output()
        })
        .expect("entering test namespace")
        .expect("running program in test namespace")
    }
}

/// Starts `program` inside the named namespace `netns`, its stdout and stderr appended
/// to `log` (read it when a test fails), and returns it running.
pub fn spawn_in<S: AsRef<std::ffi::OsStr>>(
    netns: &str,
    program: &Path,
    args: &[S],
    log: &Path,
) -> KillOnDrop {
    let (program, args): (PathBuf, Vec<std::ffi::OsString>) = (
        program.to_owned(),
        args.iter().map(|s| s.as_ref().to_owned()).collect(),
    );
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    let err = out.try_clone().expect("log file");
    let child = netlink::netns::run_in(netns, move || {
        Command::new(&program)
            .args(&args)
            .stdout(out)
            .stderr(err)
            .spawn()
    })
    .expect("entering namespace")
    .expect("starting program in namespace");
    KillOnDrop(child)
}

/// A child process that is killed and reaped when the guard drops, so no test leaves a
/// server running in a namespace it is about to delete.
#[derive(Debug)]
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        if let Err(e) = netlink::netns::delete(&self.name) {
            eprintln!("warning: removing test namespace {}: {e}", self.name);
        }
    }
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e is two levels down")
        .to_owned()
}

/// The manifests `paths` (relative to `examples/`, the talk's manifests) as one
/// multi-document manifest, in the order given, for [`running::RunningLab::apply`].
pub fn examples(paths: &[&str]) -> String {
    let dir = workspace_root().join("examples");
    paths
        .iter()
        .map(|p| {
            let path = dir.join(p);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Path of the `kubewire` binary built alongside the tests (target/<profile>/kubewire).
pub fn kubewire_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBEWIRE_BIN") {
        return PathBuf::from(path);
    }
    // Test binaries live in target/<profile>/deps/; the binary one level up.
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("kubewire");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p kubewire`, or run the tests with --workspace)",
        bin.display()
    );
    bin
}

/// `kubewire apiserver` with its data in `data_dir`, on a free port of the host's
/// loopback, and also at `underlay` inside the namespace named `netns` when given (the
/// lab's underlay), from the server's own `Args`.
pub fn apiserver_command(data_dir: &Path, netns: Option<(&str, std::net::SocketAddr)>) -> Command {
    let args = apiserver::Args {
        data_dir: data_dir.to_owned(),
        listen: vec!["127.0.0.1:0".parse().expect("an address")],
        listen_in_netns: netns
            .into_iter()
            .map(|(name, addr)| apiserver::NetnsListen {
                netns: netlink::netns::path(name),
                addr,
            })
            .collect(),
        ..k8s::parse_flags::<apiserver::Args>(&["--data-dir", "-"])
    };
    let mut cmd = Command::new(kubewire_bin());
    cmd.arg("apiserver").args(args.to_args());
    cmd
}

/// Runs `kubewire ARGS...` and returns its output.
pub fn kubewire(args: &[&str]) -> Output {
    Command::new(kubewire_bin())
        .args(args)
        .output()
        .expect("running kubewire")
}

/// Runs `kubewire ARGS...` and panics, showing its stderr, unless it succeeds.
pub fn kubewire_ok(args: &[&str]) -> String {
    let out = kubewire(args);
    assert!(
        out.status.success(),
        "kubewire {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A lab's network that exists for the guard's lifetime (`kubewire lab up
/// --network-only` ... `lab down`): tests bring their own control plane and agents.
#[derive(Debug)]
pub struct TestLab {
    name: String,
}

impl TestLab {
    /// Starts a uniquely named lab with `nodes` nodes.
    pub fn up(nodes: u8) -> Self {
        require_root();
        let name = unique_name("t");
        let lab = TestLab { name };
        kubewire_ok(&[
            "lab",
            "up",
            "--name",
            &lab.name,
            "--nodes",
            &nodes.to_string(),
            "--network-only",
        ]);
        lab
    }

    /// The lab's name (`--name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command in a lab member (`node-1`, `outside`, ...) through `kubewire lab exec`.
    pub fn exec(&self, target: &str, argv: &[&str]) -> Output {
        let mut args = vec!["lab", "exec", "--name", &self.name, target, "--"];
        args.extend_from_slice(argv);
        kubewire(&args)
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let out = kubewire(&["lab", "down", "--name", &self.name]);
        if !out.status.success() {
            eprintln!(
                "warning: lab down {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The host's networking as `scripts/host-snapshot` prints it: one section per kind of
/// state (links, addresses, routes, nftables, iptables, ip6tables, network namespaces,
/// sysctl), normalised so that two snapshots differ only where something changed.
pub fn host_snapshot() -> String {
    let script = workspace_root().join("scripts/host-snapshot");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}): {}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a namespace name is one the tests make: `kwt-...` namespaces and the
/// `t<pid>-<n>-...` namespaces of test labs.
pub fn is_test_namespace(name: &str) -> bool {
    if name.starts_with("kwt-") {
        return true;
    }
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let mut parts = rest.splitn(3, '-');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_some()
}

/// A host snapshot without the namespaces of tests (which other tests running in
/// parallel create and remove at any time), for a test that checks only what it made.
pub fn strip_test_namespaces(snapshot: &str) -> String {
    snapshot
        .lines()
        .filter(|l| !is_test_namespace(l))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `snapshot`'s section `heading` (up to the next `# ` heading).
    fn section<'a>(snapshot: &'a str, heading: &str) -> Vec<&'a str> {
        snapshot
            .lines()
            .skip_while(|l| *l != format!("# {heading}"))
            .skip(1)
            .take_while(|l| !l.starts_with("# "))
            .collect()
    }

    #[test]
    fn host_snapshot_prints_every_section_and_sees_a_new_namespace() {
        require_root();
        let netns = TestNetns::new("snap");
        let snapshot = host_snapshot();
        let headings: Vec<&str> = snapshot.lines().filter(|l| l.starts_with("# ")).collect();
        assert_eq!(
            headings,
            [
                "# links",
                "# addresses",
                "# routes",
                "# nftables",
                "# iptables",
                "# ip6tables",
                "# network namespaces",
                "# sysctl",
            ],
            "{snapshot}"
        );
        assert!(
            section(&snapshot, "links")
                .iter()
                .any(|l| l.starts_with("lo: ")),
            "{snapshot}"
        );
        assert!(
            section(&snapshot, "addresses").contains(&"lo inet 127.0.0.1/8"),
            "{snapshot}"
        );
        assert!(
            section(&snapshot, "network namespaces").contains(&netns.name()),
            "{snapshot}"
        );
        let sysctl = section(&snapshot, "sysctl");
        for key in ["net.ipv4.ip_forward = ", "net.ipv6.conf.all.forwarding = "] {
            assert!(sysctl.iter().any(|l| l.starts_with(key)), "{snapshot}");
        }

        let name = netns.name().to_owned();
        drop(netns);
        let after = host_snapshot();
        assert!(
            !section(&after, "network namespaces").contains(&name.as_str()),
            "{after}"
        );
        // Nothing else changed in between, and nothing that changes by itself (counters,
        // timers, indexes) is printed: the two agree once test namespaces are left out.
        assert_eq!(
            strip_test_namespaces(&snapshot),
            strip_test_namespaces(&after)
        );
    }
}
