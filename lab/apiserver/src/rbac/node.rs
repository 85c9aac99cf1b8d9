//! The Node authorizer: what a kubelet (`system:node:NAME` in `system:nodes`) may do,
//! as kube-apiserver's decides it. A node reads the Secrets, ConfigMaps, claims and
//! ServiceAccount tokens of the pods bound to it (kube-apiserver keeps a graph of those
//! references; here an index of the bound pods, kept current by every commit), reads
//! only its own Node and its own pods (lists of pods with `spec.nodeName=NAME`), and is
//! held to the `system:node` rules for everything else. What it may write of those is
//! then narrowed by the NodeRestriction admission plugin (`admission.rs`).

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Deserialize;

use super::Decision;
use super::attributes::Attributes;
use super::rules::Rule;
use crate::api::User;

/// Where pods are stored.
pub(crate) const PODS: &str = "core/pods/";

/// The namespace of node Leases.
const NODE_LEASES: &str = "kube-node-lease";

/// The node a user is, if it is one: `system:node:NAME` in the group `system:nodes`.
pub(crate) fn node_name(user: &User) -> Option<&str> {
    let name = user.name.strip_prefix("system:node:")?;
    user.groups
        .iter()
        .any(|g| g == "system:nodes")
        .then_some(name)
}

/// The rules every node holds for what the authorizer does not decide by the graph
/// (kube-apiserver's `NodeRules`, also the `system:node` ClusterRole's).
pub(crate) fn node_rules() -> Vec<Rule> {
    vec![
        Rule::new(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        Rule::new(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews", "subjectaccessreviews"],
        ),
        Rule::new(&["get", "list", "watch"], &[""], &["services"]),
        Rule::new(&["create", "get", "list", "watch"], &[""], &["nodes"]),
        Rule::new(&["patch", "update"], &[""], &["nodes/status"]),
        Rule::new(&["patch", "update"], &[""], &["nodes"]),
        Rule::new(
            &["create", "patch", "update"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        Rule::new(&["get", "list", "watch"], &[""], &["pods"]),
        Rule::new(&["create", "delete"], &[""], &["pods"]),
        Rule::new(&["patch", "update"], &[""], &["pods/status"]),
        Rule::new(&["create"], &[""], &["pods/eviction"]),
        Rule::new(&["get", "list", "watch"], &[""], &["configmaps", "secrets"]),
        Rule::new(
            &["get"],
            &[""],
            &["persistentvolumeclaims", "persistentvolumes"],
        ),
        Rule::new(&["get"], &[""], &["endpoints"]),
        Rule::new(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        Rule::new(
            &["create", "delete", "get", "patch", "update"],
            &["coordination.k8s.io"],
            &["leases"],
        ),
        Rule::new(&["get"], &["storage.k8s.io"], &["volumeattachments"]),
        Rule::new(&["create"], &[""], &["serviceaccounts/token"]),
        Rule::new(
            &["get", "patch", "update"],
            &[""],
            &["persistentvolumeclaims/status"],
        ),
        Rule::new(
            &["get", "list", "watch"],
            &["storage.k8s.io"],
            &["csidrivers"],
        ),
        Rule::new(
            &["create", "delete", "get", "patch", "update"],
            &["storage.k8s.io"],
            &["csinodes"],
        ),
        Rule::new(
            &["get", "list", "watch"],
            &["node.k8s.io"],
            &["runtimeclasses"],
        ),
    ]
}

/// What a bound pod references: the objects its node may read because of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodRefs {
    pub(crate) node: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    service_account: String,
    secrets: BTreeSet<String>,
    config_maps: BTreeSet<String>,
    claims: BTreeSet<String>,
}

/// A name reference (`{name}`, `{secretName}`, `{claimName}`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NameRef {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvSource {
    secret_key_ref: Option<NameRef>,
    config_map_key_ref: Option<NameRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Env {
    value_from: Option<EnvSource>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvFrom {
    secret_ref: Option<NameRef>,
    config_map_ref: Option<NameRef>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    env: Option<Vec<Env>>,
    env_from: Option<Vec<EnvFrom>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretVolume {
    secret_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimVolume {
    claim_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Projection {
    secret: Option<NameRef>,
    config_map: Option<NameRef>,
}

#[derive(Debug, Default, Deserialize)]
struct Projected {
    sources: Option<Vec<Projection>>,
}

/// A volume source that names a Secret in `secretRef` (cephfs, cinder, flexVolume,
/// iscsi, rbd, scaleIO, storageos) or `nodePublishSecretRef` (csi).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SecretRefVolume {
    secret_ref: Option<NameRef>,
    node_publish_secret_ref: Option<NameRef>,
    secret_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    secret: Option<SecretVolume>,
    config_map: Option<NameRef>,
    projected: Option<Projected>,
    persistent_volume_claim: Option<ClaimVolume>,
    azure_file: Option<SecretRefVolume>,
    cephfs: Option<SecretRefVolume>,
    cinder: Option<SecretRefVolume>,
    flex_volume: Option<SecretRefVolume>,
    iscsi: Option<SecretRefVolume>,
    rbd: Option<SecretRefVolume>,
    #[serde(rename = "scaleIO")]
    scale_io: Option<SecretRefVolume>,
    storageos: Option<SecretRefVolume>,
    csi: Option<SecretRefVolume>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    service_account_name: Option<String>,
    image_pull_secrets: Option<Vec<NameRef>>,
    containers: Option<Vec<Container>>,
    init_containers: Option<Vec<Container>>,
    ephemeral_containers: Option<Vec<Container>>,
    volumes: Option<Vec<Volume>>,
}

#[derive(Debug, Default, Deserialize)]
struct PodMeta {
    name: Option<String>,
    namespace: Option<String>,
    uid: Option<String>,
}

/// The part of a Pod the index reads (decoding skips the rest).
#[derive(Debug, Default, Deserialize)]
struct Pod {
    metadata: Option<PodMeta>,
    spec: Option<PodSpec>,
}

impl PodRefs {
    pub(crate) fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    pub(crate) fn has_config_maps(&self) -> bool {
        !self.config_maps.is_empty()
    }

    pub(crate) fn has_claims(&self) -> bool {
        !self.claims.is_empty()
    }

    /// What a stored pod references, if it is bound to a node.
    pub(crate) fn of(bytes: &[u8]) -> Option<PodRefs> {
        let pod: Pod = serde_json::from_slice(bytes).ok()?;
        let spec = pod.spec?;
        let node = spec.node_name.filter(|n| !n.is_empty())?;
        let meta = pod.metadata.unwrap_or_default();
        let mut refs = PodRefs {
            node,
            namespace: meta.namespace.unwrap_or_default(),
            name: meta.name.unwrap_or_default(),
            uid: meta.uid.unwrap_or_default(),
            service_account: spec.service_account_name.unwrap_or_default(),
            ..PodRefs::default()
        };
        let mut secret = |n: &Option<String>| {
            if let Some(n) = n.as_ref().filter(|n| !n.is_empty()) {
                refs.secrets.insert(n.clone());
            }
        };
        for r in spec.image_pull_secrets.iter().flatten() {
            secret(&r.name);
        }
        let containers = spec
            .containers
            .iter()
            .chain(&spec.init_containers)
            .chain(&spec.ephemeral_containers)
            .flatten();
        let mut config_maps = Vec::new();
        for c in containers {
            for e in c.env_from.iter().flatten() {
                if let Some(r) = &e.secret_ref {
                    secret(&r.name);
                }
                if let Some(r) = &e.config_map_ref {
                    config_maps.push(r.name.clone());
                }
            }
            for e in c.env.iter().flatten() {
                if let Some(v) = &e.value_from {
                    if let Some(r) = &v.secret_key_ref {
                        secret(&r.name);
                    }
                    if let Some(r) = &v.config_map_key_ref {
                        config_maps.push(r.name.clone());
                    }
                }
            }
        }
        let mut claims = Vec::new();
        for v in spec.volumes.iter().flatten() {
            if let Some(s) = &v.secret {
                secret(&s.secret_name);
            }
            if let Some(c) = &v.config_map {
                config_maps.push(c.name.clone());
            }
            for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
                if let Some(s) = &p.secret {
                    secret(&s.name);
                }
                if let Some(c) = &p.config_map {
                    config_maps.push(c.name.clone());
                }
            }
            if let Some(c) = &v.persistent_volume_claim {
                claims.push(c.claim_name.clone());
            }
            let with_secret_refs = [
                &v.azure_file,
                &v.cephfs,
                &v.cinder,
                &v.flex_volume,
                &v.iscsi,
                &v.rbd,
                &v.scale_io,
                &v.storageos,
                &v.csi,
            ];
            for s in with_secret_refs.into_iter().flatten() {
                secret(&s.secret_name);
                if let Some(r) = &s.secret_ref {
                    secret(&r.name);
                }
                if let Some(r) = &s.node_publish_secret_ref {
                    secret(&r.name);
                }
            }
        }
        let names = |v: Vec<Option<String>>| -> BTreeSet<String> {
            v.into_iter().flatten().filter(|n| !n.is_empty()).collect()
        };
        refs.config_maps = names(config_maps);
        refs.claims = names(claims);
        Some(refs)
    }
}

/// The pods bound to each node, with what they reference.
#[derive(Debug, Default)]
pub(crate) struct Pods {
    by_key: HashMap<String, PodRefs>,
    by_node: HashMap<String, HashSet<String>>,
}

/// A kind of object a node reaches through its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Pod,
    Secret,
    ConfigMap,
    Claim,
    ServiceAccount,
}

impl Pods {
    /// Takes in the stored state of the pod at `key` (`None`: deleted).
    pub(crate) fn update(&mut self, key: &str, object: Option<&[u8]>) {
        if !key.starts_with(PODS) {
            return;
        }
        let refs = object.and_then(PodRefs::of);
        if let Some(old) = self.by_key.get(key) {
            if refs.as_ref() == Some(old) {
                return;
            }
            if let Some(keys) = self.by_node.get_mut(&old.node) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_node.remove(&old.node);
                }
            }
            self.by_key.remove(key);
        }
        if let Some(r) = refs {
            self.by_node
                .entry(r.node.clone())
                .or_default()
                .insert(key.to_string());
            self.by_key.insert(key.to_string(), r);
        }
    }

    /// Whether a pod bound to `node` leads to the object (`namespace`/`name` of kind
    /// `via`), as kube-apiserver's graph has a path from that object to the node.
    fn related(&self, node: &str, via: Via, namespace: &str, name: &str) -> bool {
        let Some(keys) = self.by_node.get(node) else {
            return false;
        };
        keys.iter()
            .filter_map(|k| self.by_key.get(k))
            .filter(|p| p.namespace == namespace)
            .any(|p| match via {
                Via::Pod => p.name == name,
                Via::Secret => p.secrets.contains(name),
                Via::ConfigMap => p.config_maps.contains(name),
                Via::Claim => p.claims.contains(name),
                Via::ServiceAccount => p.service_account == name,
            })
    }
}

fn deny(reason: impl Into<String>) -> Decision {
    Decision::NoOpinion(reason.into())
}

/// The Node authorizer's decision for `node`'s request `a`.
pub(crate) fn authorize(pods: &Pods, node: &str, a: &Attributes<'_>) -> Decision {
    if let Some(r) = &a.resource {
        let verb = a.verb.as_str();
        let sub = r.subresource.as_str();
        let related = |via: Via| {
            if r.name.is_empty() {
                return deny("No Object name found");
            }
            if pods.related(node, via, &r.namespace, &r.name) {
                Decision::Allow(String::new())
            } else {
                deny(format!(
                    "no relationship found between node '{node}' and this object"
                ))
            }
        };
        let get_only = |via: Via| {
            if verb != "get" {
                deny("can only get individual resources of this type")
            } else if !sub.is_empty() {
                deny("cannot get subresource")
            } else {
                related(via)
            }
        };
        match (r.group.as_str(), r.resource.as_str()) {
            ("", "secrets" | "configmaps") => {
                let via = if r.resource == "secrets" {
                    Via::Secret
                } else {
                    Via::ConfigMap
                };
                return if !matches!(verb, "get" | "list" | "watch") {
                    deny("can only read resources of this type")
                } else if !sub.is_empty() {
                    deny("cannot read subresource")
                } else if r.namespace.is_empty() {
                    deny("can only read namespaced object of this type")
                } else {
                    related(via)
                };
            }
            ("", "persistentvolumeclaims") if sub == "status" => {
                return if matches!(verb, "update" | "patch") {
                    related(Via::Claim)
                } else {
                    deny("can only get/update/patch this type")
                };
            }
            ("", "persistentvolumeclaims") => return get_only(Via::Claim),
            // Nothing binds a claim to a PersistentVolume or attaches one here, and
            // ResourceClaims are not served: nothing leads a node to one.
            ("", "persistentvolumes")
            | ("resource.k8s.io", "resourceclaims")
            | ("storage.k8s.io", "volumeattachments") => {
                return if verb != "get" {
                    deny("can only get individual resources of this type")
                } else if !sub.is_empty() {
                    deny("cannot get subresource")
                } else {
                    deny(format!(
                        "no relationship found between node '{node}' and this object"
                    ))
                };
            }
            ("", "serviceaccounts") => {
                return if verb != "create" || r.name.is_empty() {
                    deny("can only create tokens for individual service accounts")
                } else if sub != "token" {
                    deny("can only create token subresource of serviceaccount")
                } else {
                    related(Via::ServiceAccount)
                };
            }
            ("coordination.k8s.io", "leases") => {
                return if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                    deny("can only get, create, update, patch, or delete a node lease")
                } else if r.namespace != NODE_LEASES {
                    deny(format!(
                        "can only access leases in the {NODE_LEASES:?} system namespace"
                    ))
                } else if verb != "create" && r.name != node {
                    deny("can only access node lease with the same name as the requesting node")
                } else {
                    Decision::Allow(String::new())
                };
            }
            ("storage.k8s.io", "csinodes") => {
                return if !matches!(verb, "get" | "create" | "update" | "patch" | "delete") {
                    deny("can only get, create, update, patch, or delete a CSINode")
                } else if !sub.is_empty() {
                    deny("cannot authorize CSINode subresources")
                } else if verb != "create" && r.name != node {
                    deny("can only access CSINode with the same name as the requesting node")
                } else {
                    Decision::Allow(String::new())
                };
            }
            ("", "nodes") => {
                return match (sub, verb) {
                    ("", "create" | "update" | "patch") | ("status", "update" | "patch") => {
                        Decision::Allow(String::new())
                    }
                    ("", "get" | "list" | "watch") if r.name == node => {
                        Decision::Allow(String::new())
                    }
                    ("", "get" | "list" | "watch") if r.name.is_empty() => deny(format!(
                        "node '{node}' cannot read all nodes, only its own Node object"
                    )),
                    ("", "get" | "list" | "watch") => deny(format!(
                        "node '{node}' cannot read '{}', only its own Node object",
                        r.name
                    )),
                    _ => deny(""),
                };
            }
            ("", "pods") => {
                return match (sub, verb) {
                    ("", "get") => get_only(Via::Pod),
                    ("", "list" | "watch") => {
                        if r.fields
                            .iter()
                            .any(|(f, v)| f == "spec.nodeName" && v == node)
                        {
                            Decision::Allow(String::new())
                        } else if !r.name.is_empty() {
                            related(Via::Pod)
                        } else {
                            deny("can only list/watch pods with spec.nodeName field selector")
                        }
                    }
                    ("", "create" | "delete")
                    | ("status", "update" | "patch")
                    | ("eviction", "create") => Decision::Allow(String::new()),
                    _ => deny(""),
                };
            }
            _ => {}
        }
    }
    if node_rules().iter().any(|rule| rule.allows(a)) {
        Decision::Allow(String::new())
    } else {
        deny("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rbac::attributes::ResourceAttributes;
    use serde_json::json;

    fn node_user(n: &str) -> User {
        User {
            name: format!("system:node:{n}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
        }
    }

    fn pods() -> Pods {
        let mut p = Pods::default();
        let pod = json!({
            "metadata": {"name": "web", "namespace": "app", "uid": "u1"},
            "spec": {
                "nodeName": "node-1",
                "serviceAccountName": "web-sa",
                "imagePullSecrets": [{"name": "pull"}],
                "containers": [{"name": "c", "env": [
                    {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}},
                    {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "env-cm", "key": "k"}}},
                    {"name": "C", "value": "x"}],
                    "envFrom": [{"configMapRef": {"name": "all-cm"}}]}],
                "volumes": [
                    {"name": "s", "secret": {"secretName": "vol-secret"}},
                    {"name": "p", "projected": {"sources": [{"configMap": {"name": "proj-cm"}}, {"serviceAccountToken": {"path": "token"}}]}},
                    {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        });
        p.update(
            "core/pods/app/web",
            Some(&serde_json::to_vec(&pod).unwrap()),
        );
        let unbound = json!({"metadata": {"name": "waiting", "namespace": "app"},
            "spec": {"containers": [], "volumes": [{"name": "s", "secret": {"secretName": "other"}}]}});
        p.update(
            "core/pods/app/waiting",
            Some(&serde_json::to_vec(&unbound).unwrap()),
        );
        p
    }

    fn ask(
        p: &Pods,
        node: &str,
        verb: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> Decision {
        let u = node_user(node);
        // `group/resource` for a resource outside the core group.
        let (group, resource) = resource.rsplit_once('/').unwrap_or(("", resource));
        authorize(
            p,
            node,
            &Attributes::resource(
                &u,
                verb,
                ResourceAttributes {
                    namespace: ns.into(),
                    group: group.into(),
                    resource: resource.into(),
                    subresource: sub.into(),
                    name: name.into(),
                    version: "v1".into(),
                    ..ResourceAttributes::default()
                },
            ),
        )
    }

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow(_))
    }

    #[test]
    fn identity() {
        assert_eq!(node_name(&node_user("node-1")), Some("node-1"));
        let not_in_group = User {
            name: "system:node:x".into(),
            groups: vec![],
        };
        assert_eq!(node_name(&not_in_group), None);
        assert_eq!(node_name(&User::admin()), None);
    }

    #[test]
    fn a_node_reads_what_its_pods_reference() {
        let p = pods();
        for (res, name) in [
            ("secrets", "pull"),
            ("secrets", "env-secret"),
            ("secrets", "vol-secret"),
            ("configmaps", "env-cm"),
            ("configmaps", "all-cm"),
            ("configmaps", "proj-cm"),
            ("persistentvolumeclaims", "data"),
        ] {
            assert!(
                allowed(ask(&p, "node-1", "get", res, "", "app", name)),
                "{res}/{name}"
            );
            // Not another node, and not in another namespace.
            assert_eq!(
                ask(&p, "node-2", "get", res, "", "app", name),
                Decision::NoOpinion(
                    "no relationship found between node 'node-2' and this object".into()
                )
            );
            assert!(!allowed(ask(&p, "node-1", "get", res, "", "other", name)));
        }
        // A pod that is not bound gives its node nothing yet.
        assert!(!allowed(ask(
            &p, "node-1", "get", "secrets", "", "app", "other"
        )));
        assert_eq!(
            ask(&p, "node-1", "list", "secrets", "", "app", ""),
            Decision::NoOpinion("No Object name found".into())
        );
        assert_eq!(
            ask(&p, "node-1", "update", "secrets", "", "app", "pull"),
            Decision::NoOpinion("can only read resources of this type".into())
        );
        assert!(allowed(ask(
            &p,
            "node-1",
            "create",
            "serviceaccounts",
            "token",
            "app",
            "web-sa"
        )));
        assert!(!allowed(ask(
            &p,
            "node-1",
            "create",
            "serviceaccounts",
            "token",
            "app",
            "default"
        )));
        assert_eq!(
            ask(&p, "node-1", "get", "serviceaccounts", "", "app", "web-sa"),
            Decision::NoOpinion("can only create tokens for individual service accounts".into())
        );
    }

    #[test]
    fn nodes_pods_and_leases() {
        let mut p = pods();
        assert!(allowed(ask(&p, "node-1", "get", "nodes", "", "", "node-1")));
        assert_eq!(
            ask(&p, "node-1", "get", "nodes", "", "", "node-2"),
            Decision::NoOpinion(
                "node 'node-1' cannot read 'node-2', only its own Node object".into()
            )
        );
        assert_eq!(
            ask(&p, "node-1", "list", "nodes", "", "", ""),
            Decision::NoOpinion(
                "node 'node-1' cannot read all nodes, only its own Node object".into()
            )
        );
        // Writes to Nodes and pod status pass here; NodeRestriction narrows them.
        assert!(allowed(ask(
            &p, "node-1", "patch", "nodes", "status", "", "node-2"
        )));
        assert!(!allowed(ask(
            &p, "node-1", "delete", "nodes", "", "", "node-1"
        )));
        assert!(allowed(ask(&p, "node-1", "get", "pods", "", "app", "web")));
        assert!(!allowed(ask(&p, "node-2", "get", "pods", "", "app", "web")));
        assert!(!allowed(ask(&p, "node-1", "list", "pods", "", "", "")));
        assert!(allowed(ask(
            &p, "node-1", "patch", "pods", "status", "app", "web"
        )));
        assert!(!allowed(ask(
            &p, "node-1", "get", "pods", "log", "app", "web"
        )));
        let leases = "coordination.k8s.io/leases";
        assert!(allowed(ask(
            &p,
            "node-1",
            "patch",
            leases,
            "",
            "kube-node-lease",
            "node-1"
        )));
        assert!(allowed(ask(
            &p,
            "node-1",
            "create",
            leases,
            "",
            "kube-node-lease",
            ""
        )));
        assert_eq!(
            ask(
                &p,
                "node-1",
                "patch",
                leases,
                "",
                "kube-node-lease",
                "node-2"
            ),
            Decision::NoOpinion(
                "can only access node lease with the same name as the requesting node".into()
            )
        );
        assert!(!allowed(ask(
            &p, "node-1", "get", leases, "", "default", "node-1"
        )));
        // Static rules: Services are readable, Deployments are not.
        assert!(allowed(ask(&p, "node-1", "list", "services", "", "", "")));
        assert!(!allowed(ask(
            &p,
            "node-1",
            "list",
            "discovery.k8s.io/endpointslices",
            "",
            "",
            ""
        )));
        // Unbinding (deletion) removes what the pod gave.
        p.update("core/pods/app/web", None);
        assert!(!allowed(ask(
            &p, "node-1", "get", "secrets", "", "app", "pull"
        )));
    }
}
