//! Discovery: a Pingora background service that polls every endpoint's model list, keeps the
//! last good list of an endpoint whose poll fails, and publishes a new routing snapshot.

mod client;
pub mod parse;
mod snapshot;

use crate::balance::Balancing;
use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use pingora::connectors::http::Connector;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::services::ServiceReadyNotifier;

use crate::endpoint::{Endpoint, EndpointKind};
use crate::routes::SharedRoutes;
use crate::upstream::Upstream;
use client::GetError;
use parse::DiscoveredModel;

pub use snapshot::build_routes;

/// Outcome of the latest poll of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollStatus {
    /// Not polled yet.
    Pending,
    Ok,
    /// The latest poll failed (the last good models are kept).
    Failed(String),
}

/// What discovery knows about one endpoint.
#[derive(Debug, Clone)]
pub struct EndpointState {
    pub endpoint: Arc<Endpoint>,
    pub index: usize,
    /// The upstream at its last resolved address.
    pub upstream: Option<Arc<Upstream>>,
    /// The last good model list.
    pub models: Vec<DiscoveredModel>,
    pub status: PollStatus,
    pub last_success: Option<SystemTime>,
    pub last_attempt: Option<SystemTime>,
    pub consecutive_failures: u32,
}

impl EndpointState {
    pub fn new(endpoint: Arc<Endpoint>, index: usize) -> Self {
        EndpointState {
            endpoint,
            index,
            upstream: None,
            models: Vec::new(),
            status: PollStatus::Pending,
            last_success: None,
            last_attempt: None,
            consecutive_failures: 0,
        }
    }

    /// Serving: the latest poll succeeded.
    pub fn healthy(&self) -> bool {
        self.status == PollStatus::Ok
    }
}

/// The background service.
pub struct Discovery {
    endpoints: Vec<Arc<Endpoint>>,
    routes: SharedRoutes,
    interval: Duration,
    /// A poll (the active probe) that takes longer fails: the endpoint is down for the round
    /// and never holds up start-up or the other endpoints.
    poll_timeout: Duration,
    /// Each model's balancing policy, for the pools it builds.
    balancing: Balancing,
    connector: Connector,
    started: SystemTime,
}

impl Discovery {
    /// Discovery of `config`'s endpoints, publishing to `routes`.
    pub fn new(config: &Config, routes: SharedRoutes) -> Self {
        Discovery {
            poll_timeout: config.probe_timeout,
            endpoints: config.endpoints.clone(),
            routes,
            interval: config.discovery_interval,
            balancing: config.balancing.clone(),
            connector: Connector::new(None),
            started: SystemTime::now(),
        }
    }

    /// Poll every endpoint at once and publish new routes as each answer arrives, so one slow
    /// endpoint never holds back the others. `first`: routes are marked ready only once every
    /// endpoint of the first round has answered or timed out.
    async fn round(&self, states: &mut [EndpointState], first: bool) {
        let mut polls: FuturesUnordered<_> = states
            .iter()
            .map(|s| {
                let (endpoint, index, upstream) = (s.endpoint.clone(), s.index, s.upstream.clone());
                async move { (index, self.poll(endpoint, index, upstream).await) }
            })
            .collect();
        let mut remaining = polls.len();
        while let Some((index, result)) = polls.next().await {
            if let Some(m) = crate::metrics::get() {
                let result_label = if result.is_ok() { "ok" } else { "failed" };
                m.discovery_runs
                    .with_label_values(&[states[index].endpoint.name.as_str(), result_label])
                    .inc();
            }
            states[index].record(result, SystemTime::now());
            remaining -= 1;
            let ready = !first || remaining == 0;
            let previous = self.routes.load_full();
            let routes = build_routes(states, &previous, self.started, ready, &self.balancing);
            self.routes.store(Arc::new(routes));
        }
    }

    /// Resolve and poll one endpoint. On failure, the upstream if resolution got that far.
    async fn poll(
        &self,
        ep: Arc<Endpoint>,
        index: usize,
        known: Option<Arc<Upstream>>,
    ) -> PollResult {
        let poll_time = self.poll_timeout;
        let poll = async {
            let mut addrs = resolve(&ep)
                .await
                .map_err(|e| (None, GetError::unreachable(e)))?;
            // The known address first, so routes stay put while it keeps answering.
            if let Some(k) = &known {
                addrs.sort_by_key(|a| *a != k.addr);
            }
            // A name may resolve to addresses the server does not listen on (`localhost` to
            // ::1 and 127.0.0.1): the first that answers wins.
            let mut last_err = (None, GetError::unreachable("no address".into()));
            for addr in addrs {
                let upstream = match &known {
                    Some(u) if u.addr == addr => u.clone(),
                    _ => Arc::new(Upstream::new(ep.clone(), index, addr)),
                };
                match self.fetch_models(&upstream).await {
                    Ok(models) => return Ok((upstream, models)),
                    Err(e) => last_err = (Some(upstream), e),
                }
            }
            Err(last_err)
        };
        tokio::time::timeout(poll_time, poll)
            .await
            .unwrap_or_else(|_| {
                Err((
                    known,
                    GetError::unreachable(format!(
                        "no answer within {} s",
                        poll_time.as_secs_f32()
                    )),
                ))
            })
    }

    /// The model list of one upstream.
    async fn fetch_models(&self, upstream: &Upstream) -> Result<Vec<DiscoveredModel>, GetError> {
        let ep = &upstream.endpoint;
        let body = client::get(&self.connector, upstream, &ep.discovery_path()).await?;
        match ep.kind {
            EndpointKind::Openai => parse::openai_models(&body),
            EndpointKind::Ocf => parse::ocf_models(&body),
        }
        .map_err(GetError::answered)
    }
}

/// A poll's outcome: the upstream and its models, or why not (with the upstream if resolved).
type PollResult = Result<(Arc<Upstream>, Vec<DiscoveredModel>), (Option<Arc<Upstream>>, GetError)>;

impl EndpointState {
    /// Take in a poll's outcome: new models on success; on failure keep the last good ones.
    fn record(&mut self, result: PollResult, now: SystemTime) {
        self.last_attempt = Some(now);
        match result {
            Ok((upstream, models)) => {
                if self.status != PollStatus::Ok || self.models != models {
                    let ids: Vec<&str> = models.iter().map(|m| m.id.as_str()).collect();
                    log::info!(
                        "discovery: {} serves {} model(s): {}",
                        self.endpoint.name,
                        ids.len(),
                        ids.join(", ")
                    );
                }
                // A good poll is a free active probe: an ejected endpoint gets its trial now.
                self.endpoint.health.probe_succeeded();
                self.upstream = Some(upstream);
                self.models = models;
                self.status = PollStatus::Ok;
                self.last_success = Some(now);
                self.consecutive_failures = 0;
            }
            Err((upstream, GetError { answered, why })) => {
                if self.consecutive_failures == 0 {
                    log::warn!(
                        "discovery: {} failed: {why}; keeping its {} last known model(s)",
                        self.endpoint.name,
                        self.models.len()
                    );
                }
                // An endpoint that cannot be reached is taken out before a user request finds
                // out. One that answers badly is only a failure like any other: a single bad
                // poll never takes it out of service.
                let ejected = if answered {
                    self.endpoint.health.record_failure()
                } else {
                    self.endpoint.health.eject()
                };
                if let Some(cooldown) = ejected {
                    log::warn!(
                        "health: {} ejected for {:.1} s (probe failed: {why})",
                        self.endpoint.name,
                        cooldown.as_secs_f64()
                    );
                }
                if upstream.is_some() {
                    self.upstream = upstream;
                }
                self.status = PollStatus::Failed(why);
                self.consecutive_failures += 1;
            }
        }
    }
}

/// The endpoint's addresses: its IP literal, or its host name looked up now (off the request
/// path).
async fn resolve(ep: &Endpoint) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = ep.host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, ep.port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((ep.host.as_str(), ep.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", ep.host))?
        .collect();
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
        let mut states: Vec<EndpointState> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| EndpointState::new(e.clone(), i))
            .collect();
        self.round(&mut states, true).await;
        ready.notify_ready();
        let first = tokio::time::Instant::now() + self.interval;
        let mut tick = tokio::time::interval_at(first, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.round(&mut states, false).await,
            }
        }
    }
}
