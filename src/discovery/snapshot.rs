//! Build a routing snapshot from discovery state: pools per model (reusing unchanged ones),
//! and the `/v1/models` and `/v1/endpoints` bodies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::json;

use super::{EndpointState, Member, PollStatus};
use crate::balance::Balancing;
use crate::deployment::Deployment;
use crate::openai::{List, ModelEntry};
use crate::routes::{DeploymentView, EndpointView, MemberView, Pool, Routes};
use crate::settings::RequestSettings;

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A new snapshot. `previous` lends its pools where membership is unchanged, so balancing
/// state survives a discovery round.
pub fn build_routes(
    states: &[EndpointState],
    previous: &Routes,
    started: SystemTime,
    ready: bool,
    balancing: &Balancing,
    aliases: &BTreeMap<String, String>,
    settings: &Arc<RequestSettings>,
) -> Routes {
    // BTreeMap: the model list comes out sorted by id.
    let mut members: BTreeMap<&str, Vec<Deployment>> = BTreeMap::new();
    let mut entries: BTreeMap<&str, ModelEntry> = BTreeMap::new();
    for s in states {
        for (member, m, state) in s.deployments() {
            members.entry(m.name).or_default().push(Deployment {
                upstream: member.upstream.clone(),
                state: state.clone(),
                upstream_model: Arc::from(m.id),
            });
            entries.entry(m.name).or_insert_with(|| ModelEntry {
                id: m.name.to_string(),
                object: "model",
                created: m.created.unwrap_or_else(|| unix(started)),
                owned_by: m
                    .owned_by
                    .map_or_else(|| s.endpoint.name.clone(), str::to_string),
            });
        }
    }
    let mut pools: HashMap<String, Arc<Pool>> = members
        .into_iter()
        .map(|(model, ups)| {
            let pool = match previous.pool(model) {
                Some(p) if p.reusable_for(&ups, balancing.policy_for(model)) => p.clone(),
                _ => Arc::new(Pool::new(model, ups, balancing)),
            };
            (model.to_string(), pool)
        })
        .collect();
    // An alias shares its model's pool; a model actually served under the alias's name wins.
    for (alias, model) in aliases {
        if pools.contains_key(alias) {
            continue;
        }
        if let Some(pool) = pools.get(model).cloned() {
            pools.insert(alias.clone(), pool);
            if let Some(entry) = entries.get(model.as_str()) {
                let entry = ModelEntry {
                    id: alias.clone(),
                    ..entry.clone()
                };
                entries.insert(alias, entry);
            }
        }
    }
    // The first configured endpoint's first member that has answered (else its first).
    let default_upstream = states.iter().find_map(|s| {
        let answered = s.members.iter().find(|m| m.last_success.is_some());
        answered.or(s.members.first()).map(|m| m.upstream.clone())
    });
    let model_entries: Vec<ModelEntry> = entries.into_values().collect();
    let models_json = to_bytes(&List::new(model_entries.iter().collect()));
    let endpoint_views = states
        .iter()
        .map(|s| EndpointView {
            endpoint: s.endpoint.clone(),
            view: endpoint_view(s),
            members: s.members.iter().map(member_view).collect(),
        })
        .collect();
    Routes {
        pools,
        default_upstream,
        models_json,
        model_entries,
        endpoint_views,
        ready,
        settings: settings.clone(),
    }
}

fn to_bytes<T: serde::Serialize>(v: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(v).expect("plain data serializes"))
}

/// The discovery status of an endpoint or a member, for `/v1/endpoints`.
fn discovery_json(
    status: &PollStatus,
    last_success: Option<SystemTime>,
    last_attempt: Option<SystemTime>,
    consecutive_failures: u32,
) -> serde_json::Value {
    let (status, error) = match status {
        PollStatus::Pending => ("pending", None),
        PollStatus::Ok => ("ok", None),
        PollStatus::Failed(e) => ("failed", Some(e.as_str())),
    };
    json!({
        "status": status,
        "error": error,
        "last_success": last_success.map(unix),
        "last_attempt": last_attempt.map(unix),
        "consecutive_failures": consecutive_failures,
    })
}

/// One `/v1/endpoints` entry, as of this round. Never the key: only whether there is one.
fn endpoint_view(s: &EndpointState) -> serde_json::Map<String, serde_json::Value> {
    let ep = &s.endpoint;
    let mut models: Vec<&str> = s.deployments().map(|(_, m, _)| m.name).collect();
    models.sort_unstable();
    models.dedup();
    let view = json!({
        "name": ep.name,
        "url": ep.url,
        "type": ep.kind.as_str(),
        "models": models,
        "healthy": s.healthy(),
        "has_api_key": ep.authorization.is_some(),
        "discovery": discovery_json(
            &s.status,
            s.last_success,
            s.last_attempt,
            s.consecutive_failures,
        ),
    });
    match view {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

fn member_view(m: &Member) -> MemberView {
    MemberView {
        upstream: m.upstream.clone(),
        polled_ok: m.healthy(),
        discovery: discovery_json(
            &m.status,
            m.last_success,
            m.last_attempt,
            m.consecutive_failures,
        ),
        deployments: m
            .served()
            .iter()
            .filter_map(|s| {
                Some(DeploymentView {
                    model: s.name.to_string(),
                    upstream_model: s.id.to_string(),
                    state: m.deployments.get(s.id)?.clone(),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::parse::DiscoveredModel;
    use crate::endpoint::{ApiKey, Endpoint, EndpointKind};
    use crate::upstream::Upstream;

    fn state(port: u16, models: &[&str], status: PollStatus) -> EndpointState {
        let ep = Arc::new(
            Endpoint::new(
                &format!("http://127.0.0.1:{port}"),
                EndpointKind::Openai,
                None,
                Some(ApiKey::new("sk-hidden").unwrap()),
                None,
            )
            .unwrap(),
        );
        let mut s = EndpointState::new(ep.clone());
        let mut m = Member::new(Arc::new(Upstream::new(ep, ([127, 0, 0, 1], port).into())));
        m.models = models
            .iter()
            .map(|m| DiscoveredModel {
                id: m.to_string(),
                created: None,
                owned_by: None,
            })
            .collect();
        m.status = status.clone();
        m.last_success = Some(SystemTime::now());
        m.sync_deployments();
        s.members.push(m);
        s.status = status;
        s
    }

    /// The routes of `states` after `previous`, ready, with the default policy.
    fn build(states: &[EndpointState], previous: &Routes) -> Routes {
        let settings = Default::default();
        build_routes(
            states,
            previous,
            SystemTime::now(),
            true,
            &Balancing::default(),
            &BTreeMap::new(),
            &settings,
        )
    }

    #[test]
    fn union_of_models_each_once_and_pool_reuse() {
        let states = vec![
            state(1, &["b", "a"], PollStatus::Ok),
            state(2, &["a", "c"], PollStatus::Failed("down".into())),
        ];
        let r1 = build(&states, &Routes::default());
        let v: serde_json::Value = serde_json::from_slice(&r1.models_json).unwrap();
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(r1.pool("a").unwrap().len(), 2);
        assert_eq!(r1.default_upstream.as_ref().unwrap().addr.port(), 1);

        let r2 = build(&states, &r1);
        assert!(Arc::ptr_eq(r1.pool("a").unwrap(), r2.pool("a").unwrap()));
        let fewer = vec![state(1, &["a"], PollStatus::Ok)];
        let r3 = build(&fewer, &r2);
        assert!(!Arc::ptr_eq(r2.pool("a").unwrap(), r3.pool("a").unwrap()));
        assert!(r3.pool("c").is_none());
    }

    #[test]
    fn endpoints_view_has_status_and_no_key() {
        let states = vec![state(1, &["a"], PollStatus::Failed("HTTP 500".into()))];
        let r = build(&states, &Routes::default());
        let text = String::from_utf8(r.endpoints_json().to_vec()).unwrap();
        assert!(!text.contains("sk-hidden"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let e = &v["data"][0];
        assert_eq!(e["type"], "openai");
        assert_eq!(e["healthy"], false);
        assert_eq!(e["models"][0], "a");
        assert_eq!(e["discovery"]["status"], "failed");
        assert_eq!(e["discovery"]["error"], "HTTP 500");
    }
}
