//! `ai_proxy::openai::with_model`, the fallback rewrite of a request body's `model`, on
//! arbitrary bodies and model names. The first input byte is the new name's length.
//!
//! Whenever `peek_model` routes a body by its model, the rewrite must succeed, route by the
//! new name, and leave every other part of the body as it was (compared as JSON values when
//! `serde_json::Value` can represent the body).
#![no_main]

use ai_proxy::openai::{peek_model, with_model};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (name, body) = rest.split_at(n);
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    let rewritten = with_model(body, name);
    if !matches!(peek_model(body), Ok(Some(_))) {
        return;
    }
    let out = rewritten.expect("a routable body can be rewritten");
    assert_eq!(peek_model(&out), Ok(Some(name.to_string())));
    if let (Ok(Value::Object(mut before)), Ok(Value::Object(mut after))) = (
        serde_json::from_slice::<Value>(body),
        serde_json::from_slice::<Value>(&out),
    ) {
        before.remove("model");
        after.remove("model");
        assert_eq!(before, after, "only the model changes");
    }
});
