//! Tier 4: the talk's lab step 4 through the gateway, exactly as the slides show it. The
//! Ingress `web-ingress` (class `ambassador`) sends `/engine` to `engine`, and Emissary's
//! `Mapping` `quote-backend` sends `/backend/` to `quote` with its added headers. curl runs
//! in `outside` and reaches the gateway at the LoadBalancer address that the Ingress's status
//! names. The backends are the lab's whoami workloads, which echo the request they got.

use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

/// The talk's Ingress, from `examples/`, unchanged.
const TALK: &[&str] = &["step4-outside-access/ingress-web-ingress.yaml"];

/// The talk's Mapping as the slide prints it: refused by Emissary's own v3alpha1 schema,
/// which allows added headers only as `{value: ...}`.
const SLIDE_MAPPING: &[&str] = &["step4-outside-access/mapping-quote-backend.yaml"];

/// The same Mapping with its headers in the object form.
const MAPPING: &[&str] = &["step4-outside-access/corrected/mapping-quote-backend.yaml"];

/// The Services the talk's Ingress and Mapping name, with whoami pods behind them.
const BACKENDS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: engine
spec:
  replicas: 2
  selector:
    matchLabels: {app: engine}
  template:
    metadata:
      labels: {app: engine}
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: engine
spec:
  selector: {app: engine}
  ports:
  - port: 80
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: quote
spec:
  replicas: 1
  selector:
    matchLabels: {app: quote}
  template:
    metadata:
      labels: {app: quote}
    spec:
      containers:
      - name: web
        image: nginx
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: quote
spec:
  selector: {app: quote}
  ports:
  - port: 80
"#;

/// `outside`'s address on the underlay.
const OUTSIDE: &str = "198.18.0.254";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// curl from `outside`: the body, a newline and the status code.
fn get(lab: &RunningLab, url: &str) -> String {
    stdout(&lab.exec(
        "outside",
        &["curl", "-s", "--max-time", "5", "-w", "\n%{http_code}", url],
    ))
}

#[test]
fn talk_step_four_ingress_and_mapping_through_the_gateway() {
    let lab = RunningLab::up(2);
    lab.apply(BACKENDS);
    lab.apply(&e2e::examples(TALK));
    // The slide's Mapping is refused as kube-apiserver refuses it with Emissary's CRD,
    // naming the field, and nothing is stored.
    let refused = lab.try_apply(&e2e::examples(SLIDE_MAPPING));
    assert!(
        !refused.status.success(),
        "the slide's Mapping was accepted"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("add_request_headers.x-test-proto"), "{err}");
    assert!(
        lab.kubectl(&["get", "mappings.getambassador.io", "-o", "name"])
            .trim()
            .is_empty(),
        "a refused Mapping was stored"
    );
    lab.apply(&e2e::examples(MAPPING));
    for sel in ["app=engine", "app=quote"] {
        assert!(
            wait_until(Duration::from_secs(90), || !lab
                .running_pods(sel)
                .is_empty()),
            "{sel}: {}",
            lab.kubectl(&["get", "pods", "-A", "-o", "wide"])
        );
    }
    let engines: Vec<String> = lab
        .running_pods("app=engine")
        .into_iter()
        .map(|p| p.0)
        .collect();

    // The gateway writes its LoadBalancer address into the Ingress's status.
    let address = || {
        lab.json(&["get", "ingress", "web-ingress"])["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_owned)
    };
    assert!(
        wait_until(Duration::from_secs(60), || address().is_some()),
        "no address in the Ingress status: {}\n{}",
        lab.kubectl(&["get", "ingress", "web-ingress", "-o", "yaml"]),
        lab.kubectl(&["get", "pods,svc", "-n", "kube-system", "-o", "wide"])
    );
    let ip = address().unwrap();
    let svc = lab.json(&[
        "get",
        "svc",
        "-n",
        "kube-system",
        "-l",
        "app.kubernetes.io/name=kubewire-gateway",
    ]);
    assert_eq!(
        svc["items"][0]["status"]["loadBalancer"]["ingress"][0]["ip"].as_str(),
        Some(ip.as_str()),
        "the Ingress's address is the gateway Service's"
    );
    let curl = |path: &str| get(&lab, &format!("http://{ip}{path}"));

    // The Ingress: `/engine` (Prefix) reaches an engine pod, also below it, not beside it.
    assert!(
        wait_until(Duration::from_secs(30), || {
            let body = curl("/engine");
            body.ends_with("\n200") && engines.iter().any(|p| body.contains(p))
        }),
        "/engine: {}",
        curl("/engine")
    );
    let below = curl("/engine/parts?x=1");
    assert!(below.contains("GET /engine/parts?x=1 "), "{below}");
    assert!(curl("/enginex").ends_with("\n404"), "{}", curl("/enginex"));

    // The Mapping: `/backend/` reaches quote with the prefix rewritten to `/` (Emissary's
    // default) and the headers the slide adds, `x-test-ip` being outside's address.
    assert!(
        wait_until(Duration::from_secs(30), || curl("/backend/")
            .ends_with("\n200")),
        "/backend/: {}",
        curl("/backend/")
    );
    let body = curl("/backend/quotes/1");
    assert!(body.contains("GET /quotes/1 "), "{body}");
    for want in [
        "X-Test-Proto: HTTP/1.1".to_owned(),
        format!("X-Test-Ip: {OUTSIDE}"),
        "X-Test-Static: This is a test header".to_owned(),
        "X-Test-Static-2: The test header".to_owned(),
        "X-Test-Object: This the value".to_owned(),
        format!("X-Envoy-External-Address: {OUTSIDE}"),
    ] {
        assert!(body.contains(&want), "{want} missing from:\n{body}");
    }
    // Neither route catches what the other serves.
    assert!(curl("/backend").ends_with("\n404"), "{}", curl("/backend"));
}

/// A Gateway of class `kubewire` with an HTTP listener on 8080 and an HTTPRoute to the
/// talk's `engine`: the gateway adds the port to its own Service.
const GATEWAY_8080: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: alt-port}
spec:
  gatewayClassName: kubewire
  listeners:
  - {name: alt, protocol: HTTP, port: 8080}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: engine-alt}
spec:
  parentRefs: [{name: alt-port}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /alt}}]
    backendRefs: [{name: engine, port: 80}]
"#;

#[test]
fn a_gateway_gets_a_service_and_address_of_its_own_with_its_listeners_port() {
    let lab = RunningLab::up(2);
    lab.apply(BACKENDS);
    lab.apply(GATEWAY_8080);
    assert!(
        wait_until(Duration::from_secs(90), || !lab
            .running_pods("app=engine")
            .is_empty()),
        "{}",
        lab.kubectl(&["get", "pods", "-A", "-o", "wide"])
    );
    let ip = lab.gateway_address("alt-port");
    // The Gateway's own LoadBalancer Service, beside the gateway's, found by its label.
    let gateway_services = || {
        lab.kubectl(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "-l",
            "gateway.kubewire.io/gateway",
            "-o",
            "jsonpath={range .items[*]}{.metadata.annotations.gateway\\.kubewire\\.io/gateway} {.spec.ports[*].name} {.status.loadBalancer.ingress[0].ip}{end}",
        ])
    };
    assert_eq!(
        gateway_services(),
        format!("default/alt-port listener-8080 {ip}")
    );
    let main_ports = || {
        lab.kubectl(&[
            "get",
            "svc",
            "-n",
            "kube-system",
            "kubewire-gateway",
            "-o",
            "jsonpath={.spec.ports[*].name} {.status.loadBalancer.ingress[0].ip}",
        ])
    };
    assert_eq!(
        main_ports(),
        "http https 198.18.0.250",
        "the gateway's own Service is the install's, and its address is not the Gateway's"
    );
    let curl = || get(&lab, &format!("http://{ip}:8080/alt/x"));
    assert!(
        wait_until(Duration::from_secs(30), || curl().ends_with("\n200")),
        "{}",
        curl()
    );
    assert!(curl().contains("GET /alt/x "), "{}", curl());

    // The Gateway gone, its Service goes; the install's stays.
    lab.kubectl(&["delete", "gateway", "alt-port"]);
    assert!(
        wait_until(Duration::from_secs(30), || gateway_services().is_empty()),
        "{}",
        gateway_services()
    );
    assert_eq!(main_ports(), "http https 198.18.0.250");
}
