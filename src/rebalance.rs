//! `[rebalance]`: spreading long-lived sessions out again after a failure.
//!
//! A balancer only places new sessions. When two of three masters fail, their clients move to
//! the third, and API-server clients (watches) stay connected for hours, so after the others
//! return one master still carries the cluster. Each interval this task compares every
//! backend's sessions with its share of the server's (by weight and priority for `weight`,
//! equal for the others, within each `sni=` group) and, where a backend holds more than
//! `(1 + tolerance)` times its share, closes a few of its oldest sessions, at most
//! `max_fraction` of the server's sessions per interval and none younger than `min_age`. Their
//! clients reconnect through the balancer, which places them on the less loaded backends.
//! kube-apiserver's `--goaway-chance` does the same for HTTP/2 clients.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::Backend;
use crate::config::{BalanceKind, Rebalance};
use crate::snapshot::{Server, Snapshot};

/// How often the task looks for a server whose interval is due.
const TICK: Duration = Duration::from_millis(100);

/// Runs until `stop`: each server with `[rebalance]` is looked at once per its interval.
pub async fn run(snapshot: Arc<ArcSwap<Snapshot>>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut due: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let current = snapshot.load();
        due.retain(|name, _| {
            current
                .server(name)
                .is_some_and(|s| s.config.rebalance.is_some())
        });
        for server in current.servers() {
            let Some(settings) = &server.config.rebalance else {
                continue;
            };
            // A server's first look waits one interval: its clients are still arriving.
            let next = due
                .entry(server.name().to_owned())
                .or_insert(now + settings.interval);
            if now < *next {
                continue;
            }
            *next = now + settings.interval;
            rebalance_server(server, settings);
        }
    }
}

/// One round for one server.
fn rebalance_server(server: &Server, settings: &Rebalance) {
    let backends = server.pool.backends();
    let total: u64 = backends.iter().map(|b| active(b)).sum();
    let fraction = (total as f64 * settings.max_fraction).floor() as u64;
    let mut budget = fraction.max(1);
    let mut groups: Vec<Vec<&Arc<Backend>>> = Vec::new();
    for backend in backends {
        match groups
            .iter_mut()
            .find(|group| group[0].spec.sni == backend.spec.sni)
        {
            Some(group) => group.push(backend),
            None => groups.push(vec![backend]),
        }
    }
    for group in groups {
        if budget == 0 {
            break;
        }
        let members: Vec<&Arc<Backend>> = group
            .into_iter()
            .filter(|b| b.is_healthy() && b.accepts_new_sessions())
            .collect();
        // A backend still warming up (`slow_start`) is not given its full share yet; moving
        // sessions now would send them back to the busy ones.
        let warming = server
            .config
            .slow_start
            .is_some_and(|period| members.iter().any(|b| b.state.warm_up(period).is_some()));
        if members.len() < 2 || warming {
            continue;
        }
        let loads: Vec<Load> = shares(server.config.balance, &members)
            .into_iter()
            .zip(&members)
            .map(|(share, backend)| Load {
                active: active(backend),
                share,
            })
            .collect();
        let mut over: Vec<(usize, u64)> = excess(&loads, settings.tolerance)
            .into_iter()
            .enumerate()
            .filter(|&(_, excess)| excess > 0)
            .collect();
        let group_total: u64 = loads.iter().map(|load| load.active).sum();
        over.sort_by_key(|&(_, excess)| std::cmp::Reverse(excess));
        for (index, excess) in over {
            let backend = members[index];
            let wanted = usize::try_from(excess.min(budget)).unwrap_or(usize::MAX);
            let closed = backend
                .state
                .sessions
                .close_oldest(wanted, settings.min_age);
            if closed == 0 {
                continue;
            }
            budget = budget.saturating_sub(closed as u64);
            backend
                .state
                .stats
                .rebalanced
                .fetch_add(closed as u64, Ordering::Relaxed);
            info!(
                server = server.name(),
                backend = %backend.target,
                closed,
                sessions = loads[index].active,
                of = group_total,
                share = format_args!("{:.0}%", loads[index].share * 100.0),
                "rebalancing: closed the oldest sessions of a backend over its share; their clients reconnect"
            );
            if budget == 0 {
                break;
            }
        }
    }
}

fn active(backend: &Backend) -> u64 {
    backend.state.stats.active.load(Ordering::Relaxed)
}

/// A backend's sessions now and the fraction of its group's it should hold.
#[derive(Debug, Clone, Copy)]
struct Load {
    active: u64,
    share: f64,
}

/// Each member's fair share of its group's sessions, summing to 1. With `weight`, the best
/// (lowest) priority group by weight (equal if its weights are all 0) and the others none; with
/// the other balancers, equal.
fn shares(balance: BalanceKind, members: &[&Arc<Backend>]) -> Vec<f64> {
    let weights: Vec<f64> = if balance == BalanceKind::Weight {
        let best = members.iter().map(|b| b.spec.priority).min().unwrap_or(0);
        let in_best = |b: &Backend| b.spec.priority == best;
        let all_zero = members
            .iter()
            .filter(|b| in_best(b))
            .all(|b| b.spec.weight == 0);
        members
            .iter()
            .map(|b| match (in_best(b), all_zero) {
                (false, _) => 0.0,
                (true, true) => 1.0,
                (true, false) => f64::from(b.spec.weight),
            })
            .collect()
    } else {
        vec![1.0; members.len()]
    };
    let sum: f64 = weights.iter().sum();
    if sum <= 0.0 {
        return vec![1.0 / members.len() as f64; members.len()];
    }
    weights.iter().map(|w| w / sum).collect()
}

/// How many sessions each member holds beyond `(1 + tolerance)` times its share, rounded so
/// that a few sessions more than an exact split never count: with 4 sessions on 3 equal
/// backends, 2/1/1 is balanced.
fn excess(loads: &[Load], tolerance: f64) -> Vec<u64> {
    let total: u64 = loads.iter().map(|load| load.active).sum();
    loads
        .iter()
        .map(|load| {
            // Less a hair, so that 300 x (1/3) x 1.2 allows 120, not 121.
            let allowed = (total as f64 * load.share * (1.0 + tolerance) - 1e-9).ceil() as u64;
            load.active.saturating_sub(allowed)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loads(active: &[u64], shares: &[f64]) -> Vec<Load> {
        active
            .iter()
            .zip(shares)
            .map(|(&active, &share)| Load { active, share })
            .collect()
    }

    #[test]
    fn only_a_backend_well_over_its_share_has_excess() {
        let third = 1.0 / 3.0;
        let equal = [third, third, third];
        assert_eq!(excess(&loads(&[300, 0, 0], &equal), 0.2), [180, 0, 0]);
        assert_eq!(excess(&loads(&[120, 90, 90], &equal), 0.2), [0, 0, 0]);
        assert_eq!(excess(&loads(&[2, 1, 1], &equal), 0.2), [0, 0, 0]);
        assert_eq!(excess(&loads(&[0, 0, 0], &equal), 0.0), [0, 0, 0]);
        // Weighted 2:1:1, and a backup (share 0) holding sessions.
        let weighted = [0.5, 0.25, 0.25];
        assert_eq!(excess(&loads(&[100, 100, 0], &weighted), 0.1), [0, 45, 0]);
        assert_eq!(excess(&loads(&[50, 10], &[1.0, 0.0]), 0.2), [0, 10]);
    }

    #[test]
    fn weight_shares_follow_priority_then_weight() {
        use crate::backend::BackendState;
        use crate::balance::tests::spec;
        let backend = |n, weight, priority| {
            Arc::new(Backend::new(
                spec(n, weight, priority),
                Arc::new(BackendState::default()),
            ))
        };
        let members = [backend(1, 2, 1), backend(2, 1, 1), backend(3, 5, 2)];
        let members: Vec<&Arc<Backend>> = members.iter().collect();
        let weighted = shares(BalanceKind::Weight, &members);
        assert_eq!(weighted, [2.0 / 3.0, 1.0 / 3.0, 0.0]);
        let equal = shares(BalanceKind::LeastConn, &members);
        assert_eq!(equal, [1.0 / 3.0; 3]);
    }
}
