//! A deployment: one model on one server at one address, served under a public name. The unit
//! of balancing and of model health: one model's 429s or 5xx take out only its deployment,
//! while what belongs to the address (connect failures, resets, a failed probe) stays on the
//! upstream's health and takes out every deployment there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::health::{Health, HealthPolicy};
use crate::upstream::Upstream;

/// What a deployment keeps across routing snapshots: held by discovery while the model stays
/// served at that address, so an ejection and the load outlive the snapshot they began in.
#[derive(Debug)]
pub struct DeploymentState {
    /// This model's health at this address.
    pub health: Health,
    /// Requests for this model in flight at this address (see [`InFlight`]).
    pub(crate) in_flight: AtomicUsize,
}

impl DeploymentState {
    pub fn new(policy: HealthPolicy) -> Self {
        DeploymentState {
            health: Health::new(policy),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// A model served at an upstream address.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    pub state: Arc<DeploymentState>,
    /// The id the upstream knows the model by: a body that names the model otherwise (a
    /// public name, an alias) is rewritten to it.
    pub upstream_model: Arc<str>,
}

impl Deployment {
    /// Whether a request may go here now without claiming a trial: the address and the model
    /// both in service.
    pub fn may_admit(&self) -> bool {
        self.upstream.health.may_admit() && self.state.health.may_admit()
    }

    /// Claim a place for a request: the address first (its trial, after a cooldown), then
    /// the model's.
    pub fn admits(&self) -> bool {
        self.upstream.health.admits() && self.state.health.admits()
    }

    /// Requests for this model in flight at this address: what the balancing policies weigh.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight()
    }

    /// Count a request as in flight here until the guard is dropped.
    pub fn start_request(&self) -> InFlight {
        InFlight::start(&self.upstream, Some(&self.state))
    }
}

/// One request in flight to an upstream (and its deployment, when it is for a model). Held by
/// the request's context, so it lasts until the response truly ends (last byte, error or
/// client disconnect), and a retry's new guard replaces the failed attempt's. Counting by
/// drop keeps the counts exact and never negative.
#[derive(Debug)]
pub struct InFlight {
    upstream: Arc<Upstream>,
    deployment: Option<Arc<DeploymentState>>,
}

impl InFlight {
    /// Count a request as in flight at `upstream` (and on `deployment`) until the guard is
    /// dropped.
    pub fn start(upstream: &Arc<Upstream>, deployment: Option<&Arc<DeploymentState>>) -> Self {
        upstream.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(d) = deployment {
            d.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        InFlight {
            upstream: upstream.clone(),
            deployment: deployment.cloned(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.upstream.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(d) = &self.deployment {
            d.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{Endpoint, EndpointKind};

    #[test]
    fn in_flight_counts_live_guards_per_address_and_deployment() {
        let ep = Endpoint::new("http://h:1", EndpointKind::Openai, None, None, None).unwrap();
        let u = Arc::new(Upstream::new(Arc::new(ep), ([127, 0, 0, 1], 1).into()));
        let d = Arc::new(DeploymentState::new(Default::default()));
        let a = InFlight::start(&u, Some(&d));
        let b = InFlight::start(&u, None);
        assert_eq!((u.in_flight(), d.in_flight()), (2, 1));
        drop(a);
        assert_eq!((u.in_flight(), d.in_flight()), (1, 0));
        drop(b);
        assert_eq!(u.in_flight(), 0);
    }
}
