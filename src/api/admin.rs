//! Runtime control of one backend (betwixt): `POST /servers/NAME/backends/HOST:PORT/ACTION`
//! with ACTION `drain`, `disable` or `enable`.
//!
//! - `drain`: no new sessions; established ones go on until they end.
//! - `disable`: no new sessions, and the established ones are closed now, counted as
//!   `backend_disabled` in the sessions-closed metric.
//! - `enable`: new sessions again (health permitting).
//!
//! The state lives in the backend's shared state, like its health and counters: it survives
//! reloads that keep the backend (same server, same `host:port`) and is lost when the backend
//! leaves the config or the process restarts. It is independent of health: a drained backend
//! is still checked, and a disabled one that comes back up stays disabled.
//!
//! No session escapes `disable`: the state is stored before the backend's closer is swapped,
//! and a connecting session re-reads the state after taking its closer (see
//! `server::connect_with_retry`), so it either holds the old closer (and is closed) or sees
//! the new state (and skips the backend).

use hyper::{Response, StatusCode};
use tracing::info;

use super::response::{self, Body};
use super::route::AdminAction;
use super::stats::{BackendReport, admin_name};
use crate::backend::Admin;
use crate::stats::SessionEnd;
use crate::supervisor::Supervisor;

/// Applies `action` to backend `target` of server `server`; answers the backend's report.
pub fn apply(
    supervisor: &Supervisor,
    server: &str,
    target: &str,
    action: AdminAction,
) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    let Some(found) = snapshot.server(server) else {
        return response::error(StatusCode::NOT_FOUND, format!("no server {server:?}"));
    };
    let Some(backend) = found.pool.find(target) else {
        return response::error(
            StatusCode::NOT_FOUND,
            format!("server {server:?} has no backend {target:?}"),
        );
    };
    let state = &backend.state;
    let before = state.admin();
    let after = match action {
        AdminAction::Drain => Admin::Draining,
        AdminAction::Disable => Admin::Disabled,
        AdminAction::Enable => Admin::Enabled,
    };
    state.set_admin(after);
    if after == Admin::Disabled {
        // After the store: sessions established from now on cannot pick this backend.
        state.close_sessions(SessionEnd::BackendDisabled);
    }
    info!(
        server,
        backend = %backend.target,
        from = admin_name(before),
        to = admin_name(after),
        sessions = state.stats.active.load(std::sync::atomic::Ordering::Relaxed),
        "backend admin state set through the API"
    );
    response::json(StatusCode::OK, &BackendReport::of(backend))
}
