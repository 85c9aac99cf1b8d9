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
