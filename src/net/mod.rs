//! Sockets: listeners bound the way gobetween binds them, the TCP options both sides of a
//! session get, and the UDP sockets of UDP sessions.

mod datagrams;

pub use datagrams::DatagramBatch;

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, TcpKeepalive, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::config::BindAddr;

/// Pending connections the kernel queues per listener (capped by `net.core.somaxconn`): large,
/// because a restarting master sends all its clients over at once.
pub const LISTEN_BACKLOG: i32 = 4096;

/// Keepalive probes start after this much silence...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...are sent this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and this many unanswered probes close the connection: a vanished peer is noticed within
/// about a minute instead of the kernel's default of two hours.
const KEEPALIVE_RETRIES: u32 = 3;

/// Whether a new listener may join a port that another socket already listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// The bind fails when any other socket listens on the address, so a second betwixt (or a
    /// gobetween still running) is an error at start-up instead of two processes silently
    /// sharing the port.
    Exclusive,
    /// SO_REUSEPORT before the bind: for betwixt's own rebinds during a reload, when the
    /// listener being replaced still holds the port (a bind that changes from `0.0.0.0:6443`
    /// to `10.0.0.5:6443`, or a server renamed), so no client is refused in between.
    WithOwnListener,
}

/// Binds a listening socket for `bind`: SO_REUSEADDR, a large backlog, non-blocking.
///
/// Every listener ends up with SO_REUSEPORT, set after the bind in [`Sharing::Exclusive`]: the
/// bind itself is exclusive (it fails with `EADDRINUSE` if anyone listens there), while the
/// flag lets a later reload of this process bind a replacement beside it. The check and the
/// bind are one system call, so there is no window for another process in between.
///
/// An empty host or `0.0.0.0` listens on `[::]` with IPV6_V6ONLY off, so IPv4 and IPv6 clients
/// are both accepted as with gobetween; on a host without IPv6 it falls back to `0.0.0.0`.
///
/// # Errors
/// The bind or listen error, e.g. the address is in use or not local.
pub fn bind_listener(bind: &BindAddr, sharing: Sharing) -> io::Result<std::net::TcpListener> {
    if bind.dual_stack {
        let any_v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), bind.addr.port());
        match listen(any_v6, true, sharing) {
            Ok(listener) => return Ok(listener),
            Err(error) if ipv6_unavailable(&error) => {}
            Err(error) => return Err(error),
        }
    }
    listen(bind.addr, false, sharing)
}

fn listen(
    addr: SocketAddr,
    dual_stack: bool,
    sharing: Sharing,
) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if sharing == Sharing::WithOwnListener {
        socket.set_reuse_port(true)?;
    }
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket
        .bind(&addr.into())
        .map_err(|error| match error.kind() {
            io::ErrorKind::AddrInUse if sharing == Sharing::Exclusive => io::Error::new(
                io::ErrorKind::AddrInUse,
                "another process already listens on this address (a second betwixt, or gobetween?)",
            ),
            _ => error,
        })?;
    socket.set_reuse_port(true)?;
    socket.listen(LISTEN_BACKLOG)?;
    let listener = socket.into();
    prepare_listener(&listener)?;
    Ok(listener)
}

/// Sets the session options on a listening socket. Linux copies TCP_NODELAY and keepalive
/// from a listener to every socket it accepts, so clients get them without a system call per
/// connection. Also applied to sockets passed by systemd.
///
/// # Errors
/// A setsockopt failure.
pub fn prepare_listener(listener: &std::net::TcpListener) -> io::Result<()> {
    let socket = SockRef::from(listener);
    socket.set_tcp_nodelay(true)?;
    apply_liveness(&socket)
}

fn ipv6_unavailable(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL | libc::EPROTONOSUPPORT)
    )
}

/// Opens a connection to a backend with the session options already set. No timeout: the
/// caller bounds it.
///
/// Asks the socket for its error (SO_ERROR) only when the kernel flagged one; tokio's own
/// `connect` asks every time, one system call per connection that nearly always finds none.
///
/// # Errors
/// The connect error (refused, unreachable, ...) or a setsockopt failure.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.nonblocking(), None)?;
    socket.set_tcp_nodelay(true)?;
    apply_liveness(&SockRef::from(&socket))?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(error) => return Err(error),
    }
    let stream = TcpStream::from_std(socket.into())?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    // A failed connect reports EPOLLERR (and EPOLLHUP once the socket is closed); a
    // successful one only EPOLLOUT, and then there is no error to fetch.
    if (ready.is_error() || ready.is_write_closed())
        && let Some(error) = stream.take_error()?
    {
        return Err(error);
    }
    Ok(stream)
}

/// Connects to `host:port`: straight to `resolved` when the host is an IP address, otherwise
/// to each address the name resolves to, in order, until one accepts. No timeout: the caller
/// bounds it.
///
/// # Errors
/// The resolver's error, or the last connect error.
pub async fn connect_host(
    resolved: Option<SocketAddr>,
    host: &str,
    port: u16,
) -> io::Result<TcpStream> {
    if let Some(addr) = resolved {
        return connect(addr).await;
    }
    let mut last_error = io::Error::new(
        io::ErrorKind::NotFound,
        format!("{host} resolves to no address"),
    );
    for addr in tokio::net::lookup_host((host, port)).await? {
        match connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(error) => last_error = error,
        }
    }
    Err(last_error)
}

/// Receive buffer asked for on a UDP listening socket: a burst of datagrams waits here while
/// the receive loop is busy (the kernel caps it at `net.core.rmem_max`).
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// Binds a UDP socket for `bind`, with the same address rules as [`bind_listener`] (dual stack
/// for an empty host or `0.0.0.0`), SO_REUSEADDR and SO_REUSEPORT, non-blocking.
///
/// # Errors
/// The bind error, e.g. the address is in use or not local.
pub fn bind_udp(bind: &BindAddr) -> io::Result<std::net::UdpSocket> {
    if bind.dual_stack {
        let any_v6 = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), bind.addr.port());
        match bind_datagram(any_v6, true) {
            Ok(socket) => return Ok(socket),
            Err(error) if ipv6_unavailable(&error) => {}
            Err(error) => return Err(error),
        }
    }
    bind_datagram(bind.addr, false)
}

fn bind_datagram(addr: SocketAddr, dual_stack: bool) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller buffer only means drops under a burst, which are counted.
    if let Err(error) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::debug!(%error, "cannot enlarge the UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A non-blocking UDP socket connected to `backend`, so the kernel filters what it receives to
/// that backend's replies and reports its ICMP errors (ECONNREFUSED) on it. With `from`, the
/// socket is bound to that foreign address first (IP_TRANSPARENT: needs CAP_NET_ADMIN), so the
/// backend sees the client's own address.
///
/// # Errors
/// The socket, setsockopt, bind or connect error; EPERM when transparent mode lacks the
/// capability.
pub fn connect_udp(
    backend: SocketAddr,
    from: Option<SocketAddr>,
) -> io::Result<std::net::UdpSocket> {
    // Non-blocking from `socket()` on: one system call instead of three per session.
    let socket = Socket::new(
        Domain::for_address(backend),
        Type::DGRAM.nonblocking(),
        None,
    )?;
    if let Some(from) = from {
        let from = match (from, backend) {
            (SocketAddr::V6(v6), SocketAddr::V4(_)) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => from,
            },
            _ => from,
        };
        set_transparent(&socket, backend)?;
        socket.set_reuse_address(true)?;
        socket.bind(&from.into())?;
    }
    socket.connect(&backend.into())?;
    Ok(socket.into())
}

/// Checks that this process may open transparent sockets (CAP_NET_ADMIN), before a server
/// that needs them starts.
///
/// # Errors
/// EPERM without the capability.
pub fn check_transparent() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, None)?;
    socket.set_ip_transparent_v4(true)
}

fn set_transparent(socket: &Socket, backend: SocketAddr) -> io::Result<()> {
    match backend {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true),
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true),
    }
}

/// The process's soft limit on open descriptors (RLIMIT_NOFILE); 1024 if it cannot be read.
pub fn descriptor_limit() -> usize {
    descriptor_limit_imp::soft_nofile().unwrap_or(1024)
}

#[allow(unsafe_code)]
mod descriptor_limit_imp {
    pub(super) fn soft_nofile() -> Option<usize> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `limit`.
        let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        (result == 0).then(|| usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX))
    }
}

/// What this host lacked when a connect failed through no fault of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalShortage {
    /// Descriptors, socket buffers or memory: any other connect would fail the same way.
    Resources,
    /// EADDRNOTAVAIL: no free local port (or no usable source address) for this destination.
    /// Linux picks ephemeral ports per destination, so another backend may still be reached.
    Address,
}

/// Whether a connect error says this process or host ran short of something rather than
/// anything about the peer: such a failure must not count against the backend.
pub fn local_shortage(error: &io::Error) -> Option<LocalShortage> {
    match error.raw_os_error()? {
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM => {
            Some(LocalShortage::Resources)
        }
        libc::EADDRNOTAVAIL => Some(LocalShortage::Address),
        _ => None,
    }
}

/// Keepalive, so a silently vanished peer of an idle session frees it within about a minute.
///
/// TCP_USER_TIMEOUT is deliberately left unset, as HAProxy and nginx leave it. Since Linux
/// 5.11 it bounds not only how long sent data may stay unacknowledged but also how long a
/// peer may keep its receive window at zero: a live client that stops reading (a suspended
/// `kubectl logs -f`, a paused watch) would be cut after that time, and so would a backend
/// too busy to read. A stalled reader costs the balancer only socket buffers and at most one
/// pipe or buffer within the forwarding memory cap, so it is left to its own timeouts. The
/// price: a peer that vanishes while data to it is unacknowledged is noticed only when the
/// kernel gives up retransmitting (`net.ipv4.tcp_retries2`, about 15 minutes by default), or,
/// for a backend, when its health check marks it down and its sessions are closed.
fn apply_liveness(socket: &SockRef<'_>) -> io::Result<()> {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket.set_tcp_keepalive(&keepalive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind_addr(text: &str, addr: &str, dual_stack: bool) -> BindAddr {
        BindAddr {
            text: text.into(),
            addr: addr.parse().unwrap(),
            dual_stack,
        }
    }

    #[tokio::test]
    async fn dual_stack_listener_accepts_v4_and_v6() {
        let listener =
            bind_listener(&bind_addr(":0", "0.0.0.0:0", true), Sharing::Exclusive).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        for client in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
            let Ok(addr) = client.parse::<SocketAddr>() else {
                continue;
            };
            if addr.is_ipv6() && !listener.local_addr().unwrap().is_ipv6() {
                continue; // no IPv6 on this host: the IPv4 fallback was used
            }
            let client = connect(addr).await.unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            // Inherited from the listener: no setsockopt per accepted connection.
            let accepted = SockRef::from(&stream);
            assert!(stream.nodelay().unwrap());
            assert!(accepted.keepalive().unwrap());
            assert_eq!(accepted.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            // A stalled reader is not cut (see apply_liveness), on either side.
            assert_eq!(accepted.tcp_user_timeout().unwrap(), None);
            let connected = SockRef::from(&client);
            assert!(connected.keepalive().unwrap());
            assert_eq!(connected.tcp_user_timeout().unwrap(), None);
        }
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error_and_an_accepted_one_a_stream() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap();
        let stream = connect(open).await.unwrap();
        assert_eq!(stream.peer_addr().unwrap(), open);
        drop(listener); // nothing listens on the port any more
        let error = connect(open).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn an_address_held_by_another_program_is_an_error() {
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = other.local_addr().unwrap();
        let error = bind_listener(
            &bind_addr("", &taken.to_string(), false),
            Sharing::Exclusive,
        )
        .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn local_shortages_are_told_from_the_peers_faults() {
        let shortage = |errno| local_shortage(&io::Error::from_raw_os_error(errno));
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(shortage(errno), Some(LocalShortage::Resources), "{errno}");
        }
        assert_eq!(shortage(libc::EADDRNOTAVAIL), Some(LocalShortage::Address));
        let remote = [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
        ];
        for errno in remote {
            assert_eq!(shortage(errno), None, "{errno}");
        }
        let timeout = io::Error::new(io::ErrorKind::TimedOut, "no answer within 5s");
        assert_eq!(local_shortage(&timeout), None);
    }
}
