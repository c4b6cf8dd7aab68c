//! `round_robin` and `weighted`: each endpoint in turn, each as often as its weight for
//! `weighted`. Pingora's weighted round robin does the turning.

use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;

use super::{pingora_balancer, pingora_pick, Policy};
use crate::deployment::Deployment;

pub struct Rotation {
    lb: LoadBalancer<RoundRobin>,
    /// Steps that visit every member at least once: the sum of the weights.
    full_turn: usize,
}

impl Rotation {
    pub fn new(members: &[Deployment], weighted: bool) -> Rotation {
        let (lb, full_turn) = pingora_balancer(members, |d| {
            if weighted {
                d.upstream.endpoint.weight
            } else {
                1
            }
        });
        Rotation { lb, full_turn }
    }
}

impl Policy for Rotation {
    fn pick(
        &self,
        _members: &[Deployment],
        _affinity: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        pingora_pick(&self.lb, b"", self.full_turn * 2, usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_members;

    fn counts(p: &dyn Policy, members: &[Deployment], n: usize) -> Vec<usize> {
        let mut c = vec![0; members.len()];
        for _ in 0..n {
            c[p.pick(members, None, &|_| true).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_spreads_evenly_and_ignores_weights() {
        let m = test_members(&[1, 5, 1]);
        assert_eq!(counts(&Rotation::new(&m, false), &m, 300), [100, 100, 100]);
    }

    #[test]
    fn weighted_follows_the_weights() {
        let m = test_members(&[1, 3]);
        assert_eq!(counts(&Rotation::new(&m, true), &m, 400), [100, 300]);
    }

    #[test]
    fn skips_members_that_are_not_usable() {
        let m = test_members(&[1, 1, 1]);
        let p = Rotation::new(&m, true);
        for _ in 0..10 {
            assert_eq!(p.pick(&m, None, &|i| i == 2), Some(2));
        }
        assert_eq!(p.pick(&m, None, &|_| false), None);
    }
}
