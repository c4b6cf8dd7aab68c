//! How the gateway judges an upstream's response head: pass it on, or blame the endpoint and,
//! while nothing has reached the client, try another one.

use std::time::{Duration, SystemTime};

use pingora::http::ResponseHeader;

use crate::endpoint::EndpointKind;

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
