//! The resource types this server knows: group, version, plural, kind, scope.

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
        self.group == "apps" && self.resource != "daemonsets"
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
        "events.k8s.io",
        "events",
        "event",
        "Event",
        true,
        ["ev"],
        false,
        Path
    ),
];

/// API groups in discovery order (the core group is served under `/api`).
pub(crate) static GROUPS: &[&str] = &[
    "apps",
    "discovery.k8s.io",
    "networking.k8s.io",
    "coordination.k8s.io",
    "events.k8s.io",
];

pub(crate) fn lookup(group: &str, version: &str, resource: &str) -> Option<&'static ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.resource == resource)
}

pub(crate) fn in_group_version(
    group: &str,
    version: &str,
) -> impl Iterator<Item = &'static ResourceType> {
    let version = version.to_string();
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

pub(crate) fn group_version_exists(group: &str, version: &str) -> bool {
    in_group_version(group, version).next().is_some()
}

pub(crate) fn namespaces() -> &'static ResourceType {
    &RESOURCES[0]
}

pub(crate) fn services() -> &'static ResourceType {
    &RESOURCES[3]
}
