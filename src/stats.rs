//! Lock-free counters shared by the data path and the API: sessions and bytes per backend and
//! per server.
//!
//! Sessions update them with relaxed atomics as bytes move; the statistics task turns the byte
//! counters into per-second rates once a second. Nothing here takes a lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::forward::{Direction, Meter};

/// Bytes in both directions, with per-second rates. `rx` is backend to client and `tx` client
/// to backend, as in gobetween.
#[derive(Debug, Default)]
pub struct Traffic {
    pub rx: AtomicU64,
    pub tx: AtomicU64,
    /// `rx` over the last sampled second.
    pub rx_second: AtomicU64,
    /// `tx` over the last sampled second.
    pub tx_second: AtomicU64,
    rx_sampled: AtomicU64,
    tx_sampled: AtomicU64,
}

impl Traffic {
    pub fn add(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::ToClient => &self.rx,
            Direction::ToBackend => &self.tx,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Turns the byte counters into per-second rates. Called once a second by the statistics
    /// task, the only writer of the rate fields.
    pub fn sample_rates(&self) {
        let rx = self.rx.load(Ordering::Relaxed);
        let tx = self.tx.load(Ordering::Relaxed);
        let rx_before = self.rx_sampled.swap(rx, Ordering::Relaxed);
        let tx_before = self.tx_sampled.swap(tx, Ordering::Relaxed);
        self.rx_second
            .store(rx.saturating_sub(rx_before), Ordering::Relaxed);
        self.tx_second
            .store(tx.saturating_sub(tx_before), Ordering::Relaxed);
    }

    /// `rx_second + tx_second`: what `leastbandwidth` minimises.
    pub fn bytes_per_second(&self) -> u64 {
        self.rx_second.load(Ordering::Relaxed) + self.tx_second.load(Ordering::Relaxed)
    }
}

/// gobetween's per-backend counters.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Sessions open now.
    pub active: AtomicU64,
    /// Sessions ever established.
    pub total: AtomicU64,
    /// Connects that failed (refused, timed out, unreachable).
    pub refused: AtomicU64,
    pub traffic: Traffic,
}

/// A server's counters; they outlive reloads that keep the server.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Client sessions open now, connected to a backend or still connecting.
    pub active: AtomicU64,
    /// Client connections accepted and admitted.
    pub total: AtomicU64,
    /// Clients refused by the `[access]` rules.
    pub denied: AtomicU64,
    /// Clients refused because the server was at `max_connections`.
    pub over_limit: AtomicU64,
    /// Clients closed because no backend could be connected.
    pub unserved: AtomicU64,
    pub traffic: Traffic,
}

/// Something with an active-session count that a [`Slot`] can reserve.
pub trait ActiveCount: Send + Sync {
    fn active(&self) -> &AtomicU64;
}

impl ActiveCount for ServerStats {
    fn active(&self) -> &AtomicU64 {
        &self.active
    }
}

/// One reserved place in an active-session count; given back on drop.
#[derive(Debug)]
pub struct Slot<T: ActiveCount> {
    owner: Arc<T>,
}

impl<T: ActiveCount> Slot<T> {
    /// Takes a place if fewer than `limit` are taken (`None`: no limit).
    pub fn try_acquire(owner: &Arc<T>, limit: Option<u32>) -> Option<Self> {
        let limit = limit.map_or(u64::MAX, u64::from);
        owner
            .active()
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Self {
            owner: Arc::clone(owner),
        })
    }

    pub fn owner(&self) -> &Arc<T> {
        &self.owner
    }
}

impl<T: ActiveCount> Drop for Slot<T> {
    fn drop(&mut self) {
        self.owner.active().fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one session's bytes into its backend's and its server's traffic.
#[derive(Debug, Clone, Copy)]
pub struct SessionMeter<'a> {
    pub backend: &'a Traffic,
    pub server: &'a Traffic,
}

impl Meter for SessionMeter<'_> {
    fn record(&self, direction: Direction, bytes: u64) {
        self.backend.add(direction, bytes);
        self.server.add(direction, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_the_difference_since_the_last_sample() {
        let traffic = Traffic::default();
        traffic.add(Direction::ToClient, 1000);
        traffic.add(Direction::ToBackend, 10);
        traffic.sample_rates();
        assert_eq!(traffic.bytes_per_second(), 1010);
        traffic.add(Direction::ToClient, 5);
        traffic.sample_rates();
        assert_eq!(traffic.rx_second.load(Ordering::Relaxed), 5);
        assert_eq!(traffic.tx_second.load(Ordering::Relaxed), 0);
        assert_eq!(traffic.rx.load(Ordering::Relaxed), 1005);
    }

    #[test]
    fn slots_respect_the_limit_and_release_on_drop() {
        let stats = Arc::new(ServerStats::default());
        let first = Slot::try_acquire(&stats, Some(2));
        let second = Slot::try_acquire(&stats, Some(2));
        assert!(first.is_some() && second.is_some());
        assert!(Slot::try_acquire(&stats, Some(2)).is_none());
        drop(first);
        assert!(Slot::try_acquire(&stats, Some(2)).is_some());
        assert!(Slot::try_acquire(&stats, None).is_some());
    }
}
