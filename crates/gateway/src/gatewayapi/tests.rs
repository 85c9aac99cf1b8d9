use super::*;
use crate::Compiled;
use crate::config::{Config, ListenerKind};
use crate::world::fixtures::*;

fn world() -> World {
    let mut w = World::default();
    w.settings.addresses = vec!["198.18.0.201".into()];
    service(
        &mut w,
        "default",
        "web",
        &[("http", 80, None)],
        &["10.0.0.1"],
    );
    service(
        &mut w,
        "default",
        "web2",
        &[("http", 8080, None)],
        &["10.0.0.2"],
    );
    service(&mut w, "other", "api", &[("http", 80, None)], &["10.0.1.1"]);
    service(
        &mut w,
        "default",
        "grpc",
        &[("grpc", 9000, None)],
        &["10.0.0.3"],
    );
    w.gateway_classes.push(obj(
        "metadata: {name: kubewire, generation: 1}\nspec: {controllerName: kubewire.io/gateway}",
    ));
    w.gateway_classes.push(obj(
        "metadata: {name: other}\nspec: {controllerName: example.com/other}",
    ));
    w.namespaces.insert(
        "default".into(),
        [("env".to_string(), "dev".to_string())].into(),
    );
    w.namespaces.insert(
        "other".into(),
        [("env".to_string(), "prod".to_string())].into(),
    );
    w
}

/// What the controller converges to: the compile, then each Gateway's Service as the
/// compile asks for it, given the address the gateway's own Service has (as the
/// LoadBalancer controller would give one; none when it has none), then the compile again.
fn compile(w: &World) -> Compiled {
    let first = crate::compile(w);
    let mut w = w.clone();
    for s in &first.services {
        let mut manifest = s.manifest(&w.settings.service.0, None);
        if let Some(ip) = w.settings.addresses.first() {
            manifest["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
        }
        w.services.insert(
            (w.settings.service.0.clone(), s.name.clone()),
            std::sync::Arc::new(serde_json::from_value(manifest).unwrap()),
        );
    }
    let c = crate::compile(&w);
    assert_eq!(c.services, first.services, "the ports bound are kept");
    c
}

fn gateway(w: &mut World, name: &str, listeners: &str) {
    w.gateways.push(obj(&format!(
        "metadata: {{name: {name}, namespace: default, generation: 2}}\nspec:\n  gatewayClassName: kubewire\n  listeners:\n{listeners}"
    )));
}

fn http_route(w: &mut World, ns: &str, name: &str, created: &str, spec: &str) {
    w.http_routes.push(obj(&format!(
        "metadata: {{name: {name}, namespace: {ns}, generation: 3, creationTimestamp: '{created}'}}\nspec:\n{spec}"
    )));
}

const T0: &str = "2026-01-01T00:00:00Z";
const T1: &str = "2026-02-01T00:00:00Z";

fn status<'a>(c: &'a Compiled, kind: Kind, name: &str) -> &'a Value {
    &c.statuses
        .iter()
        .find(|u| u.kind == kind && u.name == name)
        .unwrap_or_else(|| panic!("no status for {kind:?} {name}: {:#?}", c.statuses))
        .status
}

fn cond<'a>(conds: &'a Value, ty: &str) -> (&'a str, &'a str) {
    let c = conds
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == ty)
        .unwrap_or_else(|| panic!("no {ty} in {conds}"));
    (c["status"].as_str().unwrap(), c["reason"].as_str().unwrap())
}

fn parent(c: &Compiled, kind: Kind, name: &str, ty: &str) -> (String, String) {
    let s = status(c, kind, name);
    let (a, b) = cond(&s["parents"][0]["conditions"], ty);
    (a.into(), b.into())
}

fn ok(s: &str) -> (String, String) {
    ("True".into(), s.into())
}

fn not(s: &str) -> (String, String) {
    ("False".into(), s.into())
}

fn hosts(c: &Config, port: u16) -> &crate::config::HttpHosts {
    match &c
        .listeners
        .iter()
        .find(|l| l.public_port == port)
        .unwrap()
        .kind
    {
        ListenerKind::Http(h) => h,
        ListenerKind::Tls { hosts, .. } => hosts,
        k => panic!("{k:?}"),
    }
}

fn routes(c: &Config, port: u16, host: &HostMatch) -> Vec<Route> {
    hosts(c, port)
        .hosts
        .iter()
        .find(|v| v.hostnames[0] == *host)
        .unwrap_or_else(|| panic!("no host {host:?}"))
        .routes
        .clone()
}

fn fwd(r: &Route) -> &Forward {
    match &r.action {
        Action::Forward(f) => f,
        a => panic!("{a:?}"),
    }
}

const HTTP: &str = "  - {name: http, port: 80, protocol: HTTP}";

#[test]
fn an_http_route_on_an_http_listener_with_every_status() {
    let mut w = world();
    gateway(&mut w, "gw", HTTP);
    http_route(
        &mut w,
        "default",
        "r",
        T0,
        "  parentRefs: [{name: gw}]\n  hostnames: [example.com]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    );
    let c = compile(&w);
    assert_eq!(
        cond(
            &status(&c, Kind::GatewayClass, "kubewire")["conditions"],
            "Accepted"
        ),
        ("True", "Accepted")
    );
    assert!(
        !c.statuses.iter().any(|u| u.name == "other"),
        "another controller's class is left alone"
    );
    let g = status(&c, Kind::Gateway, "gw");
    assert_eq!(cond(&g["conditions"], "Accepted"), ("True", "Accepted"));
    assert_eq!(cond(&g["conditions"], "Programmed"), ("True", "Programmed"));
    assert_eq!(
        g["addresses"],
        json!([{"type": "IPAddress", "value": "198.18.0.201"}])
    );
    let l = &g["listeners"][0];
    assert_eq!(l["attachedRoutes"], 1);
    assert_eq!(
        l["supportedKinds"],
        json!([{"group": GROUP, "kind": "HTTPRoute"}, {"group": GROUP, "kind": "GRPCRoute"}])
    );
    for (t, s, r) in [
        ("Accepted", "True", "Accepted"),
        ("Programmed", "True", "Programmed"),
        ("ResolvedRefs", "True", "ResolvedRefs"),
        ("Conflicted", "False", "NoConflicts"),
    ] {
        assert_eq!(cond(&l["conditions"], t), (s, r));
    }
    assert_eq!(g["conditions"][0]["observedGeneration"], 2);
    let r = status(&c, Kind::HttpRoute, "r");
    assert_eq!(r["parents"][0]["parentRef"], json!({"name": "gw"}));
    assert_eq!(r["parents"][0]["controllerName"], CONTROLLER_NAME);
    assert_eq!(parent(&c, Kind::HttpRoute, "r", "Accepted"), ok("Accepted"));
    assert_eq!(
        parent(&c, Kind::HttpRoute, "r", "ResolvedRefs"),
        ok("ResolvedRefs")
    );
    let rs = routes(&c.config, 80, &HostMatch::Exact("example.com".into()));
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].matches.path, PathMatch::Prefix("/".into()));
    assert_eq!(
        fwd(&rs[0]).backends[0].backend.as_ref().unwrap().service,
        "web"
    );
}

#[test]
fn no_address_yet_is_not_programmed() {
    let mut w = world();
    w.settings.addresses.clear();
    gateway(&mut w, "gw", HTTP);
    let c = compile(&w);
    let g = status(&c, Kind::Gateway, "gw");
    assert_eq!(
        cond(&g["conditions"], "Programmed"),
        ("False", "AddressNotAssigned")
    );
}

/// Conformance GatewayInvalidParametersRef: a parametersRef (to anything: this gateway
/// supports no parameters kind) is not accepted, and its listeners are not served.
#[test]
fn a_parameters_ref_is_invalid_parameters() {
    let mut w = world();
    w.gateways.push(obj(&format!(
        "metadata: {{name: gw, namespace: default, generation: 2}}\nspec:\n  gatewayClassName: kubewire\n  infrastructure:\n    parametersRef: {{group: invalid.io, kind: InvalidParameters, name: invalid}}\n  listeners:\n{HTTP}"
    )));
    let c = compile(&w);
    let g = status(&c, Kind::Gateway, "gw");
    assert_eq!(
        cond(&g["conditions"], "Accepted"),
        ("False", "InvalidParameters")
    );
    assert_eq!(cond(&g["conditions"], "Programmed"), ("False", "Invalid"));
    assert_eq!(
        cond(&g["listeners"][0]["conditions"], "Accepted"),
        ("False", "Pending")
    );
    assert!(c.config.listeners.is_empty(), "{:?}", c.config.listeners);
}

/// Conformance GatewayOptionalAddressValue: an address with a type and no value is
/// assigned one of the Service's; a value the gateway does not have is not usable.
#[test]
fn a_requested_address_without_a_value_is_assigned() {
    for (addresses, want) in [
        ("[{type: IPAddress}]", ("True", "Programmed")),
        ("[{type: Hostname}]", ("False", "AddressNotUsable")),
        (
            "[{type: IPAddress, value: 192.0.2.99}]",
            ("False", "AddressNotUsable"),
        ),
    ] {
        let mut w = world();
        w.gateways.push(obj(&format!(
            "metadata: {{name: gw, namespace: default, generation: 2}}\nspec:\n  gatewayClassName: kubewire\n  addresses: {addresses}\n  listeners:\n{HTTP}"
        )));
        let c = compile(&w);
        let g = status(&c, Kind::Gateway, "gw");
        assert_eq!(cond(&g["conditions"], "Programmed"), want, "{addresses}");
    }
}

/// Conformance HTTPRouteBackendRequestHeaderModifier: the same header filter on every
/// backendRef acts as the rule's; different ones, or a type the rule has itself, are not
/// supported.
#[test]
fn backend_ref_header_filters_act_as_the_rules() {
    let route = |refs: &str, rule_filters: &str| {
        let mut w = world();
        gateway(&mut w, "gw", HTTP);
        http_route(
            &mut w,
            "default",
            "b",
            T0,
            &format!(
                "  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: {refs}\n    filters: {rule_filters}\n"
            ),
        );
        compile(&w)
    };
    const SET: &str =
        "{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: a}]}}";
    let c = route(
        &format!("[{{name: web, port: 80, filters: [{SET}]}}]"),
        "[]",
    );
    assert_eq!(parent(&c, Kind::HttpRoute, "b", "Accepted"), ok("Accepted"));
    let rs = routes(&c.config, 80, &HostMatch::Any);
    let h = HeaderName::try_from("x-set").unwrap();
    assert_eq!(
        fwd(&rs[0]).request_headers.set,
        [(h, Template::literal("a"))]
    );
    for (refs, rule) in [
        (
            format!("[{{name: web, port: 80, filters: [{SET}]}}, {{name: web2, port: 8080}}]"),
            "[]".to_string(),
        ),
        (
            format!("[{{name: web, port: 80, filters: [{SET}]}}]"),
            format!("[{SET}]"),
        ),
    ] {
        let c = route(&refs, &rule);
        assert_eq!(
            parent(&c, Kind::HttpRoute, "b", "Accepted"),
            not("UnsupportedValue"),
            "{refs} {rule}"
        );
    }
}

#[test]
fn precedence_is_the_specifications() {
    let mut w = world();
    gateway(&mut w, "gw", HTTP);
    let backend = "backendRefs: [{name: web, port: 80}]";
    http_route(
        &mut w,
        "default",
        "young",
        T1,
        &format!(
            "  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]
    {backend}
  - matches: [{{path: {{type: PathPrefix, value: /a/b}}}}]
    {backend}
  - matches: [{{path: {{type: Exact, value: /a}}}}]
    {backend}
  - matches: [{{path: {{type: PathPrefix, value: /a}}, method: GET}}]
    {backend}
  - matches: [{{path: {{type: PathPrefix, value: /a}}, headers: [{{name: x, value: '1'}}]}}]
    {backend}
  - matches: [{{path: {{type: PathPrefix, value: /a}}, queryParams: [{{name: q, value: '1'}}]}}]
    {backend}
  - matches: [{{path: {{type: PathPrefix, value: /a}}, method: GET, headers: [{{name: x, value: '1'}}, {{name: y, value: '2'}}]}}]
    {backend}
"
        ),
    );
    http_route(
        &mut w,
        "default",
        "old-b",
        T0,
        &format!(
            "  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n    {backend}"
        ),
    );
    http_route(
        &mut w,
        "default",
        "old-a",
        T0,
        &format!(
            "  parentRefs: [{{name: gw}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: /a}}}}]\n    {backend}"
        ),
    );
    let c = compile(&w);
    let order: Vec<(String, usize)> = routes(&c.config, 80, &HostMatch::Any)
        .iter()
        .map(|r| (r.name.name.clone(), r.name.rule))
        .collect();
    let e = |n: &str, i| (n.to_string(), i);
    assert_eq!(
        order,
        [
            e("young", 2), // Exact
            e("young", 1), // longest prefix
            e("young", 6), // method, then two headers
            e("young", 3), // method
            e("young", 4), // a header
            e("young", 5), // a query parameter
            e("old-a", 0), // oldest, then by name
            e("old-b", 0),
            e("young", 0),
        ]
    );
}

#[test]
fn allowed_routes_namespaces_and_kinds() {
    let mut w = world();
    gateway(
        &mut w,
        "gw",
        "  - {name: same, port: 80, protocol: HTTP}
  - {name: all, port: 81, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: sel, port: 82, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {env: prod}}}}}
  - {name: grpc-only, port: 83, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}
  - {name: bad-kinds, port: 84, protocol: HTTP, allowedRoutes: {kinds: [{kind: TCPRoute}]}}",
    );
    let spec = |section: &str| {
        format!(
            "  parentRefs: [{{name: gw, namespace: default, sectionName: {section}}}]\n  rules: [{{backendRefs: [{{name: api, port: 80}}]}}]"
        )
    };
    for s in ["same", "all", "sel", "grpc-only"] {
        http_route(&mut w, "other", s, T0, &spec(s));
    }
    let c = compile(&w);
    assert_eq!(
        parent(&c, Kind::HttpRoute, "same", "Accepted"),
        not("NotAllowedByListeners")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "all", "Accepted"),
        ok("Accepted")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "sel", "Accepted"),
        ok("Accepted")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "grpc-only", "Accepted"),
        not("NotAllowedByListeners")
    );
    let g = status(&c, Kind::Gateway, "gw");
    let l = |i: usize| &g["listeners"][i];
    assert_eq!(l(0)["attachedRoutes"], 0);
    assert_eq!(l(1)["attachedRoutes"], 1);
    assert_eq!(l(2)["attachedRoutes"], 1);
    assert_eq!(
        cond(&l(4)["conditions"], "ResolvedRefs"),
        ("False", "InvalidRouteKinds")
    );
    assert_eq!(l(4)["supportedKinds"], json!([]));
    assert_eq!(
        cond(&g["conditions"], "Accepted"),
        ("True", "ListenersNotValid")
    );
    assert!(c.config.listeners.iter().any(|l| l.public_port == 81));
}

#[test]
fn hostnames_intersect_or_the_route_is_not_accepted() {
    let w_ = |h: &str| host_match(h, false);
    assert_eq!(intersect(&HostMatch::Any, &[]), [HostMatch::Any]);
    assert_eq!(
        intersect(
            &w_("*.example.com"),
            &["a.example.com".into(), "b.other.com".into()]
        ),
        [w_("a.example.com")]
    );
    assert_eq!(
        intersect(&w_("foo.example.com"), &["*.example.com".into()]),
        [w_("foo.example.com")]
    );
    assert_eq!(
        intersect(
            &w_("*.example.com"),
            &["*.a.example.com".into(), "*.com".into()]
        ),
        [w_("*.a.example.com"), w_("*.example.com")]
    );
    assert!(intersect(&w_("a.com"), &["b.com".into()]).is_empty());

    let mut w = world();
    gateway(
        &mut w,
        "gw",
        "  - {name: http, port: 80, protocol: HTTP, hostname: '*.example.com'}",
    );
    http_route(
        &mut w,
        "default",
        "miss",
        T0,
        "  parentRefs: [{name: gw}]\n  hostnames: [example.org]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    );
    http_route(
        &mut w,
        "default",
        "hit",
        T0,
        "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    );
    http_route(
        &mut w,
        "default",
        "section",
        T0,
        "  parentRefs: [{name: gw, sectionName: nope}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    );
    let c = compile(&w);
    assert_eq!(
        parent(&c, Kind::HttpRoute, "miss", "Accepted"),
        not("NoMatchingListenerHostname")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "hit", "Accepted"),
        ok("Accepted")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "section", "Accepted"),
        not("NoMatchingParent")
    );
    assert_eq!(
        routes(
            &c.config,
            80,
            &HostMatch::Wildcard {
                suffix: ".example.com".into(),
                one_label: false
            }
        )
        .len(),
        1
    );
}

#[test]
fn backend_refs_resolve_or_answer_500_for_their_share() {
    let mut w = world();
    gateway(&mut w, "gw", HTTP);
    let route =
        |refs: &str| format!("  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: {refs}");
    http_route(
        &mut w,
        "default",
        "missing",
        T0,
        &route("[{name: web, port: 80, weight: 3}, {name: nope, port: 80, weight: 1}]"),
    );
    http_route(
        &mut w,
        "default",
        "cross",
        T0,
        &route("[{name: api, namespace: other, port: 80}]"),
    );
    http_route(
        &mut w,
        "default",
        "kind",
        T0,
        &route("[{group: example.com, kind: Bucket, name: b}]"),
    );
    http_route(
        &mut w,
        "default",
        "none",
        T0,
        "  parentRefs: [{name: gw}]\n  rules: [{matches: [{path: {value: /none}}]}]",
    );
    let c = compile(&w);
    assert_eq!(
        parent(&c, Kind::HttpRoute, "missing", "ResolvedRefs"),
        not("BackendNotFound")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "missing", "Accepted"),
        ok("Accepted")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "cross", "ResolvedRefs"),
        not("RefNotPermitted")
    );
    assert_eq!(
        parent(&c, Kind::HttpRoute, "kind", "ResolvedRefs"),
        not("InvalidKind")
    );
    let rs = routes(&c.config, 80, &HostMatch::Any);
    let by = |n: &str| rs.iter().find(|r| r.name.name == n).unwrap();
    let m = fwd(by("missing"));
    assert_eq!(m.backends[0].weight, 3);
    assert!(m.backends[0].backend.is_some());
    assert_eq!(
        m.backends[1],
        WeightedBackend {
            weight: 1,
            backend: None
        }
    );
    assert_eq!(fwd(by("cross")).backends[0].backend, None);
    assert_eq!(
        by("none").action,
        Action::Respond(StatusCode::INTERNAL_SERVER_ERROR)
    );

    // A ReferenceGrant in the target's namespace allows the cross-namespace reference.
    w.reference_grants
        .push(obj("metadata: {name: g, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: default}]
  to: [{group: '', kind: Service}]"));
    let c = compile(&w);
    assert_eq!(
        parent(&c, Kind::HttpRoute, "cross", "ResolvedRefs"),
        ok("ResolvedRefs")
    );
    let rs = routes(&c.config, 80, &HostMatch::Any);
    let cross = rs.iter().find(|r| r.name.name == "cross").unwrap();
    assert_eq!(
        fwd(cross).backends[0].backend.as_ref().unwrap().namespace,
        "other"
    );
}

#[test]
fn filters_timeouts_and_retries() {
    let mut w = world();
    gateway(&mut w, "gw", HTTP);
    http_route(
        &mut w,
        "default",
        "f",
        T0,
        "  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-set, value: a}], add: [{name: x-add, value: b}], remove: [x-rm]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-resp, value: c}]}}
    - {type: URLRewrite, urlRewrite: {hostname: internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: web2, port: 8080}, percent: 25}}
    - {type: CORS, cors: {allowOrigins: ['https://*.example.com'], allowMethods: [GET], allowCredentials: true, maxAge: 60}}
    backendRefs: [{name: web, port: 80}]
    timeouts: {request: 10s, backendRequest: 2s}
    retry: {codes: [503], attempts: 2, backoff: 100ms}
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - {type: RequestRedirect, requestRedirect: {scheme: https, path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}
  - matches: [{path: {type: PathPrefix, value: /ext}}]
    filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]
    backendRefs: [{name: web, port: 80}]
",
    );
    let c = compile(&w);
    assert_eq!(
        parent(&c, Kind::HttpRoute, "f", "Accepted"),
        not("UnsupportedValue")
    );
    w.http_routes[0].spec.as_mut().unwrap().rules.pop();
    let c = compile(&w);
    assert_eq!(parent(&c, Kind::HttpRoute, "f", "Accepted"), ok("Accepted"));
    let rs = routes(&c.config, 80, &HostMatch::Any);
    let f = fwd(&rs[0]);
    let h = |n: &str| HeaderName::try_from(n).unwrap();
    assert_eq!(
        f.request_headers.set,
        [(h("x-set"), Template::literal("a"))]
    );
    assert_eq!(
        f.request_headers.add,
        [(h("x-add"), Template::literal("b"))]
    );
    assert_eq!(f.request_headers.remove, [h("x-rm")]);
    assert_eq!(
        f.response_headers.add,
        [(h("x-resp"), Template::literal("c"))]
    );
    assert_eq!(f.rewrite.hostname.as_deref(), Some("internal"));
    assert_eq!(
        f.rewrite.path,
        Some(PathRewrite::ReplacePrefix {
            prefix: "/api".into(),
            replacement: "/v2".into()
        })
    );
    assert_eq!(f.mirrors.len(), 1);
    assert_eq!(f.mirrors[0].percent, 25.0);
    assert_eq!(f.mirrors[0].backend.service, "web2");
    let cors = f.cors.as_ref().unwrap();
    assert_eq!(cors.allow_origins, ["https://*.example.com"]);
    assert_eq!(cors.max_age, Some(Duration::from_secs(60)));
    assert_eq!(f.request_timeout, Some(Duration::from_secs(10)));
    assert_eq!(f.backend_timeout, Some(Duration::from_secs(2)));
    let retry = f.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.statuses.as_slice()),
        (2, &[StatusCode::SERVICE_UNAVAILABLE][..])
    );
    assert_eq!(retry.backoff, Some(Duration::from_millis(100)));
    assert_eq!(
        rs[1].action,
        Action::Redirect(Redirect {
            scheme: Some("https".into()),
            hostname: None,
            port: None,
            path: Some(PathRewrite::Full("/new".into())),
            status: StatusCode::MOVED_PERMANENTLY,
        })
    );
}

#[test]
fn https_terminates_with_certificate_refs_and_grants() {
    let mut w = world();
    tls_secret(&mut w, "default", "cert");
    tls_secret(&mut w, "other", "cert2");
    gateway(
        &mut w,
        "gw",
        "  - {name: https, port: 443, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: cert}]}}
  - {name: cross, port: 443, protocol: HTTPS, hostname: b.example.com, tls: {certificateRefs: [{name: cert2, namespace: other}]}}
  - {name: missing, port: 443, protocol: HTTPS, hostname: c.example.com, tls: {certificateRefs: [{name: nope}]}}",
    );
    http_route(
        &mut w,
        "default",
        "r",
        T0,
        "  parentRefs: [{name: gw, sectionName: https}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    );
    let c = compile(&w);
    let g = status(&c, Kind::Gateway, "gw");
    assert_eq!(
        cond(&g["listeners"][0]["conditions"], "ResolvedRefs"),
        ("True", "ResolvedRefs")
    );
    assert_eq!(
        cond(&g["listeners"][1]["conditions"], "ResolvedRefs"),
        ("False", "RefNotPermitted")
    );
    assert_eq!(
        cond(&g["listeners"][2]["conditions"], "ResolvedRefs"),
        ("False", "InvalidCertificateRef")
    );
    assert_eq!(
        cond(&g["listeners"][2]["conditions"], "Programmed"),
        ("False", "Invalid")
    );
    let ListenerKind::Tls { certificates, .. } = &c.config.listeners[0].kind else {
        panic!()
    };
    assert_eq!(certificates.len(), 1);
    assert_eq!(
        certificates[0].hostnames,
        [HostMatch::Exact("a.example.com".into())]
    );
    assert_eq!(
        routes(&c.config, 443, &HostMatch::Exact("a.example.com".into())).len(),
        1
    );
}

#[test]
fn conflicts_between_listeners() {
    let mut w = world();
    gateway(
        &mut w,
        "gw",
        "  - {name: a, port: 80, protocol: HTTP}
  - {name: b, port: 80, protocol: HTTP}
  - {name: c, port: 80, protocol: TCP}
  - {name: d, port: 80, protocol: HTTP, hostname: d.example.com}
  - {name: e, port: 90, protocol: SCTP}",
    );
    gateway(&mut w, "gw2", "  - {name: t, port: 80, protocol: TCP}");
    let c = compile(&w);
    let g = status(&c, Kind::Gateway, "gw");
    let l = |i: usize, t: &str| {
        let (a, b) = cond(&g["listeners"][i]["conditions"], t);
        (a.to_string(), b.to_string())
    };
    assert_eq!(l(0, "Conflicted"), not("NoConflicts"));
    assert_eq!(l(1, "Conflicted"), ok("HostnameConflict"));
    assert_eq!(l(2, "Conflicted"), ok("ProtocolConflict"));
    assert_eq!(l(3, "Conflicted"), not("NoConflicts"));
    assert_eq!(l(4, "Accepted"), not("UnsupportedProtocol"));
    // Another Gateway's TCP listener on 80 does not meet gw's HTTP ones: each Gateway
    // has its own Service and ports.
    let g2 = status(&c, Kind::Gateway, "gw2");
    assert_eq!(
        cond(&g2["listeners"][0]["conditions"], "Conflicted"),
        ("False", "NoConflicts")
    );
    let bound: Vec<(u16, u16)> = c
        .config
        .listeners
        .iter()
        .map(|l| (l.port, l.public_port))
        .collect();
    assert_eq!(bound, [(20000, 80), (20001, 80)]);
}

/// Conformance HTTPRouteMultipleGateways: two Gateways with a listener on port 80 each
/// get a Service (and address) of their own, bound to ports of their own in the pods;
/// a route attached to both is served on both, one attached to one only on that one.
#[test]
fn each_gateway_has_its_own_service_and_ports() {
    let mut w = world();
    gateway(&mut w, "one", HTTP);
    gateway(&mut w, "two", HTTP);
    http_route(
        &mut w,
        "default",
        "both",
        T0,
        "  parentRefs: [{name: one}, {name: two}]\n  rules: [{matches: [{path: {value: /both}}], backendRefs: [{name: web, port: 80}]}]",
    );
    http_route(
        &mut w,
        "default",
        "only-two",
        T0,
        "  parentRefs: [{name: two}]\n  rules: [{backendRefs: [{name: web2, port: 8080}]}]",
    );
    let c = compile(&w);
    let names: Vec<&str> = c.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            services::service_name("kubewire-gateway", "default", "one"),
            services::service_name("kubewire-gateway", "default", "two"),
        ]
    );
    assert!(
        names
            .iter()
            .all(|n| n.len() <= 63 && n.starts_with("kubewire-gateway-default-"))
    );
    assert_eq!(c.services[0].ports, [((80, false), 20000)]);
    assert_eq!(c.services[1].ports, [((80, false), 20001)]);
    let served = |port: u16| -> Vec<String> {
        let l = c.config.listeners.iter().find(|l| l.port == port).unwrap();
        assert_eq!(l.public_port, 80);
        let ListenerKind::Http(h) = &l.kind else {
            panic!()
        };
        h.hosts
            .iter()
            .flat_map(|v| v.routes.iter().map(|r| r.name.name.clone()))
            .collect()
    };
    assert_eq!(served(20000), ["both"]);
    assert_eq!(served(20001), ["both", "only-two"]);
    // A listener on another port, and the one on 80 gone: 80's binding is freed, the new
    // port takes the lowest free one, and the other Gateway keeps its own.
    let mut w2 = w.clone();
    for s in &c.services {
        let manifest = s.manifest("kube-system", None);
        w2.services.insert(
            ("kube-system".into(), s.name.clone()),
            std::sync::Arc::new(serde_json::from_value(manifest).unwrap()),
        );
    }
    w2.gateways.remove(0);
    gateway(
        &mut w2,
        "one",
        "  - {name: alt, port: 8080, protocol: HTTP}",
    );
    let c2 = crate::compile(&w2);
    let one = c2.services.iter().find(|s| s.gateway.1 == "one").unwrap();
    let two = c2.services.iter().find(|s| s.gateway.1 == "two").unwrap();
    assert_eq!(two.ports, [((80, false), 20001)]);
    assert_eq!(one.ports, [((8080, false), 20000)]);
}

/// Conformance GatewayHTTPListenerIsolation, as compiled: each route's host is scoped to
/// the hostname of the listener it attached to (the data plane's part is tested with the
/// router).
#[test]
fn routes_are_scoped_to_their_listener() {
    let mut w = world();
    gateway(
        &mut w,
        "gw",
        "  - {name: empty, port: 80, protocol: HTTP}
  - {name: wild, port: 80, protocol: HTTP, hostname: '*.example.com'}",
    );
    for (name, section) in [("e", "empty"), ("x", "wild")] {
        http_route(
            &mut w,
            "default",
            name,
            T0,
            &format!(
                "  parentRefs: [{{name: gw, sectionName: {section}}}]\n  hostnames: [bar.example.com]\n  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]"
            ),
        );
    }
    let c = compile(&w);
    let scopes: Vec<(Option<HostMatch>, Vec<HostMatch>)> = hosts(&c.config, 80)
        .hosts
        .iter()
        .map(|v| (v.scope.clone(), v.hostnames.clone()))
        .collect();
    let bar = HostMatch::Exact("bar.example.com".into());
    let wild = HostMatch::Wildcard {
        suffix: ".example.com".into(),
        one_label: false,
    };
    assert_eq!(
        scopes,
        [
            (Some(HostMatch::Any), vec![bar.clone()]),
            (Some(wild), vec![bar]),
        ]
    );
}

#[test]
fn tls_passthrough_tcp_and_udp_routes() {
    let mut w = world();
    gateway(
        &mut w,
        "gw",
        "  - {name: tls, port: 8443, protocol: TLS, hostname: '*.example.com', tls: {mode: Passthrough}}
  - {name: tcp, port: 5432, protocol: TCP}
  - {name: udp, port: 53, protocol: UDP}",
    );
    w.tls_routes.push(obj(
        "metadata: {name: t, namespace: default}
spec: {parentRefs: [{name: gw}], hostnames: [db.example.com], rules: [{backendRefs: [{name: web, port: 80}]}]}",
    ));
    w.tcp_routes.push(obj(
        "metadata: {name: tcp, namespace: default}
spec: {parentRefs: [{name: gw, sectionName: tcp}], rules: [{backendRefs: [{name: web2, port: 8080}]}]}",
    ));
    w.udp_routes.push(obj(
        "metadata: {name: udp, namespace: default}
spec: {parentRefs: [{name: gw, sectionName: udp}], rules: [{backendRefs: [{name: nope, port: 53}]}]}",
    ));
    let c = compile(&w);
    assert_eq!(parent(&c, Kind::TlsRoute, "t", "Accepted"), ok("Accepted"));
    assert_eq!(
        parent(&c, Kind::TcpRoute, "tcp", "Accepted"),
        ok("Accepted")
    );
    assert_eq!(
        parent(&c, Kind::UdpRoute, "udp", "ResolvedRefs"),
        not("BackendNotFound")
    );
    let by_port = |p: u16| {
        &c.config
            .listeners
            .iter()
            .find(|l| l.public_port == p)
            .unwrap()
            .kind
    };
    let ListenerKind::Tls { passthrough, .. } = by_port(8443) else {
        panic!()
    };
    assert_eq!(
        passthrough[0].hostnames,
        [HostMatch::Exact("db.example.com".into())]
    );
    let ListenerKind::Tcp(b) = by_port(5432) else {
        panic!()
    };
    assert_eq!(b[0].backend.as_ref().unwrap().service, "web2");
    let ListenerKind::Udp(b) = by_port(53) else {
        panic!()
    };
    assert_eq!(b[0].backend, None);
}

#[test]
fn grpc_routes_match_service_and_method_paths_over_h2c() {
    let mut w = world();
    gateway(&mut w, "gw", HTTP);
    w.grpc_routes
        .push(obj("metadata: {name: g, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{method: {service: helloworld.Greeter, method: SayHello}}]
    backendRefs: [{name: grpc, port: 9000}]
  - matches: [{method: {service: helloworld.Greeter}}]
    backendRefs: [{name: grpc, port: 9000}]
  - matches: [{method: {method: Ping}}]
    backendRefs: [{name: grpc, port: 9000}]"));
    let c = compile(&w);
    assert_eq!(parent(&c, Kind::GrpcRoute, "g", "Accepted"), ok("Accepted"));
    let rs = routes(&c.config, 80, &HostMatch::Any);
    assert_eq!(
        rs[0].matches.path,
        PathMatch::Exact("/helloworld.Greeter/SayHello".into())
    );
    assert_eq!(
        rs[1].matches.path,
        PathMatch::StringPrefix("/helloworld.Greeter/".into())
    );
    assert_eq!(rs[2].matches.path, PathMatch::Regex("/[^/]+/Ping".into()));
    assert_eq!(
        fwd(&rs[0]).backends[0].backend.as_ref().unwrap().protocol,
        BackendProtocol::H2c
    );
}

#[test]
fn backend_tls_policies_originate_tls_to_their_services() {
    let mut w = world();
    gateway(&mut w, "gw", HTTP);
    http_route(
        &mut w,
        "default",
        "r",
        T0,
        "  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: web, port: 80}]}]",
    );
    w.config_maps.insert(
        ("default".into(), "ca".into()),
        yaml("metadata: {name: ca, namespace: default}\ndata: {ca.crt: PEM}"),
    );
    w.backend_tls_policies.push(obj(
        "metadata: {name: p, namespace: default}
spec:
  targetRefs: [{group: '', kind: Service, name: web}]
  validation: {caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}], hostname: web.example.com}",
    ));
    let c = compile(&w);
    let rs = routes(&c.config, 80, &HostMatch::Any);
    let tls = fwd(&rs[0]).backends[0]
        .backend
        .as_ref()
        .unwrap()
        .tls
        .clone()
        .unwrap();
    assert_eq!(tls.hostname, "web.example.com");
    assert_eq!(&*tls.ca_pem[0], b"PEM");
    let p = status(&c, Kind::BackendTlsPolicy, "p");
    assert_eq!(p["ancestors"][0]["ancestorRef"]["name"], "gw");
    assert_eq!(
        cond(&p["ancestors"][0]["conditions"], "Accepted"),
        ("True", "Accepted")
    );
}

#[test]
fn the_talks_ingress_and_mapping_share_port_80_and_a_gateway_has_its_own() {
    let mut w = world();
    service(
        &mut w,
        "default",
        "engine",
        &[("http", 80, None)],
        &["10.0.2.1"],
    );
    service(
        &mut w,
        "default",
        "quote",
        &[("http", 80, None)],
        &["10.0.2.2"],
    );
    gateway(&mut w, "gw", HTTP);
    http_route(
        &mut w,
        "default",
        "r",
        T0,
        "  parentRefs: [{name: gw}]\n  rules: [{matches: [{path: {value: /web}}], backendRefs: [{name: web, port: 80}]}]",
    );
    let mut ing: k8s_openapi::api::networking::v1::Ingress = yaml(include_str!(
        "../../../../examples/step4-outside-access/ingress-web-ingress.yaml"
    ));
    ing.metadata.namespace = Some("default".into());
    w.ingresses.push(ing);
    let mut m: Obj<crate::mapping::MappingSpec> = obj(include_str!(
        "../../../../examples/step4-outside-access/mapping-quote-backend.yaml"
    ));
    m.meta.namespace = Some("default".into());
    w.mappings.push(m);
    let c = compile(&w);
    let ports: Vec<(u16, u16)> = c
        .config
        .listeners
        .iter()
        .map(|l| (l.port, l.public_port))
        .collect();
    assert_eq!(ports, [(80, 80), (20000, 80)]);
    let names = |port: u16| -> Vec<&str> {
        let l = c.config.listeners.iter().find(|l| l.port == port).unwrap();
        let ListenerKind::Http(h) = &l.kind else {
            panic!()
        };
        h.hosts
            .iter()
            .flat_map(|v| v.routes.iter().map(|r| r.name.kind))
            .collect()
    };
    assert_eq!(names(80), ["Ingress", "Mapping"]);
    assert_eq!(names(20000), ["HTTPRoute"]);
    assert_eq!(
        c.statuses.iter().map(|u| u.kind).collect::<Vec<_>>(),
        [
            Kind::Ingress,
            Kind::GatewayClass,
            Kind::Gateway,
            Kind::HttpRoute,
            Kind::Mapping
        ]
    );
}
