//! Dynamic discovery: one task per server whose backends come from a command, a URL or DNS
//! rather than a static list.
//!
//! The supervisor owns a [`Runner`] and calls [`Runner::reconcile`] after each published
//! snapshot: a server whose `[discovery]` table is unchanged keeps its task, a changed one
//! gets a fresh task, a removed one loses its own. A task only fetches and reports: it sends
//! each list as an [`Update`] through a channel, and the supervisor publishes a snapshot in
//! which that server's backends are the new list (this module is below the supervisor and
//! never calls it). Each task writes the server's [`DiscoveryStats`]; nothing else is shared.
//!
//! A polled kind is a module with `async fn fetch(&Settings) -> Result<Vec<BackendSpec>, E>`
//! and one arm in [`fetch`]; the task applies `timeout`, `interval`, the 2 s retry after a
//! failure and `failpolicy` around it, as gobetween's discovery loop does. A watching kind
//! (one that is told of changes: kubernetes, and consul with an interval, by blocking queries)
//! sends its results through [`Task::follow`] instead.

pub(crate) mod client;
mod consul;
mod docker;
mod exec;
pub(crate) mod http;
mod json;
mod kubernetes;
mod lines;
mod plaintext;
#[cfg(test)]
pub(crate) mod responder;
mod srv;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{BackendSpec, DiscoveryConfig, DiscoveryKind, FailPolicy};
use crate::snapshot::Snapshot;
use crate::stats::{DiscoveryStats, ServerStats};

/// How long after a failed fetch the next one starts (gobetween's retry wait, every kind).
pub const RETRY_AFTER: Duration = Duration::from_secs(2);

/// What a watching source does after a failure, for the log line.
const WATCHING: &str = "waiting for the source to report again";

/// How often a fetch failing again for the same reason is logged.
const REPEAT_LOG_EVERY: Duration = Duration::from_secs(60);

/// Why a fetch failed: its `Display` is the one-line reason logged and reported.
pub type FetchError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A list for one server, from the task that [`Runner::is_current`] tells apart from a
/// replaced one.
#[derive(Debug)]
pub struct Update {
    pub server: String,
    pub task: u64,
    pub backends: Vec<BackendSpec>,
}

/// The discovery tasks of every server in the current snapshot that has a dynamic kind.
#[derive(Debug)]
pub struct Runner {
    tasks: Mutex<HashMap<String, RunningSource>>,
    updates_tx: mpsc::Sender<Update>,
    next_task: AtomicU64,
}

#[derive(Debug)]
struct RunningSource {
    config: DiscoveryConfig,
    udp: bool,
    stats: Arc<ServerStats>,
    task: u64,
    stop: CancellationToken,
}

impl Runner {
    /// A runner with no task, and the receiving end of the updates its tasks will send.
    pub fn new() -> (Self, mpsc::Receiver<Update>) {
        let (updates_tx, updates_rx) = mpsc::channel(64);
        let runner = Self {
            tasks: Mutex::new(HashMap::new()),
            updates_tx,
            next_task: AtomicU64::new(1),
        };
        (runner, updates_rx)
    }

    /// Starts, keeps or stops tasks to match `snapshot`. A task is kept while its server's
    /// discovery settings, protocol and counters (the server was not removed and added
    /// again) stay the same.
    pub fn reconcile(&self, snapshot: &Snapshot) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wanted = HashSet::new();
        for server in snapshot.servers() {
            let config = &server.config.discovery;
            if !config.is_dynamic() {
                continue;
            }
            let name = server.name();
            wanted.insert(name.to_owned());
            let udp = server.config.udp.is_some();
            if let Some(running) = tasks.get(name) {
                let same = running.config == *config
                    && running.udp == udp
                    && Arc::ptr_eq(&running.stats, &server.stats);
                if same {
                    continue;
                }
                running.stop.cancel();
            }
            let task = self.next_task.fetch_add(1, Ordering::Relaxed);
            let stop = CancellationToken::new();
            let source = Task {
                server: name.to_owned(),
                task,
                config: config.clone(),
                udp,
                stats: Arc::clone(&server.stats),
                updates_tx: self.updates_tx.clone(),
            };
            info!(
                server = name,
                kind = config.kind.name(),
                "discovery started"
            );
            tokio::spawn(source.run(stop.clone()));
            let running = RunningSource {
                config: config.clone(),
                udp,
                stats: Arc::clone(&server.stats),
                task,
                stop,
            };
            tasks.insert(name.to_owned(), running);
        }
        tasks.retain(|name, running| {
            let keep = wanted.contains(name);
            if !keep {
                running.stop.cancel();
            }
            keep
        });
    }

    /// Whether `update` comes from the task now running for its server: a list from a task
    /// that a reload replaced or stopped is stale.
    pub fn is_current(&self, update: &Update) -> bool {
        let tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        tasks
            .get(&update.server)
            .is_some_and(|running| running.task == update.task)
    }

    /// Stops every task (shutdown).
    pub fn stop_all(&self) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, running) in tasks.drain() {
            running.stop.cancel();
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Fetches once from a polled source, without a time limit. A polled kind is one arm here.
async fn fetch(kind: &DiscoveryKind) -> Result<Vec<BackendSpec>, FetchError> {
    match kind {
        DiscoveryKind::Static => Ok(Vec::new()),
        DiscoveryKind::Exec(source) => Ok(exec::fetch(source).await?),
        DiscoveryKind::Plaintext(source) => Ok(plaintext::fetch(source).await?),
        DiscoveryKind::Json(source) => Ok(json::fetch(source).await?),
        DiscoveryKind::Srv(source) => Ok(srv::fetch(source).await?),
        DiscoveryKind::Docker(source) => Ok(docker::fetch(source).await?),
        DiscoveryKind::Consul(source) => Ok(consul::fetch(source).await?),
        // Watched: never polled (see `Task::run`).
        DiscoveryKind::Kubernetes(_) => Ok(Vec::new()),
    }
}

/// The loop of one server's discovery.
struct Task {
    server: String,
    task: u64,
    config: DiscoveryConfig,
    udp: bool,
    stats: Arc<ServerStats>,
    updates_tx: mpsc::Sender<Update>,
}

/// What was last logged about failures, so a source failing every 2 s the same way logs
/// once a minute.
#[derive(Default)]
struct FailureLog {
    last: Option<(String, Instant)>,
    held_back: u64,
}

impl Task {
    async fn run(self, stop: CancellationToken) {
        let source = async {
            match &self.config.kind {
                DiscoveryKind::Kubernetes(source) => {
                    self.follow(|updates| kubernetes::watch(source, updates))
                        .await;
                }
                DiscoveryKind::Consul(source) if self.config.interval.is_some() => {
                    let interval = self.config.interval.unwrap_or_default();
                    let timeout = self.config.timeout;
                    self.follow(|updates| consul::watch(source, interval, timeout, updates))
                        .await;
                }
                DiscoveryKind::Static
                | DiscoveryKind::Exec(_)
                | DiscoveryKind::Plaintext(_)
                | DiscoveryKind::Json(_)
                | DiscoveryKind::Srv(_)
                | DiscoveryKind::Docker(_)
                | DiscoveryKind::Consul(_) => self.poll().await,
            }
        };
        tokio::select! {
            () = stop.cancelled() => {}
            () = source => {}
        }
    }

    /// Fetches, reports, and waits `interval` (or [`RETRY_AFTER`] after a failure); with no
    /// interval, stops after the first success.
    async fn poll(&self) {
        let mut failures = FailureLog::default();
        loop {
            let wait = match self.fetch_within_timeout().await {
                Ok(backends) => {
                    self.succeeded(backends, &mut failures).await;
                    match self.config.interval {
                        Some(interval) => interval,
                        None => return,
                    }
                }
                Err(reason) => {
                    let next = format!("retrying in {RETRY_AFTER:?}");
                    self.failed(reason, &mut failures, &next).await;
                    RETRY_AFTER
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs a watching source, which sends each list (or why it has none) as it learns of it,
    /// until it returns and drops its sender, or the task is stopped. Each list is checked
    /// like a fetched one; each error counts as a failed fetch and `failpolicy` applies.
    /// `interval` and `timeout` do not: the source decides when it reports.
    // A watching kind's arm in `run` calls it.
    #[cfg_attr(not(test), allow(dead_code))]
    async fn follow<F, Fut>(&self, watch: F)
    where
        F: FnOnce(mpsc::Sender<Result<Vec<BackendSpec>, String>>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (results_tx, mut results_rx) = mpsc::channel(16);
        let watcher = watch(results_tx);
        tokio::pin!(watcher);
        let mut failures = FailureLog::default();
        let mut watching = true;
        loop {
            tokio::select! {
                () = &mut watcher, if watching => watching = false,
                result = results_rx.recv() => match result {
                    Some(Ok(backends)) => {
                        match check_list(backends, self.udp) {
                            Ok(backends) => self.succeeded(backends, &mut failures).await,
                            Err(reason) => self.failed(reason, &mut failures, WATCHING).await,
                        }
                    }
                    Some(Err(reason)) => self.failed(reason, &mut failures, WATCHING).await,
                    None => return,
                },
            }
        }
    }

    async fn fetch_within_timeout(&self) -> Result<Vec<BackendSpec>, String> {
        let kind = &self.config.kind;
        let fetched = match self.config.timeout {
            None => fetch(kind).await,
            Some(limit) => match tokio::time::timeout(limit, fetch(kind)).await {
                Ok(fetched) => fetched,
                Err(_) => return Err(format!("timed out after {limit:?}")),
            },
        };
        let backends = fetched.map_err(|error| error.to_string())?;
        check_list(backends, self.udp)
    }

    async fn succeeded(&self, backends: Vec<BackendSpec>, failures: &mut FailureLog) {
        self.stats.discovery.record_success();
        if failures.last.take().is_some() {
            info!(server = %self.server, kind = self.config.kind.name(), backends = backends.len(), "discovery fetch succeeded again");
        }
        failures.held_back = 0;
        self.send(backends).await;
    }

    /// Counts and (unless it repeats) logs a failure, then applies `failpolicy`. `next` says
    /// what the source does now.
    async fn failed(&self, reason: String, failures: &mut FailureLog, next: &str) {
        let stats: &DiscoveryStats = &self.stats.discovery;
        stats.record_failure(reason.clone());
        let policy = match self.config.failpolicy {
            FailPolicy::KeepLast => "keeping the last list",
            FailPolicy::SetEmpty => "the server has no backends until a fetch succeeds",
        };
        let now = Instant::now();
        let repeat = failures.last.as_ref().is_some_and(|(last, at)| {
            *last == reason && now.duration_since(*at) < REPEAT_LOG_EVERY
        });
        if repeat {
            failures.held_back += 1;
        } else {
            let kind = self.config.kind.name();
            let held_back = std::mem::take(&mut failures.held_back);
            warn!(server = %self.server, kind, failures_not_logged = held_back, "discovery fetch failed, {next}; {policy}: {reason}");
            failures.last = Some((reason, now));
        }
        if self.config.failpolicy == FailPolicy::SetEmpty {
            self.send(Vec::new()).await;
        }
    }

    async fn send(&self, backends: Vec<BackendSpec>) {
        let update = Update {
            server: self.server.clone(),
            task: self.task,
            backends,
        };
        // A closed channel means the supervisor is gone; the task is about to be stopped.
        if self.updates_tx.send(update).await.is_err() {
            info!(server = %self.server, "discovery stopped: nothing applies its lists");
        }
    }
}

/// The list as the pool takes it: one backend per `host:port` (the first one listed), ordered
/// by `host:port` so that a source listing the same backends in another order (DNS answers
/// rotate) changes nothing, and for a udp server only IP addresses (its datagrams are not sent
/// to a resolved name).
fn check_list(backends: Vec<BackendSpec>, udp: bool) -> Result<Vec<BackendSpec>, String> {
    let named = backends.iter().find(|backend| backend.ip_addr().is_none());
    if let Some(named) = named.filter(|_| udp) {
        return Err(format!(
            "{}: a udp server's backends must be IP addresses, not host names",
            named.target()
        ));
    }
    let mut seen = HashSet::with_capacity(backends.len());
    let mut backends: Vec<BackendSpec> = backends
        .into_iter()
        .filter(|backend| seen.insert(backend.target()))
        .collect();
    backends.sort_by_cached_key(BackendSpec::target);
    Ok(backends)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(host: &str, port: u16) -> BackendSpec {
        BackendSpec {
            host: host.into(),
            port,
            weight: 1,
            priority: 1,
            max_connections: None,
            sni: None,
        }
    }

    fn task(failpolicy: FailPolicy) -> (Task, mpsc::Receiver<Update>) {
        let (updates_tx, updates_rx) = mpsc::channel(8);
        let task = Task {
            server: "k3s".into(),
            task: 7,
            config: DiscoveryConfig {
                failpolicy,
                ..DiscoveryConfig::fixed()
            },
            udp: false,
            stats: Arc::default(),
            updates_tx,
        };
        (task, updates_rx)
    }

    #[test]
    fn a_list_is_ordered_keeps_the_first_of_repeated_targets_and_for_udp_only_addresses() {
        let mut heavier = backend("10.0.0.1", 6443);
        heavier.weight = 5;
        let list = vec![backend("m1", 6443), backend("10.0.0.1", 6443), heavier];
        let checked = check_list(list.clone(), false).unwrap();
        assert_eq!(checked, [backend("10.0.0.1", 6443), backend("m1", 6443)]);
        let error = check_list(list, true).unwrap_err();
        assert!(error.starts_with("m1:6443: a udp server's"), "{error}");
    }

    /// A watching source's lists and errors go through the same failpolicy as a polled one:
    /// with setempty an error sends an empty list; the task ends when the watcher is done
    /// and has nothing more to say.
    #[tokio::test]
    async fn a_watching_source_reports_lists_and_failures_through_the_failpolicy() {
        let (task, mut updates_rx) = task(FailPolicy::SetEmpty);
        task.follow(|results_tx| async move {
            results_tx
                .send(Ok(vec![backend("10.0.0.1", 6443)]))
                .await
                .unwrap();
            results_tx.send(Err("watch closed".into())).await.unwrap();
        })
        .await;
        let first = updates_rx.recv().await.unwrap();
        assert_eq!((first.server.as_str(), first.task), ("k3s", 7));
        assert_eq!(first.backends, [backend("10.0.0.1", 6443)]);
        assert!(updates_rx.recv().await.unwrap().backends.is_empty());
        let stats = &task.stats.discovery;
        assert_eq!(stats.fetches.load(Ordering::Relaxed), 1);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats.last_error.load_full().as_deref().map(String::as_str),
            Some("watch closed")
        );
    }

    /// keeplast sends nothing on a failure: the server keeps what it has.
    #[tokio::test]
    async fn keeplast_sends_nothing_on_a_failure() {
        let (task, mut updates_rx) = task(FailPolicy::KeepLast);
        task.follow(|results_tx| async move {
            results_tx.send(Err("watch closed".into())).await.unwrap();
        })
        .await;
        drop(task);
        assert!(updates_rx.recv().await.is_none());
    }
}
