//! Custom resources checked against their CRD's `openAPIV3Schema`, as
//! apiextensions-apiserver does: unknown fields pruned (unless
//! `x-kubernetes-preserve-unknown-fields`), nulls of non-nullable fields without a default
//! dropped, `default`s applied, then structural validation with kube-apiserver's
//! messages (type, required, enum, pattern, lengths, bounds, item and property counts, int-or-string,
//! `allOf`/`anyOf`/`oneOf`, the string `format`s apiextensions checks, see `formats.rs`).
//! CEL rules (`x-kubernetes-validations`) are not evaluated.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use serde_json::{Map, Value, json};

use crate::error::Cause;

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn flag(schema: &Value, name: &str) -> bool {
    schema[name] == json!(true)
}

/// Removes fields the schema does not know; returns their paths (for
/// `fieldValidation=Strict`). The root (and embedded resources) keep `apiVersion`,
/// `kind` and `metadata`.
pub(crate) fn prune(
    schema: &Value,
    v: &mut Value,
    path: &str,
    root: bool,
    unknown: &mut Vec<String>,
) {
    match v {
        Value::Object(map) => {
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                let here = join(path, &k);
                if root && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    // ObjectMeta is the server's; a schema's metadata constraints only validate.
                    continue;
                }
                match (props.and_then(|p| p.get(&k)), additional) {
                    (Some(s), _) => {
                        if let Some(child) = map.get_mut(&k) {
                            let embedded = flag(s, "x-kubernetes-embedded-resource");
                            prune(s, child, &here, embedded, unknown);
                        }
                    }
                    (None, Some(s)) => {
                        if let Some(child) = map.get_mut(&k) {
                            prune(s, child, &here, false, unknown);
                        }
                    }
                    (None, None) if preserve => {}
                    (None, None) => {
                        map.remove(&k);
                        unknown.push(here);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter_mut().enumerate() {
                    prune(
                        s,
                        item,
                        &format!("{path}[{i}]"),
                        flag(s, "x-kubernetes-embedded-resource"),
                        unknown,
                    );
                }
            }
        }
        _ => {}
    }
}

/// Fills `default`s top-down (a default object gets the defaults inside it too) and drops
/// nulls of non-nullable fields that have no default.
pub(crate) fn apply_defaults(schema: &Value, v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    let missing = match map.get(k) {
                        None => true,
                        Some(Value::Null) => !flag(s, "nullable"),
                        Some(_) => false,
                    };
                    if missing {
                        match s.get("default") {
                            Some(d) => {
                                map.insert(k.clone(), d.clone());
                            }
                            None => {
                                if map.get(k).is_some_and(Value::is_null) {
                                    map.remove(k);
                                }
                            }
                        }
                    }
                    if let Some(child) = map.get_mut(k) {
                        apply_defaults(s, child);
                    }
                }
            }
            if let Some(s) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for child in map.values_mut() {
                    apply_defaults(s, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for item in items {
                    apply_defaults(s, item);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        "number" => v.is_number(),
        _ => true,
    }
}

/// Compiled `pattern`s, shared by every request (CRD schemas repeat theirs a lot).
fn pattern_matches(pattern: &str, s: &str) -> Option<bool> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<regex::Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    let re = c
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    re.as_ref().map(|re| re.is_match(s))
}

fn invalid(path: &str, v: &Value, detail: String) -> Cause {
    Cause::invalid(path, v, &detail)
}

/// Validates `v` against `schema`, adding a cause per violation.
pub(crate) fn validate(schema: &Value, v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if v.is_null() && flag(schema, "nullable") {
        return;
    }
    let shown = if path.is_empty() { "body" } else { path };
    let int_or_string = flag(schema, "x-kubernetes-int-or-string");
    if int_or_string {
        if !(v.is_string() || v.is_i64() || v.is_u64()) {
            causes.push(invalid(
                path,
                &json!(type_name(v)),
                format!(
                    "{shown} in body must be of type integer,string: \"{}\"",
                    type_name(v)
                ),
            ));
            return;
        }
    } else if let Some(ty) = schema["type"].as_str()
        && !type_ok(ty, v)
    {
        causes.push(invalid(
            path,
            &json!(type_name(v)),
            format!("{shown} in body must be of type {ty}: \"{}\"", type_name(v)),
        ));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let names: Vec<String> = allowed
            .iter()
            .map(|a| {
                a.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| a.to_string())
            })
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        causes.push(Cause::not_supported(path, v, &refs));
    }
    for sub in schema["allOf"].as_array().into_iter().flatten() {
        validate(sub, v, path, causes);
    }
    let passes = |s: &Value| {
        let mut c = Vec::new();
        validate(s, v, path, &mut c);
        c.is_empty()
    };
    if let Some(any) = schema["anyOf"].as_array()
        && !any.iter().any(passes)
    {
        causes.push(invalid(
            path,
            v,
            format!("{shown} in body must validate at least one schema (anyOf)"),
        ));
    }
    if let Some(one) = schema["oneOf"].as_array()
        && one.iter().filter(|s| passes(s)).count() != 1
    {
        causes.push(invalid(
            path,
            v,
            format!("{shown} in body must validate one and only one schema (oneOf)"),
        ));
    }
    if let Some(not) = schema.get("not").filter(|n| n.is_object())
        && passes(not)
    {
        causes.push(invalid(
            path,
            v,
            format!("{shown} in body must not validate the schema (not)"),
        ));
    }
    match v {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                causes.push(Cause::too_long(path, max));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                causes.push(invalid(
                    path,
                    v,
                    format!("{shown} in body should be at least {min} chars long"),
                ));
            }
            if let Some(f) = schema["format"].as_str()
                && crate::formats::valid(f, s) == Some(false)
            {
                causes.push(invalid(
                    path,
                    v,
                    format!("{shown} in body must be of type {f}: {s:?}"),
                ));
            }
            if let Some(p) = schema["pattern"].as_str()
                && pattern_matches(p, s) == Some(false)
            {
                causes.push(invalid(
                    path,
                    v,
                    format!("{shown} in body should match '{p}'"),
                ));
            }
        }
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(0.0);
            let num = |k: &str| schema[k].as_f64();
            let excl = |k: &str| flag(schema, k);
            if let Some(max) = num("maximum") {
                if excl("exclusiveMaximum") && f >= max {
                    causes.push(invalid(
                        path,
                        v,
                        format!("{shown} in body should be less than {}", schema["maximum"]),
                    ));
                } else if f > max {
                    causes.push(invalid(
                        path,
                        v,
                        format!(
                            "{shown} in body should be less than or equal to {}",
                            schema["maximum"]
                        ),
                    ));
                }
            }
            if let Some(min) = num("minimum") {
                if excl("exclusiveMinimum") && f <= min {
                    causes.push(invalid(
                        path,
                        v,
                        format!(
                            "{shown} in body should be greater than {}",
                            schema["minimum"]
                        ),
                    ));
                } else if f < min {
                    causes.push(invalid(
                        path,
                        v,
                        format!(
                            "{shown} in body should be greater than or equal to {}",
                            schema["minimum"]
                        ),
                    ));
                }
            }
        }
        Value::Array(items) => {
            if let Some(max) = schema["maxItems"].as_u64()
                && items.len() as u64 > max
            {
                causes.push(Cause::too_many(path, items.len(), max));
            }
            if let Some(min) = schema["minItems"].as_u64()
                && (items.len() as u64) < min
            {
                causes.push(invalid(
                    path,
                    &json!(items.len()),
                    format!("{shown} in body should have at least {min} items"),
                ));
            }
            if let Some(s) = schema.get("items").filter(|s| s.is_object()) {
                for (i, item) in items.iter().enumerate() {
                    validate(s, item, &format!("{path}[{i}]"), causes);
                }
            }
            if schema["x-kubernetes-list-type"] == "set" {
                for (i, item) in items.iter().enumerate() {
                    if items[..i].contains(item) {
                        causes.push(Cause::duplicate(format!("{path}[{i}]"), item));
                    }
                }
            }
        }
        Value::Object(map) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str()
                    && !map.contains_key(r)
                {
                    causes.push(Cause::required(join(path, r), ""));
                }
            }
            if let Some(max) = schema["maxProperties"].as_u64()
                && map.len() as u64 > max
            {
                causes.push(Cause::too_many(path, map.len(), max));
            }
            if let Some(min) = schema["minProperties"].as_u64()
                && (map.len() as u64) < min
            {
                causes.push(invalid(
                    path,
                    &json!(map.len()),
                    format!("{shown} in body should have at least {min} properties"),
                ));
            }
            let props = schema["properties"].as_object();
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in map {
                let here = join(path, k);
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                match (props.and_then(|p| p.get(k)), additional) {
                    (Some(s), _) | (None, Some(s)) => validate(s, child, &here, causes),
                    (None, None) => {}
                }
            }
        }
        _ => {}
    }
}

/// Prunes, defaults and validates a custom resource: the causes of a 422, if any.
pub(crate) fn check(schema: &Value, obj: &mut Value) -> Vec<Cause> {
    let mut unknown = Vec::new();
    prune(schema, obj, "", true, &mut unknown);
    apply_defaults(schema, obj);
    let mut causes = Vec::new();
    validate(schema, obj, "", &mut causes);
    causes
}

/// The fields `fieldValidation=Strict` refuses.
pub(crate) fn unknown_fields(schema: &Value, obj: &Value) -> Vec<String> {
    let mut copy = obj.clone();
    let mut unknown = Vec::new();
    prune(schema, &mut copy, "", true, &mut unknown);
    unknown
}

/// The OpenAPI v3 schema of a custom resource as kube-apiserver publishes it: the CRD's
/// schema with `apiVersion`, `kind` and `metadata` filled in.
pub(crate) fn published(schema: &Value, gvk: &Value) -> Value {
    let mut s = if schema.is_object() {
        schema.clone()
    } else {
        json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
    };
    if !s["properties"].is_object() {
        s["properties"] = Value::Object(Map::new());
    }
    let p = &mut s["properties"];
    p["apiVersion"] = json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."});
    p["kind"] = json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."});
    p["metadata"] =
        json!({"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"});
    s["x-kubernetes-group-version-kind"] = json!([gvk]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["port"], "properties": {
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "mode": {"type": "string", "enum": ["L2", "BGP"], "default": "L2"},
                "name": {"type": "string", "maxLength": 5, "pattern": "^[a-z]+$"},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                "target": {"x-kubernetes-int-or-string": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "opts": {"type": "object", "default": {}, "properties": {
                    "retries": {"type": "integer", "default": 3}}},
            }},
        }})
    }

    #[test]
    fn counts_an_objects_properties_both_ways() {
        // ClusterNetworkPolicy's subject and peers: exactly one field.
        let schema = json!({"type": "object", "properties": {"subject": {
            "type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": {"pods": {"type": "object"}, "namespaces": {"type": "object"}}}}});
        let messages = |v: Value| -> Vec<String> {
            check(&schema, &mut v.clone())
                .iter()
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect()
        };
        assert_eq!(
            messages(json!({"subject": {}})),
            ["subject: Invalid value: 0: subject in body should have at least 1 properties"]
        );
        assert_eq!(
            messages(json!({"subject": {"pods": {}, "namespaces": {}}})),
            ["subject: Too many: 2: must have at most 1 items"]
        );
        assert!(messages(json!({"subject": {"pods": {}}})).is_empty());
    }

    #[test]
    fn prunes_defaults_and_validates() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"port": 80, "bogus": 1, "free": {"any": {"thing": 1}},
                "labels": {"a": "b"}, "target": "http"}, "extra": true});
        assert_eq!(unknown_fields(&schema(), &o), ["extra", "spec.bogus"]);
        assert!(check(&schema(), &mut o).is_empty());
        assert!(o["spec"].get("bogus").is_none() && o.get("extra").is_none());
        assert_eq!(o["spec"]["free"]["any"]["thing"], 1);
        assert_eq!(o["spec"]["mode"], "L2");
        assert_eq!(o["spec"]["opts"]["retries"], 3);

        let mut bad = json!({"spec": {"port": "80", "mode": "X", "name": "ABCDEFG",
            "tags": ["a", "b", "c"], "target": true, "labels": {"a": 1}}});
        let causes = check(&schema(), &mut bad);
        let msgs: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let all = msgs.join("\n");
        for want in [
            "spec.port: Invalid value: \"string\": spec.port in body must be of type integer: \"string\"",
            "spec.mode: Unsupported value: \"X\": supported values: \"L2\", \"BGP\"",
            "spec.name: Too long: may not be more than 5 bytes",
            "spec.name: Invalid value: \"ABCDEFG\": spec.name in body should match '^[a-z]+$'",
            "spec.tags: Too many: 3: must have at most 2 items",
            "spec.target: Invalid value: \"boolean\": spec.target in body must be of type integer,string: \"boolean\"",
            "spec.labels.a: Invalid value: \"integer\": spec.labels.a in body must be of type string: \"integer\"",
        ] {
            assert!(all.contains(want), "missing {want:?} in\n{all}");
        }
        let mut missing = json!({"spec": {"port": 0}});
        let all: Vec<String> = check(&schema(), &mut missing)
            .iter()
            .map(|c| c.message.clone())
            .collect();
        assert!(
            all[0].contains("should be greater than or equal to 1"),
            "{all:?}"
        );
        let mut none = json!({"spec": {}});
        let c = check(&schema(), &mut none);
        assert_eq!(
            (c[0].field.as_str(), c[0].message.as_str()),
            ("spec.port", "Required value")
        );
    }

    /// Gateway API's status address: `IPAddress` with an IP value, or any other type
    /// (`not`), exactly one of the two.
    #[test]
    fn not_and_one_of_as_gateway_addresses_use_them() {
        let schema = json!({"type": "object", "properties": {"a": {"type": "object",
            "oneOf": [
                {"properties": {"type": {"enum": ["IPAddress"]}, "value": {"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}}},
                {"properties": {"type": {"not": {"enum": ["IPAddress"]}}}},
            ],
            "properties": {"type": {"type": "string"}, "value": {"type": "string"}}}}});
        let ok = |a: Value| check(&schema, &mut json!({ "a": a })).is_empty();
        assert!(ok(json!({"type": "IPAddress", "value": "198.18.0.200"})));
        assert!(ok(json!({"type": "Hostname", "value": "lb.example.com"})));
        assert!(!ok(json!({"type": "IPAddress", "value": "lb.example.com"})));
    }
}
