//! `prefix_affinity`: consistent hashing with bounded load on the request's affinity key
//! (see `affinity_key`), so every turn of a conversation reaches the endpoint that holds its
//! prefix in its KV cache. The key picks a point on a ring (Pingora's ketama hashing); the
//! first endpoint after it takes the request, unless it is out of service or over
//! `(1 + epsilon)` times the pool's mean load (requests in flight, this one counted), in which
//! case the next endpoint on the ring is asked, and so on. The bound keeps one hot
//! conversation from piling onto one server; the ring keeps the detour stable. A request with
//! no key goes to the least loaded of two random endpoints.

use pingora::lb::selection::Consistent;
use pingora::lb::LoadBalancer;

use super::{pingora_balancer, pingora_pick, LeastOutstanding, Policy};
use crate::deployment::Deployment;

pub struct PrefixAffinity {
    ring: LoadBalancer<Consistent>,
    epsilon: f64,
    /// Ring steps that visit every member: each has many points on the ring.
    full_turn: usize,
}

impl PrefixAffinity {
    pub fn new(members: &[Deployment], epsilon: f64) -> PrefixAffinity {
        let (ring, _) = pingora_balancer(members, |_| 1);
        PrefixAffinity {
            ring,
            epsilon,
            full_turn: 256 * members.len().max(1),
        }
    }

    /// The first member on the ring from `key` that `accept` takes.
    fn walk(&self, key: u64, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        pingora_pick(&self.ring, &key.to_le_bytes(), self.full_turn, accept)
    }

    fn pick_with_loads(
        &self,
        n: usize,
        key: u64,
        usable: &dyn Fn(usize) -> bool,
        load: &dyn Fn(usize) -> usize,
    ) -> Option<usize> {
        let (count, total) = (0..n)
            .filter(|&i| usable(i))
            .fold((0usize, 0usize), |(c, t), i| (c + 1, t + load(i)));
        if count == 0 {
            return None;
        }
        // Bounded loads: no member above (1 + epsilon) x the mean, this request included.
        let bound = ((1.0 + self.epsilon) * (total + 1) as f64 / count as f64).ceil() as usize;
        self.walk(key, &|i| usable(i) && load(i) < bound)
            .or_else(|| self.walk(key, usable))
    }
}

impl Policy for PrefixAffinity {
    fn pick(
        &self,
        members: &[Deployment],
        affinity: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let Some(key) = affinity else {
            return LeastOutstanding.pick(members, None, usable);
        };
        let load = |i: usize| members[i].in_flight();
        self.pick_with_loads(members.len(), key, usable, &load)
    }

    fn wants_affinity(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_members;

    #[test]
    fn a_key_stays_on_its_endpoint_and_keys_spread() {
        let m = test_members(&[1, 1, 1, 1]);
        let p = PrefixAffinity::new(&m, 0.25);
        let idle = |_: usize| 0;
        let mut homes = [0; 4];
        for key in 0..400u64 {
            let home = p.pick_with_loads(4, key, &|_| true, &idle).unwrap();
            for _ in 0..3 {
                assert_eq!(p.pick_with_loads(4, key, &|_| true, &idle), Some(home));
            }
            homes[home] += 1;
        }
        assert!(homes.iter().all(|&h| h > 40), "{homes:?}");
    }

    #[test]
    fn an_overloaded_or_unusable_home_sends_the_key_to_the_next_on_the_ring() {
        let m = test_members(&[1, 1, 1]);
        let p = PrefixAffinity::new(&m, 0.25);
        let key = 42;
        let home = p.pick_with_loads(3, key, &|_| true, &|_| 0).unwrap();
        // Out of service: the next one, the same each time.
        let next = p.pick_with_loads(3, key, &|i| i != home, &|_| 0).unwrap();
        assert_ne!(next, home);
        assert_eq!(
            p.pick_with_loads(3, key, &|i| i != home, &|_| 0),
            Some(next)
        );
        // Home at 4 in flight, the others idle: the mean with this request is 5/3, the bound
        // ceil(1.25 x 5/3) = 3, so home is skipped for the same next one.
        let busy = |i: usize| if i == home { 4 } else { 0 };
        assert_eq!(p.pick_with_loads(3, key, &|_| true, &busy), Some(next));
        // Within the bound it stays home: 2 in flight each, mean with this request 7/3, bound
        // ceil(1.25 x 7/3) = 3.
        let some = |_: usize| 2;
        assert_eq!(p.pick_with_loads(3, key, &|_| true, &some), Some(home));
        assert_eq!(p.pick_with_loads(3, key, &|_| false, &|_| 0), None);
    }

    #[test]
    fn no_member_goes_over_the_bound_while_one_key_floods_the_pool() {
        // Thirty requests of one key, each staying in flight: every member stays within
        // ceil(1.25 x mean) at every step.
        let m = test_members(&[1, 1, 1]);
        let p = PrefixAffinity::new(&m, 0.25);
        let loads = std::cell::RefCell::new([0usize; 3]);
        for sent in 0..30usize {
            let at = {
                let l = loads.borrow();
                p.pick_with_loads(3, 7, &|_| true, &|i| l[i]).unwrap()
            };
            let mut l = loads.borrow_mut();
            l[at] += 1;
            let bound = (1.25 * (sent + 1) as f64 / 3.0).ceil() as usize;
            assert!(l.iter().all(|&x| x <= bound), "{l:?} over {bound}");
        }
    }
}
