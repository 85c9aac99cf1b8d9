//! `kubewire mesh injector`: the mutating admission webhook that adds the proxy to the
//! pods that ask for the mesh (Linkerd's proxy injector), the same way in the lab and
//! in a cluster.
//!
//! A pod is meshed when its own annotation, or else its namespace's, says
//! `kubewire.io/inject: enabled` (or Linkerd's `linkerd.io/inject: enabled`, so that
//! existing manifests work); `disabled` on the pod wins over its namespace. Host-network
//! pods and pods that already have the proxy are left alone. The pod gets:
//! - the proxy, `kubewire mesh proxy`, as the first init container with
//!   `restartPolicy: Always` (a native sidecar: up before the app, stopped after it),
//!   running as user 2102 with no capability and a startup probe on its `/ready`, so
//!   the app's containers start once it has its certificate;
//! - a projected token for the issuer's audience, the trust bundle (read from the
//!   ConfigMap the issuer publishes) and the node's address in its environment;
//! - the annotation `kubewire.io/proxy-injected`.
//!
//! The CNI plugin captures the pod's traffic because the agent sees the proxy's
//! container in the pod ([`cni::capture`]).
//!
//! Its serving certificate is made at start for its Service's name, self-signed, and
//! kept as the `caBundle` of its MutatingWebhookConfiguration (watched, and replaced
//! whenever it holds another), so that the API server trusts it and nothing else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::https::reply;

/// The annotations that ask for the mesh, ours first.
pub const INJECT_ANNOTATIONS: [&str; 2] = ["kubewire.io/inject", "linkerd.io/inject"];
/// What the injector writes on the pods it meshed.
pub const INJECTED_ANNOTATION: &str = "kubewire.io/proxy-injected";
/// Where the proxy's token is mounted.
pub const IDENTITY_DIR: &str = "/var/run/kubewire/identity";
/// The volume holding the proxy's token.
pub const IDENTITY_VOLUME: &str = "kubewire-identity";
/// The largest AdmissionReview read.
const MAX_BODY: usize = 4 << 20;

/// Flags of `kubewire mesh injector`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// Where to serve HTTPS.
    #[arg(long, default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// The name the API server reaches it by (its serving certificate holds it).
    #[arg(long, default_value = "kubewire-injector.kube-system.svc")]
    pub server_name: String,
    /// The MutatingWebhookConfiguration whose `caBundle` it writes.
    #[arg(long, default_value = "kubewire-injector")]
    pub webhook: String,
    /// The proxy's image (the one this binary is in).
    #[arg(long, env = "KUBEWIRE_PROXY_IMAGE")]
    pub proxy_image: String,
    /// The namespace of the identity issuer's trust bundle ConfigMap.
    #[arg(long, default_value = "kube-system", env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The identity issuer, `NAME:PORT`, passed to the proxies.
    #[arg(long, default_value = "kubewire-identity.kube-system.svc:8080")]
    pub identity_server: String,
}

/// Why the injector could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] k8s::Error),
    #[error("making the serving certificate")]
    Certificate(#[source] rcgen::Error),
}

/// What the proxy is made of, for one injection.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub image: String,
    pub identity_server: String,
    pub trust_bundle: String,
    /// The proxy's environment from the configuration annotations ([`config`]).
    pub env: Vec<(&'static str, String)>,
}

/// The configuration annotations, ours and Linkerd's, read on the pod or else on its
/// namespace, and the proxy's environment variable each sets.
pub const CONFIG_ANNOTATIONS: [(&str, &str, &str); 2] = [
    (
        "kubewire.io/trace-collector",
        "config.linkerd.io/trace-collector",
        "KUBEWIRE_TRACE_COLLECTOR",
    ),
    (
        "kubewire.io/opaque-ports",
        "config.linkerd.io/opaque-ports",
        "KUBEWIRE_OPAQUE_PORTS",
    ),
];

/// The proxy's environment from `pod`'s configuration annotations, or else its
/// namespace's; a value the proxy would refuse is left out, and why goes in the
/// warnings (the pod is meshed all the same).
pub fn config(
    pod: &Value,
    namespace: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Vec<(&'static str, String)> {
    let mut env = Vec::new();
    for (ours, linkerd, var) in CONFIG_ANNOTATIONS {
        let on_pod = |a: &'static str| {
            let v = pod["metadata"]["annotations"][a].as_str()?;
            Some((a, v.to_string()))
        };
        let on_namespace = |a: &'static str| namespace.get(a).map(|v| (a, v.clone()));
        let found = on_pod(ours)
            .or_else(|| on_pod(linkerd))
            .or_else(|| on_namespace(ours))
            .or_else(|| on_namespace(linkerd));
        let Some((annotation, value)) = found else {
            continue;
        };
        let valid = match var {
            "KUBEWIRE_TRACE_COLLECTOR" => value.parse::<crate::proxy::Collector>().map(drop),
            _ => value
                .split(',')
                .try_for_each(|p| p.parse::<crate::proxy::PortRange>().map(drop)),
        };
        match valid {
            Ok(()) => env.push((var, value.trim().to_string())),
            Err(why) => warnings.push(format!("kubewire mesh: {annotation} ignored: {why}")),
        }
    }
    env
}

/// Runs the injector until SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown = k8s::Shutdown::new().map_err(|source| Error::Io {
        what: "handling SIGTERM".into(),
        source,
    })?;
    let client = args.client.client().await?;
    let key = rcgen::KeyPair::generate().map_err(Error::Certificate)?;
    let cert = rcgen::CertificateParams::new(vec![args.server_name.clone()])
        .and_then(|p| p.self_signed(&key))
        .map_err(Error::Certificate)?;
    let acceptor =
        crate::https::acceptor(&cert.pem(), &key.serialize_pem()).map_err(|source| Error::Io {
            what: "the serving certificate".into(),
            source,
        })?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Io {
            what: format!("listening on {}", args.listen),
            source,
        })?;
    info!(addr = %args.listen, "mesh injector serving");
    tokio::spawn(keep_ca_bundle(
        client.clone(),
        args.webhook.clone(),
        cert.pem(),
    ));
    let injector = Arc::new(Injector { client, args });
    tokio::select! {
        r = crate::https::serve(listener, acceptor, move |req| handle(injector.clone(), req)) => {
            r.map_err(|source| Error::Io { what: "accepting a connection".into(), source })
        }
        () = shutdown.recv() => {
            info!("mesh injector stopping");
            Ok(())
        }
    }
}

/// Keeps `ca_pem` as the `caBundle` of every webhook of `name`: it watches the
/// configuration and writes the bundle whenever it is missing or another one (a
/// re-applied install, a restarted injector's predecessor). A failed write (a
/// concurrent change) is retried at the next event or re-list.
async fn keep_ca_bundle(client: kube::Client, name: String, ca_pem: String) {
    use futures::StreamExt;
    let api: Api<MutatingWebhookConfiguration> = Api::all(client);
    let bundle = k8s_openapi::ByteString(ca_pem.into_bytes());
    let config = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = k8s::mirror::watch(api.clone(), config);
    while let Some(event) = events.next().await {
        let current = match event {
            Ok(
                kube::runtime::watcher::Event::Apply(o)
                | kube::runtime::watcher::Event::InitApply(o),
            ) => o,
            Ok(_) => continue,
            Err(e) => {
                warn!(webhook = %name, error = %e, "watching the webhook configuration");
                continue;
            }
        };
        if let Err(e) = write_ca_bundle(&api, current, &bundle).await {
            warn!(webhook = %name, error = %e, "writing the caBundle");
        }
    }
}

/// Sets `bundle` on every webhook of `current` and replaces it, unless they all hold
/// it already.
async fn write_ca_bundle(
    api: &Api<MutatingWebhookConfiguration>,
    mut current: MutatingWebhookConfiguration,
    bundle: &k8s_openapi::ByteString,
) -> kube::Result<()> {
    let webhooks = current.webhooks.iter_mut().flatten();
    let mut stale = false;
    for w in webhooks {
        if w.client_config.ca_bundle.as_ref() != Some(bundle) {
            w.client_config.ca_bundle = Some(bundle.clone());
            stale = true;
        }
    }
    if !stale {
        return Ok(());
    }
    let name = current.metadata.name.clone().unwrap_or_default();
    api.replace(&name, &PostParams::default(), &current).await?;
    info!(webhook = %name, "caBundle written");
    Ok(())
}

struct Injector {
    client: kube::Client,
    args: Args,
}

async fn handle(injector: Arc<Injector>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::POST || req.uri().path() != "/inject" {
        return reply(StatusCode::NOT_FOUND, &json!({"error": "not found"}));
    }
    let body = match crate::https::body(req, MAX_BODY).await {
        Ok(b) => b,
        Err(answer) => return answer,
    };
    let review: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("not an AdmissionReview: {e}")}),
            );
        }
    };
    reply(StatusCode::OK, &injector.review(&review).await)
}

impl Injector {
    /// The AdmissionReview answering `review`: the pod allowed, with the proxy added
    /// when it asks for the mesh.
    async fn review(&self, review: &Value) -> Value {
        let request = &review["request"];
        let uid = request["uid"].clone();
        let pod = &request["object"];
        let namespace = request["namespace"].as_str().unwrap_or_default();
        let mut response = json!({"uid": uid, "allowed": true});
        let mut ns_annotations = None;
        let wanted = match wants_mesh(pod, None) {
            Some(w) => w,
            None => {
                let annotations =
                    ns_annotations.insert(self.namespace_annotations(namespace).await);
                wants_mesh(pod, Some(annotations)).unwrap_or(false)
            }
        };
        if wanted {
            match self.proxy_spec().await {
                Ok(mut spec) => {
                    // The namespace's annotations are read only when the pod lacks one.
                    let own = |a: &str| pod["metadata"]["annotations"][a].is_string();
                    let needed = CONFIG_ANNOTATIONS
                        .iter()
                        .any(|(o, l, _)| !own(o) && !own(l));
                    let annotations = match ns_annotations {
                        Some(a) => a,
                        None if needed => self.namespace_annotations(namespace).await,
                        None => BTreeMap::new(),
                    };
                    let mut warnings = Vec::new();
                    spec.env = config(pod, &annotations, &mut warnings);
                    if !warnings.is_empty() {
                        response["warnings"] = json!(warnings);
                    }
                    if let Some(patch) = inject(pod, &spec) {
                        debug!(%namespace, name = ?pod["metadata"]["name"], "injecting the proxy");
                        response["patchType"] = json!("JSONPatch");
                        response["patch"] = json!(
                            base64::engine::general_purpose::STANDARD
                                .encode(serde_json::to_vec(&patch).unwrap_or_default())
                        );
                    }
                }
                // Allowed without the proxy: the webhook's failure policy is the
                // operator's choice, the warning says why.
                Err(why) => {
                    warn!(%namespace, error = %why, "not injecting");
                    response["warnings"] =
                        json!([format!("kubewire mesh: the proxy was not injected: {why}")]);
                }
            }
        }
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        })
    }

    async fn namespace_annotations(&self, namespace: &str) -> BTreeMap<String, String> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        match api.get(namespace).await {
            Ok(ns) => ns.metadata.annotations.unwrap_or_default(),
            Err(e) => {
                warn!(%namespace, error = %e, "reading the namespace's annotations");
                BTreeMap::new()
            }
        }
    }

    async fn proxy_spec(&self) -> Result<ProxySpec, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.args.namespace);
        let cm = api
            .get(crate::identity::TRUST_ROOTS)
            .await
            .map_err(|e| format!("reading the trust bundle: {e}"))?;
        let bundle = cm
            .data
            .unwrap_or_default()
            .remove(crate::identity::TRUST_BUNDLE_KEY)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| "the trust bundle is empty".to_string())?;
        Ok(ProxySpec {
            image: self.args.proxy_image.clone(),
            identity_server: self.args.identity_server.clone(),
            trust_bundle: bundle,
            env: Vec::new(),
        })
    }
}

/// Whether `pod` asks for the mesh by its own annotations (`Some`), or else by its
/// namespace's `namespace` annotations; `None` when neither says (or the namespace's
/// were not given).
pub fn wants_mesh(pod: &Value, namespace: Option<&BTreeMap<String, String>>) -> Option<bool> {
    let says = |value: Option<&str>| match value {
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        _ => None,
    };
    let own = INJECT_ANNOTATIONS
        .iter()
        .find_map(|a| says(pod["metadata"]["annotations"][a].as_str()));
    if own.is_some() {
        return own;
    }
    let ns = namespace?;
    Some(
        INJECT_ANNOTATIONS
            .iter()
            .find_map(|a| says(ns.get(*a).map(String::as_str)))
            .unwrap_or(false),
    )
}

/// The JSON patch that adds the proxy to `pod`, or `None` for a pod that cannot or
/// need not have it (host network, already meshed).
pub fn inject(pod: &Value, spec: &ProxySpec) -> Option<Vec<Value>> {
    let pod_spec = &pod["spec"];
    if pod_spec["hostNetwork"] == json!(true) {
        return None;
    }
    let has_proxy = ["initContainers", "containers"].iter().any(|list| {
        pod_spec[list].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["name"] == cni::capture::PROXY_CONTAINER)
        })
    });
    if has_proxy {
        return None;
    }
    let mut env = vec![
        json!({"name": "KUBEWIRE_NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}),
        json!({"name": "KUBEWIRE_POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        json!({"name": "KUBEWIRE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "KUBEWIRE_TRUST_BUNDLE", "value": spec.trust_bundle}),
    ];
    env.extend(
        spec.env
            .iter()
            .map(|(name, value)| json!({"name": name, "value": value})),
    );
    let proxy = json!({
        "name": cni::capture::PROXY_CONTAINER,
        "image": spec.image,
        "args": ["mesh", "proxy", format!("--identity-server={}", spec.identity_server)],
        "restartPolicy": "Always",
        "env": env,
        "ports": [
            {"name": "kw-inbound", "containerPort": cni::capture::INBOUND_PORT, "protocol": "TCP"},
            {"name": "kw-admin", "containerPort": cni::capture::ADMIN_PORT, "protocol": "TCP"},
        ],
        "startupProbe": {
            "httpGet": {"path": "/ready", "port": cni::capture::ADMIN_PORT},
            "periodSeconds": 1,
            "failureThreshold": 120,
        },
        "livenessProbe": {
            "httpGet": {"path": "/live", "port": cni::capture::ADMIN_PORT},
            "periodSeconds": 10,
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "8Mi"},
            "limits": {"memory": "64Mi"},
        },
        "securityContext": {
            "runAsUser": cni::capture::DEFAULT_PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": IDENTITY_VOLUME, "mountPath": IDENTITY_DIR, "readOnly": true}],
    });
    let volume = json!({
        "name": IDENTITY_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "path": "token",
            "audience": crate::identity::AUDIENCE,
            "expirationSeconds": 86400,
        }}]},
    });
    let mut patch = Vec::new();
    if pod_spec["initContainers"]
        .as_array()
        .is_some_and(|l| !l.is_empty())
    {
        patch.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": proxy}));
    } else {
        patch.push(json!({"op": "add", "path": "/spec/initContainers", "value": [proxy]}));
    }
    if pod_spec["volumes"].is_array() {
        patch.push(json!({"op": "add", "path": "/spec/volumes/-", "value": volume}));
    } else {
        patch.push(json!({"op": "add", "path": "/spec/volumes", "value": [volume]}));
    }
    if !pod["metadata"]["annotations"].is_object() {
        patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    patch.push(json!({
        "op": "add",
        "path": format!("/metadata/annotations/{}", INJECTED_ANNOTATION.replace('/', "~1")),
        "value": "true",
    }));
    Some(patch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ProxySpec {
        ProxySpec {
            image: "ghcr.io/kubewire/kubewire:dev".into(),
            identity_server: "kubewire-identity.kube-system.svc:8080".into(),
            trust_bundle: "-----BEGIN CERTIFICATE-----\n...".into(),
            env: vec![],
        }
    }

    /// Linkerd's configuration annotations (or ours) on the pod, else on its namespace,
    /// become the proxy's environment; a bad value is named in a warning and left out.
    #[test]
    fn configuration_annotations() {
        let pod = json!({"metadata": {"annotations": {
            "config.linkerd.io/trace-collector": "collector.tracing:4318",
            "kubewire.io/opaque-ports": "bad-ports",
        }}});
        let ns = BTreeMap::from([
            (
                "config.linkerd.io/opaque-ports".to_string(),
                "3306,4000-4100".to_string(),
            ),
            (
                "kubewire.io/trace-collector".to_string(),
                "other:4318".to_string(),
            ),
        ]);
        let mut warnings = Vec::new();
        let env = config(&pod, &ns, &mut warnings);
        assert_eq!(
            env,
            [(
                "KUBEWIRE_TRACE_COLLECTOR",
                "collector.tracing:4318".to_string()
            )]
        );
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("kubewire.io/opaque-ports"),
            "{warnings:?}"
        );

        let env = config(&json!({}), &ns, &mut Vec::new());
        assert_eq!(
            env,
            [
                ("KUBEWIRE_TRACE_COLLECTOR", "other:4318".to_string()),
                ("KUBEWIRE_OPAQUE_PORTS", "3306,4000-4100".to_string()),
            ]
        );
        let mut spec = spec();
        spec.env = env;
        let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app"}]}});
        let patch = inject(&pod, &spec).unwrap();
        let names: Vec<&str> = patch[0]["value"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        assert!(names.ends_with(&["KUBEWIRE_TRACE_COLLECTOR", "KUBEWIRE_OPAQUE_PORTS"]));
    }

    #[test]
    fn the_pod_says_first_then_its_namespace() {
        let pod = |a: Value| json!({"metadata": {"annotations": a}});
        let ns = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert_eq!(
            wants_mesh(&pod(json!({"kubewire.io/inject": "enabled"})), None),
            Some(true)
        );
        assert_eq!(
            wants_mesh(&pod(json!({"linkerd.io/inject": "enabled"})), None),
            Some(true)
        );
        assert_eq!(wants_mesh(&pod(json!({})), None), None);
        assert_eq!(
            wants_mesh(&pod(json!({})), Some(&ns("linkerd.io/inject", "enabled"))),
            Some(true)
        );
        assert_eq!(
            wants_mesh(
                &pod(json!({"kubewire.io/inject": "disabled"})),
                Some(&ns("kubewire.io/inject", "enabled"))
            ),
            Some(false)
        );
        assert_eq!(
            wants_mesh(&pod(json!({})), Some(&BTreeMap::new())),
            Some(false)
        );
    }

    /// The patch applied as the API server applies it: the proxy first among the init
    /// containers, as a native sidecar of user 2102, its volume and the annotation.
    #[test]
    fn the_proxy_goes_first_as_a_native_sidecar() {
        let pod = json!({
            "metadata": {"name": "web", "annotations": {"a/b": "c"}},
            "spec": {
                "initContainers": [{"name": "migrate"}],
                "containers": [{"name": "app"}],
                "volumes": [{"name": "data", "emptyDir": {}}],
            },
        });
        let patch = inject(&pod, &spec()).unwrap();
        let patched = apply_patch(pod, &patch);
        let init = patched["spec"]["initContainers"].as_array().unwrap();
        assert_eq!(init[0]["name"], "kubewire-proxy");
        assert_eq!(init[0]["restartPolicy"], "Always");
        assert_eq!(init[0]["securityContext"]["runAsUser"], 2102);
        assert_eq!(init[0]["startupProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(init[1]["name"], "migrate");
        let volumes = patched["spec"]["volumes"].as_array().unwrap();
        assert_eq!(volumes[1]["name"], IDENTITY_VOLUME);
        assert_eq!(
            volumes[1]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "identity.kubewire.io"
        );
        assert_eq!(
            patched["metadata"]["annotations"]["kubewire.io/proxy-injected"],
            "true"
        );
        assert_eq!(patched["metadata"]["annotations"]["a/b"], "c");
        // A pod without those lists gets them.
        let bare = json!({"metadata": {"name": "w"}, "spec": {"containers": [{"name": "app"}]}});
        let patched = apply_patch(bare.clone(), &inject(&bare, &spec()).unwrap());
        assert_eq!(
            patched["spec"]["initContainers"][0]["name"],
            "kubewire-proxy"
        );
        assert_eq!(patched["spec"]["volumes"][0]["name"], IDENTITY_VOLUME);
        // Meshed already, or on the host's network: left alone.
        assert!(inject(&patched, &spec()).is_none());
        let host = json!({"spec": {"hostNetwork": true, "containers": [{"name": "app"}]}});
        assert!(inject(&host, &spec()).is_none());
    }

    /// The few JSON patch `add` operations the injector writes, applied to `doc`.
    fn apply_patch(mut doc: Value, patch: &[Value]) -> Value {
        for op in patch {
            assert_eq!(op["op"], "add");
            let path = op["path"].as_str().unwrap();
            let (parent, last) = path.rsplit_once('/').unwrap();
            let target = doc.pointer_mut(parent).unwrap();
            let last = last.replace("~1", "/");
            match target {
                Value::Array(a) if last == "-" => a.push(op["value"].clone()),
                Value::Array(a) => a.insert(last.parse().unwrap(), op["value"].clone()),
                Value::Object(o) => {
                    o.insert(last, op["value"].clone());
                }
                _ => panic!("{path}"),
            }
        }
        doc
    }
}
