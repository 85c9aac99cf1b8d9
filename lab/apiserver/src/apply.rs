//! Server-side apply (`application/apply-patch+yaml`, as `kubectl apply --server-side`
//! and kube-rs's `Patch::Apply` send it), on field sets in the `FieldsV1` format of
//! `metadata.managedFields`: `{"f:spec": {"f:ports": {"k:{\"port\":80}": {".": {}, ...}}}}`.
//!
//! The applied configuration is merged into the live object like a strategic merge patch
//! (lists by their merge keys); fields this manager applied before and no longer applies
//! are removed unless another manager owns them; a field another manager owns with a
//! different value is a conflict (409) unless `force=true`, which takes it over.

use serde_json::{Map, Value, json};

use crate::patch::merge_key;

/// One step into an object: `f:name` (a field) or `k:{...}` (a list item by its key).
type Path = Vec<String>;

/// Server-owned fields that no manager owns.
fn skip_top(path: &str, k: &str) -> bool {
    match path {
        "" => matches!(k, "apiVersion" | "kind"),
        "metadata" => matches!(
            k,
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "managedFields"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
        ),
        _ => false,
    }
}

/// The field set of an applied configuration.
pub(crate) fn field_set(config: &Value) -> Value {
    build(config, "")
}

fn build(v: &Value, path: &str) -> Value {
    let mut out = Map::new();
    if let Value::Object(m) = v {
        for (k, c) in m {
            if skip_top(path, k) {
                continue;
            }
            let sub = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            let node = match c {
                // An object whose fields are all server-owned (`metadata: {name: x}`)
                // says nothing about ownership.
                Value::Object(inner)
                    if !inner.is_empty()
                        && build(c, &sub).as_object().is_some_and(Map::is_empty) =>
                {
                    continue;
                }
                Value::Object(_) => build(c, &sub),
                Value::Array(items) => match list_key(path, k, items) {
                    Some(mk) => {
                        let mut m = Map::new();
                        for item in items {
                            let mut child = build(item, &sub);
                            child["."] = json!({});
                            m.insert(item_key(mk, item), child);
                        }
                        Value::Object(m)
                    }
                    None => json!({}),
                },
                _ => json!({}),
            };
            out.insert(format!("f:{k}"), node);
        }
    }
    Value::Object(out)
}

fn list_key(path: &str, field: &str, items: &[Value]) -> Option<&'static str> {
    merge_key(path, field).filter(|mk| items.iter().all(|i| i.get(mk).is_some()))
}

/// The field-set key of a list item; ports include their protocol, as kube-apiserver's
/// list-map keys (`port`, `protocol`) do.
fn item_key(mk: &str, item: &Value) -> String {
    if mk == "port" || mk == "containerPort" {
        let protocol = crate::patch::protocol(item);
        return format!("k:{}", json!({ mk: item[mk], "protocol": protocol }));
    }
    format!("k:{}", json!({ mk: item[mk] }))
}

/// Every leaf (a node without children other than the `.` marker) of a field set.
fn leaves(set: &Value, prefix: &mut Path, out: &mut Vec<Path>) {
    let Some(m) = set.as_object() else { return };
    let children: Vec<_> = m.iter().filter(|(k, _)| *k != ".").collect();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    for (k, v) in children {
        prefix.push(k.clone());
        leaves(v, prefix, out);
        prefix.pop();
    }
}

/// Nodes of `prev` that are not in `next` (whole subtrees).
fn removed(prev: &Value, next: &Value, prefix: &mut Path, out: &mut Vec<Path>) {
    let Some(p) = prev.as_object() else { return };
    for (k, pv) in p {
        if k == "." {
            continue;
        }
        prefix.push(k.clone());
        match next.get(k) {
            None => out.push(prefix.clone()),
            Some(nv) => removed(pv, nv, prefix, out),
        }
        prefix.pop();
    }
}

fn contains(set: &Value, path: &[String]) -> bool {
    let mut cur = set;
    for step in path {
        match cur.get(step) {
            Some(n) => cur = n,
            None => return false,
        }
    }
    true
}

fn remove_from_set(set: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = set;
    for step in parents {
        match cur.get_mut(step) {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

fn step_matches(step: &str, item: &Value) -> bool {
    let Some(key) = step.strip_prefix("k:") else {
        return false;
    };
    let Ok(Value::Object(want)) = serde_json::from_str::<Value>(key) else {
        return false;
    };
    want.iter().all(|(k, v)| {
        item.get(k) == Some(v) || (k == "protocol" && crate::patch::protocol(item) == v)
    })
}

fn get_at<'a>(obj: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = if let Some(f) = step.strip_prefix("f:") {
            cur.get(f)?
        } else {
            cur.as_array()?.iter().find(|i| step_matches(step, i))?
        };
    }
    Some(cur)
}

fn remove_at(obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = obj;
    for step in parents {
        let next = if let Some(f) = step.strip_prefix("f:") {
            cur.get_mut(f)
        } else {
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|i| step_matches(step, i)))
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = cur.as_object_mut() {
            m.remove(f);
        }
    } else if let Some(a) = cur.as_array_mut() {
        a.retain(|i| !step_matches(last, i));
    }
}

/// `.spec.ports[port=80].name`, as kube-apiserver prints a conflicting field.
fn display(path: &[String]) -> String {
    let mut s = String::new();
    for step in path {
        if let Some(f) = step.strip_prefix("f:") {
            s.push('.');
            s.push_str(f);
        } else if let Some(k) = step.strip_prefix("k:") {
            let fields: Vec<String> = serde_json::from_str::<Map<String, Value>>(k)
                .map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect())
                .unwrap_or_default();
            s.push_str(&format!("[{}]", fields.join(",")));
        }
    }
    s
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conflict {
    pub(crate) manager: String,
    pub(crate) field: String,
    path: Path,
}

/// The result of applying: the merged object (managedFields updated) or the conflicts.
pub(crate) fn apply(
    live: &Value,
    config: &Value,
    manager: &str,
    api_version: &str,
    now: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let set = field_set(config);
    let mut managed: Vec<Value> = live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mine = |e: &Value| e["manager"] == manager && e["operation"] == "Apply";

    let mut new_leaves = Vec::new();
    leaves(&set, &mut Vec::new(), &mut new_leaves);
    let mut conflicts = Vec::new();
    for e in managed.iter().filter(|e| !mine(e)) {
        for leaf in &new_leaves {
            if contains(&e["fieldsV1"], leaf) && get_at(live, leaf) != get_at(config, leaf) {
                conflicts.push(Conflict {
                    manager: e["manager"].as_str().unwrap_or("").to_string(),
                    field: display(leaf),
                    path: leaf.clone(),
                });
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(conflicts);
    }
    // Forced: the others lose the fields taken over.
    for c in &conflicts {
        for e in managed
            .iter_mut()
            .filter(|e| e["manager"] == c.manager.as_str())
        {
            remove_from_set(&mut e["fieldsV1"], &c.path);
        }
    }

    let mut merged = crate::patch::merge_objects(live.clone(), config);
    let prev = managed
        .iter()
        .find(|e| mine(e))
        .map(|e| e["fieldsV1"].clone())
        .unwrap_or(json!({}));
    let mut gone = Vec::new();
    removed(&prev, &set, &mut Vec::new(), &mut gone);
    for path in gone {
        let owned_by_others = managed
            .iter()
            .filter(|e| !mine(e))
            .any(|e| contains(&e["fieldsV1"], &path));
        if !owned_by_others {
            remove_at(&mut merged, &path);
        }
    }
    managed.retain(|e| !mine(e));
    managed.push(json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": now,
        "fieldsType": "FieldsV1",
        "fieldsV1": set,
    }));
    merged["metadata"]["managedFields"] = Value::Array(managed);
    Ok(merged)
}

/// kube-apiserver's conflict message.
pub(crate) fn conflict_message(conflicts: &[Conflict], api_version: &str) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with \"{}\" using {api_version}: {}",
            c.manager, c.field
        );
    }
    let mut by_manager: Vec<(&str, Vec<&str>)> = Vec::new();
    for c in conflicts {
        match by_manager.iter_mut().find(|(m, _)| *m == c.manager) {
            Some((_, fields)) => fields.push(&c.field),
            None => by_manager.push((&c.manager, vec![&c.field])),
        }
    }
    let groups: Vec<String> = by_manager
        .iter()
        .map(|(m, fields)| {
            let list: Vec<String> = fields.iter().map(|f| format!("- {f}")).collect();
            format!(
                "conflicts with \"{m}\" using {api_version}:\n{}",
                list.join("\n")
            )
        })
        .collect();
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        groups.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "labels": {"a": "1"}},
            "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}], "type": "ClusterIP"}})
    }

    #[test]
    fn ports_of_one_number_and_two_protocols_stay_two() {
        let dns = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dns"},
            "spec": {"ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "metrics", "port": 9153}]}});
        let out = apply(&json!({}), &dns, "m", "v1", "now", false).unwrap();
        assert_eq!(out["spec"]["ports"], dns["spec"]["ports"]);
        let set = field_set(&dns);
        assert_eq!(set["f:spec"]["f:ports"].as_object().unwrap().len(), 3);
        // Re-applying without the UDP port removes that one only.
        let mut tcp_only = dns.clone();
        tcp_only["spec"]["ports"].as_array_mut().unwrap().remove(0);
        let again = apply(&out, &tcp_only, "m", "v1", "now", false).unwrap();
        assert_eq!(again["spec"]["ports"], tcp_only["spec"]["ports"]);
    }

    #[test]
    fn field_sets_use_merge_keys() {
        let set = field_set(&live());
        assert_eq!(
            set,
            json!({"f:metadata": {"f:labels": {"f:a": {}}},
                "f:spec": {"f:ports": {
                    "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:name": {}},
                    "k:{\"port\":443,\"protocol\":\"TCP\"}": {".": {}, "f:port": {}, "f:name": {}}},
                "f:type": {}}})
        );
        assert_eq!(
            display(&[
                "f:spec".into(),
                "f:ports".into(),
                "k:{\"port\":80}".into(),
                "f:name".into()
            ]),
            ".spec.ports[port=80].name"
        );
    }

    #[test]
    fn reapply_removes_dropped_fields_and_keeps_others() {
        let first = apply(
            &json!({"metadata": {"name": "web"}}),
            &live(),
            "me",
            "v1",
            "t",
            false,
        )
        .unwrap();
        assert_eq!(first["metadata"]["managedFields"][0]["manager"], "me");
        // Someone else adds a label (not through apply).
        let mut edited = first.clone();
        edited["metadata"]["labels"]["b"] = json!("2");
        let mut config = live();
        config["metadata"]["labels"] = json!({});
        config["spec"]["ports"] = json!([{"port": 80, "name": "http"}]);
        let second = apply(&edited, &config, "me", "v1", "t", false).unwrap();
        assert_eq!(second["metadata"]["labels"], json!({"b": "2"}));
        assert_eq!(
            second["spec"]["ports"],
            json!([{"port": 80, "name": "http"}])
        );
    }

    #[test]
    fn conflicts_unless_forced() {
        let first = apply(
            &json!({"metadata": {"name": "web"}}),
            &live(),
            "one",
            "v1",
            "t",
            false,
        )
        .unwrap();
        let mut config = live();
        config["spec"]["type"] = json!("NodePort");
        let c = apply(&first, &config, "two", "v1", "t", false).unwrap_err();
        assert_eq!(c.len(), 1);
        assert_eq!(
            conflict_message(&c, "v1"),
            "Apply failed with 1 conflict: conflict with \"one\" using v1: .spec.type"
        );
        // Same values are shared, not conflicts.
        assert!(apply(&first, &live(), "two", "v1", "t", false).is_ok());
        let forced = apply(&first, &config, "two", "v1", "t", true).unwrap();
        assert_eq!(forced["spec"]["type"], "NodePort");
        let one = forced["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == "one")
            .unwrap();
        assert!(one["fieldsV1"]["f:spec"].get("f:type").is_none());
    }
}
