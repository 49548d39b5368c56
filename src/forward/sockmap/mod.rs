//! `forwarding = "sockmap"`: the kernel moves a session's bytes, and betwixt only watches.
//!
//! Both sockets of an established TCP-to-TCP session go into a BPF sockhash whose `sk_skb`
//! verdict program ([`program`]) sends every buffer arriving on one socket out of the other.
//! The session's task then waits only for what the kernel cannot handle alone: EOF (passed on
//! as a half-close once the kernel has handed the peer everything before it), errors and resets
//! (the peer is reset, as on the splice path), idle timeouts (read from `TCP_INFO` on a timer
//! instead of stamped per read) and the byte counters (the program counts per socket; the
//! [`Meter`] gets the deltas on the same timer and at the end).
//!
//! Known limit: the sockets stay registered with tokio's reactor (readable and writable,
//! edge-triggered), so the kernel's write-space callbacks on a busy session still wake the
//! reactor, though no task and no data system call follows.
//!
//! The program is loaded once per process, on first use; when the kernel refuses it (no
//! CAP_BPF and CAP_NET_ADMIN, an old kernel) one warning says why and every session splices.
//!
//! The kernel (6.18 checked) sends each buffer of a receive queue whole, ignoring what user
//! space already read of it: a session that read part of one (its first flight, a PROXY
//! header) would send those bytes twice. So the session first moves by hand everything
//! queued, then inserts the sockets.
//!
//! Bytes that arrive while the session switches over (between that drain and the insertion,
//! or later while user space still moves some by hand) are handed to user space by the
//! program's gate ([`program`]) until user space has written every one of them to the peer;
//! only then does the kernel redirect, so a redirected byte never overtakes a byte in hand.

mod bpf;
mod program;
mod socket;

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use bpf::Kernel;

use super::{Direction, ForwardError, Meter, Options, Side, Transferred};
use crate::config::ForwardingMode;

/// The buffer of a direction moving bytes by hand: what its source has queued, within these.
const MIN_HAND_BUFFER: usize = 4 * 1024;
const MAX_HAND_BUFFER: usize = 4 * 1024 * 1024;
/// The counters and idle clocks are read this often while bytes move, and up to
/// [`QUIET_INTERVAL`] apart while nothing does.
const BUSY_INTERVAL: Duration = Duration::from_secs(1);
const QUIET_INTERVAL: Duration = Duration::from_secs(16);
/// How long an EOF waits for the kernel to hand the peer the bytes before it without any
/// progress, before the half-close goes out anyway.
const FLUSH_STALL: Duration = Duration::from_secs(60);

/// The longest kernel clock tick (`CONFIG_HZ=100`), the resolution of `TCP_INFO`'s times.
const JIFFY: Duration = Duration::from_millis(10);

static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();

/// Bytes moved by hand by every session of the process: lets tests tell a session the kernel
/// forwarded from one that only looked like it.
#[cfg(test)]
static MOVED_BY_HAND: AtomicU64 = AtomicU64::new(0);

/// The loaded program and maps, loading them on the first call.
fn kernel() -> Option<&'static Kernel> {
    KERNEL
        .get_or_init(|| match Kernel::load() {
            Ok(kernel) => {
                info!("sockmap forwarding: the kernel forwards established TCP sessions");
                Some(kernel)
            }
            Err(error) => {
                warn!(
                    %error,
                    "forwarding = \"sockmap\" is unavailable; sessions splice instead"
                );
                None
            }
        })
        .as_ref()
}

/// Forwards between `client` and `backend` in the kernel, or returns `None` (nothing moved,
/// nothing changed) when sockmap cannot take this pair: then the caller splices or copies.
///
/// # Errors
/// As [`bidirectional`](super::bidirectional).
pub(super) async fn forward<M: Meter + Sync>(
    client: &TcpStream,
    backend: &TcpStream,
    options: &Options,
    meter: &M,
) -> Option<Result<Transferred, ForwardError>> {
    let session = Session::new(client, backend, meter)?;
    // The kernel sends every buffer of the receive queue whole, even one user space has
    // read part of: so nothing may be left half-read when the sockets go in.
    match session.drain().await {
        Ok(true) => {}
        // A side already ended: the ordinary path passes the EOF on (it reads it again).
        Ok(false) => return None,
        Err(failure) => {
            session.abort_peer(&failure);
            return Some(Err(failure));
        }
    }
    match session.insert() {
        Inserted::Both => {}
        Inserted::Neither => return None,
        // The first socket is in the sockhash and may already hold bytes the program left in
        // its own queue, which taking it out would discard: it stays until the session ends,
        // and the pair is copied through user space (which reads that queue).
        Inserted::One => {
            let copy = Options {
                mode: ForwardingMode::Copy,
                ..options.clone()
            };
            return Some(super::bidirectional(client, backend, &copy, meter).await);
        }
    }
    let result = session.run(options).await;
    if let Err(failure) = &result {
        session.abort_peer(failure);
    }
    Some(result)
}

/// How far [`Session::insert`] got.
enum Inserted {
    Both,
    Neither,
    One,
}

/// One direction's bookkeeping.
struct Flow {
    /// Bytes moved by hand (those the kernel left in the source's receive queue).
    by_hand: AtomicU64,
    /// `by_hand` when the source entered the sockhash: what the program's gate compares
    /// against is the bytes moved by hand since then.
    by_hand_at_insert: AtomicU64,
    /// Bytes already reported to the meter.
    reported: AtomicU64,
    /// The source ended and the half-close was passed on.
    done: AtomicBool,
    /// The sink's written-bytes counter when the session started using sockmap.
    sink_base: u64,
}

impl Flow {
    fn new(sink: &TcpStream) -> io::Result<Self> {
        Ok(Self {
            by_hand: AtomicU64::new(0),
            by_hand_at_insert: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            done: AtomicBool::new(false),
            sink_base: socket::counters(sink)?.written,
        })
    }
}

/// A session whose sockets are in the sockhash; dropping it (the session ended or was
/// closed) takes them out, so the sockets close like any others.
struct Session<'a, M: Meter> {
    kernel: &'static Kernel,
    client: &'a TcpStream,
    backend: &'a TcpStream,
    client_cookie: u64,
    backend_cookie: u64,
    meter: &'a M,
    to_backend: Flow,
    to_client: Flow,
}

impl<'a, M: Meter + Sync> Session<'a, M> {
    /// The session's cookies and counters; nothing is in the kernel's maps yet.
    fn new(client: &'a TcpStream, backend: &'a TcpStream, meter: &'a M) -> Option<Self> {
        let kernel = kernel()?;
        let started = (|| {
            Ok::<_, io::Error>((
                socket::cookie(client)?,
                socket::cookie(backend)?,
                Flow::new(backend)?,
                Flow::new(client)?,
            ))
        })();
        let (client_cookie, backend_cookie, to_backend, to_client) = match started {
            Ok(started) => started,
            Err(error) => {
                debug!(%error, "sockmap cannot take this session; it splices");
                return None;
            }
        };
        Some(Self {
            kernel,
            client,
            backend,
            client_cookie,
            backend_cookie,
            meter,
            to_backend,
            to_client,
        })
    }

    /// Moves by hand whatever sits in either receive queue; `false` when a side already
    /// sent EOF.
    async fn drain(&self) -> Result<bool, ForwardError> {
        let mut buffer = Vec::new();
        for direction in [Direction::ToBackend, Direction::ToClient] {
            // Until the queue is empty: TCP appends new bytes to the last queued buffer, so
            // stopping at a count could leave one half-read. A peer sending without pause
            // keeps this going, forwarding as the copy path would, until it lets up.
            if !self
                .move_by_hand(direction, &mut buffer, usize::MAX)
                .await?
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Names each socket's peer (the program's gate closed), then puts both sockets into the
    /// sockhash: from then on every buffer either socket receives goes through the program.
    fn insert(&self) -> Inserted {
        let refused = |error: io::Error| {
            debug!(%error, "sockmap cannot take this session; it splices");
        };
        for direction in [Direction::ToBackend, Direction::ToClient] {
            let flow = self.flow(direction);
            flow.by_hand_at_insert
                .store(flow.by_hand.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        let linked = self
            .kernel
            .link(self.client_cookie, self.backend_cookie)
            .and_then(|()| self.kernel.link(self.backend_cookie, self.client_cookie));
        if let Err(error) = linked {
            refused(error);
            return Inserted::Neither;
        }
        if let Err(error) = self
            .kernel
            .insert_socket(self.client_cookie, self.client.as_raw_fd())
        {
            refused(error);
            return Inserted::Neither;
        }
        if let Err(error) = self
            .kernel
            .insert_socket(self.backend_cookie, self.backend.as_raw_fd())
        {
            refused(error);
            return Inserted::One;
        }
        Inserted::Both
    }

    async fn run(&self, options: &Options) -> Result<Transferred, ForwardError> {
        // Both sockets are in the sockhash, so each redirect finds its peer: open the gates
        // (each stays shut while the program has passed bytes that user space has not moved).
        for direction in [Direction::ToBackend, Direction::ToClient] {
            self.hand_over(direction)?;
        }
        let directions = async {
            tokio::try_join!(
                self.direction(Direction::ToBackend),
                self.direction(Direction::ToClient)
            )
        };
        tokio::select! {
            result = directions => {
                let (to_backend, to_client) = result?;
                Ok(Transferred { to_backend, to_client })
            }
            idle = self.watch(options) => Err(idle),
        }
    }

    /// Waits for the source's EOF or error, moving by hand whatever the kernel left readable,
    /// then passes the EOF on. Resolves with the bytes moved.
    async fn direction(&self, direction: Direction) -> Result<u64, ForwardError> {
        let (source, _, _, source_side, _) = self.ends(direction);
        let mut buffer = Vec::new();
        loop {
            source
                .ready(Interest::READABLE)
                .await
                .map_err(|error| ForwardError::Io {
                    side: source_side,
                    error,
                })?;
            let before = self.flow(direction).by_hand.load(Ordering::Relaxed);
            if !self
                .move_by_hand(direction, &mut buffer, usize::MAX)
                .await?
            {
                self.finish(direction).await?;
                return Ok(self.flow(direction).reported.load(Ordering::Relaxed));
            }
            if self.flow(direction).by_hand.load(Ordering::Relaxed) != before {
                self.hand_over(direction)?;
            }
        }
    }

    /// Tells the program how much of the source's stream user space has written to the sink
    /// since the source entered the sockhash (so after those bytes).
    fn hand_over(&self, direction: Direction) -> Result<(), ForwardError> {
        let (_, _, cookie, source_side, _) = self.ends(direction);
        let flow = self.flow(direction);
        let handed =
            flow.by_hand.load(Ordering::Relaxed) - flow.by_hand_at_insert.load(Ordering::Relaxed);
        self.kernel
            .hand_over(cookie, handed)
            .map_err(|error| ForwardError::Io {
                side: source_side,
                error,
            })
    }

    /// Reads the source until it would block (or `limit` bytes were read) and writes what it
    /// read to the sink; `false` once the source has sent EOF. The buffer is freed before
    /// returning.
    async fn move_by_hand(
        &self,
        direction: Direction,
        buffer: &mut Vec<u8>,
        mut limit: usize,
    ) -> Result<bool, ForwardError> {
        let (source, sink, _, source_side, sink_side) = self.ends(direction);
        // Sized to what is queued, so a read takes whole socket buffers.
        let queued = socket::queued(source).unwrap_or(0);
        buffer.resize(queued.clamp(MIN_HAND_BUFFER, MAX_HAND_BUFFER), 0);
        let result = loop {
            if limit == 0 {
                break Ok(true);
            }
            let room = buffer.len().min(limit);
            match source.try_read(&mut buffer[..room]) {
                Ok(0) => break Ok(false),
                Ok(read) => {
                    if let Err(error) = super::write_all(sink, &buffer[..read]).await {
                        break Err(ForwardError::Io {
                            side: sink_side,
                            error,
                        });
                    }
                    limit -= read;
                    let flow = self.flow(direction);
                    flow.by_hand.fetch_add(read as u64, Ordering::Relaxed);
                    #[cfg(test)]
                    MOVED_BY_HAND.fetch_add(read as u64, Ordering::Relaxed);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break Ok(true),
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    break Err(ForwardError::Io {
                        side: source_side,
                        error,
                    });
                }
            }
        };
        *buffer = Vec::new();
        result
    }

    /// The source ended: once the sink has been handed every byte before the EOF (the kernel
    /// sends redirected bytes from a worker, after the source saw them), half-close the sink.
    async fn finish(&self, direction: Direction) -> Result<(), ForwardError> {
        let (_, sink, _, _, sink_side) = self.ends(direction);
        let flow = self.flow(direction);
        let expected = self.moved(direction);
        let mut pause = Duration::from_millis(1);
        let mut last_written = None;
        let mut stalled = Duration::ZERO;
        loop {
            let written = socket::counters(sink)
                .map(|counters| counters.written.saturating_sub(flow.sink_base))
                .map_err(|error| ForwardError::Io {
                    side: sink_side,
                    error,
                })?;
            if written >= expected {
                break;
            }
            if last_written == Some(written) {
                stalled += pause;
                if stalled >= FLUSH_STALL {
                    warn!(
                        expected,
                        written,
                        "sockmap: the kernel stopped handing bytes to the {sink_side}; \
                         half-closing anyway"
                    );
                    break;
                }
            } else {
                stalled = Duration::ZERO;
            }
            last_written = Some(written);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        self.report(direction);
        flow.done.store(true, Ordering::Relaxed);
        match SockRef::from(sink).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(error) => Err(ForwardError::Io {
                side: sink_side,
                error,
            }),
        }
    }

    /// Reports the counters on a timer and resolves when a direction has been idle too long.
    async fn watch(&self, options: &Options) -> ForwardError {
        let timeouts = [
            (Direction::ToBackend, options.client_idle_timeout),
            (Direction::ToClient, options.backend_idle_timeout),
        ];
        let mut interval = BUSY_INTERVAL;
        loop {
            let mut next = interval;
            for (direction, timeout) in timeouts {
                let Some(timeout) = timeout else { continue };
                if self.flow(direction).done.load(Ordering::Relaxed) {
                    continue;
                }
                let (source, _, _, side, _) = self.ends(direction);
                // TCP_INFO counts in jiffies (up to 10 ms each): a reading may be one jiffy
                // ahead of the truth, and a session is never cut before its timeout.
                let quiet = socket::counters(source)
                    .map(|counters| counters.since_last_receive.saturating_sub(JIFFY))
                    .unwrap_or_default();
                if quiet >= timeout {
                    return ForwardError::Idle { side, timeout };
                }
                next = next.min(timeout - quiet);
            }
            tokio::time::sleep(next).await;
            let moved = [Direction::ToBackend, Direction::ToClient]
                .map(|direction| self.report(direction))
                .contains(&true);
            interval = if moved {
                BUSY_INTERVAL
            } else {
                (interval * 2).min(QUIET_INTERVAL)
            };
        }
    }

    /// Resets the peer of the side that failed, so a truncated stream never looks complete.
    fn abort_peer(&self, failure: &ForwardError) {
        let peer = match failure.peer() {
            Side::Client => self.client,
            Side::Backend => self.backend,
        };
        // Best effort: the socket may already be gone.
        let _ = SockRef::from(peer).set_linger(Some(Duration::ZERO));
    }
}

impl<'a, M: Meter> Session<'a, M> {
    fn flow(&self, direction: Direction) -> &Flow {
        match direction {
            Direction::ToBackend => &self.to_backend,
            Direction::ToClient => &self.to_client,
        }
    }

    /// (source, sink, source cookie, source side, sink side) of a direction.
    fn ends(&self, direction: Direction) -> (&'a TcpStream, &'a TcpStream, u64, Side, Side) {
        match direction {
            Direction::ToBackend => (
                self.client,
                self.backend,
                self.client_cookie,
                Side::Client,
                Side::Backend,
            ),
            Direction::ToClient => (
                self.backend,
                self.client,
                self.backend_cookie,
                Side::Backend,
                Side::Client,
            ),
        }
    }

    /// Everything this direction has moved: by hand plus what the kernel redirected.
    fn moved(&self, direction: Direction) -> u64 {
        let (_, _, cookie, ..) = self.ends(direction);
        let redirected = self.kernel.redirected_bytes(cookie).unwrap_or(0);
        self.flow(direction).by_hand.load(Ordering::Relaxed) + redirected
    }

    /// Hands the meter what moved since the last report; returns whether anything did.
    fn report(&self, direction: Direction) -> bool {
        let moved = self.moved(direction);
        let flow = self.flow(direction);
        let reported = flow.reported.swap(moved, Ordering::Relaxed);
        let delta = moved.saturating_sub(reported);
        if delta > 0 {
            self.meter.record(direction, delta);
        }
        delta > 0
    }
}

impl<M: Meter> Drop for Session<'_, M> {
    fn drop(&mut self) {
        for direction in [Direction::ToBackend, Direction::ToClient] {
            self.report(direction);
        }
        // Unlinked first: a buffer arriving meanwhile stays in its socket instead of being
        // redirected to a peer about to leave the sockhash (which would drop it). Errors mean
        // the kernel already took the socket out (it closed).
        for cookie in [self.client_cookie, self.backend_cookie] {
            self.kernel.unlink(cookie);
        }
        for cookie in [self.client_cookie, self.backend_cookie] {
            let _ = self.kernel.remove_socket(cookie);
        }
    }
}

#[cfg(test)]
mod tests;
