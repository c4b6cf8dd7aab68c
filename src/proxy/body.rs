//! Reading the client's request body in `request_filter`: bounded in size and time, with
//! `Expect: 100-continue` answered, and Pingora's retry buffer enabled so bodies up to 64 KiB
//! are replayed upstream without another copy.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;
use pingora::Result;

use crate::error::ErrorKind;

fn too_large(session: &mut Session, max: usize) -> Box<pingora::Error> {
    // The rest of the body is never read: the connection cannot be reused.
    session.set_keepalive(None);
    ErrorKind::BodyTooLarge.err(format!(
        "request body is larger than the gateway's limit of {max} bytes"
    ))
}

fn declared_length(session: &Session) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn expects_continue(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Read the whole body (empty when there is none). Over `max` bytes: 413. Slower than
/// `deadline` in total: 408.
pub async fn read(session: &mut Session, max: usize, deadline: Duration) -> Result<Bytes> {
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(session, max));
    }
    if session.is_body_empty() {
        return Ok(Bytes::new());
    }
    if expects_continue(session) {
        session.write_continue_response().await?;
    }
    // Must precede the first read: Pingora copies what it reads into this buffer.
    session.enable_retry_buffering();
    match tokio::time::timeout(deadline, read_all(session, max, declared)).await {
        Ok(r) => r,
        Err(_) => {
            session.set_keepalive(None);
            Err(ErrorKind::RequestTimeout.err(format!(
                "the request body did not arrive within {} s",
                deadline.as_secs()
            )))
        }
    }
}

async fn read_all(session: &mut Session, max: usize, declared: Option<usize>) -> Result<Bytes> {
    // The usual body arrives in one read: hand that buffer on as it is, copy only when split.
    let Some(first) = session.read_request_body().await? else {
        return Ok(Bytes::new());
    };
    if first.len() > max {
        return Err(too_large(session, max));
    }
    let Some(second) = session.read_request_body().await? else {
        return Ok(first);
    };
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(first.len() * 4).min(max));
    buf.extend_from_slice(&first);
    let mut next = Some(second);
    while let Some(chunk) = next {
        if buf.len() + chunk.len() > max {
            return Err(too_large(session, max));
        }
        buf.extend_from_slice(&chunk);
        next = session.read_request_body().await?;
    }
    Ok(buf.freeze())
}

/// After a 413, read and drop what the client is still sending, for a short while: closing
/// with unread data makes the kernel reset the connection, and the client would lose the 413.
pub async fn discard_rest(session: &mut Session) {
    const MAX_TIME: Duration = Duration::from_secs(1);
    const MAX_BYTES: usize = 64 * 1024 * 1024;
    let drain = async {
        let mut dropped = 0;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            dropped += chunk.len();
            if dropped > MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(MAX_TIME, drain).await;
}
