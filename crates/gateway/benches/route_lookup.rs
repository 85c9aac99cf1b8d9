//! Route lookup at 10 and 10,000 routes: `cargo bench -p gateway --bench route_lookup`.
//! Prints the time to compile the routes and the time per lookup (std timing, no
//! framework: one process, the mean over many lookups of a mix of paths).

use std::hint::black_box;
use std::time::Instant;

use gateway::config::*;
use gateway::proxy::route::{RequestView, Router};
use http::{HeaderMap, HeaderName, Method, StatusCode};

fn route(path: PathMatch) -> Route {
    Route {
        name: RouteName {
            kind: "HTTPRoute",
            namespace: "default".into(),
            name: "bench".into(),
            rule: 0,
        },
        matches: RouteMatch {
            path,
            method: None,
            headers: vec![],
            query: vec![],
        },
        action: Action::Respond(StatusCode::OK),
    }
}

/// `n` routes as a large cluster has them: mostly element-wise prefixes per service,
/// some exact paths, string prefixes, a header match, and one regular expression per
/// thousand; hosts spread over ten virtual hosts plus a wildcard.
fn hosts(n: usize) -> HttpHosts {
    let per_host = n.div_ceil(10);
    let mut hosts = Vec::new();
    for h in 0..10 {
        let mut routes = Vec::new();
        for i in 0..per_host {
            let mut r = route(match i % 10 {
                0 => PathMatch::Exact(format!("/svc{i}/health")),
                1 => PathMatch::StringPrefix(format!("/static{i}/")),
                2 if i % 1000 == 2 => PathMatch::Regex(format!("/re{i}/[0-9]+")),
                _ => PathMatch::Prefix(format!("/svc{i}/api")),
            });
            if i % 10 == 3 {
                r.matches.headers.push(HeaderMatch {
                    name: HeaderName::from_static("x-canary"),
                    value: StringMatch::Exact("1".into()),
                });
            }
            routes.push(r);
        }
        routes.push(route(PathMatch::Prefix("/".into())));
        hosts.push(VirtualHost {
            scope: None,
            hostnames: vec![HostMatch::Exact(format!("host{h}.example.com"))],
            routes,
        });
    }
    hosts.push(VirtualHost {
        scope: None,
        hostnames: vec![HostMatch::Wildcard {
            suffix: ".example.com".into(),
            one_label: false,
        }],
        routes: vec![route(PathMatch::Prefix("/".into()))],
    });
    HttpHosts { hosts }
}

fn main() {
    let headers = HeaderMap::new();
    for n in [10, 10_000] {
        let config = hosts(n);
        let started = Instant::now();
        let router = Router::new(&config);
        let compile = started.elapsed();
        let per_host = n.div_ceil(10);
        let requests: Vec<(String, String)> = (0..1000)
            .map(|k| {
                let i = (k * 7919) % per_host;
                let path = match k % 4 {
                    0 => format!("/svc{i}/api/v1/items/{k}"),
                    1 => format!("/svc{i}/health"),
                    2 => format!("/static{i}/app.js"),
                    _ => format!("/unknown/{k}"),
                };
                (format!("host{}.example.com", k % 10), path)
            })
            .collect();
        let rounds = 500;
        let started = Instant::now();
        let mut found = 0usize;
        for _ in 0..rounds {
            for (host, path) in &requests {
                let view = RequestView {
                    host,
                    method: &Method::GET,
                    path,
                    query: None,
                    headers: &headers,
                };
                found += usize::from(black_box(router.find(black_box(&view))).is_some());
            }
        }
        let lookups = rounds * requests.len();
        let per_lookup = started.elapsed() / lookups as u32;
        assert_eq!(found, lookups, "every request has a route (the catch-all)");
        println!(
            "routes={n:>6}  compile={compile:>10.2?}  lookup={per_lookup:>8.2?}  ({lookups} lookups)"
        );
    }
}
