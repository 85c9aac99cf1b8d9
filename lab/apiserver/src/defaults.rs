//! kube-apiserver's defaulting (the `SetDefaults_*` functions of the API groups served
//! here), applied to every write: create, update and each patch type (JSON, merge,
//! strategic, server-side apply), as kube-apiserver defaults every object it decodes.
//! Every default fills only what is missing, so applying it twice changes nothing.
//! Services are defaulted with their allocation (`service.rs`); what admission
//! plugins add to new pods only is in [`pod_admission`].

use serde_json::{Map, Value, json};

use crate::resources::ResourceType;

/// Sets `v[key]` to `d` when it is missing or null.
fn or(v: &mut Value, key: &str, d: Value) {
    if let Some(m) = v.as_object_mut() {
        let e = m.entry(key).or_insert(Value::Null);
        if e.is_null() {
            *e = d;
        }
    }
}

/// The array at `v[key]`, if any, without inserting anything.
fn items<'a>(v: &'a mut Value, key: &str) -> impl Iterator<Item = &'a mut Value> {
    v.get_mut(key)
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// The object at `v[key]`, created when missing (only where kube-apiserver creates it).
fn obj<'a>(v: &'a mut Value, key: &str) -> &'a mut Value {
    or(v, key, Value::Object(Map::new()));
    &mut v[key]
}

/// Fills what the upstream Go types always serialize (fields without `omitempty`,
/// which the OpenAPI schemas list as `required`) and `o` lacks: a missing scalar gets
/// its zero value (0, false, ""; a time stays null, as Go writes a zero time), and a
/// kind's `spec` and `status`, value structs in Go, are present even when empty (a new
/// DaemonSet's status counters read 0). Lists stay as they are (Go writes a nil slice
/// as null). Done to what is stored, after validation, so that a missing value is
/// still refused as missing.
pub(crate) fn zero_values(rt: &ResourceType, o: &mut Value) {
    if rt.custom || !o.is_object() {
        return;
    }
    let schemas = crate::discovery::builtin_schemas();
    let name = crate::discovery::builtin_schema_name(rt.group, rt.version, rt.kind);
    let Some(schema) = schemas.get(&name) else {
        return;
    };
    for part in ["spec", "status"] {
        let is_struct = schema["properties"][part]
            .get("allOf")
            .or_else(|| schema["properties"][part].get("$ref"))
            .is_some();
        if is_struct {
            obj(o, part);
        }
    }
    fill(schemas, schema, o, 0);
}

/// The schema a property names (through `$ref` or `allOf: [{$ref}]`).
fn resolve<'a>(schemas: &'a serde_json::Map<String, Value>, s: &'a Value) -> Option<&'a Value> {
    let r = s
        .get("$ref")
        .or_else(|| s["allOf"].get(0).and_then(|a| a.get("$ref")))
        .and_then(Value::as_str)?;
    schemas.get(r.trim_start_matches("#/components/schemas/"))
}

fn fill(schemas: &serde_json::Map<String, Value>, schema: &Value, v: &mut Value, depth: u8) {
    if depth > 32 {
        return;
    }
    let Some(m) = v.as_object_mut() else { return };
    for req in schema["required"].as_array().into_iter().flatten() {
        let Some(field) = req.as_str() else { continue };
        if m.get(field).is_some_and(|x| !x.is_null()) {
            continue;
        }
        let prop = &schema["properties"][field];
        let zero = match prop["type"].as_str() {
            Some("integer" | "number") => json!(0),
            Some("boolean") => json!(false),
            Some("string") if prop["format"].is_null() => json!(""),
            _ => continue,
        };
        m.insert(field.to_string(), zero);
    }
    for (field, x) in m.iter_mut() {
        let prop = &schema["properties"][field.as_str()];
        if let Some(sub) = resolve(schemas, prop) {
            fill(schemas, sub, x, depth + 1);
        } else if let (Some(items), Some(list)) = (
            prop.get("items").and_then(|i| resolve(schemas, i)),
            x.as_array_mut(),
        ) {
            for item in list {
                fill(schemas, items, item, depth + 1);
            }
        }
    }
}

/// Applies the defaults of `rt`'s kind to `o`.
pub(crate) fn apply(rt: &ResourceType, o: &mut Value) {
    if rt.custom || !o.is_object() {
        return;
    }
    match (rt.group, rt.kind) {
        ("", "Pod") => {
            let spec = obj(o, "spec");
            pod_spec(spec);
            // SetDefaults_Pod: only pods, not templates.
            or(spec, "enableServiceLinks", json!(true));
            for key in ["containers", "initContainers"] {
                items(spec, key).for_each(requests_from_limits);
            }
        }
        ("", "Secret") => or(o, "type", json!("Opaque")),
        (crate::rbac::RBAC_GROUP, kind) => crate::rbac::objects::defaults(kind, o),
        ("", "Endpoints") => {
            for s in items(o, "subsets") {
                for p in items(s, "ports") {
                    or(p, "protocol", json!("TCP"));
                }
            }
        }
        ("", "Node") => {
            // SetDefaults_NodeStatus: allocatable is the capacity unless said otherwise.
            if let Some(st) = o.get_mut("status").filter(|s| s.is_object())
                && st["allocatable"].is_null()
                && st["capacity"].is_object()
            {
                st["allocatable"] = st["capacity"].clone();
            }
        }
        ("", "Service") if o["spec"]["sessionAffinity"] == "ClientIP" => {
            let cfg = obj(obj(&mut o["spec"], "sessionAffinityConfig"), "clientIP");
            or(cfg, "timeoutSeconds", json!(10800));
        }
        ("apps", kind) => workload(kind, obj(o, "spec")),
        ("", "ReplicationController") => {
            let spec = obj(o, "spec");
            or(spec, "replicas", json!(1));
            // SetDefaults_ReplicationController: selector and labels from the template.
            let labels = spec["template"]["metadata"]["labels"].clone();
            if labels.as_object().is_some_and(|l| !l.is_empty()) {
                if spec["selector"].as_object().is_none_or(|s| s.is_empty()) {
                    spec["selector"] = labels.clone();
                }
                let meta = obj(o, "metadata");
                if meta["labels"].as_object().is_none_or(|l| l.is_empty()) {
                    meta["labels"] = labels;
                }
            }
            if let Some(t) = o["spec"].get_mut("template").filter(|t| t.is_object()) {
                pod_spec(obj(t, "spec"));
            }
        }
        ("", "PersistentVolume") => {
            let spec = obj(o, "spec");
            or(spec, "persistentVolumeReclaimPolicy", json!("Retain"));
            or(spec, "volumeMode", json!("Filesystem"));
        }
        ("", "PersistentVolumeClaim") => or(obj(o, "spec"), "volumeMode", json!("Filesystem")),
        ("batch", "Job") => job(obj(o, "spec")),
        ("batch", "CronJob") => {
            let spec = obj(o, "spec");
            or(spec, "concurrencyPolicy", json!("Allow"));
            or(spec, "suspend", json!(false));
            or(spec, "successfulJobsHistoryLimit", json!(3));
            or(spec, "failedJobsHistoryLimit", json!(1));
            let template = obj(obj(obj(spec, "jobTemplate"), "spec"), "template");
            pod_spec(obj(template, "spec"));
        }
        ("storage.k8s.io", "StorageClass") => {
            or(o, "reclaimPolicy", json!("Delete"));
            or(o, "volumeBindingMode", json!("Immediate"));
        }
        ("storage.k8s.io", "CSIDriver") => {
            let spec = obj(o, "spec");
            or(spec, "attachRequired", json!(true));
            or(spec, "podInfoOnMount", json!(false));
            or(spec, "requiresRepublish", json!(false));
            or(spec, "storageCapacity", json!(false));
            or(spec, "seLinuxMount", json!(false));
            or(spec, "fsGroupPolicy", json!("ReadWriteOnceWithFSType"));
            or(spec, "volumeLifecycleModes", json!(["Persistent"]));
        }
        ("discovery.k8s.io", "EndpointSlice") => {
            for p in items(o, "ports") {
                or(p, "name", json!(""));
                or(p, "protocol", json!("TCP"));
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            let spec = obj(o, "spec");
            for key in ["ingress", "egress"] {
                for rule in items(spec, key) {
                    for p in items(rule, "ports") {
                        or(p, "protocol", json!("TCP"));
                    }
                }
            }
            if spec["policyTypes"].as_array().is_none_or(|a| a.is_empty()) {
                let egress = spec["egress"].as_array().is_some_and(|a| !a.is_empty());
                spec["policyTypes"] = if egress {
                    json!(["Ingress", "Egress"])
                } else {
                    json!(["Ingress"])
                };
            }
        }
        ("networking.k8s.io", "IngressClass") => {
            if let Some(p) = o["spec"].get_mut("parameters").filter(|p| p.is_object()) {
                or(p, "scope", json!("Cluster"));
            }
        }
        (crate::webhook::config::GROUP, kind) => crate::webhook::config::defaults(kind, o),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let spec = obj(o, "spec");
            or(spec, "conversion", json!({"strategy": "None"}));
            if let Some(svc) = spec["conversion"]
                .get_mut("webhook")
                .and_then(|w| w.get_mut("clientConfig"))
                .and_then(|c| c.get_mut("service"))
                .filter(|s| s.is_object())
            {
                or(svc, "port", json!(443));
            }
            let names = obj(spec, "names");
            if let Some(kind) = names["kind"].as_str().map(str::to_string) {
                or(names, "singular", json!(kind.to_lowercase()));
                or(names, "listKind", json!(format!("{kind}List")));
            }
        }
        _ => {}
    }
}

/// SetDefaults_Job.
fn job(spec: &mut Value) {
    if spec["completions"].is_null() && spec["parallelism"].is_null() {
        spec["completions"] = json!(1);
    }
    or(spec, "parallelism", json!(1));
    let per_index = !spec["backoffLimitPerIndex"].is_null();
    or(
        spec,
        "backoffLimit",
        json!(if per_index { i32::MAX } else { 6 }),
    );
    or(spec, "completionMode", json!("NonIndexed"));
    or(spec, "suspend", json!(false));
    let failed_policy = !spec["podFailurePolicy"].is_null();
    or(
        spec,
        "podReplacementPolicy",
        json!(if failed_policy {
            "Failed"
        } else {
            "TerminatingOrFailed"
        }),
    );
    pod_spec(obj(obj(spec, "template"), "spec"));
}

fn workload(kind: &str, spec: &mut Value) {
    if kind != "DaemonSet" {
        or(spec, "replicas", json!(1));
    }
    if kind != "ReplicaSet" {
        or(spec, "revisionHistoryLimit", json!(10));
    }
    match kind {
        "Deployment" => {
            or(spec, "progressDeadlineSeconds", json!(600));
            let strategy = obj(spec, "strategy");
            or(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = obj(strategy, "rollingUpdate");
                or(ru, "maxUnavailable", json!("25%"));
                or(ru, "maxSurge", json!("25%"));
            }
        }
        "StatefulSet" => {
            or(spec, "podManagementPolicy", json!("OrderedReady"));
            let strategy = obj(spec, "updateStrategy");
            if strategy["type"].is_null() {
                strategy["type"] = json!("RollingUpdate");
                or(strategy, "rollingUpdate", json!({}));
            }
            if strategy["type"] == "RollingUpdate"
                && let Some(ru) = strategy.get_mut("rollingUpdate").filter(|r| r.is_object())
            {
                or(ru, "partition", json!(0));
            }
            let retention = obj(spec, "persistentVolumeClaimRetentionPolicy");
            or(retention, "whenDeleted", json!("Retain"));
            or(retention, "whenScaled", json!("Retain"));
            for pvc in items(spec, "volumeClaimTemplates") {
                or(obj(pvc, "spec"), "volumeMode", json!("Filesystem"));
            }
        }
        "DaemonSet" => {
            let strategy = obj(spec, "updateStrategy");
            or(strategy, "type", json!("RollingUpdate"));
            if strategy["type"] == "RollingUpdate" {
                let ru = obj(strategy, "rollingUpdate");
                or(ru, "maxUnavailable", json!(1));
                or(ru, "maxSurge", json!(0));
            }
        }
        _ => return,
    }
    let template = obj(spec, "template");
    pod_spec(obj(template, "spec"));
}

/// SetDefaults_PodSpec and what it reaches (containers, probes, volumes), for pods and
/// pod templates alike.
fn pod_spec(spec: &mut Value) {
    or(spec, "dnsPolicy", json!("ClusterFirst"));
    or(spec, "restartPolicy", json!("Always"));
    or(spec, "terminationGracePeriodSeconds", json!(30));
    or(spec, "schedulerName", json!("default-scheduler"));
    or(spec, "securityContext", json!({}));
    let host_network = spec["hostNetwork"] == true;
    for key in ["containers", "initContainers", "ephemeralContainers"] {
        for c in items(spec, key) {
            container(c, host_network);
        }
    }
    for v in items(spec, "volumes") {
        volume(v);
    }
}

fn container(c: &mut Value, host_network: bool) {
    if c["imagePullPolicy"].is_null() {
        let latest = c["image"].as_str().is_some_and(|i| {
            let last = i.rsplit('/').next().unwrap_or(i);
            (!last.contains(':') && !last.contains('@')) || i.ends_with(":latest")
        });
        c["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
    }
    or(c, "terminationMessagePath", json!("/dev/termination-log"));
    or(c, "terminationMessagePolicy", json!("File"));
    or(c, "resources", json!({}));
    for p in items(c, "ports") {
        or(p, "protocol", json!("TCP"));
        // defaultHostNetworkPorts: a host-network pod's port is its host port.
        if host_network && p["hostPort"].is_null() {
            p["hostPort"] = p["containerPort"].clone();
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).filter(|p| p.is_object()) {
            or(p, "timeoutSeconds", json!(1));
            or(p, "periodSeconds", json!(10));
            or(p, "successThreshold", json!(1));
            or(p, "failureThreshold", json!(3));
            if let Some(h) = p.get_mut("httpGet").filter(|h| h.is_object()) {
                or(h, "path", json!("/"));
                or(h, "scheme", json!("HTTP"));
            }
        }
    }
    for e in items(c, "env") {
        if let Some(f) = e
            .get_mut("valueFrom")
            .and_then(|v| v.get_mut("fieldRef"))
            .filter(|f| f.is_object())
        {
            or(f, "apiVersion", json!("v1"));
        }
    }
}

fn requests_from_limits(c: &mut Value) {
    let Some(limits) = c["resources"]["limits"].as_object().cloned() else {
        return;
    };
    let requests = obj(obj(c, "resources"), "requests");
    for (k, v) in limits {
        or(requests, &k, v);
    }
}

fn volume(v: &mut Value) {
    const SOURCES: &[&str] = &[
        "hostPath",
        "emptyDir",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "gitRepo",
        "secret",
        "nfs",
        "iscsi",
        "glusterfs",
        "persistentVolumeClaim",
        "rbd",
        "flexVolume",
        "cinder",
        "cephfs",
        "flocker",
        "downwardAPI",
        "fc",
        "azureFile",
        "configMap",
        "vsphereVolume",
        "quobyte",
        "azureDisk",
        "photonPersistentDisk",
        "projected",
        "portworxVolume",
        "scaleIO",
        "storageos",
        "csi",
        "ephemeral",
        "image",
    ];
    if !SOURCES.iter().any(|s| !v[*s].is_null()) {
        v["emptyDir"] = json!({});
    }
    for s in ["secret", "configMap", "downwardAPI", "projected"] {
        if let Some(src) = v.get_mut(s).filter(|x| x.is_object()) {
            or(src, "defaultMode", json!(420));
        }
    }
    if let Some(sources) = v
        .get_mut("projected")
        .and_then(|p| p.get_mut("sources"))
        .and_then(Value::as_array_mut)
    {
        for s in sources {
            if let Some(t) = s.get_mut("serviceAccountToken").filter(|t| t.is_object()) {
                or(t, "expirationSeconds", json!(3600));
            }
        }
    }
    if let Some(h) = v.get_mut("hostPath").filter(|h| h.is_object()) {
        or(h, "type", json!(""));
    }
}

/// What kube-apiserver's default admission plugins add to a new pod: its
/// ServiceAccount (`ServiceAccount`), the not-ready/unreachable tolerations
/// (`DefaultTolerationSeconds`) and its priority (`Priority`).
pub(crate) fn pod_admission(pod: &mut Value) {
    let spec = obj(pod, "spec");
    let sa = spec["serviceAccountName"]
        .as_str()
        .or(spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(sa);
    spec["serviceAccount"] = json!(sa);
    let mut tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        let has = tolerations.iter().any(|t| {
            (t["key"] == key || (t["key"].is_null() && t["operator"] == "Exists"))
                && (t["effect"].is_null() || t["effect"] == "NoExecute")
        });
        if !has {
            tolerations.push(json!({"key": key, "operator": "Exists",
                "effect": "NoExecute", "tolerationSeconds": 300}));
        }
    }
    spec["tolerations"] = json!(tolerations);
    if spec["priorityClassName"].is_null() {
        or(spec, "priority", json!(0));
    }
    or(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_only_what_is_missing_and_are_idempotent() {
        let rt = |g, v, r| crate::resources::lookup(g, v, r).unwrap();
        let mut ic = json!({"spec": {"parameters": {"kind": "Params", "name": "p"}}});
        apply(rt("networking.k8s.io", "v1", "ingressclasses"), &mut ic);
        assert_eq!(ic["spec"]["parameters"]["scope"], "Cluster");
        let mut crd = json!({"spec": {"names": {"kind": "Widget"}, "conversion": {
            "strategy": "Webhook", "webhook": {"clientConfig": {"service": {"name": "s", "namespace": "n"}}}}}});
        apply(
            rt("apiextensions.k8s.io", "v1", "customresourcedefinitions"),
            &mut crd,
        );
        assert_eq!(crd["spec"]["conversion"]["strategy"], "Webhook");
        assert_eq!(
            crd["spec"]["conversion"]["webhook"]["clientConfig"]["service"]["port"],
            443
        );
        assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
        assert_eq!(crd["spec"]["names"]["singular"], "widget");
        let mut d = json!({"spec": {"strategy": {"type": "Recreate"}, "template": {"spec": {
            "hostNetwork": true, "volumes": [{"name": "v"}, {"name": "c", "configMap": {"name": "x"}}],
            "containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 53}]}]}}}});
        let deployments = rt("apps", "v1", "deployments");
        apply(deployments, &mut d);
        let once = d.clone();
        apply(deployments, &mut d);
        assert_eq!(d, once);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["volumes"][0]["emptyDir"], json!({}));
        assert_eq!(pod["volumes"][1]["configMap"]["defaultMode"], 420);
        assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["containers"][0]["ports"][0]["hostPort"], 53);
    }
}
