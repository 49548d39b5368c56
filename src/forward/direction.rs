//! One direction of a session: its [`Leg`] (source, sink) and its [`Flow`] state.
//!
//! Between bursts a direction is only a readiness wait on its source: a few words in the
//! session's future, no pipe, no buffer. When data arrives, one burst (readable to
//! would-block) of the direction's strategy runs boxed, and the box is freed once the source
//! is drained. Most API-server sessions are idle watches, so this keeps a session small.

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use socket2::SockRef;
use tokio::net::TcpStream;

use super::idle::IdleClock;
use super::{Direction, ForwardError, Meter, Options, Side, copy, splice};
use crate::config::ForwardingMode;

/// Where one direction's bytes come from and go to.
#[derive(Clone)]
pub(super) struct Leg<'a> {
    pub(super) source: &'a TcpStream,
    pub(super) sink: &'a TcpStream,
    pub(super) direction: Direction,
    /// Present when the session has idle timeouts.
    clock: Option<Arc<IdleClock>>,
}

impl<'a> Leg<'a> {
    pub(super) fn new(
        source: &'a TcpStream,
        sink: &'a TcpStream,
        direction: Direction,
        clock: Option<Arc<IdleClock>>,
    ) -> Self {
        Self {
            source,
            sink,
            direction,
            clock,
        }
    }

    /// Accounts for `bytes` read from the source and written to the sink.
    pub(super) fn moved(&self, bytes: usize, meter: &impl Meter) {
        meter.record(self.direction, bytes as u64);
        if let Some(clock) = &self.clock {
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

    pub(super) fn source_error(&self, source: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.source_side(),
            source,
        }
    }

    pub(super) fn sink_error(&self, source: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.sink_side(),
            source,
        }
    }

    /// The source ended: pass the EOF on as a half-close of the sink.
    fn finish(&self) -> Result<(), ForwardError> {
        if let Some(clock) = &self.clock {
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

/// What one burst (from readable to would-block) ended with, and the bytes it moved.
pub(super) enum Step {
    /// The source has no more data for now.
    Drained(u64),
    /// The source sent EOF.
    Ended(u64),
    /// Splice cannot serve this direction (nothing was moved): copy instead.
    Unsupported,
    /// A copy burst turned out to be bulk (its largest buffer keeps filling): the `auto`
    /// strategy moves the rest of the burst with splice.
    Bulk(u64),
}

/// A splicing burst of at least this many bytes keeps the next burst splicing (`auto`).
const STILL_BULK: u64 = 64 * 1024;

type Burst<'a> = Pin<Box<dyn Future<Output = Result<Step, ForwardError>> + Send + 'a>>;

/// The state of one direction inside a session's [`Relay`](super::relay::Relay): a few words
/// while idle, plus the boxed burst while data moves.
pub(super) struct Flow<'a> {
    mode: ForwardingMode,
    /// The current burst escalated from copy to splice (`auto`).
    escalated: bool,
    /// splice(2) refused these sockets once: copy from then on.
    splice_unsupported: bool,
    /// Set once the source ended and the EOF was passed on.
    done: bool,
    total: u64,
    burst: Option<Burst<'a>>,
}

impl<'a> Flow<'a> {
    pub(super) fn new(options: &Options) -> Self {
        Self {
            mode: options.mode,
            escalated: false,
            splice_unsupported: false,
            done: false,
            total: 0,
            burst: None,
        }
    }

    /// Bytes moved once the direction is done, else `None`.
    pub(super) fn finished(&self) -> Option<u64> {
        self.done.then_some(self.total)
    }

    /// Drives this direction as far as it can go: `Ready(Ok(()))` once its source ended and
    /// the EOF was passed on, `Pending` while waiting for a socket.
    pub(super) fn poll<M: Meter + Sync>(
        &mut self,
        cx: &mut Context<'_>,
        leg: Leg<'a>,
        options: &'a Options,
        meter: &'a M,
    ) -> Poll<Result<(), ForwardError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(burst) = self.burst.as_mut() {
                let step = ready!(burst.as_mut().poll(cx));
                self.burst = None;
                match step? {
                    Step::Drained(moved) => {
                        self.total += moved;
                        // A bulk stream keeps splicing from one burst to the next; a small
                        // burst sends the direction back to copying (`auto`).
                        if moved < STILL_BULK {
                            self.escalated = false;
                        }
                    }
                    // The source is still readable: the loop starts a splice burst at once.
                    Step::Bulk(moved) => {
                        self.total += moved;
                        self.escalated = true;
                    }
                    Step::Ended(moved) => {
                        self.total += moved;
                        leg.finish()?;
                        self.done = true;
                        return Poll::Ready(Ok(()));
                    }
                    // The source is still readable: the loop starts a copy burst at once.
                    Step::Unsupported => self.splice_unsupported = true,
                }
            }
            // Through the stream's own read waker slot: only this direction ever waits on its
            // source's read side, so the one slot is enough and costs nothing.
            ready!(leg.source.poll_read_ready(cx)).map_err(|error| leg.source_error(error))?;
            self.burst = Some(start_burst(leg.clone(), self.strategy(), options, meter));
        }
    }
}

/// How the next burst of a direction moves its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    Splice,
    Copy,
    /// Copy, handing over to splice if the burst turns out to be bulk.
    CopyThenSplice,
}

impl Flow<'_> {
    fn strategy(&self) -> Strategy {
        match (self.mode, self.splice_unsupported, self.escalated) {
            (ForwardingMode::Copy, ..) | (_, true, _) => Strategy::Copy,
            (ForwardingMode::Splice, ..) | (ForwardingMode::Auto, _, true) => Strategy::Splice,
            (ForwardingMode::Auto, _, false) => Strategy::CopyThenSplice,
        }
    }
}

fn start_burst<'a, M: Meter + Sync>(
    leg: Leg<'a>,
    strategy: Strategy,
    options: &'a Options,
    meter: &'a M,
) -> Burst<'a> {
    let buffer = options.copy_buffer_size;
    match strategy {
        Strategy::Splice => {
            Box::pin(async move { splice::transfer(&leg, options.pipe_size, meter).await })
        }
        Strategy::Copy => Box::pin(async move { copy::transfer(&leg, buffer, false, meter).await }),
        Strategy::CopyThenSplice => {
            Box::pin(async move { copy::transfer(&leg, buffer, true, meter).await })
        }
    }
}
