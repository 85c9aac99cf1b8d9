//! Tier 4: LoadBalancer address allocation in a running lab, through kubectl as a user
//! sees it: the talk's `emissary-ingress` Service gets an address from the lab's default
//! pool (EXTERNAL-IP in `kubectl get svc`), and MetalLB's rules hold — requested
//! addresses, exhaustion, sharing, dual stack, pool change and deletion, two Services
//! racing for one address, a restart of the control plane — each refusal told as a
//! kube-style Event on the Service. Reaching the addresses from `outside` needs their
//! announcement and is tested with it.

use std::time::Duration;

use e2e::running::RunningLab;
use e2e::wait_until;
use serde_json::Value;

/// The talk's LoadBalancer Service, from `examples/`.
const TALK: &[&str] = &["step4-outside-access/service-emissary-ingress.yaml"];
const WAIT: Duration = Duration::from_secs(20);

/// The addresses in a Service's `status.loadBalancer.ingress`.
fn addresses(lab: &RunningLab, svc: &str) -> Vec<String> {
    let s = lab.json(&["get", "service", svc]);
    s["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(str::to_owned))
        .collect()
}

/// Waits until `svc` holds exactly `want` (in order).
fn wait_for_addresses(lab: &RunningLab, svc: &str, want: &[&str]) {
    assert!(
        wait_until(WAIT, || addresses(lab, svc) == want),
        "{svc}: {:?}, want {want:?}\n{}",
        addresses(lab, svc),
        lab.kubectl(&["describe", "service", svc])
    );
}

/// The (type, reason, message) of every Event about Service `svc`.
fn events(lab: &RunningLab, svc: &str) -> Vec<(String, String, String)> {
    let list = lab.json(&["get", "events"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == "Service" && e["involvedObject"]["name"] == svc)
        .map(|e| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (s(&e["type"]), s(&e["reason"]), s(&e["message"]))
        })
        .collect()
}

/// Waits for an Event about `svc` with `reason` whose message contains `text`.
fn wait_for_event(lab: &RunningLab, svc: &str, reason: &str, text: &str) {
    assert!(
        wait_until(WAIT, || events(lab, svc)
            .iter()
            .any(|e| e.1 == reason && e.2.contains(text))),
        "no {reason} event with {text:?} for {svc}: {:?}",
        events(lab, svc)
    );
}

/// A LoadBalancer Service `name` on `port`/TCP with more YAML under `metadata` and
/// `spec` (indented for them).
fn service(name: &str, port: u16, metadata: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{metadata}spec:\n  type: LoadBalancer\n  selector:\n    app: {name}\n  ports:\n  - port: {port}\n    protocol: TCP\n{spec}---\n"
    )
}

#[test]
fn the_talks_service_gets_an_address_and_metallbs_rules_hold() {
    let lab = RunningLab::up(1);

    // The talk's Service, unchanged: the first address of the default pool, shown by
    // `kubectl get svc` as its EXTERNAL-IP, with the pool annotation the announcers
    // read and an IPAllocated event.
    lab.apply(&e2e::examples(TALK));
    wait_for_addresses(&lab, "emissary-ingress", &["198.18.0.200"]);
    let table = lab.kubectl(&["get", "svc", "emissary-ingress"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let col = header.iter().position(|h| *h == "EXTERNAL-IP").unwrap();
    assert_eq!(row[col], "198.18.0.200", "{table}");
    let svc = lab.json(&["get", "service", "emissary-ingress"]);
    assert_eq!(
        svc["metadata"]["annotations"]["metallb.io/ip-allocated-from-pool"],
        "default"
    );
    assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    wait_for_event(
        &lab,
        "emissary-ingress",
        "IPAllocated",
        r#"["198.18.0.200"]"#,
    );
    let pools = lab.kubectl(&["-n", "metallb-system", "get", "ipaddresspools"]);
    assert!(pools.contains("198.18.0.200-198.18.0.250"), "{pools}");
    // Two addresses in use: the talk's Service's and the gateway's own (198.18.0.250).
    assert!(
        wait_until(WAIT, || lab.json(&[
            "-n",
            "metallb-system",
            "get",
            "ipaddresspool",
            "default"
        ])["status"]["assignedIPv4"]
            == 2),
        "{}",
        lab.kubectl(&[
            "-n",
            "metallb-system",
            "get",
            "ipaddresspool",
            "default",
            "-o",
            "yaml"
        ])
    );

    // `lab status` shows the pool's usage and the Service's address.
    let status = e2e::kubewire_ok(&["lab", "status", "--name", &lab.name]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("default ") && l.contains("2/51")),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("default/emissary-ingress") && l.contains("198.18.0.200")),
        "{status}"
    );

    // Requested addresses: spec.loadBalancerIP and MetalLB's annotation; one outside
    // every pool is refused and the Service stays pending.
    let mut m = service("asked", 80, "", "  loadBalancerIP: 198.18.0.240\n");
    m += &service(
        "annotated",
        80,
        "  annotations:\n    metallb.io/loadBalancerIPs: 198.18.0.241\n",
        "",
    );
    m += &service("nowhere", 80, "", "  loadBalancerIP: 192.0.2.99\n");
    lab.apply(&m);
    wait_for_addresses(&lab, "asked", &["198.18.0.240"]);
    wait_for_addresses(&lab, "annotated", &["198.18.0.241"]);
    wait_for_event(
        &lab,
        "nowhere",
        "AllocationFailed",
        "is not allowed in config",
    );
    assert!(addresses(&lab, "nowhere").is_empty());
    let row = lab.kubectl(&["get", "svc", "nowhere"]);
    assert!(row.contains("<pending>"), "{row}");

    // Two Services asking for one address at once: exactly one gets it, the other is
    // told the address is in use.
    let mut m = service("race-a", 80, "", "  loadBalancerIP: 198.18.0.230\n");
    m += &service("race-b", 80, "", "  loadBalancerIP: 198.18.0.230\n");
    lab.apply(&m);
    assert!(
        wait_until(WAIT, || {
            let (a, b) = (addresses(&lab, "race-a"), addresses(&lab, "race-b"));
            (a.is_empty() != b.is_empty()) && [a, b].concat() == ["198.18.0.230"]
        }),
        "{}",
        lab.kubectl(&["get", "svc"])
    );
    let loser = if addresses(&lab, "race-a").is_empty() {
        "race-a"
    } else {
        "race-b"
    };
    wait_for_event(
        &lab,
        loser,
        "AllocationFailed",
        r#"address "198.18.0.230" is in use"#,
    );
    assert!(
        events(&lab, loser).iter().all(|e| e.1 != "IPAllocated"),
        "{:?}",
        events(&lab, loser)
    );

    // Sharing: the same key and other ports share; a clashing port does not.
    let shared = "  annotations:\n    metallb.io/allow-shared-ip: dns\n";
    let mut m = service("dns-a", 53, shared, "  loadBalancerIP: 198.18.0.235\n");
    m += &service("dns-b", 853, shared, "  loadBalancerIP: 198.18.0.235\n");
    m += &service("dns-c", 53, shared, "  loadBalancerIP: 198.18.0.235\n");
    lab.apply(&m);
    wait_for_addresses(&lab, "dns-a", &["198.18.0.235"]);
    wait_for_addresses(&lab, "dns-b", &["198.18.0.235"]);
    wait_for_event(
        &lab,
        "dns-c",
        "AllocationFailed",
        r#"port TCP/53 is already in use on "198.18.0.235""#,
    );
    assert!(addresses(&lab, "dns-c").is_empty());

    // Dual stack: one address of each family from the default pool.
    lab.apply(&service(
        "dual",
        80,
        "",
        "  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv4, IPv6]\n",
    ));
    assert!(
        wait_until(WAIT, || {
            let a = addresses(&lab, "dual");
            a.len() == 2 && a[0].starts_with("198.18.0.2") && a[1].starts_with("2001:2::")
        }),
        "{:?}",
        addresses(&lab, "dual")
    );

    // A pool of two, for Services that name it: the third is told it is exhausted, and
    // gets the address a deleted Service frees.
    lab.apply(
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: tiny\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.10-192.0.2.11]\n  autoAssign: false\n",
    );
    let tiny = "  annotations:\n    metallb.io/address-pool: tiny\n";
    let mut m = service("t1", 80, tiny, "");
    m += &service("t2", 80, tiny, "");
    lab.apply(&m);
    wait_for_addresses(&lab, "t1", &["192.0.2.10"]);
    wait_for_addresses(&lab, "t2", &["192.0.2.11"]);
    lab.apply(&service("t3", 80, tiny, ""));
    wait_for_event(
        &lab,
        "t3",
        "AllocationFailed",
        r#"no available IPs in pool "tiny""#,
    );
    lab.kubectl(&["delete", "service", "t1"]);
    wait_for_addresses(&lab, "t3", &["192.0.2.10"]);

    // The pool changes: the Service whose address left it moves, the other stays.
    lab.kubectl(&[
        "-n",
        "metallb-system",
        "patch",
        "ipaddresspool",
        "tiny",
        "--type=merge",
        "-p",
        r#"{"spec":{"addresses":["192.0.2.11/32","192.0.2.20/32"]}}"#,
    ]);
    wait_for_addresses(&lab, "t3", &["192.0.2.20"]);
    wait_for_event(&lab, "t3", "ClearAssignment", "not allowed by config");
    assert_eq!(addresses(&lab, "t2"), ["192.0.2.11"]);
    // It is deleted: its Services are withdrawn (address and annotation), nothing else.
    lab.kubectl(&["-n", "metallb-system", "delete", "ipaddresspool", "tiny"]);
    assert!(
        wait_until(WAIT, || addresses(&lab, "t2").is_empty()
            && addresses(&lab, "t3").is_empty()),
        "{}",
        lab.kubectl(&["get", "svc"])
    );
    let t2 = lab.json(&["get", "service", "t2"]);
    assert!(
        t2["metadata"]["annotations"]["metallb.io/ip-allocated-from-pool"].is_null(),
        "{t2}"
    );
    assert_eq!(addresses(&lab, "emissary-ingress"), ["198.18.0.200"]);
    assert_eq!(addresses(&lab, "asked"), ["198.18.0.240"]);

    // Another loadBalancerClass is left alone; ours is served.
    let mut m = service("theirs", 80, "", "  loadBalancerClass: example.com/other\n");
    m += &service("ours", 80, "", "  loadBalancerClass: kubewire.io/lb\n");
    lab.apply(&m);
    assert!(
        wait_until(WAIT, || addresses(&lab, "ours").len() == 1),
        "{}",
        lab.kubectl(&["get", "svc"])
    );
    assert!(addresses(&lab, "theirs").is_empty());
    assert!(events(&lab, "theirs").is_empty());

    // No address was given twice.
    let list = lab.json(&["get", "services"]);
    let mut seen: Vec<(String, String)> = Vec::new();
    for s in list["items"].as_array().unwrap() {
        let name = s["metadata"]["name"].as_str().unwrap().to_owned();
        let key = s["metadata"]["annotations"]["metallb.io/allow-shared-ip"]
            .as_str()
            .map(str::to_owned);
        for ip in addresses(&lab, &name) {
            let clash = seen
                .iter()
                .find(|(other, i)| *i == ip && key.is_none() && other != &name);
            assert!(clash.is_none(), "{ip} given to {name} and {clash:?}");
            seen.push((name.clone(), ip));
        }
    }
}

#[test]
fn addresses_survive_a_control_plane_restart() {
    let mut lab = RunningLab::up(1);
    let mut m = String::new();
    for name in ["r1", "r2", "r3"] {
        m += &service(name, 80, "", "");
    }
    lab.apply(&m);
    // Created together, they may be taken in any order: .200-.202 between them.
    for name in ["r1", "r2", "r3"] {
        assert!(
            wait_until(WAIT, || addresses(&lab, name).len() == 1),
            "{name}: {}",
            lab.kubectl(&["get", "svc"])
        );
    }
    let before: Vec<Vec<String>> = ["r1", "r2", "r3"]
        .iter()
        .map(|n| addresses(&lab, n))
        .collect();
    // The oldest goes: its address is free when the controller comes back.
    lab.kubectl(&["delete", "service", "r1"]);
    assert!(wait_until(WAIT, || lab.json(&["get", "services"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["metadata"]["name"] != "r1")));

    lab.restart_keeping_data();
    // A new Service created right after the restart never takes an address another holds.
    lab.apply(&service("r4", 80, "", ""));
    wait_for_addresses(&lab, "r4", &[before[0][0].as_str()]);
    for (i, name) in ["r2", "r3"].iter().enumerate() {
        assert_eq!(addresses(&lab, name), before[i + 1], "{name} moved");
    }
    // Nothing was cleared and given again.
    for name in ["r2", "r3"] {
        assert!(
            events(&lab, name).iter().all(|e| e.1 != "ClearAssignment"),
            "{name}: {:?}",
            events(&lab, name)
        );
    }
}

/// Runs `kubectl ARGS` expecting a refusal; returns its stderr.
fn refused(lab: &RunningLab, args: &[&str]) -> String {
    let out = e2e::cluster::kubectl(&lab.kubeconfig, args);
    assert!(!out.status.success(), "kubectl {args:?} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_pools_are_refused_with_metallbs_messages_and_change_nothing() {
    let lab = RunningLab::up(1);
    let dir = tempfile::tempdir().unwrap();
    let pools = || lab.kubectl(&["get", "ipaddresspools", "-A", "-o", "yaml"]);
    let before = pools();
    let webhook =
        r#"admission webhook "ipaddresspoolvalidationwebhook.metallb.io" denied the request: "#;
    let cases = [
        (
            "metallb-system",
            "spec:\n  addresses: [198.18.0.192/26]\n",
            r#"CIDR "198.18.0.192/26" in pool "bad" overlaps with already defined CIDR "198.18.0.200/29""#,
        ),
        (
            "metallb-system",
            "spec:\n  addresses: [10.0.0.0/33]\n",
            r#"parsing address pool bad: invalid CIDR "10.0.0.0/33" in pool "bad": invalid CIDR "10.0.0.0/33""#,
        ),
        (
            "metallb-system",
            "spec:\n  addresses: [10.0.0.9-10.0.0.1]\n",
            r#"parsing address pool bad: invalid CIDR "10.0.0.9-10.0.0.1" in pool "bad": invalid IP range "10.0.0.9-10.0.0.1": start IP "10.0.0.9" is after the end IP "10.0.0.1""#,
        ),
        (
            "default",
            "spec:\n  addresses: [10.0.0.0/24]\n",
            "resource must be created in metallb-system namespace",
        ),
    ];
    for (ns, spec, message) in cases {
        let file = dir.path().join("pool.yaml");
        std::fs::write(
            &file,
            format!("apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: bad\n  namespace: {ns}\n{spec}"),
        )
        .unwrap();
        let err = refused(&lab, &["apply", "-f", file.to_str().unwrap()]);
        assert!(err.contains("(Forbidden)"), "{err}");
        assert!(err.contains(&format!("{webhook}{message}")), "{err}");
    }
    // An unknown field: refused by the schema, as kube-apiserver's strict validation does.
    let file = dir.path().join("typo.yaml");
    std::fs::write(
        &file,
        "apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: typo\n  namespace: metallb-system\nspec:\n  adresses: [10.0.0.0/24]\n",
    )
    .unwrap();
    let err = refused(&lab, &["apply", "-f", file.to_str().unwrap()]);
    assert!(err.contains(r#"unknown field "spec.adresses""#), "{err}");
    // A change that would overlap is refused, and the pool stays as it was.
    let err = refused(
        &lab,
        &[
            "-n",
            "metallb-system",
            "patch",
            "ipaddresspool",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"addresses":["198.18.0.200-198.18.0.250","198.18.0.210/32"]}}"#,
        ],
    );
    assert!(err.contains("overlaps with already defined CIDR"), "{err}");
    let after = pools();
    let strip = |s: &str| -> String {
        s.lines()
            .filter(|l| {
                !l.contains("resourceVersion")
                    && !l.contains("assigned")
                    && !l.contains("available")
            })
            .collect()
    };
    assert_eq!(strip(&after), strip(&before));
}

#[test]
fn the_lab_config_file_sets_the_default_pool() {
    let lab = RunningLab::up_with(1, "loadBalancerPool: [198.18.0.64/30]\n");
    lab.apply(&e2e::examples(TALK));
    wait_for_addresses(&lab, "emissary-ingress", &["198.18.0.64"]);
    let pool = lab.json(&["-n", "metallb-system", "get", "ipaddresspool", "default"]);
    assert_eq!(
        pool["spec"]["addresses"],
        serde_json::json!(["198.18.0.64/30"])
    );
    let l2 = lab.json(&["-n", "metallb-system", "get", "l2advertisement", "default"]);
    assert_eq!(l2["spec"]["ipAddressPools"], serde_json::json!(["default"]));
}

#[test]
fn pools_select_services_by_namespace_labels_and_priority() {
    let lab = RunningLab::up(1);
    // Pools for a team's namespace (by its label) at two priorities, one for Services
    // labelled app=web, one that gives only what is asked for, and one avoiding .0/.255.
    lab.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n  labels:\n    team: a\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: team-low\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.64/30]\n  serviceAllocation:\n    priority: 20\n    namespaceSelectors:\n    - matchLabels:\n        team: a\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: team-high\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.68/32]\n  serviceAllocation:\n    priority: 10\n    namespaces: [team-a]\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: web\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.80/30]\n  serviceAllocation:\n    serviceSelectors:\n    - matchLabels:\n        app: web\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: manual\n  namespace: metallb-system\nspec:\n  addresses: [192.0.2.96/30]\n  autoAssign: false\n---\n\
         apiVersion: metallb.io/v1beta1\nkind: IPAddressPool\nmetadata:\n  name: careful\n  namespace: metallb-system\nspec:\n  addresses: [192.0.3.255-192.0.4.1]\n  avoidBuggyIPs: true\n  autoAssign: false\n",
    );
    let in_team = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n  type: LoadBalancer\n  ports:\n  - port: 80\n---\n"
        )
    };
    // The team's first two Services: the higher priority pool (one address), then the
    // lower.
    lab.apply(&in_team("api"));
    let team_addr = |name: &str| {
        let s = lab.json(&["-n", "team-a", "get", "service", name]);
        s["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        wait_until(WAIT, || team_addr("api") == "192.0.2.68"),
        "{}",
        team_addr("api")
    );
    lab.apply(&in_team("db"));
    assert!(
        wait_until(WAIT, || team_addr("db") == "192.0.2.64"),
        "{}",
        team_addr("db")
    );

    // A Service labelled app=web gets the web pool; others in default get the default
    // pool (the team's and web's pools are not theirs).
    lab.apply(&service("site", 80, "  labels:\n    app: web\n", ""));
    lab.apply(&service("plain", 80, "", ""));
    wait_for_addresses(&lab, "site", &["192.0.2.80"]);
    wait_for_addresses(&lab, "plain", &["198.18.0.200"]);

    // autoAssign: false gives only by name (the older annotation counts too) or by
    // address; avoidBuggyIPs skips .255 and .0.
    lab.apply(&service(
        "by-name",
        80,
        "  annotations:\n    metallb.universe.tf/address-pool: manual\n",
        "",
    ));
    wait_for_addresses(&lab, "by-name", &["192.0.2.96"]);
    lab.apply(&service(
        "careful",
        80,
        "  annotations:\n    metallb.io/address-pool: careful\n",
        "",
    ));
    wait_for_addresses(&lab, "careful", &["192.0.4.1"]);
    lab.apply(&service("buggy", 80, "", "  loadBalancerIP: 192.0.4.0\n"));
    wait_for_event(
        &lab,
        "buggy",
        "AllocationFailed",
        "is not allowed in config",
    );
    // A pool whose serviceAllocation leaves a Service out refuses it by name.
    lab.apply(&service(
        "wrong-pool",
        80,
        "  annotations:\n    metallb.io/address-pool: web\n",
        "",
    ));
    wait_for_event(
        &lab,
        "wrong-pool",
        "AllocationFailed",
        "pool web not compatible",
    );
}
