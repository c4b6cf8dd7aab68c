//! Token usage, read from the `usage` object of a JSON answer or of a stream's last usage
//! chunk. Nothing is parsed while a response passes: [`Tail`] looks for a `"usage"` key in each
//! chunk the proxy forwards anyway, keeps references (`Bytes` clones, no copy) to the chunks
//! from the last one with a usage object on, and the `usage` is read there once, when the
//! response ends. OpenAI and
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

/// The end of a response that may hold its last `usage` object: the chunks from the last one
/// with a `"usage"` key whose value is an object on, covering at least [`TAIL_BYTES`] (or all
/// of them). Other chunks are not kept: a stream without usage, or whose chunks all carry
/// `"usage":null` until the last (OpenAI's `include_usage`), holds no chunk until its usage
/// chunk comes, where keeping the last 16 KiB of every stream would cost as much memory as the
/// rest of the stream's state.
#[derive(Debug, Default)]
pub struct Tail {
    chunks: VecDeque<Bytes>,
    len: usize,
    /// The last bytes seen, for a key split between two chunks.
    edge: Edge,
}

/// Up to the key's length less one of the last bytes of a response.
#[derive(Debug, Default)]
struct Edge {
    bytes: [u8; USAGE_KEY.len() - 1],
    len: usize,
}

impl Edge {
    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    /// Whether a `"usage"` key starts in the edge and ends in `next`.
    fn splits_key_with(&self, next: &[u8]) -> bool {
        let mut joined = [0u8; 2 * (USAGE_KEY.len() - 1)];
        let head = &next[..next.len().min(USAGE_KEY.len() - 1)];
        joined[..self.len].copy_from_slice(self.as_slice());
        joined[self.len..self.len + head.len()].copy_from_slice(head);
        memmem::find(&joined[..self.len + head.len()], USAGE_KEY).is_some()
    }

    fn advance(&mut self, chunk: &[u8]) {
        let cap = self.bytes.len();
        if chunk.len() >= cap {
            self.bytes.copy_from_slice(&chunk[chunk.len() - cap..]);
            self.len = cap;
        } else {
            let keep = (cap - chunk.len()).min(self.len);
            self.bytes.copy_within(self.len - keep..self.len, 0);
            self.bytes[keep..keep + chunk.len()].copy_from_slice(chunk);
            self.len = keep + chunk.len();
        }
    }
}

impl Tail {
    /// Keep `chunk` (a reference, not a copy) when it may hold or continue the last usage
    /// object, and forget chunks no longer needed.
    pub fn push(&mut self, chunk: &Bytes) {
        if chunk.is_empty() {
            return;
        }
        if opens_usage(chunk) {
            self.restart();
            self.keep(chunk.clone());
        } else if self.edge.splits_key_with(chunk) {
            let key_start = Bytes::copy_from_slice(self.edge.as_slice());
            self.restart();
            self.keep(key_start);
            self.keep(chunk.clone());
        } else if !self.chunks.is_empty() {
            self.keep(chunk.clone());
        }
        self.edge.advance(chunk);
    }

    fn restart(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    fn keep(&mut self, chunk: Bytes) {
        self.len += chunk.len();
        self.chunks.push_back(chunk);
        while let Some(front) = self.chunks.front() {
            if self.len - front.len() < TAIL_BYTES {
                break;
            }
            self.len -= front.len();
            self.chunks.pop_front();
        }
    }

    /// The tokens of the response's last `usage`, given its last chunk (call once, at its
    /// end). A usage object mostly comes in one chunk: it is searched as it is, no copy.
    pub fn tokens_at_end(&mut self, last: Option<&Bytes>) -> Option<Tokens> {
        if let Some(last) = last {
            self.push(last);
        }
        match self.chunks.len() {
            0 => None,
            1 => find(&self.chunks[0]),
            _ => {
                // A usage object may straddle chunks: look in one copy of them.
                let mut all = Vec::with_capacity(self.len);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                find(&all)
            }
        }
    }
}

/// Whether `chunk` has a `"usage"` key whose value is an object, or is cut off by the chunk's
/// end before its value shows.
fn opens_usage(chunk: &[u8]) -> bool {
    usage_keys(chunk).any(|at| {
        let rest = skip_whitespace(&chunk[at + USAGE_KEY.len()..]);
        let Some(value) = rest.strip_prefix(b":") else {
            return rest.is_empty();
        };
        let value = skip_whitespace(value);
        value.is_empty() || value.starts_with(b"{")
    })
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

    const ONE_TWO: Option<Tokens> = Some(Tokens {
        prompt: 1,
        completion: 2,
    });

    /// `text` cut at `cuts`, pushed chunk by chunk, the last one given at the end.
    fn tail_of(text: &[u8], cuts: &[usize]) -> (Tail, Bytes) {
        let text = Bytes::copy_from_slice(text);
        let mut tail = Tail::default();
        let mut from = 0;
        for &to in cuts {
            tail.push(&text.slice(from..to));
            from = to;
        }
        (tail, text.slice(from..))
    }

    #[test]
    fn the_tail_finds_usage_cut_anywhere_across_chunks() {
        let usage = br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2}}"#;
        for a in 0..usage.len() {
            for b in a..usage.len() {
                let (mut tail, last) = tail_of(usage, &[a, b]);
                assert_eq!(tail.tokens_at_end(Some(&last)), ONE_TWO, "cut at {a}, {b}");
            }
        }
        assert_eq!(Tail::default().tokens_at_end(None), None);
    }

    #[test]
    fn the_tail_keeps_no_chunk_before_the_usage_chunk() {
        let mut tail = Tail::default();
        let event = Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n",
        );
        for _ in 0..1000 {
            tail.push(&event);
        }
        assert_eq!((tail.chunks.len(), tail.len), (0, 0));
        tail.push(&Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n",
        ));
        assert_eq!(tail.chunks.len(), 1);
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        assert_eq!(tail.tokens_at_end(Some(&done)), ONE_TWO);
    }

    #[test]
    fn the_tail_after_a_usage_key_is_bounded() {
        let mut tail = Tail::default();
        tail.push(&Bytes::from_static(br#"{"usage":{"prompt_tokens":1,"#));
        for _ in 0..1000 {
            tail.push(&Bytes::from_static(&[b' '; 100]));
        }
        assert!(tail.len >= TAIL_BYTES && tail.len < TAIL_BYTES + 100);
    }
}
