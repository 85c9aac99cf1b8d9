//! Tier 4, black box: RBAC through the real `kubectl` over TLS: `kubectl auth can-i`
//! (also `--list` and `--as` impersonation), `kubectl create role|clusterrole|
//! rolebinding|clusterrolebinding`, escalation refused, 403s in kube-apiserver's words.
//!
//! KUBECTL TESTS: they need `kubectl` on PATH and FAIL, never skip, without it. Each test
//! serves on its own free loopback port from its own temporary data dir.

mod common;

use common::{TestServer, start};

/// Runs kubectl and requires success.
async fn ok(c: &TestServer, args: &[&str]) -> String {
    let o = c.kubectl(args).await;
    assert!(o.ok, "kubectl {}: {}", args.join(" "), o.stderr);
    o.stdout
}

/// `kubectl auth can-i` as `who` (impersonated): "yes" or "no".
async fn can_i(c: &TestServer, who: &str, args: &[&str]) -> String {
    let mut a = vec!["auth", "can-i"];
    a.extend_from_slice(args);
    let as_flag = format!("--as={who}");
    a.push(&as_flag);
    c.kubectl(&a).await.stdout.trim().to_string()
}

const SA: &str = "system:serviceaccount:kube-system:builder";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_auth_can_i_lists_exactly_what_a_service_account_holds() {
    let c = start().await;
    ok(
        &c,
        &["create", "serviceaccount", "builder", "-n", "kube-system"],
    )
    .await;
    // A fresh ServiceAccount holds what every authenticated user holds, nothing more.
    let list = ok(
        &c,
        &[
            "auth",
            "can-i",
            "--list",
            &format!("--as={SA}"),
            "-n",
            "kube-system",
        ],
    )
    .await;
    let resources: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter(|r| !r.starts_with('['))
        .collect();
    assert_eq!(
        resources,
        [
            "selfsubjectreviews.authentication.k8s.io",
            "selfsubjectaccessreviews.authorization.k8s.io",
            "selfsubjectrulesreviews.authorization.k8s.io",
        ],
        "{list}"
    );
    for path in [
        "[/api]",
        "[/apis/*]",
        "[/healthz]",
        "[/version]",
        "[/openid/v1/jwks]",
    ] {
        assert!(list.contains(path), "{path} missing from:\n{list}");
    }
    assert_eq!(
        can_i(&c, SA, &["list", "pods", "-n", "kube-system"]).await,
        "no"
    );
    // A Role and a RoleBinding made with kubectl's generators give it exactly that.
    ok(
        &c,
        &[
            "create",
            "role",
            "builder",
            "-n",
            "kube-system",
            "--verb=get,list,watch",
            "--resource=pods,pods/log",
            "--verb=create",
            "--resource=configmaps",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "create",
            "role",
            "builder-cm",
            "-n",
            "kube-system",
            "--verb=create,update",
            "--resource=configmaps",
            "--resource-name=build-state",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "create",
            "rolebinding",
            "builder",
            "-n",
            "kube-system",
            "--role=builder",
            "--serviceaccount=kube-system:builder",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "create",
            "rolebinding",
            "builder-cm",
            "-n",
            "kube-system",
            "--role=builder-cm",
            "--serviceaccount=kube-system:builder",
        ],
    )
    .await;
    let list = ok(
        &c,
        &[
            "auth",
            "can-i",
            "--list",
            &format!("--as={SA}"),
            "-n",
            "kube-system",
        ],
    )
    .await;
    let line = |res: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(res))
            .unwrap_or_else(|| panic!("no {res} in:\n{list}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("pods"), "[] [] [get list watch create]");
    assert_eq!(line("pods/log"), "[] [] [get list watch create]");
    assert!(
        list.contains("configmaps") && list.contains("[build-state]"),
        "{list}"
    );
    assert_eq!(
        can_i(&c, SA, &["list", "pods", "-n", "kube-system"]).await,
        "yes"
    );
    assert_eq!(
        can_i(
            &c,
            SA,
            &["get", "pods", "--subresource=log", "-n", "kube-system"]
        )
        .await,
        "yes"
    );
    assert_eq!(
        can_i(&c, SA, &["delete", "pods", "-n", "kube-system"]).await,
        "no"
    );
    assert_eq!(
        can_i(&c, SA, &["list", "pods", "-n", "default"]).await,
        "no"
    );
    assert_eq!(
        can_i(
            &c,
            SA,
            &["update", "configmaps/build-state", "-n", "kube-system"]
        )
        .await,
        "yes"
    );
    assert_eq!(
        can_i(&c, SA, &["update", "configmaps/other", "-n", "kube-system"]).await,
        "no"
    );
    assert_eq!(
        can_i(&c, SA, &["get", "secrets", "-n", "kube-system"]).await,
        "no"
    );
    // A node: what the Node authorizer allows it, and a warning that the list is not all.
    let node = c
        .kubectl(&[
            "auth",
            "can-i",
            "--list",
            "--as=system:node:node-1",
            "--as-group=system:nodes",
        ])
        .await;
    assert!(
        node.stderr
            .contains("node authorizer does not support user rule resolution"),
        "{}",
        node.stderr
    );
    assert_eq!(
        can_i(
            &c,
            "system:node:node-1",
            &["--as-group=system:nodes", "list", "services"]
        )
        .await,
        "yes"
    );
    assert_eq!(
        can_i(
            &c,
            "system:node:node-1",
            &["--as-group=system:nodes", "list", "secrets", "-A"]
        )
        .await,
        "no - can only read namespaced object of this type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_refuses_bindings_with_more_rights_than_their_author_holds() {
    let c = start().await;
    ok(&c, &["create", "namespace", "team"]).await;
    ok(
        &c,
        &[
            "create",
            "rolebinding",
            "alice-admin",
            "-n",
            "team",
            "--clusterrole=admin",
            "--user=alice",
        ],
    )
    .await;
    // Alice administers team: she may grant `view` or `edit` there...
    ok(
        &c,
        &[
            "create",
            "rolebinding",
            "bob-view",
            "-n",
            "team",
            "--clusterrole=view",
            "--user=bob",
            "--as=alice",
        ],
    )
    .await;
    ok(
        &c,
        &[
            "create",
            "rolebinding",
            "bob-edit",
            "-n",
            "team",
            "--clusterrole=edit",
            "--user=bob",
            "--as=alice",
        ],
    )
    .await;
    // ...not cluster-admin, not there and not elsewhere.
    let out = c
        .kubectl(&[
            "create",
            "rolebinding",
            "bob-root",
            "-n",
            "team",
            "--clusterrole=cluster-admin",
            "--user=bob",
            "--as=alice",
        ])
        .await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "rolebindings.rbac.authorization.k8s.io \"bob-root\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"
        ),
        "{}",
        out.stderr
    );
    let out = c
        .kubectl(&[
            "create",
            "role",
            "nodes",
            "-n",
            "team",
            "--verb=list",
            "--resource=nodes",
            "--as=alice",
        ])
        .await;
    assert!(
        out.stderr.contains(
            "roles.rbac.authorization.k8s.io \"nodes\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"list\"]}"
        ),
        "{}",
        out.stderr
    );
    let out = c
        .kubectl(&[
            "create",
            "clusterrolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
            "--as=alice",
        ])
        .await;
    assert!(
        out.stderr.contains(
            r#"clusterrolebindings.rbac.authorization.k8s.io is forbidden: User "alice" cannot create resource "clusterrolebindings" in API group "rbac.authorization.k8s.io" at the cluster scope"#
        ),
        "{}",
        out.stderr
    );
    // Outside team she may not even look.
    let out = c
        .kubectl(&["get", "pods", "-n", "default", "--as=alice"])
        .await;
    assert!(
        out.stderr.contains(
            r#"Error from server (Forbidden): pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "default""#
        ),
        "{}",
        out.stderr
    );
    // The bindings print as kubectl prints them.
    let wide = ok(&c, &["get", "rolebindings", "-n", "team", "-o", "wide"]).await;
    let header: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"],
        "{wide}"
    );
    assert!(
        wide.lines().any(|l| l.starts_with("bob-view")
            && l.contains("ClusterRole/view")
            && l.contains("bob")),
        "{wide}"
    );
    let roles = ok(&c, &["get", "clusterroles", "view", "admin"]).await;
    assert_eq!(
        roles
            .lines()
            .next()
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["NAME", "CREATED", "AT"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_aggregated_roles_with_default_validation() {
    let c = start().await;
    let manifest = c.dir.path().join("rbac.yaml");
    std::fs::write(
        &manifest,
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: widgets-view
  labels:
    rbac.authorization.k8s.io/aggregate-to-view: "true"
rules:
- apiGroups: ["example.com"]
  resources: ["widgets"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring
aggregationRule:
  clusterRoleSelectors:
  - matchLabels:
      example.com/aggregate-to-monitoring: "true"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: monitoring-endpoints
  labels:
    example.com/aggregate-to-monitoring: "true"
rules:
- apiGroups: [""]
  resources: ["services", "endpoints", "pods"]
  verbs: ["get", "list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: prometheus
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: monitoring
subjects:
- kind: ServiceAccount
  name: prometheus
  namespace: default
"#,
    )
    .unwrap();
    ok(&c, &["apply", "-f", manifest.to_str().unwrap()]).await;
    let sa = "system:serviceaccount:default:prometheus";
    let mut granted = false;
    for _ in 0..100 {
        if can_i(&c, sa, &["watch", "endpoints", "-A"]).await == "yes" {
            granted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(granted, "the aggregated role never granted its rules");
    assert_eq!(can_i(&c, sa, &["get", "secrets", "-A"]).await, "no");
    let view = ok(
        &c,
        &[
            "get",
            "clusterrole",
            "view",
            "-o",
            "jsonpath={.rules[*].resources}",
        ],
    )
    .await;
    assert!(view.contains("widgets"), "{view}");
    // A second apply changes nothing, and unknown fields are refused as kube-apiserver does.
    ok(&c, &["apply", "-f", manifest.to_str().unwrap()]).await;
    let bad = c.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: r\nrules:\n- apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"get\"]\n  bogus: 1\n",
    )
    .unwrap();
    let out = c.kubectl(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!out.ok && out.stderr.contains("bogus"), "{}", out.stderr);
}
