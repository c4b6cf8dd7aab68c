//! Build a routing snapshot from discovery state: pools per model (reusing unchanged ones),
//! and the `/v1/models` and `/v1/endpoints` bodies.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::json;

use super::{EndpointState, PollStatus};
use crate::balance::Balancing;
use crate::config::RequestSettings;
use crate::deployment::Deployment;
use crate::openai::{List, ModelEntry};
use crate::routes::{DeploymentView, EndpointView, Pool, Routes};

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
        let Some(upstream) = &s.upstream else {
            continue;
        };
        for m in s.served() {
            let Some(health) = s.deployments.get(m.id) else {
                continue;
            };
            members.entry(m.name).or_default().push(Deployment {
                upstream: upstream.clone(),
                health: health.clone(),
                upstream_model: Some(Arc::from(m.id)),
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
    let default_upstream = states.iter().find_map(|s| s.upstream.clone());
    let model_entries: Vec<ModelEntry> = entries.into_values().collect();
    let models_json = to_bytes(&List::new(model_entries.iter().collect()));
    let endpoint_views = states
        .iter()
        .map(|s| EndpointView {
            endpoint: s.endpoint.clone(),
            view: endpoint_view(s),
            deployments: s
                .served()
                .iter()
                .filter_map(|m| {
                    let health = s.deployments.get(m.id)?.clone();
                    Some(DeploymentView {
                        model: m.name.to_string(),
                        upstream_model: m.id.to_string(),
                        health,
                    })
                })
                .collect(),
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

/// One `/v1/endpoints` entry. Never the key: only whether there is one.
fn endpoint_view(s: &EndpointState) -> serde_json::Map<String, serde_json::Value> {
    let (status, error) = match &s.status {
        PollStatus::Pending => ("pending", None),
        PollStatus::Ok => ("ok", None),
        PollStatus::Failed(e) => ("failed", Some(e.as_str())),
    };
    let ep = &s.endpoint;
    let view = json!({
        "name": ep.name,
        "url": ep.url,
        "type": ep.kind.as_str(),
        "models": s.served().iter().map(|m| m.name).collect::<Vec<_>>(),
        "healthy": s.healthy(),
        "address": s.upstream.as_ref().map(|u| u.addr.to_string()),
        "has_api_key": ep.authorization.is_some(),
        "discovery": {
            "status": status,
            "error": error,
            "last_success": s.last_success.map(unix),
            "last_attempt": s.last_attempt.map(unix),
            "consecutive_failures": s.consecutive_failures,
        },
    });
    match view {
        serde_json::Value::Object(map) => map,
        _ => unreachable!("json! of an object literal is an object"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::parse::DiscoveredModel;
    use crate::endpoint::{ApiKey, Endpoint, EndpointKind};
    use crate::upstream::Upstream;

    fn state(i: usize, port: u16, models: &[&str], status: PollStatus) -> EndpointState {
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
        let mut s = EndpointState::new(ep.clone(), i);
        s.upstream = Some(Arc::new(Upstream::new(
            ep,
            i,
            ([127, 0, 0, 1], port).into(),
        )));
        s.models = models
            .iter()
            .map(|m| DiscoveredModel {
                id: m.to_string(),
                created: None,
                owned_by: None,
            })
            .collect();
        s.status = status;
        s.last_success = Some(SystemTime::now());
        s.sync_deployments();
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
            state(0, 1, &["b", "a"], PollStatus::Ok),
            state(1, 2, &["a", "c"], PollStatus::Failed("down".into())),
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
        assert_eq!(r1.default_upstream.as_ref().unwrap().id, 0);

        let r2 = build(&states, &r1);
        assert!(Arc::ptr_eq(r1.pool("a").unwrap(), r2.pool("a").unwrap()));
        let fewer = vec![state(0, 1, &["a"], PollStatus::Ok)];
        let r3 = build(&fewer, &r2);
        assert!(!Arc::ptr_eq(r2.pool("a").unwrap(), r3.pool("a").unwrap()));
        assert!(r3.pool("c").is_none());
    }

    #[test]
    fn endpoints_view_has_status_and_no_key() {
        let states = vec![state(0, 1, &["a"], PollStatus::Failed("HTTP 500".into()))];
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
