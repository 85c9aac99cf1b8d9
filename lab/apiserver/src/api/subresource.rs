//! Subresources with handlers of their own: `scale`, `pods/binding` (and the
//! `bindings` collection), `pods/log`, `pods/exec`, `pods/attach`,
//! `pods/portforward`, `serviceaccounts/token` and `namespaces/finalize`. (`status` is served by the object's own verbs; see
//! [`super::write::store_update`].)

use std::sync::Arc;

use http::{Method, Response};
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response};
use super::write::{parse_body, store_update};
use super::{Req, State, Target};
use crate::error::{Cause, Error, Status};
use crate::patch::{self, PatchType};
use crate::resources;
use crate::store::EventType;
use crate::util::{now_secs, rfc3339, str_at};

/// `POST .../pods/NAME/binding` (or `.../bindings` naming the pod in the body): a
/// `Binding` sets the pod's `spec.nodeName`, as the scheduler does it, with
/// kube-apiserver's BindingREST checks and messages.
pub(super) fn bind_pod(
    s: &State,
    ns: &str,
    url_name: Option<&str>,
    r: &Req,
) -> Result<Response<ResponseBody>, Error> {
    let body = r.json_body()?;
    let b: Value = serde_json::from_slice(&body)
        .map_err(|e| Status::bad_request(format!("error decoding Binding: {e}")))?;
    if !b.is_object() {
        return Err(Status::bad_request("a Binding must be an object").into());
    }
    let (kind, api) = (b["kind"].as_str(), b["apiVersion"].as_str());
    if kind.is_some_and(|k| k != "Binding") || api.is_some_and(|a| a != "v1") {
        return Err(Status::bad_request(format!(
            "the body of the request was in an unknown format: expected v1 Binding, got {} {}",
            api.unwrap_or(""),
            kind.unwrap_or("")
        ))
        .into());
    }
    let name = str_at(&b, "metadata.name").unwrap_or("").to_string();
    if let Some(u) = url_name
        && u != name
    {
        return Err(
            Status::bad_request("name in URL does not match name in Binding object").into(),
        );
    }
    let target_kind = str_at(&b, "target.kind").unwrap_or("");
    let node = str_at(&b, "target.name").unwrap_or("").to_string();
    let mut causes = Vec::new();
    if !target_kind.is_empty() && target_kind != "Node" {
        causes.push(Cause::not_supported(
            "target.kind",
            &b["target"]["kind"],
            &["Node", "<empty>"],
        ));
    }
    if node.is_empty() {
        causes.push(Cause::required("target.name", ""));
    }
    if !causes.is_empty() {
        return Err(Status::invalid("", "Binding", &name, &causes).into());
    }
    let pods = resources::lookup("", "v1", "pods").ok_or_else(Status::not_found_path)?;
    let key = pods.key(ns, &name);
    s.write(r.dry_run(), |txn| {
        let mut pod = txn
            .get(&key)?
            .ok_or_else(|| Error::from(Status::not_found("", "pods", &name)))?;
        let precondition = |field: &str, what: &str| -> Result<(), Error> {
            match str_at(&b, &format!("metadata.{field}")).filter(|v| !v.is_empty()) {
                Some(want) if Some(want) != str_at(&pod, &format!("metadata.{field}")) => {
                    Err(Status::conflict_because(
                        "pods",
                        &name,
                        &format!(
                            "Precondition failed: {what} in precondition: {want}, {what} in object meta: {}",
                            str_at(&pod, &format!("metadata.{field}")).unwrap_or("")
                        ),
                    )
                    .into())
                }
                _ => Ok(()),
            }
        };
        precondition("uid", "UID")?;
        precondition("resourceVersion", "ResourceVersion")?;
        let refuse = |why: String| -> Error {
            Status::conflict_because("pods/binding", &name, &why).into()
        };
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(refuse(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(current) = str_at(&pod, "spec.nodeName").filter(|n| !n.is_empty()) {
            return Err(refuse(format!(
                "pod {name} is already assigned to node \"{current}\""
            )));
        }
        if pod["spec"]["schedulingGates"]
            .as_array()
            .is_some_and(|g| !g.is_empty())
        {
            return Err(refuse(format!(
                "pod {name} has non-empty .spec.schedulingGates"
            )));
        }
        pod["spec"]["nodeName"] = json!(node);
        if let Some(a) = b["metadata"]["annotations"].as_object() {
            for (k, v) in a {
                pod["metadata"]["annotations"][k] = v.clone();
            }
        }
        let scheduled = json!({"type": "PodScheduled", "status": "True",
            "lastProbeTime": null, "lastTransitionTime": rfc3339(now_secs())});
        let mut conds = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match conds.iter_mut().find(|c| c["type"] == "PodScheduled") {
            Some(c) if c["status"] == "True" => {}
            Some(c) => *c = scheduled,
            None => conds.push(scheduled),
        }
        pod["status"]["conditions"] = json!(conds);
        txn.put(&key, pod, EventType::Modified)
    })?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        "application/json",
    ))
}

/// A pod and its node (when it has one), read off the async threads.
async fn pod_and_node(state: &Arc<State>, t: &Target) -> Result<(Value, Option<Value>), Error> {
    let name = t.name.clone().unwrap_or_default();
    let st = state.clone();
    let key = t.key(&name);
    let (pod, node) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let pod = st.store.get(&key)?;
        let node = match pod.as_ref().and_then(|p| str_at(p, "spec.nodeName")) {
            Some(n) if !n.is_empty() => st.store.get(
                &resources::lookup("", "v1", "nodes")
                    .ok_or_else(Status::not_found_path)?
                    .key("", n),
            )?,
            _ => None,
        };
        Ok((pod, node))
    })
    .await
    .map_err(Error::Task)??;
    Ok((pod.ok_or_else(|| t.not_found(&name))?, node))
}

/// `GET .../pods/NAME/log`: proxied to the kubelet of the pod's node.
pub(super) async fn pod_log(
    state: Arc<State>,
    t: Target,
    r: Req,
) -> Result<Response<ResponseBody>, Error> {
    let (pod, node) = pod_and_node(&state, &t).await?;
    let (addr, path) = crate::kubelet::log_location(&pod, node.as_ref(), &r.query)?;
    state.kubelet.get(addr, &path).await
}

/// `.../pods/NAME/exec`, `attach` and `portforward`: the upgrade is proxied to the
/// kubelet of the pod's node.
pub(super) async fn pod_stream(
    state: Arc<State>,
    t: Target,
    r: Req,
    kind: crate::kubelet::Stream,
) -> Result<Response<ResponseBody>, Error> {
    // A WebSocket client GETs, which the request was authorized as; kube-apiserver also
    // requires `create` on the subresource (what a SPDY client's POST is), so that `get`
    // alone never runs a command.
    if r.method == Method::GET {
        let sub = t
            .sub
            .map(super::routing::Subresource::name)
            .unwrap_or_default();
        let attrs = crate::rbac::attributes::ResourceAttributes {
            namespace: t.namespace.clone().unwrap_or_default(),
            group: t.rt.group.to_string(),
            version: t.rt.version.to_string(),
            resource: t.rt.resource.to_string(),
            subresource: sub.to_string(),
            name: t.name.clone().unwrap_or_default(),
            fields: Vec::new(),
        };
        state
            .authz
            .check(&crate::rbac::attributes::Attributes::resource(
                &r.user, "create", attrs,
            ))?;
    }
    let (pod, node) = pod_and_node(&state, &t).await?;
    let (addr, path) = crate::kubelet::stream_location(kind, &pod, node.as_ref(), &r.query)?;
    let upgrade = r.upgrade.lock().ok().and_then(|mut u| u.take());
    state
        .kubelet
        .upgrade(addr, &r.method, &path, &r.headers, upgrade)
        .await
}

/// `PUT /api/v1/namespaces/NAME/finalize`: changes only `spec.finalizers` (what the
/// namespace controller, or someone unsticking a namespace, uses).
pub(super) fn finalize_namespace(
    s: &State,
    t: &Target,
    r: &Req,
) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let body = r.json_body()?;
    let main = t.main();
    let new = parse_body(&main, &body)?;
    let key = main.key(&name);
    let stored = s.write(r.dry_run(), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| t.not_found(&name))?;
        let mut next = old.clone();
        next["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str() {
            next["metadata"]["resourceVersion"] = json!(rv);
        }
        store_update(s, txn, &main, &key, old, next)
    })?;
    Ok(json_response(200, &stored, "application/json"))
}

/// `POST .../serviceaccounts/NAME/token` (TokenRequest): a signed token for the account.
pub(super) fn token_request(
    s: &State,
    t: &Target,
    r: &Req,
) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let body = r.json_body()?;
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Status::bad_request(format!("error decoding TokenRequest: {e}")))?
    };
    if let Some(kind) = req["kind"]
        .as_str()
        .filter(|k| !k.is_empty() && *k != "TokenRequest")
    {
        return Err(Status::bad_request(format!(
            "the kind in the request body ({kind}) does not match TokenRequest"
        ))
        .into());
    }
    super::admit::token_request(s, t, r, &req)?;
    let sa = s
        .store
        .get(&t.key(&name))?
        .ok_or_else(|| t.not_found(&name))?;
    let bound = &req["spec"]["boundObjectRef"];
    let pod = if bound["kind"].as_str() == Some("Pod") {
        let pod_name = bound["name"].as_str().unwrap_or("");
        let ns = t.namespace.as_deref().unwrap_or("");
        let pod_rt = resources::lookup("", "v1", "pods").ok_or_else(Status::not_found_path)?;
        let pod = s
            .store
            .get(&pod_rt.key(ns, pod_name))?
            .ok_or_else(|| Status::not_found("", "pods", pod_name))?;
        if let Some(uid) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && Some(uid) != str_at(&pod, "metadata.uid")
        {
            return Err(Status::conflict("", "pods", pod_name).into());
        }
        Some(pod)
    } else {
        None
    };
    let out = s
        .signer
        .token_request(&req, &sa, pod.as_ref(), now_secs())?;
    Ok(json_response(201, &out, "application/json"))
}

/// The autoscaling/v1 `Scale` view of a workload.
fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = crate::util::labels_string(&obj["spec"]["selector"]["matchLabels"]);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// `.../NAME/scale`: GET the Scale, or PUT/PATCH it to change `spec.replicas`.
pub(super) fn scale(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let key = t.key(&name);
    if r.method == Method::GET {
        let obj = s.store.get(&key)?.ok_or_else(|| t.not_found(&name))?;
        return Ok(json_response(200, &scale_of(&obj), "application/json"));
    }
    let main = t.main();
    let stored = s.write(r.dry_run(), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| t.not_found(&name))?;
        let current = scale_of(&old);
        let wanted = if r.method == Method::PUT {
            serde_json::from_slice::<Value>(&r.json_body()?)
                .map_err(|e| Status::bad_request(format!("error decoding Scale: {e}")))?
        } else {
            let pt = PatchType::from_content_type(&r.content_type)
                .ok_or_else(|| Status::unsupported_media_type(&r.content_type))?;
            patch::apply(&current, &r.body, pt)?
        };
        let rv = str_at(&wanted, "metadata.resourceVersion").unwrap_or("");
        if !rv.is_empty() && Some(rv) != str_at(&old, "metadata.resourceVersion") {
            return Err(Status::conflict(t.rt.group, t.rt.resource, &name).into());
        }
        let replicas = &wanted["spec"]["replicas"];
        if replicas.as_i64().is_none_or(|n| n < 0) {
            let c = Cause::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            );
            return Err(Status::invalid("autoscaling", "Scale", &name, &[c]).into());
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = replicas.clone();
        new["metadata"]["resourceVersion"] = json!("");
        store_update(s, txn, &main, &key, old, new)
    })?;
    Ok(json_response(200, &scale_of(&stored), "application/json"))
}
