//! A point-in-time report of a running balancer: every server, its backends, their health,
//! admin state and counters. What an embedding program, the tests and `betwixt check` read,
//! instead of reaching into the runtime's atomics.
//!
//! A report is a copy: taking one reads each counter once (relaxed), so counters of one report
//! are not a consistent cut, but each is exact at the moment it was read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::backend::Backend;
pub use crate::backend::{Admin, Health};
use crate::config::BalanceKind;
pub use crate::events::Transition;
use crate::snapshot::{Server, Snapshot};
pub use crate::stats::{HandshakeFailure, SessionEnd};

/// Every server of a running balancer, ordered by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub servers: Vec<ServerReport>,
    /// The most recent backend health flips (at most 50), oldest first, with their reason.
    pub transitions: Vec<Transition>,
    /// Access log lines dropped: the writer's queue was full, or the file could not be
    /// written.
    pub access_log_dropped: u64,
}

impl Report {
    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerReport> {
        self.servers.iter().find(|server| server.name == name)
    }

    pub(crate) fn of(snapshot: &Snapshot, local_addr: impl Fn(&str) -> Option<SocketAddr>) -> Self {
        Self {
            servers: snapshot
                .servers()
                .map(|server| ServerReport::of(server, local_addr(server.name())))
                .collect(),
            transitions: snapshot.events.recent(),
            access_log_dropped: snapshot.access_log_dropped.load(Ordering::Relaxed),
        }
    }
}

/// One `[servers.NAME]`: its listener, balancer, counters and backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReport {
    pub name: String,
    /// The address its listener is bound to (with the port the kernel chose for port 0).
    pub local_addr: Option<SocketAddr>,
    pub balance: BalanceKind,
    /// Client sessions open now, connected to a backend or still connecting.
    pub active: u64,
    /// Clients accepted and admitted.
    pub total: u64,
    /// Clients refused by the `[access]` rules.
    pub denied: u64,
    /// Clients refused because the server was at `max_connections`.
    pub over_limit: u64,
    /// Clients closed because no backend could be connected.
    pub unserved: u64,
    /// `[client_limits]`: clients refused over their `max_connections`.
    pub client_over_connections: u64,
    /// `[client_limits]`: clients refused over their `max_rate`.
    pub client_over_rate: u64,
    /// `[client_limits]`: clients refused because the table was full of active clients.
    pub client_table_full: u64,
    /// `[accept_proxy]`: connections from a source not in `trusted`, closed.
    pub proxy_untrusted: u64,
    /// `[accept_proxy]`: connections closed without a valid PROXY header in time.
    pub proxy_header_failed: u64,
    /// Connects tried after a failed one.
    pub connect_retries: u64,
    /// First flights sent again to another backend after one did not answer them
    /// (`first_response_timeout`, `replay`).
    pub replays: u64,
    /// Sessions whose first response came from a backend they were replayed to.
    pub replays_succeeded: u64,
    /// Sessions whose backend failed before its first byte with no candidate left to try.
    pub replays_exhausted: u64,
    /// Bytes from clients to backends.
    pub to_backends: u64,
    /// Bytes from backends to clients.
    pub to_clients: u64,
    /// UDP: datagrams dropped in either direction (see `betwixt_server_datagrams_dropped_total`).
    pub datagrams_dropped: u64,
    /// How established sessions ended, one count per [`SessionEnd`].
    pub ended: BTreeMap<SessionEnd, u64>,
    /// `[tls]` and `[sni]` counters; all 0 for a server without them.
    pub tls: TlsReport,
    /// Ordered by `host:port`.
    pub backends: Vec<BackendReport>,
    /// The fetches of a dynamic discovery kind; `None` for a static list.
    pub discovery: Option<DiscoveryReport>,
}

/// How a server's discovery has fared since the server was added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryReport {
    /// `exec`, `srv`, ...
    pub kind: String,
    /// Fetches that produced a list.
    pub fetches: u64,
    /// Fetches that failed or timed out.
    pub failures: u64,
    /// When the last fetch succeeded.
    pub last_success: Option<SystemTime>,
    /// Why the last fetch failed, until one succeeds.
    pub last_error: Option<String>,
}

impl DiscoveryReport {
    fn of(server: &Server) -> Option<Self> {
        let discovery = &server.config.discovery;
        if !discovery.is_dynamic() {
            return None;
        }
        let stats = &server.stats.discovery;
        let last_success_ms = stats.last_success_ms.load(Ordering::Relaxed);
        Some(Self {
            kind: discovery.kind.name().to_owned(),
            fetches: stats.fetches.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            last_success: (last_success_ms > 0)
                .then(|| UNIX_EPOCH + Duration::from_millis(last_success_ms)),
            last_error: stats.last_error.load_full().map(|error| (*error).clone()),
        })
    }
}

/// What a server's TLS termination or SNI routing did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsReport {
    /// Handshakes completed (termination), or ClientHellos read and routed (passthrough).
    pub handshakes: u64,
    /// Clients closed before their handshake or ClientHello completed, by reason.
    pub handshake_failures: BTreeMap<HandshakeFailure, u64>,
    /// Clients whose server name matched no backend's `sni=` tag.
    pub sni_unmatched: u64,
}

impl TlsReport {
    /// Handshake failures for `reason`.
    pub fn failures(&self, reason: HandshakeFailure) -> u64 {
        self.handshake_failures.get(&reason).copied().unwrap_or(0)
    }
}

impl ServerReport {
    /// The backend whose `host:port` is `target`.
    pub fn backend(&self, target: &str) -> Option<&BackendReport> {
        self.backends
            .iter()
            .find(|backend| backend.target == target)
    }

    /// How many established sessions ended for `reason`.
    pub fn ended(&self, reason: SessionEnd) -> u64 {
        self.ended.get(&reason).copied().unwrap_or(0)
    }

    fn of(server: &Server, local_addr: Option<SocketAddr>) -> Self {
        let stats = &server.stats;
        Self {
            name: server.name().to_owned(),
            local_addr,
            balance: server.config.balance,
            active: stats.active.load(Ordering::Relaxed),
            total: stats.total.load(Ordering::Relaxed),
            denied: stats.denied.load(Ordering::Relaxed),
            over_limit: stats.over_limit.load(Ordering::Relaxed),
            unserved: stats.unserved.load(Ordering::Relaxed),
            client_over_connections: stats.client_over_connections.load(Ordering::Relaxed),
            client_over_rate: stats.client_over_rate.load(Ordering::Relaxed),
            client_table_full: stats.client_table_full.load(Ordering::Relaxed),
            proxy_untrusted: stats.proxy_untrusted.load(Ordering::Relaxed),
            proxy_header_failed: stats.proxy_header_failed.load(Ordering::Relaxed),
            connect_retries: stats.connect_retries.load(Ordering::Relaxed),
            replays: stats.replay.replays.load(Ordering::Relaxed),
            replays_succeeded: stats.replay.succeeded.load(Ordering::Relaxed),
            replays_exhausted: stats.replay.exhausted.load(Ordering::Relaxed),
            to_backends: stats.traffic.tx.load(Ordering::Relaxed),
            to_clients: stats.traffic.rx.load(Ordering::Relaxed),
            datagrams_dropped: stats.datagrams_dropped.load(Ordering::Relaxed),
            ended: SessionEnd::ALL
                .iter()
                .map(|&end| (end, stats.ended.get(end)))
                .collect(),
            tls: TlsReport {
                handshakes: stats.tls.handshakes.load(Ordering::Relaxed),
                handshake_failures: HandshakeFailure::ALL
                    .iter()
                    .map(|&reason| (reason, stats.tls.failures.get(reason)))
                    .collect(),
                sni_unmatched: stats.tls.sni_unmatched.load(Ordering::Relaxed),
            },
            backends: server
                .pool
                .backends()
                .iter()
                .map(|backend| BackendReport::of(backend))
                .collect(),
            discovery: DiscoveryReport::of(server),
        }
    }
}

/// One backend of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReport {
    /// `host:port`, the backend's identity across reloads.
    pub target: String,
    pub health: Health,
    pub admin: Admin,
    /// Sessions open now.
    pub active: u64,
    /// Sessions ever established.
    pub total: u64,
    /// Connects that failed (refused, timed out, unreachable).
    pub refused: u64,
    /// Sessions closed by `[rebalance]` because the backend held more than its share.
    pub rebalanced: u64,
    /// Bytes from clients to this backend.
    pub to_backend: u64,
    /// Bytes from this backend to clients.
    pub to_client: u64,
}

impl BackendReport {
    fn of(backend: &Backend) -> Self {
        let state = &backend.state;
        let stats = &state.stats;
        Self {
            target: backend.target.to_string(),
            health: state.health(),
            admin: state.admin(),
            active: stats.active.load(Ordering::Relaxed),
            total: stats.total.load(Ordering::Relaxed),
            refused: stats.refused.load(Ordering::Relaxed),
            rebalanced: stats.rebalanced.load(Ordering::Relaxed),
            to_backend: stats.traffic.tx.load(Ordering::Relaxed),
            to_client: stats.traffic.rx.load(Ordering::Relaxed),
        }
    }
}
