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

/// `in_flight` of the only endpoint in `/v1/endpoints`.
async fn in_flight(gw: &Gateway) -> u64 {
    endpoints(gw).await[0]["in_flight"]
        .as_u64()
        .expect("in_flight is a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_lasts_until_each_response_ends() {
    let mock = start_mock(MockConfig::openai("slow", ["m"])).await;
    let gw = Gateway::start(&format!(
        "listen: \"127.0.0.1:{{port}}\"\nendpoints:\n  - url: {}\n",
        mock.url()
    ))
    .await;
    assert_eq!(in_flight(&gw).await, 0);
    let url = gw.at("/v1/chat/completions");
    // Two small bodies and one over 64 KiB (the subrequest path), all answered after 1.5 s.
    let bodies = [
        chat_body("m", false),
        chat_body("m", false),
        chat_body_of_size("m", 100 * 1024),
    ];
    let requests: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let url = url.clone();
            tokio::spawn(async move { post_json(&url, b, &[("x-mock-delay-ms", "1500")]).await })
        })
        .collect();
    let all_in = poll_until(Duration::from_secs(3), || async {
        in_flight(&gw).await == 3
    })
    .await;
    assert!(
        all_in.is_some(),
        "in_flight never reached 3: {}",
        in_flight(&gw).await
    );
    for r in requests {
        assert_eq!(r.await.expect("request task").status, 200);
    }
    let drained = poll_until(Duration::from_secs(2), || async {
        in_flight(&gw).await == 0
    })
    .await;
    assert!(
        drained.is_some(),
        "in_flight stuck at {}",
        in_flight(&gw).await
    );

    // A client that leaves mid-wait ends its count too.
    let mut leaving = Box::pin(post_json(
        &url,
        chat_body("m", false),
        &[("x-mock-delay-ms", "10000")],
    ));
    let counted = poll_until(Duration::from_secs(3), || async {
        in_flight(&gw).await == 1
    });
    tokio::select! {
        r = &mut leaving => panic!("answered before the delay: {}", r.status),
        c = counted => assert!(c.is_some(), "the leaving request was never counted"),
    }
    drop(leaving);
    let ended = poll_until(Duration::from_secs(1), || async {
        in_flight(&gw).await == 0
    })
    .await;
    assert!(
        ended.is_some(),
        "in_flight stuck at {} after the client left",
        in_flight(&gw).await
    );
}
