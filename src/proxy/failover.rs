//! Failover: each failure of an attempt is classed, blamed on the address or the deployment,
//! and given its next step by the one decision in retry.rs; the step is recorded for the next
//! attempt (upstream_peer, or the large-body loop) to carry out. Pingora's phases only call
//! these.

use std::time::{Duration, SystemTime};

use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use super::ctx::{answered, RequestCtx};
use super::retry::{self, Class, Step};
use crate::endpoint::EndpointKind;
use crate::error::ErrorKind;
use crate::upstream::Upstream;

/// An attempt failed with `class` (`why`: the reason in metrics): blame it, decide the next
/// step and record it.
fn failed(session: &Session, ctx: &RequestCtx, class: Class, why: &str) -> Step {
    ctx.blame(class, why);
    let step = retry::decide(class, &ctx.retry_options(session));
    ctx.attempts.decided(ctx.model().unwrap_or(""), class, step);
    if step.retries() && class != Class::Stale {
        log::warn!(
            "upstream {} failed ({}); next for model {}: {step:?}",
            ctx.current
                .as_ref()
                .map_or("-", |u| u.endpoint.name.as_str()),
            class.label(),
            ctx.model().unwrap_or("-")
        );
    }
    step
}

/// Nothing was sent: the address is blamed, unless the gateway itself could not make a
/// socket. Then no address is at fault and none would do better: blaming them would eject
/// every healthy endpoint while the gateway is at its open-files limit, and keep them out
/// after it recovers.
pub(super) fn after_connect_failure(
    session: &Session,
    ctx: &mut RequestCtx,
    peer: &HttpPeer,
    mut e: Box<Error>,
) -> Box<Error> {
    if out_of_local_resources(&e) {
        log::warn!("connect to {peer}: the gateway is out of sockets ({e}); no endpoint blamed");
        return ErrorKind::Internal
            .err("the gateway could not open an upstream connection (out of open files)");
    }
    log::debug!("connect to {peer} failed: {}", e.etype().as_str());
    let step = failed(session, ctx, Class::Connect, e.etype().as_str());
    e.set_retry(ctx.retries_here(step));
    e
}

/// Whether `e` comes from the gateway's own limits (no file descriptor or kernel memory for a
/// socket), found in its chain of causes.
fn out_of_local_resources(e: &Error) -> bool {
    let mut cause = e.cause.as_deref();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return matches!(
                io.raw_os_error(),
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
            );
        }
        // A wrapped pingora error is boxed once more in the chain (`Box<Error>` as the cause).
        let inner = c
            .downcast_ref::<Box<Error>>()
            .map(|b| &**b)
            .or_else(|| c.downcast_ref::<Error>());
        cause = inner.and_then(|e| e.cause.as_deref());
    }
    false
}

/// An error after connecting: an answer `judge_answer` turned down (already decided), a
/// pooled connection the upstream had closed, a timeout before the first byte, a reset.
/// Client-side errors (the client went away) are final.
pub(super) fn after_proxy_error(
    session: &Session,
    ctx: &mut RequestCtx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    if let Some(step) = ctx.attempts.next() {
        e.set_retry(ctx.retries_here(step));
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
    let class = match e.etype() {
        ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            if client_reused && !answered(session) =>
        {
            Class::Stale
        }
        // A server busy with the model, not a broken address.
        ErrorType::ReadTimedout | ErrorType::CustomCode(_, 504) => Class::FirstByteTimeout,
        _ => Class::Reset,
    };
    let step = failed(session, ctx, class, e.etype().as_str());
    e.set_retry(ctx.retries_here(step));
    e
}

/// Judges an upstream's answer before any of it goes to the client: `Ok` passes it on; an
/// error moves the request on (as decided) or, for an OCF head's failed forward, ends it.
pub(super) fn judge_answer(
    session: &Session,
    ctx: &mut RequestCtx,
    upstream: &Upstream,
    header: &ResponseHeader,
) -> Result<()> {
    let ep = &upstream.endpoint;
    let Some(class) = judge(ep.kind, header) else {
        ctx.record_success();
        return Ok(());
    };
    let step = failed(session, ctx, class, header.status.as_str());
    if step.retries() {
        return Err(ErrorKind::UpstreamFailed.err(format!(
            "endpoint {} answered HTTP {}",
            ep.name,
            header.status.as_u16()
        )));
    }
    if class == Class::Unavailable(0) {
        return Err(
            ErrorKind::UpstreamFailed.err("the ocf head could not forward the request to a peer")
        );
    }
    Ok(())
}

/// The class of a failed answer's head; `None` for an answer to pass on as a success. A 400
/// is `Rejected` here: only its body can say that it is about the context window.
pub fn judge(kind: EndpointKind, header: &ResponseHeader) -> Option<Class> {
    match header.status.as_u16() {
        // An OCF head's HTTP 200 with a plain-text `ERROR: ...` body: its forward to a peer
        // failed. A successful OCF answer is JSON or an event stream, so the content type
        // tells the two apart without holding back the body.
        200 if kind == EndpointKind::Ocf && content_type_is(header, "text/plain") => {
            Some(Class::Unavailable(0))
        }
        429 => Some(Class::RateLimited(retry_after(header, SystemTime::now()))),
        s @ 502..=504 => Some(Class::Unavailable(s)),
        s @ 500..=599 => Some(Class::ServerError(s)),
        400..=499 => Some(Class::Rejected),
        _ => None,
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

    #[test]
    fn only_the_gateways_own_limits_spare_the_address() {
        let connect_error = |os_error| {
            let socket = Error::because(
                ErrorType::SocketError,
                "failed to create socket",
                std::io::Error::from_raw_os_error(os_error),
            );
            Error::because(ErrorType::InternalError, "Fail to connect", socket)
        };
        assert!(out_of_local_resources(&connect_error(libc::EMFILE)));
        assert!(out_of_local_resources(&connect_error(libc::ENFILE)));
        assert!(!out_of_local_resources(&connect_error(libc::ECONNREFUSED)));
        assert!(!out_of_local_resources(&Error::new(
            ErrorType::ConnectTimedout
        )));
    }

    fn head(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).unwrap();
        for (k, v) in headers {
            h.insert_header(k.to_string(), *v).unwrap();
        }
        h
    }

    #[test]
    fn answers_are_classed_by_status() {
        for s in [200, 201, 304] {
            assert_eq!(judge(EndpointKind::Openai, &head(s, &[])), None, "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            let c = judge(EndpointKind::Openai, &head(s, &[]));
            assert_eq!(c, Some(Class::Rejected), "{s}");
        }
        for s in [502, 503, 504] {
            let c = judge(EndpointKind::Openai, &head(s, &[]));
            assert_eq!(c, Some(Class::Unavailable(s)));
        }
        let c = judge(EndpointKind::Openai, &head(500, &[]));
        assert_eq!(c, Some(Class::ServerError(500)));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let c = judge(EndpointKind::Openai, &head(429, &[("retry-after", "7")]));
        assert_eq!(c, Some(Class::RateLimited(Some(Duration::from_secs(7)))));

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let date = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let h = head(429, &[("retry-after", &date)]);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        let h = head(429, &[("retry-after", &past)]);
        assert_eq!(retry_after(&h, now), Some(Duration::ZERO));

        let c = judge(EndpointKind::Openai, &head(429, &[("retry-after", "soon")]));
        assert_eq!(c, Some(Class::RateLimited(None)));
    }

    #[test]
    fn an_ocf_plain_text_200_is_a_failed_forward() {
        let plain = head(200, &[("content-type", "text/plain; charset=utf-8")]);
        assert_eq!(
            judge(EndpointKind::Ocf, &plain),
            Some(Class::Unavailable(0))
        );
        assert_eq!(judge(EndpointKind::Openai, &plain), None);
        let json = head(200, &[("content-type", "application/json")]);
        assert_eq!(judge(EndpointKind::Ocf, &json), None);
        let sse = head(200, &[("content-type", "Text/Event-Stream; charset=utf-8")]);
        assert_eq!(judge(EndpointKind::Ocf, &sse), None);
        assert!(is_event_stream(&sse));
    }
}
