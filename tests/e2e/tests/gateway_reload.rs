//! Tier 4: the gateway takes new routes, endpoints and certificates while wrk loads it
//! from `outside`, and no request fails: the configuration is swapped in memory, open
//! connections keep being served, and an endpoint that leaves its Service (its pod
//! relabelled, still running) finishes what it has in flight.

#![allow(clippy::disallowed_methods)] // runs openssl to make certificates

use std::process::Command;
use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;

const APP: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: engine}
spec:
  replicas: 2
  selector:
    matchLabels: {app: engine}
  template:
    metadata:
      labels: {app: engine}
    spec:
      containers:
      - {name: web, image: nginx, ports: [{containerPort: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: engine}
spec:
  selector: {app: engine}
  ports: [{port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: reload}
spec:
  gatewayClassName: kubewire
  listeners:
  - {name: http, protocol: HTTP, port: 80}
  - name: https
    protocol: HTTPS
    port: 443
    tls: {certificateRefs: [{name: cert}]}
"#;

/// The route under load, version `i`: its header and its `i` extra routes change.
fn route(i: usize) -> String {
    let mut rules = String::from(
        "  - matches: [{path: {type: PathPrefix, value: /r}}]\n    backendRefs: [{name: engine, port: 80}]\n",
    );
    rules.push_str(&format!(
        "    filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: x-version, value: v{i}}}]}}}}]\n"
    ));
    for j in 0..i {
        rules.push_str(&format!(
            "  - matches: [{{path: {{type: Exact, value: /extra-{j}}}}}]\n    backendRefs: [{{name: engine, port: 80}}]\n"
        ));
    }
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: under-load}}\nspec:\n  parentRefs: [{{name: reload}}]\n  rules:\n{rules}"
    )
}

/// A TLS Secret `cert` for `cn`, its key and certificate made by openssl, as YAML.
fn certificate(lab: &RunningLab, dir: &std::path::Path, cn: &str) -> String {
    let (key, crt) = (dir.join(format!("{cn}.key")), dir.join(format!("{cn}.crt")));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.kubectl(&[
        "create",
        "secret",
        "tls",
        "cert",
        &format!("--cert={}", crt.display()),
        &format!("--key={}", key.display()),
        "--dry-run=client",
        "-o",
        "yaml",
    ])
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The number wrk printed after `label`, if any.
fn count(report: &str, label: &str) -> Option<u64> {
    let line = report.lines().find(|l| l.trim_start().starts_with(label))?;
    line.split_whitespace().find_map(|w| w.parse().ok())
}

#[test]
fn routes_endpoints_and_certificates_change_under_load_with_no_failed_request() {
    let lab = RunningLab::up(2);
    let dir = tempfile::tempdir().unwrap();
    lab.apply(&certificate(&lab, dir.path(), "first.example"));
    lab.apply(APP);
    lab.apply(&route(0));
    let ip = lab.gateway_address("reload");
    let curl = |url: &str| {
        let out = lab.exec(
            "outside",
            &[
                "curl",
                "-sk",
                "--max-time",
                "5",
                "-w",
                "\n%{http_code}",
                url,
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // curl -v tells the certificate's subject.
    let subject = |url: &str| {
        text(&lab.exec(
            "outside",
            &[
                "curl",
                "-sk",
                "-v",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                url,
            ],
        ))
    };
    let (http, https) = (format!("http://{ip}/r"), format!("https://{ip}/r"));
    for url in [&http, &https] {
        assert!(
            wait_until(Duration::from_secs(90), || curl(url).ends_with("\n200")),
            "{url}: {}",
            curl(url)
        );
    }
    assert!(
        subject(&https).contains("CN=first.example"),
        "{}",
        subject(&https)
    );

    // Long enough for every change below on a busy CI machine, where the ten applies,
    // the scaling and the relabelling took more than 15 s.
    let load = |url: &str| {
        text(&lab.exec(
            "outside",
            &["wrk", "-t1", "-c8", "-d30s", "--timeout", "5s", url],
        ))
    };
    let (plain, tls) = std::thread::scope(|s| {
        let plain = s.spawn(|| load(&http));
        let tls = s.spawn(|| load(&https));
        std::thread::sleep(Duration::from_secs(2));
        // Routes: ten new versions, each with one more route and a new header.
        for i in 1..=10 {
            lab.apply(&route(i));
            std::thread::sleep(Duration::from_millis(200));
        }
        // Endpoints: two more, then one leaves the Service while it keeps running.
        lab.kubectl(&["scale", "deployment", "engine", "--replicas=4"]);
        assert!(
            wait_until(Duration::from_secs(8), || lab.endpoint_ips("engine").len()
                == 4),
            "{:?}",
            lab.endpoint_ips("engine")
        );
        let (leaving, leaving_ip, _) = lab.running_pods("app=engine").remove(0);
        lab.kubectl(&["label", "pod", &leaving, "app=engine-out", "--overwrite"]);
        assert!(
            wait_until(Duration::from_secs(4), || !lab
                .endpoint_ips("engine")
                .contains(&leaving_ip)),
            "{leaving} ({leaving_ip}) still an endpoint"
        );
        // The certificate.
        lab.apply(&certificate(&lab, dir.path(), "second.example"));
        // Every change above came while both loads were still running.
        assert!(
            !plain.is_finished() && !tls.is_finished(),
            "the load ended before the changes did"
        );
        (plain.join().unwrap(), tls.join().unwrap())
    });
    // On failure: the gateway's access log lines of what did not answer 200.
    let failed = || {
        let log = lab.kubectl(&[
            "-n",
            "kube-system",
            "logs",
            "-l",
            "app.kubernetes.io/name=kubewire-gateway",
            "--tail=-1",
        ]);
        log.lines()
            .filter(|l| l.contains("response_code") && !l.contains("response_code=200"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    for (what, report) in [("http", &plain), ("https", &tls)] {
        eprintln!("wrk {what}:\n{report}");
        let requests = report
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok());
        assert!(requests.is_some_and(|n| n > 100), "{what}: {report}");
        assert_eq!(
            count(report, "Non-2xx or 3xx responses:"),
            None,
            "{what}: {report}\n{}",
            failed()
        );
        assert!(!report.contains("Socket errors"), "{what}: {report}");
    }
    // Every change took: the last route version, the new certificate.
    assert!(
        wait_until(Duration::from_secs(20), || subject(&https)
            .contains("CN=second.example")),
        "{}",
        subject(&https)
    );
    let body = curl(&http);
    assert!(body.contains("X-Version: v10"), "{body}");
    assert!(curl(&format!("http://{ip}/extra-9")).ends_with("\n200"));
}
