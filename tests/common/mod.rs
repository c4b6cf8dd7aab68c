//! Shared integration-test harness: gateway process runner, HTTP test client, test PKI, mock helpers and fixtures.
//!
//! Use from a test file with `mod common;` and `use common::*;`.
//!
//! - [`free_port`], [`fixture`], [`fixture_bytes`], [`start_mock`]
//! - [`Gateway`] (`start(yaml)` with a `{port}` placeholder, `start_with(|port| yaml)`,
//!   `start_env(&[..])`, `builder()`), [`run_gateway_cmd`]
//! - HTTP client: [`get`], [`try_get`], [`post_json`], [`post_stream`] (plain), [`Client`]
//!   (TLS roots, timeouts, raw requests, chunked bodies), [`Conn`] (keep-alive), [`sse_data`]
//! - [`TestCa`]: CA + `localhost`/127.0.0.1 leaf, as PEM, files, `MockTls` or a client
//! - API helpers: [`chat_body`], [`post_chat`], [`get_ok`], [`models_json`], [`model_ids`], [`endpoints_json`],
//!   [`endpoints`], [`endpoint_named`], [`assert_openai_error`], [`inference_requests`],
//!   [`auth_headers`], [`last_stream`], [`wait_stream_closed_early`], [`poll_until`]
//! - [`Load`]: clients sending requests in a loop until stopped (reload and upgrade tests)
//! - `/metrics`: [`scrape`], [`settled_scrape`], [`delta`], [`requests`], [`tokens`]
//! - [`RedisServer`]: a real `redis-server` child on a free port (kill, restart, raw commands)
//! - Python SDKs: [`sdk_python`] (the venv interpreter), [`run_sdk_script`] (JSON lines out)

#![allow(dead_code, unused_imports)]

pub mod api;
pub mod client;
pub mod gateway;
pub mod load;
pub mod metrics;
pub mod redis;
pub mod sdk;
pub mod tls;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

use bytes::Bytes;

pub use self::api::{
    assert_openai_error, auth_headers, chat_body, endpoint_named, endpoints, endpoints_json,
    get_ok, inference_requests, last_stream, model_ids, models_json, poll_until, post_chat,
    wait_discovered, wait_stream_closed_early,
};
pub use self::client::{
    get, post_json, post_stream, sse_data, try_get, Client, Conn, ReqBody, Resp, StreamResp,
};
pub use self::gateway::{run_gateway_cmd, Gateway, GatewayBuilder, GATEWAY_BIN};
pub use self::load::{Load, Outcomes};
pub use self::metrics::{delta, requests, scrape, settled_scrape, tokens, total_requests};
pub use self::redis::{RedisServer, Reply};
pub use self::sdk::{run_sdk_script, sdk_python};
pub use self::tls::{TestCa, TlsFiles};
pub use ai_proxy_mock::{
    MockConfig, MockKind, MockServer, MockTls, RecordedRequest, Script, StreamRecord,
};

/// A currently free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> u16 {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Directory of the OCF fixtures (real `/v1/dnt/table` payloads): `tests/fixtures/ocf`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ocf")
}

/// Path of an OCF fixture (panics with a hint when it is missing).
pub fn fixture(name: &str) -> PathBuf {
    let p = fixtures_dir().join(name);
    assert!(p.is_file(), "fixture {} not found", p.display());
    p
}

/// Contents of an OCF fixture.
pub fn fixture_bytes(name: &str) -> Bytes {
    let p = fixture(name);
    Bytes::from(std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())))
}

/// Start a mock upstream on 127.0.0.1 (panics on failure).
pub async fn start_mock(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg).await.expect("start mock upstream")
}
