//! A client that goes away while the upstream is still working: the upstream request is closed
//! too, within a second, whatever the body size (bodies over 64 KiB take another internal path).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// A non-streaming chat body of about `size` bytes, `model` last.
fn chat_body_of_size(model: &str, size: usize) -> String {
    json!({
        "messages": [{"role": "user", "content": "x".repeat(size)}],
        "model": model,
    })
    .to_string()
}

async fn client_leaves_while_upstream_thinks(body_size: usize) {
    let mock = start_mock(MockConfig::openai("slow", ["m"])).await;
    let gw = Gateway::start(&format!(
        "listen: \"127.0.0.1:{{port}}\"\nendpoints:\n  - url: {}\n",
        mock.url()
    ))
    .await;
    let url = gw.at("/v1/chat/completions");
    let body = chat_body_of_size("m", body_size);
    // The mock answers after 10 s; the client gives up once the request has reached it.
    let mut request = Box::pin(post_json(&url, body, &[("x-mock-delay-ms", "10000")]));
    let arrived = poll_until(Duration::from_secs(5), || async {
        !inference_requests(&mock).is_empty()
    });
    tokio::select! {
        r = &mut request => panic!("answered before the delay: {}", r.status),
        waited = arrived => assert!(waited.is_some(), "the request never reached the mock"),
    }
    drop(request); // closes the client's connection
    let left_at = Instant::now();
    let noticed = poll_until(Duration::from_secs(3), || async {
        !mock.abandoned().is_empty()
    })
    .await
    .expect("the mock never saw the upstream request closed");
    let closed_after = mock.abandoned()[0].saturating_duration_since(left_at);
    assert!(
        closed_after < Duration::from_secs(1) && noticed < Duration::from_secs(1),
        "upstream closed {closed_after:?} after the client left"
    );
    // The gateway keeps serving.
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_closes_the_upstream_small_body() {
    client_leaves_while_upstream_thinks(1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_closes_the_upstream_large_body() {
    client_leaves_while_upstream_thinks(200 * 1024).await;
}
