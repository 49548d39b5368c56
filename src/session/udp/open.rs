//! Opening a UDP session: the balancer's order, each backend at most once, a connected socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use tokio::net::UdpSocket;
use tracing::{error, warn};

use super::budget::BudgetGuard;
use super::spare::{Spare, SpareSockets};
use super::{Endpoint, UdpSession};
use crate::backend::Backend;
use crate::net::{self, LocalShortage};
use crate::snapshot::Server;
use crate::stats::{SessionEnd, Slot};

/// Why no session could be opened for a client.
#[derive(Debug)]
pub(crate) enum Unopened {
    /// Every backend was tried (or none could be): the datagram is dropped.
    NoBackend,
    /// The process holds its whole budget of session sockets.
    NoDescriptor,
}

/// Opens a session for `client` on the first backend, in the balancer's order, whose socket
/// can be made (or is kept in `spares`), and starts its task.
pub(crate) fn open(
    server: &Arc<Server>,
    endpoint: &Arc<Endpoint>,
    spares: &mut SpareSockets,
    client: SocketAddr,
) -> Result<Arc<UdpSession>, Unopened> {
    // Never refused: the session table, not a refusal, enforces `max_connections`.
    let server_slot = Slot::try_acquire(&server.stats, None).ok_or(Unopened::NoBackend)?;
    let transparent = server.config.udp.is_some_and(|udp| udp.transparent);
    let mut attempts = server.pool.attempts(client.ip());
    while let Some((backend, backend_slot, backend_closer)) = attempts.next_reserved() {
        let Some(address) = backend.resolved else {
            continue;
        };
        let spare = if transparent {
            None
        } else {
            spares.take(address)
        };
        let (socket, budget) = match spare {
            Some(Spare { socket, budget }) => (socket, budget),
            None => {
                let budget = BudgetGuard::try_acquire().ok_or(Unopened::NoDescriptor)?;
                match connect(address, transparent.then_some(client)) {
                    Ok(socket) => (socket, budget),
                    Err(error) => {
                        match net::local_shortage(&error) {
                            Some(LocalShortage::Resources) => {
                                if let Some(suppressed) = server.log_limits.exhausted.check() {
                                    error!(server = server.name(), client = %client, %error, suppressed, "cannot open a UDP backend socket: out of local resources");
                                }
                                return Err(Unopened::NoDescriptor);
                            }
                            // No local port or address for this destination: not the
                            // backend's fault, and another backend may still be reached.
                            Some(LocalShortage::Address) => {}
                            None => {
                                report_socket_error(server, backend, client, transparent, &error)
                            }
                        }
                        continue;
                    }
                }
            }
        };
        let now = endpoint.now_ms();
        server.stats.total.fetch_add(1, Ordering::Relaxed);
        backend.state.stats.total.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(UdpSession {
            client,
            socket,
            proxy_header: endpoint.proxy_header(server, client),
            backend: Arc::clone(backend),
            server: Arc::clone(server),
            endpoint: Arc::clone(endpoint),
            requests: AtomicU64::new(0),
            responses: AtomicU64::new(0),
            last_request_ms: AtomicU64::new(now),
            last_reply_ms: AtomicU64::new(now),
            answered: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            referenced: AtomicBool::new(false),
            end: tokio_util::sync::CancellationToken::new(),
            end_reason: AtomicU8::new(SessionEnd::Error as u8),
            backend_closer,
            _backend_slot: backend_slot,
            _server_slot: server_slot,
            _socket_budget: budget,
        });
        endpoint.tasks.spawn(Arc::clone(&session).run());
        return Ok(session);
    }
    Err(Unopened::NoBackend)
}

fn connect(backend: SocketAddr, from: Option<SocketAddr>) -> io::Result<UdpSocket> {
    UdpSocket::from_std(net::connect_udp(backend, from)?)
}

fn report_socket_error(
    server: &Server,
    backend: &Backend,
    client: SocketAddr,
    transparent: bool,
    error: &io::Error,
) {
    if let Some(suppressed) = backend.connect_failures_log.check() {
        let hint = if transparent && error.kind() == io::ErrorKind::PermissionDenied {
            "; udp.transparent needs CAP_NET_ADMIN"
        } else {
            ""
        };
        warn!(
            server = server.name(),
            client = %client,
            backend = %backend.target,
            %error,
            suppressed,
            "cannot open a UDP socket to the backend{hint}; trying the next one"
        );
    }
}
