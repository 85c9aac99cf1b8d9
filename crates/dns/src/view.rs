//! The indexed view of the API that answers are computed from.
//!
//! Watch events are converted into small records ([`ServiceInfo`], [`SliceInfo`], pod
//! addresses) as soon as they arrive; the Kubernetes objects themselves are not kept,
//! which is what keeps memory low with 100,000 pods. The view keeps the indexes that
//! queries need (slices by service, services per namespace, reverse addresses, pod
//! addresses per namespace) up to date on every change, so a query is a few hash
//! lookups.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// `namespace/name` of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Namespace (shared between objects of one namespace).
    pub ns: Arc<str>,
    /// Name.
    pub name: Box<str>,
}

/// A port as DNS sees it: SRV records exist only for named ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Port name (SRV `_name`); empty when unnamed.
    pub name: String,
    /// `tcp`, `udp` or `sctp` (SRV `_proto`), lower case.
    pub protocol: String,
    /// Port number.
    pub port: u16,
}

/// What a Service name resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A virtual IP per family (`spec.clusterIPs`).
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: the endpoints' addresses.
    Headless,
    /// `type: ExternalName`: a CNAME to this name (lower case, no trailing dot).
    ExternalName(String),
}

/// The part of a Service that DNS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// How the name resolves.
    pub kind: Kind,
    /// The service's ports.
    pub ports: Vec<Port>,
    /// `spec.publishNotReadyAddresses`: not-ready endpoints are published too.
    pub publish_not_ready: bool,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Its addresses (one in practice).
    pub addresses: Vec<IpAddr>,
    /// `hostname` (StatefulSet pods, hand-made endpoints), the name under the service.
    pub hostname: Option<String>,
    /// `conditions.ready` (unset counts as ready, as the API documents).
    pub ready: bool,
}

/// The part of an EndpointSlice that DNS uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// The service it belongs to (`kubernetes.io/service-name`).
    pub service: Box<str>,
    /// Its endpoints.
    pub endpoints: Vec<EndpointInfo>,
    /// Its ports (the endpoints' port numbers).
    pub ports: Vec<Port>,
}

/// An endpoint as published in DNS: the label it has under its service, and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// `hostname`, or the address with dashes (`10-244-1-5`, `fd00-10-244-1--5`) as
    /// CoreDNS names endpoints without one.
    pub label: String,
    /// Addresses under that label.
    pub addresses: Vec<IpAddr>,
}

/// Where a reverse (PTR) name points.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PtrTarget {
    /// The service.
    pub service: Key,
    /// The endpoint's label for headless services; none for a ClusterIP.
    pub endpoint: Option<String>,
}

/// The whole view. Cheap queries, incremental updates.
#[derive(Debug, Default)]
pub struct View {
    services: HashMap<Key, ServiceInfo>,
    slices: HashMap<Key, SliceInfo>,
    slices_by_service: HashMap<Key, BTreeSet<Box<str>>>,
    services_per_ns: HashMap<Arc<str>, usize>,
    ptr: HashMap<IpAddr, BTreeSet<PtrTarget>>,
    pods: HashMap<Key, Vec<IpAddr>>,
    pod_ips: HashMap<(Arc<str>, IpAddr), u32>,
    namespaces: HashMap<Arc<str>, ()>,
    /// Bumped by every change; answer caches are valid for one generation.
    pub serial: u32,
}

/// The address written with dashes: `10-244-1-5`, `fd00-10-244-1--5`.
pub fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The address in a dashed label, if it is one (IPv4 `a-b-c-d`, IPv6 with `-` for `:`).
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.len() > 39 {
        return None;
    }
    let v4 = label.replace('-', ".");
    if let Ok(ip) = v4.parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(ip));
    }
    label
        .replace('-', ":")
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

impl View {
    /// An empty view.
    pub fn new() -> Self {
        Self::default()
    }

    fn intern(&mut self, ns: &str) -> Arc<str> {
        if let Some((k, ())) = self.namespaces.get_key_value(ns) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(ns);
        self.namespaces.insert(k.clone(), ());
        k
    }

    /// The key for `ns/name`, sharing the namespace string.
    pub fn key(&mut self, ns: &str, name: &str) -> Key {
        Key {
            ns: self.intern(ns),
            name: name.into(),
        }
    }

    fn bump(&mut self) {
        self.serial = self.serial.wrapping_add(1);
    }

    /// A service by namespace and name.
    pub fn service(&self, ns: &str, name: &str) -> Option<(&Key, &ServiceInfo)> {
        // Keys are looked up without allocating an Arc: build a temporary key cheaply.
        let ns = self.namespaces.get_key_value(ns)?.0.clone();
        self.services.get_key_value(&Key {
            ns,
            name: name.into(),
        })
    }

    /// Whether any service lives in `ns` (then `ns.svc.<zone>` exists).
    pub fn namespace_has_services(&self, ns: &str) -> bool {
        self.services_per_ns.get(ns).is_some_and(|n| *n > 0)
    }

    /// Names a reverse lookup of `ip` finds.
    pub fn ptr(&self, ip: IpAddr) -> Option<&BTreeSet<PtrTarget>> {
        self.ptr.get(&ip).filter(|s| !s.is_empty())
    }

    /// Whether a pod in `ns` has address `ip` (`pods verified`).
    pub fn pod_has_ip(&self, ns: &str, ip: IpAddr) -> bool {
        let Some((ns, ())) = self.namespaces.get_key_value(ns) else {
            return false;
        };
        self.pod_ips.contains_key(&(ns.clone(), ip))
    }

    /// Number of services, slices and pods held (for logs and the memory benchmark).
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.len(), self.slices.len(), self.pods.len())
    }

    /// The endpoints a headless service publishes, merged by label (a dual-stack
    /// endpoint appears in one slice per family), sorted by label.
    pub fn published(&self, key: &Key, svc: &ServiceInfo) -> Vec<Published> {
        let mut by_label: std::collections::BTreeMap<String, Vec<IpAddr>> = Default::default();
        if let Some(names) = self.slices_by_service.get(key) {
            for name in names {
                let slice_key = Key {
                    ns: key.ns.clone(),
                    name: name.clone(),
                };
                let Some(slice) = self.slices.get(&slice_key) else {
                    continue;
                };
                for ep in &slice.endpoints {
                    if !(ep.ready || svc.publish_not_ready) {
                        continue;
                    }
                    for ip in &ep.addresses {
                        let label = ep.hostname.clone().unwrap_or_else(|| dashed(*ip));
                        let v = by_label.entry(label).or_default();
                        if !v.contains(ip) {
                            v.push(*ip);
                        }
                    }
                }
            }
        }
        by_label
            .into_iter()
            .map(|(label, addresses)| Published { label, addresses })
            .collect()
    }

    /// The ports of a service's endpoints (from its slices), deduplicated.
    pub fn endpoint_ports(&self, key: &Key) -> Vec<Port> {
        let mut out: Vec<Port> = Vec::new();
        if let Some(names) = self.slices_by_service.get(key) {
            for name in names {
                let slice_key = Key {
                    ns: key.ns.clone(),
                    name: name.clone(),
                };
                if let Some(slice) = self.slices.get(&slice_key) {
                    for p in &slice.ports {
                        if !out.contains(p) {
                            out.push(p.clone());
                        }
                    }
                }
            }
        }
        out
    }

    fn ptr_entries(&self, key: &Key) -> Vec<(IpAddr, PtrTarget)> {
        let Some(svc) = self.services.get(key) else {
            return Vec::new();
        };
        match &svc.kind {
            Kind::ClusterIp(ips) => ips
                .iter()
                .map(|ip| {
                    (
                        *ip,
                        PtrTarget {
                            service: key.clone(),
                            endpoint: None,
                        },
                    )
                })
                .collect(),
            Kind::Headless => self
                .published(key, svc)
                .into_iter()
                .flat_map(|p| {
                    p.addresses.into_iter().map(move |ip| {
                        (
                            ip,
                            PtrTarget {
                                service: key.clone(),
                                endpoint: Some(p.label.clone()),
                            },
                        )
                    })
                })
                .collect(),
            Kind::ExternalName(_) => Vec::new(),
        }
    }

    /// Runs `change` with the service's reverse entries taken out before and put back
    /// after, so the PTR index always matches the services and slices.
    fn with_ptr(&mut self, service: &Key, change: impl FnOnce(&mut Self)) {
        for (ip, target) in self.ptr_entries(service) {
            if let Some(set) = self.ptr.get_mut(&ip) {
                set.remove(&target);
                if set.is_empty() {
                    self.ptr.remove(&ip);
                }
            }
        }
        change(self);
        for (ip, target) in self.ptr_entries(service) {
            self.ptr.entry(ip).or_default().insert(target);
        }
        self.bump();
    }

    /// Adds or replaces a service; returns whether that changed anything.
    pub fn upsert_service(&mut self, key: Key, info: ServiceInfo) -> bool {
        if self.services.get(&key) == Some(&info) {
            return false;
        }
        let k = key.clone();
        self.with_ptr(&k, |v| {
            if v.services.insert(key.clone(), info).is_none() {
                *v.services_per_ns.entry(key.ns.clone()).or_default() += 1;
            }
        });
        true
    }

    /// Removes a service; returns whether there was one.
    pub fn delete_service(&mut self, key: &Key) -> bool {
        if !self.services.contains_key(key) {
            return false;
        }
        self.with_ptr(key, |v| {
            if v.services.remove(key).is_some()
                && let Some(n) = v.services_per_ns.get_mut(&key.ns)
            {
                *n -= 1;
            }
        });
        true
    }

    /// Adds or replaces an EndpointSlice; returns whether that changed anything.
    pub fn upsert_slice(&mut self, key: Key, info: SliceInfo) -> bool {
        if self.slices.get(&key) == Some(&info) {
            return false;
        }
        // The slice may have moved to another service (the label changed).
        if let Some(old) = self.slices.get(&key)
            && old.service != info.service
        {
            self.delete_slice(&key);
        }
        let service = Key {
            ns: key.ns.clone(),
            name: info.service.clone(),
        };
        self.with_ptr(&service, |v| {
            v.slices_by_service
                .entry(service.clone())
                .or_default()
                .insert(key.name.clone());
            v.slices.insert(key, info);
        });
        true
    }

    /// Removes an EndpointSlice; returns whether there was one.
    pub fn delete_slice(&mut self, key: &Key) -> bool {
        let Some(service) = self.slices.get(key).map(|s| Key {
            ns: key.ns.clone(),
            name: s.service.clone(),
        }) else {
            return false;
        };
        self.with_ptr(&service, |v| {
            v.slices.remove(key);
            if let Some(set) = v.slices_by_service.get_mut(&service) {
                set.remove(&key.name);
                if set.is_empty() {
                    v.slices_by_service.remove(&service);
                }
            }
        });
        true
    }

    /// Adds or replaces a pod's addresses (`pods verified`); returns whether that
    /// changed anything.
    pub fn upsert_pod(&mut self, key: Key, ips: Vec<IpAddr>) -> bool {
        if self.pods.get(&key) == Some(&ips) {
            return false;
        }
        self.delete_pod(&key);
        for ip in &ips {
            *self.pod_ips.entry((key.ns.clone(), *ip)).or_default() += 1;
        }
        self.pods.insert(key, ips);
        self.bump();
        true
    }

    /// Removes a pod; returns whether there was one.
    pub fn delete_pod(&mut self, key: &Key) -> bool {
        let Some(ips) = self.pods.remove(key) else {
            return false;
        };
        for ip in ips {
            let k = (key.ns.clone(), ip);
            if let Some(n) = self.pod_ips.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.pod_ips.remove(&k);
                }
            }
        }
        self.bump();
        true
    }

    /// Keys of every service, slice and pod (to drop those a re-list no longer has).
    pub fn service_keys(&self) -> impl Iterator<Item = &Key> {
        self.services.keys()
    }
    /// See [`View::service_keys`].
    pub fn slice_keys(&self) -> impl Iterator<Item = &Key> {
        self.slices.keys()
    }
    /// See [`View::service_keys`].
    pub fn pod_keys(&self) -> impl Iterator<Item = &Key> {
        self.pods.keys()
    }
}

fn ports_of(
    ports: impl Iterator<Item = (Option<String>, Option<String>, Option<i32>)>,
) -> Vec<Port> {
    ports
        .filter_map(|(name, protocol, port)| {
            Some(Port {
                name: name.unwrap_or_default().to_ascii_lowercase(),
                protocol: protocol
                    .unwrap_or_else(|| "TCP".into())
                    .to_ascii_lowercase(),
                port: u16::try_from(port?).ok()?,
            })
        })
        .collect()
}

/// The DNS view of a Service object; `None` when it has no namespace or name.
pub fn service_info(svc: &Service) -> Option<(String, String, ServiceInfo)> {
    let ns = svc.metadata.namespace.clone()?;
    let name = svc.metadata.name.clone()?;
    let spec = svc.spec.clone().unwrap_or_default();
    let kind = if spec.type_.as_deref() == Some("ExternalName") {
        let target = spec.external_name.unwrap_or_default();
        Kind::ExternalName(target.trim_end_matches('.').to_ascii_lowercase())
    } else {
        let ips: Vec<String> = match (spec.cluster_ips, spec.cluster_ip) {
            (Some(ips), _) if !ips.is_empty() => ips,
            (_, Some(ip)) => vec![ip],
            _ => Vec::new(),
        };
        if ips.is_empty() || ips.iter().any(|ip| ip == "None") {
            Kind::Headless
        } else {
            Kind::ClusterIp(ips.iter().filter_map(|ip| ip.parse().ok()).collect())
        }
    };
    let ports = ports_of(
        spec.ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name, p.protocol, Some(p.port))),
    );
    Some((
        ns,
        name,
        ServiceInfo {
            kind,
            ports,
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
        },
    ))
}

/// The service label EndpointSlices carry.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The DNS view of an EndpointSlice; `None` without namespace, name or service label,
/// or for FQDN slices (which DNS does not publish).
pub fn slice_info(slice: &EndpointSlice) -> Option<(String, String, SliceInfo)> {
    let ns = slice.metadata.namespace.clone()?;
    let name = slice.metadata.name.clone()?;
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)?
        .clone();
    if slice.address_type == "FQDN" {
        return None;
    }
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|ep| EndpointInfo {
            addresses: ep.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            hostname: ep.hostname.clone().map(|h| h.to_ascii_lowercase()),
            ready: ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        })
        .collect();
    let ports = ports_of(
        slice
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.clone(), p.protocol.clone(), p.port)),
    );
    Some((
        ns,
        name,
        SliceInfo {
            service: service.into(),
            endpoints,
            ports,
        },
    ))
}

/// A pod's namespace, name and addresses (`status.podIPs`, else `status.podIP`).
pub fn pod_info(pod: &Pod) -> Option<(String, String, Vec<IpAddr>)> {
    let ns = pod.metadata.namespace.clone()?;
    let name = pod.metadata.name.clone()?;
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.as_ref())
        && let Ok(ip) = ip.parse()
    {
        ips.push(ip);
    }
    Some((ns, name, ips))
}
