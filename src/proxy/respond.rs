//! Writing the gateway's own answers (local routes and errors) to the client.

use bytes::Bytes;
use http::HeaderValue;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::Rendered;
use crate::request_id;

/// Prometheus' text exposition format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Write a complete JSON response, with the request's id. Keep-alive stays as the session
/// has it.
pub async fn json(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    full(session, status, "application/json", body, request_id).await
}

/// Write a complete JSON response with these extra headers (`Retry-After`, ...).
pub async fn json_with(
    session: &mut Session,
    status: u16,
    body: Bytes,
    request_id: Option<&HeaderValue>,
    extra: &[(&'static str, HeaderValue)],
) -> Result<()> {
    write(session, status, "application/json", body, request_id, extra).await
}

/// Write a complete response of this content type, with the request's id.
pub async fn full(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    write(session, status, content_type, body, request_id, &[]).await
}

async fn write(
    session: &mut Session,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    request_id: Option<&HeaderValue>,
    extra: &[(&'static str, HeaderValue)],
) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + extra.len()))?;
    if let Some(id) = request_id {
        h.insert_header(request_id::HEADER, id.clone())?;
    }
    for (name, value) in extra {
        h.insert_header(*name, value.clone())?;
    }
    h.insert_header(http::header::CONTENT_TYPE, content_type)?;
    h.set_content_length(body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

/// What a client is told of a stream the upstream cut.
pub fn stream_cut(r: &Rendered, model: Option<&str>) -> Rendered {
    Rendered {
        kind: r.kind,
        message: format!(
            "the upstream stream was interrupted before it finished ({}){}",
            r.message,
            model.map_or(String::new(), |m| format!(" (model `{m}`)"))
        ),
    }
}

/// The SSE event that ends a stream the upstream cut: `data: {"error": {...}}`, the shape both
/// OpenAI SDKs raise on (Python `APIError`, Node `APIError`), with no `[DONE]` after it.
pub fn stream_error_event(r: &Rendered, model: Option<&str>) -> Bytes {
    let mut event = Vec::with_capacity(256);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(&stream_cut(r, model).body());
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}
