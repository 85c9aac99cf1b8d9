//! The Gateway API conformance suite's scenarios, run against a lab: its base manifests and
//! a scenario's manifests (vendored unchanged in `data/gateway-conformance/`, README
//! there) applied to a fresh lab, then each expected request sent with curl from
//! `outside` to the Gateway's address and the answer checked as upstream's suite checks
//! it: the status, and for a 200 the request the echo-basic backend saw (path, method,
//! host, headers), which pod answered (by name prefix) and its namespace; for a redirect
//! the `Location`. Each request is repeated until it has passed [`CONSECUTIVE`] times in
//! a row, within [`CONSISTENCY`] (routes take a moment to be served), as upstream's
//! `MakeRequestAndExpectEventuallyConsistentResponse` does.

#![allow(clippy::disallowed_methods)] // runs kubectl and curl and reads their output

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::running::RunningLab;
use crate::wait_until;

/// Upstream's default `RequiredConsecutiveSuccesses`.
pub const CONSECUTIVE: usize = 3;
/// Upstream's default `MaxTimeToConsistency`.
pub const CONSISTENCY: Duration = Duration::from_secs(30);
/// Namespaces of the base manifests.
pub const INFRA: &str = "gateway-conformance-infra";
/// The namespace of `app-backend-v1`/`-v2`.
pub const APP: &str = "gateway-conformance-app-backend";
/// The namespace of `web-backend`.
pub const WEB: &str = "gateway-conformance-web-backend";
/// Our controller's name, in route parent statuses.
pub const CONTROLLER: &str = "kubewire.io/gateway";

/// The vendored manifests' directory.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/gateway-conformance")
}

/// A vendored manifest (`base/manifests.yaml`, `tests/NAME.yaml`) with `{GATEWAY_CLASS_NAME}`
/// replaced by `kubewire` and `{GATEWAY_CONTROLLER_NAME}` by ours.
pub fn manifest(path: &str) -> String {
    let text = std::fs::read_to_string(data_dir().join(path))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"));
    text.replace("{GATEWAY_CLASS_NAME}", "kubewire")
        .replace("{GATEWAY_CONTROLLER_NAME}", CONTROLLER)
}

/// The Deployments of the base manifests that HTTP scenarios send to: (namespace, name,
/// replicas).
const HTTP_BACKENDS: &[(&str, &str, usize)] = &[
    (INFRA, "infra-backend-v1", 2),
    (INFRA, "infra-backend-v2", 2),
    (INFRA, "infra-backend-v3", 1),
    (APP, "app-backend-v1", 1),
    (APP, "app-backend-v2", 1),
    (WEB, "web-backend", 1),
];

/// A lab with the base manifests and one scenario's applied.
#[derive(Debug)]
pub struct Suite {
    /// The lab.
    pub lab: RunningLab,
}

impl Suite {
    /// A fresh two-node lab with the base manifests and `scenario`
    /// (`tests/<scenario>.yaml`) applied; returns once the HTTP backends' Services have
    /// all their endpoints.
    pub fn up(scenario: &str) -> Suite {
        let lab = RunningLab::up(2);
        lab.apply(&manifest("base/manifests.yaml"));
        let suite = Suite { lab };
        // The certificates upstream's suite makes before any scenario (its Go code, not
        // its manifests), self-signed for the same names.
        suite.tls_secret(WEB, "certificate", &["*"]);
        suite.tls_secret(
            INFRA,
            "tls-validity-checks-certificate",
            &["*", "*.org", "*.wildcard.org"],
        );
        suite
            .lab
            .apply(&manifest(&format!("tests/{scenario}.yaml")));
        for (ns, name, replicas) in HTTP_BACKENDS {
            assert!(
                wait_until(Duration::from_secs(120), || suite.endpoints(ns, name).len()
                    >= *replicas),
                "{ns}/{name} has no {replicas} endpoints: {}",
                suite.lab.kubectl(&["get", "pods", "-A", "-o", "wide"])
            );
        }
        suite
    }

    /// Creates the `kubernetes.io/tls` Secret `ns/name` with a new self-signed certificate
    /// for `hosts`.
    pub fn tls_secret(&self, ns: &str, name: &str, hosts: &[&str]) {
        let ck = rcgen::generate_simple_self_signed(
            hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let b64 = |s: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, s);
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": ns},
            "data": {
                "tls.crt": b64(&ck.cert.pem()),
                "tls.key": b64(&ck.signing_key.serialize_pem()),
            },
        });
        self.lab.apply(&secret.to_string());
    }

    /// The ready addresses of the Endpoints `ns/name` (none while it does not exist).
    pub fn endpoints(&self, ns: &str, name: &str) -> Vec<String> {
        let out = crate::cluster::kubectl(
            &self.lab.kubeconfig,
            &["get", "endpoints", "-n", ns, name, "-o", "json"],
        );
        if !out.status.success() {
            return Vec::new();
        }
        let ep: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        ep["subsets"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["addresses"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["ip"].as_str().map(str::to_owned))
            .collect()
    }

    /// `kubectl get KIND -n NS NAME -o json`, or `Null` when it fails.
    pub fn get(&self, kind: &str, ns: &str, name: &str) -> Value {
        let out = crate::cluster::kubectl(
            &self.lab.kubeconfig,
            &["get", kind, "-n", ns, name, "-o", "json"],
        );
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// Waits for the Gateway `ns/name` to be `Programmed` with an address, and returns it.
    pub fn gateway_address(&self, ns: &str, name: &str) -> String {
        let addr = || {
            let gw = self.get("gateways.gateway.networking.k8s.io", ns, name);
            let programmed = condition(&gw["status"]["conditions"], "Programmed")
                .is_some_and(|c| c["status"] == "True");
            programmed
                .then(|| {
                    gw["status"]["addresses"][0]["value"]
                        .as_str()
                        .map(str::to_owned)
                })
                .flatten()
        };
        assert!(
            wait_until(Duration::from_secs(60), || addr().is_some()),
            "Gateway {ns}/{name} not programmed with an address: {}",
            self.lab
                .kubectl(&["get", "gateways", "-n", ns, name, "-o", "yaml"])
        );
        addr().unwrap()
    }

    /// Waits until the route `kind ns/name` has, for the parent Gateway `gw` (`ns/name`),
    /// each condition of `want` (type, status, reason; an empty reason is any).
    pub fn route_conditions(
        &self,
        kind: &str,
        route: (&str, &str),
        gw: (&str, &str),
        want: &[(&str, &str, &str)],
    ) {
        let holds = || {
            let r = self.get(kind, route.0, route.1);
            let Some(parent) = r["status"]["parents"].as_array().and_then(|ps| {
                ps.iter()
                    .find(|p| {
                        p["controllerName"] == CONTROLLER
                            && p["parentRef"]["name"] == gw.1
                            && p["parentRef"]["namespace"].as_str().unwrap_or(route.0) == gw.0
                    })
                    .cloned()
            }) else {
                return false;
            };
            // Upstream's `ConditionsHaveLatestObservedGeneration`.
            let generation = &r["metadata"]["generation"];
            let current = parent["conditions"]
                .as_array()
                .is_some_and(|cs| cs.iter().all(|c| &c["observedGeneration"] == generation));
            current
                && want.iter().all(|(t, s, reason)| {
                    condition(&parent["conditions"], t).is_some_and(|c| {
                        c["status"] == *s && (reason.is_empty() || c["reason"] == *reason)
                    })
                })
        };
        assert!(
            wait_until(Duration::from_secs(60), holds),
            "{kind} {}/{}: parent {}/{} lacks {want:?}: {}",
            route.0,
            route.1,
            gw.0,
            gw.1,
            self.lab
                .kubectl(&["get", kind, "-n", route.0, route.1, "-o", "yaml"])
        );
    }

    /// Waits for the HTTPRoutes `routes` (in `ns`) to be Accepted with their references
    /// resolved by the Gateway `gw` (`ns/name`), and returns the Gateway's address: upstream's
    /// `GatewayAndHTTPRoutesMustBeAccepted` + `HTTPRouteMustHaveResolvedRefsConditionsTrue`.
    pub fn accepted(&self, gw: (&str, &str), routes: &[(&str, &str)]) -> String {
        self.accepted_with(
            gw,
            routes,
            &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")],
        )
    }

    /// The Gateway's address once `routes` (HTTPRoutes) have the conditions `want` for it.
    pub fn accepted_with(
        &self,
        gw: (&str, &str),
        routes: &[(&str, &str)],
        want: &[(&str, &str, &str)],
    ) -> String {
        let addr = self.gateway_address(gw.0, gw.1);
        for r in routes {
            self.route_conditions("httproutes.gateway.networking.k8s.io", *r, gw, want);
        }
        addr
    }

    /// Sends `n` requests for `path` in one curl (one connection), each of which must be
    /// answered 200 by echo-basic; returns how many each pod-name prefix of `backends`
    /// answered.
    pub fn distribution(&self, addr: &str, path: &str, n: usize, backends: &[&str]) -> Vec<usize> {
        let text = self.blast(addr, path, &[], n);
        let pods: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("\"pod\": \""))
            .map(|l| l.trim_end_matches([',', '"']))
            .collect();
        assert_eq!(pods.len(), n, "{n} requests, {} echoed: {text}", pods.len());
        backends
            .iter()
            .map(|b| pods.iter().filter(|p| p.starts_with(b)).count())
            .collect()
    }

    /// Sends `n` GETs for `path` with `headers` in one curl (one connection) from
    /// `outside`; returns the bodies, one after the other.
    pub fn blast(&self, addr: &str, path: &str, headers: &[(&str, &str)], n: usize) -> String {
        let url = format!("http://{addr}{path}");
        let headers: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let mut args = vec!["curl", "-s", "--max-time", "60"];
        for h in &headers {
            args.extend(["-H", h]);
        }
        for _ in 0..n {
            args.push(&url);
        }
        let out = self.lab.exec("outside", &args);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until each listener `(name, attachedRoutes)` of the Gateway `gw` is Accepted
    /// and ResolvedRefs with that many routes attached and HTTPRoute among its
    /// supportedKinds (upstream's `GatewayStatusMustHaveListeners`, for HTTP listeners),
    /// and the Gateway has no other listener.
    pub fn listeners(&self, gw: (&str, &str), want: &[(&str, i64)]) {
        const OK: &[(&str, &str, &str)] = &[("Accepted", "True", ""), ("ResolvedRefs", "True", "")];
        let want: Vec<ListenerWant<'_>> = want
            .iter()
            .map(|(name, attached)| ListenerWant {
                name,
                attached: *attached,
                kinds: &["HTTPRoute"],
                kinds_among: true,
                conditions: OK,
            })
            .collect();
        self.gateway_must(gw, &[], Some(&want));
    }

    /// Waits until the Gateway `gw` has the conditions `want` (type, status, reason; empty
    /// reason: any), all of its conditions naming its generation (upstream's
    /// `GatewayMustHaveLatestConditions`), and, when given, exactly the listeners
    /// `listeners`.
    pub fn gateway_must(
        &self,
        gw: (&str, &str),
        want: &[(&str, &str, &str)],
        listeners: Option<&[ListenerWant<'_>]>,
    ) {
        let holds = || {
            let g = self.get("gateways.gateway.networking.k8s.io", gw.0, gw.1);
            let generation = &g["metadata"]["generation"];
            let conds = &g["status"]["conditions"];
            let latest = conds.as_array().is_some_and(|cs| {
                !cs.is_empty() && cs.iter().all(|c| &c["observedGeneration"] == generation)
            });
            latest
                && conditions_hold(conds, want)
                && listeners.is_none_or(|want| {
                    let ls = g["status"]["listeners"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    ls.len() == want.len() && want.iter().all(|w| ls.iter().any(|l| w.matches(l)))
                })
        };
        assert!(
            wait_until(Duration::from_secs(60), holds),
            "Gateway {}/{} lacks {want:?} / {listeners:?}: {}",
            gw.0,
            gw.1,
            self.lab
                .kubectl(&["get", "gateways", "-n", gw.0, gw.1, "-o", "yaml"])
        );
    }

    /// Waits until every listener of the Gateway `gw` has no route attached (upstream's
    /// `GatewayMustHaveZeroRoutes`).
    pub fn zero_routes(&self, gw: (&str, &str)) {
        let holds = || {
            let g = self.get("gateways.gateway.networking.k8s.io", gw.0, gw.1);
            g["status"]["listeners"]
                .as_array()
                .is_some_and(|ls| !ls.is_empty() && ls.iter().all(|l| l["attachedRoutes"] == 0))
        };
        assert!(
            wait_until(Duration::from_secs(60), holds),
            "Gateway {}/{} has routes attached: {}",
            gw.0,
            gw.1,
            self.lab
                .kubectl(&["get", "gateways", "-n", gw.0, gw.1, "-o", "yaml"])
        );
    }

    /// Sends `req` from `outside` to `addr` once.
    pub fn send(&self, addr: &str, req: &Request<'_>) -> Result<Answer, String> {
        let method = if req.method.is_empty() {
            "GET"
        } else {
            req.method
        };
        let server_name = if req.sni.is_empty() {
            req.host
        } else {
            req.sni
        };
        let url = if req.https {
            let name = server_name.split(':').next().unwrap_or_default();
            format!("https://{name}{}", req.path)
        } else {
            format!("http://{addr}{}", req.path)
        };
        let mut args: Vec<String> = ["curl", "-s", "-i", "--path-as-is", "--max-time", "5"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if req.h2c {
            args.push("--http2-prior-knowledge".into());
        }
        // `-X HEAD` would wait for a body that never comes.
        if method == "HEAD" {
            args.push("--head".into());
        } else {
            args.extend(["-X".into(), method.to_owned()]);
        }
        if req.https {
            let name = server_name.split(':').next().unwrap_or_default();
            args.extend([
                "-k".into(),
                "--resolve".into(),
                format!("{name}:443:{addr}"),
            ]);
            if !req.sni.is_empty() {
                args.extend(["--http2".into(), "-H".into(), format!("Host: {}", req.host)]);
            }
        } else if !req.host.is_empty() {
            args.extend(["-H".into(), format!("Host: {}", req.host)]);
        }
        for (k, v) in req.headers {
            args.extend(["-H".into(), format!("{k}: {v}")]);
        }
        let set: Vec<String> = req
            .backend_sets
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect();
        // As upstream, always sent; empty when nothing is asked.
        args.extend(["-H".into(), format!("X-Echo-Set-Header: {}", set.join(","))]);
        args.push(url);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.lab.exec("outside", &argv);
        if !out.status.success() {
            return Err(format!(
                "curl failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Answer::parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Sends `req` until its answer passes `expect` [`CONSECUTIVE`] times in a row; panics
    /// with the last failure after [`CONSISTENCY`].
    pub fn expect(&self, addr: &str, req: &Request<'_>, expect: &Expect<'_>) {
        let deadline = Instant::now() + CONSISTENCY;
        let mut streak = 0;
        loop {
            match self.send(addr, req).and_then(|a| expect.check(req, &a)) {
                Ok(()) => {
                    streak += 1;
                    if streak >= CONSECUTIVE {
                        return;
                    }
                }
                Err(e) => {
                    streak = 0;
                    assert!(
                        Instant::now() < deadline,
                        "{req:?} → {e}\nexpected {expect:?}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}

impl Suite {
    /// As [`Suite::expect`], but each attempt sends `req` with `&uuid=<new id>` appended to
    /// its path (a query string must already be there), as upstream's retry scenario does
    /// so that echo-basic counts each attempt's tries afresh.
    pub fn expect_fresh(&self, addr: &str, req: &Request<'_>, expect: &Expect<'_>) {
        let deadline = Instant::now() + CONSISTENCY;
        let mut streak = 0;
        loop {
            let path = format!("{}&uuid={}", req.path, crate::unique_name("u"));
            let fresh = Request {
                path: &path,
                ..*req
            };
            match self
                .send(addr, &fresh)
                .and_then(|a| expect.check(&fresh, &a))
            {
                Ok(()) => {
                    streak += 1;
                    if streak >= CONSECUTIVE {
                        return;
                    }
                }
                Err(e) => {
                    streak = 0;
                    assert!(
                        Instant::now() < deadline,
                        "{fresh:?} → {e}\nexpected {expect:?}"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    /// How many times the pods of Deployment `app` in `ns` logged echo-basic's line for a
    /// request to `target` (path and query).
    pub fn echoed(&self, ns: &str, app: &str, target: &str) -> usize {
        let line = format!("Echoing back request made to {target} to client");
        let pods = self
            .lab
            .json(&["get", "pods", "-n", ns, "-l", &format!("app={app}")]);
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["metadata"]["name"].as_str())
            .map(|pod| {
                let out = crate::cluster::kubectl(&self.lab.kubeconfig, &["logs", "-n", ns, pod]);
                String::from_utf8_lossy(&out.stdout).matches(&line).count()
            })
            .sum()
    }
}

/// A listener's expected status (upstream's `ListenerStatus` as its helpers compare it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListenerWant<'a> {
    /// Its name.
    pub name: &'a str,
    /// `attachedRoutes`.
    pub attached: i64,
    /// The kinds of `supportedKinds`, exactly (or, with `kinds_among`, among others).
    pub kinds: &'a [&'a str],
    /// `kinds` need only be among `supportedKinds`.
    pub kinds_among: bool,
    /// Conditions (type, status, reason; empty reason: any).
    pub conditions: &'a [(&'a str, &'a str, &'a str)],
}

impl ListenerWant<'_> {
    fn matches(&self, l: &Value) -> bool {
        let kinds: Vec<&str> = l["supportedKinds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|k| k["kind"].as_str())
            .collect();
        l["name"] == self.name
            && l["attachedRoutes"] == self.attached
            && (self.kinds_among || kinds.len() == self.kinds.len())
            && self.kinds.iter().all(|k| kinds.contains(k))
            && conditions_hold(&l["conditions"], self.conditions)
    }
}

/// Whether `conditions` has each of `want` (type, status, reason; empty reason: any).
pub fn conditions_hold(conditions: &Value, want: &[(&str, &str, &str)]) -> bool {
    want.iter().all(|(t, st, reason)| {
        condition(conditions, t)
            .is_some_and(|c| c["status"] == *st && (reason.is_empty() || c["reason"] == *reason))
    })
}

/// The condition of `type` in a `conditions` list.
pub fn condition<'a>(conditions: &'a Value, kind: &str) -> Option<&'a Value> {
    conditions.as_array()?.iter().find(|c| c["type"] == kind)
}

/// A request to send (upstream's `http.Request`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Request<'a> {
    /// The `Host` header; the Gateway's address when empty.
    pub host: &'a str,
    /// GET when empty.
    pub method: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// More request headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// Response headers the backend is asked to set (`X-Echo-Set-Header`).
    pub backend_sets: &'a [(&'a str, &'a str)],
    /// HTTPS on 443 with `host` as the server name (SNI) and not verified, as curl `-k`
    /// (the suite's certificates are self-signed for wildcards like `*`).
    pub https: bool,
    /// With `https`: a server name other than `host`, and HTTP/2 (ALPN `h2`).
    pub sni: &'a str,
    /// HTTP/2 in clear text by prior knowledge.
    pub h2c: bool,
}

/// A redirect's expected `Location` (upstream's `RedirectRequest`): empty fields default
/// as upstream's do (scheme `http`, the host the answer names, the request's path, the
/// scheme's port or none).
#[derive(Debug, Default, Clone, Copy)]
pub struct Redirect<'a> {
    /// `http` when empty.
    pub scheme: &'a str,
    /// Not checked when empty.
    pub host: &'a str,
    /// Empty: none, or the scheme's default.
    pub port: &'a str,
    /// The request's path when empty.
    pub path: &'a str,
}

/// What must come back (upstream's `ExpectedResponse`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Expect<'a> {
    /// Accepted statuses; `[200]` when empty.
    pub status: &'a [u16],
    /// The prefix of the answering pod's name (checked on 200).
    pub backend: &'a str,
    /// The answering pod's namespace (checked on 200).
    pub namespace: &'a str,
    /// The path the backend saw; the request's when `None`.
    pub backend_path: Option<&'a str>,
    /// The host the backend saw; not checked when `None`.
    pub backend_host: Option<&'a str>,
    /// The method the backend saw; the request's when `None`.
    pub backend_method: Option<&'a str>,
    /// Headers the backend saw (values joined with `,`); the request's own when `None`.
    pub backend_headers: Option<&'a [(&'a str, &'a str)]>,
    /// Headers the backend must not have seen.
    pub backend_absent: &'a [&'a str],
    /// Response headers (values joined with `,`).
    pub response_headers: &'a [(&'a str, &'a str)],
    /// Response headers that must be absent.
    pub response_absent: &'a [&'a str],
    /// For a 3xx: the `Location` expected.
    pub redirect: Option<Redirect<'a>>,
    /// Response headers whose value (values joined with `,`) must be one of the given.
    pub response_one_of: &'a [(&'a str, &'a [&'a str])],
    /// Compare response header values without their spaces.
    pub ignore_whitespace: bool,
    /// A 2xx need not come from a backend (a CORS preflight the gateway answers): no
    /// backend checks.
    pub gateway_answers: bool,
}

impl Expect<'_> {
    /// Upstream's `CompareRoundTrip`, for what these scenarios use.
    pub fn check(&self, req: &Request<'_>, a: &Answer) -> Result<(), String> {
        let statuses = if self.status.is_empty() {
            &[200][..]
        } else {
            self.status
        };
        if !statuses.contains(&a.status) {
            return Err(format!(
                "status {} (want one of {statuses:?}): {a:?}",
                a.status
            ));
        }
        if a.status == 200 && !self.gateway_answers {
            let echo: Value = serde_json::from_str(&a.body)
                .map_err(|e| format!("the body is not echo-basic's JSON ({e}): {a:?}"))?;
            let want_method = self.backend_method.unwrap_or(if req.method.is_empty() {
                "GET"
            } else {
                req.method
            });
            let want_path = self.backend_path.unwrap_or(req.path);
            if echo["path"] != want_path {
                return Err(format!("backend path {} ≠ {want_path}", echo["path"]));
            }
            if echo["method"] != want_method {
                return Err(format!("backend method {} ≠ {want_method}", echo["method"]));
            }
            if let Some(h) = self.backend_host
                && echo["host"] != h
            {
                return Err(format!("backend host {} ≠ {h}", echo["host"]));
            }
            if echo["namespace"] != self.namespace {
                return Err(format!(
                    "namespace {} ≠ {} ({})",
                    echo["namespace"], self.namespace, echo["pod"]
                ));
            }
            let seen: BTreeMap<String, String> = echo["headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| {
                    let vals: Vec<&str> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    (k.to_lowercase(), vals.join(","))
                })
                .collect();
            for (k, v) in self.backend_headers.unwrap_or(req.headers) {
                match seen.get(&k.to_lowercase()) {
                    Some(got) if got == v => {}
                    got => return Err(format!("backend header {k}: {got:?} ≠ {v:?}: {seen:?}")),
                }
            }
            for k in self.backend_absent {
                if let Some(got) = seen.get(&k.to_lowercase()) {
                    return Err(format!("backend header {k} present: {got}"));
                }
            }
            let pod = echo["pod"].as_str().unwrap_or_default();
            if !pod.starts_with(self.backend) {
                return Err(format!("pod {pod} is not {}*", self.backend));
            }
        }
        let squash = |v: &str| {
            if self.ignore_whitespace {
                v.replace(' ', "")
            } else {
                v.to_owned()
            }
        };
        if (200..400).contains(&a.status) {
            for (k, vals) in self.response_one_of {
                match a.header(k) {
                    Some(got) if vals.iter().any(|v| squash(v) == squash(&got)) => {}
                    got => {
                        return Err(format!(
                            "response header {k}: {got:?} not one of {vals:?}: {a:?}"
                        ));
                    }
                }
            }
            for (k, v) in self.response_headers {
                match a.header(k) {
                    Some(got) if squash(&got) == squash(v) => {}
                    got => return Err(format!("response header {k}: {got:?} ≠ {v:?}: {a:?}")),
                }
            }
            for k in self.response_absent {
                if let Some(got) = a.header(k) {
                    return Err(format!("response header {k} present: {got}"));
                }
            }
        }
        if let (Some(want), true) = (self.redirect, (300..400).contains(&a.status)) {
            let loc = a
                .header("location")
                .ok_or_else(|| format!("no Location: {a:?}"))?;
            let (scheme, host, port, path) = split_url(&loc)?;
            let want_scheme = if want.scheme.is_empty() {
                "http"
            } else {
                want.scheme
            };
            let want_path = if want.path.is_empty() {
                req.path.split('?').next().unwrap_or_default()
            } else {
                want.path
            };
            if scheme != want_scheme {
                return Err(format!("redirect scheme {scheme} ≠ {want_scheme} ({loc})"));
            }
            if !want.host.is_empty() && host != want.host {
                return Err(format!("redirect host {host} ≠ {} ({loc})", want.host));
            }
            if want.port.is_empty() {
                let default = match scheme.as_str() {
                    "http" => "80",
                    "https" => "443",
                    _ => "",
                };
                if !port.is_empty() && port != default {
                    return Err(format!("redirect port {port} for {scheme} ({loc})"));
                }
            } else if port != want.port {
                return Err(format!("redirect port {port} ≠ {} ({loc})", want.port));
            }
            if path != want_path {
                return Err(format!("redirect path {path} ≠ {want_path} ({loc})"));
            }
        }
        Ok(())
    }
}

/// `scheme://host[:port]/path?query` → (scheme, host, port, path).
fn split_url(url: &str) -> Result<(String, String, String, String), String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("Location {url} is not absolute"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, p) = v6.split_once(']').unwrap_or((v6, ""));
        (h, p.strip_prefix(':').unwrap_or(""))
    } else {
        authority.split_once(':').unwrap_or((authority, ""))
    };
    Ok((
        scheme.to_lowercase(),
        host.to_owned(),
        port.to_owned(),
        path.to_owned(),
    ))
}

/// An HTTP answer as curl `-i` printed it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl Answer {
    fn parse(text: &str) -> Result<Answer, String> {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no header end in {text:?}"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line in {text:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Answer {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    /// The values of header `name` joined with `,`, if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let vals: Vec<&str> = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect();
        (!vals.is_empty()).then(|| vals.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        assert_eq!(
            split_url("https://example.org:8443/a/b?x=1").unwrap(),
            (
                "https".into(),
                "example.org".into(),
                "8443".into(),
                "/a/b".into()
            )
        );
        assert_eq!(
            split_url("http://[::1]/").unwrap(),
            ("http".into(), "::1".into(), String::new(), "/".into())
        );
    }

    #[test]
    fn answers_parse() {
        let a =
            Answer::parse("HTTP/1.1 302 Found\r\nLocation: http://x/\r\nA: 1\r\na: 2\r\n\r\nbody")
                .unwrap();
        assert_eq!(a.status, 302);
        assert_eq!(a.header("a").as_deref(), Some("1,2"));
        assert_eq!(a.body, "body");
    }
}
