//! The Pingora `ProxyHttp`: answers local routes, reads the body's `model`, picks an upstream
//! from the model's pool, rewrites the request for it, retries connect failures on another
//! endpoint, and renders every gateway error as OpenAI error JSON in `fail_to_proxy`.
//!
//! Bodies up to 64 KiB go upstream from Pingora's retry buffer. Larger ones are re-sent through
//! a subrequest that carries the body already read (Pingora 0.9 forwards nothing past its
//! 64 KiB buffer once `request_filter` has read the body); the subrequest runs these same
//! phases with the route decided here.

mod attempts;
mod body;
mod client_gone;
mod ctx;
mod failover;
mod fallback;
mod large_body;
mod local;
mod report;
mod respond;
mod watchdog;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::auth::Auth;
use crate::balance::affinity_key;
use crate::config::Config;
use crate::deployment::InFlight;
use crate::error::{ErrorKind, Rendered};
use crate::multipart;
use crate::openai::{peek_request, with_include_usage, with_model, PeekError};
use crate::request_id;
use crate::routes::{EndpointView, Routes, SharedRoutes};
use crate::shutdown::Lifecycle;
use crate::usage::{self, strip::StripUsageChunk};
use ctx::{answered, RequestCtx, Target};

/// Names the endpoint that served a response.
const ENDPOINT_HEADER: &str = "x-ai-proxy-endpoint";
/// Names the model the gateway routed the response to (a fallback's, after a fallback).
const MODEL_HEADER: &str = "x-ai-proxy-model";

/// Routes whose streams end with a usage chunk when asked (`stream_options.include_usage`).
const STREAM_USAGE_ROUTES: &[&str] = &["/v1/chat/completions", "/v1/completions"];

/// Routes whose requests are meaningless without a `model`: a JSON body without one is a 400.
const MODEL_ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

/// Where a request goes, as its body says.
struct Routed {
    target: Target,
    /// The gateway is to ask for the stream's usage (`stream_usage: force`, a stream whose
    /// client did not).
    force_usage: bool,
    /// The request's affinity key, when its pool's policy wants one.
    affinity: Option<u64>,
    /// Where a multipart body holds its `model` field's value.
    multipart_model: Option<std::ops::Range<usize>>,
}

/// The gateway's proxy logic. What a reload can change comes with each routing snapshot
/// (`Routes::settings`); the rest is fixed for the life of the process.
pub struct Gateway {
    routes: SharedRoutes,
    lifecycle: Lifecycle,
    /// Metrics or the access log want each answer's token usage.
    count_tokens: bool,
}

impl Gateway {
    pub fn new(config: &Config, routes: SharedRoutes, lifecycle: Lifecycle) -> Self {
        Gateway {
            routes,
            lifecycle,
            count_tokens: config.metrics || config.access_log != crate::access_log::Target::Off,
        }
    }

    /// Decide the target of a proxied request from its body.
    fn target(&self, session: &Session, routes: &Routes, body: &[u8]) -> Result<Routed> {
        let default = || {
            routes
                .default_upstream
                .clone()
                .map(|u| Routed {
                    target: Target::Default(u),
                    force_usage: false,
                    affinity: None,
                    multipart_model: None,
                })
                .ok_or_else(|| ErrorKind::NoHealthyEndpoint.err("no endpoint is reachable yet"))
        };
        let path = session.req_header().uri.path();
        let needs_model = MODEL_ROUTES.contains(&path);
        if body.is_empty() {
            if needs_model && session.req_header().method == http::Method::POST {
                return Err(ErrorKind::InvalidRequest
                    .err("the request body is empty; it needs a JSON object with a `model`"));
            }
            return default();
        }
        if let Some(content_type) = multipart_type(session) {
            let field = crate::multipart::model_field(content_type, body)
                .map_err(|why| ErrorKind::InvalidRequest.err(why))?;
            let Some(range) = field else {
                return default();
            };
            let model = String::from_utf8_lossy(&body[range.clone()])
                .trim()
                .to_string();
            let fields = crate::openai::RequestFields::default();
            let mut routed = self.model_target(session, routes, model, &fields, false)?;
            routed.multipart_model = Some(range);
            return Ok(routed);
        }
        let fields = match peek_request(body) {
            Ok(f) => f,
            Err(PeekError::NotJson(why)) => {
                return Err(ErrorKind::InvalidRequest.err(format!(
                    "the request body is not a valid JSON object: {why}"
                )))
            }
        };
        let force_usage = routes.settings.force_stream_usage
            && STREAM_USAGE_ROUTES.contains(&path)
            && fields.stream_without_usage();
        let model = match fields.model.as_deref() {
            Some(m) => m.to_owned(),
            None if needs_model => {
                return Err(
                    ErrorKind::InvalidRequest.err("the request body needs a string `model` field")
                )
            }
            None => return default(),
        };
        self.model_target(session, routes, model, &fields, force_usage)
    }

    /// The target of a request for `model`.
    fn model_target(
        &self,
        session: &Session,
        routes: &Routes,
        model: String,
        fields: &crate::openai::RequestFields<'_>,
        force_usage: bool,
    ) -> Result<Routed> {
        match routes.pool(&model) {
            Some(pool) => {
                let affinity = pool.wants_affinity().then(|| {
                    let session_id = session
                        .req_header()
                        .headers
                        .get(affinity_key::SESSION_HEADER);
                    affinity_key::key(
                        routes.settings.affinity_key,
                        fields,
                        session_id.map(|v| v.as_bytes()),
                    )
                });
                Ok(Routed {
                    target: Target::Model {
                        pool: pool.clone(),
                        model,
                    },
                    force_usage,
                    affinity: affinity.flatten(),
                    multipart_model: None,
                })
            }
            None if !routes.ready => Err(ErrorKind::NoHealthyEndpoint
                .err("model discovery has not completed yet; retry shortly")),
            None => Err(ErrorKind::ModelNotFound.err(local::not_found_message(&model))),
        }
    }
}

impl Gateway {
    /// `request_filter` of a client's request, with the routing snapshot it started with.
    async fn filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        routes: &Routes,
    ) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = Some(request_id::for_request(req.headers.get(request_id::HEADER)));
        let head_bytes = head_size(req);
        let settings = &routes.settings;
        if head_bytes > settings.max_header_bytes {
            return Err(ErrorKind::HeaderTooLarge.err(format!(
                "the request head is {head_bytes} bytes, over the limit of {}",
                settings.max_header_bytes
            )));
        }
        self.authorize(&settings.auth, req, ctx)?;
        let scrape = req.uri.path() == "/metrics"
            && (req.method == http::Method::GET || req.method == http::Method::HEAD);
        if let Some(m) = crate::metrics::get().filter(|_| scrape) {
            let text = m.render(routes.endpoint_views.iter().map(EndpointView::gauges));
            let id = ctx.request_id.as_ref();
            respond::full(session, 200, respond::PROMETHEUS_TEXT, text, id).await?;
            return Ok(true);
        }
        let draining = self.lifecycle.is_draining();
        let client = ctx.client.and_then(|at| settings.auth.key(at));
        if let Some(answer) = local::answer(&req.method, req.uri.path(), routes, draining, client) {
            return match answer {
                local::LocalAnswer::Json(status, body) => {
                    respond::json(session, status, body, ctx.request_id.as_ref()).await?;
                    Ok(true)
                }
                local::LocalAnswer::Error(kind, msg) => Err(kind.err(msg)),
                local::LocalAnswer::Refused(e) => {
                    client.inspect(|c| c.count_refusal("model_not_allowed"));
                    Err(e)
                }
            };
        }
        let original = body::read(session, settings.max_body_bytes, settings.body_deadline).await?;
        ctx.body = original.clone();
        let Routed {
            target,
            force_usage,
            affinity,
            multipart_model,
        } = self.target(session, routes, &original)?;
        ctx.multipart_model = multipart_model;
        if let Some(client) = client {
            let model = match &target {
                Target::Model { model, .. } => Some(model.as_str()),
                Target::Default(_) => None,
            };
            let allowed = model.map_or(client.allows_any_model(), |m| client.allows(m));
            if !allowed {
                client.count_refusal("model_not_allowed");
                return Err(local::refused_model(
                    model,
                    settings.auth.hide_unlisted_models,
                ));
            }
        }
        ctx.affinity = affinity;
        if force_usage {
            ctx.body_override = with_include_usage(&original);
            ctx.usage_forced = ctx.body_override.is_some();
        }
        if let Target::Model { model, pool } = &target {
            // Most configs have no fallbacks: skip hashing the model for nothing.
            let fallbacks = (!settings.fallbacks.is_empty())
                .then(|| settings.fallbacks.get(model))
                .flatten();
            if let Some(models) = fallbacks {
                let body = ctx
                    .body_override
                    .clone()
                    .unwrap_or_else(|| original.clone());
                let allows = |m: &str| client.is_none_or(|c| c.allows(m));
                ctx.fallbacks = fallback::FallbackChain::new(body, models, routes, allows);
            }
            let in_service = pool.has_candidate(&[]);
            ctx.target = Some(target);
            if !in_service {
                ctx.switch_to_fallback();
            }
        } else {
            ctx.target = Some(target);
        }
        if session.retry_buffer_truncated() {
            ctx.via_subrequest = true;
            return large_body::forward(session, ctx, original).await;
        }
        Ok(false)
    }

    /// Access control, before the body is read: `/health` and `/ready` are open, the admin
    /// routes (`/metrics`, `/v1/endpoints`) need the admin key, every other route a client
    /// key (when the gateway has keys) within its rate limit. The model check comes once the
    /// body has named the model.
    fn authorize(&self, auth: &Auth, req: &RequestHeader, ctx: &mut RequestCtx) -> Result<()> {
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

/// The content type of a multipart request.
fn multipart_type(session: &Session) -> Option<&[u8]> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .filter(|v| v.starts_with(b"multipart/"))
}

/// The SSE event that ends a stream the upstream cut: `data: {"error": {...}}`, the shape both
/// OpenAI SDKs raise on (Python `APIError`, Node `APIError`), with no `[DONE]` after it.
fn stream_error_event(r: &Rendered, model: Option<&str>) -> Bytes {
    let mut r = r.clone();
    r.message = format!(
        "the upstream stream was interrupted before it finished ({}){}",
        r.message,
        model.map_or(String::new(), |m| format!(" (model `{m}`)"))
    );
    let mut event = Vec::with_capacity(256);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&r.body());
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // Runs once the request head is in: its deadline is met.
        crate::downstream::head_read();
        RequestCtx {
            _active: Some(self.lifecycle.start()),
            started: Some(Instant::now()),
            ..RequestCtx::default()
        }
    }

    /// Only the client's own session may spawn the large-body subrequest.
    fn allow_spawning_subrequest(&self, session: &Session, _ctx: &RequestCtx) -> bool {
        session.subrequest_ctx.is_none()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(sub) = session.subrequest_ctx.as_ref() {
            // The client's session already read the body and chose the route.
            let route = sub
                .user_ctx()
                .and_then(|u| u.downcast_ref::<large_body::SubrequestRoute>())
                .ok_or_else(|| ErrorKind::Internal.err("subrequest without a route"))?;
            ctx.target = Some(route.target.clone());
            ctx.routes = Some(route.routes.clone());
            ctx.attempts = route.attempts.clone();
            ctx.in_subrequest = true;
            ctx.request_id = route.request_id.clone();
            ctx.started = route.started;
            ctx.parent_can_fall_back = route.can_fall_back;
            ctx.usage_forced = route.strip_usage;
            ctx.affinity = route.affinity;
            ctx.multipart_model = route.multipart_model.clone();
            ctx.body = route.body.clone();
            let body_len = route.body.len();
            // Its request head is a copy of the client's as received: when the body was
            // rewritten for a fallback model, its length is not the client's.
            let req = session.req_header_mut();
            if req.headers.contains_key(http::header::CONTENT_LENGTH) {
                req.insert_header(http::header::CONTENT_LENGTH, body_len)?;
            }
            return Ok(false);
        }
        // The snapshot stays with the request: its client key is found in it by position.
        let routes = self.routes.load_full();
        ctx.routes = Some(routes.clone());
        self.filter(session, ctx, &routes).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Bounded: each turn returns, or moves to the next fallback model (a finite list).
        let upstream = loop {
            match ctx.target.as_ref() {
                Some(Target::Model { model, pool }) => {
                    // `select` may claim an endpoint's trial: only call it to send.
                    let max = ctx.max_attempts();
                    let affinity = ctx.affinity;
                    let chosen = ctx.attempts.with_tried(|tried| {
                        (tried.len() < max)
                            .then(|| pool.select(tried, affinity))
                            .flatten()
                    });
                    if let Some(d) = chosen {
                        // The body names the model as the client (or a fallback) does; this
                        // deployment may know it by another id.
                        let renamed = Some(&d.upstream_model).filter(|id| ***id != **model);
                        ctx.attempt_body = renamed.and_then(|id| {
                            let body = ctx.body_override.as_ref().unwrap_or(&ctx.body);
                            match &ctx.multipart_model {
                                Some(at) => Some(multipart::with_value(body, at.clone(), id)),
                                None => with_model(body, id),
                            }
                        });
                        ctx.deployment = Some(d.state.clone());
                        break d.upstream.clone();
                    }
                    let model = model.clone();
                    if !ctx.switch_to_fallback() {
                        return Err(ErrorKind::NoHealthyEndpoint
                            .err(format!("no usable endpoint left for model `{model}`")));
                    }
                }
                Some(Target::Default(u)) => break u.clone(),
                None => return Err(ErrorKind::Internal.err("no route decided")),
            }
        };
        ctx.attempts.push(&upstream);
        ctx.attempt_started = Some(Instant::now());
        upstream.count_attempt();
        let peer = Box::new(upstream.peer());
        // A retry's guard replaces (and so ends) the failed attempt's.
        ctx.in_flight = Some(InFlight::start(&upstream, ctx.deployment.as_ref()));
        ctx.current = Some(upstream.clone());
        Ok(peer)
    }

    /// Nothing was sent: another endpoint of the model can take the request.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
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
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        mut e: Box<Error>,
        ctx: &mut RequestCtx,
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
        let timed_out = e.etype() == &ErrorType::ReadTimedout
            || matches!(e.etype(), ErrorType::CustomCode(_, 504));
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

    /// Judges the upstream's answer before any of it goes to the client: a failure moves the
    /// request to another endpoint while one is left; otherwise the answer passes as it is
    /// (an OCF head's failed forward becomes a 502, never a 200).
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        header: &mut pingora::http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(upstream) = ctx.current.clone() else {
            return Ok(());
        };
        let ep = &upstream.endpoint;
        if header.status.is_informational() {
            return Ok(());
        }
        if let Some(w) = &ctx.watchdog {
            w.head();
        }
        let answer = failover::judge(ep.kind, header);
        // The server answered: whatever the answer says is about the model, not the address.
        match answer {
            failover::Answer::RateLimited(Some(wait)) => ctx.hold_for(wait),
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
        if answer == failover::Answer::OcfForwardFailed {
            return Err(ErrorKind::UpstreamFailed
                .err("the ocf head could not forward the request to a peer"));
        }
        if let Some(t) = ctx.started {
            let ttfb = t.elapsed();
            ctx.attempts.set_ttfb(ttfb);
            if let Some(m) = crate::metrics::get() {
                m.time_to_first_byte.observe(ttfb);
            }
        }
        if let (Some(Target::Model { pool, .. }), Some(t)) = (&ctx.target, ctx.attempt_started) {
            // This attempt's own time: a failover's earlier attempts are not this endpoint's.
            pool.observe_ttfb(upstream.id, t.elapsed());
        }
        if header.status.is_success() && matches!(ctx.target, Some(Target::Model { .. })) {
            let stream = failover::is_event_stream(header);
            if self.count_tokens && (stream || failover::is_json(header)) {
                ctx.usage = Some(usage::Tail::default());
            }
            if ctx.usage_forced && stream {
                ctx.strip_usage = Some(StripUsageChunk::default());
                // The body shrinks: Pingora frames it (chunked) instead of trusting a length.
                header.remove_header(&http::header::CONTENT_LENGTH);
            }
        }
        if let Some(name) = &ep.name_header {
            header.insert_header(ENDPOINT_HEADER, name.clone())?;
        }
        if let Some(id) = &ctx.request_id {
            // An upstream's own id (OpenAI's `req_...`) stays available beside ours.
            if let Some(theirs) = header.headers.get(request_id::HEADER).filter(|v| *v != id) {
                let theirs = theirs.clone();
                header.insert_header(request_id::UPSTREAM_HEADER, theirs)?;
            }
            header.insert_header(request_id::HEADER, id.clone())?;
        }
        if let Some(Target::Model { pool, .. }) = &ctx.target {
            if let Some(model) = &pool.model_header {
                header.insert_header(MODEL_HEADER, model.clone())?;
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let upstream = ctx
            .current
            .as_ref()
            .ok_or_else(|| ErrorKind::Internal.err("no upstream chosen"))?;
        upstream.endpoint.rewrite_request(req)?;
        if !ctx.overhead_recorded {
            ctx.overhead_recorded = true;
            if let (Some(m), Some(t)) = (crate::metrics::get(), ctx.started) {
                m.overhead.observe(t.elapsed());
            }
        }
        if let Some(id) = &ctx.request_id {
            req.insert_header(request_id::HEADER, id.clone())?;
        }
        // A rewritten body is longer or shorter than the client's.
        if let Some(len) = ctx.body_to_send().map(Bytes::len) {
            if req.headers.contains_key(http::header::CONTENT_LENGTH) {
                req.insert_header(http::header::CONTENT_LENGTH, len)?;
            }
        }
        Ok(())
    }

    /// The whole body reaches here as one chunk (Pingora's retry buffer, replayed on every
    /// attempt): a rewritten body (`include_usage` added, a fallback model) is swapped in.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(rewritten) = ctx.body_to_send() {
            if body.as_ref().is_some_and(|b| !b.is_empty()) {
                *body = Some(rewritten.clone());
            }
        }
        Ok(())
    }

    /// Keeps the watchdog's idle deadline moving and the answer's tail for its token usage;
    /// body bytes pass untouched, but for a usage chunk the client did not ask for.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(w) = &ctx.watchdog {
            if end_of_stream {
                w.finish();
            } else {
                w.chunk();
            }
        }
        if let Some(tail) = &mut ctx.usage {
            if !end_of_stream {
                if let Some(chunk) = body {
                    tail.push(chunk);
                }
            } else {
                ctx.attempts.set_tokens(tail.tokens_at_end(body.as_deref()));
                ctx.usage = None;
            }
        }
        if let Some(strip) = &mut ctx.strip_usage {
            strip.filter(body, end_of_stream);
        }
        Ok(None)
    }

    /// Arms the watchdog when the endpoint's timeouts need one.
    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.watchdog = ctx
            .current
            .as_ref()
            .map(|u| u.endpoint.timeouts)
            .filter(|t| t.need_watchdog())
            .and_then(|t| watchdog::Watchdog::arm(fd, t));
        Ok(())
    }

    /// The one place gateway errors become responses.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy
    where
        RequestCtx: Send + Sync,
    {
        let rendered = Rendered::from_error(e);
        let status = rendered.as_ref().map_or(0, |r| r.kind.status());
        let gone = FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        };
        if session.subrequest_ctx.is_some() {
            return gone; // the client's session renders it
        }
        if answered(session) {
            // A partial answer is out. A stream cut by the upstream ends with an error event
            // and without `[DONE]`, so SDKs raise instead of taking the cut for the end.
            let cut_stream = *e.esource() != ErrorSource::Downstream
                && session
                    .response_written()
                    .is_some_and(failover::is_event_stream);
            if let (true, Some(r)) = (cut_stream, &rendered) {
                let event = stream_error_event(r, ctx.model());
                if let Err(write_err) = session.write_response_body(Some(event), true).await {
                    log::debug!("could not send the stream error event: {write_err}");
                }
            }
            return gone;
        }
        let Some(mut rendered) = rendered else {
            return gone;
        };
        if let (Some(model), ErrorKind::UpstreamFailed | ErrorKind::UpstreamTimeout) =
            (ctx.model(), rendered.kind)
        {
            rendered.message = format!("{} (model `{model}`)", rendered.message);
        }
        let extra = match (rendered.kind, ctx.retry_after) {
            (ErrorKind::InvalidApiKey, _) => vec![(
                http::header::WWW_AUTHENTICATE.as_str(),
                http::HeaderValue::from_static("Bearer"),
            )],
            // Whole seconds, rounded up: a client that waits that long is let through.
            (ErrorKind::RateLimited, Some(wait)) => vec![(
                http::header::RETRY_AFTER.as_str(),
                http::HeaderValue::from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            )],
            _ => Vec::new(),
        };
        let id = ctx.request_id.as_ref();
        if let Err(write_err) =
            respond::json_with(session, status, rendered.body(), id, &extra).await
        {
            log::debug!("could not send error response: {write_err}");
        } else if rendered.kind == ErrorKind::BodyTooLarge {
            body::discard_rest(session).await;
        }
        FailToProxy {
            error_code: status,
            // Errors before any upstream work leave the connection in a clean state unless
            // the body was left unread (then keep-alive is already off).
            can_reuse_downstream: status < 500,
        }
    }

    /// Client mistakes are answered, not logged as gateway errors; a subrequest's failure is
    /// logged once, by the subrequest.
    fn suppress_error_log(&self, _session: &Session, ctx: &RequestCtx, e: &Error) -> bool {
        ctx.via_subrequest || matches!(e.etype(), ErrorType::CustomCode(_, s) if *s < 500)
    }

    /// Once per client request (a large-body subrequest is part of its client's request).
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if session.subrequest_ctx.is_none() {
            crate::downstream::request_done();
            report::request_done(session, e, ctx);
        }
    }
}
