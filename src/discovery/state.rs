//! What discovery knows: per endpoint, the addresses its host resolves to (its members), and
//! per member the last good model list, the latest poll's outcome and each served model's
//! deployment state. Kept across rounds and reloads, so health and load outlive snapshots.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::client::GetError;
use super::parse::DiscoveredModel;
use crate::deployment::DeploymentState;
use crate::endpoint::Endpoint;
use crate::upstream::Upstream;

/// Outcome of the latest poll (of a member, or of an endpoint as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollStatus {
    /// Not polled yet.
    Pending,
    Ok,
    /// The latest poll failed (the last good models are kept).
    Failed(String),
}

/// A model as a member serves it: its public name, its upstream id, and what the upstream
/// said about it.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    pub name: &'a str,
    pub id: &'a str,
    pub created: Option<i64>,
    pub owned_by: Option<&'a str>,
}

/// One address of an endpoint, polled and health-checked on its own.
#[derive(Debug)]
pub struct Member {
    pub upstream: Arc<Upstream>,
    /// The last good model list.
    pub models: Vec<DiscoveredModel>,
    pub status: PollStatus,
    pub last_success: Option<SystemTime>,
    pub last_attempt: Option<SystemTime>,
    pub consecutive_failures: u32,
    /// The state of each model served here, by upstream id: kept while the model is served.
    pub deployments: HashMap<String, Arc<DeploymentState>>,
}

/// What discovery knows about one endpoint.
#[derive(Debug)]
pub struct EndpointState {
    pub endpoint: Arc<Endpoint>,
    /// One per address the host resolved to at the latest round that resolved it, sorted by
    /// address. A name that stops resolving keeps the members it had.
    pub members: Vec<Member>,
    /// Whether any member answered in the latest round; else why not.
    pub status: PollStatus,
    pub last_success: Option<SystemTime>,
    pub last_attempt: Option<SystemTime>,
    /// Rounds in a row in which no member answered.
    pub consecutive_failures: u32,
}

/// What one member's model list poll gave.
pub type PollOutcome = Result<Vec<DiscoveredModel>, GetError>;

/// One round's outcome for an endpoint: its addresses (or why it could not be resolved), and
/// each member polled with its result.
pub struct RoundResult {
    pub resolved: Result<Vec<SocketAddr>, String>,
    pub polls: Vec<(Arc<Upstream>, PollOutcome)>,
}

impl Member {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Member {
            upstream,
            models: Vec::new(),
            status: PollStatus::Pending,
            last_success: None,
            last_attempt: None,
            consecutive_failures: 0,
            deployments: HashMap::new(),
        }
    }

    /// What the member serves: the polled models under their public names, then the declared
    /// models the poll did not list. Nothing before the member first answered.
    pub fn served(&self) -> Vec<Served<'_>> {
        if self.last_success.is_none() {
            return Vec::new();
        }
        let ep = &self.upstream.endpoint;
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

    /// Serving: the latest poll succeeded.
    pub fn healthy(&self) -> bool {
        self.status == PollStatus::Ok
    }

    /// Keep one state per served model: new models get theirs, gone ones lose it.
    pub(super) fn sync_deployments(&mut self) {
        let policy = self.upstream.endpoint.health_policy;
        let ids: Vec<String> = self.served().iter().map(|s| s.id.to_string()).collect();
        self.deployments.retain(|id, _| ids.contains(id));
        for id in ids {
            self.deployments
                .entry(id)
                .or_insert_with(|| Arc::new(DeploymentState::new(policy)));
        }
    }

    /// How logs name the member: its endpoint, and its address when the host is a name.
    fn label(&self) -> String {
        let ep = &self.upstream.endpoint;
        if ep.host.parse::<std::net::IpAddr>().is_ok() {
            ep.name.clone()
        } else {
            format!("{} ({})", ep.name, self.upstream.addr)
        }
    }

    /// Take in a poll's outcome: new models on success; on failure keep the last good ones.
    fn record(&mut self, result: PollOutcome, now: SystemTime) {
        self.last_attempt = Some(now);
        match result {
            Ok(models) => {
                let changed = self.status != PollStatus::Ok || self.models != models;
                // A good poll is a free active probe: an ejected address gets its trial now.
                self.upstream.health.probe_succeeded();
                self.models = models;
                self.status = PollStatus::Ok;
                self.last_success = Some(now);
                self.consecutive_failures = 0;
                self.sync_deployments();
                // And so does each model it lists: a model that recovered serves again
                // within one probe interval, instead of after a doubled cooldown.
                for d in self.deployments.values() {
                    d.health.probe_succeeded();
                }
                if changed {
                    let served = self.served();
                    let names: Vec<&str> = served.iter().map(|m| m.name).collect();
                    log::info!(
                        "discovery: {} serves {} model(s): {}",
                        self.label(),
                        names.len(),
                        names.join(", ")
                    );
                }
            }
            Err(GetError { answered, why }) => {
                if self.consecutive_failures == 0 {
                    log::warn!(
                        "discovery: {} failed: {why}; keeping its {} last known model(s)",
                        self.label(),
                        self.models.len()
                    );
                }
                // An address that cannot be reached is taken out before a user request finds
                // out. One that answers badly is only a failure like any other: a single bad
                // poll never takes it out of service.
                let ejected = if answered {
                    self.upstream.health.record_failure()
                } else {
                    self.upstream.health.eject()
                };
                if let Some(cooldown) = ejected {
                    log::warn!(
                        "health: {} ejected for {:.1} s (probe failed: {why})",
                        self.label(),
                        cooldown.as_secs_f64()
                    );
                }
                self.status = PollStatus::Failed(why);
                self.consecutive_failures += 1;
            }
        }
    }
}

impl EndpointState {
    pub fn new(endpoint: Arc<Endpoint>) -> Self {
        EndpointState {
            endpoint,
            members: Vec::new(),
            status: PollStatus::Pending,
            last_success: None,
            last_attempt: None,
            consecutive_failures: 0,
        }
    }

    /// Serving: some member answered in the latest round.
    pub fn healthy(&self) -> bool {
        self.status == PollStatus::Ok
    }

    /// The upstreams of the members, for a round to poll (see [`upstreams_for`]).
    pub fn known_upstreams(&self) -> Vec<Arc<Upstream>> {
        self.members.iter().map(|m| m.upstream.clone()).collect()
    }

    /// Take in a round's outcome. Members follow the resolved addresses: new ones join, gone
    /// ones leave (requests in flight to them hold their upstream and finish).
    pub fn record(&mut self, round: RoundResult, now: SystemTime) {
        self.last_attempt = Some(now);
        let resolve_error = match &round.resolved {
            Ok(_) => None,
            Err(e) => Some(e.clone()),
        };
        if round.resolved.is_ok() {
            let mut old = std::mem::take(&mut self.members);
            let mut members: Vec<Member> = round
                .polls
                .iter()
                .map(
                    |(u, _)| match old.iter().position(|m| m.upstream.id == u.id) {
                        Some(at) => old.swap_remove(at),
                        None => Member::new(u.clone()),
                    },
                )
                .collect();
            members.sort_by_key(|m| m.upstream.addr);
            self.log_membership(&members, &old);
            self.members = members;
        }
        for (upstream, result) in round.polls {
            if let Some(m) = self
                .members
                .iter_mut()
                .find(|m| m.upstream.id == upstream.id)
            {
                m.record(result, now);
            }
        }
        if self.members.iter().any(Member::healthy) {
            self.status = PollStatus::Ok;
            self.last_success = Some(now);
            self.consecutive_failures = 0;
        } else {
            let why = resolve_error
                .or_else(|| {
                    self.members.iter().find_map(|m| match &m.status {
                        PollStatus::Failed(e) => Some(e.clone()),
                        _ => None,
                    })
                })
                .unwrap_or_else(|| format!("{} resolves to no address", self.endpoint.host));
            if self.consecutive_failures == 0 && self.members.is_empty() {
                log::warn!("discovery: {} failed: {why}", self.endpoint.name);
            }
            self.status = PollStatus::Failed(why);
            self.consecutive_failures += 1;
        }
    }

    /// Say which addresses joined and left a name's fleet (an IP literal has only its own).
    fn log_membership(&self, now: &[Member], gone: &[Member]) {
        let ep = &self.endpoint;
        if ep.host.parse::<std::net::IpAddr>().is_ok() {
            return;
        }
        let joined: Vec<String> = now
            .iter()
            .filter(|m| m.last_attempt.is_none())
            .map(|m| m.upstream.addr.to_string())
            .collect();
        let left: Vec<String> = gone.iter().map(|m| m.upstream.addr.to_string()).collect();
        if !joined.is_empty() || !left.is_empty() {
            log::info!(
                "discovery: {} resolves to {} address(es); joined: [{}], left: [{}]",
                ep.name,
                now.len(),
                joined.join(", "),
                left.join(", ")
            );
        }
    }

    /// Every deployment state of the endpoint, with the member it belongs to.
    pub fn deployments(
        &self,
    ) -> impl Iterator<Item = (&Member, Served<'_>, &Arc<DeploymentState>)> {
        self.members.iter().flat_map(|m| {
            m.served()
                .into_iter()
                .filter_map(move |s| Some((m, s, m.deployments.get(s.id)?)))
        })
    }
}

/// The upstreams a round polls: one per address in `resolved` (a known member's, so its
/// health and load carry on, or a new one), or the known members when the name did not
/// resolve.
pub fn upstreams_for(
    endpoint: &Arc<Endpoint>,
    known: &[Arc<Upstream>],
    resolved: Option<&[SocketAddr]>,
) -> Vec<Arc<Upstream>> {
    match resolved {
        None => known.to_vec(),
        Some(addrs) => addrs
            .iter()
            .map(|addr| {
                known
                    .iter()
                    .find(|u| u.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Upstream::new(endpoint.clone(), *addr)))
            })
            .collect(),
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
/// defined exactly as before keeps its state (members with their models, health and requests
/// in flight); any other gets a fresh state, whose new upstreams no pool, request or counter
/// confuses with the ones they replace.
pub fn restate(states: &mut Vec<EndpointState>, endpoints: &[Arc<Endpoint>]) -> EndpointChanges {
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
                states.push(EndpointState::new(ep.clone()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::EndpointKind;

    fn endpoint(name: &str, url: &str, key: Option<&str>) -> Arc<Endpoint> {
        let key = key.map(|k| crate::endpoint::ApiKey::new(k).unwrap());
        Arc::new(Endpoint::new(url, EndpointKind::Openai, Some(name.into()), key, None).unwrap())
    }

    fn models(ids: &[&str]) -> Vec<DiscoveredModel> {
        ids.iter()
            .map(|id| DiscoveredModel {
                id: id.to_string(),
                created: None,
                owned_by: None,
            })
            .collect()
    }

    /// A round in which `addrs` resolved and each answered with `ok`'s models or failed.
    fn round(state: &EndpointState, addrs: &[[u8; 4]], ok: &[&str]) -> RoundResult {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|a| (*a, 8000).into()).collect();
        let polls = upstreams_for(&state.endpoint, &state.known_upstreams(), Some(&addrs))
            .into_iter()
            .map(|u| {
                let r = if ok.is_empty() {
                    Err(GetError::unreachable("refused".into()))
                } else {
                    Ok(models(ok))
                };
                (u, r)
            })
            .collect();
        RoundResult {
            resolved: Ok(addrs),
            polls,
        }
    }

    #[test]
    fn members_follow_the_resolved_addresses_and_keep_their_state() {
        let mut s = EndpointState::new(endpoint("fleet", "http://fleet.test:8000", None));
        let now = SystemTime::now();
        s.record(round(&s, &[[127, 0, 0, 3], [127, 0, 0, 2]], &["m"]), now);
        let addrs = |s: &EndpointState| -> Vec<String> {
            s.members
                .iter()
                .map(|m| m.upstream.addr.to_string())
                .collect()
        };
        assert_eq!(addrs(&s), ["127.0.0.2:8000", "127.0.0.3:8000"]);
        assert!(s.healthy());
        assert_eq!(s.deployments().count(), 2);
        let kept = s.members[1].upstream.clone();
        let kept_state = s.members[1].deployments["m"].clone();

        // .2 leaves, .4 joins; .3 keeps its upstream and its deployment's state.
        s.record(round(&s, &[[127, 0, 0, 3], [127, 0, 0, 4]], &["m"]), now);
        assert_eq!(addrs(&s), ["127.0.0.3:8000", "127.0.0.4:8000"]);
        assert!(Arc::ptr_eq(&s.members[0].upstream, &kept));
        assert!(Arc::ptr_eq(&s.members[0].deployments["m"], &kept_state));
        assert_ne!(s.members[1].upstream.id, kept.id);

        // The name stops resolving: the members stay, polled at their known addresses.
        let polls = upstreams_for(&s.endpoint, &s.known_upstreams(), None)
            .into_iter()
            .map(|u| (u, Ok(models(&["m"]))))
            .collect();
        s.record(
            RoundResult {
                resolved: Err("cannot resolve fleet.test".into()),
                polls,
            },
            now,
        );
        assert_eq!(addrs(&s).len(), 2);
        assert!(s.healthy());
    }

    #[test]
    fn an_endpoint_fails_only_when_no_member_answers() {
        let mut s = EndpointState::new(endpoint("fleet", "http://fleet.test:8000", None));
        let now = SystemTime::now();
        s.record(round(&s, &[[127, 0, 0, 2]], &[]), now);
        assert_eq!(s.status, PollStatus::Failed("refused".into()));
        assert_eq!(s.consecutive_failures, 1);
        assert_eq!(
            s.deployments().count(),
            0,
            "nothing served before an answer"
        );
        s.record(
            RoundResult {
                resolved: Err("cannot resolve fleet.test".into()),
                polls: Vec::new(),
            },
            now,
        );
        assert_eq!(
            s.status,
            PollStatus::Failed("cannot resolve fleet.test".into())
        );
        assert_eq!(s.consecutive_failures, 2);
    }

    #[test]
    fn restate_keeps_unchanged_endpoints_only() {
        let (a, b, c) = (
            endpoint("a", "http://127.0.0.1:1", None),
            endpoint("b", "http://127.0.0.1:2", None),
            endpoint("c", "http://127.0.0.1:3", None),
        );
        let mut states = Vec::new();
        restate(&mut states, &[a.clone(), b.clone(), c]);
        let up = Arc::new(Upstream::new(b.clone(), ([127, 0, 0, 1], 2).into()));
        states[1].members.push(Member::new(up.clone()));

        // b as it was (a new but equal definition), a with a new key, c gone, d new; b first.
        let changes = restate(
            &mut states,
            &[
                endpoint("b", "http://127.0.0.1:2", None),
                endpoint("a", "http://127.0.0.1:1", Some("sk-new")),
                endpoint("d", "http://127.0.0.1:4", None),
            ],
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
        assert!(Arc::ptr_eq(&states[0].endpoint, &b), "b keeps its endpoint");
        assert!(
            Arc::ptr_eq(&states[0].members[0].upstream, &up),
            "... and its members (health, in flight)"
        );
        assert!(!Arc::ptr_eq(&states[1].endpoint, &a));
        assert!(states[1].members.is_empty());
        assert_eq!(states[1].status, PollStatus::Pending);
    }
}
