//! `ai_proxy::frontends::anthropic` on arbitrary bytes: the same input as a Messages request
//! (what any client can send), as an upstream's chat completion and as an upstream's stream,
//! split where the first byte says.
//!
//! Beyond "no panic": an accepted request's chat body is a JSON object routed by the model it
//! is given; a translated answer is a JSON object naming the client's model; the stream's
//! events are whole `event:`/`data:` pairs of JSON objects, and do not depend on the split.
#![no_main]

use ai_proxy::frontends::anthropic::{message_from_chat, ChatRequest, Reply, StreamTranslator};
use ai_proxy::openai::{peek_model, peek_request};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn reply() -> Reply {
    let request = br#"{"model":"claude","max_tokens":1,"messages":[],"stop_sequences":["END"]}"#;
    ChatRequest::from_messages(request)
        .expect("a valid request")
        .reply()
}

/// The stream in reads ending at `cuts`, then ended: the output and what `finish` said.
fn translate(reply: &Reply, stream: &[u8], cuts: &[usize]) -> (Vec<u8>, bool) {
    let mut translator = StreamTranslator::new(reply.clone());
    let mut out = BytesMut::new();
    let mut from = 0;
    for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
        translator.push(&stream[from..to], &mut out);
        from = to;
    }
    let complete = translator.finish(&mut out);
    (out.to_vec(), complete)
}

fn check_events(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("UTF-8 events");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "an unfinished event"
    );
    for event in text.split_terminator("\n\n") {
        let (name, data) = event.split_once('\n').expect("two lines");
        assert!(name.starts_with("event: "), "{name}");
        let data = data.strip_prefix("data: ").expect("a data line");
        assert!(
            peek_request(data.as_bytes()).is_ok(),
            "data is not a JSON object: {data}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&at, input)) = data.split_first() else {
        return;
    };
    // One request: the ids made up for answers without them are the same in every run.
    let reply = reply();
    if let Ok(request) = ChatRequest::from_messages(input) {
        let body = request.body("x");
        assert_eq!(peek_model(&body), Ok(Some("x".to_string())));
    }
    if let Ok(message) = message_from_chat(input, &reply) {
        assert_eq!(peek_model(&message), Ok(Some("claude".to_string())));
    }
    let cut = input.len() * usize::from(at) / 255;
    let whole = translate(&reply, input, &[]);
    check_events(&whole.0);
    assert_eq!(
        translate(&reply, input, &[cut]),
        whole,
        "depends on the split at {cut}"
    );
});
