//! Authorization, as kube-apiserver does it with `--authorization-mode=Node,RBAC`:
//!
//! - members of `system:masters` may do everything (the lab's admin is one);
//! - [`node`]: the Node authorizer for kubelets (`system:node:NAME` in `system:nodes`);
//! - [`policy`]: RBAC over the stored Roles, ClusterRoles and their bindings;
//! - [`bootstrap`]: the default roles and bindings kube-apiserver keeps in place;
//! - [`aggregate`]: ClusterRole aggregation (kube-controller-manager's controller);
//! - [`admission`]: what is checked once a write's object is known (NodeRestriction,
//!   escalation prevention on roles and bindings);
//! - [`review`]: SubjectAccessReview, SelfSubjectAccessReview,
//!   LocalSubjectAccessReview and SelfSubjectRulesReview (`kubectl auth can-i`);
//! - [`objects`]: the RBAC kinds' defaults and validation;
//! - [`attributes`], [`rules`]: what a request asks, and rule matching.
//!
//! Every request is authorized before it is routed ([`authorize_request`]), after
//! impersonation (`Impersonate-User`/`-Group`/`-Uid`/`-Extra-*`, which need the
//! `impersonate` verb); a refusal is kube-apiserver's 403 in its words. The authorizer
//! reads an in-memory view of the RBAC objects and of the pods bound to nodes that the
//! store keeps current at every commit ([`crate::store::Observer`]).

use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};

use http::{HeaderMap, Method};
use serde_json::json;

use crate::api::User;
use crate::error::{Error, Status};
use crate::store::{Event, EventType, Observer, Store};

pub(crate) mod admission;
pub(crate) mod aggregate;
pub(crate) mod attributes;
pub(crate) mod bootstrap;
pub(crate) mod node;
pub(crate) mod objects;
pub(crate) mod policy;
pub(crate) mod review;
pub(crate) mod rules;

pub(crate) use attributes::{Attributes, ResourceAttributes};

/// The RBAC API group.
pub(crate) const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// The group whose members bypass authorization (and escalation checks).
pub(crate) const MASTERS: &str = "system:masters";

/// An authorizer's answer. Nothing here denies outright (RBAC only allows); a request
/// no authorizer allows is refused with the reasons they gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow(String),
    NoOpinion(String),
}

/// The authorizers' shared view of the store: RBAC objects and bound pods.
#[derive(Debug, Default)]
pub(crate) struct Authorizer {
    policy: RwLock<policy::Policy>,
    pods: RwLock<node::Pods>,
    /// Set when a ClusterRole changed: the aggregation worker has work.
    aggregation_due: Mutex<bool>,
    aggregation_wake: Condvar,
}

impl Authorizer {
    /// Reads the stored RBAC objects and pods, then keeps the view current from every
    /// commit. Call before the first write.
    pub(crate) fn attach(store: &Store) -> Result<Arc<Authorizer>, Error> {
        let authz = Arc::new(Authorizer::default());
        for prefix in [policy::PREFIX, node::PODS] {
            store.for_each(prefix, &mut |key, bytes| authz.take(key, Some(bytes)))?;
        }
        store.set_observer(authz.clone());
        Ok(authz)
    }

    fn take(&self, key: &str, object: Option<&[u8]>) {
        if key.starts_with(policy::PREFIX) {
            write(&self.policy).update(key, object);
            if key.contains("/clusterroles/") {
                self.aggregation_needed();
            }
        } else if key.starts_with(node::PODS) {
            write(&self.pods).update(key, object);
        }
    }

    pub(crate) fn policy(&self) -> RwLockReadGuard<'_, policy::Policy> {
        self.policy.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn pods(&self) -> RwLockReadGuard<'_, node::Pods> {
        self.pods.read().unwrap_or_else(|p| p.into_inner())
    }

    fn aggregation_needed(&self) {
        *self
            .aggregation_due
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = true;
        self.aggregation_wake.notify_one();
    }

    /// Waits up to `timeout` for ClusterRoles to change; true when they did (and
    /// clears the mark).
    pub(crate) fn wait_aggregation(&self, timeout: std::time::Duration) -> bool {
        let due = self
            .aggregation_due
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (mut due, _) = self
            .aggregation_wake
            .wait_timeout_while(due, timeout, |d| !*d)
            .unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *due)
    }

    /// The decision of the chain kube-apiserver runs: `system:masters`, then the Node
    /// authorizer (for nodes), then RBAC. Reasons of those without an opinion are
    /// joined, as kube-apiserver's union authorizer joins them.
    pub(crate) fn authorize(&self, a: &Attributes<'_>) -> Decision {
        if a.user.groups.iter().any(|g| g == MASTERS) {
            return Decision::Allow(String::new());
        }
        let mut reasons = Vec::new();
        if let Some(node) = node::node_name(a.user) {
            match node::authorize(&self.pods(), node, a) {
                Decision::Allow(r) => return Decision::Allow(r),
                Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
                Decision::NoOpinion(_) => {}
            }
        }
        match self.policy().authorize(a) {
            Decision::Allow(r) => return Decision::Allow(r),
            Decision::NoOpinion(r) if !r.is_empty() => reasons.push(r),
            Decision::NoOpinion(_) => {}
        }
        Decision::NoOpinion(reasons.join("\n"))
    }

    /// [`Authorizer::authorize`], refused as kube-apiserver refuses.
    pub(crate) fn check(&self, a: &Attributes<'_>) -> Result<(), Status> {
        match self.authorize(a) {
            Decision::Allow(_) => Ok(()),
            Decision::NoOpinion(reason) => Err(forbidden(a, &reason)),
        }
    }
}

impl Observer for Authorizer {
    fn committed(&self, events: &[Event]) {
        for e in events {
            let object = (e.kind != EventType::Deleted).then_some(&e.object[..]);
            self.take(&e.key, object);
        }
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// kube-apiserver's 403 for a request no authorizer allowed, e.g. `pods is forbidden:
/// User "x" cannot list resource "pods" in API group "" in the namespace "default"`,
/// with the authorizers' reasons after a colon.
pub(crate) fn forbidden(a: &Attributes<'_>, reason: &str) -> Status {
    let q = rules::go_quote;
    let user = q(&a.user.name);
    let what = match &a.resource {
        None => format!("User {user} cannot {} path {}", a.verb, q(&a.path)),
        Some(r) => {
            let scope = if r.namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace {}", q(&r.namespace))
            };
            format!(
                "User {user} cannot {} resource {} in API group {} {scope}",
                a.verb,
                q(&r.combined()),
                q(&r.group)
            )
        }
    };
    let err = if reason.is_empty() {
        what
    } else {
        format!("{what}: {reason}")
    };
    match &a.resource {
        None => {
            let mut s = Status::new(403, "Forbidden", format!("forbidden: {err}"));
            s.details = Some(json!({}));
            s
        }
        Some(r) => forbidden_object(&r.group, &r.resource, &r.name, &err),
    }
}

/// kube-apiserver's `NewForbidden`: `pods "web" is forbidden: ERR` (`pods is
/// forbidden: ERR` without a name).
pub(crate) fn forbidden_object(group: &str, resource: &str, name: &str, err: &str) -> Status {
    let qualified = if group.is_empty() {
        resource.to_string()
    } else {
        format!("{resource}.{group}")
    };
    let message = if name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} {} is forbidden: {err}", rules::go_quote(name))
    };
    let mut details = json!({"kind": resource});
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if !name.is_empty() {
        details["name"] = json!(name);
    }
    let mut s = Status::new(403, "Forbidden", message);
    s.details = Some(details);
    s
}

/// Subresources a WebSocket client reaches with GET, for which kube-apiserver also
/// requires `create` (as SPDY clients, who POST, need).
const STREAMING: [&str; 3] = ["exec", "attach", "portforward"];

/// Authorizes a request before it is routed: the user it acts as (after
/// impersonation), or kube-apiserver's refusal.
pub(crate) fn authorize_request(
    authz: &Authorizer,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    user: User,
) -> Result<User, Error> {
    let user = impersonate(authz, headers, user)?;
    let a = Attributes::from_request(&user, method, uri.path(), uri.query().unwrap_or(""));
    authz.check(&a)?;
    if let Some(r) = &a.resource
        && a.verb == "get"
        && r.group.is_empty()
        && r.resource == "pods"
        && STREAMING.contains(&r.subresource.as_str())
    {
        let mut create = a.clone();
        create.verb = "create".into();
        authz.check(&create)?;
    }
    Ok(user)
}

/// Who a request acts as: its own user, or the one its `Impersonate-*` headers name
/// once each impersonated name is authorized (`impersonate` on `users`, `groups`,
/// `serviceaccounts`, `uids` or `userextras/KEY`).
fn impersonate(authz: &Authorizer, headers: &HeaderMap, requestor: User) -> Result<User, Error> {
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let user = values("impersonate-user").into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("impersonate-extra-")?;
            // Keys are percent-encoded as a URL path is (kube-apiserver's PathUnescape).
            let key = percent_encoding::percent_decode_str(key)
                .decode_utf8()
                .ok()?;
            Some((key.into_owned(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let Some(username) = user else {
        if groups.is_empty() && uid.is_none() && extras.is_empty() {
            return Ok(requestor);
        }
        return Err(Status::new(
            500,
            "InternalError",
            format!(
                "Internal error occurred: requested {:?} without impersonating a user",
                groups
            ),
        )
        .into());
    };
    let allowed = |group: &str, resource: &str, sub: &str, ns: &str, name: &str| {
        let a = Attributes::resource(
            &requestor,
            "impersonate",
            ResourceAttributes {
                namespace: ns.into(),
                group: group.into(),
                version: "v1".into(),
                resource: resource.into(),
                subresource: sub.into(),
                name: name.into(),
                fields: Vec::new(),
            },
        );
        authz.check(&a)
    };
    let sa = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'));
    let mut out_groups = Vec::new();
    match sa {
        Some((ns, name)) => {
            allowed("", "serviceaccounts", "", ns, name)?;
            if groups.is_empty() {
                out_groups = vec![
                    "system:serviceaccounts".to_string(),
                    format!("system:serviceaccounts:{ns}"),
                ];
            }
        }
        None => allowed("", "users", "", "", &username)?,
    }
    for g in &groups {
        allowed("", "groups", "", "", g)?;
        out_groups.push(g.clone());
    }
    for (key, value) in &extras {
        allowed("authentication.k8s.io", "userextras", key, "", value)?;
    }
    if let Some(uid) = &uid {
        allowed("authentication.k8s.io", "uids", "", "", uid)?;
    }
    let has = |g: &str| out_groups.iter().any(|x| x == g);
    if username != "system:anonymous" {
        if !has("system:authenticated") && !has("system:unauthenticated") {
            out_groups.push("system:authenticated".to_string());
        }
    } else if !has("system:unauthenticated") {
        out_groups.push("system:unauthenticated".to_string());
    }
    Ok(User {
        name: username,
        groups: out_groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_messages() {
        let u = User {
            name: "alice".into(),
            groups: vec![],
        };
        let r = |ns: &str, group: &str, resource: &str, sub: &str, name: &str| {
            Attributes::resource(
                &u,
                "list",
                ResourceAttributes {
                    namespace: ns.into(),
                    group: group.into(),
                    resource: resource.into(),
                    subresource: sub.into(),
                    name: name.into(),
                    version: "v1".into(),
                    fields: vec![],
                },
            )
        };
        let s = forbidden(&r("default", "", "pods", "", ""), "");
        assert_eq!(
            s.message,
            r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        );
        assert_eq!(s.code, 403);
        assert_eq!(s.details, Some(json!({"kind": "pods"})));
        let mut get = r("", "apps", "deployments", "scale", "web");
        get.verb = "get".into();
        assert_eq!(
            forbidden(&get, "").message,
            r#"deployments.apps "web" is forbidden: User "alice" cannot get resource "deployments/scale" in API group "apps" at the cluster scope"#
        );
        let path = Attributes {
            user: &u,
            verb: "get".into(),
            path: "/metrics".into(),
            resource: None,
        };
        assert_eq!(
            forbidden(&path, "").message,
            r#"forbidden: User "alice" cannot get path "/metrics""#
        );
        assert_eq!(
            forbidden(&r("a", "", "secrets", "", "s"), "no relationship").message,
            r#"secrets "s" is forbidden: User "alice" cannot list resource "secrets" in API group "" in the namespace "a": no relationship"#
        );
    }
}
