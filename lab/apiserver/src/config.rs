//! How the server runs ([`Config`]) and the command line of `kubewire apiserver`
//! ([`Args`]), which converts into it.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use crate::store;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Database, CA, certificates, token and `admin.kubeconfig` live here.
    pub data_dir: PathBuf,
    /// Addresses to serve HTTPS on; port 0 picks a free port (see [`crate::Server::addresses`]).
    pub listen: Vec<SocketAddr>,
    /// Service ranges, at most one per IP family; the first is the primary family.
    pub service_cidrs: Vec<IpNet>,
    /// Range of NodePorts.
    pub node_port_range: RangeInclusive<u16>,
    /// Events the watch log keeps; watches from further back get 410 Expired.
    pub watch_log_capacity: usize,
    /// Addresses to serve on inside other network namespaces (the lab's underlay), each
    /// with the path of the namespace file (`/run/netns/NAME` or `/proc/PID/ns/net`).
    pub listen_in_netns: Vec<NetnsListen>,
    /// The address the `default/kubernetes` service points pods at; `None`: the IP of
    /// the first `listen_in_netns` address, else of the first `listen` address.
    pub advertise_address: Option<IpAddr>,
    /// The network namespace admission webhooks backed by a Service are called from
    /// (at the Service's cluster IP, as kube-apiserver on a node calls them); `None`:
    /// this process's own.
    pub service_netns: Option<PathBuf>,
}

/// A listen address inside another network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsListen {
    /// The namespace file.
    pub netns: PathBuf,
    /// The address, as seen inside that namespace.
    pub addr: SocketAddr,
}

impl std::str::FromStr for NetnsListen {
    type Err = String;

    /// `NETNS=ADDR`, where NETNS is a name under /run/netns or a path.
    fn from_str(s: &str) -> Result<NetnsListen, String> {
        let (ns, addr) = s.rsplit_once('=').ok_or_else(|| {
            format!("{s:?}: expected NETNS=ADDR, e.g. kubewire-underlay=198.18.0.1:6443")
        })?;
        let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
        let netns = if ns.contains('/') {
            PathBuf::from(ns)
        } else {
            Path::new("/run/netns").join(ns)
        };
        Ok(NetnsListen { netns, addr })
    }
}

impl Config {
    /// The lab's defaults, storing in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 6443))],
            service_cidrs: default_service_cidrs(),
            node_port_range: 30000..=32767,
            watch_log_capacity: store::DEFAULT_LOG_CAPACITY,
            listen_in_netns: Vec::new(),
            advertise_address: None,
            service_netns: None,
        }
    }
}

fn default_service_cidrs() -> Vec<IpNet> {
    ["10.96.0.0/12", "fd00:10:96::/112"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected FIRST-LAST, e.g. 30000-32767"))?;
    let a: u16 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u16 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a == 0 || a > b {
        return Err(format!(
            "{s:?}: the range must be non-empty and start above 0"
        ));
    }
    Ok(a..=b)
}

/// Command-line flags of `kubewire apiserver`.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// Directory for the database, the CA and certificates and `admin.kubeconfig`
    /// (written once the server is ready to serve).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to serve HTTPS on; repeat for several. Port 0 picks a free port.
    #[arg(long = "listen", default_value = "127.0.0.1:6443")]
    pub listen: Vec<SocketAddr>,
    /// Service IP range(s), comma-separated, at most one per IP family.
    #[arg(
        long = "service-cidr",
        value_delimiter = ',',
        default_value = "10.96.0.0/12,fd00:10:96::/112"
    )]
    pub service_cidrs: Vec<IpNet>,
    /// NodePort range.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub node_port_range: RangeInclusive<u16>,
    /// Also serve inside a network namespace: `NETNS=ADDR`, NETNS a name under /run/netns
    /// or a namespace file path (the lab's underlay: `kubewire-underlay=198.18.0.1:6443`).
    #[arg(long = "listen-netns")]
    pub listen_in_netns: Vec<NetnsListen>,
    /// IP the `default/kubernetes` service's endpoints point at (kube-apiserver's
    /// `--advertise-address`). Default: the first --listen-netns address's IP, else the
    /// first --listen IP.
    #[arg(long)]
    pub advertise_address: Option<IpAddr>,
    /// Network namespace (a name under /run/netns or a path) to call admission webhooks
    /// backed by a Service from, at the Service's cluster IP: one where Service
    /// addresses route (the lab: a node's). Default: the server's own.
    #[arg(long, value_parser = parse_netns)]
    pub service_netns: Option<PathBuf>,
}

/// A namespace name under /run/netns, or a path.
fn parse_netns(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("a network namespace name or path is needed".into());
    }
    Ok(if s.contains('/') {
        PathBuf::from(s)
    } else {
        Path::new("/run/netns").join(s)
    })
}

impl Args {
    /// These flags as command-line arguments (what parses back into `self`), for
    /// whoever starts `kubewire apiserver`. Every field is written out, so the server
    /// does not fall back on its own defaults; an empty list is left out (clap cannot
    /// say "none" for a list with a default, and a server needs an address and a range).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["--data-dir".into(), self.data_dir.clone().into()];
        for addr in &self.listen {
            args.extend(["--listen".into(), addr.to_string().into()]);
        }
        if !self.service_cidrs.is_empty() {
            let cidrs: Vec<String> = self.service_cidrs.iter().map(IpNet::to_string).collect();
            args.extend(["--service-cidr".into(), cidrs.join(",").into()]);
        }
        let ports = &self.node_port_range;
        args.extend([
            "--node-port-range".into(),
            format!("{}-{}", ports.start(), ports.end()).into(),
        ]);
        for l in &self.listen_in_netns {
            // The namespace as a path (it contains a `/`, so it is not read as a name).
            let mut value = l.netns.clone().into_os_string();
            value.push(format!("={}", l.addr));
            args.extend(["--listen-netns".into(), value]);
        }
        if let Some(ip) = self.advertise_address {
            args.extend(["--advertise-address".into(), ip.to_string().into()]);
        }
        if let Some(ns) = &self.service_netns {
            args.extend(["--service-netns".into(), ns.clone().into_os_string()]);
        }
        args
    }
}

impl From<Args> for Config {
    fn from(a: Args) -> Config {
        Config {
            data_dir: a.data_dir,
            listen: a.listen,
            service_cidrs: a.service_cidrs,
            node_port_range: a.node_port_range,
            watch_log_capacity: store::DEFAULT_LOG_CAPACITY,
            listen_in_netns: a.listen_in_netns,
            advertise_address: a.advertise_address,
            service_netns: a.service_netns,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        apiserver: Args,
    }

    fn parse(argv: Vec<OsString>) -> Args {
        Cli::parse_from(std::iter::once("x".into()).chain(argv)).apiserver
    }

    #[test]
    fn flags_round_trip() {
        let args = Args {
            data_dir: "/var/lib/kubewire/lab-a/api".into(),
            listen: vec![
                "127.0.0.1:16443".parse().unwrap(),
                "[::1]:16443".parse().unwrap(),
            ],
            service_cidrs: vec![
                "10.100.0.0/16".parse().unwrap(),
                "fd00:10:100::/112".parse().unwrap(),
            ],
            node_port_range: 31000..=31999,
            listen_in_netns: vec![
                "kubewire-underlay=198.18.0.1:6443".parse().unwrap(),
                "/proc/42/ns/net=[fd00:198:18::1]:6443".parse().unwrap(),
            ],
            advertise_address: Some("198.18.0.1".parse().unwrap()),
            service_netns: Some("/run/netns/kubewire-node-1".into()),
        };
        let defaults = parse(vec!["--data-dir".into(), "/d".into()]);
        // Every field differs from its default, so each is really written out.
        assert_ne!(args.listen, defaults.listen);
        assert_ne!(args.service_cidrs, defaults.service_cidrs);
        assert_ne!(args.node_port_range, defaults.node_port_range);
        assert_ne!(args.listen_in_netns, defaults.listen_in_netns);
        assert_ne!(args.advertise_address, defaults.advertise_address);
        assert_ne!(args.service_netns, defaults.service_netns);
        assert_eq!(parse(args.to_args()), args);
        assert_eq!(parse(defaults.to_args()), defaults);
    }

    #[test]
    fn netns_names_and_paths() {
        let l: NetnsListen = "kubewire-underlay=198.18.0.1:6443".parse().unwrap();
        assert_eq!(l.netns, Path::new("/run/netns/kubewire-underlay"));
        assert!("198.18.0.1:6443".parse::<NetnsListen>().is_err());
        assert_eq!(parse_port_range("30000-32767"), Ok(30000..=32767));
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("20-10").is_err());
    }
}
