//! Client-key limits (`requests_per_minute`, `tokens_per_minute`, `max_concurrent`, `budget`)
//! and the state they count: per process (local.rs), or shared by every replica in Redis
//! (redis.rs, with `state:`), the same windows and checks in both.
//!
//! A request of a limited key is admitted once, before it goes upstream: one round trip to
//! Redis at most (shared by the requests queued meanwhile, see redis.rs). What it holds (a
//! `max_concurrent` slot, the tokens to charge) is a [`Hold`] that its context keeps; dropping
//! the hold, however the request ends, releases the slot and charges the tokens. While Redis cannot be reached, `on_error` decides: the local limits take over
//! (`allow`) or limited keys get 503 (`deny`); a probe each second brings the shared limits
//! back when Redis answers again. One log line for each switch, every failure counted.

pub mod clock;
pub mod config;
pub mod limits;
mod local;
mod redis;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

pub use config::{OnError, StateConfig, StateSettings};
pub use limits::{Budget, Exceeded, KeyLimits, Period, Refusal, Remaining, Usage};
use redis::{RedisStore, StoreError};

/// How often Redis is asked whether it is back, while it is not.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// What a client refused because the shared state is down is told to wait.
const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);

/// A client key with limits: its name (the Redis keys' and `/v1/keys`' name for it), its
/// limits, and this process's counts of it.
#[derive(Debug)]
pub struct LimitedKey {
    pub name: String,
    pub limits: KeyLimits,
    local: Arc<local::KeyState>,
}

impl LimitedKey {
    pub fn new(name: String, limits: KeyLimits) -> Self {
        LimitedKey {
            name,
            limits,
            local: Arc::default(),
        }
    }

    /// This key with `running`'s counts (a reload neither refills nor empties a window, nor
    /// forgets the requests in flight).
    pub fn keep_counts_of(&mut self, running: &LimitedKey) {
        self.local = running.local.clone();
    }
}

/// Where the limits are counted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// In this process (no `state:`).
    Local,
    /// In Redis, for every replica.
    Shared,
    /// In this process, while Redis does not answer (`on_error: allow`), or nowhere (`deny`).
    Fallback,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Local => "local",
            Mode::Shared => "shared",
            Mode::Fallback => "fallback",
        }
    }
}

/// The process's limiter: one for its whole life (a reload keeps it; `state:` takes a restart).
#[derive(Debug, Default)]
pub struct Limiter {
    shared: Option<Shared>,
}

#[derive(Debug)]
struct Shared {
    store: RedisStore,
    on_error: OnError,
    /// Redis answered the last call. While not, requests skip it and the probe asks.
    up: AtomicBool,
    /// For the start-up log: host and port, never a password.
    addr: String,
}

impl Shared {
    /// A call failed: counted, and the switch away from the shared limits logged once.
    fn failed(&self, operation: &str, e: &StoreError) {
        if let Some(m) = crate::metrics::get() {
            m.state_error(operation);
        }
        if self.up.swap(false, Ordering::AcqRel) {
            let then = match self.on_error {
                OnError::Allow => "limits are counted per process",
                OnError::Deny => "requests of limited keys get 503",
            };
            log::warn!(
                "shared state: Redis at {} failed ({operation}: {e}); {then} until it answers again",
                self.addr
            );
        }
    }

    fn answered(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            log::info!(
                "shared state: Redis at {} answers again; limits are shared across replicas again",
                self.addr
            );
        }
    }
}

impl Limiter {
    /// Per process without `state:`, else on Redis. Makes no connection yet.
    pub fn new(state: Option<&StateSettings>) -> Result<Limiter, String> {
        let Some(s) = state else {
            return Ok(Limiter::default());
        };
        let client = ::redis::Client::open(s.redis_url.as_str())
            .map_err(|_| "state.redis_url: not a Redis URL".to_string())?;
        let addr = client.get_connection_info().addr().to_string();
        Ok(Limiter {
            shared: Some(Shared {
                store: RedisStore::new(client, s.key_prefix.clone(), s.timeout, s.lease),
                on_error: s.on_error,
                up: AtomicBool::new(true),
                addr,
            }),
        })
    }

    pub fn mode(&self) -> Mode {
        match &self.shared {
            None => Mode::Local,
            Some(s) if s.up.load(Ordering::Acquire) => Mode::Shared,
            Some(_) => Mode::Fallback,
        }
    }

    /// Count a request of `key`: admitted with what it holds, or refused.
    pub async fn admit(self: &Arc<Self>, key: &Arc<LimitedKey>) -> Result<Hold, Refusal> {
        let now = clock::unix_ms();
        if let Some(s) = &self.shared {
            if s.up.load(Ordering::Acquire) {
                match s.store.admit(key, now).await {
                    Ok(Ok((remaining, lease))) => {
                        local::count_request(&key.local, now);
                        return Ok(self.hold(key, Counted::Shared(lease), remaining));
                    }
                    Ok(Err(refusal)) => return Err(refusal),
                    Err(e) => s.failed("admit", &e),
                }
            }
            if s.on_error == OnError::Deny {
                return Err(Refusal {
                    exceeded: Exceeded::StateUnavailable,
                    retry_after: UNAVAILABLE_RETRY,
                    remaining: Remaining::default(),
                });
            }
        }
        let remaining = local::admit(&key.local, &key.limits, now)?;
        Ok(self.hold(key, Counted::Local, remaining))
    }

    fn hold(
        self: &Arc<Self>,
        key: &Arc<LimitedKey>,
        counted: Counted,
        remaining: Remaining,
    ) -> Hold {
        Hold {
            limiter: self.clone(),
            key: key.clone(),
            counted,
            remaining,
            tokens: 0,
        }
    }

    /// A key's live usage: every replica's while Redis answers, else this process's.
    pub async fn usage(&self, key: &LimitedKey) -> Usage {
        let now = clock::unix_ms();
        if let Some(s) = self
            .shared
            .as_ref()
            .filter(|s| s.up.load(Ordering::Acquire))
        {
            match s.store.usage(key, now).await {
                Ok(u) => return u,
                Err(e) => s.failed("usage", &e),
            }
        }
        local::usage(&key.local, &key.limits, now)
    }

    /// The background work of the shared state until shutdown: renew this process's leases,
    /// and while Redis is down, ask each second whether it is back.
    pub async fn maintain(&self, mut shutdown: ShutdownWatch) {
        let Some(s) = &self.shared else {
            return;
        };
        match s.store.ping().await {
            Ok(()) => log::info!("shared state: Redis at {}", s.addr),
            Err(e) => s.failed("probe", &e),
        }
        let mut probe = tokio::time::interval(PROBE_EVERY);
        let mut renew = tokio::time::interval(s.store.renew_every());
        for t in [&mut probe, &mut renew] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = probe.tick() => {
                    if !s.up.load(Ordering::Acquire) {
                        match s.store.ping().await {
                            Ok(()) => s.answered(),
                            Err(_) => {
                                if let Some(m) = crate::metrics::get() {
                                    m.state_error("probe");
                                }
                            }
                        }
                    }
                }
                _ = renew.tick() => {
                    if s.up.load(Ordering::Acquire) {
                        if let Err(e) = s.store.renew().await {
                            s.failed("renew", &e);
                        }
                    }
                }
            }
        }
    }
}

/// The Pingora service running [`Limiter::maintain`].
pub struct Maintenance(pub Arc<Limiter>);

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.maintain(shutdown).await;
    }
}

/// Where an admitted request was counted.
#[derive(Debug, Clone, Copy)]
enum Counted {
    /// In this process (its slot, if the key has `max_concurrent`, is here).
    Local,
    /// In Redis, with the lease of its slot.
    Shared(Option<u64>),
}

/// What an admitted request holds until it ends: released and charged on drop.
#[derive(Debug)]
pub struct Hold {
    limiter: Arc<Limiter>,
    key: Arc<LimitedKey>,
    counted: Counted,
    /// What was left when it was admitted (for the `x-ratelimit-*` headers).
    pub remaining: Remaining,
    tokens: u64,
}

impl Hold {
    pub fn limits(&self) -> &KeyLimits {
        &self.key.limits
    }

    /// The answer's tokens, charged when the hold is dropped.
    pub fn charge(&mut self, tokens: u64) {
        self.tokens = self.tokens.saturating_add(tokens);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let now = clock::unix_ms();
        let (key, tokens) = (&self.key, self.tokens);
        let lease = match self.counted {
            Counted::Local => {
                let slot = key.limits.max_concurrent.is_some();
                local::finish(&key.local, &key.limits, tokens, slot, now);
                return;
            }
            Counted::Shared(lease) => lease,
        };
        // This process's share, for the local limits should Redis go away.
        local::finish(&key.local, &key.limits, tokens, false, now);
        if lease.is_none() && tokens == 0 {
            return;
        }
        if let Some(s) = &self.limiter.shared {
            s.store.finish(key, lease, tokens);
        }
    }
}
