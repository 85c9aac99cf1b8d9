//! `kubewire`: the command line. It only parses arguments and calls into the
//! component crates; everything that does work lives in `crates/`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

mod logging;

/// The whole Kubernetes networking stack in one binary: pod networking (CNI), services
/// (a kube-proxy replacement), cluster DNS, outside access and a service mesh.
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
    /// Run the per-node agent: the node's CNI config and routes to other nodes' pods.
    Agent(agent::Args),
    /// Run the lab's kubelet in a node's namespace: registers the Node, runs its pods.
    Node(node::Args),
    /// Run a built-in workload (what containers without a `command` run; docs/node.md).
    #[command(subcommand)]
    Workload(node::WorkloadArgs),
    /// Run the cluster DNS add-on: Services, EndpointSlices and Pods as DNS records.
    Dns(dns::Args),
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
        /// A lab config file (JSON) with `nodes`, `underlayV4`, `underlayV6`; `--nodes`
        /// on the command line wins. The lab's name always comes from `--name`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Remove everything the lab made; safe to run twice or after a crash.
    Down {
        #[command(flatten)]
        lab: LabArgs,
    },
    /// Show the lab's members, their namespaces and addresses.
    Status {
        #[command(flatten)]
        lab: LabArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a lab member's network: `underlay`, `node-N` or `outside`.
    ///
    /// Example: `kubewire lab exec outside -- ping -c1 198.18.0.11`
    Exec {
        #[command(flatten)]
        lab: LabArgs,
        /// `underlay`, `node-1`, `node-2`, ... or `outside`.
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
    logging::init(cli.log_format == LogFormat::Json);
    match run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn invoked_as_cni_plugin() -> bool {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&argv0).file_name().unwrap_or_default();
    name == cni::PLUGIN_NAME || std::env::var_os("CNI_COMMAND").is_some()
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        Command::Lab(lab) => runtime.block_on(run_lab(lab)),
        Command::Apiserver(args) => runtime.block_on(async {
            apiserver::serve(args.into()).await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Agent(args) => runtime.block_on(async {
            agent::run(args).await?;
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
        Command::Dns(args) => runtime.block_on(async {
            dns::run(args).await?;
            Ok(ExitCode::SUCCESS)
        }),
    }
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
        } => {
            let mut cfg = match config {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("reading lab config {}", path.display()))?;
                    serde_json_from_config(&text)
                        .with_context(|| format!("lab config {}", path.display()))?
                }
                None => lab::LabConfig::default(),
            };
            cfg.name = args.name;
            if let Some(nodes) = nodes {
                cfg.nodes = nodes;
            }
            let state = lab::up(&cfg).await?;
            print_summary(&state);
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { lab: args } => {
            lab::down(&lab_config(&args)).await?;
            println!(
                "lab {:?} is down: its namespaces, links and state are removed",
                args.name
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Status { lab: args, json } => {
            let state = lab::status(&lab_config(&args))?;
            if json {
                println!("{}", serde_json_pretty(&state));
            } else {
                print_table(&state);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Exec {
            lab: args,
            target,
            command,
        } => {
            let status = lab::exec(&lab_config(&args), &target, &command)?;
            // Pass the command's own exit code through, as `kubectl exec` does.
            let code = status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1));
            Ok(ExitCode::from(code))
        }
    }
}

fn serde_json_from_config(text: &str) -> anyhow::Result<lab::LabConfig> {
    let cfg: lab::LabConfig = serde_json::from_str(text)?;
    Ok(cfg)
}

fn serde_json_pretty(state: &lab::LabState) -> String {
    serde_json::to_string_pretty(state).expect("state serializes")
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

fn print_summary(state: &lab::LabState) {
    let cfg = &state.config;
    println!(
        "lab {:?} is up: {} node(s) on the underlay {} / {}",
        cfg.name, cfg.nodes, cfg.underlay_v4, cfg.underlay_v6
    );
    print_table(state);
    println!();
    println!("What exists so far is the lab's network: the underlay switch, the node namespaces");
    println!(
        "and the outside world. The control plane, pods and add-ons arrive with their issues."
    );
    println!(
        "Try:   kubewire lab exec outside -- ping -c1 {}",
        state.config.addresses(lab::Role::Node(1))[0].addr()
    );
    println!(
        "Stop:  kubewire lab down{}",
        if cfg.name == "kubewire" {
            String::new()
        } else {
            format!(" --name {}", cfg.name)
        }
    );
}
