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
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// How much of the backend's first response is read before the relay takes over.
const FIRST_RESPONSE_BUFFER: usize = 4096;

/// How much room each client read gets in the kept bytes.
const CLIENT_READ: usize = 4096;

/// The client bytes sent so far, and whether they may go to another backend.
struct Flight {
    kept: Vec<u8>,
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

impl Flight {
    fn verdict(&self) -> Verdict {
        if self.kept.len() > BOUND {
            return Verdict::Refused;
        }
        match self.mode {
            ReplayMode::Off => Verdict::Refused,
            ReplayMode::Always => Verdict::Complete,
            ReplayMode::Safe if self.kept.is_empty() => Verdict::Complete,
            ReplayMode::Safe => match client_hello::parse(&self.kept) {
                Ok(Parsed::NeedMore) => Verdict::Incomplete,
                Ok(Parsed::Hello(_)) if client_hello::is_exactly_one_hello(&self.kept) => {
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
/// ClientHello).
///
/// A backend that fails so counts as a passive failure, except one that is silent while the
/// client has sent nothing: an idle client of a client-speaks-first protocol looks the same.
/// For that reason a session whose last candidate is silent stays on it (the relay goes on);
/// one whose last candidate closed or failed is closed.
///
/// Returns the backend to relay with, or the last one tried and how the session ended there
/// (for the caller to count and log). Bytes moved are counted in `bytes` too, if given.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn first_response(
    server: &Server,
    peer: SocketAddr,
    walk: &mut Walk<'_>,
    mut connected: Connected,
    client: &mut Stream,
    header: &[u8],
    first_flight: Vec<u8>,
    bytes: Option<&SessionBytes>,
) -> Result<Connected, (Connected, SessionEnd)> {
    let Some(timeout) = server.config.replay.timeout() else {
        return match send(&mut connected, server, header, &first_flight, bytes).await {
            Ok(()) => Ok(connected),
            Err(error) => Err(ended_sending(server, peer, connected, &error)),
        };
    };
    let mut flight = Flight {
        kept: first_flight,
        mode: server.config.replay.mode,
    };
    let mut replayed = false;
    loop {
        let sending = send(&mut connected, server, header, &flight.kept, bytes);
        let watched = match tokio::time::timeout(timeout, sending).await {
            Ok(Ok(())) => watch(&mut flight, client, &mut connected, server, timeout, bytes).await,
            Ok(Err(error)) => Watched::Unanswered(Unanswered::Failed(error)),
            Err(_) => Watched::Unanswered(Unanswered::Silent(timeout)),
        };
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
                return Ok(connected);
            }
            Watched::ClientFailed(error) => {
                debug!(server = server.name(), client = %peer, backend = %connected.backend.target, %error, "client failed before the backend's first response");
                return Err((connected, SessionEnd::Error));
            }
            Watched::Closed(end) => return Err((connected, end)),
            Watched::Unanswered(unanswered) => unanswered,
        };
        let blamed = !(flight.kept.is_empty() && matches!(unanswered, Unanswered::Silent(_)));
        report_unanswered(server, peer, &connected, &unanswered, blamed);
        // Boxed: a connect (TLS included) is a large state, and inline it would stay in the
        // future of every session waiting for its first response, idle ones included.
        match Box::pin(walk.connect()).await {
            Some(next) => {
                server.stats.replay.replays.fetch_add(1, Ordering::Relaxed);
                replayed = true;
                connected = next;
            }
            None => return exhausted(server, peer, connected, &unanswered, blamed),
        }
    }
}

/// Reads the client and the backend until the backend's first byte, which is written to the
/// client. Client bytes go to the backend as they come and are kept while replayable. The
/// backend is timed only while the kept bytes are a complete replayable first flight, from
/// the later of its connect and the client's latest byte.
async fn watch(
    flight: &mut Flight,
    client: &mut Stream,
    connected: &mut Connected,
    server: &Server,
    timeout: Duration,
    bytes: Option<&SessionBytes>,
) -> Watched {
    let meter = SessionMeter {
        backend: &connected.backend.state.stats.traffic,
        server: &server.stats.traffic,
        session: bytes,
    };
    // The backend's closer, or with `[rebalance]` the session's own.
    let closer = connected.closer().clone();
    // Taken once either side has something to read (see below).
    let mut response = Vec::new();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let verdict = flight.verdict();
        if verdict == Verdict::Refused {
            return Watched::HandOver;
        }
        // Two plain sockets: wait until either is readable before taking buffers, so that a
        // session whose client and backend are both quiet (an idle client, most often) holds
        // none. (A TLS stream may hold decrypted bytes its socket no longer shows.)
        if let (Stream::Tcp(client_socket), Stream::Tcp(backend_socket)) =
            (&*client, &connected.stream)
        {
            tokio::select! {
                () = closer.cancelled() => {
                    return Watched::Closed(super::connect::close_reason(
                        &connected.backend_closer,
                        &connected.backend.state,
                    ));
                }
                _ = client_socket.readable() => {}
                _ = backend_socket.readable() => {}
                () = &mut deadline, if verdict == Verdict::Complete => {
                    return Watched::Unanswered(Unanswered::Silent(timeout));
                }
            }
        }
        if response.is_empty() {
            response = vec![0; FIRST_RESPONSE_BUFFER];
        }
        flight.kept.reserve(CLIENT_READ);
        let before = flight.kept.len();
        tokio::select! {
            () = closer.cancelled() => {
                return Watched::Closed(super::connect::close_reason(
                    &connected.backend_closer,
                    &connected.backend.state,
                ));
            }
            read = connected.stream.read(&mut response) => {
                return match read {
                    Ok(0) => Watched::Unanswered(Unanswered::Closed),
                    Ok(read) => answer(client, &response[..read], &meter).await,
                    Err(error) => Watched::Unanswered(Unanswered::Failed(error)),
                };
            }
            read = client.read_buf(&mut flight.kept) => match read {
                Ok(0) => return Watched::HandOver,
                Ok(read) => {
                    let sending = pass_on(&mut connected.stream, &flight.kept[before..]);
                    match tokio::time::timeout(timeout, sending).await {
                        Ok(Ok(())) => meter.record(Direction::ToBackend, read as u64),
                        Ok(Err(error)) => return Watched::Unanswered(Unanswered::Failed(error)),
                        Err(_) => return Watched::Unanswered(Unanswered::Silent(timeout)),
                    }
                    deadline.as_mut().reset(tokio::time::Instant::now() + timeout);
                }
                Err(error) => return Watched::ClientFailed(error),
            },
            () = &mut deadline, if verdict == Verdict::Complete => {
                return Watched::Unanswered(Unanswered::Silent(timeout));
            }
        }
    }
}

/// Writes the backend's first bytes to the client.
async fn answer(client: &mut Stream, response: &[u8], meter: &SessionMeter<'_>) -> Watched {
    match pass_on(client, response).await {
        Ok(()) => {
            meter.record(Direction::ToClient, response.len() as u64);
            Watched::Answered
        }
        Err(error) => Watched::ClientFailed(error),
    }
}

/// Writes `bytes` and, through TLS, flushes them out as a record.
async fn pass_on(stream: &mut Stream, bytes: &[u8]) -> io::Result<()> {
    stream.write_all(bytes).await?;
    if !matches!(stream, Stream::Tcp(_)) {
        stream.flush().await?;
    }
    Ok(())
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
        let meter = SessionMeter {
            backend: &connected.backend.state.stats.traffic,
            server: &server.stats.traffic,
            session: bytes,
        };
        meter.record(Direction::ToBackend, first_flight.len() as u64);
    }
    if !matches!(connected.stream, Stream::Tcp(_)) {
        connected.stream.flush().await?;
    }
    Ok(())
}

fn ended_sending(
    server: &Server,
    peer: SocketAddr,
    connected: Connected,
    error: &io::Error,
) -> (Connected, SessionEnd) {
    debug!(server = server.name(), client = %peer, backend = %connected.backend.target, %error, "cannot send the PROXY header or the ClientHello");
    (connected, SessionEnd::Error)
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
    connected: Connected,
    unanswered: &Unanswered,
    blamed: bool,
) -> Result<Connected, (Connected, SessionEnd)> {
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
        return Ok(connected);
    }
    Err((connected, SessionEnd::Error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(mode: ReplayMode, kept: &[u8]) -> Verdict {
        Flight {
            kept: kept.to_vec(),
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
