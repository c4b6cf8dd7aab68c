//! Latency histograms (HDR: fixed relative precision over a wide range, cheap to record and
//! to merge across connections).

use std::time::Duration;

use hdrhistogram::Histogram;

/// Values in microseconds, 1 µs .. 120 s, 3 significant digits.
pub fn micros() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("constant histogram bounds are valid")
}

/// Values in nanoseconds, 1 ns .. 60 s, 3 significant digits (the concurrency-1 point, where
/// the differences between systems are tens of microseconds).
pub fn nanos() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid")
}

/// Record `d` in microseconds (saturating at the histogram's top).
pub fn record_us(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_micros() as u64).max(1));
}

/// Record `d` in nanoseconds (saturating at the histogram's top).
pub fn record_ns(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record((d.as_nanos() as u64).max(1));
}

/// The median of the values present (the upper one of an even count), or `None` if none is.
pub fn median<T: Ord + Copy>(values: impl IntoIterator<Item = Option<T>>) -> Option<T> {
    let mut v: Vec<T> = values.into_iter().flatten().collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied()
}

/// The value at percentile `p` (0..100), or `None` for an empty histogram.
pub fn pct(h: &Histogram<u64>, p: f64) -> Option<u64> {
    (!h.is_empty()).then(|| h.value_at_percentile(p))
}
