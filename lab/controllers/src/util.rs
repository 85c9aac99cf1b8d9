//! Helpers shared by the controllers. Most are pure (pod states, owner references,
//! label selectors, template hashes, finding orphans); a few talk to the API server:
//! [`record`] sends an event in the background and [`adopt`] writes the owner reference
//! that makes a controller take an orphan over.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

/// The current time as the API writes it.
pub fn now() -> Time {
    Time(Timestamp::now())
}

/// The pod's Ready condition is True.
pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's phase (`Pending` when not reported).
pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Running and Ready.
pub fn running_and_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && pod_ready(pod)
}

/// Has a deletionTimestamp.
pub fn terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// Neither finished (Succeeded/Failed) nor terminating: counts towards a controller's
/// replicas (kube's `IsPodActive`).
pub fn pod_active(pod: &Pod) -> bool {
    !terminating(pod) && !matches!(phase(pod), "Succeeded" | "Failed")
}

/// The uid of the object's controller (the owner reference with `controller: true`).
pub fn controller_uid<K: Resource>(obj: &K) -> Option<&str> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Whether `obj` is controlled by `owner`.
pub fn owned_by<K: Resource, O: Resource>(obj: &K, owner: &O) -> bool {
    owner
        .meta()
        .uid
        .as_deref()
        .is_some_and(|u| controller_uid(obj) == Some(u))
}

/// A controller owner reference to `owner` (`controller: true`, `blockOwnerDeletion`).
pub fn controller_ref<O: Resource<DynamicType = ()>>(owner: &O) -> OwnerReference {
    OwnerReference {
        api_version: O::api_version(&()).into_owned(),
        kind: O::kind(&()).into_owned(),
        name: owner.name_any(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub use k8s::labels::{map_selects, selects};

/// 32-bit FNV-1a, the hash kube-controller-manager uses for pod-template-hash.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// kube's `rand.SafeEncodeString`: digits mapped to an alphabet without vowels (so no
/// words) and without look-alikes.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// The pod-template-hash of a template (with the collision count mixed in): FNV-1a over
/// the template's JSON, in kube's encoding. Not byte-identical to kube's (which hashes a
/// Go dump of the struct), but stable and with the same shape.
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut t = template.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH);
        l.remove(CONTROLLER_REVISION_HASH);
    }
    let mut bytes = serde_json::to_vec(&t).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    safe_encode(&fnv32a(&bytes).to_string())
}

/// Label with a ReplicaSet's template hash.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Label with a StatefulSet's or DaemonSet's revision.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// Whether two templates are equal apart from the hash labels and API defaults (kube's
/// `EqualIgnoreHash`, which compares defaulted objects; here a template may come
/// defaulted or not, depending on how it was written).
pub fn templates_equal(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    normalized_template(a) == normalized_template(b)
}

/// A template as JSON without hash labels, without fields equal to their API defaults,
/// and without empty values.
pub fn normalized_template(t: &PodTemplateSpec) -> serde_json::Value {
    use serde_json::Value;
    let mut t = serde_json::to_value(t).unwrap_or_default();
    let remove_if = |m: &mut serde_json::Map<String, Value>, k: &str, default: Value| {
        if m.get(k) == Some(&default) {
            m.remove(k);
        }
    };
    if let Some(l) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        l.remove(POD_TEMPLATE_HASH);
        l.remove(CONTROLLER_REVISION_HASH);
    }
    if let Some(spec) = t.get_mut("spec").and_then(Value::as_object_mut) {
        remove_if(spec, "restartPolicy", "Always".into());
        remove_if(spec, "dnsPolicy", "ClusterFirst".into());
        remove_if(spec, "schedulerName", "default-scheduler".into());
        remove_if(spec, "terminationGracePeriodSeconds", 30.into());
        remove_if(spec, "enableServiceLinks", true.into());
        for key in ["containers", "initContainers"] {
            for c in spec
                .get_mut(key)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                let Some(c) = c.as_object_mut() else { continue };
                let image = c.get("image").and_then(Value::as_str).unwrap_or("");
                // kube: Always for `:latest` or no tag, IfNotPresent otherwise.
                let last = image.rsplit('/').next().unwrap_or(image);
                let pull = match last.split_once(':') {
                    None => "Always",
                    Some((_, "latest")) => "Always",
                    Some(_) if image.contains('@') => "IfNotPresent",
                    Some(_) => "IfNotPresent",
                };
                remove_if(c, "imagePullPolicy", pull.into());
                remove_if(c, "terminationMessagePath", "/dev/termination-log".into());
                remove_if(c, "terminationMessagePolicy", "File".into());
                for p in c
                    .get_mut("ports")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    if let Some(p) = p.as_object_mut() {
                        remove_if(p, "protocol", "TCP".into());
                    }
                }
            }
        }
    }
    strip_empty(t)
}

/// JSON without nulls, empty lists and empty maps (the API may drop or add either).
pub fn strip_empty(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let empty = |v: &Value| match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
        _ => false,
    };
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| (k, strip_empty(v)))
                .filter(|(_, v)| !empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_empty).collect()),
        v => v,
    }
}

/// The orphans (objects without a controller) in `ns` that `selector` matches: what a
/// controller adopts (kube's ControllerRefManager). A selector without `matchLabels`
/// adopts nothing here: too broad to take over objects safely.
pub fn orphans<'a, K: Resource>(
    objs: &'a [std::sync::Arc<K>],
    ns: &str,
    selector: &LabelSelector,
) -> Vec<&'a K> {
    if selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
    {
        return vec![];
    }
    objs.iter()
        .map(|o| &**o)
        .filter(|o| {
            o.meta().namespace.as_deref() == Some(ns)
                && o.meta().deletion_timestamp.is_none()
                && controller_uid(*o).is_none()
                && o.meta()
                    .labels
                    .as_ref()
                    .is_some_and(|l| selects(selector, l))
        })
        .collect()
}

/// The pods in `ns` whose controller is `owner`.
pub fn owned_pods<'a, O: Resource>(
    pods: &'a [std::sync::Arc<Pod>],
    ns: &str,
    owner: &O,
) -> Vec<&'a Pod> {
    pods.iter()
        .map(|p| &**p)
        .filter(|p| p.metadata.namespace.as_deref() == Some(ns) && owned_by(*p, owner))
        .collect()
}

/// Adopts the running orphan pods in `ns` that `selector` matches, as a pod controller
/// does before it counts its pods: `None` when there are none (or `owner` is being
/// deleted), else how each adoption went; the next pass counts the adopted pods.
pub async fn adopt_orphan_pods<O>(
    client: &kube::Client,
    cache: &crate::cache::Cache<Pod>,
    pods: &[std::sync::Arc<Pod>],
    selector: &LabelSelector,
    owner: &O,
) -> Option<Vec<Result<crate::cache::Check, crate::Error>>>
where
    O: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let ns = owner.meta().namespace.clone().unwrap_or_default();
    let orphans: Vec<&Pod> = orphans(pods, &ns, selector)
        .into_iter()
        .filter(|p| pod_active(p))
        .collect();
    if orphans.is_empty() || owner.meta().deletion_timestamp.is_some() {
        return None;
    }
    let mut results = Vec::with_capacity(orphans.len());
    for pod in orphans {
        results.push(adopt(client, cache, pod, owner).await);
    }
    Some(results)
}

/// Makes `owner` the controller of the orphan `obj`, keeping its other owners; the
/// resourceVersion makes it a compare-and-swap, so two controllers never both adopt.
pub async fn adopt<K, O>(
    client: &kube::Client,
    cache: &crate::cache::Cache<K>,
    obj: &K,
    owner: &O,
) -> Result<crate::cache::Check, crate::Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    O: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let (ns, name) = (
        obj.meta().namespace.clone().unwrap_or_default(),
        obj.meta().name.clone().unwrap_or_default(),
    );
    // kube's canAdopt: read the owner fresh; one deleted (or replaced) since our view
    // was taken must not adopt anything, or the object would point at a dead owner.
    let owner_name = owner.meta().name.clone().unwrap_or_default();
    let owners: kube::Api<O> = kube::Api::namespaced(client.clone(), &ns);
    let fresh = owners
        .get_opt(&owner_name)
        .await
        .map_err(crate::Error::api(format!(
            "reading {} {ns}/{owner_name}",
            O::kind(&())
        )))?;
    let alive = fresh
        .is_some_and(|f| f.meta().uid == owner.meta().uid && f.meta().deletion_timestamp.is_none());
    if !alive {
        return Ok(Box::new(|| true));
    }
    let mut refs = obj.meta().owner_references.clone().unwrap_or_default();
    refs.push(controller_ref(owner));
    let api: kube::Api<K> = kube::Api::namespaced(client.clone(), &ns);
    let patch = serde_json::json!({"metadata": {"ownerReferences": refs,
        "resourceVersion": obj.meta().resource_version}});
    let w = api
        .patch(
            &name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(patch),
        )
        .await
        .map_err(crate::Error::api(format!(
            "{} {} adopting {} {ns}/{name}",
            O::kind(&()),
            owner.meta().name.as_deref().unwrap_or_default(),
            K::kind(&())
        )))?;
    Ok(crate::cache::seen(
        cache,
        &ns,
        &name,
        w.meta().resource_version.clone(),
    ))
}

/// RFC 7386 JSON merge patch: `patch` merged into `target` (null removes a field).
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

/// Writes the merge patch `patch` onto `current` (the object as last seen) as
/// kube-controller-manager's controllers write: an update (`PUT`), of the status
/// subresource when `status`. Its resourceVersion makes it a compare-and-swap (a
/// conflict is retried by the next pass), and the controller's role needs `update`
/// only, as kube's `system:controller:*` roles give (they rarely give `patch`).
pub async fn update<K>(
    api: &kube::Api<K>,
    current: &K,
    patch: &serde_json::Value,
    status: bool,
) -> kube::Result<K>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut v = serde_json::to_value(current).map_err(kube::Error::SerdeError)?;
    merge_patch(&mut v, patch);
    let new: K = serde_json::from_value(v).map_err(kube::Error::SerdeError)?;
    let name = current.meta().name.clone().unwrap_or_default();
    let pp = kube::api::PostParams::default();
    if status {
        api.replace_status(&name, &pp, &new).await
    } else {
        api.replace(&name, &pp, &new).await
    }
}

/// `ns/name` of an object, for messages.
pub fn key<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_is_rfc_7386() {
        let mut v = serde_json::json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut v,
            &serde_json::json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"m": 1}}),
        );
        assert_eq!(
            v,
            serde_json::json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"m": 1}})
        );
    }

    #[test]
    fn fnv_matches_reference_vectors() {
        assert_eq!(fnv32a(b""), 0x811c_9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn safe_encode_uses_the_alphabet() {
        let s = safe_encode("1234567890");
        assert_eq!(s.len(), 10);
        assert!(s.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }

    #[test]
    fn label_selector_expressions() {
        let sel: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                 {"key": "x", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        let l = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert!(selects(&sel, &l(&[("app", "web"), ("tier", "a")])));
        assert!(!selects(&sel, &l(&[("app", "web"), ("tier", "c")])));
        assert!(!selects(
            &sel,
            &l(&[("app", "web"), ("tier", "a"), ("x", "1")])
        ));
        assert!(!map_selects(&BTreeMap::new(), &l(&[("app", "web")])));
    }

    #[test]
    fn hash_ignores_hash_labels() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}
        }))
        .unwrap();
        let mut t2 = t.clone();
        t2.metadata
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(POD_TEMPLATE_HASH.into(), "x".into());
        assert_eq!(template_hash(&t, None), template_hash(&t2, None));
        assert_ne!(template_hash(&t, None), template_hash(&t, Some(1)));
        assert!(templates_equal(&t, &t2));
        let defaulted: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "nginx",
                "imagePullPolicy": "Always", "terminationMessagePath": "/dev/termination-log"}]}
        }))
        .unwrap();
        assert!(templates_equal(&t, &defaulted));
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("httpd".into());
        assert!(!templates_equal(&t, &other));
    }
}
