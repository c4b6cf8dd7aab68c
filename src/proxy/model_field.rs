//! Where a request body names its model, so that one mechanism names it otherwise wherever
//! that is needed: for a fallback model, and for a deployment that knows the model by another
//! id. Every other byte of the body is kept.

use std::ops::Range;

use bytes::Bytes;

use crate::multipart;
use crate::openai::with_model;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) enum ModelField {
    /// The top-level `model` of a JSON object.
    #[default]
    Json,
    /// The value of a multipart form's `model` field, at this range of the body.
    Multipart(Range<usize>),
}

impl ModelField {
    /// `body` with its model named `model`, and where that body names it. `None` when the
    /// body has no model to replace.
    pub fn rename(&self, body: &[u8], model: &str) -> Option<(Bytes, ModelField)> {
        match self {
            ModelField::Json => with_model(body, model).map(|b| (b, ModelField::Json)),
            ModelField::Multipart(at) => {
                let renamed = multipart::with_value(body, at.clone(), model);
                Some((
                    renamed,
                    ModelField::Multipart(at.start..at.start + model.len()),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multipart_value_is_replaced_and_its_new_place_returned() {
        let body = b"--b\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nw\r\n--b--\r\n";
        let at = body.windows(3).position(|w| w == b"\nw\r").unwrap() + 1;
        let field = ModelField::Multipart(at..at + 1);
        let (once, field) = field.rename(body, "whisper-large").unwrap();
        let (twice, field) = field.rename(&once, "w").unwrap();
        assert_eq!(twice, Bytes::from(&body[..]));
        assert_eq!(field, ModelField::Multipart(at..at + 1));
        assert!(String::from_utf8_lossy(&once).contains("\r\n\r\nwhisper-large\r\n"));
    }

    #[test]
    fn a_json_model_is_replaced() {
        let (b, f) = ModelField::Json
            .rename(br#"{"model":"a","x":1}"#, "bb")
            .unwrap();
        assert_eq!(&b[..], br#"{"model":"bb","x":1}"#);
        assert_eq!(f, ModelField::Json);
        assert!(ModelField::Json.rename(b"not json", "bb").is_none());
    }
}
