//! Fault injection: mock upstreams that refuse, hang, answer 5xx, 429 or an OCF `ERROR:`, or
//! cut a stream, and what the client sees, how many attempts were made, and where.

mod common;

use std::time::{Duration, Instant};

use ai_proxy_mock::Fault;
use common::*;
use serde_json::Value;

/// A gateway on 127.0.0.1 with these `(name, url, type)` endpoints. Discovery (the active
/// probe) runs every `probe_secs`; upstream reads time out after `timeout_secs`. Round robin,
/// so which endpoint a request tries first is known.
fn config(endpoints: &[(&str, String, &str)], probe_secs: u64, timeout_secs: u64) -> String {
    let mut s = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: {timeout_secs}\n\
         connect_timeout_secs: 1\ndiscovery_interval_secs: {probe_secs}\n\
         balancing: {{policy: round_robin}}\nendpoints:\n"
    );
    for (name, url, kind) in endpoints {
        s.push_str(&format!(
            "  - url: {url}\n    name: {name}\n    type: {kind}\n"
        ));
    }
    s
}

/// A gateway in front of these mocks (all openai), probing rarely unless a test says so.
async fn gateway(mocks: &[&MockServer], probe_secs: u64, timeout_secs: u64) -> Gateway {
    let eps: Vec<(&str, String, &str)> = mocks
        .iter()
        .map(|m| (m.name(), m.url(), m.kind().as_str()))
        .collect();
    let gw = Gateway::start(&config(&eps, probe_secs, timeout_secs)).await;
    for m in mocks {
        wait_discovered(&gw, m.name()).await;
    }
    gw
}

/// A mock serving `model` that answers every inference request with `status`.
async fn failing_with(name: &str, model: &str, status: u16) -> MockServer {
    let fault = Fault::Status {
        status,
        retry_after: None,
    };
    start_mock(MockConfig::openai(name, [model]).with_fault(fault)).await
}

fn posts(mock: &MockServer) -> usize {
    inference_requests(mock).len()
}

/// The endpoint that served a response, from the gateway's response header.
fn served_by(r: &Resp) -> &str {
    r.header("x-ai-proxy-endpoint").unwrap_or("")
}

/// The health of the (one) model endpoint `name` serves: its deployment's, which a model's
/// failures eject while the address stays in service.
async fn health(gw: &Gateway, name: &str) -> Value {
    let ep = endpoint_named(gw, name).await;
    ep["deployments"][0]["health"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_503_fails_over_and_ejects_the_endpoint() {
    let bad = failing_with("bad", "shared", 503).await;
    let good = start_mock(MockConfig::openai("good", ["shared"])).await;
    let gw = gateway(&[&bad, &good], 60, 10).await;

    for i in 0..12 {
        let r = post_chat(&gw, "shared", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(served_by(&r), "good", "request {i}");
        assert_eq!(r.json()["object"], "chat.completion");
    }
    // The default threshold is 3 consecutive failures; then the cooldown keeps it out.
    assert_eq!(
        posts(&bad),
        3,
        "the failing endpoint stops getting traffic once ejected"
    );
    assert_eq!(
        posts(&good),
        12,
        "every request was answered by the good endpoint"
    );
    let h = health(&gw, "bad").await;
    assert_eq!(h["status"], "ejected", "{h}");
    let address = endpoint_named(&gw, "bad").await["health"].clone();
    assert_eq!(
        address["status"], "healthy",
        "a 503 is the model's, not the address's"
    );
    assert_eq!(health(&gw, "good").await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_429_honours_retry_after() {
    let busy = start_mock(
        MockConfig::openai("busy", ["shared"]).with_fault(Fault::Status {
            status: 429,
            retry_after: Some(30),
        }),
    )
    .await;
    let free = start_mock(MockConfig::openai("free", ["shared"])).await;
    let gw = gateway(&[&busy, &free], 60, 10).await;

    for i in 0..6 {
        let r = post_chat(&gw, "shared", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(served_by(&r), "free");
    }
    assert_eq!(
        posts(&busy),
        1,
        "no traffic before the time Retry-After named"
    );
    let h = health(&gw, "busy").await;
    assert_eq!(h["status"], "rate_limited", "{h}");
    assert!(h["retry_in_ms"].as_u64().unwrap() > 20_000, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_endpoints_answer_passes_through_when_all_fail() {
    let a = failing_with("a", "shared", 503).await;
    let b = failing_with("b", "shared", 503).await;
    let gw = gateway(&[&a, &b], 60, 10).await;

    let r = post_chat(&gw, "shared", &[]).await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.json()["error"].is_object(),
        "the upstream's own error body"
    );
    assert_eq!(posts(&a) + posts(&b), 2, "one attempt on each endpoint");
    assert_eq!((posts(&a), posts(&b)), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_pass_through_after_exactly_one_attempt() {
    let a = start_mock(MockConfig::openai("a", ["shared"])).await;
    let b = start_mock(MockConfig::openai("b", ["shared"])).await;
    let gw = gateway(&[&a, &b], 60, 10).await;

    for status in ["400", "401", "403", "404", "413", "422"] {
        let before = posts(&a) + posts(&b);
        let r = post_chat(&gw, "shared", &[("x-mock-status", status)]).await;
        assert_eq!(r.status.to_string(), status, "{}", r.text());
        assert!(r.json()["error"]["message"].is_string());
        assert_eq!(
            posts(&a) + posts(&b) - before,
            1,
            "HTTP {status}: one attempt"
        );
    }
    assert_eq!(health(&gw, "a").await["status"], "healthy");
    assert_eq!(health(&gw, "b").await["status"], "healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_times_out_and_the_request_fails_over() {
    let hung = start_mock(MockConfig::openai("hung", ["shared"])).await;
    let good = start_mock(MockConfig::openai("good", ["shared"])).await;
    let gw = gateway(&[&hung, &good], 60, 1).await;
    hung.set_fault(Some(Fault::Hang));

    for i in 0..4 {
        let started = Instant::now();
        let r = post_chat(&gw, "shared", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(served_by(&r), "good");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(
        (1..=3).contains(&posts(&hung)),
        "the hung endpoint got {} attempts",
        posts(&hung)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_hung_upstream_is_a_504() {
    let hung = start_mock(MockConfig::openai("hung", ["solo"]).with_fault(Fault::Hang)).await;
    let gw = gateway(&[&hung], 60, 1).await;
    let started = Instant::now();
    let r = post_chat(&gw, "solo", &[]).await;
    assert_openai_error(&r, 504, "upstream_timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert_eq!(posts(&hung), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ocf_error_body_is_never_a_success() {
    let head = start_mock(MockConfig::ocf("head", ["shared"]).with_fault(Fault::OcfError)).await;
    let gw = gateway(&[&head], 60, 10).await;
    let r = post_chat(&gw, "shared", &[]).await;
    assert_openai_error(&r, 502, "upstream_error");
    assert!(!r.text().contains("ERROR: forward"), "{}", r.text());
    assert_eq!(posts(&head), 1);

    let good = start_mock(MockConfig::openai("good", ["shared"])).await;
    let gw = gateway(&[&head, &good], 60, 10).await;
    for _ in 0..3 {
        let r = post_chat(&gw, "shared", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(served_by(&r), "good");
    }
}

/// What the OpenAI SDKs parse from a stream: the `data:` payloads of its events.
async fn stream_payloads(gw: &Gateway) -> Vec<String> {
    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        chat_body("shared", true),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let body = tokio::time::timeout(Duration::from_secs(10), s.read_to_end())
        .await
        .expect("the cut stream ends");
    sse_data(&body)
}

/// The last payload is an OpenAI error object (what makes the Python and Node SDKs raise
/// `APIError`), and `[DONE]` never came.
fn assert_cut_with_error(payloads: &[String], events_before: usize) {
    assert!(!payloads.iter().any(|p| p == "[DONE]"), "{payloads:?}");
    let last: Value = serde_json::from_str(payloads.last().expect("some events")).unwrap();
    assert!(last["error"]["message"].is_string(), "{last}");
    assert_eq!(last["error"]["type"], "api_error");
    let chunks = &payloads[..payloads.len() - 1];
    assert_eq!(chunks.len(), events_before, "{payloads:?}");
    for c in chunks {
        let v: Value = serde_json::from_str(c).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_reset_midway_ends_with_an_error_event() {
    let mock = start_mock(
        MockConfig::openai("cut", ["shared"]).with_fault(Fault::ResetAfter { events: 3 }),
    )
    .await;
    let gw = gateway(&[&mock], 60, 10).await;
    let payloads = stream_payloads(&gw).await;
    assert_cut_with_error(&payloads, 3);
    assert_eq!(
        posts(&mock),
        1,
        "never retried once bytes reached the client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_hits_the_idle_timeout_and_ends_with_an_error_event() {
    let mock = start_mock(
        MockConfig::openai("stall", ["shared"]).with_fault(Fault::StallAfter { events: 2 }),
    )
    .await;
    let gw = gateway(&[&mock], 60, 1).await;
    let started = Instant::now();
    let payloads = stream_payloads(&gw).await;
    assert_cut_with_error(&payloads, 2);
    let last: Value = serde_json::from_str(payloads.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{last}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_loses_no_request_and_is_back_within_a_probe_interval() {
    let stays = start_mock(MockConfig::openai("stays", ["shared"])).await;
    let dies = start_mock(MockConfig::openai("dies", ["shared"])).await;
    let dies_addr = dies.addr();
    let gw = gateway(&[&stays, &dies], 1, 10).await;

    // 200 requests at concurrency 10; the endpoint dies after the first 50 answers.
    let url = gw.at("/v1/chat/completions");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u16>(200);
    let mut workers = Vec::new();
    for _ in 0..10 {
        let (url, tx) = (url.clone(), tx.clone());
        workers.push(tokio::spawn(async move {
            for _ in 0..20 {
                let r = post_json(&url, chat_body("shared", false), &[]).await;
                if tx.send(r.status).await.is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    let mut statuses = Vec::new();
    let mut dies = Some(dies);
    while let Some(s) = rx.recv().await {
        statuses.push(s);
        if statuses.len() == 50 {
            dies.take().unwrap().shutdown().await;
        }
    }
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(statuses.len(), 200);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        endpoint_named(&gw, "dies").await["health"]["status"],
        "ejected"
    );

    // It comes back on the same address: within one probe interval (1 s, plus a request to
    // serve as its trial) it serves again.
    let back = MockServer::start_on(MockConfig::openai("dies", ["shared"]), dies_addr)
        .await
        .expect("restart the mock on its old address");
    let returned = Instant::now();
    let serves_again = || async {
        let r = post_chat(&gw, "shared", &[]).await;
        assert_eq!(r.status, 200);
        served_by(&r) == "dies"
    };
    let took = poll_until(Duration::from_secs(5), serves_again).await;
    assert!(took.is_some(), "the returned endpoint never served again");
    assert!(
        returned.elapsed() < Duration::from_millis(2500),
        "back after {:?}",
        returned.elapsed()
    );
    assert!(posts(&back) >= 1);
}

/// A gateway with `fallbacks: {big: [gone, small]}` in front of these mocks.
async fn fallback_gateway(mocks: &[&MockServer]) -> Gateway {
    let eps: Vec<(&str, String, &str)> = mocks
        .iter()
        .map(|m| (m.name(), m.url(), m.kind().as_str()))
        .collect();
    let yaml = config(&eps, 60, 10) + "fallbacks:\n  big: [gone, small]\n";
    let gw = Gateway::start(&yaml).await;
    for m in mocks {
        wait_discovered(&gw, m.name()).await;
    }
    gw
}

/// The request a mock received, as JSON, without its `model`.
fn without_model(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("model");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_whose_endpoints_all_fail_is_served_by_its_fallback() {
    let big = failing_with("big-host", "big", 503).await;
    let small = start_mock(MockConfig::openai("small-host", ["small"])).await;
    let gw = fallback_gateway(&[&big, &small]).await;

    let body = chat_body("big", false);
    let r = post_json(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["model"],
        "small",
        "the answer names the model that answered"
    );
    assert_eq!(r.header("x-ai-proxy-model"), Some("small"));
    assert_eq!(served_by(&r), "small-host");
    assert_eq!(
        posts(&big),
        1,
        "the requested model's endpoint was tried first"
    );
    let sent = inference_requests(&small).pop().unwrap();
    assert_eq!(
        sent.json()["model"],
        "small",
        "the body's model is rewritten"
    );
    let original: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        without_model(sent.json()),
        without_model(original),
        "nothing else changes"
    );
    assert_eq!(
        sent.header("content-length")
            .map(|l| l.parse::<usize>().unwrap()),
        Some(sent.body.len())
    );

    // Streams too.
    let mut s = post_stream(&gw.at("/v1/chat/completions"), chat_body("big", true), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("x-ai-proxy-model"), Some("small"));
    let payloads = sse_data(&s.read_to_end().await);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&payloads[0]).unwrap();
    assert_eq!(first["model"], "small");

    // Once the requested model's endpoint is ejected, requests go straight to the fallback,
    // large bodies (past Pingora's 64 KiB retry buffer) included.
    for _ in 0..3 {
        assert_eq!(post_chat(&gw, "big", &[]).await.status, 200);
    }
    assert_eq!(health(&gw, "big-host").await["status"], "ejected");
    let attempts_on_big = posts(&big);
    let large = serde_json::json!({
        "model": "big",
        "messages": [{"role": "user", "content": "x".repeat(100 * 1024)}],
    })
    .to_string();
    let r = post_json(&gw.at("/v1/chat/completions"), large.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "small");
    assert_eq!(
        posts(&big),
        attempts_on_big,
        "an ejected endpoint is not tried"
    );
    let sent = inference_requests(&small).pop().unwrap();
    assert_eq!(sent.json()["model"], "small");
    assert_eq!(sent.body.len(), large.len() - "big".len() + "small".len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_fallback_the_requested_models_failure_stands() {
    let big = failing_with("big-host", "big", 503).await;
    let small = failing_with("small-host", "small", 503).await;
    let gw = fallback_gateway(&[&big, &small]).await;
    let r = post_chat(&gw, "big", &[]).await;
    assert_eq!(
        r.status,
        503,
        "the last answer passes through: {}",
        r.text()
    );
    assert_eq!((posts(&big), posts(&small)), (1, 1));
}

/// A chat body of about `kib` KiB: past Pingora's 64 KiB retry buffer when `kib` > 64.
fn large_chat_body(model: &str, kib: usize) -> String {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "y".repeat(kib * 1024)}],
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_fail_over_too() {
    let bad = failing_with("bad", "shared", 502).await;
    let hung = start_mock(MockConfig::openai("hung", ["shared"]).with_fault(Fault::Hang)).await;
    let good = start_mock(MockConfig::openai("good", ["shared"])).await;
    let gw = gateway(&[&bad, &hung, &good], 60, 1).await;

    let body = large_chat_body("shared", 200);
    for i in 0..6 {
        let r = post_json(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(served_by(&r), "good", "request {i}");
    }
    for sent in inference_requests(&good) {
        assert_eq!(
            sent.body,
            body.as_bytes(),
            "the body is replayed byte for byte"
        );
    }
    assert_eq!(posts(&good), 6);
    assert!((1..=3).contains(&posts(&bad)), "bad: {}", posts(&bad));
    assert!((1..=3).contains(&posts(&hung)), "hung: {}", posts(&hung));
    // An upstream 400 is still passed through after exactly one attempt.
    let before = posts(&bad) + posts(&hung) + posts(&good);
    let r = post_json(
        &gw.at("/v1/chat/completions"),
        body.clone(),
        &[("x-mock-status", "400")],
    )
    .await;
    let after = posts(&bad) + posts(&hung) + posts(&good);
    assert_eq!(after - before, 1, "one attempt");
    assert!(
        r.status == 400 || r.status == 502 || r.status == 504,
        "{}",
        r.status
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_falls_back_once_its_models_endpoints_fail() {
    let big = failing_with("big-host", "big", 503).await;
    let small = start_mock(MockConfig::openai("small-host", ["small"])).await;
    let gw = fallback_gateway(&[&big, &small]).await;
    let body = large_chat_body("big", 150);
    let r = post_json(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], "small");
    assert_eq!(r.header("x-ai-proxy-model"), Some("small"));
    assert_eq!(posts(&big), 1);
    let sent = inference_requests(&small).pop().unwrap();
    assert_eq!(sent.json()["model"], "small");
    assert_eq!(
        without_model(sent.json()),
        without_model(serde_json::from_str(&body).unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_500_fails_over_and_counts_against_the_endpoint() {
    let broken = failing_with("broken", "shared", 500).await;
    let good = start_mock(MockConfig::openai("good", ["shared"])).await;
    let gw = gateway(&[&broken, &good], 60, 10).await;

    for _ in 0..10 {
        let r = post_chat(&gw, "shared", &[]).await;
        assert_eq!(r.status, 200, "a 500 is retried on the other deployment");
        assert_eq!(served_by(&r), "good");
    }
    // Round robin sends every other request to `broken` first, until three 500s in a row
    // eject it.
    assert_eq!(posts(&broken), 3);
    assert_eq!(posts(&good), 10);
    assert_eq!(health(&gw, "broken").await["status"], "ejected");
}

/// A chat request for `shared` on this keep-alive connection.
async fn chat(c: &mut Conn) -> Result<Resp, String> {
    let body = ReqBody::full(chat_body("shared", false));
    c.send(
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// At its open-files limit the gateway cannot make an upstream socket: its own trouble, so
/// the request gets a 500 and no endpoint is blamed (with a threshold of one failure, one
/// blame would eject it); with files free again, requests are served by the same endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_out_of_sockets_blames_no_endpoint() {
    const LIMIT: u64 = 96;
    let mock = start_mock(MockConfig::openai("m", ["shared"])).await;
    let yaml = config(&[("m", mock.url(), "openai")], 60, 10) + "health: {failure_threshold: 1}\n";
    let gw = Gateway::builder()
        .config(yaml)
        .open_files(LIMIT)
        .start()
        .await;
    wait_discovered(&gw, "m").await;

    let client = Client::new().timeout(Duration::from_millis(500));
    let mut probe = client.connect(&gw.url).await.expect("connect");
    // Idle keep-alive connections until one is no longer accepted: the gateway is full.
    let mut idle = Vec::new();
    let mut full = false;
    while !full && (idle.len() as u64) < LIMIT {
        let mut c = client.connect(&gw.url).await.expect("connect");
        full = c
            .send("GET", "/health", &[], ReqBody::empty())
            .await
            .is_err();
        idle.push(c);
    }
    assert!(
        full,
        "the gateway accepted {LIMIT} connections past its limit"
    );
    let r = chat(&mut probe).await.expect("an answer at the limit");
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.text().contains("open files"), "{}", r.text());
    assert_eq!(posts(&mock), 0);

    drop(idle);
    // The gateway closes the dropped connections as it reads their ends: a bounded wait, in
    // which an answer is a 500 (still out of files) or a 200, never the 502/503 of a blamed
    // or ejected endpoint.
    let deadline = Instant::now() + Duration::from_secs(5);
    let served = loop {
        let mut c = client.connect(&gw.url).await.expect("connect");
        let r = chat(&mut c).await.expect("an answer");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        assert_eq!(r.status, 500, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(served_by(&served), "m");
    assert_eq!(health(&gw, "m").await["status"], "healthy");
}
