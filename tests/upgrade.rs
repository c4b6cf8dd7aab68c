//! Zero-downtime binary upgrade: a new gateway started with `--upgrade` takes the listening
//! socket over from the running one on SIGQUIT; streams in flight on the old process finish,
//! no new request fails, and new connections are served by the new process.

mod common;

use std::time::Duration;

use common::*;

fn config(sock: &std::path::Path, slow: &MockServer, fast: &MockServer) -> String {
    format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\nshutdown_grace_secs: 30\n\
         upgrade_sock: {}\naccess_log: access.log\nendpoints:\n  - url: {}\n    name: slow\n  - url: {}\n    name: fast\n",
        sock.display(),
        slow.url(),
        fast.url()
    )
}

/// Access log lines a gateway wrote (to `access.log` in its working directory).
fn logged_requests(gw: &Gateway) -> usize {
    std::fs::read_to_string(gw.dir().join("access.log"))
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("/v1/chat/completions"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_upgrade_keeps_streams_and_hands_new_connections_to_the_new_process() {
    // Streams of about 7 s: longer than the old process keeps accepting after the handover.
    let slow = start_mock(
        MockConfig::openai("slow", ["slow-model"]).with_sse(28, Duration::from_millis(250)),
    )
    .await;
    let fast = start_mock(MockConfig::openai("fast", ["m"]).with_sse(3, Duration::ZERO)).await;
    let sock_dir = tempfile::tempdir().unwrap();
    let sock = sock_dir.path().join("upgrade.sock");
    let yaml = config(&sock, &slow, &fast);
    let mut old = Gateway::start(&yaml).await;
    wait_discovered(&old, "slow").await;
    wait_discovered(&old, "fast").await;

    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = post_stream(
            &old.at("/v1/chat/completions"),
            chat_body("slow-model", true),
            &[],
        )
        .await;
        assert_eq!(s.status, 200);
        let first = tokio::time::timeout(Duration::from_secs(5), s.next_chunk()).await;
        assert!(matches!(first, Ok(Some(_))), "the stream started");
        streams.push(s);
    }
    let load = Load::start(&old.url, "m", 3);
    assert!(load.wait_for_more(10, Duration::from_secs(20)).await);

    let mut new = Gateway::builder()
        .port(old.port)
        .config(yaml)
        .arg("--upgrade")
        .no_wait()
        .start()
        .await;
    old.signal("QUIT");
    let took_over = poll_until(Duration::from_secs(15), || async {
        new.logs()
            .contains("upgrade: took over the listening sockets")
    })
    .await;
    assert!(
        took_over.is_some(),
        "new:\n{}\nold:\n{}",
        new.logs(),
        old.logs()
    );

    // The old process stops accepting, lets its streams finish and exits; the load goes on.
    let status = old
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the old process exits once drained");
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    for (i, mut s) in streams.into_iter().enumerate() {
        let rest = s.read_to_end().await;
        assert_eq!(s.error(), None, "stream {i}");
        assert_eq!(
            sse_data(&rest).last().map(String::as_str),
            Some("[DONE]"),
            "stream {i}"
        );
    }
    let served_by_new = logged_requests(&new);
    assert!(load.wait_for_more(20, Duration::from_secs(20)).await);
    load.stop().await.assert_none_failed();
    // The access log is written in batches: wait for the lines to land.
    let logged = poll_until(Duration::from_secs(5), || async {
        logged_requests(&new) >= served_by_new + 20
    })
    .await;
    assert!(
        logged.is_some(),
        "requests after the old process left were served by the new one"
    );
    new.wait_ready().await;
    assert_eq!(post_chat(&new, "m", &[]).await.status, 200);
    assert!(new.try_wait().is_none(), "the new process keeps serving");
}
