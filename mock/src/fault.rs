//! Runtime fault injection of the mock upstream: the [`Fault`] kinds, and the per-connection
//! plumbing that lets a response body reset its own TCP connection (SO_LINGER 0, then drop).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A misbehaviour applied to inference requests: every POST. Discovery GETs (`/v1/models`,
/// `/v1/dnt/table`) and any other GET are never affected, so a faulty mock stays discoverable
/// and tests exercise the gateway's failover rather than its discovery.
///
/// A set fault wins over the `x-mock-status` request header; `x-mock-delay-ms` still delays
/// `Status` and `OcfError` answers, and `x-mock-events` / `x-mock-interval-ms` still shape the
/// stream that `ResetAfter` / `StallAfter` cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Read the whole request, then never answer; keep the connection open until the client
    /// closes it (then it is recorded in [`super::MockServer::abandoned`]).
    Hang,
    /// Answer `status` with an OpenAI error JSON body (like `x-mock-status`), plus
    /// `Retry-After: <secs>` when `retry_after` is set. A status outside 200..=599 answers 500.
    Status {
        status: u16,
        retry_after: Option<u64>,
    },
    /// Send the normal response head and the first `events` SSE content events (non-streaming:
    /// the head with the full Content-Length and only the first half of the body), then reset
    /// the connection with a TCP RST.
    ResetAfter { events: usize },
    /// Like `ResetAfter`, but then stall: send nothing more and keep the connection open until
    /// the client closes it.
    StallAfter { events: usize },
    /// Answer 200 `text/plain; charset=utf-8` with `ERROR: forward to peer failed`, which is
    /// what an OCF head sends when its forward to a peer failed.
    OcfError,
    /// Answer `status` with this JSON body (an upstream's own error wording: a context window
    /// exceeded, a content policy refusal).
    Reply { status: u16, body: String },
    /// Read the whole request, then reset the connection (TCP RST) without a response byte.
    ResetBeforeHead,
}

/// The body an OCF head answers (with status 200) when its forward to a peer failed.
pub(crate) const OCF_ERROR_BODY: &str = "ERROR: forward to peer failed";

/// Per-connection state shared by the connection's IO and the bodies it sends.
#[derive(Debug, Default)]
pub(crate) struct ConnCtl {
    /// Set by a body that wants its connection reset; read when the socket is dropped.
    reset: AtomicBool,
}

impl ConnCtl {
    /// Make the socket send a RST instead of a FIN when the connection is dropped.
    pub(crate) fn request_reset(&self) {
        self.reset.store(true, Ordering::SeqCst);
    }

    fn reset_requested(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }
}

/// The TCP stream of one mock connection (under TLS, when on). Sets SO_LINGER 0 just before the
/// socket is closed when a body asked for a reset: the kernel then sends a RST. It is set at
/// close time only, because with SO_LINGER 0 any close, even a normal one, would be a RST.
pub(crate) struct ConnIo {
    tcp: TcpStream,
    ctl: Arc<ConnCtl>,
}

impl ConnIo {
    pub(crate) fn new(tcp: TcpStream, ctl: Arc<ConnCtl>) -> Self {
        ConnIo { tcp, ctl }
    }
}

impl Drop for ConnIo {
    fn drop(&mut self) {
        if self.ctl.reset_requested() {
            if let Err(e) = self.tcp.set_zero_linger() {
                log::debug!("mock: could not set SO_LINGER 0 for a reset: {e}");
            }
        }
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

/// What a cut body does once it has sent what the fault allows.
pub(crate) enum CutTail {
    /// Reset the connection (see [`ConnCtl`]).
    Reset(Arc<ConnCtl>),
    /// Send nothing more, never finish; hyper drops the body when the client goes away.
    Stall,
}

/// The end of a body cut short by `ResetAfter` / `StallAfter`.
pub(crate) struct Cut {
    tail: CutTail,
    /// The body returned `Pending` once at the cut so hyper flushed what came before.
    flushed: bool,
}

impl Cut {
    pub(crate) fn new(tail: CutTail) -> Self {
        Cut {
            tail,
            flushed: false,
        }
    }

    /// Poll the body at its cut. Yields once first so hyper writes the head and every frame
    /// before it to the socket: a RST discards whatever is still unsent. Then stalls forever, or
    /// fails the body so hyper drops the connection (and its socket, which then sends the RST).
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if !self.flushed {
            self.flushed = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        match &self.tail {
            CutTail::Stall => Poll::Pending,
            CutTail::Reset(ctl) => {
                ctl.request_reset();
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "mock fault: connection reset (ResetAfter)",
                ))))
            }
        }
    }
}
