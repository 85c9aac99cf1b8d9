//! LoadBalancer addresses: MetalLB's CRDs (v0.16.1, unchanged, from `crates/lb/crds`),
//! the `metallb-system` namespace where MetalLB users keep their IPAddressPools and
//! advertisements, the allocation controller (`kubewire lb-controller`) with its
//! ServiceAccount and least-privilege ClusterRole, and, when asked, a default pool
//! with an L2Advertisement for it.

use serde_json::{Value, json};

use crate::{
    Config, cluster_role, cluster_role_binding, labels, meta, security_context, service_account,
};

/// The controller's Deployment, ServiceAccount, ClusterRole and binding (the name the
/// lab's controllers also use for its ServiceAccount).
pub const LB_CONTROLLER: &str = lb::controller::COMPONENT;
/// Where the pools and advertisements live: MetalLB's namespace, so that an existing
/// MetalLB configuration applies as it is.
pub const CONFIG_NAMESPACE: &str = lb::controller::DEFAULT_NAMESPACE;
/// The default pool's (and its L2Advertisement's) name.
pub const DEFAULT_POOL: &str = "default";

/// MetalLB's CRD manifests, byte for byte upstream's.
const CRDS: &[&str] = &[
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_bfdprofiles.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_bgpadvertisements.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_bgppeers.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_communities.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_configurationstates.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_ipaddresspools.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_l2advertisements.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_servicebgpstatuses.yaml"),
    include_str!("../../lb/crds/metallb-v0.16.1/metallb.io_servicel2statuses.yaml"),
];

/// The CRDs as objects.
pub fn crds() -> Vec<Value> {
    CRDS.iter()
        .map(|text| serde_yaml_ng::from_str(text).expect("the vendored CRDs are YAML"))
        .collect()
}

/// Whether `obj` belongs to the LoadBalancer part of the install.
pub(crate) fn is_lb_object(obj: &Value) -> bool {
    obj["metadata"]["labels"]["app.kubernetes.io/name"] == json!(LB_CONTROLLER)
        || obj["metadata"]["name"] == json!(CONFIG_NAMESPACE)
        || obj["metadata"]["namespace"] == json!(CONFIG_NAMESPACE)
        || (obj["kind"] == json!("CustomResourceDefinition")
            && obj["spec"]["group"] == json!(lb::crd::GROUP))
}

/// Every LoadBalancer object for `cfg` (none without `cfg.lb`).
pub(crate) fn objects(cfg: &Config) -> Vec<Value> {
    if !cfg.lb {
        return Vec::new();
    }
    let mut out = crds();
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": { "name": CONFIG_NAMESPACE, "labels": labels(LB_CONTROLLER) },
    }));
    out.push(service_account(LB_CONTROLLER));
    out.push(cluster_role(
        LB_CONTROLLER,
        json!([
            // Services: read all, write the pool annotation and the status.
            { "apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch", "patch"] },
            { "apiGroups": [""], "resources": ["services/status"], "verbs": ["patch", "update"] },
            // serviceAllocation.namespaceSelectors.
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"] },
            { "apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"] },
            { "apiGroups": [lb::crd::GROUP], "resources": ["ipaddresspools"], "verbs": ["list", "watch"] },
            { "apiGroups": [lb::crd::GROUP], "resources": ["ipaddresspools/status"], "verbs": ["patch", "update"] },
        ]),
    ));
    out.push(cluster_role_binding(LB_CONTROLLER, LB_CONTROLLER));
    if cfg.lb_controller_deployment {
        let selector = json!({ "app.kubernetes.io/name": LB_CONTROLLER });
        out.push(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(LB_CONTROLLER, true),
            "spec": {
                // One allocator at a time: two would each give out addresses from
                // their own view. Recreate stops the old before the new starts.
                "replicas": 1,
                "strategy": { "type": "Recreate" },
                "selector": { "matchLabels": selector },
                "template": {
                    "metadata": { "labels": labels(LB_CONTROLLER) },
                    "spec": {
                        "serviceAccountName": LB_CONTROLLER,
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": [
                            { "key": "CriticalAddonsOnly", "operator": "Exists" },
                            { "key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule" },
                        ],
                        "containers": [{
                            "name": "lb-controller",
                            "image": cfg.image,
                            "args": ["lb-controller"],
                            "resources": {
                                "requests": { "cpu": "10m", "memory": "32Mi" },
                                "limits": { "memory": "128Mi" },
                            },
                            "securityContext": security_context(&[]),
                        }],
                    },
                },
            },
        }));
    }
    if !cfg.lb_pool.is_empty() {
        let pool_meta = json!({
            "name": DEFAULT_POOL,
            "namespace": CONFIG_NAMESPACE,
            "labels": labels(LB_CONTROLLER),
        });
        out.push(json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": pool_meta,
            "spec": { "addresses": cfg.lb_pool },
        }));
        out.push(json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": pool_meta,
            "spec": { "ipAddressPools": [DEFAULT_POOL] },
        }));
    }
    out
}
