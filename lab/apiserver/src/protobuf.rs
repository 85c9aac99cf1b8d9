//! `application/vnd.kubernetes.protobuf` request bodies, for the objects kubectl's
//! generators send that way (`kubectl create deployment|service|secret|configmap|
//! namespace|serviceaccount|role|clusterrole|rolebinding|clusterrolebinding|job|cronjob`,
//! `create job --from=cronjob/...`, and the reviews of `kubectl auth can-i`): the `k8s\0`
//! envelope (`runtime.Unknown`) and a schema of
//! the fields those objects use, decoded into the JSON the rest of the server handles.
//! A field outside the schema with a value other than zero refuses the request (415)
//! rather than losing data; every other client sends JSON.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value, json};

use crate::error::Status;
use crate::util::rfc3339;

#[derive(Clone, Copy)]
enum Ty {
    Str,
    I32,
    I64,
    Bool,
    Msg(&'static [F]),
    MapStr,
    MapBytes,
    MapQuantity,
    IntOrString,
    Time,
}

/// One field: number, JSON name, type, repeated.
#[derive(Clone, Copy)]
struct F(u32, &'static str, Ty, bool);

use Ty::*;

const TIME_SECONDS_OF_GO_ZERO: i64 = -62_135_596_800;

/// Fields that are pointers in Go: present on the wire only when set, zero included.
const POINTERS: &[&str] = &[
    "replicas",
    "terminationGracePeriodSeconds",
    "progressDeadlineSeconds",
    "revisionHistoryLimit",
    "immutable",
    "automountServiceAccountToken",
    "deletionGracePeriodSeconds",
    "expirationSeconds",
    "parallelism",
    "completions",
    "activeDeadlineSeconds",
    "manualSelector",
    "backoffLimit",
    "ttlSecondsAfterFinished",
    "suspend",
    "startingDeadlineSeconds",
    "successfulJobsHistoryLimit",
    "failedJobsHistoryLimit",
    "controller",
    "blockOwnerDeletion",
];

const OBJECT_META: &[F] = &[
    F(1, "name", Str, false),
    F(2, "generateName", Str, false),
    F(3, "namespace", Str, false),
    F(4, "selfLink", Str, false),
    F(5, "uid", Str, false),
    F(6, "resourceVersion", Str, false),
    F(7, "generation", I64, false),
    F(8, "creationTimestamp", Time, false),
    F(9, "deletionTimestamp", Time, false),
    F(10, "deletionGracePeriodSeconds", I64, false),
    F(11, "labels", MapStr, false),
    F(12, "annotations", MapStr, false),
    F(13, "ownerReferences", Msg(OWNER_REFERENCE), true),
    F(14, "finalizers", Str, true),
];
const OWNER_REFERENCE: &[F] = &[
    F(1, "kind", Str, false),
    F(3, "name", Str, false),
    F(4, "uid", Str, false),
    F(5, "apiVersion", Str, false),
    F(6, "controller", Bool, false),
    F(7, "blockOwnerDeletion", Bool, false),
];
const SELECTOR_REQUIREMENT: &[F] = &[
    F(1, "key", Str, false),
    F(2, "operator", Str, false),
    F(3, "values", Str, true),
];
const LABEL_SELECTOR: &[F] = &[
    F(1, "matchLabels", MapStr, false),
    F(2, "matchExpressions", Msg(SELECTOR_REQUIREMENT), true),
];
const OBJECT_REFERENCE: &[F] = &[
    F(1, "kind", Str, false),
    F(2, "namespace", Str, false),
    F(3, "name", Str, false),
    F(4, "uid", Str, false),
    F(5, "apiVersion", Str, false),
    F(6, "resourceVersion", Str, false),
    F(7, "fieldPath", Str, false),
];
const LOCAL_REFERENCE: &[F] = &[F(1, "name", Str, false)];
const EMPTY: &[F] = &[];

const NAMESPACE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(&[F(1, "finalizers", Str, true)]), false),
    F(3, "status", Msg(&[F(1, "phase", Str, false)]), false),
];
const SERVICE_PORT: &[F] = &[
    F(1, "name", Str, false),
    F(2, "protocol", Str, false),
    F(3, "port", I32, false),
    F(4, "targetPort", IntOrString, false),
    F(5, "nodePort", I32, false),
    F(6, "appProtocol", Str, false),
];
const SERVICE_SPEC: &[F] = &[
    F(1, "ports", Msg(SERVICE_PORT), true),
    F(2, "selector", MapStr, false),
    F(3, "clusterIP", Str, false),
    F(4, "type", Str, false),
    F(5, "externalIPs", Str, true),
    F(7, "sessionAffinity", Str, false),
    F(8, "loadBalancerIP", Str, false),
    F(10, "externalName", Str, false),
    F(11, "externalTrafficPolicy", Str, false),
    F(17, "ipFamilyPolicy", Str, false),
    F(18, "clusterIPs", Str, true),
    F(19, "ipFamilies", Str, true),
    F(22, "internalTrafficPolicy", Str, false),
];
const SERVICE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(SERVICE_SPEC), false),
    F(
        3,
        "status",
        Msg(&[F(1, "loadBalancer", Msg(EMPTY), false)]),
        false,
    ),
];
const SECRET: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "data", MapBytes, false),
    F(3, "type", Str, false),
    F(4, "stringData", MapStr, false),
    F(5, "immutable", Bool, false),
];
const CONFIG_MAP: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "data", MapStr, false),
    F(3, "binaryData", MapBytes, false),
    F(4, "immutable", Bool, false),
];
const SERVICE_ACCOUNT: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "secrets", Msg(OBJECT_REFERENCE), true),
    F(3, "imagePullSecrets", Msg(LOCAL_REFERENCE), true),
    F(4, "automountServiceAccountToken", Bool, false),
];
const CONTAINER_PORT: &[F] = &[
    F(1, "name", Str, false),
    F(2, "hostPort", I32, false),
    F(3, "containerPort", I32, false),
    F(4, "protocol", Str, false),
    F(5, "hostIP", Str, false),
];
const ENV_VAR: &[F] = &[F(1, "name", Str, false), F(2, "value", Str, false)];
const RESOURCES: &[F] = &[
    F(1, "limits", MapQuantity, false),
    F(2, "requests", MapQuantity, false),
];
const CONTAINER: &[F] = &[
    F(1, "name", Str, false),
    F(2, "image", Str, false),
    F(3, "command", Str, true),
    F(4, "args", Str, true),
    F(5, "workingDir", Str, false),
    F(6, "ports", Msg(CONTAINER_PORT), true),
    F(7, "env", Msg(ENV_VAR), true),
    F(8, "resources", Msg(RESOURCES), false),
    F(13, "terminationMessagePath", Str, false),
    F(14, "imagePullPolicy", Str, false),
    F(16, "stdin", Bool, false),
    F(17, "stdinOnce", Bool, false),
    F(18, "tty", Bool, false),
    F(20, "terminationMessagePolicy", Str, false),
];
const POD_SPEC: &[F] = &[
    F(2, "containers", Msg(CONTAINER), true),
    F(3, "restartPolicy", Str, false),
    F(4, "terminationGracePeriodSeconds", I64, false),
    F(6, "dnsPolicy", Str, false),
    F(7, "nodeSelector", MapStr, false),
    F(8, "serviceAccountName", Str, false),
    F(10, "nodeName", Str, false),
    F(11, "hostNetwork", Bool, false),
    F(19, "schedulerName", Str, false),
    F(20, "initContainers", Msg(CONTAINER), true),
];
const POD_TEMPLATE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(POD_SPEC), false),
];
const DEPLOYMENT_SPEC: &[F] = &[
    F(1, "replicas", I32, false),
    F(2, "selector", Msg(LABEL_SELECTOR), false),
    F(3, "template", Msg(POD_TEMPLATE), false),
    F(4, "strategy", Msg(&[F(1, "type", Str, false)]), false),
    F(5, "minReadySeconds", I32, false),
    F(6, "revisionHistoryLimit", I32, false),
    F(7, "paused", Bool, false),
    F(9, "progressDeadlineSeconds", I32, false),
];
const DEPLOYMENT: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(DEPLOYMENT_SPEC), false),
    F(3, "status", Msg(EMPTY), false),
];
const JOB_SPEC: &[F] = &[
    F(1, "parallelism", I32, false),
    F(2, "completions", I32, false),
    F(3, "activeDeadlineSeconds", I64, false),
    F(4, "selector", Msg(LABEL_SELECTOR), false),
    F(5, "manualSelector", Bool, false),
    F(6, "template", Msg(POD_TEMPLATE), false),
    F(7, "backoffLimit", I32, false),
    F(8, "ttlSecondsAfterFinished", I32, false),
    F(9, "completionMode", Str, false),
    F(10, "suspend", Bool, false),
    F(14, "podReplacementPolicy", Str, false),
];
const JOB: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(JOB_SPEC), false),
    F(3, "status", Msg(EMPTY), false),
];
const CRON_JOB_SPEC: &[F] = &[
    F(1, "schedule", Str, false),
    F(2, "startingDeadlineSeconds", I64, false),
    F(3, "concurrencyPolicy", Str, false),
    F(4, "suspend", Bool, false),
    F(
        5,
        "jobTemplate",
        Msg(&[
            F(1, "metadata", Msg(OBJECT_META), false),
            F(2, "spec", Msg(JOB_SPEC), false),
        ]),
        false,
    ),
    F(6, "successfulJobsHistoryLimit", I32, false),
    F(7, "failedJobsHistoryLimit", I32, false),
    F(8, "timeZone", Str, false),
];
const CRON_JOB: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(CRON_JOB_SPEC), false),
    F(3, "status", Msg(EMPTY), false),
];

const BOUND_OBJECT_REFERENCE: &[F] = &[
    F(1, "kind", Str, false),
    F(2, "apiVersion", Str, false),
    F(3, "name", Str, false),
    F(4, "uid", Str, false),
];
/// `kubectl create token` sends its TokenRequest as protobuf.
const TOKEN_REQUEST: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(
        2,
        "spec",
        Msg(&[
            F(1, "audiences", Str, true),
            F(3, "boundObjectRef", Msg(BOUND_OBJECT_REFERENCE), false),
            F(4, "expirationSeconds", I64, false),
        ]),
        false,
    ),
    F(
        3,
        "status",
        Msg(&[
            F(1, "token", Str, false),
            F(2, "expirationTimestamp", Time, false),
        ]),
        false,
    ),
];

const POLICY_RULE: &[F] = &[
    F(1, "verbs", Str, true),
    F(2, "apiGroups", Str, true),
    F(3, "resources", Str, true),
    F(4, "resourceNames", Str, true),
    F(5, "nonResourceURLs", Str, true),
];
const SUBJECT: &[F] = &[
    F(1, "kind", Str, false),
    F(2, "apiGroup", Str, false),
    F(3, "name", Str, false),
    F(4, "namespace", Str, false),
];
const ROLE_REF: &[F] = &[
    F(1, "apiGroup", Str, false),
    F(2, "kind", Str, false),
    F(3, "name", Str, false),
];
/// `kubectl create role|clusterrole|rolebinding|clusterrolebinding` send protobuf.
const ROLE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "rules", Msg(POLICY_RULE), true),
];
const CLUSTER_ROLE: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "rules", Msg(POLICY_RULE), true),
    F(
        3,
        "aggregationRule",
        Msg(&[F(1, "clusterRoleSelectors", Msg(LABEL_SELECTOR), true)]),
        false,
    ),
];
const ROLE_BINDING: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "subjects", Msg(SUBJECT), true),
    F(3, "roleRef", Msg(ROLE_REF), false),
];

const RESOURCE_ATTRIBUTES: &[F] = &[
    F(1, "namespace", Str, false),
    F(2, "verb", Str, false),
    F(3, "group", Str, false),
    F(4, "version", Str, false),
    F(5, "resource", Str, false),
    F(6, "subresource", Str, false),
    F(7, "name", Str, false),
    F(
        8,
        "fieldSelector",
        Msg(&[
            F(1, "rawSelector", Str, false),
            F(2, "requirements", Msg(SELECTOR_REQUIREMENT), true),
        ]),
        false,
    ),
    F(
        9,
        "labelSelector",
        Msg(&[
            F(1, "rawSelector", Str, false),
            F(2, "requirements", Msg(SELECTOR_REQUIREMENT), true),
        ]),
        false,
    ),
];
const NON_RESOURCE_ATTRIBUTES: &[F] = &[F(1, "path", Str, false), F(2, "verb", Str, false)];
const ACCESS_REVIEW_STATUS: &[F] = &[
    F(1, "allowed", Bool, false),
    F(2, "reason", Str, false),
    F(3, "evaluationError", Str, false),
    F(4, "denied", Bool, false),
];
/// `kubectl auth can-i` sends its reviews as protobuf.
const SELF_SUBJECT_ACCESS_REVIEW: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(
        2,
        "spec",
        Msg(&[
            F(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES), false),
            F(
                2,
                "nonResourceAttributes",
                Msg(NON_RESOURCE_ATTRIBUTES),
                false,
            ),
        ]),
        false,
    ),
    F(3, "status", Msg(ACCESS_REVIEW_STATUS), false),
];
const SUBJECT_ACCESS_REVIEW: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(
        2,
        "spec",
        Msg(&[
            F(1, "resourceAttributes", Msg(RESOURCE_ATTRIBUTES), false),
            F(
                2,
                "nonResourceAttributes",
                Msg(NON_RESOURCE_ATTRIBUTES),
                false,
            ),
            F(3, "user", Str, false),
            F(4, "groups", Str, true),
            F(6, "uid", Str, false),
        ]),
        false,
    ),
    F(3, "status", Msg(ACCESS_REVIEW_STATUS), false),
];
const SELF_SUBJECT_RULES_REVIEW: &[F] = &[
    F(1, "metadata", Msg(OBJECT_META), false),
    F(2, "spec", Msg(&[F(1, "namespace", Str, false)]), false),
    F(3, "status", Msg(EMPTY), false),
];

fn top_level(api_version: &str, kind: &str) -> Option<&'static [F]> {
    Some(match (api_version, kind) {
        ("v1", "Namespace") => NAMESPACE,
        ("v1", "Service") => SERVICE,
        ("v1", "Secret") => SECRET,
        ("v1", "ConfigMap") => CONFIG_MAP,
        ("v1", "ServiceAccount") => SERVICE_ACCOUNT,
        ("apps/v1", "Deployment") => DEPLOYMENT,
        ("batch/v1", "Job") => JOB,
        ("batch/v1", "CronJob") => CRON_JOB,
        ("authentication.k8s.io/v1", "TokenRequest") => TOKEN_REQUEST,
        ("rbac.authorization.k8s.io/v1", "Role") => ROLE,
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => CLUSTER_ROLE,
        ("rbac.authorization.k8s.io/v1", "RoleBinding" | "ClusterRoleBinding") => ROLE_BINDING,
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => SELF_SUBJECT_ACCESS_REVIEW,
        ("authorization.k8s.io/v1", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            SUBJECT_ACCESS_REVIEW
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => SELF_SUBJECT_RULES_REVIEW,
        _ => return None,
    })
}

fn unsupported(what: &str) -> Status {
    Status::new(
        415,
        "UnsupportedMediaType",
        format!(
            "the protobuf body of the request is not understood here ({what}); send application/json"
        ),
    )
}

/// One decoded field: number, wire type, varint value, length-delimited or fixed bytes.
type Field<'a> = (u32, u8, u64, &'a [u8]);

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, Status> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self
                .b
                .split_first()
                .ok_or_else(|| unsupported("truncated varint"))?;
            self.b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(unsupported("varint too long"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Status> {
        let n = usize::try_from(self.varint()?).map_err(|_| unsupported("length"))?;
        if n > self.b.len() {
            return Err(unsupported("truncated field"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    /// Next field: number, wire type, and the value (varint in `.0`, bytes in `.1`).
    fn field(&mut self) -> Result<Option<Field<'a>>, Status> {
        if self.b.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let (num, wire) = ((tag >> 3) as u32, (tag & 7) as u8);
        match wire {
            0 => Ok(Some((num, 0, self.varint()?, &[]))),
            2 => Ok(Some((num, 2, 0, self.bytes()?))),
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if self.b.len() < n {
                    return Err(unsupported("truncated fixed field"));
                }
                let (head, rest) = self.b.split_at(n);
                self.b = rest;
                Ok(Some((num, wire, 0, head)))
            }
            _ => Err(unsupported("unknown wire type")),
        }
    }
}

fn string(b: &[u8]) -> Result<String, Status> {
    String::from_utf8(b.to_vec()).map_err(|_| unsupported("string is not UTF-8"))
}

/// Entries of a map field: `{1: key, 2: value}`.
fn map_entry(b: &[u8]) -> Result<(String, &[u8]), Status> {
    let mut r = Reader { b };
    let (mut k, mut v): (String, &[u8]) = (String::new(), &[]);
    while let Some((num, _, _, bytes)) = r.field()? {
        match num {
            1 => k = string(bytes)?,
            2 => v = bytes,
            _ => return Err(unsupported("map entry")),
        }
    }
    Ok((k, v))
}

fn quantity(b: &[u8]) -> Result<Value, Status> {
    let mut r = Reader { b };
    let mut s = String::new();
    while let Some((num, _, _, bytes)) = r.field()? {
        if num == 1 {
            s = string(bytes)?;
        }
    }
    Ok(json!(s))
}

fn decode(b: &[u8], schema: &[F]) -> Result<Value, Status> {
    let mut out = Map::new();
    let mut r = Reader { b };
    while let Some((num, wire, int, bytes)) = r.field()? {
        let Some(&F(_, name, ty, repeated)) = schema.iter().find(|f| f.0 == num) else {
            // Go writes every non-pointer field, zero or not; a zero value says nothing.
            let zero = (wire == 0 && int == 0) || (wire == 2 && bytes.is_empty());
            if zero {
                continue;
            }
            return Err(unsupported(&format!("field number {num}")));
        };
        let value = match ty {
            Str => {
                let s = string(bytes)?;
                if s.is_empty() && !repeated {
                    continue;
                }
                json!(s)
            }
            // Go writes non-pointer scalars even when zero; JSON would omit them. Zero in
            // a pointer field (replicas: 0) is meant and kept.
            I32 | I64 | Bool if int == 0 && !repeated && !POINTERS.contains(&name) => continue,
            I32 => json!(int as i64 as i32),
            I64 => json!(int as i64),
            Bool => json!(int != 0),
            Msg(inner) => decode(bytes, inner)?,
            MapStr | MapBytes | MapQuantity => {
                let (k, v) = map_entry(bytes)?;
                let v = match ty {
                    MapStr => json!(string(v)?),
                    MapBytes => json!(STANDARD.encode(v)),
                    _ => quantity(v)?,
                };
                let m = out.entry(name).or_insert_with(|| json!({}));
                m[k] = v;
                continue;
            }
            IntOrString => {
                let mut inner = Reader { b: bytes };
                let (mut kind, mut iv, mut sv) = (0u64, 0i64, String::new());
                while let Some((n, _, i, s)) = inner.field()? {
                    match n {
                        1 => kind = i,
                        2 => iv = i64::from(i as i64 as i32),
                        3 => sv = string(s)?,
                        _ => return Err(unsupported("IntOrString")),
                    }
                }
                if kind == 1 { json!(sv) } else { json!(iv) }
            }
            Time => {
                let mut inner = Reader { b: bytes };
                let mut secs = 0i64;
                while let Some((n, _, i, _)) = inner.field()? {
                    if n == 1 {
                        secs = i as i64;
                    }
                }
                // Go's zero time goes out as no seconds at all (or as year 1).
                if secs <= TIME_SECONDS_OF_GO_ZERO || secs == 0 {
                    continue;
                }
                json!(rfc3339(secs))
            }
        };
        if repeated {
            match out.entry(name).or_insert_with(|| json!([])) {
                Value::Array(a) => a.push(value),
                other => *other = json!([value]),
            }
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Ok(Value::Object(out))
}

/// Whether `content_type` is Kubernetes protobuf.
pub(crate) fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or("").trim() == "application/vnd.kubernetes.protobuf"
}

/// Decodes a protobuf request body into the object's JSON.
pub(crate) fn to_json(body: &[u8]) -> Result<Vec<u8>, Status> {
    let rest = body
        .strip_prefix(b"k8s\0")
        .ok_or_else(|| unsupported("no k8s envelope"))?;
    let mut r = Reader { b: rest };
    let (mut api_version, mut kind, mut raw, mut encoding) =
        (String::new(), String::new(), &[][..], String::new());
    while let Some((num, _, _, bytes)) = r.field()? {
        match num {
            1 => {
                let mut tm = Reader { b: bytes };
                while let Some((n, _, _, s)) = tm.field()? {
                    match n {
                        1 => api_version = string(s)?,
                        2 => kind = string(s)?,
                        _ => {}
                    }
                }
            }
            2 => raw = bytes,
            3 => encoding = string(bytes)?,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(unsupported(&format!("content encoding {encoding}")));
    }
    let schema = top_level(&api_version, &kind)
        .ok_or_else(|| unsupported(&format!("{api_version} {kind}")))?;
    let mut obj = decode(raw, schema)?;
    obj["apiVersion"] = json!(api_version);
    obj["kind"] = json!(kind);
    serde_json::to_vec(&obj).map_err(|e| unsupported(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(num: u32, data: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(num) << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    fn int_field(num: u32, v: u64, out: &mut Vec<u8>) {
        varint(u64::from(num) << 3, out);
        varint(v, out);
    }

    #[test]
    fn decodes_a_service_in_its_envelope() {
        let mut meta = Vec::new();
        bytes_field(1, b"web", &mut meta);
        bytes_field(2, b"", &mut meta);
        let mut label = Vec::new();
        bytes_field(1, b"app", &mut label);
        bytes_field(2, b"web", &mut label);
        bytes_field(11, &label, &mut meta);
        let mut tp = Vec::new();
        int_field(1, 0, &mut tp);
        int_field(2, 8080, &mut tp);
        let mut port = Vec::new();
        bytes_field(1, b"80-8080", &mut port);
        int_field(3, 80, &mut port);
        bytes_field(4, &tp, &mut port);
        let mut spec = Vec::new();
        bytes_field(1, &port, &mut spec);
        bytes_field(4, b"ClusterIP", &mut spec);
        let mut svc = Vec::new();
        bytes_field(1, &meta, &mut svc);
        bytes_field(2, &spec, &mut svc);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"Service", &mut tm);
        let mut unknown = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut unknown);
        bytes_field(2, &svc, &mut unknown);
        let v: Value = serde_json::from_slice(&to_json(&unknown).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "labels": {"app": "web"}},
                "spec": {"ports": [{"name": "80-8080", "port": 80, "targetPort": 8080}], "type": "ClusterIP"}})
        );
        // A field outside the schema refuses rather than loses data.
        let mut odd = svc.clone();
        int_field(99, 1, &mut odd);
        let mut unknown = b"k8s\0".to_vec();
        bytes_field(1, &tm, &mut unknown);
        bytes_field(2, &odd, &mut unknown);
        assert_eq!(to_json(&unknown).unwrap_err().code, 415);
    }
}
