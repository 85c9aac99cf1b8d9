//! Tier 4: the Gateway API conformance suite's GATEWAY-HTTP scenarios (v1.6.1), ported.
//! Each test is one upstream scenario (its `ShortName` in the test's doc): a fresh lab,
//! upstream's base manifests and the scenario's manifests applied unchanged (see
//! `tests/e2e/data/gateway-conformance/README.md`), the conditions upstream waits for,
//! then every request upstream sends, from `outside`, checked as upstream checks it
//! (`e2e::gateway_conformance`). docs/gateway.md has the table of scenarios.

use e2e::gateway_conformance::{Expect, INFRA, ListenerWant, Redirect, Request, Suite, WEB};

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";
const HTTPROUTE: &str = "httproutes.gateway.networking.k8s.io";

/// A request for `host` and `path` that must reach `backend` in `ns`.
fn reach<'a>(
    host: &'a str,
    path: &'a str,
    backend: &'a str,
    ns: &'a str,
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            host,
            path,
            ..Default::default()
        },
        Expect {
            backend,
            namespace: ns,
            ..Default::default()
        },
    )
}

/// A request for `host` and `path` that must be answered `status`.
fn answer<'a>(host: &'a str, path: &'a str, status: &'a [u16]) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            host,
            path,
            ..Default::default()
        },
        Expect {
            status,
            ..Default::default()
        },
    )
}

/// A request with `headers` that must reach `backend` in the infra namespace.
fn with_headers<'a>(
    headers: &'a [(&'a str, &'a str)],
    backend: &'a str,
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            path: "/",
            headers,
            ..Default::default()
        },
        Expect {
            backend,
            namespace: INFRA,
            ..Default::default()
        },
    )
}

fn run(suite: &Suite, addr: &str, cases: &[(Request<'_>, Expect<'_>)]) {
    for (req, expect) in cases {
        suite.expect(addr, req, expect);
    }
}

/// HTTPRouteSimpleSameNamespace.
#[test]
fn http_route_simple_same_namespace() {
    let s = Suite::up("httproute-simple-same-namespace");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "gateway-conformance-infra-test")],
    );
    run(&s, &addr, &[reach("", "/", V1, INFRA)]);
}

/// HTTPRouteMatching.
#[test]
fn http_route_matching() {
    let s = Suite::up("httproute-matching");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "matching")]);
    run(
        &s,
        &addr,
        &[
            reach("", "/", V1, INFRA),
            reach("", "/example", V1, INFRA),
            with_headers(&[("Version", "one")], V1),
            reach("", "/v2", V2, INFRA),
            reach("", "/v2/example", V2, INFRA),
            with_headers(&[("Version", "two")], V2),
            reach("", "/v2/", V2, INFRA),
            // Not a path segment prefix: not /v2.
            reach("", "/v2example", V1, INFRA),
            reach("", "/foo/v2/example", V1, INFRA),
        ],
    );
}

/// HTTPRouteExactPathMatching.
#[test]
fn http_route_exact_path_matching() {
    let s = Suite::up("httproute-exact-path-matching");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "exact-matching")]);
    run(
        &s,
        &addr,
        &[
            reach("", "/one", V1, INFRA),
            reach("", "/two", V2, INFRA),
            answer("", "/", &[404]),
            answer("", "/one/example", &[404]),
            answer("", "/two/", &[404]),
            answer("", "/Two", &[404]),
        ],
    );
}

/// HTTPRouteHostnameIntersection.
#[test]
fn http_route_hostname_intersection() {
    let s = Suite::up("httproute-hostname-intersection");
    let gw = (INFRA, "httproute-hostname-intersection");
    let addr = s.accepted(
        gw,
        &[
            (INFRA, "specific-host-matches-listener-specific-host"),
            (INFRA, "specific-host-matches-listener-wildcard-host"),
            (INFRA, "wildcard-host-matches-listener-specific-host"),
            (INFRA, "wildcard-host-matches-listener-wildcard-host"),
        ],
    );
    run(
        &s,
        &addr,
        &[
            reach("very.specific.com", "/s1", V1, INFRA),
            reach("very.specific.com:1234", "/s1", V1, INFRA),
            answer("non.matching.com", "/s1", &[404]),
            answer("foo.nonmatchingwildcard.io", "/s1", &[404]),
            answer("foo.wildcard.io", "/s1", &[404]),
            answer("very.specific.com", "/non-matching-prefix", &[404]),
            reach("foo.wildcard.io", "/s2", V2, INFRA),
            reach("bar.wildcard.io", "/s2", V2, INFRA),
            reach("foo.bar.wildcard.io", "/s2", V2, INFRA),
            answer("non.matching.com", "/s2", &[404]),
            answer("wildcard.io", "/s2", &[404]),
            answer("very.specific.com", "/s2", &[404]),
            answer("foo.wildcard.io", "/non-matching-prefix", &[404]),
            reach("very.specific.com", "/s3", V3, INFRA),
            answer("non.matching.com", "/s3", &[404]),
            answer("foo.specific.com", "/s3", &[404]),
            answer("foo.wildcard.io", "/s3", &[404]),
            answer("very.specific.com", "/non-matching-prefix", &[404]),
            reach("foo.anotherwildcard.io", "/s4", V1, INFRA),
            reach("bar.anotherwildcard.io", "/s4", V1, INFRA),
            reach("foo.bar.anotherwildcard.io", "/s4", V1, INFRA),
            answer("anotherwildcard.io", "/s4", &[404]),
            answer("foo.wildcard.io", "/s4", &[404]),
            answer("very.specific.com", "/s4", &[404]),
            answer("foo.anotherwildcard.io", "/non-matching-prefix", &[404]),
        ],
    );
    // A route none of whose hostnames intersects a listener's is not accepted.
    s.route_conditions(
        HTTPROUTE,
        (INFRA, "no-intersecting-hosts"),
        gw,
        &[("Accepted", "False", "NoMatchingListenerHostname")],
    );
    run(
        &s,
        &addr,
        &[
            answer("specific.but.wrong.com", "/s5", &[404]),
            answer("wildcard.io", "/s5", &[404]),
        ],
    );
    // Only accepted routes count in attachedRoutes.
    s.listeners(
        gw,
        &[("listener-1", 2), ("listener-2", 1), ("listener-3", 1)],
    );
    // A listener without a hostname takes every hostname of its routes.
    let all = (INFRA, "httproute-hostname-intersection-all");
    let addr = s.accepted(all, &[(INFRA, "httproute-hostname-intersection-all")]);
    run(
        &s,
        &addr,
        &[
            reach("first.com", "/", V2, INFRA),
            reach("sub.first.com", "/", V2, INFRA),
            reach("second.com", "/", V2, INFRA),
            reach("sub.second.com", "/", V2, INFRA),
            answer("third.com", "/", &[404]),
            answer("sub.third.com", "/", &[404]),
        ],
    );
}

/// HTTPRouteMultipleGateways: two Gateways, each with its own address; the shared route
/// answers on both, each dedicated `/` route only on its own Gateway.
#[test]
fn http_route_multiple_gateways() {
    let s = Suite::up("httproute-multiple-gateways");
    let same = s.accepted(
        (INFRA, "same-namespace"),
        &[
            (INFRA, "multiple-gateways-shared-route"),
            (INFRA, "same-namespace-dedicated-route"),
        ],
    );
    let all = s.accepted(
        (INFRA, "all-namespaces"),
        &[
            (INFRA, "multiple-gateways-shared-route"),
            (INFRA, "all-namespaces-dedicated-route"),
        ],
    );
    assert_ne!(same, all, "each Gateway has an address of its own");
    run(
        &s,
        &same,
        &[reach("", "/shared", V1, INFRA), reach("", "/", V2, INFRA)],
    );
    run(
        &s,
        &all,
        &[reach("", "/shared", V1, INFRA), reach("", "/", V3, INFRA)],
    );
}

/// GatewayHTTPListenerIsolation: a request is served only by the routes of the listener
/// whose hostname matches it most specifically, with hostnames on the listeners only,
/// and intersecting ones on the listeners and the routes.
#[test]
fn gateway_http_listener_isolation() {
    let s = Suite::up("gateway-http-listener-isolation");
    s.lab.apply(&e2e::gateway_conformance::manifest(
        "tests/gateway-http-listener-isolation-with-hostname-intersection.yaml",
    ));
    // Each host, and the one path of the four its listener serves.
    let cases = || -> Vec<(String, String, Option<&'static str>)> {
        let mut out = Vec::new();
        for (host, serving) in [
            ("bar.com", "/empty-hostname"),
            ("bar.example.com", "/wildcard-example-com"),
            ("bar.foo.example.com", "/wildcard-foo-example-com"),
            ("abc.foo.example.com", "/abc-foo-example-com"),
        ] {
            for path in [
                "/empty-hostname",
                "/wildcard-example-com",
                "/wildcard-foo-example-com",
                "/abc-foo-example-com",
            ] {
                out.push((
                    host.to_string(),
                    path.to_string(),
                    (path == serving).then_some(V1),
                ));
            }
        }
        out
    };
    for (gw, suffix) in [
        ("http-listener-isolation", ""),
        (
            "http-listener-isolation-with-hostname-intersection",
            "-with-hostname-intersection",
        ),
    ] {
        let routes: Vec<String> = [
            "attaches-to-empty-hostname",
            "attaches-to-wildcard-example-com",
            "attaches-to-wildcard-foo-example-com",
            "attaches-to-abc-foo-example-com",
        ]
        .iter()
        .map(|r| format!("{r}{suffix}"))
        .collect();
        let refs: Vec<(&str, &str)> = routes.iter().map(|r| (INFRA, r.as_str())).collect();
        let addr = s.accepted((INFRA, gw), &refs);
        let cases = cases();
        let expected: Vec<(Request<'_>, Expect<'_>)> = cases
            .iter()
            .map(|(host, path, backend)| match backend {
                Some(b) => reach(host, path, b, INFRA),
                None => answer(host, path, &[404]),
            })
            .collect();
        run(&s, &addr, &expected);
    }
}

/// HTTPRouteListenerHostnameMatching.
#[test]
fn http_route_listener_hostname_matching() {
    let s = Suite::up("httproute-listener-hostname-matching");
    let gw = (INFRA, "httproute-listener-hostname-matching");
    let addr = s.accepted(
        gw,
        &[
            (INFRA, "backend-v1"),
            (INFRA, "backend-v2"),
            (INFRA, "backend-v3"),
        ],
    );
    run(
        &s,
        &addr,
        &[
            reach("bar.com", "/", V1, INFRA),
            reach("foo.bar.com", "/", V2, INFRA),
            reach("baz.bar.com", "/", V3, INFRA),
            reach("boo.bar.com", "/", V3, INFRA),
            reach("multiple.prefixes.bar.com", "/", V3, INFRA),
            reach("multiple.prefixes.foo.com", "/", V3, INFRA),
            answer("foo.com", "/", &[404]),
            answer("no.matching.host", "/", &[404]),
        ],
    );
}

/// HTTPRouteHeaderMatching.
#[test]
fn http_route_header_matching() {
    let s = Suite::up("httproute-header-matching");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "header-matching")]);
    let not_found = |headers| {
        (
            Request {
                path: "/",
                headers,
                ..Default::default()
            },
            Expect {
                status: &[404],
                ..Default::default()
            },
        )
    };
    run(
        &s,
        &addr,
        &[
            with_headers(&[("Version", "one")], V1),
            with_headers(&[("Version", "two")], V2),
            with_headers(&[("Version", "two"), ("Color", "orange")], V1),
            with_headers(&[("Version", "two"), ("Color", "blue")], V2),
            not_found(&[("Color", "orange")]),
            not_found(&[("Some-Other-Header", "one")]),
            with_headers(&[("Color", "blue")], V1),
            with_headers(&[("Color", "green")], V1),
            with_headers(&[("Color", "red")], V2),
            with_headers(&[("Color", "yellow")], V2),
            not_found(&[("Color", "purple")]),
        ],
    );
}

/// HTTPRouteCrossNamespace.
#[test]
fn http_route_cross_namespace() {
    let s = Suite::up("httproute-cross-namespace");
    let addr = s.accepted((INFRA, "backend-namespaces"), &[(WEB, "cross-namespace")]);
    run(&s, &addr, &[reach("", "/", "web-backend", WEB)]);
}

/// HTTPRouteReferenceGrant.
#[test]
fn http_route_reference_grant() {
    let s = Suite::up("httproute-reference-grant");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "reference-grant")]);
    run(&s, &addr, &[reach("", "/", "web-backend", WEB)]);
    // Without the grant the backend is refused: 500.
    s.lab.kubectl(&[
        "delete",
        "referencegrants.gateway.networking.k8s.io",
        "-n",
        WEB,
        "reference-grant",
    ]);
    run(&s, &addr, &[answer("", "/", &[500])]);
}

/// A request to `path` with `headers` on which the backend (infra-backend-v1) must see
/// `seen` and not `absent`.
fn modified<'a>(
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    seen: &'a [(&'a str, &'a str)],
    absent: &'a [&'a str],
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            path,
            headers,
            ..Default::default()
        },
        Expect {
            backend: V1,
            namespace: INFRA,
            backend_headers: Some(seen),
            backend_absent: absent,
            ..Default::default()
        },
    )
}

/// HTTPRouteRequestHeaderModifier.
#[test]
fn http_route_request_header_modifier() {
    request_header_modifier("httproute-request-header-modifier");
}

/// The requests of HTTPRouteRequestHeaderModifier (and of its backendRef-filter variant)
/// on `scenario`'s route.
fn request_header_modifier(scenario: &str) {
    let s = Suite::up(scenario);
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "request-header-modifier")],
    );
    run(
        &s,
        &addr,
        &[
            modified(
                "/set",
                &[("Some-Other-Header", "val")],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "set-overwrites-values"),
                ],
                &[],
            ),
            modified(
                "/set",
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "some-other-value"),
                ],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "set-overwrites-values"),
                ],
                &[],
            ),
            modified(
                "/add",
                &[("Some-Other-Header", "val")],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "add-appends-values"),
                ],
                &[],
            ),
            modified(
                "/add",
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "some-other-value"),
                ],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "some-other-value,add-appends-values"),
                ],
                &[],
            ),
            modified(
                "/remove",
                &[("X-Header-Remove", "val")],
                &[],
                &["X-Header-Remove"],
            ),
            modified(
                "/multiple",
                &[
                    ("X-Header-Set-2", "set-val-2"),
                    ("X-Header-Add-2", "add-val-2"),
                    ("X-Header-Remove-2", "remove-val-2"),
                    ("Another-Header", "another-header-val"),
                ],
                &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "add-val-2,header-add-2"),
                    ("X-Header-Add-3", "header-add-3"),
                    ("Another-Header", "another-header-val"),
                ],
                &["X-Header-Remove-1", "X-Header-Remove-2"],
            ),
            modified(
                "/case-insensitivity",
                &[
                    ("x-header-set", "original-val-set"),
                    ("x-header-add", "original-val-add"),
                    ("x-header-remove", "original-val-remove"),
                    ("Another-Header", "another-header-val"),
                ],
                &[
                    ("X-Header-Set", "header-set"),
                    ("X-Header-Add", "original-val-add,header-add"),
                    ("Another-Header", "another-header-val"),
                ],
                &["x-header-remove", "X-Header-Remove"],
            ),
        ],
    );
}

/// HTTPRouteMatchingAcrossRoutes.
#[test]
fn http_route_matching_across_routes() {
    let s = Suite::up("httproute-matching-across-routes");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "matching-part1"), (INFRA, "matching-part2")],
    );
    let versioned = |path, version, backend| {
        (
            Request {
                host: "example.com",
                path,
                headers: version,
                ..Default::default()
            },
            Expect {
                backend,
                namespace: INFRA,
                ..Default::default()
            },
        )
    };
    run(
        &s,
        &addr,
        &[
            reach("example.com", "/", V1, INFRA),
            reach("example.com", "/example", V1, INFRA),
            reach("example.net", "/example", V1, INFRA),
            versioned("/example", &[("Version", "one")], V1),
            reach("example.com", "/v2", V2, INFRA),
            reach("example.net", "/v2", V1, INFRA),
            reach("example.com", "/v2/example", V2, INFRA),
            versioned("/", &[("Version", "two")], V2),
        ],
    );
}

/// HTTPRouteWeight: 500 requests split 70/30/0, each share within 5 points of its weight
/// (upstream's tolerance), up to 10 tries as upstream.
#[test]
fn http_route_weight() {
    let s = Suite::up("httproute-weight");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "weighted-backends")]);
    s.expect(
        &addr,
        &Request {
            path: "/",
            ..Default::default()
        },
        &Expect {
            namespace: INFRA,
            ..Default::default()
        },
    );
    let want = [0.7, 0.3, 0.0];
    let mut tries = Vec::new();
    for _ in 0..10 {
        let got = s.distribution(&addr, "/", 500, &[V1, V2, V3]);
        let shares: Vec<f64> = got.iter().map(|&c| c as f64 / 500.0).collect();
        if got[2] == 0 && shares.iter().zip(want).all(|(g, w)| (g - w).abs() <= 0.05) {
            return;
        }
        tries.push(got);
    }
    panic!("no try within tolerance of 70/30/0: {tries:?}");
}

/// HTTPRouteInvalidCrossNamespaceBackendRef.
#[test]
fn http_route_invalid_cross_namespace_backend_ref() {
    let s = Suite::up("httproute-invalid-cross-namespace-backend-ref");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "invalid-cross-namespace-backend-ref")],
        &[
            ("Accepted", "True", ""),
            ("ResolvedRefs", "False", "RefNotPermitted"),
        ],
    );
    run(&s, &addr, &[answer("", "/", &[500])]);
}

/// HTTPRouteInvalidNonExistentBackendRef.
#[test]
fn http_route_invalid_nonexistent_backend_ref() {
    let s = Suite::up("httproute-invalid-nonexistent-backendref");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "invalid-nonexistent-backend-ref")],
        &[
            ("Accepted", "True", ""),
            ("ResolvedRefs", "False", "BackendNotFound"),
        ],
    );
    run(&s, &addr, &[answer("", "/", &[500])]);
}

/// HTTPRouteInvalidBackendRefUnknownKind.
#[test]
fn http_route_invalid_backend_ref_unknown_kind() {
    let s = Suite::up("httproute-invalid-backendref-unknown-kind");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "invalid-backend-ref-unknown-kind")],
        &[
            ("Accepted", "True", ""),
            ("ResolvedRefs", "False", "InvalidKind"),
        ],
    );
    run(&s, &addr, &[answer("", "/v2", &[500])]);
}

/// HTTPRouteInvalidCrossNamespaceParentRef: a route in a namespace the listener does not
/// allow is not accepted (its references are resolved), and the Gateway counts no route.
#[test]
fn http_route_invalid_cross_namespace_parent_ref() {
    let s = Suite::up("httproute-invalid-cross-namespace-parent-ref");
    let gw = (INFRA, "same-namespace");
    s.accepted_with(
        gw,
        &[(WEB, "invalid-cross-namespace-parent-ref")],
        &[
            ("ResolvedRefs", "True", ""),
            ("Accepted", "False", "NotAllowedByListeners"),
        ],
    );
    s.listeners(gw, &[("http", 0)]);
}

/// HTTPRouteInvalidReferenceGrant: none of the grants covers the route's backend.
#[test]
fn http_route_invalid_reference_grant() {
    let s = Suite::up("httproute-invalid-reference-grant");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "reference-grant")],
        &[
            ("Accepted", "True", ""),
            ("ResolvedRefs", "False", "RefNotPermitted"),
        ],
    );
    run(&s, &addr, &[answer("", "/", &[500])]);
}

/// A request with `method`, `path` and `headers` that must reach `backend` (infra), or,
/// with an empty backend, be answered 404.
fn case<'a>(
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    backend: &'a str,
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            method,
            path,
            headers,
            ..Default::default()
        },
        if backend.is_empty() {
            Expect {
                status: &[404],
                ..Default::default()
            }
        } else {
            Expect {
                backend,
                namespace: INFRA,
                ..Default::default()
            }
        },
    )
}

/// HTTPRouteMethodMatching (extended: HTTPRouteMethodMatching).
#[test]
fn http_route_method_matching() {
    let s = Suite::up("httproute-method-matching");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "method-matching")]);
    let v = |n| [("version", n)];
    let (one, two, three, four) = (v("one"), v("two"), v("three"), v("four"));
    run(
        &s,
        &addr,
        &[
            case("POST", "/", &[], V1),
            case("GET", "/", &[], V2),
            case("HEAD", "/", &[], ""),
            case("GET", "/path1", &[], V1),
            case("PUT", "/", &one, V2),
            case("POST", "/path2", &two, V3),
            case("PATCH", "/path3", &[], V1),
            case("DELETE", "/path4", &three, V1),
            case("PUT", "/", &[], ""),
            case("DELETE", "/path4", &[], ""),
            case("PATCH", "/path5", &[], V1),
            case("PATCH", "/", &four, V2),
        ],
    );
}

/// HTTPRouteQueryParamMatching (extended: HTTPRouteQueryParamMatching).
#[test]
fn http_route_query_param_matching() {
    let s = Suite::up("httproute-query-param-matching");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "query-param-matching")],
    );
    let v = |n| [("version", n)];
    let (one, two, three, four) = (v("one"), v("two"), v("three"), v("four"));
    run(
        &s,
        &addr,
        &[
            case("", "/?animal=whale", &[], V1),
            case("", "/?animal=dolphin", &[], V2),
            case("", "/?animal=dolphin&color=blue", &[], V3),
            case("", "/?ANIMAL=Whale", &[], V3),
            case("", "/?animal=whale&otherparam=irrelevant", &[], V1),
            case("", "/?animal=dolphin&color=yellow", &[], V2),
            case("", "/?color=blue", &[], ""),
            case("", "/?animal=dog", &[], ""),
            case("", "/?animal=whaledolphin", &[], ""),
            case("", "/", &[], ""),
            case("", "/path1?animal=whale", &[], V1),
            case("", "/?animal=whale", &one, V2),
            case("", "/path2?animal=whale", &two, V3),
            case("", "/path3?animal=shark", &[], V1),
            case("", "/path4?animal=kraken", &three, V1),
            case("", "/?animal=shark", &[], ""),
            case("", "/path4?animal=kraken", &[], ""),
            case("", "/path5?animal=hydra", &[], V1),
            case("", "/?animal=hydra", &four, V3),
        ],
    );
}

/// HTTPRoutePathMatchOrder.
#[test]
fn http_route_path_match_order() {
    let s = Suite::up("httproute-path-match-order");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "path-matching-order")]);
    run(
        &s,
        &addr,
        &[
            reach("", "/match/exact/one", V3, INFRA),
            reach("", "/match/exact", V2, INFRA),
            reach("", "/match", V1, INFRA),
            reach("", "/match/prefix/one/any", V2, INFRA),
            reach("", "/match/prefix/any", V1, INFRA),
            reach("", "/match/any", V3, INFRA),
        ],
    );
}

/// A request (`method`, `path`) that must be redirected with `status` to `to`.
fn redirect<'a>(
    method: &'a str,
    path: &'a str,
    status: &'a [u16],
    to: Redirect<'a>,
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            method,
            path,
            ..Default::default()
        },
        Expect {
            status,
            redirect: Some(to),
            ..Default::default()
        },
    )
}

/// HTTPRouteRedirectHostAndStatus.
#[test]
fn http_route_redirect_host_and_status() {
    let s = Suite::up("httproute-redirect-host-and-status");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "redirect-host-and-status")],
    );
    let host = Redirect {
        host: "example.org",
        ..Default::default()
    };
    run(
        &s,
        &addr,
        &[
            redirect("", "/hostname-redirect", &[302], host),
            redirect("", "/host-and-status", &[301], host),
        ],
    );
}

/// HTTPRouteRedirectPath (extended: HTTPRoutePathRedirect).
#[test]
fn http_route_redirect_path() {
    let s = Suite::up("httproute-redirect-path");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "redirect-path")]);
    let to = |host, path| Redirect {
        host,
        path,
        ..Default::default()
    };
    run(
        &s,
        &addr,
        &[
            redirect(
                "",
                "/original-prefix/lemon",
                &[302],
                to("", "/replacement-prefix/lemon"),
            ),
            redirect(
                "",
                "/full/path/original",
                &[302],
                to("", "/full-path-replacement"),
            ),
            redirect(
                "",
                "/path-and-host",
                &[302],
                to("example.org", "/replacement-prefix"),
            ),
            redirect(
                "",
                "/path-and-status",
                &[301],
                to("", "/replacement-prefix"),
            ),
            redirect(
                "",
                "/full-path-and-host",
                &[302],
                to("example.org", "/replacement-full"),
            ),
            redirect(
                "",
                "/full-path-and-status",
                &[301],
                to("", "/replacement-full"),
            ),
        ],
    );
}

/// HTTPRouteRedirectScheme (extended: HTTPRouteSchemeRedirect).
#[test]
fn http_route_redirect_scheme() {
    let s = Suite::up("httproute-redirect-scheme");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "redirect-scheme")]);
    let to = |host| Redirect {
        scheme: "https",
        host,
        ..Default::default()
    };
    run(
        &s,
        &addr,
        &[
            redirect("", "/scheme", &[302], to("")),
            redirect("", "/scheme-and-host", &[302], to("example.org")),
            redirect("", "/scheme-and-status", &[301], to("")),
            redirect("", "/scheme-and-host-and-status", &[302], to("example.org")),
        ],
    );
}

/// HTTPRouteRedirectPort (extended: HTTPRoutePortRedirect).
#[test]
fn http_route_redirect_port() {
    let s = Suite::up("httproute-redirect-port");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "redirect-port")]);
    let to = |host| Redirect {
        host,
        port: "8083",
        ..Default::default()
    };
    run(
        &s,
        &addr,
        &[
            redirect("", "/port", &[302], to("")),
            redirect("", "/port-and-host", &[302], to("example.org")),
            redirect("", "/port-and-status", &[301], to("")),
            redirect("", "/port-and-host-and-status", &[302], to("example.org")),
        ],
    );
}

/// HTTPRoute303Redirect (extended: HTTPRoute303RedirectStatusCode).
#[test]
fn http_route_303_redirect() {
    let s = Suite::up("httproute-303-redirect");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "303-redirect")]);
    let to = Redirect {
        path: "/see-other",
        ..Default::default()
    };
    run(&s, &addr, &[redirect("POST", "/see-other", &[303], to)]);
}

/// HTTPRoute307Redirect (extended: HTTPRoute307RedirectStatusCode).
#[test]
fn http_route_307_redirect() {
    let s = Suite::up("httproute-307-redirect");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "307-redirect")]);
    let to = Redirect {
        path: "/temporary",
        ..Default::default()
    };
    run(&s, &addr, &[redirect("", "/temporary", &[307], to)]);
}

/// HTTPRoute308Redirect (extended: HTTPRoute308RedirectStatusCode).
#[test]
fn http_route_308_redirect() {
    let s = Suite::up("httproute-308-redirect");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "308-redirect")]);
    let to = Redirect {
        path: "/permanent",
        ..Default::default()
    };
    run(&s, &addr, &[redirect("", "/permanent", &[308], to)]);
}

/// A request (`host`, `path`, `headers`) that `backend` must see as `seen_host`,
/// `seen_path` with `seen` headers and without `absent` ones.
#[allow(clippy::too_many_arguments)]
fn rewritten<'a>(
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    backend: &'a str,
    seen_host: Option<&'a str>,
    seen_path: &'a str,
    seen: &'a [(&'a str, &'a str)],
    absent: &'a [&'a str],
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            host,
            path,
            headers,
            ..Default::default()
        },
        Expect {
            backend,
            namespace: INFRA,
            backend_host: seen_host,
            backend_path: Some(seen_path),
            backend_headers: Some(seen),
            backend_absent: absent,
            ..Default::default()
        },
    )
}

const MODIFY_IN: &[(&str, &str)] = &[
    ("X-Header-Remove", "remove-val"),
    ("X-Header-Add-Append", "append-val-1"),
];
const MODIFY_SEEN: &[(&str, &str)] = &[
    ("X-Header-Add", "header-val-1"),
    ("X-Header-Add-Append", "append-val-1,header-val-2"),
    ("X-Header-Set", "set-overwrites-values"),
];

/// HTTPRouteRewriteHost (extended: HTTPRouteHostRewrite).
#[test]
fn http_route_rewrite_host() {
    let s = Suite::up("httproute-rewrite-host");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "rewrite-host")]);
    let h = "rewrite.example";
    run(
        &s,
        &addr,
        &[
            rewritten(
                h,
                "/one",
                &[],
                V1,
                Some("one.example.org"),
                "/one",
                &[],
                &[],
            ),
            rewritten(h, "/two", &[], V2, Some("example.org"), "/two", &[], &[]),
            rewritten(
                h,
                "/rewrite-host-and-modify-headers",
                MODIFY_IN,
                V2,
                Some("test.example.org"),
                "/rewrite-host-and-modify-headers",
                MODIFY_SEEN,
                &["X-Header-Remove"],
            ),
        ],
    );
}

/// HTTPRouteRewritePath (extended: HTTPRoutePathRewrite).
#[test]
fn http_route_rewrite_path() {
    let s = Suite::up("httproute-rewrite-path");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "rewrite-path")]);
    let with_set: &[(&str, &str)] = &[
        ("X-Header-Remove", "remove-val"),
        ("X-Header-Add-Append", "append-val-1"),
        ("X-Header-Set", "set-val"),
    ];
    run(
        &s,
        &addr,
        &[
            rewritten("", "/prefix/one/two", &[], V1, None, "/one/two", &[], &[]),
            rewritten("", "/strip-prefix/three", &[], V1, None, "/three", &[], &[]),
            rewritten("", "/strip-prefix", &[], V1, None, "/", &[], &[]),
            rewritten("", "/full/one/two", &[], V1, None, "/one", &[], &[]),
            rewritten(
                "",
                "/full/rewrite-path-and-modify-headers/test",
                with_set,
                V1,
                None,
                "/test",
                MODIFY_SEEN,
                &["X-Header-Remove"],
            ),
            rewritten(
                "",
                "/prefix/rewrite-path-and-modify-headers/one",
                with_set,
                V1,
                None,
                "/prefix/one",
                MODIFY_SEEN,
                &["X-Header-Remove"],
            ),
        ],
    );
}

/// A request to `path` (with `headers`) whose answer from infra-backend-v1, which is asked
/// to set `backend_sets`, must carry `want` and lack `absent`.
fn response<'a>(
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    backend_sets: &'a [(&'a str, &'a str)],
    want: &'a [(&'a str, &'a str)],
    absent: &'a [&'a str],
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            path,
            headers,
            backend_sets,
            ..Default::default()
        },
        Expect {
            backend: V1,
            namespace: INFRA,
            response_headers: want,
            response_absent: absent,
            ..Default::default()
        },
    )
}

/// HTTPRouteResponseHeaderModifier (extended: HTTPRouteResponseHeaderModification).
#[test]
fn http_route_response_header_modifier() {
    let s = Suite::up("httproute-response-header-modifier");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "response-header-modifier")],
    );
    let both = response(
        "/response-and-request-header-modifiers",
        &[
            ("X-Header-Remove", "remove-val"),
            ("X-Header-Add-Append", "append-val-1"),
            ("X-Header-Echo", "echo"),
        ],
        &[
            ("X-Header-Set-2", "set-val-2"),
            ("X-Header-Add-2", "add-val-2"),
            ("X-Header-Remove-2", "remove-val-2"),
            ("Another-Header", "another-header-val"),
            ("X-Header-Remove-1", "remove-val-1"),
            ("X-Header-Echo", "echo"),
        ],
        &[
            ("X-Header-Set-1", "header-set-1"),
            ("X-Header-Set-2", "header-set-2"),
            ("X-Header-Add-1", "header-add-1"),
            ("X-Header-Add-2", "add-val-2,header-add-2"),
            ("Another-Header", "another-header-val"),
            ("X-Header-Echo", "echo"),
        ],
        &["X-Header-Remove-1", "X-Header-Remove-2"],
    );
    let both = (
        both.0,
        Expect {
            backend_headers: Some(&[
                ("X-Header-Add", "header-val-1"),
                ("X-Header-Set", "set-overwrites-values"),
                ("X-Header-Add-Append", "append-val-1,header-val-2"),
                ("X-Header-Echo", "echo"),
            ]),
            backend_absent: &["X-Header-Remove"],
            ..both.1
        },
    );
    run(
        &s,
        &addr,
        &[
            response(
                "/set",
                &[],
                &[("Some-Other-Header", "val")],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "set-overwrites-values"),
                ],
                &[],
            ),
            response(
                "/set",
                &[],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "some-other-value"),
                ],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Set", "set-overwrites-values"),
                ],
                &[],
            ),
            response(
                "/add",
                &[],
                &[("Some-Other-Header", "val")],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "add-appends-values"),
                ],
                &[],
            ),
            response(
                "/add",
                &[],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "some-other-value"),
                ],
                &[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "some-other-value,add-appends-values"),
                ],
                &[],
            ),
            response(
                "/remove",
                &[],
                &[("X-Header-Remove", "val")],
                &[],
                &["X-Header-Remove"],
            ),
            response(
                "/multiple",
                &[],
                &[
                    ("X-Header-Set-2", "set-val-2"),
                    ("X-Header-Add-2", "add-val-2"),
                    ("X-Header-Remove-2", "remove-val-2"),
                    ("Another-Header", "another-header-val"),
                    ("X-Header-Remove-1", "val"),
                ],
                &[
                    ("X-Header-Set-1", "header-set-1"),
                    ("X-Header-Set-2", "header-set-2"),
                    ("X-Header-Add-1", "header-add-1"),
                    ("X-Header-Add-2", "add-val-2,header-add-2"),
                    ("X-Header-Add-3", "header-add-3"),
                    ("Another-Header", "another-header-val"),
                ],
                &["X-Header-Remove-1", "X-Header-Remove-2"],
            ),
            response(
                "/case-insensitivity",
                &[],
                &[
                    ("x-header-set", "original-val-set"),
                    ("x-header-add", "original-val-add"),
                    ("x-header-remove", "original-val-remove"),
                    ("Another-Header", "another-header-val"),
                ],
                &[
                    ("X-Header-Set", "header-set"),
                    ("X-Header-Add", "original-val-add,header-add"),
                    ("X-Lowercase-Add", "lowercase-add"),
                    ("X-Mixedcase-Add-1", "mixedcase-add-1"),
                    ("X-Mixedcase-Add-2", "mixedcase-add-2"),
                    ("X-Uppercase-Add", "uppercase-add"),
                    ("Another-Header", "another-header-val"),
                ],
                &["x-header-remove", "X-Header-Remove"],
            ),
            both,
        ],
    );
}

/// GatewayWithAttachedRoutes: attachedRoutes counts accepted routes only, and is set even
/// on a listener whose certificate does not resolve.
#[test]
fn gateway_with_attached_routes() {
    let s = Suite::up("gateway-with-attached-routes");
    s.listeners((INFRA, "gateway-with-one-attached-route"), &[("http", 1)]);
    let two = (INFRA, "gateway-with-two-attached-routes");
    s.listeners(two, &[("http", 2)]);
    s.route_conditions(
        HTTPROUTE,
        (INFRA, "http-route-not-accepted"),
        two,
        &[("Accepted", "False", "NoMatchingListenerHostname")],
    );
    let unresolved = (
        INFRA,
        "unresolved-gateway-with-one-attached-unresolved-route",
    );
    s.gateway_must(
        unresolved,
        &[],
        Some(&[ListenerWant {
            name: "tls",
            attached: 1,
            kinds: &["HTTPRoute"],
            conditions: &[("Programmed", "False", ""), ("ResolvedRefs", "False", "")],
            ..Default::default()
        }]),
    );
    s.route_conditions(
        HTTPROUTE,
        (INFRA, "http-route-4"),
        unresolved,
        &[("ResolvedRefs", "False", "")],
    );
}

/// HTTPRouteServiceTypes: a Service with EndpointSlices written by hand, a headless one,
/// and a headless one with hand-written slices all reach infra-backend-v1's pods.
#[test]
fn http_route_service_types() {
    let s = Suite::up("httproute-service-types");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "service-types")]);
    // Fill the hand-written slices with infra-backend-v1's pods, per family, as upstream.
    let pods = s
        .lab
        .json(&["get", "pods", "-n", INFRA, "-l", "app=infra-backend-v1"]);
    for family in ["ip4", "ip6"] {
        let endpoints: Vec<serde_json::Value> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| {
                p["status"]["podIPs"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|ip| ip["ip"].as_str().map(str::to_owned))
                    .filter(|ip| ip.contains(':') == (family == "ip6"))
                    .map(|ip| {
                        serde_json::json!({
                            "addresses": [ip],
                            "conditions": {"ready": true, "serving": true, "terminating": false},
                            "nodeName": p["spec"]["nodeName"],
                            "targetRef": {
                                "kind": "Pod",
                                "name": p["metadata"]["name"],
                                "namespace": INFRA,
                                "uid": p["metadata"]["uid"],
                            },
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if endpoints.is_empty() {
            continue;
        }
        for slice in ["manual-endpointslices", "headless-manual-endpointslices"] {
            let patch = serde_json::json!({ "endpoints": endpoints }).to_string();
            s.lab.kubectl(&[
                "patch",
                "endpointslices.discovery.k8s.io",
                "-n",
                INFRA,
                &format!("{slice}-{family}"),
                "--type",
                "merge",
                "-p",
                &patch,
            ]);
        }
    }
    run(
        &s,
        &addr,
        &[
            reach("", "/manual-endpointslices", V1, INFRA),
            reach("", "/headless-manual-endpointslices", V1, INFRA),
            reach("", "/headless", V1, INFRA),
        ],
    );
}

/// HTTPRouteNoBackendRefs: a rule without backendRefs answers 500.
#[test]
fn http_route_no_backend_refs() {
    let s = Suite::up("httproute-omitted-backendrefs");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "omitted-backendrefs")]);
    run(
        &s,
        &addr,
        &[
            reach("", "/forward", V1, INFRA),
            answer("", "/omitted-no-forward", &[500]),
            answer("", "/empty-no-forward", &[500]),
        ],
    );
}

/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: the rule whose backend no grant
/// covers answers 500, its sibling is served.
#[test]
fn http_route_partially_invalid_via_invalid_reference_grant() {
    let s = Suite::up("httproute-partially-invalid-via-invalid-reference-grant");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "invalid-reference-grant")],
        &[
            ("Accepted", "True", ""),
            ("ResolvedRefs", "False", "RefNotPermitted"),
        ],
    );
    run(
        &s,
        &addr,
        &[
            answer("", "/v2", &[500]),
            reach("", "/", "app-backend-v1", e2e::gateway_conformance::APP),
        ],
    );
}

/// HTTPRouteInvalidParentRefNotMatchingSectionName.
#[test]
fn http_route_invalid_parent_ref_not_matching_section_name() {
    let s = Suite::up("httproute-invalid-parentref-not-matching-section-name");
    let gw = (INFRA, "same-namespace");
    s.accepted_with(
        gw,
        &[(INFRA, "httproute-listener-not-matching-section-name")],
        &[("Accepted", "False", "NoMatchingParent")],
    );
    s.listeners(gw, &[("http", 0)]);
}

/// HTTPRouteObservedGenerationBump: after an edit the route's conditions name its new
/// generation.
#[test]
fn http_route_observed_generation_bump() {
    let s = Suite::up("httproute-observed-generation-bump");
    let gw = (INFRA, "same-namespace");
    let route = (INFRA, "observed-generation-bump");
    let ok = [("Accepted", "True", ""), ("ResolvedRefs", "True", "")];
    s.accepted_with(gw, &[route], &ok);
    let before = s.get(HTTPROUTE, INFRA, route.1)["metadata"]["generation"].clone();
    s.lab.kubectl(&[
        "patch",
        HTTPROUTE,
        "-n",
        INFRA,
        route.1,
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/rules/0/backendRefs/0/name","value":"infra-backend-v2"}]"#,
    ]);
    // route_conditions also waits for every condition's observedGeneration to be the
    // route's generation.
    s.accepted_with(gw, &[route], &ok);
    let after = s.get(HTTPROUTE, INFRA, route.1)["metadata"]["generation"].clone();
    assert_ne!(before, after, "the edit did not bump the generation");
}

/// HTTPRouteNamedRule (extended: HTTPRouteNamedRouteRule).
#[test]
fn http_route_named_rule() {
    let s = Suite::up("httproute-named-rule");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "http-named-rules")]);
    run(
        &s,
        &addr,
        &[
            reach("", "/named", "", INFRA),
            reach("", "/unnamed", "", INFRA),
        ],
    );
}

/// HTTPRouteTimeoutRequest (extended: HTTPRouteRequestTimeout).
#[test]
fn http_route_timeout_request() {
    let s = Suite::up("httproute-timeout-request");
    let addr = s.accepted((INFRA, "same-namespace"), &[(INFRA, "request-timeout")]);
    run(
        &s,
        &addr,
        &[
            reach("", "/request-timeout", "", INFRA),
            answer("", "/request-timeout?delay=1s", &[504]),
            reach("", "/disable-request-timeout?delay=1s", "", INFRA),
        ],
    );
}

/// HTTPRouteTimeoutBackendRequest (extended: HTTPRouteBackendTimeout).
#[test]
fn http_route_timeout_backend_request() {
    let s = Suite::up("httproute-timeout-backend-request");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "backend-request-timeout")],
    );
    run(
        &s,
        &addr,
        &[
            reach("", "/backend-timeout", "", INFRA),
            answer("", "/backend-timeout?delay=1s", &[504]),
            reach("", "/disable-backend-timeout?delay=1s", "", INFRA),
        ],
    );
}

/// A request that must reach infra-backend-v1 and be mirrored to each of `mirrors`
/// (Deployments in infra): upstream's `ExpectMirroredRequest` reads the mirrors' logs.
fn expect_mirrored(
    s: &Suite,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    seen: Option<&[(&str, &str)]>,
    mirrors: &[&str],
) {
    let target = format!("{path}?reqId={}", e2e::unique_name("m"));
    let expect = Expect {
        backend: V1,
        namespace: INFRA,
        backend_headers: seen,
        backend_absent: if seen.is_some() {
            &["X-Header-Remove"]
        } else {
            &[]
        },
        ..Default::default()
    };
    s.expect(
        addr,
        &Request {
            path: &target,
            headers,
            ..Default::default()
        },
        &expect,
    );
    for m in mirrors {
        assert!(
            e2e::wait_until(std::time::Duration::from_secs(30), || s
                .echoed(INFRA, m, &target)
                > 0),
            "{target} was not mirrored to {m}"
        );
    }
}

/// HTTPRouteRequestMirror (extended: HTTPRouteRequestMirror).
#[test]
fn http_route_request_mirror() {
    let s = Suite::up("httproute-request-mirror");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "request-mirror")],
        &[("Accepted", "True", "")],
    );
    expect_mirrored(&s, &addr, "/mirror", &[], None, &[V2]);
    expect_mirrored(
        &s,
        &addr,
        "/mirror-and-modify-headers",
        MODIFY_IN,
        Some(MODIFY_SEEN),
        &[V2],
    );
}

/// HTTPRouteRequestMultipleMirrors (extended: HTTPRouteRequestMultipleMirrors).
#[test]
fn http_route_request_multiple_mirrors() {
    let s = Suite::up("httproute-request-multiple-mirrors");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "request-multiple-mirrors")],
        &[("Accepted", "True", "")],
    );
    expect_mirrored(&s, &addr, "/multi-mirror", &[], None, &[V2, V3]);
    expect_mirrored(
        &s,
        &addr,
        "/multi-mirror-and-modify-request-headers",
        MODIFY_IN,
        Some(MODIFY_SEEN),
        &[V2, V3],
    );
}

/// A CORS preflight (`OPTIONS`) to `path` with `headers`: 200 or 204 (or `also`), from
/// the gateway or the backend, with response headers one of `one_of`, exactly `exact`,
/// and without `absent`.
fn preflight<'a>(
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    also: &'a [u16],
    one_of: &'a [(&'a str, &'a [&'a str])],
    exact: &'a [(&'a str, &'a str)],
    absent: &'a [&'a str],
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            method: "OPTIONS",
            path,
            headers,
            ..Default::default()
        },
        Expect {
            status: also,
            gateway_answers: true,
            response_one_of: one_of,
            response_headers: exact,
            response_absent: absent,
            ignore_whitespace: true,
            ..Default::default()
        },
    )
}

/// A CORS request (`method`) that infra-backend-v1 answers, with response headers as
/// for [`preflight`].
fn cors_simple<'a>(
    method: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    one_of: &'a [(&'a str, &'a [&'a str])],
    absent: &'a [&'a str],
) -> (Request<'a>, Expect<'a>) {
    (
        Request {
            method,
            path,
            headers,
            ..Default::default()
        },
        Expect {
            namespace: INFRA,
            response_one_of: one_of,
            response_absent: absent,
            ..Default::default()
        },
    )
}

/// HTTPRouteCORS (extended: HTTPRouteCORS).
#[test]
fn http_route_cors() {
    let s = Suite::up("httproute-cors");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[
            (INFRA, "cors-multiple-origins-methods-headers"),
            (INFRA, "cors-wildcard-methods"),
            (INFRA, "cors-wildcard-origin"),
            (INFRA, "cors-wildcard-methods-headers"),
        ],
    );
    const OK: &[u16] = &[200, 204];
    let ask = |origin| {
        [
            ("Origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "x-header-1, x-header-2"),
        ]
    };
    let (foo, bar, xpto) = (
        ask("https://www.foo.com"),
        ask("https://www.bar.com"),
        ask("https://xpto.www.bar.com"),
    );
    let granted =
        |origin: &'static [&'static str]| -> [(&'static str, &'static [&'static str]); 6] {
            [
                ("access-control-allow-origin", origin),
                (
                    "access-control-allow-methods",
                    &["GET, OPTIONS", "OPTIONS, GET"],
                ),
                (
                    "access-control-allow-headers",
                    &["x-header-1, x-header-2", "x-header-2, x-header-1"],
                ),
                (
                    "access-control-expose-headers",
                    &["x-header-3, x-header-4", "x-header-4, x-header-3"],
                ),
                ("access-control-max-age", &["3600"]),
                ("access-control-allow-credentials", &["true"]),
            ]
        };
    let (g_foo, g_bar, g_xpto) = (
        granted(&["https://www.foo.com"]),
        granted(&["https://www.bar.com"]),
        granted(&["https://xpto.www.bar.com"]),
    );
    let foobar = [
        ("Origin", "https://foobar.com"),
        ("access-control-request-method", "GET"),
    ];
    let post_foo = [
        ("Origin", "https://www.foo.com"),
        ("access-control-request-method", "POST"),
    ];
    let put = |origin| [("Origin", origin), ("access-control-request-method", "PUT")];
    let (put_foobar, put_foobar_port) =
        (put("https://foobar.com"), put("https://foobar.com:12345"));
    let other = [
        ("Origin", "https://other.foo.com"),
        ("access-control-request-method", "PUT"),
        ("access-control-request-headers", "x-header-1, x-header-2"),
    ];
    let other_get = [("Origin", "https://other.foo.com")];
    const NO_CREDS: &[&str] = &["access-control-allow-credentials"];
    run(
        &s,
        &addr,
        &[
            preflight("/cors-1", &foo, OK, &g_foo, &[], &[]),
            preflight("/cors-1", &bar, OK, &g_bar, &[], &[]),
            preflight("/cors-1", &xpto, OK, &g_xpto, &[], &[]),
            preflight(
                "/cors-1",
                &foobar,
                &[200, 204, 403],
                &[],
                &[],
                &["access-control-allow-origin"],
            ),
            cors_simple(
                "GET",
                "/cors-1",
                &foo,
                &[("access-control-allow-origin", &["https://www.foo.com"])],
                &[],
            ),
            cors_simple(
                "GET",
                "/cors-1",
                &bar,
                &[("access-control-allow-origin", &["https://www.bar.com"])],
                &[],
            ),
            cors_simple(
                "GET",
                "/cors-1",
                &foobar,
                &[],
                &["access-control-allow-origin"],
            ),
            preflight(
                "/cors-2",
                &post_foo,
                OK,
                &[("access-control-allow-methods", &["POST", "*"])],
                &[("access-control-allow-origin", "https://www.foo.com")],
                NO_CREDS,
            ),
            preflight("/cors-2", &post_foo, OK, &[], &[], NO_CREDS),
            preflight(
                "/cors-wildcard-origin",
                &put_foobar,
                OK,
                &[
                    ("access-control-allow-origin", &["https://foobar.com", "*"]),
                    ("access-control-allow-methods", &["PUT"]),
                ],
                &[],
                NO_CREDS,
            ),
            preflight(
                "/cors-wildcard-origin",
                &put_foobar_port,
                OK,
                &[
                    (
                        "access-control-allow-origin",
                        &["https://foobar.com:12345", "*"],
                    ),
                    ("access-control-allow-methods", &["PUT"]),
                ],
                &[],
                NO_CREDS,
            ),
            cors_simple(
                "PUT",
                "/cors-wildcard-origin",
                &[("Origin", "https://foobar.com:12345")],
                &[(
                    "access-control-allow-origin",
                    &["https://foobar.com:12345", "*"],
                )],
                &[],
            ),
            cors_simple(
                "PUT",
                "/cors-wildcard-origin",
                &[("Origin", "https://foobar.com")],
                &[("access-control-allow-origin", &["https://foobar.com", "*"])],
                NO_CREDS,
            ),
            preflight(
                "/cors-wildcard-methods-headers",
                &other,
                OK,
                &[
                    ("access-control-allow-origin", &["https://other.foo.com"]),
                    ("access-control-allow-methods", &["PUT"]),
                    (
                        "access-control-allow-headers",
                        &["x-header-1, x-header-2", "x-header-2, x-header-1"],
                    ),
                    ("access-control-allow-credentials", &["true"]),
                ],
                &[],
                &[],
            ),
            preflight(
                "/cors-wildcard-methods-headers-unauth",
                &other,
                OK,
                &[
                    (
                        "access-control-allow-origin",
                        &["https://other.foo.com", "*"],
                    ),
                    ("access-control-allow-methods", &["PUT", "*"]),
                    (
                        "access-control-allow-headers",
                        &["x-header-1, x-header-2", "x-header-2, x-header-1", "*"],
                    ),
                ],
                &[],
                NO_CREDS,
            ),
            cors_simple(
                "GET",
                "/cors-wildcard-methods-headers",
                &other_get,
                &[
                    ("access-control-allow-origin", &["https://other.foo.com"]),
                    ("access-control-allow-credentials", &["true"]),
                ],
                &[],
            ),
            cors_simple(
                "GET",
                "/cors-wildcard-methods-headers-unauth",
                &other_get,
                &[(
                    "access-control-allow-origin",
                    &["https://other.foo.com", "*"],
                )],
                NO_CREDS,
            ),
        ],
    );
}

/// A route with its references resolved that no listener of `gw` takes, for `reason`,
/// and a Gateway with no route attached.
fn not_attached(s: &Suite, gw: (&str, &str), route: &str, reason: &str) {
    s.accepted_with(
        gw,
        &[(INFRA, route)],
        &[("ResolvedRefs", "True", ""), ("Accepted", "False", reason)],
    );
    s.zero_routes(gw);
}

/// HTTPRouteInvalidParentRefNotMatchingListenerPort (extended:
/// HTTPRouteDestinationPortMatching).
#[test]
fn http_route_invalid_parent_ref_not_matching_listener_port() {
    let s = Suite::up("httproute-invalid-parentref-not-matching-listener-port");
    not_attached(
        &s,
        (INFRA, "same-namespace"),
        "httproute-listener-not-matching-route-port",
        "NoMatchingParent",
    );
}

/// HTTPRouteInvalidParentRefSectionNameNotMatchingPort (extended: HTTPRouteParentRefPort).
#[test]
fn http_route_invalid_parent_ref_section_name_not_matching_port() {
    let s = Suite::up("httproute-invalid-parentref-section-name-not-matching-port");
    not_attached(
        &s,
        (
            INFRA,
            "gateway-with-one-not-matching-port-and-section-name-route",
        ),
        "httproute-listener-section-name-not-matching-port",
        "NoMatchingParent",
    );
}

/// HTTPRouteDisallowedKind (core, with TLSRoute): a listener for TLSRoutes only takes no
/// HTTPRoute.
#[test]
fn http_route_disallowed_kind() {
    let s = Suite::up("httproute-disallowed-kind");
    not_attached(
        &s,
        (INFRA, "tlsroutes-only"),
        "disallowed-kind",
        "NotAllowedByListeners",
    );
}

/// GatewayInvalidRouteKind: a listener allowing only an unknown kind has none supported
/// and ResolvedRefs False (InvalidRouteKinds); with HTTPRoute beside it, HTTPRoute stays.
#[test]
fn gateway_invalid_route_kind() {
    let s = Suite::up("gateway-invalid-route-kind");
    let invalid = [("ResolvedRefs", "False", "InvalidRouteKinds")];
    for (gw, kinds) in [
        ("gateway-only-invalid-route-kind", &[][..]),
        (
            "gateway-supported-and-invalid-route-kind",
            &["HTTPRoute"][..],
        ),
    ] {
        s.gateway_must(
            (INFRA, gw),
            &[],
            Some(&[ListenerWant {
                name: "http",
                attached: 0,
                kinds,
                conditions: &invalid,
                ..Default::default()
            }]),
        );
    }
}

/// GatewayListenerUnsupportedProtocol: a Gateway whose only listener has an unknown
/// protocol is not accepted (ListenersNotValid); with a valid listener beside it, it is,
/// and each listener says which it is.
#[test]
fn gateway_listener_unsupported_protocol() {
    let s = Suite::up("gateway-invalid-listeners-unsupported-protocol");
    let unsupported = ListenerWant {
        name: "invalid",
        attached: 0,
        kinds: &[],
        conditions: &[("Accepted", "False", "UnsupportedProtocol")],
        ..Default::default()
    };
    s.gateway_must(
        (INFRA, "gateway-only-unsupported-protocols"),
        &[("Accepted", "False", "ListenersNotValid")],
        Some(&[unsupported]),
    );
    s.gateway_must(
        (INFRA, "gateway-supported-and-unsupported-protocols"),
        &[("Accepted", "True", "ListenersNotValid")],
        Some(&[
            ListenerWant {
                name: "http",
                attached: 0,
                kinds: &["HTTPRoute", "GRPCRoute"],
                conditions: &[("Accepted", "True", "Accepted")],
                ..Default::default()
            },
            unsupported,
        ]),
    );
}

/// GatewayInvalidParametersRef: a parametersRef to nothing: Accepted False
/// (InvalidParameters).
#[test]
fn gateway_invalid_parameters_ref() {
    let s = Suite::up("gateway-invalid-parameters-ref");
    s.gateway_must(
        (INFRA, "gateway-invalid-parameters-ref"),
        &[("Accepted", "False", "InvalidParameters")],
        None,
    );
}

/// GatewayObservedGenerationBump: a listener added, the conditions name the new
/// generation.
#[test]
fn gateway_observed_generation_bump() {
    let s = Suite::up("gateway-observed-generation-bump");
    let gw = (INFRA, "gateway-observed-generation-bump");
    s.gateway_must(gw, &[("Accepted", "True", "")], None);
    let before =
        s.get("gateways.gateway.networking.k8s.io", gw.0, gw.1)["metadata"]["generation"].clone();
    s.lab.kubectl(&[
        "patch",
        "gateways.gateway.networking.k8s.io",
        "-n",
        gw.0,
        gw.1,
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/spec/listeners/-","value":{"name":"alternate","hostname":"foo.com","port":80,"protocol":"HTTP","allowedRoutes":{"namespaces":{"from":"All"}}}}]"#,
    ]);
    let after =
        s.get("gateways.gateway.networking.k8s.io", gw.0, gw.1)["metadata"]["generation"].clone();
    assert_ne!(before, after, "the edit did not bump the generation");
    s.gateway_must(gw, &[("Accepted", "True", "")], None);
}

/// GatewayClassObservedGenerationBump: the class's Accepted condition follows its
/// generation.
#[test]
fn gateway_class_observed_generation_bump() {
    let s = Suite::up("gatewayclass-observed-generation-bump");
    let name = "gatewayclass-observed-generation-bump";
    let latest = || {
        let c = s
            .lab
            .json(&["get", "gatewayclasses.gateway.networking.k8s.io", name]);
        let generation = c["metadata"]["generation"].clone();
        let conds = &c["status"]["conditions"];
        let ok = conds.as_array().is_some_and(|cs| {
            !cs.is_empty() && cs.iter().all(|x| x["observedGeneration"] == generation)
        }) && e2e::gateway_conformance::condition(conds, "Accepted").is_some();
        ok.then_some(generation)
    };
    assert!(
        e2e::wait_until(std::time::Duration::from_secs(60), || latest().is_some()),
        "{}",
        s.lab
            .kubectl(&["get", "gatewayclasses", name, "-o", "yaml"])
    );
    let before = latest().unwrap();
    s.lab.kubectl(&[
        "patch",
        "gatewayclasses.gateway.networking.k8s.io",
        name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"description":"new"}}"#,
    ]);
    assert!(
        e2e::wait_until(std::time::Duration::from_secs(60), || latest()
            .is_some_and(|g| g != before)),
        "{}",
        s.lab
            .kubectl(&["get", "gatewayclasses", name, "-o", "yaml"])
    );
}

/// HTTPRouteHTTPSListener: TLS ends at the gateway with the listener's certificate; the
/// route's hostname and the listener's select the backend.
#[test]
fn http_route_https_listener() {
    let s = Suite::up("httproute-https-listener");
    let addr = s.accepted(
        (INFRA, "same-namespace-with-https-listener"),
        &[
            (INFRA, "httproute-https-test"),
            (INFRA, "httproute-https-test-no-hostname"),
        ],
    );
    let https = |host, backend, status| {
        (
            Request {
                host,
                path: "/",
                https: true,
                ..Default::default()
            },
            Expect {
                status,
                backend,
                namespace: INFRA,
                ..Default::default()
            },
        )
    };
    run(
        &s,
        &addr,
        &[
            https("example.org", V1, &[200]),
            https("unknown-example.org", "", &[404]),
            https("second-example.org", V2, &[200]),
        ],
    );
}

/// GatewayInvalidTLSConfiguration: a certificateRef to a missing Secret, another group or
/// kind, or a malformed Secret: ResolvedRefs False (InvalidCertificateRef).
#[test]
fn gateway_invalid_tls_configuration() {
    let s = Suite::up("gateway-invalid-tls-configuration");
    for gw in [
        "gateway-certificate-nonexistent-secret",
        "gateway-certificate-unsupported-group",
        "gateway-certificate-unsupported-kind",
        "gateway-certificate-malformed-secret",
    ] {
        s.gateway_must(
            (INFRA, gw),
            &[],
            Some(&[ListenerWant {
                name: "https",
                attached: 0,
                kinds: &["HTTPRoute", "GRPCRoute"],
                conditions: &[("ResolvedRefs", "False", "InvalidCertificateRef")],
                ..Default::default()
            }]),
        );
    }
}

/// A Gateway whose HTTPS listener's certificate is in another namespace: `conditions`.
fn secret_grant(scenario: &str, conditions: &[(&str, &str, &str)]) {
    let s = Suite::up(scenario);
    s.gateway_must(
        (INFRA, scenario),
        &[],
        Some(&[ListenerWant {
            name: "https",
            attached: 0,
            kinds: &["HTTPRoute", "GRPCRoute"],
            conditions,
            ..Default::default()
        }]),
    );
}

/// GatewaySecretMissingReferenceGrant.
#[test]
fn gateway_secret_missing_reference_grant() {
    secret_grant(
        "gateway-secret-missing-reference-grant",
        &[("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

/// GatewaySecretInvalidReferenceGrant: none of the grants covers the Secret.
#[test]
fn gateway_secret_invalid_reference_grant() {
    secret_grant(
        "gateway-secret-invalid-reference-grant",
        &[("ResolvedRefs", "False", "RefNotPermitted")],
    );
}

/// GatewaySecretReferenceGrantAllInNamespace.
#[test]
fn gateway_secret_reference_grant_all_in_namespace() {
    secret_grant(
        "gateway-secret-reference-grant-all-in-namespace",
        &[
            ("Programmed", "True", "Programmed"),
            ("ResolvedRefs", "True", ""),
        ],
    );
}

/// GatewaySecretReferenceGrantSpecific.
#[test]
fn gateway_secret_reference_grant_specific() {
    secret_grant(
        "gateway-secret-reference-grant-specific",
        &[
            ("Programmed", "True", "Programmed"),
            ("ResolvedRefs", "True", ""),
        ],
    );
}

/// GatewayModifyListeners: a listener added becomes available with its route attached; a
/// listener removed leaves only the other.
#[test]
fn gateway_modify_listeners() {
    let s = Suite::up("gateway-modify-listeners");
    const GW: &str = "gateways.gateway.networking.k8s.io";
    let ok: &[(&str, &str, &str)] = &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")];
    let listener = |name| ListenerWant {
        name,
        attached: 1,
        kinds: &["HTTPRoute", "GRPCRoute"],
        conditions: ok,
        ..Default::default()
    };
    let add = (INFRA, "gateway-add-listener");
    s.gateway_must(add, &[], Some(&[listener("https")]));
    let before = s.get(GW, INFRA, add.1)["metadata"]["generation"].clone();
    s.lab.kubectl(&[
        "patch",
        GW,
        "-n",
        INFRA,
        add.1,
        "--type",
        "json",
        "-p",
        r#"[{"op":"add","path":"/spec/listeners/-","value":{"name":"http","port":80,"protocol":"HTTP","hostname":"data.test.com","allowedRoutes":{"namespaces":{"from":"All"}}}}]"#,
    ]);
    s.gateway_must(add, &[], Some(&[listener("https"), listener("http")]));
    assert_ne!(before, s.get(GW, INFRA, add.1)["metadata"]["generation"]);

    let remove = (INFRA, "gateway-remove-listener");
    s.gateway_must(remove, &[], Some(&[listener("https"), listener("http")]));
    let before = s.get(GW, INFRA, remove.1)["metadata"]["generation"].clone();
    s.lab.kubectl(&[
        "patch",
        GW,
        "-n",
        INFRA,
        remove.1,
        "--type",
        "json",
        "-p",
        r#"[{"op":"remove","path":"/spec/listeners/0"}]"#,
    ]);
    s.gateway_must(remove, &[], Some(&[listener("http")]));
    assert_ne!(before, s.get(GW, INFRA, remove.1)["metadata"]["generation"]);
}

/// GatewayWithAttachedRoutesWithPort8080 (extended: GatewayPort8080): status only, the
/// route attached by sectionName to the port-80 listener.
#[test]
fn gateway_with_attached_routes_with_port_8080() {
    let s = Suite::up("gateway-with-attached-routes-with-port-8080");
    s.listeners(
        (INFRA, "gateway-with-two-listeners-and-one-attached-route"),
        &[("http-unattached", 0), ("http", 1)],
    );
}

/// HTTPRouteRequestPercentageMirror (extended: HTTPRouteRequestPercentageMirror): of 500
/// requests, the mirror (infra-backend-v2) gets its percent within 3 standard deviations
/// of the binomial, in one of 5 tries, as upstream.
#[test]
fn http_route_request_percentage_mirror() {
    let s = Suite::up("httproute-request-percentage-mirror");
    let addr = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "request-percentage-mirror")],
    );
    for (path, headers, seen, percent) in [
        ("/percent-mirror", &[][..], None, 20.0),
        ("/percent-mirror-fraction", &[][..], None, 50.0),
        (
            "/percent-mirror-and-modify-headers",
            MODIFY_IN,
            Some(MODIFY_SEEN),
            35.0,
        ),
    ] {
        s.expect(
            &addr,
            &Request {
                path,
                headers,
                ..Default::default()
            },
            &Expect {
                backend: V1,
                namespace: INFRA,
                backend_headers: seen,
                ..Default::default()
            },
        );
        let n = 500.0;
        let p: f64 = percent / 100.0;
        let margin = 3.0 * (n * p * (1.0 - p)).sqrt();
        let mut tries = Vec::new();
        let within = (0..5).any(|_| {
            let target = format!("{path}?reqId={}", e2e::unique_name("p"));
            let bodies = s.blast(&addr, &target, headers, 500);
            assert_eq!(
                bodies.matches("\"pod\": \"infra-backend-v1").count(),
                500,
                "{target}"
            );
            // Mirrors are sent beside the answers; give the last ones a moment.
            std::thread::sleep(std::time::Duration::from_secs(2));
            let mirrored = s.echoed(INFRA, V2, &target) as f64;
            tries.push(mirrored);
            (mirrored - n * p).abs() <= margin
        });
        assert!(
            within,
            "{path}: mirrored {tries:?} of 500, want {percent}% ± {margin:.0}"
        );
    }
}

/// A WebSocket client for `outside` (curl cannot send frames): the handshake to
/// `ws://ADDR/ws`, then a text and a binary message, each of which must come back; prints
/// `ok` or what went wrong.
const WS_CLIENT: &str = r#"
import os, socket, struct, sys
addr = sys.argv[1]
s = socket.create_connection((addr, 80), timeout=5)
s.sendall(("GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
           "Origin: ws://gateway/conformance\r\n\r\n" % addr).encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = s.recv(1)
    if not chunk:
        print("closed during the handshake: %r" % head); sys.exit(1)
    head += chunk
if not head.startswith(b"HTTP/1.1 101") or b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" not in head:
    print("handshake: %r" % head); sys.exit(1)
def recv_exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return b
def roundtrip(opcode, payload):
    mask = os.urandom(4)
    masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    s.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)
    b0, b1 = recv_exact(2)
    n = b1 & 0x7f
    if n == 126:
        n = struct.unpack(">H", recv_exact(2))[0]
    return b0 & 0x0f, recv_exact(n)
for opcode, payload in [(1, b"Websocket Support!"), (2, bytes([1, 2, 3, 4, 5, 6, 7]))]:
    got = roundtrip(opcode, payload)
    if got != (opcode, payload):
        print("sent %r, got %r" % ((opcode, payload), got)); sys.exit(1)
print("ok")
"#;

/// HTTPRouteBackendProtocolWebSocket (extended: HTTPRouteBackendProtocolWebSocket): a
/// WebSocket through the gateway to a Service port with `appProtocol: kubernetes.io/ws`
/// echoes text and binary messages.
#[test]
fn http_route_backend_protocol_websocket() {
    let s = Suite::up("httproute-backend-protocol-websocket");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "backend-protocol-ws")],
        &[("Accepted", "True", "")],
    );
    let mut streak = 0;
    let mut last = String::new();
    let passed = e2e::wait_until(std::time::Duration::from_secs(30), || {
        let out = s.lab.exec("outside", &["python3", "-c", WS_CLIENT, &addr]);
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        streak = if last.trim() == "ok" { streak + 1 } else { 0 };
        streak >= e2e::gateway_conformance::CONSECUTIVE
    });
    assert!(passed, "{last}");
}

/// HTTPRouteBackendProtocolH2C (extended: HTTPRouteBackendProtocolH2C): HTTP/2 by prior
/// knowledge to the gateway and on to a Service port with `appProtocol:
/// kubernetes.io/h2c`, where echo-basic echoes only HTTP/2.
#[test]
fn http_route_backend_protocol_h2c() {
    let s = Suite::up("httproute-backend-protocol-h2c");
    let addr = s.accepted_with(
        (INFRA, "same-namespace"),
        &[(INFRA, "backend-protocol-h2c")],
        &[("Accepted", "True", "")],
    );
    s.expect(
        &addr,
        &Request {
            path: "/",
            h2c: true,
            ..Default::default()
        },
        &Expect {
            backend: V1,
            namespace: INFRA,
            ..Default::default()
        },
    );
}

/// HTTPRouteHTTPSListenerDetectMisdirectedRequests (extended:
/// GatewayHTTPSListenerDetectMisdirectedRequests): over HTTP/2, a request whose host
/// another listener's certificate serves than the connection's SNI is answered 421.
#[test]
fn http_route_https_listener_detect_misdirected_requests() {
    let s = Suite::up("httproute-https-listener-detect-misdirected-requests");
    let routes: Vec<(&str, &str)> = (1..=4)
        .map(|i| {
            let name: &'static str = Box::leak(
                format!("https-listener-detect-misdirected-requests-test-{i}").into_boxed_str(),
            );
            (INFRA, name)
        })
        .collect();
    let addr = s.accepted((INFRA, "same-namespace-with-https-listener"), &routes);
    let case = |sni, host, status, backend| {
        (
            Request {
                host,
                sni,
                path: "/detect-misdirected-requests",
                https: true,
                ..Default::default()
            },
            Expect {
                status,
                backend,
                namespace: INFRA,
                ..Default::default()
            },
        )
    };
    let (ok, misdirected, none) = (&[200][..], &[421][..], &[404][..]);
    let (ex, second, unknown) = ("example.org", "second-example.org", "unknown-example.org");
    let (third, fourth, fith) = (
        "third-example.wildcard.org",
        "fourth-example.wildcard.org",
        "fith-example.wildcard.org",
    );
    run(
        &s,
        &addr,
        &[
            case(ex, ex, ok, V1),
            case(ex, second, misdirected, ""),
            case(ex, unknown, none, ""),
            case(second, second, ok, V2),
            case(second, ex, misdirected, ""),
            case(second, unknown, misdirected, ""),
            case(third, third, ok, V3),
            case(third, fith, ok, V3),
            case(third, fourth, misdirected, ""),
            case(third, second, misdirected, ""),
            case(third, unknown, misdirected, ""),
            case(fourth, fourth, ok, V1),
            case(fourth, fith, misdirected, ""),
            case(unknown, ex, ok, V1),
            case(unknown, unknown, none, ""),
        ],
    );
}

/// GatewayOptionalAddressValue (extended: GatewayAddressEmpty): an address with a type and
/// no value is assigned one (status only: the listener is on 8080, which the gateway's
/// Service does not expose). Stricter than upstream, the Gateway must also be Programmed.
#[test]
fn gateway_optional_address_value() {
    let s = Suite::up("gateway-optional-address-value");
    let gw = (INFRA, "gateway-without-address-value");
    s.gateway_must(gw, &[("Programmed", "True", "Programmed")], None);
    let g = s.get("gateways.gateway.networking.k8s.io", gw.0, gw.1);
    assert!(
        g["status"]["addresses"][0]["value"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{g}"
    );
}

/// HTTPRouteBackendRequestHeaderModifier (extended:
/// HTTPRouteBackendRequestHeaderModification): the same filters on the backendRefs.
#[test]
fn http_route_backend_request_header_modifier() {
    request_header_modifier("httproute-request-header-modifier-backend");
}

/// HTTPRouteListenerPortMatching (extended: HTTPRouteParentRefPort): three routes
/// attached by parentRef port to listeners on 80, 8080 and 8090 (the last by section
/// too) answer on those ports of the one address, each for its listeners' hostnames.
#[test]
fn http_route_listener_port_matching() {
    let s = Suite::up("httproute-listener-port-matching");
    let ip = s.accepted(
        (INFRA, "httproute-listener-port-matching"),
        &[
            (INFRA, "backend-v1"),
            (INFRA, "backend-v2"),
            (INFRA, "backend-v3"),
        ],
    );
    let (on_8080, on_8090) = (format!("{ip}:8080"), format!("{ip}:8090"));
    run(&s, &ip, &[reach("foo.com", "/", V1, INFRA)]);
    run(
        &s,
        &on_8080,
        &[
            reach("foo.com:8080", "/", V2, INFRA),
            reach("bar.com:8080", "/", V2, INFRA),
        ],
    );
    run(
        &s,
        &on_8090,
        &[
            reach("foo.com:8090", "/", V3, INFRA),
            answer("bar.com:8090", "/", &[404]),
        ],
    );
}

/// HTTPRouteRedirectPortAndScheme (extended: HTTPRoutePortRedirect, GatewayPort8080):
/// redirects that set the scheme, the port, both or neither, from listeners on 80, 8080
/// and (HTTPS) 443; the Location leaves out a port that is the scheme's default and
/// keeps the listener's own when only the scheme is unchanged.
#[test]
fn http_route_redirect_port_and_scheme() {
    let s = Suite::up("httproute-redirect-port-and-scheme");
    let ip = s.accepted(
        (INFRA, "same-namespace"),
        &[(INFRA, "http-route-for-listener-on-port-80")],
    );
    // Each Gateway has an address of its own.
    let ip_8080 = s.accepted(
        (INFRA, "same-namespace-with-http-listener-on-8080"),
        &[(INFRA, "http-route-for-listener-on-port-8080")],
    );
    let ip_https = s.accepted(
        (INFRA, "same-namespace-with-https-listener"),
        &[(INFRA, "http-route-for-listener-on-port-443")],
    );
    let to = |scheme, port| Redirect {
        scheme,
        host: "example.org",
        port,
        ..Default::default()
    };
    run(
        &s,
        &ip,
        &[
            redirect("", "/scheme-nil-and-port-nil", &[302], to("http", "")),
            redirect("", "/scheme-nil-and-port-80", &[302], to("http", "")),
            redirect("", "/scheme-nil-and-port-8080", &[302], to("http", "8080")),
            redirect("", "/scheme-https-and-port-nil", &[302], to("https", "")),
            redirect("", "/scheme-https-and-port-443", &[302], to("https", "")),
            redirect(
                "",
                "/scheme-https-and-port-8443",
                &[302],
                to("https", "8443"),
            ),
        ],
    );
    run(
        &s,
        &format!("{ip_8080}:8080"),
        &[
            redirect("", "/scheme-nil-and-port-nil", &[302], to("http", "8080")),
            redirect("", "/scheme-nil-and-port-80", &[302], to("http", "")),
            redirect("", "/scheme-https-and-port-nil", &[302], to("https", "")),
        ],
    );
    let https = |path, to| {
        (
            Request {
                host: "example.org",
                path,
                https: true,
                ..Default::default()
            },
            Expect {
                status: &[302],
                redirect: Some(to),
                ..Default::default()
            },
        )
    };
    run(
        &s,
        &ip_https,
        &[
            https("/scheme-nil-and-port-nil", to("https", "")),
            https("/scheme-nil-and-port-443", to("https", "")),
            https("/scheme-nil-and-port-8443", to("https", "8443")),
            https("/scheme-http-and-port-nil", to("http", "")),
            https("/scheme-http-and-port-80", to("http", "")),
            https("/scheme-http-and-port-8080", to("http", "8080")),
        ],
    );
}
