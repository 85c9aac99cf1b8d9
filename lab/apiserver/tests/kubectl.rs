//! Tier 4, black box: the real `kubectl` against the server over TLS.
//!
//! KUBECTL TESTS: they need `kubectl` on PATH (v1.32 at /usr/bin/kubectl on the CI
//! machines) and FAIL, never skip, without it. Each test serves on its own free
//! loopback port (127.0.0.1:0) from its own temporary data dir.

use std::path::Path;
use std::time::Duration;

mod common;

use common::{TestServer as Cluster, start};

impl Cluster {
    fn server(&self) -> String {
        let kc = std::fs::read_to_string(&self.kubeconfig).unwrap();
        kc.lines()
            .find_map(|l| l.trim().strip_prefix("server: "))
            .unwrap()
            .to_string()
    }

    fn path(&self, file: &str) -> String {
        self.dir
            .path()
            .join("data")
            .join(file)
            .to_str()
            .unwrap()
            .to_string()
    }
}

const WEBSITE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: website
spec:
  ports:
  - port: 80
    name: web
---
apiVersion: v1
kind: Endpoints
metadata:
  name: website
subsets:
- addresses:
  - ip: "10.10.10.10"
  ports:
  - port: 80
    name: web
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
    name: http
  selector:
    app: web
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_apply_get_delete_website() {
    let c = start().await;
    let f = c.write("website.yaml", WEBSITE);
    let f = f.to_str().unwrap();

    let out = c.kubectl(&["apply", "-f", f]).await;
    assert!(out.ok, "{}", out.stderr);
    for line in [
        "service/website created",
        "endpoints/website created",
        "service/web created",
    ] {
        assert!(out.stdout.contains(line), "{line} in {}", out.stdout);
    }

    let out = c.kubectl(&["get", "endpoints", "website"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("NAME      ENDPOINTS        AGE"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("website   10.10.10.10:80"),
        "{}",
        out.stdout
    );

    let out = c.kubectl(&["get", "svc"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.header(),
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE"
        ]
    );
    for name in ["kubernetes", "web", "website"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(name) && l.contains("ClusterIP")),
            "{name} in {}",
            out.stdout
        );
    }
    assert!(
        out.stdout.contains("443/TCP") && out.stdout.contains("80/TCP"),
        "{}",
        out.stdout
    );

    // Re-apply a change: a client-side apply patch (strategic merge).
    let changed = WEBSITE.replacen("  - ip: \"10.10.10.10\"", "  - ip: \"10.10.10.11\"", 1);
    let f2 = c.write("website2.yaml", &changed);
    let out = c.kubectl(&["apply", "-f", f2.to_str().unwrap()]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("endpoints/website configured"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("service/website unchanged"),
        "{}",
        out.stdout
    );
    let out = c
        .kubectl(&[
            "get",
            "endpoints",
            "website",
            "-o",
            "jsonpath={.subsets[0].addresses[0].ip}",
        ])
        .await;
    assert_eq!(out.stdout, "10.10.10.11");

    let out = c.kubectl(&["get", "svc", "website", "-o", "yaml"]).await;
    assert!(
        out.ok && out.stdout.contains("clusterIP: 10.96."),
        "{}",
        out.stdout
    );

    // Server-side apply.
    let ssa = c.write(
        "ssa.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: b\n",
    );
    let out = c
        .kubectl(&["apply", "--server-side", "-f", ssa.to_str().unwrap()])
        .await;
    assert!(
        out.ok && out.stdout.contains("configmap/ssa serverside-applied"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = c
        .kubectl(&[
            "get",
            "cm",
            "ssa",
            "-o",
            "jsonpath={.metadata.managedFields[0].manager}",
        ])
        .await;
    assert_eq!(out.stdout, "kubectl");

    let out = c.kubectl(&["label", "svc", "web", "tier=front"]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c
        .kubectl(&["get", "svc", "-l", "tier=front", "-o", "name"])
        .await;
    assert_eq!(out.stdout.trim(), "service/web");

    let out = c.kubectl(&["delete", "-f", f]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("endpoints \"website\" deleted"),
        "{}",
        out.stdout
    );
    let out = c.kubectl(&["get", "endpoints", "website"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr
            .contains("Error from server (NotFound): endpoints \"website\" not found"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_sees_server_errors() {
    let c = start().await;
    let bad = c.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 70000\n",
    );
    let out = c.kubectl(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains(
            "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive"
        ),
        "{}",
        out.stderr
    );
    let out = c.kubectl(&["get", "svc", "web"]).await;
    assert!(!out.ok && out.stderr.contains("NotFound"), "{}", out.stderr);

    let dup = c.write(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: default\n",
    );
    let out = c.kubectl(&["create", "-f", dup.to_str().unwrap()]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("AlreadyExists")
            && out.stderr.contains("namespaces \"default\" already exists"),
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_authentication_by_certificate_or_token() {
    let c = start().await;
    let server = c.server();
    let ca = c.path("ca.crt");
    let anon = c
        .kubectl_raw(
            &["--server", &server, "--certificate-authority", &ca],
            &["get", "namespaces"],
        )
        .await;
    // On a 401 without any credentials kubectl asks for a username (stdin is closed).
    assert!(!anon.ok);
    assert!(
        anon.stdout.contains("Username") || anon.stderr.contains("Unauthorized"),
        "{}",
        anon.stderr
    );
    let wrong = c
        .kubectl_raw(
            &[
                "--server",
                &server,
                "--certificate-authority",
                &ca,
                "--token",
                "nope",
            ],
            &["get", "namespaces"],
        )
        .await;
    assert!(
        !wrong.ok && wrong.stderr.contains("provide credentials"),
        "{}",
        wrong.stderr
    );
    let token = std::fs::read_to_string(Path::new(&c.path("admin.token"))).unwrap();
    let good = c
        .kubectl_raw(
            &[
                "--server",
                &server,
                "--certificate-authority",
                &ca,
                "--token",
                token.trim(),
            ],
            &["get", "namespaces"],
        )
        .await;
    assert!(good.ok, "{}", good.stderr);
    assert!(
        good.stdout.contains("kube-system") && good.stdout.contains("Active"),
        "{}",
        good.stdout
    );
    // Minted node credentials (a client certificate) work too.
    let node = apiserver::client_kubeconfig(
        &c.dir.path().join("data"),
        &server,
        "system:node:node-1",
        &["system:nodes"],
    )
    .unwrap();
    let node_kc = c.write("node-1.kubeconfig", &node);
    let out = c
        .kubectl_raw(
            &["--kubeconfig", node_kc.to_str().unwrap()],
            &["get", "svc", "kubernetes"],
        )
        .await;
    assert!(out.ok && out.stdout.contains("10.96.0.1"), "{}", out.stderr);
    // The `kubernetes` service points at the server.
    let out = c
        .kubectl(&[
            "get",
            "endpoints",
            "kubernetes",
            "-o",
            "jsonpath=https://{.subsets[0].addresses[0].ip}:{.subsets[0].ports[0].port}",
        ])
        .await;
    assert_eq!(out.stdout, server);
    // The admin kubeconfig authenticates by client certificate.
    let out = c.kubectl(&["version", "-o", "json"]).await;
    assert!(
        out.ok && out.stdout.contains("\"serverVersion\""),
        "{}",
        out.stderr
    );
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_deployments_scale_and_watch() {
    let c = start().await;
    let f = c.write("deploy.yaml", DEPLOYMENT);
    let out = c.kubectl(&["apply", "-f", f.to_str().unwrap()]).await;
    assert!(
        out.ok && out.stdout.contains("deployment.apps/web created"),
        "{}",
        out.stderr
    );

    let out = c.kubectl(&["get", "deployments"]).await;
    assert_eq!(
        out.header(),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("web    0/2"), "{}", out.stdout);

    let out = c
        .kubectl(&["scale", "deployment", "web", "--replicas=3"])
        .await;
    assert!(
        out.ok && out.stdout.contains("deployment.apps/web scaled"),
        "{}",
        out.stderr
    );
    let out = c
        .kubectl(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.generation}",
        ])
        .await;
    assert_eq!(out.stdout, "3 2");

    // `get -w` prints the current state, then changes.
    let cache = c.dir.path().join("kube-cache");
    let watcher = tokio::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            c.kubeconfig.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .args(["get", "configmaps", "-w", "--request-timeout=8s"])
        .env("HOME", c.dir.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let create = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cm = c.write(
            "cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\n",
        );
        c.kubectl(&["apply", "-f", cm.to_str().unwrap()]).await
    };
    let (watched, created) = tokio::join!(watcher, create);
    assert!(created.ok, "{}", created.stderr);
    let stdout = String::from_utf8_lossy(&watched.unwrap().stdout).into_owned();
    assert!(stdout.lines().any(|l| l.starts_with("watched")), "{stdout}");
}

/// kubectl's generators send protobuf, not JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_generators() {
    let c = start().await;
    for (args, expect) in [
        (
            &["create", "namespace", "team"][..],
            "namespace/team created",
        ),
        (
            &[
                "create",
                "deployment",
                "web",
                "--image=nginx",
                "--replicas=2",
                "--port=80",
            ],
            "deployment.apps/web created",
        ),
        (
            &[
                "expose",
                "deployment",
                "web",
                "--port=80",
                "--target-port=8080",
            ],
            "service/web exposed",
        ),
        (
            &[
                "create",
                "service",
                "nodeport",
                "np",
                "--tcp=80:8080",
                "--node-port=31100",
            ],
            "service/np created",
        ),
        (
            &[
                "create",
                "service",
                "clusterip",
                "headless",
                "--clusterip=None",
            ],
            "service/headless created",
        ),
        (
            &["create", "configmap", "cfg", "--from-literal=a=b"],
            "configmap/cfg created",
        ),
        (
            &[
                "create",
                "secret",
                "generic",
                "pw",
                "--from-literal=pw=s3cret",
            ],
            "secret/pw created",
        ),
        (
            &["create", "serviceaccount", "bot"],
            "serviceaccount/bot created",
        ),
    ] {
        let out = c.kubectl(args).await;
        assert!(
            out.ok && out.stdout.contains(expect),
            "kubectl {args:?}: {}{}",
            out.stdout,
            out.stderr
        );
    }
    let out = c.kubectl(&["get", "svc", "np", "headless", "web"]).await;
    assert!(out.stdout.contains("80:31100/TCP"), "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("headless") && l.contains("None")),
        "{}",
        out.stdout
    );
    let out = c.kubectl(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.selector.matchLabels.app}"]).await;
    assert_eq!(out.stdout, "2 80 web");
    let out = c
        .kubectl(&[
            "get",
            "svc",
            "web",
            "-o",
            "jsonpath={.spec.selector.app} {.spec.ports[0].targetPort}",
        ])
        .await;
    assert_eq!(out.stdout, "web 8080");
    let out = c
        .kubectl(&["get", "secret", "pw", "-o", "jsonpath={.data.pw}"])
        .await;
    assert_eq!(out.stdout, "czNjcmV0");
    let out = c.kubectl(&["get", "cm", "cfg"]).await;
    assert!(out.stdout.contains("cfg    1"), "{}", out.stdout);
}

const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
    shortNames: [wg]
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    additionalPrinterColumns:
    - name: Size
      type: integer
      jsonPath: .spec.size
    - name: Age
      type: date
      jsonPath: .metadata.creationTimestamp
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_custom_resources() {
    let c = start().await;
    let crd = c.write("crd.yaml", CRD);
    let out = c.kubectl(&["apply", "-f", crd.to_str().unwrap()]).await;
    assert!(
        out.ok
            && out.stdout.contains(
                "customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"
            ),
        "{}",
        out.stderr
    );
    let out = c
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd/widgets.example.com",
            "--timeout=20s",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let w = c.write(
        "w.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n",
    );
    let out = c.kubectl(&["apply", "-f", w.to_str().unwrap()]).await;
    assert!(
        out.ok && out.stdout.contains("widget.example.com/w1 created"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = c.kubectl(&["get", "wg"]).await;
    assert_eq!(
        out.header(),
        ["NAME", "SIZE", "AGE"],
        "{}{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("w1") && l.contains(" 3 ")),
        "{}",
        out.stdout
    );
    let out = c.kubectl(&["delete", "crd", "widgets.example.com"]).await;
    assert!(out.ok, "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_token_authenticates_as_the_service_account() {
    let c = start().await;
    let out = c.kubectl(&["create", "namespace", "team"]).await;
    assert!(out.ok, "{}", out.stderr);
    // The namespace got its `default` ServiceAccount, as the SA controller makes it.
    let out = c
        .kubectl(&["get", "serviceaccount", "default", "-n", "team"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let out = c
        .kubectl(&["create", "token", "default", "-n", "team", "--duration=1h"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let token = out.stdout.trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let server = c.server();
    let ca = c.path("ca.crt");
    let with = |t: &str| {
        vec![
            "--server".to_string(),
            server.clone(),
            "--certificate-authority".into(),
            ca.clone(),
            "--token".into(),
            t.to_string(),
        ]
    };
    let conn = with(&token);
    let conn: Vec<&str> = conn.iter().map(String::as_str).collect();
    // Authenticated, and allowed nothing yet: kube-apiserver's 403, word for word.
    let denied = c.kubectl_raw(&conn, &["get", "namespace", "team"]).await;
    assert!(
        !denied.ok
            && denied.stderr.contains(
                r#"namespaces "team" is forbidden: User "system:serviceaccount:team:default" cannot get resource "namespaces" in API group "" in the namespace "team""#
            ),
        "{}",
        denied.stderr
    );
    // `view` in its namespace lets it read there.
    let out = c
        .kubectl(&[
            "create",
            "rolebinding",
            "default-view",
            "--clusterrole=view",
            "--serviceaccount=team:default",
            "-n",
            "team",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let good = c.kubectl_raw(&conn, &["get", "namespace", "team"]).await;
    assert!(good.ok, "{}", good.stderr);
    // The server knows who the token is (kubectl auth whoami: SelfSubjectReview).
    let who = c.kubectl_raw(&conn, &["auth", "whoami"]).await;
    assert!(who.ok, "{}", who.stderr);
    assert!(
        who.stdout.contains("system:serviceaccount:team:default")
            && who.stdout.contains("system:serviceaccounts:team"),
        "{}",
        who.stdout
    );
    // The admin kubeconfig's client certificate: CN and O.
    let who = c.kubectl(&["auth", "whoami"]).await;
    assert!(
        who.stdout.contains("kubewire-admin") && who.stdout.contains("system:masters"),
        "{}",
        who.stdout
    );
    // A token with a changed signature is refused.
    let mut forged = token.clone();
    // Change a character inside the signature (not the last one, whose low bits are
    // padding).
    let at = forged.len() - 5;
    let ch = forged.remove(at);
    forged.insert(at, if ch == 'A' { 'B' } else { 'A' });
    let conn_forged = with(&forged);
    let conn_forged: Vec<&str> = conn_forged.iter().map(String::as_str).collect();
    let bad = c
        .kubectl_raw(&conn_forged, &["get", "namespace", "team"])
        .await;
    assert!(
        !bad.ok && bad.stderr.contains("Unauthorized")
            || bad.stderr.contains("provide credentials"),
        "{}",
        bad.stderr
    );
    // Once the account is gone, so is its token.
    let out = c
        .kubectl(&["delete", "serviceaccount", "default", "-n", "team"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let gone = c.kubectl_raw(&conn, &["get", "namespace", "team"]).await;
    assert!(!gone.ok, "{}", gone.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_service_points_at_the_advertise_address() {
    let c =
        common::start_with(|cfg| cfg.advertise_address = Some("192.0.2.7".parse().unwrap())).await;
    let port = c.server().rsplit(':').next().unwrap().to_string();
    let out = c.kubectl(&["get", "endpoints", "kubernetes"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("192.0.2.7:{port}")),
        "{}",
        out.stdout
    );
    let out = c
        .kubectl(&[
            "get",
            "endpointslice",
            "kubernetes",
            "-o",
            "jsonpath={.endpoints[0].addresses[0]}:{.ports[0].port}",
        ])
        .await;
    assert_eq!(out.stdout, format!("192.0.2.7:{port}"));
    let out = c
        .kubectl(&[
            "get",
            "svc",
            "kubernetes",
            "-o",
            "jsonpath={.spec.clusterIPs} {.spec.ports[0].port}>{.spec.ports[0].targetPort}",
        ])
        .await;
    assert_eq!(
        out.stdout,
        format!("[\"10.96.0.1\",\"fd00:10:96::1\"] 443>{port}")
    );
}

const LIST: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: first
  data: {a: "1"}
- apiVersion: v1
  kind: Service
  metadata:
    name: listed
  spec:
    selector: {app: listed}
    ports:
    - port: 80
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_and_apply_a_list_file() {
    let c = start().await;
    let f = c.write("list.yaml", LIST);
    let f = f.to_str().unwrap();
    let out = c.kubectl(&["create", "-f", f]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("configmap/first created")
            && out.stdout.contains("service/listed created"),
        "{}",
        out.stdout
    );
    let out = c.kubectl(&["apply", "-f", f]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c.kubectl(&["apply", "--server-side", "-f", f]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c.kubectl(&["get", "-f", f, "-o", "name"]).await;
    assert_eq!(out.stdout, "configmap/first\nservice/listed\n");
    let out = c.kubectl(&["delete", "-f", f]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c.kubectl(&["get", "cm,svc", "-o", "name"]).await;
    assert!(
        !out.stdout.contains("first") && !out.stdout.contains("listed"),
        "{}",
        out.stdout
    );
}

fn data(file: &str) -> String {
    format!("{}/tests/data/{file}", env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_api_standard_bundle_and_its_example() {
    let c = start().await;
    let bundle = data("gateway-api-v1.3.0-standard-install.yaml");
    let out = c.kubectl(&["apply", "--server-side", "-f", &bundle]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout.matches("serverside-applied").count(),
        5,
        "{}",
        out.stdout
    );
    let out = c
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=30s",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let example = data("gateway-api-v1.3.0-simple-gateway.yaml");
    let out = c.kubectl(&["apply", "-f", &example]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("gateway.gateway.networking.k8s.io/prod-web created")
            && out
                .stdout
                .contains("httproute.gateway.networking.k8s.io/foo created"),
        "{}",
        out.stdout
    );
    // Printer columns from the CRD.
    let out = c.kubectl(&["get", "gateway", "prod-web"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.header(),
        ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("prod-web   example"), "{}", out.stdout);
    // Defaults from the schema were applied.
    let out = c
        .kubectl(&[
            "get",
            "httproute",
            "foo",
            "-o",
            "jsonpath={.spec.rules[0].matches[0].path.type} {.spec.rules[0].matches[0].path.value} {.spec.rules[0].backendRefs[0].weight} {.spec.parentRefs[0].kind} {.spec.parentRefs[0].group}",
        ])
        .await;
    assert_eq!(
        out.stdout, "PathPrefix / 1 Gateway gateway.networking.k8s.io",
        "{}",
        out.stderr
    );
    // Structural validation, with kube-apiserver's words.
    let bad = c.write(
        "bad-route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: bad
spec:
  parentRefs:
  - name: prod-web
  rules:
  - backendRefs:
    - name: foo-svc
      port: 70000
"#,
    );
    let out = c.kubectl(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("spec.rules[0].backendRefs[0].port: Invalid value: 70000: spec.rules[0].backendRefs[0].port in body should be less than or equal to 65535"),
        "{}",
        out.stderr
    );
    // Unknown fields: refused under kubectl's default strict validation, pruned without it.
    let unknown = c.write(
        "unknown-route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: unknown
spec:
  bogus: 1
  parentRefs:
  - name: prod-web
"#,
    );
    let out = c.kubectl(&["apply", "-f", unknown.to_str().unwrap()]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("unknown field \"spec.bogus\""),
        "{}",
        out.stderr
    );
    // --validate=warn: stored (pruned) with kube-apiserver's warning.
    let out = c
        .kubectl(&["apply", "--validate=warn", "-f", unknown.to_str().unwrap()])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stderr.contains("Warning: unknown field \"spec.bogus\""),
        "{}",
        out.stderr
    );
    let out = c
        .kubectl(&["apply", "--validate=false", "-f", unknown.to_str().unwrap()])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let out = c
        .kubectl(&["get", "httproute", "unknown", "-o", "jsonpath={.spec}"])
        .await;
    assert!(
        !out.stdout.contains("bogus") && out.stdout.contains("parentRefs"),
        "{}",
        out.stdout
    );
    // kubectl explain reads the CRD's schema from /openapi/v3.
    let out = c.kubectl(&["explain", "httproute.spec.parentRefs"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout.contains("KIND:       HTTPRoute") && out.stdout.contains("sectionName"),
        "{}",
        out.stdout
    );
}

/// network-policy-api's ClusterNetworkPolicy CRD (v0.2.0, the copy kubewire installs):
/// its printer columns, short name, and the schema's refusals in kube-apiserver's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policy_crd_served_and_validated() {
    let c = start().await;
    let crd = format!(
        "{}/../../crates/policy/crds/network-policy-api-v0.2.0/policy.networking.k8s.io_clusternetworkpolicies.yaml",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = c.kubectl(&["apply", "-f", &crd]).await;
    assert!(out.ok, "{}", out.stderr);
    let cnp = |spec: &str| {
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: p\nspec:\n{spec}\n"
        )
    };
    let good = cnp(
        "  tier: Admin\n  priority: 10\n  subject: {namespaces: {}}\n  egress:\n  - action: Deny\n    to: [{networks: [10.0.0.0/8]}]\n    protocols: [{tcp: {destinationPort: {range: {start: 80, end: 90}}}}]",
    );
    let file = c.write("cnp.yaml", &good);
    let out = c.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c.kubectl(&["get", "cnp"]).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.header(),
        ["NAME", "TIER", "PRIORITY", "AGE"],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("p      Admin   10"), "{}", out.stdout);
    for (spec, want) in [
        (
            "  tier: Top\n  priority: 10\n  subject: {namespaces: {}}",
            "spec.tier: Unsupported value: \"Top\": supported values: \"Admin\", \"Baseline\"",
        ),
        (
            "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}",
            "spec.priority: Invalid value: 1001: spec.priority in body should be less than or equal to 1000",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {}",
            "spec.subject: Invalid value: 0: spec.subject in body should have at least 1 properties",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}",
            "spec.subject: Too many: 2: must have at most 1 items",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n  - action: Allow\n    from: [{namespaces: {}}]",
            "spec.ingress[0].action: Unsupported value: \"Allow\": supported values: \"Accept\", \"Deny\", \"Pass\"",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress:\n  - action: Deny\n    from: []",
            "spec.ingress[0].from: Invalid value: 0: spec.ingress[0].from in body should have at least 1 items",
        ),
    ] {
        let file = c.write("bad-cnp.yaml", &cnp(spec));
        let out = c.kubectl(&["apply", "-f", file.to_str().unwrap()]).await;
        assert!(!out.ok, "{spec}: accepted");
        assert!(out.stderr.contains(want), "{spec}: {}", out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metallb_crds_and_an_l2_pool() {
    let c = start().await;
    let out = c
        .kubectl(&["apply", "-f", &data("metallb-v0.14.9-crds.yaml")])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(out.stdout.matches(" created").count(), 7, "{}", out.stdout);
    let out = c.kubectl(&["create", "namespace", "metallb-system"]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c
        .kubectl(&[
            "apply",
            "-f",
            &data("metallb-v0.14.9-simple-pool-adv-l2.yaml"),
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let out = c
        .kubectl(&["get", "ipaddresspools", "-n", "metallb-system"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.header(),
        [
            "NAME",
            "AUTO",
            "ASSIGN",
            "AVOID",
            "BUGGY",
            "IPS",
            "ADDRESSES"
        ],
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("example   true"), "{}", out.stdout);
    let out = c
        .kubectl(&[
            "get",
            "ipaddresspool",
            "example",
            "-n",
            "metallb-system",
            "-o",
            "jsonpath={.spec.autoAssign} {.spec.avoidBuggyIPs}",
        ])
        .await;
    assert_eq!(out.stdout, "true false", "{}", out.stderr);
    let out = c
        .kubectl(&[
            "get",
            "l2advertisements",
            "-n",
            "metallb-system",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(
        out.stdout, "l2advertisement.metallb.io/empty\n",
        "{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_delete_namespace_waits_until_it_is_gone() {
    let c = start().await;
    assert!(c.kubectl(&["create", "namespace", "doomed"]).await.ok);
    let out = c
        .kubectl(&[
            "create",
            "configmap",
            "x",
            "-n",
            "doomed",
            "--from-literal=a=b",
        ])
        .await;
    assert!(out.ok, "{}", out.stderr);
    // kubectl waits for the namespace to go (its content first).
    let out = c
        .kubectl(&["delete", "namespace", "doomed", "--timeout=30s"])
        .await;
    assert!(out.ok, "{}", out.stderr);
    let out = c.kubectl(&["get", "namespace", "doomed"]).await;
    assert!(!out.ok && out.stderr.contains("NotFound"), "{}", out.stderr);
    let out = c
        .kubectl(&["get", "configmaps", "-n", "doomed", "-o", "name"])
        .await;
    assert_eq!(out.stdout, "", "{}", out.stderr);
}

/// The built-in kinds' OpenAPI schemas: `kubectl explain` prints their fields and
/// descriptions, and kubectl's client-side apply, which reads the strategic-merge
/// metadata from them, still merges lists by key (a container or a port dropped from
/// the file is removed, the others kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_explain_built_in_kinds_and_apply_with_their_merge_keys() {
    let c = start().await;
    let out = c.kubectl(&["explain", "service.spec"]).await;
    assert!(out.ok, "{}", out.stderr);
    for want in [
        "KIND:       Service",
        "ServiceSpec describes the attributes that a user creates on a service.",
        "clusterIP\t<string>",
        "healthCheckNodePort\t<integer>",
        "ports\t<[]ServicePort>",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in {}", out.stdout);
    }
    let out = c.kubectl(&["explain", "deployment.spec.strategy"]).await;
    assert!(out.ok, "{}", out.stderr);
    for want in [
        "GROUP:      apps",
        "DeploymentStrategy describes how to replace existing pods with new ones.",
        "rollingUpdate\t<RollingUpdateDeployment>",
        "type\t<string>",
    ] {
        assert!(out.stdout.contains(want), "{want:?} in {}", out.stdout);
    }
    let out = c
        .kubectl(&[
            "explain",
            "statefulset.spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
        ])
        .await;
    assert!(
        out.ok && out.stdout.contains("whenDeleted"),
        "{}",
        out.stderr
    );
    let out = c
        .kubectl(&["explain", "endpointslices.endpoints.conditions"])
        .await;
    assert!(
        out.ok && out.stdout.contains("ready\t<boolean>"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let out = c.kubectl(&["explain", "service.spec.bogus"]).await;
    assert!(!out.ok);
    assert!(
        out.stderr.contains("field \"bogus\" does not exist"),
        "{}",
        out.stderr
    );

    // Client-side apply with the published merge keys.
    let two = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: a
        image: nginx:1.27
        ports: [{containerPort: 80}, {containerPort: 81}]
      - name: b
        image: nginx:1.27
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}, {name: alt, port: 81}]
"#;
    let f = c.write("two.yaml", two);
    let out = c.kubectl(&["apply", "-f", f.to_str().unwrap()]).await;
    assert!(out.ok, "{}", out.stderr);
    let one = two
        .replace("\n      - name: b\n        image: nginx:1.27", "")
        .replace(", {containerPort: 81}", "")
        .replace(", {name: alt, port: 81}", "");
    let f = c.write("one.yaml", &one);
    let out = c.kubectl(&["apply", "-f", f.to_str().unwrap()]).await;
    assert!(out.ok, "{}", out.stderr);
    let out = c
        .kubectl(&[
            "get",
            "deployment",
            "web",
            "-o",
            "jsonpath={.spec.template.spec.containers[*].name} {.spec.template.spec.containers[*].ports[*].containerPort}",
        ])
        .await;
    assert_eq!(out.stdout, "a 80");
    let out = c
        .kubectl(&[
            "get",
            "service",
            "web",
            "-o",
            "jsonpath={.spec.ports[*].port}",
        ])
        .await;
    assert_eq!(out.stdout, "80");
}
