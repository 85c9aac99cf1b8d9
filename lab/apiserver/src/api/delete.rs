//! Deletes: delete and deletecollection, with DeleteOptions (propagation policy,
//! grace period) and preconditions; what a delete does to owners, dependents and
//! namespaces is `gc.rs`'s.

use http::Response;
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response};
use super::{Req, State, Target, selectors};
use crate::error::{Cause, Error, Status};
use crate::gc::{DeleteOpts, delete_in};
use crate::util::str_at;

/// What a delete must find in the object, or it is refused with 409.
struct Preconditions {
    resource_version: Option<String>,
    uid: Option<String>,
}

impl Preconditions {
    fn check(&self, t: &Target, old: &Value, name: &str) -> Result<(), Error> {
        let differs = |want: &Option<String>, field: &str| {
            want.as_deref()
                .is_some_and(|w| Some(w) != str_at(old, field))
        };
        if differs(&self.resource_version, "metadata.resourceVersion")
            || differs(&self.uid, "metadata.uid")
        {
            return Err(Status::conflict(t.rt.group, t.rt.resource, name).into());
        }
        Ok(())
    }
}

/// The DeleteOptions of a request, from its body (if any) and its query.
fn delete_options(r: &Req) -> Result<(DeleteOpts, Preconditions), Error> {
    let body: Value = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body)
            .map_err(|e| Status::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .or(r.param("propagationPolicy"));
    let orphan = policy == Some("Orphan")
        || body["orphanDependents"] == json!(true)
        || r.param("orphanDependents") == Some("true");
    let foreground = policy == Some("Foreground");
    if let Some(p) = policy
        && !matches!(p, "Orphan" | "Foreground" | "Background")
    {
        let c = Cause::not_supported(
            "propagationPolicy",
            &json!(p),
            &["Foreground", "Background", "Orphan", "nil"],
        );
        return Err(Status::invalid("meta.k8s.io", "DeleteOptions", "", &[c]).into());
    }
    let grace = body["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| r.param("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let pre = &body["preconditions"];
    let preconditions = Preconditions {
        resource_version: pre["resourceVersion"].as_str().map(str::to_string),
        uid: pre["uid"].as_str().map(str::to_string),
    };
    Ok((
        DeleteOpts {
            orphan,
            foreground,
            grace,
        },
        preconditions,
    ))
}

pub(super) fn delete(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let out = delete_if_unchanged(s, t, r, None)?.ok_or_else(|| {
        Error::Internal("a delete without a version to check did not happen".into())
    })?;
    Ok(json_response(200, &out, "application/json"))
}

/// Deletes the request's object, unless `read` names a resourceVersion and the stored
/// object no longer has it (`None` then: admission webhooks saw an older object).
pub(super) fn delete_if_unchanged(
    s: &State,
    t: &Target,
    r: &Req,
    read: Option<&str>,
) -> Result<Option<Value>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let key = t.key(&name);
    let (opts, preconditions) = delete_options(r)?;
    s.write(r.dry_run(), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| t.not_found(&name))?;
        if read.is_some() && str_at(&old, "metadata.resourceVersion") != read {
            return Ok(None);
        }
        preconditions.check(t, &old, &name)?;
        super::admit::delete(s, txn, t, r, &old)?;
        delete_in(txn, &s.catalog.all(), t.rt, &key, old, opts).map(Some)
    })
}

pub(super) fn delete_collection(
    s: &State,
    t: &Target,
    r: &Req,
) -> Result<Response<ResponseBody>, Error> {
    let sel = selectors(t, r)?;
    let prefix = t.list_prefix();
    // Preconditions are checked on the delete of one object only.
    let (opts, _) = delete_options(r)?;
    let all = s.catalog.all();
    let deleted = s.write(r.dry_run(), |txn| {
        let mut out = Vec::new();
        for (k, _) in txn.scan(&prefix)? {
            // An earlier deletion in this collection may have changed or removed this one.
            if let Some(o) = txn.get(&k)?
                && sel.matches(&o)
            {
                super::admit::delete(s, txn, t, r, &o)?;
                out.push(delete_in(txn, &all, t.rt, &k, o, opts)?);
            }
        }
        Ok(out)
    })?;
    let list = json!({
        "kind": format!("{}List", t.rt.kind),
        "apiVersion": t.rt.api_version(),
        "metadata": {"resourceVersion": s.store.current_rv().to_string()},
        "items": deleted,
    });
    Ok(json_response(200, &list, "application/json"))
}
