//! `/servers`: list, read, add and remove servers, and `GET /servers/NAME/stats`, as gobetween.
//!
//! A server is shown as its `[servers.NAME]` table in JSON, as gobetween shows the config it
//! prepared: the `[defaults]` it inherits and gobetween's defaults filled in, protocol and
//! balance explicit, a health check of kind `none` when it has none, and absent optional
//! tables as `null`. Adding or removing one builds the next [`RawConfig`] from the running one, validates
//! it whole (the same checks as a file: a new bind that collides with another listener is
//! refused by name) and applies it with [`Supervisor::update`], like a reload: nothing else
//! changes, and a removed server's sessions drain. gobetween's answers are kept: `null` with
//! `200` for a server that does not exist, `409` for a name already taken; a config error is
//! `400` with every problem, each naming its key.
//!
//! A server whose health check or discovery is of kind `exec` runs a command as the daemon's
//! user; the API refuses it (`403`) unless the config file sets `[api] allow_exec = true`.
//! Discovery secrets are masked in what `GET` shows ([`secrets`](super::secrets)).
//!
//! Validation resolves bind names with the system's blocking resolver and walks every
//! backend, so it runs on tokio's blocking pool, before the reload lock is taken, against the
//! config running then. The update applies the result only if that config is still the one
//! running; when a reload or another change came in between, the change is validated again
//! on the new config, at most [`ATTEMPTS`] times (each lost race counts as a refused reload).

use std::sync::Arc;

use hyper::{Response, StatusCode};
use tracing::{info, warn};

use super::{secrets, wire};
use crate::config::raw::{self, RawConfig, RawServer};
use crate::config::{Config, ConfigError, ConfigErrors, Format, duration, validate};
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
    #[error(
        "servers.{server}.{key} = \"exec\" runs commands as the daemon's user; the API accepts it \
         only when the config file sets [api] allow_exec = true"
    )]
    Exec { server: String, key: &'static str },
    /// Lost the race with other changes [`ATTEMPTS`] times.
    #[error("the configuration kept changing while this change was validated; try again")]
    Busy,
    /// The configuration that was validated is no longer the one running.
    #[error("the configuration changed during validation")]
    Stale,
    #[error("validating the change failed: {0}")]
    Aborted(String),
}

impl ChangeError {
    fn into_response(self) -> Response<Body> {
        let status = match &self {
            Self::Exists(_) | Self::Start(_) | Self::Busy | Self::Stale => StatusCode::CONFLICT,
            Self::Missing(_) => return response::json(StatusCode::OK, &()),
            Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Exec { .. } => StatusCode::FORBIDDEN,
            Self::Aborted(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        warn!(error = %self, "server change through the API refused");
        response::error(status, self.to_string())
    }
}

/// `GET /servers`: every server, by name.
pub fn list(supervisor: &Supervisor) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    let config = &snapshot.config;
    let servers: std::collections::BTreeMap<&str, PreparedServer> = config
        .servers
        .keys()
        .filter_map(|name| Some((name.as_str(), prepared(config, name)?)))
        .collect();
    response::json(StatusCode::OK, &servers)
}

/// `GET /servers/NAME`: the server, or `null`.
pub fn get(supervisor: &Supervisor, name: &str) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    response::json(StatusCode::OK, &prepared(&snapshot.config, name))
}

/// `GET /servers/NAME/stats`: its counters, or `null`.
pub fn stats(supervisor: &Supervisor, name: &str) -> Response<Body> {
    let snapshot = supervisor.snapshot();
    let report = snapshot.server(name).map(|server| wire::Server::of(server));
    response::json(StatusCode::OK, &report)
}

/// `POST /servers/NAME` with the server's table as JSON; `allow_exec` is `[api] allow_exec`.
pub async fn create(
    supervisor: &Supervisor,
    name: &str,
    body: &[u8],
    allow_exec: bool,
) -> Response<Body> {
    let origin = format!("POST /servers/{name}");
    let server = match parse_server(&origin, body) {
        Ok(server) => server,
        Err(error) => return response::error(StatusCode::BAD_REQUEST, error.to_string()),
    };
    if let Some(key) = exec_key(&server).filter(|_| !allow_exec) {
        let server = name.to_owned();
        return ChangeError::Exec { server, key }.into_response();
    }
    let result = change(supervisor, name, origin, |raw| {
        if raw.servers.contains_key(name) {
            return Err(ChangeError::Exists(name.to_owned()));
        }
        raw.servers.insert(name.to_owned(), server.clone());
        Ok(())
    })
    .await;
    answer(result, name, "added")
}

/// `DELETE /servers/NAME`: stops its listener; its sessions drain.
pub async fn delete(supervisor: &Supervisor, name: &str) -> Response<Body> {
    let origin = format!("DELETE /servers/{name}");
    let result = change(supervisor, name, origin, |raw| {
        raw.servers
            .remove(name)
            .map(drop)
            .ok_or_else(|| ChangeError::Missing(name.to_owned()))
    })
    .await;
    answer(result, name, "removed")
}

/// Times a change is validated again after losing a race with another change.
const ATTEMPTS: usize = 3;

/// Applies `edit` to the running raw config, validates the result off the runtime's workers
/// and swaps it in, unless the running config changed meanwhile (then again, on the new one).
/// An `edit` that refuses (name taken, no such server) is answered without counting a
/// refused reload.
async fn change(
    supervisor: &Supervisor,
    name: &str,
    origin: String,
    edit: impl Fn(&mut RawConfig) -> Result<(), ChangeError>,
) -> Result<ReloadSummary, ChangeError> {
    for _ in 0..ATTEMPTS {
        let base = Arc::clone(&supervisor.snapshot().config);
        let mut raw = base.raw.clone();
        edit(&mut raw)?;
        let (origin, name) = (origin.clone(), name.to_owned());
        let config = off_worker(move || revalidate(&origin, &name, &raw)).await??;
        // `base` is held, so its address cannot be reused by a newer config.
        let result = supervisor
            .update(|current| {
                if std::ptr::eq(current, Arc::as_ptr(&base)) {
                    Ok(config)
                } else {
                    Err(ChangeError::Stale)
                }
            })
            .await;
        match result {
            Err(ChangeError::Stale) => continue,
            result => return result,
        }
    }
    Err(ChangeError::Busy)
}

/// Runs `work` on tokio's blocking pool, so that blocking DNS lookups and long validations do
/// not stall a runtime worker (on a current-thread runtime, the only one).
async fn off_worker<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ChangeError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ChangeError::Aborted(error.to_string()))
}

/// The key of a posted server that would run commands: a health check or discovery of kind
/// `exec` (compared loosely, so that no spelling a future validation accepts slips through).
fn exec_key(server: &RawServer) -> Option<&'static str> {
    let is_exec = |kind: &Option<String>| {
        kind.as_deref()
            .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("exec"))
    };
    let check = server.healthcheck.as_ref().map(|check| &check.kind);
    let discovery = server.discovery.as_ref().map(|discovery| &discovery.kind);
    if check.is_some_and(is_exec) {
        Some("healthcheck.kind")
    } else if discovery.is_some_and(is_exec) {
        Some("discovery.kind")
    } else {
        None
    }
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
        inherit(&mut server.slow_start, &defaults.slow_start);
        if let Some(inherited) = &defaults.rebalance {
            let own = server.rebalance.get_or_insert_with(Default::default);
            inherit(&mut own.interval, &inherited.interval);
            inherit(&mut own.tolerance, &inherited.tolerance);
            inherit(&mut own.max_fraction, &inherited.max_fraction);
            inherit(&mut own.min_age, &inherited.min_age);
        }
        inherit(
            &mut server.first_response_timeout,
            &defaults.first_response_timeout,
        );
        inherit(&mut server.replay, &defaults.replay);
        inherit(&mut server.client_limits, &defaults.client_limits);
    }
    server.protocol.get_or_insert_with(|| "tcp".to_owned());
    secrets::mask_server(&mut server);
    if let Some(validated) = config.servers.get(name) {
        server.balance = Some(validated.balance.as_str().to_owned());
    }
    Some(server)
}

/// A server as gobetween's `GET /servers/NAME` shows its prepared config: the optional tables
/// `null` when absent (Go's nil pointers), everything else as in [`RawServer`].
#[derive(Debug, serde::Serialize)]
struct PreparedServer {
    #[serde(flatten)]
    rest: RawServer,
    sni: Option<raw::RawSni>,
    tls: Option<raw::RawTls>,
    backends_tls: Option<raw::RawBackendsTls>,
    udp: Option<raw::RawUdp>,
    access: Option<raw::RawAccess>,
    proxy_protocol: Option<raw::RawProxyProtocol>,
}

/// [`effective`] with the rest of gobetween's prepare step (`manager.prepareConfig`): unset
/// limits and timeouts as `0` / `"0"`, discovery's failpolicy, interval and timeout, and a
/// health check of kind `none` when there is none. An unset connect timeout shows the one
/// betwixt applies (5s), not gobetween's `"0"`: the API shows what runs.
fn prepared(config: &Config, name: &str) -> Option<PreparedServer> {
    let mut server = effective(config, name)?;
    let zero = || "0".to_owned();
    server.max_connections.get_or_insert(0);
    server.client_idle_timeout.get_or_insert_with(zero);
    server.backend_idle_timeout.get_or_insert_with(zero);
    let connect_timeout = config
        .servers
        .get(name)
        .and_then(|validated| validated.backend_connection_timeout);
    server
        .backend_connection_timeout
        .get_or_insert_with(|| connect_timeout.map_or_else(zero, duration::format_duration));
    if let Some(discovery) = &mut server.discovery {
        discovery
            .failpolicy
            .get_or_insert_with(|| "keeplast".to_owned());
        discovery.interval.get_or_insert_with(zero);
        discovery.timeout.get_or_insert_with(zero);
    }
    let check = server.healthcheck.get_or_insert_with(Default::default);
    check.kind.get_or_insert_with(|| "none".to_owned());
    check.interval.get_or_insert_with(zero);
    check.timeout.get_or_insert_with(zero);
    for count in [&mut check.fails, &mut check.passes] {
        if count.is_none_or(|count| count <= 0) {
            *count = Some(1);
        }
    }
    Some(PreparedServer {
        sni: server.sni.take(),
        tls: server.tls.take(),
        backends_tls: server.backends_tls.take(),
        udp: server.udp.take(),
        access: server.access.take(),
        proxy_protocol: server.proxy_protocol.take(),
        rest: server,
    })
}

fn inherit<T: Clone>(value: &mut Option<T>, default: &Option<T>) {
    if value.is_none() {
        value.clone_from(default);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// The work blocks until a task on the same single-threaded runtime answers: it can only
    /// succeed when the work is not on the runtime's one worker.
    #[tokio::test(flavor = "current_thread")]
    async fn validation_runs_off_the_runtime_worker() {
        let (answer_tx, answer_rx) = mpsc::channel();
        let answering = tokio::spawn(async move { answer_tx.send(()) });
        let answered = off_worker(move || answer_rx.recv_timeout(Duration::from_secs(10)).is_ok())
            .await
            .expect("the work ran");
        assert!(answered, "the runtime was blocked while the work ran");
        answering.await.unwrap().unwrap();
    }

    #[test]
    fn exec_kinds_are_found_however_spelled() {
        let parse = |text: &str| {
            raw::parse::<RawServer>("t", text, Format::Json)
                .unwrap()
                .value
        };
        let exec_check = parse(r#"{"healthcheck": {"kind": " Exec"}}"#);
        assert_eq!(exec_key(&exec_check), Some("healthcheck.kind"));
        let exec_discovery = parse(r#"{"discovery": {"kind": "EXEC"}}"#);
        assert_eq!(exec_key(&exec_discovery), Some("discovery.kind"));
        let plain = parse(
            r#"{"healthcheck": {"kind": "ping", "exec_command": "x"}, "discovery": {"kind": "static"}}"#,
        );
        assert_eq!(exec_key(&plain), None);
    }
}
