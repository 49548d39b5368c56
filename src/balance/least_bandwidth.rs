//! gobetween's `leastbandwidth`: the candidate moving the fewest bytes per second now.

use super::{Candidates, LeastLoaded};

/// Lowest `rx_second + tx_second`, as sampled once a second by the statistics task; ties rotate.
#[derive(Debug, Default)]
pub struct LeastBandwidth {
    least: LeastLoaded,
}

impl LeastBandwidth {
    pub fn select(&self, candidates: &Candidates<'_>) -> Option<usize> {
        self.least.select(candidates, |backend| {
            backend.state.stats.traffic.bytes_per_second()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::balance::Tried;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn picks_the_quietest_backend() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]);
        for (backend, bytes) in backends.iter().zip([5_000u64, 100, 9_000]) {
            backend
                .state
                .stats
                .traffic
                .tx
                .store(bytes, Ordering::Relaxed);
            backend.state.stats.traffic.sample_rates();
        }
        let tried = Tried::new(backends.len());
        let candidates = Candidates::new(&backends, &tried, false);
        for _ in 0..5 {
            assert_eq!(LeastBandwidth::default().select(&candidates), Some(1));
        }
    }
}
