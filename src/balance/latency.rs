//! `latency`: the power of two choices on each endpoint's time to first byte for this model,
//! as an exponentially weighted moving average, times its requests in flight plus one (the
//! wait a new request can expect there; "peak EWMA"). Without the load factor, the endpoint
//! that measured fastest would take every request until its answers slowed down.
//!
//! An endpoint not measured yet counts as fast as the fastest measured one, so a new endpoint
//! gets requests at once, but not all of them while its first answers are still on the way.
//! An average decays towards 0 while it is not refreshed (halving every `HALF_LIFE`), so an
//! endpoint that was slow, and then got no traffic, is tried again after a while instead of
//! being judged by its past forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::least_outstanding::cheaper_of_two;
use super::Policy;
use crate::deployment::Deployment;

/// Weight of a new measurement in the average.
const ALPHA: f64 = 0.3;
/// A measurement's weight halves every this long without a new one.
const HALF_LIFE: Duration = Duration::from_secs(10);

pub struct Latency {
    /// Per member: the average in nanoseconds (as `f64` bits; 0 until measured).
    average: Vec<AtomicU64>,
    /// Per member: when the average was last updated, in nanoseconds since `epoch`.
    updated: Vec<AtomicU64>,
    epoch: Instant,
}

impl Latency {
    pub fn new(members: usize) -> Latency {
        Latency {
            average: (0..members).map(|_| AtomicU64::new(0)).collect(),
            updated: (0..members).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
        }
    }

    /// The member's average time to first byte as of `now`, decayed for its age (nanoseconds).
    fn score(&self, member: usize, now: Instant) -> f64 {
        let average = f64::from_bits(self.average[member].load(Ordering::Relaxed));
        let updated = Duration::from_nanos(self.updated[member].load(Ordering::Relaxed));
        let age = now.saturating_duration_since(self.epoch + updated);
        average * 0.5f64.powf(age.as_secs_f64() / HALF_LIFE.as_secs_f64())
    }

    fn measured(&self, member: usize) -> bool {
        self.average[member].load(Ordering::Relaxed) != 0
    }

    /// The wait a request sent to `member` can expect: its average (or the fastest measured
    /// one's, before its own first measurement) times its requests in flight plus one.
    fn expected(&self, member: usize, in_flight: usize, now: Instant) -> f64 {
        let average = if self.measured(member) {
            self.score(member, now)
        } else {
            (0..self.average.len())
                .filter(|&m| self.measured(m))
                .map(|m| self.score(m, now))
                .fold(f64::INFINITY, f64::min)
        };
        let average = if average.is_finite() { average } else { 0.0 };
        average * (in_flight + 1) as f64
    }

    fn pick_at(
        &self,
        n: usize,
        usable: &dyn Fn(usize) -> bool,
        in_flight: &dyn Fn(usize) -> usize,
        now: Instant,
    ) -> Option<usize> {
        cheaper_of_two(n, usable, |m| self.expected(m, in_flight(m), now))
    }

    fn observe_at(&self, member: usize, ttfb: Duration, now: Instant) {
        let Some(slot) = self.average.get(member) else {
            return;
        };
        let sample = ttfb.as_nanos() as f64;
        // Decayed first, so a long-unmeasured endpoint's old average weighs less.
        let previous = self.score(member, now);
        let next = if previous == 0.0 {
            sample
        } else {
            ALPHA * sample + (1.0 - ALPHA) * previous
        };
        // Racing updates may lose one measurement: this is an estimate.
        slot.store(next.to_bits(), Ordering::Relaxed);
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        self.updated[member].store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

impl Policy for Latency {
    fn pick(
        &self,
        members: &[Deployment],
        _affinity: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let in_flight = |m: usize| members[m].in_flight();
        let n = members.len().min(self.average.len());
        self.pick_at(n, usable, &in_flight, Instant::now())
    }

    fn observe(&self, member: usize, ttfb: Duration) {
        self.observe_at(member, ttfb, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(p: &Latency, now: Instant, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for _ in 0..1000 {
            c[p.pick_at(n, &|_| true, &|_| 0, now).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn the_faster_of_two_wins_and_unmeasured_ones_count_as_the_fastest() {
        let p = Latency::new(3);
        let now = Instant::now();
        p.observe_at(0, Duration::from_millis(50), now);
        p.observe_at(1, Duration::from_millis(500), now);
        let c = shares(&p, now, 3);
        // Member 2 is unmeasured: it ties with 0 (random) and beats 1.
        assert!(c[0] > 400 && c[2] > 400 && c[1] == 0, "{c:?}");
        p.observe_at(2, Duration::from_millis(200), now);
        let c = shares(&p, now, 3);
        // 0 wins both its pairs, 2 beats 1, 1 never wins.
        assert!(c[0] > 550 && c[1] == 0 && c[2] > 250, "{c:?}");
    }

    #[test]
    fn load_counts_against_a_fast_endpoint() {
        let p = Latency::new(2);
        let now = Instant::now();
        p.observe_at(0, Duration::from_millis(20), now);
        p.observe_at(1, Duration::from_millis(50), now);
        // 20 ms x (4 + 1) in flight against 50 ms x (0 + 1): the slower, idle one wins.
        let busy = |m: usize| if m == 0 { 4 } else { 0 };
        for _ in 0..20 {
            assert_eq!(p.pick_at(2, &|_| true, &busy, now), Some(1));
        }
    }

    #[test]
    fn the_average_moves_with_new_measurements() {
        let p = Latency::new(1);
        let now = Instant::now();
        p.observe_at(0, Duration::from_millis(100), now);
        p.observe_at(0, Duration::from_millis(200), now);
        // 0.3 x 200 ms + 0.7 x 100 ms.
        assert!((p.score(0, now) - 130e6).abs() < 1.0, "{}", p.score(0, now));
    }

    #[test]
    fn a_slow_endpoint_gets_traffic_again_once_its_average_has_decayed() {
        let p = Latency::new(2);
        let start = Instant::now();
        p.observe_at(0, Duration::from_millis(40), start);
        p.observe_at(1, Duration::from_millis(400), start);
        assert_eq!(shares(&p, start, 2)[1], 0);
        // The fast one keeps being measured; the slow one is not, and decays: after four
        // half-lives, 400 ms counts as 25 ms, under the fast one's 40 ms.
        let later = start + HALF_LIFE * 4;
        for _ in 0..10 {
            p.observe_at(0, Duration::from_millis(40), later);
        }
        assert_eq!(shares(&p, later, 2)[1], 1000);
    }
}
