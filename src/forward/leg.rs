//! One direction's two sockets ([`Leg`]) and what a burst of forwarding ends with ([`Step`]):
//! the vocabulary shared by the strategies ([`copy`](super::copy), [`splice`](super::splice))
//! and the [`Flow`](super::direction::Flow) that drives them.

use std::io;
use std::net::Shutdown;
use std::sync::Arc;

use socket2::SockRef;
use tokio::net::TcpStream;

use super::idle::IdleClock;
use super::{Direction, ForwardError, Meter, Side};

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

    pub(super) fn source_error(&self, error: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.source_side(),
            error,
        }
    }

    pub(super) fn sink_error(&self, error: io::Error) -> ForwardError {
        ForwardError::Io {
            side: self.sink_side(),
            error,
        }
    }

    /// The source ended: pass the EOF on as a half-close of the sink.
    ///
    /// Unless the other direction has ended too (`last`): then the session closes both sockets
    /// next, and the close sends the sink's FIN after any data still queued, as the shutdown
    /// would (the sink's receive queue is empty, since its own EOF was read, so the close
    /// cannot turn into a reset). One system call less for every session that ends cleanly.
    pub(super) fn finish(&self, last: bool) -> Result<(), ForwardError> {
        if let Some(clock) = &self.clock {
            clock.finish(self.direction);
        }
        if last {
            return Ok(());
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
    /// A pipe would take the forwarding budget past its cap (nothing was moved): copy this
    /// burst.
    OverBudget,
    /// A copy burst turned out to be bulk (its largest buffer keeps filling): the `auto`
    /// strategy moves the rest of the burst with splice.
    Bulk(u64),
}
