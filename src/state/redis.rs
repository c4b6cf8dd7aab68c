//! Limits shared by every replica, in Redis: each check one `EVALSHA` of a Lua script (the same
//! windows, budget and leases as local.rs, atomic on the server, on Redis's clock) over one
//! multiplexed connection that the `redis` crate's manager reconnects in the background.
//!
//! A key's state is four Redis keys, `{prefix}{name}:requests|tokens|leases|budget`, with the
//! key's name as the hash tag so that a script's keys share a Redis Cluster slot. Leases of
//! `max_concurrent` expire unless renewed: a replica that dies frees its slots within a lease
//! time; a live one renews its own every third of it (see [`RedisStore::renew`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};

use super::clock::period_at;
use super::limits::{Exceeded, Refusal, Remaining, Usage};
use super::LimitedKey;

/// The prelude every script starts with: Redis's clock and the one-minute windows.
const WINDOW: &str = include_str!("scripts/window.lua");

struct Scripts {
    admit: Script,
    finish: Script,
    renew: Script,
    usage: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let with_window = |body: &str| Script::new(&format!("{WINDOW}\n{body}"));
        Scripts {
            admit: with_window(include_str!("scripts/admit.lua")),
            finish: with_window(include_str!("scripts/finish.lua")),
            renew: with_window(include_str!("scripts/renew.lua")),
            usage: with_window(include_str!("scripts/usage.lua")),
        }
    }
}

/// A failed or timed-out call to Redis.
#[derive(Debug)]
pub enum StoreError {
    Redis(RedisError),
    Timeout,
    /// A script answered something it never sends (another program's keys?).
    Reply(&'static str),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The redis crate's errors name the failure, never the URL (it may hold a password).
            StoreError::Redis(e) => e.fmt(f),
            StoreError::Timeout => f.write_str("no answer in time"),
            StoreError::Reply(what) => write!(f, "unexpected reply of the {what} script"),
        }
    }
}

/// The Redis side of the limits.
pub struct RedisStore {
    client: redis::Client,
    /// Made on first use, on the runtime that uses it first (its reader task lives there).
    conn: OnceLock<ConnectionManager>,
    scripts: Scripts,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    /// This process's lease ids are `{replica}:{n}`.
    replica: u64,
    next_lease: AtomicU64,
    /// Leases held by this process, by id: the Redis key each is in, for renewal.
    live: Mutex<HashMap<u64, String>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The four Redis keys of a client key.
struct Keys {
    requests: String,
    tokens: String,
    leases: String,
    budget: String,
}

impl RedisStore {
    pub fn new(client: redis::Client, prefix: String, timeout: Duration, lease: Duration) -> Self {
        RedisStore {
            client,
            conn: OnceLock::new(),
            scripts: Scripts::load(),
            prefix,
            timeout,
            lease,
            replica: fastrand::u64(..),
            next_lease: AtomicU64::new(1),
            live: Mutex::new(HashMap::new()),
        }
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            // Reconnects are retried by the next call (and the probe), not waited for.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let made = ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            .map_err(StoreError::Redis)?;
        Ok(self.conn.get_or_init(|| made).clone())
    }

    fn keys(&self, name: &str) -> Keys {
        let base = format!("{}{{{name}}}:", self.prefix);
        Keys {
            requests: format!("{base}requests"),
            tokens: format!("{base}tokens"),
            leases: format!("{base}leases"),
            budget: format!("{base}budget"),
        }
    }

    fn lease_id(&self, n: u64) -> String {
        format!("{:016x}:{n}", self.replica)
    }

    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r.map_err(StoreError::Redis),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// Count one request of `key` against its limits, every replica's requests included. An
    /// admitted request holding a `max_concurrent` slot gets its lease's number.
    pub async fn admit(
        &self,
        key: &LimitedKey,
        now_ms: u64,
    ) -> Result<Result<(Remaining, Option<u64>), Refusal>, StoreError> {
        let l = &key.limits;
        let k = self.keys(&key.name);
        let lease = l
            .max_concurrent
            .map(|_| self.next_lease.fetch_add(1, Ordering::Relaxed));
        let (period, period_end) = l.budget.map_or((0, 0), |b| period_at(b.period, now_ms));
        let mut conn = self.conn()?;
        let reply: Vec<i64> = self
            .within(
                self.scripts
                    .admit
                    .key(&k.requests)
                    .key(&k.tokens)
                    .key(&k.leases)
                    .key(&k.budget)
                    .arg(l.requests_per_minute.unwrap_or(0))
                    .arg(l.tokens_per_minute.unwrap_or(0))
                    .arg(l.max_concurrent.unwrap_or(0))
                    .arg(l.budget.map_or(0, |b| b.tokens))
                    .arg(lease.map(|n| self.lease_id(n)).unwrap_or_default())
                    .arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
                    .arg(period)
                    .invoke_async(&mut conn),
            )
            .await?;
        let [verdict, left_requests, left_tokens, retry_ms] = reply[..] else {
            return Err(StoreError::Reply("admit"));
        };
        let remaining = Remaining {
            requests: u64::try_from(left_requests).ok(),
            tokens: u64::try_from(left_tokens).ok(),
        };
        let retry = Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0));
        let exceeded = match verdict {
            0 => {
                if let Some(n) = lease {
                    self.live_leases().insert(n, k.leases);
                }
                return Ok(Ok((remaining, lease)));
            }
            1 => Exceeded::Requests,
            2 => Exceeded::Tokens,
            3 => Exceeded::Concurrent,
            _ => Exceeded::Budget,
        };
        let retry_after = match exceeded {
            Exceeded::Budget => Duration::from_millis(period_end.saturating_sub(now_ms)),
            _ => retry,
        };
        Ok(Err(Refusal {
            exceeded,
            retry_after,
            remaining,
        }))
    }

    /// A request's end: its lease (if it took one) released, its tokens charged.
    pub async fn finish(
        &self,
        key: &LimitedKey,
        lease: Option<u64>,
        tokens: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if let Some(n) = lease {
            self.live_leases().remove(&n);
        }
        let k = self.keys(&key.name);
        let (period, end) = key
            .limits
            .budget
            .map_or((0, now_ms), |b| period_at(b.period, now_ms));
        // The budget outlives its period by a day, for /v1/keys and late charges.
        let ttl = (end.saturating_sub(now_ms) / 1000) + 86_400;
        let mut conn = self.conn()?;
        let _: i64 = self
            .within(
                self.scripts
                    .finish
                    .key(&k.tokens)
                    .key(&k.leases)
                    .key(&k.budget)
                    .arg(tokens)
                    .arg(lease.map(|n| self.lease_id(n)).unwrap_or_default())
                    .arg(period)
                    .arg(ttl)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Push every lease this process holds forward by a lease time.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for (&n, key) in self.live_leases().iter() {
            by_key
                .entry(key.clone())
                .or_default()
                .push(self.lease_id(n));
        }
        let lease_ms = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        for (key, ids) in by_key {
            let mut conn = self.conn()?;
            let mut call = self.scripts.renew.key(&key);
            call.arg(lease_ms);
            for id in &ids {
                call.arg(id);
            }
            let _: i64 = self.within(call.invoke_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// How often live leases are renewed: three times a lease time, so that one missed
    /// renewal (a slow Redis) does not drop them.
    pub fn renew_every(&self) -> Duration {
        self.lease / 3
    }

    pub async fn usage(&self, key: &LimitedKey, now_ms: u64) -> Result<Usage, StoreError> {
        let k = self.keys(&key.name);
        let period = key
            .limits
            .budget
            .map_or(0, |b| period_at(b.period, now_ms).0);
        let mut conn = self.conn()?;
        let reply: Vec<u64> = self
            .within(
                self.scripts
                    .usage
                    .key(&k.requests)
                    .key(&k.tokens)
                    .key(&k.leases)
                    .key(&k.budget)
                    .arg(period)
                    .invoke_async(&mut conn),
            )
            .await?;
        let [requests_this_minute, tokens_this_minute, in_flight, budget_used] = reply[..] else {
            return Err(StoreError::Reply("usage"));
        };
        Ok(Usage {
            requests_this_minute,
            tokens_this_minute,
            in_flight,
            budget_used,
        })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn()?;
        let _: String = self
            .within(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    fn live_leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }
}
