//! One discovery GET against an upstream, over Pingora's connector (same TLS settings, SNI
//! and per-endpoint CA as the proxy path).

use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;

use crate::upstream::Upstream;

/// Model lists are small; an OCF table of a large cluster is a few hundred KiB.
const MAX_DISCOVERY_BODY: usize = 16 * 1024 * 1024;

/// Why a discovery GET failed. Never includes the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetError {
    /// The server sent an HTTP answer (an error status, a bad body): it is up, just unhappy.
    /// `false`: it could not be reached or stopped answering.
    pub answered: bool,
    pub why: String,
}

impl GetError {
    pub fn unreachable(why: String) -> Self {
        GetError {
            answered: false,
            why,
        }
    }

    pub fn answered(why: String) -> Self {
        GetError {
            answered: true,
            why,
        }
    }
}

/// `GET path` on the upstream; the body of a 2xx answer, or why not. The caller bounds the time.
pub async fn get(
    connector: &Connector,
    upstream: &Upstream,
    path: &str,
) -> Result<Bytes, GetError> {
    request(connector, upstream, path, true).await
}

/// `GET path` without the key: any HTTP answer, whatever its status, shows the address serves.
pub async fn probe(connector: &Connector, upstream: &Upstream, path: &str) -> Result<(), GetError> {
    match request(connector, upstream, path, false).await {
        Err(e) if !e.answered => Err(e),
        _ => Ok(()),
    }
}

async fn request(
    connector: &Connector,
    upstream: &Upstream,
    path: &str,
    with_key: bool,
) -> Result<Bytes, GetError> {
    let peer = upstream.peer();
    let (mut session, _reused) = connector.get_http_session(&peer).await.map_err(|e| {
        GetError::unreachable(format!(
            "connect to {} failed: {}",
            upstream.addr,
            describe(&e)
        ))
    })?;
    let ep = &upstream.endpoint;
    let mut req = RequestHeader::build("GET", path.as_bytes(), None)
        .map_err(|e| GetError::unreachable(e.to_string()))?;
    let io = |e: Box<pingora::Error>| {
        GetError::unreachable(format!("{} {path}: {}", ep.url, describe(&e)))
    };
    req.insert_header(http::header::HOST, ep.host_header.clone())
        .map_err(io)?;
    req.insert_header(http::header::ACCEPT, "application/json")
        .map_err(io)?;
    req.insert_header(
        http::header::USER_AGENT,
        concat!("ai-proxy/", env!("CARGO_PKG_VERSION")),
    )
    .map_err(io)?;
    if let Some(auth) = ep.authorization.as_ref().filter(|_| with_key) {
        req.insert_header(http::header::AUTHORIZATION, auth.clone())
            .map_err(io)?;
    }
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(io)?;
    session.finish_request_body().await.map_err(io)?;
    session.read_response_header().await.map_err(io)?;
    let status = session
        .response_header()
        .map(|h| h.status.as_u16())
        .unwrap_or_default();
    let mut body = BytesMut::new();
    while let Some(chunk) = session.read_response_body().await.map_err(io)? {
        if body.len() + chunk.len() > MAX_DISCOVERY_BODY {
            return Err(GetError::answered(format!(
                "{} {path}: answer larger than {MAX_DISCOVERY_BODY} bytes",
                ep.url
            )));
        }
        body.extend_from_slice(&chunk);
    }
    if !(200..300).contains(&status) {
        return Err(GetError::answered(format!(
            "{} {path}: HTTP {status}",
            ep.url
        )));
    }
    Ok(body.freeze())
}

/// The error's type and, when it has one, its root cause ("TLSHandshakeFailure: invalid peer
/// certificate: UnknownIssuer"); never the request, so never a key.
fn describe(e: &pingora::Error) -> String {
    match &e.cause {
        Some(_) => format!("{}: {}", e.etype().as_str(), e.root_cause()),
        None => e.etype().as_str().to_string(),
    }
}
