//! `[client_limits]`: how many sessions one client address (or prefix) may hold open and how
//! fast it may open new ones, so one runaway client cannot take every backend slot.
//!
//! One [`ClientTable`] per server, shared by its accept task (which admits) and its sessions
//! (whose [`ClientGuard`]s give their slot back on drop). One mutex guards the map; it is held
//! for a hash lookup and a few arithmetic operations, never across an await. The table is
//! bounded: at `table_size` entries, idle ones are swept out (at most every
//! [`SWEEP_PAUSE`], so a flood of new addresses costs one scan per pause, not one per
//! connection), and when none is idle the new client is refused ([`Refusal::TableFull`]):
//! a table full of clients with open sessions means the balancer is under a flood, and
//! refusing the newcomer protects the backends and the clients already served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ipnet::IpNet;
use tokio::time::Instant;

use crate::config::ClientLimits;

/// The least time between two sweeps of a full table.
const SWEEP_PAUSE: Duration = Duration::from_millis(100);

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It already holds `max_connections` sessions.
    Connections,
    /// It opened `max_rate` sessions within the last second.
    Rate,
    /// The table is full of clients with open sessions.
    TableFull,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connections => "max_connections",
            Self::Rate => "max_rate",
            Self::TableFull => "table_size",
        }
    }
}

/// The clients of one server.
#[derive(Debug)]
pub struct ClientTable {
    limits: ClientLimits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    entries: HashMap<IpNet, Entry>,
    /// No sweep of a full table before this.
    next_sweep: Instant,
}

#[derive(Debug)]
struct Entry {
    active: u32,
    /// Sessions it may still open now (a token bucket of `max_rate`, refilled continuously).
    tokens: f64,
    refilled: Instant,
}

impl Entry {
    fn refill(&mut self, rate: Option<u32>, now: Instant) {
        if let Some(rate) = rate {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate));
        }
        self.refilled = now;
    }

    /// No open session and a full bucket: forgetting it changes nothing.
    fn is_idle(&self, rate: Option<u32>, now: Instant) -> bool {
        let full = rate.is_none_or(|rate| {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens + elapsed * f64::from(rate) >= f64::from(rate)
        });
        self.active == 0 && full
    }
}

/// A client's session slot; dropping it (the session's end) gives it back.
#[derive(Debug)]
pub struct ClientGuard {
    table: Arc<ClientTable>,
    key: IpNet,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let rate = self.table.limits.max_rate;
        let mut state = self.table.lock();
        if let Some(entry) = state.entries.get_mut(&self.key) {
            entry.active = entry.active.saturating_sub(1);
            if entry.active == 0 && rate.is_none() {
                state.entries.remove(&self.key);
            }
        }
    }
}

impl ClientTable {
    pub fn new(limits: ClientLimits) -> Self {
        Self {
            limits,
            state: Mutex::new(State {
                entries: HashMap::new(),
                next_sweep: Instant::now(),
            }),
        }
    }

    pub fn limits(&self) -> &ClientLimits {
        &self.limits
    }

    /// Admits one new session from `client`, now.
    ///
    /// # Errors
    /// Which limit refused it.
    pub fn admit(self: &Arc<Self>, client: IpAddr) -> Result<ClientGuard, Refusal> {
        self.admit_at(client, Instant::now())
    }

    fn admit_at(self: &Arc<Self>, client: IpAddr, now: Instant) -> Result<ClientGuard, Refusal> {
        let key = self.key(client);
        let limits = &self.limits;
        let mut state = self.lock();
        if !state.entries.contains_key(&key) {
            make_room(&mut state, limits, now)?;
        }
        let entry = state.entries.entry(key).or_insert_with(|| Entry {
            active: 0,
            tokens: limits.max_rate.map_or(0.0, f64::from),
            refilled: now,
        });
        if limits
            .max_connections
            .is_some_and(|max| entry.active >= max)
        {
            return Err(Refusal::Connections);
        }
        entry.refill(limits.max_rate, now);
        if limits.max_rate.is_some() {
            if entry.tokens < 1.0 {
                return Err(Refusal::Rate);
            }
            entry.tokens -= 1.0;
        }
        entry.active += 1;
        drop(state);
        Ok(ClientGuard {
            table: Arc::clone(self),
            key,
        })
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// The network a client counts under: its address cut to the configured prefix, an
    /// IPv4-mapped IPv6 address (from a dual-stack listener) as IPv4.
    fn key(&self, client: IpAddr) -> IpNet {
        let (ip, prefix) = match client.to_canonical() {
            ip @ IpAddr::V4(_) => (ip, self.limits.ipv4_prefix),
            ip @ IpAddr::V6(_) => (ip, self.limits.ipv6_prefix),
        };
        IpNet::new(ip, prefix).map_or_else(|_| IpNet::from(ip), |network| network.trunc())
    }

    /// The map stays consistent whatever a panicking holder did: every update is one field.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Frees a place for one more entry, sweeping idle ones when the table is full.
fn make_room(state: &mut State, limits: &ClientLimits, now: Instant) -> Result<(), Refusal> {
    let cap = usize::try_from(limits.table_size).unwrap_or(usize::MAX);
    if state.entries.len() < cap {
        return Ok(());
    }
    if now < state.next_sweep {
        return Err(Refusal::TableFull);
    }
    state.next_sweep = now + SWEEP_PAUSE;
    state
        .entries
        .retain(|_, entry| !entry.is_idle(limits.max_rate, now));
    if state.entries.len() < cap {
        Ok(())
    } else {
        Err(Refusal::TableFull)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_connections: Option<u32>, max_rate: Option<u32>, size: u32) -> Arc<ClientTable> {
        Arc::new(ClientTable::new(ClientLimits {
            max_connections,
            max_rate,
            ipv4_prefix: 24,
            ipv6_prefix: 64,
            table_size: size,
        }))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn concurrent_sessions_are_counted_per_prefix_until_dropped() {
        let table = table(Some(2), None, 100);
        let now = Instant::now();
        let first = table.admit_at(ip("10.0.0.1"), now).unwrap();
        let _second = table.admit_at(ip("::ffff:10.0.0.2"), now).unwrap();
        assert_eq!(
            table.admit_at(ip("10.0.0.3"), now).unwrap_err(),
            Refusal::Connections
        );
        let _other = table.admit_at(ip("10.0.1.1"), now).unwrap();
        drop(first);
        let _third = table.admit_at(ip("10.0.0.3"), now).unwrap();
        let _v6 = table.admit_at(ip("2001:db8::1"), now).unwrap();
        let _v6_same = table.admit_at(ip("2001:db8::ffff"), now).unwrap();
        assert_eq!(
            table.admit_at(ip("2001:db8::2"), now).unwrap_err(),
            Refusal::Connections
        );
    }

    #[test]
    fn the_rate_refills_over_a_second() {
        let table = table(None, Some(4), 100);
        let start = Instant::now();
        for _ in 0..4 {
            drop(table.admit_at(ip("10.0.0.1"), start).unwrap());
        }
        assert_eq!(
            table.admit_at(ip("10.0.0.1"), start).unwrap_err(),
            Refusal::Rate
        );
        let quarter = start + Duration::from_millis(260);
        drop(table.admit_at(ip("10.0.0.1"), quarter).unwrap());
        assert_eq!(
            table.admit_at(ip("10.0.0.1"), quarter).unwrap_err(),
            Refusal::Rate
        );
        let later = start + Duration::from_secs(2);
        for _ in 0..4 {
            drop(table.admit_at(ip("10.0.0.1"), later).unwrap());
        }
    }

    #[test]
    fn a_full_table_sweeps_idle_entries_and_refuses_when_none_is() {
        let table = table(Some(10), Some(10), 3);
        let start = Instant::now();
        let held: Vec<_> = ["10.0.1.1", "10.0.2.1"]
            .iter()
            .map(|client| table.admit_at(ip(client), start).unwrap())
            .collect();
        drop(table.admit_at(ip("10.0.3.1"), start).unwrap());
        assert_eq!(table.len(), 3);
        // The third client's bucket is not full yet: not idle, nothing to sweep.
        assert_eq!(
            table.admit_at(ip("10.0.4.1"), start).unwrap_err(),
            Refusal::TableFull
        );
        // Within the sweep pause no new sweep is tried, idle or not.
        let soon = start + Duration::from_millis(50);
        assert_eq!(
            table.admit_at(ip("10.0.4.1"), soon).unwrap_err(),
            Refusal::TableFull
        );
        let later = start + Duration::from_secs(1);
        let _fourth = table.admit_at(ip("10.0.4.1"), later).unwrap();
        assert_eq!(table.len(), 3);
        let after = later + SWEEP_PAUSE;
        assert_eq!(
            table.admit_at(ip("10.0.5.1"), after).unwrap_err(),
            Refusal::TableFull
        );
        drop(held);
    }
}
