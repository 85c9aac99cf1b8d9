//! The gateway (`kubewire gateway`): Gateway API's standard-channel CRDs (v1.6.1) and
//! Emissary's `getambassador.io` CRDs (v4.1.0), both unchanged from `crates/gateway/crds`;
//! the IngressClasses `kubewire` (the default) and `ambassador` (the GatewayClass
//! `kubewire` is created by the controller); the gateway's own LoadBalancer Service (ports 80 and 443), its Deployment
//! (2 replicas, one writing statuses by a Lease), ServiceAccount and least-privilege
//! roles.

use serde_json::{Value, json};

use crate::{
    Config, NAMESPACE, cluster_role, cluster_role_binding, flags, labels, meta, read, role,
    role_binding, security_context, service_account,
};

/// The Deployment, Service, ServiceAccount, roles and bindings.
pub const GATEWAY: &str = gateway::controller::COMPONENT;
/// The IngressClass marked default (and the GatewayClass the controller creates).
pub const CLASS: &str = "kubewire";
/// The IngressClass the talk's Ingress names (Emissary's), served too.
pub const AMBASSADOR_CLASS: &str = "ambassador";

/// Gateway API's standard channel (the ValidatingAdmissionPolicy beside them in the
/// release is left out: it is not a CRD, and not every API server serves its kind).
const GATEWAY_API_CRDS: &[&str] = &[
    include_str!(
        "../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_backendtlspolicies.yaml"
    ),
    include_str!(
        "../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_gatewayclasses.yaml"
    ),
    include_str!("../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_gateways.yaml"),
    include_str!("../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_grpcroutes.yaml"),
    include_str!("../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_httproutes.yaml"),
    include_str!(
        "../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_listenersets.yaml"
    ),
    include_str!(
        "../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_referencegrants.yaml"
    ),
    include_str!("../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_tcproutes.yaml"),
    include_str!("../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_tlsroutes.yaml"),
    include_str!("../../gateway/crds/gateway-api-v1.6.1/gateway.networking.k8s.io_udproutes.yaml"),
];

/// Emissary's CRDs, one multi-document file.
const EMISSARY_CRDS: &str =
    include_str!("../../gateway/crds/emissary-4.1.0/getambassador.io_crds.yaml");

/// The CRDs as objects: Gateway API's, then Emissary's.
pub fn crds() -> Vec<Value> {
    let mut out: Vec<Value> = GATEWAY_API_CRDS
        .iter()
        .map(|text| serde_yaml_ng::from_str(text).expect("the vendored CRDs are YAML"))
        .collect();
    for doc in serde_yaml_ng::Deserializer::from_str(EMISSARY_CRDS) {
        let v: Value = serde::Deserialize::deserialize(doc).expect("the vendored CRDs are YAML");
        if v.is_object() {
            out.push(v);
        }
    }
    out
}

/// Whether `obj` belongs to the gateway part of the install.
pub(crate) fn is_gateway_object(obj: &Value) -> bool {
    obj["metadata"]["labels"]["app.kubernetes.io/name"] == json!(GATEWAY)
        || (obj["kind"] == json!("CustomResourceDefinition")
            && [gateway::gatewayapi::GROUP, gateway::mapping::GROUP]
                .contains(&obj["spec"]["group"].as_str().unwrap_or_default()))
}

fn defaults() -> gateway::Args {
    k8s::parse_flags(&[])
}

/// The gateway's flags for these choices.
/// The data plane's `/healthz`, `/ready` and `/metrics` port (`--admin-listen`).
const ADMIN_PORT: u16 = 8877;

pub fn gateway_args(_cfg: &Config) -> gateway::Args {
    defaults()
}

/// `gateway` and its non-default flags.
pub fn gateway_container_args(cfg: &Config) -> Vec<String> {
    let args = flags::non_default(&gateway_args(cfg).to_args(), &defaults().to_args());
    std::iter::once("gateway".to_owned()).chain(args).collect()
}

/// Every gateway object for `cfg` (none without `cfg.gateway`).
pub(crate) fn objects(cfg: &Config) -> Vec<Value> {
    if !cfg.gateway {
        return Vec::new();
    }
    let selector = json!({ "app.kubernetes.io/name": GATEWAY });
    // Cluster-scoped objects named otherwise, labelled as the gateway's.
    let named = |name: &str| {
        let mut m = meta(GATEWAY, false);
        m["name"] = json!(name);
        m
    };
    let mut out = crds();
    out.push(service_account(GATEWAY));
    out.push(cluster_role(
        GATEWAY,
        json!([
            read("", &["services", "namespaces", "configmaps"]),
            // Only kubernetes.io/tls Secrets are listed (a field selector), but RBAC
            // cannot say so: certificates are Secrets.
            read("", &["secrets"]),
            read("discovery.k8s.io", &["endpointslices"]),
            read("networking.k8s.io", &["ingresses", "ingressclasses"]),
            { "apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"], "verbs": ["patch"] },
            read(
                gateway::gatewayapi::GROUP,
                &[
                    "backendtlspolicies",
                    "gatewayclasses",
                    "gateways",
                    "grpcroutes",
                    "httproutes",
                    "referencegrants",
                    "tcproutes",
                    "tlsroutes",
                    "udproutes",
                ]
            ),
            // Its own GatewayClass, created if missing.
            { "apiGroups": [gateway::gatewayapi::GROUP], "resources": ["gatewayclasses"], "verbs": ["create"] },
            {
                "apiGroups": [gateway::gatewayapi::GROUP],
                "resources": [
                    "backendtlspolicies/status",
                    "gatewayclasses/status",
                    "gateways/status",
                    "grpcroutes/status",
                    "httproutes/status",
                    "tcproutes/status",
                    "tlsroutes/status",
                    "udproutes/status",
                ],
                "verbs": ["patch"],
            },
            read(gateway::mapping::GROUP, &["mappings"]),
            { "apiGroups": [gateway::mapping::GROUP], "resources": ["mappings/status"], "verbs": ["patch"] },
        ]),
    ));
    out.push(cluster_role_binding(GATEWAY, GATEWAY));
    // The replicas elect their status writer with a Lease in their own namespace; it
    // gives each Gateway a LoadBalancer Service there (and deletes those of Gateways
    // gone: only Services it labelled).
    out.push(role(
        GATEWAY,
        json!([
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "verbs": ["get", "create", "update"],
            },
            {
                "apiGroups": [""],
                "resources": ["services"],
                "verbs": ["create", "patch", "delete"],
            },
        ]),
    ));
    out.push(role_binding(GATEWAY, GATEWAY));
    for (name, default) in [(CLASS, true), (AMBASSADOR_CLASS, false)] {
        let mut m = named(name);
        if default {
            m["annotations"] = json!({ gateway::ingress::DEFAULT_CLASS_ANNOTATION: "true" });
        }
        out.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "IngressClass",
            "metadata": m,
            "spec": { "controller": gateway::world::INGRESS_CONTROLLER },
        }));
    }
    // The GatewayClass `kubewire` is the controller's to create (`--gateway-class`): a
    // manifest cannot carry it beside the CRDs it needs.
    let mut service_meta = meta(GATEWAY, true);
    if let Some(ip) = cfg.gateway_address {
        service_meta["annotations"] = json!({ "metallb.io/loadBalancerIPs": ip.to_string() });
    }
    out.push(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": service_meta,
        "spec": {
            "type": "LoadBalancer",
            // The client's address is kept: no second hop through another node.
            "externalTrafficPolicy": "Local",
            "selector": selector,
            "ports": [
                { "name": "http", "port": 80, "protocol": "TCP", "targetPort": "http" },
                { "name": "https", "port": 443, "protocol": "TCP", "targetPort": "https" },
            ],
        },
    }));
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(GATEWAY, true),
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": selector },
            "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
            "template": {
                "metadata": { "labels": labels(GATEWAY) },
                "spec": {
                    "serviceAccountName": GATEWAY,
                    "priorityClassName": "system-cluster-critical",
                    "nodeSelector": { "kubernetes.io/os": "linux" },
                    "affinity": { "podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 100,
                            "podAffinityTerm": {
                                "labelSelector": { "matchLabels": selector },
                                "topologyKey": "kubernetes.io/hostname",
                            },
                        }],
                    }},
                    "containers": [{
                        "name": "gateway",
                        "image": cfg.image,
                        "args": gateway_container_args(cfg),
                        "ports": [
                            { "name": "http", "containerPort": 80, "protocol": "TCP" },
                            { "name": "https", "containerPort": 443, "protocol": "TCP" },
                            { "name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP" },
                        ],
                        // Ready once the first configuration is served, and no longer
                        // while draining on SIGTERM.
                        "readinessProbe": {
                            "httpGet": { "path": "/ready", "port": "admin" },
                            "periodSeconds": 2,
                        },
                        "livenessProbe": {
                            "httpGet": { "path": "/healthz", "port": "admin" },
                            "periodSeconds": 10,
                            "failureThreshold": 3,
                        },
                        "resources": {
                            "requests": { "cpu": "100m", "memory": "64Mi" },
                            "limits": { "memory": "512Mi" },
                        },
                        // Ports 80 and 443 and nothing else.
                        "securityContext": security_context(&["NET_BIND_SERVICE"]),
                    }],
                },
            },
        },
    }));
    out.push(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(GATEWAY, true),
        "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector } },
    }));
    debug_assert!(
        out.iter().all(|o| o["metadata"]["namespace"].is_null()
            || o["metadata"]["namespace"] == json!(NAMESPACE))
    );
    out
}
