//! The scheduler: every pod without `spec.nodeName` (for `default-scheduler`) is bound
//! to a Ready, schedulable node whose labels match its nodeSelector, whose NoSchedule/
//! NoExecute taints it tolerates and whose host ports it does not collide with; among
//! those, the one running the fewest pods (spread). A pod nothing fits stays Pending
//! with `PodScheduled=False` and a `FailedScheduling` event, as kube-scheduler leaves it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{Binding, Event, Node, ObjectReference, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use tracing::{info, warn};

use crate::cache::{self, Outcome};
use crate::util::{self, now};
use crate::{Ctx, Error};

/// The scheduler's name in `spec.schedulerName`, events and conditions.
pub const SCHEDULER_NAME: &str = "default-scheduler";

/// Whether the taint is tolerated (kube's `ToleratesTaint`).
pub fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t
            .effect
            .as_deref()
            .is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = t
            .key
            .as_deref()
            .is_none_or(|k| k.is_empty() || k == taint.key);
        let value_ok = match t.operator.as_deref().unwrap_or("Equal") {
            "Exists" => true,
            _ => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        };
        effect_ok && key_ok && value_ok
    })
}

/// The first NoSchedule/NoExecute taint of `node` that `tolerations` do not tolerate.
pub fn untolerated<'a>(node: &'a Node, tolerations: &[Toleration]) -> Option<&'a Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .find(|t| !tolerates(tolerations, t))
}

/// Whether the node satisfies the pod's required node affinity
/// (`requiredDuringSchedulingIgnoredDuringExecution`: terms ORed, the expressions and
/// fields of a term ANDed); preferred terms are ignored.
pub fn affinity_matches(spec: &k8s_openapi::api::core::v1::PodSpec, node: &Node) -> bool {
    let Some(required) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    else {
        return true;
    };
    let req_ok = |have: Option<&str>, op: &str, values: &[String]| match op {
        "In" => have.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => have.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => have.is_some(),
        "DoesNotExist" => have.is_none(),
        "Gt" | "Lt" => {
            let (Some(h), Some(x)) = (
                have.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|v| v.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if op == "Gt" { h > x } else { h < x }
        }
        _ => false,
    };
    let name = node.name_any();
    required.node_selector_terms.iter().any(|term| {
        let exprs = term.match_expressions.iter().flatten().all(|e| {
            let have = node.labels().get(&e.key).map(String::as_str);
            req_ok(have, &e.operator, e.values.as_deref().unwrap_or_default())
        });
        let fields = term.match_fields.iter().flatten().all(|e| {
            let have = (e.key == "metadata.name").then_some(name.as_str());
            req_ok(have, &e.operator, e.values.as_deref().unwrap_or_default())
        });
        // An empty term matches nothing, as in kube.
        let empty = term.match_expressions.as_ref().is_none_or(Vec::is_empty)
            && term.match_fields.as_ref().is_none_or(Vec::is_empty);
        !empty && exprs && fields
    })
}

/// The node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A host port a pod takes: (protocol, port, host IP).
pub type HostPort = (String, i32, String);

/// The host ports a pod takes on its node.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.is_some_and(|h| h > 0))
        .map(|p| {
            (
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.host_port.unwrap_or(0),
                p.host_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or_else(|| "0.0.0.0".into()),
            )
        })
        .collect()
}

fn ports_conflict(want: &[HostPort], used: &HashSet<HostPort>) -> bool {
    want.iter().any(|(proto, port, ip)| {
        used.iter().any(|(p2, port2, ip2)| {
            p2 == proto && port2 == port && (ip == ip2 || ip == "0.0.0.0" || ip2 == "0.0.0.0")
        })
    })
}

/// What the scheduler knows about each node's load.
#[derive(Debug, Default, Clone)]
pub struct NodeLoad {
    /// Pods bound to the node (not finished).
    pub pods: usize,
    /// Host ports taken on the node.
    pub ports: HashSet<HostPort>,
}

/// Picks a node for `pod`, or says why none fits (kube-scheduler's message shape:
/// `0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, ...`).
pub fn pick(
    pod: &Pod,
    nodes: &[&Node],
    load: &HashMap<String, NodeLoad>,
) -> Result<String, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let selector = spec.node_selector.clone().unwrap_or_default();
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    let want_ports = host_ports(pod);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut best: Option<(usize, String)> = None;
    for node in nodes {
        let name = node.name_any();
        let reason = if !node_ready(node) {
            Some("node(s) were not ready".to_string())
        } else if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            Some("node(s) were unschedulable".to_string())
        } else if !selector
            .iter()
            .all(|(k, v)| node.labels().get(k) == Some(v))
            || !affinity_matches(&spec, node)
        {
            Some("node(s) didn't match Pod's node affinity/selector".to_string())
        } else if let Some(t) = untolerated(node, &tolerations) {
            Some(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                t.key,
                t.value.as_deref().unwrap_or("")
            ))
        } else if ports_conflict(
            &want_ports,
            &load.get(&name).map(|l| l.ports.clone()).unwrap_or_default(),
        ) {
            Some("node(s) didn't have free ports for the requested pod ports".to_string())
        } else {
            None
        };
        match reason {
            Some(r) => *reasons.entry(r).or_default() += 1,
            None => {
                let n = load.get(&name).map_or(0, |l| l.pods);
                if best
                    .as_ref()
                    .is_none_or(|(bn, bname)| n < *bn || (n == *bn && name < *bname))
                {
                    best = Some((n, name));
                }
            }
        }
    }
    match best {
        Some((_, name)) => Ok(name),
        None => {
            let detail: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            let mut msg = format!("0/{} nodes are available", nodes.len());
            if !detail.is_empty() {
                msg.push_str(": ");
                msg.push_str(&detail.join(", "));
            }
            msg.push('.');
            Err(msg)
        }
    }
}

/// Whether this scheduler should place the pod.
pub fn wants_scheduling(pod: &Pod) -> bool {
    let spec = pod.spec.as_ref();
    spec.and_then(|s| s.node_name.as_deref())
        .is_none_or(str::is_empty)
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|s| s.is_empty() || s == SCHEDULER_NAME)
        && util::pod_active(pod)
}

/// Scheduler state across passes.
#[derive(Default)]
struct State {
    /// Last FailedScheduling message per pod uid (one event per new reason).
    reported: Mutex<HashMap<String, String>>,
    /// The server has no `pods/binding` subresource: set `spec.nodeName` instead.
    no_binding: AtomicBool,
}

/// Runs the scheduler.
pub async fn run(ctx: Ctx) {
    let c = &ctx.caches;
    let ready = vec![cache::ready(&c.pods), cache::ready(&c.nodes)];
    let triggers = vec![c.pods.subscribe(), c.nodes.subscribe()];
    let resync = ctx.config.resync;
    let state = Arc::new(State::default());
    cache::run_loop("scheduler", ready, triggers, resync, move || {
        let (ctx, state) = (ctx.clone(), state.clone());
        async move { pass(&ctx, &state).await }.boxed()
    })
    .await;
}

async fn pass(ctx: &Ctx, state: &State) -> Outcome {
    let c = &ctx.caches;
    let pods = c.pods.all();
    let nodes = c.nodes.all();
    let node_refs: Vec<&Node> = nodes.iter().map(|n| &**n).collect();
    let mut load: HashMap<String, NodeLoad> = HashMap::new();
    for p in &pods {
        let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if matches!(util::phase(p), "Succeeded" | "Failed") {
            continue;
        }
        let l = load.entry(n).or_default();
        l.pods += 1;
        l.ports.extend(host_ports(p));
    }
    let mut pending: Vec<&Arc<Pod>> = pods.iter().filter(|p| wants_scheduling(p)).collect();
    pending.sort_by(|a, b| {
        a.metadata
            .creation_timestamp
            .cmp(&b.metadata.creation_timestamp)
            .then(a.name_any().cmp(&b.name_any()))
    });
    let mut out = Outcome::default();
    {
        // Forget pods that are gone or placed.
        let live: HashSet<&str> = pending
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        state
            .reported
            .lock()
            .unwrap()
            .retain(|uid, _| live.contains(uid.as_str()));
    }
    for pod in pending {
        let r = match pick(pod, &node_refs, &load) {
            Ok(node) => {
                let r = bind(ctx, state, pod, &node).await;
                if r.is_ok() {
                    let l = load.entry(node).or_default();
                    l.pods += 1;
                    l.ports.extend(host_ports(pod));
                }
                r
            }
            Err(msg) => unschedulable(ctx, state, pod, msg).await,
        };
        match r {
            Ok(Some(check)) => out.expect.push(check),
            Ok(None) => {}
            Err(e) => {
                warn!(error = %k8s::ErrorChain(&e), "scheduler");
                out.failed = true;
            }
        }
    }
    out
}

async fn bind(
    ctx: &Ctx,
    state: &State,
    pod: &Pod,
    node: &str,
) -> Result<Option<cache::Check>, Error> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let what = || format!("binding pod {ns}/{name} to node {node}");
    if !state.no_binding.load(Ordering::Relaxed) {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                ..Default::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.into()),
                ..Default::default()
            },
        };
        let r: Result<serde_json::Value, kube::Error> = api
            .create_subresource("binding", &name, &PostParams::default(), &binding)
            .await;
        match r {
            Ok(_) => {
                info!(pod = %format!("{ns}/{name}"), node, "bound");
                scheduled_event(ctx, pod, node);
                return Ok(Some(placed(ctx, &ns, &name)));
            }
            // The pod exists (we just saw it) but the server has no binding
            // subresource: fall back to writing spec.nodeName, as this lab's API
            // server expects.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 405 => {
                if api
                    .get_opt(&name)
                    .await
                    .map_err(Error::api(what()))?
                    .is_none()
                {
                    return Ok(None);
                }
                info!("the API server has no pods/binding; setting spec.nodeName instead");
                state.no_binding.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(Error::api(what())(e)),
        }
    }
    // kube-apiserver sets PodScheduled when it binds; without binding we do, before
    // the pod is bound, and only that condition (a strategic merge by type: the
    // kubelet's conditions are not ours to overwrite).
    let condition = k8s_openapi::api::core::v1::PodCondition {
        type_: "PodScheduled".into(),
        status: "True".into(),
        last_transition_time: Some(now()),
        ..Default::default()
    };
    let status = json!({"status": {"conditions": [condition]}});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(Error::api(what())(e)),
    }
    let patch = json!({"spec": {"nodeName": node}});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(Error::api(what())(e)),
    }
    info!(pod = %format!("{ns}/{name}"), node, "bound");
    scheduled_event(ctx, pod, node);
    Ok(Some(placed(ctx, &ns, &name)))
}

fn scheduled_event(ctx: &Ctx, pod: &Pod, node: &str) {
    let msg = format!("Successfully assigned {} to {node}", util::key(pod));
    k8s::events::record(
        &ctx.client,
        k8s::events::about(pod, SCHEDULER_NAME, "Normal", "Scheduled", msg),
    );
}

/// The store shows the pod placed (or gone).
fn placed(ctx: &Ctx, ns: &str, name: &str) -> cache::Check {
    let store = ctx.caches.pods.store.clone();
    let r = kube::runtime::reflector::ObjectRef::new(name).within(ns);
    Box::new(move || {
        store
            .get(&r)
            .is_none_or(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
    })
}

async fn unschedulable(
    ctx: &Ctx,
    state: &State,
    pod: &Pod,
    msg: String,
) -> Result<Option<cache::Check>, Error> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if state.reported.lock().unwrap().get(&uid) == Some(&msg) {
        return Ok(None);
    }
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let condition = k8s_openapi::api::core::v1::PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some(msg.clone()),
        last_transition_time: Some(now()),
        ..Default::default()
    };
    let patch = json!({"status": {"conditions": [condition]}});
    match api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(Error::api(format!("marking pod {ns}/{name} unschedulable"))(e)),
    }
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), &ns);
    let event = k8s::events::about(
        pod,
        SCHEDULER_NAME,
        "Warning",
        "FailedScheduling",
        msg.clone(),
    );
    events
        .create(&PostParams::default(), &event)
        .await
        .map_err(Error::api(format!(
            "recording FailedScheduling for pod {ns}/{name}"
        )))?;
    warn!(pod = %format!("{ns}/{name}"), "{msg}");
    state.reported.lock().unwrap().insert(uid, msg);
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, v: serde_json::Value) -> Node {
        let mut base = json!({"metadata": {"name": name, "labels": {"disk": "ssd"}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        if let (Some(b), Some(v)) = (base.as_object_mut(), v.as_object()) {
            for (k, x) in v {
                b.insert(k.clone(), x.clone());
            }
        }
        serde_json::from_value(base).unwrap()
    }

    fn pod(spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [{"name": "c", "image": "nginx"}]});
        for (k, v) in spec.as_object().unwrap() {
            s[k] = v.clone();
        }
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": s})).unwrap()
    }

    #[test]
    fn spreads_to_the_least_loaded_ready_node() {
        let a = node("a", json!({}));
        let b = node("b", json!({}));
        let down = node(
            "c",
            json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
        );
        let mut load = HashMap::new();
        load.insert(
            "a".to_string(),
            NodeLoad {
                pods: 2,
                ..Default::default()
            },
        );
        assert_eq!(
            pick(&pod(json!({})), &[&a, &b, &down], &load),
            Ok("b".into())
        );
        load.insert(
            "b".to_string(),
            NodeLoad {
                pods: 5,
                ..Default::default()
            },
        );
        assert_eq!(
            pick(&pod(json!({})), &[&a, &b, &down], &load),
            Ok("a".into())
        );
    }

    #[test]
    fn selector_taints_and_host_ports_exclude_nodes() {
        let a = node(
            "a",
            json!({"metadata": {"name": "a", "labels": {"disk": "hdd"}}}),
        );
        let b = node(
            "b",
            json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}}),
        );
        let c = node("c", json!({"spec": {"unschedulable": true}}));
        let p = pod(json!({"nodeSelector": {"disk": "ssd"}}));
        let err = pick(&p, &[&a, &b, &c], &HashMap::new()).unwrap_err();
        assert_eq!(
            err,
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {dedicated: db}, 1 node(s) were unschedulable."
        );
        let tolerant = pod(
            json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}),
        );
        assert_eq!(pick(&tolerant, &[&b], &HashMap::new()), Ok("b".into()));
        let any = pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(pick(&any, &[&b], &HashMap::new()), Ok("b".into()));

        let hp = pod(
            json!({"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}),
        );
        let mut load = HashMap::new();
        load.insert(
            "b".to_string(),
            NodeLoad {
                pods: 0,
                ports: host_ports(&hp).into_iter().collect(),
            },
        );
        let free = node("free", json!({"metadata": {"name": "free"}}));
        let busy = node("b", json!({}));
        load.get_mut("b").unwrap().pods = 0;
        load.insert(
            "free".to_string(),
            NodeLoad {
                pods: 9,
                ..Default::default()
            },
        );
        assert_eq!(pick(&hp, &[&busy, &free], &load), Ok("free".into()));
        assert!(
            pick(&hp, &[&busy], &load)
                .unwrap_err()
                .contains("free ports")
        );
    }

    #[test]
    fn required_node_affinity() {
        let a = node(
            "a",
            json!({"metadata": {"name": "a", "labels": {"zone": "z1", "cpus": "8"}}}),
        );
        let b = node(
            "b",
            json!({"metadata": {"name": "b", "labels": {"zone": "z2", "cpus": "2"}}}),
        );
        let p = |terms: serde_json::Value| {
            pod(
                json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}}),
            )
        };
        let z2 =
            p(json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z2"]}]}]));
        assert_eq!(pick(&z2, &[&a, &b], &HashMap::new()), Ok("b".into()));
        let big =
            p(json!([{"matchExpressions": [{"key": "cpus", "operator": "Gt", "values": ["4"]}]}]));
        assert_eq!(pick(&big, &[&a, &b], &HashMap::new()), Ok("a".into()));
        let named = p(
            json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]),
        );
        assert_eq!(pick(&named, &[&a, &b], &HashMap::new()), Ok("b".into()));
        let either = p(
            json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z9"]}]},
                              {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z1"]}]}]),
        );
        assert_eq!(pick(&either, &[&a, &b], &HashMap::new()), Ok("b".into()));
    }

    #[test]
    fn only_unbound_active_default_scheduler_pods() {
        assert!(wants_scheduling(&pod(json!({}))));
        assert!(!wants_scheduling(&pod(json!({"nodeName": "a"}))));
        assert!(!wants_scheduling(&pod(json!({"schedulerName": "other"}))));
    }
}
