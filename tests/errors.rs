//! The gateway's own answers: OpenAI error JSON for bad requests, unknown models, timeouts and
//! dead upstreams; local routes; no upstream key in any answer or log line; odd input is a 4xx,
//! never a crash.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MODEL: &str = "err-model";
const SECRET: &str = "sk-upstream-SECRET-123";

fn endpoint(url: &str, name: &str, key: &str) -> String {
    format!("  - url: {url}\n    name: {name}\n    api_key: {key}\n")
}

fn config(extra: &str, endpoints: &[String]) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\nconnect_timeout_secs: 2\n{extra}endpoints:\n{}",
        endpoints.concat()
    )
}

/// A chat body over 64 KiB (the subrequest path).
fn large_chat_body(model: &str) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "x ".repeat(100 * 1024)}]})
        .to_string()
}

/// Sends raw bytes and returns the status of the answer (writes may fail part way when the
/// gateway stops reading; the answer is still read). Bounded by 10 s.
async fn raw_status(port: u16, request: &[u8]) -> Result<u16, String> {
    let fut = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let write_err = s.write_all(request).await.err();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        for _ in 0..10_000 {
            if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
            match s.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => {
                    return Err(format!(
                        "read: {e} (write error: {write_err:?}, got {:?})",
                        String::from_utf8_lossy(&buf)
                    ))
                }
            }
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        head.split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("no status line (write error: {write_err:?}): {head:?}"))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_errors() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config("", &[endpoint(&mock.url(), "up", "sk-up")])).await;
    let chat = gw.at("/v1/chat/completions");

    let e = assert_openai_error(
        &post_json(&chat, chat_body("no-such-model", false), &[]).await,
        404,
        "model_not_found",
    );
    assert!(
        e["message"].as_str().unwrap().contains("no-such-model"),
        "{e}"
    );

    for (what, body) in [
        (
            "broken JSON",
            r#"{"model": "err-model", "messages": ["#.to_string(),
        ),
        ("not JSON", "model=err-model".to_string()),
        (
            "no model",
            json!({"messages": [{"role": "user", "content": "hi"}]}).to_string(),
        ),
        (
            "model not a string",
            json!({"model": 42, "messages": []}).to_string(),
        ),
        ("JSON array", json!([{"model": MODEL}]).to_string()),
        ("JSON string", json!(MODEL).to_string()),
    ] {
        let r = post_json(&chat, body, &[]).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_openai_error(&r, 400, "invalid_request");
    }
    for path in ["/v1/completions", "/v1/embeddings", "/v1/responses"] {
        let r = post_json(&gw.at(path), json!({"input": "hello"}).to_string(), &[]).await;
        assert_openai_error(&r, 400, "invalid_request");
    }
    // None of these reached the upstream.
    assert!(mock.requests().iter().all(|r| r.method == "GET"));
    // And the gateway still routes good requests.
    assert_eq!(
        post_json(&chat, chat_body(MODEL, false), &[]).await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_within_the_timeout() {
    let mock = start_mock(MockConfig::openai("slow", [MODEL])).await;
    let gw = Gateway::start(&config(
        "timeout_secs: 1\n",
        &[endpoint(&mock.url(), "slow", SECRET)],
    ))
    .await;

    for (what, body) in [
        ("small body", chat_body(MODEL, false)),
        ("body over 64 KiB", large_chat_body(MODEL)),
    ] {
        let started = Instant::now();
        let r = post_json(
            &gw.at("/v1/chat/completions"),
            body,
            &[("x-mock-delay-ms", "3000")],
        )
        .await;
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{what}: {}", r.text());
        assert_openai_error(&r, 504, "upstream_timeout");
        assert!(
            took < Duration::from_millis(2500),
            "{what}: 504 took {took:?}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "{what}: 504 after only {took:?}"
        );
        assert!(!r.text().contains(SECRET));
    }
    assert_eq!(get(&gw.at("/health")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_endpoint_down_is_502() {
    let up = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config(
        "timeout_secs: 5\n",
        &[endpoint(&up.url(), "up", SECRET)],
    ))
    .await;
    up.shutdown().await;

    for (what, body) in [
        ("small body", chat_body(MODEL, false)),
        ("body over 64 KiB", large_chat_body(MODEL)),
    ] {
        let started = Instant::now();
        let r = post_json(&gw.at("/v1/chat/completions"), body, &[]).await;
        assert_openai_error(&r, 502, "upstream_error");
        assert!(!r.text().contains(SECRET), "{what}: {}", r.text());
        assert!(started.elapsed() < Duration::from_secs(3), "{what}");
    }
    assert_eq!(get(&gw.at("/health")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_routes_and_unknown_paths() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config("", &[endpoint(&mock.url(), "up", "sk-up")])).await;
    let client = Client::new();

    let r = get(&gw.at("/health")).await;
    assert_eq!(r.status, 200);
    let r = get(&gw.at("/ready")).await;
    assert_eq!(r.status, 200);

    for path in ["/", "/admin", "/v2/chat/completions", "/v1", "/healthz"] {
        let r = get(&gw.at(path)).await;
        assert_openai_error(&r, 404, "not_found");
        let r = client
            .request(
                "POST",
                &gw.at(path),
                &[],
                ReqBody::full(chat_body(MODEL, false)),
            )
            .await;
        assert_openai_error(&r, 404, "not_found");
    }
    for (method, path) in [
        ("POST", "/v1/models"),
        ("DELETE", "/v1/models"),
        ("PUT", "/v1/endpoints"),
        ("POST", "/health"),
        ("POST", "/ready"),
    ] {
        let r = client
            .request(
                method,
                &gw.at(path),
                &[("content-type", "application/json")],
                ReqBody::full("{}"),
            )
            .await;
        assert_openai_error(&r, 405, "method_not_allowed");
    }
    // Nothing of that was proxied.
    assert!(mock.requests().iter().all(|r| r.path == "/v1/models"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_key_never_in_answers_or_logs() {
    let alive = start_mock(MockConfig::openai("alive", [MODEL])).await;
    let doomed = start_mock(MockConfig::openai("doomed", ["doomed-model"])).await;
    let gw = Gateway::builder()
        .config(config(
            "timeout_secs: 1\n",
            &[
                endpoint(&alive.url(), "alive", SECRET),
                endpoint(&doomed.url(), "doomed", SECRET),
            ],
        ))
        .env("RUST_LOG", "debug")
        .start()
        .await;
    doomed.shutdown().await;
    let chat = gw.at("/v1/chat/completions");
    let mut answers: Vec<Resp> = Vec::new();

    let r = get(&gw.at("/v1/endpoints")).await;
    assert_eq!(r.status, 200);
    let eps = r.json();
    assert!(
        eps["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["has_api_key"] == true),
        "{eps}"
    );
    answers.push(r);
    answers.push(get(&gw.at("/v1/models")).await);

    // 502 (only endpoint of the model is down), small and large body.
    for body in [
        chat_body("doomed-model", false),
        large_chat_body("doomed-model"),
    ] {
        let r = post_json(&chat, body, &[]).await;
        assert_openai_error(&r, 502, "upstream_error");
        answers.push(r);
    }
    // 504 (slow upstream), small and large body.
    for body in [chat_body(MODEL, false), large_chat_body(MODEL)] {
        let r = post_json(&chat, body, &[("x-mock-delay-ms", "2000")]).await;
        assert_openai_error(&r, 504, "upstream_timeout");
        answers.push(r);
    }
    // The upstream's own error answer, passed through.
    let r = post_json(&chat, chat_body(MODEL, false), &[("x-mock-status", "401")]).await;
    assert_eq!(r.status, 401);
    answers.push(r);
    // Gateway 4xx answers.
    answers.push(post_json(&chat, "{", &[]).await);
    answers.push(post_json(&chat, chat_body("unknown", false), &[]).await);
    answers.push(get(&gw.at("/nope")).await);
    // A successful one, with the client's own key.
    let r = post_json(
        &chat,
        chat_body(MODEL, false),
        &[("authorization", "Bearer client-key")],
    )
    .await;
    assert_eq!(r.status, 200);
    answers.push(r);

    for r in &answers {
        assert!(!r.text().contains(SECRET), "key in body: {}", r.text());
        assert!(!r.text().contains("SECRET"), "key in body: {}", r.text());
        for (k, v) in &r.headers {
            assert!(
                !String::from_utf8_lossy(v.as_bytes()).contains("SECRET"),
                "key in header {k}"
            );
        }
    }
    // The upstream did get the key (so the test proves something).
    assert!(alive
        .requests()
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {SECRET}"))));

    // Logs are written as things happen; the 504/502 ones are there by now.
    let logs = gw.logs();
    assert!(!logs.is_empty(), "no gateway log at all");
    if let Some(line) = logs.lines().find(|l| l.contains("SECRET")) {
        panic!("upstream key in the gateway log: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_input_is_4xx_and_the_gateway_survives() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let mut gw = Gateway::start(&config(
        "timeout_secs: 5\n",
        &[endpoint(&mock.url(), "up", "sk-up")],
    ))
    .await;
    let chat = gw.at("/v1/chat/completions");
    let client = Client::new();

    // A 10 KB model name: 404, and the echo in the message is bounded.
    let huge_model = "m".repeat(10 * 1024);
    let r = post_json(&chat, chat_body(&huge_model, false), &[]).await;
    let e = assert_openai_error(&r, 404, "model_not_found");
    assert!(
        e["message"].as_str().unwrap().len() < 2048,
        "{}",
        r.text().len()
    );

    // Invalid UTF-8: in the model, and elsewhere in the body.
    let mut bad_model = br#"{"model":""#.to_vec();
    bad_model.extend_from_slice(&[0xff, 0xfe, 0x80]);
    bad_model.extend_from_slice(br#"","messages":[]}"#);
    let r = post_json(&chat, bad_model, &[]).await;
    assert_openai_error(&r, 400, "invalid_request");
    let mut bad_content =
        format!(r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":""#).into_bytes();
    bad_content.extend_from_slice(&[0xc3, 0x28, 0xff]);
    bad_content.extend_from_slice(br#""}]}"#);
    let r = post_json(&chat, bad_content, &[]).await;
    assert!(
        (400..500).contains(&r.status),
        "invalid UTF-8 content: {} {}",
        r.status,
        r.text()
    );

    // A long header (64 KiB): answered (the header is not the gateway's business).
    let long_value = "v".repeat(64 * 1024);
    let r = client
        .request(
            "POST",
            &chat,
            &[
                ("content-type", "application/json"),
                ("x-long", &long_value),
            ],
            ReqBody::full(chat_body(MODEL, false)),
        )
        .await;
    assert!(
        r.status == 200 || (400..500).contains(&r.status),
        "{}",
        r.status
    );

    // Absurd headers: over Pingora's header limits (1 MiB; 256 headers) → 400.
    let mut too_many = format!("GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n", gw.port);
    for i in 0..300 {
        too_many.push_str(&format!("x-h{i}: {i}\r\n"));
    }
    too_many.push_str("\r\n");
    let status = raw_status(gw.port, too_many.as_bytes()).await;
    assert_eq!(status, Ok(400), "300 headers");

    let mut huge_header = format!(
        "GET /v1/models HTTP/1.1\r\nhost: 127.0.0.1:{}\r\nx-huge: ",
        gw.port
    )
    .into_bytes();
    huge_header.extend(std::iter::repeat_n(b'a', 1_100_000));
    huge_header.extend_from_slice(b"\r\n\r\n");
    let status = raw_status(gw.port, &huge_header).await;
    assert_eq!(status, Ok(400), "1.1 MB header");

    // Long paths (sent raw: the test client's URI type stops at 64 KiB): outside /v1 (a local
    // 404 or a 400 for the request line) and under /v1 (proxied; the upstream decides).
    for (what, path, len) in [
        ("60 KB local path", "/", 60 * 1024),
        ("60 KB /v1 path", "/v1/", 60 * 1024),
        ("200 KB local path", "/", 200 * 1024),
        ("200 KB /v1 path", "/v1/", 200 * 1024),
    ] {
        let req = format!(
            "GET {path}{} HTTP/1.1\r\nhost: 127.0.0.1:{}\r\n\r\n",
            "p".repeat(len),
            gw.port
        );
        let status = raw_status(gw.port, req.as_bytes()).await;
        assert!(matches!(status, Ok(400..=499)), "{what}: {status:?}");
    }

    // Garbage instead of HTTP.
    let status = raw_status(gw.port, b"\x16\x03\x01\x00\xff garbage\r\n\r\n").await;
    assert!(
        matches!(status, Ok(400..=499)),
        "garbage request line: {status:?}"
    );

    // Still alive and routing.
    assert!(gw.try_wait().is_none(), "gateway exited");
    assert_eq!(get(&gw.at("/health")).await.status, 200);
    assert_eq!(
        post_json(&chat, chat_body(MODEL, false), &[]).await.status,
        200
    );
    let logs = gw.logs();
    assert!(!logs.contains("panicked"), "gateway panicked:\n{logs}");
}

/// Gateway 4xx answers keep the client's connection usable: the next request on it is served.
/// Only an answer that did not read the request body (a local route's 404/405) may close the
/// connection, and then it says so (`Connection: close`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_connection_survives_4xx_answers() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config("", &[endpoint(&mock.url(), "up", "sk-up")])).await;
    let client = Client::new();
    let mut conn = client.connect(&gw.url).await.unwrap();
    let large = large_chat_body(MODEL);
    // (method, path, body, status, may close the connection)
    let steps = [
        ("POST", "/v1/chat/completions", "{".to_string(), 400, false),
        (
            "POST",
            "/v1/chat/completions",
            chat_body(MODEL, false),
            200,
            false,
        ),
        (
            "POST",
            "/v1/chat/completions",
            chat_body("unknown", false),
            404,
            false,
        ),
        ("GET", "/nope", String::new(), 404, false),
        ("POST", "/v1/chat/completions", large, 200, false),
        (
            "POST",
            "/v1/embeddings",
            json!({"input": "x"}).to_string(),
            400,
            false,
        ),
        (
            "POST",
            "/v1/chat/completions",
            large_chat_body("unknown"),
            404,
            false,
        ),
        ("POST", "/v1/models", "{}".to_string(), 405, true),
        ("GET", "/v1/models", String::new(), 200, false),
        ("POST", "/nope", "{}".to_string(), 404, true),
        (
            "POST",
            "/v1/chat/completions",
            chat_body(MODEL, false),
            200,
            false,
        ),
    ];
    for (i, (method, path, body, want, may_close)) in steps.into_iter().enumerate() {
        let req_body = if body.is_empty() {
            ReqBody::empty()
        } else {
            ReqBody::full(body)
        };
        let r = conn
            .send(
                method,
                path,
                &[("content-type", "application/json")],
                req_body,
            )
            .await
            .unwrap_or_else(|e| panic!("step {i} ({method} {path}): {e}"));
        assert_eq!(r.status, want, "step {i} ({method} {path}): {}", r.text());
        let announced_close = r
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
        if announced_close {
            assert!(
                may_close,
                "step {i} ({method} {path}) closed the connection"
            );
            conn = client.connect(&gw.url).await.unwrap();
        }
    }
    assert!(!conn.is_closed());
}
