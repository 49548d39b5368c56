//! The sessions of one UDP listener, keyed by client address, with a bound.
//!
//! Owned by the listener's receive loop; nothing else touches it. Past the bound (the server's
//! `max_connections`, else [`DEFAULT_MAX_SESSIONS`], never more than the process's descriptor
//! budget) the least recently active session is evicted, so a flood of spoofed source
//! addresses recycles sessions instead of exhausting descriptors or memory. Eviction runs a
//! second-chance (CLOCK) queue: a session that got a datagram since the hand last passed goes to
//! the back instead, so the per-datagram cost is one flag store, not a reordering.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use tracing::warn;

use super::budget::socket_budget;
use super::spare::{Spare, SpareSockets};
use super::{Endpoint, UdpSession};
use crate::logging::RateLimit;
use crate::snapshot::Server;
use crate::stats::SessionEnd;

/// Sessions per UDP server when `max_connections` is not set.
pub(crate) const DEFAULT_MAX_SESSIONS: usize = 65_536;

/// The sessions of one listener.
#[derive(Debug)]
pub(crate) struct SessionTable {
    pub(crate) endpoint: Arc<Endpoint>,
    /// Sessions that take requests, by client address.
    attached: HashMap<SocketAddr, Arc<UdpSession>>,
    /// Every session not yet counted out, oldest first: the eviction hand's circle.
    order: VecDeque<Weak<UdpSession>>,
    /// Sessions counted against the bound: opened and neither ended nor evicted.
    counted: usize,
    ended_rx: mpsc::UnboundedReceiver<Arc<UdpSession>>,
    eviction_log: RateLimit,
    /// Sockets of completed sessions, for the next sessions to their backends.
    pub(crate) spares: SpareSockets,
}

impl SessionTable {
    pub(crate) fn new(
        endpoint: Arc<Endpoint>,
        ended_rx: mpsc::UnboundedReceiver<Arc<UdpSession>>,
    ) -> Self {
        Self {
            endpoint,
            attached: HashMap::new(),
            order: VecDeque::new(),
            counted: 0,
            ended_rx,
            eviction_log: RateLimit::per_second(),
            spares: SpareSockets::default(),
        }
    }

    /// The bound for `server`: `max_connections`, else [`DEFAULT_MAX_SESSIONS`], at most the
    /// process's socket budget.
    pub(crate) fn bound(server: &Server) -> usize {
        server
            .config
            .max_connections
            .map_or(DEFAULT_MAX_SESSIONS, |max| max as usize)
            .min(socket_budget())
            .max(1)
    }

    pub(crate) fn get(&self, client: &SocketAddr) -> Option<&Arc<UdpSession>> {
        self.attached.get(client)
    }

    /// Stops routing `client`'s datagrams to `session`; the session itself goes on (it may
    /// still wait for replies).
    pub(crate) fn detach(&mut self, session: &Arc<UdpSession>) {
        if self
            .attached
            .get(&session.client)
            .is_some_and(|current| Arc::ptr_eq(current, session))
        {
            self.attached.remove(&session.client);
        }
    }

    /// Adds a session just opened and routes its client's datagrams to it.
    pub(crate) fn insert(&mut self, session: Arc<UdpSession>) {
        self.counted += 1;
        self.order.push_back(Arc::downgrade(&session));
        self.attached.insert(session.client, session);
        // Queue entries of ended sessions are skipped when met; this keeps them few.
        if self.order.len() > 2 * self.counted + 1024 {
            self.order
                .retain(|weak| weak.upgrade().is_some_and(|s| !s.is_stopped()));
        }
    }

    /// Waits for the next session to end (its task is over), for the receive loop's select.
    pub(crate) async fn next_ended(&mut self) -> Option<Arc<UdpSession>> {
        self.ended_rx.recv().await
    }

    /// Counts out an ended session, and keeps its socket if it may serve another session of
    /// `server` (see [`super::spare`]).
    pub(crate) fn remove_ended(&mut self, session: Arc<UdpSession>, server: &Arc<Server>) {
        self.detach(&session);
        if session.was_evicted() {
            return;
        }
        self.counted = self.counted.saturating_sub(1);
        let reusable = SessionEnd::from_u8(session.end_reason.load(Ordering::Acquire))
            == SessionEnd::Completed
            && Arc::ptr_eq(&session.server, server)
            && !server.config.udp.is_some_and(|udp| udp.transparent)
            && !session.backend_closer.is_cancelled();
        let Some(backend) = session.backend.resolved.filter(|_| reusable) else {
            return;
        };
        // The last reference unless the receive loop still holds one (then it just closes).
        if let Some(ended) = Arc::into_inner(session) {
            let spare = Spare {
                socket: ended.socket,
                budget: ended._socket_budget,
            };
            self.spares.keep(backend, spare);
        }
    }

    /// Counts out every session that ended since the last call.
    pub(crate) fn reap(&mut self, server: &Arc<Server>) {
        while let Ok(session) = self.ended_rx.try_recv() {
            self.remove_ended(session, server);
        }
    }

    /// Evicts the least recently active sessions until one more fits under `bound`. False when
    /// nothing could be evicted.
    pub(crate) fn make_room(&mut self, server: &Arc<Server>, bound: usize) -> bool {
        self.reap(server);
        while self.counted >= bound {
            if !self.evict_one(server) {
                return false;
            }
        }
        true
    }

    /// Evicts the oldest session that got no client datagram since the hand last passed it.
    /// Bounded: each entry is looked at most twice.
    pub(crate) fn evict_one(&mut self, server: &Server) -> bool {
        for _ in 0..2 * self.order.len() + 1 {
            let Some(weak) = self.order.pop_front() else {
                return false;
            };
            let Some(session) = weak.upgrade() else {
                continue;
            };
            if session.is_stopped() {
                continue;
            }
            if session.take_reference() {
                self.order.push_back(weak);
                continue;
            }
            session.mark_evicted();
            session.stop(SessionEnd::Evicted);
            self.detach(&session);
            self.counted = self.counted.saturating_sub(1);
            if let Some(suppressed) = self.eviction_log.check() {
                warn!(
                    server = server.name(),
                    client = %session.client,
                    sessions = self.counted + 1,
                    suppressed,
                    "UDP session table full; the least recently active session was evicted"
                );
            }
            return true;
        }
        false
    }
}
