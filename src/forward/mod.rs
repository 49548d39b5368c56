//! Moving bytes between a client and its backend: one bidirectional API, two strategies.
//!
//! [`bidirectional`] runs both directions of one session inside the session's task. Each
//! direction forwards until its source ends, then half-closes the other side (`shutdown(Write)`)
//! while the opposite direction goes on; an error on either socket ends both, and the peer of
//! the failed side is aborted (RST) rather than closed cleanly, so a truncated stream never looks
//! complete. Bytes are reported to a [`Meter`] as they move, so counters stay live and nothing is
//! lost when a session is cancelled.
//!
//! A session with TLS on either side ([`Stream`]) goes through [`relay`], which hands two TCP
//! sockets to [`bidirectional`] and anything else to a [`StreamRelay`] (`AsyncRead` and
//! `AsyncWrite`, no splice: TLS records must be decrypted in user space; a 16 KiB buffer per
//! direction, one record).
//!
//! With `forwarding = "sockmap"`, two TCP sockets are instead handed to the kernel
//! ([`sockmap`]): a BPF program moves the bytes and the session only watches for EOF, errors
//! and idleness; where the kernel refuses, sessions splice.
//!
//! Two strategies move the bytes: [`splice`] (zero copy through a pipe, the default on Linux)
//! and [`copy`] (user space, a buffer per active direction), which is also the fallback when
//! splice cannot be used. Either holds its pipe or buffer only while data is in flight, and
//! whatever it holds beyond a 16 KiB buffer is charged to one [`Budget`] shared by every
//! session of the balancer: past that cap a burst copies through a 16 KiB buffer instead.

mod budget;
mod copy;
mod direction;
mod idle;
mod leg;
mod read_ahead;
mod relay;
#[allow(unsafe_code)]
mod sockmap;
#[allow(unsafe_code)]
mod splice;
mod stream;
#[cfg(test)]
mod tests;

pub use budget::Budget;
pub use read_ahead::ReadAhead;
pub use relay::Relay;
pub use stream::{Stream, StreamRelay};

use std::io;
use std::sync::Arc;
use std::time::Duration;

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
#[derive(Debug, Clone)]
pub struct Options {
    /// Close the session when the client sent nothing for this long.
    pub client_idle_timeout: Option<Duration>,
    /// Close the session when the backend sent nothing for this long.
    pub backend_idle_timeout: Option<Duration>,
    pub mode: ForwardingMode,
    /// Capacity of the pipe a splicing direction holds while data is in flight.
    pub pipe_size: usize,
    /// Largest user-space buffer a copying direction holds while data is in flight.
    pub copy_buffer_size: usize,
    /// The cap on pipes and buffers, shared by every session of the balancer.
    pub budget: Arc<Budget>,
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
    /// The cause is in the message and not a `source()`: sessions log the `Display` alone,
    /// and a cause-chain printer would repeat it.
    #[error("{side} socket: {error}")]
    Io { side: Side, error: io::Error },
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
pub fn bidirectional<'a, M: Meter + Sync>(
    client: &'a TcpStream,
    backend: &'a TcpStream,
    options: &'a Options,
    meter: &'a M,
) -> Relay<'a, M> {
    Relay::new(client, backend, options, meter)
}

/// Forwards between two streams of any kind: two TCP sockets through [`sockmap`] (in the
/// kernel, when configured and available) or [`bidirectional`] (splice or copy), anything with TLS through a [`StreamRelay`], under the same rules.
///
/// # Errors
/// As [`bidirectional`].
pub async fn relay<M: Meter + Sync>(
    client: &mut Stream,
    backend: &mut Stream,
    options: &Options,
    meter: &M,
) -> Result<Transferred, ForwardError> {
    match (client, backend) {
        (Stream::Tcp(client), Stream::Tcp(backend)) => {
            // Boxed: its state is large, and unboxed it would size every session's future,
            // on every forwarding path.
            if options.mode == ForwardingMode::Sockmap
                && let Some(result) =
                    Box::pin(sockmap::forward(client, backend, options, meter)).await
            {
                return result;
            }
            bidirectional(client, backend, options, meter).await
        }
        (client, backend) => StreamRelay::new(client, backend, options, meter).await,
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

/// Waits until `stream` is writable, through the stream's own write waker slot.
///
/// `TcpStream::writable()` would put a 150-byte waiter node into the waiting future; the
/// waker slot costs nothing, but only one task may wait on it at a time. That holds here: each
/// socket's write side is waited on by exactly one direction of one session (and its read
/// side by the other).
async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
}
