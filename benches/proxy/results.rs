//! What the run measured, per system; filled point by point, read by the report and checks.

use crate::latency::LatencyResult;
use crate::streams::StreamResult;
use crate::throughput::ThroughputResult;

/// A throughput point: request body size and concurrency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub body: usize,
    pub conc: usize,
}

impl Load {
    pub fn label(&self) -> String {
        format!("{}, c={}", size(self.body), self.conc)
    }
}

/// `1 KiB`, `256 KiB`, `1 MiB`, or bytes.
pub fn size(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 && b.is_multiple_of(1 << 20) => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b.is_multiple_of(1 << 10) => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

#[derive(Clone, Debug, Default)]
pub struct SystemResults {
    pub name: &'static str,
    pub is_proxy: bool,
    pub latency: Option<LatencyResult>,
    pub throughput: Vec<(Load, ThroughputResult)>,
    /// By stream count, in the order run.
    pub streams: Vec<StreamResult>,
    /// CPU seconds of the proxy per 10,000 requests, and the point it was read on.
    pub cpu_per_10k: Option<(f64, Load)>,
    pub rss_idle_kib: Option<u64>,
    /// Peak RSS and open files during the largest stream point (with that stream count).
    pub rss_peak_kib: Option<(u64, usize)>,
    pub fds_peak: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Warning/error lines in the proxy's log at the end, and the first of them.
    pub log_problems: Option<(usize, String)>,
    /// Set when the proxy process died during the run.
    pub died: Option<String>,
}

impl SystemResults {
    pub fn new(name: &'static str, is_proxy: bool) -> Self {
        SystemResults {
            name,
            is_proxy,
            ..Self::default()
        }
    }

    pub fn throughput(&self, load: Load) -> Option<&ThroughputResult> {
        self.throughput
            .iter()
            .find(|(l, _)| *l == load)
            .map(|(_, r)| r)
    }

    pub fn stream(&self, n: usize) -> Option<&StreamResult> {
        self.streams.iter().find(|s| s.streams == n)
    }
}
