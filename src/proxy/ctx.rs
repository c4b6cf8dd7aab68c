//! Per-request state: where the request goes, what it has tried, and whether it may still
//! move to another endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use pingora::proxy::Session;

use super::attempts::Attempts;
use super::model_field::ModelField;
use super::{fallback, messages, retry, watchdog};
use crate::auth::ClientKey;
use crate::deployment::DeploymentState;
use crate::deployment::InFlight;
use crate::frontends::anthropic::ChatRequest;
use crate::health::Health;
use crate::routes::{Pool, Routes};
use crate::shutdown::ActiveRequest;
use crate::state::{Hold, Refusal};
use crate::upstream::Upstream;
use crate::usage::{self, strip::StripUsageChunk};

/// Where a request goes: decided once in `request_filter`, used by every attempt (and handed
/// to a large-body subrequest so it neither reads nor parses the body again).
#[derive(Clone)]
pub(super) enum Target {
    /// The endpoints serving `model`.
    Model { model: String, pool: Arc<Pool> },
    /// A request without a model: the first configured endpoint.
    Default(Arc<Upstream>),
}

/// Where a request could still move after its current model.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CanMove {
    /// A fallback model has an endpoint in service.
    pub fallback: bool,
    /// A context-window fallback model has an endpoint in service.
    pub context_fallback: bool,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    pub(super) target: Option<Target>,
    /// The request's attempts: this session's own, or, in a large-body subrequest, the
    /// client session's record that the subrequest adds to.
    pub(super) attempts: Arc<Attempts>,
    /// The upstream of the current attempt.
    pub(super) current: Option<Arc<Upstream>>,
    /// The current attempt's deployment (its model at that upstream), when the request has a
    /// model.
    pub(super) deployment: Option<Arc<DeploymentState>>,
    /// The body as the client sent it (a `Bytes` handle, no copy).
    pub(super) body: Bytes,
    /// The body of the current attempt when its deployment knows the model by another id.
    pub(super) attempt_body: Option<Bytes>,
    /// Where the body sent to the current model (`body_override`, else `body`) names it.
    pub(super) model_field: ModelField,
    /// Counts this request on the current attempt's endpoint until the context is dropped,
    /// i.e. until the response has truly ended.
    pub(super) in_flight: Option<InFlight>,
    /// The request went upstream through a large-body subrequest, which logs its own errors.
    pub(super) via_subrequest: bool,
    /// Counts the request for the graceful shutdown until the context is dropped.
    pub(super) _active: Option<ActiveRequest>,
    /// The fallback models left, when the requested model has any.
    pub(super) fallbacks: Option<fallback::FallbackChain>,
    /// The models with a longer context left, when the requested model has any.
    pub(super) context_fallbacks: Option<fallback::FallbackChain>,
    /// A large-body subrequest: the client's session decides its failover (the subrequest
    /// cannot replay its body) and renders and logs the outcome.
    pub(super) in_subrequest: bool,
    /// In a large-body subrequest: where the client's session could still move the request.
    pub(super) parent_can: CanMove,
    /// The current attempt's first-byte, idle and total deadlines, when Pingora's single
    /// read timeout cannot enforce them.
    pub(super) watchdog: Option<watchdog::Watchdog>,
    /// `x-request-id`: the client's, or one made for it; sent upstream and on the response.
    pub(super) request_id: Option<HeaderValue>,
    /// When the request head was read (the client's, for a large-body subrequest).
    pub(super) started: Option<Instant>,
    /// The gateway's own time until the request first went upstream has been recorded.
    pub(super) overhead_recorded: bool,
    /// The request's affinity key (`prefix_affinity` pools).
    pub(super) affinity: Option<u64>,
    /// When the current attempt's endpoint was chosen.
    pub(super) attempt_started: Option<Instant>,
    /// The body sent upstream when it is not the client's: with `include_usage` added
    /// (`stream_usage: force`) and/or rewritten for a fallback model.
    pub(super) body_override: Option<Bytes>,
    /// The gateway added `include_usage` to the request: its usage chunk is not the client's.
    pub(super) usage_forced: bool,
    /// The answer's last chunks, to read its token usage from when it ends.
    pub(super) usage: Option<usage::Tail>,
    /// Removes the usage chunk the gateway asked for from the stream.
    pub(super) strip_usage: Option<StripUsageChunk>,
    /// The routing snapshot the request started with (from `request_filter` on): its
    /// settings are the request's.
    pub(super) routes: Option<Arc<Routes>>,
    /// The position of the request's client key in that snapshot's `Auth` (when the gateway
    /// has keys): no reference count to bump per request.
    pub(super) client: Option<usize>,
    /// What the request holds of its key's limits (a slot, tokens to charge), released when
    /// it ends, however it ends.
    pub(super) hold: Option<Hold>,
    /// Why the key's limits refused the request (its `Retry-After` and `x-ratelimit-*`).
    pub(super) refusal: Option<Refusal>,
    /// An Anthropic route: its errors take Anthropic's shape.
    pub(super) anthropic: Option<messages::Route>,
    /// A `/v1/messages` request as a chat completions request, for translated attempts.
    pub(super) chat: Option<Arc<ChatRequest>>,
    /// The current attempt's answer, on its way back into Anthropic's shapes.
    pub(super) answer: Option<messages::Answer>,
}

impl RequestCtx {
    /// The request's client key, if it came with one.
    pub(super) fn client_key(&self) -> Option<&ClientKey> {
        self.routes.as_ref()?.settings.auth.key(self.client?)
    }

    pub(super) fn model(&self) -> Option<&str> {
        match self.target.as_ref()? {
            Target::Model { model, .. } => Some(model),
            Target::Default(_) => None,
        }
    }

    /// The metrics of the request's model on the endpoint `served` it.
    pub(super) fn route_counters(
        &self,
        served: &Upstream,
    ) -> Option<&crate::metrics::RouteCounters> {
        match &self.target {
            Some(Target::Model { pool, .. }) => pool.counters(served.id),
            _ => None,
        }
    }

    /// Attempts per model, from the request's own snapshot.
    pub(super) fn max_attempts(&self) -> usize {
        self.routes
            .as_ref()
            .map_or(1, |r| r.settings.max_attempts as usize)
    }

    /// Whether another upstream of the current model may take the request: attempts are left
    /// and one is in service.
    pub(super) fn model_has_untried(&self) -> bool {
        let Some(Target::Model { pool, .. }) = &self.target else {
            return false;
        };
        let max = self.max_attempts();
        self.attempts
            .with_tried(|tried| tried.len() < max && pool.has_candidate(tried))
    }

    /// What the request still has, for the retry decision after a failed attempt.
    pub(super) fn retry_options(&self, session: &Session) -> retry::Options {
        let progress = self.attempts.progress();
        let settings = self.routes.as_ref().map(|r| &r.settings);
        let budget = settings.map_or(Duration::ZERO, |s| s.retry_budget);
        let here = self.can_move();
        retry::Options {
            answered: answered(session),
            // A large body is replayed by running a new subrequest with it.
            replayable: self.in_subrequest
                || self.via_subrequest
                || !session.retry_buffer_truncated(),
            attempts_left: progress.attempts < self.max_attempts(),
            another_deployment: self.model_has_untried(),
            fallback: here.fallback || self.parent_can.fallback,
            context_fallback: here.context_fallback || self.parent_can.context_fallback,
            retried_in_place: progress.retried_in_place,
            reconnected: progress.reconnected,
            time_left: budget.saturating_sub(self.started.map_or(Duration::ZERO, |t| t.elapsed())),
            max_wait: settings.map_or(Duration::ZERO, |s| s.max_retry_wait),
            backoff: retry::backoff(0, fastrand::f64()),
        }
    }

    /// Where this session may still move the request (a large-body subrequest's own chains
    /// are empty: see `parent_can`).
    pub(super) fn can_move(&self) -> CanMove {
        let available =
            |chain: &Option<fallback::FallbackChain>| chain.as_ref().is_some_and(|f| f.available());
        CanMove {
            fallback: available(&self.fallbacks),
            context_fallback: available(&self.context_fallbacks),
        }
    }

    /// Move the request to the next model with an endpoint in service of its fallbacks, or
    /// of its context-window fallbacks (`Step::ContextFallback`).
    pub(super) fn switch_model(&mut self, step: retry::Step) -> bool {
        let chain = if step == retry::Step::ContextFallback {
            self.context_fallbacks.as_mut()
        } else {
            self.fallbacks.as_mut()
        };
        let Some((model, pool, (body, field))) = chain.and_then(|f| f.advance()) else {
            return false;
        };
        log::warn!(
            "model {} cannot serve this request; moving it to {model}",
            self.model().unwrap_or("-")
        );
        self.target = Some(Target::Model { model, pool });
        self.body_override = Some(body);
        self.model_field = field;
        self.attempts.new_model();
        true
    }

    /// Whether this session retries itself after `step`; a large-body subrequest instead
    /// ends, and the client's session carries the step out.
    pub(super) fn retries_here(&self, step: retry::Step) -> bool {
        step.retries() && !self.in_subrequest
    }

    /// Count a fault of the current attempt's address (connect, reset before the answer)
    /// against it: every deployment there shares it.
    pub(super) fn blame_address(&self, why: &str) {
        if let Some(u) = &self.current {
            blame(&u.endpoint.name, "", &u.health, why);
        }
    }

    /// Count a fault of the current attempt's model (429, 5xx, first-byte timeout, an OCF
    /// error) against its deployment only: the address's other models keep serving. A request
    /// without a model has no deployment, and its faults are the address's.
    pub(super) fn blame_model(&self, why: &str) {
        match (&self.current, &self.deployment, self.model()) {
            (Some(u), Some(d), Some(model)) => blame(&u.endpoint.name, model, &d.health, why),
            _ => self.blame_address(why),
        }
    }

    /// The current attempt was answered: its address and its model are in service.
    pub(super) fn record_success(&self) {
        let Some(u) = &self.current else {
            return;
        };
        if let Some(was) = u.health.record_success() {
            log::info!(
                "health: {} is back in service (was {})",
                u.endpoint.name,
                was.as_str()
            );
        }
        if let (Some(d), Some(model)) = (&self.deployment, self.model()) {
            if let Some(was) = d.health.record_success() {
                log::info!(
                    "health: model {model} on {} is back in service (was {})",
                    u.endpoint.name,
                    was.as_str()
                );
            }
        }
    }

    /// Apply what a failure of `class` says about the current attempt's health.
    pub(super) fn blame(&self, class: retry::Class, why: &str) {
        match class.blames() {
            retry::Blame::Address => self.blame_address(why),
            retry::Blame::Model => self.blame_model(why),
            retry::Blame::Hold(wait) => self.hold_for(wait),
            // An answer given on purpose: the address and the model work.
            retry::Blame::Nobody if class != retry::Class::Stale => self.record_success(),
            retry::Blame::Nobody => {}
        }
    }

    /// The health a `Retry-After` holds: the model's on that upstream.
    pub(super) fn hold_for(&self, wait: Duration) {
        match (&self.deployment, &self.current) {
            (Some(d), _) => d.health.hold_for(wait),
            (None, Some(u)) => u.health.hold_for(wait),
            _ => {}
        }
    }

    /// Whether the current attempt is a `/v1/messages` request translated for its endpoint.
    pub(super) fn translating(&self) -> bool {
        self.chat.is_some()
            && self
                .current
                .as_ref()
                .is_some_and(|u| messages::translates(&u.endpoint))
    }

    /// What the current attempt sends upstream when it is not the client's body.
    pub(super) fn body_to_send(&self) -> Option<&Bytes> {
        self.attempt_body.as_ref().or(self.body_override.as_ref())
    }
}

/// Count a failure against a health (an endpoint's address, or `model` there), and say so when
/// that ejects it.
fn blame(endpoint: &str, model: &str, health: &Health, why: &str) {
    if let Some(m) = crate::metrics::get() {
        m.upstream_failures
            .with_label_values(&[endpoint, model, why])
            .inc();
    }
    if let Some(cooldown) = health.record_failure() {
        let what = if model.is_empty() {
            endpoint.to_string()
        } else {
            format!("model {model} on {endpoint}")
        };
        log::warn!(
            "health: {what} ejected for {:.1} s after consecutive failures (last: {why})",
            cooldown.as_secs_f64()
        );
    }
}

/// Whether a final (non-1xx) response header has gone to the client: from then on nothing
/// can be retried or answered differently. A `100 Continue` does not count.
pub(super) fn answered(session: &Session) -> bool {
    session
        .response_written()
        .is_some_and(|h| !h.status.is_informational())
}
