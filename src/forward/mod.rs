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
#[allow(unsafe_code)]
mod splice;

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
    let to_backend = forward(
        Leg::new(
            client,
            backend,
            Direction::ToBackend,
            options.client_idle_timeout,
        ),
        options,
        meter,
    );
    let to_client = forward(
        Leg::new(
            backend,
            client,
            Direction::ToClient,
            options.backend_idle_timeout,
        ),
        options,
        meter,
    );
    match tokio::try_join!(to_backend, to_client) {
        Ok((to_backend, to_client)) => Ok(Transferred {
            to_backend,
            to_client,
        }),
        Err(error) => {
            let peer = match error.peer() {
                Side::Client => client,
                Side::Backend => backend,
            };
            // Best effort: the socket may already be gone.
            let _ = SockRef::from(peer).set_linger(Some(Duration::ZERO));
            Err(error)
        }
    }
}

/// One direction with the configured strategy.
async fn forward(leg: Leg<'_>, options: &Options, meter: &impl Meter) -> Result<u64, ForwardError> {
    match options.mode {
        ForwardingMode::Copy => copy::forward(leg, options.copy_buffer_size, meter).await,
        ForwardingMode::Auto | ForwardingMode::Splice => {
            splice::forward(leg, options.pipe_size, options.copy_buffer_size, meter).await
        }
    }
}

/// Writes all of `data` to a shared stream reference (the forwarding paths never need `&mut`).
///
/// # Errors
/// The write error; part of `data` may have been written.
pub async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        stream.writable().await?;
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

/// One direction of a session: where bytes come from and go to.
struct Leg<'a> {
    source: &'a TcpStream,
    sink: &'a TcpStream,
    direction: Direction,
    idle_timeout: Option<Duration>,
}

impl<'a> Leg<'a> {
    fn new(
        source: &'a TcpStream,
        sink: &'a TcpStream,
        direction: Direction,
        idle_timeout: Option<Duration>,
    ) -> Self {
        Self {
            source,
            sink,
            direction,
            idle_timeout,
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

    /// Waits until the source has data or EOF, bounded by the idle timeout.
    async fn source_readable(&self) -> Result<(), ForwardError> {
        let readable = self.source.readable();
        let ready =
            match self.idle_timeout {
                None => readable.await,
                Some(timeout) => tokio::time::timeout(timeout, readable).await.map_err(|_| {
                    ForwardError::Idle {
                        side: self.source_side(),
                        timeout,
                    }
                })?,
            };
        ready.map_err(|error| self.source_error(error))
    }

    /// The source ended: pass the EOF on as a half-close of the sink.
    fn finish(&self) -> Result<(), ForwardError> {
        match SockRef::from(self.sink).shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            // The sink is already fully closed; the other direction reports it if it matters.
            Err(error) if error.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(error) => Err(self.sink_error(error)),
        }
    }
}
