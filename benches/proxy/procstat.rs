//! CPU time and resident memory of the processes under test, read from /proc.
//!
//! A "system" may be several processes (nginx: a master and its workers), so every reading
//! takes a list of PIDs and sums. RSS is VmRSS: for several processes the sum counts pages
//! they share more than once (slightly pessimistic for nginx).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The fields of /proc/<pid>/stat after the command name (field 3, `state`, is index 0).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn field(pid: u32, n: usize) -> Option<u64> {
    // Field numbers as in proc(5); index 0 of `stat_fields` is field 3.
    stat_fields(pid)?.get(n - 3)?.parse().ok()
}

/// Direct children of `pid` (one scan of /proc).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| field(p, 4) == Some(u64::from(pid)))
        .collect()
}

/// Start time of `pid` in clock ticks since boot (field 22): with the PID, identifies a process.
pub fn start_time(pid: u32) -> Option<u64> {
    field(pid, 22)
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// User + system CPU seconds used so far by these processes (all their threads).
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .map(|&p| field(p, 14).unwrap_or(0) + field(p, 15).unwrap_or(0))
        .sum();
    ticks as f64 / clock_ticks()
}

/// Sum of VmRSS of these processes, in KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| {
            let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

/// Open file descriptors of these processes (entries of /proc/<pid>/fd).
pub fn open_fds(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).ok())
        .map(|d| d.count() as u64)
        .sum()
}

/// Peaks seen by a [`Sampler`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Peaks {
    pub rss_kib: u64,
    pub fds: u64,
}

/// Samples the RSS and open files of some processes every 100 ms on its own thread and keeps
/// the peaks.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Peaks>>,
}

/// A sampler forgotten (e.g. on panic) stops by itself after this long.
const SAMPLER_MAX: Duration = Duration::from_secs(600);

impl Sampler {
    pub fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            let mut peaks = Peaks::default();
            // Bounded by the stop flag and SAMPLER_MAX.
            loop {
                peaks.rss_kib = peaks.rss_kib.max(rss_kib(&pids));
                peaks.fds = peaks.fds.max(open_fds(&pids));
                if flag.load(Ordering::Relaxed) || start.elapsed() > SAMPLER_MAX {
                    return peaks;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stop sampling; the peaks seen while it ran.
    pub fn finish(mut self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
