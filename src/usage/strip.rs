//! `stream_usage: force`: the gateway asked the upstream for the usage chunk of a stream whose
//! client did not ask for it, so that one event is cut out of what the client receives.
//!
//! Events pass as they arrive, except that the unfinished end of a read (an event split across
//! reads) waits for the rest of its event: a client cannot use half an event anyway, and the
//! usage event is always seen whole. Only that event is removed; the `"usage":null` that
//! OpenAI adds to every other chunk when usage is asked for stays.

use std::ops::Range;

use bytes::Bytes;
use memchr::memmem;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::{usage_keys, usage_object_at, Counts};

/// An unfinished event longer than this is not the SSE expected: stop holding anything back.
const MAX_UNFINISHED: usize = 1 << 20;

/// Removes the usage event from one stream.
#[derive(Debug, Default)]
pub struct StripUsageChunk {
    /// The unfinished event at the end of the last read.
    unfinished: Bytes,
    /// The usage event was removed (or stripping was given up): the rest passes as it is.
    done: bool,
}

impl StripUsageChunk {
    /// Filter one body chunk of the stream (`end`: the last one).
    pub fn filter(&mut self, body: &mut Option<Bytes>, end: bool) {
        let chunk = body.take().unwrap_or_default();
        let data = if self.unfinished.is_empty() {
            chunk
        } else {
            // Only when an event was split across reads.
            let mut joined = Vec::with_capacity(self.unfinished.len() + chunk.len());
            joined.extend_from_slice(&std::mem::take(&mut self.unfinished));
            joined.extend_from_slice(&chunk);
            Bytes::from(joined)
        };
        if self.done {
            *body = Some(data);
            return;
        }
        let complete = if end { data.len() } else { events_end(&data) };
        self.unfinished = data.slice(complete..);
        let mut out = data.slice(..complete);
        if let Some(event) = find_usage_event(&out) {
            self.done = true;
            out = without(&out, event);
        }
        if self.unfinished.len() > MAX_UNFINISHED {
            self.done = true;
            out = join(&out, &std::mem::take(&mut self.unfinished));
        }
        *body = Some(out);
    }
}

/// Where the last complete event of `data` ends (after its blank line); 0 if none ends.
fn events_end(data: &[u8]) -> usize {
    let lf = memmem::rfind(data, b"\n\n").map(|i| i + 2);
    let crlf = memmem::rfind(data, b"\n\r\n").map(|i| i + 3);
    lf.max(crlf).unwrap_or(0)
}

/// Where the event holding byte `at` starts: after the blank line before it.
fn event_start(events: &[u8], at: usize) -> usize {
    events_end(&events[..at])
}

/// Where the event holding byte `at` ends: after its blank line (or at the end of `events`).
fn event_stop(events: &[u8], at: usize) -> usize {
    let rest = &events[at..];
    let lf = memmem::find(rest, b"\n\n").map(|i| i + 2);
    let crlf = memmem::find(rest, b"\n\r\n").map(|i| i + 3);
    match (lf, crlf) {
        (Some(a), Some(b)) => at + a.min(b),
        (Some(a), None) | (None, Some(a)) => at + a,
        (None, None) => events.len(),
    }
}

/// The span of the usage event among complete `events`: a `data:` chunk whose `usage` has
/// counts and whose `choices` is empty.
fn find_usage_event(events: &[u8]) -> Option<Range<usize>> {
    usage_keys(events)
        .filter(|&at| usage_object_at(events, at).is_some())
        .map(|at| event_start(events, at)..event_stop(events, at))
        .find(|span| is_usage_chunk(&events[span.clone()]))
}

fn is_usage_chunk(event: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Chunk {
        choices: Option<Vec<IgnoredAny>>,
        usage: Option<Counts>,
    }
    // An event's data is its `data:` lines joined by newlines.
    let mut data = Vec::with_capacity(event.len());
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(value) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(value.strip_prefix(b" ").unwrap_or(value));
        }
    }
    serde_json::from_slice::<Chunk>(&data).is_ok_and(|c| {
        c.usage.is_some_and(|u| u.tokens().is_some()) && c.choices.is_none_or(|c| c.is_empty())
    })
}

/// `data` without `span`: a slice when the span is at either end, else one copy.
fn without(data: &Bytes, span: Range<usize>) -> Bytes {
    if span.start == 0 {
        data.slice(span.end..)
    } else if span.end == data.len() {
        data.slice(..span.start)
    } else {
        join(&data.slice(..span.start), &data.slice(span.end..))
    }
}

fn join(a: &Bytes, b: &Bytes) -> Bytes {
    if b.is_empty() {
        return a.clone();
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    /// Feed `reads` through one filter; what the client receives.
    fn run(reads: &[&[u8]]) -> Vec<u8> {
        let mut strip = StripUsageChunk::default();
        let mut out = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            let mut body = Some(Bytes::copy_from_slice(read));
            strip.filter(&mut body, i + 1 == reads.len());
            out.extend_from_slice(&body.unwrap_or_default());
        }
        out
    }

    #[test]
    fn removes_only_the_usage_event_wherever_the_reads_split() {
        let stream = format!("{CONTENT}{CONTENT}{USAGE}{DONE}");
        let want = format!("{CONTENT}{CONTENT}{DONE}");
        let bytes = stream.as_bytes();
        // Every split point, including inside the usage event and its blank line.
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(run(&[a, b]), want.as_bytes(), "split at {cut}");
        }
        assert_eq!(run(&[bytes]), want.as_bytes());
        let events: Vec<&[u8]> = [CONTENT, USAGE, DONE]
            .iter()
            .map(|e| e.as_bytes())
            .collect();
        assert_eq!(run(&events), format!("{CONTENT}{DONE}").as_bytes());
    }

    #[test]
    fn crlf_events_and_multi_line_data() {
        let usage = "data: {\"choices\":[],\r\ndata: \"usage\":{\"prompt_tokens\":1}}\r\n\r\n";
        let content = CONTENT.replace('\n', "\r\n");
        let stream = format!("{content}{usage}data: [DONE]\r\n\r\n");
        assert_eq!(
            run(&[stream.as_bytes()]),
            format!("{content}data: [DONE]\r\n\r\n").as_bytes()
        );
    }

    #[test]
    fn keeps_every_event_that_is_not_the_usage_chunk() {
        // Choices with usage (vLLM's continuous usage), a usage in a string, an error.
        let with_choices =
            "data: {\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
        let in_string =
            "data: {\"choices\":[],\"x\":\"\\\"usage\\\": {\\\"prompt_tokens\\\": 1}\"}\n\n";
        let error = "data: {\"error\":{\"message\":\"usage\"}}\n\n";
        let stream = format!("{with_choices}{in_string}{error}{DONE}");
        assert_eq!(run(&[stream.as_bytes()]), stream.as_bytes());
    }

    #[test]
    fn the_unfinished_end_is_sent_when_the_stream_ends() {
        assert_eq!(
            run(&[CONTENT.as_bytes(), b"data: [DO"]),
            format!("{CONTENT}data: [DO").as_bytes()
        );
        let huge = vec![b'x'; MAX_UNFINISHED + 1];
        assert_eq!(
            run(&[&huge, b"\n\n", USAGE.as_bytes()]).len(),
            huge.len() + 2 + USAGE.len()
        );
    }
}
