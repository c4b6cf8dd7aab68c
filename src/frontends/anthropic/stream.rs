//! A chat completions stream as an Anthropic Messages stream, translated as the upstream's
//! chunks arrive.
//!
//! Each delta goes out in the read that completes its event: a kind of content (reasoning,
//! text, a tool call) opens its content block, after closing the one open. Only the unfinished
//! event at the end of a read waits for the rest of its bytes (a client cannot use half an
//! event anyway). The closing `message_delta` waits for `[DONE]` or the end of the body, since
//! the usage chunk comes after the one with the `finish_reason`.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::error::{error_event, error_message};
use super::json::{nonempty, object, object_slice, parse, string, Raw};
use super::request::Reply;
use super::response::{
    message_id, stop_reason, usage, ChatMessage, Choice, Function, ToolCall, Usage,
};

/// An unfinished event longer than this is not the SSE expected: the stream is given up.
const MAX_UNFINISHED: usize = 1 << 20;

/// Turns the upstream's chat-completion SSE stream into Anthropic SSE events as chunks arrive.
#[derive(Debug)]
pub struct StreamTranslator {
    reply: Reply,
    /// The unfinished event at the end of the bytes pushed so far (it holds no event end).
    unfinished: Vec<u8>,
    /// `message_start` was sent.
    started: bool,
    /// The index the next content block gets.
    next_block: u32,
    /// The content block open, and its index.
    open: Option<(u32, Kind)>,
    /// The last tool call (by the upstream's index) given a block.
    last_tool: Option<u64>,
    /// The finish_reason came: the answer is complete.
    stop: Option<(&'static str, Option<String>)>,
    usage: Usage,
    /// `[DONE]` came without a finish_reason: nothing more is read.
    done: bool,
    /// The closing events or an error event were sent: nothing more is sent.
    ended: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Thinking,
    Text,
    /// A tool call, by the upstream's index.
    Tool(u64),
}

impl StreamTranslator {
    pub fn new(reply: Reply) -> Self {
        StreamTranslator {
            reply,
            unfinished: Vec::new(),
            started: false,
            next_block: 0,
            open: None,
            last_tool: None,
            stop: None,
            usage: Usage::default(),
            done: false,
            ended: false,
        }
    }

    /// Upstream bytes, split anywhere (an event may span chunks; only the unfinished event's
    /// bytes are kept between calls). Appends complete Anthropic events to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut BytesMut) {
        if self.ended || self.done {
            return;
        }
        if self.unfinished.is_empty() {
            let used = self.events(chunk, 0, out);
            self.unfinished
                .extend_from_slice(chunk.get(used..).unwrap_or_default());
        } else {
            let mut data = std::mem::take(&mut self.unfinished);
            // An event end (at most 3 bytes) found now may start in the last 2 bytes kept.
            let from = data.len().saturating_sub(2);
            data.extend_from_slice(chunk);
            let used = self.events(&data, from, out);
            data.drain(..used);
            self.unfinished = data;
        }
        if self.ended || self.done {
            self.unfinished = Vec::new();
        } else if self.unfinished.len() > MAX_UNFINISHED {
            self.unfinished = Vec::new();
            self.fail(502, "the upstream sent an event over 1 MiB", out);
        }
    }

    /// The upstream's body ended. Appends the closing events when the answer was complete and
    /// returns true; returns false when the upstream ended without a finish_reason (then the
    /// caller appends an error event). True as well when an error event was already sent.
    pub fn finish(&mut self, out: &mut BytesMut) -> bool {
        if !self.ended && !self.done && !self.unfinished.is_empty() {
            // The last event, without the blank line that should end it.
            let last = std::mem::take(&mut self.unfinished);
            self.event(&last, out);
        }
        if self.ended {
            return true;
        }
        if self.stop.is_some() {
            self.close(out);
            return true;
        }
        false
    }

    /// Translate the complete events of `data` (no event end before `from`); how many bytes
    /// they take.
    fn events(&mut self, data: &[u8], mut from: usize, out: &mut BytesMut) -> usize {
        let mut start = 0;
        while !self.ended && !self.done {
            let Some(end) = event_end(data, from) else {
                break;
            };
            self.event(data.get(start..end).unwrap_or_default(), out);
            start = end;
            from = end;
        }
        start
    }

    fn event(&mut self, event: &[u8], out: &mut BytesMut) {
        let Some(data) = event_data(event) else {
            return;
        };
        if data.trim_ascii() == b"[DONE]" {
            if self.stop.is_some() {
                self.close(out);
            } else {
                self.done = true;
            }
        } else if let Some(chunk) = object_slice::<Chunk>(&data) {
            self.chunk(chunk, out);
        }
        // Anything else (not JSON) is no chunk: skipped.
    }

    fn chunk(&mut self, chunk: Chunk<'_>, out: &mut BytesMut) {
        if let Some(message) = chunk.error_message() {
            self.fail(500, &message, out);
            return;
        }
        self.start(chunk.id, out);
        let choices = chunk.choices.and_then(parse::<Vec<Raw>>);
        for choice in choices.unwrap_or_default().into_iter().filter_map(object) {
            self.choice(choice, out);
        }
        if let Some(usage) = usage(chunk.usage) {
            self.usage = usage;
        }
    }

    fn choice(&mut self, choice: Choice<'_>, out: &mut BytesMut) {
        // One answer: choices beyond the first (`n` > 1) are not translated.
        let first = choice.index.map_or(Some(0), parse::<u64>) == Some(0);
        if !first || self.stop.is_some() {
            return;
        }
        let delta = choice
            .message
            .and_then(object::<ChatMessage>)
            .unwrap_or_default();
        if let Some(thinking) = nonempty(delta.reasoning_content).or(nonempty(delta.reasoning)) {
            let index = self.block(Kind::Thinking, out);
            let delta = BlockDelta::Thinking { thinking };
            emit(out, &Event::ContentBlockDelta { index, delta });
        }
        if let Some(text) = nonempty(delta.content) {
            let index = self.block(Kind::Text, out);
            emit(
                out,
                &Event::ContentBlockDelta {
                    index,
                    delta: BlockDelta::Text { text },
                },
            );
        }
        let calls = delta.tool_calls.and_then(parse::<Vec<Raw>>);
        for (position, raw) in calls.unwrap_or_default().into_iter().enumerate() {
            if let Some(call) = object::<ToolCall>(raw) {
                self.tool(position as u64, call, out);
            }
        }
        let finish = choice.finish_reason.and_then(string);
        if let Some(finish) = finish.filter(|f| !f.is_empty()) {
            self.close_block(out);
            let (reason, sequence) = stop_reason(Some(&finish), choice.stop_reason, &self.reply);
            self.stop = Some((reason, sequence.map(str::to_string)));
        }
    }

    /// A tool call's fragment: the first of a call opens its block (with the call's id and
    /// name), the others carry pieces of its arguments.
    fn tool(&mut self, position: u64, call: ToolCall<'_>, out: &mut BytesMut) {
        let Some(call_index) = call.index.map_or(Some(position), parse::<u64>) else {
            return;
        };
        let function = call.function.and_then(object::<Function>);
        let function = function.unwrap_or_default();
        let index = match self.open {
            Some((index, Kind::Tool(open))) if open == call_index => index,
            _ => {
                // A late fragment of a call whose block was closed: a block cannot reopen.
                if self.last_tool.is_some_and(|last| call_index <= last) {
                    return;
                }
                self.last_tool = Some(call_index);
                let id = call.id.and_then(string);
                let made_up = || self.reply.made_up_id("toolu_", self.next_block).into();
                let block = StartBlock::ToolUse {
                    id: id.unwrap_or_else(made_up),
                    name: function.name.and_then(string).unwrap_or_default(),
                    input: Empty {},
                };
                self.open_block(Kind::Tool(call_index), block, out)
            }
        };
        if let Some(partial_json) = nonempty(function.arguments) {
            let delta = BlockDelta::InputJson { partial_json };
            emit(out, &Event::ContentBlockDelta { index, delta });
        }
    }

    /// The index of the open block of this kind (thinking or text), opened if need be.
    fn block(&mut self, kind: Kind, out: &mut BytesMut) -> u32 {
        match self.open {
            Some((index, open)) if open == kind => index,
            _ => {
                let block = match kind {
                    Kind::Thinking => StartBlock::Thinking {
                        thinking: "",
                        signature: "",
                    },
                    _ => StartBlock::Text { text: "" },
                };
                self.open_block(kind, block, out)
            }
        }
    }

    fn open_block(&mut self, kind: Kind, block: StartBlock<'_>, out: &mut BytesMut) -> u32 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block = self.next_block.saturating_add(1);
        self.open = Some((index, kind));
        emit(
            out,
            &Event::ContentBlockStart {
                index,
                content_block: block,
            },
        );
        index
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            emit(out, &Event::ContentBlockStop { index });
        }
    }

    fn start(&mut self, id: Option<Raw<'_>>, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let id = id.and_then(string);
        let message = StartMessage {
            id: message_id(id.as_deref(), &self.reply),
            kind: "message",
            role: "assistant",
            model: self.reply.model(),
            content: &[],
            stop_reason: None,
            stop_sequence: None,
            usage: Usage::default(),
        };
        emit(out, &Event::MessageStart { message });
    }

    /// The closing events of a complete answer.
    fn close(&mut self, out: &mut BytesMut) {
        self.start(None, out);
        self.close_block(out);
        let (stop_reason, stop_sequence) = match &self.stop {
            Some((reason, sequence)) => (*reason, sequence.as_deref()),
            None => ("end_turn", None),
        };
        let delta = StopDelta {
            stop_reason,
            stop_sequence,
        };
        let usage = self.usage;
        emit(out, &Event::MessageDelta { delta, usage });
        emit(out, &Event::MessageStop);
        self.ended = true;
    }

    fn fail(&mut self, status: u16, message: &str, out: &mut BytesMut) {
        out.extend_from_slice(&error_event(status, message));
        self.ended = true;
    }
}

/// Where the first event of `data` ends, after its blank line (`\n\n` or `\n\r\n`), looking
/// from `from` on.
fn event_end(data: &[u8], from: usize) -> Option<usize> {
    let rest = data.get(from..)?;
    memchr::memchr_iter(b'\n', rest)
        .map(|i| from + i)
        .find_map(|i| match (data.get(i + 1), data.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        })
}

/// An event's data: its `data:` lines joined by newlines (comments and other fields
/// skipped). `None` when it has none.
fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut lines = event
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(|value| value.strip_prefix(b" ").unwrap_or(value));
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.push(b'\n');
        joined.extend_from_slice(line);
    }
    Some(Cow::Owned(joined))
}

/// Write one event, `event: <type>\ndata: <json>\n\n`.
fn emit(out: &mut BytesMut, event: &Event<'_>) {
    let start = out.len();
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.name().as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Our own shapes always serialize; were one not to, no half event goes out.
    if serde_json::to_writer((&mut *out).writer(), event).is_err() {
        out.truncate(start);
        return;
    }
    out.extend_from_slice(b"\n\n");
}

#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<Raw<'a>>,
    #[serde(borrow, default)]
    choices: Option<Raw<'a>>,
    #[serde(borrow, default)]
    usage: Option<Raw<'a>>,
    #[serde(borrow, default)]
    error: Option<Raw<'a>>,
    /// `"error"` in vLLM's older error chunks, with a top-level `message`.
    #[serde(borrow, default)]
    object: Option<Raw<'a>>,
    #[serde(borrow, default)]
    message: Option<Raw<'a>>,
}

impl Chunk<'_> {
    /// The message of an error chunk; `None` for any other.
    fn error_message(&self) -> Option<String> {
        let message = match self.error {
            Some(error) => error_message(error),
            None if self.object.and_then(string).as_deref() == Some("error") => {
                self.message.and_then(string).map(Cow::into_owned)
            }
            None => return None,
        };
        Some(message.unwrap_or_else(|| "the upstream reported an error".into()))
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Event<'a> {
    MessageStart {
        message: StartMessage<'a>,
    },
    ContentBlockStart {
        index: u32,
        content_block: StartBlock<'a>,
    },
    ContentBlockDelta {
        index: u32,
        delta: BlockDelta<'a>,
    },
    ContentBlockStop {
        index: u32,
    },
    MessageDelta {
        delta: StopDelta<'a>,
        usage: Usage,
    },
    MessageStop,
}

impl Event<'_> {
    fn name(&self) -> &'static str {
        match self {
            Event::MessageStart { .. } => "message_start",
            Event::ContentBlockStart { .. } => "content_block_start",
            Event::ContentBlockDelta { .. } => "content_block_delta",
            Event::ContentBlockStop { .. } => "content_block_stop",
            Event::MessageDelta { .. } => "message_delta",
            Event::MessageStop => "message_stop",
        }
    }
}

#[derive(Serialize)]
struct StartMessage<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: &'static [u8],
    stop_reason: Option<&'static str>,
    stop_sequence: Option<&'static str>,
    usage: Usage,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum StartBlock<'a> {
    Thinking {
        thinking: &'static str,
        signature: &'static str,
    },
    Text {
        text: &'static str,
    },
    ToolUse {
        id: Cow<'a, str>,
        name: Cow<'a, str>,
        input: Empty,
    },
}

/// `{}`
#[derive(Serialize)]
struct Empty {}

/// Deltas carry the upstream's JSON strings as written.
#[derive(Serialize)]
#[serde(tag = "type")]
enum BlockDelta<'a> {
    #[serde(rename = "thinking_delta")]
    Thinking { thinking: Raw<'a> },
    #[serde(rename = "text_delta")]
    Text { text: Raw<'a> },
    #[serde(rename = "input_json_delta")]
    InputJson { partial_json: Raw<'a> },
}

#[derive(Serialize)]
struct StopDelta<'a> {
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn reply() -> Reply {
        Reply::new("claude-x", vec!["END".into()])
    }

    /// An upstream `data:` event of this chunk.
    fn data(chunk: Value) -> String {
        format!("data: {chunk}\n\n")
    }

    fn delta(delta: Value) -> String {
        data(
            json!({"id": "chatcmpl-9", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]}),
        )
    }

    fn finish(reason: &str) -> String {
        data(
            json!({"id": "chatcmpl-9", "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}),
        )
    }

    const USAGE: &str =
        "data: {\"id\":\"chatcmpl-9\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    /// Feed `reads` through one translator, then end it: the output and what finish() said.
    fn run(reads: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut t = StreamTranslator::new(reply());
        let mut out = BytesMut::new();
        for read in reads {
            t.push(read, &mut out);
        }
        let complete = t.finish(&mut out);
        (out.to_vec(), complete)
    }

    /// The events of an Anthropic stream, as (name, data) pairs, checking their framing.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
        text.split_terminator("\n\n")
            .map(|event| {
                let (name, data) = event.split_once('\n').unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_string();
                let data: Value =
                    serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
                if name != "error" {
                    assert_eq!(data["type"], name.as_str());
                }
                (name, data)
            })
            .collect()
    }

    fn names(out: &[u8]) -> Vec<String> {
        events(out).into_iter().map(|(name, _)| name).collect()
    }

    fn text_stream() -> String {
        let mut s = String::from(": keep-alive\n\n");
        s += &delta(json!({"role": "assistant", "content": ""}));
        s += &delta(json!({"content": "Hel"}));
        s += &delta(json!({"content": "lo \"wörld\""})).replace('\n', "\r\n");
        s += &finish("stop");
        s += USAGE;
        s + DONE
    }

    #[test]
    fn a_text_stream() {
        let (out, complete) = run(&[text_stream().as_bytes()]);
        assert!(complete);
        let events = events(&out);
        let want = [
            json!({"type": "message_start", "message": {"id": "msg_chatcmpl-9", "type": "message",
                "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo \"wörld\""}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                "usage": {"input_tokens": 7, "output_tokens": 3}}),
            json!({"type": "message_stop"}),
        ];
        let got: Vec<Value> = events.into_iter().map(|(_, data)| data).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let stream = text_stream();
        let bytes = stream.as_bytes();
        let (whole, _) = run(&[bytes]);
        for cut in 0..=bytes.len() {
            let (a, b) = bytes.split_at(cut);
            assert_eq!(run(&[a, b]).0, whole, "split at {cut}");
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&bytewise).0, whole);
    }

    #[test]
    fn each_read_sends_what_it_completes() {
        let mut t = StreamTranslator::new(reply());
        let mut out = BytesMut::new();
        let first = delta(json!({"content": "a"}));
        t.push(first.as_bytes(), &mut out);
        assert_eq!(
            names(&out),
            [
                "message_start",
                "content_block_start",
                "content_block_delta"
            ]
        );
        out.clear();
        let second = delta(json!({"content": "b"}));
        let (head, tail) = second.split_at(10);
        t.push(head.as_bytes(), &mut out);
        assert!(out.is_empty());
        t.push(tail.as_bytes(), &mut out);
        assert_eq!(names(&out), ["content_block_delta"]);
    }

    #[test]
    fn a_tool_call_stream() {
        let mut s = delta(json!({"role": "assistant", "content": "Checking."}));
        s += &delta(
            json!({"tool_calls": [{"index": 0, "id": "call_A", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}),
        );
        s += &delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}));
        s +=
            &delta(json!({"tool_calls": [{"index": 0, "function": {"arguments": " \"Paris\"}"}}]}));
        s += &delta(
            json!({"tool_calls": [{"index": 1, "id": "call_B", "type": "function",
            "function": {"name": "get_time", "arguments": "{}"}}]}),
        );
        s += &finish("tool_calls");
        s += DONE;
        let (out, complete) = run(&[s.as_bytes()]);
        assert!(complete);
        let events = events(&out);
        let got: Vec<Value> = events.iter().skip(1).map(|(_, d)| d.clone()).collect();
        assert_eq!(
            got,
            [
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block":
                    {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"Paris\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block":
                    {"type": "tool_use", "id": "call_B", "name": "get_time", "input": {}}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                    "usage": {"input_tokens": 0, "output_tokens": 0}}),
                json!({"type": "message_stop"}),
            ]
        );
    }

    #[test]
    fn thinking_then_text() {
        let mut s = delta(json!({"reasoning_content": "First, "}));
        s += &delta(json!({"reasoning": "think."}));
        s += &delta(json!({"reasoning_content": null, "content": "42"}));
        s += &finish("length");
        s += DONE;
        let (out, _) = run(&[s.as_bytes()]);
        let events = events(&out);
        assert_eq!(
            events[1].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        );
        assert_eq!(
            events[2].1["delta"],
            json!({"type": "thinking_delta", "thinking": "First, "})
        );
        assert_eq!(
            events[3].1["delta"],
            json!({"type": "thinking_delta", "thinking": "think."})
        );
        assert_eq!(
            events[4].1,
            json!({"type": "content_block_stop", "index": 0})
        );
        assert_eq!(
            events[5].1["content_block"],
            json!({"type": "text", "text": ""})
        );
        assert_eq!(events[5].1["index"], 1);
        assert_eq!(
            events[6].1["delta"],
            json!({"type": "text_delta", "text": "42"})
        );
        assert_eq!(
            events[7].1,
            json!({"type": "content_block_stop", "index": 1})
        );
        assert_eq!(events[8].1["delta"]["stop_reason"], "max_tokens");
        assert_eq!(names(&out).len(), 10);
    }

    #[test]
    fn usage_and_stop_sequence_in_the_message_delta() {
        let mut s = delta(json!({"content": "a"}));
        s += &data(
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}),
        );
        s += USAGE;
        s += DONE;
        let (out, _) = run(&[s.as_bytes()]);
        let events = events(&out);
        let (name, message_delta) = &events[events.len() - 2];
        assert_eq!(name, "message_delta");
        assert_eq!(
            *message_delta,
            json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
                "usage": {"input_tokens": 7, "output_tokens": 3}})
        );
    }

    #[test]
    fn closing_once_and_only_after_a_finish_reason() {
        // Without [DONE]: finish() closes.
        let s = delta(json!({"content": "a"})) + &finish("stop");
        let (out, complete) = run(&[s.as_bytes()]);
        assert!(complete);
        assert_eq!(
            names(&out).iter().filter(|n| *n == "message_stop").count(),
            1
        );
        // With [DONE], then more bytes, then finish() twice: no second closing.
        let mut t = StreamTranslator::new(reply());
        let mut out = BytesMut::new();
        t.push((s.clone() + DONE).as_bytes(), &mut out);
        t.push(delta(json!({"content": "late"})).as_bytes(), &mut out);
        assert!(t.finish(&mut out));
        assert!(t.finish(&mut out));
        let sent = names(&out);
        assert_eq!(sent.last().map(String::as_str), Some("message_stop"));
        assert_eq!(sent.iter().filter(|n| *n == "message_stop").count(), 1);
        assert_eq!(
            sent.iter().filter(|n| *n == "content_block_delta").count(),
            1
        );
        // No finish_reason: finish() says so, and sends nothing of its own.
        for s in [
            delta(json!({"content": "a"})),
            delta(json!({"content": "a"})) + DONE,
        ] {
            let (out, complete) = run(&[s.as_bytes()]);
            assert!(!complete);
            assert_eq!(
                names(&out),
                [
                    "message_start",
                    "content_block_start",
                    "content_block_delta"
                ]
            );
        }
        assert_eq!(run(&[]), (Vec::new(), false));
        // The last event without its blank line still counts.
        let s = delta(json!({"content": "a"})) + finish("stop").trim_end();
        assert!(run(&[s.as_bytes()]).1);
    }

    #[test]
    fn an_error_chunk_ends_the_stream() {
        for error in [
            json!({"error": {"message": "out of memory", "type": "internal_error"}}),
            json!({"object": "error", "message": "out of memory", "code": 500}),
        ] {
            let s = delta(json!({"content": "a"}))
                + &data(error)
                + &delta(json!({"content": "b"}))
                + DONE;
            let mut t = StreamTranslator::new(reply());
            let mut out = BytesMut::new();
            t.push(s.as_bytes(), &mut out);
            assert!(t.finish(&mut out));
            let events = events(&out);
            let (name, error) = events.last().unwrap();
            assert_eq!(name, "error");
            assert_eq!(
                *error,
                json!({"type": "error", "error": {"type": "api_error", "message": "out of memory"}})
            );
            assert_eq!(events.len(), 4);
        }
    }

    #[test]
    fn an_overlong_event_is_given_up_once() {
        let mut t = StreamTranslator::new(reply());
        let mut out = BytesMut::new();
        let huge = vec![b'x'; MAX_UNFINISHED / 2 + 1];
        t.push(b"data: ", &mut out);
        t.push(&huge, &mut out);
        assert!(out.is_empty());
        t.push(&huge, &mut out);
        t.push(&huge, &mut out);
        t.push(b"\n\n", &mut out);
        assert!(t.finish(&mut out));
        assert_eq!(names(&out), ["error"]);
        assert!(t.unfinished.capacity() == 0);
    }

    #[test]
    fn other_choices_and_junk_are_skipped() {
        let mut s = String::from("event: ping\ndata: not json\n\n");
        s += &data(json!({"choices": [{"index": 1, "delta": {"content": "other"}}]}));
        s += &data(json!({"choices": [{"index": 0, "delta": {"content": "mine"}}]}));
        s += "data: {\"choices\":[{\"index\":0,\ndata: \"delta\":{\"content\":\"!\"}}]}\n\n";
        let (out, _) = run(&[s.as_bytes()]);
        let texts: Vec<Value> = events(&out)
            .into_iter()
            .filter(|(n, _)| n == "content_block_delta")
            .map(|(_, d)| d["delta"]["text"].clone())
            .collect();
        assert_eq!(texts, [json!("mine"), json!("!")]);
    }
}
