//! A request's upstream deadlines that Pingora cannot express: it has one timeout for every
//! read, so it cannot give the response head (time to first byte) a different limit than the
//! gaps between body chunks, and it has no limit on a whole response. When an endpoint's
//! `timeouts:` need either, the request gets a watchdog: a task that sleeps until the next
//! deadline and, if it passed, shuts the upstream socket down, so Pingora's read ends at once
//! and the request fails (over to another endpoint when nothing reached the client yet).
//!
//! The task holds a duplicate of the socket's descriptor, never the number Pingora owns (that
//! number may be closed and reused by another connection at any time). It ends when the
//! request does, dropping the duplicate, so the socket closes when Pingora closes it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::endpoint::Timeouts;

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    FirstByte,
    Idle,
    Total,
}

impl Expired {
    /// For the client's error message, with the limit that passed.
    pub fn describe(self, t: &Timeouts) -> String {
        let (what, limit) = match self {
            Expired::FirstByte => ("no response head", t.first_byte),
            Expired::Idle => ("no data", t.idle),
            Expired::Total => ("the response did not end", t.total.unwrap_or_default()),
        };
        format!("{what} within {:.1} s", limit.as_secs_f64())
    }
}

#[derive(Debug)]
struct State {
    started: Instant,
    /// Milliseconds after `started` of the response head (0: not yet) and of the latest chunk.
    head_ms: AtomicU64,
    last_ms: AtomicU64,
    done: AtomicBool,
    /// 0: none; else `Expired` as 1 + its index.
    expired: AtomicU8,
    wake: Notify,
}

impl State {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX / 4) + 1
    }

    /// The next deadline (ms after `started`) and which one it is.
    fn next_deadline(&self, t: &Timeouts) -> (u64, Expired) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let head = self.head_ms.load(Ordering::Acquire);
        let (at, which) = if head == 0 {
            (ms(t.first_byte), Expired::FirstByte)
        } else {
            (
                self.last_ms.load(Ordering::Acquire) + ms(t.idle),
                Expired::Idle,
            )
        };
        match t.total.map(ms) {
            Some(total) if total <= at => (total, Expired::Total),
            _ => (at, which),
        }
    }
}

/// The watchdog of one attempt. Dropping it ends the task.
#[derive(Debug)]
pub struct Watchdog {
    state: Arc<State>,
}

impl Watchdog {
    /// Watch the upstream socket `fd` with these timeouts (`None` if its descriptor cannot be
    /// duplicated: Pingora's read timeout still applies).
    pub fn arm(fd: RawFd, timeouts: Timeouts) -> Option<Watchdog> {
        // SAFETY: `dup` on a descriptor Pingora holds open for this call; the result is a new
        // descriptor owned by the `OwnedFd` (closed when it drops).
        let socket = unsafe {
            let dup = libc::dup(fd);
            if dup < 0 {
                return None;
            }
            OwnedFd::from_raw_fd(dup)
        };
        let state = Arc::new(State {
            started: Instant::now(),
            head_ms: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
            done: AtomicBool::new(false),
            expired: AtomicU8::new(0),
            wake: Notify::new(),
        });
        tokio::spawn(watch(state.clone(), socket, timeouts));
        Some(Watchdog { state })
    }

    /// The response head arrived: the idle deadline replaces the first-byte one, and may be
    /// sooner, so the task looks again. (Chunks only move deadlines later: no wake-up.)
    pub fn head(&self) {
        let now = self.state.now_ms();
        self.state.last_ms.store(now, Ordering::Release);
        self.state.head_ms.store(now, Ordering::Release);
        self.state.wake.notify_one();
    }

    /// A body chunk arrived.
    pub fn chunk(&self) {
        self.state
            .last_ms
            .store(self.state.now_ms(), Ordering::Release);
    }

    /// The response ended: nothing more to watch.
    pub fn finish(&self) {
        self.state.done.store(true, Ordering::Release);
        self.state.wake.notify_one();
    }

    /// The deadline that cut the attempt, if one did.
    pub fn expired(&self) -> Option<Expired> {
        match self.state.expired.load(Ordering::Acquire) {
            1 => Some(Expired::FirstByte),
            2 => Some(Expired::Idle),
            3 => Some(Expired::Total),
            _ => None,
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Sleep to the next deadline; when it has passed (and was not moved by a chunk), shut the
/// socket down. Bounded: each turn either ends or sleeps until a later deadline.
async fn watch(state: Arc<State>, socket: OwnedFd, t: Timeouts) {
    loop {
        let (at, _) = state.next_deadline(&t);
        let now = state.now_ms();
        if now < at {
            tokio::select! {
                () = pingora::time::sleep(Duration::from_millis(at - now)) => {}
                () = state.wake.notified() => {}
            }
        }
        if state.done.load(Ordering::Acquire) {
            return;
        }
        let (at, which) = state.next_deadline(&t);
        if state.now_ms() < at {
            continue; // a chunk moved the deadline
        }
        let code = match which {
            Expired::FirstByte => 1,
            Expired::Idle => 2,
            Expired::Total => 3,
        };
        state.expired.store(code, Ordering::Release);
        // SAFETY: shutdown on a descriptor this task owns; it ends the socket's reads and
        // writes for every descriptor of it, which is the point.
        unsafe {
            libc::shutdown(socket.as_raw_fd(), libc::SHUT_RDWR);
        }
        return;
    }
}
