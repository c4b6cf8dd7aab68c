//! An Anthropic Messages request as a chat completions request. The translation is done once,
//! when the request arrives, into the chat body without its `model`: each attempt then only
//! splices in the name its deployment knows the model by.
//!
//! Text is copied as the client wrote it (JSON strings stay escaped as they were); only the
//! texts that are joined (system blocks, tool results) are decoded. Error messages name the
//! field at fault and never quote its value.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::error::Category;

use super::json::{json_string, object, parse, string, Raw};

/// An Anthropic Messages request translated to a chat completions request, model left out.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    stream: bool,
    /// The chat body without `model`: a JSON object with at least `messages` and `max_tokens`.
    rest: Bytes,
    reply: Reply,
}

/// What the answer's translation needs to know of the request: the model name the client
/// sent (answers name it, not the deployment's) and its stop sequences (a vLLM answer says
/// which stop string matched, and only the client's own count as `stop_sequence`).
#[derive(Clone, Debug)]
pub struct Reply(Arc<Asked>);

#[derive(Debug)]
struct Asked {
    model: String,
    stop_sequences: Vec<String>,
    /// Drawn once per request: the ids made up for an answer whose upstream gave none.
    ids: u64,
}

impl Reply {
    pub(crate) fn new(model: impl Into<String>, stop_sequences: Vec<String>) -> Reply {
        Reply(Arc::new(Asked {
            model: model.into(),
            stop_sequences,
            ids: fastrand::u64(..),
        }))
    }

    /// The id of the answer's `n`th message or tool call the upstream gave no id: 24 hex
    /// digits, random per request (as unique as Anthropic's own) and the same for the same
    /// request and `n` (a translation does not depend on how its stream was split).
    pub(crate) fn made_up_id(&self, prefix: &str, n: u32) -> String {
        format!("{prefix}{:016x}{n:08x}", self.0.ids)
    }

    pub(crate) fn model(&self) -> &str {
        &self.0.model
    }

    /// The client's stop sequence equal to `matched`, if any.
    pub(crate) fn stop_sequence(&self, matched: &str) -> Option<&str> {
        self.0
            .stop_sequences
            .iter()
            .find(|s| *s == matched)
            .map(String::as_str)
    }
}

impl ChatRequest {
    /// Err(message): the body is not a valid Messages request (the caller answers 400
    /// invalid_request_error with this message; it names a field, never its content).
    pub fn from_messages(body: &[u8]) -> Result<ChatRequest, String> {
        let fields = fields(body)?;
        let model = string(required(fields.model, "model")?).ok_or("`model` must be a string")?;
        let max_tokens = parse::<u64>(required(fields.max_tokens, "max_tokens")?)
            .filter(|n| *n > 0)
            .ok_or("`max_tokens` must be a positive integer")?;
        let list = parse::<Vec<Raw>>(required(fields.messages, "messages")?)
            .ok_or("`messages` must be an array")?;
        let mut messages = Vec::with_capacity(list.len() + 1);
        if let Some(system) = fields.system {
            messages.extend(system_message(system)?);
        }
        for (i, raw) in list.into_iter().enumerate() {
            push_message(i, raw, &mut messages)?;
        }
        let (stop_sequences, stop) = stop_sequences(fields.stop_sequences)?;
        let (tool_choice, parallel_tool_calls) = match fields.tool_choice {
            Some(raw) => tool_choice(raw)?,
            None => (None, None),
        };
        let stream = match fields.stream {
            Some(raw) => parse::<bool>(raw).ok_or("`stream` must be a boolean")?,
            None => false,
        };
        let chat = ChatBody {
            messages,
            max_tokens,
            stop,
            temperature: number(fields.temperature, "temperature")?,
            top_p: number(fields.top_p, "top_p")?,
            top_k: number(fields.top_k, "top_k")?,
            user: fields.metadata.map(user).transpose()?.flatten(),
            tools: fields.tools.map(tools).transpose()?,
            tool_choice,
            parallel_tool_calls,
            stream: stream.then_some(true),
            stream_options: stream.then_some(StreamOptions {
                include_usage: true,
            }),
        };
        let rest = serde_json::to_vec(&chat).map_err(|_| "the request could not be translated")?;
        Ok(ChatRequest {
            stream,
            rest: rest.into(),
            reply: Reply::new(model, stop_sequences),
        })
    }

    /// The `model` as the client sent it.
    pub fn model(&self) -> &str {
        self.reply.model()
    }

    pub fn stream(&self) -> bool {
        self.stream
    }

    /// The /v1/chat/completions JSON body for a deployment that knows the model as `model`:
    /// the model first, then the rest as translated.
    pub fn body(&self, model: &str) -> Bytes {
        let fields = self.rest.get(1..).unwrap_or_default();
        let mut out = Vec::with_capacity(fields.len() + model.len() + 16);
        out.extend_from_slice(b"{\"model\":");
        // Cannot fail: a Vec takes every write and a str always serializes.
        let _ = serde_json::to_writer(&mut out, model);
        out.push(b',');
        out.extend_from_slice(fields);
        out.into()
    }

    /// What the answer's translation needs to know of the request.
    pub fn reply(&self) -> Reply {
        self.reply.clone()
    }
}

/// The top-level fields read; any other (`thinking`, `service_tier`, `container`, ...) is
/// ignored.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow, default)]
    model: Option<Raw<'a>>,
    #[serde(borrow, default)]
    max_tokens: Option<Raw<'a>>,
    #[serde(borrow, default)]
    messages: Option<Raw<'a>>,
    #[serde(borrow, default)]
    system: Option<Raw<'a>>,
    #[serde(borrow, default)]
    tools: Option<Raw<'a>>,
    #[serde(borrow, default)]
    tool_choice: Option<Raw<'a>>,
    #[serde(borrow, default)]
    stop_sequences: Option<Raw<'a>>,
    #[serde(borrow, default)]
    temperature: Option<Raw<'a>>,
    #[serde(borrow, default)]
    top_p: Option<Raw<'a>>,
    #[serde(borrow, default)]
    top_k: Option<Raw<'a>>,
    #[serde(borrow, default)]
    metadata: Option<Raw<'a>>,
    #[serde(borrow, default)]
    stream: Option<Raw<'a>>,
}

fn fields(body: &[u8]) -> Result<Fields<'_>, String> {
    // serde_json checks UTF-8 only in the strings it reads: check it all (JSON is UTF-8).
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    if !text.trim_start().starts_with('{') {
        return Err("the body is not a JSON object".into());
    }
    serde_json::from_str(text).map_err(|e| {
        let what = match e.classify() {
            // Every field is read raw, so only a repeated one is refused here.
            Category::Data => "has a repeated field",
            _ => "is not valid JSON",
        };
        format!("the body {what} (line {}, column {})", e.line(), e.column())
    })
}

fn required<'a>(raw: Option<Raw<'a>>, name: &str) -> Result<Raw<'a>, String> {
    raw.ok_or_else(|| format!("`{name}` is required"))
}

/// A block or tool type for an error message: named only when it looks like a type name, so
/// that the message never carries arbitrary body content.
fn type_name(kind: &str) -> String {
    let plain = kind.len() <= 64
        && kind
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        format!(" `{kind}`")
    } else {
        String::new()
    }
}

/// The chat completions body, `model` left out.
#[derive(Serialize)]
struct ChatBody<'a> {
    messages: Vec<Message<'a>>,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<Raw<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<Raw<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<Raw<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<Raw<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Tool<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<ToolChoice<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One chat message.
#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: Content<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<ToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<Cow<'a, str>>,
}

impl<'a> Message<'a> {
    fn new(role: &'static str, content: Content<'a>) -> Self {
        Message {
            role,
            content,
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

#[derive(Serialize)]
#[serde(untagged)]
enum Content<'a> {
    /// `null`: an assistant message of tool calls only.
    Null,
    /// A JSON string of the request, as written.
    Raw(Raw<'a>),
    /// Joined texts.
    Text(String),
    Parts(Vec<Part<'a>>),
}

/// The content of a message of these parts: a plain string when it is one text.
fn parts_content(parts: Vec<Part<'_>>) -> Content<'_> {
    match parts.as_slice() {
        [] => Content::Text(String::new()),
        [Part::Text { text }] => Content::Raw(text),
        _ => Content::Parts(parts),
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: Raw<'a> },
    ImageUrl { image_url: ImageUrl<'a> },
}

#[derive(Serialize)]
struct ImageUrl<'a> {
    url: Cow<'a, str>,
}

#[derive(Serialize)]
struct ToolCall<'a> {
    id: Cow<'a, str>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: Call<'a>,
}

#[derive(Serialize)]
struct Call<'a> {
    name: Cow<'a, str>,
    /// The tool input's JSON text, as a string.
    arguments: &'a str,
}

/// `system`: a string, or text blocks joined by a blank line.
fn system_message(raw: Raw<'_>) -> Result<Option<Message<'_>>, String> {
    let content = match json_string(raw) {
        Some(text) if text.get() == "\"\"" => return Ok(None),
        Some(text) => Content::Raw(text),
        None => {
            let text = joined_text(raw, &|| "system".into())
                .ok_or("`system` must be a string or an array of text blocks")??;
            if text.is_empty() {
                return Ok(None);
            }
            Content::Text(text)
        }
    };
    Ok(Some(Message::new("system", content)))
}

/// The texts of an array of text blocks, joined by a blank line. `None`: not an array;
/// `Some(Err)`: a block that is not text.
fn joined_text(raw: Raw<'_>, at: &dyn Fn() -> String) -> Option<Result<String, String>> {
    let blocks = parse::<Vec<Raw>>(raw)?;
    let mut joined = String::new();
    for (k, raw) in blocks.into_iter().enumerate() {
        let text = object::<Block>(raw)
            .filter(|b| b.kind.and_then(string).as_deref() == Some("text"))
            .and_then(|b| b.text)
            .and_then(string);
        let Some(text) = text else {
            return Some(Err(format!("`{}[{k}]` must be a text block", at())));
        };
        if k > 0 {
            joined.push_str("\n\n");
        }
        joined.push_str(&text);
    }
    Some(Ok(joined))
}

#[derive(Deserialize)]
struct InMessage<'a> {
    #[serde(borrow, default)]
    role: Option<Raw<'a>>,
    #[serde(borrow, default)]
    content: Option<Raw<'a>>,
}

/// A content block: the fields of every kind translated.
#[derive(Deserialize)]
struct Block<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Raw<'a>>,
    #[serde(borrow, default)]
    text: Option<Raw<'a>>,
    #[serde(borrow, default)]
    source: Option<Raw<'a>>,
    #[serde(borrow, default)]
    id: Option<Raw<'a>>,
    #[serde(borrow, default)]
    name: Option<Raw<'a>>,
    #[serde(borrow, default)]
    input: Option<Raw<'a>>,
    #[serde(borrow, default)]
    tool_use_id: Option<Raw<'a>>,
    #[serde(borrow, default)]
    content: Option<Raw<'a>>,
}

/// Translate `messages[i]`: a user message's tool results become tool messages, before the
/// rest of it.
fn push_message<'a>(i: usize, raw: Raw<'a>, out: &mut Vec<Message<'a>>) -> Result<(), String> {
    let m = object::<InMessage>(raw).ok_or_else(|| format!("`messages[{i}]` must be an object"))?;
    let role = match m.role.and_then(string).as_deref() {
        Some("user") => "user",
        Some("assistant") => "assistant",
        _ => {
            return Err(format!(
                "`messages[{i}].role` must be `user` or `assistant`"
            ))
        }
    };
    let content = m
        .content
        .ok_or_else(|| format!("`messages[{i}].content` is required"))?;
    if let Some(text) = json_string(content) {
        out.push(Message::new(role, Content::Raw(text)));
        return Ok(());
    }
    let blocks = parse::<Vec<Raw>>(content).ok_or_else(|| {
        format!("`messages[{i}].content` must be a string or an array of content blocks")
    })?;
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    let mut results = 0;
    for (j, raw) in blocks.into_iter().enumerate() {
        let at = || format!("messages[{i}].content[{j}]");
        let block = object::<Block>(raw).ok_or_else(|| format!("`{}` must be an object", at()))?;
        let kind = block
            .kind
            .and_then(string)
            .ok_or_else(|| format!("`{}.type` must be a string", at()))?;
        match (role, kind.as_ref()) {
            (_, "text") => parts.push(text_part(&block, &at)?),
            ("user", "image") => parts.push(image_part(&block, &at)?),
            ("assistant", "tool_use") => calls.push(tool_call(&block, &at)?),
            ("user", "tool_result") => {
                out.push(tool_result(&block, &at)?);
                results += 1;
            }
            // Reasoning of earlier turns: chat completions have no place for it.
            (_, "thinking" | "redacted_thinking") => {}
            (_, "image" | "tool_use" | "tool_result") => {
                return Err(format!("`{}`: a {kind} block in a {role} message", at()))
            }
            (_, other) => {
                return Err(format!(
                    "unsupported content block type{}",
                    type_name(other)
                ))
            }
        }
    }
    if role == "assistant" {
        let content = if parts.is_empty() && !calls.is_empty() {
            Content::Null
        } else {
            parts_content(parts)
        };
        out.push(Message {
            tool_calls: calls,
            ..Message::new(role, content)
        });
    } else if !parts.is_empty() || results == 0 {
        out.push(Message::new(role, parts_content(parts)));
    }
    Ok(())
}

fn text_part<'a>(block: &Block<'a>, at: &dyn Fn() -> String) -> Result<Part<'a>, String> {
    let text = block.text.and_then(json_string);
    let text = text.ok_or_else(|| format!("`{}.text` must be a string", at()))?;
    Ok(Part::Text { text })
}

#[derive(Deserialize)]
struct Source<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Raw<'a>>,
    #[serde(borrow, default)]
    media_type: Option<Raw<'a>>,
    #[serde(borrow, default)]
    data: Option<Raw<'a>>,
    #[serde(borrow, default)]
    url: Option<Raw<'a>>,
}

/// An image, inline (base64, as a data URL) or by URL.
fn image_part<'a>(block: &Block<'a>, at: &dyn Fn() -> String) -> Result<Part<'a>, String> {
    let source = block.source.and_then(object::<Source>);
    let source = source.ok_or_else(|| format!("`{}.source` must be an object", at()))?;
    let field = |raw: Option<Raw<'a>>, name: &str| {
        raw.and_then(string)
            .ok_or_else(|| format!("`{}.source.{name}` must be a string", at()))
    };
    let url = match field(source.kind, "type")?.as_ref() {
        "base64" => {
            let media_type = field(source.media_type, "media_type")?;
            let data = field(source.data, "data")?;
            Cow::Owned(format!("data:{media_type};base64,{data}"))
        }
        "url" => field(source.url, "url")?,
        _ => return Err(format!("`{}.source.type` must be `base64` or `url`", at())),
    };
    Ok(Part::ImageUrl {
        image_url: ImageUrl { url },
    })
}

/// An assistant's `tool_use`: a tool call with the same id, its input as the arguments text.
fn tool_call<'a>(block: &Block<'a>, at: &dyn Fn() -> String) -> Result<ToolCall<'a>, String> {
    let id = block.id.and_then(string);
    let id = id.ok_or_else(|| format!("`{}.id` must be a string", at()))?;
    let name = block.name.and_then(string);
    let name = name.ok_or_else(|| format!("`{}.name` must be a string", at()))?;
    Ok(ToolCall {
        id,
        kind: "function",
        function: Call {
            name,
            arguments: block.input.map_or("{}", |raw| raw.get()),
        },
    })
}

/// A user's `tool_result`: a tool message answering the call of the same id. Chat
/// completions have no `is_error`; the text says what went wrong.
fn tool_result<'a>(block: &Block<'a>, at: &dyn Fn() -> String) -> Result<Message<'a>, String> {
    let id = block.tool_use_id.and_then(string);
    let id = id.ok_or_else(|| format!("`{}.tool_use_id` must be a string", at()))?;
    let content = match block.content {
        None => Content::Text(String::new()),
        Some(raw) => match json_string(raw) {
            Some(text) => Content::Raw(text),
            None => {
                let at = || format!("{}.content", at());
                let text = joined_text(raw, &at).ok_or_else(|| {
                    format!("`{}` must be a string or an array of text blocks", at())
                })??;
                Content::Text(text)
            }
        },
    };
    Ok(Message {
        tool_call_id: Some(id),
        ..Message::new("tool", content)
    })
}

#[derive(Deserialize)]
struct InTool<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Raw<'a>>,
    #[serde(borrow, default)]
    name: Option<Raw<'a>>,
    #[serde(borrow, default)]
    description: Option<Raw<'a>>,
    #[serde(borrow, default)]
    input_schema: Option<Raw<'a>>,
}

#[derive(Serialize)]
struct Tool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: FunctionDef<'a>,
}

#[derive(Serialize)]
struct FunctionDef<'a> {
    name: Raw<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<Raw<'a>>,
    parameters: Raw<'a>,
}

fn tools(raw: Raw<'_>) -> Result<Vec<Tool<'_>>, String> {
    let list = parse::<Vec<Raw>>(raw).ok_or("`tools` must be an array")?;
    list.into_iter()
        .enumerate()
        .map(|(i, raw)| tool(i, raw))
        .collect()
}

/// A client tool as a function. Anthropic's server tools (`web_search_...`, `bash_...`) have a
/// `type` and no schema: no upstream here runs them.
fn tool(i: usize, raw: Raw<'_>) -> Result<Tool<'_>, String> {
    let t = object::<InTool>(raw).ok_or_else(|| format!("`tools[{i}]` must be an object"))?;
    let Some(parameters) = t.input_schema else {
        return Err(match t.kind.and_then(string) {
            Some(kind) if kind != "custom" => {
                format!("unsupported tool type{}", type_name(&kind))
            }
            _ => format!("`tools[{i}].input_schema` is required"),
        });
    };
    if !parameters.get().starts_with('{') {
        return Err(format!("`tools[{i}].input_schema` must be an object"));
    }
    let name = t.name.and_then(json_string);
    let name = name.ok_or_else(|| format!("`tools[{i}].name` must be a string"))?;
    let description = match t.description {
        Some(raw) => Some(
            json_string(raw).ok_or_else(|| format!("`tools[{i}].description` must be a string"))?,
        ),
        None => None,
    };
    Ok(Tool {
        kind: "function",
        function: FunctionDef {
            name,
            description,
            parameters,
        },
    })
}

#[derive(Deserialize)]
struct InToolChoice<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Raw<'a>>,
    #[serde(borrow, default)]
    name: Option<Raw<'a>>,
    #[serde(borrow, default)]
    disable_parallel_tool_use: Option<Raw<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum ToolChoice<'a> {
    Mode(&'static str),
    Function {
        #[serde(rename = "type")]
        kind: &'static str,
        function: FunctionName<'a>,
    },
}

#[derive(Serialize)]
struct FunctionName<'a> {
    name: Cow<'a, str>,
}

/// `tool_choice`, and `parallel_tool_calls: false` when the client disables parallel use.
fn tool_choice(raw: Raw<'_>) -> Result<(Option<ToolChoice<'_>>, Option<bool>), String> {
    let c = object::<InToolChoice>(raw).ok_or("`tool_choice` must be an object")?;
    let kind = c.kind.and_then(string);
    let choice = match kind.as_deref() {
        Some("auto") => ToolChoice::Mode("auto"),
        Some("any") => ToolChoice::Mode("required"),
        Some("none") => ToolChoice::Mode("none"),
        Some("tool") => ToolChoice::Function {
            kind: "function",
            function: FunctionName {
                name: c
                    .name
                    .and_then(string)
                    .ok_or("`tool_choice.name` must be a string")?,
            },
        },
        _ => return Err("`tool_choice.type` must be `auto`, `any`, `tool` or `none`".into()),
    };
    let disable = match c.disable_parallel_tool_use {
        Some(raw) => {
            parse::<bool>(raw).ok_or("`tool_choice.disable_parallel_tool_use` must be a boolean")?
        }
        None => false,
    };
    Ok((Some(choice), disable.then_some(false)))
}

/// The client's stop sequences, and the chat `stop` (the same array, as written) when any.
fn stop_sequences(raw: Option<Raw<'_>>) -> Result<(Vec<String>, Option<Raw<'_>>), String> {
    let Some(raw) = raw else {
        return Ok((Vec::new(), None));
    };
    let list = parse::<Vec<String>>(raw).ok_or("`stop_sequences` must be an array of strings")?;
    let stop = (!list.is_empty()).then_some(raw);
    Ok((list, stop))
}

/// A number field, copied as written.
fn number<'a>(raw: Option<Raw<'a>>, name: &str) -> Result<Option<Raw<'a>>, String> {
    match raw {
        Some(raw) if parse::<f64>(raw).is_none() => Err(format!("`{name}` must be a number")),
        raw => Ok(raw),
    }
}

#[derive(Deserialize)]
struct Metadata<'a> {
    #[serde(borrow, default)]
    user_id: Option<Raw<'a>>,
}

/// `metadata.user_id`, the chat `user`.
fn user(raw: Raw<'_>) -> Result<Option<Cow<'_, str>>, String> {
    let metadata = object::<Metadata>(raw).ok_or("`metadata` must be an object")?;
    match metadata.user_id {
        Some(id) => Ok(Some(
            string(id).ok_or("`metadata.user_id` must be a string")?,
        )),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The chat body for deployment model "up", as a JSON value.
    fn chat(request: Value) -> Value {
        let req = ChatRequest::from_messages(request.to_string().as_bytes()).expect("valid");
        serde_json::from_slice(&req.body("up")).expect("JSON body")
    }

    fn error(request: Value) -> String {
        ChatRequest::from_messages(request.to_string().as_bytes()).expect_err("invalid")
    }

    /// A minimal request with these messages and extra fields.
    fn request(messages: Value, extra: Value) -> Value {
        let mut r = json!({"model": "claude-x", "max_tokens": 64, "messages": messages});
        if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(extra.clone());
        }
        r
    }

    fn hello() -> Value {
        json!([{"role": "user", "content": "hello"}])
    }

    #[test]
    fn a_minimal_request() {
        let req = ChatRequest::from_messages(
            br#"{"model":"claude-x","max_tokens":64,"messages":[{"role":"user","content":"hi \"there\""}]}"#,
        )
        .unwrap();
        assert_eq!(req.model(), "claude-x");
        assert!(!req.stream());
        assert_eq!(
            std::str::from_utf8(&req.body("up \"1\"")).unwrap(),
            r#"{"model":"up \"1\"","messages":[{"role":"user","content":"hi \"there\""}],"max_tokens":64}"#
        );
        assert_eq!(req.reply().model(), "claude-x");
    }

    #[test]
    fn system_as_a_string_or_text_blocks() {
        let body = chat(request(hello(), json!({"system": "be brief"})));
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(body["messages"][1]["role"], "user");
        let blocks = json!({"system": [
            {"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "two"}
        ]});
        let body = chat(request(hello(), blocks));
        assert_eq!(
            body["messages"][0],
            json!({"role": "system", "content": "one\n\ntwo"})
        );
        let body = chat(request(hello(), json!({"system": ""})));
        assert_eq!(body["messages"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            error(request(hello(), json!({"system": [{"type": "image"}]}))),
            "`system[0]` must be a text block"
        );
        assert_eq!(
            error(request(hello(), json!({"system": 3}))),
            "`system` must be a string or an array of text blocks"
        );
    }

    #[test]
    fn text_and_images() {
        let messages = json!([{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}}
        ]}]);
        let body = chat(request(messages, json!({})));
        assert_eq!(
            body["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.jpg"}}
            ])
        );
        // One text block: a plain string.
        let one = json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}]);
        assert_eq!(
            chat(request(one, json!({})))["messages"][0]["content"],
            "hi"
        );
        let bad = json!([{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]);
        assert_eq!(
            error(request(bad, json!({}))),
            "`messages[0].content[0].source.type` must be `base64` or `url`"
        );
        let bad = json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]);
        assert_eq!(
            error(request(bad, json!({}))),
            "`messages[0].content[0].source.media_type` must be a string"
        );
    }

    #[test]
    fn a_tool_round_trip_keeps_the_ids() {
        let messages = json!([
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_01B", "is_error": true,
                 "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "clock"}]},
                {"type": "text", "text": "thanks"}
            ]},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01C", "name": "noop", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01C"}]}
        ]);
        let body = chat(request(messages, json!({})));
        assert_eq!(
            body["messages"],
            json!([
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": "Let me check.", "tool_calls": [
                    {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01A", "content": "18C"},
                {"role": "tool", "tool_call_id": "toolu_01B", "content": "no\n\nclock"},
                {"role": "user", "content": "thanks"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_01C", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01C", "content": ""}
            ])
        );
    }

    #[test]
    fn tools_and_each_tool_choice() {
        let tools = json!([
            {"name": "get_weather", "description": "Weather now", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"type": "custom", "name": "plain", "input_schema": {"type": "object"}}
        ]);
        let body = chat(request(hello(), json!({"tools": tools})));
        assert_eq!(
            body["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "plain", "parameters": {"type": "object"}}}
            ])
        );
        assert!(body.get("tool_choice").is_none());
        for (choice, want) in [
            (json!({"type": "auto"}), json!("auto")),
            (json!({"type": "any"}), json!("required")),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "get_weather"}),
                json!({"type": "function", "function": {"name": "get_weather"}}),
            ),
        ] {
            let body = chat(request(hello(), json!({"tool_choice": choice})));
            assert_eq!(body["tool_choice"], want);
            assert!(body.get("parallel_tool_calls").is_none());
        }
        let body = chat(request(
            hello(),
            json!({"tool_choice": {"type": "auto", "disable_parallel_tool_use": true}}),
        ));
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(
            error(request(hello(), json!({"tool_choice": {"type": "tool"}}))),
            "`tool_choice.name` must be a string"
        );
        assert_eq!(
            error(request(hello(), json!({"tool_choice": {"type": "some"}}))),
            "`tool_choice.type` must be `auto`, `any`, `tool` or `none`"
        );
    }

    #[test]
    fn server_tools_and_bad_tools_are_refused() {
        let web = json!({"tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]});
        assert_eq!(
            error(request(hello(), web)),
            "unsupported tool type `web_search_20250305`"
        );
        let no_schema = json!({"tools": [{"name": "t"}]});
        assert_eq!(
            error(request(hello(), no_schema)),
            "`tools[0].input_schema` is required"
        );
        let bad_name = json!({"tools": [{"name": 3, "input_schema": {}}]});
        assert_eq!(
            error(request(hello(), bad_name)),
            "`tools[0].name` must be a string"
        );
        // A type that is not a type name is not echoed.
        let odd = json!({"tools": [{"type": "secret data here", "name": "t"}]});
        assert_eq!(error(request(hello(), odd)), "unsupported tool type");
    }

    #[test]
    fn sampling_stop_user_and_stream_fields() {
        let extra = json!({
            "stop_sequences": ["END", "\n\nHuman:"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
            "metadata": {"user_id": "u-42"}, "stream": true,
            "thinking": {"type": "enabled", "budget_tokens": 1024}, "service_tier": "auto", "unknown": [1]
        });
        let req =
            ChatRequest::from_messages(request(hello(), extra).to_string().as_bytes()).unwrap();
        assert!(req.stream());
        assert_eq!(req.reply().stop_sequence("END"), Some("END"));
        assert_eq!(req.reply().stop_sequence("STOP"), None);
        let body: Value = serde_json::from_slice(&req.body("up")).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "up", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64,
                "stop": ["END", "\n\nHuman:"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
                "user": "u-42", "stream": true, "stream_options": {"include_usage": true}
            })
        );
        let body = chat(request(
            hello(),
            json!({"stream": false, "stop_sequences": [], "metadata": {}}),
        ));
        assert_eq!(
            body,
            json!({"model": "up", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 64})
        );
    }

    #[test]
    fn invalid_requests_name_the_field() {
        let cases = [
            (
                json!({"max_tokens": 1, "messages": []}),
                "`model` is required",
            ),
            (
                json!({"model": 1, "max_tokens": 1, "messages": []}),
                "`model` must be a string",
            ),
            (
                json!({"model": "m", "messages": []}),
                "`max_tokens` is required",
            ),
            (
                json!({"model": "m", "max_tokens": 0, "messages": []}),
                "`max_tokens` must be a positive integer",
            ),
            (
                json!({"model": "m", "max_tokens": "9", "messages": []}),
                "`max_tokens` must be a positive integer",
            ),
            (
                json!({"model": "m", "max_tokens": 1}),
                "`messages` is required",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": {}}),
                "`messages` must be an array",
            ),
            (
                request(json!([{"role": "system", "content": "x"}]), json!({})),
                "`messages[0].role` must be `user` or `assistant`",
            ),
            (
                request(json!([{"role": "user"}]), json!({})),
                "`messages[0].content` is required",
            ),
            (
                request(
                    json!([{"role": "user", "content": [{"type": "document"}]}]),
                    json!({}),
                ),
                "unsupported content block type `document`",
            ),
            (
                request(
                    json!([{"role": "user", "content": [{"type": "text"}]}]),
                    json!({}),
                ),
                "`messages[0].content[0].text` must be a string",
            ),
            (
                request(
                    json!([{"role": "assistant", "content": [{"type": "tool_use", "name": "t"}]}]),
                    json!({}),
                ),
                "`messages[0].content[0].id` must be a string",
            ),
            (
                request(
                    json!([{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "t"}]}]),
                    json!({}),
                ),
                "`messages[0].content[0]`: a tool_use block in a user message",
            ),
            (
                request(
                    json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a",
                    "content": [{"type": "image", "source": {}}]}]}]),
                    json!({}),
                ),
                "`messages[0].content[0].content[0]` must be a text block",
            ),
            (
                request(hello(), json!({"stop_sequences": "END"})),
                "`stop_sequences` must be an array of strings",
            ),
            (
                request(hello(), json!({"temperature": "hot"})),
                "`temperature` must be a number",
            ),
            (
                request(hello(), json!({"top_k": [1]})),
                "`top_k` must be a number",
            ),
            (
                request(hello(), json!({"stream": "yes"})),
                "`stream` must be a boolean",
            ),
            (
                request(hello(), json!({"metadata": {"user_id": 7}})),
                "`metadata.user_id` must be a string",
            ),
        ];
        for (body, want) in cases {
            assert_eq!(error(body), want);
        }
    }

    #[test]
    fn bodies_that_are_not_json_objects() {
        for body in [&b"[1]"[..], b"\"secret\"", b"", b"{\"model\":", b"\xff{}"] {
            let e = ChatRequest::from_messages(body).unwrap_err();
            assert!(e.starts_with("the body ") && !e.contains("secret"), "{e}");
        }
        assert_eq!(
            ChatRequest::from_messages(br#"{"model":"a","model":"b"}"#).unwrap_err(),
            "the body has a repeated field (line 1, column 20)"
        );
    }
}
