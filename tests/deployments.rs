//! Deployments: a model on one server is the unit of health. One model's faults take out only
//! that model there; an address's faults take out all its models. Declared models, public
//! names (the body's `model` rewritten to the upstream id) and aliases.

mod common;

use std::time::{Duration, Instant};

use ai_proxy_mock::Fault;
use common::*;
use serde_json::Value;

/// A gateway in front of `mock` (and its `extra` endpoint YAML), round robin, with the
/// fallback `A -> F`.
async fn gateway(mock: &MockServer, probe_secs: u64, extra: &str) -> Gateway {
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\nconnect_timeout_secs: 1\n\
         discovery_interval_secs: {probe_secs}\nbalancing: {{policy: round_robin}}\n\
         fallbacks: {{A: [F]}}\nendpoints:\n  - url: {}\n    name: {}\n{extra}",
        mock.url(),
        mock.name()
    );
    let gw = Gateway::start(&yaml).await;
    wait_discovered(&gw, mock.name()).await;
    gw
}

/// The health of `model` on endpoint `name`, from `/v1/endpoints`.
async fn deployment_health(gw: &Gateway, name: &str, model: &str) -> Value {
    let ep = endpoint_named(gw, name).await;
    ep["deployments"]
        .as_array()
        .expect("deployments listed")
        .iter()
        .find(|d| d["model"] == model)
        .unwrap_or_else(|| panic!("no deployment of {model} in {ep}"))["health"]
        .clone()
}

fn routed_model(r: &Resp) -> &str {
    r.header("x-ai-proxy-model").unwrap_or("")
}

/// `model` answering `fault` on a server that also serves B and F ejects only (server, A).
async fn a_model_fault_ejects_only_that_deployment(fault: Fault, status: &str) {
    let mock = start_mock(MockConfig::openai("multi", ["A", "B", "F"])).await;
    mock.set_fault_for("A", fault);
    let gw = gateway(&mock, 60, "").await;

    // Each request for A fails on A, then is served by its fallback F on the same server.
    for i in 0..5 {
        let r = post_chat(&gw, "A", &[]).await;
        assert_eq!(r.status, 200, "request {i} for A: {}", r.text());
        assert_eq!(routed_model(&r), "F", "request {i} for A");
    }
    assert_eq!(deployment_health(&gw, "multi", "A").await["status"], status);
    for m in ["B", "F"] {
        assert_eq!(
            deployment_health(&gw, "multi", m).await["status"],
            "healthy",
            "{m}"
        );
    }
    let ep = endpoint_named(&gw, "multi").await;
    assert_eq!(
        ep["health"]["status"], "healthy",
        "the address stays in service: {ep}"
    );

    // During A's ejection, B and F serve every request, and A's go to F without trying A.
    let before = inference_requests(&mock).len();
    for i in 0..200 {
        for m in ["B", "F"] {
            let r = post_chat(&gw, m, &[]).await;
            assert_eq!(r.status, 200, "request {i} for {m}: {}", r.text());
            assert_eq!(routed_model(&r), m);
        }
    }
    for i in 0..20 {
        let r = post_chat(&gw, "A", &[]).await;
        assert_eq!(r.status, 200, "request {i} for A: {}", r.text());
        assert_eq!(routed_model(&r), "F");
    }
    let sent_to_a = inference_requests(&mock)[before..]
        .iter()
        .filter(|r| r.json()["model"] == "A")
        .count();
    assert_eq!(sent_to_a, 0, "an ejected deployment gets no traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_503s_eject_only_that_model_on_its_server() {
    let fault = Fault::Status {
        status: 503,
        retry_after: None,
    };
    a_model_fault_ejects_only_that_deployment(fault, "ejected").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_models_429s_hold_only_that_model_on_its_server() {
    let fault = Fault::Status {
        status: 429,
        retry_after: Some(30),
    };
    a_model_fault_ejects_only_that_deployment(fault, "rate_limited").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_ejects_every_model_of_the_address_until_it_is_back() {
    let mock = start_mock(MockConfig::openai("srv", ["A", "B"])).await;
    let addr = mock.addr();
    let gw = gateway(&mock, 1, "").await;
    assert_eq!(post_chat(&gw, "A", &[]).await.status, 200);
    mock.shutdown().await;

    // Refused connects are the address's fault (requests for B, then the probe): it is out,
    // with both its models.
    let ejected = || async {
        let r = post_chat(&gw, "B", &[]).await;
        assert!(r.status >= 500, "{}", r.text());
        endpoint_named(&gw, "srv").await["health"]["status"] == "ejected"
    };
    assert!(poll_until(Duration::from_secs(3), ejected).await.is_some());
    for m in ["A", "B"] {
        let r = post_chat(&gw, m, &[]).await;
        assert_openai_error(&r, 503, "no_healthy_endpoint");
        let d = deployment_health(&gw, "srv", m).await;
        assert_eq!(d["status"], "healthy", "the models are not to blame: {d}");
    }

    // Back on the same address: served again within one probe interval (1 s).
    let back = MockServer::start_on(MockConfig::openai("srv", ["A", "B"]), addr)
        .await
        .expect("restart the mock on its address");
    let returned = Instant::now();
    let serves = || async { post_chat(&gw, "A", &[]).await.status == 200 };
    assert!(poll_until(Duration::from_secs(5), serves).await.is_some());
    assert!(
        returned.elapsed() < Duration::from_millis(2500),
        "{:?}",
        returned.elapsed()
    );
    assert_eq!(post_chat(&gw, "B", &[]).await.status, 200);
    assert!(!inference_requests(&back).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_models_public_names_and_aliases() {
    let listed = start_mock(MockConfig::openai("listed", ["org/listed-model-v1"])).await;
    let silent = start_mock(MockConfig::openai("silent", ["unrelated"])).await;
    let extra = format!(
        "    models:\n      - unlisted\n      - {{id: org/listed-model-v1, name: short}}\n\
         \x20 - url: {}\n    name: silent\n    discover: false\n    models:\n      - {{id: org/long-upstream-id, name: long}}\n\
         aliases: {{gpt-4o: short, l: long, u: unlisted}}\n",
        silent.url()
    );
    let gw = gateway(&listed, 60, &extra).await;
    wait_discovered(&gw, "silent").await;

    let mut ids = model_ids(&gw).await;
    ids.sort();
    assert_eq!(ids, ["gpt-4o", "l", "long", "short", "u", "unlisted"]);

    // A model the server does not list is routed once declared, under its own id.
    let r = post_chat(&gw, "unlisted", &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        inference_requests(&listed).last().unwrap().json()["model"],
        "unlisted"
    );

    // Public names and aliases reach the upstream as its id, small bodies and large ones.
    for (asked, mock, upstream_id) in [
        ("short", &listed, "org/listed-model-v1"),
        ("gpt-4o", &listed, "org/listed-model-v1"),
        ("long", &silent, "org/long-upstream-id"),
        ("l", &silent, "org/long-upstream-id"),
        ("u", &listed, "unlisted"),
    ] {
        for kib in [1, 200] {
            let body = serde_json::json!({
                "model": asked,
                "messages": [{"role": "user", "content": "x".repeat(kib * 1024)}],
            })
            .to_string();
            let r = post_json(&gw.at("/v1/chat/completions"), body, &[]).await;
            assert_eq!(r.status, 200, "{asked} ({kib} KiB): {}", r.text());
            let sent = inference_requests(mock).last().unwrap().json();
            assert_eq!(sent["model"], upstream_id, "{asked} ({kib} KiB)");
            let content = sent["messages"][0]["content"].as_str().unwrap().len();
            assert_eq!(content, kib * 1024, "the rest of the body is unchanged");
        }
    }

    // The `discover: false` endpoint was never asked for its model list.
    let gets: Vec<String> = silent
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path.clone())
        .collect();
    assert!(!gets.is_empty(), "it is probed");
    assert!(gets.iter().all(|p| p != "/v1/models"), "{gets:?}");
    let unknown = post_chat(&gw, "unrelated", &[]).await;
    assert_openai_error(&unknown, 404, "model_not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_bodies_on_model_routes_are_a_400_and_never_sent_upstream() {
    let mock = start_mock(MockConfig::openai("m", ["A"])).await;
    let gw = gateway(&mock, 60, "").await;
    for path in ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] {
        let r = post_json(&gw.at(path), "", &[]).await;
        let e = assert_openai_error(&r, 400, "invalid_request");
        assert!(
            e["message"].as_str().unwrap().contains("empty"),
            "{path}: {e}"
        );
    }
    assert!(inference_requests(&mock).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_transcription_reaches_the_one_server_of_its_model() {
    let chat = start_mock(MockConfig::openai("chat", ["llama"])).await;
    let asr = start_mock(MockConfig::openai("asr", ["openai/whisper-large-v3"])).await;
    let extra = format!(
        "    type: openai\n  - url: {}\n    name: asr\n    models:\n      - {{id: openai/whisper-large-v3, name: whisper-1}}\n",
        asr.url()
    );
    let gw = gateway(&chat, 60, &extra).await;
    wait_discovered(&gw, "asr").await;

    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-client", max_retries=0)
audio = b"RIFF" + bytes(200 * 1024)
for _ in range(3):
    t = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", audio, "audio/wav"))
    print(t.text)
"#;
    let (python, base) = (sdk_python(), gw.at(""));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(base)
            .output()
    })
    .await
    .unwrap()
    .expect("run the SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["transcribed by asr"; 3]
    );
    assert!(
        inference_requests(&chat).is_empty(),
        "the chat server got none"
    );
    let sent = inference_requests(&asr);
    assert_eq!(sent.len(), 3);
    let body = String::from_utf8_lossy(&sent[0].body);
    assert!(
        body.contains("openai/whisper-large-v3"),
        "the upstream id is sent"
    );
    assert!(!body.contains("whisper-1"), "not the public name");
    assert!(sent[0].body.len() > 200 * 1024, "the whole file arrives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multipart_request_falls_back_with_its_model_field_rewritten() {
    let asr = start_mock(MockConfig::openai("asr", ["openai/whisper-large-v3"])).await;
    let small = start_mock(MockConfig::openai("small", ["whisper-small"])).await;
    asr.set_fault(Some(Fault::Status {
        status: 503,
        retry_after: None,
    }));
    let yaml = format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\ntimeout_secs: 10\n\
         fallbacks: {{whisper-1: [whisper-small]}}\nendpoints:\n\
         \x20 - url: {}\n    name: asr\n    models:\n      - {{id: openai/whisper-large-v3, name: whisper-1}}\n\
         \x20 - url: {}\n    name: small\n",
        asr.url(),
        small.url()
    );
    let gw = Gateway::start(&yaml).await;
    wait_discovered(&gw, "asr").await;
    wait_discovered(&gw, "small").await;

    // A body inside Pingora's retry buffer and one over it (the large-body path).
    let script = r#"
import sys, openai
client = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="sk-client", max_retries=0)
for kib in (8, 200):
    audio = b"RIFF" + bytes(kib * 1024)
    r = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1", file=("a.wav", audio, "audio/wav"))
    print(r.headers.get("x-ai-proxy-model"), r.parse().text)
"#;
    let (python, base) = (sdk_python(), gw.at(""));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(base)
            .output()
    })
    .await
    .unwrap()
    .expect("run the SDK");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["whisper-small transcribed by small"; 2]
    );
    let sent = inference_requests(&small);
    assert_eq!(sent.len(), 2);
    for (r, kib) in sent.iter().zip([8, 200]) {
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            body.contains("\r\n\r\nwhisper-small\r\n"),
            "{kib} KiB: the field names the fallback"
        );
        assert!(!body.contains("whisper-1"), "{kib} KiB");
        assert!(
            r.body.len() > kib * 1024,
            "{kib} KiB: the whole file arrives"
        );
    }
    assert!(
        !inference_requests(&asr).is_empty(),
        "the failing model was tried first"
    );
}
