//! Gateway API for service mesh (GAMMA): HTTPRoutes and GRPCRoutes whose `parentRefs`
//! name a Service (`group: ""`, `kind: Service`) route what pods send to that Service.
//! The mesh's proxies compile them with this, so a route means the same at the gateway
//! and in the mesh: the same matches, precedence, filters, weights, timeouts and retries.
//!
//! Which routes a client in namespace `c` gets for a Service in namespace `s`:
//! - the routes in `c` that name the Service (consumer routes), when `c` is not `s` and
//!   there are any;
//! - else the routes in `s` that name it (producer routes).
//!
//! A `parentRef.port` limits a route to that Service port. Route `hostnames` do not
//! apply to a Service parent and are ignored. A route that cannot be accepted (an
//! unsupported filter or value) is left out, as at the gateway.
//!
//! Retries and timeouts are also read from Linkerd's annotations, on the route or else
//! on the Service, so Linkerd users' manifests work unchanged (the standard channel's
//! HTTPRoute has no `retry`): `retry.linkerd.io/http` (`5xx`, `gateway-error`, codes
//! and ranges `500,502-504`), `retry.linkerd.io/limit` (default 1),
//! `retry.linkerd.io/timeout` (each attempt), `timeout.linkerd.io/request` and
//! `timeout.linkerd.io/response`. A route's own `timeouts` win over them. A Service
//! with these annotations and no route is routed as by one route to itself.
//!
//! Faults: a rule's `ExtensionRef` filter to an `HTTPFault` (`mesh.kubewire.io`, in
//! the route's namespace) injects its abort and delay; one that does not resolve
//! answers 500 for the rule, as Gateway API asks of custom filters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use http::StatusCode;

use super::types::ParentReference;
use super::{Ctx, Ranked, RouteKind, grpc_route, http_route};
use crate::config::{
    Action, Forward, PathMatch, Retry, Route, RouteMatch, RouteName, WeightedBackend,
};
use crate::world::{PortRef, World};

/// The group of kubewire's `HTTPFault` (an HTTPRoute filter's `extensionRef`).
pub const FAULT_GROUP: &str = "mesh.kubewire.io";
pub const FAULT_KIND: &str = "HTTPFault";

/// An `HTTPFault`'s spec: Istio's fault injection, as a filter of mesh routes.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct HttpFaultSpec {
    pub abort: Option<FaultAbort>,
    pub delay: Option<FaultDelay>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultAbort {
    pub http_status: u16,
    /// Of the requests, 0-100; all when unset.
    pub percentage: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct FaultDelay {
    /// A duration (`500ms`, `2s`).
    pub fixed_delay: String,
    pub percentage: Option<f64>,
}

/// The `HTTPFault` `namespace/name` as the data plane's fault; `None` when there is no
/// such object or it does not parse.
pub(crate) fn fault(world: &World, namespace: &str, name: &str) -> Option<crate::config::Fault> {
    let obj = world
        .http_faults
        .iter()
        .find(|f| f.namespace() == namespace && f.name() == name)?;
    let spec = obj.spec.as_ref().ok()?;
    let percent = |p: Option<f64>| p.unwrap_or(100.0).clamp(0.0, 100.0);
    let abort = match &spec.abort {
        Some(a) => Some((
            StatusCode::from_u16(a.http_status).ok()?,
            percent(a.percentage),
        )),
        None => None,
    };
    let delay = match &spec.delay {
        Some(d) => Some((
            k8s::parse_duration(&d.fixed_delay).ok()?,
            percent(d.percentage),
        )),
        None => None,
    };
    Some(crate::config::Fault { abort, delay })
}

/// Linkerd's retry and timeout annotations of one object.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkerdPolicy {
    pub retry: Option<Retry>,
    /// Each attempt's (`retry.linkerd.io/timeout`, else `timeout.linkerd.io/response`).
    pub attempt_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

impl LinkerdPolicy {
    /// From an object's annotations; `None` when it has none of them.
    pub fn from_annotations(a: &BTreeMap<String, String>) -> Option<LinkerdPolicy> {
        let get = |k: &str| a.get(k).map(String::as_str);
        let duration = |k: &str| get(k).and_then(|v| k8s::parse_duration(v).ok());
        let statuses = get("retry.linkerd.io/http").map(retryable_statuses);
        let retry = statuses.map(|statuses| Retry {
            attempts: get("retry.linkerd.io/limit")
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(1),
            statuses,
            backoff: None,
        });
        let policy = LinkerdPolicy {
            retry,
            attempt_timeout: duration("retry.linkerd.io/timeout")
                .or_else(|| duration("timeout.linkerd.io/response")),
            request_timeout: duration("timeout.linkerd.io/request"),
        };
        (policy != LinkerdPolicy::default()).then_some(policy)
    }

    fn apply(&self, route: &mut Route) {
        let Action::Forward(fw) = &mut route.action else {
            return;
        };
        if fw.retry.is_none() {
            fw.retry = self.retry.clone();
        }
        fw.request_timeout = fw.request_timeout.or(self.request_timeout);
        fw.backend_timeout = fw.backend_timeout.or(self.attempt_timeout);
    }
}

/// `retry.linkerd.io/http`: `5xx`, `gateway-error`, codes and ranges, comma-separated.
fn retryable_statuses(list: &str) -> Vec<StatusCode> {
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim) {
        let range = match item {
            "5xx" => Some((500, 599)),
            "gateway-error" => Some((502, 504)),
            _ => match item.split_once('-') {
                Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
                None => item.parse().ok().map(|c| (c, c)),
            },
        };
        if let Some((from, to)) = range {
            out.extend((from..=to).filter_map(|c: u16| StatusCode::from_u16(c).ok()));
        }
    }
    out
}

/// Whether `parent` names the Service `namespace/service` at `port`, for a route in
/// `route_ns`.
pub fn names_service(
    parent: &ParentReference,
    route_ns: &str,
    namespace: &str,
    service: &str,
    port: u16,
) -> bool {
    matches!(parent.group.as_deref(), Some("" | "core"))
        && parent.kind.as_deref() == Some("Service")
        && parent.namespace.as_deref().unwrap_or(route_ns) == namespace
        && parent.name == service
        && parent.port.is_none_or(|p| p == i32::from(port))
}

/// The routes for traffic from a client in `client_ns` to the Service
/// `namespace/service` at `port`, in the order they are tried; `None` when no route
/// applies (the Service's traffic is then not routed: it goes to its own endpoints).
pub fn service_routes(
    world: &World,
    namespace: &str,
    service: &str,
    port: u16,
    client_ns: &str,
) -> Option<Vec<Route>> {
    let binds = |route_ns: &str, parents: &[ParentReference]| {
        parents
            .iter()
            .any(|p| names_service(p, route_ns, namespace, service, port))
    };
    // (route namespace, kind, index) of the routes that name the Service port.
    let mut bound: Vec<(&str, RouteKind, usize)> = Vec::new();
    for (i, r) in world.http_routes.iter().enumerate() {
        if let Ok(spec) = &r.spec
            && binds(r.namespace(), &spec.parent_refs)
        {
            bound.push((r.namespace(), RouteKind::Http, i));
        }
    }
    for (i, r) in world.grpc_routes.iter().enumerate() {
        if let Ok(spec) = &r.spec
            && binds(r.namespace(), &spec.parent_refs)
        {
            bound.push((r.namespace(), RouteKind::Grpc, i));
        }
    }
    let consumer = client_ns != namespace && bound.iter().any(|(ns, ..)| *ns == client_ns);
    let wanted = if consumer { client_ns } else { namespace };
    bound.retain(|(ns, ..)| *ns == wanted);
    // Linkerd's annotations: a route's, else its Service's.
    let service_policy = world
        .services
        .get(&(namespace.to_string(), service.to_string()))
        .and_then(|s| s.metadata.annotations.as_ref())
        .and_then(LinkerdPolicy::from_annotations);
    if bound.is_empty() {
        // A Service with the annotations and no route: one route to itself.
        let policy = service_policy?;
        let mut route = Route {
            name: RouteName {
                kind: "Service",
                namespace: namespace.into(),
                name: service.into(),
                rule: 0,
            },
            matches: RouteMatch {
                path: PathMatch::Prefix("/".into()),
                method: None,
                headers: vec![],
                query: vec![],
            },
            action: Action::Forward(Box::new(Forward {
                backends: vec![WeightedBackend {
                    weight: 1,
                    backend: world
                        .backend(namespace, service, PortRef::Number(i32::from(port)))
                        .ok(),
                }],
                ..Forward::default()
            })),
        };
        policy.apply(&mut route);
        return Some(vec![route]);
    }
    let mut ctx = Ctx {
        world,
        listeners: Vec::new(),
        policies_used: BTreeMap::new(),
        current_policies: BTreeSet::new(),
        mesh: true,
    };
    let mut ranked: Vec<Ranked> = Vec::new();
    for (_, kind, i) in bound {
        let mut problem = None;
        let meta = match kind {
            RouteKind::Grpc => &world.grpc_routes[i].meta,
            _ => &world.http_routes[i].meta,
        };
        let policy = meta
            .annotations
            .as_ref()
            .and_then(LinkerdPolicy::from_annotations)
            .or_else(|| service_policy.clone());
        let compiled = match kind {
            RouteKind::Grpc => {
                let r = &world.grpc_routes[i];
                r.spec
                    .as_ref()
                    .map_err(|_| ())
                    .and_then(|s| grpc_route(&mut ctx, r, s, &mut problem).map_err(|_| ()))
            }
            _ => {
                let r = &world.http_routes[i];
                r.spec
                    .as_ref()
                    .map_err(|_| ())
                    .and_then(|s| http_route(&mut ctx, r, s, &mut problem).map_err(|_| ()))
            }
        };
        let mut compiled = compiled.unwrap_or_default();
        if let Some(p) = &policy {
            for r in &mut compiled {
                p.apply(&mut r.route);
            }
        }
        ranked.extend(compiled);
    }
    ranked.sort_by(|a, b| a.key.cmp(&b.key));
    Some(ranked.into_iter().map(|r| r.route).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, PathMatch};
    use crate::world::fixtures::*;

    fn world() -> World {
        let mut w = World::default();
        service(&mut w, "shop", "web", &[("http", 80, None)], &["10.0.0.1"]);
        service(
            &mut w,
            "shop",
            "web-v2",
            &[("http", 80, None)],
            &["10.0.0.2"],
        );
        service(
            &mut w,
            "shop",
            "other",
            &[("http", 80, None)],
            &["10.0.0.3"],
        );
        w
    }

    fn route(ns: &str, name: &str, parent: &str, path: &str, backend: &str) -> String {
        format!(
            "metadata: {{name: {name}, namespace: {ns}}}
spec:
  parentRefs: [{parent}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {backend}, namespace: shop, port: 80}}]"
        )
    }

    fn paths(routes: &[Route]) -> Vec<(String, String)> {
        routes
            .iter()
            .map(|r| {
                let PathMatch::Prefix(p) = &r.matches.path else {
                    panic!("a prefix")
                };
                let Action::Forward(f) = &r.action else {
                    panic!("a forward")
                };
                let backend = f.backends[0].backend.as_ref().expect("resolved");
                (p.clone(), backend.service.clone())
            })
            .collect()
    }

    const SERVICE: &str = "{group: '', kind: Service, name: web}";

    #[test]
    fn a_service_without_routes_is_not_routed() {
        let mut w = world();
        // A route of a Gateway, and one naming another Service or another port.
        w.http_routes
            .push(obj(&route("shop", "gw", "{name: gateway}", "/", "web-v2")));
        w.http_routes.push(obj(&route(
            "shop",
            "x",
            "{group: '', kind: Service, name: other}",
            "/",
            "web-v2",
        )));
        w.http_routes.push(obj(&route(
            "shop",
            "p",
            "{group: '', kind: Service, name: web, port: 8080}",
            "/",
            "web-v2",
        )));
        assert_eq!(service_routes(&w, "shop", "web", 80, "shop"), None);
    }

    #[test]
    fn producer_routes_are_ranked_as_the_specification_orders_them() {
        let mut w = world();
        w.http_routes
            .push(obj(&route("shop", "all", SERVICE, "/", "web")));
        w.http_routes
            .push(obj(&route("shop", "api", SERVICE, "/api", "web-v2")));
        let routes = service_routes(&w, "shop", "web", 80, "shop").expect("routed");
        assert_eq!(
            paths(&routes),
            [("/api".into(), "web-v2".into()), ("/".into(), "web".into())]
        );
        // A client in another namespace gets the producer's routes too.
        let elsewhere = service_routes(&w, "shop", "web", 80, "ops").expect("routed");
        assert_eq!(paths(&elsewhere), paths(&routes));
    }

    #[test]
    fn a_consumer_route_replaces_the_producers_for_its_namespace_only() {
        let mut w = world();
        w.http_routes
            .push(obj(&route("shop", "all", SERVICE, "/", "web")));
        w.http_routes.push(obj(&route(
            "ops",
            "mine",
            "{group: '', kind: Service, name: web, namespace: shop}",
            "/",
            "web-v2",
        )));
        // Its backend is in shop: a ReferenceGrant there lets it be.
        let unresolved = service_routes(&w, "shop", "web", 80, "ops").expect("routed");
        let Action::Forward(f) = &unresolved[0].action else {
            panic!("a forward")
        };
        assert_eq!(
            f.backends[0].backend, None,
            "not granted: its share answers 500"
        );
        w.reference_grants
            .push(obj("metadata: {name: ops, namespace: shop}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: ops}]
  to: [{group: '', kind: Service}]"));
        let ops = service_routes(&w, "ops", "web", 80, "ops");
        assert_eq!(ops, None, "the Service is in shop, not ops");
        let ops = service_routes(&w, "shop", "web", 80, "ops").expect("routed");
        assert_eq!(paths(&ops), [("/".into(), "web-v2".into())]);
        let shop = service_routes(&w, "shop", "web", 80, "shop").expect("routed");
        assert_eq!(paths(&shop), [("/".into(), "web".into())]);
        let other = service_routes(&w, "shop", "web", 80, "dev").expect("routed");
        assert_eq!(paths(&other), [("/".into(), "web".into())]);
    }

    fn annotations(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn linkerds_retry_and_timeout_annotations_apply_from_the_route_else_the_service() {
        let mut w = world();
        let forward = |routes: &[Route]| match &routes[0].action {
            Action::Forward(f) => (f.retry.clone(), f.request_timeout, f.backend_timeout),
            other => panic!("{other:?}"),
        };
        w.http_routes
            .push(obj(&route("shop", "all", SERVICE, "/", "web")));
        let none = service_routes(&w, "shop", "web", 80, "shop").unwrap();
        assert_eq!(forward(&none), (None, None, None));
        // On the Service.
        let svc = w.services.get_mut(&("shop".into(), "web".into())).unwrap();
        std::sync::Arc::make_mut(svc).metadata.annotations = annotations(&[
            ("retry.linkerd.io/http", "gateway-error,429"),
            ("timeout.linkerd.io/request", "2s"),
        ]);
        let (retry, request, attempt) =
            forward(&service_routes(&w, "shop", "web", 80, "shop").unwrap());
        let retry = retry.expect("a retry");
        assert_eq!(retry.attempts, 1, "Linkerd's default limit");
        // Without a route, the Service's annotations make one to itself.
        let mut unrouted = w.clone();
        unrouted.http_routes.clear();
        let own = service_routes(&unrouted, "shop", "web", 80, "shop").expect("routed");
        assert_eq!(own[0].name.kind, "Service");
        assert_eq!(paths(&own), [("/".into(), "web".into())]);
        assert_eq!(forward(&own).0, Some(retry.clone()));
        let codes: Vec<u16> = retry.statuses.iter().map(|s| s.as_u16()).collect();
        assert_eq!(codes, [502, 503, 504, 429]);
        assert_eq!((request, attempt), (Some(Duration::from_secs(2)), None));
        // On the route: all of the Service's are replaced by the route's.
        w.http_routes[0].meta.annotations = annotations(&[
            ("retry.linkerd.io/http", "5xx"),
            ("retry.linkerd.io/limit", "3"),
            ("retry.linkerd.io/timeout", "300ms"),
        ]);
        let (retry, request, attempt) =
            forward(&service_routes(&w, "shop", "web", 80, "shop").unwrap());
        let retry = retry.expect("a retry");
        assert_eq!((retry.attempts, retry.statuses.len()), (3, 100));
        assert_eq!((request, attempt), (None, Some(Duration::from_millis(300))));
        assert_eq!(
            retryable_statuses("500, 502-504,x,7-"),
            [500, 502, 503, 504].map(|c| StatusCode::from_u16(c).unwrap())
        );
    }

    #[test]
    fn an_http_fault_filter_is_compiled_and_a_missing_one_answers_500() {
        let mut w = world();
        let with_fault = |name: &str| {
            format!(
                "{}\n    filters: [{{type: ExtensionRef, extensionRef: {{group: mesh.kubewire.io, kind: HTTPFault, name: {name}}}}}]",
                route("shop", "chaos", SERVICE, "/", "web")
            )
        };
        w.http_routes.push(obj(&with_fault("flaky")));
        let routes = service_routes(&w, "shop", "web", 80, "shop").unwrap();
        assert_eq!(
            routes[0].action,
            Action::Respond(StatusCode::INTERNAL_SERVER_ERROR)
        );
        w.http_faults
            .push(obj("metadata: {name: flaky, namespace: shop}
spec:
  abort: {httpStatus: 503, percentage: 25}
  delay: {fixedDelay: 150ms}"));
        let routes = service_routes(&w, "shop", "web", 80, "shop").unwrap();
        let Action::Forward(f) = &routes[0].action else {
            panic!("{:?}", routes[0].action)
        };
        assert_eq!(
            f.fault,
            Some(crate::config::Fault {
                abort: Some((StatusCode::SERVICE_UNAVAILABLE, 25.0)),
                delay: Some((Duration::from_millis(150), 100.0)),
            })
        );
        // At the gateway, a route with it is not accepted.
        let mut gw = World::default();
        gw.http_routes.push(obj(&with_fault("flaky")));
        gw.http_faults = w.http_faults.clone();
        assert!(crate::compile(&gw).config.listeners.is_empty());
    }

    #[test]
    fn a_route_that_cannot_be_accepted_is_left_out() {
        let mut w = world();
        w.http_routes.push(obj(&format!(
            "{}\n    filters: [{{type: ExtensionRef, extensionRef: {{group: x, kind: Y, name: z}}}}]",
            route("shop", "bad", SERVICE, "/bad", "web-v2")
        )));
        w.http_routes
            .push(obj(&route("shop", "ok", SERVICE, "/", "web")));
        let routes = service_routes(&w, "shop", "web", 80, "shop").expect("routed");
        assert_eq!(paths(&routes), [("/".into(), "web".into())]);
    }
}
