//! The RBAC kinds as objects: their defaults and kube-apiserver's validation of them
//! (names are path segments; rules name verbs, and either groups and resources or
//! non-resource URLs; a binding's `roleRef` is fixed once made).

use serde_json::{Value, json};

use super::RBAC_GROUP;
use crate::error::Cause;

/// kube's `SetDefaults_Subject` and the bindings' `roleRef.apiGroup`.
pub(crate) fn defaults(kind: &str, o: &mut Value) {
    if !matches!(kind, "RoleBinding" | "ClusterRoleBinding") {
        return;
    }
    if o["roleRef"].is_object() && o["roleRef"]["apiGroup"].as_str().is_none_or(str::is_empty) {
        o["roleRef"]["apiGroup"] = json!(RBAC_GROUP);
    }
    if let Some(subjects) = o.get_mut("subjects").and_then(Value::as_array_mut) {
        for s in subjects {
            let kind = s["kind"].as_str().unwrap_or("");
            if matches!(kind, "User" | "Group") && s["apiGroup"].as_str().is_none_or(str::is_empty)
            {
                s["apiGroup"] = json!(RBAC_GROUP);
            }
        }
    }
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn rule_errors(rule: &Value, namespaced: bool, path: &str, causes: &mut Vec<Cause>) {
    let (verbs, groups, resources, names, urls) = (
        strings(&rule["verbs"]),
        strings(&rule["apiGroups"]),
        strings(&rule["resources"]),
        strings(&rule["resourceNames"]),
        strings(&rule["nonResourceURLs"]),
    );
    if verbs.is_empty() {
        causes.push(Cause::required(
            format!("{path}.verbs"),
            "verbs must contain at least one value",
        ));
    }
    if !urls.is_empty() {
        if namespaced {
            causes.push(Cause::invalid(
                format!("{path}.nonResourceURLs"),
                &rule["nonResourceURLs"],
                "namespaced rules cannot apply to non-resource URLs",
            ));
        }
        if !groups.is_empty() || !resources.is_empty() || !names.is_empty() {
            causes.push(Cause::invalid(
                format!("{path}.nonResourceURLs"),
                &rule["nonResourceURLs"],
                "rules cannot apply to both regular resources and non-resource URLs",
            ));
        }
        return;
    }
    if groups.is_empty() {
        causes.push(Cause::required(
            format!("{path}.apiGroups"),
            "resource rules must supply at least one api group",
        ));
    }
    if resources.is_empty() {
        causes.push(Cause::required(
            format!("{path}.resources"),
            "resource rules must supply at least one resource",
        ));
    }
    if !names.is_empty() && resources.len() > 1 {
        causes.push(Cause::required(
            format!("{path}.resourceNames"),
            "resource names cannot apply to multiple resources",
        ));
    }
}

/// The errors of a path segment name (`metadata.name`, `roleRef.name`).
fn path_segment(name: &str) -> Vec<String> {
    crate::validate::name_errors(crate::resources::NameRule::Path, name)
}

fn subject_errors(s: &Value, namespaced: bool, path: &str, causes: &mut Vec<Cause>) {
    let name = s["name"].as_str().unwrap_or("");
    let api_group = s["apiGroup"].as_str().unwrap_or("");
    if name.is_empty() {
        causes.push(Cause::required(format!("{path}.name"), ""));
    }
    match s["kind"].as_str().unwrap_or("") {
        "ServiceAccount" => {
            if !name.is_empty() {
                for e in crate::validate::name_errors(crate::resources::NameRule::Subdomain, name) {
                    causes.push(Cause::invalid(format!("{path}.name"), &json!(name), &e));
                }
            }
            if !api_group.is_empty() {
                causes.push(Cause::not_supported(
                    format!("{path}.apiGroup"),
                    &json!(api_group),
                    &[""],
                ));
            }
            if !namespaced && s["namespace"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{path}.namespace"), ""));
            }
        }
        kind @ ("User" | "Group") => {
            if name.is_empty() {
                let what = if kind == "User" { "user" } else { "group" };
                causes.push(Cause::invalid(
                    format!("{path}.name"),
                    &json!(name),
                    &format!("{what} name cannot be empty"),
                ));
            }
            if api_group != RBAC_GROUP {
                causes.push(Cause::not_supported(
                    format!("{path}.apiGroup"),
                    &json!(api_group),
                    &[RBAC_GROUP],
                ));
            }
        }
        other => causes.push(Cause::not_supported(
            format!("{path}.kind"),
            &json!(other),
            &["ServiceAccount", "User", "Group"],
        )),
    }
}

/// kube-apiserver's validation of a Role, ClusterRole, RoleBinding or
/// ClusterRoleBinding (beyond the metadata every object gets).
pub(crate) fn validate(kind: &str, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    match kind {
        "Role" | "ClusterRole" => {
            for (i, rule) in obj["rules"].as_array().into_iter().flatten().enumerate() {
                rule_errors(rule, kind == "Role", &format!("rules[{i}]"), &mut causes);
            }
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let r = &obj["roleRef"];
            let group = r["apiGroup"].as_str().unwrap_or("");
            if group != RBAC_GROUP {
                causes.push(Cause::not_supported(
                    "roleRef.apiGroup",
                    &json!(group),
                    &[RBAC_GROUP],
                ));
            }
            let role_kind = r["kind"].as_str().unwrap_or("");
            let kinds: &[&str] = if kind == "RoleBinding" {
                &["Role", "ClusterRole"]
            } else {
                &["ClusterRole"]
            };
            if !kinds.contains(&role_kind) {
                causes.push(Cause::not_supported(
                    "roleRef.kind",
                    &json!(role_kind),
                    kinds,
                ));
            }
            let name = r["name"].as_str().unwrap_or("");
            if name.is_empty() {
                causes.push(Cause::required("roleRef.name", ""));
            } else {
                for e in path_segment(name) {
                    causes.push(Cause::invalid("roleRef.name", &json!(name), &e));
                }
            }
            for (i, s) in obj["subjects"].as_array().into_iter().flatten().enumerate() {
                subject_errors(
                    s,
                    kind == "RoleBinding",
                    &format!("subjects[{i}]"),
                    &mut causes,
                );
            }
        }
        _ => {}
    }
    causes
}

/// A binding's `roleRef` as kube-apiserver prints it (Go's `%#v` of the struct).
fn role_ref_go(r: &Value) -> String {
    let s = |f: &str| super::rules::go_quote(r[f].as_str().unwrap_or(""));
    format!(
        "rbac.RoleRef{{APIGroup:{}, Kind:{}, Name:{}}}",
        s("apiGroup"),
        s("kind"),
        s("name")
    )
}

/// What an update may not change: a binding's `roleRef`.
pub(crate) fn immutable(kind: &str, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    if matches!(kind, "RoleBinding" | "ClusterRoleBinding") && new["roleRef"] != old["roleRef"] {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            field: "roleRef".into(),
            message: format!(
                "Invalid value: {}: cannot change roleRef",
                role_ref_go(&new["roleRef"])
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(c: Vec<Cause>) -> Vec<String> {
        c.into_iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect()
    }

    #[test]
    fn rules_are_validated() {
        let role = json!({"rules": [
            {"verbs": [], "apiGroups": [""], "resources": ["pods"]},
            {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
            {"verbs": ["get"], "resources": ["pods", "services"], "resourceNames": ["x"]},
        ]});
        assert_eq!(
            messages(validate("Role", &role)),
            [
                "rules[0].verbs: Required value: verbs must contain at least one value",
                "rules[1].nonResourceURLs: Invalid value: []string{\"/healthz\"}: namespaced rules cannot apply to non-resource URLs",
                "rules[2].apiGroups: Required value: resource rules must supply at least one api group",
                "rules[2].resourceNames: Required value: resource names cannot apply to multiple resources",
            ]
        );
        let ok = json!({"rules": [{"verbs": ["get"], "nonResourceURLs": ["/healthz"]}]});
        assert!(validate("ClusterRole", &ok).is_empty());
    }

    #[test]
    fn bindings_are_defaulted_and_validated() {
        let mut b = json!({"roleRef": {"kind": "Role", "name": "r"},
            "subjects": [{"kind": "User", "name": "alice"}, {"kind": "ServiceAccount", "name": "default"}]});
        defaults("ClusterRoleBinding", &mut b);
        assert_eq!(b["roleRef"]["apiGroup"], RBAC_GROUP);
        assert_eq!(b["subjects"][0]["apiGroup"], RBAC_GROUP);
        assert!(b["subjects"][1].get("apiGroup").is_none());
        assert_eq!(
            messages(validate("ClusterRoleBinding", &b)),
            [
                "roleRef.kind: Unsupported value: \"Role\": supported values: \"ClusterRole\"",
                "subjects[1].namespace: Required value",
            ]
        );
        assert!(validate("RoleBinding", &b).is_empty());
        let mut changed = b.clone();
        changed["roleRef"]["name"] = json!("other");
        let mut causes = Vec::new();
        immutable("RoleBinding", &changed, &b, &mut causes);
        assert_eq!(
            messages(causes),
            [
                "roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"Role\", Name:\"other\"}: cannot change roleRef"
            ]
        );
    }
}
