//! The BGP session state machine (RFC 4271 section 8), as one enum stepped by one
//! function: events in (connection up, a message, a timer), actions out (send, arm a
//! timer, close). No sockets, no clocks: [`super::session`] drives it, the tests step it.
//!
//! The speaker only opens connections (as MetalLB's own speaker did): it never listens,
//! so there is no connection collision to resolve and no Active state; a connection that
//! fails is retried after a back-off, which the driver does while the machine is Idle.

use std::net::Ipv4Addr;
use std::time::Duration;

use super::codec::{DecodeError, Family, Message, Notification, Open};

/// How the peer's AS number is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAsn {
    /// Exactly this one.
    Fixed(u32),
    /// `dynamicASN: internal`: the same as ours.
    Internal,
    /// `dynamicASN: external`: any but ours.
    External,
}

/// What we offer in OPEN and accept from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub local_asn: u32,
    pub peer_asn: PeerAsn,
    pub router_id: Ipv4Addr,
    /// Proposed hold time (0 disables keepalives and the hold timer).
    pub hold_time: Duration,
    /// Keepalive interval; `None` means a third of the negotiated hold time.
    pub keepalive: Option<Duration>,
    pub families: Vec<Family>,
}

/// What both sides agreed in OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_asn: u32,
    pub peer_router_id: Ipv4Addr,
    /// Zero: no hold timer, no keepalives.
    pub hold_time: Duration,
    pub keepalive: Duration,
    /// Families both offered (IPv4 unicast when either sent no multiprotocol capability).
    pub families: Vec<Family>,
    pub internal: bool,
}

/// The session's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No connection (waiting to retry).
    Idle,
    /// Connecting (TCP).
    Connect,
    /// Our OPEN is sent; waiting for the peer's.
    OpenSent,
    /// OPENs exchanged; waiting for the peer's KEEPALIVE.
    OpenConfirm(Negotiated),
    /// Routes flow.
    Established(Negotiated),
}

impl State {
    /// The name RFC 4271 and `birdc`/`vtysh` use.
    pub fn name(&self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::OpenSent => "OpenSent",
            State::OpenConfirm(_) => "OpenConfirm",
            State::Established(_) => "Established",
        }
    }
}

/// What happened.
// One event at a time, never stored.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    /// The driver starts connecting.
    Start,
    /// The TCP connection is up.
    Connected,
    /// Connecting failed, or the connection closed or broke.
    ConnectionLost(String),
    Received(Message),
    /// The peer sent bytes that are not a valid message.
    Malformed(DecodeError),
    HoldTimerExpired,
    KeepaliveTimerExpired,
    /// Stop for good (with a Cease NOTIFICATION when a session is open).
    Stop(Notification),
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Message),
    /// (Re)arm the hold timer; `None` stops it.
    Hold(Option<Duration>),
    /// (Re)arm the keepalive timer; `None` stops it.
    Keepalive(Option<Duration>),
    /// The session is up: send the routes.
    Up(Negotiated),
    /// Close the connection; the reason is for the log and the Events. The driver
    /// retries after its back-off unless the event was `Stop`.
    Close(String),
    /// A message to hand to the routing side (UPDATE, route refresh) while Established.
    Deliver(Message),
}

/// RFC 4271's suggestion for the hold timer before OPEN arrives.
pub const OPEN_HOLD: Duration = Duration::from_secs(240);

/// One session.
#[derive(Debug)]
pub struct Fsm {
    pub config: Config,
    pub state: State,
}

impl Fsm {
    pub fn new(config: Config) -> Fsm {
        Fsm {
            config,
            state: State::Idle,
        }
    }

    fn open(&self) -> Open {
        Open {
            asn: self.config.local_asn,
            hold_time: u16::try_from(self.config.hold_time.as_secs()).unwrap_or(u16::MAX),
            router_id: self.config.router_id,
            four_octet_as: true,
            families: self.config.families.clone(),
            // Not offered: the speaker takes no routes, so it never needs a refresh,
            // and the codec does not parse ROUTE-REFRESH messages.
            route_refresh: false,
        }
    }

    /// Closes with a NOTIFICATION: the actions, and the state back to Idle.
    fn fail(&mut self, n: Notification, why: String) -> Vec<Action> {
        self.state = State::Idle;
        vec![
            Action::Send(Message::Notification(n)),
            Action::Hold(None),
            Action::Keepalive(None),
            Action::Close(why),
        ]
    }

    fn lost(&mut self, why: String) -> Vec<Action> {
        self.state = State::Idle;
        vec![
            Action::Hold(None),
            Action::Keepalive(None),
            Action::Close(why),
        ]
    }

    /// Checks the peer's OPEN against the configuration.
    fn negotiate(&self, o: &Open) -> Result<Negotiated, (Notification, String)> {
        let local = self.config.local_asn;
        let ok = match self.config.peer_asn {
            PeerAsn::Fixed(a) => o.asn == a,
            PeerAsn::Internal => o.asn == local,
            PeerAsn::External => o.asn != local,
        };
        if !ok {
            let want = match self.config.peer_asn {
                PeerAsn::Fixed(a) => a.to_string(),
                PeerAsn::Internal => format!("{local} (dynamicASN internal)"),
                PeerAsn::External => format!("any but {local} (dynamicASN external)"),
            };
            return Err((
                Notification::new(2, 2, Vec::new()),
                format!("the peer's OPEN says AS {}, expected {want}", o.asn),
            ));
        }
        if !o.four_octet_as {
            // Data: the capability we need (RFC 5492).
            let mut data = vec![65, 4];
            data.extend(local.to_be_bytes());
            return Err((
                Notification::new(2, 7, data),
                "the peer does not offer 4-octet AS numbers (RFC 6793)".into(),
            ));
        }
        if o.router_id == self.config.router_id && o.asn == local {
            return Err((
                Notification::new(2, 3, Vec::new()),
                format!("the peer's router ID {} is ours", o.router_id),
            ));
        }
        let theirs = Duration::from_secs(u64::from(o.hold_time));
        let hold_time = self.config.hold_time.min(theirs);
        let keepalive = if hold_time.is_zero() {
            Duration::ZERO
        } else {
            self.config
                .keepalive
                .unwrap_or(hold_time / 3)
                .min(hold_time / 3)
                .max(Duration::from_secs(1))
        };
        let offered = |fs: &[Family]| {
            if fs.is_empty() {
                vec![Family::Ipv4Unicast]
            } else {
                fs.to_vec()
            }
        };
        let ours = offered(&self.config.families);
        let families = offered(&o.families)
            .into_iter()
            .filter(|f| ours.contains(f))
            .collect();
        Ok(Negotiated {
            peer_asn: o.asn,
            peer_router_id: o.router_id,
            hold_time,
            keepalive,
            families,
            internal: o.asn == local,
        })
    }

    /// Steps the machine.
    pub fn step(&mut self, event: Event) -> Vec<Action> {
        use Event as E;
        match (&self.state, event) {
            (_, E::Stop(n)) => match self.state {
                State::OpenSent | State::OpenConfirm(_) | State::Established(_) => {
                    let why = format!("stopped: {n}");
                    self.fail(n, why)
                }
                _ => self.lost("stopped".into()),
            },
            (State::Idle, E::Start) => {
                self.state = State::Connect;
                Vec::new()
            }
            (State::Connect, E::Connected) => {
                self.state = State::OpenSent;
                vec![
                    Action::Send(Message::Open(self.open())),
                    Action::Hold(Some(OPEN_HOLD)),
                ]
            }
            (_, E::ConnectionLost(why)) => self.lost(why),
            (State::Idle | State::Connect, e) => {
                // Nothing is open: events of an old connection are stale.
                tracing::debug!(?e, "ignored without a session");
                Vec::new()
            }
            (_, E::Malformed(e)) => {
                let why = format!("the peer sent a malformed message: {e}");
                self.fail(e.notification, why)
            }
            (_, E::HoldTimerExpired) => self.fail(
                Notification::hold_expired(),
                "hold timer expired: nothing heard from the peer".into(),
            ),
            (_, E::Received(Message::Notification(n))) => {
                self.lost(format!("the peer sent a NOTIFICATION: {n}"))
            }
            (State::OpenSent, E::Received(Message::Open(o))) => match self.negotiate(&o) {
                Ok(neg) => {
                    let hold = (!neg.hold_time.is_zero()).then_some(neg.hold_time);
                    let keepalive = (!neg.keepalive.is_zero()).then_some(neg.keepalive);
                    self.state = State::OpenConfirm(neg);
                    vec![
                        Action::Send(Message::Keepalive),
                        Action::Hold(hold),
                        Action::Keepalive(keepalive),
                    ]
                }
                Err((n, why)) => self.fail(n, why),
            },
            (State::OpenConfirm(neg), E::Received(Message::Keepalive)) => {
                let neg = neg.clone();
                let hold = (!neg.hold_time.is_zero()).then_some(neg.hold_time);
                self.state = State::Established(neg.clone());
                vec![Action::Hold(hold), Action::Up(neg)]
            }
            (State::OpenConfirm(neg) | State::Established(neg), E::KeepaliveTimerExpired) => {
                let every = neg.keepalive;
                vec![
                    Action::Send(Message::Keepalive),
                    Action::Keepalive(Some(every)),
                ]
            }
            (
                State::Established(neg),
                E::Received(m @ (Message::Keepalive | Message::Update(_))),
            ) => {
                let hold = (!neg.hold_time.is_zero()).then_some(neg.hold_time);
                let mut actions = vec![Action::Hold(hold)];
                if matches!(m, Message::Update(_)) {
                    actions.push(Action::Deliver(m));
                }
                actions
            }
            (state, E::Received(m)) => {
                let why = format!(
                    "the peer sent {} in state {}",
                    match m {
                        Message::Open(_) => "OPEN",
                        Message::Update(_) => "UPDATE",
                        Message::Keepalive => "KEEPALIVE",
                        Message::Notification(_) => "NOTIFICATION",
                    },
                    state.name()
                );
                // Finite state machine error (RFC 6608 subcodes: 1 OpenSent, 2 OpenConfirm, 3 Established).
                let sub = match state {
                    State::OpenSent => 1,
                    State::OpenConfirm(_) => 2,
                    _ => 3,
                };
                self.fail(Notification::new(5, sub, Vec::new()), why)
            }
            (_, E::Start | E::Connected | E::KeepaliveTimerExpired) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            local_asn: 64512,
            peer_asn: PeerAsn::Fixed(64513),
            router_id: Ipv4Addr::new(198, 18, 0, 11),
            hold_time: Duration::from_secs(9),
            keepalive: None,
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        }
    }

    fn peer_open(asn: u32, hold: u16) -> Message {
        Message::Open(Open {
            asn,
            hold_time: hold,
            router_id: Ipv4Addr::new(198, 18, 0, 254),
            four_octet_as: true,
            families: vec![Family::Ipv4Unicast],
            route_refresh: false,
        })
    }

    fn established(config: Config, asn: u32, hold: u16) -> (Fsm, Negotiated) {
        let mut fsm = Fsm::new(config);
        assert!(fsm.step(Event::Start).is_empty());
        let a = fsm.step(Event::Connected);
        assert!(matches!(a[0], Action::Send(Message::Open(_))));
        assert_eq!(fsm.state, State::OpenSent);
        let a = fsm.step(Event::Received(peer_open(asn, hold)));
        assert_eq!(a[0], Action::Send(Message::Keepalive), "{a:?}");
        let a = fsm.step(Event::Received(Message::Keepalive));
        let Some(Action::Up(neg)) = a.last().cloned() else {
            panic!("not up: {a:?}")
        };
        assert_eq!(fsm.state.name(), "Established");
        (fsm, neg)
    }

    #[test]
    fn opens_and_negotiates_the_smaller_hold_time() {
        let (_, neg) = established(config(), 64513, 240);
        assert_eq!(neg.hold_time, Duration::from_secs(9));
        assert_eq!(neg.keepalive, Duration::from_secs(3));
        assert_eq!(neg.families, vec![Family::Ipv4Unicast]);
        assert!(!neg.internal);
        let (_, neg) = established(config(), 64513, 3);
        assert_eq!(neg.hold_time, Duration::from_secs(3));
        assert_eq!(neg.keepalive, Duration::from_secs(1));
    }

    #[test]
    fn hold_time_zero_means_no_timers() {
        let (_, neg) = established(config(), 64513, 0);
        assert_eq!(neg.hold_time, Duration::ZERO);
        assert_eq!(neg.keepalive, Duration::ZERO);
    }

    #[test]
    fn a_wrong_peer_as_is_refused_with_bad_peer_as() {
        let mut fsm = Fsm::new(config());
        fsm.step(Event::Start);
        fsm.step(Event::Connected);
        let a = fsm.step(Event::Received(peer_open(65000, 90)));
        assert_eq!(
            a[0],
            Action::Send(Message::Notification(Notification::new(2, 2, vec![])))
        );
        assert!(matches!(&a[3], Action::Close(why) if why.contains("AS 65000")));
        assert_eq!(fsm.state, State::Idle);
    }

    #[test]
    fn dynamic_asn() {
        let internal = Config {
            peer_asn: PeerAsn::Internal,
            ..config()
        };
        let (_, neg) = established(internal.clone(), 64512, 90);
        assert!(neg.internal);
        let mut fsm = Fsm::new(internal);
        fsm.step(Event::Start);
        fsm.step(Event::Connected);
        let a = fsm.step(Event::Received(peer_open(64513, 90)));
        assert!(matches!(&a[3], Action::Close(why) if why.contains("dynamicASN internal")));

        let external = Config {
            peer_asn: PeerAsn::External,
            ..config()
        };
        established(external.clone(), 4_200_000_000, 90);
        let mut fsm = Fsm::new(external);
        fsm.step(Event::Start);
        fsm.step(Event::Connected);
        let a = fsm.step(Event::Received(peer_open(64512, 90)));
        assert!(matches!(&a[0], Action::Send(Message::Notification(n)) if n.code == 2));
    }

    #[test]
    fn hold_expiry_and_stop_send_notifications() {
        let (mut fsm, _) = established(config(), 64513, 90);
        let a = fsm.step(Event::HoldTimerExpired);
        assert_eq!(
            a[0],
            Action::Send(Message::Notification(Notification::hold_expired()))
        );
        assert_eq!(fsm.state, State::Idle);

        let (mut fsm, _) = established(config(), 64513, 90);
        let a = fsm.step(Event::Stop(Notification::admin_shutdown()));
        assert_eq!(
            a[0],
            Action::Send(Message::Notification(Notification::admin_shutdown()))
        );
        // Stopping without a session sends nothing.
        let mut idle = Fsm::new(config());
        let a = idle.step(Event::Stop(Notification::admin_shutdown()));
        assert!(!a.iter().any(|a| matches!(a, Action::Send(_))));
    }

    #[test]
    fn keepalives_rearm_and_updates_are_delivered() {
        let (mut fsm, _) = established(config(), 64513, 90);
        let a = fsm.step(Event::KeepaliveTimerExpired);
        assert_eq!(
            a,
            vec![
                Action::Send(Message::Keepalive),
                Action::Keepalive(Some(Duration::from_secs(3)))
            ]
        );
        let a = fsm.step(Event::Received(Message::Keepalive));
        assert_eq!(a, vec![Action::Hold(Some(Duration::from_secs(9)))]);
        let a = fsm.step(Event::Received(Message::Update(Default::default())));
        assert!(matches!(a[1], Action::Deliver(_)));
    }

    #[test]
    fn unexpected_messages_are_fsm_errors() {
        let (mut fsm, _) = established(config(), 64513, 90);
        let a = fsm.step(Event::Received(peer_open(64513, 90)));
        assert_eq!(
            a[0],
            Action::Send(Message::Notification(Notification::new(5, 3, vec![])))
        );
        let mut fsm = Fsm::new(config());
        fsm.step(Event::Start);
        fsm.step(Event::Connected);
        let a = fsm.step(Event::Received(Message::Keepalive));
        assert_eq!(
            a[0],
            Action::Send(Message::Notification(Notification::new(5, 1, vec![])))
        );
    }

    #[test]
    fn a_peer_notification_closes_without_answering() {
        let (mut fsm, _) = established(config(), 64513, 90);
        let a = fsm.step(Event::Received(Message::Notification(
            Notification::admin_shutdown(),
        )));
        assert!(!a.iter().any(|a| matches!(a, Action::Send(_))));
        assert!(
            matches!(a.last(), Some(Action::Close(why)) if why.contains("administrative shutdown"))
        );
    }
}
