//! Request handling of the mock upstream: recording, faults, scripted answers, per-request
//! overrides, routing and answers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use super::anthropic;
use super::body::{Events, MockBody, SseBody};
use super::fault::{ConnCtl, Cut, CutTail, Fault, OCF_ERROR_BODY};
use super::script::{self, Script};
use super::shapes::{self, Completion, Endpoint};
use super::{lock, InFlight, MockKind, RecordedRequest, Shared, StreamRecord};

const OCF_SERVICE_PREFIX: &str = "/v1/service/llm";
const JSON: &str = "application/json";

/// Per-request settings, from the config and the `x-mock-*` request headers.
struct Overrides {
    delay: Duration,
    events: usize,
    interval: Duration,
    status: Option<StatusCode>,
    /// The answer may be a queued script: no fault replaces it (a fault that cuts it may).
    may_script: bool,
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

impl Overrides {
    fn new(shared: &Shared, headers: &HeaderMap) -> Self {
        Overrides {
            delay: header_u64(headers, "x-mock-delay-ms")
                .map(Duration::from_millis)
                .unwrap_or(shared.response_delay),
            events: header_u64(headers, "x-mock-events")
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
                .unwrap_or(shared.sse_events),
            interval: header_u64(headers, "x-mock-interval-ms")
                .map(Duration::from_millis)
                .unwrap_or(shared.sse_interval),
            status: header_u64(headers, "x-mock-status")
                .filter(|s| (300..=599).contains(s))
                .and_then(|s| StatusCode::from_u16(s as u16).ok()),
            may_script: true,
        }
    }
}

fn respond(
    shared: &Shared,
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<MockBody> {
    let len = body.len();
    let mut resp = Response::new(MockBody::full(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert("x-mock-name", shared.name_header.clone());
    resp
}

fn json_ok(shared: &Shared, body: Bytes) -> Response<MockBody> {
    respond(shared, StatusCode::OK, JSON, body)
}

fn error(shared: &Shared, status: StatusCode, message: &str, code: &str) -> Response<MockBody> {
    respond(
        shared,
        status,
        JSON,
        shapes::error_json(status, message, code),
    )
}

fn not_found(shared: &Shared, path: &str) -> Response<MockBody> {
    let msg = format!("mock {}: no route for {path}", shared.name);
    error(shared, StatusCode::NOT_FOUND, &msg, "not_found")
}

fn method_not_allowed(shared: &Shared, method: &Method, path: &str) -> Response<MockBody> {
    let msg = format!(
        "mock {}: method {method} not allowed on {path}",
        shared.name
    );
    error(
        shared,
        StatusCode::METHOD_NOT_ALLOWED,
        &msg,
        "method_not_allowed",
    )
}

fn discovery_failing(shared: &Shared) -> Option<Response<MockBody>> {
    shared.discovery_failing.load(Ordering::Relaxed).then(|| {
        let msg = format!(
            "mock {}: discovery is failing (set_discovery_failing)",
            shared.name
        );
        error(
            shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &msg,
            "mock_discovery_failing",
        )
    })
}

/// Records the request as abandoned if hyper drops the handler (the client went away) before
/// the answer is ready.
struct AnswerPending<'a> {
    shared: &'a Shared,
    answered: bool,
}

impl Drop for AnswerPending<'_> {
    fn drop(&mut self) {
        if !self.answered {
            lock(&self.shared.abandoned).push(Instant::now());
        }
    }
}

/// Handle one request on the connection `conn`. Never panics; every outcome is an HTTP response
/// (or, under a fault, none, a cut one, or a reset).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<MockBody> {
    let mut pending = AnswerPending {
        shared: &shared,
        answered: false,
    };
    let resp = answer(&shared, conn, req).await;
    pending.answered = true;
    resp
}

async fn answer(
    shared: &Arc<Shared>,
    conn: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Response<MockBody> {
    let received_at = Instant::now();
    let n = shared.count.fetch_add(1, Ordering::Relaxed) + 1;
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            let msg = format!("mock {}: could not read the request body: {e}", shared.name);
            return error(shared, StatusCode::BAD_REQUEST, &msg, "bad_body");
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    if shared.record {
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        lock(&shared.requests).push(RecordedRequest {
            method: parts.method.as_str().to_string(),
            path: path_and_query.clone(),
            headers,
            body: body.clone(),
            received_at,
        });
    }

    // Counted from now until the answer is built, or as long as a stream's body lives.
    let in_flight = (parts.method == Method::POST).then(|| InFlight::enter(shared));
    // Read once, when the request has arrived: a later `set_fault` does not change this answer.
    let fault = if parts.method == Method::POST {
        shared.fault_for(&body)
    } else {
        None
    };
    if fault == Some(Fault::Hang) {
        return hang().await;
    }
    // Held until the answer is built: a busy server makes later requests wait.
    let _slot = match (&shared.slots, parts.method == Method::POST) {
        (Some(slots), true) => slots.acquire().await.ok(),
        _ => None,
    };
    let mut ov = Overrides::new(shared, &parts.headers);
    // A script is kept for a later request when a fault answers this one in its place.
    ov.may_script = match &fault {
        None | Some(Fault::ResetAfter { .. } | Fault::StallAfter { .. }) => true,
        Some(_) => false,
    };
    if let Some(cache) = &shared.prefix_cache {
        let asked = parts.headers.contains_key("x-mock-delay-ms");
        if parts.method == Method::POST && !asked {
            let req = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            ov.delay = cache.delay(&req);
        }
    }
    if !ov.delay.is_zero() {
        tokio::time::sleep(ov.delay).await;
    }
    // A set fault wins over `x-mock-status`; it shapes the normal answer (or replaces it).
    if let (None, Some(status)) = (&fault, ov.status) {
        let msg = format!(
            "mock {}: forced status {} (x-mock-status)",
            shared.name,
            status.as_u16()
        );
        return error(shared, status, &msg, "mock_status");
    }
    let mut resp = route(
        shared,
        &parts.method,
        parts.uri.path(),
        &path_and_query,
        &body,
        &ov,
        n,
    );
    if let (MockBody::Sse(sse), Some(in_flight)) = (resp.body_mut(), in_flight) {
        sse.hold(in_flight);
    }
    let script_cut = resp.extensions_mut().remove::<ScriptCut>();
    match (fault, script_cut) {
        (Some(fault), _) => faulty(shared, conn, &fault, resp),
        (None, Some(ScriptCut(events))) => cut(resp, events, CutTail::Reset(conn)),
        (None, None) => resp,
    }
}

/// Marks a scripted stream to be reset after this many events (`Script::Sse::reset_after`);
/// applied by `answer`, which holds the connection.
#[derive(Clone, Copy)]
struct ScriptCut(usize);

/// Marks an answer that must not be sent: the connection is dropped instead (reset when its
/// `ConnCtl` asked for it).
#[derive(Clone, Copy)]
pub(crate) struct AbortConnection;

/// `Fault::Hang`: never answer. Hyper drops this future when the client closes the connection
/// (recorded as abandoned by `handle`) or when the server shuts down.
async fn hang() -> Response<MockBody> {
    std::future::pending::<()>().await;
    // Unreachable: `pending` never completes. Kept so the function needs no `!` type.
    Response::new(MockBody::full(Bytes::new()))
}

/// The answer under `fault` (not `Hang`, handled before), given the normal answer `normal`.
fn faulty(
    shared: &Shared,
    conn: Arc<ConnCtl>,
    fault: &Fault,
    normal: Response<MockBody>,
) -> Response<MockBody> {
    match *fault {
        // Answered by `hang` before the normal answer is built; never reaches here.
        Fault::Hang => normal,
        Fault::Status {
            status,
            retry_after,
        } => fault_status(shared, status, retry_after),
        Fault::OcfError => respond(
            shared,
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Bytes::from_static(OCF_ERROR_BODY.as_bytes()),
        ),
        Fault::Reply { status, ref body } => {
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            respond(shared, code, JSON, Bytes::from(body.clone()))
        }
        Fault::ResetBeforeHead => {
            conn.request_reset();
            let mut resp = normal;
            resp.extensions_mut().insert(AbortConnection);
            resp
        }
        Fault::ResetAfter { events } => cut(normal, events, CutTail::Reset(conn)),
        Fault::StallAfter { events } => cut(normal, events, CutTail::Stall),
    }
}

/// `Fault::Status`: an OpenAI error answer with that status (500 when it is not 200..=599,
/// which hyper could not send as a final answer), plus `Retry-After` when asked for.
fn fault_status(shared: &Shared, status: u16, retry_after: Option<u64>) -> Response<MockBody> {
    let code = StatusCode::from_u16(status)
        .ok()
        .filter(|s| (200..=599).contains(&s.as_u16()))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let msg = format!("mock {}: fault status {status} (set_fault)", shared.name);
    let mut resp = error(shared, code, &msg, "mock_fault");
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The normal answer with its body cut after `events` content events (or half its bytes).
fn cut(normal: Response<MockBody>, events: usize, tail: CutTail) -> Response<MockBody> {
    let (parts, body) = normal.into_parts();
    Response::from_parts(parts, body.cut(events, Cut::new(tail)))
}

fn route(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    path_and_query: &str,
    body: &Bytes,
    ov: &Overrides,
    n: usize,
) -> Response<MockBody> {
    let get_only = |f: &dyn Fn() -> Response<MockBody>| {
        if method == Method::GET || method == Method::HEAD {
            f()
        } else {
            method_not_allowed(shared, method, path)
        }
    };
    match path {
        "/health" | "/v1/health" => {
            return get_only(&|| json_ok(shared, Bytes::from_static(br#"{"status":"ok"}"#)))
        }
        "/v1/models" => return get_only(&|| models(shared)),
        "/v1/dnt/table" if shared.kind == MockKind::Ocf => return get_only(&|| dnt_table(shared)),
        _ => {}
    }
    let inference_path = match shared.kind {
        MockKind::OpenAi => Some(path),
        MockKind::Ocf => path.strip_prefix(OCF_SERVICE_PREFIX),
    };
    let Some(inference_path) = inference_path else {
        return not_found(shared, path);
    };
    if shared.kind == MockKind::Ocf && inference_path == "/v1/models" {
        return get_only(&|| models(shared));
    }
    // Speech to text (multipart uploads): the answer names the server that transcribed.
    let audio = matches!(
        inference_path,
        "/v1/audio/transcriptions" | "/v1/audio/translations"
    );
    if audio && method == Method::POST {
        let text = serde_json::json!({ "text": format!("transcribed by {}", shared.name) });
        return json_ok(shared, Bytes::from(text.to_string()));
    }
    if let Some(route) = anthropic::Route::from_path(inference_path) {
        if method != Method::POST {
            return method_not_allowed(shared, method, path);
        }
        return scripted(shared, path_and_query, ov)
            .unwrap_or_else(|| messages(shared, route, path_and_query, body, ov));
    }
    match Endpoint::from_path(inference_path) {
        Some(endpoint) if method == Method::POST => scripted(shared, path_and_query, ov)
            .unwrap_or_else(|| inference(shared, endpoint, path_and_query, body, ov, n)),
        Some(_) => method_not_allowed(shared, method, path),
        None => not_found(shared, path),
    }
}

fn models(shared: &Shared) -> Response<MockBody> {
    if let Some(r) = discovery_failing(shared) {
        return r;
    }
    let models = shared.models.read().unwrap_or_else(|e| e.into_inner());
    json_ok(shared, shapes::models_json(&models, &shared.name))
}

fn dnt_table(shared: &Shared) -> Response<MockBody> {
    if let Some(r) = discovery_failing(shared) {
        return r;
    }
    let configured = shared
        .dnt_table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let table = match configured {
        Some(t) => t,
        None => {
            let models = shared.models.read().unwrap_or_else(|e| e.into_inner());
            shapes::dnt_table_json(&models, &shared.name)
        }
    };
    json_ok(shared, table)
}

/// The first queued script as the answer, if there is one and this request may take it.
fn scripted(
    shared: &Arc<Shared>,
    path_and_query: &str,
    ov: &Overrides,
) -> Option<Response<MockBody>> {
    if !ov.may_script {
        return None;
    }
    let script = lock(&shared.scripts).pop_front()?;
    Some(match script {
        Script::Json { status, body } => {
            // hyper cannot send a 1xx as the final answer.
            let code = StatusCode::from_u16(status)
                .ok()
                .filter(|s| (200..=599).contains(&s.as_u16()))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            respond(shared, code, JSON, Bytes::from(body))
        }
        Script::Sse {
            events,
            reset_after,
        } => {
            let (frames, last) = script::sse_frames(&events);
            let events = Events::Frames { frames, last };
            let mut resp = sse_response(shared, path_and_query, events, ov.interval);
            if let Some(n) = reset_after {
                resp.extensions_mut().insert(ScriptCut(n));
            }
            resp
        }
    })
}

/// The request body as a JSON object, or why it is not one.
fn json_object(body: &Bytes) -> Result<Value, String> {
    match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("request body must be a JSON object".to_string()),
        Err(e) => Err(format!("request body is not valid JSON: {e}")),
    }
}

/// The mock's 400 answer to a body that is not a JSON object.
fn bad_body(shared: &Shared, why: &str) -> Response<MockBody> {
    error(shared, StatusCode::BAD_REQUEST, why, "invalid_json")
}

/// Anthropic's Messages API, natively: the fixed message (JSON or stream), or a token count.
fn messages(
    shared: &Arc<Shared>,
    route: anthropic::Route,
    path_and_query: &str,
    body: &Bytes,
    ov: &Overrides,
) -> Response<MockBody> {
    let req = match json_object(body) {
        Ok(v) => v,
        Err(why) => return bad_body(shared, &why),
    };
    match route {
        anthropic::Route::CountTokens => json_ok(shared, anthropic::count_tokens_json(&req)),
        anthropic::Route::Messages if req["stream"] == Value::Bool(true) => {
            let (frames, last) = anthropic::sse_frames();
            let events = Events::Frames { frames, last };
            sse_response(shared, path_and_query, events, ov.interval)
        }
        anthropic::Route::Messages => json_ok(
            shared,
            Bytes::from_static(anthropic::MESSAGE_JSON.as_bytes()),
        ),
    }
}

fn inference(
    shared: &Arc<Shared>,
    endpoint: Endpoint,
    path_and_query: &str,
    body: &Bytes,
    ov: &Overrides,
    n: usize,
) -> Response<MockBody> {
    let req = match json_object(body) {
        Ok(v) => v,
        Err(why) => return bad_body(shared, &why),
    };
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let completion = Completion {
        endpoint,
        id: format!("{}{n}", endpoint.id_prefix()),
        created: shapes::unix_now(),
        model,
        prompt_tokens: shapes::prompt_tokens(endpoint, &req),
        events: ov.events,
        include_usage,
    };
    if !stream || endpoint == Endpoint::Embeddings {
        return json_ok(shared, completion.full_json(&req));
    }
    sse_response(
        shared,
        path_and_query,
        Events::Generated(completion),
        ov.interval,
    )
}

/// A 200 `text/event-stream` answer sending `events` (recorded as a stream when recording).
fn sse_response(
    shared: &Arc<Shared>,
    path_and_query: &str,
    events: Events,
    interval: Duration,
) -> Response<MockBody> {
    let record = shared.record.then(|| {
        let rec = Arc::new(Mutex::new(StreamRecord {
            path: path_and_query.to_string(),
            started_at: Instant::now(),
            sent: Vec::new(),
            event_times: Vec::new(),
            finished: false,
            closed_early_at: None,
        }));
        lock(&shared.streams).push(rec.clone());
        rec
    });
    let body = SseBody::new(events, interval, record);
    let mut resp = Response::new(MockBody::Sse(Box::new(body)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-mock-name", shared.name_header.clone());
    resp
}
