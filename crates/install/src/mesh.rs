//! The service mesh's identity issuer (`kubewire mesh identity`), with `--mesh`: its
//! Deployment and ClusterIP Service `kubewire-identity` (HTTPS on 8080), its
//! ServiceAccount, the right to review tokens (`system:auth-delegator`), and a Role for
//! the Secret keeping its trust anchor and the ConfigMap publishing the trust bundle.

use serde_json::{Value, json};

use crate::{
    Config, NAMESPACE, labels, meta, role, role_binding, security_context, service_account,
};

/// The Deployment, Service, ServiceAccount, Role and bindings.
pub const IDENTITY: &str = "kubewire-identity";
/// The issuer's HTTPS port.
pub const IDENTITY_PORT: u16 = 8080;

/// Every mesh object for `cfg` (none without `cfg.mesh`).
pub(crate) fn objects(cfg: &Config) -> Vec<Value> {
    if !cfg.mesh {
        return Vec::new();
    }
    let selector = json!({ "app.kubernetes.io/name": IDENTITY });
    let mut delegator = meta(&format!("{IDENTITY}-auth-delegator"), false);
    delegator["labels"] = labels(IDENTITY);
    vec![
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
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(IDENTITY, true),
            "spec": {
                "selector": selector,
                "ports": [{ "name": "https", "port": IDENTITY_PORT, "protocol": "TCP", "targetPort": "https" }],
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(IDENTITY, true),
            "spec": {
                "replicas": 1,
                "selector": { "matchLabels": selector },
                "template": {
                    "metadata": { "labels": labels(IDENTITY) },
                    "spec": {
                        "serviceAccountName": IDENTITY,
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "containers": [{
                            "name": "identity",
                            "image": cfg.image,
                            "args": ["mesh", "identity", format!("--listen=0.0.0.0:{IDENTITY_PORT}")],
                            "ports": [{ "name": "https", "containerPort": IDENTITY_PORT, "protocol": "TCP" }],
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
        }),
    ]
}
