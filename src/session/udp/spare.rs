//! Connected backend sockets of completed sessions, kept for the next session to the same
//! backend.
//!
//! With `max_responses` set, a session ends as soon as its requests got their replies, and the
//! client's next request opens a new one: for DNS, a session per query. Making its socket costs
//! `socket`, `connect`, two epoll registrations and a `close`, half the system calls of the
//! whole exchange. A socket whose session got every reply it expected is idle and still
//! connected to its backend, so the next session picked for that backend takes it instead.
//!
//! Only sockets of sessions that completed are kept (never one that timed out, was evicted,
//! failed or whose backend went down), never transparent ones (they are bound to their client's
//! address), at most [`SPARES_PER_BACKEND`] per backend, and all are dropped when the server's
//! configuration changes. A datagram the backend sends after the session completed (a reply
//! beyond `max_responses`) is discarded when the socket is taken, so it cannot reach the next
//! client; only a reply sent after that moment could, and a backend that answers one request
//! more often than `max_responses` says is misconfigured for its server.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

use super::budget::BudgetGuard;

/// Idle sockets kept per backend: enough for the sessions a busy listener opens between two
/// completions, few enough that the descriptors they hold stay small.
pub(crate) const SPARES_PER_BACKEND: usize = 64;

/// Stale datagrams discarded when a spare is taken; a socket with more is closed instead.
const MAX_STALE: usize = 8;

/// A connected socket and its place in the process's socket budget.
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) socket: UdpSocket,
    pub(crate) budget: BudgetGuard,
}

/// The spare sockets of one listener, by backend address.
#[derive(Debug, Default)]
pub(crate) struct SpareSockets {
    by_backend: HashMap<SocketAddr, Vec<Spare>>,
}

impl SpareSockets {
    /// Keeps `spare`, connected to `backend`, unless that backend has enough already.
    pub(crate) fn keep(&mut self, backend: SocketAddr, spare: Spare) {
        let spares = self.by_backend.entry(backend).or_default();
        if spares.len() < SPARES_PER_BACKEND {
            spares.push(spare);
        }
    }

    /// A socket connected to `backend` with nothing waiting on it, if one is kept.
    pub(crate) fn take(&mut self, backend: SocketAddr) -> Option<Spare> {
        let spares = self.by_backend.get_mut(&backend)?;
        while let Some(spare) = spares.pop() {
            if discard_stale(&spare.socket) {
                return Some(spare);
            }
        }
        None
    }

    /// Drops every spare (their descriptors are needed, or their backends may have changed).
    pub(crate) fn clear(&mut self) {
        self.by_backend.clear();
    }

    /// How many sockets are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_backend.values().map(Vec::len).sum()
    }
}

/// Reads and drops what arrived on an idle socket; false if it holds an error (an ICMP
/// unreachable) or more than [`MAX_STALE`] datagrams. tokio's `try_recv` makes no system call
/// when the reactor saw nothing arrive since the last read.
fn discard_stale(socket: &UdpSocket) -> bool {
    let mut sink = [0; 1];
    for _ in 0..MAX_STALE {
        match socket.try_recv(&mut sink) {
            Ok(_) => {}
            Err(error) => return error.kind() == std::io::ErrorKind::WouldBlock,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connected_pair() -> (UdpSocket, UdpSocket) {
        let backend = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(backend.local_addr().unwrap()).await.unwrap();
        backend.connect(client.local_addr().unwrap()).await.unwrap();
        (client, backend)
    }

    fn spare(socket: UdpSocket) -> Spare {
        Spare {
            socket,
            budget: BudgetGuard::try_acquire().unwrap(),
        }
    }

    #[tokio::test]
    async fn a_late_reply_is_discarded_before_the_socket_serves_another_session() {
        let (socket, backend) = connected_pair().await;
        let address = backend.local_addr().unwrap();
        let mut spares = SpareSockets::default();
        spares.keep(address, spare(socket));
        backend
            .send(b"late reply for the last client")
            .await
            .unwrap();
        // Let the reactor see it arrive.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        let taken = spares.take(address).expect("a spare");
        backend.send(b"fresh").await.unwrap();
        let mut buffer = [0; 64];
        let len = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            taken.socket.recv(&mut buffer),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(&buffer[..len], b"fresh");
        assert!(spares.take(address).is_none());
    }

    #[tokio::test]
    async fn each_backend_keeps_a_bounded_number() {
        let mut spares = SpareSockets::default();
        let address: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..SPARES_PER_BACKEND + 3 {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            spares.keep(address, spare(socket));
        }
        assert_eq!(spares.len(), SPARES_PER_BACKEND);
        spares.clear();
        assert_eq!(spares.len(), 0);
    }
}
