//! One peer's session over TCP: drives the [`fsm`](super::fsm) with the socket and the
//! timers, reconnects with a back-off, and once Established sends the peer only the
//! difference between the routes it has from us and the routes it should have.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tracing::{debug, info};

use super::codec::{
    self, Attributes, Family, Message, MpReach, MpUnreach, Notification, Origin, Segment, Update,
};
use super::fsm::{self, Action, Event, Fsm, Negotiated};
use super::plan::{RouteAttrs, Routes, Session};

/// A session's change of state, for the log, the Events and the status objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub peer: String,
    pub established: bool,
    /// Why it went down (or the failed connection attempt).
    pub reason: Option<String>,
}

/// Prefixes per UPDATE, under the 4096-octet limit with room for the attributes: a
/// /32 takes 5 octets, a /128 17.
const V4_PER_UPDATE: usize = 600;
const V6_PER_UPDATE: usize = 180;

/// The first back-off after a failure; it doubles up to the peer's `connectTime`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Why a connection ended.
enum Ended {
    /// The speaker stopped the session (withdrawn, NOTIFICATION sent).
    Stopped,
    /// Lost; whether it had been Established (the back-off restarts then).
    Lost { was_up: bool },
}

/// Runs the session until `stop` fires (or its sender is dropped): then withdraws what
/// it announced and closes with `stop`'s NOTIFICATION (Cease).
pub(crate) async fn run(
    name: String,
    cfg: Session,
    mut routes: watch::Receiver<Arc<Routes>>,
    mut stop: oneshot::Receiver<Notification>,
    status: mpsc::UnboundedSender<Status>,
    mut bfd: watch::Receiver<BfdStates>,
) {
    let mut fsm = Fsm::new(fsm::Config {
        local_asn: cfg.local_asn,
        peer_asn: cfg.peer_asn,
        router_id: cfg.router_id,
        hold_time: cfg.hold_time,
        keepalive: cfg.keepalive,
        families: cfg.families.clone(),
    });
    let mut backoff = FIRST_BACKOFF;
    loop {
        fsm.step(Event::Start);
        let connected = tokio::select! {
            c = connect(&cfg) => c,
            _ = &mut stop => return,
        };
        let ended = match connected {
            Ok(stream) => {
                let io = Io {
                    routes: &mut routes,
                    stop: &mut stop,
                    status: &status,
                    bfd: &mut bfd,
                };
                connection(&name, &cfg, &mut fsm, stream, io).await
            }
            Err(e) => {
                fsm.step(Event::ConnectionLost(e.to_string()));
                debug!(peer = %name, address = %cfg.address, error = %e, "connecting");
                Ended::Lost { was_up: false }
            }
        };
        match ended {
            Ended::Stopped => return,
            Ended::Lost { was_up: true } => backoff = FIRST_BACKOFF,
            Ended::Lost { was_up: false } => {}
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(cfg.connect_time.max(FIRST_BACKOFF));
    }
}

/// Opens the TCP connection: TTL 1 for a directly connected eBGP peer (RFC 4271's
/// default, so a router farther away cannot pretend), 255 otherwise; bound to
/// `sourceAddress` when given.
async fn connect(cfg: &Session) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = cfg.address;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    let internal = matches!(cfg.peer_asn, fsm::PeerAsn::Fixed(a) if a == cfg.local_asn)
        || cfg.peer_asn == fsm::PeerAsn::Internal;
    let ttl = if internal || cfg.ebgp_multihop {
        255
    } else {
        1
    };
    match addr {
        SocketAddr::V4(_) => sock.set_ttl_v4(ttl)?,
        SocketAddr::V6(_) => sock.set_unicast_hops_v6(ttl)?,
    }
    sock.set_tcp_nodelay(true)?;
    if let Some(src) = cfg.source {
        sock.bind(&SocketAddr::new(src, 0).into())?;
    }
    sock.set_nonblocking(true)?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(sock));
    // At most 3 s per attempt: the kernel's own SYN retries come 1, 3 and 7 s apart, so
    // a peer that comes back (a link restored) is found sooner by a new attempt.
    let timeout = cfg
        .connect_time
        .clamp(Duration::from_secs(1), Duration::from_secs(3));
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        )),
    }
}

/// What one connection's loop keeps.
struct Conn<'a> {
    name: &'a str,
    cfg: &'a Session,
    wr: OwnedWriteHalf,
    local: IpAddr,
    hold: Option<Instant>,
    keepalive: Option<Instant>,
    up: Option<Negotiated>,
    /// What the peer has from us.
    sent: Routes,
    status: &'a mpsc::UnboundedSender<Status>,
}

/// Each peer's BFD state (`true`: Up), from [`super::bfd::run`].
pub type BfdStates = std::collections::BTreeMap<IpAddr, bool>;

/// The channels a connection reads and writes besides its socket.
struct Io<'a> {
    routes: &'a mut watch::Receiver<Arc<Routes>>,
    stop: &'a mut oneshot::Receiver<Notification>,
    status: &'a mpsc::UnboundedSender<Status>,
    bfd: &'a mut watch::Receiver<BfdStates>,
}

async fn connection(
    name: &str,
    cfg: &Session,
    fsm: &mut Fsm,
    stream: TcpStream,
    io: Io<'_>,
) -> Ended {
    let Io {
        routes,
        stop,
        status,
        bfd,
    } = io;
    // BFD going Down (after it was Up) takes the session down at once, as the peer's
    // router does on its side.
    let peer_ip = cfg.address.ip();
    let mut bfd_up = cfg.bfd.is_some() && bfd.borrow_and_update().get(&peer_ip) == Some(&true);
    let local = match stream.local_addr() {
        Ok(a) => a.ip(),
        Err(_) => return Ended::Lost { was_up: false },
    };
    let (mut rd, wr) = stream.into_split();
    let mut c = Conn {
        name,
        cfg,
        wr,
        local,
        hold: None,
        keepalive: None,
        up: None,
        sent: Routes::new(),
        status,
    };
    let mut buf: Vec<u8> = Vec::with_capacity(codec::MAX_LEN);
    let mut events = vec![Event::Connected];
    loop {
        for event in events.drain(..) {
            let stopping = matches!(event, Event::Stop(_));
            if stopping && c.up.is_some() {
                // Withdraw first, so the router drops our routes at once even if it
                // handles the NOTIFICATION lazily.
                let _ = c.send_diff(&Routes::new()).await;
            }
            for action in fsm.step(event) {
                match c.act(action, routes).await {
                    Ok(None) => {}
                    Ok(Some(reason)) => {
                        let was_up = c.up.is_some();
                        if was_up {
                            info!(peer = %name, %reason, "BGP session down");
                        } else {
                            debug!(peer = %name, %reason, "BGP session not established");
                        }
                        let _ = status.send(Status {
                            peer: name.to_owned(),
                            established: false,
                            reason: Some(reason),
                        });
                        let _ = c.wr.shutdown().await;
                        return if stopping {
                            Ended::Stopped
                        } else {
                            Ended::Lost { was_up }
                        };
                    }
                    Err(e) => {
                        let was_up = c.up.is_some();
                        fsm.step(Event::ConnectionLost(e.to_string()));
                        let _ = status.send(Status {
                            peer: name.to_owned(),
                            established: false,
                            reason: Some(format!("writing to the peer: {e}")),
                        });
                        return if stopping {
                            Ended::Stopped
                        } else {
                            Ended::Lost { was_up }
                        };
                    }
                }
            }
        }
        let established = c.up.is_some();
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => events.push(Event::ConnectionLost("the peer closed the connection".into())),
                Ok(_) => loop {
                    match codec::frame_len(&buf) {
                        Ok(Some(len)) if buf.len() >= len => {
                            let frame: Vec<u8> = buf.drain(..len).collect();
                            match codec::decode(&frame) {
                                Ok(m) => events.push(Event::Received(m)),
                                Err(e) => {
                                    events.push(Event::Malformed(e));
                                    break;
                                }
                            }
                        }
                        Ok(_) => break,
                        Err(e) => {
                            events.push(Event::Malformed(e));
                            break;
                        }
                    }
                },
                Err(e) => events.push(Event::ConnectionLost(format!("reading: {e}"))),
            },
            () = sleep_or_never(c.hold) => {
                c.hold = None;
                events.push(Event::HoldTimerExpired);
            }
            () = sleep_or_never(c.keepalive) => {
                c.keepalive = None;
                events.push(Event::KeepaliveTimerExpired);
            }
            changed = routes.changed(), if established => {
                if changed.is_err() {
                    events.push(Event::Stop(Notification::new(6, 3, Vec::new())));
                } else {
                    let want = routes.borrow_and_update().clone();
                    if let Err(e) = c.send_diff(&want).await {
                        events.push(Event::ConnectionLost(format!("writing: {e}")));
                    }
                }
            }
            changed = bfd.changed(), if cfg.bfd.is_some() => {
                if changed.is_ok() {
                    let up = bfd.borrow_and_update().get(&peer_ip) == Some(&true);
                    if bfd_up && !up {
                        events.push(Event::ConnectionLost("the BFD session went down".into()));
                    }
                    bfd_up = up;
                }
            }
            n = &mut *stop => {
                events.push(Event::Stop(n.unwrap_or_else(|_| Notification::admin_shutdown())));
            }
        }
    }
}

async fn sleep_or_never(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Conn<'_> {
    /// Carries out one action; `Some(reason)` when the connection is to close.
    async fn act(
        &mut self,
        action: Action,
        routes: &mut watch::Receiver<Arc<Routes>>,
    ) -> std::io::Result<Option<String>> {
        match action {
            Action::Send(m) => self.wr.write_all(&codec::encode(&m)).await?,
            Action::Hold(d) => self.hold = d.map(|d| Instant::now() + d),
            Action::Keepalive(d) => self.keepalive = d.map(|d| Instant::now() + d),
            Action::Up(neg) => {
                info!(
                    peer = %self.name,
                    address = %self.cfg.address,
                    asn = neg.peer_asn,
                    hold = ?neg.hold_time,
                    "BGP session established"
                );
                self.up = Some(neg);
                let _ = self.status.send(Status {
                    peer: self.name.to_owned(),
                    established: true,
                    reason: None,
                });
                let want = routes.borrow_and_update().clone();
                self.send_diff(&want).await?;
            }
            Action::Close(reason) => return Ok(Some(reason)),
            // Routes from the peer are not installed: the speaker only announces.
            Action::Deliver(_) => {}
        }
        Ok(None)
    }

    /// The next hop for a family: the session's own address when it is of that
    /// family, otherwise the node's first global address of it.
    fn next_hop(&self, family: Family) -> Option<IpAddr> {
        let fits = |a: &IpAddr| match family {
            Family::Ipv4Unicast => a.is_ipv4(),
            Family::Ipv6Unicast => match a {
                IpAddr::V6(v6) => !v6.is_unicast_link_local(),
                IpAddr::V4(_) => false,
            },
        };
        std::iter::once(self.local)
            .chain(self.cfg.node_ips.iter().copied())
            .find(fits)
    }

    /// Sends the UPDATEs that turn what the peer has into `want`.
    async fn send_diff(&mut self, want: &Routes) -> std::io::Result<()> {
        let Some(neg) = self.up.clone() else {
            return Ok(());
        };
        let want: Routes = want
            .iter()
            .filter(|(net, _)| neg.families.contains(&Family::of(net)))
            .filter(|(net, _)| self.next_hop(Family::of(net)).is_some())
            .map(|(net, a)| {
                let mut a = a.clone();
                if !neg.internal {
                    a.local_pref = None;
                }
                (*net, a)
            })
            .collect();
        let msgs = updates(&self.sent, &want, &neg, self.cfg.local_asn, |f| {
            self.next_hop(f)
        });
        if !msgs.is_empty() {
            debug!(peer = %self.name, updates = msgs.len(), "sending route changes");
        }
        let mut bytes = Vec::new();
        for m in &msgs {
            bytes.extend(codec::encode(&Message::Update(m.clone())));
        }
        self.wr.write_all(&bytes).await?;
        self.sent = want;
        Ok(())
    }
}

/// The UPDATEs that turn `have` into `want`: withdrawals, then announcements grouped
/// by identical attributes.
pub fn updates(
    have: &Routes,
    want: &Routes,
    neg: &Negotiated,
    local_asn: u32,
    next_hop: impl Fn(Family) -> Option<IpAddr>,
) -> Vec<Update> {
    let mut out = Vec::new();
    let gone: Vec<IpNet> = have
        .keys()
        .filter(|n| !want.contains_key(*n))
        .copied()
        .collect();
    let v4: Vec<Ipv4Net> = gone
        .iter()
        .filter_map(|n| match n {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
        .collect();
    for chunk in v4.chunks(V4_PER_UPDATE) {
        out.push(Update {
            withdrawn: chunk.to_vec(),
            ..Default::default()
        });
    }
    let v6: Vec<IpNet> = gone
        .iter()
        .filter(|n| n.addr().is_ipv6())
        .copied()
        .collect();
    for chunk in v6.chunks(V6_PER_UPDATE) {
        out.push(Update {
            attributes: Attributes {
                mp_unreach: Some(MpUnreach {
                    family: Family::Ipv6Unicast,
                    withdrawn: chunk.to_vec(),
                }),
                ..Default::default()
            },
            ..Default::default()
        });
    }
    // New or changed routes, grouped by attributes.
    let mut groups: Vec<(&RouteAttrs, Vec<IpNet>)> = Vec::new();
    for (net, attrs) in want {
        if have.get(net) == Some(attrs) {
            continue;
        }
        match groups.iter_mut().find(|(a, _)| *a == attrs) {
            Some((_, nets)) => nets.push(*net),
            None => groups.push((attrs, vec![*net])),
        }
    }
    let as_path = if neg.internal {
        vec![]
    } else {
        vec![Segment::Sequence(vec![local_asn])]
    };
    for (attrs, nets) in groups {
        let base = Attributes {
            origin: Some(Origin::Igp),
            as_path: Some(as_path.clone()),
            local_pref: attrs.local_pref.or(neg.internal.then_some(100)),
            communities: attrs.communities.iter().copied().collect(),
            large_communities: attrs.large_communities.iter().copied().collect(),
            ..Default::default()
        };
        let v4: Vec<Ipv4Net> = nets
            .iter()
            .filter_map(|n| match n {
                IpNet::V4(n) => Some(*n),
                IpNet::V6(_) => None,
            })
            .collect();
        if let Some(IpAddr::V4(nh)) = next_hop(Family::Ipv4Unicast) {
            for chunk in v4.chunks(V4_PER_UPDATE) {
                out.push(Update {
                    attributes: Attributes {
                        next_hop: Some(nh),
                        ..base.clone()
                    },
                    nlri: chunk.to_vec(),
                    ..Default::default()
                });
            }
        }
        let v6: Vec<IpNet> = nets
            .iter()
            .filter(|n| n.addr().is_ipv6())
            .copied()
            .collect();
        if let Some(nh) = next_hop(Family::Ipv6Unicast) {
            for chunk in v6.chunks(V6_PER_UPDATE) {
                out.push(Update {
                    attributes: Attributes {
                        mp_reach: Some(MpReach {
                            family: Family::Ipv6Unicast,
                            next_hop: nh,
                            link_local: None,
                            nlri: chunk.to_vec(),
                        }),
                        ..base.clone()
                    },
                    ..Default::default()
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    use super::*;

    fn neg(internal: bool) -> Negotiated {
        Negotiated {
            peer_asn: if internal { 64512 } else { 64513 },
            peer_router_id: Ipv4Addr::new(198, 18, 0, 254),
            hold_time: Duration::from_secs(9),
            keepalive: Duration::from_secs(3),
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            internal,
        }
    }

    fn nh(f: Family) -> Option<IpAddr> {
        Some(match f {
            Family::Ipv4Unicast => "198.18.0.11".parse().unwrap(),
            Family::Ipv6Unicast => "2001:2::11".parse().unwrap(),
        })
    }

    fn routes(nets: &[&str], attrs: RouteAttrs) -> Routes {
        nets.iter()
            .map(|n| (n.parse().unwrap(), attrs.clone()))
            .collect()
    }

    #[test]
    fn only_the_difference_is_sent() {
        let a = RouteAttrs {
            communities: BTreeSet::from([1]),
            ..Default::default()
        };
        let have = routes(
            &["198.18.0.200/32", "198.18.0.201/32", "2001:2::c9/128"],
            a.clone(),
        );
        let mut want = routes(&["198.18.0.200/32", "2001:2::c8/128"], a.clone());
        want.insert(
            "198.18.0.202/32".parse().unwrap(),
            RouteAttrs {
                local_pref: Some(200),
                ..Default::default()
            },
        );
        let u = updates(&have, &want, &neg(false), 64512, nh);
        assert_eq!(u.len(), 4, "{u:#?}");
        assert_eq!(
            u[0].withdrawn,
            ["198.18.0.201/32".parse::<Ipv4Net>().unwrap()]
        );
        assert_eq!(
            u[1].attributes.mp_unreach.as_ref().unwrap().withdrawn,
            ["2001:2::c9/128".parse::<IpNet>().unwrap()]
        );
        // 198.18.0.200 is unchanged: not resent. The /128 goes in MP_REACH.
        let announced: Vec<String> = u[2..]
            .iter()
            .flat_map(|u| {
                u.nlri.iter().map(|n| n.to_string()).chain(
                    u.attributes
                        .mp_reach
                        .iter()
                        .flat_map(|m| m.nlri.iter().map(|n| n.to_string())),
                )
            })
            .collect();
        assert_eq!(announced, ["198.18.0.202/32", "2001:2::c8/128"]);
        for m in &u[2..] {
            assert_eq!(
                m.attributes.as_path,
                Some(vec![Segment::Sequence(vec![64512])])
            );
            // Every message encodes and decodes.
            let wire = codec::encode(&Message::Update(m.clone()));
            assert_eq!(codec::decode(&wire).unwrap(), Message::Update(m.clone()));
        }
        assert!(updates(&want, &want, &neg(false), 64512, nh).is_empty());
    }

    #[test]
    fn ibgp_has_an_empty_path_and_a_local_pref() {
        let want = routes(&["198.18.0.200/32"], RouteAttrs::default());
        let u = updates(&Routes::new(), &want, &neg(true), 64512, nh);
        assert_eq!(u[0].attributes.as_path, Some(vec![]));
        assert_eq!(u[0].attributes.local_pref, Some(100));
        assert_eq!(u[0].attributes.next_hop, "198.18.0.11".parse().ok());
    }

    #[test]
    fn a_thousand_routes_split_under_the_message_limit() {
        let want: Routes = (0..1000u32)
            .flat_map(|i| {
                [
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 + i), 32).unwrap()),
                    format!("2001:db8::{i:x}/128").parse().unwrap(),
                ]
            })
            .map(|n| (n, RouteAttrs::default()))
            .collect();
        let u = updates(&Routes::new(), &want, &neg(false), 64512, nh);
        for m in &u {
            assert!(codec::encode(&Message::Update(m.clone())).len() <= codec::MAX_LEN);
        }
        let w = updates(&want, &Routes::new(), &neg(false), 64512, nh);
        for m in &w {
            assert!(codec::encode(&Message::Update(m.clone())).len() <= codec::MAX_LEN);
        }
    }
}
