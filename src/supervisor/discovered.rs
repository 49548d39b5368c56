//! Backend lists from discovery, applied like a reload of one server's pool.
//!
//! One task receives the lists the discovery tasks send and, holding the reload lock (so a
//! list and a SIGHUP or API change never interleave), publishes a snapshot in which only that
//! server's backends changed: backends that stay keep their state, counters and sessions; new
//! ones are checked at once; removed ones drain or close as a reload's would. A full reload
//! keeps each retained server's last list until its source reports again.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ReloadSummary, close_removed_backends, compare_backends};
use crate::config::Config;
use crate::discovery::{Runner, Update};
use crate::health::monitor::Monitor;
use crate::listener::Shared;
use crate::snapshot::Snapshot;

/// What applying a list needs of the supervisor.
pub(super) struct Applier {
    pub shared: Shared,
    pub health: Arc<Monitor>,
    pub discovery: Arc<Runner>,
    pub reloading: Arc<tokio::sync::Mutex<()>>,
}

impl Applier {
    /// Applies updates until `stop` (shutdown) or until every sender is gone.
    pub async fn run(self, mut updates_rx: mpsc::Receiver<Update>, stop: CancellationToken) {
        loop {
            let update = tokio::select! {
                () = stop.cancelled() => return,
                update = updates_rx.recv() => update,
            };
            match update {
                Some(update) => self.apply(update).await,
                None => return,
            }
        }
    }

    async fn apply(&self, update: Update) {
        let _one_at_a_time = self.reloading.lock().await;
        // A list from a task that a reload has since replaced describes an old source.
        if !self.discovery.is_current(&update) {
            return;
        }
        let current = self.shared.snapshot.load_full();
        let Some(server) = current.server(&update.server) else {
            return;
        };
        if server.config.backends == update.backends {
            return;
        }
        let mut config: Config = (*current.config).clone();
        if let Some(server) = config.servers.get_mut(&update.server) {
            server.backends = update.backends;
        }
        let next = match Snapshot::new(config, Some(&current), &self.shared.close_sessions) {
            Ok(next) => next,
            Err(error) => {
                // The server's certificates, re-read with every snapshot, went bad since the
                // last reload: keep serving with the current ones and the current list.
                warn!(server = %update.server, %error, "discovered backends not applied");
                return;
            }
        };
        let mut summary = ReloadSummary::default();
        compare_backends(&current, &next, &mut summary);
        let backends = next
            .server(&update.server)
            .map_or(0, |server| server.pool.backends().len());
        self.shared.snapshot.store(Arc::new(next));
        self.health.reconcile();
        close_removed_backends(&current, &self.shared.snapshot.load());
        let name_only = |entries: &[String]| {
            entries
                .iter()
                .map(|entry| {
                    entry
                        .split_once('/')
                        .map_or(entry.as_str(), |(_, target)| target)
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        info!(
            server = %update.server,
            backends,
            added = %name_only(&summary.backends_added),
            removed = %name_only(&summary.backends_removed),
            "discovered backend list applied"
        );
    }
}

/// Gives each server of `config` that is dynamic in both the running snapshot and `config`
/// the list it has now, instead of the empty list a config file holds for it.
pub(super) fn keep_discovered_lists(config: &mut Config, current: &Snapshot) {
    for (name, server) in &mut config.servers {
        if !server.discovery.is_dynamic() {
            continue;
        }
        if let Some(running) = current
            .server(name)
            .filter(|running| running.config.discovery.is_dynamic())
        {
            server.backends = running.config.backends.clone();
        }
    }
}
