//! One HTTP listener (the API's or the metrics'): the accept task, TLS, and HTTP/1.1 per
//! connection.
//!
//! The accept task spawns one task per connection, at most [`MAX_CONNECTIONS`] at once: an
//! operator endpoint must not grow without bound. When all are taken, the oldest idle one is
//! closed to make room (see [`super::slots`]), so connections that send nothing cannot lock
//! operators out; only when every connection is in a request is a newcomer closed at once.
//! Each connection has [`HEADER_TIMEOUT`] to send its request headers and
//! [`TLS_HANDSHAKE_TIMEOUT`] for the handshake. Each request carries the address the
//! connection arrived at ([`LocalAddr`], in its extensions). Stopping ends the accept task,
//! lets requests in flight finish (connections get hyper's graceful shutdown) for up to
//! [`STOP_GRACE`], then drops the rest.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::response::{self, Body};
use super::slots::{Slot, Slots};
use crate::logging::RateLimit;

/// Connections served at once per listener.
pub const MAX_CONNECTIONS: usize = 128;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for requests in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long an evicted connection may take to finish writing a response.
const EVICTION_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The address a request's connection arrived at (for a wildcard listener, the one the client
/// dialed), in every request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalAddr(pub SocketAddr);

/// What a listener serves: the REST API, the metrics endpoint.
pub(crate) trait Site: Send + Sync + 'static {
    /// The TLS acceptor for a new connection, when the site serves HTTPS.
    fn tls(&self) -> Option<TlsAcceptor>;

    /// Answers one request from `peer`.
    fn respond(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Body>> + Send;
}

/// A running listener and its accept task.
#[derive(Debug)]
pub struct HttpListener {
    local_addr: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl HttpListener {
    /// Serves `site` on an already bound listener (for tests, one bound to port 0).
    ///
    /// # Errors
    /// The socket cannot be registered with the runtime or has no local address.
    pub(crate) fn serve<S: Site>(
        listener: std::net::TcpListener,
        site: Arc<S>,
    ) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, site, stop.clone()));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for requests in flight, at most [`STOP_GRACE`].
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Err(error) = (&mut self.task).await {
            warn!(address = %self.local_addr, %error, "HTTP listener task failed");
        }
    }
}

impl Drop for HttpListener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop<S: Site>(listener: TcpListener, site: Arc<S>, stop: CancellationToken) {
    let connections = TaskTracker::new();
    let slots = Slots::new(MAX_CONNECTIONS);
    let errors_log = RateLimit::per_second();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                if let Some(suppressed) = errors_log.check() {
                    warn!(%error, suppressed, "HTTP accept failed");
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = slots.admit(peer) else {
            if let Some(suppressed) = errors_log.check() {
                warn!(client = %peer, suppressed, limit = MAX_CONNECTIONS, "HTTP connection refused: every connection is in a request");
            }
            continue;
        };
        let (site, stop) = (Arc::clone(&site), stop.clone());
        connections.spawn(serve_connection(stream, peer, site, stop, slot));
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(STOP_GRACE, connections.wait())
        .await
        .is_err()
    {
        debug!(
            connections = connections.len(),
            "HTTP connections still open after the grace period; dropped"
        );
    }
}

async fn serve_connection<S: Site>(
    stream: TcpStream,
    peer: SocketAddr,
    site: Arc<S>,
    stop: CancellationToken,
    slot: Slot,
) {
    let local = match stream.local_addr() {
        Ok(local) => LocalAddr(local),
        Err(error) => {
            return debug!(client = %peer, %error, "HTTP connection without a local address");
        }
    };
    let context = Arc::new(Context { peer, local, slot });
    let Some(acceptor) = site.tls() else {
        return serve_http(TokioIo::new(stream), context, site, stop).await;
    };
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let handshake = tokio::select! {
        handshake = handshake => handshake,
        () = context.slot.evicted() => return,
    };
    match handshake {
        Ok(Ok(tls)) => serve_http(TokioIo::new(tls), context, site, stop).await,
        Ok(Err(error)) => debug!(client = %peer, %error, "HTTPS handshake failed"),
        Err(_) => debug!(client = %peer, "HTTPS handshake timed out"),
    }
}

/// What every request of one connection shares.
struct Context {
    peer: SocketAddr,
    local: LocalAddr,
    slot: Slot,
}

async fn serve_http<I, S>(io: I, context: Arc<Context>, site: Arc<S>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Site,
{
    let service = {
        let context = Arc::clone(&context);
        service_fn(move |request| answer(Arc::clone(&site), Arc::clone(&context), request))
    };
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    // Both ends let a response being written finish; an evicted connection is idle, so at
    // most that, or half a request's headers, is lost by not waiting longer.
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        () = context.slot.evicted() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(EVICTION_GRACE, connection).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(error) = result {
        debug!(client = %context.peer, %error, "HTTP connection ended with an error");
    }
}

/// One request, marked busy so that eviction leaves the connection alone while it runs.
async fn answer<S: Site>(
    site: Arc<S>,
    context: Arc<Context>,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(_busy) = context.slot.start_request() else {
        let closing = "the connection was idle and is being closed to make room; reconnect";
        return Ok(response::error(StatusCode::SERVICE_UNAVAILABLE, closing));
    };
    request.extensions_mut().insert(context.local);
    Ok(site.respond(request, context.peer).await)
}
