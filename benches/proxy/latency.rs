//! Point 1: latency at concurrency 1. One keep-alive connection, requests one after another,
//! so each sample is the full round trip through the system with nothing queued ahead of it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::Request;

use crate::client::{self, Failure, Failures, ReqBody, Sender};
use crate::stats;

#[derive(Clone, Debug, Default)]
pub struct LatencyResult {
    pub samples: u64,
    pub p50_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub p999_ns: Option<u64>,
    pub failures: Failures,
}

impl LatencyResult {
    /// Several rounds as one: each percentile's median; samples and failures added up.
    pub fn median_of(rounds: &[LatencyResult]) -> LatencyResult {
        let mut out = LatencyResult {
            samples: rounds.iter().map(|r| r.samples).sum(),
            p50_ns: stats::median(rounds.iter().map(|r| r.p50_ns)),
            p99_ns: stats::median(rounds.iter().map(|r| r.p99_ns)),
            p999_ns: stats::median(rounds.iter().map(|r| r.p999_ns)),
            failures: Failures::default(),
        };
        for r in rounds {
            out.failures.merge(&r.failures);
        }
        out
    }
}

/// Whole-point bound: even if every request times out, the point ends.
const POINT_LIMIT: Duration = Duration::from_secs(120);

pub async fn run(
    addr: SocketAddr,
    template: &Request<ReqBody>,
    warmup: usize,
    requests: usize,
) -> LatencyResult {
    let mut hist = stats::nanos();
    let mut out = LatencyResult::default();
    let mut sender: Option<Sender> = None;
    let start = Instant::now();
    let wanted = warmup + requests;
    let mut done = 0;
    // Bounded: twice the requests wanted (a stale connection costs a step) and POINT_LIMIT.
    for _ in 0..2 * wanted {
        if done == wanted || start.elapsed() > POINT_LIMIT {
            break;
        }
        let s = match client::live_sender(&mut sender, addr).await {
            Ok(s) => s,
            Err(f) => {
                out.failures.add(f);
                continue;
            }
        };
        let req = template.clone();
        let t0 = Instant::now();
        let res = client::exchange_timed(s, req).await;
        let took = t0.elapsed();
        match res {
            // Resend on a fresh connection.
            Err(Failure::Stale) => sender = None,
            Ok(()) => {
                done += 1;
                if done > warmup {
                    stats::record_ns(&mut hist, took);
                    out.samples += 1;
                }
            }
            Err(f) => {
                // A failed request counts as done: the point must not retry forever.
                done += 1;
                out.failures.add(f);
                sender = None;
            }
        }
    }
    out.p50_ns = stats::pct(&hist, 50.0);
    out.p99_ns = stats::pct(&hist, 99.0);
    out.p999_ns = stats::pct(&hist, 99.9);
    out
}
