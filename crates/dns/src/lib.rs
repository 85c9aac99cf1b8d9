//! `kubewire dns`: the cluster DNS add-on.
//!
//! Shape: kube-rs watches → [`view::View`] (an indexed, compact view of Services,
//! EndpointSlices and, for `--pods verified`, Pods) → [`answer::answer`] (a pure function
//! from view and question to records; the unit tests live there) → [`server`] (UDP on
//! plain threads with a per-thread cache of encoded answers, TCP on tokio) and
//! [`forward`] for every name outside the cluster. See docs/dns.md.

pub mod answer;
#[cfg(test)]
mod answer_tests;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod view;
mod watch;
pub mod wire;

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

pub use answer::{PodMode, Zone};
use clap::ValueEnum;
use forward::Forwarder;
use metrics::Metrics;
use view::View;

/// Errors that stop `kubewire dns` from starting. Each keeps its cause as its
/// `source`; the message does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A command-line value is wrong; the message names the flag.
    #[error("{field}: {reason}")]
    Config {
        /// The flag.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `--cluster-domain` is not a domain name.
    #[error("--cluster-domain: {domain:?} is not a domain name")]
    ClusterDomain {
        /// What was given.
        domain: String,
        /// Why it does not parse.
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// A socket could not be bound (port in use, no permission for port 53, ...).
    #[error("binding {what} on {addr}")]
    Bind {
        /// Which service.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes client could not be configured (kubeconfig or in-cluster).
    #[error("building the Kubernetes client")]
    Client(#[source] k8s::Error),
    /// The SIGINT/SIGTERM handlers could not be installed.
    #[error("installing the signal handlers")]
    Signals(#[source] std::io::Error),
    /// resolv.conf could not be read for the upstreams.
    #[error("reading upstreams from {path} (--upstream names them instead)")]
    ResolvConf {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `kubewire dns` arguments.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct Args {
    /// How to reach the API server.
    #[command(flatten)]
    pub client: k8s::ClientArgs,
    /// Address to serve DNS on, UDP and TCP; repeat for several. `:PORT` means every
    /// address of both families [default: :53, i.e. 0.0.0.0:53 and [::]:53].
    #[arg(long)]
    pub listen: Vec<String>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// TTL of every cluster record (and the SOA minimum), in seconds.
    #[arg(long, default_value_t = 30)]
    pub ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`.
    #[arg(long, value_enum, default_value_t = PodMode::Insecure)]
    pub pods: PodMode,
    /// Upstream servers for names outside the cluster (`IP` or `IP:PORT`, repeat or
    /// comma-separate) [default: the nameservers of --resolv-conf].
    #[arg(long, value_delimiter = ',')]
    pub upstream: Vec<String>,
    /// The resolv.conf that gives the default upstreams.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Upstream queries in flight at most; more get REFUSED (CoreDNS `max_concurrent`).
    #[arg(long, default_value_t = 1000)]
    pub max_concurrent: usize,
    /// Where `/health` and `/ready` are served (`off` to disable).
    #[arg(long, default_value = ":8080")]
    pub health_listen: String,
    /// Where Prometheus `/metrics` is served (`off` to disable).
    #[arg(long, default_value = ":9153")]
    pub metrics_listen: String,
    /// UDP threads per listen address [default: one per CPU].
    #[arg(long)]
    pub udp_threads: Option<usize>,
}

impl Args {
    /// These flags as `kubewire dns`'s command-line arguments (what parses back into
    /// `self`; every flag is written, defaults too). An upstream must not hold a comma
    /// (the flag splits at commas).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args = self.client.to_args();
        for listen in &self.listen {
            args.extend(["--listen".into(), listen.into()]);
        }
        let pods = self
            .pods
            .to_possible_value()
            .map(|v| v.get_name().to_owned());
        args.extend([
            "--cluster-domain".into(),
            self.cluster_domain.clone().into(),
            "--ttl".into(),
            self.ttl.to_string().into(),
            "--pods".into(),
            pods.unwrap_or_default().into(),
        ]);
        for upstream in &self.upstream {
            args.extend(["--upstream".into(), upstream.into()]);
        }
        args.extend([
            "--resolv-conf".into(),
            self.resolv_conf.clone().into(),
            "--max-concurrent".into(),
            self.max_concurrent.to_string().into(),
            "--health-listen".into(),
            self.health_listen.clone().into(),
            "--metrics-listen".into(),
            self.metrics_listen.clone().into(),
        ]);
        if let Some(n) = self.udp_threads {
            args.extend(["--udp-threads".into(), n.to_string().into()]);
        }
        args
    }
}

/// What every socket thread shares.
#[derive(Debug)]
pub struct Shared {
    /// The view answers come from.
    pub view: RwLock<View>,
    generation: AtomicU32,
    synced: AtomicBool,
    /// The cluster zone.
    pub zone: Zone,
    /// Metrics.
    pub metrics: Metrics,
    /// Upstreams and their cache.
    pub forwarder: Forwarder,
}

impl Shared {
    /// A server state with an empty, not yet synced view.
    pub fn new(zone: Zone, forwarder: Forwarder, metrics: Metrics) -> Self {
        Shared {
            view: RwLock::new(View::new()),
            generation: AtomicU32::new(0),
            synced: AtomicBool::new(false),
            zone,
            metrics,
            forwarder,
        }
    }

    /// Changes the view; answer caches see the change at their next request.
    pub fn update<T>(&self, change: impl FnOnce(&mut View) -> T) -> T {
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        let out = change(&mut view);
        self.generation.store(view.serial, Ordering::Release);
        out
    }

    /// The view's generation (changes with every update).
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether the first list of every watched kind has completed.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the view synced: cluster names are answered from now on.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
        // Answers cached before (SERVFAIL is never cached, but be safe) are dropped.
        self.update(|v| v.serial = v.serial.wrapping_add(1));
    }
}

/// Parses a listen address: `IP:PORT`, `[IPv6]:PORT`, or `:PORT` for 0.0.0.0 and [::].
pub fn parse_listen(spec: &str, field: &'static str) -> Result<Vec<SocketAddr>, Error> {
    if let Some(port) = spec.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| Error::Config {
            field,
            reason: format!("{spec:?}: not a port"),
        })?;
        return Ok(vec![
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)),
            SocketAddr::from(([0, 0, 0, 0], port)),
        ]);
    }
    spec.parse().map(|a| vec![a]).map_err(|_| Error::Config {
        field,
        reason: format!("{spec:?}: expected IP:PORT, [IPv6]:PORT or :PORT"),
    })
}

/// Parses an upstream: `IP` (port 53) or `IP:PORT`.
pub fn parse_upstream(spec: &str) -> Result<SocketAddr, Error> {
    if let Ok(ip) = spec.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    spec.parse().map_err(|_| Error::Config {
        field: "--upstream",
        reason: format!("{spec:?}: expected IP or IP:PORT"),
    })
}

/// The `nameserver` lines of a resolv.conf.
pub fn resolv_conf_nameservers(path: &Path) -> Result<Vec<SocketAddr>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ResolvConf {
        path: path.to_owned(),
        source,
    })?;
    Ok(text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|s| s.trim().split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect())
}

/// A server whose sockets are bound and whose threads run (the view is fed by the
/// caller: watches in [`run`], a hand-made view in tests).
#[derive(Debug)]
pub struct Running {
    /// The shared state (view, metrics).
    pub shared: Arc<Shared>,
    /// Bound DNS addresses (UDP and TCP share each).
    pub dns: Vec<SocketAddr>,
    /// Bound HTTP addresses (health, metrics).
    pub http: Vec<SocketAddr>,
}

/// Binds every socket and starts serving; must run inside a tokio runtime.
pub fn start(shared: Arc<Shared>, args: &Args) -> Result<Running, Error> {
    let listens: Vec<String> = if args.listen.is_empty() {
        vec![":53".into()]
    } else {
        args.listen.clone()
    };
    let threads = args.udp_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let rt = tokio::runtime::Handle::current();
    let mut dns = Vec::new();
    for spec in &listens {
        for addr in parse_listen(spec, "--listen")? {
            let (socks, bound) = server::bind_udp(addr, threads)?;
            // TCP on the port UDP got (matters for port 0).
            let tcp = server::bind_tcp(bound)?;
            for s in socks {
                server::spawn_udp(shared.clone(), s, rt.clone())?;
            }
            tokio::spawn(server::serve_tcp(shared.clone(), tcp));
            dns.push(bound);
        }
    }
    let mut http = Vec::new();
    let mut specs = vec![args.health_listen.clone()];
    if args.metrics_listen != args.health_listen {
        specs.push(args.metrics_listen.clone());
    }
    for spec in specs.iter().filter(|s| *s != "off" && !s.is_empty()) {
        let l = server::bind_http(spec)?;
        if let Ok(a) = l.local_addr() {
            http.push(a);
        }
        tokio::spawn(server::serve_http(shared.clone(), l));
    }
    let sh = shared.clone();
    tokio::spawn(async move { sh.forwarder.health_loop(&sh).await });
    Ok(Running { shared, dns, http })
}

/// Builds the shared state from the arguments (zone, upstreams, metrics).
pub fn shared(args: &Args) -> Result<Arc<Shared>, Error> {
    let zone = Zone::new(&args.cluster_domain, args.ttl, args.pods)?;
    let upstreams = if args.upstream.is_empty() {
        // Cluster names do not need upstreams: run without them rather than not at all.
        resolv_conf_nameservers(&args.resolv_conf).unwrap_or_else(|e| {
            tracing::warn!(error = %k8s::ErrorChain(&e), "no upstreams: names outside the cluster get SERVFAIL");
            Vec::new()
        })
    } else {
        args.upstream
            .iter()
            .map(|s| parse_upstream(s))
            .collect::<Result<_, _>>()?
    };
    let port = args
        .listen
        .first()
        .and_then(|l| l.rsplit(':').next())
        .unwrap_or("53");
    let metrics = Metrics::new(&format!("dns://:{port}"));
    Ok(Arc::new(Shared::new(
        zone,
        Forwarder::new(upstreams, args.max_concurrent),
        metrics,
    )))
}

/// Runs `kubewire dns` until SIGINT or SIGTERM.
pub async fn run(args: Args) -> Result<(), Error> {
    // First, so that a signal during the start is kept, not fatal.
    let mut shutdown = k8s::Shutdown::new().map_err(Error::Signals)?;
    let shared = shared(&args)?;
    let client = args.client.client().await.map_err(Error::Client)?;
    let running = start(shared.clone(), &args)?;
    tracing::info!(
        dns = ?running.dns,
        http = ?running.http,
        zone = %shared.zone.domain,
        upstreams = ?shared.forwarder.upstreams().iter().map(|u| u.addr).collect::<Vec<_>>(),
        "serving DNS; cluster names get SERVFAIL until the first sync"
    );
    watch::start(client, shared, args.pods == PodMode::Verified);
    shutdown.recv().await;
    tracing::info!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: Vec<OsString>) -> Args {
        Cli::try_parse_from(std::iter::once(OsString::from("dns")).chain(args))
            .unwrap_or_else(|e| panic!("{e}"))
            .args
    }

    #[test]
    fn flags_round_trip() {
        let defaults = parse(Vec::new());
        assert_eq!(defaults.listen, Vec::<String>::new(), "the default is :53");
        assert_eq!(parse(defaults.to_args()), defaults);
        let every = Args {
            client: k8s::ClientArgs {
                kubeconfig: Some("/etc/kubewire/dns.kubeconfig".into()),
                server: Some("https://198.18.0.1:6443".into()),
            },
            listen: vec!["10.96.0.10:53".into(), "[::1]:5353".into()],
            cluster_domain: "example.internal".into(),
            ttl: 5,
            pods: PodMode::Verified,
            upstream: vec!["192.0.2.53".into(), "[2001:db8::53]:5353".into()],
            resolv_conf: "/run/resolv.conf".into(),
            max_concurrent: 7,
            health_listen: "off".into(),
            metrics_listen: "127.0.0.1:9154".into(),
            udp_threads: Some(3),
        };
        assert_ne!(every, defaults);
        assert_eq!(parse(every.to_args()), every);
        for pods in [PodMode::Insecure, PodMode::Disabled] {
            let args = Args {
                pods,
                ..defaults.clone()
            };
            assert_eq!(parse(args.to_args()), args);
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen(":53", "--listen").unwrap(),
            ["[::]:53".parse().unwrap(), "0.0.0.0:53".parse().unwrap()]
        );
        assert_eq!(
            parse_listen("[::1]:5353", "--listen").unwrap(),
            ["[::1]:5353".parse().unwrap()]
        );
        let e = parse_listen("localhost", "--listen")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--listen: \"localhost\""), "{e}");
        assert_eq!(
            parse_upstream("10.0.0.1").unwrap(),
            "10.0.0.1:53".parse().unwrap()
        );
        assert_eq!(
            parse_upstream("[fd00::1]:5353").unwrap(),
            "[fd00::1]:5353".parse().unwrap()
        );
    }

    #[test]
    fn upstreams_from_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        std::fs::write(
            &p,
            "# comment\nsearch default.svc.cluster.local\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver  2001:db8::53\noptions ndots:5\n",
        )
        .unwrap();
        assert_eq!(
            resolv_conf_nameservers(&p).unwrap(),
            [
                "192.0.2.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "[2001:db8::53]:53".parse().unwrap()
            ]
        );
        assert!(resolv_conf_nameservers(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn errors_keep_their_cause_and_say_it_once() {
        let e = Zone::new("a..b", 30, PodMode::Insecure).unwrap_err();
        assert!(matches!(e, Error::ClusterDomain { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            r#"--cluster-domain: "a..b" is not a domain name"#
        );
        let cause = std::error::Error::source(&e).expect("a source").to_string();
        assert_eq!(k8s::ErrorChain(&e).to_string(), format!("{e}: {cause}"));

        let e = resolv_conf_nameservers(Path::new("/nonexistent/resolv.conf")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reading upstreams from /nonexistent/resolv.conf (--upstream names them instead)"
        );
        assert_eq!(
            k8s::ErrorChain(&e).to_string(),
            format!("{e}: No such file or directory (os error 2)")
        );
    }
}
