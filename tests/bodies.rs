//! Request bodies through the gateway: byte-identical upstream at 1 MiB (Content-Length, chunked,
//! `Expect: 100-continue`, streaming), around the 64 KiB boundary between the retry-buffer path
//! and the subrequest path, 413 over `max_body_bytes`, and large bodies replayed on a connect
//! failure.

mod common;

use bytes::Bytes;
use common::*;

const MODEL: &str = "body-model";

fn endpoint(url: &str, name: &str) -> String {
    format!("  - url: {url}\n    name: {name}\n    api_key: sk-{name}\n")
}

fn config(extra: &str, endpoints: &[String]) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nconnect_timeout_secs: 2\n{extra}endpoints:\n{}",
        endpoints.concat()
    )
}

/// A valid chat request of exactly `size` bytes (the prompt is padded to fit).
fn body_of_size(size: usize, stream: bool) -> Bytes {
    let head =
        format!(r#"{{"model":"{MODEL}","stream":{stream},"messages":[{{"role":"user","content":""#);
    let tail = r#""}]}"#;
    assert!(size >= head.len() + tail.len(), "size {size} too small");
    let fill = size - head.len() - tail.len();
    let mut b = Vec::with_capacity(size);
    b.extend_from_slice(head.as_bytes());
    // Varying content, so a shifted or repeated block cannot go unnoticed.
    b.extend((0..fill).map(|i| {
        if i % 97 == 96 {
            b' '
        } else {
            b'a' + ((i * 7 + i / 1000) % 26) as u8
        }
    }));
    b.extend_from_slice(tail.as_bytes());
    assert_eq!(b.len(), size);
    serde_json::from_slice::<serde_json::Value>(&b).expect("test body is JSON");
    Bytes::from(b)
}

fn chunks_of(body: &Bytes, n: usize) -> Vec<Bytes> {
    body.chunks(n).map(Bytes::copy_from_slice).collect()
}

fn assert_same_body(got: &Bytes, want: &Bytes, what: &str) {
    if got != want {
        let first_diff = got
            .iter()
            .zip(want.iter())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: upstream got {} bytes, sent {}; first difference at byte {first_diff}",
            got.len(),
            want.len()
        );
    }
}

/// How the client sends a body.
#[derive(Debug, Clone, Copy)]
enum Send {
    ContentLength,
    Chunked,
    ExpectContinue,
}

async fn send(gw: &Gateway, body: &Bytes, how: Send) -> Resp {
    let url = gw.at("/v1/chat/completions");
    let ct = ("content-type", "application/json");
    match how {
        Send::ContentLength => post_json(&url, body.clone(), &[]).await,
        Send::Chunked => {
            Client::new()
                .request(
                    "POST",
                    &url,
                    &[ct],
                    ReqBody::chunked(chunks_of(body, 16 * 1024)),
                )
                .await
        }
        Send::ExpectContinue => {
            Client::new()
                .request(
                    "POST",
                    &url,
                    &[ct, ("expect", "100-continue")],
                    ReqBody::full(body.clone()),
                )
                .await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_bodies_arrive_byte_identical() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config("", &[endpoint(&mock.url(), "up")])).await;

    for stream in [false, true] {
        let body = body_of_size(1 << 20, stream);
        for how in [Send::ContentLength, Send::Chunked, Send::ExpectContinue] {
            mock.clear_records();
            let r = send(&gw, &body, how).await;
            let what = format!("stream={stream} {how:?}");
            assert_eq!(r.status, 200, "{what}: {}", r.text());
            if stream {
                assert_eq!(
                    r.header("content-type"),
                    Some("text/event-stream"),
                    "{what}"
                );
                let data = sse_data(&r.body);
                assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{what}");
                assert_eq!(mock.streams()[0].sent, r.body.to_vec(), "{what}");
            } else {
                assert_eq!(r.json()["object"], "chat.completion", "{what}");
            }
            let recs = inference_requests(&mock);
            assert_eq!(recs.len(), 1, "{what}");
            assert_same_body(&recs[0].body, &body, &what);
            assert!(
                recs[0].header("expect").is_none(),
                "{what}: Expect forwarded upstream"
            );
            assert_eq!(recs[0].header("authorization"), Some("Bearer sk-up"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_around_64_kib_arrive_byte_identical() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config("", &[endpoint(&mock.url(), "up")])).await;

    for size in [64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1] {
        for stream in [false, true] {
            for how in [Send::ContentLength, Send::Chunked] {
                let body = body_of_size(size, stream);
                mock.clear_records();
                let r = send(&gw, &body, how).await;
                let what = format!("{size} bytes, stream={stream}, {how:?}");
                assert_eq!(r.status, 200, "{what}: {}", r.text());
                let recs = inference_requests(&mock);
                assert_eq!(recs.len(), 1, "{what}");
                assert_same_body(&recs[0].body, &body, &what);
                if let Send::ContentLength = how {
                    // Either framing is fine upstream, but a length must be the true one.
                    if let Some(cl) = recs[0].header("content-length") {
                        assert_eq!(cl, size.to_string(), "{what}");
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_bytes_is_413() {
    let mock = start_mock(MockConfig::openai("up", [MODEL])).await;
    let gw = Gateway::start(&config(
        "max_body_bytes: 100000\n",
        &[endpoint(&mock.url(), "up")],
    ))
    .await;

    // At the limit: fine.
    let at_limit = body_of_size(100_000, false);
    let r = post_json(&gw.at("/v1/chat/completions"), at_limit.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_same_body(
        &inference_requests(&mock)[0].body,
        &at_limit,
        "at the limit",
    );
    mock.clear_records();

    for size in [100_001, 300_000] {
        let body = body_of_size(size, false);
        for how in [Send::ContentLength, Send::Chunked] {
            let r = send(&gw, &body, how).await;
            assert_openai_error(&r, 413, "request_too_large");
            // A normal request right after succeeds.
            let ok = post_json(
                &gw.at("/v1/chat/completions"),
                body_of_size(1000, false),
                &[],
            )
            .await;
            assert_eq!(ok.status, 200, "after 413 ({size}, {how:?}): {}", ok.text());
        }
    }
    // Nothing over the limit reached the upstream.
    assert!(inference_requests(&mock)
        .iter()
        .all(|r| r.body.len() == 1000));
    assert_eq!(inference_requests(&mock).len(), 4);
    assert_eq!(get(&gw.at("/health")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_replayed_after_connect_failure() {
    let alive = start_mock(MockConfig::openai("alive", [MODEL])).await;
    let doomed = start_mock(MockConfig::openai("doomed", [MODEL])).await;
    let gw = Gateway::start(&config(
        "",
        &[
            endpoint(&doomed.url(), "doomed"),
            endpoint(&alive.url(), "alive"),
        ],
    ))
    .await;
    // Both serve the model after the first discovery round (the gateway is ready).
    let models = get(&gw.at("/v1/endpoints")).await.json();
    for e in models["data"].as_array().expect("endpoint list") {
        assert!(
            e["models"].as_array().unwrap().iter().any(|m| m == MODEL),
            "{e}"
        );
    }
    doomed.shutdown().await;

    for i in 0..10 {
        let stream = i % 2 == 1;
        let body = body_of_size(200 * 1024 + i, stream);
        alive.clear_records();
        let how = if i % 3 == 2 {
            Send::Chunked
        } else {
            Send::ContentLength
        };
        let r = send(&gw, &body, how).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-mock-name"), Some("alive"));
        if stream {
            assert_eq!(sse_data(&r.body).last().map(String::as_str), Some("[DONE]"));
        }
        let recs = inference_requests(&alive);
        assert_eq!(recs.len(), 1, "request {i}");
        assert_same_body(&recs[0].body, &body, &format!("request {i}"));
        assert_eq!(recs[0].header("authorization"), Some("Bearer sk-alive"));
    }
}
