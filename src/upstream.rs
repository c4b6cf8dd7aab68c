//! An endpoint at one resolved address: what a pool member and a discovery poll connect to,
//! and what address faults (refused or timed-out connects, resets, failed probes) count
//! against. A host that resolves to several addresses (a fleet) has one upstream per address.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora::upstreams::peer::HttpPeer;

use crate::endpoint::Endpoint;
use crate::health::Health;

/// How long a pooled upstream connection may sit idle. Below the 5 s keep-alive of uvicorn
/// (vLLM, SGLang) so the gateway drops a connection before the server does, not while
/// sending a request on it.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Hands out upstream ids: never the same one twice in a process, so no pool, request or
/// counter confuses an upstream with one that replaced it.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// An endpoint reachable at one address (its host resolved by discovery).
#[derive(Debug)]
pub struct Upstream {
    pub endpoint: Arc<Endpoint>,
    /// Unique in the process; kept across discovery rounds and reloads while the endpoint's
    /// definition and this address stay.
    pub id: usize,
    pub addr: SocketAddr,
    /// Passive health of the address, shared by every model served there.
    pub health: Health,
    /// Requests sent here whose response has not ended yet, counted by `InFlight` guards.
    pub(crate) in_flight: AtomicUsize,
    /// Built once; the request path clones it instead of rebuilding options per request.
    peer: HttpPeer,
    /// `ai_proxy_upstream_attempts_total` of the endpoint (when metrics are on).
    attempts: Option<prometheus::IntCounter>,
}

impl Upstream {
    pub fn new(endpoint: Arc<Endpoint>, addr: SocketAddr) -> Self {
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
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            health: Health::new(endpoint.health_policy),
            in_flight: AtomicUsize::new(0),
            endpoint,
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

    /// Requests in flight to this address right now, for every model.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
