//! What is checked once a write's object is known, after authorization:
//!
//! - NodeRestriction (kube-apiserver's admission plugin): a node writes only its own
//!   Node (not its taints, not labels outside the kubelet's), the status of pods bound
//!   to it, pods bound to it (delete; create only mirror pods), its own Lease, and
//!   tokens only for pods bound to it;
//! - escalation prevention (kube-apiserver's RBAC storage): a Role or ClusterRole may
//!   only hold rules its author holds, and a binding may only grant a role whose rules
//!   its author holds, unless the author may `escalate` the role or `bind` it.
//!
//! Refusals are kube-apiserver's 403s, word for word.

use serde_json::Value;

use super::attributes::{Attributes, ResourceAttributes};
use super::policy::RoleRef;
use super::rules::{self, Rule};
use super::{Authorizer, Decision, MASTERS, RBAC_GROUP, forbidden_object, node};
use crate::api::User;
use crate::error::{Error, Status};

/// The operation of a write, as admission plugins see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Create,
    Update,
    Delete,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
        }
    }
}

/// One write about to be stored.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Write<'a> {
    pub(crate) user: &'a User,
    pub(crate) operation: Operation,
    pub(crate) group: &'a str,
    pub(crate) resource: &'a str,
    /// `status`, `token`, ... or empty.
    pub(crate) subresource: &'a str,
    pub(crate) namespace: &'a str,
    /// The object's name (for a create, the name it will have).
    pub(crate) name: &'a str,
    /// The object as it will be stored (none for a delete).
    pub(crate) object: Option<&'a Value>,
    /// The stored object an update or delete replaces.
    pub(crate) old: Option<&'a Value>,
}

/// Reads a stored object by its storage key (in the write's transaction).
pub(crate) type Lookup<'a> = &'a dyn Fn(&str) -> Result<Option<Value>, Error>;

/// Runs the checks for `w`.
pub(crate) fn admit(authz: &Authorizer, w: &Write<'_>, lookup: Lookup<'_>) -> Result<(), Error> {
    if let Some(node) = node::node_name(w.user) {
        node_restriction(node, w, lookup)?;
    }
    if w.group == RBAC_GROUP && w.operation != Operation::Delete {
        no_escalation(authz, w)?;
    }
    Ok(())
}

fn str_at<'v>(v: Option<&'v Value>, path: &[&str]) -> &'v str {
    let mut cur = v;
    for p in path {
        cur = cur.and_then(|c| c.get(*p));
    }
    cur.and_then(Value::as_str).unwrap_or("")
}

/// `admission.NewForbidden`: the write's object named, the plugin's reason after.
fn refuse(w: &Write<'_>, reason: &str) -> Error {
    forbidden_object(w.group, w.resource, w.name, reason).into()
}

fn node_restriction(node: &str, w: &Write<'_>, lookup: Lookup<'_>) -> Result<(), Error> {
    let q = rules::go_quote;
    match (w.group, w.resource) {
        ("", "pods") => match (w.subresource, w.operation) {
            ("", Operation::Create) => mirror_pod(node, w),
            ("", Operation::Delete) => {
                if str_at(w.old, &["spec", "nodeName"]) != node {
                    return Err(refuse(
                        w,
                        &format!(
                            "node {} can only delete pods with spec.nodeName set to itself",
                            q(node)
                        ),
                    ));
                }
                Ok(())
            }
            ("", op) => Err(refuse(
                w,
                &format!(
                    "unexpected operation {}, node {} can only create and delete mirror pods",
                    q(op.as_str()),
                    q(node)
                ),
            )),
            ("status", Operation::Update) => {
                if str_at(w.old, &["spec", "nodeName"]) != node {
                    return Err(refuse(
                        w,
                        &format!(
                            "node {} can only update pod status for pods with spec.nodeName set to itself",
                            q(node)
                        ),
                    ));
                }
                let labels = |v: Option<&Value>| {
                    v.and_then(|v| v.get("metadata"))
                        .and_then(|m| m.get("labels"))
                        .filter(|l| !l.as_object().is_some_and(serde_json::Map::is_empty))
                        .cloned()
                        .unwrap_or(Value::Null)
                };
                if labels(w.old) != labels(w.object) {
                    return Err(refuse(
                        w,
                        &format!("node {} cannot update labels through pod status", q(node)),
                    ));
                }
                Ok(())
            }
            ("status", op) => Err(refuse(
                w,
                &format!("unexpected operation {}", q(op.as_str())),
            )),
            (sub, _) => Err(refuse(
                w,
                &format!(
                    "unexpected pod subresource {}, only 'status' and 'eviction' are allowed",
                    q(sub)
                ),
            )),
        },
        ("", "nodes") => node_write(node, w),
        ("", "serviceaccounts") if w.operation == Operation::Create && w.subresource == "token" => {
            token_request(node, w, lookup)
        }
        ("coordination.k8s.io", "leases") => {
            if w.namespace != "kube-node-lease" {
                return Err(refuse(
                    w,
                    "can only access leases in the \"kube-node-lease\" system namespace",
                ));
            }
            if w.name != node {
                return Err(refuse(
                    w,
                    "can only access node lease with the same name as the requesting node",
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A node creates only mirror pods of its static pods: bound to itself, owned by its
/// Node, referencing no Secrets, ConfigMaps, claims or ServiceAccount.
fn mirror_pod(node: &str, w: &Write<'_>) -> Result<(), Error> {
    let q = rules::go_quote;
    let pod = w.object.unwrap_or(&Value::Null);
    let no = |why: String| Err(refuse(w, &why));
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null() {
        return no(format!(
            "pod does not have \"kubernetes.io/config.mirror\" annotation, node {} can only create mirror pods",
            q(node)
        ));
    }
    if str_at(Some(pod), &["spec", "nodeName"]) != node {
        return no(format!(
            "node {} can only create pods with spec.nodeName set to itself",
            q(node)
        ));
    }
    let owners = pod["metadata"]["ownerReferences"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    match owners.as_slice() {
        [] => {
            return no(format!(
                "node {} can only create pods with an owner reference set to itself",
                q(node)
            ));
        }
        [o] => {
            if o["apiVersion"] != "v1" || o["kind"] != "Node" || o["name"] != node {
                return no(format!(
                    "node {} can only create pods with an owner reference set to itself",
                    q(node)
                ));
            }
            if o["controller"] != Value::Bool(true) {
                return no(format!(
                    "node {} can only create pods with a controller owner reference set to itself",
                    q(node)
                ));
            }
            if o["blockOwnerDeletion"] == Value::Bool(true) {
                return no(format!(
                    "node {} must not set blockOwnerDeletion on an owner reference",
                    q(node)
                ));
            }
        }
        _ => {
            return no(format!(
                "node {} can only create pods with a single owner reference set to itself",
                q(node)
            ));
        }
    }
    // The admission defaults give every pod `default`; a mirror pod asks for none.
    let sa = str_at(Some(pod), &["spec", "serviceAccountName"]);
    if !sa.is_empty() && sa != "default" {
        return no(format!(
            "node {} can not create pods that reference a service account",
            q(node)
        ));
    }
    let refs = node::PodRefs::of(&serde_json::to_vec(pod).unwrap_or_default());
    if let Some(r) = refs {
        if r.has_secrets() {
            return no(format!(
                "node {} can not create pods that reference secrets",
                q(node)
            ));
        }
        if r.has_config_maps() {
            return no(format!(
                "node {} can not create pods that reference configmaps",
                q(node)
            ));
        }
        if r.has_claims() {
            return no(format!(
                "node {} can not create pods that reference persistentvolumeclaims",
                q(node)
            ));
        }
    }
    Ok(())
}

/// Labels a kubelet may set on its Node: kube's kubelet labels, and any label outside
/// the `kubernetes.io` and `k8s.io` namespaces (`node-restriction.kubernetes.io` never).
fn forbidden_labels(new: &Value, old: Option<&Value>) -> Vec<String> {
    const KUBELET_LABELS: [&str; 12] = [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "node.kubernetes.io/windows-build",
    ];
    let in_ns = |prefix: &str, ns: &str| prefix == ns || prefix.ends_with(&format!(".{ns}"));
    let labels = |v: Option<&Value>| -> serde_json::Map<String, Value> {
        v.and_then(|v| v["metadata"]["labels"].as_object())
            .cloned()
            .unwrap_or_default()
    };
    let (a, b) = (labels(Some(new)), labels(old));
    let mut changed: Vec<&String> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k)
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .collect();
    changed.sort();
    changed.dedup();
    changed
        .into_iter()
        .filter(|k| {
            let prefix = k.split_once('/').map_or("", |(p, _)| p);
            let kubelet = KUBELET_LABELS.contains(&k.as_str())
                || in_ns(prefix, "kubelet.kubernetes.io")
                || in_ns(prefix, "node.kubernetes.io");
            in_ns(prefix, "node-restriction.kubernetes.io")
                || ((in_ns(prefix, "kubernetes.io") || in_ns(prefix, "k8s.io")) && !kubelet)
        })
        .cloned()
        .collect()
}

fn node_write(node: &str, w: &Write<'_>) -> Result<(), Error> {
    let q = rules::go_quote;
    if w.name != node {
        return Err(refuse(
            w,
            &format!(
                "node {} is not allowed to modify node {}",
                q(node),
                q(w.name)
            ),
        ));
    }
    let Some(new) = w.object else {
        return Ok(());
    };
    match w.operation {
        Operation::Create => {
            if !new["spec"]["configSource"].is_null() {
                return Err(refuse(
                    w,
                    &format!(
                        "node {} is not allowed to create pods with a non-nil configSource",
                        q(node)
                    ),
                ));
            }
            let bad = forbidden_labels(new, None);
            if !bad.is_empty() {
                return Err(refuse(
                    w,
                    &format!(
                        "node {} is not allowed to set the following labels: {}",
                        q(node),
                        bad.join(", ")
                    ),
                ));
            }
        }
        Operation::Update => {
            let old = w.old.unwrap_or(&Value::Null);
            let config = &new["spec"]["configSource"];
            if !config.is_null() && *config != old["spec"]["configSource"] {
                return Err(refuse(
                    w,
                    &format!(
                        "node {} is not allowed to update configSource to a new non-nil configSource",
                        q(node)
                    ),
                ));
            }
            let taints = |v: &Value| {
                v["spec"]["taints"]
                    .as_array()
                    .filter(|t| !t.is_empty())
                    .cloned()
            };
            if w.subresource.is_empty() && taints(new) != taints(old) {
                return Err(refuse(
                    w,
                    &format!("node {} is not allowed to modify taints", q(node)),
                ));
            }
            let bad = forbidden_labels(new, Some(old));
            if !bad.is_empty() {
                return Err(refuse(
                    w,
                    &format!("is not allowed to modify labels: {}", bad.join(", ")),
                ));
            }
        }
        Operation::Delete => {}
    }
    Ok(())
}

/// A node asks for tokens only for pods bound to it, with the pod's uid.
fn token_request(node: &str, w: &Write<'_>, lookup: Lookup<'_>) -> Result<(), Error> {
    let req = w.object.unwrap_or(&Value::Null);
    let r = &req["spec"]["boundObjectRef"];
    let field = |f: &str| r[f].as_str().unwrap_or("");
    if field("apiVersion") != "v1" || field("kind") != "Pod" || field("name").is_empty() {
        return Err(refuse(w, "node requested token not bound to a pod"));
    }
    if field("uid").is_empty() {
        return Err(refuse(
            w,
            "node requested token with a pod binding without a uid",
        ));
    }
    let key = format!("{}{}/{}", node::PODS, w.namespace, field("name"));
    let pod = lookup(&key)?.ok_or_else(|| Status::not_found("", "pods", field("name")))?;
    if str_at(Some(&pod), &["metadata", "uid"]) != field("uid") {
        return Err(refuse(
            w,
            &format!(
                "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
                field("uid")
            ),
        ));
    }
    if str_at(Some(&pod), &["spec", "nodeName"]) != node {
        return Err(refuse(
            w,
            "node requested token bound to a pod scheduled on a different node",
        ));
    }
    Ok(())
}

/// Rules that cover everything: what `aggregationRule` needs.
fn full_authority() -> Vec<Rule> {
    vec![
        Rule::new(&["*"], &["*"], &["*"]),
        Rule::urls(&["*"], &["*"]),
    ]
}

/// Whether an update changes only what the garbage collector writes (owners,
/// finalizers) and server-kept metadata.
fn only_gc_fields(new: &Value, old: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v["metadata"].as_object_mut() {
            for f in [
                "ownerReferences",
                "finalizers",
                "selfLink",
                "managedFields",
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "generation",
            ] {
                m.remove(f);
            }
        }
        v
    };
    strip(new) == strip(old)
}

/// Refuses a Role or ClusterRole with rules its author does not hold, and a binding
/// to a role whose rules its author does not hold, unless the author is in
/// `system:masters` or may `escalate` (roles) or `bind` (bindings) it.
fn no_escalation(authz: &Authorizer, w: &Write<'_>) -> Result<(), Error> {
    if w.user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let Some(new) = w.object else {
        return Ok(());
    };
    if w.operation == Operation::Update
        && let Some(old) = w.old
        && only_gc_fields(new, old)
    {
        return Ok(());
    }
    let may = |verb: &str, resource: &str, name: &str| {
        let a = Attributes::resource(
            w.user,
            verb,
            ResourceAttributes {
                namespace: w.namespace.to_string(),
                group: RBAC_GROUP.into(),
                version: "*".into(),
                resource: resource.into(),
                name: name.into(),
                ..ResourceAttributes::default()
            },
        );
        matches!(authz.authorize(&a), Decision::Allow(_))
    };
    match w.resource {
        "roles" | "clusterroles" => {
            // The name is not known to the authorizer on create.
            let name = if w.operation == Operation::Create {
                ""
            } else {
                w.name
            };
            if may("escalate", w.resource, name) {
                return Ok(());
            }
            let requested: Vec<Rule> =
                serde_json::from_value(new["rules"].clone()).unwrap_or_default();
            confirm_no_escalation(authz, w, &requested)?;
            let aggregates = |v: Option<&Value>| v.is_some_and(|v| !v["aggregationRule"].is_null());
            if w.resource == "clusterroles" && (aggregates(Some(new)) || aggregates(w.old)) {
                confirm_no_escalation(authz, w, &full_authority()).map_err(|_| {
                    refuse(
                        w,
                        "must have cluster-admin privileges to use the aggregationRule",
                    )
                })?;
            }
            Ok(())
        }
        "rolebindings" | "clusterrolebindings" => {
            let role_ref: RoleRef =
                serde_json::from_value(new["roleRef"].clone()).unwrap_or_default();
            let target = match role_ref.kind.as_str() {
                "ClusterRole" => "clusterroles",
                "Role" => "roles",
                _ => return Ok(()), // validation refuses it
            };
            if may("bind", target, &role_ref.name) {
                return Ok(());
            }
            let rules = authz
                .policy()
                .role_rules(&role_ref, w.namespace)
                .map(<[Rule]>::to_vec)
                .map_err(|_| Status::not_found(RBAC_GROUP, target, &role_ref.name))?;
            confirm_no_escalation(authz, w, &rules)
        }
        _ => Ok(()),
    }
}

/// kube-apiserver's `ConfirmNoEscalation`: the author's RBAC rules in the write's
/// namespace must cover `requested`; the refusal lists what is missing.
fn confirm_no_escalation(
    authz: &Authorizer,
    w: &Write<'_>,
    requested: &[Rule],
) -> Result<(), Error> {
    let (owned, errors) = authz.policy().rules_for(w.user, w.namespace);
    let (ok, missing) = rules::covers(&owned, requested);
    if ok {
        return Ok(());
    }
    let mut lines: Vec<String> = rules::compact(missing)
        .iter()
        .map(Rule::compact_string)
        .collect();
    lines.sort();
    lines.dedup();
    let mut msg = format!(
        "user {} (groups={}) is attempting to grant RBAC permissions not currently held:\n{}",
        rules::go_quote(&w.user.name),
        rules::go_quoted_list(&w.user.groups),
        lines.join("\n")
    );
    if !errors.is_empty() {
        msg.push_str(&format!("; resolution errors: [{}]", errors.join(" ")));
    }
    Err(refuse(w, &msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node_user() -> User {
        User {
            name: "system:node:node-1".into(),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    /// A write of `target`: `([group/]resource, subresource, namespace, name)`.
    fn write<'a>(
        user: &'a User,
        op: Operation,
        target: (&'a str, &'a str, &'a str, &'a str),
        object: Option<&'a Value>,
        old: Option<&'a Value>,
    ) -> Write<'a> {
        let (resource, sub, ns, name) = target;
        let (group, resource) = resource.rsplit_once('/').unwrap_or(("", resource));
        Write {
            user,
            operation: op,
            group,
            resource,
            subresource: sub,
            namespace: ns,
            name,
            object,
            old,
        }
    }

    fn message(r: Result<(), Error>) -> String {
        match r {
            Err(Error::Status(s)) => s.message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn nodes_write_only_their_own_node() {
        let authz = Authorizer::default();
        let u = node_user();
        let none = |_: &str| Ok(None);
        let node = json!({"metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1", "team": "a"}}, "spec": {}});
        let ok = |w: &Write<'_>| admit(&authz, w, &none).is_ok();
        assert!(ok(&write(
            &u,
            Operation::Create,
            ("nodes", "", "", "node-1"),
            Some(&node),
            None
        )));
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Update,
                    ("nodes", "status", "", "node-2"),
                    Some(&node),
                    Some(&node)
                ),
                &none
            )),
            r#"nodes "node-2" is forbidden: node "node-1" is not allowed to modify node "node-2""#
        );
        let role = json!({"metadata": {"name": "node-1", "labels": {"node-role.kubernetes.io/control-plane": ""}}, "spec": {}});
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Create,
                    ("nodes", "", "", "node-1"),
                    Some(&role),
                    None
                ),
                &none
            )),
            r#"nodes "node-1" is forbidden: node "node-1" is not allowed to set the following labels: node-role.kubernetes.io/control-plane"#
        );
        let tainted = json!({"metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1", "team": "a"}},
            "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}});
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Update,
                    ("nodes", "", "", "node-1"),
                    Some(&node),
                    Some(&tainted)
                ),
                &none
            )),
            r#"nodes "node-1" is forbidden: node "node-1" is not allowed to modify taints"#
        );
    }

    #[test]
    fn nodes_write_only_their_pods() {
        let authz = Authorizer::default();
        let u = node_user();
        let none = |_: &str| Ok(None);
        let mine = json!({"metadata": {"name": "a", "labels": {"app": "x"}}, "spec": {"nodeName": "node-1"}});
        let theirs = json!({"metadata": {"name": "b"}, "spec": {"nodeName": "node-2"}});
        assert!(
            admit(
                &authz,
                &write(
                    &u,
                    Operation::Update,
                    ("pods", "status", "ns", "a"),
                    Some(&mine),
                    Some(&mine)
                ),
                &none
            )
            .is_ok()
        );
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Update,
                    ("pods", "status", "ns", "b"),
                    Some(&theirs),
                    Some(&theirs)
                ),
                &none
            )),
            r#"pods "b" is forbidden: node "node-1" can only update pod status for pods with spec.nodeName set to itself"#
        );
        assert!(
            admit(
                &authz,
                &write(
                    &u,
                    Operation::Delete,
                    ("pods", "", "ns", "a"),
                    None,
                    Some(&mine)
                ),
                &none
            )
            .is_ok()
        );
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Delete,
                    ("pods", "", "ns", "b"),
                    None,
                    Some(&theirs)
                ),
                &none
            )),
            r#"pods "b" is forbidden: node "node-1" can only delete pods with spec.nodeName set to itself"#
        );
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Create,
                    ("pods", "", "ns", "a"),
                    Some(&mine),
                    None
                ),
                &none
            )),
            r#"pods "a" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, node "node-1" can only create mirror pods"#
        );
        let lease = json!({"metadata": {"name": "node-2"}});
        assert_eq!(
            message(admit(
                &authz,
                &write(
                    &u,
                    Operation::Create,
                    (
                        "coordination.k8s.io/leases",
                        "",
                        "kube-node-lease",
                        "node-2"
                    ),
                    Some(&lease),
                    None
                ),
                &none
            )),
            r#"leases.coordination.k8s.io "node-2" is forbidden: can only access node lease with the same name as the requesting node"#
        );
    }

    #[test]
    fn tokens_only_for_pods_bound_to_the_node() {
        let authz = Authorizer::default();
        let u = node_user();
        let pods = |key: &str| {
            Ok(match key {
                "core/pods/ns/mine" => {
                    Some(json!({"metadata": {"uid": "u1"}, "spec": {"nodeName": "node-1"}}))
                }
                "core/pods/ns/theirs" => {
                    Some(json!({"metadata": {"uid": "u2"}, "spec": {"nodeName": "node-2"}}))
                }
                _ => None,
            })
        };
        let req = |name: &str, uid: &str| json!({"spec": {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid}}});
        let ask = |r: &Value| {
            admit(
                &authz,
                &write(
                    &u,
                    Operation::Create,
                    ("serviceaccounts", "token", "ns", "default"),
                    Some(r),
                    None,
                ),
                &pods,
            )
        };
        assert!(ask(&req("mine", "u1")).is_ok());
        assert_eq!(
            message(ask(&req("theirs", "u2"))),
            r#"serviceaccounts "default" is forbidden: node requested token bound to a pod scheduled on a different node"#
        );
        assert_eq!(
            message(ask(&json!({"spec": {}}))),
            r#"serviceaccounts "default" is forbidden: node requested token not bound to a pod"#
        );
        assert!(ask(&req("mine", "old")).is_err());
    }

    #[test]
    fn escalation() {
        let authz = Authorizer::default();
        let put = |key: &str, v: Value| {
            authz
                .policy
                .write()
                .unwrap()
                .update(key, Some(&serde_json::to_vec(&v).unwrap()));
        };
        put(
            "rbac.authorization.k8s.io/clusterroles//pod-reader",
            json!({"metadata": {"name": "pod-reader"},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        put(
            "rbac.authorization.k8s.io/clusterroles//binder",
            json!({"metadata": {"name": "binder"},
            "rules": [{"verbs": ["bind"], "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["admin"]}]}),
        );
        put(
            "rbac.authorization.k8s.io/clusterroles//admin",
            json!({"metadata": {"name": "admin"},
            "rules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]}),
        );
        put(
            "rbac.authorization.k8s.io/rolebindings/team/alice",
            json!({"metadata": {"name": "alice", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": "pod-reader", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
        );
        let alice = User {
            name: "alice".into(),
            groups: vec!["system:authenticated".into()],
        };
        let none = |_: &str| Ok(None);
        let role = |verbs: Value| json!({"metadata": {"name": "r"}, "rules": [{"verbs": verbs, "apiGroups": [""], "resources": ["pods"]}]});
        let small = role(json!(["get"]));
        let big = role(json!(["get", "delete", "create"]));
        let w = |o| {
            write(
                &alice,
                Operation::Create,
                ("rbac.authorization.k8s.io/roles", "", "team", "r"),
                Some(o),
                None,
            )
        };
        let (small, big) = (&small, &big);
        assert!(admit(&authz, &w(small), &none).is_ok());
        assert_eq!(
            message(admit(&authz, &w(big), &none)),
            "roles.rbac.authorization.k8s.io \"r\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"pods\"], Verbs:[\"delete\" \"create\"]}"
        );
        // In another namespace alice holds nothing.
        let elsewhere = write(
            &alice,
            Operation::Create,
            ("rbac.authorization.k8s.io/roles", "", "other", "r"),
            Some(small),
            None,
        );
        assert!(admit(&authz, &elsewhere, &none).is_err());
        // Binding a role she does not hold is refused, unless she may bind it.
        let binding = |role: &str| {
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "bob"}]})
        };
        let to_admin = binding("admin");
        let bw = write(
            &alice,
            Operation::Create,
            ("rbac.authorization.k8s.io/rolebindings", "", "team", "b"),
            Some(&to_admin),
            None,
        );
        assert!(message(admit(&authz, &bw, &none)).contains("is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"));
        let to_reader = binding("pod-reader");
        let rw = write(
            &alice,
            Operation::Create,
            ("rbac.authorization.k8s.io/rolebindings", "", "team", "b"),
            Some(&to_reader),
            None,
        );
        assert!(admit(&authz, &rw, &none).is_ok());
        put(
            "rbac.authorization.k8s.io/rolebindings/team/alice-binds",
            json!({"metadata": {"name": "alice-binds", "namespace": "team"},
            "roleRef": {"kind": "ClusterRole", "name": "binder", "apiGroup": "rbac.authorization.k8s.io"},
            "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]}),
        );
        assert!(admit(&authz, &bw, &none).is_ok());
        // A binding to a role that does not exist.
        let to_nothing = binding("nothing");
        let nw = write(
            &alice,
            Operation::Create,
            ("rbac.authorization.k8s.io/rolebindings", "", "team", "b"),
            Some(&to_nothing),
            None,
        );
        assert_eq!(
            message(admit(&authz, &nw, &none)),
            r#"clusterroles.rbac.authorization.k8s.io "nothing" not found"#
        );
        // system:masters may grant anything.
        let admin = User::admin();
        let aw = write(
            &admin,
            Operation::Create,
            ("rbac.authorization.k8s.io/roles", "", "team", "r"),
            Some(big),
            None,
        );
        assert!(admit(&authz, &aw, &none).is_ok());
    }
}
