//! The cluster add-ons `lab up` installs once the nodes are Ready, as kubeadm installs
//! CoreDNS: ordinary API objects, run by the nodes as pods.

use kube::api::{DynamicObject, PostParams};
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::{Error, LabConfig, Result};

/// The image name that makes the pod runner run this very binary with the container's
/// `args` (docs/node.md).
const IMAGE: &str = "ghcr.io/kubewire/kubewire:latest";

/// The RBAC group.
const RBAC: &str = "rbac.authorization.k8s.io";

/// A ClusterRole and a ClusterRoleBinding of it (both named `name`) to `subjects`.
fn cluster_role(name: &str, rules: Value, subjects: Value) -> [Value; 2] {
    [
        json!({
            "apiVersion": format!("{RBAC}/v1"),
            "kind": "ClusterRole",
            "metadata": { "name": name },
            "rules": rules,
        }),
        json!({
            "apiVersion": format!("{RBAC}/v1"),
            "kind": "ClusterRoleBinding",
            "metadata": { "name": name },
            "roleRef": { "apiGroup": RBAC, "kind": "ClusterRole", "name": name },
            "subjects": subjects,
        }),
    ]
}

/// What the agent reads, granted to the nodes whose credentials it runs with: every
/// Node (routes to the other nodes' pod ranges), Services and EndpointSlices (the
/// service proxy). The Node authorizer alone lets a node read only its own Node, as in
/// a real cluster, where the agent runs as its own ServiceAccount instead.
pub fn agent_rbac() -> Vec<Value> {
    cluster_role(
        "kubewire-agent",
        json!([
            { "apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"] },
            { "apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch"] },
            { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
        ]),
        json!([{ "kind": "Group", "apiGroup": RBAC, "name": "system:nodes" }]),
    )
    .into()
}

/// The cluster DNS: Service `kube-system/kube-dns` at the DNS address (53/UDP, 53/TCP,
/// 9153/TCP, as kubeadm's) in front of a Deployment of two `kubewire dns` pods, which
/// run as the ServiceAccount `kube-system/kubewire-dns`, allowed to list and watch what
/// the server answers from (Services, EndpointSlices, Pods) and nothing else.
pub fn dns(cfg: &LabConfig) -> Vec<Value> {
    let labels = json!({ "k8s-app": "kube-dns" });
    let dual = cfg.service_cidrs.len() > 1;
    let [role, binding] = cluster_role(
        "kubewire-dns",
        json!([
            { "apiGroups": [""], "resources": ["services", "pods"], "verbs": ["list", "watch"] },
            { "apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"] },
        ]),
        json!([{ "kind": "ServiceAccount", "name": "kubewire-dns", "namespace": "kube-system" }]),
    );
    vec![
        json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": "kubewire-dns", "namespace": "kube-system" },
        }),
        role,
        binding,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": "kube-dns",
                "namespace": "kube-system",
                "labels": { "k8s-app": "kube-dns", "kubernetes.io/name": "kubewire-dns" },
                "annotations": { "prometheus.io/port": "9153", "prometheus.io/scrape": "true" },
            },
            "spec": {
                "selector": labels,
                "clusterIP": cfg.dns_ip().to_string(),
                "ipFamilyPolicy": if dual { "PreferDualStack" } else { "SingleStack" },
                "ports": [
                    { "name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53 },
                    { "name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53 },
                    { "name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153 },
                ],
            },
        }),
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": "kubewire-dns",
                "namespace": "kube-system",
                "labels": labels,
            },
            "spec": {
                "replicas": 2,
                "selector": { "matchLabels": labels },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "template": {
                    "metadata": { "labels": labels },
                    "spec": {
                        "serviceAccountName": "kubewire-dns",
                        // The DNS server resolves upstream names through the node's resolver.
                        "dnsPolicy": "Default",
                        "containers": [{
                            "name": "dns",
                            "image": IMAGE,
                            "args": ["dns", "--cluster-domain", cfg.cluster_domain],
                            "ports": [
                                { "name": "dns", "containerPort": 53, "protocol": "UDP" },
                                { "name": "dns-tcp", "containerPort": 53, "protocol": "TCP" },
                                { "name": "metrics", "containerPort": 9153, "protocol": "TCP" },
                            ],
                            "readinessProbe": {
                                "httpGet": { "path": "/ready", "port": 8080 },
                                "periodSeconds": 1,
                            },
                            "livenessProbe": {
                                "httpGet": { "path": "/health", "port": 8080 },
                                "periodSeconds": 10,
                                "failureThreshold": 5,
                            },
                        }],
                    },
                },
            },
        }),
    ]
}

/// Creates `objects`, or replaces them when they exist (a kept data directory).
pub async fn apply(client: &Client, objects: &[Value]) -> Result<()> {
    for obj in objects {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let kind = obj["kind"].as_str().unwrap_or_default();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let plural = format!("{}s", kind.to_ascii_lowercase());
        let ar = ApiResource {
            group: group.to_owned(),
            version: version.to_owned(),
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
            plural,
        };
        // Cluster-scoped objects have no namespace.
        let (api, what): (Api<DynamicObject>, String) = match ns {
            Some(ns) => (
                Api::namespaced_with(client.clone(), ns, &ar),
                format!("{kind} {ns}/{name}"),
            ),
            None => (Api::all_with(client.clone(), &ar), format!("{kind} {name}")),
        };
        let err = |e: kube::Error| Error::Component(format!("applying {what}: {e}"));
        let object: DynamicObject = serde_json::from_value(obj.clone())
            .map_err(|e| Error::Component(format!("add-on {what}: {e}")))?;
        // The controllers write the same objects (status, annotations) while the lab
        // starts on kept data: a replace that lost that race is tried again.
        let mut attempts = 0;
        loop {
            let result = match api.get_opt(name).await.map_err(err)? {
                None => api.create(&PostParams::default(), &object).await.map(drop),
                Some(current) => {
                    let mut object = object.clone();
                    object.metadata.resource_version = current.metadata.resource_version;
                    api.replace(name, &PostParams::default(), &object)
                        .await
                        .map(drop)
                }
            };
            match result {
                Err(kube::Error::Api(e)) if e.code == 409 && attempts < 20 => attempts += 1,
                other => break other.map_err(err)?,
            }
        }
    }
    Ok(())
}
