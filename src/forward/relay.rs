//! The future that forwards one session: both directions and the idle watchdog.
//!
//! Hand-written rather than `async`: the client and backend streams, the options and the meter
//! are stored once for both directions, and no join or select machinery sits in every idle
//! session. What an idle session costs is, in the end, this struct plus its task.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::SockRef;
use tokio::net::TcpStream;

use super::direction::Flow;
use super::idle::{self, IdleClock, Watchdog};
use super::leg::Leg;
use super::{Direction, ForwardError, Meter, Options, Side, Transferred};

/// Forwards between a client and its backend until both directions have ended; see
/// [`bidirectional`](super::bidirectional).
pub struct Relay<'a, M> {
    client: &'a TcpStream,
    backend: &'a TcpStream,
    options: &'a Options,
    meter: &'a M,
    /// Present, with the watchdog, only when the session has idle timeouts.
    clock: Option<Arc<IdleClock>>,
    watchdog: Option<Watchdog>,
    to_backend: Flow<'a>,
    to_client: Flow<'a>,
}

impl<'a, M: Meter + Sync> Relay<'a, M> {
    pub(super) fn new(
        client: &'a TcpStream,
        backend: &'a TcpStream,
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
            to_backend: Flow::new(options),
            to_client: Flow::new(options),
        }
    }

    fn leg(&self, direction: Direction) -> Leg<'a> {
        let (source, sink) = match direction {
            Direction::ToBackend => (self.client, self.backend),
            Direction::ToClient => (self.backend, self.client),
        };
        Leg::new(source, sink, direction, self.clock.clone())
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

impl<M: Meter + Sync> Future for Relay<'_, M> {
    type Output = Result<Transferred, ForwardError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is Unpin (references, boxes): no structural pinning is needed.
        let this = self.get_mut();
        let failure = 'failed: {
            if let Some(watchdog) = this.watchdog.as_mut()
                && let Poll::Ready(idle) = watchdog.as_mut().poll(cx)
            {
                break 'failed idle;
            }
            for direction in [Direction::ToBackend, Direction::ToClient] {
                let leg = this.leg(direction);
                let (options, meter) = (this.options, this.meter);
                let (flow, other) = match direction {
                    Direction::ToBackend => (&mut this.to_backend, &this.to_client),
                    Direction::ToClient => (&mut this.to_client, &this.to_backend),
                };
                let other_done = other.finished().is_some();
                if let Poll::Ready(Err(error)) = flow.poll(cx, (leg, other_done), options, meter) {
                    break 'failed error;
                }
            }
            return match (this.to_backend.finished(), this.to_client.finished()) {
                (Some(to_backend), Some(to_client)) => Poll::Ready(Ok(Transferred {
                    to_backend,
                    to_client,
                })),
                _ => Poll::Pending,
            };
        };
        this.abort_peer(&failure);
        Poll::Ready(Err(failure))
    }
}
