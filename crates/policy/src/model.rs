//! What network policy reads of the cluster, reduced on arrival: pods (labels,
//! addresses, node, named ports), namespaces (labels) and NetworkPolicies (parsed into
//! [`Policy`]). Nothing here knows about nftables.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Namespace, Pod as K8sPod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::admin::{AdminPeer, AdminPolicy, AdminRule, PodSet, Tier};

/// Labels of a pod or namespace: pairs sorted by key. (A pod has a few; a `BTreeMap`
/// takes half a kilobyte however few.)
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &self.0[i].1)
    }

    /// Sets label `key` to `value`.
    pub fn insert(&mut self, key: String, value: String) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => self.0[i].1 = value,
            Err(i) => self.0.insert(i, (key, value)),
        }
    }

    /// The labels, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Labels {
        let mut labels = Labels::default();
        for (k, v) in pairs {
            labels.insert(k, v);
        }
        labels
    }
}

impl<const N: usize> From<[(String, String); N]> for Labels {
    fn from(pairs: [(String, String); N]) -> Labels {
        pairs.into_iter().collect()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Labels {
        // Already sorted.
        Labels(map.into_iter().collect())
    }
}

impl<'a> IntoIterator for &'a Labels {
    type Item = (&'a String, &'a String);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a String)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl std::ops::Index<&str> for Labels {
    type Output = String;
    fn index(&self, key: &str) -> &String {
        self.get(key).expect("no such label")
    }
}

/// The label the API server puts on every namespace, with the namespace's name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A label selector, compact: the API's `LabelSelector` as two short lists. (A
/// `BTreeMap` takes half a kilobyte however few its labels; 10,000 policies hold two
/// selectors each.) Matched as the API server matches it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// `matchLabels`: every one equal.
    pub labels: Vec<(String, String)>,
    /// `matchExpressions`: every one true.
    pub exprs: Vec<Requirement>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// The label's key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`; anything else matches nothing.
    pub operator: String,
    /// The values of `In` and `NotIn`.
    pub values: Vec<String>,
}

impl Selector {
    /// A selector of pods with label `key` = `value`.
    pub fn label(key: &str, value: &str) -> Selector {
        Selector {
            labels: vec![(key.to_owned(), value.to_owned())],
            exprs: Vec::new(),
        }
    }

    /// Whether `labels` match; an empty selector matches everything.
    pub fn selects(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.exprs.iter().all(|e| {
                let have = labels.get(&e.key);
                match e.operator.as_str() {
                    "In" => have.is_some_and(|v| e.values.contains(v)),
                    "NotIn" => have.is_none_or(|v| !e.values.contains(v)),
                    "Exists" => have.is_some(),
                    "DoesNotExist" => have.is_none(),
                    _ => false,
                }
            })
    }
}

impl From<&LabelSelector> for Selector {
    fn from(s: &LabelSelector) -> Selector {
        Selector {
            labels: s
                .match_labels
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            exprs: s
                .match_expressions
                .iter()
                .flatten()
                .map(|e| Requirement {
                    key: e.key.clone(),
                    operator: e.operator.clone(),
                    values: e.values.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

impl From<LabelSelector> for Selector {
    fn from(s: LabelSelector) -> Selector {
        Selector::from(&s)
    }
}

/// A transport protocol a NetworkPolicy port names (the one type every component uses).
pub use k8s::Protocol;

/// A container port with a name, which policies may name instead of its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// The port's name (`http`).
    pub name: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

/// A pod as policy sees it: only pods with addresses of their own (not host-network
/// pods, whose addresses are their node's, and not finished pods, whose addresses are
/// free again). A pod being started has none in its status yet (or an earlier
/// sandbox's): it gets those the CNI plugin gave it ([`Cluster::hint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its addresses (one per family).
    pub ips: Vec<IpAddr>,
    /// The node it runs on.
    pub node: String,
    /// Its containers' named ports.
    pub ports: Vec<NamedPort>,
    /// How its traffic is captured, if it is meshed (it has the mesh's proxy).
    pub capture: Option<cni::capture::Capture>,
}

/// How a meshed pod's traffic is captured: a pod with the mesh's proxy container (a
/// native sidecar, as the injector adds it, or an app container), whose user is exempt.
fn capture_of(pod: &K8sPod) -> Option<cni::capture::Capture> {
    let spec = pod.spec.as_ref()?;
    let proxy = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .find(|c| c.name == cni::capture::PROXY_CONTAINER)?;
    let uid = proxy
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_user)
        .or_else(|| spec.security_context.as_ref().and_then(|s| s.run_as_user))
        .and_then(|u| u32::try_from(u).ok())
        .unwrap_or(cni::capture::DEFAULT_PROXY_UID);
    let annotations = pod.metadata.annotations.as_ref();
    Some(cni::capture::Capture::for_pod(uid, |k| {
        annotations.and_then(|a| a.get(k)).map(String::as_str)
    }))
}

impl Pod {
    /// The pod as policy sees it, or `None` for a pod policy ignores (host network,
    /// finished).
    pub fn from_api(pod: &K8sPod) -> Option<Pod> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.clone().unwrap_or_default();
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty()
            && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
        {
            ips.push(ip);
        }
        let sidecars = spec
            .init_containers
            .iter()
            .flatten()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"));
        let ports = spec
            .containers
            .iter()
            .chain(sidecars)
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|p| {
                Some(NamedPort {
                    name: p.name.clone().filter(|n| !n.is_empty())?,
                    protocol: Protocol::parse_or_tcp(p.protocol.as_deref())?,
                    port: u16::try_from(p.container_port).ok()?,
                })
            })
            .collect();
        Some(Pod {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default().into(),
            ips,
            node: spec.node_name.clone().unwrap_or_default(),
            ports,
            capture: capture_of(pod),
        })
    }

    /// The number of the pod's port named `name` for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// A node as ClusterNetworkPolicy's `nodes` peers see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    /// Its labels.
    pub labels: Labels,
    /// The addresses of its `status.addresses` that are IP addresses.
    pub ips: Vec<IpAddr>,
}

impl NodeInfo {
    /// The node as policy sees it.
    pub fn from_api(node: &k8s_openapi::api::core::v1::Node) -> NodeInfo {
        let mut ips: Vec<IpAddr> = node
            .status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter_map(|a| a.address.parse().ok())
            .collect();
        ips.sort();
        ips.dedup();
        NodeInfo {
            labels: node.metadata.labels.clone().unwrap_or_default().into(),
            ips,
        }
    }
}

/// A namespace's labels, with the name label the API server always sets.
pub fn namespace_labels(ns: &Namespace) -> Labels {
    let mut labels: Labels = ns.metadata.labels.clone().unwrap_or_default().into();
    if let Some(name) = &ns.metadata.name
        && labels.get(NAMESPACE_NAME_LABEL).is_none()
    {
        labels.insert(NAMESPACE_NAME_LABEL.into(), name.clone());
    }
    labels
}

/// Which port(s) a policy port allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// Every port of the protocol.
    All,
    /// Ports `first..=last` (`port` with `endPort`, or `port` alone).
    Range(u16, u16),
    /// The destination pod's container port of this name.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// The protocol (TCP when not given).
    pub protocol: Protocol,
    /// The port(s).
    pub port: PortRef,
}

/// One entry of a rule's `from` or `to`.
#[derive(Debug, Clone, PartialEq)]
pub enum Peer {
    /// Pods: those `pods` selects (all when `None`) in the namespaces `namespaces`
    /// selects (the policy's own namespace when `None`).
    Pods {
        /// `namespaceSelector`.
        namespaces: Option<Selector>,
        /// `podSelector`.
        pods: Option<Selector>,
    },
    /// Addresses in `cidr` and in none of `except`.
    Block {
        /// `ipBlock.cidr`.
        cidr: IpNet,
        /// `ipBlock.except`.
        except: Vec<IpNet>,
    },
}

/// One ingress or egress rule: traffic with any of `peers` (everyone when empty) on
/// any of `ports` (every port and protocol when empty).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rule {
    /// `from` / `to`.
    pub peers: Vec<Peer>,
    /// `ports`.
    pub ports: Vec<PortRule>,
}

/// A NetworkPolicy, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The pods it applies to, in its namespace.
    pub selector: Selector,
    /// With `Ingress` among its policy types: the rules allowing traffic into the pods
    /// (none: isolated, nothing allowed). `None`: it says nothing about ingress.
    pub ingress: Option<Vec<Rule>>,
    /// The same for `Egress`.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// The policy, and what in it could not be read (each such peer or port is left
    /// out, so the policy allows less, never more). The API server refuses such
    /// policies; a lenient one may not.
    pub fn from_api(np: &NetworkPolicy) -> (Policy, Vec<String>) {
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        let name = np.metadata.name.clone().unwrap_or_default();
        let mut problems = Vec::new();
        let spec = np.spec.clone().unwrap_or_default();
        // Defaulting, as the API server does when policyTypes is absent: Ingress
        // always, Egress when there are egress rules.
        let types: Vec<String> = match spec.policy_types.filter(|t| !t.is_empty()) {
            Some(t) => t,
            None if spec.egress.as_ref().is_some_and(|e| !e.is_empty()) => {
                vec!["Ingress".into(), "Egress".into()]
            }
            None => vec!["Ingress".into()],
        };
        let mut rule = |peers: &Option<Vec<NetworkPolicyPeer>>,
                        ports: &Option<Vec<NetworkPolicyPort>>| Rule {
            peers: peers
                .iter()
                .flatten()
                .filter_map(|p| match peer(p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        problems.push(format!("NetworkPolicy {namespace}/{name}: {e}"));
                        None
                    }
                })
                .collect(),
            ports: ports
                .iter()
                .flatten()
                .filter_map(|p| match port(p) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        problems.push(format!("NetworkPolicy {namespace}/{name}: {e}"));
                        None
                    }
                })
                .collect(),
        };
        // A rule whose every peer (or port) was unreadable must allow nothing, not
        // everyone: it is dropped.
        let keep = |r: Rule, peers_given: bool, ports_given: bool| {
            let lost_all =
                (peers_given && r.peers.is_empty()) || (ports_given && r.ports.is_empty());
            (!lost_all).then_some(r)
        };
        let ingress = types.iter().any(|t| t == "Ingress").then(|| {
            spec.ingress
                .iter()
                .flatten()
                .filter_map(|r| {
                    let built = rule(&r.from, &r.ports);
                    keep(
                        built,
                        r.from.as_ref().is_some_and(|f| !f.is_empty()),
                        r.ports.as_ref().is_some_and(|p| !p.is_empty()),
                    )
                })
                .collect()
        });
        let egress = types.iter().any(|t| t == "Egress").then(|| {
            spec.egress
                .iter()
                .flatten()
                .filter_map(|r| {
                    let built = rule(&r.to, &r.ports);
                    keep(
                        built,
                        r.to.as_ref().is_some_and(|t| !t.is_empty()),
                        r.ports.as_ref().is_some_and(|p| !p.is_empty()),
                    )
                })
                .collect()
        });
        let policy = Policy {
            namespace,
            name,
            selector: spec
                .pod_selector
                .as_ref()
                .map(Selector::from)
                .unwrap_or_default(),
            ingress,
            egress,
        };
        (policy, problems)
    }

    /// Whether the policy applies to `pod`.
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.selector.selects(&pod.labels)
    }
}

fn peer(p: &NetworkPolicyPeer) -> Result<Peer, String> {
    if let Some(block) = &p.ip_block {
        let cidr: IpNet = block
            .cidr
            .parse()
            .map_err(|_| format!("ipBlock.cidr {:?} is not a CIDR", block.cidr))?;
        let except = block
            .except
            .iter()
            .flatten()
            .map(|e| {
                e.parse::<IpNet>()
                    .map_err(|_| format!("ipBlock.except {e:?} is not a CIDR"))
            })
            .collect::<Result<_, _>>()?;
        return Ok(Peer::Block { cidr, except });
    }
    if p.namespace_selector.is_none() && p.pod_selector.is_none() {
        return Err("a peer names no pods, namespaces or ipBlock".into());
    }
    Ok(Peer::Pods {
        namespaces: p.namespace_selector.as_ref().map(Selector::from),
        pods: p.pod_selector.as_ref().map(Selector::from),
    })
}

fn port(p: &NetworkPolicyPort) -> Result<PortRule, String> {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    let protocol =
        Protocol::parse(proto).ok_or_else(|| format!("unsupported protocol {proto:?}"))?;
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0);
    let port = match (&p.port, p.end_port) {
        (None, None) => PortRef::All,
        (None, Some(_)) => return Err("endPort without port".into()),
        (Some(IntOrString::Int(n)), end) => {
            let first = number(*n).ok_or_else(|| format!("port {n} is out of range"))?;
            let last = match end {
                None => first,
                Some(e) => number(e)
                    .filter(|e| *e >= first)
                    .ok_or_else(|| format!("endPort {e} is out of range or below port"))?,
            };
            PortRef::Range(first, last)
        }
        (Some(IntOrString::String(name)), None) => match name.parse::<i32>() {
            Ok(n) => {
                let n = number(n).ok_or_else(|| format!("port {n} is out of range"))?;
                PortRef::Range(n, n)
            }
            Err(_) => PortRef::Named(name.clone()),
        },
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err("endPort with a named port".into());
        }
    };
    Ok(PortRule { protocol, port })
}

/// Everything policy reads of the cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Pods by `namespace/name`.
    pub pods: BTreeMap<String, Pod>,
    /// Namespace labels by name.
    pub namespaces: BTreeMap<String, Labels>,
    /// Policies by `namespace/name`.
    pub policies: BTreeMap<String, Policy>,
    /// ClusterNetworkPolicies by name.
    pub admin: BTreeMap<String, AdminPolicy>,
    /// Nodes by name: their labels and addresses (ClusterNetworkPolicy's `nodes` peers).
    pub nodes: BTreeMap<String, NodeInfo>,
    /// Pods by address (`namespace/name`), kept with `pods`.
    by_ip: HashMap<IpAddr, String>,
    /// Pods by namespace and label (`namespace`, `key`, `value`) → `namespace/name`, kept
    /// with `pods`: a selector with `matchLabels` looks only at the pods with its first
    /// label.
    by_label: HashMap<(String, String, String), Vec<String>>,
    /// Addresses the CNI plugin gave pods whose status does not say them yet (none, or
    /// an earlier sandbox's), by `namespace/name`.
    hints: HashMap<String, Vec<IpAddr>>,
}

impl Cluster {
    /// Adds or replaces a pod; `None` removes what was under `key`. Returns whether
    /// anything changed.
    pub fn set_pod(&mut self, key: &str, mut pod: Option<Pod>) -> bool {
        // The plugin's latest addresses win over the status until it says them (a new
        // sandbox's status still has the old sandbox's address).
        match pod.as_mut() {
            Some(p) => {
                if let Some(ips) = self.hints.get(key) {
                    let caught_up = !p.ips.is_empty() && ips.iter().all(|ip| p.ips.contains(ip));
                    if caught_up {
                        self.hints.remove(key);
                    } else {
                        p.ips = ips.clone();
                    }
                }
            }
            None => {
                self.hints.remove(key);
            }
        }
        if self.pods.get(key) == pod.as_ref() {
            return false;
        }
        if let Some(old) = self.pods.remove(key) {
            for ip in &old.ips {
                if self.by_ip.get(ip).is_some_and(|k| k == key) {
                    self.by_ip.remove(ip);
                }
            }
            for (k, v) in &old.labels {
                let index = (old.namespace.clone(), k.clone(), v.clone());
                if let Some(set) = self.by_label.get_mut(&index) {
                    set.retain(|k| k != key);
                    if set.is_empty() {
                        self.by_label.remove(&index);
                    }
                }
            }
        }
        if let Some(pod) = pod {
            for ip in &pod.ips {
                self.by_ip.insert(*ip, key.to_owned());
            }
            for (k, v) in &pod.labels {
                let keys = self
                    .by_label
                    .entry((pod.namespace.clone(), k.clone(), v.clone()))
                    .or_default();
                if !keys.iter().any(|k| k == key) {
                    keys.push(key.to_owned());
                }
            }
            self.pods.insert(key.to_owned(), pod);
        }
        true
    }

    /// Records the addresses the CNI plugin gave pod `key` (`namespace/name`), used
    /// until its status says them; returns whether the pod changed.
    pub fn hint(&mut self, key: &str, ips: Vec<IpAddr>) -> bool {
        self.hints.insert(key.to_owned(), ips);
        match self.pods.get(key) {
            Some(p) => {
                let pod = p.clone();
                self.set_pod(key, Some(pod))
            }
            None => false,
        }
    }

    /// Forgets the addresses the CNI plugin gave pod `key`, and the pod's if it has only
    /// those (a sandbox that never ran). Returns whether the pod changed.
    pub fn unhint(&mut self, key: &str) -> bool {
        let Some(ips) = self.hints.remove(key) else {
            return false;
        };
        match self.pods.get(key) {
            Some(p) if p.ips == ips => {
                let mut pod = p.clone();
                pod.ips.clear();
                self.set_pod(key, Some(pod))
            }
            _ => false,
        }
    }

    /// Whether pod `key` is known with (at least) the addresses `ips`.
    pub fn has_pod_with(&self, key: &str, ips: &[IpAddr]) -> bool {
        self.pods
            .get(key)
            .is_some_and(|p| ips.iter().all(|ip| p.ips.contains(ip)))
    }

    /// The key of the pod with address `ip`.
    pub fn pod_key_by_ip(&self, ip: IpAddr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// The pods (keys, any node) whose verdicts a change of pod `key` from `old` to
    /// `new` may change: the pod itself, and every pod selected by a policy that names
    /// either as a peer (or whose egress names a port, resolved on every destination).
    pub fn affected_by_pod(
        &self,
        key: &str,
        old: Option<&Pod>,
        new: Option<&Pod>,
    ) -> BTreeSet<String> {
        let mut out = BTreeSet::from([key.to_owned()]);
        for policy in self.policies.values() {
            let names = |pod: &Pod| {
                policy
                    .ingress
                    .iter()
                    .chain(policy.egress.iter())
                    .flatten()
                    .flat_map(|r| r.peers.iter())
                    .any(|peer| self.peer_selects(&policy.namespace, peer, pod))
            };
            let named_egress = policy
                .egress
                .iter()
                .flatten()
                .flat_map(|r| r.ports.iter())
                .any(|p| matches!(p.port, PortRef::Named(_)));
            if named_egress || old.is_some_and(names) || new.is_some_and(names) {
                out.extend(self.selected_by(policy));
            }
        }
        for policy in self.admin.values() {
            let rules = || policy.ingress.iter().chain(policy.egress.iter());
            let names = |pod: &Pod| {
                rules().flat_map(|r| r.peers.iter()).any(|peer| {
                    matches!(peer, AdminPeer::Pods(_)) && self.admin_peer_selects(peer, pod)
                })
            };
            // Blocks are addresses, whoever holds them; but a named port is looked up
            // on every destination pod.
            let named = rules()
                .flat_map(|r| r.protocols.iter().flatten())
                .any(|p| matches!(p.port, PortRef::Named(_)));
            if named || old.is_some_and(names) || new.is_some_and(names) {
                out.extend(self.admin_subjects(policy));
            }
        }
        out
    }

    /// The pods (keys) `policy` selects.
    pub fn selected_by(&self, policy: &Policy) -> Vec<String> {
        self.candidates(&policy.namespace, Some(&policy.selector))
            .filter(|p| policy.selects(p))
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }

    /// The pod with address `ip`.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.pods.get(self.by_ip.get(&ip)?)
    }

    /// The labels of namespace `ns` (only its name label while it is not known yet).
    pub fn namespace_labels(&self, ns: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(ns) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(Labels::from([(NAMESPACE_NAME_LABEL.into(), ns.into())])),
        }
    }

    /// Whether `peer`, in a policy of namespace `policy_ns`, names pod `pod`.
    pub fn peer_selects(&self, policy_ns: &str, peer: &Peer, pod: &Pod) -> bool {
        let Peer::Pods { namespaces, pods } = peer else {
            return false;
        };
        let ns_ok = match namespaces {
            None => pod.namespace == policy_ns,
            Some(sel) => sel.selects(&self.namespace_labels(&pod.namespace)),
        };
        ns_ok && pods.as_ref().is_none_or(|s| s.selects(&pod.labels))
    }

    /// The policies that apply to `pod` (those of its namespace that select it).
    pub fn policies_for<'a>(&'a self, pod: &'a Pod) -> impl Iterator<Item = &'a Policy> + 'a {
        in_namespace(&self.policies, &pod.namespace).filter(move |p| p.selects(pod))
    }

    /// The pods of namespace `ns`.
    pub fn pods_in<'a>(&'a self, ns: &str) -> impl Iterator<Item = &'a Pod> + 'a {
        in_namespace(&self.pods, ns)
    }

    /// The pods `peer` (pods, not an ipBlock) of a policy in `policy_ns` names: only the
    /// namespaces it can name are looked at.
    pub fn peer_pods<'a>(
        &'a self,
        policy_ns: &'a str,
        peer: &'a Peer,
    ) -> Box<dyn Iterator<Item = &'a Pod> + 'a> {
        match peer {
            Peer::Block { .. } => Box::new(std::iter::empty()),
            Peer::Pods {
                namespaces: None,
                pods,
            } => Box::new(
                self.candidates(policy_ns, pods.as_ref())
                    .filter(move |p| self.peer_selects(policy_ns, peer, p)),
            ),
            Peer::Pods {
                namespaces: Some(sel),
                pods,
            } => {
                // Namespaces are judged once each, not once per pod. Pods of a
                // namespace not seen yet are left out until it is (allowing less).
                let names = self.namespaces.keys().map(String::as_str);
                Box::new(
                    names
                        .filter(move |ns| sel.selects(&self.namespace_labels(ns)))
                        .flat_map(move |ns| self.candidates(ns, pods.as_ref()))
                        .filter(move |p| self.peer_selects(policy_ns, peer, p)),
                )
            }
        }
    }
}

/// Cluster-wide admin policies.
impl Cluster {
    /// The rules of tier `tier` for traffic into (`ingress`) or out of `pod`, in the
    /// order they are judged: policies by priority, then name (the API leaves ties to
    /// the implementation), each policy's rules as written.
    pub fn admin_rules<'a>(&'a self, pod: &Pod, tier: Tier, ingress: bool) -> Vec<&'a AdminRule> {
        self.admin_rules_named(pod, tier, ingress)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// [`Cluster::admin_rules`], each with the name of its policy.
    pub fn admin_rules_named<'a>(
        &'a self,
        pod: &Pod,
        tier: Tier,
        ingress: bool,
    ) -> Vec<(&'a str, &'a AdminRule)> {
        let ns = self.namespace_labels(&pod.namespace);
        let mut policies: Vec<&AdminPolicy> = self
            .admin
            .values()
            .filter(|p| p.tier == tier && p.subject.contains(pod, &ns))
            .collect();
        policies.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        policies
            .into_iter()
            .flat_map(|p| p.rules(ingress).iter().map(|r| (p.name.as_str(), r)))
            .collect()
    }

    /// The pods in `set`.
    pub fn pods_of<'a>(&'a self, set: &'a PodSet) -> impl Iterator<Item = &'a Pod> + 'a {
        self.namespaces
            .keys()
            .filter(move |ns| set.namespaces.selects(&self.namespace_labels(ns)))
            .flat_map(move |ns| self.candidates(ns, Some(&set.pods)))
            .filter(move |p| set.pods.selects(&p.labels))
    }

    /// Whether `peer` names pod `pod`.
    pub fn admin_peer_selects(&self, peer: &AdminPeer, pod: &Pod) -> bool {
        match peer {
            AdminPeer::Pods(set) => set.contains(pod, &self.namespace_labels(&pod.namespace)),
            AdminPeer::Networks(nets) => {
                pod.ips.iter().any(|ip| nets.iter().any(|n| n.contains(ip)))
            }
            // Nodes' addresses are never a pod's own.
            AdminPeer::Nodes(_) => false,
            AdminPeer::Everyone => true,
        }
    }

    /// The pods (keys) `policy` applies to.
    pub fn admin_subjects(&self, policy: &AdminPolicy) -> Vec<String> {
        self.pods_of(&policy.subject)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    }
}

impl Cluster {
    /// The pods of `ns` that `pods` may select: with `matchLabels`, those with its first
    /// label (from the index); else all of the namespace. The caller still checks the
    /// whole selector.
    fn candidates<'a>(
        &'a self,
        ns: &'a str,
        pods: Option<&'a Selector>,
    ) -> Box<dyn Iterator<Item = &'a Pod> + 'a> {
        let first = pods.and_then(|s| s.labels.first());
        match first {
            Some((k, v)) => {
                let index = (ns.to_owned(), k.clone(), v.clone());
                match self.by_label.get(&index) {
                    Some(keys) => Box::new(keys.iter().filter_map(|k| self.pods.get(k))),
                    None => Box::new(std::iter::empty()),
                }
            }
            None => Box::new(self.pods_in(ns)),
        }
    }
}

/// The values of a map keyed `namespace/name` whose namespace is `ns`.
fn in_namespace<'a, V>(map: &'a BTreeMap<String, V>, ns: &str) -> impl Iterator<Item = &'a V> + 'a {
    let prefix = format!("{ns}/");
    map.range(prefix.clone()..)
        .take_while(move |(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| v)
}
