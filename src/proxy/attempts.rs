//! A request's record of its attempts: which upstreams it tried for its current model, which
//! one served it, the retry decided after a failed one, and what the answer gave (time to
//! first byte, tokens). One record per client request, shared by reference with the
//! large-body subrequests that make its attempts, so that neither side copies the other's
//! view.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::retry::{Class, Step};
use crate::deployment::Deployment;
use crate::upstream::Upstream;
use crate::usage::Tokens;

#[derive(Debug, Default)]
pub(super) struct Attempts {
    record: Mutex<Record>,
}

#[derive(Debug, Default)]
struct Record {
    /// Upstream ids tried so far for the current model (a retry in place counts again).
    tried: Vec<usize>,
    /// Attempts sent, every model counted.
    sent: usize,
    /// The upstream of the latest attempt: what served the request, if anything did.
    last: Option<Arc<Upstream>>,
    /// The latest attempt's deployment, when the request has a model: a retry in place goes
    /// there again.
    last_deployment: Option<Deployment>,
    /// What the latest failed attempt leads to, until the next attempt carries it out.
    next: Option<Step>,
    /// The current model's deployment was retried in place (at most once per model).
    retried_in_place: bool,
    /// A stale pooled connection was retried on a fresh one (at most once per request).
    reconnected: bool,
    /// The failures that led to a retry, in order: their class and the model that failed.
    retries: Vec<(Class, Arc<str>)>,
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
    pub retries: Vec<(Class, Arc<str>)>,
}

/// What the retry decision reads from the record.
pub(super) struct Progress {
    pub attempts: usize,
    pub retried_in_place: bool,
    pub reconnected: bool,
}

impl Attempts {
    /// An attempt goes to `upstream` (at `deployment`, for a request with a model).
    pub fn push(&self, upstream: &Arc<Upstream>, deployment: Option<&Deployment>) {
        let mut r = self.lock();
        r.tried.push(upstream.id);
        r.sent += 1;
        r.last = Some(upstream.clone());
        r.last_deployment = deployment.cloned();
    }

    /// The latest attempt, for `model`, failed with `class`, and the request goes on with
    /// `step` (`Final`: it does not).
    pub fn decided(&self, model: &str, class: Class, step: Step) {
        let mut r = self.lock();
        r.next = Some(step);
        match step {
            // A stale connection is nobody's fault: not counted as an attempt.
            Step::Reconnect => {
                r.reconnected = true;
                r.tried.pop();
                r.sent = r.sent.saturating_sub(1);
            }
            Step::Again(_) => r.retried_in_place = true,
            _ => {}
        }
        if step.retries() && class != Class::Stale {
            r.retries.push((class, model.into()));
        }
    }

    /// The step decided after the latest attempt, if it failed.
    pub fn next(&self) -> Option<Step> {
        self.lock().next
    }

    /// Take the step decided after the latest attempt, to carry it out.
    pub fn take_next(&self) -> Option<Step> {
        self.lock().next.take()
    }

    /// The latest attempt's deployment, to retry in place.
    pub fn last_deployment(&self) -> Option<Deployment> {
        self.lock().last_deployment.clone()
    }

    pub fn progress(&self) -> Progress {
        let r = self.lock();
        Progress {
            attempts: r.tried.len(),
            retried_in_place: r.retried_in_place,
            reconnected: r.reconnected,
        }
    }

    /// Runs `f` on the upstream ids tried for the current model.
    pub fn with_tried<T>(&self, f: impl FnOnce(&[usize]) -> T) -> T {
        f(&self.lock().tried)
    }

    /// A new model (a fallback): none of its upstreams has been tried.
    pub fn new_model(&self) {
        let mut r = self.lock();
        r.tried.clear();
        r.retried_in_place = false;
    }

    pub fn set_ttfb(&self, ttfb: Duration) {
        self.lock().ttfb = Some(ttfb);
    }

    pub fn set_tokens(&self, tokens: Option<Tokens>) {
        self.lock().tokens = tokens;
    }

    pub fn tokens(&self) -> Option<Tokens> {
        self.lock().tokens
    }

    pub fn outcome(&self) -> Outcome {
        let r = self.lock();
        Outcome {
            sent: r.sent,
            last: r.last.clone(),
            ttfb: r.ttfb,
            tokens: r.tokens,
            retries: r.retries.clone(),
        }
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
        a.push(&u1, None);
        a.push(&u2, None);
        assert_eq!(a.with_tried(<[usize]>::len), 2);
        a.decided("m", Class::Stale, Step::Reconnect);
        assert_eq!(a.with_tried(|t| t.to_vec()), vec![u1.id]);
        assert_eq!(a.take_next(), Some(Step::Reconnect));
        assert_eq!(a.next(), None);
        a.push(&u2, None);
        a.decided("m", Class::ServerError(500), Step::Again(Duration::ZERO));
        assert!(a.progress().retried_in_place && a.progress().reconnected);
        a.new_model();
        assert!(!a.progress().retried_in_place);
        a.push(&u2, None);
        assert_eq!(a.with_tried(<[usize]>::len), 1);
        let o = a.outcome();
        assert_eq!(o.sent, 3);
        assert_eq!(o.last.map(|u| u.id), Some(u2.id));
        assert_eq!(
            o.retries,
            vec![(Class::ServerError(500), "m".into())],
            "a stale connection is no failure"
        );
    }
}
