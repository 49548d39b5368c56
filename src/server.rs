//! One listener: accept, check access and limits, pick a backend, connect with retry, forward.
//!
//! Each `[servers.NAME]` has one accept task running [`accept_loop`]. It looks the server up in
//! the current snapshot for every connection, so a reload changes the pool of new connections at
//! once, and spawns one session task per admitted client. The accept loop never dies: transient
//! errors are retried, resource exhaustion (EMFILE, ENFILE) backs off and is logged once a
//! second. A session's errors end at the task boundary with one log line.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, BackendState};
use crate::config::ProxyProtocolVersion;
use crate::forward::{self, ForwardError};
use crate::health::monitor;
use crate::snapshot::{Server, Snapshot};
use crate::stats::{ServerStats, SessionEnd, SessionMeter, Slot};
use crate::{access, net, proxy_protocol};

/// What every listener and session of the process shares.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The current snapshot; loaded once per accepted connection.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    /// Every session task, so shutdown can wait for them.
    pub sessions: TaskTracker,
    /// Cancelled when the shutdown grace period is over: remaining sessions close.
    pub close_sessions: CancellationToken,
}

/// Pause after an accept error that is not about the connection itself.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Accepts connections for server `name` until `stop` is cancelled, then serves the connections
/// already queued on the listener and closes it; established sessions go on.
pub async fn accept_loop(
    name: Arc<str>,
    listener: TcpListener,
    shared: Shared,
    stop: CancellationToken,
) {
    let Some(mut server) = shared.snapshot.load().server(&name).cloned() else {
        error!(server = %name, "listener started for a server missing from the config");
        return;
    };
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // A server removed by a reload keeps serving what it accepts until its listener
                // is stopped.
                if let Some(current) = shared.snapshot.load().server(&name) {
                    server = Arc::clone(current);
                }
                admit(&server, client, peer, &shared);
            }
            Err(error) if is_connection_error(&error) => {
                debug!(server = %name, %error, "accept: connection lost before it was accepted");
            }
            Err(error) => {
                if let Some(suppressed) = server.log_limits.accept.check() {
                    warn!(server = %name, %error, suppressed, pause = ?backoff, "accept failed; pausing");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    let queued = match listener.into_std() {
        Ok(listener) => drain_backlog(&listener, &server, &shared),
        Err(error) => {
            warn!(server = %name, %error, "cannot drain the listener's queue");
            0
        }
    };
    info!(server = %name, queued, "listener closed");
}

/// Admits the connections the kernel had already completed for a listener being closed, so a
/// reload that stops it refuses nobody. Returns how many there were.
fn drain_backlog(listener: &std::net::TcpListener, server: &Arc<Server>, shared: &Shared) -> usize {
    let mut admitted = 0;
    // Bounded by the backlog size: the loop cannot outrun a flood of new connections forever.
    for _ in 0..net::LISTEN_BACKLOG {
        let Ok((client, peer)) = listener.accept() else {
            break;
        };
        let client = client
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(client));
        match client {
            Ok(client) => {
                admit(server, client, peer, shared);
                admitted += 1;
            }
            Err(error) => debug!(server = server.name(), %error, "queued connection unusable"),
        }
    }
    admitted
}

/// Errors that concern one pending connection, not the listener: accept the next one at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPROTO
                | libc::EPERM
                | libc::EINTR
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
        )
    )
}

/// Applies `[access]` and `max_connections`, then spawns the session.
fn admit(server: &Arc<Server>, client: TcpStream, peer: SocketAddr, shared: &Shared) {
    if let Some(rules) = &server.config.access
        && !access::allows(rules, peer.ip())
    {
        server.stats.denied.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.denied.check() {
            info!(server = server.name(), client = %peer, suppressed, "client denied by access rules");
        }
        return;
    }
    let Some(slot) = Slot::try_acquire(&server.stats, server.config.max_connections) else {
        server.stats.over_limit.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.over_limit.check() {
            warn!(
                server = server.name(),
                client = %peer,
                max_connections = server.config.max_connections,
                suppressed,
                "client refused: server at max_connections"
            );
        }
        return;
    };
    server.stats.total.fetch_add(1, Ordering::Relaxed);
    let session = Session {
        server: Arc::clone(server),
        client,
        peer,
        _slot: slot,
    };
    let close = shared.close_sessions.clone();
    shared.sessions.spawn(session.run(close));
}

/// One admitted client, from connect to close.
struct Session {
    server: Arc<Server>,
    client: TcpStream,
    peer: SocketAddr,
    _slot: Slot<ServerStats>,
}

impl Session {
    async fn run(self, close: CancellationToken) {
        let server = &self.server;
        // Boxed: connecting is brief, and inline its state would stay in every idle session.
        let connected = tokio::select! {
            connected = Box::pin(connect_with_retry(server, self.peer)) => connected,
            () = close.cancelled() => return,
        };
        let Some(connected) = connected else {
            self.report_unserved();
            return;
        };
        drop(close);
        if server.config.proxy_protocol.is_some() {
            // Boxed for the same reason as connecting.
            if let Err(error) = Box::pin(self.send_proxy_header(&connected)).await {
                debug!(server = server.name(), client = %self.peer, backend = %connected.backend.target, %error, "cannot send the PROXY header");
                server.stats.ended.record(SessionEnd::Error);
                return;
            }
        }
        let end = self.relay(&connected).await;
        server.stats.ended.record(end);
    }

    async fn send_proxy_header(&self, connected: &Connected) -> io::Result<()> {
        match self.server.config.proxy_protocol {
            Some(ProxyProtocolVersion::V1) => {
                let local = self.client.local_addr()?;
                let header = proxy_protocol::v1_header(self.peer, local);
                forward::write_all(&connected.stream, header.as_bytes()).await
            }
            None => Ok(()),
        }
    }

    fn report_unserved(&self) {
        let server = &self.server;
        server.stats.unserved.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.unserved.check() {
            error!(
                server = server.name(),
                client = %self.peer,
                backends = server.pool.backends().len(),
                suppressed,
                "no backend could be connected; client closed"
            );
        }
    }

    /// Forwards until the session ends by itself or is closed (shutdown, backend closed): the
    /// backend's closer is a child of the shutdown token, so one future waits for both.
    async fn relay(&self, connected: &Connected) -> SessionEnd {
        let meter = SessionMeter {
            backend: &connected.backend.state.stats.traffic,
            server: &self.server.stats.traffic,
        };
        let forwarding = forward::bidirectional(
            &self.client,
            &connected.stream,
            &self.server.forward,
            &meter,
        );
        let outcome = tokio::select! {
            outcome = forwarding => outcome.map_err(Interrupted::Failed),
            () = connected.backend_closer.cancelled() => {
                Err(Interrupted::Closed(connected.backend.state.close_reason()))
            }
        };
        let end = match &outcome {
            Ok(_) => SessionEnd::Completed,
            Err(Interrupted::Closed(end)) => *end,
            Err(Interrupted::Failed(ForwardError::Idle { .. })) => SessionEnd::IdleTimeout,
            Err(Interrupted::Failed(_)) => SessionEnd::Error,
        };
        // Field values are only formatted when debug logging is on.
        debug!(
            server = self.server.name(),
            client = %self.peer,
            backend = %connected.backend.target,
            end = end.as_str(),
            detail = %Outcome(&outcome),
            "session ended"
        );
        end
    }
}

/// Why forwarding stopped before both sides closed.
enum Interrupted {
    /// The balancer closed the session.
    Closed(SessionEnd),
    Failed(ForwardError),
}

/// A session's outcome for its log line: bytes moved, or what interrupted it.
struct Outcome<'a>(&'a Result<forward::Transferred, Interrupted>);

impl std::fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Ok(moved) => write!(f, "tx {} rx {}", moved.to_backend, moved.to_client),
            Err(Interrupted::Closed(end)) => write!(f, "closed by the balancer: {}", end.as_str()),
            Err(Interrupted::Failed(error)) => write!(f, "{error}"),
        }
    }
}

/// A session's backend connection and the place it holds on that backend.
struct Connected {
    stream: TcpStream,
    backend: Arc<Backend>,
    /// Fires when the backend's sessions are closed (marked down, removed, disabled).
    backend_closer: CancellationToken,
    _slot: Slot<BackendState>,
}

/// Tries backends in the balancer's order, each at most once (and at most `connect_attempts`
/// in all), until one accepts. `None` when every one failed.
async fn connect_with_retry(server: &Server, client: SocketAddr) -> Option<Connected> {
    let max_attempts = server.config.connect_attempts.unwrap_or(u32::MAX);
    let mut attempts = server.pool.attempts(client.ip());
    let mut made = 0;
    while made < max_attempts {
        let backend = attempts.next_backend()?;
        // Full since the pick (another session took the last place): try the next one.
        let Some(slot) = backend.try_acquire() else {
            continue;
        };
        // Taken before connecting: a backend closed while we connect closes this session too.
        // A backend closed between the pick and this line handed out a fresh token, but its
        // new state is visible by now (it is stored before the token is swapped): skip it.
        let backend_closer = backend.state.session_closer();
        let still_routable =
            backend.accepts_new_sessions() && (backend.is_healthy() || attempts.ignores_health());
        if !still_routable {
            continue;
        }
        if made > 0 {
            server.stats.connect_retries.fetch_add(1, Ordering::Relaxed);
        }
        made += 1;
        let started = tokio::time::Instant::now();
        match connect_backend(backend, server.config.backend_connection_timeout).await {
            Ok(stream) => {
                backend
                    .state
                    .stats
                    .connect_latency
                    .observe(started.elapsed());
                monitor::observe_connect(server, backend, None);
                backend.state.stats.total.fetch_add(1, Ordering::Relaxed);
                return Some(Connected {
                    stream,
                    backend: Arc::clone(backend),
                    backend_closer,
                    _slot: slot,
                });
            }
            Err(error) if net::is_local_exhaustion(&error) => {
                // Not the backend's fault, and every other backend would fail the same way.
                if let Some(suppressed) = server.log_limits.exhausted.check() {
                    error!(server = server.name(), client = %client, %error, suppressed, "cannot open a backend connection: out of local resources");
                }
                return None;
            }
            Err(error) => {
                backend.state.stats.refused.fetch_add(1, Ordering::Relaxed);
                monitor::observe_connect(server, backend, Some(&error));
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
            }
        }
    }
    None
}

/// Connects to one backend within `timeout`.
async fn connect_backend(backend: &Backend, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let attempt = net::connect_host(backend.resolved, &backend.spec.host, backend.spec.port);
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
