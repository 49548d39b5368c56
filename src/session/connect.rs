//! Reaching a backend for a session: the balancer's order, each backend at most once, passive
//! health from every attempt, and a place held on the backend for the session's life.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::backend::{Backend, BackendState, SessionTicket};
use crate::forward::{ReadAhead, Stream};
use crate::health::monitor;
use crate::net::{self, LocalShortage};
use crate::pool::Attempts;
use crate::snapshot::Server;
use crate::stats::{SessionEnd, Slot};
use crate::tls;

/// A session's backend connection and the place it holds on that backend.
pub(crate) struct Connected {
    /// TCP, or TLS over it with `[backends_tls]` (the handshake done).
    pub(crate) stream: Stream,
    pub(crate) backend: Arc<Backend>,
    /// Fires when the backend's sessions are closed (marked down, removed, disabled).
    pub(crate) backend_closer: CancellationToken,
    /// With `[rebalance]`: the session's place among its backend's, and its own closer.
    ticket: Option<SessionTicket>,
    /// Connects tried before this one succeeded.
    pub(crate) retries: u32,
    _slot: Slot<BackendState>,
}

impl Connected {
    /// Fires when the session must end: its backend's sessions are closed, or (with
    /// `[rebalance]`) this one alone is.
    pub(crate) fn closer(&self) -> &CancellationToken {
        self.ticket
            .as_ref()
            .map_or(&self.backend_closer, SessionTicket::closer)
    }
}

/// Why a session's [`closer`](Connected::closer) fired, given its backend's closer.
pub(crate) fn close_reason(backend_closer: &CancellationToken, state: &BackendState) -> SessionEnd {
    if backend_closer.is_cancelled() {
        state.close_reason()
    } else {
        SessionEnd::Rebalanced
    }
}

/// When every backend is down, each is tried for at most this long...
const ALL_DOWN_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
/// ...and the whole walk gets the connect timeout, or this when there is none.
const ALL_DOWN_DEFAULT_BUDGET: Duration = Duration::from_secs(5);

/// How long one connect may take. Normally the server's `backend_connection_timeout`. When
/// every backend was down as the walk began, a client must not wait through each one's full
/// timeout in turn (gobetween closes it at once): each attempt gets at most
/// [`ALL_DOWN_ATTEMPT_TIMEOUT`], and all of them together what is left of one connect timeout
/// ([`ALL_DOWN_DEFAULT_BUDGET`] when it is "0"). `None` when the budget is spent.
fn attempt_timeout(
    configured: Option<Duration>,
    all_down: bool,
    spent: Duration,
) -> Option<Option<Duration>> {
    if !all_down {
        return Some(configured);
    }
    let budget = configured.unwrap_or(ALL_DOWN_DEFAULT_BUDGET);
    let left = budget.checked_sub(spent).filter(|left| !left.is_zero())?;
    Some(Some(left.min(ALL_DOWN_ATTEMPT_TIMEOUT)))
}

/// One session's walk through its server's backends: the balancer's order, each backend at
/// most once and at most `connect_attempts` connects in all, only those whose place in
/// `eligible` is true when given (SNI routing). [`connect`](Self::connect) resumes it, so a
/// session whose backend accepted but never answered can go on to the next candidate.
pub(crate) struct Walk<'a> {
    server: &'a Server,
    client: &'a SocketAddr,
    attempts: Attempts<'a>,
    started: tokio::time::Instant,
    made: u32,
    max_attempts: u32,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(
        server: &'a Server,
        client: &'a SocketAddr,
        eligible: Option<&[bool]>,
    ) -> Self {
        let attempts = match eligible {
            Some(eligible) => server.pool.attempts_among(client.ip(), eligible),
            None => server.pool.attempts(client.ip()),
        };
        Self {
            server,
            client,
            attempts,
            started: tokio::time::Instant::now(),
            made: 0,
            max_attempts: server.config.connect_attempts.unwrap_or(u32::MAX),
        }
    }

    /// The server walked.
    pub(crate) fn server(&self) -> &'a Server {
        self.server
    }

    /// The client the walk is for.
    pub(crate) fn client(&self) -> &'a SocketAddr {
        self.client
    }

    /// [`connect`](Self::connect), with the walk moved in and given back.
    pub(crate) async fn into_connect(mut self) -> (Self, Option<Connected>) {
        let connected = self.connect().await;
        (self, connected)
    }

    /// Connects to the next candidates until one accepts. `None` when every one failed or was
    /// tried, when `connect_attempts` are spent, or when every backend was down and the
    /// all-down budget ran out (see [`attempt_timeout`]). With `[backends_tls]`, a backend
    /// accepts once the TLS handshake is done.
    ///
    /// An accepted connect counts as a passive pass only when the server does not replay first
    /// flights: otherwise a frozen backend, whose kernel still accepts, would reset its failure
    /// streak with every new client, and the first response counts instead.
    pub(crate) async fn connect(&mut self) -> Option<Connected> {
        let server = self.server;
        while self.made < self.max_attempts {
            // The closer is taken before connecting: a backend closed while we connect closes
            // this session too.
            let (backend, slot, backend_closer) = self.attempts.next_reserved()?;
            if self.made > 0 {
                server.stats.connect_retries.fetch_add(1, Ordering::Relaxed);
            }
            self.made += 1;
            let timeout = attempt_timeout(
                server.config.backend_connection_timeout,
                self.attempts.ignores_health(),
                self.started.elapsed(),
            )?;
            let started = tokio::time::Instant::now();
            match connect_backend(server, backend, timeout).await {
                Ok(stream) => {
                    backend
                        .state
                        .stats
                        .connect_latency
                        .observe(started.elapsed());
                    if server.config.replay.timeout().is_none() {
                        monitor::observe_connect(server, backend, None);
                    }
                    backend.state.stats.total.fetch_add(1, Ordering::Relaxed);
                    let ticket = server
                        .config
                        .rebalance
                        .as_ref()
                        .map(|_| SessionTicket::register(&backend.state, &backend_closer));
                    return Some(Connected {
                        stream,
                        backend: Arc::clone(backend),
                        backend_closer,
                        ticket,
                        retries: self.made - 1,
                        _slot: slot,
                    });
                }
                Err(error) => match connect_failed(server, backend, *self.client, &error) {
                    AfterFailure::TryNext => {}
                    AfterFailure::GiveUp => return None,
                },
            }
        }
        None
    }
}

/// What a session does after a failed connect.
#[derive(Debug, PartialEq, Eq)]
enum AfterFailure {
    TryNext,
    GiveUp,
}

/// Accounts for one failed connect to `backend`. A refusal, timeout or unreachable network
/// counts against the backend (its `refused` count and passive health) and the next one is
/// tried.
///
/// A shortage on this host (descriptors, memory, local ports) is the balancer's fault, not the
/// backend's: the backend is left alone (no `refused` count, no passive failure, so it is not
/// marked down and its sessions stay). Without descriptors or memory the session gives up, as
/// every other backend would fail the same way; without a local port it tries the next
/// backend, since ports run out per destination.
fn connect_failed(
    server: &Server,
    backend: &Backend,
    client: SocketAddr,
    error: &io::Error,
) -> AfterFailure {
    if let Some(shortage) = net::local_shortage(error) {
        if let Some(suppressed) = server.log_limits.exhausted.check() {
            error!(server = server.name(), client = %client, backend = %backend.target, %error, suppressed, "cannot open a backend connection: out of local resources");
        }
        return match shortage {
            LocalShortage::Resources => AfterFailure::GiveUp,
            LocalShortage::Address => AfterFailure::TryNext,
        };
    }
    backend.state.stats.refused.fetch_add(1, Ordering::Relaxed);
    monitor::observe_connect(server, backend, Some(error));
    if let Some(suppressed) = backend.connect_failures_log.check() {
        warn!(
            server = server.name(),
            client = %client,
            backend = %backend.target,
            %error,
            suppressed,
            "connect to backend failed; trying the next one"
        );
    }
    AfterFailure::TryNext
}

/// Connects to one backend, and with `[backends_tls]` completes the handshake, within
/// `timeout`.
async fn connect_backend(
    server: &Server,
    backend: &Backend,
    timeout: Option<Duration>,
) -> io::Result<Stream> {
    let attempt = async {
        let tcp =
            net::connect_host(backend.resolved, &backend.spec.host, backend.spec.port).await?;
        match &server.backend_tls {
            None => Ok(Stream::Tcp(tcp)),
            // Boxed: a TLS handshake is a large state, and inline it would size the connect
            // of every session, plain ones included.
            Some(config) => Box::pin(handshake(config, backend, tcp)).await,
        }
    };
    match timeout {
        None => attempt.await,
        Some(timeout) => tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ))
            }),
    }
}

/// The TLS handshake with a backend (`[backends_tls]`) over its connected socket.
async fn handshake(
    config: &Arc<rustls::ClientConfig>,
    backend: &Backend,
    tcp: tokio::net::TcpStream,
) -> io::Result<Stream> {
    let name = tls::backend_server_name(&backend.spec.host, backend.spec.sni.as_deref())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:?} is not a valid TLS server name", backend.spec.host),
            )
        })?;
    let connector = TlsConnector::from(Arc::clone(config));
    let stream = connector.connect(name, ReadAhead::new(tcp)).await?;
    Ok(Stream::TlsClient(Box::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Health;
    use crate::snapshot::Snapshot;

    /// One server with one backend that a single failed client connect marks down.
    fn snapshot() -> Snapshot {
        let text = "[servers.api]\nbind = \"127.0.0.1:0\"\n\
            [servers.api.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n\
            [servers.api.healthcheck]\nkind = \"ping\"\ninterval = \"30s\"\npassive_fails = 1\n";
        let config = crate::config::load_str("test.toml", text, &Default::default())
            .unwrap()
            .config;
        Snapshot::new(config, None, &CancellationToken::new()).unwrap()
    }

    fn fail_with(errno: i32) -> (AfterFailure, u64, Health) {
        let snapshot = snapshot();
        let server = snapshot.server("api").unwrap();
        let backend = &server.pool.backends()[0];
        assert_eq!(backend.state.health(), Health::Up);
        let client = "127.0.0.1:40000".parse().unwrap();
        let error = io::Error::from_raw_os_error(errno);
        let after = connect_failed(server, backend, client, &error);
        let refused = backend.state.stats.refused.load(Ordering::Relaxed);
        (after, refused, backend.state.health())
    }

    #[test]
    fn running_out_of_local_ports_is_not_the_backends_fault() {
        assert_eq!(
            fail_with(libc::EADDRNOTAVAIL),
            (AfterFailure::TryNext, 0, Health::Up)
        );
        assert_eq!(
            fail_with(libc::EMFILE),
            (AfterFailure::GiveUp, 0, Health::Up)
        );
    }

    #[test]
    fn a_refused_connect_counts_against_the_backend() {
        assert_eq!(
            fail_with(libc::ECONNREFUSED),
            (AfterFailure::TryNext, 1, Health::Down)
        );
    }

    #[test]
    fn with_every_backend_down_a_client_waits_one_budget_in_all() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(
            attempt_timeout(five, false, Duration::from_secs(60)),
            Some(five)
        );
        assert_eq!(attempt_timeout(None, false, Duration::ZERO), Some(None));
        let second = Some(Duration::from_secs(1));
        assert_eq!(attempt_timeout(five, true, Duration::ZERO), Some(second));
        assert_eq!(
            attempt_timeout(five, true, Duration::from_millis(4600)),
            Some(Some(Duration::from_millis(400)))
        );
        assert_eq!(attempt_timeout(five, true, Duration::from_secs(5)), None);
        assert_eq!(attempt_timeout(None, true, Duration::ZERO), Some(second));
        assert_eq!(attempt_timeout(None, true, Duration::from_secs(6)), None);
    }
}
