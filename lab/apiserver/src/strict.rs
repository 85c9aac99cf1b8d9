//! `fieldValidation=Strict`: unknown fields are refused, as kube-apiserver's strict
//! decoding does. The typed structs of `k8s-openapi` are the schema: the object is
//! decoded into its kind's struct and encoded again, and every field of the request that
//! did not survive the round trip is unknown.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use k8s_openapi::api::{apps, coordination, core, discovery, networking, policy, rbac, scheduling};

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(v.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

/// The object as its typed struct sees it, or `None` when the kind is not known or the
/// object does not decode (type errors are left to validation; decoding is stricter than
/// Go's in places, e.g. a bare number for a Quantity, so it must not refuse on its own).
fn typed(group: &str, kind: &str, v: &Value) -> Option<Value> {
    if group == "admissionregistration.k8s.io" {
        use k8s_openapi::api::admissionregistration::v1 as ar;
        return match kind {
            "MutatingWebhookConfiguration" => round_trip::<ar::MutatingWebhookConfiguration>(v),
            "ValidatingWebhookConfiguration" => round_trip::<ar::ValidatingWebhookConfiguration>(v),
            _ => None,
        };
    }
    if group == "events.k8s.io" {
        return round_trip::<k8s_openapi::api::events::v1::Event>(v);
    }
    match kind {
        "Namespace" => round_trip::<core::v1::Namespace>(v),
        "Node" => round_trip::<core::v1::Node>(v),
        "Pod" => round_trip::<core::v1::Pod>(v),
        "Service" => round_trip::<core::v1::Service>(v),
        "Endpoints" => round_trip::<core::v1::Endpoints>(v),
        "ConfigMap" => round_trip::<core::v1::ConfigMap>(v),
        "Secret" => round_trip::<core::v1::Secret>(v),
        "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(v),
        "Event" => round_trip::<core::v1::Event>(v),
        "Deployment" => round_trip::<apps::v1::Deployment>(v),
        "ReplicaSet" => round_trip::<apps::v1::ReplicaSet>(v),
        "StatefulSet" => round_trip::<apps::v1::StatefulSet>(v),
        "DaemonSet" => round_trip::<apps::v1::DaemonSet>(v),
        "EndpointSlice" => round_trip::<discovery::v1::EndpointSlice>(v),
        "Ingress" => round_trip::<networking::v1::Ingress>(v),
        "NetworkPolicy" => round_trip::<networking::v1::NetworkPolicy>(v),
        "Lease" => round_trip::<coordination::v1::Lease>(v),
        "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(v),
        "PriorityClass" => round_trip::<scheduling::v1::PriorityClass>(v),
        "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(v),
        "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(v),
        "Role" => round_trip::<rbac::v1::Role>(v),
        "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(v),
        _ => None,
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn walk(path: &str, input: &Value, typed: &Value, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(tv) => walk(&p, v, tv, out),
                    None if is_empty(v) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (v, tv)) in a.iter().zip(b).enumerate() {
                walk(&format!("{path}[{i}]"), v, tv, out);
            }
        }
        _ => {}
    }
}

/// The unknown fields of `obj` (paths like `spec.ports[0].portz`), empty when all are
/// known or the kind cannot be checked.
pub(crate) fn unknown_fields(group: &str, kind: &str, obj: &Value) -> Vec<String> {
    let Some(t) = typed(group, kind, obj) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    walk("", obj, &t, &mut out);
    out
}

/// kube-apiserver's message for them.
pub(crate) fn message(fields: &[String]) -> String {
    let parts: Vec<String> = fields
        .iter()
        .map(|f| format!("unknown field \"{f}\""))
        .collect();
    format!("strict decoding error: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_unknown_fields_only() {
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"any": "label"}, "annotations": {}},
            "spec": {"ports": [{"port": 80, "portz": 1, "targetPort": "http"}], "selector": {"app": "web"}, "typo": true}});
        assert_eq!(
            unknown_fields("", "Service", &svc),
            ["spec.ports[0].portz", "spec.typo"]
        );
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        assert!(unknown_fields("", "ConfigMap", &ok).is_empty());
        // Objects that do not decode are left to validation.
        let bad = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": "no"}});
        assert!(unknown_fields("", "Service", &bad).is_empty());
        assert_eq!(
            message(&["spec.typo".into()]),
            "strict decoding error: unknown field \"spec.typo\""
        );
    }
}
