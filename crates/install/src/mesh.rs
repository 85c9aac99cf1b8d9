//! The service mesh, with `--mesh`:
//! - the identity issuer (`kubewire mesh identity`): its Deployment and ClusterIP
//!   Service `kubewire-identity` (HTTPS on 8080), its ServiceAccount, the right to
//!   review tokens (`system:auth-delegator`), and a Role for the Secret keeping its
//!   trust anchor and the ConfigMap publishing the trust bundle;
//! - the injector (`kubewire mesh injector`): its Deployment and Service
//!   `kubewire-injector` (HTTPS on 443), the MutatingWebhookConfiguration that sends it
//!   pod creations outside kube-system (failure policy `Ignore`: the mesh being down
//!   never stops pods), the right to read namespaces' annotations, the trust bundle,
//!   and to write its own webhook configuration's `caBundle`.
//!
//! - Linkerd's policy CRDs (`policy.linkerd.io`, edge-26.8.3), unchanged from
//!   `crates/mesh/crds`, so that Linkerd's policy manifests apply; and kubewire's
//!   `HTTPFault` (`mesh.kubewire.io`), faults for mesh routes.
//!
//! The agents serve the proxies' discovery (`--mesh-destination`, set by the agent's
//! flags for these choices), and read for it the routes that name Services (Gateway
//! API for mesh), the ReferenceGrants those routes may need, and Linkerd's policy.

/// The mesh's default inbound policies, for what configures the install (the lab).
pub use ::mesh::authz::{DEFAULT_POLICY as DEFAULT_INBOUND_POLICY, parse_default_policy};
use serde_json::{Value, json};

use crate::{
    AGENT, Config, NAMESPACE, cluster_role, cluster_role_binding, labels, meta, read, role,
    role_binding, security_context, service_account,
};

/// The Deployment, Service, ServiceAccount, Role and bindings.
pub const IDENTITY: &str = "kubewire-identity";
/// The issuer's HTTPS port.
pub const IDENTITY_PORT: u16 = 8080;
/// The injector's Deployment, Service, ServiceAccount, roles and webhook configuration.
pub const INJECTOR: &str = "kubewire-injector";
/// The injector's HTTPS port in its pod.
pub const INJECTOR_PORT: u16 = 8443;
/// The ClusterRole (and binding) of what the agents' discovery reads besides what the
/// service proxy does.
pub const DESTINATION_ROLE: &str = "kubewire-mesh-destination";

/// Linkerd's policy CRDs.
const LINKERD_POLICY_CRDS: &[&str] = &[
    include_str!(
        "../../mesh/crds/linkerd-edge-26.8.3/policy.linkerd.io_authorizationpolicies.yaml"
    ),
    include_str!("../../mesh/crds/linkerd-edge-26.8.3/policy.linkerd.io_httproutes.yaml"),
    include_str!(
        "../../mesh/crds/linkerd-edge-26.8.3/policy.linkerd.io_meshtlsauthentications.yaml"
    ),
    include_str!(
        "../../mesh/crds/linkerd-edge-26.8.3/policy.linkerd.io_networkauthentications.yaml"
    ),
    include_str!("../../mesh/crds/linkerd-edge-26.8.3/policy.linkerd.io_serverauthorizations.yaml"),
    include_str!("../../mesh/crds/linkerd-edge-26.8.3/policy.linkerd.io_servers.yaml"),
];

/// kubewire's `HTTPFault` (faults for mesh routes).
const HTTP_FAULT_CRD: &str = include_str!("../../mesh/crds/mesh.kubewire.io_httpfaults.yaml");

/// Linkerd's policy CRDs, then kubewire's `HTTPFault`, as objects.
pub fn crds() -> Vec<Value> {
    LINKERD_POLICY_CRDS
        .iter()
        .chain([&HTTP_FAULT_CRD])
        .map(|text| serde_yaml_ng::from_str(text).expect("the CRDs are YAML"))
        .collect()
}

/// Every mesh object for `cfg` (none without `cfg.mesh`).
pub(crate) fn objects(cfg: &Config) -> Vec<Value> {
    if !cfg.mesh {
        return Vec::new();
    }
    let mut delegator = meta(&format!("{IDENTITY}-auth-delegator"), false);
    delegator["labels"] = labels(IDENTITY);
    let mut objects = crds();
    objects.extend([
        service_account(IDENTITY),
        // TokenReviews: how the issuer checks the token a proxy presents.
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": delegator,
            "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator" },
            "subjects": [{ "kind": "ServiceAccount", "name": IDENTITY, "namespace": NAMESPACE }],
        }),
        role(
            IDENTITY,
            json!([
                // The anchor: read, or made on first start (create cannot be held to a name).
                { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [IDENTITY], "verbs": ["get"] },
                { "apiGroups": [""], "resources": ["secrets"], "verbs": ["create"] },
                // The trust bundle, written by server-side apply.
                { "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [mesh::identity::TRUST_ROOTS], "verbs": ["get", "patch"] },
                { "apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"] },
            ]),
        ),
        role_binding(IDENTITY, IDENTITY),
        https_service(IDENTITY, IDENTITY_PORT),
        https_deployment(
            IDENTITY,
            &cfg.image,
            json!([
                "mesh",
                "identity",
                format!("--listen=0.0.0.0:{IDENTITY_PORT}")
            ]),
            json!([]),
            IDENTITY_PORT,
        ),
    ]);
    objects.extend(injector(cfg));
    objects.extend([
        cluster_role(
            DESTINATION_ROLE,
            json!([
                read(
                    gateway::gatewayapi::GROUP,
                    &["grpcroutes", "httproutes", "referencegrants"]
                ),
                read(gateway::gatewayapi::mesh::FAULT_GROUP, &["httpfaults"]),
                read(
                    ::mesh::authz::GROUP,
                    &[
                        "authorizationpolicies",
                        "httproutes",
                        "meshtlsauthentications",
                        "networkauthentications",
                        "serverauthorizations",
                        "servers"
                    ]
                ),
            ]),
        ),
        cluster_role_binding(DESTINATION_ROLE, AGENT),
    ]);
    objects
}

/// The injector's objects.
fn injector(cfg: &Config) -> Vec<Value> {
    vec![
        service_account(INJECTOR),
        cluster_role(
            INJECTOR,
            json!([
                // Whether a pod's namespace asks for the mesh.
                { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"] },
                // Its own webhook configuration's caBundle (watched, set, replaced).
                { "apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"], "resourceNames": [INJECTOR], "verbs": ["get", "list", "watch", "update"] },
            ]),
        ),
        cluster_role_binding(INJECTOR, INJECTOR),
        role(
            INJECTOR,
            json!([
                // The trust bundle it copies into each proxy's environment.
                { "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [mesh::identity::TRUST_ROOTS], "verbs": ["get"] },
            ]),
        ),
        role_binding(INJECTOR, INJECTOR),
        https_service(INJECTOR, 443),
        https_deployment(
            INJECTOR,
            &cfg.image,
            json!([
                "mesh",
                "injector",
                format!("--listen=0.0.0.0:{INJECTOR_PORT}")
            ]),
            json!([
                { "name": "KUBEWIRE_PROXY_IMAGE", "value": cfg.image },
                { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } },
            ]),
            INJECTOR_PORT,
        ),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": meta(INJECTOR, false),
            "webhooks": [{
                "name": "inject.kubewire.io",
                "clientConfig": {
                    "service": { "name": INJECTOR, "namespace": NAMESPACE, "path": "/inject", "port": 443 },
                },
                "rules": [{
                    "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                    "resources": ["pods"], "scope": "Namespaced",
                }],
                "namespaceSelector": {
                    "matchExpressions": [{ "key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [NAMESPACE] }],
                },
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 10,
            }],
        }),
    ]
}

/// The ClusterIP Service `name` for its pods' `https` port.
fn https_service(name: &str, port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, true),
        "spec": {
            "selector": { "app.kubernetes.io/name": name },
            "ports": [{ "name": "https", "port": port, "protocol": "TCP", "targetPort": "https" }],
        },
    })
}

/// A one-replica Deployment `name` (its own ServiceAccount) of `image` serving HTTPS on
/// `port`, with `args` and `env`.
fn https_deployment(name: &str, image: &str, args: Value, env: Value, port: u16) -> Value {
    let container = name.strip_prefix("kubewire-").unwrap_or(name);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(name, true),
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app.kubernetes.io/name": name } },
            "template": {
                "metadata": { "labels": labels(name) },
                "spec": {
                    "serviceAccountName": name,
                    "priorityClassName": "system-cluster-critical",
                    "nodeSelector": { "kubernetes.io/os": "linux" },
                    "containers": [{
                        "name": container,
                        "image": image,
                        "args": args,
                        "env": env,
                        "ports": [{ "name": "https", "containerPort": port, "protocol": "TCP" }],
                        "readinessProbe": {
                            "tcpSocket": { "port": "https" },
                            "periodSeconds": 2,
                        },
                        "resources": {
                            "requests": { "cpu": "10m", "memory": "16Mi" },
                            "limits": { "memory": "128Mi" },
                        },
                        "securityContext": security_context(&[]),
                    }],
                },
            },
        },
    })
}
