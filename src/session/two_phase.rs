//! A session's task has two phases, establishing (open, route, connect, first flight) and
//! relaying, and most of its life is spent idle in the second. One `async` block holding both
//! would keep room for the first phase's state, its arguments and everything it ever
//! borrowed, all through the second. Chained here, the task holds one phase at a time: its
//! size is the larger of the two, never their sum.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

pin_project_lite::pin_project! {
    /// Runs `first` to completion, then the future `then` makes of its output, in place.
    #[project = PhaseProjection]
    pub(crate) enum TwoPhase<A: Future, B> {
        First { #[pin] future: A, then: fn(A::Output) -> B },
        Second { #[pin] future: B },
    }
}

/// `first`, then `then(first's output)`, as one future.
pub(crate) fn two_phase<A: Future, B: Future>(
    first: A,
    then: fn(A::Output) -> B,
) -> TwoPhase<A, B> {
    TwoPhase::First {
        future: first,
        then,
    }
}

impl<A: Future, B: Future> Future for TwoPhase<A, B> {
    type Output = B::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<B::Output> {
        loop {
            match self.as_mut().project() {
                PhaseProjection::First { future, then } => {
                    let then = *then;
                    let output = ready!(future.poll(cx));
                    // Drops the first phase's future before the second starts in its place.
                    self.set(TwoPhase::Second {
                        future: then(output),
                    });
                }
                PhaseProjection::Second { future } => return future.poll(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_second_phase_gets_the_first_phases_output_and_its_room() {
        let first = async {
            tokio::task::yield_now().await;
            21
        };
        let chained = two_phase(first, |doubled| async move { doubled * 2 });
        assert_eq!(chained.await, 42);
        // Room for one phase at a time: a large first phase does not add to the second's.
        let large = async {
            let held = [1u8; 512];
            tokio::task::yield_now().await;
            held.len()
        };
        let chained = two_phase(large, |len| async move {
            let held = [2u8; 512];
            tokio::task::yield_now().await;
            held.len() + len
        });
        assert!(std::mem::size_of_val(&chained) < 1024);
        assert_eq!(chained.await, 1024);
    }
}
