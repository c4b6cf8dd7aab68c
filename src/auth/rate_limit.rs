//! A per-key request rate limit: GCRA (the generic cell rate algorithm), the token bucket kept
//! as a single timestamp. `requests_per_minute` is both the rate and the burst: a key that was
//! idle for a minute may send that many requests at once, then one per `60 / rpm` seconds.
//!
//! The whole state is one "theoretical arrival time" updated by compare-and-swap, lock-free
//! and local to the process. The same state fits a shared store for several replicas (one
//! atomic compare-and-set per request, e.g. in Redis) without changing the algorithm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One key's limit and state.
#[derive(Debug)]
pub struct RateLimit {
    pub requests_per_minute: u32,
    /// Nanoseconds between two requests at the steady rate.
    interval: u64,
    /// How far ahead of now the arrival time may run: the burst, less one request.
    tolerance: u64,
    /// When the bucket would be full again, in nanoseconds on the process clock.
    arrival: AtomicU64,
}

impl RateLimit {
    pub fn per_minute(requests_per_minute: u32) -> Self {
        let rpm = u64::from(requests_per_minute.max(1));
        let interval = 60_000_000_000 / rpm;
        RateLimit {
            requests_per_minute: requests_per_minute.max(1),
            interval,
            tolerance: interval * (rpm - 1),
            arrival: AtomicU64::new(0),
        }
    }

    /// Take one request now, or say how long until one is allowed.
    pub fn admit(&self) -> Result<(), Duration> {
        self.admit_at(now_ns())
    }

    fn admit_at(&self, now: u64) -> Result<(), Duration> {
        let mut arrival = self.arrival.load(Ordering::Relaxed);
        // Bounded: each failed exchange means another request was admitted meanwhile.
        loop {
            let start = arrival.max(now);
            if start - now > self.tolerance {
                return Err(Duration::from_nanos(start - now - self.tolerance));
            }
            match self.arrival.compare_exchange_weak(
                arrival,
                start + self.interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(()),
                Err(seen) => arrival = seen,
            }
        }
    }
}

/// Nanoseconds on a monotonic process clock. A new key's arrival time (0) is in the past: it
/// starts with a full burst.
fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX / 4) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_burst_of_a_minute_then_the_steady_rate() {
        let l = RateLimit::per_minute(60);
        let t0 = 100 * SEC;
        let admitted = (0..100).filter(|_| l.admit_at(t0).is_ok()).count();
        assert_eq!(admitted, 60);
        let wait = l.admit_at(t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // Half a second later: still half a second to wait.
        assert_eq!(
            l.admit_at(t0 + SEC / 2).unwrap_err(),
            Duration::from_millis(500)
        );
        // One second later, one request; a minute later, a whole burst again.
        assert!(l.admit_at(t0 + SEC).is_ok());
        assert!(l.admit_at(t0 + SEC).is_err());
        let later = t0 + 61 * SEC;
        assert_eq!((0..100).filter(|_| l.admit_at(later).is_ok()).count(), 60);
    }

    #[test]
    fn the_steady_rate_is_never_refused() {
        let l = RateLimit::per_minute(600);
        for i in 0..10_000 {
            assert!(l.admit_at(SEC + i * SEC / 10).is_ok(), "request {i}");
        }
    }

    #[test]
    fn the_process_clock_starts_full() {
        let l = RateLimit::per_minute(2);
        assert!(l.admit().is_ok());
        assert!(l.admit().is_ok());
        let wait = l.admit().unwrap_err();
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }
}
