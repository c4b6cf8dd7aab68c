//! Access checks of a client request: its head's size, its key (client or admin) and rate
//! limit before the body is read, and its key's model allowlist once the body named a model.

use pingora::http::RequestHeader;
use pingora::Result;

use super::ctx::{RequestCtx, Target};
use super::local;
use crate::auth::{Auth, ClientKey};
use crate::error::ErrorKind;

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
/// routes (`/metrics`, `/v1/endpoints`) need the admin key, every other route a client
/// key (when the gateway has keys) within its rate limit. The model check comes once the
/// body has named the model.
pub(super) fn authorize(auth: &Auth, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
    let path = req.uri.path();
    if path == "/health" || path == "/ready" {
        return Ok(());
    }
    let admin = path == "/metrics" || path == "/v1/endpoints";
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
    if let Some(client) = ctx.client.and_then(|at| auth.key(at)) {
        if let Err(wait) = client.admit() {
            client.count_refusal("rate_limited");
            ctx.retry_after = Some(wait);
            return Err(ErrorKind::RateLimited.err(format!(
                "Rate limit reached for this API key: {} requests per minute. Retry in {:.1} s.",
                client.requests_per_minute().unwrap_or_default(),
                wait.as_secs_f64()
            )));
        }
    }
    Ok(())
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
