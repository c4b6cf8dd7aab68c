//! Graceful shutdown: SIGTERM refuses new connections, lets streams in flight finish within
//! `shutdown_grace_secs`, and exits with code 0 as soon as they have (at once when idle).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(mock: &MockServer, grace_secs: u64) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nshutdown_grace_secs: {grace_secs}\n\
         endpoints:\n  - url: {}\n    name: up\n",
        mock.url()
    )
}

/// Open a stream and wait for its first event, so it is surely in flight.
async fn open_stream(gw: &Gateway) -> StreamResp {
    let mut s = post_stream(&gw.at("/v1/chat/completions"), chat_body("m", true), &[]).await;
    assert_eq!(s.status, 200);
    let first = tokio::time::timeout(Duration::from_secs(5), s.next_chunk()).await;
    assert!(matches!(first, Ok(Some(_))), "the stream started");
    s
}

/// Wait (bounded) for the gateway to exit, and check it exited with code 0.
async fn exits_cleanly(gw: &mut Gateway) {
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("the gateway exits");
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
}

async fn refuses_connections(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_streams_in_flight_finish_then_exits_0() {
    // 30 events 50 ms apart: each stream lasts about 1.5 s.
    let mock =
        start_mock(MockConfig::openai("up", ["m"]).with_sse(30, Duration::from_millis(50))).await;
    let mut gw = Gateway::start(&config(&mock, 20)).await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(open_stream(&gw).await);
    }

    let signalled = Instant::now();
    gw.signal("TERM");
    let port = gw.port;
    let refused = poll_until(Duration::from_secs(3), || refuses_connections(port)).await;
    assert!(
        refused.is_some(),
        "new connections are refused after SIGTERM"
    );

    for (i, mut s) in streams.into_iter().enumerate() {
        let rest = tokio::time::timeout(Duration::from_secs(10), s.read_to_end())
            .await
            .expect("the stream ends");
        assert!(s.error().is_none(), "stream {i} was cut: {:?}", s.error());
        let payloads = sse_data(&rest);
        assert_eq!(
            payloads.last().map(String::as_str),
            Some("[DONE]"),
            "stream {i}"
        );
    }
    exits_cleanly(&mut gw).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "exited once drained, not after the 20 s grace period: {:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_gateway_exits_at_once() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let mut gw = Gateway::start(&config(&mock, 20)).await;
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    let signalled = Instant::now();
    gw.signal("TERM");
    exits_cleanly(&mut gw).await;
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "{:?}",
        signalled.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_outlasting_the_grace_period_are_stopped() {
    // 100 events 100 ms apart: 10 s, far beyond a 1 s grace period.
    let mock =
        start_mock(MockConfig::openai("up", ["m"]).with_sse(100, Duration::from_millis(100))).await;
    let mut gw = Gateway::start(&config(&mock, 1)).await;
    let mut s = open_stream(&gw).await;
    let signalled = Instant::now();
    gw.signal("TERM");
    exits_cleanly(&mut gw).await;
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let rest = tokio::time::timeout(Duration::from_secs(5), s.read_to_end())
        .await
        .expect("the stream ends");
    assert!(
        !sse_data(&rest).iter().any(|p| p == "[DONE]"),
        "the stream was cut"
    );
}
