//! The lab's upstream router for `loadBalancer: bgp`: a real BGP implementation from
//! Debian's packages (BIRD 2 by default, FRR when chosen) in a namespace of its own on
//! the underlay, peering with every node, installing what the nodes announce into its
//! kernel table with ECMP (BIRD `merge paths`, FRR `maximum-paths`). `outside` routes
//! the LoadBalancer range through it, so it reaches a LoadBalancer IP only when a node
//! announces it.
//!
//! Each instance is isolated: its configuration, control socket, pid files and logs are
//! under the lab's own directories, its processes are recorded like the lab's others
//! (so `lab down` stops them) and live in the router's namespace (which `lab down`
//! deletes). Nothing is written to /etc/bird or /etc/frr, and no system service runs.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::processes::{self, Process};
use crate::{Error, LabConfig, Result, Role};

/// The nodes' AS (the BGPPeer's `myASN`); private 16-bit ASNs (RFC 6996).
pub const NODE_ASN: u32 = 64512;
/// The router's AS by default (`routerAsn`).
pub const ROUTER_ASN: u32 = 64513;
/// The hold time the lab's BGPPeer asks for: a dead node's routes go after this.
pub const HOLD_TIME: &str = "9s";
/// Names of the objects the lab applies.
pub const PEER_V4: &str = "lab-router";
pub const PEER_V6: &str = "lab-router-v6";
pub const ADVERTISEMENT: &str = "lab-bgp";
/// The BFDProfile the lab's BGPPeers name with `bfd: true` (MetalLB's default timers).
pub const BFD_PROFILE: &str = "lab-bfd";
/// The namespace MetalLB keeps its configuration in, which the lab uses too.
pub const METALLB_NAMESPACE: &str = "metallb-system";

/// Which router software plays the upstream router.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterKind {
    /// BIRD 2 (Debian's `bird2`).
    #[default]
    Bird,
    /// FRRouting (Debian's `frr`): zebra and bgpd.
    Frr,
}

impl RouterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RouterKind::Bird => "bird",
            RouterKind::Frr => "frr",
        }
    }
}

/// A BGP neighbour of the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    /// A name the router's view uses (`node_1`, `node_1_v6`).
    pub name: String,
    pub address: IpAddr,
    pub asn: u32,
}

/// One router instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub kind: RouterKind,
    /// Its configuration, control sockets and pid files.
    pub dir: PathBuf,
    /// Where its logs go.
    pub log_dir: PathBuf,
    /// The network namespace it runs in.
    pub netns: String,
    pub router_id: Ipv4Addr,
    pub asn: u32,
    pub neighbors: Vec<Neighbor>,
    /// BFD with every neighbour.
    pub bfd: bool,
}

const BIRD: &str = "/usr/sbin/bird";
const BIRDC: &str = "/usr/sbin/birdc";
const ZEBRA: &str = "/usr/lib/frr/zebra";
const BGPD: &str = "/usr/lib/frr/bgpd";
const BFDD: &str = "/usr/lib/frr/bfdd";
const VTYSH: &str = "/usr/bin/vtysh";
/// The user Debian's `frr` package makes for its daemons.
const FRR_USER: &str = "frr";

impl Router {
    /// The router of a lab with `loadBalancer: bgp`.
    pub fn for_lab(cfg: &LabConfig) -> Router {
        let router_id = match cfg.addresses(Role::Router)[0].addr() {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("the first underlay address is IPv4"),
        };
        let mut neighbors = Vec::new();
        for n in 1..=cfg.nodes {
            for ip in cfg.node_ips(n) {
                neighbors.push(Neighbor {
                    name: format!("node_{n}{}", if ip.is_ipv6() { "_v6" } else { "" }),
                    address: ip,
                    asn: NODE_ASN,
                });
            }
        }
        Router {
            kind: cfg.router,
            dir: cfg.state_dir().join("router"),
            log_dir: cfg.data_dir().join("logs"),
            netns: cfg.netns_name(Role::Router),
            router_id,
            asn: cfg.router_asn,
            neighbors,
            bfd: cfg.bfd,
        }
    }

    fn bird_socket(&self) -> PathBuf {
        self.dir.join("bird.ctl")
    }

    /// The configuration files, by path.
    pub fn config_files(&self) -> Vec<(PathBuf, String)> {
        match self.kind {
            RouterKind::Bird => vec![(self.dir.join("bird.conf"), self.bird_conf())],
            RouterKind::Frr => vec![
                (
                    self.dir.join("zebra.conf"),
                    "hostname lab-router\nlog stdout\n".to_owned(),
                ),
                (self.dir.join("bgpd.conf"), self.bgpd_conf()),
                (
                    self.dir.join("bfdd.conf"),
                    "hostname lab-router\nlog stdout\n".to_owned(),
                ),
            ],
        }
    }

    fn bird_conf(&self) -> String {
        let mut c = format!(
            "# The lab's upstream router (generated by `kubewire lab up`).\n\
             router id {id};\n\
             log stderr all;\n\
             protocol device {{ scan time 5; }}\n\
             # What the nodes announce goes to the kernel; equal routes from several\n\
             # nodes become one multipath route (ECMP).\n\
             protocol kernel kernel4 {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n\
             protocol kernel kernel6 {{ ipv6 {{ import none; export all; }}; merge paths on; }}\n",
            id = self.router_id
        );
        if self.bfd {
            c.push_str("protocol bfd { }\n");
        }
        // iBGP (the nodes in the router's AS): the nodes are on the link, and there is
        // no IGP to resolve their next hops through.
        let ibgp = self.neighbors.iter().all(|n| n.asn == self.asn);
        let (direct, gateway) = if ibgp {
            ("  direct;\n", " gateway direct;")
        } else {
            ("", "")
        };
        for (family, v6) in [("ipv4", false), ("ipv6", true)] {
            let _ = write!(
                c,
                "template bgp nodes_{family} {{\n  local as {asn};\n  passive on;\n  \
                 error wait time 1, 5;\n  bfd {bfd};\n{direct}  {family} {{ import all; export none;{gateway} }};\n}}\n",
                asn = self.asn,
                bfd = if self.bfd { "on" } else { "off" }
            );
            for n in self.neighbors.iter().filter(|n| n.address.is_ipv6() == v6) {
                let _ = writeln!(
                    c,
                    "protocol bgp {} from nodes_{family} {{ neighbor {} as {}; }}",
                    n.name, n.address, n.asn
                );
            }
        }
        c
    }

    fn bgpd_conf(&self) -> String {
        let mut c = format!(
            "! The lab's upstream router (generated by `kubewire lab up`).\n\
             hostname lab-router\nlog stdout\n!\nrouter bgp {asn}\n bgp router-id {id}\n \
             no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n",
            asn = self.asn,
            id = self.router_id
        );
        for (group, v6) in [("NODES4", false), ("NODES6", true)] {
            let members: Vec<&Neighbor> = self
                .neighbors
                .iter()
                .filter(|n| n.address.is_ipv6() == v6)
                .collect();
            let Some(first) = members.first() else {
                continue;
            };
            let _ = write!(
                c,
                " neighbor {group} peer-group\n neighbor {group} remote-as {}\n \
                 neighbor {group} passive\n",
                first.asn
            );
            if self.bfd {
                let _ = writeln!(c, " neighbor {group} bfd");
            }
            for n in &members {
                let _ = writeln!(c, " neighbor {} peer-group {group}", n.address);
            }
        }
        for (family, group, v6) in [("ipv4", "NODES4", false), ("ipv6", "NODES6", true)] {
            if !self.neighbors.iter().any(|n| n.address.is_ipv6() == v6) {
                continue;
            }
            let _ = write!(
                c,
                " address-family {family} unicast\n  neighbor {group} activate\n  \
                 maximum-paths 64\n  maximum-paths ibgp 64\n exit-address-family\n"
            );
        }
        c
    }

    /// The processes to run: (name, binary, arguments), all in the foreground.
    pub fn commands(&self) -> Vec<(String, PathBuf, Vec<OsString>)> {
        let d = |f: &str| OsString::from(self.dir.join(f));
        match self.kind {
            RouterKind::Bird => vec![(
                "router/bird".into(),
                BIRD.into(),
                vec![
                    "-f".into(),
                    "-c".into(),
                    d("bird.conf"),
                    "-s".into(),
                    d("bird.ctl"),
                    "-P".into(),
                    d("bird.pid"),
                ],
            )],
            RouterKind::Frr => {
                let common = |pid: &str| -> Vec<OsString> {
                    vec![
                        "-i".into(),
                        d(pid),
                        "-z".into(),
                        d("zserv.api"),
                        "--vty_socket".into(),
                        self.dir.clone().into(),
                        // No vty TCP port; the package's own user, whose group may
                        // use the vty (FRR refuses a user outside it).
                        "-P".into(),
                        "0".into(),
                        "-u".into(),
                        FRR_USER.into(),
                        "-g".into(),
                        FRR_USER.into(),
                        "--log".into(),
                        "stdout".into(),
                    ]
                };
                let mut zebra = vec!["-f".into(), d("zebra.conf")];
                zebra.extend(common("zebra.pid"));
                let mut bgpd = vec!["-f".into(), d("bgpd.conf")];
                bgpd.extend(common("bgpd.pid"));
                let mut out = vec![("router/zebra".into(), ZEBRA.into(), zebra)];
                if self.bfd {
                    let mut bfdd = vec![
                        "-f".into(),
                        d("bfdd.conf"),
                        "--bfdctl".into(),
                        d("bfdd.sock"),
                    ];
                    bfdd.extend(common("bfdd.pid"));
                    out.push(("router/bfdd".into(), BFDD.into(), bfdd));
                }
                out.push(("router/bgpd".into(), BGPD.into(), bgpd));
                out
            }
        }
    }

    /// Writes the configuration and starts the router's processes in its namespace.
    pub fn start(&self) -> Result<Vec<Process>> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("creating {}", self.dir.display()), e))?;
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| Error::io(format!("creating {}", self.log_dir.display()), e))?;
        for (path, text) in self.config_files() {
            std::fs::write(&path, text)
                .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
        }
        if self.kind == RouterKind::Frr {
            // FRR's daemons drop to their user, which must write its sockets and pid
            // files here.
            let (uid, gid) = system_user(FRR_USER).ok_or_else(|| {
                Error::Component(format!(
                    "user {FRR_USER} not found: is Debian's frr package installed?"
                ))
            })?;
            std::os::unix::fs::chown(&self.dir, Some(uid), Some(gid)).map_err(|e| {
                Error::io(format!("giving {} to {FRR_USER}", self.dir.display()), e)
            })?;
        }
        let mut started = Vec::new();
        for (name, binary, args) in self.commands() {
            if !binary.exists() {
                return Err(Error::Component(format!(
                    "{} is not installed (Debian package {}; `scripts/deps.sh test` installs it)",
                    binary.display(),
                    match self.kind {
                        RouterKind::Bird => "bird2",
                        RouterKind::Frr => "frr",
                    }
                )));
            }
            let log = self.log_dir.join(format!("{}.log", name.replace('/', "-")));
            let p = processes::spawn(&name, Some(&self.netns), &binary, &args, &log)?;
            started.push(p);
            if self.kind == RouterKind::Frr && name == "router/zebra" {
                // bgpd connects to zebra's socket at start.
                wait_for_path(&self.dir.join("zserv.api"));
            }
        }
        Ok(started)
    }

    /// The router's control command for `command` (`birdc`'s or `vtysh`'s syntax),
    /// to run in its namespace.
    pub fn control(&self, command: &str) -> (PathBuf, Vec<OsString>) {
        match self.kind {
            RouterKind::Bird => {
                let mut args: Vec<OsString> = vec!["-s".into(), self.bird_socket().into()];
                args.extend(command.split_whitespace().map(OsString::from));
                (BIRDC.into(), args)
            }
            RouterKind::Frr => (
                VTYSH.into(),
                vec![
                    "--vty_socket".into(),
                    self.dir.clone().into(),
                    "-c".into(),
                    command.into(),
                ],
            ),
        }
    }

    /// Runs a control command in the router's namespace; its output.
    // Not the kernel: the router's own control client reading its view.
    #[allow(clippy::disallowed_methods)]
    pub fn query(&self, command: &str) -> Result<String> {
        let (program, args) = self.control(command);
        let out = netlink::netns::run_in(&self.netns, move || {
            Command::new(&program).args(&args).output()
        })?
        .map_err(|e| {
            Error::io(
                format!("running the router's control command {command:?}"),
                e,
            )
        })?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// The routes the router holds for `prefix` (its own rendering).
    pub fn routes(&self, prefix: &IpNet) -> Result<String> {
        match self.kind {
            RouterKind::Bird => self.query(&format!("show route for {prefix} all")),
            RouterKind::Frr => self.query(&format!(
                "show bgp {} unicast {prefix}",
                if prefix.addr().is_ipv6() {
                    "ipv6"
                } else {
                    "ipv4"
                }
            )),
        }
    }

    /// The names (BIRD) or addresses (FRR) of the neighbours whose session is
    /// Established, from the router's own view.
    pub fn established(&self) -> Result<Vec<String>> {
        Ok(match self.kind {
            RouterKind::Bird => self
                .query("show protocols")?
                .lines()
                .filter(|l| l.contains("BGP") && l.contains("Established"))
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect(),
            RouterKind::Frr => {
                let json = self.query("show bgp neighbors json")?;
                let v: Value = serde_json::from_str(&json).unwrap_or(Value::Null);
                v.as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(_, n)| n["bgpState"] == "Established")
                    .map(|(addr, _)| addr.clone())
                    .collect()
            }
        })
    }
}

/// Where FRR's daemons keep a directory each (`<daemon>.<pid>`) while they run.
const FRR_TMP: &str = "/var/tmp/frr";

/// Removes what the router's processes left outside the lab's directories: FRR removes
/// its `/var/tmp/frr/<daemon>.<pid>` on a clean exit, not when it is killed or fails
/// to start; the parent goes too when nothing else is in it.
pub(crate) fn forget(procs: &[Process]) {
    for p in procs {
        if let Some(daemon) = p.name.strip_prefix("router/")
            && matches!(daemon, "zebra" | "bgpd" | "bfdd")
        {
            let _ = std::fs::remove_dir_all(Path::new(FRR_TMP).join(format!("{daemon}.{}", p.pid)));
        }
    }
    let _ = std::fs::remove_dir(FRR_TMP);
}

/// A user's uid and gid from /etc/passwd.
fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

fn wait_for_path(p: &Path) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !p.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The lab's LoadBalancer range (host numbers 200 to 250 of the underlay's prefixes:
/// 198.18.0.200-250 and 2001:2::c8-fa) as CIDR blocks, which `outside` routes through
/// the router in BGP mode.
pub fn lb_blocks(cfg: &LabConfig) -> Vec<IpNet> {
    let v4 = u128::from(u32::from(cfg.underlay_v4.network()));
    let v6 = u128::from(cfg.underlay_v6.network());
    let mut out: Vec<IpNet> = blocks(v4 + 200, v4 + 250, 32)
        .into_iter()
        .map(|(a, len)| {
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a as u32), len).expect("valid prefix"))
        })
        .collect();
    out.extend(blocks(v6 + 200, v6 + 250, 128).into_iter().map(|(a, len)| {
        IpNet::V6(ipnet::Ipv6Net::new(std::net::Ipv6Addr::from(a), len).expect("valid prefix"))
    }));
    out
}

/// The fewest aligned blocks covering `from..=to` in an address space of `bits` bits.
fn blocks(mut from: u128, to: u128, bits: u8) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    while from <= to {
        // The largest aligned block starting at `from` that ends by `to`.
        let mut host_bits = 0u32;
        while host_bits < u32::from(bits) {
            let size = 1u128 << (host_bits + 1);
            if !from.is_multiple_of(size) || from + size - 1 > to {
                break;
            }
            host_bits += 1;
        }
        out.push((from, bits - host_bits as u8));
        from += 1u128 << host_bits;
    }
    out
}

/// The BGPPeers (IPv4 and IPv6 sessions to the router) and the BGPAdvertisement of
/// every pool the lab applies in BGP mode.
pub fn manifests(cfg: &LabConfig) -> Vec<Value> {
    let router = cfg.addresses(Role::Router);
    let peer = |name: &str, addr: IpAddr| {
        let mut p = json!({
            "apiVersion": "metallb.io/v1beta2",
            "kind": "BGPPeer",
            "metadata": {"name": name, "namespace": METALLB_NAMESPACE},
            "spec": {
                "myASN": NODE_ASN,
                "peerASN": cfg.router_asn,
                "peerAddress": addr.to_string(),
                "holdTime": HOLD_TIME,
            }
        });
        if cfg.bfd {
            p["spec"]["bfdProfile"] = json!(BFD_PROFILE);
        }
        p
    };
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": METALLB_NAMESPACE}}),
    ];
    if cfg.bfd {
        out.push(json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "BFDProfile",
            "metadata": {"name": BFD_PROFILE, "namespace": METALLB_NAMESPACE},
            "spec": {"receiveInterval": 300, "transmitInterval": 300, "detectMultiplier": 3}
        }));
    }
    out.extend([
        peer(PEER_V4, router[0].addr()),
        peer(PEER_V6, router[1].addr()),
        json!({
            "apiVersion": "metallb.io/v1beta1",
            "kind": "BGPAdvertisement",
            "metadata": {"name": ADVERTISEMENT, "namespace": METALLB_NAMESPACE},
            "spec": {}
        }),
    ]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(kind: RouterKind) -> LabConfig {
        LabConfig {
            nodes: 2,
            load_balancer: crate::LoadBalancerMode::Bgp,
            router: kind,
            ..LabConfig::default()
        }
    }

    #[test]
    fn the_lb_range_in_blocks() {
        let blocks: Vec<String> = lb_blocks(&LabConfig::default())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            blocks,
            [
                "198.18.0.200/29",
                "198.18.0.208/28",
                "198.18.0.224/28",
                "198.18.0.240/29",
                "198.18.0.248/31",
                "198.18.0.250/32",
                "2001:2::c8/125",
                "2001:2::d0/124",
                "2001:2::e0/124",
                "2001:2::f0/125",
                "2001:2::f8/127",
                "2001:2::fa/128"
            ]
        );
    }

    #[test]
    fn bird_peers_with_every_node_and_merges_paths() {
        let r = Router::for_lab(&lab(RouterKind::Bird));
        let (_, conf) = &r.config_files()[0];
        assert!(conf.contains("router id 198.18.0.253;"), "{conf}");
        assert!(conf.contains("merge paths on"));
        assert!(
            conf.contains("protocol bgp node_1 from nodes_ipv4 { neighbor 198.18.0.11 as 64512; }"),
            "{conf}"
        );
        assert!(
            conf.contains(
                "protocol bgp node_2_v6 from nodes_ipv6 { neighbor 2001:2::c as 64512; }"
            ),
            "{conf}"
        );
        let cmds = r.commands();
        assert_eq!(cmds.len(), 1);
        assert!(
            cmds[0]
                .2
                .iter()
                .all(|a| !a.to_string_lossy().starts_with("/etc"))
        );
    }

    #[test]
    fn frr_peers_with_every_node_and_uses_maximum_paths() {
        let r = Router::for_lab(&lab(RouterKind::Frr));
        let files = r.config_files();
        let bgpd = &files[1].1;
        assert!(bgpd.contains("router bgp 64513"), "{bgpd}");
        assert!(
            bgpd.contains(" neighbor 198.18.0.12 peer-group NODES4"),
            "{bgpd}"
        );
        assert!(
            bgpd.contains(" neighbor 2001:2::b peer-group NODES6"),
            "{bgpd}"
        );
        assert!(bgpd.contains("maximum-paths 64"));
        let names: Vec<String> = r.commands().into_iter().map(|c| c.0).collect();
        assert_eq!(names, ["router/zebra", "router/bgpd"]);
        assert!(!bgpd.contains("bfd"));
    }

    #[test]
    fn bfd_on_both_routers_and_a_profile_on_the_peers() {
        let cfg = LabConfig {
            bfd: true,
            ..lab(RouterKind::Frr)
        };
        let frr = Router::for_lab(&cfg);
        assert!(frr.config_files()[1].1.contains(" neighbor NODES4 bfd"));
        let names: Vec<String> = frr.commands().into_iter().map(|c| c.0).collect();
        assert_eq!(names, ["router/zebra", "router/bfdd", "router/bgpd"]);
        let bird = Router::for_lab(&LabConfig {
            router: RouterKind::Bird,
            ..cfg.clone()
        });
        let conf = &bird.config_files()[0].1;
        assert!(
            conf.contains("protocol bfd { }") && conf.contains("bfd on;"),
            "{conf}"
        );
        let objects = manifests(&cfg);
        assert!(objects.iter().any(|o| o["kind"] == "BFDProfile"));
        assert!(
            objects
                .iter()
                .filter(|o| o["kind"] == "BGPPeer")
                .all(|o| o["spec"]["bfdProfile"] == BFD_PROFILE)
        );
    }
}
