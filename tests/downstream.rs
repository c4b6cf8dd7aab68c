//! Protection from clients: slow request heads are cut off at the header deadline while others
//! are served, oversized heads get 431, and the connection cap closes connections past it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(mock: &MockServer, extra: &str) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\n{extra}\nendpoints:\n  - url: {}\n    name: up\n",
        mock.url()
    )
}

/// Read until the server closes the connection (or `limit` passes): what it sent, and when the
/// close came.
async fn read_until_closed(conn: &mut TcpStream, limit: Duration) -> Option<(Vec<u8>, Instant)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, conn.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some((got, Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off_while_others_are_served() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::start(&config(&mock, "header_timeout_secs: 2")).await;

    // Clients that send their request head one byte a second: each notes when the gateway
    // closed its connection (bounded by the head's length).
    let head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}";
    let started = Instant::now();
    let slow: Vec<_> = (0..5)
        .map(|_| {
            let port = gw.port;
            tokio::spawn(async move {
                let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let mut buf = [0u8; 1024];
                for byte in head {
                    if conn.write_all(&[*byte]).await.is_err() {
                        return Some((Vec::new(), Instant::now()));
                    }
                    match tokio::time::timeout(Duration::from_secs(1), conn.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return Some((Vec::new(), Instant::now())),
                        Ok(Ok(n)) => return Some((buf[..n].to_vec(), Instant::now())),
                        Err(_) => {} // nothing yet: next byte
                    }
                }
                None
            })
        })
        .collect();
    // Meanwhile, other clients are served.
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        let r = post_chat(&gw, "m", &[]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        served += 1;
    }
    assert!(
        served >= 5,
        "only {served} requests served beside the slow clients"
    );

    for (i, task) in slow.into_iter().enumerate() {
        let (sent, closed_at) = task
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("slow client {i} was never cut off"));
        let after = closed_at - started;
        assert!(
            after >= Duration::from_millis(1800) && after < Duration::from_millis(3500),
            "slow client {i} cut off after {after:?}"
        );
        assert!(
            sent.is_empty(),
            "nothing is answered to a head that never came"
        );
    }
    assert_eq!(inference_requests(&mock).len(), served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_deadline() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::start(&config(&mock, "header_timeout_secs: 1")).await;
    let mut conn = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    conn.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 12];
    conn.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let started = Instant::now();
    let closed = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    let (_, at) = closed.expect("the idle connection is closed");
    let after = at - started;
    assert!(
        after < Duration::from_millis(2500),
        "closed after {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_request_head_gets_431() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::start(&config(&mock, "max_header_bytes: 8192")).await;
    let big = "a".repeat(10_000);
    let r = post_json(
        &gw.at("/v1/chat/completions"),
        chat_body("m", false),
        &[("x-big", &big)],
    )
    .await;
    let e = assert_openai_error(&r, 431, "request_header_too_large");
    assert!(e["message"].as_str().unwrap().contains("8192"), "{e}");
    assert_eq!(inference_requests(&mock).len(), 0);
    // Just under the limit is fine.
    let r = post_json(
        &gw.at("/v1/chat/completions"),
        chat_body("m", false),
        &[("x-big", &"a".repeat(7000))],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed() {
    let mock =
        start_mock(MockConfig::openai("up", ["m"]).with_sse(20, Duration::from_millis(50))).await;
    let gw = Gateway::start(&config(&mock, "max_connections: 2")).await;
    // Two streams hold the two slots. The gateway may still be counting the connection its
    // readiness check just closed: a stream refused for that is tried again (bounded).
    let mut streams = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while streams.len() < 2 {
        assert!(Instant::now() < deadline, "could not open two streams");
        let client = Client::new();
        let Ok(mut s) = client
            .try_post_stream(&gw.at("/v1/chat/completions"), chat_body("m", true), &[])
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        assert_eq!(s.status, 200);
        assert!(s.next_chunk().await.is_some());
        streams.push(s);
    }
    let mut third = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (sent, _) = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .expect("the connection past the cap is closed");
    assert!(sent.is_empty(), "{}", String::from_utf8_lossy(&sent));

    for mut s in streams {
        let payloads = sse_data(&s.read_to_end().await);
        assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    }
    let served = poll_until(Duration::from_secs(5), || async {
        try_get(&gw.at("/health"))
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(served.is_some(), "served again once the slots are free");
}
