//! Admission webhooks, called as kube-apiserver calls them: the webhooks of every
//! MutatingWebhookConfiguration and ValidatingWebhookConfiguration, matched against
//! each write by their rules and selectors, sent an AdmissionReview v1 over HTTPS.
//!
//! - [`config`]: the two kinds' defaults and validation, and the webhooks they hold;
//! - [`rules`]: which requests a webhook is called for;
//! - [`call`]: the AdmissionReview exchange with one webhook (request, answer, patch);
//! - this module: the [`Registry`] of configured webhooks and [`admit`], which runs the
//!   mutating webhooks in order (reinvoking those that ask for it) and then the
//!   validating ones side by side.
//!
//! The write handlers call [`admit`] outside their transaction, with the object they
//! will store, and store it only if what they read has not changed meanwhile
//! (`api/admission_webhooks.rs`), as kube-apiserver's optimistic updates do.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::error::{Error, Status};
use crate::store::Store;

pub(crate) mod call;
pub(crate) mod config;
pub(crate) mod rules;

pub(crate) use config::Webhook;
pub(crate) use rules::Request;

/// The webhooks in force, reloaded from the store after each write of a configuration.
pub(crate) struct Registry {
    webhooks: RwLock<Arc<Webhooks>>,
    /// How webhooks are reached (TLS, the namespace Services are dialed from).
    pub(crate) client: call::Client,
}

/// The configured webhooks: mutating ones in the order they run (by configuration name,
/// then as listed), then validating ones.
#[derive(Default)]
pub(crate) struct Webhooks {
    pub(crate) mutating: Vec<Arc<Webhook>>,
    pub(crate) validating: Vec<Arc<Webhook>>,
}

impl Webhooks {
    /// Whether any webhook may be called for this request (rules only; selectors need
    /// the objects). Writes no webhook can see take the direct path.
    pub(crate) fn any_for(&self, req: &Request<'_>) -> bool {
        self.mutating
            .iter()
            .chain(&self.validating)
            .any(|w| w.rules_match(req))
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// An empty registry whose Service webhooks are dialed from `service_netns` (the
    /// network namespace where Service addresses route, as on a control-plane node).
    pub(crate) fn new(service_netns: Option<PathBuf>) -> Registry {
        Registry {
            webhooks: RwLock::default(),
            client: call::Client::new(service_netns),
        }
    }

    /// The webhooks in force now.
    pub(crate) fn current(&self) -> Arc<Webhooks> {
        self.webhooks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads both configuration kinds from the store.
    pub(crate) fn reload(&self, store: &Store) -> Result<(), Error> {
        let mut w = Webhooks::default();
        for (mutating, prefix) in [
            (true, config::MUTATING_PREFIX),
            (false, config::VALIDATING_PREFIX),
        ] {
            // Keys sort by name: the order kube-apiserver runs configurations in.
            let page = store.list(prefix, None, None, &|_| true)?;
            let out = if mutating {
                &mut w.mutating
            } else {
                &mut w.validating
            };
            for item in &page.items {
                out.extend(config::webhooks(item, mutating).into_iter().map(Arc::new));
            }
        }
        *self.webhooks.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(w);
        Ok(())
    }
}

/// Labels of an object (empty when it has none).
pub(crate) fn labels_of(obj: Option<&Value>) -> BTreeMap<String, String> {
    obj.and_then(|o| o["metadata"]["labels"].as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// What the admission of one write produced besides the object: the webhooks'
/// warnings, for the response's `Warning` headers.
pub(crate) type Warnings = Vec<String>;

/// Runs the admission webhooks for a write: the mutating ones in order on `object`
/// (each patch applied before the next webhook sees it; those with
/// `reinvocationPolicy: IfNeeded` called once more if a later one changed the object),
/// then the validating ones side by side on the result. `namespace_labels` are the
/// labels of the request's namespace (for `namespaceSelector`).
pub(crate) async fn admit(
    registry: &Registry,
    store: &Store,
    req: &Request<'_>,
    namespace_labels: &BTreeMap<String, String>,
    object: Option<&mut Value>,
    old: Option<&Value>,
    warnings: &mut Warnings,
) -> Result<(), Error> {
    let webhooks = registry.current();
    let mut object = object;
    let mut called_if_needed: Vec<(usize, Value)> = Vec::new();
    for (i, w) in webhooks.mutating.iter().enumerate() {
        if !w.matches(req, namespace_labels, object.as_deref(), old) {
            continue;
        }
        mutate_once(
            registry,
            store,
            w,
            req,
            object.as_deref_mut(),
            old,
            warnings,
        )
        .await?;
        if w.reinvoke_if_needed
            && let Some(o) = object.as_deref()
        {
            called_if_needed.push((i, o.clone()));
        }
    }
    // Reinvocation: a webhook that asked for it is called once more when the object
    // it last saw was changed afterwards (by a later webhook).
    for (i, seen) in called_if_needed {
        let w = &webhooks.mutating[i];
        if object.as_deref() == Some(&seen) {
            continue;
        }
        if !w.matches(req, namespace_labels, object.as_deref(), old) {
            continue;
        }
        mutate_once(
            registry,
            store,
            w,
            req,
            object.as_deref_mut(),
            old,
            warnings,
        )
        .await?;
    }
    let object = object.as_deref();
    let calls = webhooks
        .validating
        .iter()
        .filter(|w| w.matches(req, namespace_labels, object, old))
        .map(|w| {
            dry_run_allowed(w, req)?;
            Ok(w)
        })
        .collect::<Result<Vec<_>, Error>>()?
        .into_iter()
        .map(|w| async move {
            let out = registry.client.review(store, w, req, object, old).await;
            (w, out)
        });
    for (w, out) in futures::future::join_all(calls).await {
        match out {
            Ok(answer) => {
                warnings.extend(answer.warnings.iter().cloned());
                answer.verdict(w)?;
            }
            Err(e) => failed(w, e)?,
        }
    }
    Ok(())
}

/// One call of a mutating webhook, its patch applied to `object`.
async fn mutate_once(
    registry: &Registry,
    store: &Store,
    w: &Webhook,
    req: &Request<'_>,
    object: Option<&mut Value>,
    old: Option<&Value>,
    warnings: &mut Warnings,
) -> Result<(), Error> {
    dry_run_allowed(w, req)?;
    match registry
        .client
        .review(store, w, req, object.as_deref(), old)
        .await
    {
        Ok(answer) => {
            warnings.extend(answer.warnings.iter().cloned());
            answer.verdict(w)?;
            if let (Some(patch), Some(obj)) = (&answer.patch, object) {
                call::apply_patch(w, obj, patch)?;
            }
            Ok(())
        }
        Err(e) => failed(w, e),
    }
}

/// A dry run is sent only to webhooks without side effects (or that skip them on dry
/// runs); any other refuses the request, whatever its failure policy.
fn dry_run_allowed(w: &Webhook, req: &Request<'_>) -> Result<(), Error> {
    if req.dry_run && !w.dry_run_safe {
        return Err(Status::bad_request(format!(
            "admission webhook {:?} does not support dry run",
            w.name
        ))
        .into());
    }
    Ok(())
}

/// A webhook that could not be called: the request fails with it
/// (`failurePolicy: Fail`) or goes on without it (`Ignore`).
fn failed(w: &Webhook, e: call::CallError) -> Result<(), Error> {
    if w.fail_open {
        tracing::warn!(webhook = %w.name, error = %e, "admission webhook failed; ignored as its failurePolicy says");
        return Ok(());
    }
    Err(Status::new(
        500,
        "InternalError",
        format!(
            "Internal error occurred: failed calling webhook {:?}: {e}",
            w.name
        ),
    )
    .into())
}
