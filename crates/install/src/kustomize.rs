//! The kustomize tree in `deploy/`, generated from [`manifests`] so that the two cannot
//! drift: `base/` is the default install's objects, each `components/X` is the
//! difference one choice makes to it (kustomize components, so that choices combine),
//! each `overlays/X` a ready combination, and `deploy/kustomization.yaml` the default
//! (`kubectl apply -k deploy/`). A difference is expressed as kustomize expresses it:
//! objects added (a resource file), objects removed (`$patch: delete`), and flags added
//! to a container's `args` (JSON patch `add` at `args/-`); anything else is refused here,
//! so that a new choice that needs more shows up as a failing test, not as a manifest
//! that silently differs. `tests/e2e/tests/install.rs` checks that `kubectl kustomize`
//! of every overlay gives exactly [`manifests`] of the overlay's [`Config`].

use std::path::PathBuf;

use serde_json::{Value, json};
use serde_yaml_ng::{Mapping, Value as Yaml};

use crate::{Config, IMAGE_NAME, manifests, to_yaml};

/// What every generated file starts with.
const GENERATED: &str =
    "# Generated from crates/install by `make deploy`; edit the code, not this file.\n";

/// kustomize's `legacy` output order (its default): these kinds first, in this order,
/// then every other kind (by group, version and kind), then [`ORDER_LAST`]; then
/// namespace and name.
const ORDER_FIRST: &[&str] = &[
    "Namespace",
    "ResourceQuota",
    "StorageClass",
    "CustomResourceDefinition",
    "ServiceAccount",
    "PodSecurityPolicy",
    "Role",
    "ClusterRole",
    "RoleBinding",
    "ClusterRoleBinding",
    "ConfigMap",
    "Secret",
    "Endpoints",
    "Service",
    "LimitRange",
    "PriorityClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Deployment",
    "StatefulSet",
    "CronJob",
    "PodDisruptionBudget",
];

/// The kinds kustomize's `legacy` order puts last: webhooks, so that they are admitted
/// after what serves them.
const ORDER_LAST: &[&str] = &[
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The sort key of `obj` in kustomize's `legacy` order.
pub fn legacy_order(obj: &Value) -> (usize, String, String, String) {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let rank = ORDER_FIRST
        .iter()
        .position(|k| *k == kind)
        .or_else(|| {
            ORDER_LAST
                .iter()
                .position(|k| *k == kind)
                .map(|i| ORDER_FIRST.len() + 1 + i)
        })
        .unwrap_or(ORDER_FIRST.len());
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("~G", api_version));
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        rank,
        format!("{group}_{version}_{kind}"),
        text(&obj["metadata"]["namespace"]),
        text(&obj["metadata"]["name"]),
    )
}

/// A single choice, as a kustomize component.
#[derive(Debug, Clone)]
pub struct Component {
    /// Its directory under `deploy/components/`.
    pub name: &'static str,
    /// What it does, for the file's comment.
    pub about: &'static str,
    /// The default install with this choice made.
    pub config: Config,
}

/// A ready combination, as an overlay.
#[derive(Debug, Clone)]
pub struct Overlay {
    /// Its directory under `deploy/overlays/`.
    pub name: &'static str,
    /// What it installs, for the file's comment.
    pub about: &'static str,
    /// The components it combines, in this order (`None`: the difference from the base
    /// is written into the overlay itself).
    pub components: Option<&'static [&'static str]>,
    /// The choices it stands for: `kubectl kustomize deploy/overlays/NAME` gives
    /// [`manifests`] of these.
    pub config: Config,
}

/// The lab's API server address for its nodes (the underlay's `.1`), and where each lab
/// node keeps its IPAM state: the lab's own configuration, as `kubewire lab up` makes it
/// for a lab of the default name and ranges (the lab crate tests that it does).
pub const LAB_API_SERVER: &str = "198.18.0.1:6443";
/// The IPAM directory of a default lab's nodes: the node's `/var/lib/cni/kubewire` in
/// the directory the lab keeps as the node's root.
pub const LAB_CNI_DATA_DIR: &str =
    "/var/lib/kubewire/kubewire/$(NODE_NAME)/root/var/lib/cni/kubewire";
/// The policy socket of a default lab's nodes: the node's `/run/kubewire/policy.sock` in
/// the directory the lab keeps as the node's root, a path the lab's CNI plugin (run on
/// the host) reaches as it is.
pub const LAB_POLICY_SOCKET: &str =
    "/var/lib/kubewire/kubewire/$(NODE_NAME)/root/run/kubewire/policy.sock";

/// Every component.
pub fn components() -> Vec<Component> {
    vec![
        Component {
            name: "vxlan",
            about: "VXLAN between nodes instead of native routes (any underlay that carries UDP).",
            config: Config {
                routing: cni::spec::RoutingMode::Vxlan,
                ..Config::default()
            },
        },
        Component {
            name: "no-proxy",
            about: "No service proxy in the agent: Services stay with kube-proxy.",
            config: Config {
                proxy: false,
                ..Config::default()
            },
        },
        Component {
            name: "no-dns",
            about: "No kubewire DNS: the cluster keeps its own (CoreDNS).",
            config: Config {
                dns: false,
                ..Config::default()
            },
        },
        Component {
            name: "no-lb",
            about: "No LoadBalancer address allocation: no MetalLB CRDs, no controller (MetalLB or a cloud does it).",
            config: Config {
                lb: false,
                ..Config::default()
            },
        },
        Component {
            name: "no-gateway",
            about: "No gateway: Ingress, Gateway API and Mappings stay with another implementation (no CRDs, classes, Deployment or Service).",
            config: Config {
                gateway: false,
                ..Config::default()
            },
        },
    ]
}

/// Every overlay.
pub fn overlays() -> Vec<Overlay> {
    let component = |name: &str| {
        components()
            .into_iter()
            .find(|c| c.name == name)
            .expect("a component of that name")
            .config
    };
    vec![
        Overlay {
            name: "vxlan",
            about: "The default install with VXLAN between nodes",
            components: Some(&["vxlan"]),
            config: component("vxlan"),
        },
        Overlay {
            name: "no-proxy",
            about: "The agent without its service proxy, beside kube-proxy",
            components: Some(&["no-proxy"]),
            config: component("no-proxy"),
        },
        Overlay {
            name: "no-dns",
            about: "The agent only, the cluster keeps its own DNS",
            components: Some(&["no-dns"]),
            config: component("no-dns"),
        },
        Overlay {
            name: "no-lb",
            about: "Without LoadBalancer address allocation, beside MetalLB or a cloud's",
            components: Some(&["no-lb"]),
            config: component("no-lb"),
        },
        Overlay {
            name: "no-gateway",
            about: "Without the gateway, beside another Ingress or Gateway API implementation",
            components: Some(&["no-gateway"]),
            config: component("no-gateway"),
        },
        Overlay {
            name: "lab",
            about: "What `kubewire lab up` installs in a lab of the default name and ranges",
            components: None,
            config: lab_config(),
        },
    ]
}

/// The default lab's LoadBalancer pool: the underlay's host numbers 200-250, in both
/// families.
pub const LAB_LB_POOL: [&str; 2] = ["198.18.0.200-198.18.0.250", "2001:2::c8-2001:2::fa"];

/// The default lab's gateway address: the pool's last IPv4 address, so that Services a
/// user creates get the pool's addresses from its first on.
pub const LAB_GATEWAY_ADDRESS: &str = "198.18.0.250";

/// The choices of a default lab (docs/lab.md): the API server on the underlay, the pod
/// ranges, IPAM state under each node's directory, the LoadBalancer controller in the
/// lab's controllers, a default pool, and the mesh.
fn lab_config() -> Config {
    Config {
        lb_controller_deployment: false,
        lb_pool: LAB_LB_POOL.iter().map(|s| s.to_string()).collect(),
        api_server: Some(LAB_API_SERVER.parse().expect("a valid address")),
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("valid"),
            "fd00:10:244::/56".parse().expect("valid"),
        ],
        cni_data_dir: Some(LAB_CNI_DATA_DIR.into()),
        policy_socket: Some(LAB_POLICY_SOCKET.into()),
        gateway_address: Some(LAB_GATEWAY_ADDRESS.parse().expect("a valid address")),
        mesh: true,
        ..Config::default()
    }
}

/// `Kind`, namespace and name: what identifies an object.
fn id(obj: &Value) -> (String, String, String) {
    let key = legacy_order(obj);
    (key.1, key.2, key.3)
}

/// What a kustomization adds to the base to turn the default install into `target`.
#[derive(Debug, Default)]
struct Difference {
    /// Objects the base lacks.
    added: Vec<Value>,
    /// Strategic-merge patches (`$patch: delete`) of objects the base has and `target`
    /// does not.
    deleted: Vec<Value>,
    /// JSON patches (appended container args, added annotations): (target object,
    /// operations).
    appended_args: Vec<(Value, Vec<Value>)>,
}

/// The difference between the base's objects and `target`'s; panics at a difference
/// that kustomize's patches here cannot express (see the module's comment).
fn difference(base: &[Value], target: &[Value], what: &str) -> Difference {
    let mut d = Difference::default();
    for t in target {
        let Some(b) = base.iter().find(|b| id(b) == id(t)) else {
            d.added.push(t.clone());
            continue;
        };
        if b == t {
            continue;
        }
        // Only appended container args: everything else must be equal.
        let mut ops = Vec::new();
        let (mut b_rest, mut t_rest) = (b.clone(), t.clone());
        for list in ["initContainers", "containers"] {
            let path = |i: usize| format!("/spec/template/spec/{list}/{i}/args/-");
            let bs = b["spec"]["template"]["spec"][list].as_array();
            let ts = t["spec"]["template"]["spec"][list].as_array();
            for (i, (bc, tc)) in bs
                .into_iter()
                .flatten()
                .zip(ts.into_iter().flatten())
                .enumerate()
            {
                let (ba, ta) = (
                    bc["args"].as_array().cloned().unwrap_or_default(),
                    tc["args"].as_array().cloned().unwrap_or_default(),
                );
                assert!(
                    ta.starts_with(&ba),
                    "{what}: {} changes the args of {list}[{i}] beyond appending: {ba:?} -> {ta:?}",
                    crate::describe(t)
                );
                for arg in &ta[ba.len()..] {
                    ops.push(json!({ "op": "add", "path": path(i), "value": arg }));
                }
                b_rest["spec"]["template"]["spec"][list][i]["args"] = Value::Null;
                t_rest["spec"]["template"]["spec"][list][i]["args"] = Value::Null;
            }
        }
        // Annotations the base object has none of (the lab's gateway address).
        if b_rest["metadata"]["annotations"].is_null()
            && !t_rest["metadata"]["annotations"].is_null()
        {
            ops.push(json!({
                "op": "add",
                "path": "/metadata/annotations",
                "value": t_rest["metadata"]["annotations"].take(),
            }));
            t_rest["metadata"]
                .as_object_mut()
                .expect("metadata is an object")
                .remove("annotations");
        }
        assert!(
            b_rest == t_rest,
            "{what}: {} differs from the base beyond container args and added annotations; teach kustomize.rs that difference",
            crate::describe(t)
        );
        d.appended_args.push((t.clone(), ops));
    }
    for b in base {
        if !target.iter().any(|t| id(t) == id(b)) {
            let mut meta = json!({ "name": b["metadata"]["name"] });
            if let Some(ns) = b["metadata"]["namespace"].as_str() {
                meta["namespace"] = json!(ns);
            }
            d.deleted.push(json!({
                "$patch": "delete",
                "apiVersion": b["apiVersion"],
                "kind": b["kind"],
                "metadata": meta,
            }));
        }
    }
    d
}

fn y(s: &str) -> Yaml {
    Yaml::String(s.to_owned())
}

fn map(entries: Vec<(&str, Yaml)>) -> Yaml {
    let mut m = Mapping::new();
    for (k, v) in entries {
        m.insert(y(k), v);
    }
    Yaml::Mapping(m)
}

fn seq(items: impl IntoIterator<Item = Yaml>) -> Yaml {
    Yaml::Sequence(items.into_iter().collect())
}

/// `patches:` entries for a difference.
fn patches(d: &Difference) -> Vec<Yaml> {
    let mut out = Vec::new();
    for (obj, ops) in &d.appended_args {
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let mut target = vec![
            ("group", y(group)),
            ("version", y(version)),
            ("kind", y(obj["kind"].as_str().unwrap_or_default())),
            (
                "name",
                y(obj["metadata"]["name"].as_str().unwrap_or_default()),
            ),
        ];
        if let Some(ns) = obj["metadata"]["namespace"].as_str() {
            target.push(("namespace", y(ns)));
        }
        let ops = serde_yaml_ng::to_string(ops).expect("JSON is YAML");
        out.push(map(vec![("target", map(target)), ("patch", y(&ops))]));
    }
    for delete in &d.deleted {
        let patch = serde_yaml_ng::to_string(delete).expect("JSON is YAML");
        out.push(map(vec![("patch", y(&patch))]));
    }
    out
}

fn kustomization(kind: &str, entries: Vec<(&str, Yaml)>) -> Yaml {
    let api_version = if kind == "Component" {
        "kustomize.config.k8s.io/v1alpha1"
    } else {
        "kustomize.config.k8s.io/v1beta1"
    };
    let mut all = vec![("apiVersion", y(api_version)), ("kind", y(kind))];
    all.extend(entries);
    map(all)
}

fn file(comment: &str, yaml: &Yaml) -> String {
    let comment: String = comment.lines().map(|l| format!("# {l}\n")).collect();
    format!(
        "{GENERATED}{comment}{}",
        serde_yaml_ng::to_string(yaml).expect("YAML")
    )
}

/// `kubewire install` flags that make `cfg` (those that differ from the defaults), quoted
/// for a shell where they need it.
pub fn non_default_flags(cfg: &Config) -> Vec<String> {
    let defaults = Config::default().to_args();
    cfg.to_args()
        .iter()
        .filter(|a| !defaults.contains(a))
        .map(|a| {
            let a = a.to_string_lossy();
            if a.contains('$') {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect()
}

/// Every file of `deploy/`, with its path under it.
pub fn deploy_tree() -> Vec<(PathBuf, String)> {
    let default = Config::default();
    let base = manifests(&default);
    let tag = default
        .image
        .strip_prefix(&format!("{IMAGE_NAME}:"))
        .expect("the default image is IMAGE_NAME:TAG");
    let mut out = Vec::new();
    let (gateway, rest): (Vec<Value>, Vec<Value>) = base
        .iter()
        .cloned()
        .partition(crate::gateway::is_gateway_object);
    let (lb, rest): (Vec<Value>, Vec<Value>) = rest.into_iter().partition(crate::lb::is_lb_object);
    let (agent, dns): (Vec<Value>, Vec<Value>) = rest.into_iter().partition(|o| {
        o["metadata"]["labels"]["app.kubernetes.io/name"] != json!(crate::DNS)
            && o["metadata"]["name"] != json!("kube-dns")
    });
    out.push((
        "base/agent.yaml".into(),
        format!(
            "{GENERATED}# The agent: a DaemonSet on every node, its ServiceAccount and what it may read, and\n# network-policy-api's ClusterNetworkPolicy CRD (v0.2.0, experimental channel) that it enforces.\n{}",
            to_yaml(&agent)
        ),
    ));
    out.push((
        "base/dns.yaml".into(),
        format!(
            "{GENERATED}# Cluster DNS: the kube-dns Service, a Deployment, its ServiceAccount and what it may read.\n{}",
            to_yaml(&dns)
        ),
    ));
    out.push((
        "base/lb.yaml".into(),
        format!(
            "{GENERATED}# LoadBalancer addresses: MetalLB's CRDs (v0.16.1, unchanged), the metallb-system\n# namespace for pools and advertisements, the allocation controller and what it may do.\n{}",
            to_yaml(&lb)
        ),
    ));
    out.push((
        "base/gateway.yaml".into(),
        format!(
            "{GENERATED}# The gateway: Gateway API's standard-channel CRDs (v1.6.1) and Emissary's CRDs (v4.1.0),\n# unchanged; the IngressClasses and GatewayClass; its LoadBalancer Service, Deployment,\n# ServiceAccount and what it may do.\n{}",
            to_yaml(&gateway)
        ),
    ));
    out.push((
        "base/kustomization.yaml".into(),
        file(
            "The default install: the agent (native routing, the service proxy), cluster DNS and\n\
             LoadBalancer address allocation (MetalLB's API), the gateway (Ingress, Gateway API,\n\
             Emissary Mappings).\n\
             The image of every container is set here; an overlay of your own can set it too\n\
             (`kustomize edit set image ghcr.io/kubewire/kubewire=REGISTRY/kubewire:TAG`).",
            &kustomization(
                "Kustomization",
                vec![
                    (
                        "resources",
                        seq([
                            y("agent.yaml"),
                            y("dns.yaml"),
                            y("lb.yaml"),
                            y("gateway.yaml"),
                        ]),
                    ),
                    (
                        "images",
                        seq([map(vec![("name", y(IMAGE_NAME)), ("newTag", y(tag))])]),
                    ),
                ],
            ),
        ),
    ));
    out.push((
        "kustomization.yaml".into(),
        file(
            "kubewire's default install: `kubectl apply -k deploy/`. Other choices are in\n\
             overlays/ (ready to apply) and components/ (to combine in an overlay of your own);\n\
             docs/install.md tells which to take.",
            &kustomization("Kustomization", vec![("resources", seq([y("base")]))]),
        ),
    ));
    for c in components() {
        let d = difference(&base, &manifests(&c.config), c.name);
        assert!(
            d.added.is_empty(),
            "component {}: a component adds no objects here",
            c.name
        );
        out.push((
            format!("components/{}/kustomization.yaml", c.name).into(),
            file(
                c.about,
                &kustomization("Component", vec![("patches", seq(patches(&d)))]),
            ),
        ));
    }
    for o in overlays() {
        let dir = format!("overlays/{}", o.name);
        let mut entries = Vec::new();
        let mut resources = vec![y("../../base")];
        match o.components {
            Some(names) => {
                let paths = names.iter().map(|n| y(&format!("../../components/{n}")));
                entries.push(("resources", seq(resources)));
                entries.push(("components", seq(paths)));
            }
            None => {
                let d = difference(&base, &manifests(&o.config), o.name);
                if !d.added.is_empty() {
                    resources.push(y("objects.yaml"));
                    out.push((
                        format!("{dir}/objects.yaml").into(),
                        format!(
                            "{GENERATED}# What the {} overlay adds to the base.\n{}",
                            o.name,
                            to_yaml(&d.added)
                        ),
                    ));
                }
                entries.push(("resources", seq(resources)));
                let p = patches(&d);
                if !p.is_empty() {
                    entries.push(("patches", seq(p)));
                }
            }
        }
        let args = non_default_flags(&o.config).join(" ");
        out.push((
            format!("{dir}/kustomization.yaml").into(),
            file(
                &format!(
                    "{}: `kubectl apply -k deploy/{dir}`, the same as\n`kubewire install --print {args}`.",
                    o.about
                ),
                &kustomization("Kustomization", entries),
            ),
        ));
    }
    out.sort();
    out
}
