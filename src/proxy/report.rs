//! What a finished client request reports: its metrics, its access log line and a debug line.
//! Read once, at its end, from the request's context and its attempts record.

use std::time::Duration;

use pingora::proxy::Session;
use pingora::{Error, ErrorType};

use super::attempts::Outcome;
use super::ctx::RequestCtx;

pub(super) fn request_done(session: &Session, e: Option<&Error>, ctx: &RequestCtx) {
    // No response at all: the client went away first (nginx's 499).
    let status = session
        .response_written()
        .map_or(499, |h| h.status.as_u16());
    let duration = ctx.started.map(|t| t.elapsed());
    let outcome = ctx.attempts.outcome();
    if let Some(m) = crate::metrics::get() {
        // `StatusCode` keeps the digits as static text: no formatting per request.
        let code = http::StatusCode::from_u16(status).ok();
        let code = code.as_ref().map_or("other", |c| c.as_str());
        let route = outcome.last.as_ref().and_then(|u| ctx.route_counters(u));
        match route {
            Some(route) => {
                route.request(m, code);
                if let Some(tokens) = outcome.tokens {
                    route.tokens(tokens);
                }
            }
            // Answered by the gateway itself, or a request without a model.
            None => {
                let endpoint = outcome
                    .last
                    .as_ref()
                    .map_or("", |u| u.endpoint.name.as_str());
                m.requests
                    .with_label_values(&[ctx.model().unwrap_or(""), endpoint, code])
                    .inc();
            }
        }
        if let Some(d) = duration {
            m.request_duration.observe(d);
        }
        let outcome_label = if status < 400 { "recovered" } else { "failed" };
        for (class, model) in &outcome.retries {
            m.retries
                .with_label_values(&[model, class.label(), outcome_label])
                .inc();
        }
    }
    if crate::access_log::enabled() {
        access_log(session, e, ctx, &outcome, status, duration);
    }
    if log::log_enabled!(log::Level::Debug) {
        log::debug!(
            "{} {} model={} status={status} attempts={} error={}",
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.model().unwrap_or("-"),
            outcome.sent,
            e.map_or("-", |e| e.etype().as_str()),
        );
    }
}

fn access_log(
    session: &Session,
    e: Option<&Error>,
    ctx: &RequestCtx,
    outcome: &Outcome,
    status: u16,
    duration: Option<Duration>,
) {
    use crate::access_log::{write, Entry, Timestamp};
    let req = session.req_header();
    let error = e.map(|e| match e.etype() {
        ErrorType::CustomCode(code, _) => *code,
        other => other.as_str(),
    });
    write(&Entry {
        time: Timestamp::now(),
        request_id: ctx
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
        method: req.method.as_str(),
        path: req.uri.path(),
        key: ctx.client_key().map(|c| c.name.as_str()),
        model: ctx.model(),
        endpoint: outcome.last.as_ref().map(|u| u.endpoint.name.as_str()),
        status,
        attempts: outcome.sent,
        retries: &outcome
            .retries
            .iter()
            .map(|(class, _)| class.label())
            .collect::<Vec<_>>(),
        ttfb: outcome.ttfb,
        duration,
        bytes_in: session.as_downstream().body_bytes_read(),
        bytes_out: session.as_downstream().body_bytes_sent(),
        tokens: outcome.tokens,
        error,
    });
}
