//! Response bodies of the mock upstream: a full buffer, or an SSE stream (generated lazily from a
//! completion, or given as frames: a script, a native Anthropic stream) that paces, flushes and
//! records each event and notices when the connection drops it early. Either can be cut short by
//! a fault or a script (see [`Cut`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::fault::Cut;
use super::shapes::{Completion, Endpoint, SSE_DONE};
use super::{lock, InFlight, StreamRecord};

/// The body type of every mock response.
pub(crate) enum MockBody {
    Full(Option<Bytes>),
    /// The first part of a full body, then a cut (fault): never ends normally.
    Partial(PartialBody),
    Sse(Box<SseBody>),
}

impl MockBody {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        MockBody::Full(Some(b.into()))
    }

    /// This body cut by a fault: a stream after its first `events` content events, a full body
    /// after its first half (the Content-Length header already sent still promises all of it).
    pub(crate) fn cut(self, events: usize, cut: Cut) -> Self {
        match self {
            MockBody::Full(b) => MockBody::Partial(PartialBody::new(b.unwrap_or_default(), cut)),
            MockBody::Sse(s) => MockBody::Sse(Box::new(s.with_cut(events, cut))),
            partial @ MockBody::Partial(_) => partial,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    /// Only a cut body fails, to make hyper drop (and reset) its connection.
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        let next = match self.get_mut() {
            MockBody::Full(b) => Poll::Ready(b.take().map(Ok)),
            MockBody::Partial(p) => p.poll_next(cx),
            MockBody::Sse(s) => s.poll_next(cx),
        };
        next.map(|o| o.map(|r| r.map(Frame::data)))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            MockBody::Full(b) => b.is_none(),
            MockBody::Partial(_) => false,
            MockBody::Sse(s) => s.phase == Phase::End,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            MockBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            MockBody::Full(None) => SizeHint::with_exact(0),
            MockBody::Partial(p) => SizeHint::with_exact(p.total),
            MockBody::Sse(_) => SizeHint::default(),
        }
    }
}

/// The first half of a full body, then its cut.
pub(crate) struct PartialBody {
    head: Option<Bytes>,
    /// Length of the whole body (announced in Content-Length).
    total: u64,
    cut: Cut,
}

impl PartialBody {
    fn new(full: Bytes, cut: Cut) -> Self {
        PartialBody {
            total: full.len() as u64,
            head: Some(full.slice(..full.len() / 2)),
            cut,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        match self.head.take() {
            Some(head) if !head.is_empty() => Poll::Ready(Some(Ok(head))),
            _ => self.cut.poll(cx),
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

/// What an SSE stream sends.
pub(crate) enum Events {
    /// A completion's events, rendered one at a time.
    Generated(Completion),
    /// These content frames, then the final one (`[DONE]`, or Anthropic's `message_stop`).
    Frames { frames: Vec<Bytes>, last: Bytes },
}

impl Events {
    fn content_events(&self) -> usize {
        match self {
            Events::Generated(c) => c.events,
            Events::Frames { frames, .. } => frames.len(),
        }
    }

    fn has_created(&self) -> bool {
        matches!(self, Events::Generated(c) if c.endpoint == Endpoint::Responses)
    }

    fn has_usage(&self) -> bool {
        matches!(self, Events::Generated(c) if c.include_usage && c.endpoint != Endpoint::Responses)
    }
}

/// An SSE stream sent one event at a time.
pub(crate) struct SseBody {
    events: Events,
    interval: Duration,
    phase: Phase,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Return `Pending` once after each frame so hyper flushes every event on its own.
    yield_next: bool,
    record: Option<Arc<Mutex<StreamRecord>>>,
    finished: bool,
    /// A fault: stop before content event `cut_after` (and before the usage chunk and the
    /// final event) and end as the cut says.
    cut_after: usize,
    cut: Option<Cut>,
    /// Keeps the request counted in flight while the stream lives.
    in_flight: Option<InFlight>,
}

impl SseBody {
    pub(crate) fn new(
        events: Events,
        interval: Duration,
        record: Option<Arc<Mutex<StreamRecord>>>,
    ) -> Self {
        let phase = if events.has_created() {
            Phase::Created
        } else {
            Phase::Content(0)
        };
        let mut body = SseBody {
            events,
            interval,
            phase,
            sleep: None,
            yield_next: false,
            record,
            finished: false,
            cut_after: 0,
            cut: None,
            in_flight: None,
        };
        body.phase = body.normalize(body.phase);
        body
    }

    /// Count the request in flight until this body is dropped.
    pub(crate) fn hold(&mut self, in_flight: InFlight) {
        self.in_flight = Some(in_flight);
    }

    /// Send only the first `events` content events, then `cut`.
    fn with_cut(mut self, events: usize, cut: Cut) -> Self {
        self.cut_after = events;
        self.cut = Some(cut);
        self
    }

    /// The next event is past what a cut allows.
    fn at_cut(&self) -> bool {
        self.cut.is_some()
            && match self.phase {
                Phase::Created | Phase::End => false,
                Phase::Content(i) => i >= self.cut_after,
                Phase::Usage | Phase::Final => true,
            }
    }

    fn after_content(&self) -> Phase {
        if self.events.has_usage() {
            Phase::Usage
        } else {
            Phase::Final
        }
    }

    fn normalize(&self, p: Phase) -> Phase {
        match p {
            Phase::Content(i) if i >= self.events.content_events() => self.after_content(),
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
        let c = match &self.events {
            Events::Generated(c) => c,
            Events::Frames { frames, last } => {
                return match self.phase {
                    Phase::Content(i) => frames.get(i).cloned().unwrap_or_default(),
                    Phase::Final => last.clone(),
                    Phase::Created | Phase::Usage | Phase::End => Bytes::new(),
                }
            }
        };
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

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Bytes>>> {
        if self.phase == Phase::End {
            return Poll::Ready(None);
        }
        if self.yield_next {
            self.yield_next = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.at_cut() {
            if let Some(cut) = self.cut.as_mut() {
                return cut.poll(cx);
            }
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
        Poll::Ready(Some(Ok(bytes)))
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
