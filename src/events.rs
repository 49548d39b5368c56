//! A short memory of backend health flips, so the status page can show what happened in the
//! last minutes without anyone reading the log.
//!
//! Bounded: the oldest transition goes when a new one would exceed [`Events::CAPACITY`], so a
//! flapping backend costs a fixed amount of memory. Written only on a flip (rare), read only
//! by the API: a mutex is enough.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

/// One backend changing health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub at: SystemTime,
    pub server: String,
    pub backend: Arc<str>,
    pub up: bool,
    /// Why, as the log line says it (the failed check's error, or empty).
    pub reason: String,
}

/// The most recent health transitions of every server, oldest first.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<VecDeque<Transition>>,
}

impl Events {
    /// How many transitions are kept.
    pub const CAPACITY: usize = 50;

    /// Records that `backend` of `server` went up or down, now.
    pub fn record(&self, server: &str, backend: &Arc<str>, up: bool, reason: impl Into<String>) {
        let transition = Transition {
            at: SystemTime::now(),
            server: server.to_owned(),
            backend: Arc::clone(backend),
            up,
            reason: reason.into(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == Self::CAPACITY {
            ring.pop_front();
        }
        ring.push_back(transition);
    }

    /// The kept transitions, oldest first.
    pub fn recent(&self) -> Vec<Transition> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_in_order_up_to_capacity() {
        let events = Events::default();
        let backend: Arc<str> = Arc::from("127.0.0.1:6443");
        for i in 0..Events::CAPACITY + 3 {
            events.record("k3s", &backend, i % 2 == 0, format!("flip {i}"));
        }
        let recent = events.recent();
        assert_eq!(recent.len(), Events::CAPACITY);
        assert_eq!(recent[0].reason, "flip 3");
        assert_eq!(
            recent[Events::CAPACITY - 1].reason,
            format!("flip {}", Events::CAPACITY + 2)
        );
        assert!(!recent[0].up && recent[1].up);
    }
}
