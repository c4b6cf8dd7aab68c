//! A request's record of its attempts: which upstreams it tried for its current model, which
//! one served it, and what the answer gave (time to first byte, tokens). One record per client
//! request, shared by reference with the large-body subrequests that make its attempts, so
//! that neither side copies the other's view.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::upstream::Upstream;
use crate::usage::Tokens;

#[derive(Debug, Default)]
pub(super) struct Attempts {
    record: Mutex<Record>,
    /// A large-body subrequest failed before answering and another attempt may succeed: the
    /// client's session is to run a new one.
    retry: AtomicBool,
}

#[derive(Debug, Default)]
struct Record {
    /// Upstream ids tried so far for the current model.
    tried: Vec<usize>,
    /// Attempts sent, every model counted.
    sent: usize,
    /// The upstream of the latest attempt: what served the request, if anything did.
    last: Option<Arc<Upstream>>,
    /// From the client's request head to the answer's head.
    ttfb: Option<Duration>,
    /// The answer's token usage, once it ended.
    tokens: Option<Tokens>,
}

/// What the request's log line and metrics read from the record, at its end.
pub(super) struct Outcome {
    pub sent: usize,
    pub last: Option<Arc<Upstream>>,
    pub ttfb: Option<Duration>,
    pub tokens: Option<Tokens>,
}

impl Attempts {
    /// An attempt goes to `upstream`.
    pub fn push(&self, upstream: &Arc<Upstream>) {
        let mut r = self.lock();
        r.tried.push(upstream.id);
        r.sent += 1;
        r.last = Some(upstream.clone());
    }

    /// Forget the last attempt: a stale pooled connection, not the upstream's fault, and the
    /// same upstream may take the retry.
    pub fn forget_last(&self) {
        let mut r = self.lock();
        r.tried.pop();
        r.sent = r.sent.saturating_sub(1);
    }

    /// Runs `f` on the upstream ids tried for the current model.
    pub fn with_tried<T>(&self, f: impl FnOnce(&[usize]) -> T) -> T {
        f(&self.lock().tried)
    }

    /// A new model (a fallback): none of its upstreams has been tried.
    pub fn new_model(&self) {
        self.lock().tried.clear();
    }

    pub fn set_ttfb(&self, ttfb: Duration) {
        self.lock().ttfb = Some(ttfb);
    }

    pub fn set_tokens(&self, tokens: Option<Tokens>) {
        self.lock().tokens = tokens;
    }

    pub fn outcome(&self) -> Outcome {
        let r = self.lock();
        Outcome {
            sent: r.sent,
            last: r.last.clone(),
            ttfb: r.ttfb,
            tokens: r.tokens,
        }
    }

    pub fn ask_retry(&self) {
        self.retry.store(true, Ordering::Release);
    }

    /// Whether the last subrequest asked for another attempt (and reset the request).
    pub fn take_retry(&self) -> bool {
        self.retry.swap(false, Ordering::AcqRel)
    }

    fn lock(&self) -> MutexGuard<'_, Record> {
        // Never held across an await; a panic elsewhere leaves a record still worth reading.
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, EndpointKind};

    fn upstream(port: u16) -> Arc<Upstream> {
        let ep = Endpoint::new("http://h:1", EndpointKind::Openai, None, None, None).unwrap();
        Arc::new(Upstream::new(Arc::new(ep), ([127, 0, 0, 1], port).into()))
    }

    #[test]
    fn tried_is_per_model_and_sent_counts_every_attempt() {
        let a = Attempts::default();
        let (u1, u2) = (upstream(1), upstream(2));
        a.push(&u1);
        a.push(&u2);
        assert_eq!(a.with_tried(<[usize]>::len), 2);
        a.forget_last();
        assert_eq!(a.with_tried(|t| t.to_vec()), vec![u1.id]);
        a.new_model();
        a.push(&u2);
        assert_eq!(a.with_tried(<[usize]>::len), 1);
        let o = a.outcome();
        assert_eq!(o.sent, 2);
        assert_eq!(o.last.map(|u| u.id), Some(u2.id));
    }
}
