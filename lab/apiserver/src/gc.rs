//! Deletion as kube-apiserver, its garbage collector and its namespace controller do it,
//! inside the server:
//!
//! - graceful deletion of pods bound to a node, finalizers holding a delete back;
//! - ownerReferences: `Background` (dependents deleted with the owner, in the same
//!   transaction), `Orphan` (dependents lose the reference), `Foreground` (the owner gets
//!   the `foregroundDeletion` finalizer and stays, with its deletionTimestamp, until every
//!   dependent with `blockOwnerDeletion: true` is gone; dependents that have dependents of
//!   their own are deleted in the foreground too);
//! - dangling ownerReferences (the owner is gone or has another uid): the object is
//!   collected, as kube's garbage collector does (see [`collect_dangling`]);
//! - namespaces: a delete sets the `Terminating` phase; the namespace's content is deleted
//!   and, once nothing is left, the `kubernetes` finalizer leaves `spec.finalizers` and
//!   the namespace goes.
//!
//! Work that has to wait (a terminating namespace, a foreground owner) is noted in the
//! transaction ([`Txn::note`]) and picked up by [`spawn_worker`]'s thread after every
//! commit, so waiting never holds a request.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};

use crate::api::State;
use crate::error::Error;
use crate::resources::{self, ResourceType};
use crate::store::{EventType, Txn};
use crate::util::{now_secs, rfc3339, str_at};

/// The finalizer of an owner waiting for its dependents.
pub(crate) const FOREGROUND: &str = "foregroundDeletion";
/// The namespace controller's finalizer in a namespace's `spec.finalizers`.
const NAMESPACE_FINALIZER: &str = "kubernetes";
/// How often the worker looks again even without writes.
const RECHECK: Duration = Duration::from_secs(1);

/// The parts of `DeleteOptions` this server acts on.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct DeleteOpts {
    /// `propagationPolicy: Orphan` (or the old `orphanDependents: true`).
    pub(crate) orphan: bool,
    /// `propagationPolicy: Foreground`.
    pub(crate) foreground: bool,
    /// `gracePeriodSeconds`.
    pub(crate) grace: Option<i64>,
}

/// Keys with deletion work left: terminating namespaces and foreground owners.
#[derive(Debug, Default)]
pub(crate) struct Pending(Mutex<BTreeSet<String>>);

impl Pending {
    pub(crate) fn add(&self, keys: impl IntoIterator<Item = String>) {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        p.extend(keys);
    }

    fn take(&self) -> Vec<String> {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *p).into_iter().collect()
    }
}

fn has_finalizers(o: &Value) -> bool {
    o["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn is_namespace(rt: &ResourceType) -> bool {
    rt.group.is_empty() && rt.kind == "Namespace"
}

/// Whether a namespace still has finalizers in `spec.finalizers`.
fn has_spec_finalizers(o: &Value) -> bool {
    o["spec"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

/// Whether an object marked for deletion may now be removed from storage: no
/// finalizers left (for a namespace, in `spec.finalizers` too) and, for a pod in its
/// grace period, its node deleted it with grace period 0.
pub(crate) fn may_remove(rt: &ResourceType, o: &Value) -> bool {
    o["metadata"]["deletionTimestamp"].is_string()
        && !has_finalizers(o)
        && !(is_namespace(rt) && has_spec_finalizers(o))
        && o["metadata"]["deletionGracePeriodSeconds"]
            .as_i64()
            .is_none_or(|g| g == 0)
}

/// Deletes one object inside `txn` (see the module docs). Returns the object as the
/// DELETE response shows it: gone (with the deletion's resourceVersion) or marked.
pub(crate) fn delete_in(
    txn: &mut Txn,
    all: &[&'static ResourceType],
    rt: &ResourceType,
    key: &str,
    old: Value,
    opts: DeleteOpts,
) -> Result<Value, Error> {
    let bound = old["spec"]["nodeName"]
        .as_str()
        .is_some_and(|n| !n.is_empty());
    if rt.is("", "pods") && bound {
        let default = old["spec"]["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        let grace = opts.grace.unwrap_or(default).max(0);
        if grace > 0 {
            let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
            if current.is_some_and(|c| c <= grace) {
                return Ok(old);
            }
            let mut o = old;
            o["metadata"]["deletionTimestamp"] = json!(rfc3339(now_secs().saturating_add(grace)));
            o["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            return txn.put(key, o, EventType::Modified);
        }
    }
    if old["metadata"]["deletionTimestamp"].is_string()
        && (has_finalizers(&old) || is_namespace(rt))
    {
        // Already on its way out (a second delete changes nothing).
        return Ok(old);
    }
    if is_namespace(rt) {
        // The namespace controller takes it from here.
        let mut o = old;
        o["metadata"]["deletionTimestamp"] = json!(rfc3339(now_secs()));
        o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        o["status"]["phase"] = json!("Terminating");
        txn.note(key);
        return txn.put(key, o, EventType::Modified);
    }
    let uid = str_at(&old, "metadata.uid").unwrap_or("").to_string();
    let namespace = rt
        .namespaced
        .then(|| str_at(&old, "metadata.namespace").unwrap_or("").to_string());
    if opts.orphan && !uid.is_empty() {
        for (_, k, mut o) in dependents(txn, all, namespace.as_deref(), &uid)? {
            if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                refs.retain(|r| r["uid"].as_str() != Some(uid.as_str()));
            }
            txn.put(&k, o, EventType::Modified)?;
        }
    }
    if opts.foreground && !uid.is_empty() {
        let mut o = old;
        o["metadata"]["deletionTimestamp"] = json!(rfc3339(now_secs()));
        o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        let fins = o["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !fins.iter().any(|f| f == FOREGROUND) {
            let mut fins = fins;
            fins.push(json!(FOREGROUND));
            o["metadata"]["finalizers"] = json!(fins);
        }
        let marked = txn.put(key, o, EventType::Modified)?;
        for (dep_rt, k, d) in dependents(txn, all, namespace.as_deref(), &uid)? {
            let has_own = !str_at(&d, "metadata.uid")
                .map(|u| {
                    dependents(
                        txn,
                        all,
                        dep_rt
                            .namespaced
                            .then(|| namespace.as_deref().unwrap_or("")),
                        u,
                    )
                })
                .transpose()?
                .unwrap_or_default()
                .is_empty();
            let dep_opts = DeleteOpts {
                foreground: has_own,
                ..DeleteOpts::default()
            };
            delete_in(txn, all, dep_rt, &k, d, dep_opts)?;
        }
        txn.note(key);
        return Ok(finish_foreground(txn, all, rt, key)?.unwrap_or(marked));
    }
    if has_finalizers(&old) {
        let mut o = old;
        o["metadata"]["deletionTimestamp"] = json!(rfc3339(now_secs()));
        o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
        return txn.put(key, o, EventType::Modified);
    }
    remove(txn, all, rt, key, old)
}

/// Removes an object from storage and collects its dependents (background
/// propagation): what kube-apiserver's storage and the garbage collector do once nothing
/// holds the object any more.
pub(crate) fn remove(
    txn: &mut Txn,
    all: &[&'static ResourceType],
    rt: &ResourceType,
    key: &str,
    old: Value,
) -> Result<Value, Error> {
    if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
        // The CRD's objects go with it.
        let group = str_at(&old, "spec.group").unwrap_or("");
        let plural = str_at(&old, "spec.names.plural").unwrap_or("");
        if !group.is_empty() && !plural.is_empty() {
            for (k, o) in txn.scan(&format!("{group}/{plural}/"))? {
                txn.delete(&k, o)?;
            }
        }
    }
    let uid = str_at(&old, "metadata.uid").unwrap_or("").to_string();
    let namespace = rt
        .namespaced
        .then(|| str_at(&old, "metadata.namespace").unwrap_or("").to_string());
    let deleted = txn.delete(key, old)?;
    if !uid.is_empty() {
        for (dep_rt, k, o) in dependents(txn, all, namespace.as_deref(), &uid)? {
            // A dependent that still names another owner stays (kube's GC keeps it).
            let other_owner = o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() != Some(&uid)));
            if other_owner {
                continue;
            }
            delete_in(txn, all, dep_rt, &k, o, DeleteOpts::default())?;
        }
    }
    Ok(deleted)
}

/// Objects whose ownerReferences name `uid`: in `namespace` for a namespaced owner,
/// anywhere for a cluster-scoped one.
pub(crate) fn dependents(
    txn: &Txn,
    all: &[&'static ResourceType],
    namespace: Option<&str>,
    uid: &str,
) -> Result<Vec<(&'static ResourceType, String, Value)>, Error> {
    let mut out = Vec::new();
    for &rt in all {
        let prefix = match namespace {
            Some(_) if !rt.namespaced => continue,
            Some(ns) => format!("{}/{ns}/", rt.storage_prefix()),
            None => format!("{}/", rt.storage_prefix()),
        };
        // Only objects whose bytes name the uid are decoded: a delete in a namespace
        // of thousands of objects would otherwise parse them all, under the write lock.
        for (k, o) in txn.scan_mentioning(&prefix, uid)? {
            let owned = o["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| refs.iter().any(|r| r["uid"].as_str() == Some(uid)));
            if owned {
                out.push((rt, k, o));
            }
        }
    }
    Ok(out)
}

/// kube-controller-manager's garbage collector for one object with ownerReferences:
/// an owner that is absent, or present with another uid, is dangling (a namespaced
/// dependent's owners are looked up in its namespace, cluster-scoped owners cluster-wide;
/// a cluster-scoped dependent cannot have a namespaced owner). With every owner
/// dangling the object is deleted (in the background, or as its `orphan` /
/// `foregroundDeletion` finalizer says); with some owner still there, the dangling
/// references are removed. Owners of kinds this server does not serve are left alone,
/// as kube's GC cannot resolve them either.
fn collect_dangling(
    txn: &mut Txn,
    all: &[&'static ResourceType],
    rt: &ResourceType,
    key: &str,
) -> Result<(), Error> {
    let Some(o) = txn.get(key)? else {
        return Ok(());
    };
    let refs = o["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if refs.is_empty() || o["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    let ns = rt
        .namespaced
        .then(|| str_at(&o, "metadata.namespace").unwrap_or("").to_string());
    let mut dangling = Vec::new();
    let mut solid = false;
    for r in &refs {
        let api = r["apiVersion"].as_str().unwrap_or("");
        let group = api.rsplit_once('/').map_or("", |(g, _)| g);
        let (kind, name) = (
            r["kind"].as_str().unwrap_or(""),
            r["name"].as_str().unwrap_or(""),
        );
        let uid = r["uid"].as_str().unwrap_or("");
        let Some(owner_rt) = all
            .iter()
            .find(|t| t.api_version() == api && t.kind == kind)
            .or_else(|| all.iter().find(|t| t.group == group && t.kind == kind))
        else {
            solid = true;
            continue;
        };
        let owner_key = match (&ns, owner_rt.namespaced) {
            (Some(ns), true) => owner_rt.key(ns, name),
            (_, false) => owner_rt.key("", name),
            (None, true) => {
                dangling.push(uid.to_string());
                continue;
            }
        };
        match txn.get(&owner_key)? {
            Some(owner) if str_at(&owner, "metadata.uid") == Some(uid) => solid = true,
            _ => dangling.push(uid.to_string()),
        }
    }
    if dangling.is_empty() {
        return Ok(());
    }
    if solid {
        let mut o = o;
        if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
            refs.retain(|r| !dangling.iter().any(|d| r["uid"].as_str() == Some(d)));
        }
        txn.put(key, o, EventType::Modified)?;
        return Ok(());
    }
    let fins = o["metadata"]["finalizers"].clone();
    let has = |f: &str| fins.as_array().is_some_and(|a| a.iter().any(|x| x == f));
    let opts = DeleteOpts {
        orphan: has("orphan"),
        foreground: has(FOREGROUND),
        grace: None,
    };
    delete_in(txn, all, rt, key, o, opts)?;
    Ok(())
}

/// Whether a write of `new` (over `old`) needs the garbage collector's look at its
/// owners: it has ownerReferences, new or changed.
pub(crate) fn owners_changed(new: &Value, old: Option<&Value>) -> bool {
    let refs = &new["metadata"]["ownerReferences"];
    refs.as_array().is_some_and(|r| !r.is_empty())
        && old.is_none_or(|o| o["metadata"]["ownerReferences"] != *refs)
}

/// A foreground owner whose blocking dependents are gone loses `foregroundDeletion` and,
/// with no other finalizer, goes. Returns the owner as it then is (`None`: untouched).
fn finish_foreground(
    txn: &mut Txn,
    all: &[&'static ResourceType],
    rt: &ResourceType,
    key: &str,
) -> Result<Option<Value>, Error> {
    let Some(o) = txn.get(key)? else {
        return Ok(None);
    };
    let waiting = o["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == FOREGROUND));
    if !waiting {
        return Ok(None);
    }
    let uid = str_at(&o, "metadata.uid").unwrap_or("").to_string();
    let namespace = rt
        .namespaced
        .then(|| str_at(&o, "metadata.namespace").unwrap_or("").to_string());
    let blocking = dependents(txn, all, namespace.as_deref(), &uid)?
        .iter()
        .any(|(_, _, d)| {
            d["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"].as_str() == Some(&uid) && r["blockOwnerDeletion"] == json!(true))
        });
    if blocking {
        txn.note(key);
        return Ok(None);
    }
    let mut o = o;
    if let Some(f) = o["metadata"]["finalizers"].as_array_mut() {
        f.retain(|f| f != FOREGROUND);
        if f.is_empty()
            && let Some(m) = o["metadata"].as_object_mut()
        {
            m.remove("finalizers");
        }
    }
    if may_remove(rt, &o) {
        return remove(txn, all, rt, key, o).map(Some);
    }
    txn.put(key, o, EventType::Modified).map(Some)
}

/// The namespace controller's pass over a terminating namespace: deletes what is in it;
/// once nothing is left, drops the `kubernetes` finalizer and the namespace goes. While
/// objects remain (pods terminating on their node, finalizers), the namespace keeps a
/// `NamespaceContentRemaining` condition naming them and stays noted.
fn sweep_namespace(txn: &mut Txn, all: &[&'static ResourceType], key: &str) -> Result<(), Error> {
    let Some(ns_obj) = txn.get(key)? else {
        return Ok(());
    };
    if !ns_obj["metadata"]["deletionTimestamp"].is_string() {
        return Ok(());
    }
    let ns = str_at(&ns_obj, "metadata.name").unwrap_or("").to_string();
    let mut remaining: Vec<(String, usize)> = Vec::new();
    for &rt in all.iter().filter(|r| r.namespaced) {
        let prefix = format!("{}/{ns}/", rt.storage_prefix());
        for (k, _) in txn.scan(&prefix)? {
            // Earlier deletions in this pass may have changed or removed it.
            if let Some(o) = txn.get(&k)?
                && !o["metadata"]["deletionTimestamp"].is_string()
            {
                delete_in(txn, all, rt, &k, o, DeleteOpts::default())?;
            }
        }
        let left = txn.scan(&prefix)?.len();
        if left > 0 {
            let name = if rt.group.is_empty() {
                rt.resource.to_string()
            } else {
                format!("{}.{}", rt.resource, rt.group)
            };
            remaining.push((name, left));
        }
    }
    let mut o = ns_obj.clone();
    if remaining.is_empty() {
        if let Some(f) = o["spec"]["finalizers"].as_array_mut() {
            f.retain(|f| f != NAMESPACE_FINALIZER);
        }
        let rt = resources::namespaces();
        if may_remove(rt, &o) {
            txn.delete(key, o)?;
            return Ok(());
        }
    } else {
        let msg = remaining
            .iter()
            .map(|(r, n)| format!("{r} has {n} resource instances"))
            .collect::<Vec<_>>()
            .join(", ");
        let cond = json!({"type": "NamespaceContentRemaining", "status": "True",
            "reason": "SomeResourcesRemain",
            "message": format!("Some resources are remaining: {msg}")});
        let conds = o["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let same = conds
            .iter()
            .any(|c| c["type"] == cond["type"] && c["message"] == cond["message"]);
        if !same {
            let mut conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| c["type"] != cond["type"])
                .collect();
            let mut cond = cond;
            cond["lastTransitionTime"] = json!(rfc3339(now_secs()));
            conds.push(cond);
            o["status"]["conditions"] = json!(conds);
        }
        txn.note(key);
    }
    if o != ns_obj {
        txn.put(key, o, EventType::Modified)?;
    }
    Ok(())
}

/// One pass over the pending keys.
pub(crate) fn work(state: &State) -> Result<(), Error> {
    let keys = state.pending.take();
    if keys.is_empty() {
        return Ok(());
    }
    let all = state.catalog.all();
    let ns_prefix = format!("{}/", resources::namespaces().storage_prefix());
    let noted = state.store.write(|txn| {
        for key in &keys {
            if key.starts_with(&ns_prefix) {
                sweep_namespace(txn, &all, key)?;
            } else if let Some(rt) = all
                .iter()
                .find(|rt| key.starts_with(&format!("{}/", rt.storage_prefix())))
            {
                finish_foreground(txn, &all, rt, key)?;
                collect_dangling(txn, &all, rt, key)?;
            }
        }
        Ok(txn.take_notes())
    });
    match noted {
        Ok(n) => state.pending.add(n),
        Err(e) => {
            state.pending.add(keys);
            return Err(e);
        }
    }
    Ok(())
}

/// Finds work left by an earlier run (terminating namespaces, foreground owners,
/// objects whose owners need a look). Only
/// objects whose stored bytes mention the markers are decoded.
pub(crate) fn recover(state: &State) -> Result<(), Error> {
    let mut keys = Vec::new();
    let contains = |raw: &[u8], needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
    for rt in state.catalog.all() {
        let prefix = format!("{}/", rt.storage_prefix());
        let page = state.store.list_raw(&prefix, None, None, None)?;
        for raw in page.items {
            // Objects with owners too: an owner may have gone while a dependent was
            // being written, and the dependent's check was not made before a stop.
            let marked = if is_namespace(rt) {
                contains(&raw, b"deletionTimestamp")
            } else {
                contains(&raw, FOREGROUND.as_bytes()) || contains(&raw, b"ownerReferences")
            };
            if marked {
                let o: Value = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
                    what: "object".into(),
                    source: Some(e),
                })?;
                let ns = str_at(&o, "metadata.namespace").unwrap_or("");
                let name = str_at(&o, "metadata.name").unwrap_or("");
                keys.push(rt.key(ns, name));
            }
        }
    }
    state.pending.add(keys);
    Ok(())
}

/// Makes deferred writes durable (see `Store::write_deferred`), on its own thread, for
/// as long as the server state lives.
pub(crate) fn spawn_flusher(state: &Arc<State>) {
    let weak: Weak<State> = Arc::downgrade(state);
    let spawned = std::thread::Builder::new()
        .name("apiserver-flush".into())
        .spawn(move || {
            while let Some(state) = weak.upgrade() {
                if let Err(e) = state.store.flush_all(Duration::from_millis(100)) {
                    tracing::warn!(error = %k8s::ErrorChain(&e), "making commits durable failed; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the flusher");
    }
}

/// Runs [`work`] after every commit (and every second), on its own thread, for as long
/// as the server state lives.
pub(crate) fn spawn_worker(state: &Arc<State>) {
    let weak: Weak<State> = Arc::downgrade(state);
    let mut rx = state.store.subscribe();
    let spawned = std::thread::Builder::new()
        .name("apiserver-gc".into())
        .spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                loop {
                    let _ = tokio::time::timeout(RECHECK, rx.changed()).await;
                    let Some(state) = weak.upgrade() else { return };
                    if let Err(e) = work(&state) {
                        tracing::warn!(error = %k8s::ErrorChain(&e), "deletion worker");
                    }
                }
            });
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the deletion worker");
    }
}
