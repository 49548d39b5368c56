//! One HTTP listener (the API's or the metrics'): the accept task, TLS, and HTTP/1.1 per
//! connection.
//!
//! The accept task spawns one task per connection, at most [`MAX_CONNECTIONS`] at once (more
//! are closed at once: an operator endpoint must not grow without bound). Each connection has
//! [`HEADER_TIMEOUT`] to send its request headers and [`TLS_HANDSHAKE_TIMEOUT`] for the
//! handshake. Stopping ends the accept task, lets requests in flight finish (connections get
//! hyper's graceful shutdown) for up to [`STOP_GRACE`], then drops the rest.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::response::Body;
use crate::logging::RateLimit;

/// Connections served at once per listener.
pub const MAX_CONNECTIONS: usize = 128;
/// Time a client has to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to complete the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for requests in flight.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause after an accept error that is not about one connection (e.g. out of descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

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
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if let Some(suppressed) = errors_log.check() {
                warn!(client = %peer, suppressed, limit = MAX_CONNECTIONS, "HTTP connection refused: too many open");
            }
            continue;
        };
        let (site, stop) = (Arc::clone(&site), stop.clone());
        connections.spawn(async move {
            serve_connection(stream, peer, site, stop).await;
            drop(permit);
        });
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
) {
    let Some(acceptor) = site.tls() else {
        return serve_http(TokioIo::new(stream), peer, site, stop).await;
    };
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_http(TokioIo::new(tls), peer, site, stop).await,
        Ok(Err(error)) => debug!(client = %peer, %error, "HTTPS handshake failed"),
        Err(_) => debug!(client = %peer, "HTTPS handshake timed out"),
    }
}

async fn serve_http<I, S>(io: I, peer: SocketAddr, site: Arc<S>, stop: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Site,
{
    let service = service_fn(move |request| {
        let site = Arc::clone(&site);
        async move { Ok::<_, Infallible>(site.respond(request, peer).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(client = %peer, %error, "HTTP connection ended with an error");
    }
}
