//! Tests of the bundled mock upstream on its own (no gateway): routes, JSON shapes, SSE pacing and recording, disconnects, OCF, large bodies, TLS, fault injection.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ai_proxy_mock::Fault;
use bytes::Bytes;
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Asserts one of the mock's own OpenAI error answers (its `type` depends on the status; `param`
/// is null).
fn assert_mock_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "body: {v}");
    assert!(v["error"]["message"].is_string(), "body: {v}");
    assert!(v["error"]["type"].is_string(), "body: {v}");
    assert!(v["error"]["param"].is_null(), "body: {v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_list_and_set_models() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1", "m2"])).await;
    assert!(mock.url().starts_with("http://127.0.0.1:"));

    let r = get(&format!("{}/v1/models", mock.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-name"), Some("up-a"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m1", "m2"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(v["data"][0]["owned_by"], "up-a");
    assert_eq!(v["data"][0]["created"], 1_700_000_000u64);

    mock.set_models(vec!["m3".to_string()]);
    let v = get(&format!("{}/v1/models", mock.url())).await.json();
    assert_eq!(
        v["data"],
        json!([{"id": "m3", "object": "model", "created": 1_700_000_000u64, "owned_by": "up-a"}])
    );

    for path in ["/health", "/v1/health"] {
        let r = get(&format!("{}{path}", mock.url())).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"status": "ok"}));
    }

    assert_eq!(mock.request_count(), 4);
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 4);
    assert_eq!(reqs[0].method, "GET");
    assert_eq!(reqs[0].path, "/v1/models");
    assert!(reqs[0].header("HOST").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_failing_answers_500() {
    let openai = start_mock(MockConfig::openai("up-a", ["m1"])).await;
    let ocf = start_mock(MockConfig::ocf("head", ["q1"])).await;

    openai.set_discovery_failing(true);
    ocf.set_discovery_failing(true);
    let r = get(&format!("{}/v1/models", openai.url())).await;
    assert_mock_error(&r, 500, "mock_discovery_failing");
    assert_eq!(r.header("x-mock-name"), Some("up-a"));
    assert_mock_error(
        &get(&format!("{}/v1/dnt/table", ocf.url())).await,
        500,
        "mock_discovery_failing",
    );
    // Inference is unaffected.
    let r = post_json(
        &format!("{}/v1/chat/completions", openai.url()),
        chat_body("m1", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);

    openai.set_discovery_failing(false);
    ocf.set_discovery_failing(false);
    assert_eq!(
        get(&format!("{}/v1/models", openai.url())).await.status,
        200
    );
    assert_eq!(
        get(&format!("{}/v1/dnt/table", ocf.url())).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_shapes() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1"])).await;
    let url = mock.url();

    let r = post_json(
        &format!("{url}/v1/chat/completions"),
        chat_body("m1", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("x-mock-name"), Some("up-a"));
    let v = r.json();
    assert!(
        v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"),
        "{v}"
    );
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    assert_eq!(v["model"], "m1");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(!v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .is_empty());
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], 5);
    assert_eq!(u["completion_tokens"], 5);
    assert_eq!(u["total_tokens"], 10);

    let r = post_json(
        &format!("{url}/v1/completions"),
        json!({"model": "m1", "prompt": "once upon"}).to_string(),
        &[("x-mock-events", "3")],
    )
    .await;
    let v = r.json();
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    );

    let r = post_json(
        &format!("{url}/v1/embeddings"),
        json!({"model": "e1", "input": "a b c"}).to_string(),
        &[],
    )
    .await;
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "e1");
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 8);
    assert_eq!(v["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));

    let r = post_json(
        &format!("{url}/v1/responses"),
        json!({"model": "m1", "input": "hi"}).to_string(),
        &[],
    )
    .await;
    let v = r.json();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["output"][0]["content"][0]["type"], "output_text");

    // Errors: not JSON, unknown path, wrong method, forced status.
    let r = post_json(&format!("{url}/v1/chat/completions"), "not json", &[]).await;
    assert_mock_error(&r, 400, "invalid_json");
    let r = get(&format!("{url}/v1/nope")).await;
    assert_mock_error(&r, 404, "not_found");
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert_eq!(r.header("x-mock-name"), Some("up-a"));
    assert_mock_error(
        &get(&format!("{url}/v1/chat/completions")).await,
        405,
        "method_not_allowed",
    );
    let r = post_json(
        &format!("{url}/v1/chat/completions"),
        chat_body("m1", false),
        &[("x-mock-status", "429")],
    )
    .await;
    assert_mock_error(&r, 429, "mock_status");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");

    // Delay before headers.
    let t0 = Instant::now();
    let r = post_json(
        &format!("{url}/v1/chat/completions"),
        chat_body("m1", false),
        &[("x-mock-delay-ms", "150")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(t0.elapsed() >= Duration::from_millis(150));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_stream_is_paced_framed_and_recorded() {
    let cfg = MockConfig::openai("up-a", ["m1"]).with_sse(5, Duration::from_millis(100));
    let mock = start_mock(cfg).await;
    let mut s = post_stream(
        &format!("{}/v1/chat/completions", mock.url()),
        chat_body("m1", true),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("transfer-encoding"), Some("chunked"));
    assert!(s.header("content-length").is_none());
    assert_eq!(s.header("x-mock-name"), Some("up-a"));

    let chunks = s.collect_chunks().await;
    assert!(s.error().is_none(), "{:?}", s.error());
    assert_eq!(
        chunks.len(),
        6,
        "5 content events + [DONE], each its own frame: {chunks:?}"
    );
    for (c, _) in &chunks {
        assert!(
            c.starts_with(b"data: ") && c.ends_with(b"\n\n"),
            "not one whole event: {c:?}"
        );
    }
    for w in chunks[..5].windows(2) {
        let gap = w[1].1 - w[0].1;
        // Server-side spacing is >= 100 ms; leave slack for a late read of the earlier event.
        assert!(
            gap >= Duration::from_millis(50),
            "content events only {gap:?} apart"
        );
    }
    let span = chunks[4].1 - chunks[0].1;
    assert!(
        span >= Duration::from_millis(380),
        "5 events spread over only {span:?}"
    );
    let times = &mock.streams()[0].event_times;
    for w in times[..5].windows(2) {
        assert!(
            w[1] - w[0] >= Duration::from_millis(100),
            "mock paced {:?}",
            w[1] - w[0]
        );
    }
    assert_eq!(&chunks[5].0[..], b"data: [DONE]\n\n");

    let events: Vec<Value> = chunks[..5]
        .iter()
        .map(|(c, _)| serde_json::from_str(&sse_data(c)[0]).unwrap())
        .collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert_eq!(e["model"], "m1");
        assert_eq!(e["id"], events[0]["id"]);
        let finish = if i == 4 { json!("stop") } else { Value::Null };
        assert_eq!(e["choices"][0]["finish_reason"], finish, "event {i}: {e}");
        assert!(e["choices"][0]["delta"]["content"].is_string());
    }
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(events[1]["choices"][0]["delta"].get("role").is_none());

    let read: Vec<u8> = chunks.iter().flat_map(|(c, _)| c.to_vec()).collect();
    let streams = mock.streams();
    assert_eq!(streams.len(), 1);
    assert_eq!(streams[0].sent, read);
    assert_eq!(streams[0].event_times.len(), 6);
    assert!(streams[0].finished);
    assert!(streams[0].closed_early_at.is_none());
    assert_eq!(streams[0].path, "/v1/chat/completions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_usage_chunk_completions_and_responses_streams() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1"])).await;
    let url = mock.url();

    let body = json!({"model": "m1", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi there"}]});
    let mut s = post_stream(
        &format!("{url}/v1/chat/completions"),
        body.to_string(),
        &[("x-mock-events", "2")],
    )
    .await;
    let chunks = s.collect_chunks().await;
    let data: Vec<String> = chunks.iter().flat_map(|(c, _)| sse_data(c)).collect();
    assert_eq!(data.len(), 4, "{data:?}");
    let usage: Value = serde_json::from_str(&data[2]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4})
    );
    assert_eq!(data[3], "[DONE]");

    let body = json!({"model": "m1", "stream": true, "prompt": "x"});
    let mut s = post_stream(&format!("{url}/v1/completions"), body.to_string(), &[]).await;
    let data = sse_data(&s.read_to_end().await);
    assert_eq!(data.len(), 6);
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert!(first["choices"][0]["text"].is_string());
    assert_eq!(data[5], "[DONE]");

    let body = json!({"model": "m1", "stream": true, "input": "x"});
    let mut s = post_stream(
        &format!("{url}/v1/responses"),
        body.to_string(),
        &[("x-mock-events", "3")],
    )
    .await;
    let text = String::from_utf8(s.read_to_end().await.to_vec()).unwrap();
    assert!(text.starts_with("event: response.created\n"), "{text}");
    assert_eq!(
        text.matches("event: response.output_text.delta\n").count(),
        3
    );
    assert!(text.contains("event: response.completed\n"));
    let streams = mock.streams();
    assert_eq!(streams.len(), 3);
    assert!(streams
        .iter()
        .all(|s| s.finished && s.closed_early_at.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_is_noticed() {
    let cfg = MockConfig::openai("up-a", ["m1"]).with_sse(50, Duration::from_millis(100));
    let mock = start_mock(cfg).await;
    let mut s = post_stream(
        &format!("{}/v1/chat/completions", mock.url()),
        chat_body("m1", true),
        &[],
    )
    .await;
    assert!(s.next_chunk().await.is_some());
    assert!(s.next_chunk().await.is_some());
    let dropped_at = Instant::now();
    drop(s);

    // Readiness-style poll, bounded by 1 s.
    let rec = wait_stream_closed_early(&mock, Duration::from_secs(1)).await;
    let at = rec
        .closed_early_at
        .unwrap_or_else(|| panic!("disconnect not noticed within 1 s: {rec:?}"));
    assert!(at.duration_since(dropped_at) < Duration::from_secs(1));
    assert!(!rec.finished);
    assert!(
        rec.event_times.len() < 10,
        "kept sending after the disconnect: {}",
        rec.event_times.len()
    );
}

/// With a 10 s pause the mock has nothing to write, so this shows hyper notices the peer's EOF
/// itself (not on the next write), over plain TCP and over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_noticed_during_a_long_pause() {
    let ca = TestCa::new();
    for tls in [false, true] {
        let mut cfg = MockConfig::openai("up-a", ["m1"]).with_sse(3, Duration::from_secs(10));
        if tls {
            cfg = cfg.with_tls(ca.mock_tls());
        }
        let mock = start_mock(cfg).await;
        let client = ca.client();
        let mut s = client
            .post_stream(
                &format!("{}/v1/chat/completions", mock.url()),
                chat_body("m1", true),
                &[],
            )
            .await;
        assert!(s.next_chunk().await.is_some());
        let dropped_at = Instant::now();
        drop(s);
        let at = wait_stream_closed_early(&mock, Duration::from_secs(1))
            .await
            .closed_early_at
            .unwrap_or_else(|| panic!("tls={tls}: disconnect not noticed within 1 s"));
        let took = at.duration_since(dropped_at);
        assert!(took < Duration::from_secs(1), "tls={tls}: {took:?}");
        assert_eq!(mock.streams()[0].event_times.len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocf_routes_and_dnt_table() {
    let table = fixture_bytes("opentela_docs_head_plus_worker.json");
    let mock =
        start_mock(MockConfig::ocf("head", ["Qwen/Qwen3-8B"]).with_dnt_table(table.clone())).await;
    let url = mock.url();

    let r = get(&format!("{url}/v1/dnt/table")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, table, "dnt table must be served verbatim");
    assert_eq!(r.header("x-mock-name"), Some("head"));

    let r = post_json(
        &format!("{url}/v1/service/llm/v1/chat/completions"),
        chat_body("Qwen/Qwen3-8B", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["model"], "Qwen/Qwen3-8B");
    let mut s = post_stream(
        &format!("{url}/v1/service/llm/v1/chat/completions"),
        chat_body("q", true),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert_eq!(
        sse_data(&s.read_to_end().await).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(
        post_json(
            &format!("{url}/v1/service/llm/v1/embeddings"),
            r#"{"model":"q","input":"x"}"#,
            &[]
        )
        .await
        .status,
        200
    );

    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    ] {
        let r = post_json(&format!("{url}{path}"), chat_body("q", false), &[]).await;
        assert_mock_error(&r, 404, "not_found");
    }
    assert_eq!(mock.requests().last().unwrap().path, "/v1/responses");

    // Generated table: head + one ready worker per model, following set_models.
    let gen = start_mock(MockConfig::ocf("gen", ["a/b", "c"])).await;
    gen.set_models(vec!["x/y".into(), "z".into()]);
    let v = get(&format!("{}/v1/dnt/table", gen.url())).await.json();
    let peers = v.as_object().unwrap();
    assert_eq!(peers.len(), 3);
    let mut models = Vec::new();
    for (key, peer) in peers {
        assert_eq!(key.strip_prefix('/'), peer["id"].as_str(), "key is /<id>");
        assert_eq!(peer["connected"], true);
        for svc in peer["service"].as_array().unwrap() {
            assert_eq!(svc["name"], "llm");
            assert_eq!(peer["status"], "ready");
            for g in svc["identity_group"].as_array().unwrap() {
                models.push(
                    g.as_str()
                        .unwrap()
                        .strip_prefix("model=")
                        .unwrap()
                        .to_string(),
                );
            }
        }
    }
    models.sort();
    assert_eq!(models, ["x/y", "z"]);
    assert!(
        peers.values().any(|p| p["service"] == json!([])),
        "head peer with no services"
    );

    // The openai kind has no dnt table.
    let openai = start_mock(MockConfig::openai("up", ["m"])).await;
    assert_mock_error(
        &get(&format!("{}/v1/dnt/table", openai.url())).await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_bodies_recorded_byte_identical() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1"])).await;
    let url = format!("{}/v1/chat/completions?trace=1", mock.url());
    let head = br#"{"model":"m1","messages":[{"role":"user","content":""#;
    let tail = br#""}]}"#;
    let mut body = head.to_vec();
    let fill = (1 << 20) - head.len() - tail.len();
    body.extend((0..fill).map(|i| {
        if i % 64 == 63 {
            b' '
        } else {
            b'a' + (i % 26) as u8
        }
    }));
    body.extend_from_slice(tail);
    assert_eq!(body.len(), 1 << 20);
    let body = Bytes::from(body);

    let r = post_json(&url, body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let chunks: Vec<Bytes> = body.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let r = Client::new()
        .request(
            "POST",
            &url,
            &[("content-type", "application/json")],
            ReqBody::chunked(chunks),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let reqs = mock.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("content-length"), Some("1048576"));
    assert_eq!(reqs[1].header("transfer-encoding"), Some("chunked"));
    assert!(reqs[1].header("content-length").is_none());
    for r in &reqs {
        assert_eq!(r.path, "/v1/chat/completions?trace=1");
        assert!(
            r.body == body,
            "recorded body differs ({} bytes)",
            r.body.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mock_verified_with_test_ca() {
    let ca = TestCa::new();
    let mock = start_mock(MockConfig::openai("tls-up", ["m1"]).with_tls(ca.mock_tls())).await;
    assert!(mock.url().starts_with("https://127.0.0.1:"));

    let client = ca.client();
    let r = client.get(&format!("{}/v1/models", mock.url())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-mock-name"), Some("tls-up"));
    let localhost = format!("https://localhost:{}/v1/health", mock.port());
    assert_eq!(client.get(&localhost).await.status, 200);
    let mut s = client
        .post_stream(
            &format!("{}/v1/chat/completions", mock.url()),
            chat_body("m1", true),
            &[],
        )
        .await;
    assert_eq!(sse_data(&s.read_to_end().await).len(), 6);

    // A client trusting another CA must fail the handshake.
    let err = TestCa::new()
        .client()
        .try_get(&format!("{}/v1/models", mock.url()))
        .await
        .expect_err("wrong CA must not verify");
    assert!(err.contains("TLS"), "{err}");

    // Files for the gateway side.
    let dir = tempfile::tempdir().unwrap();
    let files = ca.write_to(dir.path());
    let from_files = MockTls::from_files(&files.cert, &files.key).unwrap();
    assert_eq!(from_files.cert_chain_pem, ca.leaf_cert_pem.as_bytes());
    assert!(std::fs::read_to_string(&files.ca)
        .unwrap()
        .contains("BEGIN CERTIFICATE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_off_counts_and_shutdown_frees_port() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1"]).with_record(false)).await;
    let addr = mock.addr();
    let mut s = post_stream(
        &format!("{}/v1/chat/completions", mock.url()),
        chat_body("m1", true),
        &[],
    )
    .await;
    assert_eq!(sse_data(&s.read_to_end().await).len(), 6);
    assert_eq!(get(&format!("{}/health", mock.url())).await.status, 200);
    assert_eq!(mock.request_count(), 2);
    assert!(mock.requests().is_empty());
    assert!(mock.streams().is_empty());

    // An idle keep-alive connection must not keep the server alive.
    let mut conn = Client::new().connect(&mock.url()).await.unwrap();
    let r = conn
        .send("GET", "/health", &[], ReqBody::empty())
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    mock.shutdown().await;
    assert!(try_get(&format!("http://{addr}/health")).await.is_err());
    assert!(conn
        .send("GET", "/health", &[], ReqBody::empty())
        .await
        .is_err());

    let again = MockServer::start_on(MockConfig::openai("up-b", ["m1"]), addr)
        .await
        .unwrap();
    let r = get(&format!("http://{addr}/health")).await;
    assert_eq!(r.header("x-mock-name"), Some("up-b"));
    drop(again);
}

/// The short client timeout the fault tests assert on: a hung or stalled answer must produce
/// nothing within it.
const SHORT: Duration = Duration::from_millis(300);

/// Sends one raw HTTP/1.1 POST of `body` on a fresh connection and reads until the server ends
/// the connection (or 5 s pass): every byte received, and how the connection ended (`Ok` for a
/// clean EOF, else the read error, e.g. `ConnectionReset` for a RST).
async fn raw_post_until_closed(
    addr: SocketAddr,
    path: &str,
    body: &str,
) -> (Vec<u8>, io::Result<()>) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect to the mock");
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes())
        .await
        .expect("send the request");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Bounded by the deadline; each read returns at least one byte or ends the loop.
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => {
                let e = io::Error::new(io::ErrorKind::TimedOut, "connection still open after 5 s");
                return (got, Err(e));
            }
            Ok(Ok(0)) => return (got, Ok(())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Err(e)),
        }
    }
}

/// Splits a raw HTTP/1.1 response into its lowercased head and its body bytes.
fn split_head(raw: &[u8]) -> (String, &[u8]) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no complete response head in {:?}",
                String::from_utf8_lossy(raw)
            )
        });
    (
        String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase(),
        &raw[end + 4..],
    )
}

/// The mock answers normally: a complete chat completion.
async fn assert_answers_normally(mock: &MockServer) {
    let r = post_json(
        &format!("{}/v1/chat/completions", mock.url()),
        chat_body("m1", false),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "chat.completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_hang_times_out_while_discovery_answers() {
    let hung = start_mock(MockConfig::openai("hung", ["m1"]).with_fault(Fault::Hang)).await;
    let fine = start_mock(MockConfig::openai("fine", ["m1"])).await;
    assert_eq!(hung.fault(), Some(Fault::Hang));
    let url = format!("{}/v1/chat/completions", hung.url());

    let t0 = Instant::now();
    let client = Client::new().timeout(SHORT);
    let models_url = format!("{}/v1/models", hung.url());
    let hung_post = async {
        let r = client
            .try_request(
                "POST",
                &url,
                &[("content-type", "application/json")],
                ReqBody::full(chat_body("m1", false)),
            )
            .await;
        (r, Instant::now())
    };
    // Discovery on the same mock answers while the POST hangs.
    let discovery = async { (get(&models_url).await, Instant::now()) };
    let ((posted, post_done), (models, models_done)) = tokio::join!(hung_post, discovery);
    let err = posted.expect_err("a hung mock must not answer");
    assert!(err.contains("no response head"), "{err}");
    assert!(post_done - t0 >= SHORT);
    assert!(
        models_done < post_done,
        "discovery waited for the hung POST"
    );
    assert_eq!(models.status, 200);
    assert_eq!(model_ids_of(&models), ["m1"]);

    // The attempt was counted and recorded; its abandonment is noticed once the client left.
    let posts = inference_requests(&hung);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].path, "/v1/chat/completions");
    assert_eq!(hung.request_count(), 2);
    let m = &hung;
    let noticed = poll_until(Duration::from_secs(2), || async {
        !m.abandoned().is_empty()
    })
    .await;
    assert!(noticed.is_some(), "the abandoned request was not noticed");

    // Only the faulty mock misbehaves.
    assert_answers_normally(&fine).await;
    assert!(fine.abandoned().is_empty());
}

/// Model ids of a `/v1/models` answer.
fn model_ids_of(r: &Resp) -> Vec<String> {
    r.json()["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_status_with_retry_after() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1"]).with_record(false)).await;
    mock.set_fault(Some(Fault::Status {
        status: 503,
        retry_after: Some(7),
    }));
    let url = format!("{}/v1/chat/completions", mock.url());

    // The fault wins over x-mock-status.
    let r = post_json(&url, chat_body("m1", false), &[("x-mock-status", "429")]).await;
    assert_mock_error(&r, 503, "mock_fault");
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-mock-name"), Some("up-a"));

    // Streaming requests and other inference endpoints get the same answer.
    let r = post_json(&url, chat_body("m1", true), &[]).await;
    assert_mock_error(&r, 503, "mock_fault");
    let r = post_json(
        &format!("{}/v1/embeddings", mock.url()),
        r#"{"model":"m1","input":"x"}"#,
        &[],
    )
    .await;
    assert_mock_error(&r, 503, "mock_fault");

    mock.set_fault(Some(Fault::Status {
        status: 429,
        retry_after: None,
    }));
    let r = post_json(&url, chat_body("m1", false), &[]).await;
    assert_mock_error(&r, 429, "mock_fault");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_none());

    assert_eq!(get(&format!("{}/v1/models", mock.url())).await.status, 200);
    // Counted even with recording off.
    assert_eq!(mock.request_count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_reset_after_events_on_a_stream() {
    let ca = TestCa::new();
    for tls in [false, true] {
        let mut cfg = MockConfig::openai("up-a", ["m1"]).with_sse(5, Duration::ZERO);
        if tls {
            cfg = cfg.with_tls(ca.mock_tls());
        }
        let mock = start_mock(cfg.with_fault(Fault::ResetAfter { events: 2 })).await;
        let mut s = ca
            .client()
            .post_stream(
                &format!("{}/v1/chat/completions", mock.url()),
                chat_body("m1", true),
                &[],
            )
            .await;
        assert_eq!(s.status, 200, "tls={tls}");
        assert_eq!(s.header("content-type"), Some("text/event-stream"));
        let data = sse_data(&s.read_to_end().await);
        assert_eq!(data.len(), 2, "tls={tls}: {data:?}");
        assert!(!data.iter().any(|d| d == "[DONE]"), "tls={tls}: {data:?}");
        let err = s.error().unwrap_or_else(|| panic!("tls={tls}: no error"));
        assert!(err.contains("body error"), "tls={tls}: {err}");

        let rec = last_stream(&mock);
        assert_eq!(rec.event_times.len(), 2, "tls={tls}");
        assert!(!rec.finished);
        assert!(rec.closed_early_at.is_some(), "tls={tls}: {rec:?}");
        assert_eq!(mock.request_count(), 1);
        // Other connections are unaffected.
        assert_eq!(
            ca.client()
                .get(&format!("{}/v1/models", mock.url()))
                .await
                .status,
            200
        );
    }
}

/// On the wire: the head and exactly the allowed part of the body, then a TCP RST (the read
/// fails with `ConnectionReset`, not a clean EOF).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_reset_after_sends_a_tcp_rst() {
    let mock =
        start_mock(MockConfig::openai("up-a", ["m1"]).with_fault(Fault::ResetAfter { events: 3 }))
            .await;

    let (raw, end) =
        raw_post_until_closed(mock.addr(), "/v1/chat/completions", &chat_body("m1", true)).await;
    let kind = end.as_ref().map_err(io::Error::kind);
    assert_eq!(kind, Err(io::ErrorKind::ConnectionReset), "{end:?}");
    let (head, body) = split_head(&raw);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let events: Vec<String> = sse_data(body);
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events.iter().all(|e| e.starts_with('{')), "{events:?}");

    // Non-streaming: the full Content-Length is promised, half of it is sent.
    let (raw, end) =
        raw_post_until_closed(mock.addr(), "/v1/chat/completions", &chat_body("m1", false)).await;
    let kind = end.as_ref().map_err(io::Error::kind);
    assert_eq!(kind, Err(io::ErrorKind::ConnectionReset), "{end:?}");
    let (head, body) = split_head(&raw);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    assert_eq!(body.len(), len / 2, "content-length {len}");
    assert!(
        body.starts_with(b"{"),
        "{:?}",
        String::from_utf8_lossy(body)
    );
    assert!(
        serde_json::from_slice::<Value>(body).is_err(),
        "half a JSON"
    );

    // The hyper client sees a failed body.
    let r = Client::new()
        .try_request(
            "POST",
            &format!("{}/v1/chat/completions", mock.url()),
            &[("content-type", "application/json")],
            ReqBody::full(chat_body("m1", false)),
        )
        .await;
    let err = r.expect_err("a reset answer must fail");
    assert!(err.contains("response body error"), "{err}");
    assert_eq!(inference_requests(&mock).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_stall_after_events() {
    let mock = start_mock(MockConfig::openai("up-a", ["m1"])).await;
    mock.set_fault(Some(Fault::StallAfter { events: 2 }));
    let url = format!("{}/v1/chat/completions", mock.url());

    let mut s = Client::new()
        .timeout(SHORT)
        .post_stream(&url, chat_body("m1", true), &[])
        .await;
    assert_eq!(s.status, 200);
    let t0 = Instant::now();
    let chunks = s.collect_chunks().await;
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    for (c, _) in &chunks {
        assert!(c.starts_with(b"data: {"), "{c:?}");
    }
    let err = s.error().unwrap_or("");
    assert!(err.contains("no body frame within"), "{err:?}");
    assert!(t0.elapsed() >= SHORT);
    let rec = last_stream(&mock);
    assert_eq!(rec.event_times.len(), 2);
    assert!(!rec.finished);

    // The connection was kept open; closing it is noticed.
    drop(s);
    let rec = wait_stream_closed_early(&mock, Duration::from_secs(2)).await;
    assert!(rec.closed_early_at.is_some(), "{rec:?}");
    assert_eq!(rec.event_times.len(), 2);

    // Non-streaming: the head arrives, the body never completes.
    let r = Client::new()
        .timeout(SHORT)
        .try_request(
            "POST",
            &url,
            &[("content-type", "application/json")],
            ReqBody::full(chat_body("m1", false)),
        )
        .await;
    let err = r.expect_err("a stalled body must not complete");
    assert!(err.contains("response body not complete"), "{err}");
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_ocf_error_answers_200_plain_text() {
    let head = start_mock(MockConfig::ocf("head", ["q1"]).with_fault(Fault::OcfError)).await;
    let url = format!("{}/v1/service/llm/v1/chat/completions", head.url());
    for stream in [false, true] {
        let r = post_json(&url, chat_body("q1", stream), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.text(), "ERROR: forward to peer failed");
        assert_eq!(r.header("content-length"), Some("29"));
    }
    let r = get(&format!("{}/v1/dnt/table", head.url())).await;
    assert_eq!(r.status, 200);
    assert!(r.json().is_object());
    assert_eq!(get(&format!("{}/v1/models", head.url())).await.status, 200);
    assert_eq!(inference_requests(&head).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_fault_none_restores_normal_answers() {
    let a = start_mock(MockConfig::openai("up-a", ["m1"])).await;
    let b = start_mock(MockConfig::openai("up-b", ["m1"])).await;
    let faults = [
        Fault::Status {
            status: 500,
            retry_after: None,
        },
        Fault::OcfError,
        Fault::ResetAfter { events: 1 },
    ];
    for fault in faults {
        a.set_fault(Some(fault.clone()));
        assert_eq!(a.fault(), Some(fault.clone()));
        let r = Client::new()
            .try_request(
                "POST",
                &format!("{}/v1/chat/completions", a.url()),
                &[("content-type", "application/json")],
                ReqBody::full(chat_body("m1", false)),
            )
            .await;
        let normal = r
            .as_ref()
            .is_ok_and(|r| r.status == 200 && r.header("content-type") == Some("application/json"));
        assert!(!normal, "{fault:?} answered normally: {r:?}");
        assert_answers_normally(&b).await;

        a.set_fault(None);
        assert_eq!(a.fault(), None);
        assert_answers_normally(&a).await;
        let mut s = post_stream(
            &format!("{}/v1/chat/completions", a.url()),
            chat_body("m1", true),
            &[],
        )
        .await;
        let data = sse_data(&s.read_to_end().await);
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{fault:?}");
        assert!(s.error().is_none(), "{fault:?}: {:?}", s.error());
    }
    assert_eq!(inference_requests(&a).len(), 9);
    assert_eq!(b.request_count(), 3);
}

/// `max_concurrency`: requests beyond the slots wait for one before their delay starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mock_serves_at_most_its_slots_at_once() {
    let delay = std::time::Duration::from_millis(100);
    let mock = start_mock(
        MockConfig::openai("slots", ["m"])
            .with_delay(delay)
            .with_max_concurrency(1),
    )
    .await;
    let url = format!("{}/v1/chat/completions", mock.url());
    let started = std::time::Instant::now();
    let requests: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, chat_body("m", false), &[]).await.status })
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap(), 200);
    }
    // One at a time: three delays in a row.
    assert!(started.elapsed() >= delay * 3, "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_posts_until_their_stream_ends_or_is_dropped() {
    let mock =
        start_mock(MockConfig::openai("up", ["m"]).with_sse(50, Duration::from_millis(50))).await;
    let url = format!("{}/v1/chat/completions", mock.url());
    assert_eq!((mock.in_flight(), mock.peak_in_flight()), (0, 0));
    // A JSON answer is in flight only while it is built; GETs never count.
    assert_eq!(
        post_json(&url, chat_body("m", false), &[]).await.status,
        200
    );
    assert_eq!(get(&format!("{}/v1/models", mock.url())).await.status, 200);
    assert_eq!((mock.in_flight(), mock.peak_in_flight()), (0, 1));
    mock.reset_peak_in_flight();
    assert_eq!(mock.peak_in_flight(), 0);

    // Long, short, long (50 events of 50 ms by default, 1000 asked for).
    let mut streams = Vec::new();
    for events in ["1000", "50", "1000"] {
        let s = post_stream(&url, chat_body("m", true), &[("x-mock-events", events)]).await;
        assert_eq!(s.status, 200);
        streams.push(s);
    }
    assert_eq!((mock.in_flight(), mock.peak_in_flight()), (3, 3));
    // A client that goes away ends its stream; one read to the end ends too.
    drop(streams.pop());
    let dropped = poll_until(Duration::from_secs(5), || async { mock.in_flight() == 2 }).await;
    assert!(dropped.is_some(), "in flight: {}", mock.in_flight());
    let mut s = streams.pop().unwrap();
    s.read_to_end().await;
    let ended = poll_until(Duration::from_secs(5), || async { mock.in_flight() == 1 }).await;
    assert!(ended.is_some(), "in flight: {}", mock.in_flight());
    assert_eq!(mock.peak_in_flight(), 3);
    mock.reset_peak_in_flight();
    assert_eq!(mock.peak_in_flight(), 1);
}
