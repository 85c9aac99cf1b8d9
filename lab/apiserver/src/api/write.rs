//! Writes: create, update, patch and server-side apply, and what every write shares:
//! decoding the body into an object of the path's kind, `fieldValidation`, the
//! server's metadata, validation and the storage work of particular kinds.

use http::Response;
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response, with_warnings};
use super::{Req, State, Target};
use crate::error::{Cause, Error, Status};
use crate::patch::{self, PatchType};
use crate::resources::{self, ResourceType};
use crate::service;
use crate::store::{EventType, Txn};
use crate::util::{now_secs, rfc3339, str_at};
use crate::{apply, strict, validate};

/// Parses a request body into an object of `rt`'s kind (400 for anything else).
pub(super) fn parse_body(t: &Target, body: &[u8]) -> Result<Value, Error> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"))
    })?;
    let Value::Object(_) = v else {
        return Err(Status::bad_request("the body of the request must be a JSON object").into());
    };
    let rt = t.rt;
    let mut v = v;
    if let Some(kind) = v
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        && kind != rt.kind
    {
        return Err(Status::bad_request(format!(
            "the kind in the request body ({kind}) does not match the kind of the resource {} ({})",
            rt.resource, rt.kind
        ))
        .into());
    }
    if let Some(av) = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        && av != rt.api_version()
    {
        return Err(Status::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        ))
        .into());
    }
    v["kind"] = json!(rt.kind);
    v["apiVersion"] = json!(rt.api_version());
    if !v["metadata"].is_object() {
        if v["metadata"].is_null() {
            v["metadata"] = json!({});
        } else {
            return Err(Status::bad_request("metadata must be an object").into());
        }
    }
    // Namespace: the URL's; a different one in the body is refused.
    let body_ns = str_at(&v, "metadata.namespace").unwrap_or("").to_string();
    if rt.namespaced {
        let ns = t.namespace.clone().unwrap_or_default();
        if ns.is_empty() {
            return Err(Status::bad_request(
                "the namespace of the object must be given in the URL",
            )
            .into());
        }
        if !body_ns.is_empty() && body_ns != ns {
            return Err(Status::bad_request("the namespace of the provided object does not match the namespace sent on the request").into());
        }
        v["metadata"]["namespace"] = json!(ns);
    } else if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    Ok(v)
}

/// With `fieldValidation=Strict`, refuses unknown fields (400, kube-apiserver's words);
/// with `Warn`, returns them as warnings for the response's `Warning` headers.
pub(super) fn check_strict(
    rt: &ResourceType,
    r: &Req,
    obj: &Value,
    prefix: bool,
) -> Result<Vec<String>, Error> {
    let mode = r.param("fieldValidation");
    if !matches!(mode, Some("Strict" | "Warn")) {
        return Ok(Vec::new());
    }
    let unknown = match (rt.custom, rt.schema) {
        (true, Some(schema)) => crate::schema::unknown_fields(schema, obj),
        (true, None) => Vec::new(),
        (false, _) => strict::unknown_fields(rt.group, rt.kind, obj),
    };
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    if mode == Some("Warn") {
        return Ok(unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect());
    }
    let msg = strict::message(&unknown);
    let msg = if prefix {
        format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {msg}",
            kind = rt.kind,
            v = rt.version
        )
    } else {
        msg
    };
    Err(Status::bad_request(msg).into())
}

/// The longest `generateName` kept before its random suffix (kube's
/// `maxGeneratedNameLength`: 63 less the 5 random characters).
const MAX_GENERATED_BASE: usize = 58;

fn random_suffix() -> String {
    // kube's generateName alphabet: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Resets what clients may not set on create and fills the server's metadata.
pub(crate) fn prepare_create(rt: &ResourceType, obj: &mut Value) {
    let m = &mut obj["metadata"];
    m["uid"] = json!(uuid::Uuid::new_v4().to_string());
    m["creationTimestamp"] = json!(rfc3339(now_secs()));
    m["generation"] = json!(1);
    if let Some(m) = m.as_object_mut() {
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
    match rt.kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            crate::defaults::pod_admission(obj);
        }
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "CronJob"
        | "ReplicationController" => {
            obj["status"] = json!({});
        }
        "Job" => {
            obj["status"] = json!({});
            job_selector(obj);
        }
        "PersistentVolume" | "PersistentVolumeClaim" => {
            obj["status"] = json!({"phase": "Pending"});
        }
        "Ingress" => obj["status"] = json!({"loadBalancer": {}}),
        _ => {}
    }
}

/// A new Job's selector, unless it chose its own (`manualSelector`): its uid, with the
/// labels kube-apiserver puts on its pod template (the job controller and
/// `kubectl logs job/NAME` find its pods by them).
fn job_selector(job: &mut Value) {
    if job["spec"]["manualSelector"] == true {
        return;
    }
    let uid = job["metadata"]["uid"].clone();
    let name = job["metadata"]["name"].clone();
    job["spec"]["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}});
    let labels = &mut job["spec"]["template"]["metadata"]["labels"];
    if !labels.is_object() {
        *labels = json!({});
    }
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", &uid),
        ("batch.kubernetes.io/job-name", &name),
        ("controller-uid", &uid),
        ("job-name", &name),
    ] {
        labels[k] = v.clone();
    }
}

/// kube-apiserver's `Priority` admission: a new pod's `priorityClassName` names a
/// PriorityClass whose value and preemption policy the pod gets; a pod without one gets
/// the global default class, if there is one. A class that does not exist refuses the pod.
fn admit_priority(txn: &Txn, pod: &mut Value) -> Result<(), Error> {
    let rt = resources::lookup("scheduling.k8s.io", "v1", "priorityclasses")
        .ok_or_else(Status::not_found_path)?;
    let class = match pod["spec"]["priorityClassName"]
        .as_str()
        .filter(|n| !n.is_empty())
    {
        Some(name) => match txn.get(&rt.key("", name))? {
            Some(class) => Some(class),
            None => {
                let pod_name = str_at(pod, "metadata.name").unwrap_or("");
                return Err(Status::new(
                    403,
                    "Forbidden",
                    format!("pods \"{pod_name}\" is forbidden: no PriorityClass with name {name} was found"),
                )
                .into());
            }
        },
        None => txn
            .scan(&format!("{}/", rt.storage_prefix()))?
            .into_iter()
            .map(|(_, class)| class)
            .find(|class| class["globalDefault"] == json!(true)),
    };
    if let Some(class) = class {
        let spec = &mut pod["spec"];
        spec["priorityClassName"] = class["metadata"]["name"].clone();
        spec["priority"] = class["value"].clone();
        if let Some(policy) = class["preemptionPolicy"].as_str() {
            spec["preemptionPolicy"] = json!(policy);
        }
    }
    Ok(())
}

/// Validation and kind-specific storage work (service allocation) for a write.
fn check_write(
    s: &State,
    txn: &Txn,
    t: &Target,
    key: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Error> {
    let rt = t.rt;
    let name = str_at(obj, "metadata.name").unwrap_or("").to_string();
    if let Some(old) = old
        && rt.is("", "services")
    {
        service::drop_type_dependent_fields(obj, old);
    }
    let mut causes = validate::validate(rt, obj);
    if let Some(schema) = rt.schema {
        causes.extend(crate::schema::check(schema, obj));
    }
    if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
        crd_accept(obj, &mut causes);
    }
    if let Some(old) = old {
        immutable(rt, obj, old, &mut causes);
    }
    // A status write keeps the stored spec; allocation and defaults are the main resource's.
    if causes.is_empty() && rt.is("", "services") && !t.is_status() {
        causes.extend(service::prepare(txn, key, obj, old, &s.ranges)?);
    }
    if !causes.is_empty() {
        return Err(Status::invalid(rt.group, rt.kind, &name, &causes).into());
    }
    // MetalLB's validating webhook, which runs after the schema's checks.
    if rt.is(lb::crd::GROUP, "ipaddresspools") && !t.is_status() {
        let ns = str_at(obj, "metadata.namespace").unwrap_or("");
        crate::metallb::admit_pool(txn, &format!("{}/{ns}/", rt.storage_prefix()), obj)?;
    }
    Ok(())
}

/// Validates a CRD's names and marks it accepted and established, as the apiextensions
/// controllers do (there is nothing to wait for here).
fn crd_accept(crd: &mut Value, causes: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if spec["names"]["kind"].as_str().unwrap_or("").is_empty() {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    if spec["versions"].as_array().is_none_or(Vec::is_empty) {
        causes.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !causes.is_empty() {
        return;
    }
    let now = rfc3339(now_secs());
    let cond = |ty: &str, reason: &str, msg: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    let stored: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    crd["status"] = json!({
        "acceptedNames": spec["names"],
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
}

/// Fields an update may not change. (A Service's clusterIP is checked by the allocator.)
fn immutable(rt: &ResourceType, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    if rt.group == crate::rbac::RBAC_GROUP {
        crate::rbac::objects::immutable(rt.kind, new, old, causes);
    }
    if matches!(
        rt.kind,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet"
    ) && rt.group == "apps"
        && new["spec"]["selector"] != old["spec"]["selector"]
    {
        causes.push(Cause::invalid(
            "spec.selector",
            &new["spec"]["selector"],
            "field is immutable",
        ));
    }
}

pub(super) fn create(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let (obj, warnings) = create_object(t, r)?;
    store_create(s, t, r, obj, warnings)
}

/// The object a create asks for: decoded, named (`generateName`) and prepared with the
/// server's metadata; and the warnings of `fieldValidation=Warn`.
pub(super) fn create_object(t: &Target, r: &Req) -> Result<(Value, Vec<String>), Error> {
    let rt = t.rt;
    let body = r.json_body()?;
    let mut obj = parse_body(t, &body)?;
    let warnings = check_strict(rt, r, &obj, true)?;
    let mut name = str_at(&obj, "metadata.name").unwrap_or("").to_string();
    if name.is_empty() {
        let gen_name = str_at(&obj, "metadata.generateName")
            .unwrap_or("")
            .to_string();
        if gen_name.is_empty() {
            let c = Cause::required("metadata.name", "name or generateName is required");
            return Err(Status::invalid(rt.group, rt.kind, "", &[c]).into());
        }
        // kube's SimpleNameGenerator: the base is cut to 58 characters, so that the
        // name with its 5 random ones stays a valid 63-character name (an EndpointSlice
        // of a Service with a 63-character name).
        let base: String = gen_name.chars().take(MAX_GENERATED_BASE).collect();
        name = format!("{base}{}", random_suffix());
        obj["metadata"]["name"] = json!(name);
    }
    prepare_create(rt, &mut obj);
    Ok((obj, warnings))
}

/// Stores the object of a create (from [`create_object`], admitted), answering 201.
pub(super) fn store_create(
    s: &State,
    t: &Target,
    r: &Req,
    obj: Value,
    warnings: Vec<String>,
) -> Result<Response<ResponseBody>, Error> {
    let name = str_at(&obj, "metadata.name").unwrap_or("").to_string();
    let key = t.key(&name);
    let stored = s.write(r.dry_run(), |txn| {
        super::admit::create(s, txn, t, r, &obj)?;
        create_in(s, txn, t, &key, obj)
    })?;
    Ok(with_warnings(
        json_response(201, &stored, "application/json"),
        &warnings,
    ))
}

/// Stores a new object (already prepared) in `txn`: its namespace must exist, its name
/// must be free, and it must validate.
pub(super) fn create_in(
    s: &State,
    txn: &mut Txn,
    t: &Target,
    key: &str,
    mut obj: Value,
) -> Result<Value, Error> {
    let rt = t.rt;
    let name = str_at(&obj, "metadata.name").unwrap_or("").to_string();
    if let Some(ns) = t.namespace.as_deref().filter(|_| rt.namespaced) {
        let ns_key = resources::namespaces().key("", ns);
        match txn.get(&ns_key)? {
            None => return Err(Status::not_found("", "namespaces", ns).into()),
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                return Err(Status::new(
                    403,
                    "Forbidden",
                    format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", rt.resource),
                )
                .into());
            }
            Some(_) => {}
        }
    }
    if txn.get(key)?.is_some() {
        return Err(Status::already_exists(rt.group, rt.resource, &name).into());
    }
    crate::defaults::apply(rt, &mut obj);
    if rt.is("", "pods") {
        admit_priority(txn, &mut obj)?;
    }
    check_write(s, txn, t, key, &mut obj, None)?;
    crate::defaults::zero_values(rt, &mut obj);
    if crate::gc::owners_changed(&obj, None) {
        txn.note(key);
    }
    let stored = txn.put(key, obj, EventType::Added)?;
    if rt.kind == "Namespace" && rt.group.is_empty() {
        crate::bootstrap::ensure_default_service_account(txn, &name)?;
    }
    Ok(stored)
}

/// A server-side apply's configuration and options, read from the request.
pub(super) struct ApplyRequest {
    config: Value,
    manager: String,
    force: bool,
    pub(super) warnings: Vec<String>,
}

/// What a write computed from the stored object (if any) asks to store.
pub(super) enum Computed {
    /// A new object (an apply of one that does not exist yet).
    Create(Value),
    /// The new state of the stored object.
    Update(Value),
}

impl ApplyRequest {
    pub(super) fn read(t: &Target, r: &Req) -> Result<ApplyRequest, Error> {
        let rt = t.rt;
        let name = t.name.clone().unwrap_or_default();
        let manager = r.param("fieldManager").unwrap_or("").to_string();
        if manager.is_empty() {
            let c = Cause::required("fieldManager", "is required for apply patch");
            return Err(Status::invalid("meta.k8s.io", "PatchOptions", "", &[c]).into());
        }
        if serde_json::from_slice::<Value>(&r.body).is_err() {
            return Err(Status::bad_request(
                "error decoding apply configuration: only JSON apply bodies are served so far (kubectl and kube-rs send JSON)",
            )
            .into());
        }
        let mut config = parse_body(t, &r.body)?;
        let warnings = check_strict(rt, r, &config, false)?;
        let config_name = str_at(&config, "metadata.name").unwrap_or("").to_string();
        if !config_name.is_empty() && config_name != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({config_name}) does not match the name on the URL ({name})"
            ))
            .into());
        }
        config["metadata"]["name"] = json!(name);
        Ok(ApplyRequest {
            config,
            manager,
            force: r.flag("force"),
            warnings,
        })
    }

    /// The object the apply makes of the stored one (`None`: there is none yet).
    pub(super) fn compute(&self, t: &Target, old: Option<&Value>) -> Result<Computed, Error> {
        let rt = t.rt;
        let name = t.name.clone().unwrap_or_default();
        let now = rfc3339(now_secs());
        match old {
            None if t.is_status() => Err(t.not_found(&name)),
            None => {
                let live = json!({"metadata": {"name": name}});
                let mut obj = apply::apply(
                    &live,
                    &self.config,
                    &self.manager,
                    &rt.api_version(),
                    &now,
                    self.force,
                )
                .unwrap_or(self.config.clone());
                obj["kind"] = json!(rt.kind);
                obj["apiVersion"] = json!(rt.api_version());
                if let Some(ns) = &t.namespace {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                prepare_create(rt, &mut obj);
                Ok(Computed::Create(obj))
            }
            Some(old) => {
                let new = apply::apply(
                    old,
                    &self.config,
                    &self.manager,
                    &rt.api_version(),
                    &now,
                    self.force,
                )
                .map_err(|conflicts| {
                    let mut st = Status::conflict(rt.group, rt.resource, &name);
                    st.message = apply::conflict_message(&conflicts, &rt.api_version());
                    if let Some(d) = st.details.as_mut() {
                        d["causes"] = conflicts
                            .iter()
                            .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
                            .collect();
                    }
                    Error::from(st)
                })?;
                Ok(Computed::Update(new))
            }
        }
    }
}

/// Stores what a write computed from `old` (admitted): a create, or an update of
/// `old`; the response code and the stored object.
pub(super) fn store_computed(
    s: &State,
    txn: &mut Txn,
    t: &Target,
    r: &Req,
    old: Option<Value>,
    computed: Computed,
) -> Result<(u16, Value), Error> {
    let name = t.name.clone().unwrap_or_default();
    let key = t.key(&name);
    match (computed, old) {
        (Computed::Create(obj), _) => {
            super::admit::create_by_apply(s, txn, t, r, &obj)?;
            Ok((201, create_in(s, txn, t, &key, obj)?))
        }
        (Computed::Update(new), Some(old)) => {
            super::admit::update(s, txn, t, r, &old, &new)?;
            Ok((200, store_update(s, txn, t, &key, old, new)?))
        }
        (Computed::Update(_), None) => Err(t.not_found(&name)),
    }
}

/// Server-side apply: creates the object from the configuration, or merges the
/// configuration into it (see `apply.rs`).
fn apply_object(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let a = ApplyRequest::read(t, r)?;
    let key = t.key(t.name.as_deref().unwrap_or(""));
    let (code, stored) = s.write(r.dry_run(), |txn| {
        let old = txn.get(&key)?;
        let computed = a.compute(t, old.as_ref())?;
        store_computed(s, txn, t, r, old, computed)
    })?;
    Ok(with_warnings(
        json_response(code, &stored, "application/json"),
        &a.warnings,
    ))
}

/// Applies an update (`new` built from the request) to the stored object under the
/// rules of the main resource or the status subresource.
pub(super) fn store_update(
    s: &State,
    txn: &mut Txn,
    t: &Target,
    key: &str,
    old: Value,
    mut new: Value,
) -> Result<Value, Error> {
    let rt = t.rt;
    let name = str_at(&old, "metadata.name").unwrap_or("").to_string();
    let new_name = str_at(&new, "metadata.name").unwrap_or("");
    if !new_name.is_empty() && new_name != name {
        return Err(Status::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        ))
        .into());
    }
    let new_rv = str_at(&new, "metadata.resourceVersion").unwrap_or("");
    if !new_rv.is_empty() && Some(new_rv) != str_at(&old, "metadata.resourceVersion") {
        return Err(Status::conflict(rt.group, rt.resource, &name).into());
    }
    let status_only = t.is_status();
    if status_only && rt.custom {
        // A custom resource's status subresource writes its status alone.
        let st = new["status"].take();
        new = old.clone();
        new["status"] = st;
    } else if status_only {
        // A built-in type's status subresource writes its status and its metadata, as
        // kube-apiserver's status strategies do (a controller annotates with its status
        // write: MetalLB's pool, flannel's node annotations); the spec and the rest stay
        // as stored.
        let st = new["status"].take();
        let meta = new["metadata"].take();
        new = old.clone();
        new["status"] = st;
        if meta.is_object() {
            new["metadata"] = meta;
        }
    } else if rt.status {
        new["status"] = old["status"].clone();
    }
    // Server-owned metadata stays as stored; so do a pod's owner references through
    // pods/status (kube-apiserver: old kubelets corrupted them through it).
    new["metadata"]["name"] = json!(name);
    let pod_status = status_only && rt.kind == "Pod";
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ]
    .into_iter()
    .chain(pod_status.then_some("ownerReferences"))
    {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if rt.kind == "Namespace" {
        new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }
    // Defaults before the generation check: a write that only drops a defaulted
    // field changes nothing, as in kube-apiserver, which defaults what it decodes.
    crate::defaults::apply(rt, &mut new);
    if !status_only && new.get("spec") != old.get("spec") {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    check_write(s, txn, t, key, &mut new, Some(&old))?;
    crate::defaults::zero_values(rt, &mut new);
    if new == old {
        // A no-op update writes nothing and keeps the resourceVersion, as kube-apiserver does.
        return Ok(old);
    }
    if crate::gc::may_remove(rt, &new) {
        return crate::gc::remove(txn, &s.catalog.all(), rt, key, new);
    }
    if new["metadata"]["deletionTimestamp"].is_string()
        || crate::gc::owners_changed(&new, Some(&old))
    {
        // A foreground owner or terminating namespace may be waiting for this change,
        // or the garbage collector has owners to look up.
        txn.note(key);
    }
    txn.put(key, new, EventType::Modified)
}

pub(super) fn update(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let (new, warnings) = update_object(t, r)?;
    let key = t.key(&name);
    let stored = s.write(r.dry_run(), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| t.not_found(&name))?;
        super::admit::update(s, txn, t, r, &old, &new)?;
        store_update(s, txn, t, &key, old, new)
    })?;
    Ok(with_warnings(
        json_response(200, &stored, "application/json"),
        &warnings,
    ))
}

/// The object an update (PUT) asks for, and the warnings of `fieldValidation=Warn`.
pub(super) fn update_object(t: &Target, r: &Req) -> Result<(Value, Vec<String>), Error> {
    let body = r.json_body()?;
    let new = parse_body(t, &body)?;
    let warnings = check_strict(t.rt, r, &new, true)?;
    Ok((new, warnings))
}

/// The patch type of a (non-apply) patch request.
pub(super) fn patch_type(t: &Target, r: &Req) -> Result<PatchType, Error> {
    PatchType::from_content_type(&r.content_type)
        .filter(|pt| !(t.rt.custom && *pt == PatchType::Strategic))
        .ok_or_else(|| Status::unsupported_media_type(&r.content_type).into())
}

/// The stored object `old` with the request's patch applied, and the warnings of
/// `fieldValidation=Warn`.
pub(super) fn patched(
    t: &Target,
    r: &Req,
    pt: PatchType,
    old: &Value,
) -> Result<(Value, Vec<String>), Error> {
    let mut new = patch::apply(old, &r.body, pt)?;
    if !new.is_object() {
        return Err(Status::bad_request("the patch did not produce an object").into());
    }
    if new.get("kind") != old.get("kind") || new.get("apiVersion") != old.get("apiVersion") {
        return Err(Status::bad_request("a patch may not change kind or apiVersion").into());
    }
    if t.rt.namespaced {
        new["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
    }
    let warnings = check_strict(t.rt, r, &new, false)?;
    Ok((new, warnings))
}

pub(super) fn patch_object(
    s: &State,
    t: &Target,
    r: &Req,
) -> Result<Response<ResponseBody>, Error> {
    if r.content_type.starts_with("application/apply-patch") {
        return apply_object(s, t, r);
    }
    let name = t.name.clone().unwrap_or_default();
    let pt = patch_type(t, r)?;
    let key = t.key(&name);
    let mut warnings = Vec::new();
    let stored = s.write(r.dry_run(), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| t.not_found(&name))?;
        let (new, w) = patched(t, r, pt, &old)?;
        warnings = w;
        super::admit::update(s, txn, t, r, &old, &new)?;
        store_update(s, txn, t, &key, old, new)
    })?;
    Ok(with_warnings(
        json_response(200, &stored, "application/json"),
        &warnings,
    ))
}
