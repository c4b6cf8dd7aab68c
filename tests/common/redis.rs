//! A real `redis-server` as a child process for the shared-limits tests: a free loopback port,
//! no persistence, a temp dir, readiness by `PING`, SIGKILL and restart on the same port,
//! SIGSTOP/SIGCONT (a hung server), and a raw RESP client for assertions.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::free_port;

/// The Debian package's server binary.
pub const REDIS_SERVER: &str = "/usr/bin/redis-server";

/// Bound on waiting for a started server to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Bound on one command of [`RedisServer::cmd`] (connect, write, read).
const CMD_TIMEOUT: Duration = Duration::from_secs(5);

const POLL_EVERY: Duration = Duration::from_millis(10);

/// A reply of the RESP2 protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text: a simple or bulk string (lossy UTF-8), an integer, or an error as
    /// `ERR ...`; `None` for nulls and arrays.
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) | Reply::Error(s) => Some(s.clone()),
            Reply::Int(i) => Some(i.to_string()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Reply::Bulk(None) | Reply::Array(_) => None,
        }
    }

    /// The elements of an array reply, as text (empty for anything else).
    pub fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(Some(items)) => items.iter().filter_map(Reply::text).collect(),
            _ => Vec::new(),
        }
    }
}

/// A `redis-server` child on `127.0.0.1:<port>`. Dropping it kills the process (SIGKILL, by PID);
/// if the test is panicking, the server's log is printed to stderr first.
pub struct RedisServer {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// How many times the server was started (each start has its own log file).
    starts: u32,
}

impl RedisServer {
    /// Start on a free port and wait until it answers `PING`.
    pub async fn start() -> RedisServer {
        assert!(
            std::path::Path::new(REDIS_SERVER).exists(),
            "{REDIS_SERVER} is missing: run scripts/install-deps.sh (it installs redis-server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("ai-proxy-redis-")
            .tempdir()
            .expect("create temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            starts: 0,
        };
        server.spawn_and_wait().await;
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The PID of the running server, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the server wrote to its logs so far, every start in order.
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("--- restarted ---\n")
    }

    fn log_path(&self, start: u32) -> PathBuf {
        self.dir.path().join(format!("redis-{start}.log"))
    }

    async fn spawn_and_wait(&mut self) {
        assert!(self.child.is_none(), "redis-server already runs");
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).expect("create redis log");
        let child = Command::new(REDIS_SERVER)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot spawn {REDIS_SERVER}: {e} (scripts/install-deps.sh installs it)")
            });
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Poll `PING` until `+PONG` (bounded); panics with the log if the server exits or never
    /// answers.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no attempt");
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "redis-server exited ({status}) before answering PING on port {}; last: {last}\n--- redis log ---\n{}",
                    self.port,
                    self.logs()
                );
            }
            match ping(self.port).await {
                Ok(()) => return,
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                panic!(
                    "redis-server not answering PING on port {} after {READY_TIMEOUT:?}; last: {last}\n--- redis log ---\n{}",
                    self.port,
                    self.logs()
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// SIGKILL the server by its PID and wait for it to exit (nothing when it is not running).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
                // SAFETY: kill(2) with our own child's PID, which we have not reaped yet, so
                // it cannot have been reused.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            let _ = child.wait();
        }
    }

    /// SIGSTOP the server: it keeps its port and connections but answers nothing until
    /// [`RedisServer::resume`] (a hung Redis, not a dead one).
    pub fn pause(&self) {
        self.send(libc::SIGSTOP);
    }

    /// SIGCONT a paused server.
    pub fn resume(&self) {
        self.send(libc::SIGCONT);
    }

    fn send(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) with our own, unreaped child's PID.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            rc,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    /// Start the server again on the same port (empty: nothing is persisted) and wait until it
    /// answers `PING`.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_and_wait().await;
    }

    /// Run one command on a fresh connection, e.g. `cmd(&["KEYS", "*"])`. A Redis error reply
    /// is returned as `Ok(Reply::Error(..))`; `Err` is a transport or protocol failure.
    pub async fn cmd(&self, args: &[&str]) -> Result<Reply, String> {
        command(self.port, args).await
    }

    /// The names of every key in the server (`KEYS *`), sorted; panics on failure.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = self
            .cmd(&["KEYS", "*"])
            .await
            .unwrap_or_else(|e| panic!("KEYS *: {e}"))
            .strings();
        keys.sort();
        keys
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- redis log (port {}) ---\n{}", self.port, self.logs());
        }
    }
}

async fn ping(port: u16) -> Result<(), String> {
    match command(port, &["PING"]).await? {
        Reply::Simple(s) if s == "PONG" => Ok(()),
        other => Err(format!("PING answered {other:?}")),
    }
}

/// One command over a fresh TCP connection to `127.0.0.1:port`, bounded by [`CMD_TIMEOUT`].
pub async fn command(port: u16, args: &[&str]) -> Result<Reply, String> {
    let fut = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        tcp.write_all(&encode(args))
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, _)) = parse(&buf)? {
                return Ok(reply);
            }
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "connection closed after {} bytes of a reply",
                    buf.len()
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(CMD_TIMEOUT, fut)
        .await
        .map_err(|_| format!("{args:?}: no reply within {CMD_TIMEOUT:?}"))?
}

/// A command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply from the start of `buf` and its length; `None` when `buf` holds only part of one.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > 16 {
        return Err("reply nested too deep".into());
    }
    let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[at + 1..at + eol]).into_owned();
    let next = at + eol + 2;
    let int = |s: &str| {
        s.parse::<i64>()
            .map_err(|e| format!("bad number {s:?}: {e}"))
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(line), next))),
        b'-' => Ok(Some((Reply::Error(line), next))),
        b':' => Ok(Some((Reply::Int(int(&line)?), next))),
        b'$' => {
            let len = int(&line)?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), next)));
            }
            let end = next + usize::try_from(len).map_err(|e| e.to_string())?;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let len = int(&line)?;
            if len < 0 {
                return Ok(Some((Reply::Array(None), next)));
            }
            let mut items = Vec::new();
            let mut pos = next;
            for _ in 0..len {
                match parse_at(buf, pos, depth + 1)? {
                    Some((item, after)) => {
                        items.push(item);
                        pos = after;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), pos)))
        }
        other => Err(format!("unknown RESP type byte {other:#04x}")),
    }
}
