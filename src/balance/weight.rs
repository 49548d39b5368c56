//! gobetween's default `weight`: the lowest priority number wins, then weighted random.
//!
//! Priority groups make active/backup pools: backups (higher numbers) get traffic only when no
//! backend of a lower number is a candidate.

use super::Candidates;

/// Weighted random choice within the best priority group.
///
/// As in gobetween 0.8, a weight of 0 is allowed: such a backend is never picked while a
/// backend of the same priority has a weight, and a group whose weights are all 0 is picked
/// uniformly (RFC 2782's reading of zero weights).
#[derive(Debug, Default)]
pub struct Weight;

impl Weight {
    pub fn select(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let mut best_priority = u32::MAX;
        let mut total_weight = 0u64;
        let mut group_size = 0usize;
        for (_, backend) in candidates.iter() {
            let (priority, weight) = (backend.spec.priority, u64::from(backend.spec.weight));
            if priority < best_priority {
                best_priority = priority;
                total_weight = weight;
                group_size = 1;
            } else if priority == best_priority {
                total_weight += weight;
                group_size += 1;
            }
        }
        if group_size == 0 {
            return None;
        }
        // All zero: every member counts as weight 1.
        let uniform = total_weight == 0;
        let total = if uniform {
            group_size as u64
        } else {
            total_weight
        };
        let mut ticket = fastrand::u64(..total);
        let mut last = None;
        for (index, backend) in candidates.iter() {
            if backend.spec.priority != best_priority {
                continue;
            }
            let weight = if uniform {
                1
            } else {
                u64::from(backend.spec.weight)
            };
            if ticket < weight {
                return Some(index);
            }
            ticket -= weight;
            if weight > 0 {
                last = Some(index);
            }
        }
        // A backend left the candidates between the two passes: fall back to the last one seen.
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn picks_follow_weights_within_the_best_priority() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 3, 1), spec(3, 100, 2)]);
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        let mut counts = [0u32; 3];
        for _ in 0..4000 {
            counts[Weight.select(&candidates).unwrap()] += 1;
        }
        assert_eq!(
            counts[2], 0,
            "the backup group must get nothing: {counts:?}"
        );
        // Expected 1000 vs 3000; allow a wide margin for randomness.
        assert!((700..1300).contains(&counts[0]), "{counts:?}");
        assert!((2700..3300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn backup_group_takes_over_when_the_primaries_are_down() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 2)]);
        backends[0].state.set_health(Health::Down);
        backends[1].state.set_health(Health::Down);
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        for _ in 0..50 {
            assert_eq!(Weight.select(&candidates), Some(2));
        }
    }

    #[test]
    fn backup_group_takes_over_when_the_primaries_were_tried() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 2)]);
        let mut tried = Tried::new(backends.len());
        tried.insert(0);
        let candidates = Candidates::new(&backends, &tried, false);
        assert_eq!(Weight.select(&candidates), Some(1));
    }

    #[test]
    fn zero_weight_is_never_picked_beside_a_weighted_peer() {
        let backends = pool(&[spec(1, 0, 1), spec(2, 1, 1), spec(3, 0, 1), spec(4, 5, 2)]);
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        for _ in 0..500 {
            assert_eq!(Weight.select(&candidates), Some(1));
        }
    }

    #[test]
    fn an_all_zero_group_is_picked_uniformly() {
        let backends = pool(&[spec(1, 0, 1), spec(2, 0, 1), spec(3, 7, 2)]);
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        let mut counts = [0u32; 3];
        for _ in 0..2000 {
            counts[Weight.select(&candidates).unwrap()] += 1;
        }
        assert_eq!(
            counts[2], 0,
            "the backup group must get nothing: {counts:?}"
        );
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }
}
