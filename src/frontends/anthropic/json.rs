//! JSON helpers shared by the translations. Values are read as raw JSON borrowed from the body
//! and checked one field at a time: a field of the wrong type is then told apart from a missing
//! one, no error message repeats body content (serde's messages quote the values they refuse),
//! and JSON strings can be copied to the other shape as they were written, escapes and all.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A JSON value as written in the body.
pub(super) type Raw<'a> = &'a RawValue;

/// A JSON string, borrowed from the body when it holds no escape.
#[derive(Deserialize)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// The text of a JSON string value; `None` for any other value.
pub(super) fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Str>(raw.get()).ok().map(|s| s.0)
}

/// `raw` itself when it is a JSON string (a raw value is valid JSON, so one that starts with a
/// quote is a whole string).
pub(super) fn json_string(raw: &RawValue) -> Option<&RawValue> {
    raw.get().starts_with('"').then_some(raw)
}

/// A JSON string other than `""`.
pub(super) fn nonempty(raw: Option<Raw<'_>>) -> Option<Raw<'_>> {
    raw.and_then(json_string).filter(|raw| raw.get() != "\"\"")
}

pub(super) fn parse<'a, T: Deserialize<'a>>(raw: Raw<'a>) -> Option<T> {
    serde_json::from_str(raw.get()).ok()
}

/// A struct read from a JSON object only: serde also reads a struct from an array of its
/// fields' values, which no API here sends.
pub(super) fn object<'a, T: Deserialize<'a>>(raw: Raw<'a>) -> Option<T> {
    raw.get().starts_with('{').then(|| parse(raw)).flatten()
}

/// A struct read from a whole body that must be a JSON object.
pub(super) fn object_slice<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Option<T> {
    let start = data.iter().position(|b| !b.is_ascii_whitespace())?;
    if data.get(start) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(data).ok()
}

/// One of the shapes these modules write. Serializing them cannot fail (string keys only, no
/// I/O), so an empty body is only a formality.
pub(super) fn to_bytes<T: Serialize>(value: &T) -> Bytes {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .unwrap_or_default()
}
