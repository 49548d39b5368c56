//! The library API: run a balancer inside another Rust program, as k3s embeds its agent's
//! load balancer in its own binary.
//!
//! A [`LoadBalancer`] runs on the caller's tokio runtime: its listeners, sessions, health
//! checks and statistics are tasks spawned there. Signals and the pidfile belong to the daemon
//! ([`crate::daemon`]); the REST API and metrics listeners are there if asked for
//! ([`LoadBalancer::serve_endpoints`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::api::wire::ConfigurationSource;
use crate::backend::Admin;
use crate::config::Config;
use crate::endpoints::{EndpointError, Endpoints};
use crate::report::Report;
use crate::supervisor::{ReloadSummary, ShutdownSummary, StartError, Supervisor, UnknownBackend};

/// A running balancer: every `[servers.NAME]` of its config, listening and forwarding.
///
/// Dropping it stops accepting at once and closes the sessions; [`stop`](Self::stop) lets them
/// finish first.
#[derive(Debug)]
pub struct LoadBalancer {
    supervisor: Arc<Supervisor>,
}

impl LoadBalancer {
    /// Binds every server's listener, then starts accepting, checking and counting.
    ///
    /// Must be called within a tokio runtime with I/O and time enabled.
    ///
    /// # Errors
    /// A listener cannot be bound (address in use, permission); nothing was started then.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let supervisor = Supervisor::start(config).await?;
        Ok(Self {
            supervisor: Arc::new(supervisor),
        })
    }

    /// Switches to `config` without dropping a connection: servers and backends that stay
    /// keep their state, counters and sessions; new backends take clients once their first
    /// check passes; removed servers stop accepting and their sessions drain.
    ///
    /// # Errors
    /// A new listener cannot be bound; the running config is kept whole.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, StartError> {
        self.supervisor.reload(config).await
    }

    /// The config running now.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.supervisor.snapshot().config)
    }

    /// The address server `name` listens on (with the port the kernel chose for port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.supervisor.local_addr(name)
    }

    /// Every server, its backends and their counters, now.
    pub fn report(&self) -> Report {
        let snapshot = self.supervisor.snapshot();
        Report::of(&snapshot, |name| self.supervisor.local_addr(name))
    }

    /// Drains, disables or enables backend `target` (`host:port`) of `server`. Draining and
    /// disabled backends take no new sessions; disabling also closes the established ones.
    /// The state lasts as long as the backend stays in the config.
    ///
    /// # Errors
    /// No such server or backend in the running config.
    pub fn set_backend_admin(
        &self,
        server: &str,
        target: &str,
        admin: Admin,
    ) -> Result<(), UnknownBackend> {
        self.supervisor
            .set_backend_admin(server, target, admin)
            .map(drop)
    }

    /// Stops accepting, waits up to `grace` for sessions to end, then closes the rest.
    pub async fn stop(self, grace: Duration) -> ShutdownSummary {
        self.supervisor.shutdown(grace).await
    }

    /// Serves the running config's `[api]` (gobetween's REST API) and `[metrics]`
    /// (Prometheus) listeners, those that are enabled; `config_path` is what `GET /` shows as
    /// the configuration's source.
    ///
    /// # Errors
    /// A listener cannot be bound or its TLS files cannot be used.
    pub fn serve_endpoints(&self, config_path: PathBuf) -> Result<Endpoints, EndpointError> {
        let config = self.config();
        let source = ConfigurationSource::file(&config_path);
        Endpoints::start(&config, Arc::clone(&self.supervisor), source)
    }
}
