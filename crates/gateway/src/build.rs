//! Assembles the [`Config`] from what each API contributes: routes per port and host, in
//! the order each API already sorted them, certificates, passthrough and L4 routes.
//!
//! One virtual host per host pattern. The data plane picks the most specific host that
//! matches a request and walks only its routes, so each host's routes are followed by
//! the routes of every less specific host that covers all of its names (longer wildcard
//! suffixes first, then any host): a request for `a.example.com` that no route of
//! `a.example.com` takes still reaches a `*.example.com` or host-less route, as Gateway
//! API's precedence (hostname first, then the rest) and ingress-nginx both answer.

use std::collections::BTreeMap;

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

#[derive(Default)]
struct Hosts(Vec<(HostMatch, Vec<Route>)>);

impl Hosts {
    fn add(&mut self, host: HostMatch, routes: impl IntoIterator<Item = Route>) {
        match self.0.iter_mut().find(|(h, _)| *h == host) {
            Some((_, r)) => r.extend(routes),
            None => self.0.push((host, routes.into_iter().collect())),
        }
    }

    fn finish(self) -> HttpHosts {
        let mut hosts = Vec::new();
        for (host, own) in &self.0 {
            let mut covering: Vec<&(HostMatch, Vec<Route>)> =
                self.0.iter().filter(|(h, _)| covers(h, host)).collect();
            covering.sort_by_key(|(h, _)| std::cmp::Reverse(specificity(h)));
            let mut routes = own.clone();
            for (_, r) in covering {
                routes.extend(r.iter().cloned());
            }
            if routes.is_empty() {
                continue;
            }
            hosts.push(VirtualHost {
                hostnames: vec![host.clone()],
                routes,
            });
        }
        HttpHosts { hosts }
    }
}

/// Whether every name `inner` matches is also matched by `outer` (`outer != inner`).
fn covers(outer: &HostMatch, inner: &HostMatch) -> bool {
    match (outer, inner) {
        (HostMatch::Any, HostMatch::Any) => false,
        (HostMatch::Any, _) => true,
        (HostMatch::Wildcard { suffix, one_label }, HostMatch::Exact(name)) => {
            name.len() > suffix.len()
                && name.ends_with(suffix.as_str())
                && (!one_label || !name[..name.len() - suffix.len()].contains('.'))
        }
        (
            HostMatch::Wildcard {
                suffix: outer_suffix,
                one_label: outer_one,
            },
            HostMatch::Wildcard { suffix, one_label },
        ) => {
            if suffix == outer_suffix {
                *one_label && !outer_one
            } else {
                !outer_one
                    && suffix.len() > outer_suffix.len()
                    && suffix.ends_with(outer_suffix.as_str())
            }
        }
        _ => false,
    }
}

fn specificity(h: &HostMatch) -> (usize, bool) {
    match h {
        HostMatch::Exact(n) => (n.len() + 1, true),
        HostMatch::Wildcard { suffix, one_label } => (suffix.len(), *one_label),
        HostMatch::Any => (0, false),
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

/// The listeners being assembled.
#[derive(Default)]
pub(crate) struct Builder {
    ports: BTreeMap<u16, Port>,
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

    /// Opens `port` as `kind` with nothing on it yet; false if it serves another kind.
    pub(crate) fn open(&mut self, port: u16, kind: PortKind) -> bool {
        self.port(port, kind).is_some()
    }

    /// HTTP routes for `host` on a clear-text or TLS-terminating port.
    pub(crate) fn routes(
        &mut self,
        port: u16,
        kind: PortKind,
        host: HostMatch,
        routes: impl IntoIterator<Item = Route>,
    ) -> bool {
        match self.port(port, kind) {
            Some(Port::Http(hosts) | Port::Tls { hosts, .. }) => {
                hosts.add(host, routes);
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
        let listeners = self
            .ports
            .into_iter()
            .map(|(port, p)| Listener {
                port,
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
    use http::StatusCode;

    fn route(name: &str) -> Route {
        Route {
            name: RouteName {
                kind: "Test",
                namespace: "ns".into(),
                name: name.into(),
                rule: 0,
            },
            matches: RouteMatch {
                path: PathMatch::Prefix("/".into()),
                method: None,
                headers: vec![],
                query: vec![],
            },
            action: Action::Respond(StatusCode::OK),
        }
    }

    fn names(c: &Config, host: &HostMatch) -> Vec<String> {
        let ListenerKind::Http(h) = &c.listeners[0].kind else {
            panic!()
        };
        h.hosts
            .iter()
            .find(|v| v.hostnames[0] == *host)
            .unwrap()
            .routes
            .iter()
            .map(|r| r.name.name.clone())
            .collect()
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
        assert!(b.routes(80, PortKind::Http, HostMatch::Any, [route("any")]));
        assert!(b.routes(80, PortKind::Http, many.clone(), [route("many")]));
        assert!(b.routes(80, PortKind::Http, exact.clone(), [route("exact")]));
        assert!(b.routes(80, PortKind::Http, one.clone(), [route("one")]));
        assert!(b.routes(80, PortKind::Http, one_top.clone(), [route("one-top")]));
        let c = b.finish();
        assert_eq!(names(&c, &exact), ["exact", "one", "many", "any"]);
        assert_eq!(names(&c, &one), ["one", "many", "any"]);
        assert_eq!(names(&c, &one_top), ["one-top", "many", "any"]);
        assert_eq!(names(&c, &HostMatch::Any), ["any"]);
    }

    #[test]
    fn a_port_serves_one_kind() {
        let mut b = Builder::default();
        assert!(b.l4(5000, PortKind::Tcp, vec![]));
        assert!(!b.routes(5000, PortKind::Http, HostMatch::Any, [route("x")]));
        assert!(!b.l4(5000, PortKind::Udp, vec![]));
        assert_eq!(b.kind(5000), Some(PortKind::Tcp));
    }
}
