//! `least_outstanding`: the power of two choices. Two usable members are drawn at random and
//! the one with fewer requests in flight takes the request (a tie goes to either, at random).
//! In flight means until the response truly ends, streams included, and counts the requests
//! of the deployment (this model at that address): behind one address an OCF head or a hosted
//! API serves each model on other machines, so another model's load says nothing about this
//! one's. Two random choices
//! rather than the global minimum: no scan, and no herd of requests all sent to the one
//! endpoint that looked idlest a moment ago.

use super::Policy;
use crate::deployment::Deployment;

pub struct LeastOutstanding;

impl Policy for LeastOutstanding {
    fn pick(
        &self,
        members: &[Deployment],
        _affinity: Option<u64>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        cheaper_of_two(members.len(), usable, |m| members[m].in_flight() as f64)
    }
}

/// The power of two choices: of two usable members drawn at random, the one of lower `cost`
/// (either, at random, on a tie); the only one when only one is usable.
pub(super) fn cheaper_of_two(
    n: usize,
    usable: &dyn Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let (a, b) = two_at_random(n, usable)?;
    let Some(b) = b else {
        return Some(a);
    };
    let (ca, cb) = (cost(a), cost(b));
    Some(if ca < cb || (ca == cb && fastrand::bool()) {
        a
    } else {
        b
    })
}

/// Two distinct indexes below `n` that `usable` accepts, drawn uniformly (reservoir sampling:
/// one pass, no allocation); the second is `None` when only one is usable.
pub(super) fn two_at_random(
    n: usize,
    usable: &dyn Fn(usize) -> bool,
) -> Option<(usize, Option<usize>)> {
    let mut picked: [Option<usize>; 2] = [None, None];
    let mut seen = 0;
    for i in (0..n).filter(|&i| usable(i)) {
        seen += 1;
        if seen <= 2 {
            picked[seen - 1] = Some(i);
        } else {
            let slot = fastrand::usize(..seen);
            if slot < 2 {
                picked[slot] = Some(i);
            }
        }
    }
    Some((picked[0]?, picked[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::test_members;

    #[test]
    fn the_less_loaded_of_two_wins() {
        let m = test_members(&[1, 1]);
        let _busy: Vec<_> = (0..3).map(|_| m[0].start_request()).collect();
        for _ in 0..50 {
            assert_eq!(LeastOutstanding.pick(&m, None, &|_| true), Some(1));
        }
    }

    #[test]
    fn ties_are_broken_at_random() {
        let m = test_members(&[1, 1]);
        let mut c = [0; 2];
        for _ in 0..2000 {
            c[LeastOutstanding.pick(&m, None, &|_| true).unwrap()] += 1;
        }
        assert!(c.iter().all(|&n| n > 800), "{c:?}");
    }

    #[test]
    fn a_loaded_member_still_wins_against_a_busier_one_and_loses_to_idle_ones() {
        // Loads 0, 5, 10: the busiest is never chosen (it loses every pair it is drawn in),
        // and the idle one wins every pair it is in.
        let m = test_members(&[1, 1, 1]);
        let _load: Vec<_> = (0..5)
            .map(|_| m[1].start_request())
            .chain((0..10).map(|_| m[2].start_request()))
            .collect();
        let mut c = [0; 3];
        for _ in 0..3000 {
            c[LeastOutstanding.pick(&m, None, &|_| true).unwrap()] += 1;
        }
        assert_eq!(c[2], 0, "{c:?}");
        assert!(c[0] > 1800 && c[1] > 800, "{c:?}");
    }

    #[test]
    fn only_usable_members_and_a_lone_one() {
        let m = test_members(&[1, 1, 1]);
        for _ in 0..20 {
            assert_eq!(LeastOutstanding.pick(&m, None, &|i| i == 1), Some(1));
        }
        assert_eq!(LeastOutstanding.pick(&m, None, &|_| false), None);
        // Uniform draws: each of 3 members is in a pair about 2/3 of the time.
        let mut drawn = [0; 3];
        for _ in 0..3000 {
            let (a, b) = two_at_random(3, &|_| true).unwrap();
            drawn[a] += 1;
            drawn[b.unwrap()] += 1;
            assert_ne!(Some(a), b);
        }
        assert!(
            drawn.iter().all(|&n| (1800..2200).contains(&n)),
            "{drawn:?}"
        );
    }
}
