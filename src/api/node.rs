//! The node as a whole, for a VRRP engine such as keepalived: `GET /healthz` (whether this
//! node should hold the virtual address) and drain control (`GET /drain`, `POST /drain`,
//! `POST /undrain`).
//!
//! `/healthz` is public like `/ping` (no credentials, no `Host` check) so a `track_script`
//! needs no password; it says `ok` or `not ok` and nothing else. What is wrong is on the
//! authenticated endpoints and in the log.

use std::time::Duration;

use hyper::{Response, StatusCode};
use serde::Serialize;

use crate::config::duration::{format_duration, parse_duration};
use crate::http::response::{self, Body};
use crate::supervisor::{Fitness, NodeDrain, Supervisor};

/// How long sessions may go on after `POST /drain` without `deadline=`.
pub const DEFAULT_DRAIN_DEADLINE: Duration = Duration::from_secs(300);

/// What `/drain` and `/undrain` answer.
#[derive(Debug, Serialize)]
struct DrainReport {
    /// `serving`, `draining` or `drained`.
    state: &'static str,
    /// Sessions still open while draining.
    sessions: usize,
    /// Time left before the open sessions are closed (Go syntax), while draining.
    deadline_in: Option<String>,
}

impl DrainReport {
    fn of(state: NodeDrain) -> Self {
        match state {
            NodeDrain::Serving => Self {
                state: "serving",
                sessions: 0,
                deadline_in: None,
            },
            NodeDrain::Draining { sessions, left } => Self {
                state: "draining",
                sessions,
                deadline_in: Some(format_duration(left)),
            },
            NodeDrain::Drained => Self {
                state: "drained",
                sessions: 0,
                deadline_in: None,
            },
        }
    }
}

/// Answers `GET /healthz`: 200 `ok`, or 503 `not ok`.
pub(super) fn healthz(supervisor: &Supervisor) -> Response<Body> {
    match supervisor.fitness() {
        Fitness::Fit => response::text(StatusCode::OK, "ok\n"),
        Fitness::Drained | Fitness::NoBackend { .. } => {
            response::text(StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
        }
    }
}

/// Answers `GET /drain`.
pub(super) fn state(supervisor: &Supervisor) -> Response<Body> {
    response::json(StatusCode::OK, &DrainReport::of(supervisor.drain_state()))
}

/// Answers `POST /drain?deadline=DURATION` (Go syntax, default 5m).
pub(super) async fn drain(supervisor: &Supervisor, query: Option<&str>) -> Response<Body> {
    let given = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("deadline="));
    let deadline = match given.map(parse_duration) {
        None => DEFAULT_DRAIN_DEADLINE,
        Some(Ok(deadline)) => deadline,
        Some(Err(error)) => {
            return response::error(StatusCode::BAD_REQUEST, format!("deadline: {error}"));
        }
    };
    let state = supervisor.drain(deadline).await;
    response::json(StatusCode::OK, &DrainReport::of(state))
}

/// Answers `POST /undrain`.
pub(super) fn undrain(supervisor: &Supervisor) -> Response<Body> {
    match supervisor.undrain() {
        Ok(state) => response::json(StatusCode::OK, &DrainReport::of(state)),
        Err(error) => response::error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}
