//! The process-wide budget of UDP session sockets: each session (and each spare socket) holds
//! one place, so no flood of client addresses can take every descriptor.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// UDP session sockets open in the process, across servers.
static OPEN_SOCKETS: AtomicUsize = AtomicUsize::new(0);

/// The share of the process's descriptor limit UDP sessions may hold, in total: the rest stays
/// for TCP sessions, listeners and health checks.
pub(crate) fn socket_budget() -> usize {
    static BUDGET: OnceLock<usize> = OnceLock::new();
    *BUDGET.get_or_init(|| crate::net::descriptor_limit() / 2)
}

/// One UDP session socket counted against [`socket_budget`]; given back on drop.
#[derive(Debug)]
pub(crate) struct BudgetGuard(());

impl BudgetGuard {
    /// `None` when the process holds its whole budget of session sockets.
    pub(crate) fn try_acquire() -> Option<Self> {
        let budget = socket_budget();
        OPEN_SOCKETS
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < budget).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(()))
    }
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        OPEN_SOCKETS.fetch_sub(1, Ordering::AcqRel);
    }
}
