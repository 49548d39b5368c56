//! A TCP session: terminate TLS or read the ClientHello if the server says so ([`opening`]),
//! pick among the backends its server name may reach ([`sni`](crate::snapshot::SniRouter)),
//! connect with retry (over TLS with `[backends_tls]`), send the PROXY header if asked and
//! the ClientHello bytes read, wait for the backend's first response ([`first_flight`]:
//! replayed on the next backend when none comes), then forward both directions until either
//! side ends or the balancer closes the session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::connect::{Connected, Walk};
use super::first_flight;
use super::opening::{self, Opened};
use crate::config::ProxyProtocolVersion;
use crate::forward::{self, ForwardError, Stream};
use crate::logging::access::{Entry, Started};
use crate::proxy_protocol::{self, Transport};
use crate::snapshot::Server;
use crate::stats::{ServerStats, SessionBytes, SessionEnd, SessionMeter, Slot};

/// One admitted client, from connect to close.
pub(crate) struct TcpSession {
    server: Arc<Server>,
    client: TcpStream,
    peer: SocketAddr,
    _slot: Slot<ServerStats>,
}

impl TcpSession {
    pub(crate) fn new(
        server: Arc<Server>,
        client: TcpStream,
        peer: SocketAddr,
        slot: Slot<ServerStats>,
    ) -> Self {
        Self {
            server,
            client,
            peer,
            _slot: slot,
        }
    }

    pub(crate) async fn run(self, close: CancellationToken) {
        let Self {
            server,
            client,
            peer,
            _slot: slot,
        } = self;
        let started = Started::now();
        // Only a PROXY header carries it: a getsockname per session otherwise.
        let local = server
            .config
            .proxy_protocol
            .is_some()
            .then(|| client.local_addr());
        // Boxed: the opening is brief, and inline its state would stay in every idle session.
        let opened = tokio::select! {
            opened = Box::pin(opening::open(&server, client)) => opened,
            () = close.cancelled() => return,
        };
        let mut opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                server.stats.tls.failures.record(error.reason());
                if let Some(suppressed) = server.log_limits.handshake.check() {
                    info!(server = server.name(), client = %peer, reason = %error.reason(), %error, suppressed, "client closed before reaching a backend");
                }
                return;
            }
        };
        let session = Session {
            server,
            peer,
            _slot: slot,
        };
        let Some(eligible) = session.route(&opened) else {
            return;
        };
        let mut walk = Walk::new(&session.server, peer, eligible.as_deref());
        let connected = tokio::select! {
            connected = Box::pin(walk.connect()) => connected,
            () = close.cancelled() => return,
        };
        let Some(connected) = connected else {
            session.report_unserved();
            return;
        };
        let connect_time = started.elapsed();
        // Counted per session only for the access log's line.
        let bytes = session
            .server
            .access_log
            .as_ref()
            .map(|_| SessionBytes::default());
        let bytes = bytes.as_ref();
        let header = match session.proxy_header(&opened, local) {
            Ok(header) => header,
            Err(error) => {
                debug!(server = session.server.name(), client = %peer, backend = %connected.backend.target, %error, "cannot send the PROXY header");
                session.finish(&connected, SessionEnd::Error, bytes, started, connect_time);
                return;
            }
        };
        // From here the backend's closer, a child of `close`, ends the session.
        drop(close);
        let first_flight = std::mem::take(&mut opened.replay);
        // Boxed for the same reason as the opening.
        let answered = Box::pin(first_flight::first_response(
            &session.server,
            peer,
            &mut walk,
            connected,
            &mut opened.client,
            &header,
            first_flight,
            bytes,
        ))
        .await;
        let (connected, end) = match answered {
            Ok(mut connected) => {
                let end = session
                    .relay(&mut opened.client, &mut connected, bytes)
                    .await;
                (connected, end)
            }
            Err(ended) => ended,
        };
        session.finish(&connected, end, bytes, started, connect_time);
    }
}

/// A client that has a backend to go to.
struct Session {
    server: Arc<Server>,
    peer: SocketAddr,
    _slot: Slot<ServerStats>,
}

impl Session {
    /// With `[sni]`, the backends the client's server name may reach; `None` when there are
    /// none (the client is closed, and counted). `Some(None)`: every backend.
    fn route(&self, opened: &Opened) -> Option<Option<Vec<bool>>> {
        let Some(router) = &self.server.sni else {
            return Some(None);
        };
        let route = router.route(&self.server.pool, opened.server_name.as_deref());
        if route.unmatched {
            self.server
                .stats
                .tls
                .sni_unmatched
                .fetch_add(1, Ordering::Relaxed);
        }
        if route.is_rejected() {
            if let Some(suppressed) = self.server.log_limits.sni_rejected.check() {
                info!(server = self.server.name(), client = %self.peer, server_name = opened.server_name.as_deref().unwrap_or(""), suppressed, "no backend for the client's server name; client closed");
            }
            return None;
        }
        Some(Some(route.eligible))
    }

    /// The PROXY header to send first to every backend tried, if the server asks for one.
    ///
    /// `local` is the client socket's own address, read only when the server sends a header.
    fn proxy_header(
        &self,
        opened: &Opened,
        local: Option<io::Result<SocketAddr>>,
    ) -> io::Result<Vec<u8>> {
        let local = || local.unwrap_or_else(|| Err(io::ErrorKind::AddrNotAvailable.into()));
        Ok(match self.server.config.proxy_protocol {
            Some(ProxyProtocolVersion::V1) => {
                proxy_protocol::v1_header(self.peer, local()?).into_bytes()
            }
            // The name the client asked for (SNI) travels as the AUTHORITY TLV.
            Some(ProxyProtocolVersion::V2) => proxy_protocol::v2_header(
                Transport::Stream,
                self.peer,
                local()?,
                opened.server_name.as_deref(),
            ),
            None => Vec::new(),
        })
    }

    /// Counts how the session ended and writes its access log line.
    fn finish(
        &self,
        connected: &Connected,
        end: SessionEnd,
        bytes: Option<&SessionBytes>,
        started: Started,
        connect: Duration,
    ) {
        self.server.stats.ended.record(end);
        if let (Some(log), Some(bytes)) = (&self.server.access_log, bytes) {
            let (to_backend, to_client) = bytes.moved();
            log.record(&Entry {
                start: started.at,
                client: self.peer,
                server: self.server.name(),
                backend: &connected.backend.target,
                connect,
                duration: started.elapsed(),
                to_backend,
                to_client,
                end: end.as_str(),
                retries: connected.retries,
            });
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
    async fn relay(
        &self,
        client: &mut Stream,
        connected: &mut Connected,
        bytes: Option<&SessionBytes>,
    ) -> SessionEnd {
        let meter = SessionMeter {
            backend: &connected.backend.state.stats.traffic,
            server: &self.server.stats.traffic,
            session: bytes,
        };
        let closer = connected.closer().clone();
        let forwarding =
            forward::relay(client, &mut connected.stream, &self.server.forward, &meter);
        let outcome = tokio::select! {
            outcome = forwarding => outcome.map_err(Interrupted::Failed),
            () = closer.cancelled() => {
                Err(Interrupted::Closed(super::connect::close_reason(
                    &connected.backend_closer,
                    &connected.backend.state,
                )))
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
