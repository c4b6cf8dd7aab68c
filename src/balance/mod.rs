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

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use crate::upstream::Upstream;

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
        members: &[Arc<Upstream>],
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
pub fn build(name: PolicyName, members: &[Arc<Upstream>], options: &Balancing) -> Box<dyn Policy> {
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

/// Members for unit tests: endpoints `http://127.0.0.1:<port>` with these weights.
#[cfg(test)]
pub(crate) fn test_members(weights: &[usize]) -> Vec<Arc<Upstream>> {
    use crate::endpoint::{Endpoint, EndpointKind};
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
            Arc::new(Upstream::new(
                Arc::new(ep),
                i,
                ([127, 0, 0, 1], port).into(),
            ))
        })
        .collect()
}
