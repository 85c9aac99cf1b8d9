//! The default roles and bindings kube-apiserver keeps in place (its bootstrap policy):
//! `cluster-admin` for `system:masters`, the aggregated `admin`/`edit`/`view`,
//! `system:basic-user`, `system:discovery` and `system:public-info-viewer` for
//! everyone, the `system:*` roles of the control plane's components and of the
//! controllers (bound to the users and ServiceAccounts kube-apiserver binds them to),
//! and `system:node` (bound to no one: the Node authorizer decides for nodes).
//!
//! At every start, as kube-apiserver's reconciliation does: what is missing is created;
//! a default object still marked `rbac.authorization.kubernetes.io/autoupdate: "true"`
//! gets back the rules, aggregation selectors and subjects it lost (what was added to it
//! stays); one marked `"false"` is left alone.

use serde_json::{Value, json};

use super::RBAC_GROUP;
use super::node::node_rules;
use super::rules::{self, Rule};
use crate::api::{State, prepare_create};
use crate::error::{Error, Status};
use crate::resources;
use crate::store::{EventType, Txn};

const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
const BOOTSTRAPPING: &str = "kubernetes.io/bootstrapping";

/// Verbs of every read.
const READ: &[&str] = &["get", "list", "watch"];
/// Verbs of every write `edit` gives.
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
/// Every verb of a stored resource.
const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
const EVENTS_WRITE: &[&str] = &["create", "patch", "update"];

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Rule {
    Rule::new(verbs, groups, resources)
}

/// Events, as every component records them.
fn events() -> Rule {
    r(EVENTS_WRITE, &["", "events.k8s.io"], &["events"])
}

/// A default ClusterRole: name, extra labels, rules, aggregation label keys.
struct DefaultRole {
    name: &'static str,
    labels: Vec<(&'static str, &'static str)>,
    rules: Vec<Rule>,
    /// The `rbac.authorization.k8s.io/aggregate-to-*` label its aggregationRule selects.
    aggregates: Option<&'static str>,
}

fn role(name: &'static str, rules: Vec<Rule>) -> DefaultRole {
    DefaultRole {
        name,
        labels: Vec::new(),
        rules,
        aggregates: None,
    }
}

fn aggregate_to(name: &'static str, into: &'static str, rules: Vec<Rule>) -> DefaultRole {
    DefaultRole {
        name,
        labels: vec![(into, "true")],
        rules,
        aggregates: None,
    }
}

const TO_ADMIN: &str = "rbac.authorization.k8s.io/aggregate-to-admin";
const TO_EDIT: &str = "rbac.authorization.k8s.io/aggregate-to-edit";
const TO_VIEW: &str = "rbac.authorization.k8s.io/aggregate-to-view";

/// The ClusterRoles kube-apiserver makes (those of features not served here left out:
/// certificate signers, storage, batch and autoscaling controllers).
fn cluster_roles() -> Vec<DefaultRole> {
    let mut roles = vec![
        role(
            "cluster-admin",
            vec![r(&["*"], &["*"], &["*"]), Rule::urls(&["*"], &["*"])],
        ),
        DefaultRole {
            name: "admin",
            labels: Vec::new(),
            rules: Vec::new(),
            aggregates: Some(TO_ADMIN),
        },
        DefaultRole {
            name: "edit",
            labels: vec![(TO_ADMIN, "true")],
            rules: Vec::new(),
            aggregates: Some(TO_EDIT),
        },
        DefaultRole {
            name: "view",
            labels: vec![(TO_EDIT, "true")],
            rules: Vec::new(),
            aggregates: Some(TO_VIEW),
        },
        aggregate_to(
            "system:aggregate-to-admin",
            TO_ADMIN,
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                r(ALL_VERBS, &[RBAC_GROUP], &["rolebindings", "roles"]),
            ],
        ),
        aggregate_to(
            "system:aggregate-to-edit",
            TO_EDIT,
            vec![
                r(
                    READ,
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                ),
                r(&["impersonate"], &[""], &["serviceaccounts"]),
                r(
                    WRITE,
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                ),
                r(&["create"], &[""], &["pods/eviction"]),
                r(
                    WRITE,
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                ),
                r(&["create"], &[""], &["serviceaccounts/token"]),
                r(
                    WRITE,
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                ),
                r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                r(WRITE, &["batch"], &["cronjobs", "jobs"]),
                r(
                    WRITE,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "ingresses",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(WRITE, &["policy"], &["poddisruptionbudgets"]),
                r(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                r(ALL_VERBS, &["coordination.k8s.io"], &["leases"]),
            ],
        ),
        // What installing metrics-server adds, since metrics.k8s.io is served here:
        // `kubectl top` for whoever may view.
        DefaultRole {
            name: "system:aggregated-metrics-reader",
            labels: vec![(TO_ADMIN, "true"), (TO_EDIT, "true"), (TO_VIEW, "true")],
            rules: vec![r(READ, &["metrics.k8s.io"], &["nodes", "pods"])],
            aggregates: None,
        },
        aggregate_to(
            "system:aggregate-to-view",
            TO_VIEW,
            vec![
                r(
                    READ,
                    &[""],
                    &[
                        "configmaps",
                        "endpoints",
                        "persistentvolumeclaims",
                        "persistentvolumeclaims/status",
                        "pods",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "serviceaccounts",
                        "services",
                        "services/status",
                    ],
                ),
                r(
                    READ,
                    &[""],
                    &[
                        "bindings",
                        "events",
                        "limitranges",
                        "namespaces/status",
                        "pods/log",
                        "pods/status",
                        "replicationcontrollers/status",
                        "resourcequotas",
                        "resourcequotas/status",
                    ],
                ),
                r(READ, &[""], &["namespaces"]),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(
                    READ,
                    &["apps"],
                    &[
                        "controllerrevisions",
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "statefulsets",
                        "statefulsets/scale",
                        "statefulsets/status",
                    ],
                ),
                r(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                r(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                r(
                    READ,
                    &["extensions"],
                    &[
                        "daemonsets",
                        "daemonsets/status",
                        "deployments",
                        "deployments/scale",
                        "deployments/status",
                        "ingresses",
                        "ingresses/status",
                        "networkpolicies",
                        "replicasets",
                        "replicasets/scale",
                        "replicasets/status",
                        "replicationcontrollers/scale",
                    ],
                ),
                r(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                r(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
            ],
        ),
        role(
            "system:auth-delegator",
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:basic-user",
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:discovery",
            vec![Rule::urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            vec![Rule::urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:monitoring",
            vec![Rule::urls(
                &["get"],
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/metrics/slis",
                    "/readyz",
                    "/readyz/*",
                ],
            )],
        ),
        role(
            "system:service-account-issuer-discovery",
            vec![Rule::urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role("system:node", node_rules()),
        role(
            "system:node-proxier",
            vec![
                r(&["list", "watch"], &[""], &["endpoints", "services"]),
                r(READ, &[""], &["nodes"]),
                events(),
                r(
                    &["list", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
            ],
        ),
        role(
            "system:node-problem-detector",
            vec![
                r(&["get"], &[""], &["nodes"]),
                r(&["patch"], &[""], &["nodes/status"]),
                events(),
            ],
        ),
        role(
            "system:node-bootstrapper",
            vec![r(
                &["create", "get", "list", "watch"],
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
            )],
        ),
        role(
            "system:kubelet-api-admin",
            vec![
                r(READ, &[""], &["nodes"]),
                r(&["proxy"], &[""], &["nodes"]),
                r(
                    &["*"],
                    &[""],
                    &["nodes/log", "nodes/metrics", "nodes/proxy", "nodes/stats"],
                ),
            ],
        ),
        role(
            "system:kube-aggregator",
            vec![r(READ, &[""], &["endpoints", "services"])],
        ),
        role(
            "system:kube-dns",
            vec![r(&["list", "watch"], &[""], &["endpoints", "services"])],
        ),
        role(
            "system:kube-controller-manager",
            vec![
                events(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"])
                    .names(&["kube-controller-manager"]),
                r(&["create"], &[""], &["secrets", "serviceaccounts"]),
                r(&["delete"], &[""], &["secrets"]),
                r(
                    &["get"],
                    &[""],
                    &["configmaps", "namespaces", "secrets", "serviceaccounts"],
                ),
                r(&["update"], &[""], &["secrets", "serviceaccounts"]),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                r(&["list", "watch"], &["*"], &["*"]),
                r(&["create"], &[""], &["serviceaccounts/token"]),
            ],
        ),
        role(
            "system:kube-scheduler",
            vec![
                events(),
                r(&["create"], &["coordination.k8s.io"], &["leases"]),
                r(&["get", "update"], &["coordination.k8s.io"], &["leases"])
                    .names(&["kube-scheduler"]),
                r(READ, &[""], &["nodes"]),
                r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                r(&["create"], &[""], &["bindings", "pods/binding"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(READ, &[""], &["replicationcontrollers", "services"]),
                r(READ, &["apps", "extensions"], &["replicasets"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(READ, &["policy"], &["poddisruptionbudgets"]),
                r(
                    READ,
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumes"],
                ),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
                r(READ, &["storage.k8s.io"], &["csinodes"]),
                r(READ, &[""], &["namespaces"]),
                r(READ, &["storage.k8s.io"], &["csidrivers"]),
                r(READ, &["storage.k8s.io"], &["csistoragecapacities"]),
            ],
        ),
        role(
            "system:volume-scheduler",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumes"],
                ),
                r(READ, &["storage.k8s.io"], &["storageclasses"]),
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
            ],
        ),
    ];
    roles.extend(controller_roles());
    roles
}

/// The roles of kube-controller-manager's controllers that work on what is served here,
/// each bound to the ServiceAccount `kube-system/NAME` its controller runs as.
fn controller_roles() -> Vec<DefaultRole> {
    let c = |name: &'static str, rules: Vec<Rule>| role(name, rules);
    vec![
        c(
            "system:controller:clusterrole-aggregation-controller",
            vec![r(
                &["escalate", "get", "list", "patch", "update", "watch"],
                &[RBAC_GROUP],
                &["clusterroles"],
            )],
        ),
        c(
            "system:controller:cronjob-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &["batch"],
                    &["cronjobs"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["batch"],
                    &["jobs"],
                ),
                r(&["update"], &["batch"], &["cronjobs/status"]),
                r(&["update"], &["batch"], &["cronjobs/finalizers"]),
                r(&["delete", "list", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "system:controller:daemon-set-controller",
            vec![
                r(READ, &["apps", "extensions"], &["daemonsets"]),
                r(&["update"], &["apps", "extensions"], &["daemonsets/status"]),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["daemonsets/finalizers"],
                ),
                r(&["list", "watch"], &[""], &["nodes"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                r(&["create"], &[""], &["pods/binding"]),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:deployment-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &["apps", "extensions"],
                    &["deployments"],
                ),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["deployments/status"],
                ),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["deployments/finalizers"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                r(&["get", "list", "update", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "system:controller:endpoint-controller",
            vec![
                r(READ, &[""], &["pods", "services"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &[""],
                    &["endpoints"],
                ),
                r(&["create"], &[""], &["endpoints/restricted"]),
                events(),
            ],
        ),
        c(
            "system:controller:endpointslice-controller",
            vec![
                r(READ, &[""], &["nodes", "pods", "services"]),
                r(&["update"], &[""], &["services/finalizers"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:endpointslicemirroring-controller",
            vec![
                r(READ, &[""], &["endpoints", "services"]),
                r(&["update"], &[""], &["services/finalizers"]),
                r(&["update"], &[""], &["endpoints/finalizers"]),
                r(
                    &["create", "delete", "get", "list", "update", "watch"],
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:generic-garbage-collector",
            vec![
                r(
                    &["delete", "get", "list", "patch", "update", "watch"],
                    &["*"],
                    &["*"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:job-controller",
            vec![
                r(
                    &["get", "list", "patch", "update", "watch"],
                    &["batch"],
                    &["jobs"],
                ),
                r(&["update"], &["batch"], &["jobs/status"]),
                r(&["update"], &["batch"], &["jobs/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:namespace-controller",
            vec![
                r(&["delete", "get", "list", "watch"], &[""], &["namespaces"]),
                r(
                    &["update"],
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                ),
                r(
                    &["delete", "deletecollection", "get", "list", "watch"],
                    &["*"],
                    &["*"],
                ),
            ],
        ),
        c(
            "system:controller:node-controller",
            vec![
                r(
                    &["delete", "get", "list", "patch", "update", "watch"],
                    &[""],
                    &["nodes"],
                ),
                r(&["patch", "update"], &[""], &["nodes/status"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                events(),
            ],
        ),
        c(
            "system:controller:pod-garbage-collector",
            vec![
                r(&["delete", "list", "watch"], &[""], &["pods"]),
                r(READ, &[""], &["nodes"]),
                r(&["patch"], &[""], &["pods/status"]),
            ],
        ),
        c(
            "system:controller:replicaset-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &["apps", "extensions"],
                    &["replicasets"],
                ),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/status"],
                ),
                r(
                    &["update"],
                    &["apps", "extensions"],
                    &["replicasets/finalizers"],
                ),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:replication-controller",
            vec![
                r(
                    &["get", "list", "update", "watch"],
                    &[""],
                    &["replicationcontrollers"],
                ),
                r(&["update"], &[""], &["replicationcontrollers/status"]),
                r(&["update"], &[""], &["replicationcontrollers/finalizers"]),
                r(
                    &["create", "delete", "list", "patch", "watch"],
                    &[""],
                    &["pods"],
                ),
                events(),
            ],
        ),
        c(
            "system:controller:root-ca-cert-publisher",
            vec![r(&["create", "update"], &[""], &["configmaps"]), events()],
        ),
        c(
            "system:controller:service-account-controller",
            vec![r(&["create"], &[""], &["serviceaccounts"]), events()],
        ),
        c(
            "system:controller:service-controller",
            vec![
                r(READ, &[""], &["services"]),
                r(&["patch", "update"], &[""], &["services/status"]),
                r(&["list", "watch"], &[""], &["nodes"]),
                events(),
            ],
        ),
        c(
            "system:controller:statefulset-controller",
            vec![
                r(&["list", "watch"], &[""], &["pods"]),
                r(READ, &["apps"], &["statefulsets"]),
                r(&["update"], &["apps"], &["statefulsets/status"]),
                r(&["update"], &["apps"], &["statefulsets/finalizers"]),
                r(
                    &["create", "delete", "get", "patch", "update"],
                    &[""],
                    &["pods"],
                ),
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &["apps"],
                    &["controllerrevisions"],
                ),
                r(
                    &["create", "get", "list", "watch"],
                    &[""],
                    &["persistentvolumeclaims"],
                ),
                r(&["delete", "update"], &[""], &["persistentvolumeclaims"]),
                r(&["update"], &[""], &["pods/finalizers"]),
                events(),
            ],
        ),
        c(
            "system:controller:ttl-after-finished-controller",
            vec![
                r(&["delete", "get", "list", "watch"], &["batch"], &["jobs"]),
                events(),
            ],
        ),
        c(
            "system:controller:ttl-controller",
            vec![
                r(&["list", "patch", "update", "watch"], &[""], &["nodes"]),
                events(),
            ],
        ),
    ]
}

/// A subject: `User`, `Group` or `ServiceAccount` (`namespace/name`).
fn subject(kind: &str, name: &str) -> Value {
    match kind {
        "ServiceAccount" => {
            let (ns, name) = name.split_once('/').unwrap_or(("kube-system", name));
            json!({"kind": kind, "name": name, "namespace": ns})
        }
        _ => json!({"kind": kind, "apiGroup": RBAC_GROUP, "name": name}),
    }
}

/// The default ClusterRoleBindings: name, role, subjects.
fn cluster_role_bindings() -> Vec<(String, String, Vec<Value>)> {
    let mut out: Vec<(String, String, Vec<Value>)> = [
        ("cluster-admin", vec![subject("Group", super::MASTERS)]),
        (
            "system:basic-user",
            vec![subject("Group", "system:authenticated")],
        ),
        (
            "system:discovery",
            vec![subject("Group", "system:authenticated")],
        ),
        (
            "system:public-info-viewer",
            vec![
                subject("Group", "system:authenticated"),
                subject("Group", "system:unauthenticated"),
            ],
        ),
        (
            "system:kube-controller-manager",
            vec![subject("User", "system:kube-controller-manager")],
        ),
        (
            "system:kube-dns",
            vec![subject("ServiceAccount", "kube-system/kube-dns")],
        ),
        (
            "system:kube-scheduler",
            vec![subject("User", "system:kube-scheduler")],
        ),
        (
            "system:monitoring",
            vec![subject("Group", "system:monitoring")],
        ),
        // Nodes are authorized by the Node authorizer, not by this role.
        ("system:node", vec![]),
        (
            "system:node-proxier",
            vec![subject("User", "system:kube-proxy")],
        ),
        (
            "system:service-account-issuer-discovery",
            vec![subject("Group", "system:serviceaccounts")],
        ),
        (
            "system:volume-scheduler",
            vec![subject("User", "system:kube-scheduler")],
        ),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), n.to_string(), s))
    .collect();
    for c in controller_roles() {
        let sa = c.name.trim_start_matches("system:controller:");
        out.push((
            c.name.to_string(),
            c.name.to_string(),
            vec![subject("ServiceAccount", &format!("kube-system/{sa}"))],
        ));
    }
    out
}

/// A default Role in a system namespace, with the RoleBinding of it.
struct NamespacedRole {
    namespace: &'static str,
    role: &'static str,
    binding: &'static str,
    rules: Vec<Rule>,
    subjects: Vec<Value>,
}

/// The default Roles in system namespaces.
fn namespaced() -> Vec<NamespacedRole> {
    vec![
        NamespacedRole {
            namespace: "kube-system",
            role: "extension-apiserver-authentication-reader",
            binding: "system::extension-apiserver-authentication-reader",
            rules: vec![
                r(READ, &[""], &["configmaps"]).names(&["extension-apiserver-authentication"]),
            ],
            subjects: vec![
                subject("User", "system:kube-controller-manager"),
                subject("User", "system:kube-scheduler"),
            ],
        },
        NamespacedRole {
            namespace: "kube-system",
            role: "system::leader-locking-kube-controller-manager",
            binding: "system::leader-locking-kube-controller-manager",
            rules: vec![
                r(&["watch"], &[""], &["configmaps"]),
                r(&["get", "update"], &[""], &["configmaps"]).names(&["kube-controller-manager"]),
            ],
            subjects: vec![
                subject("User", "system:kube-controller-manager"),
                subject("ServiceAccount", "kube-system/kube-controller-manager"),
            ],
        },
        NamespacedRole {
            namespace: "kube-system",
            role: "system::leader-locking-kube-scheduler",
            binding: "system::leader-locking-kube-scheduler",
            rules: vec![
                r(&["watch"], &[""], &["configmaps"]),
                r(&["get", "update"], &[""], &["configmaps"]).names(&["kube-scheduler"]),
            ],
            subjects: vec![
                subject("User", "system:kube-scheduler"),
                subject("ServiceAccount", "kube-system/kube-scheduler"),
            ],
        },
    ]
}

fn metadata(name: &str, namespace: Option<&str>, labels: &[(&str, &str)]) -> Value {
    let mut m = json!({
        "name": name,
        "labels": {BOOTSTRAPPING: "rbac-defaults"},
        "annotations": {AUTOUPDATE: "true"},
    });
    for (k, v) in labels {
        m["labels"][*k] = json!(v);
    }
    if let Some(ns) = namespace {
        m["namespace"] = json!(ns);
    }
    m
}

fn rules_json(rules: &[Rule]) -> Value {
    serde_json::to_value(rules).unwrap_or(Value::Null)
}

pub(crate) fn resource(name: &str) -> Result<&'static resources::ResourceType, Error> {
    resources::lookup(RBAC_GROUP, "v1", name).ok_or_else(|| Status::not_found_path().into())
}

/// Creates `expected` at `key`, or brings the stored object back to it (see the module
/// documentation): labels and annotations it lacks, rules it does not cover,
/// aggregation selectors and subjects it lacks.
fn reconcile(
    txn: &mut Txn,
    rt: &'static resources::ResourceType,
    key: &str,
    mut expected: Value,
) -> Result<(), Error> {
    let Some(old) = txn.get(key)? else {
        expected["kind"] = json!(rt.kind);
        expected["apiVersion"] = json!(rt.api_version());
        prepare_create(rt, &mut expected);
        txn.put(key, expected, EventType::Added)?;
        return Ok(());
    };
    if old["metadata"]["annotations"][AUTOUPDATE] == "false" {
        return Ok(());
    }
    let mut new = old.clone();
    for field in ["labels", "annotations"] {
        if let Some(want) = expected["metadata"][field].as_object() {
            for (k, v) in want {
                if new["metadata"][field].get(k).is_none() {
                    new["metadata"][field][k] = v.clone();
                }
            }
        }
    }
    if let Some(want) = expected.get("rules") {
        let want: Vec<Rule> = serde_json::from_value(want.clone()).unwrap_or_default();
        let have: Vec<Rule> = serde_json::from_value(old["rules"].clone()).unwrap_or_default();
        // An aggregated role's rules are the aggregation's.
        let aggregated =
            !expected["aggregationRule"].is_null() && !old["aggregationRule"].is_null();
        let (_, missing) = rules::covers(&have, &want);
        if !missing.is_empty() && !aggregated {
            let mut all = have;
            all.extend(missing);
            new["rules"] = rules_json(&all);
        }
    }
    if let Some(want) = expected["aggregationRule"]["clusterRoleSelectors"].as_array() {
        let mut have = old["aggregationRule"]["clusterRoleSelectors"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for s in want {
            if !have.contains(s) {
                have.push(s.clone());
            }
        }
        new["aggregationRule"]["clusterRoleSelectors"] = Value::Array(have);
    }
    if let Some(want) = expected["subjects"].as_array() {
        let mut have = old["subjects"].as_array().cloned().unwrap_or_default();
        for s in want {
            if !have.contains(s) {
                have.push(s.clone());
            }
        }
        if !have.is_empty() {
            new["subjects"] = Value::Array(have);
        }
    }
    if !expected["roleRef"].is_null() && old["roleRef"] != expected["roleRef"] {
        // A roleRef cannot change: kube-apiserver deletes the binding and makes it anew.
        txn.delete(key, old)?;
        let mut fresh = expected;
        fresh["kind"] = json!(rt.kind);
        fresh["apiVersion"] = json!(rt.api_version());
        prepare_create(rt, &mut fresh);
        txn.put(key, fresh, EventType::Added)?;
        return Ok(());
    }
    if new != old {
        txn.put(key, new, EventType::Modified)?;
    }
    Ok(())
}

/// Makes (or reconciles) the default roles and bindings.
pub(crate) fn ensure(state: &State) -> Result<(), Error> {
    let cluster_role = resource("clusterroles")?;
    let cluster_binding = resource("clusterrolebindings")?;
    let role_rt = resource("roles")?;
    let binding_rt = resource("rolebindings")?;
    state.store.write(|txn| {
        for role in cluster_roles() {
            let mut obj = json!({
                "metadata": metadata(role.name, None, &role.labels),
                "rules": rules_json(&role.rules),
            });
            if let Some(label) = role.aggregates {
                obj["aggregationRule"] =
                    json!({"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]});
                obj["rules"] = Value::Null;
            }
            reconcile(txn, cluster_role, &cluster_role.key("", role.name), obj)?;
        }
        for (name, role, subjects) in cluster_role_bindings() {
            let mut obj = json!({
                "metadata": metadata(&name, None, &[]),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
            });
            if !subjects.is_empty() {
                obj["subjects"] = Value::Array(subjects);
            }
            reconcile(txn, cluster_binding, &cluster_binding.key("", &name), obj)?;
        }
        for n in namespaced() {
            let obj = json!({
                "metadata": metadata(n.role, Some(n.namespace), &[]),
                "rules": rules_json(&n.rules),
            });
            reconcile(txn, role_rt, &role_rt.key(n.namespace, n.role), obj)?;
            let obj = json!({
                "metadata": metadata(n.binding, Some(n.namespace), &[]),
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "Role", "name": n.role},
                "subjects": n.subjects,
            });
            reconcile(
                txn,
                binding_rt,
                &binding_rt.key(n.namespace, n.binding),
                obj,
            )?;
        }
        Ok(())
    })
}
