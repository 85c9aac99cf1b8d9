//! What the black-box tests share: a server on its own free loopback port and its own
//! temporary data dir, started the way `kubewire apiserver` starts it.

// Each test binary uses a part of this harness.
#![allow(dead_code)]

use apiserver::Config;
use std::path::PathBuf;

/// A running server; stopped when dropped.
pub(crate) struct TestServer {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
    server: Option<apiserver::Server>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

/// Starts the server (as `serve` does, without taking over the test process's
/// signals) and checks that admin.kubeconfig is there, as scripts wait for it.
pub(crate) async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// [`start`] with changes to the configuration.
pub(crate) async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    f(&mut cfg);
    let server = apiserver::start(cfg).await.unwrap();
    let kubeconfig = dir.path().join("data/admin.kubeconfig");
    assert!(kubeconfig.exists(), "admin.kubeconfig was not written");
    assert_eq!(server.kubeconfig(), kubeconfig);
    TestServer {
        dir,
        kubeconfig,
        server: Some(server),
    }
}

/// What one `kubectl` run printed.
pub(crate) struct Out {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Out {
    /// The column names of `kubectl get`'s table (empty without output).
    pub(crate) fn header(&self) -> Vec<&str> {
        let first = self.stdout.lines().next().unwrap_or("");
        first.split_whitespace().collect()
    }
}

impl TestServer {
    pub(crate) async fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_raw(&["--kubeconfig", self.kubeconfig.to_str().unwrap()], args)
            .await
    }

    pub(crate) async fn kubectl_raw(&self, conn: &[&str], args: &[&str]) -> Out {
        let cache = self.dir.path().join("kube-cache");
        let out = tokio::process::Command::new("kubectl")
            .args(conn)
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .env_remove("KUBECONFIG")
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("kubectl must be installed for these tests (they fail, not skip, without it)");
        let o = Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        eprintln!("$ kubectl {}\n{}{}", args.join(" "), o.stdout, o.stderr);
        o
    }

    pub(crate) fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, yaml).unwrap();
        p
    }
}
