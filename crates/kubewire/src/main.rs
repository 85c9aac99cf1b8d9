//! `kubewire`: the command line. It only parses arguments and calls into the
//! component crates; everything that does work lives in `crates/`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod logging;

/// Kubernetes networking in one binary: pod networking (a CNI plugin and routes between
/// nodes), Services (a kube-proxy replacement), cluster DNS, LoadBalancer IPs (ARP, NDP
/// and BGP), network policy, Ingress and Gateway API. The service mesh is being built:
/// its identity issuer is here, its proxy not yet.
///
/// Start with `kubewire lab up`: it builds a cluster on this machine from network
/// namespaces. See README.md and docs/ for the tour.
///
/// Run through a link named `kubewire-cni`, or with CNI_COMMAND set, the binary is a CNI
/// plugin (spec 1.1) speaking the CNI protocol on stdin/stdout instead (docs/cni.md).
#[derive(Debug, Parser)]
#[command(
    name = "kubewire",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// Log format on stderr. `RUST_LOG` sets the level (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "KUBEWIRE_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Readable lines for a terminal.
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a cluster on this machine: nodes and pods as network namespaces.
    #[command(subcommand)]
    Lab(LabCommand),
    /// Run the embedded Kubernetes API server (the lab's control plane).
    Apiserver(apiserver::Args),
    /// Run the lab's controllers (endpoints, workloads, scheduler, node IPAM and lifecycle).
    Controllers(controllers::Args),
    /// Run the per-node agent: CNI config, routes to other nodes' pods, Services in nftables.
    Agent(agent::Args),
    /// Run the cluster DNS server (kube-dns/CoreDNS replacement).
    Dns(dns::Args),
    /// Run the LoadBalancer address allocation controller (MetalLB's controller; the
    /// lab runs it inside `kubewire controllers`).
    LbController(lb::controller::Args),
    /// Run the gateway: the controller that compiles Ingresses, Gateway API objects and
    /// Emissary Mappings, and the proxy that serves them (a Deployment behind its own
    /// LoadBalancer Service).
    Gateway(gateway::Args),
    /// Run the lab's kubelet in a node's namespace: registers the Node, runs its pods.
    Node(node::Args),
    /// Run a built-in workload (what containers without a `command` run; docs/node.md).
    #[command(subcommand)]
    Workload(node::WorkloadArgs),
    /// Install kubewire into a cluster (the agent DaemonSet, cluster DNS, their
    /// ServiceAccounts and roles), or print the manifests (docs/install.md).
    Install(InstallArgs),
    /// Copy this binary onto the node as the CNI plugin `kubewire-cni` (what the agent
    /// DaemonSet's init container runs).
    InstallCni(cni::install::InstallArgs),
    /// The service mesh's components (docs/mesh.md).
    #[command(subcommand)]
    Mesh(MeshCommand),
}

#[derive(Debug, Subcommand)]
enum MeshCommand {
    /// Run the identity issuer: a trust anchor that gives each meshed pod a 24-hour
    /// SPIFFE certificate for its ServiceAccount, on proof of its token.
    Identity(mesh::identity::Args),
    /// Run a meshed pod's proxy (injected as its native sidecar): mutual TLS between
    /// meshed pods, its traffic captured by the CNI plugin.
    Proxy(mesh::proxy::Args),
    /// Run the injector: the mutating admission webhook that adds the proxy to pods
    /// annotated (or in namespaces annotated) `kubewire.io/inject: enabled`.
    Injector(mesh::injector::Args),
    /// Show the meshed workloads' success rate, requests per second and latency, live,
    /// per Deployment, pod or route (as `linkerd viz stat`).
    Top(mesh::top::Args),
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// The choices the manifests are made for.
    #[command(flatten)]
    config: install::Config,
    /// Print the manifests (YAML) instead of applying them; `kubectl apply -f -` takes
    /// them as they are.
    #[arg(long)]
    print: bool,
    /// The cluster to install into (without `--print`).
    #[command(flatten)]
    client: k8s::ClientArgs,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab: the underlay network, the nodes on it and the outside world.
    Up {
        #[command(flatten)]
        lab: LabArgs,
        /// Number of nodes [default: 3, or the config file's `nodes`].
        #[arg(long, value_parser = clap::value_parser!(u8).range(1..=i64::from(lab::MAX_NODES)))]
        nodes: Option<u8>,
        /// A lab config file (YAML; see docs/lab.md for the fields); `--nodes` on the
        /// command line wins. The lab's name always comes from `--name`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Return once the cluster is ready and leave it running until `lab down`
        /// (without it, `lab up` stays in the foreground and Ctrl-C tears it down).
        #[arg(long)]
        detach: bool,
        /// Build only the network (underlay, node namespaces, outside) and return: no
        /// control plane, no node processes. Tests that bring their own use it.
        #[arg(long, conflicts_with = "detach")]
        network_only: bool,
    },
    /// Remove everything the lab made; safe to run twice or after a crash.
    Down {
        #[command(flatten)]
        lab: LabArgs,
        /// Keep the data directory (the API server's database and the logs).
        #[arg(long)]
        keep_data: bool,
    },
    /// Print the path of the lab's admin kubeconfig:
    /// `export KUBECONFIG=$(kubewire lab kubeconfig)`.
    Kubeconfig {
        #[command(flatten)]
        lab: LabArgs,
        /// Print the kubeconfig's content instead of its path.
        #[arg(long)]
        print: bool,
    },
    /// Show the lab's members, their namespaces and addresses.
    Status {
        #[command(flatten)]
        lab: LabArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a pod, a node or the outside world.
    ///
    /// Examples: `kubewire lab exec outside -- curl -s 198.18.0.11:31100`,
    /// `kubewire lab exec default/web-xyz -- cat /etc/resolv.conf`
    Exec {
        #[command(flatten)]
        lab: LabArgs,
        /// A pod, `[namespace/]pod[/container]` (its network and mount namespaces), or
        /// `underlay`, `node-1`, `node-2`, ..., `outside` (their network namespace).
        target: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct LabArgs {
    /// Name of the lab; prefixes every namespace it makes, so labs can run side by side.
    #[arg(long, default_value = "kubewire", env = "KUBEWIRE_LAB")]
    name: String,
}

fn main() -> ExitCode {
    // Container runtimes run CNI plugins by type name (`kubewire-cni`, a link to this
    // binary) with `CNI_COMMAND` set; then stdout belongs to the CNI protocol.
    if invoked_as_cni_plugin() {
        logging::init_cni();
        return ExitCode::from(u8::try_from(cni::main()).unwrap_or(1));
    }
    // `kubewire container-init` (the node's per-container runtime) changes namespaces,
    // which needs a process without threads: before the CLI and the async runtime.
    if let Some(code) = node::container_init_main() {
        return code;
    }
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Apiserver(_)
            | Command::Controllers(_)
            | Command::Agent(_)
            | Command::Dns(_)
            | Command::LbController(_)
            | Command::Gateway(_)
            | Command::Node(_)
            | Command::Mesh(
                MeshCommand::Identity(_) | MeshCommand::Proxy(_) | MeshCommand::Injector(_)
            )
    ) {
        tune_malloc(matches!(cli.command, Command::Agent(_)));
    }
    // `lab` commands talk to a person through their own output; their logs are for
    // when something goes wrong.
    let default_level = if matches!(
        cli.command,
        Command::Lab(_) | Command::Mesh(MeshCommand::Top(_))
    ) {
        "warn"
    } else {
        "info"
    };
    logging::init(cli.log_format == LogFormat::Json, default_level);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            let err: &(dyn std::error::Error + 'static) = err.as_ref();
            eprintln!("error: {}", k8s::ErrorChain(err));
            ExitCode::FAILURE
        }
    }
}

/// glibc gives each thread that allocates an arena of its own (up to 8 per core) and
/// keeps freed memory in it: a long-running server whose requests hop between tokio's
/// worker and blocking threads doubles its resident memory that way (the API server at
/// 100,000 objects: 182 MiB instead of 81 MiB, BENCHMARKS.md). The agent, on every node,
/// also fixes the trim and mmap thresholds: glibc otherwise raises them after the first
/// full sync frees its large batch, and keeps about 4 MB more (BENCHMARKS.md, "Agent
/// memory"). These variables are read only when a process starts, so a daemon missing
/// them runs itself again with them set (same pid, same arguments; values the caller
/// set are kept). If the exec fails it carries on.
fn tune_malloc(agent: bool) {
    use std::os::unix::process::CommandExt;
    let mut wanted = vec![("MALLOC_ARENA_MAX", "2")];
    if agent {
        wanted.push(("MALLOC_TRIM_THRESHOLD_", "131072"));
        wanted.push(("MALLOC_MMAP_THRESHOLD_", "131072"));
    }
    wanted.retain(|(k, _)| std::env::var_os(k).is_none());
    if wanted.is_empty() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .envs(wanted)
        .exec();
    eprintln!("warning: running with glibc's malloc defaults (re-exec failed: {err})");
}

fn invoked_as_cni_plugin() -> bool {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name().unwrap_or_default();
    name == cni::PLUGIN_NAME || std::env::var_os("CNI_COMMAND").is_some()
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    // A mesh proxy serves one pod: one thread, so that a request's wake-ups never
    // cross threads (and the proxy stays small); the daemons use two.
    let runtime = if matches!(command, Command::Mesh(MeshCommand::Proxy(_))) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    match command {
        Command::Lab(lab) => runtime.block_on(run_lab(lab)),
        Command::Apiserver(args) => runtime.block_on(async {
            apiserver::serve(args.into()).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Controllers(args) => runtime.block_on(async {
            controllers::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Agent(args) => runtime.block_on(async {
            agent::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Dns(args) => runtime.block_on(async {
            dns::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Gateway(args) => runtime.block_on(async {
            gateway::controller::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::LbController(args) => runtime.block_on(async {
            lb::controller::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Node(args) => runtime.block_on(async {
            node::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Workload(args) => runtime.block_on(async {
            node::workload::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Mesh(MeshCommand::Identity(args)) => runtime.block_on(async {
            mesh::identity::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Mesh(MeshCommand::Proxy(args)) => runtime.block_on(async {
            mesh::proxy::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Mesh(MeshCommand::Injector(args)) => runtime.block_on(async {
            mesh::injector::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Mesh(MeshCommand::Top(args)) => runtime.block_on(async {
            mesh::top::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Install(args) => runtime.block_on(run_install(args)),
        Command::InstallCni(args) => {
            let path = cni::install::install(&args)?;
            tracing::info!(plugin = %path.display(), "CNI plugin installed");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `kubewire install`: prints the manifests, or applies them server-side.
async fn run_install(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let cfg = &args.config;
    if cfg.api_server.is_none() && cfg.proxy {
        eprintln!(
            "note: without --api-server the agent reaches the API server through the `kubernetes` \
             Service's ClusterIP, which only works while another proxy (kube-proxy) runs: name the \
             API server's own address in a cluster without one (docs/install.md)"
        );
    }
    let objects = install::manifests(cfg);
    if args.print {
        print!("{}", install::to_yaml(&objects));
        return Ok(ExitCode::SUCCESS);
    }
    let client = args.client.client().await?;
    install::apply(&client, &objects, "kubewire-install").await?;
    for o in &objects {
        println!("{} applied", install::describe(o));
    }
    println!(
        "watch the agent start on every node: kubectl -n {} rollout status daemonset/{}",
        install::NAMESPACE,
        install::AGENT
    );
    Ok(ExitCode::SUCCESS)
}

fn lab_config(args: &LabArgs) -> lab::LabConfig {
    lab::LabConfig {
        name: args.name.clone(),
        ..lab::LabConfig::default()
    }
}

async fn run_lab(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Up {
            lab: args,
            nodes,
            config,
            detach,
            network_only,
        } => {
            let mut cfg = match config {
                Some(path) => lab::LabConfig::from_file(&path)?,
                None => lab::LabConfig::default(),
            };
            cfg.name = args.name;
            if let Some(nodes) = nodes {
                cfg.nodes = nodes;
            }
            if network_only {
                let state = lab::up(&cfg).await?;
                print_table(&state);
                return Ok(ExitCode::SUCCESS);
            }
            let binary = std::env::current_exe().context("finding the kubewire binary")?;
            // Signals are taken over before anything starts: a Ctrl-C at any point from
            // here on tears the lab down instead of killing `lab up` half-way.
            let mut stop = k8s::Shutdown::new().context("handling SIGINT and SIGTERM")?;
            let progress = lab::Progress::stderr();
            let started = tokio::select! {
                started = lab::cluster::start(&cfg, &binary, &progress) => started?,
                _ = stop.recv() => {
                    eprintln!("interrupted; removing what was made ...");
                    lab::down(&cfg).await?;
                    return Ok(ExitCode::from(130));
                }
            };
            print_summary(&started, detach);
            if detach {
                return Ok(ExitCode::SUCCESS);
            }
            wait_for_stop(&cfg, &mut stop).await;
            eprintln!("stopping the lab ...");
            lab::down(&cfg).await?;
            eprintln!("lab {:?} is down", cfg.name);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down {
            lab: args,
            keep_data,
        } => {
            lab::down_with(&lab_config(&args), keep_data).await?;
            println!(
                "lab {:?} is down: its processes, namespaces, links and state are removed{}",
                args.name,
                if keep_data { " (data kept)" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Kubeconfig { lab: args, print } => {
            let cfg = lab::status(&lab_config(&args))?.config;
            let path = lab::cluster::kubeconfig_path(&cfg);
            if !path.exists() {
                anyhow::bail!(
                    "lab {:?} has no kubeconfig yet ({} is missing)",
                    cfg.name,
                    path.display()
                );
            }
            if print {
                print!("{}", std::fs::read_to_string(&path)?);
            } else {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab: args, json } => {
            let cfg = lab_config(&args);
            let state = lab::status(&cfg)?;
            let cluster = lab::cluster::cluster_status(&cfg).await?;
            if json {
                let v = serde_json::json!({ "network": state, "cluster": cluster });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_table(&state);
                println!();
                print_cluster(&cluster);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            lab: args,
            target,
            command,
        } => {
            let cfg = lab_config(&args);
            let state = lab::status(&cfg)?;
            let is_member = state
                .members
                .iter()
                .any(|m| m.target == target || m.netns == target);
            let has_api = lab::cluster::kubeconfig_path(&state.config).exists();
            let status = if is_member || !has_api {
                // Without a control plane there are no pods: the error names the members.
                lab::exec(&cfg, &target, &command)?
            } else {
                let pod = lab::cluster::find_pod(&cfg, &target).await?;
                exec_in_pod(&pod, &command)?
            };
            // Pass the command's own exit code through, as `kubectl exec` does.
            let code = status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1));
            Ok(ExitCode::from(code))
        }
    }
}

/// Runs `command` in the network and mount namespaces of the pod's container process.
/// `nsenter` (util-linux) enters both: a mount namespace cannot be entered from this
/// multi-threaded process, and `lab exec` is an interactive tool, not a hot path.
fn exec_in_pod(
    pod: &lab::cluster::PodTarget,
    command: &[String],
) -> anyhow::Result<std::process::ExitStatus> {
    std::process::Command::new("nsenter")
        .arg(format!("--target={}", pod.pid))
        .args(["--net", "--mount", "--uts", "--"])
        .args(command)
        .status()
        .with_context(|| format!("running nsenter for pod {}", pod.pod))
}

/// Waits for Ctrl-C or SIGTERM, telling about components that exit meanwhile.
async fn wait_for_stop(cfg: &lab::LabConfig, stop: &mut k8s::Shutdown) {
    let mut reported = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.recv() => return,
            _ = tick.tick() => {
                for p in lab::cluster::exited(cfg) {
                    if reported.insert(p.name.clone()) {
                        eprintln!(
                            "warning: {} exited; its log is {}:\n{}",
                            p.name,
                            p.log.display(),
                            lab::cluster::log_tail(&p.log, 10)
                        );
                    }
                }
            }
        }
    }
}

fn print_table(state: &lab::LabState) {
    println!(
        "{:<10} {:<24} {:<16} {:<16} STATE",
        "TARGET", "NAMESPACE", "IPV4", "IPV6"
    );
    for m in &state.members {
        let [v4, v6] = [0, 1].map(|i| {
            m.addresses
                .get(i)
                .map(|a| a.addr().to_string())
                .unwrap_or_default()
        });
        let st = if m.present { "up" } else { "missing" };
        println!(
            "{:<10} {:<24} {:<16} {:<16} {st}",
            m.target, m.netns, v4, v6
        );
    }
}

fn print_cluster(c: &lab::cluster::ClusterStatus) {
    println!("{:<14} {:<8} {:<8} LOG", "COMPONENT", "PID", "STATE");
    for p in &c.components {
        let st = if p.running { "running" } else { "exited" };
        println!("{:<14} {:<8} {:<8} {}", p.name, p.pid, st, p.log.display());
    }
    println!();
    match &c.api_error {
        Some(e) => println!("API server: not answering ({e})"),
        None => {
            println!(
                "{:<10} {:<9} {:<28} {:<36} PODS",
                "NODE", "STATUS", "INTERNAL-IP", "POD-CIDRS"
            );
            for n in &c.nodes {
                println!(
                    "{:<10} {:<9} {:<28} {:<36} {}",
                    n.name,
                    if n.ready { "Ready" } else { "NotReady" },
                    n.addresses.join(","),
                    n.pod_cidrs.join(","),
                    n.pods
                );
            }
        }
    }
    if !c.system_pods.is_empty() {
        println!();
        println!(
            "{:<46} {:<10} {:<10} READY",
            "KUBEWIRE POD", "NODE", "PHASE"
        );
        for p in &c.system_pods {
            println!(
                "{:<46} {:<10} {:<10} {}",
                p.name,
                p.node,
                p.phase,
                if p.ready { "yes" } else { "no" }
            );
        }
    }
    if !c.pools.is_empty() {
        println!();
        println!(
            "{:<16} {:<12} {:<12} ADDRESSES",
            "POOL", "IPV4 USED", "IPV6 USED"
        );
        for p in &c.pools {
            let used = |assigned: Option<i64>, available: Option<i64>| match (assigned, available) {
                (Some(a), Some(v)) => format!("{a}/{}", a.saturating_add(v)),
                _ => "-".into(),
            };
            let u = p.usage.as_ref();
            println!(
                "{:<16} {:<12} {:<12} {}",
                p.name,
                used(u.map(|u| u.assigned_ipv4), u.map(|u| u.available_ipv4)),
                used(u.map(|u| u.assigned_ipv6), u.map(|u| u.available_ipv6)),
                p.addresses.join(",")
            );
        }
    }
    if !c.load_balancers.is_empty() {
        println!();
        println!(
            "{:<32} {:<36} {:<12} ANNOUNCED BY",
            "LOADBALANCER", "ADDRESSES", "POOL"
        );
        for l in &c.load_balancers {
            let by = if l.announced_by.is_empty() {
                "-".to_owned()
            } else {
                l.announced_by.join(",")
            };
            println!(
                "{:<32} {:<36} {:<12} {}",
                l.service,
                l.addresses.join(","),
                l.pool.as_deref().unwrap_or("-"),
                by
            );
        }
    }
    println!();
    println!("kubeconfig: {}", c.kubeconfig.display());
}

fn print_summary(started: &lab::cluster::Started, detach: bool) {
    let cfg = &started.config;
    let (pods, services, dns) = lab::cluster::ranges(cfg);
    let name_flag = if cfg.name == "kubewire" {
        String::new()
    } else {
        format!(" --name {}", cfg.name)
    };
    println!();
    println!(
        "lab {:?} is up: {} node(s) Ready after {:.1}s, cluster DNS after {:.1}s",
        cfg.name,
        cfg.nodes,
        started.nodes_ready_after.as_secs_f32(),
        started.ready_after.as_secs_f32()
    );
    println!(
        "  nodes     {} (node-1 is {})",
        cfg.underlay_v4,
        cfg.node_ips(1)[0]
    );
    println!("  pods      {pods}");
    println!("  services  {services} (DNS {dns})");
    println!(
        "  outside   {}",
        cfg.addresses(lab::Role::Outside)[0].addr()
    );
    println!();
    println!(
        "Use it:    export KUBECONFIG={}",
        started.kubeconfig.display()
    );
    println!("           kubectl get nodes -o wide");
    println!("Try:       kubectl create deployment web --image=nginx --replicas=3");
    println!(
        "           kubewire lab exec{name_flag} outside -- ping -c1 {}",
        cfg.node_ips(1)[0]
    );
    if detach {
        println!("Stop:      kubewire lab down{name_flag}");
    } else {
        println!("Stop:      Ctrl-C (or kubewire lab down{name_flag})");
    }
}
