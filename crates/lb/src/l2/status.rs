//! Which node announces each Service, where kubectl shows it: MetalLB's
//! ServiceL2Status objects (`kubectl get servicel2statuses -A`), one per announced
//! Service, in the agent's namespace, labelled with the node and the Service as
//! MetalLB's speakers label them, and an Event `nodeAssigned` on the Service each time a
//! node takes it over (`kubectl describe svc`).
//!
//! The objects are reconciled like everything else: the statuses in the namespace are
//! mirrored, [`plan`] computes what to create, update and delete from them and from
//! what this node announces, and the agent that announces a Service also deletes the
//! other nodes' statuses for it (a dead node cannot delete its own).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s::{ErrorChain, Mirror, ObjectKey};
use k8s_openapi::api::core::v1::{Event as K8sEvent, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::crd::{InterfaceInfo, ServiceL2Status, ServiceL2StatusStatus};

/// The label naming the announcing node (MetalLB's).
pub const NODE_LABEL: &str = "metallb.io/node";
/// The label naming the Service.
pub const SERVICE_NAME_LABEL: &str = "metallb.io/service-name";
/// The label naming the Service's namespace.
pub const SERVICE_NAMESPACE_LABEL: &str = "metallb.io/service-namespace";

/// A Service this node announces, and on which interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Announced {
    pub uid: String,
    pub interfaces: BTreeSet<String>,
}

/// What this node announces, by Service `namespace/name`.
pub type Mine = BTreeMap<String, Announced>;

/// A status object as [`plan`] reads it: its name, whose it is (from its labels) and
/// its status. An agent keeps one per announced Service, so the rest of the object
/// (uid, timestamps, the labels themselves) is not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Recorded {
    pub name: String,
    /// `None`: a label is missing, so it is not one of ours.
    pub owner: Option<Owner>,
    pub status: ServiceL2StatusStatus,
}

/// Whose a status object is: the announcing node and the Service (`namespace/name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub service: String,
}

impl Recorded {
    pub fn of(s: ServiceL2Status) -> Recorded {
        let labels = s.metadata.labels.unwrap_or_default();
        let owner = match (
            labels.get(NODE_LABEL),
            labels.get(SERVICE_NAME_LABEL),
            labels.get(SERVICE_NAMESPACE_LABEL),
        ) {
            (Some(node), Some(svc), Some(ns)) => Some(Owner {
                node: node.clone(),
                service: format!("{ns}/{svc}"),
            }),
            _ => None,
        };
        Recorded {
            name: s.metadata.name.unwrap_or_default(),
            owner,
            status: s.status,
        }
    }
}

/// One change to the statuses.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Create(Box<ServiceL2Status>),
    /// Set the status of the named object.
    Update(String, ServiceL2StatusStatus),
    Delete(String),
}

fn desired(node: &str, service: &str, a: &Announced) -> ServiceL2StatusStatus {
    let (ns, name) = service.split_once('/').unwrap_or(("default", service));
    ServiceL2StatusStatus {
        node: node.to_owned(),
        service_name: name.to_owned(),
        service_namespace: ns.to_owned(),
        interfaces: a
            .interfaces
            .iter()
            .map(|i| InterfaceInfo { name: i.clone() })
            .collect(),
    }
}

/// The changes that make the statuses in `namespace` say what `node` announces.
pub fn plan(
    existing: &BTreeMap<ObjectKey, Recorded>,
    mine: &Mine,
    node: &str,
    namespace: &str,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut kept = BTreeSet::new();
    for s in existing.values() {
        let Some(owner) = &s.owner else {
            continue; // not one of ours
        };
        let key = &owner.service;
        match mine.get(key) {
            Some(a) if owner.node == node && kept.insert(key.clone()) => {
                let want = desired(node, key, a);
                if s.status != want {
                    actions.push(Action::Update(s.name.clone(), want));
                }
            }
            // Another node's (or a duplicate): the announcer cleans up.
            Some(_) => actions.push(Action::Delete(s.name.clone())),
            None if owner.node == node => actions.push(Action::Delete(s.name.clone())),
            None => {}
        }
    }
    for (key, a) in mine {
        if kept.contains(key) {
            continue;
        }
        let (ns, svc) = key.split_once('/').unwrap_or(("default", key));
        actions.push(Action::Create(Box::new(ServiceL2Status {
            metadata: ObjectMeta {
                generate_name: Some("l2-".into()),
                namespace: Some(namespace.into()),
                labels: Some(
                    [
                        (NODE_LABEL.to_owned(), node.to_owned()),
                        (SERVICE_NAME_LABEL.to_owned(), svc.to_owned()),
                        (SERVICE_NAMESPACE_LABEL.to_owned(), ns.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            status: desired(node, key, a),
        })));
    }
    actions
}

/// The Event MetalLB's speaker records when it takes a Service over, reported by the
/// node that takes it.
pub fn assigned_event(node: &str, service: &str, uid: &str) -> K8sEvent {
    let (ns, name) = service.split_once('/').unwrap_or(("default", service));
    let service = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(name.into()),
        namespace: Some(ns.into()),
        uid: Some(uid.into()).filter(|u: &String| !u.is_empty()),
        ..Default::default()
    };
    let mut event = k8s::events::new(
        service,
        "kubewire-l2",
        "Normal",
        "nodeAssigned",
        format!("announcing from node \"{node}\" with protocol \"layer2\""),
    );
    if let Some(source) = event.source.as_mut() {
        source.host = Some(node.into());
    }
    event.reporting_instance = Some(node.into());
    event
}

/// The statuses in the namespace, as [`plan`] reads them.
#[derive(Default)]
struct Statuses(BTreeMap<ObjectKey, Recorded>);

impl k8s::Store<ServiceL2Status> for Statuses {
    fn apply(&mut self, key: ObjectKey, obj: ServiceL2Status) -> bool {
        let r = Recorded::of(obj);
        self.0.get(&key) != Some(&r) && {
            self.0.insert(key, r);
            true
        }
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.remove(key).is_some()
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0.keys().cloned().collect()
    }
}

/// Keeps the ServiceL2Statuses in `namespace` in line with what `mine` says this node
/// announces, until the watch ends.
pub async fn run(
    client: kube::Client,
    node: String,
    namespace: String,
    mut mine: watch::Receiver<Arc<Mine>>,
) {
    let api = kube::Api::<ServiceL2Status>::namespaced(client, &namespace);
    let mut events = k8s::watch(api.clone(), watcher::Config::default());
    let (mut statuses, mut mirror) = (Statuses::default(), Mirror::new());
    let mut retry = tokio::time::interval(Duration::from_secs(5));
    let mut dirty = true;
    loop {
        tokio::select! {
            e = events.next() => match e {
                Some(Ok(e)) => dirty |= mirror.step(&mut statuses, e),
                Some(Err(e)) if crate::announce::not_found(&e) => {
                    debug!(error = %ErrorChain(&e), "watching servicel2statuses");
                }
                Some(Err(e)) => warn!(error = %ErrorChain(&e), "watching servicel2statuses"),
                None => return,
            },
            r = mine.changed() => {
                if r.is_err() {
                    return;
                }
                dirty = true;
            }
            _ = retry.tick() => {}
        }
        if !dirty || !mirror.synced() {
            continue;
        }
        let actions = plan(&statuses.0, &mine.borrow_and_update(), &node, &namespace);
        dirty = false;
        for a in actions {
            if let Err(e) = apply(&api, &mut statuses, a).await {
                warn!(error = %ErrorChain(&e), "writing a servicel2status");
                dirty = true; // again at the next tick
            }
        }
    }
}

/// Applies one action, and records its outcome in `statuses` at once: the watch
/// reports it later, and a plan made before then must not create the object again.
async fn apply(
    api: &kube::Api<ServiceL2Status>,
    statuses: &mut Statuses,
    action: Action,
) -> Result<(), kube::Error> {
    use k8s::Store as _;
    match action {
        Action::Create(s) => {
            let status = s.status.clone();
            let mut created = api.create(&PostParams::default(), &*s).await?;
            // The status subresource ignores the status given at creation.
            let name = created.metadata.name.clone().unwrap_or_default();
            created.status = status.clone();
            statuses.apply(k8s::object_key(&created), created);
            set_status(api, &name, status).await
        }
        Action::Update(name, status) => {
            set_status(api, &name, status.clone()).await?;
            if let Some(s) = statuses.0.values_mut().find(|s| s.name == name) {
                s.status = status;
            }
            Ok(())
        }
        Action::Delete(name) => {
            statuses.0.retain(|_, s| s.name != name);
            match api.delete(&name, &DeleteParams::default()).await {
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                r => r.map(drop),
            }
        }
    }
}

async fn set_status(
    api: &kube::Api<ServiceL2Status>,
    name: &str,
    status: ServiceL2StatusStatus,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, node: &str, svc: &str) -> Recorded {
        let (ns, n) = svc.split_once('/').unwrap();
        Recorded::of(ServiceL2Status {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("kube-system".into()),
                labels: Some(
                    [
                        (NODE_LABEL.to_owned(), node.to_owned()),
                        (SERVICE_NAME_LABEL.to_owned(), n.to_owned()),
                        (SERVICE_NAMESPACE_LABEL.to_owned(), ns.to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            status: desired(node, svc, &Announced::default()),
        })
    }

    #[test]
    fn the_announcer_creates_its_status_and_removes_the_others() {
        let existing: BTreeMap<ObjectKey, _> = [
            (
                "kube-system/l2-a".into(),
                status("l2-a", "node-2", "default/web"),
            ),
            (
                "kube-system/l2-b".into(),
                status("l2-b", "node-1", "default/old"),
            ),
            (
                "kube-system/l2-c".into(),
                status("l2-c", "node-3", "default/db"),
            ),
        ]
        .into();
        let mine: Mine = [("default/web".to_owned(), Announced::default())].into();
        let actions = plan(&existing, &mine, "node-1", "kube-system");
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert!(
            actions.contains(&Action::Delete("l2-a".into())),
            "node-2's, now ours"
        );
        assert!(
            actions.contains(&Action::Delete("l2-b".into())),
            "ours, no longer"
        );
        let Some(Action::Create(s)) = actions.last() else {
            panic!("{actions:?}")
        };
        assert_eq!(s.status.node, "node-1");
        assert_eq!(s.status.service_name, "web");
        assert_eq!(s.metadata.labels.as_ref().unwrap()[NODE_LABEL], "node-1");
    }

    #[test]
    fn a_status_in_place_is_left_alone_or_updated() {
        let existing: BTreeMap<ObjectKey, _> = [(
            "kube-system/l2-a".into(),
            status("l2-a", "node-1", "default/web"),
        )]
        .into();
        let mut mine: Mine = [("default/web".to_owned(), Announced::default())].into();
        assert!(plan(&existing, &mine, "node-1", "kube-system").is_empty());
        mine.get_mut("default/web")
            .unwrap()
            .interfaces
            .insert("eth0".into());
        assert!(matches!(
            &plan(&existing, &mine, "node-1", "kube-system")[..],
            [Action::Update(n, s)] if n == "l2-a" && s.interfaces[0].name == "eth0"
        ));
    }

    #[test]
    fn the_event_says_what_metallb_says() {
        let e = assigned_event("node-1", "default/web", "u-1");
        assert_eq!(e.reason.as_deref(), Some("nodeAssigned"));
        assert_eq!(
            e.message.as_deref(),
            Some("announcing from node \"node-1\" with protocol \"layer2\"")
        );
        assert_eq!(e.involved_object.uid.as_deref(), Some("u-1"));
    }
}
