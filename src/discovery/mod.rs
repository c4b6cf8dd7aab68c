//! Discovery: a Pingora background service that, every round, resolves each endpoint's host
//! to its addresses (its members: one for a plain host, several for a DNS fleet), polls each
//! member's model list, keeps the last good list of a member whose poll fails, and publishes a
//! new routing snapshot.

mod client;
pub mod parse;
mod snapshot;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;
use tokio::sync::watch;

use crate::config::Config;
use crate::endpoint::{Endpoint, EndpointKind};
use crate::routes::{Routes, SharedRoutes};
use crate::settings::RequestSettings;
use crate::upstream::Upstream;
use client::GetError;

pub use snapshot::build_routes;
pub use state::{
    restate, EndpointChanges, EndpointState, Member, PollOutcome, PollStatus, RoundResult, Served,
};

/// The background service.
pub struct Discovery {
    /// The config in force: a reload sends a new one.
    config: watch::Receiver<Arc<Config>>,
    routes: SharedRoutes,
    connector: Connector,
    started: SystemTime,
}

/// The config discovery works from, with the request settings it publishes alongside routes.
struct InForce {
    config: Arc<Config>,
    settings: Arc<RequestSettings>,
}

impl InForce {
    fn new(config: Arc<Config>) -> Self {
        InForce {
            settings: Arc::new(config.request_settings()),
            config,
        }
    }
}

impl Discovery {
    /// Discovery of the endpoints of the config `config` holds (and of every config a reload
    /// sends after it), publishing to `routes`.
    pub fn new(config: watch::Receiver<Arc<Config>>, routes: SharedRoutes) -> Self {
        Discovery {
            config,
            routes,
            connector: Connector::new(None),
            started: SystemTime::now(),
        }
    }

    /// Poll every endpoint at once and publish new routes as each answer arrives, so one slow
    /// endpoint never holds back the others. `first`: routes are marked ready only once every
    /// endpoint of the first round has answered or timed out.
    async fn round(&self, now: &InForce, states: &mut [EndpointState], first: bool) {
        let timeout = now.config.probe_timeout;
        let mut polls: FuturesUnordered<_> = states
            .iter()
            .enumerate()
            .map(|(at, s)| {
                let (endpoint, known) = (s.endpoint.clone(), s.known_upstreams());
                async move { (at, self.poll(endpoint, known, timeout).await) }
            })
            .collect();
        let mut remaining = polls.len();
        while let Some((at, result)) = polls.next().await {
            if let Some(m) = crate::metrics::get() {
                for (_, r) in &result.polls {
                    let label = if r.is_ok() { "ok" } else { "failed" };
                    m.discovery_runs
                        .with_label_values(&[states[at].endpoint.name.as_str(), label])
                        .inc();
                }
            }
            states[at].record(result, SystemTime::now());
            remaining -= 1;
            let ready = !first || remaining == 0;
            self.publish(now, states, &self.routes.load_full(), ready);
        }
    }

    /// Publish the routes of `states`, reusing `previous`'s pools where nothing changed.
    fn publish(&self, now: &InForce, states: &[EndpointState], previous: &Routes, ready: bool) {
        let routes = build_routes(
            states,
            previous,
            self.started,
            ready,
            &now.config.balancing,
            &now.config.aliases,
            &now.settings,
        );
        self.routes.store(Arc::new(routes));
    }

    /// Take in a reloaded config: keep the state of every endpoint whose definition did not
    /// change, publish routes without the removed ones at once (requests in flight to them
    /// finish on their own), then poll every endpoint, so added ones are served without
    /// waiting for the next round.
    async fn reload(&self, before: &InForce, now: &InForce, states: &mut Vec<EndpointState>) {
        let changes = restate(states, &now.config.endpoints);
        let current = self.routes.load_full();
        // Pools keep their policy's state (rotation, latency averages) across rounds; a new
        // `balancing` section starts them afresh.
        let previous = if before.config.balancing == now.config.balancing {
            current.clone()
        } else {
            Arc::new(Routes::default())
        };
        self.publish(now, states, &previous, current.ready);
        log::info!("reload: new config in force; endpoints {changes}");
        self.round(now, states, false).await;
    }
    /// Resolve one endpoint and poll each of its addresses at once, each within `poll_time`.
    async fn poll(
        &self,
        ep: Arc<Endpoint>,
        known: Vec<Arc<Upstream>>,
        poll_time: Duration,
    ) -> RoundResult {
        let resolved = tokio::time::timeout(poll_time, resolve(&ep))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "cannot resolve {} within {} s",
                    ep.host,
                    poll_time.as_secs_f32()
                ))
            });
        let upstreams = state::upstreams_for(&ep, &known, resolved.as_deref().ok());
        let polls = futures::future::join_all(upstreams.into_iter().map(|u| async move {
            let models = tokio::time::timeout(poll_time, self.fetch_models(&u))
                .await
                .unwrap_or_else(|_| {
                    Err(GetError::unreachable(format!(
                        "no answer within {} s",
                        poll_time.as_secs_f32()
                    )))
                });
            (u, models)
        }))
        .await;
        RoundResult { resolved, polls }
    }

    /// The model list of one upstream.
    async fn fetch_models(&self, upstream: &Upstream) -> PollOutcome {
        let ep = &upstream.endpoint;
        if !ep.discover {
            // Declared models only: prove the address answers, without asking for a list.
            client::probe(&self.connector, upstream, &ep.probe_path()).await?;
            return Ok(Vec::new());
        }
        let body = client::get(&self.connector, upstream, &ep.discovery_path()).await?;
        match ep.kind {
            EndpointKind::Openai => parse::openai_models(&body),
            EndpointKind::Ocf => parse::ocf_models(&body),
        }
        .map_err(GetError::answered)
    }
}

/// The endpoint's addresses, each once: its IP literal, or its host name looked up now (off
/// the request path; every round, so a fleet behind one name follows its DNS).
async fn resolve(ep: &Endpoint) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = ep.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, ep.port)]);
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
        .collect();
    addrs.sort_unstable();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{} resolves to no address", ep.host));
    }
    Ok(addrs)
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        let mut reloads = self.config.clone();
        let mut now = InForce::new(reloads.borrow_and_update().clone());
        let mut states = Vec::new();
        restate(&mut states, &now.config.endpoints);
        self.round(&now, &mut states, true).await;
        ready.notify_ready();
        let mut tick = ticker(now.config.discovery_interval);
        // Without a reloader (tests that build the services alone) there is nothing to watch.
        let mut reloadable = true;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.round(&now, &mut states, false).await,
                sent = reloads.changed(), if reloadable => {
                    if sent.is_err() {
                        reloadable = false;
                        continue;
                    }
                    let before = std::mem::replace(
                        &mut now,
                        InForce::new(reloads.borrow_and_update().clone()),
                    );
                    self.reload(&before, &now, &mut states).await;
                    tick = ticker(now.config.discovery_interval);
                }
            }
        }
    }
}

/// Rounds every `interval`, the first one `interval` from now.
fn ticker(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
