//! The established sessions of a backend whose server rebalances, oldest first, each with a
//! closer of its own, so that a few of them can be closed without touching the rest.
//!
//! Only servers with `[rebalance]` register their sessions: everyone else pays nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::BackendState;

/// The registry: one entry per registered session, keyed by registration order.
#[derive(Debug, Default)]
pub struct Sessions {
    next_id: AtomicU64,
    open: Mutex<BTreeMap<u64, Registered>>,
}

#[derive(Debug)]
struct Registered {
    started: Instant,
    closer: CancellationToken,
}

/// A registered session's place in the registry, given up when the session ends.
#[derive(Debug)]
pub struct SessionTicket {
    state: Arc<BackendState>,
    id: u64,
    /// Fires when the backend's sessions are closed, or when this one alone is.
    closer: CancellationToken,
}

impl SessionTicket {
    /// Registers a session that watches `backend_closer` (the backend's own), now.
    pub fn register(state: &Arc<BackendState>, backend_closer: &CancellationToken) -> Self {
        let sessions = &state.sessions;
        let id = sessions.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = backend_closer.child_token();
        let registered = Registered {
            started: Instant::now(),
            closer: closer.clone(),
        };
        sessions.lock().insert(id, registered);
        Self {
            state: Arc::clone(state),
            id,
            closer,
        }
    }

    /// What the session waits on instead of the backend's closer.
    pub fn closer(&self) -> &CancellationToken {
        &self.closer
    }
}

impl Drop for SessionTicket {
    fn drop(&mut self) {
        self.state.sessions.lock().remove(&self.id);
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Registered>> {
        // Plain data: a panic elsewhere cannot leave the map half-updated.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many sessions are registered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes up to `count` of the oldest sessions at least `min_age` old; returns how many.
    pub fn close_oldest(&self, count: usize, min_age: Duration) -> usize {
        let now = Instant::now();
        let mut open = self.lock();
        let chosen: Vec<u64> = open
            .iter()
            .take_while(|(_, session)| now.duration_since(session.started) >= min_age)
            .take(count)
            .map(|(&id, _)| id)
            .collect();
        for id in &chosen {
            if let Some(session) = open.remove(id) {
                session.closer.cancel();
            }
        }
        chosen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_old_enough_sessions_are_closed_and_the_rest_stay() {
        let state = Arc::new(BackendState::default());
        let backend_closer = state.session_closer();
        let tickets: Vec<SessionTicket> = (0..5)
            .map(|_| SessionTicket::register(&state, &backend_closer))
            .collect();
        assert_eq!(state.sessions.len(), 5);
        assert_eq!(
            state.sessions.close_oldest(2, Duration::from_secs(3600)),
            0,
            "none is an hour old"
        );
        assert_eq!(state.sessions.close_oldest(2, Duration::ZERO), 2);
        let closed: Vec<bool> = tickets.iter().map(|t| t.closer().is_cancelled()).collect();
        assert_eq!(closed, [true, true, false, false, false]);
        assert_eq!(state.sessions.len(), 3);
        drop(tickets);
        assert!(state.sessions.is_empty(), "an ended session leaves");
    }

    #[test]
    fn closing_the_backend_reaches_registered_sessions() {
        let state = Arc::new(BackendState::default());
        let ticket = SessionTicket::register(&state, &state.session_closer());
        state.close_sessions(crate::stats::SessionEnd::BackendDown);
        assert!(ticket.closer().is_cancelled());
    }
}
