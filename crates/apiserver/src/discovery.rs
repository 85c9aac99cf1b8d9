//! Discovery (`/api`, `/apis`, legacy and aggregated v2) and the part of `/openapi/v3`
//! kubectl reads to decide that this server validates fields itself.

use serde_json::{Value, json};

use crate::resources::{GROUPS, RESOURCES, ResourceType, in_group_version};

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
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

fn categories(rt: &ResourceType) -> Vec<&'static str> {
    match rt.resource {
        "pods" | "services" | "deployments" | "replicasets" | "statefulsets" | "daemonsets" => {
            vec!["all"]
        }
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

fn group(name: &str) -> Value {
    let gv = json!({"groupVersion": format!("{name}/v1"), "version": "v1"});
    json!({"name": name, "versions": [gv.clone()], "preferredVersion": gv})
}

pub(crate) fn api_group_list() -> Value {
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": GROUPS.iter().map(|g| group(g)).collect::<Vec<_>>()})
}

pub(crate) fn api_group(name: &str) -> Value {
    let mut g = group(name);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    g
}

pub(crate) fn resource_list(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for rt in in_group_version(group, version) {
        resources.push(json!({
            "name": rt.resource,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": VERBS,
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

fn aggregated_group(name: &str) -> Value {
    let resources: Vec<Value> = in_group_version(name, "v1")
        .map(|rt| {
            let kind = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
            let mut r = json!({
                "resource": rt.resource,
                "responseKind": kind,
                "scope": if rt.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": rt.singular,
                "verbs": VERBS,
                "shortNames": rt.short_names,
                "categories": categories(rt),
            });
            let mut subs = Vec::new();
            if rt.status {
                subs.push(
                    json!({"subresource": "status", "responseKind": kind, "verbs": STATUS_VERBS}),
                );
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
        .collect();
    json!({
        "metadata": {"name": name, "creationTimestamp": null},
        "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
    })
}

/// Aggregated discovery for `/api` (the core group) or `/apis` (every other group).
pub(crate) fn aggregated(core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group("")]
    } else {
        GROUPS.iter().map(|g| aggregated_group(g)).collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}

fn gv_path(group: &str) -> String {
    if group.is_empty() {
        "api/v1".into()
    } else {
        format!("apis/{group}/v1")
    }
}

/// `/openapi/v3`: one document per group-version.
pub(crate) fn openapi_index() -> Value {
    let mut paths = serde_json::Map::new();
    for g in std::iter::once("").chain(GROUPS.iter().copied()) {
        let p = gv_path(g);
        paths.insert(p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", env!("CARGO_PKG_VERSION"))}));
    }
    json!({"paths": paths})
}

/// The per group-version document: every item path with GET/PUT/PATCH/DELETE, each
/// PATCH declaring its group-version-kind and the `fieldValidation` parameter. Schemas
/// are open objects for now (the server validates).
pub(crate) fn openapi_gv(path: &str) -> Option<Value> {
    let group = if path == "api/v1" {
        ""
    } else {
        path.strip_prefix("apis/")?.strip_suffix("/v1")?
    };
    if !group.is_empty() && !GROUPS.contains(&group) {
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
    for rt in RESOURCES.iter().filter(|r| r.group == group) {
        let gvk = json!({"group": rt.group, "version": rt.version, "kind": rt.kind});
        let base = if rt.namespaced {
            format!(
                "/{}/namespaces/{{namespace}}/{}",
                gv_path(group),
                rt.resource
            )
        } else {
            format!("/{}/{}", gv_path(group), rt.resource)
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
        schemas.insert(
            schema_name,
            json!({
                "type": "object",
                "x-kubernetes-group-version-kind": [gvk],
            }),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::KUBERNETES_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_documents() {
        let l = resource_list("", "v1");
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
            api_group_list()["groups"].as_array().unwrap().len(),
            GROUPS.len()
        );
        assert!(wants_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
        ));
        assert!(!wants_aggregated("application/json"));
        let idx = openapi_index();
        assert!(
            idx["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1")
        );
        let doc = openapi_gv("apis/apps/v1").unwrap();
        let patch =
            &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(openapi_gv("apis/nope/v1").is_none());
    }
}
