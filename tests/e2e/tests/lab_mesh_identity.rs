//! Tier 4: the mesh's identity in a running lab (`mesh: true`). The issuer runs as the
//! install's Deployment in kube-system; a pod gets a token for the issuer's audience
//! from a projected volume (with the trust bundle and its namespace beside it), makes
//! its key and CSR with `openssl`, asks the issuer over HTTPS with Python's `urllib`
//! (checking the issuer's certificate against the bundle, by its Service's DNS name),
//! and prints what it got with `openssl`.

#![allow(clippy::disallowed_methods)] // runs kubectl

use std::path::Path;
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

const WAIT: Duration = Duration::from_secs(120);

const CLIENT: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: web, namespace: demo}
---
apiVersion: v1
kind: Pod
metadata: {name: certify, namespace: demo}
spec:
  serviceAccountName: web
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  volumes:
  - name: work
    emptyDir: {}
  - name: identity
    projected:
      sources:
      - serviceAccountToken: {path: token, audience: identity.kubewire.io, expirationSeconds: 3600}
      - configMap: {name: trust, items: [{key: ca-bundle.crt, path: ca.crt}]}
      - downwardAPI: {items: [{path: namespace, fieldRef: {fieldPath: metadata.namespace}}]}
  containers:
  - name: certify
    image: busybox
    command:
    - sh
    - -ec
    - |
      cd ROOT/work
      test "$(cat ROOT/identity/namespace)" = demo
      openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out key.pem 2>/dev/null
      openssl req -new -key key.pem -subj /CN=anyone -out csr.pem
      python3 -c '
      import json, ssl, urllib.request
      ctx = ssl.create_default_context(cafile="ROOT/identity/ca.crt")
      body = json.dumps({"token": open("ROOT/identity/token").read(), "csr": open("csr.pem").read()})
      req = urllib.request.Request("https://kubewire-identity.kube-system.svc:8080/v1/certify", body.encode(), {"Content-Type": "application/json"})
      answer = json.load(urllib.request.urlopen(req, context=ctx, timeout=10))
      open("cert.pem", "w").write(answer["certificate"])
      print(answer["identity"])
      '
      openssl x509 -in cert.pem -noout -ext subjectAltName
      openssl x509 -in cert.pem -noout -pubkey > cert.pub
      openssl pkey -in key.pem -pubout > key.pub
      cmp cert.pub key.pub && echo same-key
    volumeMounts:
    - {name: work, mountPath: ROOT/work}
    - {name: identity, mountPath: ROOT/identity}
"#;

#[test]
fn a_meshed_pod_gets_its_spiffe_certificate_from_the_lab_issuer() {
    let lab = RunningLab::up_with(2, "mesh: true\n");
    lab.rollout("kube-system", "kubewire-identity");
    // The trust bundle the issuer published, copied where the pod can mount it.
    let bundle = lab.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "configmap",
        "kubewire-identity-trust-roots",
        "-o",
        "jsonpath={.data.ca-bundle\\.crt}",
    ]);
    assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");
    lab.kubectl(&["create", "namespace", "demo"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca-bundle.crt");
    std::fs::write(&file, &bundle).unwrap();
    lab.kubectl(&[
        "-n",
        "demo",
        "create",
        "configmap",
        "trust",
        &format!("--from-file={}", file.display()),
    ]);
    let root = format!("/kubewire-identity-{}", std::process::id());
    lab.apply(&CLIENT.replace("ROOT", &root));
    let mut phase = String::new();
    assert!(
        wait_until(WAIT, || {
            phase = lab.kubectl(&[
                "-n",
                "demo",
                "get",
                "pod",
                "certify",
                "-o",
                "jsonpath={.status.phase}",
            ]);
            phase == "Succeeded" || phase == "Failed"
        }),
        "the pod never finished"
    );
    let logs = lab.kubectl(&["-n", "demo", "logs", "certify"]);
    assert_eq!(phase, "Succeeded", "{logs}");
    assert!(
        logs.contains("spiffe://cluster.local/ns/demo/sa/web")
            && logs.contains("URI:spiffe://cluster.local/ns/demo/sa/web")
            && logs.contains("same-key"),
        "{logs}"
    );
    lab.kubectl(&["-n", "demo", "delete", "pod", "certify", "--timeout=60s"]);
    assert!(
        wait_until(WAIT, || !Path::new(&root).exists()),
        "{root} is left on the host"
    );
}
