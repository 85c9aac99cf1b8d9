//! The controller against the lab's API server, in process (its router as kube::Client's
//! service: no sockets, no root): the vendored CRDs apply, the Config follows the
//! objects, the statuses are written once by the Lease holder.

use std::sync::Arc;
use std::time::Duration;

use gateway::config::{Config, ListenerKind};
use gateway::controller::{Options, control};
use gateway::world::Settings;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Polls `f` until it returns Some, for at most 20 s (the test fails if the behaviour
/// never happens; it does not measure time).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn api_for(client: &Client, obj: &Value) -> (Api<DynamicObject>, String) {
    let (group, version) = obj["apiVersion"]
        .as_str()
        .unwrap()
        .rsplit_once('/')
        .unwrap_or(("", obj["apiVersion"].as_str().unwrap()));
    let kind = obj["kind"].as_str().unwrap();
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api = match obj["metadata"]["namespace"]
        .as_str()
        .filter(|ns| !ns.is_empty())
    {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    (api, obj["metadata"]["name"].as_str().unwrap().to_string())
}

async fn apply(client: &Client, objects: &[Value]) {
    for obj in objects {
        let (api, name) = api_for(client, obj);
        api.patch(
            &name,
            &PatchParams::apply("test").force(),
            &Patch::Apply(obj),
        )
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", obj["kind"]));
    }
}

async fn get(client: &Client, api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
    let obj = json!({"apiVersion": api_version, "kind": kind, "metadata": {"namespace": ns, "name": name}});
    let (api, name) = api_for(client, &obj);
    let got = api.get(&name).await;
    serde_json::to_value(got.unwrap_or_else(|e| panic!("{kind} {ns}/{name}: {e}"))).unwrap()
}

fn crds() -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    let mut out = Vec::new();
    for sub in ["gateway-api-v1.6.1", "emissary-4.1.0"] {
        let mut files: Vec<_> = std::fs::read_dir(format!("{dir}/{sub}"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "yaml") && !p.to_string_lossy().contains("vap_")
            })
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                let v: Value = serde::Deserialize::deserialize(doc).unwrap();
                if v.is_object() {
                    out.push(v);
                }
            }
        }
    }
    out
}

fn yaml(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

const OBJECTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: kube-system}
---
apiVersion: v1
kind: Service
metadata: {name: kubewire-gateway, namespace: kube-system}
spec: {type: LoadBalancer, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: engine, namespace: default}
spec: {ports: [{name: http, port: 80}], selector: {app: engine}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: engine-1, namespace: default, labels: {kubernetes.io/service-name: engine}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.244.1.5], conditions: {ready: true}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: kubewire
  listeners: [{name: http, port: 8000, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules: [{backendRefs: [{name: engine, port: 80}, {name: missing, port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web-ingress
  namespace: default
  annotations: {kubernetes.io/ingress.class: ambassador}
spec:
  ingressClassName: ambassador
  rules: [{http: {paths: [{path: /engine, pathType: Prefix, backend: {service: {name: engine, port: {number: 80}}}}]}}]
---
apiVersion: getambassador.io/v3alpha1
kind: Mapping
metadata: {name: quote-backend, namespace: default}
spec:
  prefix: /backend/
  service: engine
  shadow: true
  add_request_headers: {x-test-proto: {value: "%PROTOCOL%"}}
"#;

/// The routes served to clients of `port` (a Gateway's listeners are bound elsewhere).
fn routes(c: &Config, port: u16) -> usize {
    c.listeners
        .iter()
        .filter(|l| l.public_port == port)
        .map(|l| match &l.kind {
            ListenerKind::Http(h) => h.hosts.iter().map(|v| v.routes.len()).sum(),
            _ => 0,
        })
        .sum()
}

fn options(identity: &str) -> Options {
    Options {
        service: ("kube-system".into(), "kubewire-gateway".into()),
        settings: Settings::default(),
        identity: identity.into(),
        gateway_class: "kubewire".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_and_reports_what_the_cluster_holds() {
    let dir = tempfile::tempdir().unwrap();
    let router = apiserver::router(&apiserver::Config::new(dir.path())).unwrap();
    let client = Client::new(router, "default");
    apply(&client, &crds()).await;
    apply(&client, &yaml(OBJECTS)).await;
    let svc: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "kube-system");
    svc.patch_status(
        "kubewire-gateway",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.200"}]}}})),
    )
    .await
    .unwrap();

    // Two replicas; one writes statuses.
    let (tx_a, mut rx) = watch::channel(Arc::new(Config::default()));
    let (tx_b, rx_b) = watch::channel(Arc::new(Config::default()));
    let a = tokio::spawn(control(client.clone(), options("a"), tx_a));
    let b = tokio::spawn(control(client.clone(), options("b"), tx_b));

    let config = eventually("the routes", || {
        let c = rx.borrow_and_update().clone();
        async move { (routes(&c, 80) == 2 && routes(&c, 8000) == 1).then_some(c) }
    })
    .await;
    assert_eq!(config.listeners.len(), 2);
    assert_eq!(
        (config.listeners[1].port, config.listeners[1].public_port),
        (20000, 8000),
        "the Gateway's listener is bound to a port of its own"
    );

    // The Gateway gets a LoadBalancer Service of its own, beside the gateway's, whose
    // address it reports.
    let gw_svc_name =
        gateway::gatewayapi::services::service_name("kubewire-gateway", "default", "gw");
    let gw_svc = eventually("the Gateway's Service", || {
        let svc = svc.clone();
        let name = gw_svc_name.clone();
        async move { svc.get(&name).await.ok() }
    })
    .await;
    let spec = gw_svc.spec.clone().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let ports = spec.ports.unwrap();
    assert_eq!(
        (ports.len(), ports[0].port, ports[0].target_port.clone()),
        (
            1,
            8000,
            Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(20000))
        )
    );
    svc.patch_status(
        &gw_svc_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"loadBalancer": {"ingress": [{"ip": "198.18.0.201"}]}}})),
    )
    .await
    .unwrap();
    let ListenerKind::Http(h) = &config.listeners[0].kind else {
        panic!()
    };
    let engine = &h.hosts[0].routes[0];
    let gateway::config::Action::Forward(f) = &engine.action else {
        panic!()
    };
    assert_eq!(
        &*f.backends[0].backend.as_ref().unwrap().endpoints,
        &["10.244.1.5:8080".parse().unwrap()]
    );

    let gw = eventually("the Gateway's status", || {
        let client = client.clone();
        async move {
            let g = get(
                &client,
                "gateway.networking.k8s.io/v1",
                "Gateway",
                "default",
                "gw",
            )
            .await;
            (g["status"]["addresses"][0]["value"] == "198.18.0.201").then_some(g)
        }
    })
    .await;
    let conds = gw["status"]["conditions"].as_array().unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True"),
        "{conds:?}"
    );
    assert!(conds.iter().all(|c| c["lastTransitionTime"].is_string()));
    assert_eq!(gw["status"]["listeners"][0]["attachedRoutes"], 1);
    let route = eventually("the route's status", || {
        let client = client.clone();
        async move {
            let r = get(
                &client,
                "gateway.networking.k8s.io/v1",
                "HTTPRoute",
                "default",
                "web",
            )
            .await;
            r["status"]["parents"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
                .then_some(r)
        }
    })
    .await;
    let conds = &route["status"]["parents"][0]["conditions"];
    assert_eq!(conds[1]["reason"], "BackendNotFound", "{conds}");
    let ing = eventually("the Ingress's address", || {
        let client = client.clone();
        async move {
            let i = get(
                &client,
                "networking.k8s.io/v1",
                "Ingress",
                "default",
                "web-ingress",
            )
            .await;
            i["status"]["loadBalancer"]["ingress"]
                .is_array()
                .then_some(i)
        }
    })
    .await;
    assert_eq!(
        ing["status"]["loadBalancer"]["ingress"],
        json!([{"ip": "198.18.0.200"}])
    );
    let m = eventually("the Mapping's status", || {
        let client = client.clone();
        async move {
            let m = get(
                &client,
                "getambassador.io/v3alpha1",
                "Mapping",
                "default",
                "quote-backend",
            )
            .await;
            m["status"]["state"].is_string().then_some(m)
        }
    })
    .await;
    assert_eq!(
        m["status"],
        json!({"state": "Running", "reason": "not supported, ignored: spec.shadow"})
    );
    // The GatewayClass is the controller's own, created by it.
    let gc = eventually("the GatewayClass's status", || {
        let client = client.clone();
        async move {
            let gc = get(
                &client,
                "gateway.networking.k8s.io/v1",
                "GatewayClass",
                "",
                "kubewire",
            )
            .await;
            gc["status"]["conditions"][0]["reason"]
                .is_string()
                .then_some(gc)
        }
    })
    .await;
    assert_eq!(gc["spec"]["controllerName"], "kubewire.io/gateway");
    assert_eq!(gc["status"]["conditions"][0]["reason"], "Accepted");

    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let holder = leases
        .get("kubewire-gateway")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert!(holder == "a" || holder == "b", "{holder}");
    assert_eq!(
        *rx_b.borrow().clone(),
        *config,
        "both replicas serve the same routes"
    );

    // A change follows: the route names only the Service that exists; its ResolvedRefs
    // turns, the Gateway's conditions keep their times.
    let before = gw["status"]["conditions"].clone();
    apply(
        &client,
        &yaml("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\nspec:\n  parentRefs: [{name: gw}]\n  rules: [{backendRefs: [{name: engine, port: 80}]}]"),
    )
    .await;
    eventually("ResolvedRefs", || {
        let client = client.clone();
        async move {
            let r = get(
                &client,
                "gateway.networking.k8s.io/v1",
                "HTTPRoute",
                "default",
                "web",
            )
            .await;
            (r["status"]["parents"][0]["conditions"][1]["reason"] == "ResolvedRefs").then_some(())
        }
    })
    .await;
    let gw = get(
        &client,
        "gateway.networking.k8s.io/v1",
        "Gateway",
        "default",
        "gw",
    )
    .await;
    assert_eq!(gw["status"]["conditions"], before);

    // The route leaves the Gateway: its parent entry goes, and its routes with it.
    apply(
        &client,
        &yaml("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web, namespace: default}\nspec:\n  parentRefs: [{name: elsewhere}]\n  rules: [{backendRefs: [{name: engine, port: 80}]}]"),
    )
    .await;
    eventually("the parent gone", || {
        let client = client.clone();
        async move {
            let r = get(
                &client,
                "gateway.networking.k8s.io/v1",
                "HTTPRoute",
                "default",
                "web",
            )
            .await;
            (r["status"]["parents"] == json!([])).then_some(())
        }
    })
    .await;
    eventually("the route gone", || {
        let c = rx.borrow_and_update().clone();
        async move { (routes(&c, 8000) == 0).then_some(()) }
    })
    .await;
    // An Ingress that leaves our classes gives its address back, and its route goes.
    apply(
        &client,
        &yaml("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web-ingress, namespace: default, annotations: {kubernetes.io/ingress.class: nginx}}\nspec:\n  ingressClassName: nginx\n  rules: [{http: {paths: [{path: /engine, pathType: Prefix, backend: {service: {name: engine, port: {number: 80}}}}]}}]"),
    )
    .await;
    eventually("the address given back", || {
        let client = client.clone();
        async move {
            let i = get(
                &client,
                "networking.k8s.io/v1",
                "Ingress",
                "default",
                "web-ingress",
            )
            .await;
            i["status"]["loadBalancer"]["ingress"]
                .as_array()
                .is_none_or(|a| a.is_empty())
                .then_some(())
        }
    })
    .await;
    eventually("the Ingress route gone", || {
        let c = rx.borrow_and_update().clone();
        async move { (routes(&c, 80) == 1).then_some(()) }
    })
    .await;
    // The Gateway deleted, its Service goes; the gateway's own stays.
    let (gateways, _) = api_for(
        &client,
        &json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "metadata": {"namespace": "default", "name": "gw"}}),
    );
    gateways.delete("gw", &Default::default()).await.unwrap();
    eventually("the Gateway's Service gone", || {
        let svc = svc.clone();
        let name = gw_svc_name.clone();
        async move { svc.get(&name).await.is_err().then_some(()) }
    })
    .await;
    assert!(svc.get("kubewire-gateway").await.is_ok());
    a.abort();
    b.abort();
}
