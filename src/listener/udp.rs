//! A UDP listener: the receive loop of one `protocol = "udp"` server.
//!
//! One task per server reads client datagrams with `recvmmsg` into buffers allocated once, a
//! few batches per wake-up, and dispatches each: to the client's session if it has one, else, after the
//! `[access]` rules (checked once per session, which is keyed by address), to a new session
//! or, with `max_requests = 1`, to a backend directly. It owns the [`SessionTable`] and counts
//! out sessions as their tasks end. It loads the server from the current snapshot once per
//! batch, so a reload changes the pool of new sessions at once while existing sessions keep
//! theirs: a reload that keeps the server and its bind keeps this task and every session.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::Shared;
use crate::access;
use crate::net::DatagramBatch;
use crate::session::udp::forget::FireAndForget;
use crate::session::udp::{Endpoint, Forwarded, MAX_DATAGRAM, SessionTable, Unopened, open};
use crate::snapshot::Server;

/// Datagrams one `recvmmsg` returns at most. Each slot holds the largest datagram, so a
/// listener's buffers take `RECEIVE_SLOTS * 64 KiB`.
const RECEIVE_SLOTS: usize = 16;

/// Batches read per wake-up before the loop looks at its other duties.
const RECEIVE_ROUNDS: usize = 4;

/// The receive loop's state.
struct Receiver {
    name: Arc<str>,
    server: Arc<Server>,
    table: SessionTable,
    forget: FireAndForget,
    shared: Shared,
}

/// Receives datagrams for server `name` until `stop` is cancelled. Sessions then get
/// [`LINGER_AFTER_STOP`](crate::session::udp::LINGER_AFTER_STOP) for their last replies.
pub async fn receive_loop(
    name: Arc<str>,
    socket: UdpSocket,
    shared: Shared,
    stop: CancellationToken,
) {
    let Some(server) = shared.snapshot.load().server(&name).cloned() else {
        error!(server = %name, "listener started for a server missing from the config");
        return;
    };
    let (ended_tx, ended_rx) = mpsc::unbounded_channel();
    let local = match socket.local_addr() {
        Ok(local) => local,
        Err(error) => {
            error!(server = %name, %error, "UDP listener has no local address");
            return;
        }
    };
    let endpoint = Arc::new(Endpoint {
        socket: Arc::new(socket),
        local,
        epoch: tokio::time::Instant::now(),
        stopped: CancellationToken::new(),
        tasks: shared.sessions.clone(),
        ended_tx,
    });
    let mut receiver = Receiver {
        name,
        server,
        table: SessionTable::new(Arc::clone(&endpoint), ended_rx),
        forget: FireAndForget::default(),
        shared,
    };
    let mut batch = DatagramBatch::new(RECEIVE_SLOTS, MAX_DATAGRAM);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(ended) = receiver.table.next_ended() => {
                receiver.table.remove_ended(ended, &receiver.server);
            }
            ready = endpoint.socket.readable() => match ready {
                Ok(()) => receiver.receive(&endpoint.socket, &mut batch),
                Err(error) => {
                    error!(server = %receiver.name, %error, "UDP listener failed");
                    break;
                }
            },
        }
    }
    endpoint.stopped.cancel();
    info!(server = %receiver.name, "listener closed");
}

impl Receiver {
    fn receive(&mut self, socket: &UdpSocket, batch: &mut DatagramBatch) {
        if let Some(current) = self.shared.snapshot.load().server(&self.name) {
            if !Arc::ptr_eq(current, &self.server) {
                self.server = Arc::clone(current);
                // Their backends may be gone or changed.
                self.table.spares.clear();
            }
        }
        for _ in 0..RECEIVE_ROUNDS {
            let received = socket.try_io(Interest::READABLE, || {
                let count = batch.receive(socket.as_fd())?;
                for index in 0..count {
                    if let Some((payload, client)) = batch.get(index) {
                        self.dispatch(client, payload);
                    }
                }
                if count < batch.slots() {
                    // The queue was empty when the batch came back short: saying so now
                    // saves the call that would only find it empty. tokio clears readiness
                    // only if no new datagram was signalled since, so none is missed.
                    return Err(ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match received {
                Ok(()) => {}
                Err(error) if error.kind() == ErrorKind::WouldBlock => return,
                Err(error) => {
                    // An unconnected socket has no peer whose ICMP errors it could report;
                    // anything here is transient (ENOMEM, ...).
                    if let Some(suppressed) = self.server.log_limits.accept.check() {
                        warn!(server = %self.name, %error, suppressed, "UDP receive failed");
                    }
                    return;
                }
            }
        }
    }

    fn dispatch(&mut self, client: SocketAddr, payload: &[u8]) {
        let now = self.table.endpoint.now_ms();
        if let Some(session) = self.table.get(&client).cloned() {
            session.mark_referenced();
            match session.forward(payload, now) {
                Forwarded::Sent { detach } => {
                    if detach {
                        self.table.detach(&session);
                    }
                    return;
                }
                // Over by its own rules, or its backend unreachable: a new session takes the
                // datagram, so the client loses nothing.
                Forwarded::Closed | Forwarded::Refused => self.table.detach(&session),
                Forwarded::Dropped(error) => {
                    self.drop_datagram(client, &error.to_string());
                    return;
                }
            }
        } else if !self.admits(client) {
            return;
        }
        let server = Arc::clone(&self.server);
        let udp = server.config.udp.unwrap_or_default();
        if udp.max_requests == Some(1) && !udp.transparent {
            let local = self.table.endpoint.local;
            if !self.forget.send(&server, client, local, payload) {
                self.drop_datagram(client, "no backend took it");
            }
            return;
        }
        self.open_and_forward(&server, client, payload, now);
    }

    fn open_and_forward(
        &mut self,
        server: &Arc<Server>,
        client: SocketAddr,
        payload: &[u8],
        now: u64,
    ) {
        // Each try opens on a fresh socket; one whose backend refuses at once is retried on the
        // next session, at most once per backend.
        for _ in 0..=server.pool.backends().len() {
            if !self.table.make_room(server, SessionTable::bound(server)) {
                self.drop_datagram(client, "the session table is full");
                return;
            }
            let session = match open(server, &self.table.endpoint, &mut self.table.spares, client) {
                Ok(session) => session,
                Err(Unopened::NoDescriptor) => {
                    // Evicted sessions free their sockets as their tasks end; spares at once.
                    self.table.spares.clear();
                    self.table.evict_one(server);
                    self.drop_datagram(client, "no descriptor left for a session socket");
                    return;
                }
                Err(Unopened::NoBackend) => {
                    self.report_unserved(client);
                    return;
                }
            };
            self.table.insert(Arc::clone(&session));
            match session.forward(payload, now) {
                Forwarded::Sent { detach } => {
                    if detach {
                        self.table.detach(&session);
                    }
                    return;
                }
                Forwarded::Closed | Forwarded::Refused => self.table.detach(&session),
                Forwarded::Dropped(error) => {
                    self.drop_datagram(client, &error.to_string());
                    return;
                }
            }
        }
        self.report_unserved(client);
    }

    /// `[access]`, for the first datagram of a session.
    fn admits(&self, client: SocketAddr) -> bool {
        let server = &self.server;
        let Some(rules) = &server.config.access else {
            return true;
        };
        if access::allows(rules, client.ip()) {
            return true;
        }
        server.stats.denied.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.denied.check() {
            info!(server = server.name(), client = %client, suppressed, "datagram denied by access rules");
        }
        false
    }

    fn drop_datagram(&self, client: SocketAddr, why: &str) {
        self.server
            .stats
            .datagrams_dropped
            .fetch_add(1, Ordering::Relaxed);
        debug!(server = %self.name, client = %client, why, "datagram dropped");
    }

    fn report_unserved(&self, client: SocketAddr) {
        let server = &self.server;
        server.stats.unserved.fetch_add(1, Ordering::Relaxed);
        server
            .stats
            .datagrams_dropped
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.unserved.check() {
            error!(
                server = server.name(),
                client = %client,
                backends = server.pool.backends().len(),
                suppressed,
                "no backend could take the datagram; dropped"
            );
        }
    }
}
