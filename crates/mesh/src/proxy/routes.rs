//! Gateway API for mesh (GAMMA) in the proxy: the routes discovery sends for a Service
//! port, compiled for this pod's namespace by the gateway's own compiler
//! ([`gateway::gatewayapi::mesh`]) and matched by the gateway's router, so matches,
//! precedence, filters, weights, timeouts and retries mean the same in both.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::sync::Arc;

use gateway::config::{Backend, HostMatch, HttpHosts, Route, VirtualHost};
use gateway::gatewayapi::mesh as gamma;
use gateway::proxy::route::{RequestView, Router, normalize_host};
use gateway::world::{Obj, World, slices_by_service};
use http::Request;

use crate::destination::{Accrual, Destination, Endpoint, Routes};

/// A destination's answer, with its routes compiled once.
#[derive(Debug, Default)]
pub(super) struct Resolved {
    pub destination: Destination,
    pub routing: Option<Arc<Routing>>,
}

impl Deref for Resolved {
    type Target = Destination;
    fn deref(&self) -> &Destination {
        &self.destination
    }
}

impl Resolved {
    /// `destination` with its routes compiled for a client in `client_ns`, or the
    /// routing of `previous` when its routes are the same.
    pub(super) fn new(
        destination: Destination,
        port: u16,
        client_ns: &str,
        previous: Option<&Resolved>,
    ) -> Resolved {
        let routing = match (&destination.routes, previous) {
            (None, _) => None,
            (Some(r), Some(p)) if p.destination.routes.as_ref() == Some(r) => p.routing.clone(),
            (Some(r), _) => {
                Routing::compile(&destination.service, port, client_ns, r).map(Arc::new)
            }
        };
        Resolved {
            destination,
            routing,
        }
    }
}

/// A Service port's routes for this pod.
#[derive(Debug)]
pub(super) struct Routing {
    hosts: HttpHosts,
    router: Router,
    identities: HashMap<IpAddr, String>,
    /// The backends' failure accrual, by `(namespace, name)`.
    accruals: HashMap<(String, String), Accrual>,
}

impl Routing {
    /// The routes of `routes` for the Service `namespace/name` at `port`, for a client
    /// in `client_ns`; `None` when none applies to it.
    fn compile(service: &str, port: u16, client_ns: &str, routes: &Routes) -> Option<Routing> {
        let (namespace, name) = service.split_once('/')?;
        let world = World {
            http_routes: routes.http_routes.iter().map(Obj::from_json).collect(),
            grpc_routes: routes.grpc_routes.iter().map(Obj::from_json).collect(),
            reference_grants: routes.reference_grants.iter().map(Obj::from_json).collect(),
            http_faults: routes.http_faults.iter().map(Obj::from_json).collect(),
            services: routes
                .services
                .iter()
                .map(|s| {
                    let key = (
                        s.metadata.namespace.clone().unwrap_or_default(),
                        s.metadata.name.clone().unwrap_or_default(),
                    );
                    (key, Arc::new(s.clone()))
                })
                .collect(),
            endpoint_slices: slices_by_service(routes.endpoint_slices.iter().cloned()),
            ..World::default()
        };
        let compiled = gamma::service_routes(&world, namespace, name, port, client_ns)?;
        let hosts = HttpHosts {
            hosts: vec![VirtualHost {
                hostnames: vec![HostMatch::Any],
                scope: None,
                routes: compiled,
            }],
        };
        let accruals = routes
            .services
            .iter()
            .filter_map(|s| {
                let accrual = Accrual::from_annotations(s.metadata.annotations.as_ref()?)?;
                let key = (
                    s.metadata.namespace.clone().unwrap_or_default(),
                    s.metadata.name.clone().unwrap_or_default(),
                );
                Some((key, accrual))
            })
            .collect();
        Some(Routing {
            router: Router::new(&hosts),
            hosts,
            accruals,
            identities: routes
                .identities
                .iter()
                .map(|(ip, id)| (*ip, id.clone()))
                .collect(),
        })
    }

    /// The first route that matches `req`, as the gateway's router finds it.
    pub(super) fn find<B>(&self, req: &Request<B>) -> Option<&Route> {
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| {
                req.headers()
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
            })
            .unwrap_or_default();
        let host = normalize_host(authority);
        let view = RequestView {
            host: &host,
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        };
        let (h, r) = self.router.find(&view)?;
        self.hosts.hosts.get(h)?.routes.get(r)
    }

    /// A backend's failure accrual, from its Service's annotations.
    pub(super) fn accrual(&self, backend: &Backend) -> Option<&Accrual> {
        self.accruals
            .get(&(backend.namespace.clone(), backend.service.clone()))
    }

    /// A backend's endpoint as the proxy dials it: meshed when discovery said so.
    pub(super) fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            pod: String::new(),
            identity: self.identities.get(&addr.ip()).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use gateway::config::{Action, PathMatch};
    use serde_json::json;

    use super::*;

    fn routes() -> Routes {
        let route = |ns: &str, name: &str, path: &str, backend: &str| {
            json!({
                "metadata": {"namespace": ns, "name": name},
                "spec": {
                    "parentRefs": [{"group": "", "kind": "Service", "name": "web", "namespace": "shop"}],
                    "rules": [{
                        "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                        "backendRefs": [{"name": backend, "namespace": "shop", "port": 80}],
                    }],
                },
            })
        };
        let service = |name: &str| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": name},
                "spec": {"ports": [{"name": "http", "port": 80}]},
            }))
            .unwrap()
        };
        let slice = |name: &str, ip: &str| {
            serde_json::from_value(json!({
                "metadata": {"namespace": "shop", "name": format!("{name}-a"),
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 3000}],
                "endpoints": [{"addresses": [ip]}],
            }))
            .unwrap()
        };
        Routes {
            http_routes: vec![
                route("shop", "all", "/", "web"),
                route("shop", "v2", "/v2", "web-v2"),
                route("ops", "mine", "/", "web-v2"),
            ],
            grpc_routes: vec![],
            reference_grants: vec![],
            http_faults: vec![],
            services: vec![service("web"), service("web-v2")],
            endpoint_slices: vec![slice("web", "10.1.0.1"), slice("web-v2", "10.1.0.2")],
            identities: [("10.1.0.2".parse().unwrap(), "ns/shop/sa/v2".into())].into(),
        }
    }

    fn backend_of(routing: &Routing, path: &str) -> Option<(String, Vec<SocketAddr>)> {
        let req = Request::get(path)
            .header("host", "web.shop")
            .body(())
            .unwrap();
        let route = routing.find(&req)?;
        let Action::Forward(f) = &route.action else {
            panic!("a forward")
        };
        let b = f.backends[0].backend.as_ref()?;
        Some((b.service.clone(), b.endpoints.to_vec()))
    }

    #[test]
    fn routes_are_compiled_for_the_clients_namespace_and_matched() {
        let routing = Routing::compile("shop/web", 80, "shop", &routes()).expect("routed");
        let ep = |ip: &str| vec![SocketAddr::new(ip.parse().unwrap(), 3000)];
        assert_eq!(
            backend_of(&routing, "/v2/x"),
            Some(("web-v2".into(), ep("10.1.0.2")))
        );
        assert_eq!(
            backend_of(&routing, "/v20"),
            Some(("web".into(), ep("10.1.0.1")))
        );
        assert_eq!(
            routing.endpoint(ep("10.1.0.2")[0]).identity.as_deref(),
            Some("ns/shop/sa/v2")
        );
        assert_eq!(routing.endpoint(ep("10.1.0.1")[0]).identity, None);
        // In ops, its own route: the only one, and its backend is in shop without a
        // ReferenceGrant, so the rule answers 500 for it (no backend resolved).
        let ops = Routing::compile("shop/web", 80, "ops", &routes()).expect("routed");
        let req = Request::get("/v2").body(()).unwrap();
        let route = ops.find(&req).expect("matched");
        assert_eq!(route.name.name, "mine");
        assert_eq!(route.matches.path, PathMatch::Prefix("/".into()));
    }

    #[test]
    fn the_same_routes_are_compiled_once() {
        let d = Destination {
            kind: "service".into(),
            service: "shop/web".into(),
            endpoints: vec![],
            routes: Some(routes()),
            failure_accrual: None,
        };
        let first = Resolved::new(d.clone(), 80, "shop", None);
        let again = Resolved::new(d.clone(), 80, "shop", Some(&first));
        let (a, b) = (
            first.routing.as_ref().unwrap(),
            again.routing.as_ref().unwrap(),
        );
        assert!(Arc::ptr_eq(a, b));
        let mut changed = d;
        changed.routes.as_mut().unwrap().http_routes.pop();
        let fresh = Resolved::new(changed, 80, "shop", Some(&first));
        assert!(!Arc::ptr_eq(a, fresh.routing.as_ref().unwrap()));
    }
}
