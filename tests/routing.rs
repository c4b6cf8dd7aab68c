//! Routing and forwarding through the real gateway: the OpenAI routes are proxied with each
//! endpoint's own key and Host, bodies arrive byte for byte, OCF paths are prefixed, round robin
//! spreads load, connect failures fall over, bodyless requests go to the first endpoint and
//! client headers pass through.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// One `endpoints:` list entry.
fn endpoint(url: &str, name: &str, kind: &str, api_key: Option<&str>) -> String {
    let mut s = format!("  - url: {url}\n    name: {name}\n    type: {kind}\n");
    if let Some(k) = api_key {
        s.push_str(&format!("    api_key: {k}\n"));
    }
    s
}

/// A gateway config on 127.0.0.1 with these endpoints, balanced round robin.
fn config(endpoints: &[String]) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nconnect_timeout_secs: 2\nbalancing: {{policy: round_robin}}\nendpoints:\n{}",
        endpoints.concat()
    )
}

/// A chat request with a system and a user message and a sampling parameter: richer than
/// [`chat_body`], so the pass-through checks cover more than the minimal shape.
fn rich_chat_body(model: &str) -> String {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Say hello"}
        ],
        "temperature": 0.2,
    })
    .to_string()
}

/// The JSON answer without the fields that differ from one answer to the next.
fn stable(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
    v
}

/// Wait (bounded) until `/v1/endpoints` shows `name` serving `model`.
async fn wait_model_on(gw: &Gateway, name: &str, model: &str) {
    let serves = || async {
        let v = get(&gw.at("/v1/endpoints")).await.json();
        v["data"].as_array().into_iter().flatten().any(|e| {
            e["name"] == name
                && e["models"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|m| m == model))
        })
    };
    if poll_until(Duration::from_secs(10), serves).await.is_none() {
        let v = get(&gw.at("/v1/endpoints")).await.json();
        panic!("endpoint {name} never served {model}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_routes_proxied_with_endpoint_key_and_host() {
    let keyed = start_mock(MockConfig::openai("keyed", ["m-keyed", "e-keyed"])).await;
    let open = start_mock(MockConfig::openai("open", ["m-open"])).await;
    let gw = Gateway::start(&config(&[
        endpoint(&keyed.url(), "keyed", "openai", Some("sk-keyed-123")),
        endpoint(&open.url(), "open", "openai", None),
    ]))
    .await;

    let cases = [
        (
            "/v1/chat/completions",
            rich_chat_body("m-keyed"),
            "chat.completion",
        ),
        (
            "/v1/completions",
            json!({"model": "m-keyed", "prompt": "Once upon a time", "max_tokens": 5}).to_string(),
            "text_completion",
        ),
        (
            "/v1/embeddings",
            json!({"model": "e-keyed", "input": ["hello", "world"]}).to_string(),
            "list",
        ),
    ];
    for (path, body, object) in &cases {
        let r = post_json(
            &gw.at(path),
            body.clone(),
            &[("authorization", "Bearer client-secret")],
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("x-mock-name"), Some("keyed"), "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        let v = r.json();
        assert_eq!(v["object"], *object, "{path}: {v}");
        // The same request straight to the mock gives the same answer (up to id/created).
        let direct = post_json(&format!("{}{path}", keyed.url()), body.clone(), &[]).await;
        assert_eq!(stable(v), stable(direct.json()), "{path}");

        let rec = keyed
            .requests()
            .into_iter()
            .rev()
            .find(|q| q.method == "POST" && q.header("authorization").is_some())
            .unwrap_or_else(|| panic!("{path}: mock saw no request with a key"));
        assert_eq!(rec.path, *path);
        assert_eq!(rec.header_all("authorization"), ["Bearer sk-keyed-123"]);
        assert_eq!(
            rec.header_all("host"),
            [format!("127.0.0.1:{}", keyed.port()).as_str()]
        );
        assert_eq!(rec.body, body.as_bytes(), "{path}: body changed");
    }
    for rec in inference_requests(&keyed) {
        assert!(
            !rec.headers.iter().any(|(_, v)| v.contains("client-secret")),
            "client key leaked upstream: {rec:?}"
        );
    }

    // No api_key: no Authorization at all, even though the client sent one.
    let r = post_json(
        &gw.at("/v1/chat/completions"),
        rich_chat_body("m-open"),
        &[("authorization", "Bearer client-secret")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("open"));
    let recs = inference_requests(&open);
    assert_eq!(recs.len(), 1);
    assert!(
        recs[0].header("authorization").is_none(),
        "endpoint without key got {:?}",
        recs[0].header("authorization")
    );
    assert_eq!(
        recs[0].header("host"),
        Some(format!("127.0.0.1:{}", open.port()).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_and_query_arrive_unchanged() {
    let mock = start_mock(MockConfig::openai("up", ["m1"])).await;
    let gw = Gateway::start(&config(&[endpoint(&mock.url(), "up", "openai", None)])).await;

    // Odd but valid JSON: whitespace, escapes, unicode, key order, duplicate-free nesting.
    let body = "{\n  \"messages\" : [ {\"role\":\"user\", \"content\":\"h\\u00e9llo \\\"w\\\" — ünï\"} ],\n\t\"model\":\"m1\",  \"n\" : 1 , \"extra\": {\"model\": \"not-this\"}\n}\n";
    let r = post_json(&gw.at("/v1/chat/completions?trace=1&x=%20y"), body, &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = inference_requests(&mock);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].path, "/v1/chat/completions?trace=1&x=%20y");
    assert_eq!(recs[0].body, body.as_bytes());
    assert_eq!(
        recs[0].header("content-length"),
        Some(body.len().to_string().as_str())
    );
    assert_eq!(recs[0].header("content-type"), Some("application/json"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocf_model_goes_under_service_prefix() {
    let table = fixture_bytes("opentela_docs_head_plus_worker.json");
    let ocf = start_mock(MockConfig::ocf("head", ["Qwen/Qwen3-8B"]).with_dnt_table(table)).await;
    let openai = start_mock(MockConfig::openai("plain", ["m-plain"])).await;
    let gw = Gateway::start(&config(&[
        endpoint(&openai.url(), "plain", "openai", Some("sk-plain")),
        endpoint(&ocf.url(), "head", "ocf", Some("sk-ocf")),
    ]))
    .await;

    let body = rich_chat_body("Qwen/Qwen3-8B");
    let r = post_json(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("head"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "Qwen/Qwen3-8B");

    let recs = inference_requests(&ocf);
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].path, "/v1/service/llm/v1/chat/completions");
    assert_eq!(recs[0].body, body.as_bytes());
    assert_eq!(recs[0].header_all("authorization"), ["Bearer sk-ocf"]);
    assert_eq!(
        recs[0].header("host"),
        Some(format!("127.0.0.1:{}", ocf.port()).as_str())
    );
    assert!(inference_requests(&openai).is_empty());

    // Streaming works on the prefixed path too.
    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        json!({"model": "Qwen/Qwen3-8B", "stream": true,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let data = sse_data(&s.read_to_end().await);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    assert_eq!(ocf.streams()[0].path, "/v1/service/llm/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_over_two_endpoints() {
    let a = start_mock(MockConfig::openai("rr-a", ["shared", "only-a"]).with_record(false)).await;
    let b = start_mock(MockConfig::openai("rr-b", ["shared"]).with_record(false)).await;
    let gw = Gateway::start(&config(&[
        endpoint(&a.url(), "rr-a", "openai", None),
        endpoint(&b.url(), "rr-b", "openai", None),
    ]))
    .await;
    let before = (a.request_count(), b.request_count());

    let mut conn = Client::new().connect(&gw.url).await.unwrap();
    let mut by_name: HashMap<String, usize> = HashMap::new();
    for i in 0..100 {
        let r = conn
            .send(
                "POST",
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                ReqBody::full(rich_chat_body("shared")),
            )
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let name = r.header("x-mock-name").expect("x-mock-name").to_string();
        *by_name.entry(name).or_default() += 1;
    }
    let on_a = by_name.get("rr-a").copied().unwrap_or(0);
    let on_b = by_name.get("rr-b").copied().unwrap_or(0);
    assert_eq!(on_a + on_b, 100, "{by_name:?}");
    assert!(on_a >= 30 && on_b >= 30, "uneven spread: {by_name:?}");
    // The mocks agree (discovery may poll in between, so at least that many).
    assert!(a.request_count() - before.0 >= on_a);
    assert!(b.request_count() - before.1 >= on_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failure_falls_over_to_the_other_endpoint() {
    let alive = start_mock(MockConfig::openai("alive", ["shared"])).await;
    let doomed = start_mock(MockConfig::openai("doomed", ["shared"])).await;
    let gw = Gateway::start(&config(&[
        endpoint(&doomed.url(), "doomed", "openai", Some("sk-d")),
        endpoint(&alive.url(), "alive", "openai", Some("sk-a")),
    ]))
    .await;
    wait_model_on(&gw, "doomed", "shared").await;
    wait_model_on(&gw, "alive", "shared").await;
    doomed.shutdown().await;

    for i in 0..20 {
        let r = post_json(
            &gw.at("/v1/chat/completions"),
            rich_chat_body("shared"),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-mock-name"), Some("alive"), "request {i}");
    }
    let recs = inference_requests(&alive);
    assert_eq!(recs.len(), 20);
    assert!(recs
        .iter()
        .all(|r| r.header("authorization") == Some("Bearer sk-a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieve_model_is_answered_from_all_endpoints() {
    let first = start_mock(MockConfig::openai("first", ["m-first"])).await;
    let ocf = start_mock(
        MockConfig::ocf("ocf", Vec::<String>::new())
            .with_dnt_table(fixture_bytes("opentela_docs_head_plus_worker.json")),
    )
    .await;
    let gw = Gateway::start(&config(&[
        endpoint(&first.url(), "first", "openai", None),
        endpoint(&ocf.url(), "ocf", "ocf", None),
    ]))
    .await;
    // OpenAI SDKs put the id in the path as it is, slashes included; %2F works too.
    for path in ["/v1/models/Qwen/Qwen3-8B", "/v1/models/Qwen%2FQwen3-8B"] {
        let r = get(&gw.at(path)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let m = r.json();
        assert_eq!(m["id"], "Qwen/Qwen3-8B");
        assert_eq!(m["object"], "model");
        assert!(m["created"].is_i64() && m["owned_by"].is_string(), "{m}");
    }
    assert_eq!(
        get(&gw.at("/v1/models/m-first")).await.json()["id"],
        "m-first"
    );
    let missing = get(&gw.at("/v1/models/nope")).await;
    assert_openai_error(&missing, 404, "model_not_found");
    assert!(inference_requests(&first).is_empty() && inference_requests(&ocf).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodyless_requests_go_to_the_first_endpoint() {
    let first = start_mock(MockConfig::openai("first", ["m-first"])).await;
    let second = start_mock(MockConfig::openai("second", ["m-second"])).await;
    let gw = Gateway::start(&config(&[
        endpoint(&first.url(), "first", "openai", Some("sk-first")),
        endpoint(&second.url(), "second", "openai", Some("sk-second")),
    ]))
    .await;

    for i in 0..3 {
        // A GET with no body: the mock has no such route and answers 404 itself.
        let r = get(&gw.at("/v1/files/file-abc")).await;
        assert_eq!(r.header("x-mock-name"), Some("first"), "GET {i}");
        assert_eq!(r.status, 404, "passed through from the mock: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_found");

        // A POST with an empty body to an unknown /v1 route.
        let r = Client::new()
            .request(
                "POST",
                &gw.at("/v1/files/upload"),
                &[("content-length", "0")],
                ReqBody::empty(),
            )
            .await;
        assert_eq!(r.header("x-mock-name"), Some("first"), "POST {i}");
        assert_eq!(r.status, 404, "{}", r.text());
    }
    let recs: Vec<_> = first
        .requests()
        .into_iter()
        .filter(|r| r.path != "/v1/models")
        .collect();
    assert_eq!(recs.len(), 6, "{recs:?}");
    for r in &recs {
        assert!(r.path == "/v1/files/file-abc" || r.path == "/v1/files/upload");
        assert!(r.body.is_empty());
        assert_eq!(r.header("authorization"), Some("Bearer sk-first"));
    }
    assert!(
        second.requests().iter().all(|r| r.path == "/v1/models"),
        "second endpoint got a bodyless request: {:?}",
        second.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_headers_pass_through() {
    let mock = start_mock(MockConfig::openai("up", ["m1"])).await;
    let gw = Gateway::start(&config(&[endpoint(
        &mock.url(),
        "up",
        "openai",
        Some("sk-up"),
    )]))
    .await;

    let r = post_json(
        &gw.at("/v1/chat/completions"),
        rich_chat_body("m1"),
        &[
            ("x-custom", "1"),
            ("openai-organization", "org-123"),
            ("user-agent", "OpenAI/Python 1.50.0"),
            ("accept", "application/json"),
            ("x-request-id", "req-abc"),
            ("authorization", "Bearer client-secret"),
            ("host", "gateway.example"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = inference_requests(&mock);
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    assert_eq!(rec.header_all("x-custom"), ["1"]);
    assert_eq!(rec.header("openai-organization"), Some("org-123"));
    assert_eq!(rec.header("user-agent"), Some("OpenAI/Python 1.50.0"));
    assert_eq!(rec.header("accept"), Some("application/json"));
    assert_eq!(rec.header("x-request-id"), Some("req-abc"));
    assert_eq!(rec.header("content-type"), Some("application/json"));
    assert_eq!(rec.header_all("authorization"), ["Bearer sk-up"]);
    assert_eq!(
        rec.header_all("host"),
        [format!("127.0.0.1:{}", mock.port()).as_str()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_and_body_pass_through() {
    let mock = start_mock(MockConfig::openai("up", ["m1"])).await;
    let gw = Gateway::start(&config(&[endpoint(&mock.url(), "up", "openai", None)])).await;

    // Answers given on purpose (4xx) are final; the retried classes are in tests/retries.rs.
    for status in ["400", "401", "403", "404", "422"] {
        let r = post_json(
            &gw.at("/v1/chat/completions"),
            rich_chat_body("m1"),
            &[("x-mock-status", status)],
        )
        .await;
        assert_eq!(r.status.to_string(), status, "{}", r.text());
        assert_eq!(r.header("x-mock-name"), Some("up"), "the mock's own answer");
        let v = r.json();
        assert_eq!(v["error"]["code"], "mock_status", "{v}");
    }
    // Exactly one attempt each.
    assert_eq!(inference_requests(&mock).len(), 5);
}

/// The upstream restarts on the same port: the gateway's pooled connections to it are dead, and
/// requests (small and over 64 KiB) still succeed on fresh connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_restart_with_pooled_connections() {
    let mock = start_mock(MockConfig::openai("before", ["m1"])).await;
    let addr = mock.addr();
    let gw = Gateway::start(&config(&[endpoint(&mock.url(), "up", "openai", None)])).await;
    let large =
        json!({"model": "m1", "messages": [{"role": "user", "content": "y".repeat(200 * 1024)}]})
            .to_string();
    for body in [rich_chat_body("m1"), large.clone()] {
        let r = post_json(&gw.at("/v1/chat/completions"), body, &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    mock.shutdown().await;
    let again = MockServer::start_on(MockConfig::openai("after", ["m1"]), addr)
        .await
        .expect("restart the mock on its port");
    for (i, body) in [
        rich_chat_body("m1"),
        large.clone(),
        large,
        rich_chat_body("m1"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = post_json(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
        assert_eq!(r.status, 200, "request {i} after the restart: {}", r.text());
        assert_eq!(r.header("x-mock-name"), Some("after"));
        let rec = inference_requests(&again).pop().unwrap();
        assert_eq!(rec.body, body.as_bytes(), "request {i}");
    }
}
