//! Owns the listeners and the current snapshot: starts them, and stops them gracefully.
//!
//! The supervisor is driven from one task (the daemon's main loop, or a test): it binds every
//! listener before starting any, publishes the snapshot the accept loops read, keeps the
//! health-check and discovery tasks in step with it, applies the backend lists discovery
//! sends (`discovered`), runs the once-a-second statistics task, and on shutdown stops
//! accepting, waits for sessions to end within a grace period, then closes the rest.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::backend::{Admin, Backend};
use crate::config::{BindAddr, Config, ServerConfig};
use crate::discovery;
use crate::events::Events;
use crate::health::monitor::Monitor;
use crate::listener::{self, Shared};
use crate::net::{self, Sharing};
use crate::snapshot::Snapshot;
use crate::stats::{ProcessStats, SessionEnd};
use crate::systemd::InheritedSockets;

mod discovered;
mod drain;
pub use drain::{Fitness, NodeDrain};

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The message ends with the system error, so it is not also a `source()` (printers that
    /// walk the chain would show it twice).
    #[error("server {server:?}: cannot listen on {bind}: {error}")]
    Bind {
        server: String,
        bind: String,
        error: io::Error,
    },
    /// A server's certificate, key or CA file cannot be used.
    #[error("{0}")]
    Tls(crate::snapshot::ServerTlsError),
    #[error(
        "server {server:?}: servers.{server}.udp.transparent = true needs the CAP_NET_ADMIN \
         capability (or CAP_NET_RAW): {error}"
    )]
    Transparent { server: String, error: io::Error },
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub servers_added: Vec<String>,
    pub servers_removed: Vec<String>,
    /// Servers whose `bind` changed: a new listener replaced the old one.
    pub servers_rebound: Vec<String>,
    /// `server/host:port` of each backend that joined a server that stays.
    pub backends_added: Vec<String>,
    /// `server/host:port` of each backend that left a server that stays.
    pub backends_removed: Vec<String>,
}

impl ReloadSummary {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl std::fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("no listener or backend changed");
        }
        let parts = [
            ("servers added", &self.servers_added),
            ("servers removed", &self.servers_removed),
            ("servers rebound", &self.servers_rebound),
            ("backends added", &self.backends_added),
            ("backends removed", &self.backends_removed),
        ];
        let mut first = true;
        for (label, names) in parts.iter().filter(|(_, names)| !names.is_empty()) {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{label}: {}", names.join(", "))?;
        }
        Ok(())
    }
}

/// A backend named by an operator that is not in the running config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnknownBackend {
    #[error("no server {0:?}")]
    Server(String),
    #[error("server {server:?} has no backend {target:?}")]
    Backend { server: String, target: String },
}

/// How a graceful shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSummary {
    /// Sessions still open when the grace period ran out, closed by force.
    pub closed_by_force: usize,
}

/// The running balancer: listeners, the published snapshot, the session tasks.
#[derive(Debug)]
pub struct Supervisor {
    shared: Shared,
    listeners: Mutex<BTreeMap<String, RunningListener>>,
    /// Serialises reloads (signals and API changes) and discovered lists, so two never
    /// interleave.
    reloading: Arc<tokio::sync::Mutex<()>>,
    /// Sockets from systemd not used now (paused); a reload adding their server, or an
    /// undrain, takes them.
    inherited: Arc<Mutex<InheritedSockets>>,
    health: Arc<Monitor>,
    /// The tasks of servers whose backends are discovered.
    discovery: Arc<discovery::Runner>,
    /// Recent health transitions, recorded by the checks, shown by the status page.
    events: Arc<Events>,
    stats: ProcessStats,
    background: CancellationToken,
    drain: drain::DrainState,
    /// Certificates for `acme_hosts`, kept in step with the config.
    acme: crate::acme::Acme,
}

/// A listener bound and registered with the runtime but not accepting yet: everything about
/// it that can fail is done, so starting it cannot.
#[derive(Debug)]
struct PreparedListener {
    name: String,
    bind: BindAddr,
    local_addr: SocketAddr,
    socket: ListeningSocket,
    /// Passed by systemd: handed back if the start or reload it was for is refused.
    inherited: bool,
}

/// A server's socket, registered with the runtime.
#[derive(Debug)]
enum ListeningSocket {
    Tcp(TcpListener),
    Udp(tokio::net::UdpSocket),
}

#[derive(Debug)]
struct RunningListener {
    bind: BindAddr,
    udp: bool,
    local_addr: SocketAddr,
    /// Passed by systemd: retiring it (a drain, a reload) pauses it instead of closing it.
    inherited: bool,
    stop: CancellationToken,
    /// Ends with the TCP socket, once its queue is served.
    task: JoinHandle<Option<std::net::TcpListener>>,
}

impl RunningListener {
    /// Stops accepting and waits until the queued connections are served. A socket systemd
    /// passed is then paused and kept: closing betwixt's copy would leave systemd's
    /// listening, with nobody to accept its clients.
    async fn retire(self, inherited: Arc<Mutex<InheritedSockets>>) {
        self.stop.cancel();
        match self.task.await {
            Ok(Some(socket)) if self.inherited => inherited
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pause(self.local_addr, socket),
            Ok(_) => {}
            Err(error) => warn!(address = %self.local_addr, %error, "listener task failed"),
        }
    }
}

impl Supervisor {
    /// Binds one listener per server and starts accepting. Nothing is started unless every
    /// listener could be bound.
    ///
    /// # Errors
    /// The first listener that could not be bound, naming its server and address.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        Self::start_with_sockets(config, InheritedSockets::default()).await
    }

    /// Like [`start`](Self::start), using the sockets systemd passed where a server's bind
    /// matches one.
    ///
    /// # Errors
    /// The first listener that could not be bound, naming its server and address.
    pub async fn start_with_sockets(
        config: Config,
        mut inherited: InheritedSockets,
    ) -> Result<Self, StartError> {
        let close_sessions = CancellationToken::new();
        let snapshot = Snapshot::new(config, None, &close_sessions).map_err(StartError::Tls)?;
        let wanted = snapshot
            .servers()
            .map(|server| (&server.config, Sharing::Exclusive));
        let prepared = prepare_listeners(wanted, &mut inherited)?;
        inherited.pause_unused();
        let events = Arc::clone(&snapshot.events);
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let (discovery, discovered_rx) = discovery::Runner::new();
        let supervisor = Self {
            shared: Shared {
                snapshot: Arc::clone(&snapshot),
                sessions: TaskTracker::new(),
                close_sessions,
            },
            listeners: Mutex::new(BTreeMap::new()),
            reloading: Arc::new(tokio::sync::Mutex::new(())),
            inherited: Arc::new(Mutex::new(inherited)),
            health: Arc::new(Monitor::new(snapshot, Arc::clone(&events))),
            discovery: Arc::new(discovery),
            events,
            stats: ProcessStats::default(),
            background: CancellationToken::new(),
            drain: drain::DrainState::default(),
            acme: crate::acme::Acme::default(),
        };
        supervisor.health.reconcile();
        supervisor.discovery.reconcile(&supervisor.snapshot());
        let applier = discovered::Applier {
            shared: supervisor.shared.clone(),
            health: Arc::clone(&supervisor.health),
            discovery: Arc::clone(&supervisor.discovery),
            reloading: Arc::clone(&supervisor.reloading),
        };
        tokio::spawn(applier.run(discovered_rx, supervisor.background.clone()));
        supervisor.reconcile_acme();
        for listener in prepared {
            supervisor.spawn_listener(listener);
        }
        tokio::spawn(sample_rates(
            Arc::clone(&supervisor.shared.snapshot),
            supervisor.background.clone(),
        ));
        tokio::spawn(crate::rebalance::run(
            Arc::clone(&supervisor.shared.snapshot),
            supervisor.background.clone(),
        ));
        Ok(supervisor)
    }

    /// Starts accepting on a prepared listener; one it replaces (same server, old bind) stops.
    fn spawn_listener(&self, prepared: PreparedListener) {
        let PreparedListener {
            name,
            bind,
            local_addr,
            socket,
            inherited,
        } = prepared;
        let stop = CancellationToken::new();
        let (shared, server) = (self.shared.clone(), name.as_str().into());
        let (task, udp) = match socket {
            ListeningSocket::Tcp(listener) => (
                tokio::spawn(listener::accept_loop(
                    server,
                    listener,
                    shared,
                    stop.clone(),
                )),
                false,
            ),
            ListeningSocket::Udp(socket) => {
                let receiving = listener::udp::receive_loop(server, socket, shared, stop.clone());
                (
                    tokio::spawn(async move {
                        receiving.await;
                        None
                    }),
                    true,
                )
            }
        };
        info!(server = %name, bind = %bind.text, address = %local_addr, udp, "listening");
        let running = RunningListener {
            bind,
            udp,
            local_addr,
            inherited,
            stop,
            task,
        };
        if let Some(replaced) = self.lock_listeners().insert(name, running) {
            self.retire(replaced);
        }
    }

    /// Stops a listener a reload replaced or removed, in the background (see
    /// [`RunningListener::retire`]).
    fn retire(&self, listener: RunningListener) {
        let inherited = Arc::clone(&self.inherited);
        tokio::spawn(listener.retire(inherited));
    }

    /// Applies a new config without dropping a connection.
    ///
    /// Listeners for new servers and changed binds are bound and registered with the runtime
    /// first; if any of that fails nothing changes (sockets passed by systemd are kept for a
    /// later attempt). Only then, with nothing left that can fail, the new snapshot is
    /// published in one store (new connections use it at once), new listeners start, and
    /// listeners of removed servers or old binds stop after accepting what is already queued. Established sessions keep the snapshot they started
    /// with: sessions on removed backends drain, unless the server sets
    /// `close_sessions_on_backend_removal`. Servers and backends that stay keep their health
    /// and counters.
    ///
    /// # Errors
    /// A new listener could not be set up; the running config is untouched.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, StartError> {
        self.update(|_| Ok(config)).await
    }

    /// Like [`reload`](Self::reload), with the next config derived from the running one: `edit`
    /// sees the config in force and returns the next one, or refuses. No other reload can run
    /// between the two, so a change made through the REST API never undoes a concurrent SIGHUP
    /// reload (or the other way round). Either outcome is counted as a reload.
    ///
    /// # Errors
    /// What `edit` returned, or a new listener could not be set up; the running config is
    /// untouched.
    pub async fn update<E: From<StartError>>(
        &self,
        edit: impl FnOnce(&Config) -> Result<Config, E>,
    ) -> Result<ReloadSummary, E> {
        let _one_at_a_time = self.reloading.lock().await;
        let current = self.snapshot();
        let result = edit(&current.config).and_then(|config| self.apply(config).map_err(E::from));
        match &result {
            Ok(_) => {
                self.stats.reloads_applied.fetch_add(1, Ordering::Relaxed);
                self.stats.config_applied_now();
            }
            Err(_) => self.record_refused_reload(),
        }
        result
    }

    /// Counts a reload refused before it reached the supervisor (the file did not load).
    pub fn record_refused_reload(&self) {
        self.stats.reloads_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Reload counters and start time.
    pub fn process_stats(&self) -> &ProcessStats {
        &self.stats
    }

    /// The recent backend health transitions.
    pub fn events(&self) -> &Events {
        &self.events
    }

    fn apply(&self, mut config: Config) -> Result<ReloadSummary, StartError> {
        let current = self.shared.snapshot.load_full();
        discovered::keep_discovered_lists(&mut config, &current);
        let next = Snapshot::new(config, Some(&current), &self.shared.close_sessions)
            .map_err(StartError::Tls)?;
        let running: BTreeMap<String, (BindAddr, bool)> = self
            .lock_listeners()
            .iter()
            .map(|(name, listener)| (name.clone(), (listener.bind.clone(), listener.udp)))
            .collect();

        let mut summary = ReloadSummary::default();
        let mut wanted = Vec::new();
        for server in next.servers() {
            let (name, new_bind) = (&server.config.name, &server.config.bind);
            let udp = server.config.udp.is_some();
            match running.get(name) {
                Some((old_bind, old_udp)) if old_bind == new_bind && *old_udp == udp => continue,
                Some(_) => summary.servers_rebound.push(name.clone()),
                None => summary.servers_added.push(name.clone()),
            }
            // Only a port this process already listens on is shared (its listener stops once the
            // new one runs); anyone else's listener there is an error.
            let ours = running
                .values()
                .any(|(bind, _)| bind.conflicts_with(new_bind));
            let sharing = if ours {
                Sharing::WithOwnListener
            } else {
                Sharing::Exclusive
            };
            wanted.push((&server.config, sharing));
        }
        // A drained node binds nothing; undraining binds what the config then says.
        let prepared = if self.drain.is_active() {
            Vec::new()
        } else {
            let mut inherited = self
                .inherited
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            prepare_listeners(wanted, &mut inherited)?
        };
        summary.servers_removed = running
            .keys()
            .filter(|name| next.server(name).is_none())
            .cloned()
            .collect();
        compare_backends(&current, &next, &mut summary);

        // Nothing from here on can fail: the new config is published whole or not at all.
        self.shared.snapshot.store(Arc::new(next));
        self.health.reconcile();
        self.discovery.reconcile(&self.snapshot());
        self.reconcile_acme();
        for listener in prepared {
            self.spawn_listener(listener);
        }
        let removed: Vec<_> = {
            let mut listeners = self.lock_listeners();
            summary
                .servers_removed
                .iter()
                .filter_map(|name| listeners.remove(name))
                .collect()
        };
        for listener in removed {
            self.retire(listener);
        }
        close_removed_backends(&current, &self.snapshot());
        Ok(summary)
    }

    fn reconcile_acme(&self) {
        let snapshot = self.snapshot();
        self.acme.reconcile(&snapshot.config, &snapshot.acme);
    }

    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, RunningListener>> {
        // The map holds plain data; a panic elsewhere cannot leave it half-updated.
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the admin state of backend `target` (`host:port`) of `server`: draining or
    /// disabled backends take no new sessions, and disabling closes the established ones.
    ///
    /// The state is stored before the backend's closer is swapped: a session connecting now
    /// either holds the old closer (and is closed) or sees the new state (and skips the
    /// backend), so no session escapes `disable`.
    ///
    /// # Errors
    /// The server or the backend is not in the running config.
    pub fn set_backend_admin(
        &self,
        server: &str,
        target: &str,
        admin: Admin,
    ) -> Result<Arc<Backend>, UnknownBackend> {
        let snapshot = self.snapshot();
        let found = snapshot
            .server(server)
            .ok_or_else(|| UnknownBackend::Server(server.to_owned()))?;
        let backend = found
            .pool
            .find(target)
            .ok_or_else(|| UnknownBackend::Backend {
                server: server.to_owned(),
                target: target.to_owned(),
            })?;
        let state = &backend.state;
        let before = state.admin();
        state.set_admin(admin);
        if admin == Admin::Disabled {
            state.close_sessions(SessionEnd::BackendDisabled);
        }
        info!(
            server,
            backend = %backend.target,
            from = %before,
            to = %admin,
            sessions = state.stats.active.load(Ordering::Relaxed),
            "backend admin state set"
        );
        Ok(Arc::clone(backend))
    }

    /// The address server `name` listens on (useful with port 0).
    pub fn local_addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock_listeners()
            .get(name)
            .map(|listener| listener.local_addr)
    }

    /// The snapshot new connections use now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Sessions open now, across all servers and generations.
    pub fn open_sessions(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Stops accepting, lets sessions finish for up to `grace`, then closes the rest.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownSummary {
        // Closed, not retired: a socket systemd passed goes on listening in systemd's copy,
        // and its clients wait there for the next betwixt.
        let listeners = std::mem::take(&mut *self.lock_listeners());
        for (name, listener) in listeners {
            listener.stop.cancel();
            if let Err(error) = listener.task.await {
                warn!(server = %name, %error, "listener task failed");
            }
        }
        self.background.cancel();
        self.health.stop_all();
        self.discovery.stop_all();
        self.acme.stop();
        self.shared.sessions.close();
        let open = self.shared.sessions.len();
        if open > 0 {
            info!(sessions = open, ?grace, "waiting for sessions to finish");
        }
        let mut closed_by_force = 0;
        if tokio::time::timeout(grace, self.shared.sessions.wait())
            .await
            .is_err()
        {
            closed_by_force = self.shared.sessions.len();
            warn!(
                sessions = closed_by_force,
                "shutdown grace period over; closing the remaining sessions"
            );
            self.shared.close_sessions.cancel();
            self.shared.sessions.wait().await;
        }
        ShutdownSummary { closed_by_force }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.background.cancel();
        self.discovery.stop_all();
        self.acme.stop();
        self.shared.close_sessions.cancel();
        for listener in self.lock_listeners().values() {
            listener.stop.cancel();
        }
    }
}

/// Fills in the backends that joined or left servers present in both snapshots.
fn compare_backends(current: &Snapshot, next: &Snapshot, summary: &mut ReloadSummary) {
    for server in next.servers() {
        let Some(old) = current.server(&server.config.name) else {
            continue;
        };
        let name = &server.config.name;
        for backend in server.pool.backends() {
            if old.pool.find(&backend.target).is_none() {
                summary
                    .backends_added
                    .push(format!("{name}/{}", backend.target));
            }
        }
        for backend in old.pool.backends() {
            if server.pool.find(&backend.target).is_none() {
                summary
                    .backends_removed
                    .push(format!("{name}/{}", backend.target));
            }
        }
    }
}

/// Closes the sessions of backends that left their server, where the server asks for it
/// (`close_sessions_on_backend_removal`); otherwise they drain.
fn close_removed_backends(current: &Snapshot, next: &Snapshot) {
    for old in current.servers() {
        let new = next.server(&old.config.name);
        let close = new.map_or(old.config.close_sessions_on_backend_removal, |server| {
            server.config.close_sessions_on_backend_removal
        });
        if !close {
            continue;
        }
        for backend in old.pool.backends() {
            let stays = new.is_some_and(|server| server.pool.find(&backend.target).is_some());
            if !stays {
                info!(server = %old.config.name, backend = %backend.target, "closing the sessions of a removed backend");
                backend.state.close_sessions(SessionEnd::BackendRemoved);
            }
        }
    }
}

/// Binds and registers the listening socket of every server in `wanted`, or none: on a failure
/// the sockets passed by systemd that were taken are handed back.
fn prepare_listeners<'a>(
    wanted: impl IntoIterator<Item = (&'a ServerConfig, Sharing)>,
    inherited: &mut InheritedSockets,
) -> Result<Vec<PreparedListener>, StartError> {
    let mut prepared = Vec::new();
    for (server, sharing) in wanted {
        match prepare_listener(server, sharing, inherited) {
            Ok(listener) => prepared.push(listener),
            Err(error) => {
                for listener in prepared.into_iter().filter(|listener| listener.inherited) {
                    hand_back(listener, inherited);
                }
                return Err(error);
            }
        }
    }
    Ok(prepared)
}

/// A server's socket: for TCP a socket systemd passed for its bind if there is one, else a
/// freshly bound one; for UDP always a fresh one, after checking that transparent mode (if
/// asked for) has the capability it needs.
fn prepare_listener(
    server: &ServerConfig,
    sharing: Sharing,
    inherited: &mut InheritedSockets,
) -> Result<PreparedListener, StartError> {
    let (name, bind) = (server.name.as_str(), &server.bind);
    let error = |error| StartError::Bind {
        server: name.to_owned(),
        bind: bind.text.clone(),
        error,
    };
    let (local_addr, socket, from_systemd) = match server.udp {
        None => {
            let (local_addr, listener, from_systemd) = match inherited.take(bind).map_err(error)? {
                Some((local_addr, listener)) => (local_addr, listener, true),
                None => {
                    let listener = net::bind_listener(bind, sharing).map_err(error)?;
                    (listener.local_addr().map_err(error)?, listener, false)
                }
            };
            let listener = register(name, listener).map_err(error)?;
            (local_addr, ListeningSocket::Tcp(listener), from_systemd)
        }
        Some(udp) => {
            if udp.transparent {
                net::check_transparent().map_err(|error| StartError::Transparent {
                    server: name.to_owned(),
                    error,
                })?;
            }
            let socket = net::bind_udp(bind).map_err(error)?;
            let local_addr = socket.local_addr().map_err(error)?;
            let socket = tokio::net::UdpSocket::from_std(socket).map_err(error)?;
            (local_addr, ListeningSocket::Udp(socket), false)
        }
    };
    Ok(PreparedListener {
        name: name.to_owned(),
        bind: bind.clone(),
        local_addr,
        socket,
        inherited: from_systemd,
    })
}

/// Returns a passed socket to the unused ones.
fn hand_back(prepared: PreparedListener, inherited: &mut InheritedSockets) {
    let ListeningSocket::Tcp(listener) = prepared.socket else {
        return;
    };
    match listener.into_std() {
        Ok(listener) => inherited.give_back(prepared.local_addr, listener),
        Err(error) => {
            warn!(server = %prepared.name, address = %prepared.local_addr, %error, "closing a socket passed by systemd")
        }
    }
}

/// Registers a bound listener with the runtime's reactor.
fn register(name: &str, listener: std::net::TcpListener) -> io::Result<TcpListener> {
    #[cfg(test)]
    tests::fail_registration_of(name)?;
    #[cfg(not(test))]
    let _ = name;
    TcpListener::from_std(listener)
}

/// Once a second, turns byte counters into the `rx_second`/`tx_second` rates of every server
/// and backend in the current snapshot.
async fn sample_rates(snapshot: Arc<ArcSwap<Snapshot>>, stop: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for server in snapshot.load().servers() {
            server.stats.traffic.sample_rates();
            for backend in server.pool.backends() {
                backend.state.stats.traffic.sample_rates();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    thread_local! {
        /// A server whose listener registration fails after it was bound (each test runs on
        /// its own thread).
        static FAIL_REGISTRATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
    }

    pub(super) fn fail_registration_of(name: &str) -> io::Result<()> {
        FAIL_REGISTRATION.with_borrow(|failing| match failing {
            Some(failing) if failing == name => Err(io::Error::other("injected set-up failure")),
            _ => Ok(()),
        })
    }

    /// A backend that writes `name` to each client and closes.
    async fn name_backend(name: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let _ = stream.write_all(name.as_bytes()).await;
            }
        });
        addr
    }

    async fn fetch_name(addr: SocketAddr) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut name = String::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_string(&mut name))
            .await
            .expect("the backend answers")
            .unwrap();
        name
    }

    /// A reload whose listener set-up fails after binding leaves the old config live and is
    /// counted as refused: nothing is published before every fallible step succeeded.
    #[tokio::test]
    async fn a_reload_failing_after_binding_keeps_the_old_config() {
        let (old, new) = (name_backend("old").await, name_backend("new").await);
        let supervisor = Supervisor::start(pool_config(&[old])).await.unwrap();
        let addr = supervisor.local_addr("k3s").unwrap();
        assert_eq!(fetch_name(addr).await, "old");

        let text = format!(
            "[servers.k3s]\nbind = \"127.0.0.1:0\"\n\
             [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [\"{new}\"]\n\
             [servers.extra]\nbind = \"127.0.0.1:0\"\n\
             [servers.extra.discovery]\nkind = \"static\"\nstatic_list = [\"{new}\"]\n"
        );
        let next = crate::config::load_str("next.toml", &text, &Default::default())
            .unwrap()
            .config;
        FAIL_REGISTRATION.with_borrow_mut(|failing| *failing = Some("extra".into()));
        let result = supervisor.reload(next).await;
        FAIL_REGISTRATION.with_borrow_mut(|failing| *failing = None);

        let error = result.expect_err("the set-up of extra fails");
        assert!(error.to_string().contains("\"extra\""), "{error}");
        let stats = supervisor.process_stats();
        assert_eq!(stats.reloads_refused.load(Ordering::Relaxed), 1);
        assert_eq!(stats.reloads_applied.load(Ordering::Relaxed), 0);
        let snapshot = supervisor.snapshot();
        assert!(
            snapshot.server("extra").is_none(),
            "the new config was published"
        );
        assert!(supervisor.local_addr("extra").is_none());
        let backends: Vec<_> = snapshot
            .server("k3s")
            .unwrap()
            .pool
            .backends()
            .iter()
            .map(|b| b.target.to_string())
            .collect();
        assert_eq!(backends, [old.to_string()]);
        for _ in 0..3 {
            assert_eq!(fetch_name(addr).await, "old");
        }
    }

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

    fn pool_config(backends: &[SocketAddr]) -> Config {
        let list: Vec<String> = backends.iter().map(|addr| format!("\"{addr}\"")).collect();
        let text = format!(
            "[servers.k3s]\nbind = \"127.0.0.1:0\"\nbalance = \"leastconn\"\n\
             [servers.k3s.discovery]\nkind = \"static\"\nstatic_list = [{}]\n",
            list.join(", ")
        );
        crate::config::load_str("test.toml", &text, &Default::default())
            .unwrap()
            .config
    }

    /// Waits up to 20 s for `done`.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        for _ in 0..2000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// Each session keeps the snapshot generation it started in; once they end, no old
    /// generation stays alive (no snapshot leak across reloads).
    #[tokio::test]
    async fn sessions_of_several_generations_survive_and_nothing_leaks() {
        let addrs = [
            echo_backend().await,
            echo_backend().await,
            echo_backend().await,
        ];
        let supervisor = Supervisor::start(pool_config(&addrs[..1])).await.unwrap();
        let addr = supervisor.local_addr("k3s").unwrap();
        let mut generations = Vec::new();
        let mut held = Vec::new();
        for count in 1..=3 {
            if count > 1 {
                supervisor
                    .reload(pool_config(&addrs[..count]))
                    .await
                    .unwrap();
            }
            generations.push(Arc::downgrade(supervisor.snapshot().server("k3s").unwrap()));
            // An echo proves the session is established in this generation.
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(b"hi").await.unwrap();
            let mut reply = [0u8; 2];
            stream.read_exact(&mut reply).await.unwrap();
            held.push(stream);
        }
        assert!(
            generations[0].upgrade().is_some(),
            "a session still uses generation 1"
        );
        drop(held);
        let snapshot = supervisor.snapshot();
        let server = snapshot.server("k3s").unwrap();
        eventually("sessions end", || {
            server.stats.active.load(Ordering::Relaxed) == 0
        })
        .await;
        eventually("old generations are freed", || {
            generations[..2].iter().all(|weak| weak.upgrade().is_none())
        })
        .await;
        let open: u64 = server
            .pool
            .backends()
            .iter()
            .map(|b| b.state.stats.active.load(Ordering::Relaxed))
            .sum();
        assert_eq!(open, 0);
    }
}
