//! Failover: how the gateway judges an upstream's failure or response head (pass it on, or
//! blame the address or the model) and, while nothing has reached the client, whether the
//! request tries another endpoint. Pingora's phases only carry these decisions out.

use std::time::{Duration, SystemTime};

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::ctx::{answered, RequestCtx};
use crate::endpoint::EndpointKind;
use crate::error::ErrorKind;
use crate::upstream::Upstream;

/// Nothing was sent: the address is blamed, and another endpoint of the model can take the
/// request.
pub(super) fn after_connect_failure(
    ctx: &mut RequestCtx,
    peer: &HttpPeer,
    mut e: Box<Error>,
) -> Box<Error> {
    ctx.blame_address(e.etype().as_str());
    if ctx.has_untried() {
        log::warn!(
            "connect to {peer} failed ({}); trying another endpoint for model {}",
            e.etype().as_str(),
            ctx.model().unwrap_or("-")
        );
        e.set_retry(ctx.ask_another_attempt());
    }
    e
}

/// Decides what an error after connecting leads to, while nothing reached the client:
/// - an answer `upstream_response_filter` turned down: the next endpoint;
/// - a pooled connection the upstream had closed: once more on a fresh connection to the
///   same endpoint (not the endpoint's fault);
/// - any other upstream failure (timeout before the first byte, reset, bad answer): blamed
///   on the endpoint, then the next endpoint.
///
/// Client-side errors (the client went away) are final.
pub(super) fn after_proxy_error(
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    if std::mem::take(&mut ctx.fail_over) {
        e.set_retry(true);
        return e;
    }
    e.set_retry(false);
    if let Some(expired) = ctx.watchdog.as_ref().and_then(|w| w.expired()) {
        // The watchdog shut the socket: say which deadline passed, not "connection closed".
        let limits = ctx
            .current
            .as_ref()
            .map(|u| u.endpoint.timeouts)
            .unwrap_or_default();
        e = ErrorKind::UpstreamTimeout.err(format!(
            "the upstream timed out: {}",
            expired.describe(&limits)
        ));
        e.esource = ErrorSource::Upstream;
    }
    if *e.esource() != ErrorSource::Upstream {
        return e;
    }
    let stale_connection = client_reused
        && !answered(session)
        && matches!(
            e.etype(),
            ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
        );
    let replayable = ctx.in_subrequest || !session.retry_buffer_truncated();
    if stale_connection && replayable && ctx.stale_retries == 0 {
        ctx.stale_retries += 1;
        ctx.attempts.forget_last();
        e.set_retry(ctx.ask_another_attempt());
        return e;
    }
    // A timeout before the first byte is the model's (a server busy with it); a reset or
    // a broken answer before it is the address's.
    let timed_out =
        e.etype() == &ErrorType::ReadTimedout || matches!(e.etype(), ErrorType::CustomCode(_, 504));
    if timed_out {
        ctx.blame_model(e.etype().as_str());
    } else {
        ctx.blame_address(e.etype().as_str());
    }
    if ctx.can_fail_over(session) {
        log::warn!(
            "upstream {} failed before answering ({}); trying another endpoint for model {}",
            ctx.current
                .as_ref()
                .map_or("-", |u| u.endpoint.name.as_str()),
            e.etype().as_str(),
            ctx.model().unwrap_or("-")
        );
        e.set_retry(ctx.ask_another_attempt());
    }
    e
}

/// Judges an upstream's answer before any of it goes to the client: an error moves the
/// request to another endpoint (while one is left) or ends it; `Ok` passes the answer on.
pub(super) fn judge_answer(
    session: &Session,
    ctx: &mut RequestCtx,
    upstream: &Upstream,
    header: &ResponseHeader,
) -> Result<()> {
    let ep = &upstream.endpoint;
    let answer = judge(ep.kind, header);
    // The server answered: whatever the answer says is about the model, not the address.
    match answer {
        Answer::RateLimited(Some(wait)) => ctx.hold_for(wait),
        a if a.blames_endpoint() => ctx.blame_model(header.status.as_str()),
        _ => ctx.record_success(),
    }
    if answer.retryable() && ctx.can_fail_over(session) {
        log::warn!(
            "upstream {} answered HTTP {}; trying another endpoint for model {}",
            ep.name,
            header.status.as_u16(),
            ctx.model().unwrap_or("-")
        );
        ctx.fail_over = ctx.ask_another_attempt();
        return Err(ErrorKind::UpstreamFailed.err(format!(
            "endpoint {} answered HTTP {}",
            ep.name,
            header.status.as_u16()
        )));
    }
    if answer == Answer::OcfForwardFailed {
        return Err(
            ErrorKind::UpstreamFailed.err("the ocf head could not forward the request to a peer")
        );
    }
    Ok(())
}

/// The verdict on one response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Pass it on; the endpoint is fine. This includes every 4xx but 429: a request the
    /// upstream rejected (invalid, context length, content policy, auth, not found, too large)
    /// would be rejected by any endpoint, so it is never retried.
    Good,
    /// Pass it on, but the endpoint failed (500 and other 5xx another endpoint would not fix
    /// for sure: the same request may crash every replica).
    Failed,
    /// 502, 503, 504: this endpoint cannot serve now; another may.
    Unavailable,
    /// 429, with the wait its `Retry-After` named, if any.
    RateLimited(Option<Duration>),
    /// An OCF head's HTTP 200 with a plain-text `ERROR: ...` body: its forward to a peer
    /// failed. A successful OCF answer is JSON or an event stream, so the content type tells
    /// the two apart without holding back the body.
    OcfForwardFailed,
}

impl Answer {
    /// Worth another endpoint, if one is left.
    pub fn retryable(self) -> bool {
        !matches!(self, Answer::Good | Answer::Failed)
    }

    /// Counts against the endpoint's health.
    pub fn blames_endpoint(self) -> bool {
        !matches!(self, Answer::Good | Answer::RateLimited(Some(_)))
    }
}

pub fn judge(kind: EndpointKind, header: &ResponseHeader) -> Answer {
    match header.status.as_u16() {
        200 if kind == EndpointKind::Ocf && content_type_is(header, "text/plain") => {
            Answer::OcfForwardFailed
        }
        429 => Answer::RateLimited(retry_after(header, SystemTime::now())),
        502..=504 => Answer::Unavailable,
        500..=599 => Answer::Failed,
        _ => Answer::Good,
    }
}

/// Whether the response is a server-sent event stream.
pub fn is_event_stream(header: &ResponseHeader) -> bool {
    content_type_is(header, "text/event-stream")
}

/// Whether the response is JSON.
pub fn is_json(header: &ResponseHeader) -> bool {
    content_type_is(header, "application/json")
}

fn content_type_is(header: &ResponseHeader, mime: &str) -> bool {
    header
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(mime))
}

/// `Retry-After` as seconds or an HTTP date; `None` when absent or unreadable.
fn retry_after(header: &ResponseHeader, now: SystemTime) -> Option<Duration> {
    let v = header
        .headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            h.insert_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn client_errors_pass_through_and_are_not_the_endpoints_fault() {
        for s in [200, 201, 304, 400, 401, 403, 404, 413, 422] {
            let a = judge(EndpointKind::Openai, &head(s, &[]));
            assert_eq!(a, Answer::Good, "{s}");
            assert!(!a.retryable() && !a.blames_endpoint());
        }
    }

    #[test]
    fn gateway_statuses_fail_over_and_500_does_not() {
        for s in [502, 503, 504] {
            let a = judge(EndpointKind::Openai, &head(s, &[]));
            assert_eq!(a, Answer::Unavailable);
            assert!(a.retryable() && a.blames_endpoint());
        }
        let a = judge(EndpointKind::Openai, &head(500, &[]));
        assert_eq!(a, Answer::Failed);
        assert!(!a.retryable() && a.blames_endpoint());
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let a = judge(EndpointKind::Openai, &head(429, &[("retry-after", "7")]));
        assert_eq!(a, Answer::RateLimited(Some(Duration::from_secs(7))));
        assert!(a.retryable() && !a.blames_endpoint());

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = head(429, &[("retry-after", &date)]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h = head(429, &[("retry-after", &past)]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));

        let a = judge(EndpointKind::Openai, &head(429, &[("retry-after", "soon")]));
        assert_eq!(a, Answer::RateLimited(None));
        assert!(
            a.blames_endpoint(),
            "a 429 without a wait counts as a failure"
        );
    }

    #[test]
    fn an_ocf_plain_text_200_is_a_failed_forward() {
        let plain = head(200, &[("content-type", "text/plain; charset=utf-8")]);
        assert_eq!(judge(EndpointKind::Ocf, &plain), Answer::OcfForwardFailed);
        assert_eq!(judge(EndpointKind::Openai, &plain), Answer::Good);
        let json = head(200, &[("content-type", "application/json")]);
        assert_eq!(judge(EndpointKind::Ocf, &json), Answer::Good);
        let sse = head(200, &[("content-type", "Text/Event-Stream; charset=utf-8")]);
        assert_eq!(judge(EndpointKind::Ocf, &sse), Answer::Good);
        assert!(is_event_stream(&sse));
    }
}
