//! SSE through the gateway: events reach the client as the upstream sends them (not buffered),
//! byte for byte, and a client that goes away closes the upstream stream — for small bodies and
//! for bodies over 64 KiB (which go upstream through a Pingora subrequest).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MODEL: &str = "stream-model";

fn config(mock: &MockServer) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nendpoints:\n  - url: {}\n    name: sse\n    api_key: sk-sse\n",
        mock.url()
    )
}

/// A streaming chat request whose user prompt is `prompt_bytes` long.
fn stream_body(prompt_bytes: usize) -> String {
    let prompt: String = (0..prompt_bytes)
        .map(|i| {
            if i % 50 == 49 {
                ' '
            } else {
                (b'a' + (i % 26) as u8) as char
            }
        })
        .collect();
    json!({
        "model": MODEL,
        "stream": true,
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
}

/// 5 events 200 ms apart: the first reaches the client before the second is even sent, and the
/// client gets exactly the bytes the mock sent.
async fn first_event_before_second_is_sent(prompt_bytes: usize) {
    let mock =
        start_mock(MockConfig::openai("sse", [MODEL]).with_sse(5, Duration::from_millis(200)))
            .await;
    let gw = Gateway::start(&config(&mock)).await;
    let body = stream_body(prompt_bytes);

    let mut s = post_stream(&gw.at("/v1/chat/completions"), body.clone(), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("x-mock-name"), Some("sse"));
    assert!(s.header("content-length").is_none());
    let (first, first_at) = s.next_chunk().await.expect("first event");
    assert!(first.starts_with(b"data: "), "{first:?}");
    let mut received = first.to_vec();
    for (c, _) in s.collect_chunks().await {
        received.extend_from_slice(&c);
    }
    assert!(s.error().is_none(), "stream ended early: {:?}", s.error());

    let streams = mock.streams();
    assert_eq!(streams.len(), 1);
    let rec = &streams[0];
    assert!(rec.finished, "{rec:?}");
    assert_eq!(rec.event_times.len(), 6, "5 events + [DONE]");
    assert!(
        first_at < rec.event_times[1],
        "first event reached the client {:?} after the mock sent the second",
        first_at - rec.event_times[1]
    );
    assert_eq!(
        String::from_utf8_lossy(&received),
        String::from_utf8_lossy(&rec.sent)
    );
    assert!(received.ends_with(b"data: [DONE]\n\n"));
    let data = sse_data(&received);
    assert_eq!(data.len(), 6, "{data:?}");
    for d in &data[..5] {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], MODEL);
    }

    let reqs = inference_requests(&mock);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, body.as_bytes(), "request body changed");
    assert_eq!(reqs[0].header("authorization"), Some("Bearer sk-sse"));
}

/// The client drops the stream after the first event: the mock sees its connection closed
/// within 1 s.
async fn client_disconnect_closes_upstream(prompt_bytes: usize) {
    let mock =
        start_mock(MockConfig::openai("sse", [MODEL]).with_sse(20, Duration::from_millis(300)))
            .await;
    let gw = Gateway::start(&config(&mock)).await;

    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        stream_body(prompt_bytes),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    assert!(s.next_chunk().await.is_some(), "{:?}", s.error());
    let dropped_at = Instant::now();
    drop(s);

    let rec = wait_stream_closed_early(&mock, Duration::from_secs(1)).await;
    let closed_at = rec.closed_early_at.unwrap_or_else(|| {
        panic!(
            "upstream stream still open 1 s after the client left: {} events sent",
            rec.event_times.len()
        )
    });
    assert!(
        closed_at.duration_since(dropped_at) < Duration::from_secs(1),
        "closed {:?} after the drop",
        closed_at.duration_since(dropped_at)
    );
    assert!(!rec.finished);
    assert!(
        rec.event_times.len() < 10,
        "mock kept streaming: {} events",
        rec.event_times.len()
    );
    // The gateway is fine afterwards.
    assert_eq!(get(&gw.at("/health")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_unbuffered_and_byte_identical() {
    first_event_before_second_is_sent(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_is_unbuffered_and_byte_identical_with_large_body() {
    first_event_before_second_is_sent(200 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_closes_upstream() {
    client_disconnect_closes_upstream(100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_closes_upstream_with_large_body() {
    client_disconnect_closes_upstream(200 * 1024).await;
}

/// The per-request pacing headers reach the mock, and other stream shapes (completions with a
/// usage chunk) pass through unchanged as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_by_request_headers_and_usage_chunk() {
    let mock = start_mock(MockConfig::openai("sse", [MODEL])).await;
    let gw = Gateway::start(&config(&mock)).await;

    let body = json!({"model": MODEL, "stream": true, "prompt": "count to three",
        "stream_options": {"include_usage": true}})
    .to_string();
    let started = Instant::now();
    let mut s = post_stream(
        &gw.at("/v1/completions"),
        body,
        &[("x-mock-events", "3"), ("x-mock-interval-ms", "150")],
    )
    .await;
    assert_eq!(s.status, 200);
    let chunks = s.collect_chunks().await;
    assert!(s.error().is_none(), "{:?}", s.error());
    let received: Vec<u8> = chunks.iter().flat_map(|(c, _)| c.to_vec()).collect();
    let rec = mock.streams().pop().expect("stream record");
    assert_eq!(received, rec.sent);
    assert_eq!(rec.path, "/v1/completions");
    let data = sse_data(&received);
    assert_eq!(data.len(), 5, "3 events + usage + [DONE]: {data:?}");
    let usage: serde_json::Value = serde_json::from_str(&data[3]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert_eq!(data[4], "[DONE]");
    // Paced: the three content events span at least the two 150 ms pauses.
    let times = &rec.event_times;
    assert!(times[2] - times[0] >= Duration::from_millis(300));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Each content event reached the client before the next was sent.
    for i in 0..2 {
        let arrived = chunks
            .iter()
            .scan(0usize, |len, (c, at)| {
                *len += c.len();
                Some((*len, *at))
            })
            .find(|(len, _)| *len >= rec.event_sizes_up_to(i))
            .map(|(_, at)| at)
            .expect("event arrived");
        assert!(arrived < times[i + 1], "event {i} held back");
    }
}

/// Byte offsets of the ends of a stream's events, from the mock's record.
trait EventSizes {
    fn event_sizes_up_to(&self, i: usize) -> usize;
}

impl EventSizes for StreamRecord {
    /// Total length of events `0..=i` (events end with a blank line).
    fn event_sizes_up_to(&self, i: usize) -> usize {
        let mut seen = 0;
        let mut end = 0;
        for (pos, w) in self.sent.windows(2).enumerate() {
            if w == b"\n\n" {
                end = pos + 2;
                if seen == i {
                    return end;
                }
                seen += 1;
            }
        }
        end
    }
}

/// An upstream that pauses longer than `timeout_secs` mid-stream: the client's stream is cut
/// off at about the timeout instead of hanging (small and large bodies).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stream_is_cut_after_the_read_timeout() {
    let mock = start_mock(MockConfig::openai("sse", [MODEL])).await;
    let gw = Gateway::start(&config(&mock).replace("timeout_secs: 10", "timeout_secs: 1")).await;
    for prompt_bytes in [100, 200 * 1024] {
        let started = Instant::now();
        let mut s = post_stream(
            &gw.at("/v1/chat/completions"),
            stream_body(prompt_bytes),
            &[("x-mock-interval-ms", "3000")],
        )
        .await;
        assert_eq!(s.status, 200);
        let body: Vec<u8> = s
            .collect_chunks()
            .await
            .into_iter()
            .flat_map(|(b, _)| b.to_vec())
            .collect();
        let took = started.elapsed();
        // The first event, then the gateway's error event (what makes the SDKs raise), and
        // no `[DONE]`: the cut stream must not look complete.
        let payloads = sse_data(&body);
        assert_eq!(payloads.len(), 2, "prompt {prompt_bytes}: {payloads:?}");
        assert!(!payloads.iter().any(|p| p == "[DONE]"));
        let first: serde_json::Value = serde_json::from_str(&payloads[0]).unwrap();
        assert_eq!(first["object"], "chat.completion.chunk");
        let cut: serde_json::Value = serde_json::from_str(&payloads[1]).unwrap();
        assert_eq!(
            cut["error"]["code"], "upstream_timeout",
            "prompt {prompt_bytes}: {cut}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "cut after {took:?} (prompt {prompt_bytes})"
        );
    }
    assert_eq!(get(&gw.at("/health")).await.status, 200);
}
