//! The systemd side of the daemon: readiness, reload and stop notifications, the watchdog, and
//! listening sockets passed by socket activation.
//!
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`), so the same
//! binary runs by hand, under systemd `Type=notify`/`notify-reload`, or in tests that play the
//! service manager.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use socket2::{Domain, SockRef, Socket, Type};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::BindAddr;
use crate::net;

/// Tells systemd that every listener is bound and the daemon serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload started (`Type=notify-reload` waits for the next READY=1).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(error) => {
            warn!(%error, "cannot read the monotonic clock for systemd");
            send(&[NotifyState::Reloading, NotifyState::Status("reloading")]);
        }
    }
}

/// Tells systemd the daemon is draining and will exit.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(states) {
        warn!(%error, "cannot notify systemd");
    }
}

/// When systemd set `WATCHDOG_USEC`, pings it at half that period from a task on the async
/// runtime, so a wedged runtime stops the pings and systemd restarts the service.
pub fn spawn_watchdog(stop: CancellationToken) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(10));
    info!(?period, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticker.tick() => send(&[NotifyState::Watchdog]),
            }
        }
    });
}

/// Listening sockets handed over by systemd socket activation (`LISTEN_FDS`), by address.
///
/// The supervisor takes the one matching a server's bind instead of binding itself, so a
/// restart or an upgrade of the binary refuses no connection: the kernel queues clients on the
/// socket systemd keeps open in between.
///
/// A socket given back by a drain is paused (see [`pause`](Self::pause)) rather than closed:
/// systemd's copy would keep it listening, and clients would queue on it with nobody to accept
/// them.
#[derive(Debug, Default)]
pub struct InheritedSockets {
    listeners: HashMap<SocketAddr, std::net::TcpListener>,
    /// Those of `listeners` that stopped listening, to listen again when taken.
    paused: HashSet<SocketAddr>,
}

impl InheritedSockets {
    /// Takes ownership of the sockets systemd passed to this process, if any. Sockets that are
    /// not TCP listeners are closed with a warning; one an earlier betwixt paused listens
    /// again.
    ///
    /// Only the first call in a process adopts them; later calls find none (`sd_notify` leaves
    /// `LISTEN_FDS` set, and a descriptor must have one owner).
    pub fn from_environment() -> Self {
        if ADOPTED.swap(true, Ordering::SeqCst) {
            return Self::default();
        }
        let fds = match sd_notify::listen_fds() {
            Ok(fds) => fds,
            Err(error) => {
                warn!(%error, "ignoring malformed LISTEN_FDS/LISTEN_PID");
                return Self::default();
            }
        };
        let mut listeners = HashMap::new();
        for fd in fds {
            // SAFETY: `fd` is in the range LISTEN_FDS names for this process (listen_fds()
            // checked LISTEN_PID and that each descriptor is open, with F_GETFD). ADOPTED makes
            // this loop run once per process, and nothing else in betwixt uses these
            // descriptors, so each is adopted exactly once and the socket is its only owner.
            #[allow(unsafe_code)]
            let socket = unsafe { inherited::adopt(fd) };
            match tcp_listener(socket) {
                Ok((addr, listener)) => {
                    info!(address = %addr, fd, "using a listening socket passed by systemd");
                    listeners.insert(addr, listener);
                }
                Err(error) => {
                    warn!(fd, %error, "closing a passed socket that is not a TCP listener")
                }
            }
        }
        Self {
            listeners,
            paused: HashSet::new(),
        }
    }

    /// Removes and returns the passed socket for `bind`, with its address: the same address
    /// (`0.0.0.0:PORT` for a wildcard bind), or for a wildcard bind `[::]:PORT`.
    ///
    /// # Errors
    /// A paused socket could not listen again; it is closed.
    pub fn take(
        &mut self,
        bind: &BindAddr,
    ) -> io::Result<Option<(SocketAddr, std::net::TcpListener)>> {
        let v6_any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, bind.addr.port()));
        let candidates = [Some(bind.addr), bind.dual_stack.then_some(v6_any)];
        let Some((addr, listener)) = candidates
            .into_iter()
            .flatten()
            .find_map(|addr| Some((addr, self.listeners.remove(&addr)?)))
        else {
            return Ok(None);
        };
        if self.paused.remove(&addr) {
            SockRef::from(&listener).listen(net::LISTEN_BACKLOG)?;
            info!(address = %addr, "a socket passed by systemd listens again");
        }
        Ok(Some((addr, listener)))
    }

    /// Puts back a socket [`take`](Self::take) returned, for a start or reload that was refused.
    pub fn give_back(&mut self, addr: SocketAddr, listener: std::net::TcpListener) {
        self.listeners.insert(addr, listener);
    }

    /// Takes back a socket a listener stopped using (a drain, or a reload that removed or
    /// moved its server), and stops it listening: `shutdown(SHUT_RD)` on a listening socket
    /// closes its queue for every holder of the socket, systemd's copy included, so clients
    /// are refused (and go to the other node) instead of waiting on a queue nobody accepts
    /// from. The address stays bound, so [`take`](Self::take) can listen on it again; HAProxy
    /// pauses its listeners the same way.
    pub fn pause(&mut self, addr: SocketAddr, listener: std::net::TcpListener) {
        pause(addr, &listener);
        self.paused.insert(addr);
        self.listeners.insert(addr, listener);
    }

    /// Pauses the passed sockets no server asked for, and says so: until a reload adds their
    /// server, their clients are refused rather than queued.
    pub fn pause_unused(&mut self) {
        for (addr, listener) in &self.listeners {
            if self.paused.insert(*addr) {
                pause(*addr, listener);
                warn!(address = %addr, "a socket passed by systemd matches no server; it stops listening until a reload adds one");
            }
        }
    }
}

/// Stops `listener` listening, for every process that holds it (see [`InheritedSockets::pause`]).
fn pause(addr: SocketAddr, listener: &std::net::TcpListener) {
    if let Err(error) = SockRef::from(listener).shutdown(std::net::Shutdown::Read) {
        warn!(address = %addr, %error, "cannot stop a socket passed by systemd from listening");
    }
}

/// Set once the passed descriptors have been adopted.
static ADOPTED: AtomicBool = AtomicBool::new(false);

/// `socket` as a non-blocking TCP listener with the session options, and its address; an error
/// if it is not a listening TCP/IP stream socket (systemd may pass any kind).
fn tcp_listener(socket: Socket) -> io::Result<(SocketAddr, std::net::TcpListener)> {
    let not_a_listener = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    if socket.r#type()? != Type::STREAM {
        return Err(not_a_listener("not a stream socket"));
    }
    if !matches!(socket.domain()?, Domain::IPV4 | Domain::IPV6) {
        return Err(not_a_listener("not an IPv4 or IPv6 socket"));
    }
    if !socket.is_listener()? {
        // Bound and not connected: paused by the drain of an earlier betwixt, which keeps the
        // address (`InheritedSockets::pause`), so it listens again. A connection (what
        // `Accept=yes` passes) is not a listener.
        let bound = socket
            .local_addr()?
            .as_socket()
            .is_some_and(|addr| addr.port() != 0);
        if !bound || socket.peer_addr().is_ok() {
            return Err(not_a_listener("not listening"));
        }
        socket.listen(net::LISTEN_BACKLOG)?;
    }
    socket.set_nonblocking(true)?;
    let listener = std::net::TcpListener::from(socket);
    crate::net::prepare_listener(&listener)?;
    Ok((listener.local_addr()?, listener))
}

/// Adopting a file descriptor: needs `unsafe`.
#[allow(unsafe_code)]
mod inherited {
    use std::os::fd::{FromRawFd, RawFd};

    use socket2::Socket;

    /// Takes ownership of descriptor `fd` as a socket; dropping it closes `fd`.
    ///
    /// # Safety
    /// `fd` must be an open descriptor that nothing else in the process owns, uses or closes,
    /// now or later, and this must be the only call for it: two owners would close it twice
    /// (possibly closing an unrelated descriptor that reused the number). It need not be a
    /// socket; the socket calls made on it then fail.
    pub(super) unsafe fn adopt(fd: RawFd) -> Socket {
        // SAFETY: the caller guarantees `fd` is open and owned by nothing else.
        unsafe { Socket::from_raw_fd(fd) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_tcp_sockets_are_used() {
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listening.local_addr().unwrap();
        let (found, _listening) = tcp_listener(Socket::from(listening)).unwrap();
        assert_eq!(found, addr);

        // Paused by an earlier betwixt's drain: bound, not listening. It listens again.
        let paused = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        paused
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let (found, listener) = tcp_listener(paused).unwrap();
        std::net::TcpStream::connect(found).expect("listening again");
        drop(listener);

        let connection = std::net::TcpStream::connect(addr).unwrap();
        let error = tcp_listener(Socket::from(connection)).unwrap_err();
        assert!(error.to_string().contains("not listening"), "{error}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let error = tcp_listener(Socket::from(udp)).unwrap_err();
        assert!(error.to_string().contains("not a stream"), "{error}");

        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let error = tcp_listener(Socket::from(std::os::fd::OwnedFd::from(unix))).unwrap_err();
        assert!(error.to_string().contains("not an IPv4 or IPv6"), "{error}");
    }
}
