//! `GET /metrics`: known traffic, then exact deltas of the counters and histogram counts.

mod common;

use std::time::Duration;

use ai_proxy_mock::Fault;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_traffic_gives_exact_deltas() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::over(&[&mock], "").await;

    let before = settled_scrape(&gw).await;
    for _ in 0..3 {
        assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(post_chat(&gw, "no-such-model", &[]).await.status, 404);
    }
    let mut s = post_stream(&gw.at("/v1/chat/completions"), chat_body("m", true), &[]).await;
    s.read_to_end().await;
    assert_eq!(get(&gw.at("/v1/models/unknown")).await.status, 404);
    let after = settled_scrape(&gw).await;

    assert_eq!(
        delta(&before, &after, &requests("m", "up", 200)),
        4.0,
        "3 JSON + 1 stream"
    );
    assert_eq!(
        delta(&before, &after, &requests("", "", 404)),
        3.0,
        "2 unknown models and 1 unknown /v1/models/{{id}}: never a model label"
    );
    assert!(!after.keys().any(|k| k.contains("no-such-model")));
    let d = |s: &str| delta(&before, &after, s);
    // Every counted request (the scrapes too) has its duration observed once.
    let counted = total_requests(&after) - total_requests(&before);
    assert_eq!(d("ai_proxy_request_duration_seconds_count"), counted);
    assert_eq!(
        d("ai_proxy_time_to_first_byte_seconds_count"),
        4.0,
        "proxied answers only"
    );
    assert_eq!(d("ai_proxy_overhead_seconds_count"), 4.0);
    assert_eq!(d("ai_proxy_upstream_attempts_total{endpoint=\"up\"}"), 4.0);

    assert_eq!(after["ai_proxy_endpoint_healthy{endpoint=\"up\"}"], 1.0);
    assert_eq!(after["ai_proxy_endpoint_models{endpoint=\"up\"}"], 1.0);
    let idle = || async { scrape(&gw).await["ai_proxy_inflight_requests{endpoint=\"up\"}"] == 0.0 };
    assert!(
        poll_until(Duration::from_secs(5), idle).await.is_some(),
        "in flight back to 0"
    );
    assert!(after["ai_proxy_discovery_runs_total{endpoint=\"up\",result=\"ok\"}"] >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_counts_both_attempts_and_the_failure() {
    let bad = start_mock(MockConfig::openai("bad", ["m"])).await;
    let good = start_mock(MockConfig::openai("good", ["m"])).await;
    let gw = Gateway::over(&[&bad, &good], "balancing: {policy: round_robin}").await;
    bad.set_fault(Some(Fault::Status {
        status: 503,
        retry_after: None,
    }));

    let before = settled_scrape(&gw).await;
    // Round robin: within two requests one goes to `bad` first and fails over.
    for _ in 0..2 {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ai-proxy-endpoint"), Some("good"));
    }
    let after = settled_scrape(&gw).await;
    let d = |s: &str| delta(&before, &after, s);
    assert_eq!(d(&requests("m", "good", 200)), 2.0);
    // Each attempt on `bad` failed with its 503 and was retried on `good`.
    let on_bad = d("ai_proxy_upstream_attempts_total{endpoint=\"bad\"}");
    assert!((1.0..=2.0).contains(&on_bad), "{on_bad}");
    assert_eq!(
        d("ai_proxy_upstream_attempts_total{endpoint=\"good\"}"),
        2.0
    );
    assert_eq!(
        d("ai_proxy_upstream_failures_total{endpoint=\"bad\",model=\"m\",reason=\"503\"}"),
        on_bad
    );
    assert_eq!(d("ai_proxy_time_to_first_byte_seconds_count"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_be_turned_off() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::over(&[&mock], "metrics: false").await;
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    let r = get(&gw.at("/metrics")).await;
    assert_openai_error(&r, 404, "not_found");
}
