//! The routing snapshot: model -> pool of upstreams, plus the pre-rendered local listings.
//! Immutable once built; discovery publishes a new one atomically and the request path reads
//! it without locks.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderValue;

use crate::balance::{self, Balancing, Policy, PolicyName};
use crate::deployment::{Deployment, DeploymentState};
use crate::endpoint::Endpoint;
use crate::health::{Health, Status};
use crate::metrics::{EndpointGauges, RouteCounters};
use crate::openai::{List, ModelEntry};
use crate::settings::RequestSettings;
use crate::upstream::Upstream;

/// The deployments that serve one public model name, and the policy that balances them.
pub struct Pool {
    /// `x-ai-proxy-model` for responses from this pool (`None` if the id is no header value).
    pub model_header: Option<HeaderValue>,
    policy_name: PolicyName,
    policy: Box<dyn Policy>,
    /// Sorted by upstream id; addresses are unique within a pool.
    deployments: Vec<Deployment>,
    /// Each deployment's metrics (when metrics are on), in the same order.
    counters: Vec<RouteCounters>,
}

impl Pool {
    /// A pool of deployments; ones whose address repeats an earlier one's are dropped (the
    /// balancer identifies members by address).
    pub fn new(model: &str, mut deployments: Vec<Deployment>, balancing: &Balancing) -> Pool {
        let policy_name = balancing.policy_for(model);
        deployments.sort_by_key(|d| d.upstream.id);
        let mut seen = std::collections::HashSet::new();
        deployments.retain(|d| {
            let u = &d.upstream;
            let unique = seen.insert(u.addr);
            if !unique {
                log::warn!(
                    "endpoint {} has the same address {} as another endpoint of model {model}; using only the first",
                    u.endpoint.name,
                    u.addr
                );
            }
            unique
        });
        let policy = balance::build(policy_name, &deployments, balancing);
        let counters = crate::metrics::get().map_or_else(Vec::new, |m| {
            deployments
                .iter()
                .map(|d| m.route(model, &d.upstream.endpoint.name))
                .collect()
        });
        Pool {
            model_header: HeaderValue::from_str(model).ok(),
            policy_name,
            policy,
            deployments,
            counters,
        }
    }

    /// The position of the deployment at upstream `id`.
    fn position(&self, id: usize) -> Option<usize> {
        self.deployments
            .binary_search_by_key(&id, |d| d.upstream.id)
            .ok()
    }

    /// The metrics of this model at upstream `id`.
    pub fn counters(&self, id: usize) -> Option<&RouteCounters> {
        self.counters.get(self.position(id)?)
    }

    /// Whether this pool has exactly these members (endpoint and address) and this policy, so
    /// it can be reused with its balancing state.
    pub fn reusable_for(&self, other: &[Deployment], policy: PolicyName) -> bool {
        self.policy_name == policy && self.same_members(other)
    }

    fn same_members(&self, other: &[Deployment]) -> bool {
        let key = |d: &Deployment| (d.upstream.id, d.upstream.addr, Arc::as_ptr(&d.state));
        let mut theirs: Vec<_> = other.iter().map(key).collect();
        theirs.sort_unstable();
        theirs.dedup_by_key(|(_, a, _)| *a);
        theirs.len() == self.deployments.len()
            && theirs.iter().zip(&self.deployments).all(|(t, d)| {
                *t == key(d) && Some(&d.upstream_model) == upstream_model_of(other, t.0)
            })
    }

    /// The deployment the policy picks, skipping upstreams already tried for this request and
    /// deployments out of service (ejected, or held by a `Retry-After`, at the address or for
    /// the model). May claim a post-cooldown trial, so call it only to send a request.
    pub fn select(&self, tried: &[usize], affinity: Option<u64>) -> Option<&Deployment> {
        // Members whose trial another request claimed between the pick and the claim.
        let mut claimed_elsewhere: Vec<usize> = Vec::new();
        // Bounded: each turn either returns or rules one more member out.
        for _ in 0..=self.deployments.len() {
            let usable = |i: usize| {
                let d = &self.deployments[i];
                !tried.contains(&d.upstream.id) && d.may_admit() && !claimed_elsewhere.contains(&i)
            };
            let i = self.policy.pick(&self.deployments, affinity, &usable)?;
            if self.deployments[i].admits() {
                return Some(&self.deployments[i]);
            }
            claimed_elsewhere.push(i);
        }
        None
    }

    /// Whether requests to this pool need their affinity key.
    pub fn wants_affinity(&self) -> bool {
        self.policy.wants_affinity()
    }

    /// The deployment at upstream `id` answered with its response head after `ttfb`.
    pub fn observe_ttfb(&self, id: usize, ttfb: std::time::Duration) {
        if let Some(at) = self.position(id) {
            self.policy.observe(at, ttfb);
        }
    }

    /// Whether `select` could find an endpoint now (without claiming any trial).
    pub fn has_candidate(&self, tried: &[usize]) -> bool {
        self.deployments
            .iter()
            .any(|d| !tried.contains(&d.upstream.id) && d.may_admit())
    }

    /// The deployments of this pool, sorted by upstream id.
    pub fn deployments(&self) -> &[Deployment] {
        &self.deployments
    }

    pub fn len(&self) -> usize {
        self.deployments.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty()
    }
}

/// The upstream id `other`'s deployment at upstream `id` is sent.
fn upstream_model_of(other: &[Deployment], id: usize) -> Option<&Arc<str>> {
    other
        .iter()
        .find(|d| d.upstream.id == id)
        .map(|d| &d.upstream_model)
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
    pub endpoint_views: Vec<EndpointView>,
    /// The first discovery round has completed.
    pub ready: bool,
    /// The config's request settings this snapshot was published with.
    pub settings: Arc<RequestSettings>,
}

impl Routes {
    /// `GET /v1/endpoints`: the discovery views with each address's and deployment's health
    /// and requests in flight now.
    pub fn endpoints_json(&self) -> Bytes {
        let data: Vec<serde_json::Value> =
            self.endpoint_views.iter().map(EndpointView::json).collect();
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

/// A health state as `/v1/endpoints` shows it.
fn health_json(h: &Health) -> serde_json::Value {
    serde_json::json!({
        "status": h.status().as_str(),
        "retry_in_ms": u64::try_from(h.retry_in().as_millis()).unwrap_or(u64::MAX),
    })
}

/// One `/v1/endpoints` entry: what discovery saw, and the endpoint's members, whose health
/// and load are read live when the listing is served.
pub struct EndpointView {
    pub endpoint: Arc<Endpoint>,
    /// The endpoint's own fields (name, url, models, discovery status) as of the last round.
    pub view: serde_json::Map<String, serde_json::Value>,
    /// One per address, sorted by address.
    pub members: Vec<MemberView>,
}

/// One address of an endpoint as of the last round.
pub struct MemberView {
    pub upstream: Arc<Upstream>,
    /// Its latest poll succeeded.
    pub polled_ok: bool,
    /// Its discovery status.
    pub discovery: serde_json::Value,
    pub deployments: Vec<DeploymentView>,
}

/// A model served at an address, and its state there.
pub struct DeploymentView {
    pub model: String,
    pub upstream_model: String,
    pub state: Arc<DeploymentState>,
}

impl MemberView {
    /// Polled and in service at the address (a model may still be out on its own).
    pub fn healthy(&self) -> bool {
        self.polled_ok && self.upstream.health.status() == Status::Healthy
    }

    fn json(&self) -> serde_json::Value {
        let u = &self.upstream;
        serde_json::json!({
            "address": u.addr.to_string(),
            "healthy": self.healthy(),
            "health": health_json(&u.health),
            "in_flight": u.in_flight(),
            "discovery": self.discovery,
            "deployments": self.deployments.iter().map(DeploymentView::json).collect::<Vec<_>>(),
        })
    }
}

impl DeploymentView {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "model": self.model,
            "upstream_model": self.upstream_model,
            "health": health_json(&self.state.health),
            "in_flight": self.state.in_flight(),
        })
    }
}

impl EndpointView {
    /// Its gauges for a metrics scrape.
    pub fn gauges(&self) -> EndpointGauges<'_> {
        // A model is up on an endpoint while it is in service at some member.
        let mut models_up: Vec<(&str, bool)> = Vec::new();
        for d in self.members.iter().flat_map(|m| &m.deployments) {
            let up = d.state.health.status() == Status::Healthy;
            match models_up.iter_mut().find(|(m, _)| *m == d.model) {
                Some((_, any)) => *any |= up,
                None => models_up.push((&d.model, up)),
            }
        }
        EndpointGauges {
            endpoint: &self.endpoint.name,
            models_up,
            in_flight: self.members.iter().map(|m| m.upstream.in_flight()).sum(),
            healthy: self.polled_ok() && self.healthy(),
            models: self
                .view
                .get("models")
                .and_then(|m| m.as_array())
                .map_or(0, Vec::len),
        }
    }

    /// Its latest poll succeeded (some member answered).
    fn polled_ok(&self) -> bool {
        self.view.get("healthy").and_then(|v| v.as_bool()) == Some(true)
    }

    /// Some member is polled and in service.
    pub fn healthy(&self) -> bool {
        self.members.iter().any(MemberView::healthy)
    }

    /// The endpoint's entry. For one address, its `address`, `health` and `deployments` are
    /// that address's; for a fleet, `address` and `health` are those of its first member in
    /// service (or its first), `deployments` are every member's and `in_flight` their sum.
    fn json(&self) -> serde_json::Value {
        let mut view = self.view.clone();
        let shown = self
            .members
            .iter()
            .find(|m| m.healthy())
            .or(self.members.first());
        let deployments: Vec<serde_json::Value> = self
            .members
            .iter()
            .flat_map(|m| {
                m.deployments.iter().map(|d| {
                    let mut v = d.json();
                    v["address"] = m.upstream.addr.to_string().into();
                    v
                })
            })
            .collect();
        let in_flight: usize = self.members.iter().map(|m| m.upstream.in_flight()).sum();
        view.insert(
            "healthy".into(),
            (self.polled_ok() && self.healthy()).into(),
        );
        view.insert(
            "address".into(),
            shown.map(|m| m.upstream.addr.to_string()).into(),
        );
        view.insert(
            "health".into(),
            shown.map_or(serde_json::Value::Null, |m| health_json(&m.upstream.health)),
        );
        view.insert("in_flight".into(), in_flight.into());
        view.insert("deployments".into(), deployments.into());
        view.insert(
            "members".into(),
            self.members
                .iter()
                .map(MemberView::json)
                .collect::<Vec<_>>()
                .into(),
        );
        serde_json::Value::Object(view)
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

    /// A deployment of model `m` at 127.0.0.1:`port` (upstream ids ascend with each call).
    fn up(port: u16) -> Deployment {
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
        Deployment {
            upstream: Arc::new(Upstream::new(ep, ([127, 0, 0, 1], port).into())),
            state: Arc::new(DeploymentState::new(Default::default())),
            upstream_model: Arc::from("m"),
        }
    }

    fn round_robin() -> Balancing {
        Balancing {
            default: PolicyName::RoundRobin,
            ..Balancing::default()
        }
    }

    #[test]
    fn round_robin_spreads_and_skips_tried() {
        let (a, b) = (up(1), up(2));
        let (ia, ib) = (a.upstream.id, b.upstream.id);
        let pool = Pool::new("m", vec![b, a], &round_robin());
        let mut counts = [0; 2];
        for _ in 0..10 {
            counts[usize::from(pool.select(&[], None).unwrap().upstream.id == ib)] += 1;
        }
        assert_eq!(counts, [5, 5]);
        for _ in 0..4 {
            assert_eq!(pool.select(&[ia], None).unwrap().upstream.id, ib);
        }
        assert!(pool.select(&[ia, ib], None).is_none());
    }

    #[test]
    fn membership_comparison() {
        let (a, b) = (up(1), up(2));
        let pool = Pool::new("m", vec![a.clone(), b.clone()], &round_robin());
        assert!(pool.same_members(&[b.clone(), a.clone()]));
        assert!(pool.reusable_for(&[b.clone(), a.clone()], PolicyName::RoundRobin));
        assert!(!pool.reusable_for(&[b.clone(), a.clone()], PolicyName::LeastOutstanding));
        assert!(!pool.same_members(std::slice::from_ref(&a)));
        assert!(!pool.same_members(&[a.clone(), up(3)]));
        assert!(
            !pool.same_members(&[
                a.clone(),
                Deployment {
                    state: Arc::new(DeploymentState::new(Default::default())),
                    ..b.clone()
                }
            ]),
            "another deployment (state) on the same upstream"
        );
        let mut renamed = b.clone();
        renamed.upstream_model = "org/m".into();
        assert!(!pool.same_members(&[a, renamed]), "another upstream id");
    }

    #[test]
    fn duplicate_addresses_collapse() {
        let (a, b) = (up(1), up(1));
        let pool = Pool::new("m", vec![a.clone(), b.clone()], &round_robin());
        assert_eq!(pool.len(), 1);
        assert!(pool.same_members(&[a, b]));
    }

    #[test]
    fn a_models_ejection_leaves_the_address_to_other_models() {
        let a = up(1);
        let other_model = Deployment {
            state: Arc::new(DeploymentState::new(Default::default())),
            ..a.clone()
        };
        let pool_a = Pool::new("a", vec![a.clone()], &round_robin());
        let pool_b = Pool::new("b", vec![other_model], &round_robin());
        a.state.health.eject();
        assert!(pool_a.select(&[], None).is_none());
        assert!(!pool_a.has_candidate(&[]));
        assert!(
            pool_b.select(&[], None).is_some(),
            "same address, other model"
        );
        a.upstream.health.eject();
        assert!(pool_b.select(&[], None).is_none(), "the address is out");
    }
}
