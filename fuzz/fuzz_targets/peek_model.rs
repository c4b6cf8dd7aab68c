//! `ai_proxy::openai::peek_model` on arbitrary request bodies (what any client can send).
//!
//! Beyond "no panic", its answer must agree with a full `serde_json::Value` parse:
//! - `Ok(Some(m))`: the body is a JSON object whose top-level `"model"` is the string `m`;
//! - `Ok(None)`: the body is a JSON object with no `"model"` or `"model": null`;
//! - a JSON object with a string (or null/absent) `model` is never an `Err`, except for a
//!   duplicated `"model"`, `"stream"` or `"stream_options"` key (rejecting it is deliberate: no
//!   first-vs-last ambiguity with the upstream).
//!
//! Where `Value` refuses a body that is grammatical JSON (numbers beyond f64, escaped lone
//! surrogates, nesting deeper than its recursion limit), `peek_model`, which never builds
//! the skipped values, may accept it; those cases are not checked.
#![no_main]

use ai_proxy::openai::{peek_model, PeekError};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// `Value` errors for JSON that is grammatical but that `Value` will not represent.
fn value_only_limit(e: &serde_json::Error) -> bool {
    let m = e.to_string();
    m.contains("number out of range")
        || m.contains("lone leading surrogate")
        || m.contains("unexpected end of hex escape")
        || m.contains("recursion limit exceeded")
}

fuzz_target!(|data: &[u8]| {
    let got = peek_model(data);
    let full = serde_json::from_slice::<Value>(data);
    match (&got, &full) {
        (_, Ok(Value::Object(o))) => {
            let dup = matches!(&got, Err(PeekError::NotJson(m)) if m.contains("duplicate field `"));
            match o.get("model") {
                Some(Value::String(s)) => {
                    assert!(
                        dup || got == Ok(Some(s.clone())),
                        "object with model {s:?}: peek_model gave {got:?}"
                    )
                }
                None | Some(Value::Null) => assert!(
                    dup || got == Ok(None),
                    "object without a string model: peek_model gave {got:?}"
                ),
                Some(other) => assert!(
                    got.is_err(),
                    "model {other} is not a string, yet peek_model gave {got:?}"
                ),
            }
        }
        (Ok(m), Ok(v)) => panic!("not a JSON object ({v}), yet peek_model gave Ok({m:?})"),
        (Ok(m), Err(e)) => assert!(
            value_only_limit(e),
            "not JSON ({e}), yet peek_model gave Ok({m:?})"
        ),
        (Err(_), Ok(_) | Err(_)) => {}
    }
});
