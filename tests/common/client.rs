//! Minimal HTTP/1.1 test client (hyper client conn API, plain or TLS, loopback only) with per-call timeouts and a frame-by-frame streaming reader.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Default bound on every client call (connect, response head, each body frame).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound on frames read by `StreamResp::collect_chunks` / `read_to_end`.
const MAX_FRAMES: usize = 1 << 20;

/// A request body: empty, with a Content-Length, or sent with chunked transfer encoding.
pub enum ReqBody {
    Full(Option<Bytes>),
    Chunked(VecDeque<Bytes>),
}

impl ReqBody {
    pub fn empty() -> Self {
        ReqBody::Full(None)
    }

    pub fn full(b: impl Into<Bytes>) -> Self {
        ReqBody::Full(Some(b.into()))
    }

    /// Sent as these chunks with `Transfer-Encoding: chunked` (no Content-Length).
    pub fn chunked(chunks: impl IntoIterator<Item = Bytes>) -> Self {
        ReqBody::Chunked(chunks.into_iter().collect())
    }
}

impl Body for ReqBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = match self.get_mut() {
            ReqBody::Full(b) => b.take(),
            ReqBody::Chunked(q) => q.pop_front(),
        };
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Chunked(q) => q.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Chunked(_) => SizeHint::default(),
        }
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON; panics (showing the body) when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}); status {}: {}",
                self.status,
                self.text()
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response whose body is read frame by frame. Dropping it closes the TCP connection.
pub struct StreamResp {
    pub status: u16,
    pub headers: HeaderMap,
    body: Option<Incoming>,
    /// Dropped after `body`; closes the connection.
    _conn: Conn,
    timeout: Duration,
    error: Option<String>,
}

impl StreamResp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Next data frame and when it arrived; `None` at the end of the body, on error or on timeout
    /// (see [`StreamResp::error`]).
    pub async fn next_chunk(&mut self) -> Option<(Bytes, Instant)> {
        // Skips trailer frames; bounded by MAX_FRAMES.
        for _ in 0..MAX_FRAMES {
            let body = self.body.as_mut()?;
            match tokio::time::timeout(self.timeout, body.frame()).await {
                Err(_) => {
                    self.error = Some(format!("no body frame within {:?}", self.timeout));
                    self.body = None;
                    return None;
                }
                Ok(None) => {
                    self.body = None;
                    return None;
                }
                Ok(Some(Err(e))) => {
                    self.error = Some(format!("body error: {e}"));
                    self.body = None;
                    return None;
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Some((data, Instant::now()));
                    }
                }
            }
        }
        None
    }

    /// All remaining frames with their arrival times.
    pub async fn collect_chunks(&mut self) -> Vec<(Bytes, Instant)> {
        let mut out = Vec::new();
        for _ in 0..MAX_FRAMES {
            match self.next_chunk().await {
                Some(c) => out.push(c),
                None => break,
            }
        }
        out
    }

    /// All remaining body bytes.
    pub async fn read_to_end(&mut self) -> Bytes {
        let mut out = Vec::new();
        for (c, _) in self.collect_chunks().await {
            out.extend_from_slice(&c);
        }
        Bytes::from(out)
    }

    /// Why the body ended early (error or timeout), if it did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }
}

/// Data payloads (`data: ...` lines, without the prefix) of an SSE body, in order.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l).to_string())
        .collect()
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
    path_and_query: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad url {url}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => return Err(format!("unsupported scheme {other:?} in {url}")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("no host in {url}"))?
        .to_string();
    if host != "127.0.0.1" && host != "localhost" {
        return Err(format!(
            "test client only talks to loopback (127.0.0.1/localhost), not {host}"
        ));
    }
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    Ok(Target {
        tls,
        authority: format!("{host}:{port}"),
        host,
        port,
        path_and_query,
    })
}

/// An open keep-alive connection; requests are sent one after the other.
pub struct Conn {
    sender: SendRequest<ReqBody>,
    task: JoinHandle<()>,
    authority: String,
    timeout: Duration,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// True once the server (or an error) closed the connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    async fn send_raw(
        &mut self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<http::Response<Incoming>, String> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| format!("bad method {method}: {e}"))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(body)
            .map_err(|e| format!("bad request: {e}"))?;
        let h = req.headers_mut();
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| format!("bad header {k}: {e}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| format!("bad header value for {k}: {e}"))?;
            h.append(name, value);
        }
        if !h.contains_key(http::header::HOST) {
            let host =
                HeaderValue::from_str(&self.authority).map_err(|e| format!("bad host: {e}"))?;
            h.insert(http::header::HOST, host);
        }
        let fut = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("connection not ready: {e}"))?;
            self.sender
                .send_request(req)
                .await
                .map_err(|e| format!("request failed: {e}"))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| format!("no response head within {:?}", self.timeout))?
    }

    /// Send a request on this connection and read the whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Resp, String> {
        let resp = self.send_raw(method, path_and_query, headers, body).await?;
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(self.timeout, body.collect())
            .await
            .map_err(|_| format!("response body not complete within {:?}", self.timeout))?
            .map_err(|e| format!("response body error: {e}"))?
            .to_bytes();
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}

/// HTTP client settings: optional TLS roots and the per-call timeout.
#[derive(Clone)]
pub struct Client {
    tls: Option<Arc<ClientConfig>>,
    timeout: Duration,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// Plain HTTP only (https URLs fail).
    pub fn new() -> Self {
        Client {
            tls: None,
            timeout: CALL_TIMEOUT,
        }
    }

    /// HTTPS trusting only the CA certificate(s) in `ca_pem` (plain http still works).
    pub fn with_ca_pem(ca_pem: &[u8]) -> Self {
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let cert = cert.expect("CA PEM is unreadable");
            roots.add(cert).expect("CA certificate rejected");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("rustls protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Client {
            tls: Some(Arc::new(cfg)),
            timeout: CALL_TIMEOUT,
        }
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Open a connection to the URL's host and port (the path is ignored).
    pub async fn connect(&self, url: &str) -> Result<Conn, String> {
        let t = parse_url(url)?;
        tokio::time::timeout(self.timeout, self.connect_target(&t))
            .await
            .map_err(|_| format!("connect to {url} timed out after {:?}", self.timeout))?
    }

    async fn connect_target(&self, t: &Target) -> Result<Conn, String> {
        let tcp = TcpStream::connect(("127.0.0.1", t.port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{}: {e}", t.port))?;
        let _ = tcp.set_nodelay(true);
        let (sender, task) = if t.tls {
            let cfg = self
                .tls
                .clone()
                .ok_or("https URL but the client has no CA (use Client::with_ca_pem)")?;
            let name = ServerName::try_from(t.host.clone())
                .map_err(|e| format!("bad server name {}: {e}", t.host))?;
            let tls = TlsConnector::from(cfg)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", t.authority))?;
            let (sender, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            (
                sender,
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| format!("HTTP handshake: {e}"))?;
            (
                sender,
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(Conn {
            sender,
            task,
            authority: t.authority.clone(),
            timeout: self.timeout,
        })
    }

    /// One request on a fresh connection; errors (refused, reset, timeout) are returned.
    pub async fn try_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Result<Resp, String> {
        let t = parse_url(url)?;
        let mut conn = tokio::time::timeout(self.timeout, self.connect_target(&t))
            .await
            .map_err(|_| format!("connect to {url} timed out"))??;
        conn.send(method, &t.path_and_query, headers, body).await
    }

    /// Like [`Client::try_request`] but panics on transport errors.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: ReqBody,
    ) -> Resp {
        match self.try_request(method, url, headers, body).await {
            Ok(r) => r,
            Err(e) => panic!("{method} {url}: {e}"),
        }
    }

    pub async fn get(&self, url: &str) -> Resp {
        self.request("GET", url, &[], ReqBody::empty()).await
    }

    pub async fn try_get(&self, url: &str) -> Result<Resp, String> {
        self.try_request("GET", url, &[], ReqBody::empty()).await
    }

    /// POST with `content-type: application/json` (unless given) and a Content-Length body.
    pub async fn post_json(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let headers = with_json_content_type(headers);
        self.request("POST", url, &headers, ReqBody::full(body))
            .await
    }

    pub async fn try_post_stream(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<StreamResp, String> {
        let t = parse_url(url)?;
        let mut conn = tokio::time::timeout(self.timeout, self.connect_target(&t))
            .await
            .map_err(|_| format!("connect to {url} timed out"))??;
        let headers = with_json_content_type(headers);
        let resp = conn
            .send_raw("POST", &t.path_and_query, &headers, ReqBody::full(body))
            .await?;
        let (parts, body) = resp.into_parts();
        Ok(StreamResp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Some(body),
            _conn: conn,
            timeout: self.timeout,
            error: None,
        })
    }

    /// POST (JSON) and return once the response head arrived; read the body with `next_chunk`.
    pub async fn post_stream(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> StreamResp {
        match self.try_post_stream(url, body, headers).await {
            Ok(r) => r,
            Err(e) => panic!("POST {url} (stream): {e}"),
        }
    }
}

fn with_json_content_type<'a>(headers: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut h = headers.to_vec();
    if !h
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        h.push(("content-type", "application/json"));
    }
    h
}

/// GET on a fresh plain connection (panics on transport errors).
pub async fn get(url: &str) -> Resp {
    Client::new().get(url).await
}

/// GET returning transport errors instead of panicking.
pub async fn try_get(url: &str) -> Result<Resp, String> {
    Client::new().try_get(url).await
}

/// POST a JSON body (Content-Length) on a fresh plain connection.
pub async fn post_json(url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Resp {
    Client::new().post_json(url, body, headers).await
}

/// POST a JSON body and read the response body frame by frame.
pub async fn post_stream(
    url: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> StreamResp {
    Client::new().post_stream(url, body, headers).await
}
