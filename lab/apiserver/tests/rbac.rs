//! Tier 2: authorization through the router as an in-process tower service, requests
//! made as users other than the admin (`Router::as_user`): RBAC per verb, resource,
//! subresource, name, non-resource URL and namespace; ClusterRole aggregation;
//! escalation prevention; the Node authorizer and NodeRestriction; the access reviews;
//! impersonation. Each test has its own temporary data dir.

use std::time::Duration;

use apiserver::{Config, Router, router};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

fn setup() -> (tempfile::TempDir, Router) {
    let dir = tempfile::tempdir().unwrap();
    let r = router(&Config::new(dir.path())).unwrap();
    (dir, r)
}

/// A request through `r` with extra headers: (status, body as JSON).
async fn request(
    r: &Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    ct: &str,
    body: Value,
) -> (u16, Value) {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let req = b
        .header("content-type", ct)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = r.handle(req).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn call(r: &Router, method: &str, uri: &str, body: Value) -> (u16, Value) {
    request(r, method, uri, &[], "application/json", body).await
}

/// Creates `obj` at `uri` as `r` (the admin's router, unless said otherwise).
async fn create(r: &Router, uri: &str, obj: Value) {
    let (code, v) = call(r, "POST", uri, obj).await;
    assert_eq!(code, 201, "POST {uri}: {v}");
}

/// The refusal's message, after checking it is kube-apiserver's 403.
fn forbidden((code, v): (u16, Value)) -> String {
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["reason"], "Forbidden", "{v}");
    v["message"].as_str().unwrap().to_string()
}

const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

fn role(name: &str, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name}, "rules": rules})
}

fn cluster_role(name: &str, labels: Value, rules: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": labels}, "rules": rules})
}

/// A binding (`RoleBinding` or `ClusterRoleBinding`) of `role_kind`/`role` to `subjects`.
fn binding(kind: &str, name: &str, role_kind: &str, role: &str, subjects: Value) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": subjects})
}

fn user(name: &str) -> Value {
    json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}])
}

async fn namespace(r: &Router, name: &str) {
    create(r, "/api/v1/namespaces", json!({"metadata": {"name": name}})).await;
}

/// Waits up to 10 s for `f` to hold.
async fn eventually<F, Fut>(mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn default_roles_and_bindings_are_bootstrapped() {
    let (_dir, r) = setup();
    for name in [
        "cluster-admin",
        "admin",
        "edit",
        "view",
        "system:basic-user",
        "system:discovery",
        "system:public-info-viewer",
        "system:node",
        "system:node-proxier",
        "system:kube-controller-manager",
        "system:kube-scheduler",
        "system:kube-dns",
        "system:controller:endpointslice-controller",
    ] {
        let (code, v) = call(
            &r,
            "GET",
            &format!("{RBAC}/clusterroles/{name}"),
            Value::Null,
        )
        .await;
        assert_eq!(code, 200, "{name}: {v}");
        assert_eq!(
            v["metadata"]["labels"]["kubernetes.io/bootstrapping"],
            "rbac-defaults"
        );
        assert_eq!(
            v["metadata"]["annotations"]["rbac.authorization.kubernetes.io/autoupdate"],
            "true"
        );
    }
    let (_, crb) = call(
        &r,
        "GET",
        &format!("{RBAC}/clusterrolebindings/cluster-admin"),
        Value::Null,
    )
    .await;
    assert_eq!(crb["subjects"][0]["name"], "system:masters");
    // No one holds `system:node` through RBAC: the Node authorizer decides for nodes.
    let (_, node) = call(
        &r,
        "GET",
        &format!("{RBAC}/clusterrolebindings/system:node"),
        Value::Null,
    )
    .await;
    assert!(node["subjects"].is_null(), "{node}");
    // admin, edit and view are aggregated: view's rules are in edit, edit's in admin.
    let rules = |v: &Value| v["rules"].as_array().cloned().unwrap_or_default();
    let (_, view) = call(&r, "GET", &format!("{RBAC}/clusterroles/view"), Value::Null).await;
    let (_, edit) = call(&r, "GET", &format!("{RBAC}/clusterroles/edit"), Value::Null).await;
    let (_, admin) = call(
        &r,
        "GET",
        &format!("{RBAC}/clusterroles/admin"),
        Value::Null,
    )
    .await;
    assert!(!rules(&view).is_empty());
    assert!(rules(&view).iter().all(|x| rules(&edit).contains(x)));
    assert!(rules(&edit).iter().all(|x| rules(&admin).contains(x)));
    assert!(rules(&admin).len() > rules(&edit).len() && rules(&edit).len() > rules(&view).len());
    // Discovery lists the RBAC types and the reviews (create only).
    let (_, d) = call(&r, "GET", "/apis/authorization.k8s.io/v1", Value::Null).await;
    let ssar = d["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "selfsubjectaccessreviews")
        .unwrap();
    assert_eq!(ssar["verbs"], json!(["create"]));
}

#[tokio::test]
async fn rbac_per_verb_resource_subresource_name_and_namespace() {
    let (_dir, admin) = setup();
    namespace(&admin, "team").await;
    namespace(&admin, "other").await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/roles"),
        role(
            "pod-reader",
            json!([
                {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
                {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "list", "update"]},
            ]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "alice-reads",
            "Role",
            "pod-reader",
            user("alice"),
        ),
    )
    .await;
    for ns in ["team", "other"] {
        create(
            &admin,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            json!({"metadata": {"name": "settings"}}),
        )
        .await;
        create(
            &admin,
            &format!("/api/v1/namespaces/{ns}/configmaps"),
            json!({"metadata": {"name": "secret-ish"}}),
        )
        .await;
    }
    let alice = admin.as_user("alice", &["system:authenticated"]);
    // Allowed: the verbs the role names, on its resources, in its namespace.
    assert_eq!(
        call(&alice, "GET", "/api/v1/namespaces/team/pods", Value::Null)
            .await
            .0,
        200
    );
    assert_eq!(
        call(
            &alice,
            "GET",
            "/api/v1/namespaces/team/pods?watch=1&timeoutSeconds=1",
            Value::Null
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &alice,
            "GET",
            "/api/v1/namespaces/team/configmaps/settings",
            Value::Null
        )
        .await
        .0,
        200
    );
    // Denied: another verb, resource, subresource, name or namespace, or all namespaces.
    assert_eq!(
        forbidden(call(&alice, "GET", "/api/v1/namespaces/other/pods", Value::Null).await),
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "other""#
    );
    assert_eq!(
        forbidden(call(&alice, "GET", "/api/v1/pods", Value::Null).await),
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" at the cluster scope"#
    );
    assert_eq!(
        forbidden(
            call(
                &alice,
                "POST",
                "/api/v1/namespaces/team/pods",
                json!({"metadata": {"name": "x"}})
            )
            .await
        ),
        r#"pods is forbidden: User "alice" cannot create resource "pods" in API group "" in the namespace "team""#
    );
    assert_eq!(
        forbidden(
            call(
                &alice,
                "DELETE",
                "/api/v1/namespaces/team/pods/web",
                Value::Null
            )
            .await
        ),
        r#"pods "web" is forbidden: User "alice" cannot delete resource "pods" in API group "" in the namespace "team""#
    );
    assert_eq!(
        forbidden(
            call(
                &alice,
                "DELETE",
                "/api/v1/namespaces/team/pods",
                Value::Null
            )
            .await
        ),
        r#"pods is forbidden: User "alice" cannot deletecollection resource "pods" in API group "" in the namespace "team""#
    );
    assert_eq!(
        forbidden(
            call(
                &alice,
                "GET",
                "/api/v1/namespaces/team/pods/web/status",
                Value::Null
            )
            .await
        ),
        r#"pods "web" is forbidden: User "alice" cannot get resource "pods/status" in API group "" in the namespace "team""#
    );
    assert_eq!(
        forbidden(
            call(
                &alice,
                "GET",
                "/api/v1/namespaces/team/configmaps/secret-ish",
                Value::Null
            )
            .await
        ),
        r#"configmaps "secret-ish" is forbidden: User "alice" cannot get resource "configmaps" in API group "" in the namespace "team""#
    );
    // A list has no name: a rule limited to names does not allow it, unless the list
    // selects the one name.
    forbidden(
        call(
            &alice,
            "GET",
            "/api/v1/namespaces/team/configmaps",
            Value::Null,
        )
        .await,
    );
    let (code, v) = call(
        &alice,
        "GET",
        "/api/v1/namespaces/team/configmaps?fieldSelector=metadata.name%3Dsettings",
        Value::Null,
    )
    .await;
    assert_eq!(
        (code, v["items"].as_array().map(Vec::len)),
        (200, Some(1)),
        "{v}"
    );
    forbidden(
        call(
            &alice,
            "GET",
            "/api/v1/namespaces/other/configmaps/settings",
            Value::Null,
        )
        .await,
    );
    assert_eq!(
        forbidden(
            call(
                &alice,
                "GET",
                "/apis/apps/v1/namespaces/team/deployments",
                Value::Null
            )
            .await
        ),
        r#"deployments.apps is forbidden: User "alice" cannot list resource "deployments" in API group "apps" in the namespace "team""#
    );
    // A denied write stores nothing (the update of an allowed name is allowed).
    let (code, _) = call(
        &alice,
        "PUT",
        "/api/v1/namespaces/team/configmaps/settings",
        json!({"metadata": {"name": "settings"}, "data": {"a": "b"}}),
    )
    .await;
    assert_eq!(code, 200);

    // `*` and a ClusterRole bound in one namespace: everything in `apps` in `other`.
    create(
        &admin,
        &format!("{RBAC}/clusterroles"),
        cluster_role(
            "apps-all",
            json!({}),
            json!([{"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/other/rolebindings"),
        binding(
            "RoleBinding",
            "alice-apps",
            "ClusterRole",
            "apps-all",
            user("alice"),
        ),
    )
    .await;
    assert_eq!(
        call(
            &alice,
            "GET",
            "/apis/apps/v1/namespaces/other/deployments",
            Value::Null
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &alice,
            "GET",
            "/apis/apps/v1/namespaces/other/deployments/x/scale",
            Value::Null
        )
        .await
        .0,
        404
    );
    forbidden(
        call(
            &alice,
            "GET",
            "/apis/apps/v1/namespaces/team/deployments",
            Value::Null,
        )
        .await,
    );
    forbidden(call(&alice, "GET", "/api/v1/namespaces/other/pods", Value::Null).await);
    // Bound cluster-wide, a ClusterRole reaches every namespace and the cluster scope.
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "alice-apps",
            "ClusterRole",
            "apps-all",
            user("alice"),
        ),
    )
    .await;
    assert_eq!(
        call(&alice, "GET", "/apis/apps/v1/deployments", Value::Null)
            .await
            .0,
        200
    );
    // Deleting the binding takes the right away.
    assert_eq!(
        call(
            &admin,
            "DELETE",
            &format!("{RBAC}/clusterrolebindings/alice-apps"),
            Value::Null
        )
        .await
        .0,
        200
    );
    forbidden(call(&alice, "GET", "/apis/apps/v1/deployments", Value::Null).await);

    // A group and a ServiceAccount as subjects.
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "devs",
            "ClusterRole",
            "view",
            json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "devs"},
               {"kind": "ServiceAccount", "name": "ci"}]),
        ),
    )
    .await;
    let dev = admin.as_user("bob", &["devs", "system:authenticated"]);
    assert_eq!(
        call(&dev, "GET", "/api/v1/namespaces/team/services", Value::Null)
            .await
            .0,
        200
    );
    let ci = admin.as_user(
        "system:serviceaccount:team:ci",
        &[
            "system:serviceaccounts",
            "system:serviceaccounts:team",
            "system:authenticated",
        ],
    );
    assert_eq!(
        call(&ci, "GET", "/api/v1/namespaces/team/services", Value::Null)
            .await
            .0,
        200
    );
    let other_ci = admin.as_user(
        "system:serviceaccount:other:ci",
        &["system:serviceaccounts", "system:authenticated"],
    );
    forbidden(
        call(
            &other_ci,
            "GET",
            "/api/v1/namespaces/team/services",
            Value::Null,
        )
        .await,
    );
    // view reads, but not Secrets, and writes nothing.
    forbidden(call(&dev, "GET", "/api/v1/namespaces/team/secrets", Value::Null).await);
    forbidden(
        call(
            &dev,
            "POST",
            "/api/v1/namespaces/team/services",
            json!({"metadata": {"name": "s"}}),
        )
        .await,
    );
}

#[tokio::test]
async fn non_resource_urls_and_discovery() {
    let (_dir, admin) = setup();
    // Every authenticated user may discover the API (system:discovery).
    let someone = admin.as_user("someone", &["system:authenticated"]);
    for path in [
        "/api",
        "/apis",
        "/api/v1",
        "/apis/apps/v1",
        "/version",
        "/healthz",
        "/openapi/v3",
    ] {
        assert_eq!(
            call(&someone, "GET", path, Value::Null).await.0,
            200,
            "{path}"
        );
    }
    // Without a group nothing is granted.
    let nobody = admin.as_user("nobody", &[]);
    assert_eq!(
        forbidden(call(&nobody, "GET", "/api", Value::Null).await),
        r#"forbidden: User "nobody" cannot get path "/api""#
    );
    create(
        &admin,
        &format!("{RBAC}/clusterroles"),
        cluster_role(
            "api-reader",
            json!({}),
            json!([{"nonResourceURLs": ["/api", "/api/*"], "verbs": ["get"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "nobody-api",
            "ClusterRole",
            "api-reader",
            user("nobody"),
        ),
    )
    .await;
    assert_eq!(call(&nobody, "GET", "/api", Value::Null).await.0, 200);
    assert_eq!(call(&nobody, "GET", "/api/v1", Value::Null).await.0, 200);
    forbidden(call(&nobody, "GET", "/apis", Value::Null).await);
    // A Role cannot name non-resource URLs (422, kube-apiserver's words).
    let (code, v) = call(
        &admin,
        "POST",
        &format!("{RBAC}/namespaces/default/roles"),
        role(
            "paths",
            json!([{"nonResourceURLs": ["/api"], "verbs": ["get"]}]),
        ),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        r#"Role.rbac.authorization.k8s.io "paths" is invalid: rules[0].nonResourceURLs: Invalid value: []string{"/api"}: namespaced rules cannot apply to non-resource URLs"#
    );
}

#[tokio::test]
async fn bindings_to_missing_roles_and_fixed_role_refs() {
    let (_dir, admin) = setup();
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "dangling",
            "ClusterRole",
            "not-yet",
            user("carol"),
        ),
    )
    .await;
    let carol = admin.as_user("carol", &[]);
    // The missing role is the reason RBAC gives.
    assert_eq!(
        forbidden(call(&carol, "GET", "/api/v1/pods", Value::Null).await),
        r#"pods is forbidden: User "carol" cannot list resource "pods" in API group "" at the cluster scope: RBAC: clusterrole.rbac.authorization.k8s.io "not-yet" not found"#
    );
    create(
        &admin,
        &format!("{RBAC}/clusterroles"),
        cluster_role(
            "not-yet",
            json!({}),
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]),
        ),
    )
    .await;
    assert_eq!(
        call(&carol, "GET", "/api/v1/pods", Value::Null).await.0,
        200
    );
    // roleRef cannot change.
    let (code, v) = call(
        &admin,
        "PATCH",
        &format!("{RBAC}/clusterrolebindings/dangling"),
        json!({"roleRef": {"name": "view"}}),
    )
    .await;
    assert_eq!(code, 415, "{v}"); // (a JSON body needs a patch content type)
    let (code, v) = request(
        &admin,
        "PATCH",
        &format!("{RBAC}/clusterrolebindings/dangling"),
        &[],
        "application/merge-patch+json",
        json!({"roleRef": {"name": "view"}}),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    assert_eq!(
        v["message"],
        r#"ClusterRoleBinding.rbac.authorization.k8s.io "dangling" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"ClusterRole", Name:"view"}: cannot change roleRef"#
    );
}

#[tokio::test]
async fn cluster_roles_aggregate_by_label() {
    let (_dir, admin) = setup();
    create(&admin, &format!("{RBAC}/clusterroles"), json!({
        "metadata": {"name": "monitoring"},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"example.com/aggregate-to-monitoring": "true"}}]},
    })).await;
    let rules = |admin: Router, name: &'static str| async move {
        let (_, v) = call(
            &admin,
            "GET",
            &format!("{RBAC}/clusterroles/{name}"),
            Value::Null,
        )
        .await;
        v["rules"].as_array().cloned().unwrap_or_default()
    };
    create(
        &admin,
        &format!("{RBAC}/clusterroles"),
        cluster_role(
            "monitoring-pods",
            json!({"example.com/aggregate-to-monitoring": "true"}),
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/clusterroles"),
        cluster_role(
            "monitoring-svc",
            json!({"example.com/aggregate-to-monitoring": "true"}),
            json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]),
        ),
    )
    .await;
    let want = json!([
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
    ]);
    assert!(
        eventually(|| {
            let a = admin.clone();
            let w = want.clone();
            async move { Value::Array(rules(a, "monitoring").await) == w }
        })
        .await,
        "{:?}",
        rules(admin.clone(), "monitoring").await
    );
    // The aggregated role grants what it gathered.
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "dave-monitors",
            "ClusterRole",
            "monitoring",
            user("dave"),
        ),
    )
    .await;
    let dave = admin.as_user("dave", &[]);
    assert_eq!(
        call(&dave, "GET", "/api/v1/services", Value::Null).await.0,
        200
    );
    // A changed source, or one that leaves the selector, changes the aggregate.
    let (code, _) = request(
        &admin,
        "PATCH",
        &format!("{RBAC}/clusterroles/monitoring-svc"),
        &[],
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"example.com/aggregate-to-monitoring": null}}}),
    )
    .await;
    assert_eq!(code, 200);
    let want = json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]);
    assert!(
        eventually(|| {
            let a = admin.clone();
            let w = want.clone();
            async move { Value::Array(rules(a, "monitoring").await) == w }
        })
        .await
    );
    assert!(
        eventually(|| {
            let d = dave.clone();
            async move { call(&d, "GET", "/api/v1/services", Value::Null).await.0 == 403 }
        })
        .await
    );
    // The default aggregation: a role labelled aggregate-to-view reaches view, edit, admin.
    create(&admin, &format!("{RBAC}/clusterroles"), cluster_role("widgets-view",
        json!({"rbac.authorization.k8s.io/aggregate-to-view": "true"}),
        json!([{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list", "watch"]}]))).await;
    for name in ["view", "edit", "admin"] {
        assert!(
            eventually(|| {
                let a = admin.clone();
                async move {
                    rules(a, name)
                        .await
                        .iter()
                        .any(|r| r["resources"] == json!(["widgets"]))
                }
            })
            .await,
            "{name} did not get the widgets rule"
        );
    }
    // Deleting the source takes its rules out.
    assert_eq!(
        call(
            &admin,
            "DELETE",
            &format!("{RBAC}/clusterroles/widgets-view"),
            Value::Null
        )
        .await
        .0,
        200
    );
    assert!(
        eventually(|| {
            let a = admin.clone();
            async move {
                !rules(a, "admin")
                    .await
                    .iter()
                    .any(|r| r["resources"] == json!(["widgets"]))
            }
        })
        .await
    );
}

#[tokio::test]
async fn no_one_grants_more_than_they_hold() {
    let (_dir, admin) = setup();
    namespace(&admin, "team").await;
    // Alice administers `team` (the `admin` ClusterRole in a RoleBinding).
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "alice-admin",
            "ClusterRole",
            "admin",
            user("alice"),
        ),
    )
    .await;
    let alice = admin.as_user("alice", &["system:authenticated"]);
    // What she holds she may grant.
    create(
        &alice,
        &format!("{RBAC}/namespaces/team/roles"),
        role(
            "pods",
            json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]}]),
        ),
    )
    .await;
    create(
        &alice,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding("RoleBinding", "bob-pods", "Role", "pods", user("bob")),
    )
    .await;
    create(
        &alice,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "bob-edit",
            "ClusterRole",
            "edit",
            user("bob"),
        ),
    )
    .await;
    // What she does not hold she may not.
    assert_eq!(
        forbidden(call(&alice, "POST", &format!("{RBAC}/namespaces/team/roles"), role("nodes",
            json!([{"apiGroups": [""], "resources": ["nodes", "pods"], "verbs": ["get", "list"]}]))).await),
        "roles.rbac.authorization.k8s.io \"nodes\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\" \"list\"]}"
    );
    let msg = forbidden(
        call(
            &alice,
            "POST",
            &format!("{RBAC}/namespaces/team/rolebindings"),
            binding(
                "RoleBinding",
                "bob-root",
                "ClusterRole",
                "cluster-admin",
                user("bob"),
            ),
        )
        .await,
    );
    assert!(
        msg.starts_with("rolebindings.rbac.authorization.k8s.io \"bob-root\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"),
        "{msg}"
    );
    // Nor may she widen a role she made, through update or patch.
    let (code, v) = request(
        &alice,
        "PATCH",
        &format!("{RBAC}/namespaces/team/roles/pods"),
        &[],
        "application/merge-patch+json",
        json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
    )
    .await;
    assert_eq!(code, 403, "{v}");
    // Changing only a label of it is fine.
    let (code, v) = request(
        &alice,
        "PATCH",
        &format!("{RBAC}/namespaces/team/roles/pods"),
        &[],
        "application/merge-patch+json",
        json!({"metadata": {"labels": {"a": "b"}}}),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    // Nothing was stored by the refusals.
    assert_eq!(
        call(
            &admin,
            "GET",
            &format!("{RBAC}/namespaces/team/rolebindings/bob-root"),
            Value::Null
        )
        .await
        .0,
        404
    );
    // `bind` on one ClusterRole lets her bind it; `escalate` lets her write any rules.
    create(&admin, &format!("{RBAC}/clusterroles"), cluster_role("binder", json!({}), json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "resourceNames": ["cluster-admin"], "verbs": ["bind"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]},
    ]))).await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "alice-binder",
            "ClusterRole",
            "binder",
            user("alice"),
        ),
    )
    .await;
    create(
        &alice,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "bob-root",
            "ClusterRole",
            "cluster-admin",
            user("bob"),
        ),
    )
    .await;
    create(
        &alice,
        &format!("{RBAC}/namespaces/team/roles"),
        role(
            "nodes",
            json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]),
        ),
    )
    .await;
    // A ClusterRole with an aggregationRule needs every right (here: the right to
    // create ClusterRoles is not enough).
    create(&admin, &format!("{RBAC}/clusterroles"), cluster_role("role-maker", json!({}), json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["create"]},
    ]))).await;
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "alice-role-maker",
            "ClusterRole",
            "role-maker",
            user("alice"),
        ),
    )
    .await;
    assert_eq!(
        forbidden(
            call(
                &alice,
                "POST",
                &format!("{RBAC}/clusterroles"),
                json!({"metadata": {"name": "gatherer"},
            "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}})
            )
            .await
        ),
        r#"clusterroles.rbac.authorization.k8s.io "gatherer" is forbidden: must have cluster-admin privileges to use the aggregationRule"#
    );
    // A binding to a role that does not exist is 404 for her (she cannot bind it).
    let (code, v) = call(
        &alice,
        "POST",
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding("RoleBinding", "x", "Role", "nothing", user("bob")),
    )
    .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (
            404,
            Some(r#"roles.rbac.authorization.k8s.io "nothing" not found"#)
        )
    );
}

#[tokio::test]
async fn an_apply_that_creates_needs_create() {
    let (_dir, admin) = setup();
    create(
        &admin,
        &format!("{RBAC}/clusterroles"),
        cluster_role(
            "patcher",
            json!({}),
            json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["patch", "get"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "erin-patches",
            "ClusterRole",
            "patcher",
            user("erin"),
        ),
    )
    .await;
    let erin = admin.as_user("erin", &[]);
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let uri = "/api/v1/namespaces/default/configmaps/c?fieldManager=erin";
    assert_eq!(
        forbidden(
            request(
                &erin,
                "PATCH",
                uri,
                &[],
                "application/apply-patch+yaml",
                cm.clone()
            )
            .await
        ),
        r#"configmaps "c" is forbidden: User "erin" cannot create resource "configmaps" in API group "" in the namespace "default""#
    );
    create(&admin, "/api/v1/namespaces/default/configmaps", cm.clone()).await;
    let (code, v) = request(&erin, "PATCH", uri, &[], "application/apply-patch+yaml", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "2"}})).await;
    assert_eq!(code, 200, "{v}");
}

/// A node's credentials, and a pod bound to it referencing a Secret and a ConfigMap.
async fn node_world(admin: &Router) -> Router {
    for (kind, name) in [
        ("secrets", "mine"),
        ("secrets", "theirs"),
        ("configmaps", "mine"),
        ("configmaps", "theirs"),
    ] {
        create(
            admin,
            &format!("/api/v1/namespaces/default/{kind}"),
            json!({"metadata": {"name": name}}),
        )
        .await;
    }
    create(
        admin,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "web"}}),
    )
    .await;
    for (pod, node, secret, cm) in [
        ("web", "node-1", "mine", "mine"),
        ("other", "node-2", "theirs", "theirs"),
    ] {
        create(admin, "/api/v1/namespaces/default/pods", json!({
            "metadata": {"name": pod, "labels": {"app": pod}},
            "spec": {
                "nodeName": node,
                "serviceAccountName": if pod == "web" { "web" } else { "default" },
                "containers": [{"name": "c", "image": "nginx",
                    "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": secret, "key": "k"}}}]}],
                "volumes": [{"name": "v", "configMap": {"name": cm}}],
            },
        })).await;
    }
    admin.as_user(
        "system:node:node-1",
        &["system:nodes", "system:authenticated"],
    )
}

#[tokio::test]
async fn the_node_authorizer_reads_what_a_nodes_pods_need() {
    let (_dir, admin) = setup();
    let node = node_world(&admin).await;
    assert_eq!(
        call(
            &node,
            "GET",
            "/api/v1/namespaces/default/secrets/mine",
            Value::Null
        )
        .await
        .0,
        200
    );
    assert_eq!(
        call(
            &node,
            "GET",
            "/api/v1/namespaces/default/configmaps/mine",
            Value::Null
        )
        .await
        .0,
        200
    );
    assert_eq!(
        forbidden(
            call(
                &node,
                "GET",
                "/api/v1/namespaces/default/secrets/theirs",
                Value::Null
            )
            .await
        ),
        r#"secrets "theirs" is forbidden: User "system:node:node-1" cannot get resource "secrets" in API group "" in the namespace "default": no relationship found between node 'node-1' and this object"#
    );
    forbidden(
        call(
            &node,
            "GET",
            "/api/v1/namespaces/default/configmaps/theirs",
            Value::Null,
        )
        .await,
    );
    assert_eq!(
        forbidden(
            call(
                &node,
                "GET",
                "/api/v1/namespaces/default/secrets",
                Value::Null
            )
            .await
        ),
        r#"secrets is forbidden: User "system:node:node-1" cannot list resource "secrets" in API group "" in the namespace "default": No Object name found"#
    );
    // A watch of the one Secret it may read (as kubelets watch them).
    assert_eq!(call(&node, "GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3Dmine&watch=1&timeoutSeconds=1", Value::Null).await.0, 200);
    // Its own pods by field selector, not everyone's.
    assert_eq!(
        call(
            &node,
            "GET",
            "/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1",
            Value::Null
        )
        .await
        .0,
        200
    );
    assert_eq!(
        forbidden(call(&node, "GET", "/api/v1/pods", Value::Null).await),
        r#"pods is forbidden: User "system:node:node-1" cannot list resource "pods" in API group "" at the cluster scope: can only list/watch pods with spec.nodeName field selector"#
    );
    assert_eq!(
        call(
            &node,
            "GET",
            "/api/v1/namespaces/default/pods/web",
            Value::Null
        )
        .await
        .0,
        200
    );
    forbidden(
        call(
            &node,
            "GET",
            "/api/v1/namespaces/default/pods/other",
            Value::Null,
        )
        .await,
    );
    // Services it may read (for the pods' environment); EndpointSlices and Deployments not.
    assert_eq!(
        call(&node, "GET", "/api/v1/services", Value::Null).await.0,
        200
    );
    forbidden(
        call(
            &node,
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices",
            Value::Null,
        )
        .await,
    );
    forbidden(call(&node, "GET", "/apis/apps/v1/deployments", Value::Null).await);
    // Once the pod is gone, so is what it gave.
    assert_eq!(
        call(
            &admin,
            "DELETE",
            "/api/v1/namespaces/default/pods/web?gracePeriodSeconds=0",
            Value::Null
        )
        .await
        .0,
        200
    );
    forbidden(
        call(
            &node,
            "GET",
            "/api/v1/namespaces/default/secrets/mine",
            Value::Null,
        )
        .await,
    );
}

#[tokio::test]
async fn node_restriction_keeps_a_node_to_its_own_objects() {
    let (_dir, admin) = setup();
    let node = node_world(&admin).await;
    // Its own Node: create, read, status.
    let n = |name: &str| json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}});
    create(&node, "/api/v1/nodes", n("node-1")).await;
    create(&admin, "/api/v1/nodes", n("node-2")).await;
    assert_eq!(
        call(&node, "GET", "/api/v1/nodes/node-1", Value::Null)
            .await
            .0,
        200
    );
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let patch = |r: &Router, uri: &str, body: Value| {
        let (r, uri) = (r.clone(), uri.to_string());
        async move { request(&r, "PATCH", &uri, &[], "application/merge-patch+json", body).await }
    };
    assert_eq!(
        patch(&node, "/api/v1/nodes/node-1/status", status.clone())
            .await
            .0,
        200
    );
    // Not another node's.
    assert_eq!(
        forbidden(patch(&node, "/api/v1/nodes/node-2/status", status.clone()).await),
        r#"nodes "node-2" is forbidden: node "node-1" is not allowed to modify node "node-2""#
    );
    assert_eq!(
        forbidden(call(&node, "GET", "/api/v1/nodes/node-2", Value::Null).await),
        r#"nodes "node-2" is forbidden: User "system:node:node-1" cannot get resource "nodes" in API group "" at the cluster scope: node 'node-1' cannot read 'node-2', only its own Node object"#
    );
    forbidden(call(&node, "DELETE", "/api/v1/nodes/node-2", Value::Null).await);
    // Nor its own taints or restricted labels.
    assert_eq!(
        forbidden(
            patch(
                &node,
                "/api/v1/nodes/node-1",
                json!({"spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}})
            )
            .await
        ),
        r#"nodes "node-1" is forbidden: node "node-1" is not allowed to modify taints"#
    );
    assert_eq!(
        forbidden(
            patch(
                &node,
                "/api/v1/nodes/node-1",
                json!({"metadata": {"labels": {"node-restriction.kubernetes.io/pool": "gold"}}})
            )
            .await
        ),
        r#"nodes "node-1" is forbidden: is not allowed to modify labels: node-restriction.kubernetes.io/pool"#
    );
    assert_eq!(
        patch(
            &node,
            "/api/v1/nodes/node-1",
            json!({"metadata": {"labels": {"example.com/rack": "r1"}}})
        )
        .await
        .0,
        200
    );
    // Pod status: its pods only.
    let pod_status = json!({"status": {"phase": "Running"}});
    assert_eq!(
        patch(
            &node,
            "/api/v1/namespaces/default/pods/web/status",
            pod_status.clone()
        )
        .await
        .0,
        200
    );
    assert_eq!(
        forbidden(
            patch(
                &node,
                "/api/v1/namespaces/default/pods/other/status",
                pod_status
            )
            .await
        ),
        r#"pods "other" is forbidden: node "node-1" can only update pod status for pods with spec.nodeName set to itself"#
    );
    // No pod writes beyond status.
    forbidden(
        patch(
            &node,
            "/api/v1/namespaces/default/pods/web",
            json!({"metadata": {"labels": {"x": "y"}}}),
        )
        .await,
    );
    assert_eq!(
        forbidden(call(&node, "POST", "/api/v1/namespaces/default/pods", json!({"metadata": {"name": "p"}, "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]}})).await),
        r#"pods "p" is forbidden: pod does not have "kubernetes.io/config.mirror" annotation, node "node-1" can only create mirror pods"#
    );
    // Tokens: for its pods' ServiceAccounts, bound to those pods.
    let (_, web) = call(
        &admin,
        "GET",
        "/api/v1/namespaces/default/pods/web",
        Value::Null,
    )
    .await;
    let (_, other) = call(
        &admin,
        "GET",
        "/api/v1/namespaces/default/pods/other",
        Value::Null,
    )
    .await;
    let token = |pod: &str, uid: &Value| {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}})
    };
    let (code, v) = call(
        &node,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/web/token",
        token("web", &web["metadata"]["uid"]),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        forbidden(
            call(
                &node,
                "POST",
                "/api/v1/namespaces/default/serviceaccounts/default/token",
                token("other", &other["metadata"]["uid"])
            )
            .await
        ),
        r#"serviceaccounts "default" is forbidden: User "system:node:node-1" cannot create resource "serviceaccounts/token" in API group "" in the namespace "default": no relationship found between node 'node-1' and this object"#
    );
    assert_eq!(
        forbidden(
            call(
                &node,
                "POST",
                "/api/v1/namespaces/default/serviceaccounts/web/token",
                token("other", &other["metadata"]["uid"])
            )
            .await
        ),
        r#"serviceaccounts "web" is forbidden: node requested token bound to a pod scheduled on a different node"#
    );
    // Its Lease (made by server-side apply), not another's.
    let lease = |name: &str| json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": name}, "spec": {"holderIdentity": name}});
    let apply = |name: &str| {
        let (node, body) = (node.clone(), lease(name));
        let uri = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}?fieldManager=kubelet&force=true"
        );
        async move {
            request(
                &node,
                "PATCH",
                &uri,
                &[],
                "application/apply-patch+yaml",
                body,
            )
            .await
        }
    };
    assert_eq!(apply("node-1").await.0, 201);
    assert_eq!(
        forbidden(apply("node-2").await),
        r#"leases.coordination.k8s.io "node-2" is forbidden: User "system:node:node-1" cannot patch resource "leases" in API group "coordination.k8s.io" in the namespace "kube-node-lease": can only access node lease with the same name as the requesting node"#
    );
    // Deleting a pod: its own, not another node's.
    assert_eq!(
        forbidden(
            call(
                &node,
                "DELETE",
                "/api/v1/namespaces/default/pods/other",
                Value::Null
            )
            .await
        ),
        r#"pods "other" is forbidden: node "node-1" can only delete pods with spec.nodeName set to itself"#
    );
    assert_eq!(
        call(
            &node,
            "DELETE",
            "/api/v1/namespaces/default/pods/web",
            Value::Null
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn access_reviews_answer_who_may_do_what() {
    let (_dir, admin) = setup();
    namespace(&admin, "team").await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "alice-view",
            "ClusterRole",
            "view",
            user("alice"),
        ),
    )
    .await;
    let sar = |verb: &str, resource: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "groups": ["system:authenticated"], "resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}}})
    };
    let (code, v) = call(
        &admin,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        sar("list", "pods", "team"),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["status"],
        json!({"allowed": true, "reason": "RBAC: allowed by RoleBinding \"alice-view/team\" of ClusterRole \"view\" to User \"alice\""})
    );
    let (_, v) = call(
        &admin,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        sar("list", "pods", "other"),
    )
    .await;
    assert_eq!(v["status"], json!({"allowed": false}));
    // Alice may not ask about others, only about herself.
    let alice = admin.as_user("alice", &["system:authenticated"]);
    forbidden(
        call(
            &alice,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            sar("list", "pods", "team"),
        )
        .await,
    );
    let ssar = |verb: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "resource": "deployments", "group": "apps", "namespace": ns}}})
    };
    let (code, v) = call(
        &alice,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        ssar("watch", "team"),
    )
    .await;
    assert_eq!((code, &v["status"]["allowed"]), (201, &json!(true)), "{v}");
    let (_, v) = call(
        &alice,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        ssar("delete", "team"),
    )
    .await;
    assert_eq!(v["status"]["allowed"], false);
    // A non-resource question.
    let (_, v) = call(
        &alice,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        json!({"spec": {"nonResourceAttributes": {"verb": "get", "path": "/apis"}}}),
    )
    .await;
    assert_eq!(v["status"]["allowed"], true);
    // What she may do in `team`.
    let (code, v) = call(
        &alice,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"spec": {"namespace": "team"}}),
    )
    .await;
    assert_eq!(code, 201, "{v}");
    let rules = v["status"]["resourceRules"].as_array().unwrap();
    assert!(
        rules.iter().any(
            |r| r["resources"].as_array().unwrap().contains(&json!("pods"))
                && r["verbs"] == json!(["get", "list", "watch"])
        ),
        "{v}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r["resources"]
                == json!(["selfsubjectaccessreviews", "selfsubjectrulesreviews"])),
        "{v}"
    );
    assert_eq!(v["status"]["incomplete"], false);
    let (_, v) = call(
        &alice,
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        json!({"spec": {"namespace": "other"}}),
    )
    .await;
    assert!(
        !v["status"]["resourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["resources"].as_array().unwrap().contains(&json!("pods")))
    );
    // A local review inside a namespace (admin's `admin` role may ask there).
    let (code, v) = call(&admin, "POST", "/apis/authorization.k8s.io/v1/namespaces/team/localsubjectaccessreviews",
        json!({"spec": {"user": "alice", "resourceAttributes": {"verb": "get", "resource": "pods"}}})).await;
    assert_eq!((code, &v["status"]["allowed"]), (201, &json!(true)), "{v}");
    // Refusals in kube-apiserver's words.
    let (code, v) = call(
        &admin,
        "POST",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        json!({"spec": {"resourceAttributes": {"verb": "get"}}}),
    )
    .await;
    assert_eq!(code, 422, "{v}");
    let (code, _) = call(
        &admin,
        "GET",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Value::Null,
    )
    .await;
    assert_eq!(code, 405);
}

#[tokio::test]
async fn impersonation_needs_the_impersonate_verb() {
    let (_dir, admin) = setup();
    let alice = admin.as_user("alice", &["system:authenticated"]);
    let whoami = |r: &Router, headers: Vec<(&'static str, &'static str)>| {
        let r = r.clone();
        async move {
            request(
                &r,
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                &headers,
                "application/json",
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
            )
            .await
        }
    };
    assert_eq!(
        forbidden(whoami(&alice, vec![("Impersonate-User", "bob")]).await),
        r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#
    );
    assert_eq!(
        forbidden(
            whoami(
                &alice,
                vec![(
                    "Impersonate-User",
                    "system:serviceaccount:kube-system:builder"
                )]
            )
            .await
        ),
        r#"serviceaccounts "builder" is forbidden: User "alice" cannot impersonate resource "serviceaccounts" in API group "" in the namespace "kube-system""#
    );
    // The admin may: a ServiceAccount gets its groups, a user system:authenticated.
    let (code, v) = whoami(
        &admin,
        vec![(
            "Impersonate-User",
            "system:serviceaccount:kube-system:builder",
        )],
    )
    .await;
    assert_eq!(code, 201, "{v}");
    assert_eq!(
        v["status"]["userInfo"],
        json!({"username": "system:serviceaccount:kube-system:builder",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]})
    );
    let (_, v) = whoami(
        &admin,
        vec![("Impersonate-User", "bob"), ("Impersonate-Group", "devs")],
    )
    .await;
    assert_eq!(
        v["status"]["userInfo"],
        json!({"username": "bob", "groups": ["devs", "system:authenticated"]})
    );
    // Granted `impersonate` on one user, alice may act as that user, and only as it.
    create(&admin, &format!("{RBAC}/clusterroles"), cluster_role("be-bob", json!({}),
        json!([{"apiGroups": [""], "resources": ["users"], "resourceNames": ["bob"], "verbs": ["impersonate"]}]))).await;
    create(
        &admin,
        &format!("{RBAC}/clusterrolebindings"),
        binding(
            "ClusterRoleBinding",
            "alice-be-bob",
            "ClusterRole",
            "be-bob",
            user("alice"),
        ),
    )
    .await;
    let (code, v) = whoami(&alice, vec![("Impersonate-User", "bob")]).await;
    assert_eq!(
        (code, &v["status"]["userInfo"]["username"]),
        (201, &json!("bob"))
    );
    forbidden(whoami(&alice, vec![("Impersonate-User", "carol")]).await);
    forbidden(
        whoami(
            &alice,
            vec![
                ("Impersonate-User", "bob"),
                ("Impersonate-Group", "system:masters"),
            ],
        )
        .await,
    );
    // Acting as bob, alice has bob's rights, not her own.
    let (code, _) = request(
        &admin,
        "GET",
        "/api/v1/namespaces/default/pods",
        &[("Impersonate-User", "bob")],
        "application/json",
        Value::Null,
    )
    .await;
    assert_eq!(code, 403);
}

#[tokio::test]
async fn the_policy_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let admin = router(&Config::new(dir.path())).unwrap();
        create(
            &admin,
            &format!("{RBAC}/clusterroles"),
            cluster_role(
                "reader",
                json!({}),
                json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]),
            ),
        )
        .await;
        create(
            &admin,
            &format!("{RBAC}/clusterrolebindings"),
            binding(
                "ClusterRoleBinding",
                "frank-reads",
                "ClusterRole",
                "reader",
                user("frank"),
            ),
        )
        .await;
        // An edited default keeps the edit (it is only given back what it lacks).
        let (code, _) = request(
            &admin,
            "PATCH",
            &format!("{RBAC}/clusterroles/system:basic-user"),
            &[],
            "application/merge-patch+json",
            json!({"metadata": {"labels": {"edited": "yes"}}, "rules": []}),
        )
        .await;
        assert_eq!(code, 200);
    }
    let admin = router(&Config::new(dir.path())).unwrap();
    let frank = admin.as_user("frank", &[]);
    assert_eq!(
        call(&frank, "GET", "/api/v1/pods", Value::Null).await.0,
        200
    );
    let (_, v) = call(
        &admin,
        "GET",
        &format!("{RBAC}/clusterroles/system:basic-user"),
        Value::Null,
    )
    .await;
    assert_eq!(v["metadata"]["labels"]["edited"], "yes");
    assert!(
        !v["rules"].as_array().unwrap().is_empty(),
        "the lost rules came back: {v}"
    );
}

#[tokio::test]
async fn a_websocket_exec_needs_create_as_well_as_get() {
    let (_dir, admin) = setup();
    namespace(&admin, "team").await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/roles"),
        role(
            "exec-get",
            json!([{"apiGroups": [""], "resources": ["pods/exec", "pods/attach", "pods/portforward"], "verbs": ["get"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding("RoleBinding", "bob", "Role", "exec-get", user("bob")),
    )
    .await;
    let bob = admin.as_user("bob", &["system:authenticated"]);
    // A WebSocket client GETs: allowed as `get`, then refused without `create`, before
    // the pod is even looked up, as kube-apiserver refuses it.
    for (sub, query) in [
        ("exec", "?command=ls&stdout=true"),
        ("attach", "?stdout=true"),
        ("portforward", "?ports=80"),
    ] {
        let msg = forbidden(
            call(
                &bob,
                "GET",
                &format!("/api/v1/namespaces/team/pods/web/{sub}{query}"),
                Value::Null,
            )
            .await,
        );
        assert_eq!(
            msg,
            format!(
                "pods \"web\" is forbidden: User \"bob\" cannot create resource \"pods/{sub}\" in API group \"\" in the namespace \"team\""
            )
        );
    }
    // With `create` too the request gets through to the pod (which does not exist).
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/roles"),
        role(
            "exec-create",
            json!([{"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]}]),
        ),
    )
    .await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "bob-create",
            "Role",
            "exec-create",
            user("bob"),
        ),
    )
    .await;
    assert!(
        eventually(|| async {
            call(
                &bob,
                "GET",
                "/api/v1/namespaces/team/pods/web/exec?command=ls&stdout=true",
                Value::Null,
            )
            .await
            .0 == 404
        })
        .await
    );
}

#[tokio::test]
async fn whoever_may_view_may_read_metrics() {
    let (_dir, admin) = setup();
    namespace(&admin, "team").await;
    create(
        &admin,
        &format!("{RBAC}/namespaces/team/rolebindings"),
        binding(
            "RoleBinding",
            "carol-views",
            "ClusterRole",
            "view",
            user("carol"),
        ),
    )
    .await;
    let carol = admin.as_user("carol", &["system:authenticated"]);
    let dave = admin.as_user("dave", &["system:authenticated"]);
    let uri = "/apis/metrics.k8s.io/v1beta1/namespaces/team/pods";
    // `view` aggregates system:aggregated-metrics-reader, as metrics-server's install
    // makes it.
    assert!(eventually(|| async { call(&carol, "GET", uri, Value::Null).await.0 == 200 }).await);
    assert_eq!(
        forbidden(call(&dave, "GET", uri, Value::Null).await),
        "pods.metrics.k8s.io is forbidden: User \"dave\" cannot list resource \"pods\" in API group \"metrics.k8s.io\" in the namespace \"team\""
    );
}

#[tokio::test]
async fn the_workload_controllers_hold_kubes_roles() {
    let (_dir, admin) = setup();
    let sa = "system:serviceaccount:kube-system:";
    let groups = json!([
        "system:serviceaccounts",
        "system:serviceaccounts:kube-system",
        "system:authenticated"
    ]);
    let may = |user: &str, verb: &str, group: &str, resource: &str, sub: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": format!("{sa}{user}"), "groups": groups,
            "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": sub, "namespace": "default"}}})
    };
    for (user, verb, group, resource, sub, allowed) in [
        ("job-controller", "create", "", "pods", "", true),
        ("job-controller", "update", "batch", "jobs", "status", true),
        ("job-controller", "delete", "batch", "jobs", "", false),
        (
            "ttl-after-finished-controller",
            "delete",
            "batch",
            "jobs",
            "",
            true,
        ),
        (
            "ttl-after-finished-controller",
            "create",
            "",
            "pods",
            "",
            false,
        ),
        ("cronjob-controller", "create", "batch", "jobs", "", true),
        (
            "cronjob-controller",
            "update",
            "batch",
            "cronjobs",
            "status",
            true,
        ),
        ("cronjob-controller", "create", "", "pods", "", false),
        ("replication-controller", "create", "", "pods", "", true),
        (
            "replication-controller",
            "update",
            "",
            "replicationcontrollers",
            "status",
            true,
        ),
        (
            "replication-controller",
            "update",
            "apps",
            "replicasets",
            "",
            false,
        ),
    ] {
        let (code, v) = call(
            &admin,
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            may(user, verb, group, resource, sub),
        )
        .await;
        assert_eq!(code, 201, "{v}");
        assert_eq!(
            v["status"]["allowed"], allowed,
            "{user} {verb} {group}/{resource}/{sub}: {v}"
        );
        if allowed {
            let role = format!("system:controller:{user}");
            assert_eq!(
                v["status"]["reason"],
                format!(
                    "RBAC: allowed by ClusterRoleBinding \"{role}\" of ClusterRole \"{role}\" to ServiceAccount \"{user}/kube-system\""
                ),
            );
        }
    }
}

#[tokio::test]
async fn a_router_with_service_account_tokens_authenticates_each_request() {
    let (_dir, admin) = setup();
    create(
        &admin,
        "/api/v1/namespaces/default/serviceaccounts",
        json!({"metadata": {"name": "robot"}}),
    )
    .await;
    let (code, tr) = call(
        &admin,
        "POST",
        "/api/v1/namespaces/default/serviceaccounts/robot/token",
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}),
    )
    .await;
    assert_eq!(code, 201, "{tr}");
    let token = tr["status"]["token"].as_str().unwrap();
    let r = admin.with_service_account_tokens();
    let get = |headers: Vec<(&'static str, String)>, uri: &'static str| {
        let r = r.clone();
        async move {
            let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            request(&r, "GET", uri, &h, "application/json", Value::Null).await
        }
    };
    let bearer = |t: &str| vec![("authorization", format!("Bearer {t}"))];
    // No token, or one not this server's: 401, but for the public paths.
    assert_eq!(get(vec![], "/api/v1/namespaces/default/pods").await.0, 401);
    assert_eq!(
        get(bearer("x.y.z"), "/api/v1/namespaces/default/pods")
            .await
            .0,
        401
    );
    assert_eq!(get(vec![], "/version").await.0, 200);
    // The token's ServiceAccount, held to what RBAC gives it.
    let msg = forbidden(get(bearer(token), "/api/v1/namespaces/default/pods").await);
    assert_eq!(
        msg,
        "pods is forbidden: User \"system:serviceaccount:default:robot\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
}
