//! The local view: one kube-rs reflector store per kind (whole objects: the
//! controllers write them back), fed by [`k8s::watch`], each with a change counter
//! controllers wait on; and the controller loop every controller runs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Node, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

/// One kind's store and its change counter (bumped on every change once listed).
pub struct Cache<K: Resource<DynamicType = ()> + 'static> {
    /// The objects.
    pub store: Store<K>,
    changed: watch::Receiver<u64>,
    // Our own readiness flag: `Store::wait_until_ready` wakes only one of several
    // waiters (a oneshot underneath), and every controller waits on the same stores.
    listed: watch::Receiver<bool>,
}

impl<K: Resource<DynamicType = ()> + Clone + 'static> Cache<K> {
    /// Every object.
    pub fn all(&self) -> Vec<Arc<K>> {
        self.store.state()
    }

    /// One object by namespace (empty for cluster-scoped) and name.
    pub fn get(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        let mut r = ObjectRef::new(name);
        if !ns.is_empty() {
            r = r.within(ns);
        }
        self.store.get(&r)
    }

    /// A receiver that sees every change of this kind.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.clone()
    }
}

/// What a store keeps of each object: the whole object, for the kinds the controllers
/// write back (an update sends the object as stored).
fn whole<K>(_: &mut K) {}

/// For kinds no controller writes back: the object without kubectl's copy of the
/// applied manifest (`kubectl.kubernetes.io/last-applied-configuration`, most of a
/// Service applied with `kubectl apply`) and the managed fields, which no controller
/// reads. Held for every object of the kind, they were 1 MB of every 1,000 Services.
fn without_client_side_fields<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = &mut meta.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// kubectl's annotation holding the manifest it last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn spawn<K>(api: Api<K>, tasks: &mut JoinSet<()>, keep: fn(&mut K)) -> Cache<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync,
{
    let (store, mut writer) = reflector::store();
    let (tx, changed) = watch::channel(0u64);
    let (listed_tx, listed) = watch::channel(false);
    tasks.spawn(async move {
        let mut events = k8s::watch(api, watcher::Config::default());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let event = event.modify(keep);
                    writer.apply_watcher_event(&event);
                    if matches!(event, watcher::Event::InitDone) {
                        listed_tx.send_replace(true);
                    }
                    if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                        tx.send_modify(|n| *n += 1);
                    }
                }
                // The watcher backs off and re-lists by itself.
                Err(e) => warn!(kind = %K::kind(&()), error = %k8s::ErrorChain(&e), "watch failed"),
            }
        }
    });
    Cache {
        store,
        changed,
        listed,
    }
}

/// The stores of every kind a controller reads.
pub struct Caches {
    /// Pods.
    pub pods: Cache<Pod>,
    /// Services.
    pub services: Cache<Service>,
    /// Nodes.
    pub nodes: Cache<Node>,
    /// Endpoints.
    pub endpoints: Cache<Endpoints>,
    /// EndpointSlices.
    pub slices: Cache<EndpointSlice>,
    /// Deployments.
    pub deployments: Cache<Deployment>,
    /// ReplicaSets.
    pub replicasets: Cache<ReplicaSet>,
    /// StatefulSets.
    pub statefulsets: Cache<StatefulSet>,
    /// DaemonSets.
    pub daemonsets: Cache<DaemonSet>,
    /// Node leases (namespace `kube-node-lease`).
    pub leases: Cache<Lease>,
    /// ReplicationControllers.
    pub replicationcontrollers: Cache<ReplicationController>,
    /// Jobs.
    pub jobs: Cache<Job>,
    /// CronJobs.
    pub cronjobs: Cache<CronJob>,
}

impl Caches {
    /// Starts one watch per kind on `tasks`.
    pub fn start(client: &kube::Client, tasks: &mut JoinSet<()>) -> Caches {
        Caches {
            pods: spawn(Api::all(client.clone()), tasks, whole),
            services: spawn(Api::all(client.clone()), tasks, without_client_side_fields),
            nodes: spawn(Api::all(client.clone()), tasks, whole),
            endpoints: spawn(Api::all(client.clone()), tasks, whole),
            slices: spawn(Api::all(client.clone()), tasks, whole),
            deployments: spawn(Api::all(client.clone()), tasks, whole),
            replicasets: spawn(Api::all(client.clone()), tasks, whole),
            statefulsets: spawn(Api::all(client.clone()), tasks, whole),
            daemonsets: spawn(Api::all(client.clone()), tasks, whole),
            leases: spawn(
                Api::namespaced(client.clone(), "kube-node-lease"),
                tasks,
                whole,
            ),
            replicationcontrollers: spawn(Api::all(client.clone()), tasks, whole),
            jobs: spawn(Api::all(client.clone()), tasks, whole),
            cronjobs: spawn(Api::all(client.clone()), tasks, whole),
        }
    }
}

/// A condition on the stores that a pass's writes must make true before the next pass:
/// "the pod I created is in the store", "the one I deleted is gone".
pub type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// What a pass did.
#[derive(Default)]
pub struct Outcome {
    /// Wait for these before the next pass (at most [`SETTLE_TIMEOUT`]).
    pub expect: Vec<Check>,
    /// Run again after this long even without changes (time-driven controllers).
    pub requeue: Option<Duration>,
    /// Some writes failed; retry soon.
    pub failed: bool,
}

/// How long a pass waits for its writes to come back through the watches.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY: Duration = Duration::from_millis(500);

/// Waits until the store has `name` at `rv` or later (resourceVersions are opaque, but
/// every server we meet uses growing integers; otherwise equality).
pub fn seen<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static>(
    cache: &Cache<K>,
    ns: &str,
    name: &str,
    rv: Option<String>,
) -> Check {
    let store = cache.store.clone();
    let mut r = ObjectRef::new(name);
    if !ns.is_empty() {
        r = r.within(ns);
    }
    Box::new(move || {
        let Some(obj) = store.get(&r) else {
            return false;
        };
        let have = obj.meta().resource_version.clone();
        match (&rv, have) {
            (None, _) => true,
            (Some(want), Some(have)) => match (want.parse::<u64>(), have.parse::<u64>()) {
                (Ok(w), Ok(h)) => h >= w,
                _ => *want == have,
            },
            (Some(_), None) => false,
        }
    })
}

/// Waits until `name` is gone from the store (or, for pods, terminating).
pub fn gone<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static>(
    cache: &Cache<K>,
    ns: &str,
    name: &str,
) -> Check {
    let store = cache.store.clone();
    let r = ObjectRef::new(name).within(ns);
    Box::new(move || {
        store
            .get(&r)
            .is_none_or(|o| o.meta().deletion_timestamp.is_some())
    })
}

/// The loop of every controller: wait for the stores to be listed, then run `pass`
/// on every change of `triggers` (changes during a pass cause another pass), on resync,
/// and after `Outcome::requeue`.
pub async fn run_loop<F>(
    name: &'static str,
    ready: Vec<BoxFuture<'static, ()>>,
    mut triggers: Vec<watch::Receiver<u64>>,
    resync: Duration,
    mut pass: F,
) where
    F: FnMut() -> BoxFuture<'static, Outcome>,
{
    futures::future::join_all(ready).await;
    debug!(controller = name, "stores listed");
    loop {
        for t in &mut triggers {
            t.borrow_and_update();
        }
        let outcome = pass().await;
        if outcome.failed {
            let _ = tokio::time::timeout(RETRY, changed(&mut triggers)).await;
            continue;
        }
        if !outcome.expect.is_empty() {
            // Let our own writes come back through the watches, then look again at
            // once: what we wrote may call for more (the next pod of a StatefulSet).
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while !outcome.expect.iter().all(|c| c()) && Instant::now() < deadline {
                let _ = tokio::time::timeout_at(deadline, changed(&mut triggers)).await;
            }
            continue;
        }
        let wait = outcome.requeue.map_or(resync, |r| r.min(resync));
        let _ = tokio::time::timeout(wait, changed(&mut triggers)).await;
    }
}

/// Resolves when any trigger changes.
async fn changed(triggers: &mut [watch::Receiver<u64>]) {
    let futs = triggers.iter_mut().map(|t| {
        Box::pin(async move {
            if t.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        })
    });
    futures::future::select_all(futs).await;
}

/// Readiness futures for the stores a controller reads.
pub fn ready<K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static>(
    c: &Cache<K>,
) -> BoxFuture<'static, ()> {
    let mut listed = c.listed.clone();
    Box::pin(async move {
        let _ = listed.wait_for(|l| *l).await;
    })
}

/// Runs `f` for every item with at most `n` in flight.
pub async fn for_each_concurrent<T, Fut>(items: Vec<T>, n: usize, f: impl Fn(T) -> Fut)
where
    Fut: Future<Output = ()>,
{
    futures::stream::iter(items).for_each_concurrent(n, f).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    #[test]
    fn a_stripped_service_keeps_everything_but_kubectls_copy_and_managed_fields() {
        let mut svc: Service = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web",
                "namespace": "default",
                "labels": {"app": "web"},
                "annotations": {
                    LAST_APPLIED: "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}",
                    "metallb.io/ip-allocated-from-pool": "default",
                },
            },
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]},
        }))
        .unwrap();
        svc.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        let mut want = svc.clone();
        without_client_side_fields(&mut svc);
        want.metadata.managed_fields = None;
        want.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(LAST_APPLIED);
        assert_eq!(svc, want);
        assert_eq!(svc.metadata.annotations.as_ref().unwrap().len(), 1);

        // The kinds the controllers write back are kept whole.
        let mut kept = want.clone();
        kept.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
        let before = kept.clone();
        whole(&mut kept);
        assert_eq!(kept, before);
    }
}
