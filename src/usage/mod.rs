//! Token usage, read from the `usage` object of a JSON answer or of a stream's last usage
//! chunk. Nothing is parsed while a response passes: [`Tail`] keeps references to the last
//! chunks the proxy forwards anyway (`Bytes` clones, no copy), covering at least
//! [`TAIL_BYTES`], and the `usage` is looked for there once, when the response ends. OpenAI and
//! the servers that copy its shapes put `usage` at the end: after the choices of a completion,
//! in the last chunk before `[DONE]` of a stream, in the `response.completed` event of the
//! Responses API.

pub mod strip;

use std::collections::VecDeque;
use std::sync::LazyLock;

use bytes::Bytes;
use memchr::memmem;
use serde::Deserialize;

/// How much of a response's end is kept to find its `usage` in: a usage object with its
/// details is under 1 KiB, and a Responses API answer may put `user` and `metadata` after it.
pub const TAIL_BYTES: usize = 16 * 1024;

/// The tokens of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// The counts of a `usage` object: Chat Completions and Completions name them `prompt_tokens`
/// and `completion_tokens`, the Responses API `input_tokens` and `output_tokens`; embeddings
/// have prompt tokens only. Other fields (totals, details) are skipped.
#[derive(Deserialize)]
pub(crate) struct Counts {
    #[serde(alias = "input_tokens")]
    prompt_tokens: Option<u64>,
    #[serde(alias = "output_tokens")]
    completion_tokens: Option<u64>,
}

impl Counts {
    fn tokens(&self) -> Option<Tokens> {
        (self.prompt_tokens.is_some() || self.completion_tokens.is_some()).then(|| Tokens {
            prompt: self.prompt_tokens.unwrap_or(0),
            completion: self.completion_tokens.unwrap_or(0),
        })
    }
}

const USAGE_KEY: &[u8] = b"\"usage\"";

/// The last `"usage": {...}` object in `text` with token counts. A `"usage"` inside a JSON
/// string is not a key: its quotes are escaped (`\"usage\"`), so it is not found.
pub fn find(text: &[u8]) -> Option<Tokens> {
    static LAST_FIRST: LazyLock<memmem::FinderRev<'static>> =
        LazyLock::new(|| memmem::FinderRev::new(USAGE_KEY));
    LAST_FIRST.rfind_iter(text).find_map(|at| {
        let object = usage_object_at(text, at)?;
        Counts::deserialize(&mut serde_json::Deserializer::from_slice(object))
            .ok()?
            .tokens()
    })
}

/// Where the object value of the `"usage"` key at `at` starts (`None` for `null` or a
/// `"usage"` that is not a key).
pub(crate) fn usage_object_at(text: &[u8], at: usize) -> Option<&[u8]> {
    let rest = skip_whitespace(&text[at + USAGE_KEY.len()..]);
    let rest = skip_whitespace(rest.strip_prefix(b":")?);
    rest.starts_with(b"{").then_some(rest)
}

/// Positions of `"usage"` keys in `text`, first to last.
pub(crate) fn usage_keys(text: &[u8]) -> memmem::FindIter<'_, 'static> {
    memmem::find_iter(text, USAGE_KEY)
}

fn skip_whitespace(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
        .count();
    &s[n..]
}

/// The last chunks of a response, covering at least [`TAIL_BYTES`] (or all of it).
#[derive(Debug, Default)]
pub struct Tail {
    chunks: VecDeque<Bytes>,
    len: usize,
}

impl Tail {
    /// Keep `chunk` (a reference, not a copy), and forget chunks no longer in the tail.
    pub fn push(&mut self, chunk: &Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.chunks.push_back(chunk.clone());
        self.len += chunk.len();
        while let Some(front) = self.chunks.front() {
            if self.len - front.len() < TAIL_BYTES {
                break;
            }
            self.len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The tokens of the response's last `usage`, given its last chunk (call once, at its
    /// end). A JSON answer mostly comes in one chunk: it is searched as it is, no copy.
    pub fn tokens_at_end(&self, last: Option<&[u8]>) -> Option<Tokens> {
        let last = last.unwrap_or_default();
        match (self.chunks.len(), last.is_empty()) {
            (0, _) => return find(last),
            (1, true) => return find(&self.chunks[0]),
            _ => {}
        }
        // A usage object may straddle two chunks: look in one copy of the tail.
        let mut all = Vec::with_capacity(self.len + last.len());
        for c in &self.chunks {
            all.extend_from_slice(c);
        }
        all.extend_from_slice(last);
        find(&all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chat_completions_and_responses_shapes() {
        let chat = br#"{"id":"c","choices":[{"message":{"content":"x"}}],"usage":{"prompt_tokens":12,"completion_tokens":5,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp"}"#;
        assert_eq!(
            find(chat),
            Some(Tokens {
                prompt: 12,
                completion: 5
            })
        );
        let responses = br#"{"object":"response","output":[],"usage" : {"input_tokens":7,"output_tokens":3,"total_tokens":10},"user":null}"#;
        assert_eq!(
            find(responses),
            Some(Tokens {
                prompt: 7,
                completion: 3
            })
        );
        let embeddings = br#"{"data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        assert_eq!(
            find(embeddings),
            Some(Tokens {
                prompt: 4,
                completion: 0
            })
        );
    }

    #[test]
    fn takes_the_last_usage_of_a_stream_and_skips_nulls_and_strings() {
        let stream = concat!(
            "data: {\"choices\":[{\"delta\":{\"content\":\"say \\\"usage\\\": {\\\"prompt_tokens\\\":99}\"}}],\"usage\":null}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n",
            "data: [DONE]\n\n"
        );
        assert_eq!(
            find(stream.as_bytes()),
            Some(Tokens {
                prompt: 3,
                completion: 2
            })
        );
        let no_usage = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\": {\\\"prompt_tokens\\\":99}\"}}],\"usage\":null}\n\ndata: [DONE]\n\n";
        assert_eq!(find(no_usage.as_bytes()), None);
        assert_eq!(find(br#"{"usage":{}}"#), None);
        assert_eq!(find(br#"{"usage":{"prompt_tokens":-1}}"#), None);
        assert_eq!(find(br#"{"usage":{"prompt_tokens":"#), None);
    }

    #[test]
    fn the_tail_keeps_the_end_and_finds_usage_across_chunks() {
        let mut tail = Tail::default();
        for _ in 0..1000 {
            tail.push(&Bytes::from_static(&[b' '; 100]));
        }
        assert!(tail.len >= TAIL_BYTES && tail.len < TAIL_BYTES + 100);
        let usage = br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        let (a, b) = usage.split_at(20);
        tail.push(&Bytes::from_static(a));
        assert_eq!(
            tail.tokens_at_end(Some(b)),
            Some(Tokens {
                prompt: 1,
                completion: 2
            })
        );
        assert_eq!(Tail::default().tokens_at_end(None), None);
        assert_eq!(
            Tail::default().tokens_at_end(Some(usage)),
            Some(Tokens {
                prompt: 1,
                completion: 2
            })
        );
    }
}
