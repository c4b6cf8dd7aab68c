//! Points 2 and 3: throughput at a fixed concurrency. `conc` keep-alive connections, each
//! sending its next request as soon as the previous answer is read (closed loop), for a warm-up
//! and then a timed window; requests completing inside the window are counted and timed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use hyper::Request;

use crate::client::{self, Failure, Failures, ReqBody, Sender};
use crate::stats;

#[derive(Clone, Debug, Default)]
pub struct ThroughputResult {
    /// Successful requests per second in the timed window.
    pub rps: f64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Successful requests in the timed window.
    pub measured: u64,
    /// Successful requests over the whole point, warm-up included (CPU is read around it all).
    pub total: u64,
    pub failures: Failures,
}

impl ThroughputResult {
    /// Several rounds as one: the median rate and percentiles; requests and failures added up.
    pub fn median_of(rounds: &[ThroughputResult]) -> ThroughputResult {
        // Rates compared as integers (requests per second are in the thousands).
        let rps = stats::median(rounds.iter().map(|r| Some(r.rps.round() as u64)));
        let mut out = ThroughputResult {
            rps: rps.unwrap_or(0) as f64,
            p50_us: stats::median(rounds.iter().map(|r| r.p50_us)),
            p99_us: stats::median(rounds.iter().map(|r| r.p99_us)),
            measured: rounds.iter().map(|r| r.measured).sum(),
            total: rounds.iter().map(|r| r.total).sum(),
            failures: Failures::default(),
        };
        for r in rounds {
            out.failures.merge(&r.failures);
        }
        out
    }
}

struct Worker {
    hist: Histogram<u64>,
    measured: u64,
    total: u64,
    failures: Failures,
}

pub async fn run(
    addr: SocketAddr,
    template: Request<ReqBody>,
    conc: usize,
    warmup: Duration,
    duration: Duration,
) -> ThroughputResult {
    let template = Arc::new(template);
    let start = Instant::now();
    let window = (start + warmup, start + warmup + duration);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..conc {
        set.spawn(worker(addr, template.clone(), window));
    }
    let mut hist = stats::micros();
    let mut out = ThroughputResult::default();
    while let Some(res) = set.join_next().await {
        match res {
            Ok(w) => {
                // Same bounds on both sides: adding cannot fail.
                let _ = hist.add(&w.hist);
                out.measured += w.measured;
                out.total += w.total;
                out.failures.merge(&w.failures);
            }
            Err(_) => out.failures.add(Failure::Http),
        }
    }
    out.rps = out.measured as f64 / duration.as_secs_f64();
    out.p50_us = stats::pct(&hist, 50.0);
    out.p99_us = stats::pct(&hist, 99.0);
    out
}

/// One connection's closed loop; ends at the window's end (each step is bounded by the
/// connect and request timeouts).
async fn worker(
    addr: SocketAddr,
    template: Arc<Request<ReqBody>>,
    (from, to): (Instant, Instant),
) -> Worker {
    let mut w = Worker {
        hist: stats::micros(),
        measured: 0,
        total: 0,
        failures: Failures::default(),
    };
    let mut sender: Option<Sender> = None;
    while Instant::now() < to {
        let s = match client::live_sender(&mut sender, addr).await {
            Ok(s) => s,
            Err(f) => {
                w.failures.add(f);
                // Do not spin on a refusing system.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let t0 = Instant::now();
        let res = client::exchange_timed(s, (*template).clone()).await;
        let t1 = Instant::now();
        let in_window = t1 >= from && t1 <= to;
        match res {
            Ok(()) => {
                w.total += 1;
                if in_window {
                    w.measured += 1;
                    stats::record_us(&mut w.hist, t1 - t0);
                }
            }
            Err(Failure::Stale) => sender = None,
            Err(f) => {
                if in_window || t1 < from {
                    w.failures.add(f);
                }
                if !matches!(f, Failure::Status(_)) {
                    sender = None;
                }
            }
        }
    }
    w
}
