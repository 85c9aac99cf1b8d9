//! Writes that admission webhooks may see. A webhook is called over the network, so
//! never inside a store transaction: the write reads what it needs, computes the object
//! to store, has the webhooks admit (and mutate) it, and then stores it in a
//! transaction that first checks that the stored object is still the one it read. If it
//! changed meanwhile, the write starts over, as kube-apiserver's optimistic updates do.
//! Writes no webhook's rules name take the direct path (`write.rs`, `delete.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Method, Response};
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response, with_warnings};
use super::write::{self, ApplyRequest, Computed};
use super::{Req, State, Target, blocking, delete};
use crate::error::{Error, Status};
use crate::util::str_at;
use crate::webhook;

/// How many times a write whose object changed while webhooks admitted it is tried
/// again before it is answered with a conflict.
const ATTEMPTS: usize = 5;

/// The webhook operation a request is, if webhooks may see it at all (a create,
/// update, patch, apply or delete of one object).
fn operations(t: &Target, r: &Req) -> &'static [&'static str] {
    let apply = r.content_type.starts_with("application/apply-patch");
    match (&r.method, &t.name) {
        (&Method::POST, None) => &["CREATE"],
        (&Method::PUT, Some(_)) => &["UPDATE"],
        (&Method::PATCH, Some(_)) if apply => &["CREATE", "UPDATE"],
        (&Method::PATCH, Some(_)) => &["UPDATE"],
        (&Method::DELETE, _) => &["DELETE"],
        _ => &[],
    }
}

/// What admission knows of the request, for one operation.
fn request<'a>(
    t: &'a Target,
    r: &'a Req,
    operation: &'static str,
    name: &'a str,
) -> webhook::Request<'a> {
    let kind = match operation {
        "CREATE" => "CreateOptions",
        "DELETE" => "DeleteOptions",
        _ => "UpdateOptions",
    };
    let mut options = json!({"kind": kind, "apiVersion": "meta.k8s.io/v1"});
    if let Some(m) = r.param("fieldManager") {
        options["fieldManager"] = json!(m);
    }
    if r.dry_run() {
        options["dryRun"] = json!(["All"]);
    }
    webhook::Request {
        operation,
        group: t.rt.group,
        version: t.rt.version,
        kind: t.rt.kind,
        resource: t.rt.resource,
        subresource: t.sub_name(),
        namespace: t.namespace.as_deref().unwrap_or(""),
        namespaced: t.rt.namespaced,
        name,
        user: &r.user,
        dry_run: r.dry_run(),
        options,
    }
}

/// Whether a webhook's rules name this request: it then takes [`write`] here.
pub(super) fn wanted(state: &State, t: &Target, r: &Req) -> bool {
    let webhooks = state.webhooks.current();
    if webhooks.mutating.is_empty() && webhooks.validating.is_empty() {
        return false;
    }
    let name = t.name.as_deref().unwrap_or("");
    operations(t, r)
        .iter()
        .any(|op| webhooks.any_for(&request(t, r, op, name)))
}

/// The labels of the request's namespace (for `namespaceSelector`).
fn namespace_labels(s: &State, t: &Target) -> Result<BTreeMap<String, String>, Error> {
    let Some(ns) = t.namespace.as_deref().filter(|_| t.rt.namespaced) else {
        return Ok(BTreeMap::new());
    };
    let obj = s.store.get(&crate::resources::namespaces().key("", ns))?;
    Ok(webhook::labels_of(obj.as_ref()))
}

/// The stored object's resourceVersion (`None`: there is none).
fn version_of(obj: Option<&Value>) -> Option<String> {
    obj.map(|o| {
        str_at(o, "metadata.resourceVersion")
            .unwrap_or("")
            .to_string()
    })
}

/// A create, update, patch, apply or delete that webhooks see (see [`wanted`]).
pub(super) async fn write(
    state: Arc<State>,
    t: Target,
    r: Req,
) -> Result<Response<ResponseBody>, Error> {
    let t = Arc::new(t);
    let r = Arc::new(r);
    match (&r.method, &t.name) {
        (&Method::POST, None) => create(state, t, r).await,
        (&Method::DELETE, Some(name)) => {
            let out = remove(&state, &t, &r, name).await?;
            Ok(json_response(200, &out, "application/json"))
        }
        (&Method::DELETE, None) => remove_collection(state, t, r).await,
        _ => update(state, t, r).await,
    }
}

async fn create(
    state: Arc<State>,
    t: Arc<Target>,
    r: Arc<Req>,
) -> Result<Response<ResponseBody>, Error> {
    let (tt, rr) = (t.clone(), r.clone());
    let (mut obj, mut warnings, labels) = blocking(state.clone(), move |s| {
        let (obj, warnings) = write::create_object(&tt, &rr)?;
        Ok((obj, warnings, namespace_labels(s, &tt)?))
    })
    .await?;
    let name = str_at(&obj, "metadata.name").unwrap_or("").to_string();
    let req = request(&t, &r, "CREATE", &name);
    webhook::admit(
        &state.webhooks,
        &state.store,
        &req,
        &labels,
        Some(&mut obj),
        None,
        &mut warnings,
    )
    .await?;
    blocking(state, move |s| {
        write::store_create(s, &t, &r, obj, warnings)
    })
    .await
}

/// What a PUT, patch or apply asks to store, computed from the stored object.
fn compute(t: &Target, r: &Req, old: Option<&Value>) -> Result<(Computed, Vec<String>), Error> {
    let name = t.name.as_deref().unwrap_or("");
    if r.method == Method::PATCH && r.content_type.starts_with("application/apply-patch") {
        let a = ApplyRequest::read(t, r)?;
        let computed = a.compute(t, old)?;
        return Ok((computed, a.warnings));
    }
    let old = old.ok_or_else(|| t.not_found(name))?;
    let (new, warnings) = if r.method == Method::PUT {
        write::update_object(t, r)?
    } else {
        write::patched(t, r, write::patch_type(t, r)?, old)?
    };
    Ok((Computed::Update(new), warnings))
}

async fn update(
    state: Arc<State>,
    t: Arc<Target>,
    r: Arc<Req>,
) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let key = t.key(&name);
    for _ in 0..ATTEMPTS {
        let (tt, rr, k) = (t.clone(), r.clone(), key.clone());
        let (old, computed, mut warnings, labels) = blocking(state.clone(), move |s| {
            let old = s.store.get(&k)?;
            let (computed, warnings) = compute(&tt, &rr, old.as_ref())?;
            Ok((old, computed, warnings, namespace_labels(s, &tt)?))
        })
        .await?;
        let (operation, mut obj) = match computed {
            Computed::Create(o) => ("CREATE", o),
            Computed::Update(o) => ("UPDATE", o),
        };
        let req = request(&t, &r, operation, &name);
        webhook::admit(
            &state.webhooks,
            &state.store,
            &req,
            &labels,
            Some(&mut obj),
            old.as_ref(),
            &mut warnings,
        )
        .await?;
        let computed = if operation == "CREATE" {
            Computed::Create(obj)
        } else {
            Computed::Update(obj)
        };
        let (tt, rr, k) = (t.clone(), r.clone(), key.clone());
        let read = version_of(old.as_ref());
        let stored = blocking(state.clone(), move |s| {
            s.write(rr.dry_run(), |txn| {
                let now = txn.get(&k)?;
                if version_of(now.as_ref()) != read {
                    return Ok(None);
                }
                write::store_computed(s, txn, &tt, &rr, now, computed).map(Some)
            })
        })
        .await?;
        if let Some((code, stored)) = stored {
            return Ok(with_warnings(
                json_response(code, &stored, "application/json"),
                &warnings,
            ));
        }
    }
    Err(Status::conflict_because(
        t.rt.resource,
        &name,
        "the object kept changing while admission webhooks were called; please try again",
    )
    .into())
}

/// Deletes one object (`name`, in `t`'s namespace) once the webhooks admitted it.
async fn remove(
    state: &Arc<State>,
    t: &Arc<Target>,
    r: &Arc<Req>,
    name: &str,
) -> Result<Value, Error> {
    let one = Arc::new(Target {
        rt: t.rt,
        namespace: t.namespace.clone(),
        name: Some(name.to_string()),
        sub: t.sub,
    });
    let key = one.key(name);
    for _ in 0..ATTEMPTS {
        let (tt, k) = (one.clone(), key.clone());
        let (old, labels) = blocking(state.clone(), move |s| {
            let old = s
                .store
                .get(&k)?
                .ok_or_else(|| tt.not_found(tt.name.as_deref().unwrap_or("")))?;
            Ok((old, namespace_labels(s, &tt)?))
        })
        .await?;
        let req = request(&one, r, "DELETE", name);
        let mut warnings = Vec::new();
        webhook::admit(
            &state.webhooks,
            &state.store,
            &req,
            &labels,
            None,
            Some(&old),
            &mut warnings,
        )
        .await?;
        let (tt, rr) = (one.clone(), r.clone());
        let read = version_of(Some(&old)).unwrap_or_default();
        let out = blocking(state.clone(), move |s| {
            delete::delete_if_unchanged(s, &tt, &rr, Some(&read))
        })
        .await?;
        if let Some(out) = out {
            return Ok(out);
        }
    }
    Err(Status::conflict_because(
        t.rt.resource,
        name,
        "the object kept changing while admission webhooks were called; please try again",
    )
    .into())
}

/// A deletecollection: each selected object deleted as a delete of its own, with the
/// webhooks' admission (the first refusal ends the request; those deleted stay deleted,
/// as in kube-apiserver).
async fn remove_collection(
    state: Arc<State>,
    t: Arc<Target>,
    r: Arc<Req>,
) -> Result<Response<ResponseBody>, Error> {
    let (tt, rr) = (t.clone(), r.clone());
    let items = blocking(state.clone(), move |s| {
        let sel = super::selectors(&tt, &rr)?;
        let page = s
            .store
            .list(&tt.list_prefix(), None, None, &|o| sel.matches(o))?;
        Ok(page
            .items
            .iter()
            .map(|o| {
                let at = |f| str_at(o, f).unwrap_or("").to_string();
                (at("metadata.namespace"), at("metadata.name"))
            })
            .collect::<Vec<_>>())
    })
    .await?;
    let mut deleted = Vec::new();
    for (ns, name) in items {
        let one = Arc::new(Target {
            rt: t.rt,
            namespace: (!ns.is_empty())
                .then_some(ns)
                .or_else(|| t.namespace.clone()),
            name: None,
            sub: t.sub,
        });
        match remove(&state, &one, &r, &name).await {
            Ok(out) => deleted.push(out),
            // Gone meanwhile: nothing left to delete.
            Err(Error::Status(st)) if st.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": format!("{}List", t.rt.kind),
        "apiVersion": t.rt.api_version(),
        "metadata": {"resourceVersion": state.store.current_rv().to_string()},
        "items": deleted,
    });
    Ok(json_response(200, &list, "application/json"))
}
