//! Limits shared by every replica, in Redis: the same windows, budget and leases as local.rs,
//! counted by Lua scripts (atomic on the server, on Redis's clock).
//!
//! Admissions and ends are batched: each thread of the gateway has a lane, a task on its own
//! runtime with its own multiplexed connection, that sends whatever its requests queued while
//! its previous call was out as one `EVALSHA` of `batch.lua`. A request still waits for one
//! round trip at most; under load one call serves many requests, so Redis's work and the
//! gateway's per request shrink as the load grows. Nothing waits to fill a batch: an end goes
//! out at once, so that a replica's tokens are charged before another replica's next check.
//! Nothing crosses threads on the way, but the lease bookkeeping for renewal.
//!
//! A key's state is four Redis keys, `{prefix}{name}:requests|tokens|leases|budget`. A batch's
//! script touches the keys of every client key in it, so the state lives on one Redis primary
//! (or Sentinel/managed failover), not a Cluster. Leases of `max_concurrent` expire unless
//! renewed: a replica that dies frees its slots within a lease time; a live one renews its own
//! every third of it (see [`RedisStore::renew`]).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use tokio::sync::{mpsc, oneshot};

use super::clock::{period_at, unix_ms};
use super::limits::{Exceeded, Refusal, Remaining, Usage};
use super::LimitedKey;

/// The prelude every script starts with: Redis's clock and the one-minute windows.
const WINDOW: &str = include_str!("scripts/window.lua");
/// The most requests one call carries (a bound on the script's arguments and its run time).
const MAX_BATCH: usize = 256;

struct Scripts {
    batch: Script,
    renew: Script,
    usage: Script,
}

impl Scripts {
    fn load() -> Scripts {
        let with_window = |body: &str| Script::new(&format!("{WINDOW}\n{body}"));
        Scripts {
            batch: with_window(include_str!("scripts/batch.lua")),
            renew: with_window(include_str!("scripts/renew.lua")),
            usage: with_window(include_str!("scripts/usage.lua")),
        }
    }
}

/// A failed or timed-out call to Redis.
#[derive(Debug, Clone)]
pub enum StoreError {
    Redis(Arc<RedisError>),
    Timeout,
    /// A script answered something it never sends (another program's keys?).
    Reply(&'static str),
    /// No runtime to run the call on (never in the gateway).
    NoRuntime,
}

impl From<RedisError> for StoreError {
    fn from(e: RedisError) -> Self {
        StoreError::Redis(Arc::new(e))
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The redis crate's errors name the failure, never the URL (it may hold a password).
            StoreError::Redis(e) => e.fmt(f),
            StoreError::Timeout => f.write_str("no answer in time"),
            StoreError::Reply(what) => write!(f, "unexpected reply of the {what} script"),
            StoreError::NoRuntime => f.write_str("no runtime"),
        }
    }
}

/// What a batch's script decided of one admission: verdict, remaining requests and tokens
/// (-1: no such limit), retry ms.
type Verdict = [i64; 4];

/// Where a queued admission's verdict goes.
type VerdictTo = oneshot::Sender<Result<Verdict, StoreError>>;

/// A request queued on a lane.
enum Queued {
    Admit {
        key: Arc<LimitedKey>,
        lease: Option<u64>,
        reply: VerdictTo,
    },
    End {
        key: Arc<LimitedKey>,
        lease: Option<u64>,
        tokens: u64,
    },
}

impl Queued {
    fn key(&self) -> &Arc<LimitedKey> {
        match self {
            Queued::Admit { key, .. } | Queued::End { key, .. } => key,
        }
    }
}

thread_local! {
    /// This thread's lanes, by store id (one store in the gateway; tests make several).
    static LANES: RefCell<Vec<(u64, mpsc::UnboundedSender<Queued>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_STORE: AtomicU64 = AtomicU64::new(1);

/// The Redis side of the limits.
pub struct RedisStore {
    inner: Arc<Inner>,
    /// This store's lanes in the threads' [`LANES`].
    id: u64,
}

/// What the lanes and the store's own calls share.
struct Inner {
    client: redis::Client,
    /// For renewal, `/v1/keys` and the probe: made on first use, on the runtime that uses it
    /// first (its reader task lives there). Each lane has its own.
    conn: OnceLock<ConnectionManager>,
    scripts: Scripts,
    prefix: String,
    timeout: Duration,
    lease: Duration,
    /// This process's lease ids are `{replica}:{n}`.
    replica: u64,
    next_lease: AtomicU64,
    /// Leases held by this process, by number, with their key: for renewal.
    live: Mutex<HashMap<u64, Arc<LimitedKey>>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
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
            inner: Arc::new(Inner {
                client,
                conn: OnceLock::new(),
                scripts: Scripts::load(),
                prefix,
                timeout,
                lease,
                replica: fastrand::u64(..),
                next_lease: AtomicU64::new(1),
                live: Mutex::new(HashMap::new()),
            }),
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Queue `q` on this thread's lane, starting the lane on this thread's runtime if it has
    /// none yet (or its runtime has gone).
    fn enqueue(&self, q: Queued) -> Result<(), StoreError> {
        LANES.with(|lanes| {
            let mut lanes = lanes.borrow_mut();
            let q = match lanes.iter().find(|(id, _)| *id == self.id) {
                Some((_, tx)) => match tx.send(q) {
                    Ok(()) => return Ok(()),
                    Err(mpsc::error::SendError(q)) => q,
                },
                None => q,
            };
            lanes.retain(|(id, tx)| *id != self.id && !tx.is_closed());
            let runtime =
                tokio::runtime::Handle::try_current().map_err(|_| StoreError::NoRuntime)?;
            let (tx, rx) = mpsc::unbounded_channel();
            runtime.spawn(self.inner.clone().run(rx));
            // A fresh receiver is open: this send succeeds.
            let _ = tx.send(q);
            lanes.push((self.id, tx));
            Ok(())
        })
    }

    /// Count one request of `key` against its limits, every replica's requests included. An
    /// admitted request holding a `max_concurrent` slot gets its lease's number.
    pub async fn admit(
        &self,
        key: &Arc<LimitedKey>,
        now_ms: u64,
    ) -> Result<Result<(Remaining, Option<u64>), Refusal>, StoreError> {
        let lease = key
            .limits
            .max_concurrent
            .map(|_| self.inner.next_lease.fetch_add(1, Ordering::Relaxed));
        let (reply, answer) = oneshot::channel();
        self.enqueue(Queued::Admit {
            key: key.clone(),
            lease,
            reply,
        })?;
        let [verdict, left_requests, left_tokens, retry_ms] =
            match tokio::time::timeout(self.inner.timeout, answer).await {
                Ok(Ok(r)) => r?,
                // The lane's runtime went away with the request queued.
                Ok(Err(_)) => return Err(StoreError::NoRuntime),
                Err(_) => return Err(StoreError::Timeout),
            };
        let remaining = Remaining {
            requests: u64::try_from(left_requests).ok(),
            tokens: u64::try_from(left_tokens).ok(),
        };
        let exceeded = match verdict {
            0 => return Ok(Ok((remaining, lease))),
            1 => Exceeded::Requests,
            2 => Exceeded::Tokens,
            3 => Exceeded::Concurrent,
            _ => Exceeded::Budget,
        };
        let retry_after = match (exceeded, key.limits.budget) {
            (Exceeded::Budget, Some(b)) => {
                Duration::from_millis(period_at(b.period, now_ms).1.saturating_sub(now_ms))
            }
            _ => Duration::from_millis(u64::try_from(retry_ms).unwrap_or(0)),
        };
        Ok(Err(Refusal {
            exceeded,
            retry_after,
            remaining,
        }))
    }

    /// A request's end: its lease (if it took one) released and its tokens charged, by its
    /// lane's next call. Failures are counted and logged there (nobody waits for them).
    pub fn finish(&self, key: &Arc<LimitedKey>, lease: Option<u64>, tokens: u64) {
        if let Some(n) = lease {
            self.inner.live_leases().remove(&n);
        }
        // Without a runtime (never in the gateway) the lease expires by itself.
        let _ = self.enqueue(Queued::End {
            key: key.clone(),
            lease,
            tokens,
        });
    }

    /// Push every lease this process holds forward by a lease time.
    pub async fn renew(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let mut by_key: HashMap<String, Vec<String>> = HashMap::new();
        for (&n, key) in inner.live_leases().iter() {
            by_key
                .entry(inner.keys(&key.name).leases)
                .or_default()
                .push(inner.lease_id(n));
        }
        let lease_ms = u64::try_from(inner.lease.as_millis()).unwrap_or(u64::MAX);
        for (key, ids) in by_key {
            let mut conn = inner.conn()?;
            let mut call = inner.scripts.renew.key(&key);
            call.arg(lease_ms);
            for id in &ids {
                call.arg(id);
            }
            let _: i64 = inner.within(call.invoke_async(&mut conn)).await?;
        }
        Ok(())
    }

    /// How often live leases are renewed: three times a lease time, so that one missed
    /// renewal (a slow Redis) does not drop them.
    pub fn renew_every(&self) -> Duration {
        self.inner.lease / 3
    }

    pub async fn usage(&self, key: &LimitedKey, now_ms: u64) -> Result<Usage, StoreError> {
        let inner = &self.inner;
        let k = inner.keys(&key.name);
        let period = key
            .limits
            .budget
            .map_or(0, |b| period_at(b.period, now_ms).0);
        let mut conn = inner.conn()?;
        let reply: Vec<u64> = inner
            .within(
                inner
                    .scripts
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
        let mut conn = self.inner.conn()?;
        let _: String = self
            .inner
            .within(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }
}

/// One client key's part of a batch.
struct Group {
    key: Arc<LimitedKey>,
    /// Ended requests: their tokens and leases.
    ends: Vec<(u64, Option<u64>)>,
    /// Admissions in their order: lease and where the verdict goes.
    admissions: Vec<(Option<u64>, VerdictTo)>,
}

impl Inner {
    fn connect(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(self.timeout))
            .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
            // Reconnects are retried by the next call (and the probe), not waited for.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        Ok(ConnectionManager::new_lazy_with_config(
            self.client.clone(),
            config,
        )?)
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(c) = self.conn.get() {
            return Ok(c.clone());
        }
        let made = self.connect()?;
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

    fn live_leases(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<LimitedKey>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn within<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    /// A lane: until its thread's senders are gone, one call of what was queued meanwhile,
    /// waited for while it holds admissions (so that they batch under load).
    async fn run(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Queued>) {
        let mut conn = None;
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Leases admitted for requests that stopped waiting: released by the next call.
        let mut orphans = Vec::new();
        loop {
            batch.append(&mut orphans);
            if batch.is_empty() && queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            if !batch.iter().any(|q| matches!(q, Queued::Admit { .. })) {
                // Ends alone: nobody waits for them, so the admissions queued next do not
                // wait behind them either (pipelined on the same multiplexed connection).
                let (lane, mut ends, mut conn) =
                    (self.clone(), std::mem::take(&mut batch), conn.clone());
                tokio::spawn(async move { lane.send(&mut conn, &mut ends, &mut Vec::new()).await });
                continue;
            }
            self.send(&mut conn, &mut batch, &mut orphans).await;
        }
    }

    /// One call for the whole batch (emptied), its verdicts sent to their requests.
    async fn send(
        &self,
        conn: &mut Option<ConnectionManager>,
        batch: &mut Vec<Queued>,
        orphans: &mut Vec<Queued>,
    ) {
        let mut groups: Vec<Group> = Vec::new();
        for q in batch.drain(..) {
            let at = match groups.iter().position(|g| Arc::ptr_eq(&g.key, q.key())) {
                Some(at) => at,
                None => {
                    groups.push(Group {
                        key: q.key().clone(),
                        ends: Vec::new(),
                        admissions: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            match q {
                Queued::Admit { lease, reply, .. } => groups[at].admissions.push((lease, reply)),
                Queued::End { lease, tokens, .. } => groups[at].ends.push((tokens, lease)),
            }
        }
        let reply = self.call(conn, &groups).await;
        let admissions: usize = groups.iter().map(|g| g.admissions.len()).sum();
        let verdicts = match reply {
            Ok(v) if v.len() == admissions * 4 => Ok(v),
            Ok(_) => Err(StoreError::Reply("batch")),
            Err(e) => Err(e),
        };
        let mut verdicts = match verdicts {
            Ok(v) => v.into_iter(),
            Err(e) => {
                if groups.iter().any(|g| !g.ends.is_empty()) {
                    if let Some(m) = crate::metrics::get() {
                        m.state_error("finish");
                    }
                    log::debug!("shared state: ends not recorded ({e}); their leases expire");
                }
                for g in groups {
                    for (_, reply) in g.admissions {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
                return;
            }
        };
        for g in groups {
            for (lease, reply) in g.admissions {
                let v: Verdict = std::array::from_fn(|_| verdicts.next().unwrap_or(-1));
                let held = v[0] == 0 && lease.is_some();
                if let (true, Some(n)) = (held, lease) {
                    self.live_leases().insert(n, g.key.clone());
                }
                if reply.send(Ok(v)).is_err() && held {
                    // Its request gave up waiting (and went on without the shared limits).
                    if let Some(n) = lease {
                        self.live_leases().remove(&n);
                    }
                    orphans.push(Queued::End {
                        key: g.key.clone(),
                        lease,
                        tokens: 0,
                    });
                }
            }
        }
    }

    async fn call(
        &self,
        conn: &mut Option<ConnectionManager>,
        groups: &[Group],
    ) -> Result<Vec<i64>, StoreError> {
        let now_ms = unix_ms();
        let mut call = self.scripts.batch.prepare_invoke();
        call.arg(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX));
        for g in groups {
            let k = self.keys(&g.key.name);
            call.key(k.requests)
                .key(k.tokens)
                .key(k.leases)
                .key(k.budget);
            let l = &g.key.limits;
            let (period, end) = l
                .budget
                .map_or((0, now_ms), |b| period_at(b.period, now_ms));
            // The budget outlives its period by a day, for /v1/keys and late charges.
            let ttl = (end.saturating_sub(now_ms) / 1000) + 86_400;
            call.arg(l.requests_per_minute.unwrap_or(0))
                .arg(l.tokens_per_minute.unwrap_or(0))
                .arg(l.max_concurrent.unwrap_or(0))
                .arg(l.budget.map_or(0, |b| b.tokens))
                .arg(period)
                .arg(ttl)
                .arg(g.ends.len())
                .arg(g.admissions.len());
            for (tokens, lease) in &g.ends {
                call.arg(*tokens)
                    .arg(lease.map(|n| self.lease_id(n)).unwrap_or_default());
            }
            for (lease, _) in &g.admissions {
                call.arg(lease.map(|n| self.lease_id(n)).unwrap_or_default());
            }
        }
        let made = match conn {
            Some(c) => c,
            None => conn.insert(self.connect()?),
        };
        let reply = self.within(call.invoke_async(made)).await;
        if let Err(StoreError::Redis(_)) = reply {
            // A manager whose reconnect failed while Redis was down keeps answering with that
            // failure until its next attempt: the next call starts a fresh connection instead.
            *conn = None;
        }
        reply
    }
}
