//! Errors in Anthropic's shape, `{"type":"error","error":{"type":...,"message":...}}`: the
//! gateway's own, an upstream's error answer, and the SSE event that ends a stream.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::json::{object, object_slice, string, to_bytes, Raw};

/// How much of an upstream's error answer that is not JSON is shown: enough for a proxy's
/// one-line error page, not a whole HTML document.
const MAX_TEXT: usize = 300;
/// How much of an upstream's error message is shown.
const MAX_MESSAGE: usize = 2048;

/// Anthropic's error type for an HTTP status: 400 invalid_request_error, 401
/// authentication_error, 403 permission_error, 404 not_found_error, 413 request_too_large,
/// 429 rate_limit_error, 503 and 529 overloaded_error, other 5xx api_error (and other 4xx
/// invalid_request_error).
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
}

/// `{"type":"error","error":{"type":...,"message":...}}`
pub fn error_body(status: u16, message: &str) -> Bytes {
    to_bytes(&Body {
        kind: "error",
        error: Detail {
            kind: error_type(status),
            message,
        },
    })
}

/// An upstream's error answer (OpenAI shape `{"error":{"message":..}}`, or anything else: its
/// text, cut to a few hundred bytes, valid UTF-8) in Anthropic's shape.
pub fn error_from_openai(status: u16, body: &[u8]) -> Bytes {
    let message = openai_message(body).unwrap_or_else(|| text(body, status));
    error_body(status, &message)
}

/// The same as an SSE event: `event: error\ndata: {...}\n\n`.
pub fn error_event(status: u16, message: &str) -> Bytes {
    let body = error_body(status, message);
    let mut event = Vec::with_capacity(body.len() + 24);
    event.extend_from_slice(b"event: error\ndata: ");
    event.extend_from_slice(&body);
    event.extend_from_slice(b"\n\n");
    event.into()
}

/// The message of an OpenAI error body: `{"error":{"message":..}}`, `{"error":"..."}`, or
/// vLLM's older `{"object":"error","message":..}`.
fn openai_message(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(borrow, default)]
        error: Option<Raw<'a>>,
        #[serde(borrow, default)]
        message: Option<Raw<'a>>,
    }
    let shape = object_slice::<Shape>(body)?;
    let message = match shape.error {
        Some(error) => error_message(error),
        None => shape.message.and_then(string).map(|m| cut(&m, MAX_MESSAGE)),
    };
    message.filter(|m| !m.is_empty())
}

/// The message of an `error` value: a string, or an object's `message`.
pub(super) fn error_message(error: Raw<'_>) -> Option<String> {
    #[derive(Deserialize)]
    struct Error<'a> {
        #[serde(borrow, default)]
        message: Option<Raw<'a>>,
    }
    let message = string(error).or_else(|| object::<Error>(error)?.message.and_then(string))?;
    Some(cut(&message, MAX_MESSAGE))
}

/// An answer that is not an OpenAI error: the start of its text.
fn text(body: &[u8], status: u16) -> String {
    let head = &body[..body.len().min(MAX_TEXT + 3)];
    let text = String::from_utf8_lossy(head);
    let text = cut(text.trim(), MAX_TEXT);
    if text.is_empty() {
        format!("the upstream answered HTTP {status}")
    } else {
        text
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn cut(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn json(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn types_by_status() {
        for (status, want) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "api_error"),
            (529, "overloaded_error"),
        ] {
            assert_eq!(error_type(status), want, "{status}");
        }
    }

    #[test]
    fn bodies_and_events() {
        assert_eq!(
            json(&error_body(429, "slow \"down\"")),
            json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow \"down\""}})
        );
        let event = error_event(500, "boom");
        let text = std::str::from_utf8(&event).unwrap();
        assert!(text.starts_with("event: error\ndata: {") && text.ends_with("}\n\n"));
        assert_eq!(
            json(&text.as_bytes()[19..event.len() - 2]),
            json!({"type": "error", "error": {"type": "api_error", "message": "boom"}})
        );
    }

    #[test]
    fn upstream_errors_keep_their_message() {
        let message = |status, body: &[u8]| {
            let v = json(&error_from_openai(status, body));
            (v["error"]["type"].clone(), v["error"]["message"].clone())
        };
        assert_eq!(
            message(400, br#"{"error":{"message":"context too long","type":"invalid_request_error","code":null}}"#),
            (json!("invalid_request_error"), json!("context too long"))
        );
        assert_eq!(
            message(500, br#"{"error":"plain"}"#),
            (json!("api_error"), json!("plain"))
        );
        assert_eq!(
            message(
                400,
                br#"{"object":"error","message":"vllm says no","code":400}"#
            ),
            (json!("invalid_request_error"), json!("vllm says no"))
        );
        assert_eq!(
            message(502, b"  <html>Bad Gateway</html>\n"),
            (json!("api_error"), json!("<html>Bad Gateway</html>"))
        );
        assert_eq!(
            message(503, b""),
            (
                json!("overloaded_error"),
                json!("the upstream answered HTTP 503")
            )
        );
        // Cut to a few hundred bytes, at a character boundary, invalid UTF-8 replaced.
        let mut long = "é".repeat(400).into_bytes();
        long.extend_from_slice(b"\xff");
        let (_, text) = message(500, &long);
        let text = text.as_str().unwrap();
        assert!(text.len() <= MAX_TEXT && text.len() >= MAX_TEXT - 1);
        assert_eq!(message(500, b"\xff\xfe").1, json!("\u{fffd}\u{fffd}"));
    }
}
