//! Moving bytes between a client and its backend: one bidirectional API, two strategies.
//!
//! [`bidirectional`] runs both directions of one session inside the session's task. Each
//! direction forwards until its source ends, then half-closes the other side (`shutdown(Write)`)
//! while the opposite direction goes on; an error on either socket ends both, and the peer of
//! the failed side is aborted (RST) rather than closed cleanly, so a truncated stream never looks
//! complete. Bytes are reported to a [`Meter`] as they move, so counters stay live and nothing is
//! lost when a session is cancelled.
//!
//! Two strategies move the bytes: [`splice`] (zero copy through a pipe, the default on Linux)
//! and [`copy`] (user space, a buffer per active direction), which is also the fallback when
//! splice cannot be used. Either holds its pipe or buffer only while data is in flight.

mod copy;
mod idle;
#[allow(unsafe_code)]
mod splice;

use idle::IdleClock;

use std::io;
use std::net::Shutdown;
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::config::ForwardingMode;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to backend (gobetween's `tx`).
    ToBackend,
    /// Backend to client (gobetween's `rx`).
    ToClient,
}

/// Receives byte counts as they are forwarded. Called from the session task only.
pub trait Meter {
    fn record(&self, direction: Direction, bytes: u64);
}

/// Per-session forwarding settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Close the session when the client sent nothing for this long.
    pub client_idle_timeout: Option<Duration>,
    /// Close the session when the backend sent nothing for this long.
    pub backend_idle_timeout: Option<Duration>,
    pub mode: ForwardingMode,
    /// Capacity of the pipe a splicing direction holds while data is in flight.
    pub pipe_size: usize,
    /// Size of the user-space buffer a copying direction holds while data is in flight.
    pub copy_buffer_size: usize,
}

impl Default for Options {
    /// No idle timeouts, splice where possible, 64 KiB pipes and buffers.
    fn default() -> Self {
        Self {
            client_idle_timeout: None,
            backend_idle_timeout: None,
            mode: ForwardingMode::Auto,
            pipe_size: 64 * 1024,
            copy_buffer_size: 64 * 1024,
        }
    }
}

/// Bytes moved by a session that ended cleanly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    pub to_backend: u64,
    pub to_client: u64,
}

/// The peer whose socket failed or went quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Backend => "backend",
        })
    }
}

/// Why a session ended other than by both sides closing.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{side} sent nothing for {timeout:?} (idle timeout)")]
    Idle { side: Side, timeout: Duration },
    #[error("{side} socket: {source}")]
    Io {
        side: Side,
        #[source]
        source: io::Error,
    },
}

impl ForwardError {
    /// The peer whose socket should be aborted: the other side of the one that failed.
    fn peer(&self) -> Side {
        let side = match self {
            Self::Idle { side, .. } | Self::Io { side, .. } => *side,
        };
        match side {
            Side::Client => Side::Backend,
            Side::Backend => Side::Client,
        }
    }
}

/// Forwards between `client` and `backend` until both directions have ended.
///
/// # Errors
/// The first socket error or idle timeout of either direction; the other direction stops at
/// once. The caller drops both streams, which closes them; the peer of the failed side has been
/// set to reset on close.
pub async fn bidirectional(
    client: &TcpStream,
    backend: &TcpStream,
    options: &Options,
    meter: &impl Meter,
) -> Result<Transferred, ForwardError> {
    let result = drive(client, backend, options, meter).await;
    if let Err(error) = &result {
        let peer = match error.peer() {
            Side::Client => client,
            Side::Backend => backend,
        };
        // Best effort: the socket may already be gone.
        let _ = SockRef::from(peer).set_linger(Some(Duration::ZERO));
    }
    result
}

/// Runs both directions and the idle watchdog until both directions end or one fails.
///
/// The direction futures are pinned in place and polled by reference: wrapping them in a join
/// combinator inside an async block would store each twice in the session's future.
async fn drive(
    client: &TcpStream,
    backend: &TcpStream,
    options: &Options,
    meter: &impl Meter,
) -> Result<Transferred, ForwardError> {
    let timeouts = (options.client_idle_timeout, options.backend_idle_timeout);
    let clock = IdleClock::new();
    let clock = (timeouts != (None, None)).then_some(&clock);
    let to_backend = forward(
        Leg::new(client, backend, Direction::ToBackend, clock),
        options,
        meter,
    );
    let to_client = forward(
        Leg::new(backend, client, Direction::ToClient, clock),
        options,
        meter,
    );
    let idle = idle::watch(clock, timeouts);
    tokio::pin!(to_backend, to_client, idle);
    let (mut sent, mut received) = (None, None);
    while sent.is_none() || received.is_none() {
        tokio::select! {
            result = &mut to_backend, if sent.is_none() => sent = Some(result?),
            result = &mut to_client, if received.is_none() => received = Some(result?),
            error = &mut idle => return Err(error),
        }
    }
    Ok(Transferred {
        to_backend: sent.unwrap_or_default(),
        to_client: received.unwrap_or_default(),
    })
}

/// What one transfer step (from readable to would-block) ended with, and the bytes it moved.
enum Step {
    /// The source has no more data for now.
    Drained(u64),
    /// The source sent EOF.
    Ended(u64),
    /// Splice cannot serve this direction (nothing was moved): copy instead.
    Unsupported,
}

/// Forwards one direction until its source's EOF; returns the bytes moved.
///
/// Between bursts the direction only waits for its source to be readable, holding neither a
/// pipe nor a buffer. Each burst (readable to would-block) is one transfer step of the
/// direction's strategy, boxed: allocated when data arrives and freed when the source is
/// drained, so an idle session's future stays small (most API-server sessions are idle).
async fn forward(leg: Leg<'_>, options: &Options, meter: &impl Meter) -> Result<u64, ForwardError> {
    let mut splicing = options.mode != ForwardingMode::Copy;
    let mut total = 0u64;
    loop {
        leg.source_readable().await?;
        match Box::pin(burst(&leg, splicing, options, meter)).await? {
            Step::Drained(moved) => total += moved,
            Step::Ended(moved) => {
                leg.finish()?;
                return Ok(total + moved);
            }
            Step::Unsupported => splicing = false,
        }
    }
}

/// One transfer step with the direction's current strategy.
async fn burst(
    leg: &Leg<'_>,
    splicing: bool,
    options: &Options,
    meter: &impl Meter,
) -> Result<Step, ForwardError> {
    if splicing {
        splice::transfer(leg, options.pipe_size, meter).await
    } else {
        copy::transfer(leg, options.copy_buffer_size, meter).await
    }
}

/// Writes all of `data` to a shared stream reference (the forwarding paths never need `&mut`).
///
/// # Errors
/// The write error; part of `data` may have been written.
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        write_ready(stream).await?;
        match stream.try_write(data) {
            Ok(written) => data = &data[written..],
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Waits until `stream` is readable, through the stream's own read waker slot.
///
/// `TcpStream::readable()` would put a 150-byte waiter node into every session's future; the
/// waker slot costs nothing, but only one task may wait on it at a time. That holds here: each
/// socket's read side is waited on by exactly one direction of one session, its write side
/// by the other.
async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
}

/// Waits until `stream` is writable, through the stream's own write waker slot (see
/// [`read_ready`]).
async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
}

/// One direction of a session: where bytes come from and go to.
struct Leg<'a> {
    source: &'a TcpStream,
    sink: &'a TcpStream,
    direction: Direction,
    /// Present when the session has idle timeouts.
    clock: Option<&'a IdleClock>,
}

impl<'a> Leg<'a> {
    fn new(
        source: &'a TcpStream,
        sink: &'a TcpStream,
        direction: Direction,
        clock: Option<&'a IdleClock>,
    ) -> Self {
        Self {
            source,
            sink,
            direction,
            clock,
        }
    }

    /// Accounts for `bytes` read from the source and written to the sink.
    fn moved(&self, bytes: usize, meter: &impl Meter) {
        meter.record(self.direction, bytes as u64);
        if let Some(clock) = self.clock {
            clock.touch(self.direction);
        }
    }

    fn source_side(&self) -> Side {
        match self.direction {
            Direction::ToBackend => Side::Client,
            Direction::ToClient => Side::Backend,
        }
    }

    fn sink_side(&self) -> Side {
        match self.direction {
            Direction::ToBackend => Side::Backend,
            Direction::ToClient => Side::Client,
        }
    }

    fn source_error(&self, source: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.source_side(),
            source,
        }
    }

    fn sink_error(&self, source: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.sink_side(),
            source,
        }
    }

    /// Waits until the source has data or EOF.
    async fn source_readable(&self) -> Result<(), ForwardError> {
        read_ready(self.source)
            .await
            .map_err(|error| self.source_error(error))
    }

    /// The source ended: pass the EOF on as a half-close of the sink.
    fn finish(&self) -> Result<(), ForwardError> {
        if let Some(clock) = self.clock {
            clock.finish(self.direction);
        }
        match SockRef::from(self.sink).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            // The sink is already fully closed; the other direction reports it if it matters.
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(error) => Err(self.sink_error(error)),
        }
    }
}
