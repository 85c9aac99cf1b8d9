//! L2 announcement: one node per LoadBalancer address answers ARP (IPv4) and NDP
//! (IPv6) for it on its underlay interface, so that hosts on the same network send the
//! address's traffic to that node, where the service proxy forwards it.
//!
//! - [`elect`]: which node owns each address (pure, from the [`View`] and liveness);
//! - [`members`]: which agents are alive (UDP heartbeats, ~100 ms);
//! - [`packet`]: the ARP and NDP frames;
//! - [`status`]: ServiceL2Status objects and Events, for kubectl.
//!
//! Answers come from user space, through an `AF_PACKET` socket per interface: the
//! address is never put on an interface, so an agent that dies stops answering, and
//! the next owner's gratuitous ARP / unsolicited Neighbor Advertisement (sent three
//! times over a second) moves the neighbours' caches at once. The whole design and its
//! behaviour under partitions are in docs/loadbalancer.md ("L2 announcement").

pub mod elect;
pub mod members;
pub mod packet;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use k8s::ErrorChain;
use netlink::packet::{Link, PacketSocket};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::announce::View;
use members::Members;
use status::{Announced, Mine};

/// The L2 announcer's flags (part of `kubewire agent`'s).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct L2Args {
    /// Announce LoadBalancer addresses over ARP and NDP (`--l2-announce=false` leaves
    /// them to another announcer).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub l2_announce: bool,
    /// The UDP port the agents' heartbeats use, on every node's InternalIP.
    #[arg(long, default_value_t = 7946)]
    pub l2_heartbeat_port: u16,
    /// How often each agent sends its heartbeat to every other node.
    #[arg(long, default_value = "100ms", value_parser = k8s::parse_duration)]
    pub l2_heartbeat_interval: Duration,
    /// How long without a heartbeat before a node counts as dead and its addresses
    /// move.
    #[arg(long, default_value = "500ms", value_parser = k8s::parse_duration)]
    pub l2_dead_after: Duration,
    /// Where the ServiceL2Status objects go (MetalLB: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub l2_status_namespace: String,
}

impl L2Args {
    /// These flags as command-line arguments (what parses back into `self`).
    pub fn to_args(&self) -> Vec<OsString> {
        let d = k8s::duration::format_duration;
        vec![
            format!("--l2-announce={}", self.l2_announce).into(),
            format!("--l2-heartbeat-port={}", self.l2_heartbeat_port).into(),
            format!("--l2-heartbeat-interval={}", d(self.l2_heartbeat_interval)).into(),
            format!("--l2-dead-after={}", d(self.l2_dead_after)).into(),
            format!("--l2-status-namespace={}", self.l2_status_namespace).into(),
        ]
    }
}

/// What stops the L2 announcer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The heartbeat socket could not be opened.
    #[error("opening the heartbeat socket on port {port}")]
    Heartbeat {
        port: u16,
        #[source]
        cause: std::io::Error,
    },
    /// The view's publisher went away.
    #[error("the view of the cluster ended")]
    ViewEnded,
}

/// Runs the announcer for node `node` from the views `view` publishes, until it ends.
pub async fn run(
    client: kube::Client,
    node: String,
    args: L2Args,
    mut view: watch::Receiver<Arc<View>>,
) -> Result<(), Error> {
    let port = args.l2_heartbeat_port;
    let socket = heartbeat_socket(port)
        .await
        .map_err(|cause| Error::Heartbeat { port, cause })?;
    let v6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
    let (mine_tx, mine_rx) = watch::channel(Arc::new(Mine::new()));
    tokio::spawn(status::run(
        client.clone(),
        node.clone(),
        args.l2_status_namespace.clone(),
        mine_rx,
    ));
    let mut state = State {
        client,
        members: Members::new(&node, Instant::now(), args.l2_dead_after),
        node,
        responders: BTreeMap::new(),
        announced: Arc::new(Mine::new()),
        elector: elect::Elector::default(),
        last: None,
        links: Arc::default(),
        links_at: None,
        shown: None,
        mine_tx,
    };
    info!(node = %state.node, port, "L2 announcer started");
    let mut tick = tokio::time::interval(args.l2_heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            r = view.changed() => {
                r.map_err(|_| Error::ViewEnded)?;
                let v = view.borrow_and_update().clone();
                state.reconcile(&v);
            }
            _ = tick.tick() => {
                let v = view.borrow().clone();
                let hb = members::encode(&state.node, state.members.ready(&v, Instant::now()));
                for peer in state.members.peers(&v) {
                    let to = match peer {
                        IpAddr::V4(a) if v6 => IpAddr::V6(a.to_ipv6_mapped()),
                        a => a,
                    };
                    if let Err(e) = socket.try_send_to(&hb, SocketAddr::new(to, port)) {
                        debug!(%peer, error = %e, "sending a heartbeat");
                    }
                }
                state.reconcile(&v);
            }
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                if let Some((name, ready)) = members::decode(&buf[..n]) {
                    let v = view.borrow().clone();
                    if state.members.heard(&v, from.ip(), name, ready, Instant::now()) {
                        state.reconcile(&v);
                    }
                }
            }
        }
    }
}

/// A dual-stack UDP socket on `port` (IPv4 only where IPv6 is off).
async fn heartbeat_socket(port: u16) -> std::io::Result<UdpSocket> {
    match UdpSocket::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)).await {
        Ok(s) => Ok(s),
        Err(_) => UdpSocket::bind(SocketAddr::new([0, 0, 0, 0].into(), port)).await,
    }
}

/// The responders' addresses per interface, and what they were computed from.
struct Shown {
    changes: u64,
    links: Arc<BTreeMap<String, Link>>,
    want: BTreeMap<String, BTreeSet<IpAddr>>,
}

/// The announcer's state between events.
struct State {
    client: kube::Client,
    node: String,
    members: Members,
    /// One answering task per interface, by name.
    responders: BTreeMap<String, Responder>,
    /// What this node announced at the last reconcile: the value `mine_tx` holds.
    announced: Arc<Mine>,
    /// Who owns each address, remembered between reconciles.
    elector: elect::Elector,
    /// The view and the nodes alive at the last reconcile.
    last: Option<(Arc<View>, BTreeSet<String>)>,
    /// The interfaces, and when they were listed: again every [`LINKS_RECHECK`], not
    /// at every change of the view (listing them was a third of a reconcile's work).
    links: Arc<BTreeMap<String, Link>>,
    links_at: Option<Instant>,
    /// What the responders were last given, and from what: the elector's count of
    /// changed answers and the interfaces as they were then.
    shown: Option<Shown>,
    mine_tx: watch::Sender<Arc<Mine>>,
}

impl State {
    /// Elects, and brings the responders in line with the addresses this node owns.
    fn reconcile(&mut self, view: &Arc<View>) {
        if !view.synced {
            return;
        }
        let now = Instant::now();
        let alive = self.members.alive(view, now);
        // A heartbeat tick (every 50 ms) with the same view and the same nodes alive
        // changes nothing but the interfaces, which are looked at less often: at 1,000
        // addresses, electing at every tick was most of the agent's work.
        let same_inputs = self
            .last
            .as_ref()
            .is_some_and(|(v, a)| Arc::ptr_eq(v, view) && *a == alive);
        let links_due = self.links_at.is_none_or(|at| now >= at + LINKS_RECHECK);
        if same_inputs && !links_due {
            return;
        }
        if links_due {
            match netlink::packet::links() {
                Ok(l) => {
                    self.links = Arc::new(l);
                    self.links_at = Some(now);
                }
                Err(e) => {
                    warn!(error = %ErrorChain(&e), "listing interfaces");
                    return;
                }
            }
        }
        let links = Arc::clone(&self.links);
        self.last = Some((view.clone(), alive.clone()));
        let view: &View = view;
        // Taken out while its answer is read, and put back below.
        let mut elector = std::mem::take(&mut self.elector);
        if !same_inputs {
            elector.assign(view, &alive);
        }
        let changes = elector.changes();
        // `Arc`'s equality of an `Eq` value is true at once for the same allocation (the
        // interfaces not listed again since).
        if let Some(shown) = self
            .shown
            .take_if(|s| s.changes == changes && s.links == links)
        {
            // Nothing elected again and no interface changed (a pool's status, a
            // heartbeat, a link check): only a responder that stopped needs starting
            // again. At 1,000 addresses, rebuilding what this node announces was most
            // of the announcer's work per change.
            self.elector = elector;
            self.set_responders(&links, &shown.want, false);
            self.shown = Some(shown);
            return;
        }
        let assignments = elector.answers();
        let underlay = view
            .nodes
            .get(self.node.as_str())
            .and_then(|n| underlay(&links, &n.internal_ips));
        let mut want: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
        let mut mine = Mine::new();
        for (ip, a) in assignments {
            if a.owner != self.node {
                continue;
            }
            let interfaces: BTreeSet<String> = if a.interfaces.is_empty() {
                underlay.iter().map(|l| l.name.clone()).collect()
            } else {
                a.interfaces
                    .iter()
                    .filter(|i| links.contains_key(*i))
                    .cloned()
                    .collect()
            };
            if interfaces.is_empty() {
                warn!(%ip, "no interface to announce on");
            }
            for i in &interfaces {
                want.entry(i.clone()).or_default().insert(*ip);
            }
            for svc in &a.services {
                let uid = view
                    .services
                    .get(svc.as_str())
                    .map(|s| s.uid.clone())
                    .unwrap_or_default();
                let e = mine.entry(svc.clone()).or_insert(Announced {
                    uid,
                    interfaces: BTreeSet::new(),
                });
                e.interfaces.extend(interfaces.iter().cloned());
            }
        }
        self.elector = elector;
        self.set_responders(&links, &want, true);
        self.shown = Some(Shown {
            changes,
            links,
            want,
        });
        if mine != *self.announced {
            for (svc, a) in &mine {
                if !self.announced.contains_key(svc) {
                    info!(service = %svc, "announcing");
                    k8s::events::record(
                        &self.client,
                        status::assigned_event(&self.node, svc, &a.uid),
                    );
                }
            }
            for svc in self.announced.keys() {
                if !mine.contains_key(svc) {
                    info!(service = %svc, "no longer announcing");
                }
            }
            self.announced = Arc::new(mine);
            self.mine_tx.send_replace(Arc::clone(&self.announced));
        }
    }

    /// Starts, stops and updates the responders to answer for `want` (addresses by
    /// interface). With `want_changed` false, `want` is what the running responders
    /// were last given, so only those that stopped are started again.
    fn set_responders(
        &mut self,
        links: &BTreeMap<String, Link>,
        want: &BTreeMap<String, BTreeSet<IpAddr>>,
        want_changed: bool,
    ) {
        // Gone, finished (its socket failed) or bound to a link that was replaced.
        self.responders.retain(|name, r| {
            want.contains_key(name)
                && !r.task.is_finished()
                && links.get(name).is_some_and(|l| l.index == r.index)
        });
        for (name, ips) in want {
            let Some(link) = links.get(name) else {
                continue;
            };
            if let Some(r) = self.responders.get(name) {
                if !want_changed {
                    continue;
                }
                r.ips.send_if_modified(|cur| {
                    let changed = cur != ips;
                    if changed {
                        cur.clone_from(ips);
                    }
                    changed
                });
                continue;
            }
            match Responder::start(link, ips.clone()) {
                Ok(r) => {
                    self.responders.insert(name.clone(), r);
                }
                Err(e) => {
                    warn!(interface = %name, error = %ErrorChain(&e), "opening a packet socket")
                }
            }
        }
    }
}

/// The interface holding one of `ips` (the node's InternalIPs).
fn underlay<'a>(links: &'a BTreeMap<String, Link>, ips: &[IpAddr]) -> Option<&'a Link> {
    links
        .values()
        .find(|l| l.addrs.iter().any(|a| ips.contains(a)))
}

/// The task answering on one interface.
struct Responder {
    index: u32,
    ips: watch::Sender<BTreeSet<IpAddr>>,
    task: JoinHandle<()>,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How often the interfaces (and the responders bound to them) are looked at again
/// when neither the view nor the nodes alive changed.
const LINKS_RECHECK: Duration = Duration::from_millis(250);

/// When the announcements of an address that arrived are repeated: a lost frame or a
/// neighbour that was busy still learns the new owner within a second.
const ANNOUNCE_AT: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_secs(1),
];

impl Responder {
    fn start(link: &Link, ips: BTreeSet<IpAddr>) -> std::io::Result<Responder> {
        let socket = PacketSocket::bind(link, &packet::FILTER)?;
        let groups = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0)).ok();
        let (tx, rx) = watch::channel(BTreeSet::new());
        tx.send_replace(ips);
        let task = tokio::spawn(respond(socket, link.mac, link.index, groups, rx));
        Ok(Responder {
            index: link.index,
            ips: tx,
            task,
        })
    }
}

/// Answers questions for the addresses in `ips` on `socket`, and announces every
/// address that arrives in it.
async fn respond(
    socket: PacketSocket,
    mac: packet::Mac,
    index: u32,
    groups: Option<std::net::UdpSocket>,
    mut ips: watch::Receiver<BTreeSet<IpAddr>>,
) {
    let mut current: BTreeSet<IpAddr> = BTreeSet::new();
    // Announcements still to send: when, and what.
    let mut pending: Vec<(Instant, IpAddr)> = Vec::new();
    let mut buf = vec![0u8; 1600];
    let mut changed = true;
    loop {
        if changed {
            changed = false;
            let new = ips.borrow_and_update().clone();
            let now = Instant::now();
            for ip in new.difference(&current) {
                info!(interface = %socket.link(), %ip, "answering");
                pending.extend(ANNOUNCE_AT.iter().map(|d| (now + *d, *ip)));
                // Solicitations go to the address's solicited-node group: make the
                // NIC pass that group's frames (and tell MLD-snooping switches).
                if let (IpAddr::V6(v6), Some(g)) = (ip, &groups)
                    && let Err(e) = g.join_multicast_v6(&packet::solicited_node(v6), index)
                {
                    debug!(%ip, error = %e, "joining the solicited-node group");
                }
            }
            for ip in current.difference(&new) {
                info!(interface = %socket.link(), %ip, "no longer answering");
                pending.retain(|(_, p)| p != ip);
                if let (IpAddr::V6(v6), Some(g)) = (ip, &groups) {
                    // Another address may share the group; leaving only when none does.
                    let group = packet::solicited_node(v6);
                    let shared = new
                        .iter()
                        .any(|o| matches!(o, IpAddr::V6(o) if packet::solicited_node(o) == group));
                    if !shared {
                        let _ = g.leave_multicast_v6(&group, index);
                    }
                }
            }
            current = new;
        }
        let next = pending.iter().map(|(t, _)| *t).min();
        tokio::select! {
            r = ips.changed() => {
                if r.is_err() {
                    return;
                }
                changed = true;
            }
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                let due: Vec<IpAddr> = pending.iter().filter(|(t, _)| *t <= now).map(|(_, ip)| *ip).collect();
                pending.retain(|(t, _)| *t > now);
                for ip in due {
                    let frame = match ip {
                        IpAddr::V4(v4) => packet::gratuitous_arp(v4, mac),
                        IpAddr::V6(v6) => packet::unsolicited_advertisement(v6, mac),
                    };
                    if let Err(e) = socket.send(&frame) {
                        warn!(interface = %socket.link(), %ip, error = %e, "announcing");
                    }
                }
            }
            r = socket.recv(&mut buf) => match r {
                Ok(n) => {
                    let Some(q) = packet::parse(&buf[..n]) else { continue };
                    if current.contains(&q.target())
                        && let Err(e) = socket.send(&packet::answer(&q, mac))
                    {
                        warn!(interface = %socket.link(), error = %e, "answering");
                    }
                }
                Err(e) => {
                    // The link went away: the next reconcile opens a new socket.
                    warn!(interface = %socket.link(), error = %e, "receiving");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(t).await;
    }
}
