//! Routing: from a request's method and path to discovery, OpenAPI or a resource
//! handler. Which subresources exist, on which resource types and with which methods,
//! is one table ([`SUBRESOURCES`]).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::response::{ResponseBody, json_response, status_response, text};
use super::{Req, State, Target, auth, blocking, delete, read, subresource, watch, write};
use crate::discovery;
use crate::error::{Error, Status};
use crate::resources::{self, ResourceType};

/// kube-apiserver's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// A subresource: `.../NAME/SUBRESOURCE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Subresource {
    /// `status`: the object's own verbs, changing only `status` (or only what is not).
    Status,
    /// `scale`: the autoscaling/v1 `Scale` view of a workload.
    Scale,
    /// `pods/log`: proxied to the kubelet.
    Log,
    /// `serviceaccounts/token`: a TokenRequest.
    Token,
    /// `namespaces/finalize`: only `spec.finalizers`.
    Finalize,
    /// `pods/binding`: the scheduler's assignment to a node.
    Binding,
    /// `pods/exec`, `pods/attach`, `pods/portforward`: upgraded and proxied to the
    /// kubelet.
    Stream(crate::kubelet::Stream),
}

/// Where a subresource is served and what it takes.
struct SubresourceRoute {
    sub: Subresource,
    /// The path segment.
    name: &'static str,
    /// Whether a resource type has it.
    served_on: fn(&ResourceType) -> bool,
    /// The methods it answers; others get 405.
    methods: &'static [Method],
}

/// Every subresource this server serves.
const SUBRESOURCES: &[SubresourceRoute] = &[
    SubresourceRoute {
        sub: Subresource::Status,
        name: "status",
        served_on: |rt| rt.status,
        methods: &[Method::GET, Method::PUT, Method::PATCH],
    },
    SubresourceRoute {
        sub: Subresource::Scale,
        name: "scale",
        served_on: ResourceType::has_scale,
        methods: &[Method::GET, Method::PUT, Method::PATCH],
    },
    SubresourceRoute {
        sub: Subresource::Log,
        name: "log",
        served_on: |rt| rt.is("", "pods"),
        methods: &[Method::GET],
    },
    SubresourceRoute {
        sub: Subresource::Token,
        name: "token",
        served_on: |rt| rt.is("", "serviceaccounts"),
        methods: &[Method::POST],
    },
    SubresourceRoute {
        sub: Subresource::Finalize,
        name: "finalize",
        served_on: |rt| rt.is("", "namespaces"),
        methods: &[Method::PUT],
    },
    SubresourceRoute {
        sub: Subresource::Binding,
        name: "binding",
        served_on: |rt| rt.is("", "pods"),
        methods: &[Method::POST],
    },
    // WebSocket clients GET, SPDY clients POST.
    SubresourceRoute {
        sub: Subresource::Stream(crate::kubelet::Stream::Exec),
        name: "exec",
        served_on: |rt| rt.is("", "pods"),
        methods: &[Method::GET, Method::POST],
    },
    SubresourceRoute {
        sub: Subresource::Stream(crate::kubelet::Stream::Attach),
        name: "attach",
        served_on: |rt| rt.is("", "pods"),
        methods: &[Method::GET, Method::POST],
    },
    SubresourceRoute {
        sub: Subresource::Stream(crate::kubelet::Stream::PortForward),
        name: "portforward",
        served_on: |rt| rt.is("", "pods"),
        methods: &[Method::GET, Method::POST],
    },
];

impl Subresource {
    /// The subresource `name` of `rt`, if it has one by that name.
    fn find(rt: &ResourceType, name: &str) -> Option<Subresource> {
        SUBRESOURCES
            .iter()
            .find(|s| s.name == name && (s.served_on)(rt))
            .map(|s| s.sub)
    }

    /// Whether it answers `method`.
    fn allows(self, method: &Method) -> bool {
        SUBRESOURCES
            .iter()
            .any(|s| s.sub == self && s.methods.contains(method))
    }

    /// Its path segment.
    pub(super) fn name(self) -> &'static str {
        SUBRESOURCES
            .iter()
            .find(|s| s.sub == self)
            .map_or("", |s| s.name)
    }
}

/// Handles one request (already authenticated).
pub(crate) async fn handle<B>(state: Arc<State>, req: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match route(state, req).await {
        Ok(r) => r,
        Err(e) => {
            if !matches!(e, Error::Status(_)) {
                tracing::warn!(%method, %path, error = %k8s::ErrorChain(&e), "request failed");
            }
            status_response(&e.to_status())
        }
    }
}

async fn route<B>(state: Arc<State>, req: Request<B>) -> Result<Response<ResponseBody>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (mut parts, body) = req.into_parts();
    // A streaming subresource's connection, once upgraded.
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let path = parts.uri.path().to_string();
    let user = auth::request_user(&parts.extensions);
    let user = match crate::rbac::authorize_request(
        &state.authz,
        &parts.method,
        &parts.uri,
        &parts.headers,
        user,
    ) {
        Ok(user) => user,
        Err(e) => {
            // The body is read (and dropped) before the 403 goes out, as Go's server
            // reads what is left of it: a connection closed on a client still sending
            // would show it a broken pipe instead of the refusal.
            let _ = http_body_util::Limited::new(body, MAX_BODY).collect().await;
            return Err(e);
        }
    };
    let hv = |h: header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(Status::too_large().into());
        }
        Err(e) => return Err(Status::bad_request(format!("reading request body: {e}")).into()),
    };
    let r = Req {
        user,
        method: parts.method.clone(),
        query: k8s::http::query_pairs(parts.uri.query().unwrap_or("")),
        accept: hv(header::ACCEPT),
        content_type: hv(header::CONTENT_TYPE),
        body,
        headers: parts.headers.clone(),
        upgrade: std::sync::Mutex::new(upgrade),
    };
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let all = state.catalog.all();
    let served = |g: &str, v: &str| all.iter().any(|rt| rt.group == g && rt.version == v);
    let group_served = |g: &str| all.iter().any(|rt| rt.group == g);
    let get_only = |resp: Response<ResponseBody>| {
        if r.method == Method::GET {
            Ok(resp)
        } else {
            Err(Error::from(Status::method_not_allowed(r.method.as_str())))
        }
    };
    match segs.as_slice() {
        ["version"] => get_only(json_response(200, &version(), "application/json")),
        ["healthz" | "livez" | "readyz", ..] => get_only(text("ok")),
        ["api"] => {
            if discovery::wants_aggregated(&r.accept) {
                get_only(json_response(
                    200,
                    &discovery::aggregated(&all, true),
                    discovery::AGGREGATED_CT,
                ))
            } else {
                let addr = state
                    .server_address
                    .lock()
                    .map(|a| a.clone())
                    .unwrap_or_default();
                get_only(json_response(
                    200,
                    &discovery::api_versions(&addr),
                    "application/json",
                ))
            }
        }
        ["apis"] => {
            if discovery::wants_aggregated(&r.accept) {
                get_only(json_response(
                    200,
                    &discovery::aggregated(&all, false),
                    discovery::AGGREGATED_CT,
                ))
            } else {
                get_only(json_response(
                    200,
                    &discovery::api_group_list(&all),
                    "application/json",
                ))
            }
        }
        ["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"] => {
            if r.method != Method::POST {
                return Err(Status::method_not_allowed(r.method.as_str()).into());
            }
            // `kubectl auth whoami`.
            Ok(json_response(
                201,
                &json!({"kind": "SelfSubjectReview", "apiVersion": "authentication.k8s.io/v1",
                    "metadata": {"creationTimestamp": null},
                    "status": {"userInfo": {"username": r.user.name, "groups": r.user.groups}}}),
                "application/json",
            ))
        }
        ["apis", "authentication.k8s.io", "v1", "tokenreviews"] => {
            if r.method != Method::POST {
                return Err(Status::method_not_allowed(r.method.as_str()).into());
            }
            blocking(state, move |s| {
                let body = r.json_body()?;
                let review: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| Status::bad_request(format!("error decoding TokenReview: {e}")))?;
                let out = s
                    .signer
                    .token_review(&s.store, &review, crate::util::now_secs())?;
                Ok(json_response(201, &out, "application/json"))
            })
            .await
        }
        ["apis", "authorization.k8s.io", "v1", rest @ ..]
            if crate::rbac::review::Review::from_path(rest).is_some() =>
        {
            if r.method != Method::POST {
                return Err(Status::method_not_allowed(r.method.as_str()).into());
            }
            let (review, ns) =
                crate::rbac::review::Review::from_path(rest).ok_or_else(Status::not_found_path)?;
            let body = r.json_body()?;
            let out = crate::rbac::review::answer(&state.authz, review, ns, &r.user, &body)?;
            Ok(json_response(201, &out, "application/json"))
        }
        ["api", "v1", "namespaces", ns, "bindings"] => {
            if r.method != Method::POST {
                return Err(Status::method_not_allowed(r.method.as_str()).into());
            }
            let ns = ns.to_string();
            blocking(state, move |s| subresource::bind_pod(s, &ns, None, &r)).await
        }
        ["api", "v1", rest @ ..] => resource(state, "", "v1", rest, r).await,
        ["apis", g] if group_served(g) => get_only(json_response(
            200,
            &discovery::api_group(&all, g),
            "application/json",
        )),
        ["apis", g, v, rest @ ..] if served(g, v) => resource(state, g, v, rest, r).await,
        ["openapi", "v2"] => get_only(discovery::openapi_v2(&r.accept)),
        ["openapi", "v3"] => get_only(json_response(
            200,
            &discovery::openapi_index(&all),
            "application/json",
        )),
        ["openapi", "v3", rest @ ..] => match discovery::openapi_gv(&all, &rest.join("/")) {
            Some(doc) => get_only(json_response(200, &doc, "application/json")),
            None => Err(Status::not_found_path().into()),
        },
        _ => Err(Status::not_found_path().into()),
    }
}

/// The Kubernetes version this server presents itself as.
fn version() -> Value {
    let v = crate::KUBERNETES_VERSION;
    let minor = v.split('.').nth(1).unwrap_or("0");
    json!({
        "major": "1",
        "minor": minor,
        "gitVersion": format!("{v}-kubewire.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}

/// What a resource path names: `None` for a path that names nothing served (404),
/// an unknown subresource included.
fn parse_target(
    cat: &resources::Catalog,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<Target> {
    let t = |rt, ns: Option<&str>, name: Option<&str>, sub: Option<Subresource>| Target {
        rt,
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub,
    };
    match rest {
        ["namespaces", ns, r, tail @ ..]
            if cat
                .lookup(group, version, r)
                .is_some_and(|rt| rt.namespaced) =>
        {
            let rt = cat.lookup(group, version, r)?;
            match tail {
                [] => Some(t(rt, Some(ns), None, None)),
                [name] => Some(t(rt, Some(ns), Some(name), None)),
                [name, sub] => Some(t(
                    rt,
                    Some(ns),
                    Some(name),
                    Some(Subresource::find(rt, sub)?),
                )),
                _ => None,
            }
        }
        [r, tail @ ..] => {
            let rt = cat.lookup(group, version, r)?;
            match tail {
                [] => Some(t(rt, None, None, None)),
                [name] if !rt.namespaced => Some(t(rt, None, Some(name), None)),
                [name, sub] if !rt.namespaced => {
                    Some(t(rt, None, Some(name), Some(Subresource::find(rt, sub)?)))
                }
                _ => None,
            }
        }
        [] => None,
    }
}

async fn resource(
    state: Arc<State>,
    group: &str,
    version: &str,
    rest: &[&str],
    r: Req,
) -> Result<Response<ResponseBody>, Error> {
    if rest.is_empty() {
        if r.method != Method::GET {
            return Err(Status::method_not_allowed(r.method.as_str()).into());
        }
        return Ok(json_response(
            200,
            &discovery::resource_list(&state.catalog.all(), group, version),
            "application/json",
        ));
    }
    let target =
        parse_target(&state.catalog, group, version, rest).ok_or_else(Status::not_found_path)?;
    if target.rt.computed() {
        return super::metrics::serve(state, target, r).await;
    }
    if let Some(sub) = target.sub
        && !sub.allows(&r.method)
    {
        return Err(Status::method_not_allowed(r.method.as_str()).into());
    }
    match target.sub {
        Some(Subresource::Log) => return subresource::pod_log(state, target, r).await,
        Some(Subresource::Stream(kind)) => {
            return subresource::pod_stream(state, target, r, kind).await;
        }
        Some(Subresource::Finalize) => {
            return blocking(state, move |s| {
                subresource::finalize_namespace(s, &target, &r)
            })
            .await;
        }
        Some(Subresource::Binding) => {
            let ns = target.namespace.clone().unwrap_or_default();
            let name = target.name.clone();
            return blocking(state, move |s| {
                subresource::bind_pod(s, &ns, name.as_deref(), &r)
            })
            .await;
        }
        Some(Subresource::Token) => {
            return blocking(state, move |s| subresource::token_request(s, &target, &r)).await;
        }
        Some(Subresource::Scale) => {
            return blocking(state, move |s| subresource::scale(s, &target, &r)).await;
        }
        // The status subresource is served by the object's own verbs.
        Some(Subresource::Status) | None => {}
    }
    let crd_write = target
        .rt
        .is("apiextensions.k8s.io", "customresourcedefinitions")
        && r.method != Method::GET;
    let reload = crd_write.then(|| state.clone());
    let webhook_write = target.rt.group == crate::webhook::config::GROUP && r.method != Method::GET;
    let reload_webhooks = webhook_write.then(|| state.clone());
    if super::admission_webhooks::wanted(&state, &target, &r) {
        return super::admission_webhooks::write(state, target, r).await;
    }
    let result = match (&r.method, &target.name) {
        (&Method::GET, Some(_)) if r.flag("watch") => watch::watch(state, target, r).await,
        (&Method::GET, Some(_)) => blocking(state, move |s| read::get(s, &target, &r)).await,
        (&Method::GET, None) if r.flag("watch") => watch::watch(state, target, r).await,
        (&Method::GET, None) => blocking(state, move |s| read::list(s, &target, &r)).await,
        (&Method::POST, None) => blocking(state, move |s| write::create(s, &target, &r)).await,
        (&Method::PUT, Some(_)) => blocking(state, move |s| write::update(s, &target, &r)).await,
        (&Method::PATCH, Some(_)) => {
            blocking(state, move |s| write::patch_object(s, &target, &r)).await
        }
        (&Method::DELETE, Some(_)) => {
            blocking(state, move |s| delete::delete(s, &target, &r)).await
        }
        (&Method::DELETE, None) => {
            blocking(state, move |s| delete::delete_collection(s, &target, &r)).await
        }
        (m, _) => Err(Status::method_not_allowed(m.as_str()).into()),
    };
    // A CRD write changes what is served.
    if let Some(state) = reload
        && result.is_ok()
    {
        let st = state.clone();
        tokio::task::spawn_blocking(move || st.reload_crds())
            .await
            .map_err(Error::Task)??;
    }
    // A webhook configuration's write changes which webhooks the next write sees.
    if let Some(state) = reload_webhooks
        && result.is_ok()
    {
        let st = state.clone();
        tokio::task::spawn_blocking(move || st.webhooks.reload(&st.store))
            .await
            .map_err(Error::Task)??;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subresources_by_type_and_method() {
        let pods = resources::lookup("", "v1", "pods").unwrap();
        let deployments = resources::lookup("apps", "v1", "deployments").unwrap();
        let configmaps = resources::lookup("", "v1", "configmaps").unwrap();
        assert_eq!(Subresource::find(pods, "log"), Some(Subresource::Log));
        assert_eq!(
            Subresource::find(pods, "binding"),
            Some(Subresource::Binding)
        );
        assert_eq!(Subresource::find(pods, "status"), Some(Subresource::Status));
        assert_eq!(Subresource::find(pods, "scale"), None);
        assert_eq!(
            Subresource::find(deployments, "scale"),
            Some(Subresource::Scale)
        );
        assert_eq!(Subresource::find(configmaps, "status"), None);
        assert_eq!(Subresource::find(deployments, "log"), None);
        // Status takes the object's reads and writes, not DELETE or POST.
        assert!(Subresource::Status.allows(&Method::PATCH));
        assert!(!Subresource::Status.allows(&Method::DELETE));
        assert!(!Subresource::Status.allows(&Method::POST));
        assert!(Subresource::Binding.allows(&Method::POST));
        assert!(!Subresource::Log.allows(&Method::POST));
        assert!(Subresource::Finalize.allows(&Method::PUT));
        let exec = Subresource::find(pods, "exec").unwrap();
        assert!(exec.allows(&Method::GET) && exec.allows(&Method::POST));
        assert_eq!(
            Subresource::find(pods, "portforward"),
            Some(Subresource::Stream(crate::kubelet::Stream::PortForward))
        );
        assert_eq!(Subresource::find(deployments, "exec"), None);
        assert!(!Subresource::Token.allows(&Method::GET));
    }
}
