//! Unix signals as a stream of daemon commands: SIGHUP reloads, SIGUSR1 reopens the access
//! log (logrotate's `postrotate`), SIGTERM and SIGINT shut down.

use std::io;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tracing::info;

/// What a signal asks the daemon to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Reload,
    ReopenLogs,
    Shutdown,
}

/// The daemon's signal handlers, installed for the life of the process.
#[derive(Debug)]
pub struct Signals {
    hangup: Signal,
    user1: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    /// Installs the handlers; from then on these signals no longer kill the process.
    ///
    /// # Errors
    /// A handler could not be installed.
    pub fn install() -> io::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            user1: signal(SignalKind::user_defined1())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for the next signal and logs which one arrived.
    pub async fn next(&mut self) -> Command {
        let (name, command) = tokio::select! {
            _ = self.hangup.recv() => ("SIGHUP", Command::Reload),
            _ = self.user1.recv() => ("SIGUSR1", Command::ReopenLogs),
            _ = self.terminate.recv() => ("SIGTERM", Command::Shutdown),
            _ = self.interrupt.recv() => ("SIGINT", Command::Shutdown),
        };
        info!(signal = name, "signal received");
        command
    }
}
