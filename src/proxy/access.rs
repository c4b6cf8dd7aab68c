//! Access checks of a client request: its head's size and its key (client or admin) before
//! the body is read; its key's model allowlist and limits once the body named a model.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::Result;

use super::ctx::{RequestCtx, Target};
use super::local;
use crate::auth::{Auth, ClientKey};
use crate::error::ErrorKind;
use crate::state::{clock, Exceeded, KeyLimits, Limiter, Refusal, Remaining};

/// A request head over `max_bytes` (request line and header lines) is a 431.
pub(super) fn check_head_size(req: &RequestHeader, max_bytes: usize) -> Result<()> {
    let bytes = head_size(req);
    if bytes > max_bytes {
        return Err(ErrorKind::HeaderTooLarge.err(format!(
            "the request head is {bytes} bytes, over the limit of {max_bytes}"
        )));
    }
    Ok(())
}

/// Access control, before the body is read: `/health` and `/ready` are open, the admin
/// routes (`/metrics`, `/v1/endpoints`, `/v1/keys`) need the admin key, every other route a
/// client key (when the gateway has keys). The model and the limits come once the body has
/// named the model.
pub(super) fn authorize(auth: &Auth, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    let path = req.uri.path();
    if path == "/health" || path == "/ready" {
        return Ok(());
    }
    let admin = matches!(path, "/metrics" | "/v1/endpoints" | "/v1/keys");
    let checked = if admin {
        auth.admin(&req.headers)
    } else {
        auth.client(&req.headers).map(|c| ctx.client = c)
    };
    if let Err(denied) = checked {
        if let Some(m) = crate::metrics::get() {
            m.client_refused("-", "invalid_key");
        }
        return Err(ErrorKind::InvalidApiKey.err(denied.message(admin)));
    }
    Ok(())
}

/// Count a request that goes upstream against its key's limits (refused and malformed
/// requests count for nothing). What it holds stays in `ctx` until the request ends.
pub(super) async fn admit(
    client: &ClientKey,
    limiter: &Arc<Limiter>,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let Some(key) = client.limited() else {
        return Ok(());
    };
    match limiter.admit(key).await {
        Ok(hold) => {
            ctx.hold = Some(hold);
            Ok(())
        }
        Err(refusal) => {
            client.count_refusal(refusal_reason(refusal.exceeded));
            let e = refusal_error(&key.limits, &refusal);
            ctx.refusal = Some(refusal);
            Err(e)
        }
    }
}

/// The `reason` label of a refusal in `ai_proxy_client_refusals_total`.
fn refusal_reason(e: Exceeded) -> &'static str {
    match e {
        Exceeded::Requests => "rate_limited",
        Exceeded::Tokens => "tokens_limited",
        Exceeded::Concurrent => "concurrency_limited",
        Exceeded::Budget => "budget_exceeded",
        Exceeded::StateUnavailable => "state_unavailable",
    }
}

fn refusal_error(limits: &KeyLimits, r: &Refusal) -> Box<pingora::Error> {
    let wait = r.retry_after.as_secs_f64();
    match r.exceeded {
        Exceeded::Requests => ErrorKind::RateLimited.err(format!(
            "Rate limit reached for this API key: {} requests per minute. Retry in {wait:.1} s.",
            limits.requests_per_minute.unwrap_or_default()
        )),
        Exceeded::Tokens => ErrorKind::RateLimited.err(format!(
            "Rate limit reached for this API key: {} tokens per minute. Retry in {wait:.1} s.",
            limits.tokens_per_minute.unwrap_or_default()
        )),
        Exceeded::Concurrent => ErrorKind::RateLimited.err(format!(
            "Too many requests in flight for this API key: at most {} at once. Retry when one ends.",
            limits.max_concurrent.unwrap_or_default()
        )),
        Exceeded::Budget => {
            let b = limits.budget.map_or((0, "day"), |b| {
                (b.tokens, if b.period == crate::state::Period::Day { "day" } else { "month" })
            });
            let renews = clock::rfc3339(clock::unix_ms() + r.retry_after.as_millis() as u64);
            ErrorKind::QuotaExceeded.err(format!(
                "You exceeded this API key's token budget of {} tokens per {} (UTC); it renews at {renews}.",
                b.0, b.1
            ))
        }
        Exceeded::StateUnavailable => ErrorKind::StateUnavailable.err(
            "The gateway cannot check this API key's limits now (its shared state does not answer). Retry shortly.",
        ),
    }
}

/// OpenAI's `x-ratelimit-*` headers for what a key has left (only for the limits it has).
pub(super) fn limit_headers(
    limits: &KeyLimits,
    left: &Remaining,
) -> impl Iterator<Item = (&'static str, HeaderValue)> {
    let requests = limits.requests_per_minute.map(u64::from).map(|limit| {
        [
            ("x-ratelimit-limit-requests", limit),
            ("x-ratelimit-remaining-requests", left.requests.unwrap_or(0)),
        ]
    });
    let tokens = limits.tokens_per_minute.map(|limit| {
        [
            ("x-ratelimit-limit-tokens", limit),
            ("x-ratelimit-remaining-tokens", left.tokens.unwrap_or(0)),
        ]
    });
    requests
        .into_iter()
        .chain(tokens)
        .flatten()
        .map(|(name, n)| (name, HeaderValue::from(n)))
}

/// The headers of a refusal: `Retry-After` in whole seconds, rounded up (a client that waits
/// that long is let through), then what is left.
pub(super) fn refusal_headers(
    limits: &KeyLimits,
    r: &Refusal,
) -> impl Iterator<Item = (&'static str, HeaderValue)> {
    let wait = r.retry_after.max(Duration::from_secs(1));
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    std::iter::once((http::header::RETRY_AFTER.as_str(), HeaderValue::from(secs)))
        .chain(limit_headers(limits, &r.remaining))
}

/// The client key's allowlist admits the request's target (a model, or none for a request
/// without one); a refusal is counted and says as much as `hide_unlisted` lets it.
pub(super) fn check_model(client: &ClientKey, target: &Target, hide_unlisted: bool) -> Result<()> {
    let model = match target {
        Target::Model { model, .. } => Some(model.as_str()),
        Target::Default(_) => None,
    };
    let allowed = model.map_or(client.allows_any_model(), |m| client.allows(m));
    if allowed {
        return Ok(());
    }
    client.count_refusal("model_not_allowed");
    Err(local::refused_model(model, hide_unlisted))
}

/// The size of a request head as sent: request line and header lines.
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
}
