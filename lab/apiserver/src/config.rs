//! How the server runs ([`Config`]) and the command line of `kubewire apiserver`
//! ([`Args`]), which converts into it.

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
    /// Addresses to serve HTTPS on; port 0 picks a free port (see [`Server::addresses`]).
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
#[derive(Debug, Clone, clap::Args)]
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
        }
    }
}
