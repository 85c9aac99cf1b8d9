//! The REST handler: routes a request to discovery, OpenAPI or a resource verb, and
//! implements the verbs over the store with kube-apiserver's semantics.
//!
//! - [`routing`]: from method and path to a handler; the table of subresources;
//! - [`auth`]: who a request comes from ([`User`]);
//! - [`read`]: get and list (continue tokens, resourceVersion semantics);
//! - [`write`]: create, update, patch and server-side apply, and the checks every
//!   write shares;
//! - [`subresource`]: status aside (the object's own verbs serve it), scale, binding,
//!   log, exec, attach and port-forward (proxied to the kubelet), token request and
//!   namespace finalize;
//! - [`delete`]: delete and deletecollection with their options and preconditions;
//! - [`admit`]: what a write is checked for once its object is known (NodeRestriction,
//!   RBAC escalation prevention; `rbac/admission.rs`);
//! - [`admission_webhooks`]: the writes admission webhooks see, which call them outside
//!   the store's transaction and store only what they read is unchanged;
//! - [`watch`]: watch streams with bookmarks and initial events;
//! - [`metrics`]: `metrics.k8s.io` from the kubelets' Summary API;
//! - [`response`]: response bodies and the headers every handler sets.
//!
//! This module holds what they share: the server [`State`], the request as handlers
//! see it ([`Req`]) and what its path names ([`Target`]).

use std::sync::Arc;

use bytes::Bytes;
use http::Method;

use crate::error::{Error, Status};
use crate::resources::{self, ResourceType};
use crate::selector::{FieldSelector, LabelSelector, Selectors};
use crate::service::Ranges;
use crate::store::{Store, Txn};

mod admission_webhooks;
mod admit;
mod auth;
mod delete;
mod metrics;
mod read;
mod response;
mod routing;
mod subresource;
mod watch;
mod write;

pub(crate) use auth::{User, authenticate, bearer_token, is_public};
pub use response::ResponseBody;
pub(crate) use response::{full_body, json_response, status_response, stream_body};
pub(crate) use routing::handle;
pub(crate) use write::prepare_create;

use routing::Subresource;

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
    /// Authorization: the RBAC objects and bound pods it reads (`rbac/`).
    pub(crate) authz: std::sync::Arc<crate::rbac::Authorizer>,
    /// The admission webhooks in force, and how they are called (`webhook/`).
    pub(crate) webhooks: crate::webhook::Registry,
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

/// A request as the handlers see it: its body read whole.
struct Req {
    /// Who it acts as (authorized, impersonation applied).
    user: User,
    method: Method,
    query: Vec<(String, String)>,
    accept: String,
    content_type: String,
    body: Bytes,
    /// The headers as sent (the streaming proxy passes them on).
    headers: http::HeaderMap,
    /// The client's side of an upgrade, taken by the streaming proxy.
    upgrade: std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>,
}

impl Req {
    /// A query parameter (the last one, when repeated).
    fn param(&self, k: &str) -> Option<&str> {
        self.query
            .iter()
            .rev()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean query parameter (`true` or `1`).
    fn flag(&self, k: &str) -> bool {
        self.param(k).is_some_and(|v| v == "true" || v == "1")
    }

    /// `dryRun=All`: check everything, store nothing.
    fn dry_run(&self) -> bool {
        self.param("dryRun").is_some_and(|d| d == "All")
    }

    /// The request body as JSON: JSON as is, Kubernetes protobuf decoded (for the
    /// objects kubectl's generators send); anything else is refused with 415.
    fn json_body(&self) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
        if crate::protobuf::is_protobuf(&self.content_type) {
            return Ok(std::borrow::Cow::Owned(crate::protobuf::to_json(
                &self.body,
            )?));
        }
        let ct = self.content_type.split(';').next().unwrap_or("").trim();
        if ct.is_empty() || ct == "application/json" || ct == "*/*" {
            return Ok(std::borrow::Cow::Borrowed(&self.body));
        }
        Err(Status::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/vnd.kubernetes.protobuf (got {ct:?})"),
        )
        .into())
    }
}

/// What a resource path names.
struct Target {
    rt: &'static ResourceType,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<Subresource>,
}

impl Target {
    /// The storage key of the object `name` of this type (in this namespace).
    fn key(&self, name: &str) -> String {
        self.rt.key(self.namespace.as_deref().unwrap_or(""), name)
    }

    /// 404 for the object `name` of this type.
    fn not_found(&self, name: &str) -> Error {
        Status::not_found(self.rt.group, self.rt.resource, name).into()
    }

    /// The storage prefix a list or watch of this path scans.
    fn list_prefix(&self) -> String {
        match &self.namespace {
            Some(ns) if self.rt.namespaced => format!("{}/{ns}/", self.rt.storage_prefix()),
            _ => format!("{}/", self.rt.storage_prefix()),
        }
    }

    /// The subresource's path segment (empty for the object itself).
    fn sub_name(&self) -> &'static str {
        self.sub.map_or("", Subresource::name)
    }

    /// Whether this is the status subresource (writes there change only `status`).
    fn is_status(&self) -> bool {
        self.sub == Some(Subresource::Status)
    }

    /// The same object's main resource.
    fn main(&self) -> Target {
        Target {
            rt: self.rt,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            sub: None,
        }
    }
}

/// The label and field selectors of a list, watch or deletecollection.
fn selectors(t: &Target, r: &Req) -> Result<Selectors, Error> {
    Ok(Selectors {
        labels: LabelSelector::parse(r.param("labelSelector").unwrap_or(""))?,
        fields: FieldSelector::parse(r.param("fieldSelector").unwrap_or(""), t.rt.kind)?,
    })
}

/// Runs storage work off the async threads: redb reads and fsyncing commits block.
async fn blocking<T, F>(state: Arc<State>, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce(&State) -> Result<T, Error> + Send + 'static,
{
    let st = state.clone();
    let asked = std::time::Instant::now();
    let (resp, rv, queued, ran) = tokio::task::spawn_blocking(move || {
        let queued = asked.elapsed();
        crate::store::take_deferred();
        let resp = f(&st);
        (resp, crate::store::take_deferred(), queued, asked.elapsed())
    })
    .await
    .map_err(Error::Task)?;
    // Acknowledge only durable writes; the thread is free meanwhile (group commit).
    if rv > 0 {
        state.store.wait_durable(rv).await?;
        // With the store's "committed" and "flushed": where a write's time goes.
        tracing::debug!(
            target: "apiserver::store",
            rv,
            queued = ?queued,
            ran = ?ran - queued,
            durable = ?asked.elapsed() - ran,
            "acknowledged"
        );
    }
    resp
}
