//! Response bodies of the mock upstream: a full buffer, or a lazily generated SSE stream that paces,
//! flushes and records each event and notices when the connection drops it early.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::shapes::{Completion, Endpoint, SSE_DONE};
use super::{lock, StreamRecord};

/// The body type of every mock response.
pub(crate) enum MockBody {
    Full(Option<Bytes>),
    Sse(Box<SseBody>),
}

impl MockBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        MockBody::Full(Some(b.into()))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            MockBody::Sse(s) => s.poll_next(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Sse(s) => s.phase == Phase::End,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `response.created` (responses API only).
    Created,
    Content(usize),
    Usage,
    /// `[DONE]` or `response.completed`.
    Final,
    End,
}

/// An SSE stream generated one event at a time.
pub(crate) struct SseBody {
    completion: Completion,
    interval: Duration,
    include_usage: bool,
    phase: Phase,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Return `Pending` once after each frame so hyper flushes every event on its own.
    yield_next: bool,
    record: Option<Arc<Mutex<StreamRecord>>>,
    finished: bool,
}

impl SseBody {
    pub(crate) fn new(
        completion: Completion,
        interval: Duration,
        include_usage: bool,
        record: Option<Arc<Mutex<StreamRecord>>>,
    ) -> Self {
        let phase = if completion.endpoint == Endpoint::Responses {
            Phase::Created
        } else {
            Phase::Content(0)
        };
        let mut body = SseBody {
            completion,
            interval,
            include_usage,
            phase,
            sleep: None,
            yield_next: false,
            record,
            finished: false,
        };
        body.phase = body.normalize(body.phase);
        body
    }

    fn after_content(&self) -> Phase {
        if self.include_usage && self.completion.endpoint != Endpoint::Responses {
            Phase::Usage
        } else {
            Phase::Final
        }
    }

    fn normalize(&self, p: Phase) -> Phase {
        match p {
            Phase::Content(i) if i >= self.completion.events => self.after_content(),
            p => p,
        }
    }

    fn advance(&self) -> Phase {
        let next = match self.phase {
            Phase::Created => Phase::Content(0),
            Phase::Content(i) => Phase::Content(i + 1),
            Phase::Usage => Phase::Final,
            Phase::Final | Phase::End => Phase::End,
        };
        self.normalize(next)
    }

    fn pause_before(&self) -> Duration {
        match self.phase {
            Phase::Content(i) if i > 0 => self.interval,
            _ => Duration::ZERO,
        }
    }

    fn render(&self) -> Bytes {
        let c = &self.completion;
        let responses = c.endpoint == Endpoint::Responses;
        match self.phase {
            Phase::Created => c.responses_created(),
            Phase::Content(i) if responses => c.responses_delta(i),
            Phase::Content(i) => c.content_chunk(i),
            Phase::Usage => c.usage_chunk(),
            Phase::Final if responses => c.responses_completed(),
            Phase::Final => Bytes::from_static(SSE_DONE),
            Phase::End => Bytes::new(),
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        if self.phase == Phase::End {
            return Poll::Ready(None);
        }
        if self.yield_next {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let pause = self.pause_before();
        if !pause.is_zero() {
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let bytes = self.render();
        let is_final = self.phase == Phase::Final;
        self.phase = self.advance();
        self.yield_next = self.phase != Phase::End;
        if is_final {
            self.finished = true;
        }
        if let Some(rec) = &self.record {
            let mut r = lock(rec);
            r.sent.extend_from_slice(&bytes);
            r.event_times.push(Instant::now());
            r.finished = self.finished;
        }
        Poll::Ready(Some(bytes))
    }
}

impl Drop for SseBody {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Some(rec) = &self.record {
            let mut r = lock(rec);
            if r.closed_early_at.is_none() {
                r.closed_early_at = Some(Instant::now());
            }
        }
    }
}
