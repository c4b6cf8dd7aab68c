//! Bodies over Pingora's 64 KiB retry buffer. Pingora 0.9 forwards nothing past that buffer once
//! `request_filter` has read the body, so the client's session re-sends the request as a
//! subrequest carrying the body it read. A subrequest cannot replay its body either, so
//! failover happens one level up: a subrequest that fails before answering asks for another
//! attempt, and the client's session runs a new subrequest with the same body (a `Bytes`
//! clone, no copy), excluding the endpoints already tried.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pingora::proxy::subrequest::pipe::PipeSubrequestState;

use super::Target;
use crate::usage::Tokens;

/// What the client's session hands each subrequest.
pub(super) struct SubrequestRoute {
    pub target: Target,
    /// The body the subrequest carries (it differs from the client's once rewritten; its
    /// deployment may rewrite it once more for its upstream id).
    pub body: bytes::Bytes,
    /// Where a multipart body holds its `model` field's value.
    pub multipart_model: Option<std::ops::Range<usize>>,
    /// Attempts per model, from the client request's snapshot.
    pub max_attempts: u32,
    pub attempts: Arc<Attempts>,
    /// A fallback model could still take the request after this model's endpoints.
    pub can_fall_back: bool,
    /// The gateway asked for the stream's usage chunk: it is removed from the client's bytes.
    pub strip_usage: bool,
    /// The request's affinity key.
    pub affinity: Option<u64>,
    /// The client session's request id (the subrequest's copied head may not have it).
    pub request_id: Option<http::HeaderValue>,
    /// When the client's request head was read.
    pub started: Option<std::time::Instant>,
}

/// The client session's record of its subrequests' attempts.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    /// Endpoint ids tried so far for the current model.
    tried: Mutex<Vec<usize>>,
    /// The last subrequest failed before answering and another attempt may succeed.
    retry: AtomicBool,
    /// The upstream of the latest attempt (what the client's session reports as serving).
    last: Mutex<Option<Arc<crate::upstream::Upstream>>>,
    /// The time to first byte the answering subrequest saw.
    ttfb: Mutex<Option<Duration>>,
    /// The tokens of the answer, once it ended.
    tokens: Mutex<Option<Tokens>>,
}

impl Attempts {
    pub fn tried(&self) -> Vec<usize> {
        self.lock().clone()
    }

    pub fn push(&self, upstream: &Arc<crate::upstream::Upstream>) {
        self.lock().push(upstream.id);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(upstream.clone());
    }

    pub fn set_ttfb(&self, ttfb: Duration) {
        *self.ttfb.lock().unwrap_or_else(|e| e.into_inner()) = Some(ttfb);
    }

    pub fn ttfb(&self) -> Option<Duration> {
        *self.ttfb.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_tokens(&self, tokens: Option<Tokens>) {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner()) = tokens;
    }

    pub fn tokens(&self) -> Option<Tokens> {
        *self.tokens.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn last(&self) -> Option<Arc<crate::upstream::Upstream>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forget the last attempt (a stale pooled connection: the endpoint is not to blame).
    pub fn pop(&self) {
        self.lock().pop();
    }

    /// A new model: its endpoints have not been tried.
    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn ask_retry(&self) {
        self.retry.store(true, Ordering::Release);
    }

    /// Whether the last subrequest asked for another attempt (and reset the request).
    pub fn take_retry(&self) -> bool {
        self.retry.swap(false, Ordering::AcqRel)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<usize>> {
        self.tried.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long a failed subrequest may take to finish its own error handling.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Wait for a failed subrequest's task to end, draining what it still sends. The pipe can
/// report a failure (a timeout, a reset) before the subrequest's `error_while_proxy` has
/// decided whether to ask for another attempt.
pub(super) async fn settle(mut state: PipeSubrequestState) {
    let Some(mut task) = state.join_handle.take() else {
        return;
    };
    let drain = async {
        if let Some(rx) = state.pipe_rx.as_mut() {
            while rx.recv().await.is_some() {}
        }
        std::future::pending::<()>().await
    };
    let settled = async {
        tokio::select! {
            _ = &mut task => {}
            () = drain => {}
        }
    };
    if tokio::time::timeout(SETTLE_TIME, settled).await.is_err() {
        log::debug!("a failed large-body subrequest is still running; not waiting for it");
    }
}
