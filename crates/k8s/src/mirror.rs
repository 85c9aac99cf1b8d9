//! A kind's objects, mirrored into a component's own store through kube-rs's watcher.
//!
//! Every component keeps only what it reads of each object (a slim record converted on
//! arrival: at 10,000 Services whole API objects took hundreds of megabytes), in a
//! store shaped for its own lookups. The re-list protocol is the same for all of them
//! and lives here: [`watch`] gives the watcher's events (streaming lists where the API
//! server serves them, paged lists where it refuses), and [`Mirror::step`] applies each
//! one to the [`Store`], removing after a re-list whatever the list no longer had.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use futures::stream::BoxStream;
use kube::Resource;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tracing::warn;

/// An object's identity in a store: `namespace/name`, or `name` for a cluster-scoped
/// kind. One allocation, as there is one per object.
pub type ObjectKey = Box<str>;

/// The [`ObjectKey`] of `o`.
pub fn object_key<K: Resource>(o: &K) -> ObjectKey {
    let m = o.meta();
    let name = m.name.as_deref().unwrap_or_default();
    match m.namespace.as_deref() {
        Some(ns) => format!("{ns}/{name}").into(),
        None => name.into(),
    }
}

/// Where a component keeps one kind's objects, in the form it reads them.
pub trait Store<K: Resource> {
    /// The key an object is kept under (default: [`object_key`]).
    fn key(&self, obj: &K) -> ObjectKey {
        object_key(obj)
    }

    /// Takes in an added or changed object (one the component ignores is dropped, as
    /// if deleted). Returns whether what the component reads changed.
    fn apply(&mut self, key: ObjectKey, obj: K) -> bool;

    /// Drops what is kept under `key`, if anything; returns whether something was.
    fn delete(&mut self, key: &str) -> bool;

    /// The keys of everything kept.
    fn keys(&self) -> Vec<ObjectKey>;

    /// A complete (re-)list has been taken in: the store is whole. A chance to compact.
    fn listed(&mut self) {}
}

/// The re-list state of one watched kind. Objects of a (re-)list are applied as they
/// arrive, so the store never empties; when the list completes, whatever it did not
/// name is deleted.
#[derive(Debug, Default)]
pub struct Mirror {
    /// Keys named by the (re-)list in progress.
    listing: Option<HashSet<ObjectKey>>,
    synced: bool,
}

impl Mirror {
    /// A mirror that has not listed yet.
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// Whether a complete list has been taken in (the store is whole).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Applies one watcher event to `store`. Returns whether what the component reads
    /// changed, or a first list completed (the moment to act on a whole store).
    pub fn step<K: Resource, S: Store<K> + ?Sized>(
        &mut self,
        store: &mut S,
        event: watcher::Event<K>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.listing = Some(HashSet::new());
                false
            }
            watcher::Event::InitApply(o) => {
                let key = store.key(&o);
                self.listing
                    .get_or_insert_with(HashSet::new)
                    .insert(key.clone());
                store.apply(key, o)
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                let mut changed = !self.synced;
                for key in store.keys() {
                    if !listed.contains(&key) {
                        changed |= store.delete(&key);
                    }
                }
                self.synced = true;
                store.listed();
                changed
            }
            watcher::Event::Apply(o) => {
                let key = store.key(&o);
                store.apply(key, o)
            }
            watcher::Event::Delete(o) => {
                let key = store.key(&o);
                store.delete(&key)
            }
        }
    }
}

/// A stream of one kind's watcher events.
pub type WatchStream<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// Watches `api` (narrowed by `config`'s selectors) with streaming lists: the objects
/// come one by one as watch events instead of in pages of 500 whole objects held at
/// once. Where the API server refuses those before a first list completed (kube-apiserver
/// without its WatchList feature gate: 1.27-1.31 and 1.33), it lists in pages and
/// watches from there. Errors are passed on; the watcher backs off and re-lists by itself.
pub fn watch<K>(api: kube::Api<K>, config: watcher::Config) -> WatchStream<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    enum Phase<K> {
        /// Streaming lists; whether one completed.
        Streaming(WatchStream<K>, bool),
        Paged(WatchStream<K>),
    }
    let streaming = watcher::watcher(api.clone(), config.clone().streaming_lists())
        .default_backoff()
        .boxed();
    let state = (Phase::Streaming(streaming, false), api, config);
    futures::stream::unfold(state, |(phase, api, config)| async move {
        match phase {
            Phase::Streaming(mut s, listed) => match s.next().await? {
                Err(e) if !listed && refused(&e) => {
                    warn!(kind = %K::kind(&Default::default()), error = %e, "streaming list refused; listing in pages instead");
                    let paged = watcher::watcher(api.clone(), config.clone())
                        .default_backoff()
                        .boxed();
                    Some((Err(e), (Phase::Paged(paged), api, config)))
                }
                item => {
                    let listed = listed || matches!(item, Ok(watcher::Event::InitDone));
                    Some((item, (Phase::Streaming(s, listed), api, config)))
                }
            },
            Phase::Paged(mut s) => {
                let item = s.next().await?;
                Some((item, (Phase::Paged(s), api, config)))
            }
        }
    })
    .boxed()
}

/// Whether the API server refused the request as invalid (400 or 422: what it answers
/// to a parameter it does not accept), rather than failing otherwise.
fn refused(e: &watcher::Error) -> bool {
    let status = match e {
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s,
        _ => return false,
    };
    matches!(status.code, 400 | 422)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{ConfigMap, Node};
    use serde_json::json;

    use super::*;

    /// A store that keeps each ConfigMap's `data.v`, ignoring maps without one.
    #[derive(Default)]
    struct Values(BTreeMap<ObjectKey, String>, usize);

    impl Store<ConfigMap> for Values {
        fn apply(&mut self, key: ObjectKey, obj: ConfigMap) -> bool {
            match obj.data.and_then(|d| d.get("v").cloned()) {
                Some(v) => self.0.insert(key, v.clone()) != Some(v),
                None => self.0.remove(&key).is_some(),
            }
        }
        fn delete(&mut self, key: &str) -> bool {
            self.0.remove(key).is_some()
        }
        fn keys(&self) -> Vec<ObjectKey> {
            self.0.keys().cloned().collect()
        }
        fn listed(&mut self) {
            self.1 += 1;
        }
    }

    fn cm(name: &str, v: Option<&str>) -> ConfigMap {
        let data = v.map(|v| json!({ "v": v })).unwrap_or(json!({}));
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns"}, "data": data
        }))
        .unwrap()
    }

    fn list(store: &mut Values, m: &mut Mirror, objects: Vec<ConfigMap>) -> Vec<bool> {
        let mut out = vec![m.step(store, watcher::Event::Init)];
        for o in objects {
            out.push(m.step(store, watcher::Event::InitApply(o)));
        }
        out.push(m.step(store, watcher::Event::InitDone));
        out
    }

    #[test]
    fn keys_are_namespace_and_name_or_name() {
        assert_eq!(&*object_key(&cm("a", None)), "ns/a");
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "node-1"}})).unwrap();
        assert_eq!(&*object_key(&node), "node-1");
    }

    #[test]
    fn a_first_list_is_a_change_and_syncs() {
        let (mut store, mut m) = (Values::default(), Mirror::new());
        assert!(!m.synced());
        let steps = list(&mut store, &mut m, vec![]);
        assert_eq!(
            steps,
            [false, true],
            "an empty first list still completes a sync"
        );
        assert!(m.synced());
        assert_eq!(store.1, 1);
    }

    #[test]
    fn a_relist_keeps_the_store_whole_and_deletes_what_it_missed() {
        let (mut store, mut m) = (Values::default(), Mirror::new());
        list(
            &mut store,
            &mut m,
            vec![cm("a", Some("1")), cm("b", Some("2")), cm("c", Some("3"))],
        );
        // The watch expired; meanwhile b changed, c went away and d came.
        assert!(!m.step(&mut store, watcher::Event::Init));
        assert!(!m.step(&mut store, watcher::Event::InitApply(cm("a", Some("1")))));
        assert!(m.step(&mut store, watcher::Event::InitApply(cm("b", Some("9")))));
        assert_eq!(
            store.0.len(),
            3,
            "nothing is dropped before the list completes"
        );
        assert!(m.step(&mut store, watcher::Event::InitApply(cm("d", Some("4")))));
        assert!(
            m.step(&mut store, watcher::Event::InitDone),
            "c was deleted"
        );
        assert_eq!(
            store
                .0
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
            ["ns/a=1", "ns/b=9", "ns/d=4"]
        );
        // A relist that changes nothing is no change.
        let steps = list(
            &mut store,
            &mut m,
            vec![cm("a", Some("1")), cm("b", Some("9")), cm("d", Some("4"))],
        );
        assert!(steps.iter().all(|c| !c), "{steps:?}");
        assert_eq!(store.1, 3);
    }

    #[test]
    fn objects_the_store_ignores_count_as_listed_not_kept() {
        let (mut store, mut m) = (Values::default(), Mirror::new());
        list(&mut store, &mut m, vec![cm("a", Some("1"))]);
        assert!(
            m.step(&mut store, watcher::Event::Apply(cm("a", None))),
            "a no longer has v"
        );
        assert!(store.0.is_empty());
        assert!(!m.step(&mut store, watcher::Event::Delete(cm("a", None))));
        assert!(m.step(&mut store, watcher::Event::Apply(cm("a", Some("2")))));
        assert!(m.step(&mut store, watcher::Event::Delete(cm("a", Some("2")))));
        assert!(store.0.is_empty());
    }

    #[test]
    fn only_a_refused_streaming_list_falls_back_to_pages() {
        let status = |code: u16| {
            let mut s = kube::core::Status::failure("sendInitialEvents is forbidden", "Invalid");
            s.code = code;
            Box::new(s)
        };
        assert!(refused(&watcher::Error::WatchError(status(422))));
        assert!(refused(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(400))
        )));
        assert!(
            !refused(&watcher::Error::WatchError(status(410))),
            "gone: re-list"
        );
        assert!(!refused(&watcher::Error::WatchStartFailed(
            kube::Error::Api(status(503))
        )));
        assert!(!refused(&watcher::Error::NoResourceVersion));
    }
}
