//! The admission step of writes: the request's user, operation and objects handed to
//! `rbac::admission` (NodeRestriction, RBAC escalation prevention) inside the write's
//! transaction, once the object to store is known.

use serde_json::Value;

use super::{Req, State, Target};
use crate::error::Error;
use crate::rbac::admission::{Operation, Write, admit};
use crate::rbac::{Attributes, ResourceAttributes};
use crate::store::Txn;
use crate::util::str_at;

fn run(
    s: &State,
    txn: &Txn,
    t: &Target,
    r: &Req,
    operation: Operation,
    object: Option<&Value>,
    old: Option<&Value>,
) -> Result<(), Error> {
    let name = object
        .or(old)
        .and_then(|o| str_at(o, "metadata.name"))
        .or(t.name.as_deref())
        .unwrap_or("");
    let w = Write {
        user: &r.user,
        operation,
        group: t.rt.group,
        resource: t.rt.resource,
        subresource: t.sub_name(),
        namespace: t.namespace.as_deref().unwrap_or(""),
        name,
        object,
        old,
    };
    admit(&s.authz, &w, &|key| txn.get(key))
}

/// A create of `obj`.
pub(super) fn create(s: &State, txn: &Txn, t: &Target, r: &Req, obj: &Value) -> Result<(), Error> {
    run(s, txn, t, r, Operation::Create, Some(obj), None)
}

/// A server-side apply that creates `obj`: authorized as a create too (the request was
/// authorized as a patch), as kube-apiserver does.
pub(super) fn create_by_apply(
    s: &State,
    txn: &Txn,
    t: &Target,
    r: &Req,
    obj: &Value,
) -> Result<(), Error> {
    let a = Attributes::resource(
        &r.user,
        "create",
        ResourceAttributes {
            namespace: t.namespace.clone().unwrap_or_default(),
            group: t.rt.group.to_string(),
            version: t.rt.version.to_string(),
            resource: t.rt.resource.to_string(),
            subresource: t.sub_name().to_string(),
            name: t.name.clone().unwrap_or_default(),
            fields: Vec::new(),
        },
    );
    s.authz.check(&a)?;
    create(s, txn, t, r, obj)
}

/// An update of `old` to `new` (the main resource or a subresource).
pub(super) fn update(
    s: &State,
    txn: &Txn,
    t: &Target,
    r: &Req,
    old: &Value,
    new: &Value,
) -> Result<(), Error> {
    run(s, txn, t, r, Operation::Update, Some(new), Some(old))
}

/// A delete of `old`.
pub(super) fn delete(s: &State, txn: &Txn, t: &Target, r: &Req, old: &Value) -> Result<(), Error> {
    run(s, txn, t, r, Operation::Delete, None, Some(old))
}

/// A TokenRequest (`serviceaccounts/NAME/token`) with its body.
pub(super) fn token_request(s: &State, t: &Target, r: &Req, request: &Value) -> Result<(), Error> {
    let w = Write {
        user: &r.user,
        operation: Operation::Create,
        group: t.rt.group,
        resource: t.rt.resource,
        subresource: "token",
        namespace: t.namespace.as_deref().unwrap_or(""),
        name: t.name.as_deref().unwrap_or(""),
        object: Some(request),
        old: None,
    };
    admit(&s.authz, &w, &|key| s.store.get(key))
}
