//! A TCP session's first flight, kept until its backend answers, so that a backend which
//! accepts but never answers (frozen: its kernel still completes handshakes) costs the client
//! nothing: the session connects to the next candidate and sends the same bytes again.
//!
//! Runs in the session's task between the first connect and the relay. Until the backend's
//! first byte nothing has reached the client, so moving the session is invisible to it; that
//! byte is written to the client and the session handed to `forward::relay` (splice included),
//! never replayed again. The server's `replay` mode says which first flights may go to a
//! second backend: with "safe" exactly one TLS ClientHello, or nothing at all (a
//! server-speaks-first protocol); with "always" anything up to [`BOUND`]. Any other first
//! flight, one past the bound, or a client that half-closes hands the session over at once,
//! with no timer: it behaves as without replay.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, error, warn};

use super::connect::{Connected, Walk};
use crate::config::ReplayMode;
use crate::forward::{Direction, Meter, Stream};
use crate::health::monitor;
use crate::stats::{SessionBytes, SessionEnd, SessionMeter};
use crate::tls::client_hello::{self, MAX_CLIENT_HELLO, Parsed};

/// The most client bytes kept for a replay: the ClientHello bound of SNI passthrough (32 KiB,
/// more than a ClientHello with every extension and post-quantum key shares needs), so every
/// ClientHello betwixt accepts can be replayed. Past it the session is handed over.
pub(crate) const BOUND: usize = MAX_CLIENT_HELLO;

/// How much one read takes while watching, from either side: the client's bytes go on to the
/// backend (and are kept), the backend's first response to the client. It lives on the stack
/// of one poll, never in the session's future.
const READ_CHUNK: usize = 4096;

/// What the kept bytes allow.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Replayable: the backend has everything it needs to answer, and is timed.
    Complete,
    /// The start of a ClientHello: the backend cannot answer yet, so it is not timed.
    Incomplete,
    /// Not replayable: hand the session over to the relay.
    Refused,
}

fn verdict(kept: &[u8], mode: ReplayMode) -> Verdict {
    if kept.len() > BOUND {
        return Verdict::Refused;
    }
    match mode {
        ReplayMode::Off => Verdict::Refused,
        ReplayMode::Always => Verdict::Complete,
        ReplayMode::Safe if kept.is_empty() => Verdict::Complete,
        ReplayMode::Safe => match client_hello::parse(kept) {
            Ok(Parsed::NeedMore) => Verdict::Incomplete,
            Ok(Parsed::Hello(_)) if client_hello::is_exactly_one_hello(kept) => Verdict::Complete,
            _ => Verdict::Refused,
        },
    }
}

/// How a backend failed before its first byte.
#[derive(Debug, thiserror::Error)]
enum Unanswered {
    #[error("sent nothing within {0:?} (first_response_timeout)")]
    Silent(Duration),
    #[error("closed the connection before its first byte")]
    Closed,
    #[error("failed before its first byte: {0}")]
    Failed(io::Error),
}

/// How watching one backend for its first byte ended.
enum Watched {
    /// Its first bytes reached the client.
    Answered,
    /// The first flight cannot be replayed: the relay goes on with this backend.
    HandOver,
    Unanswered(Unanswered),
    /// The client's socket failed, or the first response could not be written to it.
    ClientFailed(io::Error),
    /// The balancer closed the backend's sessions.
    Closed(SessionEnd),
}

/// What a session's first flight works on. The session moves in what only the first flight
/// needs, and gets the backend back with it (see [`first_response`]); the client stays the
/// session's, borrowed.
pub(crate) struct FirstFlight<'s, 'w> {
    /// The candidates left, for a replay.
    pub(crate) walk: Walk<'w>,
    /// The backend watched; in the end the one to relay with, or the last one tried.
    pub(crate) connected: Connected,
    pub(crate) client: &'s mut Stream,
    /// The PROXY header, sent first to every backend tried (empty without one).
    pub(crate) header: Vec<u8>,
    /// The client bytes sent so far, kept for a replay: what the opening read ahead (a
    /// passthrough ClientHello), then what is read here.
    pub(crate) kept: Vec<u8>,
    /// Bytes moved, for the access log, if it is on.
    pub(crate) bytes: Option<Box<SessionBytes>>,
}

/// Sends the first flight (after the PROXY header) to the connected backend and, when the
/// server replays, waits for the backend's first response, moving to the next candidate of
/// the walk while a backend stays silent past `first_response_timeout`, closes or fails
/// before that. Gives the first flight back, with how the session ended if it did.
///
/// Each backend watched gets the PROXY header and the kept bytes; then the client and the
/// backend are read until the backend's first byte, which is written to the client. Client
/// bytes go to the backend as they come and are kept while replayable. Each write to the
/// backend must be done within the timeout; the backend's answer is timed only while the
/// kept bytes are a complete replayable first flight, from the later of its connect and the
/// client's latest byte.
///
/// A backend that fails so counts as a passive failure, except one that is silent while the
/// client has sent nothing: an idle client of a client-speaks-first protocol looks the same.
/// For that reason a session whose last candidate is silent stays on it (the relay goes on);
/// one whose last candidate closed or failed is closed.
///
/// An idle client waits here, so what is kept while waiting must fit in the room the relay
/// takes later in the session's task (a test holds it to that): the first flight itself,
/// moved in rather than borrowed piece by piece, one timer, one wait on the closer, and no
/// buffer, in one `async` block (a nested one would hold its own references).
#[allow(
    clippy::manual_async_fn,
    reason = "an async block keeps its arguments once; an async fn copies them into its future a second time"
)]
pub(crate) fn first_response<'s, 'w>(
    mut flight: FirstFlight<'s, 'w>,
) -> impl Future<Output = (FirstFlight<'s, 'w>, Result<(), SessionEnd>)> + Send + 's
where
    'w: 's,
{
    async move {
        let Some(timeout) = flight.walk.server().config.replay.timeout() else {
            let mut sent = 0;
            let result = poll_fn(|cx| flight.poll_write_kept(cx, &mut sent)).await;
            let result = result.map_err(|error| {
                debug!(server = flight.walk.server().name(), client = %flight.walk.client(), backend = %flight.connected.backend.target, %error, "cannot send the PROXY header or the ClientHello");
                SessionEnd::Error
            });
            return (flight, result);
        };
        let mut stops = pin!(Stops::new(flight.connected.closer(), timeout));
        let mut replayed = false;
        loop {
            let watched = 'watch: {
                // How much of the PROXY header and the kept bytes this backend has had; at
                // the end, how much of the answer's rest the client has.
                let mut sent = 0;
                loop {
                    if sent < flight.header.len() + flight.kept.len() {
                        let sending =
                            poll_fn(|cx| flight.poll_send(cx, stops.as_mut(), &mut sent)).await;
                        if let Err(watched) = sending {
                            break 'watch watched;
                        }
                        stops.as_mut().restart();
                    }
                    let timed = match verdict(&flight.kept, flight.walk.server().config.replay.mode)
                    {
                        Verdict::Refused => break 'watch Watched::HandOver,
                        Verdict::Incomplete => false,
                        Verdict::Complete => true,
                    };
                    match poll_fn(|cx| flight.poll_event(cx, stops.as_mut(), timed)).await {
                        Event::Done(watched) => break 'watch watched,
                        Event::Read => {
                            stops.as_mut().restart();
                            continue;
                        }
                        Event::Answered => {}
                    }
                    // The client did not take the whole answer at once: the rest is in `kept`,
                    // which no replay needs any more.
                    sent = 0;
                    let rest = poll_fn(|cx| flight.poll_answer_rest(cx, &mut sent)).await;
                    break 'watch rest.map_or_else(Watched::ClientFailed, |()| Watched::Answered);
                }
            };
            let unanswered = match watched {
                Watched::Answered | Watched::HandOver => {
                    let server = flight.walk.server();
                    monitor::observe_connect(server, &flight.connected.backend, None);
                    if replayed && matches!(watched, Watched::Answered) {
                        server
                            .stats
                            .replay
                            .succeeded
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return (flight, Ok(()));
                }
                Watched::ClientFailed(error) => {
                    debug!(server = flight.walk.server().name(), client = %flight.walk.client(), backend = %flight.connected.backend.target, %error, "client failed before the backend's first response");
                    return (flight, Err(SessionEnd::Error));
                }
                Watched::Closed(end) => return (flight, Err(end)),
                Watched::Unanswered(unanswered) => unanswered,
            };
            let blamed = !(flight.kept.is_empty() && matches!(unanswered, Unanswered::Silent(_)));
            flight.report_unanswered(&unanswered, blamed);
            // Boxed: a connect is a large state, and inline it would size the future of every
            // session waiting for its first response, idle ones included.
            match Box::pin(flight.walk.connect()).await {
                Some(next) => {
                    let server = flight.walk.server();
                    server.stats.replay.replays.fetch_add(1, Ordering::Relaxed);
                    replayed = true;
                    flight.connected = next;
                    stops.as_mut().renew(flight.connected.closer());
                }
                None => {
                    let result = flight.exhausted(&unanswered, blamed);
                    return (flight, result);
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// What ends a watch besides the sockets: the balancer closing the session (the backend's
    /// closer, or with `[rebalance]` the session's own), and the first-response timer.
    struct Stops {
        #[pin]
        closed: WaitForCancellationFutureOwned,
        #[pin]
        deadline: Sleep,
        timeout: Duration,
    }
}

/// Which of the [`Stops`] fired.
enum Stop {
    Closed,
    /// The backend said nothing within this timeout.
    Silent(Duration),
}

impl Stops {
    fn new(closer: &CancellationToken, timeout: Duration) -> Self {
        Self {
            closed: closer.clone().cancelled_owned(),
            deadline: tokio::time::sleep(timeout),
            timeout,
        }
    }

    /// Watches the next backend's `closer`, with the timer from now.
    fn renew(mut self: Pin<&mut Self>, closer: &CancellationToken) {
        let timeout = self.timeout;
        self.set(Self::new(closer, timeout));
    }

    /// The timer runs again from now.
    fn restart(self: Pin<&mut Self>) {
        let this = self.project();
        this.deadline.reset(Instant::now() + *this.timeout);
    }

    /// The timer counts only when `timed`.
    fn poll_stop(self: Pin<&mut Self>, cx: &mut Context<'_>, timed: bool) -> Poll<Stop> {
        let this = self.project();
        if this.closed.poll(cx).is_ready() {
            return Poll::Ready(Stop::Closed);
        }
        if timed && this.deadline.poll(cx).is_ready() {
            return Poll::Ready(Stop::Silent(*this.timeout));
        }
        Poll::Pending
    }
}

/// What one wait while watching brought.
enum Event {
    Done(Watched),
    /// Client bytes were added to the kept ones, to send on.
    Read,
    /// The backend's first bytes were read; those the client did not take at once (none if
    /// only its TLS flush is due) replace the kept bytes.
    Answered,
}

impl FirstFlight<'_, '_> {
    /// Writes the PROXY header and the kept bytes from `sent` on (counted across both), and
    /// counts the client's among them as they go.
    fn poll_write_kept(&mut self, cx: &mut Context<'_>, sent: &mut usize) -> Poll<io::Result<()>> {
        let before = *sent;
        let polled = poll_write_parts(
            cx,
            &mut self.connected.stream,
            [&self.header, &self.kept],
            sent,
        );
        self.record_sent(before, *sent);
        polled
    }

    /// [`poll_write_kept`](Self::poll_write_kept), within the stops.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        stops: Pin<&mut Stops>,
        sent: &mut usize,
    ) -> Poll<Result<(), Watched>> {
        match self.poll_write_kept(cx, sent) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(error)) => {
                Poll::Ready(Err(Watched::Unanswered(Unanswered::Failed(error))))
            }
            Poll::Pending => stops
                .poll_stop(cx, true)
                .map(|stop| Err(self.stopped(stop))),
        }
    }

    /// Writes the rest of the backend's answer, put in `kept`, to the client from `written`
    /// on, and counts it once it is all through.
    fn poll_answer_rest(
        &mut self,
        cx: &mut Context<'_>,
        written: &mut usize,
    ) -> Poll<io::Result<()>> {
        ready!(poll_write_parts(
            cx,
            self.client,
            [&self.kept, &[]],
            written
        ))?;
        self.record(Direction::ToClient, self.kept.len());
        Poll::Ready(Ok(()))
    }

    /// Counts the client bytes among those sent from `before` to `after` (the header is not
    /// the client's).
    fn record_sent(&self, before: usize, after: usize) {
        let header = self.header.len();
        self.record(Direction::ToBackend, after.max(header) - before.max(header));
    }

    /// Reads the client, then the backend, each into a chunk on this stack; then the stops.
    /// Waits on the sockets' own waker slots: a session whose client and backend are quiet
    /// (an idle client, most often) holds no buffer and no readiness future. Readiness tokio
    /// assumes rather than saw (it marks an accepted socket readable before its first event)
    /// costs one read that finds nothing.
    fn poll_event(
        &mut self,
        cx: &mut Context<'_>,
        stops: Pin<&mut Stops>,
        timed: bool,
    ) -> Poll<Event> {
        if let Poll::Ready(result) = poll_read_kept(cx, self.client, &mut self.kept) {
            return Poll::Ready(match result {
                Ok(0) => Event::Done(Watched::HandOver),
                Ok(_) => Event::Read,
                Err(error) => Event::Done(Watched::ClientFailed(error)),
            });
        }
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut from_backend = ReadBuf::uninit(&mut chunk);
        if let Poll::Ready(result) =
            Pin::new(&mut self.connected.stream).poll_read(cx, &mut from_backend)
        {
            let answer = from_backend.filled();
            return Poll::Ready(match result {
                Ok(()) if answer.is_empty() => Event::Done(Watched::Unanswered(Unanswered::Closed)),
                Ok(()) => {
                    let mut written = 0;
                    match poll_write_parts(cx, self.client, [answer, &[]], &mut written) {
                        Poll::Ready(Err(error)) => Event::Done(Watched::ClientFailed(error)),
                        polled => {
                            self.record(Direction::ToClient, written);
                            // Most often the client takes it all at once: nothing is copied.
                            if polled.is_ready() {
                                Event::Done(Watched::Answered)
                            } else {
                                self.kept.clear();
                                self.kept.extend_from_slice(&answer[written..]);
                                Event::Answered
                            }
                        }
                    }
                }
                Err(error) => Event::Done(Watched::Unanswered(Unanswered::Failed(error))),
            });
        }
        stops
            .poll_stop(cx, timed)
            .map(|stop| Event::Done(self.stopped(stop)))
    }

    /// How the watch ended when `stop` fired.
    fn stopped(&self, stop: Stop) -> Watched {
        match stop {
            Stop::Closed => Watched::Closed(super::connect::close_reason(
                &self.connected.backend_closer,
                &self.connected.backend.state,
            )),
            Stop::Silent(timeout) => Watched::Unanswered(Unanswered::Silent(timeout)),
        }
    }

    /// Counts `moved` bytes against the backend, the server and the session.
    fn record(&self, direction: Direction, moved: usize) {
        if moved == 0 {
            return;
        }
        let meter = SessionMeter {
            backend: &self.connected.backend.state.stats.traffic,
            server: &self.walk.server().stats.traffic,
            session: self.bytes.as_deref(),
        };
        meter.record(direction, moved as u64);
    }

    /// Counts a blamed backend's failure against its passive health, and says so.
    fn report_unanswered(&self, unanswered: &Unanswered, blamed: bool) {
        let server = self.walk.server();
        let backend = &self.connected.backend;
        if !blamed {
            debug!(server = server.name(), client = %self.walk.client(), backend = %backend.target, "backend silent and client silent; trying the next backend");
            return;
        }
        let error = io::Error::other(unanswered.to_string());
        monitor::observe_connect(server, backend, Some(&error));
        if let Some(suppressed) = backend.connect_failures_log.check() {
            warn!(
                server = server.name(),
                client = %self.walk.client(),
                backend = %backend.target,
                error = %unanswered,
                suppressed,
                "backend accepted but did not answer; sending the client's first flight to the next one"
            );
        }
    }

    /// No candidate left after `unanswered`: a silent backend keeps the session (it may still
    /// answer, or the client may just be idle); a closed or failed one ends it.
    fn exhausted(&self, unanswered: &Unanswered, blamed: bool) -> Result<(), SessionEnd> {
        let server = self.walk.server();
        if blamed {
            server
                .stats
                .replay
                .exhausted
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = server.log_limits.unserved.check() {
                error!(
                    server = server.name(),
                    client = %self.walk.client(),
                    backend = %self.connected.backend.target,
                    error = %unanswered,
                    suppressed,
                    "no backend left to send the client's first flight to"
                );
            }
        }
        if matches!(unanswered, Unanswered::Silent(_)) {
            return Ok(());
        }
        Err(SessionEnd::Error)
    }
}

/// Reads what `stream` has into the end of `kept`, through a chunk on this stack; 0 is its
/// end.
fn poll_read_kept(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    kept: &mut Vec<u8>,
) -> Poll<io::Result<usize>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut chunk);
    ready!(Pin::new(stream).poll_read(cx, &mut read))?;
    kept.extend_from_slice(read.filled());
    Poll::Ready(Ok(read.filled().len()))
}

/// Writes `parts` from `written` on (counted across them), then flushes the stream: through
/// TLS, out as a record.
fn poll_write_parts(
    cx: &mut Context<'_>,
    stream: &mut Stream,
    parts: [&[u8]; 2],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    let mut offset = 0;
    for part in parts {
        while *written < offset + part.len() {
            let wrote = ready!(Pin::new(&mut *stream).poll_write(cx, &part[*written - offset..]))?;
            if wrote == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += wrote;
        }
        offset += part.len();
    }
    Pin::new(stream).poll_flush(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(mode: ReplayMode, kept: &[u8]) -> Verdict {
        super::verdict(kept, mode)
    }

    #[test]
    fn safe_mode_replays_nothing_or_exactly_one_hello() {
        let hello = crate::tls::client_hello::tests::client_hello("api.example");
        assert_eq!(verdict(ReplayMode::Safe, b""), Verdict::Complete);
        assert_eq!(verdict(ReplayMode::Safe, &hello), Verdict::Complete);
        assert_eq!(verdict(ReplayMode::Safe, &hello[..9]), Verdict::Incomplete);
        let mut more = hello.clone();
        more.push(23);
        assert_eq!(verdict(ReplayMode::Safe, &more), Verdict::Refused);
        assert_eq!(
            verdict(ReplayMode::Safe, b"GET / HTTP/1.1\r\n"),
            Verdict::Refused
        );
    }

    #[tokio::test]
    async fn a_quiet_socket_gives_nothing_and_takes_no_buffer() {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut accepted = Stream::Tcp(accepted);
        let mut kept = Vec::new();
        let once = |accepted: &mut Stream, kept: &mut Vec<u8>| {
            let waker = std::task::Waker::noop();
            let read = poll_read_kept(&mut Context::from_waker(waker), accepted, kept);
            read.map(Result::unwrap)
        };
        assert_eq!(once(&mut accepted, &mut kept), Poll::Pending);
        assert_eq!(kept.capacity(), 0);
        client.write_all(b"hello").await.unwrap();
        accepted.socket().readable().await.unwrap();
        assert_eq!(once(&mut accepted, &mut kept), Poll::Ready(5));
        assert_eq!(kept, b"hello");
        drop(client);
        accepted.socket().readable().await.unwrap();
        assert_eq!(once(&mut accepted, &mut kept), Poll::Ready(0));
    }

    #[test]
    fn always_mode_replays_anything_up_to_the_bound() {
        assert_eq!(verdict(ReplayMode::Always, b"GET /"), Verdict::Complete);
        assert_eq!(
            verdict(ReplayMode::Always, &vec![b'x'; BOUND]),
            Verdict::Complete
        );
        assert_eq!(
            verdict(ReplayMode::Always, &vec![b'x'; BOUND + 1]),
            Verdict::Refused
        );
        assert_eq!(verdict(ReplayMode::Off, b""), Verdict::Refused);
    }
}
