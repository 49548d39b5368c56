//! The immutable runtime view of a config: servers with their pools and balancers.
//!
//! The supervisor publishes one [`Snapshot`] through an `ArcSwap`; each accepted connection
//! loads it once and keeps the `Arc<Server>` it found for its whole life, so a reload never
//! changes a session under its feet. A new snapshot is built from a new config and the previous
//! snapshot: servers and backends that stay keep their counters and health (their state `Arc`s
//! are carried over, keyed by server name and backend target).

mod sni;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, BackendState, Health};
use crate::balance::ClientIpForm;
use crate::client_limits::ClientTable;
use crate::config::{CheckKind, Config, InitialStatus, RuntimeConfig, ServerConfig};
use crate::events::Events;
use crate::forward;
use crate::logging::RateLimit;
use crate::logging::access::AccessLog;
use crate::pool::Pool;
use crate::stats::ServerStats;
use crate::tls::{self, TlsSetupError};

pub use sni::SniRouter;

/// Everything a connection needs to know, as of one config generation.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    servers: BTreeMap<String, Arc<Server>>,
    /// `forwarding_memory`: one budget for every server, carried over and re-limited on reload.
    pub forwarding_budget: Arc<forward::Budget>,
    /// Recent health transitions of every server, carried over by every reload.
    pub events: Arc<Events>,
    /// Certificates for `acme_hosts`, carried over by every reload; the ACME task fills it.
    pub acme: Arc<tls::AcmeCertificates>,
    /// `[logging] access_log`: carried over by a reload that keeps its settings.
    pub access_log: Option<Arc<AccessLog>>,
    /// Access log lines dropped (a full queue, an unwritable file), carried over by every
    /// reload.
    pub access_log_dropped: Arc<AtomicU64>,
}

impl Snapshot {
    /// Builds the runtime view of `config`, carrying state over from `previous`. New backends'
    /// sessions also close when `all_sessions` is cancelled. TLS certificates, keys and CA
    /// files are read now (blocking): call it at start-up or on the reload path.
    ///
    /// # Errors
    /// A server's TLS files cannot be used.
    pub fn new(
        config: Config,
        previous: Option<&Snapshot>,
        all_sessions: &CancellationToken,
    ) -> Result<Self, ServerTlsError> {
        let budget_limit = config.runtime.forwarding_memory;
        let forwarding_budget = previous.map_or_else(
            || Arc::new(forward::Budget::new(budget_limit)),
            |snapshot| Arc::clone(&snapshot.forwarding_budget),
        );
        forwarding_budget.set_limit(budget_limit);
        let events = previous.map_or_else(Arc::default, |snapshot| Arc::clone(&snapshot.events));
        let acme = previous.map_or_else(Arc::default, |snapshot| Arc::clone(&snapshot.acme));
        let access_log_dropped = previous.map_or_else(Arc::default, |snapshot| {
            Arc::clone(&snapshot.access_log_dropped)
        });
        let access_log = config.logging.access_log.as_ref().and_then(|settings| {
            let kept = previous
                .and_then(|snapshot| snapshot.access_log.as_ref())
                .filter(|log| log.config() == settings);
            match kept {
                Some(log) => Some(Arc::clone(log)),
                None => AccessLog::start(settings.clone(), Arc::clone(&access_log_dropped))
                    .map(Arc::new),
            }
        });
        let servers = config
            .servers
            .iter()
            .map(|(name, server)| {
                let origin = match previous {
                    None => Origin::Start,
                    Some(snapshot) => Origin::Reload(snapshot.server(name).map(Arc::as_ref)),
                };
                let mut server = Server::new(
                    server.clone(),
                    &config.runtime,
                    &forwarding_budget,
                    &events,
                    &acme,
                    origin,
                    all_sessions,
                )?;
                server.access_log.clone_from(&access_log);
                Ok((name.clone(), Arc::new(server)))
            })
            .collect::<Result<_, ServerTlsError>>()?;
        Ok(Self {
            config: Arc::new(config),
            servers,
            forwarding_budget,
            events,
            acme,
            access_log,
            access_log_dropped,
        })
    }

    pub fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.get(name)
    }

    pub fn servers(&self) -> impl Iterator<Item = &Arc<Server>> {
        self.servers.values()
    }
}

/// One `[servers.NAME]` of a snapshot.
#[derive(Debug)]
pub struct Server {
    pub config: ServerConfig,
    pub pool: Pool,
    /// Shared with the previous and next snapshots that keep this server.
    pub stats: Arc<ServerStats>,
    pub forward: forward::Options,
    pub log_limits: ServerLogLimits,
    /// The snapshot's health transitions, where this server's flips are recorded (passive
    /// ones by sessions, which see only their server).
    pub events: Arc<Events>,
    /// `[tls]`: the certificate as read when this snapshot was built.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// `[backends_tls]`.
    pub backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// `[sni]`.
    pub sni: Option<SniRouter>,
    /// `[client_limits]`: carried over by a reload that keeps the same limits, so open
    /// sessions stay counted.
    pub clients: Option<Arc<ClientTable>>,
    /// The snapshot's access log, which this server's sessions write to.
    pub access_log: Option<Arc<AccessLog>>,
}

/// A server whose TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("server {server:?}: {error}")]
pub struct ServerTlsError {
    pub server: String,
    /// In the message, so not a `source()`.
    pub error: TlsSetupError,
}

/// Rate limits for the per-client events of one server.
#[derive(Debug, Default)]
pub struct ServerLogLimits {
    pub accept: RateLimit,
    pub denied: RateLimit,
    pub over_limit: RateLimit,
    pub unserved: RateLimit,
    /// Backend connects failing for lack of local descriptors, memory or ports.
    pub exhausted: RateLimit,
    /// Client TLS handshakes (or ClientHellos) that failed.
    pub handshake: RateLimit,
    /// Clients no backend's `sni=` could serve.
    pub sni_rejected: RateLimit,
    /// Clients refused by `[client_limits]`.
    pub client_limited: RateLimit,
    /// Connections closed by `[accept_proxy]`: untrusted, or no valid header.
    pub proxy_refused: RateLimit,
}

/// Where a server's runtime state comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin<'a> {
    /// The process starts: backends begin with the configured `initial_status`.
    Start,
    /// A reload, with this server's previous generation if it had one: backends that stay keep
    /// their state; new ones start down until their first check passes, so a reload never
    /// sends clients to a backend nobody has checked (gobetween made them live at once).
    Reload(Option<&'a Server>),
}

impl Server {
    pub fn new(
        config: ServerConfig,
        runtime: &RuntimeConfig,
        forwarding_budget: &Arc<forward::Budget>,
        events: &Arc<Events>,
        acme: &Arc<tls::AcmeCertificates>,
        origin: Origin<'_>,
        all_sessions: &CancellationToken,
    ) -> Result<Self, ServerTlsError> {
        let tls_error = |error| ServerTlsError {
            server: config.name.clone(),
            error,
        };
        let tls_acceptor = match &config.tls {
            Some(termination) => Some(tls::server_config(termination, acme).map_err(tls_error)?),
            None => None,
        };
        let backend_tls = match &config.backends_tls {
            Some(settings) => Some(tls::backend_config(settings).map_err(tls_error)?),
            None => None,
        };
        let checked = !matches!(config.healthcheck.kind, CheckKind::None);
        let initial_health = match (origin, config.healthcheck.initial_status) {
            _ if !checked => Health::Up,
            (Origin::Start, InitialStatus::Healthy) => Health::Up,
            (Origin::Start, InitialStatus::Unhealthy) | (Origin::Reload(_), _) => Health::Down,
        };
        let previous = match origin {
            Origin::Start => None,
            Origin::Reload(previous) => previous,
        };
        let backends = config
            .backends
            .iter()
            .map(|spec| {
                let state = previous
                    .and_then(|server| server.pool.find(&spec.target()))
                    .map(|backend| Arc::clone(&backend.state))
                    .unwrap_or_else(|| Arc::new(BackendState::new(initial_health, all_sessions)));
                Arc::new(Backend::new(spec.clone(), state))
            })
            .collect();
        let forward = forward::Options {
            client_idle_timeout: config.client_idle_timeout,
            backend_idle_timeout: config.backend_idle_timeout,
            mode: runtime.forwarding,
            pipe_size: runtime.pipe_size,
            copy_buffer_size: runtime.copy_buffer_size,
            budget: Arc::clone(forwarding_budget),
        };
        let pool = Pool::with_client_form(
            config.balance,
            ClientIpForm::for_bind(&config.bind),
            backends,
        )
        .with_slow_start(config.slow_start);
        let clients = config.client_limits.map(|limits| {
            previous
                .and_then(|server| server.clients.as_ref())
                .filter(|table| *table.limits() == limits)
                .map_or_else(|| Arc::new(ClientTable::new(limits)), Arc::clone)
        });
        Ok(Self {
            sni: config.sni.as_ref().map(|sni| SniRouter::new(sni, &pool)),
            clients,
            access_log: None,
            pool,
            stats: previous.map_or_else(Arc::default, |server| Arc::clone(&server.stats)),
            forward,
            log_limits: ServerLogLimits::default(),
            events: Arc::clone(events),
            tls_server: tls_acceptor,
            backend_tls,
            config,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(forwarding_memory: usize) -> Config {
        let text = format!(
            "[betwixt]\nforwarding_memory = {forwarding_memory}\n\
             [servers.a]\nbind = \"127.0.0.1:0\"\n\
             [servers.a.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n\
             [servers.b]\nbind = \"127.0.0.1:0\"\n\
             [servers.b.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n"
        );
        crate::config::load_str("test.toml", &text, &Default::default())
            .unwrap()
            .config
    }

    /// One forwarding budget for every server, kept by a reload with the new limit, so
    /// sessions of the old and new generations share the cap.
    #[test]
    fn servers_share_one_forwarding_budget_across_reloads() {
        let all_sessions = CancellationToken::new();
        let first = Snapshot::new(config(1 << 20), None, &all_sessions).unwrap();
        let budget = |snapshot: &Snapshot, name: &str| {
            Arc::clone(&snapshot.server(name).unwrap().forward.budget)
        };
        assert!(Arc::ptr_eq(&budget(&first, "a"), &budget(&first, "b")));
        assert_eq!(first.forwarding_budget.limit(), 1 << 20);
        let second = Snapshot::new(config(2 << 20), Some(&first), &all_sessions).unwrap();
        assert!(Arc::ptr_eq(&budget(&first, "a"), &budget(&second, "b")));
        assert_eq!(second.forwarding_budget.limit(), 2 << 20);
    }
}
