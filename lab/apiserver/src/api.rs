//! The REST handler: routes a request to discovery, OpenAPI or a resource verb, and
//! implements the verbs over the store with kube-apiserver's semantics.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::{Cause, Error, Status};
use crate::gc::{DeleteOpts, delete_in};
use crate::patch::{self, PatchType};
use crate::resources::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::service::{self, Ranges};
use crate::store::{EventType, Store, Txn};
use crate::util::{hex, now_secs, parse_query, rfc3339, str_at, unhex};
use crate::{apply, discovery, protobuf, strict, table, validate};

/// kube-apiserver's request body limit.
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Watches without `timeoutSeconds` end after this long (kube-apiserver picks 30-60 min).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);
/// How often a watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// Shared server state: the store and the service ranges.
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) ranges: Ranges,
    pub(crate) server_address: std::sync::Mutex<String>,
    /// Built-in and custom resource types.
    pub(crate) catalog: resources::Catalog,
    /// Signs and verifies ServiceAccount tokens.
    pub(crate) signer: crate::token::Signer,
    /// Reaches kubelets for `pods/log`.
    pub(crate) kubelet: crate::kubelet::KubeletClient,
    /// Deletions with work left (terminating namespaces, foreground owners).
    pub(crate) pending: crate::gc::Pending,
}

impl State {
    /// [`Store::write_opts`], handing the keys the transaction noted to the deletion worker.
    pub(crate) fn write<T>(
        &self,
        dry_run: bool,
        f: impl FnOnce(&mut Txn) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let (out, notes) = self.store.write_deferred(dry_run, |txn| {
            let out = f(txn)?;
            Ok((out, txn.take_notes()))
        })?;
        if !dry_run {
            self.pending.add(notes);
        }
        Ok(out)
    }
}

impl State {
    /// Re-reads the CustomResourceDefinitions into the catalog.
    pub(crate) fn reload_crds(&self) -> Result<(), Error> {
        let crd = resources::lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
            .ok_or_else(Status::not_found_path)?;
        let page = self
            .store
            .list(&format!("{}/", crd.storage_prefix()), None, None, &|_| true)?;
        self.catalog.set_crds(&page.items);
        Ok(())
    }
}

/// Who a request comes from (set by the TLS listener; in-process requests are the admin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) groups: Vec<String>,
}

impl User {
    pub(crate) fn admin() -> User {
        User {
            name: "kubewire-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub(crate) fn service_account(ns: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// The subject's common name and organizations of an X.509 certificate (DER). The
    /// issuer's names come first in the certificate, so the last common name is the
    /// subject's; this CA has no organization.
    pub(crate) fn from_certificate(der: &[u8]) -> User {
        let strings = |oid_last: u8| -> Vec<String> {
            let oid = [0x06, 0x03, 0x55, 0x04, oid_last];
            let mut out = Vec::new();
            let mut i = 0;
            while i + oid.len() + 2 <= der.len() {
                if der[i..i + oid.len()] == oid {
                    let at = i + oid.len();
                    let len = usize::from(der[at + 1]);
                    if len < 0x80
                        && let Some(v) = der.get(at + 2..at + 2 + len)
                    {
                        out.push(String::from_utf8_lossy(v).into_owned());
                    }
                    i = at;
                }
                i += 1;
            }
            out
        };
        let mut groups = strings(0x0a);
        groups.push("system:authenticated".into());
        User {
            name: strings(0x03).pop().unwrap_or_default(),
            groups,
        }
    }
}

/// A response body: a whole JSON document or a watch stream.
#[derive(Debug)]
pub struct ResponseBody(Inner);

#[derive(Debug)]
enum Inner {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

/// A whole body.
pub(crate) fn full_body(b: impl Into<Bytes>) -> ResponseBody {
    ResponseBody::full(b)
}

/// A streamed body fed by `rx` (watches, proxied logs).
pub(crate) fn stream_body(rx: mpsc::Receiver<Bytes>) -> ResponseBody {
    ResponseBody(Inner::Stream(rx))
}

impl ResponseBody {
    fn full(b: impl Into<Bytes>) -> ResponseBody {
        ResponseBody(Inner::Full(Some(b.into())))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().0 {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.0, Inner::Full(None))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.0 {
            Inner::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) => http_body::SizeHint::with_exact(0),
            Inner::Stream(_) => http_body::SizeHint::default(),
        }
    }
}

pub(crate) fn json_response(code: u16, v: &Value, content_type: &str) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, content_type)
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::full("")))
}

fn raw_json(body: Vec<u8>) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::full("")))
}

pub(crate) fn status_response(s: &Status) -> Response<ResponseBody> {
    json_response(s.code, &s.to_json(), "application/json")
}

fn text(body: &'static str) -> Response<ResponseBody> {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(ResponseBody::full(body))
        .unwrap_or_else(|_| Response::new(ResponseBody::full("")))
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
                tracing::warn!(%method, %path, error = %e, "request failed");
            }
            status_response(&e.to_status())
        }
    }
}

struct Req {
    method: Method,
    query: Vec<(String, String)>,
    accept: String,
    content_type: String,
    body: Bytes,
}

impl Req {
    fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    fn flag(&self, k: &str) -> bool {
        self.param(k).is_some_and(|v| v == "true" || v == "1")
    }
}

async fn route<B>(state: Arc<State>, req: Request<B>) -> Result<Response<ResponseBody>, Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    let user = parts
        .extensions
        .get::<User>()
        .cloned()
        .unwrap_or_else(User::admin);
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
        method: parts.method.clone(),
        query: parse_query(parts.uri.query().unwrap_or("")),
        accept: hv(header::ACCEPT),
        content_type: hv(header::CONTENT_TYPE),
        body,
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
                    "status": {"userInfo": {"username": user.name, "groups": user.groups}}}),
                "application/json",
            ))
        }
        ["api", "v1", "namespaces", ns, "bindings"] => {
            if r.method != Method::POST {
                return Err(Status::method_not_allowed(r.method.as_str()).into());
            }
            let ns = ns.to_string();
            blocking(state, move |s| bind_pod(s, &ns, None, &r)).await
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

/// What a resource path names.
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(
    cat: &resources::Catalog,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Option<Target> {
    let t = |rt, ns: Option<&str>, name: Option<&str>, sub: Option<&str>| Target {
        rt,
        namespace: ns.map(str::to_string),
        name: name.map(str::to_string),
        sub: sub.map(str::to_string),
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
                [name, sub] => Some(t(rt, Some(ns), Some(name), Some(sub))),
                _ => None,
            }
        }
        [r, tail @ ..] => {
            let rt = cat.lookup(group, version, r)?;
            match tail {
                [] => Some(t(rt, None, None, None)),
                [name] if !rt.namespaced => Some(t(rt, None, Some(name), None)),
                [name, sub] if !rt.namespaced => Some(t(rt, None, Some(name), Some(sub))),
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
    let is_log = target.sub.as_deref() == Some("log") && target.rt.is("", "pods");
    let is_token = target.sub.as_deref() == Some("token") && target.rt.is("", "serviceaccounts");
    let is_finalize = target.sub.as_deref() == Some("finalize") && target.rt.is("", "namespaces");
    let is_binding = target.sub.as_deref() == Some("binding") && target.rt.is("", "pods");
    if let Some(sub) = &target.sub
        && !((sub == "status" && target.rt.status)
            || (sub == "scale" && target.rt.has_scale())
            || is_log
            || is_token
            || is_finalize
            || is_binding)
    {
        return Err(Status::not_found_path().into());
    }
    if is_log {
        if r.method != Method::GET {
            return Err(Status::method_not_allowed(r.method.as_str()).into());
        }
        return pod_log(state, target, r).await;
    }
    if is_finalize {
        if r.method != Method::PUT {
            return Err(Status::method_not_allowed(r.method.as_str()).into());
        }
        return blocking(state, move |s| finalize_namespace(s, &target, &r)).await;
    }
    if is_binding {
        if r.method != Method::POST {
            return Err(Status::method_not_allowed(r.method.as_str()).into());
        }
        let ns = target.namespace.clone().unwrap_or_default();
        let name = target.name.clone();
        return blocking(state, move |s| bind_pod(s, &ns, name.as_deref(), &r)).await;
    }
    if is_token {
        if r.method != Method::POST {
            return Err(Status::method_not_allowed(r.method.as_str()).into());
        }
        return blocking(state, move |s| token_request(s, &target, &r)).await;
    }
    if target.sub.as_deref() == Some("scale") {
        return match r.method {
            Method::GET | Method::PUT | Method::PATCH => {
                blocking(state, move |s| scale(s, &target, &r)).await
            }
            ref m => Err(Status::method_not_allowed(m.as_str()).into()),
        };
    }
    let state2 = state.clone();
    let crd_write = target
        .rt
        .is("apiextensions.k8s.io", "customresourcedefinitions")
        && r.method != Method::GET;
    let reload = crd_write.then(|| state.clone());
    let result = match (&r.method, &target.name) {
        (&Method::GET, Some(_)) if r.flag("watch") => watch(state, target, r).await,
        (&Method::GET, Some(_)) => blocking(state, move |s| get(s, &target, &r)).await,
        (&Method::GET, None) if r.flag("watch") => watch(state, target, r).await,
        (&Method::GET, None) => blocking(state, move |s| list(s, &target, &r)).await,
        (&Method::POST, None) => blocking(state, move |s| create(s, &target, &r)).await,
        (&Method::PUT, Some(_)) => blocking(state, move |s| update(s, &target, &r)).await,
        (&Method::PATCH, Some(_)) => blocking(state, move |s| patch_object(s, &target, &r)).await,
        (&Method::DELETE, Some(_)) => blocking(state2, move |s| delete(s, &target, &r)).await,
        (&Method::DELETE, None) => {
            blocking(state2, move |s| delete_collection(s, &target, &r)).await
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
            .map_err(|e| Error::Storage(e.to_string()))??;
    }
    result
}

/// Runs storage work off the async threads: redb reads and fsyncing commits block.
async fn blocking<F>(state: Arc<State>, f: F) -> Result<Response<ResponseBody>, Error>
where
    F: FnOnce(&State) -> Result<Response<ResponseBody>, Error> + Send + 'static,
{
    let st = state.clone();
    let (resp, rv) = tokio::task::spawn_blocking(move || {
        crate::store::take_deferred();
        let resp = f(&st);
        (resp, crate::store::take_deferred())
    })
    .await
    .map_err(|e| Error::Storage(format!("storage task failed: {e}")))?;
    // Acknowledge only durable writes; the thread is free meanwhile (group commit).
    if rv > 0 {
        state.store.wait_durable(rv).await?;
    }
    resp
}

fn key_of(t: &Target, name: &str) -> String {
    t.rt.key(t.namespace.as_deref().unwrap_or(""), name)
}

fn not_found(t: &Target, name: &str) -> Error {
    Status::not_found(t.rt.group, t.rt.resource, name).into()
}

fn get(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.as_deref().unwrap_or("");
    let obj = s
        .store
        .get(&key_of(t, name))?
        .ok_or_else(|| not_found(t, name))?;
    if table::wants_table(&r.accept) {
        let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
        let tbl = table::table(t.rt, &[obj], meta, r.param("includeObject").unwrap_or(""));
        return Ok(json_response(200, &tbl, table::CONTENT_TYPE));
    }
    Ok(json_response(200, &obj, "application/json"))
}

fn selectors(t: &Target, r: &Req) -> Result<Selectors, Error> {
    Ok(Selectors {
        labels: LabelSelector::parse(r.param("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(r.param("fieldSelector").unwrap_or(""), t.rt.kind)?,
    })
}

fn prefix_of(t: &Target) -> String {
    match &t.namespace {
        Some(ns) if t.rt.namespaced => format!("{}/{ns}/", t.rt.storage_prefix()),
        _ => format!("{}/", t.rt.storage_prefix()),
    }
}

/// A continue token: the resourceVersion of the list's first page and the key to
/// continue after, so that every page shows the same snapshot (kube-apiserver's tokens
/// carry the same two things).
fn continue_token(rv: u64, key: &str) -> String {
    hex(&json!({"rv": rv, "start": key}).to_string())
}

/// Parses a continue token under `prefix`: (resourceVersion, key). Tokens of earlier
/// versions of this server (a bare key) continue at the current state.
fn parse_continue(c: &str, prefix: &str) -> Result<(Option<u64>, String), Error> {
    let bad = || {
        Status::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = unhex(c).ok_or_else(bad)?;
    let (rv, key) = match serde_json::from_str::<Value>(&raw) {
        Ok(v) if v.is_object() => (
            Some(v["rv"].as_u64().ok_or_else(bad)?),
            v["start"].as_str().ok_or_else(bad)?.to_string(),
        ),
        _ => (None, raw),
    };
    if !key.starts_with(prefix) {
        return Err(bad().into());
    }
    Ok((rv, key))
}

fn list_options_forbidden(field: &str, detail: &str) -> Error {
    let c = Cause::forbidden(field, detail);
    Status::invalid("meta.k8s.io", "ListOptions", "", &[c]).into()
}

/// Waits (up to 3 s, as kube-apiserver) for the store to reach `rv`; 504 otherwise.
fn wait_for_rv(s: &State, rv: u64) -> Result<(), Error> {
    for _ in 0..300 {
        if s.store.current_rv() >= rv {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut st = Status::new(
        504,
        "Timeout",
        format!(
            "Timeout: Too large resource version: {rv}, current: {}",
            s.store.current_rv()
        ),
    );
    st.details = Some(
        json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
    );
    Err(st.into())
}

fn list(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let sel = selectors(t, r)?;
    let prefix = prefix_of(t);
    let limit = match r.param("limit") {
        Some(l) if !l.is_empty() => Some(
            l.parse::<usize>()
                .map_err(|_| Status::bad_request(format!("invalid limit: {l:?}")))?,
        ),
        _ => None,
    }
    .filter(|l| *l > 0);
    let rv_param = r.param("resourceVersion").filter(|v| !v.is_empty());
    let rv_match = r.param("resourceVersionMatch").filter(|v| !v.is_empty());
    let parse_rv = |v: &str| {
        v.parse::<u64>().map_err(|_| {
            Error::from(Status::bad_request(format!(
                "invalid resource version: {v:?}"
            )))
        })
    };
    if let Some(m) = rv_match {
        if !matches!(m, "Exact" | "NotOlderThan") {
            return Err(Status::invalid(
                "meta.k8s.io",
                "ListOptions",
                "",
                &[Cause::not_supported(
                    "resourceVersionMatch",
                    &json!(m),
                    &["Exact", "NotOlderThan", ""],
                )],
            )
            .into());
        }
        if rv_param.is_none() {
            return Err(list_options_forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if m == "Exact" && rv_param == Some("0") {
            return Err(list_options_forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    // Which state to show: `None` the current one, `Some(rv)` the one at rv.
    let (at, after) = match r.param("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            if rv_param.is_some_and(|v| v != "0") {
                return Err(Status::bad_request(
                    "specifying resource version is not allowed when using continue",
                )
                .into());
            }
            let (rv, key) = parse_continue(c, &prefix)?;
            (rv, Some(key))
        }
        None => match (rv_param, rv_match) {
            (None | Some("0"), _) => (None, None),
            (Some(v), Some("Exact")) => {
                let rv = parse_rv(v)?;
                wait_for_rv(s, rv)?;
                (Some(rv), None)
            }
            // NotOlderThan (also without resourceVersionMatch): anything at least this new.
            (Some(v), _) => {
                wait_for_rv(s, parse_rv(v)?)?;
                (None, None)
            }
        },
    };
    let keep = |o: &Value| sel.matches(o);
    let wants_table = table::wants_table(&r.accept);
    let current = at.is_none_or(|rv| rv == s.store.current_rv());
    if current && !wants_table {
        // Without selectors the stored JSON goes out as is.
        let filter: Option<&dyn Fn(&Value) -> bool> =
            if sel.is_empty() { None } else { Some(&keep) };
        let page = s.store.list_raw(&prefix, after.as_deref(), limit, filter)?;
        // A write between the check and the read: serve the snapshot below instead.
        if at.is_none_or(|rv| rv == page.rv) {
            let mut meta = json!({"resourceVersion": page.rv.to_string()});
            if let Some(next) = &page.next {
                meta["continue"] = json!(continue_token(page.rv, next));
            }
            let head = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": meta});
            let mut body = serde_json::to_vec(&head).unwrap_or_default();
            body.pop(); // the closing brace; items follow
            body.extend_from_slice(b",\"items\":[");
            for (i, item) in page.items.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(item);
            }
            body.extend_from_slice(b"]}\n");
            return Ok(raw_json(body));
        }
    }
    let page = match at {
        None if current => s.store.list(&prefix, after.as_deref(), limit, &keep)?,
        _ => {
            let rv = at.unwrap_or_else(|| s.store.current_rv());
            let snapshot = s.store.list_at(&prefix, rv)?.map_err(|too_old| {
                let st = if after.is_some() {
                    Status::new(
                        410,
                        "Expired",
                        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                    )
                } else {
                    Status::expired(rv, too_old.oldest)
                };
                Error::from(st)
            })?;
            let mut items = Vec::new();
            let mut next = None;
            let mut last = String::new();
            for (k, o) in snapshot {
                if after.as_deref().is_some_and(|a| k.as_str() <= a) || !keep(&o) {
                    continue;
                }
                if limit.is_some_and(|l| items.len() >= l) {
                    next = Some(last);
                    break;
                }
                last = k;
                items.push(o);
            }
            crate::store::Page { items, rv, next }
        }
    };
    let mut meta = json!({"resourceVersion": page.rv.to_string()});
    if let Some(next) = &page.next {
        meta["continue"] = json!(continue_token(page.rv, next));
    }
    if wants_table {
        let tbl = table::table(
            t.rt,
            &page.items,
            meta,
            r.param("includeObject").unwrap_or(""),
        );
        return Ok(json_response(200, &tbl, table::CONTENT_TYPE));
    }
    let list = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": meta, "items": page.items});
    Ok(json_response(200, &list, "application/json"))
}

/// The request body as JSON: JSON as is, Kubernetes protobuf decoded (for the objects
/// kubectl's generators send); anything else is refused with 415.
fn json_body(r: &Req) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
    if protobuf::is_protobuf(&r.content_type) {
        return Ok(std::borrow::Cow::Owned(protobuf::to_json(&r.body)?));
    }
    let ct = r.content_type.split(';').next().unwrap_or("").trim();
    if ct.is_empty() || ct == "application/json" || ct == "*/*" {
        return Ok(std::borrow::Cow::Borrowed(&r.body));
    }
    Err(Status::new(
        415,
        "UnsupportedMediaType",
        format!("the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (got {ct:?})"),
    )
    .into())
}

/// Parses a request body into an object of `rt`'s kind (400 for anything else).
fn parse_body(t: &Target, body: &[u8]) -> Result<Value, Error> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml: {e}"))
    })?;
    let Value::Object(_) = v else {
        return Err(Status::bad_request("the body of the request must be a JSON object").into());
    };
    let rt = t.rt;
    let mut v = v;
    if let Some(kind) = v
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        && kind != rt.kind
    {
        return Err(Status::bad_request(format!(
            "the kind in the request body ({kind}) does not match the kind of the resource {} ({})",
            rt.resource, rt.kind
        ))
        .into());
    }
    if let Some(av) = v
        .get("apiVersion")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        && av != rt.api_version()
    {
        return Err(Status::bad_request(format!(
            "the API version in the data ({av}) does not match the expected API version ({})",
            rt.api_version()
        ))
        .into());
    }
    v["kind"] = json!(rt.kind);
    v["apiVersion"] = json!(rt.api_version());
    if !v["metadata"].is_object() {
        if v["metadata"].is_null() {
            v["metadata"] = json!({});
        } else {
            return Err(Status::bad_request("metadata must be an object").into());
        }
    }
    // Namespace: the URL's; a different one in the body is refused.
    let body_ns = str_at(&v, "metadata.namespace").unwrap_or("").to_string();
    if rt.namespaced {
        let ns = t.namespace.clone().unwrap_or_default();
        if ns.is_empty() {
            return Err(Status::bad_request(
                "the namespace of the object must be given in the URL",
            )
            .into());
        }
        if !body_ns.is_empty() && body_ns != ns {
            return Err(Status::bad_request("the namespace of the provided object does not match the namespace sent on the request").into());
        }
        v["metadata"]["namespace"] = json!(ns);
    } else if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("namespace");
    }
    Ok(v)
}

/// With `fieldValidation=Strict`, refuses unknown fields (400, kube-apiserver's words);
/// with `Warn`, returns them as warnings for the response's `Warning` headers.
fn check_strict(
    rt: &ResourceType,
    r: &Req,
    obj: &Value,
    prefix: bool,
) -> Result<Vec<String>, Error> {
    let mode = r.param("fieldValidation");
    if !matches!(mode, Some("Strict" | "Warn")) {
        return Ok(Vec::new());
    }
    let unknown = match (rt.custom, rt.schema) {
        (true, Some(schema)) => crate::schema::unknown_fields(schema, obj),
        (true, None) => Vec::new(),
        (false, _) => strict::unknown_fields(rt.group, rt.kind, obj),
    };
    if unknown.is_empty() {
        return Ok(Vec::new());
    }
    if mode == Some("Warn") {
        return Ok(unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect());
    }
    let msg = strict::message(&unknown);
    let msg = if prefix {
        format!(
            "{kind} in version \"{v}\" cannot be handled as a {kind}: {msg}",
            kind = rt.kind,
            v = rt.version
        )
    } else {
        msg
    };
    Err(Status::bad_request(msg).into())
}

/// Adds `Warning: 299 - "..."` headers, which kubectl prints as `Warning: ...`.
fn with_warnings(mut resp: Response<ResponseBody>, warnings: &[String]) -> Response<ResponseBody> {
    for w in warnings {
        let quoted = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

fn dry_run(r: &Req) -> bool {
    r.param("dryRun").is_some_and(|d| d == "All")
}

fn random_suffix() -> String {
    // kube's generateName alphabet: no vowels, no confusable characters.
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let id = uuid::Uuid::new_v4();
    id.as_bytes()
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Resets what clients may not set on create and fills the server's metadata.
pub(crate) fn prepare_create(rt: &ResourceType, obj: &mut Value) {
    let m = &mut obj["metadata"];
    m["uid"] = json!(uuid::Uuid::new_v4().to_string());
    m["creationTimestamp"] = json!(rfc3339(now_secs()));
    m["generation"] = json!(1);
    if let Some(m) = m.as_object_mut() {
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
    match rt.kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj["spec"]["finalizers"].is_null() {
                obj["spec"]["finalizers"] = json!(["kubernetes"]);
            }
            obj["status"] = json!({"phase": "Active"});
        }
        "Pod" => {
            obj["status"] = json!({"phase": "Pending", "qosClass": "BestEffort"});
            crate::defaults::pod_admission(obj);
        }
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => {
            obj["status"] = json!({});
        }
        "Ingress" => obj["status"] = json!({"loadBalancer": {}}),
        _ => {}
    }
}

/// Validation and kind-specific storage work (service allocation) for a write.
fn check_write(
    s: &State,
    txn: &Txn,
    t: &Target,
    key: &str,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Error> {
    let rt = t.rt;
    let name = str_at(obj, "metadata.name").unwrap_or("").to_string();
    if let Some(old) = old
        && rt.is("", "services")
    {
        service::drop_type_dependent_fields(obj, old);
    }
    let mut causes = validate::validate(rt, obj);
    if let Some(schema) = rt.schema {
        causes.extend(crate::schema::check(schema, obj));
    }
    if rt.is("apiextensions.k8s.io", "customresourcedefinitions") {
        crd_accept(obj, &mut causes);
    }
    if let Some(old) = old {
        immutable(rt, obj, old, &mut causes);
    }
    // A status write keeps the stored spec; allocation and defaults are the main resource's.
    if causes.is_empty() && rt.is("", "services") && t.sub.as_deref() != Some("status") {
        causes.extend(service::prepare(txn, key, obj, old, &s.ranges)?);
    }
    if !causes.is_empty() {
        return Err(Status::invalid(rt.group, rt.kind, &name, &causes).into());
    }
    Ok(())
}

/// Validates a CRD's names and marks it accepted and established, as the apiextensions
/// controllers do (there is nothing to wait for here).
fn crd_accept(crd: &mut Value, causes: &mut Vec<Cause>) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or("");
    let plural = spec["names"]["plural"].as_str().unwrap_or("");
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    if group.is_empty() {
        causes.push(Cause::required("spec.group", ""));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural", ""));
    }
    if spec["names"]["kind"].as_str().unwrap_or("").is_empty() {
        causes.push(Cause::required("spec.names.kind", ""));
    }
    if spec["versions"].as_array().is_none_or(Vec::is_empty) {
        causes.push(Cause::required(
            "spec.versions",
            "must have exactly one version marked as storage version",
        ));
    }
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    if !causes.is_empty() {
        return;
    }
    let now = rfc3339(now_secs());
    let cond = |ty: &str, reason: &str, msg: &str| json!({"type": ty, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    let stored: Vec<Value> = spec["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == json!(true))
        .map(|v| v["name"].clone())
        .collect();
    crd["status"] = json!({
        "acceptedNames": spec["names"],
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    });
}

fn immutable(rt: &ResourceType, new: &Value, old: &Value, causes: &mut Vec<Cause>) {
    if matches!(
        rt.kind,
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet"
    ) && rt.group == "apps"
        && new["spec"]["selector"] != old["spec"]["selector"]
    {
        causes.push(Cause::invalid(
            "spec.selector",
            &new["spec"]["selector"],
            "field is immutable",
        ));
    }
    if rt.kind == "Service" && new["spec"]["type"] != "ExternalName" {
        // clusterIP changes are checked by the allocator.
    }
}

fn create(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let rt = t.rt;
    let body = json_body(r)?;
    let mut obj = parse_body(t, &body)?;
    let warnings = check_strict(rt, r, &obj, true)?;
    let mut name = str_at(&obj, "metadata.name").unwrap_or("").to_string();
    if name.is_empty() {
        let gen_name = str_at(&obj, "metadata.generateName")
            .unwrap_or("")
            .to_string();
        if gen_name.is_empty() {
            let c = Cause::required("metadata.name", "name or generateName is required");
            return Err(Status::invalid(rt.group, rt.kind, "", &[c]).into());
        }
        name = format!("{gen_name}{}", random_suffix());
        obj["metadata"]["name"] = json!(name);
    }
    prepare_create(rt, &mut obj);
    let key = key_of(t, &name);
    let stored = s.write(dry_run(r), |txn| create_in(s, txn, t, &key, obj))?;
    Ok(with_warnings(
        json_response(201, &stored, "application/json"),
        &warnings,
    ))
}

/// Stores a new object (already prepared) in `txn`: its namespace must exist, its name
/// must be free, and it must validate.
fn create_in(
    s: &State,
    txn: &mut Txn,
    t: &Target,
    key: &str,
    mut obj: Value,
) -> Result<Value, Error> {
    let rt = t.rt;
    let name = str_at(&obj, "metadata.name").unwrap_or("").to_string();
    if let Some(ns) = t.namespace.as_deref().filter(|_| rt.namespaced) {
        let ns_key = resources::namespaces().key("", ns);
        match txn.get(&ns_key)? {
            None => return Err(Status::not_found("", "namespaces", ns).into()),
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                return Err(Status::new(
                    403,
                    "Forbidden",
                    format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", rt.resource),
                )
                .into());
            }
            Some(_) => {}
        }
    }
    if txn.get(key)?.is_some() {
        return Err(Status::already_exists(rt.group, rt.resource, &name).into());
    }
    crate::defaults::apply(rt, &mut obj);
    check_write(s, txn, t, key, &mut obj, None)?;
    if crate::gc::owners_changed(&obj, None) {
        txn.note(key);
    }
    let stored = txn.put(key, obj, EventType::Added)?;
    if rt.kind == "Namespace" && rt.group.is_empty() {
        crate::bootstrap::ensure_default_service_account(txn, &name)?;
    }
    Ok(stored)
}

/// Server-side apply: creates the object from the configuration, or merges the
/// configuration into it (see `apply.rs`).
fn apply_object(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let rt = t.rt;
    let name = t.name.clone().unwrap_or_default();
    let manager = r.param("fieldManager").unwrap_or("").to_string();
    if manager.is_empty() {
        let c = Cause::required("fieldManager", "is required for apply patch");
        return Err(Status::invalid("meta.k8s.io", "PatchOptions", "", &[c]).into());
    }
    if serde_json::from_slice::<Value>(&r.body).is_err() {
        return Err(Status::bad_request(
            "error decoding apply configuration: only JSON apply bodies are served so far (kubectl and kube-rs send JSON)",
        )
        .into());
    }
    let mut config = parse_body(t, &r.body)?;
    let warnings = check_strict(rt, r, &config, false)?;
    let config_name = str_at(&config, "metadata.name").unwrap_or("").to_string();
    if !config_name.is_empty() && config_name != name {
        return Err(Status::bad_request(format!(
            "the name of the object ({config_name}) does not match the name on the URL ({name})"
        ))
        .into());
    }
    config["metadata"]["name"] = json!(name);
    let force = r.flag("force");
    let now = rfc3339(now_secs());
    let key = key_of(t, &name);
    let status_only = t.sub.as_deref() == Some("status");
    let (code, stored) = s.write(dry_run(r), |txn| match txn.get(&key)? {
        None if status_only => Err(not_found(t, &name)),
        None => {
            let live = json!({"metadata": {"name": name}});
            let mut obj = apply::apply(&live, &config, &manager, &rt.api_version(), &now, force)
                .unwrap_or(config.clone());
            obj["kind"] = json!(rt.kind);
            obj["apiVersion"] = json!(rt.api_version());
            if let Some(ns) = &t.namespace {
                obj["metadata"]["namespace"] = json!(ns);
            }
            prepare_create(rt, &mut obj);
            Ok((201, create_in(s, txn, t, &key, obj)?))
        }
        Some(old) => {
            let new = apply::apply(&old, &config, &manager, &rt.api_version(), &now, force)
                .map_err(|conflicts| {
                    let mut st = Status::conflict(rt.group, rt.resource, &name);
                    st.message = apply::conflict_message(&conflicts, &rt.api_version());
                    if let Some(d) = st.details.as_mut() {
                        d["causes"] = conflicts
                            .iter()
                            .map(|c| json!({"reason": "FieldManagerConflict", "message": format!("conflict with \"{}\"", c.manager), "field": c.field}))
                            .collect();
                    }
                    Error::from(st)
                })?;
            Ok((200, store_update(s, txn, t, &key, old, new)?))
        }
    })?;
    Ok(with_warnings(
        json_response(code, &stored, "application/json"),
        &warnings,
    ))
}

/// Applies an update (`new` built from the request) to the stored object under the
/// rules of the main resource or the status subresource.
fn store_update(
    s: &State,
    txn: &mut Txn,
    t: &Target,
    key: &str,
    old: Value,
    mut new: Value,
) -> Result<Value, Error> {
    let rt = t.rt;
    let name = str_at(&old, "metadata.name").unwrap_or("").to_string();
    let new_name = str_at(&new, "metadata.name").unwrap_or("");
    if !new_name.is_empty() && new_name != name {
        return Err(Status::bad_request(format!(
            "the name of the object ({new_name}) does not match the name on the URL ({name})"
        ))
        .into());
    }
    let new_rv = str_at(&new, "metadata.resourceVersion").unwrap_or("");
    if !new_rv.is_empty() && Some(new_rv) != str_at(&old, "metadata.resourceVersion") {
        return Err(Status::conflict(rt.group, rt.resource, &name).into());
    }
    let status_only = t.sub.as_deref() == Some("status");
    if status_only {
        let st = new["status"].take();
        new = old.clone();
        new["status"] = st;
    } else if rt.status {
        new["status"] = old["status"].clone();
    }
    // Server-owned metadata stays as stored.
    new["metadata"]["name"] = json!(name);
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "namespace",
    ] {
        match old["metadata"].get(f) {
            Some(v) => new["metadata"][f] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(f);
                }
            }
        }
    }
    if rt.kind == "Namespace" {
        new["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
    }
    // Defaults before the generation check: a write that only drops a defaulted
    // field changes nothing, as in kube-apiserver, which defaults what it decodes.
    crate::defaults::apply(rt, &mut new);
    if !status_only && new.get("spec") != old.get("spec") {
        let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
        new["metadata"]["generation"] = json!(g);
    }
    new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    check_write(s, txn, t, key, &mut new, Some(&old))?;
    if new == old {
        // A no-op update writes nothing and keeps the resourceVersion, as kube-apiserver does.
        return Ok(old);
    }
    if crate::gc::may_remove(rt, &new) {
        return crate::gc::remove(txn, &s.catalog.all(), rt, key, new);
    }
    if new["metadata"]["deletionTimestamp"].is_string()
        || crate::gc::owners_changed(&new, Some(&old))
    {
        // A foreground owner or terminating namespace may be waiting for this change,
        // or the garbage collector has owners to look up.
        txn.note(key);
    }
    txn.put(key, new, EventType::Modified)
}

fn update(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let body = json_body(r)?;
    let new = parse_body(t, &body)?;
    let warnings = check_strict(t.rt, r, &new, true)?;
    let key = key_of(t, &name);
    let stored = s.write(dry_run(r), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| not_found(t, &name))?;
        store_update(s, txn, t, &key, old, new)
    })?;
    Ok(with_warnings(
        json_response(200, &stored, "application/json"),
        &warnings,
    ))
}

fn patch_object(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    if r.content_type.starts_with("application/apply-patch") {
        return apply_object(s, t, r);
    }
    let name = t.name.clone().unwrap_or_default();
    let pt = PatchType::from_content_type(&r.content_type)
        .filter(|pt| !(t.rt.custom && *pt == PatchType::Strategic))
        .ok_or_else(|| Status::unsupported_media_type(&r.content_type))?;
    let key = key_of(t, &name);
    let mut warnings = Vec::new();
    let stored = s.write(dry_run(r), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| not_found(t, &name))?;
        let mut new = patch::apply(&old, &r.body, pt)?;
        if !new.is_object() {
            return Err(Status::bad_request("the patch did not produce an object").into());
        }
        if new.get("kind") != old.get("kind") || new.get("apiVersion") != old.get("apiVersion") {
            return Err(Status::bad_request("a patch may not change kind or apiVersion").into());
        }
        if t.rt.namespaced {
            new["metadata"]["namespace"] = old["metadata"]["namespace"].clone();
        }
        warnings = check_strict(t.rt, r, &new, false)?;
        store_update(s, txn, t, &key, old, new)
    })?;
    Ok(with_warnings(
        json_response(200, &stored, "application/json"),
        &warnings,
    ))
}

/// `POST .../pods/NAME/binding` (or `.../bindings` naming the pod in the body): a
/// `Binding` sets the pod's `spec.nodeName`, as the scheduler does it, with
/// kube-apiserver's BindingREST checks and messages.
fn bind_pod(
    s: &State,
    ns: &str,
    url_name: Option<&str>,
    r: &Req,
) -> Result<Response<ResponseBody>, Error> {
    let body = json_body(r)?;
    let b: Value = serde_json::from_slice(&body)
        .map_err(|e| Status::bad_request(format!("error decoding Binding: {e}")))?;
    if !b.is_object() {
        return Err(Status::bad_request("a Binding must be an object").into());
    }
    let (kind, api) = (b["kind"].as_str(), b["apiVersion"].as_str());
    if kind.is_some_and(|k| k != "Binding") || api.is_some_and(|a| a != "v1") {
        return Err(Status::bad_request(format!(
            "the body of the request was in an unknown format: expected v1 Binding, got {} {}",
            api.unwrap_or(""),
            kind.unwrap_or("")
        ))
        .into());
    }
    let name = str_at(&b, "metadata.name").unwrap_or("").to_string();
    if let Some(u) = url_name
        && u != name
    {
        return Err(
            Status::bad_request("name in URL does not match name in Binding object").into(),
        );
    }
    let target_kind = str_at(&b, "target.kind").unwrap_or("");
    let node = str_at(&b, "target.name").unwrap_or("").to_string();
    let mut causes = Vec::new();
    if !target_kind.is_empty() && target_kind != "Node" {
        causes.push(Cause::not_supported(
            "target.kind",
            &b["target"]["kind"],
            &["Node", "<empty>"],
        ));
    }
    if node.is_empty() {
        causes.push(Cause::required("target.name", ""));
    }
    if !causes.is_empty() {
        return Err(Status::invalid("", "Binding", &name, &causes).into());
    }
    let pods = resources::lookup("", "v1", "pods").ok_or_else(Status::not_found_path)?;
    let key = pods.key(ns, &name);
    s.write(dry_run(r), |txn| {
        let mut pod = txn
            .get(&key)?
            .ok_or_else(|| Error::from(Status::not_found("", "pods", &name)))?;
        let precondition = |field: &str, what: &str| -> Result<(), Error> {
            match str_at(&b, &format!("metadata.{field}")).filter(|v| !v.is_empty()) {
                Some(want) if Some(want) != str_at(&pod, &format!("metadata.{field}")) => {
                    Err(Status::conflict_because(
                        "pods",
                        &name,
                        &format!(
                            "Precondition failed: {what} in precondition: {want}, {what} in object meta: {}",
                            str_at(&pod, &format!("metadata.{field}")).unwrap_or("")
                        ),
                    )
                    .into())
                }
                _ => Ok(()),
            }
        };
        precondition("uid", "UID")?;
        precondition("resourceVersion", "ResourceVersion")?;
        let refuse = |why: String| -> Error {
            Status::conflict_because("pods/binding", &name, &why).into()
        };
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return Err(refuse(format!(
                "pod {name} is being deleted, cannot be assigned to a host"
            )));
        }
        if let Some(current) = str_at(&pod, "spec.nodeName").filter(|n| !n.is_empty()) {
            return Err(refuse(format!(
                "pod {name} is already assigned to node \"{current}\""
            )));
        }
        if pod["spec"]["schedulingGates"]
            .as_array()
            .is_some_and(|g| !g.is_empty())
        {
            return Err(refuse(format!(
                "pod {name} has non-empty .spec.schedulingGates"
            )));
        }
        pod["spec"]["nodeName"] = json!(node);
        if let Some(a) = b["metadata"]["annotations"].as_object() {
            for (k, v) in a {
                pod["metadata"]["annotations"][k] = v.clone();
            }
        }
        let scheduled = json!({"type": "PodScheduled", "status": "True",
            "lastProbeTime": null, "lastTransitionTime": rfc3339(now_secs())});
        let mut conds = pod["status"]["conditions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match conds.iter_mut().find(|c| c["type"] == "PodScheduled") {
            Some(c) if c["status"] == "True" => {}
            Some(c) => *c = scheduled,
            None => conds.push(scheduled),
        }
        pod["status"]["conditions"] = json!(conds);
        txn.put(&key, pod, EventType::Modified)
    })?;
    Ok(json_response(
        201,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        "application/json",
    ))
}

/// `GET .../pods/NAME/log`: proxied to the kubelet of the pod's node.
async fn pod_log(state: Arc<State>, t: Target, r: Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let st = state.clone();
    let key = key_of(&t, &name);
    let (pod, node) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
        let pod = st.store.get(&key)?;
        let node = match pod.as_ref().and_then(|p| str_at(p, "spec.nodeName")) {
            Some(n) if !n.is_empty() => st.store.get(
                &resources::lookup("", "v1", "nodes")
                    .ok_or_else(Status::not_found_path)?
                    .key("", n),
            )?,
            _ => None,
        };
        Ok((pod, node))
    })
    .await
    .map_err(|e| Error::Storage(e.to_string()))??;
    let pod = pod.ok_or_else(|| not_found(&t, &name))?;
    let (addr, path) = crate::kubelet::log_location(&pod, node.as_ref(), &r.query)?;
    state.kubelet.get(addr, &path).await
}

/// `PUT /api/v1/namespaces/NAME/finalize`: changes only `spec.finalizers` (what the
/// namespace controller, or someone unsticking a namespace, uses).
fn finalize_namespace(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let body = json_body(r)?;
    let main = Target {
        rt: t.rt,
        namespace: None,
        name: t.name.clone(),
        sub: None,
    };
    let new = parse_body(&main, &body)?;
    let key = key_of(&main, &name);
    let stored = s.write(dry_run(r), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| not_found(t, &name))?;
        let mut next = old.clone();
        next["spec"]["finalizers"] = new["spec"]["finalizers"].clone();
        if let Some(rv) = new["metadata"]["resourceVersion"].as_str() {
            next["metadata"]["resourceVersion"] = json!(rv);
        }
        store_update(s, txn, &main, &key, old, next)
    })?;
    Ok(json_response(200, &stored, "application/json"))
}

/// `POST .../serviceaccounts/NAME/token` (TokenRequest): a signed token for the account.
fn token_request(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let body = json_body(r)?;
    let req: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Status::bad_request(format!("error decoding TokenRequest: {e}")))?
    };
    if let Some(kind) = req["kind"]
        .as_str()
        .filter(|k| !k.is_empty() && *k != "TokenRequest")
    {
        return Err(Status::bad_request(format!(
            "the kind in the request body ({kind}) does not match TokenRequest"
        ))
        .into());
    }
    let sa = s
        .store
        .get(&key_of(t, &name))?
        .ok_or_else(|| not_found(t, &name))?;
    let bound = &req["spec"]["boundObjectRef"];
    let pod = if bound["kind"].as_str() == Some("Pod") {
        let pod_name = bound["name"].as_str().unwrap_or("");
        let ns = t.namespace.as_deref().unwrap_or("");
        let pod_rt = resources::lookup("", "v1", "pods").ok_or_else(Status::not_found_path)?;
        let pod = s
            .store
            .get(&pod_rt.key(ns, pod_name))?
            .ok_or_else(|| Status::not_found("", "pods", pod_name))?;
        if let Some(uid) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && Some(uid) != str_at(&pod, "metadata.uid")
        {
            return Err(Status::conflict("", "pods", pod_name).into());
        }
        Some(pod)
    } else {
        None
    };
    let out = s
        .signer
        .token_request(&req, &sa, pod.as_ref(), now_secs())?;
    Ok(json_response(201, &out, "application/json"))
}

/// The autoscaling/v1 `Scale` view of a workload.
fn scale_of(obj: &Value) -> Value {
    let m = &obj["metadata"];
    let selector = crate::util::labels_string(&obj["spec"]["selector"]["matchLabels"]);
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

/// `.../NAME/scale`: GET the Scale, or PUT/PATCH it to change `spec.replicas`.
fn scale(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t, &name);
    if r.method == Method::GET {
        let obj = s.store.get(&key)?.ok_or_else(|| not_found(t, &name))?;
        return Ok(json_response(200, &scale_of(&obj), "application/json"));
    }
    let main = Target {
        rt: t.rt,
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
    };
    let stored = s.write(dry_run(r), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| not_found(t, &name))?;
        let current = scale_of(&old);
        let wanted = if r.method == Method::PUT {
            serde_json::from_slice::<Value>(&json_body(r)?)
                .map_err(|e| Status::bad_request(format!("error decoding Scale: {e}")))?
        } else {
            let pt = PatchType::from_content_type(&r.content_type)
                .ok_or_else(|| Status::unsupported_media_type(&r.content_type))?;
            patch::apply(&current, &r.body, pt)?
        };
        let rv = str_at(&wanted, "metadata.resourceVersion").unwrap_or("");
        if !rv.is_empty() && Some(rv) != str_at(&old, "metadata.resourceVersion") {
            return Err(Status::conflict(t.rt.group, t.rt.resource, &name).into());
        }
        let replicas = &wanted["spec"]["replicas"];
        if replicas.as_i64().is_none_or(|n| n < 0) {
            let c = Cause::invalid(
                "spec.replicas",
                replicas,
                "must be greater than or equal to 0",
            );
            return Err(Status::invalid("autoscaling", "Scale", &name, &[c]).into());
        }
        let mut new = old.clone();
        new["spec"]["replicas"] = replicas.clone();
        new["metadata"]["resourceVersion"] = json!("");
        store_update(s, txn, &main, &key, old, new)
    })?;
    Ok(json_response(200, &scale_of(&stored), "application/json"))
}

fn delete_opts(r: &Req) -> Result<DeleteOpts, Error> {
    let body: Value = if r.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&r.body)
            .map_err(|e| Status::bad_request(format!("invalid DeleteOptions: {e}")))?
    };
    let policy = body["propagationPolicy"]
        .as_str()
        .or(r.param("propagationPolicy"));
    let orphan = policy == Some("Orphan")
        || body["orphanDependents"] == json!(true)
        || r.param("orphanDependents") == Some("true");
    let foreground = policy == Some("Foreground");
    if let Some(p) = policy
        && !matches!(p, "Orphan" | "Foreground" | "Background")
    {
        let c = Cause::not_supported(
            "propagationPolicy",
            &json!(p),
            &["Foreground", "Background", "Orphan", "nil"],
        );
        return Err(Status::invalid("meta.k8s.io", "DeleteOptions", "", &[c]).into());
    }
    let grace = body["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| r.param("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    Ok(DeleteOpts {
        orphan,
        foreground,
        grace,
    })
}

fn check_preconditions(t: &Target, r: &Req, old: &Value, name: &str) -> Result<(), Error> {
    if r.body.is_empty() {
        return Ok(());
    }
    let opts: Value = serde_json::from_slice(&r.body)
        .map_err(|e| Status::bad_request(format!("invalid DeleteOptions: {e}")))?;
    let pre = &opts["preconditions"];
    if let Some(rv) = pre["resourceVersion"].as_str()
        && Some(rv) != str_at(old, "metadata.resourceVersion")
    {
        return Err(Status::conflict(t.rt.group, t.rt.resource, name).into());
    }
    if let Some(uid) = pre["uid"].as_str()
        && Some(uid) != str_at(old, "metadata.uid")
    {
        return Err(Status::conflict(t.rt.group, t.rt.resource, name).into());
    }
    Ok(())
}

fn delete(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    if t.sub.is_some() {
        return Err(Status::method_not_allowed("DELETE").into());
    }
    let name = t.name.clone().unwrap_or_default();
    let key = key_of(t, &name);
    let opts = delete_opts(r)?;
    let out = s.write(dry_run(r), |txn| {
        let old = txn.get(&key)?.ok_or_else(|| not_found(t, &name))?;
        check_preconditions(t, r, &old, &name)?;
        delete_in(txn, &s.catalog.all(), t.rt, &key, old, opts)
    })?;
    Ok(json_response(200, &out, "application/json"))
}

fn delete_collection(s: &State, t: &Target, r: &Req) -> Result<Response<ResponseBody>, Error> {
    let sel = selectors(t, r)?;
    let prefix = prefix_of(t);
    let opts = delete_opts(r)?;
    let all = s.catalog.all();
    let deleted = s.write(dry_run(r), |txn| {
        let mut out = Vec::new();
        for (k, _) in txn.scan(&prefix)? {
            // An earlier deletion in this collection may have changed or removed this one.
            if let Some(o) = txn.get(&k)?
                && sel.matches(&o)
            {
                out.push(delete_in(txn, &all, t.rt, &k, o, opts)?);
            }
        }
        Ok(out)
    })?;
    let list = json!({
        "kind": format!("{}List", t.rt.kind),
        "apiVersion": t.rt.api_version(),
        "metadata": {"resourceVersion": s.store.current_rv().to_string()},
        "items": deleted,
    });
    Ok(json_response(200, &list, "application/json"))
}

fn event_line(ty: &str, obj: &Value) -> Bytes {
    let mut b = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

async fn watch(state: Arc<State>, t: Target, r: Req) -> Result<Response<ResponseBody>, Error> {
    let mut sel = selectors(&t, &r)?;
    if let Some(name) = &t.name {
        // GET .../pods/NAME?watch=true watches that one object.
        sel.fields = FieldSelector::parse(&format!("metadata.name={name}"), t.rt.kind)?;
    }
    let prefix = prefix_of(&t);
    let bookmarks = r.flag("allowWatchBookmarks");
    let send_initial = r.flag("sendInitialEvents");
    if send_initial && !bookmarks {
        return Err(Status::invalid(
            t.rt.group,
            t.rt.kind,
            "",
            &[Cause::invalid(
                "allowWatchBookmarks",
                &json!(false),
                "sendInitialEvents requires setting allowWatchBookmarks=true",
            )],
        )
        .into());
    }
    let timeout = match r
        .param("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(secs) if secs > 0 => Duration::from_secs(secs),
        _ => DEFAULT_WATCH_TIMEOUT,
    };
    let start = match r.param("resourceVersion").filter(|v| !v.is_empty()) {
        None => None,
        Some("0") => None,
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| Status::bad_request(format!("invalid resource version: {v:?}")))?,
        ),
    };
    // With no resourceVersion (or "0") the watch starts with the current state as ADDED
    // events, like kube-apiserver's; sendInitialEvents does the same from any start.
    let initial = if start.is_none() || send_initial {
        let st = state.clone();
        let prefix = prefix.clone();
        let sel2 = sel.clone();
        let page = tokio::task::spawn_blocking(move || {
            st.store.list(&prefix, None, None, &|o| sel2.matches(o))
        })
        .await
        .map_err(|e| Error::Storage(e.to_string()))??;
        Some(page)
    } else {
        None
    };
    let mut from = initial.as_ref().map(|p| p.rv).or(start).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let rt = t.rt;
    tokio::spawn(async move {
        let bookmark = |rv: u64, end: bool| {
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if end {
                meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            }
            event_line(
                "BOOKMARK",
                &json!({"kind": rt.kind, "apiVersion": rt.api_version(), "metadata": meta}),
            )
        };
        if let Some(page) = initial {
            for o in &page.items {
                if tx.send(event_line("ADDED", o)).await.is_err() {
                    return;
                }
            }
            if send_initial && tx.send(bookmark(page.rv, true)).await.is_err() {
                return;
            }
        }
        let mut notify = state.store.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
        loop {
            notify.borrow_and_update();
            match state.store.events_after(from) {
                Err(too_old) => {
                    let st = Status::expired(from, too_old.oldest);
                    let _ = tx.send(event_line("ERROR", &st.to_json())).await;
                    return;
                }
                Ok(events) => {
                    for e in events {
                        from = e.rv;
                        if !e.key.starts_with(&prefix) {
                            continue;
                        }
                        // Decoding is only needed to filter.
                        let (now, before) = if sel.is_empty() {
                            (true, e.prev.as_ref().map(|_| true))
                        } else {
                            (
                                sel.matches(&e.object_value()),
                                e.prev_value().map(|p| sel.matches(&p)),
                            )
                        };
                        let ty = match (e.kind, before, now) {
                            (EventType::Modified, Some(false), true) => "ADDED",
                            (EventType::Modified, Some(true), false) => "DELETED",
                            (_, _, true) => e.kind.as_str(),
                            _ => continue,
                        };
                        let line = if ty == e.kind.as_str() {
                            e.line()
                        } else {
                            event_line(ty, &e.object_value())
                        };
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
            }
            tokio::select! {
                changed = notify.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tick.tick() => {
                    if bookmarks && tx.send(bookmark(from, false)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(Response::builder()
        .status(200)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(ResponseBody(Inner::Stream(rx)))
        .unwrap_or_else(|_| Response::new(ResponseBody::full(""))))
}
