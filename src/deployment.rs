//! A deployment: one model on one server at one address, served under a public name. The unit
//! of balancing and of model health: one model's 429s or 5xx take out only its deployment,
//! while what belongs to the address (connect failures, resets, a failed probe) stays on the
//! endpoint's health and takes out every deployment there.

use std::sync::Arc;

use crate::health::Health;
use crate::upstream::Upstream;

/// A model served at an upstream address.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    /// This model's health on this upstream. Held by discovery across rounds while the model
    /// stays served there, so ejections survive new snapshots.
    pub health: Arc<Health>,
    /// The id the upstream knows the model by: a body that names the model otherwise (a
    /// public name, an alias) is rewritten to it.
    pub upstream_model: Option<Arc<str>>,
}

impl Deployment {
    /// Whether a request may go here now without claiming a trial: the address and the model
    /// both in service.
    pub fn may_admit(&self) -> bool {
        self.upstream.endpoint.health.may_admit() && self.health.may_admit()
    }

    /// Claim a place for a request: the address first (its trial, after a cooldown), then
    /// the model's.
    pub fn admits(&self) -> bool {
        self.upstream.endpoint.health.admits() && self.health.admits()
    }
}
