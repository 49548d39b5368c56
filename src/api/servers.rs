//! `/servers`: list, read, add and remove servers, and `GET /servers/NAME/stats`, as gobetween.
//!
//! A server is shown as its `[servers.NAME]` table in JSON, with the `[defaults]` it inherits
//! filled in and its protocol and balance made explicit, as gobetween shows the config it
//! runs. Adding or removing one builds the next [`RawConfig`] from the running one, validates
//! it whole (the same checks as a file: a new bind that collides with another listener is
//! refused by name) and applies it with [`Supervisor::update`], like a reload: nothing else
//! changes, and a removed server's sessions drain. gobetween's answers are kept: `null` with
//! `200` for a server that does not exist, `409` for a name already taken; a config error is
//! `400` with every problem, each naming its key.

use hyper::{Response, StatusCode};
use tracing::{info, warn};

use super::wire;
use crate::config::raw::{self, RawConfig, RawServer};
use crate::config::{Config, ConfigError, ConfigErrors, Format, validate};
use crate::http::response::{self, Body};
use crate::supervisor::{ReloadSummary, StartError, Supervisor};

/// Why a change to the servers was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("server {0:?} already exists")]
    Exists(String),
    #[error("no server {0:?}")]
    Missing(String),
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error(transparent)]
    Start(#[from] StartError),
}

impl ChangeError {
    fn into_response(self) -> Response<Body> {
        let status = match &self {
            Self::Exists(_) | Self::Start(_) => StatusCode::CONFLICT,
            Self::Missing(_) => return response::json(StatusCode::OK, &()),
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        warn!(error = %self, "server change through the API refused");
        response::error(status, self.to_string())
    }
}

/// `GET /servers`: every server, by name.
pub fn list(supervisor: &Supervisor) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    let config = &snapshot.config;
    let servers: std::collections::BTreeMap<&str, RawServer> = config
        .servers
        .keys()
        .filter_map(|name| Some((name.as_str(), effective(config, name)?)))
        .collect();
    response::json(StatusCode::OK, &servers)
}

/// `GET /servers/NAME`: the server, or `null`.
pub fn get(supervisor: &Supervisor, name: &str) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    response::json(StatusCode::OK, &effective(&snapshot.config, name))
}

/// `GET /servers/NAME/stats`: its counters, or `null`.
pub fn stats(supervisor: &Supervisor, name: &str) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    let report = snapshot.server(name).map(|server| wire::Server::of(server));
    response::json(StatusCode::OK, &report)
}

/// `POST /servers/NAME` with the server's table as JSON.
pub async fn create(supervisor: &Supervisor, name: &str, body: &[u8]) -> Response<Body> {
    let origin = format!("POST /servers/{name}");
    let server = match parse_server(&origin, body) {
        Ok(server) => server,
        Err(error) => return response::error(StatusCode::BAD_REQUEST, error.to_string()),
    };
    // An obvious conflict is answered without counting a refused reload; the check inside
    // the update decides for requests that race another change.
    if supervisor.snapshot().config.raw.servers.contains_key(name) {
        return ChangeError::Exists(name.to_owned()).into_response();
    }
    let result = supervisor
        .update(|current| {
            if current.raw.servers.contains_key(name) {
                return Err(ChangeError::Exists(name.to_owned()));
            }
            let mut raw = current.raw.clone();
            raw.servers.insert(name.to_owned(), server);
            revalidate(&origin, name, &raw)
        })
        .await;
    answer(result, name, "added")
}

/// `DELETE /servers/NAME`: stops its listener; its sessions drain.
pub async fn delete(supervisor: &Supervisor, name: &str) -> Response<Body> {
    // As in `create`: answered without counting a refused reload.
    if !supervisor.snapshot().config.raw.servers.contains_key(name) {
        return ChangeError::Missing(name.to_owned()).into_response();
    }
    let origin = format!("DELETE /servers/{name}");
    let result = supervisor
        .update(|current| {
            let mut raw = current.raw.clone();
            if raw.servers.remove(name).is_none() {
                return Err(ChangeError::Missing(name.to_owned()));
            }
            revalidate(&origin, name, &raw)
        })
        .await;
    answer(result, name, "removed")
}

/// The reply to a server change: 200 with gobetween's empty body, or the error's status.
fn answer(result: Result<ReloadSummary, ChangeError>, name: &str, done: &str) -> Response<Body> {
    match result {
        Ok(summary) => {
            info!(server = name, %summary, "server {done} through the API");
            response::json(StatusCode::OK, &())
        }
        Err(error) => error.into_response(),
    }
}

/// Parses a posted server; unknown keys are logged and ignored, as in a file.
fn parse_server(origin: &str, body: &[u8]) -> Result<RawServer, ConfigError> {
    let text = std::str::from_utf8(body).map_err(|error| ConfigError::Syntax {
        file: origin.to_owned(),
        message: format!("the body is not UTF-8: {error}"),
    })?;
    let parsed = raw::parse::<RawServer>(origin, text, Format::Json)?;
    for key in &parsed.unknown_keys {
        warn!("{origin}: {key}: unknown key, ignored");
    }
    Ok(parsed.value)
}

/// Validates the whole next config, logging the warnings about the server that changed.
fn revalidate(origin: &str, name: &str, raw: &RawConfig) -> Result<Config, ChangeError> {
    let (config, warnings) = validate::validate(origin, raw)
        .map_err(|errors| ChangeError::Invalid(ConfigErrors(errors)))?;
    let prefix = format!("servers.{name}");
    for warning in warnings.iter().filter(|w| w.key.starts_with(&prefix)) {
        warn!("{warning}");
    }
    Ok(config)
}

/// The server's table as it runs: `[defaults]` filled in where it sets nothing, protocol and
/// balance explicit.
fn effective(config: &Config, name: &str) -> Option<RawServer> {
    let mut server = config.raw.servers.get(name)?.clone();
    if let Some(defaults) = &config.raw.defaults {
        inherit(&mut server.max_connections, &defaults.max_connections);
        inherit(
            &mut server.client_idle_timeout,
            &defaults.client_idle_timeout,
        );
        inherit(
            &mut server.backend_idle_timeout,
            &defaults.backend_idle_timeout,
        );
        inherit(
            &mut server.backend_connection_timeout,
            &defaults.backend_connection_timeout,
        );
        inherit(&mut server.connect_attempts, &defaults.connect_attempts);
        inherit(
            &mut server.close_sessions_on_backend_down,
            &defaults.close_sessions_on_backend_down,
        );
        inherit(
            &mut server.close_sessions_on_backend_removal,
            &defaults.close_sessions_on_backend_removal,
        );
    }
    server.protocol.get_or_insert_with(|| "tcp".to_owned());
    if let Some(validated) = config.servers.get(name) {
        server.balance = Some(validated.balance.as_str().to_owned());
    }
    Some(server)
}

fn inherit<T: Clone>(value: &mut Option<T>, default: &Option<T>) {
    if value.is_none() {
        value.clone_from(default);
    }
}
