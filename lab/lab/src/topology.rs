//! Building and tearing down the lab's namespaces and links.

use std::fs;
use std::os::fd::AsFd;
use std::process::{Command, ExitStatus};

use ipnet::IpNet;
use netlink::{Rtnl, netns, sysctl};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{Error, LabConfig, Result, Role};

/// The bridge inside the underlay namespace: the lab's "datacenter switch".
const UNDERLAY_BRIDGE: &str = "underlay0";
/// The name of each node's (and the outside's) link to the underlay.
const UPLINK: &str = "eth0";
const STATE_FILE: &str = "lab.json";

/// What `lab status` reports about one namespace of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    /// `underlay`, `node-N` or `outside`: what `lab exec` takes as a target.
    pub target: String,
    /// The network namespace.
    pub netns: String,
    /// Underlay addresses.
    pub addresses: Vec<IpNet>,
    /// Whether the namespace exists right now.
    pub present: bool,
}

/// What `lab status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// The configuration the lab was started with.
    pub config: LabConfig,
    /// Underlay, nodes, outside.
    pub members: Vec<NodeState>,
}

fn target_name(role: Role) -> String {
    match role {
        Role::Underlay => "underlay".to_owned(),
        Role::Node(n) => format!("node-{n}"),
        Role::Outside => "outside".to_owned(),
        Role::Router => "router".to_owned(),
    }
}

/// Starts the lab's network. Refuses if a lab of that name is already up, even half up
/// after a crash; on any failure it removes what it made before returning the error.
pub async fn up(cfg: &LabConfig) -> Result<LabState> {
    cfg.validate()?;
    let state_dir = cfg.state_dir();
    let existing: Vec<String> = cfg
        .roles()
        .into_iter()
        .map(|r| cfg.netns_name(r))
        .filter(|n| netns::exists(n))
        .collect();
    if state_dir.join(STATE_FILE).exists() || !existing.is_empty() {
        let what = if existing.is_empty() {
            format!("state in {}", state_dir.display())
        } else {
            format!("namespaces {}", existing.join(", "))
        };
        return Err(Error::AlreadyUp {
            name: cfg.name.clone(),
            what,
        });
    }
    // The state file is written first: a crash from here on leaves a record that
    // `lab down` can act on.
    fs::create_dir_all(&state_dir)
        .map_err(|e| Error::io(format!("creating {}", state_dir.display()), e))?;
    let state_path = state_dir.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(cfg).expect("config serializes");
    fs::write(&state_path, json)
        .map_err(|e| Error::io(format!("writing {}", state_path.display()), e))?;

    if let Err(err) = build(cfg).await {
        warn!(error = %err, "lab up failed; removing what was made");
        if let Err(cleanup) = down(cfg).await {
            warn!(error = %cleanup, "cleanup after failed lab up");
        }
        return Err(err);
    }
    status(cfg)
}

async fn build(cfg: &LabConfig) -> Result<()> {
    for role in cfg.roles() {
        netns::create(&cfg.netns_name(role))?;
    }
    let underlay_ns = cfg.netns_name(Role::Underlay);
    let underlay = Rtnl::connect_in(&underlay_ns)?;
    let bridge = underlay.add_bridge(UNDERLAY_BRIDGE).await?;
    for addr in cfg.addresses(Role::Underlay) {
        underlay.add_address(bridge, addr).await?;
    }
    underlay.set_up(bridge).await?;
    // The underlay is the nodes' router: a destination it has no route for is answered
    // at once with "unreachable" rather than silently dropped.
    sysctl::set_in(&underlay_ns, "net.ipv4.ip_forward", "1")?;
    sysctl::set_in(&underlay_ns, "net.ipv6.conf.all.forwarding", "1")?;

    for role in cfg.roles().into_iter().filter(|r| *r != Role::Underlay) {
        let ns = cfg.netns_name(role);
        let target = target_name(role);
        // Named after the member it leads to, so `ip -n <lab>-underlay link` reads well.
        let (port, peer) = (format!("to-{target}"), format!("tmp-{target}"));
        let port_index = underlay.add_veth(&port, &peer).await?;
        let peer_index = underlay.link_index(&peer).await?;
        let ns_file = netns::open(&ns)?;
        underlay
            .move_to_netns(peer_index, ns_file.as_fd(), Some(UPLINK))
            .await?;
        underlay.set_controller(port_index, bridge).await?;
        underlay.set_up(port_index).await?;

        let member = Rtnl::connect_in(&ns)?;
        let uplink = member.link_index(UPLINK).await?;
        for addr in cfg.addresses(role) {
            member.add_address(uplink, addr).await?;
        }
        member.set_up(uplink).await?;
        if let Role::Node(_) = role {
            // Nodes route for their pods.
            sysctl::set_in(&ns, "net.ipv4.ip_forward", "1")?;
            sysctl::set_in(&ns, "net.ipv6.conf.all.forwarding", "1")?;
            // A default route to the underlay's router, as real nodes have: traffic to a
            // Service port nobody defines then reaches the proxy's forward-hook reject
            // (a TCP reset) instead of failing the route lookup first.
            for router in cfg.addresses(Role::Underlay) {
                let any = netlink::default_destination(router.addr());
                member.add_route(any, Some(router.addr()), None).await?;
            }
        }
        if role == Role::Router {
            // It routes between the nodes and `outside`, on one link: it must not tell
            // `outside` to go to the node directly (an ICMP redirect), or `outside`
            // would bypass it.
            sysctl::set_in(&ns, "net.ipv4.ip_forward", "1")?;
            sysctl::set_in(&ns, "net.ipv6.conf.all.forwarding", "1")?;
            sysctl::set_in(&ns, "net.ipv4.conf.all.send_redirects", "0")?;
            sysctl::set_in(&ns, "net.ipv4.conf.eth0.send_redirects", "0")?;
        }
        debug!(target = %target, netns = %ns, "lab member up");
    }
    if cfg.load_balancer == crate::LoadBalancerMode::Bgp {
        // `outside` reaches the LoadBalancer range through the router only: routes
        // more specific than the underlay's own prefix, so it never ARPs (or sends a
        // Neighbor Solicitation) for them.
        let outside = Rtnl::connect_in(&cfg.netns_name(Role::Outside))?;
        let [via4, via6] = cfg.addresses(Role::Router).map(|a| a.addr());
        for block in crate::router::lb_blocks(cfg) {
            let via = if block.addr().is_ipv4() { via4 } else { via6 };
            outside.add_route(block, Some(via), None).await?;
        }
    }
    Ok(())
}

/// Loads the configuration a running lab was started with.
fn load(cfg: &LabConfig) -> Option<LabConfig> {
    let bytes = fs::read(cfg.state_dir().join(STATE_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Removes everything the lab made: its processes, its namespaces (with every link
/// inside them), its state and its data. Works when the lab is half up, already down, or
/// was killed mid-way. Keeps going past failures and reports them all.
pub async fn down(cfg: &LabConfig) -> Result<()> {
    down_with(cfg, false).await
}

/// [`down`], keeping the data directory (the API server's database) when `keep_data`.
pub async fn down_with(cfg: &LabConfig, keep_data: bool) -> Result<()> {
    let cfg = load(cfg).unwrap_or_else(|| cfg.clone());
    let mut problems = Vec::new();
    let mut names: Vec<String> = cfg.roles().into_iter().map(|r| cfg.netns_name(r)).collect();
    // A crashed `lab up --nodes N` with a larger N than the default leaves node
    // namespaces the default config does not name, and pods have namespaces of their own
    // (`<lab>-node-N-p<uid>`): find them by their exact pattern. Pods go first.
    let node_prefix = format!("{}-node-", cfg.name);
    let mut pods = Vec::new();
    for name in netns::list()? {
        let Some(rest) = name.strip_prefix(&node_prefix) else {
            continue;
        };
        let (num, pod) = rest.split_once("-p").unwrap_or((rest, ""));
        let is_node_num = !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit());
        let is_pod = !pod.is_empty() && pod.bytes().all(|b| b.is_ascii_hexdigit());
        if is_node_num && is_pod {
            pods.push(name);
        } else if is_node_num && pod.is_empty() && rest == num && !names.contains(&name) {
            names.push(name);
        }
    }
    pods.extend(names);
    let names = pods;
    crate::cluster::stop(&cfg, &names);
    for name in names {
        if let Err(e) = netns::delete(&name) {
            problems.push(Error::from(e));
        }
    }
    // What the nodes made on the host for their pods' volumes goes with the pods.
    for entry in fs::read_dir(cfg.data_dir()).into_iter().flatten().flatten() {
        node::remove_host_mount_points(&entry.path());
    }
    let state_dir = cfg.state_dir();
    match fs::remove_dir_all(&state_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(Error::io(format!("removing {}", state_dir.display()), e)),
    }
    // The run dir is ours too when no other lab is left in it.
    let _ = fs::remove_dir(&cfg.run_dir);
    if !keep_data {
        let data = cfg.data_dir();
        match fs::remove_dir_all(&data) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => problems.push(Error::io(format!("removing {}", data.display()), e)),
        }
        let _ = fs::remove_dir(&cfg.data_root);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Teardown(problems))
    }
}

/// Describes the lab named in `cfg`.
pub fn status(cfg: &LabConfig) -> Result<LabState> {
    let cfg = load(cfg).ok_or_else(|| Error::NotUp(cfg.name.clone()))?;
    let members = cfg
        .roles()
        .into_iter()
        .map(|role| {
            let ns = cfg.netns_name(role);
            NodeState {
                target: target_name(role),
                present: netns::exists(&ns),
                netns: ns,
                addresses: cfg.addresses(role).to_vec(),
            }
        })
        .collect();
    Ok(LabState {
        config: cfg,
        members,
    })
}

/// Runs `argv` inside a lab member's network namespace (`underlay`, `node-N`,
/// `outside`) and waits for it. Its stdin, stdout and stderr are the caller's.
pub fn exec(cfg: &LabConfig, target: &str, argv: &[String]) -> Result<ExitStatus> {
    let state = status(cfg)?;
    let member = state
        .members
        .iter()
        .find(|m| m.target == target || m.netns == target)
        .ok_or_else(|| Error::UnknownTarget {
            lab: state.config.name.clone(),
            target: target.to_owned(),
            known: state
                .members
                .iter()
                .map(|m| m.target.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| Error::InvalidConfig("exec: no command given".to_owned()))?;
    let (program, args) = (program.clone(), args.to_vec());
    netns::run_in(&member.netns, move || {
        Command::new(&program).args(&args).status()
    })?
    .map_err(|e| Error::io(format!("running {:?} in {target}", argv[0]), e))
}
