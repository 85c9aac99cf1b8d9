//! EndpointSlices and Endpoints from Services with selectors, as kube-controller-manager's
//! `endpointslice` and `endpoints` controllers make them, plus the `endpointslicemirroring`
//! controller: Endpoints written by hand for a Service without selector (the talk's
//! `website`) are left alone and mirrored into EndpointSlices, which is what kube-proxy
//! (and our proxy) read.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod,
    Service, ServicePort,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::Value;
use tracing::warn;

use crate::cache::{self, Check, Outcome};
use crate::util::{controller_ref, map_selects};
use crate::{Ctx, Error};

/// Label naming a slice's Service.
pub const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label naming a slice's controller.
pub const MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's `managed-by` value.
pub const CONTROLLER: &str = "endpointslice-controller.k8s.io";
/// The mirroring controller's `managed-by` value.
pub const MIRROR_CONTROLLER: &str = "endpointslicemirroring-controller.k8s.io";
/// On Endpoints: do not mirror into slices (set on the Endpoints we manage ourselves).
pub const SKIP_MIRROR: &str = "endpointslice.kubernetes.io/skip-mirror";
/// On slices and Endpoints of headless services.
pub const HEADLESS: &str = "service.kubernetes.io/headless";
/// Most endpoints in one slice (kube-controller-manager's `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

fn family(ip: &str) -> Option<&'static str> {
    match ip.parse::<IpAddr>().ok()? {
        IpAddr::V4(_) => Some("IPv4"),
        IpAddr::V6(_) => Some("IPv6"),
    }
}

fn pod_ips(pod: &Pod) -> Vec<String> {
    let Some(st) = &pod.status else {
        return vec![];
    };
    let mut ips: Vec<String> = st.pod_ips.iter().flatten().map(|p| p.ip.clone()).collect();
    if ips.is_empty() {
        ips.extend(st.pod_ip.clone());
    }
    ips
}

fn headless(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ip.as_deref())
        .is_some_and(|ip| ip == "None")
}

/// The selector of a Service this controller manages (`None` for services without
/// selector and ExternalName services).
pub fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

/// kube's `getAddressTypesForService`: the service's ipFamilies, else its clusterIP's
/// family, else (headless, no families) both.
pub fn address_types(svc: &Service) -> Vec<&'static str> {
    let spec = svc.spec.clone().unwrap_or_default();
    let mut out: Vec<&'static str> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| match f.as_str() {
            "IPv4" => Some("IPv4"),
            "IPv6" => Some("IPv6"),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        match spec.cluster_ip.as_deref().filter(|ip| *ip != "None") {
            Some(ip) => out.extend(family(ip)),
            None => out = vec!["IPv4", "IPv6"],
        }
    }
    out.dedup();
    out
}

/// kube's `FindPort`: the pod's port for a service port; a named targetPort is looked
/// up in the pod's container ports by name and protocol.
pub fn find_port(pod: &Pod, sp: &ServicePort) -> Option<i32> {
    match &sp.target_port {
        None => Some(sp.port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<i32>() {
                return Some(n);
            }
            let proto = sp.protocol.as_deref().unwrap_or("TCP");
            let spec = pod.spec.as_ref()?;
            // Sidecars (init containers that keep running) count, as in kube.
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            spec.containers
                .iter()
                .chain(sidecars)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| {
                    p.name.as_deref() == Some(name.as_str())
                        && p.protocol.as_deref().unwrap_or("TCP") == proto
                })
                .map(|p| p.container_port)
        }
    }
}

fn slice_ports(svc: &Service, pod: &Pod) -> Vec<EndpointPort> {
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter_map(|sp| {
            Some(EndpointPort {
                port: Some(find_port(pod, sp)?),
                name: Some(sp.name.clone().unwrap_or_default()),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect()
}

/// kube's `ShouldPodBeInEndpoints`: not finished, has an IP, and (unless
/// `include_terminating`) not terminating.
pub fn pod_in_endpoints(pod: &Pod, include_terminating: bool) -> bool {
    !matches!(crate::util::phase(pod), "Succeeded" | "Failed")
        && !pod_ips(pod).is_empty()
        && (include_terminating || !crate::util::terminating(pod))
}

fn target_ref(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// The pod's hostname in this service's records: `spec.hostname` when the pod's
/// `subdomain` names the service.
fn hostname(svc: &Service, pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let h = spec.hostname.as_deref().filter(|h| !h.is_empty())?;
    (spec.subdomain.as_deref() == svc.metadata.name.as_deref()
        && pod.metadata.namespace == svc.metadata.namespace)
        .then(|| h.to_string())
}

fn slice_labels(
    obj_labels: &BTreeMap<String, String>,
    name: &str,
    managed_by: &str,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = obj_labels
        .iter()
        .filter(|(k, _)| *k != SERVICE_NAME && *k != MANAGED_BY)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.insert(SERVICE_NAME.into(), name.into());
    labels.insert(MANAGED_BY.into(), managed_by.into());
    labels
}

fn new_slice(
    ns: &str,
    name: &str,
    labels: BTreeMap<String, String>,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    address_type: &str,
    ports: Vec<EndpointPort>,
    endpoints: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{name}-")),
            namespace: Some(ns.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        address_type: address_type.into(),
        ports: Some(ports),
        endpoints: Some(endpoints),
    }
}

/// The EndpointSlices a Service with a selector should have, from its namespace's
/// `pods` (`zone` gives a node's zone label): per address family, endpoints grouped by
/// their resolved ports, at most [`MAX_ENDPOINTS_PER_SLICE`] per slice; one empty
/// placeholder slice per family when there are no endpoints.
pub fn desired_slices(
    svc: &Service,
    pods: &[&Pod],
    zone: &dyn Fn(&str) -> Option<String>,
) -> Vec<EndpointSlice> {
    let Some(selector) = managed_selector(svc) else {
        return vec![];
    };
    let ns = svc.namespace().unwrap_or_default();
    let name = svc.name_any();
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let mut labels = slice_labels(svc.labels(), &name, CONTROLLER);
    if headless(svc) {
        labels.insert(HEADLESS.into(), String::new());
    }
    let owner = controller_ref(svc);

    let mut pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| map_selects(selector, p.labels()))
        .filter(|p| pod_in_endpoints(p, true))
        .collect();
    pods.sort_by_key(|p| p.name_any());

    let mut out = vec![];
    for at in address_types(svc) {
        // Ports (as JSON, for ordering) → endpoints with those ports.
        let mut groups: BTreeMap<String, (Vec<EndpointPort>, Vec<Endpoint>)> = BTreeMap::new();
        for pod in &pods {
            let Some(ip) = pod_ips(pod).into_iter().find(|ip| family(ip) == Some(at)) else {
                continue;
            };
            let ready_pod = crate::util::pod_ready(pod);
            let serving = publish || ready_pod;
            let terminating = crate::util::terminating(pod);
            let ready = publish || (serving && !terminating);
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            let ep = Endpoint {
                addresses: vec![ip],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(serving),
                    terminating: Some(terminating),
                }),
                hostname: hostname(svc, pod),
                zone: node.as_deref().and_then(zone),
                node_name: node,
                target_ref: Some(target_ref(pod)),
                ..Default::default()
            };
            let ports = slice_ports(svc, pod);
            let key = serde_json::to_string(&ports).unwrap_or_default();
            groups
                .entry(key)
                .or_insert_with(|| (ports, vec![]))
                .1
                .push(ep);
        }
        if groups.is_empty() {
            out.push(new_slice(
                &ns,
                &name,
                labels.clone(),
                owner.clone(),
                at,
                vec![],
                vec![],
            ));
        }
        for (_, (ports, eps)) in groups {
            for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
                out.push(new_slice(
                    &ns,
                    &name,
                    labels.clone(),
                    owner.clone(),
                    at,
                    ports.clone(),
                    chunk.to_vec(),
                ));
            }
        }
    }
    out
}

/// The Endpoints object of a Service with a selector, as the `endpoints` controller
/// writes it: the pod IP of the service's primary family, ready pods in `addresses`,
/// the others in `notReadyAddresses`, terminating pods left out (unless
/// `publishNotReadyAddresses`), addresses with the same resolved ports in one subset.
pub fn desired_endpoints(svc: &Service, pods: &[&Pod]) -> Option<Endpoints> {
    let selector = managed_selector(svc)?;
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let publish = spec.publish_not_ready_addresses.unwrap_or(false);
    let primary = spec
        .ip_families
        .as_ref()
        .and_then(|f| f.first().cloned())
        .or_else(|| {
            spec.cluster_ip
                .as_deref()
                .filter(|ip| *ip != "None")
                .and_then(family)
                .map(String::from)
        });
    let mut labels: BTreeMap<String, String> = svc.labels().clone();
    if headless(svc) {
        labels.insert(HEADLESS.into(), String::new());
    }
    labels.insert(SKIP_MIRROR.into(), "true".into());

    // Ports (as JSON) → (ports, ready addresses, not-ready addresses).
    type Group = (Vec<CorePort>, Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let mut pods: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
        .filter(|p| map_selects(selector, p.labels()))
        .filter(|p| pod_in_endpoints(p, publish))
        .collect();
    pods.sort_by_key(|p| p.name_any());
    for pod in pods {
        let ips = pod_ips(pod);
        let ip = match &primary {
            Some(f) => ips.into_iter().find(|ip| family(ip) == Some(f.as_str())),
            None => ips.into_iter().next(),
        };
        let Some(ip) = ip else { continue };
        let addr = EndpointAddress {
            ip,
            hostname: hostname(svc, pod),
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .filter(|n| !n.is_empty()),
            target_ref: Some(target_ref(pod)),
        };
        let ports: Vec<CorePort> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                Some(CorePort {
                    port: find_port(pod, sp)?,
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".into())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        // A pod none of whose ports resolve has no endpoint (unless the service has no
        // ports at all: headless services list bare addresses).
        if ports.is_empty() && spec.ports.as_ref().is_some_and(|p| !p.is_empty()) {
            continue;
        }
        let key = serde_json::to_string(&ports).unwrap_or_default();
        let g = groups.entry(key).or_insert_with(|| (ports, vec![], vec![]));
        if publish || crate::util::pod_ready(pod) {
            g.1.push(addr);
        } else {
            g.2.push(addr);
        }
    }
    let subsets = groups
        .into_values()
        .map(|(ports, mut ready, mut not_ready)| {
            ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            not_ready.sort_by(|a, b| a.ip.cmp(&b.ip));
            EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            }
        })
        .collect();
    Some(Endpoints {
        metadata: ObjectMeta {
            name: Some(svc.name_any()),
            namespace: Some(ns),
            labels: Some(labels),
            ..Default::default()
        },
        subsets: Some(subsets),
    })
}

/// The slices the mirroring controller makes from hand-written Endpoints of a Service
/// without selector: per subset and family, ready addresses ready, not-ready ones not.
pub fn mirrored_slices(ep: &Endpoints) -> Vec<EndpointSlice> {
    let ns = ep.namespace().unwrap_or_default();
    let name = ep.name_any();
    let labels = slice_labels(ep.labels(), &name, MIRROR_CONTROLLER);
    let owner = controller_ref(ep);
    let mut out = vec![];
    for subset in ep.subsets.iter().flatten() {
        let ports: Vec<EndpointPort> = subset
            .ports
            .iter()
            .flatten()
            .map(|p| EndpointPort {
                name: Some(p.name.clone().unwrap_or_default()),
                port: Some(p.port),
                protocol: Some(p.protocol.clone().unwrap_or_else(|| "TCP".into())),
                app_protocol: p.app_protocol.clone(),
            })
            .collect();
        for at in ["IPv4", "IPv6"] {
            let ready = subset.addresses.iter().flatten().map(|a| (a, true));
            let not_ready = subset
                .not_ready_addresses
                .iter()
                .flatten()
                .map(|a| (a, false));
            let eps: Vec<Endpoint> = ready
                .chain(not_ready)
                .filter(|(a, _)| family(&a.ip) == Some(at))
                .map(|(a, r)| Endpoint {
                    addresses: vec![a.ip.clone()],
                    conditions: Some(EndpointConditions {
                        ready: Some(r),
                        ..Default::default()
                    }),
                    hostname: a.hostname.clone(),
                    node_name: a.node_name.clone(),
                    target_ref: a.target_ref.clone(),
                    ..Default::default()
                })
                .collect();
            for chunk in eps.chunks(MAX_ENDPOINTS_PER_SLICE) {
                out.push(new_slice(
                    &ns,
                    &name,
                    labels.clone(),
                    owner.clone(),
                    at,
                    ports.clone(),
                    chunk.to_vec(),
                ));
            }
        }
    }
    out
}

use crate::util::strip_empty as norm;

/// What of a slice this controller decides: compared to find which slices to write.
fn slice_content(s: &EndpointSlice) -> Value {
    norm(serde_json::json!({
        "addressType": s.address_type,
        "endpoints": s.endpoints,
        "ports": s.ports,
        "labels": s.metadata.labels,
        "ownerReferences": s.metadata.owner_references,
    }))
}

/// One change to the slices.
#[derive(Debug, Clone, PartialEq)]
pub enum SliceChange {
    /// Make a new slice (with `generateName`).
    Create(EndpointSlice),
    /// Overwrite an existing slice's content (name and resourceVersion kept).
    Update(EndpointSlice),
    /// Remove a slice: ns, name.
    Delete(String, String),
}

/// The changes that turn `existing` slices into `desired` ones, touching as few as
/// possible: slices already equal to a desired one stay; the rest are rewritten in
/// place, and only the surplus is created or deleted.
pub fn diff_slices(
    desired: Vec<EndpointSlice>,
    existing: &[Arc<EndpointSlice>],
) -> Vec<SliceChange> {
    let mut existing: Vec<&EndpointSlice> = existing.iter().map(|s| &**s).collect();
    existing.sort_by_key(|s| s.name_any());
    let mut unmatched_desired = vec![];
    for d in desired {
        let c = slice_content(&d);
        match existing.iter().position(|e| slice_content(e) == c) {
            Some(i) => {
                existing.remove(i);
            }
            None => unmatched_desired.push(d),
        }
    }
    let mut changes = vec![];
    for d in unmatched_desired {
        // Reuse a slice of the same family first.
        match existing
            .iter()
            .position(|e| e.address_type == d.address_type)
        {
            Some(i) => {
                let e = existing.remove(i);
                let mut s = d;
                s.metadata.name = e.metadata.name.clone();
                s.metadata.generate_name = None;
                s.metadata.resource_version = e.metadata.resource_version.clone();
                s.metadata.annotations = e.metadata.annotations.clone();
                changes.push(SliceChange::Update(s));
            }
            None => changes.push(SliceChange::Create(d)),
        }
    }
    for e in existing {
        changes.push(SliceChange::Delete(
            e.namespace().unwrap_or_default(),
            e.name_any(),
        ));
    }
    changes
}

fn endpoints_content(e: &Endpoints) -> Value {
    norm(serde_json::json!({"subsets": e.subsets, "labels": e.metadata.labels}))
}

fn ignore_not_found(r: Result<(), kube::Error>) -> Result<(), kube::Error> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        r => r,
    }
}

/// Runs the EndpointSlice, Endpoints and mirroring controllers: slices are written with
/// `ctx.client` (the endpointslice controller's), Endpoints with `endpoint_controller`.
pub async fn run(ctx: Ctx, endpoint_controller: kube::Client) {
    let c = &ctx.caches;
    let ready = vec![
        cache::ready(&c.services),
        cache::ready(&c.pods),
        cache::ready(&c.nodes),
        cache::ready(&c.slices),
        cache::ready(&c.endpoints),
    ];
    let triggers = vec![
        c.services.subscribe(),
        c.pods.subscribe(),
        c.nodes.subscribe(),
        c.slices.subscribe(),
        c.endpoints.subscribe(),
    ];
    let resync = ctx.config.resync;
    cache::run_loop("endpointslice", ready, triggers, resync, move || {
        let ctx = ctx.clone();
        let endpoint_controller = endpoint_controller.clone();
        async move { pass(&ctx, &endpoint_controller).await }.boxed()
    })
    .await;
}

/// Everything to write, computed from the stores.
#[derive(Debug, Default)]
pub struct Plan {
    /// Slice changes.
    pub slices: Vec<SliceChange>,
    /// Endpoints to create or overwrite.
    pub endpoints: Vec<Endpoints>,
    /// Endpoints to delete (ns, name): ours, whose service is gone.
    pub delete_endpoints: Vec<(String, String)>,
}

/// The whole plan from a view of the cluster (pure).
pub fn plan(
    services: &[Arc<Service>],
    pods: &[Arc<Pod>],
    slices: &[Arc<EndpointSlice>],
    endpoints: &[Arc<Endpoints>],
    zone: &dyn Fn(&str) -> Option<String>,
) -> Plan {
    let mut pods_by_ns: HashMap<String, Vec<&Pod>> = HashMap::new();
    for p in pods {
        pods_by_ns
            .entry(p.namespace().unwrap_or_default())
            .or_default()
            .push(p);
    }
    let svc_by_key: HashMap<(String, String), &Service> = services
        .iter()
        .map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), &**s))
        .collect();
    let ep_by_key: HashMap<(String, String), &Endpoints> = endpoints
        .iter()
        .map(|e| ((e.namespace().unwrap_or_default(), e.name_any()), &**e))
        .collect();
    // Existing slices per (controller, ns, service-name).
    let mut slices_by: HashMap<(&str, String, String), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for s in slices {
        let l = s.labels();
        let (Some(by), Some(svc)) = (l.get(MANAGED_BY), l.get(SERVICE_NAME)) else {
            continue;
        };
        let by = match by.as_str() {
            CONTROLLER => CONTROLLER,
            MIRROR_CONTROLLER => MIRROR_CONTROLLER,
            _ => continue,
        };
        slices_by
            .entry((by, s.namespace().unwrap_or_default(), svc.clone()))
            .or_default()
            .push(s.clone());
    }

    let mut plan = Plan::default();
    let mut wanted: HashMap<(&str, String, String), Vec<EndpointSlice>> = HashMap::new();
    for svc in services {
        let ns = svc.namespace().unwrap_or_default();
        let name = svc.name_any();
        let ns_pods = pods_by_ns.get(&ns).map(Vec::as_slice).unwrap_or_default();
        if let Some(want) = desired_endpoints(svc, ns_pods) {
            wanted.insert(
                (CONTROLLER, ns.clone(), name.clone()),
                desired_slices(svc, ns_pods, zone),
            );
            let have = ep_by_key.get(&(ns.clone(), name.clone()));
            if have.is_none_or(|h| endpoints_content(h) != endpoints_content(&want)) {
                let mut e = want;
                if let Some(h) = have {
                    e.metadata.resource_version = h.metadata.resource_version.clone();
                    e.metadata.annotations = h.metadata.annotations.clone();
                }
                plan.endpoints.push(e);
            }
        }
    }
    for ep in endpoints {
        let key = (ep.namespace().unwrap_or_default(), ep.name_any());
        let svc = svc_by_key.get(&key);
        let ours = ep.labels().get(SKIP_MIRROR).is_some_and(|v| v == "true");
        if ours && svc.is_none() && ep.metadata.deletion_timestamp.is_none() {
            plan.delete_endpoints.push(key.clone());
        }
        let mirror = !ours
            && svc.is_some_and(|s| {
                managed_selector(s).is_none()
                    && s.spec.as_ref().and_then(|sp| sp.type_.as_deref()) != Some("ExternalName")
            });
        if mirror {
            wanted.insert((MIRROR_CONTROLLER, key.0, key.1), mirrored_slices(ep));
        }
    }
    // Every group of existing slices without a wanted entry is deleted.
    let mut keys: Vec<(&str, String, String)> = wanted
        .keys()
        .cloned()
        .chain(slices_by.keys().cloned())
        .collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let desired = wanted.remove(&k).unwrap_or_default();
        let existing = slices_by.get(&k).map(Vec::as_slice).unwrap_or_default();
        plan.slices.extend(diff_slices(desired, existing));
    }
    plan
}

async fn pass(ctx: &Ctx, endpoint_controller: &kube::Client) -> Outcome {
    let c = &ctx.caches;
    let nodes = &c.nodes;
    let zone = |n: &str| {
        nodes
            .get("", n)
            .and_then(|n| n.labels().get("topology.kubernetes.io/zone").cloned())
    };
    let plan = plan(
        &c.services.all(),
        &c.pods.all(),
        &c.slices.all(),
        &c.endpoints.all(),
        &zone,
    );
    let mut out = Outcome::default();
    let mut errors: Vec<Error> = vec![];
    for change in plan.slices {
        let r = apply_slice(ctx, change).await;
        match r {
            Ok(check) => out.expect.push(check),
            Err(e) => errors.push(e),
        }
    }
    for e in plan.endpoints {
        let (ns, name) = (e.namespace().unwrap_or_default(), e.name_any());
        let api: Api<Endpoints> = Api::namespaced(endpoint_controller.clone(), &ns);
        let r = if e.metadata.resource_version.is_some() {
            api.replace(&name, &PostParams::default(), &e).await
        } else {
            api.create(&PostParams::default(), &e).await
        };
        match r.map_err(Error::api(format!("writing endpoints {ns}/{name}"))) {
            Ok(w) => out.expect.push(cache::seen(
                &c.endpoints,
                &ns,
                &name,
                w.metadata.resource_version,
            )),
            Err(e) => errors.push(e),
        }
    }
    for (ns, name) in plan.delete_endpoints {
        let api: Api<Endpoints> = Api::namespaced(endpoint_controller.clone(), &ns);
        let r = api
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ());
        match ignore_not_found(r).map_err(Error::api(format!("deleting endpoints {ns}/{name}"))) {
            Ok(()) => out.expect.push(cache::gone(&c.endpoints, &ns, &name)),
            Err(e) => errors.push(e),
        }
    }
    for e in &errors {
        warn!(error = %k8s::ErrorChain(e), "endpoints");
    }
    out.failed = !errors.is_empty();
    out
}

async fn apply_slice(ctx: &Ctx, change: SliceChange) -> Result<Check, Error> {
    let slices = &ctx.caches.slices;
    match change {
        SliceChange::Create(s) => {
            let ns = s.namespace().unwrap_or_default();
            let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
            let w = api
                .create(&PostParams::default(), &s)
                .await
                .map_err(Error::api(format!(
                    "creating an endpointslice for {ns}/{}",
                    s.labels().get(SERVICE_NAME).cloned().unwrap_or_default()
                )))?;
            Ok(cache::seen(
                slices,
                &ns,
                &w.name_any(),
                w.metadata.resource_version,
            ))
        }
        SliceChange::Update(s) => {
            let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
            let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
            let w = api
                .replace(&name, &PostParams::default(), &s)
                .await
                .map_err(Error::api(format!("updating endpointslice {ns}/{name}")))?;
            Ok(cache::seen(slices, &ns, &name, w.metadata.resource_version))
        }
        SliceChange::Delete(ns, name) => {
            let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
            let r = api
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ());
            ignore_not_found(r)
                .map_err(Error::api(format!("deleting endpointslice {ns}/{name}")))?;
            Ok(cache::gone(slices, &ns, &name))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn eps(s: &EndpointSlice) -> &Vec<Endpoint> {
        s.endpoints.as_ref().unwrap()
    }

    fn svc(v: Value) -> Service {
        let mut base = json!({"metadata": {"name": "web", "namespace": "default", "uid": "svc-uid", "labels": {"team": "a"}},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.5", "ipFamilies": ["IPv4"],
                     "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}});
        merge(&mut base, v);
        serde_json::from_value(base).unwrap()
    }

    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }

    fn pod(name: &str, ips: &[&str], ready: bool, extra: Value) -> Pod {
        let mut base = json!({"metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ips.first(),
                "podIPs": ips.iter().map(|i| json!({"ip": i})).collect::<Vec<_>>(),
                "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        merge(&mut base, extra);
        serde_json::from_value(base).unwrap()
    }

    fn zone(n: &str) -> Option<String> {
        (n == "node-1").then(|| "zone-a".to_string())
    }

    #[test]
    fn slices_resolve_named_ports_and_conditions() {
        let s = svc(json!({}));
        let a = pod("a", &["10.244.1.2"], true, json!({}));
        let b = pod("b", &["10.244.1.3"], false, json!({}));
        let c = pod(
            "c",
            &["10.244.1.4"],
            true,
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        let other = pod(
            "x",
            &["10.244.1.9"],
            true,
            json!({"metadata": {"labels": {"app": "db"}}}),
        );
        let no_ip = pod("n", &[], true, json!({}));
        let slices = desired_slices(&s, &[&a, &b, &c, &other, &no_ip], &zone);
        assert_eq!(slices.len(), 1);
        let sl = &slices[0];
        assert_eq!(sl.address_type, "IPv4");
        assert_eq!(sl.metadata.generate_name.as_deref(), Some("web-"));
        let labels = sl.metadata.labels.clone().unwrap();
        assert_eq!(labels[SERVICE_NAME], "web");
        assert_eq!(labels[MANAGED_BY], CONTROLLER);
        assert_eq!(labels["team"], "a");
        let owner = &sl.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("Service", "svc-uid", Some(true))
        );
        let ports = sl.ports.clone().unwrap();
        assert_eq!(ports[0].port, Some(8080));
        assert_eq!(ports[0].name.as_deref(), Some("http"));
        let conds: Vec<(String, bool, bool, bool)> = eps(sl)
            .iter()
            .map(|e| {
                let c = e.conditions.clone().unwrap();
                (
                    e.addresses[0].clone(),
                    c.ready.unwrap(),
                    c.serving.unwrap(),
                    c.terminating.unwrap(),
                )
            })
            .collect();
        assert_eq!(
            conds,
            [
                ("10.244.1.2".into(), true, true, false),
                ("10.244.1.3".into(), false, false, false),
                ("10.244.1.4".into(), false, true, true),
            ]
        );
        let e = &eps(sl)[0];
        assert_eq!(e.node_name.as_deref(), Some("node-1"));
        assert_eq!(e.zone.as_deref(), Some("zone-a"));
        assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("a"));
    }

    #[test]
    fn publish_not_ready_addresses_makes_everything_ready() {
        let s = svc(json!({"spec": {"publishNotReadyAddresses": true}}));
        let b = pod("b", &["10.244.1.3"], false, json!({}));
        let c = pod(
            "c",
            &["10.244.1.4"],
            true,
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        let sl = &desired_slices(&s, &[&b, &c], &zone)[0];
        assert!(
            eps(sl)
                .iter()
                .all(|e| e.conditions.as_ref().unwrap().ready == Some(true))
        );
        let ep = desired_endpoints(&s, &[&b, &c]).unwrap();
        let subset = &ep.subsets.unwrap()[0];
        assert_eq!(subset.addresses.as_ref().unwrap().len(), 2);
        assert!(subset.not_ready_addresses.is_none());
    }

    #[test]
    fn pods_with_different_ports_get_different_slices_and_subsets() {
        let s = svc(json!({}));
        let a = pod("a", &["10.244.1.2"], true, json!({}));
        let mut b = pod("b", &["10.244.1.3"], true, json!({}));
        b.spec.as_mut().unwrap().containers[0]
            .ports
            .as_mut()
            .unwrap()[0]
            .container_port = 9090;
        let slices = desired_slices(&s, &[&a, &b], &zone);
        assert_eq!(slices.len(), 2);
        let ep = desired_endpoints(&s, &[&a, &b]).unwrap();
        assert_eq!(ep.subsets.as_ref().unwrap().len(), 2);
        // A pod without the named port has no ports in its slice, and no Endpoints entry.
        let mut c = pod("c", &["10.244.1.4"], true, json!({}));
        c.spec.as_mut().unwrap().containers[0].ports = None;
        let slices = desired_slices(&s, &[&c], &zone);
        assert_eq!(slices[0].ports.as_deref(), Some(&[][..]));
        assert_eq!(eps(&slices[0]).len(), 1);
        assert!(
            desired_endpoints(&s, &[&c])
                .unwrap()
                .subsets
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dual_stack_slices_per_family_and_endpoints_for_the_primary() {
        let s =
            svc(json!({"spec": {"ipFamilies": ["IPv6", "IPv4"], "clusterIP": "fd00:10:96::5"}}));
        let a = pod("a", &["10.244.1.2", "fd00:10:244:1::2"], true, json!({}));
        let slices = desired_slices(&s, &[&a], &zone);
        let types: Vec<&str> = slices.iter().map(|s| s.address_type.as_str()).collect();
        assert_eq!(types, ["IPv6", "IPv4"]);
        assert_eq!(eps(&slices[0])[0].addresses, ["fd00:10:244:1::2"]);
        let ep = desired_endpoints(&s, &[&a]).unwrap();
        assert_eq!(
            ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0].ip,
            "fd00:10:244:1::2"
        );
    }

    #[test]
    fn more_than_100_endpoints_split_and_no_pods_leave_a_placeholder() {
        let s = svc(json!({}));
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    &[&format!("10.244.{}.{}", i / 200, i % 200 + 1)],
                    true,
                    json!({}),
                )
            })
            .collect();
        let refs: Vec<&Pod> = pods.iter().collect();
        let slices = desired_slices(&s, &refs, &zone);
        let sizes: Vec<usize> = slices.iter().map(|s| eps(s).len()).collect();
        assert_eq!(sizes, [100, 100, 50]);
        let empty = desired_slices(&s, &[], &zone);
        assert_eq!(empty.len(), 1);
        assert!(eps(&empty[0]).is_empty());
    }

    #[test]
    fn hostname_only_when_subdomain_names_the_service() {
        let s = svc(json!({"spec": {"clusterIP": "None"}}));
        let a = pod(
            "a",
            &["10.244.1.2"],
            true,
            json!({"spec": {"hostname": "redis-0", "subdomain": "web"}}),
        );
        let b = pod(
            "b",
            &["10.244.1.3"],
            true,
            json!({"spec": {"hostname": "b", "subdomain": "other"}}),
        );
        let sl = &desired_slices(&s, &[&a, &b], &zone)[0];
        assert_eq!(eps(sl)[0].hostname.as_deref(), Some("redis-0"));
        assert_eq!(eps(sl)[1].hostname, None);
        assert!(sl.metadata.labels.as_ref().unwrap().contains_key(HEADLESS));
        let ep = desired_endpoints(&s, &[&a]).unwrap();
        assert_eq!(
            ep.subsets.unwrap()[0].addresses.as_ref().unwrap()[0]
                .hostname
                .as_deref(),
            Some("redis-0")
        );
    }

    #[test]
    fn endpoints_leave_out_terminating_and_split_ready() {
        let s = svc(json!({}));
        let a = pod("a", &["10.244.1.2"], true, json!({}));
        let b = pod("b", &["10.244.1.3"], false, json!({}));
        let c = pod(
            "c",
            &["10.244.1.4"],
            true,
            json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        );
        let done = pod(
            "d",
            &["10.244.1.5"],
            true,
            json!({"status": {"phase": "Succeeded"}}),
        );
        let ep = desired_endpoints(&s, &[&a, &b, &c, &done]).unwrap();
        let subsets = ep.subsets.clone().unwrap();
        assert_eq!(subsets.len(), 1);
        let ips = |v: &Option<Vec<EndpointAddress>>| {
            v.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ips(&subsets[0].addresses), ["10.244.1.2"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.244.1.3"]);
        assert_eq!(subsets[0].ports.as_ref().unwrap()[0].port, 8080);
        assert_eq!(ep.metadata.labels.unwrap()[SKIP_MIRROR], "true");
        // No selector, or ExternalName: not ours.
        let none = svc(json!({"spec": {"selector": null}}));
        assert!(desired_endpoints(&none, &[&a]).is_none());
        assert!(desired_slices(&none, &[&a], &zone).is_empty());
    }

    #[test]
    #[allow(clippy::cloned_ref_to_slice_refs)] // one-element views, clearer as clones
    fn plan_keeps_equal_slices_rewrites_changed_and_deletes_orphans() {
        let s = Arc::new(svc(json!({})));
        let a = Arc::new(pod("a", &["10.244.1.2"], true, json!({})));
        let p0 = plan(&[s.clone()], &[a.clone()], &[], &[], &zone);
        assert_eq!(p0.slices.len(), 1);
        assert!(matches!(p0.slices[0], SliceChange::Create(_)));
        assert_eq!(p0.endpoints.len(), 1);
        // Pretend both were written.
        let SliceChange::Create(mut written) = p0.slices[0].clone() else {
            unreachable!()
        };
        written.metadata.name = Some("web-abcde".into());
        written.metadata.resource_version = Some("5".into());
        let written = Arc::new(written);
        let mut ep = p0.endpoints[0].clone();
        ep.metadata.resource_version = Some("6".into());
        let ep = Arc::new(ep);
        let p1 = plan(
            &[s.clone()],
            &[a.clone()],
            &[written.clone()],
            &[ep.clone()],
            &zone,
        );
        assert!(p1.slices.is_empty() && p1.endpoints.is_empty(), "{p1:?}");
        // The pod turns not ready: the slice is rewritten in place.
        let b = Arc::new(pod("a", &["10.244.1.2"], false, json!({})));
        let p2 = plan(&[s.clone()], &[b], &[written.clone()], &[ep.clone()], &zone);
        assert!(
            matches!(&p2.slices[..], [SliceChange::Update(u)] if u.metadata.name.as_deref() == Some("web-abcde"))
        );
        assert_eq!(p2.endpoints.len(), 1);
        // The service goes: its slice and Endpoints go; hand-written Endpoints stay.
        let hand: Endpoints = serde_json::from_value(
            json!({"metadata": {"name": "website", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.10.10.10"}], "ports": [{"port": 80}]}]}),
        )
        .unwrap();
        let p3 = plan(&[], &[a], &[written], &[ep, Arc::new(hand)], &zone);
        assert_eq!(
            p3.slices,
            [SliceChange::Delete("default".into(), "web-abcde".into())]
        );
        assert_eq!(
            p3.delete_endpoints,
            [("default".to_string(), "web".to_string())]
        );
    }

    #[test]
    fn hand_written_endpoints_of_a_selectorless_service_are_mirrored() {
        let website = Arc::new(svc(
            json!({"metadata": {"name": "website"}, "spec": {"selector": null}}),
        ));
        let hand: Endpoints = serde_json::from_value(json!({"metadata": {"name": "website", "namespace": "default", "uid": "ep-uid"},
            "subsets": [{"addresses": [{"ip": "10.10.10.10"}], "notReadyAddresses": [{"ip": "10.10.10.11"}], "ports": [{"port": 80}]}]})).unwrap();
        let p = plan(&[website], &[], &[], &[Arc::new(hand)], &zone);
        assert!(p.endpoints.is_empty() && p.delete_endpoints.is_empty());
        let [SliceChange::Create(s)] = &p.slices[..] else {
            panic!("{p:?}")
        };
        assert_eq!(
            s.metadata.labels.as_ref().unwrap()[MANAGED_BY],
            MIRROR_CONTROLLER
        );
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].kind,
            "Endpoints"
        );
        let ready: Vec<(String, Option<bool>)> = eps(s)
            .iter()
            .map(|e| (e.addresses[0].clone(), e.conditions.as_ref().unwrap().ready))
            .collect();
        assert_eq!(
            ready,
            [
                ("10.10.10.10".into(), Some(true)),
                ("10.10.10.11".into(), Some(false))
            ]
        );
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(80));
    }
}
