//! Request ids: a client's safe `x-request-id` is kept, otherwise one is made; it goes upstream
//! and comes back on every response: proxied, streamed, large-body, local and error answers.

mod common;

use std::collections::HashSet;

use common::*;

const ID: &str = "x-request-id";

async fn gateway(mock: &MockServer) -> Gateway {
    let gw = Gateway::start(&format!(
        "listen: \"127.0.0.1:{{port}}\"\nthreads: 2\nendpoints:\n  - url: {}\n    name: up\n",
        mock.url()
    ))
    .await;
    let listed = || async { model_ids(&gw).await == ["m"] };
    assert!(poll_until(std::time::Duration::from_secs(10), listed)
        .await
        .is_some());
    gw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_goes_upstream_and_back_on_every_answer() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = gateway(&mock).await;

    let r = post_chat(&gw, "m", &[(ID, "client-42")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header(ID), Some("client-42"));
    assert_eq!(
        inference_requests(&mock).pop().unwrap().header(ID),
        Some("client-42")
    );

    let mut s = post_stream(
        &gw.at("/v1/chat/completions"),
        chat_body("m", true),
        &[(ID, "client-43")],
    )
    .await;
    assert_eq!(s.header(ID), Some("client-43"));
    s.read_to_end().await;

    let large = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "z".repeat(100_000)}]});
    let r = post_json(
        &gw.at("/v1/chat/completions"),
        large.to_string(),
        &[(ID, "client-44")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header(ID), Some("client-44"));
    assert_eq!(
        inference_requests(&mock).pop().unwrap().header(ID),
        Some("client-44")
    );

    // The gateway's own answers: an error and a local route.
    let r = post_chat(&gw, "no-such-model", &[(ID, "client-45")]).await;
    assert_openai_error(&r, 404, "model_not_found");
    assert_eq!(r.header(ID), Some("client-45"));
    let r = Client::new()
        .request(
            "GET",
            &gw.at("/v1/models"),
            &[(ID, "client-46")],
            ReqBody::empty(),
        )
        .await;
    assert_eq!(r.header(ID), Some("client-46"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_unsafe_ids_are_replaced_by_unique_ones() {
    let mock = start_mock(MockConfig::openai("up", ["m"])).await;
    let gw = gateway(&mock).await;
    let mut seen = HashSet::new();
    for client_id in [
        None,
        Some("has space"),
        Some("<script>"),
        Some(&*"a".repeat(200)),
    ] {
        let headers: Vec<(&str, &str)> = client_id.map(|v| (ID, v)).into_iter().collect();
        let r = post_chat(&gw, "m", &headers).await;
        assert_eq!(r.status, 200);
        let id = r.header(ID).expect("an id is always returned").to_string();
        assert_ne!(Some(id.as_str()), client_id);
        assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(
            inference_requests(&mock).pop().unwrap().header(ID),
            Some(id.as_str())
        );
        assert!(seen.insert(id), "ids are unique");
    }
}
