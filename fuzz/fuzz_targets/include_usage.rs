//! `ai_proxy::openai::with_include_usage`, the `stream_usage: force` rewrite of a request body,
//! on arbitrary bodies. Whenever a body is routable and a stream without usage asked for,
//! the rewrite must give JSON that asks for usage, with every other top-level field unchanged.
#![no_main]

use ai_proxy::openai::{peek_request, with_include_usage};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let out = with_include_usage(body);
    let Ok(fields) = peek_request(body) else {
        return;
    };
    if !fields.stream_without_usage() {
        return;
    }
    let Ok(Value::Object(before)) = serde_json::from_slice::<Value>(body) else {
        return; // beyond what `Value` represents (deep nesting, huge numbers)
    };
    let options_ok = matches!(
        before.get("stream_options"),
        None | Some(Value::Null | Value::Object(_))
    );
    let Some(out) = out else {
        assert!(!options_ok, "no rewrite for {before:?}");
        return;
    };
    let Ok(Value::Object(after)) = serde_json::from_slice::<Value>(&out) else {
        panic!(
            "the rewrite is not a JSON object: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(after["stream_options"]["include_usage"], Value::Bool(true));
    for (k, v) in &before {
        if k != "stream_options" {
            assert_eq!(after.get(k), Some(v), "{k} changed");
        }
    }
    assert_eq!(
        after.len(),
        before.len() + usize::from(!before.contains_key("stream_options"))
    );
    let again = peek_request(&out).expect("the rewrite peeks");
    assert!(!again.stream_without_usage());
});
