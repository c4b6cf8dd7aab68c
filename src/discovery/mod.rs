//! Discovery: a Pingora background service that polls every endpoint's model list, keeps the
//! last good list of an endpoint whose poll fails, and publishes a new routing snapshot.

mod client;
pub mod parse;
mod snapshot;

use crate::config::{Config, RequestSettings};
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

use crate::endpoint::{Endpoint, EndpointKind};
use crate::health::Health;
use crate::routes::{Routes, SharedRoutes};
use crate::upstream::Upstream;
use client::GetError;
use parse::DiscoveredModel;
use std::collections::HashMap;

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
    /// The endpoint's id (see [`Upstream::id`]).
    pub id: usize,
    /// The upstream at its last resolved address.
    pub upstream: Option<Arc<Upstream>>,
    /// The last good model list.
    pub models: Vec<DiscoveredModel>,
    pub status: PollStatus,
    pub last_success: Option<SystemTime>,
    pub last_attempt: Option<SystemTime>,
    pub consecutive_failures: u32,
    /// The health of each model served here, by upstream id: kept while the model is served,
    /// so a model's ejection outlives the snapshot it was made in.
    pub deployments: HashMap<String, Arc<Health>>,
}

/// A model as an endpoint serves it: its public name, its upstream id, and what the upstream
/// said about it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub created: Option<i64>,
    pub owned_by: Option<&'a str>,
}

impl EndpointState {
    pub fn new(endpoint: Arc<Endpoint>, id: usize) -> Self {
        EndpointState {
            endpoint,
            id,
            upstream: None,
            models: Vec::new(),
            status: PollStatus::Pending,
            last_success: None,
            last_attempt: None,
            consecutive_failures: 0,
            deployments: HashMap::new(),
        }
    }

    /// What the endpoint serves: the polled models under their public names, then the
    /// declared models the poll did not list. Nothing before the endpoint first answered.
    pub fn served(&self) -> Vec<Served<'_>> {
        if self.last_success.is_none() {
            return Vec::new();
        }
        let ep = &self.endpoint;
        let mut out: Vec<Served<'_>> = self
            .models
            .iter()
            .map(|m| Served {
                name: ep.public_name(&m.id),
                id: &m.id,
                created: m.created,
                owned_by: m.owned_by.as_deref(),
            })
            .collect();
        for d in &ep.declared {
            if !self.models.iter().any(|m| m.id == d.id) {
                out.push(Served {
                    name: &d.name,
                    id: &d.id,
                    created: None,
                    owned_by: None,
                });
            }
        }
        out
    }

    /// Keep one health per served model: new models get theirs, gone ones lose it.
    fn sync_deployments(&mut self) {
        let policy = self.endpoint.health.policy();
        let ids: Vec<String> = self.served().iter().map(|s| s.id.to_string()).collect();
        self.deployments.retain(|id, _| ids.contains(id));
        for id in ids {
            self.deployments
                .entry(id)
                .or_insert_with(|| Arc::new(Health::new(policy)));
        }
    }

    /// Serving: the latest poll succeeded.
    pub fn healthy(&self) -> bool {
        self.status == PollStatus::Ok
    }
}

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
                let (endpoint, id, upstream) = (s.endpoint.clone(), s.id, s.upstream.clone());
                async move { (at, self.poll(endpoint, id, upstream, timeout).await) }
            })
            .collect();
        let mut remaining = polls.len();
        while let Some((at, result)) = polls.next().await {
            if let Some(m) = crate::metrics::get() {
                let result_label = if result.is_ok() { "ok" } else { "failed" };
                m.discovery_runs
                    .with_label_values(&[states[at].endpoint.name.as_str(), result_label])
                    .inc();
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
    async fn reload(
        &self,
        before: &InForce,
        now: &InForce,
        states: &mut Vec<EndpointState>,
        ids: &mut EndpointIds,
    ) {
        let changes = restate(states, &now.config.endpoints, ids);
        log::info!("reload: endpoints {changes}");
        let current = self.routes.load_full();
        // Pools keep their policy's state (rotation, latency averages) across rounds; a new
        // `balancing` section starts them afresh.
        let previous = if before.config.balancing == now.config.balancing {
            current.clone()
        } else {
            Arc::new(Routes::default())
        };
        self.publish(now, states, &previous, current.ready);
        self.round(now, states, false).await;
    }
    /// Resolve and poll one endpoint. On failure, the upstream if resolution got that far.
    async fn poll(
        &self,
        ep: Arc<Endpoint>,
        id: usize,
        known: Option<Arc<Upstream>>,
        poll_time: Duration,
    ) -> PollResult {
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
                    _ => Arc::new(Upstream::new(ep.clone(), id, addr)),
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

/// A poll's outcome: the upstream and its models, or why not (with the upstream if resolved).
type PollResult = Result<(Arc<Upstream>, Vec<DiscoveredModel>), (Option<Arc<Upstream>>, GetError)>;

impl EndpointState {
    /// Take in a poll's outcome: new models on success; on failure keep the last good ones.
    fn record(&mut self, result: PollResult, now: SystemTime) {
        self.last_attempt = Some(now);
        match result {
            Ok((upstream, models)) => {
                let changed = self.status != PollStatus::Ok || self.models != models;
                // A good poll is a free active probe: an ejected endpoint gets its trial now.
                self.endpoint.health.probe_succeeded();
                self.upstream = Some(upstream);
                self.models = models;
                self.status = PollStatus::Ok;
                self.last_success = Some(now);
                self.consecutive_failures = 0;
                self.sync_deployments();
                if changed {
                    let served = self.served();
                    let names: Vec<&str> = served.iter().map(|m| m.name).collect();
                    log::info!(
                        "discovery: {} serves {} model(s): {}",
                        self.endpoint.name,
                        names.len(),
                        names.join(", ")
                    );
                }
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

/// Hands out endpoint ids, never the same one twice in a process.
#[derive(Debug, Default)]
pub struct EndpointIds(usize);

impl EndpointIds {
    fn next(&mut self) -> usize {
        self.0 += 1;
        self.0 - 1
    }
}

/// What a reload did to the endpoints, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EndpointChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub kept: usize,
}

impl std::fmt::Display for EndpointChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        write!(
            f,
            "added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.kept
        )
    }
}

/// Replace `states` with one state per endpoint of `endpoints`, in their order: an endpoint
/// defined exactly as before keeps its state (models, address, id, and its `Endpoint` with
/// health and requests in flight); any other gets a fresh state and a new id, so that no pool,
/// request or counter confuses it with what it replaces.
pub fn restate(
    states: &mut Vec<EndpointState>,
    endpoints: &[Arc<Endpoint>],
    ids: &mut EndpointIds,
) -> EndpointChanges {
    let mut old: Vec<Option<EndpointState>> =
        std::mem::take(states).into_iter().map(Some).collect();
    let mut changes = EndpointChanges::default();
    for ep in endpoints {
        let same = old
            .iter_mut()
            .find(|s| s.as_ref().is_some_and(|s| s.endpoint.same_definition(ep)))
            .and_then(Option::take);
        match same {
            Some(state) => {
                changes.kept += 1;
                states.push(state);
            }
            None => {
                let renamed = old.iter().flatten().any(|s| s.endpoint.name == ep.name);
                if renamed {
                    changes.changed.push(ep.name.clone());
                } else {
                    changes.added.push(ep.name.clone());
                }
                states.push(EndpointState::new(ep.clone(), ids.next()));
            }
        }
    }
    changes.removed = old
        .into_iter()
        .flatten()
        .map(|s| s.endpoint.name.clone())
        .filter(|name| !changes.changed.contains(name))
        .collect();
    changes
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
        let mut ids = EndpointIds::default();
        let mut states = Vec::new();
        restate(&mut states, &now.config.endpoints, &mut ids);
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
                    self.reload(&before, &now, &mut states, &mut ids).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, port: u16, key: Option<&str>) -> Arc<Endpoint> {
        let key = key.map(|k| crate::endpoint::ApiKey::new(k).unwrap());
        let url = format!("http://127.0.0.1:{port}");
        Arc::new(Endpoint::new(&url, EndpointKind::Openai, Some(name.into()), key, None).unwrap())
    }

    #[test]
    fn restate_keeps_unchanged_endpoints_and_gives_others_new_ids() {
        let mut ids = EndpointIds::default();
        let (a, b, c) = (
            endpoint("a", 1, None),
            endpoint("b", 2, None),
            endpoint("c", 3, None),
        );
        let mut states = Vec::new();
        restate(&mut states, &[a.clone(), b.clone(), c], &mut ids);
        assert_eq!(states.iter().map(|s| s.id).collect::<Vec<_>>(), [0, 1, 2]);
        states[1].models = vec![parse::DiscoveredModel {
            id: "m".into(),
            created: None,
            owned_by: None,
        }];

        // b as it was (a new but equal definition), a with a new key, c gone, d new; b first.
        let changes = restate(
            &mut states,
            &[
                endpoint("b", 2, None),
                endpoint("a", 1, Some("sk-new")),
                endpoint("d", 4, None),
            ],
            &mut ids,
        );
        assert_eq!(
            changes,
            EndpointChanges {
                added: vec!["d".into()],
                removed: vec!["c".into()],
                changed: vec!["a".into()],
                kept: 1,
            }
        );
        let names: Vec<&str> = states.iter().map(|s| s.endpoint.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "d"]);
        assert_eq!(states[0].id, 1, "b keeps its id ...");
        assert!(
            Arc::ptr_eq(&states[0].endpoint, &b),
            "... its endpoint (health, in flight)"
        );
        assert_eq!(states[0].models.len(), 1, "... and its models");
        assert_eq!((states[1].id, states[2].id), (3, 4), "ids are never reused");
        assert!(!Arc::ptr_eq(&states[1].endpoint, &a));
        assert_eq!(states[1].status, PollStatus::Pending);
    }
}
