//! The cluster-wide admin tiers: network-policy-api's ClusterNetworkPolicy
//! (`policy.networking.k8s.io/v1alpha2`, release v0.2.0, its CRD vendored unchanged
//! under `crates/policy/crds/`), as the API's types and parsed into [`AdminPolicy`].
//!
//! A connection is judged tier by tier, each direction on its own: the Admin tier's
//! policies by priority (lower first; ties by name), each policy's rules in order, the
//! first rule that matches decides (Accept, Deny, or Pass to the next tier); then
//! NetworkPolicy, for a pod some NetworkPolicy isolates; then the Baseline tier the same
//! way; then allowed. Rules have no implicit isolation: traffic no rule matches falls
//! through.

use std::borrow::Cow;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::model::{Labels, Pod, PortRef, PortRule, Protocol, Selector};

/// The API group.
pub const GROUP: &str = "policy.networking.k8s.io";
/// The version served (the only one of release v0.2.0).
pub const VERSION: &str = "v1alpha2";

/// A ClusterNetworkPolicy as the API serves it. Fields this agent does not know are
/// dropped by serde; a peer or protocol left with none of the known fields fails closed
/// ([`AdminPolicy::from_api`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterNetworkPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ClusterNetworkPolicySpec,
}

impl kube::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("ClusterNetworkPolicy")
    }
    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }
    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }
    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("clusternetworkpolicies")
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    #[serde(default)]
    pub tier: String,
    /// 0..=1000, lower first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub subject: ApiSubject,
    #[serde(default)]
    pub ingress: Vec<ApiIngressRule>,
    #[serde(default)]
    pub egress: Vec<ApiEgressRule>,
}

/// The pods a policy applies to: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace labels AND pod labels.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiIngressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub from: Vec<ApiPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ApiProtocol>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiEgressRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub action: String,
    #[serde(default)]
    pub to: Vec<ApiPeer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ApiProtocol>>,
}

/// A peer: exactly one field. `nodes` and `domainNames` are the experimental channel's
/// (the CRD kubewire installs); `domainNames` is not enforced and fails closed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiPeer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One entry of `protocols`: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiProtocol {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<ApiProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<ApiProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<ApiProtocolPort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiProtocolPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<ApiPort>,
}

/// A port number or an inclusive range: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiPort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ApiPortRange>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiPortRange {
    pub start: i32,
    pub end: i32,
}

/// A tier; Admin is judged before NetworkPolicy, Baseline after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    Baseline,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allowed; no later rule or tier is looked at.
    Accept,
    /// Dropped; no later rule or tier is looked at.
    Deny,
    /// The rest of this tier is skipped; the next tier judges.
    Pass,
}

/// The pods of namespaces selected by `namespaces` and selected by `pods`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodSet {
    /// Namespace labels (empty: every namespace).
    pub namespaces: Selector,
    /// Pod labels (empty: every pod).
    pub pods: Selector,
}

impl PodSet {
    /// Whether `pod`, in a namespace labelled `ns_labels`, is in the set.
    pub fn contains(&self, pod: &Pod, ns_labels: &Labels) -> bool {
        self.namespaces.selects(ns_labels) && self.pods.selects(&pod.labels)
    }

    fn from_api(namespaces: Option<&LabelSelector>, pods: Option<&NamespacedPod>) -> PodSet {
        match (namespaces, pods) {
            (Some(ns), _) => PodSet {
                namespaces: ns.into(),
                pods: Selector::default(),
            },
            (None, Some(p)) => PodSet {
                namespaces: p
                    .namespace_selector
                    .as_ref()
                    .map(Selector::from)
                    .unwrap_or_default(),
                pods: (&p.pod_selector).into(),
            },
            (None, None) => PodSet::default(),
        }
    }
}

/// One entry of a rule's `from` or `to`.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminPeer {
    /// Pods (never host-network ones).
    Pods(PodSet),
    /// Addresses in any of these blocks (egress), pods' included.
    Networks(Vec<IpNet>),
    /// The addresses (`status.addresses`) of the nodes the selector selects (egress);
    /// host-network pods have theirs.
    Nodes(Selector),
    /// Every address: a Deny or Pass rule with a peer this agent cannot read, failing
    /// closed as the API says.
    Everyone,
}

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminRule {
    /// `name`, for logs.
    pub name: String,
    pub action: Action,
    /// Any of these (never empty once parsed: a rule left with none matches nothing
    /// and is dropped).
    pub peers: Vec<AdminPeer>,
    /// Any of these; `None`: every protocol and port (ICMP too).
    pub protocols: Option<Vec<PortRule>>,
}

/// A ClusterNetworkPolicy, parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminPolicy {
    pub name: String,
    pub tier: Tier,
    pub priority: i32,
    /// The pods it applies to.
    pub subject: PodSet,
    /// Rules for traffic into the subject pods, in order.
    pub ingress: Vec<AdminRule>,
    /// Rules for traffic out of them, in order.
    pub egress: Vec<AdminRule>,
}

impl AdminPolicy {
    /// The policy, and what in it could not be read. The API says to fail closed: a
    /// peer or protocol entry that cannot be read makes an Accept rule match less (the
    /// entry is left out; a rule left with no peer or protocol is dropped) and a Deny or
    /// Pass rule deny everything. `None` with a problem when the tier is unknown.
    pub fn from_api(cnp: &ClusterNetworkPolicy) -> (Option<AdminPolicy>, Vec<String>) {
        let name = cnp.metadata.name.clone().unwrap_or_default();
        let spec = &cnp.spec;
        let mut problems = Vec::new();
        let tier = match spec.tier.as_str() {
            "Admin" => Tier::Admin,
            "Baseline" => Tier::Baseline,
            other => {
                problems.push(format!(
                    "ClusterNetworkPolicy {name}: unknown tier {other:?}; ignored"
                ));
                return (None, problems);
            }
        };
        let subject =
            PodSet::from_api(spec.subject.namespaces.as_ref(), spec.subject.pods.as_ref());
        let ingress = spec
            .ingress
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let api = ApiRule {
                    name: r.name.as_ref(),
                    action: &r.action,
                    peers: &r.from,
                    protocols: r.protocols.as_ref(),
                };
                rule(&name, i, &api, &mut problems)
            })
            .collect();
        let egress = spec
            .egress
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let api = ApiRule {
                    name: r.name.as_ref(),
                    action: &r.action,
                    peers: &r.to,
                    protocols: r.protocols.as_ref(),
                };
                rule(&name, i, &api, &mut problems)
            })
            .collect();
        let policy = AdminPolicy {
            name,
            tier,
            priority: spec.priority,
            subject,
            ingress,
            egress,
        };
        (Some(policy), problems)
    }

    /// The rules of direction `ingress` (else egress).
    pub fn rules(&self, ingress: bool) -> &[AdminRule] {
        if ingress { &self.ingress } else { &self.egress }
    }
}

/// An ingress or egress rule of the API, either way.
struct ApiRule<'a> {
    name: Option<&'a String>,
    action: &'a str,
    peers: &'a [ApiPeer],
    protocols: Option<&'a Vec<ApiProtocol>>,
}

/// Rule `i` of policy `policy`, failing closed (see [`AdminPolicy::from_api`]); `None`
/// when it matches nothing. What could not be read goes to `problems`.
fn rule(policy: &str, i: usize, r: &ApiRule<'_>, problems: &mut Vec<String>) -> Option<AdminRule> {
    let label = r.name.cloned().unwrap_or_else(|| format!("#{i}"));
    let action = match r.action {
        "Accept" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        other => {
            problems.push(format!(
                "ClusterNetworkPolicy {policy} rule {label}: unknown action {other:?}; the rule denies everything (failing closed)"
            ));
            return Some(deny_all(label));
        }
    };
    let mut unreadable = Vec::new();
    let peers: Vec<AdminPeer> = r
        .peers
        .iter()
        .filter_map(|p| peer(p).map_err(|e| unreadable.push(e)).ok())
        .collect();
    let protocols = r.protocols.map(|list| {
        list.iter()
            .filter_map(|p| protocol(p).map_err(|e| unreadable.push(e)).ok())
            .flatten()
            .collect::<Vec<_>>()
    });
    if !unreadable.is_empty() {
        let failing = match action {
            Action::Accept => "left out (the rule accepts less)",
            _ => "the rule denies everything (failing closed)",
        };
        problems.push(format!(
            "ClusterNetworkPolicy {policy} rule {label}: {}; {failing}",
            unreadable.join("; ")
        ));
        if action != Action::Accept {
            return Some(deny_all(label));
        }
    }
    let empty = peers.is_empty() || protocols.as_ref().is_some_and(|p| p.is_empty());
    (!empty).then_some(AdminRule {
        name: label,
        action,
        peers,
        protocols,
    })
}

fn deny_all(name: String) -> AdminRule {
    AdminRule {
        name,
        action: Action::Deny,
        peers: vec![AdminPeer::Everyone],
        protocols: None,
    }
}

fn peer(p: &ApiPeer) -> Result<AdminPeer, String> {
    if p.namespaces.is_some() || p.pods.is_some() {
        return Ok(AdminPeer::Pods(PodSet::from_api(
            p.namespaces.as_ref(),
            p.pods.as_ref(),
        )));
    }
    if let Some(nets) = &p.networks {
        let nets = nets
            .iter()
            .map(|n| {
                n.parse::<IpNet>()
                    .map(|n| n.trunc())
                    .map_err(|_| format!("networks entry {n:?} is not a CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(AdminPeer::Networks(nets));
    }
    if let Some(nodes) = &p.nodes {
        return Ok(AdminPeer::Nodes(nodes.into()));
    }
    if p.domain_names.is_some() {
        return Err("the domainNames peer (experimental) is not enforced by kubewire".into());
    }
    Err("a peer with no field kubewire knows".into())
}

/// The port rules of one `protocols` entry: one, or for a named port one per protocol
/// (the number and protocol are those of the destination pod's container port of that
/// name).
fn protocol(p: &ApiProtocol) -> Result<Vec<PortRule>, String> {
    if let Some(name) = &p.destination_named_port {
        return Ok([Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
            .into_iter()
            .map(|protocol| PortRule {
                protocol,
                port: PortRef::Named(name.clone()),
            })
            .collect());
    }
    let (protocol, port) = match (&p.tcp, &p.udp, &p.sctp) {
        (Some(port), _, _) => (Protocol::Tcp, port),
        (_, Some(port), _) => (Protocol::Udp, port),
        (_, _, Some(port)) => (Protocol::Sctp, port),
        _ => return Err("a protocol entry with no field kubewire knows".into()),
    };
    let number = |n: i32| u16::try_from(n).ok().filter(|n| *n > 0);
    let port = match &port.destination_port {
        // Not allowed by the CRD (destinationPort is required); every port.
        None => PortRef::All,
        Some(ApiPort {
            number: Some(n), ..
        }) => {
            let n = number(*n).ok_or_else(|| format!("port {n} is out of range"))?;
            PortRef::Range(n, n)
        }
        Some(ApiPort { range: Some(r), .. }) => match (number(r.start), number(r.end)) {
            (Some(s), Some(e)) if s < e => PortRef::Range(s, e),
            _ => {
                return Err(format!(
                    "port range {}-{} is not a range of ports (start must be below end)",
                    r.start, r.end
                ));
            }
        },
        Some(_) => return Err("a destinationPort with no number or range".into()),
    };
    Ok(vec![PortRule { protocol, port }])
}
