//! Which requests a webhook is called for: its rules (operation, group, version,
//! resource and subresource, scope), then its `namespaceSelector` and `objectSelector`,
//! with kube-apiserver's meaning of each.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{GROUP, Rule, Webhook};
use super::labels_of;
use crate::api::User;

/// What admission knows of a request.
#[derive(Debug)]
pub(crate) struct Request<'a> {
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    pub(crate) operation: &'static str,
    pub(crate) group: &'a str,
    pub(crate) version: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) resource: &'a str,
    /// Empty for the object itself.
    pub(crate) subresource: &'a str,
    /// Empty for cluster-scoped resources.
    pub(crate) namespace: &'a str,
    pub(crate) namespaced: bool,
    pub(crate) name: &'a str,
    pub(crate) user: &'a User,
    pub(crate) dry_run: bool,
    /// The request's options (`CreateOptions`, `UpdateOptions`, `DeleteOptions`).
    pub(crate) options: Value,
}

impl Webhook {
    /// Whether any of the webhook's rules names this request (selectors aside).
    pub(crate) fn rules_match(&self, req: &Request<'_>) -> bool {
        // Webhooks never see webhook configurations: a broken webhook could otherwise
        // lock out its own repair, as kube-apiserver guards against.
        if req.group == GROUP {
            return false;
        }
        self.rules.iter().any(|r| r.matches(req))
    }

    /// Whether the webhook is called for this request: a rule names it, and the
    /// selectors match (`namespace_labels`: those of the request's namespace).
    pub(crate) fn matches(
        &self,
        req: &Request<'_>,
        namespace_labels: &BTreeMap<String, String>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> bool {
        self.rules_match(req)
            && self.namespace_matches(req, namespace_labels, object, old)
            && self.object_matches(object, old)
    }

    /// A namespaced request matches by its namespace's labels; a Namespace by its own;
    /// any other cluster-scoped object always.
    fn namespace_matches(
        &self,
        req: &Request<'_>,
        namespace_labels: &BTreeMap<String, String>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> bool {
        let sel = &self.namespace_selector;
        if req.group.is_empty() && req.resource == "namespaces" {
            return k8s::labels::selects(sel, &labels_of(object.or(old)));
        }
        if !req.namespaced {
            return true;
        }
        k8s::labels::selects(sel, namespace_labels)
    }

    /// The object or the old object has matching labels (an update that removes the
    /// label is still seen).
    fn object_matches(&self, object: Option<&Value>, old: Option<&Value>) -> bool {
        let sel = &self.object_selector;
        if sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
            && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
        {
            return true;
        }
        [object, old]
            .into_iter()
            .flatten()
            .any(|o| k8s::labels::selects(sel, &labels_of(Some(o))))
    }
}

impl Rule {
    fn matches(&self, req: &Request<'_>) -> bool {
        let any = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        any(&self.operations, req.operation)
            && any(&self.groups, req.group)
            && any(&self.versions, req.version)
            && self.resources.iter().any(|r| resource_matches(r, req))
            && match self.scope.as_str() {
                "Cluster" => !req.namespaced,
                "Namespaced" => req.namespaced,
                _ => true,
            }
    }
}

/// `pods` names the resource alone, `pods/status` one subresource, `pods/*` every
/// subresource of pods, `*` every resource (no subresource), `*/status` that
/// subresource of every resource, `*/*` everything.
fn resource_matches(rule: &str, req: &Request<'_>) -> bool {
    let (res, sub) = match rule.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (rule, None),
    };
    let res_ok = res == "*" || res == req.resource;
    match sub {
        None => res_ok && req.subresource.is_empty(),
        Some("*") => res_ok,
        Some(s) => res_ok && s == req.subresource,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::config::webhooks;
    use serde_json::json;

    fn user() -> User {
        User::admin()
    }

    fn req<'a>(
        user: &'a User,
        operation: &'static str,
        resource: &'a str,
        sub: &'a str,
    ) -> Request<'a> {
        Request {
            operation,
            group: "",
            version: "v1",
            kind: "Pod",
            resource,
            subresource: sub,
            namespace: "demo",
            namespaced: true,
            name: "web",
            user,
            dry_run: false,
            options: Value::Null,
        }
    }

    fn hook(rules: Value, ns: Value, obj: Value) -> Webhook {
        let c = json!({
            "metadata": {"name": "c"},
            "webhooks": [{
                "name": "a.b.c",
                "clientConfig": {"url": "https://127.0.0.1/"},
                "rules": rules,
                "namespaceSelector": ns,
                "objectSelector": obj,
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }],
        });
        webhooks(&c, false).pop().unwrap()
    }

    #[test]
    fn resources_and_subresources_as_kube_matches_them() {
        let u = user();
        let cases = [
            ("pods", "pods", "", true),
            ("pods", "pods", "status", false),
            ("pods/status", "pods", "status", true),
            ("pods/status", "pods", "", false),
            ("pods/*", "pods", "exec", true),
            ("pods/*", "pods", "", true),
            ("*", "services", "", true),
            ("*", "services", "status", false),
            ("*/status", "services", "status", true),
            ("*/*", "services", "status", true),
            ("services", "pods", "", false),
        ];
        for (rule, resource, sub, want) in cases {
            let w = hook(
                json!([{"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": [rule]}]),
                json!({}),
                json!({}),
            );
            assert_eq!(
                w.rules_match(&req(&u, "CREATE", resource, sub)),
                want,
                "{rule} against {resource}/{sub}"
            );
        }
    }

    #[test]
    fn operations_groups_and_scope() {
        let u = user();
        let w = hook(
            json!([{"operations": ["CREATE", "UPDATE"], "apiGroups": ["apps"], "apiVersions": ["*"], "resources": ["*"], "scope": "Namespaced"}]),
            json!({}),
            json!({}),
        );
        let mut r = req(&u, "CREATE", "deployments", "");
        assert!(!w.rules_match(&r), "group \"\" is not apps");
        r.group = "apps";
        assert!(w.rules_match(&r));
        r.operation = "DELETE";
        assert!(!w.rules_match(&r));
        r.operation = "UPDATE";
        r.namespaced = false;
        assert!(!w.rules_match(&r), "scope Namespaced");
        // Webhook configurations themselves are never sent to webhooks.
        let all = hook(
            json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]),
            json!({}),
            json!({}),
        );
        let mut r = req(&u, "CREATE", "validatingwebhookconfigurations", "");
        r.group = GROUP;
        r.namespaced = false;
        assert!(!all.rules_match(&r));
    }

    #[test]
    fn selectors() {
        let u = user();
        let rules = json!([{"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*"]}]);
        let w = hook(
            rules.clone(),
            json!({"matchLabels": {"kubewire.io/inject": "enabled"}}),
            json!({"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]}),
        );
        let r = req(&u, "CREATE", "pods", "");
        let injected: BTreeMap<String, String> =
            [("kubewire.io/inject".to_string(), "enabled".to_string())].into();
        let pod = json!({"metadata": {"labels": {"app": "web"}}});
        let skipped = json!({"metadata": {"labels": {"skip": "yes"}}});
        assert!(w.matches(&r, &injected, Some(&pod), None));
        assert!(!w.matches(&r, &BTreeMap::new(), Some(&pod), None));
        assert!(!w.matches(&r, &injected, Some(&skipped), None));
        // An update is seen when either the new or the old object matches.
        assert!(w.matches(&r, &injected, Some(&skipped), Some(&pod)));
        // A Namespace is matched by its own labels; other cluster-scoped objects always.
        let mut ns = req(&u, "CREATE", "namespaces", "");
        ns.namespaced = false;
        ns.namespace = "";
        let labelled = json!({"metadata": {"labels": {"kubewire.io/inject": "enabled"}}});
        assert!(w.matches(&ns, &BTreeMap::new(), Some(&labelled), None));
        assert!(!w.matches(&ns, &BTreeMap::new(), Some(&pod), None));
        let mut node = req(&u, "CREATE", "nodes", "");
        node.namespaced = false;
        assert!(w.matches(&node, &BTreeMap::new(), Some(&pod), None));
    }
}
