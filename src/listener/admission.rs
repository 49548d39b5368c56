//! Whether a TCP client may have a session: `[access]` and `[client_limits]` on its address,
//! and with `[accept_proxy]` first a PROXY header from a trusted balancer that says what that
//! address is. Every refusal is counted and logged (rate-limited) here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access;
use crate::client_limits::{ClientGuard, Refusal};
use crate::config::AcceptProxy;
use crate::proxy_protocol::accept::read_header;
use crate::session::tcp::TcpSession;
use crate::snapshot::Server;
use crate::stats::{ServerStats, Slot};

/// A client let in, with its `[client_limits]` slot (if the server has limits), for its
/// session to hold to the end.
pub(super) struct Admitted {
    pub(super) client_slot: Option<ClientGuard>,
}

/// Applies `[access]` and `[client_limits]` to `client`, the address the session is for.
/// `None`: refused (closed by the caller; counted and logged here).
pub(super) fn admit_client(server: &Server, client: SocketAddr) -> Option<Admitted> {
    if let Some(rules) = &server.config.access
        && !access::allows(rules, client.ip())
    {
        server.stats.denied.fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = server.log_limits.denied.check() {
            info!(server = server.name(), client = %client, suppressed, "client denied by access rules");
        }
        return None;
    }
    let Some(table) = &server.clients else {
        return Some(Admitted { client_slot: None });
    };
    match table.admit(client.ip()) {
        Ok(guard) => Some(Admitted {
            client_slot: Some(guard),
        }),
        Err(refusal) => {
            let counter = match refusal {
                Refusal::Connections => &server.stats.client_over_connections,
                Refusal::Rate => &server.stats.client_over_rate,
                Refusal::TableFull => &server.stats.client_table_full,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = server.log_limits.client_limited.check() {
                warn!(server = server.name(), client = %client, limit = refusal.as_str(), suppressed, "client refused by client_limits");
            }
            None
        }
    }
}

/// Whether `peer` may send a PROXY header; counts and logs it when not.
pub(super) fn is_trusted(server: &Server, accept: &AcceptProxy, peer: SocketAddr) -> bool {
    let ip = peer.ip().to_canonical();
    if accept.trusted.iter().any(|network| network.contains(&ip)) {
        return true;
    }
    server.stats.proxy_untrusted.fetch_add(1, Ordering::Relaxed);
    if let Some(suppressed) = server.log_limits.proxy_refused.check() {
        warn!(server = server.name(), peer = %peer, suppressed, "connection closed: not from an accept_proxy trusted source");
    }
    false
}

/// A connection from a trusted balancer: reads its PROXY header, admits the client it names
/// (or, for a LOCAL or UNKNOWN header, the balancer itself), then runs the session.
pub(super) async fn run_proxied_session(
    server: Arc<Server>,
    mut client: TcpStream,
    peer: SocketAddr,
    slot: Slot<ServerStats>,
    close: CancellationToken,
) {
    let Some(accept) = &server.config.accept_proxy else {
        return;
    };
    let read = tokio::select! {
        read = read_header(&mut client, accept.read_timeout) => read,
        () = close.cancelled() => return,
    };
    let real = match read {
        Ok(addresses) => addresses.map_or(peer, |addresses| addresses.source),
        Err(error) => {
            server
                .stats
                .proxy_header_failed
                .fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = server.log_limits.proxy_refused.check() {
                info!(server = server.name(), peer = %peer, %error, suppressed, "connection closed: no valid PROXY header");
            }
            return;
        }
    };
    let Some(admitted) = admit_client(&server, real) else {
        return;
    };
    server.stats.total.fetch_add(1, Ordering::Relaxed);
    let session = TcpSession::new(
        Arc::clone(&server),
        client,
        real,
        slot,
        admitted.client_slot,
    );
    session.run(close).await;
}
