//! A backend: its configured spec, its live state and its counters.
//!
//! [`Backend`] belongs to one snapshot (a reload builds new ones); its [`BackendState`] is shared
//! by every snapshot that keeps the backend, so health and counters survive reloads. Everything
//! the per-connection path touches is an atomic: accept tasks pick and count without locks.

pub(crate) mod health;
mod sessions;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::BackendSpec;
use crate::logging::RateLimit;
use crate::stats::{ActiveCount, BackendStats, SessionEnd, Slot};
use health::Streaks;
pub use sessions::{SessionTicket, Sessions};

/// One backend as configured in the current snapshot.
#[derive(Debug)]
pub struct Backend {
    pub spec: BackendSpec,
    /// `host:port`: the backend's identity across reloads and its name in logs.
    pub target: Arc<str>,
    /// The address to dial when the host is an IP literal; DNS names are resolved per connect.
    pub resolved: Option<SocketAddr>,
    pub state: Arc<BackendState>,
    /// One "connect failed" line a second, however many clients hit a dead backend.
    pub connect_failures_log: RateLimit,
}

impl Backend {
    /// Builds a backend around existing state (carried over from the previous snapshot) or a
    /// fresh one.
    pub fn new(spec: BackendSpec, state: Arc<BackendState>) -> Self {
        Self {
            resolved: spec.ip_addr(),
            target: spec.target().into(),
            spec,
            state,
            connect_failures_log: RateLimit::per_second(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.state.health() == Health::Up
    }

    /// False while the backend is drained or disabled by an operator.
    pub fn accepts_new_sessions(&self) -> bool {
        self.state.admin() == Admin::Enabled
    }

    pub fn has_capacity(&self) -> bool {
        match self.spec.max_connections {
            None => true,
            Some(max) => self.state.stats.active.load(Ordering::Relaxed) < u64::from(max),
        }
    }

    /// Reserves one session place, respecting `max_connections`; released when the slot drops.
    pub fn try_acquire(&self) -> Option<Slot<BackendState>> {
        Slot::try_acquire(&self.state, self.spec.max_connections)
    }
}

/// Probe health of a backend, as decided by the health checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    Up = 0,
    Down = 1,
}

/// Operator state of a backend, set through the API; independent of health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Admin {
    /// Takes new sessions.
    Enabled = 0,
    /// No new sessions; established ones stay.
    Draining = 1,
    /// No new sessions; established ones are closed.
    Disabled = 2,
}

impl Health {
    /// `up` or `down`, as logs, the API and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Admin {
    /// `enabled`, `draining` or `disabled`, as logs, the API and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Draining => "draining",
            Self::Disabled => "disabled",
        }
    }
}

impl fmt::Display for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The part of a backend that outlives snapshots: health, admin state, counters, and the
/// signal that closes its sessions.
#[derive(Debug)]
pub struct BackendState {
    health: AtomicU8,
    admin: AtomicU8,
    pub stats: BackendStats,
    /// Consecutive check and connect results behind `health`.
    pub streaks: Streaks,
    /// Cancelled (and replaced) to close every session established so far.
    closer: ArcSwap<CancellationToken>,
    /// Why the last [`close_sessions`](Self::close_sessions) happened, as a `SessionEnd`.
    close_reason: AtomicU8,
    /// The process-wide "close every session" token; each `closer` is its child, so one
    /// future per session waits for both.
    all_sessions: CancellationToken,
    /// When the backend last came back into service (up after down, or enabled after drain or
    /// disable), in [`clock_ms`] time; 0 when it has been in service since it was made.
    returned_at_ms: AtomicU64,
    /// Established sessions, when the server rebalances (`[rebalance]`); empty otherwise.
    pub sessions: Sessions,
}

/// Milliseconds on a process-wide monotonic clock. It starts at [`CLOCK_START_MS`], so 0 can
/// mean "never" and a time before the first reading still has a value (tests use that).
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let elapsed = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(elapsed)
        .unwrap_or(u64::MAX / 2)
        .saturating_add(CLOCK_START_MS)
}

/// About 11.6 days.
const CLOCK_START_MS: u64 = 1_000_000_000;

impl BackendState {
    /// A backend starting with `health`, whose sessions also close when `all_sessions` is
    /// cancelled (the end of a shutdown's grace period).
    pub fn new(health: Health, all_sessions: &CancellationToken) -> Self {
        Self {
            health: AtomicU8::new(health as u8),
            admin: AtomicU8::new(Admin::Enabled as u8),
            stats: BackendStats::default(),
            streaks: Streaks::default(),
            closer: ArcSwap::from_pointee(all_sessions.child_token()),
            close_reason: AtomicU8::new(SessionEnd::BackendDown as u8),
            all_sessions: all_sessions.clone(),
            returned_at_ms: AtomicU64::new(0),
            sessions: Sessions::default(),
        }
    }

    /// The token a new session watches: it fires when [`close_sessions`](Self::close_sessions)
    /// is called, or when every session of the process is closed.
    pub fn session_closer(&self) -> CancellationToken {
        CancellationToken::clone(&self.closer.load())
    }

    /// Closes every session established until now, for `reason`; later sessions are not
    /// affected.
    ///
    /// A session that fetched its token just before the swap is closed too: it was connecting
    /// to a backend being closed, so that is the right outcome.
    pub fn close_sessions(&self, reason: SessionEnd) {
        self.close_reason.store(reason as u8, Ordering::Release);
        self.closer
            .swap(Arc::new(self.all_sessions.child_token()))
            .cancel();
    }

    /// Why a session's closer fired: shutdown, or the reason given to the last
    /// [`close_sessions`](Self::close_sessions).
    pub fn close_reason(&self) -> SessionEnd {
        if self.all_sessions.is_cancelled() {
            return SessionEnd::Shutdown;
        }
        SessionEnd::from_u8(self.close_reason.load(Ordering::Acquire))
    }

    pub fn health(&self) -> Health {
        match self.health.load(Ordering::Acquire) {
            0 => Health::Up,
            _ => Health::Down,
        }
    }

    /// Stores a new health value and returns the previous one, so the caller can tell a flip.
    pub fn set_health(&self, health: Health) -> Health {
        let previous = match self.health.swap(health as u8, Ordering::AcqRel) {
            0 => Health::Up,
            _ => Health::Down,
        };
        if previous == Health::Down && health == Health::Up {
            self.returned_at_ms.store(clock_ms(), Ordering::Release);
        }
        previous
    }

    /// Moves the last return into service `ago` into the past.
    #[cfg(test)]
    pub fn shift_return_for_test(&self, ago: Duration) {
        let ago = u64::try_from(ago.as_millis()).unwrap_or(u64::MAX);
        self.returned_at_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |at| {
                Some(at.saturating_sub(ago).max(1))
            })
            .ok();
    }

    /// While the backend warms up after coming back into service (`slow_start`), the share of
    /// its full load it should take now, in `(0, 1)`; `None` once warm.
    pub fn warm_up(&self, period: Duration) -> Option<f64> {
        let returned = self.returned_at_ms.load(Ordering::Acquire);
        if returned == 0 {
            return None;
        }
        let elapsed = clock_ms().saturating_sub(returned) as f64;
        let period = period.as_millis() as f64;
        (elapsed < period).then(|| (elapsed / period).max(f64::MIN_POSITIVE))
    }

    pub fn admin(&self) -> Admin {
        match self.admin.load(Ordering::Acquire) {
            0 => Admin::Enabled,
            1 => Admin::Draining,
            _ => Admin::Disabled,
        }
    }

    pub fn set_admin(&self, admin: Admin) {
        let previous = self.admin.swap(admin as u8, Ordering::AcqRel);
        if previous != Admin::Enabled as u8 && admin == Admin::Enabled {
            self.returned_at_ms.store(clock_ms(), Ordering::Release);
        }
    }
}

impl ActiveCount for BackendState {
    fn active(&self) -> &AtomicU64 {
        &self.stats.active
    }
}

impl Default for BackendState {
    /// Healthy, with its own "close every session" token.
    fn default() -> Self {
        Self::new(Health::Up, &CancellationToken::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max_connections: Option<u32>) -> BackendSpec {
        BackendSpec {
            host: "127.0.0.1".into(),
            port: 6443,
            weight: 1,
            priority: 1,
            max_connections,
            sni: None,
        }
    }

    #[test]
    fn capacity_follows_the_backends_own_max_connections() {
        // Slot counting itself is tested beside `Slot`; this is the backend's limit feeding it.
        let backend = Backend::new(spec(Some(2)), Arc::default());
        let held = [backend.try_acquire(), backend.try_acquire()];
        assert!(held.iter().all(Option::is_some));
        assert!(!backend.has_capacity() && backend.try_acquire().is_none());
        drop(held);
        assert!(backend.has_capacity());
        let unlimited = Backend::new(spec(None), Arc::default());
        let many: Vec<_> = (0..100).map(|_| unlimited.try_acquire()).collect();
        assert!(many.iter().all(Option::is_some) && unlimited.has_capacity());
    }

    #[test]
    fn ip_literals_are_resolved_once_and_names_are_not() {
        let backend = Backend::new(spec(None), Arc::default());
        assert_eq!(backend.resolved, Some("127.0.0.1:6443".parse().unwrap()));
        let mut named = spec(None);
        named.host = "master-1.example".into();
        assert_eq!(Backend::new(named, Arc::default()).resolved, None);
    }

    #[test]
    fn v6_target_is_bracketed() {
        let mut v6 = spec(None);
        v6.host = "::1".into();
        let backend = Backend::new(v6, Arc::default());
        assert_eq!(&*backend.target, "[::1]:6443");
        assert_eq!(backend.resolved, Some("[::1]:6443".parse().unwrap()));
    }

    #[test]
    fn closing_sessions_fires_old_tokens_only() {
        let state = BackendState::default();
        let established = state.session_closer();
        state.close_sessions(SessionEnd::BackendDown);
        let later = state.session_closer();
        assert!(established.is_cancelled());
        assert!(!later.is_cancelled());
    }

    #[test]
    fn coming_back_into_service_starts_a_warm_up() {
        let period = Duration::from_secs(60);
        let state = BackendState::default();
        assert_eq!(state.warm_up(period), None, "up since it was made");
        state.set_health(Health::Down);
        assert_eq!(state.warm_up(period), None);
        state.set_health(Health::Up);
        let share = state.warm_up(period).expect("warming");
        assert!(share > 0.0 && share < 0.01, "{share}");
        assert_eq!(state.warm_up(Duration::ZERO), None);

        let enabled = BackendState::default();
        enabled.set_admin(Admin::Draining);
        enabled.set_admin(Admin::Draining);
        assert_eq!(enabled.warm_up(period), None);
        enabled.set_admin(Admin::Enabled);
        assert!(enabled.warm_up(period).is_some());
    }

    #[test]
    fn closing_every_session_reaches_each_backend() {
        let all = CancellationToken::new();
        let state = BackendState::new(Health::Up, &all);
        let session = state.session_closer();
        all.cancel();
        assert!(session.is_cancelled());
        assert_eq!(state.close_reason(), SessionEnd::Shutdown);
    }
}
