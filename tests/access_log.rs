//! The access log: one JSON line per request with the documented fields, and never a key.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const UPSTREAM_KEY: &str = "sk-upstream-secret-4242";
const CLIENT_KEY: &str = "sk-client-secret-9999";

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_and_never_a_key() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let gw = Gateway::start(&format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\naccess_log: {}\nendpoints:\n  - url: {}\n    name: up\n    api_key: {UPSTREAM_KEY}\n",
        log.display(),
        mock.url()
    ))
    .await;
    let auth = format!("Bearer {CLIENT_KEY}");
    let listed = || async { model_ids(&gw).await == ["m"] };
    assert!(poll_until(Duration::from_secs(10), listed).await.is_some());

    let mut responses = Vec::new();
    let ok = post_chat(
        &gw,
        "m",
        &[("authorization", &auth), ("x-request-id", "al-ok")],
    )
    .await;
    assert_eq!(ok.status, 200);
    responses.push(ok);
    let unknown = post_chat(
        &gw,
        "nope",
        &[("authorization", &auth), ("x-request-id", "al-unknown")],
    )
    .await;
    assert_eq!(unknown.status, 404);
    responses.push(unknown);
    let bad = post_json(
        &gw.at("/v1/chat/completions"),
        "{not json",
        &[("authorization", &auth), ("x-request-id", "al-bad")],
    )
    .await;
    assert_eq!(bad.status, 400);
    responses.push(bad);
    let mut s = post_stream(
        &gw.at("/v1/chat/completions?api_key=in-query"),
        chat_body("m", true),
        &[("authorization", &auth), ("x-request-id", "al-stream")],
    )
    .await;
    let streamed = s.read_to_end().await;
    let endpoints = Client::new()
        .request(
            "GET",
            &gw.at("/v1/endpoints"),
            &[("x-request-id", "al-endpoints")],
            ReqBody::empty(),
        )
        .await;
    responses.push(endpoints);

    // Lines are written by a thread of their own: wait (bounded) for the five requests'.
    let ids = ["al-ok", "al-unknown", "al-bad", "al-stream", "al-endpoints"];
    let mine = || {
        let all = lines(&log);
        ids.iter()
            .map(|id| {
                all.iter()
                    .filter(|l| l["request_id"] == *id)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    };
    let written = || async { mine().iter().all(|found| !found.is_empty()) };
    assert!(
        poll_until(Duration::from_secs(5), written).await.is_some(),
        "{:?}",
        lines(&log)
    );
    let got: Vec<Value> = mine()
        .into_iter()
        .map(|found| {
            assert_eq!(found.len(), 1, "one line per request: {found:?}");
            found[0].clone()
        })
        .collect();
    for l in &got {
        for key in [
            "time",
            "request_id",
            "method",
            "path",
            "model",
            "endpoint",
            "status",
            "attempts",
            "ttfb_ms",
            "duration_ms",
            "bytes_in",
            "bytes_out",
            "tokens",
            "error",
        ] {
            assert!(l.get(key).is_some(), "missing {key}: {l}");
        }
        assert!(l["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    let ok_line = &got[0];
    assert_eq!(ok_line["request_id"], "al-ok");
    assert_eq!(ok_line["status"], 200);
    assert_eq!(ok_line["model"], "m");
    assert_eq!(ok_line["endpoint"], "up");
    assert_eq!(ok_line["attempts"], 1);
    assert!(ok_line["ttfb_ms"].as_f64().unwrap() > 0.0);
    assert!(
        ok_line["bytes_in"].as_u64().unwrap() > 0 && ok_line["bytes_out"].as_u64().unwrap() > 0
    );
    assert_eq!(
        ok_line["tokens"],
        serde_json::json!({"prompt": 5, "completion": 5})
    );
    assert_eq!(got[3]["tokens"], Value::Null, "a stream without usage");
    assert_eq!(got[1]["status"], 404);
    assert_eq!(
        got[1]["model"],
        Value::Null,
        "an unknown model is not logged as one"
    );
    assert_eq!(got[1]["error"], "model_not_found");
    assert_eq!(got[2]["status"], 400);
    assert_eq!(got[3]["path"], "/v1/chat/completions", "no query string");
    assert_eq!(got[4]["path"], "/v1/endpoints");

    // No key anywhere: access log, gateway output, answers.
    let mut everything = std::fs::read_to_string(&log).unwrap();
    everything.push_str(&gw.logs());
    everything.push_str(&String::from_utf8_lossy(&streamed));
    for r in &responses {
        everything.push_str(&r.text());
        for (k, v) in r.headers.iter() {
            everything.push_str(k.as_str());
            everything.push_str(v.to_str().unwrap_or(""));
        }
    }
    for secret in [UPSTREAM_KEY, CLIENT_KEY, "in-query"] {
        assert!(!everything.contains(secret), "{secret} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_writes_nothing() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = Gateway::start(&format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\naccess_log: \"off\"\nendpoints:\n  - url: {}\n    name: up\n",
        mock.url()
    ))
    .await;
    assert_eq!(post_chat(&gw, "m", &[]).await.status, 200);
    assert!(
        !gw.logs().lines().any(|l| l.starts_with('{')),
        "{}",
        gw.logs()
    );
}
