//! A container's environment as kubelet builds it: the service variables (docker-link
//! style) for the Services of the pod's namespace and `default/kubernetes`, then the
//! container's own `env` (values, `$(VAR)` references, `fieldRef`), which wins.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Service};

/// What `fieldRef`s resolve to that is not in the pod object yet.
#[derive(Debug, Clone, Default)]
pub(crate) struct Runtime {
    pub pod_ips: Vec<String>,
    pub host_ips: Vec<String>,
    pub node_name: String,
}

fn var_name(service: &str) -> String {
    service.to_uppercase().replace('-', "_")
}

/// What a Service gives containers' environment: only Services with a cluster IP and
/// a port have variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceEnv {
    pub namespace: String,
    pub name: String,
    pub cluster_ip: String,
    /// The first port is the Service's `_SERVICE_PORT`.
    pub ports: Vec<ServiceEnvPort>,
}

/// One port of a [`ServiceEnv`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceEnvPort {
    /// Empty when unnamed.
    pub name: String,
    pub port: i32,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
}

impl ServiceEnv {
    /// What `svc` gives containers' environment; `None` for a Service without a
    /// cluster IP (headless) or without ports, which gives nothing.
    pub(crate) fn of(svc: &Service) -> Option<ServiceEnv> {
        let spec = svc.spec.as_ref()?;
        let ip = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| !ip.is_empty() && *ip != "None")?;
        let ports: Vec<ServiceEnvPort> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| ServiceEnvPort {
                name: p.name.clone().unwrap_or_default(),
                port: p.port,
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
            })
            .collect();
        if ports.is_empty() {
            return None;
        }
        Some(ServiceEnv {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
            cluster_ip: ip.to_owned(),
            ports,
        })
    }
}

/// The variables of one Service (kubelet's `makeServiceEnvVar`/`makeLinkVariables`).
fn service_vars(svc: &ServiceEnv, out: &mut Vec<(String, String)>) {
    let ip = &svc.cluster_ip;
    let name = var_name(&svc.name);
    let Some(first) = svc.ports.first() else {
        return;
    };
    out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
    out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
        out.push((
            format!("{name}_SERVICE_PORT_{}", var_name(&p.name)),
            p.port.to_string(),
        ));
    }
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    out.push((
        format!("{name}_PORT"),
        format!("{}://{host}:{}", first.protocol.to_lowercase(), first.port),
    ));
    for p in &svc.ports {
        let pr = &p.protocol;
        let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_uppercase());
        out.push((
            prefix.clone(),
            format!("{}://{host}:{}", pr.to_lowercase(), p.port),
        ));
        out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.clone()));
    }
}

/// The service variables for a pod in `namespace`: its namespace's Services when
/// `enableServiceLinks` (default true), and always `default/kubernetes`'s.
pub(crate) fn service_env(
    namespace: &str,
    enable_links: bool,
    services: &[ServiceEnv],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut sorted: Vec<&ServiceEnv> = services.iter().collect();
    sorted.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for svc in sorted {
        let ns = svc.namespace.as_str();
        let is_master = ns == "default" && svc.name == "kubernetes";
        // The master service's variables come from default/kubernetes only.
        if is_master
            || (enable_links
                && ns == namespace
                && !(namespace != "default" && svc.name == "kubernetes"))
        {
            service_vars(svc, &mut out);
        }
    }
    out
}

/// Expands `$(VAR)` from `vars` as kubelet does; `$$` escapes, unknown references stay.
pub(crate) fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match vars.get(name) {
                Some(v) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_ref(pod: &Pod, rt: &Runtime, path: &str) -> String {
    let m = &pod.metadata;
    let first = |v: &[String]| v.first().cloned().unwrap_or_default();
    for (field, map) in [("labels", &m.labels), ("annotations", &m.annotations)] {
        if let Some(key) = path
            .strip_prefix("metadata.")
            .and_then(|p| p.strip_prefix(field))
            .and_then(|p| p.strip_prefix("['"))
            .and_then(|k| k.strip_suffix("']"))
        {
            return map
                .as_ref()
                .and_then(|l| l.get(key))
                .cloned()
                .unwrap_or_default();
        }
    }
    match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "spec.nodeName" => rt.node_name.clone(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" => first(&rt.pod_ips),
        "status.podIPs" => rt.pod_ips.join(","),
        "status.hostIP" => first(&rt.host_ips),
        "status.hostIPs" => rt.host_ips.join(","),
        _ => String::new(),
    }
}

/// The ConfigMaps and Secrets (by name, data as text) a container's env refers to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sources {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// The ConfigMap and Secret names a container's `env` and `envFrom` use.
pub(crate) fn referenced(container: &Container) -> (Vec<String>, Vec<String>) {
    let (mut cms, mut secrets) = (Vec::new(), Vec::new());
    for e in container.env.iter().flatten() {
        if let Some(f) = &e.value_from {
            cms.extend(f.config_map_key_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(f.secret_key_ref.as_ref().map(|r| r.name.clone()));
        }
    }
    for f in container.env_from.iter().flatten() {
        cms.extend(f.config_map_ref.as_ref().map(|r| r.name.clone()));
        secrets.extend(f.secret_ref.as_ref().map(|r| r.name.clone()));
    }
    cms.sort();
    cms.dedup();
    secrets.sort();
    secrets.dedup();
    (cms, secrets)
}

/// The whole environment of `container`, in order (later entries win). A missing
/// ConfigMap, Secret or key that is not `optional` is an error naming it (kubelet's
/// CreateContainerConfigError).
pub(crate) fn container_env(
    pod: &Pod,
    container: &Container,
    rt: &Runtime,
    services: &[ServiceEnv],
    sources: &Sources,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let links = pod
        .spec
        .as_ref()
        .and_then(|s| s.enable_service_links)
        .unwrap_or(true);
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut set = |vars: &mut BTreeMap<String, String>, k: String, v: String| {
        if !order.contains(&k) {
            order.push(k.clone());
        }
        vars.insert(k, v);
    };
    for (k, v) in service_env(ns, links, services) {
        set(&mut vars, k, v);
    }
    for f in container.env_from.iter().flatten() {
        let prefix = f.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = if let Some(r) = &f.config_map_ref {
            (
                "configmap",
                &r.name,
                r.optional,
                sources.config_maps.get(&r.name),
            )
        } else if let Some(r) = &f.secret_ref {
            ("secret", &r.name, r.optional, sources.secrets.get(&r.name))
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut vars, format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("{kind} \"{name}\" not found")),
        }
    }
    for e in container.env.iter().flatten() {
        let from = e.value_from.as_ref();
        let value = if let Some(v) = &e.value {
            expand(v, &vars)
        } else if let Some(f) = from.and_then(|f| f.field_ref.as_ref()) {
            field_ref(pod, rt, &f.field_path)
        } else if let Some((kind, data, name, key, optional)) = from.and_then(|f| {
            let cm = f.config_map_key_ref.as_ref().map(|r| {
                let data = &sources.config_maps;
                ("ConfigMap", data, &r.name, &r.key, r.optional)
            });
            cm.or_else(|| {
                let r = f.secret_key_ref.as_ref()?;
                Some(("Secret", &sources.secrets, &r.name, &r.key, r.optional))
            })
        }) {
            match data.get(name).and_then(|d| d.get(key)) {
                Some(v) => v.clone(),
                None if optional == Some(true) => continue,
                None => return Err(format!("couldn't find key {key} in {kind} {ns}/{name}")),
            }
        } else {
            // resourceFieldRef: the lab sets no resource limits.
            String::new()
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = vars.get(&k).cloned().unwrap_or_default();
            (k, v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn service_and_pod_vars() {
        let services: Vec<Service> = serde_json::from_value(json!([
            {"metadata": {"name": "kubernetes", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "https", "port": 443}]}},
            {"metadata": {"name": "redis-primary", "namespace": "app"},
             "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 6379}]}},
            {"metadata": {"name": "other", "namespace": "elsewhere"},
             "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 1}]}},
            {"metadata": {"name": "headless", "namespace": "app"},
             "spec": {"clusterIP": "None", "ports": [{"port": 1}]}}
        ]))
        .unwrap();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "app", "labels": {"app": "x"},
                "annotations": {"note": "y"}},
            "spec": {"containers": [{"name": "c", "env": [
                {"name": "A", "value": "$(REDIS_PRIMARY_SERVICE_HOST):1"},
                {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "L", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['note']"}}},
                {"name": "M", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['missing']"}}},
                {"name": "KUBERNETES_SERVICE_PORT", "value": "1"}
            ]}]}
        }))
        .unwrap();
        let rt = Runtime {
            pod_ips: vec!["10.244.1.5".into()],
            host_ips: vec!["198.18.0.11".into()],
            node_name: "node-1".into(),
        };
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        let services: Vec<ServiceEnv> = services.iter().filter_map(ServiceEnv::of).collect();
        assert_eq!(services.len(), 3, "the headless Service gives nothing");
        let env: BTreeMap<_, _> = container_env(&pod, &c, &rt, &services, &Sources::default())
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP"], "tcp://10.96.0.1:443");
        assert_eq!(env["REDIS_PRIMARY_SERVICE_HOST"], "10.96.0.11");
        assert_eq!(env["REDIS_PRIMARY_PORT"], "tcp://10.96.0.11:6379");
        assert_eq!(env["REDIS_PRIMARY_PORT_6379_TCP_ADDR"], "10.96.0.11");
        assert_eq!(env["A"], "10.96.0.11:1");
        assert_eq!(env["IP"], "10.244.1.5");
        assert_eq!(env["L"], "x");
        assert_eq!(env["N"], "y");
        assert_eq!(env["M"], "");
        assert!(!env.contains_key("OTHER_SERVICE_HOST"));
        assert!(!env.contains_key("HEADLESS_SERVICE_HOST"));
    }

    #[test]
    fn config_map_and_secret_keys() {
        let pod = |env: Value| -> (Pod, Container) {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": "p", "namespace": "app"},
                "spec": {"enableServiceLinks": false, "containers": [{"name": "c", "env": env}]}
            }))
            .unwrap();
            let c = pod.spec.as_ref().unwrap().containers[0].clone();
            (pod, c)
        };
        let sources = Sources {
            config_maps: BTreeMap::from([(
                "cm".to_owned(),
                BTreeMap::from([("k".to_owned(), "from-cm".to_owned())]),
            )]),
            secrets: BTreeMap::from([(
                "s".to_owned(),
                BTreeMap::from([("k".to_owned(), "from-secret".to_owned())]),
            )]),
        };
        let (p, c) = pod(json!([
            {"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x", "optional": true}}}
        ]));
        let env = container_env(&p, &c, &Runtime::default(), &[], &sources).unwrap();
        assert_eq!(
            env,
            [
                ("CM".to_owned(), "from-cm".to_owned()),
                ("S".to_owned(), "from-secret".to_owned())
            ]
        );
        for (r, want) in [
            (
                json!({"configMapKeyRef": {"name": "cm", "key": "x"}}),
                "couldn't find key x in ConfigMap app/cm",
            ),
            (
                json!({"secretKeyRef": {"name": "gone", "key": "k"}}),
                "couldn't find key k in Secret app/gone",
            ),
        ] {
            let (p, c) = pod(json!([{"name": "V", "valueFrom": r}]));
            let e = container_env(&p, &c, &Runtime::default(), &[], &sources).unwrap_err();
            assert_eq!(e, want);
        }
    }

    #[test]
    fn expansion() {
        let vars = BTreeMap::from([("A".to_owned(), "1".to_owned())]);
        assert_eq!(expand("$(A)-$$(A)-$(B)-$", &vars), "1-$(A)-$(B)-$");
    }
}
