//! `GET /ready`: 503 `starting` until the first discovery round is done, 503 `no_models` while
//! nothing is routable, 200 `ready`, and 503 `draining` from SIGTERM on; `/health` is liveness
//! alone and answers 200 throughout.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// `/ready`'s status code and `status` field.
async fn readiness(gw: &Gateway) -> (u16, String) {
    let r = get(&gw.at("/ready")).await;
    let status = r.json()["status"].as_str().unwrap_or_default().to_string();
    (r.status, status)
}

async fn wait_readiness(gw: &Gateway, want: (u16, &str), within: Duration) {
    let reached = poll_until(within, || async {
        let (code, status) = readiness(gw).await;
        code == want.0 && status == want.1
    })
    .await;
    assert!(
        reached.is_some(),
        "/ready never answered {want:?}; last {:?}\n{}",
        readiness(gw).await,
        gw.logs()
    );
}

/// An endpoint that accepts connections and never answers: it holds a discovery round for
/// the whole probe timeout.
async fn silent_endpoint() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_only_after_the_first_round_with_a_routable_model() {
    let (silent, task) = silent_endpoint().await;
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nhealth:\n  probe_timeout_secs: 3\nendpoints:\n  - url: {silent}\n    name: silent\n  - url: {}\n    name: up\n",
        mock.url()
    );
    let started = Instant::now();
    let mut gw = Gateway::builder().config(yaml).no_wait().start().await;
    gw.wait_ready_on("/health", Duration::from_secs(10)).await;
    assert_eq!(readiness(&gw).await, (503, "starting".into()));
    wait_readiness(&gw, (200, "ready"), Duration::from_secs(10)).await;
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the first round waited for the silent endpoint's probe timeout"
    );
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_routable_model_is_not_ready_until_one_appears() {
    let mock = start_mock(MockConfig::openai("up", Vec::<String>::new())).await;
    let gw = Gateway::start(&format!(
        "listen: \"127.0.0.1:{{port}}\"\ndiscovery_interval_secs: 1\nendpoints:\n  - url: {}\n",
        mock.url()
    ))
    .await;
    assert_eq!(readiness(&gw).await, (503, "no_models".into()));
    assert_eq!(get(&gw.at("/health")).await.status, 200);
    mock.set_models(vec!["m".into()]);
    wait_readiness(&gw, (200, "ready"), Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_draining_serves_through_the_delay_then_exits() {
    // A stream of about 3 s: it outlasts the 1.5 s delay.
    let mock =
        start_mock(MockConfig::openai("up", ["m"]).with_sse(60, Duration::from_millis(50))).await;
    let mut gw = Gateway::over(
        &[&mock],
        "shutdown_delay_secs: 1.5\nshutdown_grace_secs: 20",
    )
    .await;
    assert_eq!(readiness(&gw).await, (200, "ready".into()));
    let mut stream = post_stream(&gw.at("/v1/chat/completions"), chat_body("m", true), &[]).await;
    assert_eq!(stream.status, 200);

    let signalled = Instant::now();
    gw.signal("TERM");
    wait_readiness(&gw, (503, "draining"), Duration::from_secs(1)).await;
    // Still serving new connections during the delay; liveness unchanged.
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    assert_eq!(get(&gw.at("/health")).await.status, 200);
    assert!(signalled.elapsed() < Duration::from_millis(1500));

    let port = gw.port;
    let refused = poll_until(Duration::from_secs(5), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    })
    .await;
    assert!(refused.is_some(), "listeners close after the delay");
    assert!(signalled.elapsed() >= Duration::from_millis(1400));
    let rest = stream.read_to_end().await;
    assert_eq!(stream.error(), None);
    assert_eq!(sse_data(&rest).last().map(String::as_str), Some("[DONE]"));
    let status = gw.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
}
