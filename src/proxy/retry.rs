//! The one retry decision: a failed attempt (why it failed) and what the request still has
//! (attempts, other deployments, fallbacks, time, whether anything reached the client) go in;
//! the next step comes out. Pingora's phases and the large-body path only carry it out, and
//! they all read the failure's effect on health from here too.

use std::time::Duration;

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Connect refused or timed out, TLS failure: the address's fault.
    Connect,
    /// The connection closed or reset before the response head: the address's fault.
    Reset,
    /// A reused pooled connection the upstream had already closed: nobody's fault.
    Stale,
    /// No response head within the first-byte timeout: the model's (a busy server).
    FirstByteTimeout,
    /// 502, 503 or 504 (`status`), or an OCF head's failed forward (`status` 0).
    Unavailable(u16),
    /// 500 or another 5xx not above.
    ServerError(u16),
    /// 429, with the wait its `Retry-After` named.
    RateLimited(Option<Duration>),
    /// A 400 that says the prompt is over the model's context window.
    ContextWindow,
    /// Any other answer the upstream gave on purpose (4xx, content policy refusals).
    Rejected,
}

impl Class {
    /// The label of the class in logs and metrics (`retries`, `class`).
    pub fn label(self) -> &'static str {
        match self {
            Class::Connect => "connect",
            Class::Reset => "reset",
            Class::Stale => "stale_connection",
            Class::FirstByteTimeout => "first_byte_timeout",
            Class::Unavailable(0) => "ocf_error",
            Class::Unavailable(502) => "502",
            Class::Unavailable(503) => "503",
            Class::Unavailable(_) => "504",
            Class::ServerError(500) => "500",
            Class::ServerError(_) => "5xx",
            Class::RateLimited(_) => "429",
            Class::ContextWindow => "context_window",
            Class::Rejected => "rejected",
        }
    }

    /// What the failure says about the upstream's health.
    pub fn blames(self) -> Blame {
        match self {
            Class::Connect | Class::Reset => Blame::Address,
            Class::Stale => Blame::Nobody,
            Class::FirstByteTimeout
            | Class::Unavailable(_)
            | Class::ServerError(_)
            | Class::RateLimited(None) => Blame::Model,
            Class::RateLimited(Some(wait)) => Blame::Hold(wait),
            // The server answered on purpose: the address and the model work.
            Class::ContextWindow | Class::Rejected => Blame::Nobody,
        }
    }
}

/// A failure's effect on health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Counts against the address, with all its deployments.
    Address,
    /// Counts against the deployment only.
    Model,
    /// Holds the deployment for this long (`Retry-After`), without counting a failure.
    Hold(Duration),
    Nobody,
}

/// What the request still has when an attempt failed.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// A byte of the answer went to the client: nothing can be retried.
    pub answered: bool,
    /// The body can be sent again.
    pub replayable: bool,
    /// The current model has attempts left (`max_attempts`).
    pub attempts_left: bool,
    /// Another deployment of the current model is in service, and attempts are left.
    pub another_deployment: bool,
    /// A fallback model has a deployment in service.
    pub fallback: bool,
    /// A context-window fallback model has a deployment in service.
    pub context_fallback: bool,
    /// The request already retried a deployment in place (once is the most).
    pub retried_in_place: bool,
    /// The stale pooled connection retry was used.
    pub reconnected: bool,
    /// What is left of `retry_budget_secs`.
    pub time_left: Duration,
    /// `max_retry_wait_secs`: the longest wait for a rate-limited deployment.
    pub max_wait: Duration,
    /// The backoff before a retry in place on a 500 (jittered by the caller).
    pub backoff: Duration,
}

/// Used for a 429 without a readable `Retry-After`.
pub const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(1);

/// The next step of a request after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The same deployment again, on a fresh connection, at once, not counted as an attempt.
    Reconnect,
    /// The same deployment again after this wait.
    Again(Duration),
    /// Another deployment of the current model.
    Another,
    /// The next fallback model.
    Fallback,
    /// The next context-window fallback model.
    ContextFallback,
    /// No retry: the failure (or the upstream's answer) goes to the client.
    Final,
}

impl Step {
    pub fn retries(self) -> bool {
        self != Step::Final
    }

    /// Moves the request to another model.
    pub fn switches_model(self) -> bool {
        matches!(self, Step::Fallback | Step::ContextFallback)
    }
}

/// The next step after an attempt failed with `class`.
pub fn decide(class: Class, o: &Options) -> Step {
    if o.answered || !o.replayable || o.time_left.is_zero() {
        return Step::Final;
    }
    let elsewhere = || {
        if o.another_deployment {
            Step::Another
        } else if o.fallback {
            Step::Fallback
        } else {
            Step::Final
        }
    };
    // A wait on the same deployment, when the request may spend it.
    let again = |wait: Duration| {
        (o.attempts_left && !o.retried_in_place && wait < o.time_left).then_some(Step::Again(wait))
    };
    match class {
        Class::Stale if !o.reconnected => Step::Reconnect,
        Class::Stale | Class::Connect | Class::Reset => elsewhere(),
        Class::FirstByteTimeout | Class::Unavailable(_) => elsewhere(),
        Class::ServerError(_) if o.another_deployment => Step::Another,
        Class::ServerError(_) => again(o.backoff).unwrap_or_else(elsewhere),
        Class::RateLimited(_) if o.another_deployment => Step::Another,
        Class::RateLimited(wait) => {
            let wait = wait.unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
            (wait <= o.max_wait)
                .then(|| again(wait))
                .flatten()
                .unwrap_or_else(elsewhere)
        }
        Class::ContextWindow if o.context_fallback => Step::ContextFallback,
        Class::ContextWindow | Class::Rejected => Step::Final,
    }
}

/// The backoff before retry `n` (0 for the first) in place: 100 ms doubling, with up to as
/// much again of jitter so that clients failed together do not come back together.
pub fn backoff(n: u32, jitter: f64) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << n.min(6));
    base.mul_f64(1.0 + jitter.clamp(0.0, 1.0))
}

/// Whether a 400's small JSON error body says the prompt is over the context window, in the
/// wordings of vLLM, SGLang, OpenAI, llama.cpp and OCF heads (which relay their peer's).
pub fn is_context_window_error(body: &[u8]) -> bool {
    const MARKERS: &[&str] = &[
        "context_length_exceeded",
        "context length",
        "context window",
        "maximum context",
        "exceed_context_size",
        "exceeds the available context",
        "longer than the model's",
        "is longer than the maximum",
        "too many tokens",
        "prompt is too long",
    ];
    // Error bodies are small; anything else is not an error message.
    if body.len() > 16 * 1024 {
        return false;
    }
    let text = String::from_utf8_lossy(body).to_ascii_lowercase();
    MARKERS.iter().any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    /// The request's situation in the table: deployments, fallbacks, and whether a byte went
    /// out.
    #[derive(Debug, Clone, Copy)]
    enum Has {
        One,
        Several,
        OneWithFallbacks,
    }

    fn options(has: Has, answered: bool) -> Options {
        Options {
            answered,
            replayable: true,
            attempts_left: true,
            another_deployment: matches!(has, Has::Several),
            fallback: matches!(has, Has::OneWithFallbacks),
            context_fallback: matches!(has, Has::OneWithFallbacks),
            retried_in_place: false,
            reconnected: false,
            time_left: 30 * S,
            max_wait: 5 * S,
            backoff: Duration::from_millis(150),
        }
    }

    #[test]
    fn every_class_by_deployments_fallbacks_and_bytes_sent() {
        use Class::*;
        use Step::*;
        let ms150 = Again(Duration::from_millis(150));
        #[rustfmt::skip]
        let table: &[(Class, [Step; 3])] = &[
            //                               one         several   one + fallbacks
            (Connect,                        [Final,      Another, Fallback]),
            (Reset,                          [Final,      Another, Fallback]),
            (Stale,                          [Reconnect,  Reconnect, Reconnect]),
            (FirstByteTimeout,               [Final,      Another, Fallback]),
            (Unavailable(503),               [Final,      Another, Fallback]),
            (Unavailable(0),                 [Final,      Another, Fallback]),
            (ServerError(500),               [ms150,      Another, ms150]),
            (RateLimited(Some(2 * S)),       [Again(2 * S), Another, Again(2 * S)]),
            (RateLimited(None),              [Again(S),   Another, Again(S)]),
            (RateLimited(Some(60 * S)),      [Final,      Another, Fallback]),
            (ContextWindow,                  [Final,      Final,   ContextFallback]),
            (Rejected,                       [Final,      Final,   Final]),
        ];
        for (class, steps) in table {
            for (has, want) in [Has::One, Has::Several, Has::OneWithFallbacks]
                .into_iter()
                .zip(steps)
            {
                assert_eq!(
                    decide(*class, &options(has, false)),
                    *want,
                    "{class:?} {has:?}"
                );
                // Once a byte went to the client, nothing is retried.
                assert_eq!(
                    decide(*class, &options(has, true)),
                    Final,
                    "{class:?} {has:?} sent"
                );
            }
        }
    }

    #[test]
    fn a_deployment_is_retried_in_place_once_then_the_request_moves_on() {
        let mut o = options(Has::OneWithFallbacks, false);
        o.retried_in_place = true;
        assert_eq!(decide(Class::ServerError(500), &o), Step::Fallback);
        assert_eq!(decide(Class::RateLimited(Some(S)), &o), Step::Fallback);
        o.fallback = false;
        assert_eq!(decide(Class::ServerError(500), &o), Step::Final);
        let mut o = options(Has::One, false);
        o.reconnected = true;
        assert_eq!(decide(Class::Stale, &o), Step::Final);
    }

    #[test]
    fn the_budget_and_the_attempts_bound_every_retry() {
        let mut o = options(Has::Several, false);
        o.time_left = Duration::ZERO;
        assert_eq!(decide(Class::Unavailable(503), &o), Step::Final);
        let mut o = options(Has::One, false);
        o.time_left = S;
        assert_eq!(
            decide(Class::RateLimited(Some(2 * S)), &o),
            Step::Final,
            "a wait past the budget is not started"
        );
        let mut o = options(Has::One, false);
        o.attempts_left = false;
        assert_eq!(decide(Class::ServerError(500), &o), Step::Final);
        let mut o = options(Has::Several, false);
        o.replayable = false;
        assert_eq!(decide(Class::Connect, &o), Step::Final);
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        assert_eq!(backoff(0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0.5), Duration::from_millis(300));
        assert_eq!(backoff(0, 7.0), Duration::from_millis(200));
        assert!(backoff(40, 1.0) <= Duration::from_millis(12_800));
    }

    #[test]
    fn context_window_errors_in_the_servers_wordings() {
        for body in [
            // OpenAI
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            // vLLM
            r#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens (4000 in the messages, 1000 in the completion).","type":"BadRequestError","code":400}"#,
            // SGLang
            r#"{"object":"error","message":"The input (5000 tokens) is longer than the model's context length (4096 tokens).","type":"BadRequestError","code":400}"#,
            // llama.cpp
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            // OCF head relaying a peer
            r#"{"error":"peer: prompt is too long for the context window"}"#,
        ] {
            assert!(is_context_window_error(body.as_bytes()), "{body}");
        }
        for body in [
            r#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error"}}"#,
            r#"{"error":{"message":"Your request was rejected by the content filter","code":"content_filter"}}"#,
        ] {
            assert!(!is_context_window_error(body.as_bytes()), "{body}");
        }
    }
}
