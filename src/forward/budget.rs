//! The forwarding memory cap: one [`Budget`] shared by every session of a balancer bounds the
//! memory that forwarding holds beyond the minimum, however many readers stall.
//!
//! What is charged: a splice pipe's capacity while a direction holds it, and the part of a
//! copy buffer beyond its first [`UNCHARGED_BUFFER`] bytes. The first 16 KiB of a copy buffer
//! are free, so a direction can always move bytes: past the cap a burst copies through that
//! small buffer instead of splicing or growing its buffer, and no session ever waits or fails
//! for memory. Pooled idle pipes hold no data and are not charged.
//!
//! The accounting is a few atomics, touched once per burst (and per buffer growth), never per
//! read; the cap is checked with a compare-and-swap, so the charged total never exceeds the
//! limit in force when each grant was taken.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// The part of a copy buffer every active direction may hold without asking the budget: enough
/// for a typical API request or watch event.
pub(super) const UNCHARGED_BUFFER: usize = 16 * 1024;

/// The cap on forwarding memory (`[betwixt] forwarding_memory`) and what is charged against it.
///
/// A reload may lower the limit below what is already charged: grants taken before keep their
/// memory until their bursts end, and new ones are refused until the total is under the new
/// limit.
#[derive(Debug)]
pub struct Budget {
    limit: AtomicUsize,
    charged: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes, nothing charged.
    pub fn new(limit: usize) -> Self {
        Self {
            limit: AtomicUsize::new(limit),
            charged: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Applies a reloaded `forwarding_memory`.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// The cap, in bytes.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes charged right now.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Relaxed)
    }

    /// The most ever charged at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// How many times a pipe or a larger buffer was refused because the cap was reached.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// An empty grant, to be raised as a burst needs more.
    pub(super) fn grant(&self) -> Grant<'_> {
        Grant {
            budget: self,
            bytes: 0,
        }
    }

    /// Charges `bytes` more if the total stays within the limit.
    fn charge(&self, bytes: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        // Relaxed: the count guards no other memory, only itself.
        let charged = self
            .charged
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |charged| {
                charged.checked_add(bytes).filter(|&total| total <= limit)
            });
        match charged {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                true
            }
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Memory charged to a [`Budget`] for one burst; given back when dropped.
#[derive(Debug)]
pub(super) struct Grant<'a> {
    budget: &'a Budget,
    bytes: usize,
}

impl Grant<'_> {
    /// Raises this grant to `bytes` in all. False, and the grant unchanged, when that would
    /// take the budget past its limit.
    pub(super) fn raise_to(&mut self, bytes: usize) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        if more == 0 {
            return true;
        }
        let granted = self.budget.charge(more);
        if granted {
            self.bytes = bytes;
        }
        granted
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        self.budget.charged.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_stay_within_the_limit_and_are_given_back() {
        let budget = Budget::new(100);
        let mut first = budget.grant();
        assert!(first.raise_to(60));
        let mut second = budget.grant();
        assert!(!second.raise_to(50), "60 + 50 is past the limit");
        assert!(second.raise_to(40));
        assert_eq!(budget.charged(), 100);
        assert!(!first.raise_to(61));
        assert_eq!(budget.refused(), 2);
        drop(first);
        assert_eq!(budget.charged(), 40);
        assert!(second.raise_to(100), "raising charges only the difference");
        drop(second);
        assert_eq!((budget.charged(), budget.peak()), (0, 100));
    }

    #[test]
    fn a_lowered_limit_refuses_new_grants_until_enough_is_given_back() {
        let budget = Budget::new(100);
        let mut held = budget.grant();
        assert!(held.raise_to(80));
        budget.set_limit(50);
        assert!(!budget.grant().raise_to(1));
        drop(held);
        assert!(budget.grant().raise_to(50));
    }
}
