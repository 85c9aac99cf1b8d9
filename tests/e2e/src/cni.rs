//! A small CNI runtime for tests, doing what containerd's libcni does: execute a plugin
//! binary with the `CNI_*` environment and a config on stdin, from inside the node's
//! namespace, and run a conflist's plugins in order with `prevResult` threaded through.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use cni::spec::plugin_config;
use serde_json::{Value, json};

/// Where Debian's `containernetworking-plugins` installs the reference plugins.
pub const REFERENCE_PLUGIN_DIR: &str = "/usr/lib/cni";

/// What one plugin invocation returned.
#[derive(Debug)]
pub struct Invocation {
    /// Exit code.
    pub code: i32,
    /// stdout, parsed as JSON (`Null` when empty).
    pub stdout: Value,
    /// Raw stdout, to check that nothing but the JSON is there.
    pub raw_stdout: String,
    /// stderr (logs).
    pub stderr: String,
}

impl Invocation {
    /// Panics with the plugin's output unless it succeeded.
    pub fn ok(self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: {}\nstderr: {}",
            self.raw_stdout, self.stderr
        );
        self.stdout
    }

    /// The error code of a failed invocation (panics if it succeeded).
    pub fn err_code(&self) -> u64 {
        assert_ne!(
            self.code, 0,
            "plugin succeeded unexpectedly: {}",
            self.raw_stdout
        );
        self.stdout["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error code in {}", self.raw_stdout))
    }
}

/// A directory for `CNI_PATH` holding `kubewire-cni` (a link to the kubewire binary),
/// searched before the reference plugins.
#[derive(Debug)]
pub struct PluginDir {
    dir: tempfile::TempDir,
}

impl Default for PluginDir {
    fn default() -> Self {
        Self::new()
    }
}

impl PluginDir {
    /// Makes the directory and the link.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::os::unix::fs::symlink(crate::kubewire_bin(), dir.path().join("kubewire-cni"))
            .expect("link kubewire-cni");
        PluginDir { dir }
    }

    /// The `CNI_PATH` value: ours first, then the reference plugins.
    pub fn cni_path(&self) -> String {
        format!("{}:{REFERENCE_PLUGIN_DIR}", self.dir.path().display())
    }

    /// The path of a plugin binary by type.
    pub fn plugin(&self, plugin_type: &str) -> PathBuf {
        let ours = self.dir.path().join(plugin_type);
        if ours.exists() {
            ours
        } else {
            Path::new(REFERENCE_PLUGIN_DIR).join(plugin_type)
        }
    }
}

/// Runs `binary` with `env` and `stdin` inside the namespace `node_netns` (the plugin
/// configures the namespace it runs in as the node side, so it must never run in the
/// host's).
pub fn exec_plugin(
    node_netns: &str,
    binary: &Path,
    env: &[(&str, &str)],
    stdin: &Value,
) -> Invocation {
    let binary = binary.to_owned();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let input = serde_json::to_vec(stdin).expect("config serializes");
    let out = netlink::netns::run_in(node_netns, move || {
        let mut child = Command::new(&binary)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&input)
            .expect("writing config");
        child.wait_with_output().expect("waiting for plugin")
    })
    .expect("entering node namespace");
    let raw_stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stdout = if raw_stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&raw_stdout).unwrap_or_else(|e| {
            panic!("plugin stdout is not one JSON document ({e}): {raw_stdout:?}")
        })
    };
    Invocation {
        code: out.status.code().unwrap_or(-1),
        stdout,
        raw_stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// One attachment's parameters.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    /// `CNI_CONTAINERID`.
    pub container_id: &'a str,
    /// `CNI_NETNS` (a path).
    pub netns: Option<&'a str>,
    /// `CNI_IFNAME`.
    pub ifname: &'a str,
}

/// Builds the environment of a command.
pub fn env_for<'a>(command: &'a str, p: &Params<'a>, cni_path: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", p.container_id),
        ("CNI_IFNAME", p.ifname),
        ("CNI_PATH", cni_path),
    ];
    if let Some(ns) = p.netns {
        env.push(("CNI_NETNS", ns));
    }
    env
}

/// ADD through a conflist; returns the final result.
pub fn add_list(
    node_netns: &str,
    dir: &PluginDir,
    list: &Value,
    p: &Params<'_>,
    runtime_config: &Value,
) -> Value {
    let cni_path = dir.cni_path();
    let mut prev: Option<Value> = None;
    for plugin in list["plugins"].as_array().expect("plugins") {
        let conf = plugin_config(list, plugin, prev.as_ref(), runtime_config);
        let bin = dir.plugin(plugin["type"].as_str().expect("type"));
        let result = exec_plugin(node_netns, &bin, &env_for("ADD", p, &cni_path), &conf).ok();
        prev = Some(result);
    }
    prev.unwrap_or(json!({}))
}

/// CHECK or DEL through a conflist (DEL in reverse order), with the cached result.
pub fn run_list(
    node_netns: &str,
    dir: &PluginDir,
    command: &str,
    list: &Value,
    p: &Params<'_>,
    runtime_config: &Value,
    result: &Value,
) {
    let cni_path = dir.cni_path();
    let mut plugins: Vec<&Value> = list["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .collect();
    if command == "DEL" {
        plugins.reverse();
    }
    for plugin in plugins {
        let conf = plugin_config(list, plugin, Some(result), runtime_config);
        let bin = dir.plugin(plugin["type"].as_str().expect("type"));
        exec_plugin(node_netns, &bin, &env_for(command, p, &cni_path), &conf).ok();
    }
}
