//! Balancing algorithms: which backend a new client connection goes to.
//!
//! gobetween's `balance` names are one [`BalanceKind`]; each algorithm is a struct in its own
//! file, wrapped in the closed [`Balancer`] enum. A pick sees the pool through [`Candidates`],
//! which hides backends that are down, drained, full or already tried by this connection, so
//! retrying on another backend is just another pick.

mod ip_hash;
mod ip_hash1;
mod least_bandwidth;
mod least_conn;
mod round_robin;
mod weight;

use std::net::IpAddr;
use std::sync::Arc;

use crate::backend::Backend;
use crate::config::BalanceKind;

pub use ip_hash::{ClientIpForm, IpHash};
pub use ip_hash1::IpHash1;
pub use least_bandwidth::LeastBandwidth;
pub use least_conn::LeastConn;
pub use round_robin::RoundRobin;
pub use weight::Weight;

/// The balancer of one pool: one variant per algorithm, chosen by the server's `balance` key.
///
/// `select` only reads atomics (health, active counts, a rotation counter): it never locks, so
/// every accept task can pick concurrently.
#[derive(Debug)]
pub enum Balancer {
    Weight(Weight),
    RoundRobin(RoundRobin),
    LeastConn(LeastConn),
    LeastBandwidth(LeastBandwidth),
    IpHash(IpHash),
    IpHash1(IpHash1),
}

impl Balancer {
    /// Builds the algorithm for a pool; `form` is how the hashes see a client address.
    pub fn new(kind: BalanceKind, form: ClientIpForm) -> Self {
        match kind {
            BalanceKind::Weight => Self::Weight(Weight),
            BalanceKind::RoundRobin => Self::RoundRobin(RoundRobin::default()),
            BalanceKind::LeastConn => Self::LeastConn(LeastConn::default()),
            BalanceKind::LeastBandwidth => Self::LeastBandwidth(LeastBandwidth::default()),
            BalanceKind::IpHash => Self::IpHash(IpHash::new(form)),
            BalanceKind::IpHash1 => Self::IpHash1(IpHash1::new(form)),
        }
    }

    /// Picks one of `candidates` for a connection from `client`; `None` when there is none.
    pub fn select(&self, candidates: &Candidates<'_>, client: IpAddr) -> Option<usize> {
        match self {
            Self::Weight(weight) => weight.select(candidates),
            Self::RoundRobin(round_robin) => round_robin.select(candidates),
            Self::LeastConn(least_conn) => least_conn.select(candidates),
            Self::LeastBandwidth(least_bandwidth) => least_bandwidth.select(candidates),
            Self::IpHash(ip_hash) => ip_hash.select(candidates, client),
            Self::IpHash1(ip_hash1) => ip_hash1.select(candidates, client),
        }
    }
}

/// The backends a pick may choose from: not yet tried by this connection, taking new sessions,
/// below their connection limit, and healthy unless every backend is down.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    backends: &'a [Arc<Backend>],
    tried: &'a Tried,
    ignore_health: bool,
}

impl<'a> Candidates<'a> {
    /// `ignore_health` is the last resort when no backend passes its checks: a check failing
    /// under load must not refuse every client.
    pub fn new(backends: &'a [Arc<Backend>], tried: &'a Tried, ignore_health: bool) -> Self {
        Self {
            backends,
            tried,
            ignore_health,
        }
    }

    pub fn is_candidate(&self, index: usize) -> bool {
        let backend = &self.backends[index];
        !self.tried.contains(index)
            && backend.accepts_new_sessions()
            && backend.has_capacity()
            && (self.ignore_health || backend.is_healthy())
    }

    /// The candidates with their pool index, in pool order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &'a Arc<Backend>)> + '_ {
        self.iter_from(0)
    }

    /// The candidates in pool order starting at `start` and wrapping around.
    fn iter_from(&self, start: usize) -> impl Iterator<Item = (usize, &'a Arc<Backend>)> + '_ {
        let len = self.backends.len();
        let start = if len == 0 { 0 } else { start % len };
        (start..len)
            .chain(0..start)
            .filter(|&index| self.is_candidate(index))
            .map(|index| (index, &self.backends[index]))
    }

    /// The `n`th candidate in pool order, or the last one when the set shrank since it was
    /// counted (health flips concurrently with a pick).
    fn nth_or_last(&self, n: usize) -> Option<usize> {
        let mut last = None;
        for (position, (index, _)) in self.iter().enumerate() {
            if position == n {
                return Some(index);
            }
            last = Some(index);
        }
        last
    }
}

/// The "least" algorithms' shared pick: the candidate with the smallest load, scanning from a
/// position that rotates with every pick so that ties (all idle is common) spread over the
/// candidates instead of piling onto the first.
#[derive(Debug, Default)]
pub struct LeastLoaded {
    next_start: std::sync::atomic::AtomicUsize,
}

impl LeastLoaded {
    fn select(&self, candidates: &Candidates<'_>, load: impl Fn(&Backend) -> u64) -> Option<usize> {
        // Relaxed: the counter only spreads ties; no other memory depends on its order.
        let start = self
            .next_start
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        candidates
            .iter_from(start)
            .min_by_key(|(_, backend)| load(backend))
            .map(|(index, _)| index)
    }
}

/// The backends one client connection already tried: each is tried at most once.
#[derive(Debug, Clone)]
pub enum Tried {
    /// Pools of up to 128 backends: one bit each, no allocation. Two words rather than a
    /// `u128`, whose 16-byte alignment would pad every session's future around it.
    Small([u64; 2]),
    Large(Vec<bool>),
}

impl Tried {
    pub fn new(pool_len: usize) -> Self {
        if pool_len <= 128 {
            Self::Small([0; 2])
        } else {
            Self::Large(vec![false; pool_len])
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        match self {
            Self::Small(words) => index < 128 && words[index / 64] & (1 << (index % 64)) != 0,
            Self::Large(flags) => flags.get(index).copied().unwrap_or(false),
        }
    }

    pub fn insert(&mut self, index: usize) {
        match self {
            Self::Small(words) if index < 128 => words[index / 64] |= 1 << (index % 64),
            Self::Small(_) => {}
            Self::Large(flags) => {
                if let Some(flag) = flags.get_mut(index) {
                    *flag = true;
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::BackendSpec;

    /// A backend spec `10.0.0.N:6443` with a weight and priority.
    pub fn spec(n: u8, weight: u32, priority: u32) -> BackendSpec {
        BackendSpec {
            host: format!("10.0.0.{n}"),
            port: 6443,
            weight,
            priority,
            max_connections: None,
            sni: None,
        }
    }

    pub fn pool(specs: &[BackendSpec]) -> Vec<Arc<Backend>> {
        specs
            .iter()
            .map(|spec| Arc::new(Backend::new(spec.clone(), Arc::default())))
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for name in BalanceKind::NAMES {
            assert_eq!(name.parse::<BalanceKind>().unwrap().to_string(), name);
        }
        let error = "roundrobbin".parse::<BalanceKind>().unwrap_err();
        assert_eq!(
            error.to_string(),
            "unknown balance \"roundrobbin\"; expected one of weight, roundrobin, leastconn, \
             leastbandwidth, iphash, iphash1"
        );
    }

    #[test]
    fn tried_sets_small_and_large() {
        for len in [3, 128, 300] {
            let mut tried = Tried::new(len);
            assert!(!tried.contains(len - 1));
            tried.insert(len - 1);
            tried.insert(0);
            assert!(tried.contains(len - 1) && tried.contains(0) && !tried.contains(1));
        }
        // Either side of the word boundary of a small set.
        let mut tried = Tried::new(128);
        tried.insert(64);
        assert!(tried.contains(64) && !tried.contains(63) && !tried.contains(0));
        tried.insert(63);
        assert!(tried.contains(63) && !tried.contains(65));
    }

    #[test]
    fn a_candidate_needs_health_admin_and_capacity() {
        let mut limited = spec(1, 1, 1);
        limited.max_connections = Some(1);
        let backends = pool(&[limited]);
        let tried = Tried::new(1);
        let candidates = Candidates::new(&backends, &tried, false);
        let state = &backends[0].state;
        assert!(candidates.is_candidate(0));
        state.set_health(crate::backend::Health::Down);
        assert!(!candidates.is_candidate(0));
        state.set_health(crate::backend::Health::Up);
        state.set_admin(crate::backend::Admin::Draining);
        assert!(!candidates.is_candidate(0));
        state.set_admin(crate::backend::Admin::Enabled);
        let _slot = backends[0].try_acquire();
        assert!(!candidates.is_candidate(0), "full at max_connections");
    }

    #[test]
    fn all_down_falls_back_to_ignoring_health() {
        let backends = pool(&[spec(1, 1, 1), spec(2, 1, 1)]);
        for backend in &backends {
            backend.state.set_health(crate::backend::Health::Down);
        }
        let tried = Tried::new(2);
        assert_eq!(Candidates::new(&backends, &tried, false).iter().count(), 0);
        assert_eq!(Candidates::new(&backends, &tried, true).iter().count(), 2);
    }
}
