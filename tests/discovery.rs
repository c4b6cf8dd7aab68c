//! Discovery through the real gateway: the merged `/v1/models` (openai + ocf fixtures), the
//! `/v1/endpoints` view, background refresh, failing endpoints keeping their models, and
//! endpoints that are dead or hang at start-up.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Bound on every polling loop in this file.
const POLL_DEADLINE: Duration = Duration::from_secs(8);

/// The models an OCF dnt table announces, computed independently of the gateway: every
/// peer's `service` list (may be null), services named `llm`, their `identity_group`
/// entries `model=NAME` (split on the first `=`), without the `*` / `all` wildcards.
fn ocf_expected_models(table: &[u8]) -> BTreeSet<String> {
    let v: Value = serde_json::from_slice(table).expect("fixture is JSON");
    let mut out = BTreeSet::new();
    for peer in v.as_object().expect("table is an object").values() {
        let Some(services) = peer.get("service").and_then(Value::as_array) else {
            continue;
        };
        for s in services {
            if s.get("name").and_then(Value::as_str) != Some("llm") {
                continue;
            }
            let Some(group) = s.get("identity_group").and_then(Value::as_array) else {
                continue;
            };
            for entry in group.iter().filter_map(Value::as_str) {
                if let Some((key, name)) = entry.split_once('=') {
                    if key == "model" && !name.is_empty() && name != "*" && name != "all" {
                        out.insert(name.to_string());
                    }
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_the_union_of_openai_and_ocf_endpoints() {
    let a = start_mock(MockConfig::openai("openai-a", ["model-a", "model-b"])).await;
    let b = start_mock(MockConfig::openai("openai-b", ["model-b", "model-c"])).await;
    let docs_table = fixture_bytes("opentela_docs_head_plus_worker.json");
    let live_table = fixture_bytes("serving_api_dnt_table_live.json");
    let prod_table = fixture_bytes("serving_api_dnt_table_prod_subset.json");
    let docs = start_mock(
        MockConfig::ocf("ocf-docs", Vec::<String>::new()).with_dnt_table(docs_table.clone()),
    )
    .await;
    let live = start_mock(
        MockConfig::ocf("ocf-live", Vec::<String>::new()).with_dnt_table(live_table.clone()),
    )
    .await;
    let prod = start_mock(
        MockConfig::ocf("ocf-prod", Vec::<String>::new()).with_dnt_table(prod_table.clone()),
    )
    .await;

    let gw = Gateway::start(&format!(
        r#"
listen: "127.0.0.1:{{port}}"
endpoints:
  - url: {}
    name: openai-a
  - url: {}
    name: openai-b
    type: openai
  - url: {}
    name: ocf-docs
    type: ocf
  - url: {}
    name: ocf-live
    type: ocf
  - url: {}
    name: ocf-prod
    type: ocf
"#,
        a.url(),
        b.url(),
        docs.url(),
        live.url(),
        prod.url()
    ))
    .await;

    // The expected sets, independently of the gateway's parser.
    let docs_models = ocf_expected_models(&docs_table);
    assert_eq!(
        docs_models,
        BTreeSet::from(["Qwen/Qwen3-8B".to_string()]),
        "docs fixture"
    );
    let prod_models = ocf_expected_models(&prod_table);
    assert_eq!(
        prod_models,
        [
            "Qwen/Qwen3.5-397B-A17B-VoMF",
            "google/gemma-4-31B-it-TsOA",
            "meta-llama/Llama-3.3-70B-Instruct",
            "swiss-ai/Apertus-70B-Instruct-2509",
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>(),
        "prod subset fixture"
    );
    let live_models = ocf_expected_models(&live_table);
    assert!(
        live_models.len() >= 5,
        "the live fixture announces many models: {live_models:?}"
    );
    let mut expected: BTreeSet<String> = ["model-a", "model-b", "model-c"]
        .into_iter()
        .map(String::from)
        .collect();
    expected.extend(docs_models);
    expected.extend(prod_models);
    expected.extend(live_models);

    let v = models_json(&gw).await;
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().expect("data is an array");
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for m in data {
        let id = m["id"].as_str().unwrap_or_else(|| panic!("id: {m}"));
        *counts.entry(id).or_default() += 1;
        assert_eq!(m["object"], "model", "{m}");
        assert!(
            m["created"].is_i64() || m["created"].is_u64(),
            "created must be an integer: {m}"
        );
        assert!(m["owned_by"].is_string(), "owned_by must be a string: {m}");
    }
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "ids listed more than once: {dups:?}");
    let listed: BTreeSet<String> = counts.keys().map(|s| s.to_string()).collect();
    assert_eq!(
        listed,
        expected,
        "missing: {:?}; unexpected: {:?}",
        expected.difference(&listed).collect::<Vec<_>>(),
        listed.difference(&expected).collect::<Vec<_>>()
    );
    // Documented: sorted by id.
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(ids, sorted, "/v1/models is sorted by id");
    // The openai mocks' own metadata is kept.
    let model_a = data.iter().find(|m| m["id"] == "model-a").unwrap();
    assert_eq!(model_a["created"], 1_700_000_000u64, "{model_a}");
    assert_eq!(model_a["owned_by"], "openai-a", "{model_a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_view_shows_every_endpoint_and_no_key() {
    let a = start_mock(MockConfig::openai("openai-a", ["model-a"])).await;
    let b = start_mock(MockConfig::openai("openai-b", ["model-b"])).await;
    let o = start_mock(MockConfig::ocf("ocf-head", ["ocf-model"])).await;
    let gw = Gateway::start(&format!(
        r#"
listen: "127.0.0.1:{{port}}"
endpoints:
  - url: {}
    name: ep-a
    api_key: sk-upstream-SECRET-a
  - url: {}
    name: ep-b
    api_key: sk-upstream-SECRET-b
  - url: {}
    name: ep-ocf
    type: ocf
    api_key: sk-upstream-SECRET-ocf
"#,
        a.url(),
        b.url(),
        o.url()
    ))
    .await;

    let r = get_ok(&gw, "/v1/endpoints").await;
    let (text, v) = (r.text(), r.json());
    for secret in ["SECRET", "sk-upstream", "Bearer"] {
        assert!(
            !text.contains(secret),
            "/v1/endpoints leaks {secret:?}: {text}"
        );
    }
    assert_eq!(v["object"], "list", "{v}");
    let data = v["data"].as_array().expect("data is an array");
    assert_eq!(data.len(), 3, "{v}");
    let expect = [
        ("ep-a", "openai", "model-a", a.url()),
        ("ep-b", "openai", "model-b", b.url()),
        ("ep-ocf", "ocf", "ocf-model", o.url()),
    ];
    for (name, kind, model, url) in expect {
        let e = data
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {v}"));
        assert_eq!(e["type"], kind, "{e}");
        assert_eq!(e["url"], url.as_str(), "{e}");
        assert_eq!(e["models"], json!([model]), "{e}");
        assert_eq!(e["healthy"], true, "{e}");
        assert_eq!(e["has_api_key"], true, "{e}");
        assert_eq!(e["discovery"]["status"], "ok", "{e}");
        assert!(e["discovery"]["error"].is_null(), "{e}");
    }
    // The keys did go upstream (discovery uses them), just not into the view.
    let auths = auth_headers(&a);
    assert!(
        auths.contains(&Some("Bearer sk-upstream-SECRET-a".to_string())),
        "discovery of ep-a carried its key: {auths:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_model_appears_and_removed_model_disappears() {
    let mock = start_mock(MockConfig::openai("up", ["first"])).await;
    let gw = Gateway::start(&format!(
        r#"
listen: "127.0.0.1:{{port}}"
discovery_interval_secs: 1
endpoints:
  - url: {}
    name: up
"#,
        mock.url()
    ))
    .await;
    assert_eq!(model_ids(&gw).await, ["first"]);

    // Added: listed within discovery_interval_secs + 1 s.
    mock.set_models(vec!["first".into(), "second".into()]);
    let elapsed = poll_until(POLL_DEADLINE, || async {
        model_ids(&gw).await.iter().any(|m| m == "second")
    })
    .await
    .expect("added model never appeared in /v1/models");
    assert!(
        elapsed <= Duration::from_secs(2),
        "added model appeared only after {elapsed:?} (interval 1 s)"
    );
    assert_eq!(model_ids(&gw).await, ["first", "second"]);
    let r = post_chat(&gw, "second", &[]).await;
    assert_eq!(r.status, 200, "new model is routable: {}", r.text());

    // Removed: gone within discovery_interval_secs + 1 s, and no longer routable.
    mock.set_models(vec!["second".into()]);
    let elapsed = poll_until(POLL_DEADLINE, || async {
        !model_ids(&gw).await.iter().any(|m| m == "first")
    })
    .await
    .expect("removed model never disappeared from /v1/models");
    assert!(
        elapsed <= Duration::from_secs(2),
        "removed model disappeared only after {elapsed:?} (interval 1 s)"
    );
    assert_eq!(model_ids(&gw).await, ["second"]);
    let r = post_chat(&gw, "first", &[]).await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_found", "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_discovery_keeps_models_and_recovers() {
    let a = start_mock(MockConfig::openai("up-a", ["model-a"])).await;
    let b = start_mock(MockConfig::openai("up-b", ["model-b"])).await;
    let gw = Gateway::start(&format!(
        r#"
listen: "127.0.0.1:{{port}}"
discovery_interval_secs: 1
endpoints:
  - url: {}
    name: ep-a
  - url: {}
    name: ep-b
"#,
        a.url(),
        b.url()
    ))
    .await;
    assert_eq!(model_ids(&gw).await, ["model-a", "model-b"]);

    a.set_discovery_failing(true);
    let failed = poll_until(POLL_DEADLINE, || async {
        endpoint_named(&gw, "ep-a").await["discovery"]["status"] == "failed"
    })
    .await;
    let e = endpoint_named(&gw, "ep-a").await;
    assert!(failed.is_some(), "ep-a never shown failed: {e}");
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["discovery"]["status"], "failed", "{e}");
    assert!(
        e["discovery"]["error"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "a failed endpoint says why: {e}"
    );
    assert!(
        e["discovery"]["consecutive_failures"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{e}"
    );
    assert_eq!(
        e["models"],
        json!(["model-a"]),
        "last good models kept: {e}"
    );
    assert_eq!(endpoint_named(&gw, "ep-b").await["healthy"], true);

    // Still listed and still routable.
    assert_eq!(model_ids(&gw).await, ["model-a", "model-b"]);
    a.clear_records();
    let r = post_chat(&gw, "model-a", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("up-a"));
    assert!(
        a.requests()
            .iter()
            .any(|r| r.path == "/v1/chat/completions"),
        "up-a received the chat request"
    );

    // Recovery.
    a.set_discovery_failing(false);
    let ok = poll_until(POLL_DEADLINE, || async {
        endpoint_named(&gw, "ep-a").await["discovery"]["status"] == "ok"
    })
    .await;
    let e = endpoint_named(&gw, "ep-a").await;
    assert!(ok.is_some(), "ep-a never recovered: {e}");
    assert_eq!(e["healthy"], true, "{e}");
    assert!(e["discovery"]["error"].is_null(), "{e}");
    assert_eq!(e["discovery"]["consecutive_failures"], 0, "{e}");
    assert_eq!(e["models"], json!(["model-a"]), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_at_startup_does_not_stop_the_gateway() {
    let live = start_mock(MockConfig::openai("live", ["live-model"])).await;
    let dead_port = free_port();
    let t0 = Instant::now();
    let gw = Gateway::builder()
        .config(format!(
            r#"
listen: "127.0.0.1:{{port}}"
endpoints:
  - url: http://127.0.0.1:{dead_port}
    name: dead
  - url: {}
    name: live
"#,
            live.url()
        ))
        .ready_timeout(Duration::from_secs(6))
        .start()
        .await;
    assert!(t0.elapsed() < Duration::from_secs(6), "{:?}", t0.elapsed());

    assert_eq!(model_ids(&gw).await, ["live-model"]);
    let r = post_chat(&gw, "live-model", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-mock-name"), Some("live"));

    let e = endpoint_named(&gw, "dead").await;
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["discovery"]["status"], "failed", "{e}");
    assert!(
        e["discovery"]["error"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{e}"
    );
    assert_eq!(e["models"], json!([]), "{e}");
    assert_eq!(
        endpoint_named(&gw, "live").await["discovery"]["status"],
        "ok"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_endpoint_at_startup_does_not_delay_readiness_much() {
    // Accepts TCP connections and holds them without ever answering.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the test needs a handful of connections at most.
        for _ in 0..64 {
            match listener.accept().await {
                Ok((sock, _)) => held.push(sock),
                Err(_) => break,
            }
        }
        // Keep the sockets open until the task is aborted.
        std::future::pending::<()>().await;
        drop(held);
    });
    let live = start_mock(MockConfig::openai("live", ["live-model"])).await;

    let t0 = Instant::now();
    let gw = Gateway::builder()
        .config(format!(
            r#"
listen: "127.0.0.1:{{port}}"
endpoints:
  - url: http://127.0.0.1:{hang_port}
    name: hang
  - url: {}
    name: live
"#,
            live.url()
        ))
        .ready_timeout(Duration::from_secs(6))
        .start()
        .await;
    let ready_after = t0.elapsed();
    assert!(
        ready_after < Duration::from_secs(6),
        "ready only after {ready_after:?}"
    );

    assert_eq!(model_ids(&gw).await, ["live-model"]);
    let r = post_chat(&gw, "live-model", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let e = endpoint_named(&gw, "hang").await;
    assert_eq!(e["healthy"], false, "{e}");
    assert_eq!(e["discovery"]["status"], "failed", "{e}");
    holder.abort();
}
