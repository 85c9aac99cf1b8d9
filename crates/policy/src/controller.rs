//! Network policy's control loop, run by `kubewire agent` in the node's network
//! namespace: Pods, Namespaces, Nodes, NetworkPolicies and ClusterNetworkPolicies
//! mirrored into one [`NodePolicy`], whose sync a short while after a change (a burst of
//! events makes one sync) sends only what changed. At every resync the tables are
//! checked to be still whole.

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s::{ErrorChain, Mirror, ObjectKey};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod as K8sPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::watcher;
use netlink::nft::NftSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::admin::{AdminPolicy, ClusterNetworkPolicy};
use crate::denied;
use crate::model::{NodeInfo, Pod, Policy, namespace_labels};
use crate::node::NodePolicy;
use crate::ruleset::{Enforcer, Error, Log};
use crate::server::Request;

/// How long to collect more changes after the first before syncing.
const SYNC_DELAY: Duration = Duration::from_millis(10);

/// The pods of a [`NodePolicy`], as a [`k8s::Store`].
struct Pods<'a>(&'a mut NodePolicy);

impl k8s::Store<K8sPod> for Pods<'_> {
    fn apply(&mut self, key: ObjectKey, obj: K8sPod) -> bool {
        self.0.set_pod(&key, Pod::from_api(&obj))
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.set_pod(key, None)
    }
    fn keys(&self) -> Vec<ObjectKey> {
        self.0
            .cluster()
            .pods
            .keys()
            .map(|k| k.as_str().into())
            .collect()
    }
}

/// The namespaces of a [`NodePolicy`].
struct Namespaces<'a>(&'a mut NodePolicy);

impl k8s::Store<Namespace> for Namespaces<'_> {
    fn apply(&mut self, key: ObjectKey, obj: Namespace) -> bool {
        self.0.set_namespace(&key, Some(namespace_labels(&obj)))
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.set_namespace(key, None)
    }
    fn keys(&self) -> Vec<ObjectKey> {
        let names = self.0.cluster().namespaces.keys();
        names.map(|k| k.as_str().into()).collect()
    }
}

/// The policies of a [`NodePolicy`].
struct Policies<'a>(&'a mut NodePolicy);

impl k8s::Store<NetworkPolicy> for Policies<'_> {
    fn apply(&mut self, key: ObjectKey, obj: NetworkPolicy) -> bool {
        let (policy, problems) = Policy::from_api(&obj);
        for p in problems {
            warn!("{p}; left out (the policy allows less)");
        }
        self.0.set_policy(&key, Some(policy))
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.set_policy(key, None)
    }
    fn keys(&self) -> Vec<ObjectKey> {
        let keys = self.0.cluster().policies.keys();
        keys.map(|k| k.as_str().into()).collect()
    }
}

/// The nodes of a [`NodePolicy`] (for ClusterNetworkPolicy's `nodes` peers).
struct Nodes<'a>(&'a mut NodePolicy);

impl k8s::Store<Node> for Nodes<'_> {
    fn apply(&mut self, key: ObjectKey, obj: Node) -> bool {
        self.0.set_node(&key, Some(NodeInfo::from_api(&obj)))
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.set_node(key, None)
    }
    fn keys(&self) -> Vec<ObjectKey> {
        let names = self.0.cluster().nodes.keys();
        names.map(|k| k.as_str().into()).collect()
    }
}

/// The ClusterNetworkPolicies of a [`NodePolicy`].
struct AdminPolicies<'a>(&'a mut NodePolicy);

impl k8s::Store<ClusterNetworkPolicy> for AdminPolicies<'_> {
    fn apply(&mut self, key: ObjectKey, obj: ClusterNetworkPolicy) -> bool {
        let (policy, problems) = AdminPolicy::from_api(&obj);
        for p in problems {
            warn!("{p}");
        }
        self.0.set_admin_policy(&key, policy)
    }
    fn delete(&mut self, key: &str) -> bool {
        self.0.set_admin_policy(key, None)
    }
    fn keys(&self) -> Vec<ObjectKey> {
        let keys = self.0.cluster().admin.keys();
        keys.map(|k| k.as_str().into()).collect()
    }
}

/// Whether a watch failed because the API serves no such resource (a cluster without
/// the ClusterNetworkPolicy CRD).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => s.code == 404,
        _ => false,
    }
}

/// A CNI plugin waiting for a new pod's policies.
struct Waiter {
    key: String,
    ips: Vec<std::net::IpAddr>,
    reply: tokio::sync::oneshot::Sender<Result<Option<cni::capture::Capture>, String>>,
    deadline: Instant,
}

/// Runs network policy for node `node` until the watches end; answers the CNI plugin's
/// questions from `requests` ([`crate::server`]) when given; logs denied packets as
/// `log` says ([`crate::denied`]).
pub async fn run(
    client: kube::Client,
    node: String,
    resync: Duration,
    mut requests: Option<mpsc::Receiver<Request>>,
    log: Option<Log>,
) -> Result<(), Error> {
    let socket = NftSocket::new().map_err(Error::Socket)?;
    let mut state = NodePolicy::new(node.clone(), Enforcer::new(socket).with_log(log));
    let mut denied = log.and_then(denied::read);
    let config = watcher::Config::default();
    let mut pod_events = k8s::watch(kube::Api::<K8sPod>::all(client.clone()), config.clone());
    let mut ns_events = k8s::watch(kube::Api::<Namespace>::all(client.clone()), config.clone());
    let mut np_events = k8s::watch(
        kube::Api::<NetworkPolicy>::all(client.clone()),
        config.clone(),
    );
    let mut cnp_events = k8s::watch(
        kube::Api::<ClusterNetworkPolicy>::all(client.clone()),
        config.clone(),
    );
    let mut node_events = k8s::watch(kube::Api::<Node>::all(client), config);
    let mut node_mirror = Mirror::new();
    let (mut pods, mut namespaces, mut policies) = (Mirror::new(), Mirror::new(), Mirror::new());
    let mut admin = Mirror::new();
    // The API has no ClusterNetworkPolicy (its CRD is not installed): none apply, and the
    // watch keeps trying, so that installing the CRD later takes effect.
    let mut admin_absent = false;
    let mut tick = tokio::time::interval(resync);
    // When the first change not yet synced came.
    let mut pending: Option<Instant> = None;
    let mut waiters: Vec<Waiter> = Vec::new();
    info!(node = %node, "network policy started");
    loop {
        let wait = match pending {
            Some(since) => SYNC_DELAY.saturating_sub(since.elapsed()),
            None => Duration::from_secs(3600),
        };
        let changed = tokio::select! {
            e = pod_events.next() => match e {
                Some(Ok(e)) => pods.step(&mut Pods(&mut state), e),
                Some(Err(e)) => { warn!(error = %ErrorChain(&e), "watching pods"); false }
                None => return Err(Error::WatchEnded),
            },
            e = ns_events.next() => match e {
                Some(Ok(e)) => namespaces.step(&mut Namespaces(&mut state), e),
                Some(Err(e)) => { warn!(error = %ErrorChain(&e), "watching namespaces"); false }
                None => return Err(Error::WatchEnded),
            },
            e = np_events.next() => match e {
                Some(Ok(e)) => policies.step(&mut Policies(&mut state), e),
                Some(Err(e)) => { warn!(error = %ErrorChain(&e), "watching network policies"); false }
                None => return Err(Error::WatchEnded),
            },
            e = cnp_events.next() => match e {
                Some(Ok(e)) => {
                    admin_absent = false;
                    admin.step(&mut AdminPolicies(&mut state), e)
                }
                Some(Err(e)) if not_served(&e) => {
                    let first = !admin_absent;
                    if first {
                        info!("the API serves no ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2): the admin tiers are empty until its CRD is installed");
                    }
                    admin_absent = true;
                    let keys: Vec<String> = state.cluster().admin.keys().cloned().collect();
                    // The first time, a sync: it may be what the others wait for.
                    let mut changed = first;
                    for k in keys {
                        changed |= state.set_admin_policy(&k, None);
                    }
                    changed
                }
                Some(Err(e)) => { warn!(error = %ErrorChain(&e), "watching cluster network policies"); false }
                None => return Err(Error::WatchEnded),
            },
            e = node_events.next() => match e {
                Some(Ok(e)) => node_mirror.step(&mut Nodes(&mut state), e),
                Some(Err(e)) => { warn!(error = %ErrorChain(&e), "watching nodes"); false }
                None => return Err(Error::WatchEnded),
            },
            Some(packet) = next(&mut denied) => {
                denied::report(state.cluster(), &packet);
                false
            }
            Some(r) = next(&mut requests) => {
                state.hint(&r.key, r.ips.clone());
                waiters.push(Waiter {
                    key: r.key,
                    ips: r.ips,
                    reply: r.reply,
                    deadline: Instant::now() + cni::policy::WAIT,
                });
                // A sync even when nothing changed: the answer follows one.
                true
            }
            _ = tick.tick() => !state.intact(),
            () = tokio::time::sleep(Duration::from_secs(1)), if !waiters.is_empty() => {
                expire(&mut waiters, &mut state)
            }
            () = tokio::time::sleep(wait), if pending.is_some() => {
                pending = None;
                let admin_known = (admin.synced() || admin_absent) && node_mirror.synced();
                if pods.synced() && namespaces.synced() && policies.synced() && admin_known {
                    if sync(&mut state) {
                        answer(&mut waiters, &state);
                    }
                } else {
                    // Not whole yet: judging now could cut allowed traffic.
                    pending = Some(Instant::now());
                }
                false
            }
        };
        if changed && pending.is_none() {
            pending = Some(Instant::now());
        }
    }
}

async fn next<T>(requests: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match requests {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Answers the plugins waiting for pods now known with their addresses (the sync just
/// applied included them), with how a meshed pod's traffic is captured.
fn answer(waiters: &mut Vec<Waiter>, state: &NodePolicy) {
    for w in std::mem::take(waiters) {
        if state.cluster().has_pod_with(&w.key, &w.ips) {
            debug!(pod = %w.key, "network policy in force for a new pod");
            let capture = state
                .cluster()
                .pods
                .get(&w.key)
                .and_then(|p| p.capture.clone());
            let _ = w.reply.send(Ok(capture));
        } else {
            waiters.push(w);
        }
    }
}

/// Refuses the plugins that waited too long for their pod to appear in the API, and
/// forgets the addresses they gave; returns whether a pod changed.
fn expire(waiters: &mut Vec<Waiter>, state: &mut NodePolicy) -> bool {
    let now = Instant::now();
    let mut changed = false;
    for w in std::mem::take(waiters) {
        if now < w.deadline {
            waiters.push(w);
            continue;
        }
        changed |= state.unhint(&w.key);
        let _ = w.reply.send(Err(format!(
            "pod {} was not seen in the API within {:?}",
            w.key,
            cni::policy::WAIT
        )));
    }
    changed
}

/// One sync; returns whether the kernel now holds the desired verdicts.
fn sync(state: &mut NodePolicy) -> bool {
    let started = Instant::now();
    match state.sync() {
        Ok(r) => {
            // Connections allowed until now and denied from now on: once the table
            // denies their next packet, their conntrack entries go.
            if r.narrower {
                match state.cut() {
                    Ok(0) => {}
                    Ok(n) => info!(
                        connections = n,
                        "cut connections network policy no longer allows"
                    ),
                    Err(e) => {
                        warn!(error = %ErrorChain(&e), "cutting connections network policy no longer allows")
                    }
                }
            }
            if r.sync.messages == 0 {
                debug!("network policy unchanged");
            } else {
                let d = state.desired();
                info!(
                    full = r.sync.full,
                    messages = r.sync.messages,
                    isolated_ingress = d.ingress.isolated.len(),
                    isolated_egress = d.egress.isolated.len(),
                    elements = d.ingress.len() + d.egress.len(),
                    compute_ms = r.compute.as_secs_f64() * 1e3,
                    total_ms = started.elapsed().as_secs_f64() * 1e3,
                    "network policy synced"
                );
            }
            true
        }
        Err(e) => {
            warn!(error = %ErrorChain(&e), "applying network policy; everything is sent again at the next change or resync");
            false
        }
    }
}
