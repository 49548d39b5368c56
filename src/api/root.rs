//! `GET /` (process information) and `GET /dump` (the running configuration), as gobetween.
//! A browser asking for `/` gets the status page instead ([`page`](super::page)).
//!
//! `/dump` serialises the running [`RawConfig`](crate::config::raw::RawConfig): the file as
//! loaded, with the servers added or removed through the API since. Like gobetween, those
//! changes are not written back to the file; a SIGHUP reload from the file replaces them.
//!
//! Unlike gobetween, secrets (the `[api.basic_auth]` password, discovery credentials; see
//! [`secrets`](super::secrets)) are masked unless the query asks for them with
//! `secrets=true`. With `[api.basic_auth]` on, every `/dump` request has passed it, so only a
//! client that knows the password can ask; without basic auth there is no password to show,
//! and the API is open to whoever reaches it anyway. The default keeps a dump pasted into a
//! ticket or a log free of secrets.

use std::time::SystemTime;

use hyper::header::{HeaderValue, VARY};
use hyper::{Response, StatusCode};

use super::wire::{ConfigurationSource, ProcessInfo};
use super::{clock, secrets};
use crate::http::response::{self, Body};
use crate::supervisor::Supervisor;

/// Answers `GET /`.
pub(super) fn info(supervisor: &Supervisor, source: &ConfigurationSource) -> Response<Body> {
    let started = supervisor.process_stats().started_at;
    let now = SystemTime::now();
    let info = ProcessInfo {
        configuration: source.clone(),
        pid: std::process::id(),
        start_time: clock::rfc3339(started),
        time: clock::rfc3339(now),
        uptime: clock::go_duration(now.duration_since(started).unwrap_or_default()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let mut response = response::json(StatusCode::OK, &info);
    // A browser gets the status page at the same URL: caches must key on Accept.
    response
        .headers_mut()
        .insert(VARY, HeaderValue::from_static("Accept"));
    response
}

/// Answers `GET /dump?format=toml|json&secrets=true|false` (default toml, secrets masked), as
/// text like gobetween.
pub(super) fn dump(supervisor: &Supervisor, query: Option<&str>) -> Response<Body> {
    let parameter = |name: &str| {
        query
            .into_iter()
            .flat_map(|query| query.split('&'))
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
    };
    let format = parameter("format").unwrap_or("toml");
    let reveal = match parameter("secrets") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return response::error(
                StatusCode::BAD_REQUEST,
                format!("secrets={other:?}: expected true or false"),
            );
        }
    };
    let snapshot = supervisor.snapshot();
    let running = &snapshot.config.raw;
    let masked;
    let raw = if reveal {
        running
    } else {
        masked = secrets::masked(running);
        &masked
    };
    let text = match format {
        "toml" => toml::to_string(raw).map_err(|error| error.to_string()),
        "json" => response::indented(raw)
            .map(|json| String::from_utf8_lossy(&json).into_owned())
            .map_err(|error| error.to_string()),
        other => {
            return response::error(
                StatusCode::BAD_REQUEST,
                format!("unknown format {other:?}; expected toml or json"),
            );
        }
    };
    match text {
        Ok(text) => response::text(StatusCode::OK, text),
        Err(error) => response::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the configuration as {format}: {error}"),
        ),
    }
}
