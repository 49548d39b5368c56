//! A server's backends and its balancer, and the order in which one connection tries them.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendState};
use crate::balance::{Balancer, Candidates, ClientIpForm, Tried};
use crate::config::BalanceKind;
use crate::stats::Slot;

/// The backends of one server in one snapshot, sorted by `host:port` (gobetween's order for
/// roundrobin and iphash), with the balancer built for them.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    balancer: Balancer,
    /// `slow_start`, for the balancers where a backend's share has a meaning (not the hashes,
    /// which must keep a client on its backend).
    slow_start: Option<Duration>,
}

impl Pool {
    /// A pool whose hashes see clients as a wildcard bind does (16-byte addresses).
    pub fn new(kind: BalanceKind, backends: Vec<Arc<Backend>>) -> Self {
        Self::with_client_form(kind, ClientIpForm::Sixteen, backends)
    }

    /// A pool whose `iphash`/`iphash1` hash a client in `form`, the form gobetween's socket on
    /// the same bind address would have given it.
    pub fn with_client_form(
        kind: BalanceKind,
        form: ClientIpForm,
        mut backends: Vec<Arc<Backend>>,
    ) -> Self {
        backends.sort_by(|a, b| a.target.cmp(&b.target));
        let balancer = Balancer::new(kind, form);
        Self {
            backends,
            balancer,
            slow_start: None,
        }
    }

    /// Backends coming back into service take a growing share of new sessions over `period`.
    #[must_use]
    pub fn with_slow_start(mut self, period: Option<Duration>) -> Self {
        let hashed = matches!(self.balancer, Balancer::IpHash(_) | Balancer::IpHash1(_));
        self.slow_start = period.filter(|_| !hashed);
        self
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn find(&self, target: &str) -> Option<&Arc<Backend>> {
        self.backends
            .iter()
            .find(|backend| &*backend.target == target)
    }

    /// True when at least one backend both passes its checks and takes new sessions.
    pub fn any_healthy(&self) -> bool {
        self.backends
            .iter()
            .any(|backend| backend.is_healthy() && backend.accepts_new_sessions())
    }

    /// The backends a connection from `client` should try, best first, each at most once.
    pub fn attempts(&self, client: IpAddr) -> Attempts<'_> {
        Attempts {
            pool: self,
            client,
            tried: Tried::new(self.backends.len()),
            ignore_health: !self.any_healthy(),
            warming: Vec::new(),
        }
    }

    /// Like [`attempts`](Self::attempts), among the backends whose place in `eligible` (pool
    /// order) is true: the others count as tried from the start, and "every backend down"
    /// means every eligible one.
    pub fn attempts_among(&self, client: IpAddr, eligible: &[bool]) -> Attempts<'_> {
        let mut tried = Tried::new(self.backends.len());
        let mut any_healthy = false;
        for (index, backend) in self.backends.iter().enumerate() {
            if eligible.get(index).copied().unwrap_or(false) {
                any_healthy |= backend.is_healthy() && backend.accepts_new_sessions();
            } else {
                tried.insert(index);
            }
        }
        Attempts {
            pool: self,
            client,
            tried,
            ignore_health: !any_healthy,
            warming: Vec::new(),
        }
    }
}

/// One connection's walk through the pool: each call picks among the backends not tried yet.
///
/// When no backend passed its checks as the walk began, it considers them all, like k3s's own
/// client load balancer: a check that fails under load must not turn into a total outage.
#[derive(Debug)]
pub struct Attempts<'a> {
    pool: &'a Pool,
    client: IpAddr,
    tried: Tried,
    ignore_health: bool,
    /// Backends picked but passed over because they are warming up (`slow_start`): tried
    /// only once nothing else is left, so no client is refused for it.
    warming: Vec<usize>,
}

impl<'a> Attempts<'a> {
    /// True when every backend was down as the walk began, so down backends are tried too.
    pub fn ignores_health(&self) -> bool {
        self.ignore_health
    }

    pub fn next_backend(&mut self) -> Option<&'a Arc<Backend>> {
        loop {
            let candidates = Candidates::new(&self.pool.backends, &self.tried, self.ignore_health);
            let Some(index) = self.pool.balancer.select(&candidates, self.client) else {
                break;
            };
            self.tried.insert(index);
            let backend = self.pool.backends.get(index)?;
            if self.takes_now(backend) {
                return Some(backend);
            }
            self.warming.push(index);
        }
        let index = (!self.warming.is_empty()).then(|| self.warming.remove(0))?;
        self.pool.backends.get(index)
    }

    /// A warming backend takes a pick with the probability of its warm-up share, so its share
    /// of new sessions grows from none to full over the period, whatever the balancer.
    fn takes_now(&self, backend: &Backend) -> bool {
        let Some(period) = self.pool.slow_start else {
            return true;
        };
        match backend.state.warm_up(period) {
            None => true,
            Some(share) => fastrand::f64() < share,
        }
    }

    /// The next backend a session can have: a place held on it (`max_connections`) and the
    /// token that closes its sessions. Backends that filled up, were drained or went down
    /// since the pick are skipped. The token is taken before the routable check: a backend
    /// closed between the pick and that check handed out a fresh token, but its new state is
    /// visible by then (it is stored before the token is swapped), so it is skipped.
    pub fn next_reserved(
        &mut self,
    ) -> Option<(&'a Arc<Backend>, Slot<BackendState>, CancellationToken)> {
        loop {
            let backend = self.next_backend()?;
            let Some(slot) = backend.try_acquire() else {
                continue;
            };
            let closer = backend.state.session_closer();
            if backend.accepts_new_sessions() && (backend.is_healthy() || self.ignore_health) {
                return Some((backend, slot, closer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use crate::balance::tests::{pool, spec};

    #[test]
    fn each_backend_is_tried_once_in_every_algorithm() {
        for name in BalanceKind::NAMES {
            let kind: BalanceKind = name.parse().unwrap();
            let pool = Pool::new(kind, pool(&[spec(3, 1, 1), spec(1, 2, 1), spec(2, 1, 2)]));
            let mut attempts = pool.attempts("192.0.2.1".parse().unwrap());
            let mut seen: Vec<_> = std::iter::from_fn(|| attempts.next_backend())
                .map(|backend| backend.target.to_string())
                .collect();
            assert_eq!(seen.len(), 3, "{name}: {seen:?}");
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 3, "{name} tried a backend twice");
        }
    }

    /// Picks out of `picks` that land on the first backend, which came back into service
    /// about `ago` of a 100 s `slow_start` before.
    fn warming_share(kind: BalanceKind, ago: Duration, picks: usize) -> f64 {
        let pool = Pool::new(kind, pool(&[spec(1, 1, 1), spec(2, 1, 1), spec(3, 1, 1)]))
            .with_slow_start(Some(Duration::from_secs(100)));
        let warming = &pool.backends()[0].state;
        warming.set_health(Health::Down);
        warming.set_health(Health::Up);
        warming.shift_return_for_test(ago);
        // The others carry sessions, as they would after the newcomer's outage.
        let _held: Vec<_> = pool.backends()[1..]
            .iter()
            .flat_map(|backend| [backend.try_acquire(), backend.try_acquire()])
            .collect();
        let mut landed = 0;
        for _ in 0..picks {
            let mut attempts = pool.attempts("192.0.2.1".parse().unwrap());
            if Arc::ptr_eq(attempts.next_backend().unwrap(), &pool.backends()[0]) {
                landed += 1;
            }
        }
        landed as f64 / picks as f64
    }

    #[test]
    fn a_warming_backend_takes_a_growing_share_of_new_sessions() {
        for kind in [BalanceKind::RoundRobin, BalanceKind::Weight] {
            // A third of the picks at full share; a quarter of that a quarter of the way in.
            let early = warming_share(kind, Duration::from_secs(25), 6000);
            assert!((0.05..0.13).contains(&early), "{kind:?}: {early}");
            let done = warming_share(kind, Duration::from_secs(100), 6000);
            assert!((0.28..0.39).contains(&done), "{kind:?}: {done}");
        }
        // leastconn would send every new session to the idle newcomer; slow start makes that
        // a quarter of them a quarter of the way in.
        let early = warming_share(BalanceKind::LeastConn, Duration::from_secs(25), 6000);
        assert!((0.19..0.31).contains(&early), "leastconn: {early}");
        // The hashes keep their clients where they are.
        let hashed = warming_share(BalanceKind::IpHash, Duration::ZERO, 100);
        assert!(hashed == 0.0 || hashed == 1.0);
    }

    #[test]
    fn a_warming_backend_is_still_tried_when_nothing_else_is_left() {
        let pool = Pool::new(
            BalanceKind::RoundRobin,
            pool(&[spec(1, 1, 1), spec(2, 1, 1)]),
        )
        .with_slow_start(Some(Duration::from_secs(3600)));
        for backend in pool.backends() {
            backend.state.set_health(Health::Down);
            backend.state.set_health(Health::Up);
        }
        let mut attempts = pool.attempts("192.0.2.1".parse().unwrap());
        let mut tried: Vec<_> = std::iter::from_fn(|| attempts.next_backend())
            .map(|backend| backend.target.to_string())
            .collect();
        tried.sort();
        assert_eq!(tried, ["10.0.0.1:6443", "10.0.0.2:6443"]);
    }

    #[test]
    fn backends_are_sorted_by_target() {
        let pool = Pool::new(
            BalanceKind::RoundRobin,
            pool(&[spec(3, 1, 1), spec(1, 1, 1)]),
        );
        let targets: Vec<_> = pool.backends().iter().map(|b| &*b.target).collect();
        assert_eq!(targets, ["10.0.0.1:6443", "10.0.0.3:6443"]);
    }

    #[test]
    fn down_backends_are_tried_only_when_all_are_down() {
        let pool = Pool::new(
            BalanceKind::RoundRobin,
            pool(&[spec(1, 1, 1), spec(2, 1, 1)]),
        );
        pool.backends()[0].state.set_health(Health::Down);
        let mut attempts = pool.attempts("192.0.2.1".parse().unwrap());
        assert_eq!(&*attempts.next_backend().unwrap().target, "10.0.0.2:6443");
        assert!(attempts.next_backend().is_none());

        pool.backends()[1].state.set_health(Health::Down);
        let mut attempts = pool.attempts("192.0.2.1".parse().unwrap());
        assert!(attempts.next_backend().is_some());
        assert!(attempts.next_backend().is_some());
        assert!(attempts.next_backend().is_none());
    }
}
