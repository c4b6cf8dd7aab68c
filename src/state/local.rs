//! Limits kept in this process alone: each key's counts of the last 60 s, its requests in
//! flight and its budget's period. The model of what the Redis scripts do for every replica
//! at once, with the same windows and the same order of checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::clock::period_at;
use super::limits::{Exceeded, KeyLimits, Refusal, Remaining, Usage};

/// How long a client refused for `max_concurrent` is told to wait: slots free up as requests
/// end, which nothing predicts.
pub const CONCURRENT_RETRY: Duration = Duration::from_secs(1);

/// One key's state in this process (kept across reloads, see `Auth::keep_limits_of`).
#[derive(Debug, Default)]
pub struct KeyState {
    counts: Mutex<Counts>,
    in_flight: AtomicU64,
}

#[derive(Debug, Default)]
struct Counts {
    requests: Window,
    tokens: Window,
    /// The budget period `budget_used` is of (0: none yet).
    budget_period: u64,
    budget_used: u64,
}

/// Counts per second over the last 60 s: a ring of one slot per second, each slot tagged with
/// the second it counts, so a slot of a minute ago reads as empty.
#[derive(Debug)]
struct Window {
    slots: [(u64, u64); 60],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: [(0, 0); 60],
        }
    }
}

impl Window {
    fn add(&mut self, sec: u64, n: u64) {
        let slot = &mut self.slots[(sec % 60) as usize];
        if slot.0 != sec {
            *slot = (sec, 0);
        }
        slot.1 += n;
    }

    /// The counts of the seconds `sec - 59 ..= sec`.
    fn sum(&self, sec: u64) -> u64 {
        self.slots
            .iter()
            .filter(|(s, _)| *s <= sec && *s + 60 > sec)
            .map(|(_, n)| n)
            .sum()
    }

    /// How long until the window's sum is under `limit`, as its oldest seconds leave it.
    fn wait_under(&self, limit: u64, now_ms: u64) -> Duration {
        let sec = now_ms / 1000;
        let mut left = self.sum(sec);
        for s in sec.saturating_sub(59)..=sec {
            let (tag, n) = self.slots[(s % 60) as usize];
            if tag != s {
                continue;
            }
            left -= n;
            if left < limit {
                return Duration::from_millis(((s + 60) * 1000).saturating_sub(now_ms));
            }
        }
        Duration::ZERO
    }
}

/// The checks of one admission, in the order the client is told about them: the budget
/// (`insufficient_quota`), then tokens, requests and concurrency (`rate_limit_exceeded`).
pub fn admit(key: &KeyState, limits: &KeyLimits, now_ms: u64) -> Result<Remaining, Refusal> {
    let sec = now_ms / 1000;
    let mut c = key.counts.lock().unwrap_or_else(|e| e.into_inner());
    let requests = c.requests.sum(sec);
    let tokens = c.tokens.sum(sec);
    let mut remaining = Remaining {
        requests: limits
            .requests_per_minute
            .map(|r| u64::from(r).saturating_sub(requests)),
        tokens: limits.tokens_per_minute.map(|t| t.saturating_sub(tokens)),
    };
    let refuse = |exceeded, retry_after| Refusal {
        exceeded,
        retry_after,
        remaining,
    };
    if let Some(b) = limits.budget {
        let (period, end) = period_at(b.period, now_ms);
        if c.budget_period >= period && c.budget_used >= b.tokens {
            let wait = Duration::from_millis(end.saturating_sub(now_ms));
            return Err(refuse(Exceeded::Budget, wait));
        }
    }
    if let Some(tpm) = limits.tokens_per_minute.filter(|&t| tokens >= t) {
        return Err(refuse(Exceeded::Tokens, c.tokens.wait_under(tpm, now_ms)));
    }
    if let Some(rpm) = limits.requests_per_minute.map(u64::from) {
        if requests >= rpm {
            return Err(refuse(
                Exceeded::Requests,
                c.requests.wait_under(rpm, now_ms),
            ));
        }
    }
    if let Some(max) = limits.max_concurrent.map(u64::from) {
        let taken = key
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(refuse(Exceeded::Concurrent, CONCURRENT_RETRY));
        }
    }
    c.requests.add(sec, 1);
    remaining.requests = remaining.requests.map(|r| r.saturating_sub(1));
    Ok(remaining)
}

/// A request admitted elsewhere (by the shared state), counted here too: this process's own
/// share, which the local limits start from if the shared state goes away.
pub fn count_request(key: &KeyState, now_ms: u64) {
    let mut c = key.counts.lock().unwrap_or_else(|e| e.into_inner());
    c.requests.add(now_ms / 1000, 1);
}

/// A request's end: its tokens charged to the minute and the budget; its slot freed when it
/// held one here (`release`).
pub fn finish(key: &KeyState, limits: &KeyLimits, tokens: u64, release: bool, now_ms: u64) {
    if release {
        // Never below 0: a slot is released once, by the request that took it.
        let _ = key
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
    if tokens == 0 {
        return;
    }
    let mut c = key.counts.lock().unwrap_or_else(|e| e.into_inner());
    c.tokens.add(now_ms / 1000, tokens);
    if let Some(b) = limits.budget {
        let (period, _) = period_at(b.period, now_ms);
        if c.budget_period < period {
            c.budget_period = period;
            c.budget_used = 0;
        }
        c.budget_used += tokens;
    }
}

/// The key's counts now.
pub fn usage(key: &KeyState, limits: &KeyLimits, now_ms: u64) -> Usage {
    let sec = now_ms / 1000;
    let c = key.counts.lock().unwrap_or_else(|e| e.into_inner());
    let budget_used = limits.budget.map_or(0, |b| {
        let (period, _) = period_at(b.period, now_ms);
        if c.budget_period >= period {
            c.budget_used
        } else {
            0
        }
    });
    Usage {
        requests_this_minute: c.requests.sum(sec),
        tokens_this_minute: c.tokens.sum(sec),
        in_flight: key.in_flight.load(Ordering::Acquire),
        budget_used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::limits::{Budget, Period};

    const T: u64 = 1_796_409_000_000;

    fn limits(rpm: Option<u32>, tpm: Option<u64>, conc: Option<u32>) -> KeyLimits {
        KeyLimits {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            max_concurrent: conc,
            budget: None,
        }
    }

    #[test]
    fn at_most_the_limit_in_any_minute() {
        let k = KeyState::default();
        let l = limits(Some(60), None, None);
        // 300 requests over 10 s: the first 60 pass, the rest wait for the first second to
        // leave the window (60 s after it).
        let admitted = (0..300)
            .filter(|i| admit(&k, &l, T + i * 33).is_ok())
            .count();
        assert_eq!(admitted, 60);
        let r = admit(&k, &l, T + 10_000).unwrap_err();
        assert_eq!(r.exceeded, Exceeded::Requests);
        assert_eq!(r.retry_after, Duration::from_secs(50));
        assert_eq!(r.remaining.requests, Some(0));
        // The first second's 31 requests leave the window at T + 60 s.
        let passed = (0..40)
            .filter(|_| admit(&k, &l, T + 60_000).is_ok())
            .count();
        assert_eq!(passed, 31);
    }

    #[test]
    fn remaining_counts_down() {
        let k = KeyState::default();
        let l = limits(Some(3), Some(100), None);
        assert_eq!(
            admit(&k, &l, T),
            Ok(Remaining {
                requests: Some(2),
                tokens: Some(100)
            })
        );
        finish(&k, &l, 40, false, T);
        assert_eq!(admit(&k, &l, T).unwrap().tokens, Some(60));
    }

    #[test]
    fn tokens_admit_under_the_limit_then_wait_for_the_minute() {
        let k = KeyState::default();
        let l = limits(None, Some(1000), None);
        let mut admitted = 0;
        for i in 0..20 {
            let now = T + i * 1000;
            if admit(&k, &l, now).is_ok() {
                admitted += 1;
                finish(&k, &l, 100, false, now);
            }
        }
        assert_eq!(admitted, 10);
        let r = admit(&k, &l, T + 20_000).unwrap_err();
        assert_eq!(
            (r.exceeded, r.remaining.tokens),
            (Exceeded::Tokens, Some(0))
        );
        // Under the limit again once the first request's second has left the window.
        assert_eq!(r.retry_after, Duration::from_secs(40));
        assert!(admit(&k, &l, T + 60_000).is_ok());
    }

    #[test]
    fn slots_are_taken_and_released() {
        let k = KeyState::default();
        let l = limits(None, None, Some(2));
        assert!(admit(&k, &l, T).is_ok() && admit(&k, &l, T).is_ok());
        let r = admit(&k, &l, T).unwrap_err();
        assert_eq!(
            (r.exceeded, r.retry_after),
            (Exceeded::Concurrent, CONCURRENT_RETRY)
        );
        finish(&k, &l, 0, true, T);
        assert!(admit(&k, &l, T).is_ok());
        assert_eq!(usage(&k, &l, T).in_flight, 2);
        for _ in 0..5 {
            finish(&k, &l, 0, true, T);
        }
        assert_eq!(usage(&k, &l, T).in_flight, 0, "never below zero");
    }

    #[test]
    fn a_budget_stops_the_key_until_its_period_ends() {
        let k = KeyState::default();
        let l = KeyLimits {
            budget: Some(Budget {
                tokens: 250,
                period: Period::Day,
            }),
            ..KeyLimits::default()
        };
        for _ in 0..3 {
            assert!(admit(&k, &l, T).is_ok());
            finish(&k, &l, 100, false, T);
        }
        let r = admit(&k, &l, T).unwrap_err();
        assert_eq!(r.exceeded, Exceeded::Budget);
        // 18:30 UTC: five and a half hours to midnight.
        assert_eq!(r.retry_after, Duration::from_secs(5 * 3600 + 1800));
        assert_eq!(usage(&k, &l, T).budget_used, 300);
        let tomorrow = T + 6 * 3600 * 1000;
        assert_eq!(usage(&k, &l, tomorrow).budget_used, 0);
        assert!(admit(&k, &l, tomorrow).is_ok());
    }
}
