//! A TCP session: terminate TLS or read the ClientHello if the server says so ([`opening`]),
//! pick among the backends its server name may reach ([`sni`](crate::snapshot::SniRouter)),
//! connect with retry (over TLS with `[backends_tls]`), send the PROXY header if asked and
//! the ClientHello bytes read, wait for the backend's first response ([`first_flight`]:
//! replayed on the next backend when none comes), then forward both directions until either
//! side ends or the balancer closes the session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info};

use super::connect::{Connected, Walk};
use super::first_flight::{self, FirstFlight};
use super::opening;
use super::two_phase::two_phase;
use crate::client_limits::ClientGuard;
use crate::config::ProxyProtocolVersion;
use crate::forward::{self, ForwardError, Stream};
use crate::logging::access::{Entry, Started};
use crate::proxy_protocol::{self, Transport};
use crate::snapshot::Server;
use crate::stats::{ServerStats, SessionBytes, SessionEnd, SessionMeter, Slot};

/// One admitted client, from connect to close.
pub(crate) struct TcpSession {
    session: Session,
    client: TcpStream,
}

impl TcpSession {
    /// `client_slot` is the client's place under `[client_limits]`, held to the end.
    pub(crate) fn new(
        server: Arc<Server>,
        client: TcpStream,
        peer: SocketAddr,
        slot: Slot<ServerStats>,
        client_slot: Option<ClientGuard>,
    ) -> Self {
        Self {
            session: Session {
                server,
                peer,
                _slot: slot,
                _client_slot: client_slot,
            },
            client,
        }
    }

    /// The session's task: [`establish`], then [`relay_phase`]. Chained rather than
    /// written as one `async` block, so an idle session's task holds only the relay's state.
    pub(crate) fn run(self, close: CancellationToken) -> impl Future<Output = ()> + Send {
        let Self { session, client } = self;
        let establishing = establish(session, Stream::Tcp(client), Started::now(), close);
        two_phase(establishing, relay_phase)
    }
}

/// Everything before the relay: opens the client, routes it, connects its backend with retry
/// and sees its first flight through. `None` when the session ended before a backend was
/// connected (counted and logged here).
///
/// An `async` block rather than an `async fn`, here and below, so its arguments are kept once
/// and not copied into the future a second time; `client` is opened in place for the same
/// reason.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block keeps its arguments once; an async fn copies them into its future a second time"
)]
fn establish(
    session: Session,
    mut client: Stream,
    started: Started,
    close: CancellationToken,
) -> impl Future<Output = Option<Established>> + Send {
    async move {
        let server = &session.server;
        // Only a PROXY header carries it: a getsockname per session otherwise.
        let local = server
            .config
            .proxy_protocol
            .is_some()
            .then(|| client.socket().local_addr());
        let (server_name, first_flight) = if opening::is_needed(server) {
            // A session starts with its client's plain socket (`run`): never taken.
            let Stream::Tcp(socket) = client else {
                return None;
            };
            // Boxed: a TLS handshake is a large state, and only these servers need it.
            let opened = tokio::select! {
                opened = Box::pin(opening::open(server, socket)) => opened,
                () = close.cancelled() => return None,
            };
            match opened {
                Ok(opened) => {
                    client = opened.client;
                    (opened.server_name, opened.replay)
                }
                Err(error) => {
                    server.stats.tls.failures.record(error.reason());
                    if let Some(suppressed) = server.log_limits.handshake.check() {
                        info!(server = server.name(), client = %session.peer, reason = %error.reason(), %error, suppressed, "client closed before reaching a backend");
                    }
                    return None;
                }
            }
        } else {
            (None, Vec::new())
        };
        let (header, walk) = session.prepare(server_name, local)?;
        // Boxed, here and between candidates: a connect is a large state, held briefly. The
        // walk goes with it and comes back, never borrowed here: a local once borrowed keeps
        // its room in this future to the end, the first flight's wait included.
        let (walk, connected) = tokio::select! {
            walked = Box::pin(walk.into_connect()) => walked,
            () = close.cancelled() => return None,
        };
        // Counted per session only for the access log's line (boxed: a word when not).
        let bytes = server
            .access_log
            .as_ref()
            .map(|_| Box::<SessionBytes>::default());
        let (connected, header) = match (connected, header) {
            (None, _) => {
                session.report_unserved();
                return None;
            }
            (Some(connected), Err(error)) => {
                debug!(server = server.name(), client = %session.peer, backend = %connected.backend.target, %error, "cannot send the PROXY header");
                let connect_time = started.elapsed();
                let end = SessionEnd::Error;
                session.finish(&connected, end, bytes.as_deref(), started, connect_time);
                return None;
            }
            (Some(connected), Ok(header)) => (connected, header),
        };
        let connect_time = started.elapsed();
        // From here the backend's closer, a child of `close`, ends the session.
        drop(close);
        // Inline: an idle client waits here, and the wait fits in the room the relay takes
        // in the session's task later.
        let (flight, answered) = first_flight::first_response(FirstFlight {
            walk,
            connected,
            client: &mut client,
            header,
            kept: first_flight,
            bytes,
        })
        .await;
        let FirstFlight {
            connected, bytes, ..
        } = flight;
        Some(Established {
            session,
            client,
            connected,
            ended: answered.err(),
            bytes,
            started,
            connect_time,
        })
    }
}

/// The session's second phase: relays until either side ends or the balancer closes it, then
/// counts and logs how it ended. Holds the [`Established`] state in place, once.
#[allow(
    clippy::manual_async_fn,
    reason = "an async block keeps its arguments once; an async fn copies them into its future a second time"
)]
fn relay_phase(mut established: Option<Established>) -> impl Future<Output = ()> + Send {
    async move {
        let Some(established) = established.as_mut() else {
            return;
        };
        let end = match established.ended {
            Some(end) => end,
            None => {
                established
                    .session
                    .relay(
                        &mut established.client,
                        &mut established.connected,
                        established.bytes.as_deref(),
                    )
                    .await
            }
        };
        established.session.finish(
            &established.connected,
            end,
            established.bytes.as_deref(),
            established.started,
            established.connect_time,
        );
    }
}

/// A session whose backend is connected and whose first flight is through: what the relay
/// needs, and what its end is counted and logged with.
struct Established {
    session: Session,
    client: Stream,
    connected: Connected,
    /// Set when the session ended before the relay (its last backend failed the first flight).
    ended: Option<SessionEnd>,
    bytes: Option<Box<SessionBytes>>,
    started: Started,
    connect_time: Duration,
}

/// An admitted client and the places it holds.
struct Session {
    server: Arc<Server>,
    peer: SocketAddr,
    _slot: Slot<ServerStats>,
    _client_slot: Option<ClientGuard>,
}

impl Session {
    /// The PROXY header and the walk through the backends the client may reach; `None` when
    /// it may reach none (see [`route`](Self::route)). Takes the server name, needed only
    /// here, so that it stays out of the state kept while the session waits for a backend.
    fn prepare(
        &self,
        server_name: Option<String>,
        local: Option<io::Result<SocketAddr>>,
    ) -> Option<(io::Result<Vec<u8>>, Walk<'_>)> {
        let eligible = self.route(server_name.as_deref())?;
        let header = self.proxy_header(server_name.as_deref(), local);
        Some((
            header,
            Walk::new(&self.server, &self.peer, eligible.as_deref()),
        ))
    }

    /// With `[sni]`, the backends the client's server name may reach; `None` when there are
    /// none (the client is closed, and counted). `Some(None)`: every backend.
    fn route(&self, server_name: Option<&str>) -> Option<Option<Vec<bool>>> {
        let Some(router) = &self.server.sni else {
            return Some(None);
        };
        let route = router.route(&self.server.pool, server_name);
        if route.unmatched {
            self.server
                .stats
                .tls
                .sni_unmatched
                .fetch_add(1, Ordering::Relaxed);
        }
        if route.is_rejected() {
            if let Some(suppressed) = self.server.log_limits.sni_rejected.check() {
                info!(server = self.server.name(), client = %self.peer, server_name = server_name.unwrap_or(""), suppressed, "no backend for the client's server name; client closed");
            }
            return None;
        }
        Some(Some(route.eligible))
    }

    /// The PROXY header to send first to every backend tried, if the server asks for one.
    ///
    /// `local` is the client socket's own address, read only when the server sends a header.
    fn proxy_header(
        &self,
        server_name: Option<&str>,
        local: Option<io::Result<SocketAddr>>,
    ) -> io::Result<Vec<u8>> {
        let local = || local.unwrap_or_else(|| Err(io::ErrorKind::AddrNotAvailable.into()));
        Ok(match self.server.config.proxy_protocol {
            Some(ProxyProtocolVersion::V1) => {
                proxy_protocol::v1_header(self.peer, local()?).into_bytes()
            }
            // The name the client asked for (SNI) travels as the AUTHORITY TLV.
            Some(ProxyProtocolVersion::V2) => {
                proxy_protocol::v2_header(Transport::Stream, self.peer, local()?, server_name)
            }
            None => Vec::new(),
        })
    }

    /// Counts how the session ended and writes its access log line.
    fn finish(
        &self,
        connected: &Connected,
        end: SessionEnd,
        bytes: Option<&SessionBytes>,
        started: Started,
        connect: Duration,
    ) {
        self.server.stats.ended.record(end);
        if let (Some(log), Some(bytes)) = (&self.server.access_log, bytes) {
            let (to_backend, to_client) = bytes.moved();
            log.record(&Entry {
                start: started.at,
                client: self.peer,
                server: self.server.name(),
                backend: &connected.backend.target,
                connect,
                duration: started.elapsed(),
                to_backend,
                to_client,
                end: end.as_str(),
                retries: connected.retries,
            });
        }
    }

    fn report_unserved(&self) {
        let server = &self.server;
        server.stats.unserved.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.unserved.check() {
            error!(
                server = server.name(),
                client = %self.peer,
                backends = server.pool.backends().len(),
                suppressed,
                "no backend could be connected; client closed"
            );
        }
    }

    /// Forwards until the session ends by itself or is closed (shutdown, backend closed): the
    /// backend's closer is a child of the shutdown token, so one future waits for both.
    async fn relay(
        &self,
        client: &mut Stream,
        connected: &mut Connected,
        bytes: Option<&SessionBytes>,
    ) -> SessionEnd {
        let meter = SessionMeter {
            backend: &connected.backend.state.stats.traffic,
            server: &self.server.stats.traffic,
            session: bytes,
        };
        let closer = connected.closer().clone();
        let forwarding =
            forward::relay(client, &mut connected.stream, &self.server.forward, &meter);
        // Pinned here, so that `select!` holds a reference and not a second copy of it.
        tokio::pin!(forwarding);
        let outcome = tokio::select! {
            outcome = &mut forwarding => outcome.map_err(Interrupted::Failed),
            () = closer.cancelled() => {
                Err(Interrupted::Closed(super::connect::close_reason(
                    &connected.backend_closer,
                    &connected.backend.state,
                )))
            }
        };
        let end = match &outcome {
            Ok(_) => SessionEnd::Completed,
            Err(Interrupted::Closed(end)) => *end,
            Err(Interrupted::Failed(ForwardError::Idle { .. })) => SessionEnd::IdleTimeout,
            Err(Interrupted::Failed(_)) => SessionEnd::Error,
        };
        // Field values are only formatted when debug logging is on.
        debug!(
            server = self.server.name(),
            client = %self.peer,
            backend = %connected.backend.target,
            end = end.as_str(),
            detail = %Outcome(&outcome),
            "session ended"
        );
        end
    }
}

/// Why forwarding stopped before both sides closed.
enum Interrupted {
    /// The balancer closed the session.
    Closed(SessionEnd),
    Failed(ForwardError),
}

/// A session's outcome for its log line: bytes moved, or what interrupted it.
struct Outcome<'a>(&'a Result<forward::Transferred, Interrupted>);

impl std::fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Ok(moved) => write!(f, "tx {} rx {}", moved.to_backend, moved.to_client),
            Err(Interrupted::Closed(end)) => write!(f, "closed by the balancer: {}", end.as_str()),
            Err(Interrupted::Failed(error)) => write!(f, "{error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    use super::*;
    use crate::snapshot::Snapshot;

    /// Counts the bytes each thread allocates, so that a test can see what spawning one task
    /// takes. In every unit test of the crate; it only adds a thread-local count.
    struct Counting;

    thread_local! {
        static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    }

    // SAFETY: every call is passed on to the system allocator with the same arguments; the
    // count is a const-initialised thread-local `Cell`, which never allocates.
    #[allow(unsafe_code, reason = "a global allocator is an unsafe trait")]
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|count| count.set(count.get() + layout.size()));
            // SAFETY: the caller's contract for `alloc`, passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this `layout` (above).
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static COUNTING: Counting = Counting;

    fn allocated_by<T>(action: impl FnOnce() -> T) -> (usize, T) {
        let before = ALLOCATED.with(Cell::get);
        let made = action();
        (ALLOCATED.with(Cell::get) - before, made)
    }

    /// An idle client waits in its first flight, after the connect: what it keeps there must
    /// fit in the memory the relay takes anyway, so that waiting costs no more than relaying
    /// (BENCHMARKS.md, "Memory per idle connection"). Measured as what spawning the task
    /// allocates: tokio rounds a task up to 128 bytes, so this is the figure that counts.
    #[test]
    fn waiting_for_a_first_response_takes_no_more_memory_than_relaying() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let text = "[servers.api]\nbind = \"127.0.0.1:0\"\n\
                [servers.api.discovery]\nkind = \"static\"\nstatic_list = [\"127.0.0.1:9\"]\n";
            let config = crate::config::load_str("test.toml", text, &Default::default())
                .unwrap()
                .config;
            let snapshot = Snapshot::new(config, None, &CancellationToken::new()).unwrap();
            let server = snapshot.server("api").unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (accepted, peer) = listener.accept().await.unwrap();
            let slot = Slot::try_acquire(&server.stats, None).unwrap();
            let session = TcpSession::new(Arc::clone(server), accepted, peer, slot, None);
            // The scheduler's queue grows on the first spawns: past them, a spawn allocates
            // its task alone.
            for _ in 0..2 {
                let warm: Vec<_> = (0..16).map(|_| tokio::spawn(async {})).collect();
                for task in warm {
                    task.await.unwrap();
                }
            }
            let close = CancellationToken::new();
            let (relaying, relay_task) =
                allocated_by(|| tokio::spawn(two_phase(std::future::ready(None), relay_phase)));
            let (session_bytes, session_task) = allocated_by(|| tokio::spawn(session.run(close)));
            assert!(relaying > 0);
            assert!(
                session_bytes <= relaying,
                "a session task takes {session_bytes} bytes, relaying alone {relaying}"
            );
            session_task.abort();
            relay_task.abort();
        });
    }
}
