//! A latency histogram that request threads update without sharing a cache line: each thread
//! writes its own shard (two relaxed atomic adds per observation), and a scrape sums the
//! shards. The `prometheus` crate's histogram makes every observation update the same few
//! atomics (one a compare-and-swap loop on an `f64` sum), which every request thread then
//! fights over. Rendered in the Prometheus text format next to the registry's metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Shards per histogram: threads beyond this many share shards (still correct, only slower).
const SHARDS: usize = 16;
/// Bucket bounds per histogram, at most (the last bucket, `+Inf`, is extra).
const MAX_BOUNDS: usize = 20;

/// One thread's counts, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; MAX_BOUNDS + 1],
    sum_nanos: AtomicU64,
}

pub struct Histogram {
    name: &'static str,
    help: &'static str,
    /// Upper bounds in seconds (as rendered) and in nanoseconds (as compared).
    bounds: Vec<(f64, u64)>,
    shards: Box<[Shard]>,
}

impl Histogram {
    pub fn new(name: &'static str, help: &'static str, bounds_secs: &[f64]) -> Histogram {
        assert!(
            bounds_secs.len() <= MAX_BOUNDS,
            "too many buckets for {name}"
        );
        assert!(
            bounds_secs.windows(2).all(|w| w[0] < w[1]),
            "{name}: unsorted"
        );
        Histogram {
            name,
            help,
            bounds: bounds_secs
                .iter()
                .map(|&s| (s, Duration::from_secs_f64(s).as_nanos() as u64))
                .collect(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
        }
    }

    pub fn observe(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let bucket = self
            .bounds
            .iter()
            .position(|&(_, bound)| nanos <= bound)
            .unwrap_or(self.bounds.len());
        let shard = &self.shards[this_thread_shard()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        shard.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Append the histogram in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut counts = [0u64; MAX_BOUNDS + 1];
        let mut sum_nanos = 0u64;
        for shard in self.shards.iter() {
            for (n, b) in counts.iter_mut().zip(&shard.buckets) {
                *n += b.load(Ordering::Relaxed);
            }
            sum_nanos = sum_nanos.wrapping_add(shard.sum_nanos.load(Ordering::Relaxed));
        }
        let (name, help) = (self.name, self.help);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, (secs, _)) in self.bounds.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{secs}\"}} {cumulative}");
        }
        cumulative += counts[self.bounds.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", sum_nanos as f64 / 1e9);
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// This thread's shard: threads take shards in turn as they first observe something.
fn this_thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_shards_add_up() {
        let h = Histogram::new("t_seconds", "test", &[0.001, 0.01, 0.1]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: in `le="0.001"`
        let on_other_threads = std::thread::scope(|s| {
            let a = s.spawn(|| h.observe(Duration::from_millis(50)));
            let b = s.spawn(|| h.observe(Duration::from_secs(2)));
            a.join().is_ok() && b.join().is_ok()
        });
        assert!(on_other_threads);
        let mut text = String::new();
        h.render(&mut text);
        assert_eq!(
            text,
            "# HELP t_seconds test\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{le=\"0.001\"} 2\nt_seconds_bucket{le=\"0.01\"} 2\n\
             t_seconds_bucket{le=\"0.1\"} 3\nt_seconds_bucket{le=\"+Inf\"} 4\n\
             t_seconds_sum 2.0515\nt_seconds_count 4\n"
        );
    }
}
