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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use tokio::sync::{mpsc, watch};

use crate::{Ctx, record};

/// Watches the pods bound to this node and runs one worker per pod.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    // Containers get the Services' variables at start: have the Services first (one
    // waiter here rather than one per pod; give up waiting after a while).
    let _ = tokio::time::timeout(Duration::from_secs(10), ctx.services.wait_until_ready()).await;
    let mut sandboxes = record::load_all(&ctx.args.data_dir);
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let cfg = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.args.node_name));
    let mut stream = watcher(api, cfg).default_backoff().boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
    let mut listing: Option<HashSet<String>> = None;
    let mut synced = false;
    loop {
        tokio::select! {
            Some(uid) = done_rx.recv() => {
                workers.remove(&uid);
            }
            ev = stream.next() => {
                let Some(ev) = ev else { break };
                match ev {
                    Err(e) => tracing::warn!("watching pods: {e}"),
                    Ok(Event::Init) => listing = Some(HashSet::new()),
                    Ok(Event::InitApply(p) | Event::Apply(p)) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if let Some(l) = listing.as_mut() {
                            l.insert(uid.clone());
                        }
                        match workers.get(&uid) {
                            Some(tx) => {
                                tx.send_replace(Some(p));
                            }
                            None => {
                                let (tx, rx) = watch::channel(Some(p));
                                workers.insert(uid.clone(), tx);
                                let adopted = sandboxes.remove(&uid);
                                let (ctx, done) = (ctx.clone(), done_tx.clone());
                                tokio::spawn(async move {
                                    worker::run(ctx, rx, adopted).await;
                                    let _ = done.send(uid);
                                });
                            }
                        }
                    }
                    Ok(Event::Delete(p)) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        if let Some(tx) = workers.get(&uid) {
                            tx.send_replace(None);
                        }
                    }
                    Ok(Event::InitDone) => {
                        let seen = listing.take().unwrap_or_default();
                        for (uid, tx) in &workers {
                            if !seen.contains(uid) {
                                tx.send_replace(None);
                            }
                        }
                        if !synced {
                            synced = true;
                            // Sandboxes of pods that no longer exist: tear them down.
                            for (_, sb) in std::mem::take(&mut sandboxes) {
                                let ctx = ctx.clone();
                                tokio::spawn(async move { sandbox::teardown_orphan(&ctx, sb).await });
                            }
                        }
                    }
                }
            }
        }
    }
}
