//! ai-proxy: an OpenAI-compatible gateway on Pingora that routes each request by its `model`
//! across OpenAI-compatible and OCF endpoints.

pub mod config;
pub mod discovery;
pub mod endpoint;
pub mod error;
pub mod mock;
pub mod openai;
pub mod proxy;
pub mod routes;
pub mod upstream;

use pingora::proxy::http_proxy_service_with_name;
use pingora::server::Server;
use pingora::services::background::background_service;

use config::Config;
use discovery::Discovery;
use proxy::Gateway;
use upstream::Timeouts;

/// Build the Pingora server for a config: the discovery service and the proxy service.
pub fn build_server(config: &Config) -> Server {
    let mut server = Server::new_with_opt_and_conf(None, config.server_conf());
    server.bootstrap();
    let routes = routes::empty_routes();
    let timeouts = Timeouts {
        connect: config.connect_timeout,
        read: config.timeout,
    };
    let discovery = Discovery::new(
        config.endpoints.clone(),
        routes.clone(),
        timeouts,
        config.discovery_interval,
    );
    server.add_service(background_service("discovery", discovery));
    let gateway = Gateway::new(config, routes);
    let mut proxy = http_proxy_service_with_name(&server.configuration, gateway, "ai-proxy");
    proxy.add_tcp(&config.listen.to_string());
    server.add_service(proxy);
    server
}
