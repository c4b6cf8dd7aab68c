//! Noticing that the client has gone while the gateway waits on something else.
//!
//! Pingora notices a closed client itself while it proxies, but not while a large-body
//! subrequest pipe waits for the upstream's answer (the pipe does not read the client). This
//! watches a duplicate of the client's socket for the peer's FIN or RST, without consuming
//! any bytes, so the upstream request can be dropped at once.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub struct ClientWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ClientWatch {
    /// A watch on the session's client socket, when it has one that can be watched.
    pub fn of(session: &Session) -> Option<ClientWatch> {
        let stream = session.as_downstream().stream()?;
        ClientWatch::new(stream.id()).ok()
    }

    /// Watch the socket `fd` (which stays owned by its session; a duplicate is watched).
    pub fn new(fd: RawFd) -> io::Result<ClientWatch> {
        // SAFETY: dup of a socket the session keeps open for the duration of the call.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `dup` is a new descriptor that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(dup) };
        // SAFETY: the OwnedFd keeps the descriptor open, and referring to the same socket,
        // for as long as the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        Ok(ClientWatch { fd })
    }

    /// Resolves once the client has closed or reset its connection. Bytes the client sends
    /// meanwhile (a pipelined next request) are left in place for the session.
    pub async fn closed(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return;
            };
            let mut probe = [0u8; 1];
            // SAFETY: a 1-byte peek into a stack buffer on a socket we own a duplicate of.
            let n = unsafe {
                libc::recv(
                    guard.get_inner().as_raw_fd(),
                    probe.as_mut_ptr().cast(),
                    1,
                    libc::MSG_PEEK | libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return,                       // FIN
                n if n > 0 => guard.clear_ready(), // data waiting: not a close; wait for more
                _ => match io::Error::last_os_error().kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => guard.clear_ready(),
                    _ => return, // reset or other socket error: the client is gone
                },
            }
        }
    }
}

/// Runs `work` unless the client watched by `watch` goes away first (then a downstream
/// `ConnectionClosed` error). Without a watch, `work` simply runs.
pub async fn unless_gone<T>(
    watch: Option<&ClientWatch>,
    work: impl Future<Output = T>,
) -> Result<T> {
    let Some(watch) = watch else {
        return Ok(work.await);
    };
    tokio::select! {
        done = work => Ok(done),
        () = watch.closed() => {
            Err(Error::explain(ErrorType::ConnectionClosed, "the client went away").into_down())
        }
    }
}
