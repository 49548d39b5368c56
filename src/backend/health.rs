//! The up/down state machine: consecutive check results flip a backend's health.
//!
//! An active check needs `fails` consecutive failures to mark a live backend down and `passes`
//! consecutive successes to bring it back; a success resets the failure streak and vice versa
//! (gobetween kept counting failures across successes). Client traffic adds a passive signal:
//! `passive_fails` consecutive failed connects mark the backend down before the next check.
//! Only flips are reported, so only flips are logged and counted.
//!
//! Closing a down backend's sessions waits for one more failed active check ([`confirm_down`]):
//! with gobetween's default `fails = 1`, a single lost probe (a GC pause, a dropped SYN) would
//! otherwise cut every session of a healthy API server. A frozen one still loses its sessions
//! after `fails + 1` failed checks, about `(fails + 1) * interval`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::backend::{BackendState, Health};

/// The streaks behind a backend's health. Active streaks are written by the backend's one
/// check task; the connect-failure streak by any session.
#[derive(Debug, Default)]
pub struct Streaks {
    passes: AtomicU32,
    fails: AtomicU32,
    connect_failures: AtomicU32,
    /// Set when the backend is marked down; the next failed active check, with no pass in
    /// between, closes its sessions.
    close_pending: AtomicBool,
}

/// Thresholds of one backend's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub fails: u32,
    pub passes: u32,
}

/// Records one active check result. Returns the new health when this result flipped it, with
/// the length of the streak that did.
pub fn observe_check(
    state: &BackendState,
    passed: bool,
    thresholds: Thresholds,
) -> Option<(Health, u32)> {
    let streaks = &state.streaks;
    if passed {
        streaks.fails.store(0, Ordering::Relaxed);
        let passes = streaks
            .passes
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if passes >= thresholds.passes && state.health() == Health::Down {
            streaks.connect_failures.store(0, Ordering::Relaxed);
            return flip(state, Health::Up).then_some((Health::Up, passes));
        }
    } else {
        streaks.passes.store(0, Ordering::Relaxed);
        let fails = streaks
            .fails
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if fails >= thresholds.fails && state.health() == Health::Up {
            return flip(state, Health::Down).then_some((Health::Down, fails));
        }
    }
    None
}

/// Records the outcome of a client connect (passive check). Returns the failure streak when
/// this failure marked the backend down. `passive_fails` 0 only resets the streak.
pub fn observe_connect(state: &BackendState, connected: bool, passive_fails: u32) -> Option<u32> {
    let streaks = &state.streaks;
    if connected {
        // Most connects succeed: avoid dirtying the cache line when there is nothing to reset.
        if streaks.connect_failures.load(Ordering::Relaxed) != 0 {
            streaks.connect_failures.store(0, Ordering::Relaxed);
        }
        return None;
    }
    let failures = streaks.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
    if passive_fails == 0 || failures < passive_fails || state.health() == Health::Down {
        return None;
    }
    // Coming back now takes a full streak of fresh active passes.
    streaks.passes.store(0, Ordering::Relaxed);
    flip(state, Health::Down).then_some(failures)
}

/// After an active check that flipped nothing: true once per down period, when this failed
/// check confirms a backend marked down earlier (by checks or by client traffic), so its
/// sessions should be closed now. A passed check cancels the pending close.
pub fn confirm_down(state: &BackendState, passed: bool) -> bool {
    let pending = &state.streaks.close_pending;
    if passed {
        if pending.load(Ordering::Relaxed) {
            pending.store(false, Ordering::Relaxed);
        }
        return false;
    }
    state.health() == Health::Down && pending.swap(false, Ordering::Relaxed)
}

/// Sets health; true when this call changed it (so concurrent observers report one flip).
fn flip(state: &BackendState, to: Health) -> bool {
    let flipped = state.set_health(to) != to;
    if flipped {
        state
            .streaks
            .close_pending
            .store(to == Health::Down, Ordering::Relaxed);
    }
    flipped
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_AND_TWO: Thresholds = Thresholds {
        fails: 2,
        passes: 2,
    };

    #[test]
    fn consecutive_failures_flip_down_and_passes_flip_back() {
        let state = BackendState::default();
        assert_eq!(observe_check(&state, false, TWO_AND_TWO), None);
        assert_eq!(
            observe_check(&state, false, TWO_AND_TWO),
            Some((Health::Down, 2))
        );
        assert_eq!(
            observe_check(&state, false, TWO_AND_TWO),
            None,
            "only flips are reported"
        );
        assert_eq!(observe_check(&state, true, TWO_AND_TWO), None);
        assert_eq!(
            observe_check(&state, true, TWO_AND_TWO),
            Some((Health::Up, 2))
        );
        assert_eq!(state.health(), Health::Up);
    }

    #[test]
    fn a_success_between_failures_resets_the_streak() {
        let state = BackendState::default();
        for _ in 0..5 {
            assert_eq!(observe_check(&state, false, TWO_AND_TWO), None);
            assert_eq!(observe_check(&state, true, TWO_AND_TWO), None);
        }
        assert_eq!(state.health(), Health::Up);
    }

    #[test]
    fn initially_unhealthy_needs_the_passes() {
        let state = BackendState::new(Health::Down, &Default::default());
        assert_eq!(observe_check(&state, true, TWO_AND_TWO), None);
        assert_eq!(
            observe_check(&state, true, TWO_AND_TWO),
            Some((Health::Up, 2))
        );
    }

    #[test]
    fn passive_failures_mark_down_and_need_fresh_passes() {
        let state = BackendState::default();
        for _ in 0..3 {
            observe_check(&state, true, TWO_AND_TWO);
        }
        assert_eq!(observe_connect(&state, false, 3), None);
        assert_eq!(
            observe_connect(&state, true, 3),
            None,
            "a success resets the streak"
        );
        assert_eq!(observe_connect(&state, false, 3), None);
        assert_eq!(observe_connect(&state, false, 3), None);
        assert_eq!(observe_connect(&state, false, 3), Some(3));
        assert_eq!(state.health(), Health::Down);
        assert_eq!(
            observe_check(&state, true, TWO_AND_TWO),
            None,
            "earlier passes do not count"
        );
        assert_eq!(
            observe_check(&state, true, TWO_AND_TWO),
            Some((Health::Up, 2))
        );
    }

    #[test]
    fn passive_checks_can_be_disabled() {
        let state = BackendState::default();
        for _ in 0..10 {
            assert_eq!(observe_connect(&state, false, 0), None);
        }
        assert_eq!(state.health(), Health::Up);
    }

    #[test]
    fn sessions_close_only_when_a_second_failure_confirms_down() {
        let state = BackendState::default();
        let gobetween_default = Thresholds {
            fails: 1,
            passes: 1,
        };
        // One lost probe, then a pass: marked down and back up, no close.
        assert_eq!(
            observe_check(&state, false, gobetween_default),
            Some((Health::Down, 1))
        );
        assert_eq!(
            observe_check(&state, true, gobetween_default),
            Some((Health::Up, 1))
        );
        assert!(
            !confirm_down(&state, false),
            "a failure while up is no confirmation"
        );
        // Frozen: down after `fails`, sessions closed at `fails + 1`, once.
        let state = BackendState::default();
        assert!(observe_check(&state, false, TWO_AND_TWO).is_none());
        assert!(observe_check(&state, false, TWO_AND_TWO).is_some());
        assert_eq!(observe_check(&state, false, TWO_AND_TWO), None);
        assert!(confirm_down(&state, false));
        assert_eq!(observe_check(&state, false, TWO_AND_TWO), None);
        assert!(!confirm_down(&state, false), "closed once per down period");
    }

    #[test]
    fn a_pass_while_down_cancels_the_close() {
        let state = BackendState::default();
        observe_check(&state, false, TWO_AND_TWO);
        observe_check(&state, false, TWO_AND_TWO);
        assert_eq!(state.health(), Health::Down);
        assert_eq!(observe_check(&state, true, TWO_AND_TWO), None);
        assert!(!confirm_down(&state, true));
        assert_eq!(observe_check(&state, false, TWO_AND_TWO), None);
        assert!(!confirm_down(&state, false));
        // Marked down by client traffic: the next failed check confirms.
        let state = BackendState::default();
        assert_eq!(observe_connect(&state, false, 1), Some(1));
        assert!(confirm_down(&state, false));
    }
}
