//! The access log: one JSON line per request, to stdout or a file, written by a thread of its
//! own so the request path only formats a line and queues it (never a write syscall, never a
//! lock held across an await). The writer wakes every `FLUSH_EVERY` and writes what is queued
//! in one batch: it never sleeps in the queue, so queueing a line never has to wake it (a
//! futex wake-up and a task switch per request cost about 15% of the throughput). When it
//! falls behind by more than the queue holds, lines are dropped and counted, rather than
//! slowing requests down.
//!
//! Never keys, never bodies, never query strings (they may carry credentials).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::usage::Tokens;

/// Where the lines go (`access_log:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(PathBuf),
}

/// Lines queued for the writer at most: 0.2 s of 80,000 requests per second.
const QUEUE: usize = 16 * 1024;
/// How often the writer writes what is queued (the most a line waits).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

struct Log {
    tx: SyncSender<String>,
    dropped: AtomicU64,
}

static LOG: OnceLock<Log> = OnceLock::new();

/// Start the writer (once per process). A file is opened for appending now, so a bad path is
/// an error at start-up, not a silent loss.
pub fn start(target: &Target) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match target {
        Target::Off => return Ok(()),
        Target::Stdout => Box::new(std::io::stdout()),
        Target::File(p) => Box::new(OpenOptions::new().create(true).append(true).open(p)?),
    };
    let (tx, rx) = sync_channel::<String>(QUEUE);
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            let mut out = BufWriter::with_capacity(64 * 1024, out);
            // Runs for the life of the process (the sender is in a static): each turn writes
            // what is queued, at most the queue's length.
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let mut wrote = false;
                loop {
                    match rx.try_recv() {
                        Ok(line) => {
                            let _ = out.write_all(line.as_bytes());
                            wrote = true;
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => return,
                    }
                }
                if wrote {
                    let _ = out.flush();
                }
            }
        })?;
    let _ = LOG.set(Log {
        tx,
        dropped: AtomicU64::new(0),
    });
    Ok(())
}

/// Whether lines are being written (format nothing otherwise).
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// One request, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub time: String,
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

/// Queue one line (dropped, and counted, if the writer is that far behind).
pub fn write(entry: &Entry<'_>) {
    let Some(log) = LOG.get() else {
        return;
    };
    let mut line = match serde_json::to_string(entry) {
        Ok(l) => l,
        Err(e) => {
            log::error!("access log: cannot format a line: {e}");
            return;
        }
    };
    line.push('\n');
    if let Err(TrySendError::Full(_)) = log.tx.try_send(line) {
        let dropped = log.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            log::warn!("access log: the writer is behind; {dropped} line(s) dropped so far");
        }
    }
}

/// Milliseconds, for the log.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `2026-11-26T13:05:09.123Z`.
pub fn now_rfc3339() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
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
        let t = now_rfc3339();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z'));
    }

    #[test]
    fn entries_are_one_json_line() {
        let e = Entry {
            time: now_rfc3339(),
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
