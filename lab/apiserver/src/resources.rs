//! The resource types this server knows: group, version, plural, kind, scope. The
//! built-in ones are a static table; those that CustomResourceDefinitions define live in
//! each server's [`Catalog`].

use std::collections::HashMap;
use std::sync::RwLock;

use serde_json::Value;

/// Which naming rule `metadata.name` follows (kube-apiserver's per-kind validation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameRule {
    /// RFC 1123 subdomain: most kinds.
    Subdomain,
    /// RFC 1123 label: namespaces.
    Label,
    /// RFC 1035 label: services.
    Dns1035,
    /// Anything a path segment can hold (events are named by their source).
    Path,
}

/// One served resource.
#[derive(Debug)]
pub(crate) struct ResourceType {
    pub(crate) group: &'static str,
    pub(crate) version: &'static str,
    pub(crate) resource: &'static str,
    pub(crate) singular: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) namespaced: bool,
    pub(crate) short_names: &'static [&'static str],
    /// Has a `status` subresource (main-resource writes keep the stored status).
    pub(crate) status: bool,
    pub(crate) name_rule: NameRule,
    /// Defined by a CustomResourceDefinition.
    pub(crate) custom: bool,
    /// A custom resource's `additionalPrinterColumns`.
    pub(crate) columns: &'static [PrinterColumn],
    /// A custom resource's `openAPIV3Schema`.
    pub(crate) schema: Option<&'static Value>,
    /// The verbs it takes: every verb of a stored resource, or `create` alone for the
    /// reviews that answer a question and store nothing.
    pub(crate) verbs: &'static [&'static str],
}

/// The verbs of a stored resource, as discovery lists them.
pub(crate) const STORED_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// One of a custom resource's `additionalPrinterColumns`.
#[derive(Debug, PartialEq)]
pub(crate) struct PrinterColumn {
    pub(crate) name: String,
    pub(crate) ty: String,
    pub(crate) json_path: String,
    pub(crate) description: String,
    pub(crate) priority: i64,
}

impl ResourceType {
    /// `v1` or `apps/v1`.
    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Storage prefix: `core/pods`, `apps/deployments`.
    pub(crate) fn storage_prefix(&self) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("{g}/{}", self.resource)
    }

    /// Storage key of one object.
    pub(crate) fn key(&self, namespace: &str, name: &str) -> String {
        format!(
            "{}/{}/{name}",
            self.storage_prefix(),
            if self.namespaced { namespace } else { "" }
        )
    }

    /// Has a `scale` subresource (autoscaling/v1 Scale), as kubectl scale uses.
    pub(crate) fn has_scale(&self) -> bool {
        (self.group == "apps" && self.resource != "daemonsets")
            || self.is("", "replicationcontrollers")
    }

    /// Read-only and computed on each read (metrics.k8s.io), never stored.
    pub(crate) fn computed(&self) -> bool {
        self.group == "metrics.k8s.io"
    }

    pub(crate) fn is(&self, group: &str, resource: &str) -> bool {
        self.group == group && self.resource == resource
    }
}

macro_rules! rt {
    ($g:expr, $r:expr, $s:expr, $k:expr, $ns:expr, [$($sn:expr),*], $st:expr, $rule:ident) => {
        ResourceType {
            group: $g,
            version: "v1",
            resource: $r,
            singular: $s,
            kind: $k,
            namespaced: $ns,
            short_names: &[$($sn),*],
            status: $st,
            name_rule: NameRule::$rule,
            custom: false,
            columns: &[],
            schema: None,
            verbs: STORED_VERBS,
        }
    };
}

/// A review: created to get an answer, never stored (`authorization.k8s.io`).
macro_rules! review {
    ($g:expr, $r:expr, $s:expr, $k:expr, $ns:expr) => {
        ResourceType {
            verbs: &["create"],
            ..rt!($g, $r, $s, $k, $ns, [], false, Subdomain)
        }
    };
}

/// Every served resource, in discovery order.
pub(crate) static RESOURCES: &[ResourceType] = &[
    rt!(
        "",
        "namespaces",
        "namespace",
        "Namespace",
        false,
        ["ns"],
        true,
        Label
    ),
    rt!("", "nodes", "node", "Node", false, ["no"], true, Subdomain),
    rt!("", "pods", "pod", "Pod", true, ["po"], true, Subdomain),
    rt!(
        "",
        "services",
        "service",
        "Service",
        true,
        ["svc"],
        true,
        Dns1035
    ),
    rt!(
        "",
        "endpoints",
        "endpoints",
        "Endpoints",
        true,
        ["ep"],
        false,
        Subdomain
    ),
    rt!(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        true,
        ["cm"],
        false,
        Subdomain
    ),
    rt!(
        "",
        "secrets",
        "secret",
        "Secret",
        true,
        [],
        false,
        Subdomain
    ),
    rt!(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        true,
        ["sa"],
        false,
        Subdomain
    ),
    rt!("", "events", "event", "Event", true, ["ev"], false, Path),
    rt!(
        "",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
        ["rc"],
        true,
        Subdomain
    ),
    rt!(
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
        ["pv"],
        true,
        Subdomain
    ),
    rt!(
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
        ["pvc"],
        true,
        Subdomain
    ),
    rt!(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        true,
        ["deploy"],
        true,
        Subdomain
    ),
    rt!(
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
        ["rs"],
        true,
        Subdomain
    ),
    rt!(
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
        ["sts"],
        true,
        Subdomain
    ),
    rt!(
        "apps",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        true,
        ["ds"],
        true,
        Subdomain
    ),
    rt!("batch", "jobs", "job", "Job", true, [], true, Subdomain),
    rt!(
        "batch",
        "cronjobs",
        "cronjob",
        "CronJob",
        true,
        ["cj"],
        true,
        Subdomain
    ),
    rt!(
        "discovery.k8s.io",
        "endpointslices",
        "endpointslice",
        "EndpointSlice",
        true,
        [],
        false,
        Subdomain
    ),
    rt!(
        "networking.k8s.io",
        "ingresses",
        "ingress",
        "Ingress",
        true,
        ["ing"],
        true,
        Subdomain
    ),
    rt!(
        "networking.k8s.io",
        "ingressclasses",
        "ingressclass",
        "IngressClass",
        false,
        [],
        false,
        Subdomain
    ),
    rt!(
        "networking.k8s.io",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
        ["netpol"],
        false,
        Subdomain
    ),
    rt!(
        "coordination.k8s.io",
        "leases",
        "lease",
        "Lease",
        true,
        [],
        false,
        Subdomain
    ),
    rt!(
        "storage.k8s.io",
        "storageclasses",
        "storageclass",
        "StorageClass",
        false,
        ["sc"],
        false,
        Subdomain
    ),
    rt!(
        "storage.k8s.io",
        "volumeattachments",
        "volumeattachment",
        "VolumeAttachment",
        false,
        [],
        true,
        Subdomain
    ),
    rt!(
        "storage.k8s.io",
        "csidrivers",
        "csidriver",
        "CSIDriver",
        false,
        [],
        false,
        Subdomain
    ),
    rt!(
        "storage.k8s.io",
        "csinodes",
        "csinode",
        "CSINode",
        false,
        [],
        false,
        Subdomain
    ),
    rt!(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "mutatingwebhookconfiguration",
        "MutatingWebhookConfiguration",
        false,
        [],
        false,
        Subdomain
    ),
    rt!(
        "admissionregistration.k8s.io",
        "validatingwebhookconfigurations",
        "validatingwebhookconfiguration",
        "ValidatingWebhookConfiguration",
        false,
        [],
        false,
        Subdomain
    ),
    rt!(
        "apiregistration.k8s.io",
        "apiservices",
        "apiservice",
        "APIService",
        false,
        [],
        true,
        Subdomain
    ),
    ResourceType {
        version: "v1beta1",
        ..rt!(
            "metrics.k8s.io",
            "pods",
            "",
            "PodMetrics",
            true,
            [],
            false,
            Subdomain
        )
    },
    ResourceType {
        version: "v1beta1",
        ..rt!(
            "metrics.k8s.io",
            "nodes",
            "",
            "NodeMetrics",
            false,
            [],
            false,
            Subdomain
        )
    },
    rt!(
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "customresourcedefinition",
        "CustomResourceDefinition",
        false,
        ["crd", "crds"],
        true,
        Subdomain
    ),
    rt!(
        "events.k8s.io",
        "events",
        "event",
        "Event",
        true,
        ["ev"],
        false,
        Path
    ),
    rt!(
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        true,
        ["pdb"],
        true,
        Subdomain
    ),
    rt!(
        "scheduling.k8s.io",
        "priorityclasses",
        "priorityclass",
        "PriorityClass",
        false,
        ["pc"],
        false,
        Subdomain
    ),
    // RBAC names are path segments (`system:node`), as kube-apiserver validates them.
    rt!(
        "rbac.authorization.k8s.io",
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        false,
        [],
        false,
        Path
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        false,
        [],
        false,
        Path
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "roles",
        "role",
        "Role",
        true,
        [],
        false,
        Path
    ),
    rt!(
        "rbac.authorization.k8s.io",
        "rolebindings",
        "rolebinding",
        "RoleBinding",
        true,
        [],
        false,
        Path
    ),
    review!(
        "authentication.k8s.io",
        "tokenreviews",
        "tokenreview",
        "TokenReview",
        false
    ),
    review!(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "localsubjectaccessreview",
        "LocalSubjectAccessReview",
        true
    ),
    review!(
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "selfsubjectaccessreview",
        "SelfSubjectAccessReview",
        false
    ),
    review!(
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "selfsubjectrulesreview",
        "SelfSubjectRulesReview",
        false
    ),
    review!(
        "authorization.k8s.io",
        "subjectaccessreviews",
        "subjectaccessreview",
        "SubjectAccessReview",
        false
    ),
];

/// A built-in type.
pub(crate) fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

/// The types one server serves: the built-ins and those its CRDs define.
#[derive(Debug, Default)]
pub(crate) struct Catalog {
    custom: RwLock<Vec<&'static ResourceType>>,
    /// Every custom type ever made, by its definition, so that re-reading an unchanged CRD
    /// reuses its type (types are leaked; see [`Catalog::set_crds`]).
    made: RwLock<HashMap<String, &'static ResourceType>>,
}

impl Catalog {
    pub(crate) fn all(&self) -> Vec<&'static ResourceType> {
        let custom = self.custom.read().unwrap_or_else(|p| p.into_inner());
        RESOURCES.iter().chain(custom.iter().copied()).collect()
    }

    pub(crate) fn lookup(
        &self,
        group: &str,
        version: &str,
        resource: &str,
    ) -> Option<&'static ResourceType> {
        self.all()
            .into_iter()
            .find(|r| r.group == group && r.version == version && r.resource == resource)
    }

    /// Replaces the custom types with those `crds` define. A type is leaked (a request may
    /// hold it while the CRD changes, and CRDs change rarely); an unchanged definition
    /// reuses the type made before, so re-reading CRDs does not grow memory.
    pub(crate) fn set_crds(&self, crds: &[Value]) {
        let mut made = self.made.write().unwrap_or_else(|p| p.into_inner());
        let mut types = Vec::new();
        for crd in crds {
            for (sig, rt) in from_crd(crd) {
                let t = *made.entry(sig).or_insert_with(|| Box::leak(Box::new(rt)));
                types.push(t);
            }
        }
        *self.custom.write().unwrap_or_else(|p| p.into_inner()) = types;
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// The types of a CRD's served versions, each with a signature of its definition.
fn from_crd(crd: &Value) -> Vec<(String, ResourceType)> {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let (Some(group), Some(plural), Some(kind)) = (
        spec["group"].as_str(),
        names["plural"].as_str(),
        names["kind"].as_str(),
    ) else {
        return Vec::new();
    };
    let singular = names["singular"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let short: Vec<&str> = names["shortNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let namespaced = spec["scope"].as_str() != Some("Cluster");
    let mut out = Vec::new();
    for v in spec["versions"].as_array().into_iter().flatten() {
        if v["served"] == Value::Bool(false) {
            continue;
        }
        let Some(version) = v["name"].as_str() else {
            continue;
        };
        let status = v["subresources"]["status"].is_object();
        let columns: Vec<PrinterColumn> = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| PrinterColumn {
                name: c["name"].as_str().unwrap_or("").to_string(),
                ty: c["type"].as_str().unwrap_or("string").to_string(),
                json_path: c["jsonPath"].as_str().unwrap_or("").to_string(),
                description: c["description"].as_str().unwrap_or("").to_string(),
                priority: c["priority"].as_i64().unwrap_or(0),
            })
            .collect();
        let sig = serde_json::json!([
            group,
            version,
            plural,
            singular,
            kind,
            namespaced,
            short,
            status,
            v["additionalPrinterColumns"],
            v["schema"]["openAPIV3Schema"]
        ])
        .to_string();
        let schema = v["schema"]["openAPIV3Schema"]
            .is_object()
            .then(|| &*Box::leak(Box::new(v["schema"]["openAPIV3Schema"].clone())));
        let rt = ResourceType {
            group: leak(group),
            version: leak(version),
            resource: leak(plural),
            singular: leak(&singular),
            kind: leak(kind),
            namespaced,
            short_names: Box::leak(
                short
                    .iter()
                    .map(|s| leak(s))
                    .collect::<Vec<_>>()
                    .into_boxed_slice(),
            ),
            status,
            name_rule: NameRule::Subdomain,
            custom: true,
            columns: Box::leak(columns.into_boxed_slice()),
            schema,
            verbs: STORED_VERBS,
        };
        out.push((sig, rt));
    }
    out
}

pub(crate) fn namespaces() -> &'static ResourceType {
    &RESOURCES[0]
}

pub(crate) fn services() -> &'static ResourceType {
    &RESOURCES[3]
}
