//! `GET /` (process information) and `GET /dump` (the running configuration), as gobetween.
//!
//! `/dump` serialises the running [`RawConfig`](crate::config::raw::RawConfig): the file as
//! loaded, with the servers added or removed through the API since. Like gobetween, those
//! changes are not written back to the file; a SIGHUP reload from the file replaces them.

use std::path::Path;
use std::time::SystemTime;

use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::clock;
use super::response::{self, Body};
use crate::supervisor::Supervisor;

/// `GET /`: gobetween's keys, in the order its JSON has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// Where the configuration came from: `{"kind": "file", "path": ...}`.
    pub configuration: ConfigurationSource,
    pub pid: u32,
    /// RFC 3339.
    #[serde(rename = "startTime")]
    pub start_time: String,
    /// RFC 3339, now.
    pub time: String,
    /// Go's duration syntax, `1h2m3.5s`.
    pub uptime: String,
    pub version: String,
}

/// gobetween's `info.Configuration` for `from-file`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationSource {
    pub kind: String,
    /// Empty for sources without a path (gobetween's `from-consul`).
    #[serde(default)]
    pub path: String,
}

/// Answers `GET /`.
pub fn info(supervisor: &Supervisor, config_path: &Path) -> Response<Body> {
    let started = supervisor.process_stats().started_at;
    let now = SystemTime::now();
    let info = ProcessInfo {
        configuration: ConfigurationSource {
            kind: "file".to_owned(),
            path: config_path.display().to_string(),
        },
        pid: std::process::id(),
        start_time: clock::rfc3339(started),
        time: clock::rfc3339(now),
        uptime: clock::go_duration(now.duration_since(started).unwrap_or_default()),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    response::json(StatusCode::OK, &info)
}

/// Answers `GET /dump?format=toml|json` (default toml), as text like gobetween.
pub fn dump(supervisor: &Supervisor, query: Option<&str>) -> Response<Body> {
    let format = query
        .into_iter()
        .flat_map(|query| query.split('&'))
        .find_map(|pair| pair.strip_prefix("format="))
        .unwrap_or("toml");
    let snapshot = supervisor.snapshot();
    let raw = &snapshot.config.raw;
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
