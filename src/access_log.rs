//! The access log: one JSON line per request, to stdout or a file. The request path formats
//! its line into a buffer of its thread and appends it to the pending batch under a mutex
//! held for that copy only (never a write syscall, never an allocation once warm, never a lock
//! held across an await). A writer thread of its own takes the batch every `FLUSH_EVERY` and
//! writes it in one go; it never sleeps on the batch, so adding a line never has to wake it (a
//! futex wake-up and a task switch per request cost about 15% of the throughput). When the
//! writer falls behind by more than `MAX_PENDING`, lines are dropped and counted rather than
//! slowing requests down.
//!
//! Never keys, never bodies, never query strings (they may carry credentials).

use std::cell::RefCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

use crate::usage::Tokens;

/// Where the lines go (`access_log:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(PathBuf),
}

/// Bytes of lines waiting for the writer at most: about 0.2 s of 80,000 requests per second.
const MAX_PENDING: usize = 4 << 20;
/// How often the writer writes what is pending (the most a line waits).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

struct Log {
    /// Lines not written yet.
    pending: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

static LOG: OnceLock<Log> = OnceLock::new();

/// Start the writer (once per process). A file is opened for appending now, so a bad path is
/// an error at start-up, not a silent loss.
pub fn start(target: &Target) -> std::io::Result<()> {
    let mut out: Box<dyn Write + Send> = match target {
        Target::Off => return Ok(()),
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
    };
    let log = LOG.get_or_init(|| Log {
        pending: Mutex::new(Vec::with_capacity(64 * 1024)),
        dropped: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            // Swapped with the pending batch each turn, so both keep their capacity.
            let mut batch = Vec::with_capacity(64 * 1024);
            // Runs for the life of the process.
            loop {
                std::thread::sleep(FLUSH_EVERY);
                std::mem::swap(&mut *lock(&log.pending), &mut batch);
                if !batch.is_empty() {
                    let _ = out.write_all(&batch).and_then(|()| out.flush());
                    batch.clear();
                }
            }
        })?;
    Ok(())
}

fn lock(pending: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    pending.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether lines are being written (format nothing otherwise).
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: Timestamp,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub model: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub status: u16,
    pub attempts: usize,
    pub ttfb_ms: Option<f64>,
    pub duration_ms: Option<f64>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    pub tokens: Option<Tokens>,
    pub error: Option<&'a str>,
}

/// Add one line (dropped, and counted, if the writer is that far behind).
pub fn write(entry: &Entry<'_>) {
    let Some(log) = LOG.get() else {
        return;
    };
    thread_local! {
        static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        if let Err(e) = serde_json::to_writer(&mut *line, entry) {
            log::error!("access log: cannot format a line: {e}");
            return;
        }
        line.push(b'\n');
        let mut pending = lock(&log.pending);
        if pending.len() + line.len() <= MAX_PENDING {
            pending.extend_from_slice(line);
            return;
        }
        drop(pending);
        let dropped = log.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            log::warn!("access log: the writer is behind; {dropped} line(s) dropped so far");
        }
    });
}

/// Milliseconds, for the log.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A UTC time as `2026-11-26T13:05:09.123Z`, formatted without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Timestamp([u8; 24]);

impl Timestamp {
    pub fn now() -> Timestamp {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp::at(since)
    }

    /// The time `since` the Unix epoch.
    fn at(since: Duration) -> Timestamp {
        let secs = since.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, u64::try_from(y).unwrap_or(0));
        put(5, 2, u64::from(m));
        put(8, 2, u64::from(d));
        put(11, 2, rem / 3600);
        put(14, 2, rem % 3600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, u64::from(since.subsec_millis()));
        Timestamp(out)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let t = Timestamp::at(Duration::from_millis(1_764_162_309_007));
        assert_eq!(t.as_str(), "2025-11-26T13:05:09.007Z");
        assert_eq!(
            Timestamp::at(Duration::ZERO).as_str(),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(Timestamp::now().as_str().len(), 24);
    }

    #[test]
    fn entries_are_one_json_line() {
        let e = Entry {
            time: Timestamp::now(),
            request_id: "r-1",
            method: "POST",
            path: "/v1/chat/completions",
            model: Some("m"),
            endpoint: None,
            status: 200,
            attempts: 1,
            ttfb_ms: Some(1.5),
            duration_ms: Some(2.25),
            bytes_in: 10,
            bytes_out: 20,
            tokens: None,
            error: None,
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(!s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["endpoint"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 2.25);
    }
}
