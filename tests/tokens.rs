//! Token usage: read from the `usage` of JSON answers and of a stream's usage chunk into
//! `ai_proxy_tokens_total`, and `stream_usage: force`, which asks upstreams for every stream's
//! usage and hides the usage chunk from a client that did not ask for it.

mod common;

use common::*;
use serde_json::{json, Value};

/// The mock's usage event in the bytes it sent: its text and its `usage` object.
fn usage_event(sent: &[u8]) -> (String, Value) {
    let text = String::from_utf8(sent.to_vec()).unwrap();
    text.split_inclusive("\n\n")
        .find_map(|event| {
            let v: Value = serde_json::from_str(event.strip_prefix("data: ")?.trim_end()).ok()?;
            (v["choices"] == json!([]) && v["usage"].is_object())
                .then(|| (event.to_string(), v["usage"].clone()))
        })
        .expect("a usage chunk in the mock's stream")
}

fn count(usage: &Value, kind: &str) -> f64 {
    usage[kind].as_f64().unwrap()
}

async fn stream(gw: &Gateway, body: Value, events: &str) -> Vec<u8> {
    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        body.to_string(),
        &[("x-mock-events", events)],
    )
    .await;
    assert_eq!(s.status, 200);
    let got = s.read_to_end().await.to_vec();
    assert!(s.error().is_none(), "{:?}", s.error());
    got
}

fn chat(stream: bool, include_usage: Option<bool>, words: usize) -> Value {
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": vec!["word"; words].join(" ")}],
        "stream": stream,
    });
    if let Some(asked) = include_usage {
        body["stream_options"] = json!({"include_usage": asked});
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_counted_from_json_answers_and_usage_chunks() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::over(&[&mock], "").await;
    let before = settled_scrape(&gw).await;

    // JSON: 5 prompt words, the mock's default 5 completion tokens.
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    // A stream that asked for usage: 3 prompt words, 4 completion tokens.
    stream(&gw, chat(true, Some(true), 3), "4").await;
    // A stream that did not ask: no usage, nothing counted.
    stream(&gw, chat(true, None, 7), "2").await;
    // Embeddings (prompt only) and the Responses API (`input_tokens`, `output_tokens`).
    let r = post_json(
        &gw.at("/v1/embeddings"),
        json!({"model": "m", "input": "two words"}).to_string(),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = post_json(
        &gw.at("/v1/responses"),
        json!({"model": "m", "input": "one two three four five six"}).to_string(),
        &[("x-mock-events", "6")],
    )
    .await;
    assert_eq!(r.status, 200);

    let after = settled_scrape(&gw).await;
    let d = |kind| delta(&before, &after, &tokens("m", "up", kind));
    assert_eq!(d("prompt"), (5 + 3 + 2 + 6) as f64);
    assert_eq!(d("completion"), (5 + 4 + 6) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_stream_usage_is_counted_and_hidden_from_the_client() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::over(&[&mock], "stream_usage: force").await;

    // The client did not ask: the upstream is asked, and the usage chunk is cut out.
    let before = settled_scrape(&gw).await;
    let received = stream(&gw, chat(true, None, 3), "4").await;
    let sent = last_stream(&mock).sent;
    let (event, usage) = usage_event(&sent);
    let want = String::from_utf8(sent.clone()).unwrap().replace(&event, "");
    assert_eq!(String::from_utf8(received).unwrap(), want);
    assert!(want.ends_with("data: [DONE]\n\n"));
    let asked: Value = serde_json::from_slice(&inference_requests(&mock).pop().unwrap().body)
        .expect("a JSON request body");
    assert_eq!(asked["stream_options"], json!({"include_usage": true}));
    assert_eq!(asked["messages"], chat(true, None, 3)["messages"]);
    let after = settled_scrape(&gw).await;
    let d = |kind| delta(&before, &after, &tokens("m", "up", kind));
    assert_eq!(d("prompt"), count(&usage, "prompt_tokens"));
    assert_eq!(d("completion"), 4.0);

    // A client that asked (or said no) gets what the upstream sent, byte for byte.
    let received = stream(&gw, chat(true, Some(true), 3), "2").await;
    assert_eq!(received, last_stream(&mock).sent);
    usage_event(&received);

    // A body over 64 KiB takes the subrequest path: the same.
    let before = settled_scrape(&gw).await;
    let received = stream(&gw, chat(true, Some(false), 20_000), "3").await;
    let sent = last_stream(&mock).sent;
    let (event, usage) = usage_event(&sent);
    let want = String::from_utf8(sent.clone()).unwrap().replace(&event, "");
    assert_eq!(String::from_utf8(received).unwrap(), want);
    let after = settled_scrape(&gw).await;
    let d = |kind| delta(&before, &after, &tokens("m", "up", kind));
    assert_eq!(d("prompt"), count(&usage, "prompt_tokens"));
    assert_eq!(d("prompt"), 20_000.0);
    assert_eq!(d("completion"), 3.0);

    // A request that is not a stream goes upstream as the client sent it.
    let body = chat(false, None, 2).to_string();
    let r = post_json(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(inference_requests(&mock).pop().unwrap().body, body);
}
