use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use cni::spec::RoutingMode;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::router::RouterKind;
use crate::{Error, Result};

/// The most nodes one lab can have: node addresses are `.11` to `.(10+N)` of the
/// underlay, below the LoadBalancer pool at `.200`.
pub const MAX_NODES: u8 = 100;

/// What a lab is made of. Defaults follow ARCHITECTURE.md.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct LabConfig {
    /// Prefix of every namespace the lab makes; several labs with different names can
    /// run side by side (the tests do).
    pub name: String,
    /// Number of nodes.
    pub nodes: u8,
    /// The underlay's IPv4 subnet ("the datacenter network").
    pub underlay_v4: Ipv4Net,
    /// The underlay's IPv6 subnet.
    pub underlay_v6: Ipv6Net,
    /// The cluster's pod ranges, at most one per IP family; each node gets a /24 (IPv4)
    /// or /64 (IPv6) of them. Both families make the cluster dual-stack.
    pub pod_cidrs: Vec<IpNet>,
    /// The Service ranges, at most one per IP family, in the same family order.
    pub service_cidrs: Vec<IpNet>,
    /// How pod traffic crosses between nodes: `native` routes or `vxlan`.
    pub routing: RoutingMode,
    /// The cluster's DNS domain.
    pub cluster_domain: String,
    /// How long a node may go without renewing its Lease before it is NotReady and its
    /// pods' endpoints stop being ready (kube-controller-manager's
    /// `--node-monitor-grace-period`); nodes renew every quarter of it.
    pub node_grace_period_seconds: u32,
    /// Where the API server listens on the host for kubectl (loopback only). Port 0 picks
    /// a free port, which the kubeconfig then names (tests run labs side by side).
    pub api_listen: SocketAddr,
    /// How LoadBalancer addresses reach `outside`: `l2` (ARP/NDP on the underlay) or
    /// `bgp` (a router between the underlay and `outside` peers with every node).
    pub load_balancer: LoadBalancerMode,
    /// The router software in `bgp` mode: `bird` (BIRD 2) or `frr`.
    pub router: RouterKind,
    /// In `bgp` mode, BFD between the router and the nodes (a BFDProfile on the lab's
    /// BGPPeers): a dead node is noticed in about a second instead of the hold time.
    pub bfd: bool,
    /// In `bgp` mode, the router's AS; the nodes' is 64512, so 64512 here makes the
    /// sessions iBGP (where LOCAL_PREF is sent).
    pub router_asn: u32,
    /// The addresses of the default LoadBalancer pool (`metallb-system/default`, with an
    /// L2Advertisement of the same name): CIDRs or `FIRST-LAST` ranges, as an
    /// IPAddressPool's `addresses`. Unset: the underlay's host numbers 200-250 in both
    /// families (198.18.0.200-198.18.0.250 and 2001:2::c8-2001:2::fa); `[]`: no default
    /// pool (bring your own IPAddressPools).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer_pool: Option<Vec<String>>,
    /// Install the service mesh (`kubewire install --mesh`: the identity issuer and the
    /// injector in kube-system, discovery in the agents), as the talk's step 5 expects
    /// (on by default; `false` spares the two Deployments and the webhook call on every
    /// pod creation).
    pub mesh: bool,
    /// The mesh's default inbound policy for pods whose own annotation and whose
    /// namespace's name none (`kubewire install --mesh-default-inbound-policy`).
    pub mesh_default_inbound_policy: String,
    /// Where the lab keeps its state while it is up. Not configurable from a file:
    /// `lab down` and `lab status` must find it without being told.
    #[serde(skip)]
    pub run_dir: PathBuf,
    /// Where the lab keeps its data (API database, node files, logs); `lab down` removes
    /// it unless told to keep it.
    #[serde(skip)]
    pub data_root: PathBuf,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "kubewire".to_owned(),
            nodes: 3,
            underlay_v4: "198.18.0.0/24".parse().expect("valid default"),
            underlay_v6: "2001:2::/64".parse().expect("valid default"),
            pod_cidrs: nets(&["10.244.0.0/16", "fd00:10:244::/56"]),
            service_cidrs: nets(&["10.96.0.0/12", "fd00:10:96::/112"]),
            routing: RoutingMode::Native,
            cluster_domain: "cluster.local".to_owned(),
            node_grace_period_seconds: 40,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 6443)),
            load_balancer: LoadBalancerMode::L2,
            router: RouterKind::Bird,
            bfd: false,
            router_asn: crate::router::ROUTER_ASN,
            load_balancer_pool: None,
            mesh: true,
            mesh_default_inbound_policy: install::mesh::DEFAULT_INBOUND_POLICY.to_owned(),
            run_dir: PathBuf::from("/run/kubewire"),
            data_root: PathBuf::from("/var/lib/kubewire"),
        }
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter()
        .map(|s| s.parse().expect("valid default"))
        .collect()
}

/// How the lab's LoadBalancer addresses are announced to `outside`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalancerMode {
    /// The nodes answer ARP/NDP on the underlay.
    #[default]
    L2,
    /// The nodes announce over BGP to the lab's router, which `outside` routes through.
    Bgp,
}

/// A namespace's part in the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    /// The switch every node and the outside plug into; the control plane's address.
    Underlay,
    /// Node number N (1-based).
    Node(u8),
    /// The world outside the cluster.
    Outside,
    /// The upstream BGP router (only with `loadBalancer: bgp`).
    Router,
}

impl LabConfig {
    /// Checks the configuration, naming the field that is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::InvalidConfig(msg));
        let valid_name = !self.name.is_empty()
            && self.name.len() <= 40
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !self.name.starts_with('-')
            && !self.name.ends_with('-');
        if !valid_name {
            return bad(format!(
                "name: Invalid value: {:?}: must be 1-40 lowercase letters, digits or '-', starting and ending with a letter or digit",
                self.name
            ));
        }
        if self.nodes == 0 || self.nodes > MAX_NODES {
            return bad(format!(
                "nodes: Invalid value: {}: must be between 1 and {MAX_NODES}",
                self.nodes
            ));
        }
        if self.underlay_v4.prefix_len() > 24 {
            return bad(format!(
                "underlayV4: Invalid value: {}: must be a /24 or larger",
                self.underlay_v4
            ));
        }
        if self.underlay_v6.prefix_len() > 120 {
            return bad(format!(
                "underlayV6: Invalid value: {}: must be a /120 or larger",
                self.underlay_v6
            ));
        }
        if let Err(why) = install::mesh::parse_default_policy(&self.mesh_default_inbound_policy) {
            return bad(format!("meshDefaultInboundPolicy: Invalid value: {why}"));
        }
        check_families("podCidrs", &self.pod_cidrs)?;
        check_families("serviceCidrs", &self.service_cidrs)?;
        let fam = |nets: &[IpNet]| {
            nets.iter()
                .map(IpNet::addr)
                .map(|a| a.is_ipv4())
                .collect::<Vec<_>>()
        };
        if fam(&self.pod_cidrs) != fam(&self.service_cidrs) {
            return bad(
                "serviceCidrs: Invalid value: must have the same IP families, in the same order, as podCidrs".to_owned(),
            );
        }
        for (i, net) in self.pod_cidrs.iter().enumerate() {
            let max = if net.addr().is_ipv4() { 24 } else { 64 };
            if net.prefix_len() > max - 4 {
                return bad(format!(
                    "podCidrs[{i}]: Invalid value: {net}: must be a /{} or larger (a /{max} per node)",
                    max - 4
                ));
            }
        }
        let domain_ok = !self.cluster_domain.is_empty()
            && self.cluster_domain.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            });
        if !domain_ok {
            return bad(format!(
                "clusterDomain: Invalid value: {:?}: must be a DNS name of lowercase labels",
                self.cluster_domain
            ));
        }
        if !(2..=3600).contains(&self.node_grace_period_seconds) {
            return bad(format!(
                "nodeGracePeriodSeconds: Invalid value: {}: must be between 2 and 3600",
                self.node_grace_period_seconds
            ));
        }
        if self.router_asn == 0 || self.router_asn == u32::MAX {
            return bad(format!(
                "routerAsn: Invalid value: {}: must be between 1 and 4294967294",
                self.router_asn
            ));
        }
        for (i, a) in self.lb_pool().iter().enumerate() {
            if let Err(e) = lb::pool::parse_addresses(a) {
                return bad(format!("loadBalancerPool[{i}]: Invalid value: {a:?}: {e}"));
            }
        }
        if !self.api_listen.ip().is_loopback() {
            return bad(format!(
                "apiListen: Invalid value: {}: must be a loopback address (the lab adds nothing reachable to the host)",
                self.api_listen
            ));
        }
        Ok(())
    }

    /// Reads a lab config file: YAML (JSON is YAML too). Unknown fields are refused by name.
    pub fn from_file(path: &Path) -> Result<LabConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading lab config {}", path.display()), e))?;
        Self::from_yaml(&text).map_err(|e| Error::InvalidConfig(format!("{}: {e}", path.display())))
    }

    /// Parses a lab config from YAML text.
    pub fn from_yaml(text: &str) -> std::result::Result<LabConfig, String> {
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// The default LoadBalancer pool's addresses (see `load_balancer_pool`).
    pub fn lb_pool(&self) -> Vec<String> {
        if let Some(pool) = &self.load_balancer_pool {
            return pool.clone();
        }
        vec![
            format!(
                "{}-{}",
                nth_host(IpNet::V4(self.underlay_v4), 200),
                nth_host(IpNet::V4(self.underlay_v4), 250)
            ),
            format!(
                "{}-{}",
                nth_host(IpNet::V6(self.underlay_v6), 200),
                nth_host(IpNet::V6(self.underlay_v6), 250)
            ),
        ]
    }

    /// The lab's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_root.join(&self.name)
    }

    /// The cluster DNS service address: the tenth address of the first Service range,
    /// as kubeadm picks it (10.96.0.10 by default).
    pub fn dns_ip(&self) -> IpAddr {
        nth_host(self.service_cidrs[0], 10)
    }

    /// Node N's underlay addresses without prefix, IPv4 first.
    pub fn node_ips(&self, n: u8) -> Vec<IpAddr> {
        self.addresses(Role::Node(n))
            .iter()
            .map(IpNet::addr)
            .collect()
    }

    /// The address the control plane listens on inside the underlay.
    pub fn api_underlay_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addresses(Role::Underlay)[0].addr(), 6443)
    }

    /// Name of the namespace that plays `role`.
    pub fn netns_name(&self, role: Role) -> String {
        match role {
            Role::Underlay => format!("{}-underlay", self.name),
            Role::Node(n) => format!("{}-node-{n}", self.name),
            Role::Outside => format!("{}-outside", self.name),
            Role::Router => format!("{}-router", self.name),
        }
    }

    /// Every role in this lab, underlay first.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Underlay];
        roles.extend((1..=self.nodes).map(Role::Node));
        roles.push(Role::Outside);
        if self.load_balancer == LoadBalancerMode::Bgp {
            roles.push(Role::Router);
        }
        roles
    }

    /// Host number of `role` on the underlay: .1 underlay, .11.. nodes, .253 router,
    /// .254 outside.
    fn host_number(role: Role) -> u32 {
        match role {
            Role::Underlay => 1,
            Role::Node(n) => 10 + u32::from(n),
            Role::Router => 253,
            Role::Outside => 254,
        }
    }

    /// The underlay addresses of `role` (IPv4 and IPv6), with the underlay's prefix.
    pub fn addresses(&self, role: Role) -> [IpNet; 2] {
        let host = Self::host_number(role);
        let v4 = Ipv4Addr::from(u32::from(self.underlay_v4.network()) + host);
        let v6 = Ipv6Addr::from(u128::from(self.underlay_v6.network()) + u128::from(host));
        [
            IpNet::new(IpAddr::V4(v4), self.underlay_v4.prefix_len())
                .expect("prefix from a valid net"),
            IpNet::new(IpAddr::V6(v6), self.underlay_v6.prefix_len())
                .expect("prefix from a valid net"),
        ]
    }

    /// Where this lab's state file lives while it is up.
    pub fn state_dir(&self) -> PathBuf {
        self.run_dir.join(&self.name)
    }
}

fn check_families(field: &str, nets: &[IpNet]) -> Result<()> {
    let v4 = nets.iter().filter(|n| n.addr().is_ipv4()).count();
    if nets.is_empty() || v4 > 1 || nets.len() - v4 > 1 {
        return Err(Error::InvalidConfig(format!(
            "{field}: Invalid value: {nets:?}: must be one range per IP family (one or two ranges)"
        )));
    }
    Ok(())
}

/// The `n`th address of `net`.
fn nth_host(net: IpNet, n: u32) -> IpAddr {
    match net {
        IpNet::V4(v4) => IpAddr::V4(Ipv4Addr::from(u32::from(v4.network()) + n)),
        IpNet::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6.network()) + u128::from(n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addresses_follow_the_architecture() {
        let cfg = LabConfig::default();
        assert_eq!(
            cfg.addresses(Role::Underlay)[0].to_string(),
            "198.18.0.1/24"
        );
        assert_eq!(
            cfg.addresses(Role::Node(1))[0].to_string(),
            "198.18.0.11/24"
        );
        assert_eq!(cfg.addresses(Role::Node(3))[1].to_string(), "2001:2::d/64");
        assert_eq!(
            cfg.addresses(Role::Outside)[0].to_string(),
            "198.18.0.254/24"
        );
        assert_eq!(cfg.netns_name(Role::Node(2)), "kubewire-node-2");
        assert_eq!(
            cfg.lb_pool(),
            ["198.18.0.200-198.18.0.250", "2001:2::c8-2001:2::fa"]
        );
        assert_eq!(cfg.roles().len(), 5);
    }

    #[test]
    fn invalid_config_names_the_field() {
        let cfg = LabConfig {
            nodes: 0,
            ..LabConfig::default()
        };
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("nodes: Invalid value: 0"), "{err}");
        let cfg = LabConfig {
            name: "Bad_Name".into(),
            ..LabConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("name: Invalid value")
        );
        let cfg = LabConfig {
            underlay_v4: "198.18.0.0/28".parse().unwrap(),
            ..LabConfig::default()
        };
        assert!(
            cfg.validate()
                .unwrap_err()
                .to_string()
                .contains("underlayV4")
        );
        let cfg = LabConfig::from_yaml("meshDefaultInboundPolicy: open\n").unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(
            err.contains("meshDefaultInboundPolicy: Invalid value: \"open\""),
            "{err}"
        );
    }

    #[test]
    fn yaml_config_file() {
        let cfg = LabConfig::from_yaml(
            "nodes: 2\nrouting: vxlan\npodCidrs: [10.200.0.0/16]\nserviceCidrs: [10.100.0.0/16]\nclusterDomain: lab.example\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.routing, RoutingMode::Vxlan);
        assert_eq!(cfg.dns_ip().to_string(), "10.100.0.10");
        assert_eq!(cfg.cluster_domain, "lab.example");
        let err = LabConfig::from_yaml("nodes: 2\nroutng: vxlan\n").unwrap_err();
        assert!(err.contains("unknown field `routng`"), "{err}");
        let mixed = LabConfig::from_yaml("serviceCidrs: [10.96.0.0/12]\n").unwrap();
        let err = mixed.validate().unwrap_err().to_string();
        assert!(err.contains("serviceCidrs"), "{err}");
        let bgp = LabConfig::from_yaml("loadBalancer: bgp\nrouter: frr\n").unwrap();
        assert_eq!(bgp.load_balancer, LoadBalancerMode::Bgp);
        assert_eq!(bgp.router, RouterKind::Frr);
        assert_eq!(bgp.roles().last(), Some(&Role::Router));
        assert_eq!(bgp.netns_name(Role::Router), "kubewire-router");
        assert_eq!(
            bgp.addresses(Role::Router)[0].to_string(),
            "198.18.0.253/24"
        );
        let err = LabConfig::from_yaml("router: quagga\n").unwrap_err();
        assert!(err.contains("quagga"), "{err}");
        let none = LabConfig::from_yaml("loadBalancerPool: []\n").unwrap();
        assert!(none.lb_pool().is_empty());
        let own = LabConfig::from_yaml("loadBalancerPool: [198.18.0.64/28]\n").unwrap();
        assert_eq!(own.lb_pool(), ["198.18.0.64/28"]);
        let bad = LabConfig::from_yaml("loadBalancerPool: [198.18.0.9-198.18.0.1]\n").unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("loadBalancerPool[0]: Invalid value"), "{err}");
        let open = LabConfig::from_yaml("apiListen: 0.0.0.0:6443\n").unwrap();
        assert!(
            open.validate()
                .unwrap_err()
                .to_string()
                .contains("apiListen")
        );
    }

    #[test]
    fn config_file_rejects_unknown_fields() {
        let err = serde_json::from_str::<LabConfig>(r#"{"nodes": 2, "nodez": 3}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `nodez`"), "{err}");
        let cfg: LabConfig = serde_json::from_str(r#"{"nodes": 2}"#).unwrap();
        assert_eq!(cfg.nodes, 2);
        assert_eq!(cfg.name, "kubewire");
    }
}
