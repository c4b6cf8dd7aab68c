//! Passive health of one endpoint, shared by all its models: consecutive failures eject it for
//! a cooldown that doubles on each ejection in a row (up to a cap); when the cooldown ends, one
//! trial request is let through and its outcome decides. An upstream's `429 Retry-After` holds
//! the endpoint until the time it named without counting as a failure. Discovery polls act as
//! free active probes: a good poll brings an ejected endpoint back, a dead one ejects it.
//!
//! The request path only reads an atomic (`admits`); the mutex is taken on state changes
//! (a failure, the end of a cooldown, the first success after failures), never across an await.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Thresholds and cooldowns, from the `health:` config section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Consecutive failures that eject an endpoint (a single error never does unless this is 1).
    pub failure_threshold: u32,
    /// The first ejection's cooldown; each ejection in a row doubles it.
    pub ejection: Duration,
    /// The cap on a cooldown.
    pub max_ejection: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            failure_threshold: 3,
            ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(300),
        }
    }
}

/// Why an endpoint is out of service, for `/v1/endpoints` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Healthy,
    /// Ejected after failures (or a failed probe) until the cooldown ends.
    Ejected,
    /// Held back by the upstream's own `Retry-After`.
    RateLimited,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Ejected => "ejected",
            Status::RateLimited => "rate_limited",
        }
    }
}

#[derive(Debug, Default)]
struct State {
    /// Ejections in a row without a success in between: the cooldown's exponent.
    ejections: u32,
    /// A trial request is out: its failure ejects again at once.
    trial: bool,
    /// The hold is a `Retry-After`, not an ejection.
    rate_limited: bool,
}

/// The health of one endpoint.
#[derive(Debug)]
pub struct Health {
    policy: HealthPolicy,
    /// Milliseconds on the process clock (see `now_ms`) before which no new request goes to the
    /// endpoint; 0 when it is in service.
    blocked_until: AtomicU64,
    failures: AtomicU32,
    state: Mutex<State>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(HealthPolicy::default())
    }
}

impl Health {
    pub fn new(policy: HealthPolicy) -> Self {
        Health {
            policy,
            blocked_until: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            state: Mutex::new(State::default()),
        }
    }

    pub fn policy(&self) -> HealthPolicy {
        self.policy
    }

    /// Whether a new request may go to the endpoint now. When a cooldown has just ended, the
    /// first caller gets `true` (the trial) and the others keep getting `false` until the
    /// trial reports, or until one more cooldown passes without a verdict.
    pub fn admits(&self) -> bool {
        let until = self.blocked_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = now_ms();
        if now < until {
            return false;
        }
        let mut st = self.lock();
        let until = self.blocked_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        if now < until {
            return false;
        }
        st.trial = true;
        let window = self.cooldown(st.ejections.max(1));
        self.blocked_until
            .store(now + millis(window).max(1), Ordering::Release);
        true
    }

    /// Whether `admits` could say yes now, without claiming a trial.
    pub fn may_admit(&self) -> bool {
        let until = self.blocked_until.load(Ordering::Acquire);
        until == 0 || now_ms() >= until
    }

    /// The endpoint answered (any status it is not blamed for).
    pub fn record_success(&self) -> Option<Status> {
        if self.failures.load(Ordering::Relaxed) == 0
            && self.blocked_until.load(Ordering::Relaxed) == 0
        {
            return None;
        }
        let mut st = self.lock();
        let was = self.status_locked(&st);
        self.failures.store(0, Ordering::Relaxed);
        self.blocked_until.store(0, Ordering::Release);
        *st = State::default();
        (was != Status::Healthy).then_some(was)
    }

    /// A discovery poll (the free active probe) succeeded. An ejected endpoint's cooldown ends
    /// now, so the next request is its trial: an endpoint that came back is in service within
    /// one probe interval, while one whose model list answers but whose completions fail gets
    /// one trial request per interval, not a full share of traffic. A `Retry-After` hold stands.
    pub fn probe_succeeded(&self) {
        if self.blocked_until.load(Ordering::Acquire) == 0 {
            return;
        }
        let st = self.lock();
        if !st.rate_limited && !st.trial {
            self.blocked_until.store(now_ms(), Ordering::Release);
        }
    }

    /// A connect failure, 5xx, timeout or reset. Returns the cooldown when this ejected it.
    pub fn record_failure(&self) -> Option<Duration> {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let on_trial = || self.blocked_until.load(Ordering::Acquire) != 0 && self.lock().trial;
        if failures < self.policy.failure_threshold && !on_trial() {
            return None;
        }
        self.eject()
    }

    /// Take the endpoint out now (a failed probe: it is down, not merely slow). Returns the
    /// cooldown, or `None` when it was already out.
    pub fn eject(&self) -> Option<Duration> {
        let mut st = self.lock();
        let now = now_ms();
        let until = self.blocked_until.load(Ordering::Acquire);
        let in_cooldown = until != 0 && now < until && !st.trial && !st.rate_limited;
        if in_cooldown {
            return None;
        }
        st.ejections = st.ejections.saturating_add(1);
        st.trial = false;
        st.rate_limited = false;
        let cooldown = self.cooldown(st.ejections);
        self.blocked_until
            .store(now + millis(cooldown).max(1), Ordering::Release);
        Some(cooldown)
    }

    /// The upstream asked for no traffic for `wait` (`429` with `Retry-After`), capped at the
    /// longest cooldown. Never shortens an ejection already in force.
    pub fn hold_for(&self, wait: Duration) {
        let wait = wait.min(self.policy.max_ejection);
        let mut st = self.lock();
        let until = now_ms() + millis(wait).max(1);
        if self.blocked_until.load(Ordering::Acquire) < until {
            self.blocked_until.store(until, Ordering::Release);
            st.rate_limited = true;
            st.trial = false;
        }
    }

    pub fn status(&self) -> Status {
        if self.blocked_until.load(Ordering::Acquire) == 0 {
            return Status::Healthy;
        }
        self.status_locked(&self.lock())
    }

    /// How long until the endpoint takes requests again (zero when it does now).
    pub fn retry_in(&self) -> Duration {
        let until = self.blocked_until.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(now_ms()))
    }

    fn status_locked(&self, st: &State) -> Status {
        match self.blocked_until.load(Ordering::Acquire) {
            0 => Status::Healthy,
            _ if st.rate_limited => Status::RateLimited,
            _ => Status::Ejected,
        }
    }

    fn cooldown(&self, ejections: u32) -> Duration {
        let doublings = ejections.saturating_sub(1).min(20);
        self.policy
            .ejection
            .saturating_mul(1 << doublings)
            .min(self.policy.max_ejection)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Milliseconds since the first call in this process: a monotonic clock that fits an atomic.
/// Starts at 1 so that 0 can mean "not blocked".
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    millis(start.elapsed()) + 1
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(threshold: u32, ms: u64, max_ms: u64) -> HealthPolicy {
        HealthPolicy {
            failure_threshold: threshold,
            ejection: Duration::from_millis(ms),
            max_ejection: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn a_single_error_never_ejects() {
        let h = Health::new(policy(3, 1000, 10_000));
        assert_eq!(h.record_failure(), None);
        assert_eq!(h.record_failure(), None);
        assert!(h.admits());
        assert_eq!(h.record_success(), None, "not ejected, nothing to report");
        assert_eq!(h.record_failure(), None, "a success resets the count");
        assert!(h.admits());
    }

    #[test]
    fn consecutive_failures_eject_until_the_cooldown_ends() {
        let h = Health::new(policy(2, 1000, 10_000));
        h.record_failure();
        assert_eq!(h.record_failure(), Some(Duration::from_secs(1)));
        assert!(!h.admits());
        assert_eq!(h.status(), Status::Ejected);
        assert_eq!(h.record_failure(), None, "already out: no second ejection");
    }

    #[test]
    fn one_trial_after_the_cooldown_decides() {
        let h = Health::new(policy(1, 30, 10_000));
        assert!(h.record_failure().is_some());
        assert!(!h.admits());
        std::thread::sleep(Duration::from_millis(40));
        assert!(h.admits(), "the trial");
        assert!(!h.admits(), "only one trial at a time");
        assert_eq!(h.record_success(), Some(Status::Ejected));
        assert!(h.admits());
        assert_eq!(h.status(), Status::Healthy);
    }

    #[test]
    fn a_failed_trial_doubles_the_cooldown_up_to_the_cap() {
        let h = Health::new(policy(1, 20, 50));
        assert_eq!(h.record_failure(), Some(Duration::from_millis(20)));
        std::thread::sleep(Duration::from_millis(25));
        assert!(h.admits());
        assert_eq!(h.record_failure(), Some(Duration::from_millis(40)));
        std::thread::sleep(Duration::from_millis(45));
        assert!(h.admits());
        assert_eq!(
            h.record_failure(),
            Some(Duration::from_millis(50)),
            "capped"
        );
        std::thread::sleep(Duration::from_millis(55));
        assert!(h.admits());
        h.record_success();
        assert_eq!(h.record_failure(), Some(Duration::from_millis(20)), "reset");
    }

    #[test]
    fn retry_after_holds_without_counting_a_failure() {
        let h = Health::new(policy(1, 1000, 10_000));
        h.hold_for(Duration::from_millis(30));
        assert!(!h.admits());
        assert_eq!(h.status(), Status::RateLimited);
        assert!(h.retry_in() <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(35));
        assert!(h.admits());
        assert_eq!(h.record_success(), Some(Status::RateLimited));
        assert_eq!(h.status(), Status::Healthy);
    }

    #[test]
    fn retry_after_never_shortens_an_ejection() {
        let h = Health::new(policy(1, 10_000, 10_000));
        h.record_failure();
        h.hold_for(Duration::from_millis(1));
        assert_eq!(h.status(), Status::Ejected);
        assert!(h.retry_in() > Duration::from_secs(5));
    }

    #[test]
    fn a_failed_probe_ejects_at_once_and_a_good_one_lets_a_trial_through() {
        let h = Health::new(policy(3, 10_000, 60_000));
        assert!(h.eject().is_some());
        assert!(!h.admits());
        assert_eq!(h.eject(), None, "already out");
        h.probe_succeeded();
        assert!(h.admits(), "the trial");
        assert!(!h.admits());
        assert!(h.record_failure().is_some(), "a failed trial ejects again");
        assert!(
            h.retry_in() > Duration::from_secs(15),
            "with a doubled cooldown"
        );
        h.probe_succeeded();
        assert!(h.admits());
        h.record_success();
        assert_eq!(h.status(), Status::Healthy);
    }

    #[test]
    fn a_good_probe_does_not_lift_a_retry_after_hold() {
        let h = Health::new(policy(3, 1000, 10_000));
        h.hold_for(Duration::from_secs(5));
        h.probe_succeeded();
        assert!(!h.admits());
    }
}
