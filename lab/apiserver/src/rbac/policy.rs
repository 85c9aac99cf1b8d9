//! The RBAC authorizer: Roles, ClusterRoles and their bindings as stored, kept in
//! memory (the store tells every commit), and the questions kube-apiserver's RBAC
//! authorizer answers from them: is this request allowed, and which rules does a user
//! hold in a namespace.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde_json::Value;

use super::attributes::Attributes;
use super::rules::{Rule, null_as_empty};
use super::{Decision, RBAC_GROUP};
use crate::api::User;

/// The storage prefix of the RBAC group's objects.
pub(crate) const PREFIX: &str = "rbac.authorization.k8s.io/";

/// `roleRef` of a binding.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RoleRef {
    #[serde(default)]
    pub(crate) api_group: String,
    #[serde(default)]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) name: String,
}

/// One of a binding's `subjects`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subject {
    #[serde(default)]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) api_group: String,
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) namespace: String,
}

impl Subject {
    /// Whether the subject names `user` (a ServiceAccount subject without a namespace
    /// is the binding's namespace's).
    fn applies_to(&self, user: &User, binding_namespace: &str) -> bool {
        match self.kind.as_str() {
            "User" => user.name == self.name,
            "Group" => user.groups.contains(&self.name),
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                !ns.is_empty()
                    && user
                        .name
                        .strip_prefix("system:serviceaccount:")
                        .and_then(|rest| rest.split_once(':'))
                        .is_some_and(|(n, name)| n == ns && name == self.name)
            }
            _ => false,
        }
    }

    /// How kube-apiserver names the subject in an authorization reason.
    fn describe(&self, binding_namespace: &str) -> String {
        match self.kind.as_str() {
            "ServiceAccount" => {
                let ns = if self.namespace.is_empty() {
                    binding_namespace
                } else {
                    &self.namespace
                };
                format!("{} {:?}", self.kind, format!("{}/{ns}", self.name))
            }
            _ => format!("{} {:?}", self.kind, self.name),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A Role or ClusterRole as the authorizer needs it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Role {
    #[serde(default)]
    metadata: Meta,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(crate) rules: Vec<Rule>,
    /// A ClusterRole's `aggregationRule` (its `clusterRoleSelectors`), as stored.
    #[serde(default)]
    pub(crate) aggregation_rule: Option<Value>,
}

impl Role {
    pub(crate) fn labels(&self) -> &BTreeMap<String, String> {
        &self.metadata.labels
    }
}

/// A RoleBinding or ClusterRoleBinding.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Binding {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    pub(crate) role_ref: RoleRef,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub(crate) subjects: Vec<Subject>,
}

impl Binding {
    /// The first subject that names `user`.
    fn subject_for(&self, user: &User) -> Option<&Subject> {
        self.subjects
            .iter()
            .find(|s| s.applies_to(user, &self.metadata.namespace))
    }

    /// `ClusterRoleBinding "x" of ClusterRole "y" to Group "z"` (or a RoleBinding's
    /// `"name/namespace"`), kube-apiserver's words for why RBAC allowed a request.
    fn describe(&self, subject: &Subject) -> String {
        let ns = &self.metadata.namespace;
        let (kind, name) = if ns.is_empty() {
            ("ClusterRoleBinding", self.metadata.name.clone())
        } else {
            ("RoleBinding", format!("{}/{ns}", self.metadata.name))
        };
        format!(
            "{kind} {name:?} of {} {:?} to {}",
            self.role_ref.kind,
            self.role_ref.name,
            subject.describe(ns)
        )
    }
}

/// Told each rule a user holds (or why a binding's rules cannot be read), with a
/// description of the binding that grants it; returns whether to go on.
type Visitor<'a> = dyn FnMut(&dyn Fn() -> String, Result<&Rule, String>) -> bool + 'a;

/// The stored RBAC objects.
#[derive(Debug, Default)]
pub(crate) struct Policy {
    roles: HashMap<(String, String), Role>,
    pub(crate) cluster_roles: BTreeMap<String, Role>,
    /// By namespace, then name.
    role_bindings: HashMap<String, BTreeMap<String, Binding>>,
    cluster_role_bindings: BTreeMap<String, Binding>,
}

/// Why a binding's rules could not be read: the role it names does not exist.
fn missing(kind: &str, name: &str) -> String {
    format!(
        "{}.{RBAC_GROUP} {name:?} not found",
        kind.to_ascii_lowercase()
    )
}

impl Policy {
    /// Takes in the stored state of `key` (`None`: deleted). Keys outside the RBAC
    /// group are ignored; an object that does not decode is dropped, as if absent.
    pub(crate) fn update(&mut self, key: &str, object: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return;
        };
        let mut parts = rest.splitn(3, '/');
        let (Some(resource), Some(ns), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let (ns, name) = (ns.to_string(), name.to_string());
        match resource {
            "roles" => match object.and_then(|o| serde_json::from_slice::<Role>(o).ok()) {
                Some(r) => {
                    self.roles.insert((ns, name), r);
                }
                None => {
                    self.roles.remove(&(ns, name));
                }
            },
            "clusterroles" => match object.and_then(|o| serde_json::from_slice::<Role>(o).ok()) {
                Some(r) => {
                    self.cluster_roles.insert(name, r);
                }
                None => {
                    self.cluster_roles.remove(&name);
                }
            },
            "rolebindings" => {
                match object.and_then(|o| serde_json::from_slice::<Binding>(o).ok()) {
                    Some(mut b) => {
                        b.metadata.namespace.clone_from(&ns);
                        self.role_bindings.entry(ns).or_default().insert(name, b);
                    }
                    None => {
                        if let Some(m) = self.role_bindings.get_mut(&ns) {
                            m.remove(&name);
                        }
                    }
                }
            }
            "clusterrolebindings" => {
                match object.and_then(|o| serde_json::from_slice::<Binding>(o).ok()) {
                    Some(mut b) => {
                        b.metadata.namespace.clear();
                        self.cluster_role_bindings.insert(name, b);
                    }
                    None => {
                        self.cluster_role_bindings.remove(&name);
                    }
                }
            }
            _ => {}
        }
    }

    /// The rules a `roleRef` names (a Role in `namespace`, or a ClusterRole), or why
    /// they cannot be read.
    pub(crate) fn role_rules(
        &self,
        role_ref: &RoleRef,
        namespace: &str,
    ) -> Result<&[Rule], String> {
        match role_ref.kind.as_str() {
            "Role" => self
                .roles
                .get(&(namespace.to_string(), role_ref.name.clone()))
                .map(|r| r.rules.as_slice())
                .ok_or_else(|| missing("Role", &role_ref.name)),
            "ClusterRole" => self
                .cluster_roles
                .get(&role_ref.name)
                .map(|r| r.rules.as_slice())
                .ok_or_else(|| missing("ClusterRole", &role_ref.name)),
            other => Err(format!("unsupported role reference kind: {other:?}")),
        }
    }

    /// Visits the rules `user` holds in `namespace` (cluster-wide ones first, then those
    /// of the namespace's RoleBindings), with the binding that grants them, until
    /// `visit` returns false. A binding whose role is missing is visited as an error.
    fn visit(&self, user: &User, namespace: &str, visit: &mut Visitor<'_>) {
        let bindings = self.cluster_role_bindings.values().chain(
            (!namespace.is_empty())
                .then(|| self.role_bindings.get(namespace))
                .flatten()
                .into_iter()
                .flat_map(BTreeMap::values),
        );
        for b in bindings {
            let Some(subject) = b.subject_for(user) else {
                continue;
            };
            let source = || b.describe(subject);
            match self.role_rules(&b.role_ref, &b.metadata.namespace) {
                Ok(rules) => {
                    for r in rules {
                        if !visit(&source, Ok(r)) {
                            return;
                        }
                    }
                }
                Err(e) => {
                    if !visit(&source, Err(e)) {
                        return;
                    }
                }
            }
        }
    }

    /// RBAC's decision: allowed by the first rule that matches (with the binding as the
    /// reason), else no opinion (with the missing roles met on the way as the reason).
    pub(crate) fn authorize(&self, a: &Attributes<'_>) -> Decision {
        let namespace = a.resource.as_ref().map_or("", |r| r.namespace.as_str());
        let mut allowed = None;
        let mut errors = Vec::new();
        self.visit(a.user, namespace, &mut |source, rule| match rule {
            Ok(r) if r.allows(a) => {
                allowed = Some(format!("RBAC: allowed by {}", source()));
                false
            }
            Ok(_) => true,
            Err(e) => {
                errors.push(e);
                true
            }
        });
        match allowed {
            Some(reason) => Decision::Allow(reason),
            None if errors.is_empty() => Decision::NoOpinion(String::new()),
            None if errors.len() == 1 => Decision::NoOpinion(format!("RBAC: {}", errors[0])),
            None => Decision::NoOpinion(format!("RBAC: [{}]", errors.join(", "))),
        }
    }

    /// Every rule `user` holds in `namespace` (cluster-wide only for ""), and the
    /// errors met (missing roles).
    pub(crate) fn rules_for(&self, user: &User, namespace: &str) -> (Vec<Rule>, Vec<String>) {
        let mut rules = Vec::new();
        let mut errors = Vec::new();
        self.visit(user, namespace, &mut |_, rule| {
            match rule {
                Ok(r) => rules.push(r.clone()),
                Err(e) => errors.push(e),
            }
            true
        });
        (rules, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::attributes::ResourceAttributes;
    use serde_json::json;

    fn put(p: &mut Policy, key: &str, v: Value) {
        p.update(key, Some(&serde_json::to_vec(&v).unwrap()));
    }

    fn can(p: &Policy, u: &User, verb: &str, resource: &str, ns: &str) -> Decision {
        p.authorize(&Attributes::resource(
            u,
            verb,
            ResourceAttributes {
                namespace: ns.into(),
                resource: resource.into(),
                version: "v1".into(),
                ..ResourceAttributes::default()
            },
        ))
    }

    fn policy() -> Policy {
        let mut p = Policy::default();
        put(
            &mut p,
            "rbac.authorization.k8s.io/clusterroles//reader",
            json!({
            "metadata": {"name": "reader"},
            "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]}),
        );
        put(
            &mut p,
            "rbac.authorization.k8s.io/roles/team/writer",
            json!({
            "metadata": {"name": "writer", "namespace": "team"},
            "rules": [{"verbs": ["create"], "apiGroups": [""], "resources": ["configmaps"]}]}),
        );
        put(
            &mut p,
            "rbac.authorization.k8s.io/clusterrolebindings//readers",
            json!({
            "metadata": {"name": "readers"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
            "subjects": [{"kind": "Group", "name": "readers", "apiGroup": "rbac.authorization.k8s.io"}]}),
        );
        put(
            &mut p,
            "rbac.authorization.k8s.io/rolebindings/team/writers",
            json!({
            "metadata": {"name": "writers", "namespace": "team"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "writer"},
            "subjects": [{"kind": "ServiceAccount", "name": "ci"}]}),
        );
        p
    }

    #[test]
    fn bindings_grant_their_roles() {
        let mut p = policy();
        let reader = User {
            name: "bob".into(),
            groups: vec!["readers".into()],
        };
        assert_eq!(
            can(&p, &reader, "list", "pods", "any"),
            Decision::Allow(r#"RBAC: allowed by ClusterRoleBinding "readers" of ClusterRole "reader" to Group "readers""#.into())
        );
        assert_eq!(
            can(&p, &reader, "delete", "pods", "any"),
            Decision::NoOpinion(String::new())
        );
        // A ServiceAccount subject without a namespace is the binding's namespace's.
        let ci = User::service_account("team", "ci");
        assert_eq!(
            can(&p, &ci, "create", "configmaps", "team"),
            Decision::Allow(r#"RBAC: allowed by RoleBinding "writers/team" of Role "writer" to ServiceAccount "ci/team""#.into())
        );
        assert!(matches!(
            can(&p, &ci, "create", "configmaps", "other"),
            Decision::NoOpinion(_)
        ));
        assert!(matches!(
            can(
                &p,
                &User::service_account("other", "ci"),
                "create",
                "configmaps",
                "team"
            ),
            Decision::NoOpinion(_)
        ));
        // A binding to a missing role is reported.
        p.update("rbac.authorization.k8s.io/roles/team/writer", None);
        assert_eq!(
            can(&p, &ci, "create", "configmaps", "team"),
            Decision::NoOpinion(
                r#"RBAC: role.rbac.authorization.k8s.io "writer" not found"#.into()
            )
        );
        let (rules, errors) = p.rules_for(&reader, "team");
        assert_eq!(rules, [Rule::new(&["get", "list"], &[""], &["pods"])]);
        assert!(errors.is_empty());
        p.update(
            "rbac.authorization.k8s.io/clusterrolebindings//readers",
            None,
        );
        assert!(matches!(
            can(&p, &reader, "list", "pods", "any"),
            Decision::NoOpinion(_)
        ));
    }
}
