//! Per-request balancing as linkerd2-proxy does it: power of two choices, each
//! endpoint's cost its peak-EWMA round-trip time times its requests in flight plus one.
//!
//! The estimate jumps to a slower response at once (the "peak") and decays toward faster
//! ones over [`DECAY`], so an endpoint that slows down loses traffic quickly and wins it
//! back gradually. An endpoint not yet measured costs [`DEFAULT_RTT`].
//!
//! Failure accrual (Linkerd's `consecutive`, for Services annotated for it: see
//! [`Accrual`]): an endpoint whose last `max_failures` requests all failed (a 5xx, or
//! no connection) is ejected for `min_penalty`; once back, one more failure ejects it
//! for twice as long (up to `max_penalty`), one success restores it. With every
//! endpoint ejected there is none to pick.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::destination::Accrual;

/// The round-trip time assumed for an endpoint never measured (linkerd2-proxy's).
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// How fast an estimate forgets a slow response.
pub(crate) const DECAY: Duration = Duration::from_secs(10);
/// What a request the endpoint failed (it could not be reached) counts as: the balancer
/// then avoids it while others answer, as it would a very slow one.
pub(crate) const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// Endpoints remembered; past it, the idle ones are forgotten.
const REMEMBERED: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Load {
    /// The estimate, in nanoseconds.
    rtt: f64,
    at: Instant,
    pending: u32,
    /// Failures in a row (failure accrual).
    failures: u32,
    /// The last ejection's length; zero once a request succeeded.
    penalty: Duration,
    ejected_until: Option<Instant>,
}

impl Load {
    fn new(now: Instant) -> Load {
        Load {
            rtt: DEFAULT_RTT.as_nanos() as f64,
            at: now,
            pending: 0,
            failures: 0,
            penalty: Duration::ZERO,
            ejected_until: None,
        }
    }

    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// A request's outcome, for failure accrual.
    fn accrue(&mut self, failure: bool, accrual: &Accrual, now: Instant) {
        if !failure {
            self.failures = 0;
            self.penalty = Duration::ZERO;
            return;
        }
        self.failures += 1;
        let back_from_ejection = !self.penalty.is_zero();
        if back_from_ejection || self.failures >= accrual.max_failures {
            self.penalty = if back_from_ejection {
                (self.penalty * 2).min(accrual.max_penalty)
            } else {
                accrual.min_penalty
            };
            self.ejected_until = Some(now + self.penalty);
        }
    }

    fn cost(&self) -> f64 {
        self.rtt * f64::from(self.pending + 1)
    }

    fn observe(&mut self, rtt: Duration, now: Instant) {
        let rtt = rtt.as_nanos() as f64;
        if rtt > self.rtt {
            self.rtt = rtt;
        } else {
            let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
            let keep = (-elapsed / DECAY.as_secs_f64()).exp();
            self.rtt = self.rtt * keep + rtt * (1.0 - keep);
        }
        self.at = now;
    }
}

/// The loads of the endpoints one proxy sends requests to.
#[derive(Debug, Default, Clone)]
pub(crate) struct Loads {
    loads: Arc<Mutex<HashMap<SocketAddr, Load>>>,
}

/// A request in flight to an endpoint: counted until [`Pending::done`] or drop.
#[derive(Debug)]
pub(crate) struct Pending {
    loads: Loads,
    addr: SocketAddr,
    started: Instant,
    accrual: Option<Accrual>,
}

impl Pending {
    /// The response's headers arrived: the request's round trip is measured; a
    /// `server_error` (5xx) counts as a failure for failure accrual.
    pub(crate) fn done(self, server_error: bool) {
        let now = Instant::now();
        let mut loads = self.loads.loads.lock().expect("poisoned");
        if let Some(l) = loads.get_mut(&self.addr) {
            l.observe(now - self.started, now);
            if let Some(a) = &self.accrual {
                l.accrue(server_error, a, now);
            }
        }
    }

    /// The endpoint could not be reached: it counts as [`FAILURE_PENALTY`], and as a
    /// failure for failure accrual.
    pub(crate) fn failed(self) {
        let now = Instant::now();
        let mut loads = self.loads.loads.lock().expect("poisoned");
        if let Some(l) = loads.get_mut(&self.addr) {
            l.observe(FAILURE_PENALTY, now);
            if let Some(a) = &self.accrual {
                l.accrue(true, a, now);
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut loads = self.loads.loads.lock().expect("poisoned");
        if let Some(l) = loads.get_mut(&self.addr) {
            l.pending = l.pending.saturating_sub(1);
        }
    }
}

/// Power of two choices: of two items drawn at random, the one that costs less (`None`
/// for none).
pub(crate) fn p2c<T, C: PartialOrd>(items: &[T], cost: impl Fn(&T) -> C) -> Option<&T> {
    match items.len() {
        0 => None,
        1 => items.first(),
        n => {
            let a = super::random_below(n);
            let b = (a + 1 + super::random_below(n - 1)) % n;
            Some(if cost(&items[b]) < cost(&items[a]) {
                &items[b]
            } else {
                &items[a]
            })
        }
    }
}

impl Loads {
    /// Of two endpoints drawn at random among those not ejected, the one whose peak
    /// EWMA costs less.
    pub(crate) fn pick<'a, T>(
        &self,
        items: &'a [T],
        addr: impl Fn(&T) -> SocketAddr,
    ) -> Option<&'a T> {
        let loads = self.loads.lock().expect("poisoned");
        let now = Instant::now();
        let ejected = |t: &T| loads.get(&addr(t)).is_some_and(|l| l.ejected(now));
        let cost = |t: &&T| {
            loads
                .get(&addr(t))
                .copied()
                .unwrap_or(Load::new(now))
                .cost()
        };
        if !items.iter().any(ejected) {
            return p2c(items, |t| cost(&t));
        }
        let eligible: Vec<&T> = items.iter().filter(|t| !ejected(t)).collect();
        p2c(&eligible, cost).copied()
    }

    /// Counts a request to `addr` as in flight, its outcome accrued by `accrual`.
    pub(crate) fn start(&self, addr: SocketAddr, accrual: Option<&Accrual>) -> Pending {
        let now = Instant::now();
        let mut loads = self.loads.lock().expect("poisoned");
        if loads.len() >= REMEMBERED && !loads.contains_key(&addr) {
            loads.retain(|_, l| l.pending > 0);
        }
        loads.entry(addr).or_insert_with(|| Load::new(now)).pending += 1;
        Pending {
            loads: self.clone(),
            addr,
            started: now,
            accrual: accrual.cloned(),
        }
    }

    #[cfg(test)]
    fn observe(&self, addr: SocketAddr, rtt: Duration, at: Instant) {
        self.loads
            .lock()
            .unwrap()
            .entry(addr)
            .or_insert_with(|| Load::new(at))
            .observe(rtt, at);
    }

    #[cfg(test)]
    fn rtt(&self, addr: SocketAddr) -> Duration {
        Duration::from_nanos(self.loads.lock().unwrap()[&addr].rtt as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 80))
    }

    #[test]
    fn a_slow_response_counts_at_once_and_is_forgotten_over_the_decay() {
        let loads = Loads::default();
        let t0 = Instant::now();
        loads.observe(addr(1), Duration::from_millis(1), t0);
        loads.observe(addr(1), Duration::from_millis(500), t0);
        assert_eq!(loads.rtt(addr(1)), Duration::from_millis(500), "the peak");
        // One decay period of fast responses later, most of it is gone.
        loads.observe(addr(1), Duration::from_millis(1), t0 + DECAY);
        let rtt = loads.rtt(addr(1));
        assert!(
            rtt < Duration::from_millis(200) && rtt > Duration::from_millis(100),
            "{rtt:?}"
        );
    }

    #[test]
    fn the_slower_or_busier_endpoint_gets_fewer_requests() {
        let loads = Loads::default();
        let now = Instant::now();
        loads.observe(addr(1), Duration::from_millis(2), now);
        loads.observe(addr(2), Duration::from_millis(40), now);
        let eps = [addr(1), addr(2)];
        let fast = (0..1000)
            .filter(|_| *loads.pick(&eps, |a| *a).unwrap() == addr(1))
            .count();
        assert_eq!(fast, 1000, "of two, P2C always compares both");

        // Requests in flight weigh too: 30 on the fast one outweigh its speed.
        let held: Vec<_> = (0..30).map(|_| loads.start(addr(1), None)).collect();
        assert_eq!(*loads.pick(&eps, |a| *a).unwrap(), addr(2));
        drop(held);
        assert_eq!(*loads.pick(&eps, |a| *a).unwrap(), addr(1));
    }

    #[test]
    fn an_endpoint_that_failed_is_avoided() {
        let loads = Loads::default();
        loads.start(addr(4), None).failed();
        loads.start(addr(5), None).done(false);
        let eps = [addr(4), addr(5)];
        assert_eq!(*loads.pick(&eps, |a| *a).unwrap(), addr(5));
        assert_eq!(loads.rtt(addr(4)), FAILURE_PENALTY);
    }

    #[test]
    fn consecutive_failures_eject_an_endpoint_and_a_failure_once_back_doubles_it() {
        let loads = Loads::default();
        let accrual = Accrual {
            max_failures: 3,
            min_penalty: Duration::from_secs(1),
            max_penalty: Duration::from_secs(3),
        };
        let a = Some(&accrual);
        let eps = [addr(6), addr(7)];
        let bad = || loads.start(addr(6), a).done(true);
        bad();
        bad();
        loads.start(addr(6), a).done(false);
        bad();
        bad();
        let ejected = |l: &Loads| l.loads.lock().unwrap()[&addr(6)].ejected(Instant::now());
        assert!(!ejected(&loads), "two failures since the success");
        bad();
        assert!(ejected(&loads), "three in a row");
        for _ in 0..100 {
            assert_eq!(*loads.pick(&eps, |a| *a).unwrap(), addr(7));
        }
        // Every endpoint ejected: none to pick.
        assert_eq!(loads.pick(&[addr(6)], |a| *a), None);
        // Back after the penalty, one failure ejects it for twice as long, up to the
        // maximum; one success restores it.
        let until = |l: &Loads| {
            let l = l.loads.lock().unwrap()[&addr(6)];
            (l.penalty, l.ejected_until.is_some())
        };
        loads
            .loads
            .lock()
            .unwrap()
            .get_mut(&addr(6))
            .unwrap()
            .ejected_until = None;
        bad();
        assert_eq!(until(&loads), (Duration::from_secs(2), true));
        bad();
        assert_eq!(until(&loads).0, Duration::from_secs(3), "the maximum");
        loads.start(addr(6), a).done(false);
        assert_eq!(until(&loads).0, Duration::ZERO);
        // Without accrual, failures never eject.
        let plain = Loads::default();
        for _ in 0..10 {
            plain.start(addr(8), None).done(true);
        }
        assert_eq!(plain.pick(&[addr(8)], |a| *a), Some(&addr(8)));
    }

    #[test]
    fn a_finished_request_is_measured_and_no_longer_pending() {
        let loads = Loads::default();
        let p = loads.start(addr(3), None);
        std::thread::sleep(Duration::from_millis(2));
        p.done(false);
        let l = loads.loads.lock().unwrap()[&addr(3)];
        assert_eq!(l.pending, 0);
        // Faster than the default, so the estimate moved down toward it, a little.
        assert!(l.rtt < DEFAULT_RTT.as_nanos() as f64);
    }
}
