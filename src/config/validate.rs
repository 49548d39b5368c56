//! Validation: [`RawConfig`] to [`Config`], reporting every problem at once.
//!
//! Each check records its errors and warnings in a `Report` under the full key path
//! (`servers.k3s.discovery.static_list[1]`) and carries on with a placeholder, so one run lists
//! everything wrong with a file. Sections live in submodules: `global` (logging, api, metrics,
//! betwixt), `server` with `bind`, `discovery` and `healthcheck` (with `probe` and
//! `tls_check`).
//!
//! `[defaults]` are merged into each server; an error in a default value is reported once,
//! under `defaults.KEY`, however many servers inherit it.

mod admission;
mod bind;
mod discovery;
mod discovery_sources;
mod escape;
mod global;
mod healthcheck;
mod memory;
mod probe;
mod rebalance;
mod server;
mod tls;
mod tls_check;
mod value;

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::fmt;

use super::raw::{RawConfig, RawDefaults, RawServer};
use super::{BindAddr, Config, ConfigError, ConfigWarning, ServerConfig};

/// Validates a whole config.
///
/// # Errors
/// Every problem found, each an [`ConfigError::Invalid`] naming `file` and the key.
pub fn validate(
    file: &str,
    raw: &RawConfig,
) -> Result<(Config, Vec<ConfigWarning>), Vec<ConfigError>> {
    let mut report = Report::new(file);
    let default_options = raw.defaults.clone().unwrap_or_default();
    server::check_defaults(&mut report, &default_options);
    let logging = global::logging(&mut report, raw.logging.as_ref());
    let api = global::api(&mut report, raw.api.as_ref());
    let metrics = global::metrics(raw.metrics.as_ref());
    let runtime = global::runtime(&mut report, raw.betwixt.as_ref());
    global::ignored_sections(&mut report, raw);
    let mut servers = BTreeMap::new();
    let mut listeners = Vec::new();
    for (name, raw_server) in &raw.servers {
        let bind = server::bind(&mut report, name, raw_server);
        if let Some(bind) = &bind {
            listeners.push((Key::server(name).child("bind"), bind.clone()));
        }
        let acme = raw.acme.as_ref();
        let config = server::server(&mut report, name, raw_server, &default_options, acme, bind);
        if let Some(config) = config {
            servers.insert(name.clone(), config);
        }
    }
    if raw.servers.is_empty() {
        report.warn(
            &Key::root("servers"),
            "no servers configured; betwixt will only serve the API and metrics, if enabled",
        );
    }
    // One responder answers every server's HTTP-01 challenges.
    let acme = servers
        .values()
        .find_map(|server: &ServerConfig| server.tls.as_ref().and_then(|tls| tls.acme.as_ref()));
    if let Some(acme) = acme {
        listeners.push((Key::root("acme").child("http_bind"), acme.http_bind.clone()));
    }
    check_bind_conflicts(&mut report, listeners, &api, &metrics);
    let config = Config {
        logging,
        api,
        metrics,
        runtime,
        servers,
        raw: raw.clone(),
    };
    report.finish(Some(config))
}

/// Validates one `[servers.NAME]` table with `defaults` merged in, as the REST API's
/// `POST /servers/NAME` needs. Bind conflicts with other servers are the caller's to check,
/// with [`BindAddr::conflicts_with`].
///
/// # Errors
/// Every problem found, keys under `servers.NAME` (or `defaults` for inherited values).
pub fn server(
    file: &str,
    name: &str,
    raw: &RawServer,
    defaults: &RawDefaults,
) -> Result<(ServerConfig, Vec<ConfigWarning>), Vec<ConfigError>> {
    let mut report = Report::new(file);
    let bind = server::bind(&mut report, name, raw);
    // `acme_hosts` needs the process-wide [acme] table, which a lone server does not have.
    let config = server::server(&mut report, name, raw, defaults, None, bind);
    report.finish(config)
}

/// Errors on every listener whose address overlaps an earlier one's.
fn check_bind_conflicts(
    report: &mut Report<'_>,
    mut listeners: Vec<(Key, BindAddr)>,
    api: &super::ApiConfig,
    metrics: &super::MetricsConfig,
) {
    let http = [
        ("api", api.enabled, &api.bind),
        ("metrics", metrics.enabled, &metrics.bind),
    ];
    for (section, enabled, text) in http {
        if !enabled {
            continue;
        }
        let key = Key::root(section).child("bind");
        if let Some(bind) = bind::parse_bind(report, &key, text) {
            listeners.push((key, bind));
        }
    }
    for (later, (key, bind)) in listeners.iter().enumerate() {
        let earlier = listeners[..later]
            .iter()
            .find(|(_, other)| bind.conflicts_with(other));
        if let Some((other_key, other)) = earlier {
            let message = format!(
                "{:?} conflicts with {other_key} ({:?}): both listen on port {}",
                bind.text,
                other.text,
                bind.addr.port()
            );
            report.error(key, message);
        }
    }
}

/// Errors and warnings of one validation run, all naming the same file.
struct Report<'f> {
    file: &'f str,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl<'f> Report<'f> {
    fn new(file: &'f str) -> Self {
        Self {
            file,
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn error(&mut self, key: &Key, message: impl Into<String>) {
        self.errors.push(ConfigError::Invalid {
            file: self.file.to_owned(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, key: &Key, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.file.to_owned(),
            key: key.to_string(),
            message: message.into(),
        });
    }

    /// The value and warnings when nothing failed, else the errors; each listed once.
    fn finish<T>(self, value: Option<T>) -> Result<(T, Vec<ConfigWarning>), Vec<ConfigError>> {
        let mut seen = HashSet::new();
        let errors: Vec<_> = self
            .errors
            .into_iter()
            .filter(|error| seen.insert(error.to_string()))
            .collect();
        let mut seen = HashSet::new();
        let warnings = self
            .warnings
            .into_iter()
            .filter(|warning| seen.insert(warning.to_string()))
            .collect();
        match value {
            Some(value) if errors.is_empty() => Ok((value, warnings)),
            _ => Err(errors),
        }
    }
}

/// A dotted key path, built one segment at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key(String);

impl Key {
    fn root(name: &str) -> Self {
        Self(name.to_owned())
    }

    fn server(name: &str) -> Self {
        Self(format!("servers.{name}"))
    }

    fn child(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
