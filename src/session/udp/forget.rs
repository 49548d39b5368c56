//! Fire-and-forget (`max_requests = 1`): each datagram is balanced on its own and sent through
//! one connected socket per backend, whose replies are never read; no session, no socket per
//! datagram.
//!
//! Owned by the listener's receive loop. A connected socket still reports the backend's ICMP
//! port unreachable (as ECONNREFUSED on a later send): that send did not happen, so the
//! datagram goes to the next backend and the failure counts for passive health checks.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tracing::{debug, warn};

use crate::config::ProxyProtocolVersion;
use crate::health::monitor;
use crate::net;
use crate::proxy_protocol::{self, Transport};
use crate::snapshot::Server;
use crate::stats::SessionEnd;

/// Sockets per backend target, for one listener.
#[derive(Debug, Default)]
pub(crate) struct FireAndForget {
    sockets: HashMap<Arc<str>, std::net::UdpSocket>,
    /// The server generation the sockets were last pruned for.
    pruned_for: Weak<Server>,
    /// The PROXY v2 header of the datagram being sent, kept for its allocation.
    header: Vec<u8>,
}

impl FireAndForget {
    /// Sends `payload` from `client` to the first backend, in the balancer's order, that takes
    /// it. False when it was dropped.
    pub(crate) fn send(
        &mut self,
        server: &Arc<Server>,
        client: SocketAddr,
        local: SocketAddr,
        payload: &[u8],
    ) -> bool {
        self.prune(server);
        let proxied = server.config.proxy_protocol == Some(ProxyProtocolVersion::V2);
        if proxied {
            proxy_protocol::write_v2_header(
                &mut self.header,
                Transport::Datagram,
                client,
                local,
                None,
            );
        }
        let mut attempts = server.pool.attempts(client.ip());
        while let Some(backend) = attempts.next_backend() {
            let routable = backend.accepts_new_sessions()
                && (backend.is_healthy() || attempts.ignores_health());
            let Some(address) = backend.resolved.filter(|_| routable) else {
                continue;
            };
            let socket = match Self::socket(&mut self.sockets, &backend.target, address) {
                Ok(socket) => socket,
                Err(error) => {
                    debug!(server = server.name(), backend = %backend.target, %error, "cannot open a UDP socket to the backend");
                    continue;
                }
            };
            let header = proxied.then_some(self.header.as_slice());
            match super::send_datagram(socket2::SockRef::from(socket), header, payload) {
                Ok(sent) => {
                    let bytes = sent as u64;
                    let stats = &backend.state.stats;
                    stats.traffic.tx.fetch_add(bytes, Ordering::Relaxed);
                    stats.total.fetch_add(1, Ordering::Relaxed);
                    server.stats.traffic.tx.fetch_add(bytes, Ordering::Relaxed);
                    server.stats.total.fetch_add(1, Ordering::Relaxed);
                    server.stats.ended.record(SessionEnd::Completed);
                    return true;
                }
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                    backend.state.stats.refused.fetch_add(1, Ordering::Relaxed);
                    monitor::observe_connect(server, backend, Some(&error));
                    if let Some(suppressed) = backend.connect_failures_log.check() {
                        warn!(server = server.name(), backend = %backend.target, %error, suppressed, "UDP backend unreachable; trying the next one");
                    }
                }
                Err(error) => {
                    debug!(server = server.name(), backend = %backend.target, %error, "datagram to the backend dropped");
                    return false;
                }
            }
        }
        false
    }

    fn socket<'a>(
        sockets: &'a mut HashMap<Arc<str>, std::net::UdpSocket>,
        target: &Arc<str>,
        address: SocketAddr,
    ) -> io::Result<&'a std::net::UdpSocket> {
        if !sockets.contains_key(target) {
            let socket = net::connect_udp(address, None)?;
            // Replies are never read: keep what the kernel buffers for them small.
            if let Err(error) = socket2::SockRef::from(&socket).set_recv_buffer_size(4096) {
                debug!(%error, "cannot shrink a fire-and-forget socket's receive buffer");
            }
            sockets.insert(Arc::clone(target), socket);
        }
        sockets
            .get(target)
            .ok_or_else(|| io::Error::other("socket vanished"))
    }

    /// Closes the sockets of backends a reload removed.
    fn prune(&mut self, server: &Arc<Server>) {
        if std::ptr::eq(self.pruned_for.as_ptr(), Arc::as_ptr(server)) {
            return;
        }
        self.pruned_for = Arc::downgrade(server);
        self.sockets
            .retain(|target, _| server.pool.find(target).is_some());
    }
}
