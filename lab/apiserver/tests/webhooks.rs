//! Admission webhooks, black box: the real `kubectl` writes through the server, which
//! calls a webhook server written in Python (its own HTTPS and JSON) on loopback, as
//! kube-apiserver calls webhooks: matching rules and selectors, JSON patches, denials,
//! reinvocation, failure policies, timeouts and the AdmissionReview it sends.
//!
//! KUBECTL TESTS: they need `kubectl` and `python3` on PATH and fail without them.

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use base64::Engine;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
use serde_json::Value;

mod common;

use common::{TestServer, start};

/// The Python webhook server, stopped when dropped.
struct Webhook {
    child: Child,
    port: u16,
    log: std::path::PathBuf,
    /// The CA its certificate chains to, base64 as `caBundle` takes it.
    ca_bundle: String,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webhook {
    fn start(dir: &Path) -> Webhook {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        leaf.subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let (cert_path, key_path, log) = (
            dir.join("webhook.crt"),
            dir.join("webhook.key"),
            dir.join("webhook.log"),
        );
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&log, "").unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/admission_webhook.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args([&cert_path, &key_path, &log])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 must be installed for these tests");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .expect("the webhook server prints its port");
        Webhook {
            child,
            port,
            log,
            ca_bundle: base64::engine::general_purpose::STANDARD.encode(ca_cert.pem()),
        }
    }

    /// The reviews sent to `path`, oldest first.
    fn reviews(&self, path: &str) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|l| l["path"] == path)
            .collect()
    }

    /// A webhook entry calling `path` for ConfigMaps in namespaces labelled
    /// `hooks: <scope>`, with `extra` YAML lines (indented as the entry's fields).
    fn entry(&self, name: &str, path: &str, scope: &str, ops: &str, extra: &str) -> String {
        format!(
            r#"- name: {name}
  clientConfig:
    url: https://127.0.0.1:{port}{path}
    caBundle: {ca}
  rules:
  - operations: [{ops}]
    apiGroups: [""]
    apiVersions: [v1]
    resources: [configmaps]
  namespaceSelector:
    matchLabels: {{hooks: {scope}}}
  sideEffects: None
  admissionReviewVersions: [v1]
{extra}"#,
            port = self.port,
            ca = self.ca_bundle,
        )
    }
}

impl TestServer {
    async fn ok(&self, args: &[&str]) -> String {
        let o = self.kubectl(args).await;
        assert!(o.ok, "kubectl {args:?} failed: {}", o.stderr);
        o.stdout
    }

    async fn fails(&self, args: &[&str]) -> String {
        let o = self.kubectl(args).await;
        assert!(!o.ok, "kubectl {args:?} should have failed");
        o.stderr
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a).await).unwrap()
    }

    async fn namespace(&self, name: &str, scope: &str) {
        self.ok(&["create", "namespace", name]).await;
        self.ok(&["label", "namespace", name, &format!("hooks={scope}")])
            .await;
    }
}

#[tokio::test]
async fn mutating_webhooks_patch_in_order_and_reinvoke_when_asked() {
    let c = start().await;
    let w = Webhook::start(c.dir.path());
    // Configurations run by name: a-count (reinvoked if needed), then b-label.
    let count = w.entry(
        "count.webhook.test",
        "/count",
        "mutate",
        "CREATE, UPDATE",
        "  reinvocationPolicy: IfNeeded\n",
    );
    let label = w.entry(
        "label.webhook.test",
        "/label",
        "mutate",
        "CREATE, UPDATE",
        "",
    );
    let yaml = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: b-label\nwebhooks:\n{label}---\napiVersion: admissionregistration.k8s.io/v1\nkind: MutatingWebhookConfiguration\nmetadata:\n  name: a-count\nwebhooks:\n{count}"
    );
    let f = c.write("mutating.yaml", &yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    let got = c
        .json(&["get", "mutatingwebhookconfiguration", "a-count"])
        .await;
    // kube-apiserver's defaults.
    let hook = &got["webhooks"][0];
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["timeoutSeconds"], 10);
    assert_eq!(hook["matchPolicy"], "Equivalent");
    assert_eq!(hook["rules"][0]["scope"], "*");
    let table = c.ok(&["get", "mutatingwebhookconfigurations"]).await;
    assert!(
        table.starts_with("NAME") && table.contains("WEBHOOKS"),
        "{table}"
    );

    c.namespace("mutate", "mutate").await;
    c.ok(&["create", "namespace", "plain"]).await;
    c.ok(&[
        "-n",
        "mutate",
        "create",
        "configmap",
        "one",
        "--from-literal=a=b",
    ])
    .await;
    let one = c.json(&["-n", "mutate", "get", "configmap", "one"]).await;
    assert_eq!(one["metadata"]["labels"]["webhook.test/labelled"], "yes");
    // /count ran, /label changed the object after it, so /count ran again.
    assert_eq!(one["metadata"]["annotations"]["webhook.test/count"], "2");
    assert_eq!(w.reviews("/count").len(), 2);

    // A namespace the selector does not pick: no webhook is called.
    c.ok(&["-n", "plain", "create", "configmap", "one"]).await;
    let plain = c.json(&["-n", "plain", "get", "configmap", "one"]).await;
    assert!(plain["metadata"]["labels"].is_null(), "{plain}");
    assert_eq!(w.reviews("/label").len(), 1);

    // Updates (a patch, then a server-side apply) go through them too, with the
    // stored object as oldObject.
    c.ok(&["-n", "mutate", "label", "configmap", "one", "extra=1"])
        .await;
    let reviews = w.reviews("/label");
    let last = &reviews.last().unwrap()["review"]["request"];
    assert_eq!(last["operation"], "UPDATE");
    assert_eq!(last["oldObject"]["metadata"]["name"], "one");
    assert_eq!(last["object"]["metadata"]["labels"]["extra"], "1");
    let applied = c.write(
        "applied.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: two\n  namespace: mutate\ndata:\n  k: v\n",
    );
    c.ok(&["apply", "--server-side", "-f", applied.to_str().unwrap()])
        .await;
    let two = c.json(&["-n", "mutate", "get", "configmap", "two"]).await;
    assert_eq!(two["metadata"]["labels"]["webhook.test/labelled"], "yes");
    let reviews = w.reviews("/label");
    let last = &reviews.last().unwrap()["review"]["request"];
    assert_eq!(last["operation"], "CREATE");
    assert_eq!(last["options"]["kind"], "CreateOptions");
}

#[tokio::test]
async fn validating_webhooks_refuse_and_nothing_is_stored() {
    let c = start().await;
    let w = Webhook::start(c.dir.path());
    let deny = w.entry(
        "deny.webhook.test",
        "/deny",
        "validate",
        "CREATE, UPDATE, DELETE",
        "",
    );
    let record = w.entry("record.webhook.test", "/record", "validate", "\"*\"", "");
    let yaml = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: checks\nwebhooks:\n{deny}{record}"
    );
    c.namespace("validate", "validate").await;
    // Stored before the webhooks exist: the deny webhook guards it from deletion.
    c.ok(&["-n", "validate", "create", "configmap", "guarded"])
        .await;
    c.ok(&[
        "-n",
        "validate",
        "label",
        "configmap",
        "guarded",
        "deny=yes",
    ])
    .await;
    let f = c.write("validating.yaml", &yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]).await;

    let refused = c.write(
        "refused.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: refused\n  namespace: validate\n  labels:\n    deny: \"yes\"\n",
    );
    let err = c.fails(&["create", "-f", refused.to_str().unwrap()]).await;
    assert!(
        err.contains(r#"admission webhook "deny.webhook.test" denied the request: objects labelled deny=yes are refused"#),
        "{err}"
    );
    let gone = c
        .fails(&["-n", "validate", "get", "configmap", "refused"])
        .await;
    assert!(
        gone.contains("NotFound") || gone.contains("not found"),
        "{gone}"
    );

    // An update the webhook refuses leaves the stored object as it was.
    let o = c
        .kubectl(&[
            "-n",
            "validate",
            "create",
            "configmap",
            "kept",
            "--from-literal=a=b",
        ])
        .await;
    assert!(o.ok, "{}", o.stderr);
    // The validating webhook's warnings reach the client.
    assert!(o.stderr.contains("seen by /record"), "{}", o.stderr);
    let before = c
        .json(&["-n", "validate", "get", "configmap", "kept"])
        .await;
    let err = c
        .fails(&["-n", "validate", "label", "configmap", "kept", "deny=yes"])
        .await;
    assert!(err.contains("denied the request"), "{err}");
    let after = c
        .json(&["-n", "validate", "get", "configmap", "kept"])
        .await;
    assert_eq!(before, after);

    // A dry run is sent, marked as one, and stores nothing.
    c.ok(&[
        "-n",
        "validate",
        "create",
        "configmap",
        "dry",
        "--dry-run=server",
    ])
    .await;
    let reviews = w.reviews("/record");
    let dry = &reviews.last().unwrap()["review"]["request"];
    assert_eq!(dry["dryRun"], true);
    c.fails(&["-n", "validate", "get", "configmap", "dry"])
        .await;

    // A delete: DELETE with the stored object as oldObject.
    c.ok(&["-n", "validate", "delete", "configmap", "kept"])
        .await;
    let reviews = w.reviews("/record");
    let del = &reviews.last().unwrap()["review"]["request"];
    assert_eq!(del["operation"], "DELETE");
    assert!(del["object"].is_null());
    assert_eq!(del["oldObject"]["metadata"]["name"], "kept");
    assert_eq!(del["options"]["kind"], "DeleteOptions");

    // Deletes of a refused object, one by one or as a collection, leave it stored.
    let err = c
        .fails(&["-n", "validate", "delete", "configmap", "guarded"])
        .await;
    assert!(err.contains("denied the request"), "{err}");
    let err = c
        .fails(&["-n", "validate", "delete", "configmap", "--all"])
        .await;
    assert!(err.contains("denied the request"), "{err}");
    // (kubectl deletes one by one; a DELETE of the collection is a deletecollection.)
    let err = c
        .fails(&["delete", "--raw", "/api/v1/namespaces/validate/configmaps"])
        .await;
    assert!(err.contains("denied the request"), "{err}");
    c.ok(&["-n", "validate", "get", "configmap", "guarded"])
        .await;

    // What every review carries, as kube-apiserver sends it.
    let create = &reviews[0];
    assert!(
        create["query"].as_str().unwrap().ends_with("?timeout=10s"),
        "{create}"
    );
    let req = &create["review"]["request"];
    assert_eq!(create["review"]["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(req["kind"]["kind"], "ConfigMap");
    assert_eq!(req["resource"]["resource"], "configmaps");
    assert_eq!(req["namespace"], "validate");
    assert_eq!(req["operation"], "CREATE");
    assert_eq!(req["userInfo"]["username"], "kubewire-admin");
    assert!(req["uid"].as_str().is_some_and(|u| !u.is_empty()));
}

#[tokio::test]
async fn failure_policies_timeouts_and_bad_answers() {
    let c = start().await;
    let w = Webhook::start(c.dir.path());
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut down = w.entry("down.webhook.test", "/record", "down", "CREATE", "");
    down = down.replace(&format!(":{}/", w.port), &format!(":{closed}/"));
    let ignored = down
        .replace("down.webhook.test", "ignored.webhook.test")
        .replace("hooks: down", "hooks: ignored")
        + "  failurePolicy: Ignore\n";
    let slow = w.entry(
        "slow.webhook.test",
        "/slow",
        "slow",
        "CREATE",
        "  timeoutSeconds: 1\n",
    );
    let wrong = w.entry("uid.webhook.test", "/wrong-uid", "wrong", "CREATE", "");
    let yaml = format!(
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: failing\nwebhooks:\n{down}{ignored}{slow}{wrong}"
    );
    let f = c.write("failing.yaml", &yaml);
    c.ok(&["apply", "-f", f.to_str().unwrap()]).await;
    for ns in ["down", "ignored", "slow", "wrong"] {
        c.namespace(ns, ns).await;
    }

    let err = c.fails(&["-n", "down", "create", "configmap", "x"]).await;
    assert!(
        err.contains(r#"failed calling webhook "down.webhook.test": failed to call webhook: Post"#)
            && err.contains("connection refused"),
        "{err}"
    );
    c.ok(&["-n", "ignored", "create", "configmap", "x"]).await;
    let err = c.fails(&["-n", "slow", "create", "configmap", "x"]).await;
    assert!(err.contains("context deadline exceeded"), "{err}");
    let err = c.fails(&["-n", "wrong", "create", "configmap", "x"]).await;
    assert!(
        err.contains("received invalid webhook response: expected response.uid="),
        "{err}"
    );
    for ns in ["down", "slow", "wrong"] {
        c.fails(&["-n", ns, "get", "configmap", "x"]).await;
    }

    // Bad configurations are refused with the field that is wrong.
    let bad = c.write(
        "bad.yaml",
        "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: bad\nwebhooks:\n- name: bad.webhook.test\n  clientConfig:\n    url: http://127.0.0.1/\n  sideEffects: Some\n  admissionReviewVersions: [v1]\n",
    );
    let err = c.fails(&["apply", "-f", bad.to_str().unwrap()]).await;
    assert!(
        err.contains("webhooks[0].clientConfig.url") && err.contains("webhooks[0].sideEffects"),
        "{err}"
    );
    // The webhooks never see webhook configurations: deleting the failing ones works.
    c.ok(&["delete", "validatingwebhookconfiguration", "failing"])
        .await;
    c.ok(&["-n", "down", "create", "configmap", "x"]).await;
}
