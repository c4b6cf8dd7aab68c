//! The retry decision by failure class, one test per row of README's table: mock upstreams
//! misbehave the way real servers do, and each test checks what the client sees (status,
//! body, which model answered), the attempts each deployment got, and the timing.

mod common;

use std::time::{Duration, Instant};

use ai_proxy_mock::Fault;
use common::*;
use serde_json::{json, Value};

/// A gateway in front of these mocks (round robin, so the first deployment tried is known),
/// with `extra` YAML at the top level (fallbacks, limits).
async fn gateway(mocks: &[&MockServer], extra: &str) -> Gateway {
    let mut yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nconnect_timeout_secs: 1\n\
         discovery_interval_secs: 60\nbalancing: {{policy: round_robin}}\n{extra}\nendpoints:\n"
    );
    for m in mocks {
        yaml.push_str(&format!("  - url: {}\n    name: {}\n", m.url(), m.name()));
    }
    let gw = Gateway::start(&yaml).await;
    for m in mocks {
        wait_discovered(&gw, m.name()).await;
    }
    gw
}

fn posts(mock: &MockServer) -> usize {
    inference_requests(mock).len()
}

fn served_by(r: &Resp) -> &str {
    r.header("x-ai-proxy-endpoint").unwrap_or("")
}

fn status(status: u16, retry_after: Option<u64>) -> Fault {
    Fault::Status {
        status,
        retry_after,
    }
}

/// An OpenAI-style error body in an upstream's own wording.
fn error_body(message: &str, code: &str) -> String {
    json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}})
        .to_string()
}

/// vLLM's answer to a prompt over the context window.
fn context_window_400() -> Fault {
    Fault::Reply {
        status: 400,
        body: error_body(
            "This model's maximum context length is 4096 tokens. However, you requested 9000 tokens (8000 in the messages, 1000 in the completion).",
            "context_length_exceeded",
        ),
    }
}

fn content_filter_400() -> Fault {
    Fault::Reply {
        status: 400,
        body: error_body(
            "Your request was rejected as a result of our safety system.",
            "content_policy_violation",
        ),
    }
}

async fn chat(gw: &Gateway, model: &str) -> Resp {
    post_chat(gw, model, &[]).await
}

/// `ai_proxy_retries_total` for this model, class and outcome.
async fn retries_metric(gw: &Gateway, model: &str, class: &str, outcome: &str) -> f64 {
    let key = format!(
        "ai_proxy_retries_total{{class=\"{class}\",model=\"{model}\",outcome=\"{outcome}\"}}"
    );
    settled_scrape(gw).await.get(&key).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_on_the_only_deployment_is_waited_for() {
    let only = start_mock(MockConfig::openai("only", ["m"])).await;
    let gw = gateway(&[&only], "").await;
    only.set_fault_times(Some(status(429, Some(2))), 1);

    let started = Instant::now();
    let r = chat(&gw, "m").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        took >= Duration::from_secs(2),
        "waited its Retry-After: {took:?}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert_eq!(posts(&only), 2);
    assert_eq!(retries_metric(&gw, "m", "429", "recovered").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_429_moves_to_the_fallback_or_reaches_the_client_with_its_retry_after() {
    let limited = start_mock(MockConfig::openai("limited", ["m", "solo"])).await;
    let fallback = start_mock(MockConfig::openai("fallback", ["f"])).await;
    let gw = gateway(&[&limited, &fallback], "fallbacks: {m: [f]}").await;
    // Longer than max_retry_wait_secs (5): not worth waiting for.
    limited.set_fault(Some(status(429, Some(30))));

    let started = Instant::now();
    let r = chat(&gw, "m").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "f");
    assert_eq!(served_by(&r), "fallback");
    assert!(started.elapsed() < Duration::from_secs(2), "no wait");
    assert_eq!(posts(&limited), 1);

    // No fallback: the 429 goes to the client, its Retry-After intact, after one attempt.
    limited.clear_records();
    let r = chat(&gw, "solo").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("30"));
    assert_eq!(r.json()["error"]["code"], "mock_fault");
    assert_eq!(posts(&limited), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_once_is_retried_in_place_after_a_short_backoff() {
    let only = start_mock(MockConfig::openai("only", ["m"])).await;
    let gw = gateway(&[&only], "").await;
    only.set_fault_times(Some(status(500, None)), 1);

    let started = Instant::now();
    let r = chat(&gw, "m").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(posts(&only), 2);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100), "backed off: {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");

    // Over Pingora's 64 KiB retry buffer too (the large-body path replays it).
    only.clear_records();
    only.set_fault_times(Some(status(500, None)), 1);
    let large =
        json!({"model": "m", "messages": [{"role": "user", "content": "y".repeat(100 * 1024)}]});
    let r = post_json(&gw.at("/v1/chat/completions"), large.to_string(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(posts(&only), 2);
    assert!(inference_requests(&only)[1].body.len() > 100 * 1024);

    // A persistent 500: one retry in place, then the 500 itself.
    only.clear_records();
    only.set_fault(Some(status(500, None)));
    let r = chat(&gw, "m").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["code"], "mock_fault");
    assert_eq!(posts(&only), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_503_moves_to_another_deployment_then_the_fallback() {
    let a = start_mock(MockConfig::openai("a", ["m"])).await;
    let b = start_mock(MockConfig::openai("b", ["m"])).await;
    let fallback = start_mock(MockConfig::openai("fallback", ["f"])).await;
    let gw = gateway(&[&a, &b, &fallback], "fallbacks: {m: [f]}").await;
    a.set_fault(Some(status(503, None)));
    b.set_fault(Some(status(503, None)));

    let r = chat(&gw, "m").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "f");
    assert_eq!(served_by(&r), "fallback");
    assert_eq!((posts(&a), posts(&b), posts(&fallback)), (1, 1, 1));
    assert_eq!(retries_metric(&gw, "m", "503", "recovered").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_the_head_is_retried_on_another_deployment() {
    let reset = start_mock(MockConfig::openai("reset", ["m"])).await;
    let good = start_mock(MockConfig::openai("good", ["m"])).await;
    let gw = gateway(&[&reset, &good], "").await;
    reset.set_fault(Some(Fault::ResetBeforeHead));

    for stream in [false, true] {
        reset.clear_records();
        good.clear_records();
        let r = post_json(&gw.at("/v1/chat/completions"), chat_body("m", stream), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(served_by(&r), "good");
        assert_eq!(posts(&good), 1);
        assert!(
            posts(&reset) <= 2,
            "a stale pooled connection may be retried once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_moves_to_the_fallback_within_the_first_byte_timeout() {
    let silent = start_mock(MockConfig::openai("silent", ["m"]).with_fault(Fault::Hang)).await;
    let fallback = start_mock(MockConfig::openai("fallback", ["f"])).await;
    let mut yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nfallbacks: {{m: [f]}}\n\
         endpoints:\n  - url: {}\n    name: silent\n    timeouts: {{first_byte_secs: 1}}\n",
        silent.url()
    );
    yaml.push_str(&format!(
        "  - url: {}\n    name: fallback\n",
        fallback.url()
    ));
    let gw = Gateway::start(&yaml).await;
    wait_discovered(&gw, "silent").await;
    wait_discovered(&gw, "fallback").await;

    let started = Instant::now();
    let r = chat(&gw, "m").await;
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "f");
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(posts(&silent), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_window_400_moves_to_the_bigger_model_or_passes_through_once() {
    let small = start_mock(MockConfig::openai("small", ["small", "other"])).await;
    let big = start_mock(MockConfig::openai("big", ["big"])).await;
    let gw = gateway(
        &[&small, &big],
        "context_window_fallbacks: {small: [big]}\nfallbacks: {small: [big]}",
    )
    .await;
    small.set_fault(Some(context_window_400()));

    for stream in [false, true] {
        small.clear_records();
        big.clear_records();
        let r = post_json(
            &gw.at("/v1/chat/completions"),
            chat_body("small", stream),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ai-proxy-model"), Some("big"));
        assert_eq!((posts(&small), posts(&big)), (1, 1));
        assert_eq!(inference_requests(&big)[0].json()["model"], "big");
    }
    assert_eq!(
        retries_metric(&gw, "small", "context_window", "recovered").await,
        2.0
    );

    // A model without context-window fallbacks: the 400 as the upstream worded it, once.
    small.clear_records();
    big.clear_records();
    let r = chat(&gw, "other").await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "context_length_exceeded");
    assert_eq!(posts(&small), 1);
    assert_eq!(posts(&big), 0, "the plain fallbacks are not for a 400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_filter_400_passes_through_with_its_reason_after_one_attempt() {
    let a = start_mock(MockConfig::openai("a", ["m", "small"])).await;
    let b = start_mock(MockConfig::openai("b", ["m", "small", "big"])).await;
    let gw = gateway(
        &[&a, &b],
        "fallbacks: {m: [big]}\ncontext_window_fallbacks: {small: [big]}",
    )
    .await;
    a.set_fault(Some(content_filter_400()));
    b.set_fault(Some(content_filter_400()));

    // `small` has its 400s read before the client sees them; `m` does not: both the same.
    for model in ["m", "small"] {
        for stream in [false, true] {
            a.clear_records();
            b.clear_records();
            let r = post_json(
                &gw.at("/v1/chat/completions"),
                chat_body(model, stream),
                &[],
            )
            .await;
            assert_eq!(r.status, 400, "{model}");
            let v: Value = r.json();
            assert_eq!(v["error"]["code"], "content_policy_violation", "{v}");
            assert!(v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("safety system"));
            assert_eq!(posts(&a) + posts(&b), 1, "{model}: exactly one attempt");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_retried_before_their_first_byte_and_never_after() {
    let only = start_mock(MockConfig::openai("only", ["m"])).await;
    let fallback = start_mock(MockConfig::openai("fallback", ["f"])).await;
    let gw = gateway(&[&only, &fallback], "fallbacks: {m: [f]}").await;

    // Before the first byte, each class gets what it gets without a stream. (A reset on a
    // reused connection looks like a stale pooled one: retried once on a fresh connection,
    // which may be `only` again.)
    for (fault, served, attempts) in [
        (status(500, None), Some("only"), Some((2, 0))),
        (status(429, Some(1)), Some("only"), Some((2, 0))),
        (status(503, None), Some("fallback"), Some((1, 1))),
        (Fault::ResetBeforeHead, None, None),
    ] {
        only.clear_records();
        fallback.clear_records();
        only.set_fault_times(Some(fault.clone()), 1);
        let mut s = post_stream(&gw.at("/v1/chat/completions"), chat_body("m", true), &[]).await;
        assert_eq!(s.status, 200, "{fault:?}");
        if served.is_some() {
            assert_eq!(s.header("x-ai-proxy-endpoint"), served, "{fault:?}");
        }
        let payloads = sse_data(&s.read_to_end().await);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "{fault:?}"
        );
        let sent = (posts(&only), posts(&fallback));
        match attempts {
            Some(attempts) => assert_eq!(sent, attempts, "{fault:?}"),
            None => assert!(sent.0 + sent.1 <= 2, "{fault:?}: {sent:?}"),
        }
        // The ejections of the faults above must not hide `only` from the next case.
        only.set_fault(None);
        poll_until(Duration::from_secs(10), || async {
            chat(&gw, "m").await.header("x-ai-proxy-endpoint") == Some("only")
        })
        .await
        .expect("`only` serves again");
    }

    // After the first byte: the cut stream ends with an error event; the fallback is not asked.
    only.clear_records();
    fallback.clear_records();
    only.set_fault(Some(Fault::ResetAfter { events: 2 }));
    let mut s = post_stream(&gw.at("/v1/chat/completions"), chat_body("m", true), &[]).await;
    assert_eq!(s.status, 200);
    let payloads = sse_data(&s.read_to_end().await);
    assert!(!payloads.iter().any(|p| p == "[DONE]"), "{payloads:?}");
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    assert_eq!(
        (posts(&only), posts(&fallback)),
        (1, 0),
        "never retried once bytes went out"
    );
}

/// A model down for 6 s under one request a second: every request is served (by the fallback
/// while it is down), and the primary serves again within one probe interval of coming back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_model_loses_no_request_and_serves_again_within_a_probe_interval() {
    let primary = start_mock(MockConfig::openai("primary", ["m"])).await;
    let fallback = start_mock(MockConfig::openai("fallback", ["f"])).await;
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\n\
         discovery_interval_secs: 1\nfallbacks: {{m: [f]}}\nendpoints:\n  \
         - {{url: {}, name: primary}}\n  - {{url: {}, name: fallback}}\n",
        primary.url(),
        fallback.url()
    );
    let gw = Gateway::start(&yaml).await;
    wait_discovered(&gw, "primary").await;
    wait_discovered(&gw, "fallback").await;

    let started = Instant::now();
    primary.set_fault(Some(status(503, None)));
    let mut recovered_at = None;
    let mut back_at = None;
    // Bounded: 16 requests, one a second.
    for i in 0..16u64 {
        let due = started + Duration::from_secs(i);
        tokio::time::sleep_until(due.into()).await;
        if recovered_at.is_none() && started.elapsed() >= Duration::from_secs(6) {
            primary.set_fault(None);
            recovered_at = Some(Instant::now());
        }
        let r = chat(&gw, "m").await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        if served_by(&r) == "primary" && recovered_at.is_some() && back_at.is_none() {
            back_at = Some(Instant::now());
        }
    }
    let back = back_at
        .expect("the primary served again")
        .duration_since(recovered_at.unwrap());
    // One probe interval (1 s), plus the next request's turn (1 s).
    assert!(back <= Duration::from_millis(2500), "back after {back:?}");
}

/// The access log names the classes that were retried, in order, and counts every attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_lists_the_retried_classes() {
    let only = start_mock(MockConfig::openai("only", ["m"])).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = gateway(&[&only], &format!("access_log: {}", log.display())).await;
    // A 429 on the only deployment of `m`, waited for and retried in place.
    only.set_fault_times(Some(status(429, Some(1))), 1);
    let r = post_json(
        &gw.at("/v1/chat/completions"),
        chat_body("m", false),
        &[("x-request-id", "retried-1")],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let line = poll_until(Duration::from_secs(5), || async {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains("retried-1"))
    })
    .await;
    assert!(line.is_some(), "the request's line was written");
    let text = std::fs::read_to_string(&log).unwrap();
    let entry: Value = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["request_id"] == "retried-1")
        .unwrap();
    assert_eq!(entry["retries"], json!(["429"]), "{entry}");
    assert_eq!(entry["attempts"], 2, "{entry}");
    assert_eq!(entry["status"], 200);
}
