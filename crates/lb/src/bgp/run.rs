//! The BGP announcer as the agent runs it: each new view of the cluster is planned
//! ([`plan::plan`](super::plan::plan)) and handed to the [`Speaker`]; the Services it
//! announces get a ServiceBGPStatus per node (MetalLB's object: which peers this node
//! announces them to), and configuration it cannot use, and sessions going up or down,
//! become Events on the BGPPeer or BGPAdvertisement.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use k8s::ErrorChain;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use super::plan::{self, Plan};
use super::speaker::Speaker;
use crate::announce::View;
use crate::crd::{BGPPeer, ServiceBGPStatus};

/// MetalLB's labels on a ServiceBGPStatus.
pub const LABEL_NODE: &str = "metallb.io/node";
pub const LABEL_SERVICE_NAME: &str = "metallb.io/service-name";
pub const LABEL_SERVICE_NAMESPACE: &str = "metallb.io/service-namespace";
/// The component named in Events and as the field manager.
const COMPONENT: &str = "kubewire-bgp";
/// How long a stopping agent waits for its sessions to withdraw and close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The view's channel closed: the announce store stopped.
    #[error("the announcers' view ended")]
    ViewEnded,
}

/// The BGP announcer's flags (in `kubewire agent`).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct BgpArgs {
    /// Announce LoadBalancer addresses over BGP to the BGPPeers that select this node.
    #[arg(long = "bgp-announce", default_value_t = true, action = clap::ArgAction::Set)]
    pub bgp_announce: bool,
    /// The namespace the ServiceBGPStatus objects go to (MetalLB: its own).
    #[arg(long, default_value = "kube-system")]
    pub bgp_status_namespace: String,
}

impl BgpArgs {
    /// These flags as command-line arguments.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            format!("--bgp-announce={}", self.bgp_announce).into(),
            "--bgp-status-namespace".into(),
            self.bgp_status_namespace.clone().into(),
        ]
    }
}

/// Runs until `stop` fires (then withdraws everything and closes every session with
/// Cease) or the view ends.
pub async fn run(
    client: kube::Client,
    node: String,
    args: BgpArgs,
    mut view: watch::Receiver<Arc<View>>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), Error> {
    let (bfd_peers, bfd_peers_rx) = watch::channel(BTreeMap::new());
    let (bfd_states, bfd_states_rx) = watch::channel(BTreeMap::new());
    let bfd = tokio::spawn(super::bfd::run(bfd_peers_rx, bfd_states));
    let (mut speaker, mut sessions) = Speaker::new(bfd_states_rx);
    let mut statuses = Statuses::new(client.clone(), &node, &args.bgp_status_namespace);
    let mut reported: BTreeSet<(String, String)> = BTreeSet::new();
    let mut peers: BTreeMap<String, BGPPeer> = BTreeMap::new();
    let mut last_event: BTreeMap<String, (bool, Option<String>)> = BTreeMap::new();
    info!(%node, "BGP announcer started");
    loop {
        tokio::select! {
            changed = view.changed() => {
                if changed.is_err() {
                    speaker.shutdown(SHUTDOWN_GRACE).await;
                    return Err(Error::ViewEnded);
                }
                let v = view.borrow_and_update().clone();
                if !v.synced {
                    continue;
                }
                let plan = plan::plan(&v, &node);
                peers = v.bgp_peers.values().map(|p| (p.metadata.name.clone().unwrap_or_default(), p.clone())).collect();
                report_problems(&client, &v, &plan, &mut reported);
                let want: BTreeMap<_, _> = plan
                    .peers
                    .values()
                    .filter_map(|p| {
                        let timers = p.session.bfd?;
                        Some((p.session.address.ip(), super::bfd::Peer {
                            address: p.session.address.ip(),
                            source: p.session.source,
                            timers,
                        }))
                    })
                    .collect();
                bfd_peers.send_if_modified(|b| if *b == want { false } else { *b = want; true });
                speaker.apply(&plan);
                statuses.reconcile(&plan.services).await;
            }
            Some(s) = sessions.recv() => {
                let Some(peer) = peers.get(&s.peer) else { continue };
                // A peer that keeps refusing gets one Event per distinct reason, not one
                // per attempt.
                let key = (s.established, s.reason.clone());
                if last_event.get(&s.peer) == Some(&key) {
                    continue;
                }
                last_event.insert(s.peer.clone(), key);
                let (type_, reason, message) = if s.established {
                    ("Normal", "SessionEstablished", format!("node {node}: BGP session established"))
                } else {
                    ("Warning", "SessionDown", format!("node {node}: BGP session down: {}", s.reason.unwrap_or_default()))
                };
                k8s::events::record(&client, k8s::events::about(peer, COMPONENT, type_, reason, message));
            }
            _ = &mut stop => {
                info!("agent stopping: withdrawing BGP routes and closing the sessions");
                speaker.shutdown(SHUTDOWN_GRACE).await;
                bfd.abort();
                statuses.reconcile(&BTreeMap::new()).await;
                return Ok(());
            }
        }
    }
}

/// One Event per distinct problem (while it lasts; again if it comes back).
fn report_problems(
    client: &kube::Client,
    view: &View,
    plan: &Plan,
    reported: &mut BTreeSet<(String, String)>,
) {
    let now: BTreeSet<(String, String)> = plan.problems.iter().cloned().collect();
    for (object, message) in now.difference(reported) {
        warn!(%object, %message, "BGP configuration not used");
        let peer = view
            .bgp_peers
            .values()
            .find(|p| object == &format!("BGPPeer {}/{}", ns(&p.metadata), name(&p.metadata)));
        if let Some(p) = peer {
            k8s::events::record(
                client,
                k8s::events::about(
                    p,
                    COMPONENT,
                    "Warning",
                    "InvalidConfiguration",
                    message.clone(),
                ),
            );
        } else if let Some(a) = view.bgp_advertisements.values().find(|a| {
            object == &format!("BGPAdvertisement {}/{}", ns(&a.metadata), name(&a.metadata))
        }) {
            k8s::events::record(
                client,
                k8s::events::about(
                    a,
                    COMPONENT,
                    "Warning",
                    "InvalidConfiguration",
                    message.clone(),
                ),
            );
        }
    }
    *reported = now;
}

fn ns(m: &ObjectMeta) -> &str {
    m.namespace.as_deref().unwrap_or_default()
}

fn name(m: &ObjectMeta) -> &str {
    m.name.as_deref().unwrap_or_default()
}

/// This node's ServiceBGPStatus objects, written only when they change.
struct Statuses {
    api: Api<ServiceBGPStatus>,
    node: String,
    /// What the API holds, by Service key; `None` until listed.
    written: Option<BTreeMap<String, BTreeSet<String>>>,
}

impl Statuses {
    fn new(client: kube::Client, node: &str, namespace: &str) -> Statuses {
        Statuses {
            api: Api::namespaced(client, namespace),
            node: node.to_owned(),
            written: None,
        }
    }

    async fn reconcile(&mut self, want: &BTreeMap<String, BTreeSet<String>>) {
        if self.written.is_none() {
            let lp = ListParams::default().labels(&format!("{LABEL_NODE}={}", self.node));
            match self.api.list(&lp).await {
                Ok(list) => {
                    self.written = Some(
                        list.items
                            .into_iter()
                            .map(|s| {
                                (
                                    format!(
                                        "{}/{}",
                                        s.status.service_namespace, s.status.service_name
                                    ),
                                    s.status.peers.into_iter().collect(),
                                )
                            })
                            .collect(),
                    );
                }
                Err(e) => {
                    warn!(error = %ErrorChain(&e), "listing ServiceBGPStatus objects; retrying at the next change");
                    return;
                }
            }
        }
        let written = self.written.get_or_insert_default();
        let gone: Vec<String> = written
            .keys()
            .filter(|k| !want.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let name = status_name(&self.node, &key);
            match self.api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    written.remove(&key);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    written.remove(&key);
                }
                Err(e) => {
                    warn!(error = %ErrorChain(&e), object = %name, "deleting a ServiceBGPStatus")
                }
            }
        }
        let node = self.node.clone();
        for (key, peers) in want {
            if written.get(key) == Some(peers) {
                continue;
            }
            let (svc_ns, svc_name) = key.split_once('/').unwrap_or(("default", key));
            let name = status_name(&node, key);
            let params = PatchParams::apply(COMPONENT).force();
            let obj = json!({
                "apiVersion": "metallb.io/v1beta1",
                "kind": "ServiceBGPStatus",
                "metadata": {"name": name, "labels": {
                    LABEL_NODE: node, LABEL_SERVICE_NAME: svc_name, LABEL_SERVICE_NAMESPACE: svc_ns,
                }},
            });
            let status = json!({
                "apiVersion": "metallb.io/v1beta1",
                "kind": "ServiceBGPStatus",
                "status": {"node": node, "serviceName": svc_name, "serviceNamespace": svc_ns,
                           "peers": peers},
            });
            let result = async {
                self.api.patch(&name, &params, &Patch::Apply(&obj)).await?;
                self.api
                    .patch_status(&name, &params, &Patch::Apply(&status))
                    .await
            }
            .await;
            match result {
                Ok(_) => {
                    written.insert(key.clone(), peers.clone());
                }
                Err(e) => {
                    warn!(error = %ErrorChain(&e), object = %name, "writing a ServiceBGPStatus")
                }
            }
        }
    }
}

/// A ServiceBGPStatus's name: one per node and Service, so it is found without a list
/// (MetalLB lets the API generate names and lists by label instead).
fn status_name(node: &str, service: &str) -> String {
    format!("bgp-{node}-{}", service.replace('/', "-"))
        .chars()
        .take(253)
        .collect()
}
