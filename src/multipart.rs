//! The `model` form field of a `multipart/form-data` body (audio transcriptions and
//! translations, image edits): found by scanning the parts' headers, stopping at the field,
//! so a model field that comes first costs nothing of the file after it.

use std::ops::Range;

/// The byte range of the `model` field's value in `body`, or `None` when the body has no such
/// field. `Err` when the content type names no boundary.
pub fn model_field(content_type: &[u8], body: &[u8]) -> Result<Option<Range<usize>>, String> {
    let boundary = boundary(content_type).ok_or("the multipart content type has no boundary")?;
    let mut delimiter = Vec::with_capacity(boundary.len() + 4);
    delimiter.extend_from_slice(b"--");
    delimiter.extend_from_slice(boundary);
    let finder = memchr::memmem::Finder::new(&delimiter);
    let mut at = match finder.find(body) {
        Some(p) => p + delimiter.len(),
        None => return Ok(None),
    };
    // Bounded: each turn moves past one more delimiter.
    loop {
        let rest = &body[at..];
        if rest.starts_with(b"--") {
            return Ok(None); // the closing delimiter
        }
        let Some(head_end) = memchr::memmem::find(rest, b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = &rest[..head_end];
        let value_start = at + head_end + 4;
        let Some(next) = finder.find(&body[value_start..]) else {
            return Ok(None);
        };
        // The value ends with the CRLF that precedes the next delimiter.
        let mut value_end = value_start + next;
        if body[..value_end].ends_with(b"\r\n") {
            value_end -= 2;
        }
        if names_model(head) {
            return Ok(Some(value_start..value_end));
        }
        at = value_start + next + delimiter.len();
    }
}

/// `body` with the bytes at `range` replaced by `value`.
pub fn with_value(body: &[u8], range: Range<usize>, value: &str) -> bytes::Bytes {
    let mut out = Vec::with_capacity(body.len() + value.len());
    out.extend_from_slice(&body[..range.start]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&body[range.end..]);
    out.into()
}

/// The `boundary` parameter of a `multipart/...` content type, unquoted.
fn boundary(content_type: &[u8]) -> Option<&[u8]> {
    let text = std::str::from_utf8(content_type).ok()?;
    let value = text.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then_some(v.trim())
    })?;
    let value = value.trim_matches('"');
    (!value.is_empty() && value.len() <= 200).then_some(value.as_bytes())
}

/// Whether a part's headers name it `model` (`Content-Disposition: form-data; name="model"`).
fn names_model(head: &[u8]) -> bool {
    let Ok(head) = std::str::from_utf8(head) else {
        return false;
    };
    head.split("\r\n").any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("content-disposition")
            && value.split(';').any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("name") && v.trim().trim_matches('"') == "model"
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &[u8] = b"multipart/form-data; boundary=XyZ";

    fn body(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, value) in parts {
            b.extend_from_slice(
                format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
                )
                .as_bytes(),
            );
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    #[test]
    fn finds_the_model_field_wherever_it_is() {
        for parts in [
            vec![("model", "whisper-1"), ("file", "RIFF....")],
            vec![
                ("file", "RIFF....\r\n--not"),
                ("language", "en"),
                ("model", "whisper-1"),
            ],
        ] {
            let b = body(&parts);
            let r = model_field(CT, &b).unwrap().unwrap();
            assert_eq!(&b[r.clone()], b"whisper-1");
            let rewritten = with_value(&b, r, "openai/whisper-large-v3");
            let r2 = model_field(CT, &rewritten).unwrap().unwrap();
            assert_eq!(&rewritten[r2], b"openai/whisper-large-v3");
        }
    }

    #[test]
    fn no_model_no_boundary_and_truncated_bodies() {
        assert_eq!(model_field(CT, &body(&[("file", "x")])).unwrap(), None);
        assert!(model_field(b"multipart/form-data", b"").is_err());
        assert_eq!(
            model_field(
                CT,
                b"--XyZ\r\nContent-Disposition: form-data; name=\"model\""
            )
            .unwrap(),
            None
        );
        assert_eq!(model_field(CT, b"garbage").unwrap(), None);
        let quoted = b"multipart/form-data; boundary=\"XyZ\"";
        assert!(model_field(quoted, &body(&[("model", "m")]))
            .unwrap()
            .is_some());
    }
}
