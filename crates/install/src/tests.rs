use std::path::{Path, PathBuf};

use clap::Parser;
use serde_json::{Value, json};

use super::*;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn parse(args: &[OsString]) -> Config {
    Cli::try_parse_from(std::iter::once(OsString::from("install")).chain(args.iter().cloned()))
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

/// Choices that between them change every flag.
fn every_choice() -> Vec<Config> {
    let mut all = vec![Config::default()];
    all.extend(kustomize::components().into_iter().map(|c| c.config));
    all.extend(kustomize::overlays().into_iter().map(|o| o.config));
    all.push(Config {
        routing: RoutingMode::Vxlan,
        proxy: false,
        dns: false,
        image: "registry.example/kubewire:dev".into(),
        api_server: Some("[fd00::1]:6443".parse().unwrap()),
        service_cidrs: vec!["10.100.0.0/16".parse().unwrap()],
        cluster_cidrs: vec!["10.200.0.0/16".parse().unwrap()],
        cluster_domain: "lab.example".into(),
        mtu: Some(9000),
        cni_conf_dir: "/var/lib/rancher/k3s/agent/etc/cni/net.d".into(),
        cni_bin_dir: "/var/lib/rancher/k3s/data/cni".into(),
        cni_data_dir: Some("/var/lib/cni/kw".into()),
        policy_socket: Some("/run/kw/policy.sock".into()),
        dns_replicas: 3,
        lb: false,
        lb_controller_deployment: false,
        lb_pool: vec!["10.0.0.0/24".into(), "fd00::1-fd00::9".into()],
        gateway: false,
        gateway_address: Some("10.0.0.9".parse().unwrap()),
        mesh: true,
        mesh_default_inbound_policy: "cluster-authenticated".into(),
    });
    all
}

#[test]
fn flags_round_trip() {
    for cfg in every_choice() {
        assert_eq!(parse(&cfg.to_args()), cfg);
    }
    assert_eq!(parse(&[]), Config::default());
}

#[test]
fn api_server_addresses() {
    let a: ApiServer = "198.18.0.1:6443".parse().unwrap();
    assert_eq!(
        (a.host.as_str(), a.port, a.to_string().as_str()),
        ("198.18.0.1", 6443, "198.18.0.1:6443")
    );
    let v6: ApiServer = "https://[fd00::1]:6443/".parse().unwrap();
    assert_eq!(
        (v6.host.as_str(), v6.to_string().as_str()),
        ("fd00::1", "[fd00::1]:6443")
    );
    let name: ApiServer = "api.example:443".parse().unwrap();
    assert_eq!(name.host, "api.example");
    for bad in ["198.18.0.1", ":6443", "a:b", "fd00::1:6443", "x:0"] {
        assert!(bad.parse::<ApiServer>().is_err(), "{bad}");
    }
}

/// The daemons' own command lines: the container args parse with each daemon's Args
/// into exactly the Args the choices stand for.
#[test]
fn container_args_parse_with_each_daemons_flags() {
    for cfg in every_choice() {
        let agent = agent_container_args(&cfg);
        assert_eq!(agent[0], "agent");
        let mut argv: Vec<&str> = agent[1..].iter().map(String::as_str).collect();
        argv.extend(["--node-name", "node-7"]);
        let parsed: agent::Args = k8s::parse_flags(&argv);
        let mut want = cfg.agent_args();
        want.node_name = "node-7".into();
        assert_eq!(parsed, want, "{agent:?}");

        let dns = dns_container_args(&cfg);
        assert_eq!(dns[0], "dns");
        let argv: Vec<&str> = dns[1..].iter().map(String::as_str).collect();
        assert_eq!(
            k8s::parse_flags::<dns::Args>(&argv),
            cfg.dns_args(),
            "{dns:?}"
        );
    }
    let install = install_cni_container_args();
    assert_eq!(install, ["install-cni"]);
    let defaults: cni::install::InstallArgs = k8s::parse_flags(&[]);
    // The init container mounts the node's plugin directory where the flag looks.
    assert_eq!(defaults.cni_bin_dir, Path::new("/opt/cni/bin"));
}

#[test]
fn the_default_install_passes_no_flag_but_the_subcommand() {
    let cfg = Config::default();
    assert_eq!(agent_container_args(&cfg), ["agent"]);
    assert_eq!(dns_container_args(&cfg), ["dns"]);
    let vx = Config {
        routing: RoutingMode::Vxlan,
        proxy: false,
        cluster_domain: "lab.example".into(),
        ..Config::default()
    };
    assert_eq!(
        agent_container_args(&vx),
        ["agent", "--mode=vxlan", "--proxy=false"]
    );
    assert_eq!(
        dns_container_args(&vx),
        ["dns", "--cluster-domain=lab.example"]
    );
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The rules a ServiceAccount gets through the ClusterRoleBindings of `objects`.
fn rules_of(objects: &[Value], service_account: &str) -> Vec<Value> {
    objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRoleBinding")
        .filter(|b| {
            b["subjects"].as_array().unwrap().iter().any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == service_account
                    && s["namespace"] == NAMESPACE
            })
        })
        .flat_map(|b| {
            let role = find(
                objects,
                "ClusterRole",
                b["roleRef"]["name"].as_str().unwrap(),
            )
            .expect("the bound role is installed");
            role["rules"].as_array().unwrap().clone()
        })
        .collect()
}

#[test]
fn each_service_account_reads_only_what_its_daemon_watches() {
    let all = manifests(&Config::default());
    let read = |group: &str, resources: &[&str]| json!({"apiGroups": [group], "resources": resources, "verbs": ["list", "watch"]});
    let announcers = [
        read("", &["services"]),
        read("discovery.k8s.io", &["endpointslices"]),
        read(
            "metallb.io",
            &[
                "bfdprofiles",
                "bgpadvertisements",
                "bgppeers",
                "communities",
                "ipaddresspools",
                "l2advertisements",
            ],
        ),
        json!({"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}),
    ];
    let policy = [
        read("", &["namespaces", "pods"]),
        read("networking.k8s.io", &["networkpolicies"]),
        read("policy.networking.k8s.io", &["clusternetworkpolicies"]),
    ];
    let mut agent = vec![
        read("", &["nodes"]),
        policy[0].clone(),
        policy[1].clone(),
        policy[2].clone(),
        read("", &["services"]),
        read("discovery.k8s.io", &["endpointslices"]),
    ];
    agent.extend(announcers.clone());
    // Rules from several roles: their order is the bindings'.
    let sorted = |rules: Vec<Value>| {
        let mut r: Vec<String> = rules.iter().map(Value::to_string).collect();
        r.sort();
        r
    };
    assert_eq!(sorted(rules_of(&all, AGENT)), sorted(agent));
    assert_eq!(
        rules_of(&all, DNS),
        [
            read("", &["pods", "services"]),
            read("discovery.k8s.io", &["endpointslices"]),
        ]
    );
    // Without the proxy the agent reads Nodes, what network policy reads, and what the
    // announcers read.
    let no_proxy = manifests(&Config {
        proxy: false,
        ..Config::default()
    });
    let mut agent = vec![read("", &["nodes"])];
    agent.extend(policy);
    agent.extend(announcers);
    assert_eq!(sorted(rules_of(&no_proxy, AGENT)), sorted(agent));
    // Nothing writes cluster-wide but the announcer's Events, nothing reads Secrets,
    // no wildcard (the LoadBalancer controller and the gateway write: their own tests
    // below).
    for role in all.iter().filter(|o| {
        o["kind"] == "ClusterRole"
            && o["metadata"]["name"] != lb::LB_CONTROLLER
            && o["metadata"]["name"] != gateway::GATEWAY
    }) {
        let mut rules = role["rules"].as_array().unwrap().clone();
        rules.retain(|r| r["resources"] != json!(["events"]));
        let text = Value::Array(rules).to_string();
        for word in [
            "secrets", "\"*\"", "create", "update", "patch", "delete", "get",
        ] {
            assert!(!text.contains(word), "{}: {text}", describe(role));
        }
    }
    // The announcers write their ServiceL2Statuses and ServiceBGPStatuses in their own
    // namespace only.
    let role = find(&all, "Role", ANNOUNCER_ROLE).unwrap();
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let binding = find(&all, "RoleBinding", ANNOUNCER_ROLE).unwrap();
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["subjects"][0]["name"], AGENT);
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["apiGroups"], json!(["metallb.io"]));
        assert!(
            rule["resources"][0]
                .as_str()
                .unwrap()
                .starts_with("servicebgpstatuses")
                || rule["resources"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("servicel2statuses"),
            "{rule}"
        );
    }
}

/// The LoadBalancer controller writes only what MetalLB's controller writes: Service
/// status and annotations, Events, pool status; it reads no Secret and nothing else.
#[test]
fn the_lb_controller_writes_only_addresses_events_and_pool_status() {
    let all = manifests(&Config::default());
    let rules = rules_of(&all, lb::LB_CONTROLLER);
    let rule = |group: &str, res: &str, verbs: &[&str]| json!({"apiGroups": [group], "resources": [res], "verbs": verbs});
    assert_eq!(
        rules,
        [
            rule("", "services", &["get", "list", "watch", "patch"]),
            rule("", "services/status", &["patch", "update"]),
            rule("", "namespaces", &["list", "watch"]),
            rule("", "events", &["create", "patch"]),
            rule("metallb.io", "ipaddresspools", &["list", "watch"]),
            rule("metallb.io", "ipaddresspools/status", &["patch", "update"]),
        ]
    );
    // The CRDs are upstream's, unchanged, and the controller's Deployment runs one
    // replica at a time.
    let crds: Vec<&Value> = all
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition" && o["spec"]["group"] == "metallb.io")
        .collect();
    assert_eq!(crds.len(), 9);
    assert!(
        find(
            &all,
            "CustomResourceDefinition",
            "ipaddresspools.metallb.io"
        )
        .is_some()
    );
    let d = find(&all, "Deployment", lb::LB_CONTROLLER).unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["lb-controller"])
    );
    // Without it, nothing of MetalLB's API; with a pool, the pool and its advertisement.
    let none = manifests(&Config {
        lb: false,
        ..Config::default()
    });
    assert!(none.iter().all(|o| !lb::is_lb_object(o)));
    let pooled = manifests(&Config {
        lb_pool: vec!["10.0.0.0/28".into()],
        ..Config::default()
    });
    let pool = find(&pooled, "IPAddressPool", "default").unwrap();
    assert_eq!(pool["metadata"]["namespace"], "metallb-system");
    assert_eq!(pool["spec"]["addresses"], json!(["10.0.0.0/28"]));
    let l2 = find(&pooled, "L2Advertisement", "default").unwrap();
    assert_eq!(l2["spec"]["ipAddressPools"], json!(["default"]));
    // CRDs before the objects of their kinds.
    let pos = |kind: &str| pooled.iter().position(|o| o["kind"] == kind).unwrap();
    assert!(pos("CustomResourceDefinition") < pos("IPAddressPool"));
    assert!(pos("Namespace") < pos("IPAddressPool"));
}

#[test]
fn the_agent_daemonset_runs_everywhere_with_only_net_admin() {
    let cfg = Config {
        api_server: Some("10.0.0.1:6443".parse().unwrap()),
        ..Config::default()
    };
    let all = manifests(&cfg);
    let ds = find(&all, "DaemonSet", AGENT).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    assert_eq!(pod["serviceAccountName"], AGENT);
    let agent = &pod["containers"][0];
    assert_eq!(
        agent["securityContext"]["capabilities"],
        json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]})
    );
    assert_eq!(
        pod["initContainers"][0]["securityContext"]["capabilities"],
        json!({"drop": ["ALL"]})
    );
    assert_eq!(
        agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let cm = find(&all, "ConfigMap", API_SERVER_CONFIG_MAP).unwrap();
    assert_eq!(
        cm["data"],
        json!({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"})
    );
    assert_eq!(
        agent["envFrom"][0]["configMapRef"]["name"],
        API_SERVER_CONFIG_MAP
    );
    // No API server named: no ConfigMap, and the optional reference finds none.
    assert!(
        find(
            &manifests(&Config::default()),
            "ConfigMap",
            API_SERVER_CONFIG_MAP
        )
        .is_none()
    );
    // Every image is the one image.
    let images: Vec<&Value> = all
        .iter()
        .flat_map(|o| {
            let spec = &o["spec"]["template"]["spec"];
            ["initContainers", "containers"]
                .into_iter()
                .flat_map(move |l| spec[l].as_array().into_iter().flatten())
        })
        .map(|c| &c["image"])
        .collect();
    assert_eq!(images.len(), 5);
    assert!(images.iter().all(|i| **i == json!(DEFAULT_IMAGE)));
}

#[test]
fn dns_sits_at_the_tenth_address_of_the_first_service_range() {
    let all = manifests(&Config::default());
    let svc = find(&all, "Service", "kube-dns").unwrap();
    assert_eq!(svc["metadata"]["namespace"], "kube-system");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "PreferDualStack");
    let single = manifests(&Config {
        service_cidrs: vec!["10.100.0.0/16".parse().unwrap()],
        ..Config::default()
    });
    let svc = find(&single, "Service", "kube-dns").unwrap();
    assert_eq!(
        (&svc["spec"]["clusterIP"], &svc["spec"]["ipFamilyPolicy"]),
        (&json!("10.100.0.10"), &json!("SingleStack"))
    );
    assert!(find(&all, "PodDisruptionBudget", DNS).is_some());
    assert!(
        manifests(&Config {
            dns: false,
            ..Config::default()
        })
        .iter()
        .all(|o| o["metadata"]["name"] != "kube-dns" && o["metadata"]["name"] != DNS)
    );
}

/// `deploy/` is what the code generates. `KUBEWIRE_BLESS=1` (`make deploy`) writes it.
#[test]
fn deploy_is_up_to_date() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let tree = kustomize::deploy_tree();
    let bless = std::env::var_os("KUBEWIRE_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, content) in &tree {
        let at = root.join(path);
        if std::fs::read_to_string(&at).ok().as_deref() != Some(content.as_str()) {
            if bless {
                std::fs::create_dir_all(at.parent().unwrap()).unwrap();
                std::fs::write(&at, content).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    // And nothing else is there.
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(&root).unwrap().to_owned();
                if !tree.iter().any(|(t, _)| *t == rel) {
                    if bless {
                        std::fs::remove_file(&p).unwrap();
                    } else {
                        stale.push(format!("{} (not generated)", rel.display()));
                    }
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/ is not what crates/install generates: {stale:?}; run `make deploy`"
    );
}

/// The gateway reads what it routes (and TLS Secrets), writes only the status of what it
/// serves, and its Lease in its own namespace.
#[test]
fn the_gateway_reads_routes_and_writes_only_their_status() {
    let all = manifests(&Config::default());
    let rules = rules_of(&all, gateway::GATEWAY);
    // It creates its own GatewayClass, and writes nothing else but statuses.
    let create = json!({"apiGroups": ["gateway.networking.k8s.io"], "resources": ["gatewayclasses"], "verbs": ["create"]});
    assert!(rules.contains(&create));
    let rules: Vec<Value> = rules.into_iter().filter(|r| *r != create).collect();
    let text = Value::Array(rules.clone()).to_string();
    for word in ["\"*\"", "create", "update", "delete", "\"get\""] {
        assert!(!text.contains(word), "{text}");
    }
    for rule in &rules {
        let verbs = rule["verbs"].clone();
        let resources: Vec<&str> = rule["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        if verbs == json!(["patch"]) {
            assert!(resources.iter().all(|r| r.ends_with("/status")), "{rule}");
        } else {
            assert_eq!(verbs, json!(["list", "watch"]), "{rule}");
        }
    }
    let writes: Vec<String> = rules
        .iter()
        .filter(|r| r["verbs"] == json!(["patch"]))
        .flat_map(|r| {
            let group = r["apiGroups"][0].as_str().unwrap().to_string();
            r["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |x| format!("{group}/{}", x.as_str().unwrap()))
                .collect::<Vec<_>>()
        })
        .collect();
    // Every kind whose status the controller writes, and no other.
    let mut expected: Vec<String> = [
        ::gateway::status::Kind::Ingress,
        ::gateway::status::Kind::GatewayClass,
        ::gateway::status::Kind::Gateway,
        ::gateway::status::Kind::HttpRoute,
        ::gateway::status::Kind::GrpcRoute,
        ::gateway::status::Kind::TlsRoute,
        ::gateway::status::Kind::TcpRoute,
        ::gateway::status::Kind::UdpRoute,
        ::gateway::status::Kind::BackendTlsPolicy,
        ::gateway::status::Kind::Mapping,
    ]
    .iter()
    .map(|k| {
        let (group, _, _, plural) = k.api();
        format!("{group}/{plural}/status")
    })
    .collect();
    let mut got = writes.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    let role = find(&all, "Role", gateway::GATEWAY).unwrap();
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]},
            {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "patch", "delete"]},
        ])
    );
    let (lease_ns, _) = ::gateway::controller::DEFAULT_SERVICE
        .split_once('/')
        .unwrap();
    assert_eq!(
        lease_ns, NAMESPACE,
        "the Lease lives where the role allows it"
    );

    let d = find(&all, "Deployment", gateway::GATEWAY).unwrap();
    assert_eq!(d["spec"]["replicas"], 2);
    let args = d["spec"]["template"]["spec"]["containers"][0]["args"].clone();
    assert_eq!(args, json!(["gateway"]));
    let svc = find(&all, "Service", gateway::GATEWAY).unwrap();
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][1]["port"], 443);
    let default_class = find(&all, "IngressClass", gateway::CLASS).unwrap();
    assert_eq!(
        default_class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"],
        "true"
    );
    assert!(find(&all, "IngressClass", gateway::AMBASSADOR_CLASS).is_some());
    assert!(
        find(&all, "GatewayClass", gateway::CLASS).is_none(),
        "kubectl apply maps every object before the CRDs exist: the controller creates it"
    );
    assert_eq!(::gateway::controller::DEFAULT_GATEWAY_CLASS, gateway::CLASS);
    let crds: Vec<&str> = all
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    for name in [
        "httproutes.gateway.networking.k8s.io",
        "gateways.gateway.networking.k8s.io",
        "mappings.getambassador.io",
    ] {
        assert!(crds.contains(&name), "{name}");
    }
    let none = manifests(&Config {
        gateway: false,
        ..Config::default()
    });
    assert!(none.iter().all(|o| !gateway::is_gateway_object(o)));
    assert!(all.iter().any(gateway::is_gateway_object));
}

#[test]
fn the_cluster_network_policy_crd_comes_with_the_agent_unchanged() {
    let mut vendored: Value = serde_yaml_ng::from_str(include_str!(
        "../../policy/crds/network-policy-api-v0.2.0/policy.networking.k8s.io_clusternetworkpolicies.yaml"
    ))
    .unwrap();
    // All of it but the generator's empty status, which the API server writes.
    assert!(vendored.as_object_mut().unwrap().remove("status").is_some());
    for cfg in [
        Config::default(),
        Config {
            proxy: false,
            lb: false,
            gateway: false,
            dns: false,
            ..Config::default()
        },
    ] {
        let all = manifests(&cfg);
        let crd = find(
            &all,
            "CustomResourceDefinition",
            "clusternetworkpolicies.policy.networking.k8s.io",
        )
        .expect("the CRD is installed");
        assert_eq!(crd, &vendored);
        assert_eq!(crd["spec"]["versions"][0]["name"], policy::admin::VERSION);
    }
}

#[test]
fn webhooks_come_last_as_in_kustomizes_order() {
    let objects = manifests(&Config {
        mesh: true,
        ..Config::default()
    });
    assert_eq!(
        objects.last().unwrap()["kind"],
        "MutatingWebhookConfiguration",
        "after the injector that serves it"
    );
}

#[test]
fn the_mesh_identity_issuer_reviews_tokens_and_keeps_only_its_anchor() {
    let off = manifests(&Config::default());
    assert!(find(&off, "Deployment", mesh::IDENTITY).is_none());
    let objects = manifests(&Config {
        mesh: true,
        ..Config::default()
    });
    let d = find(&objects, "Deployment", mesh::IDENTITY).expect("the issuer's Deployment");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["mesh", "identity"]);
    // Its flags parse, and the name in its certificate is its Service's.
    let parsed: ::mesh::identity::Args = k8s::parse_flags(&args[2..]);
    assert_eq!(parsed.listen.port(), mesh::IDENTITY_PORT);
    assert_eq!(
        parsed.server_name,
        format!("{}.{NAMESPACE}.svc", mesh::IDENTITY)
    );
    assert_eq!(parsed.namespace, NAMESPACE);
    let svc = find(&objects, "Service", mesh::IDENTITY).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], mesh::IDENTITY_PORT);
    // TokenReviews through system:auth-delegator; secrets: its own, or a new one.
    let binding = objects
        .iter()
        .find(|o| {
            o["kind"] == "ClusterRoleBinding" && o["roleRef"]["name"] == "system:auth-delegator"
        })
        .expect("the auth-delegator binding");
    assert_eq!(binding["subjects"][0]["name"], mesh::IDENTITY);
    let role = find(&objects, "Role", mesh::IDENTITY).unwrap();
    for r in role["rules"].as_array().unwrap() {
        if r["resources"] == json!(["secrets"]) && r["verbs"] != json!(["create"]) {
            assert_eq!(r["resourceNames"], json!([mesh::IDENTITY]), "{r}");
        }
    }
}

#[test]
fn the_mesh_injector_is_called_for_pods_outside_kube_system_and_writes_only_its_ca() {
    let off = manifests(&Config::default());
    assert!(find(&off, "MutatingWebhookConfiguration", mesh::INJECTOR).is_none());
    assert_eq!(Config::default().agent_args().mesh_destination, None);
    let cfg = Config {
        mesh: true,
        ..Config::default()
    };
    let objects = manifests(&cfg);
    // The agents serve the proxies' discovery, and read the mesh's routes for it.
    assert_eq!(
        cfg.agent_args().mesh_destination.map(|a| a.port()),
        Some(::mesh::destination::PORT)
    );
    // The cluster's default inbound policy, given to the agents; a name that is no
    // policy refused with the choices.
    let deny = parse(&["--mesh".into(), "--mesh-default-inbound-policy=deny".into()]);
    assert!(
        agent_container_args(&deny).contains(&"--mesh-default-inbound-policy=deny".to_string())
    );
    assert!(
        !agent_container_args(&cfg)
            .iter()
            .any(|a| a.contains("default-inbound"))
    );
    let e = Cli::try_parse_from(["install", "--mesh-default-inbound-policy=open"]).unwrap_err();
    assert!(e.to_string().contains("all-authenticated"), "{e}");
    let agent = rules_of(&objects, AGENT);
    let routes = json!({"apiGroups": ["gateway.networking.k8s.io"],
        "resources": ["grpcroutes", "httproutes", "referencegrants"], "verbs": ["list", "watch"]});
    assert!(agent.contains(&routes), "{agent:?}");
    assert!(!rules_of(&off, AGENT).contains(&routes));
    let faults = json!({"apiGroups": ["mesh.kubewire.io"], "resources": ["httpfaults"], "verbs": ["list", "watch"]});
    assert!(agent.contains(&faults), "{agent:?}");
    assert!(
        objects
            .iter()
            .any(|o| o["kind"] == "CustomResourceDefinition"
                && o["metadata"]["name"] == "httpfaults.mesh.kubewire.io")
    );
    let policy = json!({"apiGroups": ["policy.linkerd.io"],
        "resources": ["authorizationpolicies", "httproutes", "meshtlsauthentications", "networkauthentications", "serverauthorizations", "servers"],
        "verbs": ["list", "watch"]});
    assert!(agent.contains(&policy), "{agent:?}");
    // Linkerd's policy CRDs, only with the mesh.
    let linkerd_crds = |objects: &[Value]| -> Vec<String> {
        let mut names: Vec<String> = objects
            .iter()
            .filter(|o| {
                o["kind"] == "CustomResourceDefinition" && o["spec"]["group"] == "policy.linkerd.io"
            })
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(
        linkerd_crds(&objects),
        [
            "authorizationpolicies.policy.linkerd.io",
            "httproutes.policy.linkerd.io",
            "meshtlsauthentications.policy.linkerd.io",
            "networkauthentications.policy.linkerd.io",
            "serverauthorizations.policy.linkerd.io",
            "servers.policy.linkerd.io",
        ]
    );
    assert!(linkerd_crds(&off).is_empty());
    let d = find(&objects, "Deployment", mesh::INJECTOR).expect("the injector's Deployment");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(&args[..2], ["mesh", "injector"]);
    // Its flags parse (the proxy's image from the environment the manifest sets), and
    // the name in its certificate is its Service's.
    assert_eq!(c["env"][0]["name"], "KUBEWIRE_PROXY_IMAGE");
    assert_eq!(
        c["env"][0]["value"],
        d["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    let mut argv = args[2..].to_vec();
    argv.extend(["--proxy-image", "x"]);
    let parsed: ::mesh::injector::Args = k8s::parse_flags(&argv);
    assert_eq!(parsed.listen.port(), mesh::INJECTOR_PORT);
    assert_eq!(
        parsed.server_name,
        format!("{}.{NAMESPACE}.svc", mesh::INJECTOR)
    );
    assert_eq!(parsed.webhook, mesh::INJECTOR);
    let hook = find(&objects, "MutatingWebhookConfiguration", mesh::INJECTOR).unwrap();
    let w = &hook["webhooks"][0];
    assert_eq!(w["clientConfig"]["service"]["name"], mesh::INJECTOR);
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["rules"][0]["resources"], json!(["pods"]));
    assert_eq!(
        w["namespaceSelector"]["matchExpressions"][0]["values"],
        json!([NAMESPACE])
    );
    // Webhook configurations: its own only.
    let role = find(&objects, "ClusterRole", mesh::INJECTOR).unwrap();
    for r in role["rules"].as_array().unwrap() {
        if r["resources"] == json!(["mutatingwebhookconfigurations"]) {
            assert_eq!(r["resourceNames"], json!([mesh::INJECTOR]), "{r}");
        }
    }
}
