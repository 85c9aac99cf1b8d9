//! BFD (RFC 5880) in asynchronous mode over single-hop UDP (RFC 5881), for the BGP
//! peers that name a BFDProfile: a dead node (or router) is noticed after
//! `detectMultiplier` missed packets instead of the BGP hold time.
//!
//! The packet codec and the per-peer state machine are pure ([`Packet`], [`Session`]);
//! [`run`] owns the UDP sockets: one receiving on port 3784 for every peer, one sending
//! per peer from its own source port (49152 and up), TTL 255. Not done: authentication
//! (packets with the A bit are dropped), echo mode, demand mode, and the receive-side
//! TTL check of RFC 5881 (it needs the packet's TTL from a control message, which the
//! safe socket APIs here do not give).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// BFD control packets' destination port (RFC 5881).
pub const PORT: u16 = 3784;
const LEN: usize = 24;

/// A session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(b: u8) -> State {
        match b & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }
}

/// A control packet (the fields this implementation uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub fin: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
}

impl Packet {
    pub fn encode(&self) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = ((self.state as u8) << 6) | (u8::from(self.poll) << 5) | (u8::from(self.fin) << 4);
        b[2] = self.detect_mult;
        b[3] = LEN as u8;
        b[4..8].copy_from_slice(&self.my_discr.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_discr.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        // Required min echo RX interval: 0, no echo.
        b
    }

    /// Decodes with the checks of RFC 5880 6.8.6; the error says which failed.
    pub fn decode(b: &[u8]) -> Result<Packet, String> {
        if b.len() < LEN {
            return Err(format!("{} octets, fewer than 24", b.len()));
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(format!("version {version}, only 1 is spoken"));
        }
        let len = usize::from(b[3]);
        if len < LEN || len > b.len() {
            return Err(format!("length field {len} with {} octets", b.len()));
        }
        if b[1] & 0x04 != 0 {
            return Err("authentication (A bit) is not supported".into());
        }
        if b[1] & 0x01 != 0 {
            return Err("the multipoint (M) bit is set".into());
        }
        let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = Packet {
            diag: b[0] & 0x1f,
            state: State::from_bits(b[1] >> 6),
            poll: b[1] & 0x20 != 0,
            fin: b[1] & 0x10 != 0,
            detect_mult: b[2],
            my_discr: be(4),
            your_discr: be(8),
            desired_min_tx: be(12),
            required_min_rx: be(16),
        };
        if p.detect_mult == 0 {
            return Err("detect multiplier 0".into());
        }
        if p.my_discr == 0 {
            return Err("my discriminator 0".into());
        }
        if p.your_discr == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err(format!("your discriminator 0 in state {:?}", p.state));
        }
        Ok(p)
    }
}

/// Timers from a BFDProfile (MetalLB's defaults: 300 ms, 300 ms, 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    pub transmit: Duration,
    pub receive: Duration,
    pub multiplier: u8,
    /// Wait for the peer to speak first.
    pub passive: bool,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            transmit: Duration::from_millis(300),
            receive: Duration::from_millis(300),
            multiplier: 3,
            passive: false,
        }
    }
}

/// Diagnostic codes we send.
const DIAG_EXPIRED: u8 = 1;
/// While not Up, packets go at most once a second (RFC 5880 6.8.3).
const SLOW: Duration = Duration::from_secs(1);

/// One BFD session's state machine (RFC 5880 6.8.6), pure.
#[derive(Debug, Clone)]
pub struct Session {
    pub timers: Timers,
    pub state: State,
    pub local_discr: u32,
    pub remote_discr: u32,
    pub remote_state: State,
    pub diag: u8,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_mult: u8,
    /// The peer asked for a Final.
    final_due: bool,
    heard: bool,
}

impl Session {
    pub fn new(timers: Timers, local_discr: u32) -> Session {
        Session {
            timers,
            state: State::Down,
            local_discr,
            remote_discr: 0,
            remote_state: State::Down,
            diag: 0,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_mult: 0,
            final_due: false,
            heard: false,
        }
    }

    /// The packet to send now.
    pub fn packet(&mut self) -> Packet {
        let fin = std::mem::take(&mut self.final_due);
        let tx = if self.state == State::Up {
            self.timers.transmit
        } else {
            self.timers.transmit.max(SLOW)
        };
        Packet {
            diag: self.diag,
            state: self.state,
            poll: false,
            fin,
            detect_mult: self.timers.multiplier,
            my_discr: self.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx: u32::try_from(tx.as_micros()).unwrap_or(u32::MAX),
            required_min_rx: u32::try_from(self.timers.receive.as_micros()).unwrap_or(u32::MAX),
        }
    }

    /// How long between our packets (with the jitter left to the caller).
    pub fn tx_interval(&self) -> Duration {
        let ours = if self.state == State::Up {
            self.timers.transmit
        } else {
            self.timers.transmit.max(SLOW)
        };
        ours.max(self.remote_min_rx)
    }

    /// How long without a packet before the session goes Down.
    pub fn detect_time(&self) -> Duration {
        self.timers.receive.max(self.remote_desired_tx) * u32::from(self.remote_mult.max(1))
    }

    /// Whether we may send (passive mode waits for the peer).
    pub fn may_send(&self) -> bool {
        !self.timers.passive || self.heard
    }

    /// A packet arrived; returns the new state when it changed.
    pub fn receive(&mut self, p: &Packet) -> Option<State> {
        self.heard = true;
        self.remote_discr = p.my_discr;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx));
        self.remote_desired_tx = Duration::from_micros(u64::from(p.desired_min_tx));
        self.remote_mult = p.detect_mult;
        if p.poll {
            self.final_due = true;
        }
        let before = self.state;
        match (self.state, p.state) {
            (State::Init | State::Up, State::AdminDown) => {
                self.diag = 3; // neighbor signaled session down
                self.state = State::Down;
            }
            (State::Down, State::Down) => self.state = State::Init,
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.state = State::Up;
                self.diag = 0;
            }
            (State::Up, State::Down) => {
                self.diag = 3;
                self.state = State::Down;
            }
            _ => {}
        }
        (self.state != before).then_some(self.state)
    }

    /// Nothing heard for the detection time; returns Down when that is a change.
    pub fn expired(&mut self) -> Option<State> {
        if matches!(self.state, State::Init | State::Up) {
            self.state = State::Down;
            self.diag = DIAG_EXPIRED;
            self.remote_discr = 0;
            return Some(State::Down);
        }
        None
    }
}

/// A peer to run BFD with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub address: IpAddr,
    pub source: Option<IpAddr>,
    pub timers: Timers,
}

/// Runs BFD with `peers` (updated through the channel) and publishes each peer's state
/// (`true`: Up) on the returned watches' senders in `states`.
pub async fn run(
    mut peers: watch::Receiver<BTreeMap<IpAddr, Peer>>,
    states: watch::Sender<BTreeMap<IpAddr, bool>>,
) {
    // Port 3784 is taken only once a peer asks for BFD: a node without BFD peers keeps
    // it free (for a routing daemon of its own, say).
    while peers.borrow_and_update().is_empty() {
        if peers.changed().await.is_err() {
            return;
        }
    }
    let rx4 = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], PORT))).await;
    let rx6 = bind_v6_only().await;
    let (rx4, rx6) = match (rx4, rx6) {
        (Ok(a), Ok(b)) => (a, b),
        (a, b) => {
            warn!(v4 = ?a.err(), v6 = ?b.err(), "BFD: cannot listen on UDP port 3784; BFD is off");
            return std::future::pending().await;
        }
    };
    struct Running {
        peer: Peer,
        session: Session,
        tx: UdpSocket,
        next_tx: Instant,
        deadline: Option<Instant>,
    }
    let mut running: BTreeMap<IpAddr, Running> = BTreeMap::new();
    let mut next_discr: u32 = rand_discr();
    let (sock_tx, mut sock_rx) = mpsc::unbounded_channel::<(IpAddr, Vec<u8>)>();
    let recv = |sock: UdpSocket, out: mpsc::UnboundedSender<(IpAddr, Vec<u8>)>| async move {
        let mut buf = [0u8; 64];
        loop {
            if let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let _ = out.send((from.ip(), buf[..n].to_vec()));
            }
        }
    };
    tokio::spawn(recv(rx4, sock_tx.clone()));
    tokio::spawn(recv(rx6, sock_tx));
    let publish = |running: &BTreeMap<IpAddr, Running>| {
        let now: BTreeMap<IpAddr, bool> = running
            .iter()
            .map(|(a, r)| (*a, r.session.state == State::Up))
            .collect();
        states.send_if_modified(|s| {
            if *s == now {
                false
            } else {
                *s = now;
                true
            }
        });
    };
    let mut src_port: u16 = 49152;
    loop {
        // Bring the sessions to the configured peers.
        let want = peers.borrow_and_update().clone();
        running.retain(|a, r| want.get(a) == Some(&r.peer));
        for (addr, peer) in want {
            if running.contains_key(&addr) {
                continue;
            }
            let tx = match bind_tx(&peer, &mut src_port).await {
                Ok(s) => s,
                Err(e) => {
                    warn!(peer = %addr, error = %e, "BFD: cannot open a socket");
                    continue;
                }
            };
            next_discr = next_discr.wrapping_add(1).max(1);
            info!(peer = %addr, "BFD session started");
            running.insert(
                addr,
                Running {
                    session: Session::new(peer.timers, next_discr),
                    peer,
                    tx,
                    next_tx: Instant::now(),
                    deadline: None,
                },
            );
        }
        publish(&running);
        let wake = running
            .values()
            .flat_map(|r| [Some(r.next_tx), r.deadline])
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            changed = peers.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some((from, bytes)) = sock_rx.recv() => {
                let Some(r) = running.get_mut(&from) else { continue };
                match Packet::decode(&bytes) {
                    Ok(p) => {
                        if p.your_discr != 0 && p.your_discr != r.session.local_discr {
                            debug!(peer = %from, "BFD: packet for another session");
                            continue;
                        }
                        if let Some(s) = r.session.receive(&p) {
                            info!(peer = %from, state = ?s, "BFD session state");
                            // Answer at once on a change, so the peer moves too.
                            r.next_tx = Instant::now();
                        }
                        r.deadline = Some(Instant::now() + r.session.detect_time());
                    }
                    Err(e) => debug!(peer = %from, error = %e, "BFD: packet dropped"),
                }
            }
            () = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                for (addr, r) in &mut running {
                    if r.deadline.is_some_and(|d| d <= now) {
                        r.deadline = None;
                        if r.session.expired().is_some() {
                            info!(peer = %addr, "BFD session down: detection time expired");
                        }
                    }
                    if r.next_tx <= now {
                        if r.session.may_send() {
                            let p = r.session.packet().encode();
                            let _ = r.tx.send_to(&p, SocketAddr::new(*addr, PORT)).await;
                        }
                        // 75-100% of the interval (RFC 5880 6.8.7), jitter from the clock.
                        let iv = r.session.tx_interval();
                        let jitter = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default()
                            .subsec_nanos()
                            % 25;
                        r.next_tx = now + iv * (75 + jitter) / 100;
                    }
                }
            }
        }
        publish(&running);
    }
}

fn rand_discr() -> u32 {
    // Distinct across restarts is enough (the peer resets on a new discriminator).
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ std::process::id()).max(1)
}

async fn bind_v6_only() -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, PORT)).into())?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s.into())
}

/// The sending socket: TTL 255 (RFC 5881), a source port from 49152 up.
async fn bind_tx(peer: &Peer, port: &mut u16) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = if peer.address.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let local = peer.source.unwrap_or(if peer.address.is_ipv4() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        IpAddr::from(std::net::Ipv6Addr::UNSPECIFIED)
    });
    let mut last = None;
    for _ in 0..64 {
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if peer.address.is_ipv4() {
            s.set_ttl_v4(255)?;
        } else {
            s.set_unicast_hops_v6(255)?;
        }
        *port = if *port == u16::MAX { 49152 } else { *port + 1 };
        match s.bind(&SocketAddr::new(local, *port).into()) {
            Ok(()) => {
                s.set_nonblocking(true)?;
                return UdpSocket::from_std(s.into());
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free source port")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(state: State, my: u32, your: u32) -> Packet {
        Packet {
            diag: 0,
            state,
            poll: false,
            fin: false,
            detect_mult: 3,
            my_discr: my,
            your_discr: your,
            desired_min_tx: 300_000,
            required_min_rx: 300_000,
        }
    }

    #[test]
    fn packets_round_trip_and_bad_ones_are_named() {
        let p = pkt(State::Up, 7, 9);
        assert_eq!(Packet::decode(&p.encode()), Ok(p.clone()));
        let mut b = p.encode();
        b[0] = 2 << 5;
        assert!(Packet::decode(&b).unwrap_err().contains("version 2"));
        let mut b = p.encode();
        b[1] |= 0x04;
        assert!(Packet::decode(&b).unwrap_err().contains("authentication"));
        let b = pkt(State::Up, 7, 0).encode();
        assert!(
            Packet::decode(&b)
                .unwrap_err()
                .contains("your discriminator 0")
        );
        assert!(Packet::decode(&b[..20]).is_err());
    }

    #[test]
    fn three_way_handshake_and_detection() {
        let mut a = Session::new(Timers::default(), 1);
        let mut b = Session::new(Timers::default(), 2);
        // a -> b (Down), b goes Init; b -> a (Init), a goes Up; a -> b (Up), b goes Up.
        assert_eq!(b.receive(&a.packet()), Some(State::Init));
        assert_eq!(a.receive(&b.packet()), Some(State::Up));
        assert_eq!(b.receive(&a.packet()), Some(State::Up));
        // b's packets while not Up asked for 1 s; Up, 300 ms.
        assert_eq!(a.detect_time(), Duration::from_secs(3));
        assert_eq!(a.receive(&b.packet()), None);
        assert_eq!(a.detect_time(), Duration::from_millis(900));
        assert_eq!(a.tx_interval(), Duration::from_millis(300));
        assert_eq!(a.expired(), Some(State::Down));
        assert_eq!(a.diag, DIAG_EXPIRED);
        // The peer hears Down and goes Down too.
        assert_eq!(b.receive(&a.packet()), Some(State::Down));
        // Not Up: at most one packet a second.
        assert_eq!(a.tx_interval(), Duration::from_secs(1));
    }

    #[test]
    fn passive_waits_for_the_peer() {
        let mut s = Session::new(
            Timers {
                passive: true,
                ..Timers::default()
            },
            1,
        );
        assert!(!s.may_send());
        s.receive(&pkt(State::Down, 5, 0));
        assert!(s.may_send());
    }
}
