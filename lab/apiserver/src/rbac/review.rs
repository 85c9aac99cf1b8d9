//! The `authorization.k8s.io/v1` reviews: SubjectAccessReview (may this user do
//! this?), LocalSubjectAccessReview (the same inside a namespace),
//! SelfSubjectAccessReview (may I?, `kubectl auth can-i`) and SelfSubjectRulesReview
//! (what may I do in this namespace?, `kubectl auth can-i --list`). Nothing is stored:
//! each answers the request it was sent with its `status` filled in (201).

use serde_json::{Value, json};

use super::attributes::{Attributes, ResourceAttributes};
use super::{Authorizer, Decision, node};
use crate::api::User;
use crate::error::{Cause, Error, Status};

/// The group of the reviews.
pub(crate) const GROUP: &str = "authorization.k8s.io";

/// A review kind, by its resource name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Review {
    SubjectAccess,
    LocalSubjectAccess,
    SelfSubjectAccess,
    SelfSubjectRules,
}

impl Review {
    /// The review a path after `/apis/authorization.k8s.io/v1/` names, with the
    /// namespace of a LocalSubjectAccessReview.
    pub(crate) fn from_path<'a>(rest: &[&'a str]) -> Option<(Review, Option<&'a str>)> {
        Some(match rest {
            ["subjectaccessreviews"] => (Review::SubjectAccess, None),
            ["selfsubjectaccessreviews"] => (Review::SelfSubjectAccess, None),
            ["selfsubjectrulesreviews"] => (Review::SelfSubjectRules, None),
            ["namespaces", ns, "localsubjectaccessreviews"] => {
                (Review::LocalSubjectAccess, Some(*ns))
            }
            _ => return None,
        })
    }

    fn kind(self) -> &'static str {
        match self {
            Review::SubjectAccess => "SubjectAccessReview",
            Review::LocalSubjectAccess => "LocalSubjectAccessReview",
            Review::SelfSubjectAccess => "SelfSubjectAccessReview",
            Review::SelfSubjectRules => "SelfSubjectRulesReview",
        }
    }
}

fn invalid(kind: &str, field: &str, value: &Value, detail: &str) -> Error {
    let mut s = Status::invalid(GROUP, kind, "", &[Cause::invalid(field, value, detail)]);
    s.message = format!(
        "{kind}.{GROUP} \"\" is invalid: {field}: Invalid value: {}: {detail}",
        invalid_value(value)
    );
    s.into()
}

/// How kube-apiserver prints an invalid value: strings quoted, none as `"null"`,
/// anything else as JSON.
fn invalid_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Null => "\"null\"".into(),
        other => other.to_string(),
    }
}

/// The attributes a review's `spec` asks about, for `user`.
fn attributes<'a>(kind: &str, spec: &Value, user: &'a User) -> Result<Attributes<'a>, Error> {
    let res = &spec["resourceAttributes"];
    let non = &spec["nonResourceAttributes"];
    match (res.is_object(), non.is_object()) {
        (true, true) => Err(invalid(
            kind,
            "spec.nonResourceAttributes",
            non,
            "cannot be specified in combination with resourceAttributes",
        )),
        (false, false) => Err(invalid(
            kind,
            "spec.resourceAttributes",
            non,
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
        (true, false) => {
            let s = |f: &str| res[f].as_str().unwrap_or("").to_string();
            let version = match s("version") {
                v if v.is_empty() => "*".to_string(),
                v => v,
            };
            let fields = res["fieldSelector"]["requirements"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| {
                    r["operator"] == "In" && r["values"].as_array().is_some_and(|v| v.len() == 1)
                })
                .filter_map(|r| {
                    Some((
                        r["key"].as_str()?.to_string(),
                        r["values"][0].as_str()?.to_string(),
                    ))
                })
                .collect();
            Ok(Attributes::resource(
                user,
                &s("verb"),
                ResourceAttributes {
                    namespace: s("namespace"),
                    group: s("group"),
                    version,
                    resource: s("resource"),
                    subresource: s("subresource"),
                    name: s("name"),
                    fields,
                },
            ))
        }
        (false, true) => Ok(Attributes {
            user,
            verb: non["verb"].as_str().unwrap_or("").to_string(),
            path: non["path"].as_str().unwrap_or("").to_string(),
            resource: None,
        }),
    }
}

/// The status of an access review.
fn access_status(authz: &Authorizer, a: &Attributes<'_>) -> Value {
    match authz.authorize(a) {
        Decision::Allow(reason) => {
            let mut s = json!({"allowed": true});
            if !reason.is_empty() {
                s["reason"] = json!(reason);
            }
            s
        }
        Decision::NoOpinion(reason) => {
            let mut s = json!({"allowed": false});
            if !reason.is_empty() {
                s["reason"] = json!(reason);
            }
            s
        }
    }
}

/// The rules `user` holds in `namespace`, as a SelfSubjectRulesReview's status.
fn rules_status(authz: &Authorizer, user: &User, namespace: &str) -> Value {
    let mut errors = Vec::new();
    let mut incomplete = false;
    if node::node_name(user).is_some() {
        // The Node authorizer's rights depend on the objects asked for.
        incomplete = true;
        errors.push("node authorizer does not support user rule resolution".to_string());
    }
    let (rules, rbac_errors) = authz.policy().rules_for(user, namespace);
    errors.extend(rbac_errors);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if !r.resources.is_empty() {
            let mut v = json!({"verbs": r.verbs});
            if !r.api_groups.is_empty() {
                v["apiGroups"] = json!(r.api_groups);
            }
            v["resources"] = json!(r.resources);
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(v);
        }
        if !r.non_resource_urls.is_empty() {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    });
    match errors.len() {
        0 => {}
        1 => status["evaluationError"] = json!(errors[0]),
        _ => status["evaluationError"] = json!(format!("[{}]", errors.join(", "))),
    }
    status
}

/// Answers a review sent by `user` (the body already decoded to JSON).
pub(crate) fn answer(
    authz: &Authorizer,
    review: Review,
    path_namespace: Option<&str>,
    user: &User,
    body: &[u8],
) -> Result<Value, Error> {
    let kind = review.kind();
    let mut obj: Value = serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"
        ))
    })?;
    if !obj.is_object() {
        return Err(Status::bad_request("the body of the request must be a JSON object").into());
    }
    if let Some(k) = obj["kind"].as_str().filter(|k| !k.is_empty() && *k != kind) {
        return Err(Status::bad_request(format!(
            "the kind in the request body ({k}) does not match the kind of the resource ({kind})"
        ))
        .into());
    }
    obj["kind"] = json!(kind);
    obj["apiVersion"] = json!(format!("{GROUP}/v1"));
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"]["creationTimestamp"] = Value::Null;
    let spec = obj["spec"].clone();
    let status = match review {
        Review::SelfSubjectRules => {
            let ns = spec["namespace"].as_str().unwrap_or("");
            if ns.is_empty() {
                return Err(Status::bad_request("no namespace on request").into());
            }
            rules_status(authz, user, ns)
        }
        Review::SelfSubjectAccess => access_status(authz, &attributes(kind, &spec, user)?),
        Review::SubjectAccess | Review::LocalSubjectAccess => {
            let name = spec["user"].as_str().unwrap_or("").to_string();
            let groups: Vec<String> = spec["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|g| g.as_str().map(str::to_string))
                .collect();
            if name.is_empty() && groups.is_empty() {
                return Err(invalid(
                    kind,
                    "spec.user",
                    &json!(""),
                    "at least one of user or group must be specified",
                ));
            }
            let subject = User { name, groups };
            let mut a = attributes(kind, &spec, &subject)?;
            if let Some(ns) = path_namespace {
                if a.resource.is_none() {
                    return Err(invalid(
                        kind,
                        "spec.nonResourceAttributes",
                        &spec["nonResourceAttributes"],
                        "disallowed on this kind of request",
                    ));
                }
                let r = a.resource.as_mut().map(|r| &mut r.namespace);
                if let Some(r) = r {
                    if r.is_empty() {
                        *r = ns.to_string();
                    } else if r != ns {
                        return Err(Status::bad_request(format!(
                            "spec.resourceAttributes.namespace must match namespace: {ns}"
                        ))
                        .into());
                    }
                }
                obj["metadata"]["namespace"] = json!(ns);
            }
            access_status(authz, &a)
        }
    };
    obj["status"] = status;
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            Review::from_path(&["selfsubjectaccessreviews"]),
            Some((Review::SelfSubjectAccess, None))
        );
        assert_eq!(
            Review::from_path(&["namespaces", "x", "localsubjectaccessreviews"]),
            Some((Review::LocalSubjectAccess, Some("x")))
        );
        assert_eq!(
            Review::from_path(&["selfsubjectaccessreviews", "name"]),
            None
        );
    }

    #[test]
    fn masters_may_and_others_may_not() {
        let authz = Authorizer::default();
        let ask = |user: &User| {
            let body = json!({"spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}});
            answer(
                &authz,
                Review::SelfSubjectAccess,
                None,
                user,
                &serde_json::to_vec(&body).unwrap(),
            )
            .unwrap()
        };
        let admin = ask(&User::admin());
        assert_eq!(admin["status"], json!({"allowed": true}));
        assert_eq!(admin["kind"], "SelfSubjectAccessReview");
        let nobody = ask(&User {
            name: "x".into(),
            groups: vec![],
        });
        assert_eq!(nobody["status"]["allowed"], false);
        let bad = answer(
            &authz,
            Review::SubjectAccess,
            None,
            &User::admin(),
            br#"{"spec":{"resourceAttributes":{"verb":"get"}}}"#,
        );
        match bad {
            Err(Error::Status(s)) => assert_eq!(
                s.message,
                r#"SubjectAccessReview.authorization.k8s.io "" is invalid: spec.user: Invalid value: "": at least one of user or group must be specified"#
            ),
            other => panic!("{other:?}"),
        }
    }
}
