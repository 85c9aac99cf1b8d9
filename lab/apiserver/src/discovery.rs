//! Discovery (`/api`, `/apis`, legacy and aggregated v2) and the part of `/openapi/v3`
//! kubectl reads to decide that this server validates fields itself.

use serde_json::{Value, json};

use crate::resources::ResourceType;

/// The served types, as discovery sees them.
type All<'a> = &'a [&'static ResourceType];

/// Non-core groups in order of first appearance.
pub(crate) fn groups(all: All<'_>) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for rt in all {
        if !rt.group.is_empty() && !out.contains(&rt.group) {
            out.push(rt.group);
        }
    }
    out
}

/// kube's version priority: GA before beta before alpha, higher numbers first.
fn version_rank(v: &str) -> (u8, i64, i64) {
    let rest = v.strip_prefix('v').unwrap_or(v);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let major = digits.parse::<i64>().unwrap_or(0);
    let tail = &rest[digits.len()..];
    let (level, minor) = if tail.is_empty() {
        (0, 0)
    } else if let Some(b) = tail.strip_prefix("beta") {
        (1, b.parse::<i64>().unwrap_or(0))
    } else if let Some(a) = tail.strip_prefix("alpha") {
        (2, a.parse::<i64>().unwrap_or(0))
    } else {
        (3, 0)
    };
    (level, -major, -minor)
}

/// The versions served for `group`, preferred first.
pub(crate) fn versions(all: All<'_>, group: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for rt in all.iter().filter(|r| r.group == group) {
        if !out.contains(&rt.version) {
            out.push(rt.version);
        }
    }
    out.sort_by_key(|v| version_rank(v));
    out
}

fn in_group_version<'a>(
    all: All<'a>,
    group: &'a str,
    version: &'a str,
) -> impl Iterator<Item = &'static ResourceType> + 'a {
    all.iter()
        .copied()
        .filter(move |r| r.group == group && r.version == version)
}

const STATUS_VERBS: &[&str] = &["get", "patch", "update"];

/// Content type of aggregated discovery responses.
pub(crate) const AGGREGATED_CT: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the client asked for aggregated discovery v2 (kubectl does, first).
pub(crate) fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').next().is_some_and(|first| {
        first.contains("as=APIGroupDiscoveryList")
            && first.contains("v=v2")
            && !first.contains("v=v2beta1")
    })
}

/// What a resource answers: everything, or get and list for computed ones.
fn verbs(rt: &ResourceType) -> Value {
    if rt.computed() {
        json!(["get", "list"])
    } else {
        json!(rt.verbs)
    }
}

fn categories(rt: &ResourceType) -> Vec<&'static str> {
    match rt.resource {
        "pods"
        | "services"
        | "deployments"
        | "replicasets"
        | "statefulsets"
        | "daemonsets"
        | "jobs"
        | "cronjobs"
        | "replicationcontrollers" => vec!["all"],
        _ => vec![],
    }
}

pub(crate) fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group(all: All<'_>, name: &str) -> Value {
    let gvs: Vec<Value> = versions(all, name)
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    let preferred = gvs.first().cloned().unwrap_or(Value::Null);
    json!({"name": name, "versions": gvs, "preferredVersion": preferred})
}

pub(crate) fn api_group_list(all: All<'_>) -> Value {
    let groups: Vec<Value> = groups(all).iter().map(|g| group(all, g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub(crate) fn api_group(all: All<'_>, name: &str) -> Value {
    let mut g = group(all, name);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

pub(crate) fn resource_list(all: All<'_>, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in in_group_version(all, group, version) {
        resources.push(json!({
            "name": rt.resource,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": verbs(rt),
            "shortNames": rt.short_names,
            "categories": categories(rt),
        }));
        if rt.status {
            resources.push(json!({
                "name": format!("{}/status", rt.resource),
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": STATUS_VERBS,
            }));
        }
        if rt.group.is_empty() && rt.resource == "pods" {
            resources.push(json!({
                "name": "bindings",
                "singularName": "binding",
                "namespaced": true,
                "kind": "Binding",
                "verbs": ["create"],
            }));
            resources.push(json!({
                "name": "pods/binding",
                "singularName": "",
                "namespaced": true,
                "kind": "Binding",
                "verbs": ["create"],
            }));
        }
        if rt.has_scale() {
            resources.push(json!({
                "name": format!("{}/scale", rt.resource),
                "singularName": "",
                "namespaced": rt.namespaced,
                "group": "autoscaling",
                "version": "v1",
                "kind": "Scale",
                "verbs": STATUS_VERBS,
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn aggregated_group(all: All<'_>, name: &str) -> Value {
    let versions: Vec<Value> = versions(all, name)
        .into_iter()
        .map(|v| json!({"version": v, "resources": aggregated_resources(all, name, v), "freshness": "Current"}))
        .collect();
    json!({"metadata": {"name": name, "creationTimestamp": null}, "versions": versions})
}

fn aggregated_resources(all: All<'_>, name: &str, version: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    if name.is_empty() && version == "v1" {
        out.push(json!({"resource": "bindings",
            "responseKind": {"group": "", "version": "v1", "kind": "Binding"},
            "scope": "Namespaced", "singularResource": "binding", "verbs": ["create"]}));
    }
    let rest = in_group_version(all, name, version)
        .map(|rt| {
            let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
            let mut r = json!({
                "resource": rt.resource,
                "responseKind": kind,
                "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": rt.singular,
                "verbs": verbs(rt),
                "shortNames": rt.short_names,
                "categories": categories(rt),
            });
            let mut subs = Vec::new();
            if rt.status {
                subs.push(
                    json!({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS}),
                );
            }
            if rt.group.is_empty() && rt.resource == "pods" {
                subs.push(json!({"subresource": "binding",
                    "responseKind": {"group": "", "version": "v1", "kind": "Binding"},
                    "verbs": ["create"]}));
            }
            if rt.has_scale() {
                subs.push(json!({"subresource": "scale",
                    "responseKind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
                    "verbs": STATUS_VERBS}));
            }
            if !subs.is_empty() {
                r["subresources"] = Value::Array(subs);
            }
            r
        })
        .collect::<Vec<Value>>();
    out.extend(rest);
    out
}

/// Aggregated discovery for `/api` (the core group) or `/apis` (every other group).
pub(crate) fn aggregated(all: All<'_>, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(all, "")]
    } else {
        groups(all)
            .iter()
            .map(|g| aggregated_group(all, g))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The component schemas of the built-in kinds and what they reference
/// (`openapi/builtin.json`, generated by `openapi/generate.py`; see
/// `openapi/SOURCE.md`), parsed on first use.
pub(crate) fn builtin_schemas() -> &'static serde_json::Map<String, Value> {
    static SCHEMAS: std::sync::OnceLock<serde_json::Map<String, Value>> =
        std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| {
        serde_json::from_str(include_str!("../openapi/builtin.json")).unwrap_or_default()
    })
}

/// FNV-1a of the embedded built-in schemas, computed once.
fn builtin_hash() -> u64 {
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HASH.get_or_init(|| {
        include_str!("../openapi/builtin.json")
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
    })
}

/// A built-in kind's schema name, as kube-apiserver names it.
pub(crate) fn builtin_schema_name(group: &str, version: &str, kind: &str) -> String {
    match group {
        "apiextensions.k8s.io" => {
            format!("io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.{version}.{kind}")
        }
        "" => format!("io.k8s.api.core.{version}.{kind}"),
        "apiregistration.k8s.io" => {
            format!("io.k8s.kube-aggregator.pkg.apis.apiregistration.{version}.{kind}")
        }
        g => format!(
            "io.k8s.api.{}.{version}.{kind}",
            g.split('.').next().unwrap_or(g)
        ),
    }
}

/// Adds the built-in schema `name` and every schema it references to `out`.
fn add_builtin(out: &mut serde_json::Map<String, Value>, name: &str) -> bool {
    fn refs<'a>(v: &'a Value, found: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => {
                            found.push(r.trim_start_matches("#/components/schemas/"))
                        }
                        _ => refs(x, found),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, found)),
            _ => {}
        }
    }
    if out.contains_key(name) {
        return true;
    }
    let Some(schema) = builtin_schemas().get(name) else {
        return false;
    };
    out.insert(name.to_string(), schema.clone());
    let mut found = Vec::new();
    refs(schema, &mut found);
    for r in found {
        add_builtin(out, r);
    }
    true
}

/// `/openapi/v3`: one document per group-version.
pub(crate) fn openapi_index(all: All<'_>) -> Value {
    let mut paths = serde_json::Map::new();
    for rt in all {
        let p = gv_path(rt.group, rt.version);
        // kubectl caches a document by its hash: it changes with the CRDs' schemas and
        // with the built-in schemas this binary carries.
        let mut h: u64 = builtin_hash();
        for r in all
            .iter()
            .filter(|r| r.group == rt.group && r.version == rt.version)
        {
            let addr = r.schema.map_or(0, |s| s as *const Value as usize);
            for b in r.resource.bytes().chain(addr.to_le_bytes()) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}-{h:016x}", env!("CARGO_PKG_VERSION"))}));
    }
    json!({"paths": paths})
}

/// The per group-version document: every item path with GET/PUT/PATCH/DELETE, each
/// PATCH declaring its group-version-kind and the `fieldValidation` parameter. Built-in
/// kinds get their upstream schemas (descriptions for `kubectl explain`, strategic-merge
/// extensions for kubectl's client-side apply); custom resources their CRD's schema.
pub(crate) fn openapi_gv(all: All<'_>, path: &str) -> Option<Value> {
    let (group, version) = match path.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    if !all.iter().any(|r| r.group == group && r.version == version) {
        return None;
    }
    let params = json!([
        {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
        {"name": "force", "in": "query", "schema": {"type": "boolean"}},
    ]);
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for rt in in_group_version(all, group, version) {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let base = if rt.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group, version),
                rt.resource
            )
        } else {
            format!("/{}/{}", gv_path(group, version), rt.resource)
        };
        let op = |action: &str, extra: &Value| {
            let mut o = json!({
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK"}},
            });
            if !extra.is_null() {
                o["parameters"] = extra.clone();
            }
            o
        };
        paths.insert(
            format!("{base}/{{name}}"),
            json!({
                "get": op("get", &Value::Null),
                "put": op("put", &params),
                "patch": op("patch", &params),
                "delete": op("delete", &Value::Null),
            }),
        );
        paths.insert(
            base,
            json!({"get": op("list", &Value::Null), "post": op("post", &params)}),
        );
        let schema_name = format!(
            "io.k8s.api.{}.{}.{}",
            if group.is_empty() {
                "core"
            } else {
                group.split('.').next().unwrap_or(group)
            },
            rt.version,
            rt.kind
        );
        match rt.schema {
            Some(schema) => {
                // As kube-apiserver names CRD schemas: the group reversed.
                let reversed: Vec<&str> = rt.group.split('.').rev().collect();
                let name = format!("{}.{}.{}", reversed.join("."), rt.version, rt.kind);
                schemas.insert(name, crate::schema::published(schema, &gvk));
                schemas.insert(
                    "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".into(),
                    json!({"type": "object", "description": "ObjectMeta is metadata that all persisted resources must have, which includes all objects users must create."}),
                );
            }
            None => {
                let name = builtin_schema_name(rt.group, rt.version, rt.kind);
                if add_builtin(&mut schemas, &name) {
                    schemas[&name]["x-kubernetes-group-version-kind"] = json!([gvk]);
                } else {
                    schemas.insert(
                        schema_name,
                        json!({
                            "type": "object",
                            "x-kubernetes-group-version-kind": [gvk],
                        }),
                    );
                }
                if rt.has_scale() {
                    let scale = builtin_schema_name("autoscaling", "v1", "Scale");
                    if add_builtin(&mut schemas, &scale) {
                        schemas[&scale]["x-kubernetes-group-version-kind"] =
                            json!([{"group": "autoscaling", "version": "v1", "kind": "Scale"}]);
                    }
                }
            }
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// `/openapi/v2`: a document without definitions. kubectl validates what the v3
/// documents cannot place (a `kind: List` file) against v2, and skips kinds v2 does not
/// define, as it skips unknown kinds; without any v2 document it refuses the file.
/// kubectl asks for gnostic's protobuf form; others get JSON.
pub(crate) fn openapi_v2(accept: &str) -> http::Response<crate::ResponseBody> {
    const PB: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
    if accept.contains(PB) {
        // openapi_v2.Document: swagger (1) = "2.0", info (2) = {title (1), version (2)}.
        let field = |n: u8, b: &[u8]| {
            let mut v = vec![n << 3 | 2, b.len() as u8];
            v.extend_from_slice(b);
            v
        };
        let mut info = field(1, b"Kubernetes");
        info.extend(field(2, crate::KUBERNETES_VERSION.as_bytes()));
        let mut doc = field(1, b"2.0");
        doc.extend(field(2, &info));
        return http::Response::builder()
            // As kube-openapi answers: Go's mime parser refuses the `@` of PB.
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(crate::api::full_body(doc))
            .unwrap_or_else(|_| http::Response::new(crate::api::full_body(Vec::new())));
    }
    crate::api::json_response(
        200,
        &json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION}, "paths": {}, "definitions": {}}),
        "application/json",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_documents() {
        let all: Vec<&'static ResourceType> = crate::resources::RESOURCES.iter().collect();
        let l = resource_list(&all, "", "v1");
        let names: Vec<&str> = l["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["name"].as_str())
            .collect();
        assert!(
            names.contains(&"pods")
                && names.contains(&"pods/status")
                && names.contains(&"endpoints")
        );
        assert_eq!(
            api_group_list(&all)["groups"].as_array().unwrap().len(),
            groups(&all).len()
        );
        assert_eq!(groups(&all)[0], "apps");
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
        let idx = openapi_index(&all);
        assert!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1")
        );
        let doc = openapi_gv(&all, "apis/apps/v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(openapi_gv(&all, "apis/nope/v1").is_none());
    }

    #[test]
    fn version_priority() {
        let mut v = vec!["v1alpha1", "v1beta1", "v2", "v1", "v1beta2"];
        v.sort_by_key(|v| version_rank(v));
        assert_eq!(v, ["v2", "v1", "v1beta2", "v1beta1", "v1alpha1"]);
    }
}
