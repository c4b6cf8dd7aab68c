//! Config reload (SIGHUP and the file watch): endpoints added, removed and changed under load
//! without a failed request; an invalid file leaves the running config in force.

mod common;

use std::time::Duration;

use common::*;

/// Long enough for any reload in these tests to show.
const RELOAD_SEEN: Duration = Duration::from_secs(10);

fn config(extra: &str, endpoints: &[(&MockServer, &str)]) -> String {
    let mut yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ndiscovery_interval_secs: 300\n{extra}\nendpoints:\n"
    );
    for (m, more) in endpoints {
        yaml.push_str(&format!(
            "  - url: {}\n    name: {}\n{more}",
            m.url(),
            m.name()
        ));
    }
    yaml
}

fn rewrite(gw: &Gateway, yaml: &str) {
    let path = gw.config_path().expect("started with a config file");
    std::fs::write(path, yaml.replace("{port}", &gw.port.to_string())).expect("rewrite config");
}

async fn wait_models(gw: &Gateway, has: &str, lacks: &str) {
    let seen = poll_until(RELOAD_SEEN, || async {
        let ids = model_ids(gw).await;
        ids.iter().any(|m| m == has) && !ids.iter().any(|m| m == lacks)
    })
    .await;
    assert!(
        seen.is_some(),
        "models after reload: {:?}\n{}",
        model_ids(gw).await,
        gw.logs()
    );
}

async fn wait_log(gw: &Gateway, needle: &str) {
    let seen = poll_until(RELOAD_SEEN, || async { gw.logs().contains(needle) }).await;
    assert!(
        seen.is_some(),
        "no log line with {needle:?}:\n{}",
        gw.logs()
    );
}

/// Open a stream on `base` and wait for its first bytes, so it is surely in flight.
async fn open_stream(base: &str, model: &str) -> (StreamResp, Vec<u8>) {
    let mut s = post_stream(
        &format!("{base}/v1/chat/completions"),
        chat_body(model, true),
        &[],
    )
    .await;
    assert_eq!(s.status, 200);
    let first = tokio::time::timeout(Duration::from_secs(5), s.next_chunk()).await;
    let Ok(Some((first, _))) = first else {
        panic!("the stream did not start")
    };
    (s, first.to_vec())
}

/// The SSE events of a stream opened by [`open_stream`], read to its end.
async fn events(opened: (StreamResp, Vec<u8>)) -> Vec<String> {
    let (mut s, mut body) = opened;
    body.extend_from_slice(&s.read_to_end().await);
    assert_eq!(s.error(), None);
    sse_data(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_adds_and_removes_endpoints_without_a_failed_request() {
    let keep =
        start_mock(MockConfig::openai("keep", ["m"]).with_sse(5, Duration::from_millis(10))).await;
    // Its streams last about 2 s: they are in flight through the reload.
    let old = start_mock(
        MockConfig::openai("old", ["m", "only-old"]).with_sse(40, Duration::from_millis(50)),
    )
    .await;
    let new = start_mock(
        MockConfig::openai("new", ["m", "only-new"]).with_sse(5, Duration::from_millis(10)),
    )
    .await;
    // Discovery only runs again on the reload: a new endpoint shows because of it.
    let gw = Gateway::start(&config("", &[(&keep, ""), (&old, "")])).await;
    wait_discovered(&gw, "old").await;
    let mut on_old = Vec::new();
    for _ in 0..3 {
        on_old.push(open_stream(&gw.url, "only-old").await);
    }
    let load = Load::start(&gw.url, "m", 4);
    assert!(load.wait_for_more(20, Duration::from_secs(20)).await);
    assert!(!inference_requests(&old).is_empty());

    rewrite(&gw, &config("", &[(&keep, ""), (&new, "")]));
    gw.signal("HUP");
    wait_models(&gw, "only-new", "only-old").await;
    wait_log(&gw, "added: new; removed: old").await;

    // Requests that chose `old` just before the swap may still be arriving: let them.
    assert!(load.wait_for_more(8, Duration::from_secs(20)).await);
    let old_requests = inference_requests(&old).len();
    assert!(load.wait_for_more(40, Duration::from_secs(30)).await);
    assert_eq!(
        inference_requests(&old).len(),
        old_requests,
        "a removed endpoint gets no new request"
    );
    assert!(
        !inference_requests(&new).is_empty(),
        "the added endpoint serves"
    );

    let whole = events(open_stream(&old.url(), "only-old").await).await;
    assert_eq!(whole.last().map(String::as_str), Some("[DONE]"));
    for s in on_old {
        assert_eq!(
            events(s).await.len(),
            whole.len(),
            "the whole stream arrived"
        );
    }
    load.stop().await.assert_none_failed();
    let names: Vec<String> = endpoints(&gw)
        .await
        .iter()
        .map(|e| e["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["keep", "new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_leaves_the_running_config_in_force() {
    let keep = start_mock(MockConfig::openai("keep", ["m"])).await;
    let other = start_mock(MockConfig::openai("other", ["m2"])).await;
    let gw = Gateway::start(&config("", &[(&keep, "")])).await;
    wait_discovered(&gw, "keep").await;

    for broken in [
        "endpoints:\n  - url: nope\n",
        "listen: [\n",
        "max_attemps: 3\nendpoints:\n  - url: http://127.0.0.1:1\n",
    ] {
        rewrite(&gw, broken);
        let before = gw.logs().matches("rejected").count();
        gw.signal("HUP");
        let seen = poll_until(RELOAD_SEEN, || async {
            gw.logs().matches("rejected").count() > before
        })
        .await;
        assert!(
            seen.is_some(),
            "{broken:?} was not rejected:\n{}",
            gw.logs()
        );
        assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
        assert_eq!(model_ids(&gw).await, ["m"]);
        assert_eq!(get(&gw.at("/ready")).await.status, 200);
    }
    assert!(gw.logs().contains("max_attemps"), "the error names the key");

    // A valid file again is applied; a key that needs a restart keeps its running value.
    let moved = config("", &[(&keep, ""), (&other, "")]).replace("{port}", "1");
    rewrite(&gw, &moved);
    gw.signal("HUP");
    wait_models(&gw, "m2", "none").await;
    wait_log(&gw, "listen changed; that takes a restart").await;
    assert_eq!(post_chat(&gw, "m2", &[]).await.status, 200);
    let m = scrape(&gw).await;
    let reloads = |result: &str| {
        m.get(&format!(
            "ai_proxy_config_reloads_total{{result=\"{result}\"}}"
        ))
        .copied()
    };
    assert_eq!(reloads("rejected"), Some(3.0));
    assert_eq!(reloads("applied"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_endpoint_is_used_as_changed_and_the_file_watch_needs_no_signal() {
    let up = start_mock(MockConfig::openai("up", ["m"])).await;
    let watch = "watch_config_secs: 0.1";
    let gw = Gateway::start(&config(watch, &[(&up, "    api_key: sk-first\n")])).await;
    wait_discovered(&gw, "up").await;
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);

    rewrite(&gw, &config(watch, &[(&up, "    api_key: sk-second\n")]));
    wait_log(&gw, "changed: up").await;
    let switched = poll_until(RELOAD_SEEN, || async {
        post_chat(&gw, "m", &[]).await.status == 200
            && inference_requests(&up)
                .last()
                .and_then(|r| r.header("authorization").map(str::to_string))
                .as_deref()
                == Some("Bearer sk-second")
    })
    .await;
    assert!(switched.is_some(), "{}", gw.logs());
    assert!(!gw.logs().contains("sk-second"), "keys never reach the log");
}
