//! The files kubelet writes for each pod and bind-mounts into its containers:
//! `/etc/resolv.conf` (from `dnsPolicy` and `dnsConfig`), `/etc/hosts` and `/etc/hostname`.
//! Pure functions, so the rules are unit-tested without root.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;

/// What the node knows that the pod's DNS file depends on.
#[derive(Debug, Clone, Default)]
pub(crate) struct DnsSettings {
    /// `--cluster-dns`.
    pub cluster_dns: Vec<IpAddr>,
    /// `--cluster-domain`.
    pub cluster_domain: String,
    /// The node's own resolv.conf text (`dnsPolicy: Default`).
    pub host_resolv: String,
}

/// A parsed resolv.conf: what kubelet merges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    pub(crate) fn parse(text: &str) -> Self {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(str::to_owned)),
                // The last search/domain line wins, as in glibc.
                Some("search") | Some("domain") => {
                    r.searches = words.map(str::to_owned).collect();
                }
                Some("options") => r.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        r
    }

    pub(crate) fn render(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out.push_str(&format!("nameserver {ns}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn push_unique(list: &mut Vec<String>, item: String) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// kubelet's `dnsPolicy` rules and `dnsConfig` merge (pkg/kubelet/network/dns).
pub(crate) fn resolv_conf(pod: &Pod, dns: &DnsSettings) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let host_network = spec.host_network.unwrap_or(false);
    let host = ResolvConf::parse(&dns.host_resolv);
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let cluster_first = match policy {
        "ClusterFirstWithHostNet" => true,
        // A hostNetwork pod with ClusterFirst falls back to the node's DNS, as in kubelet.
        "ClusterFirst" => !host_network,
        _ => false,
    } && !dns.cluster_dns.is_empty();
    let mut r = if policy == "None" {
        ResolvConf::default()
    } else if cluster_first {
        let d = &dns.cluster_domain;
        let mut searches = vec![format!("{ns}.svc.{d}"), format!("svc.{d}"), d.clone()];
        for s in host.searches {
            push_unique(&mut searches, s);
        }
        ResolvConf {
            nameservers: dns.cluster_dns.iter().map(IpAddr::to_string).collect(),
            searches,
            options: vec!["ndots:5".to_owned()],
        }
    } else {
        host
    };
    if let Some(cfg) = &spec.dns_config {
        for n in cfg.nameservers.iter().flatten() {
            push_unique(&mut r.nameservers, n.clone());
        }
        for s in cfg.searches.iter().flatten() {
            push_unique(&mut r.searches, s.clone());
        }
        // Options merge by name; the pod's value wins.
        for o in cfg.options.iter().flatten() {
            let opt = match &o.value {
                Some(v) => format!("{}:{v}", o.name.as_deref().unwrap_or("")),
                None => o.name.clone().unwrap_or_default(),
            };
            let name = opt.split(':').next().unwrap_or("").to_owned();
            r.options
                .retain(|x| x.split(':').next() != Some(name.as_str()));
            r.options.push(opt);
        }
    }
    // resolv.conf takes at most 3 nameservers; kubelet trims and warns.
    r.nameservers.truncate(3);
    r.searches.truncate(32);
    r.render()
}

/// The pod's hostname: `spec.hostname`, or its name cut to 63 characters.
pub(crate) fn hostname(pod: &Pod) -> String {
    let spec = pod.spec.as_ref();
    let name = spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| pod.metadata.name.clone().unwrap_or_default());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

/// The `/etc/hosts` of a hostNetwork pod: the node's, plus `hostAliases` (kubelet).
pub(crate) fn host_network_hosts(pod: &Pod, node_hosts: &str) -> String {
    let mut out = node_hosts.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    push_aliases(pod, &mut out);
    out
}

fn push_aliases(pod: &Pod, out: &mut String) {
    let aliases = pod.spec.as_ref().and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.clone().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
}

/// kubelet's managed `/etc/hosts`.
pub(crate) fn hosts(pod: &Pod, pod_ips: &[String], cluster_domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    for ip in pod_ips {
        match spec.subdomain.as_deref().filter(|s| !s.is_empty()) {
            Some(sub) => {
                out.push_str(&format!(
                    "{ip}\t{host}.{sub}.{ns}.svc.{cluster_domain}\t{host}\n"
                ));
            }
            None => out.push_str(&format!("{ip}\t{host}\n")),
        }
    }
    push_aliases(pod, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn settings() -> DnsSettings {
        DnsSettings {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            cluster_domain: "cluster.local".into(),
            host_resolv: "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n".into(),
        }
    }

    #[test]
    fn cluster_first() {
        let p =
            pod(json!({"metadata": {"name": "a", "namespace": "web"}, "spec": {"containers": []}}));
        assert_eq!(
            resolv_conf(&p, &settings()),
            "nameserver 10.96.0.10\nsearch web.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
        );
    }

    #[test]
    fn host_network_falls_back_unless_with_host_net() {
        let mut v = json!({"metadata": {"name": "a", "namespace": "web"}, "spec": {"containers": [], "hostNetwork": true}});
        assert_eq!(
            resolv_conf(&pod(v.clone()), &settings()),
            "nameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"
        );
        v["spec"]["dnsPolicy"] = json!("ClusterFirstWithHostNet");
        assert!(resolv_conf(&pod(v), &settings()).starts_with("nameserver 10.96.0.10\n"));
    }

    #[test]
    fn none_and_merge() {
        let p = pod(
            json!({"metadata": {"name": "a", "namespace": "x"}, "spec": {"containers": [],
            "dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.2.3.4"], "searches": ["s.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}}),
        );
        assert_eq!(
            resolv_conf(&p, &settings()),
            "nameserver 1.2.3.4\nsearch s.example\noptions ndots:2 edns0\n"
        );
        let p = pod(
            json!({"metadata": {"name": "a", "namespace": "x"}, "spec": {"containers": [],
            "dnsConfig": {"nameservers": ["1.2.3.4"], "options": [{"name": "ndots", "value": "1"}]}}}),
        );
        assert_eq!(
            resolv_conf(&p, &settings()),
            "nameserver 10.96.0.10\nnameserver 1.2.3.4\nsearch x.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:1\n"
        );
    }

    #[test]
    fn host_network_hosts_file() {
        let p = pod(
            json!({"metadata": {"name": "h", "namespace": "x"}, "spec": {"containers": [],
            "hostNetwork": true, "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local"]}]}}),
        );
        assert_eq!(
            host_network_hosts(&p, "127.0.0.1 localhost"),
            "127.0.0.1 localhost\n\n# Entries added by HostAliases.\n10.1.2.3\tfoo.local\n"
        );
    }

    #[test]
    fn hosts_file() {
        let p = pod(
            json!({"metadata": {"name": "redis-0", "namespace": "db"}, "spec": {"containers": [],
            "hostname": "redis-0", "subdomain": "redis",
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}}),
        );
        let h = hosts(&p, &["10.244.1.5".into()], "cluster.local");
        assert!(
            h.contains("10.244.1.5\tredis-0.redis.db.svc.cluster.local\tredis-0\n"),
            "{h}"
        );
        assert!(
            h.ends_with("# Entries added by HostAliases.\n10.1.2.3\tfoo.local\tbar.local\n"),
            "{h}"
        );
        let p = pod(
            json!({"metadata": {"name": "web", "namespace": "db"}, "spec": {"containers": []}}),
        );
        assert!(hosts(&p, &["10.244.1.6".into()], "cluster.local").ends_with("10.244.1.6\tweb\n"));
    }
}
