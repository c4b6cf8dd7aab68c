//! Anthropic's Messages API on the gateway (`POST /v1/messages`, `/v1/messages/count_tokens`):
//! driven with the official `anthropic` Python SDK and with raw requests, in front of mock
//! OpenAI-compatible upstreams that answer scripted chat completions (`messages: translate`,
//! the default) or serve the Messages API themselves (`messages: native`).
//!
//! Every test asserts both sides: what the client got, and field by field what the upstream
//! received. The mock's own Anthropic side (scripts, native routes) is checked first, without a
//! gateway.

mod common;

use ai_proxy_mock::{anthropic, Fault};
use common::*;
use serde_json::{json, Value};

/// The public model name clients ask for.
const MODEL: &str = "claude-test";
/// The deployment's model id on the translating upstream: what the upstream body must name.
const UPSTREAM_MODEL: &str = "qwen-upstream";
/// The model of the upstream that serves the Messages API itself.
const NATIVE_MODEL: &str = "claude-native";

const KEY_OK: &str = "sk-ant-gw-ok-6d1f0a9c3e";
const KEY_RPM: &str = "sk-ant-gw-rpm-b27e4c81d5";

/// A 1x1 PNG.
const PNG_B64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

/// Keys a translated upstream body may have: the chat-completion fields the translation
/// produces. Anything else (`system`, `stop_sequences`, `metadata`, Anthropic's `tool_choice`
/// shape...) would be a leak an OpenAI server rejects.
const CHAT_KEYS: [&str; 13] = [
    "model",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "user",
    "stream",
    "stream_options",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
];

// ---------------------------------------------------------------------------------------------
// Gateways and mocks

/// The translating upstream's endpoint entry: `UPSTREAM_MODEL` served as `MODEL`, `messages`
/// left at its default (translate).
fn translate_endpoint(mock: &MockServer) -> String {
    format!(
        "  - url: {}\n    type: openai\n    name: up\n    models:\n      - {{id: {UPSTREAM_MODEL}, name: {MODEL}}}\n",
        mock.url()
    )
}

/// The native upstream's endpoint entry (`messages: native`).
fn native_endpoint(mock: &MockServer) -> String {
    format!(
        "  - url: {}\n    type: openai\n    name: native\n    messages: native\n",
        mock.url()
    )
}

/// A gateway with this top-level YAML (an `auth:` block, or nothing) and these endpoints.
async fn gateway(extra: &str, endpoints: &[String]) -> Gateway {
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\n{extra}endpoints:\n{}",
        endpoints.concat()
    );
    Gateway::start(&yaml).await
}

/// A translating mock and an open gateway in front of it.
async fn translated() -> (MockServer, Gateway) {
    let mock = start_mock(MockConfig::openai("up", [UPSTREAM_MODEL])).await;
    let gw = gateway("", &[translate_endpoint(&mock)]).await;
    (mock, gw)
}

/// `auth:` with an unlimited key and a key allowed one request a minute.
fn auth_block() -> String {
    format!(
        "auth:\n  keys:\n    - key: {KEY_OK}\n      name: ok\n    - key: {KEY_RPM}\n      name: rpm\n      requests_per_minute: 1\n"
    )
}

// ---------------------------------------------------------------------------------------------
// Scripted chat completions

/// A non-streamed chat completion with this assistant `message`, `finish_reason` and usage.
fn completion(message: Value, finish: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })
}

/// A text answer.
fn text_completion(text: &str, finish: &str, prompt: u64, completion_tokens: u64) -> Value {
    completion(
        json!({"role": "assistant", "content": text}),
        finish,
        prompt,
        completion_tokens,
    )
}

/// One streamed chunk with this `delta` (and `finish_reason`).
fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000u64,
        "model": UPSTREAM_MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    })
}

/// The usage chunk that ends a stream asked for with `stream_options.include_usage`.
fn usage_chunk(prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000u64,
        "model": UPSTREAM_MODEL,
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })
}

/// A streamed text answer: a role chunk, these text deltas, a `stop` chunk and usage.
fn text_stream(parts: &[&str], prompt: u64, completion: u64) -> Vec<Value> {
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    events.extend(parts.iter().map(|p| chunk(json!({"content": p}), None)));
    events.push(chunk(json!({}), Some("stop")));
    events.push(usage_chunk(prompt, completion));
    events
}

// ---------------------------------------------------------------------------------------------
// What the upstream received

/// The upstream's inference requests, each asserted to be a translated chat completion
/// (`POST /v1/chat/completions` for `UPSTREAM_MODEL`, only chat-completion keys), as JSON.
fn translated_requests(mock: &MockServer) -> Vec<Value> {
    inference_requests(mock)
        .iter()
        .map(|r| {
            assert_eq!(r.path, "/v1/chat/completions", "{}", body_text(r));
            let v = r.json();
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("not a JSON object: {}", body_text(r)));
            for k in obj.keys() {
                assert!(CHAT_KEYS.contains(&k.as_str()), "unexpected `{k}`: {v}");
            }
            assert_eq!(v["model"], UPSTREAM_MODEL, "{v}");
            v
        })
        .collect()
}

fn body_text(r: &RecordedRequest) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The text of a chat message's `content`: a string, or the text parts of an array.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect(),
        _ => String::new(),
    }
}

/// Asserts a chat message's role and text.
fn assert_message(m: &Value, role: &str, text: &str) {
    assert_eq!(m["role"], role, "{m}");
    assert_eq!(text_of(&m["content"]), text, "{m}");
}

/// A request that did not ask to stream: no `stream: true`, no `stream_options`.
fn assert_not_streamed(req: &Value) {
    assert!(req["stream"].is_null() || req["stream"] == false, "{req}");
    assert!(req.get("stream_options").is_none(), "{req}");
}

// ---------------------------------------------------------------------------------------------
// The anthropic SDK

/// One script for every SDK case: `python -c SDK mode base_url api_key model [more...]`. It
/// prints one JSON line per call: a summary of the message (blocks, stop reason, usage), or of
/// the exception.
const SDK: &str = r#"
import json, sys, anthropic

mode, base, key, model, *more = sys.argv[1:]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=20)
USER = [{"role": "user", "content": "Say hello to the mock"}]
TOOLS = [{
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]

def out(v):
    print(json.dumps(v), flush=True)

def block(b):
    keys = ("type", "text", "thinking", "id", "name", "input")
    return {k: getattr(b, k) for k in keys if getattr(b, k, None) is not None}

def summary(m):
    return {
        "type": m.type, "role": m.role, "model": m.model,
        "content": [block(b) for b in m.content],
        "stop_reason": m.stop_reason, "stop_sequence": m.stop_sequence,
        "usage": {"input_tokens": m.usage.input_tokens, "output_tokens": m.usage.output_tokens},
    }

def failure(e):
    return {
        "class": type(e).__name__,
        "api_error": isinstance(e, anthropic.APIError),
        "status": getattr(e, "status_code", None),
        "body": getattr(e, "body", None),
        "message": str(e),
    }

def attempt(f):
    try:
        out({"ok": summary(f())})
    except Exception as e:
        out({"error": failure(e)})

if mode == "create":
    out(summary(client.messages.create(
        model=model, max_tokens=64, system="You are terse.", messages=USER,
        metadata={"user_id": "user-42"},
        # This SDK has no sampling parameters of its own; the API still takes them.
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40})))
    out(summary(client.messages.create(
        model=model, max_tokens=64, system=[{"type": "text", "text": "Stop politely."}],
        stop_sequences=["END", "STOP"], messages=USER)))
    out(summary(client.messages.create(model=model, max_tokens=3, messages=USER)))
elif mode == "stream":
    with client.messages.stream(model=model, max_tokens=64, messages=USER) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    out({"texts": texts, "final": summary(final)})
elif mode == "stream_tool":
    with client.messages.stream(model=model, max_tokens=256, tools=TOOLS, messages=USER) as s:
        final = s.get_final_message()
    out(summary(final))
elif mode == "tools":
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.messages.create(
        model=model, max_tokens=128, tools=TOOLS,
        tool_choice={"type": "tool", "name": "get_weather"}, messages=ask)
    out(summary(first))
    use = next(b for b in first.content if b.type == "tool_use")
    second = client.messages.create(model=model, max_tokens=128, tools=TOOLS, messages=ask + [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 C and sunny"}]},
    ])
    out(summary(second))
elif mode == "tool_choice":
    for choice in ({"type": "auto"}, {"type": "any"}, {"type": "none"}, {"type": "tool", "name": "get_weather"}):
        out(summary(client.messages.create(
            model=model, max_tokens=16, tools=TOOLS, tool_choice=choice, messages=USER)))
elif mode == "image":
    out(summary(client.messages.create(model=model, max_tokens=32, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these images?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": more[0]}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]}])))
elif mode == "errors":
    ok_key, rpm_key = more
    def call(c, m=model):
        return lambda: c.messages.create(model=m, max_tokens=16, messages=USER)
    def keyed(k):
        return anthropic.Anthropic(base_url=base, api_key=k, max_retries=0, timeout=20)
    attempt(call(client))
    attempt(call(keyed(ok_key), "no-such-model"))
    attempt(call(anthropic.Anthropic(base_url=base, auth_token=ok_key, max_retries=0, timeout=20)))
    attempt(call(keyed(rpm_key)))
    attempt(call(keyed(rpm_key)))
elif mode == "cut":
    texts = []
    try:
        with client.messages.stream(model=model, max_tokens=64, messages=USER) as s:
            for t in s.text_stream:
                texts.append(t)
            final = s.get_final_message()
        out({"texts": texts, "ok": summary(final)})
    except Exception as e:
        out({"texts": texts, "error": failure(e)})
elif mode == "native":
    out(summary(client.messages.create(model=model, max_tokens=16, messages=USER)))
    with client.messages.stream(model=model, max_tokens=16, messages=USER) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    out({"texts": texts, "final": summary(final)})
    out({"input_tokens": client.messages.count_tokens(model=model, messages=USER).input_tokens})
else:
    sys.exit("unknown mode " + mode)
"#;

/// Run the SDK script in `mode` against the gateway with this key and model.
async fn sdk(gw: &Gateway, mode: &str, key: &str, model: &str, more: &[&str]) -> Vec<Value> {
    let mut args: Vec<String> = [mode, gw.url.as_str(), key, model]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(more.iter().map(|s| s.to_string()));
    run_sdk_script(SDK, &args).await
}

/// Asserts a message summary's single text block, stop reason and usage.
fn assert_text_message(m: &Value, text: &str, stop: &str, input: u64, output: u64) {
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["role"], "assistant", "{m}");
    assert_eq!(m["content"], json!([{"type": "text", "text": text}]), "{m}");
    assert_eq!(m["stop_reason"], stop, "{m}");
    assert_eq!(
        m["usage"],
        json!({"input_tokens": input, "output_tokens": output}),
        "{m}"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw requests

const ANTHROPIC_VERSION: (&str, &str) = ("anthropic-version", "2023-06-01");

/// `POST path` on the gateway with this body and `anthropic-version`, plus `headers`.
async fn post_raw(
    gw: &Gateway,
    path: &str,
    body: impl Into<bytes::Bytes>,
    headers: &[(&str, &str)],
) -> Resp {
    let mut h = vec![ANTHROPIC_VERSION];
    h.extend_from_slice(headers);
    post_json(&gw.at(path), body, &h).await
}

/// A streamed `POST /v1/messages`: the status and the whole body.
async fn post_raw_stream(gw: &Gateway, body: Value) -> (u16, Option<String>, Vec<u8>) {
    let mut s = post_stream(
        &gw.at("/v1/messages"),
        body.to_string(),
        &[ANTHROPIC_VERSION],
    )
    .await;
    let content_type = s.header("content-type").map(str::to_string);
    let bytes = s.read_to_end().await;
    (s.status, content_type, bytes.to_vec())
}

/// The `(event, data)` pairs of an SSE body, `ping`s left out.
fn sse_events(body: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let mut event = String::new();
        let mut data = String::new();
        for line in frame.lines() {
            if let Some(e) = line.strip_prefix("event:") {
                event = e.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data.push_str(d.strip_prefix(' ').unwrap_or(d));
            }
        }
        if event == "ping" {
            continue;
        }
        let data = serde_json::from_str(&data)
            .unwrap_or_else(|e| panic!("event {event}: data is not JSON ({e}): {data}\n{text}"));
        out.push((event, data));
    }
    out
}

/// Asserts an answer in Anthropic's error shape with this status and error type.
fn assert_anthropic_error(r: &Resp, status: u16, kind: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type {:?}: {}",
        r.header("content-type"),
        r.text()
    );
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], kind, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

/// A Messages API body asking `model` with one user text.
fn message_body(model: &str, text: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "max_tokens": 64,
        "stream": stream,
        "messages": [{"role": "user", "content": text}],
    })
}

// ---------------------------------------------------------------------------------------------
// The mock's Anthropic side, on its own

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_answers_scripts_in_order_then_generated_completions() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let answer = text_completion("scripted", "length", 3, 1);
    mock.push_script(Script::json(&answer));
    mock.push_script(Script::Json {
        status: 400,
        body: "{\"error\": {\"message\": \"too long\"}}".into(),
    });
    mock.push_script(Script::sse_raw(["{\"a\":1}", "not json"]));
    assert_eq!(mock.scripts_left(), 3);

    // A script answers whatever was asked: the stream request gets the JSON one.
    let r = post_json(&url, chat_body("m", true), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), answer);
    let r = post_json(&url, chat_body("m", false), &[]).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "{\"error\": {\"message\": \"too long\"}}");

    let mut s = post_stream(&url, chat_body("m", false), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    let sent = b"data: {\"a\":1}\n\ndata: not json\n\ndata: [DONE]\n\n";
    assert_eq!(s.read_to_end().await, &sent[..]);
    // One frame per event, as the mock handed them to the connection.
    let rec = last_stream(&mock);
    assert!(rec.finished);
    assert_eq!(rec.sent, sent);
    assert_eq!(rec.event_times.len(), 3);

    // The queue is empty: generated answers again.
    assert_eq!(mock.scripts_left(), 0);
    let r = post_json(&url, chat_body("m", false), &[]).await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Hello from the mock upstream,"
    );
    assert_eq!(mock.requests().len(), 4);

    // A fault that answers in its place leaves the script queued; clear_scripts drops it.
    mock.push_script(Script::json(&answer));
    mock.set_fault_times(
        Some(Fault::Status {
            status: 503,
            retry_after: None,
        }),
        1,
    );
    assert_eq!(
        post_json(&url, chat_body("m", false), &[]).await.status,
        503
    );
    assert_eq!(mock.scripts_left(), 1);
    mock.clear_scripts();
    assert_eq!(mock.scripts_left(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_stream_cut_after_n_events_is_reset_without_done() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let url = format!("{}/v1/chat/completions", mock.url());
    mock.push_script(Script::sse(text_stream(&["a", "b", "c"], 2, 3)).reset_after(2));
    let mut s = post_stream(&url, chat_body("m", true), &[]).await;
    assert_eq!(s.status, 200);
    let data = sse_data(&s.read_to_end().await);
    assert!(s.error().is_some(), "the stream ended normally");
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(data[1], chunk(json!({"content": "a"}), None).to_string());
    let rec = wait_stream_closed_early(&mock, std::time::Duration::from_secs(5)).await;
    assert!(!rec.finished);
    assert!(rec.closed_early_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mock_serves_the_messages_api_natively() {
    let mock = start_mock(MockConfig::openai("native", [NATIVE_MODEL])).await;
    let url = format!("{}/v1/messages", mock.url());

    let r = post_json(
        &url,
        message_body(NATIVE_MODEL, "hi", false).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body, anthropic::MESSAGE_JSON.as_bytes());
    let v = r.json();
    assert_eq!(v["content"][0]["text"], anthropic::TEXT);
    assert_eq!(v["model"], anthropic::MODEL);

    let mut s = post_stream(
        &url,
        message_body(NATIVE_MODEL, "hi", true).to_string(),
        &[],
    )
    .await;
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.read_to_end().await, anthropic::message_sse().as_bytes());
    let names: Vec<String> = sse_events(anthropic::message_sse().as_bytes())
        .into_iter()
        .map(|(e, d)| {
            assert_eq!(d["type"], e.as_str());
            e
        })
        .collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let rec = last_stream(&mock);
    assert!(rec.finished);
    assert_eq!(rec.event_times.len(), anthropic::MESSAGE_SSE.len());

    let body = json!({"model": NATIVE_MODEL, "system": "be brief", "messages": [{"role": "user", "content": "count these four words"}]});
    let r = post_json(&format!("{url}/count_tokens"), body.to_string(), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"input_tokens": 6}));
    assert_eq!(anthropic::input_tokens(&body), 6);

    let r = get(&url).await;
    assert_eq!(r.status, 405);
    let paths: Vec<String> = mock.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v1/messages",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/messages"
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Translated: messages.create

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_text_with_system_stop_sequence_and_max_tokens() {
    let (mock, gw) = translated().await;
    mock.push_script(Script::json(&text_completion(
        "Hello there!",
        "stop",
        11,
        3,
    )));
    let mut stopped = text_completion("Goodbye", "stop", 9, 2);
    // vLLM names the stop string that ended the answer.
    stopped["choices"][0]["stop_reason"] = json!("STOP");
    mock.push_script(Script::json(&stopped));
    mock.push_script(Script::json(&text_completion(
        "One two three",
        "length",
        5,
        3,
    )));

    let out = sdk(&gw, "create", "unused", MODEL, &[]).await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert_text_message(&out[0], "Hello there!", "end_turn", 11, 3);
    // Answers name the model the client asked for, not the deployment's id.
    assert_eq!(out[0]["model"], MODEL, "{}", out[0]);
    assert!(out[0]["stop_sequence"].is_null(), "{}", out[0]);
    assert_text_message(&out[1], "Goodbye", "stop_sequence", 9, 2);
    assert_eq!(out[1]["stop_sequence"], "STOP", "{}", out[1]);
    assert_text_message(&out[2], "One two three", "max_tokens", 5, 3);

    let reqs = translated_requests(&mock);
    assert_eq!(reqs.len(), 3);
    let r = &reqs[0];
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{r}");
    assert_message(&msgs[0], "system", "You are terse.");
    assert_message(&msgs[1], "user", "Say hello to the mock");
    assert_eq!(r["max_tokens"], 64, "{r}");
    assert_eq!(r["temperature"], 0.5, "{r}");
    assert_eq!(r["top_p"], 0.9, "{r}");
    assert_eq!(r["top_k"], 40, "{r}");
    assert_eq!(r["user"], "user-42", "{r}");
    assert!(r.get("stop").is_none(), "{r}");
    assert!(
        r.get("tools").is_none() && r.get("tool_choice").is_none(),
        "{r}"
    );
    assert_not_streamed(r);

    let r = &reqs[1];
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{r}");
    assert_message(&msgs[0], "system", "Stop politely.");
    assert_message(&msgs[1], "user", "Say hello to the mock");
    assert_eq!(r["stop"], json!(["END", "STOP"]), "{r}");
    assert!(
        r.get("temperature").is_none() && r.get("user").is_none(),
        "{r}"
    );

    let r = &reqs[2];
    assert_eq!(r["max_tokens"], 3, "{r}");
    let msgs = r["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "no system message: {r}");
    assert_message(&msgs[0], "user", "Say hello to the mock");
}

// ---------------------------------------------------------------------------------------------
// Translated: messages.stream

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_text_deltas_and_a_final_message_with_usage() {
    let (mock, gw) = translated().await;
    mock.push_script(Script::sse(text_stream(&["Hel", "lo", " world"], 7, 3)));
    mock.push_script(Script::sse(text_stream(&["Hel", "lo", " world"], 7, 3)));

    let out = sdk(&gw, "stream", "unused", MODEL, &[]).await;
    assert_eq!(out.len(), 1, "{out:?}");
    let texts: Vec<&str> = out[0]["texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(texts, ["Hel", "lo", " world"], "{}", out[0]);
    assert_text_message(&out[0]["final"], "Hello world", "end_turn", 7, 3);

    // The same stream read raw: Anthropic's events in order, each `data` typed as its event.
    let (status, content_type, body) =
        post_raw_stream(&gw, message_body(MODEL, "Say hello to the mock", true)).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(content_type.is_some_and(|c| c.starts_with("text/event-stream")));
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ],
        "{}",
        String::from_utf8_lossy(&body)
    );
    for (e, d) in &events {
        assert_eq!(d["type"], e.as_str(), "{d}");
    }
    assert_eq!(events[0].1["message"]["role"], "assistant");
    assert_eq!(events[1].1["content_block"]["type"], "text");
    assert_eq!(
        events[2].1["delta"],
        json!({"type": "text_delta", "text": "Hel"})
    );
    assert_eq!(events[6].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[6].1["usage"]["output_tokens"], 3);

    let reqs = translated_requests(&mock);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r["stream"], true, "{r}");
        assert_eq!(r["stream_options"], json!({"include_usage": true}), "{r}");
        assert_eq!(r["max_tokens"], 64, "{r}");
        let msgs = r["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 1, "{r}");
        assert_message(&msgs[0], "user", "Say hello to the mock");
    }
}

/// The `message_delta` of a raw stream (asserting there is exactly one, before `message_stop`).
async fn stream_message_delta(gw: &Gateway, body: Value) -> Value {
    let (status, _, raw) = post_raw_stream(gw, body).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert_eq!(status, 200, "{text}");
    let events = sse_events(&raw);
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|(e, _)| e == "message_delta")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(deltas.len(), 1, "{text}");
    assert_eq!(
        events.last().map(|(e, _)| e.as_str()),
        Some("message_stop"),
        "{text}"
    );
    deltas[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_end_with_the_stop_reason_of_their_finish() {
    let (mock, gw) = translated().await;
    // vLLM's final chunk names the stop string that matched.
    let mut stopped = text_stream(&["Good", "bye"], 4, 2);
    stopped[3]["choices"][0]["stop_reason"] = json!("END");
    mock.push_script(Script::sse(stopped));
    let mut cut_short = text_stream(&["One", " two"], 4, 2);
    cut_short[3]["choices"][0]["finish_reason"] = json!("length");
    mock.push_script(Script::sse(cut_short));

    let mut body = message_body(MODEL, "Say goodbye", true);
    body["stop_sequences"] = json!(["END"]);
    let d = stream_message_delta(&gw, body).await;
    assert_eq!(
        d["delta"],
        json!({"stop_reason": "stop_sequence", "stop_sequence": "END"}),
        "{d}"
    );
    assert_eq!(d["usage"]["output_tokens"], 2, "{d}");

    let mut body = message_body(MODEL, "Count", true);
    body["max_tokens"] = json!(2);
    let d = stream_message_delta(&gw, body).await;
    assert_eq!(d["delta"]["stop_reason"], "max_tokens", "{d}");
    assert!(d["delta"]["stop_sequence"].is_null(), "{d}");

    let reqs = translated_requests(&mock);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["stop"], json!(["END"]), "{}", reqs[0]);
    assert_eq!(reqs[1]["max_tokens"], 2, "{}", reqs[1]);
    assert!(reqs[1].get("stop").is_none(), "{}", reqs[1]);
}

/// Reasoning, text and a tool call streamed in pieces: three content blocks (thinking, text,
/// tool_use) whose deltas are `thinking_delta`, `text_delta` and `input_json_delta`.
fn thinking_text_tool_stream() -> Vec<Value> {
    vec![
        chunk(
            json!({"role": "assistant", "reasoning_content": "Let me think."}),
            None,
        ),
        chunk(json!({"reasoning_content": " Paris is in France."}), None),
        chunk(json!({"content": "Checking."}), None),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_s1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
        usage_chunk(12, 20),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_of_reasoning_text_and_a_tool_call_becomes_three_blocks() {
    let (mock, gw) = translated().await;
    mock.push_script(Script::sse(thinking_text_tool_stream()));
    mock.push_script(Script::sse(thinking_text_tool_stream()));

    let out = sdk(&gw, "stream_tool", "unused", MODEL, &[]).await;
    let m = &out[0];
    assert_eq!(
        m["content"],
        json!([
            {"type": "thinking", "thinking": "Let me think. Paris is in France."},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_s1", "name": "get_weather", "input": {"city": "Paris"}},
        ]),
        "{m}"
    );
    assert_eq!(m["stop_reason"], "tool_use", "{m}");
    assert_eq!(
        m["usage"],
        json!({"input_tokens": 12, "output_tokens": 20}),
        "{m}"
    );

    let mut body = message_body(MODEL, "Say hello to the mock", true);
    body["tools"] = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
    let (status, _, raw) = post_raw_stream(&gw, body).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&raw));
    let events = sse_events(&raw);
    let text = String::from_utf8_lossy(&raw);
    // Each block opens, gets its deltas and closes before the next opens.
    let mut open: Option<u64> = None;
    let mut blocks = Vec::new();
    let mut deltas = Vec::new();
    for (e, d) in &events {
        match e.as_str() {
            "content_block_start" => {
                assert!(open.is_none(), "block {open:?} still open: {text}");
                assert_eq!(d["index"], blocks.len() as u64, "{text}");
                open = d["index"].as_u64();
                blocks.push(
                    d["content_block"]["type"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            "content_block_delta" => {
                assert_eq!(d["index"].as_u64(), open, "{text}");
                let kind = d["delta"]["type"].as_str().unwrap_or("").to_string();
                if deltas.last() != Some(&kind) {
                    deltas.push(kind);
                }
            }
            "content_block_stop" => {
                assert_eq!(d["index"].as_u64(), open, "{text}");
                open = None;
            }
            _ => {}
        }
    }
    assert_eq!(blocks, ["thinking", "text", "tool_use"], "{text}");
    assert_eq!(
        deltas,
        ["thinking_delta", "text_delta", "input_json_delta"],
        "{text}"
    );
    let tool_start = events
        .iter()
        .find(|(e, d)| e == "content_block_start" && d["content_block"]["type"] == "tool_use")
        .map(|(_, d)| d["content_block"].clone())
        .unwrap();
    assert_eq!(tool_start["id"], "call_s1", "{tool_start}");
    assert_eq!(tool_start["name"], "get_weather", "{tool_start}");

    let reqs = translated_requests(&mock);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        assert_eq!(r["stream"], true, "{r}");
        assert_eq!(r["tools"][0]["type"], "function", "{r}");
        assert_eq!(r["tools"][0]["function"]["name"], "get_weather", "{r}");
    }
}

// ---------------------------------------------------------------------------------------------
// Translated: tools and images

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_round_trip_keeps_the_call_id_both_ways() {
    let (mock, gw) = translated().await;
    let call = completion(
        json!({
            "role": "assistant",
            "content": "I'll check.",
            "tool_calls": [{"id": "call_abc123", "type": "function",
                            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}],
        }),
        "tool_calls",
        30,
        12,
    );
    mock.push_script(Script::json(&call));
    mock.push_script(Script::json(&text_completion(
        "It is 18 C and sunny in Paris.",
        "stop",
        50,
        9,
    )));

    let out = sdk(&gw, "tools", "unused", MODEL, &[]).await;
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(
        out[0]["content"],
        json!([
            {"type": "text", "text": "I'll check."},
            {"type": "tool_use", "id": "call_abc123", "name": "get_weather", "input": {"city": "Paris"}},
        ]),
        "{}",
        out[0]
    );
    assert_eq!(out[0]["stop_reason"], "tool_use");
    assert_eq!(
        out[0]["usage"],
        json!({"input_tokens": 30, "output_tokens": 12})
    );
    assert_text_message(&out[1], "It is 18 C and sunny in Paris.", "end_turn", 50, 9);

    let reqs = translated_requests(&mock);
    assert_eq!(reqs.len(), 2);
    let tools = json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }]);
    let first = &reqs[0];
    assert_eq!(first["tools"], tools, "{first}");
    assert_eq!(
        first["tool_choice"],
        json!({"type": "function", "function": {"name": "get_weather"}}),
        "{first}"
    );
    assert_eq!(first["max_tokens"], 128, "{first}");
    assert_eq!(first["messages"].as_array().unwrap().len(), 1, "{first}");
    assert_message(&first["messages"][0], "user", "Weather in Paris?");

    let second = &reqs[1];
    assert_eq!(second["tools"], tools, "{second}");
    assert!(second.get("tool_choice").is_none(), "{second}");
    let msgs = second["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{second}");
    assert_message(&msgs[0], "user", "Weather in Paris?");
    let assistant = &msgs[1];
    assert_eq!(assistant["role"], "assistant", "{assistant}");
    assert_eq!(text_of(&assistant["content"]), "I'll check.", "{assistant}");
    let calls = assistant["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{assistant}");
    assert_eq!(calls[0]["id"], "call_abc123", "{assistant}");
    assert_eq!(calls[0]["type"], "function", "{assistant}");
    assert_eq!(calls[0]["function"]["name"], "get_weather", "{assistant}");
    let args: Value = serde_json::from_str(
        calls[0]["function"]["arguments"]
            .as_str()
            .expect("arguments is a JSON string"),
    )
    .expect("arguments parse");
    assert_eq!(args, json!({"city": "Paris"}));
    let tool = &msgs[2];
    assert_eq!(tool["role"], "tool", "{tool}");
    assert_eq!(tool["tool_call_id"], "call_abc123", "{tool}");
    assert_eq!(text_of(&tool["content"]), "18 C and sunny", "{tool}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_choice_maps_to_its_chat_completion_value() {
    let (mock, gw) = translated().await;
    let out = sdk(&gw, "tool_choice", "unused", MODEL, &[]).await;
    assert_eq!(out.len(), 4, "{out:?}");
    for m in &out {
        // The mock's generated answer: five words, stop.
        assert_eq!(
            m["content"][0]["text"], "Hello from the mock upstream,",
            "{m}"
        );
        assert_eq!(m["stop_reason"], "end_turn", "{m}");
    }
    let choices: Vec<Value> = translated_requests(&mock)
        .iter()
        .map(|r| {
            assert_eq!(r["tools"][0]["function"]["name"], "get_weather", "{r}");
            r["tool_choice"].clone()
        })
        .collect();
    assert_eq!(
        choices,
        [
            json!("auto"),
            json!("required"),
            json!("none"),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_blocks_reach_the_upstream_as_image_urls() {
    let (mock, gw) = translated().await;
    let out = sdk(&gw, "image", "unused", MODEL, &[PNG_B64]).await;
    assert_eq!(
        out[0]["content"][0]["text"], "Hello from the mock upstream,",
        "{}",
        out[0]
    );

    let reqs = translated_requests(&mock);
    assert_eq!(reqs.len(), 1);
    let msgs = reqs[0]["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{}", reqs[0]);
    assert_eq!(msgs[0]["role"], "user");
    let parts = msgs[0]["content"].as_array().expect("content parts");
    assert_eq!(
        parts
            .iter()
            .filter(|p| p["type"] == "text")
            .map(|p| p["text"].clone())
            .collect::<Vec<_>>(),
        [json!("What is in these images?")]
    );
    let urls: Vec<&Value> = parts
        .iter()
        .filter(|p| p["type"] == "image_url")
        .map(|p| &p["image_url"]["url"])
        .collect();
    assert_eq!(
        urls,
        [
            &json!(format!("data:image/png;base64,{PNG_B64}")),
            &json!("https://example.com/cat.jpg")
        ],
        "{}",
        reqs[0]
    );
}

// ---------------------------------------------------------------------------------------------
// Errors

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_raises_not_found_authentication_and_rate_limit_errors() {
    let mock = start_mock(MockConfig::openai("up", [UPSTREAM_MODEL])).await;
    let gw = gateway(&auth_block(), &[translate_endpoint(&mock)]).await;
    let out = sdk(&gw, "errors", "sk-ant-not-a-key", MODEL, &[KEY_OK, KEY_RPM]).await;
    assert_eq!(out.len(), 5, "{out:?}");

    let expect_error = |v: &Value, class: &str, status: u16, kind: &str| {
        let e = &v["error"];
        assert_eq!(e["class"], class, "{v}");
        assert_eq!(e["status"], status, "{v}");
        assert_eq!(e["body"]["type"], "error", "{v}");
        assert_eq!(e["body"]["error"]["type"], kind, "{v}");
    };
    expect_error(&out[0], "AuthenticationError", 401, "authentication_error");
    expect_error(&out[1], "NotFoundError", 404, "not_found_error");
    assert_eq!(
        out[2]["ok"]["content"][0]["text"], "Hello from the mock upstream,",
        "{}",
        out[2]
    );
    assert_eq!(out[3]["ok"]["stop_reason"], "end_turn", "{}", out[3]);
    expect_error(&out[4], "RateLimitError", 429, "rate_limit_error");

    // Only the two answered calls went upstream, without the client's key.
    let reqs = inference_requests(&mock);
    assert_eq!(reqs.len(), 2);
    for r in &reqs {
        for (k, v) in &r.headers {
            assert!(
                !v.contains(KEY_OK) && !v.contains(KEY_RPM),
                "client key upstream in {k}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_errors_have_anthropics_shape() {
    let mock = start_mock(MockConfig::openai("up", [UPSTREAM_MODEL])).await;
    let gw = gateway(&auth_block(), &[translate_endpoint(&mock)]).await;
    let body = message_body(MODEL, "hi", false).to_string();

    let r = post_raw(&gw, "/v1/messages", body.clone(), &[]).await;
    assert_anthropic_error(&r, 401, "authentication_error");
    let r = post_raw(
        &gw,
        "/v1/messages",
        body.clone(),
        &[("x-api-key", "sk-ant-wrong")],
    )
    .await;
    assert_anthropic_error(&r, 401, "authentication_error");

    let ok = ("x-api-key", KEY_OK);
    let r = post_raw(
        &gw,
        "/v1/messages",
        message_body("no-such-model", "hi", false).to_string(),
        &[ok],
    )
    .await;
    assert_anthropic_error(&r, 404, "not_found_error");

    let mut no_max = message_body(MODEL, "hi", false);
    no_max.as_object_mut().unwrap().remove("max_tokens");
    let r = post_raw(&gw, "/v1/messages", no_max.to_string(), &[ok]).await;
    assert_anthropic_error(&r, 400, "invalid_request_error");

    let r = post_raw(&gw, "/v1/messages", "{not json", &[ok]).await;
    assert_anthropic_error(&r, 400, "invalid_request_error");
    assert!(
        inference_requests(&mock).is_empty(),
        "{:?}",
        mock.requests()
    );

    // A good request by Bearer key, with a beta header, goes through.
    let bearer = format!("Bearer {KEY_OK}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
    ];
    let r = post_raw(&gw, "/v1/messages", body, &headers).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "message", "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_come_back_in_anthropics_shape() {
    let (mock, gw) = translated().await;
    let body = message_body(MODEL, "hi", false).to_string();
    mock.push_script(Script::Json {
        status: 400,
        body: json!({"error": {"message": "This model's maximum context length is 4096 tokens.", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}).to_string(),
    });
    let r = post_raw(&gw, "/v1/messages", body.clone(), &[]).await;
    assert_anthropic_error(&r, 400, "invalid_request_error");
    assert!(r.text().contains("maximum context length"), "{}", r.text());

    mock.set_fault(Some(Fault::Status {
        status: 500,
        retry_after: None,
    }));
    let r = post_raw(&gw, "/v1/messages", body, &[]).await;
    assert!(r.status >= 500, "{} {}", r.status, r.text());
    let v = r.json();
    assert_eq!(v["type"], "error", "{v}");
    assert!(
        v["error"]["type"] == "api_error" || v["error"]["type"] == "overloaded_error",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cut_upstream_ends_with_an_error_event_and_the_sdk_raises() {
    let (mock, gw) = translated().await;
    let cut = || Script::sse(text_stream(&["Hel", "lo", " wor", "ld"], 7, 4)).reset_after(2);
    mock.push_script(cut());
    mock.push_script(cut());

    // Raw: what came before the cut, then `event: error`, and no message_stop.
    let (status, _, body) =
        post_raw_stream(&gw, message_body(MODEL, "Say hello to the mock", true)).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    let events = sse_events(&body);
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{text}");
    assert_eq!(names.last(), Some(&"error"), "{text}");
    assert!(!names.contains(&"message_stop"), "{text}");
    let (_, err) = events.last().unwrap();
    assert_eq!(err["type"], "error", "{text}");
    assert!(
        err["error"]["type"].is_string() && err["error"]["message"].is_string(),
        "{text}"
    );

    // The SDK raises instead of returning a message.
    let out = sdk(&gw, "cut", "unused", MODEL, &[]).await;
    let v = &out[0];
    assert!(v.get("ok").is_none(), "the SDK saw a normal end: {v}");
    assert_eq!(v["error"]["api_error"], true, "{v}");
    let texts: String = v["texts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!("Hel".starts_with(&texts), "{v}");
    assert_eq!(translated_requests(&mock).len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Native endpoints and count_tokens

/// A native mock (`NATIVE_MODEL`), a translating one (`MODEL`, `messages: translate` spelled
/// out), and a gateway over both.
async fn native_and_translated() -> (MockServer, MockServer, Gateway) {
    let native = start_mock(MockConfig::openai("native", [NATIVE_MODEL])).await;
    let up = start_mock(MockConfig::openai("up", [UPSTREAM_MODEL])).await;
    let translate = translate_endpoint(&up) + "    messages: translate\n";
    let gw = gateway("", &[native_endpoint(&native), translate]).await;
    (native, up, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_endpoint_gets_and_gives_the_bytes_unchanged() {
    let (native, up, gw) = native_and_translated().await;
    // Spacing, key order, an unknown field and a number written as 2.50: any re-encoding shows.
    let body = format!(
        "{{ \"max_tokens\": 16,\n  \"model\": \"{NATIVE_MODEL}\", \"x_extra\": {{\"keep\": [1, 2.50, \"\\u00e9\"]}},\n  \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}] }}"
    );
    let beta = ("anthropic-beta", "tools-2024-04-04");
    let r = post_raw(&gw, "/v1/messages", body.clone(), &[beta]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), anthropic::MESSAGE_JSON);

    let stream_body = body.replacen("{ ", "{ \"stream\": true, ", 1);
    let mut s = post_stream(
        &gw.at("/v1/messages"),
        stream_body.clone(),
        &[ANTHROPIC_VERSION],
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(s
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let got = s.read_to_end().await;
    assert_eq!(String::from_utf8_lossy(&got), anthropic::message_sse());

    let reqs = inference_requests(&native);
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/v1/messages");
    assert_eq!(body_text(&reqs[0]), body);
    assert_eq!(reqs[0].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(reqs[0].header("anthropic-beta"), Some("tools-2024-04-04"));
    assert_eq!(reqs[1].path, "/v1/messages");
    assert_eq!(body_text(&reqs[1]), stream_body);
    assert!(inference_requests(&up).is_empty());

    // The SDK against it: the mock's message, stream and count.
    let out = sdk(&gw, "native", "unused", NATIVE_MODEL, &[]).await;
    assert_eq!(out.len(), 3, "{out:?}");
    assert_text_message(&out[0], anthropic::TEXT, "end_turn", 12, 6);
    assert_eq!(out[1]["texts"], json!(["Hello", " from the native mock."]));
    assert_text_message(&out[1]["final"], anthropic::TEXT, "end_turn", 12, 6);
    assert_eq!(
        out[2]["input_tokens"], 5,
        "`Say hello to the mock`: {}",
        out[2]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_tokens_reaches_native_endpoints_only() {
    let (native, up, gw) = native_and_translated().await;
    let body = json!({"model": NATIVE_MODEL, "messages": [{"role": "user", "content": "count these four words"}]}).to_string();
    let r = post_raw(&gw, "/v1/messages/count_tokens", body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"input_tokens": 4}));
    let reqs = inference_requests(&native);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/messages/count_tokens");
    assert_eq!(body_text(&reqs[0]), body);

    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "count these four words"}]}).to_string();
    let r = post_raw(&gw, "/v1/messages/count_tokens", body, &[]).await;
    assert_anthropic_error(&r, 404, "not_found_error");
    assert!(inference_requests(&up).is_empty(), "{:?}", up.requests());
}

// ---------------------------------------------------------------------------------------------
// Large bodies

/// About 100 KiB of words: `n` words of 6 bytes.
fn long_text(n: usize) -> String {
    let mut s = "lorem ".repeat(n);
    s.pop();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_kib_body_works_translated_both_ways_and_natively() {
    let (native, up, gw) = native_and_translated().await;
    let words = 100 * 1024 / 6 + 1;
    let text = long_text(words);
    assert!(text.len() >= 100 * 1024);

    // Translated: the upstream gets every word, and a 100 KiB answer comes back whole.
    let answer = long_text(words).replace("lorem", "ipsum");
    up.push_script(Script::json(&text_completion(
        &answer,
        "stop",
        words as u64,
        words as u64,
    )));
    let r = post_raw(
        &gw,
        "/v1/messages",
        message_body(MODEL, &text, false).to_string(),
        &[],
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "{}",
        String::from_utf8_lossy(&r.body[..r.body.len().min(500)])
    );
    let v = r.json();
    assert_eq!(
        v["content"][0]["text"].as_str().map(str::len),
        Some(answer.len())
    );
    assert_eq!(v["content"][0]["text"], answer.as_str());
    assert_eq!(v["usage"]["input_tokens"], words);
    let reqs = translated_requests(&up);
    assert_eq!(reqs.len(), 1);
    assert_message(&reqs[0]["messages"][0], "user", &text);

    // Natively: the same body, byte for byte.
    let body = message_body(NATIVE_MODEL, &text, false).to_string();
    let r = post_raw(&gw, "/v1/messages", body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), anthropic::MESSAGE_JSON);
    let reqs = inference_requests(&native);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body.len(), body.len());
    assert_eq!(body_text(&reqs[0]), body);
}

// ---------------------------------------------------------------------------------------------
// Observability on the route

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_answers_count_their_tokens_in_metrics() {
    let (mock, gw) = translated().await;
    let before = scrape(&gw).await;
    mock.push_script(Script::json(&text_completion(
        "four words of text",
        "stop",
        11,
        4,
    )));
    let r = post_raw(
        &gw,
        "/v1/messages",
        message_body(MODEL, "hi", false).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    mock.push_script(Script::sse(text_stream(&["a", "b", "c"], 7, 3)));
    let (status, _, _) = post_raw_stream(&gw, message_body(MODEL, "hi", true)).await;
    assert_eq!(status, 200);
    // The access log and the metrics are written once the answer has ended: settle on them.
    let series = |kind| tokens(MODEL, "up", kind);
    let mut after = scrape(&gw).await;
    for _ in 0..50 {
        if delta(&before, &after, &series("completion")) >= 7.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        after = scrape(&gw).await;
    }
    assert_eq!(delta(&before, &after, &series("prompt")), 18.0, "{after:?}");
    assert_eq!(
        delta(&before, &after, &series("completion")),
        7.0,
        "{after:?}"
    );
}
