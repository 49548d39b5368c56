//! Node drain: the whole balancer stops taking connections and lets its sessions finish, so
//! a VRRP peer (keepalived) can take the virtual address over without cutting a session.
//!
//! Draining closes every listener, as [`Supervisor::shutdown`] does, but keeps the process,
//! its health checks and its sessions. The node reports itself unfit ([`Supervisor::fitness`],
//! `GET /healthz`) only once its sessions have ended or the deadline closed them: until then
//! the virtual address, and with it every established session's packets, stays here.
//! Undraining binds the listeners again from the running config. A reload while drained
//! changes the config but binds nothing.
//!
//! The state is one mutex-guarded value, touched only by the API and the deadline task; the
//! data path never reads it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{StartError, Supervisor, prepare_listeners};
use crate::backend::{Admin, Health};
use crate::net::Sharing;
use crate::stats::SessionEnd;

/// Whether the node is draining, kept by the supervisor.
#[derive(Debug, Default)]
pub(crate) struct DrainState {
    current: Mutex<Option<Drain>>,
}

#[derive(Debug)]
struct Drain {
    deadline: Instant,
    /// Cancelled by an undrain, so the deadline task does not close later sessions.
    cancel: CancellationToken,
}

impl DrainState {
    fn lock(&self) -> MutexGuard<'_, Option<Drain>> {
        // Plain data; a panic elsewhere cannot leave it half-written.
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the listeners are (to be) closed.
    pub(crate) fn is_active(&self) -> bool {
        self.lock().is_some()
    }
}

/// The node's drain state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeDrain {
    /// Listening.
    Serving,
    /// Not listening; `sessions` are still open and `left` remains before they are closed.
    Draining { sessions: usize, left: Duration },
    /// Not listening and no session left.
    Drained,
}

/// Whether this node should hold the virtual address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fitness {
    Fit,
    /// The node has drained.
    Drained,
    /// A server has no backend that is up and enabled.
    NoBackend {
        server: String,
    },
}

impl Supervisor {
    /// Stops taking connections on every listener and lets the open sessions go on for up to
    /// `deadline`; at the deadline the rest are closed (counted as `shutdown`). Draining a
    /// drained node only moves the deadline.
    pub async fn drain(&self, deadline: Duration) -> NodeDrain {
        let cancel = CancellationToken::new();
        let previous = self.drain.lock().replace(Drain {
            deadline: Instant::now() + deadline,
            cancel: cancel.clone(),
        });
        if let Some(previous) = previous {
            previous.cancel.cancel();
        }
        let listeners = std::mem::take(&mut *self.lock_listeners());
        for listener in listeners.into_values() {
            listener.retire(Arc::clone(&self.inherited)).await;
        }
        info!(
            sessions = self.open_sessions(),
            ?deadline,
            "node draining: listeners closed"
        );
        let snapshot = Arc::clone(&self.shared.snapshot);
        let sessions = self.shared.sessions.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(deadline) => {}
            }
            let open = sessions.len();
            if open > 0 {
                warn!(
                    sessions = open,
                    "drain deadline over; closing the remaining sessions"
                );
            }
            for server in snapshot.load().servers() {
                for backend in server.pool.backends() {
                    backend.state.close_sessions(SessionEnd::Shutdown);
                }
            }
        });
        self.drain_state()
    }

    /// Binds the listeners of the running config again and takes connections.
    ///
    /// # Errors
    /// A listener could not be bound; the node stays drained (and can be asked again).
    pub fn undrain(&self) -> Result<NodeDrain, StartError> {
        let mut drain = self.drain.lock();
        let Some(current) = drain.as_ref() else {
            return Ok(NodeDrain::Serving);
        };
        let snapshot = self.snapshot();
        // The drained listeners may still be closing: share the port with them.
        let wanted = snapshot
            .servers()
            .map(|server| (&server.config, Sharing::WithOwnListener));
        let prepared = {
            let mut inherited = self
                .inherited
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            prepare_listeners(wanted, &mut inherited)?
        };
        current.cancel.cancel();
        *drain = None;
        drop(drain);
        for listener in prepared {
            self.spawn_listener(listener);
        }
        info!("node undrained: listening again");
        Ok(NodeDrain::Serving)
    }

    /// Serving, draining or drained.
    pub fn drain_state(&self) -> NodeDrain {
        let Some(deadline) = self.drain.lock().as_ref().map(|drain| drain.deadline) else {
            return NodeDrain::Serving;
        };
        let sessions = self.open_sessions();
        let left = deadline.saturating_duration_since(Instant::now());
        if sessions == 0 {
            NodeDrain::Drained
        } else {
            NodeDrain::Draining { sessions, left }
        }
    }

    /// Whether this node can serve every server: not drained, and each server has a backend
    /// that is up and enabled. A draining node with sessions left is still fit, so that a
    /// VRRP peer waits for them before taking the address.
    pub fn fitness(&self) -> Fitness {
        if self.drain_state() == NodeDrain::Drained {
            return Fitness::Drained;
        }
        let snapshot = self.snapshot();
        for server in snapshot.servers() {
            let usable = server.pool.backends().iter().any(|backend| {
                backend.state.health() == Health::Up && backend.state.admin() == Admin::Enabled
            });
            if !usable {
                return Fitness::NoBackend {
                    server: server.config.name.clone(),
                };
            }
        }
        Fitness::Fit
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::Config;
    use crate::systemd::InheritedSockets;

    async fn echo_backend() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    fn config(backend: SocketAddr) -> Config {
        config_on("127.0.0.1:0", backend)
    }

    fn config_on(bind: &str, backend: SocketAddr) -> Config {
        let text = format!(
            "[servers.k3s]\nbind = \"{bind}\"\n\
             [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"{backend}\"]\n"
        );
        crate::config::load_str("test.toml", &text, &Default::default())
            .unwrap()
            .config
    }

    async fn echo(stream: &mut TcpStream) -> std::io::Result<()> {
        stream.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
            .await
            .map_err(|_| std::io::Error::other("no echo within 10 s"))??;
        Ok(())
    }

    /// A drained node refuses new connections, keeps its sessions and stays fit until they
    /// end; undrained, it listens again.
    #[tokio::test]
    async fn drain_keeps_sessions_and_refuses_new_connections() {
        let supervisor = Supervisor::start(config(echo_backend().await))
            .await
            .unwrap();
        let addr = supervisor.local_addr("k3s").unwrap();
        let mut session = TcpStream::connect(addr).await.unwrap();
        echo(&mut session).await.unwrap();
        assert_eq!(supervisor.fitness(), Fitness::Fit);

        let state = supervisor.drain(Duration::from_secs(60)).await;
        assert!(
            matches!(state, NodeDrain::Draining { sessions: 1, .. }),
            "{state:?}"
        );
        assert!(TcpStream::connect(addr).await.is_err(), "still listening");
        echo(&mut session).await.unwrap();
        assert_eq!(
            supervisor.fitness(),
            Fitness::Fit,
            "fit while sessions last"
        );

        drop(session);
        for _ in 0..500 {
            if supervisor.drain_state() == NodeDrain::Drained {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(supervisor.fitness(), Fitness::Drained);

        assert_eq!(supervisor.undrain().unwrap(), NodeDrain::Serving);
        let addr = supervisor.local_addr("k3s").unwrap();
        let mut again = TcpStream::connect(addr).await.unwrap();
        echo(&mut again).await.unwrap();
        assert_eq!(supervisor.fitness(), Fitness::Fit);
    }

    /// A listening socket as systemd binds it for betwixt.socket (a fixed port, SO_REUSEPORT),
    /// passed to betwixt, and the copy systemd keeps.
    fn passed_socket() -> (SocketAddr, InheritedSockets, socket2::Socket) {
        use socket2::{Domain, Socket, Type};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket.bind(&addr.into()).unwrap();
        socket.listen(128).unwrap();
        socket.set_nonblocking(true).unwrap();
        let systemds_copy = socket.try_clone().unwrap();
        let mut inherited = InheritedSockets::default();
        inherited.give_back(addr, socket.into());
        (addr, inherited, systemds_copy)
    }

    /// A supervisor serving k3s (an echo backend) on a [`passed_socket`], and systemd's copy.
    async fn serving_a_passed_socket() -> (SocketAddr, SocketAddr, Supervisor, socket2::Socket) {
        let (addr, inherited, systemds_copy) = passed_socket();
        let backend = echo_backend().await;
        let supervisor =
            Supervisor::start_with_sockets(config_on(&addr.to_string(), backend), inherited)
                .await
                .unwrap();
        assert_eq!(supervisor.local_addr("k3s"), Some(addr));
        (addr, backend, supervisor, systemds_copy)
    }

    /// Connects 32 clients one after another: each must get its echo, none may land on a
    /// socket nobody accepts from.
    async fn every_client_is_served(addr: SocketAddr, when: &str) {
        for _ in 0..32 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            echo(&mut client)
                .await
                .unwrap_or_else(|error| panic!("a client {when} is not served: {error}"));
        }
    }

    /// With socket activation systemd keeps its own copy of the listening socket. A drain must
    /// stop that socket listening, so clients are refused rather than queued where nobody
    /// accepts, and an undrain must listen on it again rather than bind a second socket
    /// beside it, which would leave part of the new clients on the first.
    #[tokio::test]
    async fn a_socket_passed_by_systemd_is_paused_by_a_drain_and_listens_again() {
        let (addr, _, supervisor, _systemds_copy) = serving_a_passed_socket().await;
        let mut session = TcpStream::connect(addr).await.unwrap();
        echo(&mut session).await.unwrap();

        supervisor.drain(Duration::from_secs(60)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a drained node's passed socket still takes clients"
        );
        echo(&mut session).await.unwrap();

        assert_eq!(supervisor.undrain().unwrap(), NodeDrain::Serving);
        every_client_is_served(addr, "after the undrain").await;
    }

    /// A reload that moves the server of a socket systemd passed pauses the socket, so its
    /// clients are refused rather than queued; one that moves the server back listens on it
    /// again.
    #[tokio::test]
    async fn a_reload_pauses_the_socket_of_a_moved_server_and_takes_it_back() {
        let (addr, backend, supervisor, _systemds_copy) = serving_a_passed_socket().await;

        // k3s moves to another port: its passed socket is paused once its queue is served.
        supervisor
            .reload(config_on("127.0.0.1:0", backend))
            .await
            .unwrap();
        let mut refused = false;
        for _ in 0..100 {
            // Refused, not queued: a connect that hangs (a full queue) is not refused.
            let connect = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr));
            refused = matches!(connect.await, Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionRefused);
            if refused {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            refused,
            "the moved server's passed socket still takes clients"
        );

        supervisor
            .reload(config_on(&addr.to_string(), backend))
            .await
            .unwrap();
        assert_eq!(supervisor.local_addr("k3s"), Some(addr));
        every_client_is_served(addr, "after the reload").await;
    }

    /// At the deadline the sessions still open are closed.
    #[tokio::test]
    async fn drain_deadline_closes_the_rest() {
        let supervisor = Supervisor::start(config(echo_backend().await))
            .await
            .unwrap();
        let addr = supervisor.local_addr("k3s").unwrap();
        let mut session = TcpStream::connect(addr).await.unwrap();
        echo(&mut session).await.unwrap();
        supervisor.drain(Duration::from_millis(200)).await;
        let mut rest = Vec::new();
        // A reset or an EOF: either way the session ended.
        let _ended = tokio::time::timeout(Duration::from_secs(10), session.read_to_end(&mut rest))
            .await
            .expect("closed at the deadline");
        for _ in 0..500 {
            if supervisor.drain_state() == NodeDrain::Drained {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(supervisor.drain_state(), NodeDrain::Drained);
    }

    /// A node whose only backend is disabled is unfit.
    #[tokio::test]
    async fn no_usable_backend_is_unfit() {
        let backend = echo_backend().await;
        let supervisor = Supervisor::start(config(backend)).await.unwrap();
        supervisor
            .set_backend_admin("k3s", &backend.to_string(), Admin::Disabled)
            .unwrap();
        assert_eq!(
            supervisor.fitness(),
            Fitness::NoBackend {
                server: "k3s".into()
            }
        );
    }
}
