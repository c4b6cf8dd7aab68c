//! Anthropic's Messages API as the mock upstream serves it natively (`POST /v1/messages`,
//! `POST /v1/messages/count_tokens`): a fixed message, as JSON or as a realistic event stream,
//! whose exact bytes are public so that a test can check a gateway passes them through unchanged.

use bytes::Bytes;
use serde_json::Value;

use super::shapes::count_words;

/// The text of the fixed message.
pub const TEXT: &str = "Hello from the native mock.";

/// The model named in the fixed message (whatever the request asked for: the bytes are fixed).
pub const MODEL: &str = "claude-mock";

/// The non-streamed answer of `POST /v1/messages`, byte for byte.
pub const MESSAGE_JSON: &str = concat!(
    r#"{"id":"msg_mock_01","type":"message","role":"assistant","model":"claude-mock","#,
    r#""content":[{"type":"text","text":"Hello from the native mock."}],"#,
    r#""stop_reason":"end_turn","stop_sequence":null,"#,
    r#""usage":{"input_tokens":12,"output_tokens":6}}"#
);

/// The streamed answer of `POST /v1/messages` (`"stream": true`), one event per body frame, in
/// order, as Anthropic sends them (a `ping` after `message_start`; the text in two deltas; the
/// stop reason and output tokens in `message_delta`). `message_stop` is the final event.
pub const MESSAGE_SSE: [&str; 8] = [
    concat!(
        "event: message_start\n",
        r#"data: {"type":"message_start","message":{"id":"msg_mock_01","type":"message","role":"assistant","model":"claude-mock","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
        "\n\n"
    ),
    concat!("event: ping\n", r#"data: {"type": "ping"}"#, "\n\n"),
    concat!(
        "event: content_block_start\n",
        r#"data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        "\n\n"
    ),
    concat!(
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
        "\n\n"
    ),
    concat!(
        "event: content_block_delta\n",
        r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" from the native mock."}}"#,
        "\n\n"
    ),
    concat!(
        "event: content_block_stop\n",
        r#"data: {"type":"content_block_stop","index":0}"#,
        "\n\n"
    ),
    concat!(
        "event: message_delta\n",
        r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":6}}"#,
        "\n\n"
    ),
    concat!(
        "event: message_stop\n",
        r#"data: {"type":"message_stop"}"#,
        "\n\n"
    ),
];

/// The whole streamed answer: [`MESSAGE_SSE`] concatenated.
pub fn message_sse() -> String {
    MESSAGE_SSE.concat()
}

/// What `POST /v1/messages/count_tokens` answers for this request body: the whitespace-separated
/// words of its `system` and `messages` (at least 1), so that a test sees its body arrived.
pub fn input_tokens(req: &Value) -> u64 {
    let words = ["system", "messages"]
        .iter()
        .filter_map(|k| req.get(*k))
        .map(|v| count_words(v, 0))
        .sum::<u64>();
    words.max(1)
}

/// The Messages API routes, relative to the inference root (`/v1/...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Messages,
    CountTokens,
}

impl Route {
    pub(crate) fn from_path(path: &str) -> Option<Route> {
        match path {
            "/v1/messages" => Some(Route::Messages),
            "/v1/messages/count_tokens" => Some(Route::CountTokens),
            _ => None,
        }
    }
}

/// The frames of the streamed message: all but the last, and the final `message_stop`.
pub(crate) fn sse_frames() -> (Vec<Bytes>, Bytes) {
    let (last, rest) = MESSAGE_SSE.split_last().expect("MESSAGE_SSE is not empty");
    (
        rest.iter()
            .map(|e| Bytes::from_static(e.as_bytes()))
            .collect(),
        Bytes::from_static(last.as_bytes()),
    )
}

/// `{"input_tokens":N}` for this request body.
pub(crate) fn count_tokens_json(req: &Value) -> Bytes {
    Bytes::from(serde_json::json!({ "input_tokens": input_tokens(req) }).to_string())
}
