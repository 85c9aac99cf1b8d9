//! The manifests that install kubewire into a Kubernetes cluster, as Cilium's chart or
//! `cilium install` does (docs/install.md): the agent as a DaemonSet on every node
//! (routes, the CNI plugin and its config, Services), cluster DNS as a Deployment behind
//! `kube-system/kube-dns`, and for each the ServiceAccount and the least-privilege
//! ClusterRoles it runs with.
//!
//! One function makes them for a [`Config`] ([`manifests`]); `kubewire install --print`
//! prints it, `kubewire install` applies it ([`apply()`]), the lab applies it for its own
//! configuration, and the kustomize tree in `deploy/` is generated from the same code
//! ([`kustomize`]), with a test that `kubectl kustomize` of each overlay gives exactly
//! what [`manifests`] gives for the overlay's choices. What is planned (LoadBalancer
//! announcement, the gateway, NetworkPolicy, the mesh) gets its place here when it
//! exists: a part that is not written has no manifest.

mod apply;
mod flags;
pub mod gateway;
pub mod kustomize;
pub mod lb;
pub mod mesh;

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;

use cni::spec::RoutingMode;
use ipnet::IpNet;
use serde_json::{Value, json};

pub use apply::apply;

/// The namespace every object goes to: `kube-dns` must be in `kube-system`, and the
/// agent is a node's system component as kube-proxy is.
pub const NAMESPACE: &str = "kube-system";
/// The image of every container, without its tag.
pub const IMAGE_NAME: &str = "ghcr.io/kubewire/kubewire";
/// The image this build installs: its own version.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/kubewire/kubewire:", env!("CARGO_PKG_VERSION"));
/// The agent's DaemonSet, ServiceAccount, ClusterRole and binding.
pub const AGENT: &str = "kubewire-agent";
/// The ClusterRole (and binding) of what the agent's service proxy reads: left out
/// without the proxy.
pub const PROXY_ROLE: &str = "kubewire-proxy";
/// The ClusterRole (and binding) of what the agent's network policy reads: pods,
/// namespaces, NetworkPolicies and ClusterNetworkPolicies.
pub const POLICY_ROLE: &str = "kubewire-policy";
/// The ClusterRole (and binding) of what the agent's LoadBalancer announcers (L2 and BGP)
/// read and the Events they record, and the Role (and binding) in the agent's namespace
/// with which they write their ServiceL2Status and ServiceBGPStatus objects.
pub const ANNOUNCER_ROLE: &str = "kubewire-lb-announcer";
/// The DNS Deployment, ServiceAccount, ClusterRole, binding and disruption budget.
pub const DNS: &str = "kubewire-dns";
/// The ConfigMap that points the agent at the API server itself (`--api-server`).
pub const API_SERVER_CONFIG_MAP: &str = "kubewire-api-server";
/// The agent's directory on the node for what the host's processes reach: the CNI
/// plugin's socket ([`policy::DEFAULT_SOCKET`] is in it).
const RUN_DIR: &str = "/run/kubewire";
/// The label every object carries.
const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "kubewire");

/// What went wrong installing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API server refused an object or could not be reached.
    #[error("applying {what}")]
    Apply {
        /// `Kind namespace/name`.
        what: String,
        #[source]
        source: kube::Error,
    },
    /// An object could not be made into a request (a bug in this crate).
    #[error("object {what}: {reason}")]
    Object {
        /// `Kind namespace/name`.
        what: String,
        /// Why.
        reason: String,
    },
}

/// The API server's address for the agent: `HOST:PORT` (`[::1]:6443` for IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiServer {
    /// Its IP address or DNS name, without brackets.
    pub host: String,
    /// Its port.
    pub port: u16,
}

impl std::str::FromStr for ApiServer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not HOST:PORT (e.g. 10.0.0.1:6443 or [fd00::1]:6443)");
        let rest = s
            .strip_prefix("https://")
            .unwrap_or(s)
            .trim_end_matches('/');
        let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        // An IPv6 address only in brackets: `fd00::1:6443` could be either.
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) if v6.parse::<std::net::Ipv6Addr>().is_ok() => v6,
            Some(_) => return Err(bad()),
            None if host.contains(':') => return Err(bad()),
            None => host,
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(ApiServer {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The choices a manifest is made for: `kubewire install`'s flags. Every default is
/// the daemons' own, so that the default manifest passes no flag but the subcommand.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Config {
    /// How pod traffic crosses between nodes: native routes (the nodes share a network
    /// that routes pod addresses, one L2 segment does) or VXLAN (any underlay).
    #[arg(long, value_enum, default_value_t = RoutingMode::Native)]
    pub routing: RoutingMode,
    /// Leave Services to another proxy (kube-proxy): the agent runs without its service
    /// proxy and gets no right to read Services and EndpointSlices.
    #[arg(long = "no-proxy", action = clap::ArgAction::SetFalse)]
    pub proxy: bool,
    /// Keep the cluster's own DNS (CoreDNS): no kubewire DNS Deployment, no `kube-dns`
    /// Service.
    #[arg(long = "no-dns", action = clap::ArgAction::SetFalse)]
    pub dns: bool,
    /// The image of every container.
    #[arg(long, default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// The API server's real address (HOST:PORT), which the agent uses instead of the
    /// `kubernetes` Service's ClusterIP: the agent implements that ClusterIP itself, so
    /// a cluster without kube-proxy needs it (Cilium's `k8sServiceHost`). Without it the
    /// agent reaches the API through the ClusterIP, which needs another proxy running.
    #[arg(long)]
    pub api_server: Option<ApiServer>,
    /// The cluster's Service ranges, comma-separated: the DNS Service takes the tenth
    /// address of the first (10.96.0.10), dual-stack with two ranges [default: the
    /// agent's, 10.96.0.0/12,fd00:10:96::/112].
    #[arg(long = "service-cidr", value_delimiter = ',')]
    pub service_cidrs: Vec<IpNet>,
    /// The cluster's pod ranges, comma-separated, for the proxy's masquerade decision
    /// [default: each node's own pod ranges].
    #[arg(long = "cluster-cidr", value_delimiter = ',')]
    pub cluster_cidrs: Vec<IpNet>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The underlay MTU [default: the agent's, 1500].
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Where the container runtime reads CNI configurations on the nodes.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where the container runtime finds CNI plugins on the nodes.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the plugin keeps its IPAM state on the nodes; `$(NODE_NAME)` is the node's
    /// name [default: the agent's, /var/lib/cni/kubewire].
    #[arg(long)]
    pub cni_data_dir: Option<PathBuf>,
    /// Where the agent listens for the CNI plugin, which waits there until a new pod's
    /// network policies are in force; `$(NODE_NAME)` is the node's name [default: the
    /// agent's, /run/kubewire/policy.sock].
    #[arg(long)]
    pub policy_socket: Option<PathBuf>,
    /// DNS server replicas.
    #[arg(long, default_value_t = 2)]
    pub dns_replicas: u32,
    /// Leave LoadBalancer addresses to another implementation (MetalLB, a cloud's): no
    /// MetalLB CRDs and no allocation controller.
    #[arg(long = "no-lb", action = clap::ArgAction::SetFalse)]
    pub lb: bool,
    /// Run the allocation controller elsewhere (the lab runs it inside `kubewire
    /// controllers`): its ServiceAccount and role, but no Deployment.
    #[arg(long = "no-lb-controller-deployment", action = clap::ArgAction::SetFalse)]
    pub lb_controller_deployment: bool,
    /// Addresses of a default IPAddressPool (`metallb-system/default`, announced by an
    /// L2Advertisement of the same name), comma-separated CIDRs or FIRST-LAST ranges
    /// [default: none; pools are the cluster's own configuration].
    #[arg(long = "lb-pool", value_delimiter = ',')]
    pub lb_pool: Vec<String>,
    /// Leave Ingress, Gateway API and Emissary Mappings to another implementation: no
    /// gateway Deployment or Service, no IngressClasses, GatewayClass or their CRDs.
    #[arg(long = "no-gateway", action = clap::ArgAction::SetFalse)]
    pub gateway: bool,
    /// The address the gateway's LoadBalancer Service asks for (MetalLB's
    /// `metallb.io/loadBalancerIPs`) [default: whichever the pool gives].
    #[arg(long = "gateway-address")]
    pub gateway_address: Option<std::net::IpAddr>,
    /// Install the service mesh's identity issuer (`kubewire mesh identity`): the
    /// certificates of meshed pods (docs/mesh.md). The mesh's proxy is not here yet.
    #[arg(long)]
    pub mesh: bool,
    /// The mesh's default inbound policy, for pods whose own annotation and whose
    /// namespace's name none: `all-unauthenticated`, `all-authenticated`,
    /// `cluster-unauthenticated`, `cluster-authenticated`, `audit` or `deny` (Linkerd's
    /// `proxy.defaultInboundPolicy`).
    #[arg(long, default_value = ::mesh::authz::DEFAULT_POLICY, value_parser = ::mesh::authz::parse_default_policy)]
    pub mesh_default_inbound_policy: String,
}

impl Default for Config {
    fn default() -> Self {
        k8s::parse_flags(&[])
    }
}

impl Config {
    /// These choices as `kubewire install` flags (what parses back into `self`).
    pub fn to_args(&self) -> Vec<OsString> {
        let csv = |nets: &[IpNet]| {
            nets.iter()
                .map(IpNet::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut args: Vec<OsString> = vec![format!("--routing={}", self.routing.as_str()).into()];
        if !self.proxy {
            args.push("--no-proxy".into());
        }
        if !self.dns {
            args.push("--no-dns".into());
        }
        args.push(format!("--image={}", self.image).into());
        if let Some(api) = &self.api_server {
            args.push(format!("--api-server={api}").into());
        }
        if !self.service_cidrs.is_empty() {
            args.push(format!("--service-cidr={}", csv(&self.service_cidrs)).into());
        }
        if !self.cluster_cidrs.is_empty() {
            args.push(format!("--cluster-cidr={}", csv(&self.cluster_cidrs)).into());
        }
        args.push(format!("--cluster-domain={}", self.cluster_domain).into());
        if let Some(mtu) = self.mtu {
            args.push(format!("--mtu={mtu}").into());
        }
        for (flag, dir) in [
            ("--cni-conf-dir", Some(&self.cni_conf_dir)),
            ("--cni-bin-dir", Some(&self.cni_bin_dir)),
            ("--cni-data-dir", self.cni_data_dir.as_ref()),
            ("--policy-socket", self.policy_socket.as_ref()),
        ] {
            if let Some(dir) = dir {
                args.push(format!("{flag}={}", dir.display()).into());
            }
        }
        args.push(format!("--dns-replicas={}", self.dns_replicas).into());
        if !self.lb {
            args.push("--no-lb".into());
        }
        if !self.lb_controller_deployment {
            args.push("--no-lb-controller-deployment".into());
        }
        if !self.lb_pool.is_empty() {
            args.push(format!("--lb-pool={}", self.lb_pool.join(",")).into());
        }
        if !self.gateway {
            args.push("--no-gateway".into());
        }
        if let Some(ip) = self.gateway_address {
            args.push(format!("--gateway-address={ip}").into());
        }
        if self.mesh {
            args.push("--mesh".into());
        }
        if self.mesh_default_inbound_policy != ::mesh::authz::DEFAULT_POLICY {
            args.push(
                format!(
                    "--mesh-default-inbound-policy={}",
                    self.mesh_default_inbound_policy
                )
                .into(),
            );
        }
        args
    }

    /// The agent's flags (its Args) for these choices: the daemon's defaults but for
    /// what the choices change.
    pub fn agent_args(&self) -> agent::Args {
        let mut a = agent_defaults();
        a.mode = self.routing;
        if let Some(mtu) = self.mtu {
            a.mtu = mtu;
        }
        if let Some(dir) = &self.cni_data_dir {
            a.cni_data_dir = dir.clone();
        }
        if let Some(socket) = &self.policy_socket {
            a.policy.policy_socket = socket.clone();
        }
        a.proxy.proxy = self.proxy;
        if !self.cluster_cidrs.is_empty() {
            a.proxy.cluster_cidrs = self.cluster_cidrs.clone();
        }
        if !self.service_cidrs.is_empty() {
            a.proxy.service_cidrs = self.service_cidrs.clone();
        }
        if self.mesh {
            a.mesh_destination = Some(std::net::SocketAddr::from((
                std::net::Ipv4Addr::UNSPECIFIED,
                ::mesh::destination::PORT,
            )));
            a.mesh_default_inbound_policy = self.mesh_default_inbound_policy.clone();
        }
        a
    }

    /// The DNS server's flags (its Args) for these choices.
    pub fn dns_args(&self) -> dns::Args {
        let mut a = dns_defaults();
        a.cluster_domain = self.cluster_domain.clone();
        a
    }

    /// The Service ranges in effect: the flag's, else the agent's default.
    pub fn effective_service_cidrs(&self) -> Vec<IpNet> {
        self.agent_args().proxy.service_cidrs
    }

    /// The cluster DNS address: the tenth of the first Service range, as kubeadm picks it.
    pub fn dns_ip(&self) -> IpAddr {
        let first = self.effective_service_cidrs()[0];
        match first.network() {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) + 10).into()),
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) + 10).into()),
        }
    }
}

/// The node name a daemon's required `--node-name` gets where only its defaults matter
/// (in the manifests it comes from `NODE_NAME`, the downward API's `spec.nodeName`).
const ANY_NODE: &str = "node";

fn agent_defaults() -> agent::Args {
    k8s::parse_flags(&["--node-name", ANY_NODE])
}

fn dns_defaults() -> dns::Args {
    k8s::parse_flags(&[])
}

/// The container arguments of each daemon: the subcommand and only the flags that
/// differ from its defaults (`--node-name` comes from the environment).
pub fn agent_container_args(cfg: &Config) -> Vec<String> {
    let args = flags::non_default(&cfg.agent_args().to_args(), &agent_defaults().to_args());
    std::iter::once("agent".to_owned())
        .chain(args.into_iter().filter(|a| !a.starts_with("--node-name=")))
        .collect()
}

/// `dns` and its non-default flags.
pub fn dns_container_args(cfg: &Config) -> Vec<String> {
    let args = flags::non_default(&cfg.dns_args().to_args(), &dns_defaults().to_args());
    std::iter::once("dns".to_owned()).chain(args).collect()
}

/// `install-cni` with its default flags: the node's plugin directory is mounted where
/// the flag's default looks.
pub fn install_cni_container_args() -> Vec<String> {
    vec!["install-cni".to_owned()]
}

fn labels(name: &str) -> Value {
    json!({ "app.kubernetes.io/name": name, PART_OF.0: PART_OF.1 })
}

fn meta(name: &str, namespaced: bool) -> Value {
    let mut m = json!({ "name": name, "labels": labels(name) });
    if namespaced {
        m["namespace"] = json!(NAMESPACE);
    }
    m
}

fn service_account(name: &str) -> Value {
    json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(name, true) })
}

fn cluster_role(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": meta(name, false),
        "rules": rules,
    })
}

fn cluster_role_binding(name: &str, service_account: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": meta(name, false),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name },
        "subjects": [{ "kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE }],
    })
}

fn role(name: &str, rules: Value) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(name, true),
        "rules": rules,
    })
}

fn role_binding(name: &str, service_account: &str) -> Value {
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(name, true),
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name },
        "subjects": [{ "kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE }],
    })
}

/// Read-only: what a reflector (list, then watch) needs, and no more.
fn read(group: &str, resources: &[&str]) -> Value {
    json!({ "apiGroups": [group], "resources": resources, "verbs": ["list", "watch"] })
}

/// A container's security context: no privilege escalation, a read-only root file
/// system, and of the capabilities only `add`.
fn security_context(add: &[&str]) -> Value {
    let mut caps = json!({ "drop": ["ALL"] });
    if !add.is_empty() {
        caps["add"] = json!(add);
    }
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": caps,
        "readOnlyRootFilesystem": true,
    })
}

/// network-policy-api's ClusterNetworkPolicy CRD (release v0.2.0, experimental channel),
/// from `crates/policy/crds`: the admin tiers network policy enforces. Unchanged but for
/// the empty `status` stanza its generator leaves in the file: the API server writes the
/// status, so applying one made `kubectl apply` report the CRD "configured" at every
/// apply though nothing changed.
pub fn cluster_network_policy_crd() -> Value {
    let mut crd: Value = serde_yaml_ng::from_str(include_str!(
        "../../policy/crds/network-policy-api-v0.2.0/policy.networking.k8s.io_clusternetworkpolicies.yaml"
    ))
    .expect("the vendored CRD is YAML");
    if let Some(obj) = crd.as_object_mut() {
        obj.remove("status");
    }
    crd
}

/// The agent: its ServiceAccount, what it reads (Nodes; pods, namespaces,
/// NetworkPolicies and ClusterNetworkPolicies (whose CRD comes with it) for network policy; Services and EndpointSlices for the proxy; MetalLB's objects for the L2 and BGP announcers) and writes (the
/// announcers' Events, ServiceL2Statuses and ServiceBGPStatuses), the ConfigMap with the
/// API server's address, and the DaemonSet.
fn agent_objects(cfg: &Config) -> Vec<Value> {
    let mut out = vec![
        service_account(AGENT),
        cluster_role(AGENT, json!([read("", &["nodes"])])),
        cluster_role_binding(AGENT, AGENT),
    ];
    out.push(cluster_network_policy_crd());
    out.push(cluster_role(
        POLICY_ROLE,
        json!([
            read("", &["namespaces", "pods"]),
            read("networking.k8s.io", &["networkpolicies"]),
            read(policy::admin::GROUP, &["clusternetworkpolicies"]),
        ]),
    ));
    out.push(cluster_role_binding(POLICY_ROLE, AGENT));
    if cfg.proxy {
        out.push(cluster_role(
            PROXY_ROLE,
            json!([
                read("", &["services"]),
                read("discovery.k8s.io", &["endpointslices"]),
            ]),
        ));
        out.push(cluster_role_binding(PROXY_ROLE, AGENT));
    }
    // The announcers: MetalLB's configuration, the Services and their endpoints' nodes;
    // Events on the Services they take over and on the BGPPeers and BGPAdvertisements;
    // their ServiceL2Statuses and ServiceBGPStatuses.
    out.extend([
        cluster_role(
            ANNOUNCER_ROLE,
            json!([
                read("", &["services"]),
                read("discovery.k8s.io", &["endpointslices"]),
                read(
                    "metallb.io",
                    &[
                        "bfdprofiles",
                        "bgpadvertisements",
                        "bgppeers",
                        "communities",
                        "ipaddresspools",
                        "l2advertisements",
                    ]
                ),
                { "apiGroups": [""], "resources": ["events"], "verbs": ["create"] },
            ]),
        ),
        cluster_role_binding(ANNOUNCER_ROLE, AGENT),
        role(
            ANNOUNCER_ROLE,
            json!([
                {
                    "apiGroups": ["metallb.io"],
                    "resources": ["servicebgpstatuses"],
                    "verbs": ["list", "watch", "get", "create", "patch", "delete"],
                },
                {
                    "apiGroups": ["metallb.io"],
                    "resources": ["servicebgpstatuses/status"],
                    "verbs": ["patch"],
                },
                {
                    "apiGroups": ["metallb.io"],
                    "resources": ["servicel2statuses"],
                    "verbs": ["list", "watch", "create", "delete"],
                },
                {
                    "apiGroups": ["metallb.io"],
                    "resources": ["servicel2statuses/status"],
                    "verbs": ["patch"],
                },
            ]),
        ),
        role_binding(ANNOUNCER_ROLE, AGENT),
    ]);
    if let Some(api) = &cfg.api_server {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta(API_SERVER_CONFIG_MAP, true),
            "data": {
                "KUBERNETES_SERVICE_HOST": api.host,
                "KUBERNETES_SERVICE_PORT": api.port.to_string(),
            },
        }));
    }
    let pod_labels = labels(AGENT);
    out.push(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": meta(AGENT, true),
        "spec": {
            "selector": { "matchLabels": { "app.kubernetes.io/name": AGENT } },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": {
                    "serviceAccountName": AGENT,
                    "priorityClassName": "system-node-critical",
                    // The node's own network: the agent sets up routes, the CNI config
                    // and nftables there, and pods need it before the node is Ready.
                    "hostNetwork": true,
                    "nodeSelector": { "kubernetes.io/os": "linux" },
                    // Every node, whatever its taints: not Ready yet (the agent is what
                    // makes it Ready), cordoned, or reserved for something else.
                    "tolerations": [{ "operator": "Exists" }],
                    "initContainers": [{
                        "name": "install-cni",
                        "image": cfg.image,
                        "args": install_cni_container_args(),
                        "securityContext": security_context(&[]),
                        "volumeMounts": [{ "name": "cni-bin", "mountPath": "/opt/cni/bin" }],
                    }],
                    "containers": [{
                        "name": "agent",
                        "image": cfg.image,
                        "args": agent_container_args(cfg),
                        "env": [{
                            "name": "NODE_NAME",
                            "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } },
                        }],
                        // KUBERNETES_SERVICE_HOST/PORT, when the install names the API
                        // server: they override the ClusterIP kubelet puts there.
                        "envFrom": [{
                            "configMapRef": { "name": API_SERVER_CONFIG_MAP, "optional": true },
                        }],
                        "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } },
                        // Routes, the VXLAN device, nftables and conntrack over netlink;
                        // ARP and NDP answers through packet sockets.
                        "securityContext": security_context(&["NET_ADMIN", "NET_RAW"]),
                        "volumeMounts": [
                            { "name": "cni-conf", "mountPath": "/etc/cni/net.d" },
                            // The socket where the CNI plugin, on the host, waits for a
                            // new pod's network policies.
                            { "name": "run", "mountPath": RUN_DIR },
                        ],
                    }],
                    "volumes": [
                        {
                            "name": "cni-bin",
                            "hostPath": { "path": cfg.cni_bin_dir, "type": "DirectoryOrCreate" },
                        },
                        {
                            "name": "cni-conf",
                            "hostPath": { "path": cfg.cni_conf_dir, "type": "DirectoryOrCreate" },
                        },
                        {
                            "name": "run",
                            "hostPath": { "path": RUN_DIR, "type": "DirectoryOrCreate" },
                        },
                    ],
                },
            },
        },
    }));
    out
}

/// Cluster DNS: its ServiceAccount and what it reads, the `kube-dns` Service at the DNS
/// address (53/UDP, 53/TCP, 9153/TCP, as kubeadm's), the Deployment and its budget.
fn dns_objects(cfg: &Config) -> Vec<Value> {
    let selector = json!({ "k8s-app": "kube-dns" });
    let mut pod_labels = labels(DNS);
    pod_labels["k8s-app"] = json!("kube-dns");
    let dual = cfg.effective_service_cidrs().len() > 1;
    let mut service_meta = meta("kube-dns", true);
    service_meta["labels"]["k8s-app"] = json!("kube-dns");
    service_meta["labels"]["kubernetes.io/name"] = json!(DNS);
    service_meta["annotations"] =
        json!({ "prometheus.io/port": "9153", "prometheus.io/scrape": "true" });
    vec![
        service_account(DNS),
        // Pods only for `--pods verified` (records of pods that exist), as CoreDNS's
        // role allows it; nothing else is read.
        cluster_role(
            DNS,
            json!([
                read("", &["pods", "services"]),
                read("discovery.k8s.io", &["endpointslices"]),
            ]),
        ),
        cluster_role_binding(DNS, DNS),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": service_meta,
            "spec": {
                "selector": selector,
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
            "metadata": meta(DNS, true),
            "spec": {
                "replicas": cfg.dns_replicas,
                "selector": { "matchLabels": selector },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 1 } },
                "template": {
                    "metadata": { "labels": pod_labels },
                    "spec": {
                        "serviceAccountName": DNS,
                        "priorityClassName": "system-cluster-critical",
                        // Upstream names resolve through the node's resolver.
                        "dnsPolicy": "Default",
                        "nodeSelector": { "kubernetes.io/os": "linux" },
                        "tolerations": [
                            { "key": "CriticalAddonsOnly", "operator": "Exists" },
                            { "key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule" },
                        ],
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
                            "name": "dns",
                            "image": cfg.image,
                            "args": dns_container_args(cfg),
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
                            "resources": {
                                "requests": { "cpu": "100m", "memory": "70Mi" },
                                "limits": { "memory": "170Mi" },
                            },
                            // Port 53 and nothing else.
                            "securityContext": security_context(&["NET_BIND_SERVICE"]),
                        }],
                    },
                },
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(DNS, true),
            "spec": { "maxUnavailable": 1, "selector": { "matchLabels": selector } },
        }),
    ]
}

/// Every object of the install for `cfg`, in the order kustomize prints them (its
/// `legacy` order: kinds that others need first, then by kind and name).
pub fn manifests(cfg: &Config) -> Vec<Value> {
    let mut out = agent_objects(cfg);
    if cfg.dns {
        out.extend(dns_objects(cfg));
    }
    out.extend(lb::objects(cfg));
    out.extend(gateway::objects(cfg));
    out.extend(mesh::objects(cfg));
    out.sort_by_key(kustomize::legacy_order);
    out
}

/// Objects as one YAML stream, `---` between documents.
pub fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml_ng::to_string(o).expect("JSON values are YAML"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// `Kind namespace/name` (or `Kind name`) of an object, for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    let name = obj["metadata"]["name"].as_str().unwrap_or("?");
    match obj["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

#[cfg(test)]
mod tests;
