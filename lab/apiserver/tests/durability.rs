//! Durability: every acknowledged write survives SIGKILL, with its resourceVersion, and
//! no half-written object appears. The server runs in a child process (this test
//! binary re-executed with `KUBEWIRE_APISERVER_CHILD_DIR` set) that is killed with
//! SIGKILL at a random moment while creates are in flight. Also exercises kube-rs over
//! TLS with the admin kubeconfig, and `serve`'s clean stop on SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;

const CHILD_ENV: &str = "KUBEWIRE_APISERVER_CHILD_DIR";

/// Not a test of its own: the server process of the tests below, running `serve` as
/// `kubewire apiserver` does.
/// Without the environment variable it has nothing to serve and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut cfg = apiserver::Config::new(PathBuf::from(dir));
    cfg.listen = vec!["127.0.0.1:0".parse().unwrap()];
    apiserver::serve(cfg).await.unwrap();
}

fn spawn_server(dir: &Path) -> tokio::process::Child {
    let _ = std::fs::remove_file(dir.join("admin.kubeconfig"));
    tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "server_child_process", "--nocapture"])
        .env(CHILD_ENV, dir)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn client_for(dir: &Path) -> Client {
    let path = dir.join("admin.kubeconfig");
    for _ in 0..400 {
        if path.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let kc = Kubeconfig::read_from(&path).expect("admin.kubeconfig");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// Every acknowledged write (name: resourceVersion) is among `items`, unchanged.
fn assert_all_kept(items: &[ConfigMap], acked: &BTreeMap<String, String>, when: &str) {
    let stored: BTreeMap<String, String> = items
        .iter()
        .map(|c| (c.name_any(), c.resource_version().unwrap()))
        .collect();
    for (name, rv) in acked {
        assert_eq!(
            stored.get(name),
            Some(rv),
            "{when}: acknowledged {name} lost or changed"
        );
    }
}

/// A pseudo-random number from the clock; enough to vary the kill point per run.
fn jitter(max: u64) -> u64 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(n) % max
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut acked: BTreeMap<String, String> = BTreeMap::new();
    let mut next = 0usize;
    for round in 0..3 {
        let mut child = spawn_server(&dir);
        let client = client_for(&dir).await;
        let cms: Api<ConfigMap> = Api::namespaced(client, "default");

        // Everything acknowledged before is there, with its resourceVersion.
        let list = cms.list(&ListParams::default()).await.unwrap();
        assert_all_kept(&list.items, &acked, &format!("round {round}"));
        for c in &list.items {
            assert_eq!(
                c.data
                    .as_ref()
                    .and_then(|d| d.get("payload"))
                    .map(String::len),
                Some(512)
            );
        }

        // Write in parallel and kill the server at a random moment.
        // Kill at a random moment once writes are flowing (not by the clock alone: a slow
        // machine must still get some writes acknowledged before the kill).
        let kill_after = Duration::from_millis(jitter(200));
        let acked_now = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let cms = cms.clone();
                let acked_now = acked_now.clone();
                let start = next + w * 10_000;
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    for i in start.. {
                        let cm: ConfigMap = serde_json::from_value(json!({
                            "metadata": {"name": format!("cm-{i}")},
                            "data": {"payload": "x".repeat(512)},
                        }))
                        .unwrap();
                        match cms.create(&PostParams::default(), &cm).await {
                            Ok(c) => {
                                done.push((c.name_any(), c.resource_version().unwrap()));
                                acked_now.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Err(_) => break,
                        }
                    }
                    done
                })
            })
            .collect();
        let flowing = async {
            while acked_now.load(std::sync::atomic::Ordering::Relaxed) < 5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), flowing)
            .await
            .expect("no writes acknowledged within a minute");
        tokio::time::sleep(kill_after).await;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        for w in writers {
            acked.extend(w.await.unwrap());
        }
        next += 100_000;
    }
    eprintln!("{} writes acknowledged over 3 SIGKILLs", acked.len());
    assert!(
        acked.len() > 10,
        "too few writes were acknowledged: {}",
        acked.len()
    );
    // Final check after the last kill.
    let _child = spawn_server(&dir);
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&dir).await, "default");
    let list = cms.list(&ListParams::default()).await.unwrap();
    assert_all_kept(&list.items, &acked, "after the last kill");
}

/// SIGTERM stops `serve` cleanly, as SIGINT does: it returns `Ok` (so the child's test
/// passes and the process exits 0) within seconds, releasing the data dir, and what was
/// written is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    use nix::sys::signal::{Signal, kill};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut child = spawn_server(&dir);
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&dir).await, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "kept"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    // An open watch must not hold the stop back.
    let _watch = cms
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .unwrap();

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    kill(pid, Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the server did not stop within 20 s of SIGTERM")
        .unwrap();
    assert!(
        status.success(),
        "the server did not stop cleanly: {status}"
    );

    let _child = spawn_server(&dir);
    let cms: Api<ConfigMap> = Api::namespaced(client_for(&dir).await, "default");
    assert_eq!(cms.get("kept").await.unwrap().name_any(), "kept");
}
