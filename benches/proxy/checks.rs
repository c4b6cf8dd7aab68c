//! Sanity checks on a run, turned into notes for the report: a load generator that is not
//! clearly faster than the proxies, failures, open-file budgets, proxy log complaints.

use std::time::Duration;

use crate::report::thousands;
use crate::results::{Load, SystemResults};

/// `direct` should beat every proxy by at least this factor, or the load generator (not the
/// proxy) may be what limits the proxies' numbers.
const DIRECT_MARGIN: f64 = 1.15;

pub struct Inputs<'a> {
    pub loads: &'a [(Load, Duration)],
    pub stream_counts: &'a [usize],
    pub stream_length: Duration,
    pub nofile_hard: u64,
    pub stream_window: usize,
    pub cores: usize,
}

pub fn notes(res: &[SystemResults], inp: &Inputs) -> Vec<String> {
    let mut notes = Vec::new();
    let direct = res.iter().find(|s| s.name == "direct");

    for &(load, _) in inp.loads {
        let Some(d) = direct.and_then(|d| d.throughput(load)) else {
            continue;
        };
        for p in res.iter().filter(|s| s.is_proxy) {
            if let Some(r) = p.throughput(load) {
                if d.rps < r.rps * DIRECT_MARGIN {
                    notes.push(format!(
                        "{}: direct ({} req/s) is not clearly above {} ({} req/s): the load \
                         generator and mock share the 2 cores with the proxy, so this point \
                         may understate the gap.",
                        load.label(),
                        thousands(d.rps),
                        p.name,
                        thousands(r.rps)
                    ));
                }
            }
        }
    }

    for &n in inp.stream_counts {
        // All of a point's streams are connected at once; a proxied stream also holds an
        // upstream socket in the proxy while it waits for and reads its answer.
        let need = 2 * n as u64 + 64;
        if need > inp.nofile_hard {
            notes.push(format!(
                "{} streams: with all of them streaming at once a single-process proxy would \
                 need about {} open files, above the hard limit of {} (the bench could \
                 not raise it); {} would fit. nginx spreads them over {} worker processes, each \
                 with its own limit. See \"open files peak\" for what the proxies reached.",
                thousands(n as f64),
                thousands(need as f64),
                thousands(inp.nofile_hard as f64),
                thousands(((inp.nofile_hard.saturating_sub(64)) / 2) as f64),
                inp.cores,
            ));
        }
        for s in res {
            let Some(r) = s.stream(n) else { continue };
            if r.peak_open * 10 < n * 9 {
                notes.push(format!(
                    "{} streams, {}: at most {} were streaming at once (all {} connected; a \
                     stream lasts ~{:.1} s when on time, and the ramp lets at most {} wait for \
                     their response head at once).",
                    thousands(n as f64),
                    s.name,
                    thousands(r.peak_open as f64),
                    thousands(n as f64),
                    inp.stream_length.as_secs_f64(),
                    inp.stream_window,
                ));
            }
            if let Some(d) = direct.and_then(|d| d.stream(n)) {
                if s.is_proxy && r.peak_open * 10 < d.peak_open * 8 {
                    notes.push(format!(
                        "{} streams, {}: the direct path had {} streams going at once, this \
                         proxy {}: its \"added\" TTFB compares unequal loads (it can even be \
                         negative).",
                        thousands(n as f64),
                        s.name,
                        thousands(d.peak_open as f64),
                        thousands(r.peak_open as f64),
                    ));
                }
            }
            if let Some(o) = r.listen_overflows.filter(|&o| o > 0) {
                notes.push(format!(
                    "{} streams, {}: {} listen-queue overflows (dropped SYNs, retried after \
                     1 s) — look at TTFB p99 with that in mind.",
                    thousands(n as f64),
                    s.name,
                    thousands(o as f64)
                ));
            }
        }
    }

    for s in res {
        let mut failed = Vec::new();
        if let Some(l) = &s.latency {
            if l.failures.total() > 0 {
                failed.push(format!("latency: {}", l.failures));
            }
        }
        for (load, r) in &s.throughput {
            if r.failures.total() > 0 {
                failed.push(format!("{}: {}", load.label(), r.failures));
            }
        }
        for r in &s.streams {
            if r.failures.total() > 0 {
                failed.push(format!(
                    "{} streams: {}",
                    thousands(r.streams as f64),
                    r.failures
                ));
            }
        }
        if !failed.is_empty() {
            notes.push(format!("{} failures — {}.", s.name, failed.join("; ")));
        }
        if let Some((count, first)) = &s.log_problems {
            notes.push(format!(
                "{} logged {count} warning/error lines; the first: `{}`",
                s.name,
                first.replace('`', "'")
            ));
        }
        if let Some(why) = &s.died {
            notes.push(format!("{} died during the run: {why}", s.name));
        }
    }
    notes
}
