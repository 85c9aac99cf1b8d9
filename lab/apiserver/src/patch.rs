//! PATCH bodies: JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge
//! patch for built-in kinds. No maintained Rust crate does strategic merge, so this
//! module implements the part kubectl sends: lists merged by their merge keys,
//! `$patch: delete|replace|merge`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`,
//! and `$setElementOrder/<field>` (accepted; element order follows the patch).

use serde_json::{Map, Value};

use crate::error::Status;

/// The patch formats this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PatchType {
    Json,
    Merge,
    Strategic,
}

impl PatchType {
    pub(crate) fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` (raw body) of type `pt` to `doc`.
pub(crate) fn apply(doc: &Value, patch: &[u8], pt: PatchType) -> Result<Value, Status> {
    let p: Value = serde_json::from_slice(patch)
        .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
    let mut out = doc.clone();
    match pt {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_value(p)
                .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
            json_patch::patch(&mut out, &ops).map_err(|e| {
                Status::new(
                    422,
                    "Invalid",
                    format!("the server rejected our request due to an error in our request: {e}"),
                )
            })?;
        }
        PatchType::Merge => {
            if !p.is_object() {
                return Err(Status::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            json_patch::merge(&mut out, &p);
        }
        PatchType::Strategic => {
            let Value::Object(p) = p else {
                return Err(Status::bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object",
                ));
            };
            out = strategic_merge(out, &p, "")?;
        }
    }
    Ok(out)
}

/// Merges an applied configuration into `doc` like a strategic merge patch without
/// directives (server-side apply's merge).
pub(crate) fn merge_objects(doc: Value, config: &Value) -> Value {
    match config {
        Value::Object(m) => strategic_merge(doc.clone(), m, "").unwrap_or(doc),
        _ => doc,
    }
}

/// The merge key of list `field` (reached through `path`), when it merges by key.
/// From the `patchMergeKey` tags of the built-in types.
pub(crate) fn merge_key(path: &str, field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "readinessGates"
        | "resourceClaims" => match field {
            "readinessGates" => "conditionType",
            _ => "name",
        },
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "topologySpreadConstraints" => "topologyKey",
        // Service ports merge by port, container ports by containerPort; others are atomic.
        "ports" if path == "spec" => "port",
        "ports" if path.ends_with("ontainers") => "containerPort",
        _ => return None,
    })
}

/// Whether two items of list `field` (merging by `key`) are the same item. Ports are
/// keyed by number *and* protocol, as kube-apiserver's list-map keys say: 53/UDP and
/// 53/TCP of a DNS Service are two ports (the `port` patchMergeKey alone merged them).
fn same_item(field: &str, key: &str, a: &Value, b: &Value) -> bool {
    a.get(key) == b.get(key) && (field != "ports" || protocol(a) == protocol(b))
}

/// A port's protocol, TCP when unset (the API's default).
pub(crate) fn protocol(item: &Value) -> &str {
    item.get("protocol")
        .and_then(Value::as_str)
        .unwrap_or("TCP")
}

/// Primitive lists that merge as sets (`patchStrategy: merge` without a key).
fn merges_primitives(field: &str) -> bool {
    field == "finalizers"
}

fn strategic_merge(doc: Value, patch: &Map<String, Value>, path: &str) -> Result<Value, Status> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = patch.clone();
            p.remove("$patch");
            return Ok(Value::Object(strip_directives(p)));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => {
            return Err(Status::bad_request(format!(
                "unknown patch type: {other} in map"
            )));
        }
    }
    let mut doc = match doc {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let retain: Option<Vec<String>> = patch.get("$retainKeys").and_then(Value::as_array).map(|a| {
        a.iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect()
    });
    for (k, pv) in patch {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(have)), Some(del)) = (doc.get_mut(field), pv.as_array()) {
                have.retain(|v| !del.contains(v));
            }
            continue;
        }
        let sub = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match pv {
            Value::Null => {
                doc.remove(k);
            }
            Value::Object(pm) => {
                let cur = doc.remove(k).unwrap_or(Value::Null);
                let merged = strategic_merge(cur, pm, &sub)?;
                if !merged.is_null() {
                    doc.insert(k.clone(), merged);
                }
            }
            Value::Array(pl) => {
                let cur = doc.remove(k);
                let merged = merge_list(cur, pl, path, k)?;
                doc.insert(k.clone(), merged);
            }
            other => {
                doc.insert(k.clone(), other.clone());
            }
        }
    }
    if let Some(keep) = retain {
        doc.retain(|k, _| keep.contains(k));
    }
    Ok(Value::Object(doc))
}

fn merge_list(
    cur: Option<Value>,
    patch: &[Value],
    path: &str,
    field: &str,
) -> Result<Value, Status> {
    let cur = match cur {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    // `[{"$patch": "replace"}, ...]` replaces the whole list.
    if patch
        .iter()
        .any(|v| v.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let items = patch.iter().filter(|v| v.get("$patch").is_none()).cloned();
        return Ok(Value::Array(items.map(strip_value).collect()));
    }
    if merges_primitives(field) {
        let mut out = cur;
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(Value::Array(out));
    }
    let sample = patch.first().or(cur.first());
    let Some(key) = merge_key(path, field).filter(|_| sample.is_some_and(Value::is_object)) else {
        // Atomic list: the patch's list wins.
        return Ok(Value::Array(
            patch.iter().cloned().map(strip_value).collect(),
        ));
    };
    let mut out = cur;
    for pv in patch {
        let Some(pm) = pv.as_object() else {
            return Err(Status::bad_request(format!(
                "{field}: expected a list of objects in the patch"
            )));
        };
        let pv = Value::Object(pm.clone());
        let pos = out.iter().position(|o| same_item(field, key, o, &pv));
        if pm.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = pos {
                out.remove(i);
            }
            continue;
        }
        let sub = format!("{path}.{field}");
        match pos {
            Some(i) => {
                let merged = strategic_merge(out[i].take(), pm, &sub)?;
                out[i] = merged;
            }
            None => out.push(strategic_merge(Value::Null, pm, &sub)?),
        }
    }
    Ok(Value::Array(out))
}

fn strip_directives(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k, strip_value(v)))
        .collect()
}

fn strip_value(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(strip_directives(m)),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_value).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(doc: Value, patch: Value) -> Value {
        apply(&doc, patch.to_string().as_bytes(), PatchType::Strategic).unwrap()
    }

    #[test]
    fn merge_patch_replaces_lists_and_deletes_nulls() {
        let doc = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"ports": [{"port": 80}]}});
        let p = json!({"metadata": {"labels": {"a": null, "c": "3"}}, "spec": {"ports": [{"port": 81}]}});
        let out = apply(&doc, p.to_string().as_bytes(), PatchType::Merge).unwrap();
        assert_eq!(
            out,
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"ports": [{"port": 81}]}})
        );
    }

    #[test]
    fn json_patch_ops() {
        let doc = json!({"metadata": {"labels": {"a": "1"}}});
        let p = json!([{"op": "add", "path": "/metadata/labels/b", "value": "2"}, {"op": "remove", "path": "/metadata/labels/a"}]);
        let out = apply(&doc, p.to_string().as_bytes(), PatchType::Json).unwrap();
        assert_eq!(out, json!({"metadata": {"labels": {"b": "2"}}}));
        let bad = json!([{"op": "remove", "path": "/nope"}]);
        assert_eq!(
            apply(&doc, bad.to_string().as_bytes(), PatchType::Json)
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(
            apply(&doc, b"{nope", PatchType::Json).unwrap_err().code,
            400
        );
    }

    #[test]
    fn strategic_merges_containers_by_name_and_ports_by_key() {
        let doc = json!({"spec": {"containers": [
            {"name": "a", "image": "nginx", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "b", "image": "busybox"}
        ]}});
        let out = smp(
            doc,
            json!({"spec": {"containers": [
                {"name": "a", "image": "nginx:2", "ports": [{"containerPort": 443}]}
            ]}}),
        );
        let cs = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["image"], "nginx:2");
        assert_eq!(cs[0]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(cs[1]["image"], "busybox");
    }

    #[test]
    fn strategic_service_ports_merge_by_port_and_delete_directive() {
        let doc = json!({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}});
        let out = smp(
            doc,
            json!({"spec": {
                "$setElementOrder/ports": [{"port": 80}],
                "ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "$patch": "delete"}]
            }}),
        );
        assert_eq!(
            out,
            json!({"spec": {"ports": [{"port": 80, "name": "http", "targetPort": 8080}]}})
        );
    }

    #[test]
    fn strategic_directives() {
        let doc = json!({"metadata": {"finalizers": ["a"], "labels": {"x": "1"}}, "spec": {"selector": {"a": "1"}}});
        let out = smp(
            doc,
            json!({
                "metadata": {"finalizers": ["b"], "$deleteFromPrimitiveList/finalizers": ["a"]},
                "spec": {"selector": {"$patch": "replace", "b": "2"}}
            }),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        assert_eq!(out["spec"]["selector"], json!({"b": "2"}));
        // Atomic lists (Endpoints subsets) are replaced.
        let ep = json!({"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]});
        let out = smp(
            ep,
            json!({"subsets": [{"addresses": [{"ip": "10.10.10.10"}]}]}),
        );
        assert_eq!(
            out["subsets"],
            json!([{"addresses": [{"ip": "10.10.10.10"}]}])
        );
    }
}
