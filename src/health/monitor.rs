//! One check task per backend, started and stopped as snapshots change, and what a flip does.
//!
//! The supervisor calls [`Monitor::reconcile`] after every published snapshot: backends that
//! stay with the same check keep their task (no flap, no reset), changed or new ones get a
//! fresh task, removed ones lose theirs. A task owns nothing but its check settings and the
//! backend's shared state; it writes health through atomics the balancer reads. It prepares
//! its check (reads TLS files) on the blocking pool before its first run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::check::{Check, CheckError, SetupError, Target};
use crate::backend::health::{self as state, Thresholds};
use crate::backend::{Backend, BackendState, Health};
use crate::config::{CheckKind, HealthcheckConfig};
use crate::events::Events;
use crate::snapshot::{Server, Snapshot};
use crate::stats::SessionEnd;

/// The check tasks of every backend in the current snapshot.
#[derive(Debug)]
pub struct Monitor {
    snapshot: Arc<ArcSwap<Snapshot>>,
    tasks: Mutex<HashMap<(String, Arc<str>), RunningCheck>>,
    /// Where flips are recorded for the status page.
    events: Arc<Events>,
}

#[derive(Debug)]
struct RunningCheck {
    spec: CheckSpec,
    state: Arc<BackendState>,
    stop: CancellationToken,
}

/// What a check task was started with; a change restarts the task.
#[derive(Debug, Clone, PartialEq)]
struct CheckSpec {
    healthcheck: HealthcheckConfig,
    target: Target,
    close_sessions_on_down: bool,
}

impl Monitor {
    pub fn new(snapshot: Arc<ArcSwap<Snapshot>>, events: Arc<Events>) -> Self {
        Self {
            snapshot,
            events,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// Starts, keeps or stops check tasks to match the current snapshot.
    pub fn reconcile(&self) {
        let snapshot = self.snapshot.load_full();
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wanted = HashMap::new();
        for server in snapshot.servers() {
            for backend in server.pool.backends() {
                let key = (server.config.name.clone(), Arc::clone(&backend.target));
                if matches!(server.config.healthcheck.kind, CheckKind::None) {
                    mark_up_without_check(server, backend, &self.events);
                    continue;
                }
                let spec = CheckSpec {
                    healthcheck: server.config.healthcheck.clone(),
                    target: Target::new(&backend.spec),
                    close_sessions_on_down: server.config.close_sessions_on_backend_down,
                };
                wanted.insert(key, (spec, Arc::clone(&backend.state)));
            }
        }
        tasks.retain(|key, running| {
            let keep = wanted.get(key).is_some_and(|(spec, state)| {
                *spec == running.spec && Arc::ptr_eq(state, &running.state)
            });
            if !keep {
                running.stop.cancel();
            }
            keep
        });
        for (key, (spec, state)) in wanted {
            if tasks.contains_key(&key) {
                continue;
            }
            let stop = CancellationToken::new();
            let task = CheckTask {
                server: key.0.clone(),
                backend: Arc::clone(&key.1),
                spec: spec.clone(),
                state: Arc::clone(&state),
                snapshot: Arc::clone(&self.snapshot),
                events: Arc::clone(&self.events),
            };
            tokio::spawn(task.run(stop.clone()));
            tasks.insert(key, RunningCheck { spec, state, stop });
        }
    }

    /// Stops every check task (shutdown).
    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, running) in tasks.drain() {
            running.stop.cancel();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// A backend whose server has no active check (any more) is considered up: nothing else could
/// ever bring it back.
fn mark_up_without_check(server: &Server, backend: &Backend, events: &Events) {
    if backend.state.set_health(Health::Up) == Health::Down {
        events.record(
            server.name(),
            &backend.target,
            true,
            "the server has no health check",
        );
        info!(server = server.name(), backend = %backend.target, "backend UP: its server has no health check");
    }
}

/// The loop of one backend's check.
struct CheckTask {
    server: String,
    backend: Arc<str>,
    spec: CheckSpec,
    state: Arc<BackendState>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    events: Arc<Events>,
}

impl CheckTask {
    async fn run(self, stop: CancellationToken) {
        let healthcheck = &self.spec.healthcheck;
        let check = tokio::select! {
            () = stop.cancelled() => return,
            check = prepare(&healthcheck.kind, &self.spec.target) => check,
        };
        if let Err(error) = &check {
            error!(server = %self.server, backend = %self.backend, %error, "health check cannot run; counting every run as failed");
        }
        let interval = healthcheck.interval;
        let timeout = effective_timeout(healthcheck);
        let thresholds = Thresholds {
            fails: healthcheck.fails,
            passes: healthcheck.passes,
        };
        let kind = match &check {
            Ok(Some(check)) => check.name(),
            _ => "health",
        };
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let started = tokio::time::Instant::now();
            let result = match &check {
                Ok(Some(check)) => check.run(&self.spec.target, timeout).await,
                Ok(None) => return,
                Err(error) => Err(CheckError::Setup(error.clone())),
            };
            self.state.stats.check_duration.observe(started.elapsed());
            if stop.is_cancelled() {
                return;
            }
            self.observe(result, thresholds, kind);
        }
    }

    fn observe(&self, result: Result<(), CheckError>, thresholds: Thresholds, kind: &str) {
        let passed = result.is_ok();
        let snapshot = self.snapshot.load();
        let server = snapshot.server(&self.server);
        let Some((health, streak)) = state::observe_check(&self.state, passed, thresholds) else {
            if state::confirm_down(&self.state, passed) && self.spec.close_sessions_on_down {
                close_sessions(&self.server, &self.backend, &self.state);
            }
            return;
        };
        match (health, result) {
            (Health::Up, _) => {
                info!(server = %self.server, backend = %self.backend, "backend {} UP after {streak} passed {kind} checks", self.backend);
                self.events.record(
                    &self.server,
                    &self.backend,
                    true,
                    format!("{streak} passed {kind} checks"),
                );
            }
            (Health::Down, result) => {
                let reason = result
                    .err()
                    .map_or_else(String::new, |error| error.to_string());
                warn!(server = %self.server, backend = %self.backend, "backend {} DOWN after {streak} failed {kind} checks: {reason}", self.backend);
                self.events.record(
                    &self.server,
                    &self.backend,
                    false,
                    format!("{streak} failed {kind} checks: {reason}"),
                );
                if let Some(server) = server {
                    after_marked_down(server);
                }
            }
        }
    }
}

/// [`Check::prepare`] on the blocking pool: it reads CA files, client certificates and the
/// system roots, which may block (a slow disk, a hung network mount) and must not stall the
/// runtime workers that forward traffic.
async fn prepare(kind: &CheckKind, target: &Target) -> Result<Option<Check>, SetupError> {
    let (kind, target) = (kind.clone(), target.clone());
    tokio::task::spawn_blocking(move || Check::prepare(&kind, &target))
        .await
        .unwrap_or_else(|error| Err(SetupError(format!("preparing the check failed: {error}"))))
}

/// Records a client connect on `backend` (passive check) and acts when it marked it down.
/// Passive checks need an active one: only a check can bring the backend back.
pub fn observe_connect(server: &Server, backend: &Backend, error: Option<&std::io::Error>) {
    if matches!(server.config.healthcheck.kind, CheckKind::None) {
        return;
    }
    let passive_fails = server.config.healthcheck.passive_fails;
    if let Some(streak) = state::observe_connect(&backend.state, error.is_none(), passive_fails) {
        let reason = error.map_or_else(String::new, ToString::to_string);
        warn!(server = server.name(), backend = %backend.target, "backend {} DOWN after {streak} failed connects of client traffic: {reason}", backend.target);
        server.events.record(
            server.name(),
            &backend.target,
            false,
            format!("{streak} failed connects of client traffic: {reason}"),
        );
        after_marked_down(server);
    }
}

/// Closes the sessions of a backend whose down state a further failed check confirmed (see
/// [`state::confirm_down`]).
fn close_sessions(server: &str, backend: &str, state: &BackendState) {
    let open = state
        .stats
        .active
        .load(std::sync::atomic::Ordering::Relaxed);
    if open > 0 {
        info!(
            server,
            backend,
            sessions = open,
            "closing the sessions of a backend still down at its next check"
        );
    }
    state.close_sessions(SessionEnd::BackendDown);
}

/// Says loudly when a backend just marked down left its server with no healthy backend.
fn after_marked_down(server: &Server) {
    if !server.pool.any_healthy() {
        error!(
            server = server.name(),
            backends = server.pool.backends().len(),
            "every backend is down; new connections still try all of them"
        );
    }
}

/// The timeout a check runs with: `timeout`, else ("0") `interval`; never more than `interval`,
/// so checks of one backend cannot pile up.
pub fn effective_timeout(healthcheck: &HealthcheckConfig) -> Duration {
    healthcheck
        .timeout
        .unwrap_or(healthcheck.interval)
        .min(healthcheck.interval)
}
