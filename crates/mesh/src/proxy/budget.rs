//! The retry budget, as Linkerd's: over the last 10 s, retries may add at most 20% to
//! the requests, plus 10 a second, so that retrying never multiplies an overload.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(10);
const RATIO: f64 = 0.2;
const MIN_PER_SECOND: f64 = 10.0;

/// Requests and retries of the current and the previous window.
pub(super) struct RetryBudget(Mutex<Windows>);

struct Windows {
    started: Instant,
    requests: [u64; 2],
    retries: [u64; 2],
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget(Mutex::new(Windows {
            started: Instant::now(),
            requests: [0; 2],
            retries: [0; 2],
        }))
    }
}

impl RetryBudget {
    /// Counts a request that may be retried.
    pub(super) fn request(&self) {
        self.at(Instant::now()).requests[0] += 1;
    }

    /// Whether a retry fits the budget now; counted if it does.
    pub(super) fn retry(&self) -> bool {
        self.retry_at(Instant::now())
    }

    fn retry_at(&self, now: Instant) -> bool {
        let mut w = self.at(now);
        let requests = (w.requests[0] + w.requests[1]) as f64;
        let retries = (w.retries[0] + w.retries[1]) as f64;
        let fits = retries < RATIO * requests + MIN_PER_SECOND * WINDOW.as_secs_f64();
        if fits {
            w.retries[0] += 1;
        }
        fits
    }

    /// The windows as of `now`, moved on if a window has passed.
    fn at(&self, now: Instant) -> std::sync::MutexGuard<'_, Windows> {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(w.started);
        if elapsed >= WINDOW {
            let keep = elapsed < 2 * WINDOW;
            w.requests = [0, if keep { w.requests[0] } else { 0 }];
            w.retries = [0, if keep { w.retries[0] } else { 0 }];
            w.started = now;
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_held_to_a_fifth_of_the_requests_plus_ten_a_second() {
        let b = RetryBudget::default();
        let now = Instant::now();
        for _ in 0..500 {
            b.request();
        }
        // 20% of 500, plus 10/s over the 10 s window.
        let allowed = (0..1000).take_while(|_| b.retry_at(now)).count();
        assert_eq!(allowed, 200);
        // A window later the last one still counts; two later, nothing does.
        assert!(!b.retry_at(now + WINDOW));
        let later = now + 3 * WINDOW;
        assert_eq!((0..1000).take_while(|_| b.retry_at(later)).count(), 100);
    }
}
