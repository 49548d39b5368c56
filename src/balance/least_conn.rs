//! gobetween's `leastconn`: the candidate with the fewest active sessions.

use std::sync::atomic::Ordering;

use super::{Candidates, LeastLoaded};

/// Fewest active sessions; ties (all idle is common) rotate instead of piling onto the first.
#[derive(Debug, Default)]
pub struct LeastConn {
    least: LeastLoaded,
}

impl LeastConn {
    pub fn select(&self, candidates: &Candidates<'_>) -> Option<usize> {
        self.least.select(candidates, |backend| {
            backend.state.stats.active.load(Ordering::Relaxed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn picks_the_least_loaded_and_rotates_ties() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]);
        let least_conn = LeastConn::default();
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        let ties: Vec<_> = (0..3)
            .map(|_| least_conn.select(&candidates).unwrap())
            .collect();
        assert_eq!(ties, [0, 1, 2]);

        let _slots: Vec<_> = [0, 0, 2]
            .iter()
            .map(|&i| backends[i].try_acquire())
            .collect();
        for _ in 0..5 {
            assert_eq!(least_conn.select(&candidates), Some(1));
        }
    }
}
