//! What a request asks to do, as kube-apiserver's authorizers see it (its
//! `RequestInfo`): a verb on a resource (group, resource, subresource, namespace, name)
//! or on a non-resource URL path.

use crate::api::User;

/// A request's authorization attributes.
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    pub(crate) user: &'a User,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or a special verb (`impersonate`, `bind`, `escalate`); for a
    /// non-resource request the HTTP method in lower case.
    pub(crate) verb: String,
    /// The URL path (non-resource requests are matched on it).
    pub(crate) path: String,
    /// `None` for a non-resource request (`/healthz`, `/api`, `/apis/apps/v1`).
    pub(crate) resource: Option<ResourceAttributes>,
}

/// The resource a request names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResourceAttributes {
    /// Empty for cluster-scoped resources and requests across all namespaces.
    pub(crate) namespace: String,
    pub(crate) group: String,
    pub(crate) version: String,
    pub(crate) resource: String,
    pub(crate) subresource: String,
    /// Empty for lists and creates (unless a list selects one name with
    /// `fieldSelector=metadata.name=NAME`).
    pub(crate) name: String,
    /// The field selector's equality requirements (`spec.nodeName=node-1`), which the
    /// Node authorizer reads.
    pub(crate) fields: Vec<(String, String)>,
}

impl ResourceAttributes {
    /// `pods` or `pods/log`.
    pub(crate) fn combined(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// Subresources of a namespace: `/api/v1/namespaces/NS/status` names the namespace's
/// status, not a resource type called `status` inside it.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

impl<'a> Attributes<'a> {
    /// The attributes of a resource request.
    pub(crate) fn resource(user: &'a User, verb: &str, r: ResourceAttributes) -> Attributes<'a> {
        Attributes {
            user,
            verb: verb.to_string(),
            path: String::new(),
            resource: Some(r),
        }
    }

    /// What an HTTP request asks to do, by kube-apiserver's rules: `/api/v1/...` and
    /// `/apis/GROUP/VERSION/...` with at least a resource are resource requests (GET is
    /// `get`, `list` without a name, `watch` with `watch` set; DELETE without a name is
    /// `deletecollection`), everything else is a non-resource request.
    pub(crate) fn from_request(
        user: &'a User,
        method: &http::Method,
        path: &str,
        query: &str,
    ) -> Attributes<'a> {
        let method_verb = method.as_str().to_ascii_lowercase();
        let non_resource = Attributes {
            user,
            verb: method_verb,
            path: path.to_string(),
            resource: None,
        };
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, rest) = match parts.as_slice() {
            ["api", rest @ ..] if rest.len() >= 2 => ("", rest),
            ["apis", g, rest @ ..] if rest.len() >= 2 => (*g, rest),
            _ => return non_resource,
        };
        let version = rest[0];
        let mut parts = &rest[1..];
        let mut verb = match *method {
            http::Method::POST => "create",
            http::Method::GET | http::Method::HEAD => "get",
            http::Method::PUT => "update",
            http::Method::PATCH => "patch",
            http::Method::DELETE => "delete",
            _ => "",
        }
        .to_string();
        // The deprecated `/api/v1/watch/...` and `/proxy/...` forms name their verb.
        if matches!(parts.first(), Some(&"watch" | &"proxy")) && parts.len() >= 2 {
            verb = parts[0].to_string();
            parts = &parts[1..];
        }
        let mut r = ResourceAttributes {
            group: group.to_string(),
            version: version.to_string(),
            ..ResourceAttributes::default()
        };
        if parts.first() == Some(&"namespaces") && parts.len() > 1 {
            r.namespace = parts[1].to_string();
            if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
                parts = &parts[2..];
            }
        }
        if let Some(res) = parts.first() {
            r.resource = (*res).to_string();
        }
        if let Some(name) = parts.get(1) {
            r.name = (*name).to_string();
        }
        if let Some(sub) = parts.get(2).filter(|_| verb != "proxy") {
            r.subresource = (*sub).to_string();
        }
        let params = k8s::http::query_pairs(query);
        let param = |k: &str| params.iter().rev().find(|(n, _)| n == k).map(|(_, v)| v);
        if let Some(sel) = param("fieldSelector") {
            r.fields = equalities(sel);
        }
        if r.name.is_empty() && verb == "get" {
            verb = match param("watch").map(|w| w.to_ascii_lowercase()) {
                Some(w) if w != "false" && w != "0" => "watch",
                _ => "list",
            }
            .to_string();
            // A list or watch of one object (`fieldSelector=metadata.name=x`) is
            // authorized as that object, as kube-apiserver does.
            if let Some((_, name)) = r.fields.iter().find(|(f, _)| f == "metadata.name")
                && crate::validate::name_errors(crate::resources::NameRule::Path, name).is_empty()
            {
                r.name = name.clone();
            }
        }
        if r.name.is_empty() && verb == "delete" {
            verb = "deletecollection".to_string();
        }
        Attributes {
            user,
            verb,
            path: path.to_string(),
            resource: Some(r),
        }
    }
}

/// The `field=value` (or `==`) requirements of a field selector.
fn equalities(sel: &str) -> Vec<(String, String)> {
    sel.split(',')
        .filter(|p| !p.contains("!="))
        .filter_map(|p| p.split_once("==").or_else(|| p.split_once('=')))
        .map(|(f, v)| (f.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn attrs(method: Method, path: &str, query: &str) -> (String, Option<ResourceAttributes>) {
        let u = User::admin();
        let a = Attributes::from_request(&u, &method, path, query);
        (a.verb, a.resource)
    }

    fn r(ns: &str, group: &str, resource: &str, sub: &str, name: &str) -> ResourceAttributes {
        ResourceAttributes {
            namespace: ns.into(),
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: sub.into(),
            name: name.into(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn verbs_from_methods() {
        let pods = "/api/v1/namespaces/default/pods";
        assert_eq!(
            attrs(Method::GET, pods, ""),
            ("list".into(), Some(r("default", "", "pods", "", "")))
        );
        assert_eq!(attrs(Method::GET, pods, "watch=true").0, "watch");
        assert_eq!(attrs(Method::GET, pods, "watch=1").0, "watch");
        assert_eq!(attrs(Method::GET, pods, "watch=false").0, "list");
        assert_eq!(attrs(Method::POST, pods, "").0, "create");
        assert_eq!(attrs(Method::DELETE, pods, "").0, "deletecollection");
        let web = "/api/v1/namespaces/default/pods/web";
        assert_eq!(
            attrs(Method::GET, web, ""),
            ("get".into(), Some(r("default", "", "pods", "", "web")))
        );
        assert_eq!(attrs(Method::PUT, web, "").0, "update");
        assert_eq!(attrs(Method::PATCH, web, "").0, "patch");
        assert_eq!(attrs(Method::DELETE, web, "").0, "delete");
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/default/pods/web/log", ""),
            ("get".into(), Some(r("default", "", "pods", "log", "web")))
        );
        assert_eq!(
            attrs(
                Method::PATCH,
                "/apis/apps/v1/namespaces/d/deployments/x/scale",
                ""
            ),
            (
                "patch".into(),
                Some(r("d", "apps", "deployments", "scale", "x"))
            )
        );
    }

    #[test]
    fn scopes_and_namespaces() {
        assert_eq!(
            attrs(Method::GET, "/api/v1/nodes/node-1/status", ""),
            ("get".into(), Some(r("", "", "nodes", "status", "node-1")))
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/pods", "").1,
            Some(r("", "", "pods", "", ""))
        );
        // A namespace is its own namespace; its status is its subresource.
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces/team", ""),
            ("get".into(), Some(r("team", "", "namespaces", "", "team")))
        );
        assert_eq!(
            attrs(Method::PUT, "/api/v1/namespaces/team/finalize", "").1,
            Some(r("team", "", "namespaces", "finalize", "team"))
        );
        assert_eq!(
            attrs(Method::GET, "/api/v1/namespaces", "").1,
            Some(r("", "", "namespaces", "", ""))
        );
    }

    #[test]
    fn non_resource_paths() {
        for p in [
            "/healthz",
            "/version",
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/openapi/v3/apis/apps/v1",
        ] {
            let (verb, res) = attrs(Method::GET, p, "");
            assert_eq!((verb.as_str(), res), ("get", None), "{p}");
        }
        assert_eq!(attrs(Method::POST, "/healthz", "").0, "post");
    }

    #[test]
    fn field_selectors() {
        let (verb, res) = attrs(
            Method::GET,
            "/api/v1/pods",
            "watch=1&fieldSelector=spec.nodeName%3Dnode-1",
        );
        let res = res.unwrap();
        assert_eq!(verb, "watch");
        assert_eq!(
            res.fields,
            [("spec.nodeName".to_string(), "node-1".to_string())]
        );
        assert_eq!(res.name, "");
        let (verb, res) = attrs(
            Method::GET,
            "/api/v1/namespaces/a/secrets",
            "fieldSelector=metadata.name%3D%3Ds1",
        );
        assert_eq!((verb.as_str(), res.unwrap().name.as_str()), ("list", "s1"));
        let (_, res) = attrs(
            Method::GET,
            "/api/v1/namespaces/a/secrets",
            "fieldSelector=metadata.name!%3Ds1",
        );
        assert_eq!(res.unwrap().name, "");
    }
}
