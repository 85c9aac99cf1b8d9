use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

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
    /// Where the lab keeps its state while it is up. Not configurable from a file:
    /// `lab down` and `lab status` must find it without being told.
    #[serde(skip)]
    pub run_dir: PathBuf,
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            name: "kubewire".to_owned(),
            nodes: 3,
            underlay_v4: "198.18.0.0/24".parse().expect("valid default"),
            underlay_v6: "2001:2::/64".parse().expect("valid default"),
            run_dir: PathBuf::from("/run/kubewire"),
        }
    }
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
        Ok(())
    }

    /// Name of the namespace that plays `role`.
    pub fn netns_name(&self, role: Role) -> String {
        match role {
            Role::Underlay => format!("{}-underlay", self.name),
            Role::Node(n) => format!("{}-node-{n}", self.name),
            Role::Outside => format!("{}-outside", self.name),
        }
    }

    /// Every role in this lab, underlay first.
    pub fn roles(&self) -> Vec<Role> {
        let mut roles = vec![Role::Underlay];
        roles.extend((1..=self.nodes).map(Role::Node));
        roles.push(Role::Outside);
        roles
    }

    /// Host number of `role` on the underlay: .1 underlay, .11.. nodes, .254 outside.
    fn host_number(role: Role) -> u32 {
        match role {
            Role::Underlay => 1,
            Role::Node(n) => 10 + u32::from(n),
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
