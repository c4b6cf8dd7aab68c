//! A non-streamed chat completion as an Anthropic `message`, and what the streamed translation
//! shares with it (stop reasons, usage, ids).
//!
//! The upstream's answer is read leniently: a field of an unexpected type counts as absent, and
//! only an answer without a first choice is refused. Texts are copied as the upstream wrote
//! them.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::json::{nonempty, object, object_slice, parse, string, to_bytes, Raw};
use super::request::Reply;

/// A non-streamed chat completion body as an Anthropic `message` JSON body. Err: not a chat
/// completion (the caller then answers 502 api_error).
pub fn message_from_chat(body: &[u8], reply: &Reply) -> Result<Bytes, String> {
    let completion = object_slice::<Completion>(body)
        .ok_or("the upstream's answer is not a chat completion (not a JSON object)")?;
    let choice = completion
        .choices
        .and_then(parse::<Vec<Raw>>)
        .and_then(|choices| choices.first().copied())
        .and_then(object::<Choice>)
        .ok_or("the upstream's answer is not a chat completion (no choice)")?;
    let message = choice
        .message
        .and_then(object::<ChatMessage>)
        .unwrap_or_default();
    let mut content = Vec::new();
    if let Some(thinking) = nonempty(message.reasoning_content).or(nonempty(message.reasoning)) {
        content.push(Block::Thinking {
            thinking,
            signature: "",
        });
    }
    if let Some(text) = nonempty(message.content) {
        content.push(Block::Text { text });
    }
    let calls = message.tool_calls.and_then(parse::<Vec<Raw>>);
    for raw in calls.unwrap_or_default() {
        let n = u32::try_from(content.len()).unwrap_or(u32::MAX);
        content.push(tool_use(raw, reply.made_up_id("toolu_", n)));
    }
    let finish = choice.finish_reason.and_then(string);
    let (stop_reason, stop_sequence) = stop_reason(finish.as_deref(), choice.stop_reason, reply);
    let id = completion.id.and_then(string);
    Ok(to_bytes(&Message {
        id: message_id(id.as_deref(), reply),
        kind: "message",
        role: "assistant",
        model: reply.model(),
        content,
        stop_reason,
        stop_sequence,
        usage: usage(completion.usage).unwrap_or_default(),
    }))
}

/// Anthropic's `stop_reason` and `stop_sequence` for a choice's `finish_reason`. vLLM names the
/// stop string that ended the answer in `stop_reason` (a token id when a stop token did): it
/// is a `stop_sequence` when it is one of the client's.
pub(super) fn stop_reason<'r>(
    finish: Option<&str>,
    matched: Option<&RawValue>,
    reply: &'r Reply,
) -> (&'static str, Option<&'r str>) {
    match finish {
        Some("length") => ("max_tokens", None),
        Some("tool_calls" | "function_call") => ("tool_use", None),
        Some("content_filter") => ("refusal", None),
        Some("stop") => {
            let matched = matched.and_then(string);
            match matched.and_then(|m| reply.stop_sequence(&m)) {
                Some(sequence) => ("stop_sequence", Some(sequence)),
                None => ("end_turn", None),
            }
        }
        _ => ("end_turn", None),
    }
}

/// `msg_` and the upstream's id, or one made up.
pub(super) fn message_id(upstream: Option<&str>, reply: &Reply) -> String {
    match upstream {
        Some(id) if !id.is_empty() => format!("msg_{id}"),
        _ => reply.made_up_id("msg_", 0),
    }
}

/// Anthropic's usage counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub(super) struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

/// The counts of a chat `usage` object; `None` when it has none.
pub(super) fn usage(raw: Option<Raw<'_>>) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Counts {
        prompt_tokens: Option<u64>,
        completion_tokens: Option<u64>,
    }
    let counts = raw.and_then(object::<Counts>)?;
    (counts.prompt_tokens.is_some() || counts.completion_tokens.is_some()).then(|| Usage {
        input_tokens: counts.prompt_tokens.unwrap_or(0),
        output_tokens: counts.completion_tokens.unwrap_or(0),
    })
}

#[derive(Deserialize)]
struct Completion<'a> {
    #[serde(borrow, default)]
    id: Option<Raw<'a>>,
    #[serde(borrow, default)]
    choices: Option<Raw<'a>>,
    #[serde(borrow, default)]
    usage: Option<Raw<'a>>,
}

/// A choice of a completion, or of a stream's chunk (whose `delta` is the `message` so far).
#[derive(Deserialize)]
pub(super) struct Choice<'a> {
    #[serde(borrow, default)]
    pub index: Option<Raw<'a>>,
    #[serde(borrow, default, alias = "delta")]
    pub message: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub finish_reason: Option<Raw<'a>>,
    /// vLLM: the stop string (or token id) that ended the answer.
    #[serde(borrow, default)]
    pub stop_reason: Option<Raw<'a>>,
}

/// A chat message, or a stream's delta of one.
#[derive(Default, Deserialize)]
pub(super) struct ChatMessage<'a> {
    #[serde(borrow, default)]
    pub content: Option<Raw<'a>>,
    /// vLLM's and DeepSeek's name for the reasoning text.
    #[serde(borrow, default)]
    pub reasoning_content: Option<Raw<'a>>,
    /// Newer vLLM's and OpenRouter's.
    #[serde(borrow, default)]
    pub reasoning: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub tool_calls: Option<Raw<'a>>,
}

/// A tool call, or a stream's fragment of one (which names the call by `index`).
#[derive(Default, Deserialize)]
pub(super) struct ToolCall<'a> {
    #[serde(borrow, default)]
    pub index: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub id: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub function: Option<Raw<'a>>,
}

/// A tool call's function; in a stream, `arguments` is a fragment of the arguments' JSON text.
#[derive(Default, Deserialize)]
pub(super) struct Function<'a> {
    #[serde(borrow, default)]
    pub name: Option<Raw<'a>>,
    #[serde(borrow, default)]
    pub arguments: Option<Raw<'a>>,
}

#[derive(Serialize)]
struct Message<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<Block<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Block<'a> {
    Thinking {
        thinking: Raw<'a>,
        signature: &'static str,
    },
    Text {
        text: Raw<'a>,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Input<'a>,
    },
}

/// A tool call's input: its arguments when they are a JSON object, else `{}`.
#[derive(Serialize)]
#[serde(untagged)]
enum Input<'a> {
    Json(Cow<'a, RawValue>),
    Empty {},
}

/// A tool call as a `tool_use` block; `made_up_id` when the upstream gave the call none.
fn tool_use(raw: Raw<'_>, made_up_id: String) -> Block<'_> {
    let call = object::<ToolCall>(raw).unwrap_or_default();
    let function = call.function.and_then(object::<Function>);
    let function = function.unwrap_or_default();
    Block::ToolUse {
        id: call.id.and_then(string).unwrap_or(Cow::Owned(made_up_id)),
        name: function.name.and_then(string).unwrap_or_default(),
        input: arguments(function.arguments),
    }
}

/// Arguments are a JSON string holding the object (some servers send the object itself).
fn arguments(raw: Option<Raw<'_>>) -> Input<'_> {
    let Some(raw) = raw else {
        return Input::Empty {};
    };
    let json = match string(raw) {
        Some(text) => serde_json::from_str::<Box<RawValue>>(&text)
            .ok()
            .map(Cow::Owned),
        None => Some(Cow::Borrowed(raw)),
    };
    match json {
        Some(json) if json.get().starts_with('{') => Input::Json(json),
        _ => Input::Empty {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn reply() -> Reply {
        Reply::new("claude-x", vec!["END".into(), "\n\nHuman:".into()])
    }

    fn message(completion: Value) -> Value {
        let out = message_from_chat(completion.to_string().as_bytes(), &reply()).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    fn completion(message: Value, finish: Value) -> Value {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "up",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
        })
    }

    #[test]
    fn a_text_answer() {
        let out = message(completion(
            json!({"role": "assistant", "content": "Hello \"you\""}),
            json!("stop"),
        ));
        assert_eq!(
            out,
            json!({
                "id": "msg_chatcmpl-1", "type": "message", "role": "assistant", "model": "claude-x",
                "content": [{"type": "text", "text": "Hello \"you\""}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 12, "output_tokens": 5}
            })
        );
    }

    #[test]
    fn thinking_comes_first() {
        for field in ["reasoning_content", "reasoning"] {
            let out = message(completion(
                json!({"role": "assistant", "content": "42", field: "let me think"}),
                json!("stop"),
            ));
            assert_eq!(
                out["content"],
                json!([
                    {"type": "thinking", "thinking": "let me think", "signature": ""},
                    {"type": "text", "text": "42"}
                ])
            );
        }
        let out = message(completion(
            json!({"content": "42", "reasoning_content": "", "reasoning": null}),
            json!("stop"),
        ));
        assert_eq!(out["content"], json!([{"type": "text", "text": "42"}]));
    }

    #[test]
    fn tool_calls_become_tool_use_blocks() {
        let calls = json!([
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_2", "type": "function", "function": {"name": "broken", "arguments": "{\"city\": "}},
            {"type": "function", "function": {"name": "listy", "arguments": "[1]"}},
            {"id": "call_4", "function": {"name": "as_object", "arguments": {"a": 1}}}
        ]);
        let out = message(completion(
            json!({"role": "assistant", "content": null, "tool_calls": calls}),
            json!("tool_calls"),
        ));
        assert_eq!(out["stop_reason"], "tool_use");
        let content = out["content"].as_array().unwrap();
        assert_eq!(content.len(), 4);
        assert_eq!(
            content[0],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        assert_eq!(content[1]["input"], json!({}));
        assert_eq!(content[2]["input"], json!({}));
        assert!(content[2]["id"].as_str().unwrap().starts_with("toolu_"));
        assert_eq!(content[3]["input"], json!({"a": 1}));
    }

    #[test]
    fn each_stop_reason() {
        let text = json!({"content": "x"});
        for (finish, want) in [
            (json!("stop"), "end_turn"),
            (json!("length"), "max_tokens"),
            (json!("tool_calls"), "tool_use"),
            (json!("function_call"), "tool_use"),
            (json!("content_filter"), "refusal"),
            (json!(null), "end_turn"),
            (json!("abort"), "end_turn"),
        ] {
            let out = message(completion(text.clone(), finish));
            assert_eq!(out["stop_reason"], want);
            assert_eq!(out["stop_sequence"], Value::Null);
        }
        let mut c = completion(text.clone(), json!("stop"));
        c["choices"][0]["stop_reason"] = json!("END");
        let out = message(c.clone());
        assert_eq!(out["stop_reason"], "stop_sequence");
        assert_eq!(out["stop_sequence"], "END");
        // Not one of the client's (a stop string of the deployment), or a stop token's id.
        for other in [json!("<|eot|>"), json!(128009)] {
            c["choices"][0]["stop_reason"] = other;
            let out = message(c.clone());
            assert_eq!(out["stop_reason"], "end_turn");
            assert_eq!(out["stop_sequence"], Value::Null);
        }
    }

    #[test]
    fn lenient_about_the_rest_and_strict_about_choices() {
        let out = message(json!({"choices": [{"message": {"content": "hi"}}]}));
        assert!(out["id"].as_str().unwrap().starts_with("msg_"));
        assert_eq!(out["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
        assert_eq!(out["stop_reason"], "end_turn");
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{\"error\":{\"message\":\"boom\"}}",
            b"{\"choices\":[]}",
            b"{\"choices\":[1]}",
        ] {
            assert!(message_from_chat(bad, &reply()).is_err());
        }
    }
}
