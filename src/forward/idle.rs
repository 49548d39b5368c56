//! Idle timeouts: one watchdog per session instead of a timer per read.
//!
//! gobetween's timeouts are per direction: `client_idle_timeout` fires when the client sent
//! nothing for that long, whatever the backend does, and `backend_idle_timeout` the other way.
//! Each direction stamps the time of its last read into an [`IdleClock`]; the [`watchdog`]
//! sleeps until the earliest deadline and checks the stamps. A read costs a clock read and a
//! relaxed store, not a timer reset, and a session without idle timeouts holds no timer at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{Direction, ForwardError, Options, Side};

/// Marks a direction whose source has ended: it can no longer be idle.
const FINISHED: u64 = u64::MAX;

/// When each direction last read something, in milliseconds since the session started.
#[derive(Debug)]
pub(super) struct IdleClock {
    started: Instant,
    to_backend: AtomicU64,
    to_client: AtomicU64,
}

impl IdleClock {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            to_backend: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }

    fn stamp(&self, direction: Direction) -> &AtomicU64 {
        match direction {
            Direction::ToBackend => &self.to_backend,
            Direction::ToClient => &self.to_client,
        }
    }

    /// Records that `direction` just read from its source.
    pub(super) fn touch(&self, direction: Direction) {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(FINISHED - 1);
        self.stamp(direction).store(now, Ordering::Relaxed);
    }

    /// Records that `direction`'s source ended.
    pub(super) fn finish(&self, direction: Direction) {
        self.stamp(direction).store(FINISHED, Ordering::Relaxed);
    }

    /// When `direction` goes idle, or `None` when it has no timeout or has ended.
    fn deadline(&self, direction: Direction, timeout: Option<Duration>) -> Option<Instant> {
        let last = self.stamp(direction).load(Ordering::Relaxed);
        let timeout = timeout?;
        (last != FINISHED).then(|| self.started + Duration::from_millis(last) + timeout)
    }
}

/// The future that fails a session once a direction has been idle too long.
pub(super) type Watchdog = Pin<Box<dyn Future<Output = ForwardError> + Send>>;

/// The idle clock a session's directions stamp and its watchdog, boxed; both `None` for a
/// session without timeouts (most API watches), which then carries no timer at all.
pub(super) fn clock_and_watchdog(options: &Options) -> (Option<Arc<IdleClock>>, Option<Watchdog>) {
    let timeouts = (options.client_idle_timeout, options.backend_idle_timeout);
    if timeouts.0.is_none() && timeouts.1.is_none() {
        return (None, None);
    }
    let clock = Arc::new(IdleClock::new());
    let watched = Arc::clone(&clock);
    let watchdog: Watchdog = Box::pin(async move { watch(&watched, timeouts.0, timeouts.1).await });
    (Some(clock), Some(watchdog))
}

/// Resolves with the idle error of the first direction to exceed its timeout; never resolves
/// when neither direction has one.
async fn watch(
    clock: &IdleClock,
    client_timeout: Option<Duration>,
    backend_timeout: Option<Duration>,
) -> ForwardError {
    if client_timeout.is_none() && backend_timeout.is_none() {
        return std::future::pending().await;
    }
    let mut sleep = Box::pin(tokio::time::sleep(Duration::ZERO));
    loop {
        let client = clock.deadline(Direction::ToBackend, client_timeout);
        let backend = clock.deadline(Direction::ToClient, backend_timeout);
        let now = Instant::now();
        match (client, backend) {
            (Some(deadline), _) if deadline <= now => {
                return idle(Side::Client, client_timeout);
            }
            (_, Some(deadline)) if deadline <= now => {
                return idle(Side::Backend, backend_timeout);
            }
            (None, None) => return std::future::pending().await,
            (client, backend) => {
                let earliest = client.into_iter().chain(backend).min().unwrap_or(now);
                sleep.as_mut().reset(earliest);
                sleep.as_mut().await;
            }
        }
    }
}

fn idle(side: Side, timeout: Option<Duration>) -> ForwardError {
    ForwardError::Idle {
        side,
        timeout: timeout.unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_for_the_quiet_direction_only_after_its_timeout() {
        let clock = IdleClock::new();
        let second = Duration::from_secs(1);
        let watchdog = watch(&clock, Some(second * 10), None);
        tokio::pin!(watchdog);
        for _ in 0..5 {
            tokio::time::advance(second * 3).await;
            clock.touch(Direction::ToBackend);
            assert!(
                futures_poll(&mut watchdog).await.is_none(),
                "fired while active"
            );
        }
        tokio::time::advance(second * 11).await;
        let error = futures_poll(&mut watchdog).await.expect("idle fires");
        assert!(matches!(
            error,
            ForwardError::Idle {
                side: Side::Client,
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn an_ended_direction_is_never_idle() {
        let clock = IdleClock::new();
        clock.finish(Direction::ToClient);
        let watchdog = watch(&clock, None, Some(Duration::from_secs(1)));
        tokio::pin!(watchdog);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(futures_poll(&mut watchdog).await.is_none());
    }

    /// Polls once, after letting timers fire.
    async fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        tokio::task::yield_now().await;
        tokio::time::timeout(Duration::ZERO, future).await.ok()
    }
}
