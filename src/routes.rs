//! The routing snapshot: model -> pool of upstreams, plus the pre-rendered local listings.
//! Immutable once built; discovery publishes a new one atomically and the request path reads
//! it without locks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;

use crate::balance::{self, Balancing, Policy, PolicyName};
use crate::config::RequestSettings;
use crate::endpoint::Endpoint;
use crate::health::Status;
use crate::metrics::RouteCounters;
use crate::openai::{List, ModelEntry};
use crate::upstream::Upstream;

/// The upstreams that serve one model, and the policy that balances them.
pub struct Pool {
    /// `x-ai-proxy-model` for responses from this pool (`None` if the id is no header value).
    pub model_header: Option<HeaderValue>,
    policy_name: PolicyName,
    policy: Box<dyn Policy>,
    /// Sorted by endpoint id; addresses are unique within a pool.
    members: Vec<Arc<Upstream>>,
    /// Each member's metrics for this model (when metrics are on), in the members' order.
    counters: Vec<RouteCounters>,
}

impl Pool {
    /// A pool of upstreams; ones whose address repeats an earlier member's are dropped (the
    /// balancer identifies members by address).
    pub fn new(model: &str, mut members: Vec<Arc<Upstream>>, balancing: &Balancing) -> Pool {
        let policy_name = balancing.policy_for(model);
        members.sort_by_key(|u| u.id);
        let mut seen = std::collections::HashSet::new();
        members.retain(|u| {
            let unique = seen.insert(u.addr);
            if !unique {
                log::warn!(
                    "endpoint {} has the same address {} as another endpoint of the same model; using only the first",
                    u.endpoint.name,
                    u.addr
                );
            }
            unique
        });
        let policy = balance::build(policy_name, &members, balancing);
        let counters = crate::metrics::get().map_or_else(Vec::new, |m| {
            members
                .iter()
                .map(|u| m.route(model, &u.endpoint.name))
                .collect()
        });
        Pool {
            model_header: HeaderValue::from_str(model).ok(),
            policy_name,
            policy,
            members,
            counters,
        }
    }

    /// The metrics of this model on the member with endpoint id `id`.
    pub fn counters(&self, id: usize) -> Option<&RouteCounters> {
        let at = self.members.binary_search_by_key(&id, |u| u.id).ok()?;
        self.counters.get(at)
    }

    /// Whether this pool has exactly these members (endpoint and address) and this policy, so
    /// it can be reused with its balancing state.
    pub fn reusable_for(&self, other: &[Arc<Upstream>], policy: PolicyName) -> bool {
        self.policy_name == policy && self.same_members(other)
    }

    fn same_members(&self, other: &[Arc<Upstream>]) -> bool {
        let mut theirs: Vec<(usize, SocketAddr)> = other.iter().map(|u| (u.id, u.addr)).collect();
        theirs.sort_unstable();
        theirs.dedup_by_key(|(_, a)| *a);
        theirs.len() == self.members.len()
            && theirs
                .iter()
                .zip(&self.members)
                .all(|((i, a), m)| *i == m.id && *a == m.addr)
    }

    /// The upstream the policy picks, skipping endpoints already tried for this request and
    /// endpoints out of service (ejected, or held by a `Retry-After`). May claim an endpoint's
    /// post-cooldown trial, so call it only to send a request.
    pub fn select(&self, tried: &[usize], affinity: Option<u64>) -> Option<&Arc<Upstream>> {
        // Members whose trial another request claimed between the pick and the claim.
        let mut claimed_elsewhere: Vec<usize> = Vec::new();
        // Bounded: each turn either returns or rules one more member out.
        for _ in 0..=self.members.len() {
            let usable = |i: usize| {
                let m = &self.members[i];
                !tried.contains(&m.id)
                    && m.endpoint.health.may_admit()
                    && !claimed_elsewhere.contains(&i)
            };
            let i = self.policy.pick(&self.members, affinity, &usable)?;
            if self.members[i].endpoint.health.admits() {
                return Some(&self.members[i]);
            }
            claimed_elsewhere.push(i);
        }
        None
    }

    /// Whether requests to this pool need their affinity key.
    pub fn wants_affinity(&self) -> bool {
        self.policy.wants_affinity()
    }

    /// The member with endpoint id `id` answered with its response head after `ttfb`.
    pub fn observe_ttfb(&self, id: usize, ttfb: std::time::Duration) {
        if let Ok(at) = self.members.binary_search_by_key(&id, |u| u.id) {
            self.policy.observe(at, ttfb);
        }
    }

    /// Whether `select` could find an endpoint now (without claiming any trial).
    pub fn has_candidate(&self, tried: &[usize]) -> bool {
        self.members
            .iter()
            .any(|m| !tried.contains(&m.id) && m.endpoint.health.may_admit())
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// One published routing state.
#[derive(Default)]
pub struct Routes {
    pub pools: HashMap<String, Arc<Pool>>,
    /// Where requests without a model go: the first configured endpoint that has an address.
    pub default_upstream: Option<Arc<Upstream>>,
    /// `GET /v1/models`, rendered once per discovery round.
    pub models_json: Bytes,
    /// The same entries, sorted by id, for `GET /v1/models/{id}`.
    pub model_entries: Vec<ModelEntry>,
    /// `GET /v1/endpoints` entries as of the last discovery round, each with its endpoint,
    /// whose live counters are added when the listing is served.
    pub endpoint_views: Vec<(Arc<Endpoint>, serde_json::Map<String, serde_json::Value>)>,
    /// The first discovery round has completed.
    pub ready: bool,
    /// The config's request settings this snapshot was published with.
    pub settings: Arc<RequestSettings>,
}

impl Routes {
    /// `GET /v1/endpoints`: the discovery views with each endpoint's requests in flight now.
    pub fn endpoints_json(&self) -> Bytes {
        let data: Vec<serde_json::Value> = self
            .endpoint_views
            .iter()
            .map(|(ep, view)| {
                let mut view = view.clone();
                view.insert("in_flight".into(), ep.in_flight().into());
                let health = ep.health.status();
                let discovered = view.get("healthy").and_then(|v| v.as_bool());
                view.insert(
                    "healthy".into(),
                    (discovered.unwrap_or(false) && health == Status::Healthy).into(),
                );
                view.insert(
                    "health".into(),
                    serde_json::json!({
                        "status": health.as_str(),
                        "retry_in_ms": u64::try_from(ep.health.retry_in().as_millis()).unwrap_or(u64::MAX),
                    }),
                );
                serde_json::Value::Object(view)
            })
            .collect();
        Bytes::from(serde_json::to_vec(&List::new(data)).expect("plain data serializes"))
    }

    /// The `/v1/models` entry of a model.
    pub fn model(&self, id: &str) -> Option<&ModelEntry> {
        self.model_entries
            .binary_search_by(|e| e.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.model_entries[i])
    }

    pub fn pool(&self, model: &str) -> Option<&Arc<Pool>> {
        self.pools.get(model)
    }

    /// Discovery found at least one model at a reachable address. Passive health is not asked:
    /// every replica shares the same upstreams, so a readiness tied to it would take all of
    /// them out of their load balancer at once, and clients would get refused connections
    /// instead of the gateway's errors.
    pub fn routable(&self) -> bool {
        !self.pools.is_empty()
    }
}

/// The shared handle: discovery stores, requests load.
pub type SharedRoutes = Arc<ArcSwap<Routes>>;

/// Routes before the first discovery round: nothing routable, not ready.
pub fn empty_routes(settings: Arc<RequestSettings>) -> SharedRoutes {
    Arc::new(ArcSwap::from_pointee(Routes {
        models_json: Bytes::from_static(br#"{"object":"list","data":[]}"#),
        settings,
        ..Routes::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, EndpointKind};

    fn up(index: usize, port: u16) -> Arc<Upstream> {
        let ep = Arc::new(
            Endpoint::new(
                &format!("http://127.0.0.1:{port}"),
                EndpointKind::Openai,
                None,
                None,
                None,
            )
            .unwrap(),
        );
        Arc::new(Upstream::new(ep, index, ([127, 0, 0, 1], port).into()))
    }

    fn round_robin() -> Balancing {
        Balancing {
            default: PolicyName::RoundRobin,
            ..Balancing::default()
        }
    }

    #[test]
    fn round_robin_spreads_and_skips_tried() {
        let pool = Pool::new("m", vec![up(1, 2), up(0, 1)], &round_robin());
        let mut counts = [0; 2];
        for _ in 0..10 {
            counts[pool.select(&[], None).unwrap().id] += 1;
        }
        assert_eq!(counts, [5, 5]);
        for _ in 0..4 {
            assert_eq!(pool.select(&[0], None).unwrap().id, 1);
        }
        assert!(pool.select(&[0, 1], None).is_none());
    }

    #[test]
    fn membership_comparison() {
        let pool = Pool::new("m", vec![up(0, 1), up(1, 2)], &round_robin());
        assert!(pool.same_members(&[up(1, 2), up(0, 1)]));
        assert!(pool.reusable_for(&[up(1, 2), up(0, 1)], PolicyName::RoundRobin));
        assert!(!pool.reusable_for(&[up(1, 2), up(0, 1)], PolicyName::LeastOutstanding));
        assert!(!pool.same_members(&[up(0, 1)]));
        assert!(!pool.same_members(&[up(0, 1), up(1, 3)]));
    }

    #[test]
    fn duplicate_addresses_collapse() {
        let pool = Pool::new("m", vec![up(0, 1), up(1, 1)], &round_robin());
        assert_eq!(pool.len(), 1);
        assert!(pool.same_members(&[up(0, 1), up(1, 1)]));
    }
}
