//! The kernel's listen queues: a listener's backlog, and the machine-wide count of overflows.
//!
//! Why it matters: a connection arriving at a full accept queue is dropped and its SYN retried
//! after 1 s, which would show up in a proxy's numbers although the queue is the mock's. The
//! mock listens with mio's default backlog, 128; the stream point keeps the connects in flight
//! below the backlog it finds here.

use std::net::SocketAddr;
use std::process::Command;

/// The backlog (`ss`'s Send-Q of a listening socket) of the listener on `addr`, if `ss` is
/// there to tell.
pub fn listen_backlog(addr: SocketAddr) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", addr.port())])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "LISTEN 0 128 127.0.0.1:PORT 0.0.0.0:*": state, Recv-Q, Send-Q (the backlog), local.
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() >= 4 && f[3] == addr.to_string())
        .and_then(|f| f[2].parse().ok())
}

/// The kernel's count of listen-queue overflows (`TcpExt: ListenOverflows` in
/// /proc/net/netstat): connections dropped because an accept queue was full. Machine-wide.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    // Pairs of lines: "TcpExt: Name1 Name2 ..." then "TcpExt: value1 value2 ...".
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let i = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The stream ramp's window for a mock with this backlog: three quarters of it (the rest is
/// headroom for other connects), at least 16, and 128's worth when the backlog is unknown.
pub fn stream_window(backlog: Option<u32>) -> usize {
    let b = backlog.unwrap_or(128) as usize;
    (b * 3 / 4).clamp(16, 4096)
}
