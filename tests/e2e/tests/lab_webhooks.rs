//! Tier 4: an admission webhook served by a pod behind a Service in a running lab, as
//! a mesh injector is: the lab's API server calls it at the Service's cluster IP from
//! a node's namespace (through the agent's service proxy, to whichever node runs the
//! pod), over TLS verified against the configuration's `caBundle`. The webhook server
//! is Python's own HTTPS (`lab/apiserver/tests/data/admission_webhook.py`).

#![allow(clippy::disallowed_methods)] // runs kubectl

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use e2e::running::RunningLab;
use e2e::wait_until;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

const WAIT: Duration = Duration::from_secs(90);

const SERVER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: hooks, namespace: webhook-system, labels: {app: hooks}}
spec:
  terminationGracePeriodSeconds: 1
  volumes:
  - {name: script, configMap: {name: hook-script}}
  - {name: tls, secret: {secretName: hook-tls}}
  containers:
  - name: hooks
    image: python:3
    command: ["python3", "ROOT/script/admission_webhook.py", "ROOT/tls/tls.crt", "ROOT/tls/tls.key", "/dev/null", "0.0.0.0:8443"]
    volumeMounts:
    - {name: script, mountPath: ROOT/script}
    - {name: tls, mountPath: ROOT/tls}
    readinessProbe:
      tcpSocket: {port: 8443}
      periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: hooks, namespace: webhook-system}
spec:
  selector: {app: hooks}
  ports:
  - {port: 443, targetPort: 8443}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: label}
webhooks:
- name: label.webhook.test
  clientConfig:
    service: {namespace: webhook-system, name: hooks, path: /label}
    caBundle: CA_BUNDLE
  rules:
  - operations: [CREATE]
    apiGroups: [""]
    apiVersions: [v1]
    resources: [configmaps, pods]
  namespaceSelector:
    matchLabels: {hooks: mutate}
  sideEffects: None
  admissionReviewVersions: [v1]
"#;

#[test]
fn a_webhook_behind_a_service_mutates_what_its_namespaces_create() {
    let lab = RunningLab::up(2);
    let root = format!("/kubewire-webhook-{}", std::process::id());

    // The serving certificate for hooks.webhook-system.svc, from a CA of the test's.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["hooks.webhook-system.svc".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (crt, pem) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../lab/apiserver/tests/data/admission_webhook.py");

    lab.kubectl(&["create", "namespace", "webhook-system"]);
    lab.kubectl(&[
        "-n",
        "webhook-system",
        "create",
        "secret",
        "tls",
        "hook-tls",
        &format!("--cert={}", crt.display()),
        &format!("--key={}", pem.display()),
    ]);
    lab.kubectl(&[
        "-n",
        "webhook-system",
        "create",
        "configmap",
        "hook-script",
        &format!("--from-file={}", script.display()),
    ]);
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_cert.pem());
    lab.apply(&SERVER.replace("ROOT", &root).replace("CA_BUNDLE", &bundle));
    lab.kubectl(&[
        "-n",
        "webhook-system",
        "wait",
        "--for=condition=Ready",
        "pod/hooks",
        "--timeout=90s",
    ]);
    lab.kubectl(&["create", "namespace", "mutated"]);
    lab.kubectl(&["label", "namespace", "mutated", "hooks=mutate"]);
    lab.kubectl(&["create", "namespace", "plain"]);

    // The Service's endpoints reach the node's proxy a moment after the pod is ready;
    // until then the webhook cannot be called and the create fails (failurePolicy Fail).
    let mut n = 0;
    let mut last = String::new();
    assert!(
        wait_until(WAIT, || {
            n += 1;
            let out = e2e::cluster::kubectl(
                &lab.kubeconfig,
                &["-n", "mutated", "create", "configmap", &format!("try-{n}")],
            );
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            out.status.success()
        }),
        "the webhook was never reached: {last}"
    );
    let cm = lab.json(&["-n", "mutated", "get", "configmap", &format!("try-{n}")]);
    assert_eq!(
        cm["metadata"]["labels"]["webhook.test/labelled"], "yes",
        "{cm}"
    );

    // A pod is mutated before it is stored, and runs.
    lab.kubectl(&[
        "-n",
        "mutated",
        "run",
        "web",
        "--image=busybox",
        "--restart=Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
    let pod = lab.json(&["-n", "mutated", "get", "pod", "web"]);
    assert_eq!(pod["metadata"]["labels"]["webhook.test/labelled"], "yes");
    assert_eq!(pod["metadata"]["labels"]["run"], "web");
    lab.kubectl(&[
        "-n",
        "mutated",
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "--timeout=90s",
    ]);

    // A namespace the selector does not pick is left alone.
    lab.kubectl(&["-n", "plain", "create", "configmap", "one"]);
    let plain = lab.json(&["-n", "plain", "get", "configmap", "one"]);
    assert!(plain["metadata"]["labels"].is_null(), "{plain}");

    lab.kubectl(&["delete", "mutatingwebhookconfiguration", "label"]);
    for (ns, pod) in [("mutated", "web"), ("webhook-system", "hooks")] {
        lab.kubectl(&["-n", ns, "delete", "pod", pod, "--timeout=60s"]);
    }
    assert!(
        wait_until(WAIT, || !Path::new(&root).exists()),
        "{root} is left on the host"
    );
}
