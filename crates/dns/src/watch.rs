//! Watches (kube-rs `watcher`) feeding the view. Each object is reduced to the small
//! record DNS needs as it arrives, so the view is the only store (a reflector's store
//! would keep whole objects: ~100 MB more with 100,000 pods).

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::Shared;
use crate::view::{Key, View, pod_info, service_info, slice_info};

/// How one kind's objects change the view.
trait Kind:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    const NAME: &'static str;
    fn apply(view: &mut View, obj: &Self) -> Option<Key>;
    fn delete(view: &mut View, key: &Key);
    fn keys(view: &View) -> Vec<Key>;
}

fn key_of<K: Resource>(view: &mut View, obj: &K) -> Option<Key> {
    let m = obj.meta();
    Some(view.key(m.namespace.as_deref()?, m.name.as_deref()?))
}

impl Kind for Service {
    const NAME: &'static str = "services";
    fn apply(view: &mut View, obj: &Self) -> Option<Key> {
        let (ns, name, info) = service_info(obj)?;
        let key = view.key(&ns, &name);
        view.upsert_service(key.clone(), info);
        Some(key)
    }
    fn delete(view: &mut View, key: &Key) {
        view.delete_service(key);
    }
    fn keys(view: &View) -> Vec<Key> {
        view.service_keys()
    }
}

impl Kind for EndpointSlice {
    const NAME: &'static str = "endpointslices";
    fn apply(view: &mut View, obj: &Self) -> Option<Key> {
        let Some((ns, name, info)) = slice_info(obj) else {
            // No longer publishable (label removed, FQDN): drop what we had.
            let key = key_of(view, obj)?;
            view.delete_slice(&key);
            return None;
        };
        let key = view.key(&ns, &name);
        view.upsert_slice(key.clone(), info);
        Some(key)
    }
    fn delete(view: &mut View, key: &Key) {
        view.delete_slice(key);
    }
    fn keys(view: &View) -> Vec<Key> {
        view.slice_keys()
    }
}

impl Kind for Pod {
    const NAME: &'static str = "pods";
    fn apply(view: &mut View, obj: &Self) -> Option<Key> {
        let (ns, name, ips) = pod_info(obj)?;
        let key = view.key(&ns, &name);
        view.upsert_pod(key.clone(), ips);
        Some(key)
    }
    fn delete(view: &mut View, key: &Key) {
        view.delete_pod(key);
    }
    fn keys(view: &View) -> Vec<Key> {
        view.pod_keys()
    }
}

/// Watches `K` forever, keeping the view current; counts down `pending` at the end of
/// the first list (the view is synced when every kind has listed once).
async fn watch<K: Kind>(client: Client, shared: Arc<Shared>, pending: Arc<AtomicUsize>) {
    let api: Api<K> = Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut listed = false;
    // Keys seen during a (re-)list: what the view has beyond them was deleted meanwhile.
    let mut seen: Option<HashSet<Key>> = None;
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(kind = K::NAME, error = %e, "watch failed; retrying");
                continue;
            }
        };
        match event {
            Event::Init => seen = Some(HashSet::new()),
            Event::InitApply(obj) | Event::Apply(obj) => {
                let key = shared.update(|v| K::apply(v, &obj));
                if let (Some(seen), Some(key)) = (seen.as_mut(), key) {
                    seen.insert(key);
                }
            }
            Event::Delete(obj) => {
                shared.update(|v| {
                    if let Some(key) = key_of(v, &obj) {
                        K::delete(v, &key);
                    }
                });
            }
            Event::InitDone => {
                if let Some(seen) = seen.take() {
                    shared.update(|v| {
                        for key in K::keys(v).into_iter().filter(|k| !seen.contains(k)) {
                            K::delete(v, &key);
                        }
                    });
                }
                if !listed {
                    listed = true;
                    let (s, e, p) = shared.view.read().map(|v| v.counts()).unwrap_or_default();
                    tracing::info!(kind = K::NAME, services = s, slices = e, pods = p, "listed");
                    if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                        shared.set_synced();
                        tracing::info!("view synced: answering cluster names");
                    }
                }
            }
        }
    }
}

/// Starts the watches: Services and EndpointSlices, and Pods when `pods` is true.
pub(crate) fn start(client: Client, shared: Arc<Shared>, pods: bool) {
    let pending = Arc::new(AtomicUsize::new(if pods { 3 } else { 2 }));
    tokio::spawn(watch::<Service>(
        client.clone(),
        shared.clone(),
        pending.clone(),
    ));
    tokio::spawn(watch::<EndpointSlice>(
        client.clone(),
        shared.clone(),
        pending.clone(),
    ));
    if pods {
        tokio::spawn(watch::<Pod>(client, shared, pending));
    }
}
