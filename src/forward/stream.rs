//! The kinds of stream a session forwards between ([`Stream`]): a TCP socket, or TLS over one
//! (terminated from a client, or originated to a backend). Two TCP sockets go through the
//! readiness-driven [`Relay`](super::Relay) (splice or copy); a pair with TLS on either side
//! goes through [`StreamRelay`], which moves bytes through `AsyncRead`/`AsyncWrite` with the
//! same rules: per-direction idle timeouts, byte counts as they move, half-close passed on
//! (for TLS as close_notify), a reset of the peer when one side fails, and buffers that exist
//! only while data is in flight.
//!
//! A direction's buffer holds one TLS record's worth (16 KiB), never more: a bigger one let
//! rustls hand over up to `copy_buffer_size` of plaintext at once, and writing a megabyte into
//! a backend socket whose receive window cannot take it leaves the kernel to push the rest out
//! from the backend's ACKs, on the backend's CPU (BENCHMARKS.md, "TLS termination": the echo
//! backend spent a third more CPU per MiB that way). The 16 KiB are the buffer every direction
//! may hold without charge, so a TLS session never draws on the forwarding budget.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::budget::UNCHARGED_BUFFER;
use super::idle::{self, IdleClock, Watchdog};
use super::read_ahead::ReadAhead;
use super::{Direction, ForwardError, Meter, Options, Side, Transferred};

/// One end of a session.
pub enum Stream {
    Tcp(TcpStream),
    /// TLS terminated here: a client's connection after the handshake.
    TlsServer(Box<tokio_rustls::server::TlsStream<ReadAhead>>),
    /// TLS originated here: a backend connection after the handshake.
    TlsClient(Box<tokio_rustls::client::TlsStream<ReadAhead>>),
}

impl Stream {
    /// The TCP socket underneath.
    pub fn socket(&self) -> &TcpStream {
        match self {
            Self::Tcp(stream) => stream,
            Self::TlsServer(stream) => stream.get_ref().0.socket(),
            Self::TlsClient(stream) => stream.get_ref().0.socket(),
        }
    }
}

/// Delegates to the stream of each kind.
macro_rules! each_kind {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self.get_mut() {
            Stream::Tcp(stream) => Pin::new(stream).$method($($arg),*),
            Stream::TlsServer(stream) => Pin::new(&mut **stream).$method($($arg),*),
            Stream::TlsClient(stream) => Pin::new(&mut **stream).$method($($arg),*),
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_kind!(self, poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_kind!(self, poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_kind!(self, poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_kind!(self, poll_shutdown(cx))
    }
}

/// Forwards between two streams of any kind until both directions have ended.
pub struct StreamRelay<'a, M> {
    client: &'a mut Stream,
    backend: &'a mut Stream,
    options: &'a Options,
    meter: &'a M,
    clock: Option<Arc<IdleClock>>,
    watchdog: Option<Watchdog>,
    to_backend: Pump,
    to_client: Pump,
}

impl<'a, M: Meter + Sync> StreamRelay<'a, M> {
    pub(super) fn new(
        client: &'a mut Stream,
        backend: &'a mut Stream,
        options: &'a Options,
        meter: &'a M,
    ) -> Self {
        let (clock, watchdog) = idle::clock_and_watchdog(options);
        Self {
            client,
            backend,
            options,
            meter,
            clock,
            watchdog,
            to_backend: Pump::new(Direction::ToBackend),
            to_client: Pump::new(Direction::ToClient),
        }
    }
}

impl<M: Meter + Sync> Future for StreamRelay<'_, M> {
    type Output = Result<Transferred, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let failure = 'failed: {
            if let Some(watchdog) = this.watchdog.as_mut()
                && let Poll::Ready(idle) = watchdog.as_mut().poll(cx)
            {
                break 'failed idle;
            }
            let context = PumpContext {
                options: this.options,
                meter: this.meter,
                clock: this.clock.as_deref(),
            };
            let to_backend =
                this.to_backend
                    .poll(cx, &mut *this.client, &mut *this.backend, &context);
            if let Poll::Ready(Err(error)) = to_backend {
                break 'failed error;
            }
            let to_client =
                this.to_client
                    .poll(cx, &mut *this.backend, &mut *this.client, &context);
            if let Poll::Ready(Err(error)) = to_client {
                break 'failed error;
            }
            return match (this.to_backend.finished(), this.to_client.finished()) {
                (Some(to_backend), Some(to_client)) => Poll::Ready(Ok(Transferred {
                    to_backend,
                    to_client,
                })),
                _ => Poll::Pending,
            };
        };
        let peer = match failure.peer() {
            Side::Client => this.client.socket(),
            Side::Backend => this.backend.socket(),
        };
        // Best effort: the socket may already be gone.
        let _ = SockRef::from(peer).set_linger(Some(Duration::ZERO));
        Poll::Ready(Err(failure))
    }
}

/// What both directions of a [`StreamRelay`] share.
struct PumpContext<'a, 'c, M> {
    options: &'a Options,
    meter: &'a M,
    clock: Option<&'c IdleClock>,
}

/// Where one direction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Moving,
    /// The source ended: the sink is being shut down (close_notify for TLS).
    Closing,
    Done,
}

/// One direction of a [`StreamRelay`].
struct Pump {
    direction: Direction,
    stage: Stage,
    /// Held only while data is in flight: between bursts a direction owns no buffer.
    buffer: Vec<u8>,
    /// `buffer[..filled]` was read from the source...
    filled: usize,
    /// ...and `buffer[written..filled]` is still to be written to the sink.
    written: usize,
    /// The sink took bytes since its last flush (TLS writes records lazily).
    unflushed: bool,
    total: u64,
}

/// The most a [`Pump`] holds: one full TLS record's plaintext.
const RECORD_BUFFER: usize = UNCHARGED_BUFFER;

impl Pump {
    fn new(direction: Direction) -> Self {
        Self {
            direction,
            stage: Stage::Moving,
            buffer: Vec::new(),
            filled: 0,
            written: 0,
            unflushed: false,
            total: 0,
        }
    }

    fn finished(&self) -> Option<u64> {
        (self.stage == Stage::Done).then_some(self.total)
    }

    fn sides(&self) -> (Side, Side) {
        match self.direction {
            Direction::ToBackend => (Side::Client, Side::Backend),
            Direction::ToClient => (Side::Backend, Side::Client),
        }
    }

    fn poll<M: Meter>(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut Stream,
        sink: &mut Stream,
        context: &PumpContext<'_, '_, M>,
    ) -> Poll<Result<(), ForwardError>> {
        let (source_side, sink_side) = self.sides();
        let sink_error = |error| ForwardError::Io {
            side: sink_side,
            error,
        };
        loop {
            match self.stage {
                Stage::Done => return Poll::Ready(Ok(())),
                Stage::Closing => {
                    ready!(Pin::new(&mut *sink).poll_shutdown(cx))
                        .or_else(ignore_not_connected)
                        .map_err(sink_error)?;
                    self.stage = Stage::Done;
                    if let Some(clock) = context.clock {
                        clock.finish(self.direction);
                    }
                }
                Stage::Moving if self.written < self.filled => {
                    let pending = &self.buffer[self.written..self.filled];
                    let wrote =
                        ready!(Pin::new(&mut *sink).poll_write(cx, pending)).map_err(sink_error)?;
                    if wrote == 0 {
                        return Poll::Ready(Err(sink_error(io::ErrorKind::WriteZero.into())));
                    }
                    self.written += wrote;
                    self.unflushed = true;
                    self.total += wrote as u64;
                    context.meter.record(self.direction, wrote as u64);
                }
                Stage::Moving => {
                    let read = self.read(cx, source, context.options);
                    match read {
                        Poll::Pending => {
                            self.release();
                            if self.unflushed {
                                ready!(Pin::new(&mut *sink).poll_flush(cx)).map_err(sink_error)?;
                                self.unflushed = false;
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(error)) => {
                            return Poll::Ready(Err(ForwardError::Io {
                                side: source_side,
                                error,
                            }));
                        }
                        Poll::Ready(Ok(0)) => {
                            self.release();
                            self.stage = Stage::Closing;
                        }
                        Poll::Ready(Ok(_)) => {
                            if let Some(clock) = context.clock {
                                clock.touch(self.direction);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Reads into a fresh buffer, or the one this burst already holds: `Ok(0)` at the end of
    /// the source.
    fn read(
        &mut self,
        cx: &mut Context<'_>,
        source: &mut Stream,
        options: &Options,
    ) -> Poll<io::Result<usize>> {
        if self.buffer.is_empty() {
            self.buffer = vec![0; RECORD_BUFFER.min(options.copy_buffer_size.max(1))];
        }
        self.filled = 0;
        self.written = 0;
        let mut read_buf = ReadBuf::new(&mut self.buffer);
        ready!(Pin::new(source).poll_read(cx, &mut read_buf))?;
        self.filled = read_buf.filled().len();
        Poll::Ready(Ok(self.filled))
    }

    /// Frees the buffer: the direction is between bursts.
    fn release(&mut self) {
        if self.written >= self.filled {
            self.buffer = Vec::new();
            self.filled = 0;
            self.written = 0;
        }
    }
}

/// A sink the peer already closed completely: nothing is left to shut down.
fn ignore_not_connected(error: io::Error) -> io::Result<()> {
    if error.kind() == io::ErrorKind::NotConnected {
        Ok(())
    } else {
        Err(error)
    }
}
