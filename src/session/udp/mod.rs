//! A UDP session: one client address bound to one backend through one connected socket.
//!
//! The listener's receive loop ([`crate::listener::udp`]) owns the [`SessionTable`] and sends
//! client datagrams straight into a session's socket ([`UdpSession::forward`]). Each session
//! runs one task ([`UdpSession::run`]) that relays the backend's replies out of the listening
//! socket (so the client sees them come from the address it wrote to), and ends the session on
//! `max_responses`, an idle timeout, a closed backend, an ICMP error or eviction. The two sides
//! share only atomics: the request count (which also says whether the session still takes
//! requests), the reply count and the last activity of each direction.
//!
//! Fire-and-forget servers (`max_requests = 1`) have no sessions: [`forget`] sends each
//! datagram through one socket per backend.

mod budget;
pub(crate) mod forget;
mod open;
mod relay;
pub(crate) mod spare;
pub(crate) mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, BackendState};
use crate::config::ProxyProtocolVersion;
use crate::proxy_protocol::{self, Transport};
use crate::snapshot::Server;
use crate::stats::{ServerStats, SessionEnd, Slot};
pub(crate) use open::{Unopened, open};
pub(crate) use table::SessionTable;

/// A session ends after this long without a datagram in either direction when neither
/// `client_idle_timeout` nor `backend_idle_timeout` is set (gobetween then never ends it).
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Once its listener stopped (shutdown, server removed, bind changed), a session waits this
/// long for replies still on their way, then ends.
pub(crate) const LINGER_AFTER_STOP: Duration = Duration::from_secs(2);

/// The largest UDP payload; receive buffers have this size so nothing is truncated.
pub(crate) const MAX_DATAGRAM: usize = 65_535;

/// `requests` once the session takes no more: the receive loop then opens a new one.
const CLOSED: u64 = u64::MAX;

/// What every session of one listener shares with it.
#[derive(Debug)]
pub(crate) struct Endpoint {
    /// The listening socket; replies go out of it.
    pub(crate) socket: Arc<UdpSocket>,
    /// Its address: the destination a PROXY header names.
    pub(crate) local: SocketAddr,
    /// The origin of the millisecond timestamps sessions keep.
    pub(crate) epoch: Instant,
    /// Cancelled when the listener stops.
    pub(crate) stopped: CancellationToken,
    /// Every session task of the process, so shutdown waits for them.
    pub(crate) tasks: TaskTracker,
    /// Ended sessions go back to the table through this.
    pub(crate) ended_tx: mpsc::UnboundedSender<Arc<UdpSession>>,
}

impl Endpoint {
    /// Milliseconds since [`Self::epoch`]: what sessions store as their last activity.
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The PROXY v2 header that goes before each of `client`'s datagrams, when `server`
    /// sends one.
    pub(crate) fn proxy_header(&self, server: &Server, client: SocketAddr) -> Option<Box<[u8]>> {
        (server.config.proxy_protocol == Some(ProxyProtocolVersion::V2)).then(|| {
            proxy_protocol::v2_header(Transport::Datagram, client, self.local, None)
                .into_boxed_slice()
        })
    }
}

/// Sends `payload` on a connected socket, after `header` if there is one, as one datagram
/// with one system call; returns the payload bytes sent.
pub(crate) fn send_datagram(
    socket: socket2::SockRef<'_>,
    header: Option<&[u8]>,
    payload: &[u8],
) -> std::io::Result<usize> {
    match header {
        None => socket.send(payload),
        Some(header) => {
            let parts = [
                std::io::IoSlice::new(header),
                std::io::IoSlice::new(payload),
            ];
            let sent = socket.send_vectored(&parts)?;
            Ok(sent.saturating_sub(header.len()))
        }
    }
}

/// One client address and its backend socket.
#[derive(Debug)]
pub(crate) struct UdpSession {
    pub(crate) client: SocketAddr,
    socket: UdpSocket,
    backend: Arc<Backend>,
    server: Arc<Server>,
    endpoint: Arc<Endpoint>,
    /// The PROXY v2 header before each datagram to the backend, if the server sends one.
    proxy_header: Option<Box<[u8]>>,
    /// Datagrams forwarded to the backend, or [`CLOSED`].
    requests: AtomicU64,
    /// Replies forwarded to the client.
    responses: AtomicU64,
    last_request_ms: AtomicU64,
    last_reply_ms: AtomicU64,
    /// Set once a reply came: passive health counts the backend as reached.
    answered: AtomicBool,
    /// Set when the table evicted it (and counted it out already).
    evicted: AtomicBool,
    /// Set by each client datagram after the first, cleared by the table's eviction hand: a
    /// session used again since the hand last passed gets a second chance, while a flood of
    /// one-datagram sources is evicted oldest first.
    referenced: AtomicBool,
    /// Cancelled by the receive loop (eviction, a send error), with `end_reason`.
    end: CancellationToken,
    end_reason: AtomicU8,
    backend_closer: CancellationToken,
    _backend_slot: Slot<BackendState>,
    _server_slot: Slot<ServerStats>,
    _socket_budget: budget::BudgetGuard,
}

/// What became of a client datagram given to a session.
#[derive(Debug)]
pub(crate) enum Forwarded {
    /// Sent; with `detach`, it was the last one the session takes (`max_requests`).
    Sent { detach: bool },
    /// The session takes no more requests: open a new one.
    Closed,
    /// The backend's port is unreachable (an ICMP error from an earlier datagram); the datagram
    /// was not sent and the session is over.
    Refused,
    /// Not sent (a full socket buffer or another error); counted as dropped.
    Dropped(std::io::Error),
}

impl UdpSession {
    /// Gives a client datagram to the backend. Never waits: a full socket buffer drops it.
    pub(crate) fn forward(&self, payload: &[u8], now_ms: u64) -> Forwarded {
        let taken = self
            .requests
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                // Lazy: `then_some(n + 1)` would compute CLOSED + 1 and overflow.
                (n != CLOSED).then(|| n + 1)
            });
        let Ok(before) = taken else {
            return Forwarded::Closed;
        };
        self.last_request_ms.store(now_ms, Ordering::Relaxed);
        // A direct send: tokio's `try_send` waits for the reactor to have seen the new socket
        // writable, and the receive loop never waits.
        let socket = socket2::SockRef::from(&self.socket);
        match send_datagram(socket, self.proxy_header.as_deref(), payload) {
            Ok(sent) => {
                let bytes = sent as u64;
                self.backend
                    .state
                    .stats
                    .traffic
                    .tx
                    .fetch_add(bytes, Ordering::Relaxed);
                self.server
                    .stats
                    .traffic
                    .tx
                    .fetch_add(bytes, Ordering::Relaxed);
                let max = self.server.config.udp.and_then(|udp| udp.max_requests);
                Forwarded::Sent {
                    detach: max.is_some_and(|max| before + 1 >= max),
                }
            }
            Err(error) => {
                // The request never left: do not wait for its reply.
                let _ = self
                    .requests
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n != CLOSED && n > 0).then(|| n - 1)
                    });
                if error.kind() == std::io::ErrorKind::ConnectionRefused {
                    self.observe_refused(&error);
                    self.stop(SessionEnd::Error);
                    Forwarded::Refused
                } else {
                    Forwarded::Dropped(error)
                }
            }
        }
    }

    /// Ends the session from outside its task.
    pub(crate) fn stop(&self, reason: SessionEnd) {
        self.requests.store(CLOSED, Ordering::Release);
        self.end_reason.store(reason as u8, Ordering::Release);
        self.end.cancel();
    }

    /// Marks the session as used again (a datagram after its first), for the eviction hand.
    pub(crate) fn mark_referenced(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a client datagram came since the last call (which clears the mark).
    pub(crate) fn take_reference(&self) -> bool {
        self.referenced.swap(false, Ordering::Relaxed)
    }

    pub(crate) fn mark_evicted(&self) {
        self.evicted.store(true, Ordering::Release);
    }

    pub(crate) fn was_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.end.is_cancelled()
    }

    /// An ICMP port unreachable: a failed connect for passive health checks.
    fn observe_refused(&self, error: &std::io::Error) {
        self.backend
            .state
            .stats
            .refused
            .fetch_add(1, Ordering::Relaxed);
        crate::health::monitor::observe_connect(&self.server, &self.backend, Some(error));
        if let Some(suppressed) = self.backend.connect_failures_log.check() {
            tracing::warn!(
                server = self.server.name(),
                client = %self.client,
                backend = %self.backend.target,
                %error,
                suppressed,
                "UDP backend unreachable; session closed"
            );
        }
    }
}
