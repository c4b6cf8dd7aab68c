//! Child processes of the bench: spawned with their output in a log file, tied to the bench's
//! life, stopped by PID when dropped (so also on panic), and polled for readiness.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::procstat;

/// How a process is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL at once: nothing to flush (the gateway's graceful drain would only cost seconds).
    Kill,
    /// SIGTERM to a master process, which stops its workers; after a bounded wait, SIGKILL the
    /// master and whatever workers are left (nginx: killing only the master orphans the workers).
    TermTree,
}

/// A running child process; stopped when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    stop: Stop,
}

impl Proc {
    /// Start `cmd` with stdin closed and stdout+stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path, stop: Stop) -> Result<Proc, String> {
        let out =
            File::create(log).map_err(|e| format!("{name}: create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{name}: dup log file: {e}"))?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the new process.
        // Why: if the bench itself is killed (SIGKILL, OOM), its Drop guards never run; the
        // kernel then kills the child. It is tied to the spawning thread, which is the bench's
        // main thread and lives until the end.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("{name}: cannot start {:?}: {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            stop,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Err` (with the end of its log) when the process has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}); end of its log:\n{}",
                self.name,
                self.log_tail(20)
            )),
            Err(e) => Err(format!("{}: cannot check its status: {e}", self.name)),
        }
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines that look like warnings or errors (env_logger's `WARN`/`ERROR`, nginx's
    /// `[warn]`..`[emerg]`): how many, and the first (shortened). The gateway's access log
    /// lines (JSON objects, with an `error` field) are not log records.
    pub fn log_problems(&self) -> (usize, Option<String>) {
        const LEVELS: [&str; 5] = ["warn", "error", "crit", "alert", "emerg"];
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut hits = text.lines().filter(|l| {
            let l = l.to_ascii_lowercase();
            !l.starts_with('{') && LEVELS.iter().any(|w| l.contains(w))
        });
        let first = hits.next().map(|l| l.chars().take(200).collect());
        (first.iter().count() + hits.count(), first)
    }

    fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.pid();
        if self.stop == Stop::TermTree {
            // Remember each worker with its start time: a PID alone may be reused after exit.
            let workers: Vec<(u32, Option<u64>)> = procstat::children(pid)
                .into_iter()
                .map(|w| (w, procstat::start_time(w)))
                .collect();
            // SAFETY: signals our own child by its PID (not yet reaped, so not reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            if !self.wait_exit(Duration::from_secs(5)) {
                let _ = self.child.kill();
            }
            for (w, started) in workers {
                if started.is_some() && procstat::start_time(w) == started {
                    // SAFETY: the same process we saw as a worker (same PID and start time).
                    unsafe { libc::kill(w as libc::pid_t, libc::SIGKILL) };
                }
            }
        } else {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A port on 127.0.0.1 that was free a moment ago (the OS picks it; the small race with other
/// programs is acceptable for a bench).
pub fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("local_addr: {e}"))
}

/// Poll `GET path` on `addr` until it answers 200, the process exits, or `within` passes.
pub fn wait_ready(
    proc: &mut Proc,
    addr: SocketAddr,
    path: &str,
    within: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::from("no answer yet");
    while start.elapsed() < within {
        proc.check_alive()?;
        match http_get_status(addr, path) {
            Ok(200) => return Ok(()),
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "{} not ready on http://{addr}{path} after {within:?} ({last}); end of its log:\n{}",
        proc.name,
        proc.log_tail(20)
    ))
}

/// A minimal blocking `GET`, enough to read a status code; every step has a timeout.
pub fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let timeout = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| format!("socket timeouts: {e}"))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    // Bounded: at most 64 bytes, each read either makes progress or ends the loop.
    while n < buf.len() {
        match s.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("read: {e}")),
        }
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))
}
