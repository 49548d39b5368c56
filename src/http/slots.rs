//! The connection slots of one HTTP listener: a fixed number, and a full listener makes room
//! by closing its oldest idle connection rather than refusing the newcomer.
//!
//! Without eviction, connections that send nothing would hold every slot until their header
//! timeout and lock operators (and `betwixt status`, and Prometheus) out of the API and the
//! metrics. A connection is idle from its accept until a request is complete (so a silent or
//! slow-header client, or one in its TLS handshake, can be evicted) and between requests; it
//! is busy while a request is answered, and a busy connection is never evicted, so a change
//! through the API is never cut half-way. When every slot is busy, the newcomer is refused.
//!
//! Shared by the accept task (which admits and evicts) and the connection tasks (which mark
//! requests and free their slot when they end), behind one mutex held for a scan of at most
//! the slot count.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tracing::debug;

const IDLE: u8 = 0;
const BUSY: u8 = 1;
const EVICTED: u8 = 2;

/// The slots of one listener.
#[derive(Debug, Clone)]
pub(crate) struct Slots {
    capacity: usize,
    open: Arc<Mutex<Open>>,
}

/// The connections holding a slot, oldest first.
#[derive(Debug, Default)]
struct Open {
    next_id: u64,
    by_age: BTreeMap<u64, Arc<Connection>>,
}

#[derive(Debug)]
struct Connection {
    peer: SocketAddr,
    /// `IDLE`, `BUSY` or `EVICTED`; only `IDLE` becomes `EVICTED`.
    state: AtomicU8,
    evicted: CancellationToken,
}

/// One admitted connection's slot, freed on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    id: u64,
    connection: Arc<Connection>,
    open: Arc<Mutex<Open>>,
}

/// Marks its connection busy; idle again on drop.
#[derive(Debug)]
pub(crate) struct Busy(Arc<Connection>);

impl Slots {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            open: Arc::default(),
        }
    }

    /// A slot for a connection from `peer`, evicting the oldest idle connection when every
    /// slot is taken; `None` when every connection is busy.
    pub fn admit(&self, peer: SocketAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.by_age.len() >= self.capacity {
            let oldest_idle = open
                .by_age
                .iter()
                .find(|(_, connection)| connection.evict())
                .map(|(id, connection)| (*id, connection.peer));
            let (id, evicted_peer) = oldest_idle?;
            open.by_age.remove(&id);
            debug!(client = %evicted_peer, newcomer = %peer, "idle HTTP connection closed to make room");
        }
        let id = open.next_id;
        open.next_id += 1;
        let connection = Arc::new(Connection {
            peer,
            state: AtomicU8::new(IDLE),
            evicted: CancellationToken::new(),
        });
        open.by_age.insert(id, Arc::clone(&connection));
        Some(Slot {
            id,
            connection,
            open: Arc::clone(&self.open),
        })
    }
}

impl Connection {
    /// Idle to evicted; false when busy or already evicted.
    fn evict(&self) -> bool {
        let evicted = self
            .state
            .compare_exchange(IDLE, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if evicted {
            self.evicted.cancel();
        }
        evicted
    }
}

impl Slot {
    /// Completes when the connection was evicted: its task should drop it.
    pub fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.connection.evicted.cancelled()
    }

    /// Marks a request in progress, which eviction waits for; `None` when the connection was
    /// evicted already (its request is not to be started).
    pub fn start_request(&self) -> Option<Busy> {
        self.connection
            .state
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Busy(Arc::clone(&self.connection)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Absent when evicted; the id is never reused.
        open.by_age.remove(&self.id);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Only this guard moves the state away from BUSY.
        self.0.state.store(IDLE, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_full_listener_evicts_its_oldest_idle_connection() {
        let slots = Slots::new(3);
        let first = slots.admit(peer(1)).unwrap();
        let second = slots.admit(peer(2)).unwrap();
        let third = slots.admit(peer(3)).unwrap();
        let busy = first.start_request().unwrap();

        let fourth = slots.admit(peer(4)).expect("room made");
        assert!(!first.connection.evicted.is_cancelled());
        assert!(second.connection.evicted.is_cancelled());
        assert!(
            second.start_request().is_none(),
            "an evicted connection starts nothing"
        );

        let fifth = slots.admit(peer(5)).expect("room made");
        assert!(third.connection.evicted.is_cancelled());
        let _busy = [
            fourth.start_request().unwrap(),
            fifth.start_request().unwrap(),
        ];
        assert!(slots.admit(peer(6)).is_none(), "every connection busy");

        drop(busy);
        assert!(slots.admit(peer(7)).is_some(), "first is idle again");
        assert!(first.connection.evicted.is_cancelled());
    }

    #[test]
    fn a_closed_connection_frees_its_slot() {
        let slots = Slots::new(1);
        let only = slots.admit(peer(1)).unwrap();
        let _busy = only.start_request().unwrap();
        assert!(slots.admit(peer(2)).is_none());
        drop(only);
        let next = slots.admit(peer(3)).expect("slot freed");
        assert!(!next.connection.evicted.is_cancelled());
    }
}
