//! Writing the gateway's own answers (local routes and errors) to the client.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Write a complete JSON response. Keep-alive stays as the session has it.
pub async fn json(session: &mut Session, status: u16, body: Bytes) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(3))?;
    h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    h.set_content_length(body.len())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}
