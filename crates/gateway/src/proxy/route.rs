//! Route lookup: the virtual hosts that match the request's host, most specific first, and
//! the first matching route of the first of them that has one.
//!
//! [`Router::find`] answers exactly as [`Router::find_linear`] (a first-match walk over the
//! routes as configured) but walks only the routes whose path condition can hold: exact
//! paths and element-wise prefixes are looked up by the request path's own prefixes, string
//! prefixes by the lengths the routes use, and only regular expressions are tried on every
//! request. A test compares the two on random configurations and requests.

use std::collections::HashMap;

use http::{HeaderMap, Method};
use regex::Regex;

use crate::config::{HostMatch, HttpHosts, PathMatch, Route, StringMatch};

/// What a request is matched on.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// Lower-case, without port and trailing dot.
    pub host: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A host from a `Host` header or `:authority`: lower-case, without port and trailing dot.
pub fn normalize_host(authority: &str) -> String {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: `[::1]:8080`.
        rest.split(']').next().unwrap_or(rest)
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// An element-wise prefix as it is compared: without trailing `/`; empty matches all.
pub(crate) fn trim_prefix(prefix: &str) -> &str {
    prefix.trim_end_matches('/')
}

/// `/foo` matches `/foo` and `/foo/bar`, not `/foobar`; `/foo/` is `/foo`; `/` matches all.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = trim_prefix(prefix);
    p.is_empty()
        || (path.starts_with(p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/'))
}

#[derive(Debug)]
enum CompiledString {
    Exact(String),
    Regex(Regex),
    Present,
    /// A regular expression that does not compile: never matches.
    Never,
}

impl CompiledString {
    fn new(m: &StringMatch) -> Self {
        match m {
            StringMatch::Exact(s) => Self::Exact(s.clone()),
            StringMatch::Present => Self::Present,
            StringMatch::Regex(r) => full_regex(r).map_or(Self::Never, Self::Regex),
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(s) => s == value,
            Self::Regex(r) => r.is_match(value),
            Self::Present => true,
            Self::Never => false,
        }
    }
}

/// `re` anchored at both ends; `None` (and a warning) when it does not compile.
fn full_regex(re: &str) -> Option<Regex> {
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(regex = re, error = %e, "a route's regular expression does not compile; it matches nothing");
            None
        }
    }
}

#[derive(Debug)]
enum CompiledPath {
    Exact(String),
    Prefix(String),
    StringPrefix(String),
    Regex(Option<Regex>),
}

#[derive(Debug)]
struct CompiledRoute {
    path: CompiledPath,
    method: Option<Method>,
    headers: Vec<(http::HeaderName, CompiledString)>,
    query: Vec<(String, CompiledString)>,
}

impl CompiledRoute {
    fn new(route: &Route) -> Self {
        let m = &route.matches;
        Self {
            path: match &m.path {
                PathMatch::Exact(p) => CompiledPath::Exact(p.clone()),
                PathMatch::Prefix(p) => CompiledPath::Prefix(trim_prefix(p).to_owned()),
                PathMatch::StringPrefix(p) => CompiledPath::StringPrefix(p.clone()),
                PathMatch::Regex(r) => CompiledPath::Regex(full_regex(r)),
            },
            method: m.method.clone(),
            headers: m
                .headers
                .iter()
                .map(|h| (h.name.clone(), CompiledString::new(&h.value)))
                .collect(),
            query: m
                .query
                .iter()
                .map(|q| (q.name.clone(), CompiledString::new(&q.value)))
                .collect(),
        }
    }

    fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            CompiledPath::Exact(p) => p == path,
            CompiledPath::Prefix(p) => prefix_matches(p, path),
            CompiledPath::StringPrefix(p) => path.starts_with(p.as_str()),
            CompiledPath::Regex(r) => r.as_ref().is_some_and(|r| r.is_match(path)),
        }
    }

    /// Everything but the path.
    fn rest_matches(&self, req: &RequestView<'_>) -> bool {
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return false;
        }
        for (name, m) in &self.headers {
            // Several values of one header are compared joined with `,` (RFC 9110 5.3).
            let mut values = req.headers.get_all(name).iter();
            let Some(first) = values.next() else {
                return false;
            };
            let mut joined = String::from_utf8_lossy(first.as_bytes()).into_owned();
            for v in values {
                joined.push(',');
                joined.push_str(&String::from_utf8_lossy(v.as_bytes()));
            }
            if !m.matches(&joined) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = req.query.unwrap_or("");
            for (name, m) in &self.query {
                // Only the first parameter of a name counts (Gateway API).
                let value = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name);
                if !value.is_some_and(|(_, v)| m.matches(&v)) {
                    return false;
                }
            }
        }
        true
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        self.path_matches(req.path) && self.rest_matches(req)
    }
}

/// The routes of one virtual host, indexed by their path condition.
#[derive(Debug, Default)]
struct PathIndex {
    exact: HashMap<String, Vec<u32>>,
    /// Element-wise prefixes without trailing `/`; `""` matches every path.
    prefix: HashMap<String, Vec<u32>>,
    /// String prefixes by length, the lengths in `string_lengths`.
    string_prefix: HashMap<String, Vec<u32>>,
    string_lengths: Vec<usize>,
    /// Regular expressions: tried on every request.
    other: Vec<u32>,
}

impl PathIndex {
    fn new(routes: &[CompiledRoute]) -> Self {
        let mut index = Self::default();
        for (i, r) in routes.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 routes");
            match &r.path {
                CompiledPath::Exact(p) => index.exact.entry(p.clone()).or_default().push(i),
                CompiledPath::Prefix(p) => index.prefix.entry(p.clone()).or_default().push(i),
                CompiledPath::StringPrefix(p) => {
                    index.string_prefix.entry(p.clone()).or_default().push(i);
                    if !index.string_lengths.contains(&p.len()) {
                        index.string_lengths.push(p.len());
                    }
                }
                CompiledPath::Regex(_) => index.other.push(i),
            }
        }
        index
    }

    /// Every route whose path condition holds, in configuration order (and perhaps some
    /// whose does not).
    fn candidates(&self, path: &str, out: &mut Vec<u32>) {
        out.clear();
        if let Some(v) = self.exact.get(path) {
            out.extend_from_slice(v);
        }
        if !self.prefix.is_empty() {
            if let Some(v) = self.prefix.get("") {
                out.extend_from_slice(v);
            }
            for (i, b) in path.bytes().enumerate() {
                if b == b'/'
                    && i > 0
                    && let Some(v) = self.prefix.get(&path[..i])
                {
                    out.extend_from_slice(v);
                }
            }
            if let Some(v) = self.prefix.get(path) {
                out.extend_from_slice(v);
            }
        }
        for &len in &self.string_lengths {
            if let Some(p) = path.get(..len)
                && let Some(v) = self.string_prefix.get(p)
            {
                out.extend_from_slice(v);
            }
        }
        out.extend_from_slice(&self.other);
        out.sort_unstable();
        out.dedup();
    }
}

#[derive(Debug)]
struct VHost {
    routes: Vec<CompiledRoute>,
    index: PathIndex,
    /// Index into [`Router::scopes`]: the Gateway listener it belongs to.
    scope: Option<usize>,
}

/// The compiled [`HttpHosts`] of one listener: public so that the route lookup can be
/// benchmarked on its own (`cargo bench -p gateway`).
#[derive(Debug, Default)]
pub struct Router {
    /// Virtual hosts by exact name, in configuration order.
    exact: HashMap<String, Vec<usize>>,
    /// `(suffix, one_label, vhost)`, longest suffix first, then in configuration order.
    wildcards: Vec<(String, bool, usize)>,
    any: Vec<usize>,
    vhosts: Vec<VHost>,
    /// The distinct listener hostnames ([`VirtualHost::scope`]) on this port, normalized
    /// (see [`normalized`]) so that a request compares without allocating.
    scopes: Vec<HostMatch>,
}

impl Router {
    /// Compiles and indexes `hosts`.
    pub fn new(hosts: &HttpHosts) -> Self {
        let mut router = Self::default();
        for (i, vh) in hosts.hosts.iter().enumerate() {
            for h in &vh.hostnames {
                match h {
                    HostMatch::Exact(name) => {
                        router
                            .exact
                            .entry(normalize_host(name))
                            .or_default()
                            .push(i);
                    }
                    HostMatch::Wildcard { suffix, one_label } => {
                        let suffix = suffix.to_ascii_lowercase();
                        let suffix = suffix.trim_end_matches('.');
                        router.wildcards.push((suffix.to_owned(), *one_label, i));
                    }
                    HostMatch::Any => router.any.push(i),
                }
            }
            let routes: Vec<_> = vh.routes.iter().map(CompiledRoute::new).collect();
            let index = PathIndex::new(&routes);
            let scope = vh.scope.as_ref().map(normalized).map(|sc| {
                router
                    .scopes
                    .iter()
                    .position(|x| *x == sc)
                    .unwrap_or_else(|| {
                        router.scopes.push(sc);
                        router.scopes.len() - 1
                    })
            });
            router.vhosts.push(VHost {
                routes,
                index,
                scope,
            });
        }
        // Stable: equal lengths keep configuration order.
        router
            .wildcards
            .sort_by_key(|w| std::cmp::Reverse(w.0.len()));
        router
    }

    /// The virtual hosts that match a normalized host name, most specific first: those
    /// of the exact name, then the wildcards by longest suffix, then those of any host.
    fn vhosts<'a>(&'a self, host: &'a str) -> impl Iterator<Item = usize> + 'a {
        let wildcards = self
            .wildcards
            .iter()
            .filter(move |(suffix, one_label, _)| {
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && (!*one_label || !host[..host.len() - suffix.len()].contains('.'))
            })
            .map(|w| w.2);
        self.exact
            .get(host)
            .into_iter()
            .flatten()
            .copied()
            .chain(wildcards)
            .chain(self.any.iter().copied())
    }

    /// The most specific listener hostname (scope) that matches `host`.
    fn scope(&self, host: &str) -> Option<usize> {
        self.scopes
            .iter()
            .enumerate()
            .filter_map(|(i, sc)| Some((rank(sc, host)?, i)))
            .min()
            .map(|(_, i)| i)
    }

    /// The first matching route of the most specific matching virtual host that has one:
    /// `(virtual host, route)` indices into the configuration. Hosts of a listener other
    /// than the most specific one that matches are skipped (listener isolation).
    pub fn find(&self, req: &RequestView<'_>) -> Option<(usize, usize)> {
        let mut candidates = Vec::new();
        let scope = if self.scopes.is_empty() {
            None
        } else {
            self.scope(req.host)
        };
        self.vhosts(req.host).find_map(|v| {
            let vhost = &self.vhosts[v];
            if vhost.scope.is_some() && vhost.scope != scope {
                return None;
            }
            vhost.index.candidates(req.path, &mut candidates);
            candidates
                .iter()
                .find(|&&i| vhost.routes[i as usize].matches(req))
                .map(|&i| (v, i as usize))
        })
    }

    /// [`Router::find`] the slow way, from `hosts` as configured: every virtual host that
    /// matches, ranked by specificity (exact, longer wildcard suffix, any; then
    /// configuration order), every route of each in order; hosts of a listener that is
    /// not the most specific match left out.
    #[cfg(test)]
    pub(crate) fn find_linear(
        &self,
        hosts: &HttpHosts,
        req: &RequestView<'_>,
    ) -> Option<(usize, usize)> {
        let rank = |h: &HostMatch| host_rank(h, req.host);
        let best = hosts
            .hosts
            .iter()
            .filter_map(|vh| vh.scope.as_ref())
            .filter_map(|sc| Some((rank(sc)?, sc)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, sc)| sc);
        let mut matching: Vec<(usize, usize)> = hosts
            .hosts
            .iter()
            .enumerate()
            .filter(|(_, vh)| vh.scope.is_none() || vh.scope.as_ref() == best)
            .flat_map(|(v, vh)| vh.hostnames.iter().filter_map(move |h| Some((rank(h)?, v))))
            .collect();
        matching.sort();
        matching.into_iter().find_map(|(_, v)| {
            self.vhosts[v]
                .routes
                .iter()
                .position(|r| r.matches(req))
                .map(|i| (v, i))
        })
    }
}

/// A host pattern as requests' hosts are compared with it: lower case, without a
/// trailing dot.
fn normalized(pattern: &HostMatch) -> HostMatch {
    match pattern {
        HostMatch::Exact(name) => HostMatch::Exact(normalize_host(name)),
        HostMatch::Wildcard { suffix, one_label } => HostMatch::Wildcard {
            suffix: suffix.to_ascii_lowercase().trim_end_matches('.').to_owned(),
            one_label: *one_label,
        },
        HostMatch::Any => HostMatch::Any,
    }
}

/// How specifically the normalized `pattern` matches the normalized `host` (lower is
/// more specific): the exact name, then wildcards by longer suffix, then any host;
/// `None` if it does not.
fn rank(pattern: &HostMatch, host: &str) -> Option<usize> {
    match pattern {
        HostMatch::Exact(name) => (name == host).then_some(0),
        HostMatch::Wildcard { suffix, one_label } => {
            let label = host
                .strip_suffix(suffix.as_str())
                .filter(|l| !l.is_empty())?;
            (!one_label || !label.contains('.')).then_some(usize::MAX - 1 - suffix.len())
        }
        HostMatch::Any => Some(usize::MAX),
    }
}

/// [`rank`] of a pattern as configured (the slow way: for the test oracle).
#[cfg(test)]
fn host_rank(pattern: &HostMatch, host: &str) -> Option<usize> {
    rank(&normalized(pattern), host)
}

#[cfg(test)]
pub(crate) mod tests {
    use http::{HeaderName, HeaderValue};

    use super::*;
    use crate::config::*;

    pub(crate) fn route(path: PathMatch) -> Route {
        Route {
            name: RouteName {
                kind: "HTTPRoute",
                namespace: "default".into(),
                name: "r".into(),
                rule: 0,
            },
            matches: RouteMatch {
                path,
                method: None,
                headers: vec![],
                query: vec![],
            },
            action: Action::Respond(http::StatusCode::OK),
        }
    }

    /// A router and the hosts it was compiled from, for [`Router::find_linear`].
    pub(crate) type Table = (Router, HttpHosts);

    fn router(hosts: Vec<(Vec<HostMatch>, Vec<Route>)>) -> Table {
        let hosts = HttpHosts {
            hosts: hosts
                .into_iter()
                .map(|(hostnames, routes)| VirtualHost {
                    hostnames,
                    routes,
                    scope: None,
                })
                .collect(),
        };
        (Router::new(&hosts), hosts)
    }

    /// Gateway API's GatewayHTTPListenerIsolation: listeners without a hostname,
    /// `*.example.com`, `*.foo.example.com` and `abc.foo.example.com`, each with a route of
    /// its own; a request is served only by the most specific listener that matches its
    /// host, and an Ingress's host (no scope) still falls through as before.
    #[test]
    fn only_the_most_specific_listener_serves_a_host() {
        let wild = |s: &str| HostMatch::Wildcard {
            suffix: s.into(),
            one_label: false,
        };
        let at = |p: &str| route(PathMatch::Prefix(p.into()));
        let scoped = |h: HostMatch, p: &str| VirtualHost {
            hostnames: vec![h.clone()],
            routes: vec![at(p)],
            scope: Some(h),
        };
        let hosts = HttpHosts {
            hosts: vec![
                scoped(HostMatch::Any, "/empty-hostname"),
                scoped(wild(".example.com"), "/wildcard-example-com"),
                scoped(wild(".foo.example.com"), "/wildcard-foo-example-com"),
                scoped(
                    HostMatch::Exact("abc.foo.example.com".into()),
                    "/abc-foo-example-com",
                ),
                // A route's hostname narrower than its listener's keeps the listener's
                // scope: `*.foo.example.com` serves `x.foo.example.com` for this one.
                VirtualHost {
                    hostnames: vec![HostMatch::Exact("x.foo.example.com".into())],
                    routes: vec![at("/x")],
                    scope: Some(wild(".foo.example.com")),
                },
                VirtualHost {
                    hostnames: vec![HostMatch::Any],
                    routes: vec![at("/ingress")],
                    scope: None,
                },
            ],
        };
        let table = (Router::new(&hosts), hosts);
        let paths = [
            "/empty-hostname",
            "/wildcard-example-com",
            "/wildcard-foo-example-com",
            "/abc-foo-example-com",
            "/x",
            "/ingress",
        ];
        let served = |host: &str| paths.map(|p| get(&table, host, p).map(|(v, _)| v));
        assert_eq!(
            served("bar.com"),
            [Some(0), None, None, None, None, Some(5)]
        );
        assert_eq!(
            served("bar.example.com"),
            [None, Some(1), None, None, None, Some(5)]
        );
        assert_eq!(
            served("bar.foo.example.com"),
            [None, None, Some(2), None, None, Some(5)]
        );
        assert_eq!(
            served("abc.foo.example.com"),
            [None, None, None, Some(3), None, Some(5)]
        );
        assert_eq!(
            served("x.foo.example.com"),
            [None, None, Some(2), None, Some(4), Some(5)]
        );
    }

    /// The route for a request, after checking that the index and the plain walk agree.
    pub(crate) fn ask(
        (r, hosts): &Table,
        host: &str,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<(usize, usize)> {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let req = RequestView {
            host,
            method,
            path,
            query,
            headers,
        };
        let fast = r.find(&req);
        assert_eq!(fast, r.find_linear(hosts, &req), "{host} {path}");
        fast
    }

    pub(crate) fn get(r: &Table, host: &str, path: &str) -> Option<(usize, usize)> {
        ask(r, host, &Method::GET, path, &HeaderMap::new())
    }

    #[test]
    fn hosts_by_specificity() {
        let wild = |s: &str, one_label| HostMatch::Wildcard {
            suffix: s.into(),
            one_label,
        };
        let any = route(PathMatch::Prefix("/".into()));
        let r = router(vec![
            (vec![HostMatch::Any], vec![any.clone()]),
            (vec![wild(".example.com", false)], vec![any.clone()]),
            (vec![wild(".foo.example.com", true)], vec![any.clone()]),
            (
                vec![HostMatch::Exact("a.foo.example.com".into())],
                vec![any.clone()],
            ),
        ]);
        assert_eq!(get(&r, "a.foo.example.com", "/"), Some((3, 0)));
        assert_eq!(get(&r, "b.foo.example.com", "/"), Some((2, 0)));
        // One label only for the Ingress-style wildcard; the longer suffix does not hold.
        assert_eq!(get(&r, "x.b.foo.example.com", "/"), Some((1, 0)));
        assert_eq!(get(&r, "example.com", "/"), Some((0, 0)));
        assert_eq!(get(&r, "other", "/"), Some((0, 0)));
        assert_eq!(normalize_host("A.Example.COM.:8080"), "a.example.com");
        assert_eq!(normalize_host("[::1]:80"), "::1");
        let none = router(vec![(vec![HostMatch::Exact("a".into())], vec![any])]);
        assert_eq!(get(&none, "b", "/"), None);
    }

    #[test]
    fn a_request_falls_through_exact_then_wildcards_then_any() {
        let wild = |s: &str, one_label| HostMatch::Wildcard {
            suffix: s.into(),
            one_label,
        };
        let at = |p: &str| route(PathMatch::Prefix(p.into()));
        let r = router(vec![
            (vec![HostMatch::Any], vec![at("/")]),
            (vec![wild(".example.com", false)], vec![at("/many")]),
            (
                vec![wild(".b.example.com", true)],
                vec![at("/one"), at("/both")],
            ),
            (
                vec![HostMatch::Exact("a.b.example.com".into())],
                vec![at("/exact"), at("/both")],
            ),
        ]);
        let host = "a.b.example.com";
        assert_eq!(get(&r, host, "/exact"), Some((3, 0)));
        assert_eq!(get(&r, host, "/both"), Some((3, 1)), "the exact host first");
        assert_eq!(get(&r, host, "/one"), Some((2, 0)));
        assert_eq!(get(&r, host, "/many/x"), Some((1, 0)));
        assert_eq!(get(&r, host, "/other"), Some((0, 0)));
        assert_eq!(get(&r, "c.b.example.com", "/both"), Some((2, 1)));
        assert_eq!(get(&r, "c.b.example.com", "/exact"), Some((0, 0)));
        // The one-label wildcard does not match here: straight to the longer one.
        assert_eq!(get(&r, "x.c.b.example.com", "/one"), Some((0, 0)));
        assert_eq!(get(&r, "x.c.b.example.com", "/many"), Some((1, 0)));
        let no_any = router(vec![(vec![HostMatch::Exact("a".into())], vec![at("/a")])]);
        assert_eq!(get(&no_any, "a", "/b"), None);
    }

    #[test]
    fn paths_as_documented() {
        let r = router(vec![(
            vec![HostMatch::Any],
            vec![
                route(PathMatch::Exact("/exact".into())),
                route(PathMatch::Prefix("/foo/".into())),
                route(PathMatch::StringPrefix("/str".into())),
                route(PathMatch::Regex("/re/[0-9]+".into())),
                route(PathMatch::Prefix("/".into())),
            ],
        )]);
        let at = |p| get(&r, "h", p).map(|(_, i)| i);
        assert_eq!(at("/exact"), Some(0));
        assert_eq!(at("/exact/"), Some(4));
        assert_eq!(at("/foo"), Some(1));
        assert_eq!(at("/foo/"), Some(1));
        assert_eq!(at("/foo/bar"), Some(1));
        assert_eq!(at("/foobar"), Some(4));
        assert_eq!(at("/string"), Some(2));
        assert_eq!(at("/re/12"), Some(3));
        assert_eq!(at("/re/12x"), Some(4));
        let exact_only = router(vec![(
            vec![HostMatch::Any],
            vec![route(PathMatch::Exact("/a".into()))],
        )]);
        assert_eq!(get(&exact_only, "h", "/b"), None);
    }

    #[test]
    fn method_headers_and_query() {
        let mut m = route(PathMatch::Prefix("/".into()));
        m.matches.method = Some(Method::POST);
        m.matches.headers = vec![
            HeaderMatch {
                name: HeaderName::from_static("x-a"),
                value: StringMatch::Exact("1".into()),
            },
            HeaderMatch {
                name: HeaderName::from_static("x-b"),
                value: StringMatch::Regex("v[0-9]".into()),
            },
        ];
        m.matches.query = vec![QueryMatch {
            name: "q".into(),
            value: StringMatch::Exact("a b".into()),
        }];
        let r = router(vec![(
            vec![HostMatch::Any],
            vec![m, route(PathMatch::Prefix("/".into()))],
        )]);
        let mut h = HeaderMap::new();
        h.insert("x-a", HeaderValue::from_static("1"));
        h.insert("x-b", HeaderValue::from_static("v7"));
        let at =
            |method: &Method, path, h: &HeaderMap| ask(&r, "h", method, path, h).map(|(_, i)| i);
        assert_eq!(at(&Method::POST, "/x?q=a+b&q=c", &h), Some(0));
        assert_eq!(
            at(&Method::POST, "/x?q=c&q=a+b", &h),
            Some(1),
            "only the first q counts"
        );
        assert_eq!(at(&Method::GET, "/x?q=a+b", &h), Some(1));
        h.insert("x-b", HeaderValue::from_static("v77"));
        assert_eq!(
            at(&Method::POST, "/x?q=a+b", &h),
            Some(1),
            "the regex must match whole"
        );
    }

    /// A small deterministic generator (xorshift), so failures reproduce from the seed.
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        pub(crate) fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    fn random_path(rng: &mut Rng) -> String {
        const PARTS: &[&str] = &["", "a", "ab", "b", "a/", "x", "/", "ab/c"];
        let mut p = String::new();
        for _ in 0..rng.below(4) {
            p.push('/');
            p.push_str(rng.pick::<&str>(PARTS));
        }
        if p.is_empty() || rng.below(5) == 0 {
            p.push('/');
        }
        p
    }

    #[test]
    fn index_answers_as_a_first_match_walk() {
        let mut rng = Rng(0x5eed_2026);
        let wild = |s: &str, one_label| HostMatch::Wildcard {
            suffix: s.into(),
            one_label,
        };
        // Names a request may match several of, so that it falls through between hosts.
        let patterns = [
            HostMatch::Exact("a.h.example".into()),
            wild(".h.example", true),
            wild(".h.example", false),
            wild(".example", false),
            HostMatch::Any,
        ];
        for _ in 0..300 {
            let mut vhosts = Vec::new();
            for _ in 0..=rng.below(5) {
                let hostnames = (0..=rng.below(2))
                    .map(|_| rng.pick(&patterns).clone())
                    .collect();
                let mut routes = Vec::new();
                for _ in 0..rng.below(12) {
                    let p = random_path(&mut rng);
                    let mut r = route(match rng.below(5) {
                        0 => PathMatch::Exact(p),
                        1 | 2 => PathMatch::Prefix(p),
                        3 => PathMatch::StringPrefix(p),
                        _ => PathMatch::Regex(format!("{}.*", regex::escape(&p))),
                    });
                    if rng.below(4) == 0 {
                        r.matches.method = Some(Method::POST);
                    }
                    if rng.below(4) == 0 {
                        r.matches.headers.push(HeaderMatch {
                            name: HeaderName::from_static("x-v"),
                            value: StringMatch::Exact("1".into()),
                        });
                    }
                    routes.push(r);
                }
                vhosts.push((hostnames, routes));
            }
            let r = router(vhosts);
            for _ in 0..40 {
                let path = random_path(&mut rng);
                let method = if rng.below(2) == 0 {
                    Method::GET
                } else {
                    Method::POST
                };
                let mut h = HeaderMap::new();
                if rng.below(2) == 0 {
                    h.insert("x-v", HeaderValue::from_static("1"));
                }
                let host = rng.pick::<&str>(&[
                    "a.h.example",
                    "b.h.example",
                    "c.b.h.example",
                    "x.example",
                    "other",
                ]);
                // `ask` asserts the two agree.
                ask(&r, host, &method, &path, &h);
            }
        }
    }

    #[test]
    fn fuzzed_paths_never_panic() {
        let r = router(vec![(
            vec![HostMatch::Any],
            vec![
                route(PathMatch::Prefix("/é/".into())),
                route(PathMatch::StringPrefix("/ab".into())),
                route(PathMatch::Exact("/".into())),
            ],
        )]);
        let mut rng = Rng(77);
        let alphabet: Vec<char> = "/a?b%é\u{0}ab/".chars().collect();
        for _ in 0..5000 {
            let path: String = (0..rng.below(12)).map(|_| *rng.pick(&alphabet)).collect();
            get(&r, "h", &path);
        }
    }
}
