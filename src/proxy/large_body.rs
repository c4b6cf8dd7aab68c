//! Bodies over Pingora's 64 KiB retry buffer, and requests whose 400 answers must be read
//! before the client sees them. Pingora 0.9 forwards nothing past that buffer once
//! `request_filter` has read the body, so the client's session re-sends the request as a
//! subrequest carrying the body it read. Pingora also writes an answer's head to the client
//! before its body is read, and only the body of a 400 says whether the prompt was over the
//! context window: a model with `context_window_fallbacks` goes through here too, and the
//! client's session holds a 400 back until its (small) body is judged. A subrequest cannot replay its body either, so
//! failover happens one level up: a subrequest that fails before answering asks for another
//! attempt, and the client's session runs a new subrequest with the same body (a `Bytes`
//! clone, no copy), excluding the endpoints already tried.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::HttpTask;
use pingora::proxy::subrequest::pipe::{
    pipe_subrequest, InputBody, InputBodyType, PipeSubrequestState,
};
use pingora::proxy::subrequest::{BodyMode, Ctx as SubrequestCtx};
use pingora::proxy::Session;
use pingora::Result;

use super::attempts::Attempts;
use super::client_gone;
use super::ctx::{answered, CanMove, RequestCtx, Target};
use super::model_field::ModelField;
use super::retry::{self, Class, Step};
use crate::error::ErrorKind;
use crate::routes::Routes;

/// What the client's session hands each subrequest.
pub(super) struct SubrequestRoute {
    pub target: Target,
    /// The body the subrequest carries (it differs from the client's once rewritten; its
    /// deployment may rewrite it once more for its upstream id).
    pub body: bytes::Bytes,
    /// Where `body` names its model.
    pub model_field: ModelField,
    /// The client request's snapshot: its settings are the subrequest's.
    pub routes: Arc<Routes>,
    /// The client request's record, which the subrequest's attempt is added to.
    pub attempts: Arc<Attempts>,
    /// Where the client's session could still move the request after this model.
    pub can_move: CanMove,
    /// The gateway asked for the stream's usage chunk: it is removed from the client's bytes.
    pub strip_usage: bool,
    /// The request's affinity key.
    pub affinity: Option<u64>,
    /// The client session's request id (the subrequest's copied head may not have it).
    pub request_id: Option<http::HeaderValue>,
    /// When the client's request head was read.
    pub started: Option<std::time::Instant>,
    /// The Anthropic route, and its request translated (see messages.rs).
    pub anthropic: Option<super::messages::Route>,
    pub chat: Option<Arc<crate::frontends::anthropic::ChatRequest>>,
}

/// Re-run the request as a subrequest carrying the body already read (over 64 KiB), and again
/// on another endpoint (or fallback model) while a failed subrequest asks for it.
pub(super) async fn forward(
    session: &mut Session,
    ctx: &mut RequestCtx,
    original: Bytes,
) -> Result<bool> {
    // The pipe does not read the client while it waits: watch the socket for a close.
    let watch = client_gone::ClientWatch::of(session);
    let routes = ctx
        .routes
        .clone()
        .ok_or_else(|| ErrorKind::Internal.err("no routing snapshot"))?;
    let models = 1
        + ctx.fallbacks.as_ref().map_or(0, |f| f.remaining())
        + ctx.context_fallbacks.as_ref().map_or(0, |f| f.remaining());
    // Bounded: every model gets at most `max_attempts`, and a stale connection one more.
    for _ in 0..(ctx.max_attempts() + 1) * models {
        let body = ctx
            .body_override
            .clone()
            .unwrap_or_else(|| original.clone());
        let route = SubrequestRoute {
            target: ctx
                .target
                .clone()
                .ok_or_else(|| ErrorKind::Internal.err("no route"))?,
            body: body.clone(),
            routes: routes.clone(),
            attempts: ctx.attempts.clone(),
            can_move: ctx.can_move(),
            strip_usage: ctx.usage_forced,
            affinity: ctx.affinity,
            model_field: ctx.model_field.clone(),
            request_id: ctx.request_id.clone(),
            started: ctx.started,
            anthropic: ctx.anthropic,
            chat: ctx.chat.clone(),
        };
        let Some(spawner) = session.subrequest_spawner.as_ref() else {
            return Err(ErrorKind::Internal.err("subrequest spawner missing"));
        };
        let sub_ctx = SubrequestCtx::builder()
            .user_ctx(Box::new(route))
            .body_mode(BodyMode::ExpectBody)
            .build();
        let (prepared, handle) = spawner.create_subrequest(session.as_downstream(), sub_ctx);
        let input = InputBodyType::Preset(InputBody::Bytes(vec![body]));
        let mut held = Held400::new(ctx.context_fallbacks.is_some());
        let pipe = pipe_subrequest(session, prepared, handle, |t| held.filter(t), input);
        let piped = client_gone::unless_gone(watch.as_ref(), pipe).await?;
        let error = match piped {
            Ok(state) if state.header_received => {
                let Some((head, body)) = held.take() else {
                    return Ok(true);
                };
                if over_context_window(session, ctx, &body) {
                    continue;
                }
                let end = body.is_empty();
                let mut answer = vec![HttpTask::Header(head, end)];
                if !end {
                    answer.push(HttpTask::Body(Some(body), true));
                }
                session.write_response_tasks(answer).await?;
                return Ok(true);
            }
            Ok(_) => ErrorKind::UpstreamFailed.err("the upstream sent no response"),
            Err(e) => {
                settle(e.state).await;
                e.error
            }
        };
        // Carry out what the subrequest's failure decided: a move to another model here (the
        // chains are this session's), the rest in the next subrequest's `upstream_peer`.
        match ctx.attempts.next() {
            Some(step) if step.retries() && !answered(session) => {
                if step.switches_model() {
                    ctx.attempts.take_next();
                    if !ctx.switch_model(step) {
                        return Err(error);
                    }
                }
            }
            _ => return Err(error),
        }
    }
    Err(ErrorKind::UpstreamFailed.err("no attempt left for this request"))
}

/// Whether a held 400 says the prompt was over the context window and the request moved to
/// a model with a longer one. The subrequest judged the 400 by its head (final); its body
/// tells more.
fn over_context_window(session: &Session, ctx: &mut RequestCtx, body: &[u8]) -> bool {
    if !retry::is_context_window_error(body) {
        return false;
    }
    let step = retry::decide(Class::ContextWindow, &ctx.retry_options(session));
    let model = ctx.model().unwrap_or_default().to_string();
    ctx.attempts.decided(&model, Class::ContextWindow, step);
    if step != Step::ContextFallback {
        return false;
    }
    ctx.attempts.take_next();
    ctx.switch_model(step)
}

/// The most of a 400's body held back: error messages are small.
const MAX_HELD_BODY: usize = 16 * 1024;

/// A subrequest's 400 answer, held back from the client until its body is judged.
struct Held400 {
    enabled: bool,
    head: Option<Box<ResponseHeader>>,
    body: BytesMut,
}

impl Held400 {
    fn new(enabled: bool) -> Self {
        Held400 {
            enabled,
            head: None,
            body: BytesMut::new(),
        }
    }

    /// The pipe's task filter: a 400's tasks are kept, every other answer passes.
    fn filter(&mut self, task: HttpTask) -> Result<Option<HttpTask>> {
        if !self.enabled {
            return Ok(Some(task));
        }
        match task {
            HttpTask::Header(head, _) if head.status == 400 && self.head.is_none() => {
                self.head = Some(head);
                Ok(None)
            }
            HttpTask::Body(chunk, _) if self.head.is_some() => {
                let chunk = chunk.unwrap_or_default();
                if self.body.len() + chunk.len() > MAX_HELD_BODY {
                    return Err(ErrorKind::UpstreamFailed
                        .err("the upstream's 400 answer is too large for an error message"));
                }
                self.body.extend_from_slice(&chunk);
                Ok(None)
            }
            HttpTask::Done | HttpTask::Trailer(_) if self.head.is_some() => Ok(None),
            task => Ok(Some(task)),
        }
    }

    /// The held answer, if there is one.
    fn take(&mut self) -> Option<(Box<ResponseHeader>, Bytes)> {
        let head = self.head.take()?;
        Some((head, std::mem::take(&mut self.body).freeze()))
    }
}

/// How long a failed subrequest may take to finish its own error handling.
const SETTLE_TIME: Duration = Duration::from_secs(1);

/// Wait for a failed subrequest's task to end, draining what it still sends. The pipe can
/// report a failure (a timeout, a reset) before the subrequest's `error_while_proxy` has
/// decided whether to ask for another attempt.
pub(super) async fn settle(mut state: PipeSubrequestState) {
    let Some(mut task) = state.join_handle.take() else {
        return;
    };
    let drain = async {
        if let Some(rx) = state.pipe_rx.as_mut() {
            while rx.recv().await.is_some() {}
        }
        std::future::pending::<()>().await
    };
    let settled = async {
        tokio::select! {
            _ = &mut task => {}
            () = drain => {}
        }
    };
    if tokio::time::timeout(SETTLE_TIME, settled).await.is_err() {
        log::debug!("a failed large-body subrequest is still running; not waiting for it");
    }
}
