//! Validation with kube-apiserver's rules and messages. Each check returns the field
//! errors ([`Cause`]s); the handler turns a non-empty list into a 422 Invalid.

use serde_json::{Value, json};

use crate::error::Cause;
use crate::resources::{NameRule, ResourceType};

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    s.len() <= 63 && is_label_format(s)
}

/// The label regex alone, without the length limit (kube reports the two separately).
fn is_label_format(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub(crate) fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label)
}

fn is_dns1035_format(s: &str) -> bool {
    is_label_format(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// The errors of `name` under `rule` (empty when it is valid).
pub(crate) fn name_errors(rule: NameRule, name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    match rule {
        NameRule::Subdomain => {
            if name.len() > 253 {
                errs.push("must be no more than 253 characters".to_string());
            }
            if !is_subdomain(name) {
                errs.push(SUBDOMAIN_MSG.to_string());
            }
        }
        NameRule::Label | NameRule::Dns1035 => {
            if name.len() > 63 {
                errs.push("must be no more than 63 characters".to_string());
            }
            let ok = if rule == NameRule::Label {
                is_label_format(name)
            } else {
                is_dns1035_format(name)
            };
            if !ok {
                errs.push(
                    if rule == NameRule::Label {
                        LABEL_MSG
                    } else {
                        DNS1035_MSG
                    }
                    .to_string(),
                );
            }
        }
        NameRule::Path => {
            if name == "." || name == ".." {
                errs.push(format!("may not be '{name}'"));
            }
            if name.contains('/') || name.contains('%') {
                errs.push("may not contain '/' or '%'".to_string());
            }
        }
    }
    errs
}

/// Validates an object about to be stored.
pub(crate) fn validate(rt: &ResourceType, obj: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    for e in name_errors(rt.name_rule, name) {
        causes.push(Cause::invalid(
            "metadata.name",
            &Value::String(name.to_string()),
            &e,
        ));
    }
    labels(obj, &mut causes);
    annotations(obj, &mut causes);
    match rt.kind {
        "Service" => service(obj, &mut causes),
        "Pod" => pod_spec(&obj["spec"], "spec", &mut causes),
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => workload(obj, &mut causes),
        "Job" if rt.group == "batch" => job(&obj["spec"], "spec", &mut causes),
        "CronJob" => cron_job(obj, &mut causes),
        "ReplicationController" => replication_controller(obj, &mut causes),
        "PersistentVolumeClaim" => pvc(&obj["spec"], &mut causes),
        "PersistentVolume" => pv(&obj["spec"], &mut causes),
        "StorageClass" if obj["provisioner"].as_str().unwrap_or("").is_empty() => {
            causes.push(Cause::required("provisioner", ""));
        }
        "APIService" => api_service(obj, &mut causes),
        "PriorityClass" => priority_class(obj, &mut causes),
        "PodDisruptionBudget" => pod_disruption_budget(obj, &mut causes),
        "NetworkPolicy" if rt.group == "networking.k8s.io" => network_policy(obj, &mut causes),
        kind if rt.group == crate::webhook::config::GROUP => {
            crate::webhook::config::validate(kind, obj, &mut causes);
        }
        kind if rt.group == crate::rbac::RBAC_GROUP => {
            causes.extend(crate::rbac::objects::validate(kind, obj));
        }
        _ => {}
    }
    causes
}

/// kube's highest priority a user-defined class may have; above it are the system's.
const HIGHEST_USER_DEFINABLE_PRIORITY: i64 = 1_000_000_000;

fn priority_class(obj: &Value, causes: &mut Vec<Cause>) {
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    let value = obj["value"].as_i64();
    let system = crate::bootstrap::SYSTEM_PRIORITY_CLASSES
        .iter()
        .find(|(n, _, _)| *n == name);
    match (system, value) {
        (_, None) => causes.push(Cause::required("value", "")),
        (Some((_, v, _)), Some(value)) if *v != value => causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            &format!("priority class {name} is a system priority class of value {v}"),
        )),
        (None, _) if name.starts_with("system-") => causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "priority class names with 'system-' prefix are reserved",
        )),
        (None, Some(value)) if value > HIGHEST_USER_DEFINABLE_PRIORITY => {
            causes.push(Cause::invalid(
                "value",
                &json!(value),
                &format!("must be less than or equal to {HIGHEST_USER_DEFINABLE_PRIORITY}"),
            ));
        }
        _ => {}
    }
}

fn pod_disruption_budget(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    if !spec["minAvailable"].is_null() && !spec["maxUnavailable"].is_null() {
        causes.push(Cause::invalid(
            "spec",
            spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
}

/// `must be greater than or equal to 0` for a present integer field.
fn non_negative(v: &Value, path: &str, causes: &mut Vec<Cause>) {
    if !v.is_null() && v.as_i64().is_none_or(|n| n < 0) {
        causes.push(Cause::invalid(
            path,
            v,
            "must be greater than or equal to 0",
        ));
    }
}

/// A Job's (or a CronJob's job template's) spec.
fn job(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    for f in [
        "parallelism",
        "completions",
        "backoffLimit",
        "activeDeadlineSeconds",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(&spec[f], &format!("{path}.{f}"), causes);
    }
    let policy = &spec["template"]["spec"]["restartPolicy"];
    if !matches!(policy.as_str(), Some("OnFailure" | "Never")) {
        causes.push(Cause::not_supported(
            format!("{path}.template.spec.restartPolicy"),
            policy,
            &["OnFailure", "Never"],
        ));
    }
    pod_spec(
        &spec["template"]["spec"],
        &format!("{path}.template.spec"),
        causes,
    );
}

fn cron_job(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let schedule = spec["schedule"].as_str().unwrap_or("");
    if schedule.is_empty() {
        causes.push(Cause::required("spec.schedule", ""));
    } else if let Err(e) = crate::util::parse_cron(schedule) {
        causes.push(Cause::invalid("spec.schedule", &spec["schedule"], &e));
    }
    let cp = &spec["concurrencyPolicy"];
    if !matches!(cp.as_str(), Some("Allow" | "Forbid" | "Replace")) {
        causes.push(Cause::not_supported(
            "spec.concurrencyPolicy",
            cp,
            &["Allow", "Forbid", "Replace"],
        ));
    }
    if let Some(tz) = spec["timeZone"].as_str()
        && !matches!(tz, "UTC" | "Etc/UTC")
    {
        causes.push(Cause::invalid(
            "spec.timeZone",
            &spec["timeZone"],
            "unknown time zone (the lab's CronJobs run in UTC)",
        ));
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(&spec[f], &format!("spec.{f}"), causes);
    }
    job(
        &spec["jobTemplate"]["spec"],
        "spec.jobTemplate.spec",
        causes,
    );
}

fn replication_controller(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let selector = spec["selector"].as_object();
    if selector.is_none_or(|s| s.is_empty()) {
        causes.push(Cause::required("spec.selector", ""));
    } else if let Some(sel) = selector {
        let tl = &spec["template"]["metadata"]["labels"];
        if sel.iter().any(|(k, v)| tl.get(k) != Some(v)) {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                tl,
                "`selector` does not match template `labels`",
            ));
        }
    }
    non_negative(&spec["replicas"], "spec.replicas", causes);
    pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
}

const ACCESS_MODES: [&str; 4] = [
    "ReadOnlyMany",
    "ReadWriteMany",
    "ReadWriteOnce",
    "ReadWriteOncePod",
];

fn access_modes(spec: &Value, causes: &mut Vec<Cause>) {
    let modes = spec["accessModes"].as_array().cloned().unwrap_or_default();
    if modes.is_empty() {
        causes.push(Cause::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    for m in &modes {
        if !m.as_str().is_some_and(|m| ACCESS_MODES.contains(&m)) {
            causes.push(Cause::not_supported("spec.accessModes", m, &ACCESS_MODES));
        }
    }
}

fn pvc(spec: &Value, causes: &mut Vec<Cause>) {
    access_modes(spec, causes);
    if spec["resources"]["requests"]["storage"].is_null() {
        causes.push(Cause::required("spec.resources[storage]", ""));
    }
}

fn pv(spec: &Value, causes: &mut Vec<Cause>) {
    access_modes(spec, causes);
    if spec["capacity"]["storage"].is_null() {
        causes.push(Cause::required("spec.capacity", ""));
    }
    const SOURCES: [&str; 12] = [
        "hostPath",
        "local",
        "nfs",
        "csi",
        "iscsi",
        "fc",
        "rbd",
        "cephfs",
        "gcePersistentDisk",
        "awsElasticBlockStore",
        "azureDisk",
        "azureFile",
    ];
    if !SOURCES.iter().any(|s| spec[*s].is_object()) {
        causes.push(Cause::required("spec", "must specify a volume type"));
    }
}

fn api_service(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let (group, version) = (
        spec["group"].as_str().unwrap_or(""),
        spec["version"].as_str().unwrap_or(""),
    );
    if version.is_empty() {
        causes.push(Cause::required("spec.version", ""));
    }
    let want = if group.is_empty() {
        version.to_string()
    } else {
        format!("{version}.{group}")
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    if !version.is_empty() && name != want {
        causes.push(Cause::invalid(
            "metadata.name",
            &obj["metadata"]["name"],
            &format!("must be `spec.version+\".\"+spec.group`: \"{want}\""),
        ));
    }
    for f in ["groupPriorityMinimum", "versionPriority"] {
        if spec[f].as_i64().is_none_or(|n| n <= 0) {
            causes.push(Cause::invalid(
                format!("spec.{f}"),
                &spec[f],
                "must be positive and less than 1000000",
            ));
        }
    }
}

/// kube-apiserver's limit on the total size of an object's annotations.
const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

fn annotations(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(a) = obj["metadata"]["annotations"].as_object() else {
        return;
    };
    let size: usize = a
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > MAX_ANNOTATIONS_BYTES {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: "metadata.annotations".into(),
            message: format!("Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"),
        });
    }
}

fn labels(obj: &Value, causes: &mut Vec<Cause>) {
    let Some(labels) = obj["metadata"]["labels"].as_object() else {
        return;
    };
    for (k, v) in labels {
        let (prefix, name) = k.rsplit_once('/').unwrap_or(("", k));
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok || (!prefix.is_empty() && !is_subdomain(prefix)) {
            causes.push(Cause::invalid(
                "metadata.labels",
                &Value::String(k.clone()),
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ));
        }
        let v = v.as_str().unwrap_or("");
        let v_ok = v.is_empty()
            || (v.len() <= 63
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        if !v_ok {
            causes.push(Cause::invalid(
                "metadata.labels",
                &Value::String(v.to_string()),
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ));
        }
    }
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const SERVICE_TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];

fn port_number_ok(v: &Value) -> bool {
    v.as_i64().is_some_and(|p| (1..=65535).contains(&p))
}

/// `targetPort`: a number in range or an IANA service name.
fn target_port_ok(v: &Value) -> Option<&'static str> {
    match v {
        Value::Number(_) => (!port_number_ok(v)).then_some(PORT_RANGE),
        Value::String(s) => {
            let ok = !s.is_empty()
                && s.len() <= 15
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && s.chars().any(|c| c.is_ascii_lowercase())
                && !s.starts_with('-')
                && !s.ends_with('-')
                && !s.contains("--");
            (!ok)
                .then_some("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
        }
        _ => Some(PORT_RANGE),
    }
}

/// kube's `ValidateLabelSelector`: operators and their values, keys and values.
fn label_selector(sel: &Value, path: &str, causes: &mut Vec<Cause>) {
    for (i, e) in sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("{path}.matchExpressions[{i}]");
        let values = e["values"].as_array().map_or(0, Vec::len);
        match e["operator"].as_str().unwrap_or("") {
            "In" | "NotIn" if values == 0 => causes.push(Cause::required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if values > 0 => causes.push(Cause::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            _ => causes.push(Cause::invalid(
                format!("{at}.operator"),
                &e["operator"],
                "not a valid selector operator",
            )),
        }
    }
}

/// kube's `ValidateNetworkPolicySpec`, with its messages.
fn network_policy(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    label_selector(&spec["podSelector"], "spec.podSelector", causes);
    for (key, peers) in [("ingress", "from"), ("egress", "to")] {
        for (i, rule) in spec[key].as_array().into_iter().flatten().enumerate() {
            let at = format!("spec.{key}[{i}]");
            for (j, port) in rule["ports"].as_array().into_iter().flatten().enumerate() {
                network_policy_port(port, &format!("{at}.ports[{j}]"), causes);
            }
            for (j, peer) in rule[peers].as_array().into_iter().flatten().enumerate() {
                network_policy_peer(peer, &format!("{at}.{peers}[{j}]"), causes);
            }
        }
    }
    if let Some(types) = spec["policyTypes"].as_array() {
        if types.len() > 2 {
            causes.push(Cause::invalid(
                "spec.policyTypes",
                &spec["policyTypes"],
                "may not specify more than two policyTypes",
            ));
            return;
        }
        for (i, t) in types.iter().enumerate() {
            if !matches!(t.as_str(), Some("Ingress" | "Egress")) {
                causes.push(Cause::not_supported(
                    format!("spec.policyTypes[{i}]"),
                    t,
                    &["Ingress", "Egress"],
                ));
            }
        }
    }
}

fn network_policy_port(port: &Value, at: &str, causes: &mut Vec<Cause>) {
    let proto = &port["protocol"];
    if !proto.is_null() && !proto.as_str().is_some_and(|p| PROTOCOLS.contains(&p)) {
        causes.push(Cause::not_supported(
            format!("{at}.protocol"),
            proto,
            &["TCP", "UDP", "SCTP"],
        ));
    }
    let end = &port["endPort"];
    match &port["port"] {
        Value::Null if !end.is_null() => causes.push(Cause::invalid(
            format!("{at}.endPort"),
            end,
            "may not be specified when `port` is not specified",
        )),
        Value::Null => {}
        p @ Value::Number(_) => {
            if !port_number_ok(p) {
                causes.push(Cause::invalid(format!("{at}.port"), p, PORT_RANGE));
            }
            if !end.is_null() {
                if end.as_i64() < p.as_i64() {
                    causes.push(Cause::invalid(
                        format!("{at}.endPort"),
                        p,
                        "must be greater than or equal to `port`",
                    ));
                }
                if !port_number_ok(end) {
                    causes.push(Cause::invalid(format!("{at}.endPort"), end, PORT_RANGE));
                }
            }
        }
        p => {
            if !end.is_null() {
                causes.push(Cause::invalid(
                    format!("{at}.endPort"),
                    end,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            if let Some(msg) = target_port_ok(p) {
                causes.push(Cause::invalid(format!("{at}.port"), p, msg));
            }
        }
    }
}

const CIDR_MSG: &str = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)";

fn network_policy_peer(peer: &Value, at: &str, causes: &mut Vec<Cause>) {
    let mut kinds = 0;
    for (key, field) in [
        ("podSelector", "podSelector"),
        ("namespaceSelector", "namespaceSelector"),
    ] {
        if peer[key].is_object() {
            kinds += 1;
            label_selector(&peer[key], &format!("{at}.{field}"), causes);
        }
    }
    let block = &peer["ipBlock"];
    if block.is_object() {
        kinds += 1;
        ip_block(block, &format!("{at}.ipBlock"), causes);
    }
    if kinds == 0 {
        causes.push(Cause::required(at, "must specify a peer"));
    } else if kinds > 1 && block.is_object() {
        causes.push(Cause::forbidden(
            at,
            "may not specify both ipBlock and another peer",
        ));
    }
}

fn ip_block(block: &Value, at: &str, causes: &mut Vec<Cause>) {
    let cidr = block["cidr"].as_str().unwrap_or("");
    if cidr.is_empty() {
        causes.push(Cause::required(format!("{at}.cidr"), ""));
        return;
    }
    let Ok(net) = cidr.parse::<ipnet::IpNet>() else {
        causes.push(Cause::invalid(
            format!("{at}.cidr"),
            &block["cidr"],
            CIDR_MSG,
        ));
        return;
    };
    for (i, e) in block["except"].as_array().into_iter().flatten().enumerate() {
        let field = format!("{at}.except[{i}]");
        let Some(except) = e.as_str().and_then(|e| e.parse::<ipnet::IpNet>().ok()) else {
            causes.push(Cause::invalid(field, e, CIDR_MSG));
            continue;
        };
        if !net.trunc().contains(&except.network()) || net.prefix_len() >= except.prefix_len() {
            causes.push(Cause::invalid(
                field,
                e,
                "must be a strict subset of `cidr`",
            ));
        }
    }
}

fn service(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP");
    if !SERVICE_TYPES.contains(&ty) {
        causes.push(Cause::not_supported(
            "spec.type",
            &spec["type"],
            SERVICE_TYPES,
        ));
    }
    let headless = spec["clusterIP"].as_str() == Some("None");
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    if ports.is_empty() && ty != "ExternalName" && !headless {
        causes.push(Cause::required("spec.ports", ""));
    }
    if ty == "ExternalName" {
        let ext = spec["externalName"].as_str().unwrap_or("");
        if ext.is_empty() {
            causes.push(Cause::required("spec.externalName", ""));
        } else if !is_subdomain(ext.trim_end_matches('.')) {
            causes.push(Cause::invalid(
                "spec.externalName",
                &spec["externalName"],
                SUBDOMAIN_MSG,
            ));
        }
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let f = |s: &str| format!("spec.ports[{i}].{s}");
        let name = p["name"].as_str().unwrap_or("");
        if ports.len() > 1 && name.is_empty() {
            causes.push(Cause::required(f("name"), ""));
        } else if !name.is_empty() {
            if !is_label(name) {
                causes.push(Cause::invalid(f("name"), &p["name"], LABEL_MSG));
            }
            if names.contains(&name) {
                causes.push(Cause::duplicate(f("name"), &p["name"]));
            }
            names.push(name);
        }
        if p.get("port").is_none_or(Value::is_null) {
            causes.push(Cause::required(f("port"), ""));
        } else if !port_number_ok(&p["port"]) {
            causes.push(Cause::invalid(f("port"), &p["port"], PORT_RANGE));
        }
        if let Some(proto) = p.get("protocol").filter(|v| !v.is_null())
            && !proto.as_str().is_some_and(|s| PROTOCOLS.contains(&s))
        {
            causes.push(Cause::not_supported(f("protocol"), proto, PROTOCOLS));
        }
        if let Some(tp) = p.get("targetPort").filter(|v| !v.is_null())
            && let Some(msg) = target_port_ok(tp)
        {
            causes.push(Cause::invalid(f("targetPort"), tp, msg));
        }
        if let Some(np) = p
            .get("nodePort")
            .filter(|v| !v.is_null() && v.as_i64() != Some(0))
        {
            if !port_number_ok(np) {
                causes.push(Cause::invalid(f("nodePort"), np, PORT_RANGE));
            } else if ty == "ClusterIP" {
                causes.push(Cause::invalid(
                    f("nodePort"),
                    np,
                    "may not be used when `type` is 'ClusterIP'",
                ));
            }
        }
    }
    // kube-apiserver's validateServiceExternalTrafficPolicy (the policy is defaulted
    // later, so only a set one is checked here).
    let externally_accessible = matches!(ty, "NodePort" | "LoadBalancer")
        || (ty == "ClusterIP"
            && spec["externalIPs"]
                .as_array()
                .is_some_and(|a| !a.is_empty()));
    let etp = &spec["externalTrafficPolicy"];
    if let Some(v) = etp.as_str().filter(|v| !v.is_empty()) {
        if !externally_accessible {
            causes.push(Cause::invalid(
                "spec.externalTrafficPolicy",
                etp,
                "may only be set for externally-accessible services",
            ));
        } else if !["Cluster", "Local"].contains(&v) {
            causes.push(Cause::not_supported(
                "spec.externalTrafficPolicy",
                etp,
                &["Cluster", "Local"],
            ));
        }
    }
    let hc = &spec["healthCheckNodePort"];
    if hc.as_i64().is_some_and(|n| n != 0) || !(hc.is_null() || hc.is_i64()) {
        if !(ty == "LoadBalancer" && etp == "Local") {
            causes.push(Cause::invalid(
                "spec.healthCheckNodePort",
                hc,
                "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'",
            ));
        } else if !port_number_ok(hc) {
            causes.push(Cause::invalid("spec.healthCheckNodePort", hc, PORT_RANGE));
        }
    }
    if let Some(ip) = spec["clusterIP"].as_str()
        && !ip.is_empty()
        && ip != "None"
        && ip.parse::<std::net::IpAddr>().is_err()
    {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &spec["clusterIP"],
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
}

fn pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required(format!("{path}.containers"), ""));
    }
    let mut names = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let f = |s: &str| format!("{path}.containers[{i}].{s}");
        let name = c["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::required(f("name"), ""));
        } else if !is_label(name) {
            causes.push(Cause::invalid(f("name"), &c["name"], LABEL_MSG));
        } else if names.contains(&name) {
            causes.push(Cause::duplicate(f("name"), &c["name"]));
        }
        names.push(name);
        if c["image"].as_str().unwrap_or("").trim().is_empty() {
            causes.push(Cause::required(f("image"), ""));
        }
        for (j, p) in c["ports"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            if !port_number_ok(&p["containerPort"]) {
                causes.push(Cause::invalid(
                    format!("{}[{j}].containerPort", f("ports")),
                    &p["containerPort"],
                    PORT_RANGE,
                ));
            }
            if let Some(hp) = p
                .get("hostPort")
                .filter(|v| !v.is_null() && v.as_i64() != Some(0))
                && !port_number_ok(hp)
            {
                causes.push(Cause::invalid(
                    format!("{}[{j}].hostPort", f("ports")),
                    hp,
                    PORT_RANGE,
                ));
            }
        }
        if !c["restartPolicy"].is_null() {
            causes.push(Cause::forbidden(
                f("restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    // A native sidecar is an init container with `restartPolicy: Always`, the only
    // value an init container may set.
    for (i, c) in spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let policy = &c["restartPolicy"];
        if !policy.is_null() && policy != "Always" {
            causes.push(Cause::not_supported(
                format!("{path}.initContainers[{i}].restartPolicy"),
                policy,
                &["Always"],
            ));
        }
    }
}

fn workload(obj: &Value, causes: &mut Vec<Cause>) {
    let spec = &obj["spec"];
    let selector = &spec["selector"];
    let match_labels = selector["matchLabels"].as_object();
    let has_exprs = selector["matchExpressions"]
        .as_array()
        .is_some_and(|a| !a.is_empty());
    if match_labels.is_none_or(|m| m.is_empty()) && !has_exprs {
        causes.push(Cause::required("spec.selector", ""));
    } else if let Some(ml) = match_labels {
        let tl = &spec["template"]["metadata"]["labels"];
        if ml.iter().any(|(k, v)| tl.get(k) != Some(v)) {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                tl,
                "`selector` does not match template `labels`",
            ));
        }
    }
    if let Some(r) = spec.get("replicas").filter(|v| !v.is_null())
        && r.as_i64().is_none_or(|r| r < 0)
    {
        causes.push(Cause::invalid(
            "spec.replicas",
            r,
            "must be greater than or equal to 0",
        ));
    }
    pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::lookup;
    use serde_json::json;

    #[test]
    fn names() {
        assert!(name_errors(NameRule::Subdomain, "web.example-1").is_empty());
        assert!(!name_errors(NameRule::Subdomain, "Web").is_empty());
        assert!(!name_errors(NameRule::Subdomain, "bad_name").is_empty());
        assert!(name_errors(NameRule::Label, "kube-system").is_empty());
        assert!(!name_errors(NameRule::Label, "a.b").is_empty());
        assert!(!name_errors(NameRule::Dns1035, "1web").is_empty());
        assert!(name_errors(NameRule::Subdomain, "1web").is_empty());
        assert_eq!(name_errors(NameRule::Label, &"a".repeat(64)).len(), 1);
    }

    #[test]
    fn service_ports() {
        let svc = lookup("", "v1", "services").unwrap();
        let ok = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80, "targetPort": "http"}]}});
        assert!(validate(svc, &ok).is_empty());
        let bad = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 70000}, {"port": 80, "protocol": "ICMP"}]}});
        let c = validate(svc, &bad);
        let fields: Vec<&str> = c.iter().map(|c| c.field.as_str()).collect();
        for f in [
            "spec.ports[1].name",
            "spec.ports[0].port",
            "spec.ports[1].protocol",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        let port = c.iter().find(|c| c.field == "spec.ports[0].port").unwrap();
        assert_eq!(
            port.message,
            "Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        let headless = json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None"}});
        assert!(validate(svc, &headless).is_empty());
        let noports = json!({"metadata": {"name": "db"}, "spec": {}});
        assert_eq!(validate(svc, &noports)[0].field, "spec.ports");
    }

    #[test]
    fn only_init_containers_restart_always_as_sidecars() {
        let pods = lookup("", "v1", "pods").unwrap();
        let c = |extra: Value| {
            let mut c = json!({"name": "x", "image": "busybox"});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        let sidecar = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [c(json!({"restartPolicy": "Always"}))],
            "containers": [c(json!({"name": "app"}))]}});
        assert!(validate(pods, &sidecar).is_empty());
        let bad = json!({"metadata": {"name": "p"}, "spec": {
            "initContainers": [c(json!({"restartPolicy": "OnFailure"}))],
            "containers": [c(json!({"name": "app", "restartPolicy": "Always"}))]}});
        let fields: Vec<String> = validate(pods, &bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[0].restartPolicy",
                "spec.initContainers[0].restartPolicy"
            ]
        );
    }

    #[test]
    fn annotations_have_a_size_limit() {
        let cm = lookup("", "v1", "configmaps").unwrap();
        let big = json!({"metadata": {"name": "c", "annotations": {"a": "x".repeat(300 * 1024)}}});
        assert_eq!(validate(cm, &big)[0].field, "metadata.annotations");
    }

    #[test]
    fn pods_and_deployments() {
        let pod = lookup("", "v1", "pods").unwrap();
        let p = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 0}]}]}});
        assert_eq!(
            validate(pod, &p)[0].field,
            "spec.containers[0].ports[0].containerPort"
        );
        let d = lookup("apps", "v1", "deployments").unwrap();
        let dep = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        assert_eq!(validate(d, &dep)[0].field, "spec.template.metadata.labels");
    }
}
