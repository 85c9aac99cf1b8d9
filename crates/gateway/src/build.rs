//! Assembles the [`Config`] from what each API contributes: routes per port and host, in
//! the order each API already sorted them, certificates, passthrough and L4 routes.
//!
//! One virtual host per host pattern, with only its own routes. The data plane tries the
//! hosts that match a request most specific first (exact name, longer wildcard suffixes,
//! then any host), so a request for `a.example.com` that no route of `a.example.com` takes
//! still reaches a `*.example.com` or host-less route, as Gateway API's precedence
//! (hostname first, then the rest) and ingress-nginx both answer, without each host
//! carrying copies of the routes of the hosts that cover it.

use std::collections::{BTreeMap, HashMap};

use crate::config::{
    Certificate, Config, HostMatch, HttpHosts, Listener, ListenerKind, Route, SniRoute,
    VirtualHost, WeightedBackend,
};

/// What a port already serves, for conflict checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PortKind {
    Http,
    Tls,
    Tcp,
    Udp,
}

/// A host pattern and the Gateway listener hostname it is scoped to (`None` outside
/// Gateway API): see [`crate::config::VirtualHost::scope`].
type HostKey = (Option<HostMatch>, HostMatch);

/// Routes by host pattern, in the order the patterns came; `index` finds a pattern's place
/// (every route is added on its own).
#[derive(Default)]
struct Hosts {
    hosts: Vec<(HostKey, Vec<Route>)>,
    index: HashMap<HostKey, usize>,
}

impl Hosts {
    fn add(&mut self, key: HostKey, routes: impl IntoIterator<Item = Route>) {
        match self.index.get(&key) {
            Some(&i) => self.hosts[i].1.extend(routes),
            None => {
                self.index.insert(key.clone(), self.hosts.len());
                self.hosts.push((key, routes.into_iter().collect()));
            }
        }
    }

    /// Each host with its own routes only: the data plane falls through to the hosts that
    /// also match a request.
    fn finish(self) -> HttpHosts {
        let hosts = self
            .hosts
            .into_iter()
            .filter(|(_, routes)| !routes.is_empty())
            .map(|((scope, host), routes)| VirtualHost {
                hostnames: vec![host],
                routes,
                scope,
            })
            .collect();
        HttpHosts { hosts }
    }
}

enum Port {
    Http(Hosts),
    Tls {
        passthrough: Vec<SniRoute>,
        certificates: Vec<Certificate>,
        hosts: Hosts,
    },
    Tcp(Vec<WeightedBackend>),
    Udp(Vec<WeightedBackend>),
}

impl Port {
    fn kind(&self) -> PortKind {
        match self {
            Port::Http(_) => PortKind::Http,
            Port::Tls { .. } => PortKind::Tls,
            Port::Tcp(_) => PortKind::Tcp,
            Port::Udp(_) => PortKind::Udp,
        }
    }
}

/// The listeners being assembled, by the port bound in the pod.
#[derive(Default)]
pub(crate) struct Builder {
    ports: BTreeMap<u16, Port>,
    /// The port clients use, where it is not the bound one (a Gateway's listeners).
    public: BTreeMap<u16, u16>,
}

impl Builder {
    /// What `port` serves so far.
    #[cfg(test)]
    pub(crate) fn kind(&self, port: u16) -> Option<PortKind> {
        self.ports.get(&port).map(Port::kind)
    }

    fn port(&mut self, port: u16, kind: PortKind) -> Option<&mut Port> {
        let p = self.ports.entry(port).or_insert_with(|| match kind {
            PortKind::Http => Port::Http(Hosts::default()),
            PortKind::Tls => Port::Tls {
                passthrough: Vec::new(),
                certificates: Vec::new(),
                hosts: Hosts::default(),
            },
            PortKind::Tcp => Port::Tcp(Vec::new()),
            PortKind::Udp => Port::Udp(Vec::new()),
        });
        (p.kind() == kind).then_some(p)
    }

    /// Opens `port` as `kind` with nothing on it yet, reached by clients on `public`;
    /// false if it serves another kind.
    pub(crate) fn open(&mut self, port: u16, public: u16, kind: PortKind) -> bool {
        if port != public {
            self.public.insert(port, public);
        }
        self.port(port, kind).is_some()
    }

    /// HTTP routes for `host` on a clear-text or TLS-terminating port, for the Gateway
    /// listener with hostname `scope` (`None` outside Gateway API).
    pub(crate) fn routes(
        &mut self,
        port: u16,
        kind: PortKind,
        scope: Option<HostMatch>,
        host: HostMatch,
        routes: impl IntoIterator<Item = Route>,
    ) -> bool {
        match self.port(port, kind) {
            Some(Port::Http(hosts) | Port::Tls { hosts, .. }) => {
                hosts.add((scope, host), routes);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn certificate(&mut self, port: u16, cert: Certificate) -> bool {
        match self.port(port, PortKind::Tls) {
            Some(Port::Tls { certificates, .. }) => {
                if !certificates.contains(&cert) {
                    certificates.push(cert);
                }
                true
            }
            _ => false,
        }
    }

    pub(crate) fn passthrough(&mut self, port: u16, route: SniRoute) -> bool {
        match self.port(port, PortKind::Tls) {
            Some(Port::Tls { passthrough, .. }) => {
                passthrough.push(route);
                true
            }
            _ => false,
        }
    }

    /// L4 backends (TCP or UDP) of `port`.
    pub(crate) fn l4(&mut self, port: u16, kind: PortKind, backends: Vec<WeightedBackend>) -> bool {
        match self.port(port, kind) {
            Some(Port::Tcp(b) | Port::Udp(b)) => {
                b.extend(backends);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn finish(self) -> Config {
        let public = self.public;
        let listeners = self
            .ports
            .into_iter()
            .map(|(port, p)| Listener {
                port,
                public_port: public.get(&port).copied().unwrap_or(port),
                proxy_protocol: false,
                kind: match p {
                    Port::Http(hosts) => ListenerKind::Http(hosts.finish()),
                    Port::Tls {
                        passthrough,
                        mut certificates,
                        hosts,
                    } => {
                        // The default certificate (no hostnames) last among equals is
                        // what "the first with no hostnames" must find first: keep the
                        // order they came in, hostnamed ones first.
                        certificates.sort_by_key(|c| c.hostnames.is_empty());
                        ListenerKind::Tls {
                            passthrough,
                            certificates,
                            hosts: hosts.finish(),
                        }
                    }
                    Port::Tcp(b) => ListenerKind::Tcp(b),
                    Port::Udp(b) => ListenerKind::Udp(b),
                },
            })
            .collect();
        Config { listeners }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Action, PathMatch, RouteMatch, RouteName};
    use crate::proxy::route::{RequestView, Router};
    use http::StatusCode;

    fn route(name: &str, path: &str) -> Route {
        Route {
            name: RouteName {
                kind: "Test",
                namespace: "ns".into(),
                name: name.into(),
                rule: 0,
            },
            matches: RouteMatch {
                path: PathMatch::Prefix(path.into()),
                method: None,
                headers: vec![],
                query: vec![],
            },
            action: Action::Respond(StatusCode::OK),
        }
    }

    /// The name of the route that answers `host` and `path` on port 80, by the data
    /// plane's lookup.
    fn answer(c: &Config, host: &str, path: &str) -> Option<String> {
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        let headers = http::HeaderMap::new();
        let req = RequestView {
            host,
            method: &http::Method::GET,
            path,
            query: None,
            headers: &headers,
        };
        let (v, r) = Router::new(h).find(&req)?;
        Some(h.hosts[v].routes[r].name.name.clone())
    }

    #[test]
    fn a_host_falls_through_to_the_hosts_that_cover_it_most_specific_first() {
        let mut b = Builder::default();
        let exact = HostMatch::Exact("a.b.example.com".into());
        let one = HostMatch::Wildcard {
            suffix: ".b.example.com".into(),
            one_label: true,
        };
        let many = HostMatch::Wildcard {
            suffix: ".example.com".into(),
            one_label: false,
        };
        let one_top = HostMatch::Wildcard {
            suffix: ".example.com".into(),
            one_label: true,
        };
        // Every host has its own path and `/shared`; only the host-less one has `/`.
        for (host, name) in [
            (HostMatch::Any, "any"),
            (many, "many"),
            (exact, "exact"),
            (one, "one"),
            (one_top, "one-top"),
        ] {
            let mut routes = vec![route(name, &format!("/{name}")), route(name, "/shared")];
            if host == HostMatch::Any {
                routes.push(route(name, "/"));
            }
            assert!(b.routes(80, PortKind::Http, None, host, routes));
        }
        let c = b.finish();
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        assert_eq!(
            h.hosts.iter().map(|v| v.routes.len()).sum::<usize>(),
            11,
            "no host carries another's routes"
        );
        let answers = |host: &str| {
            ["/shared", "/exact", "/one", "/one-top", "/many", "/x"]
                .map(|p| answer(&c, host, p).unwrap_or_default())
        };
        assert_eq!(
            answers("a.b.example.com"),
            ["exact", "exact", "one", "any", "many", "any"]
        );
        assert_eq!(
            answers("c.b.example.com"),
            ["one", "any", "one", "any", "many", "any"]
        );
        // Both `*.example.com` match: the one added first, first.
        assert_eq!(
            answers("c.example.com"),
            ["many", "any", "any", "one-top", "many", "any"]
        );
        // The one-label wildcards do not match here.
        assert_eq!(
            answers("x.c.b.example.com"),
            ["many", "any", "any", "any", "many", "any"]
        );
        assert_eq!(answers("other"), ["any"; 6]);
    }

    #[test]
    fn a_port_serves_one_kind() {
        let mut b = Builder::default();
        assert!(b.l4(5000, PortKind::Tcp, vec![]));
        assert!(!b.routes(
            5000,
            PortKind::Http,
            None,
            HostMatch::Any,
            [route("x", "/")]
        ));
        assert!(!b.l4(5000, PortKind::Udp, vec![]));
        assert_eq!(b.kind(5000), Some(PortKind::Tcp));
    }
}
