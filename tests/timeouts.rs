//! Per-endpoint timeouts: time to first byte, idle gap between chunks and total, each a 504
//! `upstream_timeout` before anything reached the client, or the SSE error event after.

mod common;

use std::time::{Duration, Instant};

use ai_proxy_mock::Fault;
use common::*;
use serde_json::Value;

/// A gateway whose endpoints carry these `timeouts:` mappings (global read timeout 10 s), round
/// robin so which endpoint a request tries first is known.
async fn gateway(endpoints: &[(&MockServer, &str)]) -> Gateway {
    let mut yaml =
        "listen: \"127.0.0.1:{port}\"\nthreads: 2\ntimeout_secs: 10\nbalancing: {policy: round_robin}\nendpoints:\n".to_string();
    for (m, timeouts) in endpoints {
        yaml.push_str(&format!(
            "  - url: {}\n    name: {}\n    timeouts: {timeouts}\n",
            m.url(),
            m.name()
        ));
    }
    let gw = Gateway::start(&yaml).await;
    for (m, _) in endpoints {
        wait_discovered(&gw, m.name()).await;
    }
    gw
}

/// Stream `x-mock-events` events `interval_ms` apart; the `data:` payloads and the time taken.
async fn stream(gw: &Gateway, events: &str, interval_ms: &str) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        chat_body("m", true),
        &[
            ("x-mock-events", events),
            ("x-mock-interval-ms", interval_ms),
        ],
    )
    .await;
    assert_eq!(s.status, 200);
    let body = tokio::time::timeout(Duration::from_secs(15), s.read_to_end())
        .await
        .expect("the stream ends");
    (sse_data(&body), started.elapsed())
}

fn error_event(payloads: &[String]) -> Value {
    assert!(!payloads.iter().any(|p| p == "[DONE]"), "{payloads:?}");
    let last: Value = serde_json::from_str(payloads.last().expect("events")).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_byte_deadline_shorter_than_the_idle_gap() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = gateway(&[(&mock, "{first_byte_secs: 1, idle_secs: 4}")]).await;

    let started = Instant::now();
    let r = post_chat(&gw, "m", &[("x-mock-delay-ms", "2500")]).await;
    let e = assert_openai_error(&r, 504, "upstream_timeout");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("no response head within 1.0 s"),
        "{e}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2000),
        "{took:?}"
    );

    // Gaps of 2 s are within the 4 s idle limit: the stream completes.
    let (payloads, _) = stream(&gw, "3", "2000").await;
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_gap_shorter_than_the_first_byte_deadline() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = gateway(&[(&mock, "{first_byte_secs: 4, idle_secs: 1}")]).await;

    // A head after 2 s is within the 4 s first-byte limit.
    let r = post_chat(&gw, "m", &[("x-mock-delay-ms", "2000")]).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A 2 s gap mid-stream is over the 1 s idle limit: cut with the error event.
    let (payloads, took) = stream(&gw, "3", "2000").await;
    let e = error_event(&payloads);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no data within 1.0 s"),
        "{e}"
    );
    assert!(
        (2..4).contains(&payloads.len()),
        "the events before the gap, then the error: {payloads:?}"
    );
    assert!(took < Duration::from_millis(1900), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_limit_cuts_a_long_stream() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = gateway(&[(&mock, "{total_secs: 1.5}")]).await;
    let (payloads, took) = stream(&gw, "20", "300").await;
    let e = error_event(&payloads);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not end within 1.5 s"),
        "{e}"
    );
    assert!(
        payloads.len() >= 3,
        "events came before the cut: {payloads:?}"
    );
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // A short answer is unaffected.
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_first_byte_deadline_fails_over() {
    let slow = start_mock(MockConfig::openai("slow", ["m"]).with_fault(Fault::Hang)).await;
    let fast = start_mock(MockConfig::openai("fast", ["m"])).await;
    let gw = gateway(&[
        (&slow, "{first_byte_secs: 1}"),
        (&fast, "{first_byte_secs: 1}"),
    ])
    .await;
    for i in 0..4 {
        let started = Instant::now();
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-ai-proxy-endpoint"), Some("fast"));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
    assert!((1..=3).contains(&inference_requests(&slow).len()));
}
