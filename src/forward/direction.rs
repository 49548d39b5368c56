//! One direction of a session: its [`Leg`] (source, sink) and its [`Flow`] state.
//!
//! Between bursts a direction is only a readiness wait on its source: a few words in the
//! session's future, no pipe, no buffer. When data arrives, one burst (readable to
//! would-block) of the direction's strategy runs boxed, and the box is freed once the source
//! is drained. Most API-server sessions are idle watches, so this keeps a session small.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::leg::{Leg, Step};
use super::{ForwardError, Meter, Options, copy, splice};
use crate::config::ForwardingMode;

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
    /// The forwarding budget had no room for a pipe: copy the next burst.
    copy_next: bool,
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
            copy_next: false,
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
    /// the EOF was passed on, `Pending` while waiting for a socket. `other_done`: the opposite
    /// direction has ended, so this one's end is the session's (see [`Leg::finish`]).
    pub(super) fn poll<M: Meter + Sync>(
        &mut self,
        cx: &mut Context<'_>,
        (leg, other_done): (Leg<'a>, bool),
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
                        leg.finish(other_done)?;
                        self.done = true;
                        return Poll::Ready(Ok(()));
                    }
                    // The source is still readable: the loop starts a copy burst at once.
                    Step::Unsupported => self.splice_unsupported = true,
                    // Likewise, for this burst only: memory may be free by the next one.
                    Step::OverBudget => self.copy_next = true,
                }
            }
            // Through the stream's own read waker slot: only this direction ever waits on its
            // source's read side, so the one slot is enough and costs nothing.
            ready!(leg.source.poll_read_ready(cx)).map_err(|error| leg.source_error(error))?;
            let strategy = self.strategy();
            self.copy_next = false;
            self.burst = Some(start_burst(leg.clone(), strategy, options, meter));
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
        let copy_only = self.splice_unsupported || self.copy_next;
        match (self.mode, copy_only, self.escalated) {
            (ForwardingMode::Copy, ..) | (_, true, _) => Strategy::Copy,
            // A session sockmap could not take splices.
            (ForwardingMode::Splice | ForwardingMode::Sockmap, ..)
            | (ForwardingMode::Auto, _, true) => Strategy::Splice,
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
    let budget = &*options.budget;
    match strategy {
        Strategy::Splice => {
            Box::pin(async move { splice::transfer(&leg, options.pipe_size, budget, meter).await })
        }
        Strategy::Copy => {
            Box::pin(async move { copy::transfer(&leg, buffer, false, budget, meter).await })
        }
        Strategy::CopyThenSplice => {
            Box::pin(async move { copy::transfer(&leg, buffer, true, budget, meter).await })
        }
    }
}
