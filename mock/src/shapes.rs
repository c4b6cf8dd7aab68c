//! OpenAI-compatible JSON shapes the mock upstream answers with (completions, chunks, errors, model lists, dnt tables).

use bytes::Bytes;
use http::StatusCode;
use serde_json::{json, Map, Value};

/// The inference endpoints the mock serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Endpoint {
    /// Endpoint for a path relative to the inference root (`/v1/...`).
    pub(crate) fn from_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::Chat),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/responses" => Some(Endpoint::Responses),
            _ => None,
        }
    }

    pub(crate) fn id_prefix(self) -> &'static str {
        match self {
            Endpoint::Chat => "chatcmpl-mock-",
            Endpoint::Completions => "cmpl-mock-",
            Endpoint::Embeddings => "embd-mock-",
            Endpoint::Responses => "resp-mock-",
        }
    }
}

const WORDS: [&str; 8] = [
    "Hello",
    "from",
    "the",
    "mock",
    "upstream,",
    "one",
    "token",
    "each.",
];

/// Text of content event `i` (words separated by a leading space after the first).
pub(crate) fn word(i: usize) -> String {
    let w = WORDS[i % WORDS.len()];
    if i == 0 {
        w.to_string()
    } else {
        format!(" {w}")
    }
}

/// The full completion text for `events` events.
pub(crate) fn full_text(events: usize) -> String {
    (0..events).map(word).collect()
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn count_words(v: &Value, depth: usize) -> u64 {
    if depth > 32 {
        return 0;
    }
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(|x| count_words(x, depth + 1)).sum(),
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| k.as_str() != "role" && k.as_str() != "type")
            .map(|(_, x)| count_words(x, depth + 1))
            .sum(),
        _ => 0,
    }
}

/// Prompt tokens: whitespace-separated words of the prompt fields, at least 1.
pub(crate) fn prompt_tokens(endpoint: Endpoint, req: &Value) -> u64 {
    let n = match endpoint {
        Endpoint::Chat => req.get("messages").map(|v| count_words(v, 0)).unwrap_or(0),
        Endpoint::Completions => req.get("prompt").map(|v| count_words(v, 0)).unwrap_or(0),
        Endpoint::Embeddings => req.get("input").map(|v| count_words(v, 0)).unwrap_or(0),
        Endpoint::Responses => {
            req.get("input").map(|v| count_words(v, 0)).unwrap_or(0)
                + req
                    .get("instructions")
                    .map(|v| count_words(v, 0))
                    .unwrap_or(0)
        }
    };
    n.max(1)
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// `data: <json>\n\n`
pub(crate) fn sse_data(v: &Value) -> Bytes {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// `event: <name>\ndata: <json>\n\n`
pub(crate) fn sse_named(event: &str, v: &Value) -> Bytes {
    let mut out = format!("event: {event}\ndata: ").into_bytes();
    out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

pub(crate) const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "invalid_request_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

/// `{"error":{"message":..,"type":..,"param":null,"code":..}}`
pub(crate) fn error_json(status: StatusCode, message: &str, code: &str) -> Bytes {
    to_bytes(&json!({
        "error": {
            "message": message,
            "type": error_type(status),
            "param": null,
            "code": code,
        }
    }))
}

pub(crate) fn models_json(models: &[String], owner: &str) -> Bytes {
    let data: Vec<Value> = models
        .iter()
        .map(
            |m| json!({"id": m, "object": "model", "created": 1_700_000_000u64, "owned_by": owner}),
        )
        .collect();
    to_bytes(&json!({"object": "list", "data": data}))
}

fn peer_token(name: &str) -> String {
    let t: String = name.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if t.is_empty() {
        "mock".to_string()
    } else {
        t
    }
}

/// A dnt table shaped like real OCF payloads: a head peer plus one `llm` worker per model.
pub(crate) fn dnt_table_json(models: &[String], name: &str) -> Bytes {
    let token = peer_token(name);
    let now = unix_now();
    let mut table = Map::new();
    let head_id = format!("QmMockHead{token}");
    table.insert(
        format!("/{head_id}"),
        json!({
            "id": head_id,
            "status": "",
            "connected": true,
            "service": [],
            "last_seen": now,
        }),
    );
    for (i, m) in models.iter().enumerate() {
        let id = format!("QmMockWorker{i}{token}");
        table.insert(
            format!("/{id}"),
            json!({
                "id": id,
                "status": "ready",
                "connected": true,
                "service": [{
                    "name": "llm",
                    "status": "connected",
                    "host": "localhost",
                    "port": "8080",
                    "identity_group": [format!("model={m}")],
                }],
                "last_seen": now,
            }),
        );
    }
    to_bytes(&Value::Object(table))
}

/// Everything a completion answer needs.
pub(crate) struct Completion {
    pub(crate) endpoint: Endpoint,
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) prompt_tokens: u64,
    pub(crate) events: usize,
    /// A stream asked for usage (`stream_options.include_usage`): it ends with a usage chunk,
    /// and every other chunk has `"usage": null`, as OpenAI sends them.
    pub(crate) include_usage: bool,
}

impl Completion {
    fn usage(&self) -> Value {
        let c = self.events as u64;
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": c, "total_tokens": self.prompt_tokens + c})
    }

    /// The non-streaming JSON answer.
    pub(crate) fn full_json(&self, req: &Value) -> Bytes {
        let text = full_text(self.events);
        let v = match self.endpoint {
            Endpoint::Chat => json!({
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": null,
                    "finish_reason": "stop",
                }],
                "usage": self.usage(),
            }),
            Endpoint::Completions => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"}],
                "usage": self.usage(),
            }),
            Endpoint::Embeddings => {
                let inputs = match req.get("input") {
                    Some(Value::Array(a)) if !a.is_empty() => a.len(),
                    _ => 1,
                };
                let data: Vec<Value> = (0..inputs)
                    .map(|i| {
                        let emb: Vec<f64> =
                            (0..8).map(|k| ((i * 8 + k) as f64 + 1.0) / 16.0).collect();
                        json!({"object": "embedding", "index": i, "embedding": emb})
                    })
                    .collect();
                json!({
                    "object": "list",
                    "data": data,
                    "model": self.model,
                    "usage": {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens},
                })
            }
            Endpoint::Responses => self.response_object("completed", &text),
        };
        to_bytes(&v)
    }

    /// A `/v1/responses` object.
    pub(crate) fn response_object(&self, status: &str, text: &str) -> Value {
        let completed = status == "completed";
        let output = if completed {
            json!([{
                "type": "message",
                "id": format!("msg-{}", self.id),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }])
        } else {
            json!([])
        };
        let c = self.events as u64;
        let usage = if completed {
            json!({"input_tokens": self.prompt_tokens, "output_tokens": c, "total_tokens": self.prompt_tokens + c})
        } else {
            Value::Null
        };
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "model": self.model,
            "output": output,
            "usage": usage,
        })
    }

    /// Content event `i` of a chat or completions stream.
    pub(crate) fn content_chunk(&self, i: usize) -> Bytes {
        let finish = if i + 1 == self.events {
            json!("stop")
        } else {
            Value::Null
        };
        let w = word(i);
        let mut v = match self.endpoint {
            Endpoint::Completions => json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "text": w, "logprobs": null, "finish_reason": finish}],
            }),
            _ => {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": w})
                } else {
                    json!({"content": w})
                };
                json!({
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
                })
            }
        };
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        sse_data(&v)
    }

    /// The final usage chunk (`"choices":[]`) of a chat or completions stream.
    pub(crate) fn usage_chunk(&self) -> Bytes {
        let object = match self.endpoint {
            Endpoint::Completions => "text_completion",
            _ => "chat.completion.chunk",
        };
        sse_data(&json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": self.usage(),
        }))
    }

    pub(crate) fn responses_created(&self) -> Bytes {
        sse_named(
            "response.created",
            &json!({"type": "response.created", "sequence_number": 0, "response": self.response_object("in_progress", "")}),
        )
    }

    pub(crate) fn responses_delta(&self, i: usize) -> Bytes {
        sse_named(
            "response.output_text.delta",
            &json!({
                "type": "response.output_text.delta",
                "sequence_number": i + 1,
                "item_id": format!("msg-{}", self.id),
                "output_index": 0,
                "content_index": 0,
                "delta": word(i),
            }),
        )
    }

    pub(crate) fn responses_completed(&self) -> Bytes {
        let text = full_text(self.events);
        sse_named(
            "response.completed",
            &json!({
                "type": "response.completed",
                "sequence_number": self.events + 1,
                "response": self.response_object("completed", &text),
            }),
        )
    }
}
