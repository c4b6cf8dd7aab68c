//! Protection from clients: a deadline on each request head (slow-header clients, and idle
//! keep-alive connections) and a cap on open connections. Pingora times out each read of a
//! request head, not the head as a whole, so a client sending a byte a second would hold a
//! connection for as long as it likes.
//!
//! Both wrap Pingora's HTTP app, which serves a whole connection (its keep-alive requests
//! one after another) in one task. The proxy tells the wrapper, through a task-local clock,
//! when a request head has been read (no deadline while it is served) and when the request
//! has ended (the next head is due within the timeout).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::time::sleep;

tokio::task_local! {
    static HEAD_CLOCK: Arc<HeadClock>;
}

/// When the connection's next request head is due.
struct HeadClock {
    /// Milliseconds on the process clock (see `now_ms`); 0 while a request is being served.
    due: AtomicU64,
    timeout: Duration,
    /// The connection's first request head has not been read yet ...
    awaiting_first: AtomicBool,
    /// ... and is counted here (`Guarded::unheard`) until it is, or the connection ends.
    unheard: Arc<AtomicUsize>,
}

impl HeadClock {
    /// The first head arrived, or never will: uncount the connection (once).
    fn first_head_done(&self) {
        if self.awaiting_first.swap(false, Ordering::AcqRel) {
            self.unheard.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn restart(&self) {
        let due = now_ms() + u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX / 4);
        self.due.store(due, Ordering::Release);
    }

    /// Resolves when a head is overdue; never while a request is being served.
    async fn overdue(&self) {
        loop {
            let due = self.due.load(Ordering::Acquire);
            let now = now_ms();
            if due != 0 && now >= due {
                return;
            }
            let wait = if due == 0 {
                self.timeout // serving: look again later
            } else {
                Duration::from_millis(due - now)
            };
            sleep(wait).await;
        }
    }
}

/// Called by the proxy when a request head has been read (outside a guarded task: no-op).
pub fn head_read() {
    let _ = HEAD_CLOCK.try_with(|c| {
        c.due.store(0, Ordering::Release);
        c.first_head_done();
    });
}

/// Called by the proxy when a request has ended: the next head on the connection is due
/// within the timeout (keep-alive idle time counts).
pub fn request_done() {
    let _ = HEAD_CLOCK.try_with(|c| c.restart());
}

/// Milliseconds since the first call in this process, from 1.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX / 4) + 1
}

/// Limits on client connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From the start of waiting for a request head to its end (keep-alive idle time counts).
    pub header_timeout: Duration,
    /// Requests being read or served at once (`None`: no cap); past it, new ones are closed.
    pub max_connections: Option<usize>,
}

/// The longest shutdown waits for the first request of connections accepted just before the
/// listeners closed.
const FIRST_HEAD_GRACE: Duration = Duration::from_secs(2);

/// A Pingora app with [`Limits`] applied.
pub struct Guarded<A> {
    inner: Arc<A>,
    limits: Limits,
    open: AtomicUsize,
    /// Connections whose first request head has not been read yet.
    unheard: Arc<AtomicUsize>,
}

impl<A> Guarded<A> {
    pub fn new(inner: A, limits: Limits) -> Self {
        Guarded {
            inner: Arc::new(inner),
            limits,
            open: AtomicUsize::new(0),
            unheard: Arc::default(),
        }
    }
}

/// Ends a connection's count in `Guarded::unheard` when the connection ends without a head.
struct Unheard(Arc<HeadClock>);

impl Drop for Unheard {
    fn drop(&mut self) {
        self.0.first_head_done();
    }
}

/// Counts a connection in `open` while it is handled.
struct Open<'a>(&'a AtomicUsize);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let _open = Open(&self.open);
        if self.limits.max_connections.is_some_and(|max| open > max) {
            log::warn!("connection limit reached ({open} open): closing a client connection");
            return None;
        }
        let clock = Arc::new(HeadClock {
            due: AtomicU64::new(0),
            timeout: self.limits.header_timeout,
            awaiting_first: AtomicBool::new(true),
            unheard: self.unheard.clone(),
        });
        self.unheard.fetch_add(1, Ordering::Relaxed);
        let _unheard = Unheard(clock.clone());
        clock.restart();
        let serve = HEAD_CLOCK.scope(clock.clone(), self.inner.process_new(stream, shutdown));
        tokio::select! {
            reuse = serve => reuse,
            () = clock.overdue() => {
                log::debug!(
                    "no complete request head within {:?}: closing the connection",
                    self.limits.header_timeout
                );
                None
            }
        }
    }

    /// Pingora's cleanup closes every connection waiting for a request head: idle keep-alive
    /// ones, but also one accepted just before the listeners closed, whose request is on its
    /// way (during a graceful upgrade, the old process accepts until the last moment). Those
    /// get a moment for their first request first; it is then served as usual.
    async fn cleanup(&self) {
        let grace = FIRST_HEAD_GRACE.min(self.limits.header_timeout);
        let started = Instant::now();
        while self.unheard.load(Ordering::Relaxed) > 0 && started.elapsed() < grace {
            sleep(Duration::from_millis(10)).await;
        }
        self.inner.cleanup().await;
    }
}
