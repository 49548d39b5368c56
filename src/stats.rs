//! Lock-free counters shared by the data path and the API: sessions and bytes per backend and
//! per server, and the datagrams a UDP server dropped.
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

/// gobetween's per-backend counters, plus betwixt's latencies.
#[derive(Debug, Default)]
pub struct BackendStats {
    /// Sessions open now.
    pub active: AtomicU64,
    /// Sessions ever established.
    pub total: AtomicU64,
    /// Connects that failed (refused, timed out, unreachable).
    pub refused: AtomicU64,
    /// Sessions closed by `[rebalance]` because the backend held more than its share.
    pub rebalanced: AtomicU64,
    pub traffic: Traffic,
    /// Time to establish each successful connection.
    pub connect_latency: Histogram,
    /// Duration of each active health check, passed or failed.
    pub check_duration: Histogram,
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
    /// `[client_limits]`: clients refused over their `max_connections`.
    pub client_over_connections: AtomicU64,
    /// `[client_limits]`: clients refused over their `max_rate`.
    pub client_over_rate: AtomicU64,
    /// `[client_limits]`: clients refused because the table was full of active clients.
    pub client_table_full: AtomicU64,
    /// `[accept_proxy]`: connections from a source not in `trusted`, closed.
    pub proxy_untrusted: AtomicU64,
    /// `[accept_proxy]`: connections closed without a valid PROXY header in time.
    pub proxy_header_failed: AtomicU64,
    /// Connects tried after a failed one, for clients the balancer kept from seeing a failure.
    pub connect_retries: AtomicU64,
    /// How established sessions ended.
    pub ended: SessionEnds,
    pub traffic: Traffic,
    /// UDP: client datagrams not forwarded (no backend, a full socket buffer, no session
    /// possible) and backend replies that could not be sent to the client.
    pub datagrams_dropped: AtomicU64,
    /// Fetches of a dynamic discovery kind.
    pub discovery: DiscoveryStats,
    /// `[tls]` and `[sni]`: handshakes and server names.
    pub tls: TlsStats,
    /// First flights sent again to another backend after one did not answer.
    pub replay: ReplayStats,
}

/// What replaying first flights did for a server's sessions.
#[derive(Debug, Default)]
pub struct ReplayStats {
    /// First flights sent to another backend after the one before was silent, closed or reset
    /// before its first byte.
    pub replays: AtomicU64,
    /// Sessions whose first response came from a backend they were replayed to.
    pub succeeded: AtomicU64,
    /// Sessions whose backend failed before its first byte with no candidate left: closed,
    /// or left waiting on the last, silent one.
    pub exhausted: AtomicU64,
}

/// The fetches of one server's discovery task (kept across reloads, like the server's other
/// counters). The task writes, the report and metrics read.
#[derive(Debug, Default)]
pub struct DiscoveryStats {
    /// Fetches that produced a list.
    pub fetches: AtomicU64,
    /// Fetches that failed or timed out.
    pub failures: AtomicU64,
    /// When the last fetch succeeded, in milliseconds since the Unix epoch; 0 for never.
    pub last_success_ms: AtomicU64,
    /// Why the last fetch failed; cleared by a success.
    pub last_error: arc_swap::ArcSwapOption<String>,
}

impl DiscoveryStats {
    pub fn record_success(&self) {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        self.last_success_ms.store(now, Ordering::Relaxed);
        self.last_error.store(None);
    }

    pub fn record_failure(&self, reason: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.last_error.store(Some(Arc::new(reason)));
    }
}

/// The TLS side of a server: terminated handshakes, or ClientHellos read for SNI passthrough.
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Handshakes completed (termination), or ClientHellos read and routed (passthrough).
    pub handshakes: AtomicU64,
    /// Clients closed before their handshake (or ClientHello) completed, by reason.
    pub failures: HandshakeFailures,
    /// Clients whose server name no backend's `sni=` matched (the
    /// `unexpected_hostname_strategy` then decided).
    pub sni_unmatched: AtomicU64,
}

/// Why a client's TLS handshake (or, in passthrough, its ClientHello) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum HandshakeFailure {
    /// Nothing (complete) within the time allowed (`[sni] read_timeout`).
    Timeout = 0,
    /// The client closed or reset its connection.
    Closed = 1,
    /// Not TLS, or a message that does not parse.
    Malformed = 2,
    /// No version, cipher suite or signature scheme in common.
    Incompatible = 3,
    /// The client aborted with an alert (often: it does not trust the certificate).
    Alert = 4,
    /// Anything else rustls refused.
    Other = 5,
}

impl HandshakeFailure {
    pub const ALL: [HandshakeFailure; 6] = [
        Self::Timeout,
        Self::Closed,
        Self::Malformed,
        Self::Incompatible,
        Self::Alert,
        Self::Other,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Malformed => "malformed",
            Self::Incompatible => "incompatible",
            Self::Alert => "alert",
            Self::Other => "other",
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter per [`HandshakeFailure`].
#[derive(Debug, Default)]
pub struct HandshakeFailures([AtomicU64; HandshakeFailure::ALL.len()]);

impl HandshakeFailures {
    pub fn record(&self, failure: HandshakeFailure) {
        self.0[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, failure: HandshakeFailure) -> u64 {
        self.0[failure as usize].load(Ordering::Relaxed)
    }
}

/// Why an established session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum SessionEnd {
    /// Both sides closed.
    Completed = 0,
    /// A socket error or reset on either side.
    Error = 1,
    /// `client_idle_timeout` or `backend_idle_timeout`.
    IdleTimeout = 2,
    /// Its backend was marked down.
    BackendDown = 3,
    /// A reload removed its backend (with `close_sessions_on_backend_removal`).
    BackendRemoved = 4,
    /// An operator disabled its backend.
    BackendDisabled = 5,
    /// The shutdown grace period ran out.
    Shutdown = 6,
    /// A UDP session pushed out of its server's full session table (the oldest idle one).
    Evicted = 7,
    /// Closed so its client reconnects to a less loaded backend (`[rebalance]`).
    Rebalanced = 8,
}

impl SessionEnd {
    pub const ALL: [SessionEnd; 9] = [
        Self::Completed,
        Self::Error,
        Self::IdleTimeout,
        Self::BackendDown,
        Self::BackendRemoved,
        Self::BackendDisabled,
        Self::Shutdown,
        Self::Evicted,
        Self::Rebalanced,
    ];

    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Error => "error",
            Self::IdleTimeout => "idle_timeout",
            Self::BackendDown => "backend_down",
            Self::BackendRemoved => "backend_removed",
            Self::BackendDisabled => "backend_disabled",
            Self::Shutdown => "shutdown",
            Self::Evicted => "evicted",
            Self::Rebalanced => "rebalanced",
        }
    }

    pub(crate) fn from_u8(value: u8) -> Self {
        Self::ALL
            .get(usize::from(value))
            .copied()
            .unwrap_or(Self::Error)
    }
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A counter per [`SessionEnd`].
#[derive(Debug, Default)]
pub struct SessionEnds([AtomicU64; SessionEnd::ALL.len()]);

impl SessionEnds {
    pub fn record(&self, end: SessionEnd) {
        self.0[end as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, end: SessionEnd) -> u64 {
        self.0[end as usize].load(Ordering::Relaxed)
    }
}

/// A latency histogram with fixed buckets, lock-free: one atomic per bucket, a count and a
/// sum. Shaped for Prometheus (cumulative buckets in seconds at scrape time).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; Histogram::BOUNDS_MICROS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Upper bounds of the buckets, in microseconds: 0.5 ms to 10 s.
    pub const BOUNDS_MICROS: [u64; 14] = [
        500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
        2_500_000, 5_000_000, 10_000_000,
    ];

    pub fn observe(&self, elapsed: std::time::Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        if let Some(bucket) = Self::BOUNDS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
        {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (`le`), as Prometheus wants them; `+Inf` is [`count`].
    pub fn cumulative(&self) -> [(u64, u64); Histogram::BOUNDS_MICROS.len()] {
        let mut running = 0;
        std::array::from_fn(|i| {
            running += self.buckets[i].load(Ordering::Relaxed);
            (Self::BOUNDS_MICROS[i], running)
        })
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.sum_micros.load(Ordering::Relaxed))
    }
}

/// Process-wide counters: reloads and when the running config was loaded.
#[derive(Debug)]
pub struct ProcessStats {
    pub started_at: std::time::SystemTime,
    pub reloads_applied: AtomicU64,
    pub reloads_refused: AtomicU64,
    /// Seconds since the Unix epoch at which the running config was applied.
    pub config_applied_at: AtomicU64,
}

impl ProcessStats {
    pub fn config_applied_now(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.config_applied_at.store(now, Ordering::Relaxed);
    }
}

impl Default for ProcessStats {
    fn default() -> Self {
        let stats = Self {
            started_at: std::time::SystemTime::now(),
            reloads_applied: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            config_applied_at: AtomicU64::new(0),
        };
        stats.config_applied_now();
        stats
    }
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
}

impl<T: ActiveCount> Drop for Slot<T> {
    fn drop(&mut self) {
        self.owner.active().fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one session's bytes into its backend's and its server's traffic, and into the
/// session's own tally for its access log line.
#[derive(Debug, Clone, Copy)]
pub struct SessionMeter<'a> {
    pub backend: &'a Traffic,
    pub server: &'a Traffic,
    pub session: Option<&'a SessionBytes>,
}

impl Meter for SessionMeter<'_> {
    fn record(&self, direction: Direction, bytes: u64) {
        self.backend.add(direction, bytes);
        self.server.add(direction, bytes);
        if let Some(session) = self.session {
            session.add(direction, bytes);
        }
    }
}

/// The bytes one session moved, however it ended. Written by its two directions (which may
/// run on different threads), read once at its end.
#[derive(Debug, Default)]
pub struct SessionBytes {
    to_backend: AtomicU64,
    to_client: AtomicU64,
}

impl SessionBytes {
    pub fn add(&self, direction: Direction, bytes: u64) {
        let counter = match direction {
            Direction::ToBackend => &self.to_backend,
            Direction::ToClient => &self.to_client,
        };
        counter.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (to the backend, to the client).
    pub fn moved(&self) -> (u64, u64) {
        (
            self.to_backend.load(Ordering::Relaxed),
            self.to_client.load(Ordering::Relaxed),
        )
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
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::default();
        histogram.observe(std::time::Duration::from_micros(300));
        histogram.observe(std::time::Duration::from_millis(3));
        histogram.observe(std::time::Duration::from_secs(60));
        let cumulative = histogram.cumulative();
        assert_eq!(cumulative[0], (500, 1));
        assert_eq!(cumulative[3], (5_000, 2));
        assert_eq!(cumulative[13], (10_000_000, 2));
        assert_eq!(histogram.count(), 3);
        assert_eq!(histogram.sum().as_micros(), 60_003_300);
    }

    #[test]
    fn session_ends_round_trip() {
        for end in SessionEnd::ALL {
            assert_eq!(SessionEnd::from_u8(end as u8), end);
        }
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
