//! The few OpenAI shapes the gateway reads or writes: the `model` (and `stream` options) of a
//! request body, and the model list.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Why a body has no routable model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeekError {
    /// Not a JSON object (message from the parser, with position).
    NotJson(String),
}

/// The top-level fields of a request body the gateway reads, borrowed from the body.
#[derive(Debug, Default, Deserialize)]
pub struct RequestFields<'a> {
    /// The model to route by.
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    /// Kept raw: only `true` matters, and any other value is the upstream's to judge.
    #[serde(borrow, default)]
    stream: Option<&'a RawValue>,
    #[serde(borrow, default)]
    stream_options: Option<&'a RawValue>,
    /// What a conversation is known by, for `prefix_affinity` (kept raw: read only then).
    #[serde(borrow, default)]
    pub user: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub prompt_cache_key: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub input: Option<&'a RawValue>,
}

impl RequestFields<'_> {
    /// A stream whose client did not ask for its usage (`stream_options.include_usage`).
    pub fn stream_without_usage(&self) -> bool {
        #[derive(Deserialize)]
        struct StreamOptions {
            include_usage: Option<bool>,
        }
        let asked = self.stream_options.is_some_and(|raw| {
            serde_json::from_str::<StreamOptions>(raw.get())
                .is_ok_and(|o| o.include_usage == Some(true))
        });
        self.stream.is_some_and(|raw| raw.get() == "true") && !asked
    }
}

/// Read the fields the gateway needs of a JSON body without building a JSON tree: serde skips
/// every other field without building values, while still checking that the whole body is
/// well-formed JSON. A duplicated field among those read is an error (no first-vs-last
/// ambiguity with the upstream).
pub fn peek_request(body: &[u8]) -> Result<RequestFields<'_>, PeekError> {
    // serde_json checks UTF-8 only in the strings it reads, not in those it skips: check
    // the whole body first (JSON is UTF-8), else a body that is not JSON would be routed.
    let text = std::str::from_utf8(body)
        .map_err(|e| PeekError::NotJson(format!("not UTF-8 JSON: {e}")))?;
    // A derived struct also deserializes from a JSON array (`["m"]` as model "m", `[]` as
    // no model): only an object is a request body.
    if !text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
    {
        return Err(PeekError::NotJson("not a JSON object".into()));
    }
    serde_json::from_str::<RequestFields>(text).map_err(|e| PeekError::NotJson(e.to_string()))
}

/// The top-level `model` of a JSON body. `Ok(None)`: a JSON object without a string `model`.
pub fn peek_model(body: &[u8]) -> Result<Option<String>, PeekError> {
    peek_request(body).map(|f| f.model.map(Cow::into_owned))
}

/// The body of a stream request with `stream_options.include_usage` set to `true`, every
/// other byte unchanged: `stream_options` is added first in the object when absent, or
/// rewritten in place. `None` when the body has no object to add it to, or its
/// `stream_options` is neither an object nor null (the upstream will refuse it anyway).
pub fn with_include_usage(body: &[u8]) -> Option<bytes::Bytes> {
    #[derive(Deserialize)]
    struct Span<'a> {
        /// `Some` for a `null` too (a plain `Option` reads `null` as `None`).
        #[serde(borrow, default, deserialize_with = "present")]
        stream_options: Option<&'a RawValue>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    let text = std::str::from_utf8(body).ok()?;
    let options = serde_json::from_str::<Span>(text).ok()?.stream_options;
    let (start, end, value) = match options {
        None => {
            let open = text.find('{')? + 1;
            let value = r#""stream_options":{"include_usage":true},"#.to_string();
            (open, open, value)
        }
        Some(raw) => {
            let mut options = match serde_json::from_str::<serde_json::Value>(raw.get()).ok()? {
                serde_json::Value::Null => serde_json::Map::new(),
                serde_json::Value::Object(o) => o,
                _ => return None,
            };
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            let start = (raw.get().as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
            let value = serde_json::to_string(&options).ok()?;
            (start, start + raw.get().len(), value)
        }
    };
    Some(splice(body, start, end, &value))
}

/// `body` with `start..end` replaced by `value`.
fn splice(body: &[u8], start: usize, end: usize, value: &str) -> bytes::Bytes {
    let mut out = Vec::with_capacity(body.len() - (end - start) + value.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[end..]);
    out.into()
}

/// The body with its top-level `model` replaced by `model` and every other byte unchanged
/// (for a fallback model). `None` when the body has no top-level `model` to replace.
pub fn with_model(body: &[u8], model: &str) -> Option<bytes::Bytes> {
    /// The raw text of `model`'s value, borrowed from the body: its position is the span
    /// to replace.
    #[derive(Deserialize)]
    struct Span<'a> {
        #[serde(borrow)]
        model: &'a RawValue,
    }
    let text = std::str::from_utf8(body).ok()?;
    let span = serde_json::from_str::<Span>(text).ok()?.model.get();
    let start = (span.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start + span.len();
    let value = serde_json::to_string(model).ok()?;
    Some(splice(body, start, end, &value))
}

/// One model as `/v1/models` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelEntry {
    pub id: String,
    pub object: &'static str,
    pub created: i64,
    pub owned_by: String,
}

/// `{"object":"list","data":[...]}`
#[derive(Serialize)]
pub struct List<T> {
    pub object: &'static str,
    pub data: Vec<T>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>) -> Self {
        List {
            object: "list",
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_model_replaces_only_the_top_level_model() {
        let body = br#"{"messages":[{"role":"user","content":"model: \"a\""}],  "model" : "big\u0021" ,"stream":true}"#;
        let out = with_model(body, "small \"b\"").unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"messages":[{"role":"user","content":"model: \"a\""}],  "model" : "small \"b\"" ,"stream":true}"#
        );
        assert_eq!(peek_model(&out), Ok(Some("small \"b\"".into())));
        assert_eq!(with_model(br#"{"messages":[]}"#, "m"), None);
        assert_eq!(with_model(b"not json", "m"), None);
    }

    #[test]
    fn a_stream_without_usage_is_told_apart() {
        let without = |b: &[u8]| peek_request(b).unwrap().stream_without_usage();
        assert!(without(br#"{"model":"m","stream":true}"#));
        assert!(without(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#
        ));
        assert!(without(
            br#"{"model":"m","stream":true,"stream_options":null}"#
        ));
        assert!(!without(
            br#"{"model":"m","stream" : true,"stream_options":{"include_usage":true}}"#
        ));
        assert!(!without(br#"{"model":"m","stream":false}"#));
        assert!(!without(br#"{"model":"m","stream":"true"}"#));
        assert!(!without(br#"{"model":"m"}"#));
        assert!(matches!(
            peek_request(br#"{"model":"m","stream":true,"stream":false}"#),
            Err(PeekError::NotJson(_))
        ));
    }

    #[test]
    fn include_usage_is_added_or_set_and_nothing_else_changes() {
        let cases: &[(&[u8], &str)] = &[
            (
                br#" {"model":"m","stream":true}"#,
                r#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#,
            ),
            (
                br#"{"model":"m","stream_options" : {"x":1,"include_usage":false},"stream":true}"#,
                r#"{"model":"m","stream_options" : {"include_usage":true,"x":1},"stream":true}"#,
            ),
            (
                br#"{"model":"m","stream_options":null,"stream":true}"#,
                r#"{"model":"m","stream_options":{"include_usage":true},"stream":true}"#,
            ),
        ];
        for (body, want) in cases {
            let out = with_include_usage(body).unwrap();
            assert_eq!(std::str::from_utf8(&out).unwrap(), *want);
            assert!(!peek_request(&out).unwrap().stream_without_usage());
        }
        assert_eq!(with_include_usage(br#"{"stream_options":[1]}"#), None);
        assert_eq!(with_include_usage(b"[]"), None);
    }

    #[test]
    fn finds_model_anywhere_at_top_level() {
        let body = br#"{"messages":[{"role":"user","content":"hi \"model\": x"}],"stream":true,"model":"m-1"}"#;
        assert_eq!(peek_model(body), Ok(Some("m-1".into())));
        assert_eq!(
            peek_model(br#"{"model":"a\/b\u00e9"}"#),
            Ok(Some("a/b\u{e9}".into()))
        );
    }

    #[test]
    fn nested_model_is_not_the_model() {
        assert_eq!(peek_model(br#"{"input":{"model":"x"},"n":1}"#), Ok(None));
    }

    #[test]
    fn rejects_non_objects_and_broken_json() {
        for bad in [
            &b"{"[..],
            b"[1]",
            b"not json",
            b"{\"model\":1}",
            b"{\"model\":\"a\"} x",
        ] {
            assert!(
                matches!(peek_model(bad), Err(PeekError::NotJson(_))),
                "{bad:?}"
            );
        }
        assert_eq!(peek_model(b"{}"), Ok(None));
        assert_eq!(peek_model(br#"{"model":null}"#), Ok(None));
    }

    /// Found by fuzzing (fuzz/ peek_model): a JSON array was read as a body, its first
    /// element as the model.
    #[test]
    fn rejects_arrays() {
        for bad in [&b"[]"[..], b"[\"m\"]", b" \n[null]", b"[\"m\"] "] {
            assert!(
                matches!(peek_model(bad), Err(PeekError::NotJson(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            peek_model(b" \t\r\n{\"model\":\"m\"}"),
            Ok(Some("m".into()))
        );
    }

    /// Found by fuzzing (fuzz/ peek_model): invalid UTF-8 in a skipped string was accepted
    /// and the body routed by its `model`, though it is not JSON.
    #[test]
    fn rejects_invalid_utf8_anywhere() {
        let body = b"{\"model\":\"mock-embed\",\"input\":[\"hello\",\"worl\xe4\"],\"encoding_format\":\"float\",\"dimensions\":-7}";
        assert!(serde_json::from_slice::<serde_json::Value>(body).is_err());
        assert!(matches!(peek_model(body), Err(PeekError::NotJson(_))));
    }
}
