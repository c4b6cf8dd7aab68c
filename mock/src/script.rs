//! Scripted answers of the mock upstream: a test queues the exact answer (a JSON body, or an SSE
//! stream of given `data:` payloads, optionally cut by a reset) that the next inference request
//! gets, in place of the generated one. Tests of protocol translation need a model's exact
//! output (tool calls, finish reasons, usage, reasoning) rather than the mock's counted words.

use bytes::Bytes;
use serde_json::Value;

use super::shapes::SSE_DONE;

/// One scripted answer, queued with [`super::MockServer::push_script`]: the next inference POST
/// to an inference route (`/v1/chat/completions`, `/v1/messages`, ...: not discovery, not audio)
/// takes the first queued script and answers it whatever it asked (streaming or not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Script {
    /// Answer `status` with exactly this body as `application/json`.
    Json { status: u16, body: String },
    /// Answer 200 `text/event-stream`: every payload as one `data: <payload>\n\n` event in a
    /// body frame of its own (flushed on its own), then `data: [DONE]\n\n`. With
    /// `reset_after: Some(n)`, the first `n` events only (all of them when `n` is larger), then a
    /// TCP reset instead of `[DONE]`: an upstream that died mid-answer.
    Sse {
        events: Vec<String>,
        reset_after: Option<usize>,
    },
}

impl Script {
    /// 200 with this JSON value as the body.
    pub fn json(body: &Value) -> Self {
        Script::Json {
            status: 200,
            body: body.to_string(),
        }
    }

    /// A stream of these JSON values as `data:` payloads, then `[DONE]`.
    pub fn sse(events: impl IntoIterator<Item = Value>) -> Self {
        Script::Sse {
            events: events.into_iter().map(|v| v.to_string()).collect(),
            reset_after: None,
        }
    }

    /// A stream of these payloads exactly as given (they need not be JSON), then `[DONE]`.
    pub fn sse_raw(events: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Script::Sse {
            events: events.into_iter().map(Into::into).collect(),
            reset_after: None,
        }
    }

    /// Reset the connection after the first `n` events of this stream, before `[DONE]`. A JSON
    /// script is returned unchanged (use [`super::Fault::ResetAfter`] to cut a JSON body).
    pub fn reset_after(self, n: usize) -> Self {
        match self {
            Script::Sse { events, .. } => Script::Sse {
                events,
                reset_after: Some(n),
            },
            json => json,
        }
    }
}

/// The body frames of a scripted stream: its events, and the final `[DONE]`.
pub(crate) fn sse_frames(events: &[String]) -> (Vec<Bytes>, Bytes) {
    let frames = events
        .iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    (frames, Bytes::from_static(SSE_DONE))
}
