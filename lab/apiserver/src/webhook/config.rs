//! MutatingWebhookConfiguration and ValidatingWebhookConfiguration
//! (`admissionregistration.k8s.io/v1`): the defaults and validation kube-apiserver gives
//! them, and the [`Webhook`]s they hold, decoded once for the dispatcher.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1 as ar;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use crate::error::Cause;

pub(crate) const GROUP: &str = "admissionregistration.k8s.io";
/// Storage prefixes of the two kinds (cluster-scoped).
pub(crate) const MUTATING_PREFIX: &str =
    "admissionregistration.k8s.io/mutatingwebhookconfigurations/";
pub(crate) const VALIDATING_PREFIX: &str =
    "admissionregistration.k8s.io/validatingwebhookconfigurations/";

/// kube's default and bounds for `timeoutSeconds`.
const DEFAULT_TIMEOUT_SECONDS: i64 = 10;
const MAX_TIMEOUT_SECONDS: i64 = 30;

/// Where a webhook is reached.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Target {
    /// `clientConfig.url`: `https://host[:port]/path`.
    Url(String),
    /// `clientConfig.service`: a Service's port, reached at its cluster IP.
    Service {
        namespace: String,
        name: String,
        path: String,
        port: u16,
    },
}

/// One `operations`/`apiGroups`/`apiVersions`/`resources`/`scope` rule.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rule {
    pub(crate) operations: Vec<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) versions: Vec<String>,
    pub(crate) resources: Vec<String>,
    /// `Cluster`, `Namespaced` or `*`.
    pub(crate) scope: String,
}

/// One webhook of a configuration, as the dispatcher uses it.
#[derive(Debug)]
pub(crate) struct Webhook {
    /// Its own name (`webhooks[].name`), which errors quote.
    pub(crate) name: String,
    /// Of a MutatingWebhookConfiguration (may patch the object).
    pub(crate) mutating: bool,
    pub(crate) rules: Vec<Rule>,
    /// `failurePolicy: Ignore`: a webhook that cannot be called is skipped.
    pub(crate) fail_open: bool,
    pub(crate) namespace_selector: LabelSelector,
    pub(crate) object_selector: LabelSelector,
    /// `sideEffects` is `None` or `NoneOnDryRun`: dry runs may be sent to it.
    pub(crate) dry_run_safe: bool,
    pub(crate) timeout: Duration,
    /// `reinvocationPolicy: IfNeeded` (mutating webhooks).
    pub(crate) reinvoke_if_needed: bool,
    pub(crate) target: Target,
    /// `clientConfig.caBundle`: the PEM certificates its serving certificate must chain to.
    pub(crate) ca_bundle: Vec<u8>,
    /// The TLS client built from `ca_bundle` on first use (or why it cannot be).
    pub(crate) tls: std::sync::OnceLock<Result<std::sync::Arc<rustls::ClientConfig>, String>>,
}

/// Sets what kube-apiserver defaults in the webhooks of either kind.
pub(crate) fn defaults(kind: &str, o: &mut Value) {
    let Some(webhooks) = o["webhooks"].as_array_mut() else {
        return;
    };
    for w in webhooks.iter_mut().filter(|w| w.is_object()) {
        or(w, "failurePolicy", json!("Fail"));
        or(w, "matchPolicy", json!("Equivalent"));
        or(w, "namespaceSelector", json!({}));
        or(w, "objectSelector", json!({}));
        or(w, "timeoutSeconds", json!(DEFAULT_TIMEOUT_SECONDS));
        if kind == "MutatingWebhookConfiguration" {
            or(w, "reinvocationPolicy", json!("Never"));
        }
        if let Some(rules) = w["rules"].as_array_mut() {
            for r in rules.iter_mut().filter(|r| r.is_object()) {
                or(r, "scope", json!("*"));
            }
        }
        let service = &mut w["clientConfig"]["service"];
        if service.is_object() {
            or(service, "port", json!(443));
        }
    }
}

fn or(o: &mut Value, field: &str, v: Value) {
    if o[field].is_null() {
        o[field] = v;
    }
}

/// Validates a configuration of either kind, with kube-apiserver's field paths and
/// messages.
pub(crate) fn validate(kind: &str, o: &Value, causes: &mut Vec<Cause>) {
    let mutating = kind == "MutatingWebhookConfiguration";
    let mut names = std::collections::BTreeSet::new();
    for (i, w) in o["webhooks"].as_array().into_iter().flatten().enumerate() {
        let at = |f: &str| format!("webhooks[{i}].{f}");
        let name = w["name"].as_str().unwrap_or("");
        if name.is_empty() {
            causes.push(Cause::required(at("name"), ""));
        } else if name.split('.').count() < 3 {
            causes.push(Cause::invalid(
                at("name"),
                &json!(name),
                "should be a domain with at least three segments separated by dots",
            ));
        } else if !names.insert(name) {
            causes.push(Cause::duplicate(at("name"), &json!(name)));
        }
        let versions: Vec<&str> = w["admissionReviewVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if versions.is_empty() {
            causes.push(Cause::required(
                at("admissionReviewVersions"),
                "must specify one of v1, v1beta1",
            ));
        } else if !versions.contains(&"v1") {
            // This server speaks AdmissionReview v1 only.
            causes.push(Cause::invalid(
                at("admissionReviewVersions"),
                &w["admissionReviewVersions"],
                "must include at least one of v1 (the only AdmissionReview version this server sends)",
            ));
        }
        match w["sideEffects"].as_str() {
            None | Some("") => causes.push(Cause::required(
                at("sideEffects"),
                "must specify one of None, NoneOnDryRun",
            )),
            Some("None" | "NoneOnDryRun") => {}
            Some(s) => causes.push(Cause::not_supported(
                at("sideEffects"),
                &json!(s),
                &["None", "NoneOnDryRun"],
            )),
        }
        if let Some(p) = w["failurePolicy"].as_str()
            && !matches!(p, "Fail" | "Ignore")
        {
            causes.push(Cause::not_supported(
                at("failurePolicy"),
                &json!(p),
                &["Fail", "Ignore"],
            ));
        }
        if let Some(p) = w["matchPolicy"].as_str()
            && !matches!(p, "Equivalent" | "Exact")
        {
            causes.push(Cause::not_supported(
                at("matchPolicy"),
                &json!(p),
                &["Equivalent", "Exact"],
            ));
        }
        if mutating
            && let Some(p) = w["reinvocationPolicy"].as_str()
            && !matches!(p, "Never" | "IfNeeded")
        {
            causes.push(Cause::not_supported(
                at("reinvocationPolicy"),
                &json!(p),
                &["IfNeeded", "Never"],
            ));
        }
        if let Some(t) = w["timeoutSeconds"].as_i64()
            && !(1..=MAX_TIMEOUT_SECONDS).contains(&t)
        {
            causes.push(Cause::invalid(
                at("timeoutSeconds"),
                &json!(t),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        if w["matchConditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
        {
            // Said plainly rather than ignored: a webhook called for requests its
            // conditions exclude could refuse them.
            causes.push(Cause::forbidden(
                at("matchConditions"),
                "CEL match conditions are not supported by this server yet",
            ));
        }
        client_config(&w["clientConfig"], &at("clientConfig"), causes);
        for (j, r) in w["rules"].as_array().into_iter().flatten().enumerate() {
            rule(r, &format!("{}[{j}]", at("rules")), causes);
        }
    }
}

fn client_config(c: &Value, at: &str, causes: &mut Vec<Cause>) {
    match (c["url"].as_str(), c["service"].is_object()) {
        (Some(_), true) | (None, false) => causes.push(Cause::required(
            at,
            "exactly one of url or service is required",
        )),
        (Some(url), false) => {
            let f = format!("{at}.url");
            match url.strip_prefix("https://") {
                None => causes.push(Cause::invalid(
                    f,
                    &json!(url),
                    "'https' is the only allowed URL scheme",
                )),
                Some(rest) if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() => {
                    causes.push(Cause::invalid(f, &json!(url), "host must be specified"));
                }
                Some(rest) if rest.contains(['?', '#']) => causes.push(Cause::invalid(
                    f,
                    &json!(url),
                    "query and fragment parameters are not allowed",
                )),
                Some(_) => {}
            }
        }
        (None, true) => {
            let s = &c["service"];
            for f in ["namespace", "name"] {
                if s[f].as_str().unwrap_or("").is_empty() {
                    causes.push(Cause::required(format!("{at}.service.{f}"), ""));
                }
            }
            if let Some(p) = s["path"].as_str()
                && !p.is_empty()
                && !p.starts_with('/')
            {
                causes.push(Cause::invalid(
                    format!("{at}.service.path"),
                    &json!(p),
                    "must start with a '/'",
                ));
            }
            if let Some(p) = s["port"].as_i64()
                && !(1..=65535).contains(&p)
            {
                causes.push(Cause::invalid(
                    format!("{at}.service.port"),
                    &json!(p),
                    "port is not valid: must be between 1 and 65535, inclusive",
                ));
            }
        }
    }
}

fn rule(r: &Value, at: &str, causes: &mut Vec<Cause>) {
    for op in r["operations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        if !matches!(op, "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT") {
            causes.push(Cause::not_supported(
                format!("{at}.operations"),
                &json!(op),
                &["*", "CONNECT", "CREATE", "DELETE", "UPDATE"],
            ));
        }
    }
    for (f, what) in [
        ("apiGroups", "apiGroups"),
        ("apiVersions", "apiVersions"),
        ("resources", "resources"),
    ] {
        if r[f].as_array().is_none_or(Vec::is_empty) {
            causes.push(Cause::required(format!("{at}.{what}"), ""));
        }
    }
    if let Some(s) = r["scope"].as_str()
        && !matches!(s, "*" | "Cluster" | "Namespaced")
    {
        causes.push(Cause::not_supported(
            format!("{at}.scope"),
            &json!(s),
            &["*", "Cluster", "Namespaced"],
        ));
    }
}

/// The webhooks of a stored configuration (`mutating`: of a
/// MutatingWebhookConfiguration), each decoded once; one that does not decode is
/// skipped with a warning (validation keeps such from being stored).
pub(crate) fn webhooks(obj: &Value, mutating: bool) -> Vec<Webhook> {
    let config = obj["metadata"]["name"].as_str().unwrap_or("");
    let decoded: Result<Vec<Webhook>, serde_json::Error> = if mutating {
        serde_json::from_value::<ar::MutatingWebhookConfiguration>(obj.clone()).map(|c| {
            c.webhooks
                .into_iter()
                .flatten()
                .filter_map(|w| {
                    let reinvoke = w.reinvocation_policy.as_deref() == Some("IfNeeded");
                    webhook(Parts {
                        name: w.name,
                        rules: w.rules,
                        failure_policy: w.failure_policy,
                        namespace_selector: w.namespace_selector,
                        object_selector: w.object_selector,
                        side_effects: w.side_effects,
                        timeout_seconds: w.timeout_seconds,
                        client_config: w.client_config,
                        reinvoke,
                        mutating: true,
                    })
                })
                .collect()
        })
    } else {
        serde_json::from_value::<ar::ValidatingWebhookConfiguration>(obj.clone()).map(|c| {
            c.webhooks
                .into_iter()
                .flatten()
                .filter_map(|w| {
                    webhook(Parts {
                        name: w.name,
                        rules: w.rules,
                        failure_policy: w.failure_policy,
                        namespace_selector: w.namespace_selector,
                        object_selector: w.object_selector,
                        side_effects: w.side_effects,
                        timeout_seconds: w.timeout_seconds,
                        client_config: w.client_config,
                        reinvoke: false,
                        mutating: false,
                    })
                })
                .collect()
        })
    };
    decoded.unwrap_or_else(|e| {
        tracing::warn!(configuration = config, error = %e, "a webhook configuration does not decode; its webhooks are not called");
        Vec::new()
    })
}

/// What the two webhook types share.
struct Parts {
    name: String,
    rules: Option<Vec<ar::RuleWithOperations>>,
    failure_policy: Option<String>,
    namespace_selector: Option<LabelSelector>,
    object_selector: Option<LabelSelector>,
    side_effects: String,
    timeout_seconds: Option<i32>,
    client_config: ar::WebhookClientConfig,
    reinvoke: bool,
    mutating: bool,
}

fn webhook(p: Parts) -> Option<Webhook> {
    let cc = p.client_config;
    let target = match (cc.url, cc.service) {
        (Some(url), None) => Target::Url(url),
        (None, Some(s)) => Target::Service {
            namespace: s.namespace,
            name: s.name,
            path: s.path.unwrap_or_default(),
            port: u16::try_from(s.port.unwrap_or(443)).ok()?,
        },
        _ => return None,
    };
    let timeout = p
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT_SECONDS, i64::from)
        .clamp(1, MAX_TIMEOUT_SECONDS);
    Some(Webhook {
        name: p.name,
        mutating: p.mutating,
        rules: p
            .rules
            .into_iter()
            .flatten()
            .map(|r| Rule {
                operations: r.operations.unwrap_or_default(),
                groups: r.api_groups.unwrap_or_default(),
                versions: r.api_versions.unwrap_or_default(),
                resources: r.resources.unwrap_or_default(),
                scope: r.scope.unwrap_or_else(|| "*".into()),
            })
            .collect(),
        fail_open: p.failure_policy.as_deref() == Some("Ignore"),
        namespace_selector: p.namespace_selector.unwrap_or_default(),
        object_selector: p.object_selector.unwrap_or_default(),
        dry_run_safe: matches!(p.side_effects.as_str(), "None" | "NoneOnDryRun"),
        timeout: Duration::from_secs(timeout.unsigned_abs()),
        reinvoke_if_needed: p.reinvoke,
        target,
        ca_bundle: cc.ca_bundle.map(|b| b.0).unwrap_or_default(),
        tls: std::sync::OnceLock::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(webhook: Value) -> Value {
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "inject"},
            "webhooks": [webhook],
        })
    }

    #[test]
    fn defaults_are_kubes() {
        let mut c = config(json!({
            "name": "inject.kubewire.io",
            "clientConfig": {"service": {"namespace": "mesh", "name": "injector"}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }));
        defaults("MutatingWebhookConfiguration", &mut c);
        let w = &c["webhooks"][0];
        assert_eq!(w["failurePolicy"], "Fail");
        assert_eq!(w["matchPolicy"], "Equivalent");
        assert_eq!(w["timeoutSeconds"], 10);
        assert_eq!(w["reinvocationPolicy"], "Never");
        assert_eq!(w["namespaceSelector"], json!({}));
        assert_eq!(w["rules"][0]["scope"], "*");
        assert_eq!(w["clientConfig"]["service"]["port"], 443);
        let mut causes = Vec::new();
        validate("MutatingWebhookConfiguration", &c, &mut causes);
        assert!(causes.is_empty(), "{causes:?}");
        let hooks = webhooks(&c, true);
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].timeout, Duration::from_secs(10));
        assert!(!hooks[0].fail_open && hooks[0].dry_run_safe);
        assert_eq!(
            hooks[0].target,
            Target::Service {
                namespace: "mesh".into(),
                name: "injector".into(),
                path: String::new(),
                port: 443
            }
        );
    }

    #[test]
    fn validation_names_each_wrong_field() {
        let c = config(json!({
            "name": "short.name",
            "clientConfig": {"url": "http://example.test/x"},
            "rules": [{"operations": ["PATCH"], "apiGroups": [""], "apiVersions": ["v1"], "resources": []}],
            "sideEffects": "Some",
            "admissionReviewVersions": ["v1beta1"],
            "timeoutSeconds": 31,
            "matchConditions": [{"name": "x", "expression": "true"}],
        }));
        let mut causes = Vec::new();
        validate("MutatingWebhookConfiguration", &c, &mut causes);
        let fields: Vec<&str> = causes.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "webhooks[0].name",
                "webhooks[0].admissionReviewVersions",
                "webhooks[0].sideEffects",
                "webhooks[0].timeoutSeconds",
                "webhooks[0].matchConditions",
                "webhooks[0].clientConfig.url",
                "webhooks[0].rules[0].operations",
                "webhooks[0].rules[0].resources",
            ],
            "{causes:?}"
        );
        let both = config(json!({
            "name": "a.b.c",
            "clientConfig": {"url": "https://x/", "service": {"namespace": "a", "name": "b"}},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
        }));
        let mut causes = Vec::new();
        validate("MutatingWebhookConfiguration", &both, &mut causes);
        assert_eq!(causes.len(), 1);
        assert!(causes[0].message.contains("exactly one of url or service"));
    }
}
