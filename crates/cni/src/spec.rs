//! The CNI protocol (specification 1.1.0): versions, environment, configuration,
//! results and errors, as plain data. No kernel access here, so all of it is unit-tested.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The spec versions whose configurations and results kubewire speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// A supported spec version; ordered, so `>=` compares versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.4.0: results carry `ips[].version`; CHECK exists; no STATUS or GC.
    V0_4_0,
    /// 1.0.0: `ips[].version` is gone.
    V1_0_0,
    /// 1.1.0: STATUS, GC, `interfaces[].mtu`, route attributes.
    V1_1_0,
}

impl Version {
    /// Parses a `cniVersion` string; anything else is [`code::INCOMPATIBLE_VERSION`].
    pub fn parse(s: &str) -> Result<Self, CniError> {
        match s {
            "0.4.0" => Ok(Version::V0_4_0),
            "1.0.0" => Ok(Version::V1_0_0),
            "1.1.0" => Ok(Version::V1_1_0),
            other => Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("incompatible CNI version {other:?}"),
                format!("kubewire supports {}", SUPPORTED_VERSIONS.join(", ")),
            )),
        }
    }

    /// The version string.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's well-known error codes, and kubewire's own (100 and up, as the spec
/// reserves 1-99).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENVIRONMENT: u32 = 4;
    /// I/O failure.
    pub const IO_FAILURE: u32 = 5;
    /// Failed to decode content.
    pub const DECODING_FAILURE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_NETWORK_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin cannot service ADD requests.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and existing containers may have limited connectivity.
    pub const PLUGIN_NOT_AVAILABLE_LIMITED_CONNECTIVITY: u32 = 51;
    /// ADD: the interface already exists in the container.
    pub const INTERFACE_EXISTS: u32 = 100;
    /// ADD: no free address left in a pod CIDR.
    pub const ADDRESSES_EXHAUSTED: u32 = 101;
    /// CHECK: the container's network differs from what ADD made.
    pub const CHECK_MISMATCH: u32 = 102;
    /// The kernel refused a change.
    pub const KERNEL: u32 = 103;
    /// ADD: a hostPort is already bound to another container on this node.
    pub const HOST_PORT_IN_USE: u32 = 104;
}

/// An error as the spec prints it on stdout: `{"cniVersion", "code", "msg", "details"}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// One of [`code`].
    pub code: u32,
    /// A short message.
    pub msg: String,
    /// A longer explanation: what to do about it.
    pub details: String,
}

impl CniError {
    /// Builds an error.
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error object to print on stdout.
    pub fn to_json(&self, version: &str) -> Value {
        let mut obj =
            serde_json::json!({ "cniVersion": version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            obj["details"] = Value::String(self.details.clone());
        }
        obj
    }
}

/// A kernel failure gets kubewire's own [`code::KERNEL`], its message saying what was
/// being done and its details why (the kernel's answer).
impl From<netlink::Error> for CniError {
    fn from(e: netlink::Error) -> Self {
        let mut why = Vec::new();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why.push(c.to_string());
            cause = c.source();
        }
        CniError::new(code::KERNEL, e.to_string(), why.join(": "))
    }
}

/// The CNI operation (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container to the network.
    Add,
    /// Detach it; idempotent.
    Del,
    /// Verify the attachment against `prevResult`.
    Check,
    /// Report supported versions.
    Version,
    /// Report whether ADDs can succeed (1.1).
    Status,
    /// Free everything not in `cni.dev/valid-attachments` (1.1).
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: path of the container's network namespace.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`: the interface to create inside the container.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `K=V;K=V` pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where other plugins live.
    pub path: Vec<PathBuf>,
}

fn invalid_env(var: &str, why: &str) -> CniError {
    CniError::new(code::INVALID_ENVIRONMENT, format!("{var} {why}"), "")
}

impl Env {
    /// Reads the environment from `(name, value)` pairs, checking what the command needs.
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, CniError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .filter(|(k, _)| k.as_ref().starts_with("CNI_"))
            .map(|(k, v)| (k.as_ref().to_owned(), v.as_ref().to_owned()))
            .collect();
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        let command_str =
            get("CNI_COMMAND").ok_or_else(|| invalid_env("CNI_COMMAND", "is not set"))?;
        let command = Command::parse(&command_str).ok_or_else(|| {
            invalid_env(
                "CNI_COMMAND",
                &format!("has an unknown value {command_str:?}"),
            )
        })?;
        let mut args = BTreeMap::new();
        if let Some(raw) = get("CNI_ARGS") {
            for pair in raw.split(';').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').ok_or_else(|| {
                    invalid_env("CNI_ARGS", &format!("has a pair without '=': {pair:?}"))
                })?;
                args.insert(k.to_owned(), v.to_owned());
            }
        }
        let env = Env {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS").map(PathBuf::from),
            ifname: get("CNI_IFNAME"),
            args,
            path: get("CNI_PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_default(),
        };
        match command {
            Command::Add | Command::Check => {
                env.require_container_id()?;
                env.require_ifname()?;
                if env.netns.is_none() {
                    return Err(invalid_env("CNI_NETNS", "is not set"));
                }
            }
            // DEL must work without a namespace: the container may be long gone.
            Command::Del => {
                env.require_container_id()?;
                env.require_ifname()?;
            }
            Command::Version | Command::Status | Command::Gc => {}
        }
        Ok(env)
    }

    fn require_container_id(&self) -> Result<&str, CniError> {
        let id = self
            .container_id
            .as_deref()
            .ok_or_else(|| invalid_env("CNI_CONTAINERID", "is not set"))?;
        // The spec: alphanumeric plus underscore, dot and hyphen, starting alphanumeric.
        let valid = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            return Err(invalid_env(
                "CNI_CONTAINERID",
                &format!("is not a valid container ID: {id:?}"),
            ));
        }
        Ok(id)
    }

    fn require_ifname(&self) -> Result<&str, CniError> {
        let name = self
            .ifname
            .as_deref()
            .ok_or_else(|| invalid_env("CNI_IFNAME", "is not set"))?;
        // The kernel's rules for interface names.
        let valid = name.len() < 16
            && !matches!(name, "." | "..")
            && !name
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace());
        if !valid {
            return Err(invalid_env(
                "CNI_IFNAME",
                &format!("is not a valid interface name: {name:?}"),
            ));
        }
        Ok(name)
    }

    /// The container ID (checked present by [`Env::from_vars`] for ADD, DEL, CHECK).
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// The interface name (checked present for ADD, DEL, CHECK).
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// How pod traffic crosses between nodes; decides the MTU overhead. The one type for
/// it: the agent's `--mode`, the lab config's `routing` and the conflist's `mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RoutingMode {
    /// A route to each remote node's pod CIDRs via its underlay address: no
    /// encapsulation; the underlay must route pod addresses (one L2 segment does).
    #[default]
    Native,
    /// VXLAN between nodes: works over any underlay that carries UDP; 50 bytes of
    /// every packet go to the encapsulation.
    Vxlan,
}

impl RoutingMode {
    /// The name in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Native => "native",
            RoutingMode::Vxlan => "vxlan",
        }
    }
}

/// VXLAN's overhead: outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8.
pub const VXLAN_OVERHEAD: u32 = 50;

/// One `{containerID, ifname}` pair of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// The container.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface.
    pub ifname: String,
}

/// The network configuration kubewire's plugin reads on stdin (and, as one entry of
/// a [`ConfList`], what the agent writes for the runtime).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version of this configuration, and of the result to print.
    pub cni_version: String,
    /// The network's name: the first part of every IPAM key.
    pub name: String,
    /// The plugin type (`kubewire-cni`).
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// The underlay MTU; pods get it less the routing mode's overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `native` or `vxlan`.
    #[serde(default)]
    pub mode: RoutingMode,
    /// The node's pod CIDRs (one per IP family), as the agent writes them.
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<IpNet>,
    /// Where IPAM keeps its state (default `/var/lib/cni/kubewire`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// The agent's socket for network policy's first-packet guarantee: ADD waits there
    /// until the pod's policies are in force ([`crate::policy`]). Absent: no wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_socket: Option<PathBuf>,
    /// The capabilities the plugin asks the runtime for, in a conflist
    /// (`portMappings`): the runtime passes their values in `runtimeConfig`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capabilities: BTreeMap<String, bool>,
    /// Any `ipam` section: refused, since kubewire allocates from `podCIDRs` itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<Value>,
    /// Runtime-provided values for the capabilities we declare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Value>,
    /// The previous plugin's result (chains, CHECK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// GC: the attachments that are still valid.
    #[serde(
        default,
        rename = "cni.dev/valid-attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC, the name of the key in drafts of the 1.1 spec.
    #[serde(
        default,
        rename = "cni.dev/attachments",
        skip_serializing_if = "Option::is_none"
    )]
    pub attachments: Option<Vec<Attachment>>,
}

/// A network configuration list (`*.conflist`), as the agent writes it for the
/// runtime: the list's version and name, which the runtime (libcni) copies into each
/// plugin's configuration before running it, and the plugins in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfList {
    /// The spec version of the list and of every plugin's configuration.
    pub cni_version: String,
    /// The network's name.
    pub name: String,
    /// The plugins, without the version and name they take from the list.
    pub plugins: Vec<NetConf>,
}

impl ConfList {
    /// The file's text: pretty JSON, each plugin without `cniVersion` and `name`.
    pub fn to_json(&self) -> String {
        let plugins: Vec<Value> = self
            .plugins
            .iter()
            .map(|p| {
                let mut v = serde_json::to_value(p).expect("a NetConf serializes");
                if let Some(o) = v.as_object_mut() {
                    o.remove("cniVersion");
                    o.remove("name");
                }
                v
            })
            .collect();
        let list = serde_json::json!({
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": plugins,
        });
        serde_json::to_string_pretty(&list).expect("JSON serializes") + "\n"
    }

    /// Reads a conflist as a runtime does: each plugin gets the list's `cniVersion`
    /// and `name`, and must then parse as kubewire's configuration.
    pub fn parse(text: &[u8]) -> Result<ConfList, CniError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Raw {
            cni_version: String,
            name: String,
            plugins: Vec<serde_json::Map<String, Value>>,
        }
        let raw: Raw = serde_json::from_slice(text).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "failed to decode the network configuration list",
                e.to_string(),
            )
        })?;
        let mut plugins = Vec::with_capacity(raw.plugins.len());
        for mut p in raw.plugins {
            p.insert("cniVersion".into(), raw.cni_version.clone().into());
            p.insert("name".into(), raw.name.clone().into());
            let bytes = serde_json::to_vec(&p).expect("JSON serializes");
            plugins.push(NetConf::parse(&bytes)?.0);
        }
        Ok(ConfList {
            cni_version: raw.cni_version,
            name: raw.name,
            plugins,
        })
    }
}

/// The configuration a runtime gives one plugin of a conflist, as libcni builds it:
/// the plugin's own object plus the list's `name` and `cniVersion`, the `prevResult`
/// of the plugin before it (if any), and in `runtimeConfig` the values of
/// `runtime_config` for the capabilities the plugin declares (and only those).
pub fn plugin_config(
    list: &Value,
    plugin: &Value,
    prev_result: Option<&Value>,
    runtime_config: &Value,
) -> Value {
    let mut conf = plugin.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    if let Some(prev) = prev_result {
        conf["prevResult"] = prev.clone();
    }
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        let mut rc = serde_json::Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true)
                && let Some(v) = runtime_config.get(cap)
            {
                rc.insert(cap.clone(), v.clone());
            }
        }
        if !rc.is_empty() {
            conf["runtimeConfig"] = Value::Object(rc);
        }
    }
    conf
}

/// The default for [`NetConf::data_dir`].
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/kubewire";
/// The MTU when the config gives none.
pub const DEFAULT_MTU: u32 = 1500;

impl NetConf {
    /// Parses and validates stdin. Returns the version too, so that errors after this
    /// point are printed in the caller's version.
    pub fn parse(stdin: &[u8]) -> Result<(Self, Version), CniError> {
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "failed to decode the network configuration",
                e.to_string(),
            )
        })?;
        let version = Version::parse(&conf.cni_version)?;
        conf.validate()?;
        Ok((conf, version))
    }

    fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(code::INVALID_NETWORK_CONFIG, msg, ""));
        if self.name.is_empty() {
            return invalid("name: must not be empty".into());
        }
        if self.name.contains('/') || self.name == "." || self.name == ".." {
            return invalid(format!(
                "name: Invalid value: {:?}: must be usable as a directory name",
                self.name
            ));
        }
        if self.ipam.is_some() {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                "ipam: unsupported field",
                "kubewire allocates pod addresses itself from podCIDRs; remove the ipam section",
            ));
        }
        if let Some(mtu) = self.mtu
            && !(576 + VXLAN_OVERHEAD..=65535).contains(&mtu)
        {
            return invalid(format!(
                "mtu: Invalid value: {mtu}: must be between 626 and 65535"
            ));
        }
        let v4 = self
            .pod_cidrs
            .iter()
            .filter(|c| matches!(c, IpNet::V4(_)))
            .count();
        let v6 = self.pod_cidrs.len() - v4;
        if v4 > 1 || v6 > 1 {
            return invalid("podCIDRs: at most one IPv4 and one IPv6 CIDR".into());
        }
        for cidr in &self.pod_cidrs {
            if *cidr != cidr.trunc() {
                return invalid(format!(
                    "podCIDRs: Invalid value: {cidr}: host bits set (did you mean {}?)",
                    cidr.trunc()
                ));
            }
            let max = if cidr.addr().is_ipv4() { 30 } else { 126 };
            if cidr.prefix_len() > max {
                return invalid(format!(
                    "podCIDRs: Invalid value: {cidr}: must be a /{max} or larger"
                ));
            }
        }
        Ok(())
    }

    /// The MTU pods get: the configured one less the routing mode's overhead.
    pub fn pod_mtu(&self) -> u32 {
        let mtu = self.mtu.unwrap_or(DEFAULT_MTU);
        match self.mode {
            RoutingMode::Native => mtu,
            RoutingMode::Vxlan => mtu - VXLAN_OVERHEAD,
        }
    }

    /// Where IPAM keeps its state.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// GC's list of valid attachments, from either key.
    pub fn gc_valid_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }
}

/// One interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:...`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// MTU (1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The namespace path, for interfaces inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// One address of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix.
    pub address: IpNet,
    /// Default gateway for this address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// One route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// An ADD result, version-independent; [`CniResult::to_json`] prints it in a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    /// Interfaces: the host side first, then the container side.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes inside the container.
    #[serde(default)]
    pub routes: Vec<Route>,
}

impl CniResult {
    /// Reads a `prevResult` of any supported version (0.4.0's `ips[].version` ignored).
    pub fn from_prev(value: &Value) -> Result<Self, CniError> {
        serde_json::from_value(value.clone()).map_err(|e| {
            CniError::new(
                code::DECODING_FAILURE,
                "failed to decode prevResult",
                e.to_string(),
            )
        })
    }

    /// The result as `version` prints it.
    pub fn to_json(&self, version: Version) -> Value {
        let mut out = serde_json::to_value(self).expect("result serializes");
        out["cniVersion"] = Value::String(version.as_str().to_owned());
        out["dns"] = serde_json::json!({});
        if version < Version::V1_1_0 {
            for iface in out["interfaces"].as_array_mut().into_iter().flatten() {
                if let Some(obj) = iface.as_object_mut() {
                    obj.remove("mtu");
                }
            }
        }
        if version == Version::V0_4_0 {
            for ip in out["ips"].as_array_mut().into_iter().flatten() {
                let v = if ip["address"].as_str().is_some_and(|a| a.contains(':')) {
                    "6"
                } else {
                    "4"
                };
                ip["version"] = Value::String(v.to_owned());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        Env::from_vars(pairs.iter().copied())
    }

    #[test]
    fn versions_parse_and_order() {
        assert!(Version::parse("1.1.0").unwrap() > Version::parse("0.4.0").unwrap());
        let err = Version::parse("0.3.1").unwrap_err();
        assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
        assert!(err.to_string().contains("0.3.1") && err.details.contains("1.1.0"));
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(env(&base).is_ok());
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let partial: Vec<_> = base
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let err = env(&partial).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT, "{missing}");
            assert!(err.msg.contains(missing), "{err}");
        }
    }

    #[test]
    fn del_works_without_a_namespace() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Del);
        assert!(e.netns.is_none());
    }

    #[test]
    fn bad_environment_is_code_4_naming_the_variable() {
        for (pairs, needle) in [
            (vec![], "CNI_COMMAND is not set"),
            (vec![("CNI_COMMAND", "FROB")], "unknown value \"FROB\""),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "-bad/id"),
                    ("CNI_IFNAME", "eth0"),
                ],
                "CNI_CONTAINERID",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "much-too-long-name"),
                ],
                "CNI_IFNAME",
            ),
            (
                vec![
                    ("CNI_COMMAND", "DEL"),
                    ("CNI_CONTAINERID", "a"),
                    ("CNI_IFNAME", "eth0"),
                    ("CNI_ARGS", "x"),
                ],
                "CNI_ARGS",
            ),
        ] {
            let err = env(&pairs).unwrap_err();
            assert_eq!(err.code, code::INVALID_ENVIRONMENT);
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn cni_args_are_parsed() {
        let e = env(&[
            ("CNI_COMMAND", "VERSION"),
            ("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=web-0"),
        ])
        .unwrap();
        assert_eq!(e.args["K8S_POD_NAME"], "web-0");
    }

    #[test]
    fn config_errors_carry_the_spec_codes() {
        let cases: &[(&str, u32, &str)] = &[
            ("{not json", code::DECODING_FAILURE, "decode"),
            (
                r#"{"cniVersion":"0.2.0","name":"n","type":"kubewire-cni"}"#,
                code::INCOMPATIBLE_VERSION,
                "0.2.0",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"","type":"kubewire-cni"}"#,
                code::INVALID_NETWORK_CONFIG,
                "name",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"kubewire-cni","mtu":100}"#,
                code::INVALID_NETWORK_CONFIG,
                "mtu: Invalid value: 100",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"kubewire-cni","podCIDRs":["10.244.1.1/24"]}"#,
                code::INVALID_NETWORK_CONFIG,
                "host bits",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"kubewire-cni","podCIDRs":["10.0.0.0/24","10.1.0.0/24"]}"#,
                code::INVALID_NETWORK_CONFIG,
                "at most one",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"kubewire-cni","ipam":{"type":"host-local"}}"#,
                code::UNSUPPORTED_FIELD,
                "ipam",
            ),
        ];
        for (input, want, needle) in cases {
            let err = NetConf::parse(input.as_bytes()).unwrap_err();
            assert_eq!(err.code, *want, "{input}: {err}");
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    #[test]
    fn vxlan_mode_takes_its_overhead_from_the_mtu() {
        let (conf, _) = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","type":"t","mtu":1500,"mode":"vxlan"}"#,
        )
        .unwrap();
        assert_eq!(conf.pod_mtu(), 1450);
        let (conf, _) = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#).unwrap();
        assert_eq!(conf.pod_mtu(), 1500);
    }

    #[test]
    fn results_print_in_each_version() {
        let result = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: Some(1500),
                sandbox: Some("/run/netns/x".into()),
            }],
            ips: vec![
                IpConfig {
                    address: "10.244.1.2/32".parse().unwrap(),
                    gateway: Some("169.254.1.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "fd00::2/128".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("169.254.1.1".parse().unwrap()),
            }],
        };
        let v11 = result.to_json(Version::V1_1_0);
        assert_eq!(v11["cniVersion"], "1.1.0");
        assert_eq!(v11["interfaces"][0]["mtu"], 1500);
        assert!(v11["ips"][0].get("version").is_none());
        let v10 = result.to_json(Version::V1_0_0);
        assert!(v10["interfaces"][0].get("mtu").is_none());
        let v04 = result.to_json(Version::V0_4_0);
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
        // Any version reads back as the same result.
        for v in [v11, v10, v04] {
            let back = CniResult::from_prev(&v).unwrap();
            assert_eq!(back.ips, result.ips);
        }
    }

    #[test]
    fn error_json_has_the_spec_shape() {
        let e = CniError::new(7, "bad", "fix it");
        let j = e.to_json("1.1.0");
        assert_eq!(
            j,
            serde_json::json!({"cniVersion":"1.1.0","code":7,"msg":"bad","details":"fix it"})
        );
    }
}
