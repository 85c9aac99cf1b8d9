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

/// One Event to write, and the client to write it with.
type Queued = (kube::Client, Event);

/// The process's Event queue. The Events wait in it as data and one writer task writes
/// them: a task per Event kept its whole write's future (kilobytes) alive while it
/// waited its turn, and a burst of 1,000 left the process that much larger.
static QUEUE: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<Queued>>> =
    std::sync::Mutex::new(None);

/// Records an Event without waiting for it; a lost Event is only logged.
pub fn record(client: &kube::Client, event: Event) {
    use tokio::sync::mpsc::error::TrySendError;
    let mut queue = QUEUE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut item = (client.clone(), event);
    // Twice at most: a writer whose runtime has ended (a test's) is replaced by one in
    // the caller's.
    for _ in 0..2 {
        match queue.get_or_insert_with(start_writer).try_send(item) {
            Ok(()) => return,
            Err(TrySendError::Full((_, event))) => {
                tracing::debug!(reason = ?event.reason, "too many events queued; dropping one");
                return;
            }
            Err(TrySendError::Closed(back)) => {
                *queue = None;
                item = back;
            }
        }
    }
}

/// Starts the task that writes queued Events, [`IN_FLIGHT`] at a time.
fn start_writer() -> tokio::sync::mpsc::Sender<Queued> {
    use futures::StreamExt;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Queued>(QUEUED);
    let queued = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    tokio::spawn(
        queued.for_each_concurrent(IN_FLIGHT, |(client, event)| async move {
            let ns = event.metadata.namespace.clone().unwrap_or_default();
            if let Err(e) = kube::Api::<Event>::namespaced(client, &ns)
                .create(&Default::default(), &event)
                .await
            {
                tracing::debug!(error = %ErrorChain(&e), "recording an event");
            }
        }),
    );
    tx
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Service};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// An API server that holds every Event write at `gate` and counts them.
    #[derive(Clone)]
    struct HeldWrites {
        gate: Arc<tokio::sync::Semaphore>,
        in_flight: Arc<AtomicUsize>,
        most_in_flight: Arc<AtomicUsize>,
        written: Arc<AtomicUsize>,
    }

    impl HeldWrites {
        fn new() -> Self {
            HeldWrites {
                gate: Arc::new(tokio::sync::Semaphore::new(0)),
                in_flight: Arc::default(),
                most_in_flight: Arc::default(),
                written: Arc::default(),
            }
        }
    }

    impl tower_service::Service<http::Request<kube::client::Body>> for HeldWrites {
        type Response = http::Response<http_body_util::Full<bytes::Bytes>>;
        type Error = std::convert::Infallible;
        type Future =
            std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<kube::client::Body>) -> Self::Future {
            let s = self.clone();
            Box::pin(async move {
                let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.most_in_flight.fetch_max(now, Ordering::SeqCst);
                drop(s.gate.acquire().await);
                s.in_flight.fetch_sub(1, Ordering::SeqCst);
                s.written.fetch_add(1, Ordering::SeqCst);
                let body = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"e"},"involvedObject":{}}"#;
                Ok(http::Response::new(body.into()))
            })
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn an_event(i: usize) -> Event {
        let mut svc = Service::default();
        svc.metadata.name = Some(format!("svc-{i}"));
        svc.metadata.namespace = Some("default".into());
        about(&svc, "test", "Normal", "Tested", "a test")
    }

    fn current_thread() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Events wait in the queue as data, at most QUEUED of them (the rest are dropped),
    /// and are written IN_FLIGHT at a time; a queue whose runtime ended is replaced.
    #[test]
    fn events_wait_in_a_bounded_queue_and_are_written_a_few_at_a_time() {
        let api = HeldWrites::new();
        let rt = current_thread();
        rt.block_on(async {
            let client = kube::Client::new(api.clone(), "default");
            // The writer runs only once this task yields: the queue fills first.
            for i in 0..QUEUED + 10 {
                record(&client, an_event(i));
            }
            until("the first writes", || {
                api.in_flight.load(Ordering::SeqCst) == IN_FLIGHT
            })
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(api.most_in_flight.load(Ordering::SeqCst), IN_FLIGHT);
            api.gate.add_permits(2 * QUEUED);
            until("every queued write", || {
                api.written.load(Ordering::SeqCst) >= QUEUED
            })
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                api.written.load(Ordering::SeqCst),
                QUEUED,
                "the 10 past a full queue are dropped"
            );
            assert_eq!(api.most_in_flight.load(Ordering::SeqCst), IN_FLIGHT);
        });
        drop(rt);
        let rt = current_thread();
        rt.block_on(async {
            let client = kube::Client::new(api.clone(), "default");
            record(&client, an_event(0));
            until("a write from the second runtime", || {
                api.written.load(Ordering::SeqCst) == QUEUED + 1
            })
            .await;
        });
    }

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
