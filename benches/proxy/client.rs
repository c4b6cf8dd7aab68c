//! The load generator's HTTP/1.1 client: request bodies built once, keep-alive hyper
//! connections, and one request/response exchange that reads the whole answer.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::systems::{CLIENT_KEY_HEADER, MODEL};

pub type ReqBody = Full<Bytes>;
pub type Sender = SendRequest<ReqBody>;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one non-streaming exchange, so every load loop ends even if a system hangs.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request did not count as a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    Connect,
    Timeout,
    Status(u16),
    /// The connection broke or the HTTP exchange failed.
    Http,
    /// A stream ended without all its events and `[DONE]`.
    Truncated,
    /// The keep-alive connection had been closed by the server (nginx closes one after
    /// `keepalive_requests`, 1000) before the request went out: the client's cue to reconnect
    /// and resend, as HTTP clients do. Not counted as a failure.
    Stale,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Connect => f.write_str("connect"),
            Failure::Timeout => f.write_str("timeout"),
            Failure::Status(s) => write!(f, "HTTP {s}"),
            Failure::Http => f.write_str("conn error"),
            Failure::Truncated => f.write_str("truncated"),
            Failure::Stale => f.write_str("stale connection"),
        }
    }
}

/// Failures counted by kind (a handful of kinds, so a small vector).
#[derive(Clone, Debug, Default)]
pub struct Failures(Vec<(Failure, u64)>);

impl Failures {
    pub fn add(&mut self, f: Failure) {
        self.add_n(f, 1);
    }

    fn add_n(&mut self, f: Failure, n: u64) {
        match self.0.iter_mut().find(|(k, _)| *k == f) {
            Some((_, c)) => *c += n,
            None => {
                self.0.push((f, n));
                self.0.sort();
            }
        }
    }

    pub fn merge(&mut self, other: &Failures) {
        for &(f, n) in &other.0 {
            self.add_n(f, n);
        }
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for Failures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.total();
        if total == 0 {
            return f.write_str("0");
        }
        write!(f, "{total} (")?;
        for (i, (k, n)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k} ×{n}")?;
        }
        f.write_str(")")
    }
}

/// A chat request body of exactly `size` bytes (when `size` is above the fixed parts), with
/// `model` last as OpenAI SDKs send it, so a proxy must read the whole body to route it.
pub fn chat_body(size: usize, stream: bool) -> Bytes {
    let head = r#"{"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":""#;
    let tail =
        format!(r#""}}],"temperature":0.7,"max_tokens":256,"stream":{stream},"model":"{MODEL}"}}"#);
    filled(head, &tail, size)
}

/// The client API a system is driven through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions` (every system but one).
    Chat,
    /// `POST /v1/messages`, Anthropic's API, which the gateway translates (`ai-proxy-messages`).
    Messages,
}

/// The request of a point for a system driven through `api`: a body of `size` bytes.
pub fn request(api: Api, size: usize, stream: bool, pace: Option<Pace>) -> Request<ReqBody> {
    match api {
        Api::Chat => chat_request("/v1/chat/completions", chat_body(size, stream), pace),
        Api::Messages => chat_request("/v1/messages", messages_body(size, stream), pace),
    }
}

/// A Messages request body of exactly `size` bytes (when `size` is above the fixed parts): the
/// chat body's conversation as Anthropic's SDKs send it, `model` last as well.
pub fn messages_body(size: usize, stream: bool) -> Bytes {
    let head = r#"{"system":"You are a helpful assistant.","messages":[{"role":"user","content":""#;
    let tail =
        format!(r#""}}],"temperature":0.7,"max_tokens":256,"stream":{stream},"model":"{MODEL}"}}"#);
    filled(head, &tail, size)
}

fn filled(head: &str, tail: &str, size: usize) -> Bytes {
    let fill = size.saturating_sub(head.len() + tail.len());
    let mut s = String::with_capacity(size.max(head.len() + tail.len()));
    s.push_str(head);
    s.extend("lorem ipsum dolor sit amet ".chars().cycle().take(fill));
    s.push_str(tail);
    Bytes::from(s)
}

/// Pacing asked of the mock for a stream (`x-mock-events`, `x-mock-interval-ms`).
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    pub events: usize,
    pub interval: Duration,
}

/// `POST path` with `body`; built once per point and cloned per request (a clone shares the
/// body bytes; only the small header map is copied).
fn chat_request(path: &str, body: Bytes, pace: Option<Pace>) -> Request<ReqBody> {
    // Every system gets the client key, as OpenAI SDKs always send one; only
    // `ai-proxy-auth` checks it. Anthropic's SDKs send their version as well.
    let mut b = Request::post(path)
        .header("anthropic-version", "2023-06-01")
        .header(HOST, "localhost")
        .header(AUTHORIZATION, CLIENT_KEY_HEADER)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len());
    if let Some(p) = pace {
        b = b
            .header(ACCEPT, "text/event-stream")
            .header("x-mock-events", p.events)
            .header("x-mock-interval-ms", p.interval.as_millis() as u64);
    }
    b.body(Full::new(body))
        .expect("a request built from constant parts is valid")
}

/// `GET /health`: answered by the gateway itself, by nginx through its pooled upstream
/// connections, and by the mock.
pub fn health_request() -> Request<ReqBody> {
    Request::get("/health")
        .header(HOST, "localhost")
        .body(Full::new(Bytes::new()))
        .expect("a request built from constant parts is valid")
}

/// A new keep-alive connection (TCP_NODELAY, as proxies and SDKs use).
/// The keep-alive connection in `slot`, or a new one when there is none or it was closed.
pub async fn live_sender(
    slot: &mut Option<Sender>,
    addr: SocketAddr,
) -> Result<&mut Sender, Failure> {
    if slot.as_ref().is_some_and(|s| s.is_closed()) {
        *slot = None;
    }
    match slot {
        Some(s) => Ok(s),
        None => Ok(slot.insert(connect(addr).await?)),
    }
}

pub async fn connect(addr: SocketAddr) -> Result<Sender, Failure> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| Failure::Connect)?
        .map_err(|_| Failure::Connect)?;
    stream.set_nodelay(true).map_err(|_| Failure::Connect)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Failure::Connect)?;
    // The connection task ends when the sender is dropped or the peer closes.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Send `req` and read the whole response; `Ok` only for a 200. The body is read even for
/// other statuses so the connection can be reused.
pub async fn exchange(sender: &mut Sender, req: Request<ReqBody>) -> Result<(), Failure> {
    sender.ready().await.map_err(|_| Failure::Stale)?;
    let resp = sender.send_request(req).await.map_err(|e| {
        if e.is_canceled() {
            Failure::Stale
        } else {
            Failure::Http
        }
    })?;
    let status = resp.status();
    let mut body = resp.into_body();
    // Bounded by the response: hyper ends the body at its length or the last chunk.
    while let Some(frame) = body.frame().await {
        frame.map_err(|_| Failure::Http)?;
    }
    if status != hyper::StatusCode::OK {
        return Err(Failure::Status(status.as_u16()));
    }
    Ok(())
}

/// [`exchange`] bounded by [`REQUEST_TIMEOUT`].
pub async fn exchange_timed(sender: &mut Sender, req: Request<ReqBody>) -> Result<(), Failure> {
    tokio::time::timeout(REQUEST_TIMEOUT, exchange(sender, req))
        .await
        .unwrap_or(Err(Failure::Timeout))
}
