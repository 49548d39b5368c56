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
//! `session::connect::Walk::connect`), so it either holds the old closer (and is closed) or sees
//! the new state (and skips the backend).

use hyper::{Response, StatusCode};

use super::route::AdminAction;
use super::wire;
use crate::backend::Admin;
use crate::http::response::{self, Body};
use crate::supervisor::Supervisor;

/// Applies `action` to backend `target` of server `server`; answers the backend's report.
pub(super) fn apply(
    supervisor: &Supervisor,
    server: &str,
    target: &str,
    action: AdminAction,
) -> Response<Body> {
    let admin = match action {
        AdminAction::Drain => Admin::Draining,
        AdminAction::Disable => Admin::Disabled,
        AdminAction::Enable => Admin::Enabled,
    };
    match supervisor.set_backend_admin(server, target, admin) {
        Ok(backend) => response::json(StatusCode::OK, &wire::Backend::of(&backend)),
        Err(error) => response::error(StatusCode::NOT_FOUND, error.to_string()),
    }
}
