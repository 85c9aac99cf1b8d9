//! The cluster's Services as containers' environment needs them (kubelet's service
//! links: `REDIS_SERVICE_HOST`, `REDIS_PORT_6379_TCP`, ...): mirrored from the API in
//! the slim form of [`ServiceEnv`], shared by the pod workers, which read it when a
//! container starts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use futures::StreamExt;
use k8s::{ErrorChain, Mirror, ObjectKey, Store};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::env::ServiceEnv;

/// The Services with environment variables, by `namespace/name`.
#[derive(Debug, Default)]
struct ServiceStore(BTreeMap<ObjectKey, ServiceEnv>);

impl Store<Service> for ServiceStore {
    fn apply(&mut self, key: ObjectKey, svc: Service) -> bool {
        match ServiceEnv::of(&svc) {
            Some(env) => self.0.insert(key, env.clone()).as_ref() != Some(&env),
            None => self.0.remove(&key).is_some(),
        }
    }

    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }

    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

/// The mirror of the Services, shared by the pod workers.
#[derive(Debug)]
pub(crate) struct Services {
    store: Mutex<ServiceStore>,
    /// Whether a complete list has been taken in.
    synced: watch::Sender<bool>,
}

impl Services {
    pub(crate) fn new() -> Services {
        Services {
            store: Mutex::default(),
            synced: watch::Sender::new(false),
        }
    }

    /// The Services now, for a container's environment.
    pub(crate) fn list(&self) -> Vec<ServiceEnv> {
        self.store
            .lock()
            .map(|s| s.0.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Waits until the Services have been listed once, or `limit` has passed.
    pub(crate) async fn wait_synced(&self, limit: Duration) {
        let mut synced = self.synced.subscribe();
        let _ = tokio::time::timeout(limit, synced.wait_for(|s| *s)).await;
    }

    /// Mirrors the Services until the task is dropped.
    pub(crate) async fn run(&self, client: kube::Client) {
        let mut mirror = Mirror::new();
        let mut events = k8s::watch(kube::Api::all(client), watcher::Config::default());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if let Ok(mut store) = self.store.lock() {
                        mirror.step(&mut *store, event);
                    }
                    if mirror.synced() {
                        self.synced
                            .send_if_modified(|s| !std::mem::replace(s, true));
                    }
                }
                Err(e) => tracing::warn!(error = %ErrorChain(&e), "watching services"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "app"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]}}))
        .unwrap()
    }

    #[test]
    fn keeps_only_services_with_variables() {
        let mut store = ServiceStore::default();
        let mut m = Mirror::new();
        for e in [
            watcher::Event::Init,
            watcher::Event::InitApply(svc("web", "10.96.0.20")),
            watcher::Event::InitApply(svc("headless", "None")),
            watcher::Event::InitDone,
        ] {
            m.step(&mut store, e);
        }
        assert_eq!(store.keys(), [ObjectKey::from("app/web")]);
        assert!(!m.step(&mut store, watcher::Event::Apply(svc("web", "10.96.0.20"))));
        // Made headless: its variables go.
        assert!(m.step(&mut store, watcher::Event::Apply(svc("web", "None"))));
        assert!(store.keys().is_empty());
    }
}
