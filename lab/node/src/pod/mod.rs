//! The pods bound to this node: a watch on `spec.nodeName=NODE` hands each pod (by uid)
//! to its own worker task ([`worker`]), which steps it through its sandbox ([`sandbox`]:
//! network namespace + CNI ADD), container starts, restarts with backoff
//! ([`container`]), probes and status reports ([`status`]), and on deletion through
//! graceful termination, CNI DEL and removal of everything it made.
//! Workers are level-triggered: each round looks at the latest pod object and the
//! processes, and reports the status only when it changed.

mod container;
mod sandbox;
mod status;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s::{ErrorChain, Mirror, ObjectKey, Store};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use crate::Ctx;
use crate::record::{self, SandboxFile};

/// The pods' workers, by pod uid: the store the pod watch is mirrored into. A pod
/// that is applied goes to its worker (started on first sight); a deleted one is taken
/// from it (`None`), and the worker removes itself once it has torn the pod down.
struct Workers {
    ctx: Arc<Ctx>,
    workers: HashMap<ObjectKey, watch::Sender<Option<Pod>>>,
    /// The sandboxes an earlier node process left, by pod uid, until their pod is seen
    /// (adopted) or the first list shows it gone (torn down).
    sandboxes: BTreeMap<String, SandboxFile>,
    /// Where a worker says it has finished.
    done: mpsc::UnboundedSender<ObjectKey>,
}

impl Store<Pod> for Workers {
    /// A pod's uid: a pod deleted and made again under its name is another pod.
    fn key(&self, pod: &Pod) -> ObjectKey {
        pod.metadata.uid.as_deref().unwrap_or_default().into()
    }

    fn apply(&mut self, uid: ObjectKey, pod: Pod) -> bool {
        if let Some(tx) = self.workers.get(&uid) {
            tx.send_replace(Some(pod));
            return true;
        }
        let (tx, rx) = watch::channel(Some(pod));
        self.workers.insert(uid.clone(), tx);
        let adopted = self.sandboxes.remove(&*uid);
        let (ctx, done) = (self.ctx.clone(), self.done.clone());
        tokio::spawn(async move {
            worker::run(ctx, rx, adopted).await;
            let _ = done.send(uid);
        });
        true
    }

    fn delete(&mut self, uid: &str) -> bool {
        let Some(tx) = self.workers.get(uid) else {
            return false;
        };
        tx.send_replace(None);
        true
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.workers.keys().cloned().collect()
    }

    /// After the first list: the sandboxes of pods that no longer exist are torn down.
    fn listed(&mut self) {
        for (_, sb) in std::mem::take(&mut self.sandboxes) {
            let ctx = self.ctx.clone();
            tokio::spawn(async move { sandbox::teardown_orphan(&ctx, sb).await });
        }
    }
}

/// Watches the pods bound to this node and runs one worker per pod.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    // Containers get the Services' variables at start: have the Services first (one
    // waiter here rather than one per pod; give up waiting after a while).
    ctx.services.wait_synced(Duration::from_secs(10)).await;
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.args.node_name));
    let mut events = k8s::watch(api, cfg);
    let (done, mut finished) = mpsc::unbounded_channel();
    let mut workers = Workers {
        sandboxes: record::load_all(&ctx.args.data_dir),
        ctx,
        workers: HashMap::new(),
        done,
    };
    let mut mirror = Mirror::new();
    loop {
        tokio::select! {
            Some(uid) = finished.recv() => {
                workers.workers.remove(&uid);
            }
            event = events.next() => match event {
                Some(Ok(event)) => {
                    mirror.step(&mut workers, event);
                }
                Some(Err(e)) => tracing::warn!(error = %ErrorChain(&e), "watching pods"),
                None => break,
            },
        }
    }
}
