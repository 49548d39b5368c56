//! gobetween's `roundrobin`: rotate over the candidates in `host:port` order.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Candidates;

/// Takes the next candidate in rotation. The rotation counts picks, not backends, so a backend
/// going down does not make its neighbour take a double share.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn select(&self, candidates: &Candidates<'_>) -> Option<usize> {
        let count = candidates.iter().count();
        if count == 0 {
            return None;
        }
        // Relaxed: the counter only spreads picks; no other memory depends on its order.
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        candidates.nth_or_last(turn % count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn rotates_evenly_and_skips_down_backends() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]);
        let round_robin = RoundRobin::default();
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        let picks: Vec<_> = (0..6)
            .map(|_| round_robin.select(&candidates).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);

        backends[1].state.set_health(Health::Down);
        let mut counts = [0; 3];
        for _ in 0..10 {
            counts[round_robin.select(&candidates).unwrap()] += 1;
        }
        assert_eq!(counts, [5, 0, 5]);
    }
}
