//! The access log: one JSON line per request, to stdout or a file. The request path formats
//! its line straight into the pending lines of its own thread, under that thread's mutex,
//! which no other request thread takes (never a write syscall, never an allocation once warm,
//! never a cache line shared with another request thread, never a lock held across an await).
//! A writer thread of its own takes each thread's lines every `FLUSH_EVERY` and writes them in
//! one go; it never sleeps on the lines, so adding one never has to wake it (a futex wake-up
//! and a task switch per request cost about 15% of the throughput). Lines are in time order
//! per request thread, and within `FLUSH_EVERY` across threads. When the writer falls behind
//! by more than `MAX_PENDING` on a thread, its lines are dropped and counted rather than
//! slowing requests down.
//!
//! Never keys, never bodies, never query strings (they may carry credentials).

use std::cell::OnceCell;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::state::clock::civil_from_days;
use crate::usage::Tokens;

/// Where the lines go (`access_log:` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Off,
    Stdout,
    File(PathBuf),
}

/// Bytes of one thread's lines waiting for the writer at most: about 0.2 s of 40,000 requests
/// per second.
const MAX_PENDING: usize = 2 << 20;
/// How often the writer writes what is pending (the most a line waits).
const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// One request thread's lines not written yet.
type Pending = Arc<Mutex<Vec<u8>>>;

struct Log {
    /// Every request thread's pending lines (a thread adds its own on its first line).
    threads: Mutex<Vec<Pending>>,
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
        threads: Mutex::new(Vec::new()),
        dropped: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            // Swapped with a thread's pending lines, so both keep their capacity.
            let mut batch = Vec::with_capacity(64 * 1024);
            // Runs for the life of the process.
            loop {
                std::thread::sleep(FLUSH_EVERY);
                let threads = lock(&log.threads).clone();
                for pending in &threads {
                    std::mem::swap(&mut *lock(pending), &mut batch);
                    if !batch.is_empty() {
                        let _ = out.write_all(&batch);
                        batch.clear();
                    }
                }
                let _ = out.flush();
            }
        })?;
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether lines are being written (format nothing otherwise).
pub fn enabled() -> bool {
    LOG.get().is_some()
}

/// One request, as logged.
#[derive(Debug)]
pub struct Entry<'a> {
    pub time: Timestamp,
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    /// The client key's name (never the key).
    pub key: Option<&'a str>,
    pub model: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub status: u16,
    pub attempts: usize,
    /// The classes of the failures that led to a retry, in order (`["429","500"]`).
    pub retries: &'a [&'static str],
    /// Logged as `ttfb_ms`, milliseconds with 3 decimals.
    pub ttfb: Option<Duration>,
    /// Logged as `duration_ms`.
    pub duration: Option<Duration>,
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
        static PENDING: OnceCell<Pending> = const { OnceCell::new() };
    }
    PENDING.with(|cell| {
        let pending = cell.get_or_init(|| {
            let mine = Pending::default();
            lock(&log.threads).push(mine.clone());
            mine
        });
        let mut lines = lock(pending);
        let start = lines.len();
        format_line(entry, &mut lines);
        if lines.len() <= MAX_PENDING {
            return;
        }
        lines.truncate(start);
        drop(lines);
        let dropped = log.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            log::warn!("access log: the writer is behind; {dropped} line(s) dropped so far");
        }
    });
}

/// Append `entry` as one JSON line. Written by hand rather than by serde: the keys are
/// constants, and this runs once per request (serde's generic path cost twice as much).
pub fn format_line(e: &Entry<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(e.time.as_str().as_bytes());
    out.extend_from_slice(b"\",\"request_id\":");
    string(out, e.request_id);
    out.extend_from_slice(b",\"method\":");
    string(out, e.method);
    out.extend_from_slice(b",\"path\":");
    string(out, e.path);
    out.extend_from_slice(b",\"key\":");
    optional(out, e.key, string);
    out.extend_from_slice(b",\"model\":");
    optional(out, e.model, string);
    out.extend_from_slice(b",\"endpoint\":");
    optional(out, e.endpoint, string);
    out.extend_from_slice(b",\"status\":");
    integer(out, u64::from(e.status));
    out.extend_from_slice(b",\"attempts\":");
    integer(out, e.attempts as u64);
    out.extend_from_slice(b",\"retries\":[");
    for (i, class) in e.retries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, class);
    }
    out.extend_from_slice(b"]");
    out.extend_from_slice(b",\"ttfb_ms\":");
    optional(out, e.ttfb, milliseconds);
    out.extend_from_slice(b",\"duration_ms\":");
    optional(out, e.duration, milliseconds);
    out.extend_from_slice(b",\"bytes_in\":");
    integer(out, e.bytes_in as u64);
    out.extend_from_slice(b",\"bytes_out\":");
    integer(out, e.bytes_out as u64);
    out.extend_from_slice(b",\"tokens\":");
    optional(out, e.tokens, |out, t| {
        out.extend_from_slice(b"{\"prompt\":");
        integer(out, t.prompt);
        out.extend_from_slice(b",\"completion\":");
        integer(out, t.completion);
        out.push(b'}');
    });
    out.extend_from_slice(b",\"error\":");
    optional(out, e.error, string);
    out.extend_from_slice(b"}\n");
}

fn optional<T>(out: &mut Vec<u8>, v: Option<T>, write: impl FnOnce(&mut Vec<u8>, T)) {
    match v {
        Some(v) => write(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: as it is when nothing in it needs escaping (the usual case), else escaped.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null"); // unreachable: a str always serializes
    }
}

fn integer(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Milliseconds with 3 decimals (microseconds, rounded): `12.345`.
fn milliseconds(out: &mut Vec<u8>, d: Duration) {
    let micros = u64::try_from(d.as_nanos().saturating_add(500) / 1000).unwrap_or(u64::MAX);
    integer(out, micros / 1000);
    let frac = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
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
        let (y, m, d) = civil_from_days(days);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut n: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
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
        let mut e = Entry {
            time: Timestamp::at(Duration::from_millis(1_764_162_309_007)),
            request_id: "r-1",
            method: "POST",
            path: "/v1/chat/completions",
            key: None,
            model: Some("m"),
            endpoint: None,
            status: 200,
            attempts: 1,
            retries: &[],
            ttfb: Some(Duration::from_micros(1500)),
            duration: Some(Duration::from_nanos(2_250_499)),
            bytes_in: 10,
            bytes_out: 20,
            tokens: Some(Tokens {
                prompt: 3,
                completion: 0,
            }),
            error: None,
        };
        let mut line = Vec::new();
        format_line(&e, &mut line);
        assert_eq!(
            std::str::from_utf8(&line).unwrap(),
            "{\"time\":\"2025-11-26T13:05:09.007Z\",\"request_id\":\"r-1\",\"method\":\"POST\",\"path\":\"/v1/chat/completions\",\"key\":null,\"model\":\"m\",\"endpoint\":null,\"status\":200,\"attempts\":1,\"retries\":[],\"ttfb_ms\":1.500,\"duration_ms\":2.250,\"bytes_in\":10,\"bytes_out\":20,\"tokens\":{\"prompt\":3,\"completion\":0},\"error\":null}\n"
        );
        // Strings that need escaping are escaped; the line stays one line of JSON.
        e.path = "/a\"b\\c\n";
        e.model = Some("m\u{1}é");
        e.error = Some("model_not_found");
        e.tokens = None;
        e.ttfb = None;
        e.retries = &["429", "500"];
        line.clear();
        format_line(&e, &mut line);
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\\c\n");
        assert_eq!(v["model"], "m\u{1}é");
        assert_eq!(v["error"], "model_not_found");
        assert_eq!(v["ttfb_ms"], serde_json::Value::Null);
        assert_eq!(v["duration_ms"], 2.25);
        assert_eq!(v["retries"], serde_json::json!(["429", "500"]));
    }
}
