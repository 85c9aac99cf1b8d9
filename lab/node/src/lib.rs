//! `kubewire node`: the lab's kubelet.
//!
//! One process per lab node, started inside the node's network namespace. It
//!
//! - registers the Node (addresses, capacity, `Ready` once the CNI config exists) and
//!   renews its Lease in `kube-node-lease` every `--lease-renew` (10 s) ([`register`]);
//! - runs the pods bound to it ([`pod`]): a network namespace per pod wired by the CNI
//!   config list exactly as containerd's libcni runs it ([`cni`]), containers as processes
//!   started through `kubewire container-init` ([`init`]) in a private mount namespace that
//!   binds the pod's own resolv.conf, hosts, hostname and service-account files
//!   ([`files`], [`env`] with the Services mirrored in [`services`]) and its
//!   emptyDir/configMap/secret/hostPath volumes ([`volumes`]), probes ([`probe`]),
//!   restarts with backoff, graceful deletion;
//! - serves the kubelet API over HTTPS on the node's address, port 10250 ([`server`]):
//!   `/containerLogs`, `/healthz`, and the streaming endpoints `/exec`, `/attach` and
//!   `/portForward` ([`stream`], [`exec`]) over WebSocket or SPDY.
//!
//! Everything a pod has on disk lives in `DATA/pods/<uid>/` with a `sandbox.json` that a
//! restarted node adopts ([`record`]). See docs/node.md.

mod cni;
mod env;
mod exec;
mod files;
pub mod init;
mod pod;
mod probe;
mod pty;
mod record;
mod register;
mod security;
mod server;
mod services;
mod stats;
mod stream;
mod time;
mod volumes;
pub mod workload;

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use init::container_init_main;
pub use record::{ContainerRecord, SandboxFile, kill_all, remove_host_mount_points};
pub use workload::WorkloadArgs;

/// Errors of the node, each naming the object or file it is about. The cause is kept
/// as the source, not repeated in the message: print them with [`k8s::ErrorChain`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the API server failed (refused, or the server could not be
    /// reached); retried by the caller's loop.
    #[error("{what}")]
    Api {
        /// What was asked, naming the object.
        what: String,
        #[source]
        source: kube::Error,
    },
    /// The API server answered without what was asked for.
    #[error("{0}")]
    Answer(String),
    /// The cluster could not be found or its client built (kubeconfig, `--server`).
    #[error(transparent)]
    Client(#[from] k8s::Error),
    /// A container's environment names a ConfigMap, Secret or key that does not exist
    /// (kubelet's CreateContainerConfigError); the start is tried again after the
    /// backoff.
    #[error("container {container} of pod {pod}: {reason}")]
    ContainerConfig {
        container: String,
        /// `namespace/name`.
        pod: String,
        /// What is missing.
        reason: String,
    },
    /// The pod network is not ready (no CNI config) or a CNI plugin failed (its own
    /// message); the pod stays ContainerCreating and is retried.
    #[error("CNI: {0}")]
    Cni(String),
    /// A kernel operation (namespaces, links) failed.
    #[error(transparent)]
    Kernel(#[from] netlink::Error),
    /// A file, process or socket of the node or of a pod could not be made, read or
    /// written.
    #[error("{op}")]
    Io {
        /// What we were doing, naming the file.
        op: String,
        #[source]
        source: std::io::Error,
    },
    /// The kubelet API server could not start (TLS material, listening socket).
    #[error("kubelet API: {what}")]
    Server {
        /// What failed.
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    /// A failed request to the API server; `what` names it.
    pub(crate) fn api(what: impl Into<String>, source: kube::Error) -> Self {
        Error::Api {
            what: what.into(),
            source,
        }
    }

    /// Whether the API server answered that the object does not exist.
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Error::Api { source: kube::Error::Api(s), .. } if s.code == 404)
    }
}

/// `kubewire node` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// This node's name (its Node object).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// How the node finds its API server (in the lab: a kubeconfig whose server is on
    /// the underlay, 198.18.0.1:6443).
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// The node's InternalIP(s), comma-separated (IPv4 first for dual-stack); the
    /// kubelet API listens on each.
    #[arg(long, value_delimiter = ',', required = true)]
    pub node_ip: Vec<IpAddr>,
    /// Where pods' files, logs and sandbox.json live.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The CNI config directory (the agent writes the conflist there).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// Where CNI plugins are found (`CNI_PATH`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "/opt/cni/bin")]
    pub cni_bin_dir: Vec<PathBuf>,
    /// The cluster DNS server(s) pods with `dnsPolicy: ClusterFirst` use.
    #[arg(long, value_delimiter = ',', default_value = "10.96.0.10")]
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The kubelet API's port.
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// How often the Lease is renewed and the Node's status reported (Go's duration
    /// syntax: `10s`, `2.5s`).
    #[arg(long, default_value = "10s", value_parser = k8s::parse_duration)]
    pub lease_renew: std::time::Duration,
    /// The node's file system as `hostPath` volumes see it: a hostPath `/etc/cni/net.d`
    /// is `<this>/etc/cni/net.d`. A real node's is `/`; the lab gives each node a
    /// directory of its own, so that the nodes' files stay apart and off the host's.
    #[arg(long, default_value = "/")]
    pub host_path_root: PathBuf,
}

impl Args {
    /// These flags as `kubewire node`'s command-line arguments (what parses back into
    /// `self`; every flag is written, defaults too). Lists must not be empty, nor
    /// hold a path with a comma (the flags split at commas).
    pub fn to_args(&self) -> Vec<OsString> {
        fn csv(ips: &[IpAddr]) -> OsString {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
                .into()
        }
        let mut args: Vec<OsString> = vec!["--node-name".into(), self.node_name.clone().into()];
        args.extend(self.client.to_args());
        args.extend([
            "--node-ip".into(),
            csv(&self.node_ip),
            "--data-dir".into(),
            self.data_dir.clone().into(),
            "--cni-conf-dir".into(),
            self.cni_conf_dir.clone().into(),
        ]);
        for dir in &self.cni_bin_dir {
            args.extend(["--cni-bin-dir".into(), dir.clone().into()]);
        }
        args.extend([
            "--cluster-dns".into(),
            csv(&self.cluster_dns),
            "--cluster-domain".into(),
            self.cluster_domain.clone().into(),
            "--port".into(),
            self.port.to_string().into(),
            "--lease-renew".into(),
            k8s::duration::format_duration(self.lease_renew).into(),
            "--host-path-root".into(),
            self.host_path_root.clone().into(),
        ]);
        args
    }
}

/// One pod as the kubelet API sees it (logs, exec, attach, port-forward).
#[derive(Debug, Clone, Default)]
pub(crate) struct PodEntry {
    /// `DATA/pods/<uid>`.
    pub dir: PathBuf,
    pub uid: String,
    /// The pod's network namespace; `None` for hostNetwork pods and before it exists.
    pub netns: Option<PathBuf>,
    /// Containers that have started, by name.
    pub containers: HashMap<String, ContainerEntry>,
}

/// A container of a [`PodEntry`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ContainerEntry {
    pub restarts: u32,
    /// Its current run, while it runs: container-init's pid and spec.
    pub running: Option<exec::ContainerRef>,
}

/// What every task of the node shares.
pub(crate) struct Ctx {
    pub args: Args,
    pub client: kube::Client,
    /// The node's network namespace name (`NAME-node-N`); prefixes pod namespaces.
    pub netns_name: String,
    pub services: services::Services,
    pub cni: cni::Cni,
    pub dns: files::DnsSettings,
    /// The cluster CA (PEM), for pods' `ca.crt`.
    pub ca_pem: String,
    /// (namespace, name) → what the kubelet API serves of it, kept by the pod workers.
    pub pods: Mutex<HashMap<(String, String), PodEntry>>,
    /// This binary, to run `container-init` and built-in workloads.
    pub exe: PathBuf,
    /// The last samples of the node's and its containers' resource usage.
    pub stats: stats::Stats,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("node", &self.args.node_name)
            .finish()
    }
}

/// The name of the named network namespace this process runs in (`ip netns identify`),
/// or the node name when it runs in an unnamed one.
fn current_netns_name(fallback: &str) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::fs::metadata("/proc/self/ns/net") else {
        return fallback.to_owned();
    };
    for name in netlink::netns::list().unwrap_or_default() {
        if let Ok(m) = std::fs::metadata(netlink::netns::path(&name))
            && m.ino() == me.ino()
            && m.dev() == me.dev()
        {
            return name;
        }
    }
    fallback.to_owned()
}

/// PEM text of DER certificates, 64 base64 characters a line (RFC 7468).
fn pem(ders: &[Vec<u8>]) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in ders {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        // Base64 is ASCII: every 64-byte chunk is a whole string.
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Runs the node until SIGINT/SIGTERM. Containers keep running when it stops (as with
/// kubelet); the next start adopts them.
pub async fn run(args: Args) -> Result<(), Error> {
    let mut shutdown =
        k8s::Shutdown::new().map_err(|e| Error::io("installing the signal handlers", e))?;
    let config = args.client.config().await?;
    let client = kube::Client::try_from(config.clone()).map_err(k8s::Error::Client)?;
    let netns_name = current_netns_name(&args.node_name);
    let data = &args.data_dir;
    std::fs::create_dir_all(data.join("pods"))
        .map_err(|e| Error::io(format!("creating {}", data.display()), e))?;
    let ctx = Arc::new(Ctx {
        cni: cni::Cni {
            bin_dirs: args.cni_bin_dir.clone(),
            cache_dir: data.join("cni"),
        },
        dns: files::DnsSettings {
            cluster_dns: args.cluster_dns.clone(),
            cluster_domain: args.cluster_domain.clone(),
            host_resolv: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        },
        ca_pem: pem(config.root_cert.as_deref().unwrap_or(&[])),
        client,
        netns_name,
        services: services::Services::new(),
        pods: Mutex::new(HashMap::new()),
        stats: stats::Stats::default(),
        exe: std::fs::read_link("/proc/self/exe")
            .unwrap_or_else(|_| Path::new("/proc/self/exe").to_owned()),
        args,
    });
    tracing::info!(node = %ctx.args.node_name, netns = %ctx.netns_name, "node starting");
    let svc_task = tokio::spawn({
        let ctx = ctx.clone();
        async move { ctx.services.run(ctx.client.clone()).await }
    });
    let server = server::start(ctx.clone(), &config).await?;
    let reg = tokio::spawn(register::run(ctx.clone()));
    let pods = tokio::spawn(pod::run(ctx.clone()));
    let sampler = tokio::spawn(stats::Stats::run(ctx.clone()));
    shutdown.recv().await;
    tracing::info!("node stopping; containers keep running and are adopted at the next start");
    reg.abort();
    pods.abort();
    server.abort();
    svc_task.abort();
    sampler.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;
    use k8s::ErrorChain;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: Vec<OsString>) -> Args {
        Cli::try_parse_from(std::iter::once(OsString::from("node")).chain(args))
            .unwrap_or_else(|e| panic!("{e}"))
            .args
    }

    #[test]
    fn flags_round_trip() {
        let defaults = parse(
            [
                "--node-name",
                "node-1",
                "--node-ip",
                "198.18.0.11",
                "--data-dir",
                "/d",
            ]
            .map(OsString::from)
            .to_vec(),
        );
        assert_eq!(parse(defaults.to_args()), defaults);
        let every = Args {
            node_name: "node-2".into(),
            client: k8s::ClientArgs {
                kubeconfig: Some("/var/lib/kubewire/node-2/kubeconfig".into()),
                server: Some("https://198.18.0.1:6443".into()),
            },
            node_ip: vec!["198.18.0.12".parse().unwrap(), "2001:2::c".parse().unwrap()],
            data_dir: "/var/lib/kubewire/node-2/kubelet".into(),
            cni_conf_dir: "/var/lib/kubewire/node-2/net.d".into(),
            cni_bin_dir: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            cluster_dns: vec![
                "10.96.0.53".parse().unwrap(),
                "fd00:10:96::a".parse().unwrap(),
            ],
            cluster_domain: "lab.example".into(),
            port: 10251,
            lease_renew: Duration::from_millis(2500),
            host_path_root: "/var/lib/kubewire/kubewire/node-2/root".into(),
        };
        assert_ne!(every, defaults);
        assert_eq!(parse(every.to_args()), every);
    }

    #[test]
    fn errors_keep_their_cause_and_print_it_once() {
        let mut status = kube::core::Status::failure("nodes \"node-1\" not found", "NotFound");
        status.code = 404;
        let e = Error::api(
            "updating the status of node node-1",
            kube::Error::Api(Box::new(status)),
        );
        assert_eq!(e.to_string(), "updating the status of node node-1");
        let chain = ErrorChain(&e).to_string();
        assert!(
            chain.starts_with("updating the status of node node-1: "),
            "{chain}"
        );
        assert!(chain.contains("not found"), "{chain}");
        assert!(e.is_not_found());
        let e = Error::io(
            "writing /x/sandbox.json",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert_eq!(e.to_string(), "writing /x/sandbox.json");
        assert!(!e.is_not_found());
        assert_eq!(
            ErrorChain(&e).to_string(),
            "writing /x/sandbox.json: permission denied"
        );
    }

    #[test]
    fn pem_encodes() {
        assert_eq!(
            super::pem(&[b"hello".to_vec()]),
            "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n"
        );
        // 48 bytes make exactly one line of 64 characters; a 49th starts another.
        let two = super::pem(&[vec![0xff; 48], vec![0; 49]]);
        let lines: Vec<&str> = two.lines().collect();
        assert_eq!(lines.len(), 7, "{two}");
        assert_eq!(lines[1], "/".repeat(64));
        assert_eq!((lines[4].len(), lines[5]), (64, "AA=="));
    }
}
