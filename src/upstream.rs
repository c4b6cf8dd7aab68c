//! An endpoint at a resolved address: what a pool member and a discovery poll connect to.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::endpoint::Endpoint;

/// How long a pooled upstream connection may sit idle. Below the 5 s keep-alive of uvicorn
/// (vLLM, SGLang) so the gateway drops a connection before the server does, not while
/// sending a request on it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// An endpoint reachable at one address (its host resolved by discovery).
#[derive(Debug)]
pub struct Upstream {
    pub endpoint: Arc<Endpoint>,
    /// The endpoint's id: unique in the process, kept across discovery rounds and reloads
    /// while the endpoint's definition stays the same.
    pub id: usize,
    pub addr: SocketAddr,
    /// Built once; the request path clones it instead of rebuilding options per request.
    peer: HttpPeer,
    /// `ai_proxy_upstream_attempts_total` of the endpoint (when metrics are on).
    attempts: Option<prometheus::IntCounter>,
}

impl Upstream {
    pub fn new(endpoint: Arc<Endpoint>, id: usize, addr: SocketAddr) -> Self {
        let t = endpoint.timeouts;
        let sni = if endpoint.tls {
            endpoint.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, endpoint.tls, sni);
        let o = &mut peer.options;
        o.connection_timeout = Some(t.connect);
        o.total_connection_timeout = Some(t.connect * 2);
        // Pingora has one timeout for every read; the request's watchdog enforces the shorter
        // of time to first byte and idle gap when they differ (see `proxy/watchdog.rs`).
        o.read_timeout = Some(t.read());
        o.write_timeout = Some(t.read());
        o.idle_timeout = Some(POOL_IDLE_TIMEOUT);
        o.ca = endpoint.ca.clone();
        let attempts = crate::metrics::get().map(|m| m.attempts(&endpoint.name));
        Upstream {
            endpoint,
            id,
            addr,
            peer,
            attempts,
        }
    }

    /// Count an attempt sent to this upstream.
    pub fn count_attempt(&self) {
        if let Some(c) = &self.attempts {
            c.inc();
        }
    }

    /// A peer to connect to this upstream.
    pub fn peer(&self) -> HttpPeer {
        self.peer.clone()
    }
}
