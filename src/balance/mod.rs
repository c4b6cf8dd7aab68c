//! Balancing policies: which endpoint of a model's pool takes a request. LLM requests last
//! from milliseconds to minutes, so a policy that ignores load piles work onto slow servers.
//!
//! A policy is a small type behind [`Policy`], chosen per model (`balancing:` in the config)
//! and built with the model's pool. The pool keeps it across discovery rounds while the pool's
//! members do not change, so its state (a rotation's position) survives them.

pub mod affinity_key;
mod latency;
mod least_outstanding;
mod prefix_affinity;
mod rotation;

use std::collections::{BTreeSet, HashMap};

use futures::FutureExt;
use pingora::lb::discovery::Static;
use pingora::lb::selection::{BackendIter, BackendSelection};
use pingora::lb::{Backend, Backends, LoadBalancer};
use serde::Deserialize;

use crate::deployment::Deployment;

pub use affinity_key::KeySource;
pub use latency::Latency;
pub use least_outstanding::LeastOutstanding;
pub use prefix_affinity::PrefixAffinity;
pub use rotation::Rotation;

/// A policy's name, as the config writes it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Each endpoint in turn.
    RoundRobin,
    /// In turn, each endpoint as often as its `weight`.
    Weighted,
    /// The less loaded of two endpoints picked at random (requests in flight).
    #[default]
    LeastOutstanding,
    /// The faster of two endpoints picked at random (average time to first byte).
    Latency,
    /// The endpoint a conversation's key hashes to, within a load bound.
    PrefixAffinity,
}

/// `balancing.prefix_affinity`: its key and load bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinityOptions {
    pub key: KeySource,
    /// An endpoint takes a keyed request while under `(1 + epsilon)` x the pool's mean load.
    pub epsilon: f64,
}

impl Default for AffinityOptions {
    fn default() -> Self {
        AffinityOptions {
            key: KeySource::Auto,
            epsilon: 0.25,
        }
    }
}

/// Which policy each model uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Balancing {
    pub default: PolicyName,
    /// Per-model overrides.
    pub models: HashMap<String, PolicyName>,
    pub affinity: AffinityOptions,
}

impl Balancing {
    pub fn policy_for(&self, model: &str) -> PolicyName {
        self.models.get(model).copied().unwrap_or(self.default)
    }
}

/// Chooses the member of a pool that takes a request.
pub trait Policy: Send + Sync {
    /// The member (an index into `members`, which are sorted by endpoint index) to send a
    /// request to, among those `usable` accepts; `None` when it accepts none. `usable` has no
    /// side effects: the pool claims the chosen member afterwards. `affinity`: the request's
    /// affinity key, when the policy wants one.
    fn pick(
        &self,
        members: &[Deployment],
        affinity: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize>;

    /// Whether requests need their affinity key worked out for this policy.
    fn wants_affinity(&self) -> bool {
        false
    }

    /// A member answered a request with its response head after `ttfb`.
    fn observe(&self, _member: usize, _ttfb: std::time::Duration) {}
}

/// The policy `name` for these members.
pub fn build(name: PolicyName, members: &[Deployment], options: &Balancing) -> Box<dyn Policy> {
    match name {
        PolicyName::PrefixAffinity => {
            Box::new(PrefixAffinity::new(members, options.affinity.epsilon))
        }
        PolicyName::RoundRobin => Box::new(Rotation::new(members, false)),
        PolicyName::Weighted => Box::new(Rotation::new(members, true)),
        PolicyName::LeastOutstanding => Box::new(LeastOutstanding),
        PolicyName::Latency => Box::new(Latency::new(members.len())),
    }
}

/// A Pingora balancer over `members` with these weights. Each backend carries its member's
/// position, so a pick needs no search by address. Returns it with the sum of the weights.
fn pingora_balancer<S>(
    members: &[Deployment],
    weight: impl Fn(&Deployment) -> usize,
) -> (LoadBalancer<S>, usize)
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let backends: BTreeSet<Backend> = members
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut b = Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(d.upstream.addr),
                weight: weight(d),
                ext: Default::default(),
            };
            b.ext.insert(i);
            b
        })
        .collect();
    let total = backends.iter().map(|b| b.weight).sum::<usize>().max(1);
    let lb = LoadBalancer::from_backends(Backends::new(Static::new(backends)));
    // A static member list: the update neither waits nor fails.
    let _ = lb.update().now_or_never();
    (lb, total)
}

/// The first member `lb` yields for `key` that `accept` takes, within `steps`.
fn pingora_pick<S>(
    lb: &LoadBalancer<S>,
    key: &[u8],
    steps: usize,
    accept: &dyn Fn(usize) -> bool,
) -> Option<usize>
where
    S: BackendSelection + 'static,
    S::Iter: BackendIter,
{
    let b = lb.select_with(key, steps, |b, _| {
        b.ext.get::<usize>().is_some_and(|&i| accept(i))
    })?;
    b.ext.get::<usize>().copied()
}

/// Members for unit tests: deployments of model `m` on `http://127.0.0.1:<port>` with these
/// weights, in order (their upstream ids ascending).
#[cfg(test)]
pub(crate) fn test_members(weights: &[usize]) -> Vec<Deployment> {
    use crate::deployment::DeploymentState;
    use crate::endpoint::{Endpoint, EndpointKind};
    use crate::upstream::Upstream;
    use std::sync::Arc;
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let port = 9000 + i as u16;
            let ep = Endpoint::new(
                &format!("http://127.0.0.1:{port}"),
                EndpointKind::Openai,
                None,
                None,
                None,
            )
            .unwrap()
            .with_weight(w);
            Deployment {
                upstream: Arc::new(Upstream::new(Arc::new(ep), ([127, 0, 0, 1], port).into())),
                state: Arc::new(DeploymentState::new(Default::default())),
                upstream_model: Arc::from("m"),
            }
        })
        .collect()
}
