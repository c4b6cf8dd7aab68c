//! Anthropic's Messages API (`POST /v1/messages`) on the proxy's phases. The request is routed
//! by its `model` like any other; each attempt's endpoint decides what goes upstream: a
//! `messages: native` endpoint gets the client's bytes, a `translate` one a chat completions
//! request made once from them (src/frontends/anthropic), whose answer is turned back into
//! Anthropic's shapes as it arrives. The gateway's own errors on these routes take Anthropic's
//! error shape.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use super::{failover, respond};
use crate::endpoint::{Endpoint, MessagesMode};
use crate::error::{ErrorKind, Rendered};
use crate::frontends::anthropic::{self, ChatRequest, Reply, StreamTranslator};
use crate::routes::Pool;

const MESSAGES_PATH: &str = "/v1/messages";
const COUNT_TOKENS_PATH: &str = "/v1/messages/count_tokens";
/// Where a translated request goes (under the endpoint's own prefix).
const CHAT_PATH: &[u8] = b"/v1/chat/completions";
/// Request headers of Anthropic's API that mean nothing to a chat completions server.
const ANTHROPIC_HEADERS: [&str; 2] = ["anthropic-version", "anthropic-beta"];
/// The most of a non-streamed answer held for its translation (a chat completion is a few
/// KiB; this bounds an upstream that sends without end).
const MAX_WHOLE_ANSWER: usize = 16 << 20;

/// The Anthropic routes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Route {
    Messages,
    /// `/v1/messages/count_tokens`: only a native endpoint can count.
    CountTokens,
}

impl Route {
    pub(super) fn of(req: &RequestHeader) -> Option<Route> {
        match req.uri.path() {
            MESSAGES_PATH => Some(Route::Messages),
            COUNT_TOKENS_PATH => Some(Route::CountTokens),
            _ => None,
        }
    }
}

/// A `/v1/messages` body, translated once for every attempt that needs it; a body that is not
/// a Messages request is the client's mistake, told in Anthropic's words.
pub(super) fn parse(body: &[u8]) -> Result<Arc<ChatRequest>> {
    ChatRequest::from_messages(body)
        .map(Arc::new)
        .map_err(|why| ErrorKind::InvalidRequest.err(why))
}

/// Whether an attempt on `endpoint` is translated.
pub(super) fn translates(endpoint: &Endpoint) -> bool {
    endpoint.messages == MessagesMode::Translate
}

/// Whether `endpoint` may take a request of `route`: count_tokens has no chat equivalent.
pub(super) fn serves(route: Option<Route>, endpoint: &Endpoint) -> bool {
    route != Some(Route::CountTokens) || endpoint.messages == MessagesMode::Native
}

/// The head of a translated attempt: the chat completions path (the endpoint's own prefix is
/// added after), no Anthropic headers, and an answer the gateway can read (not compressed).
pub(super) fn to_chat_head(req: &mut RequestHeader) -> Result<()> {
    req.set_raw_path(CHAT_PATH)?;
    for name in ANTHROPIC_HEADERS {
        req.remove_header(name);
    }
    req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    Ok(())
}

/// A translated attempt's answer, turned into Anthropic's shapes on its way to the client.
pub(super) enum Answer {
    /// A stream, event by event.
    Stream(StreamTranslator),
    /// A whole answer, held until it ends: a message (`error: None`) or an error of this status.
    Whole {
        held: BytesMut,
        error: Option<u16>,
        reply: Reply,
    },
}

impl Answer {
    /// How to translate the answer with this head; the head is fixed up for the body it will
    /// carry (another length, so none: Pingora frames it).
    pub(super) fn for_head(header: &mut ResponseHeader, reply: Reply) -> Result<Answer> {
        header.remove_header(&http::header::CONTENT_LENGTH);
        header.remove_header(&http::header::CONTENT_ENCODING);
        let status = header.status.as_u16();
        if header.status.is_success() && failover::is_event_stream(header) {
            return Ok(Answer::Stream(StreamTranslator::new(reply)));
        }
        header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        Ok(Answer::Whole {
            held: BytesMut::new(),
            error: (!header.status.is_success()).then_some(status),
            reply,
        })
    }

    /// Translate what passes: a stream's events at once, a whole answer at its end.
    pub(super) fn filter(&mut self, body: &mut Option<Bytes>, end: bool) -> Result<()> {
        match self {
            Answer::Stream(t) => {
                let mut out = BytesMut::new();
                if let Some(chunk) = body.as_ref() {
                    t.push(chunk, &mut out);
                }
                if end && !t.finish(&mut out) {
                    out.extend_from_slice(&anthropic::error_event(
                        502,
                        "the upstream ended the answer before it finished",
                    ));
                }
                // Nothing yet (an event split across chunks) sends nothing: an empty chunk
                // would end a chunked body.
                *body = (!out.is_empty()).then(|| out.freeze());
            }
            Answer::Whole { held, error, reply } => {
                if let Some(chunk) = body.take() {
                    if held.len() + chunk.len() > MAX_WHOLE_ANSWER {
                        return Err(ErrorKind::UpstreamFailed.err(format!(
                            "the upstream's answer is over {MAX_WHOLE_ANSWER} bytes"
                        )));
                    }
                    held.extend_from_slice(&chunk);
                }
                if end {
                    *body = Some(whole(held, *error, reply));
                }
            }
        }
        Ok(())
    }
}

/// A whole translated answer.
fn whole(held: &[u8], error: Option<u16>, reply: &Reply) -> Bytes {
    match error {
        Some(status) => anthropic::error_from_openai(status, held),
        None => anthropic::message_from_chat(held, reply).unwrap_or_else(|why| {
            log::warn!("messages: the upstream's answer is not a chat completion: {why}");
            anthropic::error_body(502, "the upstream's answer could not be translated")
        }),
    }
}

/// A gateway error as Anthropic's error body.
pub(super) fn error_body(r: &Rendered) -> Bytes {
    anthropic::error_body(r.kind.status(), &r.message)
}

/// The event that ends a stream the upstream cut, in Anthropic's shape.
pub(super) fn stream_error_event(r: &Rendered, model: Option<&str>) -> Bytes {
    let cut = respond::stream_cut(r, model);
    anthropic::error_event(cut.kind.status(), &cut.message)
}

/// The ids of the deployments in `pool` that cannot take a request of `route` (only
/// count_tokens has any): the choice of a deployment leaves them out like tried ones.
pub(super) fn unfit(route: Option<Route>, pool: &Pool) -> Vec<usize> {
    if route != Some(Route::CountTokens) {
        return Vec::new();
    }
    pool.deployments()
        .iter()
        .filter(|d| !serves(route, &d.upstream.endpoint))
        .map(|d| d.upstream.id)
        .collect()
}

/// A count_tokens request for a model that no native endpoint serves is answered here.
pub(super) fn check_servable(route: Option<Route>, model: &str, pool: &Pool) -> Result<()> {
    let none_serves = |p: &Pool| {
        p.deployments()
            .iter()
            .all(|d| !serves(route, &d.upstream.endpoint))
    };
    if route != Some(Route::CountTokens) || !none_serves(pool) {
        return Ok(());
    }
    Err(ErrorKind::NotFound.err(format!(
        "count_tokens needs an endpoint that serves /v1/messages itself (`messages: native`); \
         none of model `{model}`'s does"
    )))
}
