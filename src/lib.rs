//! ai-proxy: an OpenAI-compatible gateway on Pingora that routes each request by its `model`
//! across OpenAI-compatible and OCF endpoints.

pub mod access_log;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod downstream;
pub mod endpoint;
pub mod error;
pub mod health;
pub mod metrics;
pub mod mock;
pub mod openai;
pub mod proxy;
pub mod request_id;
pub mod routes;
pub mod shutdown;
pub mod upstream;
pub mod usage;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use config::Config;
use discovery::Discovery;
use proxy::Gateway;
use shutdown::{ActiveRequests, Signals};

/// Client connections read straight into Pingora's own header and body buffers.
///
/// Pingora's default puts a 64 KiB read buffer in front of every accepted socket, and
/// tokio's `BufReader` zero-fills it: 64 KiB of resident memory per open client
/// connection, 640 MiB at 10,000 open streams, for nothing the HTTP/1 parser needs (it
/// reads a request head into a 4 KiB buffer and bodies into their own). The write side keeps
/// Pingora's one-MSS buffer, which joins a response head with the start of its body.
const DOWNSTREAM_BUFFERS: L4BufferSettings = L4BufferSettings {
    read: Some(0),
    write: None,
};

/// Build the Pingora server for a config (the discovery service and the proxy service) and
/// the signal handling to run it with.
pub fn build_server(config: &Config) -> (Server, Signals) {
    let mut server = Server::new_with_opt_and_conf(None, config.server_conf());
    server.bootstrap();
    if config.metrics {
        metrics::enable();
    }
    let routes = routes::empty_routes();
    let discovery = Discovery::new(config, routes.clone());
    server.add_service(background_service("discovery", discovery));
    let active = ActiveRequests::default();
    let gateway = Gateway::new(config, routes, active.clone());
    let limits = downstream::Limits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    let app = downstream::Guarded::new(http_proxy(&server.configuration, gateway), limits);
    let mut proxy = Service::new("ai-proxy".to_string(), app);
    proxy
        .add_listener(ListenerConfig::tcp(config.listen.to_string()).l4_buffer(DOWNSTREAM_BUFFERS));
    server.add_service(proxy);
    let signals = Signals {
        active,
        grace: config.shutdown_grace,
    };
    (server, signals)
}

/// Serve until a signal stops the gateway.
pub fn run(config: &Config) {
    let (server, signals) = build_server(config);
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
}
