//! ai-proxy: an OpenAI-compatible gateway on Pingora that routes each request by its `model`
//! across OpenAI-compatible and OCF endpoints.

pub mod access_log;
pub mod auth;
pub mod balance;
pub mod config;
pub mod deployment;
pub mod discovery;
pub mod downstream;
pub mod endpoint;
pub mod env;
pub mod error;
pub mod frontends;
pub mod health;
pub mod metrics;
pub mod multipart;
pub mod openai;
pub mod proxy;
pub mod reload;
pub mod request_id;
pub mod routes;
pub mod settings;
pub mod shutdown;
pub mod state;
pub mod upstream;
pub mod usage;

use pingora::listeners::ListenerConfig;
use pingora::protocols::l4::stream::L4BufferSettings;
use pingora::proxy::http_proxy;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use std::sync::Arc;

use config::Config;
use discovery::Discovery;
use proxy::Gateway;
use reload::Reloader;
use shutdown::{Lifecycle, Signals};

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
/// the signal handling to run it with. `upgrade`: take the listening sockets over from the
/// running gateway (graceful upgrade) instead of binding them.
pub fn build_server(config: Config, upgrade: bool) -> (Server, Signals) {
    let opt = upgrade.then(|| Opt {
        upgrade: true,
        ..Opt::default()
    });
    let mut server = Server::new_with_opt_and_conf(opt, config.server_conf());
    // On an upgrade this waits for the running gateway's sockets (Pingora exits if none come).
    server.bootstrap();
    if upgrade {
        log::info!("upgrade: took over the listening sockets; serving");
    }
    if config.metrics {
        metrics::enable();
    }
    let config = Arc::new(config);
    let routes = routes::empty_routes(Arc::new(config.request_settings()));
    let (reloader, reloads) = Reloader::new(config.clone());
    let discovery = server.add_service(background_service(
        "discovery",
        Discovery::new(reloads, routes.clone()),
    ));
    if config.state.is_some() {
        let maintenance = state::Maintenance(config.limiter.clone());
        server.add_service(background_service("state", maintenance));
    }
    let lifecycle = Lifecycle::default();
    let gateway = Gateway::new(&config, routes, lifecycle.clone());
    let limits = downstream::Limits {
        header_timeout: config.header_timeout,
        max_connections: config.max_connections,
    };
    let app = downstream::Guarded::new(http_proxy(&server.configuration, gateway), limits);
    let mut proxy = Service::new("ai-proxy".to_string(), app);
    proxy
        .add_listener(ListenerConfig::tcp(config.listen.to_string()).l4_buffer(DOWNSTREAM_BUFFERS));
    let proxy = server.add_service(proxy);
    if upgrade {
        // The inherited socket already takes connections (the old process accepts for a few
        // more seconds, then the kernel queues them): serve them only with routes, or the first
        // requests of the new process would find no model.
        proxy.add_dependency(&discovery);
    }
    shutdown::exit_when_drained(
        server.watch_execution_phase(),
        lifecycle.clone(),
        config.shutdown_grace,
    );
    let signals = Signals {
        lifecycle,
        reloader,
    };
    (server, signals)
}

/// Serve until a signal stops the gateway.
pub fn run(config: Config, upgrade: bool) {
    let (server, signals) = build_server(config, upgrade);
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
}
