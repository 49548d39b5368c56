//! The process around the supervisor: pidfile, signals, reload from the config source, drain.
//!
//! Runs on the main task: starts the supervisor (on sockets passed by systemd where there are
//! some), tells systemd it is ready, then waits for signals. SIGHUP re-reads the config from
//! the same source (file, URL or Consul key) and flags; an invalid config is logged, reported to systemd, and the old
//! one keeps serving. SIGTERM or SIGINT stops accepting and drains; a second one exits at once.
//! The REST API and metrics listeners start with the balancer, follow reloads that change
//! `[api]` or `[metrics]`, and stop once the sessions have drained, so the drain can be watched.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::endpoints::{EndpointError, Endpoints};
use crate::logging::{LogControl, open_without_following};
use crate::signal::{Command, Signals};
use crate::supervisor::{StartError, Supervisor};
use crate::systemd::{self, InheritedSockets};

mod source;

pub use source::{ConfigSource, ConsulScheme, Origin};

/// Settings of the daemon that are not in the config file.
#[derive(Debug)]
pub struct DaemonOptions {
    pub source: ConfigSource,
    /// Written once every listener is bound, removed on a clean exit.
    pub pidfile: Option<PathBuf>,
    /// Applies a reloaded `[logging] level`.
    pub log_control: Option<LogControl>,
}

/// Why the daemon could not run. Each message ends with its cause, which is therefore not
/// also a `source()`: a printer walking the chain would show it twice.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// gobetween's `-p` refuses to start too: two daemons would fight over the pidfile, and
    /// with SO_REUSEPORT-free listeners the second could not bind anyway.
    #[error("pidfile {} names process {pid}, a running betwixt: refusing to start a second instance", path.display())]
    AlreadyRunning { path: PathBuf, pid: u32 },
    #[error("cannot write pidfile {}: {error}", path.display())]
    Pidfile {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Runs the balancer for `config` until SIGTERM or SIGINT.
///
/// # Errors
/// A listener (of a server, the API or the metrics) cannot be bound, signal handlers cannot be
/// installed, or the pidfile cannot be written. Reload failures are not errors: they are
/// logged and the old config stays.
pub async fn run(config: Config, options: DaemonOptions) -> Result<(), DaemonError> {
    if let Some(path) = &options.pidfile {
        refuse_if_running(path)?;
    }
    let mut signals = Signals::install().map_err(DaemonError::Signals)?;
    let inherited = InheritedSockets::from_environment();
    let supervisor = Arc::new(Supervisor::start_with_sockets(config, inherited).await?);
    let mut endpoints = Endpoints::start(
        &supervisor.snapshot().config,
        Arc::clone(&supervisor),
        options.source.describe(),
    )?;
    if let Some(path) = &options.pidfile {
        write_pidfile(path)?;
    }
    let watchdog = CancellationToken::new();
    systemd::spawn_watchdog(watchdog.clone());
    info!(version = env!("CARGO_PKG_VERSION"), "betwixt ready");
    systemd::ready(&status_line(&supervisor));
    loop {
        match signals.next().await {
            Command::Shutdown => break,
            Command::ReopenLogs => {
                reopen_access_log(&supervisor);
                continue;
            }
            Command::Reload => reopen_access_log(&supervisor),
        }
        systemd::reloading();
        if reload(&supervisor, &options).await {
            endpoints.reconfigure(&supervisor.snapshot().config).await;
            systemd::ready(&status_line(&supervisor));
        } else {
            systemd::ready(&format!(
                "reload refused (see the log); {}",
                status_line(&supervisor)
            ));
        }
    }
    let open = supervisor.open_sessions();
    let grace = supervisor.snapshot().config.runtime.shutdown_timeout;
    info!(
        sessions = open,
        ?grace,
        "shutting down: no new connections; draining sessions"
    );
    systemd::stopping(&format!("draining {open} sessions"));
    tokio::select! {
        summary = supervisor.shutdown(grace) => {
            info!(closed_by_force = summary.closed_by_force, "shutdown complete");
            endpoints.stop().await;
        }
        _ = signals.next() => {
            warn!(sessions = supervisor.open_sessions(), "second signal: exiting now");
        }
    }
    watchdog.cancel();
    if let Some(path) = &options.pidfile {
        remove_pidfile(path);
    }
    Ok(())
}

/// After logrotate moved the access log file: the writer opens a new one.
fn reopen_access_log(supervisor: &Supervisor) {
    if let Some(log) = &supervisor.snapshot().access_log {
        log.reopen();
    }
}

/// The one-line state `systemctl status` shows.
fn status_line(supervisor: &Supervisor) -> String {
    let snapshot = supervisor.snapshot();
    let (mut backends, mut up) = (0, 0);
    for server in snapshot.servers() {
        backends += server.pool.backends().len();
        up += server
            .pool
            .backends()
            .iter()
            .filter(|b| b.is_healthy())
            .count();
    }
    format!(
        "serving {} servers, {up}/{backends} backends up, {} sessions",
        snapshot.servers().count(),
        supervisor.open_sessions()
    )
}

/// Re-reads the config and applies it; false when it was refused (and logged).
async fn reload(supervisor: &Supervisor, options: &DaemonOptions) -> bool {
    let loaded = match options.source.load().await {
        Ok(loaded) => loaded,
        Err(errors) => {
            supervisor.record_refused_reload();
            error!(
                errors = errors.0.len(),
                "reload refused; still serving the previous config:\n{errors}"
            );
            return false;
        }
    };
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    let level = loaded.config.logging.level;
    match supervisor.reload(loaded.config).await {
        Ok(summary) => {
            if let Some(control) = &options.log_control {
                control.set_level(level);
            }
            info!(%summary, "reload applied");
            true
        }
        Err(error) => {
            error!(%error, "reload refused; still serving the previous config");
            false
        }
    }
}

/// Fails when the pidfile names another live process running the same program as this one.
///
/// A missing, unreadable or garbled pidfile, a dead pid, or our own pid is no obstacle: it is
/// what a crash or an unclean reboot leaves behind. A pid that the kernel reused for another
/// program (its `/proc/PID/exe` has another file name) is stale too, so a leftover pidfile
/// never blocks a restart. A process of another user whose executable cannot be read counts
/// as running: refusing is the safer mistake.
fn refuse_if_running(path: &Path) -> Result<(), DaemonError> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    if pid == 0 || pid == std::process::id() {
        return Ok(());
    }
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return Ok(());
    }
    let same_program = match std::fs::read_link(proc_dir.join("exe")) {
        Ok(exe) => {
            let ours = std::env::current_exe().ok();
            let name = |path: &Path| path.file_name().map(ToOwned::to_owned);
            ours.is_none_or(|ours| name(&ours) == name(&exe))
        }
        Err(_) => true,
    };
    if same_program {
        return Err(DaemonError::AlreadyRunning {
            path: path.to_owned(),
            pid,
        });
    }
    Ok(())
}

/// Writes the process id, never through a symbolic link: a link planted at the path would
/// otherwise have betwixt truncate whatever file it points to.
fn write_pidfile(path: &Path) -> Result<(), DaemonError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o644);
    open_without_following(&mut options, path)
        .and_then(|mut file| writeln!(file, "{}", std::process::id()))
        .map_err(|error| DaemonError::Pidfile {
            path: path.to_owned(),
            error,
        })
}

fn remove_pidfile(path: &Path) {
    if let Err(error) = std::fs::remove_file(path) {
        warn!(path = %path.display(), %error, "cannot remove the pidfile");
    }
}
