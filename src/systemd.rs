//! The systemd side of the daemon: readiness, reload and stop notifications, the watchdog, and
//! listening sockets passed by socket activation.
//!
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`, no `LISTEN_FDS`), so the same
//! binary runs by hand, under systemd `Type=notify`/`notify-reload`, or in tests that play the
//! service manager.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::BindAddr;

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
#[derive(Debug, Default)]
pub struct InheritedSockets {
    listeners: HashMap<SocketAddr, std::net::TcpListener>,
}

impl InheritedSockets {
    /// Takes ownership of the sockets systemd passed to this process, if any. Sockets that are
    /// not listening TCP sockets are closed with a warning.
    pub fn from_environment() -> Self {
        let fds = match sd_notify::listen_fds() {
            Ok(fds) => fds,
            Err(error) => {
                warn!(%error, "ignoring malformed LISTEN_FDS/LISTEN_PID");
                return Self::default();
            }
        };
        let mut listeners = HashMap::new();
        for fd in fds {
            let listener = inherited::take_listener(fd);
            match listener
                .set_nonblocking(true)
                .and_then(|()| crate::net::prepare_listener(&listener))
                .and_then(|()| listener.local_addr())
            {
                Ok(addr) => {
                    info!(address = %addr, fd, "using a listening socket passed by systemd");
                    listeners.insert(addr, listener);
                }
                Err(error) => {
                    warn!(fd, %error, "closing a passed socket that is not a TCP listener")
                }
            }
        }
        Self { listeners }
    }

    /// Removes and returns the passed socket for `bind`: the same address, or for a wildcard
    /// bind the IPv6 or IPv4 wildcard socket on that port.
    pub fn take(&mut self, bind: &BindAddr) -> Option<std::net::TcpListener> {
        if let Some(listener) = self.listeners.remove(&bind.addr) {
            return Some(listener);
        }
        if !bind.dual_stack {
            return None;
        }
        let port = bind.addr.port();
        let v6_any = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
        self.listeners.remove(&v6_any)
    }

    /// Logs the passed sockets no server asked for.
    pub fn report_unused(&self) {
        for addr in self.listeners.keys() {
            warn!(address = %addr, "a socket passed by systemd matches no server; kept for a reload that adds one");
        }
    }
}

/// The one place outside forwarding that needs `unsafe`: adopting a file descriptor.
#[allow(unsafe_code)]
mod inherited {
    use std::os::fd::{FromRawFd, RawFd};

    /// Takes ownership of descriptor `fd` as a TCP listener.
    pub(super) fn take_listener(fd: RawFd) -> std::net::TcpListener {
        // SAFETY: `fd` comes from sd_notify::listen_fds(), which checked that LISTEN_PID is this
        // process and returns each descriptor systemd passed exactly once; nothing else in the
        // process owns or closes them, so the listener becomes their only owner.
        unsafe { std::net::TcpListener::from_raw_fd(fd) }
    }
}
