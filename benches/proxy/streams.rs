//! Point 4: many concurrent paced SSE streams, each on its own connection.
//!
//! Two phases, so that opening thousands of streams does not turn into a SYN storm:
//!
//! 1. connect: every stream's connection is opened and checked with one `GET /health`, at most
//!    `window` at a time (a connection that answered was accepted: it no longer sits in a
//!    listen queue);
//! 2. stream: all requests are released together, but at most `window` may wait for their
//!    response head at once. A proxy opens an upstream connection to the mock for most of them,
//!    so this keeps the mock's accept queue below its backlog (see [`crate::net`]).
//!
//! The ramp thus goes as fast as the system answers. Per stream it measures the time to first
//! byte (from sending the request to the first body byte; the connection already exists), the
//! gaps between consecutive SSE events (an event ends at a blank line), and whether it ended
//! with all its events and `data: [DONE]`. It also counts the kernel's listen-queue overflows
//! during the point, so a 1 s tail that is a dropped SYN can be told apart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::Request;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::client::{self, Failure, Failures, Pace, ReqBody};
use crate::{net, stats};

/// Bound on one whole stream (connect to last byte).
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the connect phase; streams not connected by then are left to fail.
const CONNECT_PHASE: Duration = Duration::from_secs(60);
/// Gaps kept per stream for the distribution (more are counted, not kept).
const MAX_GAPS: usize = 64;
const DONE: &[u8] = b"data: [DONE]\n\n";
/// How an Anthropic Messages stream ends (`ai-proxy-messages`).
const MESSAGE_STOP: &[u8] = b"data: {\"type\":\"message_stop\"}\n\n";

#[derive(Clone, Debug, Default)]
pub struct StreamResult {
    pub streams: usize,
    pub completed: usize,
    pub failures: Failures,
    /// Most streams receiving at the same time (response head seen, body not finished).
    pub peak_open: usize,
    pub ttfb_p50_us: Option<u64>,
    pub ttfb_p99_us: Option<u64>,
    pub gap_p99_us: Option<u64>,
    /// Gaps longer than 3× the pace, and the streams that had at least one.
    pub stalls: u64,
    pub stalled_streams: usize,
    /// Time to open all connections, and for the streams (release of the requests to the end
    /// of the last stream).
    pub connect_phase: Duration,
    pub stream_phase: Duration,
    /// Listen-queue overflows on the whole machine during the point (each one a dropped SYN
    /// or handshake, retried after 1 s); `None` when /proc/net/netstat is unreadable.
    pub listen_overflows: Option<u64>,
}

/// What one stream saw.
struct Outcome {
    result: Result<(), Failure>,
    ttfb: Option<Duration>,
    gaps: [u32; MAX_GAPS],
    ngaps: usize,
    stalls: u32,
}

/// Streams currently open, and the most seen at once.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

struct Open<'a>(&'a Gauge);

impl Gauge {
    fn open(&self) -> Open<'_> {
        let n = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(n, Ordering::Relaxed);
        Open(self)
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn run(
    addr: SocketAddr,
    template: Request<ReqBody>,
    n: usize,
    window: usize,
    pace: Pace,
) -> StreamResult {
    let window = window.max(1);
    let template = Arc::new(template);
    let gates = Gates {
        connecting: Arc::new(Semaphore::new(window)),
        connected: Arc::new(Semaphore::new(0)),
        go: Arc::new(Semaphore::new(0)),
        opening: Arc::new(Semaphore::new(window)),
    };
    let gauge = Arc::new(Gauge::default());
    let stall = pace.interval * 3;
    let overflows0 = net::listen_overflows();
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (t, g, gates) = (template.clone(), gauge.clone(), gates.clone());
        set.spawn(one(addr, t, gates, g, pace, stall));
    }
    // Every connection answered (or failed, or the phase timed out).
    if let Ok(Ok(p)) =
        tokio::time::timeout(CONNECT_PHASE, gates.connected.acquire_many(n as u32)).await
    {
        p.forget();
    }
    let connect_phase = start.elapsed();
    let released = Instant::now();
    gates.go.add_permits(n);

    let mut out = StreamResult {
        streams: n,
        connect_phase,
        ..StreamResult::default()
    };
    let (mut ttfb, mut gaps) = (stats::micros(), stats::micros());
    while let Some(res) = set.join_next().await {
        let o = res.unwrap_or_else(|_| Outcome::failed(Failure::Http));
        match o.result {
            Ok(()) => out.completed += 1,
            Err(f) => out.failures.add(f),
        }
        // Timing of failed streams counts too: a stream cut short still had a first byte.
        if let Some(t) = o.ttfb {
            stats::record_us(&mut ttfb, t);
        }
        for &g in &o.gaps[..o.ngaps] {
            gaps.saturating_record(u64::from(g).max(1));
        }
        out.stalls += u64::from(o.stalls);
        out.stalled_streams += usize::from(o.stalls > 0);
    }
    out.stream_phase = released.elapsed();
    out.listen_overflows = net::listen_overflows()
        .zip(overflows0)
        .map(|(b, a)| b.saturating_sub(a));
    out.peak_open = gauge.peak.load(Ordering::Relaxed);
    out.ttfb_p50_us = stats::pct(&ttfb, 50.0);
    out.ttfb_p99_us = stats::pct(&ttfb, 99.0);
    out.gap_p99_us = stats::pct(&gaps, 99.0);
    out
}

impl Outcome {
    fn failed(f: Failure) -> Self {
        Outcome {
            result: Err(f),
            ttfb: None,
            gaps: [0; MAX_GAPS],
            ngaps: 0,
            stalls: 0,
        }
    }
}

/// The semaphores that sequence a stream's phases.
#[derive(Clone)]
struct Gates {
    /// Phase 1: connections being opened and checked at once.
    connecting: Arc<Semaphore>,
    /// Phase 1 progress: one permit per stream done with it.
    connected: Arc<Semaphore>,
    /// Start of phase 2: one permit per stream.
    go: Arc<Semaphore>,
    /// Phase 2: requests waiting for their response head at once.
    opening: Arc<Semaphore>,
}

async fn one(
    addr: SocketAddr,
    template: Arc<Request<ReqBody>>,
    gates: Gates,
    gauge: Arc<Gauge>,
    pace: Pace,
    stall: Duration,
) -> Outcome {
    // The semaphores are never closed, so acquiring cannot fail; a failure would only drop
    // the pacing, never a bound.
    let conn = {
        let _slot = gates.connecting.acquire().await;
        match client::connect(addr).await {
            Ok(mut s) => client::exchange_timed(&mut s, client::health_request())
                .await
                .map(|()| s),
            Err(f) => Err(f),
        }
    };
    gates.connected.add_permits(1);
    let mut sender = match conn {
        Ok(s) => s,
        Err(f) => return Outcome::failed(f),
    };
    match tokio::time::timeout(CONNECT_PHASE, gates.go.acquire()).await {
        Ok(Ok(p)) => p.forget(),
        _ => return Outcome::failed(Failure::Timeout),
    }
    let slot =
        match tokio::time::timeout(STREAM_TIMEOUT, gates.opening.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => return Outcome::failed(Failure::Timeout),
        };
    tokio::time::timeout(
        STREAM_TIMEOUT,
        stream(&mut sender, &template, slot, gauge, pace, stall),
    )
    .await
    .unwrap_or_else(|_| Outcome::failed(Failure::Timeout))
}

/// Send the request on the open connection and read the stream to its end.
async fn stream(
    sender: &mut client::Sender,
    template: &Request<ReqBody>,
    slot: OwnedSemaphorePermit,
    gauge: Arc<Gauge>,
    pace: Pace,
    stall: Duration,
) -> Outcome {
    let t0 = Instant::now();
    let mut o = Outcome::failed(Failure::Truncated);
    let resp = match sender.ready().await {
        Ok(()) => sender.send_request(template.clone()).await,
        Err(e) => Err(e),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(_) => return Outcome::failed(Failure::Http),
    };
    // Head received: the next request may go.
    drop(slot);
    if resp.status() != hyper::StatusCode::OK {
        return Outcome::failed(Failure::Status(resp.status().as_u16()));
    }
    let _open = gauge.open();
    let mut body = resp.into_body();
    let mut events = 0usize;
    let mut last_event: Option<Instant> = None;
    let mut prev_newline = false;
    // The last bytes received, to check the stream ended with `[DONE]` (or `message_stop`).
    let mut tail = [0u8; MESSAGE_STOP.len()];
    // Bounded by the stream: the body ends at its last chunk (and by STREAM_TIMEOUT).
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) => {
                o.result = Err(Failure::Http);
                return o;
            }
        };
        let Some(data) = frame.data_ref() else {
            continue;
        };
        let now = Instant::now();
        o.ttfb.get_or_insert(now - t0);
        for &b in data.iter() {
            // An SSE event ends at an empty line: "\n\n".
            if b == b'\n' && prev_newline {
                if let Some(prev) = last_event {
                    let gap = now - prev;
                    if gap > stall {
                        o.stalls += 1;
                    }
                    if o.ngaps < MAX_GAPS {
                        o.gaps[o.ngaps] = gap.as_micros().min(u128::from(u32::MAX)) as u32;
                        o.ngaps += 1;
                    }
                }
                last_event = Some(now);
                events += 1;
            }
            prev_newline = b == b'\n';
        }
        keep_tail(&mut tail, data);
    }
    // Every content event, then `data: [DONE]` (or Anthropic's `message_stop`).
    if events > pace.events && (tail.ends_with(DONE) || tail.ends_with(MESSAGE_STOP)) {
        o.result = Ok(());
    }
    o
}

/// Shift `data`'s last bytes into the fixed-size `tail`.
fn keep_tail(tail: &mut [u8], data: &[u8]) {
    let n = tail.len();
    if data.len() >= n {
        tail.copy_from_slice(&data[data.len() - n..]);
    } else {
        tail.copy_within(data.len().., 0);
        tail[n - data.len()..].copy_from_slice(data);
    }
}
