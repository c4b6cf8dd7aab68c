//! Helpers for talking to the gateway's API in tests: request bodies, the `/v1/models` and
//! `/v1/endpoints` views, the gateway's OpenAI error answers, what a mock upstream recorded, and
//! bounded polling.

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{get, post_json, Resp};
use super::gateway::Gateway;
use ai_proxy_mock::{MockServer, RecordedRequest, StreamRecord};

/// How often [`poll_until`] checks.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// A minimal chat completion request for `model` with `"stream": stream`. The one user message
/// is five words (`say hello to the mock`), so the mock counts 5 prompt tokens.
pub fn chat_body(model: &str, stream: bool) -> String {
    json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "say hello to the mock"}],
    })
    .to_string()
}

/// `POST /v1/chat/completions` on the gateway with [`chat_body`]`(model, false)` and these
/// extra headers.
pub async fn post_chat(gw: &Gateway, model: &str, headers: &[(&str, &str)]) -> Resp {
    post_json(
        &gw.at("/v1/chat/completions"),
        chat_body(model, false),
        headers,
    )
    .await
}

/// `GET path` on the gateway, asserting status 200.
pub async fn get_ok(gw: &Gateway, path: &str) -> Resp {
    let r = get(&gw.at(path)).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r
}

/// `GET /v1/models` as JSON (asserting status 200).
pub async fn models_json(gw: &Gateway) -> Value {
    get_ok(gw, "/v1/models").await.json()
}

/// The `data` array of a list answer (`/v1/models`, `/v1/endpoints`).
fn data(list: &Value) -> &Vec<Value> {
    list["data"].as_array().expect("data is an array")
}

/// The ids listed by `GET /v1/models`, in the order listed.
pub async fn model_ids(gw: &Gateway) -> Vec<String> {
    data(&models_json(gw).await)
        .iter()
        .map(|m| m["id"].as_str().expect("id is a string").to_string())
        .collect()
}

/// `GET /v1/endpoints` as JSON (asserting status 200).
pub async fn endpoints_json(gw: &Gateway) -> Value {
    get_ok(gw, "/v1/endpoints").await.json()
}

/// The entries (`data`) of `GET /v1/endpoints`.
pub async fn endpoints(gw: &Gateway) -> Vec<Value> {
    data(&endpoints_json(gw).await).clone()
}

/// The `/v1/endpoints` entry with this name (panics, showing the view, when there is none).
pub async fn endpoint_named(gw: &Gateway, name: &str) -> Value {
    let v = endpoints_json(gw).await;
    data(&v)
        .iter()
        .find(|e| e["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("endpoint {name} not in /v1/endpoints: {v}"))
}

/// Wait (bounded, 10 s) until discovery lists models for the endpoint `name`.
pub async fn wait_discovered(gw: &Gateway, name: &str) {
    let listed = || async {
        endpoint_named(gw, name).await["models"]
            .as_array()
            .is_some_and(|m| !m.is_empty())
    };
    assert!(
        poll_until(Duration::from_secs(10), listed).await.is_some(),
        "endpoint {name} was never discovered"
    );
}

/// Asserts one of the gateway's own OpenAI error answers: this status, a JSON content type, an
/// `error` object with all four keys (`message`, `type`, `param`, `code`), this `code`, a
/// non-empty `message`, and `type` `invalid_request_error` for a 4xx or `api_error` for a 5xx.
/// Returns the `error` object.
pub fn assert_openai_error(r: &Resp, status: u16, code: &str) -> Value {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "content-type {:?}",
        r.header("content-type")
    );
    let v = r.json();
    let e = v["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {v}"));
    for key in ["message", "type", "param", "code"] {
        assert!(e.contains_key(key), "missing `{key}`: {v}");
    }
    let want_type = if status < 500 {
        "invalid_request_error"
    } else {
        "api_error"
    };
    assert_eq!(e["type"], want_type, "{v}");
    assert_eq!(e["code"], code, "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    v["error"].clone()
}

/// The inference requests a mock recorded: its POSTs, not the gateway's discovery polls
/// (`GET /v1/models`, `GET /v1/dnt/table`).
pub fn inference_requests(mock: &MockServer) -> Vec<RecordedRequest> {
    mock.requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect()
}

/// The `Authorization` header of every request the mock recorded, in order.
pub fn auth_headers(mock: &MockServer) -> Vec<Option<String>> {
    mock.requests()
        .iter()
        .map(|r| r.header("authorization").map(str::to_string))
        .collect()
}

/// The record of the latest stream the mock sent (panics when there is none).
pub fn last_stream(mock: &MockServer) -> StreamRecord {
    mock.streams().pop().expect("a stream record")
}

/// Waits (at most `timeout`) for the mock to notice that the client of its latest stream went
/// away, and returns that stream's record either way: `closed_early_at` is `None` if it did not.
pub async fn wait_stream_closed_early(mock: &MockServer, timeout: Duration) -> StreamRecord {
    poll_until(timeout, || async {
        last_stream(mock).closed_early_at.is_some()
    })
    .await;
    last_stream(mock)
}

/// Awaits `check` every 20 ms until it returns true or `timeout` has passed (it is checked at
/// least once). The time it took on success, `None` on timeout.
pub async fn poll_until<F, Fut>(timeout: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if check().await {
            return Some(t0.elapsed());
        }
        if t0.elapsed() >= timeout {
            return None;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
