//! Bundled mock upstream: a small, fast hyper HTTP/1.1 server imitating OpenAI-compatible model servers and OCF heads.
//!
//! Its own crate, so that the gateway does not depend on hyper: used in-process by the
//! gateway's integration tests, as the `ai-proxy-mock` binary, and by its load benches.
//!
//! # API
//!
//! ```text
//! MockConfig::openai(name, models) / MockConfig::ocf(name, models)   (pub fields; with_* helpers)
//! MockConfig::with_fault(Fault)                                       a fault from the start
//! MockServer::start(cfg).await -> io::Result<MockServer>             binds 127.0.0.1:0
//! MockServer::start_on(cfg, addr).await -> io::Result<MockServer>
//! server.addr() / server.url() / server.name()
//! server.set_models(vec) / server.set_dnt_table(Option<Bytes>) / server.set_discovery_failing(bool)
//! server.set_fault(Option<Fault>) / server.fault()                   inference misbehaviour
//! server.set_fault_times(Option<Fault>, n)                          ... for the next n only
//! server.push_script(Script) / server.scripts_left() / server.clear_scripts()   exact answers, FIFO
//! server.requests() -> Vec<RecordedRequest> / server.request_count() / server.streams() -> Vec<StreamRecord>
//! server.in_flight() / server.peak_in_flight() / server.reset_peak_in_flight()   POSTs being answered
//! server.clear_records()
//! server.shutdown().await    (dropping the server also stops it, asynchronously)
//! ```
//!
//! # Routes
//!
//! | route | kinds | answer |
//! |---|---|---|
//! | `GET /health`, `GET /v1/health` | both | `{"status":"ok"}` |
//! | `GET /v1/models` | both (ocf also under `/v1/service/llm`) | OpenAI model list; 500 while discovery is failing |
//! | `GET /v1/dnt/table` | ocf | configured bytes verbatim, or a generated table; 500 while discovery is failing |
//! | `POST /v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/responses` | openai | completion (JSON or SSE) |
//! | `POST /v1/messages` | openai (ocf under its prefix) | Anthropic's fixed message: [`anthropic::MESSAGE_JSON`], or the events [`anthropic::MESSAGE_SSE`] with `"stream": true` |
//! | `POST /v1/messages/count_tokens` | openai (ocf under its prefix) | `{"input_tokens":N}`, N from [`anthropic::input_tokens`] |
//! | `POST /v1/service/llm/v1/...` (same four) | ocf | same; the unprefixed paths are 404 on an ocf mock |
//!
//! Unknown paths answer 404 and wrong methods 405, both with an OpenAI error JSON body. A request body
//! that is not a JSON object answers 400. Every response carries `x-mock-name: <name>`.
//!
//! Streaming (`"stream": true` on chat/completions/responses): `text/event-stream`, chunked, one
//! `data: ...\n\n` event per body frame, each frame flushed on its own. `sse_interval` is the pause
//! between two content events (not before the first, and not before the usage chunk or `[DONE]`).
//! Chat/completions streams end with an optional usage chunk (`stream_options.include_usage`; every
//! other chunk then has `"usage": null`, as OpenAI sends them) and `data: [DONE]`; `/v1/responses` streams send `response.created`, one `response.output_text.delta`
//! per event and `response.completed` (which counts as finished; there is no `[DONE]`).
//!
//! Scripted answers ([`Script`], `push_script`): a FIFO of exact answers. The next POST to an
//! inference route of the table (chat, completions, embeddings, responses, messages, count_tokens)
//! takes the first one, whatever it asked, instead of the generated answer:
//!
//! | script | answer |
//! |---|---|
//! | `Script::json(&value)`, `Script::Json { status, body }` | that status, `application/json`, exactly that body |
//! | `Script::sse([values])`, `Script::sse_raw([strings])` | 200 `text/event-stream`: `data: <payload>\n\n` per payload, one frame each (paced by `sse_interval`), then `data: [DONE]\n\n`; recorded in `streams()` |
//! | `... .reset_after(n)` (streams) | the first n events, then a TCP reset instead of `[DONE]` |
//!
//! A fault that replaces the answer (`Hang`, `Status`, `OcfError`, `Reply`, `ResetBeforeHead`) leaves
//! the queue untouched; `ResetAfter` / `StallAfter` cut the scripted answer as they cut a generated one.
//!
//! Native Anthropic (`/v1/messages`): the answer's bytes are fixed, whatever the model asked for
//! ([`anthropic::MODEL`]), so that a test can compare what a gateway passed through byte for byte
//! (the stream with [`anthropic::message_sse`]). Errors on every route are OpenAI-shaped.
//!
//! Per-request overrides (request headers): `x-mock-delay-ms` (delay before response headers),
//! `x-mock-events` (content events / completion tokens), `x-mock-interval-ms` (pause between
//! events), `x-mock-status` (300..=599: answer that status with an OpenAI error body after the delay).
//!
//! Faults ([`Fault`], `set_fault` / `with_fault`): a misbehaviour applied to every later POST
//! (GETs, discovery included, are never affected), so a failover test can make one mock hang,
//! fail with a status, reset or stall mid-body, or answer like a failed OCF forward, while
//! another behaves. A set fault wins over `x-mock-status`; the other overrides still apply.
//! Requests under a fault are counted and recorded like any other. `ResetAfter` resets with a
//! real TCP RST: the body asks its connection's socket wrapper for SO_LINGER 0 and fails, hyper
//! drops the connection, and closing the socket sends the RST (over TLS too, without
//! close_notify).
//!
//! The model in the request is echoed without validation. Completion tokens equal the number of
//! events; prompt tokens are the number of whitespace-separated words in the prompt (at least 1).
//!
//! Client disconnects: hyper notices the peer's EOF while a response body is pending and drops
//! the body; the stream body records `closed_early_at` when it is dropped before its final event.
//!
//! Recording (`record`): requests and stream records are kept only when `record` is true;
//! `request_count()` counts every request regardless.
//!
//! In flight (`in_flight()`, `peak_in_flight()`): a POST counts from its arrival until its answer
//! is built, or, for a stream, until the stream body is dropped (finished, or its client gone);
//! the peak is the most counted at once since the start or `reset_peak_in_flight()`.

pub mod anthropic;
mod body;
mod fault;
mod handler;
mod prefix_cache;
mod script;
mod shapes;
mod tls;

pub use fault::Fault;
pub use prefix_cache::PrefixCache;
pub use script::Script;
pub use tls::MockTls;

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderValue;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use fault::{ConnCtl, ConnIo};

/// Which kind of upstream the mock imitates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MockKind {
    /// An OpenAI-compatible model server (vLLM, OpenAI): inference at `/v1/...`.
    OpenAi,
    /// An OCF / OpenTela head: `GET /v1/dnt/table`, inference under `/v1/service/llm/v1/...`.
    Ocf,
}

impl MockKind {
    /// `"openai"` or `"ocf"`.
    pub fn as_str(self) -> &'static str {
        match self {
            MockKind::OpenAi => "openai",
            MockKind::Ocf => "ocf",
        }
    }
}

/// Configuration of one mock upstream.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Returned in the `x-mock-name` header of every response (must be a valid header value).
    pub name: String,
    pub kind: MockKind,
    /// Served at `GET /v1/models` and in the generated dnt table.
    pub models: Vec<String>,
    /// OCF: serve these exact bytes at `GET /v1/dnt/table` instead of a generated table.
    pub dnt_table: Option<Bytes>,
    /// Serve HTTPS with this certificate chain and key.
    pub tls: Option<MockTls>,
    /// Keep every request and stream for inspection.
    pub record: bool,
    /// Default number of content events per stream (and completion tokens).
    pub sse_events: usize,
    /// Default pause between two content events.
    pub sse_interval: Duration,
    /// Default delay before sending response headers.
    pub response_delay: Duration,
    /// Misbehave on inference requests from the start (see [`MockServer::set_fault`]).
    pub fault: Option<Fault>,
    /// Time inference answers like a server with a prefix cache (in place of `response_delay`).
    pub prefix_cache: Option<PrefixCache>,
    /// Inference requests served at once, at most (a model server's batch); later ones wait
    /// for a free slot before their delay starts, so a busy server's answers slow down.
    pub max_concurrency: Option<usize>,
}

impl MockConfig {
    fn new(
        kind: MockKind,
        name: impl Into<String>,
        models: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        MockConfig {
            name: name.into(),
            kind,
            models: models.into_iter().map(Into::into).collect(),
            dnt_table: None,
            tls: None,
            record: true,
            sse_events: 5,
            sse_interval: Duration::ZERO,
            response_delay: Duration::ZERO,
            fault: None,
            prefix_cache: None,
            max_concurrency: None,
        }
    }

    /// An OpenAI-compatible upstream (recording on, 5 events, no pauses).
    pub fn openai(
        name: impl Into<String>,
        models: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self::new(MockKind::OpenAi, name, models)
    }

    /// An OCF head (recording on, 5 events, no pauses, generated dnt table).
    pub fn ocf(
        name: impl Into<String>,
        models: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self::new(MockKind::Ocf, name, models)
    }

    pub fn with_tls(mut self, tls: MockTls) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_dnt_table(mut self, table: impl Into<Bytes>) -> Self {
        self.dnt_table = Some(table.into());
        self
    }

    pub fn with_record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    pub fn with_sse(mut self, events: usize, interval: Duration) -> Self {
        self.sse_events = events;
        self.sse_interval = interval;
        self
    }

    pub fn with_max_concurrency(mut self, slots: usize) -> Self {
        self.max_concurrency = Some(slots.max(1));
        self
    }

    pub fn with_prefix_cache(mut self, cache: PrefixCache) -> Self {
        self.prefix_cache = Some(cache);
        self
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.response_delay = delay;
        self
    }

    /// Start with this fault applied to every inference request.
    pub fn with_fault(mut self, fault: Fault) -> Self {
        self.fault = Some(fault);
        self
    }
}

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as received.
    pub path: String,
    /// Header names are lowercase; values are lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// When the request head arrived.
    pub received_at: Instant,
}

impl RecordedRequest {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (case-insensitive), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body parsed as JSON (`Value::Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// What the mock wrote for one SSE response.
#[derive(Clone, Debug)]
pub struct StreamRecord {
    /// Path (and query) of the request that started the stream.
    pub path: String,
    /// When the response head was handed to hyper.
    pub started_at: Instant,
    /// Exact body bytes handed to the connection, in order.
    pub sent: Vec<u8>,
    /// When each body frame was handed to the connection.
    pub event_times: Vec<Instant>,
    /// The final event (`[DONE]`, or `response.completed`) was handed to the connection.
    pub finished: bool,
    /// When the mock noticed the connection went away before the final event.
    pub closed_early_at: Option<Instant>,
}

/// State shared by the server handle, the accept loop and every request.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) name_header: HeaderValue,
    pub(crate) kind: MockKind,
    pub(crate) record: bool,
    pub(crate) sse_events: usize,
    pub(crate) sse_interval: Duration,
    pub(crate) response_delay: Duration,
    pub(crate) prefix_cache: Option<prefix_cache::SeenPrefixes>,
    /// `max_concurrency`: the free slots.
    pub(crate) slots: Option<tokio::sync::Semaphore>,
    pub(crate) models: RwLock<Vec<String>>,
    pub(crate) dnt_table: RwLock<Option<Bytes>>,
    pub(crate) discovery_failing: AtomicBool,
    /// Applied to inference requests (POSTs) while set.
    pub(crate) fault: RwLock<Option<Fault>>,
    /// When set, the fault applies only to requests for this model (a server whose other
    /// models are fine).
    pub(crate) fault_model: RwLock<Option<String>>,
    /// How many more requests the fault applies to (`usize::MAX`: until it is changed).
    pub(crate) fault_left: AtomicUsize,
    /// Answers queued by `push_script`, taken by inference requests in order.
    pub(crate) scripts: Mutex<VecDeque<Script>>,
    pub(crate) count: AtomicUsize,
    pub(crate) requests: Mutex<Vec<RecordedRequest>>,
    pub(crate) streams: Mutex<Vec<Arc<Mutex<StreamRecord>>>>,
    /// When requests were abandoned: the connection went away before the answer was sent.
    pub(crate) abandoned: Mutex<Vec<Instant>>,
    /// POSTs being answered now (see [`InFlight`]).
    pub(crate) in_flight: AtomicUsize,
    /// The most `in_flight` seen at once.
    pub(crate) peak_in_flight: AtomicUsize,
}

/// Counts one POST in `Shared::in_flight` while it lives: held by the handler until the answer
/// is built, and moved into a stream's body to last as long as the stream.
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(crate) fn enter(shared: &Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// The fault to apply to a request arriving now.
    pub(crate) fn fault(&self) -> Option<Fault> {
        self.fault.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The fault to apply to a request with this body (see `set_fault_for`).
    pub(crate) fn fault_for(&self, body: &[u8]) -> Option<Fault> {
        let only = self
            .fault_model
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match only {
            Some(model)
                if serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .as_ref()
                    .and_then(|v| v["model"].as_str())
                    != Some(model.as_str()) =>
            {
                None
            }
            _ => self.take_fault(),
        }
    }

    /// The fault for a request it applies to, counted against `fault_left`.
    fn take_fault(&self) -> Option<Fault> {
        let mut fault = self.fault.write().unwrap_or_else(|e| e.into_inner());
        let left = self.fault_left.load(Ordering::SeqCst);
        if fault.is_some() && left != usize::MAX {
            self.fault_left
                .store(left.saturating_sub(1), Ordering::SeqCst);
            if left <= 1 {
                return fault.take();
            }
        }
        fault.clone()
    }
}

/// Lock a mutex, ignoring poisoning (a panicking test thread must not cascade into the mock).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running mock upstream. Stops when dropped (asynchronously) or on [`MockServer::shutdown`].
pub struct MockServer {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("name", &self.shared.name)
            .field("kind", &self.shared.kind)
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl MockServer {
    /// Start on `127.0.0.1:0` (an ephemeral port). Must be called inside a tokio runtime.
    pub async fn start(cfg: MockConfig) -> io::Result<MockServer> {
        Self::start_on(cfg, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)).await
    }

    /// Start on `addr` (SO_REUSEADDR is set, so a port freed by a stopped mock can be reused).
    pub async fn start_on(cfg: MockConfig, addr: SocketAddr) -> io::Result<MockServer> {
        let name_header = HeaderValue::from_str(&cfg.name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mock name {:?} is not a valid header value", cfg.name),
            )
        })?;
        let acceptor = match &cfg.tls {
            Some(t) => Some(t.acceptor()?),
            None => None,
        };
        let listener = bind_listener(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: cfg.name,
            name_header,
            kind: cfg.kind,
            record: cfg.record,
            sse_events: cfg.sse_events,
            sse_interval: cfg.sse_interval,
            response_delay: cfg.response_delay,
            prefix_cache: cfg.prefix_cache.map(prefix_cache::SeenPrefixes::new),
            slots: cfg.max_concurrency.map(tokio::sync::Semaphore::new),
            models: RwLock::new(cfg.models),
            dnt_table: RwLock::new(cfg.dnt_table),
            discovery_failing: AtomicBool::new(false),
            fault: RwLock::new(cfg.fault),
            fault_model: RwLock::new(None),
            fault_left: AtomicUsize::new(usize::MAX),
            scripts: Mutex::new(VecDeque::new()),
            count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            streams: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel();
        let tls = acceptor.is_some();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), acceptor, stop_rx));
        Ok(MockServer {
            addr,
            tls,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT` (`https://` when TLS is on).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn kind(&self) -> MockKind {
        self.shared.kind
    }

    /// Replace the model list; takes effect on the next `GET /v1/models` or generated dnt table.
    pub fn set_models(&self, models: Vec<String>) {
        *self
            .shared
            .models
            .write()
            .unwrap_or_else(|e| e.into_inner()) = models;
    }

    pub fn models(&self) -> Vec<String> {
        self.shared
            .models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Serve these bytes at `GET /v1/dnt/table` (`None`: generate the table from the models).
    pub fn set_dnt_table(&self, table: Option<Bytes>) {
        *self
            .shared
            .dnt_table
            .write()
            .unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// While true, `GET /v1/models` and `GET /v1/dnt/table` answer 500.
    pub fn set_discovery_failing(&self, failing: bool) {
        self.shared
            .discovery_failing
            .store(failing, Ordering::SeqCst);
    }

    /// Apply `fault` to every later inference request (`None`: behave normally again). Requests
    /// already being answered keep the behaviour they started with.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.set_fault_times(fault, usize::MAX);
    }

    /// Apply `fault` to the next `times` inference requests only, then behave normally again.
    pub fn set_fault_times(&self, fault: Option<Fault>, times: usize) {
        let mut slot = self.shared.fault.write().unwrap_or_else(|e| e.into_inner());
        self.shared.fault_left.store(times, Ordering::SeqCst);
        *slot = fault;
    }

    /// Apply `fault` only to later inference requests whose body asks for `model`.
    pub fn set_fault_for(&self, model: &str, fault: Fault) {
        *self
            .shared
            .fault_model
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(model.into());
        self.set_fault(Some(fault));
    }

    /// The fault currently applied to inference requests.
    pub fn fault(&self) -> Option<Fault> {
        self.shared.fault()
    }

    /// Queue this exact answer: the next inference request that finds it first in the queue
    /// answers it instead of the generated answer (see [`Script`] and the crate docs).
    pub fn push_script(&self, script: Script) {
        lock(&self.shared.scripts).push_back(script);
    }

    /// Scripts queued and not taken yet.
    pub fn scripts_left(&self) -> usize {
        lock(&self.shared.scripts).len()
    }

    /// Forget the queued scripts: answer generated completions again.
    pub fn clear_scripts(&self) {
        lock(&self.shared.scripts).clear();
    }

    /// Snapshot of the recorded requests, in arrival order (empty when `record` is false).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// Number of requests received (counted even when `record` is false).
    pub fn request_count(&self) -> usize {
        self.shared.count.load(Ordering::SeqCst)
    }

    /// When each abandoned request was noticed: its connection closed while the mock was still
    /// preparing the answer (e.g. during `x-mock-delay-ms` or under [`Fault::Hang`]). Streams cut
    /// later are in [`StreamRecord::closed_early_at`] instead.
    pub fn abandoned(&self) -> Vec<Instant> {
        lock(&self.shared.abandoned).clone()
    }

    /// Snapshot of one record per SSE response started (empty when `record` is false).
    pub fn streams(&self) -> Vec<StreamRecord> {
        lock(&self.shared.streams)
            .iter()
            .map(|s| lock(s).clone())
            .collect()
    }

    /// POSTs being answered now: from arrival until the answer is built, or until a stream's
    /// body is dropped (it finished or its client went away).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most POSTs in flight at once since the start (or the last `reset_peak_in_flight`).
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Start the peak over from the number in flight now.
    pub fn reset_peak_in_flight(&self) {
        self.shared
            .peak_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    /// Forget recorded requests and streams (the request counter is kept).
    pub fn clear_records(&self) {
        lock(&self.shared.requests).clear();
        lock(&self.shared.streams).clear();
    }

    /// Stop accepting, close the listener and every open connection, and wait until that is done.
    pub async fn shutdown(mut self) {
        self.stop.take();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Dropping the sender wakes the accept loop, which closes the listener and aborts the
        // connections. This happens on the runtime shortly after; use `shutdown()` to wait for it.
        self.stop.take();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Option<TlsAcceptor>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut conns = JoinSet::new();
    // Runs until the server handle asks it to stop (or is dropped).
    loop {
        tokio::select! {
            _ = &mut stop => break,
            res = listener.accept() => match res {
                Ok((stream, _peer)) => {
                    conns.spawn(serve_conn(stream, shared.clone(), acceptor.clone()));
                }
                Err(e) => {
                    // Transient (e.g. EMFILE, ECONNABORTED): back off a little instead of spinning.
                    log::debug!("mock {}: accept failed: {e}", shared.name);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_conn(stream: TcpStream, shared: Arc<Shared>, acceptor: Option<TlsAcceptor>) {
    let _ = stream.set_nodelay(true);
    // Lets a faulty body reset this connection (see `Fault::ResetAfter`).
    let ctl = Arc::new(ConnCtl::default());
    let stream = ConnIo::new(stream, ctl.clone());
    let svc = {
        let shared = shared.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let ctl = ctl.clone();
            async move {
                let resp = handler::handle(shared, ctl, req).await;
                // An error from the service makes hyper drop the connection unanswered.
                match resp.extensions().get::<handler::AbortConnection>() {
                    Some(_) => Err(io::Error::other("mock: connection reset by a fault")),
                    None => Ok(resp),
                }
            }
        })
    };
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).keep_alive(true);
    let res = match acceptor {
        None => builder.serve_connection(TokioIo::new(stream), svc).await,
        Some(acceptor) => {
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), svc).await,
                Ok(Err(e)) => {
                    log::debug!("mock {}: TLS handshake failed: {e}", shared.name);
                    return;
                }
                Err(_) => {
                    log::debug!("mock {}: TLS handshake timed out", shared.name);
                    return;
                }
            }
        }
    };
    if let Err(e) = res {
        log::debug!("mock {}: connection ended with error: {e}", shared.name);
    }
}

/// A listener with a deep accept backlog: load benches open thousands of streams at once, and
/// the default backlog (128 with tokio's `bind`) would drop connection attempts.
fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    const BACKLOG: u32 = 4096;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}
