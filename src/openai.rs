//! The few OpenAI shapes the gateway reads or writes: the `model` of a request body, and the
//! model list.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// Why a body has no routable model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeekError {
    /// Not a JSON object (message from the parser, with position).
    NotJson(String),
}

/// Read the top-level `model` of a JSON body without building a JSON tree.
/// `Ok(None)`: a JSON object without a string `model`.
pub fn peek_model(body: &[u8]) -> Result<Option<String>, PeekError> {
    /// Only `model` is kept; serde skips every other field without building values, while
    /// still checking that the whole body is well-formed JSON.
    #[derive(Deserialize)]
    struct Peek<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
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
    match serde_json::from_str::<Peek>(text) {
        Ok(p) => Ok(p.model.map(Cow::into_owned)),
        Err(e) => Err(PeekError::NotJson(e.to_string())),
    }
}

/// The body with its top-level `model` replaced by `model` and every other byte unchanged
/// (for a fallback model). `None` when the body has no top-level `model` to replace.
pub fn with_model(body: &[u8], model: &str) -> Option<bytes::Bytes> {
    /// The raw text of `model`'s value, borrowed from the body: its position is the span
    /// to replace.
    #[derive(Deserialize)]
    struct Span<'a> {
        #[serde(borrow)]
        model: &'a serde_json::value::RawValue,
    }
    let text = std::str::from_utf8(body).ok()?;
    let span = serde_json::from_str::<Span>(text).ok()?.model.get();
    let start = (span.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let end = start + span.len();
    let value = serde_json::to_string(model).ok()?;
    let mut out = Vec::with_capacity(body.len() - span.len() + value.len());
    out.extend_from_slice(body.get(..start)?);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(body.get(end..)?);
    Some(out.into())
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
