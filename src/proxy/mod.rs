//! The Pingora `ProxyHttp`: its phases carry out what the files below decide. Access checks
//! (access.rs), the routing target (target.rs), failover (failover.rs, fallback.rs, with the
//! request's attempts.rs record), the report at the end (report.rs); local routes, bodies and
//! responses (local.rs, body.rs, respond.rs).
//!
//! In short: answers local routes, reads the body's `model`, picks an upstream
//! from the model's pool, rewrites the request for it, carries out the one retry decision
//! (retry.rs) after a failed attempt, and renders every gateway error as OpenAI error JSON in
//! `fail_to_proxy`.
//!
//! Bodies up to 64 KiB go upstream from Pingora's retry buffer. Larger ones are re-sent through
//! a subrequest that carries the body already read (Pingora 0.9 forwards nothing past its
//! 64 KiB buffer once `request_filter` has read the body); the subrequest runs these same
//! phases with the route decided here.

mod access;
mod attempts;
mod body;
mod client_gone;
mod ctx;
mod failover;
mod fallback;
mod keys;
mod large_body;
mod local;
mod messages;
mod model_field;
mod report;
mod respond;
mod retry;
mod target;
mod watchdog;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::config::Config;
use crate::deployment::InFlight;
use crate::error::{ErrorKind, Rendered};
use crate::openai::with_include_usage;
use crate::request_id;
use crate::routes::{EndpointView, Routes, SharedRoutes};
use crate::shutdown::Lifecycle;
use crate::usage::{self, strip::StripUsageChunk};
use ctx::{answered, RequestCtx, Target};
use retry::Step;

/// Names the endpoint that served a response.
const ENDPOINT_HEADER: &str = "x-ai-proxy-endpoint";
/// Names the model the gateway routed the response to (a fallback's, after a fallback).
const MODEL_HEADER: &str = "x-ai-proxy-model";

/// A deployment of the request's model for its next attempt: one not tried yet, within
/// `max_attempts`, else one of the next fallback model's.
fn choose(ctx: &mut RequestCtx) -> Result<crate::deployment::Deployment> {
    // Bounded: each turn returns, or moves to the next fallback model (a finite list).
    loop {
        let Some(Target::Model { model, pool }) = ctx.target.as_ref() else {
            return Err(ErrorKind::Internal.err("no model to choose for"));
        };
        // `select` may claim an endpoint's trial: only call it to send.
        let max = ctx.max_attempts();
        let affinity = ctx.affinity;
        let unfit = messages::unfit(ctx.anthropic, pool);
        let chosen = ctx.attempts.with_tried(|tried| {
            let left_out;
            let excluded = if unfit.is_empty() {
                tried
            } else {
                left_out = [tried, &unfit].concat();
                &left_out
            };
            (tried.len() < max)
                .then(|| pool.select(excluded, affinity).cloned())
                .flatten()
        });
        if let Some(d) = chosen {
            return Ok(d);
        }
        let model = model.clone();
        if !ctx.switch_model(Step::Fallback) {
            return Err(ErrorKind::NoHealthyEndpoint
                .err(format!("no usable endpoint left for model `{model}`")));
        }
    }
}

/// Wait before retrying a deployment in place, unless the client goes away meanwhile.
async fn wait_before_retry(session: &Session, wait: Duration) -> Result<()> {
    let watch = client_gone::ClientWatch::of(session);
    client_gone::unless_gone(watch.as_ref(), tokio::time::sleep(wait)).await
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

    /// `request_filter` of a client's request, with the routing snapshot it started with.
    async fn filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        routes: &Routes,
    ) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = Some(request_id::for_request(req.headers.get(request_id::HEADER)));
        ctx.anthropic = messages::Route::of(req);
        let settings = &routes.settings;
        access::check_head_size(req, settings.max_header_bytes)?;
        access::authorize(&settings.auth, req, ctx)?;
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
                local::LocalAnswer::Keys => {
                    let body = keys::view(&settings.auth, &settings.limiter).await;
                    respond::json(session, 200, body, ctx.request_id.as_ref()).await?;
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
        if ctx.anthropic == Some(messages::Route::Messages) {
            ctx.chat = Some(messages::parse(&original)?);
        }
        let target::Routed {
            target,
            force_usage,
            affinity,
            model_field,
        } = target::decide(session, routes, &original)?;
        ctx.model_field = model_field;
        if let Target::Model { model, pool } = &target {
            messages::check_servable(ctx.anthropic, model, pool)?;
        }
        if let Some(client) = client {
            access::check_model(client, &target, settings.auth.hide_unlisted_models)?;
            access::admit(client, &settings.limiter, ctx).await?;
        }
        ctx.affinity = affinity;
        if force_usage {
            ctx.body_override = with_include_usage(&original);
            ctx.usage_forced = ctx.body_override.is_some();
        }
        if let Target::Model { model, pool } = &target {
            let body = ctx.body_override.as_ref().unwrap_or(&original);
            let allows = |m: &str| client.is_none_or(|c| c.allows(m));
            let chain = |map| {
                fallback::FallbackChain::of(map, model, body, &ctx.model_field, routes, allows)
            };
            ctx.fallbacks = chain(&settings.fallbacks);
            ctx.context_fallbacks = chain(&settings.context_window_fallbacks);
            let in_service = pool.has_candidate(&[]);
            ctx.target = Some(target);
            if !in_service {
                ctx.switch_model(retry::Step::Fallback);
            }
        } else {
            ctx.target = Some(target);
        }
        // A model with context-window fallbacks has its 400s read before the client sees them,
        // which only the subrequest path can do (see large_body.rs).
        if session.retry_buffer_truncated() || ctx.context_fallbacks.is_some() {
            ctx.via_subrequest = true;
            return large_body::forward(session, ctx, original).await;
        }
        Ok(false)
    }
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
            ctx.parent_can = route.can_move;
            ctx.usage_forced = route.strip_usage;
            ctx.affinity = route.affinity;
            ctx.model_field = route.model_field.clone();
            ctx.body = route.body.clone();
            ctx.anthropic = route.anthropic;
            ctx.chat = route.chat.clone();
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
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Carry out what the previous attempt's failure decided, if it failed.
        let step = ctx.attempts.take_next();
        match step {
            Some(Step::Again(wait)) => wait_before_retry(session, wait).await?,
            // A large-body subrequest's model was switched by the client's session.
            Some(s) if s.switches_model() && !ctx.in_subrequest && !ctx.switch_model(s) => {
                return Err(ErrorKind::NoHealthyEndpoint.err(format!(
                    "no usable endpoint left for model `{}`",
                    ctx.model().unwrap_or("-")
                )));
            }
            _ => {}
        }
        let in_place = matches!(step, Some(Step::Again(_) | Step::Reconnect));
        let upstream = match ctx.target.as_ref() {
            Some(Target::Model { .. }) => {
                let again = in_place.then(|| ctx.attempts.last_deployment()).flatten();
                let chosen = match again {
                    Some(d) => d,
                    None => choose(ctx)?,
                };
                // The body names the model as the client (or a fallback) does; this
                // deployment may know it by another id.
                let model = ctx.model().unwrap_or_default();
                let renamed = Some(&chosen.upstream_model).filter(|id| ***id != *model);
                let translated = ctx
                    .chat
                    .as_ref()
                    .filter(|_| messages::translates(&chosen.upstream.endpoint));
                ctx.attempt_body = match translated {
                    Some(chat) => Some(chat.body(&chosen.upstream_model)),
                    None => renamed.and_then(|id| {
                        let body = ctx.body_override.as_ref().unwrap_or(&ctx.body);
                        ctx.model_field.rename(body, id).map(|(renamed, _)| renamed)
                    }),
                };
                ctx.attempts.push(&chosen.upstream, Some(&chosen));
                ctx.deployment = Some(chosen.state.clone());
                chosen.upstream
            }
            Some(Target::Default(u)) => {
                let u = u.clone();
                ctx.attempts.push(&u, None);
                u
            }
            None => return Err(ErrorKind::Internal.err("no route decided")),
        };
        ctx.attempt_started = Some(Instant::now());
        upstream.count_attempt();
        let peer = Box::new(upstream.peer());
        // A retry's guard replaces (and so ends) the failed attempt's.
        ctx.in_flight = Some(InFlight::start(&upstream, ctx.deployment.as_ref()));
        ctx.current = Some(upstream);
        Ok(peer)
    }

    /// Nothing was sent: another endpoint of the model can take the request.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        failover::after_connect_failure(session, ctx, peer, e)
    }

    /// See [`failover::after_proxy_error`].
    fn error_while_proxy(
        &self,
        _peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        failover::after_proxy_error(session, ctx, e, client_reused)
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
        failover::judge_answer(session, ctx, &upstream, header)?;
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
            let count_tokens = self.count_tokens
                || ctx
                    .hold
                    .as_ref()
                    .is_some_and(|h| h.limits().counts_tokens());
            if count_tokens && (stream || failover::is_json(header)) {
                ctx.usage = Some(usage::Tail::default());
            }
            if ctx.usage_forced && stream {
                ctx.strip_usage = Some(StripUsageChunk::default());
                // The body shrinks: Pingora frames it (chunked) instead of trusting a length.
                header.remove_header(&http::header::CONTENT_LENGTH);
            }
        }
        ctx.answer = match (&ctx.chat, ctx.translating()) {
            (Some(chat), true) => Some(messages::Answer::for_head(header, chat.reply())?),
            _ => None,
        };
        if let Some(name) = &ep.name_header {
            header.insert_header(ENDPOINT_HEADER, name.clone())?;
        }
        if let Some(hold) = &ctx.hold {
            // The client's limits, in place of the upstream's (those of the gateway's own key).
            for (name, value) in access::limit_headers(hold.limits(), &hold.remaining) {
                header.insert_header(name, value)?;
            }
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
        if ctx.translating() {
            messages::to_chat_head(req)?;
        }
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
                ctx.attempts.set_tokens(tail.tokens_at_end(body.as_ref()));
                ctx.usage = None;
            }
        }
        if let Some(strip) = &mut ctx.strip_usage {
            strip.filter(body, end_of_stream);
        }
        if let Some(answer) = &mut ctx.answer {
            answer.filter(body, end_of_stream)?;
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
                let event = match ctx.anthropic {
                    Some(_) => messages::stream_error_event(r, ctx.model()),
                    None => respond::stream_error_event(r, ctx.model()),
                };
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
        let extra: Vec<_> = match (rendered.kind, &ctx.refusal, ctx.client_key()) {
            (ErrorKind::InvalidApiKey, _, _) => vec![(
                http::header::WWW_AUTHENTICATE.as_str(),
                http::HeaderValue::from_static("Bearer"),
            )],
            (_, Some(refusal), Some(key)) => {
                access::refusal_headers(&key.limits(), refusal).collect()
            }
            _ => Vec::new(),
        };
        let id = ctx.request_id.as_ref();
        let body = match ctx.anthropic {
            Some(_) => messages::error_body(&rendered),
            None => rendered.body(),
        };
        if let Err(write_err) = respond::json_with(session, status, body, id, &extra).await {
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
            // Its slot freed and its tokens charged now (the drop does it).
            if let Some(mut hold) = ctx.hold.take() {
                if let Some(t) = ctx.attempts.tokens() {
                    hold.charge(t.prompt + t.completion);
                }
            }
        }
    }
}
