//! Events (core/v1), what `kubectl describe` and `kubectl get events` list, built and
//! recorded one way by every component: the object it is about, the reporting
//! component, the type (`Normal` or `Warning`), a reason and a message.

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;

use crate::ErrorChain;

/// A reference to `obj`, as an Event's `involvedObject` names it.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    let meta = obj.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

/// An Event about `involved`, reported by `component`, as kube's controllers record
/// them: in the object's namespace (`default` for a cluster-scoped one), named after it.
pub fn new(
    involved: ObjectReference,
    component: &str,
    type_: &str,
    reason: &str,
    message: impl Into<String>,
) -> Event {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", involved.name.as_deref().unwrap_or("object"))),
            namespace: Some(
                involved
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            ..Default::default()
        },
        involved_object: involved,
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        source: Some(EventSource {
            component: Some(component.into()),
            host: None,
        }),
        reporting_component: Some(component.into()),
        reporting_instance: Some(component.into()),
        first_timestamp: Some(now.clone()),
        last_timestamp: Some(now),
        count: Some(1),
        ..Default::default()
    }
}

/// An Event about `obj` ([`new`] with its [`reference`]).
pub fn about<K: Resource<DynamicType = ()>>(
    obj: &K,
    component: &str,
    type_: &str,
    reason: &str,
    message: impl Into<String>,
) -> Event {
    new(reference(obj), component, type_, reason, message)
}

/// Event writes in flight at once, per process. client-go's broadcaster writes one at
/// a time from a queue; a few at once keep a burst (1,000 Services assigned at once,
/// each with its Event) from opening a connection per Event, whose buffers the process
/// would keep.
const IN_FLIGHT: usize = 4;
/// Events waiting to be written, at most (client-go's queue holds 1,000 and drops the
/// rest when it is full, as this does).
const QUEUED: usize = 1000;

static WRITERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(IN_FLIGHT);
static WAITING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records an Event without waiting for it; a lost Event is only logged.
pub fn record(client: &kube::Client, event: Event) {
    use std::sync::atomic::Ordering;
    if WAITING.fetch_add(1, Ordering::Relaxed) >= QUEUED {
        WAITING.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(reason = ?event.reason, "too many events queued; dropping one");
        return;
    }
    let client = client.clone();
    tokio::spawn(async move {
        let permit = WRITERS.acquire().await;
        WAITING.fetch_sub(1, Ordering::Relaxed);
        let ns = event.metadata.namespace.clone().unwrap_or_default();
        if let Err(e) = kube::Api::<Event>::namespaced(client, &ns)
            .create(&Default::default(), &event)
            .await
        {
            tracing::debug!(error = %ErrorChain(&e), "recording an event");
        }
        drop(permit);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Service};

    #[test]
    fn an_event_is_named_after_its_object_and_lives_in_its_namespace() {
        let mut svc = Service::default();
        svc.metadata.name = Some("web".into());
        svc.metadata.namespace = Some("shop".into());
        svc.metadata.uid = Some("u1".into());
        let e = about(
            &svc,
            "kubewire-lb-controller",
            "Warning",
            "AllocationFailed",
            "no pool",
        );
        assert_eq!(e.metadata.generate_name.as_deref(), Some("web."));
        assert_eq!(e.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(e.involved_object.kind.as_deref(), Some("Service"));
        assert_eq!(e.involved_object.api_version.as_deref(), Some("v1"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u1"));
        assert_eq!(
            e.reporting_component.as_deref(),
            Some("kubewire-lb-controller")
        );
        assert_eq!((e.type_.as_deref(), e.count), (Some("Warning"), Some(1)));
        // A cluster-scoped object's Events go to `default`, as kubectl looks for them.
        let mut node = Node::default();
        node.metadata.name = Some("node-1".into());
        assert_eq!(
            about(&node, "c", "Normal", "R", "m")
                .metadata
                .namespace
                .as_deref(),
            Some("default")
        );
    }
}
