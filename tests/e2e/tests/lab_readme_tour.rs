//! The README's tour, run literally: its code block, line for line, in bash, against a
//! lab as `make up` leaves it (three nodes). Only where the tour finds things differs:
//! the lab's name comes from `KUBEWIRE_LAB` (so the test runs beside a user's lab and
//! other tests), `./target/release/kubewire` is a link to the binary under test and
//! `examples/` to the checkout's.

#![allow(clippy::disallowed_methods)] // runs bash

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use e2e::running::RunningLab;
use e2e::{kubewire_bin, workspace_root};

/// The shell block under the README's "A short tour" heading.
fn tour() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let after = readme
        .split_once("## A short tour")
        .expect("a tour in the README")
        .1;
    let block = after
        .split_once("```sh\n")
        .expect("a shell block in the tour")
        .1;
    block
        .split_once("```")
        .expect("the block's end")
        .0
        .to_owned()
}

#[test]
fn the_readme_tour_runs_as_written() {
    let tour = tour();
    assert!(tour.contains("kw lab down"), "{tour}");
    let lab = RunningLab::up(3);
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(kubewire_bin(), release.join("kubewire")).unwrap();
    // The talk's manifests, as in a checkout.
    std::os::unix::fs::symlink(
        workspace_root().join("examples"),
        dir.path().join("examples"),
    )
    .unwrap();
    // As a person types it: every command must succeed, aliases expand.
    let script = format!("set -euo pipefail\nshopt -s expand_aliases\nset -x\n{tour}");
    // Output to files: what the tour leaves in the background (`kubectl port-forward
    // &`) keeps its output open. The tour runs in a process group of its own, ended as
    // a closed terminal ends its jobs.
    let (out_file, err_file) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("KUBEWIRE_LAB", &lab.name)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGHUP);
    let stdout = std::fs::read_to_string(&out_file).unwrap();
    let stderr = std::fs::read_to_string(&err_file).unwrap();
    assert!(
        status.success(),
        "the tour stopped ({status}):\n{stdout}\n{stderr}"
    );
    for want in [
        "node-1", // kubectl get nodes
        "Ready",
        "deployment.apps/web created",
        "service/web exposed",
        "Hostname: web-", // curl web from a pod: a whoami answered through the Service
        "MEMORY(bytes)",  // kubectl top pods, for pods just started
        "198.18.0.200",   // the talk's LoadBalancer Service got the pool's first address
        "1 received",     // ping from the outside
        "is down",        // kw lab down
    ] {
        assert!(stdout.contains(want), "no {want:?} in:\n{stdout}\n{stderr}");
    }
}
