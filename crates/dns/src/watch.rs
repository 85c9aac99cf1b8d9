//! The watches that feed the view: Services, EndpointSlices and, for `--pods verified`,
//! Pods, each through [`k8s::watch`] and a [`k8s::Mirror`] whose store is the view
//! itself. Each object is reduced to the small record DNS needs as it arrives, so the
//! view is the only store (a reflector's store would keep whole objects: ~100 MB more
//! with 100,000 pods).

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s::{Mirror, ObjectKey, Store};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;

use crate::Shared;
use crate::view::{Key, View, pod_info, service_info, slice_info};

/// The view as the store of one kind's mirror, for the span of one watch event (during
/// which [`Shared::update`] holds the view's write lock).
struct Records<'a>(&'a mut View);

impl Records<'_> {
    /// The view's key for a store key (`namespace/name`; every kind watched here is
    /// namespaced).
    fn key(&mut self, key: &str) -> Option<Key> {
        let (ns, name) = key.split_once('/')?;
        Some(self.0.key(ns, name))
    }
}

fn object_keys<'a>(keys: impl Iterator<Item = &'a Key>) -> Vec<ObjectKey> {
    keys.map(|k| format!("{}/{}", k.ns, k.name).into())
        .collect()
}

impl Store<Service> for Records<'_> {
    fn apply(&mut self, key: ObjectKey, obj: Service) -> bool {
        match service_info(&obj) {
            Some((ns, name, info)) => {
                let key = self.0.key(&ns, &name);
                self.0.upsert_service(key, info)
            }
            None => Store::<Service>::delete(self, &key),
        }
    }
    fn delete(&mut self, key: &str) -> bool {
        self.key(key).is_some_and(|k| self.0.delete_service(&k))
    }
    fn keys(&self) -> Vec<ObjectKey> {
        object_keys(self.0.service_keys())
    }
}

impl Store<EndpointSlice> for Records<'_> {
    fn apply(&mut self, key: ObjectKey, obj: EndpointSlice) -> bool {
        match slice_info(&obj) {
            Some((ns, name, info)) => {
                let key = self.0.key(&ns, &name);
                self.0.upsert_slice(key, info)
            }
            // No longer publishable (service label removed, FQDN): drop what we had.
            None => Store::<EndpointSlice>::delete(self, &key),
        }
    }
    fn delete(&mut self, key: &str) -> bool {
        self.key(key).is_some_and(|k| self.0.delete_slice(&k))
    }
    fn keys(&self) -> Vec<ObjectKey> {
        object_keys(self.0.slice_keys())
    }
}

impl Store<Pod> for Records<'_> {
    fn apply(&mut self, key: ObjectKey, obj: Pod) -> bool {
        match pod_info(&obj) {
            Some((ns, name, ips)) => {
                let key = self.0.key(&ns, &name);
                self.0.upsert_pod(key, ips)
            }
            None => Store::<Pod>::delete(self, &key),
        }
    }
    fn delete(&mut self, key: &str) -> bool {
        self.key(key).is_some_and(|k| self.0.delete_pod(&k))
    }
    fn keys(&self) -> Vec<ObjectKey> {
        object_keys(self.0.pod_keys())
    }
}

/// Watches `K` forever, keeping the view current; counts down `pending` when its first
/// list completes (the view is synced when every watched kind has listed once).
async fn watch<K>(client: Client, shared: Arc<Shared>, pending: Arc<AtomicUsize>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + 'static,
    for<'a> Records<'a>: Store<K>,
{
    let kind = K::plural(&());
    let mut events = k8s::watch(Api::<K>::all(client), watcher::Config::default());
    let mut mirror = Mirror::new();
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                // The watcher backs off and re-lists by itself.
                tracing::warn!(kind = %kind, error = %k8s::ErrorChain(&e), "watch failed; retrying");
                continue;
            }
        };
        let was_synced = mirror.synced();
        shared.update(|view| mirror.step(&mut Records(view), event));
        if !was_synced && mirror.synced() {
            let (s, e, p) = shared.view.read().map(|v| v.counts()).unwrap_or_default();
            tracing::info!(kind = %kind, services = s, slices = e, pods = p, "listed");
            if pending.fetch_sub(1, Ordering::AcqRel) == 1 {
                shared.set_synced();
                tracing::info!("view synced: answering cluster names");
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

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::{Value, json};

    use super::*;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip]}
        }))
        .unwrap()
    }

    fn slice(name: &str, labels: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name, "labels": labels},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"]}]
        }))
        .unwrap()
    }

    fn step<K>(view: &mut View, mirror: &mut Mirror, event: Event<K>) -> bool
    where
        K: Resource,
        for<'a> Records<'a>: Store<K>,
    {
        mirror.step(&mut Records(view), event)
    }

    fn names(keys: impl Iterator<Item = Key>) -> Vec<String> {
        let mut v: Vec<String> = keys.map(|k| format!("{}/{}", k.ns, k.name)).collect();
        v.sort();
        v
    }

    #[test]
    fn a_relist_drops_what_it_no_longer_names_and_unchanged_objects_change_nothing() {
        let (mut view, mut m) = (View::new(), Mirror::new());
        for e in [
            Event::<Service>::Init,
            Event::InitApply(service("a", "10.96.0.1")),
            Event::InitApply(service("b", "10.96.0.2")),
        ] {
            step(&mut view, &mut m, e);
        }
        assert!(!m.synced());
        assert!(step(&mut view, &mut m, Event::<Service>::InitDone));
        assert!(m.synced());
        assert_eq!(
            names(view.service_keys().cloned()),
            ["default/a", "default/b"]
        );
        // The watch expired; meanwhile b went away.
        let serial = view.serial;
        assert!(!step(&mut view, &mut m, Event::<Service>::Init));
        assert!(!step(
            &mut view,
            &mut m,
            Event::InitApply(service("a", "10.96.0.1"))
        ));
        assert_eq!(
            view.serial, serial,
            "an unchanged object keeps answers cached"
        );
        assert!(step(&mut view, &mut m, Event::<Service>::InitDone));
        assert_eq!(names(view.service_keys().cloned()), ["default/a"]);
        assert!(view.ptr("10.96.0.2".parse().unwrap()).is_none());
        assert!(step(
            &mut view,
            &mut m,
            Event::Delete(service("a", "10.96.0.1"))
        ));
        assert_eq!(view.counts(), (0, 0, 0));
    }

    #[test]
    fn a_slice_that_loses_its_service_label_is_dropped() {
        let (mut view, mut m) = (View::new(), Mirror::new());
        let labelled = slice("web-1", json!({"kubernetes.io/service-name": "web"}));
        assert!(step(&mut view, &mut m, Event::Apply(labelled)));
        assert_eq!(names(view.slice_keys().cloned()), ["default/web-1"]);
        assert!(step(
            &mut view,
            &mut m,
            Event::Apply(slice("web-1", json!({})))
        ));
        assert_eq!(view.counts(), (0, 0, 0));
        assert!(!step(
            &mut view,
            &mut m,
            Event::Delete(slice("web-1", json!({})))
        ));
    }
}
