//! Tier 2: kube-rs against the router as an in-process tower service (no sockets).
//! Each test has its own temporary data dir.

use std::time::Duration;

use apiserver::{Config, Router, router};
use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

fn setup() -> (tempfile::TempDir, Router, Client) {
    setup_with(|_| {})
}

fn setup_with(f: impl FnOnce(&mut Config)) -> (tempfile::TempDir, Router, Client) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::new(dir.path());
    f(&mut cfg);
    let r = router(&cfg).unwrap();
    let client = Client::new(r.clone(), "default");
    (dir, r, client)
}

fn api_error(e: kube::Error) -> Box<kube::core::Status> {
    match e {
        kube::Error::Api(s) => s,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "web", "image": "nginx", "ports": [{"containerPort": 80}]}]}
    }))
    .unwrap()
}

/// A raw request through the router: (status, content type, body as JSON).
async fn raw(r: &Router, method: &str, uri: &str, ct: &str, body: &str) -> (u16, String, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = r.handle(req).await;
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        ct,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// The events of a watch through the router that ends by its own `timeoutSeconds`.
async fn watch_events(r: &Router, uri: &str) -> Vec<Value> {
    let req = http::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        r.handle(req).await.into_body().collect(),
    )
    .await
    .expect("the watch did not end by its timeoutSeconds")
    .unwrap()
    .to_bytes();
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

async fn count(r: &Router, path: &str) -> usize {
    let (code, _, v) = raw(r, "GET", path, "application/json", "").await;
    assert_eq!(code, 200, "{v}");
    v["items"].as_array().unwrap().len()
}

#[tokio::test]
async fn pods_create_get_list_patch_delete() {
    let (_dir, _r, client) = setup();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let created = pods
        .create(&PostParams::default(), &pod("web-1", json!({"app": "web"})))
        .await
        .unwrap();
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert_eq!(created.metadata.generation, Some(1));
    let rv1: u64 = created.resource_version().unwrap().parse().unwrap();
    pods.create(&PostParams::default(), &pod("db-1", json!({"app": "db"})))
        .await
        .unwrap();

    let got = pods.get("web-1").await.unwrap();
    assert_eq!(got.metadata.uid, created.metadata.uid);
    assert_eq!(got.status.unwrap().phase.as_deref(), Some("Pending"));

    let web = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .unwrap();
    assert_eq!(
        web.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(),
        ["web-1"]
    );
    let not_web = pods
        .list(&ListParams::default().labels("app notin (web)"))
        .await
        .unwrap();
    assert_eq!(not_web.items.len(), 1);
    let by_name = pods
        .list(&ListParams::default().fields("metadata.name=db-1"))
        .await
        .unwrap();
    assert_eq!(by_name.items[0].name_any(), "db-1");

    // Merge patch on labels, strategic merge on containers by name.
    let p = pods
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}})),
        )
        .await
        .unwrap();
    assert_eq!(p.labels().get("tier").map(String::as_str), Some("front"));
    assert!(p.resource_version().unwrap().parse::<u64>().unwrap() > rv1);
    let p = pods
        .patch(
            "web-1",
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "sidecar", "image": "busybox"}]}}),
            ),
        )
        .await
        .unwrap();
    let names: Vec<String> = p
        .spec
        .unwrap()
        .containers
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["web", "sidecar"]);
    assert_eq!(p.metadata.generation, Some(2));

    pods.delete("web-1", &DeleteParams::default())
        .await
        .unwrap();
    let e = api_error(pods.get("web-1").await.unwrap_err());
    assert_eq!(
        (e.code, e.reason.as_str(), e.message.as_str()),
        (404, "NotFound", "pods \"web-1\" not found")
    );
}

#[tokio::test]
async fn conflicts_and_already_exists() {
    let (_dir, _r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}})).unwrap();
    let first = cms.create(&PostParams::default(), &cm).await.unwrap();
    let e = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((e.code, e.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(e.message, "configmaps \"cfg\" already exists");

    let mut updated = first.clone();
    updated.data = Some([("a".to_string(), "2".to_string())].into());
    let second = cms
        .replace("cfg", &PostParams::default(), &updated)
        .await
        .unwrap();
    assert_ne!(second.resource_version(), first.resource_version());
    // `updated` still carries the first resourceVersion: stale.
    let e = api_error(
        cms.replace("cfg", &PostParams::default(), &updated)
            .await
            .unwrap_err(),
    );
    assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"));
    assert!(
        e.message.contains("the object has been modified"),
        "{}",
        e.message
    );

    // generateName.
    let gen_cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}})).unwrap();
    let g = cms.create(&PostParams::default(), &gen_cm).await.unwrap();
    assert!(
        g.name_any().starts_with("gen-") && g.name_any().len() == 9,
        "{}",
        g.name_any()
    );
    // A long base is cut to 58 characters, as kube does, so the name stays valid.
    let long = format!("{}-", "a".repeat(62));
    let gen_cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": long}})).unwrap();
    let g = cms.create(&PostParams::default(), &gen_cm).await.unwrap();
    assert!(
        g.name_any().starts_with(&"a".repeat(58)) && g.name_any().len() == 63,
        "{}",
        g.name_any()
    );

    // Namespace must exist.
    let other: Api<ConfigMap> = Api::namespaced(client, "nope");
    let e = api_error(other.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "namespaces \"nope\" not found")
    );
}

#[tokio::test]
async fn system_namespaces_and_kubernetes_service_exist() {
    let (_dir, _r, client) = setup();
    let ns: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| n.name_any())
        .collect();
    assert!(
        names.contains(&"default".to_string()) && names.contains(&"kube-system".to_string()),
        "{names:?}"
    );
    let d = ns.get("default").await.unwrap();
    assert_eq!(
        d.labels()
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("default")
    );
    let svc: Api<Service> = Api::namespaced(client.clone(), "default");
    let k = svc.get("kubernetes").await.unwrap();
    let spec = k.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("10.96.0.1"));
    // The first address of each service range, as kube-apiserver's dual-stack service.
    assert_eq!(
        spec.cluster_ips.unwrap(),
        vec!["10.96.0.1".to_string(), "fd00:10:96::1".to_string()]
    );
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 443));
    // Every namespace has its `default` ServiceAccount, new ones too.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
    sas.get("default").await.unwrap();
    let mut n = Namespace::default();
    n.metadata.name = Some("fresh".into());
    ns.create(&PostParams::default(), &n).await.unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client, "fresh");
    sas.get("default").await.unwrap();
}

#[tokio::test]
async fn token_requests_mint_tokens_the_server_accepts() {
    let (_dir, r, client) = setup();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let req: TokenRequest = serde_json::from_value(json!({"spec": {}})).unwrap();
    let tr = sas
        .create_token_request("default", &PostParams::default(), &req)
        .await
        .unwrap();
    let status = tr.status.unwrap();
    assert!(status.expiration_timestamp.is_some());
    assert_eq!(tr.spec.unwrap().expiration_seconds, Some(3600));
    let token = status.token.unwrap_or_default();
    assert_eq!(
        r.service_account(&token).as_deref(),
        Some("system:serviceaccount:default:default")
    );
    assert_eq!(r.service_account("not-a-token"), None);
    // A missing account: 404; too short a lifetime: 422.
    let e = api_error(
        sas.create_token_request("ghost", &PostParams::default(), &req)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 404);
    let short: TokenRequest =
        serde_json::from_value(json!({"spec": {"expirationSeconds": 60}})).unwrap();
    let e = api_error(
        sas.create_token_request("default", &PostParams::default(), &short)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422, "{e:?}");
    // Bound to a pod: valid while the pod exists.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod("owner", json!({})))
        .await
        .unwrap();
    let bound: TokenRequest = serde_json::from_value(
        json!({"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "owner"}}}),
    )
    .unwrap();
    let t = sas
        .create_token_request("default", &PostParams::default(), &bound)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap_or_default();
    assert!(r.service_account(&t).is_some());
    pods.delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(r.service_account(&t), None);
    // Deleting the account invalidates its tokens.
    sas.delete("default", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(r.service_account(&token), None);
}

/// TokenReview, as an identity issuer checks a pod's token: for the audience asked,
/// with the ServiceAccount and the bound pod in the answer; invalid once the pod goes.
#[tokio::test]
async fn token_reviews_answer_for_audiences_and_bound_pods() {
    let (_dir, _r, client) = setup();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let owner = pods
        .create(&PostParams::default(), &pod("meshed", json!({})))
        .await
        .unwrap();
    let req: TokenRequest = serde_json::from_value(json!({"spec": {
        "audiences": ["identity.kubewire.io"],
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "meshed"}}}))
    .unwrap();
    let token = sas
        .create_token_request("default", &PostParams::default(), &req)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
        .unwrap_or_default();
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let review = |token: &str, audiences: Value| {
        let reviews = reviews.clone();
        let body: TokenReview =
            serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}}))
                .unwrap();
        async move {
            let out = reviews.create(&PostParams::default(), &body).await.unwrap();
            serde_json::to_value(out.status.unwrap()).unwrap()
        }
    };
    let ok = review(&token, json!(["identity.kubewire.io"])).await;
    assert_eq!(ok["authenticated"], true, "{ok}");
    assert_eq!(
        ok["user"]["username"],
        "system:serviceaccount:default:default"
    );
    assert_eq!(ok["audiences"], json!(["identity.kubewire.io"]));
    assert!(
        ok["user"]["groups"]
            .as_array()
            .unwrap()
            .contains(&json!("system:serviceaccounts:default"))
    );
    assert_eq!(
        ok["user"]["extra"]["authentication.kubernetes.io/pod-name"],
        json!(["meshed"])
    );
    assert_eq!(
        ok["user"]["extra"]["authentication.kubernetes.io/pod-uid"],
        json!([owner.metadata.uid.unwrap()])
    );
    // Not for the API server's own audience (the default), nor for another.
    let other = review(&token, json!([])).await;
    assert_eq!(other["authenticated"], Value::Null, "{other}");
    assert!(
        other["error"].as_str().unwrap().contains("audiences"),
        "{other}"
    );
    let garbage = review("not.a.token", json!(["identity.kubewire.io"])).await;
    assert_eq!(garbage["error"], "[invalid bearer token]");
    // An empty token is a bad request.
    let empty: TokenReview = serde_json::from_value(json!({"spec": {"token": ""}})).unwrap();
    let e = api_error(
        reviews
            .create(&PostParams::default(), &empty)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 400);
    // The bound pod gone: the token is invalidated.
    pods.delete("meshed", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let gone = review(&token, json!(["identity.kubewire.io"])).await;
    assert!(
        gone["error"].as_str().unwrap().contains("invalidated"),
        "{gone}"
    );
}

#[tokio::test]
async fn watcher_receives_events() {
    let (_dir, _r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let stream = watcher(cms.clone(), watcher::Config::default()).applied_objects();
    let mut stream = Box::pin(stream);
    let create = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for i in 0..3 {
            let cm: ConfigMap =
                serde_json::from_value(json!({"metadata": {"name": format!("w{i}")}})).unwrap();
            cms.create(&PostParams::default(), &cm).await.unwrap();
        }
    };
    let collect = async {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let cm = stream.try_next().await.unwrap().unwrap();
            seen.push(cm.name_any());
        }
        seen
    };
    let (_, seen) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(create, collect)
    })
    .await
    .unwrap();
    assert_eq!(seen, ["w0", "w1", "w2"]);
}

#[tokio::test]
async fn services_get_cluster_ips_and_node_ports() {
    let (_dir, _r, client) = setup();
    let svcs: Api<Service> = Api::namespaced(client, "default");
    let np: Service = serde_json::from_value(
        json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort",
        "selector": {"app": "web"}, "ports": [{"port": 80, "nodePort": 31100}]}}),
    )
    .unwrap();
    let s = svcs.create(&PostParams::default(), &np).await.unwrap();
    let spec = s.spec.unwrap();
    assert!(spec.cluster_ip.unwrap().starts_with("10.96."));
    let mut clash = np.clone();
    clash.metadata.name = Some("web2".into());
    let e = api_error(
        svcs.create(&PostParams::default(), &clash)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        "Service \"web2\" is invalid: spec.ports[0].nodePort: Invalid value: 31100: provided port is already allocated"
    );
    svcs.delete("web", &DeleteParams::default()).await.unwrap();
    svcs.create(&PostParams::default(), &clash).await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_and_stores_nothing() {
    let (_dir, r, _client) = setup();
    let cms = "/api/v1/namespaces/default/configmaps";
    let svcs = "/api/v1/namespaces/default/services";
    let before_cm = count(&r, cms).await;
    let before_svc = count(&r, svcs).await;

    let (code, _, v) = raw(
        &r,
        "POST",
        cms,
        "application/json",
        "{\"metadata\": {\"name\": ",
    )
    .await;
    assert_eq!(
        (code, v["kind"].as_str(), v["reason"].as_str()),
        (400, Some("Status"), Some("BadRequest"))
    );

    let (code, _, v) = raw(
        &r,
        "POST",
        "/api/v1/namespaces/default/widgets",
        "application/json",
        "{}",
    )
    .await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")));

    let wrong_kind = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}});
    let (code, _, v) = raw(&r, "POST", cms, "application/json", &wrong_kind.to_string()).await;
    assert_eq!(code, 400, "{v}");

    let bad_name =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name"}});
    let (code, _, v) = raw(&r, "POST", cms, "application/json", &bad_name.to_string()).await;
    assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(v["details"]["causes"][0]["field"], "metadata.name");
    assert!(v["message"].as_str().unwrap().starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"));

    let bad_port = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}, "spec": {"ports": [{"port": 70000}]}});
    let (code, _, v) = raw(&r, "POST", svcs, "application/json", &bad_port.to_string()).await;
    assert_eq!(code, 422);
    assert_eq!(
        v["message"],
        "Service \"web\" is invalid: spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
    );
    assert_eq!(v["details"]["causes"][0]["field"], "spec.ports[0].port");

    let typo = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "typo"},
        "spec": {"ports": [{"port": 80, "prot": 1}]}});
    let strict = format!("{svcs}?fieldValidation=Strict");
    let (code, _, v) = raw(&r, "POST", &strict, "application/json", &typo.to_string()).await;
    assert_eq!(code, 400);
    assert_eq!(
        v["message"],
        "Service in version \"v1\" cannot be handled as a Service: strict decoding error: unknown field \"spec.ports[0].prot\""
    );
    let patch = "/api/v1/namespaces/default/services/kubernetes?fieldValidation=Strict";
    let (code, _, v) = raw(
        &r,
        "PATCH",
        patch,
        "application/merge-patch+json",
        r#"{"spec": {"typo": 1}}"#,
    )
    .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (
            400,
            Some("strict decoding error: unknown field \"spec.typo\"")
        )
    );

    let too_big = format!(
        "{{\"metadata\": {{\"name\": \"big\"}}, \"data\": {{\"a\": \"{}\"}}}}",
        "x".repeat(4 * 1024 * 1024)
    );
    let (code, _, _) = raw(&r, "POST", cms, "application/json", &too_big).await;
    assert_eq!(code, 413);

    let (code, _, _) = raw(
        &r,
        "PATCH",
        "/api/v1/namespaces/default/services/kubernetes",
        "application/protobuf",
        "{}",
    )
    .await;
    assert_eq!(code, 415);
    // Server-side apply without a field manager.
    let (code, _, v) = raw(
        &r,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ssa",
        "application/apply-patch+yaml",
        r#"{"apiVersion": "v1", "kind": "ConfigMap"}"#,
    )
    .await;
    assert_eq!(
        (code, v["details"]["causes"][0]["field"].as_str()),
        (422, Some("fieldManager"))
    );

    assert_eq!(count(&r, cms).await, before_cm);
    assert_eq!(count(&r, svcs).await, before_svc);
}

#[tokio::test]
async fn watch_from_too_old_version_gets_410_event() {
    let (_dir, r, client) = setup_with(|c| c.watch_log_capacity = 2);
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..5 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("c{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let req =
        http::Request::get("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1")
            .body(Full::new(Bytes::new()))
            .unwrap();
    let resp = r.handle(req).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let ev: Value = serde_json::from_slice(frame.data_ref().unwrap()).unwrap();
    assert_eq!(ev["type"], "ERROR");
    assert_eq!(ev["object"]["code"], 410);
    assert_eq!(ev["object"]["reason"], "Expired");
}

#[tokio::test]
async fn watch_resumes_and_sends_bookmarks_with_kind() {
    let (_dir, r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
    let a = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv = a.resource_version().unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let uri = format!(
        "/api/v1/namespaces/default/configmaps?&watch=true&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=2"
    );
    let events = watch_events(&r, &uri).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (
            events[0]["type"].as_str(),
            events[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("b"))
    );

    // sendInitialEvents: current state, then the initial-events-end bookmark.
    let uri = "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1";
    let events = watch_events(&r, uri).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[2]["type"], "BOOKMARK");
    assert_eq!(events[2]["object"]["kind"], "ConfigMap");
    assert_eq!(
        events[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let (_dir, _r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    for i in 0..5 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("p{i}")}})).unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    let second = cms
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(
        second
            .items
            .iter()
            .map(|c| c.name_any())
            .collect::<Vec<_>>(),
        ["p2", "p3"]
    );
    let third = cms
        .list(
            &ListParams::default()
                .limit(2)
                .continue_token(second.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(third.items.len(), 1);
    assert!(third.metadata.continue_.is_none_or(|c| c.is_empty()));
}

#[tokio::test]
async fn continued_lists_show_the_first_page_snapshot() {
    let (_dir, _r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = |n: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": n}})).unwrap()
    };
    for n in ["a", "b", "c"] {
        cms.create(&PostParams::default(), &cm(n)).await.unwrap();
    }
    let first = cms.list(&ListParams::default().limit(1)).await.unwrap();
    let rv = first.metadata.resource_version.clone().unwrap();
    // Changes after the first page do not show on the next ones.
    cms.delete("b", &DeleteParams::default()).await.unwrap();
    cms.create(&PostParams::default(), &cm("bb")).await.unwrap();
    let rest = cms
        .list(
            &ListParams::default()
                .limit(10)
                .continue_token(first.metadata.continue_.as_deref().unwrap()),
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items.iter().map(|c| c.name_any()).collect::<Vec<_>>(),
        ["b", "c"]
    );
    assert_eq!(rest.metadata.resource_version.as_deref(), Some(rv.as_str()));
}

#[tokio::test]
async fn lists_at_a_resource_version() {
    let (_dir, r, client) = setup_with(|c| c.watch_log_capacity = 5);
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "v"}, "data": {"n": "1"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let rv1 = created.resource_version().unwrap();
    cms.patch(
        "v",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"n": "2"}})),
    )
    .await
    .unwrap();
    // Exact: the object as it was.
    let uri = format!(
        "/api/v1/namespaces/default/configmaps?resourceVersion={rv1}&resourceVersionMatch=Exact"
    );
    let (code, _, v) = raw(&r, "GET", &uri, "", "").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["metadata"]["resourceVersion"], json!(rv1));
    assert_eq!(v["items"][0]["data"]["n"], "1");
    // NotOlderThan (and a bare resourceVersion): the current state.
    for q in ["&resourceVersionMatch=NotOlderThan", ""] {
        let uri = format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv1}{q}");
        let (code, _, v) = raw(&r, "GET", &uri, "", "").await;
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["items"][0]["data"]["n"], "2");
    }
    // Invalid combinations, as kube-apiserver words them.
    let (code, _, v) = raw(
        &r,
        "GET",
        "/api/v1/configmaps?resourceVersionMatch=Exact",
        "",
        "",
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("resourceVersionMatch is forbidden unless resourceVersion is provided"),
        "{v}"
    );
    let (code, _, v) = raw(
        &r,
        "GET",
        "/api/v1/configmaps?resourceVersion=0&resourceVersionMatch=Exact",
        "",
        "",
    )
    .await;
    assert_eq!(code, 422, "{v}");
    // A version newer than the store: 504 after kube-apiserver's 3 s wait.
    let (code, _, v) = raw(
        &r,
        "GET",
        "/api/v1/configmaps?resourceVersion=999999",
        "",
        "",
    )
    .await;
    assert_eq!(code, 504, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("Too large resource version"),
        "{v}"
    );
    // Older than the log: 410 Expired.
    for i in 0..6 {
        cms.patch(
            "v",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"n": i.to_string()}})),
        )
        .await
        .unwrap();
    }
    let (code, _, v) = raw(&r, "GET", &uri, "", "").await;
    assert_eq!(code, 410, "{v}");
    assert_eq!(v["reason"], "Expired");
}

#[tokio::test]
async fn watches_resume_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let create = |n: &'static str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": n}}).to_string()
    };
    let rv = {
        let r = router(&Config::new(dir.path())).unwrap();
        let path = "/api/v1/namespaces/default/configmaps";
        let (_, _, a) = raw(&r, "POST", path, "application/json", &create("before")).await;
        let (_, _, _) = raw(&r, "POST", path, "application/json", &create("after")).await;
        a["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // After the restart, a watch from a version before it gets what followed, not 410.
    let r = router(&Config::new(dir.path())).unwrap();
    let uri = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1"
    );
    let events = watch_events(&r, &uri).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["type"], "ADDED");
    assert_eq!(events[0]["object"]["metadata"]["name"], "after");
}

#[tokio::test]
async fn table_output_for_endpoints_and_services() {
    let (_dir, r, client) = setup();
    let eps: Api<Endpoints> = Api::namespaced(client, "default");
    let ep: Endpoints = serde_json::from_value(json!({"metadata": {"name": "website"},
        "subsets": [{"addresses": [{"ip": "10.10.10.10"}], "ports": [{"port": 80}]}]}))
    .unwrap();
    eps.create(&PostParams::default(), &ep).await.unwrap();
    let req = http::Request::get("/api/v1/namespaces/default/endpoints/website")
        .header(
            "accept",
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = r.handle(req).await;
    assert_eq!(
        resp.headers()["content-type"],
        "application/json;as=Table;v=v1;g=meta.k8s.io"
    );
    let t: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(t["kind"], "Table");
    assert_eq!(t["rows"][0]["cells"][0], "website");
    assert_eq!(t["rows"][0]["cells"][1], "10.10.10.10:80");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Endpoints", "Age"]);
}

#[tokio::test]
async fn discovery_and_status_subresource() {
    let (_dir, r, client) = setup();
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    let groups: Vec<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in [
        "",
        "apps",
        "networking.k8s.io",
        "discovery.k8s.io",
        "coordination.k8s.io",
        "events.k8s.io",
    ] {
        assert!(groups.iter().any(|x| x == g), "{g} in {groups:?}");
    }
    let (code, _, v) = raw(&r, "GET", "/version", "", "").await;
    assert_eq!((code, v["major"].as_str()), (200, Some("1")));

    // Status writes go through /status only; main-resource writes keep the status.
    let pods: Api<Pod> = Api::namespaced(client, "default");
    pods.create(&PostParams::default(), &pod("s", json!({})))
        .await
        .unwrap();
    let p = pods
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.1.5"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        p.status.as_ref().unwrap().pod_ip.as_deref(),
        Some("10.244.1.5")
    );
    let p = pods
        .patch(
            "s",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"phase": "Failed"}, "metadata": {"labels": {"x": "y"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(running.items.len(), 1);

    // A built-in type's /status writes its metadata too (MetalLB annotates a Service with
    // its pool in the status write), never its spec; pods/status keeps owner references.
    let owner = json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-1"}]);
    let p = pods
        .patch_status(
            "s",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"a": "b"}, "ownerReferences": owner},
                "spec": {"nodeName": "elsewhere"},
                "status": {"phase": "Succeeded"},
            })),
        )
        .await
        .unwrap();
    assert_eq!(p.annotations().get("a").map(String::as_str), Some("b"));
    assert!(p.owner_references().is_empty(), "{:?}", p.metadata);
    assert_eq!(p.spec.unwrap().node_name, None);
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Succeeded"));
    let services: Api<Service> = Api::namespaced(pods.into_client(), "default");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "lb"},
        "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
    }))
    .unwrap();
    services.create(&PostParams::default(), &svc).await.unwrap();
    let s = services
        .patch_status(
            "lb",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"annotations": {"metallb.io/ip-allocated-from-pool": "default"}},
                "spec": {"ports": [{"port": 81}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "10.250.0.1"}]}},
            })),
        )
        .await
        .unwrap();
    assert_eq!(
        s.annotations()
            .get("metallb.io/ip-allocated-from-pool")
            .map(String::as_str),
        Some("default")
    );
    assert_eq!(s.spec.unwrap().ports.unwrap()[0].port, 80);
    let ingress = s.status.unwrap().load_balancer.unwrap().ingress.unwrap();
    assert_eq!(ingress[0].ip.as_deref(), Some("10.250.0.1"));
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let rv = {
        // Raw requests: a kube Client would keep the router (and the database) open.
        let r = router(&Config::new(dir.path())).unwrap();
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}})
            .to_string();
        let (code, _, v) = raw(
            &r,
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "application/json",
            &body,
        )
        .await;
        assert_eq!(code, 201);
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let r = router(&Config::new(dir.path())).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(Client::new(r, "default"), "default");
    assert_eq!(
        cms.get("keep").await.unwrap().resource_version().unwrap(),
        rv
    );
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "next"}})).unwrap();
    let next = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(next.resource_version().unwrap().parse::<u64>().unwrap() > rv.parse::<u64>().unwrap());
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_objects() {
    let (_dir, r, client) = setup();
    let ns: Api<Namespace> = Api::all(client.clone());
    let n: Namespace = serde_json::from_value(json!({"metadata": {"name": "team"}})).unwrap();
    let created = ns.create(&PostParams::default(), &n).await.unwrap();
    assert_eq!(
        created.spec.unwrap().finalizers,
        Some(vec!["kubernetes".to_string()])
    );
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "team");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    // A pod bound to a node holds the namespace until its node deletes it.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "team");
    let mut p = pod("bound", json!({}));
    p.spec.as_mut().unwrap().node_name = Some("node-1".into());
    pods.create(&PostParams::default(), &p).await.unwrap();

    let deleted = ns.delete("team", &DeleteParams::default()).await.unwrap();
    let terminating = deleted
        .left()
        .expect("the namespace is returned, terminating");
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.status.unwrap().phase.as_deref(),
        Some("Terminating")
    );
    // Nothing new may be created in it.
    let e = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(e.code, 403, "{e:?}");
    // The namespace controller deletes the content; the pod waits for its node.
    wait_for(|| async { count(&r, "/api/v1/namespaces/team/configmaps").await == 0 }).await;
    wait_for(|| async {
        ns.get("team")
            .await
            .unwrap()
            .status
            .unwrap()
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| {
                c.type_ == "NamespaceContentRemaining"
                    && c.message.as_deref()
                        == Some("Some resources are remaining: pods has 1 resource instances")
            })
    })
    .await;
    assert!(
        pods.get("bound")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(ns.get("team").await.is_ok());
    pods.delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for(|| async { ns.get("team").await.is_err() }).await;
    assert_eq!(api_error(ns.get("team").await.unwrap_err()).code, 404);
}

/// Polls `f` until it holds (the deletion worker runs after commits), up to 20 s.
async fn wait_for<F, Fut>(f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached in 20 s");
}

#[tokio::test]
async fn foreground_deletion_waits_for_blocking_dependents() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let (_dir, _r, client) = setup();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let template = json!({"metadata": {"labels": {"app": "fg"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let owned_by = |kind: &str, name: &str, uid: &str, block: bool| json!([{"apiVersion": if kind == "ConfigMap" { "v1" } else { "apps/v1" }, "kind": kind, "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": block}]);
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "fg"},
        "spec": {"selector": {"matchLabels": {"app": "fg"}}, "template": template}}))
    .unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap();
    let rs: ReplicaSet = serde_json::from_value(json!({"metadata": {"name": "fg-1",
        "ownerReferences": owned_by("Deployment", "fg", &d.uid().unwrap(), true)},
        "spec": {"selector": {"matchLabels": {"app": "fg"}}, "template": template}}))
    .unwrap();
    let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
    let mut p = pod("fg-1-a", json!({"app": "fg"}));
    p.spec.as_mut().unwrap().node_name = Some("node-1".into());
    p.metadata.owner_references =
        serde_json::from_value(owned_by("ReplicaSet", "fg-1", &rs.uid().unwrap(), true)).unwrap();
    pods.create(&PostParams::default(), &p).await.unwrap();
    // A dependent that does not block is deleted but not waited for.
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "fg-cm",
        "finalizers": ["example.com/hold"],
        "ownerReferences": owned_by("Deployment", "fg", &d.uid().unwrap(), false)}}))
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    deploys
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    let waiting = deploys.get("fg").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(
        waiting
            .finalizers()
            .contains(&"foregroundDeletion".to_string())
    );
    // The ReplicaSet has a dependent of its own: deleted in the foreground too.
    let rs_now = rss.get("fg-1").await.unwrap();
    assert!(
        rs_now
            .finalizers()
            .contains(&"foregroundDeletion".to_string())
    );
    assert!(
        pods.get("fg-1-a")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    assert!(
        cms.get("fg-cm")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    // The node finishes the pod: the ReplicaSet, then the Deployment go.
    pods.delete("fg-1-a", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    wait_for(|| async { rss.get("fg-1").await.is_err() && deploys.get("fg").await.is_err() }).await;
    // The non-blocking dependent is still held by its own finalizer.
    assert!(cms.get("fg-cm").await.is_ok());
}

#[tokio::test]
async fn an_owner_held_by_a_finalizer_collects_its_dependents_when_it_goes() {
    let (_dir, _r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let owner: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "owner", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    let owner = cms.create(&PostParams::default(), &owner).await.unwrap();
    let dep: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "dep",
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.uid().unwrap()}]}}))
    .unwrap();
    cms.create(&PostParams::default(), &dep).await.unwrap();
    cms.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(cms.get("dep").await.is_ok(), "the owner is still there");
    cms.patch(
        "owner",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(cms.get("owner").await.unwrap_err()).code, 404);
    assert_eq!(api_error(cms.get("dep").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn filtered_watch_sees_objects_enter_and_leave_the_selector() {
    let (_dir, r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let rv = cms
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "m", "labels": {"app": "web"}}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    let relabel = |app: &str| Patch::Merge(json!({"metadata": {"labels": {"app": app}}}));
    cms.patch("m", &PatchParams::default(), &relabel("db"))
        .await
        .unwrap();
    cms.patch("m", &PatchParams::default(), &relabel("db2"))
        .await
        .unwrap();
    cms.patch("m", &PatchParams::default(), &relabel("web"))
        .await
        .unwrap();
    let uri = format!(
        "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=app%3Dweb&timeoutSeconds=1"
    );
    let events = watch_events(&r, &uri).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "DELETED", "ADDED"]);
}

#[tokio::test]
async fn garbage_collection_follows_owner_references() {
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    let (_dir, _r, client) = setup();
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}});
    let owned_by = |kind: &str, api_version: &str, name: &str, uid: &str| json!([{"apiVersion": api_version, "kind": kind, "name": name, "uid": uid, "controller": true}]);
    for (round, orphan) in [(0, false), (1, true)] {
        let d: Deployment =
            serde_json::from_value(json!({"metadata": {"name": format!("web{round}")},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}}))
            .unwrap();
        let d = deploys.create(&PostParams::default(), &d).await.unwrap();
        let rs: ReplicaSet =
            serde_json::from_value(json!({"metadata": {"name": format!("web{round}-1"),
            "ownerReferences": owned_by("Deployment", "apps/v1", &d.name_any(), &d.uid().unwrap())},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}}))
            .unwrap();
        let rs = rss.create(&PostParams::default(), &rs).await.unwrap();
        let mut p = pod(&format!("web{round}-1-a"), json!({"app": "web"}));
        p.metadata.owner_references = serde_json::from_value(owned_by(
            "ReplicaSet",
            "apps/v1",
            &rs.name_any(),
            &rs.uid().unwrap(),
        ))
        .unwrap();
        pods.create(&PostParams::default(), &p).await.unwrap();

        let dp = if orphan {
            DeleteParams::orphan()
        } else {
            DeleteParams::background()
        };
        deploys.delete(&d.name_any(), &dp).await.unwrap();
        if orphan {
            let left = rss.get(&rs.name_any()).await.unwrap();
            assert!(
                left.metadata
                    .owner_references
                    .unwrap_or_default()
                    .is_empty()
            );
            assert!(pods.get(&p.name_any()).await.is_ok());
        } else {
            assert_eq!(
                api_error(rss.get(&rs.name_any()).await.unwrap_err()).code,
                404
            );
            assert_eq!(
                api_error(pods.get(&p.name_any()).await.unwrap_err()).code,
                404
            );
        }
    }
}

#[tokio::test]
async fn bound_pods_wait_for_their_node_and_finalizers_hold_deletes() {
    let (_dir, _r, client) = setup();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let mut p = pod("bound", json!({}));
    p.spec.as_mut().unwrap().node_name = Some("node-1".into());
    pods.create(&PostParams::default(), &p).await.unwrap();
    pods.delete("bound", &DeleteParams::default())
        .await
        .unwrap();
    let terminating = pods.get("bound").await.unwrap();
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(terminating.metadata.deletion_grace_period_seconds, Some(30));
    // The node reports status, then deletes with grace period 0.
    pods.patch_status(
        "bound",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Succeeded"}})),
    )
    .await
    .unwrap();
    assert!(pods.get("bound").await.is_ok());
    pods.delete("bound", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(api_error(pods.get("bound").await.unwrap_err()).code, 404);

    // An unbound pod goes at once.
    pods.create(&PostParams::default(), &pod("unbound", json!({})))
        .await
        .unwrap();
    pods.delete("unbound", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(api_error(pods.get("unbound").await.unwrap_err()).code, 404);

    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    assert!(
        cms.get("held")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_error(cms.get("held").await.unwrap_err()).code, 404);
}

#[tokio::test]
async fn server_side_apply_creates_merges_prunes_and_reports_conflicts() {
    let (_dir, _r, client) = setup();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let ssa = |m: &str| PatchParams::apply(m);
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1"}},
        "data": {"x": "1", "y": "2"}});
    let created = cms
        .patch("ssa", &ssa("ctl"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    assert_eq!(created.data.as_ref().unwrap().len(), 2);
    let mf = created.metadata.managed_fields.clone().unwrap();
    assert_eq!(
        (mf[0].manager.as_deref(), mf[0].operation.as_deref()),
        (Some("ctl"), Some("Apply"))
    );

    // Another writer adds a key with a merge patch; re-applying without "y" prunes "y"
    // (this manager's) and keeps "z" (not this manager's).
    cms.patch(
        "ssa",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"z": "3"}})),
    )
    .await
    .unwrap();
    let cfg2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"x": "1"}});
    let pruned = cms
        .patch("ssa", &ssa("ctl"), &Patch::Apply(&cfg2))
        .await
        .unwrap();
    let keys: Vec<String> = pruned.data.clone().unwrap().into_keys().collect();
    assert_eq!(keys, ["x", "z"]);
    assert!(pruned.labels().is_empty());

    // A second manager changing "x" conflicts, unless it forces.
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"x": "9"}});
    let e = api_error(
        cms.patch("ssa", &ssa("other"), &Patch::Apply(&other))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(
        e.message,
        "Apply failed with 1 conflict: conflict with \"ctl\" using v1: .data.x"
    );
    let forced = cms
        .patch("ssa", &ssa("other").force(), &Patch::Apply(&other))
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["x"], "9");
}

#[tokio::test]
async fn events_in_both_groups() {
    use k8s_openapi::api::events::v1::Event as NewEvent;
    let (_dir, r, client) = setup();
    let events: Api<NewEvent> = Api::namespaced(client, "default");
    let ev: NewEvent = serde_json::from_value(json!({"metadata": {"name": "web.1"},
        "eventTime": "2026-11-26T10:00:00.000000Z", "reportingController": "kubewire/controllers",
        "reportingInstance": "c-1", "action": "Sync", "reason": "Synced", "type": "Normal", "note": "in sync",
        "regarding": {"kind": "Service", "name": "web", "namespace": "default"}}))
    .unwrap();
    events.create(&PostParams::default(), &ev).await.unwrap();
    let listed = events
        .list(&ListParams::default().fields("regarding.name=web"))
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    let core = json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "web.2"}, "reason": "Started",
        "type": "Normal", "message": "started", "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "default"}});
    let strict = "/api/v1/namespaces/default/events?fieldValidation=Strict";
    let (code, _, v) = raw(&r, "POST", strict, "application/json", &core.to_string()).await;
    assert_eq!(code, 201, "{v}");
    let req = http::Request::get(
        "/api/v1/namespaces/default/events?fieldSelector=involvedObject.name%3Dweb-1",
    )
    .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
    .body(Full::new(Bytes::new()))
    .unwrap();
    let t: Value = serde_json::from_slice(
        &r.handle(req)
            .await
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(t["rows"][0]["cells"][3], "pod/web-1");
}

fn widget_crd() -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wg"]},
            "versions": [
                {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                 "additionalPrinterColumns": [
                    {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}]},
                {"name": "v1beta1", "served": true, "storage": false,
                 "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}})
}

#[tokio::test]
async fn custom_resource_definitions_serve_their_objects() {
    let (_dir, r, client) = setup();
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let (code, _, crd) = raw(
        &r,
        "POST",
        crds,
        "application/json",
        &widget_crd().to_string(),
    )
    .await;
    assert_eq!(code, 201, "{crd}");
    let conditions = crd["status"]["conditions"].as_array().unwrap();
    assert!(
        conditions
            .iter()
            .any(|c| c["type"] == "Established" && c["status"] == "True")
    );

    // Discovery shows the group, preferred version first.
    let (_, _, g) = raw(&r, "GET", "/apis/example.com", "", "").await;
    assert_eq!(g["preferredVersion"]["version"], "v1");
    let discovery = kube::Discovery::new(client.clone()).run().await.unwrap();
    assert!(discovery.groups().any(|g| g.name() == "example.com"));

    let widgets = "/apis/example.com/v1/namespaces/default/widgets";
    let w = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w1"}, "spec": {"size": 3}});
    let (code, _, v) = raw(&r, "POST", widgets, "application/json", &w.to_string()).await;
    assert_eq!(code, 201, "{v}");
    // A custom resource's /status writes the status alone (not the labels).
    let status = json!({"metadata": {"labels": {"x": "y"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let (code, _, v) = raw(
        &r,
        "PATCH",
        &format!("{widgets}/w1/status"),
        "application/merge-patch+json",
        &status.to_string(),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(v["status"]["conditions"][0]["type"], "Ready");
    assert!(v["metadata"]["labels"].is_null(), "{v}");
    let (code, _, _) = raw(
        &r,
        "PATCH",
        &format!("{widgets}/w1"),
        "application/strategic-merge-patch+json",
        "{}",
    )
    .await;
    assert_eq!(code, 415, "no strategic merge for custom resources");
    let wrong =
        json!({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}});
    assert_eq!(
        raw(&r, "POST", widgets, "application/json", &wrong.to_string())
            .await
            .0,
        400
    );

    let req = http::Request::get(widgets)
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let t: Value = serde_json::from_slice(
        &r.handle(req)
            .await
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes(),
    )
    .unwrap();
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Size", "Ready"]);
    assert_eq!(t["rows"][0]["cells"], json!(["w1", 3, "True"]));

    // Deleting the CRD removes its objects and stops serving them.
    let (code, _, _) = raw(&r, "DELETE", &format!("{crds}/widgets.example.com"), "", "").await;
    assert_eq!(code, 200);
    let (code, _, _) = raw(&r, "GET", widgets, "", "").await;
    assert_eq!(code, 404);
    let (code, _, v) = raw(
        &r,
        "POST",
        crds,
        "application/json",
        &widget_crd().to_string(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(count(&r, widgets).await, 0);

    let mut bad = widget_crd();
    bad["metadata"]["name"] = json!("nope.example.com");
    let (code, _, v) = raw(&r, "POST", crds, "application/json", &bad.to_string()).await;
    assert_eq!(
        (code, v["details"]["causes"][0]["field"].as_str()),
        (422, Some("metadata.name"))
    );
}

/// The Service allocators: what a Service holds is freed on delete and on a type
/// change, a refused or dry-run write leaks nothing, and a restart rebuilds the
/// allocators from the stored Services.
#[tokio::test]
async fn service_allocations_are_freed_rolled_back_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    const SVCS: &str = "/api/v1/namespaces/default/services";
    let svc = |name: &str, spec: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
            .to_string()
    };
    let node_port =
        |name: &str, ports: Value| svc(name, json!({"type": "NodePort", "ports": ports}));
    let dynamic_ips = {
        let r = router(&Config::new(dir.path())).unwrap();
        let post = |body: String| {
            let r = r.clone();
            async move { raw(&r, "POST", SVCS, "application/json", &body).await }
        };
        let (code, _, a) = post(svc(
            "a",
            json!({"type": "NodePort", "clusterIP": "10.96.0.50",
                "ports": [{"port": 80, "nodePort": 31100}]}),
        ))
        .await;
        assert_eq!(code, 201, "{a}");
        // A type change frees the node port.
        let (code, _, v) = raw(
            &r,
            "PATCH",
            &format!("{SVCS}/a"),
            "application/merge-patch+json",
            r#"{"spec": {"type": "ClusterIP"}}"#,
        )
        .await;
        assert_eq!(code, 200, "{v}");
        assert!(v["spec"]["ports"][0].get("nodePort").is_none(), "{v}");
        let (code, _, v) = post(node_port("c", json!([{"port": 80, "nodePort": 31100}]))).await;
        assert_eq!(code, 201, "{v}");
        // A delete frees the node port and the address.
        let (code, _, v) = raw(&r, "DELETE", &format!("{SVCS}/c"), "application/json", "").await;
        assert_eq!(code, 200, "{v}");
        let (code, _, v) = post(node_port("d", json!([{"port": 80, "nodePort": 31100}]))).await;
        assert_eq!(code, 201, "{v}");
        let (code, _, v) = post(svc(
            "a2",
            json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
        ))
        .await;
        assert_eq!(code, 422, "{v}");
        assert_eq!(
            v["message"],
            "Service \"a2\" is invalid: spec.clusterIPs: Invalid value: []string{\"10.96.0.50\"}: failed to allocate IP 10.96.0.50: provided IP is already allocated"
        );
        let (code, _, v) = raw(&r, "DELETE", &format!("{SVCS}/a"), "application/json", "").await;
        assert_eq!(code, 200, "{v}");
        let (code, _, v) = post(svc(
            "a2",
            json!({"clusterIP": "10.96.0.50", "ports": [{"port": 80}]}),
        ))
        .await;
        assert_eq!(code, 201, "{v}");
        // A refused create (its second port is taken) leaks its first port.
        let (code, _, v) = post(node_port(
            "e",
            json!([{"name": "a", "port": 80, "nodePort": 31200},
                {"name": "b", "port": 81, "nodePort": 31100}]),
        ))
        .await;
        assert_eq!(code, 422, "{v}");
        assert_eq!(v["details"]["causes"][0]["field"], "spec.ports[1].nodePort");
        // A dry run allocates in its transaction, which is rolled back.
        let (code, _, v) = raw(
            &r,
            "POST",
            &format!("{SVCS}?dryRun=All"),
            "application/json",
            &svc(
                "g",
                json!({"type": "NodePort", "clusterIP": "10.96.0.60",
                "ports": [{"port": 80, "nodePort": 31300}]}),
            ),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(v["spec"]["ports"][0]["nodePort"], 31300);
        let (code, _, v) = post(svc(
            "f",
            json!({"type": "NodePort", "clusterIP": "10.96.0.60",
                "ports": [{"name": "a", "port": 80, "nodePort": 31200},
                    {"name": "b", "port": 81, "nodePort": 31300}]}),
        ))
        .await;
        assert_eq!(code, 201, "{v}");
        // Dynamic addresses for the restart check.
        let mut ips = Vec::new();
        for i in 0..5 {
            let (code, _, v) =
                post(svc(&format!("dyn{i}"), json!({"ports": [{"port": 80}]}))).await;
            assert_eq!(code, 201, "{v}");
            ips.push(v["spec"]["clusterIP"].as_str().unwrap().to_string());
        }
        ips
    };
    // After a restart the allocators know every stored Service.
    let r = router(&Config::new(dir.path())).unwrap();
    let (code, _, v) = raw(
        &r,
        "POST",
        SVCS,
        "application/json",
        &node_port("h", json!([{"port": 80, "nodePort": 31300}])),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        "Service \"h\" is invalid: spec.ports[0].nodePort: Invalid value: 31300: provided port is already allocated"
    );
    let (code, _, v) = raw(
        &r,
        "POST",
        SVCS,
        "application/json",
        &svc(
            "h",
            json!({"clusterIP": dynamic_ips[0], "ports": [{"port": 80}]}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    let (code, _, v) = raw(
        &r,
        "POST",
        SVCS,
        "application/json",
        &svc("h", json!({"ports": [{"port": 80}]})),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let ip = v["spec"]["clusterIP"].as_str().unwrap();
    assert!(
        !dynamic_ips.iter().any(|d| d == ip),
        "{ip} was handed out twice"
    );
    // kubernetes, d, a2, f, dyn0-4 and h: nothing else was stored.
    assert_eq!(count(&r, SVCS).await, 10);
}

/// `healthCheckNodePort`: allocated only for LoadBalancer + `externalTrafficPolicy:
/// Local`, kept across updates, checked for collisions, freed when the policy or the
/// type changes and on delete; refused elsewhere with kube-apiserver's messages.
#[tokio::test]
async fn health_check_node_ports() {
    let (_dir, r, _client) = setup();
    const SVCS: &str = "/api/v1/namespaces/default/services";
    let svc = |name: &str, spec: Value| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
            .to_string()
    };
    let post = |body: String| {
        let r = r.clone();
        async move { raw(&r, "POST", SVCS, "application/json", &body).await }
    };
    let patch = |name: &str, body: Value| {
        let (r, uri) = (r.clone(), format!("{SVCS}/{name}"));
        async move {
            raw(
                &r,
                "PATCH",
                &uri,
                "application/merge-patch+json",
                &body.to_string(),
            )
            .await
        }
    };
    let local = |hc: Option<i64>| {
        let mut spec = json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}]});
        if let Some(hc) = hc {
            spec["healthCheckNodePort"] = json!(hc);
        }
        spec
    };
    // Cluster policy: none.
    let (code, _, v) = post(svc(
        "cluster",
        json!({"type": "LoadBalancer", "ports": [{"port": 80}]}),
    ))
    .await;
    assert_eq!(code, 201, "{v}");
    assert!(v["spec"].get("healthCheckNodePort").is_none(), "{v}");
    // Local: one from the range, apart from the node port.
    let (code, _, v) = post(svc("lb", local(None))).await;
    assert_eq!(code, 201, "{v}");
    let hc = v["spec"]["healthCheckNodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&hc), "{v}");
    assert_ne!(Some(hc), v["spec"]["ports"][0]["nodePort"].as_i64());
    // Kept across a patch and a replace that omits it.
    let (code, _, v) = patch("lb", json!({"metadata": {"labels": {"a": "b"}}})).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["spec"]["healthCheckNodePort"], hc);
    let mut replaced = v.clone();
    replaced["spec"]
        .as_object_mut()
        .unwrap()
        .remove("healthCheckNodePort");
    let (code, _, v) = raw(
        &r,
        "PUT",
        &format!("{SVCS}/lb"),
        "application/json",
        &replaced.to_string(),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["spec"]["healthCheckNodePort"], hc);
    // Taken: by another Service's health check or node ports.
    let (code, _, v) = post(svc("lb2", local(Some(hc)))).await;
    assert_eq!(code, 500, "{v}");
    assert_eq!(v["reason"], "InternalError");
    assert_eq!(
        v["message"],
        format!(
            "Internal error occurred: failed to allocate requested HealthCheck NodePort {hc}: provided port is already allocated"
        )
    );
    let (code, _, v) = post(svc(
        "np",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}),
    ))
    .await;
    assert_eq!(code, 422, "{v}");
    let (code, _, v) = post(svc("lb2", local(Some(80)))).await;
    assert_eq!(code, 500, "{v}");
    assert!(
        v["message"].as_str().unwrap().ends_with(
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        ),
        "{v}"
    );
    // Only for LoadBalancer + Local.
    for (name, spec) in [
        (
            "c1",
            json!({"ports": [{"port": 80}], "healthCheckNodePort": 32001}),
        ),
        (
            "c2",
            json!({"type": "NodePort", "externalTrafficPolicy": "Local",
            "ports": [{"port": 80}], "healthCheckNodePort": 32001}),
        ),
        (
            "c3",
            json!({"type": "LoadBalancer", "ports": [{"port": 80}], "healthCheckNodePort": 32001}),
        ),
    ] {
        let (code, _, v) = post(svc(name, spec)).await;
        assert_eq!(code, 422, "{v}");
        assert_eq!(
            v["message"],
            format!(
                "Service \"{name}\" is invalid: spec.healthCheckNodePort: Invalid value: 32001: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'"
            )
        );
    }
    let (code, _, v) = post(svc(
        "c4",
        json!({"ports": [{"port": 80}], "externalTrafficPolicy": "Local"}),
    ))
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        "Service \"c4\" is invalid: spec.externalTrafficPolicy: Invalid value: \"Local\": may only be set for externally-accessible services"
    );
    // The policy goes back to Cluster: the port is freed.
    let (code, _, v) = patch("lb", json!({"spec": {"externalTrafficPolicy": "Cluster"}})).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["spec"].get("healthCheckNodePort").is_none(), "{v}");
    let (code, _, v) = post(svc(
        "np",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": hc}]}),
    ))
    .await;
    assert_eq!(code, 201, "{v}");
    // A requested one; freed by a type change, then by a delete.
    let (code, _, v) = post(svc("lb3", local(Some(32000)))).await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["spec"]["healthCheckNodePort"], 32000);
    let (code, _, v) = patch("lb3", json!({"spec": {"type": "NodePort"}})).await;
    assert_eq!(code, 200, "{v}");
    assert!(v["spec"].get("healthCheckNodePort").is_none(), "{v}");
    assert_eq!(v["spec"]["externalTrafficPolicy"], "Local");
    let (code, _, v) = post(svc("lb4", local(Some(32000)))).await;
    assert_eq!(code, 201, "{v}");
    let (code, _, v) = raw(&r, "DELETE", &format!("{SVCS}/lb4"), "application/json", "").await;
    assert_eq!(code, 200, "{v}");
    let (code, _, v) = post(svc(
        "np2",
        json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": 32000}]}),
    ))
    .await;
    assert_eq!(code, 201, "{v}");
}

/// kube-apiserver's defaults, after a create and after each kind of write that could
/// drop them: JSON patch, merge patch, strategic merge patch, server-side apply, PUT.
#[tokio::test]
async fn defaults_apply_on_create_and_on_every_patch_type() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let (_dir, _r, client) = setup();
    let pp = PatchParams::default();
    let template = json!({"metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
            "readinessProbe": {"httpGet": {"port": 80}},
            "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]}]}});
    let selector = json!({"matchLabels": {"app": "web"}});

    // StatefulSet.
    let sts: Api<StatefulSet> = Api::namespaced(client.clone(), "default");
    let s: StatefulSet = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"serviceName": "web", "selector": selector, "template": template}}))
    .unwrap();
    let check_sts = |s: &StatefulSet| {
        let v = serde_json::to_value(s).unwrap();
        let spec = &v["spec"];
        assert_eq!(
            spec["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
            "{v}"
        );
        assert_eq!(spec["podManagementPolicy"], "OrderedReady", "{v}");
        assert_eq!(spec["revisionHistoryLimit"], 10, "{v}");
        assert_eq!(spec["replicas"], 1, "{v}");
        assert_eq!(
            spec["persistentVolumeClaimRetentionPolicy"],
            json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            "{v}"
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["dnsPolicy"], "ClusterFirst", "{v}");
        assert_eq!(pod["restartPolicy"], "Always", "{v}");
        assert_eq!(pod["schedulerName"], "default-scheduler", "{v}");
        assert_eq!(pod["terminationGracePeriodSeconds"], 30, "{v}");
        assert_eq!(pod["securityContext"], json!({}), "{v}");
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{v}");
        assert_eq!(c["terminationMessagePolicy"], "File", "{v}");
        assert_eq!(
            c["readinessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3}),
            "{v}"
        );
        assert_eq!(
            c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1",
            "{v}"
        );
        assert_eq!(v["metadata"]["generation"], 1, "{v}");
    };
    check_sts(&sts.create(&PostParams::default(), &s).await.unwrap());
    let json_patch: json_patch::Patch = serde_json::from_value(json!([
        {"op": "remove", "path": "/spec/updateStrategy"},
        {"op": "remove", "path": "/spec/revisionHistoryLimit"},
        {"op": "remove", "path": "/spec/template/spec/dnsPolicy"},
    ]))
    .unwrap();
    check_sts(
        &sts.patch("web", &pp, &Patch::Json::<()>(json_patch))
            .await
            .unwrap(),
    );
    let merge = json!({"spec": {"persistentVolumeClaimRetentionPolicy": null,
        "podManagementPolicy": null, "updateStrategy": {"rollingUpdate": {"partition": null}}}});
    check_sts(&sts.patch("web", &pp, &Patch::Merge(&merge)).await.unwrap());
    let strategic = json!({"spec": {"revisionHistoryLimit": null,
        "template": {"spec": {"containers": [{"name": "web", "imagePullPolicy": null}]}}}});
    check_sts(
        &sts.patch("web", &pp, &Patch::Strategic(&strategic))
            .await
            .unwrap(),
    );
    let apply = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "labels": {"applied": "yes"}},
        "spec": {"serviceName": "web", "selector": selector, "template": template}});
    let applied = sts
        .patch("web", &PatchParams::apply("test"), &Patch::Apply(&apply))
        .await
        .unwrap();
    assert_eq!(applied.labels()["applied"], "yes");
    check_sts(&applied);
    // A strategy type of its own keeps it.
    let on_delete =
        json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null}}});
    let s = sts
        .patch("web", &pp, &Patch::Merge(&on_delete))
        .await
        .unwrap();
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(
        v["spec"]["updateStrategy"],
        json!({"type": "OnDelete"}),
        "{v}"
    );

    // DaemonSet.
    let dss: Api<DaemonSet> = Api::namespaced(client.clone(), "default");
    let ds: DaemonSet = serde_json::from_value(json!({"metadata": {"name": "agent"},
        "spec": {"selector": selector, "template": template}}))
    .unwrap();
    let check_ds = |d: &DaemonSet| {
        let v = serde_json::to_value(d).unwrap();
        assert_eq!(
            v["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}),
            "{v}"
        );
        assert_eq!(v["spec"]["revisionHistoryLimit"], 10, "{v}");
        assert!(v["spec"].get("replicas").is_none(), "{v}");
    };
    check_ds(&dss.create(&PostParams::default(), &ds).await.unwrap());
    let merge =
        json!({"spec": {"updateStrategy": {"rollingUpdate": null}, "revisionHistoryLimit": null}});
    check_ds(
        &dss.patch("agent", &pp, &Patch::Merge(&merge))
            .await
            .unwrap(),
    );

    // Deployment, also through a PUT without the defaulted fields.
    let deps: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"},
        "spec": {"selector": selector, "template": template}}))
    .unwrap();
    let check_dep = |d: &Deployment| {
        let v = serde_json::to_value(d).unwrap();
        assert_eq!(
            v["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}),
            "{v}"
        );
        assert_eq!(v["spec"]["progressDeadlineSeconds"], 600, "{v}");
        assert_eq!(v["spec"]["revisionHistoryLimit"], 10, "{v}");
    };
    let created = deps.create(&PostParams::default(), &d).await.unwrap();
    check_dep(&created);
    let mut put = d.clone();
    put.metadata.resource_version = created.metadata.resource_version.clone();
    let replaced = deps
        .replace("web", &PostParams::default(), &put)
        .await
        .unwrap();
    check_dep(&replaced);
    // Nothing changed: no new generation, no new resourceVersion.
    assert_eq!(replaced.metadata.generation, Some(1));
    assert_eq!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );

    // Pods: spec defaults and what admission adds.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let p = pods
        .create(&PostParams::default(), &pod("p", json!({"app": "web"})))
        .await
        .unwrap();
    let v = serde_json::to_value(&p).unwrap();
    let spec = &v["spec"];
    assert_eq!(spec["serviceAccount"], "default", "{v}");
    assert_eq!(spec["enableServiceLinks"], true, "{v}");
    assert_eq!(spec["priority"], 0, "{v}");
    assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority", "{v}");
    assert_eq!(
        spec["tolerations"],
        json!([
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]),
        "{v}"
    );
    assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP", "{v}");
    let p = pods
        .patch(
            "p",
            &pp,
            &Patch::Merge(&json!({"spec": {"enableServiceLinks": null, "schedulerName": null}})),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["spec"]["enableServiceLinks"], true, "{v}");
    assert_eq!(v["spec"]["schedulerName"], "default-scheduler", "{v}");

    // Other kinds.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "s"}})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(s.type_.as_deref(), Some("Opaque"));
    let nps: Api<NetworkPolicy> = Api::namespaced(client.clone(), "default");
    let np = nps
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "np"}, "spec": {"podSelector": {},
                "egress": [{"ports": [{"port": 53}]}]}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&np).unwrap();
    assert_eq!(
        v["spec"]["policyTypes"],
        json!(["Ingress", "Egress"]),
        "{v}"
    );
    assert_eq!(v["spec"]["egress"][0]["ports"][0]["protocol"], "TCP", "{v}");
    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
    let es = slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "es"}, "addressType": "IPv4",
                "endpoints": [], "ports": [{"port": 80}]}))
            .unwrap(),
        )
        .await
        .unwrap();
    let v = serde_json::to_value(&es).unwrap();
    assert_eq!(
        v["ports"][0],
        json!({"name": "", "port": 80, "protocol": "TCP"}),
        "{v}"
    );
}

/// Dangling ownerReferences: objects whose every owner is absent, or present with
/// another uid, or (for a namespaced dependent) only in another namespace, are
/// collected in the background; a dependent with one owner left loses only the
/// dangling reference; owners of kinds the server does not serve are left alone.
#[tokio::test]
async fn dangling_owner_references_are_garbage_collected() {
    let (_dir, _r, client) = setup();
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other"}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    let cm = |name: &str, owners: Value| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name, "ownerReferences": owners}}))
            .unwrap()
    };
    let owner_ref = |kind: &str, api: &str, name: &str, uid: &str| json!({"apiVersion": api, "kind": kind, "name": name, "uid": uid});
    let pp = PostParams::default();
    let owner = cms.create(&pp, &cm("owner", json!([]))).await.unwrap();
    let uid = owner.uid().unwrap();
    let default_ns = nss.get("default").await.unwrap().uid().unwrap();
    let keep = [
        // A real owner.
        cm("kept", json!([owner_ref("ConfigMap", "v1", "owner", &uid)])),
        // A cluster-scoped owner, found cluster-wide.
        cm(
            "ns-owned",
            json!([owner_ref("Namespace", "v1", "default", &default_ns)]),
        ),
        // A kind the server does not serve: not resolvable, left alone.
        cm(
            "unknown",
            json!([owner_ref("Widget", "example.com/v1", "w", "1234")]),
        ),
        // One owner left: only the dangling reference goes.
        cm(
            "half",
            json!([
                owner_ref("ConfigMap", "v1", "owner", &uid),
                owner_ref("ConfigMap", "v1", "ghost", "5678")
            ]),
        ),
    ];
    for c in &keep {
        cms.create(&pp, c).await.unwrap();
    }
    let gone = [
        cm(
            "wrong-uid",
            json!([owner_ref("ConfigMap", "v1", "owner", "not-the-uid")]),
        ),
        cm(
            "absent",
            json!([owner_ref("ConfigMap", "v1", "ghost", "5678")]),
        ),
        cm(
            "absent-node",
            json!([owner_ref("Node", "v1", "no-such-node", "91011")]),
        ),
    ];
    for c in &gone {
        cms.create(&pp, c).await.unwrap();
    }
    // Same name and uid as the owner, but in another namespace.
    other
        .create(
            &pp,
            &cm(
                "elsewhere",
                json!([owner_ref("ConfigMap", "v1", "owner", &uid)]),
            ),
        )
        .await
        .unwrap();
    // An update that adds a dangling reference.
    let late = cms.create(&pp, &cm("late", json!([]))).await.unwrap();
    let mut late = late;
    late.metadata.owner_references = Some(vec![
        serde_json::from_value(owner_ref("ConfigMap", "v1", "ghost", "5678")).unwrap(),
    ]);
    cms.replace("late", &pp, &late).await.unwrap();
    // Created after its owner was deleted.
    let shortlived = cms.create(&pp, &cm("short", json!([]))).await.unwrap();
    cms.delete("short", &DeleteParams::default()).await.unwrap();
    cms.create(
        &pp,
        &cm(
            "after-owner",
            json!([owner_ref(
                "ConfigMap",
                "v1",
                "short",
                &shortlived.uid().unwrap()
            )]),
        ),
    )
    .await
    .unwrap();
    for name in ["wrong-uid", "absent", "absent-node", "late", "after-owner"] {
        let cms = cms.clone();
        wait_for(|| {
            let cms = cms.clone();
            async move { cms.get_opt(name).await.unwrap().is_none() }
        })
        .await;
    }
    {
        let other = other.clone();
        wait_for(|| {
            let other = other.clone();
            async move { other.get_opt("elsewhere").await.unwrap().is_none() }
        })
        .await;
    }
    // The ones to keep were written before these and looked at no later.
    for name in ["kept", "ns-owned", "unknown"] {
        let c = cms.get(name).await.unwrap();
        assert_eq!(c.metadata.owner_references.unwrap().len(), 1, "{name}");
    }
    let half = cms.get("half").await.unwrap();
    let refs = half.metadata.owner_references.unwrap();
    assert_eq!(refs.len(), 1);
    assert_eq!(refs[0].uid, uid);
}

/// `pods/binding` (and `bindings`): sets `spec.nodeName` once, with kube-apiserver's
/// checks and messages; a refused binding changes nothing.
#[tokio::test]
async fn pod_bindings_set_the_node_once() {
    let (_dir, r, client) = setup();
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let pp = PostParams::default();
    for name in ["p", "q", "gated"] {
        pods.create(&pp, &pod(name, json!({}))).await.unwrap();
    }
    let binding = |pod: &str, node: &str| {
        json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod, "annotations": {"scheduled-by": "test"}},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    };
    // kube-rs, as a scheduler would call it.
    let status = pods
        .create_subresource::<_, Value>("binding", "p", &pp, &binding("p", "node-1"))
        .await
        .unwrap();
    assert_eq!(status["status"], "Success", "{status}");
    let p = serde_json::to_value(pods.get("p").await.unwrap()).unwrap();
    assert_eq!(p["spec"]["nodeName"], "node-1", "{p}");
    assert_eq!(p["metadata"]["annotations"]["scheduled-by"], "test", "{p}");
    let conds = p["status"]["conditions"].as_array().unwrap();
    assert!(
        conds
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "True"),
        "{p}"
    );
    let rv = p["metadata"]["resourceVersion"].clone();
    // Bound already: 409, nothing changes.
    let e = api_error(
        pods.create_subresource::<_, Value>("binding", "p", &pp, &binding("p", "node-2"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(e.reason, "Conflict");
    assert_eq!(
        e.message,
        "Operation cannot be fulfilled on pods/binding \"p\": pod p is already assigned to node \"node-1\""
    );
    let p = serde_json::to_value(pods.get("p").await.unwrap()).unwrap();
    assert_eq!(p["spec"]["nodeName"], "node-1");
    assert_eq!(p["metadata"]["resourceVersion"], rv);
    // The name in the URL must be the Binding's.
    let e = api_error(
        pods.create_subresource::<_, Value>("binding", "q", &pp, &binding("p", "node-2"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (400, "name in URL does not match name in Binding object")
    );
    // No target, a wrong target kind.
    let (code, _, v) = raw(
        &r,
        "POST",
        "/api/v1/namespaces/default/pods/q/binding",
        "application/json",
        r#"{"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "q"}, "target": {"kind": "Pod"}}"#,
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        "Binding \"q\" is invalid: [target.kind: Unsupported value: \"Pod\": supported values: \"Node\", \"<empty>\", target.name: Required value]"
    );
    // A missing pod.
    let e = api_error(
        pods.create_subresource::<_, Value>("binding", "nope", &pp, &binding("nope", "node-1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (404, "pods \"nope\" not found")
    );
    // A dry run changes nothing.
    let (code, _, v) = raw(
        &r,
        "POST",
        "/api/v1/namespaces/default/pods/q/binding?dryRun=All",
        "application/json",
        &binding("q", "node-2").to_string(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert!(
        pods.get("q")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_none()
    );
    // The namespaced `bindings` resource names the pod in the body.
    let (code, _, v) = raw(
        &r,
        "POST",
        "/api/v1/namespaces/default/bindings",
        "application/json",
        &binding("q", "node-2").to_string(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        pods.get("q")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("node-2")
    );
    // The scheduler's shape: a typed Binding with the pod's namespace and uid (a
    // precondition); a stale uid is refused and changes nothing.
    pods.create(&pp, &pod("r", json!({}))).await.unwrap();
    let uid = pods.get("r").await.unwrap().uid().unwrap();
    let typed = |uid: &str| k8s_openapi::api::core::v1::Binding {
        metadata: kube::core::ObjectMeta {
            name: Some("r".into()),
            namespace: Some("default".into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        target: k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some("node-3".into()),
            ..Default::default()
        },
    };
    let e = api_error(
        pods.create_subresource::<_, Value>("binding", "r", &pp, &typed("stale-uid"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert_eq!(
        e.message,
        format!(
            "Operation cannot be fulfilled on pods \"r\": Precondition failed: UID in precondition: stale-uid, UID in object meta: {uid}"
        )
    );
    assert!(
        pods.get("r")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .is_none()
    );
    pods.create_subresource::<_, Value>("binding", "r", &pp, &typed(&uid))
        .await
        .unwrap();
    assert_eq!(
        pods.get("r")
            .await
            .unwrap()
            .spec
            .unwrap()
            .node_name
            .as_deref(),
        Some("node-3")
    );
    // Scheduling gates hold a pod back.
    pods.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"schedulingGates": [{"name": "wait"}]}})),
    )
    .await
    .unwrap();
    let e = api_error(
        pods.create_subresource::<_, Value>("binding", "gated", &pp, &binding("gated", "node-1"))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert!(
        e.message
            .ends_with("pod gated has non-empty .spec.schedulingGates"),
        "{}",
        e.message
    );
    // Discovery lists both.
    let (_, _, v) = raw(&r, "GET", "/api/v1", "application/json", "").await;
    let names: Vec<&str> = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(
        names.contains(&"bindings") && names.contains(&"pods/binding"),
        "{names:?}"
    );
}

/// CRD `format`s: the string formats apiextensions-apiserver checks are refused with its
/// message; numeric formats and unknown ones are not checked, as there.
#[tokio::test]
async fn custom_resource_string_formats_are_validated() {
    let (_dir, r, _client) = setup();
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "probes.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "probes", "singular": "probe", "kind": "Probe"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": {"type": "object", "properties": {
                        "url": {"type": "string", "format": "uri"},
                        "at": {"type": "string", "format": "date-time"},
                        "ip": {"type": "string", "format": "ipv4"},
                        "id": {"type": "string", "format": "uuid"},
                        "every": {"type": "string", "format": "duration"},
                        "count": {"type": "integer", "format": "int32"},
                        "free": {"type": "string", "format": "no-such-format"}}}}}}}]}});
    let (code, _, v) = raw(
        &r,
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "application/json",
        &crd.to_string(),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let probe = |name: &str, spec: Value| {
        json!({"apiVersion": "example.com/v1", "kind": "Probe", "metadata": {"name": name}, "spec": spec})
            .to_string()
    };
    const PROBES: &str = "/apis/example.com/v1/namespaces/default/probes";
    let (code, _, v) = raw(
        &r,
        "POST",
        PROBES,
        "application/json",
        &probe(
            "bad",
            json!({
        "url": "not a uri", "at": "yesterday", "ip": "10.0.0.300",
        "id": "6ba7b810", "every": "soon"}),
        ),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    let causes: Vec<(String, String)> = v["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["field"].as_str().unwrap().to_string(),
                c["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for (field, message) in [
        (
            "spec.url",
            "Invalid value: \"not a uri\": spec.url in body must be of type uri: \"not a uri\"",
        ),
        (
            "spec.at",
            "Invalid value: \"yesterday\": spec.at in body must be of type date-time: \"yesterday\"",
        ),
        (
            "spec.ip",
            "Invalid value: \"10.0.0.300\": spec.ip in body must be of type ipv4: \"10.0.0.300\"",
        ),
        (
            "spec.id",
            "Invalid value: \"6ba7b810\": spec.id in body must be of type uuid: \"6ba7b810\"",
        ),
        (
            "spec.every",
            "Invalid value: \"soon\": spec.every in body must be of type duration: \"soon\"",
        ),
    ] {
        assert!(
            causes.contains(&(field.to_string(), message.to_string())),
            "{field}: {message} in {causes:?}"
        );
    }
    assert_eq!(causes.len(), 5, "{causes:?}");
    assert_eq!(count(&r, PROBES).await, 0);
    let (code, _, v) = raw(
        &r,
        "POST",
        PROBES,
        "application/json",
        &probe(
            "good",
            json!({
        "url": "https://example.com/health", "at": "2026-11-26T18:00:00Z", "ip": "10.0.0.1",
        "id": "6ba7b810-9dad-11d1-80b4-00c04fd430c8", "every": "1m30s",
        "count": 9_999_999_999_i64, "free": "anything"}),
        ),
    )
    .await;
    assert_eq!(code, 201, "{v}");
}

#[tokio::test]
async fn priority_classes_set_pod_priority_and_the_install_kinds_are_served() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let (_dir, _r, client) = setup();
    // The two system classes exist from the start, as kube-apiserver makes them.
    let classes: Api<PriorityClass> = Api::all(client.clone());
    let node = classes.get("system-node-critical").await.unwrap();
    assert_eq!(node.value, Some(2_000_001_000));
    assert_eq!(
        classes.get("system-cluster-critical").await.unwrap().value,
        Some(2_000_000_000)
    );
    // A pod naming one gets its value; one naming no class that exists is refused.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let mut p = pod("critical", json!({}));
    p.spec.as_mut().unwrap().priority_class_name = Some("system-node-critical".into());
    let made = pods.create(&PostParams::default(), &p).await.unwrap();
    assert_eq!(made.spec.unwrap().priority, Some(2_000_001_000));
    let mut p = pod("unknown", json!({}));
    p.spec.as_mut().unwrap().priority_class_name = Some("no-such-class".into());
    let e = api_error(pods.create(&PostParams::default(), &p).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "pods \"unknown\" is forbidden: no PriorityClass with name no-such-class was found"
    );
    // The system- prefix is reserved; user classes stay below the system ones.
    let reserved: PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "system-mine"}, "value": 5})).unwrap();
    let e = api_error(
        classes
            .create(&PostParams::default(), &reserved)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422, "{}", e.message);
    let high: PriorityClass =
        serde_json::from_value(json!({"metadata": {"name": "high"}, "value": 1_000_000_001}))
            .unwrap();
    let e = api_error(
        classes
            .create(&PostParams::default(), &high)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422, "{}", e.message);
    // A global default class gives its value to pods that name none.
    let default: PriorityClass = serde_json::from_value(
        json!({"metadata": {"name": "everyone"}, "value": 7, "globalDefault": true}),
    )
    .unwrap();
    classes
        .create(&PostParams::default(), &default)
        .await
        .unwrap();
    let made = pods
        .create(&PostParams::default(), &pod("plain", json!({})))
        .await
        .unwrap();
    let spec = made.spec.unwrap();
    assert_eq!(
        (spec.priority, spec.priority_class_name.as_deref()),
        (Some(7), Some("everyone"))
    );

    // PodDisruptionBudgets and the RBAC kinds are stored and served.
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "kube-system");
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "dns"},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"k8s-app": "kube-dns"}}},
    }))
    .unwrap();
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    let both: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "both"},
        "spec": {"maxUnavailable": 1, "minAvailable": 1},
    }))
    .unwrap();
    let e = api_error(
        pdbs.create(&PostParams::default(), &both)
            .await
            .unwrap_err(),
    );
    assert_eq!(e.code, 422, "{}", e.message);
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": "system:kubewire-test"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]}],
    }))
    .unwrap();
    roles.create(&PostParams::default(), &role).await.unwrap();
    let bindings: Api<ClusterRoleBinding> = Api::all(client);
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "system:kubewire-test"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubewire-test"},
        "subjects": [{"kind": "ServiceAccount", "name": "x", "namespace": "kube-system"}],
    }))
    .unwrap();
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    assert_eq!(
        roles
            .get("system:kubewire-test")
            .await
            .unwrap()
            .rules
            .unwrap()[0]
            .verbs,
        vec!["list", "watch"]
    );
}

/// NetworkPolicies are refused as kube-apiserver refuses them, with its messages; a
/// named port no pod has is valid.
#[tokio::test]
async fn network_policies_are_validated_as_kube_apiserver_validates_them() {
    let (_dir, r, _client) = setup();
    let nps = "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies";
    let post = |name: &str, spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name}, "spec": spec})
        .to_string()
    };
    let cases = [
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 0}]}]}),
            "spec.ingress[0].ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP"}]}]}),
            "spec.ingress[0].ports[0].protocol: Unsupported value: \"ICMP\": supported values: \"TCP\", \"UDP\", \"SCTP\"",
        ),
        (
            json!({"podSelector": {}, "egress": [{"ports": [{"port": 90, "endPort": 80}]}]}),
            "spec.egress[0].ports[0].endPort: Invalid value: 90: must be greater than or equal to `port`",
        ),
        (
            json!({"podSelector": {}, "egress": [{"ports": [{"port": "http", "endPort": 80}]}]}),
            "spec.egress[0].ports[0].endPort: Invalid value: 80: may not be specified when `port` is non-numeric",
        ),
        (
            json!({"podSelector": {}, "egress": [{"ports": [{"endPort": 80}]}]}),
            "spec.egress[0].ports[0].endPort: Invalid value: 80: may not be specified when `port` is not specified",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{}]}]}),
            "spec.ingress[0].from[0]: Required value: must specify a peer",
        ),
        (
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}, "ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
            "spec.ingress[0].from[0]: Forbidden: may not specify both ipBlock and another peer",
        ),
        (
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}),
            "spec.egress[0].to[0].ipBlock.cidr: Invalid value: \"10.0.0.0/33\": must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ),
        (
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]}),
            "spec.egress[0].to[0].ipBlock.except[0]: Invalid value: \"10.1.0.0/24\": must be a strict subset of `cidr`",
        ),
        (
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}),
            "spec.podSelector.matchExpressions[0].values: Required value: must be specified when `operator` is 'In' or 'NotIn'",
        ),
        (
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Sideways"]}),
            "spec.policyTypes[1]: Unsupported value: \"Sideways\": supported values: \"Ingress\", \"Egress\"",
        ),
    ];
    for (i, (spec, want)) in cases.into_iter().enumerate() {
        let name = format!("bad-{i}");
        let (code, _, v) = raw(&r, "POST", nps, "application/json", &post(&name, spec)).await;
        assert_eq!((code, v["reason"].as_str()), (422, Some("Invalid")), "{v}");
        assert_eq!(
            v["message"],
            format!("NetworkPolicy.networking.k8s.io \"{name}\" is invalid: {want}"),
            "{v}"
        );
    }
    let named = json!({"podSelector": {}, "ingress": [{"ports": [{"port": "no-such-port"}]}]});
    let (code, _, v) = raw(&r, "POST", nps, "application/json", &post("named", named)).await;
    assert_eq!(code, 201, "{v}");
}
