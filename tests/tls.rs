//! HTTPS upstreams: discovery, proxying and streaming over TLS verified against the endpoint's
//! `ca_file`, and what happens when the CA is the wrong one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A gateway in front of one HTTPS mock (`url` built from the mock's port by `url_of`),
/// trusting only `trusted`. Returns the gateway and the dir holding the CA file.
async fn gateway_for(
    mock: &MockServer,
    trusted: &TestCa,
    url_of: impl Fn(u16) -> String,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = trusted.write_to(dir.path());
    let gw = Gateway::start(&format!(
        r#"
listen: "127.0.0.1:{{port}}"
timeout_secs: 10
endpoints:
  - url: {}
    name: tls-up
    api_key: sk-upstream-tls
    ca_file: {}
"#,
        url_of(mock.port()),
        files.ca.display()
    ))
    .await;
    (gw, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_its_ca_discovers_proxies_and_streams() {
    let ca = TestCa::new();
    let mock =
        start_mock(MockConfig::openai("tls-up", ["tls-model"]).with_tls(ca.mock_tls())).await;
    assert!(mock.url().starts_with("https://"));
    let port = mock.port();
    let (gw, _dir) = gateway_for(&mock, &ca, |p| format!("https://localhost:{p}")).await;

    // Discovery over TLS.
    let e = endpoint_named(&gw, "tls-up").await;
    assert_eq!(e["discovery"]["status"], "ok", "{e}");
    assert_eq!(e["healthy"], true, "{e}");
    assert_eq!(model_ids(&gw).await, ["tls-model"]);

    // A plain request is proxied over TLS with the upstream's Host.
    mock.clear_records();
    let r = post_chat(&gw, "tls-model", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("tls-up"));
    assert_eq!(r.json()["object"], "chat.completion");
    let reqs: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect();
    assert_eq!(reqs.len(), 1, "the mock received the chat request");
    let host = format!("localhost:{port}");
    assert_eq!(reqs[0].header("host"), Some(host.as_str()));
    assert_eq!(
        reqs[0].header("authorization"),
        Some("Bearer sk-upstream-tls")
    );
    assert_eq!(reqs[0].json()["model"], "tls-model");

    // A streamed request over TLS.
    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        chat_body("tls-model", true),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(
        s.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{:?}",
        s.header("content-type")
    );
    let body = s.read_to_end().await;
    assert!(s.error().is_none(), "stream ended early: {:?}", s.error());
    let events = sse_data(&body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert_eq!(events.len(), 6, "5 content events + [DONE]: {events:?}");
    let streams = mock.streams();
    assert_eq!(streams.len(), 1);
    assert!(streams[0].finished);
    assert_eq!(
        streams[0].sent,
        body.to_vec(),
        "passed through byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_by_ip_address() {
    // The leaf also covers 127.0.0.1 (an IP SAN): an endpoint given by IP works too.
    let ca = TestCa::new();
    let mock = start_mock(MockConfig::openai("tls-ip", ["ip-model"]).with_tls(ca.mock_tls())).await;
    let (gw, _dir) = gateway_for(&mock, &ca, |p| format!("https://127.0.0.1:{p}")).await;
    let e = endpoint_named(&gw, "tls-up").await;
    assert_eq!(e["discovery"]["status"], "ok", "{e}");
    assert_eq!(model_ids(&gw).await, ["ip-model"]);
    let r = post_chat(&gw, "ip-model", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("tls-ip"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_fails_discovery_with_a_tls_error() {
    let ca = TestCa::new();
    let other = TestCa::named("some other CA");
    let mock =
        start_mock(MockConfig::openai("tls-up", ["tls-model"]).with_tls(ca.mock_tls())).await;
    let (gw, _dir) = gateway_for(&mock, &other, |p| format!("https://localhost:{p}")).await;

    let e = endpoint_named(&gw, "tls-up").await;
    assert_eq!(e["discovery"]["status"], "failed", "{e}");
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["models"], json!([]), "{e}");
    let error = e["discovery"]["error"].as_str().unwrap_or_default();
    assert!(!error.is_empty(), "a failed endpoint says why: {e}");
    let lower = error.to_ascii_lowercase();
    assert!(
        lower.contains("tls") || lower.contains("cert"),
        "the error names the TLS/certificate problem: {error:?}"
    );
    assert!(!error.contains("sk-upstream"), "{error}");
    assert_eq!(model_ids(&gw).await, Vec::<String>::new());

    // A request for the model is answered with an OpenAI error, promptly.
    let client = Client::new().timeout(Duration::from_secs(10));
    let t0 = Instant::now();
    let r = client
        .post_json(
            &gw.at("/v1/chat/completions"),
            chat_body("tls-model", false),
            &[],
        )
        .await;
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_openai_error(&r, 404, "model_not_found");
    assert!(
        !mock
            .requests()
            .iter()
            .any(|r| r.path == "/v1/chat/completions"),
        "nothing reached the untrusted upstream"
    );
}
