//! `metrics.k8s.io/v1beta1`, as metrics-server serves it (`kubectl top pods|nodes`):
//! PodMetrics and NodeMetrics made on each read from the Summary API of the nodes'
//! kubelets (`/stats/summary`, the node's own accounting of its containers'
//! processes), fetched over the same mutual TLS as logs. A pod whose containers do not
//! have a CPU rate yet (two samples) is left out, as metrics-server leaves it out.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Response};
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response};
use super::{Req, State, Target};
use crate::error::{Error, Status};
use crate::resources;
use crate::selector::{FieldSelector, LabelSelector};
use crate::util::{now_secs, rfc3339};

/// The nodes sample every 10 s (node's `stats::INTERVAL`): the window of every rate.
const WINDOW: &str = "10s";

/// A CPU rate in nanocores and memory in bytes as metrics-server writes them.
fn usage(stats: &Value) -> Option<Value> {
    let cores = stats["cpu"]["usageNanoCores"].as_u64()?;
    let bytes = stats["memory"]["workingSetBytes"].as_u64().unwrap_or(0);
    Some(json!({"cpu": format!("{cores}n"), "memory": format!("{}Ki", bytes / 1024)}))
}

/// The stored objects of `resource` (core/v1) under `prefix_ns` (all when `None`).
fn stored(s: &State, resource: &str, ns: Option<&str>) -> Result<Vec<Value>, Error> {
    let rt = resources::lookup("", "v1", resource).ok_or_else(Status::not_found_path)?;
    let prefix = match ns {
        Some(ns) => format!("{}/{ns}/", rt.storage_prefix()),
        None => format!("{}/", rt.storage_prefix()),
    };
    Ok(s.store.list(&prefix, None, None, &|_| true)?.items)
}

/// `GET /apis/metrics.k8s.io/v1beta1/[namespaces/NS/]pods[/NAME]` and `.../nodes[/NAME]`.
pub(super) async fn serve(
    state: Arc<State>,
    t: Target,
    r: Req,
) -> Result<Response<ResponseBody>, Error> {
    if r.method != Method::GET || r.flag("watch") {
        return Err(Status::method_not_allowed(r.method.as_str()).into());
    }
    let pods_wanted = t.rt.resource == "pods";
    let labels = LabelSelector::parse(r.param("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(
        r.param("fieldSelector").unwrap_or(""),
        if pods_wanted { "Pod" } else { "Node" },
    )?;
    let st = state.clone();
    let ns = t.namespace.clone();
    let (nodes, pods) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let nodes = stored(&st, "nodes", None)?;
        let pods = if pods_wanted {
            stored(&st, "pods", ns.as_deref())?
        } else {
            Vec::new()
        };
        Ok((nodes, pods))
    })
    .await
    .map_err(Error::Task)??;
    let keep = |o: &Value| {
        labels.matches(o)
            && fields.matches(o)
            && t.name
                .as_deref()
                .is_none_or(|n| o["metadata"]["name"].as_str() == Some(n))
    };
    let pods: Vec<Value> = pods.into_iter().filter(|p| keep(p)).collect();
    // The nodes to ask: every one for nodes, those running the pods for pods.
    let asked: Vec<(String, SocketAddr)> = nodes
        .iter()
        .filter(|n| pods_wanted || keep(n))
        .filter(|n| {
            !pods_wanted
                || pods
                    .iter()
                    .any(|p| p["spec"]["nodeName"] == n["metadata"]["name"])
        })
        .filter_map(|n| {
            Some((
                n["metadata"]["name"].as_str()?.to_owned(),
                crate::kubelet::kubelet_endpoint(n)?,
            ))
        })
        .collect();
    let summaries = futures::future::join_all(asked.iter().map(|(name, addr)| {
        let state = state.clone();
        async move {
            match state.kubelet.get_json(*addr, "/stats/summary").await {
                Ok(s) => Some((name.clone(), s)),
                Err(e) => {
                    tracing::debug!(node = %name, error = %k8s::ErrorChain(&e), "no summary");
                    None
                }
            }
        }
    }))
    .await;
    let summaries: Vec<(String, Value)> = summaries.into_iter().flatten().collect();
    let now = rfc3339(now_secs());
    let mut items = Vec::new();
    if pods_wanted {
        for pod in &pods {
            let (ns, name) = (
                pod["metadata"]["namespace"].as_str().unwrap_or(""),
                pod["metadata"]["name"].as_str().unwrap_or(""),
            );
            let Some(stats) = summaries
                .iter()
                .filter(|(n, _)| pod["spec"]["nodeName"].as_str() == Some(n))
                .flat_map(|(_, s)| s["pods"].as_array().into_iter().flatten())
                .find(|p| p["podRef"]["namespace"] == ns && p["podRef"]["name"] == name)
            else {
                continue;
            };
            let containers: Option<Vec<Value>> = stats["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| Some(json!({"name": c["name"], "usage": usage(c)?})))
                .collect();
            let Some(containers) = containers.filter(|c| !c.is_empty()) else {
                continue;
            };
            items.push(json!({
                "metadata": {"name": name, "namespace": ns, "creationTimestamp": now,
                    "labels": pod["metadata"]["labels"]},
                "timestamp": stats["cpu"]["time"],
                "window": WINDOW,
                "containers": containers,
            }));
        }
    } else {
        for (name, s) in &summaries {
            let Some(u) = usage(&s["node"]) else { continue };
            let labels = nodes
                .iter()
                .find(|n| n["metadata"]["name"].as_str() == Some(name))
                .map(|n| n["metadata"]["labels"].clone())
                .unwrap_or(Value::Null);
            items.push(json!({
                "metadata": {"name": name, "creationTimestamp": now, "labels": labels},
                "timestamp": s["node"]["cpu"]["time"],
                "window": WINDOW,
                "usage": u,
            }));
        }
    }
    let kind = t.rt.kind;
    if let Some(name) = &t.name {
        let mut item = items
            .into_iter()
            .next()
            .ok_or_else(|| Status::not_found("metrics.k8s.io", t.rt.resource, name))?;
        item["kind"] = json!(kind);
        item["apiVersion"] = json!("metrics.k8s.io/v1beta1");
        return Ok(json_response(200, &item, "application/json"));
    }
    Ok(json_response(
        200,
        &json!({"kind": format!("{kind}List"), "apiVersion": "metrics.k8s.io/v1beta1",
            "metadata": {}, "items": items}),
        "application/json",
    ))
}
