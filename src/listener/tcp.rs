//! A TCP listener: accept, check access and limits ([`admission`]), then hand the client to a
//! session.
//!
//! Each `[servers.NAME]` has one accept task running [`accept_loop`]. It looks the server up in
//! the current snapshot for every connection, so a reload changes the pool of new connections at
//! once, and spawns one session task per admitted client. The accept loop never dies: transient
//! errors are retried, resource exhaustion (EMFILE, ENFILE) backs off and is logged once a
//! second. A session's errors end at the task boundary with one log line.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{Shared, admission};
use crate::net;
use crate::session::tcp::TcpSession;
use crate::snapshot::Server;
use crate::stats::Slot;

/// Pause after an accept error that is not about the connection itself.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// Accepts connections for server `name` until `stop` is cancelled, then serves the connections
/// already queued on the listener and gives the socket back, for the caller to close (or, if
/// systemd passed it, to pause); established sessions go on.
pub async fn accept_loop(
    name: Arc<str>,
    listener: TcpListener,
    shared: Shared,
    stop: CancellationToken,
) -> Option<std::net::TcpListener> {
    let Some(mut server) = shared.snapshot.load().server(&name).cloned() else {
        error!(server = %name, "listener started for a server missing from the config");
        return listener.into_std().ok();
    };
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                // A server removed by a reload keeps serving what it accepts until its listener
                // is stopped.
                if let Some(current) = shared.snapshot.load().server(&name) {
                    server = Arc::clone(current);
                }
                admit(&server, client, peer, &shared);
            }
            Err(error) if is_connection_error(&error) => {
                debug!(server = %name, %error, "accept: connection lost before it was accepted");
            }
            Err(error) => {
                if let Some(suppressed) = server.log_limits.accept.check() {
                    warn!(server = %name, %error, suppressed, pause = ?backoff, "accept failed; pausing");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    match listener.into_std() {
        Ok(listener) => {
            let queued = drain_backlog(&listener, &server, &shared);
            info!(server = %name, queued, "listener closed");
            Some(listener)
        }
        Err(error) => {
            warn!(server = %name, %error, "cannot drain the listener's queue");
            None
        }
    }
}

/// Admits the connections the kernel had already completed for a listener being closed, so a
/// reload that stops it refuses nobody. Returns how many there were.
fn drain_backlog(listener: &std::net::TcpListener, server: &Arc<Server>, shared: &Shared) -> usize {
    let mut admitted = 0;
    // Bounded by the backlog size: the loop cannot outrun a flood of new connections forever.
    for _ in 0..net::LISTEN_BACKLOG {
        let Ok((client, peer)) = listener.accept() else {
            break;
        };
        let client = client
            .set_nonblocking(true)
            .and_then(|()| TcpStream::from_std(client));
        match client {
            Ok(client) => {
                admit(server, client, peer, shared);
                admitted += 1;
            }
            Err(error) => debug!(server = server.name(), %error, "queued connection unusable"),
        }
    }
    admitted
}

/// Errors that concern one pending connection, not the listener: accept the next one at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EPROTO
                | libc::EPERM
                | libc::EINTR
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
        )
    )
}

/// Applies `[access]`, `[client_limits]` and `max_connections`, then spawns the session;
/// with `[accept_proxy]`, checks the source is trusted and leaves the rest to the session's
/// task, which reads the client's address from the PROXY header first.
fn admit(server: &Arc<Server>, client: TcpStream, peer: SocketAddr, shared: &Shared) {
    let admitted = match &server.config.accept_proxy {
        Some(accept) if !admission::is_trusted(server, accept, peer) => return,
        Some(_) => None,
        None => match admission::admit_client(server, peer) {
            Some(admitted) => Some(admitted),
            None => return,
        },
    };
    let Some(slot) = Slot::try_acquire(&server.stats, server.config.max_connections) else {
        server.stats.over_limit.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.over_limit.check() {
            warn!(
                server = server.name(),
                client = %peer,
                max_connections = server.config.max_connections,
                suppressed,
                "client refused: server at max_connections"
            );
        }
        return;
    };
    let close = shared.close_sessions.clone();
    let Some(admitted) = admitted else {
        let session = admission::run_proxied_session(Arc::clone(server), client, peer, slot, close);
        shared.sessions.spawn(session);
        return;
    };
    server.stats.total.fetch_add(1, Ordering::Relaxed);
    let session = TcpSession::new(Arc::clone(server), client, peer, slot, admitted.client_slot);
    shared.sessions.spawn(session.run(close));
}
