//! Gateway API (v1.6, standard channel): GatewayClass, Gateway, HTTPRoute, GRPCRoute,
//! TLSRoute, TCPRoute, UDPRoute, ReferenceGrant and BackendTLSPolicy, with the statuses
//! the specification requires.
//!
//! - GatewayClasses whose `controllerName` is [`CONTROLLER_NAME`] are ours (`Accepted`),
//!   and so are their Gateways. Every Gateway of ours is served by this one gateway (the
//!   Deployment) behind a LoadBalancer Service of its own, with its own address: see
//!   [`services`]. Two Gateways never share a listener.
//! - A listener serves the requests whose host it matches most specifically: the routes
//!   of a less specific listener on the same port are not tried (listener isolation).
//! - Listeners: HTTP, HTTPS (TLS ends here with `certificateRefs`, Secrets, across
//!   namespaces with a ReferenceGrant), TLS (`Passthrough` to TLSRoutes by SNI), TCP, UDP;
//!   `hostname`; `allowedRoutes` (namespaces `Same`, `All`, `Selector`; `kinds`).
//! - Routes attach to a listener by `parentRefs` (`sectionName`, `port`) when the listener
//!   allows their namespace and kind and their hostnames intersect the listener's.
//! - HTTPRoute precedence, as the specification orders it: hostname (most specific
//!   first, then the hosts that cover it: see [`crate::build`]), then an `Exact` path,
//!   then the longest `PathPrefix`, then (implementation-specific) a
//!   `RegularExpression` path, then a method, then the most header matches, then the
//!   most query matches; ties go to the oldest route, then namespace/name, then rule
//!   order, then match order. GRPCRoutes (matches become `/service/method` paths, their
//!   backends speak h2c) sort with them.
//! - Filters: RequestHeaderModifier, ResponseHeaderModifier, RequestRedirect, URLRewrite,
//!   RequestMirror and CORS on rules; timeouts; retries; weighted backendRefs. A backend
//!   reference that does not resolve keeps its weight and answers 500 for its share; a
//!   rule without backends answers 500. Filters on a single backendRef and
//!   ExtensionRef filters are not supported: the route is not accepted
//!   (`UnsupportedValue`); the mesh's routes take an ExtensionRef to an `HTTPFault`
//!   (see [`mesh`]).
//! - BackendTLSPolicy: TLS to the Services it targets, verified for its hostname against
//!   its CA ConfigMaps (`ca.crt`) or the system's roots (`wellKnownCACertificates:
//!   System`).
//! - Routes whose parent is a Service (GAMMA) are the mesh's: see [`mesh`].

pub mod mesh;
pub mod services;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde_json::{Value, json};

use self::types::*;
use crate::build::{Builder, PortKind};
use crate::config::{
    Action, BackendProtocol, BackendTls, Cors, Forward, HeaderEdits, HeaderMatch, HostMatch,
    Mirror, PathMatch, PathRewrite, QueryMatch, Redirect, Retry, Rewrite, Route, RouteMatch,
    RouteName, SniRoute, StringMatch, Template, WeightedBackend,
};
use crate::status::{Condition, Kind, Update, conditions};
use crate::world::{Obj, PortRef, World, host_match};

pub const GROUP: &str = "gateway.networking.k8s.io";
/// The `controllerName` of our GatewayClasses.
pub const CONTROLLER_NAME: &str = "kubewire.io/gateway";

/// The route kinds, in the order they are compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum RouteKind {
    Http,
    Grpc,
    Tls,
    Tcp,
    Udp,
}

impl RouteKind {
    fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tls => "TLSRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Udp => "UDPRoute",
        }
    }
    fn status_kind(self) -> Kind {
        match self {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
            RouteKind::Tls => Kind::TlsRoute,
            RouteKind::Tcp => Kind::TcpRoute,
            RouteKind::Udp => Kind::UdpRoute,
        }
    }
}

/// The route kinds a listener protocol carries.
fn kinds_for(protocol: &str) -> &'static [RouteKind] {
    match protocol {
        "HTTP" | "HTTPS" => &[RouteKind::Http, RouteKind::Grpc],
        "TLS" => &[RouteKind::Tls],
        "TCP" => &[RouteKind::Tcp],
        "UDP" => &[RouteKind::Udp],
        _ => &[],
    }
}

/// A listener as compiled: whether routes may attach, and its status so far.
struct ListenerState {
    gateway: usize,
    name: String,
    port: u16,
    /// Where the pods bind this listener's port (see [`services`]); 0 when none is free.
    bind: u16,
    protocol: String,
    hostname: HostMatch,
    port_kind: Option<PortKind>,
    kinds: Vec<RouteKind>,
    allowed: Option<AllowedRoutes>,
    gateway_ns: String,
    accepted: Condition,
    resolved: Condition,
    conflicted: Condition,
    attached: BTreeSet<(RouteKind, String, String)>,
}

impl ListenerState {
    fn usable(&self) -> bool {
        self.accepted.status && !self.conflicted.status && self.port_kind.is_some()
    }
}

/// Is a reference from `(from_kind, from_ns)` to `(to_group, to_kind, to_ns, to_name)`
/// allowed: same namespace, or a ReferenceGrant in the target's namespace says so.
fn granted(
    world: &World,
    from_kind: &str,
    from_ns: &str,
    to_group: &str,
    to_kind: &str,
    to_ns: &str,
    to_name: &str,
) -> bool {
    from_ns == to_ns
        || world.reference_grants.iter().any(|g| {
            g.namespace() == to_ns
                && g.spec.as_ref().is_ok_and(|s| {
                    s.from
                        .iter()
                        .any(|f| f.group == GROUP && f.kind == from_kind && f.namespace == from_ns)
                        && s.to.iter().any(|t| {
                            t.group == to_group
                                && t.kind == to_kind
                                && t.name.as_deref().is_none_or(|n| n == to_name)
                        })
                })
        })
}

/// Why a backend reference does not resolve, as the route's `ResolvedRefs` reason.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RefError {
    reason: &'static str,
    message: String,
}

/// The compile's state across kinds.
struct Ctx<'w> {
    world: &'w World,
    listeners: Vec<ListenerState>,
    /// BackendTLSPolicies used, by index, with the Gateways (namespace, name) they served.
    policies_used: BTreeMap<usize, BTreeSet<(String, String)>>,
    /// The BackendTLSPolicies the route being compiled uses.
    current_policies: BTreeSet<usize>,
    /// Whether the routes are the mesh's (Service parents): `HTTPFault` filters then.
    mesh: bool,
}

/// Adds every Gateway API object of ours to `b`, and their statuses; returns the Service
/// each Gateway should have.
pub(crate) fn compile(
    world: &World,
    b: &mut Builder,
    statuses: &mut Vec<Update>,
) -> Vec<services::GatewayService> {
    let classes: BTreeSet<&str> = world
        .gateway_classes
        .iter()
        .filter(|c| {
            c.spec
                .as_ref()
                .is_ok_and(|s| s.controller_name == world.settings.controller_name)
        })
        .map(|c| {
            statuses.push(Update {
                kind: Kind::GatewayClass,
                namespace: String::new(),
                name: c.name().into(),
                status: json!({"conditions": conditions(&[Condition::new(
                    "Accepted", true, "Accepted", "served by kubewire's gateway", c.generation())])}),
            });
            c.name()
        })
        .collect();
    let gateways: Vec<&Obj<GatewaySpec>> = {
        let mut g: Vec<_> = world
            .gateways
            .iter()
            .filter(|g| {
                g.spec
                    .as_ref()
                    .is_ok_and(|s| classes.contains(s.gateway_class_name.as_str()))
            })
            .collect();
        g.sort_by_key(|g| age(&g.meta));
        g
    };
    let mut ctx = Ctx {
        world,
        listeners: Vec::new(),
        policies_used: BTreeMap::new(),
        current_policies: BTreeSet::new(),
        mesh: false,
    };
    let plan = services::plan(world, &gateways);
    for (gi, gw) in gateways.iter().enumerate() {
        listeners(&mut ctx, b, gi, gw, &plan[gi]);
    }

    let mut http: Vec<Ranked> = Vec::new();
    for route in &world.http_routes {
        let Ok(spec) = &route.spec else { continue };
        ctx.current_policies.clear();
        let mut problem = None;
        let ranked = http_route(&mut ctx, route, spec, &mut problem);
        let attached = attach(
            &mut ctx,
            &gateways,
            RouteKind::Http,
            &route.meta,
            &spec.parent_refs,
            &spec.hostnames,
            ranked.as_ref().err(),
            problem.as_ref(),
            statuses,
        );
        place(&mut http, ranked, attached);
    }
    for route in &world.grpc_routes {
        let Ok(spec) = &route.spec else { continue };
        ctx.current_policies.clear();
        let mut problem = None;
        let ranked = grpc_route(&mut ctx, route, spec, &mut problem);
        let attached = attach(
            &mut ctx,
            &gateways,
            RouteKind::Grpc,
            &route.meta,
            &spec.parent_refs,
            &spec.hostnames,
            ranked.as_ref().err(),
            problem.as_ref(),
            statuses,
        );
        place(&mut http, ranked, attached);
    }
    http.sort_by(|a, b| a.key.cmp(&b.key));
    for r in http {
        let l = &ctx.listeners[r.listener];
        if let Some(kind) = l.port_kind {
            b.routes(l.bind, kind, Some(l.hostname.clone()), r.host, [r.route]);
        }
    }

    for route in &world.tls_routes {
        let Ok(spec) = &route.spec else { continue };
        ctx.current_policies.clear();
        let (backends, problem) =
            l4_backends(&mut ctx, RouteKind::Tls, route.namespace(), &spec.rules);
        let attached = attach(
            &mut ctx,
            &gateways,
            RouteKind::Tls,
            &route.meta,
            &spec.parent_refs,
            &spec.hostnames,
            None,
            problem.as_ref(),
            statuses,
        );
        {
            for (li, hosts) in attached {
                let port = ctx.listeners[li].bind;
                b.passthrough(
                    port,
                    SniRoute {
                        name: RouteName {
                            kind: "TLSRoute",
                            namespace: route.namespace().into(),
                            name: route.name().into(),
                            rule: 0,
                        },
                        hostnames: hosts,
                        backends: backends.clone(),
                    },
                );
            }
        }
    }
    for (kind, routes) in [
        (RouteKind::Tcp, &world.tcp_routes),
        (RouteKind::Udp, &world.udp_routes),
    ] {
        for route in routes {
            let Ok(spec) = &route.spec else { continue };
            ctx.current_policies.clear();
            let (backends, problem) = l4_backends(&mut ctx, kind, route.namespace(), &spec.rules);
            let attached = attach(
                &mut ctx,
                &gateways,
                kind,
                &route.meta,
                &spec.parent_refs,
                &[],
                None,
                problem.as_ref(),
                statuses,
            );
            {
                for (li, _) in attached {
                    let l = &ctx.listeners[li];
                    let pk = if kind == RouteKind::Tcp {
                        PortKind::Tcp
                    } else {
                        PortKind::Udp
                    };
                    b.l4(l.bind, pk, backends.clone());
                }
            }
        }
    }

    gateway_statuses(&ctx, &gateways, &plan, statuses);
    policy_statuses(&ctx, statuses);
    plan
}

fn age(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    (
        meta.creation_timestamp.as_ref().map(|t| t.0),
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Validates a Gateway's listeners and opens their ports.
fn listeners(
    ctx: &mut Ctx<'_>,
    b: &mut Builder,
    gi: usize,
    gw: &Obj<GatewaySpec>,
    service: &services::GatewayService,
) {
    let Ok(spec) = &gw.spec else { return };
    let generation = gw.generation();
    let ns = gw.namespace().to_string();
    let cond = |t, s, r: &str, m: &str| Condition::new(t, s, r, m, generation);
    let first = ctx.listeners.len();
    for l in &spec.listeners {
        let hostname = host_match(l.hostname.as_deref().unwrap_or(""), false);
        let port = u16::try_from(l.port).unwrap_or(0);
        let bind = service
            .ports
            .iter()
            .find(|(key, _)| *key == (port, l.protocol == "UDP"))
            .map_or(0, |(_, bind)| *bind);
        let mut st = ListenerState {
            gateway: gi,
            name: l.name.clone(),
            port,
            bind,
            protocol: l.protocol.clone(),
            hostname,
            port_kind: None,
            kinds: Vec::new(),
            allowed: l.allowed_routes.clone(),
            gateway_ns: ns.clone(),
            accepted: cond("Accepted", true, "Accepted", ""),
            resolved: cond("ResolvedRefs", true, "ResolvedRefs", ""),
            conflicted: cond("Conflicted", false, "NoConflicts", ""),
            attached: BTreeSet::new(),
        };
        let supported = kinds_for(&l.protocol);
        // allowedRoutes.kinds, or every kind the protocol carries.
        match l
            .allowed_routes
            .as_ref()
            .map(|a| &a.kinds)
            .filter(|k| !k.is_empty())
        {
            None => st.kinds = supported.to_vec(),
            Some(kinds) => {
                for k in kinds {
                    let found = supported.iter().find(|s| {
                        s.name() == k.kind && k.group.as_deref().unwrap_or(GROUP) == GROUP
                    });
                    match found {
                        Some(s) => st.kinds.push(*s),
                        None => {
                            st.resolved = cond(
                                "ResolvedRefs",
                                false,
                                "InvalidRouteKinds",
                                &format!("{} is not a route kind of {}", k.kind, l.protocol),
                            )
                        }
                    }
                }
            }
        }
        let tls_mode = l
            .tls
            .as_ref()
            .and_then(|t| t.mode.as_deref())
            .unwrap_or("Terminate");
        let wanted = match (l.protocol.as_str(), tls_mode) {
            ("HTTP", _) => Some(PortKind::Http),
            ("HTTPS", "Terminate") => Some(PortKind::Tls),
            ("TLS", "Passthrough") => Some(PortKind::Tls),
            ("TCP", _) => Some(PortKind::Tcp),
            ("UDP", _) => Some(PortKind::Udp),
            ("HTTPS", _) | ("TLS", _) => {
                st.accepted = cond(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    &format!("{} with TLS mode {tls_mode} is not supported", l.protocol),
                );
                None
            }
            (p, _) => {
                st.accepted = cond(
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    &format!("protocol {p} is not supported"),
                );
                None
            }
        };
        if st.port == 0 {
            st.accepted = cond("Accepted", false, "PortUnavailable", "port must be 1-65535");
        } else if st.bind == 0 && st.accepted.status {
            st.accepted = cond(
                "Accepted",
                false,
                "PortUnavailable",
                "every port the gateway's pods bind Gateway listeners to is in use",
            );
        }
        if invalid_parameters(spec) {
            st.accepted = cond(
                "Accepted",
                false,
                "Pending",
                "the Gateway is not accepted: its infrastructure.parametersRef is not supported",
            );
        }
        // Within a Gateway: one protocol per port, distinct hostnames on it.
        for other in &ctx.listeners[first..] {
            // Listeners already refused claim nothing: the earlier valid one wins.
            if other.port != st.port || other.port_kind.is_none() {
                continue;
            }
            let same_kind = other.port_kind == wanted;
            let clash = if !same_kind || other.protocol != st.protocol {
                Some("ProtocolConflict")
            } else if other.hostname == st.hostname {
                Some("HostnameConflict")
            } else {
                None
            };
            if let Some(reason) = clash {
                st.conflicted = cond(
                    "Conflicted",
                    true,
                    reason,
                    &format!("listener {} uses port {} too", other.name, st.port),
                );
            }
        }
        if let Some(kind) = wanted.filter(|_| st.accepted.status && !st.conflicted.status) {
            if b.open(st.bind, st.port, kind) {
                st.port_kind = Some(kind);
            } else {
                st.conflicted = cond(
                    "Conflicted",
                    true,
                    "ProtocolConflict",
                    &format!("port {} serves another protocol", st.port),
                );
            }
        }
        if l.protocol == "HTTPS" && st.port_kind.is_some() {
            let hosts = match &st.hostname {
                HostMatch::Any => vec![],
                h => vec![h.clone()],
            };
            let refs = l
                .tls
                .as_ref()
                .map(|t| t.certificate_refs.as_slice())
                .unwrap_or(&[]);
            for r in refs {
                let target_ns = r.namespace.clone().unwrap_or_else(|| ns.clone());
                let problem = if !r.group.as_deref().unwrap_or("").is_empty()
                    || r.kind.as_deref().unwrap_or("Secret") != "Secret"
                {
                    Some(("InvalidCertificateRef", format!("{}: not a Secret", r.name)))
                } else if !granted(ctx.world, "Gateway", &ns, "", "Secret", &target_ns, &r.name) {
                    Some((
                        "RefNotPermitted",
                        format!("Secret {target_ns}/{}: no ReferenceGrant allows it", r.name),
                    ))
                } else {
                    match ctx.world.certificate(&target_ns, &r.name, hosts.clone()) {
                        Ok(cert) => {
                            b.certificate(st.bind, cert);
                            None
                        }
                        Err(_) => Some((
                            "InvalidCertificateRef",
                            format!(
                                "Secret {target_ns}/{}: not found or not kubernetes.io/tls",
                                r.name
                            ),
                        )),
                    }
                };
                if let Some((reason, msg)) = problem {
                    st.resolved = cond("ResolvedRefs", false, reason, &msg);
                }
            }
            if refs.is_empty() {
                st.resolved = cond(
                    "ResolvedRefs",
                    false,
                    "InvalidCertificateRef",
                    "an HTTPS listener needs certificateRefs",
                );
            }
        }
        ctx.listeners.push(st);
    }
}

/// One HTTP route (a rule's match) with its precedence key.
#[derive(Clone)]
struct Ranked {
    key: RankKey,
    listener: usize,
    host: HostMatch,
    route: Route,
}

/// Sorts ascending into the specification's order.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RankKey {
    /// 0 Exact, 1 PathPrefix, 2 RegularExpression.
    path_class: u8,
    /// Longer first.
    neg_path_len: isize,
    no_method: bool,
    neg_headers: isize,
    neg_query: isize,
    age: (Option<k8s_openapi::jiff::Timestamp>, String, String),
    kind: RouteKind,
    rule: usize,
    matched: usize,
}

/// Why a route cannot be accepted at all.
#[derive(Clone, Debug)]
struct RouteProblem {
    reason: &'static str,
    message: String,
}

/// Resolved backendRefs of a rule, and the first reference problem.
fn backends(
    ctx: &mut Ctx<'_>,
    kind: RouteKind,
    ns: &str,
    refs: &[BackendRef],
    protocol: Option<BackendProtocol>,
) -> (Vec<WeightedBackend>, Option<RefError>) {
    let mut out = Vec::new();
    let mut problem = None;
    for r in refs {
        let weight = r.weight.unwrap_or(1);
        match resolve(ctx, kind, ns, &r.object_ref()) {
            Ok(mut b) => {
                if let Some(p) = protocol
                    && b.protocol != p
                {
                    Arc::make_mut(&mut b).protocol = p;
                }
                out.push(WeightedBackend {
                    weight,
                    backend: Some(b),
                });
            }
            Err(e) => {
                problem.get_or_insert(e);
                out.push(WeightedBackend {
                    weight,
                    backend: None,
                });
            }
        }
    }
    (out, problem)
}

/// A Service reference as a backend, with its BackendTLSPolicy.
fn resolve(
    ctx: &mut Ctx<'_>,
    kind: RouteKind,
    ns: &str,
    r: &ObjectRef,
) -> Result<Arc<crate::config::Backend>, RefError> {
    if !r.group.as_deref().unwrap_or("").is_empty()
        || r.kind.as_deref().unwrap_or("Service") != "Service"
    {
        return Err(RefError {
            reason: "InvalidKind",
            message: format!(
                "{}/{} {}: only Services are supported",
                r.group.as_deref().unwrap_or(""),
                r.kind.as_deref().unwrap_or(""),
                r.name
            ),
        });
    }
    let target_ns = r.namespace.clone().unwrap_or_else(|| ns.to_string());
    if !granted(
        ctx.world,
        kind.name(),
        ns,
        "",
        "Service",
        &target_ns,
        &r.name,
    ) {
        return Err(RefError {
            reason: "RefNotPermitted",
            message: format!(
                "Service {target_ns}/{}: no ReferenceGrant allows it",
                r.name
            ),
        });
    }
    let Some(port) = r.port else {
        return Err(RefError {
            reason: "BackendNotFound",
            message: format!("Service {target_ns}/{}: port is required", r.name),
        });
    };
    let mut backend = ctx
        .world
        .backend(&target_ns, &r.name, PortRef::Number(port))
        .map_err(|e| RefError {
            reason: "BackendNotFound",
            message: format!("Service {target_ns}/{} port {port}: {e}", r.name),
        })?;
    if let Some(tls) = backend_tls(ctx, &target_ns, &r.name, port)? {
        Arc::make_mut(&mut backend).tls = Some(tls);
    }
    Ok(backend)
}

/// The BackendTLSPolicy for a Service port (the oldest targeting it).
fn backend_tls(
    ctx: &mut Ctx<'_>,
    ns: &str,
    service: &str,
    port: i32,
) -> Result<Option<BackendTls>, RefError> {
    let world = ctx.world;
    let port_name = world
        .service(ns, service)
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| ps.iter().find(|p| p.port == port))
        .and_then(|p| p.name.clone());
    let mut candidates: Vec<(usize, &Obj<BackendTlsPolicySpec>)> = world
        .backend_tls_policies
        .iter()
        .enumerate()
        .filter(|(_, p)| {
            p.namespace() == ns
                && p.spec.as_ref().is_ok_and(|s| {
                    s.target_refs.iter().any(|t| {
                        t.group.as_deref().unwrap_or("").is_empty()
                            && t.kind.as_deref().unwrap_or("Service") == "Service"
                            && t.name == service
                            && t.section_name
                                .as_ref()
                                .is_none_or(|sn| Some(sn) == port_name.as_ref())
                    })
                })
        })
        .collect();
    candidates.sort_by_key(|(_, p)| age(&p.meta));
    let Some((index, policy)) = candidates.first() else {
        return Ok(None);
    };
    ctx.current_policies.insert(*index);
    let Ok(spec) = &policy.spec else {
        return Ok(None);
    };
    let mut ca_pem: Vec<Arc<[u8]>> = Vec::new();
    for r in &spec.validation.ca_certificate_refs {
        let cm = (r.kind.as_deref() == Some("ConfigMap") || r.kind.is_none())
            .then(|| world.config_maps.get(&(ns.to_string(), r.name.clone())))
            .flatten()
            .and_then(|cm| cm.data.as_ref())
            .and_then(|d| d.get("ca.crt"));
        match cm {
            Some(pem) => ca_pem.push(Arc::from(pem.as_bytes())),
            None => {
                return Err(RefError {
                    reason: "InvalidCACertificateRef",
                    message: format!(
                        "BackendTLSPolicy {ns}/{}: ConfigMap {} with ca.crt not found",
                        policy.name(),
                        r.name
                    ),
                });
            }
        }
    }
    Ok(Some(BackendTls {
        hostname: spec.validation.hostname.clone(),
        ca_pem,
    }))
}

fn header_edits(m: &HeaderModifier) -> Result<HeaderEdits, RouteProblem> {
    let name = |n: &str| {
        HeaderName::try_from(n).map_err(|_| RouteProblem {
            reason: "UnsupportedValue",
            message: format!("{n:?} is not a header name"),
        })
    };
    Ok(HeaderEdits {
        remove: m.remove.iter().map(|n| name(n)).collect::<Result<_, _>>()?,
        set: m
            .set
            .iter()
            .map(|h| Ok((name(&h.name)?, Template::literal(h.value.clone()))))
            .collect::<Result<_, _>>()?,
        add: m
            .add
            .iter()
            .map(|h| Ok((name(&h.name)?, Template::literal(h.value.clone()))))
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(p: &PathModifier, matched_prefix: Option<&str>) -> Option<PathRewrite> {
    match p.type_.as_str() {
        "ReplaceFullPath" => p.replace_full_path.clone().map(PathRewrite::Full),
        "ReplacePrefixMatch" => Some(PathRewrite::ReplacePrefix {
            prefix: matched_prefix.unwrap_or("/").to_string(),
            replacement: p.replace_prefix_match.clone().unwrap_or_else(|| "/".into()),
        }),
        _ => None,
    }
}

fn duration(field: &str, d: Option<&str>) -> Result<Option<Duration>, RouteProblem> {
    match d {
        None => Ok(None),
        Some(s) => match k8s::parse_duration(s) {
            Ok(d) if d.is_zero() => Ok(None),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(RouteProblem {
                reason: "UnsupportedValue",
                message: format!("{field}: {e}"),
            }),
        },
    }
}

/// A rule's filters and backends as an action for a match whose path prefix is
/// `matched_prefix`. Reference problems are returned beside (the rule still routes).
#[allow(clippy::too_many_arguments)]
fn rule_action(
    ctx: &mut Ctx<'_>,
    kind: RouteKind,
    ns: &str,
    filters: &[HttpRouteFilter],
    refs: &[BackendRef],
    timeouts: Option<&Timeouts>,
    retry: Option<&RouteRetry>,
    matched_prefix: Option<&str>,
    problems: &mut Option<RefError>,
) -> Result<Action, RouteProblem> {
    let mut f = Forward::default();
    let protocol = (kind == RouteKind::Grpc).then_some(BackendProtocol::H2c);
    // Filters on backendRefs: served when every backendRef of the rule has the same
    // header-modifier filters and the rule has none of those types itself, since they
    // then act as the rule's own, after its other filters. Anything else would need
    // per-backend filters in the data plane.
    let folded: Vec<HttpRouteFilter>;
    let filters = match refs.first() {
        Some(first) if refs.iter().any(|r| !r.filters.is_empty()) => {
            let header_only = first.filters.iter().all(|b| {
                matches!(
                    b.type_.as_str(),
                    "RequestHeaderModifier" | "ResponseHeaderModifier"
                ) && !filters.iter().any(|r| r.type_ == b.type_)
            });
            if !header_only || refs.iter().any(|r| r.filters != first.filters) {
                return Err(RouteProblem {
                    reason: "UnsupportedValue",
                    message: "filters on a backendRef are supported only as the same \
                              RequestHeaderModifier/ResponseHeaderModifier on every backendRef \
                              of the rule, of a type the rule itself does not have"
                        .into(),
                });
            }
            folded = filters.iter().chain(&first.filters).cloned().collect();
            &folded[..]
        }
        _ => filters,
    };
    for filter in filters {
        match filter.type_.as_str() {
            "RequestHeaderModifier" => {
                if let Some(m) = &filter.request_header_modifier {
                    f.request_headers = header_edits(m)?;
                }
            }
            "ResponseHeaderModifier" => {
                if let Some(m) = &filter.response_header_modifier {
                    f.response_headers = header_edits(m)?;
                }
            }
            "RequestRedirect" if kind == RouteKind::Http => {
                let r = filter.request_redirect.clone().unwrap_or_default();
                return Ok(Action::Redirect(Redirect {
                    scheme: r.scheme.clone(),
                    hostname: r.hostname.clone(),
                    port: r.port.and_then(|p| u16::try_from(p).ok()),
                    path: r
                        .path
                        .as_ref()
                        .and_then(|p| path_modifier(p, matched_prefix)),
                    status: StatusCode::from_u16(r.status_code.unwrap_or(302))
                        .unwrap_or(StatusCode::FOUND),
                }));
            }
            "URLRewrite" if kind == RouteKind::Http => {
                if let Some(u) = &filter.url_rewrite {
                    f.rewrite = Rewrite {
                        hostname: u.hostname.clone(),
                        path: u
                            .path
                            .as_ref()
                            .and_then(|p| path_modifier(p, matched_prefix)),
                    };
                }
            }
            "RequestMirror" => {
                if let Some(m) = &filter.request_mirror {
                    let percent = match (&m.fraction, m.percent) {
                        (Some(fr), _) => {
                            f64::from(fr.numerator) * 100.0
                                / f64::from(fr.denominator.unwrap_or(100).max(1))
                        }
                        (None, Some(p)) => f64::from(p),
                        (None, None) => 100.0,
                    };
                    match resolve(ctx, kind, ns, &m.backend_ref) {
                        Ok(mut backend) => {
                            if let Some(p) = protocol
                                && backend.protocol != p
                            {
                                Arc::make_mut(&mut backend).protocol = p;
                            }
                            f.mirrors.push(Mirror { backend, percent });
                        }
                        Err(e) => {
                            problems.get_or_insert(e);
                        }
                    }
                }
            }
            "CORS" if kind == RouteKind::Http => {
                if let Some(c) = &filter.cors {
                    f.cors = Some(Cors {
                        allow_origins: c.allow_origins.clone(),
                        allow_methods: c.allow_methods.clone(),
                        allow_headers: c.allow_headers.clone(),
                        expose_headers: c.expose_headers.clone(),
                        allow_credentials: c.allow_credentials.unwrap_or(false),
                        max_age: Some(Duration::from_secs(c.max_age.unwrap_or(5))),
                    });
                }
            }
            "ExtensionRef"
                if ctx.mesh
                    && filter.extension_ref.as_ref().is_some_and(|e| {
                        e.group == mesh::FAULT_GROUP && e.kind == mesh::FAULT_KIND
                    }) =>
            {
                let name = filter.extension_ref.as_ref().map(|e| e.name.as_str());
                match mesh::fault(ctx.world, ns, name.unwrap_or_default()) {
                    Some(fault) => f.fault = Some(fault),
                    // Gateway API: a custom filter that cannot be resolved is not
                    // skipped; the requests it would have seen get 500.
                    None => return Ok(Action::Respond(StatusCode::INTERNAL_SERVER_ERROR)),
                }
            }
            other => {
                return Err(RouteProblem {
                    reason: "UnsupportedValue",
                    message: format!("filter {other} is not supported"),
                });
            }
        }
    }
    let (backends, problem) = backends(ctx, kind, ns, refs, protocol);
    if let Some(p) = problem {
        problems.get_or_insert(p);
    }
    if backends.is_empty() {
        return Ok(Action::Respond(StatusCode::INTERNAL_SERVER_ERROR));
    }
    f.backends = backends;
    if let Some(t) = timeouts {
        f.request_timeout = duration("timeouts.request", t.request.as_deref())?;
        f.backend_timeout = duration("timeouts.backendRequest", t.backend_request.as_deref())?;
    }
    if let Some(r) = retry {
        f.retry = Some(Retry {
            attempts: r.attempts.unwrap_or(1),
            statuses: r
                .codes
                .iter()
                .filter_map(|c| StatusCode::from_u16(*c).ok())
                .collect(),
            backoff: duration("retry.backoff", r.backoff.as_deref())?,
        });
    }
    Ok(Action::Forward(Box::new(f)))
}

fn string_match(m: &ValueMatch) -> StringMatch {
    match m.type_.as_deref() {
        Some("RegularExpression") => StringMatch::Regex(m.value.clone()),
        _ => StringMatch::Exact(m.value.clone()),
    }
}

fn header_matches(list: &[ValueMatch]) -> Result<Vec<HeaderMatch>, RouteProblem> {
    list.iter()
        .map(|h| {
            Ok(HeaderMatch {
                name: HeaderName::try_from(h.name.as_str()).map_err(|_| RouteProblem {
                    reason: "UnsupportedValue",
                    message: format!("{:?} is not a header name", h.name),
                })?,
                value: string_match(h),
            })
        })
        .collect()
}

/// An HTTPRoute's rules as ranked routes (host and listener filled in on attach).
fn http_route(
    ctx: &mut Ctx<'_>,
    route: &Obj<HttpRouteSpec>,
    spec: &HttpRouteSpec,
    problems: &mut Option<RefError>,
) -> Result<Vec<Ranked>, RouteProblem> {
    let ns = route.namespace();
    let mut out = Vec::new();
    for (ri, rule) in spec.rules.iter().enumerate() {
        let default = [HttpRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default[..]
        } else {
            &rule.matches
        };
        for (mi, m) in matches.iter().enumerate() {
            let p = m.path.clone().unwrap_or_default();
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let (path, class) = match p.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" => (PathMatch::Exact(value.clone()), 0),
                "PathPrefix" => (PathMatch::Prefix(value.clone()), 1),
                "RegularExpression" => (PathMatch::Regex(value.clone()), 2),
                other => {
                    return Err(RouteProblem {
                        reason: "UnsupportedValue",
                        message: format!("path match type {other} is not supported"),
                    });
                }
            };
            let method = match &m.method {
                Some(s) => Some(Method::from_bytes(s.as_bytes()).map_err(|_| RouteProblem {
                    reason: "UnsupportedValue",
                    message: format!("{s:?} is not a method"),
                })?),
                None => None,
            };
            let headers = header_matches(&m.headers)?;
            let query: Vec<QueryMatch> = m
                .query_params
                .iter()
                .map(|q| QueryMatch {
                    name: q.name.clone(),
                    value: string_match(q),
                })
                .collect();
            let prefix = (class == 1).then_some(value.as_str());
            let action = rule_action(
                ctx,
                RouteKind::Http,
                ns,
                &rule.filters,
                &rule.backend_refs,
                rule.timeouts.as_ref(),
                rule.retry.as_ref(),
                prefix,
                problems,
            )?;
            out.push(Ranked {
                key: RankKey {
                    path_class: class,
                    neg_path_len: -(value.trim_end_matches('/').len() as isize),
                    no_method: method.is_none(),
                    neg_headers: -(headers.len() as isize),
                    neg_query: -(query.len() as isize),
                    age: age(&route.meta),
                    kind: RouteKind::Http,
                    rule: ri,
                    matched: mi,
                },
                listener: 0,
                host: HostMatch::Any,
                route: Route {
                    name: RouteName {
                        kind: "HTTPRoute",
                        namespace: ns.into(),
                        name: route.name().into(),
                        rule: ri,
                    },
                    matches: RouteMatch {
                        path,
                        method,
                        headers,
                        query,
                    },
                    action,
                },
            });
        }
    }
    Ok(out)
}

/// A GRPCRoute's rules as ranked routes: matches become paths (`/service/method`).
fn grpc_route(
    ctx: &mut Ctx<'_>,
    route: &Obj<GrpcRouteSpec>,
    spec: &GrpcRouteSpec,
    problems: &mut Option<RefError>,
) -> Result<Vec<Ranked>, RouteProblem> {
    let ns = route.namespace();
    let mut out = Vec::new();
    for (ri, rule) in spec.rules.iter().enumerate() {
        let default = [GrpcRouteMatch::default()];
        let matches = if rule.matches.is_empty() {
            &default[..]
        } else {
            &rule.matches
        };
        for (mi, m) in matches.iter().enumerate() {
            let (path, class, len) = grpc_method_path(m.method.as_ref());
            let headers = header_matches(&m.headers)?;
            let action = rule_action(
                ctx,
                RouteKind::Grpc,
                ns,
                &rule.filters,
                &rule.backend_refs,
                None,
                None,
                None,
                problems,
            )?;
            out.push(Ranked {
                key: RankKey {
                    path_class: class,
                    neg_path_len: -(len as isize),
                    no_method: false,
                    neg_headers: -(headers.len() as isize),
                    neg_query: 0,
                    age: age(&route.meta),
                    kind: RouteKind::Grpc,
                    rule: ri,
                    matched: mi,
                },
                listener: 0,
                host: HostMatch::Any,
                route: Route {
                    name: RouteName {
                        kind: "GRPCRoute",
                        namespace: ns.into(),
                        name: route.name().into(),
                        rule: ri,
                    },
                    matches: RouteMatch {
                        path,
                        method: Some(Method::POST),
                        headers,
                        query: vec![],
                    },
                    action,
                },
            });
        }
    }
    Ok(out)
}

/// A GRPCRoute's method match as a match of the request's path (`/SERVICE/METHOD`), with
/// its precedence class (0 exact, 1 prefix, 2 regular expression) and the length that
/// ranks it within the class. The mesh's inbound policy matches GRPCRoutes the same way.
pub fn grpc_method_path(m: Option<&GrpcMethodMatch>) -> (PathMatch, u8, usize) {
    let Some(mm) = m else {
        return (PathMatch::Prefix("/".into()), 1, 0);
    };
    let regex = mm.type_.as_deref() == Some("RegularExpression");
    match (mm.service.as_deref(), mm.method.as_deref(), regex) {
        (Some(s), Some(me), false) => {
            let p = format!("/{s}/{me}");
            let n = p.len();
            (PathMatch::Exact(p), 0, n)
        }
        (Some(s), None, false) => {
            let p = format!("/{s}/");
            let n = p.len();
            (PathMatch::StringPrefix(p), 1, n)
        }
        (None, Some(me), false) => (
            PathMatch::Regex(format!("/[^/]+/{}", regex_escape(me))),
            2,
            me.len(),
        ),
        (s, me, _) => (
            PathMatch::Regex(format!(
                "/{}/{}",
                s.unwrap_or("[^/]+"),
                me.unwrap_or("[^/]+")
            )),
            2,
            0,
        ),
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// TLS/TCP/UDP backends, every rule's.
fn l4_backends(
    ctx: &mut Ctx<'_>,
    kind: RouteKind,
    ns: &str,
    rules: &[L4Rule],
) -> (Vec<WeightedBackend>, Option<RefError>) {
    let refs: Vec<BackendRef> = rules.iter().flat_map(|r| r.backend_refs.clone()).collect();
    backends(ctx, kind, ns, &refs, None)
}

/// A route's ranked matches, once per listener and hostname it attached to.
fn place(
    out: &mut Vec<Ranked>,
    ranked: Result<Vec<Ranked>, RouteProblem>,
    attached: Vec<(usize, Vec<HostMatch>)>,
) {
    let Ok(ranked) = ranked else { return };
    for (li, hosts) in attached {
        for host in hosts {
            for r in &ranked {
                let mut r = r.clone();
                r.listener = li;
                r.host = host.clone();
                out.push(r);
            }
        }
    }
}

/// The hostnames a route serves on a listener: the intersection of the listener's
/// hostname and the route's (Gateway API wildcards: one or more labels).
fn intersect(listener: &HostMatch, route: &[String]) -> Vec<HostMatch> {
    if route.is_empty() {
        return vec![listener.clone()];
    }
    let mut out = Vec::new();
    for h in route {
        let h = host_match(h, false);
        let hit = match (listener, &h) {
            (HostMatch::Any, h) => Some(h.clone()),
            (l, HostMatch::Any) => Some(l.clone()),
            (HostMatch::Exact(l), HostMatch::Exact(r)) => (l == r).then(|| h.clone()),
            (HostMatch::Wildcard { suffix, .. }, HostMatch::Exact(r)) => {
                (r.len() > suffix.len() && r.ends_with(suffix.as_str())).then(|| h.clone())
            }
            (HostMatch::Exact(l), HostMatch::Wildcard { suffix, .. }) => {
                (l.len() > suffix.len() && l.ends_with(suffix.as_str())).then(|| listener.clone())
            }
            (HostMatch::Wildcard { suffix: ls, .. }, HostMatch::Wildcard { suffix: rs, .. }) => {
                if rs.ends_with(ls.as_str()) {
                    Some(h.clone())
                } else if ls.ends_with(rs.as_str()) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
        };
        if let Some(x) = hit
            && !out.contains(&x)
        {
            out.push(x);
        }
    }
    out
}

/// Attaches a route to the listeners its parentRefs name, writes its status, and returns
/// the listeners (by index) with the hostnames it serves on each.
#[allow(clippy::too_many_arguments)]
fn attach(
    ctx: &mut Ctx<'_>,
    gateways: &[&Obj<GatewaySpec>],
    kind: RouteKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    parents: &[ParentReference],
    hostnames: &[String],
    refused: Option<&RouteProblem>,
    problem: Option<&RefError>,
    statuses: &mut Vec<Update>,
) -> Vec<(usize, Vec<HostMatch>)> {
    let ns = meta.namespace.as_deref().unwrap_or("");
    let name = meta.name.as_deref().unwrap_or("");
    let generation = meta.generation.unwrap_or(0);
    let mut out = Vec::new();
    let mut parent_statuses = Vec::new();
    for pr in parents {
        if pr.group.as_deref().unwrap_or(GROUP) != GROUP
            || pr.kind.as_deref().unwrap_or("Gateway") != "Gateway"
        {
            continue;
        }
        let gw_ns = pr.namespace.as_deref().unwrap_or(ns);
        let Some(gi) = gateways
            .iter()
            .position(|g| g.namespace() == gw_ns && g.name() == pr.name)
        else {
            continue; // not a Gateway of ours: its controller writes this parent
        };
        let cond = |t, s, r: &str, m: String| Condition::new(t, s, r, m, generation);
        let mut accepted = cond("Accepted", true, "Accepted", String::new());
        let candidates: Vec<usize> = ctx
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.gateway == gi
                    && pr.section_name.as_ref().is_none_or(|s| *s == l.name)
                    && pr.port.is_none_or(|p| i32::from(l.port) == p)
            })
            .map(|(i, _)| i)
            .collect();
        let mut attached = Vec::new();
        if candidates.is_empty() {
            accepted = cond(
                "Accepted",
                false,
                "NoMatchingParent",
                "no listener matches sectionName/port".into(),
            );
        } else {
            let allowed: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&li| {
                    let l = &ctx.listeners[li];
                    l.usable() && l.kinds.contains(&kind) && namespace_allowed(ctx.world, l, ns)
                })
                .collect();
            if allowed.is_empty() {
                accepted = cond(
                    "Accepted",
                    false,
                    "NotAllowedByListeners",
                    "no listener of the parent allows this route".into(),
                );
            } else {
                for li in allowed {
                    let hosts = if matches!(kind, RouteKind::Tcp | RouteKind::Udp) {
                        vec![HostMatch::Any]
                    } else {
                        intersect(&ctx.listeners[li].hostname, hostnames)
                    };
                    if !hosts.is_empty() {
                        attached.push((li, hosts));
                    }
                }
                if attached.is_empty() {
                    accepted = cond(
                        "Accepted",
                        false,
                        "NoMatchingListenerHostname",
                        "no listener hostname intersects the route's hostnames".into(),
                    );
                }
            }
        }
        if let Some(p) = refused {
            accepted = cond("Accepted", false, p.reason, p.message.clone());
            attached.clear();
        }
        let resolved = match problem {
            Some(p) => cond("ResolvedRefs", false, p.reason, p.message.clone()),
            None => cond("ResolvedRefs", true, "ResolvedRefs", String::new()),
        };
        for (li, _) in &attached {
            ctx.listeners[*li]
                .attached
                .insert((kind, ns.to_string(), name.to_string()));
            let gw = (gw_ns.to_string(), pr.name.clone());
            for p in &ctx.current_policies {
                ctx.policies_used.entry(*p).or_default().insert(gw.clone());
            }
        }
        out.extend(attached);
        // Values built apart are moved in: `json!` would copy them through serde.
        let mut parent = json!({
            "parentRef": pr,
            "controllerName": ctx.world.settings.controller_name,
        });
        parent["conditions"] = conditions(&[accepted, resolved]);
        parent_statuses.push(parent);
    }
    // Also without a parent of ours: a parent it no longer names must leave its status
    // (the writer skips routes that never had one of ours).
    let mut status = json!({});
    status["parents"] = serde_json::Value::Array(parent_statuses);
    statuses.push(Update {
        kind: kind.status_kind(),
        namespace: ns.into(),
        name: name.into(),
        status,
    });
    out
}

fn namespace_allowed(world: &World, l: &ListenerState, route_ns: &str) -> bool {
    let from = l
        .allowed
        .as_ref()
        .and_then(|a| a.namespaces.as_ref())
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same");
    match from {
        "All" => true,
        "Same" => route_ns == l.gateway_ns,
        "Selector" => {
            let selector = l
                .allowed
                .as_ref()
                .and_then(|a| a.namespaces.as_ref())
                .and_then(|n| n.selector.as_ref());
            let labels = world.namespaces.get(route_ns).cloned().unwrap_or_default();
            selector.is_some_and(|s| k8s::labels::selects(s, &labels))
        }
        _ => false,
    }
}

/// A Gateway with `infrastructure.parametersRef` is not accepted (`InvalidParameters`):
/// this gateway supports no parameters kind, so the reference cannot resolve, and Gateway
/// API says such a Gateway should be rejected. Its listeners are not served.
fn invalid_parameters(spec: &GatewaySpec) -> bool {
    spec.infrastructure
        .as_ref()
        .is_some_and(|i| i.parameters_ref.is_some())
}

fn gateway_statuses(
    ctx: &Ctx<'_>,
    gateways: &[&Obj<GatewaySpec>],
    plan: &[services::GatewayService],
    statuses: &mut Vec<Update>,
) {
    for (gi, gw) in gateways.iter().enumerate() {
        let assigned = services::addresses(ctx.world, &plan[gi].name);
        let addresses: Vec<Value> = assigned
            .iter()
            .map(|a| {
                let ty = if a.parse::<std::net::IpAddr>().is_ok() {
                    "IPAddress"
                } else {
                    "Hostname"
                };
                json!({"type": ty, "value": a})
            })
            .collect();
        let generation = gw.generation();
        let mut listeners = Vec::new();
        let mut valid = 0;
        let mut total = 0;
        for l in ctx.listeners.iter().filter(|l| l.gateway == gi) {
            total += 1;
            let ok = l.usable() && l.resolved.status;
            if ok {
                valid += 1;
            }
            let programmed = if ok {
                Condition::new("Programmed", true, "Programmed", "", generation)
            } else {
                Condition::new(
                    "Programmed",
                    false,
                    "Invalid",
                    "the listener is not valid",
                    generation,
                )
            };
            listeners.push(json!({
                "name": l.name,
                "supportedKinds": l.kinds.iter().map(|k| json!({"group": GROUP, "kind": k.name()})).collect::<Vec<_>>(),
                "attachedRoutes": l.attached.len(),
                "conditions": conditions(&[l.accepted.clone(), programmed, l.resolved.clone(), l.conflicted.clone()]),
            }));
        }
        let accepted = if gw.spec.as_ref().is_ok_and(invalid_parameters) {
            Condition::new(
                "Accepted",
                false,
                "InvalidParameters",
                "infrastructure.parametersRef: kubewire's gateway supports no parameters kind",
                generation,
            )
        } else if valid == total {
            Condition::new("Accepted", true, "Accepted", "", generation)
        } else if valid > 0 {
            Condition::new(
                "Accepted",
                true,
                "ListenersNotValid",
                "some listeners are not valid",
                generation,
            )
        } else {
            Condition::new(
                "Accepted",
                false,
                "ListenersNotValid",
                "no listener is valid",
                generation,
            )
        };
        // Requested IPs are asked of the Gateway's Service (`metallb.io/loadBalancerIPs`);
        // one without a value asks for any address of its type (Gateway API lets the
        // implementation assign it): one of the Service's will do.
        let requested_unusable = gw.spec.as_ref().is_ok_and(|s| {
            s.addresses.iter().any(|a| {
                if a.value.is_empty() {
                    let ty = a.type_.as_deref().unwrap_or("IPAddress");
                    !addresses.iter().any(|have| have["type"] == ty)
                } else {
                    !assigned.contains(&a.value)
                }
            })
        });
        // No valid listener is Invalid whatever the address (such a Gateway may have no
        // Service at all: one needs a port).
        let programmed = if valid == 0 {
            Condition::new(
                "Programmed",
                false,
                "Invalid",
                "no listener is valid",
                generation,
            )
        } else if addresses.is_empty() {
            Condition::new(
                "Programmed",
                false,
                "AddressNotAssigned",
                format!(
                    "the Gateway's Service {}/{} has no address yet",
                    ctx.world.settings.service.0, plan[gi].name
                ),
                generation,
            )
        } else if requested_unusable {
            Condition::new(
                "Programmed",
                false,
                "AddressNotUsable",
                "the Gateway's Service was not given the addresses asked for",
                generation,
            )
        } else {
            Condition::new("Programmed", true, "Programmed", "", generation)
        };
        statuses.push(Update {
            kind: Kind::Gateway,
            namespace: gw.namespace().into(),
            name: gw.name().into(),
            status: json!({
                "addresses": addresses,
                "conditions": conditions(&[accepted, programmed]),
                "listeners": listeners,
            }),
        });
    }
}

fn policy_statuses(ctx: &Ctx<'_>, statuses: &mut Vec<Update>) {
    for (index, gateways) in ctx.policies_used.iter() {
        let p = &ctx.world.backend_tls_policies[*index];
        let generation = p.generation();
        let resolved = p.spec.as_ref().is_ok_and(|s| {
            s.validation.ca_certificate_refs.iter().all(|r| {
                ctx.world
                    .config_maps
                    .get(&(p.namespace().to_string(), r.name.clone()))
                    .and_then(|c| c.data.as_ref())
                    .is_some_and(|d| d.contains_key("ca.crt"))
            })
        });
        let resolved = if resolved {
            Condition::new("ResolvedRefs", true, "ResolvedRefs", "", generation)
        } else {
            Condition::new(
                "ResolvedRefs",
                false,
                "InvalidCACertificateRef",
                "a CA ConfigMap with ca.crt is missing",
                generation,
            )
        };
        let accepted = Condition::new(
            "Accepted",
            resolved.status,
            if resolved.status {
                "Accepted"
            } else {
                "NoValidCACertificate"
            },
            "",
            generation,
        );
        statuses.push(Update {
            kind: Kind::BackendTlsPolicy,
            namespace: p.namespace().into(),
            name: p.name().into(),
            status: json!({"ancestors": gateways.iter().map(|(ns, name)| json!({
                "ancestorRef": {"group": GROUP, "kind": "Gateway", "namespace": ns, "name": name},
                "controllerName": ctx.world.settings.controller_name,
                "conditions": conditions(&[accepted.clone(), resolved.clone()]),
            })).collect::<Vec<_>>()}),
        });
    }
}

#[cfg(test)]
mod tests;
