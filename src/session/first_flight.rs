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

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, error, warn};

use super::connect::{Connected, Walk};
use crate::config::ReplayMode;
use crate::forward::{Direction, Meter, Stream};
use crate::health::monitor;
use crate::snapshot::Server;
use crate::stats::{SessionBytes, SessionEnd, SessionMeter};
use crate::tls::client_hello::{self, MAX_CLIENT_HELLO, Parsed};

/// The most client bytes kept for a replay: the ClientHello bound of SNI passthrough (32 KiB,
/// more than a ClientHello with every extension and post-quantum key shares needs), so every
/// ClientHello betwixt accepts can be replayed. Past it the session is handed over.
pub(crate) const BOUND: usize = MAX_CLIENT_HELLO;

/// How much one read takes while watching, from either side: the client's bytes go on to the
/// backend (and are kept), the backend's first response to the client.
const READ_CHUNK: usize = 4096;

/// The client bytes sent so far, and whether they may go to another backend.
struct Flight<'a> {
    kept: &'a mut Vec<u8>,
    mode: ReplayMode,
}

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

impl Flight<'_> {
    fn verdict(&self) -> Verdict {
        if self.kept.len() > BOUND {
            return Verdict::Refused;
        }
        match self.mode {
            ReplayMode::Off => Verdict::Refused,
            ReplayMode::Always => Verdict::Complete,
            ReplayMode::Safe if self.kept.is_empty() => Verdict::Complete,
            ReplayMode::Safe => match client_hello::parse(self.kept) {
                Ok(Parsed::NeedMore) => Verdict::Incomplete,
                Ok(Parsed::Hello(_)) if client_hello::is_exactly_one_hello(self.kept) => {
                    Verdict::Complete
                }
                _ => Verdict::Refused,
            },
        }
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

/// Sends the first flight (after the PROXY `header`) to `connected` and, when the server
/// replays, waits for the backend's first response, moving to the next candidate of `walk`
/// while a backend stays silent past `first_response_timeout`, closes or fails before that.
/// `first_flight` is what the opening already read from the client (a passthrough
/// ClientHello); it holds the client bytes kept for a replay as it goes.
///
/// A backend that fails so counts as a passive failure, except one that is silent while the
/// client has sent nothing: an idle client of a client-speaks-first protocol looks the same.
/// For that reason a session whose last candidate is silent stays on it (the relay goes on);
/// one whose last candidate closed or failed is closed.
///
/// `connected` is the backend to relay with when this returns `Ok`, or the last one tried
/// when it returns how the session ended there (for the caller to count and log). Bytes
/// moved are counted in `bytes` too, if given.
///
/// An `async` block rather than an `async fn`, here and in [`watch`], so that the arguments
/// are kept once in the session's future and not copied into it a second time.
#[allow(clippy::too_many_arguments)]
#[allow(
    clippy::manual_async_fn,
    reason = "an async block keeps its arguments once; an async fn copies them into its future a second time"
)]
pub(crate) fn first_response(
    server: &Server,
    peer: &SocketAddr,
    walk: &mut Walk<'_>,
    connected: &mut Connected,
    client: &mut Stream,
    header: &[u8],
    first_flight: &mut Vec<u8>,
    bytes: Option<&SessionBytes>,
) -> impl Future<Output = Result<(), SessionEnd>> + Send {
    async move {
        let Some(timeout) = server.config.replay.timeout() else {
            return match send(connected, server, header, first_flight, bytes).await {
                Ok(()) => Ok(()),
                Err(error) => Err(ended_sending(server, *peer, connected, &error)),
            };
        };
        let mut flight = Flight {
            kept: first_flight,
            mode: server.config.replay.mode,
        };
        let mut replayed = false;
        loop {
            let watched = watch(
                &mut flight,
                client,
                connected,
                server,
                header,
                timeout,
                bytes,
            )
            .await;
            let unanswered = match watched {
                Watched::Answered | Watched::HandOver => {
                    monitor::observe_connect(server, &connected.backend, None);
                    if replayed && matches!(watched, Watched::Answered) {
                        server
                            .stats
                            .replay
                            .succeeded
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(());
                }
                Watched::ClientFailed(error) => {
                    debug!(server = server.name(), client = %peer, backend = %connected.backend.target, %error, "client failed before the backend's first response");
                    return Err(SessionEnd::Error);
                }
                Watched::Closed(end) => return Err(end),
                Watched::Unanswered(unanswered) => unanswered,
            };
            let blamed = !(flight.kept.is_empty() && matches!(unanswered, Unanswered::Silent(_)));
            report_unanswered(server, *peer, connected, &unanswered, blamed);
            // Boxed: a connect is a large state, and inline it would size the future of every
            // session waiting for its first response, idle ones included.
            match Box::pin(walk.connect()).await {
                Some(next) => {
                    server.stats.replay.replays.fetch_add(1, Ordering::Relaxed);
                    replayed = true;
                    *connected = next;
                }
                None => return exhausted(server, *peer, connected, &unanswered, blamed),
            }
        }
    }
}

/// Sends the PROXY `header` and the kept bytes to the backend, then reads the client and the
/// backend until the backend's first byte, which is written to the client. Client bytes go to
/// the backend as they come and are kept while replayable. Each write to the backend must be
/// done within `timeout`; the backend's answer is timed only while the kept bytes are a
/// complete replayable first flight, from the later of its connect and the client's latest
/// byte.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block keeps its arguments once; an async fn copies them into its future a second time"
)]
fn watch(
    flight: &mut Flight,
    client: &mut Stream,
    connected: &mut Connected,
    server: &Server,
    header: &[u8],
    timeout: Duration,
    bytes: Option<&SessionBytes>,
) -> impl Future<Output = Watched> + Send {
    async move {
        // One timer for every wait: each write, then the answer.
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        if !header.is_empty() || !flight.kept.is_empty() {
            tokio::select! {
                // Boxed: only a PROXY header or a ClientHello read ahead needs it.
                sent = Box::pin(send(connected, server, header, flight.kept, bytes)) => {
                    if let Err(error) = sent {
                        return Watched::Unanswered(Unanswered::Failed(error));
                    }
                }
                () = &mut deadline => return Watched::Unanswered(Unanswered::Silent(timeout)),
            }
            deadline
                .as_mut()
                .reset(tokio::time::Instant::now() + timeout);
        }
        // The backend's closer, or with `[rebalance]` the session's own.
        let closer = connected.closer().clone();
        let closed = closer.cancelled();
        tokio::pin!(closed);
        loop {
            let verdict = flight.verdict();
            if verdict == Verdict::Refused {
                return Watched::HandOver;
            }
            let timed = verdict == Verdict::Complete;
            let before = flight.kept.len();
            let input = if let (Stream::Tcp(client_socket), Stream::Tcp(backend_socket)) =
                (&*client, &connected.stream)
            {
                // Two plain sockets: wait on their own waker slots until either is readable,
                // then read what it has without waiting, so that a session whose client and
                // backend are both quiet (an idle client, most often) holds no buffer and no
                // readiness future. Readiness can be assumed rather than seen (tokio marks an
                // accepted socket readable before its first event): then nothing is read and
                // nothing is kept.
                let woken = std::future::poll_fn(|cx| {
                    if closed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woken::Closed);
                    }
                    if client_socket.poll_read_ready(cx).is_ready() {
                        return Poll::Ready(Woken::Client);
                    }
                    if backend_socket.poll_read_ready(cx).is_ready() {
                        return Poll::Ready(Woken::Backend);
                    }
                    if timed && deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woken::Deadline);
                    }
                    Poll::Pending
                })
                .await;
                let input = match woken {
                    Woken::Closed => return closed_by_balancer(connected),
                    Woken::Deadline => return Watched::Unanswered(Unanswered::Silent(timeout)),
                    Woken::Client => read_ready(client_socket, flight.kept).map(Input::Client),
                    Woken::Backend => {
                        let mut response = Vec::new();
                        read_ready(backend_socket, &mut response)
                            .map(|read| Input::Backend(read, response))
                    }
                };
                match input {
                    Some(input) => input,
                    None => continue,
                }
            } else {
                // A TLS stream may hold decrypted bytes its socket no longer shows: read it.
                let mut response = vec![0; READ_CHUNK];
                flight.kept.reserve(READ_CHUNK);
                tokio::select! {
                    () = &mut closed => return closed_by_balancer(connected),
                    read = connected.stream.read(&mut response) => Input::Backend(read, response),
                    read = client.read_buf(flight.kept) => Input::Client(read),
                    () = &mut deadline, if timed => {
                        return Watched::Unanswered(Unanswered::Silent(timeout));
                    }
                }
            };
            match input {
                Input::Backend(Ok(0), _) => return Watched::Unanswered(Unanswered::Closed),
                Input::Backend(Ok(read), response) => {
                    return match pass_on(client, &response[..read]).await {
                        Ok(()) => {
                            record(server, connected, bytes, Direction::ToClient, read);
                            Watched::Answered
                        }
                        Err(error) => Watched::ClientFailed(error),
                    };
                }
                Input::Backend(Err(error), _) => {
                    return Watched::Unanswered(Unanswered::Failed(error));
                }
                Input::Client(Ok(0)) => return Watched::HandOver,
                Input::Client(Ok(read)) => {
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timeout);
                    tokio::select! {
                        sent = pass_on(&mut connected.stream, &flight.kept[before..]) => match sent {
                            Ok(()) => record(server, connected, bytes, Direction::ToBackend, read),
                            Err(error) => return Watched::Unanswered(Unanswered::Failed(error)),
                        },
                        () = &mut deadline => return Watched::Unanswered(Unanswered::Silent(timeout)),
                    }
                    deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + timeout);
                }
                Input::Client(Err(error)) => return Watched::ClientFailed(error),
            }
        }
    }
}

/// What woke a session waiting on two plain sockets.
enum Woken {
    Closed,
    Client,
    Backend,
    Deadline,
}

/// What one read while watching returned, and from which side (with the backend's, the
/// buffer read into).
enum Input {
    Client(io::Result<usize>),
    Backend(io::Result<usize>, Vec<u8>),
}

/// Counts `moved` bytes against the backend, the server and the session.
fn record(
    server: &Server,
    connected: &Connected,
    bytes: Option<&SessionBytes>,
    direction: Direction,
    moved: usize,
) {
    let meter = SessionMeter {
        backend: &connected.backend.state.stats.traffic,
        server: &server.stats.traffic,
        session: bytes,
    };
    meter.record(direction, moved as u64);
}

/// The session was closed by the balancer while watching.
fn closed_by_balancer(connected: &Connected) -> Watched {
    Watched::Closed(super::connect::close_reason(
        &connected.backend_closer,
        &connected.backend.state,
    ))
}

/// Reads what `socket` has now into the end of `into`; `None` when it has nothing (the
/// readiness was spurious, and is cleared). The chunk lives on this call's stack, so the
/// session's future never holds it.
fn read_ready(socket: &TcpStream, into: &mut Vec<u8>) -> Option<io::Result<usize>> {
    let mut chunk = [0; READ_CHUNK];
    match socket.try_read(&mut chunk) {
        Ok(read) => {
            into.extend_from_slice(&chunk[..read]);
            Some(Ok(read))
        }
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => None,
        Err(error) => Some(Err(error)),
    }
}

/// Writes `bytes` and, through TLS, flushes them out as a record.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block keeps its arguments once; an async fn copies them into its future a second time"
)]
fn pass_on(stream: &mut Stream, bytes: &[u8]) -> impl Future<Output = io::Result<()>> + Send {
    async move {
        stream.write_all(bytes).await?;
        if !matches!(stream, Stream::Tcp(_)) {
            stream.flush().await?;
        }
        Ok(())
    }
}

/// The PROXY header (through the backend's TLS, as gobetween sends it), then the first
/// flight kept so far.
async fn send(
    connected: &mut Connected,
    server: &Server,
    header: &[u8],
    first_flight: &[u8],
    bytes: Option<&SessionBytes>,
) -> io::Result<()> {
    if !header.is_empty() {
        connected.stream.write_all(header).await?;
    }
    if !first_flight.is_empty() {
        connected.stream.write_all(first_flight).await?;
        record(
            server,
            connected,
            bytes,
            Direction::ToBackend,
            first_flight.len(),
        );
    }
    if !matches!(connected.stream, Stream::Tcp(_)) {
        connected.stream.flush().await?;
    }
    Ok(())
}

fn ended_sending(
    server: &Server,
    peer: SocketAddr,
    connected: &Connected,
    error: &io::Error,
) -> SessionEnd {
    debug!(server = server.name(), client = %peer, backend = %connected.backend.target, %error, "cannot send the PROXY header or the ClientHello");
    SessionEnd::Error
}

/// Counts a blamed backend's failure against its passive health, and says so.
fn report_unanswered(
    server: &Server,
    peer: SocketAddr,
    connected: &Connected,
    unanswered: &Unanswered,
    blamed: bool,
) {
    let backend = &connected.backend;
    if !blamed {
        debug!(server = server.name(), client = %peer, backend = %backend.target, "backend silent and client silent; trying the next backend");
        return;
    }
    let error = io::Error::other(unanswered.to_string());
    monitor::observe_connect(server, backend, Some(&error));
    if let Some(suppressed) = backend.connect_failures_log.check() {
        warn!(
            server = server.name(),
            client = %peer,
            backend = %backend.target,
            error = %unanswered,
            suppressed,
            "backend accepted but did not answer; sending the client's first flight to the next one"
        );
    }
}

/// No candidate left after `unanswered`: a silent backend keeps the session (it may still
/// answer, or the client may just be idle); a closed or failed one ends it.
fn exhausted(
    server: &Server,
    peer: SocketAddr,
    connected: &Connected,
    unanswered: &Unanswered,
    blamed: bool,
) -> Result<(), SessionEnd> {
    if blamed {
        server
            .stats
            .replay
            .exhausted
            .fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.unserved.check() {
            error!(
                server = server.name(),
                client = %peer,
                backend = %connected.backend.target,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(mode: ReplayMode, kept: &[u8]) -> Verdict {
        Flight {
            kept: &mut kept.to_vec(),
            mode,
        }
        .verdict()
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let mut kept = Vec::new();
        assert!(read_ready(&accepted, &mut kept).is_none());
        assert_eq!(kept.capacity(), 0);
        client.write_all(b"hello").await.unwrap();
        accepted.readable().await.unwrap();
        assert_eq!(read_ready(&accepted, &mut kept).unwrap().unwrap(), 5);
        assert_eq!(kept, b"hello");
        drop(client);
        accepted.readable().await.unwrap();
        assert_eq!(read_ready(&accepted, &mut kept).unwrap().unwrap(), 0);
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
