//! A UDP session's task: relays the backend's replies to the client and decides when the
//! session is over.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{Interest, Ready};
use tokio::time::Instant;
use tracing::debug;

use super::{CLOSED, LINGER_AFTER_STOP, MAX_DATAGRAM, UdpSession};
use crate::config::ServerConfig;
use crate::net::DatagramBatch;
use crate::stats::SessionEnd;

/// What wakes a session: a reply, or an error such as the backend's ICMP port unreachable.
const REPLY_OR_ERROR: Interest = Interest::READABLE.add(Interest::ERROR);

/// Replies one `recvmmsg` returns at most: most sessions get one reply per wake-up, but a
/// short batch is what tells that the socket is empty without another call.
const REPLY_SLOTS: usize = 4;

/// Batches relayed per wake-up before the task yields to others.
const REPLY_ROUNDS: usize = 16;

thread_local! {
    /// One set of receive buffers per runtime thread, shared by every session on it: an idle
    /// session holds no buffer, and a reply costs no allocation.
    static REPLIES: RefCell<DatagramBatch> = RefCell::new(DatagramBatch::new(REPLY_SLOTS, MAX_DATAGRAM));
}

/// When a session counts as idle, from `client_idle_timeout` and `backend_idle_timeout`.
#[derive(Debug, Clone, Copy)]
struct IdleRule {
    /// No datagram from the client for this long.
    client: Option<Duration>,
    /// No reply from the backend for this long (counted from the session's start).
    backend: Option<Duration>,
}

impl IdleRule {
    fn of(config: &ServerConfig) -> Self {
        Self {
            client: config.client_idle_timeout,
            backend: config.backend_idle_timeout,
        }
    }

    /// The instant (in endpoint milliseconds) at which the session is idle, given its last
    /// datagram each way; with neither timeout set, the default over both directions.
    fn deadline_ms(self, last_request: u64, last_reply: u64) -> u64 {
        let after = |last: u64, timeout: Duration| {
            last.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
        };
        match (self.client, self.backend) {
            (None, None) => after(last_request.max(last_reply), super::DEFAULT_IDLE_TIMEOUT),
            (client, backend) => {
                let client = client.map_or(u64::MAX, |t| after(last_request, t));
                let backend = backend.map_or(u64::MAX, |t| after(last_reply, t));
                client.min(backend)
            }
        }
    }
}

impl UdpSession {
    /// Runs the session until it ends, records how, and hands it back to the table.
    pub(crate) async fn run(self: Arc<Self>) {
        let end = self.serve().await;
        self.requests.store(CLOSED, Ordering::Release);
        // The table reads it to decide whether the socket may serve another session.
        self.end_reason.store(end as u8, Ordering::Release);
        self.server.stats.ended.record(end);
        debug!(
            server = self.server.name(),
            client = %self.client,
            backend = %self.backend.target,
            end = end.as_str(),
            responses = self.responses.load(Ordering::Relaxed),
            "UDP session ended"
        );
        // The table may be gone with its listener; the session is over either way. The task's
        // own reference goes with it, so the table can take the socket back.
        let endpoint = Arc::clone(&self.endpoint);
        let _ = endpoint.ended_tx.send(self);
    }

    async fn serve(&self) -> SessionEnd {
        let idle = IdleRule::of(&self.server.config);
        let endpoint = Arc::clone(&self.endpoint);
        let mut lingering = false;
        let deadline = |this: &Self| {
            let ms = idle.deadline_ms(
                this.last_request_ms.load(Ordering::Relaxed),
                this.last_reply_ms.load(Ordering::Relaxed),
            );
            endpoint.epoch + Duration::from_millis(ms)
        };
        let sleep = tokio::time::sleep_until(deadline(self));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = self.end.cancelled() => {
                    return SessionEnd::from_u8(self.end_reason.load(Ordering::Acquire));
                }
                () = self.backend_closer.cancelled() => return self.backend.state.close_reason(),
                () = self.endpoint.stopped.cancelled(), if !lingering => {
                    lingering = true;
                    let linger = Instant::now() + LINGER_AFTER_STOP;
                    let next = sleep.deadline().min(linger);
                    sleep.as_mut().reset(next);
                }
                // ERROR too: an ICMP port unreachable is an error on the socket, not data.
                ready = self.socket.ready(REPLY_OR_ERROR) => {
                    let Ok(ready) = ready else {
                        return SessionEnd::Error;
                    };
                    if let Some(end) = self.relay_replies(ready) {
                        return end;
                    }
                }
                () = &mut sleep => {
                    let next = deadline(self);
                    if lingering || next <= Instant::now() {
                        return SessionEnd::IdleTimeout;
                    }
                    sleep.as_mut().reset(next);
                }
            }
        }
    }

    /// Relays the replies waiting on the backend socket; `Some` when the session is over.
    fn relay_replies(&self, ready: Ready) -> Option<SessionEnd> {
        // One interest per `try_io`: tokio finds no readiness for a combined one. A read with
        // only the error pending reports it (ECONNREFUSED) and clears it.
        let interest = if ready.is_error() {
            Interest::ERROR
        } else {
            Interest::READABLE
        };
        REPLIES.with_borrow_mut(|batch| {
            for _ in 0..REPLY_ROUNDS {
                let mut end = None;
                let received = self.socket.try_io(interest, || {
                    let count = batch.receive(self.socket.as_fd())?;
                    for index in 0..count {
                        let Some((reply, _)) = batch.get(index) else {
                            continue;
                        };
                        end = self.relay_one(reply);
                        if end.is_some() {
                            // Replies past the session's last are dropped with it.
                            break;
                        }
                    }
                    if count < batch.slots() {
                        // Nothing more was queued: clearing readiness now saves the call that
                        // would find the socket empty (and lets a spare socket be checked for
                        // stale replies without one).
                        return Err(ErrorKind::WouldBlock.into());
                    }
                    Ok(())
                });
                match received {
                    Ok(()) => {}
                    Err(error) if error.kind() == ErrorKind::WouldBlock => return end,
                    Err(error) if error.kind() == ErrorKind::ConnectionRefused => {
                        self.observe_refused(&error);
                        return Some(SessionEnd::Error);
                    }
                    Err(error) => {
                        debug!(server = self.server.name(), client = %self.client, backend = %self.backend.target, %error, "UDP backend socket failed");
                        return Some(SessionEnd::Error);
                    }
                }
                if end.is_some() {
                    return end;
                }
            }
            None
        })
    }

    fn relay_one(&self, reply: &[u8]) -> Option<SessionEnd> {
        self.last_reply_ms
            .store(self.endpoint.now_ms(), Ordering::Relaxed);
        if !self.answered.swap(true, Ordering::Relaxed) {
            crate::health::monitor::observe_connect(&self.server, &self.backend, None);
        }
        let bytes = reply.len() as u64;
        self.backend
            .state
            .stats
            .traffic
            .rx
            .fetch_add(bytes, Ordering::Relaxed);
        self.server
            .stats
            .traffic
            .rx
            .fetch_add(bytes, Ordering::Relaxed);
        // A direct send, for the reason given in `UdpSession::forward`.
        let sent =
            socket2::SockRef::from(&*self.endpoint.socket).send_to(reply, &self.client.into());
        if let Err(error) = sent {
            self.server
                .stats
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
            debug!(server = self.server.name(), client = %self.client, %error, "reply to the UDP client dropped");
        }
        let responses = self.responses.fetch_add(1, Ordering::AcqRel) + 1;
        let max = self.server.config.udp.and_then(|udp| udp.max_responses)?;
        self.answered_all(responses, max)
            .then_some(SessionEnd::Completed)
    }

    /// True when every request carried so far got `max` replies; the session then takes no
    /// more requests. The exchange fails when the receive loop just added a request, which
    /// then keeps the session open for its reply.
    fn answered_all(&self, responses: u64, max: u64) -> bool {
        let requests = self.requests.load(Ordering::Acquire);
        requests == CLOSED
            || (responses >= requests.saturating_mul(max)
                && self
                    .requests
                    .compare_exchange(requests, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_deadlines_follow_gobetweens_two_timeouts_or_the_default() {
        let neither = IdleRule {
            client: None,
            backend: None,
        };
        assert_eq!(neither.deadline_ms(1_000, 5_000), 65_000);
        let client = IdleRule {
            client: Some(Duration::from_secs(2)),
            backend: None,
        };
        // Replies do not keep a session whose client went quiet.
        assert_eq!(client.deadline_ms(1_000, 9_000), 3_000);
        let both = IdleRule {
            client: Some(Duration::from_secs(10)),
            backend: Some(Duration::from_secs(1)),
        };
        assert_eq!(both.deadline_ms(5_000, 0), 1_000);
    }
}
