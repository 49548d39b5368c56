//! A plain TCP session: connect with retry, send the PROXY header if asked, then forward both
//! directions until either side ends or the balancer closes the session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::connect::{Connected, connect_with_retry};
use crate::config::ProxyProtocolVersion;
use crate::forward::{self, ForwardError};
use crate::proxy_protocol::{self, Transport};
use crate::snapshot::Server;
use crate::stats::{ServerStats, SessionEnd, SessionMeter, Slot};

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
            Some(ProxyProtocolVersion::V2) => {
                let local = self.client.local_addr()?;
                let header = proxy_protocol::v2_header(Transport::Stream, self.peer, local, None);
                forward::write_all(&connected.stream, &header).await
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
