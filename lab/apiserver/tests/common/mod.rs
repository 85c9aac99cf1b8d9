//! What the black-box tests share: a server on its own free loopback port and its own
//! temporary data dir, started the way `kubewire apiserver` starts it.

// Each test binary uses a part of this harness.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::Duration;

use apiserver::Config;

/// A running server; stopped when dropped.
pub(crate) struct TestServer {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts `serve` and waits for admin.kubeconfig, as scripts do.
pub(crate) async fn start() -> TestServer {
    start_with(|_| {}).await
}

/// [`start`] with changes to the configuration.
pub(crate) async fn start_with(f: impl FnOnce(&mut Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path().join("data"));
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    f(&mut cfg);
    let task = tokio::spawn(async move {
        apiserver::serve(cfg).await.unwrap();
    });
    let kubeconfig = dir.path().join("data/admin.kubeconfig");
    for _ in 0..200 {
        if kubeconfig.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(kubeconfig.exists(), "admin.kubeconfig was not written");
    TestServer {
        dir,
        kubeconfig,
        task,
    }
}
