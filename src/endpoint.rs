//! An upstream model server as configured: where it is, how to talk to it, how paths map.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora::http::RequestHeader;
use pingora::protocols::tls::CaType;
use serde::Deserialize;

use crate::health::HealthPolicy;

/// The protocol an endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// An OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp, Ollama, api.openai.com).
    #[default]
    Openai,
    /// An OCF/OpenTela head: models from `/v1/dnt/table`, requests under `/v1/service/llm`.
    Ocf,
}

impl EndpointKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointKind::Openai => "openai",
            EndpointKind::Ocf => "ocf",
        }
    }
}

/// How an endpoint takes Anthropic Messages requests (`POST /v1/messages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MessagesMode {
    /// Translated to `/v1/chat/completions`, and the answer back (src/frontends/anthropic).
    #[default]
    Translate,
    /// Forwarded as they are: the server serves `/v1/messages` itself (recent vLLM, llama.cpp).
    Native,
}

/// The path prefix an OCF head routes to its peers' `llm` services.
pub const OCF_SERVICE_PREFIX: &str = "/v1/service/llm";

/// An upstream API key, held as its ready `Authorization: Bearer <key>` value (marked
/// sensitive). Its `Debug` never shows the key, so it cannot leak through a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(HeaderValue);

impl ApiKey {
    pub fn new(key: &str) -> Result<Self, String> {
        let mut v = HeaderValue::from_str(&format!("Bearer {key}"))
            .map_err(|_| "the key contains characters not allowed in an HTTP header".to_string())?;
        v.set_sensitive(true);
        Ok(ApiKey(v))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

/// A validated endpoint. Built once from config; shared read-only by discovery and the proxy.
pub struct Endpoint {
    /// Shown in `/v1/endpoints`, logs and metrics.
    pub name: String,
    pub kind: EndpointKind,
    /// The normalized base URL (no trailing slash). Holds no credentials (config rejects them).
    pub url: String,
    pub tls: bool,
    /// Host name or IP literal, without brackets: what DNS resolves and what SNI carries.
    pub host: String,
    pub port: u16,
    /// The `Host` header the upstream expects (`host` or `host:port` for a non-default port).
    pub host_header: HeaderValue,
    /// The URL's path prefix without a trailing slash ("" for none).
    pub base_path: String,
    /// `Bearer <key>`, marked sensitive; `None` when the endpoint has no key.
    pub authorization: Option<HeaderValue>,
    /// Trusted CAs for this endpoint in place of the system roots (`ca_file`).
    pub ca: Option<Arc<CaType>>,
    /// How the health of its addresses and deployments is judged (`health:`).
    pub health_policy: HealthPolicy,
    pub timeouts: Timeouts,
    /// `x-ai-proxy-endpoint` on responses it served (`None` if the name is no header value).
    pub name_header: Option<HeaderValue>,
    /// Its share under the `weighted` balancing policy (1 unless configured).
    pub weight: usize,
    /// Models served in addition to (or, without discovery, instead of) the polled list, and
    /// public names for upstream ids (`models:`).
    pub declared: Vec<DeclaredModel>,
    /// Poll the endpoint's model list (`discover:`, default true). Without it the endpoint
    /// serves its declared models and is only probed for reachability.
    pub discover: bool,
    /// How it takes `/v1/messages` requests (`messages:`).
    pub messages: MessagesMode,
}

/// A model an endpoint is declared to serve: its upstream id, and the public name clients use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredModel {
    /// What the upstream calls it (the `model` it is sent).
    pub id: String,
    /// What clients call it (`/v1/models`, the request's `model`).
    pub name: String,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("has_key", &self.authorization.is_some())
            .field("has_ca", &self.ca.is_some())
            .finish()
    }
}

/// Upstream timeouts of an endpoint: the config's defaults, or its own `timeouts:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connect, per attempt.
    pub connect: Duration,
    /// From sending the request to the response head.
    pub first_byte: Duration,
    /// The longest gap between two chunks of a response body.
    pub idle: Duration,
    /// The whole response, head to last byte (`None`: no limit).
    pub total: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(60),
            idle: Duration::from_secs(60),
            total: None,
        }
    }
}

impl Timeouts {
    /// Pingora's per-read timeout: the longer of first byte and idle gap.
    pub fn read(&self) -> Duration {
        self.first_byte.max(self.idle)
    }

    /// Whether a request needs the watchdog: Pingora's single read timeout cannot tell first
    /// byte from idle gap, and has no total.
    pub fn need_watchdog(&self) -> bool {
        self.first_byte != self.idle || self.total.is_some()
    }
}

/// The parts of an endpoint URL the gateway needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub base_path: String,
}

/// Parse an endpoint base URL: `http(s)://host[:port][/prefix]`, no credentials, query or fragment.
pub fn parse_url(url: &str) -> Result<UrlParts, String> {
    // Every error shows the URL without its userinfo: a config error must not leak a password.
    let shown = redact_userinfo(url);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid URL {shown:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(format!(
                "URL {shown:?} has scheme {other:?}; use http or https"
            ))
        }
        None => {
            return Err(format!(
                "URL {shown:?} needs a scheme (http:// or https://)"
            ))
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {shown:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "URL {shown:?} must not carry credentials; use api_key or api_key_env"
        ));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("URL {shown:?} has no host"));
    }
    if url.contains('?') || url.contains('#') {
        return Err(format!("URL {shown:?} must not have a query or fragment"));
    }
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let base_path = uri.path().trim_end_matches('/').to_string();
    Ok(UrlParts {
        tls,
        host: host.to_string(),
        port,
        base_path,
    })
}

/// `url` with the userinfo of its authority (up to the last `@` before the first `/`, `?`
/// or `#` after `://`, or from the start without `://`) replaced by `***`.
pub fn redact_userinfo(url: &str) -> String {
    let start = url.find("://").map_or(0, |s| s + 3);
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    match authority.rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &rest[at..]),
        None => url.to_string(),
    }
}

impl Endpoint {
    /// Build from config values; `name` defaults to the URL's `host:port`.
    pub fn new(
        url: &str,
        kind: EndpointKind,
        name: Option<String>,
        api_key: Option<ApiKey>,
        ca: Option<Arc<CaType>>,
    ) -> Result<Endpoint, String> {
        let trimmed = url.trim().trim_end_matches('/');
        let parts = parse_url(trimmed)?;
        let default_port = if parts.tls { 443 } else { 80 };
        let host_for_header = if parts.host.contains(':') {
            format!("[{}]", parts.host)
        } else {
            parts.host.clone()
        };
        let host_header = if parts.port == default_port {
            host_for_header.clone()
        } else {
            format!("{host_for_header}:{}", parts.port)
        };
        let host_header = HeaderValue::from_str(&host_header)
            .map_err(|_| format!("URL {url:?} has a host that is not a valid header value"))?;
        let name = name.unwrap_or_else(|| format!("{host_for_header}:{}", parts.port));
        Ok(Endpoint {
            weight: 1,
            declared: Vec::new(),
            discover: true,
            messages: MessagesMode::default(),
            name_header: HeaderValue::from_str(&name).ok(),
            name,
            kind,
            url: trimmed.to_string(),
            tls: parts.tls,
            host: parts.host,
            port: parts.port,
            host_header,
            base_path: parts.base_path,
            authorization: api_key.map(|k| k.0),
            ca,
            health_policy: HealthPolicy::default(),
            timeouts: Timeouts::default(),
        })
    }

    /// Give the endpoint this `weight` (at least 1) for the `weighted` policy.
    pub fn with_weight(mut self, weight: usize) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// Serve these declared models; `discover: false` stops polling the model list.
    pub fn with_models(mut self, declared: Vec<DeclaredModel>, discover: bool) -> Self {
        self.declared = declared;
        self.discover = discover;
        self
    }

    /// The public name of upstream model `id` on this endpoint: its declared name, if any.
    pub fn public_name<'a>(&'a self, id: &'a str) -> &'a str {
        self.declared
            .iter()
            .find(|d| d.id == id)
            .map_or(id, |d| d.name.as_str())
    }

    /// Take `/v1/messages` requests this way.
    pub fn with_messages(mut self, messages: MessagesMode) -> Self {
        self.messages = messages;
        self
    }

    /// Use these timeouts for requests to this endpoint.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Judge this endpoint's health by `policy` (the default policy otherwise).
    pub fn with_health(mut self, policy: HealthPolicy) -> Self {
        self.health_policy = policy;
        self
    }

    /// Whether `other` is configured the same in every respect that reaches an upstream, so
    /// that a reload can keep this endpoint, with its health and requests in flight, in its
    /// place.
    pub fn same_definition(&self, other: &Endpoint) -> bool {
        let certs = |ca: &Option<Arc<CaType>>| {
            ca.as_ref().map(|certs| {
                certs
                    .iter()
                    .map(|c| c.borrow_raw_cert().clone())
                    .collect::<Vec<_>>()
            })
        };
        self.name == other.name
            && self.kind == other.kind
            && self.url == other.url
            && self.authorization == other.authorization
            && self.timeouts == other.timeouts
            && self.weight == other.weight
            && self.declared == other.declared
            && self.discover == other.discover
            && self.messages == other.messages
            && self.health_policy == other.health_policy
            && certs(&self.ca) == certs(&other.ca)
    }

    /// The upstream path for a client path (with its query): base path, then the OCF prefix
    /// for ocf endpoints, then the client's path unchanged.
    pub fn upstream_path(&self, client_path: &str) -> String {
        let prefix = match self.kind {
            EndpointKind::Openai => "",
            EndpointKind::Ocf => OCF_SERVICE_PREFIX,
        };
        let mut p = String::with_capacity(self.base_path.len() + prefix.len() + client_path.len());
        p.push_str(&self.base_path);
        p.push_str(prefix);
        p.push_str(client_path);
        p
    }

    /// Whether the client path needs rewriting at all (the common case does not).
    pub fn rewrites_path(&self) -> bool {
        !self.base_path.is_empty() || self.kind == EndpointKind::Ocf
    }

    /// Turn the copy of the client's request into this endpoint's: its Host, its key (or
    /// none; the client's credentials never go upstream), its path; no `Expect`, since the
    /// gateway has already answered `100 Continue` and holds the body.
    pub fn rewrite_request(&self, req: &mut RequestHeader) -> pingora::Result<()> {
        req.insert_header(http::header::HOST, self.host_header.clone())?;
        req.remove_header(&http::header::PROXY_AUTHORIZATION);
        // The client's own credentials never go upstream: its `Authorization` is replaced
        // below, and `x-api-key` (the other place a gateway key may come in) is dropped.
        req.remove_header(crate::auth::API_KEY_HEADER);
        match &self.authorization {
            Some(auth) => {
                req.insert_header(http::header::AUTHORIZATION, auth.clone())?;
            }
            None => {
                req.remove_header(&http::header::AUTHORIZATION);
            }
        }
        req.remove_header(&http::header::EXPECT);
        if self.rewrites_path() {
            let path = self.upstream_path(req.uri.path_and_query().map_or("/", |p| p.as_str()));
            req.set_raw_path(path.as_bytes())?;
        }
        Ok(())
    }

    /// The path probed for reachability when the endpoint is not polled for models: any HTTP
    /// answer proves the address is up, and it costs the server nothing.
    pub fn probe_path(&self) -> String {
        format!("{}/health", self.base_path)
    }

    /// The path discovery polls for this endpoint's model list.
    pub fn discovery_path(&self) -> String {
        let p = match self.kind {
            EndpointKind::Openai => "/v1/models",
            EndpointKind::Ocf => "/v1/dnt/table",
        };
        format!("{}{p}", self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str, kind: EndpointKind) -> Endpoint {
        Endpoint::new(url, kind, None, None, None).unwrap()
    }

    #[test]
    fn parses_urls_with_defaults() {
        let e = ep("http://10.0.0.5:8000/", EndpointKind::Openai);
        assert_eq!(e.url, "http://10.0.0.5:8000");
        assert_eq!(e.name, "10.0.0.5:8000");
        assert_eq!(e.host_header, "10.0.0.5:8000");
        assert!(!e.tls);
        let e = ep("https://api.openai.com", EndpointKind::Openai);
        assert_eq!((e.port, e.tls), (443, true));
        assert_eq!(e.host_header, "api.openai.com");
        assert_eq!(e.name, "api.openai.com:443");
        let e = ep("http://[::1]:9000/api", EndpointKind::Openai);
        assert_eq!(e.host, "::1");
        assert_eq!(e.host_header, "[::1]:9000");
        assert_eq!(e.base_path, "/api");
    }

    #[test]
    fn rejects_bad_urls() {
        for bad in [
            "ftp://x",
            "localhost:8000",
            "http://",
            "http://u:secret@h",
            "http://h/?a=1",
            "not a url",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(!err.contains("secret"), "{err}");
        }
    }

    /// Found by fuzzing (fuzz/ endpoint_url): a URL that does not parse, or has another
    /// scheme or none, was shown in the error with its password.
    #[test]
    fn errors_never_show_the_userinfo() {
        for bad in [
            "http://\0\0\0\0\0\0\0\0\0\0\0\0u:secret@h",
            "http://u:secret@h:port",
            "ftp://u:secret@h",
            "u:secret@h",
            "http://u:secret@h@h2/x y",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(!err.contains("secret"), "{bad:?}: {err}");
            assert!(err.contains("***@"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn maps_paths_per_kind() {
        let o = ep("http://h:1", EndpointKind::Openai);
        assert_eq!(
            o.upstream_path("/v1/chat/completions"),
            "/v1/chat/completions"
        );
        assert!(!o.rewrites_path());
        assert_eq!(o.discovery_path(), "/v1/models");
        let c = ep("http://h:1/base", EndpointKind::Ocf);
        assert_eq!(
            c.upstream_path("/v1/chat/completions?x=1"),
            "/base/v1/service/llm/v1/chat/completions?x=1"
        );
        assert_eq!(c.discovery_path(), "/base/v1/dnt/table");
    }

    #[test]
    fn rewrites_the_client_request_for_the_endpoint() {
        let ep = Endpoint::new(
            "http://h:9/base",
            EndpointKind::Ocf,
            None,
            Some(ApiKey::new("sk-up").unwrap()),
            None,
        )
        .unwrap();
        let mut req = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        req.insert_header("Host", "gateway").unwrap();
        req.insert_header("Authorization", "Bearer client").unwrap();
        req.insert_header("Proxy-Authorization", "Basic x").unwrap();
        req.insert_header("Expect", "100-continue").unwrap();
        req.insert_header("X-Custom", "1").unwrap();
        ep.rewrite_request(&mut req).unwrap();
        assert_eq!(req.headers["host"], "h:9");
        assert_eq!(req.headers["authorization"], "Bearer sk-up");
        assert!(req.headers.get("proxy-authorization").is_none());
        assert!(req.headers.get("expect").is_none());
        assert_eq!(req.headers["x-custom"], "1");
        assert_eq!(
            req.uri.path_and_query().unwrap().as_str(),
            "/base/v1/service/llm/v1/chat/completions?x=1"
        );

        let plain = Endpoint::new("http://h:9", EndpointKind::Openai, None, None, None).unwrap();
        let mut req = RequestHeader::build("POST", b"/v1/embeddings", None).unwrap();
        req.insert_header("Authorization", "Bearer client").unwrap();
        plain.rewrite_request(&mut req).unwrap();
        assert!(req.headers.get("authorization").is_none());
        assert_eq!(req.uri.path(), "/v1/embeddings");
    }

    #[test]
    fn key_is_sensitive_and_hidden_from_debug() {
        let e = Endpoint::new(
            "http://h:1",
            EndpointKind::Openai,
            None,
            Some(ApiKey::new("sk-secret").unwrap()),
            None,
        )
        .unwrap();
        assert!(e.authorization.as_ref().unwrap().is_sensitive());
        assert!(!format!("{e:?}").contains("sk-secret"));
    }
}
