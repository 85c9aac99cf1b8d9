//! A Service per Gateway: each Gateway of ours gets a LoadBalancer Service of its own,
//! beside the gateway's (`--service`), selecting the same pods, so that each Gateway has
//! its own address and two Gateways' listeners on one port never meet (Gateway API's
//! HTTPRouteMultipleGateways). Envoy Gateway does the same with a Service per Gateway.
//!
//! In the pods, every Gateway listener port is bound to a port of its own from
//! [`BIND_PORTS`], the Service port's `targetPort`. The binding is read back from the
//! Services themselves: the compile keeps a port a Service already targets and gives new
//! ones the lowest free port, older Gateways first, so every replica computing from the
//! same Services binds the same ports, and a binding changes only when its Service lost it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;

use crate::gatewayapi::types::GatewaySpec;
use crate::world::{Key, Obj, World};

/// The ports Gateway listeners are bound to in the gateway's pods (above the privileged
/// ports, below Linux's ephemeral range).
pub const BIND_PORTS: std::ops::RangeInclusive<u16> = 20000..=29999;

/// The label on every per-Gateway Service; the controller deletes the labelled Services
/// of Gateways that are gone.
pub const GATEWAY_LABEL: &str = "gateway.kubewire.io/gateway";
/// The annotation naming a Service's Gateway (`namespace/name`).
pub const GATEWAY_ANNOTATION: &str = "gateway.kubewire.io/gateway";

/// The annotation asking kubewire's (and MetalLB's) LoadBalancer controller for addresses.
pub const LB_IPS_ANNOTATION: &str = "metallb.io/loadBalancerIPs";

/// A Gateway listener port: the number and whether it is UDP.
pub type PortKey = (u16, bool);

/// The Service a Gateway should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayService {
    /// In the gateway's own Service's namespace.
    pub name: String,
    /// The Gateway's `namespace/name`.
    pub gateway: Key,
    /// Every listener port and where the pods bind it, ordered.
    pub ports: Vec<(PortKey, u16)>,
    /// `spec.addresses` IP values the Gateway asks for (to `metallb.io/loadBalancerIPs`).
    pub addresses: Vec<String>,
}

/// The name of the Service of Gateway `namespace/name`, beside the gateway's Service
/// `service`: readable, at most 63 characters, and unique by a hash of the Gateway's key.
pub fn service_name(service: &str, namespace: &str, name: &str) -> String {
    let mut base: String = format!("{service}-{namespace}-{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(54)
        .collect();
    while base.ends_with('-') {
        base.pop();
    }
    format!("{base}-{}", hash8(&format!("{namespace}/{name}")))
}

/// Eight hex digits of FNV-1a: stable across builds and replicas.
fn hash8(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// The ports a Gateway's listeners of a protocol this gateway serves use.
fn wanted(spec: &GatewaySpec) -> BTreeSet<PortKey> {
    spec.listeners
        .iter()
        .filter(|l| ["HTTP", "HTTPS", "TLS", "TCP", "UDP"].contains(&l.protocol.as_str()))
        .filter_map(|l| {
            Some((
                u16::try_from(l.port).ok().filter(|&p| p > 0)?,
                l.protocol == "UDP",
            ))
        })
        .collect()
}

/// What the Service `svc` binds each port to now (targetPorts inside [`BIND_PORTS`]).
fn current(svc: Option<&Service>) -> BTreeMap<PortKey, u16> {
    svc.and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let udp = p.protocol.as_deref() == Some("UDP");
            let target = match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                    u16::try_from(*t).ok()?
                }
                _ => return None,
            };
            BIND_PORTS
                .contains(&target)
                .then_some(((port, udp), target))
        })
        .collect()
}

/// The Service of each Gateway in `gateways` (in the order given, oldest first), with its
/// ports bound as the module says.
pub(crate) fn plan(world: &World, gateways: &[&Obj<GatewaySpec>]) -> Vec<GatewayService> {
    let (svc_ns, svc_name) = &world.settings.service;
    let names: Vec<String> = gateways
        .iter()
        .map(|g| service_name(svc_name, g.namespace(), g.name()))
        .collect();
    let wants: Vec<BTreeSet<PortKey>> = gateways
        .iter()
        .map(|g| g.spec.as_ref().map(wanted).unwrap_or_default())
        .collect();
    let mut taken = BTreeSet::new();
    let mut bound: Vec<BTreeMap<PortKey, u16>> = vec![BTreeMap::new(); gateways.len()];
    // What a Service binds already stays, the older Gateway's first on a clash.
    for (i, name) in names.iter().enumerate() {
        let have = current(world.service(svc_ns, name).map(|s| &**s));
        for (key, target) in have {
            if wants[i].contains(&key) && taken.insert(target) {
                bound[i].insert(key, target);
            }
        }
    }
    let mut free = BIND_PORTS.filter(|p| !taken.contains(p));
    for (i, want) in wants.iter().enumerate() {
        for key in want {
            if bound[i].contains_key(key) {
                continue;
            }
            // 10,000 listener ports in all are beyond any real gateway: past that, the
            // port is left out (and its listener not served).
            if let Some(p) = free.next() {
                bound[i].insert(*key, p);
            }
        }
    }
    gateways
        .iter()
        .zip(names)
        .zip(bound)
        .map(|((g, name), bound)| GatewayService {
            name,
            gateway: (g.namespace().into(), g.name().into()),
            ports: bound.into_iter().collect(),
            addresses: g
                .spec
                .as_ref()
                .map(|s| {
                    s.addresses
                        .iter()
                        .filter(|a| {
                            a.type_.as_deref().unwrap_or("IPAddress") == "IPAddress"
                                && !a.value.is_empty()
                        })
                        .map(|a| a.value.clone())
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The addresses of the Service `name` in the gateway's namespace.
pub(crate) fn addresses(world: &World, name: &str) -> Vec<String> {
    world
        .service(&world.settings.service.0, name)
        .map(|s| load_balancer_addresses(s))
        .unwrap_or_default()
}

/// A Service's `status.loadBalancer.ingress`: IPs or hostnames.
pub fn load_balancer_addresses(svc: &Service) -> Vec<String> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
                .collect()
        })
        .unwrap_or_default()
}

impl GatewayService {
    /// The Service as an object, in `namespace`, copying from the gateway's own Service
    /// `main` what makes it reach the same pods the same way (selector, traffic policy,
    /// IP families, load-balancer class).
    pub fn manifest(&self, namespace: &str, main: Option<&Service>) -> serde_json::Value {
        use serde_json::json;
        let main = main.and_then(|s| s.spec.as_ref());
        let ports: Vec<serde_json::Value> = self
            .ports
            .iter()
            .map(|((port, udp), bind)| {
                let (proto, suffix) = if *udp { ("UDP", "-udp") } else { ("TCP", "") };
                json!({
                    "name": format!("listener-{port}{suffix}"),
                    "port": port,
                    "protocol": proto,
                    "targetPort": bind,
                })
            })
            .collect();
        let main = main.map(|s| serde_json::to_value(s).unwrap_or_default());
        let main = main.as_ref().unwrap_or(&serde_json::Value::Null);
        let mut spec = json!({
            "type": "LoadBalancer",
            "selector": main["selector"],
            "ports": ports,
        });
        for field in [
            "externalTrafficPolicy",
            "ipFamilyPolicy",
            "ipFamilies",
            "loadBalancerClass",
        ] {
            if !main[field].is_null() {
                spec[field] = main[field].clone();
            }
        }
        let mut annotations = json!({
            GATEWAY_ANNOTATION: format!("{}/{}", self.gateway.0, self.gateway.1),
        });
        if !self.addresses.is_empty() {
            annotations[LB_IPS_ANNOTATION] = json!(self.addresses.join(","));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": self.name,
                "namespace": namespace,
                "labels": {
                    GATEWAY_LABEL: hash8(&format!("{}/{}", self.gateway.0, self.gateway.1)),
                    "app.kubernetes.io/managed-by": crate::controller::COMPONENT,
                },
                "annotations": annotations,
            },
            "spec": spec,
        })
    }
}
