//! Ingress v1, as the Kubernetes documentation and ingress-nginx define it.
//!
//! - Served: Ingresses of a served class, named by the older `kubernetes.io/ingress.class`
//!   annotation (which wins, as in ingress-nginx) or `spec.ingressClassName`; the served
//!   classes are [`Settings::ingress_classes`] (`kubewire` and `ambassador`, so the talk's
//!   Ingress applies unchanged) and any IngressClass whose `spec.controller` is
//!   [`INGRESS_CONTROLLER`]. An Ingress naming no class is served when a served
//!   IngressClass is the default (`ingressclass.kubernetes.io/is-default-class: "true"`).
//! - Paths: `Exact` is the whole path, case-sensitive; `Prefix` is element-wise on `/`;
//!   `ImplementationSpecific` is treated as `Prefix` (what ingress-nginx does when regular
//!   expressions are not enabled). The rules of every served Ingress for one host are
//!   merged: the longest path wins, `Exact` before `Prefix` at equal length, then the
//!   oldest Ingress (then namespace/name), then the order within the Ingress.
//! - Hosts: exact, or `*.example.com` whose `*` is exactly one label; a rule without host
//!   matches any host. `defaultBackend` answers what no rule takes, on any host.
//! - Backends: a Service port by number or name; a missing Service or port answers 503,
//!   as ingress-nginx does. Resource backends are not supported (500).
//! - Ports 80 (HTTP) and, when a served Ingress has a usable TLS Secret, 443 (the same
//!   routes behind TLS, with each `spec.tls` entry's certificate for its hosts; one
//!   without hosts is the default certificate).
//! - `status.loadBalancer.ingress` lists the gateway's own addresses.

use http::StatusCode;
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use serde_json::json;

use crate::build::{Builder, PortKind};
use crate::config::{
    Action, Forward, HostMatch, PathMatch, Route, RouteMatch, RouteName, WeightedBackend,
};
use crate::status::{Kind, Update};
use crate::world::{INGRESS_CONTROLLER, PortRef, World, host_match};

pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;
pub const CLASS_ANNOTATION: &str = "kubernetes.io/ingress.class";
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether the gateway serves `ing`.
pub fn served(world: &World, ing: &Ingress) -> bool {
    let annotation = ing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLASS_ANNOTATION));
    let class = annotation
        .or(ing
            .spec
            .as_ref()
            .and_then(|s| s.ingress_class_name.as_ref()))
        .map(String::as_str);
    let ours = |name: &str| {
        world.settings.ingress_classes.iter().any(|c| c == name)
            || world.ingress_classes.iter().any(|c| {
                c.metadata.name.as_deref() == Some(name)
                    && c.spec.as_ref().and_then(|s| s.controller.as_deref())
                        == Some(INGRESS_CONTROLLER)
            })
    };
    match class {
        Some(name) => ours(name),
        None => world.ingress_classes.iter().any(|c| {
            c.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DEFAULT_CLASS_ANNOTATION))
                .is_some_and(|v| v == "true")
                && c.metadata.name.as_deref().is_some_and(ours)
        }),
    }
}

/// A route with what orders it among the routes of its host.
struct Ranked {
    host: HostMatch,
    /// A `defaultBackend`: after every rule, whatever its age.
    default: bool,
    /// Longer first, then Exact first.
    path_len: usize,
    exact: bool,
    age: (Option<k8s_openapi::jiff::Timestamp>, String, String),
    index: usize,
    route: Route,
}

/// Adds the served Ingresses' routes and certificates to `b` and their statuses.
pub(crate) fn compile(world: &World, b: &mut Builder, statuses: &mut Vec<Update>) {
    let mut ingresses: Vec<&Ingress> = world
        .ingresses
        .iter()
        .filter(|i| served(world, i))
        .collect();
    // Cached: the key clones the namespace and name.
    ingresses.sort_by_cached_key(|i| age(i));
    let mut ranked = Vec::new();
    let mut tls = false;
    // The same for every served Ingress. No address yet: none written (`null` removes one
    // a merge patch meets).
    let mut served_status = json!({"loadBalancer": {}});
    served_status["loadBalancer"]["ingress"] = if world.settings.addresses.is_empty() {
        serde_json::Value::Null
    } else {
        load_balancer(world).into()
    };
    for ing in &ingresses {
        let ns = ing.metadata.namespace.as_deref().unwrap_or("");
        let name = ing.metadata.name.as_deref().unwrap_or("");
        let Some(spec) = &ing.spec else { continue };
        let route_name = |rule: usize| RouteName {
            kind: "Ingress",
            namespace: ns.into(),
            name: name.into(),
            rule,
        };
        let mut index = 0;
        for rule in spec.rules.iter().flatten() {
            let host = host_match(rule.host.as_deref().unwrap_or(""), true);
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let p = path.path.clone().unwrap_or_else(|| "/".into());
                let exact = path.path_type == "Exact";
                let matches = RouteMatch {
                    path: if exact {
                        PathMatch::Exact(p.clone())
                    } else {
                        PathMatch::Prefix(p.clone())
                    },
                    method: None,
                    headers: vec![],
                    query: vec![],
                };
                ranked.push(Ranked {
                    host: host.clone(),
                    default: false,
                    path_len: if exact {
                        p.len()
                    } else {
                        p.trim_end_matches('/').len()
                    },
                    exact,
                    age: age(ing),
                    index,
                    route: Route {
                        name: route_name(index),
                        matches,
                        action: action(world, ns, &path.backend),
                    },
                });
                index += 1;
            }
        }
        if let Some(default) = &spec.default_backend {
            ranked.push(Ranked {
                host: HostMatch::Any,
                default: true,
                path_len: 0,
                exact: false,
                age: age(ing),
                index,
                route: Route {
                    name: route_name(index),
                    matches: RouteMatch {
                        path: PathMatch::Prefix("/".into()),
                        method: None,
                        headers: vec![],
                        query: vec![],
                    },
                    action: action(world, ns, default),
                },
            });
        }
        for t in spec.tls.iter().flatten() {
            let Some(secret) = &t.secret_name else {
                continue;
            };
            let hosts: Vec<HostMatch> = t
                .hosts
                .iter()
                .flatten()
                .map(|h| host_match(h, true))
                .collect();
            if let Ok(cert) = world.certificate(ns, secret, hosts) {
                tls |= b.certificate(HTTPS_PORT, cert);
            }
        }
        statuses.push(Update {
            kind: Kind::Ingress,
            namespace: ns.into(),
            name: name.into(),
            status: served_status.clone(),
        });
    }
    // An Ingress that left our classes loses the addresses we wrote, as ingress-nginx
    // takes its own back (another controller may write its own after).
    let ours = serde_json::to_value(load_balancer(world)).unwrap_or_default();
    for ing in world.ingresses.iter().filter(|i| !served(world, i)) {
        let held = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| serde_json::to_value(&lb.ingress).ok());
        if held.as_ref().is_some_and(|h| *h == ours) && !world.settings.addresses.is_empty() {
            statuses.push(Update {
                kind: Kind::Ingress,
                namespace: ing.metadata.namespace.clone().unwrap_or_default(),
                name: ing.metadata.name.clone().unwrap_or_default(),
                status: json!({"loadBalancer": {"ingress": null}}),
            });
        }
    }
    // Sorted as indices: an entry holds a whole Route, too big to move about in a sort.
    let mut order: Vec<usize> = (0..ranked.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (&ranked[a], &ranked[b]);
        a.default
            .cmp(&b.default)
            .then(b.path_len.cmp(&a.path_len))
            .then(b.exact.cmp(&a.exact))
            .then(a.age.cmp(&b.age))
            .then(a.index.cmp(&b.index))
    });
    let mut ranked: Vec<Option<Ranked>> = ranked.into_iter().map(Some).collect();
    for r in order.into_iter().filter_map(|i| ranked[i].take()) {
        if tls {
            b.routes(
                HTTPS_PORT,
                PortKind::Tls,
                None,
                r.host.clone(),
                [r.route.clone()],
            );
        }
        b.routes(HTTP_PORT, PortKind::Http, None, r.host, [r.route]);
    }
}

/// `status.loadBalancer.ingress` for the gateway's addresses.
fn load_balancer(world: &World) -> Vec<serde_json::Value> {
    world
        .settings
        .addresses
        .iter()
        .map(|a| {
            if a.parse::<std::net::IpAddr>().is_ok() {
                json!({"ip": a})
            } else {
                json!({"hostname": a})
            }
        })
        .collect()
}

fn age(i: &Ingress) -> (Option<k8s_openapi::jiff::Timestamp>, String, String) {
    (
        i.metadata.creation_timestamp.as_ref().map(|t| t.0),
        i.metadata.namespace.clone().unwrap_or_default(),
        i.metadata.name.clone().unwrap_or_default(),
    )
}

fn action(world: &World, ns: &str, backend: &IngressBackend) -> Action {
    let Some(svc) = &backend.service else {
        return Action::Respond(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let port = match &svc.port {
        Some(p) => match (&p.name, p.number) {
            (Some(name), _) if !name.is_empty() => PortRef::Name(name),
            (_, Some(n)) => PortRef::Number(n),
            _ => return Action::Respond(StatusCode::SERVICE_UNAVAILABLE),
        },
        None => return Action::Respond(StatusCode::SERVICE_UNAVAILABLE),
    };
    match world.backend(ns, &svc.name, port) {
        Ok(backend) => Action::Forward(Box::new(Forward {
            backends: vec![WeightedBackend {
                weight: 1,
                backend: Some(backend),
            }],
            ..Forward::default()
        })),
        Err(_) => Action::Respond(StatusCode::SERVICE_UNAVAILABLE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ListenerKind};
    use crate::world::fixtures::*;

    fn world() -> World {
        let mut w = World::default();
        w.settings.addresses = vec!["198.18.0.200".into()];
        service(
            &mut w,
            "default",
            "engine",
            &[("http", 80, None)],
            &["10.0.0.1"],
        );
        service(
            &mut w,
            "default",
            "web",
            &[("web", 8080, None)],
            &["10.0.0.2"],
        );
        w
    }

    fn compile_world(w: &World) -> (Config, Vec<Update>) {
        let mut b = Builder::default();
        let mut s = Vec::new();
        compile(w, &mut b, &mut s);
        (b.finish(), s)
    }

    /// The (ingress name, rule) of the routes of `host` on `port`, in order.
    fn order(c: &Config, port: u16, host: &HostMatch) -> Vec<(String, usize)> {
        let l = c.listeners.iter().find(|l| l.port == port).unwrap();
        let hosts = match &l.kind {
            ListenerKind::Http(h) => h,
            ListenerKind::Tls { hosts, .. } => hosts,
            _ => panic!(),
        };
        hosts
            .hosts
            .iter()
            .find(|v| v.hostnames[0] == *host)
            .unwrap()
            .routes
            .iter()
            .map(|r| (r.name.name.clone(), r.name.rule))
            .collect()
    }

    /// The (ingress name, rule) of the route that answers a GET of `host` and `path` on
    /// `port`, by the data plane's lookup.
    fn answer(c: &Config, port: u16, host: &str, path: &str) -> Option<(String, usize)> {
        let l = c.listeners.iter().find(|l| l.port == port).unwrap();
        let (ListenerKind::Http(hosts) | ListenerKind::Tls { hosts, .. }) = &l.kind else {
            panic!()
        };
        let headers = http::HeaderMap::new();
        let req = crate::proxy::route::RequestView {
            host,
            method: &http::Method::GET,
            path,
            query: None,
            headers: &headers,
        };
        let (v, r) = crate::proxy::route::Router::new(hosts).find(&req)?;
        let name = &hosts.hosts[v].routes[r].name;
        Some((name.name.clone(), name.rule))
    }

    fn backend_of(r: &Route) -> (String, u16) {
        let Action::Forward(f) = &r.action else {
            panic!("{r:?}")
        };
        let b = f.backends[0].backend.as_ref().unwrap();
        (b.service.clone(), b.port)
    }

    #[test]
    fn the_talks_ingress_sends_engine_to_engine_and_reports_the_gateways_address() {
        let mut w = world();
        w.ingresses.push(yaml(include_str!(
            "../../../examples/step4-outside-access/ingress-web-ingress.yaml"
        )));
        w.ingresses[0].metadata.namespace = Some("default".into());
        let (c, s) = compile_world(&w);
        // The compile read the Service it routes to, not the other one.
        let read = w.services_read.take();
        assert!(read.contains(&("default".to_string(), "engine".to_string())));
        assert!(!read.contains(&("default".to_string(), "web".to_string())));
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].port, 80);
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        let r = &h.hosts[0].routes[0];
        assert_eq!(h.hosts[0].hostnames, [HostMatch::Any]);
        assert_eq!(r.matches.path, PathMatch::Prefix("/engine".into()));
        assert_eq!(backend_of(r), ("engine".into(), 80));
        let Action::Forward(f) = &r.action else {
            panic!()
        };
        assert_eq!(
            &*f.backends[0].backend.as_ref().unwrap().endpoints,
            &["10.0.0.1:8080".parse().unwrap()]
        );
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0].status,
            json!({"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}})
        );
    }

    fn ing(name: &str, class: Option<&str>, created: &str, body: &str) -> Ingress {
        let mut i: Ingress = yaml(&format!(
            "metadata: {{name: {name}, namespace: default, creationTimestamp: '{created}'}}\nspec:\n{body}"
        ));
        if let Some(c) = class {
            i.spec.as_mut().unwrap().ingress_class_name = Some(c.into());
        }
        i
    }

    #[test]
    fn classes_served_by_name_annotation_or_default_class() {
        let mut w = world();
        let body = "  defaultBackend: {service: {name: engine, port: {number: 80}}}";
        let t = "2026-01-01T00:00:00Z";
        assert!(served(&w, &ing("a", Some("kubewire"), t, body)));
        assert!(served(&w, &ing("a", Some("ambassador"), t, body)));
        assert!(!served(&w, &ing("a", Some("nginx"), t, body)));
        let mut annotated = ing("a", Some("kubewire"), t, body);
        annotated.metadata.annotations =
            Some([(CLASS_ANNOTATION.to_string(), "nginx".to_string())].into());
        assert!(!served(&w, &annotated), "the annotation wins");
        let classless = ing("a", None, t, body);
        assert!(!served(&w, &classless), "no default class yet");
        w.ingress_classes.push(yaml(&format!(
            "metadata: {{name: kubewire, annotations: {{{DEFAULT_CLASS_ANNOTATION}: 'true'}}}}\nspec: {{controller: {INGRESS_CONTROLLER}}}"
        )));
        assert!(served(&w, &classless));
        w.ingress_classes.push(yaml(&format!(
            "metadata: {{name: mine}}\nspec: {{controller: {INGRESS_CONTROLLER}}}"
        )));
        assert!(served(&w, &ing("a", Some("mine"), t, body)));
    }

    #[test]
    fn longest_path_wins_exact_before_prefix_then_oldest() {
        let mut w = world();
        let rules = |paths: &[(&str, &str)]| {
            let mut s = String::from("  rules:\n  - http:\n      paths:\n");
            for (p, t) in paths {
                s += &format!(
                    "      - {{path: '{p}', pathType: {t}, backend: {{service: {{name: engine, port: {{number: 80}}}}}}}}\n"
                );
            }
            s
        };
        w.ingresses.push(ing(
            "young",
            Some("kubewire"),
            "2026-02-01T00:00:00Z",
            &rules(&[("/a", "Prefix"), ("/a/b", "Prefix"), ("/", "Prefix")]),
        ));
        w.ingresses.push(ing(
            "old",
            Some("kubewire"),
            "2026-01-01T00:00:00Z",
            &rules(&[
                ("/a", "Exact"),
                ("/a", "ImplementationSpecific"),
                ("/a/b/", "Prefix"),
            ]),
        ));
        let (c, _) = compile_world(&w);
        assert_eq!(
            order(&c, 80, &HostMatch::Any),
            [
                ("old".to_string(), 2),   // /a/b/ (trailing slash ignored), older
                ("young".to_string(), 1), // /a/b
                ("old".to_string(), 0),   // /a Exact
                ("old".to_string(), 1),   // /a Prefix, older
                ("young".to_string(), 0),
                ("young".to_string(), 2),
            ]
        );
    }

    #[test]
    fn hosts_wildcards_default_backend_and_backend_ports_by_name() {
        let mut w = world();
        w.ingresses.push(ing(
            "i",
            Some("kubewire"),
            "2026-01-01T00:00:00Z",
            "  defaultBackend: {service: {name: web, port: {name: web}}}
  rules:
  - host: foo.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: engine, port: {number: 80}}}}]}
  - host: '*.example.com'
    http: {paths: [{path: /w, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}]}
",
        ));
        let (c, _) = compile_world(&w);
        let foo = HostMatch::Exact("foo.example.com".into());
        let wild = HostMatch::Wildcard {
            suffix: ".example.com".into(),
            one_label: true,
        };
        assert_eq!(order(&c, 80, &foo), [("i".to_string(), 0)]);
        assert_eq!(order(&c, 80, &wild), [("i".to_string(), 1)]);
        assert_eq!(order(&c, 80, &HostMatch::Any), [("i".to_string(), 2)]);
        // A host falls through to the wildcard, then to the default backend.
        let rule = |host, path| answer(&c, 80, host, path).map(|(_, rule)| rule);
        assert_eq!(rule("foo.example.com", "/w"), Some(0));
        assert_eq!(rule("bar.example.com", "/w"), Some(1));
        assert_eq!(rule("bar.example.com", "/x"), Some(2));
        assert_eq!(rule("a.bar.example.com", "/w"), Some(2), "one label only");
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        let any = h
            .hosts
            .iter()
            .find(|v| v.hostnames[0] == HostMatch::Any)
            .unwrap();
        assert_eq!(backend_of(&any.routes[0]), ("web".into(), 8080));
        let wv = h.hosts.iter().find(|v| v.hostnames[0] == wild).unwrap();
        assert_eq!(
            wv.routes[0].action,
            Action::Respond(StatusCode::SERVICE_UNAVAILABLE),
            "a missing Service answers 503 as ingress-nginx does"
        );
    }

    #[test]
    fn a_default_backend_answers_only_what_no_rule_takes() {
        let mut w = world();
        w.ingresses.push(ing(
            "old",
            Some("kubewire"),
            "2026-01-01T00:00:00Z",
            "  defaultBackend: {service: {name: web, port: {name: web}}}",
        ));
        w.ingresses.push(ing(
            "young",
            Some("kubewire"),
            "2026-02-01T00:00:00Z",
            "  rules: [{http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: engine, port: {number: 80}}}}]}}]",
        ));
        let (c, _) = compile_world(&w);
        assert_eq!(
            order(&c, 80, &HostMatch::Any),
            [("young".to_string(), 0), ("old".to_string(), 0)]
        );
    }

    #[test]
    fn tls_adds_port_443_with_the_secrets_certificates_and_the_same_routes() {
        let mut w = world();
        tls_secret(&mut w, "default", "foo-cert");
        w.ingresses.push(ing(
            "i",
            Some("kubewire"),
            "2026-01-01T00:00:00Z",
            "  tls: [{hosts: [foo.example.com], secretName: foo-cert}, {secretName: missing}]
  rules:
  - host: foo.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: engine, port: {number: 80}}}}]}
",
        ));
        let (c, _) = compile_world(&w);
        assert_eq!(
            c.listeners.iter().map(|l| l.port).collect::<Vec<_>>(),
            [80, 443]
        );
        let ListenerKind::Tls {
            certificates,
            hosts,
            passthrough,
        } = &c.listeners[1].kind
        else {
            panic!()
        };
        assert!(passthrough.is_empty());
        assert_eq!(certificates.len(), 1);
        assert_eq!(
            certificates[0].hostnames,
            [HostMatch::Exact("foo.example.com".into())]
        );
        assert_eq!(
            &*certificates[0].chain_pem,
            crate::world::fixtures::pem("CERTIFICATE", "crt-foo-cert").as_bytes()
        );
        assert_eq!(hosts.hosts.len(), 1);
    }

    #[test]
    fn no_tls_secret_no_port_443_and_unserved_ingresses_get_no_status() {
        let mut w = world();
        w.ingresses.push(ing(
            "i",
            Some("kubewire"),
            "2026-01-01T00:00:00Z",
            "  tls: [{secretName: missing}]\n  defaultBackend: {service: {name: engine, port: {number: 80}}}",
        ));
        w.ingresses.push(ing(
            "other",
            Some("nginx"),
            "2026-01-01T00:00:00Z",
            "  defaultBackend: {service: {name: engine, port: {number: 80}}}",
        ));
        let (c, s) = compile_world(&w);
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "i");

        // One that holds our address and left our classes gives it back.
        w.ingresses[1].status = Some(yaml("loadBalancer: {ingress: [{ip: 198.18.0.200}]}"));
        let (_, s) = compile_world(&w);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].name, "other");
        assert_eq!(s[1].status, json!({"loadBalancer": {"ingress": null}}));
    }
}
