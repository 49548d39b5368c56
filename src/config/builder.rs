//! A typed way to write a config in Rust, for programs that embed betwixt: [`Builder`] and
//! [`ServerBuilder`] fill in the same raw form a file parses into, and [`Builder::build`] runs
//! the same validation, so a built config and a file with the same keys are the same config.
//!
//! The common keys have methods; every other gobetween or betwixt key is reachable through
//! [`ServerBuilder::with_raw`] and [`Builder::with_raw`].

use std::time::Duration;

use super::duration::format_duration;
use super::raw::{RawApi, RawConfig, RawDiscovery, RawHealthcheck, RawMetrics, RawServer};
use super::{BalanceKind, Config, ConfigErrors, validate};

/// The name built configs go by in error messages.
const SOURCE: &str = "builder";

/// A whole config: servers plus the optional `[api]` and `[metrics]` listeners.
///
/// ```
/// use std::time::Duration;
/// use betwixt::config::{BalanceKind, Builder, ServerBuilder};
///
/// let config = Builder::new()
///     .server(
///         "k3s",
///         ServerBuilder::new("127.0.0.1:6443")
///             .balance(BalanceKind::LeastConn)
///             .backends(["10.0.0.11:6443", "10.0.0.12:6443", "10.0.0.13:6443"])
///             .ping_check(Duration::from_secs(2)),
///     )
///     .metrics("127.0.0.1:9284")
///     .build()
///     .expect("a valid config");
/// assert_eq!(config.servers["k3s"].backends.len(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Builder {
    raw: RawConfig,
}

impl Builder {
    /// An empty config: no servers, API and metrics off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `[servers.NAME]`.
    pub fn server(mut self, name: impl Into<String>, server: ServerBuilder) -> Self {
        self.raw.servers.insert(name.into(), server.raw);
        self
    }

    /// Serves the REST API on `bind` (`host:port`), without authentication.
    pub fn api(mut self, bind: impl Into<String>) -> Self {
        self.raw.api = Some(RawApi {
            enabled: Some(true),
            bind: Some(bind.into()),
            ..RawApi::default()
        });
        self
    }

    /// Serves `GET /metrics` on `bind` (`host:port`).
    pub fn metrics(mut self, bind: impl Into<String>) -> Self {
        self.raw.metrics = Some(RawMetrics {
            enabled: Some(true),
            bind: Some(bind.into()),
        });
        self
    }

    /// Sets any other key of the file's form.
    pub fn with_raw(mut self, edit: impl FnOnce(&mut RawConfig)) -> Self {
        edit(&mut self.raw);
        self
    }

    /// Validates the config as a file with the same keys would be.
    ///
    /// # Errors
    /// Every problem found, each naming its key (as `builder: servers.NAME.KEY: ...`).
    pub fn build(self) -> Result<Config, ConfigErrors> {
        validate::validate(SOURCE, &self.raw)
            .map(|(config, _warnings)| config)
            .map_err(ConfigErrors)
    }
}

/// One `[servers.NAME]`: a TCP listener and its static backends.
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    raw: RawServer,
}

impl ServerBuilder {
    /// A server listening on `bind` (`host:port`, `:port` for every address), balancing with
    /// `weight` (gobetween's default) over no backends yet.
    pub fn new(bind: impl Into<String>) -> Self {
        Self {
            raw: RawServer {
                bind: Some(bind.into()),
                ..RawServer::default()
            },
        }
    }

    pub fn balance(mut self, balance: BalanceKind) -> Self {
        self.raw.balance = Some(balance.to_string());
        self
    }

    /// Adds one backend in gobetween's `static_list` grammar: `host:port`, optionally followed
    /// by `weight=N`, `priority=N`, `max_connections=N`, `sni=NAME`.
    pub fn backend(mut self, entry: impl Into<String>) -> Self {
        let discovery = self.raw.discovery.get_or_insert_with(RawDiscovery::default);
        discovery.kind.get_or_insert_with(|| "static".to_owned());
        discovery
            .static_list
            .get_or_insert_with(Vec::new)
            .push(entry.into());
        self
    }

    /// Adds several backends, as [`backend`](Self::backend).
    pub fn backends<I, S>(self, entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        entries.into_iter().fold(self, Self::backend)
    }

    /// At most `limit` client sessions at once.
    pub fn max_connections(mut self, limit: u32) -> Self {
        self.raw.max_connections = Some(i64::from(limit));
        self
    }

    /// How long a connect to one backend may take before the next is tried.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.raw.backend_connection_timeout = Some(format_duration(timeout));
        self
    }

    /// Closes a session whose client sent nothing for `timeout`.
    pub fn client_idle_timeout(mut self, timeout: Duration) -> Self {
        self.raw.client_idle_timeout = Some(format_duration(timeout));
        self
    }

    /// Closes a session whose backend sent nothing for `timeout`.
    pub fn backend_idle_timeout(mut self, timeout: Duration) -> Self {
        self.raw.backend_idle_timeout = Some(format_duration(timeout));
        self
    }

    /// A TCP connect check every `interval` (gobetween's `ping`).
    pub fn ping_check(mut self, interval: Duration) -> Self {
        self.raw.healthcheck = Some(RawHealthcheck {
            kind: Some("ping".to_owned()),
            interval: Some(format_duration(interval)),
            ..RawHealthcheck::default()
        });
        self
    }

    /// Sets any other key of `[servers.NAME]` and its tables.
    pub fn with_raw(mut self, edit: impl FnOnce(&mut RawServer)) -> Self {
        edit(&mut self.raw);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;

    #[test]
    fn built_config_equals_the_file_with_the_same_keys() {
        let built = Builder::new()
            .server(
                "k3s",
                ServerBuilder::new(":6443")
                    .balance(BalanceKind::RoundRobin)
                    .backends(["10.0.0.1:6443 weight=2", "10.0.0.2:6443"])
                    .connect_timeout(Duration::from_millis(1500))
                    .ping_check(Duration::from_secs(2)),
            )
            .build()
            .unwrap();
        let text = r#"
            [servers.k3s]
            bind = ":6443"
            balance = "roundrobin"
            backend_connection_timeout = "1.5s"
            [servers.k3s.discovery]
            kind = "static"
            static_list = ["10.0.0.1:6443 weight=2", "10.0.0.2:6443"]
            [servers.k3s.healthcheck]
            kind = "ping"
            interval = "2s"
        "#;
        let from_file = load_str("k3s.toml", text, &Default::default())
            .unwrap()
            .config;
        assert_eq!(built.servers, from_file.servers);
    }

    #[test]
    fn errors_name_the_key() {
        let errors = Builder::new()
            .server("k3s", ServerBuilder::new(":6443").backend("no-port"))
            .build()
            .unwrap_err();
        let text = errors.to_string();
        assert!(
            text.starts_with("builder: servers.k3s.discovery.static_list"),
            "{text}"
        );
    }
}
